// search.js: the consoles' message search. A box, the results newest first
// with the matched words marked, more on demand, and each result opening
// the chat around it in a dialog with the message highlighted. What a
// person may find is the server's rule (docs/protocol.md, "Search"): a
// customer her chats, an agent his and his groups' sessions, a supervisor
// the whole shop.

import { el, when, contentNode, drawMessages, describe } from './ui.js';
import { translator } from './i18n.js';

const t = translator({
  en: {
    search: 'Search messages', placeholder: 'Words, "a phrase", an order number…', go: 'Search',
    none: 'Nothing found.', more: 'More results', found: '{n} found', foundMore: '{n}+ found',
    close: 'Close', around: 'The chat around this message', onlyThis: 'Only this message can be shown here.',
  },
  'zh-CN': {
    search: '搜索消息', placeholder: '关键词、"短语"、订单号…', go: '搜索',
    none: '没有找到。', more: '更多结果', found: '找到 {n} 条', foundMore: '已找到 {n}+ 条',
    close: '关闭', around: '这条消息前后的对话', onlyThis: '这里只能显示这条消息。',
  },
});

/** The snippet as nodes: matched parts in <mark>. */
function snippetNodes(hit) {
  const parts = hit.snippet || [];
  if (!parts.length) return [contentNode(hit.message.content)];
  return parts.map((p) => (p.matched ? el('mark', {}, p.text) : document.createTextNode(p.text)));
}

/**
 * A search panel for user `me`; `getClient()` gives (or resolves to) the
 * DongdongClient to search with, asked on the first search.
 * `nameOf(user)` names people.
 */
export function searchPanel(getClient, me, { nameOf = (u) => u } = {}) {
  const input = el('input', { type: 'search', id: 'search-input', placeholder: t('placeholder'), maxLength: 256, 'aria-label': t('search') });
  const status = el('p', { id: 'search-status', class: 'muted small', 'aria-live': 'polite' });
  const results = el('ul', { id: 'search-results', class: 'list search-results', 'aria-label': t('search') });
  const more = el('button', { type: 'button', class: 'link', id: 'search-more', hidden: true }, t('more'));
  const box = el('div', { class: 'messages transcript', id: 'search-context' });
  const dialog = el('dialog', { id: 'search-dialog', 'aria-label': t('around') },
    el('div', { class: 'row' }, el('strong', {}, t('around')), el('button', { type: 'button', class: 'link', onclick: () => dialog.close() }, t('close'))),
    box);
  let query = '';
  let cursor = '';
  let count = 0;

  async function open(hit) {
    const client = await getClient();
    const m = hit.message;
    box.replaceChildren();
    if (!dialog.open) dialog.showModal();
    let entries = [{ message: m, state: 'stored' }];
    try {
      const page = await client.sync({ conversationId: m.conversationId, sessionId: hit.sessionId || '', beforeSeq: String(Number(m.seq) + 15), limit: 30 });
      if ((page.messages || []).length) entries = page.messages.map((message) => ({ message, state: 'stored' }));
    } catch (e) {
      box.append(el('p', { class: 'muted small' }, t('onlyThis')));
    }
    const list = el('div', { class: 'messages' });
    box.append(list);
    drawMessages(list, entries, me, { nameOf });
    const node = list.querySelector(`[data-msg-id="${CSS.escape(m.msgId)}"]`);
    if (node) {
      node.classList.add('search-hit');
      node.scrollIntoView({ block: 'center' });
    }
  }

  function item(hit) {
    const m = hit.message;
    return el('li', { class: 'search-hit-item' },
      el('button', { type: 'button', class: 'link search-open', 'data-msg-id': m.msgId, onclick: () => open(hit).catch((e) => { status.textContent = describe(e); }) },
        el('span', { class: 'meta' }, `${nameOf(m.fromUser)} → ${nameOf(m.toUser)} · ${when(m.serverTimeMs)}`),
        el('span', { class: 'snippet' }, ...snippetNodes(hit))));
  }

  async function run(next) {
    status.textContent = '…';
    try {
      const client = await getClient();
      const page = await client.search({ query, cursor: next ? cursor : '', limit: 20 });
      const hits = page.hits || [];
      if (!next) {
        results.replaceChildren();
        count = 0;
      }
      results.append(...hits.map(item));
      count += hits.length;
      cursor = page.nextCursor || '';
      more.hidden = !cursor;
      status.textContent = count ? t(cursor ? 'foundMore' : 'found', { n: count }) : t('none');
    } catch (e) {
      status.textContent = describe(e);
    }
  }

  more.addEventListener('click', () => run(true));
  const form = el('form', { id: 'search', class: 'search', role: 'search' }, input, el('button', { type: 'submit' }, t('go')));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    query = input.value.trim();
    if (query) run(false);
  });
  return el('section', { class: 'search-panel', 'aria-label': t('search') }, el('h2', {}, t('search')), form, status, results, more, dialog);
}
