//! One WebSocket connection, from the first frame to the close, as one task.
//!
//! The task is a hand-written future, [`Connection`], in three phases:
//! logging in (the `Auth` frame, in `login`), open, and closing. While open
//! it waits on everything a connection does at once: frames from the
//! socket, its [`Mailbox`] (pushes from the router, replies of its own
//! sends, kicks), a replay page being loaded, a request being answered, and
//! one timer (heartbeat and resends). Writes go through a bounded
//! [`Outbox`] into the socket's buffer and are flushed when nothing else is
//! ready, so a burst costs one write. Nothing here waits on a full queue: a
//! client that does not read what it is sent is a slow consumer and is
//! closed, and whatever it had not acknowledged stays pending for its next
//! connection.
//!
//! What is delivered, resent and replayed is decided by the
//! [`DeliveryWindow`], a type without I/O; this module carries out its
//! actions. Requests are in `requests`.
//!
//! Memory is the point of the shape. A task keeps the size of its largest
//! state for its whole life, and an `async fn` keeps every future it awaits
//! in its state (and each layer of `async` its own copy of what it
//! captured): written with `async`, the open connection's task was 4.3 KB.
//! Here the open phase is the connection's fields and nothing else; the
//! rare, heavy steps (login, history and customer-service requests,
//! unregistering and closing) run as boxed futures that cost an allocation
//! while they run and nothing after. Queues allocate only while something
//! waits in them and are released when the connection goes idle.
//!
//! The handler is written against any `Sink`/`Stream` of tungstenite
//! messages, so it runs over TCP, TLS or an in-memory pair alike.

mod login;
#[cfg(test)]
mod memory_test;
mod outbox;
mod presence;
mod requests;
mod typing;
mod wire;

use crate::Gateway;
use crate::backlog::AckBacklog;
use crate::resume;
use crate::window::{Action, DeliveryWindow, GapRead, Load, PageRequest, Position, WindowLimits};
use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use im_core::DeviceKey;
use im_core::pb::{Frame, Message};
use im_core::{CloseCode, Encoding};
use outbox::Outbox;
use session_router::{Mail, Mailbox, Push};
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use wire::{Exit, close, encode, error_frame};

/// How long the final frames may take to flush after the connection ended,
/// before the socket is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// How long a closed connection may wait for room for the acks it holds.
const HELD_ACKS_GRACE: Duration = Duration::from_secs(30);
/// Events handled before queued frames are flushed even though more
/// events are ready: a busy connection still writes promptly.
const FLUSH_EVERY: u8 = 32;
/// Events handled in one poll before the task yields to the others.
const EVENT_BUDGET: u32 = 128;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What the socket must satisfy.
pub trait Socket:
    Stream<Item = Result<WsMessage, WsError>> + Sink<WsMessage, Error = WsError> + Send + Unpin + 'static
{
}

impl<S> Socket for S where
    S: Stream<Item = Result<WsMessage, WsError>> + Sink<WsMessage, Error = WsError> + Send + Unpin + 'static
{
}

pin_project_lite::pin_project! {
    /// The task of one WebSocket connection: see the module docs.
    pub struct Connection<S> {
        // Heartbeat and resends; idle until the connection is open.
        #[pin]
        timer: Sleep,
        phase: Phase<S>,
        span: tracing::Span,
        // Held for the connection's life (the server's connection limit).
        permit: Option<OwnedSemaphorePermit>,
    }
}

// The open phase is the connection itself, inline on purpose: boxed, it
// would cost a second allocation per connection for its whole life.
#[allow(clippy::large_enum_variant)]
enum Phase<S> {
    LoggingIn(BoxFuture<login::LoggedIn<S>>),
    Open(Conn<S>),
    Closing(BoxFuture<()>),
    Done,
}

