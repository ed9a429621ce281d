// herald.js under Node (the `ws` package as WebSocket), loaded from the server's own
// /herald.js, against a server the Rust test stops and restarts on the same address and
// database. Proves: reconnection with backoff, queueing while down, and resume from the last
// seq with no gap and no duplicate.
// Usage: node herald-client.mjs http://host:port <user token>
// Dialogue: says "subscribed" (Rust publishes n=1..5), "received" (Rust stops the server),
// "queued" once it saw the server go and queued a publish (Rust restarts the server and
// publishes n=6..10 before the client is back, then says "published"), then "ok".
import WebSocket from "ws";
import { check, hear, run, say, until } from "./lib.mjs";

const [base, token] = process.argv.slice(2);

run(async () => {
  const source = await (await fetch(`${base}/herald.js`)).text();
  const { Herald, backoffDelay } = await import(
    `data:text/javascript;base64,${Buffer.from(source).toString("base64")}`
  );

  for (let i = 0; i < 200; i++) {
    const first = backoffDelay(1);
    const late = backoffDelay(12);
    check(first >= 500 && first <= 1000, `first delay in 0.5–1 s: ${first}`);
    check(late >= 15000 && late <= 30000, `capped at 30 s: ${late}`);
  }

  // Retries after 1–2 s: long enough for the test to restart the server and publish before
  // the client is back, so those events can only arrive by resuming.
  const herald = new Herald({ url: base, token, WebSocket, baseDelayMs: 2000 });
  const states = [];
  herald.on("state", (s) => states.push(s));
  const received = [];
  herald.subscribe(["test.*"], (event) => received.push(event));
  let everything = 0;
  const off = herald.on("*", () => everything++);
  off();
  const events = [];
  herald.on("event", (m) => events.push(m.data.seq));

  await until(() => herald.state === "open", "first connection");
  say("subscribed");
  await until(() => received.length === 5, "the five events published before the stop");
  say("received");

  await until(() => herald.state === "reconnecting", "the client notices the server is gone", 15000);
  const acked = herald.publish("test.queued", { n: "queued" });
  check(herald.queue.length === 1, "the publish is queued while disconnected");
  say("queued");
  await hear("published");
  check(received.length === 5 && herald.state !== "open", "still away while n=6..10 were published");

  const published = await acked;
  check(typeof published.seq === "number", `queued publish acknowledged: ${JSON.stringify(published)}`);
  await until(() => received.length === 11, `all 11 events, got ${received.length}`, 15000);

  const ns = received.map((e) => e.data.n);
  const want = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, "queued"];
  check(
    want.every((n) => ns.includes(n)) && new Set(ns).size === ns.length,
    `every event exactly once: ${JSON.stringify(ns)}`,
  );
  const seqs = received.map((e) => e.seq);
  check(seqs.every((s, i) => i === 0 || s > seqs[i - 1]), `in seq order: ${seqs}`);
  check(new Set(events).size === events.length, `no duplicate event frame: ${events}`);
  check(everything === 0, "a removed handler is not called");

  const path = states.map((s) => s.state);
  check(path[0] === "connecting" && path[1] === "open", `connects: ${path}`);
  const retry = states.find((s) => s.state === "reconnecting");
  check(retry.delay >= 1000 && retry.delay <= 2000, `first retry after 1–2 s: ${retry.delay}`);
  check(path.at(-1) === "open", `back open: ${path}`);
  herald.close();
});
