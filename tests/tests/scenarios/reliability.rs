//! Timers and bounds: resend after the ack timeout, heartbeats, idle close,
//! replaced connections, slow consumers, presence on close.

use dongdong_tests::client::{Closed, msg};
use dongdong_tests::server::TestServer;
use im_core::CloseCode;
use im_core::pb::{self, frame::Body};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message as WsMessage;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_delivery_is_resent_until_acked() {
    let s = TestServer::start_with(|c| c.timeouts.ack = Duration::from_millis(300)).await;
    let mut bob = s.login("acme", "bob", "b1").await;
    let mut alice = s.login("acme", "alice", "a1").await;
    let ack = alice.send_text("bob", "r1", "ack me").await.unwrap();
    let first = bob.next_deliver().await;
    assert!(!first.replay);
    let again = bob.next_deliver().await;
    assert!(again.replay, "a resend is marked replay");
    assert_eq!(msg(&again).msg_id, ack.msg_id);
    bob.ack(vec![ack.msg_id.clone()]).await;
    // After the ack nothing more comes: the next frame is the reply to a Ping
    // sent after more than two ack timeouts.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let pong = bob.request(Body::Ping(pb::Ping {})).await;
    assert!(matches!(pong.body, Some(Body::Pong(_))));
    // At most one more resend could have raced the ack.
    assert!(bob.buffered_len() <= 1);
    s.stop().await;
}