/// Serves one WebSocket connection until it closes. `shutdown` closes it
/// while it logs in; afterwards the server closes it through the router.
/// `login_guard` (counting it against its address's logins in progress) is
/// held until the login ends.
pub fn handle_socket<S: Socket>(
    ws: S,
    gw: Arc<Gateway>,
    shutdown: CancellationToken,
    peer: SocketAddr,
    login_guard: Option<crate::limits::LoginGuard>,
) -> Connection<S> {
    let span = tracing::info_span!(
        "conn",
        %peer,
        conn_id = tracing::field::Empty,
        tenant = tracing::field::Empty,
        user = tracing::field::Empty,
        device = tracing::field::Empty
    );
    metrics::counter!("dongdong_connections_opened_total").increment(1);
    Connection {
        timer: tokio::time::sleep_until(Instant::now() + gw.config.timeouts.auth),
        phase: Phase::LoggingIn(Box::pin(login::login(ws, gw, shutdown, login_guard))),
        span,
        permit: None,
    }
}

impl<S> Connection<S> {
    /// Holds `permit` until the connection has closed.
    pub fn holding(mut self, permit: OwnedSemaphorePermit) -> Self {
        self.permit = Some(permit);
        self
    }
}

impl<S: Socket> Future for Connection<S> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        let _entered = this.span.enter();
        loop {
            match this.phase {
                Phase::LoggingIn(login) => {
                    let login::LoggedIn { ws, outbox, session } = ready!(login.as_mut().poll(cx));
                    *this.phase = match session {
                        Err(exit) => Phase::Closing(Box::pin(finish(ws, outbox, exit))),
                        Ok((session, shutting_down)) => {
                            let span = tracing::Span::current();
                            span.record("conn_id", session.registration.conn_id);
                            span.record("tenant", session.device.tenant.as_str());
                            span.record("user", session.device.user.as_str());
                            span.record("device", session.device.device.as_str());
                            info!(role = %session.role, pending = session.pending_count, "authenticated");
                            let conn = Conn::new(ws, outbox, session);
                            if shutting_down {
                                // Registered after the server closed every connection.
                                Phase::Closing(conn.close(close(CloseCode::ServiceRestart, "server shutting down")))
                            } else {
                                this.timer.as_mut().reset(conn.timer_deadline());
                                Phase::Open(conn)
                            }
                        }
                    };
                }
                Phase::Open(conn) => {
                    let exit = ready!(conn.poll_open(cx, this.timer.as_mut()));
                    let Phase::Open(conn) = std::mem::replace(this.phase, Phase::Done) else { unreachable!() };
                    *this.phase = Phase::Closing(conn.close(exit));
                }
                Phase::Closing(closing) => {
                    ready!(closing.as_mut().poll(cx));
                    *this.phase = Phase::Done;
                    this.permit.take();
                    metrics::counter!("dongdong_connections_closed_total").increment(1);
                    return Poll::Ready(());
                }
                Phase::Done => return Poll::Ready(()),
            }
        }
    }
}

/// Writes what is left and the close frame, within [`CLOSE_GRACE`].
async fn finish<S: Socket>(mut ws: S, mut outbox: Outbox, exit: Exit) {
    // A client closed for what it sent (a flood, a bad frame) may still be
    // sending: its frames are read (and dropped) until its Close, because a
    // socket dropped with frames unread is reset by the kernel, and the
    // client would lose our Close frame. Others only have what already
    // arrived read, so that closing many idle connections waits for none.
    let linger = matches!(&exit, Exit::Close(CloseCode::PolicyViolation | CloseCode::TooLarge, _));
    let flush = async {
        if let Exit::Close(code, reason) = exit {
            debug!(code = code.code(), %reason, "closing");
            if code == CloseCode::SlowConsumer {
                // It is not reading; it will not read the backlog either.
                outbox.clear();
            }
            poll_fn(|cx| outbox.poll_feed(cx, &mut ws)).await?;
            let frame = CloseFrame { code: code.code().into(), reason: reason.as_ref().into() };
            ws.send(WsMessage::Close(Some(frame))).await?;
        }
        ws.close().await?;
        if linger {
            while let Some(Ok(_)) = ws.next().await {}
        } else {
            while let Some(Some(Ok(_))) = ws.next().now_or_never() {}
        }
        Ok::<(), WsError>(())
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, flush).await;
}

/// What woke the open connection. Lives on the stack for one event.
#[allow(clippy::large_enum_variant)]
enum Event {
    Read(Option<Result<WsMessage, WsError>>),
    Mail(Mail),
    Page(Loaded),
    /// The request in progress was answered.
    Answered(Frame),
    /// Held acks were all queued.
    AcksQueued,
    Timer,
    WriteFailed,
}

