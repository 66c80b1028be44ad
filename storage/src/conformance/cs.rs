//! Customer service: what every `CsStore` must do with the commands of
//! `cs-core` (the rules themselves are the engine's tests).

use super::{tenant, text};
use crate::Backends;
use crate::cs::{
    AgentStatus, CsCommand, CsError, CsOutcome, CsReply, GroupField, GroupSpec, LeftMessage, Policy, Profile,
    ProfileUpdate, QuickReply, Session, SessionState, TransferTarget,
};
use std::collections::HashSet;
use std::sync::Arc;

/// A clock the cs tests move by hand.
struct Cs<'a> {
    b: &'a Backends,
    t: String,
    now: u64,
}

impl<'a> Cs<'a> {
    fn new(b: &'a Backends) -> Self {
        Self { b, t: tenant(), now: 1_700_000_000_000 }
    }

    async fn run(&self, c: CsCommand) -> CsOutcome {
        self.b.cs.execute(&self.t, c, self.now).await.unwrap()
    }

    async fn ok(&self, c: CsCommand) -> CsOutcome {
        let name = c.name();
        let out = self.run(c).await;
        assert!(out.reply.is_ok(), "{name}: {:?}", out.reply);
        out
    }

    async fn err(&self, c: CsCommand) -> CsError {
        let name = c.name();
        match self.run(c).await.reply {
            Err(e) => e,
            Ok(r) => panic!("{name} should fail, got {r:?}"),
        }
    }

    async fn group(&self, id: &str, policy: Policy, agents: &[(&str, u32)]) {
        let spec = GroupSpec { id: id.into(), policy, ..GroupSpec::default() };
        self.ok(CsCommand::PutGroup { spec, only: vec![] }).await;
        for (a, cap) in agents {
            self.ok(CsCommand::PutMember { group: id.into(), agent: (*a).into(), capacity: Some(*cap) }).await;
        }
    }

    async fn online(&self, agent: &str) -> CsOutcome {
        self.ok(CsCommand::Connected { agent: agent.into() }).await;
        self.ok(CsCommand::SetStatus { agent: agent.into(), status: AgentStatus::Online }).await
    }

    async fn request(&self, customer: &str, group: &str) -> (Session, u32) {
        let c = CsCommand::Request {
            customer: customer.into(),
            group: group.into(),
            session_id: im_core::new_msg_id(),
            first_message: Some(text(&format!("hello from {customer}"))),
            context: Default::default(),
        };
        match self.ok(c).await.reply {
            Ok(CsReply::Session { session, position }) => (session, position),
            other => panic!("request: {other:?}"),
        }
    }

    async fn session(&self, id: &str) -> Session {
        self.b.cs.session(&self.t, id).await.unwrap().expect("session exists")
    }

    async fn load(&self, agent: &str) -> u32 {
        self.b.cs.agent(&self.t, agent).await.unwrap().expect("agent exists").load
    }
}

