//! A Rust client of the dongdong protocol (docs/protocol.md): a WebSocket
//! to `/ws` over TCP or TLS, one `Frame` per message in the encoding chosen
//! at connect (protobuf binary or canonical JSON text), the `Auth` exchange,
//! and typed frames both ways.
//!
//! [`Connection`] is the whole socket, for callers that send and read in
//! turn (the integration tests); [`Connection::split`] gives a [`Sender`]
//! whose frames a writer task batches into one flush, and a [`Receiver`],
//! for callers that pipeline (the load bot). Small WebSocket buffers keep
//! thousands of idle clients cheap.
//!
//! Delivery guarantees that are the client's half (resend with the same
//! `client_msg_id`, dedupe by `msg_id`, acks) are the caller's: this crate
//! carries frames, it does not decide.

mod stream;

pub use stream::{Stream, client_config};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use im_core::Encoding;
use im_core::pb::{self, Frame, frame::Body};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpSocket;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
pub use tokio_tungstenite::tungstenite::Error as WsError;
pub use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

type Ws = WebSocketStream<Stream>;

/// Frames a split connection may have queued for its writer.
const WRITE_QUEUE: usize = 256;

/// A server endpoint, resolved once.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub addr: SocketAddr,
    /// wss://: the name to check the certificate against, and the roots.
    pub tls: Option<(rustls::pki_types::ServerName<'static>, Arc<rustls::ClientConfig>)>,
}

impl Target {
    /// Resolves a `ws://host:port/path` or `wss://` URL (trusting the PEM
    /// certificates in `ca`, or the public roots).
    pub async fn resolve(url: &str, ca: Option<&std::path::Path>) -> Result<Self, String> {
        let uri: tokio_tungstenite::tungstenite::http::Uri =
            url.parse().map_err(|e| format!("bad server URL {url:?}: {e}"))?;
        let secure = match uri.scheme_str() {
            Some("ws") => false,
            Some("wss") => true,
            _ => return Err(format!("{url}: expected a ws:// or wss:// URL such as ws://127.0.0.1:7800/ws")),
        };
        let host = uri.host().ok_or_else(|| format!("{url}: no host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let tls = if secure {
            let name = rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| format!("{url}: {e}"))?;
            Some((name, client_config(ca)?))
        } else {
            None
        };
        let addr = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .next()
            .ok_or_else(|| format!("{host} resolves to no address"))?;
        Ok(Self { url: url.to_string(), addr, tls })
    }
}

/// How to connect.
#[derive(Debug, Clone)]
pub struct Options {
    /// The encoding of every frame this client sends (the server answers in
    /// the encoding of `Auth`).
    pub encoding: Encoding,
    /// Bind to this local address first (many clients from several
    /// addresses).
    pub source: Option<IpAddr>,
    /// Longest wait for the TCP connection, the TLS and WebSocket
    /// handshakes, and `AuthOk`, each.
    pub timeout: Duration,
    /// The WebSocket read and write buffers.
    pub buffer_bytes: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self { encoding: Encoding::Protobuf, source: None, timeout: Duration::from_secs(15), buffer_bytes: 4096 }
    }
}

/// Why a connection could not be opened; `key` names the step and the kind
/// of failure (for counting), `detail` says more.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{key}: {detail}")]
pub struct ConnectError {
    pub key: String,
    pub detail: String,
}

fn fail(key: &str, detail: impl std::fmt::Display) -> ConnectError {
    ConnectError { key: key.to_string(), detail: detail.to_string() }
}

/// What arrives. Not boxed: it is moved once per frame, and a box would
/// cost an allocation per frame.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Incoming {
    Frame(Frame),
    /// A message that is not a `Frame` in either encoding: a protocol
    /// violation by the server.
    Undecodable(String),
    /// The connection ended: the close code and reason, if the server sent
    /// a Close frame.
    Closed(Option<(u16, String)>),
}

/// Why `Auth` did not succeed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AuthFailure {
    #[error("refused: {} {}", error_name(.0.code), .0.message)]
    Refused(pb::Error),
    #[error("connection closed before AuthOk (close {0:?})")]
    Closed(Option<(u16, String)>),
    #[error("no AuthOk within the timeout")]
    Timeout,
}

/// An open WebSocket to a dongdong server.
pub struct Connection {
    ws: Ws,
    encoding: Encoding,
    next_req: u64,
    timeout: Duration,
    /// TCP connect + handshakes (+ the Auth round trip, once authenticated).
    pub connect_time: Duration,
    started: Instant,
}

