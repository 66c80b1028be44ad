//! The rules of the customer-service queue, without I/O: service groups,
//! agents with capacity and status, the waiting queues, service sessions,
//! left messages and quick replies.
//!
//! Every change of the queue state is one [`CsCommand`], executed
//! atomically by a store (`storage::cs::CsStore`). Each command that can
//! free an agent or add a customer ends with the assignment pass inside the
//! same atomic step, so a customer and an agent are never matched twice and
//! no agent goes over capacity, whatever the number of nodes.
//!
//! The rules exist in two languages, side by side in this crate:
//! [`engine`] in Rust (the embedded backend runs it on its in-memory state)
//! and [`LUA_SCRIPT`] (the cluster backend runs it inside Redis, so that
//! any number of nodes share one atomic state). They must agree on every
//! outcome and every view: `storage`'s differential property test runs
//! random command sequences through both, step by step, against a real
//! Redis. [`testing`] holds the command generator both test suites use.
//!
//! Order is deterministic on both sides. The assignment pass serves the
//! queue head that joined earliest; ties go to the lower group id, then the
//! lower session id. Everything else that walks several groups or agents
//! (the sweep, auto-join) walks them in id order.

pub mod engine;
pub mod testing;

use im_core::pb::Content;
use serde::{Deserialize, Serialize};

/// The same rules as [`engine`], as one Redis Lua script per command (the
/// cluster backend runs it; `storage`'s differential test holds the two
/// together).
pub const LUA_SCRIPT: &str = include_str!("cs.lua");

/// How a group hands waiting customers to its agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// The available agent with the fewest open sessions; ties go to the one
    /// whose last assignment is oldest.
    #[default]
    LeastLoaded,
    /// Available agents in turn, in agent id order.
    RoundRobin,
    /// Nobody is assigned automatically: agents pick with `AcceptSession`.
    ManualPick,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::LeastLoaded => "least-loaded",
            Policy::RoundRobin => "round-robin",
            Policy::ManualPick => "manual-pick",
        }
    }
}

/// What an agent said they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentStatus {
    /// Takes new sessions (when connected and below capacity).
    Online,
    /// Keeps open sessions, takes no new ones.
    Away,
    /// Takes nothing; signing off puts open sessions back in the queue.
    #[default]
    Offline,
}

/// A group's settings, as the admin API sets them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GroupSpec {
    pub id: String,
    /// Display name; defaults to the id.
    pub name: String,
    pub policy: Policy,
    /// Most customers waiting at once; more are offered leave-a-message.
    pub max_queue: u32,
    /// Longest wait before the customer is offered leave-a-message, in ms.
    pub max_wait_ms: u64,
    /// Every agent of the tenant who goes online joins this group.
    pub auto_join: bool,
    /// Capacity given to agents who join without one.
    pub default_capacity: u32,
}

impl Default for GroupSpec {
    fn default() -> Self {
        Self {
            id: String::new(),
            name: String::new(),
            policy: Policy::LeastLoaded,
            max_queue: 100,
            max_wait_ms: 10 * 60 * 1000,
            auto_join: false,
            default_capacity: 5,
        }
    }
}

/// Largest `max_queue` a group may have.
pub const MAX_QUEUE_LIMIT: u32 = 10_000;
/// Largest agent capacity.
pub const MAX_CAPACITY: u32 = 1_000;

impl GroupSpec {
    /// Checks the settings; the error names the bad field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        im_core::ids::validate_id("group id", &self.id)?;
        if self.name.len() > 256 {
            return Err("name is longer than 256 bytes".into());
        }
        if self.max_queue == 0 || self.max_queue > MAX_QUEUE_LIMIT {
            return Err(format!("max_queue must be between 1 and {MAX_QUEUE_LIMIT}"));
        }
        if !(1000..=MAX_WAIT_LIMIT_MS).contains(&self.max_wait_ms) {
            return Err("max_wait must be between 1s and 30 days".into());
        }
        if self.default_capacity == 0 || self.default_capacity > MAX_CAPACITY {
            return Err(format!("default_capacity must be between 1 and {MAX_CAPACITY}"));
        }
        Ok(())
    }
}

/// A settable field of [`GroupSpec`] (named as it is serialized).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupField {
    Name,
    Policy,
    MaxQueue,
    MaxWaitMs,
    AutoJoin,
    DefaultCapacity,
}

