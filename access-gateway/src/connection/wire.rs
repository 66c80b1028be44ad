//! Frames to and from WebSocket messages, and why a connection ends.

use im_core::pb::{Frame, Message, frame::Body};
use im_core::{CloseCode, Encoding, ErrorCode};
use std::borrow::Cow;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message as WsMessage};

/// Why a connection's loop ended.
#[derive(Debug)]
pub(crate) enum Exit {
    /// Close with this code and reason.
    Close(CloseCode, Cow<'static, str>),
    /// The peer closed or the socket failed; nothing more can be written.
    /// `resumable`: not a goodbye (the socket broke, or the client's Close
    /// was neither 1000 nor 1001): the session is parked for a resume.
    Gone { resumable: bool },
}

pub(crate) fn close(code: CloseCode, reason: impl Into<Cow<'static, str>>) -> Exit {
    Exit::Close(code, reason.into())
}

pub(crate) fn encode(encoding: Encoding, frame: &Frame) -> WsMessage {
    message_of(encoding, im_core::encode_frame(encoding, frame))
}

/// A `Deliver` of `message`, encoded without copying the message.
pub(crate) fn encode_deliver(encoding: Encoding, message: &Message, replay: bool) -> WsMessage {
    message_of(encoding, im_core::encode_deliver(encoding, message, replay))
}

fn message_of(encoding: Encoding, bytes: Vec<u8>) -> WsMessage {
    match encoding {
        Encoding::Protobuf => WsMessage::binary(bytes),
        // Canonical JSON from serde_json is always UTF-8.
        Encoding::Json => WsMessage::text(String::from_utf8(bytes).unwrap_or_default()),
    }
}

pub(crate) fn error_frame(req_id: u64, code: ErrorCode, message: impl Into<String>) -> Frame {
    metrics::counter!("dongdong_errors_total", "code" => code.as_str_name()).increment(1);
    Frame { req_id, body: Some(Body::Error(code.with_message(message))) }
}

/// One message read from the socket, sorted. Data keeps the bytes the
/// socket read (no copy).
pub(crate) enum Incoming {
    Data(Encoding, Bytes),
    /// A WebSocket ping or pong: a sign of life, nothing to do.
    Heard,
    Exit(Exit),
}

pub(crate) fn classify(item: Option<Result<WsMessage, WsError>>, max_frame: usize) -> Incoming {
    match item {
        None => Incoming::Exit(Exit::Gone { resumable: true }),
        Some(Ok(WsMessage::Close(frame))) => {
            // 1000 (closed by the app) and 1001 (the page went away) are
            // goodbyes; a client that drops a dead socket may send others.
            let code = frame.map_or(1005, |f| u16::from(f.code));
            Incoming::Exit(Exit::Gone { resumable: !matches!(code, 1000 | 1001) })
        }
        Some(Ok(WsMessage::Text(t))) => Incoming::Data(Encoding::Json, Bytes::from(t)),
        Some(Ok(WsMessage::Binary(b))) => Incoming::Data(Encoding::Protobuf, b),
        Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => Incoming::Heard,
        Some(Err(WsError::Capacity(e))) => {
            Incoming::Exit(close(CloseCode::TooLarge, format!("frame too large ({e}); the limit is {max_frame} bytes")))
        }
        // The socket ended without a Close: the network went.
        Some(Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake))) => {
            Incoming::Exit(Exit::Gone { resumable: true })
        }
        Some(Err(WsError::Protocol(e))) => {
            Incoming::Exit(close(CloseCode::ProtocolError, format!("WebSocket protocol error: {e}")))
        }
        Some(Err(WsError::Utf8(_))) => Incoming::Exit(close(CloseCode::ProtocolError, "text message is not UTF-8")),
        Some(Err(_)) => Incoming::Exit(Exit::Gone { resumable: true }),
    }
}

/// The name of a server-to-client frame a client sent, for its error.
pub(crate) fn server_frame_name(body: &Body) -> &'static str {
    match body {
        Body::AuthOk(_) => "AuthOk",
        Body::SendAck(_) => "SendAck",
        Body::Deliver(_) => "Deliver",
        Body::HistoryPage(_) => "HistoryPage",
        Body::Pong(_) => "Pong",
        Body::Error(_) => "Error",
        Body::QueueUpdate(_) => "QueueUpdate",
        Body::SessionAssigned(_) => "SessionAssigned",
        Body::SessionTransferred(_) => "SessionTransferred",
        Body::SessionEnded(_) => "SessionEnded",
        Body::LeftMessageNotice(_) => "LeftMessageNotice",
        Body::LeaveMessageOffer(_) => "LeaveMessageOffer",
        Body::CsState(_) => "CsState",
        Body::CsOk(_) => "CsOk",
        Body::PresenceUpdate(_) => "PresenceUpdate",
        Body::ReadReceipt(_) => "ReadReceipt",
        Body::ConversationPage(_) => "ConversationPage",
        Body::Recalled(_) => "Recalled",
        Body::SearchPage(_) => "SearchPage",
        _ => "a client frame",
    }
}
