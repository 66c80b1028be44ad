//! Settings an operator changes while the cluster runs (the rate limits set
//! through the admin API): small named documents, kept durably on both
//! backends (the embedded database; MongoDB in a cluster) so that they
//! survive restarts and every node reads the same.

use crate::{Result, StorageError};

use async_trait::async_trait;

/// Named settings documents.
#[async_trait]
pub trait Settings: Send + Sync + 'static {
    /// The value stored under `name` (`None`: never set, or cleared).
    async fn setting(&self, name: &str) -> Result<Option<String>>;

    /// Stores `value` under `name`, or clears it with `None`.
    async fn set_setting(&self, name: &str, value: Option<String>) -> Result<()>;
}

mod embedded {
    use super::*;
    use crate::embedded::{CS, EmbeddedStore};
    use crate::keys::Key;
    use redb::ReadableDatabase;

    fn key(name: &str) -> Vec<u8> {
        Key::new().s("settings").s(name).into_vec()
    }

    fn unavailable(e: impl std::fmt::Display) -> StorageError {
        StorageError::Unavailable(e.to_string())
    }

    #[async_trait]
    impl Settings for EmbeddedStore {
        async fn setting(&self, name: &str) -> Result<Option<String>> {
            let k = key(name);
            self.read_db(move |db| {
                let txn = db.begin_read().map_err(unavailable)?;
                let table = txn.open_table(CS).map_err(unavailable)?;
                let v = table.get(k.as_slice()).map_err(unavailable)?;
                Ok(v.map(|v| String::from_utf8_lossy(v.value()).into_owned()))
            })
            .await
        }

        async fn set_setting(&self, name: &str, value: Option<String>) -> Result<()> {
            let written = self.queue_records(vec![(key(name), value.map(String::into_bytes))]).await?;
            written.await.map_err(|_| unavailable("the store writer stopped"))?
        }
    }
}

mod cluster {
    use super::*;
    use crate::cluster::ClusterStore;
    use mongodb::bson::doc;

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
}
