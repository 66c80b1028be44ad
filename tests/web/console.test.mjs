// End-to-end tests of the web consoles: a real `dongdong serve` (the debug
// binary cargo built), real pages in headless Chromium from the machine's
// packages, driven by playwright-core. Every person is a separate browser
// context (own cookies, localStorage and sessionStorage), like separate
// computers.
//
//   node --test tests/web/console.test.mjs          (scripts/test.sh runs it)
//
// Environment: DD_BIN (server binary, default target/debug/dongdong),
// DD_CHROMIUM (default /usr/bin/chromium), DD_SCREENSHOTS=<dir> to also save
// a picture of each page (how docs/*.png are made). On failure every open
// page is saved to tests/web/artifacts/.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, mkdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { deflateSync } from 'node:zlib';
import http from 'node:http';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '../..');
const BIN = process.env.DD_BIN || path.join(root, 'target/debug/dongdong');
const CHROMIUM = process.env.DD_CHROMIUM || '/usr/bin/chromium';
const ARTIFACTS = path.join(here, 'artifacts');
const SHOTS = process.env.DD_SCREENSHOTS ? path.resolve(process.env.DD_SCREENSHOTS) : null;
const STEP_MS = 15000;

let server;
let browser;
let base;
const pages = new Set();
const contexts = new Set();

/** A free TCP port on 127.0.0.1. */
function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/**
 * Writes a config for `dongdong serve` on two free ports with a fresh data
 * directory and no secret (so the dev secret and dev sign-in are on), and
 * starts it.
 */
async function startServer() {
  const dir = mkdtempSync(path.join(tmpdir(), 'dd-web-'));
  const config = path.join(dir, 'dongdong.toml');
  writeFileSync(config, `
[server]
listen = "127.0.0.1:${await freePort()}"
http = "127.0.0.1:${await freePort()}"

[storage]
data_dir = "${path.join(dir, 'data')}"

[log]
filter = "warn"

# Capacity 1: one busy agent makes the next customer wait in line.
[[cs.groups]]
tenant = "demo"
id = "default"
name = "Pre-sales"
auto_join = true
default_capacity = 1

# Only fay serves returns; nobody joins it by going online.
[[cs.groups]]
tenant = "demo"
id = "returns"
name = "Returns"
auto_join = false
agents = ["fay"]

# lee picks customers himself.
[[cs.groups]]
tenant = "demo"
id = "vip"
name = "VIP"
policy = "manual-pick"
auto_join = false
agents = ["lee"]
`);
  return { dir, config, ...(await spawnServer(config)) };
}

/** Runs the server on `config`; resolves once it listens. */
async function spawnServer(config) {
  const child = spawn(BIN, ['serve', '--config', config], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => { stderr += d; });
  const line = await new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`the server did not start: ${stderr}`)), 30000);
    child.stdout.on('data', (d) => {
      out += d;
      const m = out.match(/listening ws=(\S+) http=(\S+)/);
      if (m) {
        clearTimeout(timer);
        resolve(m);
      }
    });
    child.on('exit', (code) => reject(new Error(`the server exited with ${code}: ${stderr}`)));
  });
  return { child, http: line[2], stderr: () => stderr };
}

async function stopServer() {
  if (server.child.exitCode !== null) return;
  const exited = new Promise((r) => server.child.once('exit', r));
  server.child.kill('SIGTERM');
  await exited;
}

before(async () => {
  server = await startServer();
  base = server.http;
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync',
      // The test's shop page is served by the test (an address-less origin):
      // Chromium would keep it from loading the widget from this machine.
      '--disable-features=LocalNetworkAccessChecks'],
  });
});

after(async () => {
  if (browser) await browser.close();
  if (server) {
    await stopServer();
    rmSync(server.dir, { recursive: true, force: true });
  }
});

/** A test that keeps a picture of every open page when it fails. */
function scenario(name, fn) {
  test(name, async () => {
    try {
      await fn();
    } catch (e) {
      await keepScreenshots(name);
      throw e;
    } finally {
      // Every session still open ends, and everyone leaves: the next
      // scenario starts with an empty line and nobody connected (a
      // session left open would come back to the queue after the agent's
      // grace period, in the middle of another scenario).
      for (const p of pages) if (!p.isClosed() && new URL(p.url()).pathname === '/agent') await endAll(p).catch(() => {});
      for (const c of contexts) await c.close().catch(() => {});
      contexts.clear();
      pages.clear();
    }
  });
}

async function keepScreenshots(name) {
  mkdirSync(ARTIFACTS, { recursive: true });
  let i = 0;
  for (const p of pages) {
    if (p.isClosed()) continue;
    i += 1;
    const file = path.join(ARTIFACTS, `${name.replace(/\W+/g, '-')}-${i}-${p.ddName}.png`);
    await p.screenshot({ path: file, fullPage: true }).catch(() => {});
    console.error(`screenshot kept: ${file}`);
  }
}

/** A new person: their own browser context and a page named for messages. */
async function person(name, viewport = { width: 1100, height: 720 }, locale = 'en-US') {
  const context = await browser.newContext({ viewport, locale });
  contexts.add(context);
  return { context, name, open: (url) => openPage(context, name, url) };
}

async function openPage(context, name, url) {
  const page = await context.newPage();
  page.ddName = name;
  page.setDefaultTimeout(STEP_MS);
  page.ddErrors = [];
  page.on('pageerror', (e) => page.ddErrors.push(e.message));
  page.on('console', (m) => { if (m.type() === 'error') page.ddErrors.push(m.text()); });
  pages.add(page);
  await page.goto(`${base}${url}`);
  return page;
}

async function devToken(user, role, name = '') {
  const r = await fetch(`${base}/api/v1/dev/token`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ tenant: 'demo', user, role, name }),
  });
  assert.equal(r.status, 200);
  return (await r.json()).token;
}

async function signIn(page, user, role, name = '') {
  await page.fill('#signin-tenant', 'demo');
  await page.fill('#signin-user', user);
  if (name) await page.fill('#signin-name', name);
  await page.selectOption('#signin-role', role);
  await page.click('#signin-submit');
  await page.waitForSelector('#conn[data-status="online"]', { timeout: STEP_MS }).catch(() => {});
}

/** Gives `agent` room for `capacity` customers in the default group (as an admin). */
async function setCapacity(agent, capacity) {
  const admin = await devToken('sam', 'admin');
  const r = await fetch(`${base}/api/v1/groups/default/agents/${agent}`, {
    method: 'PUT', headers: { 'content-type': 'application/json', authorization: `Bearer ${admin}` }, body: JSON.stringify({ capacity }),
  });
  assert.equal(r.status, 200, await r.text());
}

/** An agent opens the workspace, signs in and sets themself online. */
async function agentOnline(name, viewport) {
  const page = await (await person(name, viewport)).open('/agent');
  await signIn(page, name, 'agent');
  await online(page);
  await page.selectOption('#status', 'ONLINE');
  return page;
}

async function online(page) {
  await page.waitForSelector('#conn[data-status="online"]');
}

/** Waits until the page's text at `selector` matches. */
async function waitText(page, selector, re) {
  await page.waitForFunction(([s, src, flags]) => {
    const e = document.querySelector(s);
    return !!e && new RegExp(src, flags).test(e.textContent);
  }, [selector, re.source, re.flags]);
}

/** The messages shown: { id, seq, text } in display order. */
function shownMessages(page) {
  return page.$$eval('#messages .msg', (ms) => ms.map((m) => ({
    id: m.dataset.msgId, seq: Number(m.dataset.seq), text: m.querySelector('.bubble').textContent, sending: m.classList.contains('sending'),
  })));
}

async function waitMessage(page, text) {
  await page.waitForFunction((t) => [...document.querySelectorAll('#messages .msg:not(.sending) .bubble')].some((b) => b.textContent === t), text);
}

async function say(page, text) {
  await page.fill('#input', text);
  await page.press('#input', 'Enter');
  await waitMessage(page, text);
}

async function stat(page, group, name) {
  return page.$eval(`[data-group="${group}"] [data-stat="${name}"]`, (e) => e.textContent);
}

async function waitStat(page, group, name, value) {
  await page.waitForFunction(([g, n, v]) => {
    const e = document.querySelector(`[data-group="${g}"] [data-stat="${n}"]`);
    return e && e.textContent === v;
  }, [group, name, String(value)]);
}

/** With DD_SCREENSHOTS set: the page at desktop size and at phone size. */
async function shot(page, file) {
  if (!SHOTS) return;
  mkdirSync(SHOTS, { recursive: true });
  const size = page.viewportSize();
  for (const [suffix, viewport] of [['', { width: 1280, height: 800 }], ['-phone', { width: 390, height: 844 }]]) {
    await page.setViewportSize(viewport);
    await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
    await page.screenshot({ path: path.join(SHOTS, file.replace(/\.png$/, `${suffix}.png`)) });
  }
  await page.setViewportSize(size);
}

/** Ends every session in an agent's list. */
async function endAll(page) {
  for (let i = 0; i < 10; i += 1) {
    const id = await page.$eval('#sessions [data-session-id]', (b) => b.dataset.sessionId).catch(() => null);
    if (!id) return;
    await page.click(`[data-session-id="${id}"]`, { timeout: 2000 });
    await endSession(page);
    await page.waitForFunction((x) => !document.querySelector(`[data-session-id="${x}"]`), id, { timeout: 5000 });
  }
}

/** End session: the button asks once, the second press ends. */
async function endSession(page) {
  await page.click('#end');
  await page.click('#end[data-confirm]');
}

function assertOnceInOrder(ms, expected) {
  const ids = ms.map((m) => m.id);
  assert.equal(new Set(ids).size, ids.length, `a message is shown twice: ${JSON.stringify(ms)}`);
  assert.deepEqual(ms.map((m) => m.text), expected);
}

