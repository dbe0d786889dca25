//! The real [`Authenticator`]: credentials checked against the [`Registry`].
//!
//! Plain secrets are compared in constant time (on SHA-256 digests, so lengths do not leak
//! either). Argon2 hashes are verified on the blocking pool, at most a few at once (each costs
//! ~19 MiB and tens of milliseconds), and a successful verification is remembered as a keyed
//! digest of the password: a reconnect with the same password skips argon2, while a wrong
//! password never matches the cache and always pays the full verification.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use protocols::access::Principal;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

use crate::registry::{Identity, Registry, Secret};
use mqtt_broker::client_id_allowed;
use mqtt_broker::ingress::{AuthError, Authenticator};

/// How long a successful argon2 verification is remembered.
const CACHE_TTL: Duration = Duration::from_secs(15 * 60);
/// Most remembered verifications; the cache is emptied when full (a full cache means churn).
const CACHE_MAX: usize = 100_000;
/// Argon2 verifications running at once.
const ARGON2_PARALLEL: usize = 2;

/// A remembered argon2 success: a keyed digest of the password, and when.
#[derive(Clone, Copy)]
struct Verified {
    digest: [u8; 32],
    at: Instant,
}

/// Checks MQTT and HTTP credentials against the registry. Cheap to clone (shared state), so
/// the ingress and the API use one cache.
#[derive(Clone)]
pub struct RegistryAuthenticator {
    inner: Arc<Shared>,
}

struct Shared {
    registry: Arc<Registry>,
    /// Per-process random key for the cache digests.
    cache_key: [u8; 32],
    /// id -> the last successful verification.
    cache: Mutex<HashMap<Arc<str>, Verified>>,
    argon2_slots: Semaphore,
}

impl RegistryAuthenticator {
    /// An authenticator over a registry.
    pub fn new(registry: Arc<Registry>) -> RegistryAuthenticator {
        RegistryAuthenticator {
            inner: Arc::new(Shared {
                registry,
                cache_key: rand::random(),
                cache: Mutex::new(HashMap::new()),
                argon2_slots: Semaphore::new(ARGON2_PARALLEL),
            }),
        }
    }

    /// The registry it checks against.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.inner.registry
    }

    fn keyed_digest(&self, id: &str, password: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.inner.cache_key);
        h.update((id.len() as u64).to_le_bytes());
        h.update(id.as_bytes());
        h.update(password);
        h.finalize().into()
    }

    /// Verifies `password` for the identity `id` (any role), without client-id rules.
    pub async fn verify_secret(
        &self,
        id: &str,
        password: &[u8],
    ) -> Result<Arc<Principal>, AuthError> {
        let shared = &self.inner;
        let identity = shared
            .registry
            .identity(id)
            .ok_or(AuthError::BadCredentials)?;
        let (secret, principal) = match identity {
            Identity::Device(i) => {
                let d = shared.registry.device(i);
                (&d.secret, &d.principal)
            }
            Identity::Agent(i) => {
                let a = shared.registry.agent(i);
                (&a.secret, &a.principal)
            }
            Identity::App(i) => {
                let a = &shared.registry.apps()[i as usize];
                (&a.secret, &a.principal)
            }
        };
        match secret {
            Secret::None => Err(AuthError::BadCredentials),
            Secret::Plain(expected) => {
                let a = Sha256::digest(expected);
                let b = Sha256::digest(password);
                if bool::from(a.as_slice().ct_eq(b.as_slice())) {
                    Ok(principal.clone())
                } else {
                    Err(AuthError::BadCredentials)
                }
            }
            Secret::Hash(phc) => {
                let digest = self.keyed_digest(id, password);
                if let Some(v) = shared.cache.lock().get(id).copied()
                    && v.at.elapsed() < CACHE_TTL
                    && bool::from(v.digest.ct_eq(&digest))
                {
                    return Ok(principal.clone());
                }
                let ok = {
                    let _slot = shared
                        .argon2_slots
                        .acquire()
                        .await
                        .map_err(|_| AuthError::BadCredentials)?;
                    let phc = phc.clone();
                    let password = password.to_vec();
                    tokio::task::spawn_blocking(move || verify_argon2(&phc, &password))
                        .await
                        .unwrap_or(false)
                };
                if !ok {
                    return Err(AuthError::BadCredentials);
                }
                let mut cache = shared.cache.lock();
                if cache.len() >= CACHE_MAX {
                    cache.clear();
                }
                cache.insert(
                    Arc::from(id),
                    Verified {
                        digest,
                        at: Instant::now(),
                    },
                );
                Ok(principal.clone())
            }
        }
    }
}

fn verify_argon2(phc: &str, password: &[u8]) -> bool {
    use argon2::PasswordVerifier;
    match argon2::PasswordHash::new(phc) {
        Ok(hash) => argon2::Argon2::default()
            .verify_password(password, &hash)
            .is_ok(),
        Err(_) => false,
    }
}

impl Authenticator for RegistryAuthenticator {
    async fn authenticate(
        &self,
        client_id: &str,
        username: Option<&str>,
        password: Option<&[u8]>,
    ) -> Result<Arc<Principal>, AuthError> {
        let (Some(user), Some(password)) = (username, password) else {
            return Err(AuthError::BadCredentials);
        };
        let principal = self.verify_secret(user, password).await?;
        if !client_id_allowed(&principal, client_id) {
            return Err(AuthError::ClientIdMismatch(protocols::id::clip(client_id)));
        }
        Ok(principal)
    }

