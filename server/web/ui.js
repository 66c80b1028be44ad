// ui.js: what the three consoles share: signing in, the connection banner,
// notices, and drawing a conversation. Text from the network is only ever
// set as textContent, never parsed as HTML.

import { serverInfo, claimsOf, storage, ERROR_WORDS, withDetail, api, CLOSE } from './dd.js';
import { translator } from './i18n.js';

const session = storage('session');

// The shared strings, in each language (each page keeps its own).
const t = translator({
  en: {
    sec: '{n} s', min: '{n} min', hourMin: '{h} h {m} min',
    dismiss: 'dismiss',
    connConnecting: 'connecting…', connOnline: 'connected', connOffline: 'offline', connOfflineWhy: 'offline ({why})',
    connStopped: 'disconnected', connResuming: 'reconnecting…', connSignedOut: 'signed out: {why}', refused: 'the server refused the sign-in',
    connReplaced: 'opened in another tab or window', notSignedIn: 'not signed in',
    unreachable: 'The server cannot be reached', tryAgain: 'Try again',
    sending: 'sending…', notSent: ' not sent: {why}', retry: 'retry', newMessages: 'New messages ↓',
    receiptSent: 'Sent', receiptRead: 'Read', recall: 'Recall', recallTitle: 'Recall this message (delete it for everyone)',
    recalledMine: 'You recalled a message', recalledBy: '{who} recalled a message',
    image: 'image', file: 'file', imageUnavailable: '(image unavailable)', attach: 'Attach a photo or file', uploading: 'Uploading {name}…',
    dropHere: 'Drop to send', fileUnavailable: '(file unavailable)',
    fileTooLarge: '{name} is too large: files up to {max} can be sent.', fileRefused: '{name} cannot be sent: photos (JPEG, PNG, GIF, WebP) and documents can.',
    tooManyUploads: 'Too many files at once: wait a minute, then send the rest.',
    noMessages: 'No messages in this chat.', transcript: 'Chat of {date}',
    signInNeeded: 'Sign-in needed', openWithToken: 'Open this page with a token: ', tokenMinted: '. The application embedding it mints tokens with the server\'s secret.',
    signInDev: 'Sign in (development)', devNote: 'This server runs with its generated dev secret, so it mints a token for anyone. With a real secret this form does not exist.',
    tenant: 'Tenant', user: 'User', displayName: 'Display name', role: 'Role', signIn: 'Sign in', optional: 'optional', example: 'e.g. {user}',
    signInFailed: 'Sign-in failed: {why}', 'role:customer': 'customer', 'role:agent': 'agent', 'role:admin': 'admin',
    'reason:transfer': 'transfer', 'reason:agent went offline': 'the agent went offline',
    'reason:agent disconnected': 'the agent lost the connection', 'reason:ended by the customer': 'ended by the customer',
    'reason:ended by the agent': 'ended by the agent', 'reason:ended by an admin': 'ended by an administrator',
    ...ERROR_WORDS,
    OTHER: 'Something went wrong',
  },
  'zh-CN': {
    sec: '{n} 秒', min: '{n} 分钟', hourMin: '{h} 小时 {m} 分钟',
    dismiss: '关闭',
    connConnecting: '连接中…', connOnline: '已连接', connOffline: '离线', connOfflineWhy: '离线（{why}）',
    connStopped: '已断开', connResuming: '正在重新连接…', connSignedOut: '已退出：{why}', refused: '服务器拒绝了登录',
    connReplaced: '已在另一个标签页或窗口中打开', notSignedIn: '未登录',
    unreachable: '无法连接服务器', tryAgain: '重试',
    sending: '发送中…', notSent: ' 未发送：{why}', retry: '重发', newMessages: '有新消息 ↓',
    receiptSent: '已发送', receiptRead: '已读', recall: '撤回', recallTitle: '撤回这条消息（所有人都看不到）',
    recalledMine: '你撤回了一条消息', recalledBy: '{who} 撤回了一条消息',
    image: '图片', file: '文件', imageUnavailable: '（图片无法显示）', attach: '发送图片或文件', uploading: '正在上传 {name}…',
    dropHere: '松开即可发送', fileUnavailable: '（文件无法获取）',
    fileTooLarge: '{name} 太大了：可发送不超过 {max} 的文件。', fileRefused: '{name} 无法发送：可以发送照片和文档。',
    tooManyUploads: '一次发送的文件太多：请等一分钟再发送其余的。',
    noMessages: '这次对话没有消息。', transcript: '{date} 的对话',
    signInNeeded: '需要登录', openWithToken: '请带上登录凭证打开此页面：', tokenMinted: '。嵌入本页面的应用用服务器的密钥签发凭证。',
    signInDev: '登录（开发模式）', devNote: '此服务器使用自动生成的开发密钥，任何人都能获得登录凭证。配置正式密钥后，此表单不存在。',
    tenant: '租户', user: '用户', displayName: '显示名称', role: '角色', signIn: '登录', optional: '选填', example: '例如 {user}',
    signInFailed: '登录失败：{why}', 'role:customer': '顾客', 'role:agent': '客服', 'role:admin': '管理员',
    'reason:transfer': '转接', 'reason:agent went offline': '客服已离线',
    'reason:agent disconnected': '客服连接中断', 'reason:ended by the customer': '由顾客结束',
    'reason:ended by the agent': '由客服结束', 'reason:ended by an admin': '由管理员结束',
    BAD_FRAME: '服务器无法读取该请求。',
    RATE_LIMITED: '发送太频繁，请稍慢一些。',
    UNAVAILABLE: '服务暂时不可用，稍后会自动重试。',
    FORBIDDEN: '您没有权限这样做。',
    UNAUTHENTICATED: '登录已失效（过期或有误），请重新登录。',
    NOT_FOUND: '未找到。',
    TOO_LARGE: '内容太长。',
    INVALID_ARGUMENT: '内容不被接受',
    CONFLICT: '与当前状态不符',
    TOO_LATE: '已超过时限',
    INTERNAL: '服务器出错，请重试。',
    DISCONNECTED: '未连接；连接恢复后会自动发送。',
    TIMEOUT: '服务器没有及时回应，请重试。',
    CLOSED: '连接已关闭。',
    EXPIRED: '未能及时发出。',
    OTHER: '出了点问题',
  },
});

