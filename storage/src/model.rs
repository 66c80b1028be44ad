//! Values passed through the storage traits.

use im_core::pb::{Content, Message};
use std::sync::Arc;

/// A message to append. `conversation_id` must be
/// `im_core::conversation_id(tenant, from_user, to_user)`.
#[derive(Debug, Clone, PartialEq)]
pub struct NewMessage {
    pub tenant: String,
    pub conversation_id: String,
    pub from_user: String,
    pub from_device: String,
    pub to_user: String,
    pub client_msg_id: String,
    pub content: Content,
}

/// The outcome of [`crate::MessageStore::append`].
#[derive(Debug, Clone, PartialEq)]
pub struct Appended {
    pub message: Message,
    /// The sender had appended this `client_msg_id` before; `message` is that
    /// earlier message and nothing was written.
    pub duplicate: bool,
    /// Earlier messages of the conversation whose append had failed with an
    /// unknown outcome (a store that timed out) and that turned out stored:
    /// they were never delivered, and go out before `message` (seq order).
    pub recovered: Vec<Message>,
}

/// A 1:1 conversation's members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    pub tenant: String,
    pub conversation_id: String,
    /// The two user ids, sorted.
    pub members: [String; 2],
    pub last_seq: u64,
}

impl Conversation {
    pub fn has_member(&self, user: &str) -> bool {
        self.members.iter().any(|m| m == user)
    }
}

/// Which page of a conversation's history to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryQuery {
    pub tenant: String,
    pub conversation_id: String,
    /// With `before_seq > 0`: the newest `limit` messages with seq < before_seq.
    /// Otherwise the oldest `limit` messages with seq > `after_seq`.
    pub after_seq: u64,
    pub before_seq: u64,
    pub limit: usize,
}

/// History in ascending seq; `has_more` says more exist in the requested direction.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryPage {
    pub messages: Vec<Message>,
    pub has_more: bool,
}

pub use im_core::DeviceKey;

/// Position in a device's pending set: the last message of the previous page.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PendingCursor {
    pub conversation_id: String,
    pub seq: u64,
    pub msg_id: String,
}

impl PendingCursor {
    pub fn of(message: &Message) -> Self {
        Self { conversation_id: message.conversation_id.clone(), seq: message.seq, msg_id: message.msg_id.clone() }
    }
}

/// The outcome of [`crate::DeviceRegistry::register_device`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceRegistration {
    /// The device had not been seen before (or had been forgotten).
    pub new_device: bool,
    /// Messages taken over from the user's pending set (first device only).
    pub claimed: u64,
    /// A device forgotten to stay within the per-user device limit.
    pub evicted: Option<String>,
}

/// Where one device is connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceEntry {
    /// Shared with the connection and the router: one copy per connection.
    pub device: Arc<DeviceKey>,
    /// The node holding the connection.
    pub node_id: Arc<str>,
    /// The connection's id on that node.
    pub conn_id: u64,
    /// Increases with every connection of the device; compare-and-delete key.
    pub epoch: u64,
}

/// A receipt or recall kept for one device until it acks the frame's
/// `event_id` (see [`crate::PendingStore::pending_events`]).
#[derive(Debug, Clone, PartialEq)]
pub struct PendingEvent {
    /// Orders a device's events; the cursor of the next page.
    pub key: String,
    /// `Frame { body: ReadReceipt | Recalled }` with its `event_id` set.
    pub frame: im_core::pb::Frame,
}

/// The key of a device's pending receipt of `reader` in a conversation: a
/// newer receipt replaces the older one under it.
pub fn receipt_key(conversation_id: &str, reader: &str) -> String {
    format!("r.{conversation_id}.{reader}")
}

/// The key of a device's pending recall of a message.
pub fn recall_key(conversation_id: &str, msg_id: &str) -> String {
    format!("x.{conversation_id}.{msg_id}")
}

/// An event's id: its key and version (`up_to_seq` for receipts, 1 for
/// recalls). An ack removes the event only if it still has that version.
pub fn event_id(key: &str, version: u64) -> String {
    format!("{key}@{version}")
}

/// The key and version of an event id; `None` for anything else.
pub fn parse_event_id(id: &str) -> Option<(&str, u64)> {
    let (key, version) = id.rsplit_once('@')?;
    let valid_key = (key.starts_with("r.") || key.starts_with("x.")) && key.len() <= 300;
    let version: u64 = version.parse().ok()?;
    (valid_key && version > 0).then_some((key, version))
}

/// The receipt frame pending for a device, with its event id.
pub fn receipt_frame(conversation_id: &str, reader: &str, up_to_seq: u64) -> im_core::pb::Frame {
    use im_core::pb::{Frame, ReadReceipt, frame::Body};
    let event_id = event_id(&receipt_key(conversation_id, reader), up_to_seq);
    let receipt =
        ReadReceipt { conversation_id: conversation_id.to_string(), reader: reader.to_string(), up_to_seq, event_id };
    Frame { req_id: 0, body: Some(Body::ReadReceipt(receipt)) }
}

