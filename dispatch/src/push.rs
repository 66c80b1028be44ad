//! Offline push: when a message (or a recall) becomes pending for a user
//! with no connected device, the node that stored it calls a webhook of the
//! embedding application, which reaches the phone (APNs, FCM).
//!
//! - The body is JSON: `tenant`, `to_user`, `from_user`, `conversation_id`,
//!   `msg_id`, `kind` (`message`, `recall`, or for a customer
//!   `session_assigned` and `session_ended` with `session_id`),
//!   `unread_total` (over the user's 100 most recent conversations),
//!   `sent_ms`, and `preview` (the text, at most 100 characters) only with
//!   `include_preview`.
//! - Signed: `X-Dongdong-Timestamp` (ms) and `X-Dongdong-Signature:
//!   sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>`; a receiver
//!   checks both and refuses old timestamps (replays).
//! - Coalesced: at most one push per user per `min_interval`; what arrives
//!   meanwhile replaces what waits (the latest state wins) and goes when
//!   the interval ends.
//! - Bounded and never in the way: events go through a bounded queue
//!   (`try_send`; overflow is counted in `dongdong_push_dropped_total`),
//!   a few requests run at once, each with a timeout; 5xx, timeouts and
//!   connection errors are retried with exponential backoff and jitter up
//!   to `max_attempts`, 4xx never. Nothing here waits on a message's path.
//! - Idempotent: `Idempotency-Key` is the same for every call about one
//!   (user, message or session, kind), so a receiver drops repeats.
//! - Durable in cluster mode: the events a node holds (waiting for their
//!   user's interval, being retried) are kept in Redis (a stream per node,
//!   `storage::PushQueue`); a node that dies leaves them there and another
//!   node takes them over after `takeover_after` and sends them (again, if
//!   the dead node had sent one but not yet recorded it: the key dedupes
//!   it). Lost on a kill -9: only what arrived in the last moment before it
//!   was written (the events travel from the send path to the pusher
//!   through memory). The embedded backend's single node keeps its queue in
//!   memory: a kill -9 loses the pushes it held (the messages stay pending).

use hmac::{Hmac, KeyInit, Mac};
use serde_json::json;
use sha2::Sha256;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use storage::{MessageStore, PushQueue};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The `[push]` settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PushConfig {
    /// http(s) URL called for users with no connected device; empty: off.
    pub webhook_url: String,
    /// HMAC-SHA256 key of the X-Dongdong-Signature header (≥ 16 bytes when on).
    pub secret: String,
    /// Whether the body carries the message's first 100 characters.
    pub include_preview: bool,
    /// At most one push per user per this long (the latest state wins).
    #[serde(with = "humantime_serde")]
    pub min_interval: Duration,
    /// Each webhook call's time limit.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Events waiting for the pusher; more are dropped (and counted).
    pub queue: usize,
    /// Attempts per push (5xx and timeouts are retried with backoff; 4xx never).
    pub max_attempts: u32,
    /// Cluster: the pushes of a node that stopped keeping them (it died) are
    /// sent by another node after this long.
    #[serde(with = "humantime_serde")]
    pub takeover_after: Duration,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            webhook_url: String::new(),
            secret: String::new(),
            include_preview: false,
            min_interval: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
            queue: 10_000,
            max_attempts: 5,
            takeover_after: Duration::from_secs(60),
        }
    }
}

impl PushConfig {
    pub fn validate(&self) -> Result<(), im_core::InvalidSetting> {
        let invalid = |key: &str, reason: &str| Err(im_core::InvalidSetting::new(key, reason));
        if !self.webhook_url.is_empty() {
            if !(self.webhook_url.starts_with("http://") || self.webhook_url.starts_with("https://")) {
                return invalid("push.webhook_url", "must start with http:// or https://");
            }
            if self.secret.len() < 16 {
                return invalid("push.secret", "must be at least 16 bytes when push.webhook_url is set");
            }
        }
        if self.timeout < Duration::from_millis(100) {
            return invalid("push.timeout", "must be at least 100ms");
        }
        if self.queue == 0 {
            return invalid("push.queue", "must be at least 1");
        }
        if !(1..=20).contains(&self.max_attempts) {
            return invalid("push.max_attempts", "must be between 1 and 20");
        }
        if self.takeover_after < Duration::from_secs(1) {
            return invalid("push.takeover_after", "must be at least 1s");
        }
        Ok(())
    }
}

