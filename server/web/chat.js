// The customer chat widget (/chat). The embedding shop page passes
// `#token=<token>&group=<group>`; without a token the dev sign-in form shows
// (when the server offers it). States: pick a group → waiting in line →
// chatting with an agent → ended (rate it); or leave a message when offered.

import { DongdongClient, api, wsUrl, deviceIdFor, storage } from './dd.js';
import { translator, languagePicker, lang } from './i18n.js';
import { searchPanel } from './search.js';
import { el, $, reasonWords, duration, when, notify, notifyError, describe, connectionBanner, signIn, signOut, drawMessages, entriesOf, handoverMark, enterSubmits, People, typingSignals, typingIndicator, pastSessionItem, recaller, uploads, useFiles, contentOfUpload } from './ui.js';

// Every string of this page, in each language.
const t = translator({
  en: {
    title: 'Chat with us',
    signOut: 'Sign out', searchToggle: 'Search', closeChat: 'Close the chat',
    agentHere: '{agent} is here to help you.',
    beingPassed: 'You are being passed to another agent; please wait a moment.',
    nowTalkingTo: 'You are now talking to {agent}.',
    connecting: 'Connecting…',
    nextInLine: 'You are next in line.',
    numberInLine: 'You are number {n} in line.',
    inLine: 'You are in line.',
    estimatedWait: 'Estimated wait: about {wait}.',
    shortly: 'An agent will be with you shortly.',
    waitingTitle: 'Waiting for an agent',
    yourQuestionIs: 'Your question: ',
    leaveLine: 'Leave the line',
    thankYou: 'Thank you',
    leftDone: 'Your message was left for the team; the answer will reach you here, also if you come back later.',
    startChat: 'Start a chat',
    talkingTo: 'You are talking to {agent}.',
    endChat: 'End chat',
    thanksFeedback: 'Thanks for your feedback',
    newChat: 'Start a new chat',
    answeredBy: '{agent} answered the message you left. Reply below, or start a new chat.',
    howCanWeHelp: 'How can we help?',
    nobodyOnlineSuffix: ' (nobody online: leave a message)',
    questionPlaceholder: 'Your question (optional)',
    leaveMessage: 'Leave a message',
    chatWithUs: 'Chat with us',
    team: 'Team',
    yourQuestion: 'Your question',
    noTeam: 'There is no team to chat with.',
    whyNobody: 'Nobody is online right now.',
    whyFull: 'All our agents are busy and the line is full.',
    whyWaited: 'Sorry for the long wait: nobody could take you in time.',
    yourMessage: 'Your message',
    contactPlaceholder: 'How to reach you (optional)',
    offerText: '{why} Leave a message and we will answer you here.',
    messageForTeam: 'Your message for the team',
    contact: 'Contact',
    leaveTheMessage: 'Leave the message',
    back: 'Back',
    starsOf5: '{n} of 5',
    anythingToAdd: 'Anything to add? (optional)',
    chatEnded: 'The chat has ended',
    howDidWeDo: 'How did we do?',
    sendRating: 'Send rating',
    skip: 'Skip',
    pickStars: 'Pick 1 to 5 stars.',
    earlier: 'Earlier messages',
    typeMessage: 'Type a message, Enter to send',
    send: 'Send',
    replyTo: 'Reply to {agent}, Enter to send',
    score: 'score',
    conversation: 'conversation',
    chatMessage: 'chat message',
    typeWhileWaiting: 'Add to your question; it goes to the agent who takes you',
    attachLater: 'Photos and files can be sent once an agent is with you.', photo: 'photo',
    heldTitle: 'To be sent when an agent joins:',
    handover: '{from} transferred you to {to}',
    earlierChats: 'Your earlier chats',
    pastLine: '{date} · {group} · {agent}',
    nobodyServed: 'not answered',
    stars: '{n}★',
    showChat: 'Show the chat',
    isTyping: '{name} is typing…',
  },
  'zh-CN': {
    title: '在线客服',
    signOut: '退出', searchToggle: '搜索', closeChat: '关闭聊天',
    agentHere: '客服 {agent} 为您服务。',
    beingPassed: '正在为您转接其他客服，请稍候。',
    nowTalkingTo: '现在由 {agent} 为您服务。',
    connecting: '正在连接…',
    nextInLine: '下一位就是您。',
    numberInLine: '您排在第 {n} 位。',
    inLine: '您正在排队。',
    estimatedWait: '预计等待约 {wait}。',
    shortly: '客服马上就来。',
    waitingTitle: '正在等待客服',
    yourQuestionIs: '您的问题：',
    leaveLine: '退出排队',
    thankYou: '谢谢',
    leftDone: '您的留言已交给客服团队；回复会发到这里，您稍后再来也能看到。',
    startChat: '开始咨询',
    talkingTo: '正在与 {agent} 对话。',
    endChat: '结束对话',
    thanksFeedback: '感谢您的评价',
    newChat: '开始新的咨询',
    answeredBy: '{agent} 已回复您的留言。可在下方回复，或开始新的咨询。',
    howCanWeHelp: '有什么可以帮您？',
    nobodyOnlineSuffix: '（暂无客服在线：可留言）',
    questionPlaceholder: '您的问题（选填）',
    leaveMessage: '留言',
    chatWithUs: '咨询客服',
    team: '咨询类别',
    yourQuestion: '您的问题',
    noTeam: '暂时没有可咨询的客服组。',
    whyNobody: '现在没有客服在线。',
    whyFull: '客服都在忙，排队人数已满。',
    whyWaited: '抱歉让您久等了：暂时没有客服能接待您。',
    yourMessage: '留言内容',
    contactPlaceholder: '联系方式（选填）',
    offerText: '{why}请留言，我们会在这里回复您。',
    messageForTeam: '给客服团队的留言',
    contact: '联系方式',
    leaveTheMessage: '提交留言',
    back: '返回',
    starsOf5: '{n} 星（满分 5 星）',
    anythingToAdd: '还有什么想说的？（选填）',
    chatEnded: '对话已结束',
    howDidWeDo: '您对本次服务满意吗？',
    sendRating: '提交评价',
    skip: '跳过',
    pickStars: '请选择 1 到 5 星。',
    earlier: '更早的消息',
    typeMessage: '输入消息，按 Enter 发送',
    send: '发送',
    replyTo: '回复 {agent}，按 Enter 发送',
    score: '评分',
    conversation: '对话',
    chatMessage: '聊天消息',
    typeWhileWaiting: '可以补充您的问题，客服接入后会收到',
    attachLater: '客服接入后即可发送图片和文件。', photo: '照片',
    heldTitle: '客服接入后将发送：',
    handover: '{from} 已将您转接给 {to}',
    earlierChats: '您以前的咨询',
    pastLine: '{date} · {group} · {agent}',
    nobodyServed: '未接待',
    stars: '{n}★',
    showChat: '查看对话',
    isTyping: '{name} 正在输入…',
  },
});

