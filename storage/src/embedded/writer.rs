//! The writer thread of the embedded store: the only code that changes it.
//!
//! It drains its queue into batches (group commit). A batch's operations run
//! in queue order against an [`Overlay`] of what the batch has written so far
//! (so an operation sees the ones before it), then the overlay becomes one
//! atomic fjall write batch: one journal append, and one `fdatasync` when the
//! batch holds a message or customer-service records. Only after the sync
//! does the batch reach the memtables, so readers never see a write that a
//! crash could still take back, and only then are callers answered.
//!
//! Acks and device registrations alone are journaled without a sync; the
//! next synced batch makes them durable too (the journal is sequential).
//!
//! Two caches save the writer the reads it would otherwise make per message:
//! each conversation's last seq and each user's devices. They hold what is
//! committed plus the current batch, are only trimmed between batches, and
//! are dropped whole when a batch fails.

use super::layout::*;
use super::{EmbeddedOptions, Ks, Keyspaces, Records, USER_SLOT, corrupt, decode_message, unavailable};
use crate::keys::{Key, Reader};
use crate::{Appended, Conversation, DeviceKey, DeviceRegistration, NewMessage, Result, StorageError};
use fjall::{Database, PersistMode};
use im_core::pb::Message;
use prost::Message as _;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

pub(super) enum WriteOp {
    Append(NewMessage, oneshot::Sender<Result<Appended>>),
    Ack(DeviceKey, Vec<String>, oneshot::Sender<Result<usize>>),
    AckBatch(Vec<(Arc<DeviceKey>, Vec<String>)>, oneshot::Sender<Result<usize>>),
    Register(DeviceKey, oneshot::Sender<Result<DeviceRegistration>>),
    /// Puts (Some) or deletes (None) of customer-service records; durable.
    Records(Records, oneshot::Sender<Result<()>>),
    /// Stop after the ops queued before this one.
    Close,
}

impl WriteOp {
    fn durable(&self) -> bool {
        matches!(self, WriteOp::Append(..) | WriteOp::Records(..))
    }

    fn fail(self, e: &StorageError) {
        match self {
            WriteOp::Append(_, tx) => drop(tx.send(Err(e.clone()))),
            WriteOp::Ack(_, _, tx) | WriteOp::AckBatch(_, tx) => drop(tx.send(Err(e.clone()))),
            WriteOp::Register(_, tx) => drop(tx.send(Err(e.clone()))),
            WriteOp::Records(_, tx) => drop(tx.send(Err(e.clone()))),
            WriteOp::Close => {}
        }
    }
}

/// Replies held until the batch is durable.
enum Reply {
    Append(oneshot::Sender<Result<Appended>>, Appended),
    Ack(oneshot::Sender<Result<usize>>, usize),
    Register(oneshot::Sender<Result<DeviceRegistration>>, DeviceRegistration),
    Records(oneshot::Sender<Result<()>>),
}

impl Reply {
    fn fail(self, e: &StorageError) {
        match self {
            Reply::Append(tx, _) => drop(tx.send(Err(e.clone()))),
            Reply::Ack(tx, _) => drop(tx.send(Err(e.clone()))),
            Reply::Register(tx, _) => drop(tx.send(Err(e.clone()))),
            Reply::Records(tx) => drop(tx.send(Err(e.clone()))),
        }
    }

    fn succeed(self) {
        match self {
            Reply::Append(tx, v) => drop(tx.send(Ok(v))),
            Reply::Ack(tx, v) => drop(tx.send(Ok(v))),
            Reply::Register(tx, v) => drop(tx.send(Ok(v))),
            Reply::Records(tx) => drop(tx.send(Ok(()))),
        }
    }
}