/// An open (authenticated) connection.
struct Conn<S> {
    ws: S,
    gw: Arc<Gateway>,
    mailbox: Arc<Mailbox>,
    device: Arc<DeviceKey>,
    conn_id: u64,
    role: im_core::Role,
    encoding: Encoding,
    outbox: Outbox,
    window: DeliveryWindow,
    /// Replay pages and resends being loaded (allocated only while one is).
    page: Option<Box<Paging>>,
    /// A request being answered (history, customer service): no frame is
    /// read until it is, so that frames take effect in the order sent.
    answering: Option<BoxFuture<Frame>>,
    /// Acks that did not fit the node's ack queue, pushed as room appears
    /// (allocated only then). Reading goes on until more than
    /// `max_inflight` ids wait here.
    held_acks: Option<Box<HeldAcks>>,
    /// Places this connection's sends in the order their frames were read.
    order: dispatch::SendOrder,
    /// Sends stored or being stored whose reply has not been written.
    sends_in_flight: u32,
    /// Frames rejected by the rate limit since the last accepted one.
    rejected_in_row: u32,
    /// Typing signals forwarded lately (allocated on the first).
    typing: Option<Box<typing::TypingState>>,
    last_heard: Instant,
    pinged: bool,
    /// Which source is polled first next time: the socket or the mailbox.
    read_first: bool,
    /// Events handled since the last flush.
    unflushed_events: u8,
}

impl<S> Conn<S> {
    fn new(ws: S, outbox: Outbox, session: login::Session) -> Self {
        let gw = session.gw;
        let now = Instant::now();
        let mut conn = Self {
            ws,
            conn_id: session.registration.conn_id,
            mailbox: session.registration.mailbox,
            device: session.device,
            role: session.role,
            encoding: session.encoding,
            outbox,
            window: DeliveryWindow::new(now),
            page: None,
            answering: None,
            held_acks: None,
            order: dispatch::SendOrder::default(),
            sends_in_flight: 0,
            rejected_in_row: 0,
            typing: None,
            last_heard: now,
            pinged: false,
            read_first: true,
            unflushed_events: 0,
            gw,
        };
        if let Some(parked) = session.resumed {
            conn.resume(parked, session.pending_count, now);
        }
        conn
    }

    /// Takes back a parked session (see `crate::resume`): its deliveries
    /// in flight are resent, a replay pass runs only if more is pending,
    /// and its presence subscriptions are watched again (their current
    /// state pushed with `req_id` 0).
    fn resume(&mut self, parked: resume::Parked, pending: u64, now: Instant) {
        self.window = parked.window;
        // A resume only asks for a reload: nothing to close for.
        let _ = self.apply(|window, limits, out| window.resume(limits, pending, now, out));
        if !parked.watched.is_empty() {
            let _ = self.watch(0, parked.watched);
        }
    }

    /// Whether the session is parked when the connection ends with `exit`:
    /// the network went (or the client vanished: idle timeout), or the same
    /// device signed in again (perhaps to resume it); not a goodbye, a
    /// kick or a shutdown.
    fn parks_on(exit: &Exit) -> bool {
        match exit {
            Exit::Gone { resumable } => *resumable,
            Exit::Close(code, _) => matches!(code, CloseCode::GoingAway | CloseCode::Replaced),
        }
    }

    fn caller(&self) -> cs_queue::Caller {
        cs_queue::Caller::of_device(&self.device, self.role)
    }