document.title = `${t('title')} · dongdong`;
$('.brand').textContent = t('title');
$('#signout').textContent = t('signOut');
$('header.top').append(languagePicker());
// Embedded (embed.js): the close button is the widget's own, at the end of
// its header (one outside the frame covered the header's controls).
if (window.parent !== window) {
  $('header.top').append(el('button', {
    type: 'button', class: 'link close-embed', id: 'close-embed', 'aria-label': t('closeChat'), title: t('closeChat'),
    onclick: () => window.parent.postMessage({ type: 'dd-close' }, '*'),
  }, '×'));
}

const main = $('#main');
const auth = await signIn('chat', 'customer', main);
const me = auth.claims.sub;
const fixedGroup = auth.params.get('group') || new URLSearchParams(location.search).get('group');
// The shop page the widget was opened on (embed.js passes it), for the agent.
const shopPage = (auth.params.get('page') || document.referrer || location.href).slice(0, 1024);
// A shop's customer sees their name (when the token has one), not ids; signing
// out only means something with the dev sign-in.
$('#who').textContent = auth.claims.name || '';
const signoutBtn = $('#signout');
signoutBtn.hidden = !auth.info.dev_login || window.parent !== window;
signoutBtn.onclick = () => signOut('chat');
const people = new People(auth.token);
people.addEventListener('change', () => render());

