//! Session resume: a connection that drops (no Close frame from the
//! client: a lost network, an idle timeout) leaves its session parked for
//! `im.resume_window` under the resume token its `AuthOk` gave; the same
//! device signing in again with that token within the window, on this
//! node, takes it back: its delivery window (what it has not acknowledged,
//! resent with the original ids) and its presence subscriptions. Anything
//! else — an unknown or expired token, another device, another node, a
//! restart — is an ordinary sign-in.
//!
//! Bounded: a session with more than [`MAX_UNACKED`] deliveries in flight
//! is not parked, and at most [`MAX_PARKED`] are parked at once (the
//! oldest give way); expired ones are dropped whenever another is parked.
//! No I/O here: the connection parks and takes.

use crate::window::DeliveryWindow;
use im_core::{DeviceKey, Role};
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;
use tokio::time::Instant;

/// A session with more deliveries in flight is not parked: its sign-in
/// replays from storage (ejabberd keeps at most 500 unacked stanzas).
pub const MAX_UNACKED: usize = 500;
/// Sessions parked on one node at once.
pub const MAX_PARKED: usize = 65_536;

/// What a dropped connection leaves for its device to take back.
#[derive(Debug)]
pub struct Parked {
    pub device: Arc<DeviceKey>,
    pub role: Role,
    /// Its deliveries awaiting acks (ids and positions, no messages).
    pub window: DeliveryWindow,
    /// The users whose presence it watched.
    pub watched: Vec<String>,
}

/// The parked sessions of a node, by the id of the connection that left
/// them. A resume token names that connection and carries a keyed hash of
/// it (keys drawn at start-up), so that connections keep no token and a
/// token from before a restart, or made up, names nothing.
pub struct ParkedSessions {
    inner: Mutex<Inner>,
    keys: RandomState,
    /// Told whenever a session is parked.
    parked: Notify,
}

#[derive(Default)]
struct Inner {
    by_conn: HashMap<u64, (Parked, Instant)>,
    /// Connection ids by when their sessions expire, oldest first.
    by_deadline: BTreeMap<(Instant, u64), ()>,
}

impl Default for ParkedSessions {
    fn default() -> Self {
        Self { inner: Mutex::default(), keys: RandomState::new(), parked: Notify::new() }
    }
}

impl ParkedSessions {
    /// The token a resume of connection `conn_id`'s session presents.
    pub fn token(&self, conn_id: u64) -> String {
        format!("{conn_id:016x}{:016x}", self.keys.hash_one(conn_id))
    }

    /// The connection a token names, if this node made it.
    pub fn connection_of(&self, token: &str) -> Option<u64> {
        let (id, mac) = (token.get(..16)?, token.get(16..)?);
        let conn_id = u64::from_str_radix(id, 16).ok()?;
        (mac.len() == 16 && u64::from_str_radix(mac, 16).ok()? == self.keys.hash_one(conn_id)).then_some(conn_id)
    }

    /// Parks connection `conn_id`'s session at `now` until `deadline`;
    /// returns whether it was parked (not when too much is in flight).
    pub fn park(&self, conn_id: u64, session: Parked, now: Instant, deadline: Instant) -> bool {
        if session.window.in_flight() > MAX_UNACKED {
            return false;
        }
        self.expire(now);
        let mut inner = self.lock();
        while inner.by_conn.len() >= MAX_PARKED {
            let Some(((_, oldest), ())) = inner.by_deadline.pop_first() else { break };
            inner.by_conn.remove(&oldest);
        }
        inner.by_deadline.insert((deadline, conn_id), ());
        inner.by_conn.insert(conn_id, (session, deadline));
        metrics::gauge!("dongdong_sessions_parked").set(inner.by_conn.len() as f64);
        drop(inner);
        self.parked.notify_waiters();
        true
    }

    /// Takes connection `conn_id`'s session if it is parked, is `device`'s
    /// and has not expired at `now`. A session is taken once.
    pub fn take(&self, conn_id: u64, device: &DeviceKey, now: Instant) -> Option<Parked> {
        let mut inner = self.lock();
        let (parked, deadline) = inner.by_conn.remove(&conn_id)?;
        inner.by_deadline.remove(&(deadline, conn_id));
        metrics::gauge!("dongdong_sessions_parked").set(inner.by_conn.len() as f64);
        (deadline > now && *parked.device == *device).then_some(parked)
    }

    /// [`take`](Self::take), waiting until `give_up` while `alive` says
    /// the connection is still open: a device often signs in again before
    /// the server has noticed its old connection is gone (the network
    /// changed), and that connection, replaced by the new sign-in, parks
    /// its session on its way out.
    pub async fn take_when_parked(
        &self,
        conn_id: u64,
        device: &DeviceKey,
        alive: impl Fn() -> bool,
        give_up: Instant,
    ) -> Option<Parked> {
        loop {
            let parked = self.parked.notified();
            tokio::pin!(parked);
            parked.as_mut().enable();
            if let Some(session) = self.take(conn_id, device, Instant::now()) {
                return Some(session);
            }
            // A connection parks before it leaves the router: gone and not
            // parked means not parked at all.
            if !alive() {
                return self.take(conn_id, device, Instant::now());
            }
            if tokio::time::timeout_at(give_up, parked).await.is_err() {
                return None;
            }
        }
    }

