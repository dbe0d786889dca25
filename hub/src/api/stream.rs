//! `GET /api/v1/stream`: live feeds, twins and alerts inside the caller's grants.
//!
//! Server-sent events by default (`event: feed|twin|alert`, `data:` the JSON document); a
//! WebSocket when the request asks for an upgrade (text frames
//! `{"event":"feed","data":{...}}`). A subscriber that falls more than the live bus's capacity
//! behind gets a `lagged` event with the number of skipped updates, and goes on with the
//! newest.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use futures_util::{Stream, StreamExt};
use protocols::access::Principal;
use protocols::messages::ApiError;
use tokio::sync::broadcast::error::RecvError;

use super::{ApiState, Caller, Failure};
use series_store::SeriesStore;

/// The handler: a WebSocket if asked for, server-sent events otherwise.
#[utoipa::path(
    get,
    path = "/api/v1/stream",
    tag = "stream",
    operation_id = "stream",
    responses(
        (status = 200, description = "Server-sent events `feed`, `twin`, `alert`, `event` and `lagged`, each `data:` a JSON document", body = String, content_type = "text/event-stream"),
        (status = 101, description = "With `Upgrade: websocket`: a WebSocket of text frames `{\"event\":...,\"data\":{...}}`"),
        (status = 400, description = "A failed WebSocket upgrade", body = ApiError),
    )
)]
pub async fn handler<S: SeriesStore>(
    State(state): State<Arc<ApiState<S>>>,
    caller: Caller,
    req: Request,
) -> Response {
    let wants_ws = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !wants_ws {
        return sse(&state, caller.0).into_response();
    }
    let (mut parts, _) = req.into_parts();
    match WebSocketUpgrade::from_request_parts(&mut parts, &state).await {
        Ok(ws) => {
            let events = updates(&state, caller.0);
            ws.on_upgrade(move |socket| websocket(socket, events))
        }
        Err(e) => {
            Failure::bad_request(format!("WebSocket upgrade: {}", e.body_text())).into_response()
        }
    }
}

/// One live update for the caller: event name and JSON data.
type Update = (&'static str, String);

/// The caller's live updates, ending when the hub stops.
fn updates<S>(
    state: &ApiState<S>,
    principal: Arc<Principal>,
) -> impl Stream<Item = Update> + Send + 'static + use<S> {
    let rx = state.outlet.subscribe_live();
    let shutdown = state.shutdown.clone();
    stream::unfold(
        (rx, shutdown, principal),
        |(mut rx, mut shutdown, principal)| async move {
            loop {
                if shutdown.is_set() {
                    return None;
                }
                let next = tokio::select! {
                    r = rx.recv() => r,
                    _ = shutdown.recv() => return None,
                };
                match next {
                    Ok(u) => {
                        if !principal.grants_topic(&u.topic) {
                            continue;
                        }
                        // Documents are JSON made by the hub: valid UTF-8 without newlines.
                        let data = String::from_utf8_lossy(&u.payload).into_owned();
                        return Some(((u.kind.name(), data), (rx, shutdown, principal)));
                    }
                    Err(RecvError::Lagged(n)) => {
                        let data = format!("{{\"skipped\":{n}}}");
                        return Some((("lagged", data), (rx, shutdown, principal)));
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        },
    )
}

fn sse<S>(
    state: &ApiState<S>,
    principal: Arc<Principal>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>> + use<S>> {
    let events =
        updates(state, principal).map(|(name, data)| Ok(Event::default().event(name).data(data)));
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

async fn websocket(mut socket: WebSocket, events: impl Stream<Item = Update> + Send + 'static) {
    let mut events = std::pin::pin!(events);
    loop {
        tokio::select! {
            next = events.next() => match next {
                Some((name, data)) => {
                    let frame = format!("{{\"event\":\"{name}\",\"data\":{data}}}");
                    if socket.send(Message::Text(frame.into())).await.is_err() {
                        return;
                    }
                }
                None => break,
            },
            incoming = socket.recv() => match incoming {
                // The stream is one-way; pings are answered by the library, anything else ignored.
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}