// Unread messages: the server's count (so it includes what came while the
// customer was away, on any device), in the tab's title and, through
// embed.js, on the launcher. What is on screen is marked read; while the
// tab is hidden or the embedding page's chat is closed, nothing is.
const inFrame = window.parent !== window;
let embedOpen = !inFrame; // embed.js tells when its chat opens and closes
const away = () => document.hidden || !embedOpen;
let shownUnread = -1;
function showUnread() {
  const unread = client.unreadTotal(); // called once the client exists (its events)
  if (unread === shownUnread) return;
  shownUnread = unread;
  document.title = `${unread ? `(${unread}) ` : ''}${t('title')} · dongdong`;
  if (inFrame) window.parent.postMessage({ type: 'dd-unread', count: unread }, '*');
}
function seen() {
  if (!away()) renderMessages();
}
window.addEventListener('message', (ev) => {
  if (ev.source !== window.parent || !ev.data || ev.data.type !== 'dd-open') return;
  embedOpen = !!ev.data.open;
  seen();
});
document.addEventListener('visibilitychange', seen);
if (inFrame) window.parent.postMessage({ type: 'dd-hello' }, '*');
// How the shop set its widget (/supervisor's settings): the greeting here,
// the colour here and on the launcher, whose words and corner embed.js
// takes from us.
// Asked beside everything else the page loads, not before it.
const widgetLook = api(auth.token, 'GET', '/api/v1/widget').catch(() => null);
widgetLook.then((widget) => {
  if (!widget) return;
  if (/^#[0-9a-f]{6}$/i.test(widget.color)) document.documentElement.style.setProperty('--accent', widget.color);
  if (inFrame) {
    window.parent.postMessage({ type: 'dd-look', label_en: widget.label_en, label_zh: widget.label_zh, color: widget.color, position: widget.position }, '*');
  }
});

// The SDK: the connection, the outbox (what is typed survives a reload),
// each conversation in order without holes, read pointers ("Read" under
// what the agent has read; ours moves as the chat is on screen).
const client = new DongdongClient({ url: wsUrl(auth.info), token: auth.token, deviceId: deviceIdFor(auth.claims.tenant, me, 'web') });
client.on('receipt', () => renderMessages());
client.on('conversation', () => showUnread());
client.on('outbox', () => renderMessages());
const recall = recaller(client, auth.info, () => renderMessages());
/** Conversations shown, oldest first: the session's, then any other that delivered to us. */
const shown = [];
const tabStore = storage('session');
const LAST_SESSION = `dd.chat.last.${auth.claims.tenant}.${me}`;

const state = {
  view: 'loading', // pick | waiting | offer | active | ended | rated | left | answered
  session: null,
  queue: null, // { position, estimatedWaitS }
  offer: null,
  hasMore: new Map(),
  held: [], // what was typed (strings) or attached ({ content, label }) while waiting in line: sent to the agent on assignment
};

function show(convIds) {
  for (const c of convIds || []) if (c && !shown.includes(c)) shown.push(c);
  // The session's conversations in their order (earlier agents first), then
  // any other (e.g. an answer to a left message), as they came.
  const order = state.session ? [...(state.session.conversations || []), state.session.conversationId] : [];
  const rank = (c) => (order.includes(c) ? order.indexOf(c) : order.length + shown.indexOf(c));
  shown.sort((a, b) => rank(a) - rank(b));
}

function setSession(s) {
  state.session = s;
  people.want([s.agent, ...(s.previousAgents || [])]);
  show([...(s.conversations || []), s.conversationId]);
  if (s.state === 'ENDED' && !s.agent && !Number(s.assignedMs || 0)) {
    // Ended before anyone served it (cancelled, or turned away): nothing to rate.
    tabStore.removeItem(LAST_SESSION);
    state.view = 'pick';
  } else if (s.state === 'ENDED') {
    const last = JSON.parse(tabStore.getItem(LAST_SESSION) || 'null');
    const rated = last && last.sessionId === s.sessionId && last.rated;
    tabStore.setItem(LAST_SESSION, JSON.stringify({ ...s, rated: !!rated || !!s.score }));
    state.view = rated || s.score ? 'rated' : 'ended';
  } else {
    tabStore.setItem(LAST_SESSION, JSON.stringify(s));
    state.view = s.state === 'WAITING' ? 'waiting' : 'active';
  }
}

async function fillHistory() {
  if (!state.session) return;
  const jobs = shown.map((c) => client.catchUp(c, { sessionId: state.session.sessionId }).catch(() => {}));
  await Promise.all(jobs);
  render();
}

// New messages, each once, in order (the SDK acks them once they are here).
client.on('messages', ({ conversationId, messages, how }) => {
  show([conversationId]);
  const theirs = messages.filter((m) => m.fromUser !== me);
  const last = theirs[theirs.length - 1];
  const outsideSession = !state.session || !(state.session.conversations || []).includes(conversationId);
  if (last && how === 'live' && outsideSession && !['active', 'waiting'].includes(state.view) && state.replyTo !== last.fromUser) {
    // An agent answers a message we left: we can reply to them.
    answered(last.fromUser);
    return;
  }
  renderMessages();
});
client.on('recalled', () => renderMessages());

// Customer service: pushes and the answers to our requests alike.
client.on('frame', (f) => {
  if (f.queueUpdate) {
    const q = f.queueUpdate;
    if (!state.session || state.session.sessionId !== q.sessionId || state.session.state !== 'WAITING') {
      // The answer to RequestService (or a requeue): we wait in this line now.
      const known = state.session && state.session.sessionId === q.sessionId ? state.session : {};
      setSession({ conversations: [], ...known, sessionId: q.sessionId, group: q.group, state: 'WAITING' });
    }
    state.queue = q;
    state.view = 'waiting';
  } else if (f.sessionAssigned) {
    const fresh = !state.session || state.session.agent !== f.sessionAssigned.session.agent || state.view !== 'active';
    setSession(f.sessionAssigned.session);
    const agent = f.sessionAssigned.session.agent;
    // By name (the token's or the profile's), once it is known.
    if (fresh) people.want([agent]).then(() => notify(t('agentHere', { agent: people.name(agent) }), 'assign'));
    // What was typed while waiting goes to the agent now, in order.
    for (const h of state.held.splice(0)) send(agent, typeof h === 'string' ? { text: h } : h.content);
    fillHistory();
  } else if (f.sessionTransferred) {
    setSession(f.sessionTransferred.session);
    const agent = f.sessionTransferred.session.agent;
    people.want([agent]).then(() => notify(f.sessionTransferred.session.state === 'WAITING'
      ? t('beingPassed')
      : t('nowTalkingTo', { agent: people.name(agent) })));
  } else if (f.sessionEnded) {
    setSession(f.sessionEnded.session);
  } else if (f.leaveMessageOffer) {
    state.offer = f.leaveMessageOffer;
    state.view = 'offer';
  } else if (f.csState) {
    onCsState(f.csState);
  } else {
    return;
  }
  render();
});

function onCsState(cs) {
  const open = (cs.sessions || []).filter((s) => !fixedGroup || s.group === fixedGroup);
  if (open.length) {
    setSession(open[0]);
    const w = (cs.waiting || []).find((q) => q.sessionId === open[0].sessionId);
    if (w) state.queue = w;
    fillHistory();
    return;
  }
  const last = JSON.parse(tabStore.getItem(LAST_SESSION) || 'null');
  if (last && state.view !== 'offer' && state.view !== 'left') {
    // Our session is no longer open: it ended while we were away.
    if (last.state !== 'ENDED') last.state = 'ENDED';
    setSession(last);
    fillHistory();
    return;
  }
  if (!['offer', 'left', 'rated', 'ended', 'answered'].includes(state.view)) state.view = 'pick';
}

client.on('ready', () => {
  client.csState().catch(notifyError);
});
connectionBanner(client, (status) => {
  if (status === 'signed-out') signOut('chat');
});
client.connect();

// --- views ----------------------------------------------------------------------

const views = {
  loading: () => el('p', { class: 'muted' }, t('connecting')),
  pick: pickView,
  waiting: () => {
    const q = state.queue;
    const where = q ? (Number(q.position || 0) <= 1 ? t('nextInLine') : t('numberInLine', { n: q.position })) : t('inLine');
    const wait = q && Number(q.estimatedWaitS) > 0 ? t('estimatedWait', { wait: duration(Number(q.estimatedWaitS) * 1000) }) : t('shortly');
    return el('section', { class: 'card waiting', id: 'waiting' },
      el('h2', {}, t('waitingTitle')),
      el('p', { id: 'queue-position', 'data-position': q ? q.position || '0' : '' }, where),
      el('p', { id: 'queue-wait', class: 'muted' }, wait),
      state.question ? el('p', { class: 'small' }, t('yourQuestionIs'), el('q', {}, state.question)) : '',
      state.held.length ? el('div', { class: 'small' }, t('heldTitle'),
        el('ul', { id: 'held' }, ...state.held.map((h) => el('li', {}, typeof h === 'string' ? h : h.label)))) : '',
      el('button', { id: 'cancel', onclick: cancel }, t('leaveLine')));
  },
  offer: offerView,
  answered: () => el('section', { class: 'card', id: 'answered' },
    el('p', {}, people.avatar(state.replyTo), ' ', t('answeredBy', { agent: people.name(state.replyTo) })),
    el('button', { class: 'primary', id: 'new-chat', onclick: newChat }, t('newChat'))),
  left: () => el('section', { class: 'card', id: 'left' },
    el('h2', {}, t('thankYou')),
    el('p', {}, t('leftDone')),
    el('button', { class: 'primary', onclick: () => { state.view = 'pick'; render(); } }, t('startChat'))),
  active: () => el('section', { class: 'active-session' },
    el('p', { class: 'muted', id: 'agent-name' }, people.avatar(state.session.agent), ' ', t('talkingTo', { agent: people.name(state.session.agent) }),
      ' ', el('button', { class: 'link', id: 'end', onclick: endSession }, t('endChat')))),
  ended: rateView,
  rated: () => el('section', { class: 'card', id: 'rated' },
    el('h2', {}, t('thanksFeedback')),
    el('button', { class: 'primary', id: 'new-chat', onclick: newChat }, t('newChat'))),
};

/** The customer's ended sessions, newest first, each opening its chat. */
async function pastChats() {
  let sessions = [];
  try {
    sessions = (await api(auth.token, 'GET', `/api/v1/users/${encodeURIComponent(me)}/sessions?limit=10`)).sessions;
  } catch (e) {
    notifyError(e);
  }
  sessions = sessions.filter((s) => !state.session || s.sessionId !== state.session.sessionId);
  if (!sessions.length) return '';
  await people.want(sessions.flatMap((s) => [s.agent, ...(s.previousAgents || [])]));
  return el('section', { class: 'past', id: 'past-chats' },
    el('h3', {}, t('earlierChats')),
    ...sessions.map((s) => {
      const agent = s.agent ? people.name(s.agent) : t('nobodyServed');
      const summary = [t('pastLine', { date: when(s.createdMs), group: s.group, agent }), s.score ? ` · ${t('stars', { n: s.score })}` : ''];
      return pastSessionItem(s, summary, client, me, { nameOf: (u) => people.name(u), mark: handoverMark(me, handoverWords), onError: notifyError });
    }));
}

const handoverWords = (from, to) => t('handover', { from: people.name(from), to: people.name(to) });

async function pickView() {
  const widget = await widgetLook;
  const greeting = widget ? (lang.startsWith('zh') ? widget.greeting_zh : widget.greeting_en) : '';
  const box = el('section', { class: 'card pick', id: 'pick' }, el('h2', {}, t('howCanWeHelp')),
    greeting ? el('p', { id: 'greeting', class: 'greeting user-text' }, greeting) : '');
  let groups = [];
  try {
    groups = (await api(auth.token, 'GET', '/api/v1/service-groups')).groups;
  } catch (e) {
    notifyError(e);
  }
  if (fixedGroup) groups = groups.filter((g) => g.id === fixedGroup);
  const select = el('select', { id: 'group', 'aria-label': t('team') },
    ...groups.map((g) => el('option', { value: g.id }, `${g.name || g.id}${g.agents_online ? '' : t('nobodyOnlineSuffix')}`)));
  if (fixedGroup && !groups.length) select.append(el('option', { value: fixedGroup }, fixedGroup));
  const question = el('textarea', { id: 'question', rows: 3, placeholder: t('questionPlaceholder'), maxLength: 4000 });
  question.value = state.question || '';
  const button = el('button', { type: 'submit', class: 'primary', id: 'request' });
  // Nobody online in the chosen team: the button says what will happen.
  const label = () => {
    const g = groups.find((x) => x.id === (fixedGroup || select.value));
    button.textContent = g && !g.agents_online ? t('leaveMessage') : t('chatWithUs');
  };
  select.addEventListener('change', label);
  label();
  const form = el('form', { id: 'request-form' },
    fixedGroup ? el('input', { type: 'hidden', value: fixedGroup }) : el('label', { for: 'group' }, t('team')),
    fixedGroup ? null : select,
    el('label', { for: 'question' }, t('yourQuestion')), question,
    button);
  enterSubmits(question, form);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const group = fixedGroup || select.value;
    if (!group) return notify(t('noTeam'), 'error');
    const body = { page: shopPage, userAgent: navigator.userAgent.slice(0, 512) };
    if (question.value.trim()) body.firstMessage = { text: question.value.trim() };
    state.question = question.value.trim();
    try {
      await client.requestService(group, body);
    } catch (e) {
      notifyError(e);
    }
  });
  box.append(form);
  const past = await pastChats();
  return el('div', { class: 'stack' }, box, past);
}

