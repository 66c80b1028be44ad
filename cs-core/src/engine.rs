//! The rules of the customer-service queue as a pure state machine over one
//! tenant's state: [`TenantState::apply`] runs a [`CsCommand`] and then the
//! assignment pass, and reports what changed. No I/O and no clock: the
//! caller passes `now`, persists the records [`TenantState::take_dirty`]
//! names, and holds whatever lock makes the call atomic.
//!
//! Assignment: while some group that assigns automatically has a waiting
//! customer and an available agent, the head of the queue whose head joined
//! it earliest goes to the agent its policy chooses. A group's queue is
//! strictly first in, first out (transfers and requeues go to the front).

use super::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Mean handle time assumed before any session of a group has ended.
pub const DEFAULT_HANDLE_MS: u64 = 180_000;
/// Most unclaimed left messages kept per tenant.
pub const MAX_LEFT_UNCLAIMED: usize = 10_000;
/// Longest rating comment, in bytes.
pub const MAX_COMMENT_BYTES: usize = 1000;

/// A record that changed and must be persisted.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dirty {
    Group(String),
    Agent(String),
    Session(String),
    LeftMessage(String),
}

/// A finished record a command needs, by id (see [`TenantState::wanted`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wanted {
    Session(String),
    LeftMessage(String),
}

/// A finished record loaded for [`TenantState::restore`].
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // One at a time, moved once: boxing buys nothing.
pub enum Restored {
    Session(Session),
    LeftMessage(LeftMessage),
}

/// Chooses the agent for the next customer of a group among its members
/// (in id order) with `policy`; `rr_last` is the member chosen last time
/// by round-robin. `None` when nobody is available or the group is manual.
pub fn choose_agent<'a>(policy: Policy, members: &[&'a Agent], rr_last: &str) -> Option<&'a Agent> {
    let available = members.iter().copied().filter(|a| a.available());
    match policy {
        Policy::ManualPick => None,
        Policy::LeastLoaded => available.min_by(|a, b| {
            (a.load, a.last_assigned_ms, a.id.as_str()).cmp(&(b.load, b.last_assigned_ms, b.id.as_str()))
        }),
        Policy::RoundRobin => {
            let all: Vec<&Agent> = available.collect();
            all.iter().copied().find(|a| a.id.as_str() > rr_last).or_else(|| all.first().copied())
        }
    }
}

/// One tenant's customer-service state.
#[derive(Debug, Clone, Default)]
pub struct TenantState {
    pub tenant: String,
    pub groups: BTreeMap<String, Group>,
    pub agents: BTreeMap<String, Agent>,
    /// Waiting and active sessions, plus sessions ended or loaded by the last
    /// command until [`TenantState::evict_finished`].
    pub sessions: HashMap<String, Session>,
    /// Unclaimed left messages, plus ones claimed by the last command until
    /// [`TenantState::evict_finished`].
    pub left: BTreeMap<String, LeftMessage>,
    /// Commands run (see [`CsOutcome::version`]). Not stored: a store that
    /// reloads a tenant carries it over.
    pub version: u64,
    queues: BTreeMap<String, BTreeMap<i64, String>>,
    by_customer: BTreeMap<(String, String), String>,
    dirty: BTreeSet<Dirty>,
}

/// What one command did, collected while it runs.
#[derive(Default)]
struct Effects {
    assigned: Vec<Session>,
    transferred: Vec<Transferred>,
    ended: Vec<Session>,
    timed_out: Vec<(String, String)>,
    /// Group -> lowest queue index that changed.
    queue_changes: BTreeMap<String, usize>,
}

impl TenantState {
    pub fn new(tenant: &str) -> Self {
        Self { tenant: tenant.into(), ..Self::default() }
    }

    /// Rebuilds the state from stored records (waiting and active sessions,
    /// unclaimed left messages).
    pub fn from_records(
        tenant: &str,
        groups: impl IntoIterator<Item = Group>,
        agents: impl IntoIterator<Item = Agent>,
        sessions: impl IntoIterator<Item = Session>,
        left: impl IntoIterator<Item = LeftMessage>,
    ) -> Self {
        let mut s = Self::new(tenant);
        s.groups = groups.into_iter().map(|g| (g.spec.id.clone(), g)).collect();
        s.agents = agents.into_iter().map(|a| (a.id.clone(), a)).collect();
        for session in sessions {
            if session.state == SessionState::Ended {
                continue;
            }
            if session.state == SessionState::Waiting {
                s.queues.entry(session.group.clone()).or_default().insert(session.queue_key, session.id.clone());
            }
            s.by_customer.insert((session.customer.clone(), session.group.clone()), session.id.clone());
            s.sessions.insert(session.id.clone(), session);
        }
        s.left = left.into_iter().filter(|m| m.claimed_by.is_empty()).map(|m| (m.id.clone(), m)).collect();
        s
    }

    /// The records changed since the last call.
    pub fn take_dirty(&mut self) -> BTreeSet<Dirty> {
        std::mem::take(&mut self.dirty)
    }

    /// Drops ended sessions and claimed left messages from memory (after
    /// they were persisted).
    pub fn evict_finished(&mut self) {
        self.sessions.retain(|_, s| s.state != SessionState::Ended);
        self.left.retain(|_, m| m.claimed_by.is_empty());
    }

