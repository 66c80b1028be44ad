//! Storage for dongdong behind narrow async traits, named after what the
//! gateway and dispatch need:
//!
//! - [`MessageStore`]: append a message (idempotent by sender and
//!   `client_msg_id`, allocating the conversation's next `seq`, marking it
//!   pending for the recipients' devices, all atomically), read history.
//! - [`PendingStore`]: the ids still unacknowledged per device.
//! - [`DeviceRegistry`]: the devices a user has connected from.
//! - [`PresenceRegistry`]: where each (tenant, user, device) is connected now.
//!
//! Idempotency, seq allocation and pending marking are one call on purpose:
//! splitting them lets a crash between steps leave a seq gap, a stored but
//! never-pending message, or a retried send stored twice. Each implementation
//! makes the one call atomic in its own way.
//!
//! The implementations live in a crate per backend, each holding every
//! concern's implementation for that backend: `storage-embedded` (a
//! write-ahead log in front of redb, in one data directory) and
//! `storage-cluster` (Redis and MongoDB). With the `testsuite` feature,
//! [`conformance`] is the test suite every implementation must pass.

mod revocations;
pub use revocations::Revocations;
mod settings;
pub use settings::Settings;
pub mod files;
pub use files::{FileMeta, FileStore};
#[cfg(feature = "testsuite")]
pub mod conformance;
pub mod cs;
mod model;
pub mod search;
pub use search::SearchIndex;

pub use model::*;

use async_trait::async_trait;
use im_core::pb::Message;
use std::sync::Arc;

/// What can go wrong in a storage call. Both variants are retryable from the
/// client's point of view; neither means the data was partly written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// The backend could not be reached or could not make the write durable.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A stored record could not be decoded.
    #[error("corrupt storage record: {0}")]
    Corrupt(String),
}

impl StorageError {
    pub fn code(&self) -> im_core::ErrorCode {
        match self {
            StorageError::Unavailable(_) => im_core::ErrorCode::Unavailable,
            StorageError::Corrupt(_) => im_core::ErrorCode::Internal,
        }
    }
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

impl From<StorageError> for im_core::ClientError {
    fn from(e: StorageError) -> Self {
        metrics::counter!("dongdong_storage_errors_total").increment(1);
        tracing::error!(error = %e, "storage call failed");
        // The client learns that it may retry; the details stay in our logs.
        let message = match e {
            StorageError::Unavailable(_) => "storage is unavailable; retry later",
            StorageError::Corrupt(_) => "internal storage error",
        };
        im_core::ClientError::new(e.code(), message)
    }
}

/// An append whose place in its conversation is fixed; resolves when it is
/// durable (see [`MessageStore::start_append`]).
pub type PendingAppend = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Appended>> + Send>>;

/// Durable message log.
#[async_trait]
pub trait MessageStore: Send + Sync + 'static {
    /// Stores `msg` durably and returns it with its `msg_id` and `seq`, or, if
    /// the same sender already appended the same `client_msg_id`, returns that
    /// earlier message with `duplicate = true` and changes nothing.
    ///
    /// A fresh message is marked pending, in the same atomic step, for every
    /// known device of `to_user` and every known device of `from_user` except
    /// `from_device`. If `to_user` has no known device yet, it is kept pending
    /// for the user and handed to the first device that registers.
    ///
    /// When this returns `Ok`, the message survives a crash.
    ///
    /// Callers serialise a node's appends of one conversation: the next one
    /// starts when the one before it has returned from
    /// [`start_append`](Self::start_append) (dispatch's conversation locks
    /// do this). An implementation stays correct without it (gap-free,
    /// idempotent: the cluster backend must be, for appends from two nodes
    /// at once), but may be slower, retrying a seq another append took.
    async fn append(&self, msg: NewMessage) -> Result<Appended>;

    /// Starts an append and returns once its order is fixed: an append of
    /// the same conversation started after this one returns gets a higher
    /// seq. The returned future completes it as [`append`](Self::append)
    /// does. Callers that hold a conversation's lock only until this returns
    /// can keep many appends of one conversation in flight (one group
    /// commit) and still push them in seq order.
    ///
    /// The default appends completely before returning.
    async fn start_append(&self, msg: NewMessage) -> Result<PendingAppend> {
        let appended = self.append(msg).await;
        Ok(Box::pin(std::future::ready(appended)))
    }

    /// One message by position.
    async fn get(&self, tenant: &str, conversation_id: &str, seq: u64) -> Result<Option<Message>>;

