//! The delivery window's invariants, unit and property tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use proptest::prelude::*;
use std::collections::{BTreeMap, HashSet, VecDeque};

const LIMITS: WindowLimits =
    WindowLimits { max_inflight: 8, ack_timeout: Duration::from_secs(10), max_resends: 2, order_across_nodes: false };

fn msg(conversation: &str, seq: u64) -> Message {
    Message { msg_id: format!("{conversation}-{seq}"), conversation_id: conversation.into(), seq, ..Default::default() }
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
    let (_, actions) = run(|out| w.on_page(&LIMITS, vec![msg("a", 1), msg("a", 2), msg("b", 1)], now, &mut |a| out(a)));
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
    assert_eq!(actions, [Action::Close { code: CloseCode::AckTimeout, reason: "deliveries stayed unacknowledged" }]);
}

#[test]
fn a_resend_carries_the_message_as_stored_now() {
    let t0 = Instant::now();
    let mut w = live(t0);
    let mut original = msg("a", 1);
    original.content =
        Some(im_core::pb::Content { kind: Some(im_core::pb::content::Kind::Text("my card number is 4111".into())) });
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
fn a_resumed_window_resends_what_is_in_flight_or_replays_when_more_is_pending() {
    let t0 = Instant::now();
    let mut w = live(t0);
    for (c, s) in [("b", 1), ("a", 2), ("a", 1)] {
        run(|out| w.on_push(&LIMITS, Arc::new(msg(c, s)), t0, &mut |a| out(a)));
    }
    w.on_ack(["b-1"].into_iter());
    // Parked, then taken back: the store counts just the two in flight.
    let t1 = t0 + Duration::from_secs(60);
    let (_, actions) = run(|out| w.resume(&LIMITS, 2, t1, &mut |a| out(a)));
    let asked = vec![at("a", 1), at("a", 2)];
    assert_eq!(actions, [Action::Reload(asked.clone())], "in flight: read again, in seq order");
    assert!(!w.is_replaying(), "nothing new: no replay pass");
    assert_eq!(w.next_load(&LIMITS, 300), Some(Load::Events { after: None, limit: EVENT_PAGE }), "events still pass");
    let (_, actions) = run(|out| w.on_reloaded(&asked, vec![msg("a", 1), msg("a", 2)], &mut |a| out(a)));
    assert_eq!(delivered(&actions), [("a-1".into(), true), ("a-2".into(), true)]);
    assert_eq!(w.next_deadline(), Some(t1 + LIMITS.check_every()), "timed from the resume");
    // More pending than in flight (what arrived meanwhile), or fewer (acked
    // elsewhere, deleted): a replay pass as for a fresh sign-in, resends
    // included, so that each conversation stays in seq order.
    for pending in [3, 1] {
        let (_, actions) = run(|out| w.resume(&LIMITS, pending, t1, &mut |a| out(a)));
        assert!(actions.is_empty() && w.is_replaying() && w.in_flight() == 0);
        let page = w.next_page(&LIMITS, 300).unwrap();
        let replayed = vec![msg("a", 1), msg("a", 2), msg("c", 1)];
        let (_, actions) = run(|out| w.on_page(&LIMITS, replayed, t1, &mut |a| out(a)));
        assert_eq!(page.cursor, None);
        assert_eq!(delivered(&actions), [("a-1".into(), true), ("a-2".into(), true), ("c-1".into(), true)]);
    }
    // An empty window resumes with nothing to read again.
    let mut empty = live(t0);
    let (_, actions) = run(|out| empty.resume(&LIMITS, 0, t1, &mut |a| out(a)));
    assert!(actions.is_empty() && empty.next_deadline().is_none());
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
                                .filter(|id| store.pending.values().any(|m| &m.msg_id == *id) && !seen.contains(*id))
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

// ---- Seq order across nodes (`order`) ----

const ORDERED: WindowLimits = WindowLimits { order_across_nodes: true, ..LIMITS };

fn push(w: &mut DeliveryWindow, m: Message, now: Instant) -> Vec<(String, bool)> {
    delivered(&run(|out| w.on_push(&ORDERED, Arc::new(m), now, &mut |a| out(a))).1)
}

fn answer(w: &mut DeliveryWindow, read: &GapRead, found: Vec<Message>, now: Instant) -> Vec<(String, bool)> {
    delivered(&run(|out| w.on_gap(&ORDERED, read, found, now, &mut |a| out(a))).1)
}

fn live_ordered(now: Instant) -> DeliveryWindow {
    let mut w = DeliveryWindow::new(now);
    w.next_page(&ORDERED, 100).unwrap();
    run(|out| w.on_page(&ORDERED, Vec::new(), now, &mut |a| out(a)));
    w
}

#[test]
fn a_push_that_skips_ahead_waits_for_the_pending_messages_before_it() {
    let now = Instant::now();
    let mut w = live_ordered(now);
    // Nothing known of "a" yet: the first push asks what is pending before it.
    assert!(push(&mut w, msg("a", 5), now).is_empty());
    let read = w.next_gap(&ORDERED).unwrap();
    assert_eq!((&*read.conversation_id, read.after, read.before, read.limit), ("a", 0, 5, 8));
    assert!(w.next_gap(&ORDERED).is_none(), "one gap read at a time");
    // Seq 6 arrives meanwhile: held behind 5.
    assert!(push(&mut w, msg("a", 6), now).is_empty());
    let out = answer(&mut w, &read, vec![msg("a", 3), msg("a", 4)], now);
    assert_eq!(out, [("a-3".into(), false), ("a-4".into(), false), ("a-5".into(), false), ("a-6".into(), false)]);
    // The late pushes of 3 and 4 (from the slower node) are dropped.
    assert!(push(&mut w, msg("a", 4), now).is_empty());
    w.on_ack(["a-3", "a-4", "a-5", "a-6"].into_iter());
    assert!(push(&mut w, msg("a", 3), now).is_empty(), "acked already: not delivered twice");
    // Next in line: no read.
    assert_eq!(push(&mut w, msg("a", 7), now), [("a-7".into(), false)]);
    assert!(w.next_gap(&ORDERED).is_none());
    // A gap: 8 is on its way from another node.
    assert!(push(&mut w, msg("a", 9), now).is_empty());
    let read = w.next_gap(&ORDERED).unwrap();
    assert_eq!((read.after, read.before), (7, 9));
    assert_eq!(push(&mut w, msg("a", 8), now), [], "held too: the read decides");
    assert_eq!(answer(&mut w, &read, vec![msg("a", 8)], now), [("a-8".into(), false), ("a-9".into(), false)]);
}

#[test]
fn the_devices_own_sends_fill_gaps_without_a_read() {
    let now = Instant::now();
    let mut w = live_ordered(now);
    assert!(push(&mut w, msg("a", 1), now).is_empty());
    let read = w.next_gap(&ORDERED).unwrap();
    assert_eq!(answer(&mut w, &read, vec![], now), [("a-1".into(), false)]);
    // The device sent 2 and 4; 3 is someone else's, still on its way.
    w.on_sent("a", 2);
    w.on_sent("a", 4);
    assert!(push(&mut w, msg("a", 5), now).is_empty(), "3 is missing");
    let read = w.next_gap(&ORDERED).unwrap();
    assert_eq!((read.after, read.before), (2, 5), "2 was the device's own");
    assert_eq!(answer(&mut w, &read, vec![msg("a", 3)], now), [("a-3".into(), false), ("a-5".into(), false)]);
    w.on_sent("a", 6);
    assert_eq!(push(&mut w, msg("a", 7), now), [("a-7".into(), false)], "6 was the device's own");
    assert!(w.next_gap(&ORDERED).is_none());
}

#[test]
fn held_pushes_give_way_to_a_replay_pass_when_reads_fail_or_too_many_wait() {
    let now = Instant::now();
    let mut w = live_ordered(now);
    assert!(push(&mut w, msg("a", 3), now).is_empty());
    for failures in 1..=REPLAY_RETRIES {
        let read = w.next_gap(&ORDERED).unwrap();
        assert_eq!(read.delay, REPLAY_RETRY_BACKOFF * (failures - 1));
        w.on_gap_failed(&read, now);
        assert!(!w.is_replaying());
    }
    let read = w.next_gap(&ORDERED).unwrap();
    w.on_gap_failed(&read, now);
    assert!(w.is_replaying(), "the retries are spent: a replay pass sends what was held");
    assert!(w.next_gap(&ORDERED).is_none(), "nothing is held any more");
    let page = w.next_page(&ORDERED, 100).unwrap();
    let (_, actions) = run(|out| w.on_page(&ORDERED, vec![msg("a", 2), msg("a", 3)], now, &mut |a| out(a)));
    assert_eq!(delivered(&actions), [("a-2".into(), true), ("a-3".into(), true)]);
    assert!(page.cursor.is_none());
    // A stale answer of the read given up on changes nothing.
    assert!(answer(&mut w, &read, vec![msg("a", 1)], now).is_empty());
    // More held than the window has room for: replay.
    let mut w = live_ordered(now);
    for seq in 0..=ORDERED.max_inflight as u64 {
        assert!(push(&mut w, msg("b", 10 + seq), now).is_empty());
    }
    assert!(w.is_replaying());
    // A gap read that finds more than the window has room for: what does
    // not fit is left to a replay pass (not a slow-consumer close).
    let mut w = live_ordered(now);
    assert!(push(&mut w, msg("c", 20), now).is_empty());
    let read = w.next_gap(&ORDERED).unwrap();
    assert_eq!(read.limit, ORDERED.max_inflight);
    // Pushes of other conversations wait for their own reads meanwhile.
    for i in 0..ORDERED.max_inflight as u64 - 2 {
        assert_eq!(push(&mut w, msg(&format!("d{i}"), 1), now).len(), 0);
    }
    let found: Vec<Message> = (1..20).map(|seq| msg("c", seq)).collect();
    let (_, actions) = run(|out| w.on_gap(&ORDERED, &read, found, now, &mut |a| out(a)));
    assert!(actions.iter().all(|a| matches!(a, Action::Deliver { .. })), "{actions:?}");
    assert_eq!(w.in_flight(), ORDERED.max_inflight);
    assert!(w.is_replaying(), "the rest waits for a replay pass");
}

/// The device's view of a conversation stored by two nodes, each pushing
/// its own messages in seq order, the pushes of the two racing; some
/// messages are the device's own sends.
#[derive(Debug, Clone)]
enum OrderStep {
    /// The next message is stored (by node `node`, or sent by the device).
    Store { node: u8, own: bool },
    /// The oldest push of `node` still travelling arrives.
    Arrive(u8),
    /// The oldest own send's `SendAck` arrives.
    SendAck,
    /// The gap read under way is answered.
    Answer,
    /// The device acks its oldest delivery.
    Ack,
}

fn order_step() -> impl Strategy<Value = OrderStep> {
    prop_oneof![
        4 => (0u8..2, prop::bool::weighted(0.2)).prop_map(|(node, own)| OrderStep::Store { node, own }),
        4 => (0u8..2).prop_map(OrderStep::Arrive),
        1 => Just(OrderStep::SendAck),
        2 => Just(OrderStep::Answer),
        2 => Just(OrderStep::Ack),
    ]
}

fn check_order(steps: Vec<OrderStep>) -> Result<(), TestCaseError> {
    let limits = WindowLimits { max_inflight: 1000, ..ORDERED };
    let now = Instant::now();
    let mut w = DeliveryWindow::new(now);
    w.next_page(&limits, 100).unwrap();
    run(|out| w.on_page(&limits, Vec::new(), now, &mut |a| out(a)));
    let mut stored: Vec<bool> = Vec::new(); // by seq - 1: the device's own send
    let mut travelling: [VecDeque<u64>; 2] = Default::default();
    let mut own_acks: VecDeque<u64> = VecDeque::new();
    let mut pending: BTreeMap<u64, Message> = BTreeMap::new();
    let mut reading: Option<GapRead> = None;
    let mut seen: Vec<u64> = Vec::new();
    let mut unacked: VecDeque<String> = VecDeque::new();
    let on_out = |actions: Vec<Action>, seen: &mut Vec<u64>, unacked: &mut VecDeque<String>| {
        for a in actions {
            match a {
                Action::Deliver { message, .. } => {
                    seen.push(message.seq);
                    unacked.push_back(message.msg_id.clone());
                }
                other => return Err(TestCaseError::fail(format!("unexpected {other:?}"))),
            }
        }
        Ok(())
    };
    let drain = steps.len();
    let tail = (0..4 * (drain + 8)).map(|i| match i % 4 {
        0 => OrderStep::Arrive(0),
        1 => OrderStep::Arrive(1),
        2 => OrderStep::SendAck,
        _ => OrderStep::Answer,
    });
    for step in steps.into_iter().chain(tail) {
        match step {
            OrderStep::Store { node, own } => {
                stored.push(own);
                let seq = stored.len() as u64;
                if own {
                    own_acks.push_back(seq);
                } else {
                    pending.insert(seq, msg("a", seq));
                    travelling[node as usize].push_back(seq);
                }
            }
            OrderStep::Arrive(node) => {
                if let Some(seq) = travelling[node as usize].pop_front() {
                    let (_, actions) = run(|out| w.on_push(&limits, Arc::new(msg("a", seq)), now, &mut |a| out(a)));
                    on_out(actions, &mut seen, &mut unacked)?;
                }
            }
            OrderStep::SendAck => {
                if let Some(seq) = own_acks.pop_front() {
                    w.on_sent("a", seq);
                }
            }
            OrderStep::Answer => {
                if let Some(read) = reading.take() {
                    let found: Vec<Message> =
                        pending.range(read.after + 1..read.before).map(|(_, m)| m.clone()).take(read.limit).collect();
                    let (_, actions) = run(|out| w.on_gap(&limits, &read, found, now, &mut |a| out(a)));
                    on_out(actions, &mut seen, &mut unacked)?;
                }
            }
            OrderStep::Ack => {
                if let Some(id) = unacked.pop_front() {
                    let seq: u64 = id.trim_start_matches("a-").parse().unwrap();
                    pending.remove(&seq);
                    w.on_ack(std::iter::once(id.as_str()));
                }
            }
        }
        if reading.is_none() {
            reading = w.next_gap(&limits);
        }
        prop_assert!(seen.windows(2).all(|p| p[0] < p[1]), "seq order: {seen:?}");
        prop_assert!(!w.is_replaying(), "no fallback needed within the bounds");
    }
    let expected: Vec<u64> = (1..=stored.len() as u64).filter(|s| !stored[*s as usize - 1]).collect();
    prop_assert_eq!(seen, expected, "every message once, in seq order");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn pushes_racing_from_two_nodes_reach_the_device_in_seq_order(steps in prop::collection::vec(order_step(), 1..150)) {
        check_order(steps)?;
    }
}
