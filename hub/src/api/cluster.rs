//! `GET /api/v1/cluster`: the hubs of the cluster, the partition each works, and how far each
//! partition's log is from being stored. Any hub answers for the whole cluster (it reads the
//! leases from PostgreSQL). A hub without `[cluster]` answers 404.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use series_store::SeriesStore;

use super::{ApiState, Caller, Failure};
use crate::cluster::view::{ClusterView, document};

/// The cluster as the leases record it.
#[utoipa::path(
    get,
    path = "/api/v1/cluster",
    tag = "operations",
    operation_id = "cluster",
    responses(
        (status = 200, description = "Nodes, partition owners, consumer lag", body = ClusterView),
        (status = 404, description = "This hub runs without `[cluster]`", body = protocols::messages::ApiError),
        (status = 503, description = "PostgreSQL cannot be reached", body = protocols::messages::ApiError),
    )
)]
pub async fn view<S: SeriesStore>(
    State(state): State<Arc<ApiState<S>>>,
    _caller: Caller,
) -> Result<Json<ClusterView>, Failure> {
    let Some(link) = &state.cluster else {
        return Err(Failure::not_found("this hub runs without [cluster]"));
    };
    document(link)
        .await
        .map(Json)
        .map_err(|e| Failure::unavailable(e.to_string()))
}