function offerView() {
  const o = state.offer;
  // Our own words for the known reasons; the server's only for others.
  const why = {
    NO_AGENT_ONLINE: t('whyNobody'),
    QUEUE_FULL: t('whyFull'),
    WAITED_TOO_LONG: t('whyWaited'),
  }[o.reason] || o.message || '';
  const text = el('textarea', { id: 'left-text', rows: 4, required: true, maxLength: 4000, placeholder: t('yourMessage') });
  // What was typed as the question is not lost.
  text.value = [state.question, ...state.held.filter((h) => typeof h === 'string')].filter(Boolean).join('\n');
  const contact = el('input', { id: 'left-contact', placeholder: t('contactPlaceholder'), maxLength: 256 });
  const form = el('form', { class: 'card', id: 'offer' },
    el('h2', {}, t('leaveMessage')),
    el('p', { id: 'offer-reason' }, t('offerText', { why })),
    el('label', { for: 'left-text' }, t('messageForTeam')), text,
    el('label', { for: 'left-contact' }, t('contact')), contact,
    el('button', { type: 'submit', class: 'primary', id: 'leave' }, t('leaveTheMessage')),
    el('button', { type: 'button', class: 'link', onclick: () => { state.view = 'pick'; render(); } }, t('back')));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      await client.leaveMessage(o.group, { text: text.value.trim() }, contact.value.trim());
      state.question = '';
      state.held = [];
      state.view = 'left';
      render();
    } catch (e) {
      notifyError(e);
    }
  });
  return form;
}