    /// Unregisters the connection, then writes what is left and closes.
    fn close(self, exit: Exit) -> BoxFuture<()>
    where
        S: Socket,
    {
        let caller = self.caller();
        let Conn { ws, outbox, gw, conn_id, device, held_acks, window, role, .. } = self;
        if !gw.config.sessions.resume_window.is_zero() && Self::parks_on(&exit) {
            // Parked before it leaves the router: a sign-in that replaced it
            // waits for one or the other (`ParkedSessions::take_when_parked`).
            let watched = gw.router.watched(conn_id);
            let session = resume::Parked { device: device.clone(), role, window, watched };
            let now = Instant::now();
            let parked = gw.parked.park(conn_id, session, now, now + gw.config.sessions.resume_window);
            debug!(parked, "session parked for a resume");
        }
        Box::pin(async move {
            gw.router.unregister(conn_id).await;
            gw.cs.on_disconnect(&caller).await;
            finish(ws, outbox, exit).await;
            if let Some(mut held) = held_acks {
                // Held acks are queued, not dropped: the closing task (and
                // its connection slot) lasts until they fit, within a bound
                // so that a store that never recovers cannot stall shutdown.
                let queued = poll_fn(|cx| held.poll_queued(cx, &gw, &device));
                if tokio::time::timeout(HELD_ACKS_GRACE, queued).await.is_err() {
                    let ids = held.backlog.len() as u64;
                    metrics::counter!("dongdong_acks_dropped_total").increment(ids);
                    warn!(ids, "acks held at close found no room in the ack queue; they stay pending");
                }
            }
        })
    }

    /// The earliest of the heartbeat's and the window's next check.
    fn timer_deadline(&self) -> Instant {
        let idle = self.gw.config.timeouts.idle;
        let heartbeat = self.last_heard + if self.pinged { idle } else { idle / 2 };
        self.window.next_deadline().map_or(heartbeat, |d| d.min(heartbeat))
    }

    fn on_timer(&mut self, now: Instant) -> Result<(), Exit> {
        let silent = now.saturating_duration_since(self.last_heard);
        let idle = self.gw.config.timeouts.idle;
        if silent >= idle {
            return Err(close(CloseCode::GoingAway, "idle timeout"));
        }
        if silent >= idle / 2 && !self.pinged {
            self.pinged = true;
            // Browsers answer WebSocket pings by themselves.
            let _ = self.outbox.push(WsMessage::Ping(Default::default()));
        }
        self.apply(|window, limits, out| window.on_tick(limits, now, out))
    }

    /// Runs a window event and carries out its actions.
    fn apply(
        &mut self,
        event: impl FnOnce(&mut DeliveryWindow, &WindowLimits, &mut dyn FnMut(Action)),
    ) -> Result<(), Exit> {
        let (outbox, encoding) = (&mut self.outbox, self.encoding);
        let limits = self.gw.config.window_limits();
        let mut exit = None;
        let mut reload = None;
        event(&mut self.window, &limits, &mut |action| {
            if exit.is_some() {
                return;
            }
            match action {
                Action::Reload(positions) => reload = Some(positions),
                Action::Deliver { message, replay } => match queue_frame(outbox, wire::encode_deliver(encoding, &message, replay)) {
                    Ok(()) => metrics::counter!("dongdong_deliveries_total", "replay" => if replay { "true" } else { "false" })
                        .increment(1),
                    Err(slow) => exit = Some(slow),
                },
                Action::Close { code, reason } => exit = Some(close(code, reason)),
            }
        });
        if let Some(positions) = reload {
            self.start_reload(positions);
        }
        exit.map_or(Ok(()), Err)
    }

    /// Reads the messages of a resend again (the window asks for one
    /// reload at a time).
    fn start_reload(&mut self, positions: Vec<Position>) {
        let (dispatch, tenant) = (self.gw.dispatch.clone(), self.device.tenant.clone());
        self.page.get_or_insert_default().reloading = Some(Box::pin(async move {
            let mut messages = Vec::with_capacity(positions.len());
            for p in &positions {
                match dispatch.message(&tenant, &p.conversation_id, p.seq).await {
                    Ok(Some(m)) => messages.push(m),
                    Ok(None) => {}
                    Err(e) => return Loaded::Reloaded(positions, Err(e)),
                }
            }
            Loaded::Reloaded(positions, Ok(messages))
        }));
    }

    fn on_mail(&mut self, mail: Mail, now: Instant) -> Result<(), Exit> {
        match mail {
            Mail::Kicked(reason) => Err(close(reason.code, reason.message)),
            Mail::Resync => {
                self.window.resync(now);
                Ok(())
            }
            Mail::Push(Push::Message(message)) => {
                self.apply(|window, limits, out| window.on_push(limits, message, now, out))
            }
            Mail::Push(Push::Event(frame)) => self.emit(&frame),
            Mail::Push(Push::Reply(frame)) => {
                self.sends_in_flight = self.sends_in_flight.saturating_sub(1);
                if let Some(im_core::pb::frame::Body::SendAck(ack)) = &frame.body {
                    self.window.on_sent(&ack.conversation_id, ack.seq);
                }
                self.emit(&frame)
            }
        }
    }