/** Why a session moved or ended (the server's reason), in the page's language. */
export function reasonWords(reason) {
  if (!reason) return '';
  const words = t(`reason:${reason}`);
  return words === `reason:${reason}` ? reason : words;
}

/** A failure in words for people, in the page's language. */
export function describe(e) {
  return withDetail(t(e.code in ERROR_WORDS ? e.code : 'OTHER'), e);
}

/** Attributes that name a list entry across redraws (the focused one is found again). */
const FOCUS_KEYS = ['data-session-id', 'data-chat-id', 'data-past-id', 'data-left-id', 'data-take', 'data-group', 'data-agent-status', 'data-open', 'data-move', 'data-move-go', 'data-end'];

function focusKey(e) {
  if (e.id) return `#${CSS.escape(e.id)}`;
  const attr = FOCUS_KEYS.find((k) => e.hasAttribute(k));
  return attr ? `${e.tagName.toLowerCase()}[${attr}="${CSS.escape(e.getAttribute(attr))}"]` : null;
}

/**
 * Runs `draw` (which may replace elements) and gives the focus back to the
 * element that had it, or to its redrawn twin (same id or list key), so
 * that a keyboard user is never thrown to <body> by a redraw. When it is
 * gone for good, `fallback()` (if any) says where the focus goes.
 */
export function keepFocus(draw, fallback) {
  const had = document.activeElement;
  const key = had && had !== document.body ? focusKey(had) : null;
  draw();
  if (!had || had === document.body || document.contains(had)) return;
  const twin = key ? document.querySelector(key) : null;
  const next = twin || (fallback ? fallback() : null);
  if (next) next.focus({ preventScroll: true });
}

/** document.createElement with properties, attributes (data-*, aria-*) and children. */
export function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k.startsWith('data-') || k.startsWith('aria-') || k === 'role' || k === 'for') e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

export const $ = (sel, root = document) => root.querySelector(sel);

/**
 * An element id made of `parts` (user and group ids, any characters): for
 * labels made of what a table row shows (aria-labelledby its name cell).
 */
export const domId = (...parts) => parts.map((p) => String(p).replace(/[^A-Za-z0-9_-]/g, (c) => `_${c.codePointAt(0)}`)).join('-');

/** How long a two-step button waits for its second press. */
export const CONFIRM_MS = 4000;
const asked = new Map(); // key -> until when the question stands
/**
 * A button that asks before `act`: the first press shows `askLabel` (with
 * data-confirm) for CONFIRM_MS, a second press within that time acts.
 * The question is kept by `key`, so a button drawn anew by a redraw keeps
 * asking; `redraw` (optional) is called when the question lapses.
 */
export function twoStepButton(key, label, askLabel, act, props = {}, redraw = null) {
  const asking = () => (asked.get(key) || 0) > Date.now();
  const b = el('button', { type: 'button', class: 'danger', ...props, 'data-confirm': asking() ? 'true' : undefined }, asking() ? askLabel : label);
  const reset = () => { b.textContent = label; b.removeAttribute('data-confirm'); };
  b.addEventListener('click', () => {
    if (asking()) {
      asked.delete(key);
      reset();
      act();
      return;
    }
    asked.set(key, Date.now() + CONFIRM_MS);
    b.textContent = askLabel;
    b.dataset.confirm = 'true';
    setTimeout(() => {
      if (asking()) return;
      asked.delete(key);
      if (redraw) redraw();
      else reset();
    }, CONFIRM_MS + 50);
  });
  return b;
}

// Nothing fails silently: a failure nobody caught is shown too.
window.addEventListener('unhandledrejection', (ev) => notifyError(ev.reason || 'unexpected error'));

