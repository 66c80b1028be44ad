//! `GET /api/v1/search`: message search over HTTP, the same as the
//! `SearchRequest` frame (docs/protocol.md, "Search"), for integrations and
//! the consoles' pages that have no socket. Query parameters are the
//! frame's fields (`q` for `query`, `kinds` comma-separated); the answer is
//! the `SearchPage` in canonical JSON.

use crate::cs_api::{ApiResult, CsApi, fail};
use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::get;
use dispatch::Dispatcher;
use im_core::{ErrorCode, pb};
use serde::Deserialize;
use std::sync::Arc;
use storage::DeviceKey;

#[derive(Clone)]
pub(crate) struct SearchApi {
    pub api: CsApi,
    pub dispatch: Arc<Dispatcher>,
}

pub(crate) fn routes(api: SearchApi) -> Router {
    Router::new().route("/api/v1/search", get(search)).with_state(api)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct SearchParams {
    q: String,
    conversation_id: String,
    with_user: String,
    from_user: String,
    kinds: String,
    since_ms: u64,
    until_ms: u64,
    session_id: String,
    group: String,
    cursor: String,
    limit: u32,
}

async fn search(
    State(s): State<SearchApi>,
    headers: HeaderMap,
    params: Result<Query<SearchParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let caller = s.api.caller(&headers).await?;
    let Query(p) = params.map_err(|e| fail(ErrorCode::InvalidArgument, e.body_text()))?;
    let req = pb::SearchRequest {
        query: p.q,
        conversation_id: p.conversation_id,
        with_user: p.with_user,
        from_user: p.from_user,
        kinds: p.kinds.split(',').map(str::trim).filter(|k| !k.is_empty()).map(String::from).collect(),
        since_ms: p.since_ms,
        until_ms: p.until_ms,
        session_id: p.session_id,
        group: p.group,
        cursor: p.cursor,
        limit: p.limit,
    };
    // Search reads only the tenant and user of the key.
    let who = DeviceKey::new(&caller.tenant, &caller.user, "http");
    let page = s.dispatch.search(&who, caller.role, req).await?;
    let body = serde_json::to_value(&page).map_err(|e| fail(ErrorCode::Internal, e.to_string()))?;
    Ok(Json(body).into_response())
}
