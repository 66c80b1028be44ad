//! Admin operations on users under `/api/v1/admin` (role admin, own tenant):
//! disconnect a user or one device, on whichever node holds it, and revoke
//! the tokens a user was issued before a time (which also disconnects them).
//! Closed connections get close code 4004 with the reason given.

use crate::cs_api::{ApiResult, CsApi, fail, json_body};
use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::post;
use im_core::{ErrorCode, Role, ids::validate_id};
use serde::Deserialize;
use serde_json::json;

/// Longest reason shown to a disconnected client (a WebSocket close reason
/// holds 123 bytes).
const MAX_REASON_BYTES: usize = 100;
const DEFAULT_REASON: &str = "signed out by an administrator";

pub(crate) fn routes(api: CsApi) -> Router {
    Router::new()
        .route("/api/v1/admin/users/{user}/disconnect", post(disconnect))
        .route("/api/v1/admin/users/{user}/revoke", post(revoke))
        .with_state(api)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DisconnectBody {
    /// Only this device; absent: every device of the user.
    #[serde(default)]
    device: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    /// Tokens issued before this time (Unix seconds) are refused; absent: now.
    #[serde(default)]
    before_s: Option<u64>,
    #[serde(default)]
    reason: Option<String>,
}

/// The admin's tenant, the checked user id and the reason to show.
async fn admin_target(
    api: &CsApi,
    headers: &HeaderMap,
    user: &str,
    reason: Option<String>,
) -> Result<(String, String), crate::cs_api::ApiError> {
    let caller = api.caller(headers).await?;
    if caller.role != Role::Admin {
        return Err(fail(ErrorCode::Forbidden, "needs the role admin"));
    }
    validate_id("user", user).map_err(|e| fail(ErrorCode::InvalidArgument, e))?;
    let reason = reason.unwrap_or_else(|| DEFAULT_REASON.to_string());
    if reason.len() > MAX_REASON_BYTES || reason.chars().any(char::is_control) {
        return Err(fail(ErrorCode::InvalidArgument, format!("reason: at most {MAX_REASON_BYTES} bytes, one line")));
    }
    Ok((caller.tenant, reason))
}

async fn disconnect(
    State(api): State<CsApi>,
    headers: HeaderMap,
    Path(user): Path<String>,
    body: Option<Json<DisconnectBody>>,
) -> ApiResult {
    let b = body.map(|Json(b)| b).unwrap_or_default();
    let (tenant, reason) = admin_target(&api, &headers, &user, b.reason).await?;
    if let Some(d) = &b.device {
        validate_id("device", d).map_err(|e| fail(ErrorCode::InvalidArgument, e))?;
    }
    let n = api
        .router
        .log_out(&tenant, &user, b.device.as_deref(), &reason)
        .await
        .map_err(|e| fail(ErrorCode::Unavailable, e.to_string()))?;
    tracing::info!(%tenant, %user, device = ?b.device, disconnected = n, "admin disconnect");
    Ok(Json(json!({ "disconnected": n })).into_response())
}

async fn revoke(
    State(api): State<CsApi>,
    headers: HeaderMap,
    Path(user): Path<String>,
    body: Result<Json<RevokeBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult {
    let b = match body {
        Ok(Json(b)) => b,
        Err(axum::extract::rejection::JsonRejection::MissingJsonContentType(_)) => RevokeBody::default(),
        Err(e) => json_body::<RevokeBody>(Err(e))?,
    };
    let (tenant, reason) = admin_target(&api, &headers, &user, b.reason).await?;
    let before = b.before_s.unwrap_or(im_core::now_ms() / 1000 + 1);
    let unavailable = |e: storage::StorageError| fail(ErrorCode::Unavailable, e.to_string());
    let in_force = api.revocations.revoke_before(&tenant, &user, before).await.map_err(unavailable)?;
    let n = api.router.log_out(&tenant, &user, None, &reason).await.map_err(unavailable)?;
    tracing::info!(%tenant, %user, revoked_before_s = in_force, disconnected = n, "admin revoke");
    Ok(Json(json!({ "revoked_before_s": in_force, "disconnected": n })).into_response())
}