impl GroupSpec {
    /// Sets `field` of `self` to its value in `from`.
    pub fn take_field(&mut self, from: &GroupSpec, field: GroupField) {
        match field {
            GroupField::Name => self.name.clone_from(&from.name),
            GroupField::Policy => self.policy = from.policy,
            GroupField::MaxQueue => self.max_queue = from.max_queue,
            GroupField::MaxWaitMs => self.max_wait_ms = from.max_wait_ms,
            GroupField::AutoJoin => self.auto_join = from.auto_join,
            GroupField::DefaultCapacity => self.default_capacity = from.default_capacity,
        }
    }
}

/// Longest `max_wait` a group may have (due times stay exact in the Lua
/// copy's JSON).
pub const MAX_WAIT_LIMIT_MS: u64 = 30 * 24 * 3600 * 1000;

/// A group with its members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    #[serde(flatten)]
    pub spec: GroupSpec,
    /// Agent ids, sorted.
    #[serde(default)]
    pub members: Vec<String>,
    /// Running mean of recent handle times (assignment to end or transfer), ms.
    pub avg_handle_ms: u64,
    /// The agent who got the last round-robin assignment.
    pub rr_last: String,
}

/// An agent's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agent {
    pub id: String,
    pub capacity: u32,
    pub status: AgentStatus,
    /// At least one connection of the agent is open.
    pub connected: bool,
    /// When the last connection closed, while not connected (ms since the epoch).
    pub disconnected_ms: u64,
    /// Open (assigned, not ended) sessions.
    pub load: u32,
    /// When the agent was last given a session (ms); 0 if never.
    pub last_assigned_ms: u64,
    /// Groups the agent belongs to, sorted.
    #[serde(default)]
    pub groups: Vec<String>,
}

impl Session {
    /// Everyone who took part: the customer, the agents before the current
    /// one and the current one, each once (whose past sessions it is).
    pub fn parties(&self) -> Vec<&str> {
        let mut out = vec![self.customer.as_str()];
        for a in self.previous_agents.iter().chain(std::iter::once(&self.agent)) {
            if !a.is_empty() && !out.contains(&a.as_str()) {
                out.push(a);
            }
        }
        out
    }

    /// Sets `conversation_id` and `conversations` from the agents: one
    /// conversation per agent who held the session, in order.
    pub fn derive_conversations(&mut self, tenant: &str) {
        self.conversation_id = if self.agent.is_empty() {
            String::new()
        } else {
            im_core::conversation_id(tenant, &self.customer, &self.agent)
        };
        self.conversations.clear();
        for agent in self.previous_agents.iter().chain(std::iter::once(&self.agent)) {
            if agent.is_empty() {
                continue;
            }
            let c = im_core::conversation_id(tenant, &self.customer, agent);
            if self.conversations.last() != Some(&c) {
                self.conversations.push(c);
            }
        }
    }
}

impl Agent {
    pub fn new(id: &str, capacity: u32) -> Self {
        Self {
            id: id.into(),
            capacity,
            status: AgentStatus::Offline,
            connected: false,
            disconnected_ms: 0,
            load: 0,
            last_assigned_ms: 0,
            groups: Vec::new(),
        }
    }

    /// Connected and online: counts as staffing the groups (whatever the load).
    pub fn online(&self) -> bool {
        self.connected && self.status == AgentStatus::Online
    }

    /// Takes a new session now.
    pub fn available(&self) -> bool {
        self.online() && self.load < self.capacity
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    Waiting,
    Active,
    Ended,
}

/// One customer's request for service, from the request to its end. Its
/// chat is the conversation between the customer and the current agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub id: String,
    pub group: String,
    pub customer: String,
    /// The current agent; empty while waiting.
    pub agent: String,
    /// The conversation with the current agent; empty while waiting.
    pub conversation_id: String,
    /// Every conversation the session had, oldest first (one per agent).
    #[serde(default)]
    pub conversations: Vec<String>,
    pub state: SessionState,
    pub created_ms: u64,
    /// When it last joined a queue.
    pub queued_ms: u64,
    /// When its current agent got it.
    pub assigned_ms: u64,
    /// When its first agent got it; 0 while it never had one.
    #[serde(default)]
    pub first_assigned_ms: u64,
    pub ended_ms: u64,
    /// Who ended it: a user id, or empty when the server did.
    pub ended_by: String,
    pub end_reason: String,
    /// 1-5 once rated, else 0.
    pub score: u32,
    pub comment: String,
    /// The customer's first message, posted to the agent on assignment.
    pub first_message: Option<Content>,
    /// Position key in the group's queue while waiting (lower is earlier).
    pub queue_key: i64,
    /// Agents who had it before the current one, oldest first.
    #[serde(default)]
    pub previous_agents: Vec<String>,
    /// Where the customer asked from.
    #[serde(default)]
    pub context: SessionContext,
    /// The note of the last transfer, for the agent who took it over.
    #[serde(default)]
    pub transfer_note: String,
}

