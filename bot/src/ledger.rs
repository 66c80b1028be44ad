//! What the bots saw, checked against what the server promised: every
//! message it acknowledged (SendAck) must reach every device it is for; no
//! message may arrive twice under two ids; each conversation arrives in seq
//! order; and each sender's messages arrive in the order it wrote them.

use im_core::pb;
use serde::Serialize;
use std::collections::{HashMap, HashSet};

/// A message the server acknowledged, and the receiving devices (indices
/// into the scenario's device logs) it must reach.
pub struct Acked {
    pub msg_id: String,
    pub devices: Vec<usize>,
    /// Where the sender wrote the Send that was acknowledged among the frames
    /// of its connection (its req_id; a retry is written again, later).
    pub written: u64,
}

/// What one receiving device saw.
#[derive(Default)]
pub struct DeviceLog {
    seen: HashSet<String>,
    /// (sender, client_msg_id) -> msg_id: one client message must map to one id.
    by_client: HashMap<(String, String), String>,
    last_seq: HashMap<String, u64>,
    /// First deliveries in arrival order, each with its sender stream: an
    /// index into `streams` of (conversation, sender, sender's device).
    arrivals: Vec<(u32, String)>,
    streams: HashMap<(String, String, String), u32>,
    pub redeliveries: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// The first few out-of-order arrivals, described.
    out_of_order_examples: Vec<String>,
}

/// Examples kept of each kind of defect.
const EXAMPLES: usize = 5;

impl DeviceLog {
    /// Records a delivery; true when this msg_id is new to the device.
    pub fn record(&mut self, m: &pb::Message) -> bool {
        if self.seen.contains(&m.msg_id) {
            self.redeliveries += 1;
            return false;
        }
        self.seen.insert(m.msg_id.clone());
        let key = (m.from_user.clone(), m.client_msg_id.clone());
        if !m.client_msg_id.is_empty() {
            match self.by_client.get(&key) {
                Some(id) if *id != m.msg_id => self.duplicates += 1,
                Some(_) => {}
                None => {
                    self.by_client.insert(key, m.msg_id.clone());
                }
            }
        }
        let next = self.streams.len() as u32;
        let stream = *self
            .streams
            .entry((m.conversation_id.clone(), m.from_user.clone(), m.from_device.clone()))
            .or_insert(next);
        self.arrivals.push((stream, m.msg_id.clone()));
        let last = self.last_seq.entry(m.conversation_id.clone()).or_insert(0);
        if m.seq <= *last {
            self.out_of_order += 1;
            if self.out_of_order_examples.len() < EXAMPLES {
                self.out_of_order_examples.push(format!(
                    "{} (conversation {} seq {} after seq {}, {} ms after it was stored)",
                    m.msg_id,
                    m.conversation_id,
                    m.seq,
                    last,
                    im_core::now_ms().saturating_sub(m.server_time_ms)
                ));
            }
        } else {
            *last = m.seq;
        }
        true
    }

    pub fn has(&self, msg_id: &str) -> bool {
        self.seen.contains(msg_id)
    }

    pub fn received(&self) -> usize {
        self.seen.len()
    }
}

/// The correctness report.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Correctness {
    /// Messages the server acknowledged.
    pub acked: u64,
    /// (message, device) pairs acknowledged but never delivered: must be 0.
    pub acked_but_not_delivered: u64,
    /// Messages that arrived twice under different msg_ids: must be 0.
    pub duplicates: u64,
    /// Messages that arrived after a later seq of their conversation: must be 0.
    pub out_of_order: u64,
    /// Messages that arrived after one their sender wrote later, to the same
    /// conversation from the same device: must be 0.
    pub sender_order_violated: u64,
    /// Deliveries of a msg_id the device already had (replays; deduplicated
    /// by msg_id as clients do; not an error).
    pub redeliveries: u64,
    /// Some acknowledged msg_ids that went missing, to look up.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing_examples: Vec<String>,
    /// Some messages that arrived after a later seq of their conversation.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub out_of_order_examples: Vec<String>,
    /// With `--read-receipts`: senders' conversations whose last acked
    /// message never got its receipt: must be 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receipts_missing: Option<u64>,
    /// With `--read-receipts`: messages receivers' conversation lists still
    /// counted unread at the end (a receiver that got no answer counts 1):
    /// must be 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unread_left: Option<u64>,
    /// With `--read-receipts`: MarkRead frames sent and receipts pushed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub marks: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receipts: Option<u64>,
    /// `search`: messages a query should have found (by a scan of what the
    /// user wrote and received) and did not: must be 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search_missed: Option<u64>,
    /// `search`: results that do not match or are not the user's: must be 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search_foreign: Option<u64>,
}

