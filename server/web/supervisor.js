// The supervisor view (/supervisor): per group, the queue length, the
// longest wait, the agents online and their load, and the sessions in
// progress, from the HTTP API (admin token), refreshed every 2 s; search
// over the shop; and the shop's settings (settings.js).

import { DongdongClient, api, wsUrl, deviceIdFor } from './dd.js';
import { searchPanel } from './search.js';
import { settingsPanel } from './settings.js';
import { el, $, duration, notifyError, signIn, signOut, keepFocus, People } from './ui.js';
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
  },
});

document.title = `${t('title')} · dongdong`;
$('.brand').textContent = t('title');
$('#signout').textContent = t('signOut');
$('header.top').append(languagePicker());

const REFRESH_MS = 2000;
const main = $('#main');
const auth = await signIn('supervisor', 'admin', main);
$('#who').textContent = `${auth.claims.sub} · ${auth.claims.tenant}`;
$('#signout').hidden = false;
$('#signout').onclick = () => signOut('supervisor');
const conn = $('#conn');

const grid = el('div', { id: 'groups', class: 'groups' });
const updated = el('p', { class: 'muted small', id: 'updated' });
// Search over the whole shop: a socket of its own, opened on the first search.
let searcher = null;
function searchClient() {
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
main.replaceChildren(grid, updated, searchPanel(searchClient, auth.claims.sub), settingsPanel(auth.token, () => refresh()));
const expanded = new Set();
let lastError = '';
// People by name (the token's or the profile's), once known.
const people = new People(auth.token);
let shown = null; // the last groups and details drawn
people.addEventListener('change', () => { if (shown) keepFocus(() => draw(...shown)); });

async function refresh() {
  try {
    const { groups } = await api(auth.token, 'GET', '/api/v1/groups');
    const details = new Map();
    await Promise.all(groups.filter((g) => expanded.has(g.id)).map(async (g) => {
      details.set(g.id, await api(auth.token, 'GET', `/api/v1/groups/${encodeURIComponent(g.id)}/sessions`));
    }));
    // Redrawn every 2 s: the keyboard focus stays where it was.
    shown = [groups, details];
    people.want([...groups.flatMap((g) => g.agents.map((a) => a.id)),
      ...[...details.values()].flatMap((d) => [...d.waiting, ...d.active].flatMap((x) => [x.customer, x.agent]))]);
    keepFocus(() => draw(groups, details));
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

function stat(label, value, id) {
  return el('div', { class: 'stat' }, el('div', { class: 'value', 'data-stat': id }, String(value)), el('div', { class: 'muted small' }, label));
}

function draw(groups, details) {
  if (!groups.length) {
    grid.replaceChildren(el('p', { class: 'muted' }, t('noGroups')));
    return;
  }
  grid.replaceChildren(...groups.map((g) => {
    const agents = g.agents.filter((a) => a.connected || a.load > 0);
    const card = el('section', { class: 'card group', 'data-group': g.id },
      el('h2', {}, g.name || g.id, ' ', el('span', { class: 'muted small' }, `${g.id} · ${t(g.policy)}`)),
      el('div', { class: 'stats' },
        stat(t('waiting'), g.queue_length, 'queue_length'),
        stat(t('longestWait'), g.queue_length ? duration(g.longest_wait_ms) : '–', 'longest_wait'),
        stat(t('agentsOnline'), g.agents_online, 'agents_online'),
        stat(t('inProgress'), g.sessions_active, 'sessions_active')),
      el('table', { class: 'agents' },
        el('thead', {}, el('tr', {}, el('th', {}, t('agent')), el('th', {}, t('status')), el('th', {}, t('load')))),
        el('tbody', {}, ...(agents.length ? agents : g.agents).map((a) => el('tr', { 'data-agent': a.id },
          el('td', { class: 'user-text' }, people.name(a.id)),
          el('td', {}, a.connected ? t(String(a.status).toUpperCase()) : t('disconnected')),
          // What the agent serves in this group; the title has all groups.
          el('td', { 'data-group-load': String(a.group_load) }, el('meter', { min: 0, max: a.capacity || 1, value: a.group_load, title: t('loadAll', { here: a.group_load, load: a.load, capacity: a.capacity }) }),
            ` ${a.group_load}/${a.capacity}`, a.load > a.group_load ? el('span', { class: 'muted small' }, t('elsewhere', { n: a.load - a.group_load })) : ''))))),
      el('button', { class: 'link', id: `sessions-of-${g.id}`, onclick: () => { if (expanded.has(g.id)) expanded.delete(g.id); else expanded.add(g.id); refresh(); } },
        expanded.has(g.id) ? t('hideSessions') : t('showSessions')));
    const d = details.get(g.id);
    if (d) {
      // Times on the server's clock: the browser's may be off.
      const since = (s) => Number(s.state === 'WAITING' ? s.queuedMs : (s.assignedMs || s.createdMs));
      const row = (s) => el('tr', {}, el('td', { class: 'user-text' }, people.name(s.customer)), el('td', { class: 'user-text' }, s.agent ? people.name(s.agent) : '–'), el('td', {}, t(s.state)),
        el('td', {}, duration(Number(d.server_time_ms) - since(s))));
      card.append(el('table', { class: 'sessions' },
        el('thead', {}, el('tr', {}, el('th', {}, t('customer')), el('th', {}, t('agent')), el('th', {}, t('state')), el('th', {}, t('for')))),
        el('tbody', {}, ...d.waiting.map(row), ...d.active.map(row))));
    }
    return card;
  }));
}

refresh();
setInterval(refresh, REFRESH_MS);