    /// The conversation's members, if it exists in `tenant`.
    async fn conversation(&self, tenant: &str, conversation_id: &str) -> Result<Option<Conversation>>;

    /// A page of history in ascending `seq` (see [`HistoryQuery`]).
    async fn history(&self, query: HistoryQuery) -> Result<HistoryPage>;

    /// One message by id, if it exists in `tenant`.
    async fn get_by_id(&self, tenant: &str, msg_id: &str) -> Result<Option<Message>>;

    /// Moves the reader's read pointer of the conversation up to
    /// `up_to_seq` (capped at the last seq) if the reader is a member; a
    /// pointer already there or beyond stays. Need not be durable at once
    /// (like acks): a crash may move a pointer back a little. When it moves, the same atomic step records how many
    /// messages the peer had sent up to it (for unread counts) and makes a
    /// receipt pending for every known device of the peer and every other
    /// known device of the reader, replacing an older pending receipt of
    /// the same reader and conversation.
    async fn mark_read(&self, read: MarkRead) -> Result<MarkOutcome>;

    /// A page of `user`'s conversations, most recently active first,
    /// strictly after `after`. Costs a few point reads per item, however
    /// long the conversations are.
    async fn conversations(
        &self,
        tenant: &str,
        user: &str,
        after: Option<&ConversationCursor>,
        limit: usize,
    ) -> Result<ConversationsPage>;

    /// Deletes a message's content and records who recalled it and when;
    /// in the same step makes a `Recalled` event pending for every known
    /// device of both members except `by`'s. A message recalled before is
    /// returned unchanged (`fresh = false`); `None` if it does not exist in
    /// `tenant`. Permission checks are the caller's.
    async fn recall(&self, tenant: &str, msg_id: &str, by: &DeviceKey) -> Result<Option<RecallOutcome>>;
}

/// Per-device pending ids.
#[async_trait]
pub trait PendingStore: Send + Sync + 'static {
    /// Up to `limit` pending messages of `device`, strictly after `after` when
    /// given (a cursor made from the last message of the previous page). Each
    /// conversation's messages come in `seq` order; how conversations
    /// interleave is up to the implementation.
    async fn pending(&self, device: &DeviceKey, after: Option<&PendingCursor>, limit: usize) -> Result<Vec<Message>>;

    /// Up to `limit` pending messages of `device` in one conversation with
    /// `after_seq < seq < before_seq`, in `seq` order: what a connection
    /// that delivered the conversation up to `after_seq` still owes the
    /// device before `before_seq` (docs/storage.md, "Seq order across
    /// nodes"). Fewer than `limit` means that is all of them.
    async fn pending_between(
        &self,
        device: &DeviceKey,
        conversation_id: &str,
        after_seq: u64,
        before_seq: u64,
        limit: usize,
    ) -> Result<Vec<Message>>;

    /// How many messages are pending for `device`.
    async fn pending_count(&self, device: &DeviceKey) -> Result<u64>;

    /// Removes these ids from `device`'s pending set; unknown ids are ignored.
    /// Returns how many were removed. Need not be durable at once: a lost ack
    /// only causes a duplicate delivery.
    async fn ack(&self, device: &DeviceKey, msg_ids: &[String]) -> Result<usize>;

    /// [`ack`](Self::ack) for many devices in one call: the acks of a whole
    /// node gathered over a moment. All or nothing is not required; an
    /// error means some may not have been removed (they are redelivered).
    async fn ack_batch(&self, acks: &[(Arc<DeviceKey>, Vec<String>)]) -> Result<usize> {
        let mut removed = 0;
        for (device, ids) in acks {
            removed += self.ack(device, ids).await?;
        }
        Ok(removed)
    }

    /// Up to `limit` receipts and recalls pending for `device`, in key
    /// order, strictly after the key `after`.
    async fn pending_events(&self, device: &DeviceKey, after: Option<&str>, limit: usize) -> Result<Vec<PendingEvent>>;

    /// Removes the events whose ids (see [`event_id`]) are given, each only
    /// if it still has the acked version; returns how many were removed.
    /// Not durable at once, like acks.
    async fn ack_events(&self, acks: &[(Arc<DeviceKey>, Vec<String>)]) -> Result<usize>;
}

/// Devices remembered per user unless configured otherwise
/// (`storage.max_devices_per_user`).
pub const DEFAULT_MAX_DEVICES_PER_USER: usize = 16;

/// The devices each user has connected from.
#[async_trait]
pub trait DeviceRegistry: Send + Sync + 'static {
    /// Records that `device` connected. A user's first device takes over the
    /// messages kept pending for the user. Past the per-user device limit, the
    /// device seen least recently is forgotten with its pending set.
    async fn register_device(&self, device: &DeviceKey) -> Result<DeviceRegistration>;
}