pub async fn cs_groups_and_members(b: &Backends) {
    let cs = Cs::new(b);
    let bad = GroupSpec { id: "g".into(), max_queue: 0, ..GroupSpec::default() };
    assert!(
        matches!(cs.err(CsCommand::PutGroup { spec: bad, only: vec![] }).await, CsError::Invalid(m) if m.contains("max_queue"))
    );
    cs.group("pre", Policy::LeastLoaded, &[("ann", 3), ("bob", 2)]).await;
    cs.group("after", Policy::RoundRobin, &[("bob", 4)]).await;
    let no_group = CsCommand::PutMember { group: "nope".into(), agent: "ann".into(), capacity: Some(1) };
    assert_eq!(cs.err(no_group).await, CsError::NoSuchGroup);
    let zero = CsCommand::PutMember { group: "pre".into(), agent: "ann".into(), capacity: Some(0) };
    assert!(matches!(cs.err(zero).await, CsError::Invalid(_)));
    let groups = b.cs.groups(&cs.t).await.unwrap();
    let ids: Vec<&str> = groups.iter().map(|g| g.spec.id.as_str()).collect();
    assert_eq!(ids, ["after", "pre"]);
    assert_eq!(groups[1].members, ["ann", "bob"]);
    assert_eq!(groups[1].spec.name, "pre", "the name defaults to the id");
    let bob = b.cs.agent(&cs.t, "bob").await.unwrap().unwrap();
    assert_eq!(
        (bob.capacity, bob.groups.clone(), bob.status),
        (4, vec!["after".into(), "pre".into()], AgentStatus::Offline)
    );
    // Updating settings keeps the members.
    let spec = GroupSpec { id: "pre".into(), name: "Pre-sales".into(), max_queue: 7, ..GroupSpec::default() };
    cs.ok(CsCommand::PutGroup { spec, only: vec![] }).await;
    let view = b.cs.group_view(&cs.t, "pre").await.unwrap().unwrap();
    assert_eq!((view.group.spec.name.as_str(), view.group.spec.max_queue), ("Pre-sales", 7));
    assert_eq!(view.group.members, ["ann", "bob"]);
    // Two admins change different fields from the same read: both stick.
    let read = view.group.spec.clone();
    let mut one = read.clone();
    one.max_queue = 9;
    let mut other = read.clone();
    other.name = "Pre-sales & returns".into();
    other.max_queue = 1; // stale: not named, not written
    let (a, b2) = tokio::join!(
        cs.run(CsCommand::PutGroup { spec: one, only: vec![GroupField::MaxQueue] }),
        cs.run(CsCommand::PutGroup { spec: other, only: vec![GroupField::Name] })
    );
    assert!(a.reply.is_ok() && b2.reply.is_ok());
    let spec = b.cs.group_view(&cs.t, "pre").await.unwrap().unwrap().group.spec;
    assert_eq!((spec.name.as_str(), spec.max_queue, spec.policy), ("Pre-sales & returns", 9, read.policy));
    // A new group takes the whole spec, named fields or not.
    let new = GroupSpec { id: "fresh".into(), max_queue: 4, ..GroupSpec::default() };
    cs.ok(CsCommand::PutGroup { spec: new, only: vec![GroupField::MaxQueue] }).await;
    let spec = b.cs.group_view(&cs.t, "fresh").await.unwrap().unwrap().group.spec;
    assert_eq!((spec.name.as_str(), spec.max_queue), ("fresh", 4));
    cs.ok(CsCommand::DeleteGroup { group: "fresh".into() }).await;
    cs.ok(CsCommand::RemoveMember { group: "pre".into(), agent: "bob".into() }).await;
    assert_eq!(b.cs.agent(&cs.t, "bob").await.unwrap().unwrap().groups, ["after"]);
    cs.ok(CsCommand::DeleteGroup { group: "after".into() }).await;
    assert!(b.cs.group_view(&cs.t, "after").await.unwrap().is_none());
    assert!(b.cs.agent(&cs.t, "bob").await.unwrap().unwrap().groups.is_empty());
    assert!(b.cs.tenants().await.unwrap().contains(&cs.t));
    // Tenants are walls.
    assert!(b.cs.groups(&tenant()).await.unwrap().is_empty());
}

pub async fn cs_least_loaded_fifo_and_positions(b: &Backends) {
    let mut cs = Cs::new(b);
    cs.group("g", Policy::LeastLoaded, &[("ann", 2), ("bob", 2)]).await;
    assert_eq!(
        cs.err(CsCommand::Request {
            customer: "c0".into(),
            group: "g".into(),
            session_id: "s0".into(),
            first_message: None,
            context: Default::default(),
        })
        .await,
        CsError::NoAgentOnline
    );
    cs.online("ann").await;
    cs.now += 10;
    cs.online("bob").await;
    let mut sessions = Vec::new();
    for i in 0..6 {
        cs.now += 1;
        let (s, position) = cs.request(&format!("c{i}"), "g").await;
        sessions.push(s.id.clone());
        if i < 4 {
            assert_eq!((s.state, position), (SessionState::Active, 0), "c{i}");
            // Least loaded; the tie goes to the agent idle longest.
            assert_eq!(s.agent, ["ann", "bob"][i % 2], "c{i}");
            assert_eq!(s.conversation_id, im_core::conversation_id(&cs.t, &format!("c{i}"), &s.agent));
            assert_eq!(s.conversations, std::slice::from_ref(&s.conversation_id));
            assert_eq!(s.first_message, Some(text(&format!("hello from c{i}"))));
        } else {
            assert_eq!((s.state, position), (SessionState::Waiting, i as u32 - 3), "c{i}");
            assert!(s.agent.is_empty() && s.conversation_id.is_empty());
        }
    }
    // Asking again returns the same session.
    let (again, position) = cs.request("c5", "g").await;
    assert_eq!((again.id.as_str(), position), (sessions[5].as_str(), 2));
    let view = b.cs.group_view(&cs.t, "g").await.unwrap().unwrap();
    assert_eq!(view.queue.waiting.iter().map(|w| w.1.as_str()).collect::<Vec<_>>(), ["c4", "c5"]);
    assert_eq!((view.queue.free_capacity, view.queue.online_capacity), (0, 4));
    assert_eq!(view.active.len(), 4);
    // A waiting customer leaves: the one behind moves up.
    let out = cs.ok(CsCommand::Cancel { customer: "c4".into(), group: "g".into() }).await;
    assert_eq!(out.ended.len(), 1);
    assert_eq!(out.ended[0].end_reason, "cancelled");
    assert_eq!(out.queues.len(), 1);
    assert_eq!((out.queues[0].changed_from, out.queues[0].waiting.len()), (0, 1));
    assert!(matches!(
        cs.err(CsCommand::Cancel { customer: "c0".into(), group: "g".into() }).await,
        CsError::Conflict(_)
    ));
    // Ending a session frees a slot: the head of the queue gets it.
    cs.now += 60_000;
    let c1 = cs.session(&sessions[1]).await;
    let out = cs.ok(CsCommand::End { session_id: c1.id.clone(), by: "bob".into(), admin: false }).await;
    assert_eq!(out.ended[0].end_reason, "ended by the agent");
    assert_eq!(out.assigned.len(), 1);
    assert_eq!((out.assigned[0].customer.as_str(), out.assigned[0].agent.as_str()), ("c5", "bob"));
    assert_eq!(cs.load("bob").await, 2);
    assert!(b.cs.group_view(&cs.t, "g").await.unwrap().unwrap().queue.waiting.is_empty());
    let view = b.cs.group_view(&cs.t, "g").await.unwrap().unwrap();
    assert!(view.group.avg_handle_ms > 0, "handle time recorded");
    // Ended sessions stay readable; the user's open sessions do not list them.
    assert_eq!(cs.session(&c1.id).await.state, SessionState::Ended);
    let open: Vec<String> = b.cs.user_sessions(&cs.t, "bob").await.unwrap().into_iter().map(|s| s.customer).collect();
    assert_eq!(open, ["c3", "c5"]);
}

