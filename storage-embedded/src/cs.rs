//! Customer-service state of the embedded backend: each tenant's
//! [`TenantState`] in memory, loaded from redb on first use, every change
//! persisted as JSON records in the `cs` table through the store's writer.
//!
//! Each tenant has its own lock (tenants never wait for each other, also
//! not while one of them is loaded from disk). A command runs under its
//! tenant's lock: apply to memory, queue the changed records to the writer
//! (which keeps queue order), release the lock, then wait until the records
//! are durable before answering. If a write fails, the tenant's state is
//! dropped from memory and reloaded from disk by the next command, so
//! memory never runs ahead of what is stored for long.
//!
//! Keys are (kind, tenant, id): `g` groups, `a` agents, `s` waiting or active
//! sessions, `S` ended sessions, `l` unclaimed left messages, `L` claimed
//! ones, `q` quick replies, `p` profiles. Only `g`, `a`, `s`, `l` are loaded
//! into memory. Past sessions are indexed by (`h`, tenant, user, ended_ms,
//! id) with an empty value, one entry per party of the session.

use crate::errors::unavailable;
use crate::keys::{Key, Reader};
use crate::store::EmbeddedStore;
use crate::tables::CS;
use crate::writer::Records;
use async_trait::async_trait;
use cs_core::engine::{Dirty, Restored, TenantState, Wanted};
use redb::{ReadableDatabase, ReadableTable};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use storage::cs::*;
use storage::{Result, StorageError};
use tokio::sync::Mutex;

/// The embedded [`CsStore`].
pub struct EmbeddedCs {
    store: Arc<EmbeddedStore>,
    /// Each tenant's state behind its own lock; `None` until loaded (or
    /// after a failed write, until reloaded).
    tenants: std::sync::Mutex<HashMap<String, Arc<Mutex<Slot>>>>,
    /// Every tenant with records, for the sweep.
    known: std::sync::Mutex<BTreeSet<String>>,
    /// Quick-reply writes, one at a time (the limit is counted, then written).
    replies: Mutex<()>,
    /// Profile writes, one at a time (read, changed, written).
    profiles: Mutex<()>,
}

/// A tenant's state in memory, if loaded.
#[derive(Default)]
struct Slot {
    state: Option<TenantState>,
    /// The command count of a state dropped after a failed write, carried
    /// over to its reload so outcome versions keep growing.
    version: u64,
}

impl Slot {
    fn forget(&mut self) {
        if let Some(s) = self.state.take() {
            self.version = s.version;
        }
    }
}

/// A tenant's locked state.
type Locked = tokio::sync::OwnedMutexGuard<Slot>;

fn key(kind: &str, tenant: &str, id: &str) -> Vec<u8> {
    Key::new().s(kind).s(tenant).s(id).into_vec()
}

fn history_key(tenant: &str, user: &str, ended_ms: u64, id: &str) -> Vec<u8> {
    Key::new().s("h").s(tenant).s(user).n(ended_ms).s(id).into_vec()
}

/// The tenant's ended sessions by end time (for reports).
fn ended_key(tenant: &str, ended_ms: u64, id: &str) -> Vec<u8> {
    Key::new().s("e").s(tenant).n(ended_ms).s(id).into_vec()
}

fn prefix(kind: &str, tenant: &str) -> Vec<u8> {
    Key::new().s(kind).s(tenant).into_vec()
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| StorageError::Corrupt(format!("cannot encode a cs record: {e}")))
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StorageError::Corrupt(format!("cs record: {e}")))
}

/// Every record under `prefix`, decoded.
fn scan<T: DeserializeOwned>(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    prefix: &[u8],
) -> Result<Vec<T>> {
    let mut out = Vec::new();
    for item in table.range(prefix..).map_err(unavailable)? {
        let (k, v) = item.map_err(unavailable)?;
        if !k.value().starts_with(prefix) {
            break;
        }
        out.push(decode(v.value())?);
    }
    Ok(out)
}

impl EmbeddedCs {
    /// Customer-service state on `store`'s database.
    pub fn open(store: Arc<EmbeddedStore>) -> Result<Arc<Self>> {
        let txn = store.db().begin_read().map_err(unavailable)?;
        let table = txn.open_table(CS).map_err(unavailable)?;
        let mut known = BTreeSet::new();
        for kind in ["g", "a"] {
            let p = Key::new().s(kind).into_vec();
            for item in table.range(p.as_slice()..).map_err(unavailable)? {
                let (k, _) = item.map_err(unavailable)?;
                let k = k.value();
                if !k.starts_with(&p) {
                    break;
                }
                if let Some(t) = Reader::new(&k[p.len()..]).s() {
                    known.insert(t.to_string());
                }
            }
        }
        drop(table);
        drop(txn);
        Ok(Arc::new(Self {
            store,
            tenants: Default::default(),
            known: std::sync::Mutex::new(known),
            replies: Mutex::new(()),
            profiles: Mutex::new(()),
        }))
    }

