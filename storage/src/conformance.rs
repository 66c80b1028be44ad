//! The storage conformance suite: what every implementation of the traits in
//! this crate must do. An implementation runs it with
//! [`conformance_suite!`](crate::conformance_suite), passing an async factory
//! that returns fresh [`Backends`] and a guard that keeps them alive.
//!
//! Every test works in tenants of its own (random names), so implementations
//! backed by shared servers can run the suite without cleaning up.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod cs;
mod files;
mod reads;
mod search;
pub use cs::*;
pub use files::*;
pub use reads::*;
pub use search::*;

use crate::{Backends, DeviceKey, HistoryQuery, NewMessage, PendingCursor, PresenceEntry};
use im_core::pb::{Content, Message, content};
use std::collections::HashSet;
use std::sync::Arc;

/// Expands to one `#[tokio::test]` per conformance test, each calling
/// `$factory().await` for a fresh `Some((Backends, guard))`; `None` skips
/// (the factory decides, e.g. when a server is not configured outside CI).
#[macro_export]
macro_rules! conformance_suite {
    ($factory:path) => {
        mod conformance {
            use super::*;
            $crate::conformance_suite!(@tests $factory;
                append_assigns_gap_free_seq_per_conversation,
                append_is_idempotent_per_sender,
                concurrent_appends_are_gap_free,
                pending_for_recipient_devices_and_other_sender_devices,
                pending_for_user_without_devices_goes_to_first_device,
                pending_pages_in_conversation_seq_order,
                pending_between_is_one_conversations_seq_range,
                ack_removes_pending_and_counts,
                ack_batch_removes_each_devices_ids,
                history_pages_both_ways,
                tenants_are_walls,
                presence_replace_and_compare_and_delete,
                cs_groups_and_members,
                cs_least_loaded_fifo_and_positions,
                cs_queue_full_and_round_robin,
                cs_manual_pick,
                cs_transfer,
                cs_transfer_to_agent_keeps_the_queue,
                cs_agent_grace_and_max_wait,
                cs_end_rate_left_messages_and_quick_replies,
                cs_concurrent_assignment_keeps_invariants,
                cs_past_sessions_and_profiles,
                revocations_only_move_forward,
                settings_are_kept_and_cleared,
                read_pointers_move_forward_and_count_unread,
                unread_counts_are_exact_under_concurrent_sends_and_reads,
                conversation_list_is_ordered_and_paged,
                recall_deletes_content_everywhere_and_is_idempotent,
                files_store_read_ranges_and_refs,
                search_finds_words_inside_sentences_within_scope
            );
        }
    };
    (@tests $factory:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some((backends, _guard)) = $factory().await else { return };
                $crate::conformance::$name(&backends).await;
            }
        )*
    };
}

/// The URL in `var`, or `None` to skip. Under `CI=true` a missing server is
/// a failure, never a skip.
pub fn required_env(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{var} is not set: run the tests with ./scripts/test.sh, which starts the servers")
        }
        _ => {
            eprintln!("skipped: {var} is not set (./scripts/test.sh sets it)");
            None
        }
    }
}

fn tenant() -> String {
    format!("t{}", im_core::new_msg_id())
}

fn text(s: &str) -> Content {
    Content { kind: Some(content::Kind::Text(s.to_string())) }
}

fn new_message(tenant: &str, from: &str, from_device: &str, to: &str, cmid: &str) -> NewMessage {
    NewMessage {
        tenant: tenant.to_string(),
        conversation_id: im_core::conversation_id(tenant, from, to),
        from_user: from.to_string(),
        from_device: from_device.to_string(),
        to_user: to.to_string(),
        client_msg_id: cmid.to_string(),
        content: text(cmid),
    }
}

async fn send(b: &Backends, tenant: &str, from: &str, to: &str, cmid: &str) -> Message {
    let out = b.messages.append(new_message(tenant, from, "dev0", to, cmid)).await.unwrap();
    assert!(!out.duplicate, "{cmid} was not sent before");
    out.message
}

async fn all_pending(b: &Backends, device: &DeviceKey, page: usize) -> Vec<Message> {
    let mut out: Vec<Message> = Vec::new();
    let mut cursor: Option<PendingCursor> = None;
    loop {
        let batch = b.pending.pending(device, cursor.as_ref(), page).await.unwrap();
        assert!(batch.len() <= page);
        let Some(last) = batch.last() else { break };
        cursor = Some(PendingCursor::of(last));
        out.extend(batch);
    }
    out
}

