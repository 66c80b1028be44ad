// The customer chat widget (/chat). The embedding shop page passes
// `#token=<token>&group=<group>`; without a token the dev sign-in form shows
// (when the server offers it). States: pick a group → waiting in line →
// chatting with an agent → ended (rate it); or leave a message when offered.

import { Client, MessageStore, api, wsUrl, deviceIdFor, catchUp, loadOlder, storage, sendTracked } from './dd.js';
import { el, $, duration, notify, notifyError, connectionBanner, signIn, signOut, drawMessages, enterSubmits } from './ui.js';

const main = $('#main');
const auth = await signIn('chat', 'customer', main);
const me = auth.claims.sub;
const fixedGroup = auth.params.get('group') || new URLSearchParams(location.search).get('group');
$('#who').textContent = `${me} · ${auth.claims.tenant}`;
const signoutBtn = $('#signout');
signoutBtn.hidden = false;
signoutBtn.onclick = () => signOut('chat');

const client = new Client({ url: wsUrl(auth.info), token: auth.token, deviceId: deviceIdFor(auth.claims.tenant, me, 'web') });
const store = new MessageStore();
/** Conversations shown, oldest first: the session's, then any other that delivered to us. */
const shown = [];
const tabStore = storage('session');
const LAST_SESSION = `dd.chat.last.${auth.claims.tenant}.${me}`;

const state = {
  view: 'loading', // pick | waiting | offer | active | ended | rated | left
  session: null,
  queue: null, // { position, estimatedWaitS }
  offer: null,
  hasMore: new Map(),
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
  const jobs = shown.map((c) => catchUp(client, store, c, state.session.sessionId).catch(() => {}));
  await Promise.all(jobs);
  render();
}