/** "12 s", "3 min", "2 h 5 min". */
export function duration(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return t('sec', { n: s });
  const m = Math.floor(s / 60);
  if (m < 60) return t('min', { n: m });
  return t('hourMin', { h: Math.floor(m / 60), m: m % 60 });
}

export function clock(ms) {
  const d = new Date(Number(ms));
  return d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

/** Date and time, in the page's language: "2026/11/28 14:05". */
export function when(ms) {
  const d = new Date(Number(ms));
  return d.toLocaleString(document.documentElement.lang || [], { year: 'numeric', month: 'numeric', day: 'numeric', hour: '2-digit', minute: '2-digit' });
}

/**
 * Names and avatars of users, from the tokens' claims (GET /api/v1/users).
 * `want(ids)` asks for the unknown ones in one request; a 'change' event
 * follows when they arrive. Users without a name show their id.
 */
export class People extends EventTarget {
  constructor(token) {
    super();
    this.token = token;
    this.known = new Map(); // id -> { name, avatar } (empty when the user has none)
    this.asking = new Map(); // id -> the lookup in flight
  }

  name(id) {
    const p = this.known.get(id);
    return (p && p.name) || id;
  }

  /** Looks up the names not known yet; resolves once all of `ids` are (or failed). */
  async want(ids) {
    const unique = [...new Set(ids)].filter(Boolean);
    const fresh = unique.filter((id) => !this.known.has(id) && !this.asking.has(id)).slice(0, 100);
    if (fresh.length) {
      const lookup = this.lookUp(fresh);
      for (const id of fresh) this.asking.set(id, lookup);
    }
    await Promise.all(unique.map((id) => this.asking.get(id)).filter(Boolean));
  }

  async lookUp(ids) {
    try {
      const r = await api(this.token, 'GET', `/api/v1/users?ids=${ids.map(encodeURIComponent).join(',')}`);
      for (const id of ids) this.known.set(id, {});
      for (const u of r.users || []) this.known.set(u.user, { name: u.name, avatar: u.avatar });
      this.dispatchEvent(new Event('change'));
    } catch {
      // Asked again next time.
    } finally {
      for (const id of ids) this.asking.delete(id);
    }
  }

  /** The user's picture, or their initials on a colour of their id. */
  avatar(id, size = 'small') {
    const p = this.known.get(id) || {};
    const url = p.avatar && safeUrl(p.avatar);
    if (url) return el('img', { class: `avatar ${size}`, src: url, alt: '', referrerPolicy: 'no-referrer' });
    const name = this.name(id);
    const initials = [...name.trim()].filter((c) => /\p{L}|\p{N}/u.test(c)).slice(0, /[\u3400-\u9fff]/.test(name) ? 1 : 2).join('').toUpperCase();
    let hue = 0;
    for (const c of id) hue = (hue * 31 + c.codePointAt(0)) % 360;
    return el('span', { class: `avatar ${size}`, 'aria-hidden': 'true', style: `background:hsl(${hue} 45% 30%)` }, initials || '?');
  }
}

/** A notice line at the top of the page: kind is info, error or assign. */
export function notify(text, kind = 'info', ms = 6000) {
  let box = $('#notices');
  if (!box) {
    box = el('div', { id: 'notices', 'aria-live': 'polite' });
    document.body.append(box);
  }
  const n = el('div', { class: `notice ${kind}`, role: kind === 'error' ? 'alert' : 'status' }, text);
  const close = el('button', { class: 'link', 'aria-label': t('dismiss'), onclick: () => n.remove() }, '×');
  n.append(close);
  box.append(n);
  if (ms) setTimeout(() => n.remove(), ms);
  return n;
}

export function notifyError(e) {
  return notify(e instanceof Error && e.code ? describe(e) : String(e.message || e), 'error', 10000);
}

/**
 * Shows the connection state in #conn and reacts to final closes: the
 * SDK's states (connecting, resuming, open, offline, closed), in words;
 * `onFinal('replaced' | 'signed-out', why)` when the server closed the
 * connection for good.
 */
export function connectionBanner(client, onFinal) {
  const conn = $('#conn');
  client.on('state', ({ state, reason, code }) => {
    const closedBy = state === 'closed' ? code : undefined;
    const status = state === 'open' ? 'online'
      : state !== 'closed' ? state
        : closedBy === CLOSE.REPLACED ? 'replaced' : closedBy ? 'signed-out' : 'stopped';
    const words = {
      connecting: t('connConnecting'),
      resuming: t('connResuming'),
      online: t('connOnline'),
      offline: reason ? t('connOfflineWhy', { why: reason }) : t('connOffline'),
      stopped: t('connStopped'),
      'signed-out': t('connSignedOut', { why: reason || t('refused') }),
      replaced: t('connReplaced'),
    };
    conn.textContent = words[status] || status;
    conn.dataset.status = status;
    if (status === 'signed-out' || status === 'replaced') onFinal(status, reason);
  });
  client.on('error', (e) => notifyError(e));
}

/**
 * What `drawMessages` draws of some conversations (earlier ones first),
 * from the SDK: each conversation's messages in seq order, then this
 * device's sends to `peer` not yet stored (sending, or failed with why).
 */
export function entriesOf(client, conversationIds, peer) {
  const out = [];
  for (const c of conversationIds) for (const m of client.messages(c)) out.push({ message: m, state: 'stored' });
  const me = client.me ? client.me.userId : '';
  for (const e of client.outbox()) {
    if ((e.status !== 'pending' && e.status !== 'failed') || (peer && e.toUser !== peer)) continue;
    const message = { clientMsgId: e.clientMsgId, fromUser: me, toUser: e.toUser, content: e.content };
    out.push(e.status === 'failed' ? { message, state: 'failed', error: describe(e.error) } : { message, state: 'sending' });
  }
  return out;
}

const TOKEN_KEY = (page) => `dd.token.${page}`;
/** Who may sign in on a page, by the page's own role. */
const PAGE_ROLES = { customer: ['customer'], agent: ['agent', 'admin'], admin: ['admin'] };

/**
 * The token to use on this page: from `#token=` (how an embedding
 * application passes it), else the one this tab signed in with, else the dev
 * sign-in form (only when the server offers it). Resolves with
 * { token, claims, info, params }.
 */
export async function signIn(page, role, mount) {
  const params = new URLSearchParams(location.hash.slice(1));
  let info;
  try {
    info = await serverInfo();
  } catch (e) {
    mount.replaceChildren(el('div', { class: 'signin card', role: 'alert' },
      el('h2', {}, t('unreachable')),
      el('p', {}, String(e.message || e)),
      el('button', { class: 'primary', onclick: () => location.reload() }, t('tryAgain'))));
    return new Promise(() => {});
  }
  const fromHash = params.get('token');
  if (fromHash) {
    session.setItem(TOKEN_KEY(page), fromHash);
    params.delete('token');
    // Keep the token out of the address bar, bookmarks and screenshots.
    history.replaceState(null, '', location.pathname + location.search + (params.size ? `#${params}` : ''));
  }
  const stored = session.getItem(TOKEN_KEY(page));
  const claims = stored && claimsOf(stored);
  if (claims && (!claims.exp || claims.exp * 1000 > Date.now() + 5000)) {
    return { token: stored, claims, info, params };
  }
  session.removeItem(TOKEN_KEY(page));
  // Not "starting…" forever: nobody is signed in until a token comes.
  const conn = $('#conn');
  if (conn) {
    conn.textContent = t('notSignedIn');
    conn.dataset.status = 'signed-out';
  }
  return new Promise((resolve) => {
    if (!info.dev_login) {
      mount.replaceChildren(
        el('div', { class: 'signin card' },
          el('h2', {}, t('signInNeeded')),
          el('p', {}, t('openWithToken'), el('code', {}, `${location.pathname}#token=<token>`), t('tokenMinted'))),
      );
      return;
    }
    const tenant = el('input', { id: 'signin-tenant', name: 'tenant', value: 'demo', required: true, autocomplete: 'off' });
    const user = el('input', { id: 'signin-user', name: 'user', value: '', required: true, autocomplete: 'off', placeholder: t('example', { user: role === 'customer' ? 'carol' : 'amy' }) });
    // Only the roles this page is for: the customer widget never signs in an admin.
    const displayName = el('input', { id: 'signin-name', name: 'name', value: '', autocomplete: 'off', maxLength: 64, placeholder: t('optional') });
    const roleSel = el('select', { id: 'signin-role', name: 'role' },
      ...PAGE_ROLES[role].map((r) => el('option', { value: r, selected: r === role }, t(`role:${r}`))));
    const err = el('p', { class: 'error', role: 'alert' });
    const form = el('form', { class: 'signin card', id: 'signin' },
      el('h2', {}, t('signInDev')),
      el('p', { class: 'muted' }, t('devNote')),
      el('label', { for: 'signin-tenant' }, t('tenant')), tenant,
      el('label', { for: 'signin-user' }, t('user')), user,
      el('label', { for: 'signin-name' }, t('displayName')), displayName,
      el('label', { for: 'signin-role' }, t('role')), roleSel,
      err,
      el('button', { type: 'submit', class: 'primary', id: 'signin-submit' }, t('signIn')));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      err.textContent = '';
      try {
        const r = await fetch('/api/v1/dev/token', {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ tenant: tenant.value.trim(), user: user.value.trim(), role: roleSel.value, name: displayName.value.trim() }),
        });
        const data = await r.json();
        if (!r.ok) throw new Error(data.error ? data.error.message : `HTTP ${r.status}`);
        session.setItem(TOKEN_KEY(page), data.token);
        resolve({ token: data.token, claims: claimsOf(data.token), info, params });
      } catch (e) {
        err.textContent = t('signInFailed', { why: e.message });
      }
    });
    mount.replaceChildren(form);
    user.focus();
  });
}

