//! The writer thread, the one that changes the store.
//!
//! It drains the queue into batches (group commit). A batch's operations
//! run in queue order against what is already stored — redb, plus the
//! writes logged but not yet applied to it (`crate::shared::Unapplied`),
//! plus the batch's own earlier writes — and produce table writes (see
//! `crate::txn`). Those become one log record, appended and synced
//! (`fdatasync`) when the batch holds a message; then they join the
//! unapplied writes, go to the applier, and the callers are answered. The
//! writer never writes redb: the ack path is the log.
//!
//! Readers wait until the applier has applied every record whose callers
//! were answered before the read started (see `EmbeddedStore::read`): a read
//! never misses a write that was acknowledged.

use crate::applier::Logged;
use crate::errors::unavailable;
use crate::options::EmbeddedOptions;
use crate::shared::Shared;
use crate::tables::Table as T;
use crate::txn::{Caches, Txn, Writes};
use crate::wal::{Ops, Wal};
use redb::{Database, ReadableDatabase};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc as std_mpsc;
use std::time::Instant;
use storage::{
    Appended, DeviceKey, DeviceRegistration, MarkOutcome, MarkRead, NewMessage, RecallOutcome, Result, StorageError,
};
use tokio::sync::{mpsc, oneshot};

/// Puts (Some) or deletes (None) of records in the records table, by key.
pub(crate) type Records = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// An operation for the writer, with the channel its answer goes to.
pub(crate) enum WriteOp {
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
    pub(crate) fn durable(&self) -> bool {
        matches!(self, WriteOp::Append(..) | WriteOp::Records(..) | WriteOp::Recall(..))
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

pub(crate) fn fail_op(op: WriteOp, e: &StorageError) {
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

/// Most entries each cache keeps between batches. Small on purpose: every
/// connecting user lands in the device cache, and at 65,536 entries it cost
/// about 270 bytes per idle connection (19,500 of them); the conversations
/// that are busy right now are few.
const CACHE_ENTRIES: usize = 8192;

pub(crate) fn writer_loop(
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
            match run(&mut txn, op, options) {
                Some(Ok(reply)) => replies.push(reply),
                Some(Err(e)) => failure = Some(e),
                None => {}
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
    if !log.is_empty()
        && let Err(e) = hand_over(shared, wal, writes, log, durable, to_applier)
    {
        replies.into_iter().for_each(|r| r.fail(&e));
        metrics::counter!("dongdong_store_commit_failures_total").increment(1);
        return Err(e);
    }
    metrics::histogram!("dongdong_store_batch_size").record(size as f64);
    metrics::histogram!("dongdong_store_commit_seconds", "durable" => if durable { "true" } else { "false" })
        .record(started.elapsed().as_secs_f64());
    replies.into_iter().for_each(Reply::succeed);
    Ok(())
}

/// Runs one operation of a batch: its reply, held until the batch is
/// logged (`None`: nothing to answer).
fn run(txn: &mut Txn<'_>, op: WriteOp, options: &EmbeddedOptions) -> Option<Result<Reply>> {
    Some(match op {
        WriteOp::Append(msg, tx) => hold(tx, txn.append(msg), Reply::Append),
        WriteOp::Ack(dev, ids, tx) => hold(tx, txn.ack(&dev, &ids), Reply::Ack),
        WriteOp::AckBatch(acks, tx) => {
            let removed = acks.iter().try_fold(0, |n, (dev, ids)| Ok(n + txn.ack(dev, ids)?));
            hold(tx, removed, Reply::Ack)
        }
        WriteOp::Register(dev, tx) => hold(tx, txn.register(&dev, options.max_devices_per_user), Reply::Register),
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
        WriteOp::Close => return None,
    })
}

/// Appends the batch's record to the log (synced when `durable`), makes its
/// writes visible to readers as unapplied, and hands it to the applier.
fn hand_over(
    shared: &Shared,
    wal: &mut Wal,
    writes: Writes,
    log: Ops,
    durable: bool,
    to_applier: &std_mpsc::SyncSender<Logged>,
) -> Result<()> {
    let lsn = wal
        .append(&log, durable)
        .map_err(|e| StorageError::Unavailable(format!("cannot write the write-ahead log: {e}")))?;
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
    to_applier.send(Logged { lsn, ops: log, bytes }).map_err(|_| unavailable("the store's applier stopped"))?;
    shared.answered.store(lsn, Ordering::Release);
    Ok(())
}
