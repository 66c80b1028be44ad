//! Conformance of the search index: the feed hands over every appended
//! message, and candidates, checked by the matcher as dispatch checks
//! them, find the same messages on every backend (the recall cases of
//! docs/protocol.md, "Search"), within the scope and tenant asked for.

use super::tenant;
use crate::search::{IndexQuery, SearchCursor, SearchDoc, SearchScope};
use crate::{Backends, NewMessage};
use im_core::pb::{Content, Message, content};
use std::collections::HashMap;
use std::time::{Duration, Instant};

async fn say(b: &Backends, t: &str, from: &str, to: &str, text: &str) -> Message {
    let new = NewMessage {
        tenant: t.to_string(),
        conversation_id: im_core::conversation_id(t, from, to),
        from_user: from.to_string(),
        from_device: "d".to_string(),
        to_user: to.to_string(),
        client_msg_id: im_core::new_msg_id(),
        content: Content { kind: Some(content::Kind::Text(text.to_string())) },
    };
    b.messages.append(new).await.unwrap().message
}

/// Reads the feed from the start until it has handed over every one of
/// `ids` (other tests' messages pass by too), and indexes what it read.
async fn feed_until(b: &Backends, ids: &[String], group_of: &HashMap<String, String>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut position = None;
    let mut missing: std::collections::HashSet<&String> = ids.iter().collect();
    while !missing.is_empty() {
        assert!(Instant::now() < deadline, "the feed never handed over {} messages", missing.len());
        let page = b.search.feed(position.as_deref(), 500).await.unwrap();
        if page.items.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let docs: Vec<SearchDoc> = page
            .items
            .into_iter()
            .filter_map(|item| {
                missing.remove(&item.message.msg_id);
                let group = group_of.get(&item.message.msg_id).cloned().unwrap_or_default();
                let session = if group.is_empty() { String::new() } else { format!("s-{group}") };
                SearchDoc::of(item, session, group)
            })
            .collect();
        b.search.apply(docs, Vec::new(), page.next.clone()).await.unwrap();
        assert_eq!(b.search.position().await.unwrap(), page.next, "the position is kept with the entries");
        position = page.next;
    }
}

fn query(t: &str, scope: SearchScope, q: &str) -> IndexQuery {
    IndexQuery {
        tenant: t.to_string(),
        scope,
        clauses: search::parse(q).unwrap(),
        conversation_id: None,
        from_user: None,
        with_user: None,
        kinds: Vec::new(),
        since_ms: 0,
        until_ms: 0,
        session_id: None,
        group: None,
        before: None,
        limit: 50,
    }
}

/// The texts found, newest first, after the matcher's check.
async fn found(b: &Backends, q: &IndexQuery, texts: &HashMap<String, String>) -> Vec<String> {
    let hits = b.search.candidates(q).await.unwrap();
    hits.into_iter()
        .filter_map(|h| texts.get(&h.msg_id).cloned())
        .filter(|text| search::matches(&q.clauses, text))
        .collect()
}

pub async fn search_finds_words_inside_sentences_within_scope(b: &Backends) {
    let t = tenant();
    let corpus = [
        ("alice", "bob", "已添加为好友"),
        ("bob", "alice", "您的订单待处理"),
        ("alice", "bob", "中国农业发展银行"),
        ("carol", "bob", "我想申请退款"),
        ("alice", "bob", "订单号JD2026-000123已发货"),
        ("bob", "alice", "I want a REFUND"),
        ("carol", "dave", "refund for carol"),
    ];
    let mut texts = HashMap::new();
    let mut ids = Vec::new();
    let mut group_of = HashMap::new();
    for (from, to, text) in corpus {
        let m = say(b, &t, from, to, text).await;
        if from == "carol" && to == "dave" {
            group_of.insert(m.msg_id.clone(), "sales".to_string());
        }
        texts.insert(m.msg_id.clone(), text.to_string());
        ids.push(m.msg_id);
    }
    // The same words in another tenant are never found from this one.
    let other = tenant();
    let stranger = say(b, &other, "alice", "bob", "我想申请退款 refund").await;
    ids.push(stranger.msg_id);
    feed_until(b, &ids, &group_of).await;

    let tenant_wide = |q: &str| query(&t, SearchScope::Tenant, q);
    for (q, want) in [
        ("添加", vec!["已添加为好友"]),
        ("处理", vec!["您的订单待处理"]),
        ("农业", vec!["中国农业发展银行"]),
        ("退款", vec!["我想申请退款"]),
        ("JD2026-000123", vec!["订单号JD2026-000123已发货"]),
        ("000123", vec!["订单号JD2026-000123已发货"]),
        ("refund", vec!["refund for carol", "I want a REFUND"]),
        ("\"want a\"", vec!["I want a REFUND"]),
        ("\"a want\"", vec![]),
        ("添好", vec![]),
    ] {
        assert_eq!(found(b, &tenant_wide(q), &texts).await, want, "query {q}");
    }
    // Members see their conversations; an agent also her groups' sessions.
    let bob = SearchScope::Member { user: "bob".into(), groups: vec![] };
    assert_eq!(found(b, &query(&t, bob, "refund"), &texts).await, vec!["I want a REFUND"]);
    let eve = SearchScope::Member { user: "eve".into(), groups: vec![] };
    assert!(found(b, &query(&t, eve, "refund"), &texts).await.is_empty(), "a stranger finds nothing");
    let agent = SearchScope::Member { user: "eve".into(), groups: vec!["sales".into()] };
    assert_eq!(found(b, &query(&t, agent, "refund"), &texts).await, vec!["refund for carol"]);
    // Filters.
    let mut q = tenant_wide("refund");
    q.from_user = Some("bob".into());
    assert_eq!(found(b, &q, &texts).await, vec!["I want a REFUND"]);
    let mut q = tenant_wide("");
    q.with_user = Some("carol".into());
    assert_eq!(found(b, &q, &texts).await, vec!["refund for carol", "我想申请退款"]);
    let mut q = tenant_wide("");
    q.group = Some("sales".into());
    assert_eq!(found(b, &q, &texts).await, vec!["refund for carol"]);
    // Pages, newest first, by cursor.
    let mut q = tenant_wide("");
    q.limit = 3;
    let mut pages = Vec::new();
    loop {
        let hits = b.search.candidates(&q).await.unwrap();
        pages.extend(hits.iter().map(|h| texts[&h.msg_id].clone()));
        if hits.len() < q.limit {
            break;
        }
        q.before = Some(SearchCursor::of(&hits.last().unwrap().msg_id));
    }
    let mut newest_first: Vec<String> = corpus.iter().map(|c| c.2.to_string()).collect();
    newest_first.reverse();
    assert_eq!(pages, newest_first);
    // A removed entry (a recall) is no longer a candidate.
    let refund = ids[5].clone();
    b.search.apply(Vec::new(), vec![(t.clone(), refund)], None).await.unwrap();
    assert_eq!(found(b, &tenant_wide("refund"), &texts).await, vec!["refund for carol"]);
}