/// Where a customer asked for service from, as their client reports it:
/// shown to the agent, never interpreted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionContext {
    /// The page the chat was opened on (the widget's `location.href`).
    #[serde(default)]
    pub page: String,
    #[serde(default)]
    pub user_agent: String,
}

/// A message left for a group when nobody could take the customer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeftMessage {
    pub id: String,
    pub group: String,
    pub customer: String,
    pub content: Content,
    pub contact: String,
    pub created_ms: u64,
    /// The agent answering it; empty while unclaimed.
    pub claimed_by: String,
    pub claimed_ms: u64,
}

/// What a user is called and, for customers, what agents noted about them.
/// The identity comes from the optional `name` and `avatar` claims of the
/// user's token, recorded when they connect with one; the note is written
/// by agents.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    pub user: String,
    /// The role of the token the identity came from.
    #[serde(default)]
    pub role: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub avatar: String,
    /// The agents' private note about this customer.
    #[serde(default)]
    pub note: String,
    #[serde(default)]
    pub note_by: String,
    #[serde(default)]
    pub note_ms: u64,
}

/// A change to a [`Profile`]: the identity and the note are written by
/// different people at different times and never overwrite each other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProfileUpdate {
    Identity { role: String, name: String, avatar: String },
    Note { note: String, by: String, at_ms: u64 },
}

impl Profile {
    /// Applies `update`; whether anything changed.
    pub fn apply(&mut self, update: &ProfileUpdate) -> bool {
        let before = self.clone();
        match update {
            ProfileUpdate::Identity { role, name, avatar } => {
                (self.role, self.name, self.avatar) = (role.clone(), name.clone(), avatar.clone());
            }
            ProfileUpdate::Note { note, by, at_ms } => {
                (self.note, self.note_by, self.note_ms) = (note.clone(), by.clone(), *at_ms);
            }
        }
        *self != before
    }

    /// The fields `update` sets, as (name, value) pairs of the record.
    pub fn fields(update: &ProfileUpdate) -> Vec<(&'static str, String)> {
        match update {
            ProfileUpdate::Identity { role, name, avatar } => {
                vec![("role", role.clone()), ("name", name.clone()), ("avatar", avatar.clone())]
            }
            ProfileUpdate::Note { note, by, at_ms } => {
                vec![("note", note.clone()), ("note_by", by.clone()), ("note_ms", at_ms.to_string())]
            }
        }
    }
}

/// A canned reply: of a group (shared by its agents) or of one agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuickReply {
    pub id: String,
    /// The group it belongs to, or empty for a personal reply.
    pub group: String,
    /// The agent it belongs to, or empty for a group reply.
    pub owner: String,
    pub title: String,
    pub text: String,
    pub updated_ms: u64,
}

impl QuickReply {
    /// The replies of `groups` plus the personal ones of `owner`, by group,
    /// title and id.
    pub fn visible(all: Vec<QuickReply>, groups: &[String], owner: &str) -> Vec<QuickReply> {
        let mut out: Vec<QuickReply> = all
            .into_iter()
            .filter(|r| if r.group.is_empty() { r.owner == owner } else { groups.contains(&r.group) })
            .collect();
        out.sort_by(|a, b| (&a.group, &a.title, &a.id).cmp(&(&b.group, &b.title, &b.id)));
        out
    }
}

/// Where a session is transferred.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferTarget {
    Agent(String),
    Group(String),
}

