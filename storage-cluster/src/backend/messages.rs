//! Messages in MongoDB, pending ids and devices in Redis.
//!
//! `append` keeps the trait's promise (idempotent, gap-free seq, pending
//! marked, durable) without a distributed transaction:
//! 1. a message already stored under (tenant, sender, client_msg_id) makes the
//!    insert fail on the unique index `idempotency`; that message is returned
//!    as a duplicate;
//! 2. the pending marks go to Redis *before* the insert, so a stored message
//!    is never without them; marks whose message never got stored (the insert
//!    failed, the node died) are dropped when a replay finds no message older
//!    than [`ORPHAN_AGE`];
//! 3. the seq is the conversation's last seq + 1 and the insert is guarded by
//!    the unique index `conv_seq`: when another node took that seq first the
//!    insert fails, the last seq is re-read and the append retries. A failed
//!    insert consumes no seq, so seqs stay gap-free.
//!
//! Inserts of concurrent senders are batched into `insert_many` calls.

use super::RedisConn;
use super::{CallTimer, ClusterOptions, convs_key, devices_key, events_keys, pending_key, redis_err};
use async_trait::async_trait;
use dashmap::DashMap;
use futures_util::TryStreamExt;
use im_core::pb::{Content, Message};
use mongodb::bson::{Binary, Document, doc, spec::BinarySubtype};
use mongodb::options::{Acknowledgment, IndexOptions, WriteConcern};
use mongodb::{Collection, IndexModel};
use prost::Message as _;
use std::sync::Arc;
use std::time::{Duration, Instant};
use storage::{
    Appended, Conversation, DeviceKey, DeviceRegistration, DeviceRegistry, HistoryPage, HistoryQuery, MessageStore,
    NewMessage, PendingCursor, PendingStore, Result, StorageError,
};
use storage::{ConversationCursor, ConversationsPage, MarkOutcome, MarkRead, PendingEvent, RecallOutcome};
use tokio::sync::{mpsc, oneshot};

/// A pending mark whose message is still missing after this long belongs to
/// an insert that failed; replay removes it.
const ORPHAN_AGE: Duration = Duration::from_secs(60);
/// How long an append may keep retrying after losing seq races to other
/// nodes. The node that just won a seq knows the next one, so a loser can lose
/// several times in a row while the winner's burst lasts.
const SEQ_RACE_BUDGET: Duration = Duration::from_secs(10);
/// The most pending ids looked at for a gap (a device with more pending
/// than this in the seq range is replayed instead).
const GAP_SCAN_MAX: usize = 4096;

/// Conversations whose last seq this node caches.
const SEQ_CACHE_MAX: usize = 100_000;

/// Why one document of a batch was not inserted.
#[derive(Debug)]
enum InsertError {
    DuplicateKey,
    Failed(StorageError),
}

type InsertReply = oneshot::Sender<std::result::Result<(), InsertError>>;

/// A conversation's last message, as appends need it.
#[derive(Debug, Clone)]
pub(super) struct LastMessage {
    pub(super) seq: u64,
    pub(super) from: Box<str>,
    /// The sender's count of messages up to it.
    pub(super) ordinal: u64,
}

pub struct ClusterStore {
    pub(super) redis: RedisConn,
    pub(super) db: mongodb::Database,
    pub(super) messages: Collection<Document>,
    revocations: Collection<Document>,
    settings: Collection<Document>,
    /// Read pointers: `_id` conversation/user, `seq`, `peerSent`.
    pub(super) reads: Collection<Document>,
    files: mongodb::gridfs::GridFsBucket,
    file_refs: Collection<Document>,
    inserts: mpsc::Sender<(Document, InsertReply)>,
    last_seq: DashMap<String, LastMessage>,
    /// Per conversation, the msg_id of an append whose insert failed with
    /// an unknown outcome (it may still land): the conversation's next
    /// append on this node looks it up first.
    in_doubt: DashMap<String, String>,
    max_devices: usize,
}

impl ClusterStore {
    pub(crate) fn revocations(&self) -> &Collection<Document> {
        &self.revocations
    }

    pub(crate) fn settings(&self) -> &Collection<Document> {
        &self.settings
    }

