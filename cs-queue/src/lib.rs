//! Customer service over the chat backend: customers ask for service in a
//! group, wait in line with live positions, are assigned to agents fairly
//! and atomically, may leave a message, and chat with their agent over the
//! ordinary reliable message path (a service session's chat is the 1:1
//! conversation between the customer and the current agent).
//!
//! The rules live in `cs-core` and the stores in [`storage::cs`]: every
//! state change is one atomic command, which also runs the assignment pass.
//! This crate is the one application layer over them, for the WebSocket
//! frames ([`CsService::handle`], one function per frame) and the HTTP API
//! alike (the caller-based methods in `admin.rs`; the HTTP handlers only
//! map requests to them): it checks roles, permissions and input, runs the
//! commands, answers the caller and notifies the other parties (through the
//! router, on any node), posts the customer's first message when an agent
//! is assigned, and runs the periodic sweep (max wait, agent grace period,
//! presence reconciliation, the queue-length metric).

mod admin;
mod convert;
mod frames;
mod notify;
mod people;
mod reports;

pub use admin::{GroupPatch, MAX_QUICK_REPLIES, MAX_REPLY_TEXT_BYTES, MAX_TITLE_BYTES};
pub use convert::{left_pb, session_pb, status_from_pb, status_pb};
pub use people::{
    DEFAULT_PAST_SESSIONS, Identity, MAX_NOTE_BYTES, MAX_PAST_SESSIONS, MAX_PROFILE_LOOKUP, PastSessions,
    TransferTargets,
};
pub use reports::{AgentFigures, GroupFigures, MAX_REPORT_RANGE_MS, MAX_REPORT_SESSIONS, Mean, Summary};

use dispatch::Dispatcher;
use im_core::ClientError;
use im_core::DeviceKey;
use im_core::pb::{self, frame::Body};
use im_core::{ErrorCode, Role, ids::validate_id};
use session_router::Router;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use storage::cs::{
    AgentStatus, CsCommand, CsError, CsOutcome, CsReply, CsStore, GroupSpec, LeftMessage, QueueSnapshot, Session,
    SessionState, TransferTarget,
};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// `[cs]`: the settings of customer service.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CsConfig {
    /// A disconnected agent keeps their sessions this long.
    #[serde(with = "humantime_serde")]
    pub agent_grace: Duration,
    /// A customer waiting in line who is gone (no connection) this long
    /// leaves the line (checked on the node their last connection closed on).
    #[serde(with = "humantime_serde")]
    pub customer_grace: Duration,
    /// How often max waits and grace periods are checked and the
    /// queue-length metric set; each tenant by one node.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
    /// Cluster backend: ended sessions and claimed left messages are kept
    /// this long in Redis (their messages stay in the history for good).
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Groups created at start-up when they do not exist yet.
    pub groups: Vec<SeedGroup>,
    /// Most left messages listed in one LeftMessageNotice (not a setting).
    #[serde(skip)]
    pub left_notice_limit: usize,
}

impl Default for CsConfig {
    fn default() -> Self {
        Self {
            agent_grace: Duration::from_secs(60),
            customer_grace: Duration::from_secs(120),
            sweep_interval: Duration::from_secs(1),
            retention: Duration::from_secs(30 * 24 * 3600),
            groups: vec![SeedGroup {
                tenant: "demo".into(),
                id: "default".into(),
                name: "Customer service".into(),
                auto_join: true,
                ..SeedGroup::default()
            }],
            left_notice_limit: 50,
        }
    }
}

impl CsConfig {
    pub fn validate(&self) -> Result<(), im_core::InvalidSetting> {
        let invalid = |key: &str, reason: String| Err(im_core::InvalidSetting::new(key, reason));
        if self.sweep_interval < Duration::from_millis(50) {
            return invalid("cs.sweep_interval", "must be at least 50ms".into());
        }
        if self.retention < Duration::from_secs(1) {
            return invalid("cs.retention", "must be at least 1s".into());
        }
        for g in &self.groups {
            if let Err(e) = validate_id("tenant", &g.tenant) {
                return invalid("cs.groups", e);
            }
            let mut spec = g.spec();
            if spec.name.is_empty() {
                spec.name = spec.id.clone();
            }
            if let Err(e) = spec.validate() {
                return invalid("cs.groups", format!("group {:?}: {e}", g.id));
            }
            for a in &g.agents {
                if let Err(e) = validate_id("agent", a) {
                    return invalid("cs.groups", format!("group {:?}: {e}", g.id));
                }
            }
        }
        Ok(())
    }
}

