//! Figures of a time range per group and per agent (the supervisor's
//! "today"), computed from the stored ended sessions, the live queues and,
//! for the first response, the conversation itself: nothing is kept in a
//! page's memory, so every supervisor on every node sees the same figures
//! after any reload.

use super::*;
use std::collections::BTreeMap;
use std::sync::Mutex;
use storage::cs::Session;

/// Most ended sessions one summary looks at (newest first); past that the
/// summary says `truncated`.
pub const MAX_REPORT_SESSIONS: usize = 5000;
/// Longest range of one summary.
pub const MAX_REPORT_RANGE_MS: u64 = 31 * 24 * 3600 * 1000;
/// Messages read back per session to find its first reply.
const FIRST_REPLY_SCAN: u32 = 500;
const FIRST_REPLY_PAGE: u32 = 100;
/// First replies of ended sessions remembered (they never change).
const FIRST_REPLY_CACHE: usize = 20_000;

/// Sums that become an average.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mean {
    pub sum: u64,
    pub count: u64,
}

impl Mean {
    fn add(&mut self, v: u64) {
        self.sum = self.sum.saturating_add(v);
        self.count += 1;
    }

    /// The average, `None` without samples.
    pub fn avg(&self) -> Option<u64> {
        (self.count > 0).then(|| self.sum / self.count)
    }

    /// The average with its fraction (ratings: 4.5), `None` without samples.
    pub fn exact_avg(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum as f64 / self.count as f64)
    }
}

/// One group's figures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupFigures {
    pub group: String,
    /// Sessions that ended in the range after an agent had them.
    pub served: u64,
    /// Sessions that ended in the range before any agent had them (the
    /// customer left the queue, or it timed out).
    pub abandoned: u64,
    /// Ended sessions that moved between agents.
    pub transferred: u64,
    /// Waiting in the queue until the first agent, of served sessions.
    pub wait: Mean,
    /// The longest such wait, or the longest current one if longer.
    pub wait_max_ms: u64,
    /// From the first agent's assignment to their first message.
    pub first_response: Mean,
    /// From the first assignment to the end.
    pub handle: Mean,
    /// Ratings (1-5).
    pub csat: Mean,
    /// Waiting now.
    pub waiting_now: u64,
    /// Served now.
    pub active_now: u64,
}

/// One agent's figures (sessions they ended with, or answered first).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentFigures {
    pub agent: String,
    pub served: u64,
    pub first_response: Mean,
    pub handle: Mean,
    pub csat: Mean,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub from_ms: u64,
    pub to_ms: u64,
    /// More than [`MAX_REPORT_SESSIONS`] sessions ended in the range: the
    /// figures cover the newest ones.
    pub truncated: bool,
    pub groups: Vec<GroupFigures>,
    pub agents: Vec<AgentFigures>,
}

/// First replies found, by session id.
#[derive(Default)]
pub(crate) struct FirstReplies(Mutex<HashMap<String, Option<u64>>>);

impl FirstReplies {
    fn get(&self, id: &str) -> Option<Option<u64>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).get(id).copied()
    }

    fn put(&self, id: &str, found: Option<u64>) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= FIRST_REPLY_CACHE {
            map.clear();
        }
        map.insert(id.to_string(), found);
    }
}

