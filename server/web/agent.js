// The agent workspace (/agent): status, current sessions with unread counts
// and waiting times, the conversation (with earlier agents' part after a
// transfer, marked, and history paging), sending text and image links, quick
// replies, transfer through a picker with a note, end, the left-messages
// inbox, recent sessions, the customer panel (name, page, device, note, past
// sessions), and a sound and desktop notification for what needs attention.

import { DongdongClient, api, wsUrl, deviceIdFor, storage } from './dd.js';
import { translator, languagePicker } from './i18n.js';
import { searchPanel } from './search.js';
import { el, $, keepFocus, reasonWords, entriesOf, duration, clock, when, notify, notifyError, connectionBanner, signIn, signOut, drawMessages, drawTranscript, handoverMark, contentFromInput, contentNode, enterSubmits, People, safeUrl, typingSignals, typingIndicator, pastSessionItem, recaller, uploads, useFiles, contentOfUpload, twoStepButton } from './ui.js';

// Every string of this page, in each language.
const t = translator({
  en: {
    title: 'Agent workspace', signOut: 'Sign out',
    customerToken: 'This token is a customer\'s: the workspace needs the agent role.',
    online: '● Online', away: '◐ Away', offline: '○ Offline', status: 'status', statusLabel: 'Status ',
    sessions: 'Sessions', leftMessages: 'left messages', leftMessagesTitle: 'Left messages ',
    earlier: 'Earlier messages', conversation: 'conversation',
    typeMessage: 'Type a message, Enter to send, Shift+Enter for a new line', chatMessage: 'chat message',
    quickReplies: 'quick replies', imageLink: ' image link', saveReply: 'Save as quick reply', send: 'Send',
    transferTo: 'transfer to',
    badImageLink: 'An image link must be an http(s) address.',
    newCustomerIn: 'New customer: {customer} ({group})', newCustomer: 'New customer: {customer}',
    transferredAway: '{customer} was transferred to {to} ({reason}).',
    ended: 'The session with {customer} ended.', endedBy: 'The session with {customer} ended (by {by}).',
    newLeftOne: '1 new left message', newLeftMany: '{n} new left messages',
    quickRepliesPick: 'Quick replies…', noQuickReplies: 'No quick replies yet',
    typeReplyFirst: 'Type the reply first, then save it.', savedReply: 'Saved as a personal quick reply.',
   
    noGroup: 'no group yet', waitingFor: 'waiting {wait}', answered: 'answered',
    noCustomers: 'No customers yet: new ones appear here.', goOnline: 'Go online to get customers.',
    waitingSuffix: ' waiting', takeNext: 'Take next', contactIs: 'contact: {contact}', callBack: 'Call back: ', writeBack: 'Write back: ',
    answer: 'Answer', claim: 'Claim and answer',
    groupSince: '{group} · since {since}', before: ' · before: {agents}',
    transferToLabel: 'Transfer to ', transfer: 'Transfer', endSession: 'End session',
    answeringLeftBy: 'Answering the message left by ', pickSession: 'Pick a session on the left.',
    pickTarget: 'Choose…', agents: 'Agents', groups: 'Groups', agentLoad: '{name} ({load}/{capacity})',
    groupLine: '{name} ({online} online, {waiting} waiting)', transferNote: 'Note for the next agent (optional)',
    chooseTarget: 'Choose whom to transfer to.', nobodyFree: 'no other agent is free',
    handover: '{from} → {to}', transferNoteIs: 'Note from {from}: {note}',
    customer: 'Customer', closePanel: 'Close', showCustomer: 'Customer details',
    page: 'Page', device: 'Device', notes: 'Private note (only agents see it)', saveNote: 'Save note',
    noteSaved: 'Note saved.', noteBy: 'by {by}, {when}', pastSessions: 'Past sessions',
    noPast: 'No earlier sessions.', pastLine: '{date} · {agent}', recent: 'Recent',
    noRecent: 'Sessions you close appear here.', endedLine: '{customer} · {date}',
    readOnly: 'This session has ended.', sound: 'Sound', notifications: 'Desktop notifications',
    newMessageFrom: 'New message from {customer}',
    isTyping: '{name} is typing…',
    isOnline: '● online', isOffline: '○ offline', lastSeen: '○ offline, last seen {when}',
    statusWhenConnected: 'Not connected yet: your status is set as soon as the connection opens.',
    endConfirm: 'Press again to end',
    shortcuts: 'Keys: Alt+↓ / Alt+↑ next or previous chat, Alt+M the reply box',
    chats: 'Other chats', noChats: 'Answered left messages and messages outside a session appear here.',
    outsideSession: 'Outside a session (an answered left message, or a message after the session ended)',
  },
  'zh-CN': {
    title: '客服工作台', signOut: '退出',
    customerToken: '这是顾客的登录凭证：工作台需要客服角色。',
    online: '● 在线', away: '◐ 忙碌', offline: '○ 离线', status: '状态', statusLabel: '状态 ',
    sessions: '会话', leftMessages: '留言', leftMessagesTitle: '留言 ',
    earlier: '更早的消息', conversation: '对话',
    typeMessage: '输入消息，Enter 发送，Shift+Enter 换行', chatMessage: '聊天消息',
    quickReplies: '快捷回复', imageLink: ' 图片链接', saveReply: '存为快捷回复', send: '发送',
    transferTo: '转接给',
    badImageLink: '图片链接必须是 http(s) 地址。',
    newCustomerIn: '新顾客：{customer}（{group}）', newCustomer: '新顾客：{customer}',
    transferredAway: '{customer} 已转接给 {to}（{reason}）。',
    ended: '与 {customer} 的会话已结束。', endedBy: '与 {customer} 的会话已结束（由 {by} 结束）。',
    newLeftOne: '1 条新留言', newLeftMany: '{n} 条新留言',
    quickRepliesPick: '快捷回复…', noQuickReplies: '还没有快捷回复',
    typeReplyFirst: '请先输入回复内容，再保存。', savedReply: '已存为个人快捷回复。',
   
    noGroup: '尚未加入客服组', waitingFor: '已等待 {wait}', answered: '已回复',
    noCustomers: '暂无顾客：新顾客会出现在这里。', goOnline: '设为在线即可接待顾客。',
    waitingSuffix: ' 人等待', takeNext: '接待下一位', contactIs: '联系方式：{contact}', callBack: '回电：', writeBack: '回信：',
    answer: '回复', claim: '认领并回复',
    groupSince: '{group} · 开始于 {since}', before: ' · 之前：{agents}',
    pickTarget: '请选择…', agents: '客服', groups: '客服组', agentLoad: '{name}（{load}/{capacity}）',
    groupLine: '{name}（{online} 人在线，{waiting} 人排队）', transferNote: '给下一位客服的备注（选填）',
    chooseTarget: '请选择转接对象。', nobodyFree: '没有其他空闲客服',
    handover: '{from} → {to}', transferNoteIs: '{from} 的备注：{note}',
    customer: '顾客', closePanel: '关闭', showCustomer: '顾客信息',
    page: '来源页面', device: '设备', notes: '内部备注（仅客服可见）', saveNote: '保存备注',
    noteSaved: '备注已保存。', noteBy: '{by}，{when}', pastSessions: '历史会话',
    noPast: '没有更早的会话。', pastLine: '{date} · {agent}', recent: '最近',
    noRecent: '结束的会话会出现在这里。', endedLine: '{customer} · {date}',
    readOnly: '此会话已结束。', sound: '提示音', notifications: '桌面通知',
    newMessageFrom: '{customer} 发来新消息',
    isTyping: '{name} 正在输入…',
    isOnline: '● 在线', isOffline: '○ 离线', lastSeen: '○ 离线，最后在线 {when}',
    transferToLabel: '转接给 ', transfer: '转接', endSession: '结束会话',
    answeringLeftBy: '正在回复留言，留言人 ', pickSession: '请在左侧选择一个会话。',
    statusWhenConnected: '尚未连接：连接建立后立即设置您的状态。',
    endConfirm: '再按一次结束',
    shortcuts: '快捷键：Alt+↓ / Alt+↑ 切换到下一个或上一个对话，Alt+M 回复框',
    chats: '其他对话', noChats: '已回复的留言和会话之外的消息会出现在这里。',
    outsideSession: '会话之外的对话（已回复的留言，或会话结束后的消息）',
  },
});
// `t` is also a transfer's name below: this one is always the strings.
const tr = t;