scenario('queue, assignment, chat, transfer, reload, reconnect, end and rating', async () => {
  // An admin creates a quick reply for the group over the HTTP API.
  const admin = await devToken('sam', 'admin');
  const r = await fetch(`${base}/api/v1/quick-replies`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${admin}` },
    body: JSON.stringify({ group: 'default', title: 'Parcel', text: 'Your parcel is on its way; the tracking number follows.' }),
  });
  assert.equal(r.status, 201, await r.text());

  const sup = await (await person('supervisor')).open('/supervisor');
  await signIn(sup, 'sam', 'admin');
  await waitStat(sup, 'default', 'queue_length', 0);

  // bob goes online first and gets dave: with capacity 1 he is then full.
  const bob = await agentOnline('bob');
  await waitText(bob, '#load', /0\/1/);
  const dave = await (await person('dave')).open('/chat');
  await signIn(dave, 'dave', 'customer');
  await dave.waitForSelector('#request');
  await dave.fill('#question', 'is the red one in stock?');
  await dave.click('#request');
  await waitText(dave, '#agent-name', /bob/);
  await waitText(bob, '#load', /1\/1/);

  // carol asks and waits in line; the supervisor sees the queue grow.
  const carolP = await person('carol', { width: 400, height: 700 });
  let carol = await carolP.open('/chat');
  // Her token carries a display name (the dev sign-in's "Display name").
  await signIn(carol, 'carol', 'customer', 'Carol 王');
  await waitText(carol, '#who', /^Carol 王$/);
  await carol.selectOption('#group', 'default');
  await carol.fill('#question', 'hello, I need help with my order');
  await carol.press('#question', 'Enter');
  await waitText(carol, '#queue-position', /next in line|number 1/);
  await waitStat(sup, 'default', 'queue_length', 1);
  await shot(carol, 'console-chat-waiting.png');
  // hal queues behind her: number 2 in line.
  const hal = await (await person('hal', { width: 400, height: 700 })).open('/chat');
  await signIn(hal, 'hal', 'customer');
  await hal.selectOption('#group', 'default');
  await hal.click('#request');
  await waitText(hal, '#queue-position', /number 2/);
  await waitStat(sup, 'default', 'queue_length', 2);
  await shot(sup, 'console-supervisor.png');

  // amy signs in and goes online: carol is assigned to her at once.
  const amy = await agentOnline('amy');
  await amy.waitForSelector('.notice.assign');
  await amy.waitForSelector('[data-customer="carol"]');
  await waitText(carol, '#agent-name', /amy/);
  // hal moves up live, then gives up waiting.
  await waitText(hal, '#queue-position', /next in line/);
  await waitStat(sup, 'default', 'queue_length', 1);
  await hal.click('#cancel');
  await hal.waitForSelector('#request');
  await waitStat(sup, 'default', 'queue_length', 0);
  await waitMessage(amy, 'hello, I need help with my order');
  // amy sees her name, on the session, the header and the bubbles, with initials.
  await waitText(amy, '[data-customer="carol"] strong', /^Carol 王$/);
  await waitText(amy, '#conv-customer', /^Carol 王$/);
  await waitText(amy, '#messages .msg.theirs .speaker', /^Carol 王$/);
  assert.equal(await amy.textContent('#pane .conv-head .avatar'), 'C');
  // The customer panel: where she came from, her device, a private note.
  await waitText(amy, '#panel-name', /^Carol 王$/);
  assert.match(await amy.textContent('#panel-device'), /Chrome/);
  assert.equal(await amy.getAttribute('#panel-page', 'href'), `${base}/chat`);
  // In a window this narrow the panel opens over the conversation, and closes.
  await amy.click('#show-panel');
  await amy.fill('#customer-note', 'prefers e-mail');
  await amy.click('#save-note');
  await waitText(amy, '#note-meta', /amy/);
  await amy.click('#customer-panel .close-panel');
  assert.equal(await amy.isHidden('#customer-panel'), true);

  // amy sees that carol is online.
  await waitText(amy, '#customer-presence', /online/);
  // Each sees the other typing, and it goes when the message comes.
  await amy.fill('#input', 'Hi carol');
  await waitText(carol, '#typing:not([hidden])', /^amy is typing…$/);
  await say(amy, 'Hi carol, I am amy. What is the order number?');
  await waitMessage(carol, 'Hi carol, I am amy. What is the order number?');
  await carol.waitForSelector('#typing', { state: 'hidden' });
  await carol.fill('#input', 'It is');
  await waitText(amy, '#typing:not([hidden])', /^Carol 王 is typing…$/);
  await say(carol, 'It is 1234');
  await waitMessage(amy, 'It is 1234');
  const picture = `${base}/web/icon.svg`;
  await amy.fill('#input', picture);
  await amy.check('#as-image');
  await amy.press('#input', 'Enter');
  await carol.waitForSelector(`#messages img.image[src="${picture}"]`);
  // A quick reply of the group, picked from the list.
  await amy.selectOption('#quick-replies', { label: 'Parcel (default)' });
  assert.equal(await amy.inputValue('#input'), 'Your parcel is on its way; the tracking number follows.');
  await amy.press('#input', 'Enter');
  await waitMessage(carol, 'Your parcel is on its way; the tracking number follows.');
  await amy.waitForFunction(() => [...document.querySelectorAll('#messages img.image')].every((i) => i.complete && i.naturalWidth > 0));
  await shot(amy, 'console-agent.png');

  // bob frees his slot; amy hands carol over to him.
  await bob.click('[data-customer="dave"]');
  await endSession(bob);
  await dave.waitForSelector('#rate');
  await waitText(bob, '#load', /0\/1/);
  // The picker lists the agents free now, with their load; a note goes along.
  await amy.focus('#transfer-target');
  await amy.waitForSelector('#transfer-target option[value="agent:bob"]', { state: 'attached' });
  assert.match(await amy.textContent('#transfer-target option[value="agent:bob"]'), /bob \(0\/1\)/);
  await amy.selectOption('#transfer-target', 'agent:bob');
  await amy.fill('#transfer-note', 'order 1234, parcel question');
  await amy.click('#transfer');
  await bob.waitForSelector('[data-customer="carol"]');
  await amy.waitForFunction(() => !document.querySelector('[data-customer="carol"]'));
  await waitText(carol, '#agent-name', /bob/);
  await bob.click('[data-customer="carol"]');
  // bob reads what carol and amy said before (the session's earlier conversation),
  // the hand-over marked in both transcripts, and amy's note.
  await waitMessage(bob, 'It is 1234');
  await waitText(bob, '#transfer-note-shown', /amy: order 1234, parcel question/);
  await say(bob, 'Hello carol, bob here; I will take it from here.');
  await waitMessage(carol, 'Hello carol, bob here; I will take it from here.');
  await waitText(bob, '#messages .handover', /amy → bob/);
  await waitText(carol, '#messages .handover', /amy transferred you to bob/);

  // carol reloads mid-chat: the whole conversation again, each message once, in order.
  const expected = [
    'hello, I need help with my order',
    'Hi carol, I am amy. What is the order number?',
    'It is 1234',
    '',
    'Your parcel is on its way; the tracking number follows.',
    'Hello carol, bob here; I will take it from here.',
  ];
  await carol.reload();
  await online(carol);
  await waitText(carol, '#agent-name', /bob/);
  await waitMessage(carol, expected[expected.length - 1]);
  await carol.waitForFunction((n) => document.querySelectorAll('#messages .msg').length >= n, expected.length);
  assertOnceInOrder(await shownMessages(carol), expected);

  // bob reloads too: the session and both agents' part of it, each message once.
  await bob.reload();
  await online(bob);
  await bob.click('[data-customer="carol"]');
  await waitMessage(bob, expected[expected.length - 1]);
  assertOnceInOrder(await shownMessages(bob), expected);
  // He wrote last: the list says answered, not "waiting" since the assignment.
  await waitText(bob, '[data-customer="carol"]', /answered/);

  // carol closes the tab: bob sees her go; bob writes; she comes back in a
  // new tab, gets it, and bob sees her back.
  await waitText(bob, '#customer-presence', /^● online$/);
  await carol.close();
  await waitText(bob, '#customer-presence', /offline, last seen/);
  await say(bob, 'Your parcel left the warehouse today.');
  carol = await carolP.open('/chat');
  await signIn(carol, 'carol', 'customer', 'Carol 王');
  await waitMessage(carol, 'Your parcel left the warehouse today.');
  await waitText(bob, '#customer-presence', /^● online$/);
  // The pending message is replayed first; the session's history fills in
  // behind it (one more round trip).
  await carol.waitForFunction((n) => document.querySelectorAll('#messages .msg').length >= n, expected.length + 1);
  assertOnceInOrder(await shownMessages(carol), [...expected, 'Your parcel left the warehouse today.']);
  await shot(carol, 'console-chat.png');

  // bob ends the session; carol rates it.
  await endSession(bob);
  await carol.waitForSelector('#rate');
  await assertAccessible(carol, 'the rating form');
  // The stars are one radio group: arrow keys move the choice, one is checked.
  await carol.focus('.star[data-score="1"]');
  await carol.keyboard.press('ArrowRight');
  await carol.keyboard.press('ArrowRight');
  assert.deepEqual(await carol.$$eval('.star', (b) => b.map((x) => x.getAttribute('aria-checked'))),
    ['false', 'false', 'true', 'false', 'false'], 'from the first star, two steps right: three stars');
  await carol.click('.star[data-score="5"]');
  assert.deepEqual(await carol.$$eval('.star[aria-checked="true"]', (b) => b.map((x) => x.dataset.score)), ['5']);
  await carol.fill('#rate-comment', 'quick and friendly');
  await carol.click('#rate-submit');
  await carol.waitForSelector('#rated');
  await waitStat(sup, 'default', 'sessions_active', 0);

  // She comes back another day in another browser: her earlier chat is there,
  // dated, with the hand-over, and a new chat starts empty.
  const carolAgain = await (await person('carol-again', { width: 400, height: 700 })).open('/chat');
  await signIn(carolAgain, 'carol', 'customer', 'Carol 王');
  await carolAgain.waitForSelector('#past-chats details');
  assert.match(await carolAgain.textContent('#past-chats summary'), /default · bob · 5★/);
  await carolAgain.click('#past-chats summary');
  await carolAgain.waitForFunction(() => [...document.querySelectorAll('#past-chats .bubble')].some((b) => b.textContent === 'It is 1234'));
  await waitText(carolAgain, '#past-chats .handover', /amy transferred you to bob/);
  assert.equal(await carolAgain.locator('#messages .msg').count(), 0, 'the new chat starts empty');
  await assertAccessible(carolAgain, 'the widget with an earlier chat open');
  // bob finds it under Recent, read-only, and the note amy kept.
  await bob.click('#recent [data-past-id]');
  await bob.waitForFunction(() => [...document.querySelectorAll('#messages .bubble')].some((b) => b.textContent === 'It is 1234'));
  assert.equal(await bob.isHidden('#composer'), true);
  await bob.setViewportSize({ width: 1300, height: 760 });
  await bob.waitForFunction(() => document.querySelector('#customer-note').value === 'prefers e-mail');
  await shot(bob, 'console-agent-panel.png');

  await assertAccessible(sup, 'the supervisor view');
  await assertAccessible(bob, 'the workspace after a session');
  for (const p of [sup, bob, amy, dave, carol, hal]) assert.deepEqual(p.ddErrors, [], `${p.ddName}: errors in the page`);
});

scenario('leave a message when nobody is online; an agent claims and answers it', async () => {
  const erinP = await person('erin', { width: 400, height: 700 });
  let erin = await erinP.open('/chat');
  await assertAccessible(erin, 'the dev sign-in');
  assert.equal(await erin.textContent('#conn'), 'not signed in');
  assert.deepEqual(await erin.$$eval('#signin-role option', (o) => o.map((x) => x.value)), ['customer'],
    'the customer widget offers no other role');
  await signIn(erin, 'erin', 'customer');
  await erin.selectOption('#group', 'returns');
  await assertAccessible(erin, 'picking a team');
  // Nobody of Returns is online: the button says what will happen.
  await waitText(erin, '#request', /^Leave a message$/);
  await erin.fill('#question', 'my blender is broken');
  await erin.click('#request');
  await erin.waitForSelector('#offer');
  // What she typed is kept, and the reason is in our words only.
  assert.equal(await erin.inputValue('#left-text'), 'my blender is broken');
  const reason = await erin.textContent('#offer-reason');
  assert.match(reason, /^Nobody is online right now\. Leave a message/);
  assert.doesNotMatch(reason, /no agent of the group/);
  await assertAccessible(erin, 'the leave-a-message form');
  await erin.fill('#left-text', 'my blender is broken, please call me');
  await erin.fill('#left-contact', '555-0100');
  await erin.click('#leave');
  await erin.waitForSelector('#left');
  await erin.close();

  // fay works from a phone-sized window.
  const fay = await agentOnline('fay', { width: 390, height: 740 });
  await fay.waitForSelector('[data-left-id] .claim');
  await waitText(fay, '#left-messages', /blender is broken/);
  // The number she left is a way to call her back.
  assert.equal(await fay.getAttribute('#left-messages a.contact-link', 'href'), 'tel:5550100');
  await fay.click('[data-left-id] .claim');
  await fay.waitForSelector('#composer:not([hidden])');
  // The question opens the conversation; no error on the way.
  await waitMessage(fay, 'my blender is broken, please call me');
  assert.equal(await fay.$$eval('.notice.error', (n) => n.length), 0, 'no error notice after the claim');
  await say(fay, 'Hi erin, a new blender is on its way.');
  const overflow = await fay.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `the agent page scrolls sideways on a phone by ${overflow}px`);

  erin = await erinP.open('/chat');
  await signIn(erin, 'erin', 'customer');
  await waitMessage(erin, 'Hi erin, a new blender is on its way.');
  // She sees her own message above the answer, once each, and can reply.
  await waitMessage(erin, 'my blender is broken, please call me');
  const ms = await shownMessages(erin);
  assertOnceInOrder(ms, ['my blender is broken, please call me', 'Hi erin, a new blender is on its way.']);
  await erin.waitForSelector('#composer:not([hidden])');
  // The thread and one reply box, not another "How can we help?" form; her
  // question was read by the agent who answered it.
  await erin.waitForSelector('#answered');
  assert.equal(await erin.$$eval('#pick', (n) => n.length), 0);
  await erin.waitForSelector('#messages .msg.mine [data-receipt="read"]');
  await say(erin, 'thank you!');
  await waitMessage(fay, 'thank you!');
  await assertAccessible(erin, 'the answer to a left message');
  await assertAccessible(fay, 'answering a left message on a phone');

  // After a reload the answered message is an ordinary chat, listed; erin's
  // follow-up chimes, counts in the title, and opens there.
  await fay.reload();
  await online(fay);
  await fay.waitForSelector('#chats [data-peer="erin"]');
  const chimes = async () => Number(await fay.evaluate(() => document.body.dataset.chimes || 0));
  const before = await chimes();
  await say(erin, 'one more thing: the lid is cracked too');
  await fay.waitForFunction((n) => Number(document.body.dataset.chimes || 0) > n, before);
  await fay.waitForSelector('#chats [data-peer="erin"] [data-unread="1"]');
  assert.match(await fay.title(), /^\(1\) /);
  await fay.click('#chats [data-peer="erin"]');
  await waitMessage(fay, 'one more thing: the lid is cracked too');
  // Its history comes right after it.
  await fay.waitForFunction(() => document.querySelectorAll('#messages .msg').length >= 4);
  assertOnceInOrder(await shownMessages(fay), ['my blender is broken, please call me', 'Hi erin, a new blender is on its way.',
    'thank you!', 'one more thing: the lid is cracked too']);
  await fay.waitForFunction(() => !document.querySelector('#chats [data-unread]') && !/^\(/.test(document.title));
  await say(fay, 'A new lid is in the box too.');
  await waitMessage(erin, 'A new lid is in the box too.');
  // In a browser she never used, her question and the answers are there too.
  const fresh = await (await person('erin-phone', { width: 400, height: 700 })).open('/chat');
  await signIn(fresh, 'erin', 'customer');
  await waitMessage(fresh, 'A new lid is in the box too.');
  await fresh.waitForFunction(() => document.querySelectorAll('#messages .msg').length >= 5);
  await fresh.waitForSelector('#answered');
  await fresh.waitForSelector('#composer:not([hidden])');
  assertOnceInOrder(await shownMessages(fresh), ['my blender is broken, please call me', 'Hi erin, a new blender is on its way.',
    'thank you!', 'one more thing: the lid is cracked too', 'A new lid is in the box too.']);
  await say(fresh, 'got it, thanks');
  await waitMessage(fay, 'got it, thanks');
  await assertAccessible(fresh, 'an answered left message in another browser');
  assert.deepEqual(fresh.ddErrors, []);
  await assertAccessible(fay, 'a chat outside a session');
  assert.deepEqual(fay.ddErrors, []);
  assert.deepEqual(erin.ddErrors, []);
});

scenario('an agent of a manual-pick group takes the next customer', async () => {
  const lee = await agentOnline('lee');
  const max = await (await person('max', { width: 400, height: 700 })).open('/chat#group=vip');
  await signIn(max, 'max', 'customer');
  await max.fill('#question', 'a question for the VIP desk');
  await max.click('#request');
  await waitText(max, '#queue-position', /next in line/);
  // He adds to his question while he waits: held until an agent takes him.
  await max.fill('#input', 'it is about order 77');
  await max.press('#input', 'Enter');
  await waitText(max, '#held', /it is about order 77/);
  // A photo attached while waiting is held too (it was uploaded and dropped).
  await max.setInputFiles('#attach-input', { name: 'receipt.png', mimeType: 'image/png', buffer: makePng(120, 90) });
  await waitText(max, '#held', /receipt\.png/);
  await max.fill('#input', 'and the invoice');
  await max.press('#input', 'Enter');
  await lee.waitForSelector('[data-take="vip"]:not([disabled])');
  await lee.click('[data-take="vip"]');
  await lee.waitForSelector('[data-customer="max"]');
  await waitText(max, '#agent-name', /lee/);
  await waitMessage(lee, 'a question for the VIP desk');
  await waitMessage(lee, 'and the invoice');
  const texts = (await shownMessages(lee)).map((m) => m.text);
  assert.ok(texts.indexOf('it is about order 77') < texts.indexOf('and the invoice'), `in the order typed: ${texts}`);
  assert.equal(texts.filter((x) => x === 'it is about order 77').length, 1);
  // The photo arrived between the two, as it was attached.
  await lee.waitForSelector('#messages .msg.theirs a.file-image');
  const order = await lee.$$eval('#messages .msg', (ms) => ms.map((m) => (m.querySelector('a.file-image') ? 'photo' : m.querySelector('.bubble').textContent)));
  assert.ok(order.indexOf('it is about order 77') < order.indexOf('photo') && order.indexOf('photo') < order.indexOf('and the invoice'), `in the order given: ${order}`);
});

scenario('the owner sets up a group, two agents and three quick replies in /supervisor alone; a customer is served by them', async () => {
  const owner = await (await person('owner', { width: 1200, height: 900 }, 'zh-CN')).open('/supervisor');
  await owner.waitForSelector('#signin-submit');
  await shot(owner, 'first-day-1-sign-in.png');
  await signIn(owner, 'olive', 'admin');
  await owner.waitForSelector('#settings #group-form');
  await shot(owner, 'first-day-2-fresh.png');
  await assertAccessible(owner, 'the settings');
  // A mistake is named by its field, in the page's language, before saving.
  await owner.fill('#group-id', 'presale');
  await owner.fill('#group-name', '售前咨询');
  await owner.selectOption('#group-policy', 'round-robin');
  await owner.fill('#group-max-queue', '0');
  await owner.click('#group-save');
  await waitText(owner, '#group-max-queue-error', /^同时排队的最多人数：请填写 1 到 10000 之间的整数。$/);
  assert.equal(await owner.getAttribute('#group-max-queue', 'aria-invalid'), 'true');
  assert.equal(await owner.evaluate(() => document.activeElement.id), 'group-max-queue');
  await owner.fill('#group-max-queue', '20');
  await owner.click('#group-save');
  await owner.waitForSelector('[data-settings-group="presale"]');
  assert.equal(await owner.getAttribute('#group-max-queue', 'aria-invalid'), null);
  // The live view shows it at once.
  await owner.waitForSelector('.group[data-group="presale"]');
  // Its agents, with how many chats each takes at once.
  for (const [agent, capacity] of [['odile', '2'], ['otto', '3']]) {
    await owner.fill('#agent-id', agent);
    await owner.fill('#agent-capacity', capacity);
    await owner.click('#agent-add');
    await owner.waitForSelector(`[data-settings-agent="${agent}"]`);
  }
  await owner.fill('#agent-id', 'oscar');
  await owner.fill('#agent-capacity', '0');
  await owner.click('#agent-add');
  await waitText(owner, '#agent-capacity-error', /同时接待人数：请填写 1 到 1000 之间的整数。/);
  assert.equal(await owner.$$eval('[data-settings-agent="oscar"]', (n) => n.length), 0);
  await owner.$eval('#settings', (e) => e.scrollIntoView());
  await shot(owner, 'first-day-3-group.png');
  // otto takes two at once after all: changed in place.
  await owner.fill('[data-capacity-of="otto"]', '2');
  await owner.press('[data-capacity-of="otto"]', 'Tab');
  await owner.waitForFunction(() => document.querySelector('.group[data-group="presale"] tr[data-agent="otto"]')?.textContent.includes('0/2'));
  // Three quick replies for the group.
  const replies = [['问候', '您好，请问有什么可以帮您？'], ['发货', '订单会在 24 小时内发货。'], ['再见', '感谢您的咨询，再见！']];
  for (const [title, text] of replies) {
    await owner.selectOption('#reply-group', 'presale');
    await owner.fill('#reply-title', title);
    await owner.fill('#reply-text', text);
    await owner.click('#reply-save');
    await owner.waitForFunction((x) => [...document.querySelectorAll('[data-settings-reply]')].some((r) => r.textContent.includes(x)), title);
  }
  await assertAccessible(owner, 'the settings with a group, agents and replies');
  await assertChinese(owner, 'the settings', ['olive', 'demo', 'default', 'returns', 'vip', 'presale', 'Pre', 'sales', 'Returns', 'VIP', 'odile', 'otto']);
  await owner.$eval('#reply-form', (e) => e.scrollIntoView({ block: 'end' }));
  await shot(owner, 'first-day-4-replies.png');
  await shot(owner, 'console-settings.png');
  assert.deepEqual(owner.ddErrors, []);

  // odile goes online and has the replies; a customer picks the group and is served.
  const odile = await agentOnline('odile');
  await waitText(odile, '#load', /presale/);
  // (and the demo group's: every agent joins it by going online)
  assert.deepEqual((await odile.$$eval('#quick-replies option', (o) => o.map((x) => x.textContent).filter((x) => x.endsWith('(presale)')))).sort(),
    ['问候 (presale)', '发货 (presale)', '再见 (presale)'].sort());
  const ophelia = await (await person('ophelia', { width: 400, height: 700 })).open('/chat');
  await signIn(ophelia, 'ophelia', 'customer');
  await ophelia.selectOption('#group', 'presale');
  await ophelia.fill('#question', 'when will my order ship?');
  await ophelia.click('#request');
  await waitText(ophelia, '#agent-name', /odile/);
  await odile.click('[data-customer="ophelia"]');
  await odile.selectOption('#quick-replies', { label: '发货 (presale)' });
  await odile.press('#input', 'Enter');
  await waitMessage(ophelia, '订单会在 24 小时内发货。');
  await shot(odile, 'first-day-5-agent.png');
  await shot(ophelia, 'first-day-6-customer.png');
  await owner.$eval('.group[data-group="presale"]', (e) => e.scrollIntoView());
  // Her load shows where it is spent: 1 in presale, 0 (+1 elsewhere) in the demo group she also joined.
  await owner.waitForSelector('.group[data-group="presale"] tr[data-agent="odile"] [data-group-load="1"]');
  await owner.waitForSelector('.group[data-group="default"] tr[data-agent="odile"] [data-group-load="0"]');
  await waitText(owner, '.group[data-group="default"] tr[data-agent="odile"]', /其他组 \+1/);
  await shot(owner, 'first-day-7-supervisor.png');
  await endSession(odile);
  await odile.waitForFunction(() => !document.querySelector('[data-customer="ophelia"]'));
});

scenario('an agent who chooses Online before the connection is up is set online once it opens', async () => {
  await setCapacity('nell', 1);
  const nellP = await person('nell');
  // A slow network: every WebSocket opens 2.5 s late.
  await nellP.context.addInitScript(() => {
    const Real = window.WebSocket;
    window.WebSocket = class SlowSocket extends Real {
      constructor(...args) {
        super(...args);
        this.ddOpenAt = Date.now() + 2500;
      }

      get readyState() {
        const r = super.readyState;
        return r === 1 && Date.now() < this.ddOpenAt ? 0 : r;
      }

      set onopen(fn) {
        super.onopen = fn ? (e) => setTimeout(() => fn.call(this, e), Math.max(0, this.ddOpenAt - Date.now())) : null;
      }

      get onopen() {
        return super.onopen;
      }
    };
  });
  const nell = await nellP.open('/agent');
  await nell.fill('#signin-tenant', 'demo');
  await nell.fill('#signin-user', 'nell');
  await nell.selectOption('#signin-role', 'agent');
  await nell.click('#signin-submit');
  await nell.waitForSelector('#status');
  assert.notEqual(await nell.getAttribute('#conn', 'data-status'), 'online', 'the socket is not up yet');
  await nell.selectOption('#status', 'ONLINE');
  // Kept, and set by the server once the connection opens.
  await nell.waitForSelector('#status[data-status="ONLINE"]');
  assert.equal(await nell.inputValue('#status'), 'ONLINE');
  const nora = await (await person('nora', { width: 400, height: 700 })).open('/chat');
  await signIn(nora, 'nora', 'customer');
  await nora.fill('#question', 'is anyone there?');
  await nora.click('#request');
  await waitText(nora, '#agent-name', /nell/);
  await nell.click('[data-customer="nora"]');
  await waitMessage(nell, 'is anyone there?');
  assert.deepEqual(nell.ddErrors, []);
  await endSession(nell);
  await nell.waitForFunction(() => !document.querySelector('[data-customer="nora"]'));
});

scenario('the keyboard: focus survives redraws, Alt+arrows move between chats, End asks first', async () => {
  await setCapacity('vera', 3);
  const vera = await agentOnline('vera');
  const customers = [];
  for (const who of ['wes', 'xia']) {
    const c = await (await person(who, { width: 400, height: 700 })).open('/chat');
    await signIn(c, who, 'customer');
    await c.fill('#question', `hello from ${who}`);
    await c.click('#request');
    await waitText(c, '#agent-name', /vera/);
    customers.push(c);
  }
  const [wes, xia] = customers;
  await vera.waitForSelector('[data-customer="xia"]');
  const focused = () => vera.evaluate(() => {
    const a = document.activeElement;
    return a === document.body ? 'body' : a.id || a.dataset.customer || a.tagName;
  });
  // On a session in the list: a message redraws the list, the focus stays.
  await vera.focus('[data-customer="wes"]');
  await say(xia, 'are you there?');
  await vera.waitForFunction(() => document.querySelector('[data-customer="xia"] [data-unread]'));
  assert.equal(await focused(), 'wes');
  // On Transfer in the header: a message redraws the header, the focus stays.
  await vera.keyboard.press('Enter');
  await vera.focus('#transfer');
  await say(wes, 'my parcel is late');
  await waitMessage(vera, 'my parcel is late');
  assert.equal(await focused(), 'transfer');
  // Alt+↓ opens the next chat with the cursor in the reply box; Alt+↑ back.
  await vera.keyboard.press('Alt+ArrowDown');
  await waitText(vera, '#conv-customer', /xia/);
  assert.equal(await focused(), 'input');
  await vera.keyboard.press('Alt+ArrowUp');
  await waitText(vera, '#conv-customer', /wes/);
  await vera.focus('#messages');
  await vera.keyboard.press('Alt+KeyM');
  assert.equal(await focused(), 'input');
  // End asks first; after it the focus is on the next chat, not lost.
  await vera.focus('#end');
  await vera.keyboard.press('Enter');
  await vera.waitForSelector('#end[data-confirm]');
  assert.equal(await focused(), 'end');
  assert.equal(await vera.$$eval('[data-customer="wes"]', (n) => n.length), 1, 'not ended by one press');
  await vera.keyboard.press('Enter');
  await vera.waitForFunction(() => !document.querySelector('[data-customer="wes"]'));
  assert.notEqual(await focused(), 'body');
  await assertAccessible(vera, 'the workspace after ending by keyboard');
  assert.deepEqual(vera.ddErrors, []);
  await vera.click('[data-customer="xia"]');
  await endSession(vera);
  await vera.waitForFunction(() => !document.querySelector('[data-customer="xia"]'));
});

scenario('an agent hears and sees what needs attention: a chime, a desktop notification, the title', async () => {
  const unaP = await person('una');
  // Desktop notifications as granted, recorded instead of shown.
  await unaP.context.addInitScript(() => {
    window.ddShown = [];
    window.Notification = class {
      static permission = 'granted';
      static requestPermission() { return Promise.resolve('granted'); }
      constructor(title, options) { window.ddShown.push(`${title}: ${options.body}`); }
      close() {}
    };
  });
  await setCapacity('una', 3);
  const una = await unaP.open('/agent');
  await signIn(una, 'una', 'agent', 'Una');
  await online(una);
  await una.selectOption('#status', 'ONLINE');
  assert.equal(await una.isChecked('#desktop-notify'), true);
  assert.equal(await una.isChecked('#sound'), true);
  const customers = [];
  for (const [who, name] of [['pia', 'Pia'], ['quinn', 'Quinn']]) {
    const c = await (await person(who, { width: 400, height: 700 })).open('/chat');
    await signIn(c, who, 'customer', name);
    await c.click('#request');
    await waitText(c, '#agent-name', /Una/);
    customers.push(c);
  }
  const [pia, quinn] = customers;
  await una.waitForSelector('[data-customer="quinn"]');
  await una.click('[data-customer="pia"]');
  const chimes = async () => Number(await una.evaluate(() => document.body.dataset.chimes || 0));
  const before = await chimes();
  // A message in the session she is not looking at: a chime and a count.
  await say(quinn, 'are you there?');
  await una.waitForFunction((n) => Number(document.body.dataset.chimes || 0) > n, before);
  await waitText(una, '[data-customer="quinn"] .unread', /^1$/);
  await waitText(una, 'title', /^\(1\) /);
  // With the workspace in a background tab (headless Chromium keeps every
  // tab visible, so the page is told it is hidden): a desktop notification too.
  await una.evaluate(() => Object.defineProperty(document, 'hidden', { value: true, configurable: true }));
  await say(pia, 'I need an invoice');
  await una.waitForFunction(() => window.ddShown.some((s) => s === 'New message from Pia: I need an invoice'));
  // Muted: no more chimes.
  await una.evaluate(() => delete document.hidden);
  await una.uncheck('#sound');
  const muted = await chimes();
  await say(quinn, 'hello?');
  await waitText(una, '[data-customer="quinn"] .unread', /^2$/);
  assert.equal(await chimes(), muted);
  await assertAccessible(una, 'the workspace with two sessions');
});

scenario('read marks, unread badges cleared on every device, and recall', async () => {
  await setCapacity('rita', 3);
  const rita = await agentOnline('rita');
  // The same agent on a second device (another browser).
  const ritaToo = await (await person('rita-too')).open('/agent');
  await signIn(ritaToo, 'rita', 'agent');
  await online(ritaToo);
  const customers = [];
  for (const [who, name] of [['vic', 'Vic'], ['wen', 'Wen']]) {
    const c = await (await person(who, { width: 400, height: 700 })).open('/chat');
    await signIn(c, who, 'customer', name);
    await c.click('#request');
    await waitText(c, '#agent-name', /rita/);
    customers.push(c);
  }
  const [, wen] = customers;
  for (const page of [rita, ritaToo]) {
    await page.waitForSelector('[data-customer="wen"]');
    await page.click('[data-customer="vic"]');
  }
  // A message in a session neither device shows: a badge on both.
  await say(wen, 'first question');
  for (const page of [rita, ritaToo]) await waitText(page, '[data-customer="wen"] .unread', /^1$/);
  // Read on one device: the badge goes on both, and Wen sees "Read".
  await rita.click('[data-customer="wen"]');
  await waitMessage(rita, 'first question');
  for (const page of [rita, ritaToo]) {
    await page.waitForFunction(() => !document.querySelector('[data-customer="wen"] .unread'));
  }
  await wen.waitForSelector('#messages .msg.mine [data-receipt="read"]');
  // Rita's answer: "Sent", then "Read" once the widget shows it.
  await say(rita, 'how can I help?');
  await rita.waitForSelector('#messages .msg.mine [data-receipt="read"]');
  await waitMessage(wen, 'how can I help?');
  // Wen takes her message back: gone for everyone, a trace in its place.
  await wen.locator('#messages .msg.mine', { hasText: 'first question' }).locator('.recall').click();
  await wen.waitForSelector('#messages .msg.mine[data-recalled="true"]');
  await waitText(wen, '#messages .msg.mine[data-recalled="true"] .bubble', /^You recalled a message$/);
  for (const page of [rita, ritaToo]) {
    if (page === ritaToo) await page.click('[data-customer="wen"]');
    await waitText(page, '#messages .msg.theirs[data-recalled="true"] .bubble', /^Wen recalled a message$/);
    const texts = (await shownMessages(page)).map((m) => m.text);
    assert.ok(!texts.includes('first question'), `the words are gone: ${texts}`);
  }
  // Her own later message has no recall button once recalled ones are gone;
  // Rita cannot recall Wen's words (no button on theirs).
  assert.equal(await rita.$$eval('#messages .msg.theirs .recall', (b) => b.length), 0);
  await shot(rita, 'console-agent-receipts.png');
  await assertAccessible(wen, 'the widget with read marks and a recalled message');
  await assertAccessible(rita, 'the workspace with read marks and a recalled message');
});

/** A w×h PNG (solid colour, RGB), made without an image library. */
function makePng(w, h) {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k += 1) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc = (buf) => {
    let c = 0xffffffff;
    for (const b of buf) c = crcTable[(c ^ b) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const chunk = (type, data) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const body = Buffer.concat([Buffer.from(type), data]);
    const sum = Buffer.alloc(4);
    sum.writeUInt32BE(crc(body));
    return Buffer.concat([len, body, sum]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // RGB
  const row = Buffer.concat([Buffer.from([0]), Buffer.alloc(w * 3, 0x5a)]);
  const raw = Buffer.concat(Array.from({ length: h }, () => row));
  return Buffer.concat([Buffer.from('\x89PNG\r\n\x1a\n', 'binary'), chunk('IHDR', ihdr), chunk('IDAT', deflateSync(raw)), chunk('IEND', Buffer.alloc(0))]);
}

scenario('a customer sends a photo and a file: the agent sees the thumbnail, opens the image, downloads the file; nobody else can', async () => {
  await setCapacity('olga', 3);
  const olga = await agentOnline('olga');
  const kira = await (await person('kira', { width: 400, height: 700 })).open('/chat');
  await signIn(kira, 'kira', 'customer', 'Kira');
  await kira.click('#request');
  await waitText(kira, '#agent-name', /olga/);
  await olga.click('[data-customer="kira"]');
  // A photo, through the attach button's file input (as a person picks one).
  await kira.setInputFiles('#attach-input', { name: 'parcel.png', mimeType: 'image/png', buffer: makePng(800, 600) });
  await kira.waitForSelector('#messages .msg.mine a.file-image img[src]');
  await olga.waitForFunction(() => {
    const img = document.querySelector('#messages .msg.theirs a.file-image img');
    return img && img.complete && img.naturalWidth > 0;
  });
  const thumb = await olga.$eval('#messages .msg.theirs a.file-image img', (i) => [i.naturalWidth, i.naturalHeight]);
  assert.deepEqual(thumb, [320, 240], 'the thumbnail, not the full image');
  // Full size in a new tab.
  const [tab] = await Promise.all([olga.context().waitForEvent('page'), olga.click('#messages .msg.theirs a.file-image')]);
  await tab.waitForLoadState();
  assert.match(tab.url(), /\/api\/v1\/files\/[0-9a-f-]+\?t=demo&exp=\d+&sig=[0-9a-f]{64}$/);
  const full = await tab.evaluate(() => { const i = document.querySelector('img'); return i ? [i.naturalWidth, i.naturalHeight] : null; });
  assert.deepEqual(full, [800, 600]);
  await tab.close();
  // A file, dropped on the conversation: name, size, and the same bytes back.
  const words = Buffer.from('订单 4711：外箱破损，请看照片。');
  await kira.evaluate((bytes) => {
    const dt = new DataTransfer();
    dt.items.add(new File([new Uint8Array(bytes)], 'order.txt', { type: 'text/plain' }));
    const list = document.querySelector('#messages');
    for (const type of ['dragover', 'drop']) list.dispatchEvent(new DragEvent(type, { dataTransfer: dt, bubbles: true, cancelable: true }));
  }, [...words]);
  await olga.waitForSelector('#messages .msg.theirs a.file[href]');
  await waitText(olga, '#messages .msg.theirs a.file', new RegExp(`order\\.txt \\(${words.length} B\\)`));
  const got = await olga.$eval('#messages .msg.theirs a.file', async (a) => [...new Uint8Array(await (await fetch(a.href)).arrayBuffer())]);
  assert.deepEqual(Buffer.from(got), words);
  // Someone else of the tenant: neither file, not even a link to it.
  const ids = await olga.$$eval('#messages .msg.theirs [data-file-id]', (n) => n.map((e) => e.dataset.fileId));
  assert.equal(ids.length, 2);
  const mallory = await devToken('mallory', 'customer');
  for (const id of ids) {
    for (const [method, path] of [['GET', `/api/v1/files/${id}`], ['POST', `/api/v1/files/${id}/link`]]) {
      const res = await fetch(`${base}${path}`, { method, headers: { authorization: `Bearer ${mallory}` } });
      assert.equal(res.status, 404, `${method} ${path}`);
    }
  }
  await shot(olga, 'console-agent-files.png');
  await assertAccessible(olga, 'the workspace with a photo and a file');
  await assertAccessible(kira, 'the widget with a photo and a file');

  // olga hands kira to petra: petra opens the photo and the file the note speaks
  // of, live and in her transcript once the session has ended.
  await setCapacity('petra', 3);
  const petra = await agentOnline('petra');
  await olga.focus('#transfer-target');
  await olga.waitForSelector('#transfer-target option[value="agent:petra"]', { state: 'attached' });
  await olga.selectOption('#transfer-target', 'agent:petra');
  await olga.fill('#transfer-note', 'photo and invoice received');
  await olga.click('#transfer');
  await petra.click('[data-customer="kira"]');
  const photoShown = async (page, scope) => page.waitForFunction((s) => {
    const img = document.querySelector(`${s} a.file-image img`);
    return img && img.complete && img.naturalWidth > 0;
  }, scope);
  await photoShown(petra, '#messages .msg.theirs');
  await petra.waitForSelector('#messages .msg.theirs a.file[href]');
  assert.doesNotMatch(await petra.textContent('#messages'), /unavailable/, 'nothing shown as unavailable');
  const petraGot = await petra.$eval('#messages .msg.theirs a.file', async (a) => [...new Uint8Array(await (await fetch(a.href)).arrayBuffer())]);
  assert.deepEqual(Buffer.from(petraGot), words);
  await endSession(petra);
  await petra.waitForSelector('[data-past-id]');
  await petra.click('[data-past-id]');
  await photoShown(petra, '#messages .transcript-pane');
  assert.deepEqual(petra.ddErrors, []);
});

scenario('errors reach people in words; dev sign-in refuses bad input', async () => {
  const r = await fetch(`${base}/api/v1/dev/token`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ tenant: '', user: 'x', role: 'agent' }),
  });
  assert.equal(r.status, 400);
  assert.equal((await r.json()).error.code, 'INVALID_ARGUMENT');

  const gus = await (await person('gus')).open('/chat');
  await signIn(gus, 'gus', 'customer');
  await gus.waitForSelector('#request');
  // A customer asking for a group that does not exist gets the server's answer in words.
  await gus.evaluate(() => {
    const s = document.querySelector('#group');
    s.append(new Option('nope', 'no-such-group'));
    s.value = 'no-such-group';
  });
  await gus.click('#request');
  await waitText(gus, '#notices', /not found|no such group/i);
});

