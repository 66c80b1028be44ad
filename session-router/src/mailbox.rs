//! A connection's inbox: what the router pushes to it, the replies its own
//! send tasks complete, and the requests to close or to replay. One small
//! allocation per connection; the queue allocates only while something is
//! queued and is released when a burst has drained.

use im_core::CloseCode;
use im_core::pb::{Frame, Message};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

/// Why a connection is being closed from outside its own task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KickReason {
    pub code: CloseCode,
    pub message: std::borrow::Cow<'static, str>,
}

/// What the router hands a connection.
#[derive(Debug, Clone, PartialEq)]
pub enum Push {
    /// A stored message: pending for the device until it acks.
    Message(Arc<Message>),
    /// A notification frame (customer-service events): written as is, not
    /// kept pending. Its state can always be read again (CsStateRequest).
    Event(Arc<Frame>),
    /// The answer to one of the connection's own requests, completed by a
    /// task of its own (a `SendAck` or its `Error`). Never refused: the
    /// connection bounds its requests in progress.
    Reply(Box<Frame>),
}

/// What a connection takes out of its mailbox, most urgent first.
#[derive(Debug, PartialEq)]
pub enum Mail {
    /// Close with this reason; nothing queued matters any more.
    Kicked(KickReason),
    /// Pushes may have been lost: replay the pending set.
    Resync,
    Push(Push),
}

/// Why a push was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The queue was full: the connection has been kicked as a slow consumer.
    Full,
    /// The connection is closing or closed.
    Closed,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Push>,
    kicked: Option<KickReason>,
    resync: bool,
    /// The connection stopped reading its mailbox.
    closed: bool,
    waker: Option<Waker>,
}

/// See the module docs. Shared by the router and the connection's task.
#[derive(Debug)]
pub struct Mailbox {
    state: Mutex<State>,
    capacity: usize,
}

/// A queue that grew past this many slots is released once it drains.
const KEEP_SLOTS: usize = 16;

impl Mailbox {
    /// A mailbox holding at most `capacity` pushed messages and events.
    pub fn new(capacity: usize) -> Self {
        Self { state: Mutex::new(State::default()), capacity: capacity.max(1) }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing here panics while holding the lock; a poisoned state is
        // still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wake(mut state: MutexGuard<'_, State>) {
        let waker = state.waker.take();
        drop(state);
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Queues a push without waiting. A full queue kicks the connection as
    /// a slow consumer: what it missed stays pending.
    pub fn push(&self, push: Push) -> Result<(), Refused> {
        let mut state = self.lock();
        if state.closed || state.kicked.is_some() {
            return Err(Refused::Closed);
        }
        if state.queue.len() >= self.capacity && !matches!(push, Push::Reply(_)) {
            state.kicked = Some(KickReason {
                code: CloseCode::SlowConsumer,
                message: "delivery queue full: the client reads too slowly".into(),
            });
            Self::wake(state);
            return Err(Refused::Full);
        }
        state.queue.push_back(push);
        Self::wake(state);
        Ok(())
    }

    /// Asks the connection to close; the first reason given wins.
    pub fn kick(&self, code: CloseCode, message: impl Into<std::borrow::Cow<'static, str>>) {
        let mut state = self.lock();
        if state.kicked.is_none() {
            state.kicked = Some(KickReason { code, message: message.into() });
        }
        Self::wake(state);
    }

    /// The reason the connection was kicked, if it was.
    pub fn reason(&self) -> Option<KickReason> {
        self.lock().kicked.clone()
    }

    /// Asks the connection to replay its pending set again: pushes meant for
    /// it may have been lost.
    pub fn request_resync(&self) {
        let mut state = self.lock();
        state.resync = true;
        Self::wake(state);
    }

    /// The next piece of mail, or `Pending` (waking the task when some comes).
    pub fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Mail> {
        let mut state = self.lock();
        if let Some(reason) = state.kicked.clone() {
            return Poll::Ready(Mail::Kicked(reason));
        }
        if std::mem::take(&mut state.resync) {
            return Poll::Ready(Mail::Resync);
        }
        if let Some(push) = state.queue.pop_front() {
            if state.queue.is_empty() && state.queue.capacity() > KEEP_SLOTS {
                state.queue = VecDeque::new();
            }
            return Poll::Ready(Mail::Push(push));
        }
        if !state.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            state.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// The connection stops reading: later pushes are refused, and what is
    /// queued is dropped (it is pending in storage).
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.queue = VecDeque::new();
        state.waker = None;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    fn event() -> Push {
        Push::Event(Arc::new(Frame::default()))
    }

    #[tokio::test]
    async fn kick_comes_first_then_resync_then_pushes_in_order() {
        let m = Mailbox::new(4);
        m.push(Push::Reply(Box::new(Frame { req_id: 1, body: None }))).unwrap();
        m.push(Push::Reply(Box::new(Frame { req_id: 2, body: None }))).unwrap();
        m.request_resync();
        assert_eq!(poll_fn(|cx| m.poll_recv(cx)).await, Mail::Resync);
        for id in [1, 2] {
            assert_eq!(
                poll_fn(|cx| m.poll_recv(cx)).await,
                Mail::Push(Push::Reply(Box::new(Frame { req_id: id, body: None })))
            );
        }
        m.kick(CloseCode::Replaced, "replaced");
        m.kick(CloseCode::SlowConsumer, "later reasons lose");
        assert!(matches!(
            poll_fn(|cx| m.poll_recv(cx)).await,
            Mail::Kicked(KickReason { code: CloseCode::Replaced, .. })
        ));
        assert_eq!(m.push(event()), Err(Refused::Closed));
    }

    #[tokio::test]
    async fn a_full_queue_kicks_but_replies_always_fit() {
        let m = Mailbox::new(2);
        m.push(event()).unwrap();
        m.push(event()).unwrap();
        assert_eq!(m.push(event()), Err(Refused::Full));
        assert_eq!(m.reason().unwrap().code, CloseCode::SlowConsumer);
        let m = Mailbox::new(1);
        m.push(event()).unwrap();
        m.push(Push::Reply(Box::default())).unwrap();
    }

    #[tokio::test]
    async fn a_waiting_task_is_woken_by_a_push() {
        let m = Arc::new(Mailbox::new(4));
        let reader = {
            let m = m.clone();
            tokio::spawn(async move { poll_fn(|cx| m.poll_recv(cx)).await })
        };
        tokio::task::yield_now().await;
        m.push(event()).unwrap();
        assert_eq!(reader.await.unwrap(), Mail::Push(event()));
    }

    #[test]
    fn a_drained_burst_releases_its_queue() {
        let m = Mailbox::new(1000);
        for _ in 0..100 {
            m.push(event()).unwrap();
        }
        let mut cx = Context::from_waker(Waker::noop());
        while m.poll_recv(&mut cx).is_ready() {}
        assert_eq!(m.lock().queue.capacity(), 0);
        m.close();
        assert_eq!(m.push(event()), Err(Refused::Closed));
    }
}