impl CsService {
    /// The figures of sessions that ended in `from_ms..to_ms` (0: now),
    /// per group and per agent, with the queues as they are now (admins).
    pub async fn summary(&self, caller: &Caller, from_ms: u64, to_ms: u64) -> Result<Summary, ClientError> {
        require(caller, &[Role::Admin], "the reports")?;
        let now = im_core::now_ms();
        let to_ms = if to_ms == 0 { now.saturating_add(1) } else { to_ms };
        if from_ms >= to_ms {
            return Err(invalid("from must be before to".into()));
        }
        if to_ms - from_ms > MAX_REPORT_RANGE_MS {
            return Err(invalid(format!("a report covers at most {} days", MAX_REPORT_RANGE_MS / 86_400_000)));
        }
        let ended = self.store.ended_sessions(caller.tenant(), from_ms, to_ms, MAX_REPORT_SESSIONS + 1).await?;
        let truncated = ended.len() > MAX_REPORT_SESSIONS;
        let mut groups: BTreeMap<String, GroupFigures> = BTreeMap::new();
        let mut agents: BTreeMap<String, AgentFigures> = BTreeMap::new();
        for view in self.all_group_views(caller).await? {
            let g = groups.entry(view.group.spec.id.clone()).or_default();
            g.waiting_now = view.waiting.len() as u64;
            g.active_now = view.active.len() as u64;
            g.wait_max_ms = view.waiting.iter().map(|s| now.saturating_sub(s.created_ms)).max().unwrap_or(0);
            for a in &view.agents {
                agents.entry(a.id.clone()).or_default();
            }
        }
        for s in ended.iter().take(MAX_REPORT_SESSIONS) {
            let g = groups.entry(s.group.clone()).or_default();
            if s.first_assigned_ms == 0 && s.previous_agents.is_empty() && s.agent.is_empty() {
                g.abandoned += 1;
                continue;
            }
            let first_agent = s.previous_agents.first().unwrap_or(&s.agent).clone();
            let assigned = if s.first_assigned_ms > 0 { s.first_assigned_ms } else { s.assigned_ms };
            let wait = assigned.saturating_sub(s.created_ms);
            let handle = s.ended_ms.saturating_sub(assigned);
            g.served += 1;
            g.transferred += u64::from(!s.previous_agents.is_empty());
            g.wait.add(wait);
            g.wait_max_ms = g.wait_max_ms.max(wait);
            g.handle.add(handle);
            if s.score > 0 {
                g.csat.add(s.score.into());
            }
            let reply = self.first_reply(caller, s, &first_agent, assigned).await;
            if let Some(ms) = reply {
                g.first_response.add(ms);
            }
            let last = agents.entry(s.agent.clone()).or_default();
            last.served += 1;
            last.handle.add(handle);
            if s.score > 0 {
                last.csat.add(s.score.into());
            }
            if let Some(ms) = reply {
                agents.entry(first_agent).or_default().first_response.add(ms);
            }
        }
        let groups = groups.into_iter().map(|(group, f)| GroupFigures { group, ..f }).collect();
        let agents =
            agents.into_iter().filter(|(id, _)| !id.is_empty()).map(|(agent, f)| AgentFigures { agent, ..f }).collect();
        Ok(Summary { from_ms, to_ms, truncated, groups, agents })
    }

    /// How long after `assigned_ms` the session's first agent first wrote to
    /// the customer, read back from the end of their conversation (at most
    /// [`FIRST_REPLY_SCAN`] messages); `None` if they never did.
    async fn first_reply(&self, caller: &Caller, s: &Session, agent: &str, assigned_ms: u64) -> Option<u64> {
        if let Some(found) = self.first_replies.get(&s.id) {
            return found;
        }
        let conversation_id = im_core::conversation_id(caller.tenant(), &s.customer, agent);
        let who = DeviceKey::new(caller.tenant(), caller.user(), "reports");
        let mut before_seq = u64::MAX;
        let mut found = None;
        let mut read = 0;
        // Whether the scan got back to the assignment (else a reply found
        // may not be the first).
        let mut reached = false;
        while read < FIRST_REPLY_SCAN {
            let req = pb::SyncRequest {
                conversation_id: conversation_id.clone(),
                before_seq,
                limit: FIRST_REPLY_PAGE,
                ..Default::default()
            };
            let Ok(page) = self.dispatch.history_as(&who, req, true).await else { return None };
            read += FIRST_REPLY_PAGE;
            let mut older = false;
            for m in page.messages.iter().rev() {
                if m.server_time_ms < assigned_ms {
                    older = true;
                    break;
                }
                if m.from_user == agent && m.server_time_ms <= s.ended_ms {
                    found = Some(m.server_time_ms - assigned_ms);
                }
            }
            match page.messages.first() {
                Some(m) if page.has_more && !older => before_seq = m.seq,
                _ => {
                    reached = true;
                    break;
                }
            }
        }
        let found = found.filter(|_| reached);
        self.first_replies.put(&s.id, found);
        found
    }
}
