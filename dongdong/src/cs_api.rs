//! The customer-service HTTP API under `/api/v1`, authenticated with the
//! same tokens as the WebSocket (`Authorization: Bearer <token>`):
//!
//! - admin: groups and their agents (create, update, delete), the supervisor
//!   views (every group's queue, longest wait, agents and load; one group's
//!   waiting and active sessions);
//! - anyone: the tenant's groups, names and whether an agent is online (for a
//!   customer to pick one);
//! - agent (or admin): quick replies (of their groups, and personal ones),
//!   and the unclaimed left messages of a group.
//!
//! Errors are `{"error": {"code": "FORBIDDEN", "message": "..."}}` with the
//! HTTP status of the code.

use access_gateway::{Claims, TokenSigner};
use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use cs_queue::{CsService, cs_error};
use dispatch::DispatchError;
use im_core::{ErrorCode, Role, ids::validate_id};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use storage::cs::{CsCommand, CsReply, GroupSpec, GroupView, Policy, QuickReply, SessionState};

#[derive(Clone)]
pub(crate) struct CsApi {
    pub cs: Arc<CsService>,
    pub signer: Arc<TokenSigner>,
}

/// Most quick replies per tenant.
const MAX_QUICK_REPLIES: usize = 1000;
const MAX_TITLE_BYTES: usize = 200;
const MAX_REPLY_TEXT_BYTES: usize = 4000;

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
        .with_state(api)
}

struct ApiError(StatusCode, ErrorCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.1.as_str_name(), "message": self.2 } });
        (self.0, Json(body)).into_response()
    }
}

impl From<DispatchError> for ApiError {
    fn from(e: DispatchError) -> Self {
        fail(e.code, e.message)
    }
}

impl From<storage::StorageError> for ApiError {
    fn from(e: storage::StorageError) -> Self {
        DispatchError::from(e).into()
    }
}

fn fail(code: ErrorCode, message: impl Into<String>) -> ApiError {
    let status = StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    ApiError(status, code, message.into())
}

type ApiResult = Result<Response, ApiError>;

fn ok(v: Value) -> ApiResult {
    Ok(Json(v).into_response())
}

impl CsApi {
    /// The token's claims, if its role is one of `roles`.
    fn auth(&self, headers: &HeaderMap, roles: &[Role]) -> Result<Claims, ApiError> {
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| fail(ErrorCode::Unauthenticated, "send Authorization: Bearer <token>"))?;
        let claims = self.signer.verify(token.trim()).map_err(|e| fail(ErrorCode::Unauthenticated, e.to_string()))?;
        if !roles.contains(&claims.role) {
            let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
            return Err(fail(ErrorCode::Forbidden, format!("needs the role {}", names.join(" or "))));
        }
        Ok(claims)
    }

    async fn run(&self, tenant: &str, command: CsCommand) -> Result<CsReply, ApiError> {
        self.cs.execute(tenant, command).await?.reply.map_err(|e| cs_error(&e).into())
    }
}

fn id(what: &str, v: &str) -> Result<(), ApiError> {
    validate_id(what, v).map_err(|e| fail(ErrorCode::InvalidArgument, e))
}

fn group_summary(v: &GroupView, now: u64) -> Value {
    let longest_wait_ms = v.waiting.iter().map(|s| now.saturating_sub(s.queued_ms)).max().unwrap_or(0);
    let online = v.agents.iter().filter(|a| a.connected && a.status == storage::cs::AgentStatus::Online).count();
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
        "agents_online": online,
        "sessions_active": v.active.len(),
        "agents": v.agents.iter().map(|a| json!({
            "id": a.id,
            "status": a.status,
            "connected": a.connected,
            "load": a.load,
            "capacity": a.capacity,
        })).collect::<Vec<_>>(),
    })
}

async fn list_groups(State(api): State<CsApi>, headers: HeaderMap) -> ApiResult {
    let c = api.auth(&headers, &[Role::Admin])?;
    let now = im_core::now_ms();
    let mut out = Vec::new();
    for g in api.cs.store().groups(&c.tenant).await? {
        if let Some(v) = api.cs.store().group_view(&c.tenant, &g.spec.id).await? {
            out.push(group_summary(&v, now));
        }
    }
    ok(json!({ "groups": out }))
}

/// What a customer may know of the tenant's groups: to pick one.
async fn service_groups(State(api): State<CsApi>, headers: HeaderMap) -> ApiResult {
    let c = api.auth(&headers, &[Role::Customer, Role::Agent, Role::Admin])?;
    let mut out = Vec::new();
    for g in api.cs.store().groups(&c.tenant).await? {
        if let Some(v) = api.cs.store().group_view(&c.tenant, &g.spec.id).await? {
            let online =
                v.agents.iter().filter(|a| a.connected && a.status == storage::cs::AgentStatus::Online).count();
            out.push(json!({
                "id": v.group.spec.id,
                "name": v.group.spec.name,
                "policy": v.group.spec.policy,
                "agents_online": online,
                "queue_length": v.waiting.len(),
            }));
        }
    }
    ok(json!({ "groups": out }))
}

