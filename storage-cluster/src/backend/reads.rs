//! Read pointers, conversation lists, recall and the events they make
//! pending, for the cluster backend.
//!
//! - Read pointers are MongoDB documents (`reads`, `_id` = conversation/user)
//!   moved forward only by a filtered update.
//! - Each user's conversation list is a Redis sorted set scored by the last
//!   message's time, written with the message's pending marks.
//! - Recall unsets the message document's content.
//! - Events pending for a device are a Redis sorted set of keys (score 0:
//!   ordered by key) and a hash of key -> "version:" + frame; a receipt
//!   replaces an older one of the same key only with a higher version.
//!
//! Unlike the embedded backend these are not one atomic step: a pointer is
//! moved (or a message recalled) first and the events marked after, so a
//! node that dies in between leaves the new state readable (history, the
//! conversation list) without its pending pushes.

use super::messages::{decode, mongo_err};
use super::{CallTimer, ClusterStore, convs_key, devices_key, events_keys, redis_err};
use futures_util::TryStreamExt;
use im_core::pb::{Frame, Message};
use mongodb::bson::{Document, doc};
use prost::Message as _;
use std::collections::HashMap;
use std::sync::Arc;
use storage::{
    ConversationCursor, ConversationsPage, DeviceKey, MarkOutcome, MarkRead, PendingEvent, ReadMark, ReadState,
    RecallOutcome, Result, StorageError,
};

/// KEYS: the events set, the events hash. ARGV: key, version, frame.
/// Stores the event unless one with the same or a higher version is there.
const PUT_EVENT: &str = include_str!("lua/put-event.lua");

/// KEYS: the events set, the events hash. ARGV: key, version. Removes the
/// event if it still has that version.
const ACK_EVENT: &str = include_str!("lua/ack-event.lua");

/// KEYS: a conversation list. ARGV: the cursor's score ('+inf' for none),
/// its member ('' for none), how many. Returns [member, score, ...] after
/// the cursor, newest first (ties: member descending, as `REV` orders them).
const CONV_PAGE: &str = include_str!("lua/conv-page.lua");

fn read_id(conversation: &str, user: &str) -> String {
    format!("{conversation}/{user}")
}

fn read_state(d: &Document) -> ReadState {
    ReadState { read_seq: d.get_i64("seq").unwrap_or(0) as u64, peer_sent: d.get_i64("peerSent").unwrap_or(0) as u64 }
}

impl ClusterStore {
    pub(super) async fn get_by_id_impl(&self, tenant: &str, msg_id: &str) -> Result<Option<Message>> {
        let _timer = CallTimer::new("mongodb", "get_by_id");
        let found =
            self.messages.find_one(doc! { "_id": msg_id, "tenant": tenant }).await.map_err(mongo_err("find"))?;
        found.map(|d| decode(&d)).transpose()
    }

    /// The message at `seq` and its sender's ordinal.
    async fn message_at(&self, tenant: &str, conv: &str, seq: u64) -> Result<Option<(Message, u64)>> {
        let found = self
            .messages
            .find_one(doc! { "tenant": tenant, "conv": conv, "seq": seq as i64 })
            .await
            .map_err(mongo_err("find"))?;
        let Some(d) = found else { return Ok(None) };
        let message = decode(&d)?;
        let ordinal = self.ordinal(tenant, conv, &d, seq, &message.from_user).await?;
        Ok(Some((message, ordinal)))
    }

