//! One batch of the writer: the store's write operations (append, ack,
//! register, mark read, recall, ack events) run against redb, the writes
//! not yet applied and the batch's own, producing table writes and the log
//! record that holds them.
//!
//! Two caches save the writer reads it would otherwise make per message:
//! each conversation's last seq and each user's devices. They hold what is
//! logged plus the current batch, are only trimmed between batches, and are
//! dropped whole when a batch fails.

use crate::errors::corrupt;
use crate::keys::{Key, Reader};
use crate::records::*;
use crate::shared::Unapplied;
use crate::tables::{Op, Table as T, View};
use crate::wal::Ops;
use im_core::pb::Message;
use std::collections::{BTreeMap, HashMap};
use storage::{
    Appended, Conversation, DeviceKey, DeviceRegistration, MarkOutcome, MarkRead, NewMessage, ReadMark, ReadState,
    RecallOutcome, Result,
};

/// A conversation's last message, as the writer needs it.
#[derive(Clone)]
pub(crate) struct ConvState {
    last_seq: u64,
    last_ms: u64,
    last_from: Box<str>,
    /// The sender's count of messages up to the last one.
    last_ordinal: u64,
}

/// What the writer remembers between batches.
#[derive(Default)]
pub(crate) struct Caches {
    /// Conversation id -> its last message (absent: not looked up yet).
    seqs: HashMap<Box<str>, ConvState>,
    /// (tenant, user) key prefix -> the user's devices and when each was last seen.
    devices: HashMap<Box<[u8]>, Vec<(String, u64)>>,
}

impl Caches {
    pub(crate) fn clear(&mut self) {
        self.seqs.clear();
        self.devices.clear();
    }

    pub(crate) fn trim(&mut self, max: usize) {
        // Cheap and good enough: the hot entries come back on their next use.
        if self.seqs.len() > max {
            self.seqs.clear();
        }
        if self.devices.len() > max {
            self.devices.clear();
        }
    }
}

/// The final value of each key a batch (or several) wrote, per table
/// (`None`: deleted).
#[derive(Default)]
pub(crate) struct Writes(pub(crate) [BTreeMap<Vec<u8>, Option<Vec<u8>>>; T::ALL.len()]);

/// One batch being run.
pub(crate) struct Txn<'a> {
    view: View,
    unapplied: &'a Unapplied,
    caches: &'a mut Caches,
    pub(crate) writes: Writes,
    pub(crate) log: Ops,
}

impl<'a> Txn<'a> {
    pub(crate) fn new(
        read: &'a redb::ReadTransaction,
        unapplied: &'a Unapplied,
        caches: &'a mut Caches,
    ) -> Result<Self> {
        let view = View::open(read)?;
        Ok(Self { view, unapplied, caches, writes: Writes::default(), log: Ops::default() })
    }

    /// The value of `key`: this batch's writes, then what is logged but not
    /// applied, then redb.
    fn get(&self, t: T, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(v) = self.writes.0[t.index()].get(key) {
            return Ok(v.clone());
        }
        if let Some((_, v)) = self.unapplied.0[t.index()].get(key) {
            return Ok(v.clone());
        }
        self.view.get(t, key)
    }

    /// Every live entry under `prefix`, all layers merged.
    fn scan(&self, t: T, prefix: &[u8]) -> Result<BTreeMap<Vec<u8>, Vec<u8>>> {
        let mut out: BTreeMap<Vec<u8>, Vec<u8>> = self.view.scan(t, prefix)?.into_iter().collect();
        for (k, (_, val)) in self.unapplied.0[t.index()].range(prefix.to_vec()..) {
            if !k.starts_with(prefix) {
                break;
            }
            match val {
                Some(val) => out.insert(k.clone(), val.clone()),
                None => out.remove(k),
            };
        }
        for (k, val) in self.writes.0[t.index()].range(prefix.to_vec()..) {
            if !k.starts_with(prefix) {
                break;
            }
            match val {
                Some(val) => out.insert(k.clone(), val.clone()),
                None => out.remove(k),
            };
        }
        Ok(out)
    }

    pub(crate) fn write(&mut self, t: T, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.log.push(Op { table: t, key: &key, value: value.as_deref() });
        self.writes.0[t.index()].insert(key, value);
    }

