// Two servers sharing Redis and MongoDB (scripts/test.sh starts private
// ones and sets DDTEST_REDIS_URL and DDTEST_MONGO_URL): two clients on
// different nodes write to each other at once, and a third device's cache
// still reads the conversation in seq order without holes, while live
// pushes from the two nodes may reach it out of order.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { Server, client, inSeqOrder, ready, until } from './harness.mjs';

const redis = process.env.DDTEST_REDIS_URL;
const mongo = process.env.DDTEST_MONGO_URL;
const skip = !redis || !mongo ? 'DDTEST_REDIS_URL and DDTEST_MONGO_URL are not set (scripts/test.sh sets them)' : false;

test('two senders on two nodes: a third device reads the conversation whole and in order', { skip }, async () => {
  const id = randomBytes(6).toString('hex');
  const tenant = `t${id}`;
  const storage = (node) =>
    `[storage]\nbackend = "cluster"\nredis_url = "${redis}"\nmongo_url = "${mongo}"\n` +
    `mongo_database = "dd_sdk_${id}"\nnode_id = "sdk-${id}-${node}"\n`;
  const one = await Server.start('', { storage: storage(1) });
  const two = await Server.start('', { storage: storage(2) });
  const alice = client(one, 'alice', 'a1', { tenant });
  const bob = client(two, 'bob', 'b1', { tenant });
  const bobsTablet = client(one, 'bob', 'b2', { tenant });
  try {
    await Promise.all([alice, bob, bobsTablet].flatMap((c) => [c.connect(), ready(c)]));
    let filled = 0;
    bobsTablet.on('messages', (e) => {
      if (e.how === 'history') filled += e.messages.length;
    });
    const sends = [];
    for (let i = 0; i < 200; i += 1) sends.push(alice.sendText('bob', `a${i}`), bob.sendText('alice', `b${i}`));
    const acks = await Promise.all(sends);
    const conversation = acks[0].conversationId;
    const full = () => [alice, bob, bobsTablet].every((c) => c.messages(conversation).length === 400);
    await until('every device has all 400', full);
    console.log('filled from history on the tablet:', filled);
    const tablet = inSeqOrder(bobsTablet.messages(conversation));
    assert.deepEqual(inSeqOrder(alice.messages(conversation)), tablet);
    assert.deepEqual(inSeqOrder(bob.messages(conversation)), tablet);
    const byAlice = tablet.filter((t) => t.startsWith('a'));
    assert.deepEqual(byAlice, [...Array(200).keys()].map((i) => `a${i}`), "alice's order");
    assert.deepEqual(tablet.filter((t) => t.startsWith('b')), [...Array(200).keys()].map((i) => `b${i}`), "bob's order");
  } finally {
    for (const c of [alice, bob, bobsTablet]) c.close();
    await one.stop();
    await two.stop();
  }
});
