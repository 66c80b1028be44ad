// The conversation cache alone, with history answered from a list: what
// the app sees is each conversation in seq order, without holes, each
// message once, whatever order pushes come in.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Backoff, ConversationCache } from '../dist/index.js';

const msg = (seq, text = `m${seq}`) => ({ msgId: `id${seq}`, conversationId: 'c', seq: String(seq), content: { text } });

/** A cache over a stored conversation of `stored` messages; records what the app got. */
function cacheOver(stored) {
  const all = [...Array(stored).keys()].map((i) => msg(i + 1));
  const app = [];
  const asked = [];
  const cache = new ConversationCache({
    history: async (_c, after, limit) => {
      asked.push(['after', after, limit]);
      const messages = all.filter((m) => Number(m.seq) > after).slice(0, limit);
      return { messages, hasMore: Number(messages.at(-1)?.seq ?? stored) < stored };
    },
    older: async (_c, before, limit) => {
      asked.push(['before', before, limit]);
      return { messages: all.filter((m) => Number(m.seq) < before).slice(-limit), hasMore: false };
    },
    released: (_c, messages, how) => app.push(...messages.map((m) => [Number(m.seq), how])),
    recalled: () => {},
  });
  return { cache, app, asked, all };
}

const settle = () => new Promise((r) => setTimeout(r, 10));

test('a push that skips ahead is held until history fills the gap', async () => {
  const { cache, app, asked } = cacheOver(6);
  assert.equal(cache.push(msg(1)), 'released');
  assert.equal(cache.push(msg(4)), 'held');
  assert.equal(cache.push(msg(3)), 'held');
  await settle();
  assert.deepEqual(asked, [['after', 1, 200]]);
  assert.deepEqual(app, [[1, 'live'], [2, 'history'], [3, 'history'], [4, 'history'], [5, 'history'], [6, 'history']]);
  assert.equal(cache.push(msg(5)), 'duplicate', 'a push of what history brought is not shown twice');
  assert.deepEqual(cache.messages('c').map((m) => Number(m.seq)), [1, 2, 3, 4, 5, 6]);
});

test('a late push older than the first one seen goes in before it, with what lies between', async () => {
  const { cache, app } = cacheOver(5);
  cache.push(msg(4));
  assert.equal(cache.push(msg(3)), 'released', 'right below: at once');
  assert.equal(cache.push(msg(1)), 'held', 'further below: after a fetch');
  await settle();
  assert.deepEqual(cache.messages('c').map((m) => Number(m.seq)), [1, 2, 3, 4]);
  assert.deepEqual(app, [[4, 'live'], [3, 'history'], [1, 'history'], [2, 'history']]);
});

test('duplicates and replays of what the app has are not shown again; a recall reaches held copies', async () => {
  const { cache, app } = cacheOver(3);
  cache.push(msg(1));
  assert.equal(cache.push(msg(1)), 'duplicate');
  cache.push(msg(3));
  cache.recall({ msgId: 'id3', conversationId: 'c', by: 'alice', recalledMs: '1' });
  await settle();
  const shown = cache.messages('c');
  assert.deepEqual(shown.map((m) => [Number(m.seq), m.content?.text ?? null, m.recalledBy ?? '']), [
    [1, 'm1', ''],
    [2, 'm2', ''],
    [3, null, 'alice'],
  ]);
  assert.equal(app.length, 3);
});

test('backoff waits between 0.5 s and a ceiling that doubles up to 20 s, at random', () => {
  const low = new Backoff(500, 20_000, () => 0);
  const high = new Backoff(500, 20_000, () => 0.999999);
  const ceilings = [...Array(8)].map(() => Math.round(high.next()));
  assert.deepEqual(ceilings, [500, 1000, 2000, 4000, 8000, 16000, 20000, 20000]);
  assert.ok([...Array(8)].every(() => low.next() === 500));
  high.reset();
  assert.equal(Math.round(high.next()), 500);
});
