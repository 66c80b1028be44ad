// @dongdong/client, built from sdk/js/src by sdk/js/scripts/bundle.mjs: do not edit here.
// The consoles import it; any page may (docs/sdk.md).
var __defProp = Object.defineProperty;
var __defNormalProp = (obj, key, value) => key in obj ? __defProp(obj, key, { enumerable: true, configurable: true, writable: true, value }) : obj[key] = value;
var __publicField = (obj, key, value) => __defNormalProp(obj, typeof key !== "symbol" ? key + "" : key, value);

// src/backoff.ts
var Backoff = class {
  constructor(floorMs = 500, ceilingMs = 2e4, random = Math.random) {
    __publicField(this, "floorMs", floorMs);
    __publicField(this, "ceilingMs", ceilingMs);
    __publicField(this, "random", random);
    __publicField(this, "attempt", 0);
  }
  /** The wait before the next attempt. */
  next() {
    const cap = Math.min(this.ceilingMs, this.floorMs * 2 ** this.attempt);
    this.attempt = Math.min(this.attempt + 1, 30);
    return this.floorMs + this.random() * (cap - this.floorMs);
  }
  /** After a success: the next failure waits little again. */
  reset() {
    this.attempt = 0;
  }
};

// src/cache.ts
var MAX_HELD = 1e3;
var FILL_PAGE = 200;
var ConversationCache = class {
  // msgId -> seq
  constructor(io) {
    __publicField(this, "io", io);
    __publicField(this, "conversations", /* @__PURE__ */ new Map());
    __publicField(this, "seen", /* @__PURE__ */ new Map());
  }
  /** The app's messages of a conversation, in seq order. */
  messages(conversationId) {
    const c = this.conversations.get(conversationId);
    if (!c) return [];
    const out = [];
    for (let s = c.low; s <= c.high; s += 1) {
      const m = c.bySeq.get(s);
      if (m) out.push(m);
    }
    return out;
  }
  /** The highest seq the app has of a conversation (0: none). */
  newestSeq(conversationId) {
    return this.conversations.get(conversationId)?.high ?? 0;
  }
  /** The lowest seq the app has (0: none). */
  oldestSeq(conversationId) {
    return this.conversations.get(conversationId)?.low ?? 0;
  }
  /** Whether the app already has this message. */
  has(msgId) {
    return this.seen.has(msgId);
  }
  /**
   * A pushed or replayed message. What is released goes to `io.released`
   * (this message and any held behind it, in seq order).
   */
  push(m) {
    const id = m.msgId ?? "";
    if (!id || !m.conversationId) return "dropped";
    if (this.seen.has(id)) {
      this.refresh(m);
      return "duplicate";
    }
    const seq = Number(m.seq ?? 0);
    const c = this.conversation(m.conversationId);
    if (c.high === 0) {
      this.accept(c, seq, m);
      c.low = seq;
      c.high = seq;
      this.release(m.conversationId, c, [m], "live");
      return "released";
    }
    if (seq < c.low) {
      if (c.below.size >= MAX_HELD) return "dropped";
      c.below.set(seq, m);
      const added = this.drainBelow(c);
      if (added.length === 0) {
        this.fillBelow(m.conversationId, c);
        return "held";
      }
      this.release(m.conversationId, c, added, "history");
      return "released";
    }
    if (seq <= c.high) return "dropped";
    if (seq === c.high + 1) {
      this.accept(c, seq, m);
      c.high = seq;
      this.release(m.conversationId, c, [m, ...this.drainHeld(c)], "live");
      return "released";
    }
    this.fill(m.conversationId, c);
    if (c.held.size >= MAX_HELD) return "dropped";
    c.held.set(seq, m);
    return "held";
  }
  /** A page of history (older or newer) of a conversation, added in place. */
  addHistory(conversationId, page) {
    if (page.length === 0) return [];
    const c = this.conversation(conversationId);
    const sorted = [...page].sort((a, b) => Number(a.seq) - Number(b.seq));
    const added = [];
    if (c.high === 0) {
      for (const m of sorted) {
        if (c.high !== 0 && Number(m.seq) !== c.high + 1) break;
        this.accept(c, Number(m.seq), m);
        if (c.low === 0) c.low = Number(m.seq);
        c.high = Number(m.seq);
        added.push(m);
      }
    } else {
      for (const m of sorted.filter((m2) => Number(m2.seq) < c.low).reverse()) {
        if (Number(m.seq) !== c.low - 1) break;
        this.accept(c, Number(m.seq), m);
        c.low = Number(m.seq);
        c.below.delete(c.low);
        added.unshift(m);
      }
      added.unshift(...this.drainBelow(c));
      const newer = [];
      for (const page2 of sorted.filter((m) => Number(m.seq) > c.high)) {
        if (Number(page2.seq) !== c.high + 1) break;
        const held = c.held.get(Number(page2.seq));
        const m = held?.recalledBy ? held : page2;
        this.accept(c, Number(m.seq), m);
        c.high = Number(m.seq);
        c.held.delete(Number(m.seq));
        newer.push(m);
      }
      newer.push(...this.drainHeld(c));
      added.push(...newer);
    }
    for (const m of sorted) this.refresh(m);
    return this.release(conversationId, c, added, "history");
  }
  /** A `Recalled` push: the message loses its content wherever it is. */
  recall(r) {
    const id = r.msgId ?? "";
    const c = r.conversationId ? this.conversations.get(r.conversationId) : void 0;
    if (!id || !c) return null;
    const where = [c.bySeq, c.held, c.below].find((map) => {
      const seq2 = this.seen.get(id);
      return seq2 !== void 0 ? map.get(seq2)?.msgId === id : [...map.values()].some((m2) => m2.msgId === id);
    });
    if (!where) return null;
    const [seq, m] = [...where].find(([, m2]) => m2.msgId === id) ?? [];
    if (seq === void 0 || !m || m.recalledBy) return null;
    const recalled = { ...m, content: void 0, recalledBy: r.by, recalledMs: r.recalledMs };
    where.set(seq, recalled);
    if (where === c.bySeq) this.io.recalled(recalled);
    return recalled;
  }
  /** Forgets everything (a new user signed in on this client). */
  clear() {
    this.conversations.clear();
    this.seen.clear();
  }
  conversation(id) {
    let c = this.conversations.get(id);
    if (!c) {
      c = { bySeq: /* @__PURE__ */ new Map(), low: 0, high: 0, held: /* @__PURE__ */ new Map(), below: /* @__PURE__ */ new Map(), filling: false, failures: 0 };
      this.conversations.set(id, c);
    }
    return c;
  }
  accept(c, seq, m) {
    c.bySeq.set(seq, m);
    this.seen.set(m.msgId ?? "", seq);
  }
  /** A copy of a message seen before: a recall it shows is applied. */
  refresh(m) {
    if (m.recalledBy) this.recall({ msgId: m.msgId, conversationId: m.conversationId, by: m.recalledBy, recalledMs: m.recalledMs });
  }
  /** Held pushes that now continue the run, in order. */
  drainHeld(c) {
    const out = [];
    for (; ; ) {
      const next = c.held.get(c.high + 1);
      if (!next) break;
      c.held.delete(c.high + 1);
      if (this.seen.has(next.msgId ?? "")) continue;
      this.accept(c, c.high + 1, next);
      c.high += 1;
      out.push(next);
    }
    for (const s of [...c.held.keys()]) if (s <= c.high) c.held.delete(s);
    return out;
  }
  /** Late pushes that now continue the run downwards, oldest first. */
  drainBelow(c) {
    const out = [];
    for (; ; ) {
      const next = c.below.get(c.low - 1);
      if (!next) break;
      c.below.delete(c.low - 1);
      if (this.seen.has(next.msgId ?? "")) continue;
      this.accept(c, c.low - 1, next);
      c.low -= 1;
      out.unshift(next);
    }
    return out;
  }
  /** Fetches, newest first, what lies between late pushes below the run and the run. */
  fillBelow(conversationId, c) {
    const top = Math.max(...c.below.keys());
    const limit = Math.min(FILL_PAGE, c.low - top - 1);
    this.io.older(conversationId, c.low, limit).then(
      (page) => {
        this.addHistory(conversationId, page.messages ?? []);
        if (c.below.size > 0 && (page.messages ?? []).length > 0) this.fillBelow(conversationId, c);
      },
      () => {
      }
    );
  }
  release(conversationId, c, messages, how) {
    if (messages.length) this.io.released(conversationId, messages, how);
    if (c.held.size > 0) this.fill(conversationId, c);
    return messages;
  }
  /** Fetches the messages between what the app has and what is held. */
  fill(conversationId, c) {
    if (c.filling) return;
    c.filling = true;
    const pause = c.failures === 0 ? 0 : Math.min(1e4, 250 * 2 ** c.failures);
    setTimeout(() => {
      this.io.history(conversationId, c.high, FILL_PAGE).then(
        (page) => {
          c.filling = false;
          c.failures = 0;
          this.addHistory(conversationId, page.messages ?? []);
          if (page.hasMore && !c.filling) this.fill(conversationId, c);
        },
        () => {
          c.filling = false;
          c.failures += 1;
          if (c.held.size > 0) this.fill(conversationId, c);
        }
      );
    }, pause);
  }
};

