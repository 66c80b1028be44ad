// The SDK against real servers, checked from the user's side: every message
// the app was told "sent" is in the receiver's cache exactly once, each
// conversation reads in seq order without holes and in the sender's order,
// nothing stays "pending", and what failed says why.
//
//   node --test sdk/js/test/   (scripts/test.sh runs it after building)

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MemoryStore } from '../dist/index.js';
import { Server, client, inSeqOrder, ready, sleep, until } from './harness.mjs';

/** Waits until `c` holds `n` messages of its conversation with `peer`'s first message's conversation. */
function conversationOf(c, ack) {
  return () => c.messages(ack.conversationId);
}

/** Settles every send; returns the acks of those told "sent" and the failures. */
async function settle(sends) {
  const results = await Promise.allSettled(sends);
  const sent = [];
  const failed = [];
  results.forEach((r, i) => (r.status === 'fulfilled' ? sent.push({ i, ack: r.value }) : failed.push({ i, error: r.reason })));
  return { sent, failed };
}

test('kill -9 in the middle of 500 pipelined sends: every sent message arrives once, in order', async () => {
  const server = await Server.start();
  const alice = client(server, 'alice');
  const bob = client(server, 'bob');
  try {
    await Promise.all([alice.connect(), bob.connect(), ready(alice), ready(bob)]);
    let sentSoFar = 0;
    alice.on('outbox', (e) => {
      if (e.status === 'sent') sentSoFar += 1;
    });
    const sends = [];
    for (let i = 0; i < 500; i += 1) sends.push(alice.sendText('bob', `m${i}`));
    await until('150 sends stored', () => sentSoFar >= 150);
    await server.kill();
    await server.run();
    const { sent, failed } = await settle(sends);
    for (const f of failed) assert.ok(f.error.code, `a failure says why: ${f.error}`);
    assert.equal(sent.length, 500, `all 500 sent after the restart (failed: ${failed.map((f) => f.error.code)})`);
    assert.ok(alice.outbox().every((e) => e.status !== 'pending'), 'nothing stuck in pending');
    const conversation = sent[0].ack.conversationId;
    await until('bob has all 500', () => bob.messages(conversation).length === 500);
    const texts = inSeqOrder(bob.messages(conversation));
    assert.deepEqual(texts, sends.map((_, i) => `m${i}`), "in the sender's order");
    // Nothing more comes later (no second copy under another id).
    await sleep(300);
    assert.equal(bob.messages(conversation).length, 500);
    assert.deepEqual(inSeqOrder(alice.messages(conversation)), texts, "the sender's own cache agrees");
  } finally {
    alice.close();
    bob.close();
    await server.stop();
  }
});

test('the socket dropped every 300 ms during a conversation: both sides see it whole, once, in order', async () => {
  const server = await Server.start();
  const alice = client(server, 'alice');
  const bob = client(server, 'bob');
  try {
    await Promise.all([alice.connect(), bob.connect(), ready(alice), ready(bob)]);
    const resumedBefore = await server.metric('dongdong_sign_ins_total', 'resumed="true"');
    const dropper = setInterval(() => {
      alice.connection.dropSocket();
      bob.connection.dropSocket();
    }, 300);
    const sends = [];
    for (let i = 0; i < 100; i += 1) {
      sends.push(alice.sendText('bob', `a${i}`), bob.sendText('alice', `b${i}`));
      await sleep(15);
    }
    const { sent, failed } = await settle(sends);
    clearInterval(dropper);
    assert.deepEqual(failed.map((f) => f.error.code), [], 'none failed');
    const conversation = sent[0].ack.conversationId;
    await until('both have all 200', () => alice.messages(conversation).length === 200 && bob.messages(conversation).length === 200);
    const seen = inSeqOrder(bob.messages(conversation));
    assert.deepEqual(inSeqOrder(alice.messages(conversation)), seen, 'both read the same conversation');
    assert.deepEqual(seen.filter((t) => t.startsWith('a')), [...Array(100).keys()].map((i) => `a${i}`), "alice's order");
    assert.deepEqual(seen.filter((t) => t.startsWith('b')), [...Array(100).keys()].map((i) => `b${i}`), "bob's order");
    assert.ok(alice.outbox().every((e) => e.status !== 'pending') && bob.outbox().every((e) => e.status !== 'pending'));
    const resumed = (await server.metric('dongdong_sign_ins_total', 'resumed="true"')) - resumedBefore;
    assert.ok(resumed > 0, 'the reconnects resumed their sessions');
  } finally {
    alice.close();
    bob.close();
    await server.stop();
  }
});

