//! `GET /api/v1/series?device=&quantity=&from=&to=&step=&agg=`.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use protocols::Quantity;
use protocols::config::parse_duration;
use protocols::messages::ApiError;
use protocols::time::parse_rfc3339;
use serde::{Deserialize, Serialize};

use super::devices::visible;
use super::{ApiState, Caller, Failure};
use series_store::{Agg, SeriesId, SeriesStore, StoreError};

/// Default window without `from`: the last 24 hours.
const DEFAULT_WINDOW_MS: i64 = 24 * 3_600_000;
/// Most buckets one query may ask for.
const MAX_BUCKETS: i64 = 100_000;

/// The query string.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeriesQuery {
    device: Option<String>,
    quantity: Option<String>,
    from: Option<String>,
    to: Option<String>,
    step: Option<String>,
    agg: Option<String>,
}

/// The answer.
#[derive(Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct SeriesAnswer {
    /// The device.
    pub device: String,
    /// The quantity.
    pub quantity: String,
    /// Canonical unit of the values.
    pub unit: String,
    /// `[ts_ms, value]`, oldest first.
    #[schema(value_type = Vec<Vec<f64>>)]
    pub points: Vec<(i64, f64)>,
}

/// Epoch milliseconds or RFC 3339.
fn parse_time(name: &str, text: &str) -> Result<i64, Failure> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    parse_rfc3339(text).map_err(|e| {
        Failure::bad_request(format!(
            "`{name}`: `{}` is neither epoch milliseconds nor RFC 3339 ({e})",
            protocols::id::clip(text)
        ))
    })
}

fn parse_agg(text: &str) -> Result<Agg, Failure> {
    Ok(match text {
        "avg" => Agg::Avg,
        "min" => Agg::Min,
        "max" => Agg::Max,
        "last" => Agg::Last,
        "count" => Agg::Count,
        other => {
            return Err(Failure::bad_request(format!(
                "`agg`: `{}` is not one of avg, min, max, last, count",
                other.chars().take(32).collect::<String>()
            )));
        }
    })
}

/// The handler.
#[utoipa::path(
    get,
    path = "/api/v1/series",
    tag = "series",
    operation_id = "series",
    params(
        ("device" = String, Query, description = "Device id"),
        ("quantity" = String, Query, description = "Quantity name (`water_level`, ...)"),
        ("from" = Option<String>, Query, description = "Start, epoch ms or RFC 3339 (default: 24 h before `to`)"),
        ("to" = Option<String>, Query, description = "End (exclusive), epoch ms or RFC 3339 (default: now)"),
        ("step" = Option<String>, Query, description = "Bucket width (`5m`, `1h`); without it, the raw points"),
        ("agg" = Option<String>, Query, description = "`avg` (default), `min`, `max`, `last` or `count`"),
    ),
    responses(
        (status = 200, description = "The points, oldest first", body = SeriesAnswer),
        (status = 400, description = "A missing or malformed parameter", body = ApiError),
        (status = 404, description = "No such device", body = ApiError),
    )
)]
pub async fn query<S: SeriesStore>(
    State(state): State<Arc<ApiState<S>>>,
    caller: Caller,
    q: Result<Query<SeriesQuery>, QueryRejection>,
) -> Result<Json<SeriesAnswer>, Failure> {
    let Query(q) = q.map_err(|e| Failure::bad_request(e.body_text()))?;
    let device_id = q
        .device
        .as_deref()
        .ok_or_else(|| Failure::bad_request("`device` is required"))?;
    let quantity_name = q
        .quantity
        .as_deref()
        .ok_or_else(|| Failure::bad_request("`quantity` is required"))?;
    let device = visible(&state, &caller, device_id)?;
    let quantity = Quantity::from_name(quantity_name).ok_or_else(|| {
        Failure::bad_request(format!(
            "`quantity`: unknown quantity `{}`",
            protocols::id::clip(quantity_name)
        ))
    })?;
    let to = match &q.to {
        Some(t) => parse_time("to", t)?,
        None => protocols::time::now_ms() + 1,
    };
    let from = match &q.from {
        Some(t) => parse_time("from", t)?,
        None => to - DEFAULT_WINDOW_MS,
    };
    if from >= to {
        return Err(Failure::bad_request("`from` must be before `to`"));
    }
    let step_ms = match &q.step {
        Some(s) => {
            let d = parse_duration(s).map_err(|e| Failure::bad_request(format!("`step`: {e}")))?;
            let ms = d.as_millis().min(i64::MAX as u128) as i64;
            if ms <= 0 {
                return Err(Failure::bad_request("`step` must be at least 1ms"));
            }
            if (to - from) / ms > MAX_BUCKETS {
                return Err(Failure::bad_request(format!(
                    "`step` too small: more than {MAX_BUCKETS} buckets"
                )));
            }
            Some(ms)
        }
        None => None,
    };
    let agg = match &q.agg {
        Some(a) => parse_agg(a)?,
        None => Agg::Avg,
    };
    let query = series_store::Query {
        series: SeriesId {
            device: device.id.clone(),
            quantity,
        },
        from_ms: from,
        to_ms: to,
        step_ms,
        agg,
    };
    let store = state.store.clone();
    let points = tokio::task::spawn_blocking(move || store.query(&query))
        .await
        .map_err(|e| Failure::internal(format!("query task failed: {e}")))?
        .map_err(|e| match e {
            StoreError::BadQuery(d) => Failure::bad_request(d),
            other => Failure::internal(other.to_string()),
        })?;
    Ok(Json(SeriesAnswer {
        device: device.id.to_string(),
        quantity: quantity.name().to_string(),
        unit: quantity.unit().to_string(),
        points,
    }))
}
