//! The cluster backend's search index, in MongoDB: collection `search`, one
//! document per message with its distinct terms (`search::terms`: words,
//! their parts, CJK unigrams and bigrams) in a multikey array, beside the
//! filter fields. Candidates are found with `$all` on the terms under the
//! tenant and the caller's scope, newest first by `_id` (the msg_id, a
//! UUIDv7); positions are not stored, so a phrase is checked by the
//! matcher dispatch runs on every candidate. No `$text`: MongoDB's text
//! index has no Chinese, and one per collection.
//!
//! The feed reads `messages` by `_id`. Ids are made by each node before its
//! insert lands, so a message may appear a little after a later id was
//! read (at most [`LATE`]): the position is `safe/high`, `high` the largest
//! id read and `safe` the id below which every message is indexed. Reads
//! go on after `high`; every [`SWEEP_EVERY`] the ids between `safe` and
//! `LATE` ago are listed again (ids only) and any not indexed yet are
//! read, and `safe` moves up. Entries are inserted idempotently (by
//! `_id`), so reading a message twice (after a restart, or on another
//! node) only costs the read. One node indexes at a time: the holder of
//! the Redis lease `dd:search:lease:<database>`.

use super::RedisConn;
use super::{CallTimer, redis_err, unavailable};
use async_trait::async_trait;
use futures_util::TryStreamExt;
use mongodb::bson::{Document, doc};
use mongodb::options::{FindOptions, IndexOptions, InsertManyOptions};
use mongodb::{Collection, IndexModel};
use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use storage::search::{FeedItem, FeedPage, IndexHit, IndexQuery, SearchDoc, SearchScope};
use storage::{Result, SearchIndex, StorageError};

/// Longest time between a msg_id being made and its message being stored.
const LATE: Duration = Duration::from_secs(60);
const SWEEP_EVERY: Duration = Duration::from_secs(5);
const LEASE: Duration = Duration::from_secs(15);
/// Ids remembered as indexed between `safe` and `high`; past this the
/// sweep reads them again (correct, only slower).
const MAX_SEEN: usize = 2_000_000;

pub struct ClusterSearch {
    redis: RedisConn,
    node: String,
    /// `dd:search:lease:<database>`: one indexer per database.
    lease_key: String,
    /// Takes the lease when free, renews it when held: 1, else 0.
    lease_script: redis::Script,
    messages: Collection<Document>,
    entries: Collection<Document>,
    meta: Collection<Document>,
    state: Mutex<FeedState>,
}

#[derive(Default)]
struct FeedState {
    seen: HashSet<String>,
    last_sweep: Option<Instant>,
}

/// The smallest UUIDv7 string of `ms` (ids order as their strings do).
fn id_at(ms: u64) -> String {
    format!("{:08x}-{:04x}-0000-0000-000000000000", ms >> 16, ms & 0xFFFF)
}

fn split(position: Option<&str>) -> (String, String) {
    let (safe, high) = position.and_then(|p| p.split_once('/')).unwrap_or(("", ""));
    (safe.to_string(), high.to_string())
}

fn mongo(what: &'static str) -> impl Fn(mongodb::error::Error) -> StorageError {
    move |e| StorageError::Unavailable(format!("mongodb {what}: {e}"))
}

/// Every document of `collection` that `filter` finds, with `options`.
async fn find_all(
    collection: &Collection<Document>,
    filter: Document,
    options: FindOptions,
    what: &'static str,
) -> Result<Vec<Document>> {
    let cursor = collection.find(filter).with_options(options).await.map_err(mongo(what))?;
    cursor.try_collect().await.map_err(mongo(what))
}

impl ClusterSearch {
    pub async fn open(redis: RedisConn, db: &mongodb::Database, node: &str) -> Result<Self> {
        let entries: Collection<Document> = db.collection("search");
        let indexes = [
            ("tenant_terms", doc! { "t": 1, "terms": 1, "_id": -1 }),
            ("tenant_member", doc! { "t": 1, "m": 1, "_id": -1 }),
            ("tenant_time", doc! { "t": 1, "_id": -1 }),
        ];
        for (name, keys) in indexes {
            let options = IndexOptions::builder().name(name.to_string()).build();
            entries
                .create_index(IndexModel::builder().keys(keys).options(options).build())
                .await
                .map_err(unavailable)?;
        }
        Ok(Self {
            redis,
            node: node.to_string(),
            lease_key: format!("dd:search:lease:{}", db.name()),
            lease_script: redis::Script::new(
                "local v = redis.call('GET', KEYS[1]) \
                 if v == false or v == ARGV[1] then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end \
                 return 0",
            ),
            messages: db.collection("messages"),
            meta: db.collection("search_meta"),
            entries,
            state: Mutex::new(FeedState::default()),
        })
    }

