// Generated from im-core/proto/dongdong.proto and im_core::CloseCode by im-core's test
// `sdk_types::the_committed_sdk_types_are_the_generated_ones`: do not edit; run
// `DD_WRITE_SDK_TYPES=1 cargo test -p im-core sdk_types` after changing the protocol.
//
// Protobuf's canonical JSON mapping (the server's text frames): lowerCamelCase names,
// 64-bit integers as strings, enums by name. Every field is optional: fields at their
// default ("", 0, false) are left out.

export type ErrorCode =
  | 'ERROR_CODE_UNSPECIFIED'
  | 'BAD_FRAME'
  | 'UNAUTHENTICATED'
  | 'FORBIDDEN'
  | 'NOT_FOUND'
  | 'TOO_LARGE'
  | 'RATE_LIMITED'
  | 'UNAVAILABLE'
  | 'INTERNAL'
  | 'INVALID_ARGUMENT'
  | 'CONFLICT'
  | 'TOO_LATE';

export type AgentStatus =
  | 'AGENT_STATUS_UNSPECIFIED'
  | 'ONLINE'
  | 'AWAY'
  | 'OFFLINE';

export type SessionState =
  | 'SESSION_STATE_UNSPECIFIED'
  | 'WAITING'
  | 'ACTIVE'
  | 'ENDED';

export interface Frame {
  /**
   * Chosen by the client; a reply (AuthOk, SendAck, HistoryPage, Pong, Error,
   * and the other answers) echoes the req_id of its request. Server pushes
   * (Deliver, pushed ReadReceipt and Recalled, ...) carry 0.
   */
  reqId?: string;
  /**
   * client -> server
   */
  auth?: Auth;
  send?: Send;
  ack?: Ack;
  syncRequest?: SyncRequest;
  ping?: Ping;
  /**
   * client -> server, customer service (docs/protocol.md, "Customer service")
   */
  requestService?: RequestService;
  cancelRequest?: CancelRequest;
  leaveMessage?: LeaveMessage;
  endSession?: EndSession;
  rate?: Rate;
  setStatus?: SetStatus;
  acceptSession?: AcceptSession;
  transferSession?: TransferSession;
  csStateRequest?: CsStateRequest;
  claimLeftMessage?: ClaimLeftMessage;
  /**
   * Both ways: client -> server with to_user, server -> client with
   * from_user and conversation_id.
   */
  typing?: Typing;
  presenceSubscribe?: PresenceSubscribe;
  presenceUnsubscribe?: PresenceUnsubscribe;
  presenceUpdate?: PresenceUpdate;
  /**
   * client -> server: read state, the conversation list, recall
   * (docs/protocol.md, "Read receipts, unread counts and recall")
   */
  markRead?: MarkRead;
  conversationsRequest?: ConversationsRequest;
  recall?: Recall;
  /**
   * server -> client: answers to those, and pushes that are pending for
   * offline devices like messages (acked by event_id)
   */
  readReceipt?: ReadReceipt;
  conversationPage?: ConversationPage;
  recalled?: Recalled;
  /**
   * client -> server: message search, answered with SearchPage
   * (docs/protocol.md, "Search")
   */
  searchRequest?: SearchRequest;
  searchPage?: SearchPage;
  /**
   * server -> client
   */
  authOk?: AuthOk;
  sendAck?: SendAck;
  deliver?: Deliver;
  historyPage?: HistoryPage;
  pong?: Pong;
  error?: Error;
  /**
   * server -> client, customer service
   */
  queueUpdate?: QueueUpdate;
  sessionAssigned?: SessionAssigned;
  sessionTransferred?: SessionTransferred;
  sessionEnded?: SessionEnded;
  leftMessageNotice?: LeftMessageNotice;
  leaveMessageOffer?: LeaveMessageOffer;
  csState?: CsState;
  csOk?: CsOk;
}

/**
 * First frame of every connection.
 */
export interface Auth {
  /**
   * HS256 JWT with claims tenant, sub, role, exp.
   */
  token?: string;
  /**
   * Stable id of this terminal (app install, browser profile). 1-128 bytes.
   */
  deviceId?: string;
  /**
   * The resume_token of this device's previous AuthOk: within
   * im.resume_window (5 min) of that connection's end (or while it is still
   * open: it is replaced), on the node that held it, the session is resumed
   * (AuthOk.resumed): its unacknowledged deliveries are sent again under
   * their ids and its presence subscriptions stay. Otherwise (empty,
   * unknown, expired, taken, another node or device) an ordinary sign-in.
   */
  resumeToken?: string;
}