pub async fn cs_queue_full_and_round_robin(b: &Backends) {
    let mut cs = Cs::new(b);
    let spec = GroupSpec { id: "rr".into(), policy: Policy::RoundRobin, max_queue: 2, ..GroupSpec::default() };
    cs.ok(CsCommand::PutGroup { spec, only: vec![] }).await;
    for a in ["a1", "a2", "a3"] {
        cs.ok(CsCommand::PutMember { group: "rr".into(), agent: a.into(), capacity: Some(10) }).await;
        cs.online(a).await;
    }
    let mut got = Vec::new();
    for i in 0..7 {
        cs.now += 1;
        got.push(cs.request(&format!("c{i}"), "rr").await.0.agent);
    }
    assert_eq!(got, ["a1", "a2", "a3", "a1", "a2", "a3", "a1"]);
    // Away takes no new sessions; with all away, customers queue up to max_queue.
    for a in ["a1", "a2", "a3"] {
        cs.ok(CsCommand::SetStatus { agent: a.into(), status: AgentStatus::Away }).await;
    }
    assert_eq!(
        cs.err(CsCommand::Request {
            customer: "x".into(),
            group: "rr".into(),
            session_id: "s".into(),
            first_message: None,
            context: Default::default(),
        })
        .await,
        CsError::NoAgentOnline,
        "away agents are not online"
    );
    cs.ok(CsCommand::SetStatus { agent: "a1".into(), status: AgentStatus::Online }).await;
    cs.ok(CsCommand::PutMember { group: "rr".into(), agent: "a1".into(), capacity: Some(3) }).await;
    assert_eq!(cs.request("w1", "rr").await.1, 1);
    assert_eq!(cs.request("w2", "rr").await.1, 2);
    assert_eq!(
        cs.err(CsCommand::Request {
            customer: "w3".into(),
            group: "rr".into(),
            session_id: "s".into(),
            first_message: None,
            context: Default::default(),
        })
        .await,
        CsError::QueueFull
    );
    assert_eq!(
        cs.err(CsCommand::Request {
            customer: "w3".into(),
            group: "nope".into(),
            session_id: "s".into(),
            first_message: None,
            context: Default::default(),
        })
        .await,
        CsError::NoSuchGroup
    );
}

pub async fn cs_manual_pick(b: &Backends) {
    let mut cs = Cs::new(b);
    cs.group("m", Policy::ManualPick, &[("ann", 2)]).await;
    cs.group("auto", Policy::LeastLoaded, &[("ann", 2)]).await;
    cs.online("ann").await;
    for c in ["c1", "c2", "c3"] {
        cs.now += 1;
        let (s, pos) = cs.request(c, "m").await;
        assert_eq!(s.state, SessionState::Waiting, "manual groups never assign by themselves");
        assert!(pos > 0);
    }
    let accept = |customer: Option<&str>, agent: &str, group: &str| CsCommand::Accept {
        agent: agent.into(),
        group: group.into(),
        customer: customer.map(str::to_string),
    };
    assert!(matches!(cs.err(accept(None, "bob", "m")).await, CsError::Forbidden(_)));
    assert!(matches!(cs.err(accept(None, "ann", "auto")).await, CsError::Invalid(_)));
    let out = cs.ok(accept(Some("c2"), "ann", "m")).await;
    assert_eq!(out.assigned[0].customer, "c2");
    assert_eq!(out.queues[0].changed_from, 1, "only c3 moved up");
    let out = cs.ok(accept(None, "ann", "m")).await;
    assert_eq!(out.assigned[0].customer, "c1", "without a customer, the head of the queue");
    assert_eq!(cs.err(accept(None, "ann", "m")).await, CsError::AgentUnavailable, "at capacity");
    cs.ok(CsCommand::PutMember { group: "m".into(), agent: "ann".into(), capacity: Some(5) }).await;
    assert!(matches!(cs.err(accept(Some("c1"), "ann", "m")).await, CsError::Conflict(_) | CsError::NoSuchSession));
    cs.ok(accept(None, "ann", "m")).await;
    assert_eq!(cs.err(accept(None, "ann", "m")).await, CsError::NobodyWaiting);
}