pub async fn append_assigns_gap_free_seq_per_conversation(b: &Backends) {
    let t = tenant();
    let mut ids = Vec::new();
    for i in 1..=5u64 {
        let m = send(b, &t, "alice", "bob", &format!("ab{i}")).await;
        assert_eq!(m.seq, i);
        assert_eq!(m.conversation_id, im_core::conversation_id(&t, "alice", "bob"));
        assert_eq!((m.from_user.as_str(), m.to_user.as_str()), ("alice", "bob"));
        assert!(m.server_time_ms > 0);
        uuid_v7(&m.msg_id);
        ids.push(m.msg_id);
    }
    for i in 1..=3u64 {
        let m = send(b, &t, "carol", "alice", &format!("ca{i}")).await;
        assert_eq!(m.seq, i, "each conversation counts from 1");
    }
    // Replies continue the same conversation.
    assert_eq!(send(b, &t, "bob", "alice", "ba1").await.seq, 6);
    let unique: HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len());
    let conv = b.messages.conversation(&t, &im_core::conversation_id(&t, "bob", "alice")).await.unwrap().unwrap();
    assert_eq!(conv.last_seq, 6);
    assert_eq!(conv.members, ["alice".to_string(), "bob".to_string()]);
}

fn uuid_v7(id: &str) {
    assert_eq!(id.len(), 36, "{id} is a UUID string");
    assert_eq!(&id[14..15], "7", "{id} is a version 7 UUID");
}

pub async fn append_is_idempotent_per_sender(b: &Backends) {
    let t = tenant();
    let first = send(b, &t, "alice", "bob", "same").await;
    let again = b.messages.append(new_message(&t, "alice", "other-device", "bob", "same")).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.message, first);
    // The same client_msg_id from another sender is another message.
    let bobs = send(b, &t, "bob", "alice", "same").await;
    assert_eq!(bobs.seq, 2);
    assert_ne!(bobs.msg_id, first.msg_id);
    let conv = b.messages.conversation(&t, &first.conversation_id).await.unwrap().unwrap();
    assert_eq!(conv.last_seq, 2);
}

/// 200 appends of one conversation from 4 senders at once, as two nodes
/// make them: each node serialises its own (the `MessageStore::append`
/// contract; here a lock per node), the two nodes race.
pub async fn concurrent_appends_are_gap_free(b: &Backends) {
    let t = Arc::new(tenant());
    let nodes = [Arc::new(tokio::sync::Mutex::new(())), Arc::new(tokio::sync::Mutex::new(()))];
    let mut tasks = Vec::new();
    for sender in 0..4 {
        for i in 0..50 {
            let (b, t, node) = (b.clone(), t.clone(), nodes[sender / 2].clone());
            tasks.push(tokio::spawn(async move {
                let (from, to) = if sender % 2 == 0 { ("alice", "bob") } else { ("bob", "alice") };
                let dev = format!("d{sender}");
                let _serial = node.lock().await;
                let m = b.messages.append(new_message(&t, from, &dev, to, &format!("{sender}-{i}"))).await.unwrap();
                m.message.seq
            }));
        }
    }
    let mut seqs = Vec::new();
    for task in tasks {
        seqs.push(task.await.unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=200).collect::<Vec<u64>>());
    let conv = im_core::conversation_id(&t, "alice", "bob");
    let page = b
        .messages
        .history(HistoryQuery { tenant: t.to_string(), conversation_id: conv, after_seq: 0, before_seq: 0, limit: 500 })
        .await
        .unwrap();
    assert_eq!(page.messages.len(), 200);
    assert!(page.messages.windows(2).all(|w| w[0].seq + 1 == w[1].seq));
}