/// What the writer remembers between batches.
#[derive(Default)]
struct Caches {
    /// Conversation id -> its last seq.
    seqs: HashMap<Box<str>, u64>,
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

pub(super) struct Writer {
    db: Database,
    ks: Keyspaces,
    options: EmbeddedOptions,
    caches: Caches,
    /// The last commit failure, for the health check; cleared by a success.
    failure: Arc<Mutex<Option<String>>>,
}

impl Writer {
    pub(super) fn new(
        db: Database,
        ks: Keyspaces,
        options: EmbeddedOptions,
        failure: Arc<Mutex<Option<String>>>,
    ) -> Self {
        Self { db, ks, options, caches: Caches::default(), failure }
    }

    pub(super) fn run(mut self, mut rx: mpsc::Receiver<WriteOp>) {
        let mut batch = Vec::with_capacity(self.options.max_batch);
        let mut closing = false;
        while !closing {
            let Some(first) = rx.blocking_recv() else {
                break;
            };
            closing = matches!(first, WriteOp::Close);
            if !closing {
                batch.push(first);
            }
            while !closing && batch.len() < self.options.max_batch {
                match rx.try_recv() {
                    Ok(WriteOp::Close) => closing = true,
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                self.apply(&mut batch);
            }
        }
        // Whatever is still queued is rejected when `rx` drops: callers see
        // "the store writer stopped".
        drop(rx);
        // Make what unsynced batches left in the journal durable.
        if let Err(e) = self.db.persist(PersistMode::SyncAll) {
            tracing::error!(error = %e, "final journal sync failed");
        }
    }

    fn apply(&mut self, batch: &mut Vec<WriteOp>) {
        let started = Instant::now();
        let durable = batch.iter().any(WriteOp::durable);
        let size = batch.len();
        self.caches.trim(self.options.writer_cache_entries);
        let mut txn = Txn { ks: &self.ks, caches: &mut self.caches, overlay: Overlay::default() };
        let mut replies = Vec::with_capacity(size);
        let mut failure = None;
        for op in batch.drain(..) {
            if let Some(e) = &failure {
                op.fail(e);
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
                    let max = self.options.max_devices_per_user;
                    hold(tx, txn.register(&dev, max), Reply::Register)
                }
                WriteOp::Records(records, tx) => {
                    txn.records(records);
                    Ok(Reply::Records(tx))
                }
                WriteOp::Close => continue,
            };
            match outcome {
                Ok(reply) => replies.push(reply),
                Err(e) => failure = Some(e),
            }
        }
        let overlay = txn.overlay;
        if let Some(e) = failure {
            // Nothing of this batch is kept: fail every caller.
            self.caches.clear();
            replies.into_iter().for_each(|r| r.fail(&e));
            metrics::counter!("dongdong_store_commit_failures_total").increment(1);
            tracing::error!(error = %e, "store batch failed; every operation in it was rejected");
            return;
        }
        let mut wb = self.db.batch().durability(durable.then_some(PersistMode::SyncData));
        for (ks, writes) in overlay.writes.into_iter().enumerate() {
            let keyspace = &self.ks.0[ks];
            for (key, value) in writes {
                match value {
                    Some(v) => wb.insert(keyspace, key, v),
                    None => wb.remove(keyspace, key),
                }
            }
        }
        match wb.commit() {
            Ok(()) => {
                metrics::histogram!("dongdong_store_batch_size").record(size as f64);
                metrics::histogram!(
                    "dongdong_store_commit_seconds",
                    "durable" => if durable { "true" } else { "false" }
                )
                .record(started.elapsed().as_secs_f64());
                if let Ok(mut f) = self.failure.lock() {
                    f.take();
                }
                replies.into_iter().for_each(Reply::succeed);
            }
            Err(e) => {
                let e = unavailable(format!("cannot write the journal: {e}"));
                self.caches.clear();
                if let Ok(mut f) = self.failure.lock() {
                    *f = Some(e.to_string());
                }
                metrics::counter!("dongdong_store_commit_failures_total").increment(1);
                tracing::error!(error = %e, "store commit failed; every operation in the batch was rejected");
                replies.into_iter().for_each(|r| r.fail(&e));
            }
        }
    }
}

/// Keeps a successful result for after the commit; fails the caller at once
/// otherwise (and the batch with it).
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

/// What the current batch has written, per keyspace: the final value of
/// each key (`None`: deleted). Sorted, so prefix scans can merge it.
#[derive(Default)]
pub(super) struct Overlay {
    writes: [BTreeMap<Vec<u8>, Option<Vec<u8>>>; Ks::COUNT],
}

/// One batch being applied.
struct Txn<'a> {
    ks: &'a Keyspaces,
    caches: &'a mut Caches,
    overlay: Overlay,
}

