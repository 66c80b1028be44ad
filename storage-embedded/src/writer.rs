//! The two threads that change the embedded store.
//!
//! **The writer** drains the queue into batches (group commit). A batch's
//! operations run in queue order against what is already stored — redb, plus
//! the writes logged but not yet applied to it ([`Unapplied`]), plus the
//! batch's own earlier writes — and produce table writes. Those become one
//! log record, appended and synced (`fdatasync`) when the batch holds a
//! message; then they join [`Unapplied`], go to the applier, and the callers
//! are answered. The writer never writes redb: the ack path is the log.
//!
//! **The applier** writes what the writer logged into redb, in transactions
//! as large as what has gathered (without a sync), and about once a second
//! makes a checkpoint: a synced commit recording the last LSN applied, after
//! which the writer deletes the log segments it covers.
//!
//! Readers wait until the applier has applied every record whose callers
//! were answered before the read started (see `EmbeddedStore::read`): a read
//! never misses a write that was acknowledged.
//!
//! Two caches save the writer reads it would otherwise make per message:
//! each conversation's last seq and each user's devices. They hold what is
//! logged plus the current batch, are only trimmed between batches, and are
//! dropped whole when a batch fails.

use super::wal::{Op, Ops, Table as T, Wal};
use super::*;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use storage::{MarkOutcome, ReadMark};
use tokio::sync::watch;

/// The final value of each key a batch (or several) wrote, per table
/// (`None`: deleted).
#[derive(Default)]
pub(super) struct Writes([BTreeMap<Vec<u8>, Option<Vec<u8>>>; T::ALL.len()]);

fn slot(t: T) -> usize {
    t as usize - 1
}

/// Writes logged but not yet in redb, each tagged with the LSN of the record
/// that holds it. The writer adds a batch after logging it; the applier
/// removes it once committed (unless a later record rewrote the key).
#[derive(Default)]
pub(super) struct Unapplied([BTreeMap<Vec<u8>, Tagged>; T::ALL.len()]);

/// A value (`None`: deleted) and the LSN of the record that wrote it.
type Tagged = (u64, Option<Vec<u8>>);

impl Unapplied {
    /// The entries of table `t` from `start` on that begin with `prefix`.
    pub(super) fn range(&self, t: T, start: &[u8], prefix: &[u8]) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        self.0[slot(t)]
            .range(start.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, (_, v))| (k.clone(), v.clone()))
            .collect()
    }

    /// `Some(value or None for deleted)` if `key` of table `t` is unapplied.
    pub(super) fn get(&self, t: T, key: &[u8]) -> Option<Option<Vec<u8>>> {
        self.0[slot(t)].get(key).map(|(_, v)| v.clone())
    }
}

/// How far the applier is: the last LSN in redb, or the failure that
/// stopped it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Applied {
    Upto(u64),
    Failed,
}

/// What the writer, the applier and readers share.
pub(super) struct Shared {
    pub(super) unapplied: Mutex<Unapplied>,
    /// The LSN of the last record whose callers were answered.
    pub(super) answered: AtomicU64,
    pub(super) applied: watch::Sender<Applied>,
    /// The LSN the last checkpoint covers.
    pub(super) checkpointed: AtomicU64,
    /// Why the store stopped taking writes, if it did.
    pub(super) broken: Mutex<Option<String>>,
    /// Reads waiting for the applier: it stops gathering when there are any.
    pub(super) readers_waiting: AtomicUsize,
}

impl Shared {
    pub(super) fn new(applied: u64) -> Self {
        Self {
            unapplied: Mutex::new(Unapplied::default()),
            answered: AtomicU64::new(applied),
            applied: watch::Sender::new(Applied::Upto(applied)),
            checkpointed: AtomicU64::new(applied),
            broken: Mutex::new(None),
            readers_waiting: AtomicUsize::new(0),
        }
    }

    /// Counts a read waiting for the applier while the guard lives.
    pub(super) fn reader_waiting(&self) -> WaitingReader<'_> {
        self.readers_waiting.fetch_add(1, Ordering::AcqRel);
        WaitingReader(self)
    }

    fn break_with(&self, e: &StorageError) {
        if let Ok(mut b) = self.broken.lock() {
            b.get_or_insert_with(|| e.to_string());
        }
    }

    pub(super) fn broken(&self) -> Option<String> {
        self.broken.lock().ok().and_then(|b| b.clone())
    }
}

pub(super) struct WaitingReader<'a>(&'a Shared);

