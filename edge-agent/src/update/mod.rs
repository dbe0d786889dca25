//! Signed updates: verify a release bundle, install it beside the running version, switch,
//! health-check the new version and roll back automatically when it fails.
//!
//! Layout of the install directory (the supervisor runs `current/edge-agent`):
//!
//! ```text
//! versions/0.1.0/edge-agent   versions/0.1.0/manifest.json
//! versions/0.2.0/edge-agent   versions/0.2.0/manifest.json
//! current  -> versions/0.2.0      (symlink, switched atomically by rename)
//! previous -> versions/0.1.0
//! ```
//!
//! Installing: verify signature, target and version (never older than `current` unless
//! allowed) -> copy the binary to a staging directory while hashing it, fsync, rename into
//! `versions/` -> point `previous` at the old version and `current` at the new one -> run
//! `current/edge-agent self-test --config agent.toml` -> on failure point `current` back and
//! delete the new version. Older versions than `previous` are pruned.
//!
//! A version that passes its self-test is still on trial (`pending` file) until it has
//! connected to the hub once: each start of a pending version counts, and the start after
//! [`MAX_PENDING_STARTS`] failed ones switches back to `previous` (see [`boot_check`]).

pub mod bundle;
pub mod download;

use std::cmp::Ordering;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bundle::{BundleError, Manifest};

/// Name of the executable inside a version directory.
pub const BINARY: &str = "edge-agent";
/// File in the install directory: `VERSION STARTS` of a version on trial.
pub const PENDING: &str = "pending";
/// Starts a version on trial gets before it is rolled back.
pub const MAX_PENDING_STARTS: u32 = 3;

/// Why an update was not installed (or was rolled back).
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// The bundle was refused.
    #[error("bundle refused: {0}")]
    Bundle(#[from] BundleError),
    /// The bundle is for another machine.
    #[error("bundle is for {bundle}, this agent runs on {this}")]
    WrongTarget {
        /// The bundle's target.
        bundle: String,
        /// Ours.
        this: String,
    },
    /// Not newer than what runs.
    #[error("bundle version {bundle} is not newer than the installed {current}")]
    NotNewer {
        /// The bundle's version.
        bundle: String,
        /// The current one.
        current: String,
    },
    /// File system trouble.
    #[error("{path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The new version failed its health check and the previous one is current again.
    #[error(
        "version {version} failed its health check and was rolled back to {rolled_back_to}: {output}"
    )]
    RolledBack {
        /// The refused version.
        version: String,
        /// What is current now.
        rolled_back_to: String,
        /// What the check printed.
        output: String,
    },
    /// No key to verify with.
    #[error("no update key: set agent.update_key (hex ed25519 public key) in agent.toml")]
    NoKey,
    /// The download failed.
    #[error("download: {0}")]
    Download(String),
    /// No install directory could be found.
    #[error(
        "no install directory: set agent.install_dir, pass --install-dir, or run from DIR/versions/VERSION/edge-agent"
    )]
    NoInstallDir,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> UpdateError + '_ {
    move |source| UpdateError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Checks a version string: 1 to 4 dot-separated numbers.
pub fn check_version_text(v: &str) -> Result<(), String> {
    let parts: Vec<&str> = v.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return Err(format!("`{v}` is not a version like 1.2.3"));
    }
    for p in parts {
        if p.is_empty() || p.len() > 9 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("`{v}` is not a version like 1.2.3"));
        }
    }
    Ok(())
}

/// Compares versions numerically (`0.10.0` > `0.9.1`; missing parts count as 0).
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let nums = |v: &str| -> Vec<u64> { v.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    let (mut x, mut y) = (nums(a), nums(b));
    let n = x.len().max(y.len());
    x.resize(n, 0);
    y.resize(n, 0);
    x.cmp(&y)
}

/// The install directory of the running binary, if it runs from `DIR/versions/V/edge-agent`.
pub fn install_dir_of_running_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let version_dir = exe.parent()?;
    let versions = version_dir.parent()?;
    (versions.file_name()? == "versions").then(|| versions.parent().map(Path::to_path_buf))?
}

/// The version `current` points at.
pub fn current_version(install_dir: &Path) -> Option<String> {
    link_version(&install_dir.join("current"))
}

fn link_version(link: &Path) -> Option<String> {
    let target = std::fs::read_link(link).ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
}

fn sync_dir(dir: &Path) -> Result<(), UpdateError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

/// Points `name` at `versions/<version>` atomically (symlink beside it, then rename).
fn point(install_dir: &Path, name: &str, version: &str) -> Result<(), UpdateError> {
    let tmp = install_dir.join(format!(".{name}.new"));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(Path::new("versions").join(version), &tmp).map_err(io(&tmp))?;
    let link = install_dir.join(name);
    std::fs::rename(&tmp, &link).map_err(io(&link))?;
    Ok(())
}