document.title = `${t('title')} · dongdong`;
$('.brand').textContent = t('title');
$('#signout').textContent = t('signOut');
$('header.top').append(languagePicker());

const main = $('#main');
const auth = await signIn('agent', 'agent', main);
const me = auth.claims.sub;
$('#who').textContent = `${auth.claims.name || me} · ${auth.claims.tenant}`;
const people = new People(auth.token);
people.addEventListener('change', () => renderAll());
const name = (u) => people.name(u);
$('#signout').hidden = false;
$('#signout').onclick = () => signOut('agent');
if (auth.claims.role === 'customer') notify(t('customerToken'), 'error', 0);

// The SDK: connection, outbox, conversations in order; read pointers from
// the server (unread badges cleared in every tab when read in one, "Read"
// marks on our messages).
const client = new DongdongClient({ url: wsUrl(auth.info), token: auth.token, deviceId: deviceIdFor(auth.claims.tenant, me, 'console') });
client.on('receipt', () => renderAll());
client.on('conversation', () => renderAll());
client.on('outbox', () => renderConversation());
const recall = recaller(client, auth.info, () => renderAll());
document.addEventListener('visibilitychange', () => renderAll());

const state = {
  status: 'OFFLINE',
  capacity: 0,
  load: 0,
  groups: [],
  sessions: new Map(), // sessionId -> ServiceSession (ours, open)
  waitingSince: new Map(), // sessionId -> ms of the oldest customer message not yet answered
  selected: null, // { kind: 'session' | 'left' | 'past' | 'chat', id } (a chat's id: its conversation)
  left: new Map(), // left message id -> LeftMessageInfo (unclaimed, or claimed by us)
  hasMore: new Map(),
  replies: [],
  synced: false, // a CsState arrived since the last (re)connect
  manual: [], // our manual-pick groups: { id, name, queue_length }
  recent: [], // our ended sessions, newest first (HTTP form)
  targets: { agents: [], groups: [] }, // whom we can transfer to
  panelOpen: false, // the customer panel, on narrow windows
  presence: new Map(), // user -> PresenceUpdate of the customers we serve
  watching: new Set(), // users subscribed on this connection
  wanted: null, // a status chosen that the server does not have yet
  handedOver: new Set(), // customers we transferred to someone else (this page)
  loading: new Set(), // chats whose history was asked for
  chatsShown: [], // the Other chats list as last drawn
};

// Our conversations outside an open session worth listing: those with
// activity in the last week after the last session with that person ended
// (an answered left message, a customer writing after the end), or unread.
const CHAT_WINDOW_MS = 7 * 24 * 3600 * 1000;
const CHATS_SHOWN = 20;

/** Watches the online state of every customer we serve (once each per connection). */
function watchCustomers() {
  const users = [...state.sessions.values()].map((s) => s.customer).filter((u) => !state.watching.has(u));
  if (!users.length) return;
  for (const u of users) state.watching.add(u);
  // The SDK keeps the watch across reconnects; states come as `presence`.
  client.watch(users).catch((e) => {
    for (const u of users) state.watching.delete(u);
    if (e.code !== 'TOO_LARGE') notifyError(e);
  });
}

// --- layout ---------------------------------------------------------------------

const statusSel = el('select', { id: 'status', 'aria-label': t('status') },
  el('option', { value: 'ONLINE' }, t('online')), el('option', { value: 'AWAY' }, t('away')), el('option', { value: 'OFFLINE' }, t('offline')));
const loadLine = el('span', { id: 'load', class: 'muted' });
const pickBox = el('div', { id: 'manual-pick' });
const sessionList = el('ul', { id: 'sessions', class: 'list', 'aria-label': t('sessions') });
const leftList = el('ul', { id: 'left-messages', class: 'list', 'aria-label': t('leftMessages') });
const leftCount = el('span', { id: 'left-count', class: 'badge' });
const chatList = el('ul', { id: 'chats', class: 'list', 'aria-label': t('chats') });
const convHead = el('div', { id: 'conv-head', class: 'conv-head' });
const older = el('button', { class: 'link', id: 'older', hidden: true, onclick: pageBack }, t('earlier'));
// Focusable, so that keyboard users can scroll it.
const list = el('div', { id: 'messages', class: 'messages', 'aria-live': 'polite', tabIndex: 0, role: 'log', 'aria-label': t('conversation') });
const input = el('textarea', { id: 'input', rows: 2, placeholder: t('typeMessage'), maxLength: 4000, 'aria-label': t('chatMessage') });
const asImage = el('input', { type: 'checkbox', id: 'as-image' });
const replyPick = el('select', { id: 'quick-replies', 'aria-label': t('quickReplies') });
// Photos and files: the attach button, pasted into the text, dropped on the conversation.
useFiles(client);
const attach = uploads(input, list, (meta) => {
  const peer = currentPeer();
  if (peer) send(peer, contentOfUpload(meta));
});
const composer = el('form', { id: 'composer', class: 'composer' },
  input,
  el('div', { class: 'tools' },
    attach.button,
    replyPick,
    el('label', { class: 'inline' }, asImage, t('imageLink')),
    el('button', { type: 'button', class: 'link', id: 'save-reply', onclick: saveReply }, t('saveReply')),
    el('button', { type: 'submit', class: 'primary', id: 'send' }, t('send'))));