    /// Waiting sessions of `group` in queue order.
    pub fn waiting(&self, group: &str) -> Vec<&Session> {
        self.queues.get(group).map(|q| q.values().filter_map(|id| self.sessions.get(id)).collect()).unwrap_or_default()
    }

    /// Active sessions of `group`, oldest assignment first.
    pub fn active(&self, group: &str) -> Vec<&Session> {
        let mut v: Vec<&Session> =
            self.sessions.values().filter(|s| s.state == SessionState::Active && s.group == group).collect();
        v.sort_by(|a, b| (a.assigned_ms, &a.id).cmp(&(b.assigned_ms, &b.id)));
        v
    }

    /// Waiting and active sessions of a customer or agent.
    pub fn user_sessions(&self, user: &str) -> Vec<&Session> {
        let mut v: Vec<&Session> = self
            .sessions
            .values()
            .filter(|s| s.state != SessionState::Ended && (s.customer == user || s.agent == user))
            .collect();
        v.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        v
    }

    /// The group's queue for position updates.
    pub fn snapshot(&self, group: &str, changed_from: usize) -> QueueSnapshot {
        let waiting = self.waiting(group).into_iter().map(|s| (s.id.clone(), s.customer.clone())).collect();
        let g = self.groups.get(group);
        let members = g.into_iter().flat_map(|g| g.members.iter().filter_map(|m| self.agents.get(m)));
        QueueSnapshot::new(group, waiting, changed_from, g.map_or(0, |g| g.avg_handle_ms), members)
    }

    /// The group's settings, members, queue and open sessions.
    pub fn group_view(&self, group: &str) -> Option<GroupView> {
        let g = self.groups.get(group)?;
        Some(GroupView {
            group: g.clone(),
            agents: g.members.iter().filter_map(|m| self.agents.get(m)).cloned().collect(),
            queue: self.snapshot(group, 0),
            waiting: self.waiting(group).into_iter().cloned().collect(),
            active: self.active(group).into_iter().cloned().collect(),
        })
    }

    /// Unclaimed left messages of `group`, oldest first, at most `limit`.
    pub fn left_messages(&self, group: &str, limit: usize) -> Vec<LeftMessage> {
        let mut out: Vec<LeftMessage> = self.left.values().filter(|m| m.group == group).cloned().collect();
        out.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        out.truncate(limit);
        out
    }

    /// The finished record `command` refers to when memory does not hold
    /// it (ended sessions and claimed left messages are evicted): the store
    /// loads it and gives it back with [`TenantState::restore`] before
    /// applying the command.
    pub fn wanted(&self, command: &CsCommand) -> Option<Wanted> {
        match command {
            CsCommand::Rate { session_id, .. }
            | CsCommand::End { session_id, .. }
            | CsCommand::Transfer { session_id, .. }
                if !self.sessions.contains_key(session_id) =>
            {
                Some(Wanted::Session(session_id.clone()))
            }
            CsCommand::Claim { id, .. } if !self.left.contains_key(id) => Some(Wanted::LeftMessage(id.clone())),
            _ => None,
        }
    }

    /// Puts back a finished record [`TenantState::wanted`] asked for.
    pub fn restore(&mut self, record: Restored) {
        match record {
            Restored::Session(s) => {
                self.sessions.insert(s.id.clone(), s);
            }
            Restored::LeftMessage(m) => {
                self.left.insert(m.id.clone(), m);
            }
        }
    }

    /// 1-based position of a waiting session, 0 if not waiting.
    pub fn position(&self, session: &Session) -> u32 {
        if session.state != SessionState::Waiting {
            return 0;
        }
        self.queues
            .get(&session.group)
            .map_or(0, |q| u32::try_from(q.range(..session.queue_key).count() + 1).unwrap_or(u32::MAX))
    }

    /// Runs `command` at `now` and then the assignment pass.
    pub fn apply(&mut self, mut command: CsCommand, now: u64) -> CsOutcome {
        if let Err(e) = command.precheck() {
            return CsOutcome::refused(e);
        }
        self.version += 1;
        let mut fx = Effects::default();
        let reply = self.run(command, now, &mut fx);
        if reply.is_ok() {
            self.assign_pass(now, &mut fx);
        }
        // The reply reports the record as it stands after the pass (a
        // session may have got an agent, an agent a session).
        let reply = reply.map(|r| match r {
            CsReply::Session { session, .. } => {
                let session = self.sessions.get(&session.id).cloned().unwrap_or(session);
                let position = self.position(&session);
                CsReply::Session { session, position }
            }
            CsReply::Agent { agent } => CsReply::Agent { agent: self.agents.get(&agent.id).cloned().unwrap_or(agent) },
            CsReply::Group { group } => {
                CsReply::Group { group: self.groups.get(&group.spec.id).cloned().unwrap_or(group) }
            }
            other => other,
        });
        let queues = fx.queue_changes.iter().map(|(g, from)| self.snapshot(g, *from)).collect();
        CsOutcome {
            version: self.version,
            reply,
            assigned: fx.assigned,
            transferred: fx.transferred,
            ended: fx.ended,
            timed_out: fx.timed_out,
            queues,
        }
    }

