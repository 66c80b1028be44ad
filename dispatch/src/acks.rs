//! Acks on their way to the store. A connection hands the ids of an `Ack`
//! frame to the node's [`AckQueue`] and goes on at once: removing pending ids
//! needs no fsync (a lost ack costs one redelivery, which clients dedupe by
//! `msg_id`), and a connection that waited on the store for each ack would
//! hold back its pushes and reads meanwhile.
//!
//! One task drains the queue and removes what it gathered with one storage
//! call ([`PendingStore::ack_batch`]). Bounded: the queue holds at most
//! `capacity` ack frames; when it is full, [`AckQueue::try_ack`] hands the
//! ids back and the connection stops reading frames until
//! [`AckQueue::ack`] finds room. A batch the store refuses is retried with
//! backoff; after the last retry its ids are counted as dropped
//! (`dongdong_acks_dropped_total`) and logged: they stay pending and are
//! delivered again.

use std::sync::Arc;
use std::time::Duration;
use storage::{DeviceKey, PendingStore};
use tokio::sync::{mpsc, oneshot};

/// Most ids removed in one storage call.
const MAX_BATCH_IDS: usize = 4096;
/// Attempts per batch before its ids are dropped (they stay pending).
const ATTEMPTS: u32 = 5;
const RETRY_BACKOFF: Duration = Duration::from_millis(100);

enum Item {
    Ack(Arc<DeviceKey>, Vec<String>),
    /// Answered once everything queued before it has been stored.
    Flush(oneshot::Sender<()>),
}

/// Ids acked by a device, handed back because the queue was full.
#[derive(Debug)]
pub struct Held(pub Arc<DeviceKey>, pub Vec<String>);

/// See the module docs.
#[derive(Clone)]
pub struct AckQueue {
    tx: mpsc::Sender<Item>,
}

impl AckQueue {
    /// Starts the task that stores what is queued (at most `capacity` ack
    /// frames); it ends when every handle is dropped.
    pub fn start(pending: Arc<dyn PendingStore>, capacity: usize) -> Self {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        tokio::spawn(drain(pending, rx));
        Self { tx }
    }

    /// Queues the ids without waiting; a full queue hands them back.
    pub fn try_ack(&self, device: Arc<DeviceKey>, msg_ids: Vec<String>) -> Result<(), Held> {
        match self.tx.try_send(Item::Ack(device, msg_ids)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(Item::Ack(d, ids))) => Err(Held(d, ids)),
            // Closed: the node is shutting down; the ids stay pending.
            Err(_) => Ok(()),
        }
    }

    /// Queues the ids, waiting for room.
    pub async fn ack(&self, device: Arc<DeviceKey>, msg_ids: Vec<String>) {
        let _ = self.tx.send(Item::Ack(device, msg_ids)).await;
    }

    /// Returns once everything queued before the call has been stored (or
    /// dropped after its retries).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Item::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

async fn drain(pending: Arc<dyn PendingStore>, mut rx: mpsc::Receiver<Item>) {
    let mut batch: Vec<(Arc<DeviceKey>, Vec<String>)> = Vec::new();
    let mut flushed: Vec<oneshot::Sender<()>> = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut ids = 0;
        let mut next = Some(first);
        while let Some(item) = next.take() {
            match item {
                Item::Ack(device, msg_ids) => {
                    ids += msg_ids.len();
                    batch.push((device, msg_ids));
                }
                Item::Flush(done) => flushed.push(done),
            }
            if ids < MAX_BATCH_IDS {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            store(&*pending, &batch, ids).await;
            batch.clear();
            if batch.capacity() > 1024 {
                batch = Vec::new();
            }
        }
        for done in flushed.drain(..) {
            let _ = done.send(());
        }
    }
}