/// One thing a user should hear about.
#[derive(Debug, Clone)]
pub struct PushEvent {
    pub tenant: String,
    pub to_user: String,
    pub from_user: String,
    pub conversation_id: String,
    pub msg_id: String,
    pub kind: &'static str,
    pub preview: Option<String>,
    /// Customer-service events: the session.
    pub session_id: Option<String>,
    pub at: Instant,
    /// Where the event is kept (cluster), once it is.
    pub queue_id: Option<String>,
}

impl PushEvent {
    /// The same for every call about one (user, message or session, kind).
    pub fn idempotency_key(&self) -> String {
        use sha2::Digest;
        let what = if self.msg_id.is_empty() { self.session_id.as_deref().unwrap_or("") } else { &self.msg_id };
        let digest = Sha256::digest(format!("{}\n{}\n{}\n{}", self.tenant, self.to_user, what, self.kind));
        hex::encode(&digest[..16])
    }

    /// The event as kept in the push queue.
    fn encode(&self) -> Vec<u8> {
        json!({
            "tenant": self.tenant, "to_user": self.to_user, "from_user": self.from_user,
            "conversation_id": self.conversation_id, "msg_id": self.msg_id, "kind": self.kind,
            "preview": self.preview, "session_id": self.session_id,
        })
        .to_string()
        .into_bytes()
    }

    /// An event read back from the push queue; None if it is not one.
    fn decode(bytes: &[u8], queue_id: String) -> Option<Self> {
        let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
        let text = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        let kind = ["message", "recall", "session_assigned", "session_ended"]
            .into_iter()
            .find(|k| v.get("kind").and_then(|x| x.as_str()) == Some(*k))?;
        Some(Self {
            tenant: text("tenant")?,
            to_user: text("to_user")?,
            from_user: text("from_user").unwrap_or_default(),
            conversation_id: text("conversation_id").unwrap_or_default(),
            msg_id: text("msg_id").unwrap_or_default(),
            kind,
            preview: text("preview"),
            session_id: text("session_id"),
            at: Instant::now(),
            queue_id: Some(queue_id),
        })
    }
}

/// Requests to the webhook in flight at once.
const CONCURRENT: usize = 8;
/// Users with a push waiting for their interval to end; beyond, new ones
/// are dropped (counted).
const MAX_WAITING_USERS: usize = 100_000;
const BACKOFF_BASE: Duration = Duration::from_millis(200);

pub struct Pusher {
    tx: mpsc::Sender<PushEvent>,
    include_preview: bool,
}

impl Pusher {
    /// Starts the pusher, or returns `None` when no webhook is configured.
    /// `queue`: where held events outlive the node (cluster), if anywhere.
    pub fn start(
        config: PushConfig,
        messages: Arc<dyn MessageStore>,
        queue: Option<Arc<dyn PushQueue>>,
        shutdown: CancellationToken,
    ) -> Option<Arc<Self>> {
        if config.webhook_url.is_empty() {
            return None;
        }
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let include_preview = config.include_preview;
        tokio::spawn(run(Arc::new(config), messages, queue, rx, shutdown));
        Some(Arc::new(Self { tx, include_preview }))
    }

    /// Whether pushes carry a preview of the text.
    pub fn wants_preview(&self) -> bool {
        self.include_preview
    }

    /// Queues an event without waiting; a full queue drops it.
    pub fn offer(&self, event: PushEvent) {
        if self.tx.try_send(event).is_err() {
            metrics::counter!("dongdong_push_dropped_total", "why" => "queue").increment(1);
        }
    }
}

