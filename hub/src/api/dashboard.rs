//! `GET /` and `/dashboard/...`: the command-center dashboard, built into the binary with its
//! chart and map libraries (no CDN: command centers often run on offline networks). The page
//! is a plain client of this API: it asks for app credentials (or takes them from the URL
//! fragment, which browsers never send) and uses the same bearer token and grants as any app.
//! What it needs besides the API (the district's UTC offset, the base map) is public and
//! served here without credentials: none of it names a device.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use protocols::config::ConfigError;
use serde_json::Value;
use series_store::SeriesStore;

use super::ApiState;
use crate::config::HubConfig;

/// The page.
const PAGE: &str = include_str!("../../assets/dashboard.html");

/// Own scripts and styles only, from this origin; images may be snapshots (blob:) and, with
/// a tile server configured, its tiles. `style-src 'unsafe-inline'` because markers, legends
/// and the map library's panes carry style attributes (colours, positions); scripts stay
/// strictly to this origin.
const CSP_BASE: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

/// A file built into the binary.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

/// The vendored libraries (docs/decisions/0025-dashboard-charts-and-map.md) and the page's
/// own script and style.
const ASSETS: [Asset; 8] = [
    Asset {
        path: "/dashboard/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../assets/dashboard.js"),
    },
    Asset {
        path: "/dashboard/app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../assets/dashboard.css"),
    },
    Asset {
        path: "/dashboard/vendor/uplot.min.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../assets/vendor/uplot.min.js"),
    },
    Asset {
        path: "/dashboard/vendor/uplot.min.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../assets/vendor/uplot.min.css"),
    },
    Asset {
        path: "/dashboard/vendor/uplot.LICENSE",
        content_type: "text/plain; charset=utf-8",
        body: include_bytes!("../../assets/vendor/uplot.LICENSE"),
    },
    Asset {
        path: "/dashboard/vendor/leaflet.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../assets/vendor/leaflet.js"),
    },
    Asset {
        path: "/dashboard/vendor/leaflet.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../assets/vendor/leaflet.css"),
    },
    Asset {
        path: "/dashboard/vendor/leaflet.LICENSE",
        content_type: "text/plain; charset=utf-8",
        body: include_bytes!("../../assets/vendor/leaflet.LICENSE"),
    },
];

/// FNV-1a over the bytes: a strong-enough validator for files fixed at build time.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    h
}

/// What the page needs from hub.toml, loaded when the hub starts.
#[derive(Debug)]
pub struct Site {
    /// `/dashboard/config.json`.
    config_json: String,
    /// `/dashboard/district.geojson`.
    geojson: String,
    /// The page's CSP (with the tile server's origin when there is one).
    csp: HeaderValue,
}

impl Site {
    /// Reads `[dashboard] geojson` (it must be a GeoJSON FeatureCollection) and notes the UTC
    /// offset and tile server. Errors name the key.
    pub fn load(config: &HubConfig) -> Result<Site, ConfigError> {
        let d = &config.dashboard;
        let geojson = match &d.geojson {
            None => r#"{"type":"FeatureCollection","features":[]}"#.to_string(),
            Some(path) => {
                let bad = |e: String| ConfigError::new("dashboard.geojson", e);
                let text = std::fs::read_to_string(path)
                    .map_err(|e| bad(format!("{}: {e}", path.display())))?;
                let v: Value = serde_json::from_str(&text)
                    .map_err(|e| bad(format!("{}: not JSON: {e}", path.display())))?;
                if v["type"] != "FeatureCollection" || !v["features"].is_array() {
                    return Err(bad(format!(
                        "{}: not a GeoJSON FeatureCollection (`type` and `features`)",
                        path.display()
                    )));
                }
                text
            }
        };
        let config_json = serde_json::json!({
            "utc_offset": config.hub.utc_offset.to_string(),
            "utc_offset_minutes": config.hub.utc_offset.minutes,
            "tile_url": d.tile_url,
        })
        .to_string();
        let img = match d.tile_url.as_deref().and_then(origin) {
            Some(o) => format!("img-src 'self' blob: data: {o}"),
            None => "img-src 'self' blob: data:".to_string(),
        };
        let csp = HeaderValue::from_str(&format!("{CSP_BASE}; {img}"))
            .map_err(|_| ConfigError::new("dashboard.tile_url", "not a valid header value"))?;
        Ok(Site {
            config_json,
            geojson,
            csp,
        })
    }
}