async fn existing_group(api: &CsApi, tenant: &str, group: &str) -> Result<GroupView, ApiError> {
    api.cs.store().group_view(tenant, group).await?.ok_or_else(|| fail(ErrorCode::NotFound, "no such group"))
}

async fn get_group(State(api): State<CsApi>, headers: HeaderMap, Path(group): Path<String>) -> ApiResult {
    let c = api.auth(&headers, &[Role::Admin])?;
    id("group", &group)?;
    let v = existing_group(&api, &c.tenant, &group).await?;
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
    let c = api.auth(&headers, &[Role::Admin])?;
    id("group", &group)?;
    let b = json_body(body)?;
    let current = api.cs.store().group_view(&c.tenant, &group).await?;
    let created = current.is_none();
    let mut spec =
        current.map(|v| v.group.spec).unwrap_or_else(|| GroupSpec { id: group.clone(), ..GroupSpec::default() });
    if let Some(v) = b.name {
        spec.name = v;
    }
    if let Some(v) = b.policy {
        spec.policy = v;
    }
    if let Some(v) = b.max_queue {
        spec.max_queue = v;
    }
    if let Some(v) = b.max_wait_s {
        spec.max_wait_ms = v.saturating_mul(1000);
    }
    if let Some(v) = b.auto_join {
        spec.auto_join = v;
    }
    if let Some(v) = b.default_capacity {
        spec.default_capacity = v;
    }
    let CsReply::Group { group } = api.run(&c.tenant, CsCommand::PutGroup { spec }).await? else {
        return Err(fail(ErrorCode::Internal, "unexpected reply"));
    };
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(json!(group))).into_response())
}

async fn delete_group(State(api): State<CsApi>, headers: HeaderMap, Path(group): Path<String>) -> ApiResult {
    let c = api.auth(&headers, &[Role::Admin])?;
    id("group", &group)?;
    api.run(&c.tenant, CsCommand::DeleteGroup { group }).await?;
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
    let c = api.auth(&headers, &[Role::Admin])?;
    id("group", &group)?;
    id("agent", &agent)?;
    let capacity = body.and_then(|Json(b)| b.capacity);
    let CsReply::Agent { agent } = api.run(&c.tenant, CsCommand::PutMember { group, agent, capacity }).await? else {
        return Err(fail(ErrorCode::Internal, "unexpected reply"));
    };
    ok(json!(agent))
}