    fn load_page(&self, req: PageRequest) -> BoxFuture<Loaded> {
        let (dispatch, device) = (self.gw.dispatch.clone(), self.device.clone());
        Box::pin(async move {
            if !req.delay.is_zero() {
                tokio::time::sleep(req.delay).await;
            }
            // This connection's acks reach the store before the page is
            // read: a pass that starts over must not resend what was acked.
            dispatch.acks().flush().await;
            Loaded::Messages(dispatch.pending_page(&device, req.cursor.as_ref(), req.limit).await)
        })
    }

    /// Starts loading what the window asks for next, if anything: a page
    /// of its messages pass or of its events pass.
    fn start_page(&mut self) {
        let limits = self.gw.config.window_limits();
        if self.page.as_ref().is_none_or(|p| p.gap.is_none())
            && let Some(read) = self.window.next_gap(&limits)
        {
            let gap = self.load_gap(read);
            self.page.get_or_insert_default().gap = Some(gap);
        }
        let future = match self.window.next_load(&limits, self.outbox.room() / 2) {
            None => return,
            Some(Load::Messages(req)) => self.load_page(req),
            Some(Load::Events { after, limit }) => self.load_events(after, limit),
        };
        self.page.get_or_insert_default().loading = Some(future);
    }

    /// The device's pending messages in a gap of a conversation, which
    /// held live pushes wait for.
    fn load_gap(&self, read: GapRead) -> BoxFuture<Loaded> {
        let (dispatch, device) = (self.gw.dispatch.clone(), self.device.clone());
        Box::pin(async move {
            if !read.delay.is_zero() {
                tokio::time::sleep(read.delay).await;
            }
            // Like a replay page: what this connection acked is not read back.
            dispatch.acks().flush().await;
            let (conv, after, before, limit) = (&*read.conversation_id, read.after, read.before, read.limit);
            let found = dispatch.pending_between(&device, conv, after, before, limit).await;
            Loaded::Gap(read, found)
        })
    }

    /// A page of the events pass.
    fn load_events(&self, after: Option<String>, limit: usize) -> BoxFuture<Loaded> {
        let (dispatch, device) = (self.gw.dispatch.clone(), self.device.clone());
        Box::pin(async move {
            dispatch.acks().flush().await;
            Loaded::Events(dispatch.pending_events(&device, after.as_deref(), limit).await)
        })
    }

    fn on_page(&mut self, page: Loaded, now: Instant) -> Result<(), Exit> {
        match page {
            Loaded::Messages(Ok(messages)) => {
                let mut finished = None;
                self.apply(|window, limits, out| finished = window.on_page(limits, messages, now, out))?;
                if let Some(took) = finished {
                    metrics::histogram!("dongdong_replay_seconds").record(took.as_secs_f64());
                }
                Ok(())
            }
            Loaded::Messages(Err(e)) => {
                warn!(error = %e, "reading pending messages failed");
                if !self.window.on_page_failed() {
                    return Ok(());
                }
                self.emit(&error_frame(0, e.code, e.message.clone()))?;
                Err(close(CloseCode::TryAgainLater, "could not read pending messages; reconnect later"))
            }
            Loaded::Events(Ok(events)) => {
                self.window.on_events(events.len(), events.last().map(|e| e.key.as_str()));
                for event in &events {
                    self.emit(&event.frame)?;
                }
                metrics::counter!("dongdong_event_replays_total").increment(events.len() as u64);
                Ok(())
            }
            Loaded::Events(Err(e)) => {
                // Still pending: the next connection (or pass) replays them.
                warn!(error = %e, "reading pending receipts and recalls failed");
                self.window.on_events_failed();
                Ok(())
            }
            Loaded::Gap(read, Ok(messages)) => {
                self.apply(|window, limits, out| window.on_gap(limits, &read, messages, now, out))
            }
            Loaded::Gap(read, Err(e)) => {
                warn!(error = %e, "reading the pending messages a live push waits for failed");
                self.window.on_gap_failed(&read, now);
                Ok(())
            }
            Loaded::Reloaded(positions, Ok(messages)) => {
                self.apply(|window, _, out| window.on_reloaded(&positions, messages, out))
            }
            Loaded::Reloaded(_, Err(e)) => {
                // Still in flight: resent when they expire again.
                warn!(error = %e, "reading unacknowledged messages again for a resend failed");
                self.window.on_reload_failed();
                Ok(())
            }
        }
    }

