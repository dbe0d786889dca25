//! `GET /api/v1/alerts[?state=&device=&level=&limit=]`, `GET /api/v1/alerts/{id}`,
//! `POST /api/v1/alerts/{id}/ack`, `GET /api/v1/alerts/{id}/cap`, `GET /api/v1/rules`,
//! `POST /api/v1/rules/reload`.
//!
//! An alert is visible to an app whose grants match its topic `v1/alerts/{level}/{device}`;
//! an invisible alert answers 404 exactly like a missing one, so ids reveal nothing.
//! Rules need a grant matching [`ADMIN_RULES_TOPIC`] (`admin/rules`, `admin/#` or `#`).

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use protocols::messages::ApiError;
use protocols::topic::{AlertLevel, Topic};
use serde::{Deserialize, Serialize};

use super::{ApiState, Caller, Failure};
use crate::alerts::hub_level::HUB_DEVICE;
use crate::alerts::{AckError, AlertDoc, AlertFilter, StateFilter, cap::CAP_MEDIA_TYPE};
use crate::config::RuleConfig;
use series_store::SeriesStore;

/// The topic a grant must match to read and reload rules.
pub const ADMIN_RULES_TOPIC: &str = "v1/admin/rules";
/// Alerts listed when no `limit` is given.
const DEFAULT_LIMIT: usize = 1000;

/// Filters of the alert list.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    state: Option<String>,
    device: Option<String>,
    level: Option<String>,
    limit: Option<usize>,
}

fn topic_of(d: &AlertDoc) -> String {
    Topic::Alert {
        level: d.alert.level,
        device: &d.alert.device,
    }
    .to_string()
}

fn not_found(id: &str) -> Failure {
    Failure::not_found(format!(
        "no alert `{}`",
        id.chars().take(128).collect::<String>()
    ))
}

/// The shared alerts could not be read (cluster mode, PostgreSQL away).
fn unreadable(e: crate::alerts::store::AlertStoreError) -> Failure {
    Failure::unavailable(format!("alerts cannot be read now: {e}"))
}

/// The alert if the caller may see it; 404 otherwise.
async fn visible<S>(state: &ApiState<S>, caller: &Caller, id: &str) -> Result<AlertDoc, Failure> {
    match state.alerts.fetch(id).await.map_err(unreadable)? {
        Some(doc) if caller.0.grants_topic(&topic_of(&doc)) => Ok(doc),
        _ => Err(not_found(id)),
    }
}

/// `GET /api/v1/alerts`: newest first.
#[utoipa::path(
    get,
    path = "/api/v1/alerts",
    tag = "alerts",
    operation_id = "list_alerts",
    params(
        ("state" = Option<String>, Query, description = "`active`, `acknowledged`, `cleared`, `open` or `all` (default)"),
        ("device" = Option<String>, Query, description = "Only this device's alerts"),
        ("level" = Option<String>, Query, description = "`blue`, `yellow`, `orange` or `red`"),
        ("limit" = Option<usize>, Query, description = "At most this many (default 1000)"),
    ),
    responses(
        (status = 200, description = "Alerts the caller may see, newest first", body = Vec<AlertDoc>),
        (status = 400, description = "A malformed filter", body = ApiError),
        (status = 503, description = "Cluster mode: PostgreSQL cannot be reached", body = ApiError),
    )
)]
pub async fn list<S: SeriesStore>(
    State(state): State<Arc<ApiState<S>>>,
    caller: Caller,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Vec<AlertDoc>>, Failure> {
    let Query(q) = query.map_err(|e| Failure::bad_request(e.body_text()))?;
    let filter = AlertFilter {
        state: match q.state.as_deref() {
            None | Some("") | Some("all") => None,
            Some(s) => Some(StateFilter::parse(s).ok_or_else(|| {
                Failure::bad_request(format!(
                    "state `{s}`: expected active, acknowledged, cleared, open or all"
                ))
            })?),
        },
        device: q.device,
        level: match q.level.as_deref() {
            None | Some("") => None,
            Some(l) => Some(AlertLevel::from_name(l).ok_or_else(|| {
                Failure::bad_request(format!("level `{l}`: expected blue, yellow, orange or red"))
            })?),
        },
        limit: q.limit.unwrap_or(DEFAULT_LIMIT),
    };
    let principal = caller.0.clone();
    let alerts = state
        .alerts
        .fetch_list(&filter, |d| principal.grants_topic(&topic_of(d)))
        .await
        .map_err(unreadable)?;
    Ok(Json(alerts))
}

/// `GET /api/v1/alerts/{id}`.
#[utoipa::path(
    get,
    path = "/api/v1/alerts/{id}",
    tag = "alerts",
    operation_id = "get_alert",
    params(("id" = String, Path, description = "Alert id")),
    responses(
        (status = 200, description = "The alert", body = AlertDoc),
        (status = 404, description = "No such alert, or one outside the grants", body = ApiError),
    )
)]
pub async fn one<S: SeriesStore>(
    State(state): State<Arc<ApiState<S>>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<AlertDoc>, Failure> {
    visible(&state, &caller, &id).await.map(Json)
}

/// `POST /api/v1/alerts/{id}/ack`: answers the alert once the acknowledgement is durable.
#[utoipa::path(
    post,
    path = "/api/v1/alerts/{id}/ack",
    tag = "alerts",
    operation_id = "ack_alert",
    params(("id" = String, Path, description = "Alert id")),
    responses(
        (status = 200, description = "The acknowledged alert, once durable", body = AlertDoc),
        (status = 404, description = "No such alert, or one outside the grants", body = ApiError),
        (status = 409, description = "The alert has cleared", body = ApiError),
        (status = 503, description = "Cluster mode: the hub working the alert's device did not answer, or the device is changing hubs", body = ApiError),
    )
)]
pub async fn ack<S: SeriesStore>(
    State(state): State<Arc<ApiState<S>>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<AlertDoc>, Failure> {
    visible(&state, &caller, &id).await?;
    match state
        .alerts
        .ack(&id, caller.0.id(), protocols::time::now_ms())
        .await
    {
        Ok(doc) => Ok(Json(doc)),
        Err(AckError::NotFound(_)) => Err(not_found(&id)),
        Err(e @ AckError::Cleared(_)) => Err(Failure::conflict(e.to_string())),
        Err(e @ AckError::NotStored(_)) if state.alerts.is_shared() => {
            Err(Failure::unavailable(e.to_string()))
        }
        Err(e @ AckError::NotStored(_)) => Err(Failure::internal(e.to_string())),
    }
}

/// `GET /api/v1/alerts/{id}/cap`: the CAP 1.2 message of the alert's current revision.
#[utoipa::path(
    get,
    path = "/api/v1/alerts/{id}/cap",
    tag = "alerts",
    operation_id = "alert_cap",
    params(("id" = String, Path, description = "Alert id")),
    responses(
        (status = 200, description = "The CAP 1.2 message of the alert's current revision", body = String, content_type = "application/cap+xml"),
        (status = 404, description = "No such alert, one outside the grants, or a hub-level alert", body = ApiError),
    )
)]
pub async fn cap<S: SeriesStore>(
    State(state): State<Arc<ApiState<S>>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    let doc = visible(&state, &caller, &id).await?;
    if doc.alert.device == HUB_DEVICE {
        return Err(Failure::not_found(format!(
            "alert `{}` is about the hub itself: hub-level alerts are for operators and have no CAP document",
            doc.alert.id
        )));
    }
    let xml = state
        .alerts
        .fetch_cap(&id)
        .await
        .map_err(unreadable)?
        .ok_or_else(|| not_found(&id))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(CAP_MEDIA_TYPE),
        )],
        xml,
    )
        .into_response())
}

