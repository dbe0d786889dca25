//! The signed release bundle: one file, read and verified as a stream.
//!
//! ```text
//! magic      8 bytes  "EAUPD1\n\0"
//! length     4 bytes  manifest length, u32 little-endian (at most 64 KiB)
//! manifest   JSON     {"format":1,"version":"0.2.0","target":"x86_64-linux",
//!                      "binary_size":N,"binary_sha256":"<hex>","created_ms":...}
//! signature  64 bytes ed25519 over "edge-agent-update-v1\0" || manifest
//! binary     N bytes  the edge-agent executable
//! ```
//!
//! The signature covers the manifest, the manifest pins the binary by size and SHA-256, so
//! nothing unsigned is trusted and the binary never has to be held in memory. The domain
//! prefix keeps a signature made for anything else from passing as a bundle signature.

use std::io::{Read, Write};
use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// First bytes of every bundle.
pub const MAGIC: &[u8; 8] = b"EAUPD1\n\0";
/// Prefix of the signed message.
pub const SIGNING_DOMAIN: &[u8] = b"edge-agent-update-v1\0";
/// Largest manifest accepted.
pub const MAX_MANIFEST: usize = 64 * 1024;

/// The signed description of a release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Bundle format version (1).
    pub format: u32,
    /// The release's version, e.g. `0.2.0`.
    pub version: String,
    /// `ARCH-OS` the binary runs on, e.g. `x86_64-linux`.
    pub target: String,
    /// Size of the binary.
    pub binary_size: u64,
    /// SHA-256 of the binary, hex.
    pub binary_sha256: String,
    /// When the bundle was made, epoch ms.
    pub created_ms: i64,
}

/// The target of the running agent.
pub fn this_target() -> String {
    format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS)
}

/// Why a bundle is refused.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Not a bundle at all.
    #[error("not an update bundle (bad magic)")]
    BadMagic,
    /// Manifest length out of bounds.
    #[error("manifest length {0} is out of bounds")]
    BadLength(usize),
    /// The signature does not verify with the configured key.
    #[error(
        "signature does not verify with agent.update_key: the bundle is not from the key holder or was altered"
    )]
    BadSignature,
    /// The manifest is not valid JSON of the expected shape.
    #[error("manifest: {0}")]
    BadManifest(String),
    /// The binary's size or hash differs from the manifest's.
    #[error("binary does not match the signed manifest: {0}")]
    BinaryMismatch(String),
    /// A key is malformed.
    #[error("key: {0}")]
    BadKey(String),
}

/// Parses a hex ed25519 public key.
pub fn parse_public_key(hex_key: &str) -> Result<VerifyingKey, BundleError> {
    let mut b = [0u8; 32];
    hex::decode_to_slice(hex_key.trim(), &mut b)
        .map_err(|_| BundleError::BadKey("expected 64 hex digits".into()))?;
    VerifyingKey::from_bytes(&b).map_err(|e| BundleError::BadKey(e.to_string()))
}

/// Parses a hex ed25519 secret key (as `edge-agent keygen` writes it).
pub fn parse_signing_key(hex_key: &str) -> Result<SigningKey, BundleError> {
    let mut b = [0u8; 32];
    hex::decode_to_slice(hex_key.trim(), &mut b)
        .map_err(|_| BundleError::BadKey("expected 64 hex digits".into()))?;
    Ok(SigningKey::from_bytes(&b))
}

/// A fresh signing key.
pub fn generate_key() -> SigningKey {
    let mut b = [0u8; 32];
    rand::Rng::fill(&mut rand::thread_rng(), &mut b);
    SigningKey::from_bytes(&b)
}

fn signed_message(manifest: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNING_DOMAIN.len() + manifest.len());
    m.extend_from_slice(SIGNING_DOMAIN);
    m.extend_from_slice(manifest);
    m
}

