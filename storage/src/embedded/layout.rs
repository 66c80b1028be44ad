//! How the embedded store lays its records out: one fjall keyspace per kind
//! of record, composite keys from [`crate::keys`].
//!
//! | keyspace        | key                                      | value                          |
//! |-----------------|------------------------------------------|--------------------------------|
//! | `messages`      | (conversation, seq)                      | protobuf `Message`             |
//! | `msg_index`     | msg_id                                   | (conversation, seq)            |
//! | `conversations` | conversation                             | (tenant, member a, member b)   |
//! | `idempotency`   | (tenant, sender, client_msg_id)          | msg_id                         |
//! | `pending`       | (tenant, user, device, conversation, seq)| msg_id                         |
//! | `devices`       | (tenant, user, device)                   | last seen, ms, 8 bytes BE      |
//! | `cs`            | (kind, tenant, id)                       | JSON (see `crate::cs::embedded`)|
//!
//! Device "" in `pending` holds the messages of a user who has no device
//! yet. A conversation's record is written with its first message; its last
//! seq is the last key of the conversation in `messages`.

use crate::Conversation;
use crate::keys::Key;

pub(crate) fn device_prefix(tenant: &str, user: &str) -> Vec<u8> {
    Key::new().s(tenant).s(user).into_vec()
}

pub(crate) fn device_key(tenant: &str, user: &str, device: &str) -> Vec<u8> {
    Key::new().s(tenant).s(user).s(device).into_vec()
}

pub(crate) fn pending_key(tenant: &str, user: &str, device: &str, conversation: &str, seq: u64) -> Vec<u8> {
    Key::new().s(tenant).s(user).s(device).s(conversation).n(seq).into_vec()
}

pub(crate) fn message_key(conversation: &str, seq: u64) -> Vec<u8> {
    Key::new().s(conversation).n(seq).into_vec()
}

pub(crate) fn conversation_prefix(conversation: &str) -> Vec<u8> {
    Key::new().s(conversation).into_vec()
}

pub(crate) fn encode_conversation(c: &Conversation) -> Vec<u8> {
    Key::new().s(&c.tenant).s(&c.members[0]).s(&c.members[1]).into_vec()
}
