//! rumqttc's event loop, made safe to wait on in `select!`.

use std::future::Future;
use std::pin::Pin;

use rumqttc::{ConnectionError, Event, EventLoop};

type Polled = (EventLoop, Result<Event, ConnectionError>);

/// The events of one connection. `EventLoop::poll` is not cancel-safe: dropped while it
/// connects, it closes the new connection (and the broker sends the will); dropped while it
/// writes, a request is lost. So one poll stays in flight across `select!` rounds, owning the
/// loop, and [`Events::next`] only waits for it.
pub struct Events {
    pending: Pin<Box<dyn Future<Output = Polled> + Send>>,
}

impl Events {
    /// Takes over the loop; the first poll starts at once.
    pub fn new(events: EventLoop) -> Events {
        Events {
            pending: Events::poll(events),
        }
    }

    fn poll(mut events: EventLoop) -> Pin<Box<dyn Future<Output = Polled> + Send>> {
        Box::pin(async move {
            let event = events.poll().await;
            (events, event)
        })
    }

    /// The next event; cancel-safe.
    pub async fn next(&mut self) -> Result<Event, ConnectionError> {
        let (events, event) = (&mut self.pending).await;
        self.pending = Events::poll(events);
        event
    }
}
