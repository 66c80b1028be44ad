//! The embedded backend: one data directory, no external service. Presence
//! is in memory (a single node's connections die with it).
//!
//! A write-ahead log of our own ([`wal`]) in front of one redb database.
//! The writer thread turns each batch of queued operations (group commit)
//! into one log record, synced with one `fdatasync` when the batch holds a
//! message, and answers the callers; the applier thread writes the logged
//! batches into redb without a sync and checkpoints every 10 s (or 64 MiB of
//! log), after which the covered log is deleted. Reads run on tokio's
//! blocking pool against redb's MVCC snapshots, once redb holds every write
//! answered before the read started. See [`writer`] and docs/storage.md.

mod cs;
mod files;
mod keys;
mod presence;
mod revocations;
mod settings;
pub mod wal;
mod writer;

pub use presence::MemoryPresence;

use crate::keys::{Key, Reader};
use async_trait::async_trait;
use im_core::pb::Message;
use prost::Message as _;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, Table, TableDefinition};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use storage::{
    Appended, Backends, Conversation, ConversationCursor, ConversationsPage, DeviceKey, DeviceRegistration,
    DeviceRegistry, HistoryPage, HistoryQuery, MarkOutcome, MarkRead, MessageStore, NewMessage, PendingCursor,
    PendingEvent, PendingStore, ReadState, RecallOutcome, Result, StorageError,
};
use tokio::sync::{mpsc, oneshot};
use wal::{Op, Table as T, Wal};
use writer::{Applied, Shared};

/// (conversation, seq) -> protobuf `Message`.
const MESSAGES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("messages");
/// msg_id -> (conversation, seq).
const MSG_INDEX: TableDefinition<&str, &[u8]> = TableDefinition::new("msg_index");
/// conversation -> (tenant, member a, member b). Written once, with seq 1;
/// the last seq is the last key of the conversation in `messages`.
const CONVERSATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("conversations");
/// (tenant, sender, client_msg_id) -> msg_id.
const IDEMPOTENCY: TableDefinition<&[u8], &str> = TableDefinition::new("idempotency");
/// (tenant, user, device, conversation, seq) -> msg_id. Device "" holds the
/// messages of a user who has no device yet.
const PENDING: TableDefinition<&[u8], &str> = TableDefinition::new("pending");
/// (tenant, user, device) -> last seen, ms since the epoch.
const DEVICES: TableDefinition<&[u8], u64> = TableDefinition::new("devices");
/// (tenant, user, last activity ms, conversation) -> empty: each user's
/// conversations by their last message, for the conversation list.
const USER_CONVS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("user_convs");
/// (conversation, user) -> [`ReadState`].
const READS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("reads");
/// (tenant, user, device, event key) -> version (8 bytes) and the encoded
/// event `Frame`: receipts and recalls pending for a device.
const EVENTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("events");
/// Puts (Some) or deletes (None) of customer-service records, by key.
pub(crate) type Records = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// Customer-service records: (kind, tenant, id) -> JSON (see `cs`).
pub(crate) const CS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("cs");
/// `applied_lsn` -> the last log record this state holds (see [`wal`]).
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const APPLIED_LSN: &str = "applied_lsn";
/// The log's directory inside the data directory.
const WAL_DIR: &str = "wal";

/// The device slot of a user who has not connected from any device yet.
/// Real device ids are never empty.
const USER_SLOT: &str = "";

/// Tuning of the embedded backend.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// Most operations applied in one write transaction.
    pub max_batch: usize,
    /// Bound of the writer's queue; callers wait when it is full.
    pub queue: usize,
    /// Devices remembered per user; the least recently seen is forgotten.
    pub max_devices_per_user: usize,
    /// redb page cache.
    pub cache_bytes: usize,
    /// Longest time between checkpoints while writes arrive. Each one
    /// syncs what redb wrote since the last; their fsync competes with the
    /// log's, so they are kept rare (10 s: one run of 1,000 senders × 5
    /// msg/s had a p99 of 7 ms, against 10–12 ms at 1 s).
    pub checkpoint_interval: Duration,
    /// Log bytes after which a checkpoint is due regardless of the time:
    /// bounds the log on disk and the replay after a crash.
    pub checkpoint_bytes: u64,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            max_batch: 4096,
            queue: 8192,
            max_devices_per_user: storage::DEFAULT_MAX_DEVICES_PER_USER,
            cache_bytes: 64 << 20,
            checkpoint_interval: Duration::from_secs(10),
            checkpoint_bytes: 64 << 20,
        }
    }
}

enum WriteOp {
    Append(NewMessage, oneshot::Sender<Result<Appended>>),
    Ack(DeviceKey, Vec<String>, oneshot::Sender<Result<usize>>),
    AckBatch(Vec<(Arc<DeviceKey>, Vec<String>)>, oneshot::Sender<Result<usize>>),
    Register(DeviceKey, oneshot::Sender<Result<DeviceRegistration>>),
    MarkRead(MarkRead, oneshot::Sender<Result<MarkOutcome>>),
    /// Tenant, msg_id, who recalls.
    Recall(String, String, DeviceKey, oneshot::Sender<Result<Option<RecallOutcome>>>),
    AckEvents(Vec<(Arc<DeviceKey>, Vec<String>)>, oneshot::Sender<Result<usize>>),
    /// Puts (Some) or deletes (None) customer-service records; durable.
    Records(Records, oneshot::Sender<Result<()>>),
    /// Stop after the ops queued before this one.
    Close,
}

impl WriteOp {
    fn durable(&self) -> bool {
        matches!(self, WriteOp::Append(..) | WriteOp::Records(..) | WriteOp::Recall(..))
    }
}

