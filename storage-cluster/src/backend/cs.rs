//! Customer-service state of the cluster backend, in Redis. Every command
//! is one run of `cs_core::LUA_SCRIPT`, the rules of `cs_core::engine` in
//! Lua, atomically, so any number of nodes can assign at once without
//! double-booking an agent or a customer.
//!
//! What Lua cannot do is made up for here, not in the domain types: its
//! cjson writes an empty list as `{}` ([`from_lua`] reads it back as a
//! list), and it cannot compute conversation ids (sha256), so sessions are
//! stored without them and derived on the way out.
//!
//! Keys of a tenant share the hash tag `{cs:<len>:<tenant>}` (one Redis
//! Cluster slot per tenant): `groups`, `agents`, `open` (waiting and active
//! sessions), `customers` ("customer\ngroup" -> session), `left` (unclaimed
//! left messages), `replies`, `q:<group>` (the queue, a sorted set),
//! `S:<id>` and `L:<id>` (ended sessions and claimed left messages, kept for
//! the retention period), `ended` and `h:<user>` (the tenant's and the user's
//! ended sessions by end time, as long), `p:<user>` (profile hash). `dd:cs:tenants` lists tenants for the sweep.

use super::RedisConn;
use super::{CallTimer, redis_err};
use redis::AsyncCommands;
use serde::de::DeserializeOwned;
use std::time::Duration;
use storage::Result;
use storage::cs::*;

const TENANTS: &str = "dd:cs:tenants";
/// Sweep leases: tenant -> "<node>|<expiry in ms, Redis' clock>".
const SWEEPERS: &str = "dd:cs:sweepers";
/// Tenants by when they next need a sweep (ms): a command marks its tenant
/// due at once, a sweep sets when its timed rules are next due (or removes
/// the tenant). Idle tenants are not in it, and cost nothing per second.
const DUE: &str = "dd:cs:due";
/// Most tenants one node sweeps per round (the rest are next).
const SWEEP_BATCH: isize = 512;
/// The nodes that sweep, scored by when each was last seen (ms, its own
/// clock; each writes every 2 leases): a tenant whose lease is free goes to
/// the node that rendezvous hashing picks among those seen within 5 leases.
const SWEEP_NODES: &str = "dd:cs:sweepnodes";

/// Sets quick reply ARGV[1] to ARGV[2] unless it is new and the hash
/// already holds ARGV[3] replies; 1 if stored.
const PUT_REPLY: &str = include_str!("lua/put-reply.lua");

/// Returns the tenants whose sweep lease a node holds, or takes because it
/// is free or expired and the tenant is the node's to take; renews them.
const SWEEP_LEASE: &str = include_str!("lua/sweep-lease.lua");

/// The cluster [`CsStore`].
pub struct RedisCs {
    redis: RedisConn,
    script: redis::Script,
    sweep_lease: redis::Script,
    put_reply: redis::Script,
    retention: Duration,
    /// Tenants this node has added to `dd:cs:tenants`.
    known: dashmap::DashSet<String>,
    /// Whether this node has put every tenant of `dd:cs:tenants` in the
    /// due index once (tenants from before the index, or whose mark a
    /// crash lost).
    seeded: std::sync::atomic::AtomicBool,
    /// When this node next writes that it is seen in `SWEEP_NODES` (ms).
    next_seen: std::sync::atomic::AtomicU64,
}

fn prefix(tenant: &str) -> String {
    format!("cs:{{cs:{}:{tenant}}}:", tenant.len())
}

fn corrupt(e: serde_json::Error) -> storage::StorageError {
    storage::StorageError::Corrupt(format!("cs record: {e}"))
}

fn decode<T: DeserializeOwned>(s: &str) -> Result<T> {
    let mut v: serde_json::Value = serde_json::from_str(s).map_err(corrupt)?;
    from_lua(&mut v);
    serde_json::from_value(v).map_err(corrupt)
}

/// Fields of the cs records and outcomes that hold lists.
const LIST_FIELDS: [&str; 12] = [
    "members",
    "groups",
    "conversations",
    "previous_agents",
    "waiting",
    "active",
    "agents",
    "assigned",
    "transferred",
    "ended",
    "timed_out",
    "queues",
];

