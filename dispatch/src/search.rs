//! Message search: who may read what, the indexer that feeds the backend's
//! [`SearchIndex`] from its store after messages were acknowledged, and
//! the query that checks every candidate against the message as stored now.
//!
//! The indexer runs on its own task: it reads the store's feed after the
//! position the index committed last, tags each customer-service message
//! with its session and group, and commits the entries with the new
//! position in one step (so a crash loses nothing and indexes nothing
//! twice). A send never waits for it.

use super::{Dispatcher, Result, invalid};
use ::search as text;
use im_core::ids::{validate_conversation_id, validate_id};
use im_core::pb::{self, Message};
use im_core::{ClientError, ErrorCode, Role};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use storage::search::FeedItem;
use storage::search::{IndexQuery, SearchCursor, SearchDoc, SearchScope, searchable};
use storage::{Backends, DeviceKey};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

/// Results per page when the client asks for 0, and the most.
pub const PAGE_DEFAULT: usize = 20;
pub const PAGE_MAX: usize = 50;
/// Messages read from the feed per call, and calls per commit at most.
const FEED_PAGE: usize = 2000;
const STEP_PAGES: usize = 10;
/// Candidates examined for one page, at most (then the page ends early,
/// with a cursor to go on).
const MAX_EXAMINED: usize = 1000;
/// Removals waiting for the indexer; more are left to the query's check.
const REMOVALS_QUEUE: usize = 4096;

/// The `[search]` settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SearchConfig {
    /// Index messages for search. Off: searches answer UNAVAILABLE and the
    /// index is left as it is (turning it on again catches up).
    pub enabled: bool,
    /// Shortest time between two index commits: each makes new messages
    /// searchable and costs a sync, so under load one commit takes many.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
}

impl Default for SearchConfig {
    fn default() -> Self {
        Self { enabled: true, commit_interval: Duration::from_millis(200) }
    }
}

impl SearchConfig {
    pub fn validate(&self) -> Result<(), im_core::InvalidSetting> {
        if self.commit_interval > Duration::from_secs(60) {
            return Err(im_core::InvalidSetting::new("search.commit_interval", "must be at most 60s"));
        }
        Ok(())
    }
}

/// The indexer's handle: wakes it after appends, hands it removals.
pub struct Indexer {
    wake: Notify,
    removals: mpsc::Sender<(String, String)>,
}

impl Indexer {
    /// Starts indexing `backends`' feed until `shutdown`.
    pub fn start(backends: Backends, config: SearchConfig, shutdown: CancellationToken) -> Arc<Self> {
        let (removals, rx) = mpsc::channel(REMOVALS_QUEUE);
        let indexer = Arc::new(Self { wake: Notify::new(), removals });
        tokio::spawn(run(indexer.clone(), backends, config, rx, shutdown));
        indexer
    }

    /// New messages are in the store.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// `msg_id` must leave the index (recalled, or found stale by a query).
    pub fn remove(&self, tenant: &str, msg_id: &str) {
        if self.removals.try_send((tenant.to_string(), msg_id.to_string())).is_ok() {
            self.wake();
        }
    }
}