/// The recall frame pending for a device, with its event id.
pub fn recalled_frame(message: &Message) -> im_core::pb::Frame {
    use im_core::pb::{Frame, Recalled, frame::Body};
    let recalled = Recalled {
        conversation_id: message.conversation_id.clone(),
        msg_id: message.msg_id.clone(),
        seq: message.seq,
        by: message.recalled_by.clone(),
        recalled_ms: message.recalled_ms,
        event_id: event_id(&recall_key(&message.conversation_id, &message.msg_id), 1),
    };
    Frame { req_id: 0, body: Some(Body::Recalled(recalled)) }
}

/// A read pointer to move (see [`crate::MessageStore::mark_read`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkRead {
    /// The reader's device: its other devices get the receipt, not it.
    pub reader: DeviceKey,
    pub conversation_id: String,
    pub up_to_seq: u64,
}

/// The outcome of [`crate::MessageStore::mark_read`].
#[derive(Debug, Clone, PartialEq)]
pub enum MarkOutcome {
    Marked(ReadMark),
    /// No such conversation in the reader's tenant.
    NotFound,
    /// The reader is not one of its members.
    NotMember,
}

/// A read pointer after [`crate::MessageStore::mark_read`].
#[derive(Debug, Clone, PartialEq)]
pub struct ReadMark {
    /// The reader's pointer now.
    pub read_seq: u64,
    /// Whether it moved: the receipt was then made pending for the peer's
    /// devices and the reader's other devices.
    pub moved: bool,
    /// The other member (the reader in a conversation with oneself).
    pub peer: String,
}

/// A user's read state in a conversation: the pointer, and how many
/// messages the other member had sent up to it (unread = what they have
/// sent in all minus this).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReadState {
    pub read_seq: u64,
    pub peer_sent: u64,
}

impl ReadState {
    pub fn encode(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.read_seq.to_be_bytes());
        out[8..].copy_from_slice(&self.peer_sent.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let read_seq = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
        let peer_sent = u64::from_be_bytes(bytes.get(8..16)?.try_into().ok()?);
        Some(Self { read_seq, peer_sent })
    }
}

/// How many messages `user` and the other member had sent up to and
/// including a message: seqs have no gaps, so one message's sender and
/// `ordinal` (the sender's count up to it) give both. Returns (user's, other's).
pub fn sent_counts(seq: u64, from_user: &str, ordinal: u64, user: &str) -> (u64, u64) {
    let theirs = seq.saturating_sub(ordinal);
    if from_user == user { (ordinal, theirs) } else { (theirs, ordinal) }
}

/// A position in a user's conversation list: the conversation's last
/// activity (ms) and id. Sorted newest first, ties by id descending.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConversationCursor {
    pub active_ms: u64,
    pub conversation_id: String,
}

impl ConversationCursor {
    pub fn encode(&self) -> String {
        format!("{}.{}", self.active_ms, self.conversation_id)
    }

    pub fn parse(s: &str) -> Option<Self> {
        let (ms, conv) = s.split_once('.')?;
        let valid = conv.len() == 33 && conv.starts_with('c') && conv[1..].bytes().all(|b| b.is_ascii_hexdigit());
        valid.then(|| Some(Self { active_ms: ms.parse().ok()?, conversation_id: conv.to_string() })).flatten()
    }
}

/// A page of [`crate::MessageStore::conversations`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConversationsPage {
    pub items: Vec<im_core::pb::ConversationItem>,
    /// Where the next page starts; `None` when this one is the last.
    pub next: Option<ConversationCursor>,
}

/// The outcome of [`crate::MessageStore::recall`].
#[derive(Debug, Clone, PartialEq)]
pub struct RecallOutcome {
    /// The message as stored now: without content, with `recalled_by`.
    pub message: Message,
    /// False when it had been recalled before (nothing changed).
    pub fresh: bool,
}

/// The list item of `user` in a conversation, from its last message (and
/// that message's sender `ordinal`) and both members' read states.
pub fn conversation_item(
    user: &str,
    peer: &str,
    last: Message,
    ordinal: u64,
    mine: ReadState,
    theirs: ReadState,
) -> im_core::pb::ConversationItem {
    let (_, peer_sent) = sent_counts(last.seq, &last.from_user, ordinal, user);
    let unread = if user == peer { 0 } else { peer_sent.saturating_sub(mine.peer_sent) };
    im_core::pb::ConversationItem {
        conversation_id: last.conversation_id.clone(),
        peer: peer.to_string(),
        last_seq: last.seq,
        unread,
        read_seq: mine.read_seq,
        peer_read_seq: theirs.read_seq,
        last_message: Some(last),
    }
}
