//! Pushes to other nodes that could not be published (the bus was down or
//! timed out). Each such connection is told to replay its pending set before
//! any later push to its node goes out, so a later message of a conversation
//! never overtakes one whose push was lost; and a flusher retries until the
//! bus takes the news, so a lost push is not left until the next message.
//!
//! Ordering argument: a conversation's pushes are published one at a time
//! (the caller holds the conversation's order), so a lost push is recorded
//! here before the conversation's next push looks. A push to a connection
//! that is owed a resync publishes the resync first and waits for Redis to
//! take it, so the node hears the resync before the later push. The record
//! is only forgotten once a resync published after the loss was taken. No
//! lock: pushes of other conversations go on meanwhile (they have no order
//! to keep with the lost one), at worst resyncing a connection twice.
//!
//! A push can also be lost before it is published: the recipient's presence
//! could not be looked up. Then the user is remembered, and the next lookup
//! that works (the conversation's next push, or the flusher) resyncs every
//! connection it finds before anything is pushed to them.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Connections of one node remembered at most; past it the whole node replays.
pub(crate) const MAX_CONNS_PER_NODE: usize = 4096;
/// Users whose presence could not be looked up, remembered at most.
pub(crate) const MAX_USERS: usize = 65_536;

#[derive(Debug, Default)]
struct Node {
    /// (conn_id, epoch) of the connections that missed a push, each with
    /// the generation of its latest loss.
    conns: HashMap<(u64, u64), u64>,
    /// Too many to list: every connection of the node replays.
    all: bool,
    /// Counts the losses recorded for the node.
    generation: u64,
}

/// What one node must be told: the connections to resync, or all of them
/// (an empty list), as of a generation of its losses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resync {
    pub node: Arc<str>,
    pub conns: Vec<(u64, u64)>,
    generation: u64,
}

/// See the module docs.
#[derive(Debug, Default)]
pub(crate) struct LostPushes {
    nodes: Mutex<HashMap<Arc<str>, Node>>,
    /// (tenant, user) whose devices missed a push nobody could route.
    users: Mutex<HashSet<(String, String)>>,
    /// Whether `nodes` / `users` hold anything, kept under their locks: every
    /// push and lookup asks, and nearly always the answer is no, so they
    /// take no lock then. A loss recorded before the conversation's next
    /// push (the caller orders them) is seen by it.
    any_nodes: AtomicBool,
    any_users: AtomicBool,
    /// Wakes the flusher.
    pub recorded: tokio::sync::Notify,
}

