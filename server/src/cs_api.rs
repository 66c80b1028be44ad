//! The customer-service HTTP API under `/api/v1`, authenticated with the
//! same tokens as the WebSocket (`Authorization: Bearer <token>`):
//!
//! - admin: groups and their agents (create, update, delete), the supervisor
//!   views (every group's queue, longest wait, agents and load; one group's
//!   waiting and active sessions);
//! - anyone: the tenant's groups, names and whether an agent is online (for a
//!   customer to pick one);
//! - agent (or admin): quick replies (of their groups, and personal ones),
//!   the unclaimed left messages of a group, a customer's note, whom a
//!   session can be transferred to;
//! - admin: an agent's status set for them; the figures of a time range per
//!   group and agent (`/api/v1/reports/summary`);
//! - people: names and avatars (from the tokens' claims) and past sessions
//!   (customers: their own).
//!
//! Errors are `{"error": {"code": "FORBIDDEN", "message": "..."}}` with the
//! HTTP status of the code.
//!
//! Every rule, permission and limit is `CsService`'s (cs-queue), as for the
//! WebSocket frames: the handlers here only authenticate, map the request
//! to a call and the result to JSON.

use access_gateway::{Claims, TokenSigner};
use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use cs_queue::{Caller, CsService, GroupPatch};
use im_core::ClientError;
use im_core::ErrorCode;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use storage::cs::{GroupView, Policy, Profile, Session};

#[derive(Clone)]
pub(crate) struct CsApi {
    pub cs: Arc<CsService>,
    pub signer: Arc<TokenSigner>,
    pub revocations: Arc<dyn storage::Revocations>,
    pub router: Arc<session_router::Router>,
}

pub(crate) fn routes(api: CsApi) -> Router {
    Router::new()
        .route("/api/v1/service-groups", get(service_groups))
        .route("/api/v1/groups", get(list_groups))
        .route("/api/v1/groups/{group}", get(get_group).put(put_group).delete(delete_group))
        .route("/api/v1/groups/{group}/agents/{agent}", put(put_agent).delete(remove_agent))
        .route("/api/v1/groups/{group}/sessions", get(group_sessions))
        .route("/api/v1/groups/{group}/left-messages", get(left_messages))
        .route("/api/v1/quick-replies", get(list_replies).post(create_reply))
        .route("/api/v1/quick-replies/{id}", put(update_reply).delete(delete_reply))
        .route("/api/v1/users", get(profiles))
        .route("/api/v1/users/{user}/sessions", get(past_sessions))
        .route("/api/v1/customers/{user}", get(customer))
        .route("/api/v1/customers/{user}/note", put(put_note))
        .route("/api/v1/transfer-targets", get(transfer_targets))
        .route("/api/v1/agents/{agent}/status", put(put_agent_status))
        .route("/api/v1/reports/summary", get(report_summary))
        .with_state(api)
}

/// An HTTP API failure: `{"error": {"code", "message", "field"?}}`, where
/// `field` names the body's field at fault when one is (so that a form
/// can mark it and say so in its own language).
pub(crate) struct ApiError(StatusCode, ErrorCode, String, Option<String>);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({ "code": self.1.as_str_name(), "message": self.2 });
        if let Some(field) = self.3 {
            error["field"] = json!(field);
        }
        (self.0, Json(json!({ "error": error }))).into_response()
    }
}

impl From<ClientError> for ApiError {
    fn from(e: ClientError) -> Self {
        fail(e.code, e.message)
    }
}

pub(crate) fn fail(code: ErrorCode, message: impl Into<String>) -> ApiError {
    let status = StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    ApiError(status, code, message.into(), None)
}

/// INVALID_ARGUMENT naming the body's `field` at fault.
pub(crate) fn field_error(field: &str, message: impl Into<String>) -> ApiError {
    let mut err = fail(ErrorCode::InvalidArgument, message);
    err.3 = Some(field.to_string());
    err
}

pub(crate) type ApiResult = Result<Response, ApiError>;

fn ok(v: Value) -> ApiResult {
    Ok(Json(v).into_response())
}

/// The request's JSON body, or INVALID_ARGUMENT saying which field is
/// wrong and how, without the parser's framing ("Failed to deserialize
/// ... at line 1 column 20").
pub(crate) fn json_body<T>(body: Result<Json<T>, axum::extract::rejection::JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(b)| b).map_err(|e| {
        let text = e.body_text();
        let text = text.split_once("target type: ").map_or(text.as_str(), |(_, t)| t);
        let text = text.rsplit_once(" at line ").map_or(text, |(t, _)| t).replace('`', "'");
        match text.split_once(": ") {
            Some((field, why)) if !field.is_empty() && field.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
                field_error(field, format!("{field}: {why}"))
            }
            _ => fail(ErrorCode::InvalidArgument, text),
        }
    })
}

