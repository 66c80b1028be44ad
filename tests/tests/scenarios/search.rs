//! Message search over real WebSockets and HTTP: Chinese words inside
//! sentences, order ids, phrases; who may find what (strangers, other
//! tenants, customers, agents of the session's group, admins); a recalled
//! message is never found; pages; the errors bad queries get.

use dongdong_tests::client::{Client, code};
use dongdong_tests::http::request as http;
use dongdong_tests::server::TestServer;
use im_core::pb::{self, frame::Body};
use im_core::{ErrorCode, Role};
use serde_json::json;
use std::time::{Duration, Instant};

pub(super) fn search(query: &str) -> pb::SearchRequest {
    pb::SearchRequest { query: query.into(), ..Default::default() }
}

async fn page(c: &mut Client, req: pb::SearchRequest) -> pb::SearchPage {
    match c.request(Body::SearchRequest(req)).await.body {
        Some(Body::SearchPage(p)) => p,
        other => panic!("expected SearchPage, got {other:?}"),
    }
}

async fn error(c: &mut Client, req: pb::SearchRequest) -> ErrorCode {
    match c.request(Body::SearchRequest(req)).await.body {
        Some(Body::Error(e)) => code(&e),
        other => panic!("expected Error, got {other:?}"),
    }
}

pub(super) fn texts(p: &pb::SearchPage) -> Vec<String> {
    p.hits.iter().map(|h| dongdong_tests::client::text_of(h.message.as_ref().unwrap()).to_string()).collect()
}

/// Searches until `want` results come back: the index trails the acks by
/// its commit interval.
async fn until_found(c: &mut Client, req: pb::SearchRequest, want: usize) -> pb::SearchPage {
    found_within(c, req, want, Duration::from_secs(10)).await
}