async fn run(
    indexer: Arc<Indexer>,
    backends: Backends,
    config: SearchConfig,
    mut removals: mpsc::Receiver<(String, String)>,
    shutdown: CancellationToken,
) {
    let mut failures = 0u32;
    let mut agents = AgentCache::default();
    loop {
        let started = tokio::time::Instant::now();
        let more = match index_step(&backends, &mut removals, &mut agents).await {
            Ok(step) => {
                failures = 0;
                step.more
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::warn!(error = %e, "search indexing failed; retrying");
                metrics::counter!("dongdong_search_index_errors_total").increment(1);
                false
            }
        };
        // A full page goes on at once (after the commit interval); else
        // wait for news. Failures back off up to 10 s.
        let pause = config.commit_interval.saturating_sub(started.elapsed());
        let backoff = Duration::from_millis(100u64 << failures.min(7)).min(Duration::from_secs(10));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(if failures > 0 { backoff } else { pause }) => {}
        }
        if !more && failures == 0 {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = indexer.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

/// What one indexing step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Messages indexed.
    pub indexed: u64,
    /// The feed position moved.
    pub moved: bool,
    /// The feed had a full page: more is waiting.
    pub more: bool,
}

/// Forgets the index and indexes every stored message again (`dongdong
/// reindex`); `progress` hears the running count. Returns how many were
/// indexed here. In a cluster, a running node holding the indexing lease
/// does the rebuild instead (this returns 0 then).
pub async fn rebuild(backends: &Backends, mut progress: impl FnMut(u64)) -> storage::Result<u64> {
    backends.search.clear().await?;
    let (_keep, mut removals) = mpsc::channel(1);
    let mut agents = AgentCache::default();
    let mut total = 0;
    loop {
        let step = index_step(backends, &mut removals, &mut agents).await?;
        total += step.indexed;
        progress(total);
        if !step.moved {
            return Ok(total);
        }
    }
}

/// Indexes one page of the feed and the removals waiting.
async fn index_step(
    backends: &Backends,
    removals: &mut mpsc::Receiver<(String, String)>,
    agents: &mut AgentCache,
) -> storage::Result<Step> {
    // Read each time: in a cluster another node may have indexed meanwhile.
    let position = backends.search.position().await?;
    // Up to STEP_PAGES pages go into one commit: a commit costs the same
    // for ten messages as for thousands, so the pace is set by the commit
    // interval, never by the page size.
    let mut next = position.clone();
    let mut more = false;
    let mut tags = SessionTags::new(backends, agents);
    let mut docs = Vec::new();
    for _ in 0..STEP_PAGES {
        let page = backends.search.feed(next.as_deref(), FEED_PAGE).await?;
        more = page.items.len() == FEED_PAGE;
        next = page.next;
        for item in page.items {
            if !item.message.recalled_by.is_empty() {
                continue;
            }
            let (session_id, group) = tags.of(&item).await;
            if let Some(doc) = SearchDoc::of(item, session_id, group) {
                docs.push(doc);
            }
        }
        if !more {
            break;
        }
    }
    let mut removed = Vec::new();
    while let Ok(r) = removals.try_recv() {
        removed.push(r);
    }
    let moved = next != position;
    if !moved && removed.is_empty() {
        return Ok(Step { indexed: 0, moved, more: false });
    }
    let count = docs.len() as u64;
    let times: Vec<u64> = docs.iter().map(|d| d.server_time_ms).collect();
    backends.search.apply(docs, removed, next).await?;
    metrics::counter!("dongdong_search_indexed_total").increment(count);
    // Each message's time from its append to being searchable.
    let now = im_core::now_ms();
    let lag = metrics::histogram!("dongdong_search_index_lag_seconds");
    for t in times {
        lag.record(now.saturating_sub(t) as f64 / 1000.0);
    }
    Ok(Step { indexed: count, moved, more })
}

/// Who is an agent, remembered for a while across indexing steps (a user
/// made an agent is seen as one within [`AGENTS_FOR`]).
#[derive(Default)]
struct AgentCache {
    known: HashMap<(String, String), bool>,
    since: Option<tokio::time::Instant>,
}

const AGENTS_FOR: Duration = Duration::from_secs(10);
/// Users remembered at most (then forgotten all at once).
const AGENTS_MAX: usize = 100_000;

/// Finds the customer-service session a message was part of: a
/// conversation between an agent and a customer, during one of the
/// customer's sessions that had that conversation. Remembers the
/// customers' sessions for one step.
struct SessionTags<'a> {
    backends: &'a Backends,
    agents: &'a mut AgentCache,
    sessions: HashMap<(String, String), Vec<storage::cs::Session>>,
}

impl<'a> SessionTags<'a> {
    fn new(backends: &'a Backends, agents: &'a mut AgentCache) -> Self {
        if agents.since.is_none_or(|t| t.elapsed() > AGENTS_FOR) || agents.known.len() > AGENTS_MAX {
            agents.known.clear();
            agents.since = Some(tokio::time::Instant::now());
        }
        Self { backends, agents, sessions: HashMap::new() }
    }

    async fn is_agent(&mut self, tenant: &str, user: &str) -> bool {
        let key = (tenant.to_string(), user.to_string());
        if let Some(known) = self.agents.known.get(&key) {
            return *known;
        }
        let agent = matches!(self.backends.cs.agent(tenant, user).await, Ok(Some(_)));
        self.agents.known.insert(key, agent);
        agent
    }

    async fn of(&mut self, item: &FeedItem) -> (String, String) {
        let [a, b] = &item.members;
        let customer = match (self.is_agent(&item.tenant, a).await, self.is_agent(&item.tenant, b).await) {
            (true, false) => b,
            (false, true) => a,
            _ => return Default::default(),
        };
        let key = (item.tenant.clone(), customer.clone());
        if !self.sessions.contains_key(&key) {
            let cs = &self.backends.cs;
            let mut sessions = cs.user_sessions(&item.tenant, customer).await.unwrap_or_default();
            sessions.extend(cs.past_sessions(&item.tenant, customer, 0, 100).await.unwrap_or_default());
            self.sessions.insert(key.clone(), sessions);
        }
        let (m, conv) = (&item.message, &item.message.conversation_id);
        let during = |s: &&storage::cs::Session| {
            s.conversations.contains(conv)
                && s.created_ms <= m.server_time_ms
                && (s.ended_ms == 0 || m.server_time_ms <= s.ended_ms)
        };
        match self.sessions[&key].iter().find(during) {
            Some(s) => (s.id.clone(), s.group.clone()),
            None => Default::default(),
        }
    }
}

impl Dispatcher {
    /// Indexes messages for search from now on (see [`Indexer`]).
    pub fn start_indexer(&self, config: SearchConfig, shutdown: CancellationToken) {
        if config.enabled {
            let _ = self.indexer.set(Indexer::start(self.backends.clone(), config, shutdown));
        }
    }

    pub(crate) fn indexer(&self) -> Option<&Indexer> {
        self.indexer.get().map(|i| &**i)
    }

