//! Settings an operator changes while the cluster runs (the rate limits set
//! through the admin API): small named documents, kept durably on both
//! backends (the embedded database; MongoDB in a cluster) so that they
//! survive restarts and every node reads the same.

use crate::Result;

use async_trait::async_trait;

/// Named settings documents.
#[async_trait]
pub trait Settings: Send + Sync + 'static {
    /// The value stored under `name` (`None`: never set, or cleared).
    async fn setting(&self, name: &str) -> Result<Option<String>>;

    /// Stores `value` under `name`, or clears it with `None`.
    async fn set_setting(&self, name: &str, value: Option<String>) -> Result<()>;
}