/// Event ids (of receipts and recalls) ride in the same queue as msg_ids;
/// they are told apart here (a msg_id never contains `@`).
async fn store(pending: &dyn PendingStore, batch: &[(Arc<DeviceKey>, Vec<String>)], ids: usize) {
    metrics::histogram!("dongdong_ack_batch_ids").record(ids as f64);
    let has_events = batch.iter().any(|(_, ids)| ids.iter().any(|id| id.contains('@')));
    let split;
    let (messages, events): (&[(Arc<DeviceKey>, Vec<String>)], _) = if has_events {
        let (m, e): (Vec<_>, Vec<_>) = batch
            .iter()
            .map(|(d, ids)| {
                let (e, m): (Vec<String>, Vec<String>) = ids.iter().cloned().partition(|id| id.contains('@'));
                ((d.clone(), m), (d.clone(), e))
            })
            .unzip();
        split = m;
        (&split, e)
    } else {
        (batch, Vec::new())
    };
    for attempt in 1..=ATTEMPTS {
        let stored = async {
            let removed = pending.ack_batch(messages).await?;
            if events.is_empty() {
                Ok::<usize, storage::StorageError>(removed)
            } else {
                Ok(removed + pending.ack_events(&events).await?)
            }
        };
        match stored.await {
            Ok(removed) => {
                metrics::counter!("dongdong_pending_acked_total").increment(removed as u64);
                return;
            }
            Err(e) if attempt < ATTEMPTS => {
                tracing::warn!(error = %e, attempt, ids, "storing acks failed; retrying");
                tokio::time::sleep(RETRY_BACKOFF * attempt).await;
            }
            Err(e) => {
                metrics::counter!("dongdong_acks_dropped_total").increment(ids as u64);
                tracing::error!(error = %e, ids, "storing acks failed {ATTEMPTS} times; these ids stay pending and will be delivered again");
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use im_core::pb::Message;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};
    use storage::{PendingCursor, StorageError};

    /// One stored batch: (device id, acked ids) per ack frame.
    type Batch = Vec<(String, Vec<String>)>;

    /// Records each batch; fails the first `fail` calls.
    #[derive(Default)]
    struct Recorder {
        batches: Mutex<Vec<Batch>>,
        fail: AtomicU32,
        /// Closed (no permits) until a test opens it.
        gate: Gate,
    }

    struct Gate(tokio::sync::Semaphore);

    impl Default for Gate {
        fn default() -> Self {
            Self(tokio::sync::Semaphore::new(0))
        }
    }

    impl std::ops::Deref for Gate {
        type Target = tokio::sync::Semaphore;
        fn deref(&self) -> &Self::Target {
            &self.0
        }
    }

    #[async_trait]
    impl PendingStore for Recorder {
        async fn pending(&self, _: &DeviceKey, _: Option<&PendingCursor>, _: usize) -> storage::Result<Vec<Message>> {
            Ok(Vec::new())
        }
        async fn pending_between(
            &self,
            _: &DeviceKey,
            _: &str,
            _: u64,
            _: u64,
            _: usize,
        ) -> storage::Result<Vec<Message>> {
            Ok(Vec::new())
        }
        async fn pending_count(&self, _: &DeviceKey) -> storage::Result<u64> {
            Ok(0)
        }
        async fn ack(&self, _: &DeviceKey, _: &[String]) -> storage::Result<usize> {
            unreachable!("the queue acks in batches")
        }
        async fn pending_events(
            &self,
            _: &DeviceKey,
            _: Option<&str>,
            _: usize,
        ) -> storage::Result<Vec<storage::PendingEvent>> {
            Ok(Vec::new())
        }
        async fn ack_events(&self, acks: &[(Arc<DeviceKey>, Vec<String>)]) -> storage::Result<usize> {
            self.ack_batch(acks).await
        }
        async fn ack_batch(&self, acks: &[(Arc<DeviceKey>, Vec<String>)]) -> storage::Result<usize> {
            let _permit = self.gate.acquire().await.unwrap();
            if self.fail.load(Ordering::SeqCst) > 0 {
                self.fail.fetch_sub(1, Ordering::SeqCst);
                return Err(StorageError::Unavailable("injected".into()));
            }
            self.batches.lock().unwrap().push(acks.iter().map(|(d, ids)| (d.device.clone(), ids.clone())).collect());
            Ok(acks.iter().map(|(_, ids)| ids.len()).sum())
        }
    }

    fn dev(d: &str) -> Arc<DeviceKey> {
        Arc::new(DeviceKey::new("t", "u", d))
    }

    #[tokio::test(start_paused = true)]
    async fn acks_queued_together_are_stored_in_one_batch() {
        let store = Arc::new(Recorder::default());
        let q = AckQueue::start(store.clone(), 16);
        q.try_ack(dev("a"), vec!["1".into()]).unwrap();
        // The drain task takes it and waits on the (closed) store gate, so
        // the next acks pile up behind it.
        tokio::task::yield_now().await;
        q.try_ack(dev("b"), vec!["2".into(), "3".into()]).unwrap();
        q.try_ack(dev("a"), vec!["4".into()]).unwrap();
        store.gate.add_permits(10);
        q.flush().await;
        let batches = store.batches.lock().unwrap().clone();
        assert_eq!(batches.len(), 2, "{batches:?}");
        assert_eq!(batches[1], vec![("b".into(), vec!["2".into(), "3".into()]), ("a".into(), vec!["4".into()])]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_hands_the_ids_back_and_waiting_finds_room() {
        let store = Arc::new(Recorder::default());
        let q = AckQueue::start(store.clone(), 2);
        q.try_ack(dev("a"), vec!["1".into()]).unwrap();
        tokio::task::yield_now().await;
        q.try_ack(dev("a"), vec!["2".into()]).unwrap();
        q.try_ack(dev("a"), vec!["3".into()]).unwrap();
        let Held(d, ids) = q.try_ack(dev("a"), vec!["4".into()]).unwrap_err();
        assert_eq!((d.device.as_str(), ids), ("a", vec!["4".to_string()]));
        store.gate.add_permits(10);
        q.ack(dev("a"), vec!["4".into()]).await;
        q.flush().await;
        let stored: Vec<String> =
            store.batches.lock().unwrap().iter().flatten().flat_map(|(_, ids)| ids.clone()).collect();
        assert_eq!(stored, ["1", "2", "3", "4"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_store_is_retried_then_the_batch_is_dropped() {
        let store = Arc::new(Recorder::default());
        store.gate.add_permits(100);
        let q = AckQueue::start(store.clone(), 4);
        store.fail.store(ATTEMPTS - 1, Ordering::SeqCst);
        q.try_ack(dev("a"), vec!["1".into()]).unwrap();
        q.flush().await;
        assert_eq!(store.batches.lock().unwrap().len(), 1, "stored on the last attempt");
        store.fail.store(ATTEMPTS, Ordering::SeqCst);
        q.try_ack(dev("a"), vec!["2".into()]).unwrap();
        q.flush().await;
        assert_eq!(store.batches.lock().unwrap().len(), 1, "dropped after {ATTEMPTS} attempts");
        assert_eq!(store.fail.load(Ordering::SeqCst), 0);
        q.try_ack(dev("a"), vec!["3".into()]).unwrap();
        q.flush().await;
        assert_eq!(store.batches.lock().unwrap().len(), 2, "the queue goes on");
    }
}
