//! The storage traits on [`EmbeddedStore`]: reads run against redb
//! snapshots (merged with unapplied writes where a replay cannot wait);
//! writes go to the writer.

use crate::errors::{corrupt, unavailable};
use crate::keys::{Key, Reader};
use crate::records::*;
use crate::store::EmbeddedStore;
use crate::store::{message_since, pending_view};
use crate::tables::{CONVERSATIONS, EVENTS, MESSAGES, MSG_INDEX, PENDING, READS, USER_CONVS};
use crate::writer::WriteOp;
use async_trait::async_trait;
use im_core::pb::Message;
use prost::Message as _;
use redb::ReadableDatabase;
use std::sync::Arc;
use storage::{
    Appended, Conversation, ConversationCursor, ConversationsPage, DeviceKey, DeviceRegistration, DeviceRegistry,
    HistoryPage, HistoryQuery, MarkOutcome, MarkRead, MessageStore, NewMessage, PendingCursor, PendingEvent,
    PendingStore, ReadState, RecallOutcome, Result, StorageError,
};
use tokio::sync::oneshot;

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

    async fn pending_between(
        &self,
        device: &DeviceKey,
        conversation_id: &str,
        after_seq: u64,
        before_seq: u64,
        limit: usize,
    ) -> Result<Vec<Message>> {
        // Keys are in (conversation, seq) order: a page from just after
        // (conversation, after_seq) starts with what is asked for.
        let from =
            PendingCursor { conversation_id: conversation_id.to_string(), seq: after_seq, msg_id: String::new() };
        let mut page = self.pending(device, Some(&from), limit).await?;
        let end = page.iter().position(|m| m.conversation_id != conversation_id || m.seq >= before_seq);
        page.truncate(end.unwrap_or(page.len()));
        Ok(page)
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