async fn remove_agent(
    State(api): State<CsApi>,
    headers: HeaderMap,
    Path((group, agent)): Path<(String, String)>,
) -> ApiResult {
    let c = api.auth(&headers, &[Role::Admin])?;
    id("group", &group)?;
    id("agent", &agent)?;
    api.run(&c.tenant, CsCommand::RemoveMember { group, agent }).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn group_sessions(State(api): State<CsApi>, headers: HeaderMap, Path(group): Path<String>) -> ApiResult {
    let c = api.auth(&headers, &[Role::Admin])?;
    id("group", &group)?;
    let v = existing_group(&api, &c.tenant, &group).await?;
    let now = im_core::now_ms();
    let session = |s: &storage::cs::Session| {
        json!({
            "session_id": s.id,
            "customer": s.customer,
            "agent": s.agent,
            "state": s.state,
            "conversation_id": s.conversation_id,
            "created_ms": s.created_ms,
            "assigned_ms": s.assigned_ms,
            "waiting_ms": if s.state == SessionState::Waiting { now.saturating_sub(s.queued_ms) } else { 0 },
            "previous_agents": s.previous_agents,
        })
    };
    ok(json!({
        "waiting": v.waiting.iter().map(session).collect::<Vec<_>>(),
        "active": v.active.iter().map(session).collect::<Vec<_>>(),
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
    let c = api.auth(&headers, &[Role::Agent, Role::Admin])?;
    id("group", &group)?;
    member_or_admin(&api, &c, &group).await?;
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let messages = api.cs.store().left_messages(&c.tenant, &group, limit).await?;
    ok(json!({ "left_messages": messages }))
}

async fn member_or_admin(api: &CsApi, c: &Claims, group: &str) -> Result<(), ApiError> {
    if c.role == Role::Admin {
        return Ok(());
    }
    let member = api.cs.store().agent(&c.tenant, &c.sub).await?.is_some_and(|a| a.groups.iter().any(|g| g == group));
    if member { Ok(()) } else { Err(fail(ErrorCode::Forbidden, format!("not an agent of group {group}"))) }
}

async fn agent_groups(api: &CsApi, c: &Claims) -> Result<Vec<String>, ApiError> {
    if c.role == Role::Admin {
        return Ok(api.cs.store().groups(&c.tenant).await?.into_iter().map(|g| g.spec.id).collect());
    }
    Ok(api.cs.store().agent(&c.tenant, &c.sub).await?.map(|a| a.groups).unwrap_or_default())
}

async fn list_replies(State(api): State<CsApi>, headers: HeaderMap) -> ApiResult {
    let c = api.auth(&headers, &[Role::Agent, Role::Admin])?;
    let groups = agent_groups(&api, &c).await?;
    let replies = api.cs.store().quick_replies(&c.tenant, &groups, &c.sub).await?;
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

fn check_reply(b: &ReplyBody) -> Result<(), ApiError> {
    if b.title.is_empty() || b.title.len() > MAX_TITLE_BYTES {
        return Err(fail(ErrorCode::InvalidArgument, format!("title must be 1 to {MAX_TITLE_BYTES} bytes")));
    }
    if b.text.is_empty() || b.text.len() > MAX_REPLY_TEXT_BYTES {
        return Err(fail(ErrorCode::InvalidArgument, format!("text must be 1 to {MAX_REPLY_TEXT_BYTES} bytes")));
    }
    if !b.group.is_empty() {
        id("group", &b.group)?;
    }
    Ok(())
}

/// Whether `c` may change `reply`: its owner, an agent of its group, or an admin.
async fn may_edit(api: &CsApi, c: &Claims, reply: &QuickReply) -> Result<(), ApiError> {
    if reply.group.is_empty() {
        if reply.owner == c.sub || c.role == Role::Admin {
            return Ok(());
        }
        return Err(fail(ErrorCode::Forbidden, "a personal quick reply of another agent"));
    }
    member_or_admin(api, c, &reply.group).await
}

/// The quick reply `id`, if `c` may change it.
async fn editable_reply(api: &CsApi, c: &Claims, id: &str) -> Result<QuickReply, ApiError> {
    let reply = api
        .cs
        .store()
        .quick_reply(&c.tenant, id)
        .await?
        .ok_or_else(|| fail(ErrorCode::NotFound, "no such quick reply"))?;
    may_edit(api, c, &reply).await?;
    Ok(reply)
}

fn json_body<T>(body: Result<Json<T>, axum::extract::rejection::JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(b)| b).map_err(|e| fail(ErrorCode::InvalidArgument, e.body_text()))
}

async fn create_reply(
    State(api): State<CsApi>,
    headers: HeaderMap,
    body: Result<Json<ReplyBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult {
    let c = api.auth(&headers, &[Role::Agent, Role::Admin])?;
    let b = json_body(body)?;
    check_reply(&b)?;
    let owner = if b.group.is_empty() { c.sub.clone() } else { String::new() };
    let reply = QuickReply {
        id: im_core::new_msg_id(),
        group: b.group,
        owner,
        title: b.title,
        text: b.text,
        updated_ms: im_core::now_ms(),
    };
    may_edit(&api, &c, &reply).await?;
    let count = api.cs.store().quick_replies(&c.tenant, &agent_groups(&api, &c).await?, &c.sub).await?.len();
    if count >= MAX_QUICK_REPLIES {
        return Err(fail(ErrorCode::Conflict, format!("at most {MAX_QUICK_REPLIES} quick replies")));
    }
    api.cs.store().put_quick_reply(&c.tenant, reply.clone()).await?;
    Ok((StatusCode::CREATED, Json(json!(reply))).into_response())
}

async fn update_reply(
    State(api): State<CsApi>,
    headers: HeaderMap,
    Path(reply_id): Path<String>,
    body: Result<Json<ReplyBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult {
    let c = api.auth(&headers, &[Role::Agent, Role::Admin])?;
    id("id", &reply_id)?;
    let b = json_body(body)?;
    check_reply(&b)?;
    let mut reply = editable_reply(&api, &c, &reply_id).await?;
    if b.group != reply.group {
        return Err(fail(ErrorCode::InvalidArgument, "a quick reply cannot move between groups"));
    }
    reply.title = b.title;
    reply.text = b.text;
    reply.updated_ms = im_core::now_ms();
    api.cs.store().put_quick_reply(&c.tenant, reply.clone()).await?;
    ok(json!(reply))
}

async fn delete_reply(State(api): State<CsApi>, headers: HeaderMap, Path(reply_id): Path<String>) -> ApiResult {
    let c = api.auth(&headers, &[Role::Agent, Role::Admin])?;
    id("id", &reply_id)?;
    editable_reply(&api, &c, &reply_id).await?;
    api.cs.store().delete_quick_reply(&c.tenant, &reply_id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