    /// The GridFS bucket of uploads.
    pub(crate) fn files(&self) -> &mongodb::gridfs::GridFsBucket {
        &self.files
    }

    pub(crate) fn file_refs_collection(&self) -> &Collection<Document> {
        &self.file_refs
    }
}

pub(super) fn mongo_err(what: &'static str) -> impl Fn(mongodb::error::Error) -> StorageError {
    move |e| {
        metrics::counter!("dongdong_mongo_errors_total").increment(1);
        StorageError::Unavailable(format!("mongodb {what}: {e}"))
    }
}

impl ClusterStore {
    pub(crate) async fn connect(redis: RedisConn, options: &ClusterOptions) -> Result<Arc<Self>> {
        let url = &options.mongo_url;
        let unreachable =
            |e: mongodb::error::Error| StorageError::Unavailable(format!("cannot reach MongoDB at {url}: {e}"));
        let mut client_options = mongodb::options::ClientOptions::parse(url).await.map_err(unreachable)?;
        client_options.server_selection_timeout = Some(options.mongo_timeout);
        client_options.connect_timeout = Some(options.mongo_timeout);
        client_options.app_name = Some("dongdong".into());
        let client = mongodb::Client::with_options(client_options).map_err(unreachable)?;
        let db = client.database(&options.mongo_database);
        db.run_command(doc! { "ping": 1 }).await.map_err(unreachable)?;
        let messages: Collection<Document> = db.collection("messages");
        let indexes = [
            ("conv_seq", doc! { "tenant": 1, "conv": 1, "seq": 1 }),
            ("idempotency", doc! { "tenant": 1, "from": 1, "cmid": 1 }),
        ];
        for (name, keys) in indexes {
            let options = IndexOptions::builder().unique(true).name(name.to_string()).build();
            messages
                .create_index(IndexModel::builder().keys(keys).options(options).build())
                .await
                .map_err(unreachable)?;
        }
        let w = match options.write_concern.parse::<u32>() {
            Ok(n) => Acknowledgment::Nodes(n),
            Err(_) if options.write_concern == "majority" => Acknowledgment::Majority,
            Err(_) => Acknowledgment::Custom(options.write_concern.clone()),
        };
        let write_concern = WriteConcern::builder().w(w).journal(options.journal).build();
        let (tx, rx) = mpsc::channel(options.max_batch * 8);
        tokio::spawn(insert_loop(messages.clone(), write_concern, rx, options.max_batch.max(1)));
        Ok(Arc::new(Self {
            redis,
            db: db.clone(),
            revocations: db.collection("revocations"),
            settings: db.collection("settings"),
            reads: db.collection("reads"),
            files: db.gridfs_bucket(
                mongodb::options::GridFsBucketOptions::builder().bucket_name("files".to_string()).build(),
            ),
            file_refs: db.collection("file_refs"),
            messages,
            inserts: tx,
            last_seq: DashMap::new(),
            in_doubt: DashMap::new(),
            max_devices: options.max_devices_per_user.max(1),
        }))
    }

    async fn insert(&self, doc: Document) -> std::result::Result<(), InsertError> {
        let (tx, rx) = oneshot::channel();
        self.inserts
            .send((doc, tx))
            .await
            .map_err(|_| InsertError::Failed(StorageError::Unavailable("message inserter stopped".into())))?;
        rx.await.map_err(|_| InsertError::Failed(StorageError::Unavailable("message inserter stopped".into())))?
    }

    async fn find_idempotent(&self, new: &NewMessage) -> Result<Option<Message>> {
        let found = self
            .messages
            .find_one(doc! { "tenant": &new.tenant, "from": &new.from_user, "cmid": &new.client_msg_id })
            .await
            .map_err(mongo_err("find"))?;
        found.map(|d| decode(&d)).transpose()
    }

    /// The document of the conversation's last message, whole.
    pub(super) async fn last_document(&self, tenant: &str, conversation: &str) -> Result<Option<Document>> {
        self.messages
            .find_one(doc! { "tenant": tenant, "conv": conversation })
            .sort(doc! { "seq": -1 })
            .await
            .map_err(mongo_err("find last"))
    }

