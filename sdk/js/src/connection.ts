import { Backoff } from './backoff.js';
import type { Codec } from './codec.js';
import { DongdongError } from './errors.js';
import { Emitter } from './events.js';
import { CLOSE, type AuthOk, type Frame } from './protocol.js';

/**
 * Where the connection is:
 * - `connecting`: opening a socket and signing in afresh;
 * - `resuming`: the same, presenting the previous session's resume token;
 * - `open`: signed in; frames flow;
 * - `offline`: lost; it tries again after a backoff (0.5–20 s, at once when
 *   the browser says it is online again);
 * - `closed`: for good: closed by the app, or by the server in a way that
 *   retrying cannot mend (signed in elsewhere with this device id, logged
 *   out by an admin, a token refused).
 */
export type ConnectionState = 'connecting' | 'resuming' | 'open' | 'offline' | 'closed';

/** The WebSocket the connection uses: the browser's, or one for Node (`ws`). */
export interface WebSocketLike {
  readonly readyState: number;
  binaryType: string;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  send(data: string | Uint8Array): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface ConnectionOptions {
  url: string;
  /** The token, or a function that gives a fresh one for each sign-in. */
  token: string | (() => string | Promise<string>);
  deviceId: string;
  codec: Codec;
  WebSocket: WebSocketConstructor;
  /** Resume the session after a short drop (the default). */
  resume: boolean;
  /** How long a request may wait for its answer. */
  requestTimeoutMs: number;
  /** A Ping this often once nothing else was heard… */
  pingEveryMs: number;
  /** …and the socket is given up when no Pong comes within this. */
  pongTimeoutMs: number;
  backoff: Backoff;
}

export interface ConnectionEvents {
  /** `code`: the server's close code, when it closed the connection for good. */
  state: { state: ConnectionState; reason?: string; code?: number };
  /** After each sign-in: the server's `AuthOk` (with `resumed`). */
  ready: AuthOk;
  /** A frame that is not the answer to a request (pushes: req_id 0). */
  frame: Frame;
}

interface Waiting {
  resolve: (f: Frame) => void;
  reject: (e: DongdongError) => void;
  timer: ReturnType<typeof setTimeout>;
}

/** Close codes after which trying again would fail the same way. */
const FINAL: Record<number, string> = {
  [CLOSE.REPLACED]: 'this device signed in on another connection',
  [CLOSE.LOGGED_OUT]: 'logged out by the server',
};

/**
 * One logical connection to the server, over as many sockets as it takes:
 * signs in, answers requests by req_id, hands on pushes, pings to find dead
 * networks, and comes back by itself with backoff.
 */
export class Connection extends Emitter<ConnectionEvents> {
  state: ConnectionState = 'offline';
  /** The last `AuthOk`. */
  me: AuthOk | null = null;
  private ws: WebSocketLike | null = null;
  private nextReq = 1;
  private readonly waiting = new Map<string, Waiting>();
  private resumeToken = '';
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private pingTimer: ReturnType<typeof setTimeout> | null = null;
  private lastHeard = 0;
  private stopped = true;
  private readonly onOnline = () => {
    if (this.state !== 'offline' || this.stopped) return;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    void this.open();
  };

  constructor(private readonly options: ConnectionOptions) {
    super();
  }

  /** Starts connecting (and keeps the connection up until `close`). */
  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    globalThis.addEventListener?.('online', this.onOnline);
    void this.open();
  }

  /** Closes for good: pending requests fail with CLOSED. */
  close(): void {
    this.stopped = true;
    globalThis.removeEventListener?.('online', this.onOnline);
    if (this.retryTimer) clearTimeout(this.retryTimer);
    const ws = this.ws;
    this.lost(new DongdongError('CLOSED', 'the client was closed', false));
    ws?.close(CLOSE.NORMAL);
    this.setState('closed');
  }

  /**
   * Drops the socket as a lost network would (no Close frame where the
   * WebSocket can do that, as Node's `ws` can), and comes back (tests).
   */
  dropSocket(): void {
    const ws = this.ws as (WebSocketLike & { terminate?: () => void }) | null;
    if (ws?.terminate) ws.terminate();
    else ws?.close(4000, 'dropped');
  }

  isOpen(): boolean {
    return this.state === 'open';
  }

  /** Sends a request and resolves with its answer (an `Error` frame rejects). */
  request(body: Omit<Frame, 'reqId'>, timeoutMs = this.options.requestTimeoutMs): Promise<Frame> {
    return new Promise((resolve, reject) => {
      if (this.state !== 'open') {
        reject(new DongdongError('DISCONNECTED', 'not connected', true));
        return;
      }
      const reqId = String(this.nextReq++);
      const timer = setTimeout(() => {
        this.waiting.delete(reqId);
        reject(new DongdongError('TIMEOUT', 'the server did not answer in time', true));
      }, timeoutMs);
      this.waiting.set(reqId, { resolve, reject, timer });
      this.raw({ reqId, ...body });
    });
  }