impl CsApi {
    /// The caller the bearer token names, unless the token was revoked.
    pub(crate) async fn caller(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| fail(ErrorCode::Unauthenticated, "send Authorization: Bearer <token>"))?;
        let claims: Claims =
            self.signer.verify(token.trim()).map_err(|e| fail(ErrorCode::Unauthenticated, e.to_string()))?;
        let revoked = access_gateway::is_revoked(self.revocations.as_ref(), &claims)
            .await
            .map_err(|e| fail(ErrorCode::Unavailable, e.to_string()))?;
        if revoked {
            return Err(fail(ErrorCode::Unauthenticated, "token revoked: sign in again"));
        }
        Ok(Caller::new(&claims.tenant, &claims.sub, claims.role))
    }
}

fn group_summary(v: &GroupView, now: u64) -> Value {
    let longest_wait_ms = v.waiting.iter().map(|s| now.saturating_sub(s.queued_ms)).max().unwrap_or(0);
    json!({
        "id": v.group.spec.id,
        "name": v.group.spec.name,
        "policy": v.group.spec.policy,
        "max_queue": v.group.spec.max_queue,
        "max_wait_ms": v.group.spec.max_wait_ms,
        "auto_join": v.group.spec.auto_join,
        "default_capacity": v.group.spec.default_capacity,
        "queue_length": v.waiting.len(),
        "longest_wait_ms": longest_wait_ms,
        "avg_handle_ms": v.queue.avg_handle_ms,
        "agents_online": v.agents.iter().filter(|a| a.online()).count(),
        "sessions_active": v.active.len(),
        "agents": v.agents.iter().map(|a| json!({
            "id": a.id,
            "status": a.status,
            "connected": a.connected,
            "load": a.load,
            // Of `load` (all the agent's groups), the sessions of this one.
            "group_load": v.active.iter().filter(|s| s.agent == a.id).count(),
            "capacity": a.capacity,
        })).collect::<Vec<_>>(),
    })
}

async fn list_groups(State(api): State<CsApi>, headers: HeaderMap) -> ApiResult {
    let views = api.cs.group_views(&api.caller(&headers).await?).await?;
    let now = im_core::now_ms();
    ok(json!({ "groups": views.iter().map(|v| group_summary(v, now)).collect::<Vec<_>>() }))
}

/// What a customer may know of the tenant's groups: to pick one.
async fn service_groups(State(api): State<CsApi>, headers: HeaderMap) -> ApiResult {
    let views = api.cs.service_groups(&api.caller(&headers).await?).await?;
    let groups: Vec<Value> = views
        .iter()
        .map(|v| {
            json!({
                "id": v.group.spec.id,
                "name": v.group.spec.name,
                "policy": v.group.spec.policy,
                "agents_online": v.agents.iter().filter(|a| a.online()).count(),
                "queue_length": v.waiting.len(),
            })
        })
        .collect();
    ok(json!({ "groups": groups }))
}

async fn get_group(State(api): State<CsApi>, headers: HeaderMap, Path(group): Path<String>) -> ApiResult {
    let v = api.cs.group_view(&api.caller(&headers).await?, &group).await?;
    ok(group_summary(&v, im_core::now_ms()))
}

/// Settings of PUT /api/v1/groups/{group}; omitted fields keep their value.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupBody {
    name: Option<String>,
    policy: Option<Policy>,
    max_queue: Option<u32>,
    max_wait_s: Option<u64>,
    auto_join: Option<bool>,
    default_capacity: Option<u32>,
}

async fn put_group(
    State(api): State<CsApi>,
    headers: HeaderMap,
    Path(group): Path<String>,
    body: Result<Json<GroupBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult {
    let caller = api.caller(&headers).await?;
    let b = json_body(body)?;
    let patch = GroupPatch {
        name: b.name,
        policy: b.policy,
        max_queue: b.max_queue,
        max_wait_ms: b.max_wait_s.map(|s| s.saturating_mul(1000)),
        auto_join: b.auto_join,
        default_capacity: b.default_capacity,
    };
    let (group, created) = api.cs.put_group(&caller, &group, patch).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(json!(group))).into_response())
}

