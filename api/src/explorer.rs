//! The ledger explorer: a static page (HTML, CSS, vanilla JavaScript from `api/explorer/`,
//! embedded in the binary; no build step) served at `/` by every node. It reads the public API
//! from the browser and verifies entries there with WebCrypto (docs/EXPLORER.md).
//!
//! Every answer carries a strict Content-Security-Policy: only this origin's script, style and
//! API (`connect-src 'self'`), no inline code, no frames, no forms posted anywhere.

use axum::extract::Path;
use axum::http::HeaderValue;
use axum::http::header;
use axum::response::IntoResponse;
use axum::response::Response;

use crate::ApiError;

const INDEX_HTML: &str = include_str!("../explorer/index.html");
const APP_JS: &str = include_str!("../explorer/app.js");
const STYLE_CSS: &str = include_str!("../explorer/style.css");

/// The Content-Security-Policy of every explorer answer.
pub const EXPLORER_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

fn page(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(EXPLORER_CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// `GET /`: the explorer's page.
#[utoipa::path(
    get,
    path = "/",
    tag = "explorer",
    responses((status = 200, description = "The ledger explorer's page (docs/EXPLORER.md).", body = String, content_type = "text/html; charset=utf-8")),
)]
pub async fn index() -> Response {
    page("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /explorer/{file}`: its script and style sheet.
#[utoipa::path(
    get,
    path = "/explorer/{file}",
    tag = "explorer",
    params(("file" = String, Path, description = "`app.js` or `style.css`.")),
    responses(
        (status = 200, description = "The explorer's script or style sheet.", body = String, content_type = "text/javascript; charset=utf-8"),
        (status = 404, description = "NOT_FOUND: the explorer has no such file.", body = crate::openapi::ErrorBody),
    ),
)]
pub async fn asset(Path(file): Path<String>) -> Result<Response, ApiError> {
    match file.as_str() {
        "app.js" => Ok(page("text/javascript; charset=utf-8", APP_JS)),
        "style.css" => Ok(page("text/css; charset=utf-8", STYLE_CSS)),
        _ => Err(ApiError::not_found(format!(
            "file: the explorer has no file {file:?}"
        ))),
    }
}
