//! The customer-service frames of the WebSocket protocol: one function per
//! frame, each checking the caller's role and the input, running the
//! command and building the answer.

use super::*;
use im_core::ids::validate_uuid;

impl CsService {
    /// Answers one customer-service frame.
    pub async fn handle(&self, caller: &Caller, body: Body) -> Result<Body, ClientError> {
        match body {
            Body::RequestService(r) => self.request_service(caller, r).await,
            Body::CancelRequest(r) => self.cancel_request(caller, r).await,
            Body::LeaveMessage(r) => self.leave_message(caller, r).await,
            Body::EndSession(r) => self.end_session(caller, r).await,
            Body::Rate(r) => self.rate(caller, r).await,
            Body::SetStatus(r) => self.set_status(caller, r).await,
            Body::AcceptSession(r) => self.accept_session(caller, r).await,
            Body::TransferSession(r) => self.transfer_session(caller, r).await,
            Body::CsStateRequest(_) => Ok(Body::CsState(self.state(caller).await?)),
            Body::ClaimLeftMessage(r) => self.claim_left_message(caller, r).await,
            _ => Err(err(ErrorCode::BadFrame, "not a customer-service request")),
        }
    }

    async fn request_service(&self, caller: &Caller, r: pb::RequestService) -> Result<Body, ClientError> {
        require(caller, &[Role::Customer], "RequestService")?;
        validate_id("group", &r.group).map_err(invalid)?;
        if let Some(c) = &r.first_message {
            self.dispatch.validate_content(c)?;
        }
        at_most("page", &r.page, MAX_PAGE_BYTES)?;
        at_most("user_agent", &r.user_agent, MAX_USER_AGENT_BYTES)?;
        let group = r.group.clone();
        let c = CsCommand::Request {
            customer: caller.user.clone(),
            group: r.group,
            session_id: im_core::new_msg_id(),
            first_message: r.first_message,
            context: storage::cs::SessionContext { page: r.page, user_agent: r.user_agent },
        };
        let outcome = self.execute(&caller.tenant, c).await?;
        match outcome.reply {
            Ok(CsReply::Session { session, position }) if session.state == SessionState::Waiting => {
                let snapshot = match outcome.queues.iter().find(|q| q.group == group) {
                    Some(q) => Some(q.clone()),
                    None => self.store.group_view(&caller.tenant, &group).await?.map(|v| v.queue),
                };
                let estimated_wait_s = snapshot.map_or(0, |q| q.estimated_wait_s(position));
                Ok(Body::QueueUpdate(pb::QueueUpdate { session_id: session.id, group, position, estimated_wait_s }))
            }
            Ok(CsReply::Session { session, .. }) => {
                Ok(Body::SessionAssigned(pb::SessionAssigned { session: Some(session_pb(&session)) }))
            }
            Ok(_) => Err(unexpected()),
            Err(e @ (CsError::NoAgentOnline | CsError::QueueFull)) => {
                let reason = if e == CsError::QueueFull {
                    pb::leave_message_offer::Reason::QueueFull
                } else {
                    pb::leave_message_offer::Reason::NoAgentOnline
                };
                metrics::counter!("dongdong_cs_turned_away_total", "reason" => reason.as_str_name()).increment(1);
                Ok(Body::LeaveMessageOffer(pb::LeaveMessageOffer {
                    group,
                    reason: reason as i32,
                    message: format!("{e}; you can leave a message"),
                }))
            }
            Err(e) => Err(cs_error(&e)),
        }
    }

    async fn cancel_request(&self, caller: &Caller, r: pb::CancelRequest) -> Result<Body, ClientError> {
        require(caller, &[Role::Customer], "CancelRequest")?;
        validate_id("group", &r.group).map_err(invalid)?;
        self.run(caller, CsCommand::Cancel { customer: caller.user.clone(), group: r.group }).await?;
        Ok(Body::CsOk(pb::CsOk::default()))
    }

    async fn leave_message(&self, caller: &Caller, r: pb::LeaveMessage) -> Result<Body, ClientError> {
        require(caller, &[Role::Customer], "LeaveMessage")?;
        validate_id("group", &r.group).map_err(invalid)?;
        let content = r.content.ok_or_else(|| invalid("content is required".into()))?;
        self.dispatch.validate_content(&content)?;
        at_most("contact", &r.contact, MAX_CONTACT_BYTES)?;
        let message = LeftMessage {
            id: im_core::new_msg_id(),
            group: r.group.clone(),
            customer: caller.user.clone(),
            content,
            contact: r.contact,
            created_ms: im_core::now_ms(),
            claimed_by: String::new(),
            claimed_ms: 0,
        };
        let CsReply::LeftMessage { message } = self.run(caller, CsCommand::LeaveMessage { message }).await? else {
            return Err(unexpected());
        };
        metrics::counter!("dongdong_cs_left_messages_total").increment(1);
        self.notify_group_agents(&caller.tenant, &r.group, vec![message.clone()]).await?;
        Ok(Body::CsOk(pb::CsOk { id: message.id }))
    }