async fn delete_group(State(api): State<CsApi>, headers: HeaderMap, Path(group): Path<String>) -> ApiResult {
    api.cs.delete_group(&api.caller(&headers).await?, &group).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentBody {
    capacity: Option<u32>,
}

async fn put_agent(
    State(api): State<CsApi>,
    headers: HeaderMap,
    Path((group, agent)): Path<(String, String)>,
    body: Option<Json<AgentBody>>,
) -> ApiResult {
    let capacity = body.and_then(|Json(b)| b.capacity);
    let agent = api.cs.put_member(&api.caller(&headers).await?, &group, &agent, capacity).await?;
    ok(json!(agent))
}

async fn remove_agent(
    State(api): State<CsApi>,
    headers: HeaderMap,
    Path((group, agent)): Path<(String, String)>,
) -> ApiResult {
    api.cs.remove_member(&api.caller(&headers).await?, &group, &agent).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusBody {
    status: storage::cs::AgentStatus,
}

async fn put_agent_status(
    State(api): State<CsApi>,
    headers: HeaderMap,
    Path(agent): Path<String>,
    body: Result<Json<StatusBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult {
    let caller = api.caller(&headers).await?;
    let b = json_body(body)?;
    ok(json!(api.cs.set_agent_status(&caller, &agent, b.status).await?))
}

#[derive(Deserialize)]
struct RangeQuery {
    #[serde(default)]
    from: u64,
    #[serde(default)]
    to: u64,
}

async fn report_summary(
    State(api): State<CsApi>,
    headers: HeaderMap,
    q: Result<Query<RangeQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let caller = api.caller(&headers).await?;
    let Query(q) =
        q.map_err(|e| fail(ErrorCode::InvalidArgument, format!("from and to are ms since the epoch: {e}")))?;
    let r = api.cs.summary(&caller, q.from, q.to).await?;
    ok(json!({
        "from_ms": r.from_ms,
        "to_ms": r.to_ms,
        "truncated": r.truncated,
        "groups": r.groups.iter().map(|g| json!({
            "group": g.group,
            "served": g.served,
            "abandoned": g.abandoned,
            "transferred": g.transferred,
            "waiting_now": g.waiting_now,
            "active_now": g.active_now,
            "wait_avg_ms": g.wait.avg(),
            "wait_max_ms": g.wait_max_ms,
            "first_response_avg_ms": g.first_response.avg(),
            "handle_avg_ms": g.handle.avg(),
            "csat_avg": g.csat.exact_avg(),
            "csat_count": g.csat.count,
        })).collect::<Vec<_>>(),
        "agents": r.agents.iter().map(|a| json!({
            "agent": a.agent,
            "served": a.served,
            "first_response_avg_ms": a.first_response.avg(),
            "handle_avg_ms": a.handle.avg(),
            "csat_avg": a.csat.exact_avg(),
            "csat_count": a.csat.count,
        })).collect::<Vec<_>>(),
    }))
}

async fn group_sessions(State(api): State<CsApi>, headers: HeaderMap, Path(group): Path<String>) -> ApiResult {
    let v = api.cs.group_view(&api.caller(&headers).await?, &group).await?;
    ok(json!({
        "server_time_ms": im_core::now_ms(),
        "waiting": v.waiting.iter().map(session_json).collect::<Vec<_>>(),
        "active": v.active.iter().map(session_json).collect::<Vec<_>>(),
    }))
}

#[derive(Deserialize)]
struct LimitQuery {
    limit: Option<usize>,
}

async fn left_messages(
    State(api): State<CsApi>,
    headers: HeaderMap,
    Path(group): Path<String>,
    Query(q): Query<LimitQuery>,
) -> ApiResult {
    let messages = api.cs.left_messages(&api.caller(&headers).await?, &group, q.limit.unwrap_or(50)).await?;
    // As in LeftMessageNotice frames.
    ok(json!({ "left_messages": messages.iter().map(cs_queue::left_pb).collect::<Vec<_>>() }))
}

async fn list_replies(State(api): State<CsApi>, headers: HeaderMap) -> ApiResult {
    let replies = api.cs.quick_replies(&api.caller(&headers).await?).await?;
    ok(json!({ "quick_replies": replies }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplyBody {
    /// A group's reply (shared by its agents); absent or empty: personal.
    #[serde(default)]
    group: String,
    title: String,
    text: String,
}

async fn create_reply(
    State(api): State<CsApi>,
    headers: HeaderMap,
    body: Result<Json<ReplyBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult {
    let caller = api.caller(&headers).await?;
    let b = json_body(body)?;
    let reply = api.cs.create_quick_reply(&caller, b.group, b.title, b.text).await?;
    Ok((StatusCode::CREATED, Json(json!(reply))).into_response())
}

async fn update_reply(
    State(api): State<CsApi>,
    headers: HeaderMap,
    Path(reply_id): Path<String>,
    body: Result<Json<ReplyBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult {
    let caller = api.caller(&headers).await?;
    let b = json_body(body)?;
    let reply = api.cs.update_quick_reply(&caller, &reply_id, b.group, b.title, b.text).await?;
    ok(json!(reply))
}

async fn delete_reply(State(api): State<CsApi>, headers: HeaderMap, Path(reply_id): Path<String>) -> ApiResult {
    api.cs.delete_quick_reply(&api.caller(&headers).await?, &reply_id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
struct UsersQuery {
    /// Comma-separated user ids.
    #[serde(default)]
    ids: String,
}

fn profile_json(p: &Profile) -> Value {
    json!({ "user": p.user, "role": p.role, "name": p.name, "avatar": p.avatar })
}

/// Names and avatars, for showing people by name.
async fn profiles(State(api): State<CsApi>, headers: HeaderMap, Query(q): Query<UsersQuery>) -> ApiResult {
    let ids: Vec<String> = q.ids.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect();
    let found = api.cs.profiles(&api.caller(&headers).await?, &ids).await?;
    ok(json!({ "users": found.iter().map(profile_json).collect::<Vec<_>>() }))
}

/// A session as the HTTP API shows it: the `ServiceSession` of the
/// WebSocket frames, in the same JSON (one shape per object, whichever way
/// a client gets it).
fn session_json(s: &Session) -> Value {
    json!(cs_queue::session_pb(s))
}

#[derive(Deserialize)]
struct PageQuery {
    #[serde(default)]
    before_ms: u64,
    limit: Option<usize>,
}

async fn past_sessions(
    State(api): State<CsApi>,
    headers: HeaderMap,
    Path(user): Path<String>,
    Query(q): Query<PageQuery>,
) -> ApiResult {
    let caller = api.caller(&headers).await?;
    let limit = q.limit.unwrap_or(cs_queue::DEFAULT_PAST_SESSIONS);
    let page = api.cs.past_sessions(&caller, &user, q.before_ms, limit).await?;
    ok(json!({
        "sessions": page.sessions.iter().map(session_json).collect::<Vec<_>>(),
        "next_before_ms": page.next_before_ms,
    }))
}

fn customer_json(p: &Profile) -> Value {
    json!({
        "user": p.user,
        "name": p.name,
        "avatar": p.avatar,
        "note": p.note,
        "note_by": p.note_by,
        "note_ms": p.note_ms,
    })
}

async fn customer(State(api): State<CsApi>, headers: HeaderMap, Path(user): Path<String>) -> ApiResult {
    let p = api.cs.customer(&api.caller(&headers).await?, &user).await?;
    ok(customer_json(&p))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoteBody {
    note: String,
}

async fn put_note(
    State(api): State<CsApi>,
    headers: HeaderMap,
    Path(user): Path<String>,
    body: Result<Json<NoteBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult {
    let caller = api.caller(&headers).await?;
    let b = json_body(body)?;
    let p = api.cs.put_note(&caller, &user, b.note).await?;
    ok(customer_json(&p))
}

async fn transfer_targets(State(api): State<CsApi>, headers: HeaderMap) -> ApiResult {
    let caller = api.caller(&headers).await?;
    let t = api.cs.transfer_targets(&caller).await?;
    let ids: Vec<String> = t.agents.iter().map(|a| a.id.clone()).take(cs_queue::MAX_PROFILE_LOOKUP).collect();
    let names = api.cs.profiles(&caller, &ids).await?;
    let name_of = |id: &str| names.iter().find(|p| p.user == id).map_or("", |p| p.name.as_str());
    ok(json!({
        "groups": t.groups.iter().map(|v| json!({
            "id": v.group.spec.id,
            "name": v.group.spec.name,
            "agents_online": v.agents.iter().filter(|a| a.online()).count(),
            "queue_length": v.waiting.len(),
        })).collect::<Vec<_>>(),
        "agents": t.agents.iter().map(|a| json!({
            "id": a.id,
            "name": name_of(&a.id),
            "load": a.load,
            "capacity": a.capacity,
            "groups": a.groups,
        })).collect::<Vec<_>>(),
    }))
}
