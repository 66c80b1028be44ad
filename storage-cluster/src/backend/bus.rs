//! The cross-node bus on Redis pub/sub: node N listens on `dd:node:N`.
//! Pub/sub needs a connection of its own; the subscriber reconnects and
//! resubscribes after a loss. Messages published while it was away are lost,
//! and so are those a full inbox drops: either way the node is told (an
//! empty payload) before any later message, and its connections replay.

use super::{CallTimer, redis_err};
use async_trait::async_trait;
use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use std::time::Duration;
use storage::{NodeBus, Result, StorageError};
use tokio::sync::mpsc;

/// Pushes queued for this node before the connection task takes them.
const INBOX: usize = 65_536;

pub struct RedisBus {
    client: redis::Client,
    publisher: ConnectionManager,
    timeout: Duration,
}

pub(crate) fn channel(node_id: &str) -> String {
    format!("dd:node:{node_id}")
}

impl RedisBus {
    pub fn new(url: &str, publisher: ConnectionManager, timeout: Duration) -> Result<Self> {
        let client =
            redis::Client::open(url).map_err(|e| StorageError::Unavailable(format!("invalid redis_url: {e}")))?;
        Ok(Self { client, publisher, timeout })
    }
}

#[async_trait]
impl NodeBus for RedisBus {
    async fn publish(&self, node_id: &str, payload: Vec<u8>) -> Result<()> {
        let _timer = CallTimer::new("redis", "publish");
        let _receivers: u64 = redis::cmd("PUBLISH")
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
        // Subscribe once now so that start-up fails loudly if Redis is away.
        let first = tokio::time::timeout(self.timeout, subscribe_once(&self.client, &name))
            .await
            .map_err(|_| StorageError::Unavailable("redis subscribe: timed out".into()))??;
        tokio::spawn(subscriber(self.client.clone(), name, first, tx));
        Ok(rx)
    }
}

async fn subscribe_once(client: &redis::Client, channel: &str) -> Result<redis::aio::PubSub> {
    let mut pubsub = client.get_async_pubsub().await.map_err(redis_err("pubsub connect"))?;
    pubsub.subscribe(channel).await.map_err(redis_err("SUBSCRIBE"))?;
    Ok(pubsub)
}

async fn subscriber(client: redis::Client, channel: String, first: redis::aio::PubSub, tx: mpsc::Sender<Vec<u8>>) {
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
                    if tx.send(Vec::new()).await.is_err() {
                        return;
                    }
                    p
                }
                Err(e) => {
                    tracing::warn!(error = %e, "node bus subscribe failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    if tx.is_closed() {
                        return;
                    }
                    continue;
                }
            },
        };
        let mut stream = current.into_on_message();
        // Pushes were dropped: the node must hear so before any later one.
        let mut dropped = false;
        while let Some(msg) = stream.next().await {
            let payload: Vec<u8> = msg.get_payload_bytes().to_vec();
            // The marker first, and the push only once the marker went.
            let sent = if dropped { tx.try_send(Vec::new()) } else { Ok(()) };
            match sent.and_then(|()| tx.try_send(payload)) {
                Ok(()) => dropped = false,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    // Dropped pushes stay pending: the empty payload sent
                    // ahead of the next push makes the connections replay.
                    metrics::counter!("dongdong_bus_dropped_total").increment(1);
                    dropped = true;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
        metrics::counter!("dongdong_bus_disconnects_total").increment(1);
        tracing::warn!(channel, "node bus connection lost; resubscribing");
    }
}
