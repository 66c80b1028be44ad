//! The one error vocabulary: every failure a client can see maps to an
//! [`ErrorCode`] (the wire `Error.code`), which in turn fixes whether it is
//! retryable, its HTTP status and the log level it deserves.

pub use crate::pb::ErrorCode;

impl ErrorCode {
    /// Whether retrying the same request later may succeed.
    pub fn retryable(self) -> bool {
        matches!(self, ErrorCode::Unavailable | ErrorCode::RateLimited | ErrorCode::Internal)
    }

    /// HTTP status for the same condition on the HTTP API.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadFrame | ErrorCode::InvalidArgument | ErrorCode::Unspecified => 400,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::TooLate => 410,
            ErrorCode::TooLarge => 413,
            ErrorCode::RateLimited => 429,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
        }
    }

    /// Server-side faults are logged as errors; client mistakes at debug.
    pub fn is_server_fault(self) -> bool {
        matches!(self, ErrorCode::Unavailable | ErrorCode::Internal)
    }

    /// Builds the wire error with this code.
    pub fn with_message(self, message: impl Into<String>) -> crate::pb::Error {
        crate::pb::Error { code: self as i32, message: message.into(), retryable: self.retryable() }
    }
}

/// WebSocket close codes the server uses (RFC 6455 plus the 4000-4999
/// private range). Documented in docs/protocol.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum CloseCode {
    /// The client closed, or the server ends a healthy connection.
    Normal = 1000,
    /// Idle timeout: nothing heard from the client for too long.
    GoingAway = 1001,
    /// The client broke the WebSocket protocol (bad framing, text not UTF-8).
    ProtocolError = 1002,
    /// Authentication failed or missing, or the client kept violating limits.
    PolicyViolation = 1008,
    /// A frame exceeded the maximum frame size.
    TooLarge = 1009,
    /// An unexpected server fault.
    InternalError = 1011,
    /// The server is shutting down or restarting; reconnect.
    ServiceRestart = 1012,
    /// A dependency (storage) failed; reconnect after a pause.
    TryAgainLater = 1013,
    /// The same (user, device) connected again; this connection was replaced.
    Replaced = 4001,
    /// The client did not read fast enough; its messages stay pending.
    SlowConsumer = 4002,
    /// Deliveries stayed unacknowledged through every resend.
    AckTimeout = 4003,
    /// An admin disconnected the user or device, or revoked their tokens;
    /// the close reason says why. Reconnecting may work unless revoked.
    LoggedOut = 4004,
}

impl CloseCode {
    /// Every close code, in numeric order.
    pub const ALL: [CloseCode; 12] = [
        CloseCode::Normal,
        CloseCode::GoingAway,
        CloseCode::ProtocolError,
        CloseCode::PolicyViolation,
        CloseCode::TooLarge,
        CloseCode::InternalError,
        CloseCode::ServiceRestart,
        CloseCode::TryAgainLater,
        CloseCode::Replaced,
        CloseCode::SlowConsumer,
        CloseCode::AckTimeout,
        CloseCode::LoggedOut,
    ];

    pub fn code(self) -> u16 {
        self as u16
    }

    /// Its name in clients' constants (`POLICY_VIOLATION`).
    pub fn name(self) -> &'static str {
        match self {
            CloseCode::Normal => "NORMAL",
            CloseCode::GoingAway => "GOING_AWAY",
            CloseCode::ProtocolError => "PROTOCOL_ERROR",
            CloseCode::PolicyViolation => "POLICY_VIOLATION",
            CloseCode::TooLarge => "TOO_LARGE",
            CloseCode::InternalError => "INTERNAL_ERROR",
            CloseCode::ServiceRestart => "SERVICE_RESTART",
            CloseCode::TryAgainLater => "TRY_AGAIN_LATER",
            CloseCode::Replaced => "REPLACED",
            CloseCode::SlowConsumer => "SLOW_CONSUMER",
            CloseCode::AckTimeout => "ACK_TIMEOUT",
            CloseCode::LoggedOut => "LOGGED_OUT",
        }
    }
}

/// A failure a client is told about: its code and a sentence for the
/// client. Every layer that answers clients (the gateway, dispatch,
/// customer service, the HTTP API) returns it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ClientError {
    pub code: ErrorCode,
    pub message: String,
}

impl ClientError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    pub fn to_wire(&self) -> crate::pb::Error {
        self.code.with_message(self.message.clone())
    }
}

/// A setting that cannot be used: its key as written in the config file
/// (`limits.max_frame_bytes`) and why. Each crate validates its own
/// settings beside their type and answers with this.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct InvalidSetting {
    pub key: String,
    pub reason: String,
}

impl InvalidSetting {
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { key: key.into(), reason: reason.into() }
    }
}
