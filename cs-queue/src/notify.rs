//! Notifications of what a customer-service command did: `SessionAssigned`,
//! `SessionTransferred`, `SessionEnded`, `LeaveMessageOffer` and waiting
//! customers' new places in line, pushed through the router to whichever
//! node holds each party.
//!
//! Each tenant has a notifier of its own: a task started by the tenant's
//! first outcome that sends its notifications in the order the commands
//! completed and ends when nothing is left. So a tenant whose notifications
//! are slow (a flood of commands, presence lookups waiting on a stalled
//! store) delays no other tenant, and idle tenants cost nothing. Queue
//! positions are sent once per group and batch, from the newest snapshot by
//! version, never older than one already sent.

use super::*;
use std::collections::VecDeque;
use tokio::sync::Semaphore;

/// Outcomes a notifier takes at once (queue updates are coalesced per group).
const NOTIFY_BATCH: usize = 256;
/// Outcomes waiting per tenant; a command of a tenant with this many waits
/// for room (backpressure on that tenant only).
const NOTIFY_QUEUE: usize = 1024;

/// A tenant's outcomes waiting for their notifications.
pub(crate) struct TenantNotices {
    queue: VecDeque<CsOutcome>,
    /// Free places in `queue`.
    room: Arc<Semaphore>,
    /// A notifier task is draining `queue`.
    running: bool,
}

impl Default for TenantNotices {
    fn default() -> Self {
        Self { queue: VecDeque::new(), room: Arc::new(Semaphore::new(NOTIFY_QUEUE)), running: false }
    }
}

/// The notifiers' shared state.
#[derive(Default)]
pub(crate) struct Notices {
    /// By tenant: an entry exists while its notifier runs (and while a
    /// command waits for room).
    tenants: dashmap::DashMap<String, TenantNotices>,
    /// The newest queue version whose positions went out, per (tenant, group).
    published: std::sync::Mutex<HashMap<(String, String), u64>>,
}

impl CsService {
    /// Queues the notifications of an outcome behind the tenant's earlier
    /// ones, starting the tenant's notifier if it is not running.
    pub(crate) async fn queue_notices(&self, tenant: &str, outcome: CsOutcome) {
        let room = self.notices.tenants.entry(tenant.to_string()).or_default().room.clone();
        match room.acquire_owned().await {
            Ok(place) => place.forget(),
            Err(_) => return,
        }
        let start = {
            let mut t = self.notices.tenants.entry(tenant.to_string()).or_default();
            t.queue.push_back(outcome);
            !std::mem::replace(&mut t.running, true)
        };
        if start {
            tokio::spawn(notifier(self.me.clone(), tenant.to_string()));
        }
    }

    /// Sends the notifications of one outcome, in order.
    async fn publish(&self, tenant: &str, outcome: CsOutcome) {
        let router = self.router();
        for t in &outcome.transferred {
            let frame = event(Body::SessionTransferred(convert::transferred_pb(t)));
            router.notify(tenant, &t.session.customer, frame.clone()).await;
            router.notify(tenant, &t.from_agent, frame.clone()).await;
            // A transfer to an agent: the new one too (before SessionAssigned).
            if !t.session.agent.is_empty() {
                router.notify(tenant, &t.session.agent, frame).await;
            }
        }
        for s in &outcome.assigned {
            metrics::histogram!("dongdong_cs_wait_seconds", "group" => s.group.clone())
                .record(s.assigned_ms.saturating_sub(s.queued_ms) as f64 / 1000.0);
            metrics::counter!("dongdong_cs_assignments_total", "group" => s.group.clone()).increment(1);
            let frame = event(Body::SessionAssigned(pb::SessionAssigned { session: Some(session_pb(s)) }));
            if router.notify(tenant, &s.customer, frame.clone()).await == 0 {
                // The customer left the page: an agent is waiting for them.
                let conv = &s.conversation_id;
                self.dispatch.push_session(tenant, &s.customer, &s.agent, conv, &s.id, "session_assigned");
            }
            router.notify(tenant, &s.agent, frame).await;
            self.post_first_message(tenant, s);
        }
        for s in &outcome.ended {
            if s.assigned_ms > 0 {
                metrics::histogram!("dongdong_cs_handle_seconds", "group" => s.group.clone())
                    .record(s.ended_ms.saturating_sub(s.assigned_ms) as f64 / 1000.0);
            }
            let frame = event(Body::SessionEnded(pb::SessionEnded { session: Some(session_pb(s)) }));
            if router.notify(tenant, &s.customer, frame.clone()).await == 0 && s.assigned_ms > 0 {
                let conv = &s.conversation_id;
                self.dispatch.push_session(tenant, &s.customer, &s.agent, conv, &s.id, "session_ended");
            }
            if !s.agent.is_empty() {
                router.notify(tenant, &s.agent, frame).await;
            }
        }
        for (group, customer) in &outcome.timed_out {
            metrics::counter!("dongdong_cs_turned_away_total", "reason" => "WAITED_TOO_LONG").increment(1);
            let offer = pb::LeaveMessageOffer {
                group: group.clone(),
                reason: pb::leave_message_offer::Reason::WaitedTooLong as i32,
                message: "no agent could take you in time; you can leave a message".into(),
            };
            router.notify(tenant, customer, event(Body::LeaveMessageOffer(offer))).await;
        }
    }

