//! The embedded backend: one directory, no external service. Messages,
//! pending ids, devices and customer-service records live in a
//! [fjall](https://crates.io/crates/fjall) database (an LSM tree: a journal,
//! memtables, sorted tables compacted in the background) under
//! `<data_dir>/store`. Presence is in memory (a single node's connections
//! die with it).
//!
//! All writes go through one writer thread ([`writer`]) that turns each
//! batch of queued operations into one atomic journal append, synced once
//! (`fdatasync`) when the batch holds a message: a message is durable before
//! its append returns. Reads run on tokio's blocking pool against the
//! memtables and tables and never wait for the writer. See docs/storage.md.

mod layout;
mod presence;
mod writer;

pub use presence::MemoryPresence;

use crate::keys::Reader;
use crate::{
    Appended, Conversation, DeviceKey, DeviceRegistration, DeviceRegistry, HistoryPage, HistoryQuery, MessageStore,
    NewMessage, PendingCursor, PendingStore, Result, StorageError,
};
use async_trait::async_trait;
use fjall::{Database, Keyspace, KeyspaceCreateOptions};
use im_core::pb::Message;
use layout::*;
use prost::Message as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use writer::{WriteOp, Writer};

/// Puts (Some) or deletes (None) of customer-service records, by key.
pub(crate) type Records = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// The device slot of a user who has not connected from any device yet.
/// Real device ids are never empty.
const USER_SLOT: &str = "";

/// The database's directory inside the data directory.
const STORE_DIR: &str = "store";

/// Tuning of the embedded backend.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// Most operations applied in one write batch.
    pub max_batch: usize,
    /// Bound of the writer's queue; callers wait when it is full.
    pub queue: usize,
    /// Devices remembered per user; the least recently seen is forgotten.
    pub max_devices_per_user: usize,
    /// Block cache of the tables on disk.
    pub cache_bytes: u64,
    /// Memtable size of each of the seven keyspaces; a full memtable is
    /// flushed to a table in the background.
    pub memtable_bytes: u64,
    /// Journal on disk before memtables are flushed to free it (at least 64 MiB).
    pub journal_bytes: u64,
    /// Conversations (for their last seq) and users (for their devices) the
    /// writer remembers between batches.
    pub writer_cache_entries: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            max_batch: 4096,
            queue: 8192,
            max_devices_per_user: 16,
            cache_bytes: 64 << 20,
            memtable_bytes: 16 << 20,
            journal_bytes: 256 << 20,
            writer_cache_entries: 1 << 16,
        }
    }
}

/// The keyspaces, in the order of [`Ks`].
#[derive(Clone)]
pub(crate) struct Keyspaces([Keyspace; Ks::COUNT]);

/// One keyspace (see [`layout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ks {
    Messages,
    MsgIndex,
    Conversations,
    Idempotency,
    Pending,
    Devices,
    Cs,
}

