//! One WebSocket connection, from the first frame to the close, in one task.
//!
//! The task waits on everything a connection does at once: frames from the
//! socket, its [`Mailbox`] (pushes from the router, replies of its own sends,
//! kicks), a replay page being loaded, and one timer (heartbeat and resends).
//! Writes go through a bounded [`Outbox`] into the socket's buffer and are
//! flushed when nothing else is ready, so a burst costs one write. Nothing
//! here waits on a full queue: a client that does not read what it is sent
//! is a slow consumer and is closed, and whatever it had not acknowledged
//! stays pending for its next connection.
//!
//! What is delivered, resent and replayed is decided by the
//! [`DeliveryWindow`], a type without I/O; this module only carries out its
//! actions. Requests (`Send`, `Ack`, history, customer service) are in
//! `requests`, the `Auth` step in `login`.
//!
//! Memory: an idle connection is this task's state plus the socket's read
//! buffer, its mailbox and its router and presence entries. Queues allocate
//! only while something waits in them, and the rare heavy steps (login,
//! customer-service commands, history, unregistering) run as boxed futures
//! ([`rare`]) so that their state is not part of the task's for its life.
//!
//! The handler is written against any `Sink`/`Stream` of tungstenite
//! messages, so it runs over TCP, TLS or an in-memory pair alike.

mod login;
mod outbox;
mod requests;
mod wire;

use crate::Gateway;
use crate::window::{Action, DeliveryWindow, PageRequest, WindowLimits};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use im_core::pb::{self, Frame, Message, frame::Body};
use im_core::{CloseCode, Encoding};
use outbox::Outbox;
use session_router::{Mail, Mailbox, Push};
use std::future::{Future, poll_fn};
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use storage::DeviceKey;
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};
use wire::{Exit, close, encode, error_frame};

/// How long the final frames may take to flush after the loop ended,
/// before the socket is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Events handled before queued frames are flushed even though more
/// events are ready: a busy connection still writes promptly.
const FLUSH_EVERY: u8 = 32;

/// Runs a rare, heavy step as a boxed future. A task keeps the size of its
/// largest state for its whole life, and the state of an `async fn` holds
/// every future it awaits: awaited inline, one customer-service command or
/// login would make every idle connection pay for it. Boxed, it costs an
/// allocation when it runs and nothing after.
fn rare<'a, T>(f: impl Future<Output = T> + Send + 'a) -> Pin<Box<dyn Future<Output = T> + Send + 'a>> {
    Box::pin(f)
}

/// Serves one WebSocket connection until it closes. `shutdown` closes it
/// while it logs in; afterwards the server closes it through the router.
pub async fn handle_socket<S>(mut ws: S, gw: Arc<Gateway>, shutdown: CancellationToken, peer: String)
where
    S: Stream<Item = Result<WsMessage, WsError>> + Sink<WsMessage, Error = WsError> + Send + Unpin + 'static,
{
    let span = tracing::info_span!(
        "conn",
        %peer,
        conn_id = tracing::field::Empty,
        tenant = tracing::field::Empty,
        user = tracing::field::Empty,
        device = tracing::field::Empty
    );
    drop(peer);
    async move {
        metrics::counter!("dongdong_connections_opened_total").increment(1);
        let mut outbox = Outbox::new(gw.config.outbound_queue);
        let exit = match rare(login::authenticate(&mut ws, &mut outbox, &gw, &shutdown)).await {
            Err(exit) => exit,
            Ok(session) => {
                let span = tracing::Span::current();
                span.record("conn_id", session.registration.conn_id);
                span.record("tenant", session.device.tenant.as_str());
                span.record("user", session.device.user.as_str());
                span.record("device", session.device.device.as_str());
                info!(role = %session.role, pending = session.pending_count, "authenticated");
                let conn_id = session.registration.conn_id;
                let caller = cs_queue::Caller { device: (*session.device).clone(), role: session.role };
                rare(gw.cs.on_connect(&caller)).await;
                let exit = if shutdown.is_cancelled() {
                    // Registered after the server closed every connection.
                    close(CloseCode::ServiceRestart, "server shutting down")
                } else {
                    let mut conn = Conn::new(gw.clone(), outbox, session);
                    let exit = conn.run(&mut ws).await;
                    outbox = conn.outbox;
                    exit
                };
                rare(gw.dispatch.router().unregister(conn_id)).await;
                rare(gw.cs.on_disconnect(&caller)).await;
                exit
            }
        };
        rare(finish(&mut ws, outbox, exit)).await;
        metrics::counter!("dongdong_connections_closed_total").increment(1);
    }
    .instrument(span)
    .await
}