    /// Queues a frame for the client; a full queue is a slow consumer.
    fn emit(&mut self, frame: &Frame) -> Result<(), Exit> {
        queue_frame(&mut self.outbox, encode(self.encoding, frame))
    }
}

impl<S: Socket> Conn<S> {
    /// Handles events until the connection ends or nothing is ready.
    fn poll_open(&mut self, cx: &mut Context<'_>, mut timer: Pin<&mut Sleep>) -> Poll<Exit> {
        for _ in 0..EVENT_BUDGET {
            self.start_page();
            let due = self.timer_deadline();
            if due < timer.deadline() {
                timer.as_mut().reset(due);
            }
            let event = ready!(self.poll_event(cx, timer.as_mut()));
            let now = Instant::now();
            let handled = match event {
                Event::Read(item) => self.on_read(item, now),
                Event::Mail(mail) => self.on_mail(mail, now),
                Event::Page(page) => self.on_page(page, now),
                Event::Answered(reply) => self.emit(&reply),
                Event::AcksQueued => Ok(()),
                Event::Timer => {
                    let handled = self.on_timer(now);
                    timer.as_mut().reset(self.timer_deadline());
                    handled
                }
                Event::WriteFailed => Err(Exit::Gone { resumable: true }),
            };
            if let Err(exit) = handled {
                return Poll::Ready(exit);
            }
        }
        // Busy: let the other connections run, and come back at once.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// The next event. Queued frames are fed to the socket first (cheap:
    /// the socket's buffer writes through only when full) and flushed when
    /// nothing else is ready, or every [`FLUSH_EVERY`] events.
    fn poll_event(&mut self, cx: &mut Context<'_>, timer: Pin<&mut Sleep>) -> Poll<Event> {
        if let Poll::Ready(Err(_)) = self.outbox.poll_feed(cx, &mut self.ws) {
            return Poll::Ready(Event::WriteFailed);
        }
        if self.unflushed_events >= FLUSH_EVERY {
            self.unflushed_events = 0;
            if let Poll::Ready(Err(_)) = self.outbox.poll_flush(cx, &mut self.ws) {
                return Poll::Ready(Event::WriteFailed);
            }
        }
        if let Some(event) = self.poll_sources(cx, timer) {
            self.unflushed_events = self.unflushed_events.saturating_add(1);
            return Poll::Ready(event);
        }
        self.unflushed_events = 0;
        if let Poll::Ready(Err(_)) = self.outbox.poll_flush(cx, &mut self.ws) {
            return Poll::Ready(Event::WriteFailed);
        }
        // Idle: give back what a burst made the queue grow to.
        self.outbox.release_if_empty();
        Poll::Pending
    }

    fn poll_sources(&mut self, cx: &mut Context<'_>, timer: Pin<&mut Sleep>) -> Option<Event> {
        // The socket and the mailbox take turns at going first, so that
        // neither a flooding client nor a flood of pushes starves the other.
        for read in [self.read_first, !self.read_first] {
            if read {
                let acks_fit = self
                    .held_acks
                    .as_ref()
                    .is_none_or(|h| !h.backlog.stops_reading(self.gw.config.limits.max_inflight));
                if self.answering.is_none()
                    && acks_fit
                    && let Poll::Ready(item) = self.ws.poll_next_unpin(cx)
                {
                    self.read_first = false;
                    return Some(Event::Read(item));
                }
            } else if let Poll::Ready(mail) = self.mailbox.poll_recv(cx) {
                self.read_first = true;
                return Some(Event::Mail(mail));
            }
        }
        if let Some(answer) = &mut self.answering
            && let Poll::Ready(reply) = answer.as_mut().poll(cx)
        {
            self.answering = None;
            return Some(Event::Answered(reply));
        }
        if let Some(held) = &mut self.held_acks
            && held.poll_queued(cx, &self.gw, &self.device).is_ready()
        {
            self.held_acks = None;
            return Some(Event::AcksQueued);
        }
        if let Some(paging) = &mut self.page
            && let Some(result) = paging.poll_loaded(cx)
        {
            if paging.is_idle() {
                self.page = None;
            }
            return Some(Event::Page(result));
        }
        timer.poll(cx).is_ready().then_some(Event::Timer)
    }
}

/// A replay page (pending messages or pending events), or the messages of
/// a resend read again.
enum Loaded {
    Messages(dispatch::Result<Vec<Message>>),
    Events(dispatch::Result<Vec<storage::PendingEvent>>),
    Reloaded(Vec<Position>, dispatch::Result<Vec<Message>>),
    Gap(GapRead, dispatch::Result<Vec<Message>>),
}

/// Loads under way for a connection (replay pages, resends read again),
/// boxed: idle connections hold none.
#[derive(Default)]
struct Paging {
    /// The page being loaded (of messages or of events).
    loading: Option<BoxFuture<Loaded>>,
    /// Unacknowledged messages being read again for their resend.
    reloading: Option<BoxFuture<Loaded>>,
    /// Pending messages that held live pushes wait for (cluster mode).
    gap: Option<BoxFuture<Loaded>>,
}

impl Paging {
    fn is_idle(&self) -> bool {
        self.loading.is_none() && self.reloading.is_none() && self.gap.is_none()
    }

