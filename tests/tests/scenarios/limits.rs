//! Rate limits per user (all devices) and per tenant, logins in progress
//! per address (behind a trusted proxy too), changed while running through
//! the operator API and by SIGHUP, without dropping connections; refusals
//! counted per dimension in /metrics.

use super::child::ChildServer;
use dongdong_tests::client::{Client, code};
use dongdong_tests::http::{get as http_get, request};
use dongdong_tests::server::TestServer;
use im_core::ErrorCode;
use serde_json::json;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const OPERATOR: &str = "operator-key-for-the-tests";

/// Sends `n` messages pipelined and returns the refusals' messages.
async fn burst(c: &mut Client, to: &str, tag: &str, n: usize) -> Vec<String> {
    let mut req_ids = Vec::new();
    for i in 0..n {
        req_ids.push(c.send_text_nowait(to, &format!("{tag}-{i}-{}", im_core::new_msg_id()), "hi").await);
    }
    let mut refused = Vec::new();
    for req_id in req_ids {
        if let Some(im_core::pb::frame::Body::Error(e)) = c.reply(req_id).await.body {
            assert_eq!(code(&e), ErrorCode::RateLimited, "{e:?}");
            assert!(e.retryable, "a rate limit is retryable: {e:?}");
            refused.push(e.message);
        }
    }
    refused
}

