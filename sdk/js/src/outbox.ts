import { DongdongError, type ErrorKind } from './errors.js';
import type { Content, SendAck } from './protocol.js';

/**
 * Where a send stands:
 * - `pending`: kept (durably, when the store is) and sent, again with the
 *   same `clientMsgId` after every reconnect, until the server stores it;
 * - `sent`: stored (`msgId`, `seq`): it reaches every device of the peer;
 * - `read`: the peer has read it;
 * - `failed`: the server refused it (`error.code`), or it could not be sent
 *   before its deadline (EXPIRED). Never sent again unless `retry` is called.
 */
export type SendStatus = 'pending' | 'sent' | 'read' | 'failed';

/** One message sent from this device. */
export interface OutboxEntry {
  clientMsgId: string;
  toUser: string;
  content: Content;
  createdMs: number;
  /** A pending entry still unsent at this time fails with EXPIRED. */
  deadlineMs: number;
  status: SendStatus;
  /** Attempts so far. */
  tries: number;
  msgId?: string;
  conversationId?: string;
  seq?: string;
  serverTimeMs?: string;
  error?: { code: ErrorKind; message: string };
}

/**
 * Where the outbox keeps what must survive a reload: the entries not yet
 * sent and those that failed. `IndexedDbStore` in browsers,
 * `MemoryStore` otherwise (or your own).
 */
export interface OutboxStore {
  /** Every kept entry of this user and device. */
  load(key: string): Promise<OutboxEntry[]>;
  put(key: string, entry: OutboxEntry): Promise<void>;
  remove(key: string, clientMsgId: string): Promise<void>;
}

/** Sends that are sent (and may become read) are remembered this many. */
const KEEP_SENT = 1000;
/** Sends in flight at once (the server allows 64 per connection). */
const WINDOW = 32;
/** Tries of a send refused with a retryable error before it fails. */
const MAX_TRIES = 50;

export interface OutboxIo {
  /** Sends one entry; resolves with the SendAck, rejects with the failure. */
  send(entry: OutboxEntry): Promise<SendAck>;
  /** Whether sending can happen now. */
  connected(): boolean;
  changed(entry: OutboxEntry): void;
}

/**
 * The sends of one device, in the order they were made: each is tried
 * until the server stores it or refuses it, and ends `sent` (then maybe
 * `read`) or `failed`; none stays `pending` past its deadline.
 */
export class Outbox {
  private readonly entries = new Map<string, OutboxEntry>();
  private readonly inFlight = new Set<string>();
  private readonly waiters = new Map<string, { resolve: (a: SendAck) => void; reject: (e: DongdongError) => void }>();
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private deadlineTimer: ReturnType<typeof setTimeout> | null = null;
  private closed = false;

  constructor(
    private readonly store: OutboxStore,
    private readonly key: string,
    private readonly io: OutboxIo,
  ) {}

  /** Loads what a previous page (or process) left; pending ones go out. */
  async load(): Promise<void> {
    const kept = await this.store.load(this.key);
    kept.sort((a, b) => a.createdMs - b.createdMs);
    for (const e of kept) {
      if (!this.entries.has(e.clientMsgId)) this.entries.set(e.clientMsgId, e);
    }
    this.expire();
    this.flush();
  }

  /** Every entry, oldest first. */
  list(): OutboxEntry[] {
    return [...this.entries.values()];
  }

  get(clientMsgId: string): OutboxEntry | undefined {
    return this.entries.get(clientMsgId);
  }

  /** Adds a send; the promise settles when it is sent or fails. */
  add(entry: OutboxEntry): Promise<SendAck> {
    const done = new Promise<SendAck>((resolve, reject) => this.waiters.set(entry.clientMsgId, { resolve, reject }));
    this.entries.set(entry.clientMsgId, entry);
    void this.store.put(this.key, entry);
    this.io.changed(entry);
    this.flush();
    return done;
  }

  /** Sends a failed entry again (same `clientMsgId`), with a new deadline. */
  retry(clientMsgId: string, deadlineMs: number): Promise<SendAck> {
    const e = this.entries.get(clientMsgId);
    if (!e || e.status !== 'failed') return Promise.reject(new DongdongError('CONFLICT', 'not a failed send', false));
    const done = new Promise<SendAck>((resolve, reject) => this.waiters.set(clientMsgId, { resolve, reject }));
    Object.assign(e, { status: 'pending', tries: 0, deadlineMs, error: undefined });
    void this.store.put(this.key, e);
    this.io.changed(e);
    this.flush();
    return done;
  }