/// Writes a bundle of `binary` for `version`, signed with `key`.
pub fn create(
    binary: &Path,
    version: &str,
    target: &str,
    key: &SigningKey,
    out: &Path,
) -> Result<Manifest, BundleError> {
    super::check_version_text(version).map_err(BundleError::BadManifest)?;
    let mut f = std::fs::File::open(binary)?;
    let mut hasher = Sha256::new();
    let size = std::io::copy(&mut f, &mut hasher)?;
    let manifest = Manifest {
        format: 1,
        version: version.to_string(),
        target: target.to_string(),
        binary_size: size,
        binary_sha256: hex::encode(hasher.finalize()),
        created_ms: protocols::time::now_ms(),
    };
    let text =
        serde_json::to_vec(&manifest).map_err(|e| BundleError::BadManifest(e.to_string()))?;
    let sig = key.sign(&signed_message(&text));
    let tmp = out.with_extension("partial");
    {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        w.write_all(MAGIC)?;
        w.write_all(&(text.len() as u32).to_le_bytes())?;
        w.write_all(&text)?;
        w.write_all(&sig.to_bytes())?;
        let mut f = std::fs::File::open(binary)?;
        std::io::copy(&mut f, &mut w)?;
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    std::fs::rename(&tmp, out)?;
    Ok(manifest)
}

/// Reads and verifies the header of a bundle: after this, `reader` is positioned at the
/// binary, whose size and hash the returned (signed) manifest gives.
pub fn read_verified_manifest(
    reader: &mut impl Read,
    key: &VerifyingKey,
) -> Result<Manifest, BundleError> {
    let mut magic = [0u8; 8];
    reader
        .read_exact(&mut magic)
        .map_err(|_| BundleError::BadMagic)?;
    if &magic != MAGIC {
        return Err(BundleError::BadMagic);
    }
    let mut len = [0u8; 4];
    reader.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len == 0 || len > MAX_MANIFEST {
        return Err(BundleError::BadLength(len));
    }
    let mut text = vec![0u8; len];
    reader.read_exact(&mut text)?;
    let mut sig = [0u8; 64];
    reader.read_exact(&mut sig)?;
    // Verify before parsing: nothing unsigned is interpreted.
    key.verify(&signed_message(&text), &Signature::from_bytes(&sig))
        .map_err(|_| BundleError::BadSignature)?;
    let m: Manifest =
        serde_json::from_slice(&text).map_err(|e| BundleError::BadManifest(e.to_string()))?;
    if m.format != 1 {
        return Err(BundleError::BadManifest(format!(
            "unknown format {}",
            m.format
        )));
    }
    super::check_version_text(&m.version).map_err(BundleError::BadManifest)?;
    if m.binary_sha256.len() != 64 || hex::decode(&m.binary_sha256).is_err() {
        return Err(BundleError::BadManifest(
            "binary_sha256 is not 64 hex digits".into(),
        ));
    }
    Ok(m)
}

/// Copies the binary that follows the manifest into `out`, checking its size and hash, and
/// that nothing trails it.
pub fn copy_verified_binary(
    reader: &mut impl Read,
    manifest: &Manifest,
    out: &mut impl Write,
) -> Result<(), BundleError> {
    let mut hasher = Sha256::new();
    let mut limited = reader.take(manifest.binary_size);
    let mut buf = vec![0u8; 64 * 1024];
    let mut copied = 0u64;
    loop {
        let n = limited.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        copied += n as u64;
    }
    let reader = limited.into_inner();
    if copied != manifest.binary_size {
        return Err(BundleError::BinaryMismatch(format!(
            "{copied} bytes, the manifest says {}",
            manifest.binary_size
        )));
    }
    let mut extra = [0u8; 1];
    if reader.read(&mut extra)? != 0 {
        return Err(BundleError::BinaryMismatch("bytes after the binary".into()));
    }
    let got = hex::encode(hasher.finalize());
    if !got.eq_ignore_ascii_case(&manifest.binary_sha256) {
        return Err(BundleError::BinaryMismatch(format!(
            "sha256 {got}, the manifest says {}",
            manifest.binary_sha256
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make(dir: &Path, key: &SigningKey) -> std::path::PathBuf {
        let bin = dir.join("bin");
        std::fs::write(&bin, b"#!/bin/sh\nexit 0\n").unwrap();
        let out = dir.join("b.bundle");
        create(&bin, "1.2.3", &this_target(), key, &out).unwrap();
        out
    }

    #[test]
    fn round_trip_and_every_tampering_is_caught() {
        let d = tempfile::tempdir().unwrap();
        let key = generate_key();
        let path = make(d.path(), &key);
        let bytes = std::fs::read(&path).unwrap();
        let vk = key.verifying_key();
        let mut r = bytes.as_slice();
        let m = read_verified_manifest(&mut r, &vk).unwrap();
        assert_eq!(m.version, "1.2.3");
        let mut out = Vec::new();
        copy_verified_binary(&mut r, &m, &mut out).unwrap();
        assert_eq!(out, b"#!/bin/sh\nexit 0\n");

        // Another key.
        let other = generate_key().verifying_key();
        assert!(matches!(
            read_verified_manifest(&mut bytes.as_slice(), &other),
            Err(BundleError::BadSignature)
        ));
        // A flipped bit anywhere in the manifest or signature.
        let mlen = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
        for at in [12, 12 + mlen / 2, 12 + mlen + 5] {
            let mut t = bytes.clone();
            t[at] ^= 1;
            assert!(
                matches!(
                    read_verified_manifest(&mut t.as_slice(), &vk),
                    Err(BundleError::BadSignature)
                ),
                "byte {at}"
            );
        }
        // A flipped bit in the binary, a truncated or extended binary.
        for t in [
            {
                let mut t = bytes.clone();
                let n = t.len();
                t[n - 3] ^= 1;
                t
            },
            bytes[..bytes.len() - 1].to_vec(),
            {
                let mut t = bytes.clone();
                t.push(0);
                t
            },
        ] {
            let mut r = t.as_slice();
            let m = read_verified_manifest(&mut r, &vk).unwrap();
            assert!(matches!(
                copy_verified_binary(&mut r, &m, &mut Vec::new()),
                Err(BundleError::BinaryMismatch(_))
            ));
        }
        assert!(matches!(
            read_verified_manifest(&mut &b"garbage!"[..], &vk),
            Err(BundleError::BadMagic)
        ));
    }

    #[test]
    fn keys_parse_from_hex() {
        let k = generate_key();
        let hex_secret = hex::encode(k.to_bytes());
        let hex_public = hex::encode(k.verifying_key().to_bytes());
        assert_eq!(
            parse_signing_key(&hex_secret).unwrap().verifying_key(),
            k.verifying_key()
        );
        assert_eq!(parse_public_key(&hex_public).unwrap(), k.verifying_key());
        assert!(parse_public_key("xyz").is_err());
    }
}
