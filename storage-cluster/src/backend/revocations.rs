use super::ClusterStore;
use async_trait::async_trait;
use mongodb::bson::doc;
use storage::{Result, Revocations, StorageError};

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
