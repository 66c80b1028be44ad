//! Customer-service storage: [`CsStore`], which each backend implements by
//! running the rules of `cs-core`: the embedded backend runs the Rust engine
//! on in-memory state and persists the records it touched; the cluster
//! backend runs the Lua copy inside Redis.
//!
//! The domain types are re-exported from `cs-core`, so callers keep naming
//! them `storage::cs::…`.

pub use cs_core::*;

use async_trait::async_trait;

use crate::Result;

/// Customer-service storage.
#[async_trait]
pub trait CsStore: Send + Sync + 'static {
    /// Runs one command atomically, then the assignment pass.
    async fn execute(&self, tenant: &str, command: CsCommand, now_ms: u64) -> Result<CsOutcome>;

    async fn groups(&self, tenant: &str) -> Result<Vec<Group>>;

    /// The group's settings, members, queue and open sessions.
    async fn group_view(&self, tenant: &str, group: &str) -> Result<Option<GroupView>>;

    async fn agent(&self, tenant: &str, agent: &str) -> Result<Option<Agent>>;

    async fn session(&self, tenant: &str, session_id: &str) -> Result<Option<Session>>;

    /// Waiting and active sessions where `user` is the customer or the agent.
    async fn user_sessions(&self, tenant: &str, user: &str) -> Result<Vec<Session>>;

    /// The tenant's sessions that ended in `from_ms..to_ms`, newest first,
    /// at most `limit` (for reports; kept as long as ended sessions are).
    async fn ended_sessions(&self, tenant: &str, from_ms: u64, to_ms: u64, limit: usize) -> Result<Vec<Session>>;

    /// Ended sessions `user` took part in ([`Session::parties`]) that ended
    /// before `before_ms` (0: any), newest first, at most `limit`. Kept as
    /// long as the ended sessions are (the cluster's `cs.retention`).
    async fn past_sessions(&self, tenant: &str, user: &str, before_ms: u64, limit: usize) -> Result<Vec<Session>>;

    /// Changes what `update` names of the user's profile, creating it.
    async fn update_profile(&self, tenant: &str, user: &str, update: ProfileUpdate) -> Result<()>;

    /// The profiles of those of `users` that have one, in no order.
    async fn profiles(&self, tenant: &str, users: &[String]) -> Result<Vec<Profile>>;

    /// Unclaimed left messages of a group, oldest first.
    async fn left_messages(&self, tenant: &str, group: &str, limit: usize) -> Result<Vec<LeftMessage>>;

    /// Creates or replaces a quick reply, atomically with the limit: a new
    /// one is refused (`false`) when the tenant already has `max` replies.
    async fn put_quick_reply(&self, tenant: &str, reply: QuickReply, max: usize) -> Result<bool>;

    async fn delete_quick_reply(&self, tenant: &str, id: &str) -> Result<bool>;

    /// Quick replies of these groups plus the personal ones of `owner`.
    async fn quick_replies(&self, tenant: &str, groups: &[String], owner: &str) -> Result<Vec<QuickReply>>;

    async fn quick_reply(&self, tenant: &str, id: &str) -> Result<Option<QuickReply>>;

    /// Tenants that have customer-service state.
    async fn tenants(&self) -> Result<Vec<String>>;

    /// The tenants `node` sweeps now, so that each tenant is swept by one
    /// node: all of them on the embedded backend (one node); in a cluster,
    /// those due (a command ran, or a timed rule is due; see
    /// [`swept`](Self::swept)) whose lease `node` holds or takes because it
    /// expired. A lease
    /// lasts `lease` from each call of its holder, so another node takes
    /// over that long after the holder stops.
    async fn sweep_tenants(&self, node: &str, lease: std::time::Duration) -> Result<Vec<String>>;

    /// `tenant` was swept (the sweep's outcome had `version`) and next
    /// needs one at `next_due_ms`, or only after a command when `None`.
    /// A store that sweeps every tenant every time ignores it; one that
    /// sweeps by due time (the cluster's) must not lose the mark of a
    /// command that ran after the sweep.
    async fn swept(&self, _tenant: &str, _version: u64, _next_due_ms: Option<u64>) -> Result<()> {
        Ok(())
    }
}
