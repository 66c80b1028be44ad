//! `--read-receipts`: receivers mark each conversation read as messages
//! arrive, senders collect the receipts; at the end every sender must hold
//! the receipt for the last message its receiver read, and every receiver's
//! conversation list must show nothing unread.

use super::conn::{Conn, Incoming};
use im_core::pb::{self, Frame, frame::Body};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::time::Instant;

/// Receipt traffic of the whole run.
#[derive(Default)]
pub struct Counters {
    /// MarkRead frames sent.
    pub marks: AtomicU64,
    /// ReadReceipt pushes received (and acked).
    pub receipts: AtomicU64,
}

/// A receiving device's read pointers: what it marked so far.
#[derive(Default)]
pub struct Reader {
    marked: HashMap<String, u64>,
    /// Highest seq seen per conversation since the last mark.
    due: HashMap<String, u64>,
}

impl Reader {
    /// Notes a delivered message.
    pub fn saw(&mut self, m: &pb::Message) {
        if self.marked.get(&m.conversation_id).is_none_or(|s| *s < m.seq) {
            let due = self.due.entry(m.conversation_id.clone()).or_insert(0);
            *due = (*due).max(m.seq);
        }
    }

    /// Sends a MarkRead for each conversation with newer messages seen.
    pub async fn mark(&mut self, conn: &mut Conn, counters: &Counters) {
        for (conversation_id, up_to_seq) in self.due.drain() {
            self.marked.insert(conversation_id.clone(), up_to_seq);
            conn.send(Body::MarkRead(pb::MarkRead { conversation_id, up_to_seq })).await;
            counters.marks.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What a sender learned: the highest receipt per conversation, and the
/// highest seq the server acked to it.
#[derive(Default)]
pub struct SenderReceipts {
    receipts: HashMap<String, u64>,
    acked: HashMap<String, u64>,
}

impl SenderReceipts {
    pub fn acked(&mut self, a: &pb::SendAck) {
        let seq = self.acked.entry(a.conversation_id.clone()).or_insert(0);
        *seq = (*seq).max(a.seq);
    }

    fn receipt(&mut self, r: &pb::ReadReceipt) {
        let seq = self.receipts.entry(r.conversation_id.clone()).or_insert(0);
        *seq = (*seq).max(r.up_to_seq);
    }

    /// Conversations whose last acked message has no receipt yet.
    pub fn missing(&self) -> u64 {
        self.acked.iter().filter(|(c, seq)| self.receipts.get(*c).is_none_or(|r| r < seq)).count() as u64
    }
}

/// Handles a pushed receipt: records it (when `into` is given) and acks it.
/// Returns false for any other frame.
pub async fn on_frame(frame: &Frame, conn: &mut Conn, into: Option<&mut SenderReceipts>, counters: &Counters) -> bool {
    let Some(Body::ReadReceipt(r)) = &frame.body else { return false };
    if r.event_id.is_empty() {
        // The answer to our own MarkRead.
        return true;
    }
    counters.receipts.fetch_add(1, Ordering::Relaxed);
    if let Some(into) = into {
        into.receipt(r);
    }
    conn.send(Body::Ack(pb::Ack { msg_ids: vec![], event_ids: vec![r.event_id.clone()] })).await;
    true
}

/// After sending stopped: reads until every conversation has its last
/// receipt, or `until`.
pub async fn await_receipts(conn: &mut Conn, state: &mut SenderReceipts, counters: &Counters, until: Instant) {
    while state.missing() > 0 {
        let incoming = tokio::select! {
            i = conn.recv() => i,
            _ = tokio::time::sleep_until(until) => return,
        };
        match incoming {
            Incoming::Frame(f) => {
                on_frame(&f, conn, Some(state), counters).await;
            }
            Incoming::Closed(_) => return,
        }
    }
}

/// The unread messages in the device's conversation list (its first 100
/// conversations), or None when the server did not answer by `until`.
pub async fn unread_left(conn: &mut Conn, counters: &Counters, until: Instant) -> Option<u64> {
    let req =
        conn.send(Body::ConversationsRequest(pb::ConversationsRequest { cursor: String::new(), limit: 100 })).await;
    loop {
        let incoming = tokio::select! {
            i = conn.recv() => i,
            _ = tokio::time::sleep_until(until) => return None,
        };
        match incoming {
            Incoming::Frame(Frame { req_id, body: Some(Body::ConversationPage(p)) }) if req_id == req => {
                return Some(p.items.iter().map(|i| i.unread).sum());
            }
            Incoming::Frame(f) => {
                on_frame(&f, conn, None, counters).await;
            }
            Incoming::Closed(_) => return None,
        }
    }
}