// Kept across redraws, so that a message arriving does not clear what is typed.
const transferPick = el('select', { id: 'transfer-target', 'aria-label': t('transferTo') });
transferPick.addEventListener('focus', loadTargets);
const transferNote = el('input', { id: 'transfer-note', placeholder: t('transferNote'), maxLength: 500, size: 22, 'aria-label': t('transferNote'), hidden: true });
// The note field shows once there is someone to transfer to.
transferPick.addEventListener('change', () => { transferNote.hidden = !transferPick.value; });
const recentList = el('ul', { id: 'recent', class: 'list', 'aria-label': t('recent') });
const panel = el('aside', { class: 'context', id: 'customer-panel', 'aria-label': t('customer') });
const noteBox = el('textarea', { id: 'customer-note', rows: 4, maxLength: 2000 });
const typingLine = el('div', { id: 'typing', class: 'typing muted small', hidden: true, 'aria-live': 'polite' });
const pane = el('section', { class: 'pane', id: 'pane' }, convHead, older, list, typingLine, composer);

// Sound and desktop notifications, each switchable, remembered per browser.
const prefs = storage('local');
const soundOn = el('input', { type: 'checkbox', id: 'sound', checked: prefs.getItem('dd.agent.sound') !== 'off' });
soundOn.addEventListener('change', () => prefs.setItem('dd.agent.sound', soundOn.checked ? 'on' : 'off'));
const notifyOn = el('input', { type: 'checkbox', id: 'desktop-notify', checked: 'Notification' in window && Notification.permission === 'granted' });
notifyOn.addEventListener('change', async () => {
  if (notifyOn.checked && 'Notification' in window && Notification.permission !== 'granted') {
    notifyOn.checked = (await Notification.requestPermission()) === 'granted';
  }
});

main.replaceChildren(el('div', { class: 'workspace' },
  el('aside', { class: 'side' },
    el('div', { class: 'statusbar' }, el('label', { for: 'status' }, t('statusLabel')), statusSel, loadLine),
    el('div', { class: 'alerts small' },
      el('label', { class: 'inline' }, soundOn, t('sound')),
      'Notification' in window ? el('label', { class: 'inline' }, notifyOn, t('notifications')) : ''),
    el('h3', {}, t('sessions')), sessionList,
    el('p', { class: 'muted small', id: 'shortcuts' }, t('shortcuts')),
    pickBox,
    el('h3', {}, t('leftMessagesTitle'), leftCount), leftList,
    el('h3', {}, t('chats')), chatList,
    el('h3', {}, t('recent')), recentList,
    // Her chats and her groups' sessions (the server's rule).
    searchPanel(() => client, me, { nameOf: name })),
  pane, panel));

// The status chosen is kept until the server has it: chosen before the
// connection is up (or while it is down), it is sent once it opens.
statusSel.addEventListener('change', () => {
  state.wanted = statusSel.value;
  if (client.state !== 'open') notify(t('statusWhenConnected'), 'info');
  applyStatus();
});

async function applyStatus() {
  const wanted = state.wanted;
  if (!wanted || client.state !== 'open') return;
  try {
    await client.setStatus(wanted);
    if (state.wanted === wanted) state.wanted = null;
  } catch (e) {
    if (e.code === 'DISCONNECTED') return; // sent again on 'ready'
    if (state.wanted === wanted) state.wanted = null;
    notifyError(e);
  }
  renderSide();
}

enterSubmits(input, composer);

// Keyboard: Alt+↓ / Alt+↑ move through the sessions and chats (in the
// order listed) and put the cursor in the reply box; Alt+M goes there.
document.addEventListener('keydown', (ev) => {
  if (!ev.altKey || ev.ctrlKey || ev.metaKey) return;
  if (ev.key === 'ArrowDown' || ev.key === 'ArrowUp') {
    if (ev.target instanceof HTMLSelectElement) return;
    const order = [...state.sessions.keys()].map((id) => ({ kind: 'session', id }))
      .concat(chats().map((c) => ({ kind: 'chat', id: c.conversationId })));
    if (!order.length) return;
    ev.preventDefault();
    const sel = state.selected;
    const at = order.findIndex((x) => sel && x.kind === sel.kind && x.id === sel.id);
    const step = ev.key === 'ArrowDown' ? 1 : -1;
    state.selected = order[at < 0 ? (step > 0 ? 0 : order.length - 1) : (at + step + order.length) % order.length];
    hideTyping();
    renderAll();
    input.focus();
  } else if (ev.code === 'KeyM' && !composer.hidden) {
    ev.preventDefault();
    input.focus();
  }
});
const stopTyping = typingSignals(client, input, () => currentPeer());
const hideTyping = typingIndicator(client, typingLine, () => currentPeer(), (u) => t('isTyping', { name: name(u) }));
composer.addEventListener('submit', (ev) => {
  ev.preventDefault();
  const peer = currentPeer();
  if (!peer || !input.value.trim()) return;
  stopTyping();
  const content = contentFromInput(input.value, asImage.checked);
  if (!content) return notify(t('badImageLink'), 'error');
  input.value = '';
  asImage.checked = false;
  send(peer, content);
});
replyPick.addEventListener('change', () => {
  const r = state.replies.find((x) => x.id === replyPick.value);
  if (r) {
    input.value = input.value ? `${input.value} ${r.text}` : r.text;
    input.focus();
  }
  replyPick.value = '';
});

// --- protocol ---------------------------------------------------------------------

function currentSession() {
  return state.selected && state.selected.kind === 'session' ? state.sessions.get(state.selected.id) : null;
}

function currentChat() {
  const id = state.selected && state.selected.kind === 'chat' ? state.selected.id : null;
  return id ? client.conversations().find((c) => c.conversationId === id) || null : null;
}

