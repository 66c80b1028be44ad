//! Customer-service state of the cluster backend, in Redis. Every command
//! is one run of `cs.lua`, which applies the rules of
//! [`crate::cs::engine`] atomically, so any number of nodes can assign at
//! once without double-booking an agent or a customer.
//!
//! Keys of a tenant share the hash tag `{cs:<len>:<tenant>}` (one Redis
//! Cluster slot per tenant): `groups`, `agents`, `open` (waiting and active
//! sessions), `customers` ("customer\ngroup" -> session), `left` (unclaimed
//! left messages), `replies`, `q:<group>` (the queue, a sorted set),
//! `S:<id>` and `L:<id>` (ended sessions and claimed left messages, kept for
//! the retention period). `dd:cs:tenants` lists tenants for the sweep.

use super::{CallTimer, redis_err};
use crate::Result;
use crate::cs::*;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use serde::de::DeserializeOwned;
use std::time::Duration;

const SCRIPT: &str = include_str!("cs.lua");
const TENANTS: &str = "dd:cs:tenants";

/// The cluster [`CsStore`].
pub struct RedisCs {
    redis: ConnectionManager,
    script: redis::Script,
    retention: Duration,
    /// Tenants this node has added to `dd:cs:tenants`.
    known: dashmap::DashSet<String>,
}

fn prefix(tenant: &str) -> String {
    format!("cs:{{cs:{}:{tenant}}}:", tenant.len())
}

fn corrupt(e: serde_json::Error) -> crate::StorageError {
    crate::StorageError::Corrupt(format!("cs record: {e}"))
}

fn decode<T: DeserializeOwned>(s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(corrupt)
}

fn session(tenant: &str, json: &str) -> Result<Session> {
    let mut s: Session = decode(json)?;
    s.derive_conversations(tenant);
    Ok(s)
}

impl RedisCs {
    /// `retention`: how long ended sessions and claimed left messages stay.
    pub fn new(redis: ConnectionManager, retention: Duration) -> Self {
        Self { redis, script: redis::Script::new(SCRIPT), retention, known: Default::default() }
    }

    fn conn(&self) -> ConnectionManager {
        self.redis.clone()
    }

    async fn hvals<T: DeserializeOwned>(&self, key: String) -> Result<Vec<T>> {
        let values: Vec<String> = self.conn().hvals(key).await.map_err(redis_err("cs read"))?;
        values.iter().map(|v| decode(v)).collect()
    }

    async fn open_sessions(&self, tenant: &str) -> Result<Vec<Session>> {
        let values: Vec<String> =
            self.conn().hvals(format!("{}open", prefix(tenant))).await.map_err(redis_err("cs read"))?;
        values.iter().map(|v| session(tenant, v)).collect()
    }
}

#[async_trait::async_trait]
impl CsStore for RedisCs {
    async fn execute(&self, tenant: &str, mut command: CsCommand, now_ms: u64) -> Result<CsOutcome> {
        if let Err(e) = command.precheck() {
            return Ok(CsOutcome::refused(e));
        }
        let _t = CallTimer::new("redis", "cs");
        let p = prefix(tenant);
        let json = serde_json::to_string(&command).map_err(corrupt)?;
        let mut conn = self.conn();
        let out: String = self
            .script
            .key(format!("{p}groups"))
            .key(format!("{p}agents"))
            .key(format!("{p}open"))
            .key(format!("{p}customers"))
            .key(format!("{p}left"))
            .arg(tenant)
            .arg(now_ms)
            .arg(json)
            .arg(&p)
            .arg(self.retention.as_secs().max(1))
            .invoke_async(&mut conn)
            .await
            .map_err(redis_err("cs script"))?;
        let mut outcome: CsOutcome = decode(&out)?;
        let fill = |s: &mut Session| s.derive_conversations(tenant);
        if let Ok(CsReply::Session { session, .. }) = &mut outcome.reply {
            fill(session);
        }
        outcome.assigned.iter_mut().for_each(fill);
        outcome.ended.iter_mut().for_each(fill);
        outcome.transferred.iter_mut().for_each(|t| fill(&mut t.session));
        if command_adds_tenant(&outcome) && !self.known.contains(tenant) {
            let _: () = conn.sadd(TENANTS, tenant).await.map_err(redis_err("cs tenants"))?;
            self.known.insert(tenant.to_string());
        }
        Ok(outcome)
    }

    async fn groups(&self, tenant: &str) -> Result<Vec<Group>> {
        let mut groups: Vec<Group> = self.hvals(format!("{}groups", prefix(tenant))).await?;
        groups.sort_by(|a, b| a.spec.id.cmp(&b.spec.id));
        Ok(groups)
    }

