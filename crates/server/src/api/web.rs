//! What a browser loads from Herald: the dashboard at `/`, the client library `/herald.js`
//! (with its typings `/herald.d.ts`) and the demo apps under `/examples/`. The files live in
//! `crates/server/web/` and are compiled into the binary, so Herald needs no files beside it
//! and no CDN.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::OnceLock;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::app::App;
use crate::http::error::AppError;
use crate::http::identity::AUTH_COOKIE;

struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! assets {
    ($($path:literal => $file:literal, $ct:expr;)*) => {
        &[$(Asset { path: $path, content_type: $ct, body: include_bytes!(concat!("../../web/", $file)) },)*]
    };
}

const JS: &str = "text/javascript; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const TS: &str = "application/typescript; charset=utf-8";

static ASSETS: &[Asset] = assets! {
    "/herald.js" => "herald.js", JS;
    "/herald.d.ts" => "herald.d.ts", TS;
    "/" => "dashboard/index.html", HTML;
    "/dashboard/dashboard.js" => "dashboard/dashboard.js", JS;
    "/dashboard/chart.js" => "dashboard/chart.js", JS;
    "/dashboard/dashboard.css" => "dashboard/dashboard.css", CSS;
    "/examples/" => "examples/index.html", HTML;
    "/examples/examples.css" => "examples/examples.css", CSS;
    "/examples/common.js" => "examples/common.js", JS;
    "/examples/notifications" => "examples/notifications.html", HTML;
    "/examples/chat" => "examples/chat.html", HTML;
    "/examples/stats" => "examples/stats.html", HTML;
    "/examples/stocks" => "examples/stocks.html", HTML;
    "/examples/activity" => "examples/activity.html", HTML;
    "/examples/news" => "examples/news.html", HTML;
    "/examples/editor" => "examples/editor.html", HTML;
    "/examples/yjs" => "examples/yjs.html", HTML;
    "/examples/yjs-bundle.js" => "examples/yjs-bundle.js", JS;
    "/examples/socketio-chat" => "examples/socketio-chat.html", HTML;
    "/examples/socket.io.min.js" => "examples/socket.io.min.js", JS;
};

fn find(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.path == path)
}

/// One validator per asset, computed once: the files only change with the binary, so a
/// browser revalidates (`no-cache`) and gets a 304 until Herald is upgraded.
fn etag(asset: &'static Asset) -> &'static HeaderValue {
    static TAGS: OnceLock<Vec<HeaderValue>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let mut h = DefaultHasher::new();
                a.body.hash(&mut h);
                HeaderValue::from_str(&format!("\"{:016x}\"", h.finish())).expect("ascii")
            })
            .collect()
    });
    let index = ASSETS
        .iter()
        .position(|a| std::ptr::eq(a, asset))
        .expect("asset of the table");
    &tags[index]
}

/// Serves an embedded file with its content type, an `ETag` and `Cache-Control: no-cache`
/// (always revalidated, so a new binary's files are picked up at once).
fn serve(asset: &'static Asset, request: &HeaderMap) -> Response {
    let tag = etag(asset);
    let headers = [
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (header::ETAG, tag.clone()),
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        ),
    ];
    if request.get(header::IF_NONE_MATCH) == Some(tag) {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    (headers, asset.body).into_response()
}

/// The dashboard page (for `GET /` without a WebSocket upgrade). `herald serve` prints its
/// URL as `/?token=<admin token>`: a valid token is kept in a cookie, so the page's own
/// requests (`fetch`, `EventSource`) carry it without the token in their URLs. It is
/// `HttpOnly` (scripts cannot read it), `SameSite=Strict` (other sites' pages cannot make
/// the browser send it), and `Secure` when Herald is served over HTTPS (`https`); writes it
/// authenticates are checked against forgery (`http::identity`).
pub fn dashboard(app: &App, token: Option<&str>, request: &HeaderMap) -> Response {
    let mut page = serve(find("/").expect("dashboard embedded"), request);
    if let Some(token) = token.filter(|t| app.auth.verify(t).is_ok()) {
        let secure = if app.config.https { "; Secure" } else { "" };
        let cookie = format!("{AUTH_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict{secure}");
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            page.headers_mut().insert(header::SET_COOKIE, v);
        }
    }
    page
}

/// `GET /examples`: the index is `/examples/`, where the pages' relative links resolve.
pub async fn examples() -> axum::response::Redirect {
    axum::response::Redirect::permanent("/examples/")
}

/// `GET /herald.js`, `/herald.d.ts`, the dashboard's scripts and styles, and the demo apps.
pub async fn file(uri: axum::http::Uri, request: HeaderMap) -> Result<Response, AppError> {
    find(uri.path())
        .map(|a| serve(a, &request))
        .ok_or_else(|| AppError::not_found(format!("no file {}", uri.path())))
}