    fn run(&mut self, command: CsCommand, now: u64, fx: &mut Effects) -> Result<CsReply, CsError> {
        match command {
            CsCommand::PutGroup { spec } => self.put_group(spec),
            CsCommand::DeleteGroup { group } => self.delete_group(&group),
            CsCommand::PutMember { group, agent, capacity } => self.put_member(&group, &agent, capacity),
            CsCommand::RemoveMember { group, agent } => self.remove_member(&group, &agent),
            CsCommand::Request { customer, group, session_id, first_message, context } => {
                self.request(customer, group, session_id, (first_message, context), now, fx)
            }
            CsCommand::Cancel { customer, group } => self.cancel(&customer, &group, now, fx),
            CsCommand::SetStatus { agent, status } => self.set_status(&agent, status, now, fx),
            CsCommand::Connected { agent } => {
                let a = self.agent_mut(&agent, None);
                a.connected = true;
                a.disconnected_ms = 0;
                let agent = a.clone();
                self.dirty.insert(Dirty::Agent(agent.id.clone()));
                Ok(CsReply::Agent { agent })
            }
            CsCommand::Disconnected { agent } => {
                if let Some(a) = self.agents.get_mut(&agent) {
                    a.connected = false;
                    a.disconnected_ms = now;
                    self.dirty.insert(Dirty::Agent(agent));
                }
                Ok(CsReply::Done)
            }
            CsCommand::Accept { agent, group, customer } => self.accept(&agent, &group, customer, now, fx),
            CsCommand::Transfer { session_id, by, admin, target, note } => {
                self.transfer(&session_id, &by, admin, (target, note), now, fx)
            }
            CsCommand::End { session_id, by, admin } => self.end(&session_id, &by, admin, now, fx),
            CsCommand::Rate { session_id, customer, score, comment } => {
                self.rate(&session_id, &customer, score, comment)
            }
            CsCommand::LeaveMessage { message } => self.leave_message(message),
            CsCommand::Claim { id, agent } => self.claim(&id, &agent, now),
            CsCommand::Sweep { grace_ms } => {
                self.sweep(grace_ms, now, fx);
                Ok(CsReply::Done)
            }
        }
    }

    fn put_group(&mut self, spec: GroupSpec) -> Result<CsReply, CsError> {
        let id = spec.id.clone();
        let group = self.groups.entry(id.clone()).or_insert_with(|| Group {
            spec: spec.clone(),
            members: Vec::new(),
            avg_handle_ms: 0,
            rr_last: String::new(),
        });
        group.spec = spec;
        let group = group.clone();
        self.dirty.insert(Dirty::Group(id));
        Ok(CsReply::Group { group })
    }

    fn delete_group(&mut self, group: &str) -> Result<CsReply, CsError> {
        let Some(g) = self.groups.get(group) else {
            return Err(CsError::NoSuchGroup);
        };
        if self.sessions.values().any(|s| s.group == group && s.state != SessionState::Ended) {
            return Err(CsError::Conflict("the group has waiting or open sessions; end or transfer them first".into()));
        }
        for m in g.members.clone() {
            if let Some(a) = self.agents.get_mut(&m) {
                a.groups.retain(|x| x != group);
                self.dirty.insert(Dirty::Agent(m));
            }
        }
        self.groups.remove(group);
        self.queues.remove(group);
        self.dirty.insert(Dirty::Group(group.into()));
        Ok(CsReply::Done)
    }

    fn put_member(&mut self, group: &str, agent: &str, capacity: Option<u32>) -> Result<CsReply, CsError> {
        let Some(g) = self.groups.get(group) else {
            return Err(CsError::NoSuchGroup);
        };
        // Without one: the agent's capacity once it has one from a group,
        // else the group's default.
        let capacity = capacity.unwrap_or_else(|| {
            self.agents.get(agent).filter(|a| !a.groups.is_empty()).map_or(g.spec.default_capacity, |a| a.capacity)
        });
        if capacity == 0 || capacity > MAX_CAPACITY {
            return Err(CsError::Invalid(format!("capacity must be between 1 and {MAX_CAPACITY}")));
        }
        let Some(g) = self.groups.get_mut(group) else {
            return Err(CsError::NoSuchGroup);
        };
        insert_sorted(&mut g.members, agent);
        self.dirty.insert(Dirty::Group(group.into()));
        let a = self.agent_mut(agent, Some(capacity));
        a.capacity = capacity;
        insert_sorted(&mut a.groups, group);
        let agent = a.clone();
        self.dirty.insert(Dirty::Agent(agent.id.clone()));
        Ok(CsReply::Agent { agent })
    }

    fn remove_member(&mut self, group: &str, agent: &str) -> Result<CsReply, CsError> {
        let Some(g) = self.groups.get_mut(group) else {
            return Err(CsError::NoSuchGroup);
        };
        g.members.retain(|m| m != agent);
        self.dirty.insert(Dirty::Group(group.into()));
        if let Some(a) = self.agents.get_mut(agent) {
            a.groups.retain(|x| x != group);
            self.dirty.insert(Dirty::Agent(agent.into()));
        }
        Ok(CsReply::Done)
    }