function rateView() {
  const s = state.session;
  let score = 0;
  const stars = el('div', { class: 'stars', role: 'radiogroup', 'aria-label': t('score') });
  // A radio group: one star checked, arrow keys move the choice, one tab stop.
  const choose = (i, focus) => {
    score = i;
    for (const b of stars.children) {
      const n = Number(b.dataset.score);
      b.classList.toggle('on', n <= i);
      b.setAttribute('aria-checked', String(n === i));
      b.tabIndex = n === (i || 1) ? 0 : -1;
      if (focus && n === i) b.focus();
    }
  };
  for (let i = 1; i <= 5; i += 1) {
    stars.append(el('button', {
      type: 'button', class: 'star', 'data-score': String(i), role: 'radio', 'aria-label': t('starsOf5', { n: i }),
      'aria-checked': 'false', tabIndex: i === 1 ? 0 : -1,
      onclick: () => choose(i, false),
      onkeydown: (ev) => {
        const step = { ArrowRight: 1, ArrowUp: 1, ArrowLeft: -1, ArrowDown: -1 }[ev.key];
        if (!step) return;
        ev.preventDefault();
        choose(Math.min(5, Math.max(1, (score || i) + step)), true);
      },
    }, '★'));
  }
  const comment = el('textarea', { id: 'rate-comment', rows: 2, maxLength: 1000, placeholder: t('anythingToAdd') });
  const form = el('form', { class: 'card', id: 'rate' },
    el('h2', {}, t('chatEnded')),
    el('p', { class: 'muted' }, s.endReason ? `(${reasonWords(s.endReason)})` : ''),
    el('p', {}, t('howDidWeDo')), stars, comment,
    el('button', { type: 'submit', class: 'primary', id: 'rate-submit' }, t('sendRating')),
    el('button', { type: 'button', class: 'link', onclick: newChat }, t('skip')));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    if (!score) return notify(t('pickStars'), 'error');
    try {
      await client.rate(s.sessionId, score, comment.value.trim());
      tabStore.setItem(LAST_SESSION, JSON.stringify({ ...s, rated: true }));
      state.view = 'rated';
      render();
    } catch (e) {
      if (e.code === 'CONFLICT') {
        state.view = 'rated';
        render();
      } else notifyError(e);
    }
  });
  return form;
}