impl Drop for WaitingReader<'_> {
    fn drop(&mut self) {
        self.0.readers_waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Replies held until the batch is logged.
enum Reply {
    Append(oneshot::Sender<Result<Appended>>, Appended),
    MarkRead(oneshot::Sender<Result<MarkOutcome>>, MarkOutcome),
    Recall(oneshot::Sender<Result<Option<RecallOutcome>>>, Option<RecallOutcome>),
    Ack(oneshot::Sender<Result<usize>>, usize),
    Register(oneshot::Sender<Result<DeviceRegistration>>, DeviceRegistration),
    Records(oneshot::Sender<Result<()>>),
}

impl Reply {
    fn fail(self, e: &StorageError) {
        match self {
            Reply::Append(tx, _) => drop(tx.send(Err(e.clone()))),
            Reply::MarkRead(tx, _) => drop(tx.send(Err(e.clone()))),
            Reply::Recall(tx, _) => drop(tx.send(Err(e.clone()))),
            Reply::Ack(tx, _) => drop(tx.send(Err(e.clone()))),
            Reply::Register(tx, _) => drop(tx.send(Err(e.clone()))),
            Reply::Records(tx) => drop(tx.send(Err(e.clone()))),
        }
    }

    fn succeed(self) {
        match self {
            Reply::Append(tx, v) => drop(tx.send(Ok(v))),
            Reply::MarkRead(tx, v) => drop(tx.send(Ok(v))),
            Reply::Recall(tx, v) => drop(tx.send(Ok(v))),
            Reply::Ack(tx, v) => drop(tx.send(Ok(v))),
            Reply::Register(tx, v) => drop(tx.send(Ok(v))),
            Reply::Records(tx) => drop(tx.send(Ok(()))),
        }
    }
}

pub(super) fn fail_op(op: WriteOp, e: &StorageError) {
    match op {
        WriteOp::Append(_, tx) => drop(tx.send(Err(e.clone()))),
        WriteOp::Ack(_, _, tx) | WriteOp::AckBatch(_, tx) | WriteOp::AckEvents(_, tx) => drop(tx.send(Err(e.clone()))),
        WriteOp::MarkRead(_, tx) => drop(tx.send(Err(e.clone()))),
        WriteOp::Recall(.., tx) => drop(tx.send(Err(e.clone()))),
        WriteOp::Register(_, tx) => drop(tx.send(Err(e.clone()))),
        WriteOp::Records(_, tx) => drop(tx.send(Err(e.clone()))),
        WriteOp::Close => {}
    }
}

/// Keeps a successful result for after the batch is logged; fails the
/// caller at once otherwise (and the batch with it).
fn hold<T>(
    tx: oneshot::Sender<Result<T>>,
    result: Result<T>,
    wrap: fn(oneshot::Sender<Result<T>>, T) -> Reply,
) -> Result<Reply> {
    match result {
        Ok(v) => Ok(wrap(tx, v)),
        Err(e) => {
            let _ = tx.send(Err(e.clone()));
            Err(e)
        }
    }
}

/// A conversation's last message, as the writer needs it.
#[derive(Clone)]
struct ConvState {
    last_seq: u64,
    last_ms: u64,
    last_from: Box<str>,
    /// The sender's count of messages up to the last one.
    last_ordinal: u64,
}

/// What the writer remembers between batches.
#[derive(Default)]
struct Caches {
    /// Conversation id -> its last message (absent: not looked up yet).
    seqs: HashMap<Box<str>, ConvState>,
    /// (tenant, user) key prefix -> the user's devices and when each was last seen.
    devices: HashMap<Box<[u8]>, Vec<(String, u64)>>,
}

impl Caches {
    fn clear(&mut self) {
        self.seqs.clear();
        self.devices.clear();
    }

    fn trim(&mut self, max: usize) {
        // Cheap and good enough: the hot entries come back on their next use.
        if self.seqs.len() > max {
            self.seqs.clear();
        }
        if self.devices.len() > max {
            self.devices.clear();
        }
    }
}

/// How long the applier gathers logged batches before applying them, unless
/// a read is waiting; it looks for waiting reads every `GATHER_SLICE`.
const APPLY_GATHER: Duration = Duration::from_millis(2);
const GATHER_SLICE: Duration = Duration::from_micros(250);

/// Most entries each cache keeps between batches. Small on purpose: every
/// connecting user lands in the device cache, and at 65,536 entries it cost
/// about 270 bytes per idle connection (19,500 of them); the conversations
/// that are busy right now are few.
const CACHE_ENTRIES: usize = 8192;

/// A batch on its way to the applier.
pub(super) struct Logged {
    lsn: u64,
    /// The record's ops: the applier writes them to redb in order (as
    /// recovery does) and then retires their keys from the unapplied map.
    ops: Ops,
    /// Size of its log record.
    bytes: u64,
}

pub(super) fn writer_loop(
    db: &Database,
    shared: &Shared,
    wal: &mut Wal,
    mut rx: mpsc::Receiver<WriteOp>,
    to_applier: std_mpsc::SyncSender<Logged>,
    options: &EmbeddedOptions,
) {
    let mut batch = Vec::with_capacity(options.max_batch);
    let mut caches = Caches::default();
    let mut closing = false;
    let mut rotated_at = shared.checkpointed.load(Ordering::Acquire);
    while !closing {
        let Some(first) = rx.blocking_recv() else {
            break;
        };
        closing = matches!(first, WriteOp::Close);
        if !closing {
            batch.push(first);
        }
        while !closing && batch.len() < options.max_batch {
            match rx.try_recv() {
                Ok(WriteOp::Close) => closing = true,
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            continue;
        }
        if let Some(e) = shared.broken() {
            let e = StorageError::Unavailable(e);
            batch.drain(..).for_each(|op| fail_op(op, &e));
            continue;
        }
        if let Err(e) = write_batch(db, shared, wal, &mut caches, &mut batch, &to_applier, options) {
            caches.clear();
            shared.break_with(&e);
            tracing::error!(error = %e, "the store stops taking writes until it is restarted");
        }
        // A new checkpoint: start a segment, delete what it covers.
        let checkpointed = shared.checkpointed.load(Ordering::Acquire);
        if checkpointed != rotated_at {
            rotated_at = checkpointed;
            if let Err(e) = wal.rotate(checkpointed) {
                tracing::error!(error = %e, "cannot rotate the write-ahead log; it keeps growing");
            }
        }
    }
    // Whatever is still queued is rejected when `rx` drops: callers see
    // "the store writer stopped".
    drop(rx);
    // The applier applies what it has, checkpoints and stops.
    drop(to_applier);
}

/// Runs one batch. An error means the store must stop taking writes (the
/// log's state is unknown); a batch that merely fails is answered with its
/// error and is not one.
fn write_batch(
    db: &Database,
    shared: &Shared,
    wal: &mut Wal,
    caches: &mut Caches,
    batch: &mut Vec<WriteOp>,
    to_applier: &std_mpsc::SyncSender<Logged>,
    options: &EmbeddedOptions,
) -> Result<()> {
    let started = Instant::now();
    let durable = batch.iter().any(WriteOp::durable);
    let size = batch.len();
    caches.trim(CACHE_ENTRIES);
    let mut replies = Vec::with_capacity(size);
    let mut failure = None;
    let (writes, log) = {
        // Held while reading: the applier cannot drop an entry this batch
        // relies on between its snapshot and its look at what is unapplied.
        let unapplied = shared.unapplied.lock().map_err(|_| unavailable("the store lock is poisoned"))?;
        let read = db.begin_read().map_err(unavailable)?;
        let mut txn = Txn::new(&read, &unapplied, caches)?;
        for op in batch.drain(..) {
            if let Some(e) = &failure {
                fail_op(op, e);
                continue;
            }
            let outcome = match op {
                WriteOp::Append(msg, tx) => hold(tx, txn.append(msg), Reply::Append),
                WriteOp::Ack(dev, ids, tx) => hold(tx, txn.ack(&dev, &ids), Reply::Ack),
                WriteOp::AckBatch(acks, tx) => {
                    let removed = acks.iter().try_fold(0, |n, (dev, ids)| Ok(n + txn.ack(dev, ids)?));
                    hold(tx, removed, Reply::Ack)
                }
                WriteOp::Register(dev, tx) => {
                    hold(tx, txn.register(&dev, options.max_devices_per_user), Reply::Register)
                }
                WriteOp::MarkRead(read, tx) => hold(tx, txn.mark_read(&read), Reply::MarkRead),
                WriteOp::Recall(tenant, msg_id, by, tx) => hold(tx, txn.recall(&tenant, &msg_id, &by), Reply::Recall),
                WriteOp::AckEvents(acks, tx) => {
                    let removed = acks.iter().try_fold(0, |n, (dev, ids)| Ok(n + txn.ack_events(dev, ids)?));
                    hold(tx, removed, Reply::Ack)
                }
                WriteOp::Records(records, tx) => {
                    for (key, value) in records {
                        txn.write(T::Cs, key, value);
                    }
                    Ok(Reply::Records(tx))
                }
                WriteOp::Close => continue,
            };
            match outcome {
                Ok(reply) => replies.push(reply),
                Err(e) => failure = Some(e),
            }
        }
        (txn.writes, txn.log)
    };
    if let Some(e) = failure {
        // Nothing of this batch is kept: fail every caller.
        caches.clear();
        replies.into_iter().for_each(|r| r.fail(&e));
        metrics::counter!("dongdong_store_commit_failures_total").increment(1);
        tracing::error!(error = %e, "store batch failed; every operation in it was rejected");
        return Ok(());
    }
    if !log.is_empty() {
        let lsn = match wal.append(&log, durable) {
            Ok(lsn) => lsn,
            Err(e) => {
                let e = StorageError::Unavailable(format!("cannot write the write-ahead log: {e}"));
                replies.into_iter().for_each(|r| r.fail(&e));
                metrics::counter!("dongdong_store_commit_failures_total").increment(1);
                return Err(e);
            }
        };
        {
            // The batch's own writes move into the map; the applier gets the
            // record's encoded ops. No write is copied.
            let mut unapplied = shared.unapplied.lock().map_err(|_| unavailable("the store lock is poisoned"))?;
            for (t, entries) in writes.0.into_iter().enumerate() {
                for (k, v) in entries {
                    unapplied.0[t].insert(k, (lsn, v));
                }
            }
        }
        let bytes = log.len() as u64;
        // Blocks while the applier is `APPLIER_QUEUE` batches behind: backpressure.
        if to_applier.send(Logged { lsn, ops: log, bytes }).is_err() {
            let e = unavailable("the store's applier stopped");
            replies.into_iter().for_each(|r| r.fail(&e));
            return Err(e);
        }
        shared.answered.store(lsn, Ordering::Release);
    }
    metrics::histogram!("dongdong_store_batch_size").record(size as f64);
    metrics::histogram!("dongdong_store_commit_seconds", "durable" => if durable { "true" } else { "false" })
        .record(started.elapsed().as_secs_f64());
    replies.into_iter().for_each(Reply::succeed);
    Ok(())
}

/// How often the flusher writes redb's dirty pages back.
const FLUSH_EVERY: Duration = Duration::from_millis(250);

/// Starts a thread that syncs redb's file every `FLUSH_EVERY` until the
/// returned sender drops. The applier's commits are unsynced, so without it
/// their pages pile up in the page cache until a checkpoint (or the kernel)
/// writes them all at once: seconds of disk time at 20k msg/s, during which
/// the log's `fdatasync` waits too (ext4 commits the file system's journal
/// for both). Written back a little at a time, a checkpoint finds little to do.
fn spawn_flusher(path: &std::path::Path) -> Option<(std_mpsc::Sender<()>, std::thread::JoinHandle<()>)> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "cannot open the database file for background writeback");
            return None;
        }
    };
    let (stop, stopped) = std_mpsc::channel::<()>();
    let handle = std::thread::Builder::new()
        .name("dd-store-flush".into())
        .spawn(move || {
            while let Err(std_mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(FLUSH_EVERY) {
                if let Err(e) = file.sync_data() {
                    tracing::warn!(error = %e, "background writeback of the database file failed");
                }
            }
        })
        .ok()?;
    Some((stop, handle))
}