    /// The conversation's last message, from MongoDB.
    pub(super) async fn read_last(&self, tenant: &str, conversation: &str) -> Result<Option<LastMessage>> {
        let last = self
            .messages
            .find_one(doc! { "tenant": tenant, "conv": conversation })
            .sort(doc! { "seq": -1 })
            .projection(doc! { "seq": 1, "from": 1, "n": 1 })
            .await
            .map_err(mongo_err("find last seq"))?;
        let Some(d) = last else { return Ok(None) };
        let seq = d.get_i64("seq").map_err(|_| StorageError::Corrupt("message document field seq".into()))? as u64;
        let from = d.get_str("from").map_err(|_| StorageError::Corrupt("message document field from".into()))?;
        let ordinal = self.ordinal(tenant, conversation, &d, seq, from).await?;
        Ok(Some(LastMessage { seq, from: from.into(), ordinal }))
    }

    /// A message document's sender ordinal; counted for documents stored
    /// before ordinals were.
    pub(super) async fn ordinal(&self, tenant: &str, conv: &str, d: &Document, seq: u64, from: &str) -> Result<u64> {
        if let Ok(n) = d.get_i64("n") {
            return Ok(n as u64);
        }
        let filter = doc! { "tenant": tenant, "conv": conv, "from": from, "seq": { "$lte": seq as i64 } };
        self.messages.count_documents(filter).await.map_err(mongo_err("count"))
    }

    fn remember_last(&self, conversation: &str, last: LastMessage) {
        if self.last_seq.len() >= SEQ_CACHE_MAX {
            self.last_seq.clear();
        }
        let mut entry = self.last_seq.entry(conversation.to_string()).or_insert_with(|| last.clone());
        if entry.seq <= last.seq {
            *entry = last;
        }
    }

    /// The devices the message is pending for: the recipient's, or the
    /// recipient's user slot when it has none, and the sender's other devices.
    /// Marks the message pending for every device of the recipient and
    /// every other device of the sender (the recipient's user slot when
    /// they have none yet), and moves the conversation to `now_ms` in both
    /// members' lists (never back: `GT`). One script per user, both sent at
    /// once: one round trip (two slots on a Redis Cluster, asked in
    /// parallel). Returns the keys marked. A list entry whose insert then
    /// fails only shows the conversation's real last message a little early.
    async fn mark_pending(&self, new: &NewMessage, seq: u64, msg_id: &str, now_ms: u64) -> Result<Vec<String>> {
        let mark = |user: &str, leave_out: &str, user_slot: bool| {
            let mut conn = self.redis.clone();
            let (keys, prefix) =
                ([devices_key(&new.tenant, user), convs_key(&new.tenant, user)], pending_key(&new.tenant, user, ""));
            let slot = if user_slot { "1" } else { "0" };
            let args =
                [prefix, msg_id.to_string(), seq.to_string(), leave_out.to_string(), slot.into(), now_ms.to_string()];
            let conversation = new.conversation_id.clone();
            async move {
                let mut call = MARK_PENDING_SCRIPT.prepare_invoke();
                call.key(&keys[0]).key(&keys[1]);
                for a in &args {
                    call.arg(a);
                }
                call.arg(conversation).invoke_async::<Vec<String>>(&mut conn).await
            }
        };
        let to_self = new.to_user == new.from_user;
        let own = if to_self { new.from_device.as_str() } else { "" };
        let (recipient, sender) = tokio::join!(mark(&new.to_user, own, !to_self), async {
            if to_self { Ok(Vec::new()) } else { mark(&new.from_user, &new.from_device, false).await }
        });
        let mut keys = recipient.map_err(redis_err("mark pending"))?;
        keys.extend(sender.map_err(redis_err("mark pending"))?);
        Ok(keys)
    }

    /// The message of the conversation's append in doubt, if it was stored
    /// after all (then it was never pushed: the caller delivers it first).
    /// Errs while MongoDB cannot tell, so that no later message of the
    /// conversation goes out before it.
    async fn resolve_doubt(&self, conversation: &str) -> Result<Vec<Message>> {
        let Some(msg_id) = self.in_doubt.get(conversation).map(|v| v.clone()) else { return Ok(Vec::new()) };
        let found = self.messages_by_ids(std::slice::from_ref(&msg_id)).await?;
        self.in_doubt.remove_if(conversation, |_, v| *v == msg_id);
        if !found.is_empty() {
            metrics::counter!("dongdong_appends_recovered_total").increment(1);
        }
        Ok(found)
    }