/// Turns the `{}` Lua's cjson writes for an empty list back into `[]`,
/// wherever a list field holds one (it cannot tell an empty array from an
/// empty object).
fn from_lua(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, field) in map.iter_mut() {
                if LIST_FIELDS.contains(&k.as_str()) && field.as_object().is_some_and(|o| o.is_empty()) {
                    *field = serde_json::Value::Array(Vec::new());
                } else {
                    from_lua(field);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(from_lua),
        _ => {}
    }
}

fn session(tenant: &str, json: &str) -> Result<Session> {
    let mut s: Session = decode(json)?;
    s.derive_conversations(tenant);
    Ok(s)
}

impl RedisCs {
    /// `retention`: how long ended sessions and claimed left messages stay.
    pub fn new(redis: RedisConn, retention: Duration) -> Self {
        Self {
            redis,
            script: redis::Script::new(LUA_SCRIPT),
            sweep_lease: redis::Script::new(SWEEP_LEASE),
            put_reply: redis::Script::new(PUT_REPLY),
            retention,
            known: Default::default(),
            seeded: Default::default(),
            next_seen: Default::default(),
        }
    }

    fn conn(&self) -> RedisConn {
        self.redis.clone()
    }

    async fn hvals<T: DeserializeOwned>(&self, key: String) -> Result<Vec<T>> {
        let values: Vec<String> = self.conn().hvals(key).await.map_err(redis_err("cs read"))?;
        values.iter().map(|v| decode(v)).collect()
    }