pub async fn cs_transfer(b: &Backends) {
    let mut cs = Cs::new(b);
    cs.group("pre", Policy::LeastLoaded, &[("ann", 1), ("bob", 1)]).await;
    cs.group("after", Policy::LeastLoaded, &[("cat", 1)]).await;
    cs.online("ann").await;
    let (s1, _) = cs.request("c1", "pre").await;
    assert_eq!(s1.agent, "ann");
    let to_agent = |id: &str, by: &str, to: &str| CsCommand::Transfer {
        session_id: id.into(),
        by: by.into(),
        admin: false,
        target: TransferTarget::Agent(to.into()),
        note: String::new(),
    };
    assert!(matches!(cs.err(to_agent(&s1.id, "bob", "bob")).await, CsError::Forbidden(_)));
    assert_eq!(cs.err(to_agent(&s1.id, "ann", "bob")).await, CsError::AgentUnavailable, "bob is offline");
    cs.online("bob").await;
    cs.now += 1000;
    let out = cs.ok(to_agent(&s1.id, "ann", "bob")).await;
    assert_eq!(out.transferred.len(), 1);
    assert_eq!((out.transferred[0].from_agent.as_str(), out.transferred[0].session.agent.as_str()), ("ann", "bob"));
    assert_eq!(out.assigned.len(), 1);
    let s = cs.session(&s1.id).await;
    assert_eq!(s.previous_agents, ["ann"]);
    assert_eq!(
        s.conversations,
        [im_core::conversation_id(&cs.t, "c1", "ann"), im_core::conversation_id(&cs.t, "c1", "bob")]
    );
    assert_eq!((cs.load("ann").await, cs.load("bob").await), (0, 1));
    // To a group: the customer goes to the front of that queue.
    let (c2, _) = cs.request("c2", "pre").await;
    assert_eq!(c2.agent, "ann");
    cs.online("cat").await;
    let (c3, _) = cs.request("c3", "after").await;
    assert_eq!(c3.agent, "cat");
    cs.now += 1;
    let (c4, pos) = cs.request("c4", "after").await;
    assert_eq!((c4.state, pos), (SessionState::Waiting, 1));
    let out = cs
        .ok(CsCommand::Transfer {
            session_id: s1.id.clone(),
            by: "bob".into(),
            admin: false,
            target: TransferTarget::Group("after".into()),
            note: String::new(),
        })
        .await;
    let moved = &out.transferred[0];
    assert_eq!((moved.from_group.as_str(), moved.session.group.as_str()), ("pre", "after"));
    assert_eq!(moved.session.state, SessionState::Waiting);
    let after = b.cs.group_view(&cs.t, "after").await.unwrap().unwrap();
    let order: Vec<&str> = after.queue.waiting.iter().map(|w| w.1.as_str()).collect();
    assert_eq!(order, ["c1", "c4"], "transferred to the front");
    // cat frees up: c1 comes first.
    let out = cs.ok(CsCommand::End { session_id: c3.id.clone(), by: "c3".into(), admin: false }).await;
    assert_eq!(out.assigned[0].customer, "c1");
    assert_eq!(out.assigned[0].conversations.len(), 3, "ann, bob, cat");
    // An admin may transfer too; a second session of the customer in a group is refused.
    let (c1b, _) = cs.request("c1", "pre").await;
    assert!(matches!(
        cs.err(CsCommand::Transfer {
            session_id: c1b.id.clone(),
            by: "root".into(),
            admin: true,
            target: TransferTarget::Group("after".into()),
            note: String::new(),
        })
        .await,
        CsError::Conflict(_)
    ));
}

