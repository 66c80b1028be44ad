//! One WebSocket connection, from the first frame to the close.
//!
//! A connection is two tasks: this one reads frames, runs requests, receives
//! pushed messages from the router and decides what to write; the writer task
//! drains a bounded queue into the socket. Nothing here waits on a full queue:
//! a client that does not read what it is sent is a slow consumer and is
//! closed, and whatever it had not acknowledged stays pending for its next
//! connection.
//!
//! Delivery order per device: on connect the pending set is replayed first,
//! paged and windowed by `max_inflight`; pushes that arrive meanwhile are
//! dropped (they are pending too) and trigger another pass, so live pushes
//! start only after everything pending has gone out.
//!
//! The handler is written against any `Sink`/`Stream` of tungstenite
//! messages, so it runs over TCP, TLS or an in-memory pair alike.

use crate::Gateway;
use crate::auth::AuthError;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use im_core::pb::{self, Frame, Message, frame::Body};
use im_core::{CloseCode, Encoding, ErrorCode};
use session_router::{Kick, Push, Registration};
use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use storage::{DeviceKey, PendingCursor};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};

/// What the writer task is asked to write.
enum Out {
    Ws(WsMessage),
    Close(CloseCode, Cow<'static, str>),
}

/// Why the read loop ended.
enum Exit {
    /// Close with this code and reason.
    Close(CloseCode, Cow<'static, str>),
    /// The peer closed or the socket failed; nothing more can be written.
    Gone,
}

fn close(code: CloseCode, reason: impl Into<Cow<'static, str>>) -> Exit {
    Exit::Close(code, reason.into())
}

/// Most pending messages fetched per replay page.
const REPLAY_PAGE: usize = 256;
/// Failed reads of a replay page retried before the connection is closed
/// (1013), each after a longer pause.
const REPLAY_RETRIES: u32 = 4;
const REPLAY_RETRY_BACKOFF: Duration = Duration::from_millis(250);
/// How long the writer may take to flush the final frames after the read
/// loop ended, before the socket is dropped.
const WRITER_GRACE: Duration = Duration::from_secs(5);

/// Serves one WebSocket connection until it closes.
pub async fn handle_socket<S>(ws: S, gw: Arc<Gateway>, shutdown: CancellationToken, peer: String)
where
    S: Stream<Item = Result<WsMessage, WsError>> + Sink<WsMessage, Error = WsError> + Send + 'static,
{
    let span = tracing::info_span!(
        "conn",
        %peer,
        conn_id = tracing::field::Empty,
        tenant = tracing::field::Empty,
        user = tracing::field::Empty,
        device = tracing::field::Empty
    );
    async move {
        let (sink, mut stream) = ws.split();
        let (out_tx, out_rx) = mpsc::channel(gw.config.outbound_queue.max(4));
        let mut writer = tokio::spawn(write_loop(sink, out_rx));
        metrics::counter!("dongdong_connections_opened_total").increment(1);

        let exit = match Box::pin(authenticate(&mut stream, &gw, &out_tx, &shutdown)).await {
            Err(exit) => exit,
            Ok(session) => {
                let span = tracing::Span::current();
                span.record("conn_id", session.registration.conn_id);
                span.record("tenant", session.device.tenant.as_str());
                span.record("user", session.device.user.as_str());
                span.record("device", session.device.device.as_str());
                info!(role = %session.role, pending = session.pending_count, "authenticated");
                let conn_id = session.registration.conn_id;
                let caller = cs_queue::Caller { device: session.device.clone(), role: session.role };
                Box::pin(gw.cs.on_connect(&caller)).await;
                let exit = Conn::new(gw.clone(), out_tx.clone(), session).run(&mut stream, &shutdown).await;
                Box::pin(gw.dispatch.router().unregister(conn_id)).await;
                Box::pin(gw.cs.on_disconnect(&caller)).await;
                exit
            }
        };
        if let Exit::Close(code, reason) = exit {
            debug!(code = code.code(), %reason, "closing");
            // If the queue is full the client is not reading; it will not
            // read the close frame either.
            let _ = out_tx.try_send(Out::Close(code, reason));
        }
        drop(out_tx);
        if tokio::time::timeout(WRITER_GRACE, &mut writer).await.is_err() {
            writer.abort();
        }
        metrics::counter!("dongdong_connections_closed_total").increment(1);
    }
    .instrument(span)
    .await
}

async fn write_loop<S>(mut sink: S, mut rx: mpsc::Receiver<Out>)
where
    S: Sink<WsMessage, Error = WsError> + Unpin,
{
    // Feed everything queued, then flush once: one syscall for a burst.
    'outer: while let Some(out) = rx.recv().await {
        let mut next = Some(out);
        while let Some(out) = next.take() {
            match out {
                Out::Ws(m) => {
                    if sink.feed(m).await.is_err() {
                        break 'outer;
                    }
                }
                Out::Close(code, reason) => {
                    let frame = CloseFrame { code: code.code().into(), reason: reason.as_ref().into() };
                    let _ = sink.send(WsMessage::Close(Some(frame))).await;
                    break 'outer;
                }
            }
            next = rx.try_recv().ok();
        }
        if sink.flush().await.is_err() {
            break;
        }
    }
    let _ = sink.close().await;
}

fn encode(encoding: Encoding, frame: &Frame) -> WsMessage {
    let bytes = im_core::encode_frame(encoding, frame);
    match encoding {
        Encoding::Protobuf => WsMessage::binary(bytes),
        // Canonical JSON from serde_json is always UTF-8.
        Encoding::Json => WsMessage::text(String::from_utf8(bytes).unwrap_or_default()),
    }
}

fn error_frame(req_id: u64, code: ErrorCode, message: impl Into<String>) -> Frame {
    metrics::counter!("dongdong_errors_total", "code" => code.as_str_name()).increment(1);
    Frame { req_id, body: Some(Body::Error(code.with_message(message))) }
}

/// One data message read from the socket.
enum Incoming {
    Data(Encoding, Vec<u8>),
    Heard,
    Exit(Exit),
}

fn classify(item: Option<Result<WsMessage, WsError>>, max_frame: usize) -> Incoming {
    match item {
        None | Some(Ok(WsMessage::Close(_))) => Incoming::Exit(Exit::Gone),
        Some(Ok(WsMessage::Text(t))) => Incoming::Data(Encoding::Json, t.as_bytes().to_vec()),
        Some(Ok(WsMessage::Binary(b))) => Incoming::Data(Encoding::Protobuf, b.to_vec()),
        Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => Incoming::Heard,
        Some(Err(WsError::Capacity(e))) => {
            Incoming::Exit(close(CloseCode::TooLarge, format!("frame too large ({e}); the limit is {max_frame} bytes")))
        }
        Some(Err(WsError::Protocol(e))) => {
            Incoming::Exit(close(CloseCode::ProtocolError, format!("WebSocket protocol error: {e}")))
        }
        Some(Err(WsError::Utf8(_))) => Incoming::Exit(close(CloseCode::ProtocolError, "text message is not UTF-8")),
        Some(Err(_)) => Incoming::Exit(Exit::Gone),
    }
}

/// An authenticated connection, before its read loop starts.
struct Session {
    device: DeviceKey,
    role: im_core::Role,
    encoding: Encoding,
    registration: Registration,
    pending_count: u64,
}

/// Reads the Auth frame, verifies it, registers the device and its presence
/// and answers AuthOk. Any failure is answered with an Error and a close.
async fn authenticate<S>(
    stream: &mut S,
    gw: &Gateway,
    out: &mpsc::Sender<Out>,
    shutdown: &CancellationToken,
) -> Result<Session, Exit>
where
    S: Stream<Item = Result<WsMessage, WsError>> + Unpin,
{
    let deadline = Instant::now() + gw.config.auth_timeout;
    let max_frame = gw.config.max_frame_bytes;
    let reject = |encoding: Encoding, req_id: u64, code: ErrorCode, message: String, close_code: CloseCode| {
        let _ = out.try_send(Out::Ws(encode(encoding, &error_frame(req_id, code, message.clone()))));
        close(close_code, message)
    };
    let (encoding, payload) = loop {
        let item = tokio::select! {
            item = stream.next() => item,
            _ = sleep_until(deadline) => {
                let secs = gw.config.auth_timeout.as_secs_f64();
                return Err(reject(Encoding::Json, 0, ErrorCode::Unauthenticated,
                    format!("no Auth frame within {secs}s"), CloseCode::PolicyViolation));
            }
            _ = shutdown.cancelled() => return Err(close(CloseCode::ServiceRestart, "server shutting down")),
        };
        match classify(item, max_frame) {
            Incoming::Data(enc, payload) => break (enc, payload),
            Incoming::Heard => continue,
            Incoming::Exit(Exit::Close(CloseCode::TooLarge, reason)) => {
                return Err(reject(Encoding::Json, 0, ErrorCode::TooLarge, reason.into_owned(), CloseCode::TooLarge));
            }
            Incoming::Exit(exit) => return Err(exit),
        }
    };
    let frame = match im_core::decode_frame(encoding, &payload) {
        Ok(f) => f,
        Err(e) => {
            return Err(reject(encoding, 0, ErrorCode::BadFrame, e.to_string(), CloseCode::PolicyViolation));
        }
    };
    let req_id = frame.req_id;
    let auth = match frame.body {
        Some(Body::Auth(a)) => a,
        _ => {
            return Err(reject(
                encoding,
                req_id,
                ErrorCode::Unauthenticated,
                "the first frame must be Auth".into(),
                CloseCode::PolicyViolation,
            ));
        }
    };
    let claims = match gw.signer.verify(&auth.token) {
        Ok(c) => c,
        Err(e) => {
            metrics::counter!("dongdong_auth_failures_total").increment(1);
            let message = match e {
                AuthError::Expired => "token expired".to_string(),
                other => other.to_string(),
            };
            return Err(reject(encoding, req_id, ErrorCode::Unauthenticated, message, CloseCode::PolicyViolation));
        }
    };
    if let Err(e) = im_core::ids::validate_id("device_id", &auth.device_id) {
        return Err(reject(encoding, req_id, ErrorCode::InvalidArgument, e, CloseCode::PolicyViolation));
    }
    let device = DeviceKey::new(claims.tenant, claims.sub, auth.device_id);
    let unavailable = |e: dispatch::DispatchError| {
        warn!(error = %e, "could not register the connection");
        reject(encoding, req_id, e.code, e.message, CloseCode::TryAgainLater)
    };
    let registration = gw.dispatch.register_device(&device).await.map_err(unavailable)?;
    if let Some(evicted) = &registration.evicted {
        info!(evicted, "device limit reached; forgot the least recently seen device");
    }
    let registration = gw.dispatch.router().register(device.clone()).await.map_err(|e| unavailable(e.into()))?;
    let pending_count = match gw.dispatch.pending_count(&device).await {
        Ok(n) => n,
        Err(e) => {
            gw.dispatch.router().unregister(registration.conn_id).await;
            return Err(unavailable(e));
        }
    };
    let ok = Frame {
        req_id,
        body: Some(Body::AuthOk(pb::AuthOk {
            tenant: device.tenant.clone(),
            user_id: device.user.clone(),
            device_id: device.device.clone(),
            node_id: gw.dispatch.router().node_id().to_string(),
            server_time_ms: im_core::now_ms(),
            pending_count,
            role: claims.role.to_string(),
        })),
    };
    let _ = out.try_send(Out::Ws(encode(encoding, &ok)));
    Ok(Session { device, role: claims.role, encoding, registration, pending_count })
}

struct Inflight {
    conversation_id: String,
    seq: u64,
    sent_at: Instant,
    resends: u32,
}

struct Replay {
    cursor: Option<PendingCursor>,
    /// Size of the page being loaded: a shorter answer ends the pass.
    requested: usize,
    /// A push arrived (and was dropped) during this pass: run another.
    dirty: bool,
    /// Consecutive failed page reads; the next read waits a little longer.
    failures: u32,
    started: Instant,
}

type PageFuture = Pin<Box<dyn Future<Output = dispatch::Result<Vec<Message>>> + Send>>;

/// The authenticated read loop's state.
struct Conn {
    gw: Arc<Gateway>,
    out: mpsc::Sender<Out>,
    encoding: Encoding,
    device: DeviceKey,
    role: im_core::Role,
    kick: Arc<Kick>,
    deliveries: mpsc::Receiver<Push>,
    inflight: HashMap<String, Inflight>,
    replay: Option<Replay>,
    sends: Arc<Semaphore>,
    limiter: DefaultDirectRateLimiter,
    /// Frames rejected by the rate limit since the last accepted one.
    rejected_in_row: u32,
    last_heard: Instant,
    pinged: bool,
}

impl Conn {
    fn new(gw: Arc<Gateway>, out: mpsc::Sender<Out>, session: Session) -> Self {
        let rate = NonZeroU32::new(gw.config.rate_per_sec.max(1)).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(gw.config.rate_burst.max(1)).unwrap_or(NonZeroU32::MIN);
        let sends = Arc::new(Semaphore::new(gw.config.max_sends_in_flight.max(1)));
        Self {
            limiter: RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)),
            encoding: session.encoding,
            device: session.device,
            role: session.role,
            kick: session.registration.kick,
            deliveries: session.registration.deliveries,
            inflight: HashMap::new(),
            replay: Some(Replay { cursor: None, requested: 0, dirty: false, failures: 0, started: Instant::now() }),
            sends,
            rejected_in_row: 0,
            last_heard: Instant::now(),
            pinged: false,
            gw,
            out,
        }
    }

    /// Queues a frame for the writer; a full queue marks a slow consumer.
    fn emit(&self, frame: &Frame) -> bool {
        emit_to(&self.out, &self.kick, self.encoding, frame)
    }

    async fn run<S>(mut self, stream: &mut S, shutdown: &CancellationToken) -> Exit
    where
        S: Stream<Item = Result<WsMessage, WsError>> + Unpin,
    {
        let idle = self.gw.config.idle_timeout;
        let resend_every = (self.gw.config.ack_timeout / 4).max(Duration::from_millis(10));
        let mut next_resend_check = Instant::now() + resend_every;
        let mut page: Option<PageFuture> = None;
        loop {
            if page.is_none() {
                page = self.next_replay_page();
            }
            // Replay waits for half the writer queue to be free, so replies
            // and resends always find room.
            let half_queue = (self.gw.config.outbound_queue / 2).max(1);
            let replay_blocked = page.is_none() && self.replay.is_some() && self.window_room() > 0;
            let idle_deadline = self.last_heard + if self.pinged { idle } else { idle / 2 };
            tokio::select! {
                biased;
                reason = self.kick.kicked() => return close(reason.code, reason.message),
                _ = shutdown.cancelled() => return close(CloseCode::ServiceRestart, "server shutting down"),
                result = async {
                    match page.as_mut() {
                        Some(p) => p.await,
                        None => std::future::pending().await,
                    }
                }, if page.is_some() => {
                    page = None;
                    if let Err(exit) = self.on_replay_page(result) {
                        return exit;
                    }
                }
                _ = async { drop(self.out.reserve_many(half_queue).await) }, if replay_blocked => {}
                item = stream.next() => {
                    self.last_heard = Instant::now();
                    self.pinged = false;
                    match classify(item, self.gw.config.max_frame_bytes) {
                        Incoming::Data(enc, payload) => {
                            if let Err(exit) = self.on_data(enc, &payload).await {
                                return exit;
                            }
                        }
                        Incoming::Heard => {}
                        Incoming::Exit(Exit::Close(CloseCode::TooLarge, reason)) => {
                            self.emit(&error_frame(0, ErrorCode::TooLarge, reason.clone()));
                            return Exit::Close(CloseCode::TooLarge, reason);
                        }
                        Incoming::Exit(Exit::Close(code, reason)) => {
                            self.emit(&error_frame(0, ErrorCode::BadFrame, reason.clone()));
                            return Exit::Close(code, reason);
                        }
                        Incoming::Exit(exit) => return exit,
                    }
                }
                _ = self.kick.resync_requested() => {
                    if self.replay.is_none() {
                        self.replay = Some(Replay { cursor: None, requested: 0, dirty: false, failures: 0, started: Instant::now() });
                    }
                }
                Some(push) = self.deliveries.recv() => {
                    let pushed = match push {
                        Push::Message(message) => self.on_push(message),
                        Push::Event(frame) => {
                            if self.emit(&frame) { Ok(()) } else { Err(close(CloseCode::SlowConsumer, "outbound queue full")) }
                        }
                    };
                    if let Err(exit) = pushed {
                        return exit;
                    }
                }
                _ = sleep_until(next_resend_check), if !self.inflight.is_empty() => {
                    next_resend_check = Instant::now() + resend_every;
                    if let Err(exit) = Box::pin(self.resend_expired()).await {
                        return exit;
                    }
                }
                _ = sleep_until(idle_deadline) => {
                    if self.pinged {
                        return close(CloseCode::GoingAway, "idle timeout");
                    }
                    self.pinged = true;
                    let _ = self.out.try_send(Out::Ws(WsMessage::Ping(Default::default())));
                }
            }
            if self.inflight.is_empty() {
                next_resend_check = Instant::now() + resend_every;
            }
        }
    }

    /// Deliveries the ack window still allows.
    fn window_room(&self) -> usize {
        self.gw.config.max_inflight.saturating_sub(self.inflight.len())
    }

    /// Starts loading the next replay page if the ack window and the writer
    /// queue have room.
    fn next_replay_page(&mut self) -> Option<PageFuture> {
        let room = self.window_room().min(REPLAY_PAGE).min(self.out.capacity() / 2);
        let replay = self.replay.as_mut()?;
        if room == 0 {
            return None;
        }
        replay.requested = room;
        let dispatch = self.gw.dispatch.clone();
        let device = self.device.clone();
        let cursor = replay.cursor.clone();
        let backoff = REPLAY_RETRY_BACKOFF * replay.failures;
        Some(Box::pin(async move {
            if !backoff.is_zero() {
                tokio::time::sleep(backoff).await;
            }
            dispatch.pending_page(&device, cursor.as_ref(), room).await
        }))
    }

    fn on_replay_page(&mut self, result: dispatch::Result<Vec<Message>>) -> Result<(), Exit> {
        let Some(replay) = self.replay.as_mut() else {
            return Ok(());
        };
        let messages = match result {
            Ok(m) => {
                replay.failures = 0;
                m
            }
            Err(e) if replay.failures < REPLAY_RETRIES => {
                warn!(error = %e, "reading pending messages failed; retrying");
                replay.failures += 1;
                return Ok(());
            }
            Err(e) => {
                self.emit(&error_frame(0, e.code, e.message.clone()));
                return Err(close(CloseCode::TryAgainLater, "could not read pending messages; reconnect later"));
            }
        };
        let requested = replay.requested;
        if let Some(last) = messages.last() {
            replay.cursor = Some(PendingCursor::of(last));
        }
        let pass_done = messages.len() < requested;
        if pass_done {
            if replay.dirty {
                replay.cursor = None;
                replay.dirty = false;
            } else {
                metrics::histogram!("dongdong_replay_seconds").record(replay.started.elapsed().as_secs_f64());
                self.replay = None;
            }
        }
        for m in messages {
            if !self.inflight.contains_key(&m.msg_id) && !self.deliver(m, true) {
                return Err(close(CloseCode::SlowConsumer, "outbound queue full"));
            }
        }
        Ok(())
    }

    /// A message pushed by the router.
    fn on_push(&mut self, message: Arc<Message>) -> Result<(), Exit> {
        if let Some(replay) = self.replay.as_mut() {
            // It is pending as well; the next replay pass sends it in order.
            replay.dirty = true;
            return Ok(());
        }
        if self.inflight.contains_key(&message.msg_id) {
            return Ok(());
        }
        if self.inflight.len() >= self.gw.config.max_inflight {
            return Err(close(CloseCode::SlowConsumer, "too many unacknowledged deliveries"));
        }
        let message = Arc::unwrap_or_clone(message);
        if self.deliver(message, false) { Ok(()) } else { Err(close(CloseCode::SlowConsumer, "outbound queue full")) }
    }

    fn deliver(&mut self, message: Message, replay: bool) -> bool {
        let entry = Inflight {
            conversation_id: message.conversation_id.clone(),
            seq: message.seq,
            sent_at: Instant::now(),
            resends: 0,
        };
        let msg_id = message.msg_id.clone();
        let frame = Frame { req_id: 0, body: Some(Body::Deliver(pb::Deliver { message: Some(message), replay })) };
        let ok = self.emit(&frame);
        if ok {
            self.inflight.insert(msg_id, entry);
            metrics::counter!("dongdong_deliveries_total", "replay" => if replay { "true" } else { "false" })
                .increment(1);
        }
        ok
    }

    async fn resend_expired(&mut self) -> Result<(), Exit> {
        let timeout = self.gw.config.ack_timeout;
        let now = Instant::now();
        let mut expired: Vec<(String, String, u64, u32)> = self
            .inflight
            .iter()
            .filter(|(_, f)| f.sent_at + timeout <= now)
            .map(|(id, f)| (id.clone(), f.conversation_id.clone(), f.seq, f.resends))
            .collect();
        // Resend a conversation's messages in seq order.
        expired.sort_by(|a, b| (&a.1, a.2).cmp(&(&b.1, b.2)));
        for (msg_id, conversation_id, seq, resends) in expired {
            if resends >= self.gw.config.max_resends {
                return Err(close(CloseCode::AckTimeout, "deliveries stayed unacknowledged"));
            }
            let message = match self.gw.dispatch.message(&self.device.tenant, &conversation_id, seq).await {
                Ok(Some(m)) => m,
                Ok(None) => {
                    self.inflight.remove(&msg_id);
                    continue;
                }
                Err(e) => {
                    warn!(error = %e, "resend lookup failed; will retry");
                    continue;
                }
            };
            let frame =
                Frame { req_id: 0, body: Some(Body::Deliver(pb::Deliver { message: Some(message), replay: true })) };
            if !self.emit(&frame) {
                return Err(close(CloseCode::SlowConsumer, "outbound queue full"));
            }
            metrics::counter!("dongdong_resends_total").increment(1);
            if let Some(f) = self.inflight.get_mut(&msg_id) {
                f.sent_at = Instant::now();
                f.resends = resends + 1;
            }
        }
        Ok(())
    }

    async fn on_data(&mut self, encoding: Encoding, payload: &[u8]) -> Result<(), Exit> {
        metrics::counter!("dongdong_frames_in_total").increment(1);
        let frame = match im_core::decode_frame(encoding, payload) {
            Ok(f) => f,
            Err(e) => {
                self.rate_check(0)?;
                self.emit(&error_frame(0, ErrorCode::BadFrame, e.to_string()));
                return Ok(());
            }
        };
        let req_id = frame.req_id;
        // Acks of deliveries this connection made are the client keeping up,
        // not load it creates: they never count against the rate limit.
        let acks_own_deliveries = matches!(&frame.body, Some(Body::Ack(a))
            if !a.msg_ids.is_empty() && a.msg_ids.iter().all(|id| self.inflight.contains_key(id)));
        if !acks_own_deliveries && !self.rate_check(req_id)? {
            return Ok(());
        }
        let Some(body) = frame.body else {
            self.emit(&error_frame(req_id, ErrorCode::BadFrame, "frame has no body"));
            return Ok(());
        };
        match body {
            Body::Send(send) => self.on_send(req_id, send),
            Body::Ack(ack) => {
                for id in &ack.msg_ids {
                    self.inflight.remove(id);
                }
                if let Err(e) = Box::pin(self.gw.dispatch.ack(&self.device, &ack.msg_ids)).await {
                    self.emit(&error_frame(req_id, e.code, e.message));
                }
            }
            Body::SyncRequest(req) => {
                let reply = match Box::pin(self.history(req)).await {
                    Ok(page) => Frame { req_id, body: Some(Body::HistoryPage(page)) },
                    Err(e) => error_frame(req_id, e.code, e.message),
                };
                self.emit(&reply);
            }
            body @ (Body::RequestService(_)
            | Body::CancelRequest(_)
            | Body::LeaveMessage(_)
            | Body::EndSession(_)
            | Body::Rate(_)
            | Body::SetStatus(_)
            | Body::AcceptSession(_)
            | Body::TransferSession(_)
            | Body::CsStateRequest(_)
            | Body::ClaimLeftMessage(_)) => {
                let caller = self.caller();
                let reply = match Box::pin(self.gw.cs.handle(&caller, body)).await {
                    Ok(body) => Frame { req_id, body: Some(body) },
                    Err(e) => error_frame(req_id, e.code, e.message),
                };
                self.emit(&reply);
            }
            Body::Ping(_) => {
                let pong = pb::Pong { server_time_ms: im_core::now_ms() };
                self.emit(&Frame { req_id, body: Some(Body::Pong(pong)) });
            }
            Body::Auth(_) => {
                self.emit(&error_frame(req_id, ErrorCode::InvalidArgument, "already authenticated"));
            }
            other => {
                let name = server_frame_name(&other);
                let message = format!("{name} is a server-to-client frame");
                self.emit(&error_frame(req_id, ErrorCode::BadFrame, message));
            }
        }
        Ok(())
    }

    fn caller(&self) -> cs_queue::Caller {
        cs_queue::Caller { device: self.device.clone(), role: self.role }
    }

    /// A history page: of a conversation the user is a member of, or, with
    /// `session_id`, of a conversation of a service session they are part of.
    async fn history(&self, req: pb::SyncRequest) -> dispatch::Result<pb::HistoryPage> {
        if req.session_id.is_empty() {
            return self.gw.dispatch.history(&self.device, req).await;
        }
        if req.conversation_id.is_empty() {
            return Err(dispatch::DispatchError::new(
                ErrorCode::InvalidArgument,
                "with session_id, set conversation_id (one of the session's conversations)",
            ));
        }
        self.gw.cs.may_read(&self.caller(), &req.session_id, &req.conversation_id).await?;
        self.gw.dispatch.history_as(&self.device, req, true).await
    }

    /// Applies the per-connection rate limit. Returns whether the frame may be
    /// processed; a client that keeps flooding is closed.
    fn rate_check(&mut self, req_id: u64) -> Result<bool, Exit> {
        if self.limiter.check().is_ok() {
            self.rejected_in_row = 0;
            return Ok(true);
        }
        self.rejected_in_row += 1;
        if self.rejected_in_row > self.gw.config.rate_burst {
            metrics::counter!("dongdong_rate_limit_closes_total").increment(1);
            return Err(close(CloseCode::PolicyViolation, "rate limit exceeded persistently"));
        }
        let limit = self.gw.config.rate_per_sec;
        // try_send directly: error replies to a flood must never count as a
        // slow consumer of its own making.
        let frame = error_frame(req_id, ErrorCode::RateLimited, format!("more than {limit} frames per second"));
        let _ = self.out.try_send(Out::Ws(encode(self.encoding, &frame)));
        Ok(false)
    }

    fn on_send(&mut self, req_id: u64, send: pb::Send) {
        let Ok(permit) = self.sends.clone().try_acquire_owned() else {
            let max = self.gw.config.max_sends_in_flight;
            self.emit(&error_frame(
                req_id,
                ErrorCode::RateLimited,
                format!("more than {max} sends awaiting their ack"),
            ));
            return;
        };
        let (dispatch, device, out, kick, encoding) =
            (self.gw.dispatch.clone(), self.device.clone(), self.out.clone(), self.kick.clone(), self.encoding);
        tokio::spawn(
            async move {
                let reply = match dispatch.send(&device, send).await {
                    Ok(ack) => Frame { req_id, body: Some(Body::SendAck(ack)) },
                    Err(e) => error_frame(req_id, e.code, e.message),
                };
                drop(permit);
                emit_to(&out, &kick, encoding, &reply);
            }
            .in_current_span(),
        );
    }
}

fn emit_to(out: &mpsc::Sender<Out>, kick: &Kick, encoding: Encoding, frame: &Frame) -> bool {
    match out.try_send(Out::Ws(encode(encoding, frame))) {
        Ok(()) => {
            metrics::counter!("dongdong_frames_out_total").increment(1);
            true
        }
        Err(mpsc::error::TrySendError::Full(_)) => {
            metrics::counter!("dongdong_slow_consumers_total").increment(1);
            kick.kick(CloseCode::SlowConsumer, "outbound queue full: the client reads too slowly");
            false
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

fn server_frame_name(body: &Body) -> &'static str {
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
        _ => "a client frame",
    }
}
