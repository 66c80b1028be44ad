//! The embedded backend: one data directory, no external service. Presence
//! is in memory (a single node's connections die with it).
//!
//! A write-ahead log of our own ([`wal`]) in front of one redb database.
//! The writer thread (`writer`, running `txn`) turns each batch of queued
//! operations (group commit) into one log record, synced with one
//! `fdatasync` when the batch holds a message, and answers the callers; the
//! applier thread (`applier`) writes the logged batches into redb without a
//! sync and checkpoints every 10 s (or 64 MiB of log), after which the
//! covered log is deleted; `recovery` replays the log after a crash. Reads
//! (`reads`) run on tokio's blocking pool against redb's MVCC snapshots,
//! once redb holds every write answered before the read started. The tables
//! are declared once, in `tables`. See docs/storage.md.

mod applier;
mod cs;
mod errors;
mod files;
mod keys;
mod options;
mod presence;
mod reads;
mod records;
mod recovery;
mod revocations;
mod search;
mod settings;
mod shared;
mod store;
mod tables;
mod txn;
pub mod wal;
mod writer;

pub use options::EmbeddedOptions;
pub use presence::MemoryPresence;
pub use search::EmbeddedSearch;
pub use store::EmbeddedStore;

use std::path::Path;
use std::sync::Arc;
use storage::{Backends, Result};

/// The embedded backend on `dir`: every storage trait. Keep the returned
/// store to close it.
pub fn open(dir: &Path, options: EmbeddedOptions) -> Result<(Backends, Arc<EmbeddedStore>)> {
    {
        let store = EmbeddedStore::open(dir, options)?;
        let backends = Backends {
            messages: store.clone(),
            pending: store.clone(),
            devices: store.clone(),
            presence: Arc::new(MemoryPresence::default()),
            bus: None,
            health: store.clone(),
            cs: cs::EmbeddedCs::open(store.clone())?,
            revocations: store.clone(),
            files: store.clone(),
            settings: store.clone(),
            search: EmbeddedSearch::open(store.clone(), &dir.join("search"))?,
            push_queue: None,
        };
        Ok((backends, store))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use storage::{DeviceKey, DeviceRegistry, MessageStore, NewMessage, PendingStore, StorageError};

    async fn fresh() -> Option<(storage::Backends, tempfile::TempDir)> {
        let dir = tempfile::tempdir().unwrap();
        let (b, _) = open(dir.path(), EmbeddedOptions::default()).unwrap();
        Some((b, dir))
    }

    storage::conformance_suite!(fresh);

    fn text(s: &str) -> im_core::pb::Content {
        im_core::pb::Content { kind: Some(im_core::pb::content::Kind::Text(s.into())) }
    }

    pub(crate) fn new_message(cmid: &str) -> NewMessage {
        NewMessage {
            tenant: "t".into(),
            conversation_id: im_core::conversation_id("t", "alice", "bob"),
            from_user: "alice".into(),
            from_device: "a1".into(),
            to_user: "bob".into(),
            client_msg_id: cmid.into(),
            content: text(cmid),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn close_and_reopen_keeps_messages_pending_and_acks() {
        let dir = tempfile::tempdir().unwrap();
        let bob = DeviceKey::new("t", "bob", "b1");
        let ids = {
            let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).unwrap();
            store.register_device(&bob).await.unwrap();
            let mut ids = Vec::new();
            for i in 0..3 {
                ids.push(store.append(new_message(&format!("m{i}"))).await.unwrap().message.msg_id);
            }
            // Acks commit without fsync; close must persist them.
            store.ack(&bob, &ids[..1]).await.unwrap();
            store.close().await;
            let e = store.append(new_message("after-close")).await.unwrap_err();
            assert!(matches!(e, StorageError::Unavailable(_)));
            ids
        };
        let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).unwrap();
        assert_eq!(store.pending_count(&bob).await.unwrap(), 2);
        let pending: Vec<String> = store.pending(&bob, None, 10).await.unwrap().into_iter().map(|m| m.msg_id).collect();
        assert_eq!(pending, ids[1..].to_vec());
        let again = store.append(new_message("m0")).await.unwrap();
        assert!(again.duplicate, "idempotency survives a restart");
        assert_eq!(store.append(new_message("m3")).await.unwrap().message.seq, 4);
        store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn device_limit_forgets_the_least_recently_seen() {
        let dir = tempfile::tempdir().unwrap();
        let options = EmbeddedOptions { max_devices_per_user: 2, ..EmbeddedOptions::default() };
        let store = EmbeddedStore::open(dir.path(), options).unwrap();
        let dev = |d: &str| DeviceKey::new("t", "bob", d);
        store.register_device(&dev("old")).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        store.register_device(&dev("recent")).await.unwrap();
        store.append(new_message("m0")).await.unwrap();
        assert_eq!(store.pending_count(&dev("old")).await.unwrap(), 1);
        let reg = store.register_device(&dev("third")).await.unwrap();
        assert_eq!(reg.evicted.as_deref(), Some("old"));
        assert_eq!(store.pending_count(&dev("old")).await.unwrap(), 0, "forgotten with its pending set");
        assert_eq!(store.pending_count(&dev("recent")).await.unwrap(), 1);
        store.append(new_message("m1")).await.unwrap();
        assert_eq!(store.pending_count(&dev("third")).await.unwrap(), 1);
        assert_eq!(store.pending_count(&dev("old")).await.unwrap(), 0);
        store.close().await;
    }
}
