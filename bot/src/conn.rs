//! One bot connection: the protocol client (`dongdong-client`), split so
//! that sends are pipelined through its writer task while the scenario task
//! that owns the connection reads.

pub use dongdong_client::{ConnectError, Target, error_name};
use dongdong_client::{Options, Receiver, Sender};
use im_core::Encoding;
use im_core::pb::{self, Frame, frame::Body};
use std::net::IpAddr;
use std::time::Duration;

/// What the reading side of a connection sees.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Incoming {
    Frame(Frame),
    /// The connection ended: the close code, if the server sent one.
    Closed(Option<u16>),
}

/// An authenticated connection.
pub struct Conn {
    out: Sender,
    incoming: Receiver,
    pub auth_ok: pb::AuthOk,
    /// TCP connect + WebSocket handshake + Auth round trip.
    pub connect_time: Duration,
}

impl Conn {
    /// Connects to `target` (from `source` when given) and authenticates.
    pub async fn open(
        target: &Target,
        source: Option<IpAddr>,
        token: &str,
        device: &str,
        encoding: Encoding,
    ) -> Result<Self, ConnectError> {
        let options = Options { encoding, source, ..Options::default() };
        let (conn, auth_ok) = dongdong_client::Connection::open(target, &options, token, device).await?;
        let connect_time = conn.connect_time;
        let (out, incoming) = conn.split();
        Ok(Self { out, incoming, auth_ok, connect_time })
    }

    /// Queues a request; returns its req_id.
    pub async fn send(&mut self, body: Body) -> u64 {
        self.out.send(body).await
    }

    /// Queues a text message for `to`; returns its req_id.
    pub async fn send_text(&mut self, to: &str, client_msg_id: String, text: String) -> u64 {
        self.out.send_text(to, client_msg_id, text).await
    }

    /// The next frame from the server.
    pub async fn recv(&mut self) -> Incoming {
        seen(self.incoming.recv().await)
    }

    /// A frame that has already arrived, without waiting.
    pub fn try_recv(&mut self) -> Option<Incoming> {
        self.incoming.try_recv().map(seen)
    }
}

/// A server frame we cannot decode is a protocol violation: it is reported
/// as an error frame, so that it is counted, and the scenario goes on.
fn seen(incoming: dongdong_client::Incoming) -> Incoming {
    match incoming {
        dongdong_client::Incoming::Frame(f) => Incoming::Frame(f),
        dongdong_client::Incoming::Undecodable(e) => Incoming::Frame(Frame {
            req_id: 0,
            body: Some(Body::Error(pb::ErrorCode::BadFrame.with_message(format!("bot could not decode: {e}")))),
        }),
        dongdong_client::Incoming::Closed(close) => Incoming::Closed(close.map(|(code, _)| code)),
    }
}