/// Writes what is left and the close frame, within [`CLOSE_GRACE`].
async fn finish<S>(ws: &mut S, mut outbox: Outbox, exit: Exit)
where
    S: Sink<WsMessage, Error = WsError> + Unpin,
{
    let flush = async {
        if let Exit::Close(code, reason) = exit {
            debug!(code = code.code(), %reason, "closing");
            if code == CloseCode::SlowConsumer {
                // It is not reading; it will not read the backlog either.
                outbox.clear();
            }
            poll_fn(|cx| outbox.poll_feed(cx, ws)).await?;
            let frame = CloseFrame { code: code.code().into(), reason: reason.as_ref().into() };
            ws.send(WsMessage::Close(Some(frame))).await?;
        }
        ws.close().await
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, flush).await;
}

type PageFuture = Pin<Box<dyn Future<Output = dispatch::Result<Vec<Message>>> + Send>>;
type AckFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What woke the connection.
enum Event {
    Read(Option<Result<WsMessage, WsError>>),
    Mail(Mail),
    Page(dispatch::Result<Vec<Message>>),
    /// Acks held back by a full ack queue are queued now: read on.
    AcksQueued,
    Timer,
    WriteFailed,
}

/// An authenticated connection's state.
struct Conn {
    gw: Arc<Gateway>,
    mailbox: Arc<Mailbox>,
    device: Arc<DeviceKey>,
    role: im_core::Role,
    encoding: Encoding,
    outbox: Outbox,
    window: DeliveryWindow,
    /// The replay page being loaded.
    page: Option<PageFuture>,
    /// Acks waiting for room in the node's ack queue; no frame is read
    /// until they are queued.
    held_acks: Option<AckFuture>,
    /// Places this connection's sends in the order their frames were read.
    order: dispatch::SendOrder,
    /// Sends stored or being stored whose reply has not been written.
    sends_in_flight: usize,
    limiter: DefaultDirectRateLimiter,
    /// Frames rejected by the rate limit since the last accepted one.
    rejected_in_row: u32,
    last_heard: Instant,
    pinged: bool,
    /// Which source is polled first next time: the socket or the mailbox.
    read_first: bool,
    /// Events handled since the last flush.
    unflushed_events: u8,
}