    fn state(&self) -> Result<std::sync::MutexGuard<'_, FeedState>> {
        self.state.lock().map_err(|_| unavailable("search state lock poisoned"))
    }

    /// Takes or renews the indexing lease; whether this node holds it.
    async fn lease(&self) -> Result<bool> {
        let _t = CallTimer::new("redis", "search_lease");
        let ms = LEASE.as_millis() as u64;
        let held: i64 = self
            .lease_script
            .key(&self.lease_key)
            .arg(&self.node)
            .arg(ms)
            .invoke_async(&mut self.redis.clone())
            .await
            .map_err(redis_err("search lease"))?;
        Ok(held == 1)
    }

    async fn messages(&self, filter: Document, limit: Option<i64>) -> Result<Vec<FeedItem>> {
        let options = FindOptions::builder().sort(doc! { "_id": 1 }).limit(limit).build();
        let docs = find_all(&self.messages, filter, options, "search feed").await?;
        let mut items = Vec::with_capacity(docs.len());
        for d in &docs {
            let message = super::messages::decode(d)?;
            let tenant = d.get_str("tenant").map_err(|_| StorageError::Corrupt("message tenant".into()))?;
            let mut members = [message.from_user.clone(), message.to_user.clone()];
            members.sort();
            items.push(FeedItem { tenant: tenant.to_string(), members, message });
        }
        Ok(items)
    }

    /// Lists the ids in (`safe`, `upto`] and reads those not indexed.
    async fn sweep(&self, safe: &str, upto: &str) -> Result<Vec<FeedItem>> {
        let options = FindOptions::builder().projection(doc! { "_id": 1 }).build();
        let filter = doc! { "_id": { "$gt": safe, "$lte": upto } };
        let ids = find_all(&self.messages, filter, options, "search sweep").await?;
        let missing: Vec<String> = {
            let state = self.state()?;
            ids.iter()
                .filter_map(|d| d.get_str("_id").ok())
                .filter(|id| !state.seen.contains(*id))
                .map(str::to_string)
                .collect()
        };
        if missing.is_empty() {
            return Ok(Vec::new());
        }
        metrics::counter!("dongdong_search_late_messages_total").increment(missing.len() as u64);
        self.messages(doc! { "_id": { "$in": missing } }, None).await
    }

    fn entry(doc: SearchDoc) -> Document {
        let terms = search::terms(&doc.text);
        doc! {
            "_id": doc.msg_id,
            "t": doc.tenant,
            "m": doc.members.to_vec(),
            "c": doc.conversation_id,
            "f": doc.from_user,
            "k": doc.kind,
            "s": doc.session_id,
            "g": doc.group,
            "ts": doc.server_time_ms as i64,
            "seq": doc.seq as i64,
            "terms": terms,
        }
    }

    fn filter(q: &IndexQuery) -> Document {
        let mut f = doc! { "t": &q.tenant };
        let mut terms: Vec<&str> = q.clauses.iter().flat_map(|c| c.term_set()).collect();
        terms.sort_unstable();
        terms.dedup();
        if !terms.is_empty() {
            f.insert("terms", doc! { "$all": terms });
        }
        if let SearchScope::Member { user, groups } = &q.scope {
            let mut any = vec![doc! { "m": user }];
            if !groups.is_empty() {
                any.push(doc! { "g": { "$in": groups } });
            }
            f.insert("$or", any);
        }
        // `m` is an array: a plain value matches any member.
        for (field, value) in
            [("m", &q.with_user), ("c", &q.conversation_id), ("f", &q.from_user), ("s", &q.session_id), ("g", &q.group)]
        {
            if let Some(v) = value {
                f.insert(field, v);
            }
        }
        if !q.kinds.is_empty() {
            f.insert("k", doc! { "$in": q.kinds.clone() });
        }
        if q.since_ms > 0 || q.until_ms > 0 {
            let mut range = doc! { "$gte": q.since_ms as i64 };
            if q.until_ms > 0 {
                range.insert("$lt", q.until_ms as i64);
            }
            f.insert("ts", range);
        }
        if let Some(before) = q.before {
            f.insert("_id", doc! { "$lt": uuid::Uuid::from_u128(before.key).to_string() });
        }
        f
    }
}

