//! Bad input never panics and never disturbs other connections: every case
//! gets a clear Error code (and a close where it makes sense) while a
//! well-behaved client keeps chatting throughout.

use dongdong_tests::client::{Client, Closed, code};
use dongdong_tests::server::TestServer;
use im_core::pb::{self, Frame, frame::Body};
use im_core::{CloseCode, Encoding, ErrorCode};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// A pair of well-behaved users exchanging messages until told to stop.
/// Returns how many round trips they completed.
fn bystanders(s: &TestServer, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<usize> {
    let (url, ta, tb) = (s.ws_url.clone(), s.token("acme", "good-a"), s.token("acme", "good-b"));
    tokio::spawn(async move {
        let mut a = Client::login(&url, &ta, "d").await;
        let mut b = Client::login(&url, &tb, "d").await;
        let mut rounds = 0;
        let mut seen = std::collections::HashSet::new();
        while !stop.load(Ordering::SeqCst) || rounds < 3 {
            let ack = a.send_text("good-b", &format!("m{rounds}"), "still fine?").await.expect("bystander send");
            // A resend of an earlier message (its ack was not read within
            // the ack timeout on a loaded machine) is deduplicated by
            // msg_id, as clients do; nothing else may come first.
            loop {
                let id = b.next_deliver().await.message.unwrap().msg_id;
                if id == ack.msg_id {
                    break;
                }
                assert!(seen.contains(&id), "{id} was never sent; expected {}", ack.msg_id);
            }
            seen.insert(ack.msg_id.clone());
            b.ack(vec![ack.msg_id]).await;
            rounds += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        rounds
    })
}

async fn expect_error_and_close(c: &mut Client, want: ErrorCode, close: CloseCode) -> pb::Error {
    let e = c.next_error().await;
    assert_eq!(code(&e), want, "{e:?}");
    assert!(!e.message.is_empty());
    match c.closed().await {
        Closed::Frame(got, _) => assert_eq!(got, close.code()),
        Closed::NoFrame => panic!("expected close code {}", close.code()),
    }
    e
}

fn expired_token() -> String {
    let now = im_core::now_ms() / 1000;
    let claims = access_gateway::Claims {
        tenant: "acme".into(),
        sub: "alice".into(),
        role: im_core::Role::Customer,
        exp: now - 3600,
        iat: now - 7200,
        name: String::new(),
        avatar: String::new(),
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(dongdong_tests::SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_never_hurts_others() {
    let s = TestServer::start_with(|c| {
        c.limits.rates.rate_per_sec = 50;
        c.limits.rates.rate_burst = 50;
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let good = bystanders(&s, stop.clone());
    let url = s.ws_url.clone();

    // Garbage before Auth.
    let mut c = Client::connect(&url, Encoding::Protobuf).await;
    c.send_raw(WsMessage::binary(vec![0xff, 0xff, 0xff, 0xff, 0xff])).await.unwrap();
    expect_error_and_close(&mut c, ErrorCode::BadFrame, CloseCode::PolicyViolation).await;
    let mut c = Client::connect(&url, Encoding::Json).await;
    c.send_raw(WsMessage::text("{not json")).await.unwrap();
    expect_error_and_close(&mut c, ErrorCode::BadFrame, CloseCode::PolicyViolation).await;

    // A frame before Auth.
    let mut c = Client::connect(&url, Encoding::Protobuf).await;
    let send = pb::Send { client_msg_id: "x".into(), to_user: "bob".into(), content: None };
    c.send_frame(&Frame { req_id: 9, body: Some(Body::Send(send)) }).await;
    let e = expect_error_and_close(&mut c, ErrorCode::Unauthenticated, CloseCode::PolicyViolation).await;
    assert!(e.message.contains("first frame must be Auth"), "{}", e.message);

    // Bad, foreign and expired tokens; a missing device id.
    for (token, device, want, words) in [
        ("garbage".to_string(), "d", ErrorCode::Unauthenticated, "malformed"),
        (
            access_gateway::TokenSigner::new(b"another-secret-entirely")
                .mint("acme", "alice", im_core::Role::Customer, Duration::from_secs(60))
                .unwrap(),
            "d",
            ErrorCode::Unauthenticated,
            "signature",
        ),
        (expired_token(), "d", ErrorCode::Unauthenticated, "expired"),
        (s.token("acme", "alice"), "", ErrorCode::InvalidArgument, "device_id"),
    ] {
        let mut c = Client::connect(&url, Encoding::Protobuf).await;
        let e = c.auth(&token, device).await.unwrap_err();
        assert_eq!(code(&e), want);
        assert!(e.message.contains(words), "{:?} should mention {words}", e.message);
        assert!(!e.retryable);
        assert!(matches!(c.closed().await, Closed::Frame(1008, _)));
    }

    // A 1 MB text message, before and after Auth.
    let mut c = Client::connect(&url, Encoding::Json).await;
    let _ = c.send_raw(WsMessage::text("x".repeat(1 << 20))).await;
    expect_error_and_close(&mut c, ErrorCode::TooLarge, CloseCode::TooLarge).await;
    let mut c = s.login("acme", "big", "d").await;
    let _ = c.send_raw(WsMessage::text("x".repeat(1 << 20))).await;
    expect_error_and_close(&mut c, ErrorCode::TooLarge, CloseCode::TooLarge).await;

    // After Auth: garbage, wrong-direction frames, an empty frame and a second
    // Auth each get an Error, and the connection stays usable.
    let mut c = s.login("acme", "clumsy", "d").await;
    c.send_raw(WsMessage::binary(vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f])).await.unwrap();
    assert_eq!(code(&c.next_error().await), ErrorCode::BadFrame);
    let ok = pb::AuthOk::default();
    let r = c.request(Body::AuthOk(ok)).await;
    let Some(Body::Error(e)) = r.body else { panic!("expected Error") };
    assert_eq!(code(&e), ErrorCode::BadFrame);
    assert!(e.message.contains("server-to-client"), "{}", e.message);
    let req_id = c.next_req_id();
    c.send_frame(&Frame { req_id, body: None }).await;
    let Some(Body::Error(e)) = c.reply(req_id).await.body else { panic!("expected Error") };
    assert_eq!(code(&e), ErrorCode::BadFrame);
    let again = pb::Auth { token: s.token("acme", "clumsy"), device_id: "d".into(), ..Default::default() };
    let Some(Body::Error(e)) = c.request(Body::Auth(again)).await.body else { panic!("expected Error") };
    assert_eq!(code(&e), ErrorCode::InvalidArgument);
    let bad_send = pb::Send { client_msg_id: "a".repeat(500), to_user: "bob".into(), content: None };
    let Some(Body::Error(e)) = c.request(Body::Send(bad_send)).await.body else { panic!("expected Error") };
    assert_eq!(code(&e), ErrorCode::InvalidArgument);
    assert!(c.send_text("bob", "fine", "still works").await.is_ok());

    // A flood: rate limited errors, then a close.
    let mut flood = s.login("acme", "flood", "d").await;
    let limited = Arc::new(AtomicUsize::new(0));
    for i in 0..400u64 {
        if flood
            .send_raw(WsMessage::binary(im_core::encode_frame(
                Encoding::Protobuf,
                &Frame { req_id: i, body: Some(Body::Ping(pb::Ping {})) },
            )))
            .await
            .is_err()
        {
            break;
        }
    }
    loop {
        match flood.recv(dongdong_tests::client::WAIT).await {
            Some(Ok(Frame { body: Some(Body::Error(e)), .. })) => {
                assert_eq!(code(&e), ErrorCode::RateLimited);
                assert!(e.retryable);
                limited.fetch_add(1, Ordering::SeqCst);
            }
            Some(Ok(_)) => {}
            Some(Err(Closed::Frame(c, _))) => {
                assert_eq!(c, CloseCode::PolicyViolation.code());
                break;
            }
            other => panic!("flood should end in a close, got {other:?}"),
        }
    }
    assert!(limited.load(Ordering::SeqCst) > 0);

    // The wrong path is refused at the handshake.
    let wrong = url.replace("/ws", "/nope");
    assert!(tokio_tungstenite::connect_async(wrong.as_str()).await.is_err());

    stop.store(true, Ordering::SeqCst);
    let rounds = good.await.expect("the bystanders never failed");
    assert!(rounds >= 3);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_auth_within_the_timeout_is_closed() {
    let s = TestServer::start_with(|c| c.timeouts.auth = Duration::from_millis(300)).await;
    let mut c = Client::connect(&s.ws_url, Encoding::Json).await;
    let e = expect_error_and_close(&mut c, ErrorCode::Unauthenticated, CloseCode::PolicyViolation).await;
    assert!(e.message.contains("no Auth frame"), "{}", e.message);
    s.stop().await;
}

/// Every frame that names an id the server made refuses a malformed one as
/// the client's mistake (`INVALID_ARGUMENT`), never as a missing record
/// (`NOT_FOUND`), and the connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_ids_are_invalid_arguments_in_every_frame() {
    let s = TestServer::start().await;
    let admin = s.token_with_role("acme", "boss", im_core::Role::Admin);
    let mut c = Client::login(&s.ws_url, &admin, "d").await;
    let bad = "not-a-msg-id";
    let image = |file_id: &str| pb::Content {
        kind: Some(pb::content::Kind::Image(pb::Image { file_id: file_id.into(), ..Default::default() })),
    };
    let file = |file_id: &str| pb::Content {
        kind: Some(pb::content::Kind::File(pb::File { file_id: file_id.into(), ..Default::default() })),
    };
    let send = |client_msg_id: &str, content| {
        Body::Send(pb::Send { client_msg_id: client_msg_id.into(), to_user: "bob".into(), content: Some(content) })
    };
    let frames = [
        ("Recall", Body::Recall(pb::Recall { msg_id: bad.into() })),
        ("Ack", Body::Ack(pb::Ack { msg_ids: vec![bad.into()], event_ids: vec![] })),
        ("MarkRead", Body::MarkRead(pb::MarkRead { conversation_id: "cnope".into(), up_to_seq: 1 })),
        ("SyncRequest", Body::SyncRequest(pb::SyncRequest { conversation_id: "cnope".into(), ..Default::default() })),
        (
            "SyncRequest with session_id",
            Body::SyncRequest(pb::SyncRequest {
                conversation_id: im_core::conversation_id("acme", "boss", "bob"),
                session_id: bad.into(),
                ..Default::default()
            }),
        ),
        ("EndSession", Body::EndSession(pb::EndSession { session_id: bad.into() })),
        (
            "TransferSession",
            Body::TransferSession(pb::TransferSession {
                session_id: bad.into(),
                target: Some(pb::transfer_session::Target::ToGroup("default".into())),
                note: String::new(),
            }),
        ),
        ("Send image", send("img-1", image(bad))),
        ("Send file", send("file-1", file(bad))),
    ];
    for (what, body) in frames {
        match c.request(body).await.body {
            Some(Body::Error(e)) => assert_eq!(code(&e), ErrorCode::InvalidArgument, "{what}: {e:?}"),
            other => panic!("{what}: expected INVALID_ARGUMENT, got {other:?}"),
        }
    }
    // Frames of one role: the customer's rating, the agent's claim.
    let mut customer = s.login("acme", "carol", "phone").await;
    let agent = s.token_with_role("acme", "amy", im_core::Role::Agent);
    let mut agent = Client::login(&s.ws_url, &agent, "d").await;
    let rate = Body::Rate(pb::Rate { session_id: bad.into(), score: 5, comment: String::new() });
    let claim = Body::ClaimLeftMessage(pb::ClaimLeftMessage { left_message_id: bad.into() });
    for (what, client, body) in [("Rate", &mut customer, rate), ("ClaimLeftMessage", &mut agent, claim)] {
        match client.request(body).await.body {
            Some(Body::Error(e)) => assert_eq!(code(&e), ErrorCode::InvalidArgument, "{what}: {e:?}"),
            other => panic!("{what}: expected INVALID_ARGUMENT, got {other:?}"),
        }
    }
    // Well-formed but unknown ids are missing records.
    let unknown = "0190b1f2-0000-7000-8000-000000000000";
    match c.request(Body::Recall(pb::Recall { msg_id: unknown.into() })).await.body {
        Some(Body::Error(e)) => assert_eq!(code(&e), ErrorCode::NotFound, "{e:?}"),
        other => panic!("expected NOT_FOUND, got {other:?}"),
    }
    assert_eq!(c.send_text("bob", "still-fine", "still fine").await.unwrap().seq, 1);
    s.stop().await;
}