test('a reload with unsent messages in the outbox: the new client sends them, once', async () => {
  const server = await Server.start();
  const store = new MemoryStore();
  const bob = client(server, 'bob');
  try {
    await Promise.all([bob.connect(), ready(bob)]);
    // The page is offline: what is typed waits in the outbox.
    await server.kill();
    const first = client(server, 'alice', 'alice-1', { store });
    void first.connect();
    const typed = [];
    for (let i = 0; i < 20; i += 1) typed.push(first.sendText('bob', `offline ${i}`).catch((e) => e));
    await sleep(50);
    assert.ok(first.outbox().every((e) => e.status === 'pending'));
    first.close(); // the reload
    await server.run();
    // Online again, a second page sends 30 and reloads while they fly.
    const second = client(server, 'alice', 'alice-1', { store });
    await second.connect();
    await ready(second);
    const flying = [];
    for (let i = 0; i < 30; i += 1) flying.push(second.sendText('bob', `flying ${i}`).catch((e) => e));
    second.close();
    const third = client(server, 'alice', 'alice-1', { store });
    const sentIds = new Set();
    third.on('outbox', (e) => e.status === 'sent' && sentIds.add(e.clientMsgId));
    await third.connect();
    await until('the third page has sent what it found', () => third.outbox().every((e) => e.status !== 'pending'));
    const kept = third.outbox();
    assert.ok(kept.every((e) => e.status === 'sent'), `all sent: ${kept.map((e) => e.status)}`);
    const conversation = kept[0]?.conversationId;
    const expected = [...Array(20).keys()].map((i) => `offline ${i}`).concat([...Array(30).keys()].map((i) => `flying ${i}`));
    await until('bob has all 50', () => conversation && bob.messages(conversation).length >= 50);
    await sleep(200);
    assert.deepEqual(inSeqOrder(bob.messages(conversation)), expected, 'each once, in the order typed');
    third.close();
  } finally {
    bob.close();
    await server.stop();
  }
});

test('a send the server refuses fails with its code; one never sent expires; neither stays pending', async () => {
  const server = await Server.start();
  const alice = client(server, 'alice', 'alice-1', { sendDeadlineMs: 300 });
  try {
    await Promise.all([alice.connect(), ready(alice)]);
    await assert.rejects(alice.sendText('bob', ''), (e) => e.code === 'INVALID_ARGUMENT');
    await server.kill();
    await assert.rejects(alice.sendText('bob', 'into the void'), (e) => e.code === 'EXPIRED');
    const statuses = alice.outbox().map((e) => [e.status, e.error?.code]);
    assert.deepEqual(statuses, [['failed', 'INVALID_ARGUMENT'], ['failed', 'EXPIRED']]);
    // The app may try again: with the server back, it is sent.
    await server.run();
    await ready(alice);
    const expired = alice.outbox()[1].clientMsgId;
    const ack = await alice.retry(expired);
    assert.ok(ack.msgId);
    assert.equal(alice.outbox()[1].status, 'sent');
  } finally {
    alice.close();
    await server.stop();
  }
});