/// Messages, pending ids and devices: a write-ahead log and one redb database.
pub struct EmbeddedStore {
    db: Arc<Database>,
    tx: mpsc::Sender<WriteOp>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    shared: Arc<Shared>,
    path: PathBuf,
    /// Revocations, one write at a time (read, raised, written).
    revoking: tokio::sync::Mutex<()>,
    /// Uploads and deletions of files, one at a time (a blob shared by two
    /// uploads is deleted only when neither refers to it).
    files_lock: tokio::sync::Mutex<()>,
}

/// Logged batches the applier may lag behind the writer before the writer waits.
const APPLIER_QUEUE: usize = 64;

impl EmbeddedStore {
    /// Opens (or creates) `dir/dongdong.redb`.
    pub fn open(dir: &Path, options: EmbeddedOptions) -> Result<Arc<Self>> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StorageError::Unavailable(format!("cannot create data directory {}: {e}", dir.display())))?;
        let path = dir.join("dongdong.redb");
        let db = Database::builder()
            .set_cache_size(options.cache_bytes)
            .create(&path)
            .map_err(|e| StorageError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
        let db = Arc::new(db);
        init_tables(&db)?;
        let (mut wal, applied) = recover(&db, &dir.join(WAL_DIR))?;
        let shared = Arc::new(Shared::new(applied));
        let (to_applier, from_writer) = std::sync::mpsc::sync_channel(APPLIER_QUEUE);
        let applier = {
            let (db, shared, options, file) = (db.clone(), shared.clone(), options.clone(), path.clone());
            std::thread::Builder::new()
                .name("dd-store-apply".into())
                .spawn(move || writer::applier_loop(&db, &file, &shared, from_writer, &options))
                .map_err(|e| StorageError::Unavailable(format!("cannot start the applier thread: {e}")))?
        };
        let (tx, rx) = mpsc::channel(options.queue.max(1));
        let writer = {
            let (db, shared) = (db.clone(), shared.clone());
            std::thread::Builder::new()
                .name("dd-store-write".into())
                .spawn(move || {
                    writer::writer_loop(&db, &shared, &mut wal, rx, to_applier, &options);
                    // The applier finishes with a checkpoint; the log it
                    // covers can go.
                    let _ = applier.join();
                    if let Err(e) = wal.rotate(shared.checkpointed.load(std::sync::atomic::Ordering::Acquire)) {
                        tracing::error!(error = %e, "cannot remove the checkpointed log");
                    }
                })
                .map_err(|e| StorageError::Unavailable(format!("cannot start the writer thread: {e}")))?
        };
        Ok(Arc::new(Self {
            db,
            tx,
            writer: Mutex::new(Some(writer)),
            shared,
            path,
            revoking: Default::default(),
            files_lock: Default::default(),
        }))
    }

    pub(crate) fn revocation_lock(&self) -> &tokio::sync::Mutex<()> {
        &self.revoking
    }

    pub(crate) fn files_lock(&self) -> &tokio::sync::Mutex<()> {
        &self.files_lock
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
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

    pub(crate) fn db(&self) -> &Database {
        &self.db
    }

    /// Runs a read against a snapshot on the blocking pool.
    pub(crate) async fn read_db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.read(f).await
    }

    /// Stops accepting writes, lets the writer finish its queue and the
    /// applier end with a checkpoint, and waits for both. Later writes fail
    /// with `Unavailable`.
    pub async fn close(&self) {
        let handle = self.writer.lock().ok().and_then(|mut w| w.take());
        let Some(handle) = handle else { return };
        // The writer applies what is queued before the Close, then stops.
        let _ = self.tx.send(WriteOp::Close).await;
        let _ = tokio::task::spawn_blocking(move || handle.join()).await;
    }

    /// Runs `f` on the blocking pool at once, with what the applier has not
    /// applied yet at hand (see [`pending_view`]).
    async fn read_now<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database, &Shared) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        if let Some(e) = self.shared.broken() {
            return Err(StorageError::Unavailable(e));
        }
        let (db, shared) = (self.db.clone(), self.shared.clone());
        tokio::task::spawn_blocking(move || f(&db, &shared))
            .await
            .map_err(|e| StorageError::Unavailable(format!("read task failed: {e}")))?
    }

    async fn submit<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> WriteOp) -> Result<T> {
        let (reply_tx, reply_rx) = oneshot::channel();
        self.tx.send(make(reply_tx)).await.map_err(|_| StorageError::Unavailable("the store is closed".into()))?;
        reply_rx.await.map_err(|_| StorageError::Unavailable("the store writer stopped".into()))?
    }

    /// Runs `f` on the blocking pool once redb holds every write whose
    /// callers were answered before this call (the applier trails the
    /// writer by a batch or a few).
    async fn read<T: Send + 'static>(&self, f: impl FnOnce(&Database) -> Result<T> + Send + 'static) -> Result<T> {
        let target = self.shared.answered.load(std::sync::atomic::Ordering::Acquire);
        let caught_up = |a: &Applied| match a {
            Applied::Upto(lsn) => *lsn >= target,
            Applied::Failed => true,
        };
        let mut applied = self.shared.applied.subscribe();
        let state = if caught_up(&applied.borrow()) {
            *applied.borrow()
        } else {
            let _waiting = self.shared.reader_waiting();
            *applied.wait_for(caught_up).await.map_err(|_| unavailable("the store's applier stopped"))?
        };
        if state == Applied::Failed {
            return Err(StorageError::Unavailable(self.shared.broken().unwrap_or_else(|| "the store failed".into())));
        }
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| StorageError::Unavailable(format!("read task failed: {e}")))?
    }
}

pub(crate) fn unavailable(e: impl std::fmt::Display) -> StorageError {
    StorageError::Unavailable(e.to_string())
}

pub(crate) fn corrupt(what: &str) -> StorageError {
    StorageError::Corrupt(what.to_string())
}

