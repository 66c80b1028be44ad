//! The real binary: crash safety under kill -9, SIGTERM, config errors, tokens.

use super::child::{ChildServer, binary};
use dongdong_tests::client::{Client, Closed, msg};
use im_core::{CloseCode, Encoding};
use std::collections::HashSet;
use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_nothing_acked_and_replays_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let signer = access_gateway::TokenSigner::new(dongdong_tests::SECRET.as_bytes());
    let token = |u: &str| signer.mint("acme", u, im_core::Role::Customer, std::time::Duration::from_secs(600)).unwrap();

    let server = ChildServer::start(&data);
    // Bob is known (connected once), acks a few, then drops.
    let mut bob = Client::login(&server.ws_url, &token("bob"), "b1").await;
    let mut alice = Client::login(&server.ws_url, &token("alice"), "a1").await;
    let mut acked = Vec::new();
    for i in 0..5 {
        acked.push(alice.send_text("bob", &format!("early{i}"), "early").await.unwrap());
    }
    let early = bob.receive_and_ack(5).await;
    assert_eq!(early.len(), 5);
    // Make sure bob's acks were processed: a request after them is answered after them.
    assert!(bob.sync(im_core::pb::SyncRequest { with_user: "alice".into(), ..Default::default() }).await.is_ok());
    bob.close().await;
    // Pipelined sends: some acked, more in flight when the server dies.
    let mut reqs = Vec::new();
    for i in 0..200 {
        reqs.push(alice.send_text_nowait("bob", &format!("m{i}"), &format!("payload {i}")).await);
    }
    let mut late_acked = Vec::new();
    for r in reqs.iter().take(100) {
        if let Some(im_core::pb::frame::Body::SendAck(a)) = alice.reply(*r).await.body {
            late_acked.push(a);
        }
    }
    server.kill9();

    let server = ChildServer::start(&data);
    let mut alice = Client::login(&server.ws_url, &token("alice"), "a1").await;
    let history = alice
        .sync(im_core::pb::SyncRequest { with_user: "bob".into(), limit: 200, ..Default::default() })
        .await
        .unwrap();
    let stored: HashSet<String> = history.messages.iter().map(|m| m.msg_id.clone()).collect();
    for a in acked.iter().chain(&late_acked) {
        assert!(stored.contains(&a.msg_id), "acked message {} (seq {}) lost", a.msg_id, a.seq);
    }
    let seqs: Vec<u64> = history.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "gap-free after the crash");
    // Bob gets every stored message he had not acked, in order, as replay.
    let mut bob = Client::login(&server.ws_url, &token("bob"), "b1").await;
    let pending = bob.auth_ok.as_ref().unwrap().pending_count as usize;
    assert_eq!(pending, history.messages.len() - 5, "everything but the 5 acked is pending");
    let got = bob.receive_and_ack(pending).await;
    assert!(got.iter().all(|d| d.replay));
    let got_seqs: Vec<u64> = got.iter().map(|d| msg(d).seq).collect();
    assert_eq!(got_seqs, (6..=history.messages.len() as u64).collect::<Vec<_>>());
    // Resending an acked client_msg_id after the crash is still a duplicate.
    let retry = alice.send_text("bob", "m0", "payload 0").await.unwrap();
    assert!(retry.duplicate);
    assert_eq!(retry.seq, late_acked[0].seq);
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_and_sigint_close_with_1012_and_exit_0() {
    for signal in ["TERM", "INT"] {
        stop_with(signal).await;
    }
}

async fn stop_with(signal: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::start(&dir.path().join("data"));
    let signer = access_gateway::TokenSigner::new(dongdong_tests::SECRET.as_bytes());
    let token = signer.mint("acme", "alice", im_core::Role::Customer, std::time::Duration::from_secs(60)).unwrap();
    let mut c = Client::connect(&server.ws_url, Encoding::Json).await;
    c.auth(&token, "d").await.unwrap();
    let status = tokio::task::spawn_blocking(move || server.signal(signal)).await.unwrap();
    assert_eq!(c.closed().await, Closed::Frame(CloseCode::ServiceRestart.code(), "server shutting down".into()));
    assert_eq!(status.code(), Some(0), "SIG{signal}");
}

#[test]
fn invalid_config_names_the_key_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[limits]\nmax_frame_bytes = 5\n").unwrap();
    let out = Command::new(binary()).args(["serve", "--config"]).arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("limits.max_frame_bytes"), "{err}");
    let out = Command::new(binary())
        .args(["serve", "--data"])
        .arg(dir.path())
        .env("DONGDONG_TIMEOUTS__ACK", "whenever")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).to_lowercase().contains("timeouts.ack"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_command_signs_with_the_servers_dev_secret() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // No secret configured: serve generates one, token reads the same one.
    let mut child = Command::new(binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data"])
        .arg(&data)
        .env_remove("DONGDONG_AUTH__SECRET")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    let url = line.split_whitespace().find_map(|w| w.strip_prefix("ws=")).unwrap().to_string();
    let out = Command::new(binary())
        .args(["token", "--tenant", "acme", "--user", "alice", "--role", "agent", "--ttl", "1h", "--data"])
        .arg(&data)
        .env_remove("DONGDONG_AUTH__SECRET")
        .output()
        .unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let mut c = Client::connect(&url, Encoding::Json).await;
    let ok = c.auth(&token, "cli").await.unwrap();
    assert_eq!((ok.tenant.as_str(), ok.user_id.as_str(), ok.role.as_str()), ("acme", "alice", "agent"));
    let bad =
        Command::new(binary()).args(["token", "--tenant", "acme", "--user", "x", "--role", "boss"]).output().unwrap();
    assert!(!bad.status.success());
    let _ = child.kill();
    let _ = child.wait();
}

/// A minimal HTTP/1.0 GET: (status, body).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_prometheus_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::start(&dir.path().join("data"));
    let signer = access_gateway::TokenSigner::new(dongdong_tests::SECRET.as_bytes());
    let token = |u: &str| signer.mint("acme", u, im_core::Role::Customer, std::time::Duration::from_secs(60)).unwrap();
    let mut bob = Client::login(&server.ws_url, &token("bob"), "b1").await;
    let mut alice = Client::login(&server.ws_url, &token("alice"), "a1").await;
    alice.send_text("bob", "m1", "counted").await.unwrap();
    bob.receive_and_ack(1).await;
    let (status, body) = dongdong_tests::http::get(&server.http_url, "/healthz").await;
    assert_eq!(status, 200);
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["node_id"], "child-node");
    assert_eq!(health["connections"], 2);
    let (status, body) = dongdong_tests::http::get(&server.http_url, "/metrics").await;
    assert_eq!(status, 200);
    for metric in [
        "dongdong_messages_total 1",
        "dongdong_connections 2",
        "dongdong_send_seconds_bucket",
        "dongdong_store_commit_seconds_bucket",
        "dongdong_deliveries_total{replay=\"false\"} 1",
    ] {
        assert!(body.contains(metric), "/metrics lacks {metric:?}:\n{body}");
    }
    assert_eq!(dongdong_tests::http::get(&server.http_url, "/nope").await.0, 404);
}