/** An agent answered a message we left: the thread and a reply box, no other form. */
function answered(agent) {
  state.replyTo = agent;
  if (['pick', 'left', 'loading'].includes(state.view)) state.view = 'answered';
  people.want([agent]).then(() => render());
  render();
}

// Her history is the server's: in a browser that has never seen it, the
// answer to a message she left is found in her conversation list (a
// conversation with activity in the last week after any session of it
// ended), and opens as it would have live.
const ANSWER_WINDOW_MS = 7 * 24 * 3600 * 1000;
client.on('conversations', (list) => findAnswer(list).catch(() => {}));

async function findAnswer(list) {
  if (state.replyTo || !['pick', 'left', 'loading'].includes(state.view)) return;
  const since = Date.now() - ANSWER_WINDOW_MS;
  const recent = list.filter((c) => c.peer && c.peer !== me && c.lastMessage && Number(c.lastMessage.serverTimeMs) >= since).slice(0, 5);
  if (!recent.length) return;
  const { sessions } = await api(auth.token, 'GET', `/api/v1/users/${encodeURIComponent(me)}/sessions?limit=20`);
  for (const c of recent) {
    const ended = Math.max(0, ...sessions.filter((p) => (p.conversations || []).includes(c.conversationId) || p.conversationId === c.conversationId)
      .map((p) => Number(p.endedMs || 0)));
    if (Number(c.lastMessage.serverTimeMs) <= ended) continue;
    if (state.replyTo || !['pick', 'left', 'loading'].includes(state.view)) return;
    show([c.conversationId]);
    await client.catchUp(c.conversationId);
    answered(c.peer);
    return;
  }
}

