//! `GET /api/v1/openapi.json`: the OpenAPI 3.1 description of every API route, generated
//! (utoipa, decision 0024) from the `#[utoipa::path]` attributes next to the handlers and the
//! schemas of the types they take and answer. `/` and the dashboard's assets are the page, not
//! API, and are left out.
//!
//! What every route shares is added here once rather than on each handler: the bearer
//! security scheme, and the 401, 403 and 500 answers of the authenticated routes with their
//! error body (`ApiError`, or `ProblemDetails` on the NGSI-LD routes).

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use protocols::messages::ApiError;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::ngsi_ld::ProblemDetails;

/// The document's root: info, every path, shared schemas, and the modifier that adds what all
/// routes share.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "District hub HTTP API",
        description = "Devices with their twins, desired state, time series, alerts, cameras and a live stream for apps of the district gateway, inside each app's grants; the same devices as NGSI-LD entities of Smart Data Models types. Authenticate with `Authorization: Bearer {app id}:{secret}`."
    ),
    paths(
        super::healthz,
        super::readyz,
        super::metrics,
        document,
        super::cluster::view,
        super::devices::list,
        super::devices::one,
        super::devices::desired,
        super::quantities::list,
        super::series::query,
        super::stream::handler,
        super::alerts::list,
        super::alerts::one,
        super::alerts::ack,
        super::alerts::cap,
        super::alerts::rules,
        super::alerts::reload,
        super::cameras::cameras,
        super::cameras::camera,
        super::cameras::latest_snapshot,
        super::cameras::event_snapshot,
        super::cameras::events,
        super::ngsi_ld::entities,
        super::ngsi_ld::entity,
    ),
    components(schemas(ApiError, ProblemDetails)),
    modifiers(&Shared),
    tags(
        (name = "operations", description = "Health, readiness and metrics for operators and load balancers"),
        (name = "devices", description = "Devices, their twins and desired state"),
        (name = "series", description = "Time series and the quantities table"),
        (name = "alerts", description = "Alerts, their CAP documents and the rules"),
        (name = "cameras", description = "The video catalog, snapshots and camera events"),
        (name = "stream", description = "Live updates"),
        (name = "ngsi-ld", description = "The devices as NGSI-LD entities (ETSI GS CIM 009), Smart Data Models types"),
    )
)]
pub struct ApiDoc;

/// The routes anyone may call: no credentials, no 401/403. The description itself is open:
/// a client needs it before it has credentials, and it holds no data.
const OPEN: &[&str] = &["/healthz", "/readyz", "/metrics", "/api/v1/openapi.json"];

/// Adds the bearer scheme and the answers every authenticated route shares.
struct Shared;

impl Modify for Shared {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("{app id}:{secret}")
                    .description(Some(
                        "An app's id and secret from hub.toml: `Authorization: Bearer {app id}:{secret}`",
                    ))
                    .build(),
            ),
        );
        for (path, item) in api.paths.paths.iter_mut() {
            let open = OPEN.contains(&path.as_str());
            let error = if path.starts_with("/ngsi-ld/") {
                "ProblemDetails"
            } else {
                "ApiError"
            };
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                shared_answers(op, open, error);
            }
        }
    }
}

fn error_answer(description: &str, schema: &str) -> RefOr<utoipa::openapi::Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(schema)))
                .build(),
        )
        .build()
        .into()
}

fn shared_answers(op: &mut Operation, open: bool, error: &str) {
    let answers = &mut op.responses.responses;
    if open {
        // No credentials: an explicitly empty requirement list, not the document's default.
        op.security = Some(Vec::new());
    } else {
        op.security = Some(vec![SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
        answers
            .entry("401".into())
            .or_insert_with(|| error_answer("Missing or invalid credentials", error));
        answers
            .entry("403".into())
            .or_insert_with(|| error_answer("Not an app, or outside the app's grants", error));
    }
    answers
        .entry("500".into())
        .or_insert_with(|| error_answer("The hub failed to answer", error));
}

/// The document, built once per request (it is small, and requests for it are rare).
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "operations",
    operation_id = "openapi",
    responses((status = 200, description = "This OpenAPI 3.1 document", content_type = "application/json"))
)]
pub async fn document() -> Response {
    match ApiDoc::openapi().to_json() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            text,
        )
            .into_response(),
        Err(e) => {
            super::Failure::internal(format!("encoding the OpenAPI document: {e}")).into_response()
        }
    }
}
