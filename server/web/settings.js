// The shop's settings in the supervisor view (admins): service groups
// (name, how customers are assigned, queue limits), their agents and
// capacities, the team's quick replies, and the chat widget's look (the
// launcher's words per language, colour, corner, the greeting). Every change goes through the
// HTTP API and is live on every node at once; a mistake is named by its
// field, in the page's language, before or after the server sees it.

import { api } from './dd.js';
import { el, notify, describe, twoStepButton, domId } from './ui.js';
import { translator } from './i18n.js';

// The server's limits (cs-core: MAX_QUEUE_LIMIT, MAX_CAPACITY; im-core: MAX_ID_BYTES).
const MAX_QUEUE = 10000;
const MAX_CAPACITY = 1000;
const MAX_ID_BYTES = 128;
// cs-queue: MAX_TITLE_BYTES, MAX_REPLY_TEXT_BYTES.
const MAX_TITLE_BYTES = 200;
const MAX_TEXT_BYTES = 4000;
// server widget_api: MAX_LABEL_CHARS, MAX_GREETING_CHARS.
const MAX_LABEL_CHARS = 40;
const MAX_GREETING_CHARS = 500;

const t = translator({
  en: {
    settings: 'Settings', groups: 'Service groups', newGroup: 'New group', editGroup: 'Edit group {name}',
    id: 'Id (in links and the API; cannot change later)', name: 'Name customers see', policy: 'Assignment',
    'least-loaded': 'to the agent with the fewest chats', 'round-robin': 'to each agent in turn', 'manual-pick': 'agents take customers themselves',
    maxQueue: 'Most customers waiting at once', maxWait: 'Longest wait before offering to leave a message (minutes)',
    defaultCapacity: 'Chats at once for agents who join without a number', autoJoin: 'Every agent who goes online joins this group',
    save: 'Save', cancel: 'Cancel', edit: 'Edit', remove: 'Remove', delete: 'Delete', deleteAsk: 'Press again to delete',
    agents: 'Agents', agentId: 'Agent id (as in their sign-in)', capacity: 'Chats at once', add: 'Add agent',
    noAgents: 'No agents in this group yet.', agentsOf: 'Agents of {name}',
    waitingNow: '{n} waiting', chatsNow: '{n} in progress',
    replies: 'Quick replies', newReply: 'New quick reply', editReply: 'Edit quick reply', group: 'Group', title: 'Title', text: 'Text',
    noReplies: 'No quick replies yet: agents pick these in the conversation.',
    saved: 'Saved.', deleted: 'Deleted.', added: '{agent} added to {group}.', removed: '{agent} removed from {group}.',
    required: '{field}: please fill this in.', tooLong: '{field}: at most {n} characters.',
    between: '{field}: a whole number from {min} to {max}.', atLeast: '{field}: at least {min}.',
    fieldSays: '{field}: {why}', notAdmin: 'Only an administrator can change settings.',
    widget: 'Chat widget', labelEn: 'Chat button text (English)', labelZh: 'Chat button text (Chinese)',
    greetingEn: 'Greeting above the question (English)', greetingZh: 'Greeting above the question (Chinese)',
    color: 'Colour', position: 'Corner', right: 'bottom right', left: 'bottom left',
    widgetHint: 'Empty texts keep the defaults ("Chat with us" / "在线咨询"). Shown the next time a shop page opens the widget.',
    deactivate: 'Deactivate', deactivateAsk: 'Press again: out of every group, signed out',
    deactivateTitle: 'Someone who leaves the team: offline, out of every group, their sign-ins refused',
    deactivated: '{agent} is out of every group and signed out; adding them to a group and a new sign-in brings them back.',
    deactivatedReason: 'Your account was deactivated by an administrator.',
    badColor: '{field}: a colour such as #c8102e.', tooLongChars: '{field}: at most {n} characters.',
  },
  'zh-CN': {
    settings: '设置', groups: '客服组', newGroup: '新建客服组', editGroup: '编辑客服组 {name}',
    id: '编号（用于链接和接口，创建后不可修改）', name: '顾客看到的名称', policy: '分配方式',
    'least-loaded': '分配给当前接待最少的客服', 'round-robin': '轮流分配给每位客服', 'manual-pick': '由客服自行接待',
    maxQueue: '同时排队的最多人数', maxWait: '最长等待时间，超过后建议留言（分钟）',
    defaultCapacity: '未指定时每位客服同时接待的人数', autoJoin: '所有上线的客服都加入此组',
    save: '保存', cancel: '取消', edit: '编辑', remove: '移除', delete: '删除', deleteAsk: '再按一次删除',
    agents: '客服', agentId: '客服编号（与登录时一致）', capacity: '同时接待人数', add: '添加客服',
    noAgents: '此组还没有客服。', agentsOf: '{name} 的客服',
    waitingNow: '{n} 人排队', chatsNow: '{n} 个会话进行中',
    replies: '快捷回复', newReply: '新建快捷回复', editReply: '编辑快捷回复', group: '客服组', title: '标题', text: '内容',
    noReplies: '还没有快捷回复：客服可在对话中选用。',
    saved: '已保存。', deleted: '已删除。', added: '已将 {agent} 加入 {group}。', removed: '已将 {agent} 移出 {group}。',
    required: '{field}：请填写。', tooLong: '{field}：最多 {n} 个字符。',
    between: '{field}：请填写 {min} 到 {max} 之间的整数。', atLeast: '{field}：至少为 {min}。',
    fieldSays: '{field}：{why}', notAdmin: '只有管理员可以修改设置。',
    widget: '聊天窗口', labelEn: '咨询按钮文字（英文）', labelZh: '咨询按钮文字（中文）',
    greetingEn: '提问上方的欢迎语（英文）', greetingZh: '提问上方的欢迎语（中文）',
    color: '颜色', position: '位置', right: '右下角', left: '左下角',
    widgetHint: '文字留空则使用默认文字（中文页面为“在线咨询”）。商店页面下次打开聊天窗口时生效。',
    deactivate: '停用', deactivateAsk: '再按一次：移出所有组并登出',
    deactivateTitle: '离开团队的人：离线、移出所有组、拒绝其登录凭证',
    deactivated: '{agent} 已移出所有组并登出；重新加入客服组并重新登录即可恢复。',
    deactivatedReason: '您的账号已被管理员停用。',
    badColor: '{field}：请填写颜色，例如 #c8102e。', tooLongChars: '{field}：最多 {n} 个字符。',
  },
});

