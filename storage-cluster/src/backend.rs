//! Connecting the backend, and what its modules share: key names, call
//! timing, error mapping.

mod bus;
mod conn;
mod cs;
mod files;
mod messages;
mod presence;
mod pushq;
mod reads;
mod revocations;
mod search;
mod settings;

pub use bus::RedisBus;
pub use conn::RedisConn;
pub use cs::RedisCs;
pub use messages::ClusterStore;
pub use presence::RedisPresence;
pub use pushq::RedisPushQueue;
pub use search::ClusterSearch;

use crate::ClusterOptions;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use std::sync::Arc;
use std::time::Duration;
use storage::{Backends, Result, StorageError};

pub(crate) fn unavailable(e: impl std::fmt::Display) -> StorageError {
    StorageError::Unavailable(e.to_string())
}

/// The hash tag of a user: every Redis key of the user carries it.
pub(crate) fn user_tag(tenant: &str, user: &str) -> String {
    format!("{{{}:{tenant}:{user}}}", tenant.len())
}

pub(crate) fn devices_key(tenant: &str, user: &str) -> String {
    format!("dd:{}:devices", user_tag(tenant, user))
}

pub(crate) fn pending_key(tenant: &str, user: &str, device: &str) -> String {
    format!("dd:{}:pending:{device}", user_tag(tenant, user))
}

/// A user's conversations, scored by their last activity (ms).
pub(crate) fn convs_key(tenant: &str, user: &str) -> String {
    format!("dd:{}:convs", user_tag(tenant, user))
}

/// A device's pending events: a sorted set of event keys (score 0, so
/// ordered by key) and a hash of key -> "version:" + encoded frame.
pub(crate) fn events_keys(tenant: &str, user: &str, device: &str) -> (String, String) {
    let tag = user_tag(tenant, user);
    (format!("dd:{tag}:events:{device}"), format!("dd:{tag}:eventdata:{device}"))
}

pub(crate) fn presence_key(tenant: &str, user: &str) -> String {
    format!("dd:{}:presence", user_tag(tenant, user))
}

/// Records how long one storage call took, when dropped:
/// `dongdong_storage_call_seconds{system, op}`.
pub(crate) struct CallTimer {
    system: &'static str,
    op: &'static str,
    started: std::time::Instant,
}

impl CallTimer {
    pub(crate) fn new(system: &'static str, op: &'static str) -> Self {
        Self { system, op, started: std::time::Instant::now() }
    }
}

impl Drop for CallTimer {
    fn drop(&mut self) {
        metrics::histogram!("dongdong_storage_call_seconds", "system" => self.system, "op" => self.op)
            .record(self.started.elapsed().as_secs_f64());
    }
}

pub(crate) fn redis_err(what: &'static str) -> impl Fn(redis::RedisError) -> StorageError {
    move |e| {
        metrics::counter!("dongdong_redis_errors_total").increment(1);
        StorageError::Unavailable(format!("redis {what}: {e}"))
    }
}

