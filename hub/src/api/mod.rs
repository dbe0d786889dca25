//! The HTTP API (axum): health, metrics, devices with their twins, desired state, time series
//! and a live stream, for apps authenticated with `Authorization: Bearer {app}:{secret}`.
//!
//! Apps see exactly what their MQTT grants let them see, decided by the same
//! `protocols::access` rules: a device is visible with a grant matching its feed or twin
//! topic, desired state may be written with a grant matching `v1/twin/{id}/desired`, and the
//! stream carries only topics inside the grants. Alerts are visible (and may be acknowledged)
//! with a grant matching `v1/alerts/{level}/{device}`; rules are read and reloaded with a grant
//! matching `v1/admin/rules` (e.g. `admin/#`). Every error is JSON `{"error","detail"}`.

mod alerts;
mod cameras;
mod cluster;
pub mod dashboard;
mod devices;
mod ngsi_ld;
mod openapi;
mod quantities;
mod series;
mod stream;

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use protocols::access::Principal;
use protocols::messages::ApiError;

use crate::alerts::AlertBook;
use crate::auth::RegistryAuthenticator;
use crate::outbound::Outlet;
use crate::registry::Registry;
use crate::rules::Rules;
use crate::shutdown::Signal;
use crate::twin::Twins;
use series_store::SeriesStore;

/// What the handlers share.
pub struct ApiState<S> {
    /// The catalog.
    pub registry: Arc<Registry>,
    /// Credentials.
    pub auth: RegistryAuthenticator,
    /// Twins.
    pub twins: Arc<Twins>,
    /// Time series.
    pub store: Arc<S>,
    /// Every collector of `/metrics`.
    pub metrics: Arc<prometheus_client::registry::Registry>,
    /// Live updates for the stream.
    pub outlet: Outlet,
    /// Raised when the hub stops; open streams end then.
    pub shutdown: Signal,
    /// Alerts.
    pub alerts: Arc<AlertBook>,
    /// The rule engine.
    pub rules: Arc<Rules>,
    /// The config file rules are reloaded from.
    pub config_source: Option<std::path::PathBuf>,
    /// Cameras: catalog, events, snapshots.
    pub video: Arc<crate::video::Video>,
    /// Free disk space against `[hub] min_free_disk`.
    pub disk: Arc<crate::health::DiskWatch>,
    /// The dashboard's settings and base map.
    pub dashboard: Arc<dashboard::Site>,
    /// Cluster mode's connections (`None` for a hub on its own).
    pub cluster: Option<Arc<crate::cluster::Link>>,
}

/// The router with every route of the HTTP contract.
pub fn router<S: SeriesStore>(state: Arc<ApiState<S>>) -> Router {
    Router::new()
        .route("/healthz", get(healthz::<S>))
        .route("/readyz", get(readyz::<S>))
        .route("/metrics", get(metrics::<S>))
        .route("/api/v1/cluster", get(cluster::view::<S>))
        .route("/api/v1/devices", get(devices::list::<S>))
        .route("/api/v1/devices/{id}", get(devices::one::<S>))
        .route("/api/v1/devices/{id}/desired", patch(devices::desired::<S>))
        .route("/api/v1/openapi.json", get(openapi::document))
        .route("/api/v1/quantities", get(quantities::list::<S>))
        .route("/api/v1/series", get(series::query::<S>))
        .route("/api/v1/stream", get(stream::handler::<S>))
        .route("/api/v1/alerts", get(alerts::list::<S>))
        .route("/api/v1/alerts/{id}", get(alerts::one::<S>))
        .route("/api/v1/alerts/{id}/ack", post(alerts::ack::<S>))
        .route("/api/v1/alerts/{id}/cap", get(alerts::cap::<S>))
        .route("/api/v1/rules", get(alerts::rules::<S>))
        .route("/api/v1/rules/reload", post(alerts::reload::<S>))
        .merge(cameras::routes::<S>())
        .route("/ngsi-ld/v1/entities", get(ngsi_ld::entities::<S>))
        .route("/ngsi-ld/v1/entities/{id}", get(ngsi_ld::entity::<S>))
        .merge(dashboard::routes::<S>())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// An error answer: status and the contract's JSON body.
#[derive(Debug)]
pub struct Failure {
    status: StatusCode,
    error: &'static str,
    detail: String,
}

impl Failure {
    fn new(status: StatusCode, error: &'static str, detail: impl Into<String>) -> Failure {
        Failure {
            status,
            error,
            detail: detail.into(),
        }
    }

    /// 401.
    pub fn unauthorized(detail: impl Into<String>) -> Failure {
        Failure::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    /// 403.
    pub fn forbidden(detail: impl Into<String>) -> Failure {
        Failure::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    /// 404.
    pub fn not_found(detail: impl Into<String>) -> Failure {
        Failure::new(StatusCode::NOT_FOUND, "not_found", detail)
    }

    /// 400.
    pub fn bad_request(detail: impl Into<String>) -> Failure {
        Failure::new(StatusCode::BAD_REQUEST, "bad_request", detail)
    }

    /// 409.
    pub fn conflict(detail: impl Into<String>) -> Failure {
        Failure::new(StatusCode::CONFLICT, "conflict", detail)
    }

    /// 503.
    pub fn unavailable(detail: impl Into<String>) -> Failure {
        Failure::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail)
    }

    /// 500.
    pub fn internal(detail: impl Into<String>) -> Failure {
        Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", detail)
    }

    /// One of the above by its status code (an answer another hub gave); other codes are 500.
    pub fn with_status(status: u16, detail: impl Into<String>) -> Failure {
        match status {
            400 => Failure::bad_request(detail),
            401 => Failure::unauthorized(detail),
            403 => Failure::forbidden(detail),
            404 => Failure::not_found(detail),
            409 => Failure::conflict(detail),
            503 => Failure::unavailable(detail),
            _ => Failure::internal(detail),
        }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let body = Json(ApiError {
            error: self.error.to_string(),
            detail: self.detail,
        });
        let mut resp = (self.status, body).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"hub\""),
            );
        }
        resp
    }
}

