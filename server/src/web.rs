//! The web consoles, served on the HTTP port from assets compiled into the
//! binary: `/agent` (agent workspace), `/chat` (customer widget, embeddable
//! with an iframe or `/web/embed.js`) and `/supervisor`. The pages are plain
//! JavaScript modules speaking the public protocol (JSON text frames on the
//! WebSocket) and the public HTTP API, like any other client.
//!
//! Two endpoints serve the pages: `GET /api/v1/info` (where the WebSocket
//! is, whether dev sign-in exists, how long messages can be recalled) and, only when the server signs with
//! its generated dev secret, `POST /api/v1/dev/token`, which mints a token
//! for any tenant, user and role so that the consoles can be tried without an
//! embedding application.

use access_gateway::TokenSigner;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use im_core::{Role, ids::validate_id};
use serde::Deserialize;
use serde_json::json;
use std::io::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// One embedded file: its name under `/web/`, its content type and bytes.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $ty:expr) => {
        Asset { name: $name, content_type: $ty, body: include_bytes!(concat!("../web/", $name)) }
    };
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";

static ASSETS: &[Asset] = &[
    asset!("index.html", HTML),
    asset!("agent.html", HTML),
    asset!("chat.html", HTML),
    asset!("supervisor.html", HTML),
    asset!("dongdong-client.js", JS),
    asset!("dd.js", JS),
    asset!("ui.js", JS),
    asset!("i18n.js", JS),
    asset!("agent.js", JS),
    asset!("chat.js", JS),
    asset!("supervisor.js", JS),
    asset!("search.js", JS),
    asset!("settings.js", JS),
    asset!("embed.js", JS),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("icon.svg", "image/svg+xml"),
];

/// The pages' policy: scripts and styles only from this server, so that a
/// message's text can never run as code; images from anywhere (image links);
/// WebSocket connections to any host (the WebSocket port differs from this one).
macro_rules! csp {
    () => {
        "default-src 'self'; img-src * data:; connect-src 'self' ws: wss:; style-src 'self'; \
         script-src 'self'; base-uri 'none'; form-action 'self'"
    };
}
/// `/chat` may be framed by any shop's page.
const CSP_FRAMEABLE: &str = csp!();
/// The consoles may not be framed (clickjacking).
const CSP_CONSOLE: &str = concat!(csp!(), "; frame-ancestors 'none'");

/// How long a dev sign-in token is valid.
const DEV_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

#[derive(Clone)]
pub(crate) struct Web {
    /// `server.public_ws_url`, or empty.
    pub public_ws_url: String,
    /// The port of the WebSocket listener, for pages to build the URL.
    pub ws_port: u16,
    /// Set when the server signs with its generated dev secret.
    pub dev_signer: Option<Arc<TokenSigner>>,
    /// `im.recall_window`: pages offer recall only within it.
    pub recall_window: Duration,
    /// `files.max_bytes`: pages say the limit, and refuse a larger file before sending it.
    pub max_file_bytes: u64,
}

pub(crate) fn routes(web: Web) -> Router {
    let mut router = Router::new()
        .route("/", get(|| async { Redirect::temporary("/web/index.html") }))
        .route("/agent", get(|h: HeaderMap| async move { page("agent.html", false, &h) }))
        .route("/supervisor", get(|h: HeaderMap| async move { page("supervisor.html", false, &h) }))
        .route("/chat", get(|h: HeaderMap| async move { page("chat.html", true, &h) }))
        .route("/web/{file}", get(web_file))
        .route("/api/v1/info", get(info));
    if web.dev_signer.is_some() {
        router = router.route("/api/v1/dev/token", post(dev_token));
    }
    router.with_state(web)
}

/// An asset as served: its references to other assets carry the version
/// (so that they may be cached for good), with its ETag and, where it is
/// smaller, its gzip encoding.
struct Served {
    asset: &'static Asset,
    body: Vec<u8>,
    gzip: Option<Vec<u8>>,
}

/// Versioned URLs are cached this long without asking again.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// The version of the whole set of assets: a digest of their bytes. Every
/// asset changes URL when any does (the consoles are one release).
fn version() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| {
        use sha2::{Digest, Sha256};
        let mut digest = Sha256::new();
        for a in ASSETS {
            digest.update(a.name.as_bytes());
            digest.update(a.body);
        }
        hex::encode(&digest.finalize()[..6])
    })
}

