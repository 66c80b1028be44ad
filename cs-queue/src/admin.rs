//! The operations of the customer-service HTTP API, by caller: groups and
//! their agents, supervisor views, left messages, quick replies. Every role
//! check, permission and limit lives here, beside the frames' own; the
//! HTTP layer only maps requests and answers.

use super::*;
use storage::cs::{Agent, AgentStatus, Group, GroupField, GroupView, Policy, QuickReply};

/// Most quick replies per tenant (group and personal ones together).
pub const MAX_QUICK_REPLIES: usize = 1000;
pub const MAX_TITLE_BYTES: usize = 200;
pub const MAX_REPLY_TEXT_BYTES: usize = 4000;

/// Changes to a group's settings; `None` keeps the current value (or the
/// default, for a new group).
#[derive(Debug, Clone, Default)]
pub struct GroupPatch {
    pub name: Option<String>,
    pub policy: Option<Policy>,
    pub max_queue: Option<u32>,
    pub max_wait_ms: Option<u64>,
    pub auto_join: Option<bool>,
    pub default_capacity: Option<u32>,
}

impl GroupPatch {
    /// Sets the given fields of `spec`; returns which they were.
    fn apply(self, spec: &mut GroupSpec) -> Vec<GroupField> {
        let GroupPatch { name, policy, max_queue, max_wait_ms, auto_join, default_capacity } = self;
        let mut set = Vec::new();
        if let Some(v) = name {
            spec.name = v;
            set.push(GroupField::Name);
        }
        if let Some(v) = policy {
            spec.policy = v;
            set.push(GroupField::Policy);
        }
        if let Some(v) = max_queue {
            spec.max_queue = v;
            set.push(GroupField::MaxQueue);
        }
        if let Some(v) = max_wait_ms {
            spec.max_wait_ms = v;
            set.push(GroupField::MaxWaitMs);
        }
        if let Some(v) = auto_join {
            spec.auto_join = v;
            set.push(GroupField::AutoJoin);
        }
        if let Some(v) = default_capacity {
            spec.default_capacity = v;
            set.push(GroupField::DefaultCapacity);
        }
        set
    }
}

fn not_found(what: &str) -> ClientError {
    err(ErrorCode::NotFound, format!("no such {what}"))
}

impl CsService {
    /// Every group of the tenant with its live state (admin).
    pub async fn group_views(&self, caller: &Caller) -> Result<Vec<GroupView>, ClientError> {
        require(caller, &[Role::Admin], "listing the groups")?;
        self.all_group_views(caller).await
    }

    /// The groups a customer picks from (anyone of the tenant).
    pub async fn service_groups(&self, caller: &Caller) -> Result<Vec<GroupView>, ClientError> {
        self.all_group_views(caller).await
    }

    pub(crate) async fn all_group_views(&self, caller: &Caller) -> Result<Vec<GroupView>, ClientError> {
        let mut out = Vec::new();
        for g in self.store.groups(caller.tenant()).await? {
            if let Some(v) = self.store.group_view(caller.tenant(), &g.spec.id).await? {
                out.push(v);
            }
        }
        Ok(out)
    }

    /// Sets an agent's status for them (admin), as their own `SetStatus`
    /// would; their connected devices get the new `CsState`.
    pub async fn set_agent_status(
        &self,
        caller: &Caller,
        agent: &str,
        status: AgentStatus,
    ) -> Result<Agent, ClientError> {
        require(caller, &[Role::Admin], "setting an agent's status")?;
        validate_id("agent", agent).map_err(invalid)?;
        if self.store.agent(caller.tenant(), agent).await?.is_none() {
            return Err(not_found("agent"));
        }
        let state = self.apply_status(caller, agent, status).await?;
        self.router().notify(caller.tenant(), agent, event(Body::CsState(state))).await;
        self.store.agent(caller.tenant(), agent).await?.ok_or_else(|| not_found("agent"))
    }

    /// One group's settings, agents, queue and open sessions (admin).
    pub async fn group_view(&self, caller: &Caller, group: &str) -> Result<GroupView, ClientError> {
        require(caller, &[Role::Admin], "a group's view")?;
        validate_id("group", group).map_err(invalid)?;
        self.store.group_view(caller.tenant(), group).await?.ok_or_else(|| not_found("group"))
    }

