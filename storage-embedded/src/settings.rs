use crate::errors::unavailable;
use crate::keys::Key;
use crate::store::EmbeddedStore;
use crate::tables::CS;
use async_trait::async_trait;
use redb::ReadableDatabase;
use storage::{Result, Settings};

fn key(name: &str) -> Vec<u8> {
    Key::new().s("settings").s(name).into_vec()
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