    /// A page of the messages `who` may read that match `req`, newest first.
    pub async fn search(&self, who: &DeviceKey, role: Role, req: pb::SearchRequest) -> Result<pb::SearchPage> {
        let Some(indexer) = self.indexer() else {
            return Err(ClientError::new(ErrorCode::Unavailable, "search is turned off on this server"));
        };
        let mut query = self.index_query(who, role, &req).await?;
        let limit = query.limit;
        let mut hits = Vec::with_capacity(limit);
        let mut examined = 0;
        let mut next = None;
        query.limit = (limit * 2).max(20);
        'pages: loop {
            let candidates = self.backends.search.candidates(&query).await?;
            let exhausted = candidates.len() < query.limit;
            for c in candidates {
                examined += 1;
                query.before = Some(SearchCursor::of(&c.msg_id));
                let message = self.backends.messages.get_by_id(&who.tenant, &c.msg_id).await?;
                match message.and_then(|m| hit(&query.clauses, m, c.session_id)) {
                    Some(h) => hits.push(h),
                    None => indexer.remove(&who.tenant, &c.msg_id),
                }
                if hits.len() == limit {
                    next = query.before;
                    break 'pages;
                }
            }
            if exhausted {
                break;
            }
            if examined >= MAX_EXAMINED {
                next = query.before;
                break;
            }
        }
        metrics::counter!("dongdong_searches_total").increment(1);
        Ok(pb::SearchPage { hits, next_cursor: next.map(|c| c.encode()).unwrap_or_default() })
    }

    /// Checks `req` and turns it into an index query within what `who`
    /// may read.
    async fn index_query(&self, who: &DeviceKey, role: Role, req: &pb::SearchRequest) -> Result<IndexQuery> {
        let clauses = text::parse(&req.query).map_err(|e| invalid(e.to_string()))?;
        let optional = |field: &str, value: &str| -> Result<Option<String>> {
            if value.is_empty() {
                return Ok(None);
            }
            validate_id(field, value).map_err(invalid)?;
            Ok(Some(value.to_string()))
        };
        if !req.conversation_id.is_empty() {
            validate_conversation_id("conversation_id", &req.conversation_id).map_err(invalid)?;
        }
        let mut kinds = Vec::new();
        for k in &req.kinds {
            let kind = ["text", "image", "file", "custom"]
                .into_iter()
                .find(|known| known == k)
                .ok_or_else(|| invalid(format!("kinds: unknown kind {k:?} (text, image, file or custom)")))?;
            kinds.push(kind);
        }
        if req.until_ms > 0 && req.since_ms >= req.until_ms {
            return Err(invalid("since_ms must be before until_ms".into()));
        }
        let before = match req.cursor.as_str() {
            "" => None,
            c => Some(
                SearchCursor::parse(c).ok_or_else(|| invalid("cursor is not a next_cursor this server gave".into()))?,
            ),
        };
        let query = IndexQuery {
            tenant: who.tenant.clone(),
            scope: self.scope(who, role).await?,
            clauses,
            conversation_id: (!req.conversation_id.is_empty()).then(|| req.conversation_id.clone()),
            from_user: optional("from_user", &req.from_user)?,
            with_user: optional("with_user", &req.with_user)?,
            kinds,
            since_ms: req.since_ms,
            until_ms: req.until_ms,
            session_id: optional("session_id", &req.session_id)?,
            group: optional("group", &req.group)?,
            before,
            limit: match req.limit as usize {
                0 => PAGE_DEFAULT,
                n => n.min(PAGE_MAX),
            },
        };
        let filtered = query.conversation_id.is_some()
            || query.from_user.is_some()
            || query.with_user.is_some()
            || !query.kinds.is_empty()
            || query.since_ms > 0
            || query.until_ms > 0
            || query.session_id.is_some()
            || query.group.is_some();
        if query.clauses.is_empty() && !filtered {
            return Err(invalid("query is empty: give words to find or a filter".into()));
        }
        Ok(query)
    }

    /// Customers read their own conversations; agents theirs and the
    /// sessions of their groups; admins the whole tenant.
    async fn scope(&self, who: &DeviceKey, role: Role) -> Result<SearchScope> {
        let groups = match role {
            Role::Admin => return Ok(SearchScope::Tenant),
            Role::Customer => Vec::new(),
            Role::Agent => self.backends.cs.agent(&who.tenant, &who.user).await?.map(|a| a.groups).unwrap_or_default(),
        };
        Ok(SearchScope::Member { user: who.user.clone(), groups })
    }
}

/// The result for `message` if it (as stored now) still matches.
fn hit(clauses: &[text::Clause], message: Message, session_id: String) -> Option<pb::SearchHit> {
    if !message.recalled_by.is_empty() {
        return None;
    }
    let (_, body) = searchable(&message)?;
    let ranges = text::find(clauses, body)?;
    let snippet = text::snippet(body, &ranges)
        .into_iter()
        .map(|p| pb::SnippetPart { text: p.text, matched: p.matched })
        .collect();
    Some(pb::SearchHit { message: Some(message), snippet, session_id })
}