impl Txn<'_> {
    fn get(&self, ks: Ks, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(v) = self.overlay.writes[ks as usize].get(key) {
            return Ok(v.clone());
        }
        Ok(self.ks[ks].get(key).map_err(unavailable)?.map(|v| v.to_vec()))
    }

    fn put(&mut self, ks: Ks, key: Vec<u8>, value: Vec<u8>) {
        self.overlay.writes[ks as usize].insert(key, Some(value));
    }

    fn delete(&mut self, ks: Ks, key: Vec<u8>) {
        self.overlay.writes[ks as usize].insert(key, None);
    }

    /// Every live entry under `prefix`, the batch's writes included.
    fn scan(&self, ks: Ks, prefix: &[u8]) -> Result<BTreeMap<Vec<u8>, Vec<u8>>> {
        let mut out = BTreeMap::new();
        for item in self.ks[ks].prefix(prefix) {
            let (k, v) = item.into_inner().map_err(unavailable)?;
            out.insert(k.to_vec(), v.to_vec());
        }
        for (k, v) in self.overlay.writes[ks as usize].range(prefix.to_vec()..) {
            if !k.starts_with(prefix) {
                break;
            }
            match v {
                Some(v) => out.insert(k.clone(), v.clone()),
                None => out.remove(k),
            };
        }
        Ok(out)
    }

    fn records(&mut self, records: Records) {
        for (key, value) in records {
            match value {
                Some(v) => self.put(Ks::Cs, key, v),
                None => self.delete(Ks::Cs, key),
            }
        }
    }

    fn last_seq(&mut self, conversation: &str) -> Result<u64> {
        if let Some(seq) = self.caches.seqs.get(conversation) {
            return Ok(*seq);
        }
        // Not cached, so not written by this batch either (entries are only
        // trimmed between batches): the committed state is the answer.
        let seq = super::last_seq(&self.ks[Ks::Messages], conversation)?;
        self.caches.seqs.insert(conversation.into(), seq);
        Ok(seq)
    }

    fn devices_of(&mut self, tenant: &str, user: &str) -> Result<Vec<(String, u64)>> {
        let prefix = device_prefix(tenant, user);
        if let Some(devices) = self.caches.devices.get(prefix.as_slice()) {
            return Ok(devices.clone());
        }
        let mut out = Vec::new();
        for (k, v) in self.scan(Ks::Devices, &prefix)? {
            let mut r = Reader::new(&k[prefix.len()..]);
            let device = r.s().ok_or_else(|| corrupt("device key"))?;
            out.push((device.to_string(), decode_seen(&v)?));
        }
        self.caches.devices.insert(prefix.into_boxed_slice(), out.clone());
        Ok(out)
    }

    fn message_by_id(&self, msg_id: &str) -> Result<Option<Message>> {
        let Some(pos) = self.get(Ks::MsgIndex, msg_id.as_bytes())? else {
            return Ok(None);
        };
        let mut r = Reader::new(&pos);
        let (Some(conv), Some(seq)) = (r.s(), r.n()) else {
            return Err(corrupt("message index record"));
        };
        match self.get(Ks::Messages, &message_key(conv, seq))? {
            Some(v) => decode_message(&v).map(Some),
            None => Err(corrupt("message index points at a missing message")),
        }
    }

    fn append(&mut self, new: NewMessage) -> Result<Appended> {
        let idem_key = Key::new().s(&new.tenant).s(&new.from_user).s(&new.client_msg_id).into_vec();
        if let Some(msg_id) = self.get(Ks::Idempotency, &idem_key)? {
            let msg_id = String::from_utf8(msg_id).map_err(|_| corrupt("idempotency record"))?;
            let message = self.message_by_id(&msg_id)?.ok_or_else(|| corrupt("idempotency key without message"))?;
            return Ok(Appended { message, duplicate: true });
        }

        let seq = self.last_seq(&new.conversation_id)? + 1;
        if seq == 1 {
            if self.get(Ks::Conversations, new.conversation_id.as_bytes())?.is_some() {
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
            self.put(Ks::Conversations, conv.conversation_id.clone().into_bytes(), encode_conversation(&conv));
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
        };
        let position = message_key(&new.conversation_id, seq);
        self.put(Ks::Messages, position.clone(), message.encode_to_vec());
        self.put(Ks::MsgIndex, message.msg_id.clone().into_bytes(), position);
        self.put(Ks::Idempotency, idem_key, message.msg_id.clone().into_bytes());
        if let Some(last) = self.caches.seqs.get_mut(new.conversation_id.as_str()) {
            *last = seq;
        }
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
            self.put(Ks::Pending, key, message.msg_id.clone().into_bytes());
        }
        Ok(Appended { message, duplicate: false })
    }

    fn ack(&mut self, dev: &DeviceKey, msg_ids: &[String]) -> Result<usize> {
        let mut removed = 0;
        for msg_id in msg_ids {
            let Some(pos) = self.get(Ks::MsgIndex, msg_id.as_bytes())? else {
                continue;
            };
            let mut r = Reader::new(&pos);
            let (Some(conv), Some(seq)) = (r.s(), r.n()) else {
                return Err(corrupt("message index record"));
            };
            let key = pending_key(&dev.tenant, &dev.user, &dev.device, conv, seq);
            if self.get(Ks::Pending, &key)?.is_some() {
                self.delete(Ks::Pending, key);
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Removes every pending entry of one device slot; returns them as
    /// (conversation, seq, msg_id).
    fn take_pending(&mut self, tenant: &str, user: &str, device: &str) -> Result<Vec<(String, u64, Vec<u8>)>> {
        let prefix = device_key(tenant, user, device);
        let entries = self.scan(Ks::Pending, &prefix)?;
        let mut out = Vec::with_capacity(entries.len());
        for (k, msg_id) in entries {
            let mut r = Reader::new(&k[prefix.len()..]);
            let (Some(conv), Some(seq)) = (r.s(), r.n()) else {
                return Err(corrupt("pending key"));
            };
            out.push((conv.to_string(), seq, msg_id));
            self.delete(Ks::Pending, k);
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
                    self.put(Ks::Pending, pending_key(&dev.tenant, &dev.user, &dev.device, &conv, seq), msg_id);
                }
            } else if known.len() >= max_devices.max(1)
                && let Some(oldest) = known.iter().min_by_key(|(_, seen)| *seen).map(|(d, _)| d.clone())
            {
                self.delete(Ks::Devices, device_key(&dev.tenant, &dev.user, &oldest));
                self.take_pending(&dev.tenant, &dev.user, &oldest)?;
                known.retain(|(d, _)| d != &oldest);
                reg.evicted = Some(oldest);
            }
            known.push((dev.device.clone(), now));
        }
        self.put(Ks::Devices, key, now.to_be_bytes().to_vec());
        self.caches.devices.insert(device_prefix(&dev.tenant, &dev.user).into_boxed_slice(), known);
        Ok(reg)
    }
}

fn decode_seen(v: &[u8]) -> Result<u64> {
    v.try_into().map(u64::from_be_bytes).map_err(|_| corrupt("device record"))
}