/// The first page with `want` results, or the last one searched when
/// `within` ran out.
pub(super) async fn found_within(
    c: &mut Client,
    req: pb::SearchRequest,
    want: usize,
    within: Duration,
) -> pb::SearchPage {
    let deadline = Instant::now() + within;
    loop {
        let p = page(c, req.clone()).await;
        if p.hits.len() >= want || Instant::now() > deadline {
            return p;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn words_inside_sentences_within_what_the_caller_may_read() {
    let s = TestServer::start().await;
    let mut alice = s.login("acme", "alice", "a1").await;
    let mut carol = s.login("acme", "carol", "c1").await;
    let mut other = s.login("other", "alice", "a1").await;
    for (i, t) in [
        "已添加为好友",
        "您的订单待处理",
        "中国农业发展银行",
        "我想申请退款",
        "订单号JD2026-000123已发货",
        "I want a REFUND",
    ]
    .iter()
    .enumerate()
    {
        alice.send_text("bob", &format!("m{i}"), t).await.unwrap();
    }
    carol.send_text("dave", "c0", "carol wants a refund too").await.unwrap();
    other.send_text("bob", "o0", "我想申请退款 refund").await.unwrap();
    let mut admin = Client::login(&s.ws_url, &s.token_with_role("acme", "root", Role::Admin), "adm").await;
    let all = until_found(&mut admin, search("refund"), 2).await;
    assert_eq!(texts(&all), ["carol wants a refund too", "I want a REFUND"], "admins search the tenant, newest first");

    for (q, want) in [
        ("添加", "已添加为好友"),
        ("处理", "您的订单待处理"),
        ("农业", "中国农业发展银行"),
        ("退款", "我想申请退款"),
        ("退款申请", "我想申请退款"),
        ("JD2026-000123", "订单号JD2026-000123已发货"),
        ("000123", "订单号JD2026-000123已发货"),
        ("\"want a\"", "I want a REFUND"),
    ] {
        let p = until_found(&mut alice, search(q), 1).await;
        assert_eq!(texts(&p), [want], "query {q}");
    }
    assert!(page(&mut alice, search("\"a want\"")).await.hits.is_empty(), "a phrase keeps its order");
    let p = page(&mut alice, search("refund")).await;
    assert_eq!(texts(&p), ["I want a REFUND"], "alice never finds carol's conversation");
    let hit = &p.hits[0];
    let marked: Vec<&str> = hit.snippet.iter().filter(|p| p.matched).map(|p| p.text.as_str()).collect();
    assert_eq!(marked, ["REFUND"]);
    assert_eq!(hit.message.as_ref().unwrap().seq, 6, "the seq to open the conversation at");
    let p = page(&mut other, search("refund")).await;
    assert_eq!(texts(&p), ["我想申请退款 refund"], "another tenant's alice finds only her tenant");
    let mut bob = s.login("acme", "bob", "b1").await;
    assert_eq!(texts(&page(&mut bob, search("refund")).await), ["I want a REFUND"], "the other member finds it");
    let mut eve = s.login("acme", "eve", "e1").await;
    assert!(page(&mut eve, search("refund")).await.hits.is_empty(), "a stranger finds nothing");

    // Filters and pages.
    let req = pb::SearchRequest { with_user: "bob".into(), limit: 4, ..Default::default() };
    let first = page(&mut alice, req.clone()).await;
    assert_eq!(first.hits.len(), 4);
    assert!(!first.next_cursor.is_empty());
    let rest = page(&mut alice, pb::SearchRequest { cursor: first.next_cursor.clone(), ..req }).await;
    assert_eq!(texts(&rest), ["您的订单待处理", "已添加为好友"]);
    assert!(rest.next_cursor.is_empty());

    // A recalled message is never found, at once.
    let refund_id = hit.message.as_ref().unwrap().msg_id.clone();
    let recalled = alice.request(Body::Recall(pb::Recall { msg_id: refund_id })).await;
    assert!(matches!(recalled.body, Some(Body::Recalled(_))), "{recalled:?}");
    assert!(page(&mut alice, search("refund")).await.hits.is_empty());
    assert_eq!(texts(&page(&mut admin, search("refund")).await), ["carol wants a refund too"]);

    // Over HTTP, the same page in canonical JSON.
    let token = s.token("acme", "alice");
    let (status, body) = http(&s.http_url, "GET", "/api/v1/search?q=%E9%80%80%E6%AC%BE", Some(&token), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["hits"][0]["message"]["content"]["text"], "我想申请退款");
    assert_eq!(body["hits"][0]["snippet"][1], json!({"text": "退款", "matched": true}));
    let (status, body) = http(&s.http_url, "GET", "/api/v1/search?q=a&kinds=video", Some(&token), None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("INVALID_ARGUMENT")), "{body}");
    let (status, _) = http(&s.http_url, "GET", "/api/v1/search?q=a", None, None).await;
    assert_eq!(status, 401);

    // Bad queries get clear errors.
    assert_eq!(error(&mut alice, search("   ")).await, ErrorCode::InvalidArgument, "nothing to find");
    assert_eq!(error(&mut alice, search(&"长".repeat(300))).await, ErrorCode::InvalidArgument);
    let bad_kind = pb::SearchRequest { kinds: vec!["video".into()], ..search("a") };
    assert_eq!(error(&mut alice, bad_kind).await, ErrorCode::InvalidArgument);
    let bad_cursor = pb::SearchRequest { cursor: "nope".into(), ..search("a") };
    assert_eq!(error(&mut alice, bad_cursor).await, ErrorCode::InvalidArgument);
    let bad_range = pb::SearchRequest { since_ms: 10, until_ms: 5, ..search("a") };
    assert_eq!(error(&mut alice, bad_range).await, ErrorCode::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_find_their_groups_sessions_and_files_by_name() {
    let s = TestServer::start_with(|c| c.cs.groups.clear()).await;
    let admin = s.token_with_role("shop", "root", Role::Admin);
    let (status, body) =
        http(&s.http_url, "PUT", "/api/v1/groups/pre", Some(&admin), Some(&json!({"name": "Pre-sales"}))).await;
    assert_eq!(status, 201, "{body}");
    for agent in ["ann", "ben"] {
        let path = format!("/api/v1/groups/pre/agents/{agent}");
        let (status, body) = http(&s.http_url, "PUT", &path, Some(&admin), Some(&json!({"capacity": 1}))).await;
        assert_eq!(status, 200, "{body}");
    }
    let mut ann = Client::login(&s.ws_url, &s.token_with_role("shop", "ann", Role::Agent), "dev").await;
    let online = Body::SetStatus(pb::SetStatus { status: pb::AgentStatus::Online as i32 });
    assert!(matches!(ann.request(online).await.body, Some(Body::CsState(_))));
    let mut customer = Client::login(&s.ws_url, &s.token_with_role("shop", "cust", Role::Customer), "dev").await;
    let req = Body::RequestService(pb::RequestService { group: "pre".into(), ..Default::default() });
    let session = match customer.request(req).await.body {
        Some(Body::SessionAssigned(a)) => a.session.unwrap(),
        other => panic!("expected SessionAssigned, got {other:?}"),
    };
    customer.send_text("ann", "q1", "我想申请退款，订单JD2026-000777").await.unwrap();
    let file = pb::File {
        url: "https://files.example/invoice.pdf".into(),
        name: "发票-JD2026.pdf".into(),
        ..Default::default()
    };
    let content = pb::Content { kind: Some(pb::content::Kind::File(file)) };
    customer.send("ann", "q2", content).await.unwrap();
    ann.send_text("cust", "a1", "好的，马上处理").await.unwrap();
    // A private chat between ann and a friend is not the group's.
    ann.send_text("friend", "p1", "退款 is on my mind").await.unwrap();

    // ben, in the same group, finds the session's messages but not ann's
    // private chat; a customer of another session finds nothing.
    let mut ben = Client::login(&s.ws_url, &s.token_with_role("shop", "ben", Role::Agent), "dev").await;
    let found = until_found(&mut ben, search("退款"), 1).await;
    assert_eq!(texts(&found), ["我想申请退款，订单JD2026-000777"]);
    // The hit names its session: ben reads the chat around it with it.
    let hit = &found.hits[0];
    assert_eq!(hit.session_id, session.session_id);
    let m = hit.message.as_ref().unwrap();
    let around = pb::SyncRequest {
        conversation_id: m.conversation_id.clone(),
        session_id: hit.session_id.clone(),
        before_seq: m.seq + 20,
        ..Default::default()
    };
    assert_eq!(ben.sync(around).await.unwrap().messages.len(), 3);
    let by_session = pb::SearchRequest { session_id: session.session_id.clone(), ..Default::default() };
    assert_eq!(page(&mut ben, by_session).await.hits.len(), 3, "the whole session, by its id");
    let files = pb::SearchRequest { kinds: vec!["file".into()], ..search("发票") };
    let hits = until_found(&mut ben, files, 1).await.hits;
    assert_eq!(hits.len(), 1, "a file is found by its name");
    let marked: Vec<&str> = hits[0].snippet.iter().filter(|p| p.matched).map(|p| p.text.as_str()).collect();
    assert_eq!(marked, ["发票"]);
    let mut stranger = Client::login(&s.ws_url, &s.token_with_role("shop", "cust2", Role::Customer), "dev").await;
    assert!(page(&mut stranger, search("退款")).await.hits.is_empty());
    assert_eq!(texts(&until_found(&mut ann, search("退款"), 2).await).len(), 2, "ann finds both of her chats");
    let mut friend = Client::login(&s.ws_url, &s.token_with_role("shop", "friend", Role::Customer), "dev").await;
    assert_eq!(texts(&page(&mut friend, search("退款")).await), ["退款 is on my mind"]);
}

/// Every hit of `req`, page by page; panics on a message found twice.
async fn all_hits(c: &mut Client, req: pb::SearchRequest) -> Vec<pb::Message> {
    let mut out: Vec<pb::Message> = Vec::new();
    let mut cursor = String::new();
    loop {
        let p = page(c, pb::SearchRequest { cursor: cursor.clone(), limit: 50, ..req.clone() }).await;
        out.extend(p.hits.into_iter().map(|h| h.message.unwrap()));
        if p.next_cursor.is_empty() {
            break;
        }
        cursor = p.next_cursor;
    }
    let ids: std::collections::HashSet<&str> = out.iter().map(|m| m.msg_id.as_str()).collect();
    assert_eq!(ids.len(), out.len(), "a message found twice");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_and_a_reindex_every_acked_message_is_found_once_and_a_recalled_one_never() {
    use super::child::{ChildServer, binary};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let signer = access_gateway::TokenSigner::new(dongdong_tests::SECRET.as_bytes());
    let token = |u: &str| signer.mint("acme", u, Role::Customer, Duration::from_secs(600)).unwrap();
    let server = ChildServer::start(&data);
    let mut alice = Client::login(&server.ws_url, &token("alice"), "a1").await;
    let gone = alice.send_text("bob", "gone", "退款 that will be recalled").await.unwrap();
    let recalled = alice.request(Body::Recall(pb::Recall { msg_id: gone.msg_id.clone() })).await;
    assert!(matches!(recalled.body, Some(Body::Recalled(_))));
    let mut reqs = Vec::new();
    for i in 0..300 {
        reqs.push(alice.send_text_nowait("bob", &format!("m{i}"), &format!("申请退款 number n{i}x")).await);
    }
    let mut acked = Vec::new();
    for r in reqs.iter().take(150) {
        if let Some(Body::SendAck(a)) = alice.reply(*r).await.body {
            acked.push(a.msg_id);
        }
    }
    server.kill9();

    let server = ChildServer::start(&data);
    let mut alice = Client::login(&server.ws_url, &token("alice"), "a1").await;
    let history =
        alice.sync(pb::SyncRequest { with_user: "bob".into(), limit: 400, ..Default::default() }).await.unwrap();
    let stored: Vec<&pb::Message> = history.messages.iter().filter(|m| m.recalled_by.is_empty()).collect();
    let req = pb::SearchRequest { with_user: "bob".into(), ..search("退款") };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut found = all_hits(&mut alice, req.clone()).await;
    while found.len() < stored.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        found = all_hits(&mut alice, req.clone()).await;
    }
    let found_ids: std::collections::HashSet<&str> = found.iter().map(|m| m.msg_id.as_str()).collect();
    assert_eq!(found.len(), stored.len(), "every stored message found once after the crash");
    for id in &acked {
        assert!(found_ids.contains(id.as_str()), "acked message {id} not found");
    }
    assert!(!found_ids.contains(gone.msg_id.as_str()), "a recalled message is never found");
    let one = &stored[7];
    let word = format!("n{}x", dongdong_tests::client::text_of(one).rsplit('n').next().unwrap().trim_end_matches('x'));
    let exact = all_hits(&mut alice, search(&word)).await;
    assert_eq!(exact.iter().map(|m| &m.msg_id).collect::<Vec<_>>(), [&one.msg_id], "{word}");
    let status = tokio::task::spawn_blocking(move || server.signal("TERM")).await.unwrap();
    assert!(status.success());

    // A rebuild from the stored messages finds the same.
    let out = std::process::Command::new(binary())
        .args(["reindex", "--data"])
        .arg(&data)
        .env("DONGDONG_AUTH__SECRET", dongdong_tests::SECRET)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains(&format!("reindex: {} messages indexed", stored.len())), "{said}");
    let server = ChildServer::start(&data);
    let mut alice = Client::login(&server.ws_url, &token("alice"), "a1").await;
    let again = all_hits(&mut alice, req).await;
    assert_eq!(again.len(), stored.len());
    drop(server);
}