  /** Forgets a failed (or sent) entry. */
  discard(clientMsgId: string): void {
    const e = this.entries.get(clientMsgId);
    if (!e || e.status === 'pending') return;
    this.entries.delete(clientMsgId);
    void this.store.remove(this.key, clientMsgId);
  }

  /** Sends what is pending and not in flight, oldest first, within the window. */
  flush(): void {
    if (!this.io.connected()) return;
    for (const e of this.entries.values()) {
      if (this.inFlight.size >= WINDOW) break;
      if (e.status !== 'pending' || this.inFlight.has(e.clientMsgId)) continue;
      this.inFlight.add(e.clientMsgId);
      e.tries += 1;
      this.io.send(e).then(
        (ack) => this.sent(e, ack),
        (err: DongdongError) => this.refused(e, err),
      );
    }
    this.scheduleDeadline();
  }

  /** Stops its timers (the client closed; what is kept stays in the store). */
  close(): void {
    if (this.retryTimer) clearTimeout(this.retryTimer);
    if (this.deadlineTimer) clearTimeout(this.deadlineTimer);
    this.retryTimer = this.deadlineTimer = null;
    this.closed = true;
  }

  /** The connection was lost: what was in flight is sent again later. */
  disconnected(): void {
    this.inFlight.clear();
  }

  /** The peer read the conversation up to `seq`. */
  readUpTo(conversationId: string, seq: number): void {
    for (const e of this.entries.values()) {
      if (e.status === 'sent' && e.conversationId === conversationId && Number(e.seq) <= seq) {
        e.status = 'read';
        this.io.changed(e);
      }
    }
  }

  private sent(e: OutboxEntry, ack: SendAck): void {
    this.inFlight.delete(e.clientMsgId);
    if (e.status !== 'pending') return;
    Object.assign(e, {
      status: 'sent',
      msgId: ack.msgId,
      conversationId: ack.conversationId,
      seq: ack.seq,
      serverTimeMs: ack.serverTimeMs,
    });
    void this.store.remove(this.key, e.clientMsgId);
    this.io.changed(e);
    this.settle(e.clientMsgId, ack);
    this.forgetOldSent();
    this.flush();
  }

  private refused(e: OutboxEntry, err: DongdongError): void {
    this.inFlight.delete(e.clientMsgId);
    if (e.status !== 'pending') return;
    if (err.code === 'DISCONNECTED') return; // sent again after the reconnect
    if (err.retryable && e.tries < MAX_TRIES) {
      if (!this.retryTimer && !this.closed) {
        const delay = Math.min(5000, 200 * e.tries);
        this.retryTimer = setTimeout(() => {
          this.retryTimer = null;
          this.flush();
        }, delay);
      }
      return;
    }
    this.fail(e, err.code, err.message);
  }

  private fail(e: OutboxEntry, code: ErrorKind, message: string): void {
    e.status = 'failed';
    e.error = { code, message };
    void this.store.put(this.key, e);
    this.io.changed(e);
    this.settle(e.clientMsgId, new DongdongError(code, message, false));
  }

  private settle(clientMsgId: string, outcome: SendAck | DongdongError): void {
    const w = this.waiters.get(clientMsgId);
    if (!w) return;
    this.waiters.delete(clientMsgId);
    if (outcome instanceof DongdongError) w.reject(outcome);
    else w.resolve(outcome);
  }

  /** Pending entries past their deadline (not in flight) fail with EXPIRED. */
  private expire(): void {
    const now = Date.now();
    for (const e of this.entries.values()) {
      if (e.status === 'pending' && !this.inFlight.has(e.clientMsgId) && e.deadlineMs <= now) {
        this.fail(e, 'EXPIRED', 'it could not be sent in time');
      }
    }
  }

  private scheduleDeadline(): void {
    if (this.deadlineTimer) clearTimeout(this.deadlineTimer);
    if (this.closed) return;
    let next = Infinity;
    for (const e of this.entries.values()) if (e.status === 'pending') next = Math.min(next, e.deadlineMs);
    if (next === Infinity) return;
    this.deadlineTimer = setTimeout(
      () => {
        this.deadlineTimer = null;
        this.expire();
        this.scheduleDeadline();
      },
      Math.max(0, next - Date.now()) + 1,
    );
  }

  private forgetOldSent(): void {
    let sent = 0;
    for (const e of this.entries.values()) if (e.status === 'sent' || e.status === 'read') sent += 1;
    for (const [id, e] of this.entries) {
      if (sent <= KEEP_SENT) break;
      if (e.status === 'sent' || e.status === 'read') {
        this.entries.delete(id);
        sent -= 1;
      }
    }
  }
}
