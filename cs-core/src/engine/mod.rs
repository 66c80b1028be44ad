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

mod commands;

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
            CsCommand::PutGroup { spec, only } => self.put_group(spec, &only),
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
                Ok(self.swept(grace_ms))
            }
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
mod tests;
