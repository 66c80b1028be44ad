use crate::errors::unavailable;
use crate::keys::Key;
use crate::store::EmbeddedStore;
use crate::tables::CS;
use async_trait::async_trait;
use redb::ReadableDatabase;
use storage::{Result, Revocations};

fn key(tenant: &str, user: &str) -> Vec<u8> {
    Key::new().s("r").s(tenant).s(user).into_vec()
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
