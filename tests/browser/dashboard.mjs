// The dashboard at / in headless Chromium, seed 000's own dashboard page (its
// RealtimeDashboard class) on Herald's origin, and herald.js over its SSE fallback. Usage: node dashboard.mjs http://host:port <admin token>
// Screenshots: $ARTIFACTS/dashboard*.png
import { readFileSync } from "node:fs";
import WebSocket from "ws";
import { check, launch, postJson, run, until, watchErrors } from "./lib.mjs";

const [base, adminToken] = process.argv.slice(2);
const artifacts = process.env.ARTIFACTS || "../../test-artifacts/browser";

async function publishHttp(body) {
  return (await postJson(base, adminToken, "/api/realtime/publish", body, 201)).event;
}

const text = (page, selector) => page.locator(selector).textContent();

async function herald(page, errors) {
  await page.goto(`${base}/?token=${encodeURIComponent(adminToken)}`);
  await until(async () => (await text(page, "#connectionStatus")) === "Connected", "status Connected");
  check(!page.url().includes("token="), `the token left the address bar: ${page.url()}`);
  await until(async () => (await text(page, "#memoryUsage")).endsWith("MB"), "memory shown");

  // Embedded, the cluster panel shows this node alone, at the address it listens on.
  await until(async () => (await text(page, "#clusterCount")) === "1 node", "one node in the cluster panel");
  const node = await text(page, "#clusterNodes .node");
  check(node.includes(base) && node.includes("least loaded"), `the node, least loaded: ${node}`);

  // The connection count follows clients as they connect (the page itself holds one SSE stream).
  const before = await until(async () => {
    const n = Number(await text(page, "#activeConnections"));
    return n >= 1 && n;
  }, "the dashboard's own stream is counted");
  const sockets = await Promise.all(
    [1, 2, 3].map(
      () =>
        new Promise((resolve, reject) => {
          const ws = new WebSocket(`${base.replace("http", "ws")}/ws`);
          ws.on("open", () => resolve(ws));
          ws.on("error", reject);
        }),
    ),
  );
  await until(async () => Number(await text(page, "#activeConnections")) === before + 3, "3 more connections shown");
  check(Number(await text(page, "#wsConnections")) === 3, "3 WebSocket connections shown");
  for (const ws of sockets) ws.close();
  await until(async () => Number(await text(page, "#activeConnections")) === before, "back to the count before");

  // An event published over HTTP shows in the log within a second.
  const started = Date.now();
  const event = await publishHttp({ type: "orders.created", data: { order: 42, note: "<img src=x onerror=alert(1)>" } });
  await page.locator(`#eventLog .event[data-seq="${event.seq}"]`).waitFor({ timeout: 1000 });
  const latency = Date.now() - started;
  const row = await text(page, `#eventLog .event[data-seq="${event.seq}"]`);
  check(row.includes("<img src=x onerror=alert(1)>"), `the markup is shown as text: ${row}`);
  check((await page.locator("#eventLog img").count()) === 0, "no markup from event data is rendered");

  // The publish form validates, publishes and the event comes back through the stream.
  await page.fill("#eventData", "{not json");
  check(await page.locator("#publishButton").isDisabled(), "invalid JSON disables Publish");
  check((await text(page, "#publishError")).includes("not valid JSON"), "and says why");
  await page.fill("#eventType", "dashboard.form");
  await page.fill("#roomId", "lobby");
  await page.fill("#eventData", '{"hello": "from the form"}');
  await page.click("#publishButton");
  await page.locator(".toast.success").filter({ hasText: "dashboard.form published" }).waitFor({ timeout: 2000 });
  await page.locator("#eventLog .event", { hasText: "dashboard.form @lobby" }).waitFor({ timeout: 2000 });
  await page.locator("#rooms .room", { hasText: "lobby" }).waitFor({ timeout: 5000 });

  // Filters and pause.
  await page.fill("#filterType", "orders.*");
  check((await page.locator("#eventLog .event").count()) === 1, "the type filter keeps orders.* only");
  await page.fill("#filterType", "");
  await page.click("#pauseButton");
  const held = await publishHttp({ type: "while.paused", data: {} });
  await until(async () => (await text(page, "#logCount")).includes("1 waiting"), "paused log counts what waits");
  check((await page.locator(`#eventLog .event[data-seq="${held.seq}"]`).count()) === 0, "paused: not rendered");
  await page.click("#pauseButton");
  await page.locator(`#eventLog .event[data-seq="${held.seq}"]`).waitFor({ timeout: 1000 });

  // Alerts and operator notifications become toasts.
  await publishHttp({ type: "system.warning", data: { message: "disk <b>80%</b> full" } });
  await page.locator(".toast.warning", { hasText: "disk <b>80%</b> full" }).waitFor({ timeout: 2000 });
  await page.locator("#systemAlerts", { hasText: "warning" }).waitFor({ timeout: 2000 });
  await postJson(base, adminToken, "/api/dashboard/notify", { message: "deploy finished", type: "info" }, 201);
  await page.locator(".toast", { hasText: "deploy finished" }).waitFor({ timeout: 2000 });

  // A burst: the page renders in batches and keeps at most 200 rows.
  await Promise.all(Array.from({ length: 300 }, (_, i) => publishHttp({ type: "burst.item", data: { i } })));
  await until(async () => (await text(page, "#logCount")).startsWith("30"), "the burst arrives");
  await until(async () => (await page.locator("#eventLog .event").count()) === 200, "the log is capped at 200 rows");
  await until(async () => Number(await text(page, "#eventsPerSecond")) > 0, "events per second shown");
  await page.waitForTimeout(1100); // one more chart sample
  await page.screenshot({ path: `${artifacts}/dashboard.png`, fullPage: true });
  check(errors.length === 0, `no page errors: ${errors}`);
  return latency;
}

