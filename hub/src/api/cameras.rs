//! The camera routes of the HTTP API:
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /api/v1/cameras` | the catalog: cameras the caller may see |
//! | `GET /api/v1/cameras/{id}` | one catalog entry |
//! | `GET /api/v1/cameras/{id}/snapshot` | the latest JPEG (`image/jpeg`; `x-event-id` names its event) |
//! | `GET /api/v1/cameras/{id}/snapshots/{event}` | the JPEG of one event |
//! | `GET /api/v1/events?camera=&from=&to=&limit=` | events newest first (start in `[from, to)`) |
//!
//! A camera is visible with a grant matching `v1/feeds/camera/{id}`: otherwise a named camera
//! is 403 and listings leave it out. Unknown cameras are 404.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use protocols::id::clip;
use protocols::messages::{ApiError, CameraEntry};
use protocols::time::parse_rfc3339;
use serde::Deserialize;

use super::{ApiState, Caller, Failure};
use crate::registry::Device;
use crate::video::catalog::{self, is_camera};
use crate::video::events::{EventRecord, valid_id};
use series_store::SeriesStore;

/// Events per answer without `limit`.
pub const DEFAULT_LIMIT: usize = 100;
/// Most events per answer.
pub const MAX_LIMIT: usize = 1000;

/// The camera routes, to merge into the API router.
pub fn routes<S: SeriesStore>() -> Router<Arc<ApiState<S>>> {
    Router::new()
        .route("/api/v1/cameras", get(cameras::<S>))
        .route("/api/v1/cameras/{id}", get(camera::<S>))
        .route("/api/v1/cameras/{id}/snapshot", get(latest_snapshot::<S>))
        .route(
            "/api/v1/cameras/{id}/snapshots/{event}",
            get(event_snapshot::<S>),
        )
        .route("/api/v1/events", get(events::<S>))
}

/// The camera with this id if the caller may see it: 404 unknown (or not a camera), 403
/// outside the grants.
fn visible_camera<'a, S>(
    state: &'a ApiState<S>,
    caller: &Caller,
    id: &str,
) -> Result<&'a Device, Failure> {
    let d = state
        .registry
        .device_by_id(id)
        .filter(|d| is_camera(d))
        .ok_or_else(|| Failure::not_found(format!("no camera `{}`", clip(id))))?;
    if !catalog::visible(&caller.0, d) {
        return Err(Failure::forbidden(format!(
            "no grant covers {}",
            d.feed_topic
        )));
    }
    Ok(d)
}

/// `GET /api/v1/cameras`.
#[utoipa::path(
    get,
    path = "/api/v1/cameras",
    tag = "cameras",
    operation_id = "list_cameras",
    responses((status = 200, description = "The cameras the caller may see", body = Vec<CameraEntry>))
)]
pub async fn cameras<S: SeriesStore>(
    State(state): State<Arc<ApiState<S>>>,
    caller: Caller,
) -> Json<Vec<CameraEntry>> {
    let now = protocols::time::now_ms();
    let out = state
        .registry
        .devices()
        .iter()
        .filter(|d| catalog::visible(&caller.0, d))
        .map(|d| catalog::entry(&state.twins, d, now))
        .collect();
    Json(out)
}

/// `GET /api/v1/cameras/{id}`.
#[utoipa::path(
    get,
    path = "/api/v1/cameras/{id}",
    tag = "cameras",
    operation_id = "get_camera",
    params(("id" = String, Path, description = "Camera device id")),
    responses(
        (status = 200, description = "The catalog entry", body = CameraEntry),
        (status = 404, description = "No such camera", body = ApiError),
    )
)]
pub async fn camera<S: SeriesStore>(
    State(state): State<Arc<ApiState<S>>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<CameraEntry>, Failure> {
    let d = visible_camera(&state, &caller, &id)?;
    Ok(Json(catalog::entry(
        &state.twins,
        d,
        protocols::time::now_ms(),
    )))
}

fn jpeg(bytes: Vec<u8>, event: &str) -> Response {
    let mut r = (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("image/jpeg")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        bytes,
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(event) {
        r.headers_mut().insert("x-event-id", v);
    }
    r
}

async fn read_snapshot<S: SeriesStore>(
    state: &Arc<ApiState<S>>,
    agent: String,
    event: String,
) -> Result<Option<Vec<u8>>, Failure> {
    let video = state.video.clone();
    tokio::task::spawn_blocking(move || video.archive().snapshot_jpeg(&agent, &event))
        .await
        .map_err(|e| Failure::internal(e.to_string()))?
        .map_err(|e| Failure::internal(e.to_string()))
}

/// `GET /api/v1/cameras/{id}/snapshot`: the JPEG of the newest event that has one.
#[utoipa::path(
    get,
    path = "/api/v1/cameras/{id}/snapshot",
    tag = "cameras",
    operation_id = "latest_snapshot",
    params(("id" = String, Path, description = "Camera device id")),
    responses(
        (status = 200, description = "The JPEG of the newest event that has one; `x-event-id` names the event", body = Vec<u8>, content_type = "image/jpeg",
            headers(("x-event-id" = String, description = "The event the snapshot belongs to"))),
        (status = 404, description = "No such camera, or no snapshot yet", body = ApiError),
    )
)]
pub async fn latest_snapshot<S: SeriesStore>(
    State(state): State<Arc<ApiState<S>>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    let d = visible_camera(&state, &caller, &id)?;
    let none = || Failure::not_found(format!("camera `{}` has no snapshot yet", d.id));
    let latest = state.video.archive().latest(&d.id).ok_or_else(none)?;
    let bytes = read_snapshot(&state, latest.agent, latest.id.clone())
        .await?
        .ok_or_else(none)?;
    Ok(jpeg(bytes, &latest.id))
}

/// `GET /api/v1/cameras/{id}/snapshots/{event}`.
#[utoipa::path(
    get,
    path = "/api/v1/cameras/{id}/snapshots/{event}",
    tag = "cameras",
    operation_id = "event_snapshot",
    params(
        ("id" = String, Path, description = "Camera device id"),
        ("event" = String, Path, description = "Event id"),
    ),
    responses(
        (status = 200, description = "The JPEG of the event", body = Vec<u8>, content_type = "image/jpeg",
            headers(("x-event-id" = String, description = "The event the snapshot belongs to"))),
        (status = 404, description = "No such camera, event or snapshot", body = ApiError),
    )
)]
pub async fn event_snapshot<S: SeriesStore>(
    State(state): State<Arc<ApiState<S>>>,
    caller: Caller,
    Path((id, event)): Path<(String, String)>,
) -> Result<Response, Failure> {
    let d = visible_camera(&state, &caller, &id)?;
    let missing = || {
        Failure::not_found(format!(
            "camera `{}` has no snapshot for event `{}`",
            d.id,
            clip(&event)
        ))
    };
    if !valid_id(&event) {
        return Err(missing());
    }
    // Events are kept per agent; the camera's current agent first, then any other (a camera
    // moved to another agent keeps its history).
    let mut agents: Vec<String> = Vec::new();
    if let Some(a) = d.agent {
        agents.push(state.registry.agent(a).id.to_string());
    }
    for a in state.registry.agents() {
        if Some(a.idx) != d.agent {
            agents.push(a.id.to_string());
        }
    }
    let video = state.video.clone();
    let (camera, ev) = (d.id.to_string(), event.clone());
    let found = tokio::task::spawn_blocking(move || {
        for a in agents {
            if let Some(r) = video.archive().event(&a, &ev)?
                && r.camera == camera
            {
                return Ok(Some(a));
            }
        }
        Ok::<_, crate::video::VideoError>(None)
    })
    .await
    .map_err(|e| Failure::internal(e.to_string()))?
    .map_err(|e| Failure::internal(e.to_string()))?;
    let agent = found.ok_or_else(missing)?;
    let bytes = read_snapshot(&state, agent, event.clone())
        .await?
        .ok_or_else(missing)?;
    Ok(jpeg(bytes, &event))
}

/// The query of `GET /api/v1/events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    camera: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<String>,
}