pub(super) fn applier_loop(
    db: &Database,
    path: &std::path::Path,
    shared: &Shared,
    rx: std_mpsc::Receiver<Logged>,
    options: &EmbeddedOptions,
) {
    let flusher = spawn_flusher(path);
    let mut last_checkpoint = Instant::now();
    let mut since_checkpoint = 0u64;
    let mut bytes_since_checkpoint = 0u64;
    let mut applied = shared.checkpointed.load(Ordering::Acquire);
    let mut pending: Vec<Logged> = Vec::new();
    loop {
        match rx.recv_timeout(options.checkpoint_interval) {
            Ok(first) => pending.push(first),
            Err(std_mpsc::RecvTimeoutError::Timeout) => {}
            Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
        }
        // Gather for a moment: one redb commit for many batches costs far
        // less than one each. Readers wait at most this long for it.
        let gather_until = Instant::now() + APPLY_GATHER;
        let mut disconnected = false;
        while !pending.is_empty() && pending.len() < 256 && shared.readers_waiting.load(Ordering::Acquire) == 0 {
            let left = gather_until.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.min(GATHER_SLICE)) {
                Ok(more) => pending.push(more),
                Err(std_mpsc::RecvTimeoutError::Timeout) if !left.is_zero() => continue,
                Err(std_mpsc::RecvTimeoutError::Timeout) => break,
                Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                    disconnected = true;
                    break;
                }
            }
        }
        if !pending.is_empty() {
            match apply(db, &pending) {
                Ok(()) => {
                    let mut unapplied = match shared.unapplied.lock() {
                        Ok(u) => u,
                        Err(_) => return fail_applier(shared, &unavailable("the store lock is poisoned")),
                    };
                    for logged in &pending {
                        for op in logged.ops.iter() {
                            let entries = &mut unapplied.0[slot(op.table)];
                            if entries.get(op.key).is_some_and(|(lsn, _)| *lsn <= logged.lsn) {
                                entries.remove(op.key);
                            }
                        }
                    }
                    drop(unapplied);
                    applied = pending.last().map_or(applied, |l| l.lsn);
                    since_checkpoint += pending.len() as u64;
                    bytes_since_checkpoint += pending.iter().map(|l| l.bytes).sum::<u64>();
                    pending.clear();
                    shared.applied.send_replace(Applied::Upto(applied));
                }
                Err(e) => return fail_applier(shared, &e),
            }
        }
        if disconnected {
            break;
        }
        let due = last_checkpoint.elapsed() >= options.checkpoint_interval
            || bytes_since_checkpoint >= options.checkpoint_bytes;
        if since_checkpoint > 0 && due {
            match checkpoint(db, applied) {
                Ok(()) => {
                    shared.checkpointed.store(applied, Ordering::Release);
                    since_checkpoint = 0;
                    bytes_since_checkpoint = 0;
                    last_checkpoint = Instant::now();
                }
                Err(e) => tracing::error!(error = %e, "checkpoint failed; the log keeps growing until one succeeds"),
            }
        }
    }
    if let Some((stop, handle)) = flusher {
        drop(stop);
        let _ = handle.join();
    }
    // The writer stopped: a last checkpoint leaves nothing to replay.
    if let Err(e) = checkpoint(db, applied) {
        tracing::error!(error = %e, "final checkpoint failed; the log is replayed at the next start");
    } else {
        shared.checkpointed.store(applied, Ordering::Release);
    }
}

