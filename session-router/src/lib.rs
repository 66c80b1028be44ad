//! The session router: the table of this node's live connections, their
//! registration in the presence registry, and the push of a stored message
//! straight to every connection of its recipients. No polling anywhere: a
//! connection receives what the router hands it.
//!
//! Invariants:
//! - A push never blocks. A connection whose mailbox is full is a slow
//!   consumer and is closed; its messages stay pending in storage.
//! - A push to a stale or unknown connection loses nothing: the message is
//!   pending for the device and is replayed on its next connection.
//! - Closing a connection removes only its own presence entry (epoch compare).
//! - A push that could not be routed (publish or lookup failed) makes the
//!   device's connection replay before any later push reaches it, so a later
//!   message never overtakes it (`lost.rs`).

use dashmap::DashMap;
use im_core::CloseCode;
use im_core::pb::{Frame, Message};
use prost::Message as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use storage::{DeviceKey, NodeBus, PresenceEntry, PresenceRegistry, StorageError};
use tokio_util::sync::CancellationToken;

mod lost;
mod mailbox;
mod watch;

pub use mailbox::{KickReason, Mail, Mailbox, Push, Refused};
pub use watch::WatchError;

/// What the router keeps per local connection.
struct LocalConn {
    device: Arc<DeviceKey>,
    epoch: u64,
    mailbox: Arc<Mailbox>,
}

/// A registered connection: its id, epoch and mailbox (pushes, kicks and
/// resync requests). Unregister it with [`Router::unregister`].
pub struct Registration {
    pub conn_id: u64,
    pub epoch: u64,
    pub mailbox: Arc<Mailbox>,
}

/// Routes messages to connections.
pub struct Router {
    node_id: Arc<str>,
    presence: Arc<dyn PresenceRegistry>,
    local: DashMap<u64, LocalConn>,
    next_conn_id: AtomicU64,
    last_epoch: AtomicU64,
    delivery_queue: usize,
    bus: OnceLock<Arc<dyn NodeBus>>,
    /// Pushes to other nodes that were lost, to resync before the next.
    lost: Arc<lost::LostPushes>,
    watchers: watch::Watchers,
}

/// What travels on the node bus: `[kind][conn_id: 8 bytes BE][epoch: 8 bytes BE][body]`.
const BUS_DELIVER: u8 = 1;
const BUS_KICK_REPLACED: u8 = 2;
const BUS_EVENT: u8 = 3;
const BUS_PRESENCE: u8 = 4;
const BUS_LOGOUT: u8 = 5;
/// Replay the pending sets of the connections listed in the body (conn_id
/// and epoch, 8 bytes BE each), or of every connection when it is empty.
const BUS_RESYNC: u8 = 6;

fn bus_frame(kind: u8, conn_id: u64, epoch: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(17 + body.len());
    out.push(kind);
    out.extend_from_slice(&conn_id.to_be_bytes());
    out.extend_from_slice(&epoch.to_be_bytes());
    out.extend_from_slice(body);
    out
}

impl Router {
    /// `delivery_queue` bounds each connection's queue of pushed messages.
    pub fn new(node_id: impl Into<Arc<str>>, presence: Arc<dyn PresenceRegistry>, delivery_queue: usize) -> Self {
        Self {
            node_id: node_id.into(),
            presence,
            local: DashMap::new(),
            next_conn_id: AtomicU64::new(1),
            last_epoch: AtomicU64::new(0),
            delivery_queue: delivery_queue.max(1),
            bus: OnceLock::new(),
            lost: Default::default(),
            watchers: Default::default(),
        }
    }