    /// The agent's record, created (offline, disconnected) if missing.
    fn agent_mut(&mut self, agent: &str, capacity: Option<u32>) -> &mut Agent {
        self.agents.entry(agent.to_string()).or_insert_with(|| Agent::new(agent, capacity.unwrap_or(5)))
    }

    fn request(
        &mut self,
        customer: String,
        group: String,
        session_id: String,
        (first_message, context): (Option<Content>, SessionContext),
        now: u64,
        fx: &mut Effects,
    ) -> Result<CsReply, CsError> {
        let Some(g) = self.groups.get(&group) else {
            return Err(CsError::NoSuchGroup);
        };
        if let Some(existing) = self.by_customer.get(&(customer.clone(), group.clone())) {
            let session = self.sessions.get(existing).cloned().ok_or(CsError::NoSuchSession)?;
            return Ok(CsReply::Session { session, position: 0 });
        }
        let queued = self.queues.get(&group).map_or(0, BTreeMap::len);
        if queued >= g.spec.max_queue as usize {
            return Err(CsError::QueueFull);
        }
        let anyone_online = g.members.iter().filter_map(|m| self.agents.get(m)).any(Agent::online);
        if !anyone_online {
            return Err(CsError::NoAgentOnline);
        }
        let session = Session {
            id: session_id,
            group: group.clone(),
            customer: customer.clone(),
            agent: String::new(),
            conversation_id: String::new(),
            conversations: Vec::new(),
            state: SessionState::Waiting,
            created_ms: now,
            queued_ms: now,
            assigned_ms: 0,
            ended_ms: 0,
            ended_by: String::new(),
            end_reason: String::new(),
            score: 0,
            comment: String::new(),
            first_message,
            queue_key: 0,
            previous_agents: Vec::new(),
            context,
            transfer_note: String::new(),
        };
        let id = session.id.clone();
        self.sessions.insert(id.clone(), session);
        self.by_customer.insert((customer, group.clone()), id.clone());
        self.enqueue(&id, false, fx);
        let session = self.sessions.get(&id).cloned().ok_or(CsError::NoSuchSession)?;
        Ok(CsReply::Session { session, position: 0 })
    }

    /// Puts a session (already `Waiting`, with its group set) at the back or
    /// the front of its group's queue.
    fn enqueue(&mut self, id: &str, front: bool, fx: &mut Effects) {
        let Some(s) = self.sessions.get_mut(id) else { return };
        let queue = self.queues.entry(s.group.clone()).or_default();
        let key = if front {
            queue.keys().next().map_or(0, |k| k - 1)
        } else {
            queue.keys().next_back().map_or(0, |k| k + 1)
        };
        let index = if front { 0 } else { queue.len() };
        queue.insert(key, id.to_string());
        s.queue_key = key;
        note_change(fx, &s.group, index);
        self.dirty.insert(Dirty::Session(id.into()));
    }

    /// Takes a waiting session out of its queue.
    fn dequeue(&mut self, id: &str, fx: &mut Effects) {
        let Some(s) = self.sessions.get(id) else { return };
        // Only its own entry: a session that is not queued any more keeps an
        // old key, which another session may have taken since.
        if let Some(queue) = self.queues.get_mut(&s.group)
            && queue.get(&s.queue_key) == Some(&s.id)
        {
            let index = queue.range(..s.queue_key).count();
            queue.remove(&s.queue_key);
            note_change(fx, &s.group, index);
        }
    }

    fn cancel(&mut self, customer: &str, group: &str, now: u64, fx: &mut Effects) -> Result<CsReply, CsError> {
        let id = self.by_customer.get(&(customer.into(), group.into())).cloned().ok_or(CsError::NoSuchSession)?;
        let state = self.sessions.get(&id).map(|s| s.state);
        if state != Some(SessionState::Waiting) {
            return Err(CsError::Conflict("the session already has an agent; end it instead".into()));
        }
        self.finish(&id, customer, "cancelled", now, fx);
        Ok(CsReply::Done)
    }

    /// Ends a waiting or active session.
    fn finish(&mut self, id: &str, by: &str, reason: &str, now: u64, fx: &mut Effects) {
        let Some(state) = self.sessions.get(id).map(|s| s.state) else { return };
        match state {
            SessionState::Waiting => self.dequeue(id, fx),
            SessionState::Active => self.release_agent(id, now, true),
            SessionState::Ended => return,
        }
        let Some(s) = self.sessions.get_mut(id) else { return };
        s.state = SessionState::Ended;
        s.ended_ms = now;
        s.ended_by = by.into();
        s.end_reason = reason.into();
        self.by_customer.remove(&(s.customer.clone(), s.group.clone()));
        fx.ended.push(s.clone());
        self.dirty.insert(Dirty::Session(id.into()));
    }