impl Correctness {
    pub fn clean(&self) -> bool {
        self.acked_but_not_delivered == 0
            && self.duplicates == 0
            && self.out_of_order == 0
            && self.sender_order_violated == 0
            && self.receipts_missing.unwrap_or(0) == 0
            && self.unread_left.unwrap_or(0) == 0
            && self.search_missed.unwrap_or(0) == 0
            && self.search_foreign.unwrap_or(0) == 0
    }

    /// Checks `acked` against what the devices logged.
    pub fn check(acked: &[Acked], logs: &[DeviceLog]) -> Self {
        let mut c = Correctness { acked: acked.len() as u64, ..Default::default() };
        for a in acked {
            for &d in &a.devices {
                if !logs.get(d).is_some_and(|l| l.has(&a.msg_id)) {
                    c.acked_but_not_delivered += 1;
                    if c.missing_examples.len() < EXAMPLES {
                        c.missing_examples.push(a.msg_id.clone());
                    }
                }
            }
        }
        let written: HashMap<&str, u64> = acked.iter().map(|a| (a.msg_id.as_str(), a.written)).collect();
        for l in logs {
            let mut last: HashMap<u32, u64> = HashMap::new();
            for (stream, id) in &l.arrivals {
                let Some(&w) = written.get(id.as_str()) else { continue };
                let last = last.entry(*stream).or_insert(0);
                if w < *last {
                    c.sender_order_violated += 1;
                } else {
                    *last = w;
                }
            }
            c.duplicates += l.duplicates;
            c.out_of_order += l.out_of_order;
            let room = EXAMPLES.saturating_sub(c.out_of_order_examples.len());
            c.out_of_order_examples.extend(l.out_of_order_examples.iter().take(room).cloned());
            c.redeliveries += l.redeliveries;
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: &str, cmid: &str, seq: u64) -> pb::Message {
        pb::Message {
            msg_id: id.into(),
            client_msg_id: cmid.into(),
            conversation_id: "c".into(),
            from_user: "s".into(),
            seq,
            ..Default::default()
        }
    }

    #[test]
    fn finds_lost_duplicate_and_reordered_messages() {
        let mut log = DeviceLog::default();
        assert!(log.record(&msg("m1", "a", 1)));
        assert!(!log.record(&msg("m1", "a", 1)), "a replay is not new");
        assert!(log.record(&msg("m3", "c", 3)));
        assert!(log.record(&msg("m2", "b", 2)), "late but new");
        assert!(log.record(&msg("m9", "a", 4)), "same client id, new msg_id");
        let acked = vec![
            Acked { msg_id: "m1".into(), devices: vec![0], written: 1 },
            Acked { msg_id: "m4".into(), devices: vec![0], written: 4 },
            Acked { msg_id: "m3".into(), devices: vec![0, 1], written: 3 },
        ];
        let c = Correctness::check(&acked, &[log]);
        assert_eq!(c.acked, 3);
        assert_eq!(c.acked_but_not_delivered, 2, "m4 on device 0, m3 on device 1");
        assert_eq!(c.missing_examples, vec!["m4".to_string(), "m3".to_string()]);
        assert_eq!((c.duplicates, c.out_of_order, c.redeliveries), (1, 1, 1));
        assert_eq!(c.out_of_order_examples.len(), 1);
        assert!(c.out_of_order_examples[0].contains("conversation c seq"), "{:?}", c.out_of_order_examples);
        assert!(!c.clean());
    }

    #[test]
    fn in_order_unique_complete_is_clean() {
        let mut log = DeviceLog::default();
        for i in 1..=3 {
            log.record(&msg(&format!("m{i}"), &format!("c{i}"), i));
        }
        let acked: Vec<_> = (1..=3).map(|i| Acked { msg_id: format!("m{i}"), devices: vec![0], written: i }).collect();
        assert!(Correctness::check(&acked, &[log]).clean());
    }

    #[test]
    fn finds_a_senders_messages_out_of_the_order_written() {
        // Seqs in order, but the sender wrote m2 before m1 (as when sends
        // race inside the server): the seq check cannot see it.
        let mut log = DeviceLog::default();
        for (i, id) in ["m1", "m2", "m3"].iter().enumerate() {
            log.record(&msg(id, id, i as u64 + 1));
        }
        let mut other = msg("x1", "x1", 4);
        other.from_device = "d2".into();
        log.record(&other);
        let acked = vec![
            Acked { msg_id: "m1".into(), devices: vec![0], written: 2 },
            Acked { msg_id: "m2".into(), devices: vec![0], written: 1 },
            Acked { msg_id: "m3".into(), devices: vec![0], written: 3 },
            // Another device of the sender counts on its own.
            Acked { msg_id: "x1".into(), devices: vec![0], written: 1 },
        ];
        let c = Correctness::check(&acked, &[log]);
        assert_eq!((c.out_of_order, c.sender_order_violated), (0, 1));
        assert!(!c.clean());
    }
}