client.addEventListener('frame', (ev) => {
  const f = ev.detail;
  if (f.deliver) {
    const m = f.deliver.message;
    show([m.conversationId]);
    const outsideSession = !state.session || !(state.session.conversations || []).includes(m.conversationId);
    if (m.fromUser !== me && outsideSession && !['active', 'waiting'].includes(state.view) && state.replyTo !== m.fromUser) {
      // An agent answers a message we left: we can reply to them.
      state.replyTo = m.fromUser;
      store.add(m);
      render();
      return;
    }
    if (store.add(m)) renderMessages();
    return;
  }
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
    if (fresh) notify(`${f.sessionAssigned.session.agent} is here to help you.`, 'assign');
    fillHistory();
  } else if (f.sessionTransferred) {
    setSession(f.sessionTransferred.session);
    notify(f.sessionTransferred.session.state === 'WAITING'
      ? 'You are being passed to another agent; please wait a moment.'
      : `You are now talking to ${f.sessionTransferred.session.agent}.`);
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
  if (!['offer', 'left', 'rated', 'ended'].includes(state.view)) state.view = 'pick';
}

client.addEventListener('ready', () => {
  client.request({ csStateRequest: {} }).catch(notifyError);
});
connectionBanner(client, (status) => {
  if (status === 'signed-out') signOut('chat');
});
client.start();

// --- views ----------------------------------------------------------------------

const views = {
  loading: () => el('p', { class: 'muted' }, 'Connecting…'),
  pick: pickView,
  waiting: () => {
    const q = state.queue;
    const where = q ? (Number(q.position || 0) <= 1 ? 'You are next in line.' : `You are number ${q.position} in line.`) : 'You are in line.';
    const wait = q && Number(q.estimatedWaitS) > 0 ? `Estimated wait: about ${duration(Number(q.estimatedWaitS) * 1000)}.` : 'An agent will be with you shortly.';
    return el('section', { class: 'card waiting', id: 'waiting' },
      el('h2', {}, 'Waiting for an agent'),
      el('p', { id: 'queue-position', 'data-position': q ? q.position || '0' : '' }, where),
      el('p', { id: 'queue-wait', class: 'muted' }, wait),
      state.question ? el('p', { class: 'small' }, 'Your question: ', el('q', {}, state.question)) : '',
      el('button', { id: 'cancel', onclick: cancel }, 'Leave the line'));
  },
  offer: offerView,
  left: () => el('section', { class: 'card', id: 'left' },
    el('h2', {}, 'Thank you'),
    el('p', {}, 'Your message was left for the team; the answer will reach you here, also if you come back later.'),
    el('button', { class: 'primary', onclick: () => { state.view = 'pick'; render(); } }, 'Start a chat')),
  active: () => el('section', { class: 'active-session' },
    el('p', { class: 'muted', id: 'agent-name' }, `You are talking to ${state.session.agent}.`,
      ' ', el('button', { class: 'link', id: 'end', onclick: endSession }, 'End chat'))),
  ended: rateView,
  rated: () => el('section', { class: 'card', id: 'rated' },
    el('h2', {}, 'Thanks for your feedback'),
    el('button', { class: 'primary', id: 'new-chat', onclick: newChat }, 'Start a new chat')),
};

async function pickView() {
  const box = el('section', { class: 'card pick', id: 'pick' }, el('h2', {}, 'How can we help?'));
  let groups = [];
  try {
    groups = (await api(auth.token, 'GET', '/api/v1/service-groups')).groups;
  } catch (e) {
    notifyError(e);
  }
  if (fixedGroup) groups = groups.filter((g) => g.id === fixedGroup);
  const select = el('select', { id: 'group', 'aria-label': 'team' },
    ...groups.map((g) => el('option', { value: g.id }, `${g.name || g.id}${g.agents_online ? '' : ' (nobody online: leave a message)'}`)));
  if (fixedGroup && !groups.length) select.append(el('option', { value: fixedGroup }, fixedGroup));
  const question = el('textarea', { id: 'question', rows: 3, placeholder: 'Your question (optional)', maxLength: 4000 });
  question.value = state.question || '';
  const button = el('button', { type: 'submit', class: 'primary', id: 'request' });
  // Nobody online in the chosen team: the button says what will happen.
  const label = () => {
    const g = groups.find((x) => x.id === (fixedGroup || select.value));
    button.textContent = g && !g.agents_online ? 'Leave a message' : 'Chat with us';
  };
  select.addEventListener('change', label);
  label();
  const form = el('form', { id: 'request-form' },
    fixedGroup ? el('input', { type: 'hidden', value: fixedGroup }) : el('label', { for: 'group' }, 'Team'),
    fixedGroup ? null : select,
    el('label', { for: 'question' }, 'Your question'), question,
    button);
  enterSubmits(question, form);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const group = fixedGroup || select.value;
    if (!group) return notify('There is no team to chat with.', 'error');
    const body = { group };
    if (question.value.trim()) body.firstMessage = { text: question.value.trim() };
    state.question = question.value.trim();
    try {
      await client.request({ requestService: body });
    } catch (e) {
      notifyError(e);
    }
  });
  box.append(form);
  return box;
}