/**
 * A connection's Sends are placed in the order the server reads them: sends
 * pipelined on one connection get increasing seqs in the order written. The
 * SendAck (or Error) of each may come back in any order; match by req_id or
 * client_msg_id.
 */
export interface Send {
  /**
   * Chosen by the sender, unique per sender; resending the same id yields the
   * same msg_id and seq and no second message. 1-128 bytes.
   */
  clientMsgId?: string;
  /**
   * Recipient user id in the sender's tenant.
   */
  toUser?: string;
  content?: Content;
}

/**
 * Acknowledges delivered messages for this device; they stop being pending.
 * One per message as it is read, or several ids at once. Not answered (an
 * Error only for malformed ids) and stored without an fsync: after a crash
 * in the moment after an Ack, the message is delivered once more under the
 * same msg_id.
 */
export interface Ack {
  msgIds?: string[];
  /**
   * The event_id of ReadReceipt and Recalled pushes: they stop being
   * pending for this device. Unknown or outdated ids are ignored.
   */
  eventIds?: string[];
}

/**
 * History paging. With before_seq > 0: the newest `limit` messages with
 * seq < before_seq. Otherwise: the oldest `limit` messages with seq > after_seq.
 * Messages are always returned in ascending seq.
 */
export interface SyncRequest {
  conversationId?: string;
  afterSeq?: string;
  beforeSeq?: string;
  /**
   * 0 means the server default (50); capped at the server maximum (200).
   */
  limit?: number;
  /**
   * Alternative to conversation_id: the other user of a 1:1 conversation.
   */
  withUser?: string;
  /**
   * With conversation_id: read it as a participant of this service session
   * (e.g. an agent paging what the customer said to earlier agents).
   */
  sessionId?: string;
}

export interface Ping {
}

export interface AuthOk {
  tenant?: string;
  userId?: string;
  deviceId?: string;
  nodeId?: string;
  serverTimeMs?: string;
  /**
   * Messages pending for this device; they follow as Deliver{replay=true}.
   */
  pendingCount?: string;
  role?: string;
  /**
   * For Auth.resume_token when this connection drops (empty when the
   * server resumes no sessions). Valid once.
   */
  resumeToken?: string;
  /**
   * This sign-in resumed the session of Auth.resume_token: the presence
   * subscriptions of that connection stay, and what it had not acknowledged
   * follows (Deliver replay=true), with whatever arrived meanwhile.
   */
  resumed?: boolean;
}

export interface SendAck {
  clientMsgId?: string;
  msgId?: string;
  conversationId?: string;
  seq?: string;
  serverTimeMs?: string;
  /**
   * True when this client_msg_id had been accepted before (a retry).
   */
  duplicate?: boolean;
}

export interface Deliver {
  message?: Message;
  /**
   * True when sent from the device's pending set (on connect, or resent after
   * the ack timeout): it may have been delivered before. Dedupe by msg_id.
   * A replay or resend carries the message as stored at that time: one
   * recalled since it was first delivered comes with recalled_by set and no
   * content.
   */
  replay?: boolean;
}

export interface HistoryPage {
  conversationId?: string;
  messages?: Message[];
  /**
   * More messages exist beyond this page in the requested direction.
   */
  hasMore?: boolean;
}

export interface Pong {
  serverTimeMs?: string;
}

export interface Error {
  code?: ErrorCode;
  message?: string;
  /**
   * Retrying the same request later may succeed.
   */
  retryable?: boolean;
}

export interface Message {
  msgId?: string;
  conversationId?: string;
  seq?: string;
  fromUser?: string;
  fromDevice?: string;
  toUser?: string;
  content?: Content;
  clientMsgId?: string;
  serverTimeMs?: string;
  /**
   * Set when the message was recalled: who recalled it and when. Its
   * content is then deleted (content is unset); ids, seq and sender stay.
   */
  recalledBy?: string;
  recalledMs?: string;
}

export interface Content {
  text?: string;
  image?: Image;
  file?: File;
  custom?: Custom;
}

/**
 * Set url (an image hosted elsewhere) or file_id (uploaded with POST
 * /api/v1/files by the sender). For an upload the server fills width,
 * height, size_bytes, content_type and has_thumbnail from what it stored.
 */
