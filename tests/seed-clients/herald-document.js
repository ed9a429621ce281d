// herald.js's collaborative documents (crates/server/web/herald.js, unchanged) under Node
// against a running Herald, across real connection losses. Usage:
//   node herald-document.js http://host:port <doc> <token A> <token B> [window]
// A and B join <doc>. A's TCP connection is cut (destroyed under the WebSocket, no close
// frame) while the reconnect is held off (A's WebSocket connects to a closed port until let
// through), so A edits offline while B edits, then reconnects:
//   1. offline: A's edits made while disconnected (the first one sent into the dead socket);
//   2. ackLost: A's change in flight is committed but its acknowledgement is lost (herald.js
//      hears nothing more from the connection, which is cut once the server has the change), and
//      A edits on while B does;
//   3. resync (with [window], the server's document_window): B makes more changes than the
//      server keeps while A is away with an offline edit: A gets a snapshot and `resync`.
// After each, A, B and the server have the same text, A's edits are in it exactly once, and
// the server's log holds each of A's change ids once. Prints one JSON object; exits 1 with
// what went wrong.
const fs = require('fs');
const path = require('path');
const WebSocket = require('ws');

const [base, doc, tokenA, tokenB, windowArg] = process.argv.slice(2);
const WAIT_MS = 10000;

function until(what, pred, detail = () => '') {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const tick = async () => {
      let ok = false;
      try {
        ok = await pred();
      } catch (e) {
        return reject(e);
      }
      if (ok) return resolve();
      if (Date.now() - started > WAIT_MS) return reject(new Error(`timed out waiting for ${what}${detail()}`));
      setTimeout(tick, 20);
    };
    tick();
  });
}

function check(ok, what) {
  if (!ok) throw new Error(what);
}

const count = (text, part) => text.split(part).length - 1;

async function api(route) {
  const res = await fetch(`${base}${route}`, { headers: { authorization: `Bearer ${tokenB}` } });
  const body = await res.json();
  if (!res.ok) throw new Error(`${route}: ${res.status} ${JSON.stringify(body)}`);
  return body;
}

const serverDoc = () => api(`/api/documents/${encodeURIComponent(doc)}`);