/** Our conversations outside open sessions (see CHAT_WINDOW_MS), most recent first. */
function chats() {
  const serving = new Set([...state.sessions.values()].map((s) => s.customer));
  const ended = new Map();
  for (const p of state.recent) ended.set(p.customer, Math.max(ended.get(p.customer) || 0, Number(p.endedMs || 0)));
  const since = Date.now() - CHAT_WINDOW_MS;
  const selected = state.selected && state.selected.kind === 'chat' ? state.selected.id : null;
  return client.conversations().filter((c) => {
    if (!c.peer || c.peer === me || serving.has(c.peer) || !c.lastMessage) return false;
    if (c.conversationId === selected || Number(c.unread || 0) > 0) return true;
    const at = Number(c.lastMessage.serverTimeMs || 0);
    return !state.handedOver.has(c.peer) && at >= since && at > (ended.get(c.peer) || 0);
  }).slice(0, CHATS_SHOWN);
}

function currentPeer() {
  if (!state.selected) return null;
  if (state.selected.kind === 'session') return currentSession() ? currentSession().customer : null;
  if (state.selected.kind === 'chat') return (currentChat() || {}).peer || null;
  const lm = state.left.get(state.selected.id);
  return lm && lm.claimedBy === me ? lm.customer : null;
}

function convIdsOf(s) {
  const ids = [...(s.conversations || [])];
  if (s.conversationId && !ids.includes(s.conversationId)) ids.push(s.conversationId);
  return ids;
}

function sessionOfMessage(m) {
  for (const s of state.sessions.values()) {
    if (convIdsOf(s).includes(m.conversationId) || s.customer === m.fromUser) return s;
  }
  return null;
}

async function fillSession(s) {
  await Promise.all(convIdsOf(s).map((c) => client.catchUp(c, { sessionId: s.sessionId }).catch((e) => notifyError(e))));
  if (state.sessions.has(s.sessionId)) state.waitingSince.set(s.sessionId, waitingFrom(s));
  renderAll();
}

/**
 * Since when the customer has waited for an answer, from the session's
 * messages (after a reload as much as live): her oldest message after the
 * last one of an agent; 0 when answered; the assignment when nobody spoke.
 */
function waitingFrom(s) {
  const since = Number(s.createdMs || 0) - 1000;
  const ms = convIdsOf(s).flatMap((c) => client.messages(c)).filter((m) => Number(m.serverTimeMs) >= since)
    .sort((a, b) => Number(a.serverTimeMs) - Number(b.serverTimeMs));
  if (!ms.length) return Number(s.assignedMs || s.createdMs || Date.now());
  let from = 0;
  for (const m of ms) from = m.fromUser === s.customer ? from || Number(m.serverTimeMs) : 0;
  return from;
}

function addSession(s, announce) {
  const known = state.sessions.has(s.sessionId);
  state.sessions.set(s.sessionId, s);
  const names = people.want([s.customer, ...(s.previousAgents || [])]);
  if (!known) {
    state.waitingSince.set(s.sessionId, Number(s.assignedMs || s.createdMs || Date.now()));
    if (announce) {
      // By name, once it is known (one lookup at most).
      names.then(() => {
        notify(t('newCustomerIn', { customer: name(s.customer), group: s.group }), 'assign', 8000);
        flashTitle(t('newCustomer', { customer: name(s.customer) }));
        attention(t('newCustomer', { customer: name(s.customer) }), { kind: 'session', id: s.sessionId });
      });
    }
    if (!state.selected) state.selected = { kind: 'session', id: s.sessionId };
  }
  fillSession(s);
  watchCustomers();
}

function dropSession(s, why) {
  if (!state.sessions.delete(s.sessionId)) return;
  state.waitingSince.delete(s.sessionId);
  if (why) notify(why);
  if (state.selected && state.selected.id === s.sessionId) {
    const next = state.sessions.keys().next();
    state.selected = next.done ? null : { kind: 'session', id: next.value };
  }
}

// New messages, each once, in order (the SDK acks them once they are here).
client.on('messages', ({ messages, how }) => {
  for (const m of messages) {
    const s = sessionOfMessage(m);
    if (s && m.fromUser !== me) {
      if (how === 'live' && (!state.selected || state.selected.id !== s.sessionId || document.hidden)) {
        // A message in a session in the background: a sound and a notice.
        attention(t('newMessageFrom', { customer: name(s.customer) }), { kind: 'session', id: s.sessionId }, m.content && m.content.text);
      }
      if (!state.waitingSince.get(s.sessionId)) state.waitingSince.set(s.sessionId, Number(m.serverTimeMs));
    } else if (s && m.fromUser === me) {
      state.waitingSince.set(s.sessionId, 0);
    } else if (!s && m.fromUser !== me && how === 'live') {
      // Outside any session of ours (a follow-up to an answered left
      // message): listed under "Other chats", announced like any message.
      state.handedOver.delete(m.fromUser);
      people.want([m.fromUser]);
      if (!state.selected || state.selected.id !== m.conversationId || document.hidden) {
        attention(t('newMessageFrom', { customer: name(m.fromUser) }), { kind: 'chat', id: m.conversationId }, m.content && m.content.text);
        notify(t('newMessageFrom', { customer: name(m.fromUser) }), 'info');
      }
    }
  }
  // A burst of messages (a backlog, a chatty customer) is drawn once per frame.
  renderSoon();
});
client.on('presence', (p) => {
  state.presence.set(p.user, p);
  renderConversation();
});
client.on('recalled', () => renderAll());

// Customer service: pushes and the answers to our requests alike.
client.on('frame', (f) => {
  if (f.csState) {
    const cs = f.csState;
    state.status = cs.status || 'OFFLINE';
    state.capacity = cs.capacity || 0;
    state.load = cs.load || 0;
    const groups = cs.groups || [];
    if (groups.join() !== state.groups.join()) {
      state.groups = groups;
      loadReplies(); // the replies of the groups joined (e.g. by going online)
    }
    loadManualGroups();
    const open = new Set();
    for (const s of cs.sessions || []) {
      if (s.agent === me && s.state === 'ACTIVE') {
        open.add(s.sessionId);
        // The first state after connecting lists what we had; later ones bring news.
        addSession(s, state.synced);
      }
    }
    state.synced = true;
    for (const s of [...state.sessions.values()]) if (!open.has(s.sessionId)) dropSession(s);
    loadLeftMessages();
  } else if (f.sessionAssigned) {
    const s = f.sessionAssigned.session;
    if (s.agent === me) addSession(s, true);
    else dropSession(s);
    refreshState();
  } else if (f.sessionTransferred) {
    const t = f.sessionTransferred;
    if (t.session.agent === me) addSession(t.session, true);
    else {
      state.handedOver.add(t.session.customer);
      dropSession(t.session);
      const { customer, agent, group } = t.session;
      people.want([customer, agent]).then(() => notify(tr('transferredAway', { customer: name(customer), to: agent ? name(agent) : group, reason: reasonWords(t.reason) })));
    }
    refreshState();
  } else if (f.sessionEnded) {
    const s = f.sessionEnded.session;
    dropSession(s, s.endedBy && s.endedBy !== me ? t('endedBy', { customer: name(s.customer), by: name(s.endedBy) }) : t('ended', { customer: name(s.customer) }));
    refreshState();
    loadRecent();
  } else if (f.leftMessageNotice) {
    let fresh = 0;
    people.want((f.leftMessageNotice.leftMessages || []).map((lm) => lm.customer));
    for (const lm of f.leftMessageNotice.leftMessages || []) {
      if (!state.left.has(lm.id) && !lm.claimedBy) fresh += 1;
      if (!lm.claimedBy || lm.claimedBy === me) state.left.set(lm.id, lm);
      else state.left.delete(lm.id);
    }
    if (fresh) notify(fresh > 1 ? t('newLeftMany', { n: fresh }) : t('newLeftOne'), 'info');
  } else {
    return;
  }
  renderAll();
});

