//! The acks a connection holds because the node's ack queue was full: an
//! I/O-free type (the connection queues the batches it hands out).
//!
//! Invariants (unit tests below):
//! - acks are handed out in the order they were read, never two batches at
//!   once, and an ack read while some are held waits behind them;
//! - the connection stops reading while more than `max_inflight` ids are
//!   held (reading on would let a client that only acks grow memory);
//! - an id is held or being queued until the queue takes it, so a close
//!   counts every id it could not queue.

/// Acks waiting for room in the node's ack queue, oldest first.
#[derive(Debug, Default)]
pub struct AckBacklog {
    held: Vec<String>,
    /// Ids of the batch being queued, if one is.
    queuing: Option<usize>,
}

impl AckBacklog {
    /// A backlog that starts with `ids` (the ack the queue refused).
    pub fn new(ids: Vec<String>) -> Self {
        Self { held: ids, queuing: None }
    }

    /// Acks read while some are held: behind them.
    pub fn hold(&mut self, ids: Vec<String>) {
        self.held.extend(ids);
    }

    /// The next batch to queue: everything held, if no batch is being
    /// queued.
    pub fn next_batch(&mut self) -> Option<Vec<String>> {
        if self.queuing.is_some() || self.held.is_empty() {
            return None;
        }
        self.queuing = Some(self.held.len());
        Some(std::mem::take(&mut self.held))
    }

    /// The batch being queued found room.
    pub fn batch_queued(&mut self) {
        self.queuing = None;
    }

    /// Whether every id was queued.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty() && self.queuing.is_none()
    }

    /// Ids held or being queued.
    pub fn len(&self) -> usize {
        self.held.len() + self.queuing.unwrap_or(0)
    }

    /// Whether the connection should stop reading frames until some are
    /// queued.
    pub fn stops_reading(&self, max_inflight: usize) -> bool {
        self.held.len() > max_inflight
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ids(range: std::ops::Range<u32>) -> Vec<String> {
        range.map(|i| format!("m{i}")).collect()
    }

    #[test]
    fn batches_go_in_order_one_at_a_time() {
        let mut b = AckBacklog::new(ids(0..3));
        assert_eq!(b.next_batch().unwrap(), ids(0..3));
        assert!(b.next_batch().is_none(), "one batch at a time");
        b.hold(ids(3..5));
        assert_eq!(b.len(), 5, "being queued and held both count");
        assert!(!b.is_empty());
        b.batch_queued();
        assert_eq!(b.next_batch().unwrap(), ids(3..5), "what was read meanwhile, next");
        b.batch_queued();
        assert!(b.is_empty() && b.next_batch().is_none());
    }

    #[test]
    fn reading_stops_past_the_window() {
        let mut b = AckBacklog::new(ids(0..4));
        assert!(!b.stops_reading(4));
        b.hold(ids(4..5));
        assert!(b.stops_reading(4), "more than max_inflight held");
        b.next_batch().unwrap();
        assert!(!b.stops_reading(4), "handed to the queue: reading goes on while it waits for room");
    }
}
