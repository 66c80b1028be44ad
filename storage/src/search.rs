//! The message search index: [`SearchIndex`], which each backend keeps
//! beside its message store and feeds from the store's own record of
//! appended messages, after they were acknowledged (never on the send path).
//!
//! An index proposes candidates; dispatch checks each against the message
//! as stored now with `search::matcher` (so a recalled message, or an entry
//! a crash left behind, is never a result). What a document holds and how
//! a query narrows the candidates is the same on every backend.

use crate::Result;
use async_trait::async_trait;
use im_core::pb::Message;

/// A stored message as the index feed reads it, with what the message
/// itself does not carry.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedItem {
    pub tenant: String,
    /// The conversation's two members, sorted.
    pub members: [String; 2],
    pub message: Message,
}

/// A page of the feed: messages after a position, in the order the store
/// appended them.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedPage {
    pub items: Vec<FeedItem>,
    /// Where the next page starts (the last item's position); unchanged
    /// when the page is empty.
    pub next: Option<String>,
}

/// What the index holds of one message.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchDoc {
    pub tenant: String,
    pub msg_id: String,
    pub conversation_id: String,
    pub members: [String; 2],
    pub from_user: String,
    pub server_time_ms: u64,
    pub seq: u64,
    /// `text`, `image`, `file` or `custom`.
    pub kind: &'static str,
    /// The searchable text: a text message's text, a file's name, a custom
    /// message's type.
    pub text: String,
    /// The customer-service session the message was part of, and its
    /// group; empty for other conversations.
    pub session_id: String,
    pub group: String,
}

/// The kind name and searchable text of a message's content: a text's
/// text, a file's name, a custom message's type; an image has none. `None`
/// for a message without content (recalled).
pub fn searchable(message: &Message) -> Option<(&'static str, &str)> {
    use im_core::pb::content::Kind;
    match message.content.as_ref()?.kind.as_ref()? {
        Kind::Text(t) => Some(("text", t)),
        Kind::Image(_) => Some(("image", "")),
        Kind::File(f) => Some(("file", &f.name)),
        Kind::Custom(c) => Some(("custom", &c.r#type)),
    }
}

impl SearchDoc {
    /// The entry of a fed message, in the customer-service session (and
    /// group) given; `None` for a message without content.
    pub fn of(item: FeedItem, session_id: String, group: String) -> Option<Self> {
        let (kind, text) = searchable(&item.message)?;
        let text = text.to_string();
        let m = item.message;
        Some(Self {
            tenant: item.tenant,
            msg_id: m.msg_id,
            conversation_id: m.conversation_id,
            members: item.members,
            from_user: m.from_user,
            server_time_ms: m.server_time_ms,
            seq: m.seq,
            kind,
            text,
            session_id,
            group,
        })
    }
}

/// Whose messages a query may return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchScope {
    /// Every conversation of the tenant (admins and supervisors).
    Tenant,
    /// Conversations `user` is a member of, and sessions of `groups`.
    Member { user: String, groups: Vec<String> },
}

/// The newest-first position after which a page starts: the last result
/// of the previous page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SearchCursor {
    /// The message id's 128 bits (UUIDv7 ids order by time).
    pub key: u128,
}

impl SearchCursor {
    pub fn of(msg_id: &str) -> Self {
        Self { key: order_key(msg_id) }
    }

    pub fn encode(&self) -> String {
        format!("{:032x}", self.key)
    }

    pub fn parse(s: &str) -> Option<Self> {
        (s.len() == 32).then(|| u128::from_str_radix(s, 16).ok()).flatten().map(|key| Self { key })
    }
}

/// The key results are ordered by (newest first): the id's bits when it is
/// a UUID (as every id this server makes), else a hash.
pub fn order_key(msg_id: &str) -> u128 {
    match uuid::Uuid::try_parse(msg_id) {
        Ok(id) => id.as_u128(),
        Err(_) => {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            msg_id.hash(&mut h);
            u128::from(h.finish())
        }
    }
}

/// Candidates for a search, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexQuery {
    pub tenant: String,
    pub scope: SearchScope,
    /// Every clause must match (none: any message passing the filters).
    pub clauses: Vec<search::Clause>,
    pub conversation_id: Option<String>,
    /// Messages sent by this user.
    pub from_user: Option<String>,
    /// Conversations this user is a member of (the other party).
    pub with_user: Option<String>,
    /// Any of these kinds (empty: every kind).
    pub kinds: Vec<&'static str>,
    /// `server_time_ms` in `[since_ms, until_ms)`; 0: unbounded.
    pub since_ms: u64,
    pub until_ms: u64,
    pub session_id: Option<String>,
    pub group: Option<String>,
    /// Older than this.
    pub before: Option<SearchCursor>,
    pub limit: usize,
}

/// A candidate: where to find the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexHit {
    pub msg_id: String,
    pub conversation_id: String,
    pub seq: u64,
    /// The customer-service session the message was part of ("": none).
    pub session_id: String,
}

/// A backend's message search index.
#[async_trait]
pub trait SearchIndex: Send + Sync + 'static {
    /// Up to `limit` stored messages after `after` (`None`: from the
    /// first), in append order. Every message acknowledged to its sender is
    /// on the feed once the store holds it; a position never moves back.
    async fn feed(&self, after: Option<&str>, limit: usize) -> Result<FeedPage>;

    /// The feed position the index holds everything up to (`None`: nothing
    /// indexed yet), persisted with the entries.
    async fn position(&self) -> Result<Option<String>>;

    /// Adds (or replaces) `docs`, removes `removed` (tenant, msg_id) and,
    /// in the same durable step, records `position` when given.
    async fn apply(&self, docs: Vec<SearchDoc>, removed: Vec<(String, String)>, position: Option<String>)
    -> Result<()>;

    /// Up to `limit` candidates, newest first.
    async fn candidates(&self, query: &IndexQuery) -> Result<Vec<IndexHit>>;

    /// Forgets every entry and the position (for a rebuild).
    async fn clear(&self) -> Result<()>;
}