function refreshState() {
  client.csState().catch(() => {});
}

async function loadLeftMessages() {
  for (const g of state.groups) {
    try {
      const r = await api(auth.token, 'GET', `/api/v1/groups/${encodeURIComponent(g)}/left-messages`);
      people.want((r.left_messages || []).map((lm) => lm.customer));
      for (const lm of r.left_messages || []) {
        if (!state.left.has(lm.id)) {
          state.left.set(lm.id, lm);
        }
      }
    } catch (e) {
      if (e.code !== 'FORBIDDEN') notifyError(e);
    }
  }
  renderAll();
}

/** The manual-pick groups among ours, and how many wait in each. */
async function loadManualGroups() {
  if (!state.groups.length) {
    state.manual = [];
    return;
  }
  try {
    const { groups } = await api(auth.token, 'GET', '/api/v1/service-groups');
    state.manual = groups.filter((g) => g.policy === 'manual-pick' && state.groups.includes(g.id));
  } catch (e) {
    notifyError(e);
  }
  renderSide();
}

async function takeNext(group) {
  try {
    await client.acceptSession(group);
  } catch (e) {
    notifyError(e);
  }
  loadManualGroups();
}

async function loadReplies() {
  try {
    state.replies = (await api(auth.token, 'GET', '/api/v1/quick-replies')).quick_replies || [];
  } catch (e) {
    notifyError(e);
  }
  replyPick.replaceChildren(el('option', { value: '' }, state.replies.length ? t('quickRepliesPick') : t('noQuickReplies')),
    ...state.replies.map((r) => el('option', { value: r.id }, `${r.title}${r.group ? ` (${r.group})` : ''}`)));
}

async function saveReply() {
  const text = input.value.trim();
  if (!text) return notify(t('typeReplyFirst'), 'error');
  try {
    await api(auth.token, 'POST', '/api/v1/quick-replies', { title: text.slice(0, 40), text });
    notify(t('savedReply'));
    loadReplies();
  } catch (e) {
    notifyError(e);
  }
}

/** Sends through the SDK's outbox: shown as "sending…" until stored, or failed with why. */
function send(toUser, content) {
  client.send(toUser, content).then((ack) => {
    for (const s of state.sessions.values()) if (s.customer === toUser) state.waitingSince.set(s.sessionId, 0);
    const sel = state.selected;
    if (sel && sel.kind === 'left') {
      const lm = state.left.get(sel.id);
      if (lm) lm.conversationId = ack.conversationId;
    }
    renderAll();
  }, () => renderConversation());
}

async function pageBack() {
  const s = currentSession();
  const ids = s ? convIdsOf(s) : [];
  try {
    for (const c of ids) state.hasMore.set(c, (await client.loadOlder(c, { sessionId: s.sessionId })).hasMore);
  } catch (e) {
    notifyError(e);
  }
  renderConversation();
}

async function transfer(s) {
  const [kind, target] = transferPick.value.split(':');
  if (!target) return notify(t('chooseTarget'), 'error');
  try {
    await client.transferSession(s.sessionId, kind === 'agent' ? { agent: target } : { group: target }, transferNote.value.trim());
    transferNote.value = '';
    transferPick.value = '';
    transferNote.hidden = true;
  } catch (e) {
    notifyError(e);
  }
  loadTargets();
}

/** Whom we can transfer to: the agents free now (with their load) and the groups. */
async function loadTargets() {
  try {
    state.targets = await api(auth.token, 'GET', '/api/v1/transfer-targets');
    people.want(state.targets.agents.map((a) => a.id));
  } catch (e) {
    if (e.code !== 'FORBIDDEN') notifyError(e);
  }
  drawTargets();
}

function drawTargets() {
  const keep = transferPick.value;
  const { agents, groups } = state.targets;
  transferPick.replaceChildren(el('option', { value: '' }, t('pickTarget')),
    el('optgroup', { label: t('agents') }, ...(agents.length ? agents.map((a) => el('option', { value: `agent:${a.id}` },
      t('agentLoad', { name: a.name || name(a.id), load: a.load, capacity: a.capacity }))) : [el('option', { disabled: true, value: '' }, t('nobodyFree'))])),
    el('optgroup', { label: t('groups') }, ...groups.map((g) => el('option', { value: `group:${g.id}` },
      t('groupLine', { name: g.name || g.id, online: g.agents_online, waiting: g.queue_length })))));
  transferPick.value = [...transferPick.options].some((o) => o.value === keep) ? keep : '';
}

/** Our own ended sessions, newest first. */
async function loadRecent() {
  try {
    state.recent = (await api(auth.token, 'GET', `/api/v1/users/${encodeURIComponent(me)}/sessions?limit=10`)).sessions;
    people.want(state.recent.map((s) => s.customer));
  } catch (e) {
    notifyError(e);
  }
  renderSide();
}

// --- the customer panel -------------------------------------------------------------