/// A delivery still unacked when its sender recalls it is resent as it is
/// stored now: recalled, without the words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_after_a_recall_carries_no_recalled_text() {
    let s = TestServer::start_with(|c| c.timeouts.ack = Duration::from_millis(300)).await;
    let mut bob = s.login("acme", "bob", "b1").await;
    let mut alice = s.login("acme", "alice", "a1").await;
    let ack = alice.send_text("bob", "oops", "my card number is 4111").await.unwrap();
    let first = bob.next_deliver().await;
    assert_eq!(dongdong_tests::client::text_of(msg(&first)), "my card number is 4111");
    match alice.request(Body::Recall(pb::Recall { msg_id: ack.msg_id.clone() })).await.body {
        Some(Body::Recalled(_)) => {}
        other => panic!("expected Recalled, got {other:?}"),
    }
    let again = bob
        .next_matching("Deliver", |b| match b {
            Body::Deliver(d) => Some(d.clone()),
            _ => None,
        })
        .await;
    assert!(again.replay, "a resend");
    let m = msg(&again);
    assert_eq!((m.msg_id.as_str(), m.recalled_by.as_str()), (ack.msg_id.as_str(), "alice"));
    assert!(m.content.is_none(), "the recalled text is not resent: {:?}", m.content);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_acking_client_is_closed_and_keeps_its_pending() {
    let s = TestServer::start_with(|c| {
        c.timeouts.ack = Duration::from_millis(100);
        c.limits.connection.max_resends = 2;
    })
    .await;
    let mut bob = s.login("acme", "bob", "b1").await;
    let mut alice = s.login("acme", "alice", "a1").await;
    alice.send_text("bob", "n1", "never acked").await.unwrap();
    assert_eq!(
        bob.closed().await,
        Closed::Frame(CloseCode::AckTimeout.code(), "deliveries stayed unacknowledged".into())
    );
    s.wait_presence("acme", "bob", 0).await;
    let mut bob = s.login("acme", "bob", "b1").await;
    assert_eq!(bob.auth_ok.as_ref().unwrap().pending_count, 1);
    assert!(bob.next_deliver().await.replay);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_pong_and_websocket_ping() {
    let s = TestServer::start().await;
    let mut c = s.login("acme", "alice", "a1").await;
    let req_id = c.next_req_id();
    c.send_frame(&pb::Frame { req_id, body: Some(Body::Ping(pb::Ping {})) }).await;
    let reply = c.reply(req_id).await;
    assert_eq!(reply.req_id, req_id);
    let Some(Body::Pong(p)) = reply.body else { panic!("expected Pong") };
    assert!(p.server_time_ms > 0);
    // A WebSocket-level ping is answered by a WebSocket pong; the connection stays usable.
    c.send_raw(WsMessage::Ping(b"hb".to_vec().into())).await.unwrap();
    assert!(matches!(c.request(Body::Ping(pb::Ping {})).await.body, Some(Body::Pong(_))));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connection_is_pinged_then_closed_and_unregistered() {
    let s = TestServer::start_with(|c| c.timeouts.idle = Duration::from_millis(400)).await;
    let mut quiet = s.login("acme", "quiet", "q1").await;
    s.wait_presence("acme", "quiet", 1).await;
    // Not reading means not answering the server's WebSocket ping.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(quiet.closed().await, Closed::Frame(CloseCode::GoingAway.code(), "idle timeout".into()));
    s.wait_presence("acme", "quiet", 0).await;
    // A client that keeps answering stays.
    let mut chatty = s.login("acme", "chatty", "c1").await;
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(matches!(chatty.request(Body::Ping(pb::Ping {})).await.body, Some(Body::Pong(_))));
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_device_reconnecting_replaces_the_old_connection() {
    let s = TestServer::start().await;
    let mut old = s.login("acme", "bob", "phone").await;
    let mut new = s.login("acme", "bob", "phone").await;
    assert_eq!(
        old.closed().await,
        Closed::Frame(CloseCode::Replaced.code(), "replaced by a newer connection of the same device".into())
    );
    // The old connection's close did not remove the new one's presence.
    s.wait_presence("acme", "bob", 1).await;
    let mut alice = s.login("acme", "alice", "a1").await;
    let ack = alice.send_text("bob", "x", "to the new one").await.unwrap();
    assert_eq!(msg(&new.next_deliver().await).msg_id, ack.msg_id);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_disconnected_and_loses_nothing() {
    let s = TestServer::start_with(|c| {
        c.limits.connection.outbound_queue = 16;
        c.limits.connection.delivery_queue = 16;
        c.limits.connection.max_inflight = 64;
    })
    .await;
    let bob = s.login("acme", "bob", "b1").await;
    let mut alice = s.login("acme", "alice", "a1").await;
    // Bob never reads. Large messages fill the socket buffers, then the queues.
    let big = "x".repeat(60_000);
    let mut sent = Vec::new();
    for i in 0..120 {
        sent.push(alice.send_text("bob", &format!("s{i}"), &big).await.unwrap().msg_id);
    }
    s.wait_presence("acme", "bob", 0).await;
    drop(bob);
    let mut bob = s.login("acme", "bob", "b1").await;
    assert_eq!(bob.auth_ok.as_ref().unwrap().pending_count, 120, "nothing acked, nothing lost");
    let got: Vec<String> = bob.receive_and_ack(120).await.iter().map(|d| msg(d).msg_id.clone()).collect();
    assert_eq!(got, sent);
    bob.close().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_connections_with_1012() {
    let s = TestServer::start().await;
    let mut c = s.login("acme", "alice", "a1").await;
    s.stop().await;
    assert_eq!(c.closed().await, Closed::Frame(CloseCode::ServiceRestart.code(), "server shutting down".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_of_own_deliveries_do_not_count_against_the_rate_limit() {
    let s = TestServer::start_with(|c| {
        c.limits.rates.rate_per_sec = 1;
        c.limits.rates.rate_burst = 20;
    })
    .await;
    let mut bob = s.login("acme", "bob", "b1").await;
    let mut alice = s.login("acme", "alice", "a1").await;
    for i in 0..20 {
        alice.send_text("bob", &format!("m{i}"), "x").await.unwrap();
    }
    // Twenty single-id acks, then ten pings: the pings fit in the burst only
    // if the acks were not counted.
    bob.receive_and_ack(20).await;
    for _ in 0..10 {
        match bob.request(Body::Ping(pb::Ping {})).await.body {
            Some(Body::Pong(_)) => {}
            other => panic!("expected Pong, got {other:?}"),
        }
    }
    // Acks of ids this connection never delivered do count.
    let mut limited = false;
    for _ in 0..30 {
        let req_id = bob.next_req_id();
        bob.send_frame(&pb::Frame {
            req_id,
            body: Some(Body::Ack(pb::Ack {
                msg_ids: vec!["0190b1f2-0000-7000-8000-000000000000".into()],
                event_ids: vec![],
            })),
        })
        .await;
        let ping = bob.request(Body::Ping(pb::Ping {})).await;
        if matches!(ping.body, Some(Body::Error(_))) {
            limited = true;
            break;
        }
    }
    assert!(limited, "unknown acks are rate limited like any frame");
    s.stop().await;
}

/// A pending store whose ack writes wait at a gate the test opens.
struct GatedAcks {
    inner: std::sync::Arc<dyn storage::PendingStore>,
    gate: tokio::sync::Semaphore,
}

#[async_trait::async_trait]
impl storage::PendingStore for GatedAcks {
    async fn pending(
        &self,
        device: &storage::DeviceKey,
        after: Option<&storage::PendingCursor>,
        limit: usize,
    ) -> Result<Vec<pb::Message>, storage::StorageError> {
        self.inner.pending(device, after, limit).await
    }
    async fn pending_between(
        &self,
        device: &storage::DeviceKey,
        conversation_id: &str,
        after_seq: u64,
        before_seq: u64,
        limit: usize,
    ) -> Result<Vec<pb::Message>, storage::StorageError> {
        self.inner.pending_between(device, conversation_id, after_seq, before_seq, limit).await
    }
    async fn pending_count(&self, device: &storage::DeviceKey) -> Result<u64, storage::StorageError> {
        self.inner.pending_count(device).await
    }
    async fn ack(&self, device: &storage::DeviceKey, ids: &[String]) -> Result<usize, storage::StorageError> {
        let _open = self.gate.acquire().await;
        self.inner.ack(device, ids).await
    }
    async fn ack_batch(
        &self,
        acks: &[(std::sync::Arc<storage::DeviceKey>, Vec<String>)],
    ) -> Result<usize, storage::StorageError> {
        let _open = self.gate.acquire().await;
        self.inner.ack_batch(acks).await
    }
    async fn pending_events(
        &self,
        device: &storage::DeviceKey,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<storage::PendingEvent>, storage::StorageError> {
        self.inner.pending_events(device, after, limit).await
    }
    async fn ack_events(
        &self,
        acks: &[(std::sync::Arc<storage::DeviceKey>, Vec<String>)],
    ) -> Result<usize, storage::StorageError> {
        self.inner.ack_events(acks).await
    }
}

/// While no ack can be stored and the node's ack queue is full, a client
/// acking each message as it reads it is never held up: its pings are
/// answered and new messages still reach it. Every ack is stored once the
/// store is back, also those held by a connection that closed meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_never_block_a_connection_and_none_is_lost() {
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let mut config = dongdong_tests::server::test_config(dir.path());
    config.limits.dispatch.ack_queue = 16;
    let (mut backends, store) = dongdong_server::open_storage(&config, "test-node").await.unwrap();
    let gated =
        std::sync::Arc::new(GatedAcks { inner: backends.pending.clone(), gate: tokio::sync::Semaphore::new(0) });
    backends.pending = gated.clone();
    let s = TestServer::start_on(config, backends, store, dir).await;
    let mut bob = s.login("acme", "bob", "b1").await;
    let mut alice = s.login("acme", "alice", "a1").await;
    for i in 0..100 {
        alice.send_text("bob", &format!("m{i}"), "x").await.unwrap();
        let d = bob.next_deliver().await;
        bob.ack(vec![msg(&d).msg_id.clone()]).await;
    }
    // 100 ack frames, room for 16, none stored: bob's connection holds the rest.
    let pong = tokio::time::timeout(Duration::from_secs(2), bob.request(Body::Ping(pb::Ping {}))).await;
    assert!(matches!(pong.expect("a Ping is answered while acks wait").body, Some(Body::Pong(_))));
    let late = alice.send_text("bob", "late", "still delivered").await.unwrap();
    assert_eq!(msg(&bob.next_deliver().await).msg_id, late.msg_id);
    bob.ack(vec![late.msg_id]).await;
    let (_, metrics) = dongdong_tests::http::get(&s.http_url, "/metrics").await;
    assert!(
        metrics.lines().any(|l| l.starts_with("dongdong_ack_queue_full_total") && !l.ends_with(" 0")),
        "the queue was full and the connection held acks:\n{metrics}"
    );
    // Bob leaves with acks still held; then the store comes back.
    bob.close().await;
    s.wait_presence("acme", "bob", 0).await;
    gated.gate.add_permits(1_000_000);
    let b1 = storage::DeviceKey::new("acme", "bob", "b1");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while s.backends.pending.pending_count(&b1).await.unwrap() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the held acks were never stored");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let again = s.login("acme", "bob", "b1").await;
    assert_eq!(again.auth_ok.as_ref().unwrap().pending_count, 0, "all 101 acks were stored");
    s.stop().await;
}
