// The agent workspace (/agent): status, current sessions with unread counts
// and waiting times, the conversation (with earlier agents' part after a
// transfer, history paging), sending text and image links, quick replies,
// transfer, end, and the left-messages inbox.

import { Client, MessageStore, api, wsUrl, deviceIdFor, catchUp, loadOlder, sendTracked } from './dd.js';
import { el, $, duration, clock, notify, notifyError, connectionBanner, signIn, signOut, drawMessages, contentFromInput, contentNode, enterSubmits } from './ui.js';

const main = $('#main');
const auth = await signIn('agent', 'agent', main);
const me = auth.claims.sub;
$('#who').textContent = `${me} · ${auth.claims.tenant}`;
$('#signout').hidden = false;
$('#signout').onclick = () => signOut('agent');
if (auth.claims.role === 'customer') notify('This token is a customer\'s: the workspace needs the agent role.', 'error', 0);

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

const statusSel = el('select', { id: 'status', 'aria-label': 'status' },
  el('option', { value: 'ONLINE' }, '● Online'), el('option', { value: 'AWAY' }, '◐ Away'), el('option', { value: 'OFFLINE' }, '○ Offline'));
const loadLine = el('span', { id: 'load', class: 'muted' });
const pickBox = el('div', { id: 'manual-pick' });
const sessionList = el('ul', { id: 'sessions', class: 'list', 'aria-label': 'sessions' });
const leftList = el('ul', { id: 'left-messages', class: 'list', 'aria-label': 'left messages' });
const leftCount = el('span', { id: 'left-count', class: 'badge' });
const convHead = el('div', { id: 'conv-head', class: 'conv-head' });
const older = el('button', { class: 'link', id: 'older', hidden: true, onclick: pageBack }, 'Earlier messages');
// Focusable, so that keyboard users can scroll it.
const list = el('div', { id: 'messages', class: 'messages', 'aria-live': 'polite', tabIndex: 0, role: 'log', 'aria-label': 'conversation' });
const input = el('textarea', { id: 'input', rows: 2, placeholder: 'Type a message, Enter to send, Shift+Enter for a new line', maxLength: 4000, 'aria-label': 'chat message' });
const asImage = el('input', { type: 'checkbox', id: 'as-image' });
const replyPick = el('select', { id: 'quick-replies', 'aria-label': 'quick replies' });
const composer = el('form', { id: 'composer', class: 'composer' },
  input,
  el('div', { class: 'tools' },
    replyPick,
    el('label', { class: 'inline' }, asImage, ' image link'),
    el('button', { type: 'button', class: 'link', id: 'save-reply', onclick: saveReply }, 'Save as quick reply'),
    el('button', { type: 'submit', class: 'primary', id: 'send' }, 'Send')));
// Kept across redraws, so that a message arriving does not clear what is typed.
const transferTarget = el('input', { id: 'transfer-target', placeholder: 'agent or group id', size: 14, 'aria-label': 'transfer to' });
const transferKind = el('select', { id: 'transfer-kind', 'aria-label': 'transfer to an agent or a group' },
  el('option', { value: 'agent' }, 'agent'), el('option', { value: 'group' }, 'group'));
const pane = el('section', { class: 'pane', id: 'pane' }, convHead, older, list, composer);

