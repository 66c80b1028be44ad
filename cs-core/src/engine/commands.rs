//! What each command does to a tenant's state, and the assignment pass
//! that runs after every one (see the module docs of `engine`).

use super::*;

impl TenantState {
    pub(super) fn put_group(&mut self, spec: GroupSpec, only: &[GroupField]) -> Result<CsReply, CsError> {
        let id = spec.id.clone();
        let existed = self.groups.contains_key(&id);
        let group = self.groups.entry(id.clone()).or_insert_with(|| Group {
            spec: spec.clone(),
            members: Vec::new(),
            avg_handle_ms: 0,
            rr_last: String::new(),
        });
        if existed && !only.is_empty() {
            for field in only {
                group.spec.take_field(&spec, *field);
            }
        } else {
            group.spec = spec;
        }
        let group = group.clone();
        self.dirty.insert(Dirty::Group(id));
        Ok(CsReply::Group { group })
    }

    pub(super) fn delete_group(&mut self, group: &str) -> Result<CsReply, CsError> {
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

    pub(super) fn put_member(&mut self, group: &str, agent: &str, capacity: Option<u32>) -> Result<CsReply, CsError> {
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

    pub(super) fn remove_member(&mut self, group: &str, agent: &str) -> Result<CsReply, CsError> {
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
    pub(super) fn agent_mut(&mut self, agent: &str, capacity: Option<u32>) -> &mut Agent {
        self.agents.entry(agent.to_string()).or_insert_with(|| Agent::new(agent, capacity.unwrap_or(5)))
    }

    pub(super) fn request(
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
            first_assigned_ms: 0,
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
    pub(super) fn enqueue(&mut self, id: &str, front: bool, fx: &mut Effects) {
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
    pub(super) fn dequeue(&mut self, id: &str, fx: &mut Effects) {
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

    pub(super) fn cancel(
        &mut self,
        customer: &str,
        group: &str,
        now: u64,
        fx: &mut Effects,
    ) -> Result<CsReply, CsError> {
        let id = self.by_customer.get(&(customer.into(), group.into())).cloned().ok_or(CsError::NoSuchSession)?;
        let state = self.sessions.get(&id).map(|s| s.state);
        if state != Some(SessionState::Waiting) {
            return Err(CsError::Conflict("the session already has an agent; end it instead".into()));
        }
        self.finish(&id, customer, "cancelled", now, fx);
        Ok(CsReply::Done)
    }

    /// Ends a waiting or active session.
    pub(super) fn finish(&mut self, id: &str, by: &str, reason: &str, now: u64, fx: &mut Effects) {
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
    pub(super) fn release_agent(&mut self, id: &str, now: u64, handled: bool) {
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
    pub(super) fn assign(&mut self, id: &str, agent: &str, now: u64, fx: &mut Effects) {
        self.dequeue(id, fx);
        let tenant = self.tenant.clone();
        let Some(s) = self.sessions.get_mut(id) else { return };
        s.state = SessionState::Active;
        s.agent = agent.into();
        s.derive_conversations(&tenant);
        s.assigned_ms = now;
        if s.first_assigned_ms == 0 {
            s.first_assigned_ms = now;
        }
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
    pub(super) fn requeue(&mut self, id: &str, reason: &str, now: u64, fx: &mut Effects) {
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
    pub(super) fn requeue_all(&mut self, agent: &str, reason: &str, now: u64, fx: &mut Effects) {
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

    pub(super) fn set_status(
        &mut self,
        agent: &str,
        status: AgentStatus,
        now: u64,
        fx: &mut Effects,
    ) -> Result<CsReply, CsError> {
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

    pub(super) fn accept(
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

    pub(super) fn transfer(
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

    pub(super) fn end(
        &mut self,
        id: &str,
        by: &str,
        admin: bool,
        now: u64,
        fx: &mut Effects,
    ) -> Result<CsReply, CsError> {
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

    pub(super) fn rate(&mut self, id: &str, customer: &str, score: u32, comment: String) -> Result<CsReply, CsError> {
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

    pub(super) fn leave_message(&mut self, message: LeftMessage) -> Result<CsReply, CsError> {
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

    pub(super) fn claim(&mut self, id: &str, agent: &str, now: u64) -> Result<CsReply, CsError> {
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

    pub(super) fn sweep(&mut self, grace_ms: u64, now: u64, fx: &mut Effects) {
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

    /// What the sweep answers (see [`CsReply::Swept`]): what is due next
    /// after it, before the assignment pass.
    pub(super) fn swept(&self, grace_ms: u64) -> CsReply {
        let mut next = u64::MAX;
        let mut waiting = false;
        for (group, q) in &self.queues {
            let max_wait = self.groups.get(group).map_or(u64::MAX, |g| g.spec.max_wait_ms);
            for s in q.values().filter_map(|id| self.sessions.get(id)) {
                waiting = true;
                next = next.min(s.queued_ms.saturating_add(max_wait));
            }
        }
        let mut agents_connected = false;
        for a in self.agents.values() {
            agents_connected |= a.connected;
            if !a.connected && a.disconnected_ms > 0 && (a.status != AgentStatus::Offline || a.load > 0) {
                next = next.min(a.disconnected_ms.saturating_add(grace_ms));
            }
        }
        CsReply::Swept { next_due_ms: if next == u64::MAX { 0 } else { next }, waiting, agents_connected }
    }

    /// Hands waiting customers to available agents until no group that
    /// assigns automatically has both.
    pub(super) fn assign_pass(&mut self, now: u64, fx: &mut Effects) {
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
}