impl LostPushes {
    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, Node>> {
        self.nodes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A push to `conn` on `node` was lost.
    pub fn record(&self, node: &Arc<str>, conn: (u64, u64)) {
        {
            let mut nodes = self.lock();
            let n = nodes.entry(node.clone()).or_default();
            n.generation += 1;
            if !n.all {
                n.conns.insert(conn, n.generation);
                if n.conns.len() > MAX_CONNS_PER_NODE {
                    n.conns = HashMap::new();
                    n.all = true;
                }
            }
            self.any_nodes.store(true, Ordering::Release);
        }
        metrics::counter!("dongdong_pushes_lost_total").increment(1);
        self.recorded.notify_one();
    }

    fn users(&self) -> MutexGuard<'_, HashSet<(String, String)>> {
        self.users.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A push to `user`'s devices was lost because they could not be looked up.
    pub fn record_user(&self, tenant: &str, user: &str) {
        {
            let mut users = self.users();
            if users.len() >= MAX_USERS {
                // Beyond it such devices get what they missed on their next
                // connection or bus resubscription, possibly after later
                // messages.
                metrics::counter!("dongdong_pushes_lost_unordered_total").increment(1);
                return;
            }
            if !users.insert((tenant.to_string(), user.to_string())) {
                return;
            }
            self.any_users.store(true, Ordering::Release);
        }
        metrics::counter!("dongdong_pushes_lost_total").increment(1);
        self.recorded.notify_one();
    }

    /// Whether `user` was owed a resync (and is no longer: the caller
    /// resyncs the connections it just looked up).
    pub fn forget_user(&self, tenant: &str, user: &str) -> bool {
        if !self.any_users.load(Ordering::Acquire) {
            return false;
        }
        let mut users = self.users();
        let forgot = users.remove(&(tenant.to_string(), user.to_string()));
        self.any_users.store(!users.is_empty(), Ordering::Release);
        forgot
    }

    /// The users owed a resync.
    pub fn lost_users(&self) -> Vec<(String, String)> {
        self.users().iter().cloned().collect()
    }

    pub fn is_empty(&self) -> bool {
        !self.any_nodes.load(Ordering::Acquire) && !self.any_users.load(Ordering::Acquire)
    }

    /// The resync `conn` on `node` must get before its next push, if any:
    /// the connection alone, or the whole node past the listing bound.
    pub fn owed_to(&self, node: &str, conn: (u64, u64)) -> Option<Resync> {
        if !self.any_nodes.load(Ordering::Acquire) {
            return None;
        }
        let nodes = self.lock();
        let (name, n) = nodes.get_key_value(node)?;
        let conns = match n.all {
            true => Vec::new(),
            false if n.conns.contains_key(&conn) => vec![conn],
            false => return None,
        };
        Some(Resync { node: name.clone(), conns, generation: n.generation })
    }

    /// Everything owed, per node, without forgetting it: call
    /// [`sent`](Self::sent) once the bus took it.
    pub fn owed(&self) -> Vec<Resync> {
        let nodes = self.lock();
        nodes
            .iter()
            .map(|(name, n)| Resync {
                node: name.clone(),
                conns: if n.all { Vec::new() } else { n.conns.keys().copied().collect() },
                generation: n.generation,
            })
            .collect()
    }

    /// The bus took `resync`: forget what it covered, not a loss recorded
    /// since (that push may have been published after the resync).
    pub fn sent(&self, resync: &Resync) {
        let mut nodes = self.lock();
        Self::forget_sent(&mut nodes, resync);
        self.any_nodes.store(!nodes.is_empty(), Ordering::Release);
    }

    fn forget_sent(nodes: &mut HashMap<Arc<str>, Node>, resync: &Resync) {
        let Some(n) = nodes.get_mut(&resync.node) else { return };
        if n.all {
            if n.generation == resync.generation {
                nodes.remove(&resync.node);
            }
            return;
        }
        if resync.conns.is_empty() {
            // Listed since the node left the `all` state: not covered.
            return;
        }
        for conn in &resync.conns {
            if n.conns.get(conn).is_some_and(|generation| *generation <= resync.generation) {
                n.conns.remove(conn);
            }
        }
        if n.conns.is_empty() {
            nodes.remove(&resync.node);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn owed_until_sent_and_what_came_since_stays() {
        let lost = LostPushes::default();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        lost.record(&a, (1, 10));
        lost.record(&b, (2, 20));
        assert!(lost.owed_to("a", (1, 10)).is_some() && lost.owed_to("b", (2, 20)).is_some());
        assert!(lost.owed_to("a", (2, 20)).is_none() && lost.owed_to("c", (1, 10)).is_none());
        let owed = lost.owed_to("a", (1, 10)).unwrap();
        assert_eq!((&owed.node, &owed.conns[..]), (&a, &[(1, 10)][..]));
        lost.record(&a, (3, 30));
        lost.record(&a, (1, 10));
        lost.sent(&owed);
        assert!(lost.owed_to("a", (1, 10)).is_some(), "lost again after the snapshot: still owed");
        lost.sent(&lost.owed_to("a", (1, 10)).unwrap());
        assert!(lost.owed_to("a", (1, 10)).is_none());
        assert!(lost.owed_to("a", (3, 30)).is_some(), "another connection's resync is not covered");
        let all = lost.owed();
        assert_eq!(all.len(), 2);
        for r in &all {
            lost.sent(r);
        }
        assert!(lost.is_empty());
    }

    #[test]
    fn users_are_owed_until_forgotten() {
        let lost = LostPushes::default();
        assert!(!lost.forget_user("t", "bob"));
        lost.record_user("t", "bob");
        assert!(!lost.is_empty());
        assert_eq!(lost.lost_users(), [("t".to_string(), "bob".to_string())]);
        assert!(!lost.forget_user("u", "bob"), "tenants are apart");
        assert!(lost.forget_user("t", "bob"));
        assert!(lost.is_empty());
    }

    #[test]
    fn too_many_connections_resync_the_whole_node() {
        let lost = LostPushes::default();
        let a: Arc<str> = "a".into();
        for i in 0..=MAX_CONNS_PER_NODE as u64 {
            lost.record(&a, (i, 1));
        }
        let owed = lost.owed_to("a", (u64::MAX, 0)).expect("every connection of the node is owed");
        assert!(owed.conns.is_empty(), "an empty list: every connection");
        lost.record(&a, (9, 9));
        lost.sent(&owed);
        assert!(lost.owed_to("a", (9, 9)).is_some(), "a loss after the snapshot is still owed");
        lost.sent(&lost.owed()[0]);
        assert!(lost.is_empty());
    }
}
