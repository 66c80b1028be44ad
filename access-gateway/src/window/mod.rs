//! The delivery window of one connection: which messages are out to the
//! device awaiting its `Ack`, when they are sent again, and how the device's
//! pending set is replayed before any live push.
//!
//! No I/O and no clock of its own: the connection feeds it events (a pushed
//! message, a loaded replay page, an ack, a tick) with the current time, and
//! carries out the [`Action`]s it emits and the [`PageRequest`]s it asks for.
//!
//! Invariants (unit and property tests below):
//! - every message delivered is either acked or still in flight;
//! - never two deliveries in flight with one `msg_id` (a resend reuses the slot);
//! - while a replay pass runs, no live push is delivered: pushes that arrive
//!   meanwhile are pending too, so they only mark the pass dirty, and a dirty
//!   pass is followed by another; live delivery starts after a clean pass;
//! - each pass over the messages is followed by a pass over the device's
//!   pending receipts and recalls (its events), page by page; a pass over
//!   the messages that starts meanwhile starts the events over after it;
//! - one page (of messages or of events) is loaded at a time;
//! - expired deliveries are resent in (conversation, seq) order, at most
//!   `max_resends` times, then the connection is closed;
//! - a resend carries the message as stored now (a recall since the first
//!   delivery shows): the window keeps only ids and positions in flight,
//!   never the messages, and asks for them to be read again;
//! - at most `max_inflight` deliveries are in flight: replay pages are sized
//!   to the room left, and a live push beyond it closes the connection;
//! - when more than one node stores messages (`order_across_nodes`), each
//!   conversation still reaches the device in seq order: a live push that
//!   skips ahead waits while the device's pending messages before it are
//!   read (`order`).

use im_core::CloseCode;
use im_core::pb::Message;
pub use order::GapRead;
use order::{Admit, Order};
use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::BuildHasherDefault;
use std::sync::Arc;
use std::time::Duration;
use storage::PendingCursor;
use tokio::time::Instant;

/// Most pending messages asked for in one replay page.
pub const REPLAY_PAGE: usize = 256;
/// Most pending receipts and recalls asked for in one page.
pub const EVENT_PAGE: usize = 128;
/// Failed page reads retried before the connection is closed, each after
/// `REPLAY_RETRY_BACKOFF` times the number of failures so far.
pub const REPLAY_RETRIES: u32 = 4;
pub const REPLAY_RETRY_BACKOFF: Duration = Duration::from_millis(250);

/// The window's bounds and timers.
#[derive(Debug, Clone, Copy)]
pub struct WindowLimits {
    pub max_inflight: usize,
    pub ack_timeout: Duration,
    pub max_resends: u32,
    /// Several nodes store messages (the cluster backend): live pushes of a
    /// conversation can race, and are put back in seq order (`order`).
    pub order_across_nodes: bool,
}

impl WindowLimits {
    /// How often in-flight deliveries are checked for expiry: a delivery is
    /// resent between one and 1.25 ack timeouts after it was sent.
    fn check_every(&self) -> Duration {
        (self.ack_timeout / 4).max(Duration::from_millis(10))
    }
}

/// What the connection must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Write this message as a `Deliver`.
    Deliver { message: Arc<Message>, replay: bool },
    /// Read these messages again, in this order, and answer with
    /// [`DeliveryWindow::on_reloaded`] (or
    /// [`on_reload_failed`](DeliveryWindow::on_reload_failed)): they stayed
    /// unacknowledged for the ack timeout and are sent again as they are now.
    Reload(Vec<Position>),
    /// Close the connection; what was in flight stays pending.
    Close { code: CloseCode, reason: &'static str },
}

/// Where a message is stored: its conversation and seq.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub conversation_id: Box<str>,
    pub seq: u64,
}

/// A replay page to load: up to `limit` pending messages after `cursor`,
/// once `delay` has passed.
#[derive(Debug, Clone, PartialEq)]
pub struct PageRequest {
    pub cursor: Option<PendingCursor>,
    pub limit: usize,
    pub delay: Duration,
}