async function main() {
  // herald.js is an ES module without a package.json of its own: loaded as one from its text.
  const source = fs.readFileSync(path.join(__dirname, '../../crates/server/web/herald.js'), 'utf8');
  const { Herald } = await import(`data:text/javascript;base64,${Buffer.from(source).toString('base64')}`);

  // A's connections go to a closed port while `held`: a reconnect that fails until let through.
  let held = false;
  class GatedWebSocket extends WebSocket {
    constructor(url, ...rest) {
      super(held ? 'ws://127.0.0.1:9/ws' : url, ...rest);
    }
  }
  const options = { url: base, baseDelayMs: 40, maxDelayMs: 200 };
  const a = new Herald({ ...options, token: tokenA, WebSocket: GatedWebSocket });
  const b = new Herald({ ...options, token: tokenB, WebSocket });
  const docA = a.document(doc);
  const docB = b.document(doc);
  await Promise.all([docA.ready, docB.ready]);
  const resyncs = [];
  docA.on('resync', (r) => resyncs.push(r));
  const settled = (d) => d.joined && !d.sent && d.waiting.length === 0;

  /** A, B and the server agree. */
  async function converged(what) {
    let last = null;
    await until(`${what}: A, B and the server converge`, async () => {
      if (!settled(docA) || !settled(docB) || docA.text !== docB.text) return false;
      const state = await serverDoc();
      last = state;
      return state.content === docA.text && state.version === docA.version && state.version === docB.version;
    }, () => `: A ${JSON.stringify(docA.text)} (unacknowledged: ${JSON.stringify([docA.sent, ...docA.waiting])}), B ${JSON.stringify(docB.text)}, server ${JSON.stringify(last)}`);
    return docA.text;
  }

  /** Cuts A's TCP connection under its WebSocket and holds its reconnect off. */
  function cut() {
    held = true;
    a.socket._socket.destroy();
  }
  const reconnected = () => new Promise((resolve) => {
    const off = a.on('state', ({ state }) => {
      if (state === 'open') {
        off();
        resolve();
      }
    });
  });
  const edit = async (d, at, text) => {
    d.edit(at(d.text), 0, text);
  };
  const end = () => (t) => t.length;
  const start = () => () => 0;

  docA.edit(0, 0, 'hello world');
  await converged('start');

  // 1. Offline edits.
  cut();
  edit(docA, end(), ' [a1]'); // sent into the dead socket before A notices
  await until('A notices the cut', () => a.state === 'reconnecting');
  edit(docA, start(), '[a2] ');
  edit(docA, (t) => t.indexOf('world'), '[a3]');
  edit(docB, start(), '<b1>');
  edit(docB, end(), '<b2>');
  await until('B acknowledged', () => settled(docB));
  check(a.state !== 'open', 'A stayed away while B edited');
  const back1 = reconnected();
  held = false;
  await back1;
  const offline = await converged('offline');
  for (const part of [' [a1]', '[a2] ', '[a3]', '<b1>', '<b2>']) {
    check(count(offline, part) === 1, `offline: ${JSON.stringify(part)} once in ${JSON.stringify(offline)}`);
  }

  // 2. The change in flight is committed, its acknowledgement lost.
  edit(docA, start(), '{inflight}');
  const inflight = docA.sent;
  check(inflight && inflight.changeId, 'the change is in flight with a changeId');
  // herald.js hears nothing more on this connection: the acknowledgement goes unread.
  a.socket.onmessage = null;
  await until('the server commits the change in flight', async () => (await serverDoc()).content.includes('{inflight}'));
  edit(docB, end(), '<b3>');
  await until('B acknowledged', () => settled(docB));
  edit(docA, end(), '{after}'); // waits behind the change in flight
  cut();
  await until('A notices the cut', () => a.state === 'reconnecting');
  edit(docB, start(), '<b4>');
  await until('B acknowledged', () => settled(docB));
  const back2 = reconnected();
  held = false;
  await back2;
  const ackLost = await converged('ackLost');
  for (const part of ['{inflight}', '{after}', '<b3>', '<b4>']) {
    check(count(ackLost, part) === 1, `ackLost: ${JSON.stringify(part)} once in ${JSON.stringify(ackLost)}`);
  }
  const log = await api(`/api/documents/${encodeURIComponent(doc)}/changes?limit=1000`);
  const ids = log.changes.map((e) => e.data.changeId).filter((id) => id && id.startsWith(docA.changePrefix));
  check(ids.length === new Set(ids).size, `each of A's change ids once in the log: ${ids}`);
  check(ids.includes(inflight.changeId), 'the change in flight is in the log');
  check(resyncs.length === 0, `no resync while the server kept the changes: ${JSON.stringify(resyncs)}`);

  // 3. Away for longer than the server keeps changes.
  let resync = null;
  if (windowArg) {
    cut();
    await until('A notices the cut', () => a.state === 'reconnecting');
    edit(docA, start(), '{lost}');
    for (let i = 0; i < Number(windowArg) + 2; i++) {
      edit(docB, end(), '.');
      await until('B acknowledged', () => settled(docB));
    }
    const back3 = reconnected();
    held = false;
    await back3;
    resync = await converged('resync');
    check(!resync.includes('{lost}'), 'the offline edit gave way to the snapshot');
    check(resyncs.length === 1 && resyncs[0].dropped.some((c) => c.text === '{lost}'), `resync: ${JSON.stringify(resyncs)}`);
  }

  a.close();
  b.close();
  return { offline, ackLost, resync, inflight: inflight.changeId };
}

main().then(
  (out) => {
    console.log(JSON.stringify(out));
    process.exit(0);
  },
  (e) => {
    console.error(e.stack || String(e));
    process.exit(1);
  },
);
