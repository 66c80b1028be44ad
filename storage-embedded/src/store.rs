//! [`EmbeddedStore`], the handle every storage trait is implemented on: it
//! starts the writer and applier threads, queues writes for the writer, and
//! runs reads on tokio's blocking pool once redb holds what they must see.

use crate::applier::applier_loop;
use crate::errors::unavailable;
use crate::options::EmbeddedOptions;
use crate::records::decode_message;
use crate::recovery::{WAL_DIR, recover};
use crate::shared::{Applied, Shared};
use crate::tables::{self, MESSAGES, Table as T};
use crate::writer::{Records, WriteOp, writer_loop};
use im_core::pb::Message;
use redb::{Database, ReadableDatabase};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use storage::{Result, StorageError};
use tokio::sync::{mpsc, oneshot};

/// Messages, pending ids and devices: a write-ahead log and one redb database.
pub struct EmbeddedStore {
    pub(crate) db: Arc<Database>,
    pub(crate) tx: mpsc::Sender<WriteOp>,
    pub(crate) writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) path: PathBuf,
    /// Revocations, one write at a time (read, raised, written).
    pub(crate) revoking: tokio::sync::Mutex<()>,
    /// Uploads and deletions of files, one at a time (a blob shared by two
    /// uploads is deleted only when neither refers to it).
    pub(crate) files_lock: tokio::sync::Mutex<()>,
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
        tables::create(&db)?;
        let (mut wal, applied) = recover(&db, &dir.join(WAL_DIR))?;
        let shared = Arc::new(Shared::new(applied));
        let (to_applier, from_writer) = std::sync::mpsc::sync_channel(APPLIER_QUEUE);
        let applier = {
            let (db, shared, options, file) = (db.clone(), shared.clone(), options.clone(), path.clone());
            std::thread::Builder::new()
                .name("dd-store-apply".into())
                .spawn(move || applier_loop(&db, &file, &shared, from_writer, &options))
                .map_err(|e| StorageError::Unavailable(format!("cannot start the applier thread: {e}")))?
        };
        let (tx, rx) = mpsc::channel(options.queue.max(1));
        let writer = {
            let (db, shared) = (db.clone(), shared.clone());
            std::thread::Builder::new()
                .name("dd-store-write".into())
                .spawn(move || {
                    writer_loop(&db, &shared, &mut wal, rx, to_applier, &options);
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
    pub(crate) async fn read_now<T: Send + 'static>(
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

    pub(crate) async fn submit<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> WriteOp) -> Result<T> {
        let (reply_tx, reply_rx) = oneshot::channel();
        self.tx.send(make(reply_tx)).await.map_err(|_| StorageError::Unavailable("the store is closed".into()))?;
        reply_rx.await.map_err(|_| StorageError::Unavailable("the store writer stopped".into()))?
    }

    /// Runs `f` on the blocking pool once redb holds every write whose
    /// callers were answered before this call (the applier trails the
    /// writer by a batch or a few).
    pub(crate) async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T> + Send + 'static,
    ) -> Result<T> {
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

/// Entries the applier has not applied: key and value (`None`: deleted).
type UnappliedEntries = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// A redb snapshot and the unapplied `pending` entries from `start` under
/// `prefix`, taken together under the applier's lock: the applier removes an
/// entry only after committing it, so each write is in one or the other.
pub(crate) fn pending_view(
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
pub(crate) fn message_since(db: &Database, shared: &Shared, position: &[u8]) -> Result<Option<Message>> {
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
