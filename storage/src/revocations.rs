//! Token revocation: per user, a time before which their tokens are
//! refused. Kept durably on both backends (the embedded database; MongoDB
//! in a cluster), so it survives restarts and every node sees it.

use crate::Result;
use async_trait::async_trait;

/// Revoked tokens, by user.
#[async_trait]
pub trait Revocations: Send + Sync + 'static {
    /// Refuses the user's tokens issued before `before_s` (Unix seconds).
    /// It only moves forward: an earlier time than the one stored changes
    /// nothing. Returns the time now in force.
    async fn revoke_before(&self, tenant: &str, user: &str, before_s: u64) -> Result<u64>;

    /// The time before which the user's tokens are refused (0: none).
    async fn revoked_before(&self, tenant: &str, user: &str) -> Result<u64>;
}
