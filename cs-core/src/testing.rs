//! Random command sequences for property tests of the rules: the engine's
//! own tests and `storage`'s differential test of the engine against the
//! Lua script use the same generator.
//!
//! A test draws a list of [`Step`]s (plain numbers, so any property-test
//! crate can produce them) and turns each into a command with
//! [`Script::command`]. The world is small on purpose, so that commands
//! collide: four agents, six customers, six groups (five that assign
//! automatically, one by hand), queues of three or four, 20 s of patience and a 10 s
//! grace period, and a clock that often stands still (ties in queued time
//! are real: a requeue gives all of an agent's sessions the same one).

use crate::*;

/// The groups, in the order [`Script::setup`] creates them: `g5` picks by
/// hand, the others assign automatically (even ids least-loaded, odd ones
/// round-robin). Not id order, and five automatic groups: a store that
/// walks groups in creation or hash order instead of id order disagrees
/// with the engine in all but one case of 120.
pub const GROUPS: [&str; 6] = ["g5", "g4", "g3", "g2", "g1", "g0"];
/// Agents `a0`..: as many as this.
pub const AGENTS: usize = 4;
/// Customers `c0`..: as many as this.
pub const CUSTOMERS: usize = 6;
/// Kinds of step [`Script::command`] knows (`Step::op` is taken modulo this).
pub const OPS: u8 = 18;
/// The sweep's grace period for disconnected agents.
pub const GRACE_MS: u64 = 10_000;

/// One random step: what to do (`op`), with whom (`x`, `y`), and how far
/// the clock moves first (`dt`, ms; a third of the steps keep the time).
#[derive(Debug, Clone, Copy)]
pub struct Step {
    pub op: u8,
    pub x: usize,
    pub y: usize,
    pub dt: u64,
}

/// Turns steps into commands, remembering the ids it handed out.
#[derive(Debug, Clone)]
pub struct Script {
    pub now: u64,
    /// Session ids of every request made, in order.
    pub sessions: Vec<String>,
    /// Ids of every left message made, in order.
    pub left: Vec<String>,
    n: usize,
}

impl Default for Script {
    fn default() -> Self {
        Self { now: 1_700_000_000_000, sessions: Vec::new(), left: Vec::new(), n: 0 }
    }
}

/// The settings of group `id`, varied by `v`.
fn spec(id: &str, v: usize) -> GroupSpec {
    let n: u32 = id[1..].parse().unwrap_or(0);
    let policy = match n {
        5 => Policy::ManualPick,
        n if n % 2 == 0 => Policy::LeastLoaded,
        _ => Policy::RoundRobin,
    };
    GroupSpec {
        id: id.into(),
        name: String::new(),
        policy,
        max_queue: 3 + (v % 2) as u32,
        max_wait_ms: 20_000,
        // Agents join these groups by going online, and the groups' default
        // capacities differ: the order of joining decides the agent's.
        auto_join: n != 5 && v % 3 != 2,
        default_capacity: 1 + n % 3,
    }
}

fn text(t: &str) -> Content {
    Content { kind: Some(im_core::pb::content::Kind::Text(t.into())) }
}

impl Script {
    /// The commands that create the groups.
    pub fn setup(&self) -> Vec<CsCommand> {
        GROUPS.iter().map(|g| CsCommand::PutGroup { spec: spec(g, 0), only: vec![] }).collect()
    }

    /// All users the commands can name: agents, then customers.
    pub fn users() -> Vec<String> {
        (0..AGENTS).map(|i| format!("a{i}")).chain((0..CUSTOMERS).map(|i| format!("c{i}"))).collect()
    }

