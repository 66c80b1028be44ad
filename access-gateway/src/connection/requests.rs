//! The frames a client sends after `Auth`, each answered in the order read.
//!
//! A `Send` is placed in its conversation in frame order (see
//! [`dispatch::SendOrder`]) and stored by a task of its own, whose reply
//! comes back through the mailbox; up to `max_sends_in_flight` are in
//! progress at once. An `Ack` leaves the window at once and goes to the
//! node's ack queue without waiting for the store. History and
//! customer-service requests are answered before the next frame is read
//! (pushes and writes go on meanwhile).

use super::wire::{Incoming, classify, close, error_frame, server_frame_name};
use super::{Conn, reply_error};
use crate::Gateway;
use crate::limits::Source;
use dispatch::Held;
use im_core::DeviceKey;
use im_core::pb::{self, Frame, frame::Body};
use im_core::{CloseCode, Encoding, ErrorCode};
use session_router::Push;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use tracing::Instrument;

use super::wire::Exit;

impl<S> Conn<S> {
    pub(super) fn on_read(&mut self, item: Option<Result<WsMessage, WsError>>, now: Instant) -> Result<(), Exit> {
        self.last_heard = now;
        self.pinged = false;
        match classify(item, self.gw.config.limits.max_frame_bytes) {
            Incoming::Data(encoding, payload) => self.on_data(encoding, &payload),
            Incoming::Heard => Ok(()),
            Incoming::Exit(Exit::Close(code @ CloseCode::TooLarge, reason)) => {
                self.emit(&error_frame(0, ErrorCode::TooLarge, reason.clone()))?;
                Err(Exit::Close(code, reason))
            }
            Incoming::Exit(Exit::Close(code, reason)) => {
                self.emit(&error_frame(0, ErrorCode::BadFrame, reason.clone()))?;
                Err(Exit::Close(code, reason))
            }
            Incoming::Exit(exit) => Err(exit),
        }
    }

    fn on_data(&mut self, encoding: Encoding, payload: &[u8]) -> Result<(), Exit> {
        metrics::counter!("dongdong_frames_in_total").increment(1);
        let frame = match im_core::decode_frame(encoding, payload) {
            Ok(f) => f,
            Err(e) => {
                if self.rate_check(0, false)? {
                    self.emit(&error_frame(0, ErrorCode::BadFrame, e.to_string()))?;
                }
                return Ok(());
            }
        };
        let req_id = frame.req_id;
        // Acks of deliveries this connection made are the client keeping up,
        // not load it creates: they never count against the rate limit.
        let acks_own_deliveries = matches!(&frame.body, Some(Body::Ack(a))
            if !a.msg_ids.is_empty() && self.window.has_all(a.msg_ids.iter().map(String::as_str)));
        let is_send = matches!(&frame.body, Some(Body::Send(_)));
        if !acks_own_deliveries && !self.rate_check(req_id, is_send)? {
            return Ok(());
        }
        let Some(body) = frame.body else {
            return self.emit(&error_frame(req_id, ErrorCode::BadFrame, "frame has no body"));
        };
        match body {
            Body::Send(send) => self.on_send(req_id, send),
            Body::Ack(ack) => self.on_ack(req_id, ack),
            Body::MarkRead(req) => self.on_mark_read(req_id, req),
            Body::Typing(t) => self.on_typing(req_id, t),
            Body::PresenceSubscribe(p) => self.on_presence_subscribe(req_id, p),
            Body::PresenceUnsubscribe(p) => self.on_presence_unsubscribe(p),
            Body::Ping(_) => {
                let pong = pb::Pong { server_time_ms: im_core::now_ms() };
                self.emit(&Frame { req_id, body: Some(Body::Pong(pong)) })
            }
            Body::Auth(_) => self.emit(&error_frame(req_id, ErrorCode::InvalidArgument, "already authenticated")),
            body @ (Body::SyncRequest(_)
            | Body::ConversationsRequest(_)
            | Body::SearchRequest(_)
            | Body::Recall(_)
            | Body::RequestService(_)
            | Body::CancelRequest(_)
            | Body::LeaveMessage(_)
            | Body::EndSession(_)
            | Body::Rate(_)
            | Body::SetStatus(_)
            | Body::AcceptSession(_)
            | Body::TransferSession(_)
            | Body::CsStateRequest(_)
            | Body::ClaimLeftMessage(_)) => {
                self.answering = Some(self.answer(req_id, body));
                Ok(())
            }
            other => {
                let message = format!("{} is a server-to-client frame", server_frame_name(&other));
                self.emit(&error_frame(req_id, ErrorCode::BadFrame, message))
            }
        }
    }

    /// The answer to a request that is answered before the next frame is
    /// read: history, the conversation list, recall, customer service.
    fn answer(&self, req_id: u64, body: Body) -> super::BoxFuture<Frame> {
        let (gw, device, role, caller) = (self.gw.clone(), self.device.clone(), self.role, self.caller());
        Box::pin(async move {
            let answer = match body {
                Body::SyncRequest(req) => history(&gw, &device, caller, req).await.map(Body::HistoryPage),
                Body::ConversationsRequest(req) => {
                    gw.dispatch.conversations(&device, req).await.map(Body::ConversationPage)
                }
                Body::Recall(req) => gw.dispatch.recall(&device, role, req).await.map(Body::Recalled),
                Body::SearchRequest(req) => gw.dispatch.search(&device, role, req).await.map(Body::SearchPage),
                cs => gw.cs.handle(&caller, cs).await,
            };
            match answer {
                Ok(body) => Frame { req_id, body: Some(body) },
                Err(e) => reply_error(req_id, &e),
            }
        })
    }