type UserKey = (String, String);

/// A user's pushes: when the next may go, and what waits for then.
struct Slot {
    next_at: Instant,
    waiting: Option<PushEvent>,
}

/// What became of an offered event.
#[derive(Debug)]
pub enum Offer {
    /// Send it now: the user's interval is over.
    Send(PushEvent),
    /// It waits for the end of the user's interval.
    Waiting,
    /// It replaced the event that waited, returned (the latest state wins).
    Coalesced(PushEvent),
    /// Too many users have a push waiting: dropped (returned).
    Dropped(PushEvent),
}

/// When each user's pushes go: at most one per user per `min_interval`;
/// what arrives meanwhile replaces what waits and goes when the interval
/// ends. No I/O and no clock of its own (the pusher's loop drives it).
pub struct PushSchedule {
    min_interval: Duration,
    max_users: usize,
    slots: HashMap<UserKey, Slot>,
    /// When each waiting push is due.
    due: BTreeMap<(Instant, UserKey), ()>,
}

impl PushSchedule {
    pub fn new(min_interval: Duration, max_users: usize) -> Self {
        Self { min_interval, max_users, slots: HashMap::new(), due: BTreeMap::new() }
    }

    /// An event arrives at `now`.
    pub fn offer(&mut self, event: PushEvent, now: Instant) -> Offer {
        let key = (event.tenant.clone(), event.to_user.clone());
        match self.slots.get_mut(&key) {
            Some(slot) if slot.next_at > now => match slot.waiting.replace(event) {
                None => {
                    self.due.insert((slot.next_at, key), ());
                    Offer::Waiting
                }
                Some(old) => Offer::Coalesced(old),
            },
            _ => {
                if self.slots.len() >= self.max_users {
                    // Forget users whose interval is over.
                    self.slots.retain(|_, s| s.next_at > now || s.waiting.is_some());
                }
                if self.slots.len() >= self.max_users {
                    return Offer::Dropped(event);
                }
                self.slots.insert(key, Slot { next_at: now + self.min_interval, waiting: None });
                Offer::Send(event)
            }
        }
    }

    /// The queue ids of the events that wait.
    pub fn waiting_ids(&self) -> impl Iterator<Item = &String> {
        self.slots.values().filter_map(|s| s.waiting.as_ref()?.queue_id.as_ref())
    }

    /// When the next waiting push is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.due.keys().next().map(|(at, _)| *at)
    }

    /// The pushes due at `now`, oldest due first; each starts its user's
    /// next interval.
    pub fn due(&mut self, now: Instant) -> Vec<PushEvent> {
        let mut out = Vec::new();
        while let Some(entry) = self.due.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let (_, key) = entry.remove_entry().0;
            if let Some(slot) = self.slots.get_mut(&key)
                && let Some(event) = slot.waiting.take()
            {
                slot.next_at = now + self.min_interval;
                out.push(event);
            }
        }
        out
    }
}

/// What to do after an attempt to deliver a push.
#[derive(Debug, PartialEq)]
pub enum Next {
    Done,
    /// Try again after this long.
    RetryAfter(Duration),
    GiveUp,
}

/// The retry rule: 5xx, timeouts and connection errors are retried with
/// exponential backoff (`BACKOFF_BASE` doubling, plus up to half of it in
/// jitter) up to `max_attempts` attempts; a 4xx never is. `jitter` in
/// [0, 1) is the caller's random draw.
pub fn after_attempt(attempt: u32, max_attempts: u32, outcome: &Outcome, jitter: f64) -> Next {
    match outcome {
        Outcome::Sent | Outcome::Refused(_) => Next::Done,
        Outcome::Failed(_) if attempt < max_attempts => {
            let backoff = BACKOFF_BASE * 2u32.saturating_pow(attempt.saturating_sub(1));
            Next::RetryAfter(backoff + backoff.mul_f64(jitter.clamp(0.0, 1.0) * 0.5))
        }
        Outcome::Failed(_) => Next::GiveUp,
    }
}