fn init_tables(db: &Database) -> Result<()> {
    let txn = db.begin_write().map_err(unavailable)?;
    txn.open_table(MESSAGES).map_err(unavailable)?;
    txn.open_table(MSG_INDEX).map_err(unavailable)?;
    txn.open_table(CONVERSATIONS).map_err(unavailable)?;
    txn.open_table(IDEMPOTENCY).map_err(unavailable)?;
    txn.open_table(PENDING).map_err(unavailable)?;
    txn.open_table(DEVICES).map_err(unavailable)?;
    txn.open_table(CS).map_err(unavailable)?;
    txn.open_table(USER_CONVS).map_err(unavailable)?;
    txn.open_table(READS).map_err(unavailable)?;
    txn.open_table(EVENTS).map_err(unavailable)?;
    txn.open_table(META).map_err(unavailable)?;
    txn.commit().map_err(unavailable)
}

/// Replays the log's records after redb's last checkpoint, makes the result
/// a checkpoint, and starts the log afresh.
fn recover(db: &Database, dir: &Path) -> Result<(Wal, u64)> {
    let started = Instant::now();
    let applied = {
        let txn = db.begin_read().map_err(unavailable)?;
        match txn.open_table(META) {
            Ok(meta) => meta.get(APPLIED_LSN).map_err(unavailable)?.map(|v| v.value()).unwrap_or(0),
            Err(redb::TableError::TableDoesNotExist(_)) => 0,
            Err(e) => return Err(unavailable(e)),
        }
    };
    let mut replay = Replay { db, txn: None, bytes: 0 };
    let recovered = wal::recover(dir, applied, |record| replay.apply(record).map_err(|e| e.to_string()))
        .map_err(|e| StorageError::Corrupt(format!("write-ahead log in {}: {e}", dir.display())))?;
    replay.commit(recovered.last_lsn, Durability::Immediate)?;
    let mut wal = Wal::create(dir, recovered.last_lsn + 1).map_err(|e| {
        StorageError::Unavailable(format!("cannot start the write-ahead log in {}: {e}", dir.display()))
    })?;
    wal.rotate(recovered.last_lsn).map_err(unavailable)?;
    if recovered.records > 0 || recovered.torn_bytes > 0 {
        tracing::info!(
            records = recovered.records,
            torn_bytes = recovered.torn_bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "replayed the write-ahead log"
        );
    }
    Ok((wal, recovered.last_lsn))
}

/// Log bytes replayed per redb transaction at start: one transaction for a
/// whole log would hold all of its pages in memory until its commit. Tests
/// use small chunks, so every recovery they check spans several.
const REPLAY_CHUNK_BYTES: u64 = if cfg!(test) { 256 } else { 32 << 20 };

/// The replay of the log into redb at start, in transactions of about
/// `REPLAY_CHUNK_BYTES`. Each one records the LSN it reaches; only the last
/// is made durable, so a crash during the replay returns redb to the
/// checkpoint it started from, and the next start replays the same records.
struct Replay<'db> {
    db: &'db Database,
    txn: Option<redb::WriteTransaction>,
    bytes: u64,
}

impl Replay<'_> {
    fn apply(&mut self, record: &wal::Record<'_>) -> Result<()> {
        let txn = match &mut self.txn {
            Some(txn) => txn,
            None => {
                let mut txn = self.db.begin_write().map_err(unavailable)?;
                txn.set_durability(Durability::None).map_err(unavailable)?;
                self.txn.insert(txn)
            }
        };
        let mut tables = Tables::open(txn)?;
        for op in &record.ops {
            self.bytes += (op.key.len() + op.value.map_or(0, <[u8]>::len)) as u64;
            tables.apply(*op)?;
        }
        drop(tables);
        if self.bytes >= REPLAY_CHUNK_BYTES {
            self.commit(record.lsn, Durability::None)?;
        }
        Ok(())
    }

    /// Commits what was replayed up to `lsn` (an empty transaction when
    /// nothing is open, so the final durable commit always happens).
    fn commit(&mut self, lsn: u64, durability: Durability) -> Result<()> {
        let mut txn = match self.txn.take() {
            Some(txn) => txn,
            None => self.db.begin_write().map_err(unavailable)?,
        };
        txn.set_durability(durability).map_err(unavailable)?;
        txn.open_table(META).map_err(unavailable)?.insert(APPLIED_LSN, lsn).map_err(unavailable)?;
        txn.commit().map_err(unavailable)?;
        self.bytes = 0;
        Ok(())
    }
}

/// Entries the applier has not applied: key and value (`None`: deleted).
type UnappliedEntries = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// A redb snapshot and the unapplied `pending` entries from `start` under
/// `prefix`, taken together under the applier's lock: the applier removes an
/// entry only after committing it, so each write is in one or the other.
fn pending_view(
    db: &Database,
    shared: &Shared,
    start: &[u8],
    prefix: &[u8],
) -> Result<(redb::ReadTransaction, UnappliedEntries)> {
    let unapplied = shared.unapplied.lock().map_err(|_| unavailable("the store lock is poisoned"))?;
    let entries = unapplied.range(T::Pending, start, prefix);
    let txn = db.begin_read().map_err(unavailable)?;
    Ok((txn, entries))
}

/// A message written after a snapshot was taken: still unapplied, or
/// applied since (messages are never rewritten, so a newer snapshot is as good).
fn message_since(db: &Database, shared: &Shared, position: &[u8]) -> Result<Option<Message>> {
    let unapplied = shared.unapplied.lock().map_err(|_| unavailable("the store lock is poisoned"))?;
    if let Some(Some(v)) = unapplied.get(T::Messages, position) {
        return decode_message(&v).map(Some);
    }
    let txn = db.begin_read().map_err(unavailable)?;
    drop(unapplied);
    let messages = txn.open_table(MESSAGES).map_err(unavailable)?;
    match messages.get(position).map_err(unavailable)? {
        Some(v) => decode_message(v.value()).map(Some),
        None => Ok(None),
    }
}

