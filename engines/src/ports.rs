//! Free loopback ports.

use std::net::TcpListener;

/// A port on 127.0.0.1 that nothing listened on a moment ago (bound, read, released; another
/// process may take it in between, which on a test machine is rare enough).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
