//! Pushes to other nodes that could not be published (the bus was down or
//! timed out). Each such connection is told to replay its pending set before
//! any later push to its node goes out, so a later message of a conversation
//! never overtakes one whose push was lost; and a flusher retries until the
//! bus takes the news, so a lost push is not left until the next message.
//!
//! Ordering argument: a conversation's pushes are published one at a time
//! (the caller holds the conversation's order), so a lost push is recorded
//! here before the conversation's next push looks. While a node has lost
//! pushes, every push to it waits for the gate, publishes the resyncs first
//! and then itself, on the one publishing connection, so Redis hands the
//! node the resync before the later push.
//!
//! A push can also be lost before it is published: the recipient's presence
//! could not be looked up. Then the user is remembered, and the next lookup
//! that works (the conversation's next push, or the flusher) resyncs every
//! connection it finds before anything is pushed to them.

use std::collections::{HashMap, HashSet};
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
    /// Held while resyncs are published and the push behind them.
    pub gate: tokio::sync::Mutex<()>,
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
        }
        metrics::counter!("dongdong_pushes_lost_total").increment(1);
        self.recorded.notify_one();
    }

    /// Whether `user` was owed a resync (and is no longer: the caller
    /// resyncs the connections it just looked up).
    pub fn forget_user(&self, tenant: &str, user: &str) -> bool {
        let mut users = self.users();
        !users.is_empty() && users.remove(&(tenant.to_string(), user.to_string()))
    }

    /// The users owed a resync.
    pub fn lost_users(&self) -> Vec<(String, String)> {
        self.users().iter().cloned().collect()
    }

    /// Whether pushes to `node` must go through the gate.
    pub fn owes(&self, node: &str) -> bool {
        self.lock().contains_key(node)
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty() && self.users().is_empty()
    }

    /// What `node` (or every node) is owed, without forgetting it: call
    /// [`sent`](Self::sent) once the bus took it.
    pub fn owed(&self, node: Option<&str>) -> Vec<Resync> {
        let nodes = self.lock();
        nodes
            .iter()
            .filter(|(name, _)| node.is_none_or(|n| n == &***name))
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
        let Some(n) = nodes.get_mut(&resync.node) else { return };
        if n.all {
            if n.generation == resync.generation {
                nodes.remove(&resync.node);
            }
            return;
        }
        n.conns.retain(|_, generation| *generation > resync.generation);
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
        assert!(lost.owes("a") && lost.owes("b") && !lost.owes("c"));
        let owed = lost.owed(Some("a"));
        assert_eq!(owed.len(), 1);
        assert_eq!((&owed[0].node, &owed[0].conns[..]), (&a, &[(1, 10)][..]));
        lost.record(&a, (3, 30));
        lost.record(&a, (1, 10));
        lost.sent(&owed[0]);
        let mut again = lost.owed(Some("a"))[0].conns.clone();
        again.sort();
        assert_eq!(again, [(1, 10), (3, 30)], "lost again after the snapshot: still owed");
        lost.sent(&lost.owed(Some("a"))[0]);
        assert!(!lost.owes("a"));
        assert_eq!(lost.owed(None).len(), 1);
        lost.sent(&lost.owed(None)[0]);
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
        let owed = lost.owed(None);
        assert_eq!((owed.len(), owed[0].conns.len()), (1, 0), "an empty list: every connection");
        lost.record(&a, (9, 9));
        lost.sent(&owed[0]);
        assert!(lost.owes("a"), "a loss after the snapshot is still owed");
        lost.sent(&lost.owed(None)[0]);
        assert!(lost.is_empty());
    }
}
