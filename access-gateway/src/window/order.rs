//! Seq order of live pushes when more than one node stores a conversation's
//! messages (cluster mode; docs/storage.md, "Seq order across nodes").
//!
//! Each node publishes its pushes of a conversation in seq order, but two
//! nodes' pushes race: seq 7 stored on one node can reach a device after
//! seq 8 stored on another. The store settles what can be known: a message
//! is stored only after every lower seq of its conversation is, each with
//! its pending marks. So per conversation the window keeps `upto`, a seq up
//! to which everything pending for the device has been delivered on this
//! connection. A push right after it is delivered; one at or below it is a
//! late duplicate and dropped; one further on waits (is *held*) while the
//! device's pending messages between the two are read from the store,
//! which are then delivered first. The device's own sends (their seqs come
//! back in `SendAck`s) fill gaps without a read.
//!
//! Bounded: at most [`MAX_CONVERSATIONS`] conversations are followed (past
//! that the idle ones are forgotten, and their next push costs a read),
//! at most [`MAX_OWN`] own seqs per conversation, and at most
//! `max_inflight` pushes held in all; more than that and the window falls
//! back to a replay pass, which delivers everything pending in order.

use im_core::pb::Message;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Conversations followed per connection.
pub const MAX_CONVERSATIONS: usize = 256;
/// The device's own sends remembered per conversation above `upto`.
pub const MAX_OWN: usize = 32;

/// A read of the device's pending messages in one conversation with
/// `after < seq < before`, at most `limit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GapRead {
    pub conversation_id: Box<str>,
    pub after: u64,
    pub before: u64,
    pub limit: usize,
    /// Wait this long first (a read that failed before).
    pub delay: std::time::Duration,
}

/// What to do with a live push.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Admit {
    Deliver,
    /// At or below what was delivered: a late copy.
    Behind,
    /// Waits for a gap read.
    Held,
    /// More held than allowed: replay instead.
    Overflow,
}

#[derive(Debug, Default)]
struct Conv {
    /// Everything pending for the device in the conversation with a seq up
    /// to this has been delivered on this connection; `None` until known.
    upto: Option<u64>,
    /// Seqs of the device's own sends above `upto`, ascending.
    own: Vec<u64>,
    /// Pushes past a gap, ascending by seq, waiting for its read.
    held: Vec<Arc<Message>>,
}

impl Conv {
    /// Moves `upto` over the device's own sends that follow it.
    fn absorb_own(&mut self) {
        let Some(mut upto) = self.upto else { return };
        self.own.retain(|&seq| {
            if seq == upto + 1 {
                upto = seq;
            }
            seq > upto
        });
        self.upto = Some(upto);
    }

    fn hold(&mut self, message: Arc<Message>) -> bool {
        match self.held.binary_search_by_key(&message.seq, |m| m.seq) {
            Ok(_) => false,
            Err(at) => {
                self.held.insert(at, message);
                true
            }
        }
    }
}

/// The per-conversation state of one connection. See the module docs.
#[derive(Debug, Default)]
pub(super) struct Order {
    convs: HashMap<Box<str>, Conv>,
    /// Pushes held in all conversations.
    held: usize,
    /// The conversation whose gap is being read.
    reading: Option<Box<str>>,
    /// Conversations with held pushes waiting for their read, in order.
    waiting: VecDeque<Box<str>>,
    /// Consecutive failed gap reads.
    pub(super) failures: u32,
}

impl Order {
    /// The conversation's state, made on its first push (the id is copied
    /// only then: this runs for every live push).
    fn conv(&mut self, id: &str) -> &mut Conv {
        if !self.convs.contains_key(id) {
            if self.convs.len() >= MAX_CONVERSATIONS {
                // Forget the idle ones: their next push costs a read, no more.
                let reading = self.reading.clone();
                self.convs.retain(|k, c| !c.held.is_empty() || reading.as_deref() == Some(&**k));
            }
            self.convs.insert(id.into(), Conv::default());
        }
        let Some(conv) = self.convs.get_mut(id) else { unreachable!("inserted above") };
        conv
    }

    /// Whether a live push goes out now; `max_held` bounds what waits.
    pub(super) fn admit(&mut self, message: &Arc<Message>, max_held: usize) -> Admit {
        let conv = self.conv(&message.conversation_id);
        if !conv.held.is_empty() {
            // Behind a gap being filled: in seq order after it.
            if conv.hold(message.clone()) {
                self.held += 1;
            }
            return if self.held > max_held { Admit::Overflow } else { Admit::Held };
        }
        conv.absorb_own();
        match conv.upto {
            Some(upto) if message.seq <= upto => Admit::Behind,
            Some(upto) if message.seq == upto + 1 => {
                conv.upto = Some(message.seq);
                conv.absorb_own();
                Admit::Deliver
            }
            _ => {
                conv.hold(message.clone());
                self.held += 1;
                self.waiting.push_back(message.conversation_id.as_str().into());
                if self.held > max_held { Admit::Overflow } else { Admit::Held }
            }
        }
    }

