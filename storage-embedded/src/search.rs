//! The embedded backend's search index: a tantivy index in `search/` of the
//! data directory, fed from the `msg_index` table in id order (ids are
//! UUIDv7s made by the single writer, so a later append has a larger id
//! and redb, applied in log order, only ever holds a prefix of them).
//!
//! Why tantivy: it is the kept, embeddable inverted index for Rust
//! (segments, merges, phrase queries on positions, fast fields to sort by),
//! so what is ours stays small: the tokens (`search::analyze`, registered
//! as the body field's tokenizer) and the feed. Each commit carries the feed
//! position as its payload, so a crash loses no entries: the index holds
//! exactly what it committed, and indexing resumes after that position.

use crate::errors::{corrupt, unavailable};
use crate::keys::Reader;
use crate::records::{decode_conversation, decode_message, message_key};
use crate::store::EmbeddedStore;
use crate::tables::{CONVERSATIONS, MESSAGES, MSG_INDEX};
use async_trait::async_trait;
use redb::ReadableDatabase;
use std::collections::HashMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex};
use storage::search::{FeedItem, FeedPage, IndexHit, IndexQuery, SearchDoc, SearchScope, order_key};
use storage::{Result, SearchIndex, StorageError};
use tantivy::collector::TopDocs;
use tantivy::query::{AllQuery, BooleanQuery, Occur, PhraseQuery, Query, RangeQuery, TermQuery};
use tantivy::schema::{
    FAST, Field, INDEXED, IndexRecordOption, STORED, STRING, Schema, TextFieldIndexing, TextOptions, Value,
};
use tantivy::tokenizer::{Token, TokenStream, Tokenizer};
use tantivy::{Index, IndexReader, IndexWriter, Order, ReloadPolicy, TantivyDocument, Term};

/// The tokenizer of the body field: `search::tokens`, as tantivy asks.
#[derive(Clone, Default)]
struct Terms;

/// The tokens of one text, walked by tantivy.
struct Tokens {
    tokens: std::vec::IntoIter<search::Token>,
    current: Token,
}

impl TokenStream for Tokens {
    fn advance(&mut self) -> bool {
        let Some(t) = self.tokens.next() else { return false };
        self.current.offset_from = t.start;
        self.current.offset_to = t.end;
        self.current.position = t.position as usize;
        self.current.text = t.term;
        true
    }

    fn token(&self) -> &Token {
        &self.current
    }

    fn token_mut(&mut self) -> &mut Token {
        &mut self.current
    }
}

impl Tokenizer for Terms {
    type TokenStream<'a> = Tokens;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> Tokens {
        Tokens { tokens: search::tokens(text).into_iter(), current: Token::default() }
    }
}

/// The body field's tokenizer, by the name the schema gives it.
const TOKENIZER: &str = "dongdong";

/// The indexing buffer: tantivy's smallest (it flushes a segment when full).
const WRITER_BYTES: usize = 15_000_000;

#[derive(Clone, Copy)]
struct Fields {
    msg_id: Field,
    tenant: Field,
    member: Field,
    conversation: Field,
    from: Field,
    kind: Field,
    session: Field,
    group: Field,
    ts: Field,
    seq: Field,
    /// The msg_id's high and low 64 bits: the newest-first order.
    hi: Field,
    lo: Field,
    body: Field,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let body = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(TOKENIZER)
            .set_index_option(IndexRecordOption::WithFreqsAndPositions),
    );
    let fields = Fields {
        msg_id: b.add_text_field("msg_id", STRING | STORED),
        tenant: b.add_text_field("tenant", STRING),
        member: b.add_text_field("member", STRING),
        conversation: b.add_text_field("conversation", STRING | STORED),
        from: b.add_text_field("from", STRING),
        kind: b.add_text_field("kind", STRING),
        session: b.add_text_field("session", STRING | STORED),
        group: b.add_text_field("group", STRING),
        ts: b.add_u64_field("ts", INDEXED | FAST),
        seq: b.add_u64_field("seq", STORED),
        hi: b.add_u64_field("hi", INDEXED | FAST),
        lo: b.add_u64_field("lo", INDEXED | FAST),
        body: b.add_text_field("body", body),
    };
    (b.build(), fields)
}

/// The search index of an [`EmbeddedStore`].
pub struct EmbeddedSearch {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<EmbeddedStore>,
    fields: Fields,
    /// Where every write runs (see [`Background`]).
    background: Background,
    writer: Mutex<IndexWriter>,
    reader: IndexReader,
    /// The feed position of the last commit (its payload).
    position: Mutex<Option<String>>,
}