    /// Frees the session's agent slot; with `handled`, counts its handle time.
    fn release_agent(&mut self, id: &str, now: u64, handled: bool) {
        let Some(s) = self.sessions.get(id) else { return };
        if let Some(a) = self.agents.get_mut(&s.agent) {
            a.load = a.load.saturating_sub(1);
            self.dirty.insert(Dirty::Agent(s.agent.clone()));
        }
        if handled && let Some(g) = self.groups.get_mut(&s.group) {
            let sample = now.saturating_sub(s.assigned_ms);
            g.avg_handle_ms = if g.avg_handle_ms == 0 { sample } else { (g.avg_handle_ms * 4 + sample) / 5 };
            self.dirty.insert(Dirty::Group(s.group.clone()));
        }
    }

    /// Gives a waiting session to `agent`.
    fn assign(&mut self, id: &str, agent: &str, now: u64, fx: &mut Effects) {
        self.dequeue(id, fx);
        let tenant = self.tenant.clone();
        let Some(s) = self.sessions.get_mut(id) else { return };
        s.state = SessionState::Active;
        s.agent = agent.into();
        s.derive_conversations(&tenant);
        s.assigned_ms = now;
        fx.assigned.push(s.clone());
        if let Some(a) = self.agents.get_mut(agent) {
            a.load += 1;
            a.last_assigned_ms = now;
        }
        self.dirty.insert(Dirty::Agent(agent.into()));
        self.dirty.insert(Dirty::Session(id.into()));
    }

    /// Takes an active session from its agent and queues it at the front of
    /// its group again.
    fn requeue(&mut self, id: &str, reason: &str, now: u64, fx: &mut Effects) {
        self.release_agent(id, now, false);
        let Some(s) = self.sessions.get_mut(id) else { return };
        let from_agent = std::mem::take(&mut s.agent);
        s.previous_agents.push(from_agent.clone());
        s.conversation_id.clear();
        s.state = SessionState::Waiting;
        s.queued_ms = now;
        let from_group = s.group.clone();
        self.enqueue(id, true, fx);
        if let Some(s) = self.sessions.get(id) {
            fx.transferred.push(Transferred { session: s.clone(), from_agent, from_group, reason: reason.into() });
        }
    }

    /// Requeues every active session of `agent`, the oldest assignment ending
    /// up first in line.
    fn requeue_all(&mut self, agent: &str, reason: &str, now: u64, fx: &mut Effects) {
        let mut ids: Vec<(u64, String)> = self
            .sessions
            .values()
            .filter(|s| s.state == SessionState::Active && s.agent == agent)
            .map(|s| (s.assigned_ms, s.id.clone()))
            .collect();
        // Front insertion reverses the order: requeue the newest first.
        ids.sort_by(|a, b| b.cmp(a));
        for (_, id) in ids {
            self.requeue(&id, reason, now, fx);
        }
    }

    fn set_status(&mut self, agent: &str, status: AgentStatus, now: u64, fx: &mut Effects) -> Result<CsReply, CsError> {
        if status == AgentStatus::Online {
            let joins: Vec<String> = self
                .groups
                .values()
                .filter(|g| g.spec.auto_join && !g.members.iter().any(|m| m == agent))
                .map(|g| g.spec.id.clone())
                .collect();
            for group in joins {
                self.put_member(&group, agent, None)?;
            }
        }
        let a = self.agent_mut(agent, None);
        a.status = status;
        self.dirty.insert(Dirty::Agent(agent.into()));
        if status == AgentStatus::Offline {
            self.requeue_all(agent, "agent went offline", now, fx);
        }
        let agent = self.agents.get(agent).cloned().ok_or(CsError::AgentUnavailable)?;
        Ok(CsReply::Agent { agent })
    }

    fn accept(
        &mut self,
        agent: &str,
        group: &str,
        customer: Option<String>,
        now: u64,
        fx: &mut Effects,
    ) -> Result<CsReply, CsError> {
        let g = self.groups.get(group).ok_or(CsError::NoSuchGroup)?;
        if g.spec.policy != Policy::ManualPick {
            return Err(CsError::Invalid(format!(
                "group {group} assigns automatically ({}); AcceptSession is for manual-pick groups",
                g.spec.policy.as_str()
            )));
        }
        if !g.members.iter().any(|m| m == agent) {
            return Err(CsError::Forbidden(format!("not an agent of group {group}")));
        }
        if !self.agents.get(agent).is_some_and(Agent::available) {
            return Err(CsError::AgentUnavailable);
        }
        let id = match customer.filter(|c| !c.is_empty()) {
            Some(c) => {
                let id = self.by_customer.get(&(c, group.into())).cloned().ok_or(CsError::NoSuchSession)?;
                if self.sessions.get(&id).map(|s| s.state) != Some(SessionState::Waiting) {
                    return Err(CsError::Conflict("that customer is not waiting any more".into()));
                }
                id
            }
            None => self.queues.get(group).and_then(|q| q.values().next().cloned()).ok_or(CsError::NobodyWaiting)?,
        };
        self.assign(&id, agent, now, fx);
        let session = self.sessions.get(&id).cloned().ok_or(CsError::NoSuchSession)?;
        Ok(CsReply::Session { session, position: 0 })
    }

