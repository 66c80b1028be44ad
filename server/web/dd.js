// dd.js: a small client of the dongdong protocol, written against the public
// contract only (docs/protocol.md): JSON text frames on the WebSocket, the
// HTTP API under /api/v1. Used by the three consoles; usable by any page.
//
//   const c = new Client({ url, token, deviceId });
//   c.addEventListener('frame', e => ...)      // every push: e.detail is the frame
//   c.addEventListener('ready', e => ...)      // after each AuthOk (first connect and reconnects)
//   c.addEventListener('status', e => ...)     // e.detail: connecting | online | offline | stopped
//   c.start();
//   const reply = await c.request({ csStateRequest: {} });
//
// It reconnects by itself with backoff, answers nothing twice, pings to find
// dead networks, acks every delivery after the page has handled it, and keeps
// unsent messages in an outbox that is retried with the same clientMsgId until
// the server acks them (sending is idempotent, so a retry never duplicates).

/** Where the server's WebSocket is, and whether dev sign-in is on. */
export async function serverInfo() {
  const r = await fetch('/api/v1/info', { cache: 'no-store' });
  if (!r.ok) throw new Error(`the server did not answer /api/v1/info (HTTP ${r.status})`);
  return r.json();
}

export function wsUrl(info) {
  if (info.ws_url) return info.ws_url;
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.hostname}:${info.ws_port}/ws`;
}

/**
 * A random UUID (v4). crypto.randomUUID exists only in secure contexts
 * (https or localhost); a console served over plain http on a LAN address,
 * or framed by such a page, has only getRandomValues.
 */
export function uuid() {
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** An error reply of the server (or a lost connection: code DISCONNECTED). */
export class DdError extends Error {
  constructor(code, message, retryable) {
    super(message || code);
    this.code = code;
    this.retryable = !!retryable;
  }
}

/**
 * Words for people, by error code (English; ui.js adds the other
 * languages): every code of the protocol's `ErrorCode` (a test holds the
 * list to the server's), and DISCONNECTED, this client's own.
 */
export const ERROR_WORDS = {
  BAD_FRAME: 'The server could not read that request.',
  RATE_LIMITED: 'Too many messages at once; slow down a little.',
  UNAVAILABLE: 'The service is unavailable right now; it will be retried.',
  FORBIDDEN: 'You are not allowed to do that.',
  UNAUTHENTICATED: 'Your sign-in is not valid (expired or wrong). Sign in again.',
  NOT_FOUND: 'Not found.',
  TOO_LARGE: 'That is too long.',
  INVALID_ARGUMENT: 'That was not accepted',
  CONFLICT: 'That does not fit the current state',
  TOO_LATE: 'Too late for that',
  INTERNAL: 'The server failed; try again.',
  DISCONNECTED: 'Not connected; it will be sent when the connection is back.',
};

/** `base` (the words for an error code), with the server's detail when it adds one. */
export function withDetail(base, e) {
  return e.message && e.message !== e.code && !/[.。]$/.test(base) ? `${base}: ${e.message}` : base;
}

/** Words for people, by error code. */
export function describeError(e) {
  return withDetail(ERROR_WORDS[e.code] || 'Something went wrong', e);
}

/** The HTTP API with a bearer token; throws DdError from `{"error": {...}}` bodies. */
export async function api(token, method, path, body) {
  const init = { method, headers: { authorization: `Bearer ${token}` } };
  if (body !== undefined) {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let r;
  try {
    r = await fetch(path, init);
  } catch (e) {
    throw new DdError('UNAVAILABLE', 'the server cannot be reached', true);
  }
  if (r.status === 204) return null;
  const data = await r.json().catch(() => ({}));
  if (!r.ok) {
    const err = data.error || {};
    throw new DdError(err.code || 'INTERNAL', err.message || `HTTP ${r.status}`, r.status >= 500);
  }
  return data;
}

/**
 * localStorage or sessionStorage, or, where the browser refuses them (e.g.
 * a frame in a page without an origin, or storage blocked for third-party
 * frames), a map that lasts as long as the page.
 */
export function storage(kind) {
  try {
    const s = kind === 'local' ? window.localStorage : window.sessionStorage;
    const probe = '__dd_probe__';
    s.setItem(probe, '1');
    s.removeItem(probe);
    return s;
  } catch {
    const m = new Map();
    return {
      getItem: (k) => (m.has(k) ? m.get(k) : null),
      setItem: (k, v) => m.set(k, String(v)),
      removeItem: (k) => m.delete(k),
    };
  }
}

/** A stable device id for this browser and user, kept across reloads. */
export function deviceIdFor(tenant, user, prefix) {
  const local = storage('local');
  const key = `dd.device.${tenant}.${user}`;
  let id = local.getItem(key);
  if (!id) {
    id = `${prefix}-${uuid().slice(0, 13)}`;
    local.setItem(key, id);
  }
  return id;
}

/** The claims of a JWT, unverified (the server verifies). */
export function claimsOf(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    // UTF-8 (a Chinese display name), not Latin-1.
    return JSON.parse(new TextDecoder().decode(Uint8Array.from(atob(part), (c) => c.charCodeAt(0))));
  } catch {
    return null;
  }
}

const PING_EVERY_MS = 25000;
const PONG_TIMEOUT_MS = 10000;
const REQUEST_TIMEOUT_MS = 15000;
const MAX_BACKOFF_MS = 10000;
/**
 * The protocol's WebSocket close codes (docs/protocol.md, "Close codes"),
 * by name; a test holds them to the server's (`im_core::CloseCode`).
 */
export const CLOSE = {
  NORMAL: 1000,
  GOING_AWAY: 1001,
  PROTOCOL_ERROR: 1002,
  POLICY_VIOLATION: 1008,
  TOO_LARGE: 1009,
  INTERNAL_ERROR: 1011,
  SERVICE_RESTART: 1012,
  TRY_AGAIN_LATER: 1013,
  REPLACED: 4001,
  SLOW_CONSUMER: 4002,
  ACK_TIMEOUT: 4003,
  LOGGED_OUT: 4004,
};
/** Close codes after which reconnecting would fail the same way. */
const FINAL_CLOSES = { [CLOSE.POLICY_VIOLATION]: 'signed-out', [CLOSE.REPLACED]: 'replaced' };

export class Client extends EventTarget {
  constructor({ url, token, deviceId }) {
    super();
    this.url = url;
    this.token = token;
    this.deviceId = deviceId;
    this.ws = null;
    this.nextReq = 1;
    this.waiting = new Map(); // reqId -> { resolve, reject, timer }
    this.acks = [];
    this.eventAcks = []; // event ids of ReadReceipt and Recalled pushes
    this.ackTimer = null;
    this.attempt = 0;
    this.stopped = true;
    this.authed = false;
    this.me = null; // the AuthOk
    this.outbox = []; // { clientMsgId, toUser, content, resolve, reject, sending }
    this.lastCloseReason = '';
  }

  start() {
    this.stopped = false;
    this.connect();
  }

  stop() {
    this.stopped = true;
    if (this.ws) this.ws.close(1000);
  }

  status(s, detail) {
    this.dispatchEvent(new CustomEvent('status', { detail: { status: s, detail } }));
  }

  connect() {
    if (this.stopped) return;
    this.status('connecting');
    const ws = new WebSocket(this.url);
    this.ws = ws;
    this.authed = false;
    ws.onopen = () => {
      const reqId = String(this.nextReq++);
      this.waiting.set(reqId, {
        resolve: (f) => this.onAuthOk(f.authOk),
        reject: (e) => this.status('offline', describeError(e)),
      });
      this.raw({ reqId, auth: { token: this.token, deviceId: this.deviceId } });
    };
    ws.onmessage = (ev) => {
      if (typeof ev.data !== 'string') return;
      let frame;
      try {
        frame = JSON.parse(ev.data);
      } catch {
        return;
      }
      this.onFrame(frame);
    };
    ws.onclose = (ev) => this.onClose(ws, ev);
  }

  onAuthOk(ok) {
    this.authed = true;
    this.attempt = 0;
    this.me = ok;
    this.status('online');
    this.dispatchEvent(new CustomEvent('ready', { detail: ok }));
    clearInterval(this.pinger);
    this.pinger = setInterval(() => this.ping(), PING_EVERY_MS);
    this.flushOutbox();
  }

  async ping() {
    const ws = this.ws;
    try {
      await this.request({ ping: {} }, PONG_TIMEOUT_MS);
    } catch (e) {
      // No pong in time: the network is gone even if the socket does not know yet.
      if (e.code === 'TIMEOUT' && ws === this.ws) ws.close(4000, 'no pong');
    }
  }

  onClose(ws, ev) {
    if (ws !== this.ws) return;
    clearInterval(this.pinger);
    this.authed = false;
    this.ws = null;
    for (const [, w] of this.waiting) {
      clearTimeout(w.timer);
      w.reject(new DdError('DISCONNECTED', 'the connection was lost', true));
    }
    this.waiting.clear();
    for (const m of this.outbox) m.sending = false;
    this.acks = [];
    this.eventAcks = [];
    if (this.stopped) {
      this.status('stopped');
      return;
    }
    const final = FINAL_CLOSES[ev.code];
    if (final) {
      this.stopped = true;
      this.status(final, ev.reason || this.lastCloseReason);
      return;
    }
    const delay = Math.min(MAX_BACKOFF_MS, 300 * 2 ** this.attempt) * (0.5 + Math.random() / 2);
    this.attempt += 1;
    this.status('offline', `reconnecting in ${Math.ceil(delay / 1000)} s`);
    setTimeout(() => this.connect(), delay);
  }

  raw(frame) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  /** Sends one request frame body and resolves with its reply frame. */
  request(body, timeoutMs = REQUEST_TIMEOUT_MS) {
    return new Promise((resolve, reject) => {
      if (!this.authed) {
        reject(new DdError('DISCONNECTED', 'not connected', true));
        return;
      }
      const reqId = String(this.nextReq++);
      const timer = setTimeout(() => {
        this.waiting.delete(reqId);
        reject(new DdError('TIMEOUT', 'the server did not answer in time', true));
      }, timeoutMs);
      this.waiting.set(reqId, { resolve, reject, timer });
      this.raw({ reqId, ...body });
    });
  }

  onFrame(frame) {
    const reqId = frame.reqId || '0';
    if (reqId !== '0' && this.waiting.has(reqId)) {
      const w = this.waiting.get(reqId);
      this.waiting.delete(reqId);
      clearTimeout(w.timer);
      if (frame.error) w.reject(new DdError(frame.error.code, frame.error.message, frame.error.retryable));
      else w.resolve(frame);
      // Customer-service answers are also state: pages handle them like pushes.
      if (!frame.error && !frame.sendAck && !frame.historyPage && !frame.pong && !frame.authOk) {
        this.emit(frame);
      }
      return;
    }
    if (frame.error) {
      if (!this.authed) this.lastCloseReason = describeError(frame.error);
      this.dispatchEvent(new CustomEvent('servererror', { detail: new DdError(frame.error.code, frame.error.message, frame.error.retryable) }));
      return;
    }
    this.emit(frame);
    if (frame.deliver) this.queueAck(frame.deliver.message.msgId);
    const event = frame.readReceipt || frame.recalled;
    if (event && event.eventId) this.queueAck(null, event.eventId);
  }

  emit(frame) {
    this.dispatchEvent(new CustomEvent('frame', { detail: frame }));
  }

  /** Acks a delivery (msgId) or a receipt or recall (eventId), in batches. */
  queueAck(msgId, eventId) {
    if (msgId) this.acks.push(msgId);
    if (eventId) this.eventAcks.push(eventId);
    if (this.ackTimer) return;
    this.ackTimer = setTimeout(() => {
      this.ackTimer = null;
      const ids = this.acks.splice(0, this.acks.length);
      for (let i = 0; i < ids.length; i += 256) this.raw({ reqId: '0', ack: { msgIds: ids.slice(i, i + 256) } });
      const events = this.eventAcks.splice(0, this.eventAcks.length);
      for (let i = 0; i < events.length; i += 256) this.raw({ reqId: '0', ack: { eventIds: events.slice(i, i + 256) } });
    }, 30);
  }

  /**
   * Sends a message reliably: kept in the outbox and retried (same
   * clientMsgId) across reconnects until the server acks it. Resolves with
   * the SendAck; rejects only on a final error (e.g. FORBIDDEN, TOO_LARGE).
   */
  send(toUser, content, clientMsgId = uuid()) {
    return new Promise((resolve, reject) => {
      this.outbox.push({ clientMsgId, toUser, content, resolve, reject, sending: false, tries: 0 });
      this.flushOutbox();
    });
  }

  flushOutbox() {
    if (!this.authed) return;
    for (const m of this.outbox) {
      if (m.sending) continue;
      m.sending = true;
      m.tries += 1;
      this.request({ send: { clientMsgId: m.clientMsgId, toUser: m.toUser, content: m.content } })
        .then((f) => {
          this.outbox = this.outbox.filter((x) => x !== m);
          m.resolve(f.sendAck);
        })
        .catch((e) => {
          m.sending = false;
          if (e.retryable && m.tries < 50) {
            if (e.code !== 'DISCONNECTED') setTimeout(() => this.flushOutbox(), Math.min(5000, 200 * m.tries));
            return;
          }
          this.outbox = this.outbox.filter((x) => x !== m);
          m.reject(e);
        });
    }
  }
}

/**
 * Sends through the client's outbox and keeps `store` in step: a local
 * entry while unacked, the stored message once the SendAck names it, a
 * failed entry on a final error. Calls `changed` after each step; resolves
 * with the SendAck, or null when it failed.
 */
export function sendTracked(client, store, from, toUser, content, changed) {
  const clientMsgId = uuid();
  store.addLocal(clientMsgId, { clientMsgId, fromUser: from, toUser, content });
  changed();
  return client.send(toUser, content, clientMsgId).then(
    (ack) => {
      store.add({ msgId: ack.msgId, conversationId: ack.conversationId, seq: ack.seq, fromUser: from, toUser, content, clientMsgId, serverTimeMs: ack.serverTimeMs });
      changed();
      return ack;
    },
    (e) => {
      store.failLocal(clientMsgId, describeError(e));
      changed();
      return null;
    },
  );
}

/**
 * Messages of several conversations, deduplicated by msgId and ordered by
 * seq within a conversation. Local sends not yet acked are kept apart by
 * clientMsgId and dropped when the stored message shows up.
 */
export class MessageStore {
  constructor() {
    this.byConv = new Map(); // conversationId -> Map(msgId -> message)
    this.local = new Map(); // clientMsgId -> { message, state, error }
  }

  /** Adds a stored message; false when it was already there (as it is). */
  add(m) {
    let conv = this.byConv.get(m.conversationId);
    if (!conv) {
      conv = new Map();
      this.byConv.set(m.conversationId, conv);
    }
    this.local.delete(m.clientMsgId);
    const had = conv.get(m.msgId);
    // A copy that arrives recalled (history, replay) replaces what we had.
    if (had && (had.recalledBy || !m.recalledBy)) return false;
    conv.set(m.msgId, m);
    return true;
  }

  /** Applies a Recalled frame: the message loses its content. */
  recall(r) {
    const conv = this.byConv.get(r.conversationId);
    const m = conv && conv.get(r.msgId);
    if (!m || m.recalledBy) return false;
    conv.set(r.msgId, { ...m, content: undefined, recalledBy: r.by, recalledMs: r.recalledMs });
    return true;
  }

  /** The highest seq held of a conversation (0: none). */
  newestSeq(conversationId) {
    const conv = this.byConv.get(conversationId);
    let max = 0;
    if (conv) for (const m of conv.values()) max = Math.max(max, Number(m.seq));
    return max;
  }

  addLocal(clientMsgId, message) {
    this.local.set(clientMsgId, { message, state: 'sending' });
  }

  failLocal(clientMsgId, error) {
    const l = this.local.get(clientMsgId);
    if (l) {
      l.state = 'failed';
      l.error = error;
    }
  }

  oldestSeq(conversationId) {
    const conv = this.byConv.get(conversationId);
    if (!conv || conv.size === 0) return null;
    let min = Infinity;
    for (const m of conv.values()) min = Math.min(min, Number(m.seq));
    return min;
  }

  /**
   * The messages of these conversations (in the given order: earlier
   * conversations first), each in seq order; then local unacked sends
   * addressed to `peer`.
   */
  list(conversationIds, peer) {
    const out = [];
    for (const id of conversationIds) {
      const conv = this.byConv.get(id);
      if (!conv) continue;
      const ms = [...conv.values()].sort((a, b) => Number(a.seq) - Number(b.seq));
      for (const m of ms) out.push({ message: m, state: 'stored' });
    }
    for (const l of this.local.values()) {
      if (peer === undefined || l.message.toUser === peer) out.push(l);
    }
    return out;
  }
}

/** Pages one conversation backwards; resolves with { added, hasMore }. */
export async function loadOlder(client, store, conversationId, sessionId, limit = 50) {
  const oldest = store.oldestSeq(conversationId);
  const sync = { conversationId, limit, beforeSeq: oldest === null ? '18446744073709551615' : String(oldest) };
  if (sessionId) sync.sessionId = sessionId;
  if (oldest === 1) return { added: 0, hasMore: false };
  let f;
  try {
    f = await client.request({ syncRequest: sync });
  } catch (e) {
    // A conversation nobody wrote in yet (e.g. a session just assigned).
    if (e.code === 'NOT_FOUND') return { added: 0, hasMore: false };
    throw e;
  }
  let added = 0;
  for (const m of f.historyPage.messages || []) if (store.add(m)) added += 1;
  return { added, hasMore: !!f.historyPage.hasMore };
}

/**
 * Catches up one conversation: fills every gap from the oldest message we
 * have to the newest the server has (replayed messages can arrive before
 * what came earlier), and, when we hold fewer than a page, pages back once.
 */
export async function catchUp(client, store, conversationId, sessionId) {
  for (let round = 0; round < 50; round += 1) {
    const conv = store.byConv.get(conversationId);
    if (!conv || conv.size === 0) {
      await loadOlder(client, store, conversationId, sessionId);
      return;
    }
    const seqs = [...conv.values()].map((m) => Number(m.seq)).sort((a, b) => a - b);
    let i = 0;
    while (i + 1 < seqs.length && seqs[i + 1] === seqs[i] + 1) i += 1;
    const sync = { conversationId, afterSeq: String(seqs[i]), limit: 200 };
    if (sessionId) sync.sessionId = sessionId;
    const f = await client.request({ syncRequest: sync });
    for (const m of f.historyPage.messages || []) store.add(m);
    if (!f.historyPage.hasMore) break;
  }
  const conv = store.byConv.get(conversationId);
  if (store.oldestSeq(conversationId) > 1 && conv.size < 50) await loadOlder(client, store, conversationId, sessionId);
}

/**
 * Read pointers as the server tells them: ours and the peer's, per
 * conversation. Loaded from ConversationsRequest after each (re)connect and
 * kept by ReadReceipt frames (pushed, or answering our MarkRead). Fires
 * 'change' when one moves. markRead() moves ours: only forward, at most one
 * MarkRead per conversation in flight, the newest seq wins.
 */
export class ReadState extends EventTarget {
  constructor(client) {
    super();
    this.client = client;
    this.mine = new Map(); // conversationId -> seq
    this.peers = new Map();
    this.due = new Map(); // conversationId -> seq to mark
    this.sending = new Set();
    client.addEventListener('frame', (ev) => {
      const f = ev.detail;
      if (f.readReceipt) this.receipt(f.readReceipt);
    });
    client.addEventListener('ready', () => {
      this.load().catch(() => {});
      for (const c of [...this.due.keys()]) this.flush(c);
    });
  }

  receipt(r) {
    const me = this.client.me && this.client.me.userId;
    if (this.raise(r.reader === me ? this.mine : this.peers, r.conversationId, r.upToSeq)) this.changed();
  }

  raise(map, conversationId, seq) {
    const n = Number(seq || 0);
    if (n <= (map.get(conversationId) || 0)) return false;
    map.set(conversationId, n);
    return true;
  }

  changed() {
    if (this.pendingChange) return;
    this.pendingChange = true;
    queueMicrotask(() => {
      this.pendingChange = false;
      this.dispatchEvent(new Event('change'));
    });
  }

  /** The pointers of our most recent conversations (a few pages). */
  async load() {
    let cursor = '';
    let moved = false;
    for (let page = 0; page < 5; page += 1) {
      const f = await this.client.request({ conversationsRequest: { cursor, limit: 100 } });
      for (const i of f.conversationPage.items || []) {
        moved = this.raise(this.mine, i.conversationId, i.readSeq) || moved;
        moved = this.raise(this.peers, i.conversationId, i.peerReadSeq) || moved;
      }
      cursor = f.conversationPage.nextCursor || '';
      if (!cursor) break;
    }
    if (moved) this.changed();
  }

  readSeq(conversationId) {
    return this.mine.get(conversationId) || 0;
  }

  peerReadSeq(conversationId) {
    return this.peers.get(conversationId) || 0;
  }

  /** Marks the conversation read up to `seq` (when that moves our pointer). */
  markRead(conversationId, seq) {
    const n = Number(seq || 0);
    if (!conversationId || n <= this.readSeq(conversationId) || n <= (this.due.get(conversationId) || 0)) return;
    this.due.set(conversationId, n);
    this.flush(conversationId);
  }

  flush(conversationId) {
    if (this.sending.has(conversationId) || !this.client.authed) return;
    const seq = this.due.get(conversationId);
    if (!seq) return;
    this.due.delete(conversationId);
    this.sending.add(conversationId);
    this.client.request({ markRead: { conversationId, upToSeq: String(seq) } })
      .catch((e) => {
        // Lost with the connection: sent again once it is back.
        if (e.code === 'DISCONNECTED' && seq > this.readSeq(conversationId)) {
          this.due.set(conversationId, Math.max(seq, this.due.get(conversationId) || 0));
        }
      })
      .finally(() => {
        this.sending.delete(conversationId);
        this.flush(conversationId);
      });
  }
}
