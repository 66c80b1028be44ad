import type { HistoryPage, Message, Recalled } from './protocol.js';

/** How a batch of messages reached a conversation's cache. */
export type Arrival = 'live' | 'history';

/**
 * What became of a pushed message: released to the app (with whatever it
 * unblocked), held until a gap before it is filled, or not kept: a
 * duplicate, older than what the app has (history's business), or past
 * the bound of held pushes (history fills it in).
 */
export type Pushed = 'released' | 'held' | 'duplicate' | 'dropped';

/** What the cache asks of the client. */
export interface CacheIo {
  /** The messages of a conversation after `afterSeq` (a page of history). */
  history(conversationId: string, afterSeq: number, limit: number): Promise<HistoryPage>;
  /** The newest `limit` messages before `beforeSeq`. */
  older(conversationId: string, beforeSeq: number, limit: number): Promise<HistoryPage>;
  /** Messages released to the app, in seq order (each once). */
  released(conversationId: string, messages: Message[], how: Arrival): void;
  recalled(message: Message): void;
}

/** A conversation's messages as the cache holds them. */
interface Conversation {
  /** By seq: what the app has (a contiguous run `low..=high`). */
  bySeq: Map<number, Message>;
  low: number;
  high: number;
  /** Pushes that skipped ahead of `high`, held until the gap is filled. */
  held: Map<number, Message>;
  /** Late pushes older than `low`, held until what lies between is fetched. */
  below: Map<number, Message>;
  filling: boolean;
  /** Failed fills in a row (the next waits longer). */
  failures: number;
}

/** Most pushes held ahead of a gap in one conversation. */
const MAX_HELD = 1000;
/** History page asked for to fill a gap. */
const FILL_PAGE = 200;

/**
 * The messages of each conversation, deduplicated by `msg_id` and released
 * to the app in `seq` order without holes: a push whose seq skips ahead of
 * what the app has is held while the gap is filled from history (what
 * happens when two senders of a conversation sit on two servers, or a
 * push was lost), then released with it. Recalls update what is held.
 */
export class ConversationCache {
  private readonly conversations = new Map<string, Conversation>();
  private readonly seen = new Map<string, number>(); // msgId -> seq

  constructor(private readonly io: CacheIo) {}

  /** The app's messages of a conversation, in seq order. */
  messages(conversationId: string): Message[] {
    const c = this.conversations.get(conversationId);
    if (!c) return [];
    const out: Message[] = [];
    for (let s = c.low; s <= c.high; s += 1) {
      const m = c.bySeq.get(s);
      if (m) out.push(m);
    }
    return out;
  }

  /** The highest seq the app has of a conversation (0: none). */
  newestSeq(conversationId: string): number {
    return this.conversations.get(conversationId)?.high ?? 0;
  }

  /** The lowest seq the app has (0: none). */
  oldestSeq(conversationId: string): number {
    return this.conversations.get(conversationId)?.low ?? 0;
  }

  /** Whether the app already has this message. */
  has(msgId: string): boolean {
    return this.seen.has(msgId);
  }

  /**
   * A pushed or replayed message. What is released goes to `io.released`
   * (this message and any held behind it, in seq order).
   */
  push(m: Message): Pushed {
    const id = m.msgId ?? '';
    if (!id || !m.conversationId) return 'dropped';
    if (this.seen.has(id)) {
      this.refresh(m);
      return 'duplicate';
    }
    const seq = Number(m.seq ?? 0);
    const c = this.conversation(m.conversationId);
    if (c.high === 0) {
      // The first message the app sees of it: the run starts here (older
      // ones come from history, by the app's choice).
      this.accept(c, seq, m);
      c.low = seq;
      c.high = seq;
      this.release(m.conversationId, c, [m], 'live');
      return 'released';
    }
    if (seq < c.low) {
      // Older than the first the app saw, yet pushed: owed to this device
      // and late (another server's push overtaken by one of this server's).
      // It goes in before, with anything between fetched from history.
      if (c.below.size >= MAX_HELD) return 'dropped';
      c.below.set(seq, m);
      const added = this.drainBelow(c);
      if (added.length === 0) {
        this.fillBelow(m.conversationId, c);
        return 'held';
      }
      this.release(m.conversationId, c, added, 'history');
      return 'released';
    }
    if (seq <= c.high) return 'dropped'; // in the run yet not seen: cannot be
    if (seq === c.high + 1) {
      this.accept(c, seq, m);
      c.high = seq;
      this.release(m.conversationId, c, [m, ...this.drainHeld(c)], 'live');
      return 'released';
    }
    this.fill(m.conversationId, c);
    if (c.held.size >= MAX_HELD) return 'dropped';
    c.held.set(seq, m);
    return 'held';
  }