/// A service group created at start-up (`[[cs.groups]]`) if it does not
/// exist yet.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SeedGroup {
    pub tenant: String,
    pub id: String,
    pub name: String,
    pub policy: storage::cs::Policy,
    pub max_queue: u32,
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    /// Every agent of the tenant who goes online joins the group.
    pub auto_join: bool,
    pub default_capacity: u32,
    /// Agents added at start-up (with the default capacity unless they
    /// already have one from another group).
    pub agents: Vec<String>,
}

impl Default for SeedGroup {
    fn default() -> Self {
        let spec = GroupSpec::default();
        Self {
            tenant: String::new(),
            id: String::new(),
            name: spec.name,
            policy: spec.policy,
            max_queue: spec.max_queue,
            max_wait: Duration::from_millis(spec.max_wait_ms),
            auto_join: spec.auto_join,
            default_capacity: spec.default_capacity,
            agents: Vec::new(),
        }
    }
}

impl SeedGroup {
    pub fn spec(&self) -> GroupSpec {
        GroupSpec {
            id: self.id.clone(),
            name: self.name.clone(),
            policy: self.policy,
            max_queue: self.max_queue,
            max_wait_ms: u64::try_from(self.max_wait.as_millis()).unwrap_or(u64::MAX),
            auto_join: self.auto_join,
            default_capacity: self.default_capacity,
        }
    }
}

/// Who sent a request: over a WebSocket connection or the HTTP API.
#[derive(Debug, Clone)]
pub struct Caller {
    pub tenant: String,
    pub user: String,
    pub role: Role,
}

impl Caller {
    pub fn new(tenant: &str, user: &str, role: Role) -> Self {
        Self { tenant: tenant.into(), user: user.into(), role }
    }

    /// The user of a connected device.
    pub fn of_device(device: &DeviceKey, role: Role) -> Self {
        Self::new(&device.tenant, &device.user, role)
    }

    fn tenant(&self) -> &str {
        &self.tenant
    }

    fn user(&self) -> &str {
        &self.user
    }
}

/// Device id the server uses when it posts a customer's first message.
pub const SERVICE_DEVICE: &str = "dongdong-cs";
/// Longest contact field of a left message.
pub const MAX_CONTACT_BYTES: usize = 256;
/// Longest `RequestService.page`.
pub const MAX_PAGE_BYTES: usize = 1024;
/// Longest `RequestService.user_agent`.
pub const MAX_USER_AGENT_BYTES: usize = 512;
/// Longest `TransferSession.note`.
pub const MAX_TRANSFER_NOTE_BYTES: usize = 500;
/// Sweeps between two presence reconciliations.
const RECONCILE_EVERY: u32 = 10;
/// Ended sessions of a member looked at by
/// [`CsService::may_read_conversation`] (newest first).
pub const SESSIONS_LOOKED_AT: usize = 100;

pub struct CsService {
    store: Arc<dyn CsStore>,
    dispatch: Arc<Dispatcher>,
    router: Arc<Router>,
    config: CsConfig,
    /// Each tenant's notifications on their way (see `notify`).
    notices: notify::Notices,
    /// First replies of ended sessions found by the reports.
    first_replies: reports::FirstReplies,
    /// This service, for the tasks it starts.
    me: std::sync::Weak<CsService>,
}

fn err(code: ErrorCode, message: impl Into<String>) -> ClientError {
    ClientError::new(code, message)
}

/// The wire error of a refused command.
pub fn cs_error(e: &CsError) -> ClientError {
    let code = match e {
        CsError::NoSuchGroup | CsError::NoSuchSession | CsError::NoSuchLeftMessage => ErrorCode::NotFound,
        CsError::Forbidden(_) => ErrorCode::Forbidden,
        CsError::Invalid(_) => ErrorCode::InvalidArgument,
        CsError::NoAgentOnline
        | CsError::QueueFull
        | CsError::AgentUnavailable
        | CsError::NobodyWaiting
        | CsError::Conflict(_) => ErrorCode::Conflict,
    };
    err(code, e.to_string())
}

fn require(caller: &Caller, roles: &[Role], what: &str) -> Result<(), ClientError> {
    if roles.contains(&caller.role) {
        return Ok(());
    }
    let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
    Err(err(ErrorCode::Forbidden, format!("{what} needs the role {}", names.join(" or "))))
}

