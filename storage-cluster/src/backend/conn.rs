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
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
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
fn routing_key(cmd: &Cmd) -> Option<Vec<u8>> {
    let mut args = cmd.args_iter().map(|a| match a {
        redis::Arg::Simple(s) => s,
        _ => &[][..],
    });
    let name = args.next()?.to_ascii_uppercase();
    if matches!(name.as_slice(), b"EVAL" | b"EVALSHA" | b"EVAL_RO" | b"EVALSHA_RO" | b"FCALL" | b"FCALL_RO") {
        let _script = args.next()?;
        let keys: usize = std::str::from_utf8(args.next()?).ok()?.parse().ok()?;
        return if keys == 0 { None } else { args.next().map(<[u8]>::to_vec) };
    }
    args.next().map(<[u8]>::to_vec)
}

/// The pipeline's commands grouped by the hash part of their routing key,
/// each with its index; None if they all share one (or it is a transaction).
fn split(pipeline: &Pipeline) -> Option<Vec<(Pipeline, Vec<usize>)>> {
    if pipeline.is_transaction() {
        return None;
    }
    let mut groups: Vec<(Vec<u8>, Pipeline, Vec<usize>)> = Vec::new();
    for (i, cmd) in pipeline.cmd_iter().enumerate() {
        let part = routing_key(cmd).map(|k| hash_part(&k).to_vec()).unwrap_or_default();
        match groups.iter_mut().find(|(p, _, _)| *p == part) {
            Some((_, pipe, at)) => {
                pipe.add_command(cmd.clone());
                at.push(i);
            }
            None => {
                let mut pipe = redis::pipe();
                pipe.add_command(cmd.clone());
                groups.push((part, pipe, vec![i]));
            }
        }
    }
    (groups.len() > 1).then(|| groups.into_iter().map(|(_, pipe, at)| (pipe, at)).collect())
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
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
            RedisConn::Cluster(c) => match split(pipeline) {
                None => c.req_packed_commands(pipeline, offset, count),
                Some(parts) => {
                    let conn = c.clone();
                    let total = pipeline.len();
                    Box::pin(async move {
                        let replies = futures_util::future::try_join_all(parts.iter().map(|(pipe, _)| {
                            let mut conn = conn.clone();
                            async move { conn.req_packed_commands(pipe, 0, pipe.len()).await }
                        }))
                        .await?;
                        let mut out = vec![Value::Nil; total];
                        for ((_, at), values) in parts.iter().zip(replies) {
                            for (&i, v) in at.iter().zip(values) {
                                out[i] = v;
                            }
                        }
                        Ok(out)
                    })
                }
            },
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
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
