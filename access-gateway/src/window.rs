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
//!   to the room left, and a live push beyond it closes the connection.

use im_core::CloseCode;
use im_core::pb::Message;
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
            if !self.inflight.contains_key(m.msg_id.as_str()) {
                self.deliver(limits, Arc::new(m), true, now, out);
            }
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
        if self.inflight.len() >= limits.max_inflight {
            out(Action::Close { code: CloseCode::SlowConsumer, reason: "too many unacknowledged deliveries" });
            return;
        }
        self.deliver(limits, message, false, now, out);
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, HashSet};

    const LIMITS: WindowLimits = WindowLimits { max_inflight: 8, ack_timeout: Duration::from_secs(10), max_resends: 2 };

    fn msg(conversation: &str, seq: u64) -> Message {
        Message {
            msg_id: format!("{conversation}-{seq}"),
            conversation_id: conversation.into(),
            seq,
            ..Default::default()
        }
    }

    fn run<T>(f: impl FnOnce(&mut dyn FnMut(Action)) -> T) -> (T, Vec<Action>) {
        let mut actions = Vec::new();
        let t = f(&mut |a| actions.push(a));
        (t, actions)
    }

    fn delivered(actions: &[Action]) -> Vec<(String, bool)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Deliver { message, replay } => Some((message.msg_id.clone(), *replay)),
                Action::Close { .. } | Action::Reload(_) => None,
            })
            .collect()
    }

    /// A window whose first replay pass found nothing.
    fn live(now: Instant) -> DeliveryWindow {
        let mut w = DeliveryWindow::new(now);
        let page = w.next_page(&LIMITS, 100).unwrap();
        assert_eq!((page.cursor, page.limit, page.delay), (None, 8, Duration::ZERO));
        let (finished, actions) = run(|out| w.on_page(&LIMITS, Vec::new(), now, &mut |a| out(a)));
        assert_eq!((finished, actions), (Some(Duration::ZERO), vec![]));
        w
    }

    #[test]
    fn replay_pages_fit_the_window_and_the_writer() {
        let now = Instant::now();
        let mut w = DeliveryWindow::new(now);
        assert_eq!(w.next_page(&LIMITS, 3).unwrap().limit, 3, "the writer has room for 3");
        assert!(w.next_page(&LIMITS, 100).is_none(), "one page at a time");
        let (_, actions) =
            run(|out| w.on_page(&LIMITS, vec![msg("a", 1), msg("a", 2), msg("b", 1)], now, &mut |a| out(a)));
        assert_eq!(delivered(&actions), [("a-1".into(), true), ("a-2".into(), true), ("b-1".into(), true)]);
        let page = w.next_page(&LIMITS, 100).unwrap();
        assert_eq!((page.cursor.unwrap().msg_id, page.limit), ("b-1".to_string(), 5));
        let (finished, _) = run(|out| w.on_page(&LIMITS, vec![msg("b", 2)], now, &mut |a| out(a)));
        assert!(finished.is_some(), "a short page ends the pass");
        assert!(!w.is_replaying());
        assert_eq!(w.in_flight(), 4);
    }

    #[test]
    fn a_push_during_replay_waits_for_another_pass() {
        let now = Instant::now();
        let mut w = DeliveryWindow::new(now);
        w.next_page(&LIMITS, 100).unwrap();
        let (_, actions) = run(|out| w.on_push(&LIMITS, Arc::new(msg("a", 2)), now, &mut |a| out(a)));
        assert!(actions.is_empty(), "not delivered ahead of the replay");
        let (finished, actions) = run(|out| w.on_page(&LIMITS, vec![msg("a", 1)], now, &mut |a| out(a)));
        assert_eq!((finished, delivered(&actions)), (None, vec![("a-1".into(), true)]));
        let page = w.next_page(&LIMITS, 100).unwrap();
        assert_eq!(page.cursor, None, "the dirty pass starts over");
        let (finished, actions) = run(|out| w.on_page(&LIMITS, vec![msg("a", 1), msg("a", 2)], now, &mut |a| out(a)));
        assert_eq!(delivered(&actions), [("a-2".into(), true)], "a-1 is still in flight");
        assert!(finished.is_some());
        let (_, actions) = run(|out| w.on_push(&LIMITS, Arc::new(msg("a", 3)), now, &mut |a| out(a)));
        assert_eq!(delivered(&actions), [("a-3".into(), false)]);
    }

    fn at(conversation: &str, seq: u64) -> Position {
        Position { conversation_id: conversation.into(), seq }
    }

    #[test]
    fn resends_read_again_in_seq_order_then_closes() {
        let t0 = Instant::now();
        let mut w = live(t0);
        for (c, s) in [("b", 1), ("a", 2), ("a", 1)] {
            run(|out| w.on_push(&LIMITS, Arc::new(msg(c, s)), t0, &mut |a| out(a)));
        }
        assert_eq!(w.on_ack(["b-1"].into_iter()), 1);
        assert_eq!(w.next_deadline(), Some(t0 + Duration::from_millis(2500)));
        let (_, early) = run(|out| w.on_tick(&LIMITS, t0 + Duration::from_secs(9), &mut |a| out(a)));
        assert!(early.is_empty());
        assert_eq!(w.next_deadline(), Some(t0 + Duration::from_millis(11_500)), "checked every quarter timeout");
        let t1 = t0 + Duration::from_millis(11_500);
        let (_, actions) = run(|out| w.on_tick(&LIMITS, t1, &mut |a| out(a)));
        let asked = vec![at("a", 1), at("a", 2)];
        assert_eq!(actions, [Action::Reload(asked.clone())], "read again, in seq order");
        let (_, waiting) = run(|out| w.on_tick(&LIMITS, t1 + Duration::from_secs(10), &mut |a| out(a)));
        assert!(waiting.is_empty(), "one reload at a time");
        let (_, actions) = run(|out| w.on_reloaded(&asked, vec![msg("a", 1), msg("a", 2)], &mut |a| out(a)));
        assert_eq!(delivered(&actions), [("a-1".into(), true), ("a-2".into(), true)]);
        let (_, actions) = run(|out| w.on_tick(&LIMITS, t1 + Duration::from_secs(20), &mut |a| out(a)));
        assert_eq!(actions, [Action::Reload(asked.clone())], "second resend");
        w.on_reload_failed();
        let (_, actions) = run(|out| w.on_tick(&LIMITS, t1 + Duration::from_secs(30), &mut |a| out(a)));
        assert_eq!(
            actions,
            [Action::Close { code: CloseCode::AckTimeout, reason: "deliveries stayed unacknowledged" }]
        );
    }

    #[test]
    fn a_resend_carries_the_message_as_stored_now() {
        let t0 = Instant::now();
        let mut w = live(t0);
        let mut original = msg("a", 1);
        original.content = Some(im_core::pb::Content {
            kind: Some(im_core::pb::content::Kind::Text("my card number is 4111".into())),
        });
        run(|out| w.on_push(&LIMITS, Arc::new(original.clone()), t0, &mut |a| out(a)));
        run(|out| w.on_push(&LIMITS, Arc::new(msg("a", 2)), t0, &mut |a| out(a)));
        run(|out| w.on_push(&LIMITS, Arc::new(msg("a", 3)), t0, &mut |a| out(a)));
        let t1 = t0 + LIMITS.ack_timeout;
        let (_, actions) = run(|out| w.on_tick(&LIMITS, t1, &mut |a| out(a)));
        let asked = vec![at("a", 1), at("a", 2), at("a", 3)];
        assert_eq!(actions, [Action::Reload(asked.clone())]);
        // Meanwhile: the first was recalled, the second acked, the third is
        // no longer stored.
        w.on_ack(["a-2"].into_iter());
        let recalled = Message { content: None, recalled_by: "alice".into(), ..original };
        let (_, actions) = run(|out| w.on_reloaded(&asked, vec![recalled.clone(), msg("a", 2)], &mut |a| out(a)));
        assert_eq!(actions, [Action::Deliver { message: Arc::new(recalled), replay: true }]);
        assert_eq!(w.in_flight(), 1, "what is no longer stored leaves the window");
    }

    #[test]
    fn a_full_window_closes_on_a_live_push() {
        let now = Instant::now();
        let mut w = live(now);
        for s in 1..=8 {
            run(|out| w.on_push(&LIMITS, Arc::new(msg("a", s)), now, &mut |a| out(a)));
        }
        let (_, again) = run(|out| w.on_push(&LIMITS, Arc::new(msg("a", 8)), now, &mut |a| out(a)));
        assert!(again.is_empty(), "a push of an id in flight is not sent twice");
        let (_, actions) = run(|out| w.on_push(&LIMITS, Arc::new(msg("a", 9)), now, &mut |a| out(a)));
        assert!(matches!(actions[..], [Action::Close { code: CloseCode::SlowConsumer, .. }]));
    }

    #[test]
    fn each_messages_pass_is_followed_by_an_events_pass() {
        let now = Instant::now();
        let mut w = DeliveryWindow::new(now);
        assert!(matches!(w.next_load(&LIMITS, 300), Some(Load::Messages(_))));
        assert!(w.next_load(&LIMITS, 300).is_none(), "one load at a time");
        run(|out| w.on_page(&LIMITS, Vec::new(), now, &mut |a| out(a)));
        assert!(!w.is_settled(), "the events pass follows");
        assert_eq!(w.next_load(&LIMITS, 300), Some(Load::Events { after: None, limit: EVENT_PAGE }));
        assert!(w.next_load(&LIMITS, 300).is_none(), "one load at a time");
        w.on_events(EVENT_PAGE, Some("k-128"));
        let after = Some("k-128".to_string());
        assert_eq!(w.next_load(&LIMITS, 10), Some(Load::Events { after, limit: 10 }), "sized to the writer's room");
        // Pushes were lost meanwhile: the messages go first, then the events
        // start over.
        w.resync(now);
        w.on_events(10, Some("k-138"));
        assert!(matches!(w.next_load(&LIMITS, 300), Some(Load::Messages(_))), "messages before events");
        run(|out| w.on_page(&LIMITS, Vec::new(), now, &mut |a| out(a)));
        assert_eq!(w.next_load(&LIMITS, 300), Some(Load::Events { after: None, limit: EVENT_PAGE }));
        w.on_events(3, Some("x"));
        assert!(w.is_settled() && w.next_load(&LIMITS, 300).is_none(), "a short page ends the pass");
        // A page that fails ends the pass too (the events stay pending).
        w.resync(now);
        assert!(matches!(w.next_load(&LIMITS, 300), Some(Load::Messages(_))));
        run(|out| w.on_page(&LIMITS, Vec::new(), now, &mut |a| out(a)));
        assert!(matches!(w.next_load(&LIMITS, 300), Some(Load::Events { .. })));
        w.on_events_failed();
        assert!(w.is_settled());
    }

    #[test]
    fn failed_pages_back_off_then_give_up() {
        let now = Instant::now();
        let mut w = DeliveryWindow::new(now);
        for failures in 0..REPLAY_RETRIES {
            assert_eq!(w.next_page(&LIMITS, 100).unwrap().delay, REPLAY_RETRY_BACKOFF * failures);
            assert!(!w.on_page_failed());
        }
        w.next_page(&LIMITS, 100).unwrap();
        assert!(w.on_page_failed(), "retries spent");
    }

    #[test]
    fn resync_after_replay_starts_a_new_pass() {
        let now = Instant::now();
        let mut w = live(now);
        w.resync(now);
        assert!(w.is_replaying());
        assert_eq!(w.next_page(&LIMITS, 100).unwrap().cursor, None);
    }

    /// What the test does next.
    #[derive(Debug, Clone)]
    enum Step {
        /// A new message in conversation `conv` is stored and pushed (or
        /// stored only: the push was lost).
        Push {
            conv: u8,
            lost: bool,
        },
        /// The device acks the `n`th oldest of what it was sent (mod count).
        Ack(usize),
        /// The store answers the page request, or fails it.
        Page {
            fail: bool,
        },
        /// The store answers the reload request, or fails it.
        Reload {
            fail: bool,
        },
        /// Time passes.
        Wait(u64),
        Resync,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0u8..3, prop::bool::weighted(0.1)).prop_map(|(conv, lost)| Step::Push { conv, lost }),
            3 => (0usize..16).prop_map(Step::Ack),
            3 => prop::bool::weighted(0.1).prop_map(|fail| Step::Page { fail }),
            2 => prop::bool::weighted(0.2).prop_map(|fail| Step::Reload { fail }),
            1 => (1u64..6000).prop_map(Step::Wait),
            1 => Just(Step::Resync),
        ]
    }

    /// The device's pending set in the store, as the window's pages see it.
    #[derive(Default)]
    struct Store {
        pending: BTreeMap<(String, u64), Message>,
        next_seq: HashMap<String, u64>,
    }

    impl Store {
        /// Every message is kept (acked or not), so what is read again is
        /// the stored message.
        fn reload(&self, asked: &[Position]) -> Vec<Message> {
            asked.iter().map(|p| msg(&p.conversation_id, p.seq)).collect()
        }

        fn page(&self, req: &PageRequest) -> Vec<Message> {
            let after = req.cursor.as_ref().map(|c| (c.conversation_id.clone(), c.seq));
            self.pending
                .iter()
                .filter(|(k, _)| after.as_ref().is_none_or(|a| *k > a))
                .take(req.limit)
                .map(|(_, m)| m.clone())
                .collect()
        }
    }

    /// Checks the invariants after every step of a random run, then lets
    /// the device ack everything and checks that every pending message got
    /// through.
    fn check(initial: u8, steps: Vec<Step>) -> Result<(), TestCaseError> {
        let mut now = Instant::now();
        let mut store = Store::default();
        for i in 0..initial {
            let conv = format!("c{}", i % 3);
            let seq = store.next_seq.entry(conv.clone()).or_insert(0);
            *seq += 1;
            store.pending.insert((conv.clone(), *seq), msg(&conv, *seq));
        }
        let at_connect: HashSet<String> = store.pending.values().map(|m| m.msg_id.clone()).collect();
        let mut w = DeliveryWindow::new(now);
        let mut page: Option<PageRequest> = None;
        // What the device holds unacked, oldest first; and every delivery.
        let mut unacked: Vec<String> = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        let mut last_first_seq: HashMap<String, u64> = HashMap::new();
        let mut live_started = false;
        let mut closed = false;
        let mut reload: Option<Vec<Position>> = None;
        let mut apply = |actions: Vec<Action>,
                         w: &DeliveryWindow,
                         store: &Store,
                         unacked: &mut Vec<String>,
                         reload: &mut Option<Vec<Position>>|
         -> Result<bool, TestCaseError> {
            let mut resent: Vec<(String, u64)> = Vec::new();
            for a in actions {
                match a {
                    Action::Close { .. } => return Ok(true),
                    Action::Reload(asked) => {
                        prop_assert!(reload.is_none(), "one reload at a time");
                        prop_assert!(asked.is_sorted(), "resends in seq order");
                        *reload = Some(asked);
                    }
                    Action::Deliver { message, replay } => {
                        let id = message.msg_id.clone();
                        if !replay {
                            prop_assert!(!w.is_replaying(), "live delivery during a replay pass");
                            if !live_started {
                                live_started = true;
                                let missing: Vec<_> = at_connect
                                    .iter()
                                    .filter(|id| {
                                        store.pending.values().any(|m| &m.msg_id == *id) && !seen.contains(*id)
                                    })
                                    .collect();
                                prop_assert!(missing.is_empty(), "live before replay of {missing:?}");
                            }
                        }
                        if seen.insert(id.clone()) {
                            let last = last_first_seq.entry(message.conversation_id.clone()).or_insert(0);
                            prop_assert!(message.seq > *last, "first deliveries of a conversation in seq order");
                            *last = message.seq;
                        } else {
                            if let Some(prev) = resent.last() {
                                prop_assert!(
                                    prev <= &(message.conversation_id.clone(), message.seq),
                                    "resends in seq order"
                                );
                            }
                            resent.push((message.conversation_id.clone(), message.seq));
                        }
                        if !unacked.contains(&id) {
                            unacked.push(id);
                        }
                    }
                }
            }
            Ok(false)
        };
        for s in steps {
            let mut actions = Vec::new();
            let mut out = |a| actions.push(a);
            match s {
                Step::Push { conv, lost } => {
                    let conv = format!("c{conv}");
                    let seq = store.next_seq.entry(conv.clone()).or_insert(0);
                    *seq += 1;
                    let m = msg(&conv, *seq);
                    store.pending.insert((conv, *seq), m.clone());
                    if !lost {
                        w.on_push(&LIMITS, Arc::new(m), now, &mut out);
                    } else {
                        w.resync(now);
                    }
                }
                Step::Ack(n) if !unacked.is_empty() => {
                    let id = unacked.remove(n % unacked.len());
                    store.pending.retain(|_, m| m.msg_id != id);
                    w.on_ack(std::iter::once(id.as_str()));
                }
                Step::Ack(_) => {}
                Step::Page { fail } => {
                    if let Some(req) = page.take() {
                        if fail {
                            if w.on_page_failed() {
                                closed = true;
                            }
                        } else {
                            w.on_page(&LIMITS, store.page(&req), now, &mut out);
                        }
                    }
                }
                Step::Reload { fail } => {
                    if let Some(asked) = reload.take() {
                        if fail {
                            w.on_reload_failed();
                        } else {
                            w.on_reloaded(&asked, store.reload(&asked), &mut out);
                        }
                    }
                }
                Step::Wait(ms) => {
                    now += Duration::from_millis(ms);
                    w.on_tick(&LIMITS, now, &mut out);
                }
                Step::Resync => w.resync(now),
            }
            if apply(actions, &w, &store, &mut unacked, &mut reload)? || closed {
                return Ok(());
            }
            if page.is_none() {
                page = w.next_page(&LIMITS, 1000);
            }
            prop_assert!(w.in_flight() <= LIMITS.max_inflight);
            let in_flight: HashSet<&str> = w.inflight.keys().map(|k| &**k).collect();
            let held: HashSet<&str> = unacked.iter().map(String::as_str).collect();
            prop_assert_eq!(in_flight, held, "delivered = acked + in flight");
        }
        // The device now acks everything it gets; the store answers every
        // page. Everything pending must get through.
        for _ in 0..1000 {
            for id in unacked.drain(..) {
                store.pending.retain(|_, m| m.msg_id != id);
                w.on_ack(std::iter::once(id.as_str()));
            }
            if store.pending.is_empty() {
                return Ok(());
            }
            let mut actions = Vec::new();
            if let Some(asked) = reload.take() {
                w.on_reloaded(&asked, store.reload(&asked), &mut |a| actions.push(a));
            }
            match page.take().or_else(|| w.next_page(&LIMITS, 1000)) {
                Some(req) => {
                    w.on_page(&LIMITS, store.page(&req), now, &mut |a| actions.push(a));
                }
                None => {
                    // Nothing being replayed, yet something is pending: the
                    // pushes were lost and only a resync finds them.
                    w.resync(now);
                }
            }
            if apply(actions, &w, &store, &mut unacked, &mut reload)? {
                return Ok(());
            }
        }
        prop_assert!(false, "pending messages never got through: {:?}", store.pending.keys());
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn window_invariants(initial in 0u8..20, steps in prop::collection::vec(step(), 1..120)) {
            check(initial, steps)?;
        }
    }
}