let panelFor = null; // the customer the panel shows
async function loadPanel(customer, session) {
  if (panelFor === customer && session === panel.ddSession) return;
  panelFor = customer;
  panel.ddSession = session;
  if (!customer) return panel.replaceChildren();
  let profile = { note: '' };
  let past = [];
  try {
    [profile, { sessions: past }] = await Promise.all([
      api(auth.token, 'GET', `/api/v1/customers/${encodeURIComponent(customer)}`),
      api(auth.token, 'GET', `/api/v1/users/${encodeURIComponent(customer)}/sessions?limit=10`),
    ]);
    await people.want([customer, ...past.map((p) => p.agent)]);
  } catch (e) {
    notifyError(e);
  }
  if (panelFor !== customer) return;
  noteBox.value = profile.note || '';
  const noteMeta = el('p', { class: 'muted small', id: 'note-meta' }, profile.note_by ? t('noteBy', { by: name(profile.note_by), when: when(profile.note_ms) }) : '');
  const page = session && session.page ? safeUrl(session.page) : null;
  panel.replaceChildren(
    el('div', { class: 'panel-head' }, el('h3', {}, t('customer')),
      el('button', { class: 'link close-panel', onclick: () => { state.panelOpen = false; renderConversation(); } }, t('closePanel'))),
    el('div', { class: 'who' }, people.avatar(customer, 'large'),
      el('div', {}, el('strong', { id: 'panel-name' }, name(customer)), el('div', { class: 'muted small' }, customer))),
    session && session.page ? el('div', { class: 'small' }, el('span', { class: 'muted' }, `${t('page')}: `),
      page ? el('a', { href: page, target: '_blank', rel: 'noopener noreferrer', id: 'panel-page' }, session.page) : session.page) : '',
    session && session.userAgent ? el('div', { class: 'small', id: 'panel-device' }, el('span', { class: 'muted' }, `${t('device')}: `), deviceOf(session.userAgent)) : '',
    el('label', { for: 'customer-note' }, t('notes')), noteBox, noteMeta,
    el('button', { id: 'save-note', onclick: () => saveNote(customer, noteMeta) }, t('saveNote')),
    el('h3', {}, t('pastSessions')),
    past.length ? el('div', { id: 'panel-past' }, ...past.map((p) => pastItem(p, customer))) : el('p', { class: 'muted small' }, t('noPast')));
}

/** "Chrome on Windows" from a user agent, or the user agent itself. */
function deviceOf(ua) {
  const browser = [['Edg/', 'Edge'], ['Chrome/', 'Chrome'], ['Firefox/', 'Firefox'], ['Safari/', 'Safari']].find(([k]) => ua.includes(k));
  const os = [['Android', 'Android'], ['iPhone', 'iPhone'], ['iPad', 'iPad'], ['Windows', 'Windows'], ['Mac OS', 'macOS'], ['Linux', 'Linux']].find(([k]) => ua.includes(k));
  return el('span', { title: ua, class: 'user-text' }, browser || os ? `${browser ? browser[1] : ''}${browser && os ? ' · ' : ''}${os ? os[1] : ''}` : ua);
}

function pastItem(p, customer) {
  const summary = [t('pastLine', { date: when(p.createdMs), agent: p.agent ? name(p.agent) : '—' }),
    p.score ? ` · ${p.score}★` : '', p.comment ? el('div', { class: 'muted small' }, `“${p.comment}”`) : ''];
  return pastSessionItem(p, summary, client, me, { nameOf: name, mark: handoverMark(customer, handoverWords), onError: notifyError });
}

async function saveNote(customer, meta) {
  try {
    const p = await api(auth.token, 'PUT', `/api/v1/customers/${encodeURIComponent(customer)}/note`, { note: noteBox.value });
    meta.textContent = t('noteBy', { by: name(p.note_by), when: when(p.note_ms) });
    notify(t('noteSaved'));
  } catch (e) {
    notifyError(e);
  }
}

const handoverWords = (from, to) => t('handover', { from: name(from), to: name(to) });

// --- alerts ---------------------------------------------------------------------

let audio = null;
/** A short two-tone chime (no sound file to load), and a desktop notification opening `selection`. */
function attention(title, selection, body) {
  if (soundOn.checked) {
    try {
      audio = audio || new AudioContext();
      const now = audio.currentTime;
      for (const [i, f] of [880, 1320].entries()) {
        const o = audio.createOscillator();
        const g = audio.createGain();
        o.frequency.value = f;
        g.gain.setValueAtTime(0.0001, now + i * 0.12);
        g.gain.exponentialRampToValueAtTime(0.15, now + i * 0.12 + 0.02);
        g.gain.exponentialRampToValueAtTime(0.0001, now + i * 0.12 + 0.25);
        o.connect(g).connect(audio.destination);
        o.start(now + i * 0.12);
        o.stop(now + i * 0.12 + 0.3);
      }
      document.body.dataset.chimes = String(Number(document.body.dataset.chimes || 0) + 1);
    } catch {
      // No audio device: the notice and the title still tell.
    }
  }
  if (notifyOn.checked && 'Notification' in window && Notification.permission === 'granted' && (document.hidden || !document.hasFocus())) {
    const n = new Notification(title, { body: body ? body.slice(0, 120) : '', tag: selection.id });
    n.onclick = () => {
      window.focus();
      state.selected = selection;
      renderAll();
      n.close();
    };
  }
}

/** End session, in two steps (the question survives redraws). */
function endButton(s) {
  return twoStepButton(`end:${s.sessionId}`, t('endSession'), t('endConfirm'), () => endSession(s), { id: 'end' }, renderConversation);
}

async function endSession(s) {
  const fromKeyboard = document.activeElement && document.activeElement.id === 'end';
  try {
    await client.endSession(s.sessionId);
    // Not onto the next session's End button: to the list.
    if (fromKeyboard) focusFallback().focus();
  } catch (e) {
    notifyError(e);
  }
}

async function claim(lm) {
  try {
    const notice = await client.claimLeftMessage(lm.id);
    for (const x of notice.leftMessages || []) state.left.set(x.id, x);
    state.selected = { kind: 'left', id: lm.id };
    // Our conversation with the customer, if we have one: its newest page.
    const conversationId = await client.open(lm.customer);
    const x = state.left.get(lm.id);
    if (x && conversationId) x.conversationId = conversationId;
  } catch (e) {
    notifyError(e);
  }
  renderAll();
}

// --- drawing ----------------------------------------------------------------------

/** Where the focus goes when what had it is gone (a session ended, transferred). */
const focusFallback = () => document.querySelector('#sessions button.item, #chats button.item') || statusSel;

// Redraws keep the keyboard focus where it was (ui.js keepFocus).
function renderSide() {
  keepFocus(drawSide, focusFallback);
}

function renderConversation() {
  keepFocus(drawConversation, focusFallback);
}