pub async fn pending_for_recipient_devices_and_other_sender_devices(b: &Backends) {
    let t = tenant();
    let a1 = DeviceKey::new(&t, "alice", "a1");
    let a2 = DeviceKey::new(&t, "alice", "a2");
    let b1 = DeviceKey::new(&t, "bob", "b1");
    let b2 = DeviceKey::new(&t, "bob", "b2");
    for d in [&a1, &a2, &b1, &b2] {
        assert!(b.devices.register_device(d).await.unwrap().new_device);
    }
    assert!(!b.devices.register_device(&a1).await.unwrap().new_device, "seen before");
    let m = b.messages.append(new_message(&t, "alice", "a1", "bob", "m1")).await.unwrap().message;
    for d in [&a2, &b1, &b2] {
        assert_eq!(b.pending.pending_count(d).await.unwrap(), 1, "{d:?}");
        assert_eq!(all_pending(b, d, 10).await, vec![m.clone()]);
    }
    assert_eq!(b.pending.pending_count(&a1).await.unwrap(), 0, "the sending device gets a SendAck instead");
    assert!(all_pending(b, &a1, 10).await.is_empty());
    // A duplicate marks nothing again.
    b.pending.ack(&b1, std::slice::from_ref(&m.msg_id)).await.unwrap();
    let dup = b.messages.append(new_message(&t, "alice", "a1", "bob", "m1")).await.unwrap();
    assert!(dup.duplicate);
    assert_eq!(b.pending.pending_count(&b1).await.unwrap(), 0);
}

pub async fn pending_for_user_without_devices_goes_to_first_device(b: &Backends) {
    let t = tenant();
    let m1 = send(b, &t, "alice", "carol", "c1").await;
    let m2 = send(b, &t, "alice", "carol", "c2").await;
    let first = DeviceKey::new(&t, "carol", "phone");
    let reg = b.devices.register_device(&first).await.unwrap();
    assert!(reg.new_device);
    assert_eq!(reg.claimed, 2);
    assert_eq!(b.pending.pending_count(&first).await.unwrap(), 2);
    assert_eq!(all_pending(b, &first, 10).await, vec![m1, m2]);
    let second = DeviceKey::new(&t, "carol", "laptop");
    let reg = b.devices.register_device(&second).await.unwrap();
    assert_eq!(reg.claimed, 0, "only a user's first device takes over");
    assert_eq!(b.pending.pending_count(&second).await.unwrap(), 0);
    let m3 = send(b, &t, "alice", "carol", "c3").await;
    assert_eq!(all_pending(b, &second, 10).await, vec![m3]);
}

pub async fn pending_pages_in_conversation_seq_order(b: &Backends) {
    let t = tenant();
    let bob = DeviceKey::new(&t, "bob", "b1");
    b.devices.register_device(&bob).await.unwrap();
    let mut sent = Vec::new();
    for i in 0..12 {
        let from = ["alice", "carol", "dave"][i % 3];
        sent.push(send(b, &t, from, "bob", &format!("m{i}")).await);
    }
    for page in [1, 5, 100] {
        let got = all_pending(b, &bob, page).await;
        assert_eq!(got.len(), 12, "page size {page}");
        let ids: HashSet<_> = got.iter().map(|m| m.msg_id.clone()).collect();
        assert_eq!(ids.len(), 12);
        for conv in got.iter().map(|m| m.conversation_id.clone()).collect::<HashSet<_>>() {
            let seqs: Vec<u64> = got.iter().filter(|m| m.conversation_id == conv).map(|m| m.seq).collect();
            assert_eq!(seqs, vec![1, 2, 3, 4], "conversation {conv} in seq order, page size {page}");
        }
    }
}

