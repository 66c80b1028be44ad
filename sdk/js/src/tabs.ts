import { Connection, type ConnectionEvents, type ConnectionOptions, type ConnectionState } from './connection.js';
import { DongdongError } from './errors.js';
import { Emitter } from './events.js';
import type { AuthOk, Frame } from './protocol.js';

/**
 * What a client talks to the server through: its own connection, or (in
 * a browser) the one connection the tabs of a user and device share.
 */
export interface Link {
  readonly state: ConnectionState;
  readonly me: AuthOk | null;
  start(): void;
  close(): void;
  isOpen(): boolean;
  request(body: Omit<Frame, 'reqId'>, timeoutMs?: number): Promise<Frame>;
  fire(body: Omit<Frame, 'reqId'>): boolean;
  dropSocket(): void;
  on<K extends keyof ConnectionEvents>(type: K, listener: (payload: ConnectionEvents[K]) => void): () => void;
}

type Wire =
  | { type: 'hello'; from: string }
  | { type: 'state'; state: ConnectionState; reason?: string; code?: number; me: AuthOk | null }
  | { type: 'frame'; frame: Frame }
  | { type: 'request'; from: string; id: number; body: Omit<Frame, 'reqId'>; timeoutMs?: number }
  | { type: 'reply'; to: string; id: number; frame?: Frame; error?: { code: DongdongError['code']; message: string; retryable: boolean } }
  | { type: 'fire'; body: Omit<Frame, 'reqId'> };


/** Whether this runtime can share a connection between tabs. */
export function canShareTabs(): boolean {
  const nav = (globalThis as { navigator?: { locks?: unknown } }).navigator;
  return typeof BroadcastChannel !== 'undefined' && !!nav?.locks;
}

/**
 * One connection per browser for a user and device: the tab holding the
 * Web Lock `dongdong:<key>` (the leader) runs the connection; the others
 * (followers) reach it over a BroadcastChannel: they get every frame and
 * state change, and their requests and sends go through it. When the
 * leader tab closes, its lock passes to a follower, which connects.
 */
export class SharedLink extends Emitter<ConnectionEvents> implements Link {
  state: ConnectionState = 'connecting';
  me: AuthOk | null = null;
  private readonly id = Math.random().toString(36).slice(2);
  private readonly channel: BroadcastChannel;
  private leader: Connection | null = null;
  private releaseLock: (() => void) | null = null;
  private nextId = 1;
  private readonly waiting = new Map<number, { resolve: (f: Frame) => void; reject: (e: DongdongError) => void; timer: ReturnType<typeof setTimeout> }>();
  private stopped = true;

  constructor(
    private readonly key: string,
    private readonly options: ConnectionOptions,
  ) {
    super();
    this.channel = new BroadcastChannel(`dongdong:${key}`);
    this.channel.onmessage = (ev: MessageEvent<Wire>) => this.heard(ev.data);
  }

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    const locks = (navigator as Navigator & { locks: LockManager }).locks;
    void locks.request(`dongdong:${this.key}`, () =>
      new Promise<void>((release) => {
        if (this.stopped) return release();
        this.releaseLock = release;
        this.lead();
      }),
    );
    // A follower until the lock comes: ask the leader how things stand.
    this.post({ type: 'hello', from: this.id });
  }

  close(): void {
    this.stopped = true;
    this.leader?.close();
    this.leader = null;
    this.releaseLock?.();
    this.releaseLock = null;
    this.fail(new DongdongError('CLOSED', 'the client was closed', false));
    this.channel.close();
    this.setState('closed');
  }

  isOpen(): boolean {
    return this.state === 'open';
  }

  dropSocket(): void {
    this.leader?.dropSocket();
  }

  request(body: Omit<Frame, 'reqId'>, timeoutMs = 15_000): Promise<Frame> {
    if (this.leader) return this.leader.request(body, timeoutMs);
    return new Promise((resolve, reject) => {
      if (this.state !== 'open') {
        reject(new DongdongError('DISCONNECTED', 'not connected', true));
        return;
      }
      const id = this.nextId++;
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(new DongdongError('TIMEOUT', 'the server did not answer in time', true));
      }, timeoutMs + 1000);
      this.waiting.set(id, { resolve, reject, timer });
      this.post({ type: 'request', from: this.id, id, body, timeoutMs });
    });
  }

  fire(body: Omit<Frame, 'reqId'>): boolean {
    if (this.leader) return this.leader.fire(body);
    if (this.state !== 'open') return false;
    this.post({ type: 'fire', body });
    return true;
  }

  /** This tab holds the lock: it runs the connection for all. */
  private lead(): void {
    this.fail(new DongdongError('DISCONNECTED', 'the leading tab went away', true));
    const c = new Connection(this.options);
    this.leader = c;
    c.on('state', (s) => {
      this.setState(s.state, s.reason, s.code);
      this.post({ type: 'state', state: s.state, reason: s.reason, code: s.code, me: c.me });
    });
    c.on('ready', (ok) => {
      this.me = ok;
      this.emit('ready', ok);
    });
    c.on('frame', (f) => {
      this.emit('frame', f);
      this.post({ type: 'frame', frame: f });
    });
    c.start();
  }

  private heard(w: Wire): void {
    if (this.stopped) return;
    const leader = this.leader;
    if (leader) {
      if (w.type === 'hello') this.post({ type: 'state', state: leader.state, me: leader.me });
      else if (w.type === 'fire') leader.fire(w.body);
      else if (w.type === 'request') {
        leader.request(w.body, w.timeoutMs).then(
          (frame) => this.post({ type: 'reply', to: w.from, id: w.id, frame }),
          (e: DongdongError) => this.post({ type: 'reply', to: w.from, id: w.id, error: { code: e.code, message: e.message, retryable: e.retryable } }),
        );
      }
      return;
    }
    if (w.type === 'state') {
      const wasOpen = this.state === 'open';
      this.me = w.me;
      this.setState(w.state, w.reason, w.code);
      if (w.state !== 'open') this.fail(new DongdongError('DISCONNECTED', 'the connection was lost', true));
      // Each sign-in of the leader passes through another state first.
      if (w.state === 'open' && w.me && !wasOpen) this.emit('ready', w.me);
    } else if (w.type === 'frame') {
      this.emit('frame', w.frame);
    } else if (w.type === 'reply' && w.to === this.id) {
      const waiting = this.waiting.get(w.id);
      if (!waiting) return;
      this.waiting.delete(w.id);
      clearTimeout(waiting.timer);
      if (w.error) waiting.reject(new DongdongError(w.error.code, w.error.message, w.error.retryable));
      else waiting.resolve(w.frame ?? {});
    }
  }

  private setState(state: ConnectionState, reason?: string, code?: number): void {
    if (this.state === state && !reason) return;
    this.state = state;
    this.emit('state', { state, reason, code });
  }

  private fail(e: DongdongError): void {
    for (const w of this.waiting.values()) {
      clearTimeout(w.timer);
      w.reject(e);
    }
    this.waiting.clear();
  }

  private post(w: Wire): void {
    try {
      this.channel.postMessage(w);
    } catch {
      // Closed: nothing to tell.
    }
  }
}