    async fn unmark_pending(&self, keys: &[String], msg_id: &str) {
        let mut pipe = redis::pipe();
        for k in keys {
            pipe.cmd("ZREM").arg(k).arg(msg_id).ignore();
        }
        // Best effort: a mark left behind is an orphan that replay removes.
        let _ = pipe.query_async::<()>(&mut self.redis.clone()).await;
    }

    async fn messages_by_ids(&self, ids: &[String]) -> Result<Vec<Message>> {
        let cursor = self.messages.find(doc! { "_id": { "$in": ids } }).await.map_err(mongo_err("find"))?;
        let docs: Vec<Document> = cursor.try_collect().await.map_err(mongo_err("find"))?;
        docs.iter().map(decode).collect()
    }
}

async fn insert_loop(
    messages: Collection<Document>,
    write_concern: WriteConcern,
    mut rx: mpsc::Receiver<(Document, InsertReply)>,
    max_batch: usize,
) {
    let mut batch = Vec::with_capacity(max_batch);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let (docs, replies): (Vec<Document>, Vec<InsertReply>) = batch.drain(..).unzip();
        let size = docs.len();
        let result = messages.insert_many(docs).ordered(false).write_concern(write_concern.clone()).await;
        metrics::histogram!("dongdong_mongo_insert_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("dongdong_store_batch_size").record(size as f64);
        let mut outcomes: Vec<std::result::Result<(), InsertError>> = (0..size).map(|_| Ok(())).collect();
        if let Err(e) = result {
            metrics::counter!("dongdong_mongo_errors_total").increment(1);
            match *e.kind {
                mongodb::error::ErrorKind::InsertMany(ref failure) if failure.write_concern_error.is_none() => {
                    for w in failure.write_errors.iter().flatten() {
                        if let Some(slot) = outcomes.get_mut(w.index) {
                            *slot = Err(if w.code == 11000 {
                                InsertError::DuplicateKey
                            } else {
                                InsertError::Failed(StorageError::Unavailable(format!("mongodb insert: {}", w.message)))
                            });
                        }
                    }
                }
                _ => {
                    // Nothing is known to be durable: every caller retries; a
                    // retry finds an inserted document through `idempotency`.
                    for slot in outcomes.iter_mut() {
                        *slot = Err(InsertError::Failed(StorageError::Unavailable(format!("mongodb insert: {e}"))));
                    }
                }
            }
        }
        for (reply, outcome) in replies.into_iter().zip(outcomes) {
            let _ = reply.send(outcome);
        }
    }
}

fn encode(m: &Message, tenant: &str) -> Document {
    let content = m.content.as_ref().map(|c| c.encode_to_vec()).unwrap_or_default();
    doc! {
        "_id": &m.msg_id,
        "tenant": tenant,
        "conv": &m.conversation_id,
        "seq": m.seq as i64,
        "from": &m.from_user,
        "fromDevice": &m.from_device,
        "to": &m.to_user,
        "cmid": &m.client_msg_id,
        "ts": m.server_time_ms as i64,
        "content": Binary { subtype: BinarySubtype::Generic, bytes: content },
    }
}

pub(super) fn decode(d: &Document) -> Result<Message> {
    let bad = |field: &str| StorageError::Corrupt(format!("message document field {field}"));
    let s = |field: &'static str| d.get_str(field).map(str::to_string).map_err(|_| bad(field));
    let recalled_by = d.get_str("recalledBy").unwrap_or_default().to_string();
    let content = if recalled_by.is_empty() {
        let bytes = d.get_binary_generic("content").map_err(|_| bad("content"))?;
        Some(Content::decode(bytes.as_slice()).map_err(|_| bad("content"))?)
    } else {
        None
    };
    Ok(Message {
        msg_id: s("_id")?,
        conversation_id: s("conv")?,
        seq: d.get_i64("seq").map_err(|_| bad("seq"))? as u64,
        from_user: s("from")?,
        from_device: s("fromDevice")?,
        to_user: s("to")?,
        content,
        client_msg_id: s("cmid")?,
        server_time_ms: d.get_i64("ts").map_err(|_| bad("ts"))? as u64,
        recalled_ms: d.get_i64("recalledMs").unwrap_or(0) as u64,
        recalled_by,
    })
}