impl Ks {
    const COUNT: usize = 7;
    const NAMES: [&'static str; Ks::COUNT] =
        ["messages", "msg_index", "conversations", "idempotency", "pending", "devices", "cs"];
}

impl std::ops::Index<Ks> for Keyspaces {
    type Output = Keyspace;
    fn index(&self, ks: Ks) -> &Keyspace {
        &self.0[ks as usize]
    }
}

/// An open database.
pub(crate) struct Db {
    pub(crate) db: Database,
    pub(crate) ks: Keyspaces,
}

/// Messages, pending ids, devices and customer-service records in one fjall
/// database.
pub struct EmbeddedStore {
    /// `None` once closed; readers hold a clone while they read.
    db: RwLock<Option<Arc<Db>>>,
    tx: mpsc::Sender<WriteOp>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The last failed commit, if the one after it has not succeeded.
    failure: Arc<Mutex<Option<String>>>,
    path: PathBuf,
}

impl EmbeddedStore {
    /// Opens (or creates) the database in `dir/store`, replaying its journal.
    pub fn open(dir: &Path, options: EmbeddedOptions) -> Result<Arc<Self>> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StorageError::Unavailable(format!("cannot create data directory {}: {e}", dir.display())))?;
        let earlier = dir.join("dongdong.redb");
        if earlier.exists() {
            return Err(StorageError::Unavailable(format!(
                "{} holds data in the format of an earlier dongdong (dongdong.redb), which this version does not \
                 read; start on another data directory (storage.data_dir), or move the file away to start empty",
                dir.display()
            )));
        }
        let path = dir.join(STORE_DIR);
        let db = Database::builder(&path)
            .cache_size(options.cache_bytes)
            .max_journaling_size(options.journal_bytes.max(64 << 20))
            .open()
            .map_err(|e| StorageError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
        let keyspace = |name: &str| {
            let memtable = options.memtable_bytes.max(1 << 20);
            db.keyspace(name, || KeyspaceCreateOptions::default().max_memtable_size(memtable))
                .map_err(|e| StorageError::Unavailable(format!("cannot open keyspace {name}: {e}")))
        };
        let ks = Keyspaces([
            keyspace(Ks::NAMES[0])?,
            keyspace(Ks::NAMES[1])?,
            keyspace(Ks::NAMES[2])?,
            keyspace(Ks::NAMES[3])?,
            keyspace(Ks::NAMES[4])?,
            keyspace(Ks::NAMES[5])?,
            keyspace(Ks::NAMES[6])?,
        ]);
        let failure = Arc::new(Mutex::new(None));
        let (tx, rx) = mpsc::channel(options.queue.max(1));
        let writer = Writer::new(db.clone(), ks.clone(), options, failure.clone());
        let writer = std::thread::Builder::new()
            .name("dongdong-store-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StorageError::Unavailable(format!("cannot start the writer thread: {e}")))?;
        Ok(Arc::new(Self {
            db: RwLock::new(Some(Arc::new(Db { db, ks }))),
            tx,
            writer: Mutex::new(Some(writer)),
            failure,
            path,
        }))
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes on disk: journal and tables.
    pub fn disk_bytes(&self) -> u64 {
        self.handle().ok().and_then(|d| d.db.disk_space().ok()).unwrap_or(0)
    }

    /// Queues customer-service records for the writer, which applies them
    /// in queue order; the receiver answers once they are durable.
    pub(crate) async fn queue_records(&self, records: Records) -> Result<oneshot::Receiver<Result<()>>> {
        let (reply_tx, reply_rx) = oneshot::channel();
        self.tx
            .send(WriteOp::Records(records, reply_tx))
            .await
            .map_err(|_| StorageError::Unavailable("the store is closed".into()))?;
        Ok(reply_rx)
    }

    pub(crate) fn handle(&self) -> Result<Arc<Db>> {
        let db = self.db.read().map_err(|_| unavailable("the store lock is poisoned"))?;
        db.clone().ok_or_else(|| unavailable("the store is closed"))
    }

    /// Runs a read on the blocking pool.
    pub(crate) async fn read<T: Send + 'static>(&self, f: impl FnOnce(&Db) -> Result<T> + Send + 'static) -> Result<T> {
        let db = self.handle()?;
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| StorageError::Unavailable(format!("read task failed: {e}")))?
    }