function newChat() {
  tabStore.removeItem(LAST_SESSION);
  // The old chat leaves the live list: it is under "Your earlier chats".
  shown.length = 0;
  state.replyTo = null;
  state.session = null;
  state.queue = null;
  state.view = 'pick';
  render();
}

async function cancel() {
  try {
    await client.cancelRequest(state.session.group);
    state.held = [];
    tabStore.removeItem(LAST_SESSION);
    state.session = null;
    state.view = 'pick';
    render();
  } catch (e) {
    notifyError(e);
  }
}

async function endSession() {
  try {
    await client.endSession(state.session.sessionId);
  } catch (e) {
    notifyError(e);
  }
}

// --- the conversation and the composer --------------------------------------------

const stage = el('div', { id: 'stage' });
const older = el('button', { class: 'link', id: 'older', hidden: true, onclick: pageBack }, t('earlier'));
// Focusable, so that keyboard users can scroll it.
const list = el('div', { id: 'messages', class: 'messages', 'aria-live': 'polite', tabIndex: 0, role: 'log', 'aria-label': t('conversation') });
const input = el('textarea', { id: 'input', rows: 2, placeholder: t('typeMessage'), maxLength: 4000, 'aria-label': t('chatMessage') });
const sendBtn = el('button', { class: 'primary', id: 'send', type: 'submit' }, t('send'));
// A photo of the broken parcel: the attach button, paste, or drop on the chat.
useFiles(client);
const attach = uploads(input, list, (meta) => {
  const to = chatPeer();
  if (to) send(to, contentOfUpload(meta));
  else if (state.view === 'waiting') {
    // Held with what was typed, and sent in order once an agent joins.
    state.held.push({ content: contentOfUpload(meta), label: `📎 ${meta.name || t('photo')}` });
    drawnView = null;
    render();
  } else notify(t('attachLater'), 'info');
});
const composer = el('form', { id: 'composer', class: 'composer' }, attach.button, input, sendBtn);
enterSubmits(input, composer);
// Typing, both ways, with whom we chat.
function chatPeer() {
  return state.view === 'active' && state.session ? state.session.agent : state.replyTo || null;
}
const stopTyping = typingSignals(client, input, chatPeer);
const typingLine = el('div', { id: 'typing', class: 'typing muted small', hidden: true, 'aria-live': 'polite' });
typingIndicator(client, typingLine, chatPeer, (u) => t('isTyping', { name: people.name(u) }));
composer.addEventListener('submit', (ev) => {
  ev.preventDefault();
  const text = input.value.trim();
  if (text && state.view === 'waiting') {
    // Held until an agent joins (they get the question first).
    input.value = '';
    state.held.push(text);
    drawnView = null;
    render();
    return;
  }
  const to = state.view === 'active' && state.session ? state.session.agent : state.replyTo;
  if (!text || !to) return;
  input.value = '';
  stopTyping();
  send(to, { text });
});

