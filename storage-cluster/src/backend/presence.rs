//! Presence in Redis: one hash per user, field = device, value =
//! `epoch <TAB> node <TAB> conn_id <TAB> expires_ms`. Each node refreshes the
//! entries of its own connections every third of the TTL; entries of a node
//! that stopped refreshing are ignored once expired and removed lazily.
//! Removal compares the epoch, so a late close never removes a newer entry;
//! a refresh re-creates an entry Redis lost, and never overwrites a newer one.

use super::RedisConn;
use super::{CallTimer, presence_key, redis_err};
use async_trait::async_trait;
use dashmap::DashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;
use storage::{DeviceKey, PresenceEntry, PresenceRegistry, Result};

/// Sets the entry and returns the one it replaced. KEYS: presence hash.
/// ARGV: device, value, key ttl ms.
const REGISTER: &str = include_str!("lua/register.lua");

/// Refreshes this node's entry: rewrites it if it still has the epoch
/// ARGV[2], re-creates it if it is gone (Redis lost it), leaves a newer one
/// alone. KEYS: presence hash. ARGV: device, epoch, value, key ttl ms.
/// Returns 1 when the entry is (again) ours, 0 when it was replaced.
const REFRESH: &str = include_str!("lua/refresh.lua");

/// Removes the entry only if it still has the epoch ARGV[2]. KEYS: presence
/// hash. ARGV: device, epoch. Returns 1 when it removed it.
const COMPARE_AND_DELETE: &str = include_str!("lua/compare-and-delete.lua");

/// Sets the user's recorded state if it changed. KEYS: the state key. ARGV:
/// "1" online / "0" offline, now ms, ttl s. Returns 1 when it changed.
const RECORD_ONLINE: &str = include_str!("lua/record-online.lua");

/// How long a user's recorded state (and last-seen time) is kept.
const SEEN_TTL_S: u64 = 90 * 24 * 3600;

fn seen_key(tenant: &str, user: &str) -> String {
    format!("dd:{}:seen", super::user_tag(tenant, user))
}

pub struct RedisPresence {
    redis: RedisConn,
    ttl: Duration,
    /// Entries this node registered, refreshed until unregistered.
    local: DashMap<DeviceKey, PresenceEntry>,
    /// Held by a refresh cycle from its snapshot to its last write, and by
    /// unregister: a refresh never re-creates an entry removed meanwhile.
    refreshing: tokio::sync::Mutex<()>,
}

fn encode(e: &PresenceEntry, expires_ms: u64) -> String {
    format!("{}\t{}\t{}\t{}", e.epoch, e.node_id, e.conn_id, expires_ms)
}

fn decode(device: Arc<DeviceKey>, v: &str) -> Option<(PresenceEntry, u64)> {
    let mut parts = v.split('\t');
    let epoch = parts.next()?.parse().ok()?;
    let node_id: Arc<str> = parts.next()?.into();
    let conn_id = parts.next()?.parse().ok()?;
    let expires = parts.next()?.parse().ok()?;
    Some((PresenceEntry { device, node_id, conn_id, epoch }, expires))
}

impl RedisPresence {
    /// Starts the refresh task of `node_id`'s entries; it ends with the registry.
    pub fn start(redis: RedisConn, node_id: &str, ttl: Duration) -> Arc<Self> {
        let this = Arc::new(Self { redis, ttl, local: DashMap::new(), refreshing: tokio::sync::Mutex::new(()) });
        tokio::spawn(refresh_loop(Arc::downgrade(&this), ttl / 3, node_id.to_string()));
        this
    }

    fn ttl_ms(&self) -> u64 {
        self.ttl.as_millis() as u64
    }

