//! What a connection has to write, on its way into the socket.
//!
//! Frames are queued here and fed into the WebSocket's own write buffer by
//! the connection's task whenever it polls; the buffer goes to the socket
//! once it passes `io_buffer_bytes`, and everything is flushed when the
//! task has nothing else to do. So a burst costs one write, and no second
//! task is needed. The queue is bounded: a client that does not read is a
//! slow consumer. It allocates only while frames wait, and a drained burst
//! gives its memory back.

use futures_util::{Sink, SinkExt};
use std::collections::VecDeque;
use std::task::{Context, Poll, ready};
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};

/// A queue that grew past this many slots is released once it drains.
const KEEP_SLOTS: usize = 8;

pub(crate) struct Outbox {
    queue: VecDeque<WsMessage>,
    capacity: u32,
    /// Frames were fed to the socket since the last flush.
    unflushed: bool,
}

impl Outbox {
    pub(crate) fn new(capacity: usize) -> Self {
        Self { queue: VecDeque::new(), capacity: capacity.clamp(4, u32::MAX as usize) as u32, unflushed: false }
    }

    /// Queues `message`; false when the queue is full (a slow consumer).
    #[must_use]
    pub(crate) fn push(&mut self, message: WsMessage) -> bool {
        if self.queue.len() >= self.capacity as usize {
            return false;
        }
        self.queue.push_back(message);
        true
    }

    /// Frames that still fit.
    pub(crate) fn room(&self) -> usize {
        (self.capacity as usize).saturating_sub(self.queue.len())
    }

    /// Gives the queue's memory back if nothing waits in it.
    pub(crate) fn release_if_empty(&mut self) {
        if self.queue.is_empty() && self.queue.capacity() > 0 {
            self.queue = VecDeque::new();
        }
    }

    /// Drops everything queued (the client is not reading it).
    pub(crate) fn clear(&mut self) {
        self.queue = VecDeque::new();
    }

    /// Feeds queued frames into the socket's write buffer while it takes them.
    pub(crate) fn poll_feed<S>(&mut self, cx: &mut Context<'_>, sink: &mut S) -> Poll<Result<(), WsError>>
    where
        S: Sink<WsMessage, Error = WsError> + Unpin,
    {
        while !self.queue.is_empty() {
            ready!(sink.poll_ready_unpin(cx))?;
            if let Some(message) = self.queue.pop_front() {
                sink.start_send_unpin(message)?;
                self.unflushed = true;
            }
        }
        if self.queue.capacity() > KEEP_SLOTS {
            self.queue = VecDeque::new();
        }
        Poll::Ready(Ok(()))
    }

    /// Flushes what was fed.
    pub(crate) fn poll_flush<S>(&mut self, cx: &mut Context<'_>, sink: &mut S) -> Poll<Result<(), WsError>>
    where
        S: Sink<WsMessage, Error = WsError> + Unpin,
    {
        if self.unflushed {
            ready!(sink.poll_flush_unpin(cx))?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }
}