#[async_trait]
impl SearchIndex for ClusterSearch {
    async fn feed(&self, after: Option<&str>, limit: usize) -> Result<FeedPage> {
        let unchanged = || FeedPage { items: Vec::new(), next: after.map(str::to_string) };
        if !self.lease().await? {
            return Ok(unchanged());
        }
        let (safe, high) = split(after);
        let now = im_core::now_ms();
        let settled = id_at(now.saturating_sub(LATE.as_millis() as u64));
        let sweep_due = self.state()?.last_sweep.is_none_or(|t| t.elapsed() >= SWEEP_EVERY);
        if sweep_due && safe < high {
            let upto = settled.clone().min(high.clone());
            if upto > safe {
                let items = self.sweep(&safe, &upto).await?;
                let mut state = self.state()?;
                state.last_sweep = Some(Instant::now());
                state.seen.retain(|id| *id > upto);
                state.seen.extend(items.iter().map(|i| i.message.msg_id.clone()));
                return Ok(FeedPage { items, next: Some(format!("{upto}/{high}")) });
            }
        }
        let items = self.messages(doc! { "_id": { "$gt": &high } }, Some(limit as i64)).await?;
        let Some(last) = items.last().map(|i| i.message.msg_id.clone()) else {
            return Ok(unchanged());
        };
        // Nothing read earlier waits for a sweep: what is settled now is final.
        let safe = if safe == high { settled.min(last.clone()).max(safe) } else { safe };
        let mut state = self.state()?;
        if state.seen.len() < MAX_SEEN {
            state.seen.extend(items.iter().map(|i| i.message.msg_id.clone()).filter(|id| *id > safe));
        }
        Ok(FeedPage { items, next: Some(format!("{safe}/{last}")) })
    }

    async fn position(&self) -> Result<Option<String>> {
        let found = self.meta.find_one(doc! { "_id": "feed" }).await.map_err(mongo("search position"))?;
        Ok(found.and_then(|d| d.get_str("position").ok().map(str::to_string)).filter(|p| !p.is_empty()))
    }

    async fn apply(
        &self,
        docs: Vec<SearchDoc>,
        removed: Vec<(String, String)>,
        position: Option<String>,
    ) -> Result<()> {
        let _t = CallTimer::new("mongodb", "search_apply");
        if !docs.is_empty() {
            let entries: Vec<Document> = docs.into_iter().map(Self::entry).collect();
            let options = InsertManyOptions::builder().ordered(false).build();
            if let Err(e) = self.entries.insert_many(entries).with_options(options).await {
                // Entries indexed before (a message read twice) are fine.
                let only_duplicates = match &*e.kind {
                    mongodb::error::ErrorKind::InsertMany(m) => {
                        m.write_concern_error.is_none()
                            && m.write_errors.as_ref().is_some_and(|w| w.iter().all(|w| w.code == 11000))
                    }
                    _ => false,
                };
                if !only_duplicates {
                    return Err(mongo("search insert")(e));
                }
            }
        }
        if !removed.is_empty() {
            let ids: Vec<String> = removed.into_iter().map(|(_, id)| id).collect();
            self.entries.delete_many(doc! { "_id": { "$in": ids } }).await.map_err(mongo("search delete"))?;
        }
        if let Some(p) = position {
            self.meta
                .update_one(doc! { "_id": "feed" }, doc! { "$set": { "position": p } })
                .upsert(true)
                .await
                .map_err(mongo("search position"))?;
        }
        Ok(())
    }

    async fn candidates(&self, query: &IndexQuery) -> Result<Vec<IndexHit>> {
        let _t = CallTimer::new("mongodb", "search");
        let options = FindOptions::builder()
            .sort(doc! { "_id": -1 })
            .limit(query.limit.max(1) as i64)
            .projection(doc! { "_id": 1, "c": 1, "seq": 1, "s": 1 })
            .build();
        let docs = find_all(&self.entries, Self::filter(query), options, "search").await?;
        let bad = || StorageError::Corrupt("search entry".into());
        docs.iter()
            .map(|d| {
                Ok(IndexHit {
                    msg_id: d.get_str("_id").map_err(|_| bad())?.to_string(),
                    conversation_id: d.get_str("c").map_err(|_| bad())?.to_string(),
                    seq: d.get_i64("seq").map_err(|_| bad())? as u64,
                    session_id: d.get_str("s").unwrap_or_default().to_string(),
                })
            })
            .collect()
    }

    async fn clear(&self) -> Result<()> {
        self.entries.delete_many(doc! {}).await.map_err(mongo("search clear"))?;
        self.meta.delete_many(doc! {}).await.map_err(mongo("search clear"))?;
        self.state()?.seen.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_at_orders_like_the_ids_of_that_time() {
        let id = im_core::new_msg_id();
        let now = im_core::now_ms();
        assert!(id_at(now.saturating_sub(1000)) < id);
        assert!(id_at(now + 1000) > id);
        assert_eq!(split(Some("a/b")), ("a".into(), "b".into()));
        assert_eq!(split(None), (String::new(), String::new()));
    }
}
