//! Typing signals: handed to the peer's connected devices, never stored and
//! never pending. Each connection remembers the last signal it forwarded to
//! a few peers, so a client that signals on every keystroke forwards at most
//! one "typing" per peer per second, and every change.

use super::Conn;
use super::wire::{Exit, error_frame};
use im_core::ErrorCode;
use im_core::ids::validate_id;
use im_core::pb::{self, Frame, frame::Body};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// A "still typing" is forwarded at most this often per peer.
const REFRESH: Duration = Duration::from_secs(1);
/// Peers remembered per connection; the oldest is forgotten beyond.
const PEERS: usize = 8;

/// What this connection last forwarded to each of its recent peers.
#[derive(Default)]
pub(super) struct TypingState {
    peers: Vec<(String, bool, Instant)>,
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
        let tenant = self.device.tenant.clone();
        let signal = pb::Typing {
            to_user: String::new(),
            typing: t.typing,
            conversation_id: im_core::conversation_id(&tenant, &self.device.user, &t.to_user),
            from_user: self.device.user.clone(),
        };
        let frame = Arc::new(Frame { req_id: 0, body: Some(Body::Typing(signal)) });
        let router = self.gw.dispatch.router().clone();
        // Best effort, off the read path: an offline peer simply misses it.
        tokio::spawn(async move { router.notify(&tenant, &t.to_user, frame).await });
        Ok(())
    }
}

#[cfg(test)]
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
}