/// Where devices are connected right now.
#[async_trait]
pub trait PresenceRegistry: Send + Sync + 'static {
    /// Registers `entry`, replacing any entry of the same device, and returns
    /// the replaced one so its connection can be closed.
    async fn register(&self, entry: PresenceEntry) -> Result<Option<PresenceEntry>>;

    /// Removes the device's entry only if it still has `epoch`, so a late
    /// close of an old connection never removes a newer one. Returns whether
    /// an entry was removed.
    async fn unregister(&self, device: &DeviceKey, epoch: u64) -> Result<bool>;

    /// Every connected device of the user.
    async fn lookup(&self, tenant: &str, user: &str) -> Result<Vec<PresenceEntry>>;

    /// Records whether the user is online now (as a lookup found them) and
    /// returns whether that is a change from what was recorded last (a
    /// user never recorded counts as offline). Going offline records
    /// `now_ms` as when they were last seen.
    async fn record_online(&self, tenant: &str, user: &str, online: bool, now_ms: u64) -> Result<bool>;

    /// When the user was last recorded going offline (0: never, or online).
    async fn last_seen(&self, tenant: &str, user: &str) -> Result<u64>;
}

/// Carries pushes between the nodes of a cluster: each node receives on its
/// own channel. Delivery is best effort; what a lost push carried is still
/// pending and is resent or replayed.
#[async_trait]
pub trait NodeBus: Send + Sync + 'static {
    /// Sends `payload` to `node_id`'s channel.
    async fn publish(&self, node_id: &str, payload: Vec<u8>) -> Result<()>;

    /// Receives what is published to `node_id` until the receiver is dropped,
    /// resubscribing by itself after a connection loss. An empty payload
    /// means the subscription was re-established: pushes may have been lost.
    async fn subscribe(&self, node_id: &str) -> Result<tokio::sync::mpsc::Receiver<Vec<u8>>>;
}

/// Offline pushes waiting for the webhook, kept where another node finds
/// them if the node holding them dies (the cluster backend: a Redis stream
/// per node with a consumer group). Each event is opaque bytes; its id names
/// where it is kept. A node `put`s events when they arrive, `keep`s those it
/// still holds (waiting for their user's interval or being retried) well
/// within `idle`, and is `done` with them when sent, refused, given up or
/// replaced by a later one; events nobody kept for `idle` are taken over by
/// any node's `take_over` (its own included: events it lost track of).
#[async_trait]
pub trait PushQueue: Send + Sync + 'static {
    /// Stores the events; their ids, in order.
    async fn put(&self, events: &[Vec<u8>]) -> Result<Vec<String>>;
    /// Keeps the events from being taken over for another `idle`.
    async fn keep(&self, ids: &[String]) -> Result<()>;
    /// Forgets the events.
    async fn done(&self, ids: &[String]) -> Result<()>;
    /// At most `max` events nobody kept for `idle`, now this node's.
    async fn take_over(&self, idle: std::time::Duration, max: usize) -> Result<Vec<(String, Vec<u8>)>>;
}

/// Reachability of the backend's servers, for `/healthz`.
#[async_trait]
pub trait HealthCheck: Send + Sync + 'static {
    /// One entry per dependency: its name and whether it answered.
    async fn check(&self) -> Vec<(&'static str, std::result::Result<(), String>)>;
}

/// One storage backend: an implementation of every trait.
#[derive(Clone)]
pub struct Backends {
    pub messages: Arc<dyn MessageStore>,
    pub pending: Arc<dyn PendingStore>,
    pub devices: Arc<dyn DeviceRegistry>,
    pub presence: Arc<dyn PresenceRegistry>,
    /// Cross-node pushes; `None` for single-node backends.
    pub bus: Option<Arc<dyn NodeBus>>,
    pub health: Arc<dyn HealthCheck>,
    /// Customer-service queues, sessions and left messages.
    pub cs: Arc<dyn cs::CsStore>,
    /// Revoked tokens.
    pub revocations: Arc<dyn Revocations>,
    /// Uploaded files.
    pub files: Arc<dyn FileStore>,
    /// Settings changed while running (the rate limits).
    pub settings: Arc<dyn Settings>,
    /// The message search index.
    pub search: Arc<dyn SearchIndex>,
    /// Offline pushes that outlive their node; `None` for single-node
    /// backends (their queue is in memory).
    pub push_queue: Option<Arc<dyn PushQueue>>,
}