pub async fn cs_agent_grace_and_max_wait(b: &Backends) {
    let mut cs = Cs::new(b);
    let spec = GroupSpec { id: "g".into(), max_wait_ms: 90_000, ..GroupSpec::default() };
    cs.ok(CsCommand::PutGroup { spec, only: vec![] }).await;
    cs.ok(CsCommand::PutMember { group: "g".into(), agent: "ann".into(), capacity: Some(2) }).await;
    cs.ok(CsCommand::PutMember { group: "g".into(), agent: "bob".into(), capacity: Some(1) }).await;
    cs.online("ann").await;
    let (s1, _) = cs.request("c1", "g").await;
    cs.now += 5;
    let (s2, _) = cs.request("c2", "g").await;
    assert_eq!((s1.agent.as_str(), s2.agent.as_str()), ("ann", "ann"));
    cs.ok(CsCommand::Disconnected { agent: "ann".into() }).await;
    let grace = 60_000;
    let disconnected = cs.now;
    cs.now += grace - 1;
    let out = cs.ok(CsCommand::Sweep { grace_ms: grace }).await;
    assert!(out.transferred.is_empty(), "within the grace period");
    // The sweep says when it is next needed: the end of ann's grace.
    let due = CsReply::Swept { next_due_ms: disconnected + grace, waiting: false, agents_connected: false };
    assert_eq!(out.reply, Ok(due));
    // Back in time: nothing changes.
    cs.ok(CsCommand::Connected { agent: "ann".into() }).await;
    cs.now += grace * 2;
    assert!(cs.ok(CsCommand::Sweep { grace_ms: grace }).await.transferred.is_empty());
    assert_eq!(cs.load("ann").await, 2);
    // Gone for longer than the grace period: sessions go back to the front.
    cs.now += 10;
    let (s3, pos) = cs.request("c3", "g").await;
    assert_eq!((s3.state, pos), (SessionState::Waiting, 1), "ann is at capacity");
    cs.ok(CsCommand::Disconnected { agent: "ann".into() }).await;
    assert_eq!(
        cs.err(CsCommand::Request {
            customer: "c9".into(),
            group: "g".into(),
            session_id: "s9".into(),
            first_message: None,
            context: Default::default(),
        })
        .await,
        CsError::NoAgentOnline,
        "a disconnected agent is not online"
    );
    cs.now += grace;
    let out = cs.ok(CsCommand::Sweep { grace_ms: grace }).await;
    assert_eq!(out.transferred.len(), 2);
    assert!(out.transferred.iter().all(|t| t.reason == "agent disconnected" && t.from_agent == "ann"));
    let ann = b.cs.agent(&cs.t, "ann").await.unwrap().unwrap();
    assert_eq!((ann.status, ann.load), (AgentStatus::Offline, 0));
    let view = b.cs.group_view(&cs.t, "g").await.unwrap().unwrap();
    let order: Vec<&str> = view.queue.waiting.iter().map(|w| w.1.as_str()).collect();
    assert_eq!(order, ["c1", "c2", "c3"], "requeued in their original order, ahead of c3");
    // bob comes online and takes the head.
    let out = cs.online("bob").await;
    assert_eq!(out.assigned.len(), 1);
    assert_eq!(out.assigned[0].customer, "c1");
    assert_eq!(out.assigned[0].previous_agents, ["ann"]);
    // Waiting too long (counted from joining the queue last): turned away.
    cs.now += 30_000;
    let out = cs.ok(CsCommand::Sweep { grace_ms: grace }).await;
    assert_eq!(out.timed_out, [("g".to_string(), "c3".to_string())]);
    assert_eq!(out.ended[0].end_reason, "waited too long");
    cs.now += 59_999;
    let out = cs.ok(CsCommand::Sweep { grace_ms: grace }).await;
    assert!(out.timed_out.is_empty());
    // c2 still waits (requeued when ann's grace ended): due at the end of
    // its max wait; bob is connected.
    let Ok(CsReply::Swept { next_due_ms, waiting, agents_connected }) = out.reply else { panic!("{:?}", out.reply) };
    assert_eq!((next_due_ms, waiting, agents_connected), (cs.now + 1, true, true));
    cs.now += 1;
    let out = cs.ok(CsCommand::Sweep { grace_ms: grace }).await;
    assert_eq!(out.timed_out, [("g".to_string(), "c2".to_string())]);
    // Signing off requeues at once.
    cs.ok(CsCommand::PutMember { group: "g".into(), agent: "cat".into(), capacity: Some(1) }).await;
    let out = cs.ok(CsCommand::SetStatus { agent: "bob".into(), status: AgentStatus::Offline }).await;
    assert_eq!(out.transferred[0].reason, "agent went offline");
    assert_eq!(cs.session(&s1.id).await.state, SessionState::Waiting);
}

