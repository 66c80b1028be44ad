//! Read receipts, unread counts, the conversation list and recall, over
//! real WebSockets: what each device sees, what an offline device gets
//! when it comes back, and the errors bad requests get.

use dongdong_tests::client::{Client, code, msg, text_of};
use dongdong_tests::server::TestServer;
use im_core::pb::{self, frame::Body};
use im_core::{ErrorCode, Role};
use std::time::Duration;

fn mark_read(conversation_id: &str, up_to_seq: u64) -> Body {
    Body::MarkRead(pb::MarkRead { conversation_id: conversation_id.into(), up_to_seq })
}

fn list(cursor: &str, limit: u32) -> Body {
    Body::ConversationsRequest(pb::ConversationsRequest { cursor: cursor.into(), limit })
}

fn recall(msg_id: &str) -> Body {
    Body::Recall(pb::Recall { msg_id: msg_id.into() })
}

async fn answer_receipt(c: &mut Client, body: Body) -> pb::ReadReceipt {
    match c.request(body).await.body {
        Some(Body::ReadReceipt(r)) => r,
        other => panic!("expected ReadReceipt, got {other:?}"),
    }
}

async fn answer_page(c: &mut Client, body: Body) -> pb::ConversationPage {
    match c.request(body).await.body {
        Some(Body::ConversationPage(p)) => p,
        other => panic!("expected ConversationPage, got {other:?}"),
    }
}

async fn answer_error(c: &mut Client, body: Body) -> ErrorCode {
    match c.request(body).await.body {
        Some(Body::Error(e)) => code(&e),
        other => panic!("expected Error, got {other:?}"),
    }
}

async fn pushed_receipt(c: &mut Client) -> pb::ReadReceipt {
    c.next_matching("ReadReceipt", |b| match b {
        Body::ReadReceipt(r) => Some(r.clone()),
        _ => None,
    })
    .await
}

async fn pushed_recall(c: &mut Client) -> pb::Recalled {
    c.next_matching("Recalled", |b| match b {
        Body::Recalled(r) => Some(r.clone()),
        _ => None,
    })
    .await
}

async fn ack_events(c: &mut Client, event_ids: Vec<String>) {
    c.send_frame(&pb::Frame { req_id: 0, body: Some(Body::Ack(pb::Ack { msg_ids: vec![], event_ids })) }).await;
}

