//! `dongdong bot` run as a user runs it: the command as its own process
//! against a server child process. Every scenario must end with a clean
//! correctness report (the bot exits non-zero otherwise) and real traffic.

use super::child::{self, ChildServer};
use dongdong_tests::services::required;
use serde_json::Value;
use std::process::Command;

fn bot(server: &ChildServer, args: &[&str]) -> Value {
    bot_at(&server.ws_url, server, args)
}

/// Runs the bot against `urls` (comma-separated), sampling `sampled`.
fn bot_at(urls: &str, sampled: &ChildServer, args: &[&str]) -> Value {
    let out = Command::new(child::binary())
        .arg("bot")
        .args(args)
        .args(["--url", urls, "--secret", dongdong_tests::SECRET, "--json"])
        .args(["--server-pid", &sampled.pid().to_string()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "dongdong bot {args:?} exited with {}:\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["clean"], true, "{report:#}");
    assert_eq!(report["correctness"]["acked_but_not_delivered"], 0, "{report:#}");
    assert_eq!(report["correctness"]["sender_order_violated"], 0, "{report:#}");
    assert!(report["server"]["rss_peak_kib"].as_u64().unwrap() > 0, "server sampled: {report:#}");
    report
}

#[test]
fn bot_scenarios_run_clean_against_a_real_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::start_with(
        &dir.path().join("data"),
        "bot-node",
        &[
            ("DONGDONG_LIMITS__RATE_PER_SEC", "100000"),
            ("DONGDONG_LIMITS__RATE_BURST", "100000"),
            // Closed-loop bots send thousands per second per user.
            ("DONGDONG_LIMITS__USER_FRAMES_PER_SEC", "0"),
            ("DONGDONG_LIMITS__USER_SENDS_PER_SEC", "0"),
        ],
    );

    let r = bot(&server, &["pairs", "--pairs", "10", "--window", "4", "--duration", "2s", "--warmup", "500ms"]);
    assert!(r["delivered"].as_u64().unwrap() > 100, "{r:#}");
    assert!(r["latency_ms"]["p99"].as_f64().unwrap() > 0.0, "{r:#}");
    assert_eq!(r["errors"], serde_json::json!({}), "{r:#}");

    let r = bot(&server, &["pairs", "--pairs", "20", "--rate", "20", "--duration", "1s", "--warmup", "0s"]);
    assert!(r["acked"].as_u64().unwrap() >= 200, "open loop sends on schedule: {r:#}");

    let r = bot(&server, &["pairs", "--pairs", "4", "--window", "16", "--ack", "batched", "--duration", "1s"]);
    assert_eq!(r["settings"]["ack"], "batched", "{r:#}");

    // Read receipts: every sender gets the receipt of its last message and
    // nothing is left unread (the bot's report fails otherwise).
    let r = bot(&server, &["pairs", "--pairs", "6", "--window", "4", "--duration", "1s", "--read-receipts"]);
    let c = &r["correctness"];
    assert_eq!((c["receipts_missing"].as_u64(), c["unread_left"].as_u64()), (Some(0), Some(0)), "{r:#}");
    assert!(c["receipts"].as_u64().unwrap() > 0 && c["marks"].as_u64().unwrap() > 0, "{r:#}");

    let r = bot(&server, &["multi-device", "--pairs", "4", "--devices", "3", "--duration", "1s", "--warmup", "0s"]);
    // Each message reaches the receiver's 3 devices and the sender's 2 others.
    assert_eq!(r["settings"]["devices"], 3);
    assert_eq!(r["delivered"].as_u64().unwrap(), 5 * r["acked"].as_u64().unwrap(), "{r:#}");

    // Receivers' devices go offline in waves and come back: all delivered.
    let soak = [
        "soak",
        "--pairs",
        "4",
        "--devices",
        "2",
        "--rate",
        "20",
        "--duration",
        "2s",
        "--wave-every",
        "400ms",
        "--wave-share",
        "0.5",
        "--offline-for",
        "200ms",
        "--drain",
        "10s",
    ];
    let r = bot(&server, &soak);
    assert!(r["acked"].as_u64().unwrap() >= 100, "{r:#}");
    assert_eq!(r["delivered"].as_u64(), Some(2 * r["acked"].as_u64().unwrap()), "{r:#}");
    assert!(r["figures"]["wave disconnects"].as_u64().unwrap() > 0, "{r:#}");
    assert!(r["figures"]["reconnects"].as_u64().unwrap() > 0, "{r:#}");

    let r = bot(&server, &["offline", "--receivers", "40", "--messages", "25"]);
    assert_eq!(r["acked"], 1000, "{r:#}");
    assert_eq!(r["figures"]["pending_at_auth"], 1000, "{r:#}");
    assert_eq!(r["figures"]["left_pending"], 0, "{r:#}");

    let r = bot(&server, &["idle", "--connections", "300", "--duration", "1s"]);
    assert_eq!(r["figures"]["held"], 300, "{r:#}");
    assert!(r["figures"]["server_bytes_per_conn"].as_f64().is_some(), "{r:#}");

    let r = bot(
        &server,
        &[
            "cs",
            "--api",
            &server.http_url,
            "--arrivals",
            "20",
            "--agents",
            "3",
            "--capacity",
            "4",
            "--messages",
            "2",
            "--think",
            "20ms",
            "--duration",
            "1s",
        ],
    );
    let customers = r["figures"]["customers"].as_u64().unwrap();
    assert!(customers >= 15, "{r:#}");
    assert_eq!(r["figures"]["served_and_rated"].as_u64(), Some(customers), "{r:#}");
}

#[test]
fn bot_refuses_a_wrong_secret_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::start(&dir.path().join("data"));
    let out = Command::new(child::binary())
        .args(["bot", "pairs", "--pairs", "2", "--duration", "1s", "--url", &server.ws_url])
        .args(["--secret", "not-the-servers-secret-at-all"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "an unclean run exits 1");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("4 failed"), "{stdout}");
    assert!(stdout.contains("auth: UNAUTHENTICATED"), "errors by code: {stdout}");
}

#[test]
fn bot_gets_tokens_from_a_token_command() {
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::start(&dir.path().join("data"));
    // `dongdong token` as the token command, secret from the environment.
    let cmd = format!(
        "{} token --tenant \"$DDBOT_TENANT\" --user \"$DDBOT_USER\" --role \"$DDBOT_ROLE\"",
        child::binary().display()
    );
    let out = Command::new(child::binary())
        .args(["bot", "pairs", "--pairs", "2", "--window", "2", "--duration", "500ms", "--warmup", "0s"])
        .args(["--url", &server.ws_url, "--json", "--token-cmd", &cmd])
        .env("DONGDONG_AUTH__SECRET", dongdong_tests::SECRET)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(r["connects"]["ok"], 4, "{r:#}");
    assert!(r["acked"].as_u64().unwrap() > 0, "{r:#}");

    // A failing command is reported, with its own words.
    let out = Command::new(child::binary())
        .args(["bot", "pairs", "--pairs", "1", "--duration", "500ms", "--url", &server.ws_url])
        .args(["--token-cmd", "echo no tokens today >&2; exit 3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("token: 2") && stdout.contains("no tokens today"), "{stdout}");
}

/// Bots spread over two nodes of a cluster: every pair's sender and receiver
/// are on different nodes, and so are customers and agents.
#[test]
fn bot_runs_clean_across_two_cluster_nodes() {
    let (Some(redis), Some(mongo)) = (required("DDTEST_REDIS_URL"), required("DDTEST_MONGO_URL")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = format!("ddbot_{}", &im_core::new_msg_id().replace('-', "")[20..]);
    let nodes: Vec<ChildServer> = (0..2)
        .map(|i| {
            let data = dir.path().join(format!("node{i}"));
            ChildServer::start_with(
                &data,
                &format!("{db}-node{i}"),
                &[
                    ("DONGDONG_STORAGE__BACKEND", "cluster"),
                    ("DONGDONG_STORAGE__REDIS_URL", &redis),
                    ("DONGDONG_STORAGE__MONGO_URL", &mongo),
                    ("DONGDONG_STORAGE__MONGO_DATABASE", &db),
                    ("DONGDONG_LIMITS__RATE_PER_SEC", "100000"),
                    ("DONGDONG_LIMITS__RATE_BURST", "100000"),
                    ("DONGDONG_LIMITS__USER_FRAMES_PER_SEC", "0"),
                    ("DONGDONG_LIMITS__USER_SENDS_PER_SEC", "0"),
                ],
            )
        })
        .collect();
    let urls = format!("{},{}", nodes[0].ws_url, nodes[1].ws_url);
    let tenant = format!("t{}", &db[6..]);

    let r =
        bot_at(&urls, &nodes[0], &["pairs", "--tenant", &tenant, "--pairs", "6", "--window", "4", "--duration", "2s"]);
    assert!(r["delivered"].as_u64().unwrap() > 20, "{r:#}");

    let r = bot_at(
        &urls,
        &nodes[0],
        &[
            "cs",
            "--tenant",
            &tenant,
            "--api",
            &nodes[1].http_url,
            "--arrivals",
            "10",
            "--agents",
            "2",
            "--capacity",
            "5",
            "--messages",
            "2",
            "--think",
            "20ms",
            "--duration",
            "1s",
        ],
    );
    let customers = r["figures"]["customers"].as_u64().unwrap();
    assert_eq!(r["figures"]["served_and_rated"].as_u64(), Some(customers), "{r:#}");
}