function drawSide() {
  statusSel.value = state.wanted || state.status;
  statusSel.dataset.status = state.status;
  loadLine.textContent = ` ${state.load}/${state.capacity} · ${state.groups.join(', ') || t('noGroup')}`;
  const now = Date.now();
  sessionList.replaceChildren(...[...state.sessions.values()].map((s) => {
    const unread = unreadOf(s);
    const since = state.waitingSince.get(s.sessionId);
    const selected = state.selected && state.selected.id === s.sessionId;
    return el('li', {}, el('button', {
      class: `item${selected ? ' selected' : ''}`,
      'data-session-id': s.sessionId,
      'data-customer': s.customer,
      'aria-current': selected ? 'true' : undefined,
      onclick: () => {
        state.selected = { kind: 'session', id: s.sessionId };
        hideTyping();
        renderAll();
        input.focus();
      },
    },
    people.avatar(s.customer), ' ', el('strong', {}, name(s.customer)), ' ', el('span', { class: 'muted' }, s.group),
    unread ? el('span', { class: 'badge unread', 'data-unread': String(unread) }, String(unread)) : '',
    el('div', { class: 'muted small' }, since ? t('waitingFor', { wait: duration(now - since) }) : t('answered'))));
  }));
  if (!state.sessions.size) sessionList.replaceChildren(el('li', { class: 'muted empty' }, state.status === 'ONLINE' ? t('noCustomers') : t('goOnline')));
  pickBox.replaceChildren(...state.manual.map((g) => el('div', { class: 'pick-row' },
    el('span', {}, `${g.name || g.id}: `, el('strong', { 'data-waiting': g.id }, String(g.queue_length)), t('waitingSuffix')),
    el('button', {
      class: 'primary', 'data-take': g.id, disabled: !g.queue_length || state.status !== 'ONLINE',
      onclick: () => takeNext(g.id),
    }, t('takeNext')))));
  recentList.replaceChildren(...(state.recent.length ? state.recent.map((p) => {
    const selected = state.selected && state.selected.kind === 'past' && state.selected.id === p.sessionId;
    return el('li', {}, el('button', {
      class: `item${selected ? ' selected' : ''}`, 'data-past-id': p.sessionId, 'aria-current': selected ? 'true' : undefined,
      onclick: () => { state.selected = { kind: 'past', id: p.sessionId }; renderAll(); },
    }, t('endedLine', { customer: name(p.customer), date: when(p.endedMs) }), p.score ? ` · ${p.score}★` : ''));
  }) : [el('li', { class: 'muted empty' }, t('noRecent'))]));
  const left = [...state.left.values()];
  const open = left.filter((lm) => !lm.claimedBy).length;
  leftCount.textContent = open ? String(open) : '';
  leftList.replaceChildren(...left.map((lm) => el('li', { 'data-left-id': lm.id },
    el('div', {}, el('strong', {}, name(lm.customer)), ' ', el('span', { class: 'muted' }, `${lm.group} · ${clock(lm.createdMs)}`)),
    el('div', { class: 'small' }, contentNode(lm.content)),
    lm.contact ? el('div', { class: 'small' }, contactNode(lm.contact)) : '',
    lm.claimedBy ? el('button', { class: 'link', onclick: () => { state.selected = { kind: 'left', id: lm.id }; renderAll(); } }, t('answer'))
      : el('button', { class: 'link claim', onclick: () => claim(lm) }, t('claim')))));
  const shown = chats();
  state.chatsShown = shown; // for the title (renderAll) without a second pass
  chatList.replaceChildren(...(shown.length ? shown.map((c) => {
    const selected = state.selected && state.selected.kind === 'chat' && state.selected.id === c.conversationId;
    const unread = Number(c.unread || 0);
    return el('li', {}, el('button', {
      class: `item${selected ? ' selected' : ''}`, 'data-chat-id': c.conversationId, 'data-peer': c.peer,
      'aria-current': selected ? 'true' : undefined,
      onclick: () => {
        state.selected = { kind: 'chat', id: c.conversationId };
        hideTyping();
        renderAll();
        input.focus();
      },
    }, people.avatar(c.peer), ' ', el('strong', {}, name(c.peer)),
    unread ? el('span', { class: 'badge unread', 'data-unread': String(unread) }, String(unread)) : '',
    el('div', { class: 'muted small' }, when(c.lastMessage.serverTimeMs))));
  }) : [el('li', { class: 'muted empty' }, t('noChats'))]));
}