fn failed(e: impl std::fmt::Display) -> StorageError {
    StorageError::Unavailable(format!("search index: {e}"))
}

impl EmbeddedSearch {
    /// Opens the index in `dir`, creating it; an index this version cannot
    /// read (another schema) is deleted and rebuilt from the feed.
    pub fn open(store: Arc<EmbeddedStore>, dir: &Path) -> Result<Arc<Self>> {
        let (schema, fields) = schema();
        std::fs::create_dir_all(dir).map_err(failed)?;
        let index = match Index::open_in_dir(dir) {
            Ok(index) if index.schema() == schema => index,
            Ok(_) | Err(tantivy::TantivyError::IncompatibleIndex(_)) | Err(tantivy::TantivyError::SchemaError(_)) => {
                tracing::warn!(dir = %dir.display(), "search index has another format; rebuilding it");
                std::fs::remove_dir_all(dir).map_err(failed)?;
                std::fs::create_dir_all(dir).map_err(failed)?;
                Index::create_in_dir(dir, schema).map_err(failed)?
            }
            Err(tantivy::TantivyError::OpenDirectoryError(_)) | Err(tantivy::TantivyError::OpenReadError(_)) => {
                Index::create_in_dir(dir, schema).map_err(failed)?
            }
            Err(e) => return Err(failed(e)),
        };
        index.tokenizers().register(TOKENIZER, Terms);
        let background = Background::start()?;
        // Made there, so that tantivy's threads start at its priority.
        let for_writer = index.clone();
        let writer = background.run_now(move || for_writer.writer_with_num_threads(1, WRITER_BYTES).map_err(failed))?;
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into().map_err(failed)?;
        let position = Mutex::new(index.load_metas().map_err(failed)?.payload.filter(|p| !p.is_empty()));
        let inner = Inner { store, fields, background, writer: Mutex::new(writer), reader, position };
        Ok(Arc::new(Self { inner: Arc::new(inner) }))
    }
}

/// A lock of the index, or `Unavailable` when a panic poisoned it.
fn locked<'a, T>(lock: &'a Mutex<T>, what: &str) -> Result<std::sync::MutexGuard<'a, T>> {
    lock.lock().map_err(|_| failed(format!("the {what} lock is poisoned")))
}

impl Inner {
    fn document(&self, doc: SearchDoc) -> TantivyDocument {
        let f = &self.fields;
        let key = order_key(&doc.msg_id);
        let mut d = TantivyDocument::default();
        d.add_text(f.msg_id, &doc.msg_id);
        d.add_text(f.tenant, &doc.tenant);
        for m in &doc.members {
            d.add_text(f.member, m);
        }
        d.add_text(f.conversation, &doc.conversation_id);
        d.add_text(f.from, &doc.from_user);
        d.add_text(f.kind, doc.kind);
        if !doc.session_id.is_empty() {
            d.add_text(f.session, &doc.session_id);
            d.add_text(f.group, &doc.group);
        }
        d.add_u64(f.ts, doc.server_time_ms);
        d.add_u64(f.seq, doc.seq);
        d.add_u64(f.hi, (key >> 64) as u64);
        d.add_u64(f.lo, key as u64);
        d.add_text(f.body, &doc.text);
        d
    }

    fn term(&self, field: Field, value: &str) -> Box<dyn Query> {
        Box::new(TermQuery::new(Term::from_field_text(field, value), IndexRecordOption::Basic))
    }