fn invalid(message: String) -> ClientError {
    err(ErrorCode::InvalidArgument, message)
}

fn unexpected() -> ClientError {
    err(ErrorCode::Internal, "unexpected reply")
}

impl CsService {
    /// Starts the service; its sweeper runs until `shutdown`.
    pub fn start(
        store: Arc<dyn CsStore>,
        dispatch: Arc<Dispatcher>,
        router: Arc<Router>,
        config: CsConfig,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let this = Arc::new_cyclic(|me| Self {
            store,
            dispatch,
            router,
            config,
            notices: Default::default(),
            first_replies: Default::default(),
            me: me.clone(),
        });
        tokio::spawn(sweeper(Arc::downgrade(&this), shutdown));
        this
    }

    pub fn store(&self) -> &Arc<dyn CsStore> {
        &self.store
    }

    fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// Runs a command and queues the notifications of what it did.
    pub async fn execute(&self, tenant: &str, command: CsCommand) -> Result<CsOutcome, ClientError> {
        let name = command.name();
        let outcome = self.store.execute(tenant, command, im_core::now_ms()).await?;
        metrics::counter!("dongdong_cs_commands_total", "op" => name, "ok" => if outcome.reply.is_ok() { "true" } else { "false" })
            .increment(1);
        let notify = !outcome.assigned.is_empty()
            || !outcome.transferred.is_empty()
            || !outcome.ended.is_empty()
            || !outcome.timed_out.is_empty()
            || !outcome.queues.is_empty();
        if notify {
            self.queue_notices(tenant, outcome.clone()).await;
        }
        Ok(outcome)
    }

    /// Runs a command for `caller`'s tenant; its refusal becomes the error.
    async fn run(&self, caller: &Caller, command: CsCommand) -> Result<CsReply, ClientError> {
        self.execute(&caller.tenant, command).await?.reply.map_err(|e| cs_error(&e))
    }

    /// Creates a group from the config if it does not exist yet, and adds
    /// `agents` that are not members yet (with the group's default
    /// capacity, or the capacity they already have).
    pub async fn seed(&self, tenant: &str, spec: GroupSpec, agents: &[String]) -> Result<(), ClientError> {
        let group = spec.id.clone();
        if self.store.group_view(tenant, &group).await?.is_none() {
            self.execute(tenant, CsCommand::PutGroup { spec, only: vec![] }).await?.reply.map_err(|e| cs_error(&e))?;
        }
        for agent in agents {
            let known = self.store.agent(tenant, agent).await?.is_some_and(|a| a.groups.contains(&group));
            if !known {
                let c = CsCommand::PutMember { group: group.clone(), agent: agent.clone(), capacity: None };
                self.execute(tenant, c).await?.reply.map_err(|e| cs_error(&e))?;
            }
        }
        Ok(())
    }

    /// An authenticated connection opened.
    pub async fn on_connect(&self, caller: &Caller) {
        if caller.role != Role::Agent {
            return;
        }
        let c = CsCommand::Connected { agent: caller.user().to_string() };
        if let Err(e) = self.execute(caller.tenant(), c).await {
            warn!(error = %e, "could not record the agent's connection");
        }
    }

    /// An authenticated connection closed (after it left presence).
    pub async fn on_disconnect(self: &Arc<Self>, caller: &Caller) {
        if caller.role == Role::Customer {
            self.customer_left(caller);
            return;
        }
        if caller.role != Role::Agent {
            return;
        }
        match self.router().is_connected(caller.tenant(), caller.user()).await {
            Ok(true) => {}
            Ok(false) => {
                let c = CsCommand::Disconnected { agent: caller.user().to_string() };
                if let Err(e) = self.execute(caller.tenant(), c).await {
                    warn!(error = %e, "could not record the agent's disconnection; the sweep will");
                }
            }
            Err(e) => warn!(error = %e, "presence lookup failed; the sweep will reconcile the agent"),
        }
    }

