//! `GET /api/v1/devices`, `GET /api/v1/devices/{id}`, `PATCH /api/v1/devices/{id}/desired`.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use protocols::messages::{ApiError, DesiredUpdate, Twin};
use protocols::topic::Topic;
use serde::{Deserialize, Serialize};

use super::{ApiState, Caller, Failure};
use crate::registry::Device;
use series_store::SeriesStore;

/// Filters of the device list.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    kind: Option<String>,
    dept: Option<String>,
}

/// A device as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeviceView {
    id: String,
    kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    dept: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lat: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lon: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gb_id: Option<String>,
    online: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    twin: Option<Twin>,
    /// What desired state may set (with the twin only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    controls: Vec<ControlView>,
}

/// A writable point of the device's profile: what a control (the dimming slider) may set.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ControlView {
    /// The quantity.
    quantity: &'static str,
    /// Its canonical unit, the unit desired state is written in.
    unit: &'static str,
    /// The lowest value a write may set (canonical), if bounded.
    min: Option<f64>,
    /// The highest.
    max: Option<f64>,
}

/// The writable points of the device's profile, bounds converted to the canonical unit.
fn controls<S>(state: &ApiState<S>, d: &Device) -> Vec<ControlView> {
    let Some(profile) = state.twins.controls().profile(d.idx) else {
        return Vec::new();
    };
    profile
        .points
        .iter()
        .filter(|p| p.writable)
        .map(|p| {
            let q = p.quantity;
            let canonical = |b: Option<f64>| b.and_then(|v| q.to_canonical(v, &p.unit).ok());
            ControlView {
                quantity: q.name(),
                unit: q.unit(),
                min: canonical(p.range.0),
                max: canonical(p.range.1),
            }
        })
        .collect()
}

fn view<S>(state: &ApiState<S>, d: &Device, with_twin: bool) -> DeviceView {
    DeviceView {
        id: d.id.to_string(),
        kind: d.kind.to_string(),
        dept: d.config.dept.clone(),
        name: d.config.name.clone(),
        lat: d.config.lat,
        lon: d.config.lon,
        agent: d.config.agent.clone(),
        gb_id: d.config.gb_id.clone(),
        online: state.twins.online(d.idx),
        twin: with_twin.then(|| state.twins.document(d.idx)),
        controls: if with_twin {
            controls(state, d)
        } else {
            Vec::new()
        },
    }
}

/// The device with this id, if the caller may see it: 404 unknown, 403 outside grants.
pub(super) fn visible<'a, S>(
    state: &'a ApiState<S>,
    caller: &Caller,
    id: &str,
) -> Result<&'a Device, Failure> {
    let d = state
        .registry
        .device_by_id(id)
        .ok_or_else(|| Failure::not_found(format!("no device `{}`", protocols::id::clip(id))))?;
    if !state.registry.visible_to(&caller.0, d) {
        return Err(Failure::forbidden(format!(
            "no grant covers {} or {}",
            d.feed_topic, d.twin_topic
        )));
    }
    Ok(d)
}

/// `GET /api/v1/devices[?kind=&dept=]`.
#[utoipa::path(
    get,
    path = "/api/v1/devices",
    tag = "devices",
    operation_id = "list_devices",
    params(
        ("kind" = Option<String>, Query, description = "Only devices of this kind (`streetlight`, `water_level`, ...)"),
        ("dept" = Option<String>, Query, description = "Only devices of this department"),
    ),
    responses(
        (status = 200, description = "The devices the caller may see, without twins", body = Vec<DeviceView>),
        (status = 400, description = "An unknown query parameter", body = ApiError),
    )
)]
pub async fn list<S: SeriesStore>(
    State(state): State<Arc<ApiState<S>>>,
    caller: Caller,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Vec<DeviceView>>, Failure> {
    let Query(q) = query.map_err(|e| Failure::bad_request(e.body_text()))?;
    let out = state
        .registry
        .devices()
        .iter()
        .filter(|d| q.kind.as_deref().is_none_or(|k| *d.kind == *k))
        .filter(|d| {
            q.dept
                .as_deref()
                .is_none_or(|k| d.config.dept.as_deref() == Some(k))
        })
        .filter(|d| state.registry.visible_to(&caller.0, d))
        .map(|d| view(&state, d, false))
        .collect();
    Ok(Json(out))
}

/// `GET /api/v1/devices/{id}`.
#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}",
    tag = "devices",
    operation_id = "get_device",
    params(("id" = String, Path, description = "Device id")),
    responses(
        (status = 200, description = "The device with its twin", body = DeviceView),
        (status = 404, description = "No such device", body = ApiError),
    )
)]
pub async fn one<S: SeriesStore>(
    State(state): State<Arc<ApiState<S>>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<DeviceView>, Failure> {
    let d = visible(&state, &caller, &id)?;
    Ok(Json(view(&state, d, true)))
}

/// `PATCH /api/v1/devices/{id}/desired`: the same as a message on `v1/twin/{id}/desired`.
#[utoipa::path(
    patch,
    path = "/api/v1/devices/{id}/desired",
    tag = "devices",
    operation_id = "set_desired",
    params(("id" = String, Path, description = "Device id")),
    request_body(content = DesiredUpdate, description = "Quantity names to desired values, and optionally the twin `version` the writer saw"),
    responses(
        (status = 200, description = "The twin after the change", body = Twin),
        (status = 400, description = "Not a desired-state object, or a value the device cannot take", body = ApiError),
        (status = 404, description = "No such device", body = ApiError),
        (status = 409, description = "The twin moved past `version`", body = ApiError),
        (status = 503, description = "Cluster mode: the hub working the device did not answer, or the device is changing hubs", body = ApiError),
    )
)]
pub async fn desired<S: SeriesStore>(
    State(state): State<Arc<ApiState<S>>>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Twin>, Failure> {
    let d = state
        .registry
        .device_by_id(&id)
        .ok_or_else(|| Failure::not_found(format!("no device `{}`", protocols::id::clip(&id))))?;
    let topic = Topic::TwinDesired(&d.id).to_string();
    caller
        .0
        .may_publish(&topic)
        .map_err(|e| Failure::forbidden(format!("{topic}: {e}")))?;
    let update: DesiredUpdate = serde_json::from_slice(&body)
        .map_err(|e| Failure::bad_request(format!("body is not a desired-state object: {e}")))?;
    if let Some(link) = &state.cluster {
        // Only the hub working the device changes its twin.
        let now = protocols::time::now_ms();
        return crate::cluster::desired::set(link, &state.registry, &state.twins, d, update, now)
            .await
            .map(Json)
            .map_err(|r| Failure::with_status(r.status, r.detail));
    }
    match state
        .twins
        .set_desired(&d.id, update, protocols::time::now_ms())
        .await
    {
        Ok(twin) => Ok(Json(twin)),
        Err(e) => Err(Failure::with_status(e.http_status(), e.to_string())),
    }
}