// It restarts the server; the scenarios after it use the restarted one.
scenario('pages reconnect by themselves after the server restarts; nothing is lost or shown twice', async () => {
  const ida = await agentOnline('ida');
  const jon = await (await person('jon', { width: 400, height: 700 })).open('/chat');
  await signIn(jon, 'jon', 'customer');
  await jon.selectOption('#group', 'default');
  await jon.fill('#question', 'before the restart');
  await jon.click('#request');
  await waitText(jon, '#agent-name', /ida/);
  await waitMessage(ida, 'before the restart');

  // The server goes away (clients get close code 1012) and comes back on the same ports and data.
  await stopServer();
  await jon.waitForSelector('#conn:not([data-status="online"])');
  await ida.waitForSelector('#conn:not([data-status="online"])');
  // Typed while the server is down: kept in the outbox, sent on return.
  await jon.fill('#input', 'typed while you were away');
  await jon.press('#input', 'Enter');
  Object.assign(server, await spawnServer(server.config));

  await online(jon);
  await online(ida);
  await waitMessage(ida, 'typed while you were away');
  await say(ida, 'and here is the answer');
  await waitMessage(jon, 'and here is the answer');
  const expected = ['before the restart', 'typed while you were away', 'and here is the answer'];
  for (const p of [jon, ida]) {
    const ms = await shownMessages(p);
    assertOnceInOrder(ms, expected);
    assert.deepEqual(ms.map((m) => m.seq), [1, 2, 3], `${p.ddName}: seq order`);
  }
});