/// What to load next.
#[derive(Debug, Clone, PartialEq)]
pub enum Load {
    /// A page of the messages pass; answer with [`DeliveryWindow::on_page`]
    /// or [`DeliveryWindow::on_page_failed`].
    Messages(PageRequest),
    /// Up to `limit` pending events after the key `after`; answer with
    /// [`DeliveryWindow::on_events`] or [`DeliveryWindow::on_events_failed`].
    Events { after: Option<String>, limit: usize },
}

/// The pass over a device's pending receipts and recalls.
#[derive(Debug, Default)]
struct EventsPass {
    /// The key of the last event sent (the next page starts after it).
    after: Option<String>,
    /// Size of the page being loaded (a shorter answer ends the pass), if
    /// one is.
    loading: Option<usize>,
}

/// A delivery awaiting its ack: where the message is (to read it again for
/// a resend), not the message.
#[derive(Debug)]
struct Sent {
    at: Position,
    sent_at: Instant,
    resends: u32,
}

/// A replay pass over the pending set.
#[derive(Debug)]
struct Replay {
    cursor: Option<PendingCursor>,
    /// Size of the page being loaded: a shorter answer ends the pass.
    requested: usize,
    loading: bool,
    /// A push arrived (and was left to the store) during this pass.
    dirty: bool,
    /// Consecutive failed page reads.
    failures: u32,
    started: Instant,
}

impl Replay {
    fn new(now: Instant) -> Box<Self> {
        Box::new(Self { cursor: None, requested: 0, loading: false, dirty: false, failures: 0, started: now })
    }
}

/// The in-flight table, by msg_id. Its keys are msg_ids the server made
/// (acks only look up), so a hasher without per-table random state is
/// safe, and it keeps every connection 16 bytes smaller.
type Inflight = HashMap<Box<str>, Sent, BuildHasherDefault<DefaultHasher>>;

/// One connection's deliveries. See the module docs for its invariants. Its
/// limits are passed to each event (they are the server's, not the
/// connection's: no copy per connection).
#[derive(Debug)]
pub struct DeliveryWindow {
    inflight: Inflight,
    /// Boxed: an idle connection holds a null pointer, not the whole pass.
    replay: Option<Box<Replay>>,
    next_check: Option<Instant>,
    /// Resends are being read again ([`Action::Reload`]); no other
    /// reload is asked for until they are.
    reloading: bool,
    /// Boxed, like the messages pass.
    events: Option<Box<EventsPass>>,
    /// Per-conversation order of live pushes (cluster mode only; allocated
    /// on the first push).
    order: Option<Box<Order>>,
}

impl DeliveryWindow {
    /// A window that starts with a replay pass (a connection's first act).
    pub fn new(now: Instant) -> Self {
        Self {
            inflight: Inflight::default(),
            replay: Some(Replay::new(now)),
            next_check: None,
            reloading: false,
            events: None,
            order: None,
        }
    }

    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    pub fn is_replaying(&self) -> bool {
        self.replay.is_some()
    }

