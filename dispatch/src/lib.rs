//! Dispatch: the reliable path of a chat message.
//!
//! `send` validates, appends to the [`MessageStore`](storage::MessageStore)
//! (idempotent, seq-allocating, pending-marking, durable), pushes the stored
//! message to the recipients' live connections through the router, and only
//! then answers with the stored `msg_id` and `seq`. Acks remove pending ids;
//! history is paged by seq.
//!
//! Order: an append of a conversation is *started* under that conversation's
//! lock (which fixes its seq relative to the others: see
//! `MessageStore::start_append`), and each push waits for the push of the
//! append started before it on the same lock stripe. So pushes of a
//! conversation leave this node in `seq` order, while many appends of one
//! conversation share a group commit. The append and push run in their own
//! task: a sender that disconnects mid-send cannot cancel a push after the
//! store.
//!
//! A connection's own sends keep the order it wrote them in: each takes a
//! [`Turn`] from the connection's [`SendOrder`] and starts its append only
//! once the send before it has started its own (or failed). The chain
//! covers the few microseconds that fix a seq, not the durable write, so
//! pipelined sends still share group commits.

mod acks;
pub mod push;
mod reads;
pub mod search;

pub use acks::{AckQueue, Held};

use im_core::ClientError;
use im_core::ErrorCode;
use im_core::ids::{validate_conversation_id, validate_id, validate_uuid};
use im_core::pb::{self, Message, content};
use session_router::Router;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Instant;
use storage::{Backends, DeviceKey, HistoryQuery, NewMessage, PendingCursor};
use tokio::sync::{Mutex, oneshot};
use tracing::Instrument;

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// Dispatch's keys of `[limits]`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DispatchLimits {
    /// History page size when the client asks for 0.
    pub history_page_default: usize,
    /// Largest history page.
    pub history_page_max: usize,
    /// Ack frames of the whole node waiting for the store (see [`AckQueue`]).
    pub ack_queue: usize,
}

impl Default for DispatchLimits {
    fn default() -> Self {
        Self { history_page_default: 50, history_page_max: 200, ack_queue: 8192 }
    }
}

impl DispatchLimits {
    pub fn validate(&self) -> Result<(), im_core::InvalidSetting> {
        let invalid = |key: &str, reason: &str| Err(im_core::InvalidSetting::new(key, reason));
        for (key, v) in [
            ("limits.ack_queue", self.ack_queue),
            ("limits.history_page_default", self.history_page_default),
            ("limits.history_page_max", self.history_page_max),
        ] {
            if v == 0 {
                return invalid(key, "must be at least 1");
            }
        }
        if self.history_page_default > self.history_page_max {
            return invalid("limits.history_page_default", "must not exceed limits.history_page_max");
        }
        if self.history_page_max > 1000 {
            return invalid("limits.history_page_max", "must be at most 1000");
        }
        Ok(())
    }
}

/// `[im]`: chat features.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImConfig {
    /// How long after sending a user may recall their message (admins:
    /// always). "0s" turns recall off for everyone but admins.
    #[serde(with = "humantime_serde")]
    pub recall_window: std::time::Duration,
}

impl Default for ImConfig {
    fn default() -> Self {
        Self { recall_window: std::time::Duration::from_secs(120) }
    }
}

/// What dispatch is configured with.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DispatchConfig {
    pub limits: DispatchLimits,
    pub im: ImConfig,
    /// Largest custom JSON payload, text or url, in bytes (the frame limit
    /// bounds the total; this bounds each field).
    pub max_field_bytes: usize,
}

/// Conversation locks are striped: bounded memory whatever the number of
/// conversations, at the price of rare waits between unrelated ones.
const LOCK_STRIPES: usize = 4096;

pub struct Dispatcher {
    backends: Backends,
    acks: AckQueue,
    router: Arc<Router>,
    limits: DispatchConfig,
    /// Per stripe: completes when the push of the latest append started
    /// under it is done (or abandoned).
    locks: Box<[Mutex<Option<oneshot::Receiver<()>>>]>,
    hasher: std::collections::hash_map::RandomState,
    /// Offline push, when a webhook is configured.
    pusher: std::sync::OnceLock<Arc<push::Pusher>>,
    /// The search indexer, once started.
    indexer: std::sync::OnceLock<Arc<search::Indexer>>,
}