    fn transfer(
        &mut self,
        id: &str,
        by: &str,
        admin: bool,
        (target, note): (TransferTarget, String),
        now: u64,
        fx: &mut Effects,
    ) -> Result<CsReply, CsError> {
        let s = self.sessions.get(id).ok_or(CsError::NoSuchSession)?;
        if s.state != SessionState::Active {
            return Err(CsError::Conflict("only a session with an agent can be transferred".into()));
        }
        if s.agent != by && !admin {
            return Err(CsError::Forbidden("only the session's agent or an admin can transfer it".into()));
        }
        let (from_agent, from_group, customer) = (s.agent.clone(), s.group.clone(), s.customer.clone());
        match target {
            TransferTarget::Agent(to) => {
                if to == from_agent {
                    return Err(CsError::Invalid("the session is already with that agent".into()));
                }
                if !self.agents.get(&to).is_some_and(Agent::available) {
                    return Err(CsError::AgentUnavailable);
                }
                self.release_agent(id, now, true);
                if let Some(s) = self.sessions.get_mut(id) {
                    s.previous_agents.push(from_agent.clone());
                    s.state = SessionState::Waiting;
                    s.transfer_note = note;
                }
                self.assign(id, &to, now, fx);
                if let Some(s) = self.sessions.get(id) {
                    let reason = "transfer".into();
                    fx.transferred.push(Transferred { session: s.clone(), from_agent, from_group, reason });
                }
            }
            TransferTarget::Group(to) => {
                if !self.groups.contains_key(&to) {
                    return Err(CsError::NoSuchGroup);
                }
                if to != from_group && self.by_customer.contains_key(&(customer.clone(), to.clone())) {
                    return Err(CsError::Conflict("the customer already has a session in that group".into()));
                }
                self.release_agent(id, now, true);
                self.by_customer.remove(&(customer.clone(), from_group.clone()));
                self.by_customer.insert((customer, to.clone()), id.into());
                if let Some(s) = self.sessions.get_mut(id) {
                    s.previous_agents.push(std::mem::take(&mut s.agent));
                    s.conversation_id.clear();
                    s.state = SessionState::Waiting;
                    s.group = to;
                    s.queued_ms = now;
                    s.transfer_note = note;
                }
                self.enqueue(id, true, fx);
                if let Some(s) = self.sessions.get(id) {
                    let reason = "transfer".into();
                    fx.transferred.push(Transferred { session: s.clone(), from_agent, from_group, reason });
                }
            }
        }
        let session = self.sessions.get(id).cloned().ok_or(CsError::NoSuchSession)?;
        Ok(CsReply::Session { session, position: 0 })
    }

    fn end(&mut self, id: &str, by: &str, admin: bool, now: u64, fx: &mut Effects) -> Result<CsReply, CsError> {
        let s = self.sessions.get(id).ok_or(CsError::NoSuchSession)?;
        if s.state == SessionState::Ended {
            return Err(CsError::Conflict("the session has already ended".into()));
        }
        let reason = if s.customer == by {
            "ended by the customer"
        } else if s.agent == by && !by.is_empty() {
            "ended by the agent"
        } else if admin {
            "ended by an admin"
        } else {
            return Err(CsError::Forbidden("only the session's customer, its agent or an admin can end it".into()));
        };
        self.finish(id, by, reason, now, fx);
        let session = self.sessions.get(id).cloned().ok_or(CsError::NoSuchSession)?;
        Ok(CsReply::Session { session, position: 0 })
    }

    fn rate(&mut self, id: &str, customer: &str, score: u32, comment: String) -> Result<CsReply, CsError> {
        let s = self.sessions.get_mut(id).ok_or(CsError::NoSuchSession)?;
        if s.customer != customer {
            return Err(CsError::Forbidden("only the session's customer can rate it".into()));
        }
        if !(1..=5).contains(&score) {
            return Err(CsError::Invalid("score must be between 1 and 5".into()));
        }
        if comment.len() > MAX_COMMENT_BYTES {
            return Err(CsError::Invalid(format!("comment is longer than {MAX_COMMENT_BYTES} bytes")));
        }
        if s.state != SessionState::Ended {
            return Err(CsError::Conflict("a session can be rated once it has ended".into()));
        }
        if s.assigned_ms == 0 {
            return Err(CsError::Conflict("the session never had an agent".into()));
        }
        if s.score != 0 {
            return Err(CsError::Conflict("the session has already been rated".into()));
        }
        s.score = score;
        s.comment = comment;
        let session = s.clone();
        self.dirty.insert(Dirty::Session(id.into()));
        Ok(CsReply::Session { session, position: 0 })
    }

    fn leave_message(&mut self, message: LeftMessage) -> Result<CsReply, CsError> {
        if !self.groups.contains_key(&message.group) {
            return Err(CsError::NoSuchGroup);
        }
        if self.left.len() >= MAX_LEFT_UNCLAIMED {
            return Err(CsError::QueueFull);
        }
        self.dirty.insert(Dirty::LeftMessage(message.id.clone()));
        self.left.insert(message.id.clone(), message.clone());
        Ok(CsReply::LeftMessage { message })
    }