    /// The conversation's last message (`None`: it has none).
    fn conv_state(&mut self, conversation: &str) -> Result<Option<ConvState>> {
        if let Some(state) = self.caches.seqs.get(conversation) {
            return Ok(Some(state.clone()));
        }
        // Not cached: redb, or a record not applied yet (the cache may have
        // been trimmed since it was logged).
        let mut seq = last_seq(&self.view.messages, conversation)?;
        let prefix = Key::new().s(conversation).into_vec();
        for k in self.unapplied.0[T::Messages.index()].range(prefix.clone()..).map(|(k, _)| k) {
            if !k.starts_with(&prefix) {
                break;
            }
            let s = k.get(k.len().saturating_sub(8)..).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
            seq = seq.max(s.ok_or_else(|| corrupt("message key"))?);
        }
        if seq == 0 {
            return Ok(None);
        }
        let (last, ordinal) = self.message_at(conversation, seq)?.ok_or_else(|| corrupt("last message vanished"))?;
        let state = ConvState {
            last_seq: seq,
            last_ms: last.server_time_ms,
            last_from: last.from_user.into(),
            last_ordinal: ordinal,
        };
        self.caches.seqs.insert(conversation.into(), state.clone());
        Ok(Some(state))
    }

    /// The message at `seq` and its sender's ordinal (counted for records
    /// written before ordinals were stored).
    fn message_at(&self, conversation: &str, seq: u64) -> Result<Option<(Message, u64)>> {
        let Some(bytes) = self.get(T::Messages, &message_key(conversation, seq))? else {
            return Ok(None);
        };
        let message = decode_message(&bytes)?;
        let mut ordinal = stored_ordinal(&bytes);
        if ordinal == 0 {
            for earlier in 1..=seq {
                if let Some(b) = self.get(T::Messages, &message_key(conversation, earlier))?
                    && decode_message(&b)?.from_user == message.from_user
                {
                    ordinal += 1;
                }
            }
        }
        Ok(Some((message, ordinal)))
    }

    /// Makes `frame` (version `version`, key `key`) pending for every
    /// known device of `users` except `except`.
    fn put_event(
        &mut self,
        tenant: &str,
        users: &[&str],
        except: &DeviceKey,
        key: &str,
        version: u64,
        frame: &im_core::pb::Frame,
    ) -> Result<()> {
        let value = encode_event(version, frame);
        for (i, user) in users.iter().enumerate() {
            if users[..i].contains(user) {
                continue;
            }
            for (device, _) in self.devices_of(tenant, user)? {
                if *user == except.user && device == except.device {
                    continue;
                }
                self.write(T::Events, event_key(tenant, user, &device, key), Some(value.clone()));
            }
        }
        Ok(())
    }

    fn devices_of(&mut self, tenant: &str, user: &str) -> Result<Vec<(String, u64)>> {
        let prefix = device_prefix(tenant, user);
        if let Some(devices) = self.caches.devices.get(prefix.as_slice()) {
            return Ok(devices.clone());
        }
        let mut out = Vec::new();
        for (k, v) in self.scan(T::Devices, &prefix)? {
            let mut r = Reader::new(&k[prefix.len()..]);
            let device = r.s().ok_or_else(|| corrupt("device key"))?;
            let seen = v.as_slice().try_into().map(u64::from_be_bytes).map_err(|_| corrupt("device record"))?;
            out.push((device.to_string(), seen));
        }
        self.caches.devices.insert(prefix.into_boxed_slice(), out.clone());
        Ok(out)
    }

    fn message_by_id(&self, msg_id: &str) -> Result<Option<Message>> {
        let Some(pos) = self.get(T::MsgIndex, msg_id.as_bytes())? else {
            return Ok(None);
        };
        let mut r = Reader::new(&pos);
        let (Some(conv), Some(seq)) = (r.s(), r.n()) else {
            return Err(corrupt("message index record"));
        };
        match self.get(T::Messages, &message_key(conv, seq))? {
            Some(v) => decode_message(&v).map(Some),
            None => Err(corrupt("message index points at a missing message")),
        }
    }

