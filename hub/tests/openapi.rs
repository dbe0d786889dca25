//! `GET /api/v1/openapi.json` against a real hub: OpenAPI 3.1, valid by a validator nobody here
//! wrote (openapi-spec-validator, scripts/setup-peers.sh), and describing exactly the routes the
//! router has.
//!
//! The router's routes are not copied into this test: they are read from the `.route(...)`
//! calls in hub/src/api/, and the live router is probed for every documented route (it must
//! answer, not fall through to "no such route" or 405) and for every method the document does
//! not list on a path (405).

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use reqwest::{Client, Method, StatusCode};
use serde_json::Value;
use support::*;

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// Not API: the dashboard page and its assets.
fn is_page(path: &str) -> bool {
    path == "/" || path == "/dashboard" || path.starts_with("/dashboard/")
}

/// `(method, path)` of every `.route("path", method(handler)[.method(handler)...])` in the API
/// module's source.
fn routes_in_source() -> BTreeSet<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api");
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let mut rest = text.as_str();
        while let Some(at) = rest.find(".route(") {
            rest = &rest[at + ".route(".len()..];
            // The call's text up to its closing parenthesis.
            let mut depth = 1;
            let end = rest
                .char_indices()
                .find(|&(_, c)| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map(|(i, _)| i)
                .expect("a closed .route(");
            let call = &rest[..end];
            let Some(route) = call.split('"').nth(1) else {
                continue;
            };
            for m in METHODS {
                let standalone =
                    call.contains(&format!(" {m}(")) || call.contains(&format!(",{m}("));
                let chained = call.contains(&format!(".{m}("));
                if standalone || chained {
                    out.insert((m.to_string(), route.to_string()));
                }
            }
        }
    }
    out
}

fn routes_in_document(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in METHODS {
            if item.get(m).is_some() {
                out.insert((m.to_string(), path.clone()));
            }
        }
    }
    out
}

/// A concrete URL for a templated path.
fn concrete(path: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for c in path.chars() {
        match c {
            '{' => inside = true,
            '}' => {
                inside = false;
                out.push_str("x1");
            }
            _ if inside => {}
            _ => out.push(c),
        }
    }
    out
}

/// Whether the router itself refused the request (no route, or not this method), as opposed
/// to a handler answering.
async fn router_refuses(client: &Client, base: &str, method: &str, path: &str) -> Option<u16> {
    let m = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap();
    let resp = client
        .request(m, format!("{base}{}", concrete(path)))
        .header("authorization", "Bearer command-center:cc-secret-123")
        .body("{}")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    // Only a 404's body is read: a stream route's body never ends.
    match resp.status() {
        StatusCode::METHOD_NOT_ALLOWED => Some(405),
        StatusCode::NOT_FOUND => {
            let body: Value =
                serde_json::from_str(&resp.text().await.unwrap_or_default()).unwrap_or(Value::Null);
            (body["detail"] == "no such route").then_some(404)
        }
        _ => None,
    }
}

async fn document(base: &str) -> Value {
    let resp = reqwest::get(format!("{base}/api/v1/openapi.json"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/json");
    serde_json::from_str(&resp.text().await.unwrap()).unwrap()
}

#[tokio::test]
async fn the_document_describes_exactly_the_routes_the_router_has() {
    let dir = tempfile::tempdir().unwrap();
    let h = TestHub::start_in(dir.path(), &ts_stores()).await;
    let base = h.base_url();
    let client = Client::builder().timeout(DEADLINE).build().unwrap();
    let doc = document(&base).await;
    assert_eq!(doc["openapi"], "3.1.0");

    let documented = routes_in_document(&doc);
    let source: BTreeSet<_> = routes_in_source()
        .into_iter()
        .filter(|(_, p)| !is_page(p))
        .collect();
    assert!(
        source.len() >= 20,
        "the source scan found too little: {source:?}"
    );
    let missing: Vec<_> = source.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&source).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "routes without a description: {missing:?}; described routes the router lacks: {extra:?}"
    );
    assert!(
        documented.iter().all(|(_, p)| !is_page(p)),
        "the page is not API"
    );

    // The live router agrees: every documented route answers, every other method on its path
    // is 405, and a path the document lacks is the router's 404.
    let paths: BTreeSet<&String> = documented.iter().map(|(_, p)| p).collect();
    for path in paths {
        for m in METHODS {
            let listed = documented.contains(&(m.to_string(), path.clone()));
            let refused = router_refuses(&client, &base, m, path).await;
            if listed {
                assert_eq!(
                    refused, None,
                    "{m} {path} is documented but the router refuses it"
                );
            } else {
                assert_eq!(
                    refused,
                    Some(405),
                    "{m} {path}: the router takes a method the document lacks"
                );
            }
        }
    }
    assert_eq!(
        router_refuses(&client, &base, "get", "/api/v1/not-in-the-document").await,
        Some(404)
    );

    // What every route shares: the bearer scheme, the error bodies, no auth on the open ones.
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    for (m, path) in &documented {
        let op = &doc["paths"][path][m];
        let open =
            ["/healthz", "/readyz", "/metrics", "/api/v1/openapi.json"].contains(&path.as_str());
        if open {
            assert_eq!(op["security"], serde_json::json!([]), "{m} {path}");
        } else {
            assert_eq!(
                op["security"][0]["bearer"],
                serde_json::json!([]),
                "{m} {path}"
            );
            let schema = if path.starts_with("/ngsi-ld/") {
                "ProblemDetails"
            } else {
                "ApiError"
            };
            for code in ["401", "403"] {
                assert_eq!(
                    op["responses"][code]["content"]["application/json"]["schema"]["$ref"],
                    format!("#/components/schemas/{schema}"),
                    "{m} {path} {code}"
                );
            }
        }
        assert!(op["operationId"].is_string(), "{m} {path}");
    }
    for schema in [
        "ApiError",
        "ProblemDetails",
        "Twin",
        "DeviceView",
        "AlertDoc",
        "EntityDoc",
    ] {
        assert!(doc["components"]["schemas"][schema].is_object(), "{schema}");
    }
    h.shutdown().await;
}

#[tokio::test]
async fn the_document_passes_openapi_spec_validator() {
    let dir = tempfile::tempdir().unwrap();
    let h = TestHub::start_in(dir.path(), &ts_stores()).await;
    let doc = document(&h.base_url()).await;
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let out = Command::new("python3")
        .args(["-m", "openapi_spec_validator", "--schema", "3.1"])
        .arg(&file)
        .output()
        .expect("python3 runs (openapi-spec-validator from scripts/setup-peers.sh)");
    assert!(
        out.status.success(),
        "openapi-spec-validator refused the document:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    h.shutdown().await;
}
