import type { ConversationItem, ConversationPage, Message, ReadReceipt } from './protocol.js';

/** What the read state asks of the client. */
export interface ReadsIo {
  me(): string;
  /** A page of the conversation list. */
  list(cursor: string, limit: number): Promise<ConversationPage>;
  /** Sends MarkRead; resolves with the pointer as the server has it. */
  mark(conversationId: string, upToSeq: number): Promise<ReadReceipt>;
  changed(item: ConversationItem): void;
}

/** Conversations listed from the server after each sign-in (pages of 100). */
const LIST_PAGES = 5;

/**
 * The conversation list with unread counts and both read pointers, as the
 * server keeps them: loaded after every sign-in (so it is current after a
 * reconnect), moved forward by the messages the app receives and sends and
 * by receipts. `markRead` moves your pointer: only forward, at most one
 * MarkRead per conversation in flight, the newest seq wins.
 */
export class ReadState {
  private readonly items = new Map<string, ConversationItem>();
  private readonly due = new Map<string, number>();
  private readonly sending = new Set<string>();

  constructor(private readonly io: ReadsIo) {}

  /** The conversations, most recently active first. */
  list(): ConversationItem[] {
    return [...this.items.values()].sort(
      (a, b) => Number(b.lastMessage?.serverTimeMs ?? 0) - Number(a.lastMessage?.serverTimeMs ?? 0),
    );
  }

  get(conversationId: string): ConversationItem | undefined {
    return this.items.get(conversationId);
  }

  /** Your read pointer of a conversation (0: nothing read). */
  readSeq(conversationId: string): number {
    return Number(this.items.get(conversationId)?.readSeq ?? 0);
  }

  /** The peer's read pointer. */
  peerReadSeq(conversationId: string): number {
    return Number(this.items.get(conversationId)?.peerReadSeq ?? 0);
  }

  /** Unread messages of every conversation listed. */
  unreadTotal(): number {
    let n = 0;
    for (const i of this.items.values()) n += Number(i.unread ?? 0);
    return n;
  }

  /** Loads the list afresh (after each sign-in), then sends marks still due. */
  async load(): Promise<void> {
    let cursor = '';
    for (let page = 0; page < LIST_PAGES; page += 1) {
      const p = await this.io.list(cursor, 100);
      for (const item of p.items ?? []) {
        const id = item.conversationId ?? '';
        const known = this.items.get(id);
        // A mark of ours still on its way is not undone by an older list.
        const readSeq = Math.max(Number(item.readSeq ?? 0), this.due.get(id) ?? 0);
        this.items.set(id, { ...known, ...item, readSeq: String(readSeq) });
        this.io.changed(this.items.get(id) as ConversationItem);
      }
      cursor = p.nextCursor ?? '';
      if (!cursor) break;
    }
    for (const id of [...this.due.keys()]) this.flush(id);
  }

  /** Messages the app received or sent (seq order). */
  messages(conversationId: string, messages: Message[]): void {
    const me = this.io.me();
    let item = this.items.get(conversationId);
    for (const m of messages) {
      const seq = Number(m.seq ?? 0);
      if (!item) {
        const peer = m.fromUser === me ? m.toUser : m.fromUser;
        item = { conversationId, peer, unread: '0', readSeq: '0', peerReadSeq: '0', lastSeq: '0' };
      }
      if (seq <= Number(item.lastSeq ?? 0)) continue;
      const fromPeer = m.fromUser !== me;
      const unread = Number(item.unread ?? 0) + (fromPeer && seq > this.readSeqOf(item) ? 1 : 0);
      // Sending means having read what came before.
      const readSeq = fromPeer ? this.readSeqOf(item) : Math.max(this.readSeqOf(item), seq);
      item = { ...item, lastMessage: m, lastSeq: String(seq), unread: String(fromPeer ? unread : 0), readSeq: String(readSeq) };
    }
    if (item) {
      this.items.set(conversationId, item);
      this.io.changed(item);
    }
  }

  /** A `ReadReceipt` (pushed, or the answer to a MarkRead). */
  receipt(r: ReadReceipt): void {
    const id = r.conversationId ?? '';
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
    this.io.changed(this.items.get(id) as ConversationItem);
  }

  /**
   * Marks the conversation read up to `seq` (call it with the newest seq on
   * screen, once per screenful). Nothing happens when that does not move
   * your pointer.
   */
  markRead(conversationId: string, seq: number): void {
    const item = this.items.get(conversationId);
    if (!conversationId || seq <= (item ? this.readSeqOf(item) : 0) || seq <= (this.due.get(conversationId) ?? 0)) return;
    this.due.set(conversationId, seq);
    if (item) {
      this.items.set(conversationId, { ...item, readSeq: String(seq), unread: String(this.unreadAfter(item, seq)) });
      this.io.changed(this.items.get(conversationId) as ConversationItem);
    }
    this.flush(conversationId);
  }

  private flush(conversationId: string): void {
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
        // Lost with the connection: `load` sends it again after the next sign-in.
      },
    ).finally(() => {
      this.sending.delete(conversationId);
      if ((this.due.get(conversationId) ?? 0) > seq) this.flush(conversationId);
    });
  }

  private readSeqOf(item: ConversationItem): number {
    return Number(item.readSeq ?? 0);
  }

  /** The peer's messages after `seq`, as far as the list can tell. */
  private unreadAfter(item: ConversationItem, seq: number): number {
    return seq >= Number(item.lastSeq ?? 0) ? 0 : Number(item.unread ?? 0);
  }
}
