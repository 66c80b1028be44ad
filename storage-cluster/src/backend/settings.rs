use super::ClusterStore;
use async_trait::async_trait;
use mongodb::bson::doc;
use storage::{Result, Settings, StorageError};

fn mongo_err(e: mongodb::error::Error) -> StorageError {
    StorageError::Unavailable(format!("MongoDB: {e}"))
}

#[async_trait]
impl Settings for ClusterStore {
    async fn setting(&self, name: &str) -> Result<Option<String>> {
        let found = self.settings().find_one(doc! { "_id": name }).await.map_err(mongo_err)?;
        Ok(found.and_then(|d| d.get_str("value").ok().map(str::to_string)))
    }

    async fn set_setting(&self, name: &str, value: Option<String>) -> Result<()> {
        let c = self.settings();
        match value {
            Some(v) => {
                c.update_one(doc! { "_id": name }, doc! { "$set": { "value": v } })
                    .upsert(true)
                    .await
                    .map_err(mongo_err)?;
            }
            None => {
                c.delete_one(doc! { "_id": name }).await.map_err(mongo_err)?;
            }
        }
        Ok(())
    }
}
