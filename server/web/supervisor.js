// The supervisor view (/supervisor): per group, the queue length, the
// longest wait, the agents online and their load, and the sessions in
// progress, from the HTTP API (admin token), refreshed every 2 s; the day's
// figures per group and agent from the server (GET /api/v1/reports/summary,
// every 10 s: the same after any reload, on any node); any session opened
// read-only, moved to another agent or group, or ended; an agent's status
// set for them; search over the shop; and the shop's settings (settings.js).

import { DongdongClient, api, wsUrl, deviceIdFor } from './dd.js';
import { searchPanel } from './search.js';
import { settingsPanel } from './settings.js';
import { el, $, duration, notify, notifyError, signIn, signOut, keepFocus, People, drawTranscript, twoStepButton, domId } from './ui.js';
import { translator, languagePicker } from './i18n.js';

// Every string of this page, in each language.
const t = translator({
  en: {
    title: 'Supervisor', signOut: 'Sign out', live: 'live', updated: 'updated {time}', notUpdating: 'not updating: {why}',
    noGroups: 'No service groups yet: create one under Settings below.',
    waiting: 'waiting', longestWait: 'longest wait', agentsOnline: 'agents online', inProgress: 'in progress',
    agent: 'agent', status: 'status', load: 'load here', loadAll: '{here} in this group, {load} of {capacity} in all', elsewhere: ' (+{n} in other groups)', disconnected: 'disconnected',
    ONLINE: 'online', AWAY: 'away', OFFLINE: 'offline', WAITING: 'waiting', ACTIVE: 'active', ENDED: 'ended',
    hideSessions: 'Hide sessions', showSessions: 'Show sessions',
    customer: 'customer', state: 'state', for: 'for',
    'least-loaded': 'fewest chats first', 'round-robin': 'in turn', 'manual-pick': 'agents pick',
    today: 'Today', served: 'served', abandoned: 'gave up waiting', avgWait: 'average wait', firstResponse: 'first reply',
    csat: 'satisfaction', csatOf: '{avg} ★ ({n})', ratings: '{n} ratings', noSessions: 'Nobody is waiting or being served.', servedToday: 'served today', none: '–',
    actions: 'actions', open: 'Open', end: 'End', endAsk: 'End now?',
    moveTo: 'Move to…', move: 'Move', toGroup: 'group {name}',
    movedNote: 'Moved by the supervisor.', moved: 'The chat of {name} was moved.', ended: 'The chat of {name} was ended.',
    statusSet: '{name} is now {status}.', chatOf: 'Chat of {customer} with {agent}', readOnly: 'Read only: you see what they write, they do not see you.',
    close: 'Close', figuresFailed: 'The day\'s figures could not be loaded: {why}',
  },
  'zh-CN': {
    title: '客服主管', signOut: '退出', live: '实时', updated: '更新于 {time}', notUpdating: '未更新：{why}',
    noGroups: '还没有客服组：请在下方“设置”中创建。',
    waiting: '排队中', longestWait: '最长等待', agentsOnline: '在线客服', inProgress: '进行中',
    agent: '客服', status: '状态', load: '本组接待', loadAll: '本组 {here}，全部 {load} / {capacity}', elsewhere: '（其他组 +{n}）', disconnected: '已断开',
    ONLINE: '在线', AWAY: '忙碌', OFFLINE: '离线', WAITING: '排队中', ACTIVE: '进行中', ENDED: '已结束',
    hideSessions: '收起会话', showSessions: '查看会话',
    customer: '顾客', state: '状态', for: '时长',
    'least-loaded': '优先分配给接待最少的客服', 'round-robin': '轮流分配', 'manual-pick': '客服自行接待',
    today: '今日', served: '已接待', abandoned: '放弃排队', avgWait: '平均等待', firstResponse: '首次回复',
    csat: '满意度', csatOf: '{avg} ★（{n} 条）', ratings: '{n} 条评价', noSessions: '没有排队或进行中的会话。', servedToday: '今日接待', none: '–',
    actions: '操作', open: '查看', end: '结束', endAsk: '确认结束？',
    moveTo: '转给…', move: '转接', toGroup: '{name} 组',
    movedNote: '由主管转接。', moved: '{name} 的会话已转接。', ended: '{name} 的会话已结束。',
    statusSet: '{name} 现在是{status}。', chatOf: '{customer} 与 {agent} 的会话', readOnly: '只读：您能看到双方的消息，他们看不到您。',
    close: '关闭', figuresFailed: '今日数据加载失败：{why}',
  },
});

