//! Modbus TCP connections: MBAP frames off the socket, to the device task, replies back.
//!
//! A header that is not Modbus (foreign protocol id, impossible length) leaves no way to find
//! the next frame, so the connection is closed with a log line; the device and its other
//! clients carry on.

use std::net::SocketAddr;
use std::time::Duration;

use firmware::modbus::tcp::{HEADER_LEN, Header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;

use super::handle::DeviceHandle;

/// A client that sent a header must send the rest of its frame within this time.
const BODY_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves one client until it closes, sends garbage or the device stops.
pub async fn serve_connection(mut stream: TcpStream, peer: SocketAddr, device: DeviceHandle) {
    let _ = stream.set_nodelay(true);
    let mut head = [0u8; HEADER_LEN];
    loop {
        if stream.read_exact(&mut head).await.is_err() {
            debug!(%peer, "client closed");
            return;
        }
        let header = match Header::parse(&head) {
            Ok(h) => h,
            Err(e) => {
                debug!(%peer, error = ?e, "not a Modbus TCP frame; closing the connection");
                return;
            }
        };
        let mut pdu = vec![0u8; header.pdu_len];
        match tokio::time::timeout(BODY_TIMEOUT, stream.read_exact(&mut pdu)).await {
            Ok(Ok(_)) => {}
            _ => {
                debug!(%peer, "incomplete frame; closing the connection");
                return;
            }
        }
        if !device.is_running() {
            return;
        }
        if let Some(reply) = device.tcp(header, pdu).await
            && stream.write_all(&reply).await.is_err()
        {
            return;
        }
    }
}