impl Dispatcher {
    pub fn new(backends: Backends, router: Arc<Router>, limits: DispatchConfig) -> Arc<Self> {
        Arc::new(Self {
            acks: AckQueue::start(backends.pending.clone(), limits.limits.ack_queue),
            backends,
            router,
            limits,
            locks: (0..LOCK_STRIPES).map(|_| Mutex::new(None)).collect(),
            hasher: Default::default(),
            pusher: Default::default(),
            indexer: Default::default(),
        })
    }

    /// Calls the push webhook for users who are offline (see [`push`]).
    pub fn set_pusher(&self, pusher: Arc<push::Pusher>) {
        let _ = self.pusher.set(pusher);
    }

    /// Tells the pusher that `to_user` has something pending and no device.
    pub(crate) fn push_offline(&self, tenant: &str, message: &Message, to_user: &str, kind: &'static str) {
        let Some(pusher) = self.pusher.get() else { return };
        let preview = match (&message.content, pusher.wants_preview()) {
            (Some(pb::Content { kind: Some(content::Kind::Text(t)) }), true) => Some(t.chars().take(100).collect()),
            (Some(pb::Content { kind: Some(content::Kind::Image(_)) }), true) => Some("[image]".into()),
            (Some(pb::Content { kind: Some(content::Kind::File(_)) }), true) => Some("[file]".into()),
            _ => None,
        };
        pusher.offer(push::PushEvent {
            tenant: tenant.to_string(),
            to_user: to_user.to_string(),
            from_user: message.from_user.clone(),
            conversation_id: message.conversation_id.clone(),
            msg_id: message.msg_id.clone(),
            kind,
            preview,
            session_id: None,
            at: tokio::time::Instant::now(),
            queue_id: None,
        });
    }

    /// Tells the pusher about a customer-service event for `to_user`, who
    /// has no connected device (`kind`: `session_assigned`, `session_ended`).
    pub fn push_session(
        &self,
        tenant: &str,
        to_user: &str,
        from_user: &str,
        conversation_id: &str,
        session_id: &str,
        kind: &'static str,
    ) {
        let Some(pusher) = self.pusher.get() else { return };
        pusher.offer(push::PushEvent {
            tenant: tenant.to_string(),
            to_user: to_user.to_string(),
            from_user: from_user.to_string(),
            conversation_id: conversation_id.to_string(),
            msg_id: String::new(),
            kind,
            preview: None,
            session_id: Some(session_id.to_string()),
            at: tokio::time::Instant::now(),
            queue_id: None,
        });
    }

    fn lock_of(&self, conversation_id: &str) -> &Mutex<Option<oneshot::Receiver<()>>> {
        &self.locks[(self.hasher.hash_one(conversation_id) as usize) % self.locks.len()]
    }

    /// Stores and delivers one message from `sender`. Returns the ack to send
    /// back: only after the message is durably stored.
    pub async fn send(self: &Arc<Self>, sender: &DeviceKey, req: pb::Send) -> Result<pb::SendAck> {
        let new = self.new_message(sender, req)?;
        let this = self.clone();
        // A task of its own: a caller that is dropped midway cannot cancel
        // a push after the store.
        tokio::spawn(async move { this.store_and_push(new, Turn::first(), Instant::now()).await })
            .await
            .map_err(|e| ClientError::new(ErrorCode::Internal, format!("send task failed: {e}")))?
    }

    /// [`send`](Self::send) for a connection: placed in its conversation
    /// after the send that took the turn before `turn` from the same
    /// [`SendOrder`], run in a task of its own, and answered through `done`
    /// (at once when the request is invalid). One task per send.
    pub fn spawn_send(
        self: &Arc<Self>,
        sender: &DeviceKey,
        req: pb::Send,
        turn: Turn,
        done: impl FnOnce(Result<pb::SendAck>) + Send + 'static,
    ) {
        let started = Instant::now();
        match self.new_message(sender, req) {
            Err(e) => done(Err(e)),
            Ok(new) => {
                let this = self.clone();
                tokio::spawn(async move { done(this.store_and_push(new, turn, started).await) }.in_current_span());
            }
        }
    }