document.title = `${t('title')} · dongdong`;
$('.brand').textContent = t('title');
$('#signout').textContent = t('signOut');
$('header.top').append(languagePicker());

const REFRESH_MS = 2000;
const FIGURES_MS = 10000;
const main = $('#main');
const auth = await signIn('supervisor', 'admin', main);
$('#who').textContent = `${auth.claims.sub} · ${auth.claims.tenant}`;
$('#signout').hidden = false;
$('#signout').onclick = () => signOut('supervisor');
const conn = $('#conn');

const grid = el('div', { id: 'groups', class: 'groups' });
const updated = el('p', { class: 'muted small', id: 'updated' });
// A socket of its own for search, reading a session, moving and ending
// one: opened when first needed.
let searcher = null;
function socket() {
  if (!searcher) {
    const client = new DongdongClient({ url: wsUrl(auth.info), token: auth.token, deviceId: deviceIdFor(auth.claims.tenant, auth.claims.sub, 'supervisor') });
    searcher = new Promise((resolve) => {
      const off = client.on('ready', () => { off(); resolve(client); });
      client.connect();
    });
  }
  return searcher;
}
// The shop's settings: every change shows in the live view at once.
const sessionBox = el('div', { class: 'messages transcript', id: 'session-view-messages' });
const sessionTitle = el('strong', {});
const sessionDialog = el('dialog', { id: 'session-view', 'aria-label': t('readOnly') },
  el('div', { class: 'row' }, sessionTitle, el('button', { type: 'button', class: 'link', id: 'session-view-close', onclick: () => sessionDialog.close() }, t('close'))),
  el('p', { class: 'muted small' }, t('readOnly')), sessionBox);
main.replaceChildren(grid, updated, sessionDialog, searchPanel(socket, auth.claims.sub, { nameOf: (u) => people.name(u) }), settingsPanel(auth.token, () => refresh()));
const expanded = new Set();
let lastError = '';
// People by name (the token's or the profile's), once known.
const people = new People(auth.token);
let shown = null; // the last groups and details drawn
let today = { groups: new Map(), agents: new Map() }; // the day's figures, from the server
let targets = { groups: [], agents: [] }; // where a chat can be moved
const chosen = new Map(); // session id -> where to move it, as chosen so far
const redraw = () => {
  if (!shown) return;
  // A redraw would close a menu being chosen from: the next one draws it.
  const a = document.activeElement;
  if (a && a.tagName === 'SELECT' && grid.contains(a)) return;
  keepFocus(() => draw(...shown));
};
people.addEventListener('change', redraw);

async function refresh() {
  try {
    const { groups } = await api(auth.token, 'GET', '/api/v1/groups');
    const details = new Map();
    await Promise.all(groups.filter((g) => expanded.has(g.id)).map(async (g) => {
      details.set(g.id, await api(auth.token, 'GET', `/api/v1/groups/${encodeURIComponent(g.id)}/sessions`));
    }));
    if (expanded.size) targets = await api(auth.token, 'GET', '/api/v1/transfer-targets');
    // Redrawn every 2 s: the keyboard focus stays where it was.
    shown = [groups, details];
    people.want([...groups.flatMap((g) => g.agents.map((a) => a.id)),
      ...[...details.values()].flatMap((d) => [...d.waiting, ...d.active].flatMap((x) => [x.customer, x.agent]))]);
    redraw();
    if (sessionDialog.open) showSession(openSession, false);
    conn.textContent = t('live');
    conn.dataset.status = 'online';
    lastError = '';
    updated.textContent = t('updated', { time: new Date().toLocaleTimeString() });
  } catch (e) {
    conn.textContent = t('notUpdating', { why: e.message });
    conn.dataset.status = 'offline';
    if (e.code === 'UNAUTHENTICATED') return signOut('supervisor');
    if (e.message !== lastError) notifyError(e);
    lastError = e.message;
  }
}

/** The day's figures (since local midnight), from the server. */
let figuresError = '';
async function loadFigures() {
  const midnight = new Date();
  midnight.setHours(0, 0, 0, 0);
  try {
    const r = await api(auth.token, 'GET', `/api/v1/reports/summary?from=${midnight.getTime()}`);
    today = { groups: new Map(r.groups.map((g) => [g.group, g])), agents: new Map(r.agents.map((a) => [a.agent, a])) };
    figuresError = '';
    redraw();
  } catch (e) {
    if (e.message !== figuresError) notify(t('figuresFailed', { why: e.message }), 'error');
    figuresError = e.message;
  }
}