const POLICIES = ['least-loaded', 'round-robin', 'manual-pick'];

/** A labelled input whose errors are announced next to it. */
function field(id, label, input) {
  input.id = id;
  const error = el('span', { class: 'field-error small', id: `${id}-error`, role: 'alert' });
  input.setAttribute('aria-describedby', error.id);
  return { input, label, row: el('div', { class: 'field' }, el('label', { for: id }, label), input, error), error };
}

function number(value, min, max) {
  return el('input', { type: 'number', min, max, step: 1, value: String(value), inputMode: 'numeric' });
}

/** Clears the form's marks; then `mark(f, words)` flags one field. */
function clearMarks(fields) {
  for (const f of fields) {
    f.input.removeAttribute('aria-invalid');
    f.error.textContent = '';
  }
}

function mark(f, words) {
  f.input.setAttribute('aria-invalid', 'true');
  f.error.textContent = words;
  f.input.focus();
}

/** Checks a whole number in [min, max]; the words of what is wrong, or ''. */
function badNumber(f, min, max) {
  const v = f.input.value.trim();
  if (!v) return t('required', { field: f.label });
  const n = Number(v);
  return Number.isInteger(n) && n >= min && n <= max ? '' : t('between', { field: f.label, min, max });
}

function badText(f, required, maxLen) {
  const v = f.input.value.trim();
  if (required && !v) return t('required', { field: f.label });
  return new TextEncoder().encode(v).length > maxLen ? t('tooLong', { field: f.label, n: maxLen }) : '';
}

/**
 * A failure of the API shown at the field it names (the server's `field`,
 * or the field a message starts with), else as a notice.
 */
function showFailure(e, byName) {
  const name = e.field || (/^([a-z_]+)(?::| must| is)/.exec(e.message || '') || [])[1];
  const f = name && byName[name];
  if (f) mark(f, t('fieldSays', { field: f.label, why: (e.message || '').replace(/^[a-z_]+: ?/, '') }));
  else notify(e.code === 'FORBIDDEN' ? t('notAdmin') : describe(e), 'error', 10000);
}

/**
 * The settings section. `token`: an admin's; `changed()` is called after
 * every change (the live view refreshes).
 */