export interface Image {
  url?: string;
  width?: number;
  height?: number;
  sizeBytes?: string;
  fileId?: string;
  contentType?: string;
  /**
   * A thumbnail (longest side 320 px) exists: GET /api/v1/files/{file_id}/thumbnail.
   */
  hasThumbnail?: boolean;
}

/**
 * Set url or file_id, as for Image; for an upload the server fills name,
 * size_bytes, content_type and sha256.
 */
export interface File {
  url?: string;
  name?: string;
  sizeBytes?: string;
  fileId?: string;
  contentType?: string;
  /**
   * Hex SHA-256 of the bytes.
   */
  sha256?: string;
}

export interface Custom {
  type?: string;
  json?: string;
}

/**
 * Customer: asks for an agent of `group`. Answered with QueueUpdate (queued)
 * or SessionAssigned (served at once), or LeaveMessageOffer when nobody can
 * take the customer. Asking again returns the existing session.
 */
export interface RequestService {
  group?: string;
  /**
   * Posted to the agent, as the customer's message, when one is assigned.
   */
  firstMessage?: Content;
  /**
   * Where the customer asks from, shown to the agent: the page the chat was
   * opened on (up to 1024 bytes) and the client's user agent (up to 512).
   */
  page?: string;
  userAgent?: string;
}

/**
 * Customer: leaves the queue of `group`. Answered with CsOk.
 */
export interface CancelRequest {
  group?: string;
}

/**
 * Customer: leaves a message for `group` (typically after LeaveMessageOffer).
 * Answered with CsOk { id }.
 */
export interface LeaveMessage {
  group?: string;
  content?: Content;
  /**
   * How to reach the customer (phone, e-mail); free text, up to 256 bytes.
   */
  contact?: string;
}

/**
 * Customer, agent (or admin): ends a session. Answered with SessionEnded.
 */
export interface EndSession {
  sessionId?: string;
}

/**
 * Customer: rates an ended session once. Answered with CsOk.
 */
export interface Rate {
  sessionId?: string;
  /**
   * 1 to 5.
   */
  score?: number;
  /**
   * Up to 1000 bytes.
   */
  comment?: string;
}

/**
 * Agent: sets the status. Answered with CsState.
 */
export interface SetStatus {
  status?: AgentStatus;
}

/**
 * Agent of a manual-pick group: takes `customer` (or the head of the queue).
 * Answered with SessionAssigned.
 */
export interface AcceptSession {
  group?: string;
  customer?: string;
}

/**
 * The session's agent (or an admin): moves it to an agent with free capacity
 * at once, or to the front of a group's queue. Answered with
 * SessionTransferred.
 */
export interface TransferSession {
  sessionId?: string;
  toAgent?: string;
  toGroup?: string;
  /**
   * For the next agent (up to 500 bytes); the session keeps it as
   * transfer_note until the next transfer.
   */
  note?: string;
}

/**
 * Anyone: this user's open sessions, waiting positions and (agents) status.
 * Answered with CsState. Clients send it after (re)connecting.
 */
export interface CsStateRequest {
}

/**
 * Agent: claims a left message of one of their groups, to answer it with an
 * ordinary Send to the customer. Answered with LeftMessageNotice holding it.
 */
export interface ClaimLeftMessage {
  leftMessageId?: string;
}

export interface ServiceSession {
  sessionId?: string;
  group?: string;
  customer?: string;
  /**
   * Empty while waiting.
   */
  agent?: string;
  /**
   * The conversation with the current agent; empty while waiting.
   */
  conversationId?: string;
  /**
   * Every conversation of the session, one per agent, oldest first: page
   * them with SyncRequest { conversation_id, session_id }.
   */
  conversations?: string[];
  state?: SessionState;
  createdMs?: string;
  assignedMs?: string;
  endedMs?: string;
  endedBy?: string;
  endReason?: string;
  score?: number;
  comment?: string;
  previousAgents?: string[];
  /**
   * RequestService's page and user_agent.
   */
  page?: string;
  userAgent?: string;
  /**
   * The note of the last transfer ("" if none).
   */
  transferNote?: string;
  /**
   * When it last entered a queue (on the request, or a transfer to a
   * group): a waiting session has waited since.
   */
  queuedMs?: string;
}

