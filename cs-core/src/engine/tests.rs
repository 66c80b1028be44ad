//! The engine's rules, unit tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use super::*;
use proptest::prelude::*;

fn step() -> impl Strategy<Value = testing::Step> {
    (0..testing::OPS, 0usize..12, 0usize..12, 0u64..30_000).prop_map(|(op, x, y, dt)| testing::Step { op, x, y, dt })
}

fn agent_strategy() -> impl Strategy<Value = Agent> {
    (0u32..4, 1u32..4, any::<bool>(), 0usize..3, 0u64..5).prop_map(|(load, capacity, connected, status, last)| {
        let mut a = Agent::new("", capacity);
        a.load = load;
        a.connected = connected;
        a.status = [AgentStatus::Online, AgentStatus::Away, AgentStatus::Offline][status];
        a.last_assigned_ms = last;
        a
    })
}

#[test]
fn estimated_wait_counts_the_customers_beyond_free_slots() {
    let q = |free, online| QueueSnapshot {
        group: "g".into(),
        waiting: Vec::new(),
        changed_from: 0,
        avg_handle_ms: 60_000,
        free_capacity: free,
        online_capacity: online,
    };
    assert_eq!(q(0, 10).estimated_wait_s(0), 0, "not waiting");
    assert_eq!(q(2, 10).estimated_wait_s(2), 0, "a free slot is coming");
    // One minute per session, ten slots turning over: 6 s per customer ahead.
    assert_eq!(q(0, 10).estimated_wait_s(1), 6);
    assert_eq!(q(0, 10).estimated_wait_s(5), 30);
    assert_eq!(q(2, 10).estimated_wait_s(5), 18);
    assert_eq!(q(0, 0).estimated_wait_s(1), 60, "no one online: one handle time per customer");
}

proptest! {
    /// The chosen agent is available; least-loaded picks a minimal load
    /// and, among those, the longest idle; round-robin picks the next
    /// available member after the last one, wrapping around.
    #[test]
    fn policy_picks_a_fair_available_agent(
        mut agents in proptest::collection::vec(agent_strategy(), 0..8),
        rr in 0usize..9,
    ) {
        for (i, a) in agents.iter_mut().enumerate() {
            a.id = format!("a{i}");
        }
        let members: Vec<&Agent> = agents.iter().collect();
        let available: Vec<&Agent> = agents.iter().filter(|a| a.available()).collect();
        prop_assert!(choose_agent(Policy::ManualPick, &members, "").is_none());
        match choose_agent(Policy::LeastLoaded, &members, "") {
            None => prop_assert!(available.is_empty()),
            Some(c) => {
                prop_assert!(c.available());
                for a in &available {
                    prop_assert!((c.load, c.last_assigned_ms) <= (a.load, a.last_assigned_ms));
                }
            }
        }
        let rr_last = format!("a{rr}");
        match choose_agent(Policy::RoundRobin, &members, &rr_last) {
            None => prop_assert!(available.is_empty()),
            Some(c) => {
                prop_assert!(c.available());
                let next = available.iter().find(|a| a.id > rr_last).or(available.first());
                prop_assert_eq!(&c.id, &next.unwrap().id);
            }
        }
    }

    /// Any sequence of commands keeps the state consistent: loads match
    /// open sessions, queues hold exactly the waiting sessions, one open
    /// session per customer and group, nobody over capacity, and no
    /// customer waits while an available agent of an automatic group
    /// could take them.
    #[test]
    fn any_command_sequence_keeps_the_invariants(steps in proptest::collection::vec(step(), 1..80)) {
        let mut script = testing::Script::default();
        let mut cs = testing::MemoryCs::new("t");
        for cmd in script.setup() {
            let ok = cs.execute(cmd, script.now).reply.is_ok();
            prop_assert!(ok);
        }
        for step in steps {
            let cmd = script.command(step);
            let out = cs.execute(cmd.clone(), script.now);
            let st = &cs.state;
            if let Err(e) = st.check_invariants() {
                return Err(TestCaseError::fail(format!("after {cmd:?}: {e}")));
            }
            for s in &out.assigned {
                let a = &st.agents[&s.agent];
                prop_assert!(a.load <= a.capacity || matches!(cmd, CsCommand::PutMember { .. }), "{} over capacity", a.id);
            }
            for (g, q) in &st.queues {
                let group = &st.groups[g];
                if q.is_empty() || group.spec.policy == Policy::ManualPick {
                    continue;
                }
                let members: Vec<&Agent> = group.members.iter().filter_map(|m| st.agents.get(m)).collect();
                prop_assert!(choose_agent(group.spec.policy, &members, &group.rr_last).is_none(),
                    "{g} has waiting customers and an available agent after {cmd:?}");
            }
        }
    }
}