export function signOut(page) {
  session.removeItem(TOKEN_KEY(page));
  location.reload();
}

// --- uploaded files -----------------------------------------------------------

let files = null; // the SDK's client: uploads and signed links

/** The client pages upload through and ask links to uploads of (the SDK renews them). */
export function useFiles(client) {
  files = client;
}

/** Signed links to an upload: { url, thumbnail_url }. */
export async function fileLink(fileId) {
  const [url, thumbnail] = await Promise.all([files.fileLink(fileId), files.fileLink(fileId, true)]);
  return { url, thumbnail_url: thumbnail };
}

/** 1.2 MB, 340 KB, 12 B. */
export function byteSize(n) {
  const v = Number(n || 0);
  if (v >= 1 << 20) return `${(v / (1 << 20)).toFixed(1).replace(/\.0$/, '')} MB`;
  if (v >= 1024) return `${Math.round(v / 1024)} KB`;
  return `${v} B`;
}

/**
 * Keeps `a` pointing at a signed link to `fileId`: fetched now, and renewed
 * before it is followed (a link lives `files.link_ttl`). `apply(link)`
 * sets what the link feeds; `failed()` shows that it could not be had.
 */
function linked(a, fileId, apply, failed) {
  const refresh = () => fileLink(fileId).then((l) => { a.href = l.url; apply(l); }).catch(failed);
  refresh();
  a.addEventListener('pointerenter', refresh);
  a.addEventListener('focus', refresh);
  return a;
}

