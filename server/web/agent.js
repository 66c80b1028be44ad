// The agent workspace (/agent): status, current sessions with unread counts
// and waiting times, the conversation (with earlier agents' part after a
// transfer, history paging), sending text and image links, quick replies,
// transfer, end, and the left-messages inbox.

import { Client, MessageStore, api, wsUrl, deviceIdFor, catchUp, loadOlder, sendTracked } from './dd.js';
import { translator, languagePicker } from './i18n.js';
import { el, $, duration, clock, notify, notifyError, connectionBanner, signIn, signOut, drawMessages, contentFromInput, contentNode, enterSubmits } from './ui.js';

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
    transferPlaceholder: 'agent or group id', transferTo: 'transfer to', transferKind: 'transfer to an agent or a group',
    agent: 'agent', group: 'group',
    badImageLink: 'An image link must be an http(s) address.',
    newCustomerIn: 'New customer: {customer} ({group})', newCustomer: 'New customer: {customer}',
    transferredAway: '{customer} was transferred to {to} ({reason}).',
    ended: 'The session with {customer} ended.', endedBy: 'The session with {customer} ended (by {by}).',
    newLeftOne: '1 new left message', newLeftMany: '{n} new left messages',
    quickRepliesPick: 'Quick replies…', noQuickReplies: 'No quick replies yet',
    typeReplyFirst: 'Type the reply first, then save it.', savedReply: 'Saved as a personal quick reply.',
    nameAgent: 'Name the agent to transfer to.', nameGroup: 'Name the group to transfer to.',
    noGroup: 'no group yet', waitingFor: 'waiting {wait}', answered: 'answered',
    noCustomers: 'No customers yet: new ones appear here.', goOnline: 'Go online to get customers.',
    waitingSuffix: ' waiting', takeNext: 'Take next', contactIs: 'contact: {contact}',
    answer: 'Answer', claim: 'Claim and answer',
    groupSince: '{group} · since {since}', before: ' · before: {agents}',
    transferToLabel: 'Transfer to ', transfer: 'Transfer', endSession: 'End session',
    answeringLeftBy: 'Answering the message left by ', pickSession: 'Pick a session on the left.',
  },
  'zh-CN': {
    title: '客服工作台', signOut: '退出',
    customerToken: '这是顾客的登录凭证：工作台需要客服角色。',
    online: '● 在线', away: '◐ 忙碌', offline: '○ 离线', status: '状态', statusLabel: '状态 ',
    sessions: '会话', leftMessages: '留言', leftMessagesTitle: '留言 ',
    earlier: '更早的消息', conversation: '对话',
    typeMessage: '输入消息，Enter 发送，Shift+Enter 换行', chatMessage: '聊天消息',
    quickReplies: '快捷回复', imageLink: ' 图片链接', saveReply: '存为快捷回复', send: '发送',
    transferPlaceholder: '客服或客服组 ID', transferTo: '转接给', transferKind: '转接给客服或客服组',
    agent: '客服', group: '客服组',
    badImageLink: '图片链接必须是 http(s) 地址。',
    newCustomerIn: '新顾客：{customer}（{group}）', newCustomer: '新顾客：{customer}',
    transferredAway: '{customer} 已转接给 {to}（{reason}）。',
    ended: '与 {customer} 的会话已结束。', endedBy: '与 {customer} 的会话已结束（由 {by} 结束）。',
    newLeftOne: '1 条新留言', newLeftMany: '{n} 条新留言',
    quickRepliesPick: '快捷回复…', noQuickReplies: '还没有快捷回复',
    typeReplyFirst: '请先输入回复内容，再保存。', savedReply: '已存为个人快捷回复。',
    nameAgent: '请填写要转接的客服。', nameGroup: '请填写要转接的客服组。',
    noGroup: '尚未加入客服组', waitingFor: '已等待 {wait}', answered: '已回复',
    noCustomers: '暂无顾客：新顾客会出现在这里。', goOnline: '设为在线即可接待顾客。',
    waitingSuffix: ' 人等待', takeNext: '接待下一位', contactIs: '联系方式：{contact}',
    answer: '回复', claim: '认领并回复',
    groupSince: '{group} · 开始于 {since}', before: ' · 之前：{agents}',
    transferToLabel: '转接给 ', transfer: '转接', endSession: '结束会话',
    answeringLeftBy: '正在回复留言，留言人 ', pickSession: '请在左侧选择一个会话。',
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
$('#who').textContent = `${me} · ${auth.claims.tenant}`;
$('#signout').hidden = false;
$('#signout').onclick = () => signOut('agent');
if (auth.claims.role === 'customer') notify(t('customerToken'), 'error', 0);

const client = new Client({ url: wsUrl(auth.info), token: auth.token, deviceId: deviceIdFor(auth.claims.tenant, me, 'console') });
const store = new MessageStore();

const state = {
  status: 'OFFLINE',
  capacity: 0,
  load: 0,
  groups: [],
  sessions: new Map(), // sessionId -> ServiceSession (ours, open)
  unread: new Map(), // sessionId -> count
  waitingSince: new Map(), // sessionId -> ms of the oldest customer message not yet answered
  selected: null, // { kind: 'session', id } | { kind: 'left', id }
  left: new Map(), // left message id -> LeftMessageInfo (unclaimed, or claimed by us)
  hasMore: new Map(),
  replies: [],
  synced: false, // a CsState arrived since the last (re)connect
  manual: [], // our manual-pick groups: { id, name, queue_length }
};

// --- layout ---------------------------------------------------------------------

const statusSel = el('select', { id: 'status', 'aria-label': t('status') },
  el('option', { value: 'ONLINE' }, t('online')), el('option', { value: 'AWAY' }, t('away')), el('option', { value: 'OFFLINE' }, t('offline')));
const loadLine = el('span', { id: 'load', class: 'muted' });
const pickBox = el('div', { id: 'manual-pick' });
const sessionList = el('ul', { id: 'sessions', class: 'list', 'aria-label': t('sessions') });
const leftList = el('ul', { id: 'left-messages', class: 'list', 'aria-label': t('leftMessages') });
const leftCount = el('span', { id: 'left-count', class: 'badge' });
const convHead = el('div', { id: 'conv-head', class: 'conv-head' });
const older = el('button', { class: 'link', id: 'older', hidden: true, onclick: pageBack }, t('earlier'));
// Focusable, so that keyboard users can scroll it.
const list = el('div', { id: 'messages', class: 'messages', 'aria-live': 'polite', tabIndex: 0, role: 'log', 'aria-label': t('conversation') });
const input = el('textarea', { id: 'input', rows: 2, placeholder: t('typeMessage'), maxLength: 4000, 'aria-label': t('chatMessage') });
const asImage = el('input', { type: 'checkbox', id: 'as-image' });
const replyPick = el('select', { id: 'quick-replies', 'aria-label': t('quickReplies') });
const composer = el('form', { id: 'composer', class: 'composer' },
  input,
  el('div', { class: 'tools' },
    replyPick,
    el('label', { class: 'inline' }, asImage, t('imageLink')),
    el('button', { type: 'button', class: 'link', id: 'save-reply', onclick: saveReply }, t('saveReply')),
    el('button', { type: 'submit', class: 'primary', id: 'send' }, t('send'))));
// Kept across redraws, so that a message arriving does not clear what is typed.
const transferTarget = el('input', { id: 'transfer-target', placeholder: t('transferPlaceholder'), size: 14, 'aria-label': t('transferTo') });
const transferKind = el('select', { id: 'transfer-kind', 'aria-label': t('transferKind') },
  el('option', { value: 'agent' }, t('agent')), el('option', { value: 'group' }, t('group')));
const pane = el('section', { class: 'pane', id: 'pane' }, convHead, older, list, composer);

main.replaceChildren(el('div', { class: 'workspace' },
  el('aside', { class: 'side' },
    el('div', { class: 'statusbar' }, el('label', { for: 'status' }, t('statusLabel')), statusSel, loadLine),
    el('h3', {}, t('sessions')), sessionList,
    pickBox,
    el('h3', {}, t('leftMessagesTitle'), leftCount), leftList),
  pane));

statusSel.addEventListener('change', async () => {
  try {
    await client.request({ setStatus: { status: statusSel.value } });
  } catch (e) {
    notifyError(e);
    statusSel.value = state.status;
  }
});

enterSubmits(input, composer);
composer.addEventListener('submit', (ev) => {
  ev.preventDefault();
  const peer = currentPeer();
  if (!peer || !input.value.trim()) return;
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

function currentPeer() {
  if (!state.selected) return null;
  if (state.selected.kind === 'session') return currentSession() ? currentSession().customer : null;
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
  await Promise.all(convIdsOf(s).map((c) => catchUp(client, store, c, s.sessionId).catch((e) => notifyError(e))));
  renderAll();
}

function addSession(s, announce) {
  const known = state.sessions.has(s.sessionId);
  state.sessions.set(s.sessionId, s);
  if (!known) {
    state.waitingSince.set(s.sessionId, Number(s.assignedMs || s.createdMs || Date.now()));
    if (announce) {
      notify(t('newCustomerIn', { customer: s.customer, group: s.group }), 'assign', 8000);
      flashTitle(t('newCustomer', { customer: s.customer }));
    }
    if (!state.selected) state.selected = { kind: 'session', id: s.sessionId };
  }
  fillSession(s);
}

function dropSession(s, why) {
  if (!state.sessions.delete(s.sessionId)) return;
  state.unread.delete(s.sessionId);
  state.waitingSince.delete(s.sessionId);
  if (why) notify(why);
  if (state.selected && state.selected.id === s.sessionId) {
    const next = state.sessions.keys().next();
    state.selected = next.done ? null : { kind: 'session', id: next.value };
  }
}

client.addEventListener('frame', (ev) => {
  const f = ev.detail;
  if (f.deliver) {
    const m = f.deliver.message;
    if (!store.add(m)) return;
    const s = sessionOfMessage(m);
    if (s && m.fromUser !== me) {
      if (!state.selected || state.selected.id !== s.sessionId || document.hidden) {
        state.unread.set(s.sessionId, (state.unread.get(s.sessionId) || 0) + 1);
      }
      if (!state.waitingSince.get(s.sessionId)) state.waitingSince.set(s.sessionId, Number(m.serverTimeMs));
    } else if (s && m.fromUser === me) {
      state.waitingSince.set(s.sessionId, 0);
    }
    renderAll();
    return;
  }
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
    else dropSession(t.session, tr('transferredAway', { customer: t.session.customer, to: t.session.agent || t.session.group, reason: t.reason }));
    refreshState();
  } else if (f.sessionEnded) {
    const s = f.sessionEnded.session;
    dropSession(s, s.endedBy && s.endedBy !== me ? t('endedBy', { customer: s.customer, by: s.endedBy }) : t('ended', { customer: s.customer }));
    refreshState();
  } else if (f.leftMessageNotice) {
    let fresh = 0;
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
  client.request({ csStateRequest: {} }).catch(() => {});
}

async function loadLeftMessages() {
  for (const g of state.groups) {
    try {
      const r = await api(auth.token, 'GET', `/api/v1/groups/${encodeURIComponent(g)}/left-messages`);
      for (const lm of r.left_messages || []) {
        if (!state.left.has(lm.id)) {
          state.left.set(lm.id, { id: lm.id, group: lm.group, customer: lm.customer, content: lm.content, contact: lm.contact, createdMs: String(lm.created_ms), claimedBy: lm.claimed_by });
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
    await client.request({ acceptSession: { group } });
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

function send(toUser, content) {
  sendTracked(client, store, me, toUser, content, renderConversation).then((ack) => {
    if (!ack) return;
    for (const s of state.sessions.values()) if (s.customer === toUser) state.waitingSince.set(s.sessionId, 0);
    const sel = state.selected;
    if (sel && sel.kind === 'left') {
      const lm = state.left.get(sel.id);
      if (lm) lm.conversationId = ack.conversationId;
    }
    renderAll();
  });
}

async function pageBack() {
  const s = currentSession();
  const ids = s ? convIdsOf(s) : [];
  try {
    for (const c of ids) state.hasMore.set(c, (await loadOlder(client, store, c, s.sessionId)).hasMore);
  } catch (e) {
    notifyError(e);
  }
  renderConversation();
}

async function transfer(s, kind, target) {
  if (!target) return notify(kind === 'agent' ? t('nameAgent') : t('nameGroup'), 'error');
  const body = { sessionId: s.sessionId };
  body[kind === 'agent' ? 'toAgent' : 'toGroup'] = target;
  try {
    await client.request({ transferSession: body });
  } catch (e) {
    notifyError(e);
  }
}

async function endSession(s) {
  try {
    await client.request({ endSession: { sessionId: s.sessionId } });
  } catch (e) {
    notifyError(e);
  }
}

async function claim(lm) {
  try {
    const f = await client.request({ claimLeftMessage: { leftMessageId: lm.id } });
    for (const x of (f.leftMessageNotice && f.leftMessageNotice.leftMessages) || []) state.left.set(x.id, x);
    state.selected = { kind: 'left', id: lm.id };
    const r = await client.request({ syncRequest: { withUser: lm.customer, beforeSeq: '18446744073709551615', limit: 50 } });
    for (const m of r.historyPage.messages || []) store.add(m);
    const x = state.left.get(lm.id);
    if (x && r.historyPage.conversationId) x.conversationId = r.historyPage.conversationId;
  } catch (e) {
    notifyError(e);
  }
  renderAll();
}

// --- drawing ----------------------------------------------------------------------

function renderSide() {
  statusSel.value = state.status;
  statusSel.dataset.status = state.status;
  loadLine.textContent = ` ${state.load}/${state.capacity} · ${state.groups.join(', ') || t('noGroup')}`;
  const now = Date.now();
  sessionList.replaceChildren(...[...state.sessions.values()].map((s) => {
    const unread = state.unread.get(s.sessionId) || 0;
    const since = state.waitingSince.get(s.sessionId);
    const selected = state.selected && state.selected.id === s.sessionId;
    return el('li', {}, el('button', {
      class: `item${selected ? ' selected' : ''}`,
      'data-session-id': s.sessionId,
      'data-customer': s.customer,
      'aria-current': selected ? 'true' : undefined,
      onclick: () => {
        state.selected = { kind: 'session', id: s.sessionId };
        state.unread.delete(s.sessionId);
        renderAll();
        input.focus();
      },
    },
    el('strong', {}, s.customer), ' ', el('span', { class: 'muted' }, s.group),
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
  const left = [...state.left.values()];
  const open = left.filter((lm) => !lm.claimedBy).length;
  leftCount.textContent = open ? String(open) : '';
  leftList.replaceChildren(...left.map((lm) => el('li', { 'data-left-id': lm.id },
    el('div', {}, el('strong', {}, lm.customer), ' ', el('span', { class: 'muted' }, `${lm.group} · ${clock(lm.createdMs)}`)),
    el('div', { class: 'small' }, contentNode(lm.content)),
    lm.contact ? el('div', { class: 'muted small' }, t('contactIs', { contact: lm.contact })) : '',
    lm.claimedBy ? el('button', { class: 'link', onclick: () => { state.selected = { kind: 'left', id: lm.id }; renderAll(); } }, t('answer'))
      : el('button', { class: 'link claim', onclick: () => claim(lm) }, t('claim')))));
}

function renderConversation() {
  const sel = state.selected;
  const s = currentSession();
  if (s) {
    const agentInput = transferTarget;
    const kind = transferKind;
    convHead.replaceChildren(
      el('div', {}, el('strong', { id: 'conv-customer' }, s.customer), ' ', el('span', { class: 'muted' }, t('groupSince', { group: s.group, since: clock(s.assignedMs || s.createdMs) })),
        (s.previousAgents || []).length ? el('span', { class: 'muted' }, t('before', { agents: s.previousAgents.join(', ') })) : ''),
      el('div', { class: 'actions' },
        el('span', {}, t('transferToLabel')), kind, agentInput,
        el('button', { id: 'transfer', onclick: () => transfer(s, kind.value, agentInput.value.trim()) }, t('transfer')),
        el('button', { id: 'end', class: 'danger', onclick: () => endSession(s) }, t('endSession'))));
    const ids = convIdsOf(s);
    drawMessages(list, store.list(ids, s.customer), me, { onRetry: retry });
    older.hidden = !ids.some((c) => state.hasMore.get(c) !== false && store.oldestSeq(c) > 1);
    composer.hidden = false;
  } else if (sel && sel.kind === 'left' && state.left.get(sel.id)) {
    const lm = state.left.get(sel.id);
    convHead.replaceChildren(el('div', {}, t('answeringLeftBy'), el('strong', {}, lm.customer), ' ', el('span', { class: 'muted' }, lm.group)),
      el('blockquote', {}, contentNode(lm.content)));
    drawMessages(list, store.list(lm.conversationId ? [lm.conversationId] : [], lm.customer), me, { onRetry: retry });
    older.hidden = true;
    composer.hidden = lm.claimedBy !== me;
  } else {
    convHead.replaceChildren(el('p', { class: 'muted' }, t('pickSession')));
    list.replaceChildren();
    older.hidden = true;
    composer.hidden = true;
  }
}

function retry(m) {
  store.local.delete(m.clientMsgId);
  send(m.toUser, m.content);
}

function renderAll() {
  renderSide();
  renderConversation();
  const unread = [...state.unread.values()].reduce((a, b) => a + b, 0);
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
setInterval(() => { if (state.manual.length && client.authed) loadManualGroups(); }, 3000);

client.addEventListener('ready', () => {
  state.synced = false;
  refreshState();
  loadReplies();
});
connectionBanner(client, (status) => {
  if (status === 'signed-out') signOut('agent');
});
client.start();
renderAll();