fn fail_applier(shared: &Shared, e: &StorageError) {
    let e = StorageError::Unavailable(format!("cannot apply logged writes to redb: {e}"));
    shared.break_with(&e);
    shared.applied.send_replace(Applied::Failed);
    metrics::counter!("dongdong_store_commit_failures_total").increment(1);
    tracing::error!(error = %e, "the store stops taking writes until it is restarted (the log replays them)");
}

/// Applies logged batches to redb in one transaction, without a sync.
fn apply(db: &Database, batches: &[Logged]) -> Result<()> {
    let started = Instant::now();
    let mut txn = db.begin_write().map_err(unavailable)?;
    txn.set_durability(Durability::None).map_err(unavailable)?;
    {
        let mut tables = Tables::open(&txn)?;
        for logged in batches {
            for op in logged.ops.iter() {
                tables.apply(op)?;
            }
        }
    }
    txn.commit().map_err(unavailable)?;
    metrics::histogram!("dongdong_store_apply_seconds").record(started.elapsed().as_secs_f64());
    Ok(())
}

/// The read tables of one snapshot.
struct View<'r> {
    messages: redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
    msg_index: redb::ReadOnlyTable<&'static str, &'static [u8]>,
    conversations: redb::ReadOnlyTable<&'static str, &'static [u8]>,
    idempotency: redb::ReadOnlyTable<&'static [u8], &'static str>,
    pending: redb::ReadOnlyTable<&'static [u8], &'static str>,
    devices: redb::ReadOnlyTable<&'static [u8], u64>,
    reads: redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
    events: redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
    _txn: std::marker::PhantomData<&'r redb::ReadTransaction>,
}