export function settingsPanel(token, changed = () => {}) {
  let groups = [];
  let replies = [];
  let editing = null; // the group id being edited, or null for a new one
  let editingReply = null;

  const groupList = el('div', { id: 'settings-groups' });
  const replyList = el('div', { id: 'settings-replies' });

  // --- the group form ---
  const gId = field('group-id', t('id'), el('input', { maxLength: MAX_ID_BYTES, autocomplete: 'off' }));
  const gName = field('group-name', t('name'), el('input', { maxLength: 256 }));
  const gPolicy = field('group-policy', t('policy'), el('select', {}, ...POLICIES.map((p) => el('option', { value: p }, t(p)))));
  const gQueue = field('group-max-queue', t('maxQueue'), number(100, 1, MAX_QUEUE));
  const gWait = field('group-max-wait', t('maxWait'), number(10, 1, 24 * 60));
  const gCapacity = field('group-default-capacity', t('defaultCapacity'), number(5, 1, MAX_CAPACITY));
  const gAutoJoin = el('input', { type: 'checkbox', id: 'group-auto-join' });
  const groupFields = [gId, gName, gPolicy, gQueue, gWait, gCapacity];
  const byServerName = { group: gId, name: gName, policy: gPolicy, max_queue: gQueue, max_wait: gWait, max_wait_s: gWait, default_capacity: gCapacity };
  const groupLegend = el('legend', {});
  const agentsBox = el('div', { id: 'group-agents' });
  const groupForm = el('form', { id: 'group-form', class: 'settings-form', noValidate: true },
    el('fieldset', {}, groupLegend, ...groupFields.map((f) => f.row),
      el('div', { class: 'field' }, el('label', { class: 'inline' }, gAutoJoin, ` ${t('autoJoin')}`)),
      el('div', { class: 'buttons' },
        el('button', { type: 'submit', class: 'primary', id: 'group-save' }, t('save')),
        el('button', { type: 'button', id: 'group-cancel', onclick: () => editGroup(null) }, t('cancel')))));
  groupForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    saveGroup();
  });

  // --- the quick reply form ---
  const rGroup = field('reply-group', t('group'), el('select', {}));
  const rTitle = field('reply-title', t('title'), el('input', { maxLength: MAX_TITLE_BYTES }));
  const rText = field('reply-text', t('text'), el('textarea', { rows: 3, maxLength: MAX_TEXT_BYTES }));
  const replyFields = [rGroup, rTitle, rText];
  const replyLegend = el('legend', {});
  const replyForm = el('form', { id: 'reply-form', class: 'settings-form', noValidate: true },
    el('fieldset', {}, replyLegend, ...replyFields.map((f) => f.row),
      el('div', { class: 'buttons' },
        el('button', { type: 'submit', class: 'primary', id: 'reply-save' }, t('save')),
        el('button', { type: 'button', id: 'reply-cancel', onclick: () => editReply(null) }, t('cancel')))));
  replyForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    saveReply();
  });

  // --- the widget's look ---
  const wLabelEn = field('widget-label-en', t('labelEn'), el('input', { maxLength: MAX_LABEL_CHARS, lang: 'en' }));
  const wLabelZh = field('widget-label-zh', t('labelZh'), el('input', { maxLength: MAX_LABEL_CHARS, lang: 'zh-CN' }));
  const wGreetingEn = field('widget-greeting-en', t('greetingEn'), el('textarea', { rows: 2, maxLength: MAX_GREETING_CHARS, lang: 'en' }));
  const wGreetingZh = field('widget-greeting-zh', t('greetingZh'), el('textarea', { rows: 2, maxLength: MAX_GREETING_CHARS, lang: 'zh-CN' }));
  const wColor = field('widget-color', t('color'), el('input', { type: 'color', value: '#c8102e' }));
  const wPosition = field('widget-position', t('position'), el('select', {}, el('option', { value: 'right' }, t('right')), el('option', { value: 'left' }, t('left'))));
  const widgetFields = [wLabelEn, wLabelZh, wGreetingEn, wGreetingZh, wColor, wPosition];
  const widgetByName = { label_en: wLabelEn, label_zh: wLabelZh, greeting_en: wGreetingEn, greeting_zh: wGreetingZh, color: wColor, position: wPosition };
  const widgetForm = el('form', { id: 'widget-form', class: 'settings-form', noValidate: true },
    el('fieldset', {}, el('legend', {}, t('widget')), el('p', { class: 'muted small' }, t('widgetHint')), ...widgetFields.map((f) => f.row),
      el('div', { class: 'buttons' }, el('button', { type: 'submit', class: 'primary', id: 'widget-save' }, t('save')))));
  widgetForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    saveWidget();
  });

  const section = el('section', { class: 'card settings', id: 'settings', 'aria-labelledby': 'settings-title' },
    el('h2', { id: 'settings-title' }, t('settings')),
    el('h3', {}, t('groups')), groupList, groupForm, agentsBox,
    el('h3', {}, t('replies')), replyList, replyForm,
    el('h3', {}, t('widget')), widgetForm);

  function drawWidget(w) {
    for (const [name, f] of Object.entries(widgetByName)) f.input.value = w[name] ?? '';
  }

  async function loadWidget() {
    try {
      drawWidget(await api(token, 'GET', '/api/v1/widget'));
    } catch (e) {
      showFailure(e, {});
    }
  }

  async function saveWidget() {
    clearMarks(widgetFields);
    const chars = (f, n) => ([...f.input.value.trim()].length > n ? t('tooLongChars', { field: f.label, n }) : '');
    const bad = [[wLabelEn, chars(wLabelEn, MAX_LABEL_CHARS)], [wLabelZh, chars(wLabelZh, MAX_LABEL_CHARS)],
      [wGreetingEn, chars(wGreetingEn, MAX_GREETING_CHARS)], [wGreetingZh, chars(wGreetingZh, MAX_GREETING_CHARS)],
      [wColor, /^#[0-9a-f]{6}$/i.test(wColor.input.value) ? '' : t('badColor', { field: wColor.label })]].find(([, words]) => words);
    if (bad) return mark(bad[0], bad[1]);
    const body = Object.fromEntries(Object.entries(widgetByName).map(([name, f]) => [name, f.input.value.trim()]));
    try {
      drawWidget(await api(token, 'PUT', '/api/v1/widget', body));
    } catch (e) {
      return showFailure(e, widgetByName);
    }
    notify(t('saved'));
  }

  async function load() {
    try {
      [{ groups }, { quick_replies: replies }] = await Promise.all([
        api(token, 'GET', '/api/v1/groups'), api(token, 'GET', '/api/v1/quick-replies')]);
    } catch (e) {
      return showFailure(e, {});
    }
    drawGroups();
    drawReplies();
    if (editing && !groups.some((g) => g.id === editing)) editGroup(null);
    else drawAgents();
  }

  function drawGroups() {
    groupList.replaceChildren(el('table', { class: 'settings-table' },
      el('thead', {}, el('tr', {}, el('th', {}, t('name')), el('th', {}, t('policy')), el('th', {}, t('agents')), el('th', {}, ''))),
      el('tbody', {}, ...groups.map((g) => el('tr', { 'data-settings-group': g.id },
        el('td', {}, el('strong', { class: 'user-text' }, g.name || g.id), el('div', { class: 'muted small' }, el('code', {}, g.id))),
        el('td', {}, t(g.policy)),
        el('td', {}, String(g.agents.length)),
        el('td', { class: 'buttons' },
          el('button', { type: 'button', 'data-action': 'edit', onclick: () => editGroup(g.id) }, t('edit')),
          twoStepButton(`delete-group:${g.id}`, t('delete'), t('deleteAsk'), () => deleteGroup(g), { 'data-action': 'delete' })))))));
    const keep = rGroup.input.value;
    rGroup.input.replaceChildren(...groups.map((g) => el('option', { value: g.id }, g.name || g.id)));
    if (groups.some((g) => g.id === keep)) rGroup.input.value = keep;
  }

  function editGroup(id) {
    editing = id;
    clearMarks(groupFields);
    const g = groups.find((x) => x.id === id);
    groupLegend.textContent = g ? t('editGroup', { name: g.name || g.id }) : t('newGroup');
    gId.input.value = g ? g.id : '';
    gId.input.readOnly = !!g;
    gName.input.value = g ? g.name : '';
    gPolicy.input.value = g ? g.policy : POLICIES[0];
    gQueue.input.value = String(g ? g.max_queue : 100);
    gWait.input.value = String(g ? Math.max(1, Math.round(Number(g.max_wait_ms) / 60000)) : 10);
    gCapacity.input.value = String(g ? g.default_capacity : 5);
    gAutoJoin.checked = g ? !!g.auto_join : false;
    drawAgents();
    if (id) gName.input.focus();
  }

  async function saveGroup() {
    clearMarks(groupFields);
    const checks = [[gId, badText(gId, true, MAX_ID_BYTES)], [gName, badText(gName, false, 256)],
      [gQueue, badNumber(gQueue, 1, MAX_QUEUE)], [gWait, badNumber(gWait, 1, 24 * 60)], [gCapacity, badNumber(gCapacity, 1, MAX_CAPACITY)]];
    const bad = checks.find(([, words]) => words);
    if (bad) return mark(bad[0], bad[1]);
    const id = gId.input.value.trim();
    const body = {
      name: gName.input.value.trim() || id,
      policy: gPolicy.input.value,
      max_queue: Number(gQueue.input.value),
      max_wait_s: Number(gWait.input.value) * 60,
      default_capacity: Number(gCapacity.input.value),
      auto_join: gAutoJoin.checked,
    };
    try {
      await api(token, 'PUT', `/api/v1/groups/${encodeURIComponent(id)}`, body);
    } catch (e) {
      return showFailure(e, byServerName);
    }
    notify(t('saved'));
    editing = id;
    await load();
    editGroup(id);
    changed();
  }

  async function deleteGroup(g) {
    try {
      await api(token, 'DELETE', `/api/v1/groups/${encodeURIComponent(g.id)}`);
      notify(t('deleted'));
    } catch (e) {
      return showFailure(e, {});
    }
    if (editing === g.id) editing = null;
    await load();
    changed();
  }

  // --- agents of the group being edited ---
  const aId = field('agent-id', t('agentId'), el('input', { maxLength: MAX_ID_BYTES, autocomplete: 'off' }));
  const aCapacity = field('agent-capacity', t('capacity'), number(5, 1, MAX_CAPACITY));
  const agentFields = [aId, aCapacity];

  function drawAgents() {
    const g = groups.find((x) => x.id === editing);
    if (!g) return agentsBox.replaceChildren();
    const rows = g.agents.map((a) => {
      // Labelled by what the row shows: the agent, then the column.
      const who = domId('settings-agent', a.id);
      const cap = el('input', { type: 'number', min: 1, max: MAX_CAPACITY, step: 1, value: String(a.capacity), 'aria-labelledby': `${who} settings-capacity-head`, 'data-capacity-of': a.id });
      cap.addEventListener('change', () => putAgent(g, a.id, cap.value, cap));
      return el('tr', { 'data-settings-agent': a.id }, el('td', { class: 'user-text', id: who }, a.id), el('td', {}, cap),
        el('td', { class: 'buttons' }, el('button', { type: 'button', 'data-action': 'remove', onclick: () => removeAgent(g, a.id) }, t('remove')),
          twoStepButton(`deactivate:${a.id}`, t('deactivate'), t('deactivateAsk'), () => deactivate(a.id), { 'data-action': 'deactivate', title: t('deactivateTitle') })));
    });
    const add = el('form', { class: 'add-agent', id: 'agent-form', noValidate: true }, aId.row, aCapacity.row,
      el('button', { type: 'submit', id: 'agent-add' }, t('add')));
    add.addEventListener('submit', (ev) => {
      ev.preventDefault();
      putAgent(g, aId.input.value.trim(), aCapacity.input.value);
    });
    agentsBox.replaceChildren(el('h4', {}, t('agentsOf', { name: g.name || g.id })),
      rows.length ? el('table', { class: 'settings-table', id: 'group-agent-table' },
        el('thead', {}, el('tr', {}, el('th', {}, t('agents')), el('th', { id: 'settings-capacity-head' }, t('capacity')), el('th', {}, ''))),
        el('tbody', {}, ...rows)) : el('p', { class: 'muted small' }, t('noAgents')),
      add);
  }

  async function putAgent(g, agent, capacity, input) {
    clearMarks(agentFields);
    const capField = input ? { input, label: t('capacity'), error: aCapacity.error } : aCapacity;
    const checks = input ? [] : [[aId, badText(aId, true, MAX_ID_BYTES)]];
    const bad = [...checks, [capField, badNumber(capField, 1, MAX_CAPACITY)]].find(([, words]) => words);
    if (bad) return mark(bad[0], bad[1]);
    try {
      await api(token, 'PUT', `/api/v1/groups/${encodeURIComponent(g.id)}/agents/${encodeURIComponent(agent)}`, { capacity: Number(capacity) });
    } catch (e) {
      return showFailure(e, { agent: aId, capacity: capField });
    }
    notify(input ? t('saved') : t('added', { agent, group: g.name || g.id }));
    if (!input) aId.input.value = '';
    await load();
    changed();
  }

  /**
   * Someone who leaves the team: offline (their open chats go back to the
   * queue), out of every group, and the tokens they had refused (their
   * pages are signed out at once, on every node).
   */
  async function deactivate(agent) {
    try {
      await api(token, 'PUT', `/api/v1/agents/${encodeURIComponent(agent)}/status`, { status: 'offline' });
      for (const g of groups.filter((x) => x.agents.some((a) => a.id === agent))) {
        await api(token, 'DELETE', `/api/v1/groups/${encodeURIComponent(g.id)}/agents/${encodeURIComponent(agent)}`);
      }
      await api(token, 'POST', `/api/v1/admin/users/${encodeURIComponent(agent)}/revoke`, { reason: t('deactivatedReason') });
      notify(t('deactivated', { agent }));
    } catch (e) {
      showFailure(e, {});
    }
    await load();
    changed();
  }

  async function removeAgent(g, agent) {
    try {
      await api(token, 'DELETE', `/api/v1/groups/${encodeURIComponent(g.id)}/agents/${encodeURIComponent(agent)}`);
      notify(t('removed', { agent, group: g.name || g.id }));
    } catch (e) {
      return showFailure(e, {});
    }
    await load();
    changed();
  }

  // --- quick replies ---
  function drawReplies() {
    const team = replies.filter((r) => r.group);
    const groupName = (id) => (groups.find((g) => g.id === id) || {}).name || id;
    replyList.replaceChildren(team.length ? el('table', { class: 'settings-table' },
      el('thead', {}, el('tr', {}, el('th', {}, t('group')), el('th', {}, t('title')), el('th', {}, t('text')), el('th', {}, ''))),
      el('tbody', {}, ...team.map((r) => el('tr', { 'data-settings-reply': r.id },
        el('td', { class: 'user-text' }, groupName(r.group)), el('td', { class: 'user-text' }, r.title), el('td', { class: 'small user-text' }, r.text),
        el('td', { class: 'buttons' },
          el('button', { type: 'button', 'data-action': 'edit', onclick: () => editReply(r.id) }, t('edit')),
          twoStepButton(`delete-reply:${r.id}`, t('delete'), t('deleteAsk'), () => deleteReply(r), { 'data-action': 'delete' })))))) : el('p', { class: 'muted small' }, t('noReplies')));
    replyLegend.textContent = editingReply ? t('editReply') : t('newReply');
  }

  function editReply(id) {
    editingReply = id;
    clearMarks(replyFields);
    const r = replies.find((x) => x.id === id);
    rTitle.input.value = r ? r.title : '';
    rText.input.value = r ? r.text : '';
    if (r) rGroup.input.value = r.group;
    rGroup.input.disabled = !!r;
    replyLegend.textContent = r ? t('editReply') : t('newReply');
    if (r) rTitle.input.focus();
  }

  async function saveReply() {
    clearMarks(replyFields);
    const bad = [[rGroup, badText(rGroup, true, MAX_ID_BYTES)], [rTitle, badText(rTitle, true, MAX_TITLE_BYTES)], [rText, badText(rText, true, MAX_TEXT_BYTES)]]
      .find(([, words]) => words);
    if (bad) return mark(bad[0], bad[1]);
    const body = { group: rGroup.input.value, title: rTitle.input.value.trim(), text: rText.input.value.trim() };
    try {
      if (editingReply) await api(token, 'PUT', `/api/v1/quick-replies/${encodeURIComponent(editingReply)}`, body);
      else await api(token, 'POST', '/api/v1/quick-replies', body);
    } catch (e) {
      return showFailure(e, { group: rGroup, title: rTitle, text: rText });
    }
    notify(t('saved'));
    editReply(null);
    await load();
  }

  async function deleteReply(r) {
    try {
      await api(token, 'DELETE', `/api/v1/quick-replies/${encodeURIComponent(r.id)}`);
      notify(t('deleted'));
    } catch (e) {
      return showFailure(e, {});
    }
    if (editingReply === r.id) editReply(null);
    await load();
  }

  editGroup(null);
  editReply(null);
  load();
  loadWidget();
  return section;
}
