//! What the writer, the applier and readers share: the writes logged but
//! not yet applied to redb, how far the applier is, and whether the store
//! broke.

use crate::tables::Table as T;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use storage::StorageError;
use tokio::sync::watch;

/// Writes logged but not yet in redb, each tagged with the LSN of the record
/// that holds it. The writer adds a batch after logging it; the applier
/// removes it once committed (unless a later record rewrote the key).
#[derive(Default)]
pub(crate) struct Unapplied(pub(crate) [BTreeMap<Vec<u8>, Tagged>; T::ALL.len()]);

/// A value (`None`: deleted) and the LSN of the record that wrote it.
type Tagged = (u64, Option<Vec<u8>>);

impl Unapplied {
    /// The entries of table `t` from `start` on that begin with `prefix`.
    pub(crate) fn range(&self, t: T, start: &[u8], prefix: &[u8]) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        self.0[t.index()]
            .range(start.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, (_, v))| (k.clone(), v.clone()))
            .collect()
    }

    /// `Some(value or None for deleted)` if `key` of table `t` is unapplied.
    pub(crate) fn get(&self, t: T, key: &[u8]) -> Option<Option<Vec<u8>>> {
        self.0[t.index()].get(key).map(|(_, v)| v.clone())
    }
}

/// How far the applier is: the last LSN in redb, or the failure that
/// stopped it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Applied {
    Upto(u64),
    Failed,
}

/// What the writer, the applier and readers share.
pub(crate) struct Shared {
    pub(crate) unapplied: Mutex<Unapplied>,
    /// The LSN of the last record whose callers were answered.
    pub(crate) answered: AtomicU64,
    pub(crate) applied: watch::Sender<Applied>,
    /// The LSN the last checkpoint covers.
    pub(crate) checkpointed: AtomicU64,
    /// Why the store stopped taking writes, if it did.
    pub(crate) broken: Mutex<Option<String>>,
    /// Reads waiting for the applier: it stops gathering when there are any.
    pub(crate) readers_waiting: AtomicUsize,
}

impl Shared {
    pub(crate) fn new(applied: u64) -> Self {
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
    pub(crate) fn reader_waiting(&self) -> WaitingReader<'_> {
        self.readers_waiting.fetch_add(1, Ordering::AcqRel);
        WaitingReader(self)
    }

    pub(crate) fn break_with(&self, e: &StorageError) {
        if let Ok(mut b) = self.broken.lock() {
            b.get_or_insert_with(|| e.to_string());
        }
    }

    pub(crate) fn broken(&self) -> Option<String> {
        self.broken.lock().ok().and_then(|b| b.clone())
    }
}

pub(crate) struct WaitingReader<'a>(&'a Shared);

impl Drop for WaitingReader<'_> {
    fn drop(&mut self) {
        self.0.readers_waiting.fetch_sub(1, Ordering::AcqRel);
    }
}