/**
 * To a waiting customer: their place in line changed (1 = next).
 */
export interface QueueUpdate {
  sessionId?: string;
  group?: string;
  position?: number;
  /**
   * From the free slots, the online capacity and the group's mean handle
   * time (docs/protocol.md, "Waiting", gives the formula).
   */
  estimatedWaitS?: number;
}

/**
 * To the customer and the agent: the session has an agent.
 */
export interface SessionAssigned {
  session?: ServiceSession;
}

/**
 * To the customer, the previous agent (and, for a transfer to an agent, the
 * new one, who also gets SessionAssigned): the session moved.
 */
export interface SessionTransferred {
  session?: ServiceSession;
  fromAgent?: string;
  fromGroup?: string;
  /**
   * "transfer", "agent went offline" or "agent disconnected".
   */
  reason?: string;
}

/**
 * To the customer and the agent: the session ended.
 */
export interface SessionEnded {
  session?: ServiceSession;
}

export interface LeftMessageInfo {
  id?: string;
  group?: string;
  customer?: string;
  content?: Content;
  contact?: string;
  createdMs?: string;
  claimedBy?: string;
}

/**
 * To agents: left messages waiting for an answer (when they go online, and
 * when one arrives), or the one just claimed.
 */
export interface LeftMessageNotice {
  leftMessages?: LeftMessageInfo[];
}

export type LeaveMessageOfferReason =
  | 'REASON_UNSPECIFIED'
  | 'NO_AGENT_ONLINE'
  | 'QUEUE_FULL'
  | 'WAITED_TOO_LONG';

/**
 * To a customer: nobody can take them now; they may LeaveMessage instead.
 */
export interface LeaveMessageOffer {
  group?: string;
  reason?: LeaveMessageOfferReason;
  message?: string;
}

export interface CsState {
  /**
   * Open (waiting or active) sessions of this user.
   */
  sessions?: ServiceSession[];
  /**
   * For each waiting session, its place in line.
   */
  waiting?: QueueUpdate[];
  /**
   * Agents: status, capacity and groups.
   */
  status?: AgentStatus;
  capacity?: number;
  load?: number;
  groups?: string[];
}

/**
 * A customer-service request succeeded; `id` names what it created, if any.
 */
export interface CsOk {
  id?: string;
}

/**
 * Client -> server: `to_user` (set) sees that this user is typing (or has
 * stopped). Never stored, never pending, dropped when the peer is offline;
 * no answer unless the frame is refused. Send typing = true again every 3 s
 * while typing, and typing = false when stopped or sent.
 * Server -> client: `from_user` (set) is typing to you in `conversation_id`.
 * Treat it as stopped when no refresh came within 6 s.
 */
export interface Typing {
  toUser?: string;
  typing?: boolean;
  fromUser?: string;
  conversationId?: string;
}

/**
 * Client -> server: tell me whether these users (of my tenant) are online,
 * now and whenever it changes. Answered with one PresenceUpdate per user
 * (carrying this frame's req_id); later changes are pushed (req_id 0) until
 * PresenceUnsubscribe or the connection closes. At most
 * limits.max_presence_subscriptions users per connection.
 */
export interface PresenceSubscribe {
  users?: string[];
}

/**
 * Client -> server: no more updates about these users. No answer.
 */
export interface PresenceUnsubscribe {
  users?: string[];
}

/**
 * Server -> client: `user` is online (at least one device connected) or
 * not; when not, `last_seen_ms` says since when (0: unknown).
 */
export interface PresenceUpdate {
  user?: string;
  online?: boolean;
  lastSeenMs?: string;
}

/**
 * Client -> server: I have read `conversation_id` up to `up_to_seq`
 * (inclusive; capped at the conversation's last seq). The read pointer only
 * moves forward: a lower value changes nothing. Answered with ReadReceipt
 * (reader = you, up_to_seq = your pointer now, event_id empty). When the
 * pointer moved, the other member's devices and your other devices get a
 * ReadReceipt push, pending for them until acked (only the highest counts).
 */
export interface MarkRead {
  conversationId?: string;
  upToSeq?: string;
}

/**
 * `reader` has read `conversation_id` up to `up_to_seq`. Pushed (req_id 0)
 * with an event_id to ack; as the answer to MarkRead without one.
 */