impl Conn {
    fn new(gw: Arc<Gateway>, outbox: Outbox, session: login::Session) -> Self {
        let rate = NonZeroU32::new(gw.config.rate_per_sec.max(1)).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(gw.config.rate_burst.max(1)).unwrap_or(NonZeroU32::MIN);
        let now = Instant::now();
        let limits = WindowLimits {
            max_inflight: gw.config.max_inflight,
            ack_timeout: gw.config.ack_timeout,
            max_resends: gw.config.max_resends,
        };
        Self {
            limiter: RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)),
            mailbox: session.registration.mailbox,
            device: session.device,
            role: session.role,
            encoding: session.encoding,
            outbox,
            window: DeliveryWindow::new(limits, now),
            page: None,
            held_acks: None,
            order: dispatch::SendOrder::default(),
            sends_in_flight: 0,
            rejected_in_row: 0,
            last_heard: now,
            pinged: false,
            read_first: true,
            unflushed_events: 0,
            gw,
        }
    }

    async fn run<S>(&mut self, ws: &mut S) -> Exit
    where
        S: Stream<Item = Result<WsMessage, WsError>> + Sink<WsMessage, Error = WsError> + Unpin,
    {
        let timer = tokio::time::sleep_until(self.timer_deadline());
        tokio::pin!(timer);
        loop {
            if self.page.is_none()
                && let Some(req) = self.window.next_page(self.outbox.room() / 2)
            {
                self.page = Some(self.load_page(req));
            }
            let due = self.timer_deadline();
            if due < timer.deadline() {
                timer.as_mut().reset(due);
            }
            let event = poll_fn(|cx| self.poll_event(cx, ws, timer.as_mut())).await;
            let now = Instant::now();
            let handled = match event {
                Event::Read(item) => self.on_read(item, now).await,
                Event::Mail(mail) => self.on_mail(mail, now),
                Event::Page(page) => self.on_page(page, now),
                Event::AcksQueued => {
                    self.held_acks = None;
                    Ok(())
                }
                Event::Timer => {
                    let handled = self.on_timer(now);
                    timer.as_mut().reset(self.timer_deadline());
                    handled
                }
                Event::WriteFailed => Err(Exit::Gone),
            };
            if let Err(exit) = handled {
                return exit;
            }
        }
    }

    /// The next event. Queued frames are fed to the socket first (cheap:
    /// the socket's buffer writes through only when full) and flushed when
    /// nothing else is ready, or every [`FLUSH_EVERY`] events.
    fn poll_event<S>(&mut self, cx: &mut Context<'_>, ws: &mut S, timer: Pin<&mut Sleep>) -> Poll<Event>
    where
        S: Stream<Item = Result<WsMessage, WsError>> + Sink<WsMessage, Error = WsError> + Unpin,
    {
        if let Poll::Ready(Err(_)) = self.outbox.poll_feed(cx, ws) {
            return Poll::Ready(Event::WriteFailed);
        }
        if self.unflushed_events >= FLUSH_EVERY {
            self.unflushed_events = 0;
            if let Poll::Ready(Err(_)) = self.outbox.poll_flush(cx, ws) {
                return Poll::Ready(Event::WriteFailed);
            }
        }
        if let Some(event) = self.poll_sources(cx, ws, timer) {
            self.unflushed_events = self.unflushed_events.saturating_add(1);
            return Poll::Ready(event);
        }
        self.unflushed_events = 0;
        match self.outbox.poll_flush(cx, ws) {
            Poll::Ready(Err(_)) => Poll::Ready(Event::WriteFailed),
            _ => Poll::Pending,
        }
    }

    fn poll_sources<S>(&mut self, cx: &mut Context<'_>, ws: &mut S, timer: Pin<&mut Sleep>) -> Option<Event>
    where
        S: Stream<Item = Result<WsMessage, WsError>> + Unpin,
    {
        // The socket and the mailbox take turns at going first, so that
        // neither a flooding client nor a flood of pushes starves the other.
        for read in [self.read_first, !self.read_first] {
            if read {
                if self.held_acks.is_none()
                    && let Poll::Ready(item) = ws.poll_next_unpin(cx)
                {
                    self.read_first = false;
                    return Some(Event::Read(item));
                }
            } else if let Poll::Ready(mail) = self.mailbox.poll_recv(cx) {
                self.read_first = true;
                return Some(Event::Mail(mail));
            }
        }
        if let Some(page) = &mut self.page
            && let Poll::Ready(result) = page.as_mut().poll(cx)
        {
            self.page = None;
            return Some(Event::Page(result));
        }
        if let Some(held) = &mut self.held_acks
            && held.as_mut().poll(cx).is_ready()
        {
            return Some(Event::AcksQueued);
        }
        timer.poll(cx).is_ready().then_some(Event::Timer)
    }

    /// The earliest of the heartbeat's and the window's next check.
    fn timer_deadline(&self) -> Instant {
        let idle = self.gw.config.idle_timeout;
        let heartbeat = self.last_heard + if self.pinged { idle } else { idle / 2 };
        self.window.next_deadline().map_or(heartbeat, |d| d.min(heartbeat))
    }

    fn on_timer(&mut self, now: Instant) -> Result<(), Exit> {
        let silent = now.saturating_duration_since(self.last_heard);
        let idle = self.gw.config.idle_timeout;
        if silent >= idle {
            return Err(close(CloseCode::GoingAway, "idle timeout"));
        }
        if silent >= idle / 2 && !self.pinged {
            self.pinged = true;
            // Browsers answer WebSocket pings by themselves.
            let _ = self.outbox.push(WsMessage::Ping(Default::default()));
        }
        self.apply(|window, out| window.on_tick(now, out))
    }

    /// Runs a window event and carries out its actions.
    fn apply(&mut self, event: impl FnOnce(&mut DeliveryWindow, &mut dyn FnMut(Action))) -> Result<(), Exit> {
        let (outbox, encoding) = (&mut self.outbox, self.encoding);
        let mut exit = None;
        event(&mut self.window, &mut |action| {
            if exit.is_some() {
                return;
            }
            match action {
                Action::Deliver { message, replay } => {
                    let message = Arc::unwrap_or_clone(message);
                    let frame =
                        Frame { req_id: 0, body: Some(Body::Deliver(pb::Deliver { message: Some(message), replay })) };
                    if outbox.push(encode(encoding, &frame)) {
                        metrics::counter!("dongdong_deliveries_total", "replay" => if replay { "true" } else { "false" })
                            .increment(1);
                    } else {
                        exit = Some(slow_consumer());
                    }
                }
                Action::Close { code, reason } => exit = Some(close(code, reason)),
            }
        });
        exit.map_or(Ok(()), Err)
    }

    fn on_mail(&mut self, mail: Mail, now: Instant) -> Result<(), Exit> {
        match mail {
            Mail::Kicked(reason) => Err(close(reason.code, reason.message)),
            Mail::Resync => {
                self.window.resync(now);
                Ok(())
            }
            Mail::Push(Push::Message(message)) => self.apply(|window, out| window.on_push(message, now, out)),
            Mail::Push(Push::Event(frame)) => self.emit(&frame),
            Mail::Push(Push::Reply(frame)) => {
                self.sends_in_flight = self.sends_in_flight.saturating_sub(1);
                self.emit(&frame)
            }
        }
    }

    fn load_page(&self, req: PageRequest) -> PageFuture {
        let (dispatch, device) = (self.gw.dispatch.clone(), self.device.clone());
        Box::pin(async move {
            if !req.delay.is_zero() {
                tokio::time::sleep(req.delay).await;
            }
            dispatch.pending_page(&device, req.cursor.as_ref(), req.limit).await
        })
    }

    fn on_page(&mut self, page: dispatch::Result<Vec<Message>>, now: Instant) -> Result<(), Exit> {
        match page {
            Ok(messages) => {
                let mut finished = None;
                self.apply(|window, out| finished = window.on_page(messages, now, out))?;
                if let Some(took) = finished {
                    metrics::histogram!("dongdong_replay_seconds").record(took.as_secs_f64());
                }
                Ok(())
            }
            Err(e) => {
                warn!(error = %e, "reading pending messages failed");
                if !self.window.on_page_failed() {
                    return Ok(());
                }
                self.emit(&error_frame(0, e.code, e.message.clone()))?;
                Err(close(CloseCode::TryAgainLater, "could not read pending messages; reconnect later"))
            }
        }
    }

    /// Queues a frame for the client; a full queue is a slow consumer.
    fn emit(&mut self, frame: &Frame) -> Result<(), Exit> {
        if self.outbox.push(encode(self.encoding, frame)) {
            metrics::counter!("dongdong_frames_out_total").increment(1);
            Ok(())
        } else {
            Err(slow_consumer())
        }
    }
}

fn slow_consumer() -> Exit {
    metrics::counter!("dongdong_slow_consumers_total").increment(1);
    close(CloseCode::SlowConsumer, "outbound queue full: the client reads too slowly")
}

/// Errors a request can answer with (for `requests`).
fn reply_error(req_id: u64, e: &dispatch::DispatchError) -> Frame {
    error_frame(req_id, e.code, e.message.clone())
}
