//! The cross-node bus on Redis pub/sub: node N listens on `dd:node:N`.
//! Pub/sub needs a connection of its own; the subscriber reconnects and
//! resubscribes after a loss. Messages published while it was away are lost,
//! and so are those a full inbox drops: either way the node is told (an
//! empty payload) before any later message, and its connections replay.
//!
//! On a Redis Cluster the channels are sharded (`SPUBLISH`/`SSUBSCRIBE`,
//! Redis 7): a message goes only to the master that owns its channel's slot,
//! not to every node of the cluster as plain `PUBLISH` would, so the bus
//! grows with the cluster. The cluster client resubscribes where the slot
//! moves (failover, resharding); a lost connection is reported to the node
//! the same way as on a single Redis.

use super::{CallTimer, ClusterOptions, RedisConn, redis_err};
use async_trait::async_trait;
use futures_util::StreamExt;
use std::time::Duration;
use storage::{NodeBus, Result, StorageError};
use tokio::sync::mpsc;

/// Pushes queued for this node before the connection task takes them.
const INBOX: usize = 65_536;

enum Subscriber {
    Single(redis::Client),
    Cluster(Vec<String>),
}

pub struct RedisBus {
    subscriber: Subscriber,
    publisher: RedisConn,
    timeout: Duration,
}

pub(crate) fn channel(node_id: &str) -> String {
    format!("dd:node:{node_id}")
}

impl RedisBus {
    pub fn new(options: &ClusterOptions, publisher: RedisConn) -> Result<Self> {
        let subscriber = if options.redis_cluster.is_empty() {
            Subscriber::Single(
                redis::Client::open(options.redis_url.as_str())
                    .map_err(|e| StorageError::Unavailable(format!("invalid redis_url: {e}")))?,
            )
        } else {
            Subscriber::Cluster(options.redis_cluster.clone())
        };
        Ok(Self { subscriber, publisher, timeout: options.redis_timeout })
    }
}

#[async_trait]
impl NodeBus for RedisBus {
    async fn publish(&self, node_id: &str, payload: Vec<u8>) -> Result<()> {
        let _timer = CallTimer::new("redis", "publish");
        let command = if self.publisher.is_cluster() { "SPUBLISH" } else { "PUBLISH" };
        let _receivers: u64 = redis::cmd(command)
            .arg(channel(node_id))
            .arg(payload)
            .query_async(&mut self.publisher.clone())
            .await
            .map_err(redis_err("PUBLISH"))?;
        metrics::counter!("dongdong_bus_published_total").increment(1);
        Ok(())
    }

    async fn subscribe(&self, node_id: &str) -> Result<mpsc::Receiver<Vec<u8>>> {
        let (tx, rx) = mpsc::channel(INBOX);
        let name = channel(node_id);
        let timed_out = |_| StorageError::Unavailable("redis subscribe: timed out".into());
        // Subscribe once now so that start-up fails loudly if Redis is away.
        match &self.subscriber {
            Subscriber::Single(client) => {
                let first =
                    tokio::time::timeout(self.timeout, subscribe_once(client, &name)).await.map_err(timed_out)??;
                tokio::spawn(subscriber(client.clone(), name, first, Inbox::new(tx)));
            }
            Subscriber::Cluster(seeds) => {
                let sharded = Sharded {
                    seeds: seeds.clone(),
                    channel: name,
                    timeout: self.timeout,
                    publisher: self.publisher.clone(),
                    probe: format!("dd-bus-probe:{}", im_core::new_msg_id()).into_bytes(),
                };
                let first = tokio::time::timeout(self.timeout, sharded.subscribe()).await.map_err(timed_out)??;
                tokio::spawn(sharded.run(first, Inbox::new(tx)));
            }
        }
        Ok(rx)
    }
}

/// Where the subscriber puts what arrives: the node's bounded inbox. When it
/// is full, pushes are dropped and the node hears so (an empty payload)
/// before the next one.
struct Inbox {
    tx: mpsc::Sender<Vec<u8>>,
    dropped: bool,
}

impl Inbox {
    fn new(tx: mpsc::Sender<Vec<u8>>) -> Self {
        Self { tx, dropped: false }
    }

    /// False once the node has stopped listening.
    fn deliver(&mut self, payload: Vec<u8>) -> bool {
        // The marker first, and the push only once the marker went.
        let sent = if self.dropped { self.tx.try_send(Vec::new()) } else { Ok(()) };
        match sent.and_then(|()| self.tx.try_send(payload)) {
            Ok(()) => self.dropped = false,
            Err(mpsc::error::TrySendError::Full(_)) => {
                // Dropped pushes stay pending: the empty payload sent
                // ahead of the next push makes the connections replay.
                metrics::counter!("dongdong_bus_dropped_total").increment(1);
                self.dropped = true;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return false,
        }
        true
    }

    /// Tells the node that pushes may have been lost; false once it has
    /// stopped listening.
    async fn lost(&mut self) -> bool {
        self.dropped = false;
        self.tx.send(Vec::new()).await.is_ok()
    }
}

/// A silent subscription is probed after this long: a message of its own
/// is published to its channel.
const PROBE_AFTER: Duration = Duration::from_secs(10);

/// A subscription to a sharded channel of a Redis Cluster. The cluster
/// client resubscribes by itself where the channel's slot moves, but it can
/// wedge after a failover (see `conn.rs`) and then receives nothing, without
/// an error. So a subscription that was silent for `PROBE_AFTER` publishes a
/// probe to itself; if it does not come back within the timeout (three
/// times), the subscription is made afresh and the node told that pushes
/// may have been lost.
type Subscription = (redis::cluster_async::ClusterConnection, mpsc::UnboundedReceiver<redis::PushInfo>);

struct Sharded {
    seeds: Vec<String>,
    channel: String,
    timeout: Duration,
    publisher: RedisConn,
    probe: Vec<u8>,
}

impl Sharded {
    /// Publishes the probe to the channel (best effort).
    async fn probe(&self) {
        let probe = redis::cmd("SPUBLISH").arg(&self.channel).arg(&self.probe).clone();
        let mut publisher = self.publisher.clone();
        let _ = tokio::time::timeout(self.timeout, probe.query_async::<u64>(&mut publisher)).await;
    }

