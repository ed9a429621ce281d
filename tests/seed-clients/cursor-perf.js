// Cursor moves under load, against one or several running Herald nodes (docs/performance.md):
//   node cursor-perf.js http://a[,http://b…] <JWT secret> [seconds] [editors] [moves/s each]
// The editors (each its own user and WebSocket) join one document, spread over the nodes in
// turn, and each moves its cursor at a steady rate; every cursor carries the time it was sent
// (one process, one clock). Prints the moves' arrival latency at the other editors, p50/p99,
// for editors on the same node and on different nodes, and how many arrived.
const [bases, secret, secondsArg, editorsArg, rateArg] = process.argv.slice(2);
const SECONDS = Number(secondsArg || 10);
const EDITORS = Number(editorsArg || 10);
const RATE = Number(rateArg || 10);
const nodes = bases.split(',').map((b) => b.replace(/^http/, 'ws'));

const perf = require('./perf-lib');
const open = (user, node) => perf.open(node, secret, user);

function summary(latencies) {
  latencies.sort((a, b) => a - b);
  const at = (p) => latencies.length ? +latencies[Math.min(latencies.length - 1, Math.floor(latencies.length * p))].toFixed(2) : null;
  return { arrived: latencies.length, p50Ms: at(0.5), p99Ms: at(0.99) };
}

(async () => {
  const doc = `cursors-${Date.now()}`;
  const nodeOf = (i) => i % nodes.length;
  const clients = [];
  for (let i = 0; i < EDITORS; i++) clients.push(await open(`cur${i}`, nodes[nodeOf(i)]));
  const same = [];
  const cross = [];
  let errors = 0;
  await Promise.all(clients.map((c, i) => new Promise((resolve) => {
    c.on((m) => {
      if (m.type === 'document.joined') resolve();
      if (m.type === 'error') errors++;
      if (m.type === 'cursor_move' && m.data.cursor && m.data.cursor.at) {
        const from = Number(m.data.user.slice(3));
        const latency = performance.now() - m.data.cursor.at;
        (nodeOf(from) === nodeOf(i) ? same : cross).push(latency);
      }
    });
    c.ws.send(JSON.stringify({ type: 'document.join', data: { documentId: doc } }));
  })));
  // Every participant is known everywhere before the moves start.
  await new Promise((r) => setTimeout(r, 500));
  let sent = 0;
  const timers = clients.map((c, i) => setInterval(() => {
    sent++;
    c.ws.send(JSON.stringify({ type: 'cursor_move', data: { documentId: doc, cursor: { position: i, at: performance.now() } } }));
  }, 1000 / RATE));
  await new Promise((r) => setTimeout(r, SECONDS * 1000));
  timers.forEach(clearInterval);
  await new Promise((r) => setTimeout(r, 500));
  for (const c of clients) c.ws.close();
  console.log(JSON.stringify({
    nodes: nodes.length, editors: EDITORS, movesPerSecondEach: RATE, seconds: SECONDS,
    sent, expectedArrivals: sent * (EDITORS - 1), errors,
    sameNode: summary(same), otherNode: summary(cross),
  }));
  process.exit(0);
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