fn parse_time(name: &str, text: &str) -> Result<i64, Failure> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    parse_rfc3339(text).map_err(|e| {
        Failure::bad_request(format!(
            "`{name}`: `{}` is neither epoch milliseconds nor RFC 3339 ({e})",
            clip(text)
        ))
    })
}

/// `GET /api/v1/events?camera=&from=&to=&limit=`.
#[utoipa::path(
    get,
    path = "/api/v1/events",
    tag = "cameras",
    operation_id = "list_events",
    params(
        ("camera" = Option<String>, Query, description = "Only this camera's events"),
        ("from" = Option<String>, Query, description = "Events starting at or after, epoch ms or RFC 3339"),
        ("to" = Option<String>, Query, description = "Events starting before, epoch ms or RFC 3339"),
        ("limit" = Option<String>, Query, description = "At most this many, 1..=1000 (default 100)"),
    ),
    responses(
        (status = 200, description = "Events of the cameras the caller may see, newest first", body = Vec<EventRecord>),
        (status = 400, description = "A malformed parameter", body = ApiError),
        (status = 404, description = "No such camera", body = ApiError),
    )
)]
pub async fn events<S: SeriesStore>(
    State(state): State<Arc<ApiState<S>>>,
    caller: Caller,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Json<Vec<EventRecord>>, Failure> {
    let Query(q) = q.map_err(|e| Failure::bad_request(e.body_text()))?;
    let camera = match &q.camera {
        Some(c) => Some(visible_camera(&state, &caller, c)?.id.to_string()),
        None => None,
    };
    let from = match &q.from {
        Some(t) => parse_time("from", t)?,
        None => i64::MIN,
    };
    let to = match &q.to {
        Some(t) => parse_time("to", t)?,
        None => i64::MAX,
    };
    if from >= to {
        return Err(Failure::bad_request("`from` must be before `to`"));
    }
    let limit = match &q.limit {
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(Failure::bad_request(format!(
                    "`limit`: `{}` is not a number in 1..={MAX_LIMIT}",
                    clip(l)
                )));
            }
        },
        None => DEFAULT_LIMIT,
    };
    let video = state.video.clone();
    let principal = caller.0.clone();
    let registry = state.registry.clone();
    let found = tokio::task::spawn_blocking(move || {
        let visible = |cam: &str| {
            registry
                .device_by_id(cam)
                .is_some_and(|d| catalog::visible(&principal, d))
        };
        video
            .archive()
            .events(camera.as_deref(), &visible, from, to, limit)
    })
    .await
    .map_err(|e| Failure::internal(e.to_string()))?
    .map_err(|e| Failure::internal(e.to_string()))?;
    Ok(Json(found))
}