// src/codec.ts
var jsonCodec = {
  binary: false,
  encode: (frame) => JSON.stringify(frame),
  decode: (data) => {
    if (typeof data !== "string") throw new Error("a binary message on a JSON connection");
    return JSON.parse(data);
  }
};

// src/errors.ts
var DongdongError = class _DongdongError extends Error {
  constructor(code, message, retryable) {
    super(message || code);
    __publicField(this, "code");
    /** Whether trying the same request again later may succeed. */
    __publicField(this, "retryable");
    this.name = "DongdongError";
    this.code = code;
    this.retryable = retryable;
  }
  /** From the server's `Error` frame. */
  static fromFrame(e) {
    return new _DongdongError(e.code ?? "ERROR_CODE_UNSPECIFIED", e.message ?? "", !!e.retryable);
  }
};

// src/events.ts
var Emitter = class {
  constructor() {
    __publicField(this, "listeners", /* @__PURE__ */ new Map());
  }
  on(type, listener) {
    let set = this.listeners.get(type);
    if (!set) {
      set = /* @__PURE__ */ new Set();
      this.listeners.set(type, set);
    }
    set.add(listener);
    return () => set.delete(listener);
  }
  emit(type, payload) {
    for (const listener of [...this.listeners.get(type) ?? []]) {
      try {
        listener(payload);
      } catch (e) {
        queueMicrotask(() => {
          throw e;
        });
      }
    }
  }
};

// src/protocol.ts
var ERROR_CODES = ["ERROR_CODE_UNSPECIFIED", "BAD_FRAME", "UNAUTHENTICATED", "FORBIDDEN", "NOT_FOUND", "TOO_LARGE", "RATE_LIMITED", "UNAVAILABLE", "INTERNAL", "INVALID_ARGUMENT", "CONFLICT", "TOO_LATE"];
var CLOSE = {
  NORMAL: 1e3,
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
  LOGGED_OUT: 4004
};

// src/connection.ts
var FINAL = {
  [CLOSE.REPLACED]: "this device signed in on another connection",
  [CLOSE.LOGGED_OUT]: "logged out by the server"
};
var Connection = class extends Emitter {
  constructor(options) {
    super();
    __publicField(this, "options", options);
    __publicField(this, "state", "offline");
    /** The last `AuthOk`. */
    __publicField(this, "me", null);
    __publicField(this, "ws", null);
    __publicField(this, "nextReq", 1);
    __publicField(this, "waiting", /* @__PURE__ */ new Map());
    __publicField(this, "resumeToken", "");
    __publicField(this, "retryTimer", null);
    __publicField(this, "pingTimer", null);
    __publicField(this, "lastHeard", 0);
    __publicField(this, "stopped", true);
    __publicField(this, "onOnline", () => {
      if (this.state !== "offline" || this.stopped) return;
      if (this.retryTimer) clearTimeout(this.retryTimer);
      void this.open();
    });
  }
  /** Starts connecting (and keeps the connection up until `close`). */
  start() {
    if (!this.stopped) return;
    this.stopped = false;
    globalThis.addEventListener?.("online", this.onOnline);
    void this.open();
  }
  /** Closes for good: pending requests fail with CLOSED. */
  close() {
    this.stopped = true;
    globalThis.removeEventListener?.("online", this.onOnline);
    if (this.retryTimer) clearTimeout(this.retryTimer);
    const ws = this.ws;
    this.lost(new DongdongError("CLOSED", "the client was closed", false));
    ws?.close(CLOSE.NORMAL);
    this.setState("closed");
  }
  /**
   * Drops the socket as a lost network would (no Close frame where the
   * WebSocket can do that, as Node's `ws` can), and comes back (tests).
   */
  dropSocket() {
    const ws = this.ws;
    if (ws?.terminate) ws.terminate();
    else ws?.close(4e3, "dropped");
  }
  isOpen() {
    return this.state === "open";
  }
  /** Sends a request and resolves with its answer (an `Error` frame rejects). */
  request(body, timeoutMs = this.options.requestTimeoutMs) {
    return new Promise((resolve, reject) => {
      if (this.state !== "open") {
        reject(new DongdongError("DISCONNECTED", "not connected", true));
        return;
      }
      const reqId = String(this.nextReq++);
      const timer = setTimeout(() => {
        this.waiting.delete(reqId);
        reject(new DongdongError("TIMEOUT", "the server did not answer in time", true));
      }, timeoutMs);
      this.waiting.set(reqId, { resolve, reject, timer });
      this.raw({ reqId, ...body });
    });
  }
  /** Sends a frame nobody waits an answer for (acks, typing). */
  fire(body) {
    return this.state === "open" && this.raw(body);
  }
  raw(frame) {
    const ws = this.ws;
    if (!ws || ws.readyState !== 1) return false;
    ws.send(this.options.codec.encode(frame));
    return true;
  }
  setState(state, reason, code) {
    if (this.state === state && !reason) return;
    this.state = state;
    this.emit("state", { state, reason, code });
  }
  async open() {
    if (this.stopped) return;
    this.retryTimer = null;
    const resuming = this.options.resume && this.resumeToken !== "";
    this.setState(resuming ? "resuming" : "connecting");
    let token;
    try {
      token = typeof this.options.token === "function" ? await this.options.token() : this.options.token;
    } catch (e) {
      this.retry(`no token: ${e.message}`);
      return;
    }
    if (this.stopped) return;
    let ws;
    try {
      ws = new this.options.WebSocket(this.options.url);
    } catch (e) {
      this.retry(e.message);
      return;
    }
    this.ws = ws;
    if (this.options.codec.binary) ws.binaryType = "arraybuffer";
    ws.onopen = () => {
      const auth = { token, deviceId: this.options.deviceId, resumeToken: resuming ? this.resumeToken : void 0 };
      const reqId = String(this.nextReq++);
      const timer = setTimeout(() => ws.close(4e3, "no AuthOk"), this.options.requestTimeoutMs);
      this.waiting.set(reqId, {
        resolve: (f) => this.signedIn(ws, f.authOk ?? {}),
        reject: (e) => this.setState("offline", e.message),
        timer
      });
      this.raw({ reqId, auth });
    };
    ws.onmessage = (ev) => {
      if (ws !== this.ws) return;
      let frame;
      try {
        frame = this.options.codec.decode(ev.data);
      } catch {
        return;
      }
      this.heard(frame);
    };
    ws.onerror = () => {
    };
    ws.onclose = (ev) => this.closed(ws, ev.code, ev.reason);
  }
  signedIn(ws, ok) {
    if (ws !== this.ws) return;
    this.me = ok;
    this.resumeToken = ok.resumeToken ?? "";
    this.options.backoff.reset();
    this.lastHeard = Date.now();
    this.schedulePing();
    this.setState("open");
    this.emit("ready", ok);
  }
  heard(frame) {
    this.lastHeard = Date.now();
    const reqId = frame.reqId ?? "0";
    const waiting = reqId !== "0" ? this.waiting.get(reqId) : void 0;
    if (waiting) {
      this.waiting.delete(reqId);
      clearTimeout(waiting.timer);
      if (frame.error) waiting.reject(DongdongError.fromFrame(frame.error));
      else waiting.resolve(frame);
      return;
    }
    this.emit("frame", frame);
  }
  /** Pings when the connection has been quiet for `pingEveryMs`. */
  schedulePing() {
    if (this.pingTimer) clearTimeout(this.pingTimer);
    const ws = this.ws;
    const quiet = Date.now() - this.lastHeard;
    this.pingTimer = setTimeout(
      () => {
        if (ws !== this.ws || this.state !== "open") return;
        if (Date.now() - this.lastHeard < this.options.pingEveryMs) {
          this.schedulePing();
          return;
        }
        this.request({ ping: {} }, this.options.pongTimeoutMs).then(
          () => this.schedulePing(),
          (e) => {
            if (e.code === "TIMEOUT" && ws === this.ws) ws?.close(4e3, "no pong");
          }
        );
      },
      Math.max(0, this.options.pingEveryMs - quiet)
    );
  }
  closed(ws, code, reason) {
    if (ws !== this.ws) return;
    this.lost(new DongdongError("DISCONNECTED", "the connection was lost", true));
    if (this.stopped) return;
    const final = FINAL[code];
    if (final) {
      this.stopped = true;
      this.setState("closed", reason || final, code);
      return;
    }
    if (code === CLOSE.POLICY_VIOLATION && typeof this.options.token !== "function") {
      this.stopped = true;
      this.setState("closed", reason || "sign-in refused", code);
      return;
    }
    if (code === CLOSE.POLICY_VIOLATION) this.resumeToken = "";
    this.retry(reason || `closed (${code})`);
  }
  lost(error) {
    if (this.pingTimer) clearTimeout(this.pingTimer);
    this.pingTimer = null;
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
      if (ws.readyState <= 1) ws.close(CLOSE.NORMAL);
    }
    for (const w of this.waiting.values()) {
      clearTimeout(w.timer);
      w.reject(error);
    }
    this.waiting.clear();
  }
  retry(reason) {
    if (this.stopped) return;
    const delay = this.options.backoff.next();
    this.setState("offline", `${reason}; trying again in ${Math.ceil(delay / 1e3)} s`);
    this.retryTimer = setTimeout(() => void this.open(), delay);
  }
};