    async fn load(&self, tenant: &str) -> Result<TenantState> {
        let tenant = tenant.to_string();
        self.store
            .read_db(move |db| {
                let txn = db.begin_read().map_err(unavailable)?;
                let table = txn.open_table(CS).map_err(unavailable)?;
                let groups: Vec<Group> = scan(&table, &prefix("g", &tenant))?;
                let agents: Vec<Agent> = scan(&table, &prefix("a", &tenant))?;
                let sessions: Vec<Session> = scan(&table, &prefix("s", &tenant))?;
                let left: Vec<LeftMessage> = scan(&table, &prefix("l", &tenant))?;
                Ok(TenantState::from_records(&tenant, groups, agents, sessions, left))
            })
            .await
    }

    async fn get_record<T: DeserializeOwned + Send + 'static>(&self, key: Vec<u8>) -> Result<Option<T>> {
        self.store
            .read_db(move |db| {
                let txn = db.begin_read().map_err(unavailable)?;
                let table = txn.open_table(CS).map_err(unavailable)?;
                match table.get(key.as_slice()).map_err(unavailable)? {
                    Some(v) => decode(v.value()).map(Some),
                    None => Ok(None),
                }
            })
            .await
    }

    /// Locks the tenant's state, loading it first if needed.
    async fn lock(&self, tenant: &str) -> Result<Locked> {
        let slot = {
            let mut tenants = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
            tenants.entry(tenant.to_string()).or_default().clone()
        };
        let mut guard = slot.lock_owned().await;
        if guard.state.is_none() {
            let mut loaded = self.load(tenant).await?;
            loaded.version = guard.version;
            guard.state = Some(loaded);
        }
        Ok(guard)
    }

    /// Loads the ended session or claimed left message the command refers
    /// to, so the engine can answer about it.
    async fn preload(&self, ts: &mut TenantState, command: &CsCommand) -> Result<()> {
        let restored = match ts.wanted(command) {
            Some(Wanted::Session(id)) => self.get_record(key("S", &ts.tenant, &id)).await?.map(Restored::Session),
            Some(Wanted::LeftMessage(id)) => {
                self.get_record(key("L", &ts.tenant, &id)).await?.map(Restored::LeftMessage)
            }
            None => None,
        };
        if let Some(r) = restored {
            ts.restore(r);
        }
        Ok(())
    }

    /// The records to write for what the last command changed.
    fn records(ts: &TenantState, dirty: BTreeSet<Dirty>) -> Result<Records> {
        let t = ts.tenant.as_str();
        let mut out = Vec::with_capacity(dirty.len() + 2);
        for d in dirty {
            match d {
                Dirty::Group(id) => out.push((key("g", t, &id), ts.groups.get(&id).map(encode).transpose()?)),
                Dirty::Agent(id) => out.push((key("a", t, &id), ts.agents.get(&id).map(encode).transpose()?)),
                Dirty::Session(id) => match ts.sessions.get(&id) {
                    Some(s) if s.state == SessionState::Ended => {
                        out.push((key("s", t, &id), None));
                        out.push((key("S", t, &id), Some(encode(s)?)));
                        for user in s.parties() {
                            out.push((history_key(t, user, s.ended_ms, &id), Some(Vec::new())));
                        }
                        out.push((ended_key(t, s.ended_ms, &id), Some(Vec::new())));
                    }
                    Some(s) => out.push((key("s", t, &id), Some(encode(s)?))),
                    None => out.push((key("s", t, &id), None)),
                },
                Dirty::LeftMessage(id) => match ts.left.get(&id) {
                    Some(m) if !m.claimed_by.is_empty() => {
                        out.push((key("l", t, &id), None));
                        out.push((key("L", t, &id), Some(encode(m)?)));
                    }
                    Some(m) => out.push((key("l", t, &id), Some(encode(m)?))),
                    None => out.push((key("l", t, &id), None)),
                },
            }
        }
        Ok(out)
    }

    /// The sessions named by the index keys in `from..to` (each `<prefix
    /// of skip bytes><time><id>`), newest first, at most `limit`.
    async fn sessions_indexed(
        &self,
        tenant: &str,
        skip: usize,
        from: Vec<u8>,
        to: Vec<u8>,
        limit: usize,
    ) -> Result<Vec<Session>> {
        let tenant = tenant.to_string();
        self.store
            .read_db(move |db| {
                let txn = db.begin_read().map_err(unavailable)?;
                let table = txn.open_table(CS).map_err(unavailable)?;
                let mut out = Vec::new();
                for item in table.range(from.as_slice()..to.as_slice()).map_err(unavailable)?.rev() {
                    if out.len() >= limit {
                        break;
                    }
                    let (k, _) = item.map_err(unavailable)?;
                    let k = k.value();
                    let mut r = Reader::new(&k[skip..]);
                    let Some(id) = r.n().and_then(|_| r.s()) else { continue };
                    if let Some(v) = table.get(key("S", &tenant, id).as_slice()).map_err(unavailable)? {
                        out.push(decode(v.value())?);
                    }
                }
                Ok(out)
            })
            .await
    }

    /// Drops the tenant's state from memory: the next command reloads it.
    async fn forget(&self, tenant: &str) {
        let slot = self.tenants.lock().unwrap_or_else(|p| p.into_inner()).get(tenant).cloned();
        if let Some(slot) = slot {
            slot.lock().await.forget();
        }
    }

    /// Runs `f` on the tenant's state under its lock (for queries).
    async fn with_tenant<T>(&self, tenant: &str, f: impl FnOnce(&TenantState) -> T) -> Result<T> {
        let guard = self.lock(tenant).await?;
        let ts = guard.state.as_ref().ok_or_else(|| unavailable("tenant state vanished"))?;
        Ok(f(ts))
    }
}

