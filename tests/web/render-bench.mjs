// How the agent workspace draws a long chat: a customer (the SDK in Node)
// sends N messages (default 1,000) to an agent whose page is open in
// headless Chromium, then M more (default 40) one every 250 ms, as a person
// would. For those M it reports Chromium's long tasks (over 50 ms, from a
// PerformanceObserver in the page) and the time from send to shown (a
// MutationObserver stamps each bubble as it appears).
//
//   cargo build -p dongdong && (cd sdk/js && npx tsc -p tsconfig.json)
//   node tests/web/render-bench.mjs [N] [M]
//
// DD_BIN and DD_CHROMIUM as for console.test.mjs. The server, the browser
// and this script share the machine's cores: say so with the figures.

import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import WebSocket from '../../sdk/js/node_modules/ws/wrapper.mjs';
import { DongdongClient, MemoryStore } from '../../sdk/js/dist/index.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '../..');
const BIN = process.env.DD_BIN || path.join(root, 'target/debug/dongdong');
const CHROMIUM = process.env.DD_CHROMIUM || '/usr/bin/chromium';
const N = Number(process.argv[2] || 1000);
const step = (what) => process.stderr.write(`render-bench: ${what}\n`);
const M = Number(process.argv[3] || 40);

const freePort = () => new Promise((resolve) => {
  const s = net.createServer();
  s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
});

const dir = mkdtempSync(path.join(tmpdir(), 'dd-render-'));
const ws = await freePort();
const http = await freePort();
const config = path.join(dir, 'dongdong.toml');
writeFileSync(config, `
[server]
listen = "127.0.0.1:${ws}"
http = "127.0.0.1:${http}"
[storage]
data_dir = "${path.join(dir, 'data')}"
[log]
filter = "warn"
[limits]
rate_per_sec = 100000
rate_burst = 100000
user_frames_per_sec = 0
user_sends_per_sec = 0
[[cs.groups]]
tenant = "demo"
id = "default"
name = "Pre-sales"
auto_join = true
`);
const child = spawn(BIN, ['serve', '--config', config], { stdio: ['ignore', 'ignore', 'pipe'] });
const base = `http://127.0.0.1:${http}`;
for (let i = 0; ; i += 1) {
  try { if ((await fetch(`${base}/healthz`)).ok) break; } catch { /* not yet */ }
  if (i > 100) throw new Error('the server did not start');
  await new Promise((r) => setTimeout(r, 100));
}
const token = async (user, role) => (await (await fetch(`${base}/api/v1/dev/token`, {
  method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ tenant: 'demo', user, role }),
})).json()).token;

const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--headless', '--no-sandbox', '--disable-gpu'] });
try {
  const page = await (await browser.newContext({ viewport: { width: 1280, height: 800 } })).newPage();
  await page.goto(`${base}/agent#token=${await token('ana', 'agent')}`);
  step('agent page open');
  await page.waitForSelector('#conn[data-status="online"]');
  await page.selectOption('#status', 'ONLINE');
  await page.waitForFunction(() => document.querySelector('#status').dataset.status === 'ONLINE');

  const customer = new DongdongClient({ url: `ws://127.0.0.1:${ws}/ws`, apiUrl: base, token: await token('cid', 'customer'), deviceId: 'bench', WebSocket, store: new MemoryStore() });
  await new Promise((resolve) => { const off = customer.on('ready', () => { off(); resolve(); }); customer.connect(); });
  step('customer connected');
  await customer.requestService('default');
  step('service requested');
  await page.waitForSelector('[data-customer="cid"]');
  await page.click('[data-customer="cid"]');
  const t0 = Date.now();
  const sends = [];
  for (let i = 0; i < N; i += 1) sends.push(customer.sendText('ana', `message ${i} of the long chat`));
  await Promise.all(sends);
  await page.waitForFunction((n) => document.querySelectorAll('#messages .msg').length >= n, N, { timeout: 300000 });
  const backlog = Date.now() - t0;
  step(`backlog shown in ${backlog} ms`);

  await page.evaluate(() => {
    window.ddLong = [];
    new PerformanceObserver((l) => { for (const e of l.getEntries()) window.ddLong.push(e.duration); }).observe({ type: 'longtask', buffered: false });
    window.ddShown = new Map();
    new MutationObserver(() => {
      for (const b of document.querySelectorAll('#messages .msg .bubble')) {
        const m = /^live (\d+)$/.exec(b.textContent);
        if (m && !window.ddShown.has(m[1])) window.ddShown.set(m[1], Date.now());
      }
    }).observe(document.querySelector('#messages'), { childList: true, subtree: true });
  });
  const sentAt = [];
  for (let i = 0; i < M; i += 1) {
    sentAt.push(Date.now());
    customer.sendText('ana', `live ${i}`);
    await new Promise((r) => setTimeout(r, 250));
  }
  await page.waitForFunction((m) => window.ddShown.size >= m, M, { timeout: 60000 });
  const { long, shown } = await page.evaluate(() => ({ long: window.ddLong, shown: [...window.ddShown.entries()] }));
  const lat = shown.map(([i, at]) => at - sentAt[Number(i)]).sort((a, b) => a - b);
  const q = (p) => lat[Math.min(lat.length - 1, Math.floor(p * lat.length))];
  console.log(JSON.stringify({
    backlog_messages: N, backlog_shown_ms: backlog, live_messages: M,
    long_tasks: long.length, long_task_total_ms: Math.round(long.reduce((a, b) => a + b, 0)), long_task_max_ms: Math.round(Math.max(0, ...long)),
    shown_p50_ms: q(0.5), shown_p90_ms: q(0.9), shown_max_ms: lat[lat.length - 1],
  }));
  customer.close();
} finally {
  await browser.close();
  child.kill('SIGTERM');
  rmSync(dir, { recursive: true, force: true });
}