    /// Applies the rate limits (this connection's, its user's and its
    /// tenant's buckets; the send buckets too for a `Send`). Returns whether
    /// the frame may be processed; a client that keeps flooding is closed.
    fn rate_check(&mut self, req_id: u64, is_send: bool) -> Result<bool, Exit> {
        let source = Source { conn_id: self.conn_id, tenant: &self.device.tenant, user: &self.device.user };
        let refused = match self.gw.limits.check_frame(source, is_send) {
            Ok(()) => {
                self.rejected_in_row = 0;
                return Ok(true);
            }
            Err(r) => r,
        };
        self.rejected_in_row += 1;
        if self.rejected_in_row > self.gw.limits.values().rate_burst {
            metrics::counter!("dongdong_rate_limit_closes_total").increment(1);
            return Err(close(CloseCode::PolicyViolation, "rate limit exceeded persistently"));
        }
        // Not `emit`: error replies to a flood that fill the queue must not
        // make the flooder a slow consumer of its own making.
        let frame = error_frame(req_id, ErrorCode::RateLimited, refused.message);
        let _ = self.outbox.push(super::encode(self.encoding, &frame));
        Ok(false)
    }

    /// Takes one of the `max_sends_in_flight` slots of requests answered
    /// through the mailbox (sends and marks); when none is free, answers
    /// RATE_LIMITED (saying `what` is waiting) and returns false.
    fn take_reply_slot(&mut self, req_id: u64, what: &str) -> Result<bool, Exit> {
        let max = self.gw.config.limits.max_sends_in_flight.max(1);
        if self.sends_in_flight as usize >= max {
            let message = format!("more than {max} {what}");
            self.emit(&error_frame(req_id, ErrorCode::RateLimited, message))?;
            return Ok(false);
        }
        self.sends_in_flight += 1;
        Ok(true)
    }

    fn on_send(&mut self, req_id: u64, send: pb::Send) -> Result<(), Exit> {
        if !self.take_reply_slot(req_id, "sends awaiting their ack")? {
            return Ok(());
        }
        let turn = self.order.next_turn();
        let mailbox = self.mailbox.clone();
        self.gw.dispatch.spawn_send(&self.device, send, turn, move |result| {
            mail_reply(&mailbox, req_id, result.map(Body::SendAck));
        });
        Ok(())
    }

    /// Like a send: answered through the mailbox by a task of its own, so
    /// that a client marking each message read as it arrives never stops
    /// the connection reading (marks of one conversation may complete in
    /// any order: the pointer only moves forward). Counts against
    /// `max_sends_in_flight`.
    fn on_mark_read(&mut self, req_id: u64, req: pb::MarkRead) -> Result<(), Exit> {
        if !self.take_reply_slot(req_id, "sends and marks awaiting their answer")? {
            return Ok(());
        }
        let (dispatch, device, mailbox) = (self.gw.dispatch.clone(), self.device.clone(), self.mailbox.clone());
        tokio::spawn(
            async move { mail_reply(&mailbox, req_id, dispatch.mark_read(&device, req).await.map(Body::ReadReceipt)) }
                .in_current_span(),
        );
        Ok(())
    }

    fn on_ack(&mut self, req_id: u64, ack: pb::Ack) -> Result<(), Exit> {
        if let Err(e) = self.gw.dispatch.check_ack(&ack) {
            return self.emit(&reply_error(req_id, &e));
        }
        self.window.on_ack(ack.msg_ids.iter().map(String::as_str));
        // Event ids travel with the msg_ids; the ack queue tells them apart.
        let mut msg_ids = ack.msg_ids;
        msg_ids.extend(ack.event_ids);
        if msg_ids.is_empty() {
            return Ok(());
        }
        // Ids the window did not have are still sent on: they may be
        // deliveries of an earlier connection, pending in the store.
        if let Some(held) = &mut self.held_acks {
            // Behind acks already held: they keep their order.
            held.backlog.hold(msg_ids);
        } else if let Err(Held(_, ids)) = self.gw.dispatch.acks().try_ack(self.device.clone(), msg_ids) {
            metrics::counter!("dongdong_ack_queue_full_total").increment(1);
            let backlog = crate::backlog::AckBacklog::new(ids);
            self.held_acks = Some(Box::new(super::HeldAcks { backlog, queuing: None }));
        }
        Ok(())
    }
}

/// Hands a request's answer (or its Error) to the connection's mailbox;
/// refused only when the connection is gone.
fn mail_reply(mailbox: &session_router::Mailbox, req_id: u64, result: dispatch::Result<Body>) {
    let reply = match result {
        Ok(body) => Frame { req_id, body: Some(body) },
        Err(e) => reply_error(req_id, &e),
    };
    let _ = mailbox.push(Push::Reply(Box::new(reply)));
}

/// A history page: of a conversation the user is a member of, or, with
/// `session_id`, of a conversation of a service session they are part of.
async fn history(
    gw: &Gateway,
    device: &DeviceKey,
    caller: cs_queue::Caller,
    req: pb::SyncRequest,
) -> dispatch::Result<pb::HistoryPage> {
    if req.session_id.is_empty() {
        return gw.dispatch.history(device, req).await;
    }
    if req.conversation_id.is_empty() {
        return Err(im_core::ClientError::new(
            ErrorCode::InvalidArgument,
            "with session_id, set conversation_id (one of the session's conversations)",
        ));
    }
    gw.cs.may_read(&caller, &req.session_id, &req.conversation_id).await?;
    gw.dispatch.history_as(device, req, true).await
}
