// Stream routes read by a real EventSource in headless Chromium: the retained snapshot, then
// live messages, arrive as unnamed `message` events (so `onmessage` fires, as seed 002's pages
// expect) with ids for Last-Event-ID; a batching stream delivers one JSON array per interval.
// Usage: node streams.mjs http://host:port <admin token>
import { check, launch, postJson, run, until, watchErrors } from "./lib.mjs";

const [base, adminToken] = process.argv.slice(2);

const post = (path, body) => postJson(base, adminToken, path, body);

run(async () => {
  await post("/api/streams", { name: "ticks", path: "/ticks", history: 3 });
  await post("/api/streams", { name: "batched", path: "/batched", batchMs: 300 });
  for (let i = 1; i <= 5; i++) await post("/api/streams/ticks", { n: i });

  const browser = await launch(process.env.ARTIFACTS || "../../test-artifacts/browser");
  const page = await browser.newPage();
  const errors = watchErrors(page, "streams");
  await page.goto(`${base}/herald.js`); // any page of the server's origin
  await page.evaluate(() => {
    window.seen = { ticks: [], batched: [], named: 0 };
    for (const name of ["ticks", "batched"]) {
      const source = new EventSource(`/${name}`);
      source.onmessage = (e) => window.seen[name].push({ data: JSON.parse(e.data), id: e.lastEventId, type: e.type });
      source.addEventListener("error", () => {});
    }
  });

  // The snapshot: the last 3 of 5, in order, each with an id.
  await until(() => page.evaluate(() => window.seen.ticks.length >= 3), "the snapshot");
  await post("/api/streams/ticks", { n: 6 });
  const ticks = await until(async () => {
    const t = await page.evaluate(() => window.seen.ticks);
    return t.length >= 4 && t;
  }, "the live message");
  check(JSON.stringify(ticks.map((t) => t.data.n)) === "[3,4,5,6]", `snapshot then live: ${JSON.stringify(ticks)}`);
  check(ticks.every((t) => t.type === "message" && t.id !== ""), "unnamed message events with ids");
  check(new Set(ticks.map((t) => t.id)).size === 4, "distinct ids");

  // Batching: five quick messages arrive as one array (or a few, in order).
  for (let i = 1; i <= 5; i++) await post("/api/streams/batched", { b: i });
  const batches = await until(async () => {
    const b = await page.evaluate(() => window.seen.batched);
    return b.flatMap((x) => x.data).length >= 5 && b;
  }, "the batch");
  check(batches.every((b) => Array.isArray(b.data)), "every batch is an array");
  check(JSON.stringify(batches.flatMap((b) => b.data.map((m) => m.b))) === "[1,2,3,4,5]", "all five, in order");
  check(batches.length <= 2, `one array per interval, not one per message: ${batches.length}`);
  check(errors.length === 0, errors.join("; "));
  await browser.close();
});