scenario('tabs of one browser share one connection; closing the leading tab hands it over', async () => {
  const kim = await person('kim');
  const token = await devToken('kim', 'customer');
  const sockets = (page) => {
    page.ddSockets = 0;
    page.ddErrors = [];
    page.setDefaultTimeout(STEP_MS);
    page.on('websocket', () => { page.ddSockets += 1; });
    page.on('pageerror', (e) => page.ddErrors.push(e.message));
    return page;
  };
  const first = sockets(await kim.context.newPage());
  first.ddName = 'kim-1';
  pages.add(first);
  await first.goto(`${base}/chat#token=${token}`);
  await online(first);
  await first.waitForSelector('#request');
  // A second tab of the same browser: no socket of its own, and connected
  // at once through the first (its first request, the service state, too).
  const second = sockets(await kim.context.newPage());
  second.ddName = 'kim-2';
  pages.add(second);
  const started = Date.now();
  await second.goto(`${base}/chat#token=${token}`);
  await online(second);
  const connectMs = Date.now() - started;
  await second.waitForSelector('#request');
  assert.ok(connectMs < 1000, `the second tab connected in ${connectMs} ms`);
  assert.equal(second.ddSockets, 0, 'the second tab opened no WebSocket');
  assert.equal(first.ddSockets, 1);
  console.error(`second tab connected in ${connectMs} ms (page load included)`);
  // The leading tab closes: the other takes the connection over and goes on.
  const closedAt = Date.now();
  await first.close();
  while (second.ddSockets === 0) {
    assert.ok(Date.now() - closedAt < STEP_MS, 'the second tab did not take the connection over');
    await second.waitForTimeout(20);
  }
  await online(second);
  console.error(`the second tab took over ${Date.now() - closedAt} ms after the first closed`);
  assert.equal(second.ddSockets, 1, 'the second tab connected itself');
  await second.fill('#question', 'still here?');
  await second.click('#request');
  await second.waitForSelector('#waiting, #offer, #agent-name');
  assert.deepEqual(second.ddErrors, []);
});

