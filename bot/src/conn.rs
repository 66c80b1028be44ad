//! One bot connection: a real WebSocket client speaking the public protocol.
//!
//! Writes go through a bounded queue to a writer task that batches whatever
//! is queued into one flush; reads stay with the scenario task that owns the
//! connection. Small tungstenite buffers keep thousands of idle bots cheap.

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use im_core::Encoding;
use im_core::pb::{self, Frame, frame::Body};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::net::TcpSocket;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

type Ws = WebSocketStream<super::stream::Stream>;

/// Frames a connection may have queued for its writer.
const WRITE_QUEUE: usize = 256;
/// Longest wait for the handshake and then for AuthOk.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// A server endpoint, resolved once.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub addr: SocketAddr,
    /// wss://: the name to check the certificate against, and the roots.
    pub tls: Option<(rustls::pki_types::ServerName<'static>, std::sync::Arc<rustls::ClientConfig>)>,
}

impl Target {
    /// Resolves a `ws://host:port/path` or `wss://` URL (trusting `ca`, or
    /// the public roots).
    pub async fn resolve(url: &str, ca: Option<&std::path::Path>) -> anyhow::Result<Self> {
        let uri: tokio_tungstenite::tungstenite::http::Uri =
            url.parse().map_err(|e| anyhow::anyhow!("bad server URL {url:?}: {e}"))?;
        let secure = match uri.scheme_str() {
            Some("ws") => false,
            Some("wss") => true,
            _ => anyhow::bail!("{url}: expected a ws:// or wss:// URL such as ws://127.0.0.1:7800/ws"),
        };
        let host = uri.host().ok_or_else(|| anyhow::anyhow!("{url}: no host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let tls = if secure {
            let name =
                rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
            Some((name, super::stream::client_config(ca)?))
        } else {
            None
        };
        let addr = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| anyhow::anyhow!("cannot resolve {host}: {e}"))?
            .next()
            .ok_or_else(|| anyhow::anyhow!("{host} resolves to no address"))?;
        Ok(Self { url: url.to_string(), addr, tls })
    }
}

/// Why a connection could not be opened; `key` groups them in the report.
#[derive(Debug)]
pub struct ConnectError {
    pub key: String,
    pub detail: String,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.detail)
    }
}

fn fail(key: &str, detail: impl std::fmt::Display) -> ConnectError {
    ConnectError { key: key.to_string(), detail: detail.to_string() }
}

/// What the reading side of a connection sees. Not boxed: it is moved
/// once per frame, and a box would cost an allocation per frame.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Incoming {
    Frame(Frame),
    /// The connection ended: the close code, if the server sent one.
    Closed(Option<u16>),
}