    /// Stops accepting writes, lets the writer finish its queue, syncs the
    /// journal and releases the database (and its lock on the directory)
    /// once reads in flight are done. Later calls fail with `Unavailable`.
    pub async fn close(&self) {
        let handle = self.writer.lock().ok().and_then(|mut w| w.take());
        let Some(handle) = handle else { return };
        // The writer applies what is queued before the Close, then stops.
        let _ = self.tx.send(WriteOp::Close).await;
        let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        let db = self.db.write().ok().and_then(|mut db| db.take());
        let Some(mut db) = db else { return };
        for _ in 0..10_000 {
            match Arc::try_unwrap(db) {
                Ok(last) => {
                    // Dropping stops fjall's workers; it may block briefly.
                    let _ = tokio::task::spawn_blocking(move || drop(last)).await;
                    return;
                }
                Err(shared) => {
                    db = shared;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
        tracing::warn!("reads still hold the store after 10 s; it is released when they finish");
    }

    async fn submit<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> WriteOp) -> Result<T> {
        let (reply_tx, reply_rx) = oneshot::channel();
        self.tx.send(make(reply_tx)).await.map_err(|_| StorageError::Unavailable("the store is closed".into()))?;
        reply_rx.await.map_err(|_| StorageError::Unavailable("the store writer stopped".into()))?
    }
}

fn unavailable(e: impl std::fmt::Display) -> StorageError {
    StorageError::Unavailable(e.to_string())
}

fn corrupt(what: &str) -> StorageError {
    StorageError::Corrupt(what.to_string())
}

fn decode_message(bytes: &[u8]) -> Result<Message> {
    Message::decode(bytes).map_err(|e| StorageError::Corrupt(format!("message record: {e}")))
}

fn decode_conversation(id: &str, bytes: &[u8], last_seq: u64) -> Result<Conversation> {
    let mut r = Reader::new(bytes);
    let (Some(tenant), Some(a), Some(b)) = (r.s(), r.s(), r.s()) else {
        return Err(corrupt("conversation record"));
    };
    Ok(Conversation {
        tenant: tenant.to_string(),
        conversation_id: id.to_string(),
        members: [a.to_string(), b.to_string()],
        last_seq,
    })
}

/// The highest seq stored in a conversation, 0 if none.
fn last_seq(messages: &Keyspace, conversation: &str) -> Result<u64> {
    let Some(item) = messages.prefix(conversation_prefix(conversation)).next_back() else {
        return Ok(0);
    };
    let k = item.key().map_err(unavailable)?;
    let seq = k.get(k.len().saturating_sub(8)..).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
    seq.ok_or_else(|| corrupt("message key"))
}

#[async_trait]
impl MessageStore for EmbeddedStore {
    async fn append(&self, msg: NewMessage) -> Result<Appended> {
        self.submit(|tx| WriteOp::Append(msg, tx)).await
    }

    /// Queued is ordered: the single writer assigns seqs in queue order.
    async fn start_append(&self, msg: NewMessage) -> Result<crate::PendingAppend> {
        let (reply_tx, reply_rx) = oneshot::channel();
        self.tx
            .send(WriteOp::Append(msg, reply_tx))
            .await
            .map_err(|_| StorageError::Unavailable("the store is closed".into()))?;
        Ok(Box::pin(async move {
            reply_rx.await.map_err(|_| StorageError::Unavailable("the store writer stopped".into()))?
        }))
    }

    async fn get(&self, _tenant: &str, conversation_id: &str, seq: u64) -> Result<Option<Message>> {
        let key = message_key(conversation_id, seq);
        self.read(move |db| match db.ks[Ks::Messages].get(&key).map_err(unavailable)? {
            Some(v) => decode_message(&v).map(Some),
            None => Ok(None),
        })
        .await
    }

    async fn conversation(&self, tenant: &str, conversation_id: &str) -> Result<Option<Conversation>> {
        let (tenant, id) = (tenant.to_string(), conversation_id.to_string());
        self.read(move |db| {
            let Some(v) = db.ks[Ks::Conversations].get(id.as_bytes()).map_err(unavailable)? else {
                return Ok(None);
            };
            let conv = decode_conversation(&id, &v, last_seq(&db.ks[Ks::Messages], &id)?)?;
            Ok((conv.tenant == tenant).then_some(conv))
        })
        .await
    }

    async fn history(&self, q: HistoryQuery) -> Result<HistoryPage> {
        self.read(move |db| {
            let table = &db.ks[Ks::Messages];
            let limit = q.limit.max(1);
            let mut messages = Vec::with_capacity(limit.min(256));
            let has_more;
            if q.before_seq > 0 {
                let lo = message_key(&q.conversation_id, 0);
                let hi = message_key(&q.conversation_id, q.before_seq);
                let mut iter = table.range(lo..hi).rev();
                for item in iter.by_ref().take(limit) {
                    messages.push(decode_message(&item.value().map_err(unavailable)?)?);
                }
                has_more = iter.next().is_some();
                messages.reverse();
            } else {
                let lo = message_key(&q.conversation_id, q.after_seq.saturating_add(1));
                let hi = message_key(&q.conversation_id, u64::MAX);
                let mut iter = table.range(lo..=hi);
                for item in iter.by_ref().take(limit) {
                    messages.push(decode_message(&item.value().map_err(unavailable)?)?);
                }
                has_more = iter.next().is_some();
            }
            Ok(HistoryPage { messages, has_more })
        })
        .await
    }
}

#[async_trait]
impl PendingStore for EmbeddedStore {
    async fn pending(&self, device: &DeviceKey, after: Option<&PendingCursor>, limit: usize) -> Result<Vec<Message>> {
        let prefix = device_key(&device.tenant, &device.user, &device.device);
        let start = match after {
            Some(c) => {
                let mut k = pending_key(&device.tenant, &device.user, &device.device, &c.conversation_id, c.seq);
                k.push(0); // strictly after
                k
            }
            None => prefix.clone(),
        };
        self.read(move |db| {
            let mut out = Vec::new();
            for item in db.ks[Ks::Pending].range(start..) {
                if out.len() >= limit {
                    break;
                }
                let k = item.key().map_err(unavailable)?;
                if !k.starts_with(&prefix) {
                    break;
                }
                let mut r = Reader::new(&k[prefix.len()..]);
                let (Some(conv), Some(seq)) = (r.s(), r.n()) else {
                    return Err(corrupt("pending key"));
                };
                if let Some(v) = db.ks[Ks::Messages].get(message_key(conv, seq)).map_err(unavailable)? {
                    out.push(decode_message(&v)?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn pending_count(&self, device: &DeviceKey) -> Result<u64> {
        let key = device_key(&device.tenant, &device.user, &device.device);
        self.read(move |db| Ok(db.ks[Ks::Pending].prefix(&key).count() as u64)).await
    }

    async fn ack(&self, device: &DeviceKey, msg_ids: &[String]) -> Result<usize> {
        if msg_ids.is_empty() {
            return Ok(0);
        }
        let (device, ids) = (device.clone(), msg_ids.to_vec());
        self.submit(|tx| WriteOp::Ack(device, ids, tx)).await
    }

    /// One writer operation for the whole batch: it shares the next commit.
    async fn ack_batch(&self, acks: &[(Arc<DeviceKey>, Vec<String>)]) -> Result<usize> {
        if acks.is_empty() {
            return Ok(0);
        }
        let acks = acks.to_vec();
        self.submit(|tx| WriteOp::AckBatch(acks, tx)).await
    }
}

#[async_trait]
impl DeviceRegistry for EmbeddedStore {
    async fn register_device(&self, device: &DeviceKey) -> Result<DeviceRegistration> {
        let device = device.clone();
        self.submit(|tx| WriteOp::Register(device, tx)).await
    }
}

#[async_trait]
impl crate::HealthCheck for EmbeddedStore {
    async fn check(&self) -> Vec<(&'static str, std::result::Result<(), String>)> {
        let closed = self.writer.lock().map(|w| w.is_none()).unwrap_or(true);
        let failure = self.failure.lock().ok().and_then(|f| f.clone());
        let state = match (closed, failure) {
            (true, _) => Err("the store is closed".into()),
            (false, Some(e)) => Err(e),
            (false, None) => Ok(()),
        };
        vec![("embedded", state)]
    }
}

impl crate::Backends {
    /// The embedded backend on `dir`. Keep the returned store to close it.
    pub fn embedded(dir: &Path, options: EmbeddedOptions) -> Result<(Self, Arc<EmbeddedStore>)> {
        let store = EmbeddedStore::open(dir, options)?;
        let backends = Self {
            messages: store.clone(),
            pending: store.clone(),
            devices: store.clone(),
            presence: Arc::new(MemoryPresence::default()),
            bus: None,
            health: store.clone(),
            cs: crate::cs::embedded::EmbeddedCs::open(store.clone())?,
        };
        Ok((backends, store))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn fresh() -> Option<(crate::Backends, tempfile::TempDir)> {
        let dir = tempfile::tempdir().unwrap();
        let (b, _) = crate::Backends::embedded(dir.path(), EmbeddedOptions::default()).unwrap();
        Some((b, dir))
    }

    crate::conformance_suite!(fresh);

    fn text(s: &str) -> im_core::pb::Content {
        im_core::pb::Content { kind: Some(im_core::pb::content::Kind::Text(s.into())) }
    }

    fn new_message(cmid: &str) -> NewMessage {
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