/// One batch being run.
struct Txn<'a> {
    view: View<'a>,
    unapplied: &'a Unapplied,
    caches: &'a mut Caches,
    writes: Writes,
    log: Ops,
}

impl<'a> Txn<'a> {
    fn new(read: &'a redb::ReadTransaction, unapplied: &'a Unapplied, caches: &'a mut Caches) -> Result<Self> {
        let view = View {
            messages: read.open_table(MESSAGES).map_err(unavailable)?,
            msg_index: read.open_table(MSG_INDEX).map_err(unavailable)?,
            conversations: read.open_table(CONVERSATIONS).map_err(unavailable)?,
            idempotency: read.open_table(IDEMPOTENCY).map_err(unavailable)?,
            pending: read.open_table(PENDING).map_err(unavailable)?,
            devices: read.open_table(DEVICES).map_err(unavailable)?,
            reads: read.open_table(READS).map_err(unavailable)?,
            events: read.open_table(EVENTS).map_err(unavailable)?,
            _txn: std::marker::PhantomData,
        };
        Ok(Self { view, unapplied, caches, writes: Writes::default(), log: Ops::default() })
    }

    /// The value of `key`: this batch's writes, then what is logged but not
    /// applied, then redb.
    fn get(&self, t: T, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(v) = self.writes.0[slot(t)].get(key) {
            return Ok(v.clone());
        }
        if let Some((_, v)) = self.unapplied.0[slot(t)].get(key) {
            return Ok(v.clone());
        }
        let text = |k: &[u8]| std::str::from_utf8(k).map(str::to_owned).map_err(|_| corrupt("a key that is not UTF-8"));
        let v = &self.view;
        Ok(match t {
            T::Messages => v.messages.get(key).map_err(unavailable)?.map(|g| g.value().to_vec()),
            T::MsgIndex => v.msg_index.get(text(key)?.as_str()).map_err(unavailable)?.map(|g| g.value().to_vec()),
            T::Conversations => {
                v.conversations.get(text(key)?.as_str()).map_err(unavailable)?.map(|g| g.value().to_vec())
            }
            T::Idempotency => v.idempotency.get(key).map_err(unavailable)?.map(|g| g.value().as_bytes().to_vec()),
            T::Pending => v.pending.get(key).map_err(unavailable)?.map(|g| g.value().as_bytes().to_vec()),
            T::Devices => v.devices.get(key).map_err(unavailable)?.map(|g| g.value().to_be_bytes().to_vec()),
            T::Reads => v.reads.get(key).map_err(unavailable)?.map(|g| g.value().to_vec()),
            T::Events => v.events.get(key).map_err(unavailable)?.map(|g| g.value().to_vec()),
            T::Cs | T::UserConvs => return Err(corrupt("the writer does not read this table")),
        })
    }

    /// Every live entry under `prefix` of a byte-keyed table, all layers merged.
    fn scan(&self, t: T, prefix: &[u8]) -> Result<BTreeMap<Vec<u8>, Vec<u8>>> {
        let mut out = BTreeMap::new();
        let v = &self.view;
        match t {
            T::Pending => {
                for item in v.pending.range(prefix..).map_err(unavailable)? {
                    let (k, val) = item.map_err(unavailable)?;
                    if !k.value().starts_with(prefix) {
                        break;
                    }
                    out.insert(k.value().to_vec(), val.value().as_bytes().to_vec());
                }
            }
            T::Devices => {
                for item in v.devices.range(prefix..).map_err(unavailable)? {
                    let (k, val) = item.map_err(unavailable)?;
                    if !k.value().starts_with(prefix) {
                        break;
                    }
                    out.insert(k.value().to_vec(), val.value().to_be_bytes().to_vec());
                }
            }
            T::Events => {
                for item in v.events.range(prefix..).map_err(unavailable)? {
                    let (k, val) = item.map_err(unavailable)?;
                    if !k.value().starts_with(prefix) {
                        break;
                    }
                    out.insert(k.value().to_vec(), val.value().to_vec());
                }
            }
            _ => return Err(corrupt("a prefix scan of a table the writer does not scan")),
        }
        for (k, (_, val)) in self.unapplied.0[slot(t)].range(prefix.to_vec()..) {
            if !k.starts_with(prefix) {
                break;
            }
            match val {
                Some(val) => out.insert(k.clone(), val.clone()),
                None => out.remove(k),
            };
        }
        for (k, val) in self.writes.0[slot(t)].range(prefix.to_vec()..) {
            if !k.starts_with(prefix) {
                break;
            }
            match val {
                Some(val) => out.insert(k.clone(), val.clone()),
                None => out.remove(k),
            };
        }
        Ok(out)
    }

