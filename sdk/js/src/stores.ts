import type { OutboxEntry, OutboxStore } from './outbox.js';

/**
 * Keeps the outbox in memory: it survives reconnects, and a new client
 * given the same store (a "reload" in Node, a test), not the process.
 */
export class MemoryStore implements OutboxStore {
  private readonly data = new Map<string, Map<string, OutboxEntry>>();

  async load(key: string): Promise<OutboxEntry[]> {
    return [...(this.data.get(key)?.values() ?? [])].map((e) => structuredClone(e));
  }

  async put(key: string, entry: OutboxEntry): Promise<void> {
    let m = this.data.get(key);
    if (!m) {
      m = new Map();
      this.data.set(key, m);
    }
    m.set(entry.clientMsgId, structuredClone(entry));
  }

  async remove(key: string, clientMsgId: string): Promise<void> {
    this.data.get(key)?.delete(clientMsgId);
  }
}

/**
 * Keeps the outbox in the browser's IndexedDB (database `dongdong`, store
 * `outbox`, keyed by user and device and `clientMsgId`): what was typed
 * survives a reload, a crash of the tab and a closed laptop lid. Falls
 * back to memory where IndexedDB is refused (private windows of some
 * browsers, sandboxed frames).
 */
export class IndexedDbStore implements OutboxStore {
  private db: Promise<IDBDatabase | null>;
  private readonly fallback = new MemoryStore();

  constructor(private readonly name = 'dongdong') {
    this.db = this.open();
  }

  private open(): Promise<IDBDatabase | null> {
    return new Promise((resolve) => {
      try {
        const req = indexedDB.open(this.name, 1);
        req.onupgradeneeded = () => req.result.createObjectStore('outbox');
        req.onsuccess = () => resolve(req.result);
        req.onerror = () => resolve(null);
        req.onblocked = () => resolve(null);
      } catch {
        resolve(null);
      }
    });
  }

  private async tx<T>(mode: IDBTransactionMode, run: (s: IDBObjectStore) => IDBRequest<T>): Promise<T | null> {
    const db = await this.db;
    if (!db) return null;
    return new Promise((resolve, reject) => {
      const t = db.transaction('outbox', mode);
      const req = run(t.objectStore('outbox'));
      t.oncomplete = () => resolve(req.result);
      t.onerror = () => reject(t.error);
      t.onabort = () => reject(t.error);
    });
  }

  async load(key: string): Promise<OutboxEntry[]> {
    if (!(await this.db)) return this.fallback.load(key);
    const range = IDBKeyRange.bound([key, ''], [key, '\uffff']);
    return ((await this.tx('readonly', (s) => s.getAll(range))) as OutboxEntry[] | null) ?? [];
  }

  async put(key: string, entry: OutboxEntry): Promise<void> {
    if (!(await this.db)) return this.fallback.put(key, entry);
    await this.tx('readwrite', (s) => s.put(structuredClone(entry), [key, entry.clientMsgId]));
  }

  async remove(key: string, clientMsgId: string): Promise<void> {
    if (!(await this.db)) return this.fallback.remove(key, clientMsgId);
    await this.tx('readwrite', (s) => s.delete([key, clientMsgId]));
  }
}

/** The store a client uses when none is given: IndexedDB in browsers. */
export function defaultStore(): OutboxStore {
  return typeof indexedDB !== 'undefined' ? new IndexedDbStore() : new MemoryStore();
}