/// Most events written to the push queue at once.
const PUT_BATCH: usize = 256;
/// Most events taken over from stopped nodes per pass.
const TAKEOVER_BATCH: usize = 1024;

/// The events this node holds in the push queue that are being sent.
type InFlight = Arc<Mutex<HashSet<String>>>;

async fn run(
    config: Arc<PushConfig>,
    messages: Arc<dyn MessageStore>,
    queue: Option<Arc<dyn PushQueue>>,
    mut rx: mpsc::Receiver<PushEvent>,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(CONCURRENT));
    // One agent for every call: it keeps connections to the webhook open.
    let agent: ureq::Agent =
        ureq::Agent::config_builder().timeout_global(Some(config.timeout)).http_status_as_error(false).build().into();
    let mut schedule = PushSchedule::new(config.min_interval, MAX_WAITING_USERS);
    let in_flight: InFlight = Default::default();
    // Held events are kept well within the takeover time; stopped nodes'
    // events are looked for a few times per takeover time.
    let mut keep = tokio::time::interval(config.takeover_after / 3);
    let mut takeover = tokio::time::interval(config.takeover_after / 4);
    for tick in [&mut keep, &mut takeover] {
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    let ctx =
        SendContext { config: config.clone(), agent, messages, queue: queue.clone(), in_flight: in_flight.clone() };
    // Pushes to send as soon as one of the `CONCURRENT` requests is free.
    // The loop never waits for one, so that new events are written to the
    // queue at once even while the webhook is slow or down; past
    // `config.queue` of them, new ones are dropped (counted).
    let mut ready: std::collections::VecDeque<PushEvent> = Default::default();
    loop {
        let next_due = schedule.next_due();
        let new = tokio::select! {
            _ = shutdown.cancelled() => return,
            permit = permits.clone().acquire_owned(), if !ready.is_empty() => {
                if let (Ok(permit), Some(event)) = (permit, ready.pop_front()) {
                    spawn_send(&ctx, permit, event);
                }
                continue;
            }
            event = rx.recv() => {
                let Some(event) = event else { return };
                let mut batch = vec![event];
                while batch.len() < PUT_BATCH {
                    match rx.try_recv() {
                        Ok(e) => batch.push(e),
                        Err(_) => break,
                    }
                }
                if let Some(q) = &queue {
                    let encoded: Vec<Vec<u8>> = batch.iter().map(PushEvent::encode).collect();
                    match q.put(&encoded).await {
                        Ok(ids) => batch.iter_mut().zip(ids).for_each(|(e, id)| e.queue_id = Some(id)),
                        Err(e) => {
                            metrics::counter!("dongdong_push_unqueued_total").increment(batch.len() as u64);
                            tracing::warn!(error = %e, "cannot keep pushes in the push queue; they are held in memory only");
                        }
                    }
                }
                offer_all(&mut schedule, &queue, batch).await
            }
            _ = tokio::time::sleep_until(next_due.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))), if next_due.is_some() => {
                schedule.due(Instant::now())
            }
            _ = keep.tick(), if queue.is_some() => {
                let mut held: Vec<String> = schedule.waiting_ids().cloned().collect();
                held.extend(ready.iter().filter_map(|e| e.queue_id.clone()));
                held.extend(in_flight.lock().map(|f| f.iter().cloned().collect::<Vec<_>>()).unwrap_or_default());
                if let Some(q) = &queue
                    && let Err(e) = q.keep(&held).await
                {
                    tracing::warn!(error = %e, "cannot keep the held pushes; another node may take them over");
                }
                continue;
            }
            _ = takeover.tick(), if queue.is_some() => {
                let Some(q) = &queue else { continue };
                match q.take_over(config.takeover_after, TAKEOVER_BATCH).await {
                    Ok(taken) if !taken.is_empty() => {
                        let (events, stale) = latest_per_user(taken);
                        metrics::counter!("dongdong_push_taken_over_total").increment(events.len() as u64);
                        tracing::info!(events = events.len(), "took over pushes of a stopped node");
                        forget(&queue, stale).await;
                        offer_all(&mut schedule, &queue, events).await
                    }
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "push takeover pass failed");
                        continue;
                    }
                }
            }
        };
        let mut over = Vec::new();
        for event in new {
            if ready.len() < config.queue {
                ready.push_back(event);
            } else {
                metrics::counter!("dongdong_push_dropped_total", "why" => "queue").increment(1);
                over.extend(event.queue_id);
            }
        }
        forget(&queue, over).await;
    }
}

