//! Storage records to wire messages.

use im_core::pb;
use storage::cs::{AgentStatus, LeftMessage, Session, SessionState, Transferred};

pub fn status_pb(s: AgentStatus) -> pb::AgentStatus {
    match s {
        AgentStatus::Online => pb::AgentStatus::Online,
        AgentStatus::Away => pb::AgentStatus::Away,
        AgentStatus::Offline => pb::AgentStatus::Offline,
    }
}

/// `None` for UNSPECIFIED and unknown values.
pub fn status_from_pb(v: i32) -> Option<AgentStatus> {
    match pb::AgentStatus::try_from(v).ok()? {
        pb::AgentStatus::Online => Some(AgentStatus::Online),
        pb::AgentStatus::Away => Some(AgentStatus::Away),
        pb::AgentStatus::Offline => Some(AgentStatus::Offline),
        pb::AgentStatus::Unspecified => None,
    }
}

pub fn session_pb(s: &Session) -> pb::ServiceSession {
    let state = match s.state {
        SessionState::Waiting => pb::SessionState::Waiting,
        SessionState::Active => pb::SessionState::Active,
        SessionState::Ended => pb::SessionState::Ended,
    };
    pb::ServiceSession {
        session_id: s.id.clone(),
        group: s.group.clone(),
        customer: s.customer.clone(),
        agent: s.agent.clone(),
        conversation_id: s.conversation_id.clone(),
        conversations: s.conversations.clone(),
        state: state as i32,
        created_ms: s.created_ms,
        assigned_ms: s.assigned_ms,
        ended_ms: s.ended_ms,
        ended_by: s.ended_by.clone(),
        end_reason: s.end_reason.clone(),
        score: s.score,
        comment: s.comment.clone(),
        previous_agents: s.previous_agents.clone(),
        page: s.context.page.clone(),
        user_agent: s.context.user_agent.clone(),
        transfer_note: s.transfer_note.clone(),
        queued_ms: s.queued_ms,
    }
}

pub(crate) fn transferred_pb(t: &Transferred) -> pb::SessionTransferred {
    pb::SessionTransferred {
        session: Some(session_pb(&t.session)),
        from_agent: t.from_agent.clone(),
        from_group: t.from_group.clone(),
        reason: t.reason.clone(),
    }
}

pub fn left_pb(m: &LeftMessage) -> pb::LeftMessageInfo {
    pb::LeftMessageInfo {
        id: m.id.clone(),
        group: m.group.clone(),
        customer: m.customer.clone(),
        content: Some(m.content.clone()),
        contact: m.contact.clone(),
        created_ms: m.created_ms,
        claimed_by: m.claimed_by.clone(),
    }
}