impl Connection {
    /// Opens a connection (not yet authenticated).
    pub async fn connect(target: &Target, options: &Options) -> Result<Self, ConnectError> {
        let started = Instant::now();
        let within = options.timeout;
        let socket = if target.addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }
            .map_err(|e| fail("connect: socket", e))?;
        if let Some(ip) = options.source {
            socket.bind(SocketAddr::new(ip, 0)).map_err(|e| fail("connect: bind source address", e))?;
        }
        let tcp = match tokio::time::timeout(within, socket.connect(target.addr)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return Err(fail(&format!("connect: {}", e.kind()), e)),
            Err(_) => return Err(fail("connect: timeout", format!("no TCP connection within {within:?}"))),
        };
        let _ = tcp.set_nodelay(true);
        let stream = match &target.tls {
            None => Stream::Plain(tcp),
            Some((name, config)) => {
                let connector = tokio_rustls::TlsConnector::from(config.clone());
                match tokio::time::timeout(within, connector.connect(name.clone(), tcp)).await {
                    Ok(Ok(tls)) => Stream::Tls(Box::new(tls)),
                    Ok(Err(e)) => return Err(fail("tls", e)),
                    Err(_) => return Err(fail("tls: timeout", format!("no TLS handshake within {within:?}"))),
                }
            }
        };
        let config =
            WebSocketConfig::default().read_buffer_size(options.buffer_bytes).write_buffer_size(options.buffer_bytes);
        let handshake = tokio_tungstenite::client_async_with_config(target.url.as_str(), stream, Some(config));
        let ws = match tokio::time::timeout(within, handshake).await {
            Ok(Ok((ws, _))) => ws,
            Ok(Err(e)) => return Err(fail("handshake", e)),
            Err(_) => return Err(fail("handshake: timeout", format!("no WebSocket handshake within {within:?}"))),
        };
        Ok(Self {
            ws,
            encoding: options.encoding,
            next_req: 0,
            timeout: within,
            connect_time: started.elapsed(),
            started,
        })
    }

    /// Connects and authenticates.
    pub async fn open(
        target: &Target,
        options: &Options,
        token: &str,
        device: &str,
    ) -> Result<(Self, pb::AuthOk), ConnectError> {
        let mut conn = Self::connect(target, options).await?;
        match conn.auth(token, device).await {
            Ok(ok) => Ok((conn, ok)),
            Err(AuthFailure::Refused(e)) => Err(fail(&format!("auth: {}", error_name(e.code)), e.message)),
            Err(e @ AuthFailure::Closed(_)) => Err(fail("auth: closed", e)),
            Err(e @ AuthFailure::Timeout) => Err(fail("auth: timeout", e)),
        }
    }

    /// Sends `Auth` and waits for its answer.
    pub async fn auth(&mut self, token: &str, device: &str) -> Result<pb::AuthOk, AuthFailure> {
        self.auth_resuming(token, device, "").await
    }

    /// Sends `Auth` asking to resume the session the `AuthOk` of an
    /// earlier connection named (`resume_token`; empty: a fresh session)
    /// and waits for its answer; `AuthOk.resumed` says whether it did.
    pub async fn auth_resuming(
        &mut self,
        token: &str,
        device: &str,
        resume_token: &str,
    ) -> Result<pb::AuthOk, AuthFailure> {
        let req = self.next_req_id();
        let auth = Body::Auth(pb::Auth {
            token: token.to_string(),
            device_id: device.to_string(),
            resume_token: resume_token.to_string(),
        });
        if let Err(e) = self.send(&Frame { req_id: req, body: Some(auth) }).await {
            return Err(AuthFailure::Closed(Some((0, e.to_string()))));
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.recv()).await {
                Ok(Incoming::Frame(Frame { req_id, body: Some(Body::AuthOk(ok)) })) if req_id == req => {
                    self.connect_time = self.started.elapsed();
                    return Ok(ok);
                }
                Ok(Incoming::Frame(Frame { body: Some(Body::Error(e)), .. })) => return Err(AuthFailure::Refused(e)),
                Ok(Incoming::Frame(_) | Incoming::Undecodable(_)) => continue,
                Ok(Incoming::Closed(close)) => return Err(AuthFailure::Closed(close)),
                Err(_) => return Err(AuthFailure::Timeout),
            }
        }
    }

    /// The next request id (ids start at 1 and increase).
    pub fn next_req_id(&mut self) -> u64 {
        self.next_req += 1;
        self.next_req
    }

    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// Writes a frame and flushes.
    pub async fn send(&mut self, frame: &Frame) -> Result<(), WsError> {
        self.ws.send(message(self.encoding, frame)).await
    }

    /// Sends `body` as a request; returns its req_id.
    pub async fn request(&mut self, body: Body) -> Result<u64, WsError> {
        let req_id = self.next_req_id();
        self.send(&Frame { req_id, body: Some(body) }).await?;
        Ok(req_id)
    }

    /// Writes frames in one flush (pipelined, as a client that has several
    /// ready does).
    pub async fn send_all(&mut self, frames: &[Frame]) -> Result<(), WsError> {
        for frame in frames {
            self.ws.feed(message(self.encoding, frame)).await?;
        }
        self.ws.flush().await
    }

    /// Writes any WebSocket message (to test what the server does with one
    /// that is not a frame).
    pub async fn send_raw(&mut self, message: WsMessage) -> Result<(), WsError> {
        self.ws.send(message).await
    }

    /// The next frame from the server.
    pub async fn recv(&mut self) -> Incoming {
        loop {
            let item = self.ws.next().await;
            if let Some(incoming) = decode(item) {
                return incoming;
            }
        }
    }

    /// A frame that has already arrived, without waiting.
    pub fn try_recv(&mut self) -> Option<Incoming> {
        loop {
            let item = self.ws.next().now_or_never()?;
            if let Some(incoming) = decode(item) {
                return Some(incoming);
            }
        }
    }

    /// Closes the WebSocket (a Close frame, then the socket).
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.ws.close(None)).await;
    }

    /// Splits into a [`Sender`] (a writer task batches what is queued into
    /// one flush) and a [`Receiver`]. The writer closes the WebSocket when
    /// the sender is dropped.
    pub fn split(self) -> (Sender, Receiver) {
        let (sink, incoming) = self.ws.split();
        let (out, rx) = mpsc::channel(WRITE_QUEUE);
        tokio::spawn(writer(sink, rx, self.encoding));
        (Sender { out, next_req: self.next_req }, Receiver { incoming })
    }
}

