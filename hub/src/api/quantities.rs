//! `GET /api/v1/quantities`: the quantities table (canonical unit and its UN/CEFACT code,
//! kind, states, physical range, display decimals), so a client shows and converts values by
//! the same table the hub normalizes with instead of a copy of its own.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use protocols::quantity::{Quantity, ValueKind};
use serde::Serialize;
use series_store::SeriesStore;

use super::{ApiState, Caller};

/// One quantity as the API describes it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct QuantityInfo {
    /// The name used in JSON, topics and profiles.
    pub name: &'static str,
    /// The canonical unit every stored value is in.
    pub unit: &'static str,
    /// `number`, `bool` or `enum`.
    pub kind: &'static str,
    /// The states of an `enum`, in code order (a stored value is the index).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<String>>)]
    pub states: Option<&'static [&'static str]>,
    /// The physically possible range `[low, high]`, if bounded.
    #[schema(value_type = Option<Vec<f64>>)]
    pub range: Option<[f64; 2]>,
    /// How many decimals a value is shown with.
    pub decimals: u8,
    /// The UN/CEFACT Recommendation 20 code of `unit` (`MTR`, `CEL`, `C62` for none).
    pub unit_code: &'static str,
}

impl From<Quantity> for QuantityInfo {
    fn from(q: Quantity) -> QuantityInfo {
        let (kind, states) = match q.kind() {
            ValueKind::Number => ("number", None),
            ValueKind::Bool => ("bool", None),
            ValueKind::Enum(states) => ("enum", Some(states)),
        };
        QuantityInfo {
            name: q.name(),
            unit: q.unit(),
            kind,
            states,
            range: q.physical_range().map(|(lo, hi)| [lo, hi]),
            decimals: q.decimals(),
            unit_code: q.unit_code(),
        }
    }
}

/// Every quantity, in code order. Any authenticated app may read it: it is the platform's
/// vocabulary, not data of a device.
#[utoipa::path(
    get,
    path = "/api/v1/quantities",
    tag = "series",
    operation_id = "list_quantities",
    responses((status = 200, description = "Every quantity, in code order", body = Vec<QuantityInfo>))
)]
pub async fn list<S: SeriesStore>(
    State(_state): State<Arc<ApiState<S>>>,
    _caller: Caller,
) -> Json<Vec<QuantityInfo>> {
    Json(Quantity::ALL.iter().map(|&q| q.into()).collect())
}
