// The supervisor view (/supervisor): per group, the queue length, the
// longest wait, the agents online and their load, and the sessions in
// progress, from the HTTP API (admin token), refreshed every 2 s.

import { api } from './dd.js';
import { el, $, duration, notifyError, signIn, signOut } from './ui.js';

const REFRESH_MS = 2000;
const main = $('#main');
const auth = await signIn('supervisor', 'admin', main);
$('#who').textContent = `${auth.claims.sub} · ${auth.claims.tenant}`;
$('#signout').hidden = false;
$('#signout').onclick = () => signOut('supervisor');
const conn = $('#conn');

const grid = el('div', { id: 'groups', class: 'groups' });
const updated = el('p', { class: 'muted small', id: 'updated' });
main.replaceChildren(grid, updated);
const expanded = new Set();
let lastError = '';

async function refresh() {
  try {
    const { groups } = await api(auth.token, 'GET', '/api/v1/groups');
    const details = new Map();
    await Promise.all(groups.filter((g) => expanded.has(g.id)).map(async (g) => {
      details.set(g.id, await api(auth.token, 'GET', `/api/v1/groups/${encodeURIComponent(g.id)}/sessions`));
    }));
    draw(groups, details);
    conn.textContent = 'live';
    conn.dataset.status = 'online';
    lastError = '';
    updated.textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    conn.textContent = `not updating: ${e.message}`;
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
    grid.replaceChildren(el('p', { class: 'muted' }, 'No groups in this tenant yet (PUT /api/v1/groups/{group}).'));
    return;
  }
  grid.replaceChildren(...groups.map((g) => {
    const agents = g.agents.filter((a) => a.connected || a.load > 0);
    const card = el('section', { class: 'card group', 'data-group': g.id },
      el('h2', {}, g.name || g.id, ' ', el('span', { class: 'muted small' }, `${g.id} · ${g.policy}`)),
      el('div', { class: 'stats' },
        stat('waiting', g.queue_length, 'queue_length'),
        stat('longest wait', g.queue_length ? duration(g.longest_wait_ms) : '–', 'longest_wait'),
        stat('agents online', g.agents_online, 'agents_online'),
        stat('in progress', g.sessions_active, 'sessions_active')),
      el('table', { class: 'agents' },
        el('thead', {}, el('tr', {}, el('th', {}, 'agent'), el('th', {}, 'status'), el('th', {}, 'load'))),
        el('tbody', {}, ...(agents.length ? agents : g.agents).map((a) => el('tr', { 'data-agent': a.id },
          el('td', {}, a.id),
          el('td', {}, a.connected ? a.status.toLowerCase() : 'disconnected'),
          el('td', {}, el('meter', { min: 0, max: a.capacity || 1, value: a.load, title: `${a.load} of ${a.capacity}` }), ` ${a.load}/${a.capacity}`))))),
      el('button', { class: 'link', onclick: () => { if (expanded.has(g.id)) expanded.delete(g.id); else expanded.add(g.id); refresh(); } },
        expanded.has(g.id) ? 'Hide sessions' : 'Show sessions'));
    const d = details.get(g.id);
    if (d) {
      const row = (s) => el('tr', {}, el('td', {}, s.customer), el('td', {}, s.agent || '–'), el('td', {}, s.state.toLowerCase()),
        el('td', {}, s.waiting_ms ? duration(s.waiting_ms) : duration(Date.now() - (s.assigned_ms || s.created_ms))));
      card.append(el('table', { class: 'sessions' },
        el('thead', {}, el('tr', {}, el('th', {}, 'customer'), el('th', {}, 'agent'), el('th', {}, 'state'), el('th', {}, 'for'))),
        el('tbody', {}, ...d.waiting.map(row), ...d.active.map(row))));
    }
    return card;
  }));
}

refresh();
setInterval(refresh, REFRESH_MS);
