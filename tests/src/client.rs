//! A real WebSocket client speaking the dongdong protocol, in either
//! encoding: the protocol client (`dongdong-client`), with what tests want
//! on top: waits that panic with what was seen, replies matched to their
//! requests while pushes are kept for later.

use dongdong_client::{Connection, Incoming, Options, Target, WsError, WsMessage};
use im_core::pb::{self, Frame, frame::Body};
use im_core::{Encoding, ErrorCode};
use std::collections::VecDeque;
use std::time::Duration;

/// How long a test waits for a frame it expects.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct Client {
    ws: Connection,
    pub encoding: Encoding,
    /// Frames read while waiting for something else (pushes during a request).
    buffered: VecDeque<Frame>,
    pub auth_ok: Option<pb::AuthOk>,
}

/// What ended a connection, as seen by the client.
#[derive(Debug, Clone, PartialEq)]
pub enum Closed {
    Frame(u16, String),
    NoFrame,
}

impl Client {
    pub async fn connect(url: &str, encoding: Encoding) -> Self {
        Self::try_connect(url, encoding).await.expect("WebSocket connect")
    }

    /// Connects, or `None` when the server refuses or closes the connection.
    pub async fn try_connect(url: &str, encoding: Encoding) -> Option<Self> {
        let target = Target::resolve(url, None).await.ok()?;
        let ws = Connection::connect(&target, &Options { encoding, ..Options::default() }).await.ok()?;
        Some(Self { ws, encoding, buffered: VecDeque::new(), auth_ok: None })
    }

    /// Connects and authenticates; panics if the server refuses.
    pub async fn login(url: &str, token: &str, device: &str) -> Self {
        let mut c = Self::connect(url, Encoding::Protobuf).await;
        c.auth(token, device).await.expect("auth");
        c
    }

    pub fn next_req_id(&mut self) -> u64 {
        self.ws.next_req_id()
    }

    pub async fn send_frame(&mut self, frame: &Frame) {
        self.ws.send(frame).await.expect("send frame");
    }

    /// Sends frames in one write (pipelined, as a client that has several
    /// ready does).
    pub async fn send_frames(&mut self, frames: &[Frame]) {
        self.ws.send_all(frames).await.expect("send frames");
    }

    pub async fn send_raw(&mut self, msg: WsMessage) -> Result<(), WsError> {
        self.ws.send_raw(msg).await
    }

    /// The next frame from the server, or None when the connection ended.
    pub async fn recv(&mut self, wait: Duration) -> Option<Result<Frame, Closed>> {
        if let Some(f) = self.buffered.pop_front() {
            return Some(Ok(f));
        }
        self.recv_socket(wait).await
    }

    async fn recv_socket(&mut self, wait: Duration) -> Option<Result<Frame, Closed>> {
        match tokio::time::timeout(wait, self.ws.recv()).await.ok()? {
            Incoming::Frame(f) => Some(Ok(f)),
            Incoming::Undecodable(e) => panic!("the server sent a message that is not a frame: {e}"),
            Incoming::Closed(Some((code, reason))) => Some(Err(Closed::Frame(code, reason))),
            Incoming::Closed(None) => Some(Err(Closed::NoFrame)),
        }
    }

    /// The next frame; panics on timeout or close.
    pub async fn next_frame(&mut self) -> Frame {
        match self.recv(WAIT).await {
            Some(Ok(f)) => f,
            Some(Err(c)) => panic!("connection closed while waiting for a frame: {c:?}"),
            None => panic!("no frame within {WAIT:?}"),
        }
    }

    /// Waits for the reply to `req_id`, keeping other frames for later.
    pub async fn reply(&mut self, req_id: u64) -> Frame {
        let is_reply = |f: &Frame| f.req_id == req_id && !matches!(f.body, Some(Body::Deliver(_)));
        if let Some(i) = self.buffered.iter().position(is_reply) {
            return self.buffered.remove(i).expect("position is in range");
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv_socket(left).await {
                Some(Ok(f)) if is_reply(&f) => return f,
                Some(Ok(f)) => self.buffered.push_back(f),
                Some(Err(c)) => panic!("connection closed while waiting for reply {req_id}: {c:?}"),
                None => panic!("no reply to {req_id} within {WAIT:?}"),
            }
        }
    }

    pub async fn request(&mut self, body: Body) -> Frame {
        let req_id = self.next_req_id();
        self.send_frame(&Frame { req_id, body: Some(body) }).await;
        self.reply(req_id).await
    }

    pub async fn auth(&mut self, token: &str, device: &str) -> Result<pb::AuthOk, pb::Error> {
        self.auth_resuming(token, device, "").await
    }

    /// Signs in asking to resume the session `resume_token` named.
    pub async fn auth_resuming(
        &mut self,
        token: &str,
        device: &str,
        resume_token: &str,
    ) -> Result<pb::AuthOk, pb::Error> {
        match self.ws.auth_resuming(token, device, resume_token).await {
            Ok(ok) => {
                self.auth_ok = Some(ok.clone());
                Ok(ok)
            }
            Err(dongdong_client::AuthFailure::Refused(e)) => Err(e),
            Err(other) => panic!("no answer to Auth: {other}"),
        }
    }

    pub async fn send(
        &mut self,
        to: &str,
        client_msg_id: &str,
        content: pb::Content,
    ) -> Result<pb::SendAck, pb::Error> {
        let send = pb::Send { client_msg_id: client_msg_id.into(), to_user: to.into(), content: Some(content) };
        match self.request(Body::Send(send)).await.body {
            Some(Body::SendAck(a)) => Ok(a),
            Some(Body::Error(e)) => Err(e),
            other => panic!("unexpected reply to Send: {other:?}"),
        }
    }