export interface ReadReceipt {
  conversationId?: string;
  reader?: string;
  upToSeq?: string;
  /**
   * Ack it with Ack { event_ids }; a newer receipt of the same reader and
   * conversation replaces an unacked older one.
   */
  eventId?: string;
}

/**
 * Client -> server: my conversations, most recently active first. Answered
 * with ConversationPage.
 */
export interface ConversationsRequest {
  /**
   * next_cursor of the previous page; empty for the first page.
   */
  cursor?: string;
  /**
   * 0 means the server default (20); capped at 100.
   */
  limit?: number;
}

export interface ConversationItem {
  conversationId?: string;
  /**
   * The other member (yourself in a conversation with yourself).
   */
  peer?: string;
  /**
   * The newest message (recalled ones without content).
   */
  lastMessage?: Message;
  lastSeq?: string;
  /**
   * Messages from the peer above your read pointer.
   */
  unread?: string;
  /**
   * Your read pointer and the peer's (0: nothing read).
   */
  readSeq?: string;
  peerReadSeq?: string;
}

export interface ConversationPage {
  items?: ConversationItem[];
  /**
   * Pass as cursor for the next page; empty when there is none.
   */
  nextCursor?: string;
}

/**
 * Client -> server: find messages I may read (a customer: her
 * conversations; an agent: his conversations and the customer-service
 * sessions of his groups; an admin: the tenant). Answered with SearchPage,
 * newest first. Every field narrows the search; give words or at least
 * one filter.
 */
export interface SearchRequest {
  /**
   * Words that must all appear (case-insensitive; Chinese found inside
   * sentences: 处理 finds 待处理); "quoted words" must appear in that
   * order. At most 256 characters, 16 words or phrases.
   */
  query?: string;
  conversationId?: string;
  /**
   * Conversations with this user (the other party).
   */
  withUser?: string;
  /**
   * Messages this user sent.
   */
  fromUser?: string;
  /**
   * Any of "text", "image", "file" (its name is searched), "custom" (its
   * type is searched); empty: all.
   */
  kinds?: string[];
  /**
   * server_time_ms in [since_ms, until_ms); 0: unbounded.
   */
  sinceMs?: string;
  untilMs?: string;
  /**
   * Messages of this customer-service session, or of this group's sessions.
   */
  sessionId?: string;
  group?: string;
  /**
   * next_cursor of the previous page; empty for the first page.
   */
  cursor?: string;
  /**
   * 0 means the server default (20); capped at 50.
   */
  limit?: number;
}

/**
 * A piece of a snippet; matched pieces are what the query found.
 */
export interface SnippetPart {
  text?: string;
  matched?: boolean;
}

export interface SearchHit {
  /**
   * The message as stored now (open its conversation at message.seq).
   */
  message?: Message;
  /**
   * Up to 120 characters of its text around the first match, "…" where
   * text was left out; empty for an image.
   */
  snippet?: SnippetPart[];
  /**
   * The customer-service session the message was part of (read around it
   * with SyncRequest { conversation_id, session_id }); empty otherwise.
   */
  sessionId?: string;
}

export interface SearchPage {
  hits?: SearchHit[];
  /**
   * Pass as cursor for the next page; empty when there is none.
   */
  nextCursor?: string;
}

/**
 * Client -> server: recall one of my messages (within im.recall_window of
 * sending it; an admin: any message of the tenant). Its content is deleted
 * from storage. Answered with Recalled (event_id empty); every other device
 * of both members gets a Recalled push, pending until acked. Recalling a
 * recalled message answers the same Recalled again.
 */
export interface Recall {
  msgId?: string;
}

export interface Recalled {
  conversationId?: string;
  msgId?: string;
  seq?: string;
  /**
   * Who recalled it.
   */
  by?: string;
  recalledMs?: string;
  /**
   * Ack it with Ack { event_ids }.
   */
  eventId?: string;
}

/** Every error code, in the protocol's order. */
export const ERROR_CODES: readonly ErrorCode[] = ['ERROR_CODE_UNSPECIFIED', 'BAD_FRAME', 'UNAUTHENTICATED', 'FORBIDDEN', 'NOT_FOUND', 'TOO_LARGE', 'RATE_LIMITED', 'UNAVAILABLE', 'INTERNAL', 'INVALID_ARGUMENT', 'CONFLICT', 'TOO_LATE'];

/** The WebSocket close codes of the protocol (docs/protocol.md, "Close codes"). */
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
} as const;