/// `body` with `"/web/NAME"` (pages) and `'./NAME'` (module imports) of
/// every asset turned into `…NAME?v=VERSION`; not `embed.js`, whose bare URL
/// is what shops put in their pages (and what index.html shows them).
fn versioned(body: &[u8]) -> Vec<u8> {
    let Ok(text) = std::str::from_utf8(body) else { return body.to_vec() };
    let mut out = text.to_string();
    for a in ASSETS.iter().filter(|a| a.name != "embed.js") {
        for (open, close) in [("\"/web/", "\""), ("'./", "'")] {
            let from = format!("{open}{}{close}", a.name);
            out = out.replace(&from, &format!("{open}{}?v={}{close}", a.name, version()));
        }
    }
    out.into_bytes()
}

fn gzip(body: &[u8]) -> Option<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(body).ok()?;
    let packed = encoder.finish().ok()?;
    (packed.len() < body.len()).then_some(packed)
}

/// Every asset, prepared once (on first use: ~100 KB compressed in a few ms).
fn served() -> &'static [Served] {
    static SERVED: OnceLock<Vec<Served>> = OnceLock::new();
    SERVED.get_or_init(|| {
        ASSETS
            .iter()
            .map(|asset| {
                let body = if asset.name.ends_with(".svg") { asset.body.to_vec() } else { versioned(asset.body) };
                let gzip = gzip(&body);
                Served { asset, body, gzip }
            })
            .collect()
    })
}

fn find(name: &str) -> Option<&'static Served> {
    served().iter().find(|a| a.asset.name == name)
}

/// A console page. `/chat` may be framed by any shop page; the consoles may not.
fn page(name: &str, frameable: bool, request: &HeaderMap) -> Response {
    let mut response = serve(find(name), false, request);
    let csp = if frameable { CSP_FRAMEABLE } else { CSP_CONSOLE };
    response.headers_mut().insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(csp));
    response
}

/// The SDK's bundle, which any page may import as a module.
const SDK_BUNDLE: &str = "dongdong-client.js";

async fn web_file(Path(file): Path<String>, RawQuery(query): RawQuery, request: HeaderMap) -> Response {
    // The current version's URL is cached for good; any other (a page of
    // an older release, or a bare /web/embed.js in a shop's page) asks
    // again each time (answered 304 while it has not changed).
    let current = query.as_deref().is_some_and(|q| q.split('&').any(|p| p.strip_prefix("v=") == Some(version())));
    let mut response = serve(find(&file), current, &request);
    if file.ends_with(".html") {
        response.headers_mut().insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP_CONSOLE));
    }
    if file == SDK_BUNDLE {
        // A module script from another origin needs CORS; it is public code.
        response.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    }
    response
}

/// Whether the client takes gzip (`Accept-Encoding`, not with q=0).
fn takes_gzip(request: &HeaderMap) -> bool {
    request.get_all(header::ACCEPT_ENCODING).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(
        |coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or("");
            let zero = parts.any(|p| p.strip_prefix("q=").is_some_and(|q| q.parse::<f32>().is_ok_and(|q| q == 0.0)));
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !zero
        },
    )
}

/// Whether `If-None-Match` names `etag` (or `*`).
fn not_modified(request: &HeaderMap, etag: &str) -> bool {
    request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == etag || t == "*")
}

/// The asset, gzip-encoded when the client takes it, with an ETag per
/// encoding (the release's version: an asset's bytes change only with it);
/// 304 when the client has it. `immutable`: asked for by the current
/// version's URL.
fn serve(asset: Option<&'static Served>, immutable: bool, request: &HeaderMap) -> Response {
    let Some(a) = asset else { return (StatusCode::NOT_FOUND, "not found\n").into_response() };
    let gzip = a.gzip.as_deref().filter(|_| takes_gzip(request));
    let etag = format!("\"{}{}\"", version(), if gzip.is_some() { "-gz" } else { "" });
    let cache = if immutable { IMMUTABLE } else { "no-cache" };
    let mut response = if not_modified(request, &etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = (
            [(header::CONTENT_TYPE, a.asset.content_type), (header::X_CONTENT_TYPE_OPTIONS, "nosniff")],
            gzip.unwrap_or(&a.body),
        )
            .into_response();
        if gzip.is_some() {
            r.headers_mut().insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        r
    };
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, v);
    }
    response
}