  /** Sends a frame nobody waits an answer for (acks, typing). */
  fire(body: Omit<Frame, 'reqId'>): boolean {
    return this.state === 'open' && this.raw(body);
  }

  private raw(frame: Frame): boolean {
    const ws = this.ws;
    if (!ws || ws.readyState !== 1) return false;
    ws.send(this.options.codec.encode(frame));
    return true;
  }

  private setState(state: ConnectionState, reason?: string, code?: number): void {
    if (this.state === state && !reason) return;
    this.state = state;
    this.emit('state', { state, reason, code });
  }

  private async open(): Promise<void> {
    if (this.stopped) return;
    this.retryTimer = null;
    const resuming = this.options.resume && this.resumeToken !== '';
    this.setState(resuming ? 'resuming' : 'connecting');
    let token: string;
    try {
      token = typeof this.options.token === 'function' ? await this.options.token() : this.options.token;
    } catch (e) {
      this.retry(`no token: ${(e as Error).message}`);
      return;
    }
    if (this.stopped) return;
    let ws: WebSocketLike;
    try {
      ws = new this.options.WebSocket(this.options.url);
    } catch (e) {
      this.retry((e as Error).message);
      return;
    }
    this.ws = ws;
    if (this.options.codec.binary) ws.binaryType = 'arraybuffer';
    ws.onopen = () => {
      const auth = { token, deviceId: this.options.deviceId, resumeToken: resuming ? this.resumeToken : undefined };
      const reqId = String(this.nextReq++);
      const timer = setTimeout(() => ws.close(4000, 'no AuthOk'), this.options.requestTimeoutMs);
      this.waiting.set(reqId, {
        resolve: (f) => this.signedIn(ws, f.authOk ?? {}),
        reject: (e) => this.setState('offline', e.message),
        timer,
      });
      this.raw({ reqId, auth });
    };
    ws.onmessage = (ev) => {
      if (ws !== this.ws) return;
      let frame: Frame;
      try {
        frame = this.options.codec.decode(ev.data as string | ArrayBuffer);
      } catch {
        return;
      }
      this.heard(frame);
    };
    ws.onerror = () => {};
    ws.onclose = (ev) => this.closed(ws, ev.code, ev.reason);
  }

  private signedIn(ws: WebSocketLike, ok: AuthOk): void {
    if (ws !== this.ws) return;
    this.me = ok;
    this.resumeToken = ok.resumeToken ?? '';
    this.options.backoff.reset();
    this.lastHeard = Date.now();
    this.schedulePing();
    this.setState('open');
    this.emit('ready', ok);
  }

  private heard(frame: Frame): void {
    this.lastHeard = Date.now();
    const reqId = frame.reqId ?? '0';
    const waiting = reqId !== '0' ? this.waiting.get(reqId) : undefined;
    if (waiting) {
      this.waiting.delete(reqId);
      clearTimeout(waiting.timer);
      if (frame.error) waiting.reject(DongdongError.fromFrame(frame.error));
      else waiting.resolve(frame);
      return;
    }
    this.emit('frame', frame);
  }

  /** Pings when the connection has been quiet for `pingEveryMs`. */
  private schedulePing(): void {
    if (this.pingTimer) clearTimeout(this.pingTimer);
    const ws = this.ws;
    const quiet = Date.now() - this.lastHeard;
    this.pingTimer = setTimeout(
      () => {
        if (ws !== this.ws || this.state !== 'open') return;
        if (Date.now() - this.lastHeard < this.options.pingEveryMs) {
          this.schedulePing();
          return;
        }
        this.request({ ping: {} }, this.options.pongTimeoutMs).then(
          () => this.schedulePing(),
          (e: DongdongError) => {
            // No Pong: the network is gone even if the socket does not know.
            if (e.code === 'TIMEOUT' && ws === this.ws) ws?.close(4000, 'no pong');
          },
        );
      },
      Math.max(0, this.options.pingEveryMs - quiet),
    );
  }

  private closed(ws: WebSocketLike, code: number, reason: string): void {
    if (ws !== this.ws) return;
    this.lost(new DongdongError('DISCONNECTED', 'the connection was lost', true));
    if (this.stopped) return;
    const final = FINAL[code];
    if (final) {
      this.stopped = true;
      this.setState('closed', reason || final, code);
      return;
    }
    if (code === CLOSE.POLICY_VIOLATION && typeof this.options.token !== 'function') {
      // The token was refused (bad, expired, revoked), and it cannot change.
      this.stopped = true;
      this.setState('closed', reason || 'sign-in refused', code);
      return;
    }
    if (code === CLOSE.POLICY_VIOLATION) this.resumeToken = '';
    this.retry(reason || `closed (${code})`);
  }

  private lost(error: DongdongError): void {
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

  private retry(reason: string): void {
    if (this.stopped) return;
    const delay = this.options.backoff.next();
    this.setState('offline', `${reason}; trying again in ${Math.ceil(delay / 1000)} s`);
    this.retryTimer = setTimeout(() => void this.open(), delay);
  }
}