/// Connects to Redis with explicit timeouts, to the cluster when seed nodes
/// are given; either connection reconnects by itself.
pub async fn connect_redis(options: &ClusterOptions) -> Result<RedisConn> {
    let timeout = options.redis_timeout;
    let target = options.redis_target();
    let unreachable = |e: &dyn std::fmt::Display| StorageError::Unavailable(format!("cannot reach {target}: {e}"));
    let mut conn = if options.redis_cluster.is_empty() {
        let url = &options.redis_url;
        let client = redis::Client::open(url.as_str())
            .map_err(|e| StorageError::Unavailable(format!("invalid redis_url {url:?}: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(timeout))
            .set_connection_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let manager = tokio::time::timeout(timeout * 2, ConnectionManager::new_with_config(client, config))
            .await
            .map_err(|_| unreachable(&"timed out"))?
            .map_err(|e| unreachable(&e))?;
        RedisConn::Single(manager)
    } else {
        let client = cluster_client(&options.redis_cluster, timeout)
            .build()
            .map_err(|e| StorageError::Unavailable(format!("invalid redis_cluster: {e}")))?;
        let conn = tokio::time::timeout(timeout * 2, client.get_async_connection())
            .await
            .map_err(|_| unreachable(&"timed out"))?
            .map_err(|e| unreachable(&e))?;
        RedisConn::Cluster(conn::ClusterHandle::new(client, conn, timeout))
    };
    let _: String = redis::cmd("PING").query_async(&mut conn).await.map_err(|e| unreachable(&e))?;
    Ok(conn)
}

/// A Redis Cluster client with the backend's timeouts: MOVED and ASK are
/// followed, and a request is retried while the cluster fails over.
pub(crate) fn cluster_client(seeds: &[String], timeout: Duration) -> ClusterClientBuilder {
    ClusterClientBuilder::new(seeds.to_vec())
        .connection_timeout(timeout)
        .response_timeout(timeout)
        .retries(4)
        .min_retry_wait(50)
        .max_retry_wait(1000)
}

/// The cluster backend for node `node_id`: every storage trait. Fails with
/// a message naming Redis or MongoDB when either cannot be reached.
pub async fn connect(options: ClusterOptions, node_id: &str) -> Result<(Backends, Arc<ClusterStore>)> {
    {
        let redis = connect_redis(&options).await?;
        let store = ClusterStore::connect(redis.clone(), &options).await?;
        let presence = RedisPresence::start(redis.clone(), node_id, options.presence_ttl);
        let bus = RedisBus::new(&options, redis.clone())?;
        let search = Arc::new(ClusterSearch::open(redis.clone(), &store.db, node_id).await?);
        let push_queue: Arc<dyn storage::PushQueue> =
            Arc::new(RedisPushQueue::open(redis.clone(), &options.mongo_database, node_id).await?);
        let backends = Backends {
            messages: store.clone(),
            pending: store.clone(),
            devices: store.clone(),
            presence,
            bus: Some(Arc::new(bus)),
            health: store.clone(),
            cs: Arc::new(RedisCs::new(redis, options.cs_retention)),
            revocations: store.clone(),
            files: store.clone(),
            settings: store.clone(),
            search,
            push_queue: Some(push_queue),
        };
        Ok((backends, store))
    }
}

/// The test servers `scripts/test.sh` starts: its single Redis, or
/// (`cluster`) its Redis Cluster (`DDTEST_REDIS_CLUSTER`, seeds separated by
/// commas). None (the test is skipped) when not set, outside CI.
#[cfg(test)]
pub(crate) fn test_redis_options(cluster: bool) -> Option<ClusterOptions> {
    use storage::conformance::required_env;
    let mut options = ClusterOptions::default();
    if cluster {
        options.redis_cluster = required_env("DDTEST_REDIS_CLUSTER")?.split(',').map(String::from).collect();
    } else {
        options.redis_url = required_env("DDTEST_REDIS_URL")?;
    }
    Some(options)
}

#[cfg(test)]
pub(crate) async fn test_redis(cluster: bool) -> Option<RedisConn> {
    Some(connect_redis(&test_redis_options(cluster)?).await.unwrap())
}

#[cfg(test)]
mod tests {
    use super::*;
    use storage::conformance::required_env;

    async fn fresh_on(cluster: bool) -> Option<(Backends, ())> {
        let options = ClusterOptions {
            mongo_url: required_env("DDTEST_MONGO_URL")?,
            mongo_database: "dongdong_conformance".into(),
            ..test_redis_options(cluster)?
        };
        let node = format!("conformance-{}", im_core::new_msg_id());
        let (backends, _) = connect(options, &node).await.unwrap();
        Some((backends, ()))
    }

    async fn fresh() -> Option<(Backends, ())> {
        fresh_on(false).await
    }

    storage::conformance_suite!(fresh);

    /// The same suite with Redis Cluster under the backend: every script and
    /// pipeline keeps to one slot (or is split by one), the bus is sharded.
    mod on_redis_cluster {
        use super::*;

        async fn fresh() -> Option<(Backends, ())> {
            fresh_on(true).await
        }

        storage::conformance_suite!(fresh);
    }

    /// A replay page leaves out a message whose pending mark still has
    /// another seq than the one it was stored at (its append lost the seq
    /// race to another node after marking it, and marks it again): handed
    /// out at the old place it would break the conversation's order.
    #[tokio::test]
    async fn a_pending_mark_at_another_seq_is_left_for_later() {
        let Some((b, ())) = fresh().await else { return };
        let t = format!("t{}", im_core::new_msg_id());
        let bob = storage::DeviceKey::new(&t, "bob", "b1");
        b.devices.register_device(&bob).await.unwrap();
        let mut sent = Vec::new();
        for i in 0..3 {
            let new = storage::NewMessage {
                tenant: t.clone(),
                conversation_id: im_core::conversation_id(&t, "alice", "bob"),
                from_user: "alice".into(),
                from_device: "a1".into(),
                to_user: "bob".into(),
                client_msg_id: format!("m{i}"),
                content: im_core::pb::Content { kind: Some(im_core::pb::content::Kind::Text(format!("m{i}"))) },
            };
            sent.push(b.messages.append(new).await.unwrap().message);
        }
        let mut redis = test_redis(false).await.unwrap();
        // Seq 3's mark, as if still at the seq 1 it first tried.
        let key = pending_key(&t, "bob", "b1");
        let _: () = redis::cmd("ZADD").arg(&key).arg(1).arg(&sent[2].msg_id).query_async(&mut redis).await.unwrap();
        let page = b.pending.pending(&bob, None, 10).await.unwrap();
        let seqs: Vec<u64> = page.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, [1, 2], "seq 3 waits for its real mark");
        let _: () = redis::cmd("ZADD").arg(&key).arg(3).arg(&sent[2].msg_id).query_async(&mut redis).await.unwrap();
        let seqs: Vec<u64> = b.pending.pending(&bob, None, 10).await.unwrap().iter().map(|m| m.seq).collect();
        assert_eq!(seqs, [1, 2, 3]);
    }

    #[tokio::test]
    async fn unreachable_servers_are_named() {
        let options = ClusterOptions {
            redis_url: "redis://127.0.0.1:1".into(),
            redis_timeout: Duration::from_millis(200),
            ..ClusterOptions::default()
        };
        let e = connect(options, "n").await.err().unwrap();
        assert!(e.to_string().contains("cannot reach Redis at redis://127.0.0.1:1"), "{e}");
        let Some(redis_url) = std::env::var("DDTEST_REDIS_URL").ok() else { return };
        let options = ClusterOptions {
            redis_url,
            mongo_url: "mongodb://127.0.0.1:1".into(),
            mongo_timeout: Duration::from_millis(300),
            ..ClusterOptions::default()
        };
        let e = connect(options, "n").await.err().unwrap();
        assert!(e.to_string().contains("cannot reach MongoDB at mongodb://127.0.0.1:1"), "{e}");
    }

    #[tokio::test]
    async fn presence_is_refreshed_recreated_and_expires_with_its_node() {
        presence_refresh(false).await;
    }

    #[tokio::test]
    async fn presence_is_refreshed_on_redis_cluster() {
        presence_refresh(true).await;
    }

    async fn presence_refresh(cluster: bool) {
        let Some(redis) = test_redis(cluster).await else { return };
        let tenant = format!("t{}", im_core::new_msg_id());
        let device = storage::DeviceKey::new(&tenant, "alice", "phone");
        let ttl = Duration::from_millis(600);
        let presence = RedisPresence::start(redis.clone(), "node-x", ttl);
        let entry =
            storage::PresenceEntry { device: device.clone().into(), node_id: "node-x".into(), conn_id: 7, epoch: 42 };
        use storage::PresenceRegistry;
        presence.register(entry.clone()).await.unwrap();
        // Refreshed past its TTL.
        tokio::time::sleep(ttl * 2).await;
        assert_eq!(presence.lookup(&tenant, "alice").await.unwrap(), vec![entry.clone()]);
        // Redis loses the hash: the next refresh puts it back.
        let _: () =
            redis::cmd("DEL").arg(presence_key(&tenant, "alice")).query_async(&mut redis.clone()).await.unwrap();
        tokio::time::sleep(ttl).await;
        assert_eq!(presence.lookup(&tenant, "alice").await.unwrap(), vec![entry.clone()]);
        // A newer connection elsewhere is never overwritten by the refresh.
        let other = RedisPresence::start(redis.clone(), "node-y", ttl);
        let newer = storage::PresenceEntry { node_id: "node-y".into(), conn_id: 1, epoch: 43, ..entry.clone() };
        assert_eq!(other.register(newer.clone()).await.unwrap(), Some(entry.clone()));
        tokio::time::sleep(ttl).await;
        assert_eq!(presence.lookup(&tenant, "alice").await.unwrap(), vec![newer.clone()]);
        // node-y stops (its refresh task ends with it): its entry expires.
        drop(other);
        tokio::time::sleep(ttl * 2).await;
        assert!(presence.lookup(&tenant, "alice").await.unwrap().is_empty());
    }
}
