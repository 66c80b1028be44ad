//! Presence subscriptions of a connection: the router keeps who watches
//! whom and pushes changes; here the frames are checked and answered.

use super::Conn;
use super::wire::{Exit, error_frame};
use im_core::ErrorCode;
use im_core::ids::validate_id;
use im_core::pb::{self, Frame, frame::Body};
use session_router::{Push, WatchError};

impl<S> Conn<S> {
    pub(super) fn on_presence_subscribe(&mut self, req_id: u64, s: pb::PresenceSubscribe) -> Result<(), Exit> {
        let max = self.gw.config.limits.max_presence_subscriptions;
        if s.users.is_empty() || s.users.len() > max {
            let message = format!("name 1 to {max} users");
            return self.emit(&error_frame(req_id, ErrorCode::InvalidArgument, message));
        }
        if let Some(Err(e)) = s.users.iter().map(|u| validate_id("users", u)).find(Result::is_err) {
            return self.emit(&error_frame(req_id, ErrorCode::InvalidArgument, e));
        }
        self.watch(req_id, s.users)
    }

    /// Watches `users` and answers with their current presence.
    pub(super) fn watch(&mut self, req_id: u64, users: Vec<String>) -> Result<(), Exit> {
        let max = self.gw.config.limits.max_presence_subscriptions;
        let router = self.gw.router.clone();
        // Watching starts now, in frame order (an unsubscribe read next
        // undoes it); the answer comes through the mailbox, one update per
        // user.
        match router.watch(self.conn_id, &self.device.tenant, &users, max) {
            Ok(()) => {}
            Err(e @ WatchError::TooMany(_)) => {
                return self.emit(&error_frame(req_id, ErrorCode::TooLarge, e.to_string()));
            }
            Err(WatchError::NoConnection) => return Ok(()),
            Err(WatchError::Storage(e)) => {
                return self.emit(&error_frame(req_id, ErrorCode::Unavailable, e.to_string()));
            }
        }
        let (mailbox, tenant) = (self.mailbox.clone(), self.device.tenant.clone());
        tokio::spawn(async move {
            let replies = match router.presence_now(&tenant, &users).await {
                Ok(updates) => {
                    updates.into_iter().map(|u| Frame { req_id, body: Some(Body::PresenceUpdate(u)) }).collect()
                }
                Err(e) => vec![error_frame(req_id, ErrorCode::Unavailable, e.to_string())],
            };
            // Not `Reply`: those count against the connection's sends in
            // flight, which a subscription never took.
            for r in replies {
                let _ = mailbox.push(Push::Event(std::sync::Arc::new(r)));
            }
        });
        Ok(())
    }

    pub(super) fn on_presence_unsubscribe(&mut self, u: pb::PresenceUnsubscribe) -> Result<(), Exit> {
        self.gw.router.unwatch(self.conn_id, &u.users);
        Ok(())
    }
}
