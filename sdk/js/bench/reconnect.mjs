// Reconnect after a 1 s network drop, resumed and not: how long from the
// new socket to the first message, and the server's CPU per reconnect.
//
// Two scenarios, each run against a server with resume on (im.resume_window
// 5m) and one with resume off ("0s"):
//   new:     the device drops, a message is sent to it while it is away, it
//            reconnects: time to that message;
//   unacked: a message was delivered and not acked when the device dropped,
//            it reconnects: time to the message delivered again.
// The device also watches 20 users' presence, which a resumed session keeps
// and a fresh one asks for again (as the SDK does). Raw JSON frames over the
// `ws` package (no SDK backoff in the figure). One client at a time; the
// server and this script share the machine's cores.
//
//   node sdk/js/bench/reconnect.mjs [rounds]     (DD_BIN: the server binary; a release build)

import WebSocket from 'ws';
import { readFileSync } from 'node:fs';
import { Server, token, sleep } from '../test/harness.mjs';

const rounds = Number(process.argv[2] ?? 200);
const WATCHED = [...Array(20).keys()].map((i) => `friend${i}`);

function open(url) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    const frames = [];
    const waiters = [];
    ws.on('message', (data) => {
      const f = JSON.parse(data.toString());
      const w = waiters.findIndex((x) => x.test(f));
      if (w >= 0) waiters.splice(w, 1)[0].resolve(f);
      else frames.push(f);
    });
    ws.next = (test) => {
      const i = frames.findIndex(test);
      if (i >= 0) return Promise.resolve(frames.splice(i, 1)[0]);
      return new Promise((r) => waiters.push({ test, resolve: r }));
    };
    ws.send1 = (f) => ws.send(JSON.stringify(f));
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
  });
}

async function signIn(url, user, device, resumeToken = '') {
  const ws = await open(url);
  ws.send1({ reqId: '1', auth: { token: token(user), deviceId: device, resumeToken } });
  const ok = (await ws.next((f) => f.reqId === '1')).authOk;
  if (!ok) throw new Error('sign-in refused');
  return { ws, ok };
}

/** CPU seconds the process has used (user + system). */
function cpu(pid) {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(f[11]) + Number(f[12])) / 100;
}

function pct(xs, p) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
}

async function run(resume, scenario) {
  const server = await Server.start(`[im]\nresume_window = "${resume ? '5m' : '0s'}"\n`);
  try {
    const alice = (await signIn(server.url, 'alice', 'a1')).ws;
    let { ws: bob, ok } = await signIn(server.url, 'bob', 'b1');
    bob.send1({ reqId: '2', presenceSubscribe: { users: WATCHED } });
    await bob.next((f) => f.reqId === '2');
    let req = 10;
    const times = [];
    let resumed = 0;
    let cpuSpent = 0;
    for (let i = 0; i < rounds; i += 1) {
      let msgId = '';
      if (scenario === 'unacked') {
        alice.send1({ reqId: String(++req), send: { clientMsgId: `u${i}`, toUser: 'bob', content: { text: `m${i}` } } });
        msgId = (await bob.next((f) => f.deliver)).deliver.message.msgId; // delivered, not acked
      }
      bob.terminate(); // the network goes: no Close frame
      await sleep(1000);
      if (scenario === 'new') {
        const r = String(++req);
        alice.send1({ reqId: r, send: { clientMsgId: `n${i}`, toUser: 'bob', content: { text: `m${i}` } } });
        msgId = (await alice.next((f) => f.reqId === r)).sendAck.msgId;
      }
      const c0 = cpu(server.proc.pid);
      const t0 = performance.now();
      ({ ws: bob, ok } = await signIn(server.url, 'bob', 'b1', resume ? ok.resumeToken : ''));
      if (!ok.resumed) {
        bob.send1({ reqId: '2', presenceSubscribe: { users: WATCHED } });
      }
      await bob.next((f) => f.deliver?.message?.msgId === msgId);
      times.push(performance.now() - t0);
      if (!ok.resumed) await bob.next((f) => f.reqId === '2');
      await sleep(20); // the server settles (presence answers, the events pass)
      cpuSpent += cpu(server.proc.pid) - c0;
      if (ok.resumed) resumed += 1;
      bob.send1({ reqId: '0', ack: { msgIds: [msgId] } });
    }
    alice.close();
    bob.close();
    return { times, resumed, cpuMs: (cpuSpent / rounds) * 1000 };
  } finally {
    await server.stop();
  }
}

console.log(`${rounds} reconnects after a 1 s drop each; server and client share this machine's cores`);
for (const scenario of ['new', 'unacked']) {
  for (const resume of [true, false]) {
    const r = await run(resume, scenario);
    const f = (x) => x.toFixed(2);
    console.log(
      `${scenario.padEnd(8)} resume ${resume ? 'on ' : 'off'}: resumed ${r.resumed}/${rounds}; ` +
        `reconnect to message p50 ${f(pct(r.times, 50))} ms, p99 ${f(pct(r.times, 99))} ms; ` +
        `server CPU ${f(r.cpuMs)} ms per reconnect`,
    );
  }
}