// src/http.ts
var RENEW_BEFORE_MS = 6e4;
var MAX_LINKS = 1e3;
var HttpApi = class {
  constructor(base, token) {
    __publicField(this, "base", base);
    __publicField(this, "token", token);
    __publicField(this, "links", /* @__PURE__ */ new Map());
  }
  async bearer() {
    return `Bearer ${typeof this.token === "function" ? await this.token() : this.token}`;
  }
  /** A JSON request; an `{"error": …}` answer throws a DongdongError. */
  async call(method, path, body) {
    const headers = { authorization: await this.bearer() };
    if (body !== void 0) headers["content-type"] = "application/json";
    let r;
    try {
      r = await fetch(this.base + path, { method, headers, body: body === void 0 ? void 0 : JSON.stringify(body) });
    } catch {
      throw new DongdongError("UNAVAILABLE", "the server cannot be reached", true);
    }
    return answer(r.status, await r.text());
  }
  /** Uploads the bytes; resolves with what the server made of them. */
  async upload(data, options = {}) {
    const path = `${this.base}/api/v1/files${options.name ? `?name=${encodeURIComponent(options.name)}` : ""}`;
    const type = options.contentType ?? (data.type || "application/octet-stream");
    const total = data.size ?? data.byteLength;
    const auth = await this.bearer();
    let status;
    let text;
    if (typeof XMLHttpRequest !== "undefined") {
      ({ status, text } = await new Promise((resolve, reject) => {
        const xhr = new XMLHttpRequest();
        xhr.open("POST", path);
        xhr.setRequestHeader("authorization", auth);
        xhr.setRequestHeader("content-type", type);
        xhr.upload.onprogress = (e) => options.onProgress?.(e.loaded, e.total || total);
        xhr.onload = () => resolve({ status: xhr.status, text: xhr.responseText });
        xhr.onerror = () => reject(new DongdongError("UNAVAILABLE", "the upload was cut off", true));
        xhr.send(data);
      }));
    } else {
      options.onProgress?.(0, total);
      let r;
      try {
        r = await fetch(path, { method: "POST", headers: { authorization: auth, "content-type": type }, body: data });
      } catch {
        throw new DongdongError("UNAVAILABLE", "the upload was cut off", true);
      }
      status = r.status;
      text = await r.text();
    }
    const d = answer(status, text);
    options.onProgress?.(total, total);
    this.remember(d.file_id, d);
    return {
      fileId: d.file_id,
      name: d.name,
      size: d.size,
      contentType: d.content_type,
      sha256: d.sha256,
      width: d.width,
      height: d.height,
      thumbnailId: d.thumbnail_id,
      url: this.base + d.url,
      thumbnailUrl: d.thumbnail_url ? this.base + d.thumbnail_url : null,
      expiresMs: d.expires_ms
    };
  }
  /** A signed link of a file or its thumbnail, renewed before it expires. */
  async link(fileId, thumbnail = false) {
    let l = this.links.get(fileId);
    if (!l || l.expiresMs - RENEW_BEFORE_MS < Date.now()) {
      const d = await this.call("POST", `/api/v1/files/${encodeURIComponent(fileId)}/link`);
      this.remember(fileId, d);
      l = this.links.get(fileId);
    }
    const url = thumbnail ? l?.thumbnailUrl ?? l?.url : l?.url;
    return this.base + (url ?? "");
  }
  remember(fileId, d) {
    if (this.links.size >= MAX_LINKS) this.links.delete(this.links.keys().next().value);
    this.links.set(fileId, { url: d.url, thumbnailUrl: d.thumbnail_url, expiresMs: d.expires_ms });
  }
};
function answer(status, text) {
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (status >= 200 && status < 300) return data;
  const e = data?.error ?? {};
  throw new DongdongError(e.code ?? "INTERNAL", e.message ?? `HTTP ${status}`, status >= 500 || status === 429);
}

