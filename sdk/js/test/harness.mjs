// What the SDK's tests run against: real `dongdong serve` processes (the
// debug binary cargo built, or DD_BIN), on free ports with data
// directories of their own, killed with SIGKILL when a test says so.
// Tokens are HS256 JWTs signed here with the servers' secret.

import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';
import { DongdongClient, MemoryStore } from '../dist/index.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '../../..');
export const BIN = process.env.DD_BIN || path.join(process.env.CARGO_TARGET_DIR || path.join(root, 'target'), 'debug/dongdong');
export const SECRET = 'sdk-tests-secret-0123456789';

/** A free TCP port on 127.0.0.1. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** An HS256 token for `user` of tenant `acme`. */
export function token(user, { tenant, role = 'customer' } = {}) {
  tenant ??= 'acme';
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const now = Math.floor(Date.now() / 1000);
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ tenant, sub: user, role, iat: now - 5, exp: now + 3600 })}`;
  return `${body}.${createHmac('sha256', SECRET).update(body).digest('base64url')}`;
}

/**
 * A `dongdong serve` that can be killed and started again on the same
 * ports and data. `extra` is appended to its config (TOML).
 */
export class Server {
  static async start(extra = '', { dir = null, storage = null } = {}) {
    const s = new Server();
    s.dir = dir ?? mkdtempSync(path.join(tmpdir(), 'dd-sdk-'));
    s.ownsDir = dir === null;
    s.extra = extra;
    s.storage = storage ?? `[storage]\ndata_dir = "${path.join(s.dir, 'data')}"\n`;
    // A port found free may be taken by someone else before the server
    // binds it (tests run beside other servers): then try other ports.
    for (let attempt = 1; ; attempt += 1) {
      s.wsPort = await freePort();
      s.httpPort = await freePort();
      try {
        await s.run();
        return s;
      } catch (e) {
        if (attempt >= 5 || !/exited with/.test(e.message)) throw e;
      }
    }
  }

  get url() {
    return `ws://127.0.0.1:${this.wsPort}/ws`;
  }

  get httpUrl() {
    return `http://127.0.0.1:${this.httpPort}`;
  }

  async run() {
    const config = path.join(this.dir, `dongdong-${this.wsPort}.toml`);
    writeFileSync(
      config,
      `[server]\nlisten = "127.0.0.1:${this.wsPort}"\nhttp = "127.0.0.1:${this.httpPort}"\n\n` +
        `[auth]\nsecret = "${SECRET}"\n\n[log]\nfilter = "warn"\n\n${this.storage}\n${this.extra}\n`,
    );
    this.proc = spawn(BIN, ['serve', '--config', config], { stdio: ['ignore', 'inherit', 'inherit'] });
    this.exited = new Promise((resolve) => this.proc.once('exit', resolve));
    const deadline = Date.now() + 30_000;
    for (;;) {
      try {
        const res = await fetch(`${this.httpUrl}/healthz`);
        if (res.ok) return;
      } catch {
        // not up yet
      }
      if (this.proc.exitCode !== null) throw new Error(`dongdong serve exited with ${this.proc.exitCode}`);
      if (Date.now() > deadline) throw new Error('dongdong serve did not come up within 30 s');
      await sleep(50);
    }
  }

  /** SIGKILL: no goodbye, no flush. */
  async kill() {
    this.proc.kill('SIGKILL');
    await this.exited;
  }

  /** The value of a Prometheus counter or gauge (summed over its labels that match). */
  async metric(name, labels = '') {
    const text = await (await fetch(`${this.httpUrl}/metrics`)).text();
    let sum = 0;
    for (const line of text.split('\n')) {
      if (line.startsWith(`${name}{`) || line.startsWith(`${name} `)) {
        if (labels && !line.includes(labels)) continue;
        sum += Number(line.slice(line.lastIndexOf(' ') + 1));
      }
    }
    return sum;
  }

  async stop() {
    if (this.proc.exitCode === null) {
      this.proc.kill('SIGTERM');
      await this.exited;
    }
    if (this.ownsDir) rmSync(this.dir, { recursive: true, force: true });
  }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A client of `user` on `server` (Node: the `ws` WebSocket, an in-memory outbox unless given). */
export function client(server, user, device = `${user}-1`, options = {}) {
  const { tenant, ...rest } = options;
  return new DongdongClient({
    url: server.url,
    apiUrl: server.httpUrl,
    token: () => token(user, { tenant }),
    deviceId: device,
    WebSocket,
    store: options.store ?? new MemoryStore(),
    ...rest,
  });
}

/** Resolves once `test()` holds, checking on every event and every 20 ms; rejects after `ms`. */
export async function until(what, test, ms = 30_000) {
  const deadline = Date.now() + ms;
  while (!(await test())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

/** Resolves on the client's next `ready` (signed in). */
export function ready(c) {
  return new Promise((resolve) => {
    const off = c.on('ready', (ok) => {
      off();
      resolve(ok);
    });
  });
}

/**
 * What a reader checks of a conversation's cache: seqs 1..n, each once,
 * without holes; returns the texts in seq order.
 */
export function inSeqOrder(messages) {
  const seqs = messages.map((m) => Number(m.seq));
  const ids = new Set(messages.map((m) => m.msgId));
  if (ids.size !== messages.length) throw new Error('a message twice in the cache');
  seqs.forEach((s, i) => {
    if (s !== i + 1) throw new Error(`seq ${s} at position ${i} (expected ${i + 1}): a hole or disorder`);
  });
  return messages.map((m) => m.content?.text);
}
