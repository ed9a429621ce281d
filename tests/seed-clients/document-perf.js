// Collaborative documents under load, against a running Herald (docs/performance.md):
//   node document-perf.js http://host:port <JWT secret> [seconds]
// 1. 10 editors on one document, each with one change in flight as herald.js sends them;
// 2. the same with 16 changes in flight per editor (each on the version it has seen);
//    for both: applied changes per second and the change→arrival latency at the other
//    editors (p50/p99);
// 3. memory per open document: one connection joins 2 000 documents with 100 characters
//    each; the server's RSS before and after (needs max_documents_per_connection ≥ 2 000).
// Prints one JSON object.
const [base, secret, secondsArg] = process.argv.slice(2);
const SECONDS = Number(secondsArg || 10);
const wsBase = base.replace(/^http/, 'ws');

const perf = require('./perf-lib');
const token = (sub, role) => perf.token(secret, sub, role);
const open = (user) => perf.open(wsBase, secret, user);

const send = (c, m) => c.ws.send(JSON.stringify(m));

function percentile(sorted, p) {
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] : null;
}

async function editors(doc, inFlight) {
  const sentAt = new Map();
  const latencies = [];
  let applied = 0;
  let stop = false;
  const clients = [];
  for (let i = 0; i < 10; i++) {
    const c = await open(`ed${i}`);
    c.version = 0;
    c.length = 0;
    c.outstanding = 0;
    c.n = 0;
    clients.push(c);
  }
  const sendOne = (i) => {
    const c = clients[i];
    if (stop || c.outstanding >= inFlight) return;
    const tag = `${i}:${c.n++};`;
    c.outstanding++;
    sentAt.set(tag, process.hrtime.bigint());
    send(c, { type: 'document.change', id: c.n, data: { documentId: doc, baseVersion: c.version, position: 0, length: 0, text: tag } });
  };
  await Promise.all(clients.map((c, i) => new Promise((resolve) => {
    c.on((m) => {
      if (m.type === 'document.joined') { c.version = m.data.version; resolve(); }
      if (m.type === 'text_change_applied') {
        c.version = m.data.version;
        const tag = m.data.change.text;
        if (m.id !== undefined) {
          c.outstanding--;
          sendOne(i);
        } else if (!tag.startsWith(`${i}:`)) {
          const t = sentAt.get(tag);
          if (t) latencies.push(Number(process.hrtime.bigint() - t) / 1e6);
        }
        if (i === 0) applied++;
      }
      if (m.type === 'error') { c.outstanding--; sendOne(i); }
    });
    send(c, { type: 'document.join', data: { documentId: doc } });
  })));
  const started = Date.now();
  for (let i = 0; i < clients.length; i++) for (let k = 0; k < inFlight; k++) sendOne(i);
  await new Promise((r) => setTimeout(r, SECONDS * 1000));
  stop = true;
  const elapsed = (Date.now() - started) / 1000;
  await new Promise((r) => setTimeout(r, 500));
  for (const c of clients) c.ws.close();
  latencies.sort((a, b) => a - b);
  return {
    inFlightPerEditor: inFlight,
    appliedPerSecond: Math.round(applied / elapsed),
    arrivalsMeasured: latencies.length,
    p50Ms: +percentile(latencies, 0.5).toFixed(2),
    p99Ms: +percentile(latencies, 0.99).toFixed(2),
  };
}

async function rss() {
  const res = await fetch(`${base}/api/dashboard/live-data`, { headers: { authorization: `Bearer ${token('perf-admin', 'admin')}` } });
  return (await res.json()).memoryUsage.rss;
}

async function memory() {
  const DOCS = 2000;
  const c = await open('mem');
  await new Promise((r) => setTimeout(r, 300));
  const before = await rss();
  let joined = 0;
  let changed = 0;
  await new Promise((resolve) => {
    c.on((m) => {
      if (m.type === 'document.joined') {
        joined++;
        send(c, { type: 'document.change', data: { documentId: m.data.documentId, baseVersion: 0, position: 0, length: 0, text: 'x'.repeat(100) } });
      }
      if (m.type === 'text_change_applied' && ++changed === DOCS) resolve();
    });
    for (let d = 0; d < DOCS; d++) send(c, { type: 'document.join', data: { documentId: `mem-${d}` } });
  });
  await new Promise((r) => setTimeout(r, 300));
  const after = await rss();
  c.ws.close();
  return { documents: DOCS, joined, rssBeforeMiB: +(before / 1048576).toFixed(1), rssAfterMiB: +(after / 1048576).toFixed(1), bytesPerDocument: Math.round((after - before) / DOCS) };
}

(async () => {
  const one = await editors('perf-1', 1);
  const many = await editors('perf-16', 16);
  const mem = await memory();
  console.log(JSON.stringify({ oneInFlight: one, sixteenInFlight: many, memory: mem }));
  process.exit(0);
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