    /// Whether every id is a delivery this window has in flight.
    pub fn has_all<'a>(&self, mut msg_ids: impl Iterator<Item = &'a str>) -> bool {
        msg_ids.all(|id| self.inflight.contains_key(id))
    }

    /// Pushes meant for this device may have been lost: replay its pending
    /// set again (now, or after the pass under way).
    pub fn resync(&mut self, now: Instant) {
        match &mut self.replay {
            Some(replay) => replay.dirty = true,
            None => self.replay = Some(Replay::new(now)),
        }
        if let Some(order) = &mut self.order {
            order.replaying();
        }
    }

    /// What to load next, if nothing is being loaded: a page of the
    /// messages pass if one runs and both the window and the writer
    /// (`writer_room` frames) have room, or else a page of the events pass
    /// if one runs and the writer has room. Call it after every event.
    pub fn next_load(&mut self, limits: &WindowLimits, writer_room: usize) -> Option<Load> {
        if self.replay.as_ref().is_some_and(|r| r.loading) || self.events.as_ref().is_some_and(|e| e.loading.is_some())
        {
            return None;
        }
        if let Some(page) = self.next_page(limits, writer_room) {
            return Some(Load::Messages(page));
        }
        let limit = EVENT_PAGE.min(writer_room);
        let events = self.events.as_mut().filter(|_| limit > 0 && self.replay.is_none())?;
        events.loading = Some(limit);
        Some(Load::Events { after: events.after.clone(), limit })
    }

    /// The next page of the messages pass (see [`next_load`](Self::next_load)).
    fn next_page(&mut self, limits: &WindowLimits, writer_room: usize) -> Option<PageRequest> {
        let room = limits.max_inflight.saturating_sub(self.inflight.len()).min(REPLAY_PAGE).min(writer_room);
        let replay = self.replay.as_mut().filter(|r| !r.loading)?;
        if room == 0 {
            return None;
        }
        replay.loading = true;
        replay.requested = room;
        Some(PageRequest { cursor: replay.cursor.clone(), limit: room, delay: REPLAY_RETRY_BACKOFF * replay.failures })
    }

    /// A page of events arrived: `count` events, the last with key
    /// `last_key`. A short page ends the pass.
    pub fn on_events(&mut self, count: usize, last_key: Option<&str>) {
        let Some(events) = &mut self.events else { return };
        let requested = events.loading.take().unwrap_or(0);
        if count < requested {
            self.events = None;
        } else {
            events.after = last_key.map(str::to_string);
        }
    }

    /// A page of events could not be read: the pass ends (they stay
    /// pending for the next pass or connection).
    pub fn on_events_failed(&mut self) {
        self.events = None;
    }

    /// Whether nothing is being replayed (messages or events).
    pub fn is_settled(&self) -> bool {
        self.replay.is_none() && self.events.is_none()
    }

    /// A requested page could not be read. Returns true when the retries
    /// are spent and the connection should close (1013).
    pub fn on_page_failed(&mut self) -> bool {
        let Some(replay) = self.replay.as_mut() else { return false };
        replay.loading = false;
        replay.failures += 1;
        replay.failures > REPLAY_RETRIES
    }

    /// A requested page arrived: delivers what is not already in flight.
    /// Returns how long the replay took when this page ended it.
    pub fn on_page(
        &mut self,
        limits: &WindowLimits,
        messages: Vec<Message>,
        now: Instant,
        out: &mut dyn FnMut(Action),
    ) -> Option<Duration> {
        let replay = self.replay.as_mut()?;
        replay.loading = false;
        replay.failures = 0;
        if let Some(last) = messages.last() {
            replay.cursor = Some(PendingCursor::of(last));
        }
        let mut finished = None;
        if messages.len() < replay.requested {
            if replay.dirty {
                replay.cursor = None;
                replay.dirty = false;
            } else {
                finished = Some(now.saturating_duration_since(replay.started));
                self.replay = None;
                // Every pass over the messages is followed by one over the
                // events (a pass that was under way starts over).
                self.events = Some(Box::default());
            }
        }
        for m in messages {
            if self.inflight.contains_key(m.msg_id.as_str()) {
                continue;
            }
            if limits.order_across_nodes && !self.order.get_or_insert_default().replayed(&m) {
                // Delivered on this connection already; its ack is on the way.
                continue;
            }
            self.deliver(limits, Arc::new(m), true, now, out);
        }
        finished
    }

    /// A message pushed live by the router.
    pub fn on_push(&mut self, limits: &WindowLimits, message: Arc<Message>, now: Instant, out: &mut dyn FnMut(Action)) {
        if let Some(replay) = self.replay.as_mut() {
            // It is pending as well: a later pass sends it in order.
            replay.dirty = true;
            return;
        }
        if self.inflight.contains_key(message.msg_id.as_str()) {
            return;
        }
        if limits.order_across_nodes {
            // What waits counts against the window's room like what is out.
            let room = limits.max_inflight.saturating_sub(self.inflight.len());
            match self.order.get_or_insert_default().admit(&message, room) {
                Admit::Deliver => {}
                Admit::Behind => {
                    metrics::counter!("dongdong_pushes_behind_total").increment(1);
                    return;
                }
                Admit::Held => {
                    metrics::counter!("dongdong_pushes_held_total").increment(1);
                    return;
                }
                Admit::Overflow => {
                    // Everything held is pending: a replay pass sends it in order.
                    metrics::counter!("dongdong_order_replays_total").increment(1);
                    self.resync(now);
                    return;
                }
            }
        }
        self.deliver_live(limits, message, now, out);
    }

    fn deliver_live(
        &mut self,
        limits: &WindowLimits,
        message: Arc<Message>,
        now: Instant,
        out: &mut dyn FnMut(Action),
    ) {
        if self.inflight.len() >= limits.max_inflight {
            out(Action::Close { code: CloseCode::SlowConsumer, reason: "too many unacknowledged deliveries" });
            return;
        }
        self.deliver(limits, message, false, now, out);
    }

    /// The device's own send was stored at `seq` (its `SendAck`): it is not
    /// delivered to this device, so it fills a gap in the conversation.
    pub fn on_sent(&mut self, conversation_id: &str, seq: u64) {
        if let Some(order) = &mut self.order {
            order.sent(conversation_id, seq);
        }
    }

    /// The gap to read before held pushes can go out, if one waits and
    /// nothing is being replayed: see [`on_gap`](Self::on_gap).
    pub fn next_gap(&mut self, limits: &WindowLimits) -> Option<GapRead> {
        let order = self.order.as_mut().filter(|_| self.replay.is_none())?;
        let room = limits.max_inflight.saturating_sub(self.inflight.len()).min(REPLAY_PAGE);
        let mut read = order.next_read(room)?;
        read.delay = REPLAY_RETRY_BACKOFF * order.failures;
        Some(read)
    }

    /// The device's pending messages of a [`GapRead`] arrived: they go out
    /// first, then the held pushes that now follow in order.
    pub fn on_gap(
        &mut self,
        limits: &WindowLimits,
        read: &GapRead,
        messages: Vec<Message>,
        now: Instant,
        out: &mut dyn FnMut(Action),
    ) {
        let Some(order) = self.order.as_mut().filter(|o| o.is_reading(read)) else { return };
        let filled = messages.len();
        let ready = order.on_read(read, messages);
        metrics::counter!("dongdong_order_gap_reads_total").increment(1);
        metrics::counter!("dongdong_order_gap_filled_total").increment(filled as u64);
        for message in ready {
            if self.inflight.contains_key(message.msg_id.as_str()) {
                continue;
            }
            if self.inflight.len() >= limits.max_inflight {
                // No room for the rest: they are pending, and a replay pass
                // sends them in order as acks make room.
                metrics::counter!("dongdong_order_replays_total").increment(1);
                self.resync(now);
                return;
            }
            self.deliver(limits, message, false, now, out);
        }
    }

    /// A [`GapRead`] failed: it is read again after a pause, and after
    /// [`REPLAY_RETRIES`] failures in a row a replay pass takes over.
    pub fn on_gap_failed(&mut self, read: &GapRead, now: Instant) {
        let Some(order) = self.order.as_mut().filter(|o| o.is_reading(read)) else { return };
        order.on_read_failed();
        if order.failures > REPLAY_RETRIES {
            metrics::counter!("dongdong_order_replays_total").increment(1);
            self.resync(now);
        }
    }

    fn deliver(
        &mut self,
        limits: &WindowLimits,
        message: Arc<Message>,
        replay: bool,
        now: Instant,
        out: &mut dyn FnMut(Action),
    ) {
        self.next_check.get_or_insert(now + limits.check_every());
        let at = Position { conversation_id: message.conversation_id.as_str().into(), seq: message.seq };
        self.inflight.insert(message.msg_id.as_str().into(), Sent { at, sent_at: now, resends: 0 });
        out(Action::Deliver { message, replay });
    }

    /// A window taken back by a resumed session (see `crate::resume`).
    /// When the device's pending count (`pending`, counted at sign-in after
    /// its acks were stored) equals what the window has in flight, nothing
    /// arrived while it was away (what is in flight is pending, so equal
    /// counts are equal sets): what is in flight is sent again now, read
    /// again like any resend, and no replay pass runs. Otherwise a replay
    /// pass runs as for a fresh sign-in, resends included, so that each
    /// conversation still arrives in seq order. The pass over its events
    /// runs either way.
    pub fn resume(&mut self, limits: &WindowLimits, pending: u64, now: Instant, out: &mut dyn FnMut(Action)) {
        self.reloading = false;
        self.events = None;
        if pending != self.inflight.len() as u64 {
            *self = Self::new(now);
            return;
        }
        self.replay = None;
        self.events = Some(Box::default());
        if let Some(order) = &mut self.order {
            // The gap read of the old connection is gone with it; equal
            // counts mean nothing was held.
            order.replaying();
        }
        if self.inflight.is_empty() {
            self.next_check = None;
            return;
        }
        self.next_check = Some(now + limits.check_every());
        let mut positions: Vec<Position> = self
            .inflight
            .values_mut()
            .map(|sent| {
                sent.sent_at = now;
                sent.at.clone()
            })
            .collect();
        positions.sort();
        self.reloading = true;
        out(Action::Reload(positions));
    }

    /// The device acked these ids; returns how many were in flight here.
    /// (Ids of deliveries from an earlier connection are not, but they are
    /// still pending in the store, which the caller tells too.)
    pub fn on_ack<'a>(&mut self, msg_ids: impl Iterator<Item = &'a str>) -> usize {
        let before = self.inflight.len();
        for id in msg_ids {
            self.inflight.remove(id);
        }
        if self.inflight.is_empty() {
            self.next_check = None;
            // A burst's table is not kept for a connection gone quiet.
            if self.inflight.capacity() > 64 {
                self.inflight = Inflight::default();
            }
        }
        before - self.inflight.len()
    }

    /// When [`on_tick`](Self::on_tick) has work: `None` while nothing is in flight.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.next_check
    }

    /// Resends what stayed unacknowledged for an ack timeout, in
    /// (conversation, seq) order, by asking for it to be read again
    /// ([`Action::Reload`]); closes the connection when a delivery has been
    /// resent `max_resends` times already.
    pub fn on_tick(&mut self, limits: &WindowLimits, now: Instant, out: &mut dyn FnMut(Action)) {
        if self.next_check.is_none_or(|at| now < at) {
            return;
        }
        self.next_check = (!self.inflight.is_empty()).then(|| now + limits.check_every());
        if self.reloading {
            return;
        }
        let timeout = limits.ack_timeout;
        let mut expired: Vec<&mut Sent> = self.inflight.values_mut().filter(|s| s.sent_at + timeout <= now).collect();
        if expired.is_empty() {
            return;
        }
        if expired.iter().any(|s| s.resends >= limits.max_resends) {
            out(Action::Close { code: CloseCode::AckTimeout, reason: "deliveries stayed unacknowledged" });
            return;
        }
        expired.sort_by(|a, b| a.at.cmp(&b.at));
        let positions = expired
            .into_iter()
            .map(|sent| {
                sent.resends += 1;
                sent.sent_at = now;
                sent.at.clone()
            })
            .collect();
        self.reloading = true;
        out(Action::Reload(positions));
    }

    /// The messages of an [`Action::Reload`], as stored now, in its order:
    /// resends those still in flight (an ack may have come meanwhile). A
    /// message no longer stored is no longer pending either: it leaves the
    /// window.
    pub fn on_reloaded(&mut self, asked: &[Position], messages: Vec<Message>, out: &mut dyn FnMut(Action)) {
        self.reloading = false;
        let found: std::collections::HashSet<(&str, u64)> =
            messages.iter().map(|m| (m.conversation_id.as_str(), m.seq)).collect();
        self.inflight
            .retain(|_, sent| !asked.contains(&sent.at) || found.contains(&(&*sent.at.conversation_id, sent.at.seq)));
        for message in messages {
            if self.inflight.contains_key(message.msg_id.as_str()) {
                out(Action::Deliver { message: Arc::new(message), replay: true });
            }
        }
        if self.inflight.is_empty() {
            self.next_check = None;
        }
    }

    /// The messages of an [`Action::Reload`] could not be read: they stay
    /// in flight and are asked for again when they expire again.
    pub fn on_reload_failed(&mut self) {
        self.reloading = false;
    }
}

mod order;
#[cfg(test)]
mod tests;