    fn write(&mut self, t: T, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.log.push(Op { table: t, key: &key, value: value.as_deref() });
        self.writes.0[slot(t)].insert(key, value);
    }

    /// The conversation's last message (`None`: it has none).
    fn conv_state(&mut self, conversation: &str) -> Result<Option<ConvState>> {
        if let Some(state) = self.caches.seqs.get(conversation) {
            return Ok(Some(state.clone()));
        }
        // Not cached: redb, or a record not applied yet (the cache may have
        // been trimmed since it was logged).
        let mut seq = last_seq(&self.view.messages, conversation)?;
        let prefix = Key::new().s(conversation).into_vec();
        for k in self.unapplied.0[slot(T::Messages)].range(prefix.clone()..).map(|(k, _)| k) {
            if !k.starts_with(&prefix) {
                break;
            }
            let s = k.get(k.len().saturating_sub(8)..).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
            seq = seq.max(s.ok_or_else(|| corrupt("message key"))?);
        }
        if seq == 0 {
            return Ok(None);
        }
        let (last, ordinal) = self.message_at(conversation, seq)?.ok_or_else(|| corrupt("last message vanished"))?;
        let state = ConvState {
            last_seq: seq,
            last_ms: last.server_time_ms,
            last_from: last.from_user.into(),
            last_ordinal: ordinal,
        };
        self.caches.seqs.insert(conversation.into(), state.clone());
        Ok(Some(state))
    }

    /// The message at `seq` and its sender's ordinal (counted for records
    /// written before ordinals were stored).
    fn message_at(&self, conversation: &str, seq: u64) -> Result<Option<(Message, u64)>> {
        let Some(bytes) = self.get(T::Messages, &message_key(conversation, seq))? else {
            return Ok(None);
        };
        let message = decode_message(&bytes)?;
        let mut ordinal = stored_ordinal(&bytes);
        if ordinal == 0 {
            for earlier in 1..=seq {
                if let Some(b) = self.get(T::Messages, &message_key(conversation, earlier))?
                    && decode_message(&b)?.from_user == message.from_user
                {
                    ordinal += 1;
                }
            }
        }
        Ok(Some((message, ordinal)))
    }

    /// Makes `frame` (version `version`, key `key`) pending for every
    /// known device of `users` except `except`.
    fn put_event(
        &mut self,
        tenant: &str,
        users: &[&str],
        except: &DeviceKey,
        key: &str,
        version: u64,
        frame: &im_core::pb::Frame,
    ) -> Result<()> {
        let value = encode_event(version, frame);
        for (i, user) in users.iter().enumerate() {
            if users[..i].contains(user) {
                continue;
            }
            for (device, _) in self.devices_of(tenant, user)? {
                if *user == except.user && device == except.device {
                    continue;
                }
                self.write(T::Events, event_key(tenant, user, &device, key), Some(value.clone()));
            }
        }
        Ok(())
    }

    fn devices_of(&mut self, tenant: &str, user: &str) -> Result<Vec<(String, u64)>> {
        let prefix = device_prefix(tenant, user);
        if let Some(devices) = self.caches.devices.get(prefix.as_slice()) {
            return Ok(devices.clone());
        }
        let mut out = Vec::new();
        for (k, v) in self.scan(T::Devices, &prefix)? {
            let mut r = Reader::new(&k[prefix.len()..]);
            let device = r.s().ok_or_else(|| corrupt("device key"))?;
            let seen = v.as_slice().try_into().map(u64::from_be_bytes).map_err(|_| corrupt("device record"))?;
            out.push((device.to_string(), seen));
        }
        self.caches.devices.insert(prefix.into_boxed_slice(), out.clone());
        Ok(out)
    }

    fn message_by_id(&self, msg_id: &str) -> Result<Option<Message>> {
        let Some(pos) = self.get(T::MsgIndex, msg_id.as_bytes())? else {
            return Ok(None);
        };
        let mut r = Reader::new(&pos);
        let (Some(conv), Some(seq)) = (r.s(), r.n()) else {
            return Err(corrupt("message index record"));
        };
        match self.get(T::Messages, &message_key(conv, seq))? {
            Some(v) => decode_message(&v).map(Some),
            None => Err(corrupt("message index points at a missing message")),
        }
    }

