//! The applier thread: it writes what the writer logged into redb, in
//! transactions as large as what has gathered (without a sync), and when
//! [`CheckpointPolicy`] says so (every `checkpoint_interval`, 10 s, or
//! `checkpoint_bytes`, 64 MiB, of log, whichever comes first, if anything
//! was applied) makes a checkpoint: a synced commit recording the last LSN
//! applied, after which the writer deletes the log segments it covers. A
//! flusher thread writes redb's dirty pages back meanwhile.

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

/// When the applier makes a checkpoint: once `interval` has passed since
/// the last, or `bytes` of log were applied since, provided anything was.
/// Each checkpoint's fsync competes with the log's, so they are rare; the
/// bytes bound the log on disk and the replay after a crash.
#[derive(Debug)]
pub(crate) struct CheckpointPolicy {
    interval: Duration,
    bytes: u64,
    last: Instant,
    applied_bytes: u64,
    applied_any: bool,
}

impl CheckpointPolicy {
    pub(crate) fn new(interval: Duration, bytes: u64, now: Instant) -> Self {
        Self { interval, bytes, last: now, applied_bytes: 0, applied_any: false }
    }

    /// Batches of `bytes` of log were applied.
    pub(crate) fn applied(&mut self, bytes: u64) {
        self.applied_bytes = self.applied_bytes.saturating_add(bytes);
        self.applied_any = true;
    }

    pub(crate) fn due(&self, now: Instant) -> bool {
        self.applied_any && (now.duration_since(self.last) >= self.interval || self.applied_bytes >= self.bytes)
    }

    /// A checkpoint succeeded at `now` (a failed one changes nothing: it
    /// is due again).
    pub(crate) fn checkpointed(&mut self, now: Instant) {
        *self = Self::new(self.interval, self.bytes, now);
    }
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

pub(crate) fn applier_loop(
    db: &Database,
    path: &std::path::Path,
    shared: &Shared,
    rx: std_mpsc::Receiver<Logged>,
    options: &EmbeddedOptions,
) {
    let flusher = spawn_flusher(path);
    let mut policy = CheckpointPolicy::new(options.checkpoint_interval, options.checkpoint_bytes, Instant::now());
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
                    policy.applied(pending.iter().map(|l| l.bytes).sum::<u64>());
                    pending.clear();
                    shared.applied.send_replace(Applied::Upto(applied));
                }
                Err(e) => return fail_applier(shared, &e),
            }
        }
        if disconnected {
            break;
        }
        if policy.due(Instant::now()) {
            match checkpoint(db, applied) {
                Ok(()) => {
                    shared.checkpointed.store(applied, Ordering::Release);
                    policy.checkpointed(Instant::now());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_come_by_time_or_by_log_size_and_only_after_writes() {
        let t0 = Instant::now();
        let mut p = CheckpointPolicy::new(Duration::from_secs(10), 1000, t0);
        assert!(!p.due(t0 + Duration::from_secs(60)), "nothing applied: nothing to checkpoint");
        p.applied(10);
        assert!(!p.due(t0 + Duration::from_secs(9)));
        assert!(p.due(t0 + Duration::from_secs(10)), "the interval passed");
        p.checkpointed(t0 + Duration::from_secs(10));
        assert!(!p.due(t0 + Duration::from_secs(30)), "nothing applied since");
        p.applied(600);
        p.applied(400);
        assert!(p.due(t0 + Duration::from_secs(11)), "1000 bytes of log since the last");
        // A failed checkpoint leaves it due.
        assert!(p.due(t0 + Duration::from_secs(12)));
    }
}