/// Options of an install.
#[derive(Clone, Debug)]
pub struct InstallOptions {
    /// Where versions live.
    pub install_dir: PathBuf,
    /// The agent.toml the health check runs with (`self-test --config`).
    pub config: Option<PathBuf>,
    /// Install even if not newer.
    pub allow_downgrade: bool,
    /// How long the health check may take.
    pub check_timeout: Duration,
}

/// What an install did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Installed {
    /// The new current version.
    pub version: String,
    /// The version kept as `previous`.
    pub previous: Option<String>,
}

/// Verifies and installs a bundle file; see the module docs. Blocking.
pub fn install(
    bundle_path: &Path,
    key_hex: &str,
    opts: &InstallOptions,
) -> Result<Installed, UpdateError> {
    let key = bundle::parse_public_key(key_hex)?;
    let dir = &opts.install_dir;
    let file = std::fs::File::open(bundle_path).map_err(io(bundle_path))?;
    let mut reader = std::io::BufReader::new(file);
    let manifest: Manifest = bundle::read_verified_manifest(&mut reader, &key)?;
    let this = bundle::this_target();
    if manifest.target != this {
        return Err(UpdateError::WrongTarget {
            bundle: manifest.target,
            this,
        });
    }
    let current = current_version(dir);
    if let Some(cur) = &current
        && !opts.allow_downgrade
        && compare_versions(&manifest.version, cur) != Ordering::Greater
    {
        return Err(UpdateError::NotNewer {
            bundle: manifest.version,
            current: cur.clone(),
        });
    }
    let versions = dir.join("versions");
    std::fs::create_dir_all(&versions).map_err(io(&versions))?;
    // Stage, then rename into place: a half-copied version never appears under versions/.
    let staging = versions.join(format!(".staging-{}", manifest.version));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(io(&staging))?;
    let bin = staging.join(BINARY);
    {
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .open(&bin)
            .map_err(io(&bin))?;
        let mut w = std::io::BufWriter::new(f);
        let copied = bundle::copy_verified_binary(&mut reader, &manifest, &mut w);
        if let Err(e) = copied {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e.into());
        }
        let f = w.into_inner().map_err(|e| UpdateError::Io {
            path: bin.clone(),
            source: e.into_error(),
        })?;
        f.sync_all().map_err(io(&bin))?;
    }
    let mpath = staging.join("manifest.json");
    std::fs::write(
        &mpath,
        serde_json::to_vec_pretty(&manifest).unwrap_or_default(),
    )
    .map_err(io(&mpath))?;
    sync_dir(&staging)?;
    let target = versions.join(&manifest.version);
    if current.as_deref() != Some(manifest.version.as_str()) {
        let _ = std::fs::remove_dir_all(&target);
    }
    std::fs::rename(&staging, &target).map_err(io(&target))?;
    sync_dir(&versions)?;

    // Switch.
    if let Some(cur) = &current {
        point(dir, "previous", cur)?;
    }
    point(dir, "current", &manifest.version)?;
    sync_dir(dir)?;

    // Health check of the new current version; roll back on failure.
    if let Err(output) = health_check(&dir.join("current").join(BINARY), opts) {
        let rolled_back_to = match &current {
            Some(cur) => {
                point(dir, "current", cur)?;
                cur.clone()
            }
            None => {
                let link = dir.join("current");
                std::fs::remove_file(&link).map_err(io(&link))?;
                "nothing (no earlier version)".to_string()
            }
        };
        sync_dir(dir)?;
        let _ = std::fs::remove_dir_all(&target);
        tracing::error!(version = %manifest.version, "update failed its health check; rolled back to {rolled_back_to}");
        return Err(UpdateError::RolledBack {
            version: manifest.version,
            rolled_back_to,
            output,
        });
    }
    let pending = dir.join(PENDING);
    write_synced(&pending, format!("{} 0\n", manifest.version).as_bytes())?;
    sync_dir(dir)?;
    prune(dir, &manifest.version, current.as_deref());
    tracing::info!(version = %manifest.version, previous = ?current, "update installed");
    Ok(Installed {
        version: manifest.version,
        previous: current,
    })
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), UpdateError> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// What [`boot_check`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootCheck {
    /// No version on trial.
    Confirmed,
    /// This start of the version on trial is number `start`.
    Trial {
        /// The version.
        version: String,
        /// 1 for the first start.
        start: u32,
    },
    /// The version on trial failed too often; `current` points at `to` again.
    RolledBack {
        /// The failed version.
        from: String,
        /// What is current now.
        to: String,
    },
}