    fn new_message(&self, sender: &DeviceKey, req: pb::Send) -> Result<NewMessage> {
        validate_id("client_msg_id", &req.client_msg_id).map_err(invalid)?;
        validate_id("to_user", &req.to_user).map_err(invalid)?;
        let content = req.content.ok_or_else(|| invalid("content is required".into()))?;
        self.validate_content(&content)?;
        let conversation_id = im_core::conversation_id(&sender.tenant, &sender.user, &req.to_user);
        Ok(NewMessage {
            tenant: sender.tenant.clone(),
            conversation_id,
            from_user: sender.user.clone(),
            from_device: sender.device.clone(),
            to_user: req.to_user,
            client_msg_id: req.client_msg_id,
            content,
        })
    }

    /// An uploaded file the message refers to: it must be the sender's (in
    /// the tenant); the content gets the file's facts from what is stored,
    /// and the conversation is recorded as one whose members may download
    /// it (before the append: a member may then read a file whose message
    /// failed to store, never the other way round).
    async fn attach_file(&self, new: &mut NewMessage) -> Result<()> {
        let file_id = match &new.content.kind {
            Some(content::Kind::Image(i)) if !i.file_id.is_empty() => i.file_id.clone(),
            Some(content::Kind::File(f)) if !f.file_id.is_empty() => f.file_id.clone(),
            _ => return Ok(()),
        };
        let not_found = || ClientError::new(ErrorCode::NotFound, "no such file: upload it with POST /api/v1/files");
        let meta = self.backends.files.file_meta(&new.tenant, &file_id).await?.ok_or_else(not_found)?;
        if meta.uploader != new.from_user {
            return Err(ClientError::new(ErrorCode::Forbidden, "only the uploader may send a file"));
        }
        match &mut new.content.kind {
            Some(content::Kind::Image(i)) => {
                if !meta.content_type.starts_with("image/") {
                    return Err(invalid(format!(
                        "file {file_id} is {}, not an image: send it as file",
                        meta.content_type
                    )));
                }
                i.width = meta.width;
                i.height = meta.height;
                i.size_bytes = meta.size;
                i.content_type = meta.content_type.clone();
                i.has_thumbnail = meta.thumbnail.is_some();
            }
            Some(content::Kind::File(f)) => {
                if f.name.is_empty() {
                    f.name = meta.name.clone();
                }
                f.size_bytes = meta.size;
                f.content_type = meta.content_type.clone();
                f.sha256 = meta.sha256.clone();
            }
            _ => {}
        }
        self.backends.files.add_file_ref(&new.tenant, &file_id, &new.conversation_id).await?;
        Ok(())
    }

    /// Appends in turn, pushes in seq order, and answers with the ack.
    async fn store_and_push(&self, mut new: NewMessage, turn: Turn, started: Instant) -> Result<pb::SendAck> {
        let tenant = new.tenant.clone();
        let Turn { after, placed } = turn;
        // Before its turn: looking the file up holds up no other send.
        self.attach_file(&mut new).await?;
        if let Some(after) = after {
            // Err: the send before failed or was dropped; it is done either way.
            let _ = after.await;
        }
        let (pending, previous, pushed) = {
            let mut latest = self.lock_of(&new.conversation_id).lock().await;
            let pending = self.backends.messages.start_append(new).await?;
            let (pushed, done) = oneshot::channel();
            (pending, latest.replace(done), pushed)
        };
        drop(placed);
        let appended = pending.await;
        if let Some(previous) = previous {
            // Err: that send failed or its task ended; either way it is done.
            let _ = previous.await;
        }
        let appended = appended?;
        for m in &appended.recovered {
            // Stored after its send had failed: never pushed yet.
            let _ = self.router.deliver_checked(&tenant, Arc::new(m.clone())).await;
        }
        if !appended.duplicate {
            let (_, online) = self.router.deliver_checked(&tenant, Arc::new(appended.message.clone())).await;
            if !online && appended.message.to_user != appended.message.from_user {
                let m = &appended.message;
                self.push_offline(&tenant, m, &m.to_user, "message");
            }
        }
        drop(pushed);
        if let Some(indexer) = self.indexer() {
            indexer.wake();
        }
        let m = &appended.message;
        if appended.duplicate {
            metrics::counter!("dongdong_duplicate_sends_total").increment(1);
        } else {
            metrics::counter!("dongdong_messages_total").increment(1);
            metrics::histogram!("dongdong_send_seconds").record(started.elapsed().as_secs_f64());
        }
        Ok(pb::SendAck {
            client_msg_id: m.client_msg_id.clone(),
            msg_id: m.msg_id.clone(),
            conversation_id: m.conversation_id.clone(),
            seq: m.seq,
            server_time_ms: m.server_time_ms,
            duplicate: appended.duplicate,
        })
    }