/// An authenticated connection.
pub struct Conn {
    out: mpsc::Sender<Frame>,
    incoming: SplitStream<Ws>,
    next_req: u64,
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
        let started = Instant::now();
        let socket = if target.addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }
            .map_err(|e| fail("connect: socket", e))?;
        if let Some(ip) = source {
            socket.bind(SocketAddr::new(ip, 0)).map_err(|e| fail("connect: bind source address", e))?;
        }
        let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(target.addr)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return Err(fail(&format!("connect: {}", e.kind()), e)),
            Err(_) => return Err(fail("connect: timeout", "no TCP connection within 15 s")),
        };
        let _ = tcp.set_nodelay(true);
        let stream = match &target.tls {
            None => super::stream::Stream::Plain(tcp),
            Some((name, config)) => {
                let connector = tokio_rustls::TlsConnector::from(config.clone());
                match tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name.clone(), tcp)).await {
                    Ok(Ok(tls)) => super::stream::Stream::Tls(Box::new(tls)),
                    Ok(Err(e)) => return Err(fail("tls", e)),
                    Err(_) => return Err(fail("tls: timeout", "no TLS handshake within 15 s")),
                }
            }
        };
        let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(4096);
        let handshake = tokio_tungstenite::client_async_with_config(target.url.as_str(), stream, Some(config));
        let ws = match tokio::time::timeout(CONNECT_TIMEOUT, handshake).await {
            Ok(Ok((ws, _))) => ws,
            Ok(Err(e)) => return Err(fail("handshake", e)),
            Err(_) => return Err(fail("handshake: timeout", "no WebSocket handshake within 15 s")),
        };
        let (sink, incoming) = ws.split();
        let (out, rx) = mpsc::channel(WRITE_QUEUE);
        tokio::spawn(writer(sink, rx, encoding));
        let mut conn =
            Self { out, incoming, next_req: 0, auth_ok: pb::AuthOk::default(), connect_time: Duration::ZERO };
        let auth = Body::Auth(pb::Auth { token: token.to_string(), device_id: device.to_string() });
        let req = conn.send(auth).await;
        let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, conn.recv()).await {
                Ok(Incoming::Frame(Frame { req_id, body: Some(Body::AuthOk(ok)) })) if req_id == req => {
                    conn.auth_ok = ok;
                    conn.connect_time = started.elapsed();
                    return Ok(conn);
                }
                Ok(Incoming::Frame(Frame { body: Some(Body::Error(e)), .. })) => {
                    return Err(fail(&format!("auth: {}", error_name(e.code)), e.message));
                }
                Ok(Incoming::Frame(_)) => continue,
                Ok(Incoming::Closed(code)) => {
                    return Err(fail("auth: closed", format!("connection closed before AuthOk (code {code:?})")));
                }
                Err(_) => return Err(fail("auth: timeout", "no AuthOk within 15 s")),
            }
        }
    }

    /// Queues a request; returns its req_id.
    pub async fn send(&mut self, body: Body) -> u64 {
        self.next_req += 1;
        let req_id = self.next_req;
        // A closed writer means a closed connection; the reader reports it.
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

    /// The next frame from the server.
    pub async fn recv(&mut self) -> Incoming {
        loop {
            match self.incoming.next().await {
                Some(Ok(msg)) => {
                    if let Some(incoming) = self.decode(msg) {
                        return incoming;
                    }
                }
                Some(Err(_)) | None => return Incoming::Closed(None),
            }
        }
    }

    /// A frame that has already arrived, without waiting.
    pub fn try_recv(&mut self) -> Option<Incoming> {
        loop {
            match self.incoming.next().now_or_never()? {
                Some(Ok(msg)) => {
                    if let Some(incoming) = self.decode(msg) {
                        return Some(incoming);
                    }
                }
                Some(Err(_)) | None => return Some(Incoming::Closed(None)),
            }
        }
    }

    fn decode(&self, msg: WsMessage) -> Option<Incoming> {
        let frame = match msg {
            WsMessage::Binary(b) => im_core::decode_frame(Encoding::Protobuf, &b),
            WsMessage::Text(t) => im_core::decode_frame(Encoding::Json, t.as_bytes()),
            WsMessage::Close(close) => return Some(Incoming::Closed(close.map(|c| c.code.into()))),
            _ => return None,
        };
        match frame {
            Ok(f) => Some(Incoming::Frame(f)),
            // A server frame we cannot decode is a protocol violation: report
            // it as an error frame so it is counted, and go on.
            Err(e) => Some(Incoming::Frame(Frame {
                req_id: 0,
                body: Some(Body::Error(pb::ErrorCode::BadFrame.with_message(format!("bot could not decode: {e}")))),
            })),
        }
    }
}

/// Encodes and writes queued frames, one flush per batch; closes the
/// WebSocket when every sender is gone.
async fn writer(mut sink: SplitSink<Ws, WsMessage>, mut rx: mpsc::Receiver<Frame>, encoding: Encoding) {
    let message = |f: &Frame| {
        let bytes = im_core::encode_frame(encoding, f);
        match encoding {
            Encoding::Protobuf => WsMessage::binary(bytes),
            Encoding::Json => WsMessage::text(String::from_utf8(bytes).unwrap_or_default()),
        }
    };
    while let Some(frame) = rx.recv().await {
        if sink.feed(message(&frame)).await.is_err() {
            return;
        }
        while let Ok(frame) = rx.try_recv() {
            if sink.feed(message(&frame)).await.is_err() {
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
