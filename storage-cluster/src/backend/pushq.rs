//! Offline pushes that outlive their node: a Redis stream per node,
//! `dd:{push:<database>:<node>}:q`, with the consumer group `pushers` (the
//! MongoDB database names the deployment: the nodes that share it share
//! their pushes). A node adds its
//! events to its own stream and reads them into its own pending entries
//! list in the same round trip; while it holds them it claims them again
//! (which resets their idle time); when done it acknowledges and deletes
//! them. Any node's takeover pass claims, from every node's stream
//! (`dd:push:<database>:nodes`, scored by when the node was last seen), entries idle
//! longer than the takeover time: a dead node's pushes go on from another
//! node. Each stream is one key (one Redis Cluster slot per node).

use super::{CallTimer, RedisConn, redis_err};
use async_trait::async_trait;
use redis::Value;
use std::time::Duration;
use storage::{PushQueue, Result};

const GROUP: &str = "pushers";
/// A stream keeps at most about this many events (its node's backlog).
const MAX_LEN: usize = 1_000_000;
/// A node not seen for this long, whose stream is empty, is forgotten.
const FORGET_NODE_MS: u64 = 24 * 3600 * 1000;

pub struct RedisPushQueue {
    redis: RedisConn,
    /// The deployment (its MongoDB database).
    deployment: String,
    node: String,
    key: String,
    nodes: String,
}

fn stream(deployment: &str, node: &str) -> String {
    format!("dd:{{push:{deployment}:{node}}}:q")
}

/// An event's id: its node and its id in that node's stream.
fn id(node: &str, entry: &str) -> String {
    format!("{node}|{entry}")
}

/// The ids grouped by stream key.
fn by_stream<'a>(deployment: &str, ids: &'a [String]) -> Vec<(String, Vec<&'a str>)> {
    let mut out: Vec<(String, Vec<&str>)> = Vec::new();
    for (node, entry) in ids.iter().filter_map(|i| i.rsplit_once('|')) {
        let key = stream(deployment, node);
        match out.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(entry),
            None => out.push((key, vec![entry])),
        }
    }
    out
}

impl RedisPushQueue {
    /// The queue of `node` in `deployment` (its MongoDB database).
    pub async fn open(redis: RedisConn, deployment: &str, node: &str) -> Result<Self> {
        let key = stream(deployment, node);
        let nodes = format!("dd:push:{deployment}:nodes");
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&key)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut redis.clone())
            .await;
        if let Err(e) = created
            && e.code() != Some("BUSYGROUP")
        {
            return Err(redis_err("push queue")(e));
        }
        let _: () = redis::cmd("ZADD")
            .arg(&nodes)
            .arg(im_core::now_ms())
            .arg(node)
            .query_async(&mut redis.clone())
            .await
            .map_err(redis_err("push queue"))?;
        Ok(Self { redis, deployment: deployment.to_string(), node: node.to_string(), key, nodes })
    }

    /// Claims entries of `node`'s stream idle for `idle`, up to `max`.
    async fn claim_from(&self, node: &str, idle: Duration, max: usize) -> Result<Vec<(String, Vec<u8>)>> {
        let key = stream(&self.deployment, node);
        let mut out = Vec::new();
        let mut cursor = "0-0".to_string();
        while out.len() < max {
            let reply: Value = redis::cmd("XAUTOCLAIM")
                .arg(&key)
                .arg(GROUP)
                .arg(&self.node)
                .arg(u64::try_from(idle.as_millis()).unwrap_or(u64::MAX))
                .arg(&cursor)
                .arg("COUNT")
                .arg((max - out.len()).min(256))
                .query_async(&mut self.redis.clone())
                .await
                .map_err(redis_err("XAUTOCLAIM"))?;
            let Value::Array(mut parts) = reply else { break };
            if parts.len() < 2 {
                break;
            }
            let entries = parts.swap_remove(1);
            let next: String = redis::from_redis_value(parts.swap_remove(0))
                .map_err(|e| storage::StorageError::Unavailable(format!("redis XAUTOCLAIM: {e}")))?;
            if let Value::Array(entries) = entries {
                for entry in entries {
                    if let Some((entry_id, event)) = entry_event(entry) {
                        out.push((id(node, &entry_id), event));
                    }
                }
            }
            if next == "0-0" {
                break;
            }
            cursor = next;
        }
        Ok(out)
    }
}

/// `[id, [field, value, ...]]` → (id, the value of field `e`).
fn entry_event(entry: Value) -> Option<(String, Vec<u8>)> {
    let Value::Array(mut parts) = entry else { return None };
    if parts.len() != 2 {
        return None;
    }
    let fields = parts.pop()?;
    let entry_id: String = redis::from_redis_value(parts.pop()?).ok()?;
    let Value::Array(fields) = fields else { return None };
    let mut it = fields.into_iter();
    while let (Some(name), Some(value)) = (it.next(), it.next()) {
        if matches!(&name, Value::BulkString(n) if n == b"e")
            && let Value::BulkString(v) = value
        {
            return Some((entry_id, v));
        }
    }
    None
}