    fn append(&mut self, new: NewMessage) -> Result<Appended> {
        let idem_key = Key::new().s(&new.tenant).s(&new.from_user).s(&new.client_msg_id).into_vec();
        if let Some(msg_id) = self.get(T::Idempotency, &idem_key)? {
            let msg_id = String::from_utf8(msg_id).map_err(|_| corrupt("idempotency record"))?;
            let message = self.message_by_id(&msg_id)?.ok_or_else(|| corrupt("idempotency key without message"))?;
            return Ok(Appended { message, duplicate: true, recovered: Vec::new() });
        }
        let state = self.conv_state(&new.conversation_id)?;
        let seq = state.as_ref().map_or(0, |s| s.last_seq) + 1;
        let ordinal = state
            .as_ref()
            .map_or(0, |s| storage::sent_counts(s.last_seq, &s.last_from, s.last_ordinal, &new.from_user).0)
            + 1;
        if seq == 1 {
            if self.get(T::Conversations, new.conversation_id.as_bytes())?.is_some() {
                return Err(corrupt("conversation record without messages"));
            }
            let mut members = [new.from_user.clone(), new.to_user.clone()];
            members.sort();
            let conv = Conversation {
                tenant: new.tenant.clone(),
                conversation_id: new.conversation_id.clone(),
                members,
                last_seq: 0,
            };
            self.write(T::Conversations, conv.conversation_id.clone().into_bytes(), Some(encode_conversation(&conv)));
        }
        let message = Message {
            msg_id: im_core::new_msg_id(),
            conversation_id: new.conversation_id.clone(),
            seq,
            from_user: new.from_user.clone(),
            from_device: new.from_device.clone(),
            to_user: new.to_user.clone(),
            content: Some(new.content),
            client_msg_id: new.client_msg_id,
            server_time_ms: im_core::now_ms(),
            recalled_by: String::new(),
            recalled_ms: 0,
        };
        let position = message_key(&new.conversation_id, seq);
        self.write(T::Messages, position.clone(), Some(encode_stored(&message, ordinal)));
        self.write(T::MsgIndex, message.msg_id.clone().into_bytes(), Some(position));
        self.write(T::Idempotency, idem_key, Some(message.msg_id.clone().into_bytes()));
        // Both members' conversation lists: moved to the new time.
        let now = message.server_time_ms;
        let members: &[&str] =
            if new.from_user == new.to_user { &[&new.from_user] } else { &[&new.from_user, &new.to_user] };
        for member in members {
            let previous = state.as_ref().map(|s| s.last_ms);
            if previous == Some(now) {
                continue;
            }
            if let Some(previous) = previous {
                self.write(T::UserConvs, user_conv_key(&new.tenant, member, previous, &new.conversation_id), None);
            }
            let key = user_conv_key(&new.tenant, member, now, &new.conversation_id);
            self.write(T::UserConvs, key, Some(Vec::new()));
        }
        let state =
            ConvState { last_seq: seq, last_ms: now, last_from: new.from_user.as_str().into(), last_ordinal: ordinal };
        self.caches.seqs.insert(new.conversation_id.as_str().into(), state);
        // Every device of the recipient, every other device of the sender.
        let recipient_devices = self.devices_of(&new.tenant, &new.to_user)?;
        let mut targets: Vec<(&str, String)> = Vec::with_capacity(recipient_devices.len() + 2);
        if recipient_devices.is_empty() && new.to_user != new.from_user {
            targets.push((&new.to_user, USER_SLOT.to_string()));
        }
        targets.extend(recipient_devices.into_iter().map(|(d, _)| (new.to_user.as_str(), d)));
        if new.to_user != new.from_user {
            let sender_devices = self.devices_of(&new.tenant, &new.from_user)?;
            targets.extend(sender_devices.into_iter().map(|(d, _)| (new.from_user.as_str(), d)));
        }
        for (user, device) in targets {
            if user == new.from_user && device == new.from_device {
                continue;
            }
            let key = pending_key(&new.tenant, user, &device, &new.conversation_id, seq);
            self.write(T::Pending, key, Some(message.msg_id.clone().into_bytes()));
        }
        Ok(Appended { message, duplicate: false, recovered: Vec::new() })
    }

