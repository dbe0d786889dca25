//! The demo's secrets: random on the first run, kept in `DIR/secrets.toml` (mode 0600) and
//! used again on later runs, so a bookmarked dashboard URL and the written configs stay valid.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use rand::Rng;
use rand::distributions::Alphanumeric;

/// The file name inside the demo directory.
pub const FILE: &str = "secrets.toml";

/// Length of a generated secret (alphanumeric: ~143 bits).
const LEN: usize = 24;

/// Why the secrets could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The file is not a table of strings.
    #[error("{path}: {detail} (delete the file to start with new secrets)")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

/// Secrets by client id.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Secrets {
    by_id: BTreeMap<String, String>,
}

impl Secrets {
    /// Loads `dir/secrets.toml` and adds a random secret for every id in `ids` that has none;
    /// writes the file back when it changed.
    pub fn load_or_create<'a>(
        dir: &Path,
        ids: impl IntoIterator<Item = &'a str>,
    ) -> Result<Secrets, SecretsError> {
        let path = dir.join(FILE);
        let io = |source| SecretsError::Io {
            path: path.clone(),
            source,
        };
        let mut by_id: BTreeMap<String, String> = match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| SecretsError::Invalid {
                path: path.clone(),
                detail: e.message().to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(io(e)),
        };
        let mut changed = false;
        let mut rng = rand::thread_rng();
        for id in ids {
            match by_id.get(id) {
                Some(s) if s.len() >= 8 => {}
                Some(_) => {
                    return Err(SecretsError::Invalid {
                        path,
                        detail: format!("the secret of `{id}` is shorter than 8 characters"),
                    });
                }
                None => {
                    let s: String = (&mut rng)
                        .sample_iter(&Alphanumeric)
                        .take(LEN)
                        .map(char::from)
                        .collect();
                    by_id.insert(id.to_string(), s);
                    changed = true;
                }
            }
        }
        if changed {
            std::fs::create_dir_all(dir).map_err(io)?;
            let text = toml::to_string(&by_id).map_err(|e| SecretsError::Invalid {
                path: path.clone(),
                detail: e.to_string(),
            })?;
            write_private(&path, &text).map_err(io)?;
        }
        Ok(Secrets { by_id })
    }

    /// The secret of a client id (empty if the id was not asked for).
    pub fn get(&self, id: &str) -> &str {
        self.by_id.get(id).map(String::as_str).unwrap_or("")
    }
}

/// Writes a file only its owner can read, atomically (temp file, then rename).
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("toml.tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(b"# Secrets of the simulated district (sim demo); delete to regenerate.\n")?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = Secrets::load_or_create(dir.path(), ["a", "b"]).unwrap();
        assert_eq!(a.get("a").len(), LEN);
        assert_ne!(a.get("a"), a.get("b"));
        let again = Secrets::load_or_create(dir.path(), ["a", "b", "c"]).unwrap();
        assert_eq!(again.get("a"), a.get("a"));
        assert_eq!(again.get("c").len(), LEN);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(dir.path().join(FILE), "a = 5\n").unwrap();
        let e = Secrets::load_or_create(dir.path(), ["a"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("secrets.toml"), "{e}");
    }
}