/// Offers events to the schedule; those to send now are returned. What the
/// schedule lets go (replaced, dropped) is done with in the queue.
async fn offer_all(
    schedule: &mut PushSchedule,
    queue: &Option<Arc<dyn PushQueue>>,
    events: Vec<PushEvent>,
) -> Vec<PushEvent> {
    let mut ready = Vec::new();
    let mut gone = Vec::new();
    for event in events {
        match schedule.offer(event, Instant::now()) {
            Offer::Send(event) => ready.push(event),
            Offer::Waiting => {}
            Offer::Coalesced(old) => {
                metrics::counter!("dongdong_push_coalesced_total").increment(1);
                gone.extend(old.queue_id);
            }
            Offer::Dropped(event) => {
                metrics::counter!("dongdong_push_dropped_total", "why" => "users").increment(1);
                gone.extend(event.queue_id);
            }
        }
    }
    forget(queue, gone).await;
    ready
}

/// Done with these events in the queue (best effort: one left behind is
/// taken over and sent again, and its key dedupes it).
async fn forget(queue: &Option<Arc<dyn PushQueue>>, ids: Vec<String>) {
    if let Some(q) = queue
        && !ids.is_empty()
        && let Err(e) = q.done(&ids).await
    {
        tracing::warn!(error = %e, "cannot forget sent pushes in the push queue");
    }
}

/// Events taken over, decoded: the latest of each user (the latest state
/// wins, as in the schedule), and the ids of the rest.
fn latest_per_user(taken: Vec<(String, Vec<u8>)>) -> (Vec<PushEvent>, Vec<String>) {
    let mut latest: HashMap<UserKey, PushEvent> = HashMap::new();
    let mut stale = Vec::new();
    for (id, bytes) in taken {
        let Some(event) = PushEvent::decode(&bytes, id.clone()) else {
            stale.push(id);
            continue;
        };
        let key = (event.tenant.clone(), event.to_user.clone());
        if let Some(old) = latest.insert(key, event) {
            stale.extend(old.queue_id);
        }
    }
    (latest.into_values().collect(), stale)
}

/// What a send needs.
struct SendContext {
    config: Arc<PushConfig>,
    agent: ureq::Agent,
    messages: Arc<dyn MessageStore>,
    queue: Option<Arc<dyn PushQueue>>,
    in_flight: InFlight,
}

/// Sends in a task of its own, holding one of the `CONCURRENT` permits.
fn spawn_send(ctx: &SendContext, permit: tokio::sync::OwnedSemaphorePermit, event: PushEvent) {
    let (config, agent, messages, queue, in_flight) =
        (ctx.config.clone(), ctx.agent.clone(), ctx.messages.clone(), ctx.queue.clone(), ctx.in_flight.clone());
    if let (Some(id), Ok(mut f)) = (&event.queue_id, in_flight.lock()) {
        f.insert(id.clone());
    }
    tokio::spawn(async move {
        let id = event.queue_id.clone();
        send(&config, &agent, messages.as_ref(), event).await;
        if let Some(id) = id {
            if let Ok(mut f) = in_flight.lock() {
                f.remove(&id);
            }
            forget(&queue, vec![id]).await;
        }
        drop(permit);
    });
}

