//! Customer service over real WebSockets and the HTTP API: queueing with
//! live positions, assignment, the first message, chat, transfer with
//! history, end and rate, leave-a-message, quick replies, supervisor views,
//! agent drop and grace period, roles and bad input.

use dongdong_tests::client::{Client, code, msg, text_content};
use dongdong_tests::http::request as http;
use dongdong_tests::server::TestServer;
use im_core::pb::{self, frame::Body};
use im_core::{ErrorCode, Role};
use serde_json::json;
use std::time::Duration;

const T: &str = "shop";

async fn start(grace: Duration) -> TestServer {
    TestServer::start_with(|c| {
        c.cs.agent_grace = grace;
        c.cs.sweep_interval = Duration::from_millis(50);
        c.cs.groups.clear();
    })
    .await
}

fn token(s: &TestServer, user: &str, role: Role) -> String {
    s.token_with_role(T, user, role)
}

async fn login(s: &TestServer, user: &str, role: Role) -> Client {
    Client::login(&s.ws_url, &token(s, user, role), &format!("{user}-dev")).await
}

async fn cs(c: &mut Client, body: Body) -> Body {
    c.request(body).await.body.expect("reply has a body")
}

async fn cs_err(c: &mut Client, body: Body) -> pb::Error {
    match cs(c, body).await {
        Body::Error(e) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn request(group: &str, first: Option<&str>) -> Body {
    Body::RequestService(pb::RequestService {
        group: group.into(),
        first_message: first.map(text_content),
        page: "https://shop.example/order/42".into(),
        user_agent: "Mozilla/5.0 (test)".into(),
    })
}

fn set_status(s: pb::AgentStatus) -> Body {
    Body::SetStatus(pb::SetStatus { status: s as i32 })
}

async fn queue_update(c: &mut Client) -> pb::QueueUpdate {
    c.next_matching("QueueUpdate", |b| match b {
        Body::QueueUpdate(u) => Some(u.clone()),
        _ => None,
    })
    .await
}

async fn assigned(c: &mut Client) -> pb::ServiceSession {
    c.next_matching("SessionAssigned", |b| match b {
        Body::SessionAssigned(a) => a.session.clone(),
        _ => None,
    })
    .await
}

async fn transferred(c: &mut Client) -> pb::SessionTransferred {
    c.next_matching("SessionTransferred", |b| match b {
        Body::SessionTransferred(t) => Some(t.clone()),
        _ => None,
    })
    .await
}

async fn delivered(c: &mut Client) -> pb::Message {
    let m = c
        .next_matching("Deliver", |b| match b {
            Body::Deliver(d) => Some(msg(d).clone()),
            _ => None,
        })
        .await;
    c.ack(vec![m.msg_id.clone()]).await;
    m
}

async fn admin_setup(s: &TestServer) -> String {
    let admin = token(s, "root", Role::Admin);
    let (status, body) = http(
        &s.http_url,
        "PUT",
        "/api/v1/groups/pre",
        Some(&admin),
        Some(&json!({"name": "Pre-sales", "max_queue": 10})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["name"], "Pre-sales");
    for (agent, capacity) in [("ann", 1), ("bob", 1)] {
        let path = format!("/api/v1/groups/pre/agents/{agent}");
        let (status, body) =
            http(&s.http_url, "PUT", &path, Some(&admin), Some(&json!({ "capacity": capacity }))).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["capacity"], capacity);
    }
    admin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_assign_chat_transfer_end_rate() {
    let s = start(Duration::from_secs(60)).await;
    let admin = admin_setup(&s).await;

    // Nobody online: the customer is offered leave-a-message and leaves one.
    let mut c1 = login(&s, "c1", Role::Customer).await;
    let Body::LeaveMessageOffer(offer) = cs(&mut c1, request("pre", Some("hi"))).await else { panic!("offer") };
    assert_eq!(offer.reason, pb::leave_message_offer::Reason::NoAgentOnline as i32);
    let leave =
        pb::LeaveMessage { group: "pre".into(), content: Some(text_content("call me back")), contact: "555".into() };
    let Body::CsOk(left) = cs(&mut c1, Body::LeaveMessage(leave)).await else { panic!("CsOk") };
    assert!(!left.id.is_empty());

    // ann goes online: sees the left message, claims it and answers.
    let mut ann = login(&s, "ann", Role::Agent).await;
    let Body::CsState(state) = cs(&mut ann, set_status(pb::AgentStatus::Online)).await else { panic!("CsState") };
    assert_eq!(
        (state.status, state.capacity, state.groups.clone()),
        (pb::AgentStatus::Online as i32, 1, vec!["pre".to_string()])
    );
    let notice = ann
        .next_matching("LeftMessageNotice", |b| match b {
            Body::LeftMessageNotice(n) => Some(n.clone()),
            _ => None,
        })
        .await;
    assert_eq!(notice.left_messages[0].id, left.id);
    assert_eq!(notice.left_messages[0].contact, "555");
    let Body::LeftMessageNotice(claimed) =
        cs(&mut ann, Body::ClaimLeftMessage(pb::ClaimLeftMessage { left_message_id: left.id.clone() })).await
    else {
        panic!("claim")
    };
    assert_eq!(claimed.left_messages[0].claimed_by, "ann");
    // The left message opens the conversation, as c1's message: both see the
    // question above the answer (and claiming again posts nothing twice).
    let question = delivered(&mut ann).await;
    assert_eq!((question.from_user.as_str(), question.content.clone()), ("c1", Some(text_content("call me back"))));
    assert_eq!(question.client_msg_id, format!("cs-left-{}", left.id));
    assert_eq!(delivered(&mut c1).await.msg_id, question.msg_id, "c1's own devices see it too");
    let again = Body::ClaimLeftMessage(pb::ClaimLeftMessage { left_message_id: left.id.clone() });
    assert!(matches!(cs(&mut ann, again).await, Body::LeftMessageNotice(_)));
    ann.send_text("c1", "answer-1", "we called you").await.unwrap();
    assert_eq!(delivered(&mut c1).await.content, Some(text_content("we called you")));
    let page = ann.sync(pb::SyncRequest { with_user: "c1".into(), ..Default::default() }).await.unwrap();
    let texts: Vec<_> = page.messages.iter().map(|m| m.content.clone().unwrap()).collect();
    assert_eq!(texts, [text_content("call me back"), text_content("we called you")]);

    // c2 is served at once; ann gets the session and the first message.
    let mut c2 = login(&s, "c2", Role::Customer).await;
    let Body::SessionAssigned(a) = cs(&mut c2, request("pre", Some("where is my order?"))).await else {
        panic!("assigned")
    };
    let session = a.session.unwrap();
    assert_eq!((session.agent.as_str(), session.state), ("ann", pb::SessionState::Active as i32));
    assert_eq!(session.conversation_id, im_core::conversation_id(T, "c2", "ann"));
    assert_eq!(assigned(&mut ann).await.session_id, session.session_id);
    let first = delivered(&mut ann).await;
    assert_eq!((first.from_user.as_str(), first.content.clone()), ("c2", Some(text_content("where is my order?"))));
    // The customer's devices get the first message too (it is their message).
    assert_eq!(delivered(&mut c2).await.client_msg_id, format!("cs-first-{}", session.session_id));
    ann.send_text("c2", "r1", "let me check").await.unwrap();
    assert_eq!(delivered(&mut c2).await.from_user, "ann");

    // c3 and c4 wait in line; c3 leaves, c4 moves up.
    let mut c3 = login(&s, "c3", Role::Customer).await;
    let Body::QueueUpdate(q3) = cs(&mut c3, request("pre", None)).await else { panic!("queued") };
    assert_eq!((q3.position, q3.group.as_str()), (1, "pre"));
    let mut c4 = login(&s, "c4", Role::Customer).await;
    let Body::QueueUpdate(q4) = cs(&mut c4, request("pre", None)).await else { panic!("queued") };
    assert_eq!(q4.position, 2);
    assert!(q4.estimated_wait_s >= q3.estimated_wait_s);
    let Body::CsOk(_) = cs(&mut c3, Body::CancelRequest(pb::CancelRequest { group: "pre".into() })).await else {
        panic!("cancel")
    };
    // Pushed too: the position on joining (2, unless coalesced with the
    // next change), then after c3 left (1).
    let mut update = queue_update(&mut c4).await;
    if update.position == 2 {
        update = queue_update(&mut c4).await;
    }
    assert_eq!(update.position, 1);
    let (_, groups) = http(&s.http_url, "GET", "/api/v1/groups", Some(&admin), None).await;
    assert_eq!(groups["groups"][0]["queue_length"], 1);
    assert_eq!(groups["groups"][0]["sessions_active"], 1);

    // bob comes online and gets c4.
    let mut bob = login(&s, "bob", Role::Agent).await;
    cs(&mut bob, set_status(pb::AgentStatus::Online)).await;
    assert_eq!(assigned(&mut c4).await.agent, "bob");
    assert_eq!(assigned(&mut bob).await.customer, "c4");

    // ann transfers c2 to bob: refused while bob is full, done once he has room.
    let to_bob = Body::TransferSession(pb::TransferSession {
        session_id: session.session_id.clone(),
        target: Some(pb::transfer_session::Target::ToAgent("bob".into())),
        note: "wants a refund for order 42".into(),
    });
    assert_eq!(code(&cs_err(&mut ann, to_bob.clone()).await), ErrorCode::Conflict);
    let (status, _) =
        http(&s.http_url, "PUT", "/api/v1/groups/pre/agents/bob", Some(&admin), Some(&json!({"capacity": 2}))).await;
    assert_eq!(status, 200);
    let Body::SessionTransferred(t) = cs(&mut ann, to_bob).await else { panic!("transferred") };
    assert_eq!((t.from_agent.as_str(), t.session.as_ref().unwrap().agent.as_str()), ("ann", "bob"));
    assert_eq!(transferred(&mut c2).await.session.unwrap().agent, "bob");
    // The new agent learns it was a transfer (and from whom), and gets it.
    let told = transferred(&mut bob).await;
    assert_eq!((told.from_agent.as_str(), told.reason.as_str()), ("ann", "transfer"));
    let moved = assigned(&mut bob).await;
    assert_eq!(moved.conversations.len(), 2);
    // With ann's note and where c2 asked from.
    assert_eq!(moved.transfer_note, "wants a refund for order 42");
    assert_eq!(
        (moved.page.as_str(), moved.user_agent.as_str()),
        ("https://shop.example/order/42", "Mozilla/5.0 (test)")
    );
    // bob pages what c2 said to ann, as a party of the session; not otherwise.
    let old = moved.conversations[0].clone();
    let page = bob
        .sync(pb::SyncRequest {
            conversation_id: old.clone(),
            session_id: moved.session_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let texts: Vec<_> = page.messages.iter().map(|m| m.content.clone().unwrap()).collect();
    assert_eq!(texts, [text_content("where is my order?"), text_content("let me check")]);
    let e = bob.sync(pb::SyncRequest { conversation_id: old.clone(), ..Default::default() }).await.unwrap_err();
    assert_eq!(code(&e), ErrorCode::Forbidden);
    let e = c4
        .sync(pb::SyncRequest { conversation_id: old, session_id: moved.session_id.clone(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(code(&e), ErrorCode::Forbidden);

    // c2 ends; bob is told; c2 rates once.
    let end = Body::EndSession(pb::EndSession { session_id: moved.session_id.clone() });
    let Body::SessionEnded(ended) = cs(&mut c2, end.clone()).await else { panic!("ended") };
    assert_eq!(ended.session.as_ref().unwrap().end_reason, "ended by the customer");
    bob.next_matching("SessionEnded", |b| matches!(b, Body::SessionEnded(_)).then_some(())).await;
    assert_eq!(code(&cs_err(&mut c2, end).await), ErrorCode::Conflict);
    let rate = |score| Body::Rate(pb::Rate { session_id: moved.session_id.clone(), score, comment: "good".into() });
    assert_eq!(code(&cs_err(&mut c2, rate(9)).await), ErrorCode::InvalidArgument);
    assert!(matches!(cs(&mut c2, rate(5)).await, Body::CsOk(_)));
    assert_eq!(code(&cs_err(&mut c2, rate(4)).await), ErrorCode::Conflict);
    // The session's history stays.
    let page = c2.sync(pb::SyncRequest { with_user: "ann".into(), ..Default::default() }).await.unwrap();
    assert_eq!(page.messages.len(), 2);

    // CsState after a reconnect lists what is open.
    let Body::CsState(st) = cs(&mut bob, Body::CsStateRequest(pb::CsStateRequest {})).await else { panic!("state") };
    assert_eq!(st.sessions.len(), 1);
    assert_eq!((st.load, st.capacity), (1, 2));

    // Supervisor view of a group's sessions.
    let (status, sessions) = http(&s.http_url, "GET", "/api/v1/groups/pre/sessions", Some(&admin), None).await;
    assert_eq!(status, 200);
    assert_eq!(sessions["active"][0]["customer"], "c4");
    // The same object as in frames: the ServiceSession of CsState, in its JSON.
    let framed = st.sessions.iter().find(|x| x.customer == "c4").expect("c4's session in bob's CsState");
    assert_eq!(sessions["active"][0], serde_json::to_value(framed).unwrap(), "one shape on HTTP and WebSocket");
    assert!(sessions["server_time_ms"].as_u64().is_some());
    let (_, metrics) = dongdong_tests::http::get(&s.http_url, "/metrics").await;
    assert!(metrics.contains("dongdong_cs_wait_seconds"), "wait-time histogram per group");
    assert!(metrics.contains("dongdong_cs_handle_seconds"), "handle-time histogram per group");
    assert!(queue_metric(&metrics, "pre").is_some(), "queue length per tenant and group:\n{metrics}");
    s.stop().await;
}

/// `dongdong_cs_queue_length` of tenant T's `group`, from /metrics text.
fn queue_metric(metrics: &str, group: &str) -> Option<u64> {
    metrics
        .lines()
        .filter(|l| l.starts_with("dongdong_cs_queue_length{"))
        .find(|l| l.contains(&format!("tenant=\"{T}\"")) && l.contains(&format!("group=\"{group}\"")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Waits until the queue-length metric of `group` equals the queue the
/// API shows; panics with both after 5 s.
async fn metric_matches_queue(s: &TestServer, admin: &str, group: &str, expected: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, metrics) = dongdong_tests::http::get(&s.http_url, "/metrics").await;
        let (_, g) = http(&s.http_url, "GET", &format!("/api/v1/groups/{group}"), Some(admin), None).await;
        let (metric, api) = (queue_metric(&metrics, group), g["queue_length"].as_u64());
        if metric == Some(expected) && api == Some(expected) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "metric {metric:?}, API {api:?}, expected {expected}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// After concurrent bursts of requests and of cancels the queue-length
/// metric equals the queue (it is set from the sweep's snapshot, never
/// from an older command's that happened to be published last).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_length_metric_matches_the_queue_after_concurrent_bursts() {
    let s = start(Duration::from_secs(60)).await;
    let admin = token(&s, "boss", Role::Admin);
    let (status, _) = http(&s.http_url, "PUT", "/api/v1/groups/burst", Some(&admin), Some(&json!({}))).await;
    assert_eq!(status, 201);
    let one = json!({"capacity": 1});
    let (status, _) = http(&s.http_url, "PUT", "/api/v1/groups/burst/agents/ann", Some(&admin), Some(&one)).await;
    assert_eq!(status, 200);
    let mut ann = login(&s, "ann", Role::Agent).await;
    cs(&mut ann, set_status(pb::AgentStatus::Online)).await;
    let customers = futures_util::future::join_all((0..30).map(|i| {
        let s = &s;
        async move {
            let mut c = login(s, &format!("b{i}"), Role::Customer).await;
            let reply = cs(&mut c, request("burst", None)).await;
            assert!(matches!(reply, Body::QueueUpdate(_) | Body::SessionAssigned(_)), "{reply:?}");
            c
        }
    }))
    .await;
    // ann took one; 29 wait.
    metric_matches_queue(&s, &admin, "burst", 29).await;
    let cancelled = futures_util::future::join_all(customers.into_iter().take(20).map(|mut c| async move {
        let cancel = Body::CancelRequest(pb::CancelRequest { group: "burst".into() });
        matches!(cs(&mut c, cancel).await, Body::CsOk(_))
    }))
    .await;
    let left = 29 - cancelled.iter().filter(|ok| **ok).count() as u64;
    assert!(left <= 10, "at most one of the 20 was being served");
    metric_matches_queue(&s, &admin, "burst", left).await;
    s.stop().await;
}

/// ann goes online in "pre" and c1 is assigned to her; returns both and the session id.
async fn ann_serves_c1(s: &TestServer) -> (Client, Client, String) {
    let mut ann = login(s, "ann", Role::Agent).await;
    cs(&mut ann, set_status(pb::AgentStatus::Online)).await;
    let mut c1 = login(s, "c1", Role::Customer).await;
    let Body::SessionAssigned(a) = cs(&mut c1, request("pre", None)).await else { panic!("assigned") };
    let session_id = a.session.unwrap().session_id;
    // Pushed to every device of the customer, this one included.
    assert_eq!(assigned(&mut c1).await.session_id, session_id);
    (ann, c1, session_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_drop_keeps_sessions_within_grace_then_requeues() {
    let s = start(Duration::from_millis(400)).await;
    admin_setup(&s).await;
    let (ann, mut c1, session_id) = ann_serves_c1(&s).await;

    // A reload within the grace period keeps the session.
    ann.close().await;
    s.wait_presence(T, "ann", 0).await;
    let mut ann = login(&s, "ann", Role::Agent).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let Body::CsState(st) = cs(&mut ann, Body::CsStateRequest(pb::CsStateRequest {})).await else { panic!("state") };
    assert_eq!(st.sessions.len(), 1, "still ann's");
    assert_eq!(st.status, pb::AgentStatus::Online as i32);

    // Gone past the grace period: the customer is queued again at the front.
    ann.close().await;
    let t = transferred(&mut c1).await;
    assert_eq!((t.reason.as_str(), t.from_agent.as_str()), ("agent disconnected", "ann"));
    assert_eq!(t.session.unwrap().session_id, session_id);
    assert_eq!(queue_update(&mut c1).await.position, 1);
    let mut bob = login(&s, "bob", Role::Agent).await;
    cs(&mut bob, set_status(pb::AgentStatus::Online)).await;
    let again = assigned(&mut c1).await;
    assert_eq!((again.agent.as_str(), again.previous_agents.clone()), ("bob", vec!["ann".to_string()]));
    // ann comes back later: offline, without the session.
    let mut ann = login(&s, "ann", Role::Agent).await;
    let Body::CsState(st) = cs(&mut ann, Body::CsStateRequest(pb::CsStateRequest {})).await else { panic!("state") };
    assert_eq!((st.status, st.sessions.len()), (pb::AgentStatus::Offline as i32, 0));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_bad_input_quick_replies_and_the_default_group() {
    // The default config seeds an auto-join group in tenant "demo".
    let s = TestServer::start().await;
    let mut agent = Client::login(&s.ws_url, &s.token_with_role("demo", "amy", Role::Agent), "d").await;
    let Body::CsState(st) = cs(&mut agent, set_status(pb::AgentStatus::Online)).await else { panic!("state") };
    assert_eq!(st.groups, ["default"]);
    let mut cust = Client::login(&s.ws_url, &s.token_with_role("demo", "cus", Role::Customer), "d").await;
    let Body::SessionAssigned(a) = cs(&mut cust, request("default", Some("hello"))).await else { panic!("assigned") };
    assert_eq!(a.session.unwrap().agent, "amy");

    // Roles.
    assert_eq!(code(&cs_err(&mut cust, set_status(pb::AgentStatus::Online)).await), ErrorCode::Forbidden);
    assert_eq!(code(&cs_err(&mut agent, request("default", None)).await), ErrorCode::Forbidden);
    // Bad input.
    assert_eq!(code(&cs_err(&mut cust, request("", None)).await), ErrorCode::InvalidArgument);
    assert_eq!(code(&cs_err(&mut cust, request("nope", None)).await), ErrorCode::NotFound);
    assert_eq!(code(&cs_err(&mut agent, set_status(pb::AgentStatus::Unspecified)).await), ErrorCode::InvalidArgument);
    let bad_rate = Body::Rate(pb::Rate { session_id: "x".repeat(500), score: 5, comment: String::new() });
    assert_eq!(code(&cs_err(&mut cust, bad_rate).await), ErrorCode::InvalidArgument);
    let no_target =
        Body::TransferSession(pb::TransferSession { session_id: "s".into(), target: None, note: String::new() });
    assert_eq!(code(&cs_err(&mut agent, no_target).await), ErrorCode::InvalidArgument);
    let long_note = Body::TransferSession(pb::TransferSession {
        session_id: "s".into(),
        target: Some(pb::transfer_session::Target::ToAgent("bob".into())),
        note: "x".repeat(501),
    });
    assert_eq!(code(&cs_err(&mut agent, long_note).await), ErrorCode::InvalidArgument);
    let long_page =
        Body::RequestService(pb::RequestService { group: "g".into(), page: "p".repeat(1025), ..Default::default() });
    assert_eq!(code(&cs_err(&mut cust, long_page).await), ErrorCode::InvalidArgument);
    let unknown = Body::EndSession(pb::EndSession { session_id: "0190b1f2-0000-7000-8000-000000000000".into() });
    assert_eq!(code(&cs_err(&mut cust, unknown).await), ErrorCode::NotFound);
    // A server-to-client cs frame from a client.
    assert_eq!(code(&cs_err(&mut cust, Body::CsOk(pb::CsOk::default())).await), ErrorCode::BadFrame);

    // Quick replies: an agent's group replies and personal ones.
    let amy = s.token_with_role("demo", "amy", Role::Agent);
    let bea = s.token_with_role("demo", "bea", Role::Agent);
    let customer = s.token_with_role("demo", "cus", Role::Customer);
    let (status, group_reply) = http(
        &s.http_url,
        "POST",
        "/api/v1/quick-replies",
        Some(&amy),
        Some(&json!({"group": "default", "title": "Hi", "text": "Hello, how can I help?"})),
    )
    .await;
    assert_eq!(status, 201, "{group_reply}");
    let (status, mine) = http(
        &s.http_url,
        "POST",
        "/api/v1/quick-replies",
        Some(&amy),
        Some(&json!({"title": "Bye", "text": "Have a nice day"})),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(mine["owner"], "amy");
    let (status, list) = http(&s.http_url, "GET", "/api/v1/quick-replies", Some(&amy), None).await;
    assert_eq!(status, 200);
    assert_eq!(list["quick_replies"].as_array().unwrap().len(), 2);
    let (_, list) = http(&s.http_url, "GET", "/api/v1/quick-replies", Some(&bea), None).await;
    assert_eq!(list["quick_replies"].as_array().unwrap().len(), 0, "bea is in no group and owns none");
    let path = format!("/api/v1/quick-replies/{}", mine["id"].as_str().unwrap());
    let (status, _) = http(&s.http_url, "PUT", &path, Some(&bea), Some(&json!({"title": "x", "text": "y"}))).await;
    assert_eq!(status, 403, "another agent's personal reply");
    let (status, updated) =
        http(&s.http_url, "PUT", &path, Some(&amy), Some(&json!({"title": "Bye!", "text": "See you"}))).await;
    assert_eq!((status, updated["text"].as_str()), (200, Some("See you")));
    let (status, _) = http(&s.http_url, "DELETE", &path, Some(&amy), None).await;
    assert_eq!(status, 204);
    let (status, _) = http(&s.http_url, "DELETE", &path, Some(&amy), None).await;
    assert_eq!(status, 404);
    let (status, body) = http(&s.http_url, "GET", "/api/v1/quick-replies", Some(&customer), None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("FORBIDDEN")));
    let (status, body) = http(&s.http_url, "GET", "/api/v1/groups", Some(&amy), None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("FORBIDDEN")), "supervisor views need admin");
    let (status, _) = http(&s.http_url, "GET", "/api/v1/groups", None, None).await;
    assert_eq!(status, 401);
    let admin = s.token_with_role("demo", "root", Role::Admin);
    let (status, body) =
        http(&s.http_url, "PUT", "/api/v1/groups/bad", Some(&admin), Some(&json!({"max_queue": 0}))).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("INVALID_ARGUMENT")));
    let (status, _) = http(&s.http_url, "PUT", "/api/v1/groups/bad", Some(&admin), Some(&json!({"colour": 1}))).await;
    assert_eq!(status, 400, "unknown fields are refused");
    let (status, _) = http(&s.http_url, "DELETE", "/api/v1/groups/default", Some(&admin), None).await;
    assert_eq!(status, 409, "a group with an open session is not deleted");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_to_a_group_then_waiting_too_long_offers_leave_a_message() {
    let s = start(Duration::from_secs(60)).await;
    let admin = admin_setup(&s).await;
    let (status, _) =
        http(&s.http_url, "PUT", "/api/v1/groups/post", Some(&admin), Some(&json!({"max_wait_s": 1}))).await;
    assert_eq!(status, 201);
    let (mut ann, mut c1, session_id) = ann_serves_c1(&s).await;
    // To a group with nobody online: the customer waits at its front.
    let to_post = Body::TransferSession(pb::TransferSession {
        session_id: session_id.clone(),
        target: Some(pb::transfer_session::Target::ToGroup("post".into())),
        note: String::new(),
    });
    let Body::SessionTransferred(t) = cs(&mut ann, to_post).await else { panic!("transferred") };
    let moved = t.session.unwrap();
    assert_eq!((moved.group.as_str(), moved.state), ("post", pb::SessionState::Waiting as i32));
    assert_eq!((t.from_agent.as_str(), t.from_group.as_str()), ("ann", "pre"));
    assert_eq!(transferred(&mut c1).await.session.unwrap().group, "post");
    let update = queue_update(&mut c1).await;
    assert_eq!((update.group.as_str(), update.position), ("post", 1));
    // Nobody takes it within post's max wait (1 s): offered leave-a-message.
    let offer = c1
        .next_matching("LeaveMessageOffer", |b| match b {
            Body::LeaveMessageOffer(o) => Some(o.clone()),
            _ => None,
        })
        .await;
    assert_eq!((offer.group.as_str(), offer.reason), ("post", pb::leave_message_offer::Reason::WaitedTooLong as i32));
    let ended = c1
        .next_matching("SessionEnded", |b| match b {
            Body::SessionEnded(e) => e.session.clone(),
            _ => None,
        })
        .await;
    assert_eq!((ended.session_id, ended.end_reason.as_str()), (session_id, "waited too long"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_notes_past_sessions_and_transfer_targets() {
    let s = start(Duration::from_secs(60)).await;
    let admin = admin_setup(&s).await;
    // Names and avatars come from the tokens, recorded when they connect.
    let ann_token = s.token_named(T, "ann", Role::Agent, "Ann 安", "https://img.example/ann.png");
    let mut ann = Client::login(&s.ws_url, &ann_token, "ann-dev").await;
    let mut bob = Client::login(&s.ws_url, &s.token_named(T, "bob", Role::Agent, "Bob", ""), "bob-dev").await;
    let c1_token = s.token_named(T, "c1", Role::Customer, "王小明", "");
    let mut c1 = Client::login(&s.ws_url, &c1_token, "c1-dev").await;
    let c2_token = s.token_named(T, "c2", Role::Customer, "Zoe", "");
    let _c2 = Client::login(&s.ws_url, &c2_token, "c2-dev").await;
    cs(&mut ann, set_status(pb::AgentStatus::Online)).await;
    cs(&mut bob, set_status(pb::AgentStatus::Online)).await;

    // Transfer targets: the other agents who take new sessions, and groups.
    let (status, body) = http(&s.http_url, "GET", "/api/v1/transfer-targets", Some(&ann_token), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["agents"], json!([{"id": "bob", "name": "Bob", "load": 0, "capacity": 1, "groups": ["pre"]}]));
    assert_eq!(body["groups"][0]["id"], "pre");
    let (status, _) = http(&s.http_url, "GET", "/api/v1/transfer-targets", Some(&c1_token), None).await;
    assert_eq!(status, 403);

    // Two sessions of c1 end; the first moves from its agent to the other.
    let mut ids = Vec::new();
    for round in 0..2 {
        let Body::SessionAssigned(a) = cs(&mut c1, request("pre", Some("hi"))).await else { panic!("assigned") };
        let session = a.session.unwrap();
        assigned(&mut c1).await;
        if round == 0 {
            let (from, to) = if session.agent == "ann" { (&mut ann, "bob") } else { (&mut bob, "ann") };
            assigned(from).await;
            let t = Body::TransferSession(pb::TransferSession {
                session_id: session.session_id.clone(),
                target: Some(pb::transfer_session::Target::ToAgent(to.into())),
                note: "asked about delivery".into(),
            });
            let Body::SessionTransferred(_) = cs(from, t).await else { panic!("transferred") };
        }
        let end = Body::EndSession(pb::EndSession { session_id: session.session_id.clone() });
        let Body::SessionEnded(_) = cs(&mut c1, end).await else { panic!("ended") };
        ids.push(session.session_id);
        // Let the end time move on, so the two sessions sort apart.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Names: customers learn the agents' (and their own), not other customers'.
    let (status, body) = http(&s.http_url, "GET", "/api/v1/users?ids=ann,c2,c1,ghost", Some(&c1_token), None).await;
    assert_eq!(status, 200, "{body}");
    let mut names: Vec<(String, String)> = body["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| (u["user"].as_str().unwrap().into(), u["name"].as_str().unwrap().into()))
        .collect();
    names.sort();
    assert_eq!(names, [("ann".to_string(), "Ann 安".to_string()), ("c1".into(), "王小明".into())]);
    let (_, body) = http(&s.http_url, "GET", "/api/v1/users?ids=c2", Some(&ann_token), None).await;
    assert_eq!(body["users"][0]["name"], "Zoe");
    assert_eq!(body["users"][0]["avatar"], "");
    let many: Vec<String> = (0..101).map(|i| format!("u{i}")).collect();
    let (status, _) =
        http(&s.http_url, "GET", &format!("/api/v1/users?ids={}", many.join(",")), Some(&ann_token), None).await;
    assert_eq!(status, 400);

    // Past sessions, newest first, with paging; the customer's own only.
    let path = "/api/v1/users/c1/sessions";
    let (status, body) = http(&s.http_url, "GET", path, Some(&c1_token), None).await;
    assert_eq!(status, 200, "{body}");
    let got: Vec<&str> =
        body["sessions"].as_array().unwrap().iter().map(|x| x["sessionId"].as_str().unwrap()).collect();
    assert_eq!(got, [ids[1].as_str(), ids[0].as_str()]);
    assert_eq!(body["sessions"][1]["transferNote"], "asked about delivery");
    assert_eq!(body["sessions"][1]["page"], "https://shop.example/order/42");
    assert_eq!(body["next_before_ms"], 0);
    let (_, first) = http(&s.http_url, "GET", &format!("{path}?limit=1"), Some(&c1_token), None).await;
    let before = first["next_before_ms"].as_u64().unwrap();
    assert_eq!(first["sessions"][0]["sessionId"], ids[1].as_str());
    let (_, rest) =
        http(&s.http_url, "GET", &format!("{path}?limit=1&before_ms={before}"), Some(&c1_token), None).await;
    assert_eq!(rest["sessions"][0]["sessionId"], ids[0].as_str());
    let (status, _) = http(&s.http_url, "GET", "/api/v1/users/c2/sessions", Some(&c1_token), None).await;
    assert_eq!(status, 403);
    let (_, theirs) = http(&s.http_url, "GET", path, Some(&ann_token), None).await;
    assert_eq!(theirs["sessions"].as_array().unwrap().len(), 2, "an agent reads a customer's past sessions");
    // A fresh device of the customer reads an ended session's chat.
    let mut fresh = Client::login(&s.ws_url, &c1_token, "c1-other").await;
    let old = &body["sessions"][1];
    let page = fresh
        .sync(pb::SyncRequest {
            conversation_id: old["conversations"][0].as_str().unwrap().into(),
            session_id: ids[0].clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.messages[0].content, Some(text_content("hi")));

    // The agents' note about a customer: agents write and read it; the
    // customer cannot.
    let note = json!({"note": "prefers 中文; VIP"});
    let (status, body) = http(&s.http_url, "PUT", "/api/v1/customers/c1/note", Some(&ann_token), Some(&note)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["note_by"].as_str(), body["name"].as_str()), (Some("ann"), Some("王小明")));
    let (_, body) = http(&s.http_url, "GET", "/api/v1/customers/c1", Some(&admin), None).await;
    assert_eq!(body["note"], "prefers 中文; VIP");
    let (status, _) = http(&s.http_url, "GET", "/api/v1/customers/c1", Some(&c1_token), None).await;
    assert_eq!(status, 403);
    let (status, _) = http(&s.http_url, "PUT", "/api/v1/customers/c1/note", Some(&c1_token), Some(&note)).await;
    assert_eq!(status, 403);
    let long = json!({"note": "x".repeat(2001)});
    let (status, _) = http(&s.http_url, "PUT", "/api/v1/customers/c1/note", Some(&ann_token), Some(&long)).await;
    assert_eq!(status, 400);
    // A token that does not verify is refused.
    let (status, body) = http(&s.http_url, "GET", "/api/v1/users?ids=ann", Some(&format!("{c1_token}x")), None).await;
    assert_eq!(status, 401, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_gone_past_the_grace_period_leaves_the_line() {
    let s = TestServer::start_with(|c| {
        c.cs.customer_grace = Duration::from_millis(300);
        c.cs.groups.clear();
    })
    .await;
    admin_setup(&s).await;
    // ann (capacity 1) serves c0; c1 and c2 wait.
    let (_ann, _c0, _) = {
        let mut ann = login(&s, "ann", Role::Agent).await;
        cs(&mut ann, set_status(pb::AgentStatus::Online)).await;
        let mut c0 = login(&s, "c0", Role::Customer).await;
        let Body::SessionAssigned(_) = cs(&mut c0, request("pre", None)).await else { panic!("assigned") };
        (ann, c0, ())
    };
    let mut c1 = login(&s, "c1", Role::Customer).await;
    let Body::QueueUpdate(u) = cs(&mut c1, request("pre", None)).await else { panic!("queued") };
    assert_eq!(u.position, 1);
    let mut c2 = login(&s, "c2", Role::Customer).await;
    let Body::QueueUpdate(u) = cs(&mut c2, request("pre", None)).await else { panic!("queued") };
    assert_eq!(u.position, 2);
    queue_update(&mut c2).await;

    // A reload within the grace period keeps c1's place.
    c1.close().await;
    s.wait_presence(T, "c1", 0).await;
    let mut c1 = login(&s, "c1", Role::Customer).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let Body::CsState(st) = cs(&mut c1, Body::CsStateRequest(pb::CsStateRequest {})).await else { panic!("state") };
    assert_eq!(st.waiting.len(), 1, "still waiting");
    assert_eq!(st.waiting[0].position, 1);

    // Gone for longer: c1 leaves the line and c2 moves up.
    c1.close().await;
    let u = queue_update(&mut c2).await;
    assert_eq!(u.position, 1);
    let mut c1 = login(&s, "c1", Role::Customer).await;
    let Body::CsState(st) = cs(&mut c1, Body::CsStateRequest(pb::CsStateRequest {})).await else { panic!("state") };
    assert!(st.sessions.is_empty(), "{st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_disconnects_a_device_or_a_user_and_revokes_tokens_for_good() {
    use dongdong_tests::client::Closed;
    let s = start(Duration::from_secs(60)).await;
    let admin = token(&s, "root", Role::Admin);
    let mallory_token = token(&s, "mallory", Role::Customer);
    let mut phone = Client::login(&s.ws_url, &mallory_token, "phone").await;
    let mut web = Client::login(&s.ws_url, &mallory_token, "web").await;
    let mut bystander = login(&s, "nina", Role::Customer).await;

    // One device, with the reason the client can show.
    let body = json!({"device": "web", "reason": "too many messages"});
    let (status, r) =
        http(&s.http_url, "POST", "/api/v1/admin/users/mallory/disconnect", Some(&admin), Some(&body)).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["disconnected"], 1);
    assert_eq!(web.closed().await, Closed::Frame(4004, "too many messages".into()));
    // Not an admin; bad input.
    let (status, _) =
        http(&s.http_url, "POST", "/api/v1/admin/users/mallory/disconnect", Some(&mallory_token), Some(&json!({})))
            .await;
    assert_eq!(status, 403);
    let long = json!({"reason": "x".repeat(101)});
    let (status, _) =
        http(&s.http_url, "POST", "/api/v1/admin/users/mallory/disconnect", Some(&admin), Some(&long)).await;
    assert_eq!(status, 400);

    // Revoked: every device closes, the old token no longer signs in, over
    // the WebSocket or the HTTP API; a token issued later does.
    let (status, r) =
        http(&s.http_url, "POST", "/api/v1/admin/users/mallory/revoke", Some(&admin), Some(&json!({}))).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["disconnected"], 1);
    let before = r["revoked_before_s"].as_u64().unwrap();
    assert!(matches!(phone.closed().await, Closed::Frame(4004, _)));
    let mut again = Client::connect(&s.ws_url, im_core::Encoding::Protobuf).await;
    let e = again.auth(&mallory_token, "phone").await.unwrap_err();
    assert_eq!((code(&e), e.message.as_str()), (ErrorCode::Unauthenticated, "token revoked: sign in again"));
    let (status, _) = http(&s.http_url, "GET", "/api/v1/service-groups", Some(&mallory_token), None).await;
    assert_eq!(status, 401);
    while im_core::now_ms() / 1000 < before {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fresh = token(&s, "mallory", Role::Customer);
    let mut back = Client::connect(&s.ws_url, im_core::Encoding::Protobuf).await;
    back.auth(&fresh, "phone").await.expect("a token issued after the revocation works");
    // Others never noticed.
    assert!(bystander.send_text("mallory", "after", "are you back?").await.is_ok());
}

/// A small PNG, uploaded by `token`'s user; its file id.
async fn upload_photo(s: &TestServer, token: &str) -> String {
    let mut png = std::io::Cursor::new(Vec::new());
    image::DynamicImage::new_rgb8(40, 30).write_to(&mut png, image::ImageFormat::Png).unwrap();
    let auth = format!("Bearer {token}");
    let headers = [("authorization", auth.as_str()), ("content-type", "image/png")];
    let r =
        dongdong_tests::http::send(&s.http_url, "POST", "/api/v1/files?name=parcel.png", &headers, png.get_ref()).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    r.json()["file_id"].as_str().unwrap().to_string()
}

/// The status of `POST /api/v1/files/{id}/link` for `user`.
async fn link_status(s: &TestServer, id: &str, user: &str, role: Role) -> u16 {
    let auth = format!("Bearer {}", token(s, user, role));
    let path = format!("/api/v1/files/{id}/link");
    dongdong_tests::http::send(&s.http_url, "POST", &path, &[("authorization", &auth)], &[]).await.status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transferred_session_keeps_its_photos_readable_by_whoever_serves_it() {
    let s = start(Duration::from_secs(60)).await;
    let admin = admin_setup(&s).await;
    for (path, body) in [
        ("/api/v1/groups/post", json!({"name": "After-sales"})),
        ("/api/v1/groups/post/agents/carl", json!({"capacity": 1})),
        ("/api/v1/groups/pre/agents/dan", json!({"capacity": 1})),
    ] {
        let (status, body) = http(&s.http_url, "PUT", path, Some(&admin), Some(&body)).await;
        assert!(status == 200 || status == 201, "{path}: {body}");
    }
    let mut ann = login(&s, "ann", Role::Agent).await;
    cs(&mut ann, set_status(pb::AgentStatus::Online)).await;
    let mut c1 = login(&s, "c1", Role::Customer).await;
    let Body::SessionAssigned(a) = cs(&mut c1, request("pre", Some("my parcel arrived broken"))).await else {
        panic!("assigned")
    };
    let session = a.session.unwrap();
    assert_eq!(session.agent, "ann");
    let photo = upload_photo(&s, &token(&s, "c1", Role::Customer)).await;
    let image = pb::Image { file_id: photo.clone(), ..Default::default() };
    let content = pb::Content { kind: Some(pb::content::Kind::Image(image)) };
    c1.send("ann", "photo-1", content).await.unwrap();
    assert_eq!(link_status(&s, &photo, "ann", Role::Agent).await, 200);
    assert_eq!(link_status(&s, &photo, "carl", Role::Agent).await, 404, "not an agent of the session's group");

    // ann hands the session to bob: he must see the photo the note speaks of.
    let mut bob = login(&s, "bob", Role::Agent).await;
    cs(&mut bob, set_status(pb::AgentStatus::Online)).await;
    let to_bob = Body::TransferSession(pb::TransferSession {
        session_id: session.session_id.clone(),
        target: Some(pb::transfer_session::Target::ToAgent("bob".into())),
        note: "photo received".into(),
    });
    let Body::SessionTransferred(_) = cs(&mut ann, to_bob).await else { panic!("transferred") };
    assert_eq!(link_status(&s, &photo, "bob", Role::Agent).await, 200, "the new agent reads the customer's photo");
    // A colleague of the group reads it (past sessions); an agent of another
    // group, another customer and another tenant's admin do not.
    assert_eq!(link_status(&s, &photo, "dan", Role::Agent).await, 200);
    assert_eq!(link_status(&s, &photo, "carl", Role::Agent).await, 404);
    assert_eq!(link_status(&s, &photo, "c2", Role::Customer).await, 404);
    let stranger = format!("Bearer {}", s.token_with_role("elsewhere", "root", Role::Admin));
    let path = format!("/api/v1/files/{photo}/link");
    let other = dongdong_tests::http::send(&s.http_url, "POST", &path, &[("authorization", &stranger)], &[]).await;
    assert_eq!(other.status, 404);

    // Still so in his transcript, once the session has ended.
    let end = Body::EndSession(pb::EndSession { session_id: session.session_id.clone() });
    let Body::SessionEnded(_) = cs(&mut bob, end).await else { panic!("ended") };
    assert_eq!(link_status(&s, &photo, "bob", Role::Agent).await, 200);
    assert_eq!(link_status(&s, &photo, "ann", Role::Agent).await, 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_supervisor_sees_the_days_figures_from_the_server_and_sets_an_agents_status() {
    let s = start(Duration::from_secs(60)).await;
    let admin = admin_setup(&s).await;
    let since = im_core::now_ms() - 60_000;
    let mut ann = login(&s, "ann", Role::Agent).await;
    cs(&mut ann, set_status(pb::AgentStatus::Online)).await;
    // c1 is served: ann answers, c1 ends and rates 4.
    let mut c1 = login(&s, "c1", Role::Customer).await;
    let Body::SessionAssigned(a) = cs(&mut c1, request("pre", Some("where is my parcel?"))).await else {
        panic!("assigned")
    };
    let session = a.session.unwrap();
    ann.send("c1", "hello-1", text_content("It left the warehouse today.")).await.unwrap();
    let end = Body::EndSession(pb::EndSession { session_id: session.session_id.clone() });
    let Body::SessionEnded(_) = cs(&mut c1, end).await else { panic!("ended") };
    let rate = Body::Rate(pb::Rate { session_id: session.session_id.clone(), score: 4, comment: String::new() });
    assert!(matches!(cs(&mut c1, rate).await, Body::CsOk(_)));
    // c2 waits behind c3 (ann has room for one) and gives up: abandoned.
    let mut c3 = login(&s, "c3", Role::Customer).await;
    let Body::SessionAssigned(_) = cs(&mut c3, request("pre", None)).await else { panic!("assigned") };
    let mut c2 = login(&s, "c2", Role::Customer).await;
    let Body::QueueUpdate(_) = cs(&mut c2, request("pre", None)).await else { panic!("queued") };
    let Body::CsOk(_) = cs(&mut c2, Body::CancelRequest(pb::CancelRequest { group: "pre".into() })).await else {
        panic!("cancelled")
    };

    // The figures come from the server: the same from any page, any time.
    let path = format!("/api/v1/reports/summary?from={since}");
    let (status, r) = http(&s.http_url, "GET", &path, Some(&admin), None).await;
    assert_eq!(status, 200, "{r}");
    let pre = r["groups"].as_array().unwrap().iter().find(|g| g["group"] == "pre").expect("the group's figures");
    assert_eq!(pre["served"], 1, "{r}");
    assert_eq!(pre["abandoned"], 1, "{r}");
    assert_eq!(pre["active_now"], 1, "c3 is being served: {r}");
    assert_eq!(pre["csat_avg"], 4.0, "{r}");
    assert_eq!(pre["csat_count"], 1);
    let first = pre["first_response_avg_ms"].as_u64().expect("ann answered");
    assert!(first < 30_000, "{r}");
    let ann_row = r["agents"].as_array().unwrap().iter().find(|a| a["agent"] == "ann").expect("ann's figures");
    assert_eq!(ann_row["served"], 1);
    assert_eq!(ann_row["first_response_avg_ms"], first);
    assert_eq!(ann_row["csat_avg"], 4.0);
    // A range before any of it is empty; a bad one is refused with words.
    let before = format!("/api/v1/reports/summary?from={}&to={since}", since - 3_600_000);
    let (_, empty) = http(&s.http_url, "GET", &before, Some(&admin), None).await;
    let pre = empty["groups"].as_array().unwrap().iter().find(|g| g["group"] == "pre").unwrap();
    assert_eq!(pre["served"], 0);
    assert!(pre["first_response_avg_ms"].is_null());
    for bad in ["from=5&to=4", "from=1000", "from=yesterday"] {
        let path = format!("/api/v1/reports/summary?{bad}");
        let (status, e) = http(&s.http_url, "GET", &path, Some(&admin), None).await;
        assert_eq!((status, e["error"]["code"].as_str()), (400, Some("INVALID_ARGUMENT")), "{bad}: {e}");
    }
    let agent_token = token(&s, "ann", Role::Agent);
    let (status, _) = http(&s.http_url, "GET", "/api/v1/reports/summary", Some(&agent_token), None).await;
    assert_eq!(status, 403);

    // The supervisor sets ann away: her devices are told, she gets no one new.
    let (status, body) =
        http(&s.http_url, "PUT", "/api/v1/agents/ann/status", Some(&admin), Some(&json!({"status": "away"}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "away");
    let pushed = ann
        .next_matching("CsState", |b| match b {
            Body::CsState(st) if st.status == pb::AgentStatus::Away as i32 => Some(st.clone()),
            _ => None,
        })
        .await;
    assert_eq!(pushed.load, 1, "c3 stays with her");
    let (status, body) =
        http(&s.http_url, "PUT", "/api/v1/agents/ann/status", Some(&admin), Some(&json!({"status": "asleep"}))).await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("status")), "{body}");
    let (status, _) =
        http(&s.http_url, "PUT", "/api/v1/agents/nobody/status", Some(&admin), Some(&json!({"status": "away"}))).await;
    assert_eq!(status, 404);
    let (status, _) =
        http(&s.http_url, "PUT", "/api/v1/agents/bob/status", Some(&agent_token), Some(&json!({"status": "away"})))
            .await;
    assert_eq!(status, 403);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_widget_look_is_set_by_an_admin_checked_field_by_field_and_read_by_customers() {
    let s = start(Duration::from_secs(60)).await;
    let admin = token(&s, "root", Role::Admin);
    let customer = token(&s, "c1", Role::Customer);
    // Nothing set: the defaults.
    let (status, look) = http(&s.http_url, "GET", "/api/v1/widget", Some(&customer), None).await;
    assert_eq!(status, 200, "{look}");
    assert_eq!(
        (look["color"].as_str(), look["position"].as_str(), look["label_zh"].as_str()),
        (Some("#c8102e"), Some("right"), Some(""))
    );
    // Each wrong field is named; nothing is stored.
    for (body, field) in [
        (json!({"label_en": "x".repeat(41)}), "label_en"),
        (json!({"greeting_zh": "长".repeat(501)}), "greeting_zh"),
        (json!({"label_zh": "联系\u{7}客服"}), "label_zh"),
        (json!({"color": "red"}), "color"),
        (json!({"position": "top"}), "position"),
    ] {
        let (status, e) = http(&s.http_url, "PUT", "/api/v1/widget", Some(&admin), Some(&body)).await;
        assert_eq!((status, e["error"]["field"].as_str()), (400, Some(field)), "{body}: {e}");
    }
    let agent = token(&s, "ann", Role::Agent);
    let (status, _) = http(&s.http_url, "PUT", "/api/v1/widget", Some(&agent), Some(&json!({}))).await;
    assert_eq!(status, 403);
    // Set, then read by a customer as set (the colour in lower case).
    let body = json!({"label_zh": "联系客服", "greeting_zh": "您好！\n工作时间 9:00–18:00", "color": "#0A7D32", "position": "left"});
    let (status, saved) = http(&s.http_url, "PUT", "/api/v1/widget", Some(&admin), Some(&body)).await;
    assert_eq!(status, 200, "{saved}");
    let (_, look) = http(&s.http_url, "GET", "/api/v1/widget", Some(&customer), None).await;
    assert_eq!(look, saved);
    assert_eq!((look["color"].as_str(), look["position"].as_str()), (Some("#0a7d32"), Some("left")));
    assert_eq!(look["greeting_zh"], "您好！\n工作时间 9:00–18:00");
    // Another tenant has its own.
    let other = format!("Bearer {}", s.token_with_role("elsewhere", "c9", Role::Customer));
    let r = dongdong_tests::http::send(&s.http_url, "GET", "/api/v1/widget", &[("authorization", &other)], &[]).await;
    assert_eq!(r.status, 200);
    assert!(!String::from_utf8_lossy(&r.body).contains("联系客服"));
    s.stop().await;
}