    /// Moves the clock by `step.dt` (or not) and returns its command.
    pub fn command(&mut self, step: Step) -> CsCommand {
        let Step { op, x, y, dt } = step;
        if dt % 3 != 0 {
            self.now += dt;
        }
        self.n += 1;
        let agent = format!("a{}", x % AGENTS);
        let customer = format!("c{}", x % CUSTOMERS);
        let group = GROUPS[y % GROUPS.len()].to_string();
        let pick = |v: &[String]| v.get((x * 7 + y) % v.len().max(1)).cloned().unwrap_or_default();
        let status = [AgentStatus::Online, AgentStatus::Away, AgentStatus::Offline][y % 3];
        match op % OPS {
            0 => CsCommand::PutMember { group, agent, capacity: (y % 4 != 3).then_some(1 + (x as u32 % 3)) },
            1 => CsCommand::Connected { agent },
            2 => CsCommand::Disconnected { agent },
            3 => CsCommand::SetStatus { agent, status },
            4 | 5 => {
                let id = format!("s{}", self.n);
                self.sessions.push(id.clone());
                let first_message = (y % 2 == 0).then(|| text(&format!("help {}", self.n)));
                let context = SessionContext {
                    page: if y % 3 == 0 { String::new() } else { format!("https://shop.example/p/{x}") },
                    user_agent: format!("bot/{y}"),
                };
                CsCommand::Request { customer, group, session_id: id, first_message, context }
            }
            6 => CsCommand::Cancel { customer, group },
            7 => {
                // By the customer, an agent (maybe its own) or an admin.
                let by = if y % 3 == 0 { customer } else { agent };
                CsCommand::End { session_id: pick(&self.sessions), by, admin: y % 5 == 0 }
            }
            8 => {
                let target =
                    if y % 2 == 0 { TransferTarget::Agent(agent.clone()) } else { TransferTarget::Group(group) };
                let note = if x % 2 == 0 { format!("note {}", self.n) } else { String::new() };
                CsCommand::Transfer { session_id: pick(&self.sessions), by: agent, admin: y % 3 != 0, target, note }
            }
            9 => CsCommand::Sweep { grace_ms: GRACE_MS },
            10 => CsCommand::RemoveMember { group, agent },
            11 => CsCommand::SetStatus { agent, status: AgentStatus::Online },
            12 => {
                let customer = (y % 2 == 0).then_some(customer);
                CsCommand::Accept { agent, group, customer }
            }
            13 => CsCommand::Rate {
                session_id: pick(&self.sessions),
                customer,
                score: (y % 6) as u32,
                comment: "ok".repeat(y % 3),
            },
            14 => {
                let id = format!("l{}", self.n);
                self.left.push(id.clone());
                let message = LeftMessage {
                    id,
                    group,
                    customer,
                    content: text("call me"),
                    contact: String::new(),
                    created_ms: self.now,
                    claimed_by: String::new(),
                    claimed_ms: 0,
                };
                CsCommand::LeaveMessage { message }
            }
            15 => CsCommand::Claim { id: pick(&self.left), agent },
            16 => {
                // Every other change names some fields only (the admin API's
                // partial update): the others keep their value.
                let all = [
                    GroupField::Name,
                    GroupField::Policy,
                    GroupField::MaxQueue,
                    GroupField::MaxWaitMs,
                    GroupField::AutoJoin,
                    GroupField::DefaultCapacity,
                ];
                let only = if x % 2 == 0 {
                    Vec::new()
                } else {
                    all.into_iter().filter(|f| (*f as usize + y).is_multiple_of(3)).collect()
                };
                let mut spec = spec(&group, x);
                spec.name = format!("{group} v{x}");
                spec.max_wait_ms += y as u64;
                CsCommand::PutGroup { spec, only }
            }
            _ => CsCommand::DeleteGroup { group },
        }
    }
}

/// The engine as the embedded store runs it, with memory in place of the
/// disk: ended sessions and claimed left messages are set aside after each
/// command and given back when a later command names them.
#[derive(Debug, Clone)]
pub struct MemoryCs {
    pub state: engine::TenantState,
    ended: std::collections::HashMap<String, Session>,
    claimed: std::collections::HashMap<String, LeftMessage>,
}

impl MemoryCs {
    pub fn new(tenant: &str) -> Self {
        Self { state: engine::TenantState::new(tenant), ended: Default::default(), claimed: Default::default() }
    }

    /// Runs one command, as `CsStore::execute` does.
    pub fn execute(&mut self, command: CsCommand, now: u64) -> CsOutcome {
        use engine::{Dirty, Restored, Wanted};
        let restored = match self.state.wanted(&command) {
            Some(Wanted::Session(id)) => self.ended.get(&id).cloned().map(Restored::Session),
            Some(Wanted::LeftMessage(id)) => self.claimed.get(&id).cloned().map(Restored::LeftMessage),
            None => None,
        };
        if let Some(r) = restored {
            self.state.restore(r);
        }
        let out = self.state.apply(command, now);
        for d in self.state.take_dirty() {
            match d {
                Dirty::Session(id) => match self.state.sessions.get(&id) {
                    Some(s) if s.state == SessionState::Ended => {
                        self.ended.insert(id, s.clone());
                    }
                    _ => {}
                },
                Dirty::LeftMessage(id) => match self.state.left.get(&id) {
                    Some(m) if !m.claimed_by.is_empty() => {
                        self.claimed.insert(id, m.clone());
                    }
                    _ => {}
                },
                Dirty::Group(_) | Dirty::Agent(_) => {}
            }
        }
        self.state.evict_finished();
        out
    }

    /// A session, open or ended.
    pub fn session(&self, id: &str) -> Option<Session> {
        self.state.sessions.get(id).or_else(|| self.ended.get(id)).cloned()
    }
}