/// A pseudo-random number of microseconds below `max`, from the clock: only
/// used to de-synchronize retries.
fn rand_micros(max: u64) -> u64 {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    u64::from(nanos.wrapping_mul(2_654_435_761)) % max.max(1)
}

/// The creation time of a UUIDv7 msg_id, ms since the epoch.
fn msg_id_time_ms(msg_id: &str) -> Option<u64> {
    let hex: String = msg_id.chars().filter(|c| *c != '-').take(12).collect();
    u64::from_str_radix(&hex, 16).ok()
}

#[async_trait]
impl MessageStore for ClusterStore {
    async fn append(&self, new: NewMessage) -> Result<Appended> {
        let _timer = CallTimer::new("mongodb+redis", "append");
        // A node's appends of one conversation come one at a time (the
        // trait's contract: dispatch's conversation locks); what races is
        // another node, and the unique index settles it below.
        // No look-up first: the unique index `idempotency` rejects a repeated
        // client_msg_id at insert, which costs MongoDB one operation per send
        // instead of two.
        let recovered = self.resolve_doubt(&new.conversation_id).await?;
        let mut keys = Vec::new();
        let cached = self.last_seq.get(&new.conversation_id).map(|v| v.clone());
        let mut last = match cached {
            Some(s) => Some(s),
            None => self.read_last(&new.tenant, &new.conversation_id).await?,
        };
        let mut message = Message {
            msg_id: im_core::new_msg_id(),
            conversation_id: new.conversation_id.clone(),
            seq: 0,
            from_user: new.from_user.clone(),
            from_device: new.from_device.clone(),
            to_user: new.to_user.clone(),
            content: Some(new.content.clone()),
            client_msg_id: new.client_msg_id.clone(),
            server_time_ms: 0,
            recalled_by: String::new(),
            recalled_ms: 0,
        };
        let deadline = Instant::now() + SEQ_RACE_BUDGET;
        while Instant::now() < deadline {
            let last_seq = last.as_ref().map_or(0, |l| l.seq);
            message.seq = last_seq + 1;
            let ordinal =
                last.as_ref().map_or(0, |l| storage::sent_counts(l.seq, &l.from, l.ordinal, &new.from_user).0) + 1;
            message.server_time_ms = im_core::now_ms();
            keys = self.mark_pending(&new, message.seq, &message.msg_id, message.server_time_ms).await?;
            metrics::counter!("dongdong_pending_marked_total").increment(keys.len() as u64);
            let mut document = encode(&message, &new.tenant);
            document.insert("n", ordinal as i64);
            match self.insert(document).await {
                Ok(()) => {
                    let from = new.from_user.as_str().into();
                    self.remember_last(&new.conversation_id, LastMessage { seq: message.seq, from, ordinal });
                    return Ok(Appended { message, duplicate: false, recovered });
                }
                Err(InsertError::DuplicateKey) => {
                    if let Some(existing) = self.find_idempotent(&new).await? {
                        if existing.msg_id == message.msg_id {
                            // Our own insert, reported as a duplicate when the
                            // driver retried a write that had gone through:
                            // stored, with its marks, and not pushed yet.
                            metrics::counter!("dongdong_insert_retried_stored_total").increment(1);
                            let from = new.from_user.as_str().into();
                            self.remember_last(&new.conversation_id, LastMessage { seq: message.seq, from, ordinal });
                            return Ok(Appended { message: existing, duplicate: false, recovered });
                        }
                        self.unmark_pending(&keys, &message.msg_id).await;
                        let mut recovered = recovered;
                        // A retry soon after a send that failed with an
                        // unknown outcome but was stored: it may never have
                        // been pushed. Pushed again (devices dedupe by msg_id).
                        let age = im_core::now_ms().saturating_sub(existing.server_time_ms);
                        if age < ORPHAN_AGE.as_millis() as u64 && !recovered.iter().any(|m| m.msg_id == existing.msg_id)
                        {
                            recovered.push(existing.clone());
                        }
                        return Ok(Appended { message: existing, duplicate: true, recovered });
                    }
                    // Another node stored this seq first.
                    metrics::counter!("dongdong_seq_conflicts_total").increment(1);
                    // A short random pause lets the other node's burst pass.
                    tokio::time::sleep(Duration::from_micros(rand_micros(2_000))).await;
                    let read = self.read_last(&new.tenant, &new.conversation_id).await?;
                    // The stored last seq is at least the one just lost.
                    last = read.filter(|r| r.seq > last_seq).or(last);
                    if last.as_ref().map_or(0, |l| l.seq) == last_seq {
                        // Not visible yet: read it again after another pause.
                        continue;
                    }
                }
                Err(InsertError::Failed(e)) => {
                    // The insert may still land (MongoDB was slow, not
                    // down): its marks stay (an orphan is dropped by a later
                    // replay) and the next append looks it up.
                    self.in_doubt.insert(new.conversation_id.clone(), message.msg_id.clone());
                    self.last_seq.remove(&new.conversation_id);
                    return Err(e);
                }
            }
        }
        self.unmark_pending(&keys, &message.msg_id).await;
        Err(StorageError::Unavailable("too much contention for the conversation's next seq".into()))
    }