function stat(label, value, id) {
  return el('div', { class: 'stat' }, el('div', { class: 'value', 'data-stat': id }, ...[value].flat().map((v) => (v instanceof Node ? v : String(v)))), el('div', { class: 'muted small' }, label));
}

const ms = (v) => (v === null || v === undefined ? t('none') : duration(v));
const csat = (f) => (f && f.csat_count ? t('csatOf', { avg: f.csat_avg.toFixed(1), n: f.csat_count }) : t('none'));
// In a figure box: the average big, how many ratings small below.
const csatStat = (f) => (f && f.csat_count ? [`${f.csat_avg.toFixed(1)} ★`, el('small', {}, t('ratings', { n: f.csat_count }))] : t('none'));

async function setStatus(agent, status) {
  try {
    await api(auth.token, 'PUT', `/api/v1/agents/${encodeURIComponent(agent)}/status`, { status });
    notify(t('statusSet', { name: people.name(agent), status: t(status.toUpperCase()) }), 'info');
  } catch (e) {
    notifyError(e);
  }
  refresh();
}

// The session shown read-only, kept up to date while the dialog is open.
let openSession = null;
async function showSession(s, fresh = true) {
  if (!fresh && shown) {
    // The newest state of the session (its agent may have changed).
    const now = [...shown[1].values()].flatMap((d) => [...d.waiting, ...d.active]).find((x) => x.sessionId === s.sessionId);
    if (now) s = now;
  }
  openSession = s;
  sessionTitle.textContent = t('chatOf', { customer: people.name(s.customer), agent: s.agent ? people.name(s.agent) : t('none') });
  if (fresh) {
    sessionBox.replaceChildren();
    if (!sessionDialog.open) sessionDialog.showModal();
  }
  const atEnd = sessionBox.scrollHeight - sessionBox.scrollTop - sessionBox.clientHeight < 40;
  const top = sessionBox.scrollTop;
  try {
    await drawTranscript(sessionBox, await socket(), s, auth.claims.sub, { nameOf: (u) => people.name(u) });
    sessionBox.scrollTop = fresh || atEnd ? sessionBox.scrollHeight : top;
  } catch (e) {
    notifyError(e);
  }
}

async function move(s) {
  const [kind, id] = (chosen.get(s.sessionId) || '').split(':');
  if (!id) return;
  chosen.delete(s.sessionId);
  try {
    const client = await socket();
    await client.transferSession(s.sessionId, kind === 'group' ? { group: id } : { agent: id }, t('movedNote'));
    notify(t('moved', { name: people.name(s.customer) }), 'info');
  } catch (e) {
    notifyError(e);
  }
  refresh();
}

async function end(s) {
  try {
    const client = await socket();
    await client.endSession(s.sessionId);
    notify(t('ended', { name: people.name(s.customer) }), 'info');
  } catch (e) {
    notifyError(e);
  }
  refresh();
}

function statusPicker(g, a) {
  const current = String(a.status).toUpperCase();
  const pick = el('select', { 'data-agent-status': a.id, 'aria-labelledby': `${domId('who', g.id, a.id)} ${domId('status-head', g.id)}`, onchange: (ev) => setStatus(a.id, ev.target.value) },
    ...['online', 'away', 'offline'].map((v) => el('option', { value: v, selected: v.toUpperCase() === current }, t(v.toUpperCase()))));
  return el('td', {}, pick, a.connected ? '' : el('span', { class: 'muted small' }, ` ${t('disconnected')}`));
}

function sessionActions(s) {
  const cells = [el('button', { type: 'button', 'data-open': s.sessionId, onclick: () => showSession(s) }, t('open'))];
  if (s.state === 'ACTIVE') {
    const options = [
      ...targets.agents.filter((a) => a.id !== s.agent).map((a) => [`agent:${a.id}`, people.name(a.id)]),
      ...targets.groups.map((g) => [`group:${g.id}`, t('toGroup', { name: g.name || g.id })]),
    ].map(([value, label]) => el('option', { value, selected: chosen.get(s.sessionId) === value }, label));
    const select = el('select', { 'data-move': s.sessionId, id: domId('move', s.sessionId), 'aria-labelledby': `${domId('customer', s.sessionId)} ${domId('move', s.sessionId)}`, onchange: (ev) => chosen.set(s.sessionId, ev.target.value) },
      el('option', { value: '' }, t('moveTo')), ...options);
    cells.push(select, el('button', { type: 'button', 'data-move-go': s.sessionId, onclick: () => move(s) }, t('move')));
  }
  cells.push(twoStepButton(`supervisor-end:${s.sessionId}`, t('end'), t('endAsk'), () => end(s), { 'data-end': s.sessionId }, redraw));
  return el('td', { class: 'actions' }, ...cells);
}