// src/outbox.ts
var KEEP_SENT = 1e3;
var WINDOW = 32;
var MAX_TRIES = 50;
var Outbox = class {
  constructor(store, key, io) {
    __publicField(this, "store", store);
    __publicField(this, "key", key);
    __publicField(this, "io", io);
    __publicField(this, "entries", /* @__PURE__ */ new Map());
    __publicField(this, "inFlight", /* @__PURE__ */ new Set());
    __publicField(this, "waiters", /* @__PURE__ */ new Map());
    __publicField(this, "retryTimer", null);
    __publicField(this, "deadlineTimer", null);
    __publicField(this, "closed", false);
  }
  /** Loads what a previous page (or process) left; pending ones go out. */
  async load() {
    const kept = await this.store.load(this.key);
    kept.sort((a, b) => a.createdMs - b.createdMs);
    for (const e of kept) {
      if (!this.entries.has(e.clientMsgId)) this.entries.set(e.clientMsgId, e);
    }
    this.expire();
    this.flush();
  }
  /** Every entry, oldest first. */
  list() {
    return [...this.entries.values()];
  }
  get(clientMsgId) {
    return this.entries.get(clientMsgId);
  }
  /** Adds a send; the promise settles when it is sent or fails. */
  add(entry) {
    const done = new Promise((resolve, reject) => this.waiters.set(entry.clientMsgId, { resolve, reject }));
    this.entries.set(entry.clientMsgId, entry);
    void this.store.put(this.key, entry);
    this.io.changed(entry);
    this.flush();
    return done;
  }
  /** Sends a failed entry again (same `clientMsgId`), with a new deadline. */
  retry(clientMsgId, deadlineMs) {
    const e = this.entries.get(clientMsgId);
    if (!e || e.status !== "failed") return Promise.reject(new DongdongError("CONFLICT", "not a failed send", false));
    const done = new Promise((resolve, reject) => this.waiters.set(clientMsgId, { resolve, reject }));
    Object.assign(e, { status: "pending", tries: 0, deadlineMs, error: void 0 });
    void this.store.put(this.key, e);
    this.io.changed(e);
    this.flush();
    return done;
  }
  /** Forgets a failed (or sent) entry. */
  discard(clientMsgId) {
    const e = this.entries.get(clientMsgId);
    if (!e || e.status === "pending") return;
    this.entries.delete(clientMsgId);
    void this.store.remove(this.key, clientMsgId);
  }
  /** Sends what is pending and not in flight, oldest first, within the window. */
  flush() {
    if (!this.io.connected()) return;
    for (const e of this.entries.values()) {
      if (this.inFlight.size >= WINDOW) break;
      if (e.status !== "pending" || this.inFlight.has(e.clientMsgId)) continue;
      this.inFlight.add(e.clientMsgId);
      e.tries += 1;
      this.io.send(e).then(
        (ack) => this.sent(e, ack),
        (err) => this.refused(e, err)
      );
    }
    this.scheduleDeadline();
  }
  /** Stops its timers (the client closed; what is kept stays in the store). */
  close() {
    if (this.retryTimer) clearTimeout(this.retryTimer);
    if (this.deadlineTimer) clearTimeout(this.deadlineTimer);
    this.retryTimer = this.deadlineTimer = null;
    this.closed = true;
  }
  /** The connection was lost: what was in flight is sent again later. */
  disconnected() {
    this.inFlight.clear();
  }
  /** The peer read the conversation up to `seq`. */
  readUpTo(conversationId, seq) {
    for (const e of this.entries.values()) {
      if (e.status === "sent" && e.conversationId === conversationId && Number(e.seq) <= seq) {
        e.status = "read";
        this.io.changed(e);
      }
    }
  }
  sent(e, ack) {
    this.inFlight.delete(e.clientMsgId);
    if (e.status !== "pending") return;
    Object.assign(e, {
      status: "sent",
      msgId: ack.msgId,
      conversationId: ack.conversationId,
      seq: ack.seq,
      serverTimeMs: ack.serverTimeMs
    });
    void this.store.remove(this.key, e.clientMsgId);
    this.io.changed(e);
    this.settle(e.clientMsgId, ack);
    this.forgetOldSent();
    this.flush();
  }
  refused(e, err) {
    this.inFlight.delete(e.clientMsgId);
    if (e.status !== "pending") return;
    if (err.code === "DISCONNECTED") return;
    if (err.retryable && e.tries < MAX_TRIES) {
      if (!this.retryTimer && !this.closed) {
        const delay = Math.min(5e3, 200 * e.tries);
        this.retryTimer = setTimeout(() => {
          this.retryTimer = null;
          this.flush();
        }, delay);
      }
      return;
    }
    this.fail(e, err.code, err.message);
  }
  fail(e, code, message) {
    e.status = "failed";
    e.error = { code, message };
    void this.store.put(this.key, e);
    this.io.changed(e);
    this.settle(e.clientMsgId, new DongdongError(code, message, false));
  }
  settle(clientMsgId, outcome) {
    const w = this.waiters.get(clientMsgId);
    if (!w) return;
    this.waiters.delete(clientMsgId);
    if (outcome instanceof DongdongError) w.reject(outcome);
    else w.resolve(outcome);
  }
  /** Pending entries past their deadline (not in flight) fail with EXPIRED. */
  expire() {
    const now = Date.now();
    for (const e of this.entries.values()) {
      if (e.status === "pending" && !this.inFlight.has(e.clientMsgId) && e.deadlineMs <= now) {
        this.fail(e, "EXPIRED", "it could not be sent in time");
      }
    }
  }
  scheduleDeadline() {
    if (this.deadlineTimer) clearTimeout(this.deadlineTimer);
    if (this.closed) return;
    let next = Infinity;
    for (const e of this.entries.values()) if (e.status === "pending") next = Math.min(next, e.deadlineMs);
    if (next === Infinity) return;
    this.deadlineTimer = setTimeout(
      () => {
        this.deadlineTimer = null;
        this.expire();
        this.scheduleDeadline();
      },
      Math.max(0, next - Date.now()) + 1
    );
  }
  forgetOldSent() {
    let sent = 0;
    for (const e of this.entries.values()) if (e.status === "sent" || e.status === "read") sent += 1;
    for (const [id, e] of this.entries) {
      if (sent <= KEEP_SENT) break;
      if (e.status === "sent" || e.status === "read") {
        this.entries.delete(id);
        sent -= 1;
      }
    }
  }
};

