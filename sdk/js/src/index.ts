/**
 * @dongdong/client: the dongdong chat client for browsers and Node.
 *
 * ```ts
 * const client = new DongdongClient({ url, token, deviceId });
 * client.on('messages', ({ conversationId, messages }) => show(conversationId, messages));
 * await client.connect();
 * await client.sendText('bob', 'hello');
 * ```
 *
 * docs/sdk.md has the guide: the connection's states, the outbox's
 * statuses, and how each of the server's guarantees reaches the screen.
 */
export { Backoff } from './backoff.js';
export type { Arrival, Pushed } from './cache.js';
export { ConversationCache } from './cache.js';
export { type DongdongClientEvents, DongdongClient, type ClientOptions, type PendingSend, uuid } from './client.js';
export { type Codec, jsonCodec } from './codec.js';
export { Connection, type ConnectionState, type WebSocketConstructor, type WebSocketLike } from './connection.js';
export { DongdongError, type ErrorKind } from './errors.js';
export { type FileInfo, HttpApi, type UploadOptions } from './http.js';
export type { OutboxEntry, OutboxStore, SendStatus } from './outbox.js';
export * from './protocol.js';
export { IndexedDbStore, MemoryStore } from './stores.js';
export { canShareTabs, type Link, SharedLink } from './tabs.js';