/** Seed 000's page, served on Herald's origin so its relative URLs reach Herald. */
async function seed(context) {
  const page = await context.newPage();
  const errors = watchErrors(page, "seed 000");
  const html = readFileSync(new URL("./seed-000-dashboard.html", import.meta.url), "utf8");
  await page.route(`${base}/seed-dashboard.html`, (route) =>
    route.fulfill({ contentType: "text/html", body: html }),
  );
  await page.goto(`${base}/seed-dashboard.html`);
  await until(async () => (await text(page, "#connectionStatus")) === "Connected", "seed page: Connected");
  await until(async () => Number(await text(page, "#activeConnections")) >= 1, "seed page: connections from stats");
  await until(async () => (await page.locator("#eventLog .event").count()) >= 1, "seed page: history loaded");
  await page.fill("#eventType", "seed.published");
  await page.fill("#eventData", '{"from": "seed 000"}');
  await page.click("button:has-text(\"Publish Event\")");
  await page.locator("#eventLog .event", { hasText: "seed.published" }).first().waitFor({ timeout: 2000 });
  await publishHttp({ type: "user.login", data: { ipAddress: "10.0.0.7" } });
  await page.locator("#eventLog .event", { hasText: "user.login" }).first().waitFor({ timeout: 2000 });
  await postJson(base, adminToken, "/api/dashboard/notify", { message: "hello seed page", type: "info" }, 201);
  await page.locator(".notification", { hasText: "hello seed page" }).waitFor({ timeout: 2000 });
  await page.screenshot({ path: `${artifacts}/dashboard-seed-000.png`, fullPage: true });
  check(errors.length === 0, `no page errors: ${errors}`);
}

/** herald.js in the browser over its Server-Sent Events fallback: subscribe, publish, receive. */
async function sseFallback(context) {
  const page = await context.newPage();
  const errors = watchErrors(page, "herald.js over SSE");
  await page.goto(`${base}/health`);
  const got = await page.evaluate(async (token) => {
    const { Herald } = await import("/herald.js");
    const herald = new Herald({ token, transport: "sse" });
    const open = new Promise((resolve) => herald.on("state", (s) => s.state === "open" && resolve(s)));
    const received = new Promise((resolve) => herald.subscribe(["fallback.*"], (e) => resolve(e)));
    const published = await herald.publish("fallback.ping", { over: "sse" });
    const state = await open;
    const event = await received;
    herald.close();
    return { transport: state.transport, seq: event.seq, acked: published.seq, data: event.data };
  }, adminToken);
  check(got.transport === "sse", `over SSE: ${JSON.stringify(got)}`);
  check(got.seq === got.acked && got.data.over === "sse", `its own publish came back: ${JSON.stringify(got)}`);
  check(errors.length === 0, `no page errors: ${errors}`);
}

run(async () => {
  const browser = await launch(artifacts);
  try {
    const context = await browser.newContext({ viewport: { width: 1300, height: 1000 } });
    const page = await context.newPage();
    const latency = await herald(page, watchErrors(page, "dashboard"));
    process.stderr.write(`dashboard: HTTP publish to log row in ${latency} ms\n`);
    await seed(context);
    await sseFallback(context);
  } finally {
    await browser.close();
  }
});