async fn info(State(web): State<Web>) -> Json<serde_json::Value> {
    Json(json!({
        "ws_url": web.public_ws_url,
        "ws_port": web.ws_port,
        "dev_login": web.dev_signer.is_some(),
        "recall_window_ms": web.recall_window.as_millis() as u64,
        "max_file_bytes": web.max_file_bytes,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DevTokenBody {
    tenant: String,
    user: String,
    role: Role,
    /// Optional display name, as the `name` claim.
    #[serde(default)]
    name: String,
}

async fn dev_token(
    State(web): State<Web>,
    body: Result<Json<DevTokenBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let error = |status: StatusCode, code: &str, message: String| {
        (status, Json(json!({ "error": { "code": code, "message": message } }))).into_response()
    };
    let Some(signer) = web.dev_signer else {
        return error(StatusCode::NOT_FOUND, "NOT_FOUND", "dev sign-in is off".into());
    };
    let body = match body {
        Ok(Json(b)) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", e.body_text()),
    };
    for (what, v) in [("tenant", &body.tenant), ("user", &body.user)] {
        if let Err(e) = validate_id(what, v) {
            return error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", e);
        }
    }
    match signer.mint_named(&body.tenant, &body.user, body.role, DEV_TOKEN_TTL, &body.name, "") {
        Ok(token) => {
            tracing::info!(tenant = %body.tenant, user = %body.user, role = body.role.as_str(), "dev sign-in");
            Json(json!({ "token": token, "expires_in_s": DEV_TOKEN_TTL.as_secs() })).into_response()
        }
        Err(e @ access_gateway::AuthError::BadClaim(_)) => {
            error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", e.to_string())
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", e.to_string()),
    }
}

/// The consoles' protocol constants are the server's: read from the served
/// scripts and compared with `im_core`, so that a code added or renumbered
/// on one side fails here, not in a browser.
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod protocol_constants {
    use im_core::{CloseCode, ErrorCode};

    fn script(name: &str) -> &'static str {
        std::str::from_utf8(super::find(name).expect(name).asset.body).unwrap()
    }

    /// The `KEY: value` lines of the object literal that starts at `opening`.
    fn object(source: &str, opening: &str) -> Vec<(String, String)> {
        let start = source.find(opening).unwrap_or_else(|| panic!("{opening} not found")) + opening.len();
        let mut depth = 1;
        let len = source[start..]
            .find(|c| {
                depth += match c {
                    '{' => 1,
                    '}' => -1,
                    _ => 0,
                };
                depth == 0
            })
            .expect("the object's end");
        let body = &source[start..start + len];
        body.lines()
            .filter_map(|l| l.trim().split_once(':'))
            .filter(|(k, _)| !k.is_empty() && k.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
            .map(|(k, v)| (k.to_string(), v.trim().trim_end_matches(',').to_string()))
            .collect()
    }

    fn protocol_error_names() -> Vec<&'static str> {
        (1..64).filter_map(|n| ErrorCode::try_from(n).ok()).map(|c| c.as_str_name()).collect()
    }

    /// The SDK's bundle (generated from im-core's types, and checked to be
    /// the build of its sources by `sdk/js/scripts/bundle.mjs --check`).
    #[test]
    fn close_codes_match_the_servers() {
        let js: Vec<(String, f64)> = object(script("dongdong-client.js"), "var CLOSE = {")
            .into_iter()
            .map(|(k, v)| (k, v.parse().unwrap_or(f64::NAN)))
            .collect();
        let server: Vec<(String, f64)> =
            CloseCode::ALL.iter().map(|c| (c.name().to_string(), f64::from(c.code()))).collect();
        assert_eq!(js, server, "web/dongdong-client.js CLOSE against im_core::CloseCode");
    }

    #[test]
    fn every_error_code_has_words_in_each_language() {
        let codes = protocol_error_names();
        assert!(codes.contains(&"TOO_LATE") && !codes.contains(&"ERROR_CODE_UNSPECIFIED"), "{codes:?}");
        let english: Vec<String> =
            object(script("dd.js"), "export const ERROR_WORDS = {").into_iter().map(|(k, _)| k).collect();
        let ui = script("ui.js");
        let chinese: Vec<String> =
            object(ui, "'zh-CN': {").into_iter().map(|(k, _)| k).filter(|k| *k != "OTHER").collect();
        for (language, words) in [("en (dd.js)", &english), ("zh-CN (ui.js)", &chinese)] {
            for code in codes.iter().chain(&["DISCONNECTED", "TIMEOUT", "CLOSED", "EXPIRED"]) {
                assert!(words.iter().any(|w| w == code), "{language}: no words for {code}");
            }
            for w in words.iter() {
                let sdk_own = ["DISCONNECTED", "TIMEOUT", "CLOSED", "EXPIRED"].contains(&w.as_str());
                assert!(sdk_own || codes.contains(&w.as_str()), "{language}: {w} is not an error code");
            }
        }
    }
}