    /// Creates or changes a group (admin); true when it was created.
    pub async fn put_group(
        &self,
        caller: &Caller,
        group: &str,
        patch: GroupPatch,
    ) -> Result<(Group, bool), ClientError> {
        require(caller, &[Role::Admin], "changing a group")?;
        validate_id("group", group).map_err(invalid)?;
        let current = self.store.group_view(caller.tenant(), group).await?;
        let created = current.is_none();
        let mut spec = current
            .as_ref()
            .map_or_else(|| GroupSpec { id: group.into(), ..GroupSpec::default() }, |v| v.group.spec.clone());
        let only = patch.apply(&mut spec);
        if let Some(view) = current.filter(|_| only.is_empty()) {
            // Nothing to change.
            return Ok((view.group, false));
        }
        // Only the fields given are written, in one step with the read of
        // the others: a concurrent change of another field stays.
        let CsReply::Group { group } = self.run(caller, CsCommand::PutGroup { spec, only }).await? else {
            return Err(unexpected());
        };
        Ok((group, created))
    }

    /// Deletes a group nobody waits in and no open session belongs to (admin).
    pub async fn delete_group(&self, caller: &Caller, group: &str) -> Result<(), ClientError> {
        require(caller, &[Role::Admin], "deleting a group")?;
        validate_id("group", group).map_err(invalid)?;
        self.run(caller, CsCommand::DeleteGroup { group: group.into() }).await?;
        Ok(())
    }

    /// Adds an agent to a group or changes their capacity (admin).
    pub async fn put_member(
        &self,
        caller: &Caller,
        group: &str,
        agent: &str,
        capacity: Option<u32>,
    ) -> Result<Agent, ClientError> {
        require(caller, &[Role::Admin], "changing a group's agents")?;
        validate_id("group", group).map_err(invalid)?;
        validate_id("agent", agent).map_err(invalid)?;
        let c = CsCommand::PutMember { group: group.into(), agent: agent.into(), capacity };
        let CsReply::Agent { agent } = self.run(caller, c).await? else { return Err(unexpected()) };
        Ok(agent)
    }

    /// Removes an agent from a group; their open sessions stay (admin).
    pub async fn remove_member(&self, caller: &Caller, group: &str, agent: &str) -> Result<(), ClientError> {
        require(caller, &[Role::Admin], "changing a group's agents")?;
        validate_id("group", group).map_err(invalid)?;
        validate_id("agent", agent).map_err(invalid)?;
        self.run(caller, CsCommand::RemoveMember { group: group.into(), agent: agent.into() }).await?;
        Ok(())
    }

    /// Unclaimed left messages of a group, oldest first (its agents, admin).
    pub async fn left_messages(
        &self,
        caller: &Caller,
        group: &str,
        limit: usize,
    ) -> Result<Vec<LeftMessage>, ClientError> {
        require(caller, &[Role::Agent, Role::Admin], "left messages")?;
        validate_id("group", group).map_err(invalid)?;
        self.member_or_admin(caller, group).await?;
        Ok(self.store.left_messages(caller.tenant(), group, limit.clamp(1, 500)).await?)
    }

    async fn member_or_admin(&self, caller: &Caller, group: &str) -> Result<(), ClientError> {
        if caller.role == Role::Admin {
            return Ok(());
        }
        let agent = self.store.agent(caller.tenant(), caller.user()).await?;
        if agent.is_some_and(|a| a.groups.iter().any(|g| g == group)) {
            Ok(())
        } else {
            Err(err(ErrorCode::Forbidden, format!("not an agent of group {group}")))
        }
    }

    /// The quick replies `caller` sees: of their groups (an admin: of every
    /// group) and their personal ones.
    pub async fn quick_replies(&self, caller: &Caller) -> Result<Vec<QuickReply>, ClientError> {
        require(caller, &[Role::Agent, Role::Admin], "quick replies")?;
        let groups = if caller.role == Role::Admin {
            self.store.groups(caller.tenant()).await?.into_iter().map(|g| g.spec.id).collect()
        } else {
            self.store.agent(caller.tenant(), caller.user()).await?.map(|a| a.groups).unwrap_or_default()
        };
        Ok(self.store.quick_replies(caller.tenant(), &groups, caller.user()).await?)
    }