    /// Joins a cluster: pushes for connections on other nodes go over `bus`,
    /// and what other nodes publish to this node is handed to its
    /// connections until `shutdown`.
    pub async fn attach_bus(
        self: &Arc<Self>,
        bus: Arc<dyn NodeBus>,
        shutdown: CancellationToken,
    ) -> Result<(), StorageError> {
        let mut inbox = bus.subscribe(&self.node_id).await?;
        let mut presence = bus.subscribe(watch::PRESENCE_CHANNEL).await?;
        let _ = self.bus.set(bus);
        tokio::spawn(flush_lost_pushes(Arc::downgrade(self), self.lost.clone(), shutdown.clone()));
        let this = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let payload = tokio::select! {
                    p = inbox.recv() => match p { Some(p) => p, None => break },
                    // A resubscription of the broadcast needs no resync:
                    // the rechecks find what it missed.
                    p = presence.recv() => match p { Some(p) if !p.is_empty() => p, Some(_) => continue, None => break },
                    _ = shutdown.cancelled() => break,
                };
                let Some(router) = this.upgrade() else { break };
                router.on_bus(&payload);
            }
        });
        Ok(())
    }

    fn on_bus(&self, payload: &[u8]) {
        if payload.is_empty() {
            tracing::info!(
                connections = self.local.len(),
                "node bus resubscribed; connections replay what they may have missed"
            );
            self.resync_all();
            return;
        }
        let (Some(&kind), Some(conn), Some(epoch)) = (payload.first(), payload.get(1..9), payload.get(9..17)) else {
            metrics::counter!("dongdong_bus_malformed_total").increment(1);
            return;
        };
        let conn_id = u64::from_be_bytes(conn.try_into().unwrap_or_default());
        let epoch = u64::from_be_bytes(epoch.try_into().unwrap_or_default());
        match kind {
            BUS_DELIVER => match Message::decode(&payload[17..]) {
                Ok(m) => {
                    metrics::counter!("dongdong_bus_received_total").increment(1);
                    self.push_local(conn_id, epoch, Push::Message(Arc::new(m)));
                }
                Err(_) => metrics::counter!("dongdong_bus_malformed_total").increment(1),
            },
            BUS_EVENT => match Frame::decode(&payload[17..]) {
                Ok(f) => {
                    self.push_local(conn_id, epoch, Push::Event(Arc::new(f)));
                }
                Err(_) => metrics::counter!("dongdong_bus_malformed_total").increment(1),
            },
            BUS_PRESENCE => self.on_presence_bus(&payload[17..]),
            BUS_LOGOUT => {
                let reason = String::from_utf8_lossy(&payload[17..]).into_owned();
                if let Some(conn) = self.local.get(&conn_id).filter(|c| c.epoch == epoch) {
                    conn.mailbox.kick(CloseCode::LoggedOut, reason);
                }
            }
            BUS_RESYNC => {
                let body = &payload[17..];
                if body.is_empty() {
                    self.resync_all();
                }
                for pair in body.chunks_exact(16) {
                    let (conn_id, epoch) = pair.split_at(8);
                    let conn_id = u64::from_be_bytes(conn_id.try_into().unwrap_or_default());
                    let epoch = u64::from_be_bytes(epoch.try_into().unwrap_or_default());
                    if let Some(conn) = self.local.get(&conn_id).filter(|c| c.epoch == epoch) {
                        conn.mailbox.request_resync();
                    }
                }
            }
            BUS_KICK_REPLACED => {
                if let Some(conn) = self.local.get(&conn_id).filter(|c| c.epoch == epoch) {
                    conn.mailbox.kick(CloseCode::Replaced, "replaced by a newer connection of the same device");
                }
            }
            _ => metrics::counter!("dongdong_bus_malformed_total").increment(1),
        }
    }

    /// Every local connection replays its pending set.
    fn resync_all(&self) {
        for conn in self.local.iter() {
            conn.mailbox.request_resync();
        }
    }

    pub fn node_id(&self) -> &Arc<str> {
        &self.node_id
    }

    /// Connections currently registered on this node.
    pub fn local_connections(&self) -> usize {
        self.local.len()
    }

    /// A fresh epoch: milliseconds since the epoch in the high bits, strictly
    /// increasing within the process, so a newer connection of a device
    /// (also after a restart) has a larger epoch.
    fn next_epoch(&self) -> u64 {
        let now = im_core::now_ms() << 16;
        let mut prev = self.last_epoch.load(Ordering::Relaxed);
        loop {
            let next = now.max(prev + 1);
            match self.last_epoch.compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return next,
                Err(p) => prev = p,
            }
        }
    }

    /// Registers a connection of `device` on this node and in presence. An
    /// older connection of the same device on this node is closed with
    /// [`CloseCode::Replaced`].
    pub async fn register(&self, device: Arc<DeviceKey>) -> Result<Registration, StorageError> {
        let conn_id = self.next_conn_id.fetch_add(1, Ordering::Relaxed);
        let epoch = self.next_epoch();
        let mailbox = Arc::new(Mailbox::new(self.delivery_queue));
        self.local.insert(conn_id, LocalConn { device: device.clone(), epoch, mailbox: mailbox.clone() });
        self.watchers.mark(&device.tenant, &device.user);
        let entry = PresenceEntry { device, node_id: self.node_id.clone(), conn_id, epoch };
        match self.presence.register(entry).await {
            Ok(Some(old)) => self.close_replaced(&old),
            Ok(None) => {}
            Err(e) => {
                self.local.remove(&conn_id);
                return Err(e);
            }
        }
        metrics::gauge!("dongdong_connections").set(self.local.len() as f64);
        Ok(Registration { conn_id, epoch, mailbox })
    }

    fn close_replaced(&self, old: &PresenceEntry) {
        if old.node_id != self.node_id {
            if let Some(bus) = self.bus.get().cloned() {
                let (node, payload) = (old.node_id.clone(), bus_frame(BUS_KICK_REPLACED, old.conn_id, old.epoch, &[]));
                tokio::spawn(async move {
                    if let Err(e) = bus.publish(&node, payload).await {
                        tracing::warn!(error = %e, node = %node, "could not tell the old node to close a replaced connection");
                    }
                });
            }
            return;
        }
        if let Some(conn) = self.local.get(&old.conn_id) {
            conn.mailbox.kick(CloseCode::Replaced, "replaced by a newer connection of the same device");
        }
    }

    /// Whether connection `conn_id` is registered on this node.
    pub fn holds(&self, conn_id: u64) -> bool {
        self.local.contains_key(&conn_id)
    }

    /// Removes the connection from this node and, if it is still the
    /// device's current connection, from presence.
    pub async fn unregister(&self, conn_id: u64) {
        let Some((_, conn)) = self.local.remove(&conn_id) else {
            return;
        };
        conn.mailbox.close();
        self.watchers.drop_conn(conn_id);
        metrics::gauge!("dongdong_connections").set(self.local.len() as f64);
        if let Err(e) = self.presence.unregister(&conn.device, conn.epoch).await {
            // The entry then expires with its TTL where presence has one.
            tracing::warn!(error = %e, conn_id, "presence unregister failed");
        }
        self.watchers.mark(&conn.device.tenant, &conn.device.user);
    }

    /// Pushes a stored message to every connected device of its recipient and
    /// every other connected device of its sender. Never waits on a
    /// connection; returns how many connections it was handed to.
    pub async fn deliver(&self, tenant: &str, message: Arc<Message>) -> usize {
        self.deliver_checked(tenant, message).await.0
    }

    /// [`deliver`](Self::deliver), also telling whether the recipient has
    /// a connected device (true when that could not be looked up).
    pub async fn deliver_checked(&self, tenant: &str, message: Arc<Message>) -> (usize, bool) {
        // Both users' connections at once: one round trip to the registry.
        let to_self = message.from_user == message.to_user;
        let (recipient, sender) = tokio::join!(self.lookup_for_push(tenant, &message.to_user), async {
            if to_self { Ok(Vec::new()) } else { self.lookup_for_push(tenant, &message.from_user).await }
        });
        let mut entries = match recipient {
            Ok(e) => e,
            Err(e) => {
                // Nothing is lost: the message is pending for every device,
                // and they replay it before the user's next push.
                tracing::warn!(error = %e, "presence lookup failed; delivery left to replay");
                metrics::counter!("dongdong_push_lookup_failures_total").increment(1);
                if message.from_user != message.to_user {
                    self.lost.record_user(tenant, &message.from_user);
                }
                return (0, true);
            }
        };
        let recipient_online = !entries.is_empty();
        match sender {
            Ok(e) => entries.extend(e),
            Err(e) => tracing::warn!(error = %e, "presence lookup failed for the sender's devices"),
        }
        let mut pushed = 0;
        for entry in entries {
            if entry.device.user == message.from_user && entry.device.device == message.from_device {
                continue;
            }
            if entry.node_id != self.node_id {
                // Published in order while the caller holds the conversation's
                // order; a lost publish leaves the message pending, and the
                // connection replays it before any later push reaches it.
                match self.bus.get() {
                    Some(bus) => {
                        let payload = bus_frame(BUS_DELIVER, entry.conn_id, entry.epoch, &message.encode_to_vec());
                        match self.publish_push(bus, &entry.node_id, (entry.conn_id, entry.epoch), payload).await {
                            Ok(()) => pushed += 1,
                            Err(e) => {
                                tracing::warn!(error = %e, "cross-node push failed; the connection will replay it")
                            }
                        }
                    }
                    None => metrics::counter!("dongdong_push_remote_skipped_total").increment(1),
                }
                continue;
            }
            if self.push_local(entry.conn_id, entry.epoch, Push::Message(message.clone())) {
                pushed += 1;
            }
        }
        metrics::counter!("dongdong_pushes_total").increment(pushed as u64);
        (pushed, recipient_online)
    }

    /// Looks up `user`'s connections to push to them. When an earlier push
    /// to the user was lost (its lookup failed), the connections found are
    /// resynced first; a failure is recorded the same way.
    async fn lookup_for_push(&self, tenant: &str, user: &str) -> Result<Vec<PresenceEntry>, StorageError> {
        match self.presence.lookup(tenant, user).await {
            Ok(entries) => {
                if self.lost.forget_user(tenant, user) {
                    for e in &entries {
                        self.owe_resync(e);
                    }
                }
                Ok(entries)
            }
            Err(e) => {
                self.lost.record_user(tenant, user);
                Err(e)
            }
        }
    }

    /// Makes the connection `entry` replay its pending set before its next
    /// push: at once on this node; on another, with its next push or the flusher.
    fn owe_resync(&self, entry: &PresenceEntry) {
        if entry.node_id != self.node_id {
            self.lost.record(&entry.node_id, (entry.conn_id, entry.epoch));
        } else if let Some(conn) = self.local.get(&entry.conn_id).filter(|c| c.epoch == entry.epoch) {
            conn.mailbox.request_resync();
        }
    }

    /// Publishes a push for `conn` on `node`, behind the resyncs the node is
    /// owed; a failure is recorded, so the connection is resynced before the
    /// next push to its node (see `lost.rs`).
    async fn publish_push(
        &self,
        bus: &Arc<dyn NodeBus>,
        node: &Arc<str>,
        conn: (u64, u64),
        payload: Vec<u8>,
    ) -> Result<(), StorageError> {
        // Only this connection's resync must go first: other connections
        // of the node get theirs with their own next push or the flusher.
        let result = match self.lost.owed_to(node, conn) {
            Some(resync) => match self.publish_resync(bus, &resync).await {
                Ok(()) => bus.publish(node, payload).await,
                Err(e) => Err(e),
            },
            None => bus.publish(node, payload).await,
        };
        if result.is_err() {
            self.lost.record(node, conn);
        }
        result
    }

    /// Publishes `resync` and forgets what it covered. No lock is held: a
    /// resync published twice costs a replay pass, and the next push of the
    /// conversation that lost one is published after it in every case.
    async fn publish_resync(&self, bus: &Arc<dyn NodeBus>, resync: &lost::Resync) -> Result<(), StorageError> {
        let mut body = Vec::with_capacity(resync.conns.len() * 16);
        for (conn_id, epoch) in &resync.conns {
            body.extend_from_slice(&conn_id.to_be_bytes());
            body.extend_from_slice(&epoch.to_be_bytes());
        }
        bus.publish(&resync.node, bus_frame(BUS_RESYNC, 0, 0, &body)).await?;
        metrics::counter!("dongdong_push_resyncs_total").increment(1);
        self.lost.sent(resync);
        Ok(())
    }

    /// Hands `frame` to every connected device of `user`, on this node or
    /// another. Best effort: returns how many connections it was handed to.
    pub async fn notify(&self, tenant: &str, user: &str, frame: Arc<Frame>) -> usize {
        self.notify_users(tenant, &[user], frame, None).await
    }

    /// [`notify`](Self::notify) for each of `users` (once each), except the
    /// device `except`.
    pub async fn notify_users(
        &self,
        tenant: &str,
        users: &[&str],
        frame: Arc<Frame>,
        except: Option<&DeviceKey>,
    ) -> usize {
        let mut pushed = 0;
        let mut encoded: Option<Vec<u8>> = None;
        for (i, user) in users.iter().enumerate() {
            if users[..i].contains(user) {
                continue;
            }
            let entries = match self.presence.lookup(tenant, user).await {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(error = %e, "presence lookup failed; notification dropped");
                    metrics::counter!("dongdong_push_lookup_failures_total").increment(1);
                    continue;
                }
            };
            for entry in entries {
                if except.is_some_and(|d| *entry.device == *d) {
                    continue;
                }
                if entry.node_id == self.node_id {
                    if self.push_local(entry.conn_id, entry.epoch, Push::Event(frame.clone())) {
                        pushed += 1;
                    }
                    continue;
                }
                let Some(bus) = self.bus.get() else { continue };
                let body = encoded.get_or_insert_with(|| frame.encode_to_vec());
                let payload = bus_frame(BUS_EVENT, entry.conn_id, entry.epoch, body);
                match bus.publish(&entry.node_id, payload).await {
                    Ok(()) => pushed += 1,
                    Err(e) => tracing::warn!(error = %e, "cross-node notification failed"),
                }
            }
        }
        pushed
    }

    /// Whether `user` has a connected device anywhere.
    pub async fn is_connected(&self, tenant: &str, user: &str) -> Result<bool, StorageError> {
        Ok(!self.presence.lookup(tenant, user).await?.is_empty())
    }

    fn push_local(&self, conn_id: u64, epoch: u64, push: Push) -> bool {
        let Some(conn) = self.local.get(&conn_id) else {
            return false;
        };
        if conn.epoch != epoch {
            return false;
        }
        match conn.mailbox.push(push) {
            Ok(()) => true,
            Err(Refused::Full) => {
                metrics::counter!("dongdong_slow_consumers_total").increment(1);
                false
            }
            Err(Refused::Closed) => false,
        }
    }

    /// Closes every local connection of the device (e.g. an admin action).
    pub fn kick_device(&self, device: &DeviceKey, code: CloseCode, message: &'static str) {
        for conn in self.local.iter().filter(|c| *c.device == *device) {
            conn.mailbox.kick(code, message);
        }
    }

    /// Closes the user's connections on every node, or only those of
    /// `device`, with [`CloseCode::LoggedOut`] and `reason`. Returns how many
    /// it reached (remote ones: told to close).
    pub async fn log_out(
        &self,
        tenant: &str,
        user: &str,
        device: Option<&str>,
        reason: &str,
    ) -> Result<usize, StorageError> {
        let entries = self.presence.lookup(tenant, user).await?;
        let mut closed = 0;
        for e in entries.iter().filter(|e| device.is_none_or(|d| e.device.device == d)) {
            if e.node_id == self.node_id {
                if let Some(conn) = self.local.get(&e.conn_id).filter(|c| c.epoch == e.epoch) {
                    conn.mailbox.kick(CloseCode::LoggedOut, reason.to_string());
                    closed += 1;
                }
                continue;
            }
            let Some(bus) = self.bus.get() else { continue };
            bus.publish(&e.node_id, bus_frame(BUS_LOGOUT, e.conn_id, e.epoch, reason.as_bytes())).await?;
            closed += 1;
        }
        Ok(closed)
    }

    /// Closes every local connection (server shutdown).
    pub fn kick_all(&self, code: CloseCode, message: &'static str) {
        for conn in self.local.iter() {
            conn.mailbox.kick(code, message);
        }
    }
}