    /// Tells the waiting customers of a group whose place changed.
    async fn publish_queue(&self, tenant: &str, q: &QueueSnapshot) {
        for (i, (session_id, customer)) in q.waiting.iter().enumerate().skip(q.changed_from) {
            let position = u32::try_from(i + 1).unwrap_or(u32::MAX);
            let update = pb::QueueUpdate {
                session_id: session_id.clone(),
                group: q.group.clone(),
                position,
                estimated_wait_s: q.estimated_wait_s(position),
            };
            self.router().notify(tenant, customer, event(Body::QueueUpdate(update))).await;
        }
    }

    /// Posts the customer's first message to the agent of a newly assigned
    /// session, once (its client_msg_id is derived from the session), in a
    /// task of its own: the notifier does not wait for a durable append.
    /// Started after `SessionAssigned` went out, so it reaches the agent
    /// after it.
    fn post_first_message(&self, tenant: &str, s: &Session) {
        let Some(content) = s.first_message.clone() else { return };
        if !s.previous_agents.is_empty() {
            return;
        }
        let sender = DeviceKey::new(tenant, &s.customer, SERVICE_DEVICE);
        let send =
            pb::Send { client_msg_id: format!("cs-first-{}", s.id), to_user: s.agent.clone(), content: Some(content) };
        let (dispatch, session) = (self.dispatch.clone(), s.id.clone());
        tokio::spawn(async move {
            if let Err(e) = dispatch.send(&sender, send).await {
                warn!(error = %e, %session, "could not post the customer's first message");
            }
        });
    }
}

/// Sends one tenant's notifications until none is left (or the service is
/// gone), then removes the tenant's entry.
async fn notifier(service: std::sync::Weak<CsService>, tenant: String) {
    loop {
        let Some(service) = service.upgrade() else { return };
        let (batch, room) = {
            let Some(mut t) = service.notices.tenants.get_mut(&tenant) else { return };
            let n = t.queue.len().min(NOTIFY_BATCH);
            (t.queue.drain(..n).collect::<Vec<_>>(), t.room.clone())
        };
        if batch.is_empty() {
            // Under the entry's lock: nothing can have been queued since.
            if service.notices.tenants.remove_if(&tenant, |_, t| t.queue.is_empty()).is_some() {
                return;
            }
            continue;
        }
        let taken = batch.len();
        // Events go out in order; queue positions once per group, from the
        // newest snapshot by version (outcomes of concurrent commands can
        // arrive in either order), so a busy queue does not send every
        // customer an update per change.
        let mut queues: Vec<QueueChange> = Vec::new();
        for mut outcome in batch {
            coalesce(&mut queues, &tenant, outcome.version, std::mem::take(&mut outcome.queues));
            service.publish(&tenant, outcome).await;
        }
        for c in queues {
            let (group, changed_from) = (c.snapshot.group.clone(), c.snapshot.changed_from);
            let newest = {
                let mut published = service.notices.published.lock().unwrap_or_else(|p| p.into_inner());
                if published.len() > MAX_VERSIONS {
                    published.clear();
                }
                newest_only(&mut published, c)
            };
            if let Some(snapshot) = newest {
                service.publish_queue(&tenant, &snapshot).await;
                continue;
            }
            // Older than what went out already: its change is in the queue
            // as it stands now, so the positions come from there.
            match service.store.group_view(&tenant, &group).await {
                Ok(Some(view)) => {
                    service.publish_queue(&tenant, &QueueSnapshot { changed_from, ..view.queue }).await;
                }
                Ok(None) => {}
                Err(e) => warn!(error = %e, "cs notifier: cannot read a queue; positions may be stale"),
            }
        }
        room.add_permits(taken);
    }
}

