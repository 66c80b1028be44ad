//! Opening after a crash: the log's records after redb's last checkpoint
//! are replayed into redb, and the result made a checkpoint.

use crate::errors::unavailable;
use crate::tables::{APPLIED_LSN, META, Tables};
use crate::wal::{self, Wal};
use redb::{Database, Durability, ReadableDatabase};
use std::path::Path;
use std::time::Instant;
use storage::{Result, StorageError};

/// The log's directory inside the data directory.
pub(crate) const WAL_DIR: &str = "wal";

/// Replays the log's records after redb's last checkpoint, makes the result
/// a checkpoint, and starts the log afresh.
pub(crate) fn recover(db: &Database, dir: &Path) -> Result<(Wal, u64)> {
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

/// Crash recovery of the whole store: what a `kill -9` or a power cut can
/// leave in the log.
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::{EmbeddedOptions, EmbeddedStore};
    use im_core::pb::Message;
    use std::path::PathBuf;
    use std::time::Duration;
    use storage::{DeviceKey, DeviceRegistry, HistoryQuery, MessageStore, NewMessage, PendingCursor, PendingStore};

    /// Alice's message `m{i}` to Bob, with text that is not ASCII.
    fn new_message(i: usize) -> NewMessage {
        let content = im_core::pb::Content { kind: Some(im_core::pb::content::Kind::Text(format!("消息 {i}"))) };
        NewMessage { content, ..crate::tests::new_message(&format!("m{i}")) }
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