    pub(crate) fn append(&mut self, new: NewMessage) -> Result<Appended> {
        let idem_key = Key::new().s(&new.tenant).s(&new.from_user).s(&new.client_msg_id).into_vec();
        if let Some(msg_id) = self.get(T::Idempotency, &idem_key)? {
            let msg_id = String::from_utf8(msg_id).map_err(|_| corrupt("idempotency record"))?;
            let message = self.message_by_id(&msg_id)?.ok_or_else(|| corrupt("idempotency key without message"))?;
            return Ok(Appended { message, duplicate: true, recovered: Vec::new() });
        }
        let state = self.conv_state(&new.conversation_id)?;
        let seq = state.as_ref().map_or(0, |s| s.last_seq) + 1;
        let ordinal = state
            .as_ref()
            .map_or(0, |s| storage::sent_counts(s.last_seq, &s.last_from, s.last_ordinal, &new.from_user).0)
            + 1;
        if seq == 1 {
            if self.get(T::Conversations, new.conversation_id.as_bytes())?.is_some() {
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
            self.write(T::Conversations, conv.conversation_id.clone().into_bytes(), Some(encode_conversation(&conv)));
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
            recalled_by: String::new(),
            recalled_ms: 0,
        };
        let position = message_key(&new.conversation_id, seq);
        self.write(T::Messages, position.clone(), Some(encode_stored(&message, ordinal)));
        self.write(T::MsgIndex, message.msg_id.clone().into_bytes(), Some(position));
        self.write(T::Idempotency, idem_key, Some(message.msg_id.clone().into_bytes()));
        // Both members' conversation lists: moved to the new time.
        let now = message.server_time_ms;
        let members: &[&str] =
            if new.from_user == new.to_user { &[&new.from_user] } else { &[&new.from_user, &new.to_user] };
        for member in members {
            let previous = state.as_ref().map(|s| s.last_ms);
            if previous == Some(now) {
                continue;
            }
            if let Some(previous) = previous {
                self.write(T::UserConvs, user_conv_key(&new.tenant, member, previous, &new.conversation_id), None);
            }
            let key = user_conv_key(&new.tenant, member, now, &new.conversation_id);
            self.write(T::UserConvs, key, Some(Vec::new()));
        }
        let state =
            ConvState { last_seq: seq, last_ms: now, last_from: new.from_user.as_str().into(), last_ordinal: ordinal };
        self.caches.seqs.insert(new.conversation_id.as_str().into(), state);
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
            self.write(T::Pending, key, Some(message.msg_id.clone().into_bytes()));
        }
        Ok(Appended { message, duplicate: false, recovered: Vec::new() })
    }

    pub(crate) fn ack(&mut self, dev: &DeviceKey, msg_ids: &[String]) -> Result<usize> {
        let mut removed = 0;
        for msg_id in msg_ids {
            let Some(pos) = self.get(T::MsgIndex, msg_id.as_bytes())? else {
                continue;
            };
            let mut r = Reader::new(&pos);
            let (Some(conv), Some(seq)) = (r.s(), r.n()) else {
                return Err(corrupt("message index record"));
            };
            let key = pending_key(&dev.tenant, &dev.user, &dev.device, conv, seq);
            if self.get(T::Pending, &key)?.is_some() {
                self.write(T::Pending, key, None);
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Removes every pending entry of one device slot; returns them as
    /// (conversation, seq, msg_id).
    fn take_pending(&mut self, tenant: &str, user: &str, device: &str) -> Result<Vec<(String, u64, Vec<u8>)>> {
        let prefix = device_key(tenant, user, device);
        let entries = self.scan(T::Pending, &prefix)?;
        let mut out = Vec::with_capacity(entries.len());
        for (k, msg_id) in entries {
            let mut r = Reader::new(&k[prefix.len()..]);
            let (Some(conv), Some(seq)) = (r.s(), r.n()) else {
                return Err(corrupt("pending key"));
            };
            out.push((conv.to_string(), seq, msg_id));
            self.write(T::Pending, k, None);
        }
        Ok(out)
    }

    pub(crate) fn register(&mut self, dev: &DeviceKey, max_devices: usize) -> Result<DeviceRegistration> {
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
                    self.write(T::Pending, pending_key(&dev.tenant, &dev.user, &dev.device, &conv, seq), Some(msg_id));
                }
            } else if known.len() >= max_devices.max(1)
                && let Some(oldest) = known.iter().min_by_key(|(_, seen)| *seen).map(|(d, _)| d.clone())
            {
                self.write(T::Devices, device_key(&dev.tenant, &dev.user, &oldest), None);
                self.take_pending(&dev.tenant, &dev.user, &oldest)?;
                for (k, _) in self.scan(T::Events, &device_key(&dev.tenant, &dev.user, &oldest))? {
                    self.write(T::Events, k, None);
                }
                known.retain(|(d, _)| d != &oldest);
                reg.evicted = Some(oldest);
            }
            known.push((dev.device.clone(), now));
        }
        self.write(T::Devices, key, Some(now.to_be_bytes().to_vec()));
        self.caches.devices.insert(device_prefix(&dev.tenant, &dev.user).into_boxed_slice(), known);
        Ok(reg)
    }

