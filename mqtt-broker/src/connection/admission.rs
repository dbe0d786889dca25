//! Admission: the first packet must be a CONNECT (in time, within the packet limit); then the
//! protocol level, enhanced authentication, credentials through the [`Authenticator`], the
//! client id rules and the will topic decide whether the client is let in. A refusal is
//! answered with a CONNACK carrying the code of the client's protocol version.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::BytesMut;
use protocols::access::Principal;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{ReadHalf, WriteHalf};

use crate::codec::{self, ConnAckProps, Connect, DecodeError, Packet, Protocol, reason, v4_return};
use crate::ingress::{AuthError, Authenticator};
use crate::metrics::RefuseReason;
use crate::{Core, client_id_allowed};

/// Why no CONNECT was read.
#[derive(Debug, thiserror::Error)]
pub(super) enum ConnectFail {
    /// The client closed the socket first.
    #[error("closed before CONNECT")]
    Closed,
    /// The socket failed.
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes are not a CONNECT.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// Reads until a whole CONNECT is in `buf`; bytes after it stay in `buf`.
pub(super) async fn read_connect(
    rd: &mut ReadHalf,
    buf: &mut BytesMut,
    max: usize,
    core: &Core,
) -> Result<Box<Connect>, ConnectFail> {
    loop {
        match codec::decode(buf, None, max)? {
            Some(Packet::Connect(c)) => return Ok(c),
            Some(_) => {
                return Err(ConnectFail::Decode(DecodeError::Violation(
                    "first packet is not CONNECT",
                )));
            }
            None => {}
        }
        super::reader::make_room(buf);
        match rd.read_buf(buf).await? {
            0 => return Err(ConnectFail::Closed),
            n => {
                core.metrics.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }
}

/// Answers bytes that were not a valid CONNECT: a CONNACK "unacceptable protocol version" for
/// an unknown level (what 3.1.1 asks for), otherwise just the close; counted either way.
pub(super) async fn reject_bad_connect(core: &Core, wr: &mut WriteHalf, e: &DecodeError) {
    if let DecodeError::UnsupportedLevel(_) = e {
        core.metrics.refuse(RefuseReason::Protocol);
        let mut out = BytesMut::new();
        codec::encode_connack(
            &mut out,
            Protocol::V4,
            false,
            v4_return::BAD_PROTOCOL,
            &ConnAckProps::default(),
        );
        let _ = wr.write_all(&out).await;
        let _ = wr.flush().await;
    } else {
        core.metrics.protocol_errors.fetch_add(1, Ordering::Relaxed);
        if matches!(e, DecodeError::TooLarge { .. }) {
            core.metrics.oversized.fetch_add(1, Ordering::Relaxed);
        }
    }
    let _ = wr.shutdown().await;
}

/// Why a CONNECT was refused, in both protocol versions.
#[derive(Debug)]
pub(super) struct Refusal {
    /// The counter it goes to.
    pub reason: RefuseReason,
    /// MQTT 3.1.1 CONNACK return code.
    pub v4: u8,
    /// MQTT 5 CONNACK reason code.
    pub v5: u8,
    /// What the log says.
    pub log: &'static str,
}

impl Refusal {
    /// Over `max_connections`.
    pub const BUSY: Refusal = Refusal {
        reason: RefuseReason::ServerBusy,
        v4: v4_return::SERVER_UNAVAILABLE,
        v5: reason::QUOTA_EXCEEDED,
        log: "connection limit reached (max_connections)",
    };

    const CLIENT_ID: Refusal = Refusal {
        reason: RefuseReason::ClientId,
        v4: v4_return::IDENTIFIER_REJECTED,
        v5: reason::CLIENT_ID_NOT_VALID,
        log: "client id does not belong to the user",
    };

    /// Counts the refusal and sends the CONNACK that says it, then closes.
    pub async fn send(self, core: &Core, wr: &mut WriteHalf, protocol: Protocol, peer: SocketAddr) {
        core.metrics.refuse(self.reason);
        tracing::info!(%peer, reason = self.log, "MQTT CONNECT refused");
        let code = match protocol {
            Protocol::V4 => self.v4,
            Protocol::V5 => self.v5,
        };
        let mut out = BytesMut::new();
        codec::encode_connack(&mut out, protocol, false, code, &ConnAckProps::default());
        let _ = wr.write_all(&out).await;
        let _ = wr.flush().await;
        let _ = wr.shutdown().await;
    }
}

/// An admitted client.
#[derive(Debug)]
pub(super) struct Admitted {
    /// Its CONNECT.
    pub connect: Connect,
    /// Who it is.
    pub principal: Arc<Principal>,
    /// Its client id (assigned when it sent none).
    pub client_id: Arc<str>,
    /// Whether the broker assigned the client id (MQTT 5 tells the client in CONNACK).
    pub assigned: bool,
}

/// Decides whether a CONNECT is let in. A client certificate verified by the TLS handshake
/// authenticates through [`Authenticator::authenticate_certificate`] instead of the password.
pub(super) async fn admit<A: Authenticator>(
    core: &Core,
    auth: &A,
    connect: Connect,
    peer: SocketAddr,
    certificate: Option<&CertificateDer<'static>>,
) -> Result<Admitted, Refusal> {
    if connect.client_id.is_empty() && !connect.v5 && !connect.clean_start {
        return Err(Refusal {
            log: "empty client id with a persistent session",
            ..Refusal::CLIENT_ID
        });
    }
    if connect.auth_method.is_some() {
        return Err(Refusal {
            reason: RefuseReason::Protocol,
            v4: v4_return::BAD_PROTOCOL,
            v5: reason::BAD_AUTHENTICATION_METHOD,
            log: "enhanced authentication is not supported",
        });
    }
    // A client without an id is given one: its user name is valid for every role (with a
    // certificate and no user name, the certificate's identity, once known).
    let mut asked_id = if connect.client_id.is_empty() {
        connect.username.clone().unwrap_or_default()
    } else {
        connect.client_id.clone()
    };
    let authenticated = match certificate {
        Some(cert) => {
            auth.authenticate_certificate(&asked_id, connect.username.as_deref(), cert.as_ref())
                .await
        }
        None => {
            auth.authenticate(
                &asked_id,
                connect.username.as_deref(),
                connect.password.as_deref(),
            )
            .await
        }
    };
    let principal = authenticated.map_err(|e| match e {
        AuthError::BadCredentials => Refusal {
            reason: RefuseReason::BadCredentials,
            v4: v4_return::BAD_CREDENTIALS,
            v5: reason::BAD_USER_NAME_OR_PASSWORD,
            log: "bad user name or password",
        },
        AuthError::ClientIdMismatch(_) => Refusal::CLIENT_ID,
    })?;
    if asked_id.is_empty() {
        asked_id = principal.id().to_string();
    }
    // Defence in depth: the rule holds whatever the authenticator checked.
    if !client_id_allowed(&principal, &asked_id) {
        return Err(Refusal::CLIENT_ID);
    }
    let assigned = connect.client_id.is_empty();
    let client_id: Arc<str> = match (&*principal, assigned) {
        (Principal::App { id, .. }, true) => {
            let n = core.generation.fetch_add(1, Ordering::Relaxed);
            format!("{id}.auto-{n}").into()
        }
        _ => asked_id.into(),
    };
    if let Some(w) = &connect.will
        && let Err(denied) = core.access.may_publish(&principal, &w.topic)
    {
        tracing::info!(%peer, client = %client_id, topic = %w.topic, %denied, "will topic refused");
        return Err(Refusal {
            reason: RefuseReason::WillDenied,
            v4: v4_return::NOT_AUTHORIZED,
            v5: reason::NOT_AUTHORIZED,
            log: "will topic not allowed",
        });
    }
    if *core.shutdown.borrow() {
        return Err(Refusal {
            reason: RefuseReason::ShuttingDown,
            v4: v4_return::SERVER_UNAVAILABLE,
            v5: reason::SERVER_SHUTTING_DOWN,
            log: "shutting down",
        });
    }
    Ok(Admitted {
        connect,
        principal,
        client_id,
        assigned,
    })
}
