//! dongdong's protocol crate: the generated `dongdong.v1` types, frame codecs
//! for both WebSocket encodings, ids, and the error codes every layer maps to.
//! No I/O lives here, so clients (bots, tests, consoles' tooling) share it.

pub mod codec;
pub mod error;
pub mod ids;
#[cfg(test)]
mod sdk_types;
pub mod token;

/// Generated protobuf types of `proto/dongdong.proto` (package `dongdong.v1`),
/// with serde impls that follow protobuf's canonical JSON mapping.
#[allow(clippy::all, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/dongdong.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/dongdong.v1.serde.rs"));
}

pub use codec::{Encoding, FrameDecodeError, decode_frame, encode_deliver, encode_frame};
pub use error::{ClientError, CloseCode, ErrorCode, InvalidSetting};
pub use ids::{ConversationId, DeviceKey, Role, TenantUser, conversation_id, new_msg_id};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
