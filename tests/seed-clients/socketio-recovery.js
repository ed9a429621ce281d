// Socket.IO connection-state recovery with socket.io-client (≥ 4.6) against Herald: a `/chat`
// socket in a room loses its transport mid-stream, messages are published meanwhile, and it
// reconnects — to the same server (`drop`), to the server restarted (`restart`), or to another
// node (`node`) — with `socket.recovered === true` and exactly the missed messages, in order.
// With `expired`, the missed messages are past retention when it reconnects: it must be told
// (`socket.recovered === false`, a new pid) instead of resuming across the gap.
// Usage: node socketio-recovery.js http://host:port <token> <api key> drop|restart|node|expired
// Except for `drop` it prints "dropped" and reads the URL to reconnect to from stdin.
// Prints "ok" and exits 0, or prints what was missing and exits 1.
const { io } = require('socket.io-client');
const { check, run, within } = require('./socketio-lib');
const readline = require('readline');

const [base, token, apiKey, scenario] = process.argv.slice(2);
const ROOM = 'general';

function once(socket, event) {
  return within(new Promise((resolve) => socket.once(event, resolve)), event);
}

async function publish(url, text) {
  const res = await fetch(`${url}/api/realtime/publish`, {
    method: 'POST',
    headers: { authorization: `Bearer ${apiKey}`, 'content-type': 'application/json' },
    body: JSON.stringify({ type: 'chat.message', roomId: ROOM, data: { text } }),
  });
  check(res.status === 201, `publish ${text}: ${res.status}`);
}

function nextLine() {
  const rl = readline.createInterface({ input: process.stdin });
  return within(
    new Promise((resolve) => rl.once('line', (line) => { rl.close(); resolve(line.trim()); })),
    'the URL to reconnect to',
  );
}

async function main() {
  const socket = io(`${base}/chat`, { auth: { token }, transports: ['websocket'], reconnection: false });
  const received = [];
  socket.on('message', (m) => received.push(m.content));
  await once(socket, 'connect');
  check(socket.recovered === false, 'a first connection is not recovered');
  const history = once(socket, 'room_history');
  socket.emit('join_room', ROOM);
  await history;

  await publish(base, 'm0');
  await within(new Promise((r) => { const t = setInterval(() => received.includes('m0') && (clearInterval(t), r()), 10); }), 'm0');

  // The transport drops mid-stream; messages are published meanwhile.
  const gone = once(socket, 'disconnect');
  socket.io.engine.close();
  await gone;
  await publish(base, 'm1');
  await publish(base, 'm2');
  let url = base;
  if (scenario !== 'drop') {
    console.log('dropped');
    url = await nextLine();
    socket.io.uri = `${url}/chat`;
  }
  const before = received.length;
  const back = once(socket, 'connect');
  socket.connect();
  await back;
  if (scenario === 'expired') {
    check(socket.recovered === false, 'past retention the socket is not recovered');
    check(!received.includes('m1') && !received.includes('m2'), `nothing replayed across the gap: ${received}`);
    socket.close();
    return;
  }
  check(socket.recovered === true, 'the socket is recovered');
  await within(new Promise((r) => { const t = setInterval(() => received.length >= before + 2 && (clearInterval(t), r()), 10); }), 'the missed messages');
  // Live again, in the same room, without rejoining.
  await publish(url, 'm3');
  await within(new Promise((r) => { const t = setInterval(() => received.includes('m3') && (clearInterval(t), r()), 10); }), 'm3');
  await new Promise((r) => setTimeout(r, 200));
  check(received.join(',') === 'm0,m1,m2,m3', `exactly the missed messages, in order: ${received}`);

  // A pid the server does not know starts afresh.
  const gone2 = once(socket, 'disconnect');
  socket.io.engine.close();
  await gone2;
  socket._pid = 'unknown';
  const again = once(socket, 'connect');
  socket.connect();
  await again;
  check(socket.recovered === false && socket._pid !== 'unknown', 'an unknown pid is not recovered');
  socket.close();
}

run(main);