    fn query(&self, q: &IndexQuery) -> Box<dyn Query> {
        let f = &self.fields;
        let mut must: Vec<Box<dyn Query>> = vec![self.term(f.tenant, &q.tenant)];
        if let SearchScope::Member { user, groups } = &q.scope {
            let mut any = vec![(Occur::Should, self.term(f.member, user))];
            any.extend(groups.iter().map(|g| (Occur::Should, self.term(f.group, g))));
            must.push(Box::new(BooleanQuery::new(any)));
        }
        for clause in &q.clauses {
            let terms: Vec<(usize, Term)> =
                clause.terms.iter().map(|(t, o)| (*o as usize, Term::from_field_text(f.body, t))).collect();
            must.push(match terms.len() {
                1 => Box::new(TermQuery::new(terms[0].1.clone(), IndexRecordOption::WithFreqs)),
                _ => Box::new(PhraseQuery::new_with_offset(terms)),
            });
        }
        let exact = [
            (f.conversation, &q.conversation_id),
            (f.from, &q.from_user),
            (f.member, &q.with_user),
            (f.session, &q.session_id),
            (f.group, &q.group),
        ];
        for (field, value) in exact {
            if let Some(v) = value {
                must.push(self.term(field, v));
            }
        }
        if !q.kinds.is_empty() {
            must.push(Box::new(BooleanQuery::new(
                q.kinds.iter().map(|k| (Occur::Should, self.term(f.kind, k))).collect(),
            )));
        }
        if q.since_ms > 0 || q.until_ms > 0 {
            let lo = Bound::Included(Term::from_field_u64(f.ts, q.since_ms));
            let hi = match q.until_ms {
                0 => Bound::Unbounded,
                until => Bound::Excluded(Term::from_field_u64(f.ts, until)),
            };
            must.push(Box::new(RangeQuery::new(lo, hi)));
        }
        if let Some(before) = q.before {
            let (hi, lo) = ((before.key >> 64) as u64, before.key as u64);
            let below = |field: Field, v: u64| -> Box<dyn Query> {
                Box::new(RangeQuery::new(Bound::Unbounded, Bound::Excluded(Term::from_field_u64(field, v))))
            };
            let same_hi = Box::new(BooleanQuery::intersection(vec![
                Box::new(TermQuery::new(Term::from_field_u64(f.hi, hi), IndexRecordOption::Basic)),
                below(f.lo, lo),
            ]));
            must.push(Box::new(BooleanQuery::new(vec![(Occur::Should, below(f.hi, hi)), (Occur::Should, same_hi)])));
        }
        if must.is_empty() {
            return Box::new(AllQuery);
        }
        Box::new(BooleanQuery::intersection(must))
    }

    fn candidates_now(&self, q: &IndexQuery) -> Result<Vec<IndexHit>> {
        let searcher = self.reader.searcher();
        let f = self.fields;
        let order = TopDocs::with_limit(q.limit.max(1)).order_by((
            (tantivy::collector::sort_key::SortByStaticFastValue::<u64>::for_field("hi"), Order::Desc),
            (tantivy::collector::sort_key::SortByStaticFastValue::<u64>::for_field("lo"), Order::Desc),
        ));
        let found = searcher.search(&*self.query(q), &order).map_err(failed)?;
        let mut hits = Vec::with_capacity(found.len());
        for (_, address) in found {
            let doc: TantivyDocument = searcher.doc(address).map_err(failed)?;
            let text = |field| doc.get_first(field).and_then(|v| v.as_str()).map(str::to_string);
            let (Some(msg_id), Some(conversation_id)) = (text(f.msg_id), text(f.conversation)) else {
                return Err(corrupt("a search entry without its ids"));
            };
            let seq = doc.get_first(f.seq).and_then(|v| v.as_u64()).unwrap_or(0);
            let session_id = text(f.session).unwrap_or_default();
            hits.push(IndexHit { msg_id, conversation_id, seq, session_id });
        }
        Ok(hits)
    }

    fn feed_now(&self, db: &redb::Database, after: Option<&str>, limit: usize) -> Result<FeedPage> {
        let txn = db.begin_read().map_err(unavailable)?;
        let index = txn.open_table(MSG_INDEX).map_err(unavailable)?;
        let messages = txn.open_table(MESSAGES).map_err(unavailable)?;
        let conversations = txn.open_table(CONVERSATIONS).map_err(unavailable)?;
        let range = match after {
            Some(a) => index.range::<&str>((Bound::Excluded(a), Bound::Unbounded)),
            None => index.range::<&str>(..),
        }
        .map_err(unavailable)?;
        let mut items = Vec::new();
        let mut members: HashMap<String, (String, [String; 2])> = HashMap::new();
        let mut next = after.map(str::to_string);
        for entry in range.take(limit) {
            let (id, pos) = entry.map_err(unavailable)?;
            next = Some(id.value().to_string());
            let pos = pos.value().to_vec();
            let mut r = Reader::new(&pos);
            let (Some(conv), Some(seq)) = (r.s(), r.n()) else { return Err(corrupt("message index record")) };
            if !members.contains_key(conv) {
                let Some(record) = conversations.get(conv).map_err(unavailable)? else {
                    return Err(corrupt("a message without its conversation"));
                };
                let c = decode_conversation(conv, record.value(), 0)?;
                members.insert(conv.to_string(), (c.tenant, c.members));
            }
            let Some(record) = messages.get(message_key(conv, seq).as_slice()).map_err(unavailable)? else {
                continue;
            };
            let (tenant, members) = members[conv].clone();
            items.push(FeedItem { tenant, members, message: decode_message(record.value())? });
        }
        Ok(FeedPage { items, next })
    }
}