    fn claim(&mut self, id: &str, agent: &str, now: u64) -> Result<CsReply, CsError> {
        let m = self.left.get(id).ok_or(CsError::NoSuchLeftMessage)?;
        let member = self.groups.get(&m.group).is_some_and(|g| g.members.iter().any(|x| x == agent));
        if !member {
            return Err(CsError::Forbidden(format!("not an agent of group {}", m.group)));
        }
        if m.claimed_by == agent {
            return Ok(CsReply::LeftMessage { message: m.clone() });
        }
        if !m.claimed_by.is_empty() {
            return Err(CsError::Conflict(format!("already claimed by {}", m.claimed_by)));
        }
        let m = self.left.get_mut(id).ok_or(CsError::NoSuchLeftMessage)?;
        m.claimed_by = agent.into();
        m.claimed_ms = now;
        let message = m.clone();
        self.dirty.insert(Dirty::LeftMessage(id.into()));
        Ok(CsReply::LeftMessage { message })
    }

    fn sweep(&mut self, grace_ms: u64, now: u64, fx: &mut Effects) {
        let expired: Vec<(String, String, String)> = self
            .queues
            .iter()
            .flat_map(|(group, q)| {
                let max_wait = self.groups.get(group).map_or(u64::MAX, |g| g.spec.max_wait_ms);
                q.values()
                    .filter_map(|id| self.sessions.get(id))
                    .filter(move |s| s.queued_ms.saturating_add(max_wait) <= now)
                    .map(|s| (s.id.clone(), s.group.clone(), s.customer.clone()))
            })
            .collect();
        for (id, group, customer) in expired {
            self.finish(&id, "", "waited too long", now, fx);
            fx.timed_out.push((group, customer));
        }
        let gone: Vec<String> = self
            .agents
            .values()
            .filter(|a| {
                !a.connected
                    && a.disconnected_ms > 0
                    && a.disconnected_ms.saturating_add(grace_ms) <= now
                    && (a.status != AgentStatus::Offline || a.load > 0)
            })
            .map(|a| a.id.clone())
            .collect();
        for agent in gone {
            if let Some(a) = self.agents.get_mut(&agent) {
                a.status = AgentStatus::Offline;
            }
            self.dirty.insert(Dirty::Agent(agent.clone()));
            self.requeue_all(&agent, "agent disconnected", now, fx);
        }
        // Every group's queue, for the queue-length metric; unchanged ones
        // from their end, so no position update goes out for them.
        let lengths: Vec<(String, usize)> =
            self.groups.keys().map(|g| (g.clone(), self.queues.get(g).map_or(0, BTreeMap::len))).collect();
        for (group, len) in lengths {
            note_change(fx, &group, len);
        }
    }

    /// Hands waiting customers to available agents until no group that
    /// assigns automatically has both.
    fn assign_pass(&mut self, now: u64, fx: &mut Effects) {
        loop {
            let mut best: Option<(u64, String, String, String)> = None;
            for (group, queue) in &self.queues {
                let Some(head) = queue.values().next() else { continue };
                let Some(g) = self.groups.get(group) else { continue };
                let members: Vec<&Agent> = g.members.iter().filter_map(|m| self.agents.get(m)).collect();
                let Some(agent) = choose_agent(g.spec.policy, &members, &g.rr_last) else { continue };
                let queued = self.sessions.get(head).map_or(0, |s| s.queued_ms);
                if best.as_ref().is_none_or(|b| queued < b.0) {
                    best = Some((queued, group.clone(), head.clone(), agent.id.clone()));
                }
            }
            let Some((_, group, id, agent)) = best else { break };
            if let Some(g) = self.groups.get_mut(&group)
                && g.spec.policy == Policy::RoundRobin
            {
                g.rr_last = agent.clone();
                self.dirty.insert(Dirty::Group(group));
            }
            self.assign(&id, &agent, now, fx);
        }
    }

    /// Checks the invariants; the error says which one broke. Used by tests.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut load: HashMap<&str, u32> = HashMap::new();
        let mut seen_customer_group = BTreeSet::new();
        for s in self.sessions.values().filter(|s| s.state != SessionState::Ended) {
            if !seen_customer_group.insert((&s.customer, &s.group)) {
                return Err(format!("customer {} has two open sessions in {}", s.customer, s.group));
            }
            let queued = self.queues.get(&s.group).is_some_and(|q| q.get(&s.queue_key) == Some(&s.id));
            match s.state {
                SessionState::Waiting if !queued => return Err(format!("waiting session {} is not queued", s.id)),
                SessionState::Waiting if !s.agent.is_empty() => {
                    return Err(format!("waiting session {} has an agent", s.id));
                }
                SessionState::Active if queued => return Err(format!("active session {} is still queued", s.id)),
                SessionState::Active => *load.entry(&s.agent).or_default() += 1,
                _ => {}
            }
        }
        for (group, q) in &self.queues {
            for id in q.values() {
                let ok = self.sessions.get(id).is_some_and(|s| s.state == SessionState::Waiting && &s.group == group);
                if !ok {
                    return Err(format!("queue {group} holds {id}, which is not waiting there"));
                }
            }
        }
        for a in self.agents.values() {
            let actual = load.get(a.id.as_str()).copied().unwrap_or(0);
            if a.load != actual {
                return Err(format!("agent {} has load {} but {} open sessions", a.id, a.load, actual));
            }
        }
        Ok(())
    }
}