/// Frames that arrive within a moment (nothing is expected).
async fn quiet(c: &mut Client) -> Vec<pb::Frame> {
    let mut out = Vec::new();
    while let Some(Ok(f)) = c.recv(Duration::from_millis(300)).await {
        out.push(f);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_reach_the_sender_and_the_readers_other_devices() {
    let s = TestServer::start().await;
    let mut alice = s.login("acme", "alice", "a1").await;
    let mut bob = s.login("acme", "bob", "b1").await;
    let mut bob_web = s.login("acme", "bob", "b2").await;
    for i in 0..3 {
        alice.send_text("bob", &format!("m{i}"), &format!("hello {i}")).await.unwrap();
    }
    let delivered: Vec<pb::Deliver> = bob.receive_and_ack(3).await;
    bob_web.receive_and_ack(3).await;
    let conv = msg(&delivered[0]).conversation_id.clone();

    let answer = answer_receipt(&mut bob, mark_read(&conv, 2)).await;
    assert_eq!((answer.reader.as_str(), answer.up_to_seq, answer.event_id.as_str()), ("bob", 2, ""));
    for c in [&mut alice, &mut bob_web] {
        let r = pushed_receipt(c).await;
        assert_eq!((r.conversation_id.as_str(), r.reader.as_str(), r.up_to_seq), (conv.as_str(), "bob", 2));
        assert!(!r.event_id.is_empty());
        ack_events(c, vec![r.event_id]).await;
    }
    // Lower: nothing moves, nobody is told. Beyond the last seq: capped.
    assert_eq!(answer_receipt(&mut bob_web, mark_read(&conv, 1)).await.up_to_seq, 2);
    assert_eq!(answer_receipt(&mut bob_web, mark_read(&conv, 50)).await.up_to_seq, 3);
    let r = pushed_receipt(&mut alice).await;
    assert_eq!(r.up_to_seq, 3);
    ack_events(&mut alice, vec![r.event_id]).await;
    assert_eq!(pushed_receipt(&mut bob).await.up_to_seq, 3);
    assert!(
        !quiet(&mut alice).await.iter().any(|f| matches!(f.body, Some(Body::ReadReceipt(_)))),
        "one receipt per move"
    );

    // Bad input, strangers and other tenants.
    assert_eq!(answer_error(&mut bob, mark_read(&conv, 0)).await, ErrorCode::InvalidArgument);
    assert_eq!(answer_error(&mut bob, mark_read("", 1)).await, ErrorCode::InvalidArgument);
    assert_eq!(answer_error(&mut bob, mark_read(&"c".repeat(100), 1)).await, ErrorCode::InvalidArgument);
    let nobody = im_core::conversation_id("acme", "bob", "nobody");
    assert_eq!(answer_error(&mut bob, mark_read(&nobody, 1)).await, ErrorCode::NotFound);
    let mut carol = s.login("acme", "carol", "c1").await;
    assert_eq!(answer_error(&mut carol, mark_read(&conv, 1)).await, ErrorCode::Forbidden);
    let mut other_bob = s.login("other", "bob", "b1").await;
    assert_eq!(answer_error(&mut other_bob, mark_read(&conv, 1)).await, ErrorCode::NotFound);
    let bad_ack = Body::Ack(pb::Ack { msg_ids: vec![], event_ids: vec!["not-an-event".into()] });
    assert_eq!(answer_error(&mut alice, bad_ack).await, ErrorCode::InvalidArgument);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_sender_learns_the_highest_receipt_when_back() {
    let s = TestServer::start().await;
    let mut alice = s.login("acme", "alice", "a1").await;
    let mut bob = s.login("acme", "bob", "b1").await;
    for i in 0..3 {
        alice.send_text("bob", &format!("m{i}"), "hi").await.unwrap();
    }
    alice.close().await;
    let delivered = bob.receive_and_ack(3).await;
    let conv = msg(&delivered[0]).conversation_id.clone();
    for seq in 1..=3 {
        assert_eq!(answer_receipt(&mut bob, mark_read(&conv, seq)).await.up_to_seq, seq);
    }
    // Back online: one receipt, the highest; acked, it is not sent again.
    let mut alice = s.login("acme", "alice", "a1").await;
    let r = pushed_receipt(&mut alice).await;
    assert_eq!((r.reader.as_str(), r.up_to_seq), ("bob", 3));
    assert!(!quiet(&mut alice).await.iter().any(|f| matches!(f.body, Some(Body::ReadReceipt(_)))), "coalesced");
    ack_events(&mut alice, vec![r.event_id]).await;
    // A ping round trip: the ack was read before the connection closes.
    alice.request(Body::Ping(pb::Ping {})).await;
    alice.close().await;
    let mut alice = s.login("acme", "alice", "a1").await;
    assert!(quiet(&mut alice).await.is_empty(), "nothing pending any more");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conversation_list_pages_newest_first_with_unread_counts() {
    let s = TestServer::start().await;
    let mut me = s.login("acme", "me", "m1").await;
    for (i, peer) in ["p0", "p1", "p2", "p3", "p4"].iter().enumerate() {
        let mut c = s.login("acme", peer, "d").await;
        for j in 0..=i {
            c.send_text("me", &format!("{peer}-{j}"), &format!("{peer} says {j}")).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let first = answer_page(&mut me, list("", 2)).await;
    let peers: Vec<&str> = first.items.iter().map(|i| i.peer.as_str()).collect();
    assert_eq!(peers, ["p4", "p3"]);
    let p4 = &first.items[0];
    assert_eq!((p4.unread, p4.last_seq, p4.read_seq, p4.peer_read_seq), (5, 5, 0, 0));
    assert_eq!(text_of(p4.last_message.as_ref().unwrap()), "p4 says 4");
    assert!(!first.next_cursor.is_empty());
    let second = answer_page(&mut me, list(&first.next_cursor, 2)).await;
    let third = answer_page(&mut me, list(&second.next_cursor, 2)).await;
    let rest: Vec<&str> = second.items.iter().chain(&third.items).map(|i| i.peer.as_str()).collect();
    assert_eq!(rest, ["p2", "p1", "p0"]);
    assert!(third.next_cursor.is_empty(), "the last page says so");
    // Reading clears the count; a reply moves the conversation up.
    answer_receipt(&mut me, mark_read(&first.items[1].conversation_id, 4)).await;
    me.send_text("p2", "reply", "thanks").await.unwrap();
    let all = answer_page(&mut me, list("", 0)).await;
    let order: Vec<(&str, u64)> = all.items.iter().map(|i| (i.peer.as_str(), i.unread)).collect();
    assert_eq!(order, [("p2", 3), ("p4", 5), ("p3", 0), ("p1", 2), ("p0", 1)]);
    assert!(all.next_cursor.is_empty());
    // Bad cursors; a huge limit is capped, not refused.
    for bad in ["nonsense", "12.c123", "x.c0123456789abcdef0123456789abcdef"] {
        assert_eq!(answer_error(&mut me, list(bad, 2)).await, ErrorCode::InvalidArgument, "{bad}");
    }
    assert_eq!(answer_page(&mut me, list("", 100_000)).await.items.len(), 5);
    let mut stranger = s.login("other", "me", "m1").await;
    assert!(answer_page(&mut stranger, list("", 10)).await.items.is_empty(), "tenant wall");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recall_reaches_every_device_and_history_keeps_only_the_trace() {
    let s = TestServer::start().await;
    let mut alice = s.login("acme", "alice", "a1").await;
    let mut alice_web = s.login("acme", "alice", "a2").await;
    let mut bob = s.login("acme", "bob", "b1").await;
    let mut bob_away = s.login("acme", "bob", "b2").await;
    let ack = alice.send_text("bob", "oops", "my card number is 4111").await.unwrap();
    bob.receive_and_ack(1).await;
    alice_web.receive_and_ack(1).await;
    bob_away.receive_and_ack(1).await;
    bob_away.request(Body::Ping(pb::Ping {})).await;
    bob_away.close().await;

    let answer = match alice.request(recall(&ack.msg_id)).await.body {
        Some(Body::Recalled(r)) => r,
        other => panic!("expected Recalled, got {other:?}"),
    };
    assert_eq!((answer.msg_id.as_str(), answer.seq, answer.by.as_str()), (ack.msg_id.as_str(), 1, "alice"));
    assert!(answer.event_id.is_empty() && answer.recalled_ms > 0);
    for c in [&mut bob, &mut alice_web] {
        let r = pushed_recall(c).await;
        assert_eq!(
            (r.msg_id.as_str(), r.conversation_id.as_str()),
            (ack.msg_id.as_str(), ack.conversation_id.as_str())
        );
        ack_events(c, vec![r.event_id]).await;
    }
    // History keeps ids, seq and who; not the words.
    let page = bob.sync(pb::SyncRequest { with_user: "alice".into(), ..Default::default() }).await.unwrap();
    let m = &page.messages[0];
    assert_eq!((m.msg_id.as_str(), m.recalled_by.as_str(), m.content.is_none()), (ack.msg_id.as_str(), "alice", true));
    // The device that was away learns it when it comes back.
    let mut bob_away = s.login("acme", "bob", "b2").await;
    assert_eq!(pushed_recall(&mut bob_away).await.msg_id, ack.msg_id);
    // Again: the same answer, no new pushes.
    match alice.request(recall(&ack.msg_id)).await.body {
        Some(Body::Recalled(r)) => assert_eq!((r.recalled_ms, r.by.as_str()), (answer.recalled_ms, "alice")),
        other => panic!("expected Recalled, got {other:?}"),
    }
    // Not the sender: FORBIDDEN; not a member, unknown, malformed.
    let theirs = bob.send_text("alice", "b-1", "mine").await.unwrap();
    assert_eq!(answer_error(&mut alice, recall(&theirs.msg_id)).await, ErrorCode::Forbidden);
    let mut carol = s.login("acme", "carol", "c1").await;
    assert_eq!(answer_error(&mut carol, recall(&theirs.msg_id)).await, ErrorCode::NotFound);
    assert_eq!(answer_error(&mut alice, recall("0190b1f2-0000-7000-8000-000000000000")).await, ErrorCode::NotFound);
    assert_eq!(answer_error(&mut alice, recall("")).await, ErrorCode::InvalidArgument);
    let mut other_bob = s.login("other", "bob", "b1").await;
    assert_eq!(answer_error(&mut other_bob, recall(&theirs.msg_id)).await, ErrorCode::NotFound, "tenant wall");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recall_after_the_window_is_too_late_except_for_admins() {
    let s = TestServer::start_with(|c| c.im.messages.recall_window = Duration::ZERO).await;
    let mut alice = s.login("acme", "alice", "a1").await;
    let ack = alice.send_text("bob", "late", "sent a while ago").await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    match alice.request(recall(&ack.msg_id)).await.body {
        Some(Body::Error(e)) => {
            assert_eq!(code(&e), ErrorCode::TooLate);
            assert!(e.message.contains("0s"), "{}", e.message);
            assert!(!e.retryable);
        }
        other => panic!("expected TOO_LATE, got {other:?}"),
    }
    let admin_token = s.token_with_role("acme", "admin", Role::Admin);
    let mut admin = Client::login(&s.ws_url, &admin_token, "console").await;
    match admin.request(recall(&ack.msg_id)).await.body {
        Some(Body::Recalled(r)) => assert_eq!(r.by, "admin"),
        other => panic!("expected Recalled, got {other:?}"),
    }
    assert_eq!(pushed_recall(&mut alice).await.by, "admin");
    s.stop().await;
}
