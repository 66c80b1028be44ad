//! Cluster mode with real `dongdong serve` processes sharing Redis and
//! MongoDB (secantusdb): chat across nodes, a node killed with SIGKILL, Redis
//! restarted under traffic, MongoDB stopped and started. The tests that do
//! not stop Redis run twice: on a single Redis and (module
//! `on_redis_cluster`) on the test script's 3-master Redis Cluster.

use super::child::ChildServer;
use dongdong_tests::client::{Client, Closed, code, msg};
use dongdong_tests::http::get as http_get;
use dongdong_tests::services::{PrivateMongo, PrivateRedis, PrivateRedisCluster, required};
use im_core::pb::{self, frame::Body};
use im_core::{CloseCode, Encoding, ErrorCode};
use std::collections::HashSet;
use std::time::Duration;

struct Cluster {
    nodes: Vec<ChildServer>,
    tenant: String,
    signer: access_gateway::TokenSigner,
    dir: tempfile::TempDir,
    redis: Redis,
    mongo_url: String,
    database: String,
    /// More settings of every node.
    extra_env: Vec<(String, String)>,
}

/// The Redis the nodes share.
#[derive(Clone, Copy)]
enum On {
    /// One Redis (`storage.redis_url`).
    Single,
    /// A Redis Cluster (`storage.redis_cluster`).
    Cluster,
}

#[derive(Clone)]
enum Redis {
    Url(String),
    Cluster(String),
}

impl Redis {
    /// The setting that points a node at it.
    fn env(&self) -> (&'static str, &str) {
        match self {
            Redis::Url(url) => ("DONGDONG_STORAGE__REDIS_URL", url),
            Redis::Cluster(seeds) => ("DONGDONG_STORAGE__REDIS_CLUSTER", seeds),
        }
    }
}

impl Cluster {
    fn start(n: usize, redis: Redis, mongo_url: String) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let id = im_core::new_msg_id().replace('-', "");
        let database = format!("dd_{}", &id[20..]);
        let mut c = Self {
            nodes: Vec::new(),
            tenant: format!("t{}", &id[16..]),
            signer: access_gateway::TokenSigner::new(dongdong_tests::SECRET.as_bytes()),
            dir,
            redis,
            mongo_url,
            database,
            extra_env: Vec::new(),
        };
        for i in 0..n {
            c.add_node(i);
        }
        c
    }

    fn add_node(&mut self, i: usize) {
        let data = self.dir.path().join(format!("node{i}"));
        let extra: Vec<(&str, &str)> = self.extra_env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let node = ChildServer::start_cluster(
            &data,
            &self.node_id(i),
            self.redis.env(),
            &self.mongo_url,
            &self.database,
            &extra,
        );
        self.nodes.push(node);
    }

    /// Node ids are unique per test: tests running at once share Redis, and
    /// with it the bus channels.
    fn node_id(&self, i: usize) -> String {
        format!("{}-node{i}", self.database)
    }

    fn token(&self, user: &str) -> String {
        self.signer.mint(&self.tenant, user, im_core::Role::Customer, Duration::from_secs(600)).unwrap()
    }

    async fn login(&self, node: usize, user: &str, device: &str) -> Client {
        Client::login(&self.nodes[node].ws_url, &self.token(user), device).await
    }
}

/// The test script's Redis (or Redis Cluster) and MongoDB.
fn shared_servers(on: On) -> Option<(Redis, String)> {
    let redis = match on {
        On::Single => Redis::Url(required("DDTEST_REDIS_URL")?),
        On::Cluster => Redis::Cluster(required("DDTEST_REDIS_CLUSTER")?),
    };
    Some((redis, required("DDTEST_MONGO_URL")?))
}