pub async fn cs_end_rate_left_messages_and_quick_replies(b: &Backends) {
    let mut cs = Cs::new(b);
    let spec = GroupSpec { id: "g".into(), auto_join: true, default_capacity: 3, ..GroupSpec::default() };
    cs.ok(CsCommand::PutGroup { spec, only: vec![] }).await;
    cs.ok(CsCommand::Connected { agent: "ann".into() }).await;
    let out = cs.ok(CsCommand::SetStatus { agent: "ann".into(), status: AgentStatus::Online }).await;
    let Ok(CsReply::Agent { agent }) = out.reply else { panic!("{:?}", out.reply) };
    assert_eq!((agent.groups.clone(), agent.capacity), (vec!["g".to_string()], 3), "auto-join");
    let (s, _) = cs.request("cus", "g").await;
    let rate = |by: &str, score: u32| CsCommand::Rate {
        session_id: s.id.clone(),
        customer: by.into(),
        score,
        comment: "quick".into(),
    };
    assert!(matches!(cs.err(rate("cus", 5)).await, CsError::Conflict(_)), "not ended yet");
    assert!(matches!(
        cs.err(CsCommand::End { session_id: s.id.clone(), by: "eve".into(), admin: false }).await,
        CsError::Forbidden(_)
    ));
    cs.now += 30_000;
    let out = cs.ok(CsCommand::End { session_id: s.id.clone(), by: "cus".into(), admin: false }).await;
    assert_eq!((out.ended[0].ended_by.as_str(), out.ended[0].end_reason.as_str()), ("cus", "ended by the customer"));
    assert!(matches!(
        cs.err(CsCommand::End { session_id: s.id.clone(), by: "cus".into(), admin: false }).await,
        CsError::Conflict(_)
    ));
    assert!(matches!(cs.err(rate("eve", 5)).await, CsError::Forbidden(_)));
    assert!(matches!(cs.err(rate("cus", 6)).await, CsError::Invalid(_)));
    cs.ok(rate("cus", 4)).await;
    assert!(matches!(cs.err(rate("cus", 5)).await, CsError::Conflict(_)), "once");
    let rated = cs.session(&s.id).await;
    assert_eq!((rated.score, rated.comment.as_str(), rated.state), (4, "quick", SessionState::Ended));
    assert_eq!(b.cs.agent(&cs.t, "ann").await.unwrap().unwrap().load, 0);

    // Left messages: stored per group, claimed once by an agent of the group.
    let left = |id: &str, group: &str, created_ms: u64| LeftMessage {
        id: id.into(),
        group: group.into(),
        customer: "cus".into(),
        content: text("call me"),
        contact: "+86 10 1234".into(),
        created_ms,
        claimed_by: String::new(),
        claimed_ms: 0,
    };
    assert_eq!(cs.err(CsCommand::LeaveMessage { message: left("l0", "nope", cs.now) }).await, CsError::NoSuchGroup);
    cs.ok(CsCommand::LeaveMessage { message: left("l1", "g", cs.now) }).await;
    cs.now += 1;
    cs.ok(CsCommand::LeaveMessage { message: left("l2", "g", cs.now) }).await;
    let listed: Vec<String> = b.cs.left_messages(&cs.t, "g", 10).await.unwrap().into_iter().map(|m| m.id).collect();
    assert_eq!(listed, ["l1", "l2"]);
    assert!(matches!(cs.err(CsCommand::Claim { id: "l1".into(), agent: "eve".into() }).await, CsError::Forbidden(_)));
    let out = cs.ok(CsCommand::Claim { id: "l1".into(), agent: "ann".into() }).await;
    assert!(matches!(out.reply, Ok(CsReply::LeftMessage { message }) if message.claimed_by == "ann"));
    cs.ok(CsCommand::Claim { id: "l1".into(), agent: "ann".into() }).await;
    cs.ok(CsCommand::PutMember { group: "g".into(), agent: "bob".into(), capacity: Some(1) }).await;
    assert!(matches!(
        cs.err(CsCommand::Claim { id: "l1".into(), agent: "bob".into() }).await,
        CsError::Conflict(m) if m.contains("ann")
    ));
    assert_eq!(cs.err(CsCommand::Claim { id: "zz".into(), agent: "bob".into() }).await, CsError::NoSuchLeftMessage);
    let listed: Vec<String> = b.cs.left_messages(&cs.t, "g", 10).await.unwrap().into_iter().map(|m| m.id).collect();
    assert_eq!(listed, ["l2"]);

    // Quick replies: group ones for members, personal ones for their owner.
    let reply = |id: &str, group: &str, owner: &str| QuickReply {
        id: id.into(),
        group: group.into(),
        owner: owner.into(),
        title: format!("title {id}"),
        text: format!("text {id}"),
        updated_ms: 1,
    };
    for r in [reply("q1", "g", ""), reply("q2", "", "ann"), reply("q3", "", "bob"), reply("q4", "other", "")] {
        assert!(b.cs.put_quick_reply(&cs.t, r, 4).await.unwrap());
    }
    // The limit counts every reply of the tenant, whoever can see it; an
    // existing reply can still be changed.
    assert!(!b.cs.put_quick_reply(&cs.t, reply("q5", "", "carl"), 4).await.unwrap());
    assert!(b.cs.quick_reply(&cs.t, "q5").await.unwrap().is_none());
    let ids = |v: Vec<QuickReply>| v.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(ids(b.cs.quick_replies(&cs.t, &["g".into()], "ann").await.unwrap()), ["q2", "q1"]);
    let mut updated = reply("q1", "g", "");
    updated.text = "new text".into();
    assert!(b.cs.put_quick_reply(&cs.t, updated.clone(), 4).await.unwrap());
    assert_eq!(b.cs.quick_reply(&cs.t, "q1").await.unwrap(), Some(updated));
    assert!(b.cs.delete_quick_reply(&cs.t, "q1").await.unwrap());
    assert!(!b.cs.delete_quick_reply(&cs.t, "q1").await.unwrap());
    assert_eq!(ids(b.cs.quick_replies(&cs.t, &["g".into()], "ann").await.unwrap()), ["q2"]);
    assert!(b.cs.quick_replies(&tenant(), &["g".into()], "ann").await.unwrap().is_empty());
}