    pub async fn send_text(&mut self, to: &str, client_msg_id: &str, text: &str) -> Result<pb::SendAck, pb::Error> {
        self.send(to, client_msg_id, text_content(text)).await
    }

    /// Sends without waiting for the ack; returns the req_id.
    pub async fn send_text_nowait(&mut self, to: &str, client_msg_id: &str, text: &str) -> u64 {
        let req_id = self.next_req_id();
        let send =
            pb::Send { client_msg_id: client_msg_id.into(), to_user: to.into(), content: Some(text_content(text)) };
        self.send_frame(&Frame { req_id, body: Some(Body::Send(send)) }).await;
        req_id
    }

    /// Sends and waits for the reply; None when the connection ended first
    /// (or no reply came within 10 s).
    pub async fn try_send_text(
        &mut self,
        to: &str,
        client_msg_id: &str,
        text: &str,
    ) -> Option<Result<pb::SendAck, pb::Error>> {
        let req_id = self.next_req_id();
        let send =
            pb::Send { client_msg_id: client_msg_id.into(), to_user: to.into(), content: Some(text_content(text)) };
        self.ws.send(&Frame { req_id, body: Some(Body::Send(send)) }).await.ok()?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv(left).await? {
                Ok(Frame { req_id: r, body: Some(Body::SendAck(a)) }) if r == req_id => return Some(Ok(a)),
                Ok(Frame { req_id: r, body: Some(Body::Error(e)) }) if r == req_id => return Some(Err(e)),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// Acks without panicking when the connection is gone.
    pub async fn try_ack(&mut self, msg_ids: Vec<String>) -> bool {
        self.ws.request(Body::Ack(pb::Ack { msg_ids, event_ids: vec![] })).await.is_ok()
    }

    pub async fn ack(&mut self, msg_ids: Vec<String>) {
        let req_id = self.next_req_id();
        self.send_frame(&Frame { req_id, body: Some(Body::Ack(pb::Ack { msg_ids, event_ids: vec![] })) }).await;
    }

    pub async fn sync(&mut self, req: pb::SyncRequest) -> Result<pb::HistoryPage, pb::Error> {
        match self.request(Body::SyncRequest(req)).await.body {
            Some(Body::HistoryPage(p)) => Ok(p),
            Some(Body::Error(e)) => Err(e),
            other => panic!("unexpected reply to SyncRequest: {other:?}"),
        }
    }

    /// The next Deliver; panics if another frame comes first.
    pub async fn next_deliver(&mut self) -> pb::Deliver {
        match self.next_frame().await.body {
            Some(Body::Deliver(d)) => d,
            other => panic!("expected Deliver, got {other:?}"),
        }
    }

    /// Reads `n` deliveries and acks each.
    pub async fn receive_and_ack(&mut self, n: usize) -> Vec<pb::Deliver> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let d = self.next_deliver().await;
            self.ack(vec![d.message.as_ref().unwrap().msg_id.clone()]).await;
            out.push(d);
        }
        out
    }

    /// The next frame whose body `pick` accepts (searching frames kept
    /// earlier first); other frames are kept for later. Panics on timeout.
    pub async fn next_matching<T>(&mut self, what: &str, pick: impl Fn(&Body) -> Option<T>) -> T {
        if let Some((i, v)) =
            self.buffered.iter().enumerate().find_map(|(i, f)| f.body.as_ref().and_then(&pick).map(|v| (i, v)))
        {
            self.buffered.remove(i);
            return v;
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv_socket(left).await {
                Some(Ok(f)) => match f.body.as_ref().and_then(&pick) {
                    Some(v) => return v,
                    None => self.buffered.push_back(f),
                },
                Some(Err(c)) => panic!("connection closed while waiting for {what}: {c:?}"),
                None => panic!("no {what} within {WAIT:?}; kept: {:?}", self.buffered),
            }
        }
    }

    /// Reads until the server closes; returns the close (frames before it are skipped).
    pub async fn closed(&mut self) -> Closed {
        self.buffered.clear();
        loop {
            match self.recv_socket(WAIT).await {
                Some(Ok(_)) => continue,
                Some(Err(c)) => return c,
                None => panic!("connection still open after {WAIT:?}"),
            }
        }
    }

    /// Reads frames until an Error arrives; returns it.
    pub async fn next_error(&mut self) -> pb::Error {
        loop {
            if let Some(Body::Error(e)) = self.next_frame().await.body {
                return e;
            }
        }
    }

    pub fn buffered_len(&self) -> usize {
        self.buffered.len()
    }

    pub async fn close(self) {
        self.ws.close().await;
    }
}

pub fn text_content(text: &str) -> pb::Content {
    pb::Content { kind: Some(pb::content::Kind::Text(text.into())) }
}

pub fn code(e: &pb::Error) -> ErrorCode {
    ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified)
}

/// The message of a Deliver.
pub fn msg(d: &pb::Deliver) -> &pb::Message {
    d.message.as_ref().expect("Deliver carries a message")
}

/// The text of a text message ("" for other kinds).
pub fn text_of(m: &pb::Message) -> &str {
    match m.content.as_ref().and_then(|c| c.kind.as_ref()) {
        Some(pb::content::Kind::Text(t)) => t,
        _ => "",
    }
}
