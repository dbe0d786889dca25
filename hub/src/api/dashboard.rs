//! `GET /`: the command-center dashboard, one self-contained page built into the binary. It is
//! a plain client of this API: it asks for app credentials (or takes them from the URL
//! fragment, which browsers never send) and uses the same bearer token and grants as any app.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

/// The page.
const PAGE: &str = include_str!("../../assets/dashboard.html");

/// Serves the page.
pub async fn page() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            // Inline script and style only; data comes from this origin.
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' blob: data:; connect-src 'self'",
                ),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        PAGE,
    )
        .into_response()
}
