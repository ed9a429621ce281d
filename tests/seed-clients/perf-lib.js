// What the document benchmarks (document-perf.js, cursor-perf.js) share: tokens signed with the
// server's JWT secret, and authenticated WebSockets whose messages go to every handler added.
const crypto = require('crypto');
const WebSocket = require('ws');

function token(secret, sub, role) {
  const enc = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const body = `${enc({ alg: 'HS256', typ: 'JWT' })}.${enc({ sub, role, exp: Math.floor(Date.now() / 1000) + 3600 })}`;
  return `${body}.${crypto.createHmac('sha256', secret).update(body).digest('base64url')}`;
}

// Opens `${wsBase}/ws` and authenticates as `user`; resolves with {ws, on(handler)}.
function open(wsBase, secret, user) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${wsBase}/ws`);
    const handlers = [];
    ws.on('message', (raw) => {
      const m = JSON.parse(raw);
      if (m.type === 'connection.established') {
        ws.send(JSON.stringify({ type: 'authenticate', data: { token: token(secret, user) } }));
      } else if (m.type === 'authenticated') {
        resolve({ ws, on: (fn) => handlers.push(fn) });
      }
      for (const h of handlers) h(m);
    });
    ws.on('error', reject);
  });
}

module.exports = { token, open };