pub async fn pending_between_is_one_conversations_seq_range(b: &Backends) {
    let t = tenant();
    let bob = DeviceKey::new(&t, "bob", "b1");
    b.devices.register_device(&bob).await.unwrap();
    // Two conversations whose seqs overlap, and bob's own sends from b1
    // (never pending for b1) in the first.
    let mut with_alice = Vec::new();
    for i in 0..8 {
        let m = if i % 3 == 2 {
            b.messages.append(new_message(&t, "bob", "b1", "alice", &format!("own{i}"))).await.unwrap().message
        } else {
            send(b, &t, "alice", "bob", &format!("a{i}")).await
        };
        with_alice.push(m);
        send(b, &t, "carol", "bob", &format!("c{i}")).await;
    }
    let conv = with_alice[0].conversation_id.clone();
    let acked = with_alice[3].msg_id.clone();
    assert_eq!(b.pending.ack(&bob, std::slice::from_ref(&acked)).await.unwrap(), 1);
    let expected = |after: u64, before: u64| -> Vec<Message> {
        with_alice
            .iter()
            .filter(|m| m.seq > after && m.seq < before && m.from_user == "alice" && m.msg_id != acked)
            .cloned()
            .collect()
    };
    for (after, before) in [(0, 9), (0, 100), (1, 7), (2, 4), (5, 6), (6, 6), (7, 3)] {
        let got = b.pending.pending_between(&bob, &conv, after, before, 100).await.unwrap();
        assert_eq!(got, expected(after, before), "seqs strictly between {after} and {before}");
    }
    // A limit keeps the lowest seqs.
    let got = b.pending.pending_between(&bob, &conv, 0, 100, 2).await.unwrap();
    assert_eq!(got, expected(0, 100)[..2].to_vec());
    // Another device of bob's, or a conversation bob is not in: nothing.
    let other = DeviceKey::new(&t, "bob", "never-seen");
    assert!(b.pending.pending_between(&other, &conv, 0, 100, 100).await.unwrap().is_empty());
    let elsewhere = im_core::conversation_id(&t, "alice", "dave");
    assert!(b.pending.pending_between(&bob, &elsewhere, 0, 100, 100).await.unwrap().is_empty());
}

pub async fn ack_removes_pending_and_counts(b: &Backends) {
    let t = tenant();
    let bob = DeviceKey::new(&t, "bob", "b1");
    b.devices.register_device(&bob).await.unwrap();
    let ms: Vec<Message> = send_many(b, &t, 3).await;
    assert_eq!(b.pending.pending_count(&bob).await.unwrap(), 3);
    let removed = b.pending.ack(&bob, &[ms[0].msg_id.clone(), ms[2].msg_id.clone()]).await.unwrap();
    assert_eq!(removed, 2);
    assert_eq!(b.pending.pending_count(&bob).await.unwrap(), 1);
    assert_eq!(all_pending(b, &bob, 10).await, vec![ms[1].clone()]);
    assert_eq!(b.pending.ack(&bob, &[ms[0].msg_id.clone()]).await.unwrap(), 0, "acking twice is harmless");
    assert_eq!(b.pending.ack(&bob, &["no-such-id".to_string()]).await.unwrap(), 0);
    assert_eq!(b.pending.ack(&bob, &[]).await.unwrap(), 0);
    // Another device's ack does not touch bob's set.
    let other = DeviceKey::new(&t, "bob", "b2");
    assert_eq!(b.pending.ack(&other, &[ms[1].msg_id.clone()]).await.unwrap(), 0);
    assert_eq!(b.pending.pending_count(&bob).await.unwrap(), 1);
    assert_eq!(b.pending.ack(&bob, &[ms[1].msg_id.clone()]).await.unwrap(), 1);
    assert_eq!(b.pending.pending_count(&bob).await.unwrap(), 0);
    assert!(all_pending(b, &bob, 10).await.is_empty());
}

pub async fn ack_batch_removes_each_devices_ids(b: &Backends) {
    let t = tenant();
    let (b1, b2) = (DeviceKey::new(&t, "bob", "b1"), DeviceKey::new(&t, "bob", "b2"));
    for d in [&b1, &b2] {
        b.devices.register_device(d).await.unwrap();
    }
    let ms: Vec<Message> = send_many(b, &t, 3).await;
    let id = |i: usize| ms[i].msg_id.clone();
    let acks = vec![
        (std::sync::Arc::new(b1.clone()), vec![id(0), id(1)]),
        (std::sync::Arc::new(b2.clone()), vec![id(2), "no-such-id".to_string()]),
        (std::sync::Arc::new(b1.clone()), vec![id(0)]),
        (std::sync::Arc::new(b2.clone()), vec![]),
    ];
    assert_eq!(b.pending.ack_batch(&acks).await.unwrap(), 3, "an id acked twice counts once");
    assert_eq!(all_pending(b, &b1, 10).await, vec![ms[2].clone()]);
    assert_eq!(all_pending(b, &b2, 10).await, vec![ms[0].clone(), ms[1].clone()]);
    assert_eq!(b.pending.ack_batch(&[]).await.unwrap(), 0);
}