/// The body of a push.
async fn body(messages: &dyn MessageStore, e: &PushEvent) -> Vec<u8> {
    let unread_total: u64 = match messages.conversations(&e.tenant, &e.to_user, None, 100).await {
        Ok(page) => page.items.iter().map(|i| i.unread).sum(),
        Err(_) => 0,
    };
    let mut body = json!({
        "tenant": e.tenant,
        "to_user": e.to_user,
        "from_user": e.from_user,
        "conversation_id": e.conversation_id,
        "msg_id": e.msg_id,
        "kind": e.kind,
        "unread_total": unread_total,
        "sent_ms": im_core::now_ms(),
    });
    if let Some(o) = body.as_object_mut() {
        if let Some(p) = &e.preview {
            o.insert("preview".into(), json!(p));
        }
        if let Some(id) = &e.session_id {
            o.insert("session_id".into(), json!(id));
        }
    }
    body.to_string().into_bytes()
}

/// The `X-Dongdong-Signature` of `body` sent at `timestamp_ms`.
pub fn signature(secret: &[u8], timestamp_ms: u64, body: &[u8]) -> String {
    let mut mac = match <Hmac<Sha256> as KeyInit>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(timestamp_ms.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// How one attempt went.
#[derive(Debug)]
pub enum Outcome {
    Sent,
    /// 4xx: the receiver refused it; not retried.
    Refused(u16),
    /// 5xx, a timeout or no connection: retried.
    Failed(String),
}

async fn send(config: &PushConfig, agent: &ureq::Agent, messages: &dyn MessageStore, event: PushEvent) {
    let body = body(messages, &event).await;
    let key = event.idempotency_key();
    let max_attempts = config.max_attempts.max(1);
    for attempt in 1..=max_attempts {
        let (agent, url, secret, body, key) =
            (agent.clone(), config.webhook_url.clone(), config.secret.clone().into_bytes(), body.clone(), key.clone());
        let outcome = tokio::task::spawn_blocking(move || post(&agent, &url, &secret, &body, &key))
            .await
            .unwrap_or_else(|e| Outcome::Failed(e.to_string()));
        match (&outcome, after_attempt(attempt, max_attempts, &outcome, rand::random::<f64>())) {
            (Outcome::Sent, _) => {
                metrics::counter!("dongdong_push_sent_total").increment(1);
                metrics::histogram!("dongdong_push_seconds").record(event.at.elapsed().as_secs_f64());
                return;
            }
            (Outcome::Refused(status), _) => {
                metrics::counter!("dongdong_push_failed_total", "why" => "refused").increment(1);
                tracing::warn!(status, to_user = %event.to_user, "the push webhook refused a push; not retried");
                return;
            }
            (Outcome::Failed(why), Next::RetryAfter(pause)) => {
                metrics::counter!("dongdong_push_retries_total").increment(1);
                tracing::debug!(attempt, why, "push failed; retrying");
                tokio::time::sleep(pause).await;
            }
            (Outcome::Failed(why), _) => {
                metrics::counter!("dongdong_push_failed_total", "why" => "gave_up").increment(1);
                tracing::warn!(why, to_user = %event.to_user, attempts = attempt, "push failed; giving up");
                return;
            }
        }
    }
}

/// One POST, blocking (run on the blocking pool).
fn post(agent: &ureq::Agent, url: &str, secret: &[u8], body: &[u8], key: &str) -> Outcome {
    let now = im_core::now_ms();
    let result = agent
        .post(url)
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .header("x-dongdong-timestamp", now.to_string())
        .header("x-dongdong-signature", signature(secret, now, body))
        .send(body);
    match result {
        Ok(r) if r.status().is_success() => Outcome::Sent,
        Ok(r) if r.status().is_client_error() => Outcome::Refused(r.status().as_u16()),
        Ok(r) => Outcome::Failed(format!("HTTP {}", r.status())),
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_of_timestamp_dot_body() {
        // Python: hmac.new(b"key", b"1700000000000.{}", hashlib.sha256).hexdigest()
        let expected = "sha256=36a72f4525d3323bd0f238fe82098164fb77b1e42288ff8e07b074c686178ad3";
        assert_eq!(signature(b"key", 1_700_000_000_000, b"{}"), expected);
        assert_ne!(expected, signature(b"key", 1_700_000_000_001, b"{}"));
        assert_ne!(expected, signature(b"other", 1_700_000_000_000, b"{}"));
    }

    fn event(user: &str, msg_id: &str, at: Instant) -> PushEvent {
        PushEvent {
            tenant: "t".into(),
            to_user: user.into(),
            from_user: "amy".into(),
            conversation_id: "c".into(),
            msg_id: msg_id.into(),
            kind: "message",
            preview: None,
            session_id: None,
            at,
            queue_id: None,
        }
    }

    fn sent(o: Offer) -> Option<String> {
        match o {
            Offer::Send(e) => Some(e.msg_id),
            _ => None,
        }
    }

    #[test]
    fn one_push_per_user_per_interval_and_the_latest_waits() {
        let t0 = Instant::now();
        let second = Duration::from_secs(1);
        let mut s = PushSchedule::new(10 * second, 100);
        assert_eq!(sent(s.offer(event("bob", "m1", t0), t0)).as_deref(), Some("m1"), "the first goes at once");
        assert_eq!(sent(s.offer(event("cy", "c1", t0), t0)).as_deref(), Some("c1"), "another user has their own");
        assert!(matches!(s.offer(event("bob", "m2", t0 + second), t0 + second), Offer::Waiting));
        assert!(matches!(s.offer(event("bob", "m3", t0 + 2 * second), t0 + 2 * second), Offer::Coalesced(_)));
        assert_eq!(s.next_due(), Some(t0 + 10 * second), "when bob's interval ends");
        assert!(s.due(t0 + 9 * second).is_empty());
        let due: Vec<String> = s.due(t0 + 10 * second).into_iter().map(|e| e.msg_id).collect();
        assert_eq!(due, ["m3"], "the latest state, once");
        assert_eq!(s.next_due(), None);
        assert!(matches!(s.offer(event("bob", "m4", t0 + 11 * second), t0 + 11 * second), Offer::Waiting));
        assert_eq!(s.next_due(), Some(t0 + 20 * second), "a new interval started when m3 went");
        // Overdue and not taken yet (a busy loop): a newer event goes in
        // its place, and m4 never goes (the latest state wins).
        assert_eq!(sent(s.offer(event("bob", "m5", t0 + 30 * second), t0 + 30 * second)).as_deref(), Some("m5"));
        assert!(s.due(t0 + 30 * second).is_empty());
    }

    #[test]
    fn users_with_a_push_waiting_are_bounded() {
        let t0 = Instant::now();
        let mut s = PushSchedule::new(Duration::from_secs(10), 2);
        assert!(sent(s.offer(event("a", "1", t0), t0)).is_some());
        assert!(sent(s.offer(event("b", "1", t0), t0)).is_some());
        assert!(matches!(s.offer(event("c", "1", t0), t0), Offer::Dropped(_)), "two users in their interval");
        let later = t0 + Duration::from_secs(11);
        assert!(sent(s.offer(event("c", "2", later), later)).is_some(), "intervals over: forgotten, room again");
    }

    #[test]
    fn retries_back_off_and_stop() {
        let failed = Outcome::Failed("HTTP 503".into());
        assert_eq!(after_attempt(1, 5, &failed, 0.0), Next::RetryAfter(BACKOFF_BASE));
        assert_eq!(after_attempt(3, 5, &failed, 0.0), Next::RetryAfter(BACKOFF_BASE * 4));
        assert_eq!(
            after_attempt(3, 5, &failed, 0.999),
            Next::RetryAfter(BACKOFF_BASE * 4 + (BACKOFF_BASE * 2).mul_f64(0.999))
        );
        assert_eq!(after_attempt(5, 5, &failed, 0.0), Next::GiveUp);
        assert_eq!(after_attempt(1, 5, &Outcome::Refused(404), 0.0), Next::Done, "4xx: never retried");
        assert_eq!(after_attempt(1, 5, &Outcome::Sent, 0.0), Next::Done);
    }
}