    /// A verified client certificate names a device or an agent (SAN URI
    /// `urn:district:{id}` or subject CN); apps log in by password or token. A user name, if
    /// given, must be that identity.
    async fn authenticate_certificate(
        &self,
        client_id: &str,
        username: Option<&str>,
        certificate: &[u8],
    ) -> Result<Arc<Principal>, AuthError> {
        let id = crate::tls::certificate_identity(certificate).ok_or(AuthError::BadCredentials)?;
        if username.is_some_and(|u| u != id) {
            return Err(AuthError::BadCredentials);
        }
        let registry = &self.inner.registry;
        let principal = match registry.identity(&id) {
            Some(Identity::Device(i)) => registry.device(i).principal.clone(),
            Some(Identity::Agent(i)) => registry.agent(i).principal.clone(),
            Some(Identity::App(_)) | None => return Err(AuthError::BadCredentials),
        };
        if !client_id.is_empty() && !client_id_allowed(&principal, client_id) {
            return Err(AuthError::ClientIdMismatch(protocols::id::clip(client_id)));
        }
        Ok(principal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HubConfig;

    fn hash(secret: &str) -> String {
        use argon2::password_hash::{PasswordHasher, SaltString};
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        argon2::Argon2::default()
            .hash_password(secret.as_bytes(), &salt)
            .unwrap()
            .to_string()
    }

    fn auth() -> RegistryAuthenticator {
        let text = format!(
            r#"
[[devices]]
id = "WL-1"
kind = "water_level"
secret = "device-secret"

[[devices]]
id = "SL-1"
kind = "streetlight"
agent = "AG-1"

[[agents]]
id = "AG-1"
secret_hash = "{}"

[[apps]]
id = "cc"
secret = "app-secret-1"
grants = ["feeds/#"]
"#,
            hash("agent-secret")
        );
        RegistryAuthenticator::new(Arc::new(Registry::from_config(
            &HubConfig::from_toml(&text).unwrap(),
        )))
    }

    #[tokio::test]
    async fn plain_secrets_and_client_ids() {
        let a = auth();
        let p = a
            .authenticate("WL-1", Some("WL-1"), Some(b"device-secret"))
            .await
            .unwrap();
        assert_eq!(*p, Principal::Device("WL-1".into()));
        assert_eq!(
            a.authenticate("WL-1", Some("WL-1"), Some(b"device-secreT"))
                .await,
            Err(AuthError::BadCredentials)
        );
        assert_eq!(
            a.authenticate("WL-1", Some("WL-1"), Some(b"device-secret-longer"))
                .await,
            Err(AuthError::BadCredentials)
        );
        assert_eq!(
            a.authenticate("WL-1", Some("WL-1"), None).await,
            Err(AuthError::BadCredentials)
        );
        assert_eq!(
            a.authenticate("x", Some("nobody"), Some(b"device-secret"))
                .await,
            Err(AuthError::BadCredentials)
        );
        assert_eq!(
            a.authenticate("WL-2", Some("WL-1"), Some(b"device-secret"))
                .await,
            Err(AuthError::ClientIdMismatch("WL-2".into()))
        );
        // A device behind an agent has no secret: it cannot log in at all.
        assert_eq!(
            a.authenticate("SL-1", Some("SL-1"), Some(b"")).await,
            Err(AuthError::BadCredentials)
        );
        for ok in ["cc", "cc.tablet", "cc.a.b"] {
            assert!(
                a.authenticate(ok, Some("cc"), Some(b"app-secret-1"))
                    .await
                    .is_ok(),
                "{ok}"
            );
        }
        for bad in ["cc.", "ccx", "cc-tablet", "x.cc"] {
            assert!(
                matches!(
                    a.authenticate(bad, Some("cc"), Some(b"app-secret-1")).await,
                    Err(AuthError::ClientIdMismatch(_))
                ),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn argon2_with_cache_that_wrong_passwords_never_hit() {
        let a = auth();
        assert_eq!(
            a.authenticate("AG-1", Some("AG-1"), Some(b"wrong")).await,
            Err(AuthError::BadCredentials)
        );
        assert!(a.inner.cache.lock().is_empty());
        let p = a
            .authenticate("AG-1", Some("AG-1"), Some(b"agent-secret"))
            .await
            .unwrap();
        assert_eq!(*p, Principal::Agent("AG-1".into()));
        assert_eq!(a.inner.cache.lock().len(), 1);
        // Cached now; the wrong password still fails, the right one still passes.
        assert_eq!(
            a.authenticate("AG-1", Some("AG-1"), Some(b"wrong")).await,
            Err(AuthError::BadCredentials)
        );
        assert!(
            a.authenticate("AG-1", Some("AG-1"), Some(b"agent-secret"))
                .await
                .is_ok()
        );
        // The cache entry is not usable by another identity.
        assert_eq!(
            a.authenticate("cc", Some("cc"), Some(b"agent-secret"))
                .await,
            Err(AuthError::BadCredentials)
        );
    }
}