    /// Forgets the sessions expired at `now`; returns them.
    pub fn expire(&self, now: Instant) -> Vec<Parked> {
        let mut inner = self.lock();
        let mut out = Vec::new();
        while let Some(entry) = inner.by_deadline.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let (_, conn_id) = entry.remove_entry().0;
            if let Some((parked, _)) = inner.by_conn.remove(&conn_id) {
                out.push(parked);
            }
        }
        metrics::gauge!("dongdong_sessions_parked").set(inner.by_conn.len() as f64);
        out
    }

    pub fn len(&self) -> usize {
        self.lock().by_conn.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn session(user: &str) -> Parked {
        let device = Arc::new(DeviceKey::new("t", user, "phone"));
        Parked { device, role: Role::Customer, window: DeliveryWindow::new(Instant::now()), watched: vec![] }
    }

    #[test]
    fn a_token_names_its_connection_on_its_node_only() {
        let (node, other) = (ParkedSessions::default(), ParkedSessions::default());
        let token = node.token(42);
        assert_eq!(token.len(), 32);
        assert_eq!(node.connection_of(&token), Some(42));
        assert_eq!(other.connection_of(&token), None, "another node (or a restart) draws other keys");
        let forged = format!("{:016x}{}", 43, &token[16..]);
        for bad in [forged.as_str(), &token[..31], "", "zz", &format!("{token}0")] {
            assert_eq!(node.connection_of(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_session_is_taken_once_by_its_device_within_its_window() {
        let (p, t0) = (ParkedSessions::default(), Instant::now());
        let window = Duration::from_secs(300);
        assert!(p.park(1, session("amy"), t0, t0 + window));
        let bob = DeviceKey::new("t", "bob", "phone");
        assert!(p.take(1, &bob, t0).is_none(), "another device: no");
        assert!(p.park(1, session("amy"), t0, t0 + window));
        let amy = DeviceKey::new("t", "amy", "phone");
        assert!(p.take(1, &amy, t0 + window - Duration::from_secs(1)).is_some());
        assert!(p.take(1, &amy, t0).is_none(), "taken once");
        assert!(p.park(2, session("amy"), t0, t0 + window));
        assert!(p.take(2, &amy, t0 + window).is_none(), "expired");
        assert!(p.is_empty());
    }

    /// What docs/protocol.md and the closing note say a parked session
    /// costs: its entries in the two maps (the window's map empty), before
    /// the heap of its in-flight ids and watched users.
    #[test]
    fn a_parked_session_costs_a_few_hundred_bytes() {
        use std::mem::size_of;
        let by_conn = size_of::<(u64, (Parked, Instant))>() + 1; // + the table's control byte
        let by_deadline = size_of::<((Instant, u64), ())>() + 8; // + B-tree node overhead, about
        let device = size_of::<DeviceKey>() + 16; // the Arc's counts (shared with nothing once parked)
        let total = by_conn + by_deadline + device;
        assert!(total <= 320, "a parked session is {total} bytes before its heap");
    }

    #[test]
    fn expiry_forgets_sessions_in_deadline_order() {
        let (p, t0) = (ParkedSessions::default(), Instant::now());
        p.park(1, session("a"), t0, t0 + Duration::from_secs(1));
        p.park(2, session("b"), t0, t0 + Duration::from_secs(2));
        assert_eq!(p.expire(t0).len(), 0);
        let gone = p.expire(t0 + Duration::from_secs(1));
        assert_eq!(gone.iter().map(|s| s.device.user.as_str()).collect::<Vec<_>>(), ["a"]);
        assert_eq!(p.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_sign_in_waits_for_the_connection_it_replaces_to_park() {
        let p = Arc::new(ParkedSessions::default());
        let amy = DeviceKey::new("t", "amy", "phone");
        let alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let leaving = {
            let (p, alive) = (p.clone(), alive.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(30)).await;
                let now = Instant::now();
                p.park(7, session("amy"), now, now + Duration::from_secs(300));
                alive.store(false, std::sync::atomic::Ordering::SeqCst);
            })
        };
        let is_alive = || alive.load(std::sync::atomic::Ordering::SeqCst);
        let give_up = Instant::now() + Duration::from_secs(2);
        assert!(p.take_when_parked(7, &amy, is_alive, give_up).await.is_some(), "taken once parked");
        leaving.await.unwrap();
        // Gone without parking: no wait at all; alive and never parking:
        // until the deadline.
        let started = Instant::now();
        assert!(p.take_when_parked(8, &amy, || false, started + Duration::from_secs(2)).await.is_none());
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert!(p.take_when_parked(8, &amy, || true, started + Duration::from_secs(2)).await.is_none());
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }
}