    pub(super) async fn mark_read_impl(&self, read: MarkRead) -> Result<MarkOutcome> {
        use storage::MessageStore;
        let _timer = CallTimer::new("mongodb+redis", "mark_read");
        let reader = &read.reader;
        let Some(conv) = self.conversation(&reader.tenant, &read.conversation_id).await? else {
            return Ok(MarkOutcome::NotFound);
        };
        if !conv.has_member(&reader.user) {
            return Ok(MarkOutcome::NotMember);
        }
        let peer = conv.members.iter().find(|m| **m != reader.user).unwrap_or(&reader.user).clone();
        let id = read_id(&read.conversation_id, &reader.user);
        let current = self.reads.find_one(doc! { "_id": &id }).await.map_err(mongo_err("find read"))?;
        let current = current.as_ref().map(read_state).unwrap_or_default();
        let up_to = read.up_to_seq.min(conv.last_seq);
        if up_to <= current.read_seq {
            return Ok(MarkOutcome::Marked(ReadMark { read_seq: current.read_seq, moved: false, peer }));
        }
        let (message, ordinal) = self
            .message_at(&reader.tenant, &read.conversation_id, up_to)
            .await?
            .ok_or_else(|| StorageError::Corrupt("a message below the last seq is missing".into()))?;
        let peer_sent = if peer == reader.user {
            0
        } else {
            storage::sent_counts(up_to, &message.from_user, ordinal, &reader.user).1
        };
        let update = doc! { "$set": { "seq": up_to as i64, "peerSent": peer_sent as i64 } };
        let moved =
            self.reads.update_one(doc! { "_id": &id, "seq": { "$lt": up_to as i64 } }, update).upsert(true).await;
        match moved {
            Ok(_) => {}
            // The upsert found a document with the pointer at or beyond
            // `up_to` (another device moved it first).
            Err(e) if is_duplicate_key(&e) => {
                let now = self.reads.find_one(doc! { "_id": &id }).await.map_err(mongo_err("find read"))?;
                let read_seq = now.as_ref().map(read_state).unwrap_or_default().read_seq;
                return Ok(MarkOutcome::Marked(ReadMark { read_seq, moved: false, peer }));
            }
            Err(e) => return Err(mongo_err("update read")(e)),
        }
        let frame = storage::receipt_frame(&read.conversation_id, &reader.user, up_to);
        let key = storage::receipt_key(&read.conversation_id, &reader.user);
        self.put_event(&reader.tenant, &[&peer, &reader.user], reader, &key, up_to, &frame).await?;
        Ok(MarkOutcome::Marked(ReadMark { read_seq: up_to, moved: true, peer }))
    }

    /// Makes `frame` pending for every known device of `users` but `except`.
    async fn put_event(
        &self,
        tenant: &str,
        users: &[&str],
        except: &DeviceKey,
        key: &str,
        version: u64,
        frame: &Frame,
    ) -> Result<()> {
        let mut conn = self.redis.clone();
        let payload = frame.encode_to_vec();
        let mut pipe = redis::pipe();
        for (i, user) in users.iter().enumerate() {
            if users[..i].contains(user) {
                continue;
            }
            let devices: Vec<String> = redis::cmd("HKEYS")
                .arg(devices_key(tenant, user))
                .query_async(&mut conn)
                .await
                .map_err(redis_err("HKEYS"))?;
            for device in devices {
                if *user == except.user && device == except.device {
                    continue;
                }
                let (set, hash) = events_keys(tenant, user, &device);
                pipe.cmd("EVAL").arg(PUT_EVENT).arg(2).arg(set).arg(hash).arg(key).arg(version).arg(&payload).ignore();
            }
        }
        if pipe.is_empty() {
            return Ok(());
        }
        pipe.query_async::<()>(&mut conn).await.map_err(redis_err("put event"))
    }

    pub(super) async fn conversations_impl(
        &self,
        tenant: &str,
        user: &str,
        after: Option<&ConversationCursor>,
        limit: usize,
    ) -> Result<ConversationsPage> {
        let _timer = CallTimer::new("mongodb+redis", "conversations");
        let limit = limit.max(1);
        let (score, member) = match after {
            Some(c) => (c.active_ms.to_string(), c.conversation_id.clone()),
            None => ("+inf".to_string(), String::new()),
        };
        let listed: Vec<(String, f64)> = redis::Script::new(CONV_PAGE)
            .key(convs_key(tenant, user))
            .arg(score)
            .arg(member)
            .arg(limit + 1)
            .invoke_async(&mut self.redis.clone())
            .await
            .map_err(redis_err("conversation page"))?;
        let more = listed.len() > limit;
        let listed = &listed[..listed.len().min(limit)];
        let lasts = futures_util::future::try_join_all(listed.iter().map(|(conv, _)| async move {
            let found = self.last_document(tenant, conv).await?;
            match found {
                Some(d) => {
                    let m = decode(&d)?;
                    let ordinal = self.ordinal(tenant, conv, &d, m.seq, &m.from_user).await?;
                    Ok::<_, StorageError>(Some((m, ordinal)))
                }
                None => Ok(None),
            }
        }))
        .await?;
        let mut ids = Vec::new();
        for (m, _) in lasts.iter().flatten() {
            let peer = if m.from_user == user { &m.to_user } else { &m.from_user };
            ids.push(read_id(&m.conversation_id, user));
            ids.push(read_id(&m.conversation_id, peer));
        }
        let cursor = self.reads.find(doc! { "_id": { "$in": &ids } }).await.map_err(mongo_err("find reads"))?;
        let docs: Vec<Document> = cursor.try_collect().await.map_err(mongo_err("find reads"))?;
        let states: HashMap<String, ReadState> =
            docs.iter().filter_map(|d| Some((d.get_str("_id").ok()?.to_string(), read_state(d)))).collect();
        let mut page = ConversationsPage::default();
        for ((conv, score), last) in listed.iter().zip(lasts) {
            page.next = Some(ConversationCursor { active_ms: *score as u64, conversation_id: conv.clone() });
            // Listed by an append whose insert failed: nothing to show.
            let Some((message, ordinal)) = last else { continue };
            let peer = if message.from_user == user { message.to_user.clone() } else { message.from_user.clone() };
            let state = |u: &str| states.get(&read_id(conv, u)).copied().unwrap_or_default();
            let (mine, theirs) = (state(user), state(&peer));
            page.items.push(storage::conversation_item(user, &peer, message, ordinal, mine, theirs));
        }
        if !more {
            page.next = None;
        }
        Ok(page)
    }