    async fn refresh_all(&self) {
        let _exclusive = self.refreshing.lock().await;
        let entries: Vec<PresenceEntry> = self.local.iter().map(|e| e.value().clone()).collect();
        if entries.is_empty() {
            return;
        }
        let expires = im_core::now_ms() + self.ttl_ms();
        let script = redis::Script::new(REFRESH);
        // A pipeline runs scripts by hash (EVALSHA): load it first, every
        // time, since a restarted Redis has forgotten it.
        if let Err(e) = script.load_async(&mut self.redis.clone()).await {
            tracing::warn!(error = %e, "presence refresh failed; entries expire unless the next one succeeds");
            return;
        }
        let mut pipe = redis::pipe();
        for e in &entries {
            pipe.invoke_script(
                script
                    .key(presence_key(&e.device.tenant, &e.device.user))
                    .arg(&e.device.device)
                    .arg(e.epoch)
                    .arg(encode(e, expires))
                    .arg(self.ttl_ms()),
            );
        }
        match pipe.query_async::<Vec<u8>>(&mut self.redis.clone()).await {
            Ok(matched) => {
                for (e, ok) in entries.iter().zip(matched) {
                    if ok == 0 {
                        // Replaced elsewhere: stop refreshing it.
                        self.local.remove_if(&e.device, |_, cur| cur.epoch == e.epoch);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "presence refresh failed; entries expire unless the next one succeeds")
            }
        }
    }
}

async fn refresh_loop(this: Weak<RedisPresence>, every: Duration, node_id: String) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(50)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate; entries just registered need no refresh.
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(this) = this.upgrade() else { break };
        this.refresh_all().await;
        metrics::gauge!("dongdong_presence_local_entries", "node" => node_id.clone()).set(this.local.len() as f64);
    }
}

#[async_trait]
impl PresenceRegistry for RedisPresence {
    async fn register(&self, entry: PresenceEntry) -> Result<Option<PresenceEntry>> {
        let _timer = CallTimer::new("redis", "presence_register");
        let key = presence_key(&entry.device.tenant, &entry.device.user);
        let now = im_core::now_ms();
        let old: Option<String> = redis::Script::new(REGISTER)
            .key(key)
            .arg(&entry.device.device)
            .arg(encode(&entry, now + self.ttl_ms()))
            .arg(self.ttl_ms())
            .invoke_async(&mut self.redis.clone())
            .await
            .map_err(redis_err("presence register"))?;
        self.local.insert((*entry.device).clone(), entry.clone());
        Ok(old.and_then(|v| decode(entry.device.clone(), &v)).filter(|(_, expires)| *expires > now).map(|(e, _)| e))
    }

    async fn unregister(&self, device: &DeviceKey, epoch: u64) -> Result<bool> {
        let _timer = CallTimer::new("redis", "presence_unregister");
        let _exclusive = self.refreshing.lock().await;
        self.local.remove_if(device, |_, e| e.epoch == epoch);
        let removed: u8 = redis::Script::new(COMPARE_AND_DELETE)
            .key(presence_key(&device.tenant, &device.user))
            .arg(&device.device)
            .arg(epoch)
            .invoke_async(&mut self.redis.clone())
            .await
            .map_err(redis_err("presence unregister"))?;
        Ok(removed == 1)
    }

    async fn lookup(&self, tenant: &str, user: &str) -> Result<Vec<PresenceEntry>> {
        let _timer = CallTimer::new("redis", "presence_lookup");
        let all: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(presence_key(tenant, user))
            .query_async(&mut self.redis.clone())
            .await
            .map_err(redis_err("presence lookup"))?;
        let now = im_core::now_ms();
        Ok(all
            .into_iter()
            .filter_map(|(device, v)| decode(Arc::new(DeviceKey::new(tenant, user, device)), &v))
            .filter(|(_, expires)| *expires > now)
            .map(|(e, _)| e)
            .collect())
    }

    async fn record_online(&self, tenant: &str, user: &str, online: bool, now_ms: u64) -> Result<bool> {
        let _t = CallTimer::new("redis", "presence_state");
        let changed: u32 = redis::Script::new(RECORD_ONLINE)
            .key(seen_key(tenant, user))
            .arg(if online { "1" } else { "0" })
            .arg(now_ms)
            .arg(SEEN_TTL_S)
            .invoke_async(&mut self.redis.clone())
            .await
            .map_err(redis_err("presence state"))?;
        Ok(changed == 1)
    }

    async fn last_seen(&self, tenant: &str, user: &str) -> Result<u64> {
        let v: Option<String> = redis::cmd("GET")
            .arg(seen_key(tenant, user))
            .query_async(&mut self.redis.clone())
            .await
            .map_err(redis_err("presence state"))?;
        Ok(v.and_then(|v| v.parse().ok()).unwrap_or(0))
    }
}