    async fn subscribe(&self) -> Result<Subscription> {
        let (pushes, received) = mpsc::unbounded_channel();
        let client = super::cluster_client(&self.seeds, self.timeout)
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(pushes)
            .build()
            .map_err(redis_err("cluster pubsub client"))?;
        let mut conn = client.get_async_connection().await.map_err(redis_err("cluster pubsub connect"))?;
        conn.ssubscribe(&self.channel).await.map_err(redis_err("SSUBSCRIBE"))?;
        Ok((conn, received))
    }

    async fn run(self, first: Subscription, mut inbox: Inbox) {
        let mut current = Some(first);
        let mut backoff = Duration::from_millis(50);
        loop {
            let (conn, pushes) = match current.take() {
                Some(s) => s,
                None => match tokio::time::timeout(self.timeout * 2, self.subscribe()).await {
                    Ok(Ok(s)) => {
                        tracing::info!(channel = self.channel, "subscribed to the node bus afresh");
                        backoff = Duration::from_millis(50);
                        if !inbox.lost().await {
                            return;
                        }
                        s
                    }
                    failed => {
                        let e = failed.map_or_else(
                            |_| "timed out".to_string(),
                            |r| r.err().map(|e| e.to_string()).unwrap_or_default(),
                        );
                        tracing::warn!(error = e, "node bus subscribe failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                        if inbox.tx.is_closed() {
                            return;
                        }
                        continue;
                    }
                },
            };
            if !self.listen(pushes, &mut inbox).await {
                return;
            }
            drop(conn);
            metrics::counter!("dongdong_bus_disconnects_total").increment(1);
            tracing::warn!(
                channel = self.channel,
                "the node bus subscription is deaf (its probe did not come back); subscribing afresh"
            );
        }
    }

    /// Hands on what arrives until the subscription is found deaf (true)
    /// or the node stops listening (false).
    async fn listen(&self, mut pushes: mpsc::UnboundedReceiver<redis::PushInfo>, inbox: &mut Inbox) -> bool {
        let mut deadline = tokio::time::Instant::now() + PROBE_AFTER;
        let mut probes_unanswered = 0u32;
        loop {
            match tokio::time::timeout_at(deadline, pushes.recv()).await {
                Ok(None) => return true,
                Ok(Some(push)) => match push.kind {
                    redis::PushKind::SMessage => {
                        deadline = tokio::time::Instant::now() + PROBE_AFTER;
                        probes_unanswered = 0;
                        let Some(redis::Value::BulkString(payload)) = push.data.into_iter().nth(1) else { continue };
                        if payload != self.probe && !inbox.deliver(payload) {
                            return false;
                        }
                    }
                    redis::PushKind::Disconnection => {
                        // One of the cluster's connections closed: the
                        // client reconnects and resubscribes; what was
                        // published meanwhile may be lost. Probed at once:
                        // the resubscription may not happen (a failover).
                        metrics::counter!("dongdong_bus_disconnects_total").increment(1);
                        tracing::warn!(channel = self.channel, "a node bus connection to the Redis Cluster closed");
                        if !inbox.lost().await {
                            return false;
                        }
                        if probes_unanswered == 0 {
                            probes_unanswered = 1;
                            deadline = tokio::time::Instant::now() + self.timeout;
                            self.probe().await;
                        }
                    }
                    _ => {}
                },
                Err(_) => {
                    if probes_unanswered >= 3 {
                        return true;
                    }
                    probes_unanswered += 1;
                    deadline = tokio::time::Instant::now() + self.timeout;
                    self.probe().await;
                }
            }
        }
    }
}

async fn subscribe_once(client: &redis::Client, channel: &str) -> Result<redis::aio::PubSub> {
    let mut pubsub = client.get_async_pubsub().await.map_err(redis_err("pubsub connect"))?;
    pubsub.subscribe(channel).await.map_err(redis_err("SUBSCRIBE"))?;
    Ok(pubsub)
}

async fn subscriber(client: redis::Client, channel: String, first: redis::aio::PubSub, mut inbox: Inbox) {
    let mut pubsub = Some(first);
    let mut backoff = Duration::from_millis(50);
    loop {
        let current = match pubsub.take() {
            Some(p) => p,
            None => match subscribe_once(&client, &channel).await {
                Ok(p) => {
                    tracing::info!(channel, "resubscribed to the node bus");
                    backoff = Duration::from_millis(50);
                    // Tell the node that pushes may have been lost meanwhile.
                    if !inbox.lost().await {
                        return;
                    }
                    p
                }
                Err(e) => {
                    tracing::warn!(error = %e, "node bus subscribe failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    if inbox.tx.is_closed() {
                        return;
                    }
                    continue;
                }
            },
        };
        let mut stream = current.into_on_message();
        while let Some(msg) = stream.next().await {
            if !inbox.deliver(msg.get_payload_bytes().to_vec()) {
                return;
            }
        }
        metrics::counter!("dongdong_bus_disconnects_total").increment(1);
        tracing::warn!(channel, "node bus connection lost; resubscribing");
    }
}