    pub(crate) fn mark_read(&mut self, read: &MarkRead) -> Result<MarkOutcome> {
        let reader = &read.reader;
        let Some(record) = self.get(T::Conversations, read.conversation_id.as_bytes())? else {
            return Ok(MarkOutcome::NotFound);
        };
        let conv = decode_conversation(&read.conversation_id, &record, 0)?;
        if conv.tenant != reader.tenant {
            return Ok(MarkOutcome::NotFound);
        }
        if !conv.has_member(&reader.user) {
            return Ok(MarkOutcome::NotMember);
        }
        let peer = conv.members.iter().find(|m| **m != reader.user).unwrap_or(&reader.user).clone();
        let key = reads_key(&read.conversation_id, &reader.user);
        let current = decode_read_state(self.get(T::Reads, &key)?.as_deref())?;
        let last = self.conv_state(&read.conversation_id)?.map_or(0, |s| s.last_seq);
        let up_to = read.up_to_seq.min(last);
        if up_to <= current.read_seq {
            return Ok(MarkOutcome::Marked(ReadMark { read_seq: current.read_seq, moved: false, peer }));
        }
        let (message, ordinal) =
            self.message_at(&read.conversation_id, up_to)?.ok_or_else(|| corrupt("a message below the last seq"))?;
        let peer_sent = if peer == reader.user {
            0
        } else {
            storage::sent_counts(up_to, &message.from_user, ordinal, &reader.user).1
        };
        let state = ReadState { read_seq: up_to, peer_sent };
        self.write(T::Reads, key, Some(state.encode().to_vec()));
        let frame = storage::receipt_frame(&read.conversation_id, &reader.user, up_to);
        let event = storage::receipt_key(&read.conversation_id, &reader.user);
        self.put_event(&reader.tenant, &[&peer, &reader.user], reader, &event, up_to, &frame)?;
        Ok(MarkOutcome::Marked(ReadMark { read_seq: up_to, moved: true, peer }))
    }

    pub(crate) fn recall(&mut self, tenant: &str, msg_id: &str, by: &DeviceKey) -> Result<Option<RecallOutcome>> {
        let Some(pos) = self.get(T::MsgIndex, msg_id.as_bytes())? else {
            return Ok(None);
        };
        let mut r = Reader::new(&pos);
        let (Some(conv), Some(seq)) = (r.s(), r.n()) else {
            return Err(corrupt("message index record"));
        };
        let Some(record) = self.get(T::Conversations, conv.as_bytes())? else {
            return Err(corrupt("a message without its conversation"));
        };
        if decode_conversation(conv, &record, 0)?.tenant != tenant {
            return Ok(None);
        }
        let (mut message, ordinal) =
            self.message_at(conv, seq)?.ok_or_else(|| corrupt("message index points at a missing message"))?;
        if !message.recalled_by.is_empty() {
            return Ok(Some(RecallOutcome { message, fresh: false }));
        }
        message.content = None;
        message.recalled_by = by.user.clone();
        message.recalled_ms = im_core::now_ms();
        self.write(T::Messages, message_key(conv, seq), Some(encode_stored(&message, ordinal)));
        let frame = storage::recalled_frame(&message);
        let event = storage::recall_key(conv, msg_id);
        self.put_event(tenant, &[&message.from_user, &message.to_user], by, &event, 1, &frame)?;
        Ok(Some(RecallOutcome { message, fresh: true }))
    }

    pub(crate) fn ack_events(&mut self, dev: &DeviceKey, ids: &[String]) -> Result<usize> {
        let mut removed = 0;
        for id in ids {
            let Some((key, version)) = storage::parse_event_id(id) else { continue };
            let key = event_key(&dev.tenant, &dev.user, &dev.device, key);
            if self.get(T::Events, &key)?.as_deref().and_then(event_version) == Some(version) {
                self.write(T::Events, key, None);
                removed += 1;
            }
        }
        Ok(removed)
    }
}