/// A queue's newest snapshot among a batch of outcomes.
struct QueueChange {
    tenant: String,
    version: u64,
    snapshot: QueueSnapshot,
}

/// Most (tenant, group) versions remembered before starting over.
const MAX_VERSIONS: usize = 100_000;

/// Adds one outcome's queue snapshots to the batch's: per (tenant, group)
/// the one of the highest version, changed from the lowest index of all.
fn coalesce(queues: &mut Vec<QueueChange>, tenant: &str, version: u64, snapshots: Vec<QueueSnapshot>) {
    for q in snapshots {
        match queues.iter_mut().find(|c| c.tenant == tenant && c.snapshot.group == q.group) {
            Some(c) => {
                let from = c.snapshot.changed_from.min(q.changed_from);
                if version > c.version {
                    c.version = version;
                    c.snapshot = q;
                }
                c.snapshot.changed_from = from;
            }
            None => queues.push(QueueChange { tenant: tenant.to_string(), version, snapshot: q }),
        }
    }
}

/// The snapshot to publish if it is not older than the last one published
/// for its queue (and remembers it); `None` if it is.
fn newest_only(published: &mut HashMap<(String, String), u64>, c: QueueChange) -> Option<QueueSnapshot> {
    let newest = published.entry((c.tenant, c.snapshot.group.clone())).or_default();
    if c.version < *newest {
        return None;
    }
    *newest = c.version;
    Some(c.snapshot)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(waiting: &[&str], changed_from: usize) -> QueueSnapshot {
        let waiting = waiting.iter().map(|c| (format!("s-{c}"), c.to_string())).collect();
        QueueSnapshot::new("g", waiting, changed_from, 0, [])
    }

    fn customers(q: &QueueSnapshot) -> Vec<&str> {
        q.waiting.iter().map(|(_, c)| c.as_str()).collect()
    }

    /// Two commands' outcomes reach the notifier newest first: the batch
    /// keeps the newer queue, from the lower index of the two.
    #[test]
    fn a_batch_keeps_the_newest_queue_whatever_the_arrival_order() {
        let mut queues = Vec::new();
        coalesce(&mut queues, "t", 7, vec![snapshot(&["c"], 1)]);
        coalesce(&mut queues, "t", 6, vec![snapshot(&["b", "c"], 0)]);
        coalesce(&mut queues, "u", 1, vec![snapshot(&["x"], 0)]);
        assert_eq!(queues.len(), 2, "one per tenant and group");
        assert_eq!((queues[0].version, customers(&queues[0].snapshot)), (7, vec!["c"]));
        assert_eq!(queues[0].snapshot.changed_from, 0);
    }

    /// A snapshot older than one already published is not published (its
    /// positions would be stale); equal or newer ones are.
    #[test]
    fn an_older_snapshot_than_the_one_published_is_held_back() {
        let mut published = HashMap::new();
        let change =
            |version, waiting: &[&str]| QueueChange { tenant: "t".into(), version, snapshot: snapshot(waiting, 0) };
        assert!(newest_only(&mut published, change(5, &["c"])).is_some());
        assert!(newest_only(&mut published, change(4, &["b", "c"])).is_none());
        assert!(newest_only(&mut published, change(5, &["c"])).is_some());
        assert_eq!(newest_only(&mut published, change(9, &[])).map(|q| q.waiting.len()), Some(0));
    }

    /// Presence whose lookups in tenant "slow" take 2 s (a stalled store
    /// for that tenant's users).
    struct SlowPresence(storage_embedded::MemoryPresence);

    #[async_trait::async_trait]
    impl storage::PresenceRegistry for SlowPresence {
        async fn register(&self, e: storage::PresenceEntry) -> storage::Result<Option<storage::PresenceEntry>> {
            self.0.register(e).await
        }
        async fn unregister(&self, device: &storage::DeviceKey, epoch: u64) -> storage::Result<bool> {
            self.0.unregister(device, epoch).await
        }
        async fn lookup(&self, tenant: &str, user: &str) -> storage::Result<Vec<storage::PresenceEntry>> {
            if tenant == "slow" {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            self.0.lookup(tenant, user).await
        }
        async fn record_online(&self, tenant: &str, user: &str, online: bool, now_ms: u64) -> storage::Result<bool> {
            self.0.record_online(tenant, user, online, now_ms).await
        }
        async fn last_seen(&self, tenant: &str, user: &str) -> storage::Result<u64> {
            self.0.last_seen(tenant, user).await
        }
    }

    /// Tenant "slow" has a burst of assignments whose notifications each
    /// wait on presence; tenant "fast"'s customer is told of her agent at
    /// once all the same.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[allow(clippy::unwrap_used)]
    async fn a_slow_tenant_delays_no_other_tenants_notifications() {
        let dir = tempfile::tempdir().unwrap();
        let (mut backends, _store) = storage_embedded::open(dir.path(), Default::default()).unwrap();
        backends.presence = Arc::new(SlowPresence(Default::default()));
        let router = Arc::new(Router::new("n1", backends.presence.clone(), 64));
        let dispatch = Dispatcher::new(backends.clone(), router.clone(), Default::default());
        let shutdown = CancellationToken::new();
        let cs = CsService::start(backends.cs.clone(), dispatch, router.clone(), CsConfig::default(), shutdown.clone());
        let customer = Arc::new(DeviceKey::new("fast", "cara", "phone"));
        let mailbox = router.register(customer).await.unwrap().mailbox;
        for tenant in ["slow", "fast"] {
            let spec = GroupSpec { id: "g".into(), default_capacity: 50, ..Default::default() };
            cs.execute(tenant, CsCommand::PutGroup { spec, only: vec![] }).await.unwrap();
            let member = CsCommand::PutMember { group: "g".into(), agent: "amy".into(), capacity: None };
            cs.execute(tenant, member).await.unwrap();
            cs.execute(tenant, CsCommand::Connected { agent: "amy".into() }).await.unwrap();
            cs.execute(tenant, CsCommand::SetStatus { agent: "amy".into(), status: AgentStatus::Online })
                .await
                .unwrap();
        }
        let request = |customer: &str| CsCommand::Request {
            customer: customer.into(),
            group: "g".into(),
            session_id: im_core::new_msg_id(),
            first_message: None,
            context: Default::default(),
        };
        for i in 0..10 {
            let outcome = cs.execute("slow", request(&format!("c{i}"))).await.unwrap();
            assert_eq!(outcome.assigned.len(), 1);
        }
        let started = tokio::time::Instant::now();
        cs.execute("fast", request("cara")).await.unwrap();
        let told = tokio::time::timeout(Duration::from_secs(1), std::future::poll_fn(|cx| mailbox.poll_recv(cx))).await;
        let Ok(session_router::Mail::Push(session_router::Push::Event(frame))) = told else {
            panic!("no notification within 1 s: {told:?}");
        };
        assert!(matches!(frame.body, Some(Body::SessionAssigned(_))), "{frame:?}");
        assert!(started.elapsed() < Duration::from_secs(1));
        shutdown.cancel();
    }
}