    /// A customer's connection closed: if none is left after the grace
    /// period, the customer leaves the lines they wait in. Only a timer
    /// until then; a node that stops meanwhile leaves them waiting (until
    /// their group's max wait).
    fn customer_left(self: &Arc<Self>, caller: &Caller) {
        // Weak while it waits: a stopping server is not kept from closing
        // its store by a timer.
        let (weak, caller, grace) = (Arc::downgrade(self), caller.clone(), self.config.customer_grace);
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let Some(this) = weak.upgrade() else { return };
            match this.router().is_connected(caller.tenant(), caller.user()).await {
                Ok(false) => {}
                Ok(true) => return,
                Err(e) => return warn!(error = %e, "presence lookup failed; the customer stays in line"),
            }
            let sessions = match this.store.user_sessions(caller.tenant(), caller.user()).await {
                Ok(s) => s,
                Err(e) => return warn!(error = %e, "could not read the customer's sessions"),
            };
            for s in sessions.into_iter().filter(|s| s.state == SessionState::Waiting && s.customer == caller.user) {
                let c = CsCommand::Cancel { customer: caller.user.clone(), group: s.group };
                if let Err(e) = this.execute(caller.tenant(), c).await {
                    warn!(error = %e, "could not take a gone customer out of the line");
                }
            }
        });
    }

    /// The caller's open sessions, waiting positions and agent state.
    pub async fn state(&self, caller: &Caller) -> Result<pb::CsState, ClientError> {
        let tenant = caller.tenant();
        let sessions = self.store.user_sessions(tenant, caller.user()).await?;
        let mut waiting = Vec::new();
        for s in sessions.iter().filter(|s| s.state == SessionState::Waiting && s.customer == caller.user()) {
            if let Some(view) = self.store.group_view(tenant, &s.group).await? {
                waiting.push(queue_update(&view.queue, s));
            }
        }
        let mut state =
            pb::CsState { sessions: sessions.iter().map(session_pb).collect(), waiting, ..Default::default() };
        if let Some(a) = self.store.agent(tenant, caller.user()).await? {
            state.status = status_pb(a.status) as i32;
            state.capacity = a.capacity;
            state.load = a.load;
            state.groups = a.groups;
        }
        Ok(state)
    }

    /// Checks that `who` may read `conversation_id` as a party of the
    /// service session `session_id`.
    pub async fn may_read(&self, who: &Caller, session_id: &str, conversation_id: &str) -> Result<(), ClientError> {
        im_core::ids::validate_uuid("session_id", session_id).map_err(invalid)?;
        let s = self
            .store
            .session(who.tenant(), session_id)
            .await?
            .ok_or_else(|| err(ErrorCode::NotFound, "no such session"))?;
        if !self.reads_session(who, &s, &mut None).await? {
            return Err(err(ErrorCode::Forbidden, "not a party of this session"));
        }
        if !s.conversations.iter().any(|c| c == conversation_id) {
            return Err(err(ErrorCode::Forbidden, "that conversation is not part of this session"));
        }
        Ok(())
    }

    /// Whether `who` may read the service-session conversation between
    /// `members` (`conversation_id`) without being one of them: as a party
    /// of a session it belongs to (an agent it was transferred to, who
    /// must see what came before), as an agent of that session's group
    /// (a colleague reading a customer's past sessions), or as an admin.
    /// Looks at the members' open sessions and their last
    /// [`SESSIONS_LOOKED_AT`] ended ones.
    pub async fn may_read_conversation(
        &self,
        who: &Caller,
        conversation_id: &str,
        members: &[String],
    ) -> Result<bool, ClientError> {
        if who.role == Role::Admin {
            return Ok(true);
        }
        if who.role != Role::Agent {
            return Ok(false);
        }
        let tenant = who.tenant();
        let mut groups = None;
        for member in members.iter().filter(|m| *m != who.user()) {
            let mut sessions = self.store.user_sessions(tenant, member).await?;
            sessions.extend(self.store.past_sessions(tenant, member, 0, SESSIONS_LOOKED_AT).await?);
            for s in sessions.iter().filter(|s| s.conversations.iter().any(|c| c == conversation_id)) {
                if self.reads_session(who, s, &mut groups).await? {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Whether `who` may read session `s`: an admin, a party of it, or an
    /// agent of its group (a customer's past sessions with colleagues).
    /// `groups` keeps the agent's groups across calls (looked up once).
    async fn reads_session(
        &self,
        who: &Caller,
        s: &Session,
        groups: &mut Option<Vec<String>>,
    ) -> Result<bool, ClientError> {
        if who.role == Role::Admin || s.parties().contains(&who.user()) {
            return Ok(true);
        }
        if who.role != Role::Agent {
            return Ok(false);
        }
        if groups.is_none() {
            *groups = Some(self.store.agent(who.tenant(), who.user()).await?.map(|a| a.groups).unwrap_or_default());
        }
        Ok(groups.as_ref().is_some_and(|g| g.contains(&s.group)))
    }

    /// Sets `agent`'s status (run by `caller`: the agent, or an admin for
    /// them) and answers their new `CsState`; going online also brings the
    /// unclaimed left messages of their groups.
    async fn apply_status(
        &self,
        caller: &Caller,
        agent: &str,
        status: AgentStatus,
    ) -> Result<pb::CsState, ClientError> {
        self.run(caller, CsCommand::SetStatus { agent: agent.to_string(), status }).await?;
        let state = self.state(&Caller::new(caller.tenant(), agent, Role::Agent)).await?;
        if status == AgentStatus::Online {
            self.send_left_messages(caller.tenant(), agent, &state.groups).await?;
        }
        Ok(state)
    }

    async fn send_left_messages(&self, tenant: &str, agent: &str, groups: &[String]) -> Result<(), ClientError> {
        let mut all = Vec::new();
        for g in groups {
            all.extend(self.store.left_messages(tenant, g, self.config.left_notice_limit).await?);
        }
        if all.is_empty() {
            return Ok(());
        }
        all.sort_by_key(|m| m.created_ms);
        all.truncate(self.config.left_notice_limit);
        let frame = notice_frame(&all);
        self.router().notify(tenant, agent, frame).await;
        Ok(())
    }

    /// Tells the connected agents of `group` about new left messages.
    async fn notify_group_agents(
        &self,
        tenant: &str,
        group: &str,
        messages: Vec<LeftMessage>,
    ) -> Result<(), ClientError> {
        let Some(view) = self.store.group_view(tenant, group).await? else { return Ok(()) };
        let frame = notice_frame(&messages);
        for a in view.agents.iter().filter(|a| a.connected && a.status != AgentStatus::Offline) {
            self.router().notify(tenant, &a.id, frame.clone()).await;
        }
        Ok(())
    }

    /// Posts a claimed left message into the conversation of its customer
    /// and the claiming agent, as the customer's message (once: its
    /// client_msg_id is derived from the left message), so both see the
    /// question above the answer. A failure fails the claim's answer; the
    /// agent claims again (idempotent) to retry.
    async fn post_left_message(&self, tenant: &str, m: &LeftMessage) -> Result<(), ClientError> {
        let sender = DeviceKey::new(tenant, &m.customer, SERVICE_DEVICE);
        let send = pb::Send {
            client_msg_id: format!("cs-left-{}", m.id),
            to_user: m.claimed_by.clone(),
            content: Some(m.content.clone()),
        };
        self.dispatch.send(&sender, send).await.map(|_| ())
    }

    /// Sweeps the tenants this node is responsible for (all of them on one
    /// node; in a cluster those whose sweep lease it holds) and sets their
    /// queue-length gauges from the sweep's authoritative snapshot.
    /// `published` holds the (tenant, groups) whose gauges this node set
    /// last time: those it no longer sweeps (the lease moved, the group was
    /// deleted) are set to 0, so the sum over nodes stays right.
    async fn sweep(&self, published: &mut HashMap<String, Vec<String>>, reconciled: &mut HashMap<String, Instant>) {
        let lease = (self.config.sweep_interval * 3).max(Duration::from_secs(1));
        let reconcile_every = self.config.sweep_interval * RECONCILE_EVERY;
        let tenants = match self.store.sweep_tenants(self.router().node_id(), lease).await {
            Ok(t) => t,
            Err(e) => {
                warn!(error = %e, "cs sweep: cannot list tenants");
                return;
            }
        };
        let grace_ms = u64::try_from(self.config.agent_grace.as_millis()).unwrap_or(u64::MAX);
        let mut now_published = HashMap::with_capacity(tenants.len());
        let mut now_reconciled = HashMap::with_capacity(tenants.len());
        for tenant in tenants {
            let started = Instant::now();
            match reconciled.remove(&tenant).filter(|at| started.duration_since(*at) < reconcile_every) {
                Some(at) => now_reconciled.insert(tenant.clone(), at),
                None => {
                    self.reconcile(&tenant).await;
                    now_reconciled.insert(tenant.clone(), started)
                }
            };
            match self.execute(&tenant, CsCommand::Sweep { grace_ms }).await {
                Ok(outcome) => {
                    let mut groups = Vec::with_capacity(outcome.queues.len());
                    for q in &outcome.queues {
                        queue_gauge(&tenant, &q.group).set(q.waiting.len() as f64);
                        groups.push(q.group.clone());
                    }
                    now_published.insert(tenant.clone(), groups);
                    let next = self.next_sweep(&outcome.reply, reconcile_every);
                    if let Err(e) = self.store.swept(&tenant, outcome.version, next).await {
                        warn!(error = %e, tenant, "cs sweep: cannot record when the tenant is next due");
                    }
                }
                Err(e) => {
                    warn!(error = %e, tenant, "cs sweep failed");
                    if let Some(groups) = published.remove(&tenant) {
                        now_published.insert(tenant, groups);
                    }
                }
            }
        }
        for (tenant, groups) in published.drain() {
            let still = now_published.get(&tenant);
            for g in groups.iter().filter(|g| !still.is_some_and(|now| now.contains(g))) {
                queue_gauge(&tenant, g).set(0.0);
            }
        }
        *published = now_published;
        *reconciled = now_reconciled;
    }

    /// When a swept tenant next needs a sweep (ms), if before its next
    /// command: its next timed rule; every interval while customers wait
    /// (the queue-length gauge is the sweeping node's); and while agents
    /// are connected, in time to reconcile them (their node may die).
    fn next_sweep(&self, reply: &Result<CsReply, storage::cs::CsError>, reconcile_every: Duration) -> Option<u64> {
        // Due half an interval early, so that the tick it is meant for
        // (which started before this sweep) finds it due.
        let now = im_core::now_ms();
        let slack = self.config.sweep_interval / 2;
        let after = |d: Duration| now.saturating_add(u64::try_from((d - slack).as_millis()).unwrap_or(u64::MAX));
        let Ok(CsReply::Swept { next_due_ms, waiting, agents_connected }) = reply else {
            return Some(after(self.config.sweep_interval));
        };
        [
            (*next_due_ms > 0).then_some(*next_due_ms),
            waiting.then(|| after(self.config.sweep_interval)),
            agents_connected.then(|| after(reconcile_every)),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Agents recorded as connected whose connections are all gone (their
    /// node died) are marked disconnected, which starts their grace period.
    async fn reconcile(&self, tenant: &str) {
        let Ok(groups) = self.store.groups(tenant).await else { return };
        let mut agents: Vec<String> = groups.into_iter().flat_map(|g| g.members).collect();
        agents.sort();
        agents.dedup();
        for agent in agents {
            let connected = self.store.agent(tenant, &agent).await.ok().flatten().is_some_and(|a| a.connected);
            if connected && matches!(self.router().is_connected(tenant, &agent).await, Ok(false)) {
                let _ = self.execute(tenant, CsCommand::Disconnected { agent }).await;
            }
        }
    }
}

/// Customers waiting in a group's queue, as of the tenant's last sweep.
fn queue_gauge(tenant: &str, group: &str) -> metrics::Gauge {
    metrics::gauge!("dongdong_cs_queue_length", "tenant" => tenant.to_string(), "group" => group.to_string())
}

fn event(body: Body) -> Arc<pb::Frame> {
    Arc::new(pb::Frame { req_id: 0, body: Some(body) })
}

fn notice_frame(messages: &[LeftMessage]) -> Arc<pb::Frame> {
    event(Body::LeftMessageNotice(pb::LeftMessageNotice {
        left_messages: messages.iter().map(convert::left_pb).collect(),
    }))
}

fn queue_update(q: &QueueSnapshot, s: &Session) -> pb::QueueUpdate {
    let position =
        q.waiting.iter().position(|(id, _)| id == &s.id).map_or(0, |i| u32::try_from(i + 1).unwrap_or(u32::MAX));
    pb::QueueUpdate {
        session_id: s.id.clone(),
        group: s.group.clone(),
        position,
        estimated_wait_s: q.estimated_wait_s(position),
    }
}

async fn sweeper(service: std::sync::Weak<CsService>, shutdown: CancellationToken) {
    let Some(interval) = service.upgrade().map(|s| s.config.sweep_interval) else { return };
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(50)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut published, mut reconciled) = (HashMap::new(), HashMap::new());
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => break,
        }
        let Some(service) = service.upgrade() else { break };
        service.sweep(&mut published, &mut reconciled).await;
    }
}
