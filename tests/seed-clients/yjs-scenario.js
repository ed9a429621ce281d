// Drives Yjs clients (`yjs` + `y-websocket`, unchanged) against a running Herald's y-websocket
// endpoint (/yjs/{name}?token=…). Usage:
//   node yjs-scenario.js edit ws://host:port <doc> <token A> <token B>
//     two clients edit at once and converge, awareness reaches the other and is cleared when
//     its client leaves, a late joiner receives the full state; prints {"text": …}
//   node yjs-scenario.js converge ws://a,ws://b,ws://c <doc> <token A> <token B>
//     A on the first server, B on the second: A's awareness reaches B, they edit at once and
//     converge; a late joiner on the last receives the full state and A's awareness; A's
//     awareness is cleared at B when A leaves; prints {"text": …}
//   node yjs-scenario.js read ws://host:port <doc> <token>
//     prints {"text": …} once synced
// Exits 1 with what was missing.
const Y = require('yjs');
const { WebsocketProvider } = require('y-websocket');
const WebSocket = require('ws');

const [mode, base, doc, ...tokens] = process.argv.slice(2);
const WAIT_MS = 5000;

function until(what, pred) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const tick = () => {
      if (pred()) return resolve();
      if (Date.now() - started > WAIT_MS) return reject(new Error(`timed out waiting for ${what}`));
      setTimeout(tick, 10);
    };
    tick();
  });
}

const bases = base.split(',');

function client(token, server = bases[0]) {
  const ydoc = new Y.Doc();
  const provider = new WebsocketProvider(`${server}/yjs`, doc, ydoc, {
    params: { token },
    WebSocketPolyfill: WebSocket,
    disableBc: true,
  });
  return { ydoc, provider, text: ydoc.getText('text') };
}

async function synced(c) {
  await until('sync', () => c.provider.synced);
}

// Concurrent edits on `a` and `b`, made before either sees the other's; resolves with the
// converged text.
async function concurrentEdits(a, b) {
  a.text.insert(0, 'hello ');
  b.text.insert(0, 'world');
  a.text.insert(a.text.length, '!');
  await until('convergence', () =>
    a.text.toString() === b.text.toString() && a.text.length === 'hello world!'.length);
  const text = a.text.toString();
  for (const part of ['hello ', 'world', '!']) {
    if (!text.includes(part)) throw new Error(`lost ${part}: ${text}`);
  }
  return text;
}

async function lateJoiner(token, server, text) {
  const c = client(token, server);
  await synced(c);
  await until('late joiner state', () => c.text.toString() === text);
  return c;
}

function seesAlice(c) {
  return [...c.provider.awareness.getStates().values()].some((s) => s.user && s.user.name === 'alice');
}

// A (alice) and B edit at once after A's awareness reached B; a late joiner on `lateServer`
// gets the text and A's awareness; when A leaves, its state is cleared at B.
async function editWithAwareness(a, b, lateServer) {
  await synced(a);
  await synced(b);
  a.provider.awareness.setLocalStateField('user', { name: 'alice', cursor: 3 });
  await until('awareness of alice at b', () => seesAlice(b));
  const text = await concurrentEdits(a, b);
  const c = await lateJoiner(tokens[1], lateServer, text);
  await until('awareness of alice at the late joiner', () => seesAlice(c));
  const aliceId = a.ydoc.clientID;
  a.provider.destroy();
  await until('awareness cleared', () => !b.provider.awareness.getStates().has(aliceId));
  b.provider.destroy();
  c.provider.destroy();
  return text;
}

async function edit() {
  return editWithAwareness(client(tokens[0]), client(tokens[1]), bases[0]);
}

async function converge() {
  const [a, b] = [client(tokens[0], bases[0]), client(tokens[1], bases[1])];
  return editWithAwareness(a, b, bases[bases.length - 1]);
}

async function read() {
  const c = client(tokens[0]);
  await synced(c);
  // Synced means the server's state arrived; give the step 2 a moment to apply.
  await new Promise((r) => setTimeout(r, 100));
  const text = c.text.toString();
  c.provider.destroy();
  return text;
}

({ edit, converge, read })[mode]().then(
  (text) => {
    process.stdout.write(JSON.stringify({ text }) + '\n');
    process.exit(0);
  },
  (e) => {
    process.stdout.write(`${e.message}\n`);
    process.exit(1);
  },
);