    /// A message of a replay pass: whether to deliver it (not when the
    /// connection delivered it already and only its ack is on the way).
    /// Replay passes go through each conversation in seq order, so what
    /// they deliver moves `upto`.
    pub(super) fn replayed(&mut self, message: &Message) -> bool {
        let conv = self.conv(&message.conversation_id);
        match conv.upto {
            Some(upto) if message.seq <= upto => false,
            _ => {
                conv.upto = Some(message.seq);
                conv.absorb_own();
                true
            }
        }
    }

    /// The device's own send was stored at `seq`.
    pub(super) fn sent(&mut self, conversation_id: &str, seq: u64) {
        let Some(conv) = self.convs.get_mut(conversation_id) else { return };
        let Some(upto) = conv.upto else { return };
        if seq == upto + 1 {
            conv.upto = Some(seq);
            conv.absorb_own();
        } else if seq > upto + 1
            && conv.own.len() < MAX_OWN
            && let Err(at) = conv.own.binary_search(&seq)
        {
            conv.own.insert(at, seq);
        }
    }

    /// The next gap to read, if none is being read.
    pub(super) fn next_read(&mut self, limit: usize) -> Option<GapRead> {
        if self.reading.is_some() || limit == 0 {
            return None;
        }
        while let Some(id) = self.waiting.pop_front() {
            let Some(conv) = self.convs.get_mut(&id) else { continue };
            conv.absorb_own();
            let Some(first) = conv.held.first() else { continue };
            let (after, before) = (conv.upto.unwrap_or(0), first.seq);
            let read = GapRead { conversation_id: id.clone(), after, before, limit, delay: Default::default() };
            self.reading = Some(id);
            return Some(read);
        }
        None
    }

    /// Whether `read` is the gap read under way (not one a replay pass
    /// made moot).
    pub(super) fn is_reading(&self, read: &GapRead) -> bool {
        self.reading.as_deref() == Some(&*read.conversation_id)
    }

    /// The pending messages of `read` arrived (ascending, all of them when
    /// fewer than its limit): the ones to deliver, then the held pushes
    /// that now follow in order. What stays held waits for another read.
    pub(super) fn on_read(&mut self, read: &GapRead, messages: Vec<Message>) -> Vec<Arc<Message>> {
        self.reading = None;
        self.failures = 0;
        let complete = messages.len() < read.limit;
        let Some(conv) = self.convs.get_mut(&read.conversation_id) else { return Vec::new() };
        let mut out = Vec::new();
        for m in messages {
            if conv.upto.is_none_or(|upto| m.seq > upto) && m.seq < read.before {
                conv.upto = Some(m.seq);
                out.push(Arc::new(m));
            }
        }
        if !complete {
            // More in the gap: read on from the last one delivered.
            self.waiting.push_front(read.conversation_id.clone());
            return out;
        }
        // Whatever else lies below `before` is not the device's to receive.
        conv.upto = Some(conv.upto.map_or(read.before - 1, |upto| upto.max(read.before - 1)));
        conv.absorb_own();
        let mut held = std::mem::take(&mut conv.held).into_iter().peekable();
        while let Some(m) = held.next_if(|m| m.seq <= conv.upto.unwrap_or(0) + 1) {
            self.held -= 1;
            if conv.upto.is_some_and(|upto| m.seq == upto + 1) {
                conv.upto = Some(m.seq);
                conv.absorb_own();
                out.push(m);
            }
        }
        conv.held = held.collect();
        if !conv.held.is_empty() {
            self.waiting.push_back(read.conversation_id.clone());
        }
        out
    }

    /// The gap read failed: it is asked again (the caller bounds how often).
    pub(super) fn on_read_failed(&mut self) {
        if let Some(id) = self.reading.take() {
            self.waiting.push_front(id);
        }
        self.failures += 1;
    }

    /// A replay pass starts (or a parked window resumes): it delivers
    /// everything pending in order, so nothing is held and no gap read
    /// matters any more.
    pub(super) fn replaying(&mut self) {
        // What was known is rebuilt by the pass (its pages are read after
        // this connection's acks are stored), so nothing known wrongly
        // outlives a replay.
        self.convs.clear();
        self.held = 0;
        self.reading = None;
        self.waiting.clear();
        self.failures = 0;
    }
}