/// Makes redb's state durable, recording that it holds every log record up
/// to `applied`: those records are then redundant.
fn checkpoint(db: &Database, applied: u64) -> Result<()> {
    let started = Instant::now();
    let txn = db.begin_write().map_err(unavailable)?;
    {
        let mut meta = txn.open_table(META).map_err(unavailable)?;
        meta.insert(APPLIED_LSN, applied).map_err(unavailable)?;
    }
    txn.commit().map_err(unavailable)?;
    metrics::histogram!("dongdong_store_checkpoint_seconds").record(started.elapsed().as_secs_f64());
    Ok(())
}

/// The tables of one write transaction.
struct Tables<'txn> {
    messages: Table<'txn, &'static [u8], &'static [u8]>,
    msg_index: Table<'txn, &'static str, &'static [u8]>,
    conversations: Table<'txn, &'static str, &'static [u8]>,
    idempotency: Table<'txn, &'static [u8], &'static str>,
    pending: Table<'txn, &'static [u8], &'static str>,
    devices: Table<'txn, &'static [u8], u64>,
    cs: Table<'txn, &'static [u8], &'static [u8]>,
    user_convs: Table<'txn, &'static [u8], &'static [u8]>,
    reads: Table<'txn, &'static [u8], &'static [u8]>,
    events: Table<'txn, &'static [u8], &'static [u8]>,
}

fn device_prefix(tenant: &str, user: &str) -> Vec<u8> {
    Key::new().s(tenant).s(user).into_vec()
}

fn device_key(tenant: &str, user: &str, device: &str) -> Vec<u8> {
    Key::new().s(tenant).s(user).s(device).into_vec()
}

fn pending_key(tenant: &str, user: &str, device: &str, conversation: &str, seq: u64) -> Vec<u8> {
    Key::new().s(tenant).s(user).s(device).s(conversation).n(seq).into_vec()
}

fn message_key(conversation: &str, seq: u64) -> Vec<u8> {
    Key::new().s(conversation).n(seq).into_vec()
}

fn decode_message(bytes: &[u8]) -> Result<Message> {
    Message::decode(bytes).map_err(|e| StorageError::Corrupt(format!("message record: {e}")))
}

/// What a message record holds beside the `Message`: the sender's count of
/// messages in the conversation up to this one, as protobuf field 1000 of
/// the same bytes (decoding a `Message` skips it; records written before it
/// existed read as 0).
#[derive(Clone, PartialEq, prost::Message)]
struct StoredExtra {
    #[prost(uint64, tag = "1000")]
    ordinal: u64,
}

fn encode_stored(message: &Message, ordinal: u64) -> Vec<u8> {
    let mut bytes = message.encode_to_vec();
    bytes.extend_from_slice(&StoredExtra { ordinal }.encode_to_vec());
    bytes
}

fn stored_ordinal(bytes: &[u8]) -> u64 {
    StoredExtra::decode(bytes).map(|e| e.ordinal).unwrap_or(0)
}

fn user_conv_key(tenant: &str, user: &str, active_ms: u64, conversation: &str) -> Vec<u8> {
    Key::new().s(tenant).s(user).n(active_ms).s(conversation).into_vec()
}

fn reads_key(conversation: &str, user: &str) -> Vec<u8> {
    Key::new().s(conversation).s(user).into_vec()
}

fn event_key(tenant: &str, user: &str, device: &str, key: &str) -> Vec<u8> {
    Key::new().s(tenant).s(user).s(device).s(key).into_vec()
}

/// An event record: its version, then the frame.
fn encode_event(version: u64, frame: &im_core::pb::Frame) -> Vec<u8> {
    let mut v = version.to_be_bytes().to_vec();
    v.extend_from_slice(&frame.encode_to_vec());
    v
}

fn event_version(bytes: &[u8]) -> Option<u64> {
    bytes.get(..8)?.try_into().ok().map(u64::from_be_bytes)
}