/// One atomic change of customer-service state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum CsCommand {
    /// Creates or updates a group's settings; members are kept. With
    /// `only`, an existing group takes just those fields of `spec` and
    /// keeps the others, in the same atomic step (two admins changing
    /// different fields at once both stick); a new group takes all of it.
    PutGroup {
        spec: GroupSpec,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        only: Vec<GroupField>,
    },
    /// Deletes a group nobody waits in and no open session belongs to.
    DeleteGroup { group: String },
    /// Adds `agent` to `group` (or updates it) with `capacity`, which applies
    /// to the agent in all groups. Without one, an agent who is in a group
    /// keeps their capacity; a new one gets the group's default.
    PutMember { group: String, agent: String, capacity: Option<u32> },
    /// Removes `agent` from `group`; open sessions stay with the agent.
    RemoveMember { group: String, agent: String },
    /// A customer asks for service in a group. `session_id` is used if a new
    /// session is created. Asking again while waiting or served returns the
    /// existing session.
    Request {
        customer: String,
        group: String,
        session_id: String,
        first_message: Option<Content>,
        #[serde(default)]
        context: SessionContext,
    },
    /// A waiting customer leaves the queue.
    Cancel { customer: String, group: String },
    /// An agent sets their status (joining auto-join groups on `Online`).
    SetStatus { agent: String, status: AgentStatus },
    /// An agent's first connection opened.
    Connected { agent: String },
    /// An agent's last connection closed.
    Disconnected { agent: String },
    /// An agent of a manual-pick (or any) group takes a waiting customer: the
    /// given one, or the head of the queue.
    Accept { agent: String, group: String, customer: Option<String> },
    /// `by` (the session's agent, or an admin when `admin`) moves a session.
    Transfer {
        session_id: String,
        by: String,
        admin: bool,
        target: TransferTarget,
        /// For the next agent; replaces the session's `transfer_note`.
        #[serde(default)]
        note: String,
    },
    /// `by` (its customer or agent, or an admin) ends a session.
    End { session_id: String, by: String, admin: bool },
    /// The customer rates an ended session, once.
    Rate { session_id: String, customer: String, score: u32, comment: String },
    /// Stores a left message.
    LeaveMessage { message: LeftMessage },
    /// An agent of the message's group claims it, once.
    Claim { id: String, agent: String },
    /// Maintenance, run periodically by the node that sweeps the tenant:
    /// waiting customers past their group's max wait are turned away;
    /// agents disconnected for longer than `grace_ms` go offline and their
    /// sessions are queued again. Its outcome lists every group's queue
    /// (those that did not change with `changed_from` at their end).
    Sweep { grace_ms: u64 },
}

impl CsCommand {
    /// Checks what needs no state (both backends run it first) and fills
    /// defaults.
    pub fn precheck(&mut self) -> std::result::Result<(), CsError> {
        if let CsCommand::PutGroup { spec, .. } = self {
            if spec.name.is_empty() {
                spec.name = spec.id.clone();
            }
            spec.validate().map_err(CsError::Invalid)?;
        }
        Ok(())
    }

    /// Short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            CsCommand::PutGroup { .. } => "put_group",
            CsCommand::DeleteGroup { .. } => "delete_group",
            CsCommand::PutMember { .. } => "put_member",
            CsCommand::RemoveMember { .. } => "remove_member",
            CsCommand::Request { .. } => "request",
            CsCommand::Cancel { .. } => "cancel",
            CsCommand::SetStatus { .. } => "set_status",
            CsCommand::Connected { .. } => "connected",
            CsCommand::Disconnected { .. } => "disconnected",
            CsCommand::Accept { .. } => "accept",
            CsCommand::Transfer { .. } => "transfer",
            CsCommand::End { .. } => "end",
            CsCommand::Rate { .. } => "rate",
            CsCommand::LeaveMessage { .. } => "leave_message",
            CsCommand::Claim { .. } => "claim",
            CsCommand::Sweep { .. } => "sweep",
        }
    }
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case", tag = "error", content = "detail")]
pub enum CsError {
    #[error("no such group")]
    NoSuchGroup,
    #[error("no agent of the group is online")]
    NoAgentOnline,
    #[error("the queue is full")]
    QueueFull,
    #[error("no such session")]
    NoSuchSession,
    #[error("no such left message")]
    NoSuchLeftMessage,
    #[error("not allowed: {0}")]
    Forbidden(String),
    #[error("the agent cannot take a session now")]
    AgentUnavailable,
    #[error("nobody is waiting")]
    NobodyWaiting,
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
}