function draw(groups, details) {
  if (!groups.length) {
    grid.replaceChildren(el('p', { class: 'muted' }, t('noGroups')));
    return;
  }
  grid.replaceChildren(...groups.map((g) => {
    const agents = g.agents.filter((a) => a.connected || a.load > 0);
    const f = today.groups.get(g.id);
    const card = el('section', { class: 'card group', 'data-group': g.id },
      el('h2', {}, el('span', { class: 'user-text' }, g.name || g.id), ' ', el('span', { class: 'muted small' }, el('code', {}, g.id), ` · ${t(g.policy)}`)),
      el('div', { class: 'stats' },
        stat(t('waiting'), g.queue_length, 'queue_length'),
        stat(t('longestWait'), g.queue_length ? duration(g.longest_wait_ms) : '–', 'longest_wait'),
        stat(t('agentsOnline'), g.agents_online, 'agents_online'),
        stat(t('inProgress'), g.sessions_active, 'sessions_active')),
      el('h3', { class: 'small' }, t('today')),
      el('div', { class: 'stats today' },
        stat(t('served'), f ? f.served : t('none'), 'served'),
        stat(t('abandoned'), f ? f.abandoned : t('none'), 'abandoned'),
        stat(t('avgWait'), ms(f && f.wait_avg_ms), 'wait_avg'),
        stat(t('firstResponse'), ms(f && f.first_response_avg_ms), 'first_response_avg'),
        stat(t('csat'), csatStat(f), 'csat')),
      el('table', { class: 'agents' },
        el('thead', {}, el('tr', {}, el('th', {}, t('agent')), el('th', { id: domId('status-head', g.id) }, t('status')), el('th', {}, t('load')),
          el('th', {}, t('servedToday')), el('th', {}, t('firstResponse')), el('th', {}, t('csat')))),
        el('tbody', {}, ...(agents.length ? agents : g.agents).map((a) => {
          const af = today.agents.get(a.id);
          return el('tr', { 'data-agent': a.id },
            el('td', { class: 'user-text', id: domId('who', g.id, a.id) }, people.name(a.id)),
            statusPicker(g, a),
            // What the agent serves in this group; the title has all groups.
            el('td', { 'data-group-load': String(a.group_load) }, el('meter', { min: 0, max: a.capacity || 1, value: a.group_load, title: t('loadAll', { here: a.group_load, load: a.load, capacity: a.capacity }) }),
              ` ${a.group_load}/${a.capacity}`, a.load > a.group_load ? el('span', { class: 'muted small' }, t('elsewhere', { n: a.load - a.group_load })) : ''),
            el('td', { 'data-agent-served': a.id }, af ? String(af.served) : t('none')),
            el('td', {}, ms(af && af.first_response_avg_ms)),
            el('td', {}, csat(af)));
        }))),
      el('button', { class: 'link', id: `sessions-of-${g.id}`, onclick: () => { if (expanded.has(g.id)) expanded.delete(g.id); else expanded.add(g.id); refresh(); } },
        expanded.has(g.id) ? t('hideSessions') : t('showSessions')));
    const d = details.get(g.id);
    if (d) {
      // Times on the server's clock: the browser's may be off.
      const since = (s) => Number(s.state === 'WAITING' ? s.queuedMs : (s.assignedMs || s.createdMs));
      const row = (s) => el('tr', { 'data-session': s.sessionId }, el('td', { class: 'user-text', id: domId('customer', s.sessionId) }, people.name(s.customer)), el('td', { class: 'user-text' }, s.agent ? people.name(s.agent) : '–'), el('td', {}, t(s.state)),
        el('td', {}, duration(Number(d.server_time_ms) - since(s))), sessionActions(s));
      card.append(el('table', { class: 'sessions' },
        el('thead', {}, el('tr', {}, el('th', {}, t('customer')), el('th', {}, t('agent')), el('th', {}, t('state')), el('th', {}, t('for')), el('th', {}, t('actions')))),
        el('tbody', {}, ...d.waiting.map(row), ...d.active.map(row),
          d.waiting.length + d.active.length ? '' : el('tr', {}, el('td', { class: 'muted small', colSpan: 5 }, t('noSessions'))))));
    }
    return card;
  }));
}

refresh();
loadFigures();
setInterval(refresh, REFRESH_MS);
setInterval(loadFigures, FIGURES_MS);
