//! A development PKI: a CA, the hub's server certificate and client certificates for devices
//! and agents, made with rcgen (ECDSA P-256). `sim demo` runs TLS with it and the tests make
//! every kind of certificate the hub must accept or refuse. Not for production: the CA key
//! lives in memory and in the files it is written to.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, date_time_ymd,
};

use super::TlsError;

fn rcgen_error(e: rcgen::Error) -> TlsError {
    TlsError::Rustls(format!("certificate generation: {e}"))
}

/// A certificate and its private key, PEM.
#[derive(Clone, Debug)]
pub struct KeyedCert {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

impl KeyedCert {
    /// Writes `STEM.crt` and `STEM.key` into `dir`; returns their paths.
    pub fn write(&self, dir: &Path, stem: &str) -> std::io::Result<(PathBuf, PathBuf)> {
        let (crt, key) = (
            dir.join(format!("{stem}.crt")),
            dir.join(format!("{stem}.key")),
        );
        std::fs::write(&crt, &self.cert_pem)?;
        write_private(&key, &self.key_pem)?;
        Ok((crt, key))
    }
}

/// Writes a key readable by its owner only.
fn write_private(path: &Path, pem: &str) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    o.mode(0o600);
    o.open(path)?.write_all(pem.as_bytes())
}

/// How a client certificate names its holder (the hub accepts either).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientName {
    /// Subject CN = the id.
    CommonName,
    /// SAN URI `urn:district:{id}` (and a CN that is not an id).
    Uri,
}

/// A development certificate authority.
pub struct DevCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa").finish_non_exhaustive()
    }
}

impl DevCa {
    /// A new CA named `name`, valid until rcgen's far default (4096).
    pub fn new(name: &str) -> Result<DevCa, TlsError> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rcgen_error)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().map_err(rcgen_error)?;
        let issuer = CertifiedIssuer::self_signed(params, key).map_err(rcgen_error)?;
        Ok(DevCa { issuer })
    }

    /// The CA certificate, PEM (what clients put in `--cafile` / `ca`).
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// Writes the CA certificate to `dir/STEM.crt`.
    pub fn write(&self, dir: &Path, stem: &str) -> std::io::Result<PathBuf> {
        let p = dir.join(format!("{stem}.crt"));
        std::fs::write(&p, self.cert_pem())?;
        Ok(p)
    }

    /// A server certificate for `hosts` (IP addresses or DNS names), CN = the first.
    pub fn server(&self, hosts: &[&str]) -> Result<KeyedCert, TlsError> {
        let names: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        let mut params = CertificateParams::new(names).map_err(rcgen_error)?;
        if let Some(first) = hosts.first() {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate naming `id`, valid until rcgen's far default (4096).
    pub fn client(&self, id: &str, name: ClientName) -> Result<KeyedCert, TlsError> {
        self.sign(client_params(id, name)?)
    }

    /// A client certificate naming `id` that expired in 2021.
    pub fn expired_client(&self, id: &str) -> Result<KeyedCert, TlsError> {
        let mut params = client_params(id, ClientName::CommonName)?;
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2021, 1, 1);
        self.sign(params)
    }

    fn sign(&self, mut params: CertificateParams) -> Result<KeyedCert, TlsError> {
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().map_err(rcgen_error)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(rcgen_error)?;
        Ok(KeyedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn client_params(id: &str, name: ClientName) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rcgen_error)?;
    match name {
        ClientName::CommonName => params.distinguished_name.push(DnType::CommonName, id),
        ClientName::Uri => {
            params
                .distinguished_name
                .push(DnType::CommonName, format!("district device {id}"));
            let uri = format!("urn:district:{id}")
                .try_into()
                .map_err(rcgen_error)?;
            params.subject_alt_names.push(SanType::URI(uri));
        }
    }
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    Ok(params)
}