#[async_trait]
impl PushQueue for RedisPushQueue {
    async fn put(&self, events: &[Vec<u8>]) -> Result<Vec<String>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let _t = CallTimer::new("redis", "push_put");
        let mut pipe = redis::pipe();
        for e in events {
            pipe.cmd("XADD").arg(&self.key).arg("MAXLEN").arg("~").arg(MAX_LEN).arg("*").arg("e").arg(e);
        }
        // Into this node's pending entries: from now on it must keep them.
        pipe.cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(&self.node)
            .arg("COUNT")
            .arg(events.len() + 1024)
            .arg("STREAMS")
            .arg(&self.key)
            .arg(">")
            .ignore();
        let ids: Vec<String> = pipe.query_async(&mut self.redis.clone()).await.map_err(redis_err("XADD"))?;
        Ok(ids.iter().map(|e| id(&self.node, e)).collect())
    }

    async fn keep(&self, ids: &[String]) -> Result<()> {
        let mut pipe = redis::pipe();
        for (key, entries) in by_stream(&self.deployment, ids) {
            pipe.cmd("XCLAIM").arg(key).arg(GROUP).arg(&self.node).arg(0).arg(entries).arg("JUSTID").ignore();
        }
        if pipe.is_empty() {
            return Ok(());
        }
        pipe.query_async::<()>(&mut self.redis.clone()).await.map_err(redis_err("XCLAIM"))
    }

    async fn done(&self, ids: &[String]) -> Result<()> {
        let mut pipe = redis::pipe();
        for (key, entries) in by_stream(&self.deployment, ids) {
            pipe.cmd("XACK").arg(&key).arg(GROUP).arg(&entries).ignore();
            pipe.cmd("XDEL").arg(&key).arg(&entries).ignore();
        }
        if pipe.is_empty() {
            return Ok(());
        }
        pipe.query_async::<()>(&mut self.redis.clone()).await.map_err(redis_err("XACK"))
    }

    async fn take_over(&self, idle: Duration, max: usize) -> Result<Vec<(String, Vec<u8>)>> {
        let now = im_core::now_ms();
        let mut conn = self.redis.clone();
        let _: () = redis::cmd("ZADD")
            .arg(&self.nodes)
            .arg(now)
            .arg(&self.node)
            .query_async(&mut conn)
            .await
            .map_err(redis_err("push nodes"))?;
        let nodes: Vec<(String, u64)> = redis::cmd("ZRANGE")
            .arg(&self.nodes)
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await
            .map_err(redis_err("push nodes"))?;
        let mut out = Vec::new();
        for (node, seen) in nodes {
            if out.len() >= max {
                break;
            }
            out.extend(self.claim_from(&node, idle, max - out.len()).await?);
            if node != self.node && now.saturating_sub(seen) > FORGET_NODE_MS {
                let len: u64 = redis::cmd("XLEN")
                    .arg(stream(&self.deployment, &node))
                    .query_async(&mut conn)
                    .await
                    .map_err(redis_err("XLEN"))?;
                if len == 0 {
                    let _: () = redis::cmd("DEL")
                        .arg(stream(&self.deployment, &node))
                        .query_async(&mut conn)
                        .await
                        .map_err(redis_err("DEL"))?;
                    let _: () = redis::cmd("ZREM")
                        .arg(&self.nodes)
                        .arg(&node)
                        .query_async(&mut conn)
                        .await
                        .map_err(redis_err("ZREM"))?;
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node's events are its own while it keeps them; once it stops,
    /// another node takes them over (once), and done events are gone.
    async fn handover(cluster: bool) {
        let Some(redis) = super::super::test_redis(cluster).await else { return };
        let tag = im_core::new_msg_id();
        let a = RedisPushQueue::open(redis.clone(), &tag, "a").await.unwrap();
        let b = RedisPushQueue::open(redis.clone(), &tag, "b").await.unwrap();
        let ids = a.put(&[b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]).await.unwrap();
        assert_eq!(ids.len(), 3);
        a.done(&ids[..1]).await.unwrap();
        let idle = Duration::from_millis(300);
        let mine = |taken: Vec<(String, Vec<u8>)>| -> Vec<Vec<u8>> { taken.into_iter().map(|(_, e)| e).collect() };
        for _ in 0..3 {
            tokio::time::sleep(idle / 2).await;
            a.keep(&ids[1..]).await.unwrap();
            assert!(mine(b.take_over(idle, 100).await.unwrap()).is_empty(), "kept by a");
        }
        // a stops keeping them (it died).
        tokio::time::sleep(idle * 2).await;
        let taken = b.take_over(idle, 100).await.unwrap();
        assert_eq!(taken.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>(), [b"two".to_vec(), b"three".to_vec()]);
        assert!(mine(b.take_over(idle, 100).await.unwrap()).is_empty(), "b holds them now");
        let held: Vec<String> = taken.into_iter().map(|(id, _)| id).collect();
        b.done(&held).await.unwrap();
        tokio::time::sleep(idle * 2).await;
        assert!(mine(b.take_over(idle, 100).await.unwrap()).is_empty(), "done: gone");
        let len: u64 = redis::cmd("XLEN").arg(stream(&tag, "a")).query_async(&mut redis.clone()).await.unwrap();
        assert_eq!(len, 0);
    }

    #[tokio::test]
    async fn pushes_are_handed_over_when_their_node_stops_keeping_them() {
        handover(false).await;
    }

    #[tokio::test]
    async fn pushes_are_handed_over_on_redis_cluster() {
        handover(true).await;
    }
}
