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
