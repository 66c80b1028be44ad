//! Conformance of read pointers, unread counts, the conversation list,
//! recall and the events they leave pending.

use super::{new_message, send, tenant};
use crate::{Backends, ConversationCursor, DeviceKey, HistoryQuery, MarkOutcome, MarkRead, PendingEvent, ReadMark};
use im_core::pb::{ConversationItem, Message, frame::Body};
use std::collections::HashSet;
use std::sync::Arc;

fn read(t: &str, user: &str, device: &str, peer: &str, up_to_seq: u64) -> MarkRead {
    MarkRead {
        reader: DeviceKey::new(t, user, device),
        conversation_id: im_core::conversation_id(t, user, peer),
        up_to_seq,
    }
}

/// Marks read; the reader must be a member.
async fn mark(b: &Backends, read: MarkRead) -> ReadMark {
    match b.messages.mark_read(read).await.unwrap() {
        MarkOutcome::Marked(m) => m,
        other => panic!("not marked: {other:?}"),
    }
}

async fn events(b: &Backends, device: &DeviceKey) -> Vec<PendingEvent> {
    let mut out: Vec<PendingEvent> = Vec::new();
    loop {
        let page = b.pending.pending_events(device, out.last().map(|e| e.key.as_str()), 2).await.unwrap();
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

fn receipt_of(e: &PendingEvent) -> (String, u64, String) {
    match &e.frame.body {
        Some(Body::ReadReceipt(r)) => (r.reader.clone(), r.up_to_seq, r.event_id.clone()),
        other => panic!("not a receipt: {other:?}"),
    }
}

/// Every conversation of `user`, walking pages of `page`.
async fn all_conversations(b: &Backends, t: &str, user: &str, page: usize) -> Vec<ConversationItem> {
    let mut out = Vec::new();
    let mut cursor: Option<ConversationCursor> = None;
    loop {
        let p = b.messages.conversations(t, user, cursor.as_ref(), page).await.unwrap();
        assert!(p.items.len() <= page);
        out.extend(p.items);
        match p.next {
            Some(next) => cursor = Some(next),
            None => return out,
        }
    }
}

async fn item(b: &Backends, t: &str, user: &str, conversation_id: &str) -> ConversationItem {
    let all = all_conversations(b, t, user, 50).await;
    all.into_iter().find(|i| i.conversation_id == conversation_id).expect("listed")
}

async fn history(b: &Backends, t: &str, conversation_id: &str) -> Vec<Message> {
    let q = HistoryQuery {
        tenant: t.to_string(),
        conversation_id: conversation_id.to_string(),
        after_seq: 0,
        before_seq: 0,
        limit: 1000,
    };
    b.messages.history(q).await.unwrap().messages
}

pub async fn read_pointers_move_forward_and_count_unread(b: &Backends) {
    let t = tenant();
    let devices: Vec<DeviceKey> = ["a1", "a2"]
        .iter()
        .map(|d| DeviceKey::new(&t, "alice", *d))
        .chain(["b1", "b2"].iter().map(|d| DeviceKey::new(&t, "bob", *d)))
        .collect();
    for d in &devices {
        b.devices.register_device(d).await.unwrap();
    }
    // seq 1-3 alice, 4 bob, 5-6 alice.
    for (i, (from, to)) in
        [("alice", "bob"), ("alice", "bob"), ("alice", "bob"), ("bob", "alice"), ("alice", "bob"), ("alice", "bob")]
            .iter()
            .enumerate()
    {
        send(b, &t, from, to, &format!("m{i}")).await;
    }
    let conv = im_core::conversation_id(&t, "alice", "bob");
    let bob = item(b, &t, "bob", &conv).await;
    assert_eq!((bob.peer.as_str(), bob.last_seq, bob.unread, bob.read_seq), ("alice", 6, 5, 0));
    assert_eq!(bob.last_message.as_ref().unwrap().seq, 6);
    let alice = item(b, &t, "alice", &conv).await;
    assert_eq!((alice.peer.as_str(), alice.unread), ("bob", 1));

    let m = mark(b, read(&t, "bob", "b1", "alice", 4)).await;
    assert_eq!((m.read_seq, m.moved, m.peer.as_str()), (4, true, "alice"));
    // Not a member, no such conversation, another tenant.
    let carol = MarkRead { reader: DeviceKey::new(&t, "carol", "c"), ..read(&t, "bob", "b1", "alice", 1) };
    assert_eq!(b.messages.mark_read(carol).await.unwrap(), MarkOutcome::NotMember);
    let nobody = read(&t, "bob", "b1", "nobody", 1);
    assert_eq!(b.messages.mark_read(nobody).await.unwrap(), MarkOutcome::NotFound);
    let elsewhere = MarkRead { reader: DeviceKey::new(tenant(), "bob", "b1"), ..read(&t, "bob", "b1", "alice", 1) };
    assert_eq!(b.messages.mark_read(elsewhere).await.unwrap(), MarkOutcome::NotFound);
    let bob = item(b, &t, "bob", &conv).await;
    assert_eq!((bob.unread, bob.read_seq), (2, 4), "alice's 5 and 6 are unread");
    assert_eq!(item(b, &t, "alice", &conv).await.peer_read_seq, 4);
    // Lower or equal: nothing moves.
    for lower in [1, 4] {
        let m = mark(b, read(&t, "bob", "b2", "alice", lower)).await;
        assert_eq!((m.read_seq, m.moved), (4, false));
    }
    // Receipts: alice's devices and bob's other device, not the reader's.
    assert!(events(b, &devices[2]).await.is_empty(), "not for the device that read");
    let mut ids = Vec::new();
    for d in [&devices[0], &devices[1], &devices[3]] {
        let e = events(b, d).await;
        assert_eq!(e.len(), 1, "{d:?}");
        let (reader, up_to, id) = receipt_of(&e[0]);
        assert_eq!((reader.as_str(), up_to), ("bob", 4));
        ids.push(id);
    }
    // Beyond the last seq: capped. The newer receipt replaces the older.
    let m = mark(b, read(&t, "bob", "b1", "alice", 99)).await;
    assert_eq!((m.read_seq, m.moved), (6, true));
    assert_eq!(item(b, &t, "bob", &conv).await.unread, 0);
    let a1 = Arc::new(devices[0].clone());
    let e = events(b, &a1).await;
    assert_eq!(e.len(), 1, "coalesced: only the highest counts");
    let (_, up_to, newest) = receipt_of(&e[0]);
    assert_eq!(up_to, 6);
    // An ack of the older receipt leaves the newer one.
    assert_eq!(b.pending.ack_events(&[(a1.clone(), vec![ids[0].clone()])]).await.unwrap(), 0);
    assert_eq!(events(b, &a1).await.len(), 1);
    let junk = vec!["nonsense".to_string(), format!("{newest}0"), String::new()];
    assert_eq!(b.pending.ack_events(&[(a1.clone(), junk)]).await.unwrap(), 0);
    assert_eq!(b.pending.ack_events(&[(a1.clone(), vec![newest])]).await.unwrap(), 1);
    assert!(events(b, &a1).await.is_empty());
    // Alice reads bob's message: bob's unread drops, alice's too.
    send(b, &t, "bob", "alice", "late").await;
    assert_eq!(item(b, &t, "alice", &conv).await.unread, 2);
    mark(b, read(&t, "alice", "a1", "bob", 6)).await;
    let alice = item(b, &t, "alice", &conv).await;
    assert_eq!((alice.unread, alice.read_seq, alice.peer_read_seq), (1, 6, 6));
}

pub async fn unread_counts_are_exact_under_concurrent_sends_and_reads(b: &Backends) {
    let t = Arc::new(tenant());
    b.devices.register_device(&DeviceKey::new(&*t, "bob", "b1")).await.unwrap();
    // The conversation exists before the readers start.
    send(b, &t, "alice", "bob", "first").await;
    let mut tasks = Vec::new();
    for sender in 0..3 {
        let (b, t) = (b.clone(), t.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..30 {
                let (from, to) = if sender == 2 { ("bob", "alice") } else { ("alice", "bob") };
                b.messages.append(new_message(&t, from, "d", to, &format!("{sender}-{i}"))).await.unwrap();
            }
            0
        }));
    }
    for reader in 0..2 {
        let (b, t) = (b.clone(), t.clone());
        tasks.push(tokio::spawn(async move {
            let mut highest = 0;
            for i in 0..40u64 {
                let m = mark(&b, read(&t, "bob", &format!("b{reader}"), "alice", i * 3)).await;
                assert!(m.read_seq >= highest, "the pointer never moves back");
                highest = m.read_seq;
            }
            highest
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let conv = im_core::conversation_id(&t, "alice", "bob");
    let all = history(b, &t, &conv).await;
    assert_eq!(all.len(), 91);
    let bob = item(b, &t, "bob", &conv).await;
    let expected = all.iter().filter(|m| m.seq > bob.read_seq && m.from_user == "alice").count() as u64;
    assert_eq!(bob.unread, expected, "read up to {}", bob.read_seq);
    let alice = item(b, &t, "alice", &conv).await;
    assert_eq!(alice.unread, 30, "alice read nothing");
    assert_eq!(alice.peer_read_seq, bob.read_seq);
    mark(b, read(&t, "bob", "b1", "alice", 91)).await;
    assert_eq!(item(b, &t, "bob", &conv).await.unread, 0);
}

pub async fn conversation_list_is_ordered_and_paged(b: &Backends) {
    let t = tenant();
    let peers: Vec<String> = (0..7).map(|i| format!("p{i}")).collect();
    for p in &peers {
        send(b, &t, p, "me", &format!("hello from {p}")).await;
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    let listed = all_conversations(b, &t, "me", 3).await;
    let order: Vec<&str> = listed.iter().map(|i| i.peer.as_str()).collect();
    assert_eq!(order, ["p6", "p5", "p4", "p3", "p2", "p1", "p0"]);
    assert!(listed.iter().all(|i| i.unread == 1 && i.last_seq == 1));
    // A reply moves a conversation to the front, for both members.
    send(b, &t, "me", "p2", "reply").await;
    let listed = all_conversations(b, &t, "me", 3).await;
    assert_eq!(listed[0].peer, "p2");
    assert_eq!(listed[0].last_message.as_ref().unwrap().from_user, "me");
    assert_eq!(listed.len(), 7);
    assert_eq!(all_conversations(b, &t, "p2", 3).await.len(), 1);
    // Walking pages while others write: a conversation nobody touched is
    // listed exactly once; none is listed twice.
    let writer = {
        let (b, t) = (b.clone(), t.clone());
        tokio::spawn(async move {
            for i in 0..20 {
                let p = ["p0", "p3", "p6"][i % 3];
                b.messages.append(new_message(&t, p, "d", "me", &format!("busy {i}"))).await.unwrap();
            }
        })
    };
    for _ in 0..5 {
        let listed = all_conversations(b, &t, "me", 2).await;
        let ids: HashSet<&str> = listed.iter().map(|i| i.conversation_id.as_str()).collect();
        assert_eq!(ids.len(), listed.len(), "listed twice");
        for quiet in ["p1", "p2", "p4", "p5"] {
            assert!(listed.iter().any(|i| i.peer == quiet), "{quiet} missing");
        }
    }
    writer.await.unwrap();
    let listed = all_conversations(b, &t, "me", 4).await;
    assert_eq!(listed.len(), 7);
    // Ordered by the last message's time, newest first.
    let times: Vec<u64> = listed.iter().map(|i| i.last_message.as_ref().unwrap().server_time_ms).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");
    assert!(b.messages.conversations(&t, "nobody", None, 10).await.unwrap().items.is_empty());
    assert!(b.messages.conversations(&tenant(), "me", None, 10).await.unwrap().items.is_empty(), "tenant wall");
}

pub async fn recall_deletes_content_everywhere_and_is_idempotent(b: &Backends) {
    let t = tenant();
    let a1 = DeviceKey::new(&t, "alice", "a1");
    let a2 = DeviceKey::new(&t, "alice", "a2");
    let b1 = DeviceKey::new(&t, "bob", "b1");
    for d in [&a1, &a2, &b1] {
        b.devices.register_device(d).await.unwrap();
    }
    let keep = b.messages.append(new_message(&t, "alice", "a1", "bob", "keep")).await.unwrap().message;
    let gone = b.messages.append(new_message(&t, "alice", "a1", "bob", "secret")).await.unwrap().message;
    assert_eq!(b.messages.get_by_id(&t, &gone.msg_id).await.unwrap().as_ref(), Some(&gone));
    assert_eq!(b.messages.get_by_id(&tenant(), &gone.msg_id).await.unwrap(), None, "tenant wall");
    assert!(b.messages.recall(&tenant(), &gone.msg_id, &a1).await.unwrap().is_none(), "tenant wall");
    assert!(b.messages.recall(&t, "no-such-id", &a1).await.unwrap().is_none());

    let out = b.messages.recall(&t, &gone.msg_id, &a1).await.unwrap().unwrap();
    assert!(out.fresh);
    let m = &out.message;
    assert_eq!((m.msg_id.as_str(), m.seq, m.recalled_by.as_str()), (gone.msg_id.as_str(), 2, "alice"));
    assert!(m.content.is_none() && m.recalled_ms > 0);
    // Nowhere to be read again: by id, by seq, in history, in the list, in
    // the pending set replayed to bob.
    let stored = b.messages.get_by_id(&t, &gone.msg_id).await.unwrap().unwrap();
    assert_eq!(&stored, m);
    assert_eq!(b.messages.get(&t, &gone.conversation_id, 2).await.unwrap().as_ref(), Some(m));
    let h = history(b, &t, &gone.conversation_id).await;
    assert_eq!((h[0].clone(), h[1].clone()), (keep.clone(), m.clone()));
    let listed = item(b, &t, "bob", &gone.conversation_id).await;
    assert_eq!(listed.last_message.as_ref(), Some(m));
    assert_eq!(listed.unread, 2, "a recalled message still counts until read");
    let pending = b.pending.pending(&b1, None, 10).await.unwrap();
    assert_eq!(pending[1], *m);
    // The recall is pending for every device of both but the recaller's.
    assert!(events(b, &a1).await.is_empty());
    for d in [&a2, &b1] {
        let e = events(b, d).await;
        assert_eq!(e.len(), 1);
        let Some(Body::Recalled(r)) = &e[0].frame.body else { panic!("not a recall") };
        assert_eq!((r.msg_id.as_str(), r.seq, r.by.as_str()), (gone.msg_id.as_str(), 2, "alice"));
        assert_eq!(r.conversation_id, gone.conversation_id);
        assert!(!r.event_id.is_empty());
    }
    // Twice: unchanged, nothing new pending.
    let b1 = Arc::new(b1);
    let id = match &events(b, &b1).await[0].frame.body {
        Some(Body::Recalled(r)) => r.event_id.clone(),
        _ => unreachable!(),
    };
    assert_eq!(b.pending.ack_events(&[(b1.clone(), vec![id])]).await.unwrap(), 1);
    let again = b.messages.recall(&t, &gone.msg_id, &a2).await.unwrap().unwrap();
    assert!(!again.fresh);
    assert_eq!(again.message, *m, "recalled_by and recalled_ms unchanged");
    assert!(events(b, &b1).await.is_empty());
    // A retried send of the recalled client_msg_id stays recalled.
    let retry = b.messages.append(new_message(&t, "alice", "a1", "bob", "secret")).await.unwrap();
    assert!(retry.duplicate);
    assert!(retry.message.content.is_none());
    // Seqs and unread counts go on as before.
    assert_eq!(send(b, &t, "alice", "bob", "after").await.seq, 3);
}