    /// Creates a quick reply: of `group` (its agents, admin) or, with an
    /// empty group, a personal one of the caller. At most
    /// [`MAX_QUICK_REPLIES`] per tenant, checked atomically with the write.
    pub async fn create_quick_reply(
        &self,
        caller: &Caller,
        group: String,
        title: String,
        text: String,
    ) -> Result<QuickReply, ClientError> {
        require(caller, &[Role::Agent, Role::Admin], "quick replies")?;
        check_reply(&group, &title, &text)?;
        let owner = if group.is_empty() { caller.user.clone() } else { String::new() };
        let reply = QuickReply { id: im_core::new_msg_id(), group, owner, title, text, updated_ms: im_core::now_ms() };
        self.may_edit(caller, &reply).await?;
        if !self.store.put_quick_reply(caller.tenant(), reply.clone(), MAX_QUICK_REPLIES).await? {
            return Err(err(ErrorCode::Conflict, format!("at most {MAX_QUICK_REPLIES} quick replies per tenant")));
        }
        Ok(reply)
    }

    /// Changes a quick reply's title and text (its owner, agents of its
    /// group, admin); it cannot move between groups.
    pub async fn update_quick_reply(
        &self,
        caller: &Caller,
        id: &str,
        group: String,
        title: String,
        text: String,
    ) -> Result<QuickReply, ClientError> {
        require(caller, &[Role::Agent, Role::Admin], "quick replies")?;
        im_core::ids::validate_uuid("id", id).map_err(invalid)?;
        check_reply(&group, &title, &text)?;
        let mut reply = self.editable_reply(caller, id).await?;
        if group != reply.group {
            return Err(invalid("a quick reply cannot move between groups".into()));
        }
        reply.title = title;
        reply.text = text;
        reply.updated_ms = im_core::now_ms();
        self.store.put_quick_reply(caller.tenant(), reply.clone(), MAX_QUICK_REPLIES).await?;
        Ok(reply)
    }

    /// Deletes a quick reply (its owner, agents of its group, admin).
    pub async fn delete_quick_reply(&self, caller: &Caller, id: &str) -> Result<(), ClientError> {
        require(caller, &[Role::Agent, Role::Admin], "quick replies")?;
        im_core::ids::validate_uuid("id", id).map_err(invalid)?;
        self.editable_reply(caller, id).await?;
        self.store.delete_quick_reply(caller.tenant(), id).await?;
        Ok(())
    }

    /// Whether `caller` may change `reply`: its owner, an agent of its
    /// group, or an admin.
    async fn may_edit(&self, caller: &Caller, reply: &QuickReply) -> Result<(), ClientError> {
        if !reply.group.is_empty() {
            return self.member_or_admin(caller, &reply.group).await;
        }
        if reply.owner == caller.user || caller.role == Role::Admin {
            Ok(())
        } else {
            Err(err(ErrorCode::Forbidden, "a personal quick reply of another agent"))
        }
    }

    async fn editable_reply(&self, caller: &Caller, id: &str) -> Result<QuickReply, ClientError> {
        let reply = self.store.quick_reply(caller.tenant(), id).await?.ok_or_else(|| not_found("quick reply"))?;
        self.may_edit(caller, &reply).await?;
        Ok(reply)
    }
}

fn check_reply(group: &str, title: &str, text: &str) -> Result<(), ClientError> {
    if title.is_empty() || title.len() > MAX_TITLE_BYTES {
        return Err(invalid(format!("title must be 1 to {MAX_TITLE_BYTES} bytes")));
    }
    if text.is_empty() || text.len() > MAX_REPLY_TEXT_BYTES {
        return Err(invalid(format!("text must be 1 to {MAX_REPLY_TEXT_BYTES} bytes")));
    }
    if !group.is_empty() {
        validate_id("group", group).map_err(invalid)?;
    }
    Ok(())
}