fn decode_read_state(bytes: Option<&[u8]>) -> Result<ReadState> {
    bytes.map_or(Ok(ReadState::default()), |b| ReadState::decode(b).ok_or_else(|| corrupt("read state record")))
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

fn encode_conversation(c: &Conversation) -> Vec<u8> {
    Key::new().s(&c.tenant).s(&c.members[0]).s(&c.members[1]).into_vec()
}

/// The highest seq stored in a conversation, 0 if none.
fn last_seq<T: ReadableTable<&'static [u8], &'static [u8]>>(messages: &T, conversation: &str) -> Result<u64> {
    let lo = message_key(conversation, 0);
    let hi = message_key(conversation, u64::MAX);
    let last = messages.range(lo.as_slice()..=hi.as_slice()).map_err(unavailable)?.next_back();
    let Some(item) = last else { return Ok(0) };
    let (k, _) = item.map_err(unavailable)?;
    let k = k.value();
    let seq = k.get(k.len().saturating_sub(8)..).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
    seq.ok_or_else(|| corrupt("message key"))
}

impl<'txn> Tables<'txn> {
    fn open(txn: &'txn redb::WriteTransaction) -> Result<Self> {
        Ok(Self {
            messages: txn.open_table(MESSAGES).map_err(unavailable)?,
            msg_index: txn.open_table(MSG_INDEX).map_err(unavailable)?,
            conversations: txn.open_table(CONVERSATIONS).map_err(unavailable)?,
            idempotency: txn.open_table(IDEMPOTENCY).map_err(unavailable)?,
            pending: txn.open_table(PENDING).map_err(unavailable)?,
            devices: txn.open_table(DEVICES).map_err(unavailable)?,
            cs: txn.open_table(CS).map_err(unavailable)?,
            user_convs: txn.open_table(USER_CONVS).map_err(unavailable)?,
            reads: txn.open_table(READS).map_err(unavailable)?,
            events: txn.open_table(EVENTS).map_err(unavailable)?,
        })
    }

    /// Applies one write; returns whether the key held a value before.
    fn apply(&mut self, op: Op<'_>) -> Result<bool> {
        fn text(b: &[u8]) -> Result<&str> {
            std::str::from_utf8(b).map_err(|_| corrupt("a logged key or value that is not UTF-8"))
        }
        let (key, value) = (op.key, op.value);
        let existed = match (op.table, value) {
            (T::Messages, Some(v)) => self.messages.insert(key, v).map_err(unavailable)?.is_some(),
            (T::Messages, None) => self.messages.remove(key).map_err(unavailable)?.is_some(),
            (T::MsgIndex, Some(v)) => self.msg_index.insert(text(key)?, v).map_err(unavailable)?.is_some(),
            (T::MsgIndex, None) => self.msg_index.remove(text(key)?).map_err(unavailable)?.is_some(),
            (T::Conversations, Some(v)) => self.conversations.insert(text(key)?, v).map_err(unavailable)?.is_some(),
            (T::Conversations, None) => self.conversations.remove(text(key)?).map_err(unavailable)?.is_some(),
            (T::Idempotency, Some(v)) => self.idempotency.insert(key, text(v)?).map_err(unavailable)?.is_some(),
            (T::Idempotency, None) => self.idempotency.remove(key).map_err(unavailable)?.is_some(),
            (T::Pending, Some(v)) => self.pending.insert(key, text(v)?).map_err(unavailable)?.is_some(),
            (T::Pending, None) => self.pending.remove(key).map_err(unavailable)?.is_some(),
            (T::Devices, Some(v)) => {
                let seen = v.try_into().map(u64::from_be_bytes).map_err(|_| corrupt("a logged device record"))?;
                self.devices.insert(key, seen).map_err(unavailable)?.is_some()
            }
            (T::Devices, None) => self.devices.remove(key).map_err(unavailable)?.is_some(),
            (T::Cs, Some(v)) => self.cs.insert(key, v).map_err(unavailable)?.is_some(),
            (T::Cs, None) => self.cs.remove(key).map_err(unavailable)?.is_some(),
            (T::UserConvs, Some(v)) => self.user_convs.insert(key, v).map_err(unavailable)?.is_some(),
            (T::UserConvs, None) => self.user_convs.remove(key).map_err(unavailable)?.is_some(),
            (T::Reads, Some(v)) => self.reads.insert(key, v).map_err(unavailable)?.is_some(),
            (T::Reads, None) => self.reads.remove(key).map_err(unavailable)?.is_some(),
            (T::Events, Some(v)) => self.events.insert(key, v).map_err(unavailable)?.is_some(),
            (T::Events, None) => self.events.remove(key).map_err(unavailable)?.is_some(),
        };
        Ok(existed)
    }
}

#[async_trait]
impl MessageStore for EmbeddedStore {
    async fn append(&self, msg: NewMessage) -> Result<Appended> {
        self.submit(|tx| WriteOp::Append(msg, tx)).await
    }

    /// Queued is ordered: the single writer assigns seqs in queue order.
    async fn start_append(&self, msg: NewMessage) -> Result<storage::PendingAppend> {
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
        self.read(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let table = txn.open_table(MESSAGES).map_err(unavailable)?;
            match table.get(key.as_slice()).map_err(unavailable)? {
                Some(v) => decode_message(v.value()).map(Some),
                None => Ok(None),
            }
        })
        .await
    }

    async fn conversation(&self, tenant: &str, conversation_id: &str) -> Result<Option<Conversation>> {
        let (tenant, id) = (tenant.to_string(), conversation_id.to_string());
        self.read(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let table = txn.open_table(CONVERSATIONS).map_err(unavailable)?;
            let Some(v) = table.get(id.as_str()).map_err(unavailable)? else {
                return Ok(None);
            };
            let messages = txn.open_table(MESSAGES).map_err(unavailable)?;
            let conv = decode_conversation(&id, v.value(), last_seq(&messages, &id)?)?;
            Ok((conv.tenant == tenant).then_some(conv))
        })
        .await
    }

    async fn history(&self, q: HistoryQuery) -> Result<HistoryPage> {
        self.read(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let table = txn.open_table(MESSAGES).map_err(unavailable)?;
            let limit = q.limit.max(1);
            let mut messages = Vec::with_capacity(limit.min(256));
            let has_more;
            if q.before_seq > 0 {
                let lo = message_key(&q.conversation_id, 0);
                let hi = message_key(&q.conversation_id, q.before_seq);
                let mut iter = table.range(lo.as_slice()..hi.as_slice()).map_err(unavailable)?.rev();
                for item in iter.by_ref().take(limit) {
                    let (_, v) = item.map_err(unavailable)?;
                    messages.push(decode_message(v.value())?);
                }
                has_more = iter.next().is_some();
                messages.reverse();
            } else {
                let lo = message_key(&q.conversation_id, q.after_seq.saturating_add(1));
                let hi = message_key(&q.conversation_id, u64::MAX);
                let mut iter = table.range(lo.as_slice()..=hi.as_slice()).map_err(unavailable)?;
                for item in iter.by_ref().take(limit) {
                    let (_, v) = item.map_err(unavailable)?;
                    messages.push(decode_message(v.value())?);
                }
                has_more = iter.next().is_some();
            }
            Ok(HistoryPage { messages, has_more })
        })
        .await
    }

    async fn get_by_id(&self, tenant: &str, msg_id: &str) -> Result<Option<Message>> {
        let (tenant, msg_id) = (tenant.to_string(), msg_id.to_string());
        self.read(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let index = txn.open_table(MSG_INDEX).map_err(unavailable)?;
            let Some(pos) = index.get(msg_id.as_str()).map_err(unavailable)? else {
                return Ok(None);
            };
            let pos = pos.value().to_vec();
            let mut r = Reader::new(&pos);
            let Some(conv) = r.s() else { return Err(corrupt("message index record")) };
            let conversations = txn.open_table(CONVERSATIONS).map_err(unavailable)?;
            let Some(record) = conversations.get(conv).map_err(unavailable)? else {
                return Err(corrupt("a message without its conversation"));
            };
            if decode_conversation(conv, record.value(), 0)?.tenant != tenant {
                return Ok(None);
            }
            let messages = txn.open_table(MESSAGES).map_err(unavailable)?;
            match messages.get(pos.as_slice()).map_err(unavailable)? {
                Some(v) => decode_message(v.value()).map(Some),
                None => Err(corrupt("message index points at a missing message")),
            }
        })
        .await
    }

    async fn mark_read(&self, read: MarkRead) -> Result<MarkOutcome> {
        self.submit(|tx| WriteOp::MarkRead(read, tx)).await
    }

    async fn conversations(
        &self,
        tenant: &str,
        user: &str,
        after: Option<&ConversationCursor>,
        limit: usize,
    ) -> Result<ConversationsPage> {
        let prefix = Key::new().s(tenant).s(user).into_vec();
        let end = match after {
            Some(c) => user_conv_key(tenant, user, c.active_ms, &c.conversation_id),
            None => {
                let mut end = prefix.clone();
                end.extend_from_slice(&[0xff; 9]);
                end
            }
        };
        let user = user.to_string();
        self.read(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let index = txn.open_table(USER_CONVS).map_err(unavailable)?;
            let conversations = txn.open_table(CONVERSATIONS).map_err(unavailable)?;
            let messages = txn.open_table(MESSAGES).map_err(unavailable)?;
            let reads = txn.open_table(READS).map_err(unavailable)?;
            let mut page = ConversationsPage::default();
            let mut iter = index.range(prefix.as_slice()..end.as_slice()).map_err(unavailable)?.rev();
            for item in iter.by_ref().take(limit.max(1)) {
                let (k, _) = item.map_err(unavailable)?;
                let mut r = Reader::new(&k.value()[prefix.len()..]);
                let (Some(active_ms), Some(conv)) = (r.n(), r.s()) else {
                    return Err(corrupt("conversation list key"));
                };
                let Some(record) = conversations.get(conv).map_err(unavailable)? else {
                    return Err(corrupt("a listed conversation without its record"));
                };
                let members = decode_conversation(conv, record.value(), 0)?.members;
                let peer = if members[0] == user { &members[1] } else { &members[0] };
                let lo = message_key(conv, 0);
                let hi = message_key(conv, u64::MAX);
                let last = messages.range(lo.as_slice()..=hi.as_slice()).map_err(unavailable)?.next_back();
                let Some(last) = last else { return Err(corrupt("a listed conversation without messages")) };
                let (_, bytes) = last.map_err(unavailable)?;
                let (message, mut ordinal) = (decode_message(bytes.value())?, stored_ordinal(bytes.value()));
                if ordinal == 0 {
                    // Written before ordinals were stored: count.
                    for item in messages.range(lo.as_slice()..=hi.as_slice()).map_err(unavailable)? {
                        let (_, v) = item.map_err(unavailable)?;
                        ordinal += u64::from(decode_message(v.value())?.from_user == message.from_user);
                    }
                }
                let state = |u: &str| -> Result<ReadState> {
                    let v = reads.get(reads_key(conv, u).as_slice()).map_err(unavailable)?;
                    decode_read_state(v.as_ref().map(|v| v.value()))
                };
                let (mine, theirs) = (state(&user)?, state(peer)?);
                page.items.push(storage::conversation_item(&user, peer, message, ordinal, mine, theirs));
                page.next = Some(ConversationCursor { active_ms, conversation_id: conv.to_string() });
            }
            if iter.next().is_none() {
                page.next = None;
            }
            Ok(page)
        })
        .await
    }

    async fn recall(&self, tenant: &str, msg_id: &str, by: &DeviceKey) -> Result<Option<RecallOutcome>> {
        let (tenant, msg_id, by) = (tenant.to_string(), msg_id.to_string(), by.clone());
        self.submit(|tx| WriteOp::Recall(tenant, msg_id, by, tx)).await
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
        // Replays read pages while acks stream in: rather than wait for the
        // applier, merge what it has not applied yet.
        self.read_now(move |db, shared| {
            let (txn, unapplied) = pending_view(db, shared, &start, &prefix)?;
            let pending = txn.open_table(PENDING).map_err(unavailable)?;
            let messages = txn.open_table(MESSAGES).map_err(unavailable)?;
            let mut stored = pending.range(start.as_slice()..).map_err(unavailable)?.peekable();
            let mut fresh = unapplied.into_iter().peekable();
            let mut out = Vec::new();
            while out.len() < limit {
                // The next key of the merge; an unapplied entry wins over redb's.
                let stored_key = match stored.peek() {
                    Some(Ok((k, _))) if k.value().starts_with(&prefix) => Some(k.value().to_vec()),
                    Some(Err(_)) => return Err(unavailable("pending range read failed")),
                    _ => None,
                };
                let key = match (stored_key, fresh.peek()) {
                    (None, None) => break,
                    (Some(s), Some((f, _))) if *f <= s => {
                        if *f == s {
                            stored.next();
                        }
                        match fresh.next() {
                            Some((k, Some(_))) => k,
                            _ => continue,
                        }
                    }
                    (Some(s), _) => {
                        stored.next();
                        s
                    }
                    (None, Some(_)) => match fresh.next() {
                        Some((k, Some(_))) => k,
                        _ => continue,
                    },
                };
                let mut r = Reader::new(&key[prefix.len()..]);
                let (Some(conv), Some(seq)) = (r.s(), r.n()) else {
                    return Err(corrupt("pending key"));
                };
                let position = message_key(conv, seq);
                let message = match messages.get(position.as_slice()).map_err(unavailable)? {
                    Some(v) => Some(decode_message(v.value())?),
                    None => message_since(db, shared, &position)?,
                };
                out.extend(message);
            }
            Ok(out)
        })
        .await
    }

    async fn pending_count(&self, device: &DeviceKey) -> Result<u64> {
        let key = device_key(&device.tenant, &device.user, &device.device);
        self.read_now(move |db, shared| {
            let (txn, unapplied) = pending_view(db, shared, &key, &key)?;
            let table = txn.open_table(PENDING).map_err(unavailable)?;
            let mut n: u64 = 0;
            for item in table.range(key.as_slice()..).map_err(unavailable)? {
                let (k, _) = item.map_err(unavailable)?;
                if !k.value().starts_with(&key) {
                    break;
                }
                n += 1;
            }
            for (k, v) in unapplied {
                let stored = table.get(k.as_slice()).map_err(unavailable)?.is_some();
                match (stored, v.is_some()) {
                    (true, false) => n = n.saturating_sub(1),
                    (false, true) => n += 1,
                    _ => {}
                }
            }
            Ok(n)
        })
        .await
    }

    async fn pending_events(&self, device: &DeviceKey, after: Option<&str>, limit: usize) -> Result<Vec<PendingEvent>> {
        let prefix = device_key(&device.tenant, &device.user, &device.device);
        let start = match after {
            Some(key) => {
                let mut k = event_key(&device.tenant, &device.user, &device.device, key);
                k.push(0); // strictly after
                k
            }
            None => prefix.clone(),
        };
        self.read(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let events = txn.open_table(EVENTS).map_err(unavailable)?;
            let mut out = Vec::new();
            for item in events.range(start.as_slice()..).map_err(unavailable)?.take(limit.max(1)) {
                let (k, v) = item.map_err(unavailable)?;
                if !k.value().starts_with(&prefix) {
                    break;
                }
                let key = Reader::new(&k.value()[prefix.len()..]).s().ok_or_else(|| corrupt("event key"))?;
                let frame = v.value().get(8..).and_then(|b| im_core::pb::Frame::decode(b).ok());
                let frame = frame.ok_or_else(|| corrupt("event record"))?;
                out.push(PendingEvent { key: key.to_string(), frame });
            }
            Ok(out)
        })
        .await
    }

    async fn ack_events(&self, acks: &[(Arc<DeviceKey>, Vec<String>)]) -> Result<usize> {
        if acks.iter().all(|(_, ids)| ids.is_empty()) {
            return Ok(0);
        }
        let acks = acks.to_vec();
        self.submit(|tx| WriteOp::AckEvents(acks, tx)).await
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
impl storage::HealthCheck for EmbeddedStore {
    async fn check(&self) -> Vec<(&'static str, std::result::Result<(), String>)> {
        let closed = self.writer.lock().map(|w| w.is_none()).unwrap_or(true);
        vec![("embedded", if closed { Err("the store is closed".into()) } else { Ok(()) })]
    }
}

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
        };
        Ok((backends, store))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn fresh() -> Option<(storage::Backends, tempfile::TempDir)> {
        let dir = tempfile::tempdir().unwrap();
        let (b, _) = open(dir.path(), EmbeddedOptions::default()).unwrap();
        Some((b, dir))
    }

    storage::conformance_suite!(fresh);

    fn text(s: &str) -> im_core::pb::Content {
        im_core::pb::Content { kind: Some(im_core::pb::content::Kind::Text(s.into())) }
    }

    pub(super) fn new_message(cmid: &str) -> NewMessage {
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

/// Crash recovery of the whole store: what a `kill -9` or a power cut can
/// leave in the log.
#[cfg(test)]
mod recovery_tests {
    use super::*;

    /// Alice's message `m{i}` to Bob, with text that is not ASCII.
    fn new_message(i: usize) -> NewMessage {
        let content = im_core::pb::Content { kind: Some(im_core::pb::content::Kind::Text(format!("消息 {i}"))) };
        NewMessage { content, ..super::tests::new_message(&format!("m{i}")) }
    }

    /// The log's one segment in a data directory.
    fn segment(dir: &Path) -> PathBuf {
        let mut segments = wal::segments(&dir.join(WAL_DIR)).unwrap();
        assert_eq!(segments.len(), 1);
        segments.pop().unwrap().1
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap().flatten() {
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy_dir(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }

    /// No checkpoint during the test: every acked write is only in the log.
    fn options() -> EmbeddedOptions {
        EmbeddedOptions { checkpoint_interval: Duration::from_secs(3600), ..EmbeddedOptions::default() }
    }

    /// Pending reads merge what the applier has not applied yet: right
    /// after each write (usually before the applier got to it) they must
    /// agree with a model of what was written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pending_reads_see_every_answered_write_before_the_applier_does() {
        let root = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(root.path(), EmbeddedOptions::default()).unwrap();
        let bob = DeviceKey::new("t", "bob", "b1");
        store.register_device(&bob).await.unwrap();
        let mut model: Vec<String> = Vec::new();
        for i in 0..150 {
            model.push(store.append(new_message(i)).await.unwrap().message.msg_id);
            if i % 3 == 2 {
                // Ack the second-newest and the oldest.
                let acked = vec![model.remove(model.len() - 2), model.remove(0)];
                assert_eq!(store.ack(&bob, &acked).await.unwrap(), 2);
            }
            assert_eq!(store.pending_count(&bob).await.unwrap(), model.len() as u64, "after write {i}");
            let mut got = Vec::new();
            let mut after = None;
            loop {
                let page = store.pending(&bob, after.as_ref(), 7).await.unwrap();
                let Some(last) = page.last() else { break };
                after = Some(PendingCursor::of(last));
                got.extend(page.into_iter().map(|m| m.msg_id));
            }
            assert_eq!(got, model, "after write {i}");
        }
        store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn checkpoints_delete_the_log_they_cover() {
        let root = tempfile::tempdir().unwrap();
        let options = EmbeddedOptions { checkpoint_interval: Duration::from_millis(20), ..EmbeddedOptions::default() };
        let store = EmbeddedStore::open(root.path(), options).unwrap();
        let bob = DeviceKey::new("t", "bob", "b1");
        store.register_device(&bob).await.unwrap();
        let mut rotated = false;
        for i in 0..1000 {
            store.append(new_message(i)).await.unwrap();
            // Each segment holds at least one record, so the LSN of the
            // oldest one left shows how many were deleted.
            let segments = wal::segments(&root.path().join(WAL_DIR)).unwrap();
            if i >= 100 && segments[0].0 > 50 {
                assert!(segments.len() <= 4, "{} segments: covered ones are deleted", segments.len());
                rotated = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert!(rotated, "checkpoints started new segments and deleted the old ones");
        // What the deleted segments held is in redb for good.
        let count = store.pending_count(&bob).await.unwrap();
        store.close().await;
        drop(store);
        let store = EmbeddedStore::open(root.path(), EmbeddedOptions::default()).unwrap();
        assert_eq!(store.pending_count(&bob).await.unwrap(), count);
        store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_log_torn_anywhere_in_its_last_records_recovers_a_prefix_with_every_acked_message() {
        let root = tempfile::tempdir().unwrap();
        let live = root.path().join("live");
        let bob = DeviceKey::new("t", "bob", "b1");
        let store = EmbeddedStore::open(&live, options()).unwrap();
        store.register_device(&bob).await.unwrap();
        // Each append is its own synced record; the segment's length after it
        // is where that message became durable (was acked). An ack record
        // (not synced, so not counted on) rides between them.
        let mut acked: Vec<(usize, String, Message)> = Vec::new();
        for i in 0..6 {
            let message = store.append(new_message(i)).await.unwrap().message;
            if i == 1 {
                store.ack(&bob, std::slice::from_ref(&acked[0].1)).await.unwrap();
            }
            acked.push((std::fs::metadata(segment(&live)).unwrap().len() as usize, message.msg_id.clone(), message));
        }
        // The crash image: the directory as the writer left it, idle. redb
        // holds no checkpoint of these writes (a kill -9 would lose its
        // unsynced commits); opening it replays the log.
        let image = root.path().join("image");
        copy_dir(&live, &image);
        drop(store);

        let end = acked.last().unwrap().0;
        let first = acked[acked.len() - 2].0;
        // Every byte of the last record, and around each boundary.
        let mut cuts: Vec<usize> = (first..=end).collect();
        cuts.extend(acked.iter().flat_map(|(e, ..)| [e - 1, *e, e + 1]));
        cuts.retain(|c| (acked[1].0..=end).contains(c));
        cuts.sort();
        cuts.dedup();
        for &cut in &cuts {
            for zeros in [false, true] {
                let dir = root.path().join("cut");
                let _ = std::fs::remove_dir_all(&dir);
                copy_dir(&image, &dir);
                // A cut file, or (as after a power cut) the tail reading as zeros.
                let file = std::fs::OpenOptions::new().write(true).open(segment(&dir)).unwrap();
                file.set_len(cut as u64).unwrap();
                if zeros {
                    file.set_len(end as u64 + 100).unwrap();
                }
                drop(file);
                let durable: Vec<&Message> = acked.iter().filter(|(e, ..)| *e <= cut).map(|(.., m)| m).collect();
                let store = EmbeddedStore::open(&dir, options())
                    .unwrap_or_else(|e| panic!("cut at {cut} (zeros {zeros}): cannot recover: {e}"));
                let page = store
                    .history(HistoryQuery {
                        tenant: "t".into(),
                        conversation_id: acked[0].2.conversation_id.clone(),
                        after_seq: 0,
                        before_seq: 0,
                        limit: 100,
                    })
                    .await
                    .unwrap();
                assert_eq!(page.messages.iter().collect::<Vec<_>>(), durable, "cut at {cut}: the durable prefix");
                // Pending marks: all but the first, whose ack was logged
                // before any of the records the cuts touch.
                let pending = store.pending(&bob, None, 100).await.unwrap();
                assert_eq!(pending.iter().collect::<Vec<_>>(), durable[1..].to_vec(), "cut at {cut}: pending marks");
                // Idempotency keys: a retry of the last durable message is a
                // duplicate; the first lost one is stored afresh at the next
                // seq: none reused, none skipped.
                let last = durable.last().unwrap();
                let again = store.append(new_message(durable.len() - 1)).await.unwrap();
                assert!(again.duplicate, "cut at {cut}: idempotency key recovered");
                assert_eq!(&again.message, *last);
                let next = store.append(new_message(durable.len())).await.unwrap();
                assert!(!next.duplicate);
                assert_eq!(next.message.seq, durable.len() as u64 + 1, "cut at {cut}: no seq reused or skipped");
                store.close().await;
                drop(store);
                if cut % 8 == 0 {
                    // What recovery wrote survives the next start too.
                    let store = EmbeddedStore::open(&dir, options()).unwrap();
                    assert_eq!(store.pending_count(&bob).await.unwrap(), durable.len() as u64, "cut at {cut}");
                    store.close().await;
                }
            }
        }
        assert!(cuts.len() > 100, "{} cuts", cuts.len());
    }
}
