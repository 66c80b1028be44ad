//! Session resume: a device whose connection dropped signs in again with
//! the resume token its `AuthOk` gave and finds its session: what it had not
//! acknowledged is resent under the same ids, what arrived meanwhile
//! follows, its presence watches go on; nothing twice, nothing lost.

use dongdong_tests::client::{Client, Closed, msg, text_of};
use dongdong_tests::server::TestServer;
use im_core::pb::{self, frame::Body};
use im_core::{CloseCode, Encoding};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

async fn sign_in(s: &TestServer, user: &str, device: &str, resume: &str) -> (Client, pb::AuthOk) {
    let mut c = Client::connect(&s.ws_url, Encoding::Protobuf).await;
    let ok = c.auth_resuming(&s.token("acme", user), device, resume).await.expect("auth");
    (c, ok)
}

/// The next `n` deliveries as (msg_id, text, replay).
async fn deliveries(c: &mut Client, n: usize) -> Vec<(String, String, bool)> {
    let mut out = Vec::new();
    while out.len() < n {
        let d = c
            .next_matching("Deliver", |b| match b {
                Body::Deliver(d) => Some(d.clone()),
                _ => None,
            })
            .await;
        out.push((msg(&d).msg_id.clone(), text_of(msg(&d)).to_string(), d.replay));
    }
    out
}

/// Nothing more arrives before the answer to a Ping.
async fn nothing_more(c: &mut Client) {
    let req_id = c.request(Body::Ping(pb::Ping {})).await.req_id;
    assert!(req_id > 0);
    assert_eq!(c.buffered_len(), 0, "frames after the expected ones");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_resumes_its_session() {
    let s = TestServer::start().await;
    let (mut bob, ok) = sign_in(&s, "bob", "phone", "").await;
    assert!(!ok.resumed);
    assert_eq!(ok.resume_token.len(), 32);
    bob.request(Body::PresenceSubscribe(pb::PresenceSubscribe { users: vec!["alice".into()] })).await;
    let mut alice = s.login("acme", "alice", "a1").await;
    for (i, text) in ["one", "two", "three"].iter().enumerate() {
        alice.send_text("bob", &format!("c{i}"), text).await.unwrap();
    }
    let got = deliveries(&mut bob, 3).await;
    bob.ack(vec![got[0].0.clone()]).await;
    // The network goes: no Close frame. The session is parked before the
    // connection leaves presence.
    drop(bob);
    s.wait_presence("acme", "bob", 0).await;
    alice.send_text("bob", "c3", "four").await.unwrap();

    let (mut bob, again) = sign_in(&s, "bob", "phone", &ok.resume_token).await;
    assert!(again.resumed, "taken back within the window");
    assert_ne!(again.resume_token, ok.resume_token, "a token resumes once");
    let resent = deliveries(&mut bob, 3).await;
    let expected = [(got[1].0.clone(), "two".to_string(), true), (got[2].0.clone(), "three".to_string(), true)];
    assert_eq!(resent[..2], expected[..], "unacknowledged: resent under their ids, in order");
    assert_eq!((resent[2].1.as_str(), resent[2].2), ("four", true), "then what arrived meanwhile");
    let presence = bob
        .next_matching("PresenceUpdate", |b| match b {
            Body::PresenceUpdate(u) => Some(u.clone()),
            _ => None,
        })
        .await;
    assert_eq!((presence.user.as_str(), presence.online), ("alice", true), "watches go on");
    bob.ack(resent.iter().map(|d| d.0.clone()).collect()).await;
    nothing_more(&mut bob).await;
    // Alice's going is still told: the watch was kept, not just answered.
    alice.close().await;
    let gone = bob
        .next_matching("PresenceUpdate", |b| match b {
            Body::PresenceUpdate(u) if !u.online => Some(u.clone()),
            _ => None,
        })
        .await;
    assert_eq!(gone.user, "alice");
    drop(bob);
    s.wait_presence("acme", "bob", 0).await;

    // The old token again: taken once, so a fresh session; nothing pending.
    let (mut bob, third) = sign_in(&s, "bob", "phone", &ok.resume_token).await;
    assert!(!third.resumed);
    assert_eq!(third.pending_count, 0);
    nothing_more(&mut bob).await;
    s.stop().await;
}

/// The usual case on a phone: the network changed and the device signs in
/// again before the server noticed its old connection was gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_resumes_the_session_of_the_connection_it_replaces() {
    let s = TestServer::start().await;
    let (mut old, ok) = sign_in(&s, "bob", "phone", "").await;
    let mut alice = s.login("acme", "alice", "a1").await;
    let sent = alice.send_text("bob", "c1", "still there?").await.unwrap();
    assert_eq!(deliveries(&mut old, 1).await[0].0, sent.msg_id);

    let (mut bob, again) = sign_in(&s, "bob", "phone", &ok.resume_token).await;
    assert!(again.resumed);
    assert_eq!(old.closed().await, Closed::Frame(CloseCode::Replaced.code(), replaced_reason()));
    let resent = deliveries(&mut bob, 1).await;
    assert_eq!((resent[0].0.as_str(), resent[0].2), (sent.msg_id.as_str(), true));
    bob.ack(vec![sent.msg_id.clone()]).await;
    nothing_more(&mut bob).await;
    s.stop().await;
}

fn replaced_reason() -> String {
    "replaced by a newer connection of the same device".into()
}

/// Not resumed: a goodbye (Close 1000), another device, a made-up token;
/// each signs in afresh and gets what is pending from storage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_goodbye_or_a_foreign_token_signs_in_afresh() {
    let s = TestServer::start().await;
    let (mut bob, ok) = sign_in(&s, "bob", "phone", "").await;
    let mut alice = s.login("acme", "alice", "a1").await;
    let sent = alice.send_text("bob", "c1", "hello").await.unwrap();
    deliveries(&mut bob, 1).await;
    let goodbye = CloseFrame { code: 1000.into(), reason: "bye".into() };
    bob.send_raw(WsMessage::Close(Some(goodbye))).await.unwrap();
    s.wait_presence("acme", "bob", 0).await;
    let (mut bob, again) = sign_in(&s, "bob", "phone", &ok.resume_token).await;
    assert!(!again.resumed, "a goodbye parks nothing");
    assert_eq!(again.pending_count, 1);
    let replayed = deliveries(&mut bob, 1).await;
    assert_eq!((replayed[0].0.as_str(), replayed[0].2), (sent.msg_id.as_str(), true), "replayed from storage");
    // Another device of bob's, or another user, cannot take the session.
    drop(bob);
    s.wait_presence("acme", "bob", 0).await;
    let (_, tablet) = sign_in(&s, "bob", "tablet", &again.resume_token).await;
    assert!(!tablet.resumed);
    let (_, carol) = sign_in(&s, "carol", "phone", &again.resume_token).await;
    assert!(!carol.resumed);
    let forged = format!("{}0000000000000000", &again.resume_token[..16]);
    let (_, forged) = sign_in(&s, "bob", "phone", &forged).await;
    assert!(!forged.resumed);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_window_offers_no_resume() {
    let s = TestServer::start_with(|c| c.im.sessions.resume_window = Duration::ZERO).await;
    let (_, ok) = sign_in(&s, "bob", "phone", "").await;
    assert_eq!((ok.resume_token.as_str(), ok.resumed), ("", false));
    s.stop().await;
}