/// Many customers and agent status changes at once: nobody is assigned
/// twice, no agent goes over capacity, every customer is served or waiting.
pub async fn cs_concurrent_assignment_keeps_invariants(b: &Backends) {
    let cs = Arc::new(Cs::new(b).t);
    let t = cs.as_str().to_string();
    let now = 1_700_000_000_000;
    let spec = GroupSpec { id: "g".into(), max_queue: 1000, ..GroupSpec::default() };
    b.cs.execute(&t, CsCommand::PutGroup { spec, only: vec![] }, now).await.unwrap();
    let agents: Vec<String> = (0..8).map(|i| format!("agent{i}")).collect();
    for a in &agents {
        b.cs.execute(&t, CsCommand::PutMember { group: "g".into(), agent: a.clone(), capacity: Some(3) }, now)
            .await
            .unwrap();
        b.cs.execute(&t, CsCommand::Connected { agent: a.clone() }, now).await.unwrap();
        b.cs.execute(&t, CsCommand::SetStatus { agent: a.clone(), status: AgentStatus::Online }, now).await.unwrap();
    }
    let mut tasks = Vec::new();
    for i in 0..60 {
        let (b, t) = (b.clone(), t.clone());
        tasks.push(tokio::spawn(async move {
            let c = CsCommand::Request {
                customer: format!("c{i}"),
                group: "g".into(),
                session_id: format!("s{i}"),
                first_message: None,
                context: Default::default(),
            };
            let out = b.cs.execute(&t, c, now + i).await.unwrap();
            if i % 3 == 0 {
                // Some end their session or leave the queue right away.
                let end = CsCommand::End { session_id: format!("s{i}"), by: format!("c{i}"), admin: false };
                b.cs.execute(&t, end, now + i + 1).await.unwrap();
            }
            out
        }));
    }
    for (i, a) in agents.iter().enumerate().take(2) {
        let (b, t, a) = (b.clone(), t.clone(), a.clone());
        tasks.push(tokio::spawn(async move {
            let c = CsCommand::SetStatus { agent: a, status: AgentStatus::Away };
            b.cs.execute(&t, c, now + 30 + i as u64).await.unwrap()
        }));
    }
    let mut assigned = HashSet::new();
    for task in tasks {
        let out = task.await.unwrap();
        for s in out.assigned {
            assert!(assigned.insert(s.id.clone()), "{} assigned twice", s.id);
        }
    }
    let view = b.cs.group_view(&t, "g").await.unwrap().unwrap();
    let mut load = std::collections::HashMap::new();
    for s in &view.active {
        *load.entry(s.agent.clone()).or_insert(0u32) += 1;
    }
    for a in &view.agents {
        let actual = load.get(&a.id).copied().unwrap_or(0);
        assert_eq!(a.load, actual, "{} load", a.id);
        assert!(actual <= a.capacity, "{} over capacity", a.id);
    }
    let open = view.active.len() + view.waiting.len();
    assert_eq!(open, 40, "60 customers, 20 of whom ended at once");
    let free: u32 = view.agents.iter().filter(|a| a.status == AgentStatus::Online).map(|a| a.capacity - a.load).sum();
    assert!(view.waiting.is_empty() || free == 0, "customers wait while an online agent has room");
}

/// A transfer to an agent never disturbs the queue, even when a waiting
/// customer now holds the queue position the transferred session once had.
pub async fn cs_transfer_to_agent_keeps_the_queue(b: &Backends) {
    let mut cs = Cs::new(b);
    cs.group("g", Policy::LeastLoaded, &[("ann", 1)]).await;
    cs.online("ann").await;
    cs.online("bob").await;
    let (s0, _) = cs.request("c0", "g").await;
    assert_eq!(s0.agent, "ann");
    cs.now += 1;
    let (s1, position) = cs.request("c1", "g").await;
    assert_eq!((s1.state, position), (SessionState::Waiting, 1));
    let to_bob = CsCommand::Transfer {
        session_id: s0.id.clone(),
        by: "root".into(),
        admin: true,
        target: TransferTarget::Agent("bob".into()),
        note: String::new(),
    };
    let out = cs.ok(to_bob).await;
    // ann is free again and takes c1 from the queue.
    let assigned: Vec<(&str, &str)> = out.assigned.iter().map(|s| (s.customer.as_str(), s.agent.as_str())).collect();
    assert_eq!(assigned, [("c0", "bob"), ("c1", "ann")]);
    assert_eq!(cs.session(&s1.id).await.state, SessionState::Active);
    assert!(b.cs.group_view(&cs.t, "g").await.unwrap().unwrap().waiting.is_empty());
}