// src/reads.ts
var LIST_PAGES = 5;
var ReadState = class {
  constructor(io) {
    __publicField(this, "io", io);
    __publicField(this, "items", /* @__PURE__ */ new Map());
    __publicField(this, "due", /* @__PURE__ */ new Map());
    __publicField(this, "sending", /* @__PURE__ */ new Set());
  }
  /** The conversations, most recently active first. */
  list() {
    return [...this.items.values()].sort(
      (a, b) => Number(b.lastMessage?.serverTimeMs ?? 0) - Number(a.lastMessage?.serverTimeMs ?? 0)
    );
  }
  get(conversationId) {
    return this.items.get(conversationId);
  }
  /** Your read pointer of a conversation (0: nothing read). */
  readSeq(conversationId) {
    return Number(this.items.get(conversationId)?.readSeq ?? 0);
  }
  /** The peer's read pointer. */
  peerReadSeq(conversationId) {
    return Number(this.items.get(conversationId)?.peerReadSeq ?? 0);
  }
  /** Unread messages of every conversation listed. */
  unreadTotal() {
    let n = 0;
    for (const i of this.items.values()) n += Number(i.unread ?? 0);
    return n;
  }
  /** Loads the list afresh (after each sign-in), then sends marks still due. */
  async load() {
    let cursor = "";
    for (let page = 0; page < LIST_PAGES; page += 1) {
      const p = await this.io.list(cursor, 100);
      for (const item of p.items ?? []) {
        const id = item.conversationId ?? "";
        const known = this.items.get(id);
        const readSeq = Math.max(Number(item.readSeq ?? 0), this.due.get(id) ?? 0);
        this.items.set(id, { ...known, ...item, readSeq: String(readSeq) });
        this.io.changed(this.items.get(id));
      }
      cursor = p.nextCursor ?? "";
      if (!cursor) break;
    }
    for (const id of [...this.due.keys()]) this.flush(id);
  }
  /** Messages the app received or sent (seq order). */
  messages(conversationId, messages) {
    const me = this.io.me();
    let item = this.items.get(conversationId);
    for (const m of messages) {
      const seq = Number(m.seq ?? 0);
      if (!item) {
        const peer = m.fromUser === me ? m.toUser : m.fromUser;
        item = { conversationId, peer, unread: "0", readSeq: "0", peerReadSeq: "0", lastSeq: "0" };
      }
      if (seq <= Number(item.lastSeq ?? 0)) continue;
      const fromPeer = m.fromUser !== me;
      const unread = Number(item.unread ?? 0) + (fromPeer && seq > this.readSeqOf(item) ? 1 : 0);
      const readSeq = fromPeer ? this.readSeqOf(item) : Math.max(this.readSeqOf(item), seq);
      item = { ...item, lastMessage: m, lastSeq: String(seq), unread: String(fromPeer ? unread : 0), readSeq: String(readSeq) };
    }
    if (item) {
      this.items.set(conversationId, item);
      this.io.changed(item);
    }
  }
  /** A `ReadReceipt` (pushed, or the answer to a MarkRead). */
  receipt(r) {
    const id = r.conversationId ?? "";
    const item = this.items.get(id);
    if (!item) return;
    const seq = Number(r.upToSeq ?? 0);
    if (r.reader === this.io.me()) {
      if (seq <= this.readSeqOf(item)) return;
      this.items.set(id, { ...item, readSeq: String(seq), unread: String(this.unreadAfter(item, seq)) });
    } else {
      if (seq <= Number(item.peerReadSeq ?? 0)) return;
      this.items.set(id, { ...item, peerReadSeq: String(seq) });
    }
    this.io.changed(this.items.get(id));
  }
  /**
   * Marks the conversation read up to `seq` (call it with the newest seq on
   * screen, once per screenful). Nothing happens when that does not move
   * your pointer.
   */
  markRead(conversationId, seq) {
    const item = this.items.get(conversationId);
    if (!conversationId || seq <= (item ? this.readSeqOf(item) : 0) || seq <= (this.due.get(conversationId) ?? 0)) return;
    this.due.set(conversationId, seq);
    if (item) {
      this.items.set(conversationId, { ...item, readSeq: String(seq), unread: String(this.unreadAfter(item, seq)) });
      this.io.changed(this.items.get(conversationId));
    }
    this.flush(conversationId);
  }
  flush(conversationId) {
    if (this.sending.has(conversationId)) return;
    const seq = this.due.get(conversationId);
    if (!seq) return;
    this.sending.add(conversationId);
    this.io.mark(conversationId, seq).then(
      (r) => {
        if ((this.due.get(conversationId) ?? 0) <= seq) this.due.delete(conversationId);
        this.receipt(r);
      },
      () => {
      }
    ).finally(() => {
      this.sending.delete(conversationId);
      if ((this.due.get(conversationId) ?? 0) > seq) this.flush(conversationId);
    });
  }
  readSeqOf(item) {
    return Number(item.readSeq ?? 0);
  }
  /** The peer's messages after `seq`, as far as the list can tell. */
  unreadAfter(item, seq) {
    return seq >= Number(item.lastSeq ?? 0) ? 0 : Number(item.unread ?? 0);
  }
};

// src/stores.ts
var MemoryStore = class {
  constructor() {
    __publicField(this, "data", /* @__PURE__ */ new Map());
  }
  async load(key) {
    return [...this.data.get(key)?.values() ?? []].map((e) => structuredClone(e));
  }
  async put(key, entry) {
    let m = this.data.get(key);
    if (!m) {
      m = /* @__PURE__ */ new Map();
      this.data.set(key, m);
    }
    m.set(entry.clientMsgId, structuredClone(entry));
  }
  async remove(key, clientMsgId) {
    this.data.get(key)?.delete(clientMsgId);
  }
};
var IndexedDbStore = class {
  constructor(name = "dongdong") {
    __publicField(this, "name", name);
    __publicField(this, "db");
    __publicField(this, "fallback", new MemoryStore());
    this.db = this.open();
  }
  open() {
    return new Promise((resolve) => {
      try {
        const req = indexedDB.open(this.name, 1);
        req.onupgradeneeded = () => req.result.createObjectStore("outbox");
        req.onsuccess = () => resolve(req.result);
        req.onerror = () => resolve(null);
        req.onblocked = () => resolve(null);
      } catch {
        resolve(null);
      }
    });
  }
  async tx(mode, run) {
    const db = await this.db;
    if (!db) return null;
    return new Promise((resolve, reject) => {
      const t = db.transaction("outbox", mode);
      const req = run(t.objectStore("outbox"));
      t.oncomplete = () => resolve(req.result);
      t.onerror = () => reject(t.error);
      t.onabort = () => reject(t.error);
    });
  }
  async load(key) {
    if (!await this.db) return this.fallback.load(key);
    const range = IDBKeyRange.bound([key, ""], [key, "\uFFFF"]);
    return await this.tx("readonly", (s) => s.getAll(range)) ?? [];
  }
  async put(key, entry) {
    if (!await this.db) return this.fallback.put(key, entry);
    await this.tx("readwrite", (s) => s.put(structuredClone(entry), [key, entry.clientMsgId]));
  }
  async remove(key, clientMsgId) {
    if (!await this.db) return this.fallback.remove(key, clientMsgId);
    await this.tx("readwrite", (s) => s.delete([key, clientMsgId]));
  }
};
function defaultStore() {
  return typeof indexedDB !== "undefined" ? new IndexedDbStore() : new MemoryStore();
}