    async fn get(&self, tenant: &str, conversation_id: &str, seq: u64) -> Result<Option<Message>> {
        let _timer = CallTimer::new("mongodb", "get");
        let found = self
            .messages
            .find_one(doc! { "tenant": tenant, "conv": conversation_id, "seq": seq as i64 })
            .await
            .map_err(mongo_err("find"))?;
        found.map(|d| decode(&d)).transpose()
    }

    async fn conversation(&self, tenant: &str, conversation_id: &str) -> Result<Option<Conversation>> {
        let _timer = CallTimer::new("mongodb", "conversation");
        let Some(last) = self.last_document(tenant, conversation_id).await? else { return Ok(None) };
        let m = decode(&last)?;
        let mut members = [m.from_user, m.to_user];
        members.sort();
        Ok(Some(Conversation {
            tenant: tenant.to_string(),
            conversation_id: conversation_id.to_string(),
            members,
            last_seq: m.seq,
        }))
    }

    async fn history(&self, q: HistoryQuery) -> Result<HistoryPage> {
        let _timer = CallTimer::new("mongodb", "history");
        let limit = q.limit.max(1) as i64;
        let (filter, order) = if q.before_seq > 0 {
            let before = q.before_seq.min(i64::MAX as u64) as i64;
            (doc! { "tenant": &q.tenant, "conv": &q.conversation_id, "seq": { "$lt": before } }, -1)
        } else {
            let after = q.after_seq.min(i64::MAX as u64) as i64;
            (doc! { "tenant": &q.tenant, "conv": &q.conversation_id, "seq": { "$gt": after } }, 1)
        };
        let cursor =
            self.messages.find(filter).sort(doc! { "seq": order }).limit(limit + 1).await.map_err(mongo_err("find"))?;
        let docs: Vec<Document> = cursor.try_collect().await.map_err(mongo_err("find"))?;
        let has_more = docs.len() as i64 > limit;
        let mut messages = docs.iter().take(limit as usize).map(decode).collect::<Result<Vec<_>>>()?;
        if order < 0 {
            messages.reverse();
        }
        Ok(HistoryPage { messages, has_more })
    }

    async fn get_by_id(&self, tenant: &str, msg_id: &str) -> Result<Option<Message>> {
        self.get_by_id_impl(tenant, msg_id).await
    }

    async fn mark_read(&self, read: MarkRead) -> Result<MarkOutcome> {
        self.mark_read_impl(read).await
    }

    async fn conversations(
        &self,
        tenant: &str,
        user: &str,
        after: Option<&ConversationCursor>,
        limit: usize,
    ) -> Result<ConversationsPage> {
        self.conversations_impl(tenant, user, after, limit).await
    }