/** An uploaded image: its thumbnail, a link to the full size. */
function uploadedImage(image) {
  const img = el('img', { alt: t('image'), class: 'image', 'data-file-id': image.fileId });
  const a = el('a', { class: 'file-image', target: '_blank', rel: 'noopener noreferrer' }, img);
  return linked(a, image.fileId, (l) => { if (!img.src) img.src = l.thumbnail_url || l.url; },
    () => a.replaceChildren(el('span', { class: 'muted' }, t('imageUnavailable'))));
}

/** An uploaded file: name, size, a download link. */
function uploadedFile(file) {
  const a = el('a', { class: 'file', download: file.name || 'file', 'data-file-id': file.fileId },
    `📎 ${file.name || t('file')}${Number(file.sizeBytes || 0) ? ` (${byteSize(file.sizeBytes)})` : ''}`);
  return linked(a, file.fileId, () => {}, () => a.after(el('span', { class: 'muted' }, ` ${t('fileUnavailable')}`)));
}

/**
 * Uploading for a composer: an attach button (with its hidden file input),
 * pasting files into `input`, dropping them on `dropZone`; a progress bar
 * while each uploads. `onUploaded(info)` gets the SDK's FileInfo.
 * Returns { button, progress } for the page to place.
 */
export function uploads(input, dropZone, onUploaded) {
  const picker = el('input', { type: 'file', id: 'attach-input', multiple: true, hidden: true,
    onchange: () => { send([...picker.files]); picker.value = ''; } });
  const button = el('button', { type: 'button', id: 'attach', class: 'attach', title: t('attach'), 'aria-label': t('attach'),
    onclick: () => picker.click() }, '📎');
  const progress = el('progress', { id: 'upload-progress', max: 100, value: 0, hidden: true, 'aria-label': t('attach') });
  const wrap = el('span', { class: 'uploads' }, picker, button, progress);
  input.addEventListener('paste', (ev) => {
    const files = [...(ev.clipboardData ? ev.clipboardData.files : [])];
    if (files.length) {
      ev.preventDefault();
      send(files);
    }
  });
  dropZone.addEventListener('dragover', (ev) => {
    if (![...ev.dataTransfer.types].includes('Files')) return;
    ev.preventDefault();
    dropZone.classList.add('dropping');
  });
  dropZone.addEventListener('dragleave', () => dropZone.classList.remove('dropping'));
  dropZone.addEventListener('drop', (ev) => {
    dropZone.classList.remove('dropping');
    if (!ev.dataTransfer.files.length) return;
    ev.preventDefault();
    send([...ev.dataTransfer.files]);
  });
  async function send(files) {
    const max = Number((await serverInfo().catch(() => ({}))).max_file_bytes || 0);
    for (const f of files) {
      const name = f.name || t('image');
      // Too large: said before a byte is sent, with the limit.
      if (max && f.size > max) {
        notify(t('fileTooLarge', { name, max: byteSize(max) }), 'error', 10000);
        continue;
      }
      try {
        onUploaded(await upload(f, progress));
      } catch (e) {
        // In the reader's words, never the server's (MIME types, byte counts).
        if (e.code === 'TOO_LARGE') notify(t('fileTooLarge', { name, max: byteSize(max) }), 'error', 10000);
        else if (e.code === 'INVALID_ARGUMENT') notify(t('fileRefused', { name }), 'error', 10000);
        else if (e.code === 'RATE_LIMITED') notify(t('tooManyUploads'), 'error', 10000);
        else notifyError(e);
      }
    }
  }
  return { button: wrap, progress };
}