/** Sends through the SDK's outbox: shown as "sending…" until stored, or failed with why. */
function send(toUser, content) {
  client.send(toUser, content).then(
    (ack) => {
      show([ack.conversationId]);
      renderMessages();
    },
    () => renderMessages(),
  );
}

async function pageBack() {
  if (!shown.length) return;
  try {
    for (const c of shown) {
      const r = await client.loadOlder(c, { sessionId: state.session ? state.session.sessionId : undefined });
      state.hasMore.set(c, r.hasMore);
    }
  } catch (e) {
    notifyError(e);
  }
  renderMessages();
}

function renderMessages() {
  const peer = state.session ? state.session.agent : state.replyTo;
  // A conversation is per customer and agent: only this session's part of it.
  const since = state.session && state.session.createdMs ? Number(state.session.createdMs) - 1000 : 0;
  const entries = entriesOf(client, shown, peer).filter((e) => e.state !== 'stored' || Number(e.message.serverTimeMs) >= since);
  drawMessages(list, entries, me, {
    nameOf: (u) => people.name(u),
    mark: state.session ? handoverMark(me, handoverWords) : undefined,
    onRetry: (m) => client.retry(m.clientMsgId).then(() => renderMessages(), (e) => notify(describe(e), 'error')),
    peerRead: (c) => client.peerReadSeq(c),
    ...recall,
  });
  // What is on screen is read.
  if (!away()) for (const c of shown) if (client.newestSeq(c)) client.markRead(c, client.newestSeq(c));
  older.hidden = !shown.some((c) => state.hasMore.get(c) !== false && client.oldestSeq(c) > 1);
}

let renderSeq = 0;
let drawnView = null;
/** Views holding a form people type into are drawn once, not on every event. */
const FORMS = new Set(['pick', 'offer', 'ended', 'left', 'rated']);
async function render() {
  const mine = ++renderSeq;
  if (!(FORMS.has(state.view) && drawnView === state.view)) {
    const node = await views[state.view]();
    if (mine !== renderSeq) return; // a newer render started while this one loaded
    stage.replaceChildren(node);
    drawnView = state.view;
  }
  // Chatting in a session, or replying to the agent who answered a left message.
  const chatting = ['active', 'waiting'].includes(state.view) || (!!state.replyTo && state.view !== 'offer');
  input.placeholder = state.view === 'waiting' ? t('typeWhileWaiting')
    : state.view === 'active' || !state.replyTo ? t('typeMessage') : t('replyTo', { agent: people.name(state.replyTo) });
  composer.hidden = !chatting;
  input.disabled = !chatting;
  sendBtn.disabled = !chatting;
  document.body.dataset.view = state.view;
  renderMessages();
  if (chatting && document.activeElement !== input) input.focus();
}

// Her own history, behind a toggle so the chat keeps the room.
const finder = searchPanel(() => client, me, { nameOf: (u) => people.name(u) });
finder.hidden = true;
const findToggle = el('button', { type: 'button', class: 'link', id: 'search-toggle', 'aria-expanded': 'false', onclick: () => {
  finder.hidden = !finder.hidden;
  findToggle.setAttribute('aria-expanded', String(!finder.hidden));
  if (!finder.hidden) finder.querySelector('input').focus();
} }, t('searchToggle'));
$('header.top').insertBefore(findToggle, $('#signout'));
main.replaceChildren(el('div', { class: 'chat' }, finder, older, list, typingLine, stage, composer));
render();