function offerView() {
  const o = state.offer;
  // Our own words for the known reasons; the server's only for others.
  const why = {
    NO_AGENT_ONLINE: 'Nobody is online right now.',
    QUEUE_FULL: 'All our agents are busy and the line is full.',
    WAITED_TOO_LONG: 'Sorry for the long wait: nobody could take you in time.',
  }[o.reason] || o.message || '';
  const text = el('textarea', { id: 'left-text', rows: 4, required: true, maxLength: 4000, placeholder: 'Your message' });
  // What was typed as the question is not lost.
  text.value = state.question || '';
  const contact = el('input', { id: 'left-contact', placeholder: 'How to reach you (optional)', maxLength: 256 });
  const form = el('form', { class: 'card', id: 'offer' },
    el('h2', {}, 'Leave a message'),
    el('p', { id: 'offer-reason' }, `${why} Leave a message and we will answer you here.`),
    el('label', { for: 'left-text' }, 'Your message for the team'), text,
    el('label', { for: 'left-contact' }, 'Contact'), contact,
    el('button', { type: 'submit', class: 'primary', id: 'leave' }, 'Leave the message'),
    el('button', { type: 'button', class: 'link', onclick: () => { state.view = 'pick'; render(); } }, 'Back'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      await client.request({ leaveMessage: { group: o.group, content: { text: text.value.trim() }, contact: contact.value.trim() } });
      state.question = '';
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
  const stars = el('div', { class: 'stars', role: 'radiogroup', 'aria-label': 'score' });
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
      type: 'button', class: 'star', 'data-score': String(i), role: 'radio', 'aria-label': `${i} of 5`,
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
  const comment = el('textarea', { id: 'rate-comment', rows: 2, maxLength: 1000, placeholder: 'Anything to add? (optional)' });
  const form = el('form', { class: 'card', id: 'rate' },
    el('h2', {}, 'The chat has ended'),
    el('p', { class: 'muted' }, s.endReason ? `(${s.endReason})` : ''),
    el('p', {}, 'How did we do?'), stars, comment,
    el('button', { type: 'submit', class: 'primary', id: 'rate-submit' }, 'Send rating'),
    el('button', { type: 'button', class: 'link', onclick: newChat }, 'Skip'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    if (!score) return notify('Pick 1 to 5 stars.', 'error');
    try {
      await client.request({ rate: { sessionId: s.sessionId, score, comment: comment.value.trim() } });
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

function newChat() {
  tabStore.removeItem(LAST_SESSION);
  state.session = null;
  state.queue = null;
  state.view = 'pick';
  render();
}

async function cancel() {
  try {
    await client.request({ cancelRequest: { group: state.session.group } });
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
    await client.request({ endSession: { sessionId: state.session.sessionId } });
  } catch (e) {
    notifyError(e);
  }
}

// --- the conversation and the composer --------------------------------------------

const stage = el('div', { id: 'stage' });
const older = el('button', { class: 'link', id: 'older', hidden: true, onclick: pageBack }, 'Earlier messages');
// Focusable, so that keyboard users can scroll it.
const list = el('div', { id: 'messages', class: 'messages', 'aria-live': 'polite', tabIndex: 0, role: 'log', 'aria-label': 'conversation' });
const input = el('textarea', { id: 'input', rows: 2, placeholder: 'Type a message, Enter to send', maxLength: 4000, 'aria-label': 'chat message' });
const sendBtn = el('button', { class: 'primary', id: 'send', type: 'submit' }, 'Send');
const composer = el('form', { id: 'composer', class: 'composer' }, input, sendBtn);
enterSubmits(input, composer);
composer.addEventListener('submit', (ev) => {
  ev.preventDefault();
  const text = input.value.trim();
  const to = state.view === 'active' && state.session ? state.session.agent : state.replyTo;
  if (!text || !to) return;
  input.value = '';
  send(to, { text });
});

function send(toUser, content) {
  sendTracked(client, store, me, toUser, content, renderMessages).then((ack) => {
    if (ack) {
      show([ack.conversationId]);
      renderMessages();
    }
  });
}

async function pageBack() {
  if (!shown.length) return;
  try {
    for (const c of shown) {
      const r = await loadOlder(client, store, c, state.session && state.session.sessionId);
      state.hasMore.set(c, r.hasMore);
    }
  } catch (e) {
    notifyError(e);
  }
  renderMessages();
}

function renderMessages() {
  const peer = state.session ? state.session.agent : state.replyTo;
  drawMessages(list, store.list(shown, peer), me, {
    onRetry: (m) => {
      store.local.delete(m.clientMsgId);
      send(m.toUser, m.content);
    },
  });
  older.hidden = !shown.some((c) => state.hasMore.get(c) !== false && store.oldestSeq(c) > 1);
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
  const chatting = state.view === 'active' || (!!state.replyTo && !['waiting', 'offer'].includes(state.view));
  input.placeholder = state.view === 'active' || !state.replyTo ? 'Type a message, Enter to send' : `Reply to ${state.replyTo}, Enter to send`;
  composer.hidden = !chatting;
  input.disabled = !chatting;
  sendBtn.disabled = !chatting;
  document.body.dataset.view = state.view;
  renderMessages();
  if (chatting && document.activeElement !== input) input.focus();
}

main.replaceChildren(el('div', { class: 'chat' }, older, list, stage, composer));
render();