/// The sending half of a split connection.
pub struct Sender {
    out: mpsc::Sender<Frame>,
    next_req: u64,
}

impl Sender {
    /// Queues a request; returns its req_id. Waits only while the writer's
    /// queue is full; a closed connection shows on the receiving side.
    pub async fn send(&mut self, body: Body) -> u64 {
        self.next_req += 1;
        let req_id = self.next_req;
        let _ = self.out.send(Frame { req_id, body: Some(body) }).await;
        req_id
    }

    /// Queues a text message for `to`; returns its req_id.
    pub async fn send_text(&mut self, to: &str, client_msg_id: String, text: String) -> u64 {
        self.send(Body::Send(pb::Send {
            client_msg_id,
            to_user: to.to_string(),
            content: Some(pb::Content { kind: Some(pb::content::Kind::Text(text)) }),
        }))
        .await
    }
}

/// The receiving half of a split connection.
pub struct Receiver {
    incoming: SplitStream<Ws>,
}

impl Receiver {
    /// The next frame from the server.
    pub async fn recv(&mut self) -> Incoming {
        loop {
            let item = self.incoming.next().await;
            if let Some(incoming) = decode(item) {
                return incoming;
            }
        }
    }

    /// A frame that has already arrived, without waiting.
    pub fn try_recv(&mut self) -> Option<Incoming> {
        loop {
            let item = self.incoming.next().now_or_never()?;
            if let Some(incoming) = decode(item) {
                return Some(incoming);
            }
        }
    }
}

fn message(encoding: Encoding, frame: &Frame) -> WsMessage {
    let bytes = im_core::encode_frame(encoding, frame);
    match encoding {
        Encoding::Protobuf => WsMessage::binary(bytes),
        Encoding::Json => WsMessage::text(String::from_utf8(bytes).unwrap_or_default()),
    }
}

/// What a WebSocket message means; `None` for control messages (pings,
/// pongs), which tungstenite answers by itself.
fn decode(item: Option<Result<WsMessage, WsError>>) -> Option<Incoming> {
    let decoded = match item {
        Some(Ok(WsMessage::Binary(b))) => im_core::decode_frame(Encoding::Protobuf, &b),
        Some(Ok(WsMessage::Text(t))) => im_core::decode_frame(Encoding::Json, t.as_bytes()),
        Some(Ok(WsMessage::Close(close))) => {
            return Some(Incoming::Closed(close.map(|c| (c.code.into(), c.reason.to_string()))));
        }
        Some(Ok(_)) => return None,
        Some(Err(_)) | None => return Some(Incoming::Closed(None)),
    };
    Some(match decoded {
        Ok(frame) => Incoming::Frame(frame),
        Err(e) => Incoming::Undecodable(e.to_string()),
    })
}

/// Encodes and writes queued frames, one flush per batch; closes the
/// WebSocket when every sender is gone.
async fn writer(mut sink: SplitSink<Ws, WsMessage>, mut rx: mpsc::Receiver<Frame>, encoding: Encoding) {
    while let Some(frame) = rx.recv().await {
        if sink.feed(message(encoding, &frame)).await.is_err() {
            return;
        }
        while let Ok(frame) = rx.try_recv() {
            if sink.feed(message(encoding, &frame)).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), sink.close()).await;
}

/// The wire name of an error code (`RATE_LIMITED`), for reports.
pub fn error_name(code: i32) -> String {
    pb::ErrorCode::try_from(code).map(|c| c.as_str_name().to_string()).unwrap_or_else(|_| format!("CODE_{code}"))
}