#[async_trait]
impl SearchIndex for EmbeddedSearch {
    async fn feed(&self, after: Option<&str>, limit: usize) -> Result<FeedPage> {
        let this = self.inner.clone();
        let after = after.map(str::to_string);
        self.inner.store.read_db(move |db| this.feed_now(db, after.as_deref(), limit)).await
    }

    async fn position(&self) -> Result<Option<String>> {
        Ok(locked(&self.inner.position, "position")?.clone())
    }

    async fn apply(
        &self,
        docs: Vec<SearchDoc>,
        removed: Vec<(String, String)>,
        position: Option<String>,
    ) -> Result<()> {
        let this = self.inner.clone();
        self.inner
            .background
            .run(move || {
                let mut writer = locked(&this.writer, "writer")?;
                for (_, msg_id) in &removed {
                    writer.delete_term(Term::from_field_text(this.fields.msg_id, msg_id));
                }
                // No delete before each add: the position commits with the
                // entries, so the feed never hands a message over twice (a
                // delete per entry made every commit look up each id in every
                // segment).
                for doc in docs {
                    writer.add_document(this.document(doc)).map_err(failed)?;
                }
                let mut current = locked(&this.position, "position")?;
                let position = position.or_else(|| current.clone());
                let mut commit = writer.prepare_commit().map_err(failed)?;
                commit.set_payload(position.as_deref().unwrap_or(""));
                commit.commit().map_err(failed)?;
                *current = position;
                this.reader.reload().map_err(failed)
            })
            .await
    }

    async fn candidates(&self, query: &IndexQuery) -> Result<Vec<IndexHit>> {
        let this = self.inner.clone();
        let query = query.clone();
        blocking(move || this.candidates_now(&query)).await
    }

    async fn clear(&self) -> Result<()> {
        let this = self.inner.clone();
        self.inner
            .background
            .run(move || {
                let mut writer = locked(&this.writer, "writer")?;
                writer.delete_all_documents().map_err(failed)?;
                let mut commit = writer.prepare_commit().map_err(failed)?;
                commit.set_payload("");
                commit.commit().map_err(failed)?;
                *locked(&this.position, "position")? = None;
                this.reader.reload().map_err(failed)
            })
            .await
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| failed(format!("task failed: {e}")))?
}

/// The CPU priority of the index's writes: the lowest (nice 19, Linux).
const WRITER_NICE: i32 = 19;

type Job = Box<dyn FnOnce() + Send>;

/// A thread of the index's own for its writes (adding, deleting,
/// committing), at the lowest CPU priority; the threads tantivy starts from
/// it (indexing, merging, compressing the store) inherit that priority. So
/// indexing takes the CPU the send path leaves and never the send path's:
/// on a busy machine the index lags, messages do not. Queries run at
/// normal priority on the blocking pool.
struct Background {
    jobs: std::sync::mpsc::Sender<Job>,
}

impl Background {
    fn start() -> Result<Self> {
        let (jobs, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("dd-search-writer".into())
            .spawn(move || {
                lower_priority();
                while let Ok(job) = rx.recv() {
                    // A panic fails its job (its answer is dropped), not the thread.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            })
            .map_err(failed)?;
        Ok(Self { jobs })
    }

    fn send<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
        answer: impl FnOnce(Result<T>) + Send + 'static,
    ) -> Result<()> {
        self.jobs.send(Box::new(move || answer(f()))).map_err(|_| failed("the writer thread is gone"))
    }

    /// Runs `f` there, blocking until it is done (opening).
    fn run_now<T: Send + 'static>(&self, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.send(f, move |r| drop(tx.send(r)))?;
        rx.recv().map_err(|_| failed("a write failed"))?
    }

    async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(f, move |r| drop(tx.send(r)))?;
        rx.await.map_err(|_| failed("a write failed"))?
    }
}

/// Linux keeps a nice value per thread: this thread's, and so that of the
/// threads it starts. Elsewhere the writes run at normal priority.
#[cfg(target_os = "linux")]
fn lower_priority() {
    let me = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(me), WRITER_NICE) {
        tracing::warn!(error = %e, "search index: could not lower the writer thread's priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}
