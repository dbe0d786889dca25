//! The NGSI-LD read API: `GET /ngsi-ld/v1/entities[?type=&id=&q=&limit=&offset=&count=]`
//! and `GET /ngsi-ld/v1/entities/{id}`, devices with their twins as Smart Data Models
//! entities (the mapping is `crate::ngsi_ld`).
//!
//! An app sees exactly the devices `GET /api/v1/devices` shows it. The representation follows
//! the request's `Accept`: `application/ld+json` (and no `Accept` at all) puts `@context` in
//! each entity; `application/json` (or `*/*`) leaves it out and names the context in a `Link`
//! header, as NGSI-LD clients expect. Errors are NGSI-LD ProblemDetails (`type`, `title`,
//! `detail`) that also carry the hub's `error` field, so they read as the contract's
//! `{"error","detail"}` too.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use protocols::id::clip;
use serde::{Deserialize, Serialize};

use super::{ApiState, Caller, Failure};
use crate::ngsi_ld::{self as map, Entity, EntityDoc, EntityType};
use crate::registry::Device;
use series_store::SeriesStore;

/// Entities per answer without `limit` (NGSI-LD's usual default).
pub const DEFAULT_LIMIT: usize = 20;
/// Most entities per answer.
pub const MAX_LIMIT: usize = 1000;
/// `application/ld+json`.
pub const LD_JSON: &str = "application/ld+json";
/// The Link relation naming a JSON-LD context.
const CONTEXT_REL: &str = "http://www.w3.org/ns/json-ld#context";

/// An NGSI-LD error (ProblemDetails, RFC 7807, as NGSI-LD uses it), with the hub's `error`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProblemDetails {
    /// The error type: an NGSI-LD error IRI, or `about:blank` where NGSI-LD defines none
    /// (401, 403, 406).
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary of the error type.
    pub title: String,
    /// What exactly was wrong.
    pub detail: String,
    /// The hub's error kind, as in every other error body (`not_found`, `forbidden`, ...).
    pub error: String,
}

/// An error answer of the NGSI-LD routes.
#[derive(Debug)]
pub struct Problem {
    status: StatusCode,
    detail: String,
}

impl Problem {
    fn new(status: StatusCode, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            detail: detail.into(),
        }
    }

    fn bad_request(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, detail)
    }

    fn body(&self) -> ProblemDetails {
        let (kind, title, error) = match self.status {
            StatusCode::BAD_REQUEST => (
                "https://uri.etsi.org/ngsi-ld/errors/BadRequestData",
                "Bad request data",
                "bad_request",
            ),
            StatusCode::NOT_FOUND => (
                "https://uri.etsi.org/ngsi-ld/errors/ResourceNotFound",
                "Resource not found",
                "not_found",
            ),
            StatusCode::UNAUTHORIZED => ("about:blank", "Unauthorized", "unauthorized"),
            StatusCode::FORBIDDEN => ("about:blank", "Forbidden", "forbidden"),
            StatusCode::NOT_ACCEPTABLE => ("about:blank", "Not Acceptable", "not_acceptable"),
            _ => (
                "https://uri.etsi.org/ngsi-ld/errors/InternalError",
                "Internal error",
                "internal",
            ),
        };
        ProblemDetails {
            kind: kind.to_string(),
            title: title.to_string(),
            detail: self.detail.clone(),
            error: error.to_string(),
        }
    }
}

impl From<Failure> for Problem {
    fn from(f: Failure) -> Problem {
        Problem::new(f.status, f.detail)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(self.body())).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"hub\""),
            );
        }
        resp
    }
}

/// The representation a client asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    /// `@context` in the body.
    LdJson,
    /// Plain JSON, the context in a `Link` header.
    Json,
}