/// `https://host[:port]` of a URL template.
fn origin(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let end = rest.find('/').unwrap_or(rest.len());
    let host = &rest[..end];
    // A placeholder in the host (`{s}.tile...`) cannot be named in a CSP source exactly.
    if host.contains('{') {
        return None;
    }
    Some(&url[..url.len() - rest.len() + end])
}

/// The routes of the page and its files.
pub fn routes<S: SeriesStore>() -> Router<Arc<ApiState<S>>> {
    let mut r = Router::new()
        .route("/", get(page::<S>))
        .route("/dashboard/config.json", get(config_json::<S>))
        .route("/dashboard/district.geojson", get(geojson::<S>));
    for a in &ASSETS {
        // The validator of a file fixed at build time, hashed once here rather than per request.
        let etag: Arc<str> = format!("\"{:016x}\"", fnv1a(a.body)).into();
        r = r.route(
            a.path,
            get(move |h: HeaderMap| {
                let etag = etag.clone();
                async move { asset(a, &etag, &h) }
            }),
        );
    }
    r
}

/// Serves the page.
async fn page<S: SeriesStore>(State(state): State<Arc<ApiState<S>>>) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CONTENT_SECURITY_POLICY, state.dashboard.csp.clone()),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        PAGE,
    )
        .into_response()
}

/// A built-in file: revalidated by ETag, so a new hub binary's files are seen at once.
fn asset(a: &Asset, etag: &str, headers: &HeaderMap) -> Response {
    let hit = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let common = [
        (header::CACHE_CONTROL, "no-cache".to_string()),
        (header::ETAG, etag.to_string()),
    ];
    if hit {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (
        common,
        [
            (header::CONTENT_TYPE, a.content_type),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        a.body,
    )
        .into_response()
}

fn json(content_type: &'static str, body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// `GET /dashboard/config.json`: `{"utc_offset":"+08:00","utc_offset_minutes":480,"tile_url":null}`.
async fn config_json<S: SeriesStore>(State(state): State<Arc<ApiState<S>>>) -> Response {
    json("application/json", state.dashboard.config_json.clone())
}

/// `GET /dashboard/district.geojson`: the base map, or an empty FeatureCollection.
async fn geojson<S: SeriesStore>(State(state): State<Arc<ApiState<S>>>) -> Response {
    json("application/geo+json", state.dashboard.geojson.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_origin_of_a_tile_template() {
        assert_eq!(
            origin("https://tiles.example:8443/{z}/{x}/{y}.png"),
            Some("https://tiles.example:8443")
        );
        assert_eq!(origin("https://{s}.tiles.example/{z}/{x}/{y}.png"), None);
    }

    #[test]
    fn the_page_settings_carry_the_offset_and_the_tile_server_into_the_csp() {
        let mut cfg = HubConfig::default();
        cfg.hub.utc_offset = crate::config::UtcOffset::parse("+05:30").unwrap();
        cfg.dashboard.tile_url = Some("https://tiles.example/{z}/{x}/{y}.png".into());
        let site = Site::load(&cfg).unwrap();
        let v: Value = serde_json::from_str(&site.config_json).unwrap();
        assert_eq!(v["utc_offset"], "+05:30");
        assert_eq!(v["utc_offset_minutes"], 330);
        assert_eq!(v["tile_url"], "https://tiles.example/{z}/{x}/{y}.png");
        let csp = site.csp.to_str().unwrap();
        assert!(
            csp.contains("img-src 'self' blob: data: https://tiles.example")
                && csp.contains("script-src 'self';"),
            "{csp}"
        );
        // Without a tile server, no other origin at all.
        let csp = Site::load(&HubConfig::default()).unwrap().csp;
        assert!(!csp.to_str().unwrap().contains("http"), "{csp:?}");
    }

    #[test]
    fn a_geojson_file_must_be_a_feature_collection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("map.geojson");
        std::fs::write(&path, r#"{"type":"Feature"}"#).unwrap();
        let mut cfg = HubConfig::default();
        cfg.dashboard.geojson = Some(path.clone());
        let e = Site::load(&cfg).unwrap_err().to_string();
        assert!(
            e.contains("dashboard.geojson") && e.contains("FeatureCollection"),
            "{e}"
        );
        std::fs::remove_file(&path).unwrap();
        let e = Site::load(&cfg).unwrap_err().to_string();
        assert!(e.contains("dashboard.geojson"), "{e}");
        std::fs::write(&path, r#"{"type":"FeatureCollection","features":[]}"#).unwrap();
        let site = Site::load(&cfg).unwrap();
        assert!(
            site.config_json.contains("\"+08:00\""),
            "{}",
            site.config_json
        );
    }
}