#[async_trait]
impl CsStore for EmbeddedCs {
    async fn execute(&self, tenant: &str, command: CsCommand, now_ms: u64) -> Result<CsOutcome> {
        let (queued, outcome) = {
            let mut guard = self.lock(tenant).await?;
            let ts = guard.state.as_mut().ok_or_else(|| unavailable("tenant state vanished"))?;
            self.preload(ts, &command).await?;
            let outcome = ts.apply(command, now_ms);
            let dirty = ts.take_dirty();
            let records = Self::records(ts, dirty);
            ts.evict_finished();
            let queued = match records {
                Ok(r) if r.is_empty() => None,
                Ok(r) => match self.store.queue_records(r).await {
                    Ok(rx) => Some(rx),
                    Err(e) => {
                        guard.forget();
                        return Err(e);
                    }
                },
                Err(e) => {
                    guard.forget();
                    return Err(e);
                }
            };
            self.known.lock().unwrap_or_else(|p| p.into_inner()).insert(tenant.to_string());
            (queued, outcome)
        };
        if let Some(rx) = queued {
            let written = rx.await.map_err(|_| unavailable("the store writer stopped")).and_then(|r| r);
            if let Err(e) = written {
                // Memory ran ahead of the disk: reload before the next command.
                self.forget(tenant).await;
                return Err(e);
            }
        }
        Ok(outcome)
    }

    async fn groups(&self, tenant: &str) -> Result<Vec<Group>> {
        self.with_tenant(tenant, |ts| ts.groups.values().cloned().collect()).await
    }

    async fn group_view(&self, tenant: &str, group: &str) -> Result<Option<GroupView>> {
        self.with_tenant(tenant, |ts| ts.group_view(group)).await
    }

    async fn agent(&self, tenant: &str, agent: &str) -> Result<Option<Agent>> {
        self.with_tenant(tenant, |ts| ts.agents.get(agent).cloned()).await
    }

    async fn session(&self, tenant: &str, session_id: &str) -> Result<Option<Session>> {
        if let Some(s) = self.with_tenant(tenant, |ts| ts.sessions.get(session_id).cloned()).await? {
            return Ok(Some(s));
        }
        self.get_record(key("S", tenant, session_id)).await
    }

    async fn user_sessions(&self, tenant: &str, user: &str) -> Result<Vec<Session>> {
        self.with_tenant(tenant, |ts| ts.user_sessions(user).into_iter().cloned().collect()).await
    }

