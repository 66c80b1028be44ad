//! One Redis connection type for the backend, whether it talks to a single
//! Redis (a [`ConnectionManager`], which reconnects by itself) or to a Redis
//! Cluster (a [`ClusterConnection`], which follows MOVED/ASK, refreshes its
//! slot map and reconnects by itself).
//!
//! On a cluster, a pipeline may only touch one slot. The backend's
//! pipelines batch commands for many users (acks of many devices, presence
//! refreshes, event marks), so [`RedisConn`] splits such a pipeline by hash
//! tag, sends the parts concurrently (each is one request to the master of
//! its slot) and puts the replies back in order: one round trip of wall time,
//! as on a single Redis. Scripts and transactions never span users: every key
//! one of them touches carries the same hash tag (see `user_tag` and the
//! customer-service prefix).

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(Arc<ClusterHandle>),
}

/// A cluster connection that is replaced when it is stuck. The cluster
/// client (redis-rs 1.8) can wedge after a master fails over: every request
/// times out, even to masters that are fine, and stays so (the soak with a
/// master killed found it, twice). When every request has failed with a
/// timeout or an I/O error for `stuck_after`, a new connection is made from
/// the seeds and takes the old one's place for every user of the handle.
pub struct ClusterHandle {
    client: ClusterClient,
    conn: arc_swap::ArcSwap<ClusterConnection>,
    /// Since when every request failed, in ms after `born` (0: the last one
    /// succeeded). Atomic: every request of the node passes here.
    failing_since: AtomicU64,
    born: Instant,
    rebuilding: AtomicBool,
    stuck_after: Duration,
    timeout: Duration,
}

impl ClusterHandle {
    pub fn new(client: ClusterClient, conn: ClusterConnection, timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            client,
            conn: arc_swap::ArcSwap::from_pointee(conn),
            failing_since: AtomicU64::new(0),
            born: Instant::now(),
            rebuilding: AtomicBool::new(false),
            stuck_after: (timeout * 3).max(Duration::from_secs(3)),
            timeout,
        })
    }

    fn current(&self) -> ClusterConnection {
        (**self.conn.load()).clone()
    }

    /// Notes how a request went; replaces the connection when stuck.
    fn observe<T>(self: &Arc<Self>, result: &RedisResult<T>) {
        match result {
            Err(e) if e.is_timeout() || e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() => {
                // At least 1, so that 0 keeps meaning "not failing".
                let now = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX).max(1);
                let since = match self.failing_since.compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => now,
                    Err(since) => since,
                };
                let stuck = Duration::from_millis(now.saturating_sub(since)) >= self.stuck_after;
                if stuck && !self.rebuilding.swap(true, Ordering::AcqRel) {
                    tokio::spawn(self.clone().rebuild());
                }
            }
            // Read first: the common case writes nothing.
            _ if self.failing_since.load(Ordering::Relaxed) != 0 => self.failing_since.store(0, Ordering::Release),
            _ => {}
        }
    }

    async fn rebuild(self: Arc<Self>) {
        tracing::warn!("every Redis Cluster request failed for {:?}; connecting afresh", self.stuck_after);
        let mut pause = Duration::from_millis(200);
        loop {
            match tokio::time::timeout(self.timeout * 2, self.client.get_async_connection()).await {
                Ok(Ok(conn)) => {
                    self.conn.store(Arc::new(conn));
                    self.failing_since.store(0, Ordering::Release);
                    metrics::counter!("dongdong_redis_cluster_reconnects_total").increment(1);
                    tracing::warn!("connected to the Redis Cluster afresh");
                    break;
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot connect to the Redis Cluster; retrying"),
                Err(_) => tracing::warn!("connecting to the Redis Cluster timed out; retrying"),
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
        self.rebuilding.store(false, Ordering::Release);
    }
}

impl RedisConn {
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConn::Cluster(_))
    }
}