/// `Accept` to a format: `application/ld+json` wins wherever it appears; `application/json`,
/// `application/*` and `*/*` get JSON with a Link header; no `Accept` gets JSON-LD (what the
/// contract names); anything else is 406.
fn negotiate(headers: &HeaderMap) -> Result<Format, Problem> {
    let Some(accept) = headers.get(header::ACCEPT) else {
        return Ok(Format::LdJson);
    };
    let text = accept
        .to_str()
        .map_err(|_| Problem::bad_request("Accept header is not text"))?;
    let ranges: Vec<String> = text
        .split(',')
        .map(|r| {
            r.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .collect();
    if ranges.iter().any(|r| r == LD_JSON) {
        Ok(Format::LdJson)
    } else if ranges
        .iter()
        .any(|r| matches!(r.as_str(), "application/json" | "application/*" | "*/*"))
    {
        Ok(Format::Json)
    } else {
        Err(Problem::new(
            StatusCode::NOT_ACCEPTABLE,
            format!(
                "Accept `{}`: this API answers application/ld+json or application/json",
                clip(text)
            ),
        ))
    }
}

/// The answer in the chosen format: one entity or a list.
fn answer(format: Format, entities: &[Entity], single: bool, count: Option<usize>) -> Response {
    let with_context = format == Format::LdJson;
    let docs: Vec<EntityDoc> = entities.iter().map(|e| e.to_doc(with_context)).collect();
    let mut resp = match (single, docs.first()) {
        (true, Some(one)) => Json(one).into_response(),
        _ => Json(&docs).into_response(),
    };
    let headers = resp.headers_mut();
    match format {
        Format::LdJson => {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(LD_JSON));
        }
        Format::Json => {
            // One Link per domain present: a list mixing domains names each domain's context
            // (a client that wants one context per entity asks for application/ld+json).
            let domains: BTreeSet<EntityType> = entities.iter().map(|e| e.ty).collect();
            let link = domains
                .iter()
                .map(|t| {
                    format!(
                        "<{}>; rel=\"{CONTEXT_REL}\"; type=\"{LD_JSON}\"",
                        t.context()
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            if let Ok(v) = HeaderValue::from_str(&link)
                && !link.is_empty()
            {
                headers.insert(header::LINK, v);
            }
        }
    }
    if let Some(n) = count {
        headers.insert("ngsi-ld-results-count", HeaderValue::from(n));
    }
    resp
}

/// The query of `GET /ngsi-ld/v1/entities`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntitiesQuery {
    /// Entity types, comma-separated (`Streetlight,Device`).
    #[serde(rename = "type")]
    pub types: Option<String>,
    /// Entity ids, comma-separated.
    pub id: Option<String>,
    /// Query terms joined with `;`.
    pub q: Option<String>,
    /// At most this many entities.
    pub limit: Option<String>,
    /// Skip this many matching entities first.
    pub offset: Option<String>,
    /// `true`: the number of matches in `NGSI-LD-Results-Count`.
    pub count: Option<String>,
}

fn number(name: &str, text: &str, max: usize) -> Result<usize, Problem> {
    match text.parse::<usize>() {
        Ok(n) if n <= max => Ok(n),
        _ => Err(Problem::bad_request(format!(
            "`{name}`: `{}` is not a number in 0..={max}",
            clip(text)
        ))),
    }
}

fn entity_of<S>(state: &ApiState<S>, d: &Device) -> Entity {
    Entity::of_device(d, &state.twins.document(d.idx))
}

/// `GET /ngsi-ld/v1/entities`: the caller's devices as entities, in catalog order.
#[utoipa::path(
    get,
    path = "/ngsi-ld/v1/entities",
    tag = "ngsi-ld",
    operation_id = "ngsi_ld_entities",
    params(
        ("type" = Option<String>, Query, description = "Entity types, comma-separated: `Streetlight`, `WaterQualityObserved`, `WeatherObserved`, `Device` (or their IRIs)"),
        ("id" = Option<String>, Query, description = "Entity ids, comma-separated (`urn:ngsi-ld:Streetlight:SL-0001`)"),
        ("q" = Option<String>, Query, description = "Terms `attr==value`, `!=`, `>`, `>=`, `<`, `<=` joined with `;` (and); values are numbers, quoted strings or true/false"),
        ("limit" = Option<usize>, Query, description = "At most this many, 0..=1000 (default 20)"),
        ("offset" = Option<usize>, Query, description = "Skip this many matches first"),
        ("count" = Option<bool>, Query, description = "`true`: the number of matches in `NGSI-LD-Results-Count`"),
        ("Accept" = Option<String>, Header, description = "`application/ld+json` (default): `@context` in each entity; `application/json`: the context in a `Link` header"),
    ),
    responses(
        (status = 200, description = "The matching entities the caller may see, in catalog order",
            content((Vec<EntityDoc> = "application/ld+json"), (Vec<EntityDoc> = "application/json")),
            headers(
                ("Link" = String, description = "With application/json: the Smart Data Models context of each domain present"),
                ("NGSI-LD-Results-Count" = usize, description = "With `count=true`: the number of matches"),
            )),
        (status = 400, description = "A malformed query", body = ProblemDetails),
        (status = 406, description = "An Accept this API cannot answer", body = ProblemDetails),
    )
)]
pub async fn entities<S: SeriesStore>(
    State(state): State<Arc<ApiState<S>>>,
    caller: Result<Caller, Failure>,
    headers: HeaderMap,
    query: Result<Query<EntitiesQuery>, QueryRejection>,
) -> Result<Response, Problem> {
    let caller = caller?;
    let format = negotiate(&headers)?;
    let Query(q) = query.map_err(|e| Problem::bad_request(e.body_text()))?;
    // Unknown type names match nothing, as in any NGSI-LD broker: a type is a vocabulary
    // term, not a catalog lookup.
    let types: Option<Vec<String>> = q.types.as_deref().map(|t| {
        t.split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    });
    let ids: Option<BTreeSet<String>> = q.id.as_deref().map(|t| {
        t.split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    });
    let filter = match q.q.as_deref() {
        Some(text) => {
            map::Query::parse(text).map_err(|e| Problem::bad_request(format!("`q`: {e}")))?
        }
        None => map::Query::default(),
    };
    let limit = match &q.limit {
        Some(l) => number("limit", l, MAX_LIMIT)?,
        None => DEFAULT_LIMIT,
    };
    let offset = match &q.offset {
        Some(o) => number("offset", o, usize::MAX)?,
        None => 0,
    };
    let count = match q.count.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(Problem::bad_request(format!(
                "`count`: `{}` is neither true nor false",
                clip(other)
            )));
        }
    };
    let matching: Vec<Entity> = state
        .registry
        .devices()
        .iter()
        .filter(|d| state.registry.visible_to(&caller.0, d))
        .filter(|d| {
            let ty = EntityType::of_kind(&d.kind);
            types.as_ref().is_none_or(|ts| {
                ts.iter()
                    .any(|t| EntityType::from_name(t).is_some_and(|x| x == ty))
            }) && ids
                .as_ref()
                .is_none_or(|ids| ids.contains(&ty.entity_id(&d.id)))
        })
        .map(|d| entity_of(&state, d))
        .filter(|e| e.matches(&filter))
        .collect();
    let total = matching.len();
    let page: Vec<Entity> = matching.into_iter().skip(offset).take(limit).collect();
    Ok(answer(format, &page, false, count.then_some(total)))
}