    async fn group_view(&self, tenant: &str, group: &str) -> Result<Option<GroupView>> {
        let p = prefix(tenant);
        let mut conn = self.conn();
        let g: Option<String> = conn.hget(format!("{p}groups"), group).await.map_err(redis_err("cs read"))?;
        let Some(g) = g else { return Ok(None) };
        let g: Group = decode(&g)?;
        let agents: Vec<Agent> = if g.members.is_empty() {
            Vec::new()
        } else {
            let raw: Vec<Option<String>> = redis::cmd("HMGET")
                .arg(format!("{p}agents"))
                .arg(&g.members)
                .query_async(&mut conn)
                .await
                .map_err(redis_err("cs read"))?;
            raw.iter().flatten().map(|a| decode(a)).collect::<Result<_>>()?
        };
        let open = self.open_sessions(tenant).await?;
        let order: Vec<String> = conn.zrange(format!("{p}q:{group}"), 0, -1).await.map_err(redis_err("cs read"))?;
        let by_id: std::collections::HashMap<&str, &Session> = open.iter().map(|s| (s.id.as_str(), s)).collect();
        let waiting: Vec<Session> =
            order.iter().filter_map(|id| by_id.get(id.as_str()).map(|s| (*s).clone())).collect();
        let mut active: Vec<Session> =
            open.iter().filter(|s| s.state == SessionState::Active && s.group == group).cloned().collect();
        active.sort_by(|a, b| (a.assigned_ms, &a.id).cmp(&(b.assigned_ms, &b.id)));
        let (mut free, mut online) = (0u32, 0u32);
        for a in agents.iter().filter(|a| a.connected && a.status == AgentStatus::Online) {
            online = online.saturating_add(a.capacity);
            free = free.saturating_add(a.capacity.saturating_sub(a.load));
        }
        let queue = QueueSnapshot {
            group: group.into(),
            waiting: waiting.iter().map(|s| (s.id.clone(), s.customer.clone())).collect(),
            changed_from: 0,
            avg_handle_ms: if g.avg_handle_ms == 0 { engine::DEFAULT_HANDLE_MS } else { g.avg_handle_ms },
            free_capacity: free,
            online_capacity: online,
        };
        Ok(Some(GroupView { group: g, agents, queue, waiting, active }))
    }

    async fn agent(&self, tenant: &str, agent: &str) -> Result<Option<Agent>> {
        let raw: Option<String> =
            self.conn().hget(format!("{}agents", prefix(tenant)), agent).await.map_err(redis_err("cs read"))?;
        raw.map(|a| decode(&a)).transpose()
    }

    async fn session(&self, tenant: &str, session_id: &str) -> Result<Option<Session>> {
        let p = prefix(tenant);
        let mut conn = self.conn();
        let open: Option<String> = conn.hget(format!("{p}open"), session_id).await.map_err(redis_err("cs read"))?;
        let raw = match open {
            Some(s) => Some(s),
            None => conn.get(format!("{p}S:{session_id}")).await.map_err(redis_err("cs read"))?,
        };
        raw.map(|s| session(tenant, &s)).transpose()
    }

    async fn user_sessions(&self, tenant: &str, user: &str) -> Result<Vec<Session>> {
        let mut v: Vec<Session> =
            self.open_sessions(tenant).await?.into_iter().filter(|s| s.customer == user || s.agent == user).collect();
        v.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        Ok(v)
    }

    async fn left_messages(&self, tenant: &str, group: &str, limit: usize) -> Result<Vec<LeftMessage>> {
        let mut v: Vec<LeftMessage> = self.hvals(format!("{}left", prefix(tenant))).await?;
        v.retain(|m| m.group == group);
        v.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        v.truncate(limit);
        Ok(v)
    }

    async fn put_quick_reply(&self, tenant: &str, reply: QuickReply) -> Result<()> {
        let json = serde_json::to_string(&reply).map_err(corrupt)?;
        let _: () = self
            .conn()
            .hset(format!("{}replies", prefix(tenant)), &reply.id, json)
            .await
            .map_err(redis_err("cs write"))?;
        Ok(())
    }

    async fn delete_quick_reply(&self, tenant: &str, id: &str) -> Result<bool> {
        let n: u32 = self.conn().hdel(format!("{}replies", prefix(tenant)), id).await.map_err(redis_err("cs write"))?;
        Ok(n > 0)
    }

    async fn quick_replies(&self, tenant: &str, groups: &[String], owner: &str) -> Result<Vec<QuickReply>> {
        let all: Vec<QuickReply> = self.hvals(format!("{}replies", prefix(tenant))).await?;
        Ok(QuickReply::visible(all, groups, owner))
    }

    async fn quick_reply(&self, tenant: &str, id: &str) -> Result<Option<QuickReply>> {
        let raw: Option<String> =
            self.conn().hget(format!("{}replies", prefix(tenant)), id).await.map_err(redis_err("cs read"))?;
        raw.map(|r| decode(&r)).transpose()
    }

    async fn tenants(&self) -> Result<Vec<String>> {
        let mut v: Vec<String> = self.conn().smembers(TENANTS).await.map_err(redis_err("cs tenants"))?;
        v.sort();
        Ok(v)
    }
}

/// Whether the tenant now has state worth sweeping (a group or an agent).
fn command_adds_tenant(outcome: &CsOutcome) -> bool {
    matches!(outcome.reply, Ok(CsReply::Group { .. } | CsReply::Agent { .. }))
}