    async fn ended_sessions(&self, tenant: &str, from_ms: u64, to_ms: u64, limit: usize) -> Result<Vec<Session>> {
        let start = Key::new().s("e").s(tenant).into_vec();
        let from = Key::new().s("e").s(tenant).n(from_ms).into_vec();
        let to = Key::new().s("e").s(tenant).n(to_ms).into_vec();
        self.sessions_indexed(tenant, start.len(), from, to, limit).await
    }

    async fn past_sessions(&self, tenant: &str, user: &str, before_ms: u64, limit: usize) -> Result<Vec<Session>> {
        let from = Key::new().s("h").s(tenant).s(user).into_vec();
        let to = Key::new().s("h").s(tenant).s(user).n(if before_ms == 0 { u64::MAX } else { before_ms }).into_vec();
        self.sessions_indexed(tenant, from.len(), from, to, limit).await
    }

    async fn update_profile(&self, tenant: &str, user: &str, update: ProfileUpdate) -> Result<()> {
        let _one_at_a_time = self.profiles.lock().await;
        let k = key("p", tenant, user);
        let mut profile: Profile =
            self.get_record(k.clone()).await?.unwrap_or_else(|| Profile { user: user.into(), ..Default::default() });
        if profile.apply(&update) {
            let record = (k, Some(encode(&profile)?));
            self.store
                .queue_records(vec![record])
                .await?
                .await
                .map_err(|_| unavailable("the store writer stopped"))??;
        }
        Ok(())
    }

    async fn profiles(&self, tenant: &str, users: &[String]) -> Result<Vec<Profile>> {
        let keys: Vec<Vec<u8>> = users.iter().map(|u| key("p", tenant, u)).collect();
        self.store
            .read_db(move |db| {
                let txn = db.begin_read().map_err(unavailable)?;
                let table = txn.open_table(CS).map_err(unavailable)?;
                let mut out = Vec::new();
                for k in keys {
                    if let Some(v) = table.get(k.as_slice()).map_err(unavailable)? {
                        out.push(decode(v.value())?);
                    }
                }
                Ok(out)
            })
            .await
    }

    async fn left_messages(&self, tenant: &str, group: &str, limit: usize) -> Result<Vec<LeftMessage>> {
        self.with_tenant(tenant, |ts| ts.left_messages(group, limit)).await
    }

    async fn put_quick_reply(&self, tenant: &str, reply: QuickReply, max: usize) -> Result<bool> {
        // Held until the write is durable, so the next count sees it.
        let _one_at_a_time = self.replies.lock().await;
        if self.quick_reply(tenant, &reply.id).await?.is_none() {
            let p = prefix("q", tenant);
            let count = self
                .store
                .read_db(move |db| {
                    let txn = db.begin_read().map_err(unavailable)?;
                    let table = txn.open_table(CS).map_err(unavailable)?;
                    let mut n = 0;
                    for item in table.range(p.as_slice()..).map_err(unavailable)? {
                        if !item.map_err(unavailable)?.0.value().starts_with(&p) || n >= max {
                            break;
                        }
                        n += 1;
                    }
                    Ok(n)
                })
                .await?;
            if count >= max {
                return Ok(false);
            }
        }
        let record = (key("q", tenant, &reply.id), Some(encode(&reply)?));
        self.store.queue_records(vec![record]).await?.await.map_err(|_| unavailable("the store writer stopped"))??;
        Ok(true)
    }

    async fn delete_quick_reply(&self, tenant: &str, id: &str) -> Result<bool> {
        let existed = self.quick_reply(tenant, id).await?.is_some();
        if existed {
            let record = (key("q", tenant, id), None);
            self.store
                .queue_records(vec![record])
                .await?
                .await
                .map_err(|_| unavailable("the store writer stopped"))??;
        }
        Ok(existed)
    }

    async fn quick_replies(&self, tenant: &str, groups: &[String], owner: &str) -> Result<Vec<QuickReply>> {
        let p = prefix("q", tenant);
        let all: Vec<QuickReply> = self
            .store
            .read_db(move |db| {
                let txn = db.begin_read().map_err(unavailable)?;
                scan(&txn.open_table(CS).map_err(unavailable)?, &p)
            })
            .await?;
        Ok(QuickReply::visible(all, groups, owner))
    }

    async fn quick_reply(&self, tenant: &str, id: &str) -> Result<Option<QuickReply>> {
        self.get_record(key("q", tenant, id)).await
    }

    async fn sweep_tenants(&self, _node: &str, _lease: std::time::Duration) -> Result<Vec<String>> {
        self.tenants().await
    }

    async fn tenants(&self) -> Result<Vec<String>> {
        Ok(self.known.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect())
    }
}
