// dd.js: what the three consoles share around the protocol client. The
// client itself is the SDK, @dongdong/client (sdk/js, built into
// dongdong-client.js): connection, outbox, conversation cache, read state,
// presence, typing, customer service. Here: where the server is, the HTTP
// API with a token, storage that survives blocked storage, device ids, and
// words for errors.

import { DongdongClient, DongdongError, CLOSE, uuid } from './dongdong-client.js';

export { DongdongClient, DongdongError, CLOSE, uuid };
/** The consoles' name for the SDK's error. */
export const DdError = DongdongError;

/** Where the server's WebSocket is, and whether dev sign-in is on. */
export async function serverInfo() {
  const r = await fetch('/api/v1/info', { cache: 'no-store' });
  if (!r.ok) throw new Error(`the server did not answer /api/v1/info (HTTP ${r.status})`);
  return r.json();
}

export function wsUrl(info) {
  if (info.ws_url) return info.ws_url;
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.hostname}:${info.ws_port}/ws`;
}

/**
 * Words for people, by error code (English; ui.js adds the other
 * languages): every code of the protocol's `ErrorCode` (a test holds the
 * list to the server's), and the SDK's own (DISCONNECTED, TIMEOUT, CLOSED,
 * EXPIRED).
 */
export const ERROR_WORDS = {
  BAD_FRAME: 'The server could not read that request.',
  RATE_LIMITED: 'Too many messages at once; slow down a little.',
  UNAVAILABLE: 'The service is unavailable right now; it will be retried.',
  FORBIDDEN: 'You are not allowed to do that.',
  UNAUTHENTICATED: 'Your sign-in is not valid (expired or wrong). Sign in again.',
  NOT_FOUND: 'Not found.',
  TOO_LARGE: 'That is too long.',
  INVALID_ARGUMENT: 'That was not accepted',
  CONFLICT: 'That does not fit the current state',
  TOO_LATE: 'Too late for that',
  INTERNAL: 'The server failed; try again.',
  DISCONNECTED: 'Not connected; it will be sent when the connection is back.',
  TIMEOUT: 'The server did not answer in time; try again.',
  CLOSED: 'The connection is closed.',
  EXPIRED: 'It could not be sent in time.',
};

/** `base` (the words for an error code), with the server's detail when it adds one. */
export function withDetail(base, e) {
  return e.message && e.message !== e.code && !/[.。]$/.test(base) ? `${base}: ${e.message}` : base;
}

/** Words for people, by error code. */
export function describeError(e) {
  return withDetail(ERROR_WORDS[e.code] || 'Something went wrong', e);
}

/** The HTTP API with a bearer token; throws DdError from `{"error": {...}}` bodies. */
export async function api(token, method, path, body) {
  const init = { method, headers: { authorization: `Bearer ${token}` } };
  if (body !== undefined) {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let r;
  try {
    r = await fetch(path, init);
  } catch (e) {
    throw new DdError('UNAVAILABLE', 'the server cannot be reached', true);
  }
  if (r.status === 204) return null;
  const data = await r.json().catch(() => ({}));
  if (!r.ok) {
    const err = data.error || {};
    const e = new DdError(err.code || 'INTERNAL', err.message || `HTTP ${r.status}`, r.status >= 500);
    if (err.field) e.field = err.field; // the body's field at fault
    throw e;
  }
  return data;
}

/**
 * localStorage or sessionStorage, or, where the browser refuses them (e.g.
 * a frame in a page without an origin, or storage blocked for third-party
 * frames), a map that lasts as long as the page.
 */
export function storage(kind) {
  try {
    const s = kind === 'local' ? window.localStorage : window.sessionStorage;
    const probe = '__dd_probe__';
    s.setItem(probe, '1');
    s.removeItem(probe);
    return s;
  } catch {
    const m = new Map();
    return {
      getItem: (k) => (m.has(k) ? m.get(k) : null),
      setItem: (k, v) => m.set(k, String(v)),
      removeItem: (k) => m.delete(k),
    };
  }
}

/** A stable device id for this browser and user, kept across reloads. */
export function deviceIdFor(tenant, user, prefix) {
  const local = storage('local');
  const key = `dd.device.${tenant}.${user}`;
  let id = local.getItem(key);
  if (!id) {
    id = `${prefix}-${uuid().slice(0, 13)}`;
    local.setItem(key, id);
  }
  return id;
}

/** The claims of a JWT, unverified (the server verifies). */
export function claimsOf(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    // UTF-8 (a Chinese display name), not Latin-1.
    return JSON.parse(new TextDecoder().decode(Uint8Array.from(atob(part), (c) => c.charCodeAt(0))));
  } catch {
    return null;
  }
}