async fn limits_view(http: &str) -> serde_json::Value {
    let (status, body) = request(http, "GET", "/api/v1/admin/limits", Some(OPERATOR), None).await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_tenant_buckets_hold_across_devices_and_change_live() {
    let s = TestServer::start_with(|c| {
        c.auth.operator_key = OPERATOR.into();
        c.limits.rates.user_sends_per_sec = 1;
        c.limits.rates.user_sends_burst = 3;
        let quiet = access_gateway::limits::TenantRates {
            tenant_sends_per_sec: Some(1),
            tenant_sends_burst: Some(2),
            ..Default::default()
        };
        c.limits.rates.tenants.insert("quiet".into(), quiet);
    })
    .await;
    let mut a1 = s.login("acme", "alice", "a1").await;
    let mut a2 = s.login("acme", "alice", "a2").await;
    let mut bob = s.login("acme", "bob", "b1").await;

    // Alice's two devices share three tokens.
    let mut refused = burst(&mut a1, "bob", "a1", 3).await;
    refused.extend(burst(&mut a2, "bob", "a2", 3).await);
    assert!(refused.len() >= 2, "alice sent 6 with 3 tokens over both devices: {refused:?}");
    assert!(refused[0].contains("from this user (all devices)"), "{}", refused[0]);
    assert!(refused[0].contains("retry in"), "{}", refused[0]);
    // Bob has his own.
    assert!(burst(&mut bob, "alice", "b", 3).await.is_empty());

    // A tenant of its own values: its users share two tokens.
    let mut q1 = s.login("quiet", "q1", "d").await;
    let mut q2 = s.login("quiet", "q2", "d").await;
    let mut refused = burst(&mut q1, "q2", "q1", 2).await;
    refused.extend(burst(&mut q2, "q1", "q2", 2).await);
    assert!(!refused.is_empty() && refused.iter().all(|m| m.contains("in this tenant")), "{refused:?}");

    // The operator API: its key only.
    let path = "/api/v1/admin/limits";
    assert_eq!(request(&s.http_url, "GET", path, None, None).await.0, 401);
    assert_eq!(request(&s.http_url, "GET", path, Some("wrong"), None).await.0, 403);
    let admin = s.token_with_role("acme", "root", im_core::Role::Admin);
    assert_eq!(
        request(&s.http_url, "GET", path, Some(&admin), None).await.0,
        403,
        "a tenant admin is not the operator"
    );
    let view = limits_view(&s.http_url).await;
    assert_eq!(view["effective"]["user_sends_per_sec"], 1);
    assert_eq!(view["override"], serde_json::Value::Null);

    // Raised while the connections stay open.
    let raise = json!({ "user_sends_per_sec": 1000, "user_sends_burst": 1000 });
    let (status, body) = request(&s.http_url, "PUT", path, Some(OPERATOR), Some(&raise)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["effective"]["user_sends_per_sec"], 1000);
    assert_eq!(body["file"]["user_sends_per_sec"], 1);
    assert!(burst(&mut a1, "bob", "a1-raised", 20).await.is_empty());
    assert!(burst(&mut a2, "bob", "a2-raised", 20).await.is_empty());

    // Bad overrides are refused by key; the running values stay.
    let (status, body) =
        request(&s.http_url, "PUT", path, Some(OPERATOR), Some(&json!({ "user_sends_persec": 5 }))).await;
    assert_eq!(status, 400);
    assert!(body.to_string().contains("user_sends_persec"), "{body}");
    let (status, body) =
        request(&s.http_url, "PUT", path, Some(OPERATOR), Some(&json!({ "user_sends_burst": 5_000_000 }))).await;
    assert_eq!(status, 400);
    assert!(body.to_string().contains("limits.user_sends_burst"), "{body}");
    let (status, body) = request(&s.http_url, "PUT", path, Some(OPERATOR), Some(&json!({ "rate_per_sec": 0 }))).await;
    assert_eq!(status, 400);
    assert!(body.to_string().contains("limits.rate_per_sec"), "{body}");
    assert_eq!(limits_view(&s.http_url).await["effective"]["user_sends_per_sec"], 1000);

    // Cleared: the file's values again.
    let (status, body) = request(&s.http_url, "DELETE", path, Some(OPERATOR), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["effective"]["user_sends_per_sec"], 1);
    assert!(!burst(&mut a1, "bob", "a1-again", 5).await.is_empty());

    // Every dimension that refused is counted.
    let (_, metrics) = http_get(&s.http_url, "/metrics").await;
    for dimension in ["user_sends", "tenant_sends"] {
        assert!(
            metrics.contains(&format!("dongdong_rate_limited_total{{limit=\"{dimension}\"}}")),
            "no {dimension} refusals in /metrics"
        );
    }
    // The connections were never dropped: they still answer.
    for c in [&mut a1, &mut a2, &mut bob, &mut q1] {
        let pong = c.request(im_core::pb::frame::Body::Ping(im_core::pb::Ping {})).await;
        assert!(matches!(pong.body, Some(im_core::pb::frame::Body::Pong(_))), "{pong:?}");
    }
    s.stop().await;
}

/// Whether the server closed a connection that sent nothing (EOF or a
/// reset) within `wait`.
async fn closed_within(tcp: &mut tokio::net::TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 16];
    matches!(tokio::time::timeout(wait, tcp.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_in_progress_are_capped_per_address() {
    let s = TestServer::start_with(|c| c.limits.rates.handshakes_per_address = 2).await;
    let addr = s.ws_url.trim_start_matches("ws://").trim_end_matches("/ws").to_string();
    // Two connections that never handshake hold the address's two places
    // (taken as they are accepted, in order).
    let mut slow1 = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let slow2 = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut third = tokio::net::TcpStream::connect(&addr).await.unwrap();
    assert!(closed_within(&mut third, Duration::from_secs(3)).await, "a third from 127.0.0.1 is closed at once");
    assert!(!closed_within(&mut slow1, Duration::from_millis(300)).await, "the first two wait");
    drop(slow1);
    // Room again once one of them went (when the server has seen it go);
    // logged-in connections do not count.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut logged_in = Vec::new();
    while logged_in.len() < 3 {
        assert!(tokio::time::Instant::now() < deadline, "logins never got through");
        match Client::try_connect(&s.ws_url, im_core::Encoding::Protobuf).await {
            Some(mut c) => {
                c.auth(&s.token("acme", "alice"), &format!("d{}", logged_in.len())).await.unwrap();
                logged_in.push(c);
            }
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let (_, metrics) = http_get(&s.http_url, "/metrics").await;
    assert!(metrics.contains("dongdong_rate_limited_total{limit=\"handshakes_per_address\"}"), "not counted");
    drop(slow2);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_the_header_is_the_address() {
    let s = TestServer::start_with(|c| {
        c.server.trusted_proxy_header = "X-Forwarded-For".into();
        c.limits.rates.handshakes_per_address = 1;
    })
    .await;
    let upgrade = |forwarded: Option<&str>| {
        let mut req = s.ws_url.as_str().into_client_request().unwrap();
        if let Some(f) = forwarded {
            req.headers_mut().insert("x-forwarded-for", f.parse().unwrap());
        }
        tokio_tungstenite::connect_async(req)
    };
    let status = |r: Result<_, tokio_tungstenite::tungstenite::Error>| match r {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("unexpected {e}"),
    };
    // Upgraded, not yet authenticated: the proxy's client 203.0.113.7 has
    // its one place taken (the proxy's own address is not what counts).
    let (held, _) = upgrade(Some("198.51.100.1, 203.0.113.7")).await.unwrap();
    assert_eq!(status(upgrade(Some("203.0.113.7")).await), 429);
    assert_eq!(status(upgrade(Some("203.0.113.8")).await), 101);
    assert_eq!(status(upgrade(None).await), 400, "no header from the proxy");
    assert_eq!(status(upgrade(Some("not-an-address")).await), 400);
    drop(held);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reads_the_limits_again_and_keeps_them_when_the_file_is_bad() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dongdong.toml");
    let write = |sends: u32| {
        let text = format!(
            "[auth]\noperator_key = \"{OPERATOR}\"\n[limits]\nuser_sends_per_sec = {sends}\nuser_sends_burst = {sends}\n"
        );
        std::fs::write(&file, text).unwrap();
    };
    write(1);
    let args = ["--config".to_string(), file.display().to_string()];
    let node = ChildServer::start_args(&dir.path().join("data"), "hup-node", &[], &args);
    let token = access_gateway::TokenSigner::new(dongdong_tests::SECRET.as_bytes())
        .mint("acme", "alice", im_core::Role::Customer, Duration::from_secs(600))
        .unwrap();
    let mut c = Client::login(&node.ws_url, &token, "d").await;
    assert!(!burst(&mut c, "bob", "before", 4).await.is_empty());

    write(500);
    node.hangup();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while limits_view(&node.http_url).await["effective"]["user_sends_per_sec"] != 500 {
        assert!(tokio::time::Instant::now() < deadline, "SIGHUP did not apply the file");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(burst(&mut c, "bob", "after", 20).await.is_empty(), "the open connection has the new values");

    // A bad file: logged with its key, the running values stay.
    std::fs::write(&file, "[limits]\nuser_sends_burst = 5000000\n").unwrap();
    node.hangup();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !node.log().contains("limits.user_sends_burst") {
        assert!(tokio::time::Instant::now() < deadline, "the bad file was not reported");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(limits_view(&node.http_url).await["effective"]["user_sends_per_sec"], 500);
    c.send_text("bob", "still", "here").await.unwrap();
}
