import { Backoff } from './backoff.js';
import { ConversationCache, type Arrival } from './cache.js';
import { type Codec, jsonCodec } from './codec.js';
import { Connection, type ConnectionOptions, type ConnectionState, type WebSocketConstructor } from './connection.js';
import { DongdongError } from './errors.js';
import { Emitter } from './events.js';
import { type FileInfo, HttpApi, type UploadOptions } from './http.js';
import { Outbox, type OutboxEntry, type OutboxStore } from './outbox.js';
import type {
  AuthOk,
  Content,
  ConversationItem,
  CsState,
  Frame,
  HistoryPage,
  LeaveMessageOffer,
  LeftMessageNotice,
  Message,
  PresenceUpdate,
  QueueUpdate,
  ReadReceipt,
  Recalled,
  SearchPage,
  SearchRequest,
  SendAck,
  ServiceSession,
  SessionAssigned,
  SessionEnded,
  SessionTransferred,
  SyncRequest,
  Typing,
} from './protocol.js';
import { ReadState } from './reads.js';
import { defaultStore } from './stores.js';
import { canShareTabs, type Link, SharedLink } from './tabs.js';

export interface ClientOptions {
  /** The WebSocket endpoint, e.g. `ws://127.0.0.1:7800/ws`. */
  url: string;
  /** The token, or a function that gives a fresh one (called for each sign-in and HTTP call). */
  token: string | (() => string | Promise<string>);
  /** Stable per terminal (browser, app install): the device's pending set is keyed by it. */
  deviceId: string;
  /** The HTTP API's origin (uploads, links, customer-service lists); the page's own by default. */
  apiUrl?: string;
  /** Where unsent messages are kept: IndexedDB in browsers, memory elsewhere by default. */
  store?: OutboxStore;
  /** The WebSocket class: the global one by default (pass `ws` on Node < 22). */
  WebSocket?: WebSocketConstructor;
  /** JSON text frames by default; `protobufCodec()` from `@dongdong/client/protobuf` for binary. */
  codec?: Codec;
  /** A send not made within this long fails with EXPIRED (default 2 minutes). */
  sendDeadlineMs?: number;
  /** Resume the session after a short drop (default true). */
  resume?: boolean;
  /**
   * In a browser, the tabs of one user and device share one connection
   * (default true where Web Locks and BroadcastChannel exist): a second
   * tab is connected at once, and the device is never signed in twice.
   */
  shareTabs?: boolean;
  requestTimeoutMs?: number;
  pingEveryMs?: number;
  pongTimeoutMs?: number;
}

/** Every event a client emits, with its payload. */
export interface DongdongClientEvents {
  /** The connection's state changed. */
  state: { state: ConnectionState; reason?: string; code?: number };
  /** Signed in (first time, after a reconnect, resumed or not). */
  ready: AuthOk;
  /**
   * New messages of a conversation, in seq order, each once, never with a
   * hole before them: pushed, replayed, or your own once sent. `history`:
   * older messages `loadOlder` fetched, or a gap filled.
   */
  messages: { conversationId: string; messages: Message[]; how: Arrival };
  /** A message lost its content (recalled by its sender or an admin). */
  recalled: Message;
  /** A send changed status (pending, sent, read, failed). */
  outbox: OutboxEntry;
  /** A conversation's list entry changed (last message, unread, pointers). */
  conversation: ConversationItem;
  /** The conversation list was loaded from the server (after each sign-in): current now. */
  conversations: ConversationItem[];
  /** Someone read a conversation up to a seq (you on another device, or the peer). */
  receipt: ReadReceipt;
  /** The peer is typing (`typing`), or stopped; expires after 6 s without a refresh. */
  typing: { fromUser: string; conversationId: string; typing: boolean };
  presence: PresenceUpdate;
  /** Customer service: a session was assigned, transferred or ended; a place in line; left messages; an offer to leave one. */
  session: { assigned?: ServiceSession; transferred?: SessionTransferred; ended?: ServiceSession };
  queue: QueueUpdate;
  leftMessages: LeftMessageNotice;
  leaveMessageOffer: LeaveMessageOffer;
  /** Your customer-service state (the answer to `csState`). */
  csState: CsState;
  /** An `Error` the server pushed that answers no request (e.g. a refused frame). */
  error: DongdongError;
  /**
   * Every frame the server pushed (and every customer-service answer),
   * after the typed events above: for what they do not cover.
   */
  frame: Frame;
}

/** A send under way: the promise of its SendAck, with its id. */
export type PendingSend = Promise<SendAck> & { clientMsgId: string };

