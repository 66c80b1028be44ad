//! `/api/v1/widget`: how a tenant's chat widget looks and greets — the
//! launcher's words per language, its colour and corner, the greeting above
//! the question form. Set by an admin from /supervisor's settings (or
//! `PUT`), read by the widget with the customer's token; kept as a settings
//! document (`widget.<tenant>`, the embedded database or MongoDB), so every
//! node serves the same, across restarts.

use crate::cs_api::{ApiError, ApiResult, CsApi, fail, field_error, json_body};
use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::get;
use im_core::{ErrorCode, Role};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Longest launcher label, in characters.
pub const MAX_LABEL_CHARS: usize = 40;
/// Longest greeting, in characters.
pub const MAX_GREETING_CHARS: usize = 500;
/// The launcher's colour when none is set.
pub const DEFAULT_COLOR: &str = "#c8102e";

#[derive(Clone)]
pub(crate) struct WidgetApi {
    pub api: CsApi,
    pub settings: Arc<dyn storage::Settings>,
}

pub(crate) fn routes(api: WidgetApi) -> Router {
    Router::new().route("/api/v1/widget", get(show).put(replace)).with_state(api)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Corner {
    #[default]
    Right,
    Left,
}

/// The widget's look; empty words mean the page's own defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Widget {
    label_en: String,
    label_zh: String,
    greeting_en: String,
    greeting_zh: String,
    color: String,
    position: Corner,
}

impl Default for Widget {
    fn default() -> Self {
        Self {
            label_en: String::new(),
            label_zh: String::new(),
            greeting_en: String::new(),
            greeting_zh: String::new(),
            color: DEFAULT_COLOR.into(),
            position: Corner::Right,
        }
    }
}

impl Widget {
    /// The first field that is wrong, and why.
    fn check(&self) -> Result<(), (&'static str, String)> {
        let words = [
            ("label_en", &self.label_en, MAX_LABEL_CHARS),
            ("label_zh", &self.label_zh, MAX_LABEL_CHARS),
            ("greeting_en", &self.greeting_en, MAX_GREETING_CHARS),
            ("greeting_zh", &self.greeting_zh, MAX_GREETING_CHARS),
        ];
        for (field, text, max) in words {
            if text.chars().count() > max {
                return Err((field, format!("at most {max} characters")));
            }
            // Line breaks are fine in a greeting, nothing else invisible.
            if text.chars().any(|c| c.is_control() && c != '\n') {
                return Err((field, "must not contain control characters".into()));
            }
        }
        let hex = self.color.strip_prefix('#').filter(|h| h.len() == 6 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        if hex.is_none() {
            return Err(("color", "a colour as #rrggbb, e.g. #c8102e".into()));
        }
        Ok(())
    }
}

fn setting_name(tenant: &str) -> String {
    format!("widget.{tenant}")
}

impl WidgetApi {
    async fn load(&self, tenant: &str) -> Result<Widget, ApiError> {
        let stored = self
            .settings
            .setting(&setting_name(tenant))
            .await
            .map_err(|e| fail(ErrorCode::Unavailable, e.to_string()))?;
        // A document that no longer parses (an older shape) falls back to the
        // defaults rather than breaking every widget of the tenant.
        Ok(stored.and_then(|s| serde_json::from_str(&s).ok()).unwrap_or_default())
    }
}

/// Anyone of the tenant (the widget reads it with the customer's token).
async fn show(State(w): State<WidgetApi>, headers: HeaderMap) -> ApiResult {
    let caller = w.api.caller(&headers).await?;
    Ok(Json(w.load(&caller.tenant).await?).into_response())
}

/// Admins: the whole look at once (a field left out goes back to its default).
async fn replace(
    State(w): State<WidgetApi>,
    headers: HeaderMap,
    body: Result<Json<Widget>, axum::extract::rejection::JsonRejection>,
) -> ApiResult {
    let caller = w.api.caller(&headers).await?;
    if caller.role != Role::Admin {
        return Err(fail(ErrorCode::Forbidden, "changing the widget needs the role admin"));
    }
    let mut widget = json_body(body)?;
    widget.color = widget.color.trim().to_ascii_lowercase();
    if let Err((field, why)) = widget.check() {
        return Err(field_error(field, format!("{field}: {why}")));
    }
    let text = serde_json::to_string(&widget).map_err(|e| fail(ErrorCode::Internal, e.to_string()))?;
    w.settings
        .set_setting(&setting_name(&caller.tenant), Some(text))
        .await
        .map_err(|e| fail(ErrorCode::Unavailable, e.to_string()))?;
    Ok(Json(widget).into_response())
}
