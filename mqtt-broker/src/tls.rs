//! MQTT over TLS: the handshake of an accepted socket, off the accept loop and bounded by the
//! connect timeout, and the client certificate it verified.
//!
//! The broker takes a ready [`rustls::ServerConfig`] (certificate, key, and the client CA
//! verifier are the application's business); a certificate that the config's verifier refused
//! (another CA, expired) ends the connection at the handshake. A verified certificate is
//! handed to the [`Authenticator`](crate::ingress::Authenticator) with the CONNECT, which maps
//! it to an identity.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use rustls::pki_types::CertificateDer;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::Core;
use crate::connection::Link;

/// Runs the server side of the handshake on `stream`; `None` (counted and logged) when it
/// fails or takes longer than the connect timeout.
pub(crate) async fn handshake(
    core: &Core,
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<Link> {
    let r = tokio::time::timeout(core.config.connect_timeout, acceptor.accept(stream)).await;
    let tls = match r {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            core.metrics.tls_failures.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%peer, error = %e, "MQTT TLS handshake failed");
            return None;
        }
        Err(_) => {
            core.metrics.tls_failures.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%peer, "MQTT TLS handshake not finished in time");
            return None;
        }
    };
    core.metrics.tls_handshakes.fetch_add(1, Ordering::Relaxed);
    let certificate: Option<CertificateDer<'static>> = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|c| c.clone().into_owned());
    let (rd, wr) = tokio::io::split(tls);
    Some(Link {
        rd: Box::new(rd),
        wr: Box::new(wr),
        certificate,
    })
}