/// `GET /ngsi-ld/v1/entities/{id}`: 400 for an id that is no URI, 404 for one naming no
/// device (or a device under another type), 403 outside the grants, like
/// `GET /api/v1/devices/{id}`.
#[utoipa::path(
    get,
    path = "/ngsi-ld/v1/entities/{id}",
    tag = "ngsi-ld",
    operation_id = "ngsi_ld_entity",
    params(
        ("id" = String, Path, description = "Entity id, `urn:ngsi-ld:{Type}:{device id}`"),
        ("Accept" = Option<String>, Header, description = "`application/ld+json` (default) or `application/json`"),
    ),
    responses(
        (status = 200, description = "The entity",
            content((EntityDoc = "application/ld+json"), (EntityDoc = "application/json")),
            headers(("Link" = String, description = "With application/json: the entity's Smart Data Models context"))),
        (status = 400, description = "Not an entity id (a URI)", body = ProblemDetails),
        (status = 404, description = "No such entity", body = ProblemDetails),
        (status = 406, description = "An Accept this API cannot answer", body = ProblemDetails),
    )
)]
pub async fn entity<S: SeriesStore>(
    State(state): State<Arc<ApiState<S>>>,
    caller: Result<Caller, Failure>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let caller = caller?;
    let format = negotiate(&headers)?;
    if !id.contains(':') {
        return Err(Problem::bad_request(format!(
            "`{}` is not an entity id (a URI such as urn:ngsi-ld:Streetlight:SL-0001)",
            clip(&id)
        )));
    }
    let missing = || Problem::new(StatusCode::NOT_FOUND, format!("no entity `{}`", clip(&id)));
    let (ty, device) = map::parse_entity_id(&id).ok_or_else(missing)?;
    let d = state
        .registry
        .device_by_id(device)
        .filter(|d| EntityType::of_kind(&d.kind) == ty)
        .ok_or_else(missing)?;
    if !state.registry.visible_to(&caller.0, d) {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            format!("no grant covers {} or {}", d.feed_topic, d.twin_topic),
        ));
    }
    Ok(answer(format, &[entity_of(&state, d)], true, None))
}