/// The part of `key` Redis Cluster hashes: the first non-empty `{...}`, else
/// the whole key.
pub(crate) fn hash_part(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{')
        && let Some(len) = key[open + 1..].iter().position(|&b| b == b'}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}

/// The key a command is routed by: the first key of a script, else its
/// first argument. None for commands without one.
fn routing_key(cmd: &Cmd) -> Option<&[u8]> {
    let mut args = cmd.args_iter().map(|a| match a {
        redis::Arg::Simple(s) => s,
        _ => &[][..],
    });
    let name = args.next()?.to_ascii_uppercase();
    if matches!(name.as_slice(), b"EVAL" | b"EVALSHA" | b"EVAL_RO" | b"EVALSHA_RO" | b"FCALL" | b"FCALL_RO") {
        let _script = args.next()?;
        let keys: usize = std::str::from_utf8(args.next()?).ok()?.parse().ok()?;
        return if keys == 0 { None } else { args.next() };
    }
    args.next()
}

/// The pipeline's commands grouped by the hash part of their routing key,
/// each with its index; None if they all share one (or it is a transaction).
fn split(pipeline: &Pipeline) -> Option<Vec<(Pipeline, Vec<usize>)>> {
    if pipeline.is_transaction() {
        return None;
    }
    // Indexes first (a pipeline of one slot, the common case, is not
    // copied), by hash part: a presence refresh has one per user.
    let mut group_of: HashMap<&[u8], usize> = HashMap::new();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, cmd) in pipeline.cmd_iter().enumerate() {
        let part = routing_key(cmd).map(hash_part).unwrap_or_default();
        let g = *group_of.entry(part).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(i);
    }
    if groups.len() < 2 {
        return None;
    }
    let cmds: Vec<&Cmd> = pipeline.cmd_iter().collect();
    Some(
        groups
            .into_iter()
            .map(|at| {
                let mut pipe = redis::pipe();
                for &i in &at {
                    pipe.add_command(cmds[i].clone());
                }
                (pipe, at)
            })
            .collect(),
    )
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(handle) => {
                let handle = handle.clone();
                Box::pin(async move {
                    let result = handle.current().req_packed_command(cmd).await;
                    handle.observe(&result);
                    result
                })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(handle) => {
                let handle = handle.clone();
                Box::pin(async move {
                    let conn = handle.current();
                    let result = match split(pipeline) {
                        None => conn.clone().req_packed_commands(pipeline, offset, count).await,
                        Some(parts) => {
                            let replies = futures_util::future::try_join_all(parts.iter().map(|(pipe, _)| {
                                let mut conn = conn.clone();
                                async move { conn.req_packed_commands(pipe, 0, pipe.len()).await }
                            }))
                            .await;
                            replies.map(|replies| {
                                let mut out = vec![Value::Nil; pipeline.len()];
                                for ((_, at), values) in parts.iter().zip(replies) {
                                    for (&i, v) in at.iter().zip(values) {
                                        out[i] = v;
                                    }
                                }
                                out
                            })
                        }
                    };
                    handle.observe(&result);
                    result
                })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(handle) => handle.current().get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_parts_follow_redis_cluster_rules() {
        assert_eq!(hash_part(b"dd:{5:t:bob}:pending:d1"), b"5:t:bob");
        assert_eq!(hash_part(b"dd:cs:due"), b"dd:cs:due");
        assert_eq!(hash_part(b"a{}b{c}"), b"a{}b{c}", "an empty first tag hashes the whole key");
        assert_eq!(hash_part(b"a{b"), b"a{b");
    }

    #[test]
    fn pipelines_split_by_hash_tag_and_keep_their_order() {
        let mut p = redis::pipe();
        p.cmd("ZREM").arg("dd:{1:t:a}:pending:x").arg("m1");
        p.cmd("EVAL").arg("return 1").arg(2).arg("dd:{1:t:b}:events:x").arg("dd:{1:t:b}:eventdata:x").arg("k");
        p.cmd("ZREM").arg("dd:{1:t:a}:pending:y").arg("m2");
        let parts = split(&p).unwrap();
        let at: Vec<Vec<usize>> = parts.iter().map(|(_, at)| at.clone()).collect();
        assert_eq!(at, [vec![0, 2], vec![1]]);
        let mut one = redis::pipe();
        one.cmd("ZREM").arg("dd:{1:t:a}:pending:x").arg("m1");
        one.cmd("ZADD").arg("dd:{1:t:a}:convs").arg(1).arg("c");
        assert!(split(&one).is_none());
    }
}