main.replaceChildren(el('div', { class: 'workspace' },
  el('aside', { class: 'side' },
    el('div', { class: 'statusbar' }, el('label', { for: 'status' }, 'Status '), statusSel, loadLine),
    el('h3', {}, 'Sessions'), sessionList,
    pickBox,
    el('h3', {}, 'Left messages ', leftCount), leftList),
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
  if (!content) return notify('An image link must be an http(s) address.', 'error');
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
      notify(`New customer: ${s.customer} (${s.group})`, 'assign', 8000);
      flashTitle(`New customer: ${s.customer}`);
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
    else dropSession(t.session, `${t.session.customer} was transferred${t.session.agent ? ` to ${t.session.agent}` : ` to ${t.session.group}`} (${t.reason}).`);
    refreshState();
  } else if (f.sessionEnded) {
    const s = f.sessionEnded.session;
    dropSession(s, `The session with ${s.customer} ended${s.endedBy && s.endedBy !== me ? ` (by ${s.endedBy})` : ''}.`);
    refreshState();
  } else if (f.leftMessageNotice) {
    let fresh = 0;
    for (const lm of f.leftMessageNotice.leftMessages || []) {
      if (!state.left.has(lm.id) && !lm.claimedBy) fresh += 1;
      if (!lm.claimedBy || lm.claimedBy === me) state.left.set(lm.id, lm);
      else state.left.delete(lm.id);
    }
    if (fresh) notify(`${fresh} new left message${fresh > 1 ? 's' : ''}`, 'info');
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
  replyPick.replaceChildren(el('option', { value: '' }, state.replies.length ? 'Quick replies…' : 'No quick replies yet'),
    ...state.replies.map((r) => el('option', { value: r.id }, `${r.title}${r.group ? ` (${r.group})` : ''}`)));
}

async function saveReply() {
  const text = input.value.trim();
  if (!text) return notify('Type the reply first, then save it.', 'error');
  try {
    await api(auth.token, 'POST', '/api/v1/quick-replies', { title: text.slice(0, 40), text });
    notify('Saved as a personal quick reply.');
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
  if (!target) return notify(`Name the ${kind} to transfer to.`, 'error');
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
  loadLine.textContent = ` ${state.load}/${state.capacity} · ${state.groups.join(', ') || 'no group yet'}`;
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
    el('div', { class: 'muted small' }, since ? `waiting ${duration(now - since)}` : 'answered')));
  }));
  if (!state.sessions.size) sessionList.replaceChildren(el('li', { class: 'muted empty' }, state.status === 'ONLINE' ? 'No customers yet: new ones appear here.' : 'Go online to get customers.'));
  pickBox.replaceChildren(...state.manual.map((g) => el('div', { class: 'pick-row' },
    el('span', {}, `${g.name || g.id}: `, el('strong', { 'data-waiting': g.id }, String(g.queue_length)), ' waiting'),
    el('button', {
      class: 'primary', 'data-take': g.id, disabled: !g.queue_length || state.status !== 'ONLINE',
      onclick: () => takeNext(g.id),
    }, 'Take next'))));
  const left = [...state.left.values()];
  const open = left.filter((lm) => !lm.claimedBy).length;
  leftCount.textContent = open ? String(open) : '';
  leftList.replaceChildren(...left.map((lm) => el('li', { 'data-left-id': lm.id },
    el('div', {}, el('strong', {}, lm.customer), ' ', el('span', { class: 'muted' }, `${lm.group} · ${clock(lm.createdMs)}`)),
    el('div', { class: 'small' }, contentNode(lm.content)),
    lm.contact ? el('div', { class: 'muted small' }, `contact: ${lm.contact}`) : '',
    lm.claimedBy ? el('button', { class: 'link', onclick: () => { state.selected = { kind: 'left', id: lm.id }; renderAll(); } }, 'Answer')
      : el('button', { class: 'link claim', onclick: () => claim(lm) }, 'Claim and answer'))));
}

function renderConversation() {
  const sel = state.selected;
  const s = currentSession();
  if (s) {
    const agentInput = transferTarget;
    const kind = transferKind;
    convHead.replaceChildren(
      el('div', {}, el('strong', { id: 'conv-customer' }, s.customer), ' ', el('span', { class: 'muted' }, `${s.group} · since ${clock(s.assignedMs || s.createdMs)}`),
        (s.previousAgents || []).length ? el('span', { class: 'muted' }, ` · before: ${s.previousAgents.join(', ')}`) : ''),
      el('div', { class: 'actions' },
        el('span', {}, 'Transfer to '), kind, agentInput,
        el('button', { id: 'transfer', onclick: () => transfer(s, kind.value, agentInput.value.trim()) }, 'Transfer'),
        el('button', { id: 'end', class: 'danger', onclick: () => endSession(s) }, 'End session')));
    const ids = convIdsOf(s);
    drawMessages(list, store.list(ids, s.customer), me, { onRetry: retry });
    older.hidden = !ids.some((c) => state.hasMore.get(c) !== false && store.oldestSeq(c) > 1);
    composer.hidden = false;
  } else if (sel && sel.kind === 'left' && state.left.get(sel.id)) {
    const lm = state.left.get(sel.id);
    convHead.replaceChildren(el('div', {}, 'Answering the message left by ', el('strong', {}, lm.customer), ' ', el('span', { class: 'muted' }, lm.group)),
      el('blockquote', {}, contentNode(lm.content)));
    drawMessages(list, store.list(lm.conversationId ? [lm.conversationId] : [], lm.customer), me, { onRetry: retry });
    older.hidden = true;
    composer.hidden = lm.claimedBy !== me;
  } else {
    convHead.replaceChildren(el('p', { class: 'muted' }, 'Pick a session on the left.'));
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
  if (!flashing) document.title = `${unread ? `(${unread}) ` : ''}Agent workspace · dongdong`;
}

let flashing = null;
function flashTitle(text) {
  clearInterval(flashing);
  let on = true;
  flashing = setInterval(() => {
    document.title = on ? text : 'Agent workspace · dongdong';
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