pub async fn cs_past_sessions_and_profiles(b: &Backends) {
    let mut cs = Cs::new(b);
    cs.group("g", Policy::LeastLoaded, &[("ann", 2), ("bob", 2)]).await;
    cs.online("ann").await;
    // Three sessions of c0 end one after the other; the second moves from
    // ann to bob before it ends, so both agents have it.
    let mut ids = Vec::new();
    for i in 0..3 {
        cs.now += 1000;
        let (s, _) = cs.request("c0", "g").await;
        if i == 1 {
            cs.now += 5;
            cs.online("bob").await;
            let to = if s.agent == "ann" { "bob" } else { "ann" };
            let t = CsCommand::Transfer {
                session_id: s.id.clone(),
                by: s.agent.clone(),
                admin: false,
                target: TransferTarget::Agent(to.into()),
                note: "she is in a hurry".into(),
            };
            let moved = cs.ok(t).await;
            let Ok(CsReply::Session { session, .. }) = moved.reply else { panic!("transferred") };
            assert_eq!(session.transfer_note, "she is in a hurry");
        }
        cs.now += 10;
        cs.ok(CsCommand::End { session_id: s.id.clone(), by: "c0".into(), admin: false }).await;
        ids.push(s.id);
    }
    // An open session is not past.
    cs.now += 1000;
    let (open, _) = cs.request("c0", "g").await;
    let past = |user: &'static str, before: u64, limit: usize| {
        let t = cs.t.clone();
        async move {
            b.cs.past_sessions(&t, user, before, limit).await.unwrap().into_iter().map(|s| s.id).collect::<Vec<_>>()
        }
    };
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(past("c0", 0, 10).await, newest_first);
    assert!(!past("c0", 0, 10).await.contains(&open.id));
    assert_eq!(past("c0", 0, 2).await, newest_first[..2]);
    // Paging: before the end time of the second newest.
    let second = cs.session(&newest_first[1]).await;
    assert_eq!(second.previous_agents.len(), 1);
    assert!(!second.conversations.is_empty(), "conversation ids are derived");
    assert_eq!(past("c0", second.ended_ms, 10).await, newest_first[2..]);
    // Both agents of the transferred session have it.
    assert!(past("ann", 0, 10).await.contains(&second.id));
    assert!(past("bob", 0, 10).await.contains(&second.id));
    assert!(past("nobody", 0, 10).await.is_empty());
    // Rating an ended session rewrites it without listing it twice.
    cs.ok(CsCommand::Rate { session_id: ids[0].clone(), customer: "c0".into(), score: 4, comment: String::new() })
        .await;
    assert_eq!(past("c0", 0, 10).await, newest_first);
    let rated = b.cs.past_sessions(&cs.t, "c0", 0, 10).await.unwrap();
    assert_eq!(rated.last().unwrap().score, 4);
    // The tenant's ended sessions by end time (reports), rated ones once.
    let ended = |from: u64, to: u64, limit: usize| {
        let t = cs.t.clone();
        async move { b.cs.ended_sessions(&t, from, to, limit).await.unwrap().into_iter().map(|s| s.id).collect::<Vec<_>>() }
    };
    assert_eq!(ended(0, u64::MAX, 10).await, newest_first);
    assert_eq!(ended(0, u64::MAX, 1).await, newest_first[..1]);
    assert_eq!(ended(0, second.ended_ms, 10).await, newest_first[2..], "the end bound is exclusive");
    assert_eq!(ended(second.ended_ms, u64::MAX, 10).await, newest_first[..2], "the start bound is inclusive");
    assert_eq!(rated.last().unwrap().first_assigned_ms, rated.last().unwrap().assigned_ms);
    assert!(second.first_assigned_ms < second.assigned_ms, "a transfer keeps the first assignment");

    // Profiles: identity and note are written apart and keep each other.
    let t = cs.t.clone();
    let identity = |name: &str| ProfileUpdate::Identity {
        role: "customer".into(),
        name: name.into(),
        avatar: "https://img.example/c0.png".into(),
    };
    b.cs.update_profile(&t, "c0", identity("王小明")).await.unwrap();
    let note = ProfileUpdate::Note { note: "VIP; prefers e-mail".into(), by: "ann".into(), at_ms: 5 };
    b.cs.update_profile(&t, "c0", note).await.unwrap();
    b.cs.update_profile(&t, "c0", identity("Xiaoming Wang")).await.unwrap();
    b.cs.update_profile(
        &t,
        "ann",
        ProfileUpdate::Identity { role: "agent".into(), name: "Ann".into(), avatar: String::new() },
    )
    .await
    .unwrap();
    let mut got = b.cs.profiles(&t, &["c0".into(), "ann".into(), "ghost".into()]).await.unwrap();
    got.sort_by(|a, b| a.user.cmp(&b.user));
    let want = [
        Profile { user: "ann".into(), role: "agent".into(), name: "Ann".into(), ..Default::default() },
        Profile {
            user: "c0".into(),
            role: "customer".into(),
            name: "Xiaoming Wang".into(),
            avatar: "https://img.example/c0.png".into(),
            note: "VIP; prefers e-mail".into(),
            note_by: "ann".into(),
            note_ms: 5,
        },
    ];
    assert_eq!(got, want);
    // Another tenant does not see them.
    assert!(b.cs.profiles(&tenant(), &["c0".into()]).await.unwrap().is_empty());
}