/** One upload with progress; resolves with the SDK's FileInfo. */
async function upload(file, progress) {
  progress.hidden = false;
  progress.value = 0;
  progress.title = t('uploading', { name: file.name || '' });
  try {
    return await files.upload(file, {
      name: file.name || '',
      onProgress: (sent, total) => { if (total) progress.value = Math.round((100 * sent) / total); },
    });
  } finally {
    progress.hidden = true;
  }
}

/** The message content that sends an upload. */
export function contentOfUpload(info) {
  return info.contentType.startsWith('image/')
    ? { image: { fileId: info.fileId } }
    : { file: { fileId: info.fileId, name: info.name } };
}

/** The node for one message's content. */
export function contentNode(content) {
  if (!content) return el('span', { class: 'muted' }, '(empty)');
  if (content.text !== undefined) return linkified(content.text);
  if (content.image && content.image.fileId) return uploadedImage(content.image);
  if (content.file && content.file.fileId) return uploadedFile(content.file);
  if (content.image) {
    const url = safeUrl(content.image.url);
    if (!url) return el('span', { class: 'muted' }, '(image with an unsupported address)');
    return el('a', { href: url, target: '_blank', rel: 'noopener noreferrer' },
      el('img', { src: url, alt: 'image', class: 'image' }));
  }
  if (content.file) {
    const url = safeUrl(content.file.url);
    return url ? el('a', { href: url, target: '_blank', rel: 'noopener noreferrer' }, `📎 ${content.file.name || url}`)
      : el('span', {}, `📎 ${content.file.name || 'file'}`);
  }
  if (content.custom) return el('code', {}, `${content.custom.type}: ${content.custom.json}`);
  return el('span', { class: 'muted' }, '(unsupported content)');
}

// http(s) addresses in text: printable ASCII but for quotes and angle
// brackets (so a Chinese sentence right after a link is not part of it).
const URL_IN_TEXT = /https?:\/\/[!#-&(-;=?-~]+/g;

/** Text with its http(s) addresses as links; the rest stays text. */
export function linkified(text) {
  const span = el('span', { class: 'text' });
  let last = 0;
  for (const m of text.matchAll(URL_IN_TEXT)) {
    // Punctuation that ends a sentence is not part of the address.
    const shown = m[0].replace(/[.,;:!?)\]}]+$/, '');
    const url = safeUrl(shown);
    span.append(text.slice(last, m.index));
    span.append(url ? el('a', { href: url, target: '_blank', rel: 'noopener noreferrer' }, shown) : shown);
    last = m.index + shown.length;
  }
  span.append(text.slice(last));
  return span;
}

/** Only http(s) links: never javascript: or data: from a message. */
export function safeUrl(u) {
  try {
    const url = new URL(u);
    return url.protocol === 'http:' || url.protocol === 'https:' ? url.href : null;
  } catch {
    return null;
  }
}

/**
 * Draws a conversation into `box`: one element per message (data-msg-id,
 * data-seq), mine on the right. New messages scroll into view, unless the
 * reader has scrolled up to read: then a "new messages" pill appears, which
 * brings them to the newest. Another conversation opens at its newest.
 * With `peerRead(conversationId)` my stored messages say "Sent" or "Read";
 * with `canRecall(m)` and `onRecall(m)` they offer recall.
 */
export function drawMessages(box, entries, me, { onRetry, nameOf, mark, peerRead, canRecall, onRecall } = {}) {
  // Following the newest unless the reader scrolled up (remembered: a box
  // drawn while hidden, e.g. a closed embedded widget, has no geometry).
  const atBottom = box.clientHeight === 0 ? box.ddStick !== false : box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  // Elements are kept per message and state: a redraw moves them, so images
  // stay loaded and nothing flickers.
  const cache = box.ddCache || new Map();
  const next = new Map();
  const keys = [];
  const items = [];
  entries.forEach((entry, i) => {
    // A hand-over between two agents is marked where it happened.
    const between = mark && i > 0 ? mark(entries[i - 1], entry) : null;
    if (between) {
      const hk = `handover|${keys[keys.length - 1]}|${between}`;
      const node = cache.get(hk) || el('div', { class: 'handover', role: 'note' }, between);
      next.set(hk, node);
      items.push(node);
    }
    const m = entry.message;
    const name = nameOf ? nameOf(m.fromUser) : m.fromUser;
    const mine = m.fromUser === me && entry.state === 'stored';
    const receipt = mine && peerRead ? (Number(m.seq) <= peerRead(m.conversationId) ? 'read' : 'sent') : '';
    const recall = mine && !m.recalledBy && canRecall && onRecall && canRecall(m) ? onRecall : null;
    const key = `${m.msgId || `local:${m.clientMsgId}`}|${entry.state}|${name}|${m.recalledBy || ''}|${receipt}|${!!recall}`;
    const node = cache.get(key) || messageNode(entry, me, onRetry, name, receipt, recall);
    next.set(key, node);
    keys.push(entry.message.msgId || `local:${entry.message.clientMsgId}`);
    items.push(node);
  });
  const before = keys.indexOf(box.ddLastKey);
  const sameConversation = box.ddLastKey !== undefined && before >= 0;
  const appended = sameConversation && before < keys.length - 1;
  const last = entries[entries.length - 1];
  const mineLast = appended && last && last.message.fromUser === me;
  box.ddCache = next;
  box.ddLastKey = keys[keys.length - 1];
  const pill = newMessagesPill(box);
  placeInOrder(box, [...items, pill]);
  if (atBottom || mineLast || !sameConversation) {
    box.scrollTop = box.scrollHeight;
    box.ddStick = true;
    pill.hidden = true;
  } else if (appended) {
    pill.hidden = false;
  }
}