/// Run at every start of an installed agent: counts starts of a version on trial and rolls back
/// to `previous` when it has started [`MAX_PENDING_STARTS`] times without [`confirm`].
pub fn boot_check(install_dir: &Path) -> Result<BootCheck, UpdateError> {
    let pending = install_dir.join(PENDING);
    let Ok(text) = std::fs::read_to_string(&pending) else {
        return Ok(BootCheck::Confirmed);
    };
    let mut parts = text.split_whitespace();
    let version = parts.next().unwrap_or("").to_string();
    let starts: u32 = parts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
    if current_version(install_dir).as_deref() != Some(version.as_str()) {
        // Someone switched by hand: nothing of ours is on trial.
        let _ = std::fs::remove_file(&pending);
        return Ok(BootCheck::Confirmed);
    }
    if starts >= MAX_PENDING_STARTS {
        let Some(prev) = link_version(&install_dir.join("previous")) else {
            let _ = std::fs::remove_file(&pending);
            return Ok(BootCheck::Confirmed);
        };
        point(install_dir, "current", &prev)?;
        std::fs::remove_file(&pending).map_err(io(&pending))?;
        sync_dir(install_dir)?;
        return Ok(BootCheck::RolledBack {
            from: version,
            to: prev,
        });
    }
    write_synced(&pending, format!("{version} {}\n", starts + 1).as_bytes())?;
    Ok(BootCheck::Trial {
        version,
        start: starts + 1,
    })
}

/// The version on trial has proven itself (connected to the hub): keep it.
pub fn confirm(install_dir: &Path) -> Result<(), UpdateError> {
    let pending = install_dir.join(PENDING);
    match std::fs::remove_file(&pending) {
        Ok(()) => sync_dir(install_dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(UpdateError::Io {
            path: pending,
            source: e,
        }),
    }
}

/// Removes every version that is neither current nor previous.
fn prune(dir: &Path, current: &str, previous: Option<&str>) {
    let Ok(entries) = std::fs::read_dir(dir.join("versions")) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name != current && Some(name.as_str()) != previous && !name.starts_with('.') {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Runs `BINARY self-test [--config FILE]`; Err carries what it printed.
fn health_check(binary: &Path, opts: &InstallOptions) -> Result<(), String> {
    let mut cmd = std::process::Command::new(binary);
    cmd.arg("self-test");
    if let Some(c) = &opts.config {
        cmd.arg("--config").arg(c);
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
    let deadline = std::time::Instant::now() + opts.check_timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if std::time::Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "self-test did not finish in {:?}",
                    opts.check_timeout
                ));
            }
            // Polling a child's exit on a blocking thread: there is no portable wait-with-timeout.
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(e.to_string()),
        }
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stdout));
        let text = text.trim();
        Err(format!(
            "self-test exited with {}: {}",
            out.status,
            &text[..text.len().min(500)]
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_on_trial_that_never_connects_is_rolled_back() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        for v in ["0.1.0", "0.2.0"] {
            std::fs::create_dir_all(dir.join("versions").join(v)).unwrap();
        }
        point(dir, "previous", "0.1.0").unwrap();
        point(dir, "current", "0.2.0").unwrap();
        assert_eq!(boot_check(dir).unwrap(), BootCheck::Confirmed);
        std::fs::write(dir.join(PENDING), "0.2.0 0\n").unwrap();
        for start in 1..=MAX_PENDING_STARTS {
            assert_eq!(
                boot_check(dir).unwrap(),
                BootCheck::Trial {
                    version: "0.2.0".into(),
                    start
                }
            );
        }
        assert_eq!(
            boot_check(dir).unwrap(),
            BootCheck::RolledBack {
                from: "0.2.0".into(),
                to: "0.1.0".into()
            }
        );
        assert_eq!(current_version(dir).as_deref(), Some("0.1.0"));
        assert_eq!(boot_check(dir).unwrap(), BootCheck::Confirmed);
        // A confirmed trial stays.
        point(dir, "current", "0.2.0").unwrap();
        std::fs::write(dir.join(PENDING), "0.2.0 0\n").unwrap();
        assert!(matches!(boot_check(dir).unwrap(), BootCheck::Trial { .. }));
        confirm(dir).unwrap();
        assert_eq!(boot_check(dir).unwrap(), BootCheck::Confirmed);
        assert_eq!(current_version(dir).as_deref(), Some("0.2.0"));
    }

    #[test]
    fn versions() {
        assert!(check_version_text("0.1.0").is_ok());
        assert!(check_version_text("2").is_ok());
        for bad in ["", "1.", "a.b", "1.2.3.4.5", "1.-2", "1.2.3-rc1"] {
            assert!(check_version_text(bad).is_err(), "{bad}");
        }
        assert_eq!(compare_versions("0.10.0", "0.9.1"), Ordering::Greater);
        assert_eq!(compare_versions("1.0", "1.0.0"), Ordering::Equal);
        assert_eq!(compare_versions("1.0.0", "1.0.1"), Ordering::Less);
    }
}
