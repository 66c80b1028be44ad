//! Presence for watchers: who watches whose online state on this node, and
//! the push of changes to them.
//!
//! A connection that opens or closes marks its user. After the coalescing
//! window the node looks the user up and records the state in the
//! registry, which answers whether it changed since any node last recorded
//! it: only changes are announced, so a connection that flaps within the
//! window announces nothing, and a second device coming online announces
//! nothing. Announcements go to every node over the bus (a broadcast
//! channel), or straight to this node's watchers without one. Every
//! `recheck`, the users watched here are looked up again: that catches a
//! node that died (its entries expire) and an announcement the bus lost.

use super::{BUS_PRESENCE, Push, Router, bus_frame};
use dashmap::DashMap;
use im_core::pb::{Frame, PresenceUpdate, frame::Body};
use prost::Message as _;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The bus channel every node listens on for presence changes (not a valid
/// node id, so never a node's own channel).
pub(crate) const PRESENCE_CHANNEL: &str = "*presence";

type UserKey = (Box<str>, Box<str>);

fn key(tenant: &str, user: &str) -> UserKey {
    (tenant.into(), user.into())
}

/// The connections watching one user, and the state they were last told.
#[derive(Default)]
struct Watched {
    conns: Vec<(u64, u64)>,
    online: Option<bool>,
}

#[derive(Default)]
pub(crate) struct Watchers {
    users: DashMap<UserKey, Watched>,
    /// What each connection watches: its tenant and users.
    by_conn: DashMap<u64, (Box<str>, Vec<Box<str>>)>,
    /// Users whose devices changed, since when.
    dirty: Mutex<HashMap<UserKey, Instant>>,
}

/// Why a subscription was refused.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("at most {0} users can be watched per connection")]
    TooMany(usize),
    #[error("no such connection")]
    NoConnection,
    #[error(transparent)]
    Storage(#[from] storage::StorageError),
}

impl Watchers {
    pub(crate) fn mark(&self, tenant: &str, user: &str) {
        self.dirty.lock().unwrap_or_else(|p| p.into_inner()).entry(key(tenant, user)).or_insert_with(Instant::now);
    }

    /// Forgets what a closed connection watched.
    pub(crate) fn drop_conn(&self, conn_id: u64) {
        let Some((_, (tenant, users))) = self.by_conn.remove(&conn_id) else { return };
        for u in users {
            self.remove(&tenant, &u, conn_id);
        }
    }

    fn remove(&self, tenant: &str, user: &str, conn_id: u64) {
        self.users.remove_if_mut(&key(tenant, user), |_, w| {
            w.conns.retain(|(c, _)| *c != conn_id);
            w.conns.is_empty()
        });
    }

    /// The state this node's watchers of the user were last told.
    fn told(&self, tenant: &str, user: &str) -> Option<bool> {
        self.users.get(&key(tenant, user)).and_then(|w| w.online)
    }

    /// The users whose window has passed.
    fn due(&self, window: Duration) -> Vec<UserKey> {
        let now = Instant::now();
        let mut dirty = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
        let due: Vec<UserKey> =
            dirty.iter().filter(|(_, at)| now.duration_since(**at) >= window).map(|(k, _)| k.clone()).collect();
        for k in &due {
            dirty.remove(k);
        }
        due
    }
}

impl Router {
    /// Starts watching `users` for the connection, at once (so that a later
    /// [`Router::unwatch`] of the same connection undoes it): each change
    /// is pushed until `unwatch` or the connection closes. Their state now
    /// is [`Router::presence_now`].
    pub fn watch(&self, conn_id: u64, tenant: &str, users: &[String], max: usize) -> Result<(), WatchError> {
        let epoch = self.local.get(&conn_id).map(|c| c.epoch).ok_or(WatchError::NoConnection)?;
        {
            let mut mine = self.watchers.by_conn.entry(conn_id).or_insert_with(|| (tenant.into(), Vec::new()));
            let mut unique: Vec<&String> = Vec::new();
            for u in users {
                if !mine.1.iter().any(|m| **m == **u) && !unique.contains(&u) {
                    unique.push(u);
                }
            }
            if mine.1.len() + unique.len() > max {
                return Err(WatchError::TooMany(max));
            }
            for u in unique {
                mine.1.push(u.as_str().into());
                self.watchers.users.entry(key(tenant, u)).or_default().conns.push((conn_id, epoch));
            }
        }
        if !self.local.contains_key(&conn_id) {
            // It closed meanwhile, after its subscriptions were dropped.
            self.watchers.drop_conn(conn_id);
            return Err(WatchError::NoConnection);
        }
        Ok(())
    }

    /// The state of `users` now, remembered as what their watchers here
    /// were told.
    pub async fn presence_now(&self, tenant: &str, users: &[String]) -> Result<Vec<PresenceUpdate>, WatchError> {
        let mut out = Vec::with_capacity(users.len());
        for u in users {
            let online = !self.presence.lookup(tenant, u).await?.is_empty();
            let last_seen_ms = if online { 0 } else { self.presence.last_seen(tenant, u).await? };
            if let Some(mut w) = self.watchers.users.get_mut(&key(tenant, u)) {
                w.online = Some(online);
            }
            out.push(PresenceUpdate { user: u.clone(), online, last_seen_ms });
        }
        Ok(out)
    }

    /// The users the connection watches.
    pub fn watched(&self, conn_id: u64) -> Vec<String> {
        self.watchers.by_conn.get(&conn_id).map(|w| w.1.iter().map(|u| u.to_string()).collect()).unwrap_or_default()
    }

    /// Stops watching `users` for the connection.
    pub fn unwatch(&self, conn_id: u64, users: &[String]) {
        let Some(mut mine) = self.watchers.by_conn.get_mut(&conn_id) else { return };
        let tenant = mine.0.clone();
        mine.1.retain(|m| !users.iter().any(|u| **u == **m));
        drop(mine);
        for u in users {
            self.watchers.remove(&tenant, u, conn_id);
        }
    }

    /// Runs the coalescing and the periodic recheck until `shutdown`.
    pub fn start_presence(self: &Arc<Self>, window: Duration, recheck: Duration, shutdown: CancellationToken) {
        let this = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval((window / 4).max(Duration::from_millis(10)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_recheck = Instant::now();
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.cancelled() => break,
                }
                let Some(router) = this.upgrade() else { break };
                for (tenant, user) in router.watchers.due(window) {
                    router.settle(&tenant, &user).await;
                }
                if last_recheck.elapsed() >= recheck {
                    last_recheck = Instant::now();
                    let watched: Vec<UserKey> = router.watchers.users.iter().map(|e| e.key().clone()).collect();
                    for (tenant, user) in watched {
                        router.settle(&tenant, &user).await;
                    }
                }
            }
        });
    }

    /// Looks the user up, records the state and announces it if it changed.
    async fn settle(&self, tenant: &str, user: &str) {
        let online = match self.presence.lookup(tenant, user).await {
            Ok(entries) => !entries.is_empty(),
            Err(e) => return tracing::warn!(error = %e, "presence lookup failed; the recheck will retry"),
        };
        let now = im_core::now_ms();
        match self.presence.record_online(tenant, user, online, now).await {
            Ok(true) => {}
            Ok(false) => {
                // Recorded already (by another node, or earlier): watchers
                // here may still have missed it (a lost announcement).
                if self.watchers.told(tenant, user) != Some(online) {
                    let last_seen_ms =
                        if online { 0 } else { self.presence.last_seen(tenant, user).await.unwrap_or(0) };
                    self.tell_watchers(tenant, PresenceUpdate { user: user.into(), online, last_seen_ms });
                }
                return;
            }
            Err(e) => return tracing::warn!(error = %e, "could not record presence; the recheck will retry"),
        }
        metrics::counter!("dongdong_presence_changes_total").increment(1);
        let update = PresenceUpdate { user: user.into(), online, last_seen_ms: if online { 0 } else { now } };
        match self.bus.get() {
            Some(bus) => {
                let mut body = Vec::with_capacity(tenant.len() + 32);
                body.push(tenant.len().min(255) as u8);
                body.extend_from_slice(&tenant.as_bytes()[..tenant.len().min(255)]);
                update.encode(&mut body).unwrap_or_default();
                if let Err(e) = bus.publish(PRESENCE_CHANNEL, bus_frame(BUS_PRESENCE, 0, 0, &body)).await {
                    tracing::warn!(error = %e, "could not announce a presence change; watchers' rechecks will find it");
                    self.tell_watchers(tenant, update);
                }
            }
            None => self.tell_watchers(tenant, update),
        }
    }

    /// A change announced on the bus.
    pub(crate) fn on_presence_bus(&self, body: &[u8]) {
        let Some((&len, rest)) = body.split_first() else { return };
        let (Some(tenant), Some(update)) = (rest.get(..len as usize), rest.get(len as usize..)) else { return };
        let (Ok(tenant), Ok(update)) = (std::str::from_utf8(tenant), PresenceUpdate::decode(update)) else {
            metrics::counter!("dongdong_bus_malformed_total").increment(1);
            return;
        };
        self.tell_watchers(tenant, update);
    }

    /// Pushes the update to this node's watchers of the user, unless they
    /// were told this state already.
    fn tell_watchers(&self, tenant: &str, update: PresenceUpdate) {
        let conns = {
            let Some(mut w) = self.watchers.users.get_mut(&key(tenant, &update.user)) else { return };
            if w.online == Some(update.online) {
                return;
            }
            w.online = Some(update.online);
            w.conns.clone()
        };
        let frame = Arc::new(Frame { req_id: 0, body: Some(Body::PresenceUpdate(update)) });
        for (conn_id, epoch) in conns {
            self.push_local(conn_id, epoch, Push::Event(frame.clone()));
        }
    }
}