scenario("docs/sdk.md's five-minute chat page works as written, from another origin", async () => {
  // The page exactly as the guide gives it, pointed at this server's ports,
  // served from a directory of its own on another origin.
  const guide = readFileSync(path.join(root, 'docs/sdk.md'), 'utf8');
  const page = guide.match(/```html\n([\s\S]*?)```/)[1];
  const info = await (await fetch(`${base}/api/v1/info`)).json();
  const html = page.replaceAll('127.0.0.1:7801', new URL(base).host).replaceAll('127.0.0.1:7800', `127.0.0.1:${info.ws_port}`);
  const site = http.createServer((req, res) => {
    res.writeHead(req.url.startsWith('/chat.html') ? 200 : 404, { 'content-type': 'text/html; charset=utf-8' });
    res.end(req.url.startsWith('/chat.html') ? html : 'not found');
  });
  await new Promise((r) => site.listen(0, '127.0.0.1', r));
  try {
    const at = (token, to) => `http://localhost:${site.address().port}/chat.html#token=${token}&to=${to}`;
    const [ada, ben] = [await person('ada'), await person('ben')];
    const adaPage = await ada.context.newPage();
    const benPage = await ben.context.newPage();
    for (const [p, n] of [[adaPage, 'ada'], [benPage, 'ben']]) {
      p.ddName = n;
      p.setDefaultTimeout(STEP_MS);
      p.ddErrors = [];
      p.on('pageerror', (e) => p.ddErrors.push(e.message));
      pages.add(p);
    }
    await adaPage.goto(at(await devToken('ada', 'customer'), 'ben'));
    await benPage.goto(at(await devToken('ben', 'customer'), 'ada'));
    await adaPage.waitForFunction(() => document.title === 'chat · open');
    await benPage.waitForFunction(() => document.title === 'chat · open');
    await adaPage.fill('#text', 'hi ben, from the guide');
    await adaPage.press('#text', 'Enter');
    await benPage.waitForFunction(() => document.querySelector('#log').textContent.includes('ada: hi ben, from the guide'));
    await benPage.fill('#text', 'hi ada');
    await benPage.press('#text', 'Enter');
    const both = ['ada: hi ben, from the guide', 'ben: hi ada'];
    for (const p of [adaPage, benPage]) {
      await p.waitForFunction((n) => document.querySelectorAll('#log li').length === n, both.length);
      assert.deepEqual(await p.$$eval('#log li', (ls) => ls.map((l) => l.textContent)), both);
      assert.deepEqual(p.ddErrors, []);
    }
  } finally {
    site.close();
  }
});