    async fn recall(&self, tenant: &str, msg_id: &str, by: &DeviceKey) -> Result<Option<RecallOutcome>> {
        self.recall_impl(tenant, msg_id, by).await
    }
}

/// Returns a page of a device's pending set after a cursor, as
/// [msg_id, score, msg_id, score, ...]. The set is ordered by (seq, msg_id).
const PENDING_PAGE: &str = include_str!("lua/pending-page.lua");

/// See the script's header and [`ClusterStore::mark_pending`].
static MARK_PENDING_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(include_str!("lua/mark-pending.lua")));

/// Registers a device; a user's first device takes over the user slot; past
/// the limit the least recently seen device is forgotten with its pending set.
/// KEYS: devices hash, the device's pending set, the user slot's pending set.
/// ARGV: device, now ms, max devices, pending key prefix, the two event key
/// prefixes. Returns
/// {new (0/1), claimed, evicted device or ''}.
const REGISTER_DEVICE: &str = include_str!("lua/register-device.lua");

#[async_trait]
impl PendingStore for ClusterStore {
    async fn pending(&self, device: &DeviceKey, after: Option<&PendingCursor>, limit: usize) -> Result<Vec<Message>> {
        let _timer = CallTimer::new("mongodb+redis", "pending");
        let key = pending_key(&device.tenant, &device.user, &device.device);
        let (seq, msg_id) = match after {
            Some(c) => (c.seq.to_string(), c.msg_id.clone()),
            None => (String::new(), String::new()),
        };
        let mut conn = self.redis.clone();
        let page: Vec<(String, u64)> = redis::Script::new(PENDING_PAGE)
            .key(&key)
            .arg(seq)
            .arg(msg_id)
            .arg(limit.max(1))
            .invoke_async(&mut conn)
            .await
            .map_err(redis_err("pending page"))?;
        if page.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = page.iter().map(|(id, _)| id.clone()).collect();
        let mut found: std::collections::HashMap<String, Message> =
            self.messages_by_ids(&ids).await?.into_iter().map(|m| (m.msg_id.clone(), m)).collect();
        let now = im_core::now_ms();
        let mut out = Vec::with_capacity(page.len());
        let mut orphans = Vec::new();
        for (id, score) in page {
            match found.remove(&id) {
                // Marked at a seq its append then lost to another node and
                // stored at a later one meanwhile: it is being marked again
                // at its real seq, and comes later in the set (or live).
                Some(m) if m.seq != score => {}
                Some(m) => out.push(m),
                None if msg_id_time_ms(&id).is_some_and(|t| t + ORPHAN_AGE.as_millis() as u64 <= now) => {
                    orphans.push(id)
                }
                // Possibly still being inserted: leave it for the live push.
                None => {}
            }
        }
        if !orphans.is_empty() {
            tracing::info!(count = orphans.len(), "removing pending marks of messages that were never stored");
            let _: std::result::Result<(), _> = redis::cmd("ZREM").arg(&key).arg(&orphans).query_async(&mut conn).await;
        }
        Ok(out)
    }

    async fn pending_between(
        &self,
        device: &DeviceKey,
        conversation_id: &str,
        after_seq: u64,
        before_seq: u64,
        limit: usize,
    ) -> Result<Vec<Message>> {
        let _timer = CallTimer::new("mongodb+redis", "pending_between");
        if before_seq <= after_seq + 1 || limit == 0 {
            return Ok(Vec::new());
        }
        // The set is scored by seq across conversations: the ids in the
        // range are read a page at a time and MongoDB keeps the conversation's.
        let key = pending_key(&device.tenant, &device.user, &device.device);
        let mut conn = self.redis.clone();
        // One read (paging by offset could skip an id acked between pages).
        let ids: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(&key)
            .arg(format!("({after_seq}"))
            .arg(format!("({before_seq}"))
            .arg("LIMIT")
            .arg(0)
            .arg(GAP_SCAN_MAX + 1)
            .query_async(&mut conn)
            .await
            .map_err(redis_err("ZRANGEBYSCORE"))?;
        if ids.len() > GAP_SCAN_MAX {
            return Err(StorageError::Unavailable(format!(
                "more than {GAP_SCAN_MAX} messages pending for the device in the seq range"
            )));
        }
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let filter = doc! { "_id": { "$in": ids }, "conv": conversation_id, "tenant": &device.tenant };
        let cursor = self
            .messages
            .find(filter)
            .sort(doc! { "seq": 1 })
            .limit(limit.min(i64::MAX as usize) as i64)
            .await
            .map_err(mongo_err("find"))?;
        let docs: Vec<Document> = cursor.try_collect().await.map_err(mongo_err("find"))?;
        docs.iter().map(decode).collect()
    }