/// Sends with the same client_msg_id until acked, as a client does when it
/// gets a retryable error. Returns the ack and how many retryable errors it saw.
async fn send_until_acked(c: &mut Client, to: &str, cmid: &str) -> (pb::SendAck, usize) {
    let mut errors = 0;
    for _ in 0..200 {
        match c.send_text(to, cmid, cmid).await {
            Ok(ack) => return (ack, errors),
            Err(e) => {
                assert!(e.retryable, "only retryable errors are expected, got {e:?}");
                errors += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    panic!("{cmid} was never acked");
}

/// Receives (and acks) until every id in `want` arrived, reconnecting to
/// `url` with `device` if the connection closes.
async fn receive_all(mut c: Client, url: &str, token: &str, device: &str, want: &HashSet<String>) -> HashSet<String> {
    let mut got = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !want.is_subset(&got) {
        assert!(tokio::time::Instant::now() < deadline, "missing {} messages", want.difference(&got).count());
        match c.recv(Duration::from_secs(5)).await {
            Some(Ok(pb::Frame { body: Some(Body::Deliver(d)), .. })) => {
                let id = msg(&d).msg_id.clone();
                c.try_ack(vec![id.clone()]).await;
                got.insert(id);
            }
            Some(Ok(_)) | None => {}
            Some(Err(closed)) => {
                eprintln!("{device} was disconnected ({closed:?}); reconnecting");
                c = Client::login(url, token, device).await;
            }
        }
    }
    got
}

async fn three_nodes_chat_across_nodes_and_devices_on(on: On) {
    let Some((redis, mongo)) = shared_servers(on) else { return };
    let c = Cluster::start(3, redis, mongo);
    let mut a1 = c.login(0, "alice", "a1").await;
    let mut b1 = c.login(1, "bob", "b1").await;
    let mut b2 = c.login(2, "bob", "b2").await;
    let mut a2 = c.login(2, "alice", "a2").await;
    assert_eq!(a1.auth_ok.as_ref().unwrap().node_id, c.node_id(0));
    assert_eq!(b1.auth_ok.as_ref().unwrap().node_id, c.node_id(1));

    // Presence and typing cross nodes: a watcher on node 0 learns that
    // carol came online on node 1 and went again; bob on nodes 1 and 2 sees
    // alice (node 0) typing.
    let mut w = c.login(0, "watcher", "w").await;
    let sub = Body::PresenceSubscribe(pb::PresenceSubscribe { users: vec!["carol".into()] });
    let Some(Body::PresenceUpdate(u)) = w.request(sub).await.body else { panic!("presence") };
    assert!(!u.online);
    let carol = c.login(1, "carol", "c").await;
    let presence = |b: &Body| match b {
        Body::PresenceUpdate(u) => Some(u.clone()),
        _ => None,
    };
    let u = w.next_matching("PresenceUpdate", presence).await;
    assert_eq!((u.user.as_str(), u.online), ("carol", true));
    carol.close().await;
    let u = w.next_matching("PresenceUpdate", presence).await;
    assert_eq!((u.user.as_str(), u.online), ("carol", false));
    assert!(u.last_seen_ms > 0);
    let typing = Body::Typing(pb::Typing { to_user: "bob".into(), typing: true, ..Default::default() });
    a1.send_frame(&pb::Frame { req_id: 0, body: Some(typing) }).await;
    for b in [&mut b1, &mut b2] {
        let t = b
            .next_matching("Typing", |x| match x {
                Body::Typing(t) => Some(t.clone()),
                _ => None,
            })
            .await;
        assert_eq!((t.from_user.as_str(), t.typing), ("alice", true));
    }

    let ack = a1.send_text("bob", "hello", "from node0").await.unwrap();
    assert_eq!(ack.seq, 1);
    for c in [&mut b1, &mut b2, &mut a2] {
        assert_eq!(msg(&c.next_deliver().await).msg_id, ack.msg_id);
        c.ack(vec![ack.msg_id.clone()]).await;
    }
    let reply = b1.send_text("alice", "reply", "from node1").await.unwrap();
    assert_eq!(reply.seq, 2);
    for c in [&mut a1, &mut a2, &mut b2] {
        assert_eq!(msg(&c.next_deliver().await).msg_id, reply.msg_id);
        c.ack(vec![reply.msg_id.clone()]).await;
    }

    // Receipts, the list and recall cross nodes: bob reads on node 1,
    // alice's devices on nodes 0 and 2 and bob's other one hear of it.
    let conv = ack.conversation_id.clone();
    let mark = Body::MarkRead(pb::MarkRead { conversation_id: conv.clone(), up_to_seq: 2 });
    let Some(Body::ReadReceipt(r)) = b1.request(mark).await.body else { panic!("receipt") };
    assert_eq!(r.up_to_seq, 2);
    let receipt = |x: &Body| match x {
        Body::ReadReceipt(r) => Some(r.clone()),
        _ => None,
    };
    for c in [&mut a1, &mut a2, &mut b2] {
        let r = c.next_matching("ReadReceipt", receipt).await;
        assert_eq!((r.reader.as_str(), r.up_to_seq), ("bob", 2));
    }
    let list = Body::ConversationsRequest(pb::ConversationsRequest::default());
    let Some(Body::ConversationPage(page)) = a2.request(list).await.body else { panic!("page") };
    let item = &page.items[0];
    assert_eq!((item.peer.as_str(), item.unread, item.peer_read_seq), ("bob", 1, 2));
    let Some(Body::Recalled(_)) = a1.request(Body::Recall(pb::Recall { msg_id: ack.msg_id.clone() })).await.body else {
        panic!("recall")
    };
    let recalled = |x: &Body| match x {
        Body::Recalled(r) => Some(r.msg_id.clone()),
        _ => None,
    };
    for c in [&mut b1, &mut b2, &mut a2] {
        assert_eq!(c.next_matching("Recalled", recalled).await, ack.msg_id);
    }

    // A file uploaded through one node (GridFS) is read through another,
    // by the member of a conversation it was sent in.
    let auth = format!("Bearer {}", c.token("alice"));
    let up = dongdong_tests::http::send(
        &c.nodes[0].http_url,
        "POST",
        "/api/v1/files?name=receipt.txt",
        &[("authorization", &auth), ("content-type", "text/plain")],
        "收据 #42".as_bytes(),
    )
    .await;
    assert_eq!(up.status, 201, "{:?}", up.json());
    let file_id = up.json()["file_id"].as_str().unwrap().to_string();
    let doc = pb::Content {
        kind: Some(pb::content::Kind::File(pb::File { file_id: file_id.clone(), ..Default::default() })),
    };
    a1.send("bob", "file-1", doc).await.unwrap();
    let bob_auth = format!("Bearer {}", c.token("bob"));
    let down = dongdong_tests::http::send(
        &c.nodes[2].http_url,
        "GET",
        &format!("/api/v1/files/{file_id}"),
        &[("authorization", &bob_auth)],
        &[],
    )
    .await;
    assert_eq!((down.status, down.body.as_slice()), (200, "收据 #42".as_bytes()));

    // Concurrent senders of one conversation on three nodes: gap-free seq.
    let mut senders = Vec::new();
    for (node, user, peer) in [(0, "alice", "bob"), (1, "alice", "bob"), (2, "bob", "alice")] {
        let mut s = c.login(node, user, &format!("sender{node}")).await;
        senders.push(tokio::spawn(async move {
            let reqs: Vec<u64> = {
                let mut r = Vec::new();
                for i in 0..20 {
                    r.push(s.send_text_nowait(peer, &format!("n{node}-{i}"), "concurrent").await);
                }
                r
            };
            let mut acks = Vec::new();
            for r in reqs {
                match s.reply(r).await.body {
                    Some(Body::SendAck(a)) => acks.push(a),
                    other => panic!("expected SendAck, got {other:?}"),
                }
            }
            acks
        }));
    }
    let mut acks = Vec::new();
    for s in senders {
        acks.extend(s.await.unwrap());
    }
    let mut seqs: Vec<u64> = acks.iter().map(|a| a.seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (4..=63).collect::<Vec<u64>>(), "gap-free across nodes");
    // bob's device on node2 gets all 60, whichever node stored them.
    let want: HashSet<String> = acks.iter().map(|a| a.msg_id.clone()).collect();
    let got = receive_all(b2, &c.nodes[2].ws_url, &c.token("bob"), "b2", &want).await;
    assert!(want.is_subset(&got));
    // b1 reads and acks alice's share too (unacked, it would be closed
    // with 4003 after the resends when the machine is slow).
    let from_alice: HashSet<String> =
        acks.iter().filter(|a| !a.client_msg_id.starts_with("n2-")).map(|a| a.msg_id.clone()).collect();
    let mut acked = HashSet::new();
    while !from_alice.is_subset(&acked) {
        let d = b1.next_deliver().await;
        b1.ack(vec![msg(&d).msg_id.clone()]).await;
        acked.insert(msg(&d).msg_id.clone());
    }

    // The same device connecting on another node replaces the old
    // connection. Its session stays on its node (resume is per node): the
    // other node signs it in afresh; back on its node it is resumed.
    let resume = b1.auth_ok.as_ref().unwrap().resume_token.clone();
    let mut elsewhere = Client::connect(&c.nodes[0].ws_url, Encoding::Protobuf).await;
    let ok = elsewhere.auth_resuming(&c.token("bob"), "b1", &resume).await.unwrap();
    assert!(!ok.resumed, "another node does not know the session");
    assert_eq!(
        b1.closed().await,
        Closed::Frame(CloseCode::Replaced.code(), "replaced by a newer connection of the same device".into())
    );
    let mut home = Client::connect(&c.nodes[1].ws_url, Encoding::Protobuf).await;
    assert!(home.auth_resuming(&c.token("bob"), "b1", &resume).await.unwrap().resumed, "its own node resumes it");
    let (status, body) = http_get(&c.nodes[0].http_url, "/healthz").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"redis\":\"ok\"") && body.contains("\"mongodb\":\"ok\""), "{body}");
    let (_, metrics) = http_get(&c.nodes[0].http_url, "/metrics").await;
    for metric in [
        "dongdong_bus_published_total",
        "dongdong_bus_received_total",
        "dongdong_mongo_insert_seconds_bucket",
        "dongdong_pending_marked_total",
        "dongdong_pending_acked_total",
        "dongdong_storage_call_seconds_bucket{system=\"redis\",op=\"presence_lookup\"",
        "dongdong_storage_call_seconds_bucket{system=\"mongodb+redis\",op=\"append\"",
    ] {
        assert!(metrics.contains(metric), "/metrics lacks {metric}:\n{metrics}");
    }
}

async fn limits_set_on_one_node_apply_on_every_node_within_a_second_on(on: On) {
    let Some((redis, mongo)) = shared_servers(on) else { return };
    let mut c = Cluster::start(2, redis, mongo);
    let mut alice = c.login(1, "alice", "a1").await;
    let key = Some(super::child::OPERATOR_KEY);
    let path = "/api/v1/admin/limits";
    let lower = serde_json::json!({ "user_sends_per_sec": 1, "user_sends_burst": 2 });
    let started = std::time::Instant::now();
    let (status, body) = dongdong_tests::http::request(&c.nodes[0].http_url, "PUT", path, key, Some(&lower)).await;
    assert_eq!(status, 200, "{body}");
    loop {
        let (_, view) = dongdong_tests::http::request(&c.nodes[1].http_url, "GET", path, key, None).await;
        if view["effective"]["user_sends_per_sec"] == 1 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(1), "node 1 still runs with {view}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("the override reached the other node in {:?}", started.elapsed());
    // Alice's open connection on node 1 is held to it.
    let mut refused = 0;
    for i in 0..4 {
        if let Err(e) = alice.send_text("bob", &format!("l{i}"), "x").await {
            assert_eq!(code(&e), ErrorCode::RateLimited);
            refused += 1;
        }
    }
    assert!(refused >= 1, "4 sends with 2 tokens");
    // Two admins change different fields of a group at once through two
    // nodes: each writes only its own field, so both stick.
    let admin = c.signer.mint(&c.tenant, "root", im_core::Role::Admin, Duration::from_secs(600)).unwrap();
    for round in 0..20u64 {
        let path = "/api/v1/groups/race";
        let (queue, name) =
            (serde_json::json!({ "max_queue": 10 + round }), serde_json::json!({ "name": format!("Race {round}") }));
        let (a, b) = tokio::join!(
            dongdong_tests::http::request(&c.nodes[0].http_url, "PUT", path, Some(&admin), Some(&queue)),
            dongdong_tests::http::request(&c.nodes[1].http_url, "PUT", path, Some(&admin), Some(&name))
        );
        assert!(a.0 < 300 && b.0 < 300, "{a:?} {b:?}");
        let (_, g) = dongdong_tests::http::request(&c.nodes[0].http_url, "GET", path, Some(&admin), None).await;
        assert_eq!((g["max_queue"].as_u64(), g["name"].as_str()), (Some(10 + round), Some(&*format!("Race {round}"))));
    }
    // A node started later reads the stored override.
    c.add_node(2);
    let (_, view) = dongdong_tests::http::request(&c.nodes[2].http_url, "GET", path, key, None).await;
    assert_eq!(view["effective"]["user_sends_per_sec"], 1, "{view}");
}

async fn killed_node_loses_nothing_acked_and_users_move_to_another_on(on: On) {
    let Some((redis, mongo)) = shared_servers(on) else { return };
    let c = Cluster::start(3, redis, mongo);
    let bob = c.login(0, "bob", "phone").await;
    let mut alice = c.login(1, "alice", "a1").await;
    let mut reqs = Vec::new();
    for i in 0..60 {
        reqs.push(alice.send_text_nowait("bob", &format!("k{i}"), "in flight").await);
    }
    let mut acked = HashSet::new();
    for (i, r) in reqs.into_iter().enumerate() {
        if i == 20 {
            // bob's node dies with pushes to him in flight.
            let victim = c.nodes[0].pid().to_string();
            assert!(std::process::Command::new("kill").args(["-9", &victim]).status().unwrap().success());
        }
        if let Some(Body::SendAck(a)) = alice.reply(r).await.body {
            acked.insert(a.msg_id);
        }
    }
    assert_eq!(acked.len(), 60, "alice's node was not affected");
    drop(bob);
    // bob comes back through another node and gets every acked message.
    let bob = c.login(2, "bob", "phone").await;
    let got = receive_all(bob, &c.nodes[2].ws_url, &c.token("bob"), "phone", &acked).await;
    assert!(acked.is_subset(&got));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_under_traffic_loses_nothing_and_recovers() {
    let Some(mongo) = required("DDTEST_MONGO_URL") else { return };
    let redis_dir = tempfile::tempdir().unwrap();
    let Some(mut redis) = PrivateRedis::start(redis_dir.path()) else { return };
    let c = Cluster::start(2, Redis::Url(redis.url()), mongo);
    let bob = c.login(1, "bob", "b1").await;
    let mut alice = c.login(0, "alice", "a1").await;
    let mut acked = HashSet::new();
    let mut retryable_errors = 0;
    for i in 0..80 {
        if i == 30 {
            redis.restart();
        }
        let (ack, errors) = send_until_acked(&mut alice, "bob", &format!("r{i}")).await;
        retryable_errors += errors;
        acked.insert(ack.msg_id);
    }
    assert_eq!(acked.len(), 80);
    eprintln!("retryable errors during the Redis restart: {retryable_errors}");
    let got = receive_all(bob, &c.nodes[1].ws_url, &c.token("bob"), "b1", &acked).await;
    assert!(acked.is_subset(&got));
    // Recovered without a restart: a new conversation works end to end.
    let mut carol = c.login(1, "carol", "c1").await;
    let ack = alice.send_text("carol", "after", "recovered").await.unwrap();
    assert_eq!(msg(&carol.next_deliver().await).msg_id, ack.msg_id);
}

/// A Redis Cluster master killed under traffic (its replica takes over):
/// sends meanwhile fail with retryable errors, every acked message is
/// delivered, and the nodes recover without a restart. (redis 1.8.1's
/// cluster client left every request stranded after such a failover; the
/// soak found it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_master_killed_under_traffic_loses_nothing_acked() {
    let Some(mongo) = required("DDTEST_MONGO_URL") else { return };
    let redis_dir = tempfile::tempdir().unwrap();
    let Some(redis) = PrivateRedisCluster::start(redis_dir.path(), 3) else { return };
    let c = Cluster::start(2, Redis::Cluster(redis.seeds()), mongo);
    let bob = c.login(1, "bob", "b1").await;
    let mut alice = c.login(0, "alice", "a1").await;
    let mut acked = HashSet::new();
    let mut retryable_errors = 0;
    let mut redis = Some(redis);
    let mut failover = None;
    for i in 0..150 {
        if i == 30 {
            // Killed while alice goes on sending.
            let mut r = redis.take().unwrap();
            failover = Some(tokio::task::spawn_blocking(move || (r.kill_a_master(), r)));
        }
        // As a client does: retryable errors retried, a closed connection
        // (1013: its replay could not read Redis) opened again.
        let cmid = format!("f{i}");
        let ack = loop {
            match alice.try_send_text("bob", &cmid, &cmid).await {
                Some(Ok(ack)) => break ack,
                Some(Err(e)) => assert!(e.retryable, "only retryable errors: {e:?}"),
                None => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if let Some(mut again) = Client::try_connect(&c.nodes[0].ws_url, Encoding::Protobuf).await
                        && again.auth(&c.token("alice"), "a1").await.is_ok()
                    {
                        alice = again;
                    }
                }
            }
            retryable_errors += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        acked.insert(ack.msg_id);
    }
    let (took, _redis) = failover.unwrap().await.unwrap();
    eprintln!("a replica took over after {took:?}; retryable errors meanwhile: {retryable_errors}");
    let got = receive_all(bob, &c.nodes[1].ws_url, &c.token("bob"), "b1", &acked).await;
    assert!(acked.is_subset(&got));
    // Recovered without a restart: a new conversation, across the nodes.
    let mut carol = c.login(1, "carol", "c1").await;
    let ack = alice.send_text("carol", "after", "recovered").await.unwrap();
    assert_eq!(msg(&carol.next_deliver().await).msg_id, ack.msg_id);
    for node in &c.nodes {
        assert_eq!(http_get(&node.http_url, "/healthz").await.0, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_down_gives_retryable_errors_and_no_ack_then_recovers() {
    let Some(redis) = required("DDTEST_REDIS_URL") else { return };
    let mongo_dir = tempfile::tempdir().unwrap();
    let Some(mut mongo) = PrivateMongo::start(&mongo_dir.path().join("db")) else { return };
    let mut c = Cluster::start(0, Redis::Url(redis), mongo.url());
    let data = c.dir.path().join("node0");
    let node_id = c.node_id(0);
    c.nodes.push(ChildServer::start_with(
        &data,
        &node_id,
        &[
            ("DONGDONG_STORAGE__BACKEND", "cluster"),
            c.redis.env(),
            ("DONGDONG_STORAGE__MONGO_URL", &c.mongo_url),
            ("DONGDONG_STORAGE__MONGO_DATABASE", &c.database),
            ("DONGDONG_STORAGE__MONGO_TIMEOUT", "1s"),
        ],
    ));
    let mut bob = c.login(0, "bob", "b1").await;
    let mut alice = c.login(0, "alice", "a1").await;
    let before = alice.send_text("bob", "before", "stored").await.unwrap();
    assert_eq!(msg(&bob.next_deliver().await).msg_id, before.msg_id);

    mongo.stop();
    let e = alice.send_text("bob", "during", "not stored").await.unwrap_err();
    assert_eq!(code(&e), ErrorCode::Unavailable);
    assert!(e.retryable);
    let (status, body) = http_get(&c.nodes[0].http_url, "/healthz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("mongodb"), "{body}");

    mongo.resume();
    let (ack, _) = send_until_acked(&mut alice, "bob", "during").await;
    assert_eq!(ack.seq, 2, "the failed attempt used no seq");
    let d = bob.next_deliver().await;
    assert_eq!(msg(&d).msg_id, ack.msg_id);
    assert_eq!(msg(&d).seq, 2);
    let history = alice.sync(pb::SyncRequest { with_user: "bob".into(), ..Default::default() }).await.unwrap();
    assert_eq!(history.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(http_get(&c.nodes[0].http_url, "/healthz").await.0, 200);
}

#[test]
fn unreachable_redis_or_mongodb_stops_start_up_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let serve = |redis: &str, mongo: &str| {
        std::process::Command::new(super::child::binary())
            .args(["serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data"])
            .arg(dir.path())
            .env("DONGDONG_AUTH__SECRET", dongdong_tests::SECRET)
            .env("DONGDONG_STORAGE__BACKEND", "cluster")
            .env("DONGDONG_STORAGE__REDIS_URL", redis)
            .env("DONGDONG_STORAGE__MONGO_URL", mongo)
            .env("DONGDONG_STORAGE__MONGO_TIMEOUT", "300ms")
            .output()
            .unwrap()
    };
    let out = serve("redis://127.0.0.1:1", "mongodb://127.0.0.1:1");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach Redis at redis://127.0.0.1:1"), "{err}");
    let Some(redis) = required("DDTEST_REDIS_URL") else { return };
    let out = serve(&redis, "mongodb://127.0.0.1:1");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach MongoDB at mongodb://127.0.0.1:1"), "{err}");
}

/// Customer service across nodes: groups made through one node's HTTP API,
/// customers and agents on different nodes, assignment, queue positions,
/// transfer and the first message all cross the bus.
async fn customer_service_across_nodes_on(on: On) {
    use dongdong_tests::http::request as http;
    use im_core::Role;
    let Some((redis, mongo)) = shared_servers(on) else { return };
    let c = Cluster::start(3, redis, mongo);
    let mint = |user: &str, role| c.signer.mint(&c.tenant, user, role, Duration::from_secs(600)).unwrap();
    let admin = mint("root", Role::Admin);
    // An admin on node 0 disconnects a user whose device is on node 2.
    let mut far = c.login(2, "mallory", "m").await;
    let body = serde_json::json!({"reason": "closed by support"});
    let (status, r) =
        http(&c.nodes[0].http_url, "POST", "/api/v1/admin/users/mallory/disconnect", Some(&admin), Some(&body)).await;
    assert_eq!((status, r["disconnected"].as_u64()), (200, Some(1)), "{r}");
    assert_eq!(far.closed().await, Closed::Frame(4004, "closed by support".into()));
    let (status, body) =
        http(&c.nodes[0].http_url, "PUT", "/api/v1/groups/help", Some(&admin), Some(&serde_json::json!({}))).await;
    assert_eq!(status, 201, "{body}");
    for agent in ["ann", "bob"] {
        let path = format!("/api/v1/groups/help/agents/{agent}");
        let body = serde_json::json!({"capacity": 1});
        assert_eq!(http(&c.nodes[0].http_url, "PUT", &path, Some(&admin), Some(&body)).await.0, 200);
    }
    let set_online = Body::SetStatus(pb::SetStatus { status: pb::AgentStatus::Online as i32 });
    let mut ann = Client::login(&c.nodes[1].ws_url, &mint("ann", Role::Agent), "a").await;
    assert!(matches!(ann.request(set_online.clone()).await.body, Some(Body::CsState(_))));
    let request = |first: Option<&str>| {
        Body::RequestService(pb::RequestService {
            group: "help".into(),
            first_message: first.map(dongdong_tests::client::text_content),
            ..Default::default()
        })
    };
    // Customer on node 0, agent on node 1.
    let mut c1 = Client::login(&c.nodes[0].ws_url, &mint("c1", Role::Customer), "d").await;
    let Some(Body::SessionAssigned(a)) = c1.request(request(Some("hi from node0"))).await.body else {
        panic!("assigned at once")
    };
    let session = a.session.unwrap();
    assert_eq!(session.agent, "ann");
    let pushed = ann
        .next_matching("SessionAssigned", |b| match b {
            Body::SessionAssigned(a) => a.session.clone(),
            _ => None,
        })
        .await;
    assert_eq!(pushed.session_id, session.session_id);
    let first = ann
        .next_matching("Deliver", |b| match b {
            Body::Deliver(d) => Some(msg(d).clone()),
            _ => None,
        })
        .await;
    assert_eq!(first.from_user, "c1");
    // Customer on node 2 waits; its position reaches it across nodes.
    let mut c2 = Client::login(&c.nodes[2].ws_url, &mint("c2", Role::Customer), "d").await;
    let Some(Body::QueueUpdate(q)) = c2.request(request(None)).await.body else { panic!("queued") };
    assert_eq!(q.position, 1);
    // bob (node 2) comes online and takes c2, who hears it from node 2's bus.
    let mut bob = Client::login(&c.nodes[2].ws_url, &mint("bob", Role::Agent), "b").await;
    bob.request(set_online).await;
    let got = c2
        .next_matching("SessionAssigned", |b| match b {
            Body::SessionAssigned(a) => a.session.clone(),
            _ => None,
        })
        .await;
    assert_eq!(got.agent, "bob");
    // ann ends c1's session: c1 on node 0 is told.
    let end = Body::EndSession(pb::EndSession { session_id: session.session_id.clone() });
    assert!(matches!(ann.request(end).await.body, Some(Body::SessionEnded(_))));
    c1.next_matching("SessionEnded", |b| matches!(b, Body::SessionEnded(_)).then_some(())).await;
    // Every node's supervisor view agrees.
    for node in &c.nodes {
        let (_, g) = http(&node.http_url, "GET", "/api/v1/groups/help", Some(&admin), None).await;
        assert_eq!((g["queue_length"].as_u64(), g["sessions_active"].as_u64()), (Some(0), Some(1)), "{g}");
    }
}

/// The concurrency check of customer service: 3 nodes, 500 customers and 20
/// agents (capacity 5) spread over them, all at once, with agents and
/// customers dropping their connections at random. At the end every
/// customer was served exactly once, no agent ever held more than its
/// capacity, and the queue and the loads are back to zero on every node.
async fn cs_invariants_hold_with_three_nodes_500_customers_20_agents_on(on: On) {
    use dongdong_tests::http::request as http;
    use im_core::Role;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    const CUSTOMERS: usize = 500;
    const AGENTS: usize = 20;
    const CAPACITY: usize = 5;
    let Some((redis, mongo)) = shared_servers(on) else { return };
    let c = Arc::new(Cluster::start(3, redis, mongo));
    let mint = {
        let c = c.clone();
        move |user: &str, role| c.signer.mint(&c.tenant, user, role, Duration::from_secs(600)).unwrap()
    };
    let admin = mint("root", Role::Admin);
    let body = serde_json::json!({"max_queue": CUSTOMERS, "max_wait_s": 600});
    assert_eq!(http(&c.nodes[0].http_url, "PUT", "/api/v1/groups/load", Some(&admin), Some(&body)).await.0, 201);
    for i in 0..AGENTS {
        let path = format!("/api/v1/groups/load/agents/agent{i}");
        let body = serde_json::json!({ "capacity": CAPACITY });
        assert_eq!(http(&c.nodes[i % 3].http_url, "PUT", &path, Some(&admin), Some(&body)).await.0, 200);
    }
    let ended = Arc::new(AtomicUsize::new(0));
    let all_online = Arc::new(tokio::sync::Barrier::new(AGENTS + 1));
    let started = std::time::Instant::now();
    let mut agents = Vec::new();
    for i in 0..AGENTS {
        let (c, ended, token) = (c.clone(), ended.clone(), mint(&format!("agent{i}"), Role::Agent));
        let all_online = all_online.clone();
        agents.push(tokio::spawn(async move {
            let url = c.nodes[i % 3].ws_url.clone();
            let mut client = Client::login(&url, &token, "console").await;
            let online = Body::SetStatus(pb::SetStatus { status: pb::AgentStatus::Online as i32 });
            assert!(matches!(client.request(online).await.body, Some(Body::CsState(_))));
            all_online.wait().await;
            let mut open: HashSet<String> = HashSet::new();
            // Pushes are notifications and may arrive after CsState told the
            // same: dedupe by session id, as a console does.
            let mut done: HashSet<String> = HashSet::new();
            let mut mine = 0usize;
            let mut handled = 0usize;
            while ended.load(Ordering::SeqCst) < CUSTOMERS {
                // Agents 0-3 drop their connection now and then and come back
                // within the grace period: what they missed is in CsState.
                if i < 4 && handled > 0 && handled.is_multiple_of(7) {
                    client.close().await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    client = Client::login(&url, &token, "console").await;
                    let Some(Body::CsState(st)) =
                        client.request(Body::CsStateRequest(pb::CsStateRequest {})).await.body
                    else {
                        panic!("state")
                    };
                    open = st
                        .sessions
                        .into_iter()
                        .filter(|s| s.agent == format!("agent{i}"))
                        .map(|s| s.session_id)
                        .collect();
                    assert!(open.len() <= CAPACITY, "agent{i} holds {} sessions", open.len());
                    handled += 1;
                }
                let wait = if open.is_empty() { Duration::from_millis(200) } else { Duration::from_millis(1) };
                match client.recv(wait).await {
                    Some(Ok(pb::Frame { body: Some(Body::SessionAssigned(a)), .. })) => {
                        let s = a.session.unwrap();
                        let current = s.agent == format!("agent{i}") && s.state == pb::SessionState::Active as i32;
                        if current && !done.contains(&s.session_id) {
                            open.insert(s.session_id);
                            assert!(open.len() <= CAPACITY, "agent{i} over capacity: {}", open.len());
                        }
                    }
                    Some(Ok(pb::Frame { body: Some(Body::Deliver(d)), .. })) => {
                        client.ack(vec![msg(&d).msg_id.clone()]).await;
                    }
                    Some(Ok(_)) | None => {}
                    Some(Err(closed)) => panic!("agent{i} disconnected: {closed:?}"),
                }
                // Serve one open session: end it.
                if let Some(id) = open.iter().next().cloned() {
                    open.remove(&id);
                    done.insert(id.clone());
                    let end = Body::EndSession(pb::EndSession { session_id: id.clone() });
                    match client.request(end).await.body {
                        Some(Body::SessionEnded(_)) => {
                            mine += 1;
                            handled += 1;
                            ended.fetch_add(1, Ordering::SeqCst);
                        }
                        other => panic!("agent{i} could not end {id}: {other:?}"),
                    }
                }
            }
            mine
        }));
    }
    all_online.wait().await;
    let mut customers = Vec::new();
    for i in 0..CUSTOMERS {
        let (c, token) = (c.clone(), mint(&format!("cust{i}"), Role::Customer));
        customers.push(tokio::spawn(async move {
            let url = c.nodes[(i + 1) % 3].ws_url.clone();
            let mut client = Client::login(&url, &token, "phone").await;
            let req = Body::RequestService(pb::RequestService { group: "load".into(), ..Default::default() });
            let reply = client.request(req).await.body;
            assert!(matches!(reply, Some(Body::QueueUpdate(_) | Body::SessionAssigned(_))), "cust{i}: {reply:?}");
            // One in ten drops the connection and looks from a new one: the
            // session is still theirs (waiting, served, or already ended).
            if i % 10 == 0 {
                client.close().await;
                let mut again = Client::login(&url, &token, "phone").await;
                let Some(Body::CsState(st)) = again.request(Body::CsStateRequest(pb::CsStateRequest {})).await.body
                else {
                    panic!("state")
                };
                assert!(st.sessions.len() <= 1, "cust{i} has {} open sessions", st.sessions.len());
                again.close().await;
            } else {
                client.close().await;
            }
        }));
    }
    for t in customers {
        t.await.unwrap();
    }
    let mut total = 0;
    for t in agents {
        total += t.await.unwrap();
    }
    let elapsed = started.elapsed();
    // Every customer's session was ended exactly once, by its agent.
    assert_eq!(total, CUSTOMERS);
    for node in &c.nodes {
        let (_, g) = http(&node.http_url, "GET", "/api/v1/groups/load", Some(&admin), None).await;
        assert_eq!(g["queue_length"].as_u64(), Some(0), "{g}");
        assert_eq!(g["sessions_active"].as_u64(), Some(0), "{g}");
        for a in g["agents"].as_array().unwrap() {
            assert_eq!(a["load"].as_u64(), Some(0), "{a}");
        }
    }
    eprintln!(
        "cs: {total} sessions assigned and ended in {:.2}s over 3 nodes ({:.0} assignments/s, server and clients on the same machine)",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
}

/// The texts `query` finds once `want` are found, or when `within` ran out.
async fn search_until(c: &mut Client, query: &str, want: usize, within: Duration) -> Vec<String> {
    use super::search::{found_within, search, texts};
    texts(&found_within(c, search(query), want, within).await)
}

async fn search_finds_what_any_node_stored_and_survives_the_indexing_node_on(on: On) {
    let Some((redis, mongo)) = shared_servers(on) else { return };
    let mut cluster = Cluster::start(2, redis, mongo);
    let mut alice = cluster.login(0, "alice", "a1").await;
    let mut bob = cluster.login(1, "bob", "b1").await;
    // (Deliveries are acked: the nodes close connections that do not.)
    alice.send_text("bob", "m1", "我想申请退款，订单JD2026-000123").await.unwrap();
    bob.receive_and_ack(1).await;
    bob.send_text("alice", "m2", "好的，退款已处理").await.unwrap();
    alice.receive_and_ack(1).await;
    let found = search_until(&mut bob, "退款", 2, Duration::from_secs(15)).await;
    assert_eq!(found, ["好的，退款已处理", "我想申请退款，订单JD2026-000123"], "newest first, from both nodes");
    let found = search_until(&mut alice, "000123", 1, Duration::from_secs(5)).await;
    assert_eq!(found, ["我想申请退款，订单JD2026-000123"]);
    let mut eve = cluster.login(1, "eve", "e1").await;
    assert!(search_until(&mut eve, "退款", 1, Duration::ZERO).await.is_empty(), "a stranger finds nothing");
    // The first node (which took the indexing lease) dies: the other takes
    // it over when it expires and indexes what is sent after.
    cluster.nodes.remove(0).kill9();
    bob.send_text("alice", "m3", "退款 arrives tomorrow").await.unwrap();
    let found = search_until(&mut bob, "退款", 3, Duration::from_secs(40)).await;
    assert_eq!(found.len(), 3, "indexed by the surviving node: {found:?}");
    assert_eq!(found[0], "退款 arrives tomorrow");
}

/// What one device saw of a conversation: each message's first arrival
/// (seq, text), in arrival order.
#[derive(Default)]
struct Seen {
    first: Vec<(u64, String)>,
    ids: HashSet<String>,
}

impl Seen {
    /// Records and acks a frame; returns the SendAck if it was one.
    async fn take(&mut self, c: &mut Client, frame: pb::Frame, who: &str) -> Option<pb::SendAck> {
        match frame.body {
            Some(Body::Deliver(d)) => {
                let m = msg(&d);
                c.try_ack(vec![m.msg_id.clone()]).await;
                if self.ids.insert(m.msg_id.clone()) {
                    self.first.push((m.seq, dongdong_tests::client::text_of(m).to_string()));
                }
                None
            }
            Some(Body::SendAck(ack)) => Some(ack),
            Some(Body::Error(e)) => panic!("{who}: unexpected error {e:?}"),
            _ => None,
        }
    }

    /// Reads (acking each message) until `want` distinct messages arrived,
    /// signing in again as `device` of `user` if the connection closes.
    async fn read_until(&mut self, c: &mut Client, want: usize, at: (&Cluster, usize, &str, &str)) {
        let (cluster, node, user, device) = at;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
        while self.ids.len() < want {
            assert!(tokio::time::Instant::now() < deadline, "{device}: {} of {want} messages", self.ids.len());
            match c.recv(Duration::from_secs(5)).await {
                Some(Ok(frame)) => {
                    self.take(c, frame, device).await;
                }
                Some(Err(closed)) => {
                    eprintln!("{device} was disconnected ({closed:?}); signing in again");
                    *c = cluster.login(node, user, device).await;
                }
                None => {}
            }
        }
    }

    /// Every first arrival in seq order, and exactly the seqs `expected`.
    fn check(&self, expected: &[u64], who: &str) {
        let out_of_order = self.first.windows(2).filter(|p| p[1].0 < p[0].0).count();
        assert_eq!(out_of_order, 0, "{who} saw {out_of_order} messages arrive after a higher seq");
        let seqs: Vec<u64> = self.first.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, expected, "{who} got every message once");
    }
}

/// What a sender did: the seq of each of its messages by the index it
/// was written in, and which were refused with a retryable error and sent
/// again (they take their place when retried).
struct Sent {
    seqs: Vec<u64>,
    retried: HashSet<usize>,
}

/// Sends `rounds` × `per_round` pipelined messages to `to` (texts
/// `{prefix}{i}`), as a client does: a send refused with a retryable error
/// goes again, first in the next round. Reads and acks what arrives
/// meanwhile.
async fn send_pipelined(
    mut c: Client,
    to: &str,
    prefix: &str,
    rounds: usize,
    per_round: usize,
) -> (Sent, Seen, Client) {
    let total = rounds * per_round;
    let mut seen = Seen::default();
    let mut sent = Sent { seqs: vec![0; total], retried: HashSet::new() };
    let (mut next, mut again) = (0, std::collections::VecDeque::new());
    let mut attempts = 0;
    while next < total || !again.is_empty() {
        attempts += 1;
        assert!(attempts < 100 * rounds, "{prefix}: too many refused sends");
        let mut by_req = std::collections::HashMap::new();
        while by_req.len() < per_round {
            let Some(i) = again.pop_front().or_else(|| {
                (next < total).then(|| {
                    next += 1;
                    next - 1
                })
            }) else {
                break;
            };
            let cmid = format!("{prefix}{i}");
            by_req.insert(c.send_text_nowait(to, &cmid, &cmid).await, i);
        }
        while !by_req.is_empty() {
            let frame = match c.recv(Duration::from_secs(30)).await {
                Some(Ok(frame)) => frame,
                other => panic!("{prefix}: no reply to a send ({other:?})"),
            };
            match frame.body {
                Some(Body::Error(ref e)) if e.retryable && by_req.contains_key(&frame.req_id) => {
                    let i = by_req.remove(&frame.req_id).unwrap();
                    sent.retried.insert(i);
                    again.push_back(i);
                }
                _ => {
                    let req_id = frame.req_id;
                    if let Some(ack) = seen.take(&mut c, frame, prefix).await {
                        sent.seqs[by_req.remove(&req_id).unwrap()] = ack.seq;
                    }
                }
            }
        }
        if !again.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    (sent, seen, c)
}

/// Senders of one conversation on two nodes, stalled in turn (SIGSTOP for
/// 50 ms, as a busy node stalls), and the second devices of both users on a
/// third node: every device gets every message once, in seq order, and
/// each sender's messages in the order written.
async fn a_third_device_sees_senders_on_two_nodes_in_seq_order_on(on: On) {
    let Some((redis, mongo)) = shared_servers(on) else { return };
    let c = Cluster::start(3, redis, mongo);
    let key = Some(super::child::OPERATOR_KEY);
    let (path, fast) = ("/api/v1/admin/limits", 100_000);
    let rates = serde_json::json!({
        "rate_per_sec": fast, "rate_burst": fast, "user_frames_per_sec": fast,
        "user_frames_burst": fast, "user_sends_per_sec": fast, "user_sends_burst": fast,
    });
    let (status, body) = dongdong_tests::http::request(&c.nodes[0].http_url, "PUT", path, key, Some(&rates)).await;
    assert_eq!(status, 200, "{body}");
    for node in &c.nodes {
        let started = std::time::Instant::now();
        while dongdong_tests::http::request(&node.http_url, "GET", path, key, None).await.1["effective"]["user_sends_per_sec"]
            != fast
        {
            assert!(started.elapsed() < Duration::from_secs(5), "the limits did not reach {}", node.ws_url);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let (rounds, per_round) = (40, 25);
    let per_user = rounds * per_round;
    let a1 = c.login(0, "alice", "a1").await;
    let b1 = c.login(1, "bob", "b1").await;
    let mut a3 = c.login(2, "alice", "a3").await;
    let mut b3 = c.login(2, "bob", "b3").await;
    let c = std::sync::Arc::new(c);
    let watchers = tokio::spawn({
        let c = c.clone();
        async move {
            let (mut sa, mut sb) = (Seen::default(), Seen::default());
            let want = 2 * per_user;
            tokio::join!(
                sa.read_until(&mut a3, want, (&c, 2, "alice", "a3")),
                sb.read_until(&mut b3, want, (&c, 2, "bob", "b3"))
            );
            (sa, sb)
        }
    });
    let stalling = tokio_util::sync::CancellationToken::new();
    let pids = [c.nodes[0].pid(), c.nodes[1].pid()];
    let stall = tokio::spawn({
        let stop = stalling.clone();
        async move {
            let mut stalls = 0;
            while !stop.is_cancelled() {
                for pid in pids {
                    let signal = |s: &str| std::process::Command::new("kill").arg(s).arg(pid.to_string()).status();
                    signal("-STOP").unwrap();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    signal("-CONT").unwrap();
                    stalls += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            stalls
        }
    });
    let started = std::time::Instant::now();
    // Each sender reads on (and acks) until the other's messages are in.
    let sender =
        |client, node, (user, device, peer, prefix): (&'static str, &'static str, &'static str, &'static str)| {
            let c = c.clone();
            async move {
                let (sent, mut seen, mut client) = send_pipelined(client, peer, prefix, rounds, per_round).await;
                seen.read_until(&mut client, per_user, (&c, node, user, device)).await;
                (sent, seen)
            }
        };
    let ((alice_sent, a1_seen), (bob_sent, b1_seen)) =
        tokio::join!(sender(a1, 0, ("alice", "a1", "bob", "a")), sender(b1, 1, ("bob", "b1", "alice", "b")));
    stalling.cancel();
    let stalls = stall.await.unwrap();
    let (a3_seen, b3_seen) = watchers.await.unwrap();
    let retried = alice_sent.retried.len() + bob_sent.retried.len();
    eprintln!(
        "{} messages from senders on two nodes, {stalls} stalls, {retried} sends retried, in {:?}",
        2 * per_user,
        started.elapsed()
    );

    for (who, sent) in [("alice", &alice_sent), ("bob", &bob_sent)] {
        let in_place: Vec<u64> =
            sent.seqs.iter().enumerate().filter(|(i, _)| !sent.retried.contains(i)).map(|(_, s)| *s).collect();
        assert!(in_place.windows(2).all(|p| p[0] < p[1]), "{who}'s sends got seqs in the order written");
    }
    let all: Vec<u64> = (1..=2 * per_user as u64).collect();
    a3_seen.check(&all, "a3 (node 3)");
    b3_seen.check(&all, "b3 (node 3)");
    let sorted = |s: &Sent| {
        let mut v = s.seqs.clone();
        v.sort_unstable();
        v
    };
    a1_seen.check(&sorted(&bob_sent), "a1 (node 1)");
    b1_seen.check(&sorted(&alice_sent), "b1 (node 2)");
    // Each sender's messages in the order of their seqs on the third node
    // (the order written, but for retried sends, which take their place
    // when retried).
    for seen in [&a3_seen, &b3_seen] {
        for (prefix, sent) in [("a", &alice_sent), ("b", &bob_sent)] {
            let order: Vec<u64> = seen
                .first
                .iter()
                .filter_map(|(_, t)| t.strip_prefix(prefix)?.parse::<usize>().ok())
                .map(|i| sent.seqs[i])
                .collect();
            assert!(order.windows(2).all(|p| p[0] < p[1]), "{prefix}'s messages in the order sent");
            assert_eq!(order.len(), per_user);
        }
    }
    let (_, metrics) = http_get(&c.nodes[2].http_url, "/metrics").await;
    let reads = metrics.lines().find(|l| l.starts_with("dongdong_order_gap_reads_total")).unwrap_or("no gap reads");
    eprintln!("node 3: {reads}");
}

/// Pushes a node holds (being retried against a webhook that answers 503,
/// or waiting for their user's interval) outlive a kill -9 of that node:
/// the other node takes them over and every offline user gets one push,
/// of the latest message (the coalesced ones never go).
async fn durable_pushes_on(on: On) {
    use super::push::{Receiver, SECRET};
    let Some((redis, mongo)) = shared_servers(on) else { return };
    let hook = Receiver::start().await;
    hook.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut c = Cluster::start(0, redis, mongo);
    c.extra_env = [
        ("DONGDONG_PUSH__WEBHOOK_URL", hook.url.as_str()),
        ("DONGDONG_PUSH__SECRET", SECRET),
        ("DONGDONG_PUSH__MIN_INTERVAL", "1h"),
        ("DONGDONG_PUSH__MAX_ATTEMPTS", "20"),
        ("DONGDONG_PUSH__TAKEOVER_AFTER", "2s"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    c.add_node(0);
    c.add_node(1);
    let mut alice = c.login(0, "alice", "a1").await;
    // 20 offline users, one message each: pushed at once, refused (503),
    // retried. And vic gets three: the first is retried, the other two
    // wait for his interval (an hour), the third replacing the second.
    let mut want = std::collections::HashMap::new();
    for i in 0..20 {
        let user = format!("u{i}");
        want.insert(user.clone(), alice.send_text(&user, &format!("p{i}"), "offline").await.unwrap().msg_id);
    }
    for i in 0..3 {
        let id = alice.send_text("vic", &format!("v{i}"), "offline").await.unwrap().msg_id;
        want.insert("vic".to_string(), id);
    }
    // Node 0 holds them all: 8 being retried (its requests at once), the
    // rest waiting for one of those, vic's third for his interval.
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    let tried =
        || hook.hits().iter().map(|h| h.json()["to_user"].as_str().unwrap().to_string()).collect::<HashSet<_>>();
    while tried().len() < 8 {
        assert!(tokio::time::Instant::now() < until, "node 0 did not try the webhook");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(std::process::Command::new("kill").args(["-9", &c.nodes[0].pid().to_string()]).status().unwrap().success());
    let killed_at = hook.hits().len();
    hook.down.store(false, std::sync::atomic::Ordering::SeqCst);
    // Node 1 takes them over (2 s unclaimed) and sends them.
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    let taken = |hits: &[super::push::Hit]| -> Vec<(String, String, String)> {
        hits.iter()
            .filter(|h| h.status == 200)
            .map(|h| {
                let b = h.json();
                (b["to_user"].as_str().unwrap().into(), b["msg_id"].as_str().unwrap().into(), h.idempotency_key.clone())
            })
            .collect()
    };
    while taken(&hook.hits()).len() < want.len() {
        assert!(tokio::time::Instant::now() < until, "pushes missing: {:?}", taken(&hook.hits()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nothing more follows (a second takeover would send them again).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let hits = hook.hits();
    let got = taken(&hits);
    assert_eq!(got.len(), want.len(), "each user once: {got:?}");
    for (user, msg_id, key) in &got {
        assert_eq!(Some(msg_id), want.get(user), "{user} is pushed the latest message");
        assert_eq!(key.len(), 32, "an idempotency key");
    }
    let keys: HashSet<&String> = got.iter().map(|(_, _, k)| k).collect();
    assert_eq!(keys.len(), got.len(), "one key per (user, message)");
    assert!(hits.len() > killed_at, "the pushes after the kill came from node 1");
    let (_, metrics) = http_get(&c.nodes[1].http_url, "/metrics").await;
    assert!(metrics.contains("dongdong_push_taken_over_total"), "{metrics}");
}

/// Each test as `name` on the single Redis and as `on_redis_cluster::name`
/// on the Redis Cluster: the tests above that do not stop Redis.
macro_rules! on_both_redis {
    ($($name:ident => $body:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $body(On::Single).await;
            }
        )*

        mod on_redis_cluster {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    $body(On::Cluster).await;
                }
            )*
        }
    };
}

on_both_redis! {
    three_nodes_chat_across_nodes_and_devices => three_nodes_chat_across_nodes_and_devices_on,
    limits_set_on_one_node_apply_on_every_node_within_a_second => limits_set_on_one_node_apply_on_every_node_within_a_second_on,
    killed_node_loses_nothing_acked_and_users_move_to_another => killed_node_loses_nothing_acked_and_users_move_to_another_on,
    customer_service_across_nodes => customer_service_across_nodes_on,
    cs_invariants_hold_with_three_nodes_500_customers_20_agents => cs_invariants_hold_with_three_nodes_500_customers_20_agents_on,
    search_finds_what_any_node_stored_and_survives_the_indexing_node => search_finds_what_any_node_stored_and_survives_the_indexing_node_on,
    a_third_device_sees_senders_on_two_nodes_in_seq_order => a_third_device_sees_senders_on_two_nodes_in_seq_order_on,
    pushes_held_by_a_killed_node_are_sent_by_another_once => durable_pushes_on,
}
