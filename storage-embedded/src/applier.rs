//! The applier thread: it writes what the writer logged into redb, in
//! transactions as large as what has gathered (without a sync), and now and
//! then makes a checkpoint: a synced commit recording the last LSN applied,
//! after which the writer deletes the log segments it covers. A flusher
//! thread writes redb's dirty pages back meanwhile.

use crate::errors::unavailable;
use crate::options::EmbeddedOptions;
use crate::shared::{Applied, Shared};
use crate::tables::{APPLIED_LSN, META, Tables};
use crate::wal::Ops;
use redb::{Database, Durability};
use std::sync::atomic::Ordering;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};
use storage::{Result, StorageError};

/// A batch on its way to the applier.
pub(crate) struct Logged {
    pub(crate) lsn: u64,
    /// The record's ops: the applier writes them to redb in order (as
    /// recovery does) and then retires their keys from the unapplied map.
    pub(crate) ops: Ops,
    /// Size of its log record.
    pub(crate) bytes: u64,
}

/// How long the applier gathers logged batches before applying them, unless
/// a read is waiting; it looks for waiting reads every `GATHER_SLICE`.
const APPLY_GATHER: Duration = Duration::from_millis(2);
const GATHER_SLICE: Duration = Duration::from_micros(250);

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

pub(crate) fn applier_loop(
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
                            let entries = &mut unapplied.0[op.table.index()];
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
