// The memory of a conversation cache of 10,000 messages in a Chromium tab:
// the SDK's bundle loaded into a blank page, 10,000 short text messages
// (40 characters, as a chat has) pushed into one conversation, the heap
// measured after a full GC before and after (Chrome DevTools Protocol).
// Uses the browser suite's playwright-core and the system's Chromium.
//
//   node sdk/js/scripts/cache-memory.mjs [messages]

import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '../../..');
const require = createRequire(path.join(root, 'tests/web/package.json'));
const { chromium } = require('playwright-core');
const n = Number(process.argv[2] ?? 10_000);

const browser = await chromium.launch({ executablePath: process.env.DD_CHROMIUM || '/usr/bin/chromium' });
const page = await browser.newPage();
await page.setContent('<!doctype html><title>cache</title>');
const bundle = readFileSync(path.join(root, 'server/web/dongdong-client.js'), 'utf8');
await page.addScriptTag({ content: `${bundle}\nwindow.dd = { ConversationCache };`.replace(/^export \{[\s\S]*?\};?$/m, ''), type: 'module' });
await page.waitForFunction(() => !!window.dd);
const cdp = await page.context().newCDPSession(page);
const heap = async () => {
  await cdp.send('HeapProfiler.collectGarbage');
  return (await cdp.send('Runtime.getHeapUsage')).usedSize;
};
const before = await heap();
await page.evaluate((count) => {
  const cache = new window.dd.ConversationCache({
    history: async () => ({ messages: [] }),
    older: async () => ({ messages: [] }),
    released: () => {},
    recalled: () => {},
  });
  for (let i = 1; i <= count; i += 1) {
    cache.push({
      msgId: `01a24fb5-c772-7085-bac9-${String(i).padStart(12, '0')}`,
      conversationId: 'c9314a0a7e19cd1d36793161463fefe56',
      seq: String(i),
      fromUser: i % 2 ? 'alice' : 'bob',
      fromDevice: 'web-1',
      toUser: i % 2 ? 'bob' : 'alice',
      clientMsgId: `0f7839b8-c276-41c5-a952-${String(i).padStart(12, '0')}`,
      serverTimeMs: String(1796633642866 + i),
      content: { text: `message ${i} of the conversation, some words`.slice(0, 40) },
    });
  }
  window.kept = cache;
}, n);
const after = await heap();
console.log(`${n} messages: ${((after - before) / 1048576).toFixed(1)} MB of heap (${Math.round((after - before) / n)} B per message)`);
await browser.close();