fn insert_sorted(v: &mut Vec<String>, item: &str) {
    if let Err(i) = v.binary_search_by(|x| x.as_str().cmp(item)) {
        v.insert(i, item.to_string());
    }
}

fn note_change(fx: &mut Effects, group: &str, index: usize) {
    let e = fx.queue_changes.entry(group.to_string()).or_insert(index);
    *e = (*e).min(index);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use proptest::prelude::*;

    fn step() -> impl Strategy<Value = testing::Step> {
        (0..testing::OPS, 0usize..12, 0usize..12, 0u64..30_000).prop_map(|(op, x, y, dt)| testing::Step {
            op,
            x,
            y,
            dt,
        })
    }

    fn agent_strategy() -> impl Strategy<Value = Agent> {
        (0u32..4, 1u32..4, any::<bool>(), 0usize..3, 0u64..5).prop_map(|(load, capacity, connected, status, last)| {
            let mut a = Agent::new("", capacity);
            a.load = load;
            a.connected = connected;
            a.status = [AgentStatus::Online, AgentStatus::Away, AgentStatus::Offline][status];
            a.last_assigned_ms = last;
            a
        })
    }

    #[test]
    fn estimated_wait_counts_the_customers_beyond_free_slots() {
        let q = |free, online| QueueSnapshot {
            group: "g".into(),
            waiting: Vec::new(),
            changed_from: 0,
            avg_handle_ms: 60_000,
            free_capacity: free,
            online_capacity: online,
        };
        assert_eq!(q(0, 10).estimated_wait_s(0), 0, "not waiting");
        assert_eq!(q(2, 10).estimated_wait_s(2), 0, "a free slot is coming");
        // One minute per session, ten slots turning over: 6 s per customer ahead.
        assert_eq!(q(0, 10).estimated_wait_s(1), 6);
        assert_eq!(q(0, 10).estimated_wait_s(5), 30);
        assert_eq!(q(2, 10).estimated_wait_s(5), 18);
        assert_eq!(q(0, 0).estimated_wait_s(1), 60, "no one online: one handle time per customer");
    }

    proptest! {
        /// The chosen agent is available; least-loaded picks a minimal load
        /// and, among those, the longest idle; round-robin picks the next
        /// available member after the last one, wrapping around.
        #[test]
        fn policy_picks_a_fair_available_agent(
            mut agents in proptest::collection::vec(agent_strategy(), 0..8),
            rr in 0usize..9,
        ) {
            for (i, a) in agents.iter_mut().enumerate() {
                a.id = format!("a{i}");
            }
            let members: Vec<&Agent> = agents.iter().collect();
            let available: Vec<&Agent> = agents.iter().filter(|a| a.available()).collect();
            prop_assert!(choose_agent(Policy::ManualPick, &members, "").is_none());
            match choose_agent(Policy::LeastLoaded, &members, "") {
                None => prop_assert!(available.is_empty()),
                Some(c) => {
                    prop_assert!(c.available());
                    for a in &available {
                        prop_assert!((c.load, c.last_assigned_ms) <= (a.load, a.last_assigned_ms));
                    }
                }
            }
            let rr_last = format!("a{rr}");
            match choose_agent(Policy::RoundRobin, &members, &rr_last) {
                None => prop_assert!(available.is_empty()),
                Some(c) => {
                    prop_assert!(c.available());
                    let next = available.iter().find(|a| a.id > rr_last).or(available.first());
                    prop_assert_eq!(&c.id, &next.unwrap().id);
                }
            }
        }

        /// Any sequence of commands keeps the state consistent: loads match
        /// open sessions, queues hold exactly the waiting sessions, one open
        /// session per customer and group, nobody over capacity, and no
        /// customer waits while an available agent of an automatic group
        /// could take them.
        #[test]
        fn any_command_sequence_keeps_the_invariants(steps in proptest::collection::vec(step(), 1..80)) {
            let mut script = testing::Script::default();
            let mut cs = testing::MemoryCs::new("t");
            for cmd in script.setup() {
                let ok = cs.execute(cmd, script.now).reply.is_ok();
                prop_assert!(ok);
            }
            for step in steps {
                let cmd = script.command(step);
                let out = cs.execute(cmd.clone(), script.now);
                let st = &cs.state;
                if let Err(e) = st.check_invariants() {
                    return Err(TestCaseError::fail(format!("after {cmd:?}: {e}")));
                }
                for s in &out.assigned {
                    let a = &st.agents[&s.agent];
                    prop_assert!(a.load <= a.capacity || matches!(cmd, CsCommand::PutMember { .. }), "{} over capacity", a.id);
                }
                for (g, q) in &st.queues {
                    let group = &st.groups[g];
                    if q.is_empty() || group.spec.policy == Policy::ManualPick {
                        continue;
                    }
                    let members: Vec<&Agent> = group.members.iter().filter_map(|m| st.agents.get(m)).collect();
                    prop_assert!(choose_agent(group.spec.policy, &members, &group.rr_last).is_none(),
                        "{g} has waiting customers and an available agent after {cmd:?}");
                }
            }
        }
    }
}