    async fn pending_count(&self, device: &DeviceKey) -> Result<u64> {
        let _timer = CallTimer::new("redis", "pending_count");
        let key = pending_key(&device.tenant, &device.user, &device.device);
        redis::cmd("ZCARD").arg(key).query_async(&mut self.redis.clone()).await.map_err(redis_err("ZCARD"))
    }

    async fn ack(&self, device: &DeviceKey, msg_ids: &[String]) -> Result<usize> {
        let _timer = CallTimer::new("redis", "ack");
        if msg_ids.is_empty() {
            return Ok(0);
        }
        let key = pending_key(&device.tenant, &device.user, &device.device);
        redis::cmd("ZREM").arg(key).arg(msg_ids).query_async(&mut self.redis.clone()).await.map_err(redis_err("ZREM"))
    }

    async fn pending_events(&self, device: &DeviceKey, after: Option<&str>, limit: usize) -> Result<Vec<PendingEvent>> {
        self.pending_events_impl(device, after, limit).await
    }

    async fn ack_events(&self, acks: &[(Arc<DeviceKey>, Vec<String>)]) -> Result<usize> {
        self.ack_events_impl(acks).await
    }

    /// One pipeline of `ZREM`s: one round trip for the whole batch.
    async fn ack_batch(&self, acks: &[(Arc<DeviceKey>, Vec<String>)]) -> Result<usize> {
        let _timer = CallTimer::new("redis", "ack_batch");
        let mut pipe = redis::pipe();
        for (device, ids) in acks.iter().filter(|(_, ids)| !ids.is_empty()) {
            pipe.cmd("ZREM").arg(pending_key(&device.tenant, &device.user, &device.device)).arg(ids);
        }
        if pipe.is_empty() {
            return Ok(0);
        }
        let removed: Vec<usize> = pipe.query_async(&mut self.redis.clone()).await.map_err(redis_err("ZREM"))?;
        Ok(removed.into_iter().sum())
    }
}

#[async_trait]
impl storage::HealthCheck for ClusterStore {
    async fn check(&self) -> Vec<(&'static str, std::result::Result<(), String>)> {
        let mut conn = self.redis.clone();
        let redis = redis::cmd("PING").query_async::<String>(&mut conn).await.map(drop).map_err(|e| e.to_string());
        let db = self.messages.client().database(self.messages.namespace().db.as_str());
        let mongo = db.run_command(doc! { "ping": 1 }).await.map(drop).map_err(|e| e.to_string());
        vec![("redis", redis), ("mongodb", mongo)]
    }
}

#[async_trait]
impl DeviceRegistry for ClusterStore {
    async fn register_device(&self, device: &DeviceKey) -> Result<DeviceRegistration> {
        let _timer = CallTimer::new("redis", "register_device");
        let prefix = pending_key(&device.tenant, &device.user, "");
        let (new, claimed, evicted): (u8, u64, String) = redis::Script::new(REGISTER_DEVICE)
            .key(devices_key(&device.tenant, &device.user))
            .key(pending_key(&device.tenant, &device.user, &device.device))
            .key(&prefix)
            .arg(&device.device)
            .arg(im_core::now_ms())
            .arg(self.max_devices)
            .arg(&prefix)
            .arg(events_keys(&device.tenant, &device.user, "").0)
            .arg(events_keys(&device.tenant, &device.user, "").1)
            .invoke_async(&mut self.redis.clone())
            .await
            .map_err(redis_err("register device"))?;
        Ok(DeviceRegistration { new_device: new == 1, claimed, evicted: (!evicted.is_empty()).then_some(evicted) })
    }
}
