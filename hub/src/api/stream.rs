//! `GET /api/v1/stream`: live feeds, twins and alerts inside the caller's grants, as
//! server-sent events (`event: feed|twin|alert`, `data:` the JSON document).
//!
//! A subscriber that falls more than the live bus's capacity behind gets an `event: lagged`
//! with the number of skipped updates, and goes on with the newest.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use futures_util::stream;
use tokio::sync::broadcast::error::RecvError;

use super::{ApiState, Caller};
use crate::store::SeriesStore;

/// The handler.
pub async fn sse<S: SeriesStore>(
    State(state): State<Arc<ApiState<S>>>,
    caller: Caller,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = state.outlet.subscribe_live();
    let shutdown = state.shutdown.clone();
    let principal = caller.0;
    let events = stream::unfold(
        (rx, shutdown, principal),
        |(mut rx, mut shutdown, principal)| async move {
            loop {
                if *shutdown.borrow() {
                    return None;
                }
                let next = tokio::select! {
                    r = rx.recv() => r,
                    _ = shutdown.changed() => return None,
                };
                match next {
                    Ok(u) => {
                        if !principal.grants_topic(&u.topic) {
                            continue;
                        }
                        // Documents are JSON made by the hub: valid UTF-8 without newlines.
                        let data = String::from_utf8_lossy(&u.payload);
                        let ev = Event::default().event(u.kind.name()).data(data);
                        return Some((Ok(ev), (rx, shutdown, principal)));
                    }
                    Err(RecvError::Lagged(n)) => {
                        let ev = Event::default()
                            .event("lagged")
                            .data(format!("{{\"skipped\":{n}}}"));
                        return Some((Ok(ev), (rx, shutdown, principal)));
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        },
    );
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
