// Drives the seeds' own chat clients against a running Herald: seed 001's RealTimeChat on
// /ws/chat (anonymous, public room "general") and seed 004's WebSocketClient on /ws/rooms
// (authenticated). Two clients join, see each other join, chat, see typing; one leaves and the
// other sees it. Usage: node chat-scenario.js ws://host:port <alice token> <bob token>
// Prints "ok" and exits 0, or prints what was missing and exits 1.
const { RealTimeChat } = require('./seed-001-realtime-chat');
const { WebSocketClient } = require('./seed-004-websocket-client');

const [base, aliceToken, bobToken] = process.argv.slice(2);
const WAIT_MS = 5000;
console.log = () => {}; // the seeds' clients log every step

// Resolves with the arguments of the next call to `obj[name]` that satisfies `pred`.
function next(obj, name, pred = () => true) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out waiting for ${name}`)), WAIT_MS);
    const previous = obj[name];
    obj[name] = (...args) => {
      if (previous) previous.apply(obj, args);
      if (pred(...args)) {
        clearTimeout(timer);
        obj[name] = previous;
        resolve(args);
      }
    };
  });
}

// Resolves with the next message of `type` a seed 004 client receives that satisfies `pred`.
function nextMessage(client, type, pred = () => true) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out waiting for ${type}`)), WAIT_MS);
    const off = client.on(type, (msg) => {
      if (pred(msg)) {
        clearTimeout(timer);
        off();
        resolve(msg);
      }
    });
  });
}

function check(cond, what) {
  if (!cond) throw new Error(what);
}

async function seed001() {
  const john = new RealTimeChat();
  const jane = new RealTimeChat();
  for (const c of [john, jane]) {
    c.onConnectionChange = (up) => up && c.joinRoom('general');
  }
  const johnIn = next(john, 'onRoomJoined');
  john.connect(`${base}/ws/chat`, { id: 'user123', name: 'John Doe', avatar: 'https://example.com/j.jpg' });
  await johnIn;
  check(john.room === 'general', 'seed 001: john is in general');

  const seesJane = next(john, 'onUserJoined');
  const janeIn = next(jane, 'onRoomJoined');
  jane.connect(`${base}/ws/chat`, { id: 'user456', name: 'Jane Roe' });
  const [, janeUsers] = await janeIn;
  const [joined, users] = await seesJane;
  check(joined.name === 'Jane Roe', `seed 001: user_joined names Jane: ${JSON.stringify(joined)}`);
  check(users.length === 2 && janeUsers.length === 2, 'seed 001: both listed');

  const heard = next(jane, 'onChatMessage');
  john.sendChatMessage('Hello <b>Jane</b><script>alert(1)</script>');
  const [message] = await heard;
  check(message.user.name === 'John Doe', `seed 001: chat from John: ${JSON.stringify(message)}`);
  check(message.text === 'Hello <b>Jane</b>', `seed 001: sanitised text: ${message.text}`);

  const typing = next(john, 'onTypingIndicator');
  jane.sendTypingIndicator(true);
  const [typist, isTyping] = await typing;
  check(typist.name === 'Jane Roe' && isTyping === true, 'seed 001: typing from Jane');

  const gone = next(john, 'onUserLeft');
  jane.leaveRoom();
  const [left] = await gone;
  check(left.name === 'Jane Roe', `seed 001: user_left names Jane: ${JSON.stringify(left)}`);
  john.disconnect();
  jane.disconnect();
}

async function seed004() {
  const alice = new WebSocketClient(`${base}/ws/rooms`);
  const bob = new WebSocketClient(`${base}/ws/rooms`);
  for (const [c, token] of [[alice, aliceToken], [bob, bobToken]]) {
    // Sent before connecting: the client queues it and flushes it on open.
    c.send({ type: 'authenticate', token });
    c.on('connected', () => c.joinRoom('general'));
  }
  const aliceIn = nextMessage(alice, 'room_joined');
  await alice.connect();
  await aliceIn;

  const seesBob = nextMessage(alice, 'user_joined', (m) => m.userId === 'bob');
  await bob.connect();
  await seesBob;

  const heard = nextMessage(alice, 'message');
  bob.sendMessage('general', 'hi alice');
  const msg = await heard;
  check(msg.from === 'bob' && msg.content === 'hi alice', `seed 004: message: ${JSON.stringify(msg)}`);

  const typing = nextMessage(alice, 'typing');
  bob.send({ type: 'typing_start', room: 'general' });
  const t = await typing;
  check(t.userId === 'bob' && t.isTyping === true, `seed 004: typing: ${JSON.stringify(t)}`);

  const gone = nextMessage(alice, 'user_left');
  bob.leaveRoom('general');
  const left = await gone;
  check(left.userId === 'bob', `seed 004: user_left: ${JSON.stringify(left)}`);
}

seed001()
  .then(seed004)
  .then(() => {
    process.stdout.write('ok\n');
    process.exit(0);
  })
  .catch((e) => {
    process.stdout.write(`failed: ${e.message}\n`);
    process.exit(1);
  });