/// Retries the resyncs owed for lost pushes until the bus takes them, so a
/// lost push does not wait for the next push to its node.
async fn flush_lost_pushes(router: std::sync::Weak<Router>, lost: Arc<lost::LostPushes>, shutdown: CancellationToken) {
    const FIRST: std::time::Duration = std::time::Duration::from_millis(50);
    let mut backoff = FIRST;
    loop {
        tokio::select! {
            _ = lost.recorded.notified() => {}
            _ = shutdown.cancelled() => return,
        }
        while !lost.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.cancelled() => return,
            }
            let Some(router) = router.upgrade() else { return };
            let Some(bus) = router.bus.get().cloned() else { return };
            for (tenant, user) in lost.lost_users() {
                // Turns the user into connections to resync, or keeps it
                // (then presence is still away: the rest can wait too).
                if router.lookup_for_push(&tenant, &user).await.is_err() {
                    break;
                }
            }
            let mut failed = None;
            for resync in lost.owed() {
                if let Err(e) = router.publish_resync(&bus, &resync).await {
                    failed = Some(e);
                    break;
                }
            }
            if let Some(e) = failed {
                tracing::warn!(error = %e, "could not yet tell nodes to replay lost pushes; retrying");
            }
            backoff = if lost.is_empty() { FIRST } else { (backoff * 2).min(std::time::Duration::from_secs(2)) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use storage_embedded::MemoryPresence;

    fn next(reg: &Registration) -> Option<Mail> {
        match reg.mailbox.poll_recv(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
            std::task::Poll::Ready(mail) => Some(mail),
            std::task::Poll::Pending => None,
        }
    }

    fn router(queue: usize) -> Router {
        Router::new("node-1", Arc::new(MemoryPresence::default()), queue)
    }

    fn msg(from: &str, from_device: &str, to: &str) -> Arc<Message> {
        Arc::new(Message {
            msg_id: im_core::new_msg_id(),
            from_user: from.into(),
            from_device: from_device.into(),
            to_user: to.into(),
            seq: 1,
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn pushes_to_recipient_and_other_sender_devices_only() {
        let r = router(8);
        let bob = r.register(DeviceKey::new("t", "bob", "b1").into()).await.unwrap();
        let alice1 = r.register(DeviceKey::new("t", "alice", "a1").into()).await.unwrap();
        let alice2 = r.register(DeviceKey::new("t", "alice", "a2").into()).await.unwrap();
        let other_tenant = r.register(DeviceKey::new("u", "bob", "b1").into()).await.unwrap();
        let m = msg("alice", "a1", "bob");
        assert_eq!(r.deliver("t", m.clone()).await, 2);
        assert_eq!(next(&bob), Some(Mail::Push(Push::Message(m.clone()))));
        assert_eq!(next(&alice2), Some(Mail::Push(Push::Message(m))));
        assert_eq!(next(&alice1), None);
        assert_eq!(next(&other_tenant), None);
    }

    #[tokio::test]
    async fn full_queue_kicks_as_slow_consumer() {
        let r = router(2);
        let bob = r.register(DeviceKey::new("t", "bob", "b1").into()).await.unwrap();
        for _ in 0..2 {
            assert_eq!(r.deliver("t", msg("alice", "a1", "bob")).await, 1);
        }
        assert_eq!(r.deliver("t", msg("alice", "a1", "bob")).await, 0);
        assert_eq!(bob.mailbox.reason().unwrap().code, CloseCode::SlowConsumer);
    }

    /// A node bus in memory that can be made to fail.
    #[derive(Default)]
    struct FlakyBus {
        down: std::sync::atomic::AtomicBool,
        subscribers: std::sync::Mutex<Vec<(String, tokio::sync::mpsc::Sender<Vec<u8>>)>>,
    }

    #[async_trait::async_trait]
    impl NodeBus for FlakyBus {
        async fn publish(&self, node_id: &str, payload: Vec<u8>) -> Result<(), StorageError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(StorageError::Unavailable("bus down".into()));
            }
            let subscribers = self.subscribers.lock().unwrap().clone();
            for (_, tx) in subscribers.iter().filter(|(n, _)| n == node_id) {
                let _ = tx.try_send(payload.clone());
            }
            Ok(())
        }

        async fn subscribe(&self, node_id: &str) -> Result<tokio::sync::mpsc::Receiver<Vec<u8>>, StorageError> {
            let (tx, rx) = tokio::sync::mpsc::channel(64);
            self.subscribers.lock().unwrap().push((node_id.into(), tx));
            Ok(rx)
        }
    }

    async fn recv(reg: &Registration) -> Mail {
        tokio::time::timeout(std::time::Duration::from_secs(5), std::future::poll_fn(|cx| reg.mailbox.poll_recv(cx)))
            .await
            .expect("mail within 5 s")
    }

    /// A presence registry in memory whose lookups can be made to fail.
    #[derive(Default)]
    struct FlakyPresence {
        down: std::sync::atomic::AtomicBool,
        inner: MemoryPresence,
    }

    #[async_trait::async_trait]
    impl PresenceRegistry for FlakyPresence {
        async fn register(&self, entry: PresenceEntry) -> Result<Option<PresenceEntry>, StorageError> {
            self.inner.register(entry).await
        }
        async fn unregister(&self, device: &DeviceKey, epoch: u64) -> Result<bool, StorageError> {
            self.inner.unregister(device, epoch).await
        }
        async fn lookup(&self, tenant: &str, user: &str) -> Result<Vec<PresenceEntry>, StorageError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(StorageError::Unavailable("presence down".into()));
            }
            self.inner.lookup(tenant, user).await
        }
        async fn record_online(&self, tenant: &str, user: &str, online: bool, now: u64) -> Result<bool, StorageError> {
            self.inner.record_online(tenant, user, online, now).await
        }
        async fn last_seen(&self, tenant: &str, user: &str) -> Result<u64, StorageError> {
            self.inner.last_seen(tenant, user).await
        }
    }

    struct TwoNodes {
        r1: Arc<Router>,
        _r2: Arc<Router>,
        bob: Registration,
        bus: Arc<FlakyBus>,
        presence: Arc<FlakyPresence>,
    }

    /// Two nodes on one bus and one presence registry, bob on the second
    /// (or the first, `local`).
    async fn two_nodes_with(local: bool) -> TwoNodes {
        let presence = Arc::new(FlakyPresence::default());
        let bus = Arc::new(FlakyBus::default());
        let (r1, r2) = (
            Arc::new(Router::new("node-1", presence.clone(), 8)),
            Arc::new(Router::new("node-2", presence.clone(), 8)),
        );
        for r in [&r1, &r2] {
            r.attach_bus(bus.clone(), CancellationToken::new()).await.unwrap();
        }
        let home = if local { &r1 } else { &r2 };
        let bob = home.register(DeviceKey::new("t", "bob", "b1").into()).await.unwrap();
        TwoNodes { r1, _r2: r2, bob, bus, presence }
    }

    #[tokio::test(start_paused = true)]
    async fn a_push_lost_to_a_failed_lookup_is_replayed_before_the_next_one() {
        for local in [false, true] {
            let TwoNodes { r1, _r2, bob, presence, .. } = two_nodes_with(local).await;
            presence.down.store(true, Ordering::SeqCst);
            assert_eq!(r1.deliver("t", msg("alice", "a1", "bob")).await, 0, "lost");
            presence.down.store(false, Ordering::SeqCst);
            let m2 = msg("alice", "a1", "bob");
            assert_eq!(r1.deliver("t", m2.clone()).await, 1);
            assert_eq!(recv(&bob).await, Mail::Resync, "local: {local}");
            assert_eq!(recv(&bob).await, Mail::Push(Push::Message(m2)));
            assert!(r1.lost.is_empty());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_flusher_looks_lost_users_up_again() {
        let TwoNodes { r1, _r2, bob, presence, .. } = two_nodes_with(false).await;
        presence.down.store(true, Ordering::SeqCst);
        assert_eq!(r1.deliver("t", msg("alice", "a1", "bob")).await, 0);
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        presence.down.store(false, Ordering::SeqCst);
        assert_eq!(recv(&bob).await, Mail::Resync);
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        assert!(r1.lost.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_cross_node_push_is_replayed_before_the_next_one() {
        let TwoNodes { r1, _r2, bob, bus, .. } = two_nodes_with(false).await;
        bus.down.store(true, Ordering::SeqCst);
        assert_eq!(r1.deliver("t", msg("alice", "a1", "bob")).await, 0, "lost");
        bus.down.store(false, Ordering::SeqCst);
        // The next push goes out behind a resync; the flusher may have
        // sent that already, either way it comes first.
        let m2 = msg("alice", "a1", "bob");
        assert_eq!(r1.deliver("t", m2.clone()).await, 1);
        assert_eq!(recv(&bob).await, Mail::Resync);
        assert_eq!(recv(&bob).await, Mail::Push(Push::Message(m2)));
        assert!(r1.lost.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_push_is_replayed_without_waiting_for_another() {
        let TwoNodes { r1, _r2, bob, bus, .. } = two_nodes_with(false).await;
        bus.down.store(true, Ordering::SeqCst);
        assert_eq!(r1.deliver("t", msg("alice", "a1", "bob")).await, 0);
        // The flusher retries with backoff while the bus is down.
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        assert!(!r1.lost.is_empty());
        bus.down.store(false, Ordering::SeqCst);
        assert_eq!(recv(&bob).await, Mail::Resync);
        assert!(r1.lost.is_empty());
        // A resync for an older connection of the device is ignored.
        r2_ignores_stale(&bus, &bob).await;
    }

    async fn r2_ignores_stale(bus: &FlakyBus, bob: &Registration) {
        let stale = bus_frame(BUS_RESYNC, 0, 0, &[bob.conn_id.to_be_bytes(), (bob.epoch - 1).to_be_bytes()].concat());
        bus.publish("node-2", stale).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        assert_eq!(next(bob), None);
    }

    #[tokio::test]
    async fn reconnect_replaces_and_late_close_keeps_new_entry() {
        let r = router(8);
        let dev = DeviceKey::new("t", "bob", "b1");
        let old = r.register(dev.clone().into()).await.unwrap();
        let new = r.register(dev.clone().into()).await.unwrap();
        assert!(new.epoch > old.epoch);
        assert_eq!(old.mailbox.reason().unwrap().code, CloseCode::Replaced);
        r.unregister(old.conn_id).await;
        assert_eq!(r.deliver("t", msg("alice", "a1", "bob")).await, 1);
        assert!(matches!(next(&new), Some(Mail::Push(_))));
        r.unregister(new.conn_id).await;
        assert_eq!(r.deliver("t", msg("alice", "a1", "bob")).await, 0);
        assert_eq!(r.local_connections(), 0);
    }
}