fn admin(caller: &Caller) -> Result<(), Failure> {
    if caller.0.grants_topic(ADMIN_RULES_TOPIC) {
        Ok(())
    } else {
        Err(Failure::forbidden(format!(
            "rules need a grant matching {ADMIN_RULES_TOPIC} (e.g. `admin/rules`)"
        )))
    }
}

/// The rules now loaded.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RulesView {
    /// The `[[rules]]` entries as hub.toml has them.
    #[schema(value_type = Vec<Object>)]
    rules: Vec<RuleConfig>,
}

/// `GET /api/v1/rules`.
#[utoipa::path(
    get,
    path = "/api/v1/rules",
    tag = "alerts",
    operation_id = "list_rules",
    responses((status = 200, description = "The rules now loaded", body = RulesView))
)]
pub async fn rules<S: SeriesStore>(
    State(state): State<Arc<ApiState<S>>>,
    caller: Caller,
) -> Result<Json<RulesView>, Failure> {
    admin(&caller)?;
    Ok(Json(RulesView {
        rules: state.rules.configs(),
    }))
}

/// `POST /api/v1/rules/reload`: re-reads `[[rules]]` from the hub's config file. A bad rule
/// refuses the reload with 400 and one line naming it; the running rules stay.
#[utoipa::path(
    post,
    path = "/api/v1/rules/reload",
    tag = "alerts",
    operation_id = "reload_rules",
    responses(
        (status = 200, description = "What the reload changed", body = crate::rules::ReloadReport),
        (status = 400, description = "A bad rule; the running rules stay", body = ApiError),
        (status = 409, description = "The hub was started without a config file", body = ApiError),
    )
)]
pub async fn reload<S: SeriesStore>(
    State(state): State<Arc<ApiState<S>>>,
    caller: Caller,
) -> Result<Json<crate::rules::ReloadReport>, Failure> {
    admin(&caller)?;
    let rules = state.rules.clone();
    let source = state.config_source.clone();
    let result =
        tokio::task::spawn_blocking(move || crate::reload_rules(&rules, source.as_deref()))
            .await
            .map_err(|e| Failure::internal(format!("reload task failed: {e}")))?;
    match result {
        Ok(report) => {
            tracing::info!(by = caller.0.id(), "rules reloaded through the API");
            Ok(Json(report))
        }
        Err(crate::ReloadError::NoSource) => {
            Err(Failure::conflict(crate::ReloadError::NoSource.to_string()))
        }
        Err(e) => {
            tracing::warn!("rule reload refused: {e}");
            Err(Failure::bad_request(e.to_string()))
        }
    }
}