// src/tabs.ts
function canShareTabs() {
  const nav = globalThis.navigator;
  return typeof BroadcastChannel !== "undefined" && !!nav?.locks;
}
var SharedLink = class extends Emitter {
  constructor(key, options) {
    super();
    __publicField(this, "key", key);
    __publicField(this, "options", options);
    __publicField(this, "state", "connecting");
    __publicField(this, "me", null);
    __publicField(this, "id", Math.random().toString(36).slice(2));
    __publicField(this, "channel");
    __publicField(this, "leader", null);
    __publicField(this, "releaseLock", null);
    __publicField(this, "nextId", 1);
    __publicField(this, "waiting", /* @__PURE__ */ new Map());
    __publicField(this, "stopped", true);
    this.channel = new BroadcastChannel(`dongdong:${key}`);
    this.channel.onmessage = (ev) => this.heard(ev.data);
  }
  start() {
    if (!this.stopped) return;
    this.stopped = false;
    const locks = navigator.locks;
    void locks.request(
      `dongdong:${this.key}`,
      () => new Promise((release) => {
        if (this.stopped) return release();
        this.releaseLock = release;
        this.lead();
      })
    );
    this.post({ type: "hello", from: this.id });
  }
  close() {
    this.stopped = true;
    this.leader?.close();
    this.leader = null;
    this.releaseLock?.();
    this.releaseLock = null;
    this.fail(new DongdongError("CLOSED", "the client was closed", false));
    this.channel.close();
    this.setState("closed");
  }
  isOpen() {
    return this.state === "open";
  }
  dropSocket() {
    this.leader?.dropSocket();
  }
  request(body, timeoutMs = 15e3) {
    if (this.leader) return this.leader.request(body, timeoutMs);
    return new Promise((resolve, reject) => {
      if (this.state !== "open") {
        reject(new DongdongError("DISCONNECTED", "not connected", true));
        return;
      }
      const id = this.nextId++;
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(new DongdongError("TIMEOUT", "the server did not answer in time", true));
      }, timeoutMs + 1e3);
      this.waiting.set(id, { resolve, reject, timer });
      this.post({ type: "request", from: this.id, id, body, timeoutMs });
    });
  }
  fire(body) {
    if (this.leader) return this.leader.fire(body);
    if (this.state !== "open") return false;
    this.post({ type: "fire", body });
    return true;
  }
  /** This tab holds the lock: it runs the connection for all. */
  lead() {
    this.fail(new DongdongError("DISCONNECTED", "the leading tab went away", true));
    const c = new Connection(this.options);
    this.leader = c;
    c.on("state", (s) => {
      this.setState(s.state, s.reason, s.code);
      this.post({ type: "state", state: s.state, reason: s.reason, code: s.code, me: c.me });
    });
    c.on("ready", (ok) => {
      this.me = ok;
      this.emit("ready", ok);
    });
    c.on("frame", (f) => {
      this.emit("frame", f);
      this.post({ type: "frame", frame: f });
    });
    c.start();
  }
  heard(w) {
    if (this.stopped) return;
    const leader = this.leader;
    if (leader) {
      if (w.type === "hello") this.post({ type: "state", state: leader.state, me: leader.me });
      else if (w.type === "fire") leader.fire(w.body);
      else if (w.type === "request") {
        leader.request(w.body, w.timeoutMs).then(
          (frame) => this.post({ type: "reply", to: w.from, id: w.id, frame }),
          (e) => this.post({ type: "reply", to: w.from, id: w.id, error: { code: e.code, message: e.message, retryable: e.retryable } })
        );
      }
      return;
    }
    if (w.type === "state") {
      const wasOpen = this.state === "open";
      this.me = w.me;
      this.setState(w.state, w.reason, w.code);
      if (w.state !== "open") this.fail(new DongdongError("DISCONNECTED", "the connection was lost", true));
      if (w.state === "open" && w.me && !wasOpen) this.emit("ready", w.me);
    } else if (w.type === "frame") {
      this.emit("frame", w.frame);
    } else if (w.type === "reply" && w.to === this.id) {
      const waiting = this.waiting.get(w.id);
      if (!waiting) return;
      this.waiting.delete(w.id);
      clearTimeout(waiting.timer);
      if (w.error) waiting.reject(new DongdongError(w.error.code, w.error.message, w.error.retryable));
      else waiting.resolve(w.frame ?? {});
    }
  }
  setState(state, reason, code) {
    if (this.state === state && !reason) return;
    this.state = state;
    this.emit("state", { state, reason, code });
  }
  fail(e) {
    for (const w of this.waiting.values()) {
      clearTimeout(w.timer);
      w.reject(e);
    }
    this.waiting.clear();
  }
  post(w) {
    try {
      this.channel.postMessage(w);
    } catch {
    }
  }
};

