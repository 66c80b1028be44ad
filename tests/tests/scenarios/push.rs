//! Offline push against a real HTTP receiver started by the test: who gets
//! pushed, the signature, coalescing, retries, and a dead webhook that
//! must not slow anything.

use dongdong_tests::http::get;
use dongdong_tests::server::TestServer;
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

pub(super) const SECRET: &str = "push-secret-for-the-tests";

/// One request the receiver got.
#[derive(Debug, Clone)]
pub(super) struct Hit {
    timestamp: String,
    signature: String,
    pub(super) idempotency_key: String,
    body: Vec<u8>,
    pub(super) status: u16,
}

impl Hit {
    pub(super) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// A webhook receiver: answers each request with the next scripted status
/// (200 when the script is empty; 503 while `down`) and records it.
#[derive(Clone)]
pub(super) struct Receiver {
    pub(super) url: String,
    hits: Arc<Mutex<Vec<Hit>>>,
    script: Arc<Mutex<VecDeque<u16>>>,
    pub(super) down: Arc<std::sync::atomic::AtomicBool>,
}

impl Receiver {
    pub(super) async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let r = Receiver { url, hits: Default::default(), script: Default::default(), down: Default::default() };
        let me = r.clone();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let me = me.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let (head_end, len) = loop {
                        let n = tcp.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..i]).to_lowercase();
                            let len = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            break (i + 4, len);
                        }
                    };
                    while buf.len() < head_end + len {
                        let n = tcp.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let header = |name: &str| {
                        head.lines()
                            .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case(name)))
                            .map(|(_, v)| v.trim().to_string())
                            .unwrap_or_default()
                    };
                    let status = if me.down.load(std::sync::atomic::Ordering::SeqCst) {
                        503
                    } else {
                        me.script.lock().unwrap().pop_front().unwrap_or(200)
                    };
                    me.hits.lock().unwrap().push(Hit {
                        timestamp: header("x-dongdong-timestamp"),
                        signature: header("x-dongdong-signature"),
                        idempotency_key: header("idempotency-key"),
                        body: buf[head_end..head_end + len].to_vec(),
                        status,
                    });
                    let reply = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                    let _ = tcp.write_all(reply.as_bytes()).await;
                });
            }
        });
        r
    }

    pub(super) fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    /// Waits until `n` requests arrived.
    async fn wait_for(&self, n: usize) -> Vec<Hit> {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let hits = self.hits();
            if hits.len() >= n || Instant::now() > until {
                return hits;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn server(url: &str, tweak: impl FnOnce(&mut dongdong_server::config::Config)) -> TestServer {
    let url = url.to_string();
    TestServer::start_with(move |c| {
        c.push.webhook_url = url;
        c.push.secret = SECRET.into();
        c.push.min_interval = Duration::from_millis(400);
        tweak(c);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_users_get_one_signed_push_per_interval_online_users_none() {
    let hook = Receiver::start().await;
    let s = server(&hook.url, |c| c.push.include_preview = true).await;
    let mut alice = s.login("acme", "alice", "a1").await;
    let mut bob = s.login("acme", "bob", "b1").await;
    // Bob is online: no push.
    alice.send_text("bob", "b-1", "hi bob").await.unwrap();
    bob.next_deliver().await;
    // Carol has never connected: pushed, signed, with the preview.
    let ack = alice.send_text("carol", "c-1", "your order shipped").await.unwrap();
    let hits = hook.wait_for(1).await;
    assert_eq!(hits.len(), 1, "only carol: {hits:?}");
    let h = &hits[0];
    let body = h.json();
    assert_eq!(body["to_user"], "carol");
    assert_eq!((body["tenant"].as_str(), body["from_user"].as_str()), (Some("acme"), Some("alice")));
    assert_eq!((body["msg_id"].as_str(), body["kind"].as_str()), (Some(ack.msg_id.as_str()), Some("message")));
    assert_eq!(body["conversation_id"].as_str(), Some(ack.conversation_id.as_str()));
    assert_eq!((body["unread_total"].as_u64(), body["preview"].as_str()), (Some(1), Some("your order shipped")));
    let ts: u64 = h.timestamp.parse().unwrap();
    assert!(im_core::now_ms().abs_diff(ts) < 10_000);
    assert_eq!(h.signature, dispatch::push::signature(SECRET.as_bytes(), ts, &h.body), "the signature verifies");
    assert_ne!(h.signature, dispatch::push::signature(b"another secret!!", ts, &h.body));
    // Three more within the interval: one push after it, the latest.
    let mut last = String::new();
    for i in 0..3 {
        last = alice.send_text("carol", &format!("c-more-{i}"), &format!("more {i}")).await.unwrap().msg_id;
    }
    let hits = hook.wait_for(2).await;
    assert_eq!(hits.len(), 2);
    let body = hits[1].json();
    assert_eq!((body["msg_id"].as_str(), body["unread_total"].as_u64()), (Some(last.as_str()), Some(4)));
    // (That nothing more follows the coalesced push is the schedule's unit
    // test, dispatch::push::tests.)
    // A recall for carol (still offline) is pushed too, without the words.
    let recall = im_core::pb::frame::Body::Recall(im_core::pb::Recall { msg_id: last.clone() });
    alice.request(recall).await;
    let hits = hook.wait_for(3).await;
    let body = hits[2].json();
    assert_eq!((body["kind"].as_str(), body["msg_id"].as_str()), (Some("recall"), Some(last.as_str())));
    assert!(body.get("preview").is_none());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_client_errors_are_not() {
    let hook = Receiver::start().await;
    hook.script.lock().unwrap().extend([500, 503, 200]);
    let s = server(&hook.url, |_| {}).await;
    let mut alice = s.login("acme", "alice", "a1").await;
    alice.send_text("dave", "d-1", "hello").await.unwrap();
    let hits = hook.wait_for(3).await;
    assert_eq!(hits.iter().map(|h| h.status).collect::<Vec<_>>(), [500, 503, 200]);
    assert!(hits.iter().all(|h| h.body == hits[0].body), "the same push each time");
    // A 4xx is final.
    hook.script.lock().unwrap().extend([400]);
    alice.send_text("erin", "e-1", "hello").await.unwrap();
    // That a 4xx is never retried is the retry rule's unit test
    // (dispatch::push::tests): nothing to wait for here.
    hook.wait_for(4).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_webhook_slows_nothing_and_drops_are_counted() {
    // A port nobody listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", dead.local_addr().unwrap());
    drop(dead);
    let s = server(&url, |c| {
        c.push.queue = 4;
        c.push.max_attempts = 3;
        c.push.timeout = Duration::from_millis(200);
    })
    .await;
    let mut alice = s.login("acme", "alice", "a1").await;
    let mut bob = s.login("acme", "bob", "b1").await;
    let mut slowest = Duration::ZERO;
    let all = Instant::now();
    for i in 0..100 {
        // An offline user each time (a push each), and bob, online.
        alice.send_text(&format!("gone{i}"), &format!("g-{i}"), "are you there?").await.unwrap();
        let started = Instant::now();
        alice.send_text("bob", &format!("b-{i}"), "still fast?").await.unwrap();
        bob.next_deliver().await;
        slowest = slowest.max(started.elapsed());
    }
    // A push waiting on the dead webhook (3 attempts, 200 ms timeouts and
    // backoff) in a message's path would cost 0.6 s each: a minute here.
    assert!(slowest < Duration::from_secs(2), "a delivery took {slowest:?} while the webhook was dead");
    assert!(all.elapsed() < Duration::from_secs(10), "100 rounds took {:?}", all.elapsed());
    let (_, metrics) = get(&s.http_url, "/metrics").await;
    let dropped: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("dongdong_push_dropped_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(dropped > 0.0, "the full queue's drops are counted:\n{metrics}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_who_left_the_page_is_told_an_agent_took_them() {
    use im_core::pb::{self, frame::Body};
    let hook = Receiver::start().await;
    let s = server(&hook.url, |_| {}).await;
    // One agent with room for one customer, busy with Cid.
    let admin = s.token_with_role("demo", "root", im_core::Role::Admin);
    let body = serde_json::json!({ "capacity": 1 });
    let (status, _) = dongdong_tests::http::request(
        &s.http_url,
        "PUT",
        "/api/v1/groups/default/agents/agnes",
        Some(&admin),
        Some(&body),
    )
    .await;
    assert_eq!(status, 200);
    let token = s.token_with_role("demo", "agnes", im_core::Role::Agent);
    let mut agent = dongdong_tests::client::Client::login(&s.ws_url, &token, "console").await;
    agent.request(Body::SetStatus(pb::SetStatus { status: pb::AgentStatus::Online as i32 })).await;
    let ask = || Body::RequestService(pb::RequestService { group: "default".into(), ..Default::default() });
    let mut cid = s.login("demo", "cid", "web").await;
    let Some(Body::SessionAssigned(first)) = cid.request(ask()).await.body else { panic!("cid is served") };
    // Cora waits in line, then closes the page.
    let mut customer = s.login("demo", "cora", "web").await;
    let asked = customer.request(ask()).await;
    assert!(matches!(asked.body, Some(Body::QueueUpdate(_))), "waits in line: {asked:?}");
    customer.close().await;
    s.wait_presence("demo", "cora", 0).await;
    // Cid's chat ends: Agnes takes Cora, who hears of it through the webhook.
    let end = Body::EndSession(pb::EndSession { session_id: first.session.unwrap().session_id });
    agent.request(end).await;
    let hits = hook.wait_for(1).await;
    assert_eq!(hits.len(), 1, "{hits:?}");
    let body = hits[0].json();
    assert_eq!(
        (body["kind"].as_str(), body["to_user"].as_str(), body["from_user"].as_str()),
        (Some("session_assigned"), Some("cora"), Some("agnes"))
    );
    assert!(body["session_id"].as_str().is_some_and(|id| !id.is_empty()), "{body}");
    s.stop().await;
}