/** `before_seq` for "the newest". */
const NEWEST = '18446744073709551615';
/** How long a peer's "typing" lasts without a refresh. */
const TYPING_TTL_MS = 6000;
/** A "still typing" refresh is sent this often while typing. */
const TYPING_REFRESH_MS = 3000;

/**
 * A dongdong client: see docs/sdk.md. Keeps one connection up (it comes
 * back by itself), sends through a durable outbox, and keeps each
 * conversation's messages in order without holes.
 */
export class DongdongClient extends Emitter<DongdongClientEvents> {
  readonly connection: Link;
  readonly http: HttpApi;
  private readonly outboxQueue: Outbox;
  private readonly cache: ConversationCache;
  private readonly reads: ReadState;
  private readonly deadlineMs: number;
  private readonly watched = new Set<string>();
  private readonly typingTimers = new Map<string, ReturnType<typeof setTimeout>>();
  private readonly typingOut = new Map<string, { timer: ReturnType<typeof setInterval> }>();
  /** Pushed messages not acked yet (held ones among them). */
  private readonly delivered = new Set<string>();
  private acks: string[] = [];
  private eventAcks: string[] = [];
  private ackTimer: ReturnType<typeof setTimeout> | null = null;
  private loaded: Promise<void> | null = null;

  constructor(private readonly options: ClientOptions) {
    super();
    const WS = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!WS) throw new Error('no WebSocket here: pass options.WebSocket (e.g. the `ws` package on Node < 22)');
    this.deadlineMs = options.sendDeadlineMs ?? 120_000;
    const connection: ConnectionOptions = {
      url: options.url,
      token: options.token,
      deviceId: options.deviceId,
      codec: options.codec ?? jsonCodec,
      WebSocket: WS,
      resume: options.resume ?? true,
      requestTimeoutMs: options.requestTimeoutMs ?? 15_000,
      pingEveryMs: options.pingEveryMs ?? 25_000,
      pongTimeoutMs: options.pongTimeoutMs ?? 10_000,
      backoff: new Backoff(),
    };
    this.connection =
      (options.shareTabs ?? true) && canShareTabs()
        ? new SharedLink(`${options.url}|${options.deviceId}`, connection)
        : new Connection(connection);
    this.http = new HttpApi(options.apiUrl ?? (globalThis as { location?: { origin: string } }).location?.origin ?? '', options.token);
    this.cache = new ConversationCache({
      history: (c, after, limit) => this.sync({ conversationId: c, afterSeq: String(after), limit }),
      older: (c, before, limit) => this.sync({ conversationId: c, beforeSeq: String(before), limit }),
      released: (conversationId, messages, how) => {
        this.reads.messages(conversationId, messages);
        this.emit('messages', { conversationId, messages, how });
        // Acked once the app has them (a push held for a gap, when released).
        for (const m of messages) if (this.delivered.delete(m.msgId ?? '')) this.queueAck(m.msgId);
      },
      recalled: (m) => this.emit('recalled', m),
    });
    this.reads = new ReadState({
      me: () => this.connection.me?.userId ?? '',
      list: async (cursor, limit) => (await this.connection.request({ conversationsRequest: { cursor, limit } })).conversationPage ?? {},
      mark: async (conversationId, upToSeq) =>
        (await this.connection.request({ markRead: { conversationId, upToSeq: String(upToSeq) } })).readReceipt ?? {},
      changed: (item) => this.emit('conversation', item),
    });
    const storeKey = `${options.deviceId}`;
    this.outboxQueue = new Outbox(options.store ?? defaultStore(), storeKey, {
      connected: () => this.connection.isOpen(),
      send: async (e) => {
        const f = await this.connection.request({ send: { clientMsgId: e.clientMsgId, toUser: e.toUser, content: e.content } });
        return f.sendAck ?? {};
      },
      changed: (entry) => this.emit('outbox', { ...entry }),
    });
    this.connection.on('state', (s) => {
      if (s.state !== 'open') this.outboxQueue.disconnected();
      this.emit('state', s);
    });
    this.connection.on('ready', (ok) => this.ready(ok));
    this.connection.on('frame', (f) => this.pushed(f));
  }

  /** Starts connecting; resolves once the outbox a previous page left is loaded. */
  connect(): Promise<void> {
    this.loaded ??= this.outboxQueue.load();
    this.connection.start();
    return this.loaded;
  }

  /** Closes for good (what is unsent stays in the store for the next client). */
  close(): void {
    this.connection.close();
    this.outboxQueue.close();
    if (this.ackTimer) clearTimeout(this.ackTimer);
    for (const t of this.typingTimers.values()) clearTimeout(t);
    for (const t of this.typingOut.values()) clearInterval(t.timer);
  }

  get state(): ConnectionState {
    return this.connection.state;
  }

  /** The signed-in user (after `ready`). */
  get me(): AuthOk | null {
    return this.connection.me;
  }

  // ---- messages --------------------------------------------------------

  /**
   * Sends a message: kept in the outbox (durably) and sent, again after
   * every reconnect with the same `clientMsgId`, until the server stores
   * it (resolves with the SendAck) or refuses it, or the deadline passes
   * (rejects with the code). Its status is also told by `outbox` events.
   */
  send(toUser: string, content: Content, clientMsgId = uuid()): PendingSend {
    const now = Date.now();
    const entry: OutboxEntry = {
      clientMsgId,
      toUser,
      content,
      createdMs: now,
      deadlineMs: now + this.deadlineMs,
      status: 'pending',
      tries: 0,
    };
    const done = this.outboxQueue.add(entry).then((ack) => {
      this.ownMessage(entry, ack);
      return ack;
    });
    return Object.assign(done, { clientMsgId });
  }

  sendText(toUser: string, text: string): PendingSend {
    return this.send(toUser, { text });
  }

  /** Sends an uploaded image or file by its id (see `upload`). */
  sendFile(toUser: string, file: FileInfo): PendingSend {
    const kind = file.contentType.startsWith('image/') ? { image: { fileId: file.fileId } } : { file: { fileId: file.fileId, name: file.name } };
    return this.send(toUser, kind);
  }

  /** Sends a failed message again (same `clientMsgId`), with a new deadline. */
  retry(clientMsgId: string): Promise<SendAck> {
    const entry = this.outboxQueue.get(clientMsgId);
    return this.outboxQueue.retry(clientMsgId, Date.now() + this.deadlineMs).then((ack) => {
      if (entry) this.ownMessage(entry, ack);
      return ack;
    });
  }

  /** Forgets a failed message. */
  discard(clientMsgId: string): void {
    this.outboxQueue.discard(clientMsgId);
  }

  /** This device's sends, oldest first, with their status. */
  outbox(): OutboxEntry[] {
    return this.outboxQueue.list().map((e) => ({ ...e }));
  }

  /** A conversation's messages the client holds, in seq order, without holes. */
  messages(conversationId: string): Message[] {
    return this.cache.messages(conversationId);
  }

  /** The highest seq held of a conversation (0: none). */
  newestSeq(conversationId: string): number {
    return this.cache.newestSeq(conversationId);
  }

  /** The lowest seq held of a conversation (0: none; 1: it is all here). */
  oldestSeq(conversationId: string): number {
    return this.cache.oldestSeq(conversationId);
  }

  /**
   * Fetches older messages (a page before the oldest held, or the newest
   * page when none is); resolves with how many came. `sessionId`: a
   * customer-service session that grants the reading (an agent reading the
   * conversation of a session transferred to them).
   */
  async loadOlder(
    conversationId: string,
    { limit = 50, sessionId }: { limit?: number; sessionId?: string } = {},
  ): Promise<{ added: number; hasMore: boolean }> {
    const oldest = this.cache.oldestSeq(conversationId);
    if (oldest === 1) return { added: 0, hasMore: false };
    const before = oldest === 0 ? NEWEST : String(oldest);
    let page: HistoryPage;
    try {
      page = await this.sync({ conversationId, beforeSeq: before, limit, sessionId });
    } catch (e) {
      // A conversation nobody wrote in yet (e.g. a session just assigned).
      if ((e as DongdongError).code === 'NOT_FOUND') return { added: 0, hasMore: false };
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
  async catchUp(conversationId: string, { sessionId }: { sessionId?: string } = {}): Promise<void> {
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
    // A few messages held (a replay after a long time away): a screenful
    // of what came before them too.
    const held = this.cache.newestSeq(conversationId) - this.cache.oldestSeq(conversationId) + 1;
    if (this.cache.oldestSeq(conversationId) > 1 && held < 50) await this.loadOlder(conversationId, { sessionId });
  }

  /** Opens the conversation with `user`: its newest page into the cache; resolves with its id ('' when none yet). */
  async open(user: string, limit = 50): Promise<string> {
    let page: HistoryPage;
    try {
      page = await this.sync({ withUser: user, beforeSeq: NEWEST, limit });
    } catch (e) {
      if ((e as DongdongError).code === 'NOT_FOUND') return '';
      throw e;
    }
    const id = page.conversationId ?? '';
    if (id) this.cache.addHistory(id, page.messages ?? []);
    return id;
  }

  /** One page of history as the server has it (SyncRequest), outside the cache. */
  async sync(req: SyncRequest): Promise<HistoryPage> {
    return (await this.connection.request({ syncRequest: req })).historyPage ?? {};
  }

  /** Recalls one of your messages (within the server's recall window). */
  async recall(msgId: string): Promise<Recalled> {
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
  async search(req: SearchRequest | string): Promise<SearchPage> {
    const searchRequest = typeof req === 'string' ? { query: req } : req;
    return (await this.connection.request({ searchRequest })).searchPage ?? {};
  }

  // ---- read state ------------------------------------------------------

  /** The conversation list, most recently active first (current after each reconnect). */
  conversations(): ConversationItem[] {
    return this.reads.list();
  }

  unreadTotal(): number {
    return this.reads.unreadTotal();
  }

  /** Marks read up to `seq` (call it once per screenful shown). */
  markRead(conversationId: string, seq: number): void {
    this.reads.markRead(conversationId, seq);
  }

  readSeq(conversationId: string): number {
    return this.reads.readSeq(conversationId);
  }

  peerReadSeq(conversationId: string): number {
    return this.reads.peerReadSeq(conversationId);
  }

  // ---- presence and typing --------------------------------------------

  /**
   * Watches users' online state (kept across reconnects): their state now
   * and every change come as `presence` events. Resolves once the server
   * has the subscription.
   */
  async watch(users: string[]): Promise<PresenceUpdate[]> {
    for (const u of users) this.watched.add(u);
    if (!this.connection.isOpen()) return [];
    return this.subscribe(users);
  }

  unwatch(users: string[]): void {
    for (const u of users) this.watched.delete(u);
    this.connection.fire({ presenceUnsubscribe: { users } });
  }

  /**
   * Tells `toUser` you are typing (refreshed every 3 s until `typing(…,
   * false)` or a send), or that you stopped.
   */
  typing(toUser: string, typing: boolean): void {
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
  upload(data: Blob | ArrayBuffer | Uint8Array, options: UploadOptions = {}): Promise<FileInfo> {
    return this.http.upload(data, options);
  }

  /** A signed download link of a file (renewed before it expires). */
  fileLink(fileId: string, thumbnail = false): Promise<string> {
    return this.http.link(fileId, thumbnail);
  }

  // ---- customer service ------------------------------------------------

  /** Customer: asks for service in `group`. The answer: a place in line, an agent, or an offer to leave a message. */
  async requestService(
    group: string,
    options: { firstMessage?: Content; page?: string; userAgent?: string } = {},
  ): Promise<{ queue?: QueueUpdate; assigned?: SessionAssigned; offer?: LeaveMessageOffer }> {
    const f = await this.answer({ requestService: { group, ...options } });
    return { queue: f.queueUpdate, assigned: f.sessionAssigned, offer: f.leaveMessageOffer };
  }

  async cancelRequest(group: string): Promise<void> {
    await this.answer({ cancelRequest: { group } });
  }

  /** Customer: leaves a message for `group` (resolves with its id). */
  async leaveMessage(group: string, content: Content, contact = ''): Promise<string> {
    return (await this.connection.request({ leaveMessage: { group, content, contact } })).csOk?.id ?? '';
  }

  async endSession(sessionId: string): Promise<SessionEnded> {
    return (await this.answer({ endSession: { sessionId } })).sessionEnded ?? {};
  }

  /** Customer: rates an ended session (1–5) once. */
  async rate(sessionId: string, score: number, comment = ''): Promise<void> {
    await this.connection.request({ rate: { sessionId, score, comment } });
  }

  /** Your open sessions, places in line and (agents) status and load. */
  async csState(): Promise<CsState> {
    return (await this.answer({ csStateRequest: {} })).csState ?? {};
  }

  /** Agent: online, away or offline. */
  async setStatus(status: 'ONLINE' | 'AWAY' | 'OFFLINE'): Promise<void> {
    await this.answer({ setStatus: { status } });
  }

  /** Agent (manual-pick groups): takes the next customer, or this one. */
  async acceptSession(group: string, customer = ''): Promise<SessionAssigned> {
    return (await this.answer({ acceptSession: { group, customer } })).sessionAssigned ?? {};
  }

  async transferSession(sessionId: string, to: { agent?: string; group?: string }, note = ''): Promise<SessionTransferred> {
    const f = await this.answer({ transferSession: { sessionId, toAgent: to.agent, toGroup: to.group, note } });
    return f.sessionTransferred ?? {};
  }

  /** Agent: claims a left message to answer it. */
  async claimLeftMessage(leftMessageId: string): Promise<LeftMessageNotice> {
    return (await this.answer({ claimLeftMessage: { leftMessageId } })).leftMessageNotice ?? {};
  }

  // ---- inside ----------------------------------------------------------

  /**
   * A customer-service request: its answer is state too (a place in line,
   * an assignment, an offer), so it is also emitted as its event, and a
   * page can handle answers and pushes in one place.
   */
  private async answer(body: Omit<Frame, 'reqId'>): Promise<Frame> {
    const f = await this.connection.request(body);
    this.pushed({ ...f, reqId: '0' });
    return f;
  }

  private ready(ok: AuthOk): void {
    this.emit('ready', ok);
    this.outboxQueue.flush();
    if (!ok.resumed && this.watched.size > 0) void this.subscribe([...this.watched]).catch(() => {});
    void this.reads.load().then(() => this.emit('conversations', this.reads.list()), () => {});
  }

  private async subscribe(users: string[]): Promise<PresenceUpdate[]> {
    const out: PresenceUpdate[] = [];
    for (let i = 0; i < users.length; i += 200) {
      // The first user's state answers; the others' come as pushes.
      const f = await this.connection.request({ presenceSubscribe: { users: users.slice(i, i + 200) } });
      if (f.presenceUpdate) {
        out.push(f.presenceUpdate);
        this.emit('presence', f.presenceUpdate);
      }
    }
    return out;
  }

  private pushed(f: Frame): void {
    if (f.deliver?.message) {
      const m = f.deliver.message;
      const id = m.msgId ?? '';
      this.delivered.add(id);
      const what = this.cache.push(m);
      // Released: acked as the app gets it. Held: acked when released.
      // Anything else the app has, or gets from history: acked now.
      if (what !== 'held' && this.delivered.delete(id)) this.queueAck(id);
    } else if (f.readReceipt) {
      this.receipt(f.readReceipt);
    } else if (f.recalled) {
      this.cache.recall(f.recalled);
      this.queueAck(undefined, f.recalled.eventId);
    } else if (f.typing) {
      this.typed(f.typing);
    } else if (f.presenceUpdate) {
      this.emit('presence', f.presenceUpdate);
    } else if (f.sessionAssigned) {
      this.emit('session', { assigned: f.sessionAssigned.session });
    } else if (f.sessionTransferred) {
      this.emit('session', { transferred: f.sessionTransferred });
    } else if (f.sessionEnded) {
      this.emit('session', { ended: f.sessionEnded.session });
    } else if (f.queueUpdate) {
      this.emit('queue', f.queueUpdate);
    } else if (f.leftMessageNotice) {
      this.emit('leftMessages', f.leftMessageNotice);
    } else if (f.leaveMessageOffer) {
      this.emit('leaveMessageOffer', f.leaveMessageOffer);
    } else if (f.csState) {
      this.emit('csState', f.csState);
    } else if (f.error) {
      this.emit('error', DongdongError.fromFrame(f.error));
    }
    this.emit('frame', f);
  }

  private receipt(r: ReadReceipt): void {
    this.reads.receipt(r);
    if (r.reader && r.reader !== this.connection.me?.userId) this.outboxQueue.readUpTo(r.conversationId ?? '', Number(r.upToSeq ?? 0));
    this.emit('receipt', r);
    this.queueAck(undefined, r.eventId);
  }

  private typed(t: Typing): void {
    const key = `${t.conversationId}\u0000${t.fromUser}`;
    const old = this.typingTimers.get(key);
    if (old) clearTimeout(old);
    this.typingTimers.delete(key);
    const event = { fromUser: t.fromUser ?? '', conversationId: t.conversationId ?? '', typing: !!t.typing };
    this.emit('typing', event);
    if (t.typing) {
      this.typingTimers.set(
        key,
        setTimeout(() => {
          this.typingTimers.delete(key);
          this.emit('typing', { ...event, typing: false });
        }, TYPING_TTL_MS),
      );
    }
  }

  /** Your own message, once the server stored it, into its conversation. */
  private ownMessage(entry: OutboxEntry, ack: SendAck): void {
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
      serverTimeMs: ack.serverTimeMs,
    });
  }

  /**
   * Acks go out once the app has the messages, gathered over the current
   * task (one frame for a burst, not one per message).
   */
  private queueAck(msgId?: string, eventId?: string): void {
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
}

/** A random UUID (v4), also where crypto.randomUUID is missing (plain http pages). */
export function uuid(): string {
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