// src/client.ts
var NEWEST = "18446744073709551615";
var TYPING_TTL_MS = 6e3;
var TYPING_REFRESH_MS = 3e3;
var DongdongClient = class extends Emitter {
  constructor(options) {
    super();
    __publicField(this, "options", options);
    __publicField(this, "connection");
    __publicField(this, "http");
    __publicField(this, "outboxQueue");
    __publicField(this, "cache");
    __publicField(this, "reads");
    __publicField(this, "deadlineMs");
    __publicField(this, "watched", /* @__PURE__ */ new Set());
    __publicField(this, "typingTimers", /* @__PURE__ */ new Map());
    __publicField(this, "typingOut", /* @__PURE__ */ new Map());
    /** Pushed messages not acked yet (held ones among them). */
    __publicField(this, "delivered", /* @__PURE__ */ new Set());
    __publicField(this, "acks", []);
    __publicField(this, "eventAcks", []);
    __publicField(this, "ackTimer", null);
    __publicField(this, "loaded", null);
    const WS = options.WebSocket ?? globalThis.WebSocket;
    if (!WS) throw new Error("no WebSocket here: pass options.WebSocket (e.g. the `ws` package on Node < 22)");
    this.deadlineMs = options.sendDeadlineMs ?? 12e4;
    const connection = {
      url: options.url,
      token: options.token,
      deviceId: options.deviceId,
      codec: options.codec ?? jsonCodec,
      WebSocket: WS,
      resume: options.resume ?? true,
      requestTimeoutMs: options.requestTimeoutMs ?? 15e3,
      pingEveryMs: options.pingEveryMs ?? 25e3,
      pongTimeoutMs: options.pongTimeoutMs ?? 1e4,
      backoff: new Backoff()
    };
    this.connection = (options.shareTabs ?? true) && canShareTabs() ? new SharedLink(`${options.url}|${options.deviceId}`, connection) : new Connection(connection);
    this.http = new HttpApi(options.apiUrl ?? globalThis.location?.origin ?? "", options.token);
    this.cache = new ConversationCache({
      history: (c, after, limit) => this.sync({ conversationId: c, afterSeq: String(after), limit }),
      older: (c, before, limit) => this.sync({ conversationId: c, beforeSeq: String(before), limit }),
      released: (conversationId, messages, how) => {
        this.reads.messages(conversationId, messages);
        this.emit("messages", { conversationId, messages, how });
        for (const m of messages) if (this.delivered.delete(m.msgId ?? "")) this.queueAck(m.msgId);
      },
      recalled: (m) => this.emit("recalled", m)
    });
    this.reads = new ReadState({
      me: () => this.connection.me?.userId ?? "",
      list: async (cursor, limit) => (await this.connection.request({ conversationsRequest: { cursor, limit } })).conversationPage ?? {},
      mark: async (conversationId, upToSeq) => (await this.connection.request({ markRead: { conversationId, upToSeq: String(upToSeq) } })).readReceipt ?? {},
      changed: (item) => this.emit("conversation", item)
    });
    const storeKey = `${options.deviceId}`;
    this.outboxQueue = new Outbox(options.store ?? defaultStore(), storeKey, {
      connected: () => this.connection.isOpen(),
      send: async (e) => {
        const f = await this.connection.request({ send: { clientMsgId: e.clientMsgId, toUser: e.toUser, content: e.content } });
        return f.sendAck ?? {};
      },
      changed: (entry) => this.emit("outbox", { ...entry })
    });
    this.connection.on("state", (s) => {
      if (s.state !== "open") this.outboxQueue.disconnected();
      this.emit("state", s);
    });
    this.connection.on("ready", (ok) => this.ready(ok));
    this.connection.on("frame", (f) => this.pushed(f));
  }
  /** Starts connecting; resolves once the outbox a previous page left is loaded. */
  connect() {
    this.loaded ?? (this.loaded = this.outboxQueue.load());
    this.connection.start();
    return this.loaded;
  }
  /** Closes for good (what is unsent stays in the store for the next client). */
  close() {
    this.connection.close();
    this.outboxQueue.close();
    if (this.ackTimer) clearTimeout(this.ackTimer);
    for (const t of this.typingTimers.values()) clearTimeout(t);
    for (const t of this.typingOut.values()) clearInterval(t.timer);
  }
  get state() {
    return this.connection.state;
  }
  /** The signed-in user (after `ready`). */
  get me() {
    return this.connection.me;
  }
  // ---- messages --------------------------------------------------------
  /**
   * Sends a message: kept in the outbox (durably) and sent, again after
   * every reconnect with the same `clientMsgId`, until the server stores
   * it (resolves with the SendAck) or refuses it, or the deadline passes
   * (rejects with the code). Its status is also told by `outbox` events.
   */
  send(toUser, content, clientMsgId = uuid()) {
    const now = Date.now();
    const entry = {
      clientMsgId,
      toUser,
      content,
      createdMs: now,
      deadlineMs: now + this.deadlineMs,
      status: "pending",
      tries: 0
    };
    const done = this.outboxQueue.add(entry).then((ack) => {
      this.ownMessage(entry, ack);
      return ack;
    });
    return Object.assign(done, { clientMsgId });
  }
  sendText(toUser, text) {
    return this.send(toUser, { text });
  }
  /** Sends an uploaded image or file by its id (see `upload`). */
  sendFile(toUser, file) {
    const kind = file.contentType.startsWith("image/") ? { image: { fileId: file.fileId } } : { file: { fileId: file.fileId, name: file.name } };
    return this.send(toUser, kind);
  }
  /** Sends a failed message again (same `clientMsgId`), with a new deadline. */
  retry(clientMsgId) {
    const entry = this.outboxQueue.get(clientMsgId);
    return this.outboxQueue.retry(clientMsgId, Date.now() + this.deadlineMs).then((ack) => {
      if (entry) this.ownMessage(entry, ack);
      return ack;
    });
  }
  /** Forgets a failed message. */
  discard(clientMsgId) {
    this.outboxQueue.discard(clientMsgId);
  }
  /** This device's sends, oldest first, with their status. */
  outbox() {
    return this.outboxQueue.list().map((e) => ({ ...e }));
  }
  /** A conversation's messages the client holds, in seq order, without holes. */
  messages(conversationId) {
    return this.cache.messages(conversationId);
  }
  /** The highest seq held of a conversation (0: none). */
  newestSeq(conversationId) {
    return this.cache.newestSeq(conversationId);
  }
  /** The lowest seq held of a conversation (0: none; 1: it is all here). */
  oldestSeq(conversationId) {
    return this.cache.oldestSeq(conversationId);
  }
  /**
   * Fetches older messages (a page before the oldest held, or the newest
   * page when none is); resolves with how many came. `sessionId`: a
   * customer-service session that grants the reading (an agent reading the
   * conversation of a session transferred to them).
   */
  async loadOlder(conversationId, { limit = 50, sessionId } = {}) {
    const oldest = this.cache.oldestSeq(conversationId);
    if (oldest === 1) return { added: 0, hasMore: false };
    const before = oldest === 0 ? NEWEST : String(oldest);
    let page;
    try {
      page = await this.sync({ conversationId, beforeSeq: before, limit, sessionId });
    } catch (e) {
      if (e.code === "NOT_FOUND") return { added: 0, hasMore: false };
      throw e;
    }
    const added = this.cache.addHistory(conversationId, page.messages ?? []);
    return { added: added.length, hasMore: !!page.hasMore };
  }
  /**
   * Brings a conversation's cache up to what the server has: everything
   * after the newest held (a page at a time), or the newest page when none
   * is held, and a page before the oldest when fewer than 50 are held. For
   * a conversation the client was not pushed (a session just transferred
   * to an agent), or after a long time away.
   */
  async catchUp(conversationId, { sessionId } = {}) {
    if (this.cache.newestSeq(conversationId) === 0) {
      await this.loadOlder(conversationId, { sessionId });
      return;
    }
    for (let round = 0; round < 50; round += 1) {
      const after = String(this.cache.newestSeq(conversationId));
      const page = await this.sync({ conversationId, afterSeq: after, limit: 200, sessionId });
      this.cache.addHistory(conversationId, page.messages ?? []);
      if (!page.hasMore || (page.messages ?? []).length === 0) break;
    }
    const held = this.cache.newestSeq(conversationId) - this.cache.oldestSeq(conversationId) + 1;
    if (this.cache.oldestSeq(conversationId) > 1 && held < 50) await this.loadOlder(conversationId, { sessionId });
  }
  /** Opens the conversation with `user`: its newest page into the cache; resolves with its id ('' when none yet). */
  async open(user, limit = 50) {
    let page;
    try {
      page = await this.sync({ withUser: user, beforeSeq: NEWEST, limit });
    } catch (e) {
      if (e.code === "NOT_FOUND") return "";
      throw e;
    }
    const id = page.conversationId ?? "";
    if (id) this.cache.addHistory(id, page.messages ?? []);
    return id;
  }
  /** One page of history as the server has it (SyncRequest), outside the cache. */
  async sync(req) {
    return (await this.connection.request({ syncRequest: req })).historyPage ?? {};
  }
  /** Recalls one of your messages (within the server's recall window). */
  async recall(msgId) {
    const r = (await this.connection.request({ recall: { msgId } })).recalled ?? {};
    this.cache.recall(r);
    return r;
  }
  /**
   * Finds messages you may read (yours; an agent's also his groups'
   * sessions; an admin's the tenant), newest first. Pass `next_cursor` of
   * a page as `cursor` for the next. Each hit has the message (open its
   * conversation at `message.seq`) and a snippet whose `matched` parts are
   * what was found. See docs/protocol.md, "Search".
   */
  async search(req) {
    const searchRequest = typeof req === "string" ? { query: req } : req;
    return (await this.connection.request({ searchRequest })).searchPage ?? {};
  }
  // ---- read state ------------------------------------------------------
  /** The conversation list, most recently active first (current after each reconnect). */
  conversations() {
    return this.reads.list();
  }
  unreadTotal() {
    return this.reads.unreadTotal();
  }
  /** Marks read up to `seq` (call it once per screenful shown). */
  markRead(conversationId, seq) {
    this.reads.markRead(conversationId, seq);
  }
  readSeq(conversationId) {
    return this.reads.readSeq(conversationId);
  }
  peerReadSeq(conversationId) {
    return this.reads.peerReadSeq(conversationId);
  }
  // ---- presence and typing --------------------------------------------
  /**
   * Watches users' online state (kept across reconnects): their state now
   * and every change come as `presence` events. Resolves once the server
   * has the subscription.
   */
  async watch(users) {
    for (const u of users) this.watched.add(u);
    if (!this.connection.isOpen()) return [];
    return this.subscribe(users);
  }
  unwatch(users) {
    for (const u of users) this.watched.delete(u);
    this.connection.fire({ presenceUnsubscribe: { users } });
  }
  /**
   * Tells `toUser` you are typing (refreshed every 3 s until `typing(…,
   * false)` or a send), or that you stopped.
   */
  typing(toUser, typing) {
    const out = this.typingOut.get(toUser);
    if (out) {
      clearInterval(out.timer);
      this.typingOut.delete(toUser);
    }
    this.connection.fire({ typing: { toUser, typing } });
    if (typing) {
      const timer = setInterval(() => this.connection.fire({ typing: { toUser, typing: true } }), TYPING_REFRESH_MS);
      this.typingOut.set(toUser, { timer });
    }
  }
  // ---- files -----------------------------------------------------------
  /** Uploads a file (progress through `onProgress`); send it with `sendFile`. */
  upload(data, options = {}) {
    return this.http.upload(data, options);
  }
  /** A signed download link of a file (renewed before it expires). */
  fileLink(fileId, thumbnail = false) {
    return this.http.link(fileId, thumbnail);
  }
  // ---- customer service ------------------------------------------------
  /** Customer: asks for service in `group`. The answer: a place in line, an agent, or an offer to leave a message. */
  async requestService(group, options = {}) {
    const f = await this.answer({ requestService: { group, ...options } });
    return { queue: f.queueUpdate, assigned: f.sessionAssigned, offer: f.leaveMessageOffer };
  }
  async cancelRequest(group) {
    await this.answer({ cancelRequest: { group } });
  }
  /** Customer: leaves a message for `group` (resolves with its id). */
  async leaveMessage(group, content, contact = "") {
    return (await this.connection.request({ leaveMessage: { group, content, contact } })).csOk?.id ?? "";
  }
  async endSession(sessionId) {
    return (await this.answer({ endSession: { sessionId } })).sessionEnded ?? {};
  }
  /** Customer: rates an ended session (1–5) once. */
  async rate(sessionId, score, comment = "") {
    await this.connection.request({ rate: { sessionId, score, comment } });
  }
  /** Your open sessions, places in line and (agents) status and load. */
  async csState() {
    return (await this.answer({ csStateRequest: {} })).csState ?? {};
  }
  /** Agent: online, away or offline. */
  async setStatus(status) {
    await this.answer({ setStatus: { status } });
  }
  /** Agent (manual-pick groups): takes the next customer, or this one. */
  async acceptSession(group, customer = "") {
    return (await this.answer({ acceptSession: { group, customer } })).sessionAssigned ?? {};
  }
  async transferSession(sessionId, to, note = "") {
    const f = await this.answer({ transferSession: { sessionId, toAgent: to.agent, toGroup: to.group, note } });
    return f.sessionTransferred ?? {};
  }
  /** Agent: claims a left message to answer it. */
  async claimLeftMessage(leftMessageId) {
    return (await this.answer({ claimLeftMessage: { leftMessageId } })).leftMessageNotice ?? {};
  }
  // ---- inside ----------------------------------------------------------
  /**
   * A customer-service request: its answer is state too (a place in line,
   * an assignment, an offer), so it is also emitted as its event, and a
   * page can handle answers and pushes in one place.
   */
  async answer(body) {
    const f = await this.connection.request(body);
    this.pushed({ ...f, reqId: "0" });
    return f;
  }
  ready(ok) {
    this.emit("ready", ok);
    this.outboxQueue.flush();
    if (!ok.resumed && this.watched.size > 0) void this.subscribe([...this.watched]).catch(() => {
    });
    void this.reads.load().then(() => this.emit("conversations", this.reads.list()), () => {
    });
  }
  async subscribe(users) {
    const out = [];
    for (let i = 0; i < users.length; i += 200) {
      const f = await this.connection.request({ presenceSubscribe: { users: users.slice(i, i + 200) } });
      if (f.presenceUpdate) {
        out.push(f.presenceUpdate);
        this.emit("presence", f.presenceUpdate);
      }
    }
    return out;
  }
  pushed(f) {
    if (f.deliver?.message) {
      const m = f.deliver.message;
      const id = m.msgId ?? "";
      this.delivered.add(id);
      const what = this.cache.push(m);
      if (what !== "held" && this.delivered.delete(id)) this.queueAck(id);
    } else if (f.readReceipt) {
      this.receipt(f.readReceipt);
    } else if (f.recalled) {
      this.cache.recall(f.recalled);
      this.queueAck(void 0, f.recalled.eventId);
    } else if (f.typing) {
      this.typed(f.typing);
    } else if (f.presenceUpdate) {
      this.emit("presence", f.presenceUpdate);
    } else if (f.sessionAssigned) {
      this.emit("session", { assigned: f.sessionAssigned.session });
    } else if (f.sessionTransferred) {
      this.emit("session", { transferred: f.sessionTransferred });
    } else if (f.sessionEnded) {
      this.emit("session", { ended: f.sessionEnded.session });
    } else if (f.queueUpdate) {
      this.emit("queue", f.queueUpdate);
    } else if (f.leftMessageNotice) {
      this.emit("leftMessages", f.leftMessageNotice);
    } else if (f.leaveMessageOffer) {
      this.emit("leaveMessageOffer", f.leaveMessageOffer);
    } else if (f.csState) {
      this.emit("csState", f.csState);
    } else if (f.error) {
      this.emit("error", DongdongError.fromFrame(f.error));
    }
    this.emit("frame", f);
  }
  receipt(r) {
    this.reads.receipt(r);
    if (r.reader && r.reader !== this.connection.me?.userId) this.outboxQueue.readUpTo(r.conversationId ?? "", Number(r.upToSeq ?? 0));
    this.emit("receipt", r);
    this.queueAck(void 0, r.eventId);
  }
  typed(t) {
    const key = `${t.conversationId}\0${t.fromUser}`;
    const old = this.typingTimers.get(key);
    if (old) clearTimeout(old);
    this.typingTimers.delete(key);
    const event = { fromUser: t.fromUser ?? "", conversationId: t.conversationId ?? "", typing: !!t.typing };
    this.emit("typing", event);
    if (t.typing) {
      this.typingTimers.set(
        key,
        setTimeout(() => {
          this.typingTimers.delete(key);
          this.emit("typing", { ...event, typing: false });
        }, TYPING_TTL_MS)
      );
    }
  }
  /** Your own message, once the server stored it, into its conversation. */
  ownMessage(entry, ack) {
    const out = this.typingOut.get(entry.toUser);
    if (out) {
      clearInterval(out.timer);
      this.typingOut.delete(entry.toUser);
    }
    this.cache.push({
      msgId: ack.msgId,
      conversationId: ack.conversationId,
      seq: ack.seq,
      fromUser: this.connection.me?.userId,
      fromDevice: this.options.deviceId,
      toUser: entry.toUser,
      content: entry.content,
      clientMsgId: entry.clientMsgId,
      serverTimeMs: ack.serverTimeMs
    });
  }
  /**
   * Acks go out once the app has the messages, gathered over the current
   * task (one frame for a burst, not one per message).
   */
  queueAck(msgId, eventId) {
    if (msgId) this.acks.push(msgId);
    if (eventId) this.eventAcks.push(eventId);
    if (this.ackTimer) return;
    this.ackTimer = setTimeout(() => {
      this.ackTimer = null;
      const ids = this.acks.splice(0);
      const events = this.eventAcks.splice(0);
      for (let i = 0; i < Math.max(ids.length, events.length); i += 256) {
        this.connection.fire({ ack: { msgIds: ids.slice(i, i + 256), eventIds: events.slice(i, i + 256) } });
      }
    }, 0);
  }
};
function uuid() {
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = b[6] & 15 | 64;
  b[8] = b[8] & 63 | 128;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
export {
  Backoff,
  CLOSE,
  Connection,
  ConversationCache,
  DongdongClient,
  DongdongError,
  ERROR_CODES,
  HttpApi,
  IndexedDbStore,
  MemoryStore,
  SharedLink,
  canShareTabs,
  jsonCodec,
  uuid
};
