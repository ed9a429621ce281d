// Seed 004's Socket.IO chat client — the `useChatRoom` hook's logic without React, on
// socket.io-client — against a running Herald, beside a WebSocket client on /ws/chat in the
// same room. Usage: node socketio-chat.js http://host:port <alice token> <bob token> <carol token>
//   websocket|polling
// (`polling` is socket.io-client's default: long-polling, then the upgrade to WebSocket).
// Prints "ok" and exits 0, or prints what was missing and exits 1.
const { io } = require('socket.io-client');
const { check, run, within } = require('./socketio-lib');
const WebSocket = require('ws');

const [base, aliceToken, bobToken, carolToken, mode] = process.argv.slice(2);
const transports = mode === 'websocket' ? ['websocket'] : ['polling', 'websocket'];
const ROOM = 'general';

// The next `event` on `socket` whose payload satisfies `pred`.
function nextEvent(socket, event, pred = () => true) {
  return within(
    new Promise((resolve) => {
      const handler = (payload) => {
        if (pred(payload)) {
          socket.off(event, handler);
          resolve(payload);
        }
      };
      socket.on(event, handler);
    }),
    event,
  );
}

// The seed's SocketProvider: `io(`${API_URL}/chat`, { auth: { token } })`.
function connect(token) {
  const socket = io(`${base}/chat`, { auth: { token }, transports, reconnection: false });
  return within(
    new Promise((resolve, reject) => {
      socket.on('connect', () => resolve(socket));
      socket.on('connect_error', reject);
    }),
    'connect',
  );
}

// The seed's useChatRoom(roomId), state kept in plain fields.
function useChatRoom(socket, roomId) {
  const room = { messages: [], typingUsers: new Set() };
  socket.emit('join_room', roomId);
  socket.on('message', (message) => room.messages.push(message));
  socket.on('room_history', ({ messages }) => (room.messages = messages));
  socket.on('user_typing', ({ userId }) => room.typingUsers.add(userId));
  socket.on('user_stopped_typing', ({ userId }) => room.typingUsers.delete(userId));
  room.sendMessage = (content) => socket.emit('message', { roomId, content });
  room.startTyping = () => socket.emit('typing_start', roomId);
  room.stopTyping = () => socket.emit('typing_stop', roomId);
  room.leave = () => socket.emit('leave_room', roomId);
  return room;
}

// A Herald WebSocket client on /ws/chat (seed 001's dialect), authenticated, in ROOM.
async function wsChatClient(token) {
  const ws = new WebSocket(`${base.replace(/^http/, 'ws')}/ws/chat`);
  const frames = [];
  const waiters = [];
  ws.on('message', (data) => {
    const msg = JSON.parse(data.toString());
    frames.push(msg);
    for (const w of [...waiters]) {
      if (w.pred(msg)) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(msg);
      }
    }
  });
  await within(new Promise((r) => ws.on('open', r)), 'ws open');
  const next = (pred, what) =>
    within(
      new Promise((resolve) => {
        const seen = frames.find(pred);
        if (seen) return resolve(seen);
        waiters.push({ pred, resolve });
      }),
      what,
    );
  ws.send(JSON.stringify({ type: 'authenticate', token }));
  await next((m) => m.type === 'authenticated', 'ws authenticated');
  ws.send(JSON.stringify({ type: 'join', room: ROOM }));
  await next((m) => m.type === 'room_joined', 'ws room_joined');
  return { ws, next, send: (m) => ws.send(JSON.stringify(m)) };
}

async function main() {
  const alice = await connect(aliceToken);
  const aliceHistory = nextEvent(alice, 'room_history');
  const aliceRoom = useChatRoom(alice, ROOM);
  const history = await aliceHistory;
  check(history.roomId === ROOM && Array.isArray(history.messages), 'room_history for alice');

  const bob = await connect(bobToken);
  const bobJoined = nextEvent(alice, 'user_joined', (u) => u.userId === 'bob');
  const bobHistory = nextEvent(bob, 'room_history');
  const bobRoom = useChatRoom(bob, ROOM);
  const joined = await bobJoined;
  check(joined.userName === 'bob', `user_joined names bob: ${JSON.stringify(joined)}`);
  await bobHistory;

  // A message reaches everyone in the room, the sender too, sanitised as chat is.
  const bobHears = nextEvent(bob, 'message', (m) => m.userId === 'alice');
  const aliceHears = nextEvent(alice, 'message', (m) => m.userId === 'alice');
  aliceRoom.sendMessage('Hello <b>bob</b><script>alert(1)</script>');
  const [heard] = await Promise.all([bobHears, aliceHears]);
  check(heard.content === 'Hello <b>bob</b>', `sanitised content: ${JSON.stringify(heard)}`);
  check(heard.roomId === ROOM && heard.userName === 'alice', `message shape: ${JSON.stringify(heard)}`);
  check(typeof heard.id === 'string' && !Number.isNaN(Date.parse(heard.timestamp)), 'id and timestamp');
  check(bobRoom.messages.some((m) => m.id === heard.id), 'the hook kept the message');

  // Typing goes to the others only.
  const typing = nextEvent(alice, 'user_typing', (u) => u.userId === 'bob');
  bobRoom.startTyping();
  await typing;
  check(aliceRoom.typingUsers.has('bob'), 'alice sees bob typing');
  const stopped = nextEvent(alice, 'user_stopped_typing', (u) => u.userId === 'bob');
  bobRoom.stopTyping();
  await stopped;
  check(!aliceRoom.typingUsers.has('bob'), 'bob stopped typing');

  // Socket.IO and /ws/chat clients share the room both ways.
  const carolWs = await wsChatClient(carolToken);
  const wsHears = carolWs.next((m) => m.type === 'chat' && m.text === 'to everyone', 'ws chat');
  aliceRoom.sendMessage('to everyone');
  await wsHears;
  const fromWs = nextEvent(alice, 'message', (m) => m.userId === 'carol');
  carolWs.send({ type: 'chat', room: ROOM, text: 'from the WebSocket' });
  const wsMessage = await fromWs;
  check(wsMessage.content === 'from the WebSocket', `ws → Socket.IO: ${JSON.stringify(wsMessage)}`);
  carolWs.ws.close();

  // Leaving tells the others.
  const left = nextEvent(alice, 'user_left', (u) => u.userId === 'bob');
  bobRoom.leave();
  await left;

  // A newcomer gets the history, in order, the last message last.
  const late = await connect(bobToken);
  const lateHistory = nextEvent(late, 'room_history');
  useChatRoom(late, ROOM);
  const { messages } = await lateHistory;
  const contents = messages.map((m) => m.content);
  check(
    contents.slice(-3).join('|') === 'Hello <b>bob</b>|to everyone|from the WebSocket',
    `history: ${JSON.stringify(contents)}`,
  );

  // Another user's personal room is refused.
  const denied = nextEvent(alice, 'error');
  alice.emit('join_room', 'user:bob');
  const error = await denied;
  check(error.message === 'Access denied', `access denied: ${JSON.stringify(error)}`);

  // A bad token never connects.
  const bad = io(`${base}/chat`, { auth: { token: 'not-a-token' }, transports, reconnection: false });
  const refused = await within(new Promise((resolve) => bad.on('connect_error', resolve)), 'connect_error');
  check(refused.message === 'Authentication failed', `bad token: ${refused.message}`);
  check(!bad.connected, 'bad token is not connected');

  for (const s of [alice, bob, late, bad]) s.close();
}

run(main);