scenario('the widget embeds in a shop page with one script tag', async () => {
  const token = await devToken('kim', 'customer', 'Kim Lee');
  const kai = await agentOnline('kai');
  // The shop's page is not from our server: another origin.
  const shop = await (await person('shop')).context.newPage();
  shop.ddName = 'shop';
  pages.add(shop);
  // Another origin (another port, served by the test itself) on the same
  // loopback address: Chromium lets no other address space load from it.
  const shopUrl = 'http://127.0.0.1:8999/p/42';
  await shop.route(shopUrl, (route) => route.fulfill({ contentType: 'text/html', body: `<!doctype html><html><body><h1>Kim's shop</h1>
    <script src="${base}/web/embed.js" data-token="${token}" data-group="default"></script></body></html>` }));
  const errors = [];
  shop.on('pageerror', (e) => errors.push(e.message));
  await shop.goto(shopUrl);
  await shop.click('text=Chat with us');
  const frame = shop.frameLocator('iframe[title="Chat with us"]');
  await frame.locator('#conn[data-status="online"]').waitFor();
  await frame.locator('#request').waitFor();
  // Her name, no ids, no meaningless "Sign out".
  assert.equal(await frame.locator('#who').textContent(), 'Kim Lee');
  assert.equal(await frame.locator('#signout').isHidden(), true);
  await frame.locator('#request').click();
  await frame.locator('#agent-name').waitFor();
  // The agent sees the shop page she came from.
  await kai.click('#show-panel');
  await waitText(kai, '#panel-page', /127\.0\.0\.1:8999\/p\/42/);
  // Closed, a message counts on the launcher; opened, the count goes.
  await frame.locator('#close-embed').click();
  await kai.click('#customer-panel .close-panel');
  await say(kai, 'Hello Kim, how can I help?');
  await shop.waitForFunction(() => [...document.querySelectorAll('button')].some((b) => /Chat with us\s*1$/.test(b.textContent)));
  await shop.click('text=Chat with us');
  await frame.locator('#messages .bubble', { hasText: 'Hello Kim, how can I help?' }).waitFor();
  await shop.waitForFunction(() => [...document.querySelectorAll('button')].some((b) => /^Chat with us$/.test(b.textContent)));
  // The token went to the frame's address fragment and was then removed from it.
  const widget = shop.frames().find((f) => f.url().includes('/chat'));
  const href = await widget.evaluate(() => location.href);
  assert.ok(href.startsWith(`${base}/chat`) && !href.includes('token='), href);
  assert.ok(href.includes('group=default'), href);

  // She closes the chat and leaves; kai writes a long answer meanwhile.
  await frame.locator('#close-embed').click();
  await shop.goto('about:blank');
  const lines = Array.from({ length: 24 }, (_, i) => `line ${i + 1} of the answer`);
  for (const line of lines) await say(kai, line);
  // Back on the shop's page: the launcher counts what came while she was away.
  await shop.goto(shopUrl);
  await shop.waitForFunction(() => [...document.querySelectorAll('button')].some((b) => /Chat with us\s*24$/.test(b.textContent)));
  await shop.click('text=Chat with us');
  const back = () => shop.frames().find((f) => f.url().includes('/chat'));
  await frame.locator('#messages .bubble', { hasText: 'line 24 of the answer' }).waitFor();
  // It opens at the newest message, and follows new ones.
  await back().waitForFunction(() => {
    const box = document.querySelector('#messages');
    return box.scrollHeight > box.clientHeight && box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  });
  await say(kai, 'and one more thing');
  await frame.locator('#messages .bubble', { hasText: 'and one more thing' }).waitFor();
  await back().waitForFunction(() => {
    const box = document.querySelector('#messages');
    return box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  });
  await shop.waitForFunction(() => [...document.querySelectorAll('button')].some((b) => /^Chat with us$/.test(b.textContent)));
  // On a phone it fills the screen; its close button sits in its header,
  // clear of the language picker.
  await frame.locator('#close-embed').click();
  await shop.setViewportSize({ width: 390, height: 844 });
  await shop.click('text=Chat with us');
  assert.deepEqual(await shop.$eval('iframe', (f) => { const r = f.getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; }), [0, 0, 390, 844]);
  const [x, lang] = await back().evaluate(() => ['#close-embed', '#lang'].map((q) => {
    const r = document.querySelector(q).getBoundingClientRect();
    return [r.left, r.right, r.top, r.bottom];
  }));
  assert.ok(x[0] >= lang[1] || x[1] <= lang[0] || x[2] >= lang[3] || x[3] <= lang[2], `the close button covers the language picker: ${x} ${lang}`);
  await frame.locator('#close-embed').click();
  await shop.waitForSelector('text=Chat with us');
  assert.deepEqual(errors, []);
  await endSession(kai);
  await kai.waitForFunction(() => !document.querySelector('[data-customer="kim"]'));
});

const AXE = path.join(here, 'node_modules/axe-core/axe.min.js');

/**
 * The WCAG 2.1 A and AA violations axe-core finds on the page as it is now,
 * one line each ("rule: target … (summary)").
 */
async function axeViolations(page) {
  // Run as the test's own code (devtools), which the pages' CSP does not cover.
  if (!(await page.evaluate(() => !!window.axe))) await page.evaluate(readFileSync(AXE, 'utf8'));
  const violations = await page.evaluate(async () => {
    const r = await window.axe.run(document, { runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] } });
    return r.violations.flatMap((v) => v.nodes.map((n) => `${v.id}: ${n.target.join(' ')} (${n.failureSummary.split('\n').slice(1).join(' ').trim()})`));
  });
  return violations;
}

/** Fails with every WCAG AA violation of the page in its current state. */
async function assertAccessible(page, state) {
  const v = await axeViolations(page);
  assert.deepEqual(v, [], `${page.ddName}, ${state}: WCAG AA violations:\n${v.join('\n')}`);
}

/**
 * Fails when the Chinese page shows Latin words (text, placeholders, labels
 * and titles people read) other than names, ids, URLs and codes: `allowed`
 * (the scenario's user and group ids and names), keys and the product's
 * name. What people typed (message bubbles, form values) is theirs.
 */