    fn ack(&mut self, dev: &DeviceKey, msg_ids: &[String]) -> Result<usize> {
        let mut removed = 0;
        for msg_id in msg_ids {
            let Some(pos) = self.get(T::MsgIndex, msg_id.as_bytes())? else {
                continue;
            };
            let mut r = Reader::new(&pos);
            let (Some(conv), Some(seq)) = (r.s(), r.n()) else {
                return Err(corrupt("message index record"));
            };
            let key = pending_key(&dev.tenant, &dev.user, &dev.device, conv, seq);
            if self.get(T::Pending, &key)?.is_some() {
                self.write(T::Pending, key, None);
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Removes every pending entry of one device slot; returns them as
    /// (conversation, seq, msg_id).
    fn take_pending(&mut self, tenant: &str, user: &str, device: &str) -> Result<Vec<(String, u64, Vec<u8>)>> {
        let prefix = device_key(tenant, user, device);
        let entries = self.scan(T::Pending, &prefix)?;
        let mut out = Vec::with_capacity(entries.len());
        for (k, msg_id) in entries {
            let mut r = Reader::new(&k[prefix.len()..]);
            let (Some(conv), Some(seq)) = (r.s(), r.n()) else {
                return Err(corrupt("pending key"));
            };
            out.push((conv.to_string(), seq, msg_id));
            self.write(T::Pending, k, None);
        }
        Ok(out)
    }

    fn register(&mut self, dev: &DeviceKey, max_devices: usize) -> Result<DeviceRegistration> {
        let key = device_key(&dev.tenant, &dev.user, &dev.device);
        let now = im_core::now_ms();
        let mut known = self.devices_of(&dev.tenant, &dev.user)?;
        let mut reg = DeviceRegistration::default();
        if let Some(entry) = known.iter_mut().find(|(d, _)| d == &dev.device) {
            entry.1 = now;
        } else {
            reg.new_device = true;
            if known.is_empty() {
                let claimed = self.take_pending(&dev.tenant, &dev.user, USER_SLOT)?;
                reg.claimed = claimed.len() as u64;
                for (conv, seq, msg_id) in claimed {
                    self.write(T::Pending, pending_key(&dev.tenant, &dev.user, &dev.device, &conv, seq), Some(msg_id));
                }
            } else if known.len() >= max_devices.max(1)
                && let Some(oldest) = known.iter().min_by_key(|(_, seen)| *seen).map(|(d, _)| d.clone())
            {
                self.write(T::Devices, device_key(&dev.tenant, &dev.user, &oldest), None);
                self.take_pending(&dev.tenant, &dev.user, &oldest)?;
                for (k, _) in self.scan(T::Events, &device_key(&dev.tenant, &dev.user, &oldest))? {
                    self.write(T::Events, k, None);
                }
                known.retain(|(d, _)| d != &oldest);
                reg.evicted = Some(oldest);
            }
            known.push((dev.device.clone(), now));
        }
        self.write(T::Devices, key, Some(now.to_be_bytes().to_vec()));
        self.caches.devices.insert(device_prefix(&dev.tenant, &dev.user).into_boxed_slice(), known);
        Ok(reg)
    }

    fn mark_read(&mut self, read: &MarkRead) -> Result<MarkOutcome> {
        let reader = &read.reader;
        let Some(record) = self.get(T::Conversations, read.conversation_id.as_bytes())? else {
            return Ok(MarkOutcome::NotFound);
        };
        let conv = decode_conversation(&read.conversation_id, &record, 0)?;
        if conv.tenant != reader.tenant {
            return Ok(MarkOutcome::NotFound);
        }
        if !conv.has_member(&reader.user) {
            return Ok(MarkOutcome::NotMember);
        }
        let peer = conv.members.iter().find(|m| **m != reader.user).unwrap_or(&reader.user).clone();
        let key = reads_key(&read.conversation_id, &reader.user);
        let current = decode_read_state(self.get(T::Reads, &key)?.as_deref())?;
        let last = self.conv_state(&read.conversation_id)?.map_or(0, |s| s.last_seq);
        let up_to = read.up_to_seq.min(last);
        if up_to <= current.read_seq {
            return Ok(MarkOutcome::Marked(ReadMark { read_seq: current.read_seq, moved: false, peer }));
        }
        let (message, ordinal) =
            self.message_at(&read.conversation_id, up_to)?.ok_or_else(|| corrupt("a message below the last seq"))?;
        let peer_sent = if peer == reader.user {
            0
        } else {
            storage::sent_counts(up_to, &message.from_user, ordinal, &reader.user).1
        };
        let state = ReadState { read_seq: up_to, peer_sent };
        self.write(T::Reads, key, Some(state.encode().to_vec()));
        let frame = storage::receipt_frame(&read.conversation_id, &reader.user, up_to);
        let event = storage::receipt_key(&read.conversation_id, &reader.user);
        self.put_event(&reader.tenant, &[&peer, &reader.user], reader, &event, up_to, &frame)?;
        Ok(MarkOutcome::Marked(ReadMark { read_seq: up_to, moved: true, peer }))
    }

    fn recall(&mut self, tenant: &str, msg_id: &str, by: &DeviceKey) -> Result<Option<RecallOutcome>> {
        let Some(pos) = self.get(T::MsgIndex, msg_id.as_bytes())? else {
            return Ok(None);
        };
        let mut r = Reader::new(&pos);
        let (Some(conv), Some(seq)) = (r.s(), r.n()) else {
            return Err(corrupt("message index record"));
        };
        let Some(record) = self.get(T::Conversations, conv.as_bytes())? else {
            return Err(corrupt("a message without its conversation"));
        };
        if decode_conversation(conv, &record, 0)?.tenant != tenant {
            return Ok(None);
        }
        let (mut message, ordinal) =
            self.message_at(conv, seq)?.ok_or_else(|| corrupt("message index points at a missing message"))?;
        if !message.recalled_by.is_empty() {
            return Ok(Some(RecallOutcome { message, fresh: false }));
        }
        message.content = None;
        message.recalled_by = by.user.clone();
        message.recalled_ms = im_core::now_ms();
        self.write(T::Messages, message_key(conv, seq), Some(encode_stored(&message, ordinal)));
        let frame = storage::recalled_frame(&message);
        let event = storage::recall_key(conv, msg_id);
        self.put_event(tenant, &[&message.from_user, &message.to_user], by, &event, 1, &frame)?;
        Ok(Some(RecallOutcome { message, fresh: true }))
    }

    fn ack_events(&mut self, dev: &DeviceKey, ids: &[String]) -> Result<usize> {
        let mut removed = 0;
        for id in ids {
            let Some((key, version)) = storage::parse_event_id(id) else { continue };
            let key = event_key(&dev.tenant, &dev.user, &dev.device, key);
            if self.get(T::Events, &key)?.as_deref().and_then(event_version) == Some(version) {
                self.write(T::Events, key, None);
                removed += 1;
            }
        }
        Ok(removed)
    }
}