test('a resume within the window keeps presence watches; after a restart the client signs in afresh; nothing lost or doubled', async () => {
  const server = await Server.start();
  const alice = client(server, 'alice');
  const bob = client(server, 'bob');
  try {
    await Promise.all([alice.connect(), bob.connect(), ready(alice), ready(bob)]);
    const now = await bob.watch(['alice']);
    assert.deepEqual(now.map((p) => [p.user, p.online]), [['alice', true]]);
    const presence = [];
    bob.on('presence', (p) => presence.push(p));
    const first = await alice.sendText('bob', 'before');
    await until('bob has it', () => bob.messages(first.conversationId).length === 1);
    // A network drop with nothing new meanwhile: resumed, nothing read
    // from storage, the watch answered again without asking.
    const replays = await server.metric('dongdong_replay_seconds_count');
    let back = ready(bob);
    bob.connection.dropSocket();
    assert.equal((await back).resumed, true, 'resumed');
    await until('watch answered again', () => presence.some((p) => p.user === 'alice' && p.online));
    assert.equal(await server.metric('dongdong_replay_seconds_count'), replays, 'no replay pass');
    // Another drop, and a message while away: it arrives, once.
    back = ready(bob);
    bob.connection.dropSocket();
    await alice.sendText('bob', 'while away');
    assert.equal((await back).resumed, true);
    await until('bob has both', () => bob.messages(first.conversationId).length === 2);
    // alice leaving is still told to bob: the watch is the server's again.
    alice.close();
    await until('alice offline', () => presence.some((p) => p.user === 'alice' && !p.online));
    // A restart: not resumed; the SDK subscribes again by itself.
    await server.kill();
    await server.run();
    const again = await ready(bob);
    assert.ok(!again.resumed, 'a restart forgets parked sessions');
    const alice2 = client(server, 'alice');
    await alice2.connect();
    await until('alice online again, told', () => presence.filter((p) => p.online).length >= 2);
    await alice2.sendText('bob', 'after the restart');
    await until('bob has three', () => bob.messages(first.conversationId).length === 3);
    assert.deepEqual(inSeqOrder(bob.messages(first.conversationId)), ['before', 'while away', 'after the restart']);
    alice2.close();
  } finally {
    bob.close();
    await server.stop();
  }
});

test('protobuf binary frames: the same conversation, the same guarantees', async () => {
  const { protobufCodec } = await import('../dist/protobuf.js');
  const server = await Server.start();
  const alice = client(server, 'alice', 'alice-1', { codec: protobufCodec() });
  const bob = client(server, 'bob');
  try {
    await Promise.all([alice.connect(), bob.connect(), ready(alice), ready(bob)]);
    const acks = await Promise.all([...Array(20).keys()].map((i) => alice.sendText('bob', `p${i}`)));
    assert.ok(acks.every((a) => a.msgId && Number(a.seq) > 0));
    const conversation = acks[0].conversationId;
    await until('bob has them', () => bob.messages(conversation).length === 20);
    const back = ready(alice);
    alice.connection.dropSocket();
    assert.equal((await back).resumed, true, 'a binary session resumes too');
    await bob.sendText('alice', 'got them');
    await until('alice has the answer', () => alice.messages(conversation).length === 21);
    assert.deepEqual(inSeqOrder(alice.messages(conversation)), [...[...Array(20).keys()].map((i) => `p${i}`), 'got them']);
  } finally {
    alice.close();
    bob.close();
    await server.stop();
  }
});

test('search finds a Chinese word inside a sentence, marks it, and never a recalled message', async () => {
  const server = await Server.start();
  const alice = client(server, 'alice');
  try {
    await alice.connect();
    await ready(alice);
    const kept = await alice.sendText('bob', '我想申请退款，订单JD2026-000123');
    const recalled = await alice.sendText('bob', '退款已经不需要了');
    await alice.recall(recalled.msgId);
    let page = {};
    await until('the message is searchable', async () => {
      page = await alice.search('退款');
      return (page.hits ?? []).length > 0;
    });
    assert.deepEqual(page.hits.map((h) => h.message.msgId), [kept.msgId]);
    const marked = page.hits[0].snippet.filter((p) => p.matched).map((p) => p.text);
    assert.deepEqual(marked, ['退款']);
    const byNumber = await alice.search({ query: '000123', withUser: 'bob' });
    assert.equal(byNumber.hits[0].message.seq, kept.seq);
    await assert.rejects(alice.search('   '), (e) => e.code === 'INVALID_ARGUMENT');
  } finally {
    alice.close();
    await server.stop();
  }
});
