//! Read pointers, the conversation list and recall: checks, storage, and
//! the pushes that tell the other devices.

use super::{Dispatcher, Result, invalid};
use im_core::pb::{self, Frame, frame::Body};
use im_core::{ClientError, ErrorCode, Role, ids::validate_conversation_id, ids::validate_uuid};
use std::sync::Arc;
use storage::{ConversationCursor, DeviceKey, MarkOutcome, MarkRead};

/// Conversation list page size when the client asks for 0, and the largest.
pub const CONVERSATIONS_DEFAULT: usize = 20;
pub const CONVERSATIONS_MAX: usize = 100;

impl Dispatcher {
    /// Moves the reader's pointer; when it moved, pushes the receipt to the
    /// peer's devices and the reader's other devices (it is also pending
    /// for them). Answers with the pointer as it is now.
    pub async fn mark_read(&self, reader: &DeviceKey, req: pb::MarkRead) -> Result<pb::ReadReceipt> {
        if req.up_to_seq == 0 {
            return Err(invalid("up_to_seq must be at least 1".into()));
        }
        validate_conversation_id("conversation_id", &req.conversation_id).map_err(invalid)?;
        let read =
            MarkRead { reader: reader.clone(), conversation_id: req.conversation_id.clone(), up_to_seq: req.up_to_seq };
        let mark = match self.backends.messages.mark_read(read).await? {
            MarkOutcome::Marked(mark) => mark,
            MarkOutcome::NotFound => return Err(ClientError::new(ErrorCode::NotFound, "no such conversation")),
            MarkOutcome::NotMember => {
                return Err(ClientError::new(ErrorCode::Forbidden, "not a member of this conversation"));
            }
        };
        if mark.moved {
            metrics::counter!("dongdong_read_receipts_total").increment(1);
            let frame = Arc::new(storage::receipt_frame(&req.conversation_id, &reader.user, mark.read_seq));
            self.router.notify_users(&reader.tenant, &[&mark.peer, &reader.user], frame, Some(reader)).await;
        }
        Ok(pb::ReadReceipt {
            conversation_id: req.conversation_id,
            reader: reader.user.clone(),
            up_to_seq: mark.read_seq,
            event_id: String::new(),
        })
    }

    /// A page of the caller's conversations, most recently active first.
    pub async fn conversations(&self, who: &DeviceKey, req: pb::ConversationsRequest) -> Result<pb::ConversationPage> {
        let cursor = match req.cursor.as_str() {
            "" => None,
            c => Some(
                ConversationCursor::parse(c)
                    .ok_or_else(|| invalid("cursor is not a next_cursor this server gave".into()))?,
            ),
        };
        let limit = match req.limit as usize {
            0 => CONVERSATIONS_DEFAULT,
            n => n.min(CONVERSATIONS_MAX),
        };
        let page = self.backends.messages.conversations(&who.tenant, &who.user, cursor.as_ref(), limit).await?;
        Ok(pb::ConversationPage { items: page.items, next_cursor: page.next.map(|c| c.encode()).unwrap_or_default() })
    }

    /// Recalls a message: the sender within the recall window, an admin at
    /// any time. Pushes `Recalled` to every other device of both members
    /// (it is also pending for them); recalling again answers the same.
    pub async fn recall(&self, who: &DeviceKey, role: Role, req: pb::Recall) -> Result<pb::Recalled> {
        validate_uuid("msg_id", &req.msg_id).map_err(invalid)?;
        let not_found = || ClientError::new(ErrorCode::NotFound, "no such message");
        let message = self.backends.messages.get_by_id(&who.tenant, &req.msg_id).await?.ok_or_else(not_found)?;
        let member = message.from_user == who.user || message.to_user == who.user;
        if role != Role::Admin {
            if !member {
                return Err(not_found());
            }
            // Recalling again answers the same, whoever asks and whenever.
            if message.recalled_by.is_empty() {
                if message.from_user != who.user {
                    return Err(ClientError::new(
                        ErrorCode::Forbidden,
                        "only the sender (or an admin) may recall a message",
                    ));
                }
                let window = self.limits.im.recall_window;
                let age_ms = im_core::now_ms().saturating_sub(message.server_time_ms);
                if u128::from(age_ms) > window.as_millis() {
                    let window = humantime::format_duration(window);
                    let message = format!("messages can be recalled for {window} after sending");
                    return Err(ClientError::new(ErrorCode::TooLate, message));
                }
            }
        }
        // An upload the message carried goes with it (after the recall).
        let file_id = match message.content.as_ref().and_then(|c| c.kind.as_ref()) {
            Some(pb::content::Kind::Image(i)) if !i.file_id.is_empty() => Some(i.file_id.clone()),
            Some(pb::content::Kind::File(f)) if !f.file_id.is_empty() => Some(f.file_id.clone()),
            _ => None,
        };
        let outcome = self.backends.messages.recall(&who.tenant, &req.msg_id, who).await?.ok_or_else(not_found)?;
        if let Some(file_id) = file_id.filter(|_| outcome.fresh)
            && let Err(e) = self.backends.files.delete_file(&who.tenant, &file_id).await
        {
            // The message is recalled; the file stays until retention.
            tracing::warn!(error = %e, file_id, "cannot delete the file of a recalled message");
        }
        let mut recalled = match storage::recalled_frame(&outcome.message).body {
            Some(Body::Recalled(r)) => r,
            _ => return Err(ClientError::new(ErrorCode::Internal, "a recall without its frame")),
        };
        if outcome.fresh {
            metrics::counter!("dongdong_recalls_total").increment(1);
            if let Some(indexer) = self.indexer() {
                indexer.remove(&who.tenant, &req.msg_id);
            }
            let m = &outcome.message;
            let frame = Arc::new(Frame { req_id: 0, body: Some(Body::Recalled(recalled.clone())) });
            self.router.notify_users(&who.tenant, &[&m.from_user, &m.to_user], frame, Some(who)).await;
            // The other member, if they have no device connected.
            let other = if m.from_user == who.user { &m.to_user } else { &m.from_user };
            if other != &who.user && !self.router.is_connected(&who.tenant, other).await.unwrap_or(true) {
                self.push_offline(&who.tenant, m, other, "recall");
            }
        }
        recalled.event_id.clear();
        Ok(recalled)
    }
}