    /// Checks a message content against the field limits.
    pub fn validate_content(&self, content: &pb::Content) -> Result<()> {
        let max = self.limits.max_field_bytes;
        let too_long = |what: &str, s: &str| {
            (s.len() > max).then(|| ClientError::new(ErrorCode::TooLarge, format!("{what} is longer than {max} bytes")))
        };
        let file_id =
            |what: &str, id: &str| (!id.is_empty()).then(|| validate_uuid(what, id).err()).flatten().map(invalid);
        let err = match &content.kind {
            None => Some(invalid("content has no kind: set text, image, file or custom".into())),
            Some(content::Kind::Text(t)) if t.is_empty() => Some(invalid("text must not be empty".into())),
            Some(content::Kind::Text(t)) => too_long("text", t),
            Some(content::Kind::Image(i)) if i.url.is_empty() == i.file_id.is_empty() => {
                Some(invalid("image needs url or file_id (one of them)".into()))
            }
            Some(content::Kind::Image(i)) => {
                too_long("image.url", &i.url).or_else(|| file_id("image.file_id", &i.file_id))
            }
            Some(content::Kind::File(f)) if f.url.is_empty() == f.file_id.is_empty() => {
                Some(invalid("file needs url or file_id (one of them)".into()))
            }
            Some(content::Kind::File(f)) => too_long("file.url", &f.url)
                .or_else(|| too_long("file.name", &f.name))
                .or_else(|| file_id("file.file_id", &f.file_id)),
            Some(content::Kind::Custom(c)) if c.r#type.is_empty() => Some(invalid("custom.type is required".into())),
            Some(content::Kind::Custom(c)) => too_long("custom.json", &c.json).or_else(|| {
                (!c.json.is_empty() && serde_json::from_str::<serde::de::IgnoredAny>(&c.json).is_err())
                    .then(|| invalid("custom.json is not valid JSON".into()))
            }),
        };
        err.map_or(Ok(()), Err)
    }

    /// Checks the ids of an `Ack` frame before they are queued.
    pub fn check_ack(&self, ack: &pb::Ack) -> Result<()> {
        if let Some(Err(e)) = ack.msg_ids.iter().map(|id| validate_uuid("msg_ids", id)).find(Result::is_err) {
            return Err(invalid(e));
        }
        if ack.event_ids.iter().any(|id| storage::parse_event_id(id).is_none()) {
            return Err(invalid("event_ids must be event_id values of ReadReceipt or Recalled pushes".into()));
        }
        Ok(())
    }

    /// Where acked ids go: batched on their way to the store, off the
    /// connection's path.
    pub fn acks(&self) -> &AckQueue {
        &self.acks
    }

    /// Records the device and takes over what was pending for its user if it
    /// is the user's first device.
    pub async fn register_device(&self, device: &DeviceKey) -> Result<storage::DeviceRegistration> {
        Ok(self.backends.devices.register_device(device).await?)
    }

    pub async fn pending_count(&self, device: &DeviceKey) -> Result<u64> {
        Ok(self.backends.pending.pending_count(device).await?)
    }

    /// The next page of the device's pending messages after `cursor`.
    pub async fn pending_page(
        &self,
        device: &DeviceKey,
        cursor: Option<&PendingCursor>,
        limit: usize,
    ) -> Result<Vec<Message>> {
        Ok(self.backends.pending.pending(device, cursor, limit).await?)
    }

    /// What the device still has pending in one conversation strictly
    /// between two seqs: a live push that skipped ahead waits for it.
    pub async fn pending_between(
        &self,
        device: &DeviceKey,
        conversation_id: &str,
        after_seq: u64,
        before_seq: u64,
        limit: usize,
    ) -> Result<Vec<Message>> {
        Ok(self.backends.pending.pending_between(device, conversation_id, after_seq, before_seq, limit).await?)
    }

