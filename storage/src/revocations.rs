//! Token revocation: per user, a time before which their tokens are
//! refused. Kept durably on both backends (the embedded database; MongoDB
//! in a cluster), so it survives restarts and every node sees it.

use crate::{Result, StorageError};
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

mod embedded {
    use super::*;
    use crate::embedded::{CS, EmbeddedStore};
    use crate::keys::Key;
    use redb::ReadableDatabase;

    fn key(tenant: &str, user: &str) -> Vec<u8> {
        Key::new().s("r").s(tenant).s(user).into_vec()
    }

    fn unavailable(e: impl std::fmt::Display) -> StorageError {
        StorageError::Unavailable(e.to_string())
    }

    async fn read(store: &EmbeddedStore, k: Vec<u8>) -> Result<u64> {
        store
            .read_db(move |db| {
                let txn = db.begin_read().map_err(unavailable)?;
                let table = txn.open_table(CS).map_err(unavailable)?;
                let v = table.get(k.as_slice()).map_err(unavailable)?;
                Ok(v.and_then(|v| v.value().try_into().ok()).map_or(0, u64::from_be_bytes))
            })
            .await
    }

    #[async_trait]
    impl Revocations for EmbeddedStore {
        async fn revoke_before(&self, tenant: &str, user: &str, before_s: u64) -> Result<u64> {
            // One at a time: read, raise, write.
            let _one = self.revocation_lock().lock().await;
            let k = key(tenant, user);
            let now = read(self, k.clone()).await?.max(before_s);
            let written = self.queue_records(vec![(k, Some(now.to_be_bytes().to_vec()))]).await?;
            written.await.map_err(|_| unavailable("the store writer stopped"))??;
            Ok(now)
        }

        async fn revoked_before(&self, tenant: &str, user: &str) -> Result<u64> {
            read(self, key(tenant, user)).await
        }
    }
}

mod cluster {
    use super::*;
    use crate::cluster::ClusterStore;
    use mongodb::bson::doc;

    fn id(tenant: &str, user: &str) -> String {
        format!("{tenant}\u{0}{user}")
    }

    fn mongo_err(e: mongodb::error::Error) -> StorageError {
        StorageError::Unavailable(format!("MongoDB: {e}"))
    }

    #[async_trait]
    impl Revocations for ClusterStore {
        async fn revoke_before(&self, tenant: &str, user: &str, before_s: u64) -> Result<u64> {
            let c = self.revocations();
            let before = i64::try_from(before_s).unwrap_or(i64::MAX);
            c.update_one(doc! { "_id": id(tenant, user) }, doc! { "$max": { "before_s": before } })
                .upsert(true)
                .await
                .map_err(mongo_err)?;
            self.revoked_before(tenant, user).await
        }

        async fn revoked_before(&self, tenant: &str, user: &str) -> Result<u64> {
            let found = self.revocations().find_one(doc! { "_id": id(tenant, user) }).await.map_err(mongo_err)?;
            Ok(found.and_then(|d| d.get_i64("before_s").ok()).map_or(0, |v| v.max(0) as u64))
        }
    }
}