/// What a command answers its caller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
#[allow(clippy::large_enum_variant)] // One per command, moved once: boxing buys nothing.
pub enum CsReply {
    /// The request's session: waiting (with its 1-based position) or active.
    Session {
        session: Session,
        position: u32,
    },
    Group {
        group: Group,
    },
    Agent {
        agent: Agent,
    },
    LeftMessage {
        message: LeftMessage,
    },
    Done,
    /// A sweep's answer: when the tenant next has a timed rule due (the
    /// earliest max wait of a waiting customer or end of an agent's grace
    /// period; 0: none), whether customers are waiting, and whether agents
    /// are connected (their nodes may die: they are reconciled now and then).
    Swept {
        next_due_ms: u64,
        waiting: bool,
        agents_connected: bool,
    },
}

/// A session moved away from an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transferred {
    /// The session after the move (waiting when moved to a group).
    pub session: Session,
    pub from_agent: String,
    pub from_group: String,
    /// Why: "transfer", "agent offline", "agent disconnected".
    pub reason: String,
}

/// A group's queue after a change, for position updates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    pub group: String,
    /// Waiting (session id, customer) in queue order.
    #[serde(default)]
    pub waiting: Vec<(String, String)>,
    /// Entries from this index on moved (or are new).
    pub changed_from: usize,
    pub avg_handle_ms: u64,
    /// Free session slots of the group's agents who are online and connected.
    pub free_capacity: u32,
    /// Total capacity of those agents.
    pub online_capacity: u32,
}

impl QueueSnapshot {
    /// The queue of `group`: `waiting` (session id, customer) in order, the
    /// group's average handle time (0 before any session ended) and its
    /// members' records.
    pub fn new<'a>(
        group: &str,
        waiting: Vec<(String, String)>,
        changed_from: usize,
        avg_handle_ms: u64,
        members: impl IntoIterator<Item = &'a Agent>,
    ) -> Self {
        let (mut free, mut online) = (0u32, 0u32);
        for a in members.into_iter().filter(|a| a.online()) {
            online = online.saturating_add(a.capacity);
            free = free.saturating_add(a.capacity.saturating_sub(a.load));
        }
        Self {
            group: group.into(),
            waiting,
            changed_from,
            avg_handle_ms: if avg_handle_ms == 0 { engine::DEFAULT_HANDLE_MS } else { avg_handle_ms },
            free_capacity: free,
            online_capacity: online,
        }
    }

    /// Expected wait of the customer at 1-based `position`, in seconds: the
    /// sessions ahead divided by how many agents' slots turn over per
    /// average handle time.
    pub fn estimated_wait_s(&self, position: u32) -> u32 {
        if position == 0 {
            return 0;
        }
        let ahead = u64::from(position).saturating_sub(u64::from(self.free_capacity));
        if ahead == 0 {
            return 0;
        }
        let per_slot = self.avg_handle_ms.max(1000);
        let slots = u64::from(self.online_capacity.max(1));
        u32::try_from(ahead.saturating_mul(per_slot).div_ceil(slots) / 1000).unwrap_or(u32::MAX)
    }
}

/// Everything a command did, for notifications and metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CsOutcome {
    /// The tenant's count of commands run, this one included: a later
    /// command's outcome has a larger one, whatever order the outcomes reach
    /// the notifier in (0 for a command refused before it ran).
    pub version: u64,
    pub reply: std::result::Result<CsReply, CsError>,
    /// Sessions that got an agent (new, requeued or transferred to an agent).
    #[serde(default)]
    pub assigned: Vec<Session>,
    /// Sessions moved away from an agent.
    #[serde(default)]
    pub transferred: Vec<Transferred>,
    /// Sessions that ended (also waiting ones turned away or cancelled).
    #[serde(default)]
    pub ended: Vec<Session>,
    /// Customers turned away past max wait: (group, customer).
    #[serde(default)]
    pub timed_out: Vec<(String, String)>,
    /// Queues whose positions changed.
    #[serde(default)]
    pub queues: Vec<QueueSnapshot>,
}

impl CsOutcome {
    pub fn refused(e: CsError) -> Self {
        Self {
            version: 0,
            reply: Err(e),
            assigned: vec![],
            transferred: vec![],
            ended: vec![],
            timed_out: vec![],
            queues: vec![],
        }
    }
}

/// A group's live state for supervisors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupView {
    pub group: Group,
    #[serde(default)]
    pub agents: Vec<Agent>,
    pub queue: QueueSnapshot,
    /// Waiting sessions in queue order.
    #[serde(default)]
    pub waiting: Vec<Session>,
    #[serde(default)]
    pub active: Vec<Session>,
}
