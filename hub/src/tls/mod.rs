//! TLS for the hub's listeners (hub.toml `[hub] tls_cert`, `tls_key`, `client_ca`): the
//! server configurations of MQTT over TLS and HTTPS, the identity a client certificate
//! carries, and an HTTPS listener whose handshakes run beside its accept loop.
//!
//! rustls with the ring provider, TLS 1.2 and 1.3; session resumption by tickets and a
//! session cache, so a fleet reconnecting after an outage mostly skips the full handshake.
//! Client certificates are asked for on MQTT only (a browser would pop up a certificate
//! chooser on HTTPS), and are optional there: a device without one logs in by password.
//! [`dev`] makes a development CA and certificates (the demo, the tests).

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::HubSettings;

pub mod dev;

/// Resumable TLS sessions kept per listener kind (about 18,000 devices reconnecting at once).
const SESSION_CACHE: usize = 32_768;
/// Longest an HTTPS client may take for its handshake.
const HTTPS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a TLS configuration could not be built from hub.toml's files.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// A file holds no usable PEM of the expected kind.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// TLS listeners without `tls_cert` and `tls_key`.
    #[error("TLS listeners need hub.tls_cert and hub.tls_key")]
    Missing,
    /// rustls refused the certificate, key or client CA.
    #[error("TLS configuration: {0}")]
    Rustls(String),
}

/// Which listener a configuration is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// MQTT over TLS: client certificates from `client_ca` identify devices and agents.
    Mqtt,
    /// The HTTP API and dashboard: server authentication only.
    Https,
}

/// The server configuration for `listener` from `[hub]`'s files; `None` when `[hub]` has no
/// listener of that kind.
pub fn server_config(
    settings: &HubSettings,
    listener: Listener,
) -> Result<Option<Arc<ServerConfig>>, TlsError> {
    let wanted = match listener {
        Listener::Mqtt => !settings.mqtt_tls_listen.is_empty(),
        Listener::Https => settings.https_listen.is_some(),
    };
    if !wanted {
        return Ok(None);
    }
    let (Some(cert), Some(key)) = (&settings.tls_cert, &settings.tls_key) else {
        return Err(TlsError::Missing);
    };
    let client_ca = match listener {
        Listener::Mqtt => settings.client_ca.as_deref(),
        Listener::Https => None,
    };
    build(cert, key, client_ca).map(Some)
}

fn rustls_error(e: impl std::fmt::Display) -> TlsError {
    TlsError::Rustls(e.to_string())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The certificates of a PEM file (at least one).
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            what: format!("bad PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            what: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    match rustls_pemfile::private_key(&mut pem.as_slice()) {
        Ok(Some(key)) => Ok(key),
        Ok(None) => Err(TlsError::Pem {
            path: path.to_path_buf(),
            what: "no PRIVATE KEY block (PKCS#8, PKCS#1 or SEC1)".into(),
        }),
        Err(e) => Err(TlsError::Pem {
            path: path.to_path_buf(),
            what: format!("bad PEM: {e}"),
        }),
    }
}

fn build(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(rustls_error)?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for c in certificates(path)? {
                roots.add(c).map_err(|e| TlsError::Pem {
                    path: path.to_path_buf(),
                    what: format!("not a CA certificate: {e}"),
                })?;
            }
            // Optional: devices without a certificate still log in by password.
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(rustls_error)?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certificates(cert)?, private_key(key)?)
        .map_err(rustls_error)?;
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
    config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(rustls_error)?;
    Ok(Arc::new(config))
}

/// The identity a client certificate names: a SAN URI `urn:district:{id}` first, else the
/// subject's common name. `None` for a certificate that does not parse or names nobody.
pub fn certificate_identity(der: &[u8]) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name
                && let Some(id) = uri.strip_prefix("urn:district:")
                && !id.is_empty()
            {
                return Some(id.to_string());
            }
        }
    }
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str()
        .ok()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// An HTTPS listener for `axum::serve`: a task accepts TCP connections and runs each
/// handshake in a task of its own (bounded by a timeout), so one slow or hostile client never
/// holds up the others; finished handshakes queue here.
pub struct HttpsListener {
    addr: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    accepting: JoinHandle<()>,
}

impl HttpsListener {
    /// Serves TLS with `config` on a bound `listener`.
    pub fn new(listener: TcpListener, config: Arc<ServerConfig>) -> io::Result<HttpsListener> {
        let addr = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(256);
        let acceptor = TlsAcceptor::from(config);
        let accepting = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "HTTPS accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    return;
                }
                let (tx, acceptor) = (tx.clone(), acceptor.clone());
                tokio::spawn(async move {
                    let _ = tcp.set_nodelay(true);
                    match tokio::time::timeout(HTTPS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                    {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::info!(%peer, error = %e, "HTTPS handshake failed"),
                        Err(_) => tracing::info!(%peer, "HTTPS handshake not finished in time"),
                    }
                });
            }
        });
        Ok(HttpsListener {
            addr,
            ready,
            accepting,
        })
    }
}

impl Drop for HttpsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl axum::serve::Listener for HttpsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accept task is gone (only after drop): nothing will come any more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.addr)
    }
}

#[cfg(test)]
mod tests {
    use super::dev::{ClientName, DevCa};
    use super::*;

    fn der(pem: &str) -> Vec<u8> {
        let mut bytes = pem.as_bytes();
        let first = rustls_pemfile::certs(&mut bytes).next().unwrap().unwrap();
        first.to_vec()
    }

    #[test]
    fn a_certificate_names_its_holder_by_san_uri_first_then_common_name() {
        let ca = DevCa::new("test").unwrap();
        let cn = ca.client("WL-0001", ClientName::CommonName).unwrap();
        assert_eq!(
            certificate_identity(&der(&cn.cert_pem)).as_deref(),
            Some("WL-0001")
        );
        // The URI wins over a CN that is not an id.
        let uri = ca.client("AG-0001", ClientName::Uri).unwrap();
        assert_eq!(
            certificate_identity(&der(&uri.cert_pem)).as_deref(),
            Some("AG-0001")
        );
        assert_eq!(certificate_identity(b"not a certificate"), None);
        assert_eq!(certificate_identity(&[]), None);
    }

    #[test]
    fn files_that_are_not_pem_are_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::new("test").unwrap();
        let (crt, key) = ca
            .server(&["127.0.0.1"])
            .unwrap()
            .write(dir.path(), "hub")
            .unwrap();
        assert!(build(&crt, &key, Some(&ca.write(dir.path(), "ca").unwrap())).is_ok());
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "hello").unwrap();
        let e = build(&junk, &key, None).unwrap_err().to_string();
        assert!(e.contains("junk.pem: no CERTIFICATE block"), "{e}");
        let e = build(&crt, &junk, None).unwrap_err().to_string();
        assert!(e.contains("junk.pem: no PRIVATE KEY block"), "{e}");
        let e = build(&crt, &dir.path().join("missing.key"), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("cannot read") && e.contains("missing.key"),
            "{e}"
        );
        // A key that does not belong to the certificate.
        let (_, other_key) = ca
            .server(&["127.0.0.1"])
            .unwrap()
            .write(dir.path(), "other")
            .unwrap();
        let e = build(&crt, &other_key, None).unwrap_err().to_string();
        assert!(e.starts_with("TLS configuration"), "{e}");
    }
}