async fn send_many(b: &Backends, t: &str, n: usize) -> Vec<Message> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(send(b, t, "alice", "bob", &format!("k{i}")).await);
    }
    out
}

pub async fn history_pages_both_ways(b: &Backends) {
    let t = tenant();
    for i in 0..10 {
        send(b, &t, "alice", "bob", &format!("h{i}")).await;
    }
    let conv = im_core::conversation_id(&t, "alice", "bob");
    let q = |after_seq, before_seq, limit| HistoryQuery {
        tenant: t.clone(),
        conversation_id: conv.clone(),
        after_seq,
        before_seq,
        limit,
    };
    let seqs = |p: &crate::HistoryPage| p.messages.iter().map(|m| m.seq).collect::<Vec<_>>();
    let p = b.messages.history(q(0, 0, 4)).await.unwrap();
    assert_eq!((seqs(&p), p.has_more), (vec![1, 2, 3, 4], true));
    let p = b.messages.history(q(8, 0, 4)).await.unwrap();
    assert_eq!((seqs(&p), p.has_more), (vec![9, 10], false));
    let p = b.messages.history(q(10, 0, 4)).await.unwrap();
    assert_eq!((seqs(&p), p.has_more), (vec![], false));
    let p = b.messages.history(q(0, 5, 2)).await.unwrap();
    assert_eq!((seqs(&p), p.has_more), (vec![3, 4], true));
    let p = b.messages.history(q(0, 3, 5)).await.unwrap();
    assert_eq!((seqs(&p), p.has_more), (vec![1, 2], false));
    let p = b.messages.history(q(0, 1000, 3)).await.unwrap();
    assert_eq!((seqs(&p), p.has_more), (vec![8, 9, 10], true));
    assert_eq!(b.messages.get(&t, &conv, 7).await.unwrap().unwrap().seq, 7);
    assert!(b.messages.get(&t, &conv, 11).await.unwrap().is_none());
    let other = im_core::conversation_id(&t, "alice", "nobody");
    let p = b
        .messages
        .history(HistoryQuery { tenant: t.clone(), conversation_id: other, after_seq: 0, before_seq: 0, limit: 10 })
        .await
        .unwrap();
    assert!(p.messages.is_empty() && !p.has_more);
}

pub async fn tenants_are_walls(b: &Backends) {
    let (ta, tb) = (tenant(), tenant());
    let bob_b = DeviceKey::new(&tb, "bob", "b1");
    b.devices.register_device(&bob_b).await.unwrap();
    let m = send(b, &ta, "alice", "bob", "x").await;
    assert!(b.messages.conversation(&ta, &m.conversation_id).await.unwrap().is_some());
    assert!(b.messages.conversation(&tb, &m.conversation_id).await.unwrap().is_none());
    assert_eq!(b.pending.pending_count(&bob_b).await.unwrap(), 0, "bob of tenant B is another person");
    assert_eq!(b.pending.ack(&bob_b, std::slice::from_ref(&m.msg_id)).await.unwrap(), 0);
    // The same sender and client_msg_id in another tenant is another message.
    let other = b.messages.append(new_message(&tb, "alice", "dev0", "bob", "x")).await.unwrap();
    assert!(!other.duplicate);
    assert_ne!(other.message.conversation_id, m.conversation_id);
    assert_eq!(b.pending.pending_count(&bob_b).await.unwrap(), 1);
    let entry = |t: &str| PresenceEntry {
        device: DeviceKey::new(t, "bob", "b1").into(),
        node_id: "n1".into(),
        conn_id: 1,
        epoch: 1,
    };
    b.presence.register(entry(&ta)).await.unwrap();
    assert!(b.presence.lookup(&tb, "bob").await.unwrap().is_empty());
    assert_eq!(b.presence.lookup(&ta, "bob").await.unwrap().len(), 1);
}

