//! Who the people of a chat are: names and avatars from the tokens, the
//! agents' private note about a customer, everyone's past sessions, and
//! whom an agent can hand a session to. Caller-based, like `admin.rs`; the
//! HTTP layer only maps requests and answers.

use super::*;
use storage::cs::{Agent, GroupView, Profile, ProfileUpdate};

/// Most users named in one profile lookup.
pub const MAX_PROFILE_LOOKUP: usize = 100;
/// Longest note about a customer.
pub const MAX_NOTE_BYTES: usize = 2000;
/// Most past sessions in one page (and the default).
pub const MAX_PAST_SESSIONS: usize = 50;
pub const DEFAULT_PAST_SESSIONS: usize = 20;
/// The optional `name` and `avatar` claims of a token (checked by the
/// gateway's token verification).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub avatar: String,
}

/// A page of past sessions and where the next one starts (0: no more).
pub struct PastSessions {
    pub sessions: Vec<Session>,
    pub next_before_ms: u64,
}

/// Whom an agent can transfer to: the groups and the agents who take new
/// sessions now, with their load.
pub struct TransferTargets {
    pub groups: Vec<GroupView>,
    pub agents: Vec<Agent>,
}

impl CsService {
    /// Records the identity a connection's token carries, if it carries
    /// one, before the connection is answered. A failure is logged, never
    /// a refusal: the name is for display.
    pub async fn remember_identity(&self, caller: &Caller, identity: Identity) {
        if identity == Identity::default() {
            return;
        }
        let role = caller.role.as_str().into();
        let update = ProfileUpdate::Identity { role, name: identity.name, avatar: identity.avatar };
        if let Err(e) = self.store.update_profile(caller.tenant(), caller.user(), update).await {
            warn!(error = %e, "could not record the user's name and avatar");
        }
    }

    /// Names and avatars of `users`. Customers learn those of the tenant's
    /// agents and admins and their own; agents and admins, anyone's. The
    /// note is not part of it.
    pub async fn profiles(&self, caller: &Caller, users: &[String]) -> Result<Vec<Profile>, ClientError> {
        if users.len() > MAX_PROFILE_LOOKUP {
            return Err(invalid(format!("at most {MAX_PROFILE_LOOKUP} users at once")));
        }
        for u in users {
            validate_id("user", u).map_err(invalid)?;
        }
        let mut out = self.store.profiles(caller.tenant(), users).await?;
        if caller.role == Role::Customer {
            out.retain(|p| p.user == caller.user || p.role == "agent" || p.role == "admin");
        }
        for p in &mut out {
            (p.note, p.note_by, p.note_ms) = (String::new(), String::new(), 0);
        }
        Ok(out)
    }

    /// A customer's profile with the agents' note (agents, admins).
    pub async fn customer(&self, caller: &Caller, customer: &str) -> Result<Profile, ClientError> {
        require(caller, &[Role::Agent, Role::Admin], "a customer's note")?;
        validate_id("customer", customer).map_err(invalid)?;
        let found = self.store.profiles(caller.tenant(), &[customer.to_string()]).await?.pop();
        Ok(found.unwrap_or_else(|| Profile { user: customer.into(), ..Default::default() }))
    }

    /// Replaces the agents' note about a customer (agents, admins).
    pub async fn put_note(&self, caller: &Caller, customer: &str, note: String) -> Result<Profile, ClientError> {
        require(caller, &[Role::Agent, Role::Admin], "writing a customer's note")?;
        validate_id("customer", customer).map_err(invalid)?;
        if note.len() > MAX_NOTE_BYTES {
            return Err(invalid(format!("note is longer than {MAX_NOTE_BYTES} bytes")));
        }
        let update = ProfileUpdate::Note { note, by: caller.user.clone(), at_ms: im_core::now_ms() };
        self.store.update_profile(caller.tenant(), customer, update).await?;
        self.customer(caller, customer).await
    }

    /// `user`'s ended sessions, newest first, that ended before
    /// `before_ms` (0: any). Customers read their own; agents and admins
    /// anyone's.
    pub async fn past_sessions(
        &self,
        caller: &Caller,
        user: &str,
        before_ms: u64,
        limit: usize,
    ) -> Result<PastSessions, ClientError> {
        validate_id("user", user).map_err(invalid)?;
        if caller.role == Role::Customer && caller.user != user {
            return Err(err(ErrorCode::Forbidden, "customers read their own past sessions only"));
        }
        let limit = limit.clamp(1, MAX_PAST_SESSIONS);
        let sessions = self.store.past_sessions(caller.tenant(), user, before_ms, limit).await?;
        let next_before_ms = if sessions.len() == limit { sessions.last().map_or(0, |s| s.ended_ms) } else { 0 };
        Ok(PastSessions { sessions, next_before_ms })
    }

    /// The groups of the tenant and the agents who take new sessions now,
    /// except the caller (agents, admins).
    pub async fn transfer_targets(&self, caller: &Caller) -> Result<TransferTargets, ClientError> {
        require(caller, &[Role::Agent, Role::Admin], "the transfer targets")?;
        let groups = self.service_groups(caller).await?;
        let mut agents: Vec<Agent> = Vec::new();
        for a in groups.iter().flat_map(|g| &g.agents) {
            if a.available() && a.id != caller.user && !agents.iter().any(|b| b.id == a.id) {
                agents.push(a.clone());
            }
        }
        agents.sort_by(|a, b| {
            (a.load * 1000 / a.capacity.max(1), &a.id).cmp(&(b.load * 1000 / b.capacity.max(1), &b.id))
        });
        Ok(TransferTargets { groups, agents })
    }
}
