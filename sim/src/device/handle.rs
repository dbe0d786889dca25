//! The way into a running device: connection tasks pass it Modbus requests and await the
//! replies of the task that owns the firmware node.

use firmware::modbus::tcp::Header;
use tokio::sync::{mpsc, oneshot};

/// A request to the device's task.
pub(super) enum Request {
    Tcp {
        header: Header,
        pdu: Vec<u8>,
        reply: oneshot::Sender<Option<Vec<u8>>>,
    },
    Rtu {
        frame: Vec<u8>,
        reply: oneshot::Sender<Option<Vec<u8>>>,
    },
}

/// A way to send Modbus requests to a device's task.
#[derive(Clone, Debug)]
pub struct DeviceHandle {
    tx: mpsc::Sender<Request>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Tcp { header, .. } => write!(f, "Tcp({header:?})"),
            Request::Rtu { frame, .. } => write!(f, "Rtu({} bytes)", frame.len()),
        }
    }
}

impl DeviceHandle {
    pub(super) fn new(tx: mpsc::Sender<Request>) -> DeviceHandle {
        DeviceHandle { tx }
    }

    /// Serves one Modbus TCP request: the reply frame, `None` when none is due (broadcast,
    /// another unit) or the device has stopped.
    pub async fn tcp(&self, header: Header, pdu: Vec<u8>) -> Option<Vec<u8>> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Tcp { header, pdu, reply })
            .await
            .ok()?;
        rx.await.ok().flatten()
    }

    /// Serves one RTU frame through the firmware's RTU slave.
    pub async fn rtu(&self, frame: Vec<u8>) -> Option<Vec<u8>> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Request::Rtu { frame, reply }).await.ok()?;
        rx.await.ok().flatten()
    }

    /// Whether the device's task is still running.
    pub fn is_running(&self) -> bool {
        !self.tx.is_closed()
    }
}