/**
 * Makes `nodes` the children of `box`, in order, touching only what
 * changed: a message appended to a long chat is one insertion, not a
 * thousand (replaceChildren would detach and attach every node, and the
 * browser would lay the whole list out again).
 */
function placeInOrder(box, nodes) {
  // What goes first, so that nothing kept moves to make room.
  const keep = new Set(nodes);
  for (const c of [...box.childNodes]) if (!keep.has(c)) c.remove();
  let cur = box.firstChild;
  for (const node of nodes) {
    if (cur === node) {
      cur = cur.nextSibling;
      continue;
    }
    box.insertBefore(node, cur);
  }
}

/**
 * The "new messages" pill of a message list, made once; and what keeps the
 * list at its newest message while the reader has not scrolled up: when it
 * is shown after being hidden, or resized, it goes to the newest again.
 */
function newMessagesPill(box) {
  if (box.ddPill) return box.ddPill;
  const pill = el('button', {
    type: 'button', class: 'new-pill', hidden: true,
    onclick: () => { box.scrollTop = box.scrollHeight; pill.hidden = true; },
  }, t('newMessages'));
  box.addEventListener('scroll', () => {
    if (box.clientHeight === 0) return;
    box.ddStick = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
    if (box.ddStick) pill.hidden = true;
  });
  if (typeof ResizeObserver !== 'undefined') {
    new ResizeObserver(() => {
      if (box.clientHeight > 0 && box.ddStick !== false) box.scrollTop = box.scrollHeight;
    }).observe(box);
  }
  box.ddPill = pill;
  return pill;
}

function messageNode({ message: m, state, error }, me, onRetry, name, receipt, onRecall) {
  const mine = m.fromUser === me;
  const meta = el('div', { class: 'meta' },
    mine ? '' : el('span', { class: 'speaker' }, name || m.fromUser), mine ? '' : ' · ',
    m.serverTimeMs ? clock(m.serverTimeMs) : '',
    state === 'sending' ? t('sending') : '',
    state === 'failed' ? el('span', { class: 'error' }, t('notSent', { why: error })) : '',
    receipt && !m.recalledBy ? el('span', { class: `receipt ${receipt}`, 'data-receipt': receipt },
      ` · ${receipt === 'read' ? `✓✓ ${t('receiptRead')}` : `✓ ${t('receiptSent')}`}`) : '');
  if (state === 'failed' && onRetry) meta.append(' ', el('button', { class: 'link', onclick: () => onRetry(m) }, t('retry')));
  if (onRecall) {
    meta.append(' ', el('button', { class: 'link recall', title: t('recallTitle'), 'data-recall': m.msgId, onclick: () => onRecall(m) }, t('recall')));
  }
  const bubble = m.recalledBy
    ? el('div', { class: 'bubble recalled' }, m.recalledBy === me ? t('recalledMine') : t('recalledBy', { who: m.recalledBy === m.fromUser ? name || m.fromUser : m.recalledBy }))
    : el('div', { class: 'bubble' }, contentNode(m.content));
  return el('div', {
    class: `msg ${mine ? 'mine' : 'theirs'} ${state}${m.recalledBy ? ' is-recalled' : ''}`,
    'data-msg-id': m.msgId || '',
    'data-seq': m.seq || '',
    'data-client-msg-id': m.clientMsgId || '',
    'data-recalled': m.recalledBy ? 'true' : undefined,
  }, bubble, meta);
}

/**
 * Recall for a page: `canRecall(m)` while m is within the server's recall
 * window (`recall_window_ms` of /api/v1/info); `recall(m)` asks the server
 * (the SDK applies the answer to its cache), then calls `changed`.
 */
export function recaller(client, info, changed) {
  const windowMs = Number(info.recall_window_ms || 0);
  return {
    canRecall: (m) => windowMs > 0 && Date.now() - Number(m.serverTimeMs || 0) < windowMs,
    onRecall: async (m) => {
      try {
        await client.recall(m.msgId);
        changed();
      } catch (e) {
        notifyError(e);
      }
    },
  };
}