    /// The ended sessions a zset of the tenant (`index` after its prefix)
    /// scores in `min..=max` (Redis score bounds), newest first.
    async fn sessions_indexed(
        &self,
        tenant: &str,
        index: &str,
        max: &str,
        min: &str,
        limit: usize,
    ) -> Result<Vec<Session>> {
        let p = prefix(tenant);
        let mut conn = self.conn();
        let ids: Vec<String> = redis::cmd("ZREVRANGEBYSCORE")
            .arg(format!("{p}{index}"))
            .arg(max)
            .arg(min)
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut conn)
            .await
            .map_err(redis_err("cs read"))?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| format!("{p}S:{id}")).collect();
        let raw: Vec<Option<String>> = conn.mget(keys).await.map_err(redis_err("cs read"))?;
        raw.iter().flatten().map(|s| session(tenant, s)).collect()
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
        if outcome.reply.is_ok() && !matches!(command, CsCommand::Sweep { .. }) {
            // Due at once: the next sweep looks at what the command left
            // (after it, so a sweep that ran before it cannot clear the mark).
            // The command is done: a mark that cannot be written is found
            // again by a node's seed at start (or the next command).
            if let Err(e) = self.mark_due(&mut conn, tenant, now_ms).await {
                tracing::warn!(error = %e, tenant, "cs: could not mark the tenant due for a sweep");
            }
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
        let order = waiting.iter().map(|s| (s.id.clone(), s.customer.clone())).collect();
        let queue = QueueSnapshot::new(group, order, 0, g.avg_handle_ms, &agents);
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

    async fn ended_sessions(&self, tenant: &str, from_ms: u64, to_ms: u64, limit: usize) -> Result<Vec<Session>> {
        let max = format!("({to_ms}");
        self.sessions_indexed(tenant, "ended", &max, &from_ms.to_string(), limit).await
    }

    async fn past_sessions(&self, tenant: &str, user: &str, before_ms: u64, limit: usize) -> Result<Vec<Session>> {
        let max = if before_ms == 0 { "+inf".to_string() } else { format!("({before_ms}") };
        self.sessions_indexed(tenant, &format!("h:{user}"), &max, "-inf", limit).await
    }

    async fn update_profile(&self, tenant: &str, user: &str, update: ProfileUpdate) -> Result<()> {
        let mut fields = Profile::fields(&update);
        fields.push(("user", user.to_string()));
        let _: () = self
            .conn()
            .hset_multiple(format!("{}p:{user}", prefix(tenant)), &fields)
            .await
            .map_err(redis_err("cs write"))?;
        Ok(())
    }

    async fn profiles(&self, tenant: &str, users: &[String]) -> Result<Vec<Profile>> {
        let p = prefix(tenant);
        let mut pipe = redis::pipe();
        for u in users {
            pipe.hgetall(format!("{p}p:{u}"));
        }
        let maps: Vec<std::collections::HashMap<String, String>> =
            pipe.query_async(&mut self.conn()).await.map_err(redis_err("cs read"))?;
        let mut out = Vec::new();
        for mut m in maps.into_iter().filter(|m| !m.is_empty()) {
            let mut take = |k: &str| m.remove(k).unwrap_or_default();
            out.push(Profile {
                user: take("user"),
                role: take("role"),
                name: take("name"),
                avatar: take("avatar"),
                note: take("note"),
                note_by: take("note_by"),
                note_ms: take("note_ms").parse().unwrap_or(0),
            });
        }
        Ok(out)
    }

    async fn left_messages(&self, tenant: &str, group: &str, limit: usize) -> Result<Vec<LeftMessage>> {
        let mut v: Vec<LeftMessage> = self.hvals(format!("{}left", prefix(tenant))).await?;
        v.retain(|m| m.group == group);
        v.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        v.truncate(limit);
        Ok(v)
    }

    async fn put_quick_reply(&self, tenant: &str, reply: QuickReply, max: usize) -> Result<bool> {
        let json = serde_json::to_string(&reply).map_err(corrupt)?;
        let stored: u32 = self
            .put_reply
            .key(format!("{}replies", prefix(tenant)))
            .arg(&reply.id)
            .arg(json)
            .arg(max)
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_err("cs write"))?;
        Ok(stored == 1)
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

    async fn sweep_tenants(&self, node: &str, lease: Duration) -> Result<Vec<String>> {
        let mut conn = self.conn();
        if !self.seeded.load(std::sync::atomic::Ordering::Relaxed) {
            let all = self.tenants().await?;
            for chunk in all.chunks(1000) {
                let mut pipe = redis::pipe();
                for t in chunk {
                    pipe.cmd("ZADD").arg(DUE).arg("NX").arg(0).arg(t).ignore();
                }
                pipe.query_async::<()>(&mut conn).await.map_err(redis_err("cs due"))?;
            }
            self.seeded.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let now = im_core::now_ms();
        let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut pipe = redis::pipe();
        // Seen by the others every 2 leases (not every round: an idle
        // cluster costs a command per node and round).
        if now >= self.next_seen.load(std::sync::atomic::Ordering::Relaxed) {
            pipe.cmd("ZADD").arg(SWEEP_NODES).arg(now).arg(node).ignore();
            pipe.cmd("ZREMRANGEBYSCORE").arg(SWEEP_NODES).arg("-inf").arg(now.saturating_sub(lease_ms * 100)).ignore();
            self.next_seen.store(now + 2 * lease_ms, std::sync::atomic::Ordering::Relaxed);
        }
        pipe.cmd("ZRANGEBYSCORE").arg(DUE).arg("-inf").arg(now).arg("LIMIT").arg(0).arg(SWEEP_BATCH);
        let (tenants,): (Vec<String>,) = pipe.query_async(&mut conn).await.map_err(redis_err("cs due"))?;
        if tenants.is_empty() {
            return Ok(tenants);
        }
        let nodes: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(SWEEP_NODES)
            .arg(now.saturating_sub(5 * lease_ms))
            .arg("+inf")
            .query_async(&mut conn)
            .await
            .map_err(redis_err("cs sweep nodes"))?;
        let _t = CallTimer::new("redis", "cs_sweep_lease");
        let mut invocation = self.sweep_lease.key(SWEEPERS);
        invocation.arg(node).arg(lease_ms);
        for t in &tenants {
            // Free leases go to their rendezvous node, so that the nodes
            // share the tenants; held ones stay with their holder, expired
            // ones go to whoever finds them first (its holder died).
            invocation.arg(t).arg(if rendezvous(t, &nodes, node) == node { "1" } else { "0" });
        }
        let mine: Vec<String> = invocation.invoke_async(&mut self.conn()).await.map_err(redis_err("cs sweep lease"))?;
        Ok(mine)
    }

    async fn tenants(&self) -> Result<Vec<String>> {
        let mut v: Vec<String> = self.conn().smembers(TENANTS).await.map_err(redis_err("cs tenants"))?;
        v.sort();
        Ok(v)
    }

    async fn swept(&self, tenant: &str, version: u64, next_due_ms: Option<u64>) -> Result<()> {
        let mut conn = self.conn();
        let _: () = match next_due_ms {
            Some(at) => conn.zadd(DUE, tenant, at).await,
            // Idle: its lease is freed too, so that when it is next due its
            // rendezvous node takes it (the nodes share the tenants).
            None => {
                let mut pipe = redis::pipe();
                pipe.zrem(DUE, tenant).ignore().hdel(SWEEPERS, tenant).ignore();
                pipe.query_async(&mut conn).await
            }
        }
        .map_err(redis_err("cs due"))?;
        // A command that ran after the sweep may have had its mark
        // overwritten just now: it is set again (not atomic with the
        // above, but always after it, which is what matters).
        let now: Option<u64> = conn.get(format!("{}version", prefix(tenant))).await.map_err(redis_err("cs due"))?;
        if now.is_some_and(|v| v > version) {
            self.mark_due(&mut conn, tenant, im_core::now_ms()).await?;
        }
        Ok(())
    }
}

impl RedisCs {
    /// Makes `tenant` due for a sweep at `at` unless it is due sooner.
    async fn mark_due(&self, conn: &mut RedisConn, tenant: &str, at: u64) -> Result<()> {
        redis::cmd("ZADD")
            .arg(DUE)
            .arg("LT")
            .arg(at)
            .arg(tenant)
            .query_async::<()>(conn)
            .await
            .map_err(redis_err("cs due"))
    }
}

/// The node among `nodes` (and `me`) that sweeps `tenant` when its lease is
/// free: the one whose hash with the tenant is highest. Every node computes
/// the same from the same list, and a node that joins or leaves moves only
/// its own share.
fn rendezvous<'a>(tenant: &str, nodes: &'a [String], me: &'a str) -> &'a str {
    use sha2::Digest;
    let score = |node: &str| {
        let d = sha2::Sha256::digest(format!("{tenant}\n{node}"));
        u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
    };
    nodes.iter().map(String::as_str).chain(std::iter::once(me)).max_by_key(|n| (score(n), *n)).unwrap_or(me)
}

/// Whether the tenant now has state worth sweeping (a group or an agent).
fn command_adds_tenant(outcome: &CsOutcome) -> bool {
    matches!(outcome.reply, Ok(CsReply::Group { .. } | CsReply::Agent { .. }))
}

#[cfg(test)]
mod tests {
    //! The differential test of the two copies of the rules: random command
    //! sequences run through the Rust engine (as the embedded store runs it)
    //! and through the Lua script on a real Redis, step by step; after every
    //! step the outcomes and every view must be equal.
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use cs_core::testing::{self, MemoryCs, Script, Step};
    use futures_util::future::join_all;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestCaseError, TestRunner};

    fn step() -> impl Strategy<Value = Step> {
        (0..testing::OPS, 0usize..12, 0usize..12, 0u64..30_000).prop_map(|(op, x, y, dt)| Step { op, x, y, dt })
    }

    /// Everything a client can read, from one store.
    #[derive(Debug, PartialEq)]
    struct Views {
        groups: Vec<Group>,
        group_views: Vec<Option<GroupView>>,
        agents: Vec<Option<Agent>>,
        user_sessions: Vec<Vec<Session>>,
        sessions: Vec<Option<Session>>,
        left: Vec<Vec<LeftMessage>>,
    }

    /// `sessions`: the ids whose records to compare (the open ones are in
    /// the group views and user sessions already).
    fn rust_views(cs: &MemoryCs, sessions: &[String]) -> Views {
        let st = &cs.state;
        Views {
            groups: st.groups.values().cloned().collect(),
            group_views: testing::GROUPS.iter().map(|g| st.group_view(g)).collect(),
            agents: (0..testing::AGENTS).map(|i| st.agents.get(&format!("a{i}")).cloned()).collect(),
            user_sessions: Script::users().iter().map(|u| st.user_sessions(u).into_iter().cloned().collect()).collect(),
            sessions: sessions.iter().map(|id| cs.session(id)).collect(),
            left: testing::GROUPS.iter().map(|g| st.left_messages(g, 100)).collect(),
        }
    }

    async fn lua_views(lua: &RedisCs, t: &str, sessions: &[String]) -> Views {
        let users = Script::users();
        let agents = (0..testing::AGENTS).map(|i| format!("a{i}")).collect::<Vec<_>>();
        let (groups, group_views, agents, user_sessions, sessions, left) = tokio::join!(
            lua.groups(t),
            join_all(testing::GROUPS.iter().map(|g| lua.group_view(t, g))),
            join_all(agents.iter().map(|a| lua.agent(t, a))),
            join_all(users.iter().map(|u| lua.user_sessions(t, u))),
            join_all(sessions.iter().map(|id| lua.session(t, id))),
            join_all(testing::GROUPS.iter().map(|g| lua.left_messages(t, g, 100))),
        );
        Views {
            groups: groups.unwrap(),
            group_views: all(group_views),
            agents: all(agents),
            user_sessions: all(user_sessions),
            sessions: all(sessions),
            left: all(left),
        }
    }

    fn all<T>(v: Vec<Result<T>>) -> Vec<T> {
        v.into_iter().collect::<Result<Vec<_>>>().unwrap()
    }

    /// Takes a test's tenant off the sweep list and its sweep lease.
    async fn forget_tenant(cs: &RedisCs, tenant: &str) {
        let mut conn = cs.conn();
        let _: () = conn.srem(TENANTS, tenant).await.unwrap();
        let _: () = conn.hdel(SWEEPERS, tenant).await.unwrap();
        let _: () = conn.zrem(DUE, tenant).await.unwrap();
    }

    async fn run_both(lua: &RedisCs, tenant: &str, steps: Vec<Step>) -> std::result::Result<(), TestCaseError> {
        let tenant = tenant.to_string();
        let mut script = Script::default();
        let mut rust = MemoryCs::new(&tenant);
        let mut commands = script.setup();
        let mut done = Vec::new();
        let mut steps = steps.into_iter();
        loop {
            let cmd =
                if commands.is_empty() { steps.next().map(|s| script.command(s)) } else { Some(commands.remove(0)) };
            let Some(cmd) = cmd else {
                // At the end, every session ever requested.
                let (expected, got) =
                    (rust_views(&rust, &script.sessions), lua_views(lua, &tenant, &script.sessions).await);
                prop_assert_eq!(got, expected, "final views differ after {:#?}", done);
                return Ok(());
            };
            let named: Vec<String> = match &cmd {
                CsCommand::End { session_id, .. }
                | CsCommand::Transfer { session_id, .. }
                | CsCommand::Rate { session_id, .. } => vec![session_id.clone()],
                _ => Vec::new(),
            };
            done.push(cmd.clone());
            let expected = rust.execute(cmd.clone(), script.now);
            let got = lua.execute(&tenant, cmd, script.now).await.unwrap();
            if got != expected {
                return Err(TestCaseError::fail(format!(
                    "outcomes differ after {done:#?}\nrust: {expected:#?}\nlua:  {got:#?}"
                )));
            }
            let (expected, got) = (rust_views(&rust, &named), lua_views(lua, &tenant, &named).await);
            if got != expected {
                return Err(TestCaseError::fail(format!(
                    "views differ after {done:#?}\nrust: {expected:#?}\nlua:  {got:#?}"
                )));
            }
        }
    }

    /// One node sweeps a tenant while it renews its lease; another takes
    /// over once the lease has run out.
    #[tokio::test]
    async fn one_node_sweeps_a_tenant_until_its_lease_runs_out() {
        let Some(redis) = super::super::test_redis(false).await else { return };
        let _alone = sweep_alone().await;
        let cs = RedisCs::new(redis, Duration::from_secs(600));
        let t = format!("lease-{}", im_core::new_msg_id());
        let spec = GroupSpec { id: "g".into(), ..GroupSpec::default() };
        assert!(cs.execute(&t, CsCommand::PutGroup { spec, only: vec![] }, 1).await.unwrap().reply.is_ok());
        let lease = Duration::from_millis(400);
        let (n1, n2) = (format!("n1-{t}"), format!("n2-{t}"));
        let sweeps = |node: String| {
            let cs = &cs;
            let t = t.clone();
            async move { cs.sweep_tenants(&node, lease).await.unwrap().contains(&t) }
        };
        assert!(sweeps(n1.clone()).await, "the first node takes the free lease");
        for _ in 0..3 {
            assert!(!sweeps(n2.clone()).await, "held by n1");
            tokio::time::sleep(lease / 2).await;
            assert!(sweeps(n1.clone()).await, "n1 renews it");
        }
        tokio::time::sleep(lease + Duration::from_millis(100)).await;
        assert!(sweeps(n2.clone()).await, "n1 stopped renewing: n2 takes over");
        assert!(!sweeps(n1).await, "and keeps it");
        forget_tenant(&cs, &t).await;
    }

    /// The tests whose nodes ask for tenants to sweep, one at a time: each
    /// node seen within a lease gets a share of the free ones.
    static SWEEPERS_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    /// Holds the lock, once the nodes of an earlier such test are no longer
    /// seen (5 of their 400 ms leases).
    async fn sweep_alone() -> tokio::sync::MutexGuard<'static, ()> {
        let guard = SWEEPERS_LOCK.lock().await;
        tokio::time::sleep(Duration::from_millis(2100)).await;
        guard
    }

    /// Three nodes share the due tenants whose leases are free, each tenant
    /// swept by one; a node that stops leaves its share to the others.
    #[tokio::test]
    async fn nodes_share_the_tenants_to_sweep() {
        let Some(redis) = super::super::test_redis(false).await else { return };
        let _alone = sweep_alone().await;
        let cs = RedisCs::new(redis, Duration::from_secs(600));
        let run = im_core::new_msg_id();
        let tenants: Vec<String> = (0..60).map(|i| format!("share-{run}-{i}")).collect();
        let spec = GroupSpec { id: "g".into(), ..GroupSpec::default() };
        for t in &tenants {
            let put = CsCommand::PutGroup { spec: spec.clone(), only: vec![] };
            assert!(cs.execute(t, put, 1).await.unwrap().reply.is_ok());
        }
        let lease = Duration::from_millis(400);
        let nodes: Vec<String> = (1..=3).map(|i| format!("n{i}-{run}")).collect();
        // Every node is seen before any takes a lease.
        for n in &nodes {
            let _ = cs.conn().zadd::<_, _, _, ()>(SWEEP_NODES, n, im_core::now_ms()).await;
        }
        let share = |node: String| {
            let cs = &cs;
            let tenants = &tenants;
            async move {
                let mine = cs.sweep_tenants(&node, lease).await.unwrap();
                mine.into_iter().filter(|t| tenants.contains(t)).collect::<std::collections::BTreeSet<_>>()
            }
        };
        let mut shares = Vec::new();
        for n in &nodes {
            shares.push(share(n.clone()).await);
        }
        let sizes: Vec<usize> = shares.iter().map(|s| s.len()).collect();
        assert_eq!(sizes.iter().sum::<usize>(), 60, "each tenant once: {sizes:?}");
        assert!(sizes.iter().all(|&n| n >= 8), "shared: {sizes:?}");
        // The same again: each keeps its share.
        for (n, before) in nodes.iter().zip(&shares) {
            assert_eq!(&share(n.clone()).await, before);
        }
        // Node 3 stops; 1 and 2 go on renewing theirs, and take its share
        // once its leases ran out.
        let (mut a, mut b) = (Default::default(), Default::default());
        for _ in 0..3 {
            tokio::time::sleep(lease / 2).await;
            (a, b) = (share(nodes[0].clone()).await, share(nodes[1].clone()).await);
        }
        assert_eq!(a.len() + b.len(), 60, "{} + {}", a.len(), b.len());
        assert!(a.is_disjoint(&b));
        assert!(a.is_superset(&shares[0]) && b.is_superset(&shares[1]), "each keeps its own");
        for t in &tenants {
            forget_tenant(&cs, t).await;
        }
    }

    /// A tenant is swept after a command or when a timed rule is due, and
    /// not while idle; a command that runs while a sweep is being recorded
    /// keeps its mark.
    #[tokio::test]
    async fn a_tenant_is_swept_when_due_and_not_while_idle() {
        let Some(redis) = super::super::test_redis(false).await else { return };
        let cs = RedisCs::new(redis, Duration::from_secs(600));
        let t = format!("due-{}", im_core::new_msg_id());
        // Due: in the index at or before now (other tests' tenants may be
        // due in the same Redis, ahead of this one in a sweep's batch).
        let due = || async {
            let at: Option<u64> = cs.conn().zscore(DUE, &t).await.unwrap();
            at.is_some_and(|at| at <= im_core::now_ms())
        };
        let now = im_core::now_ms();
        let spec = GroupSpec { id: "g".into(), ..GroupSpec::default() };
        assert!(cs.execute(&t, CsCommand::PutGroup { spec, only: vec![] }, now).await.unwrap().reply.is_ok());
        // Off the list a starting node seeds the index from (other tests
        // start nodes on this Redis).
        let _: () = cs.conn().srem(TENANTS, &t).await.unwrap();
        assert!(due().await, "a command makes its tenant due");
        let sweep = cs.execute(&t, CsCommand::Sweep { grace_ms: 1000 }, now).await.unwrap();
        let idle = CsReply::Swept { next_due_ms: 0, waiting: false, agents_connected: false };
        assert_eq!(sweep.reply, Ok(idle));
        cs.swept(&t, sweep.version, None).await.unwrap();
        assert!(!due().await, "idle: not swept");
        // A command between the sweep and its record keeps the tenant due.
        let sweep = cs.execute(&t, CsCommand::Sweep { grace_ms: 1000 }, now).await.unwrap();
        let member = CsCommand::PutMember { group: "g".into(), agent: "ann".into(), capacity: None };
        assert!(cs.execute(&t, member, now).await.unwrap().reply.is_ok());
        cs.swept(&t, sweep.version, None).await.unwrap();
        assert!(due().await, "the command after the sweep is not lost");
        // A timed rule: due then, not before.
        let sweep = cs.execute(&t, CsCommand::Sweep { grace_ms: 1000 }, now).await.unwrap();
        cs.swept(&t, sweep.version, Some(now + 60_000)).await.unwrap();
        assert!(!due().await);
        cs.swept(&t, sweep.version, Some(now - 1)).await.unwrap();
        assert!(due().await);
        forget_tenant(&cs, &t).await;
    }

    /// Thousands of random command sequences (`DD_CS_DIFF_CASES`, default
    /// 2,000) through both copies of the rules.
    #[test]
    fn the_lua_script_and_the_rust_engine_agree_step_by_step() {
        let cases = std::env::var("DD_CS_DIFF_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
        differential(false, cases);
    }

    /// The same on Redis Cluster, fewer cases: the script reaches keys of
    /// its tenant's slot that are not among its declared keys (queues,
    /// ended sessions), which a cluster allows only within one slot.
    #[test]
    fn the_lua_script_agrees_on_redis_cluster() {
        differential(true, 150);
    }

    fn differential(cluster: bool, cases: u32) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let Some(redis) = rt.block_on(super::super::test_redis(cluster)) else { return };
        let lua = RedisCs::new(redis, Duration::from_secs(600));
        let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
        let result = runner.run(&proptest::collection::vec(step(), 1..60), |steps| {
            let tenant = format!("diff-{}", im_core::new_msg_id());
            let outcome = rt.block_on(run_both(&lua, &tenant, steps));
            // Off the sweep list: the servers of other tests share this Redis
            // and would sweep thousands of these tenants every second.
            rt.block_on(forget_tenant(&lua, &tenant));
            outcome
        });
        if let Err(e) = result {
            panic!("{e}");
        }
    }
}