    /// The next page of the device's pending receipts and recalls.
    pub async fn pending_events(
        &self,
        device: &DeviceKey,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<storage::PendingEvent>> {
        Ok(self.backends.pending.pending_events(device, after, limit).await?)
    }

    /// One stored message by position, as it is now (a recalled one
    /// without its content): for resends, since a connection keeps only
    /// where its unacknowledged deliveries are.
    pub async fn message(&self, tenant: &str, conversation_id: &str, seq: u64) -> Result<Option<Message>> {
        Ok(self.backends.messages.get(tenant, conversation_id, seq).await?)
    }

    /// A page of a conversation the requester is a member of.
    pub async fn history(&self, who: &DeviceKey, req: pb::SyncRequest) -> Result<pb::HistoryPage> {
        self.history_as(who, req, false).await
    }

    /// A page of a conversation; with `authorized`, the caller has already
    /// checked that `who` may read it (e.g. the agent of a service session
    /// reading what the customer said to an earlier agent).
    pub async fn history_as(&self, who: &DeviceKey, req: pb::SyncRequest, authorized: bool) -> Result<pb::HistoryPage> {
        let conversation_id = match (req.conversation_id.is_empty(), req.with_user.is_empty()) {
            (false, true) => req.conversation_id,
            (true, false) => {
                validate_id("with_user", &req.with_user).map_err(invalid)?;
                im_core::conversation_id(&who.tenant, &who.user, &req.with_user)
            }
            (true, true) => return Err(invalid("set conversation_id or with_user".into())),
            (false, false) => {
                return Err(invalid("set conversation_id or with_user, not both".into()));
            }
        };
        validate_conversation_id("conversation_id", &conversation_id).map_err(invalid)?;
        if req.after_seq > 0 && req.before_seq > 0 {
            return Err(invalid("set after_seq or before_seq, not both".into()));
        }
        let Some(conv) = self.backends.messages.conversation(&who.tenant, &conversation_id).await? else {
            return Err(ClientError::new(ErrorCode::NotFound, "no such conversation"));
        };
        if !authorized && !conv.has_member(&who.user) {
            return Err(ClientError::new(ErrorCode::Forbidden, "not a member of this conversation"));
        }
        let limit = match req.limit as usize {
            0 => self.limits.limits.history_page_default,
            n => n.min(self.limits.limits.history_page_max),
        };
        let page = self
            .backends
            .messages
            .history(HistoryQuery {
                tenant: who.tenant.clone(),
                conversation_id: conversation_id.clone(),
                after_seq: req.after_seq,
                before_seq: req.before_seq,
                limit,
            })
            .await?;
        Ok(pb::HistoryPage { conversation_id, messages: page.messages, has_more: page.has_more })
    }
}

/// The order of one connection's sends: hand each send the next [`Turn`],
/// in the order the frames were read.
#[derive(Debug, Default)]
pub struct SendOrder {
    /// Resolves (with an error: the sender is dropped) once the latest send
    /// has fixed its seq or failed.
    last: Option<oneshot::Receiver<()>>,
}

impl SendOrder {
    /// The turn of the next send.
    pub fn next_turn(&mut self) -> Turn {
        let (placed, next) = oneshot::channel();
        let mut after = self.last.replace(next);
        // Already placed: nothing to wait for, and nothing kept allocated.
        if after.as_mut().is_some_and(|rx| !matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty))) {
            after = None;
        }
        Turn { after, placed }
    }
}

/// A send's place in its connection's order: it waits for `after`, and
/// dropping `placed` lets the next one go.
#[derive(Debug)]
pub struct Turn {
    after: Option<oneshot::Receiver<()>>,
    placed: oneshot::Sender<()>,
}

impl Turn {
    /// A turn that waits for nothing (a send outside any connection's order).
    pub fn first() -> Self {
        Self { after: None, placed: oneshot::channel().0 }
    }
}

pub(crate) fn invalid(message: String) -> ClientError {
    ClientError::new(ErrorCode::InvalidArgument, message)
}