    /// A page or a reload that has finished loading.
    fn poll_loaded(&mut self, cx: &mut Context<'_>) -> Option<Loaded> {
        for slot in [&mut self.loading, &mut self.reloading, &mut self.gap] {
            if let Some(future) = slot
                && let Poll::Ready(loaded) = future.as_mut().poll(cx)
            {
                *slot = None;
                return Some(loaded);
            }
        }
        None
    }
}

/// Acks waiting for room in the node's ack queue (what to queue when is
/// the [`AckBacklog`]'s), and the batch being queued.
struct HeldAcks {
    backlog: AckBacklog,
    queuing: Option<BoxFuture<()>>,
}

impl HeldAcks {
    /// Queues what is held, batch by batch; ready when nothing is left.
    fn poll_queued(&mut self, cx: &mut Context<'_>, gw: &Gateway, device: &Arc<DeviceKey>) -> Poll<()> {
        loop {
            if let Some(queuing) = &mut self.queuing {
                ready!(queuing.as_mut().poll(cx));
                self.queuing = None;
                self.backlog.batch_queued();
            }
            let Some(ids) = self.backlog.next_batch() else { return Poll::Ready(()) };
            let (acks, device) = (gw.dispatch.acks().clone(), device.clone());
            self.queuing = Some(Box::pin(async move { acks.ack(device, ids).await }));
        }
    }
}

/// Queues an encoded frame for the client; a full queue is a slow consumer.
fn queue_frame(outbox: &mut Outbox, message: WsMessage) -> Result<(), Exit> {
    if outbox.push(message) {
        metrics::counter!("dongdong_frames_out_total").increment(1);
        Ok(())
    } else {
        metrics::counter!("dongdong_slow_consumers_total").increment(1);
        Err(close(CloseCode::SlowConsumer, "outbound queue full: the client reads too slowly"))
    }
}

/// The `Error` reply to a request that failed.
fn reply_error(req_id: u64, e: &im_core::ClientError) -> Frame {
    error_frame(req_id, e.code, e.message.clone())
}

#[cfg(test)]
mod tests {
    /// Every byte of `Connection` is paid by every idle connection, and
    /// tokio rounds a task up to a multiple of 128 bytes (its cell is
    /// cache-line aligned): 32 bytes of header, 16 of core, the future and 8
    /// of stage, 48 of trailer; the server's `TaskTracker` adds 8 to the
    /// future. 784 is the largest `Connection` whose task fits 896.
    #[test]
    fn a_connection_task_fits_896_bytes() {
        type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;
        let size = std::mem::size_of::<super::Connection<Ws>>();
        assert!(size <= 784, "Connection is {size} bytes: its task no longer fits 896 (see docs/performance.md)");
    }
}