    async fn end_session(&self, caller: &Caller, r: pb::EndSession) -> Result<Body, ClientError> {
        validate_uuid("session_id", &r.session_id).map_err(invalid)?;
        let c = CsCommand::End { session_id: r.session_id, by: caller.user.clone(), admin: caller.role == Role::Admin };
        let CsReply::Session { session, .. } = self.run(caller, c).await? else { return Err(unexpected()) };
        Ok(Body::SessionEnded(pb::SessionEnded { session: Some(session_pb(&session)) }))
    }

    async fn rate(&self, caller: &Caller, r: pb::Rate) -> Result<Body, ClientError> {
        require(caller, &[Role::Customer], "Rate")?;
        validate_uuid("session_id", &r.session_id).map_err(invalid)?;
        let customer = caller.user.clone();
        self.run(caller, CsCommand::Rate { session_id: r.session_id, customer, score: r.score, comment: r.comment })
            .await?;
        Ok(Body::CsOk(pb::CsOk::default()))
    }

    async fn set_status(&self, caller: &Caller, r: pb::SetStatus) -> Result<Body, ClientError> {
        require(caller, &[Role::Agent], "SetStatus")?;
        let status =
            status_from_pb(r.status).ok_or_else(|| invalid("status must be ONLINE, AWAY or OFFLINE".into()))?;
        Ok(Body::CsState(self.apply_status(caller, &caller.user, status).await?))
    }

    async fn accept_session(&self, caller: &Caller, r: pb::AcceptSession) -> Result<Body, ClientError> {
        require(caller, &[Role::Agent], "AcceptSession")?;
        validate_id("group", &r.group).map_err(invalid)?;
        let customer = (!r.customer.is_empty()).then_some(r.customer);
        let c = CsCommand::Accept { agent: caller.user.clone(), group: r.group, customer };
        let CsReply::Session { session, .. } = self.run(caller, c).await? else { return Err(unexpected()) };
        Ok(Body::SessionAssigned(pb::SessionAssigned { session: Some(session_pb(&session)) }))
    }

    async fn transfer_session(&self, caller: &Caller, r: pb::TransferSession) -> Result<Body, ClientError> {
        require(caller, &[Role::Agent, Role::Admin], "TransferSession")?;
        validate_uuid("session_id", &r.session_id).map_err(invalid)?;
        let target = match r.target {
            Some(pb::transfer_session::Target::ToAgent(a)) => {
                validate_id("to_agent", &a).map_err(invalid)?;
                TransferTarget::Agent(a)
            }
            Some(pb::transfer_session::Target::ToGroup(g)) => {
                validate_id("to_group", &g).map_err(invalid)?;
                TransferTarget::Group(g)
            }
            None => return Err(invalid("set to_agent or to_group".into())),
        };
        at_most("note", &r.note, MAX_TRANSFER_NOTE_BYTES)?;
        let admin = caller.role == Role::Admin;
        let c = CsCommand::Transfer { session_id: r.session_id, by: caller.user.clone(), admin, target, note: r.note };
        let outcome = self.execute(&caller.tenant, c).await?;
        outcome.reply.map_err(|e| cs_error(&e))?;
        let t = outcome
            .transferred
            .into_iter()
            .find(|t| t.reason == "transfer")
            .ok_or_else(|| err(ErrorCode::Internal, "transfer reported nothing"))?;
        Ok(Body::SessionTransferred(convert::transferred_pb(&t)))
    }

    async fn claim_left_message(&self, caller: &Caller, r: pb::ClaimLeftMessage) -> Result<Body, ClientError> {
        require(caller, &[Role::Agent], "ClaimLeftMessage")?;
        validate_uuid("left_message_id", &r.left_message_id).map_err(invalid)?;
        let c = CsCommand::Claim { id: r.left_message_id, agent: caller.user.clone() };
        let CsReply::LeftMessage { message } = self.run(caller, c).await? else { return Err(unexpected()) };
        self.post_left_message(&caller.tenant, &message).await?;
        Ok(Body::LeftMessageNotice(pb::LeftMessageNotice { left_messages: vec![convert::left_pb(&message)] }))
    }
}

/// `INVALID_ARGUMENT` when the field is longer than `max` bytes.
fn at_most(field: &str, value: &str, max: usize) -> Result<(), ClientError> {
    if value.len() > max {
        return Err(invalid(format!("{field} is longer than {max} bytes")));
    }
    Ok(())
}
