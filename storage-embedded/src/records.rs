//! How the store's records are keyed and encoded: composite keys (see
//! `crate::keys`) and the record formats of messages, conversations, read
//! states and events.

use crate::errors::{corrupt, unavailable};
use crate::keys::{Key, Reader};
use im_core::pb::Message;
use prost::Message as _;
use redb::ReadableTable;
use storage::{Conversation, ReadState, Result, StorageError};

/// The device slot of a user who has not connected from any device yet.
/// Real device ids are never empty.
pub(crate) const USER_SLOT: &str = "";

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

pub(crate) fn decode_message(bytes: &[u8]) -> Result<Message> {
    Message::decode(bytes).map_err(|e| StorageError::Corrupt(format!("message record: {e}")))
}

/// What a message record holds beside the `Message`: the sender's count of
/// messages in the conversation up to this one, as protobuf field 1000 of
/// the same bytes (decoding a `Message` skips it; records written before it
/// existed read as 0).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct StoredExtra {
    #[prost(uint64, tag = "1000")]
    ordinal: u64,
}

pub(crate) fn encode_stored(message: &Message, ordinal: u64) -> Vec<u8> {
    let mut bytes = message.encode_to_vec();
    bytes.extend_from_slice(&StoredExtra { ordinal }.encode_to_vec());
    bytes
}

pub(crate) fn stored_ordinal(bytes: &[u8]) -> u64 {
    StoredExtra::decode(bytes).map(|e| e.ordinal).unwrap_or(0)
}

pub(crate) fn user_conv_key(tenant: &str, user: &str, active_ms: u64, conversation: &str) -> Vec<u8> {
    Key::new().s(tenant).s(user).n(active_ms).s(conversation).into_vec()
}

pub(crate) fn reads_key(conversation: &str, user: &str) -> Vec<u8> {
    Key::new().s(conversation).s(user).into_vec()
}

pub(crate) fn event_key(tenant: &str, user: &str, device: &str, key: &str) -> Vec<u8> {
    Key::new().s(tenant).s(user).s(device).s(key).into_vec()
}

/// An event record: its version, then the frame.
pub(crate) fn encode_event(version: u64, frame: &im_core::pb::Frame) -> Vec<u8> {
    let mut v = version.to_be_bytes().to_vec();
    v.extend_from_slice(&frame.encode_to_vec());
    v
}

pub(crate) fn event_version(bytes: &[u8]) -> Option<u64> {
    bytes.get(..8)?.try_into().ok().map(u64::from_be_bytes)
}

pub(crate) fn decode_read_state(bytes: Option<&[u8]>) -> Result<ReadState> {
    bytes.map_or(Ok(ReadState::default()), |b| ReadState::decode(b).ok_or_else(|| corrupt("read state record")))
}

pub(crate) fn decode_conversation(id: &str, bytes: &[u8], last_seq: u64) -> Result<Conversation> {
    let mut r = Reader::new(bytes);
    let (Some(tenant), Some(a), Some(b)) = (r.s(), r.s(), r.s()) else {
        return Err(corrupt("conversation record"));
    };
    Ok(Conversation {
        tenant: tenant.to_string(),
        conversation_id: id.to_string(),
        members: [a.to_string(), b.to_string()],
        last_seq,
    })
}

pub(crate) fn encode_conversation(c: &Conversation) -> Vec<u8> {
    Key::new().s(&c.tenant).s(&c.members[0]).s(&c.members[1]).into_vec()
}

/// The highest seq stored in a conversation, 0 if none.
pub(crate) fn last_seq<T: ReadableTable<&'static [u8], &'static [u8]>>(
    messages: &T,
    conversation: &str,
) -> Result<u64> {
    let lo = message_key(conversation, 0);
    let hi = message_key(conversation, u64::MAX);
    let last = messages.range(lo.as_slice()..=hi.as_slice()).map_err(unavailable)?.next_back();
    let Some(item) = last else { return Ok(0) };
    let (k, _) = item.map_err(unavailable)?;
    let k = k.value();
    let seq = k.get(k.len().saturating_sub(8)..).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
    seq.ok_or_else(|| corrupt("message key"))
}