function drawConversation() {
  const sel = state.selected;
  const chat = currentChat();
  const s = currentSession();
  const past = sel && sel.kind === 'past' ? state.recent.find((p) => p.sessionId === sel.id) : null;
  panel.classList.toggle('open', state.panelOpen);
  const panelButton = () => el('button', { class: 'link show-panel', id: 'show-panel', 'aria-expanded': String(state.panelOpen),
    onclick: () => { state.panelOpen = !state.panelOpen; renderConversation(); } }, t('showCustomer'));
  if (s) {
    if (!state.targets.groups.length) loadTargets();
    convHead.replaceChildren(
      el('div', { class: 'who' }, people.avatar(s.customer),
        el('div', {}, el('strong', { id: 'conv-customer' }, name(s.customer)), ' ', presenceNode(s.customer), ' ',
          el('span', { class: 'muted' }, t('groupSince', { group: s.group, since: clock(s.assignedMs || s.createdMs) })),
          (s.previousAgents || []).length ? el('span', { class: 'muted' }, t('before', { agents: s.previousAgents.map(name).join(', ') })) : '',
          s.transferNote ? el('div', { class: 'transfer-note small', id: 'transfer-note-shown' },
            t('transferNoteIs', { from: name((s.previousAgents || []).slice(-1)[0] || ''), note: s.transferNote })) : '')),
      el('div', { class: 'actions' },
        el('span', {}, t('transferToLabel')), transferPick, transferNote,
        el('button', { id: 'transfer', onclick: () => transfer(s) }, t('transfer')),
        endButton(s),
        panelButton()));
    const ids = convIdsOf(s);
    // A conversation is per customer and agent: only this session's part.
    const since = Number(s.createdMs || 0) - 1000;
    const entries = entriesOf(client, ids, s.customer).filter((e) => e.state !== 'stored' || Number(e.message.serverTimeMs) >= since);
    drawMessages(list, entries, me, {
      onRetry: retry, nameOf: name, mark: handoverMark(s.customer, handoverWords),
      peerRead: (c) => client.peerReadSeq(c), ...recall,
    });
    // On screen: read (what is shown, up to the newest).
    const newest = s.conversationId ? client.newestSeq(s.conversationId) : 0;
    if (!document.hidden && newest) client.markRead(s.conversationId, newest);
    older.hidden = !ids.some((c) => state.hasMore.get(c) !== false && client.oldestSeq(c) > 1);
    composer.hidden = false;
    loadPanel(s.customer, s);
  } else if (past) {
    convHead.replaceChildren(
      el('div', { class: 'who' }, people.avatar(past.customer),
        el('div', {}, el('strong', { id: 'conv-customer' }, name(past.customer)), ' ',
          el('span', { class: 'muted' }, `${past.group} · ${when(past.createdMs)}`), el('div', { class: 'muted small' }, t('readOnly')))),
      el('div', { class: 'actions' }, panelButton()));
    if (list.ddPast !== past.sessionId) {
      list.ddPast = past.sessionId;
      // Its own box: a later redraw of the list leaves a late transcript out.
      const box = el('div', { class: 'transcript-pane' });
      list.replaceChildren(box);
      drawTranscript(box, client, past, me, { nameOf: name, mark: handoverMark(past.customer, handoverWords) }).catch(notifyError);
    }
    older.hidden = true;
    composer.hidden = true;
    loadPanel(past.customer, past);
  } else if (sel && sel.kind === 'left' && state.left.get(sel.id)) {
    const lm = state.left.get(sel.id);
    convHead.replaceChildren(el('div', {}, t('answeringLeftBy'), el('strong', {}, name(lm.customer)), ' ', el('span', { class: 'muted' }, lm.group),
      lm.contact ? el('div', { class: 'small', id: 'left-contact' }, contactNode(lm.contact)) : ''),
      el('blockquote', {}, contentNode(lm.content)), panelButton());
    drawMessages(list, entriesOf(client, lm.conversationId ? [lm.conversationId] : [], lm.customer), me, { onRetry: retry, nameOf: name });
    const newest = lm.conversationId ? client.newestSeq(lm.conversationId) : 0;
    if (!document.hidden && newest) client.markRead(lm.conversationId, newest);
    older.hidden = true;
    composer.hidden = lm.claimedBy !== me;
    loadPanel(lm.customer, null);
  } else if (chat) {
    const c = chat;
    convHead.replaceChildren(
      el('div', { class: 'who' }, people.avatar(c.peer),
        el('div', {}, el('strong', { id: 'conv-customer' }, name(c.peer)), ' ', presenceNode(c.peer),
          el('div', { class: 'muted small' }, t('outsideSession')))),
      el('div', { class: 'actions' }, panelButton()));
    // Its recent history, once (a live message alone starts no history).
    if (!state.loading.has(c.conversationId)) {
      state.loading.add(c.conversationId);
      client.catchUp(c.conversationId).then(() => renderAll(), (e) => { state.loading.delete(c.conversationId); notifyError(e); });
    }
    drawMessages(list, entriesOf(client, [c.conversationId], c.peer), me, {
      onRetry: retry, nameOf: name, peerRead: (id) => client.peerReadSeq(id), ...recall,
    });
    const newest = client.newestSeq(c.conversationId);
    if (!document.hidden && newest) client.markRead(c.conversationId, newest);
    older.hidden = true;
    composer.hidden = false;
    loadPanel(c.peer, null);
  } else {
    convHead.replaceChildren(el('p', { class: 'muted' }, t('pickSession')));
    list.replaceChildren();
    older.hidden = true;
    composer.hidden = true;
    loadPanel(null, null);
  }
  if (!past) list.ddPast = null;
}

/** Messages of the session's customer above our read pointer. */
function unreadOf(s) {
  const c = s.conversationId;
  if (!c) return 0;
  const read = client.readSeq(c);
  const since = Number(s.createdMs || 0) - 1000;
  let n = 0;
  for (const m of client.messages(c)) if (m.fromUser !== me && Number(m.seq) > read && Number(m.serverTimeMs) >= since) n += 1;
  return n;
}

/**
 * The contact a customer left, as a way to reach her: a phone number to
 * call (tel:), an address to write to (mailto:), or the text as given.
 */
function contactNode(contact) {
  const phone = /^\+?[\d\s()-]{5,}$/.test(contact) ? `tel:${contact.replace(/[^\d+]/g, '')}` : null;
  const mail = /^[^\s@]+@[^\s@]+\.[^\s@]+$/.test(contact) ? `mailto:${contact}` : null;
  const href = phone || mail;
  return el('span', {}, t(phone ? 'callBack' : mail ? 'writeBack' : 'contactIs', { contact }),
    href ? el('a', { href, class: 'contact-link', 'data-contact': contact }, contact) : '');
}

/** Whether the customer is online, or since when they are gone. */
function presenceNode(user) {
  const p = state.presence.get(user);
  if (!p) return '';
  const text = p.online ? t('isOnline') : Number(p.lastSeenMs || 0) ? t('lastSeen', { when: clock(p.lastSeenMs) }) : t('isOffline');
  return el('span', { id: 'customer-presence', class: `presence ${p.online ? 'on' : 'off'} small`, 'data-online': String(!!p.online) }, text);
}

function retry(m) {
  client.retry(m.clientMsgId).then(() => renderAll(), notifyError);
}

let renderQueued = false;
/** renderAll at the next frame (once, however often asked before it). */
function renderSoon() {
  if (renderQueued) return;
  renderQueued = true;
  const run = () => { renderQueued = false; renderAll(); };
  // A hidden tab gets no frames; its title still counts what came.
  if (document.hidden) setTimeout(run, 0);
  else requestAnimationFrame(run);
}

function renderAll() {
  renderSide();
  renderConversation();
  const unread = [...state.sessions.values()].reduce((n, s) => n + unreadOf(s), 0)
    + state.chatsShown.reduce((n, c) => n + Number(c.unread || 0), 0);
  if (!flashing) document.title = `${unread ? `(${unread}) ` : ''}${t('title')} · dongdong`;
}

let flashing = null;
function flashTitle(text) {
  clearInterval(flashing);
  let on = true;
  flashing = setInterval(() => {
    document.title = on ? text : `${t('title')} · dongdong`;
    on = !on;
  }, 1000);
  const stop = () => {
    clearInterval(flashing);
    flashing = null;
    renderAll();
  };
  setTimeout(stop, 10000);
  window.addEventListener('focus', stop, { once: true });
}

setInterval(renderSide, 5000); // waiting times move on
// Who waits in manual-pick groups: no push tells agents, so look every 3 s.
setInterval(() => { if (state.manual.length && client.state === 'open') loadManualGroups(); }, 3000);

client.on('ready', () => {
  state.synced = false;
  refreshState();
  applyStatus();
  loadReplies();
  loadRecent();
});
connectionBanner(client, (status) => {
  if (status === 'signed-out') signOut('agent');
});
client.connect();
renderAll();
