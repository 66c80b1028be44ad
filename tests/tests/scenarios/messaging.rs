//! The 1:1 message path: persist before ack, idempotency, order, fan-out to
//! devices, replay on connect, history, tenants.

use async_trait::async_trait;
use dongdong_tests::client::{Client, code, msg, text_content};
use dongdong_tests::server::{TestServer, test_config};
use im_core::pb::{self, Message};
use im_core::{Encoding, ErrorCode};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use storage::{Appended, Conversation, HistoryPage, HistoryQuery, MessageStore, NewMessage, StorageError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_ack_deliver_ack_then_nothing_pending() {
    let s = TestServer::start().await;
    let mut bob = s.login("acme", "bob", "b1").await;
    let mut alice = s.login("acme", "alice", "a1").await;
    let ack = alice.send_text("bob", "c-1", "hello bob").await.unwrap();
    assert_eq!(ack.seq, 1);
    assert_eq!(ack.client_msg_id, "c-1");
    assert_eq!(ack.conversation_id, im_core::conversation_id("acme", "alice", "bob"));
    assert!(!ack.duplicate);
    let d = bob.next_deliver().await;
    assert!(!d.replay);
    let m = msg(&d);
    assert_eq!(
        (m.msg_id.as_str(), m.seq, m.from_user.as_str(), m.from_device.as_str()),
        (ack.msg_id.as_str(), 1, "alice", "a1")
    );
    assert_eq!(m.content, Some(text_content("hello bob")));
    bob.ack(vec![m.msg_id.clone()]).await;
    // Bob answers; the conversation continues at seq 2.
    let reply = bob.send_text("alice", "r-1", "hi alice").await.unwrap();
    assert_eq!(reply.seq, 2);
    assert_eq!(msg(&alice.next_deliver().await).seq, 2);
    bob.close().await;
    s.wait_presence("acme", "bob", 0).await;
    let again = s.login("acme", "bob", "b1").await;
    assert_eq!(again.auth_ok.as_ref().unwrap().pending_count, 0, "acked messages are not pending");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_send_survives_a_restart_on_the_same_data() {
    let s = TestServer::start().await;
    let (config, dir) = (s.config.clone(), s.dir.clone());
    let mut alice = s.login("acme", "alice", "a1").await;
    let mut acks = Vec::new();
    for i in 0..20 {
        acks.push(alice.send_text("bob", &format!("m{i}"), &format!("text {i}")).await.unwrap());
    }
    s.stop().await;
    let (backends, store) = dongdong_server::open_storage(&config, "test-node").await.unwrap();
    let s = TestServer::start_on(config, backends, store, dir).await;
    let mut bob = s.login("acme", "bob", "b1").await;
    assert_eq!(bob.auth_ok.as_ref().unwrap().pending_count, 20);
    let got = bob.receive_and_ack(20).await;
    let ids: Vec<_> = got.iter().map(|d| msg(d).msg_id.clone()).collect();
    assert_eq!(ids, acks.iter().map(|a| a.msg_id.clone()).collect::<Vec<_>>());
    assert!(got.iter().all(|d| d.replay));
    s.stop().await;
}

/// A message store with injected faults: appends fail while `failing` is
/// set; with `jitter`, each append takes a random 0–3 ms before it reaches
/// the real store and again before it completes, so appends started in one
/// order complete in another.
struct FaultyStore {
    inner: Arc<dyn MessageStore>,
    failing: AtomicBool,
    jitter: bool,
}

impl FaultyStore {
    fn wrap(inner: Arc<dyn MessageStore>, failing: bool, jitter: bool) -> Arc<Self> {
        Arc::new(Self { inner, failing: AtomicBool::new(failing), jitter })
    }

    async fn fault(jitter: bool, failing: &AtomicBool) -> Result<(), StorageError> {
        if jitter {
            let micros = rand::random_range(0..3_000);
            tokio::time::sleep(std::time::Duration::from_micros(micros)).await;
        }
        if failing.load(Ordering::SeqCst) {
            return Err(StorageError::Unavailable("injected fault: disk gone".into()));
        }
        Ok(())
    }
}

#[async_trait]
impl MessageStore for FaultyStore {
    async fn append(&self, msg: NewMessage) -> Result<Appended, StorageError> {
        Self::fault(self.jitter, &self.failing).await?;
        self.inner.append(msg).await
    }
    async fn start_append(&self, msg: NewMessage) -> Result<storage::PendingAppend, StorageError> {
        Self::fault(self.jitter, &self.failing).await?;
        let appended = self.inner.start_append(msg).await?;
        let jitter = self.jitter;
        Ok(Box::pin(async move {
            Self::fault(jitter, &AtomicBool::new(false)).await?;
            appended.await
        }))
    }
    async fn get(&self, t: &str, c: &str, seq: u64) -> Result<Option<Message>, StorageError> {
        self.inner.get(t, c, seq).await
    }
    async fn conversation(&self, t: &str, c: &str) -> Result<Option<Conversation>, StorageError> {
        self.inner.conversation(t, c).await
    }
    async fn history(&self, q: HistoryQuery) -> Result<HistoryPage, StorageError> {
        self.inner.history(q).await
    }
    async fn get_by_id(&self, t: &str, id: &str) -> Result<Option<Message>, StorageError> {
        self.inner.get_by_id(t, id).await
    }
    async fn mark_read(&self, read: storage::MarkRead) -> Result<storage::MarkOutcome, StorageError> {
        self.inner.mark_read(read).await
    }
    async fn conversations(
        &self,
        t: &str,
        user: &str,
        after: Option<&storage::ConversationCursor>,
        limit: usize,
    ) -> Result<storage::ConversationsPage, StorageError> {
        self.inner.conversations(t, user, after, limit).await
    }
    async fn recall(
        &self,
        t: &str,
        id: &str,
        by: &storage::DeviceKey,
    ) -> Result<Option<storage::RecallOutcome>, StorageError> {
        self.inner.recall(t, id, by).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_store_gives_retryable_error_and_no_ack() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let config = test_config(dir.path());
    let (mut backends, store) = dongdong_server::open_storage(&config, "test-node").await.unwrap();
    let flaky = FaultyStore::wrap(backends.messages.clone(), true, false);
    backends.messages = flaky.clone();
    let s = TestServer::start_on(config, backends, store, dir).await;
    let mut bob = s.login("acme", "bob", "b1").await;
    let mut alice = s.login("acme", "alice", "a1").await;
    let err = alice.send_text("bob", "c-1", "lost?").await.unwrap_err();
    assert_eq!(code(&err), ErrorCode::Unavailable);
    assert!(err.retryable);
    // The client retries the same client_msg_id once storage is back.
    flaky.failing.store(false, Ordering::SeqCst);
    let ack = alice.send_text("bob", "c-1", "lost?").await.unwrap();
    assert_eq!(ack.seq, 1, "the failed attempt used no seq");
    assert!(!ack.duplicate);
    let d = bob.next_deliver().await;
    assert_eq!(msg(&d).msg_id, ack.msg_id, "the first thing bob ever receives is the stored message");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_client_msg_id_gives_same_ids_and_one_delivery() {
    let s = TestServer::start().await;
    let mut bob = s.login("acme", "bob", "b1").await;
    let mut alice = s.login("acme", "alice", "a1").await;
    let first = alice.send_text("bob", "dup", "once").await.unwrap();
    let second = alice.send_text("bob", "dup", "once").await.unwrap();
    assert_eq!((second.msg_id.as_str(), second.seq), (first.msg_id.as_str(), first.seq));
    assert!(second.duplicate);
    // From another device of the same sender too.
    let mut alice2 = s.login("acme", "alice", "a2").await;
    let third = alice2.send_text("bob", "dup", "once").await.unwrap();
    assert_eq!(third.msg_id, first.msg_id);
    let next = alice.send_text("bob", "other", "twice").await.unwrap();
    assert_eq!(next.seq, 2, "no seq was spent on the duplicates");
    // Bob sees "once" exactly once, then "twice".
    let seen: Vec<u64> = bob.receive_and_ack(2).await.iter().map(|d| msg(d).seq).collect();
    assert_eq!(seen, vec![1, 2]);
    s.stop().await;
}

/// One connection pipelines 300 messages to one peer, 50 at a time (within
/// `max_sends_in_flight`): their seqs follow the order they were written,
/// and the peer and the sender's other device read them in that order.
async fn pipelined_sends_keep_the_senders_order(s: TestServer) {
    let mut bob = s.login("acme", "bob", "b1").await;
    let mut alice_other = s.login("acme", "alice", "a2").await;
    let mut alice = s.login("acme", "alice", "a1").await;
    let texts: Vec<String> = (1..=300).map(|i| format!("m{i}")).collect();
    let mut acked = Vec::new();
    for batch in texts.chunks(50) {
        let mut reqs = Vec::new();
        for t in batch {
            reqs.push((alice.send_text_nowait("bob", &format!("c-{t}"), t).await, t.clone()));
        }
        for (req, t) in reqs {
            match alice.reply(req).await.body {
                Some(pb::frame::Body::SendAck(a)) => acked.push((a.seq, t)),
                other => panic!("expected SendAck for {t}, got {other:?}"),
            }
        }
    }
    acked.sort_unstable();
    let by_seq: Vec<&str> = acked.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(by_seq, texts.iter().map(String::as_str).collect::<Vec<_>>(), "seqs follow the order written");
    for device in [&mut bob, &mut alice_other] {
        let got: Vec<String> = device
            .receive_and_ack(300)
            .await
            .iter()
            .map(|d| dongdong_tests::client::text_of(msg(d)).to_string())
            .collect();
        assert_eq!(got, texts, "received in the order alice wrote them");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_sends_arrive_in_the_order_written() {
    pipelined_sends_keep_the_senders_order(TestServer::start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_sends_keep_their_order_when_appends_complete_out_of_order() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let config = test_config(dir.path());
    let (mut backends, store) = dongdong_server::open_storage(&config, "test-node").await.unwrap();
    backends.messages = FaultyStore::wrap(backends.messages.clone(), false, true);
    pipelined_sends_keep_the_senders_order(TestServer::start_on(config, backends, store, dir).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_get_gap_free_seq_and_devices_see_seq_order() {
    let s = TestServer::start().await;
    // Two extra devices watch the conversation: one of each user.
    let mut alice_watch = s.login("acme", "alice", "watch").await;
    let mut bob_watch = s.login("acme", "bob", "watch").await;
    const PER_DEVICE: usize = 25;
    let mut senders = Vec::new();
    for i in 0..8 {
        let (me, peer) = if i % 2 == 0 { ("alice", "bob") } else { ("bob", "alice") };
        let mut c = s.login("acme", me, &format!("d{i}")).await;
        senders.push(tokio::spawn(async move {
            // Pipeline all sends, then collect the acks.
            let mut reqs = Vec::new();
            for n in 0..PER_DEVICE {
                reqs.push(c.send_text_nowait(peer, &format!("{i}-{n}"), "x").await);
            }
            let mut seqs = Vec::new();
            for r in reqs {
                match c.reply(r).await.body {
                    Some(pb::frame::Body::SendAck(a)) => seqs.push(a.seq),
                    other => panic!("expected SendAck, got {other:?}"),
                }
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for t in senders {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (1..=(8 * PER_DEVICE) as u64).collect::<Vec<_>>());
    for watcher in [&mut alice_watch, &mut bob_watch] {
        let seqs: Vec<u64> = watcher.receive_and_ack(8 * PER_DEVICE).await.iter().map(|d| msg(d).seq).collect();
        assert_eq!(seqs, (1..=(8 * PER_DEVICE) as u64).collect::<Vec<_>>(), "delivered in seq order");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_online_device_of_both_users_receives() {
    let s = TestServer::start().await;
    let mut b1 = s.login("acme", "bob", "phone").await;
    let mut b2 = s.login("acme", "bob", "laptop").await;
    let mut a1 = s.login("acme", "alice", "phone").await;
    let mut a2 = s.login("acme", "alice", "laptop").await;
    let ack = a1.send_text("bob", "c1", "to all of bob").await.unwrap();
    for c in [&mut b1, &mut b2, &mut a2] {
        let d = c.next_deliver().await;
        assert_eq!(msg(&d).msg_id, ack.msg_id);
        c.ack(vec![ack.msg_id.clone()]).await;
    }
    // The sending device gets no Deliver of its own message: the next thing
    // it receives is bob's reply.
    let reply = b2.send_text("alice", "r1", "back").await.unwrap();
    assert_eq!(msg(&a1.next_deliver().await).msg_id, reply.msg_id);
    assert_eq!(msg(&b1.next_deliver().await).msg_id, reply.msg_id);
    assert_eq!(msg(&a2.next_deliver().await).msg_id, reply.msg_id);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_replays_pending_in_order_before_live() {
    let s = TestServer::start().await;
    // Bob has been seen once, then goes offline.
    s.login("acme", "bob", "b1").await.close().await;
    s.wait_presence("acme", "bob", 0).await;
    let mut alice = s.login("acme", "alice", "a1").await;
    let mut carol = s.login("acme", "carol", "c1").await;
    for i in 0..30 {
        alice.send_text("bob", &format!("a{i}"), "from alice").await.unwrap();
        if i % 3 == 0 {
            carol.send_text("bob", &format!("c{i}"), "from carol").await.unwrap();
        }
    }
    // Keep sending while bob connects: live messages must wait for the replay.
    let sender = tokio::spawn(async move {
        for i in 30..60 {
            alice.send_text("bob", &format!("a{i}"), "live").await.unwrap();
        }
        alice
    });
    let mut bob = s.login("acme", "bob", "b1").await;
    let pending = bob.auth_ok.as_ref().unwrap().pending_count;
    assert!(pending >= 40, "30 from alice and 10 from carol were pending, got {pending}");
    let _alice = sender.await.unwrap();
    let got = bob.receive_and_ack(70).await;
    let ids: HashSet<_> = got.iter().map(|d| msg(d).msg_id.clone()).collect();
    assert_eq!(ids.len(), 70, "every message once");
    let mut replay_over = false;
    let mut last_seq = std::collections::HashMap::new();
    for d in &got {
        let m = msg(d);
        let prev = last_seq.insert(m.conversation_id.clone(), m.seq).unwrap_or(0);
        assert_eq!(m.seq, prev + 1, "conversation {} in seq order without gaps", m.conversation_id);
        if !d.replay {
            replay_over = true;
        } else {
            assert!(!replay_over, "a replayed message after a live one");
        }
    }
    assert!(got.iter().filter(|d| d.replay).count() as u64 >= pending);
    // Unacked deliveries are replayed again on the next connection.
    let extra = carol.send_text("bob", "late", "not acked").await.unwrap();
    let d = bob.next_deliver().await;
    assert_eq!(msg(&d).msg_id, extra.msg_id);
    bob.close().await;
    s.wait_presence("acme", "bob", 0).await;
    let mut bob = s.login("acme", "bob", "b1").await;
    assert_eq!(bob.auth_ok.as_ref().unwrap().pending_count, 1);
    let d = bob.next_deliver().await;
    assert!(d.replay);
    assert_eq!(msg(&d).msg_id, extra.msg_id);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_to_a_user_never_seen_reach_their_first_device() {
    let s = TestServer::start().await;
    let mut alice = s.login("acme", "alice", "a1").await;
    let ack = alice.send_text("newbie", "n1", "welcome").await.unwrap();
    let mut newbie = s.login("acme", "newbie", "phone").await;
    assert_eq!(newbie.auth_ok.as_ref().unwrap().pending_count, 1);
    let d = newbie.next_deliver().await;
    assert!(d.replay);
    assert_eq!(msg(&d).msg_id, ack.msg_id);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_both_ways_and_checks_membership() {
    let s = TestServer::start().await;
    let mut alice = s.login("acme", "alice", "a1").await;
    for i in 0..25 {
        alice.send_text("bob", &format!("h{i}"), &format!("msg {i}")).await.unwrap();
    }
    let conv = im_core::conversation_id("acme", "alice", "bob");
    let seqs = |p: &pb::HistoryPage| p.messages.iter().map(|m| m.seq).collect::<Vec<_>>();
    let p =
        alice.sync(pb::SyncRequest { conversation_id: conv.clone(), limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!((seqs(&p), p.has_more), ((1..=10).collect(), true));
    let p = alice
        .sync(pb::SyncRequest { conversation_id: conv.clone(), after_seq: 20, limit: 10, ..Default::default() })
        .await
        .unwrap();
    assert_eq!((seqs(&p), p.has_more), ((21..=25).collect(), false));
    // Paging back from the newest, as a chat window does.
    let p = alice
        .sync(pb::SyncRequest { with_user: "bob".into(), before_seq: u64::MAX, limit: 10, ..Default::default() })
        .await
        .unwrap();
    assert_eq!((seqs(&p), p.has_more), ((16..=25).collect(), true));
    assert_eq!(p.conversation_id, conv);
    let p = alice
        .sync(pb::SyncRequest { conversation_id: conv.clone(), before_seq: 16, limit: 0, ..Default::default() })
        .await
        .unwrap();
    assert_eq!((seqs(&p), p.has_more), ((1..=15).collect(), false));
    // The server caps the page size.
    let p = alice
        .sync(pb::SyncRequest { conversation_id: conv.clone(), limit: 100_000, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(p.messages.len(), 25);
    // Bob may read it too; mallory may not.
    let mut bob = s.login("acme", "bob", "b1").await;
    assert_eq!(
        bob.sync(pb::SyncRequest { conversation_id: conv.clone(), ..Default::default() }).await.unwrap().messages.len(),
        25
    );
    let mut mallory = s.login("acme", "mallory", "m1").await;
    let e = mallory.sync(pb::SyncRequest { conversation_id: conv.clone(), ..Default::default() }).await.unwrap_err();
    assert_eq!(code(&e), ErrorCode::Forbidden);
    let e = mallory.sync(pb::SyncRequest { conversation_id: "cnope".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(code(&e), ErrorCode::InvalidArgument, "not a conversation id");
    let unknown = "c0123456789abcdef0123456789abcdef";
    let e = mallory.sync(pb::SyncRequest { conversation_id: unknown.into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(code(&e), ErrorCode::NotFound);
    let e = mallory.sync(pb::SyncRequest::default()).await.unwrap_err();
    assert_eq!(code(&e), ErrorCode::InvalidArgument);
    let e = alice
        .sync(pb::SyncRequest { conversation_id: conv, after_seq: 1, before_seq: 5, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(code(&e), ErrorCode::InvalidArgument);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_walls() {
    let s = TestServer::start().await;
    let mut bob_other = s.login("globex", "bob", "b1").await;
    let mut bob = s.login("acme", "bob", "b1").await;
    let mut alice = s.login("acme", "alice", "a1").await;
    let ack = alice.send_text("bob", "t1", "acme only").await.unwrap();
    assert_eq!(msg(&bob.next_deliver().await).msg_id, ack.msg_id);
    // bob of globex gets nothing: his next frame is the Pong to his own Ping.
    match bob_other.request(pb::frame::Body::Ping(pb::Ping {})).await.body {
        Some(pb::frame::Body::Pong(_)) => {}
        other => panic!("globex bob received {other:?}"),
    }
    assert_eq!(bob_other.buffered_len(), 0);
    let e = bob_other
        .sync(pb::SyncRequest { conversation_id: ack.conversation_id.clone(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(code(&e), ErrorCode::NotFound);
    let p = bob_other.sync(pb::SyncRequest { with_user: "alice".into(), ..Default::default() }).await;
    assert_eq!(code(&p.unwrap_err()), ErrorCode::NotFound, "alice of globex never wrote to globex bob");
    // A reply from globex bob to "alice" goes to globex alice, never to acme alice.
    let r = bob_other.send_text("alice", "x", "hello?").await.unwrap();
    assert_ne!(r.conversation_id, ack.conversation_id);
    assert_eq!(r.seq, 1);
    let mine = alice.request(pb::frame::Body::Ping(pb::Ping {})).await;
    assert!(matches!(mine.body, Some(pb::frame::Body::Pong(_))));
    assert_eq!(alice.buffered_len(), 0, "acme alice received nothing from globex");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_text_frames_work_end_to_end() {
    let s = TestServer::start().await;
    let mut bob = Client::connect(&s.ws_url, Encoding::Json).await;
    let ok = bob.auth(&s.token("acme", "bob"), "web").await.unwrap();
    assert_eq!(ok.user_id, "bob");
    let mut alice = Client::connect(&s.ws_url, Encoding::Json).await;
    alice.auth(&s.token("acme", "alice"), "web").await.unwrap();
    let image = pb::Content {
        kind: Some(pb::content::Kind::Image(pb::Image {
            url: "https://img.example/1.png".into(),
            width: 10,
            height: 20,
            size_bytes: 300,
            ..Default::default()
        })),
    };
    let ack = alice.send("bob", "j1", image.clone()).await.unwrap();
    let d = bob.next_deliver().await;
    assert_eq!(msg(&d).content, Some(image));
    assert_eq!(msg(&d).msg_id, ack.msg_id);
    // Invalid content is refused with a clear code.
    let e = alice.send("bob", "j2", pb::Content { kind: None }).await.unwrap_err();
    assert_eq!(code(&e), ErrorCode::InvalidArgument);
    let bad_json = pb::Content {
        kind: Some(pb::content::Kind::Custom(pb::Custom { r#type: "order".into(), json: "{oops".into() })),
    };
    let e = alice.send("bob", "j3", bad_json).await.unwrap_err();
    assert_eq!(code(&e), ErrorCode::InvalidArgument);
    let e = alice.send_text("bob", "", "no id").await.unwrap_err();
    assert_eq!(code(&e), ErrorCode::InvalidArgument);
    s.stop().await;
}

fn typing(to: &str, on: bool) -> pb::frame::Body {
    pb::frame::Body::Typing(pb::Typing { to_user: to.into(), typing: on, ..Default::default() })
}

async fn next_typing(c: &mut Client) -> pb::Typing {
    c.next_matching("Typing", |b| match b {
        pb::frame::Body::Typing(t) => Some(t.clone()),
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_reaches_the_peers_devices_and_nothing_else() {
    let s = TestServer::start().await;
    let mut alice = s.login("acme", "alice", "a1").await;
    let mut bob_phone = s.login("acme", "bob", "phone").await;
    let mut bob_web = s.login("acme", "bob", "web").await;
    let mut other_bob = s.login("other", "bob", "phone").await;
    let conv = im_core::conversation_id("acme", "alice", "bob");

    // Every device of the peer, with who and where; no answer to the sender.
    alice.send_frame(&pb::Frame { req_id: 0, body: Some(typing("bob", true)) }).await;
    for bob in [&mut bob_phone, &mut bob_web] {
        let t = next_typing(bob).await;
        assert_eq!((t.from_user.as_str(), t.conversation_id.as_str(), t.typing), ("alice", conv.as_str(), true));
        assert!(t.to_user.is_empty());
    }
    // A keystroke later it is dropped; the stop goes through.
    alice.send_frame(&pb::Frame { req_id: 0, body: Some(typing("bob", true)) }).await;
    alice.send_frame(&pb::Frame { req_id: 0, body: Some(typing("bob", false)) }).await;
    assert!(!next_typing(&mut bob_phone).await.typing, "the repeated 'typing' was not forwarded");
    // Never stored or pending: a device connecting later gets none of it,
    // and another tenant's bob never did.
    let mut bob_late = s.login("acme", "bob", "late").await;
    alice.send_text("bob", "after-typing", "here is my question").await.unwrap();
    let first = bob_late.next_frame().await;
    assert!(matches!(first.body, Some(pb::frame::Body::Deliver(_))), "{first:?}");
    let mut carol = s.login("other", "carol", "c").await;
    carol.send_text("bob", "x", "hi from the other tenant").await.unwrap();
    assert!(matches!(other_bob.next_frame().await.body, Some(pb::frame::Body::Deliver(_))));
    // Typing to someone offline is no error.
    alice.send_frame(&pb::Frame { req_id: 0, body: Some(typing("nobody-here", true)) }).await;
    // Bad input gets a clear error.
    for bad in [typing("", true), typing("alice", true), typing(&"x".repeat(200), true)] {
        let e = alice.request(bad).await;
        let Some(pb::frame::Body::Error(e)) = e.body else { panic!("{e:?}") };
        assert_eq!(code(&e), ErrorCode::InvalidArgument, "{e:?}");
    }
    assert_eq!(alice.send_text("bob", "still-fine", "still fine").await.unwrap().seq, 2);
}

/// A connection's signals take effect in the order sent: "stopped" right
/// after "typing" never arrives first, which would leave the peer showing
/// "typing" after the sender stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_then_stopped_arrive_in_the_order_sent() {
    let s = TestServer::start().await;
    let mut alice = s.login("acme", "alice", "a1").await;
    let mut bob = s.login("acme", "bob", "b1").await;
    for attempt in 0..20 {
        let signals = [true, false].map(|on| pb::Frame { req_id: 0, body: Some(typing("bob", on)) });
        alice.send_frames(&signals).await;
        // "typing" may arrive or be replaced by the "stopped" queued after it.
        while next_typing(&mut bob).await.typing {}
        while let Some(Ok(f)) = bob.recv(std::time::Duration::from_millis(100)).await {
            let late = matches!(&f.body, Some(pb::frame::Body::Typing(t)) if t.typing);
            assert!(!late, "attempt {attempt}: 'typing' arrived after the 'stopped' sent after it");
        }
    }
    s.stop().await;
}

async fn next_presence(c: &mut Client) -> pb::PresenceUpdate {
    c.next_matching("PresenceUpdate", |b| match b {
        pb::frame::Body::PresenceUpdate(u) => Some(u.clone()),
        _ => None,
    })
    .await
}

fn subscribe(users: &[&str]) -> pb::frame::Body {
    pb::frame::Body::PresenceSubscribe(pb::PresenceSubscribe { users: users.iter().map(|u| u.to_string()).collect() })
}

/// A subscribe and an unsubscribe sent in one write take effect in that
/// order: the connection is left watching nobody it unsubscribed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_unsubscribe_right_after_subscribe_takes_effect_in_order() {
    let s = TestServer::start().await;
    let mut w = s.login("acme", "watcher", "w").await;
    let mut witness = s.login("acme", "witness", "w").await;
    let Some(pb::frame::Body::PresenceUpdate(_)) = witness.request(subscribe(&["dave"])).await.body else { panic!() };
    let unsubscribe = pb::frame::Body::PresenceUnsubscribe(pb::PresenceUnsubscribe { users: vec!["dave".into()] });
    w.send_frames(&[
        pb::Frame { req_id: 3, body: Some(subscribe(&["dave", "bob"])) },
        pb::Frame { req_id: 0, body: Some(unsubscribe) },
    ])
    .await;
    for _ in 0..2 {
        assert_eq!(w.next_frame().await.req_id, 3, "the subscription's answer");
    }
    let _dave = s.login("acme", "dave", "d").await;
    let told = next_presence(&mut witness).await;
    assert_eq!((told.user.as_str(), told.online), ("dave", true));
    let _bob = s.login("acme", "bob", "b").await;
    let u = next_presence(&mut w).await;
    assert_eq!((u.user.as_str(), u.online), ("bob", true), "dave was unsubscribed before he came online");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_now_and_on_each_change_coalesced() {
    let s = TestServer::start().await;
    let mut w = s.login("acme", "watcher", "w").await;
    // The answer: one update per user, with the request's req_id.
    let req = pb::Frame { req_id: 7, body: Some(subscribe(&["bob", "carol", "dave"])) };
    w.send_frame(&req).await;
    let mut now = Vec::new();
    for _ in 0..3 {
        let f = w.next_frame().await;
        assert_eq!(f.req_id, 7);
        let Some(pb::frame::Body::PresenceUpdate(u)) = f.body else { panic!("{f:?}") };
        now.push((u.user, u.online, u.last_seen_ms));
    }
    let never = |u: &str| (u.to_string(), false, 0);
    assert_eq!(now, [never("bob"), never("carol"), never("dave")]);

    // bob comes online with two devices: one update.
    let bob = s.login("acme", "bob", "phone").await;
    let bob_web = s.login("acme", "bob", "web").await;
    let u = next_presence(&mut w).await;
    assert_eq!((u.user.as_str(), u.online), ("bob", true));
    // carol flaps within the window and another tenant's dave comes: nothing.
    s.login("acme", "carol", "c").await.close().await;
    let _other_dave = s.login("other", "dave", "d").await;
    // One device of bob leaves: still online, nothing; then the last leaves.
    bob_web.close().await;
    let dave = s.login("acme", "dave", "d").await;
    let u = next_presence(&mut w).await;
    assert_eq!((u.user.as_str(), u.online), ("dave", true), "carol's flap and bob's second device said nothing");
    let before = im_core::now_ms();
    bob.close().await;
    let u = next_presence(&mut w).await;
    assert_eq!((u.user.as_str(), u.online), ("bob", false));
    assert!(u.last_seen_ms >= before && u.last_seen_ms <= im_core::now_ms(), "{u:?}");
    // A new subscription tells when bob was last seen.
    let mut w2 = s.login("acme", "watcher2", "w").await;
    let Some(pb::frame::Body::PresenceUpdate(b)) = w2.request(subscribe(&["bob"])).await.body else { panic!() };
    assert_eq!((b.online, b.last_seen_ms), (false, u.last_seen_ms));

    // Unsubscribed from dave: his leaving is not told; bob's return is.
    w.send_frame(&pb::Frame {
        req_id: 0,
        body: Some(pb::frame::Body::PresenceUnsubscribe(pb::PresenceUnsubscribe { users: vec!["dave".into()] })),
    })
    .await;
    dave.close().await;
    let _bob = s.login("acme", "bob", "phone").await;
    let u = next_presence(&mut w).await;
    assert_eq!((u.user.as_str(), u.online), ("bob", true), "nothing about dave");

    // Bad input and the limit.
    for bad in [subscribe(&[]), subscribe(&[""]), subscribe(&[&"x".repeat(200)])] {
        let Some(pb::frame::Body::Error(e)) = w.request(bad).await.body else { panic!() };
        assert_eq!(code(&e), ErrorCode::InvalidArgument, "{e:?}");
    }
    let many: Vec<String> = (0..201).map(|i| format!("u{i}")).collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    let Some(pb::frame::Body::Error(e)) = w.request(subscribe(&refs)).await.body else { panic!() };
    assert_eq!(code(&e), ErrorCode::InvalidArgument);
    // 198 more fit (2 watched), the 199th does not.
    let Some(pb::frame::Body::PresenceUpdate(_)) = w.request(subscribe(&refs[..198])).await.body else { panic!() };
    let Some(pb::frame::Body::Error(e)) = w.request(subscribe(&refs[198..199])).await.body else { panic!() };
    assert_eq!(code(&e), ErrorCode::TooLarge, "{e:?}");
}