pub async fn presence_replace_and_compare_and_delete(b: &Backends) {
    let t = tenant();
    let entry = |device: &str, conn_id, epoch| PresenceEntry {
        device: DeviceKey::new(&t, "alice", device).into(),
        node_id: "node-a".into(),
        conn_id,
        epoch,
    };
    assert!(b.presence.lookup(&t, "alice").await.unwrap().is_empty());
    assert_eq!(b.presence.register(entry("phone", 1, 10)).await.unwrap(), None);
    assert_eq!(b.presence.register(entry("laptop", 2, 11)).await.unwrap(), None);
    let replaced = b.presence.register(entry("phone", 3, 12)).await.unwrap();
    assert_eq!(replaced, Some(entry("phone", 1, 10)));
    let mut found = b.presence.lookup(&t, "alice").await.unwrap();
    found.sort_by_key(|e| e.conn_id);
    assert_eq!(found, vec![entry("laptop", 2, 11), entry("phone", 3, 12)]);
    // The old phone connection closes late: it must not remove the new one.
    assert!(!b.presence.unregister(&DeviceKey::new(&t, "alice", "phone"), 10).await.unwrap());
    assert_eq!(b.presence.lookup(&t, "alice").await.unwrap().len(), 2);
    assert!(b.presence.unregister(&DeviceKey::new(&t, "alice", "phone"), 12).await.unwrap());
    assert!(b.presence.unregister(&DeviceKey::new(&t, "alice", "laptop"), 11).await.unwrap());
    assert!(!b.presence.unregister(&DeviceKey::new(&t, "alice", "laptop"), 11).await.unwrap());
    // The recorded state: changes only, and when last seen.
    let p = &b.presence;
    assert_eq!(p.last_seen(&t, "alice").await.unwrap(), 0, "never recorded");
    assert!(!p.record_online(&t, "alice", false, 5).await.unwrap(), "unknown counts as offline");
    assert!(p.record_online(&t, "alice", true, 10).await.unwrap());
    assert!(!p.record_online(&t, "alice", true, 11).await.unwrap());
    assert_eq!(p.last_seen(&t, "alice").await.unwrap(), 0, "online");
    assert!(p.record_online(&t, "alice", false, 20).await.unwrap());
    assert!(!p.record_online(&t, "alice", false, 30).await.unwrap());
    assert_eq!(p.last_seen(&t, "alice").await.unwrap(), 20);
    assert_eq!(p.last_seen(&tenant(), "alice").await.unwrap(), 0, "another tenant's alice");
    assert!(b.presence.lookup(&t, "alice").await.unwrap().is_empty());
}

pub async fn settings_are_kept_and_cleared(b: &Backends) {
    let s = &b.settings;
    let name = format!("limits-{}", tenant());
    assert_eq!(s.setting(&name).await.unwrap(), None);
    s.set_setting(&name, Some("{\"a\":1}".into())).await.unwrap();
    assert_eq!(s.setting(&name).await.unwrap().as_deref(), Some("{\"a\":1}"));
    s.set_setting(&name, Some("中文 2".into())).await.unwrap();
    assert_eq!(s.setting(&name).await.unwrap().as_deref(), Some("中文 2"), "the latest value");
    assert_eq!(s.setting("another").await.unwrap(), None);
    s.set_setting(&name, None).await.unwrap();
    assert_eq!(s.setting(&name).await.unwrap(), None, "cleared");
    s.set_setting(&name, None).await.unwrap();
}

pub async fn revocations_only_move_forward(b: &Backends) {
    let (t, r) = (tenant(), &b.revocations);
    assert_eq!(r.revoked_before(&t, "mallory").await.unwrap(), 0);
    assert_eq!(r.revoke_before(&t, "mallory", 1_000).await.unwrap(), 1_000);
    assert_eq!(r.revoke_before(&t, "mallory", 500).await.unwrap(), 1_000, "an earlier time changes nothing");
    assert_eq!(r.revoke_before(&t, "mallory", 2_000).await.unwrap(), 2_000);
    assert_eq!(r.revoked_before(&t, "mallory").await.unwrap(), 2_000);
    assert_eq!(r.revoked_before(&t, "alice").await.unwrap(), 0);
    assert_eq!(r.revoked_before(&tenant(), "mallory").await.unwrap(), 0, "another tenant's mallory");
    // Concurrent revocations keep the latest time.
    let mut tasks = Vec::new();
    for i in 0..20u64 {
        let (r, t) = (r.clone(), t.clone());
        tasks.push(tokio::spawn(async move { r.revoke_before(&t, "eve", 10_000 + i).await.unwrap() }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(r.revoked_before(&t, "eve").await.unwrap(), 10_019);
}