/**
 * Enter submits `form`; Shift+Enter makes a new line. The Enter that
 * confirms an input method's candidate (Chinese pinyin, Japanese kana) does
 * not: it is part of composing (isComposing, or keyCode 229 in browsers that
 * report the composition's end first).
 */
export function enterSubmits(textarea, form) {
  textarea.addEventListener('keydown', (ev) => {
    if (ev.isComposing || ev.keyCode === 229) return;
    if (ev.key === 'Enter' && !ev.shiftKey) {
      ev.preventDefault();
      form.requestSubmit();
    }
  });
}

/** Content from what was typed: an image link as an image, else text. */
export function contentFromInput(text, asImage) {
  const t = text.trim();
  if (asImage) return safeUrl(t) ? { image: { url: t } } : null;
  return { text: t };
}

/**
 * A past session's chat, read-only, into `box`: the messages of its
 * conversations between its start and end (a conversation is per customer
 * and agent, so it also holds their other sessions), a few pages back at
 * most.
 */
export async function drawTranscript(box, client, session, me, { nameOf, mark } = {}) {
  const from = Number(session.createdMs) - 1000;
  const to = Number(session.endedMs || Date.now()) + 1000;
  const entries = [];
  for (const c of session.conversations || []) {
    // Pages of history outside the SDK's cache (a past chat is read, not lived).
    const pages = [];
    let before = '18446744073709551615';
    for (let page = 0; page < 5; page += 1) {
      let p;
      try {
        p = await client.sync({ conversationId: c, beforeSeq: before, limit: 50, sessionId: session.sessionId });
      } catch (e) {
        if (e.code === 'NOT_FOUND') break;
        throw e;
      }
      const ms = p.messages || [];
      pages.unshift(ms);
      if (!p.hasMore || !ms.length || Number(ms[0].serverTimeMs) < from) break;
      before = ms[0].seq;
    }
    for (const m of pages.flat()) {
      if (Number(m.serverTimeMs) >= from && Number(m.serverTimeMs) <= to) entries.push({ message: m, state: 'stored' });
    }
  }
  if (!entries.length) return box.replaceChildren(el('p', { class: 'muted small' }, t('noMessages')));
  drawMessages(box, entries, me, { nameOf, mark });
  box.scrollTop = 0;
}

/**
 * A past session as a <details>: `summary` nodes, and its chat drawn when
 * first opened (with `drawTranscript`).
 */
export function pastSessionItem(session, summary, client, me, { nameOf, mark, onError }) {
  const box = el('div', { class: 'messages transcript' });
  const d = el('details', { 'data-session-id': session.sessionId }, el('summary', {}, ...summary), box);
  d.addEventListener('toggle', () => {
    if (d.open && !box.childElementCount) {
      drawTranscript(box, client, session, me, { nameOf, mark }).catch(onError);
    }
  });
  return d;
}

/**
 * The mark between two messages of a session where the agent changed: the
 * agent of a message is whoever of its two users is not the customer.
 */
export function handoverMark(customer, words) {
  const agentOf = (m) => (m.fromUser === customer ? m.toUser : m.fromUser);
  return (prev, entry) => {
    if (prev.message.conversationId === entry.message.conversationId) return null;
    const [from, to] = [agentOf(prev.message), agentOf(entry.message)];
    return from && to && from !== to ? words(from, to) : null;
  };
}

/**
 * Tells `peer()` while the user types into `input`: "typing" at the first
 * keystroke (the SDK repeats it every 3 s); "stopped" after 4 s without a
 * keystroke, when the text is cleared, or when the returned function is
 * called (on send).
 */
export function typingSignals(client, input, peer) {
  let to = null;
  let idle;
  // The SDK repeats "typing" every 3 s until told to stop.
  const stop = () => {
    clearTimeout(idle);
    if (to) client.typing(to, false);
    to = null;
  };
  input.addEventListener('input', () => {
    const p = peer();
    if (p !== to) stop();
    if (!p || !input.value.trim()) return stop();
    if (!to && client.state === 'open') {
      to = p;
      client.typing(to, true);
    }
    clearTimeout(idle);
    idle = setTimeout(stop, 4000);
  });
  return stop;
}

/**
 * Shows `words(user)` in `line` while `peer()` types: from their Typing
 * pushes, until they stop, their message arrives, or 6 s pass without a
 * refresh.
 */
export function typingIndicator(client, line, peer, words) {
  const hide = () => {
    line.hidden = true;
  };
  client.on('messages', ({ messages }) => {
    if (messages.some((m) => m.fromUser === peer())) hide();
  });
  // The SDK ends a "typing" that is not refreshed within 6 s.
  client.on('typing', (ty) => {
    if (ty.fromUser !== peer() || !ty.typing) {
      if (ty.fromUser === peer()) hide();
      return;
    }
    line.textContent = words(ty.fromUser);
    line.hidden = false;
  });
  return hide;
}