  /** A page of history (older or newer) of a conversation, added in place. */
  addHistory(conversationId: string, page: Message[]): Message[] {
    if (page.length === 0) return [];
    const c = this.conversation(conversationId);
    const sorted = [...page].sort((a, b) => Number(a.seq) - Number(b.seq));
    const added: Message[] = [];
    if (c.high === 0) {
      for (const m of sorted) {
        if (c.high !== 0 && Number(m.seq) !== c.high + 1) break;
        this.accept(c, Number(m.seq), m);
        if (c.low === 0) c.low = Number(m.seq);
        c.high = Number(m.seq);
        added.push(m);
      }
    } else {
      // Older, right below what the app has (and late pushes below that).
      for (const m of sorted.filter((m) => Number(m.seq) < c.low).reverse()) {
        if (Number(m.seq) !== c.low - 1) break;
        this.accept(c, Number(m.seq), m);
        c.low = Number(m.seq);
        c.below.delete(c.low);
        added.unshift(m);
      }
      added.unshift(...this.drainBelow(c));
      // Newer, right above it.
      const newer: Message[] = [];
      for (const page of sorted.filter((m) => Number(m.seq) > c.high)) {
        if (Number(page.seq) !== c.high + 1) break;
        // A held copy recalled since the page was read is the newer news.
        const held = c.held.get(Number(page.seq));
        const m = held?.recalledBy ? held : page;
        this.accept(c, Number(m.seq), m);
        c.high = Number(m.seq);
        c.held.delete(Number(m.seq));
        newer.push(m);
      }
      newer.push(...this.drainHeld(c));
      added.push(...newer);
    }
    for (const m of sorted) this.refresh(m);
    return this.release(conversationId, c, added, 'history');
  }

  /** A `Recalled` push: the message loses its content wherever it is. */
  recall(r: Recalled): Message | null {
    const id = r.msgId ?? '';
    const c = r.conversationId ? this.conversations.get(r.conversationId) : undefined;
    if (!id || !c) return null;
    // Shown, or held (ahead of a gap, or below the run).
    const where = [c.bySeq, c.held, c.below].find((map) => {
      const seq = this.seen.get(id);
      return seq !== undefined ? map.get(seq)?.msgId === id : [...map.values()].some((m) => m.msgId === id);
    });
    if (!where) return null;
    const [seq, m] = [...where].find(([, m]) => m.msgId === id) ?? [];
    if (seq === undefined || !m || m.recalledBy) return null;
    const recalled: Message = { ...m, content: undefined, recalledBy: r.by, recalledMs: r.recalledMs };
    where.set(seq, recalled);
    if (where === c.bySeq) this.io.recalled(recalled);
    return recalled;
  }

  /** Forgets everything (a new user signed in on this client). */
  clear(): void {
    this.conversations.clear();
    this.seen.clear();
  }

  private conversation(id: string): Conversation {
    let c = this.conversations.get(id);
    if (!c) {
      c = { bySeq: new Map(), low: 0, high: 0, held: new Map(), below: new Map(), filling: false, failures: 0 };
      this.conversations.set(id, c);
    }
    return c;
  }

  private accept(c: Conversation, seq: number, m: Message): void {
    c.bySeq.set(seq, m);
    this.seen.set(m.msgId ?? '', seq);
  }

  /** A copy of a message seen before: a recall it shows is applied. */
  private refresh(m: Message): void {
    if (m.recalledBy) this.recall({ msgId: m.msgId, conversationId: m.conversationId, by: m.recalledBy, recalledMs: m.recalledMs });
  }

  /** Held pushes that now continue the run, in order. */
  private drainHeld(c: Conversation): Message[] {
    const out: Message[] = [];
    for (;;) {
      const next = c.held.get(c.high + 1);
      if (!next) break;
      c.held.delete(c.high + 1);
      if (this.seen.has(next.msgId ?? '')) continue;
      this.accept(c, c.high + 1, next);
      c.high += 1;
      out.push(next);
    }
    for (const s of [...c.held.keys()]) if (s <= c.high) c.held.delete(s);
    return out;
  }

  /** Late pushes that now continue the run downwards, oldest first. */
  private drainBelow(c: Conversation): Message[] {
    const out: Message[] = [];
    for (;;) {
      const next = c.below.get(c.low - 1);
      if (!next) break;
      c.below.delete(c.low - 1);
      if (this.seen.has(next.msgId ?? '')) continue;
      this.accept(c, c.low - 1, next);
      c.low -= 1;
      out.unshift(next);
    }
    return out;
  }

  /** Fetches, newest first, what lies between late pushes below the run and the run. */
  private fillBelow(conversationId: string, c: Conversation): void {
    const top = Math.max(...c.below.keys());
    const limit = Math.min(FILL_PAGE, c.low - top - 1);
    this.io.older(conversationId, c.low, limit).then(
      (page) => {
        this.addHistory(conversationId, page.messages ?? []);
        if (c.below.size > 0 && (page.messages ?? []).length > 0) this.fillBelow(conversationId, c);
      },
      () => {
        // Tried again with the next late push; loadOlder fetches it anyway.
      },
    );
  }

  private release(conversationId: string, c: Conversation, messages: Message[], how: Arrival): Message[] {
    if (messages.length) this.io.released(conversationId, messages, how);
    if (c.held.size > 0) this.fill(conversationId, c);
    return messages;
  }

  /** Fetches the messages between what the app has and what is held. */
  private fill(conversationId: string, c: Conversation): void {
    if (c.filling) return;
    c.filling = true;
    const pause = c.failures === 0 ? 0 : Math.min(10_000, 250 * 2 ** c.failures);
    setTimeout(() => {
      this.io.history(conversationId, c.high, FILL_PAGE).then(
        (page) => {
          c.filling = false;
          c.failures = 0;
          this.addHistory(conversationId, page.messages ?? []);
          // More than a page behind, or pushes dropped past MAX_HELD.
          if (page.hasMore && !c.filling) this.fill(conversationId, c);
        },
        () => {
          c.filling = false;
          c.failures += 1;
          // Tried again: when the next push comes, or after a pause.
          if (c.held.size > 0) this.fill(conversationId, c);
        },
      );
    }, pause);
  }
}