/// The authenticated app making the request.
pub struct Caller(pub Arc<Principal>);

impl<S: SeriesStore> FromRequestParts<Arc<ApiState<S>>> for Caller {
    type Rejection = Failure;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<ApiState<S>>,
    ) -> Result<Caller, Failure> {
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| Failure::unauthorized("missing Authorization: Bearer {app}:{secret}"))?;
        let text = value
            .to_str()
            .map_err(|_| Failure::unauthorized("Authorization header is not text"))?;
        let token = text
            .strip_prefix("Bearer ")
            .or_else(|| text.strip_prefix("bearer "))
            .ok_or_else(|| Failure::unauthorized("expected a Bearer token {app}:{secret}"))?;
        let (id, secret) = token
            .trim()
            .split_once(':')
            .ok_or_else(|| Failure::unauthorized("expected a Bearer token {app}:{secret}"))?;
        let principal = state
            .auth
            .verify_secret(id, secret.as_bytes())
            .await
            .map_err(|e| Failure::unauthorized(e.to_string()))?;
        if !matches!(*principal, Principal::App { .. }) {
            return Err(Failure::forbidden(format!(
                "a {} may not use the API; apps only",
                principal.role()
            )));
        }
        Ok(Caller(principal))
    }
}

/// The body of `GET /healthz`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok` or `failing`.
    status: &'static str,
    /// Every component with its state.
    components: Vec<crate::health::Component>,
}

/// The body of `GET /readyz`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// Whether the hub takes data.
    ready: bool,
    /// Why not, when not.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    reasons: Vec<String>,
}

/// 200 `{"status":"ok","components":[...]}` while every component works; 503 with
/// `"status":"failing"` and the failing component's reason while one does not (the store
/// cannot write, the disk is below `[hub] min_free_disk`). The process answering at all is
/// the liveness signal; the status is the truth about what it can do.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    operation_id = "health",
    responses(
        (status = 200, description = "Every component works", body = Health),
        (status = 503, description = "A component fails", body = Health),
    )
)]
async fn healthz<S: SeriesStore>(
    axum::extract::State(state): axum::extract::State<Arc<ApiState<S>>>,
) -> Response {
    let (ok, components) = crate::health::components(&*state.store, &state.disk);
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let status = if ok { "ok" } else { "failing" };
    (code, Json(Health { status, components })).into_response()
}

/// For a load balancer: 200 `{"ready":true}` while the hub takes data, 503 with the reasons
/// while it does not (a failing component, or the hub stopping).
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    operation_id = "readiness",
    responses(
        (status = 200, description = "The hub takes data", body = Readiness),
        (status = 503, description = "The hub does not take data, and why", body = Readiness),
    )
)]
async fn readyz<S: SeriesStore>(
    axum::extract::State(state): axum::extract::State<Arc<ApiState<S>>>,
) -> Response {
    let (ok, components) = crate::health::components(&*state.store, &state.disk);
    let mut reasons: Vec<String> = components
        .iter()
        .filter(|c| c.status != "ok")
        .map(|c| format!("{}: {}", c.component, c.detail))
        .collect();
    if state.shutdown.is_set() {
        reasons.push("the hub is stopping".into());
    }
    let ready = ok && reasons.is_empty();
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(Readiness { ready, reasons })).into_response()
}

/// The hub's metrics in the Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    operation_id = "metrics",
    responses((status = 200, description = "Prometheus text exposition format", body = String, content_type = "text/plain; version=0.0.4"))
)]
async fn metrics<S: SeriesStore>(
    axum::extract::State(state): axum::extract::State<Arc<ApiState<S>>>,
) -> Response {
    use prometheus_client::encoding::prometheus_text;
    let mut body = String::with_capacity(16 * 1024);
    if let Err(e) = prometheus_text::encode(&mut body, &state.metrics) {
        return Failure::internal(format!("encoding the metrics: {e}")).into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(prometheus_text::CONTENT_TYPE),
        )],
        body,
    )
        .into_response()
}

async fn not_found() -> Failure {
    Failure::not_found("no such route")
}

async fn method_not_allowed() -> Failure {
    Failure::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}