async function assertChinese(page, state, allowed = []) {
  const found = await page.evaluate((allowed) => {
    const ok = new Set(['dongdong', 'Enter', 'Shift', 'Alt', 'M', 'http', 's', 'JPEG', 'PNG', 'GIF', 'WebP', 'PDF', 'MB', 'KB', 'B', ...allowed]);
    // What people wrote or chose (messages, replies, a user agent) is theirs.
    const skip = 'script, style, code, kbd, .bubble, blockquote, .user-text, option[lang], #lang, .avatar';
    const words = [];
    const check = (text, where) => {
      for (const w of (text.replace(/\b\S+:\/\/\S+/g, '').match(/[A-Za-z][A-Za-z'’]*/g) || [])) if (!ok.has(w)) words.push(`${w} (${where})`);
    };
    const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    for (let n = walker.nextNode(); n; n = walker.nextNode()) {
      const e = n.parentElement;
      if (!e || e.closest(skip) || !e.checkVisibility()) continue;
      check(n.textContent, `${e.tagName.toLowerCase()}${e.id ? `#${e.id}` : ''}`);
    }
    for (const e of document.querySelectorAll('[placeholder], [aria-label], [title]')) {
      if (e.closest(skip) || !e.checkVisibility()) continue;
      for (const a of ['placeholder', 'aria-label', 'title']) if (e.hasAttribute(a)) check(e.getAttribute(a), `${a} of ${e.tagName.toLowerCase()}${e.id ? `#${e.id}` : ''}`);
    }
    return words;
  }, allowed);
  assert.deepEqual(found, [], `${page.ddName}, ${state}: Latin text in the Chinese page:\n${found.join('\n')}`);
}

/** Whether the element at `selector` is wholly inside the window. */
async function inView(page, selector) {
  return page.$eval(selector, (e) => {
    const r = e.getBoundingClientRect();
    return r.top >= 0 && r.left >= 0 && r.bottom <= window.innerHeight && r.right <= window.innerWidth && r.height > 0;
  });
}

/** The last message of `page`'s list is wholly inside the window. */
async function newestInView(page) {
  return page.$eval('#messages', (box) => {
    const all = box.querySelectorAll('.msg');
    const r = all[all.length - 1].getBoundingClientRect();
    return r.top >= 0 && r.bottom <= window.innerHeight;
  });
}

scenario('a long chat keeps the header, the newest message and the composer in view; IME Enter; links', async () => {
  // Desktop agent, phone customer.
  const kim = await agentOnline('kim', { width: 1280, height: 800 });
  const lin = await (await person('lin', { width: 390, height: 844 })).open('/chat');
  await signIn(lin, 'lin', 'customer');
  await lin.selectOption('#group', 'default');
  await lin.fill('#question', 'a question that starts a long chat');
  await lin.click('#request');
  await waitText(lin, '#agent-name', /kim/);
  await kim.click('[data-customer="lin"]');
  for (let i = 1; i <= 30; i += 1) {
    await say(kim, `answer ${i}: a line long enough to wrap on a phone, so that sixty of them fill several screens`);
    await say(lin, `question ${i}`);
  }
  await waitMessage(kim, 'question 30');
  for (const page of [kim, lin]) await assertAccessible(page, 'a long chat');
  for (const page of [kim, lin]) {
    assert.ok(await newestInView(page), `${page.ddName}: the newest message is in view`);
    assert.ok(await inView(page, '#input'), `${page.ddName}: the composer is in view`);
    assert.ok(await inView(page, '#conn'), `${page.ddName}: the header is in view`);
    const grows = await page.evaluate(() => document.scrollingElement.scrollHeight > window.innerHeight + 1);
    assert.ok(!grows, `${page.ddName}: the page itself does not scroll, only the list`);
  }

  // A new message is drawn in place: its bubble added (the sender's own
  // redrawn as it is stored and read), nothing else of the 60 detached and
  // attached again (that took a long task per message in a long chat), and
  // the bubbles already there are the same elements.
  for (const page of [kim, lin]) {
    await page.evaluate(() => {
      window.ddChurn = { added: 0, removed: 0 };
      window.ddFirst = document.querySelector('#messages .msg');
      new MutationObserver((records) => {
        for (const r of records) {
          window.ddChurn.added += [...r.addedNodes].filter((n) => n.nodeType === 1).length;
          window.ddChurn.removed += [...r.removedNodes].filter((n) => n.nodeType === 1).length;
        }
      }).observe(document.querySelector('#messages'), { childList: true });
    });
  }
  await say(lin, 'one more thing');
  await waitMessage(kim, 'one more thing');
  for (const page of [kim, lin]) {
    const churn = await page.evaluate(() => ({ ...window.ddChurn, same: document.querySelector('#messages .msg') === window.ddFirst }));
    assert.ok(churn.added <= 3 && churn.removed <= 2 && churn.same, `${page.ddName}: a new message redrew the list: ${JSON.stringify(churn)}`);
  }

  // kim scrolls up to read: a new message does not pull her down, a pill says so.
  await kim.$eval('#messages', (b) => { b.scrollTop = 0; });
  await say(lin, 'are you still there?');
  await waitMessage(kim, 'are you still there?');
  await kim.waitForSelector('.new-pill:not([hidden])');
  assert.ok(!(await newestInView(kim)), 'kim still reads where she was');
  await kim.click('.new-pill');
  await kim.waitForSelector('.new-pill', { state: 'hidden' });
  assert.ok(await newestInView(kim), 'the pill brings the newest message into view');

  // The Enter that confirms a pinyin candidate sends nothing.
  await lin.fill('#input', 'ni hao');
  await lin.$eval('#input', (e) => e.dispatchEvent(new KeyboardEvent('keydown',
    { key: 'Enter', code: 'Enter', isComposing: true, bubbles: true, cancelable: true })));
  await lin.$eval('#input', (e) => e.dispatchEvent(new KeyboardEvent('keydown',
    { key: 'Process', keyCode: 229, bubbles: true, cancelable: true })));
  await lin.waitForTimeout(300);
  assert.equal(await lin.inputValue('#input'), 'ni hao', 'the text being composed stays in the box');
  assert.ok(!(await shownMessages(lin)).some((m) => m.text === 'ni hao'), 'nothing was sent');
  // The composition ends with 你好; the next Enter sends it.
  await lin.fill('#input', '你好');
  await lin.press('#input', 'Enter');
  await waitMessage(kim, '你好');

  // Links in text open in a new tab, without access to this page; the text around them stays text.
  await say(kim, 'Track it at https://example.com/track?id=7, or reply <b>here</b>.');
  const link = await lin.waitForSelector('#messages a[href="https://example.com/track?id=7"]');
  assert.equal(await link.getAttribute('rel'), 'noopener noreferrer');
  assert.equal(await link.getAttribute('target'), '_blank');
  assert.equal(await link.textContent(), 'https://example.com/track?id=7');
  assert.equal(await lin.$$eval('#messages .bubble b', (b) => b.length), 0, 'never HTML from a message');
  assert.deepEqual(lin.ddErrors, []);
  assert.deepEqual(kim.ddErrors, []);
  // Done: the next scenarios find the line empty.
  await endSession(kim);
  await kim.waitForFunction(() => !document.querySelector('[data-customer="lin"]'));
});

scenario('the widget speaks Chinese to a Chinese browser, and English once switched', async () => {
  const mei = await (await person('mei', { width: 390, height: 844 }, 'zh-CN')).open('/chat');
  assert.equal(await mei.getAttribute('html', 'lang'), 'zh-CN');
  await signIn(mei, 'mei', 'customer');
  await waitText(mei, '#pick h2', /^有什么可以帮您？$/);
  assert.equal(await mei.textContent('.brand'), '在线客服');
  assert.equal(await mei.textContent('#conn'), '已连接');
  await mei.selectOption('#group', 'returns');
  await waitText(mei, '#request', /^留言$/);
  await mei.fill('#question', '我的订单还没到');
  await mei.click('#request');
  await waitText(mei, '#offer-reason', /^现在没有客服在线。/);
  assert.equal(await mei.inputValue('#left-text'), '我的订单还没到');
  await assertAccessible(mei, 'the leave-a-message form in Chinese');
  const names = ['mei', 'wei', 'lan', 'boss', 'demo', 'default', 'returns', 'vip', 'presale', 'Pre', 'sales', 'Returns', 'VIP'];
  await assertChinese(mei, 'the leave-a-message form', names);
  await shot(mei, 'console-chat-zh.png');
  // An agent's workspace in Chinese too.
  const wei = await (await person('wei', { width: 1280, height: 800 }, 'zh-CN')).open('/agent');
  await signIn(wei, 'wei', 'agent');
  await online(wei);
  assert.equal(await wei.textContent('.brand'), '客服工作台');
  await waitText(wei, '#sessions', /设为在线即可接待顾客。/);
  assert.equal(await wei.$eval('#status option[value="ONLINE"]', (o) => o.textContent), '● 在线');
  await assertAccessible(wei, 'the workspace in Chinese');
  await assertChinese(wei, 'the workspace', names);
  // wei goes online; a customer with a Chinese name asks in Chinese.
  await wei.selectOption('#status', 'ONLINE');
  const lan = await (await person('lan', { width: 390, height: 844 }, 'zh-CN')).open('/chat');
  await signIn(lan, 'lan', 'customer', '林小姐');
  await lan.selectOption('#group', 'default');
  await lan.fill('#question', '请问这件衣服有 M 码吗？');
  await lan.click('#request');
  await waitText(lan, '#agent-name', /wei/);
  await wei.waitForSelector('[data-customer="lan"]');
  await waitText(wei, '#conv-customer', /^林小姐$/);
  await waitMessage(wei, '请问这件衣服有 M 码吗？');
  await say(wei, '有的，M 码还有货。');
  await waitMessage(lan, '有的，M 码还有货。');
  await waitText(wei, '#customer-panel h3', /^顾客$/);
  await assertAccessible(wei, 'the workspace in Chinese with a session');
  await assertChinese(wei, 'the workspace with a session', names);
  await assertChinese(lan, 'the widget with an agent', names);
  await shot(wei, 'console-agent-zh.png');
  assert.deepEqual(wei.ddErrors, []);
  const boss = await (await person('boss', { width: 1280, height: 800 }, 'zh-CN')).open('/supervisor');
  await signIn(boss, 'boss', 'admin');
  await waitText(boss, '#conn', /^实时$/);
  assert.equal(await boss.textContent('.brand'), '客服主管');
  await waitText(boss, '[data-group="returns"] .stats', /排队中/);
  await assertAccessible(boss, 'the supervisor view in Chinese');
  await assertChinese(boss, 'the supervisor view and the settings', names);
  await shot(boss, 'console-supervisor-zh.png');
  // She switches to English: the page reloads in English and remembers it.
  await mei.selectOption('#lang', 'en');
  await mei.waitForFunction(() => document.documentElement.lang === 'en');
  await online(mei);
  await waitText(mei, '#pick h2', /^How can we help\?$/);
  await mei.reload();
  await online(mei);
  assert.equal(await mei.getAttribute('html', 'lang'), 'en');
  assert.deepEqual(mei.ddErrors, []);
});

scenario('search: a colleague finds a Chinese word in a session and opens it there; the customer her own order number; the supervisor the shop; a stranger nothing', async () => {
  await setCapacity('sia', 2);
  await setCapacity('tao', 2);
  const sia = await agentOnline('sia');
  const qin = await (await person('qin', { width: 390, height: 844 }, 'zh-CN')).open('/chat');
  await signIn(qin, 'qin', 'customer', '秦女士');
  await qin.selectOption('#group', 'default');
  await qin.click('#request');
  await waitText(qin, '#agent-name', /sia/);
  await say(qin, '我想申请退款，订单JD2026-000888');
  await waitMessage(sia, '我想申请退款，订单JD2026-000888');
  await say(sia, '好的，马上处理');
  await say(sia, 'Anything else?');

  // tao, in the same group, finds the customer's words inside her sentence.
  const tao = await (await person('tao')).open('/agent');
  await signIn(tao, 'tao', 'agent');
  await online(tao);
  await tao.fill('#search-input', '退款');
  await tao.press('#search-input', 'Enter');
  await waitText(tao, '#search-status', /^1 found$/);
  assert.equal(await tao.textContent('#search-results mark'), '退款');
  await tao.click('#search-results .search-open');
  await tao.waitForSelector('#search-dialog[open] .msg.search-hit');
  assert.equal(await tao.textContent('#search-dialog .msg.search-hit .bubble'), '我想申请退款，订单JD2026-000888');
  const around = await tao.$$eval('#search-dialog .msg .bubble', (bs) => bs.map((b) => b.textContent));
  assert.deepEqual(around, ['我想申请退款，订单JD2026-000888', '好的，马上处理', 'Anything else?'], 'the chat around it');
  await assertAccessible(tao, 'the workspace with a search result open');
  await shot(tao, 'console-agent-search.png');
  await tao.keyboard.press('Escape');
  await tao.waitForFunction(() => !document.querySelector('#search-dialog').open);

  // The customer finds her order number in her own history (in Chinese).
  await qin.click('#search-toggle');
  await qin.fill('#search-input', '000888');
  await qin.press('#search-input', 'Enter');
  await waitText(qin, '#search-status', /^找到 1 条$/);
  assert.equal(await qin.textContent('#search-results mark'), '000888');
  await assertAccessible(qin, 'the widget with a search result');

  // The supervisor searches the whole shop.
  const boss = await (await person('sam')).open('/supervisor');
  await signIn(boss, 'sam', 'admin');
  await boss.fill('#search-input', '处理');
  await boss.press('#search-input', 'Enter');
  await waitText(boss, '#search-status', /^1 found$/);
  assert.equal(await boss.textContent('#search-results mark'), '处理');

  // Another customer finds nothing of it.
  const zed = await (await person('zed', { width: 400, height: 700 })).open('/chat');
  await signIn(zed, 'zed', 'customer');
  await zed.click('#search-toggle');
  await zed.fill('#search-input', '退款');
  await zed.press('#search-input', 'Enter');
  await waitText(zed, '#search-status', /^Nothing found\.$/);
  for (const p of [tao, qin, boss, zed]) assert.deepEqual(p.ddErrors, []);
});

scenario("the supervisor's day: the figures come from the server after a reload; she reads a chat, moves one to another agent, ends one and sets an agent away", async () => {
  await setCapacity('vivi', 2);
  await setCapacity('walt', 2);
  const vivi = await agentOnline('vivi');
  const sup = await (await person('supervisor', { width: 1280, height: 900 }, 'zh-CN')).open('/supervisor');
  await signIn(sup, 'sam', 'admin');
  await waitStat(sup, 'default', 'queue_length', 0);
  // The day so far (earlier scenarios served people too), once loaded.
  await sup.waitForFunction(() => /^\d+$/.test(document.querySelector('[data-group="default"] [data-stat="served"]')?.textContent || ''));
  const served0 = Number(await stat(sup, 'default', 'served'));

  // xena is served by vivi, who answers; xena ends the chat and gives 4 stars.
  const xena = await (await person('xena', { width: 400, height: 700 })).open('/chat');
  await signIn(xena, 'xena', 'customer');
  await xena.selectOption('#group', 'default');
  await xena.fill('#question', 'my order never came');
  await xena.click('#request');
  await waitText(xena, '#agent-name', /vivi/);
  await waitMessage(vivi, 'my order never came');
  await say(vivi, 'Let me look: it is at the depot.');
  await waitMessage(xena, 'Let me look: it is at the depot.');
  await xena.click('#end');
  await xena.waitForSelector('#rate');
  await xena.click('.star[data-score="4"]');
  await xena.click('#rate-submit');
  await xena.waitForSelector('#rated');

  // The day's figures are the server's: a reload keeps them.
  await sup.reload();
  await online(sup);
  await waitStat(sup, 'default', 'served', served0 + 1);
  assert.notEqual(await stat(sup, 'default', 'first_response_avg'), '–', 'vivi answered: a first reply time');
  assert.match(await stat(sup, 'default', 'csat'), /★/);
  await sup.waitForSelector('[data-agent-served="vivi"]');
  assert.equal(await sup.textContent('[data-agent-served="vivi"]'), '1');

  // yuri asks; vivi has him. The supervisor opens his chat read-only.
  const yuri = await (await person('yuri', { width: 400, height: 700 })).open('/chat');
  await signIn(yuri, 'yuri', 'customer');
  await yuri.selectOption('#group', 'default');
  await yuri.fill('#question', 'can I change the address?');
  await yuri.click('#request');
  await waitText(yuri, '#agent-name', /vivi/);
  await waitMessage(vivi, 'can I change the address?');
  await sup.click('#sessions-of-default');
  await sup.waitForSelector('[data-open]');
  const id = await sup.$eval('tr[data-session] [data-open]', (b) => b.dataset.open);
  await sup.click(`[data-open="${id}"]`);
  await sup.waitForSelector('#session-view[open]');
  await waitText(sup, '#session-view-messages', /can I change the address\?/);
  assert.equal(await sup.$('#session-view textarea, #session-view input'), null, 'read only: nowhere to write');
  // What is said next shows in the open view.
  await say(vivi, 'Yes, until it ships.');
  await waitText(sup, '#session-view-messages', /Yes, until it ships\./);
  await assertChinese(sup, 'a chat read by the supervisor', ['sam', 'vivi', 'yuri', 'default', 'xena', 'walt', 'demo', 'fay', 'lee']);
  await assertAccessible(sup, 'a chat read by the supervisor');
  await sup.click('#session-view-close');

  // vivi has to leave: the supervisor moves yuri to walt.
  const walt = await agentOnline('walt');
  await sup.waitForSelector(`[data-move="${id}"] option[value="agent:walt"]`, { state: 'attached' });
  await sup.selectOption(`[data-move="${id}"]`, 'agent:walt');
  await sup.click(`[data-move-go="${id}"]`);
  await walt.waitForSelector('[data-customer="yuri"]');
  await vivi.waitForFunction(() => !document.querySelector('[data-customer="yuri"]'));
  await waitText(yuri, '#agent-name', /walt/);
  await walt.click('[data-customer="yuri"]');
  await waitMessage(walt, 'can I change the address?');

  // And sets vivi away from the supervisor: her own page says so.
  await sup.selectOption('[data-agent="vivi"] [data-agent-status="vivi"]', 'away');
  await vivi.waitForFunction(() => document.querySelector('#status').value === 'AWAY');

  // yuri's chat is ended by the supervisor, after asking once.
  await sup.waitForSelector(`[data-end="${id}"]`);
  await sup.click(`[data-end="${id}"]`);
  await sup.click(`[data-end="${id}"][data-confirm]`);
  await yuri.waitForSelector('#rate');
  await walt.waitForFunction(() => !document.querySelector('[data-customer="yuri"]'));
  await waitStat(sup, 'default', 'served', served0 + 2);
  await assertChinese(sup, "the supervisor's day", ['sam', 'vivi', 'yuri', 'default', 'xena', 'walt', 'demo', 'fay', 'lee']);
  await shot(sup, 'console-supervisor-day.png');

  // walt leaves the team: deactivated from the settings, he is signed out at
  // once and is in no group any more.
  await sup.click('[data-settings-group="default"] [data-action="edit"]');
  await sup.click('[data-settings-agent="walt"] [data-action="deactivate"]');
  await sup.click('[data-settings-agent="walt"] [data-action="deactivate"][data-confirm]');
  await walt.waitForSelector('#signin-submit');
  await sup.waitForFunction(() => !document.querySelector('[data-settings-agent="walt"]'));
  await sup.waitForSelector('.notice >> text=walt 已移出所有组并登出');
  await assertChinese(sup, 'an agent deactivated', ['Pre', 'sales', 'sam', 'vivi', 'yuri', 'default', 'xena', 'walt', 'demo', 'fay', 'lee', 'presale', 'returns', 'vip', 'odile', 'otto']);
});

scenario("the owner sets the widget's words, colour, corner and greeting in /supervisor; a Chinese shop page shows them", async () => {
  const admin = await devToken('sam', 'admin');
  const putWidget = (body) => fetch(`${base}/api/v1/widget`, {
    method: 'PUT', headers: { 'content-type': 'application/json', authorization: `Bearer ${admin}` }, body: JSON.stringify(body),
  });
  try {
    const sup = await (await person('owner', { width: 1280, height: 900 }, 'zh-CN')).open('/supervisor');
    await signIn(sup, 'sam', 'admin');
    await sup.waitForSelector('#widget-form');
    // A greeting over the limit is named by its field, in her language, before anything is sent.
    await sup.fill('#widget-greeting-zh', '长'.repeat(501));
    await sup.$eval('#widget-greeting-zh', (e) => { e.value = '长'.repeat(501); });
    await sup.click('#widget-save');
    await waitText(sup, '#widget-greeting-zh-error', /提问上方的欢迎语（中文）：最多 500 个字符/);
    assert.equal(await sup.getAttribute('#widget-greeting-zh', 'aria-invalid'), 'true');
    await sup.fill('#widget-label-zh', '联系客服');
    await sup.fill('#widget-greeting-zh', '您好！我们的工作时间是 9:00–18:00。');
    await sup.$eval('#widget-color', (e) => { e.value = '#0a7d32'; });
    await sup.selectOption('#widget-position', 'left');
    await sup.click('#widget-save');
    await sup.waitForSelector('.notice >> text=已保存。');
    await assertChinese(sup, 'the widget settings', ['sam', 'demo', 'default', 'returns', 'vip', 'fay', 'lee', 'Chat', 'with', 'us']);
    await assertAccessible(sup, 'the widget settings');
    // The server names a wrong field too (for integrations that use the API).
    const bad = await putWidget({ color: 'red' });
    assert.equal(bad.status, 400);
    assert.equal((await bad.json()).error.field, 'color');

    // A Chinese shop page: the launcher says it, in the colour, on the left;
    // the widget greets above the question.
    const token = await devToken('mei', 'customer', '梅');
    const shop = await (await person('shop', { width: 1280, height: 800 }, 'zh-CN')).context.newPage();
    shop.ddName = 'shop';
    pages.add(shop);
    const shopUrl = 'http://127.0.0.1:8999/zh/shop';
    await shop.route(shopUrl, (route) => route.fulfill({ contentType: 'text/html', body: `<!doctype html><html lang="zh-CN"><body><h1>梅的小店</h1>
      <script src="${base}/web/embed.js" data-token="${token}" data-group="default"></script></body></html>` }));
    await shop.goto(shopUrl);
    await shop.waitForFunction(() => [...document.querySelectorAll('button')].some((b) => b.textContent.startsWith('联系客服')));
    const look = await shop.evaluate(() => {
      const b = [...document.querySelectorAll('button')].find((x) => x.textContent.startsWith('联系客服'));
      const r = b.getBoundingClientRect();
      return { background: getComputedStyle(b).backgroundColor, left: r.left, width: window.innerWidth };
    });
    assert.equal(look.background, 'rgb(10, 125, 50)');
    assert.ok(look.left < look.width / 2, `the launcher is on the left: ${JSON.stringify(look)}`);
    await shop.click('text=联系客服');
    const frame = shop.frameLocator('iframe[title="联系客服"]');
    await frame.locator('#greeting').waitFor();
    assert.equal(await frame.locator('#greeting').textContent(), '您好！我们的工作时间是 9:00–18:00。');
    await shot(sup, 'console-settings-widget.png');
  } finally {
    // Back to the defaults: other scenarios expect "Chat with us".
    const r = await putWidget({});
    assert.equal(r.status, 200);
  }
});