    pub(super) async fn recall_impl(
        &self,
        tenant: &str,
        msg_id: &str,
        by: &DeviceKey,
    ) -> Result<Option<RecallOutcome>> {
        let _timer = CallTimer::new("mongodb+redis", "recall");
        let filter = doc! { "_id": msg_id, "tenant": tenant, "recalledBy": { "$exists": false } };
        let update = doc! {
            "$set": { "recalledBy": &by.user, "recalledMs": im_core::now_ms() as i64 },
            "$unset": { "content": "" },
        };
        let updated = self
            .messages
            .find_one_and_update(filter, update)
            .return_document(mongodb::options::ReturnDocument::After)
            .await
            .map_err(mongo_err("recall"))?;
        let Some(d) = updated else {
            return Ok(self
                .get_by_id_impl(tenant, msg_id)
                .await?
                .map(|message| RecallOutcome { message, fresh: false }));
        };
        let message = decode(&d)?;
        let frame = storage::recalled_frame(&message);
        let key = storage::recall_key(&message.conversation_id, msg_id);
        self.put_event(tenant, &[&message.from_user, &message.to_user], by, &key, 1, &frame).await?;
        Ok(Some(RecallOutcome { message, fresh: true }))
    }

    pub(super) async fn pending_events_impl(
        &self,
        device: &DeviceKey,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<PendingEvent>> {
        let _timer = CallTimer::new("redis", "pending_events");
        let (set, hash) = events_keys(&device.tenant, &device.user, &device.device);
        let start = after.map_or_else(|| "-".to_string(), |k| format!("({k}"));
        let mut conn = self.redis.clone();
        let keys: Vec<String> = redis::cmd("ZRANGE")
            .arg(&set)
            .arg(start)
            .arg("+")
            .arg("BYLEX")
            .arg("LIMIT")
            .arg(0)
            .arg(limit.max(1))
            .query_async(&mut conn)
            .await
            .map_err(redis_err("ZRANGE"))?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let values: Vec<Option<Vec<u8>>> =
            redis::cmd("HMGET").arg(&hash).arg(&keys).query_async(&mut conn).await.map_err(redis_err("HMGET"))?;
        let mut out = Vec::with_capacity(keys.len());
        for (key, value) in keys.into_iter().zip(values) {
            // Acked between the two reads.
            let Some(value) = value else { continue };
            let at =
                value.iter().position(|b| *b == b':').ok_or_else(|| StorageError::Corrupt("event record".into()))?;
            let frame = Frame::decode(&value[at + 1..]).map_err(|_| StorageError::Corrupt("event record".into()))?;
            out.push(PendingEvent { key, frame });
        }
        Ok(out)
    }

    pub(super) async fn ack_events_impl(&self, acks: &[(Arc<DeviceKey>, Vec<String>)]) -> Result<usize> {
        let _timer = CallTimer::new("redis", "ack_events");
        let mut pipe = redis::pipe();
        for (device, ids) in acks {
            let (set, hash) = events_keys(&device.tenant, &device.user, &device.device);
            for id in ids {
                let Some((key, version)) = storage::parse_event_id(id) else { continue };
                pipe.cmd("EVAL").arg(ACK_EVENT).arg(2).arg(&set).arg(&hash).arg(key).arg(version.to_string());
            }
        }
        if pipe.is_empty() {
            return Ok(0);
        }
        let removed: Vec<usize> = pipe.query_async(&mut self.redis.clone()).await.map_err(redis_err("ack events"))?;
        Ok(removed.into_iter().sum())
    }
}

fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    match &*e.kind {
        mongodb::error::ErrorKind::Write(mongodb::error::WriteFailure::WriteError(w)) => w.code == 11000,
        mongodb::error::ErrorKind::Command(c) => c.code == 11000,
        _ => e.to_string().contains("E11000"),
    }
}
