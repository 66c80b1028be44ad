//! Typing signals: handed to the peer's connected devices, never stored and
//! never pending. Each connection remembers the last signal it forwarded to
//! a few peers, so a client that signals on every keystroke forwards at most
//! one "typing" per peer per second, and every change.
//!
//! A connection's signals reach each peer in the order it sent them (a
//! "stopped" never overtakes the "typing" before it): one task per
//! connection forwards them one after another, off the read path. While it
//! waits on the router, newer signals queue behind it, at most one per peer
//! (a newer signal to a peer replaces the one still queued for it), so a
//! stalled router costs a connection one task and [`PEERS`] frames.

use super::Conn;
use super::wire::{Exit, error_frame};
use im_core::ErrorCode;
use im_core::ids::validate_id;
use im_core::pb::{self, Frame, frame::Body};
use session_router::Router;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// A "still typing" is forwarded at most this often per peer.
const REFRESH: Duration = Duration::from_secs(1);
/// Peers remembered per connection; the oldest is forgotten beyond.
const PEERS: usize = 8;

/// What this connection last forwarded to each of its recent peers, and
/// what waits to be forwarded.
#[derive(Default)]
pub(super) struct TypingState {
    peers: Vec<(String, bool, Instant)>,
    outgoing: Arc<Mutex<Outgoing>>,
}

/// Signals on their way to the router, oldest first.
#[derive(Default)]
struct Outgoing {
    /// At most one per peer.
    queue: VecDeque<(String, Arc<Frame>)>,
    /// A task is forwarding the queue.
    forwarding: bool,
}

impl Outgoing {
    /// Queues a signal to `peer`; returns whether a task must be started
    /// to forward it.
    fn offer(&mut self, peer: &str, frame: Arc<Frame>) -> bool {
        match self.queue.iter_mut().find(|(p, _)| p == peer) {
            Some(queued) => queued.1 = frame,
            None => self.queue.push_back((peer.to_string(), frame)),
        }
        !std::mem::replace(&mut self.forwarding, true)
    }

    /// The next signal to forward; `None` ends the task.
    fn next(&mut self) -> Option<(String, Arc<Frame>)> {
        let next = self.queue.pop_front();
        self.forwarding = next.is_some();
        next
    }
}

/// Forwards queued signals one after another until none is left.
async fn forward(outgoing: Arc<Mutex<Outgoing>>, router: Arc<Router>, tenant: String) {
    loop {
        let next = outgoing.lock().map(|mut o| o.next()).unwrap_or(None);
        let Some((peer, frame)) = next else { return };
        router.notify(&tenant, &peer, frame).await;
    }
}

impl TypingState {
    /// Whether a signal goes on: a change, or "typing" again after
    /// [`REFRESH`].
    fn admit(&mut self, peer: &str, typing: bool, now: Instant) -> bool {
        if let Some((_, was, at)) = self.peers.iter_mut().find(|(p, ..)| p == peer) {
            let go = *was != typing || (typing && now.duration_since(*at) >= REFRESH);
            if go {
                (*was, *at) = (typing, now);
            }
            return go;
        }
        if self.peers.len() >= PEERS {
            self.peers.remove(0);
        }
        self.peers.push((peer.to_string(), typing, now));
        true
    }
}

impl<S> Conn<S> {
    pub(super) fn on_typing(&mut self, req_id: u64, t: pb::Typing) -> Result<(), Exit> {
        if let Err(e) = validate_id("to_user", &t.to_user) {
            return self.emit(&error_frame(req_id, ErrorCode::InvalidArgument, e));
        }
        if t.to_user == self.device.user {
            return self.emit(&error_frame(req_id, ErrorCode::InvalidArgument, "typing to yourself"));
        }
        let state = self.typing.get_or_insert_with(Default::default);
        if !state.admit(&t.to_user, t.typing, Instant::now()) {
            metrics::counter!("dongdong_typing_dropped_total").increment(1);
            return Ok(());
        }
        metrics::counter!("dongdong_typing_forwarded_total").increment(1);
        let signal = pb::Typing {
            to_user: String::new(),
            typing: t.typing,
            conversation_id: im_core::conversation_id(&self.device.tenant, &self.device.user, &t.to_user),
            from_user: self.device.user.clone(),
        };
        let frame = Arc::new(Frame { req_id: 0, body: Some(Body::Typing(signal)) });
        let start = state.outgoing.lock().map(|mut o| o.offer(&t.to_user, frame)).unwrap_or(false);
        if start {
            // Best effort: an offline peer simply misses it.
            let (router, tenant) = (self.gw.router.clone(), self.device.tenant.clone());
            tokio::spawn(forward(state.outgoing.clone(), router, tenant));
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn forwards_changes_and_one_refresh_per_second() {
        let mut s = TypingState::default();
        let t0 = Instant::now();
        assert!(s.admit("bob", true, t0));
        assert!(!s.admit("bob", true, t0 + Duration::from_millis(300)), "a keystroke later: dropped");
        assert!(s.admit("bob", true, t0 + Duration::from_millis(1000)), "a second later: a refresh");
        assert!(s.admit("bob", false, t0 + Duration::from_millis(1100)), "stopped: always");
        assert!(!s.admit("bob", false, t0 + Duration::from_millis(1200)), "stopped again: nothing new");
        assert!(s.admit("amy", true, t0), "another peer has its own state");
        for i in 0..PEERS {
            s.admit(&format!("p{i}"), true, t0);
        }
        assert_eq!(s.peers.len(), PEERS, "bounded");
        assert!(s.admit("bob", true, t0 + Duration::from_millis(1300)), "forgotten: forwarded again");
    }

    fn signal(typing: bool) -> Arc<Frame> {
        Arc::new(Frame { req_id: 0, body: Some(Body::Typing(pb::Typing { typing, ..Default::default() })) })
    }

    fn typing_of(frame: &Frame) -> bool {
        matches!(&frame.body, Some(Body::Typing(t)) if t.typing)
    }

    #[test]
    fn one_forwarder_in_send_order_and_the_newest_signal_per_peer() {
        let mut o = Outgoing::default();
        assert!(o.offer("bob", signal(true)), "the first signal starts the forwarder");
        assert!(!o.offer("amy", signal(true)), "one forwarder at a time");
        assert!(!o.offer("bob", signal(false)), "replaces bob's queued 'typing'");
        let (peer, frame) = o.next().unwrap();
        assert_eq!((peer.as_str(), typing_of(&frame)), ("bob", false), "bob's newest signal, in bob's place");
        assert!(!o.offer("bob", signal(true)), "queued behind amy while the forwarder runs");
        assert_eq!(o.next().map(|(p, f)| (p, typing_of(&f))), Some(("amy".to_string(), true)));
        assert_eq!(o.next().map(|(p, f)| (p, typing_of(&f))), Some(("bob".to_string(), true)));
        assert!(o.next().is_none(), "the forwarder ends when the queue is empty");
        assert!(o.offer("bob", signal(false)), "and the next signal starts another");
    }
}
