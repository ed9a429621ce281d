// The demo apps under /examples/ in headless Chromium, against `herald serve --demo`: two
// pages chat (messages, typing, presence, markup shown as text), and every other page shows
// live data; two pages edit one document together, with herald.js and with Yjs. One browser
// for all of it. Usage: node examples.mjs http://host:port <admin token>
// Screenshots: $ARTIFACTS/examples-*.png
import { check, launch, postJson, run, until, watchErrors } from "./lib.mjs";

const [base, adminToken] = process.argv.slice(2);
const artifacts = process.env.ARTIFACTS || "../../test-artifacts/browser";
const MARKUP = '<img src=x onerror="window.pwned=1">';

const post = (path, body) => postJson(base, adminToken, path, body);

const texts = (page, selector) => page.locator(selector).allTextContents();

/** No element built from data, no script run: the markup is text. */
async function inert(page, where) {
  check((await page.locator(`${where} img`).count()) === 0, `no <img> rendered in ${where}`);
  check((await page.evaluate(() => window.pwned)) === undefined, `no script ran on ${page.url()}`);
}

async function open(context, path, name) {
  const page = await context.newPage();
  const errors = watchErrors(page, name);
  await page.goto(`${base}/examples/${path}`);
  await page.locator("#status.open").waitFor({ timeout: 5000 });
  return { page, errors };
}

async function shot(page, name) {
  await page.screenshot({ path: `${artifacts}/examples-${name}.png`, fullPage: true, animations: "disabled" });
}

async function index(context) {
  const page = await context.newPage();
  await page.goto(`${base}/examples`); // redirected to /examples/
  const links = await page.locator(".apps a").evaluateAll((as) => as.map((a) => a.getAttribute("href")));
  check(links.length === 9, `nine demo apps linked: ${links}`);
  for (const href of links) {
    const res = await fetch(`${base}${href}`);
    check(res.ok && res.headers.get("content-type").startsWith("text/html"), `${href} is served`);
  }
  await shot(page, "index");
  await page.close();
}

async function join(context, name) {
  const p = await open(context, "chat", `chat ${name}`);
  await p.page.fill("#name", name);
  await p.page.click("#join");
  await p.page.locator("#chat").waitFor();
  return p;
}

async function chat(context) {
  const ada = await join(context, "Ada");
  const bob = await join(context, "Bob");
  // Presence both ways, and Ada hears Bob arrive.
  await until(async () => (await texts(ada.page, "#people li")).join() === "Ada,Bob", "Ada sees Ada and Bob");
  await until(async () => (await texts(bob.page, "#people li")).join() === "Ada,Bob", "Bob sees Ada and Bob");
  await ada.page.locator("#messages .notice", { hasText: "Bob joined" }).waitFor({ timeout: 2000 });

  // Typing starts with the first keystroke and stops when the message is sent.
  await bob.page.locator("#text").pressSequentially("Hi Ada");
  await ada.page.locator("#typing", { hasText: "Bob is typing…" }).waitFor({ timeout: 2000 });
  await bob.page.click("#send");
  await ada.page.locator("#messages li", { hasText: "Hi Ada" }).waitFor({ timeout: 2000 });
  await until(async () => (await ada.page.textContent("#typing")) === "", "Bob's typing notice cleared");

  // Markup in a message: what the server's sanitiser keeps (bold) is bold, the rest is text
  // or gone; nothing runs.
  await ada.page.fill("#text", `${MARKUP}Hello <b>Bob</b> & 1 < 2 <script>window.pwned=2</script>`);
  await ada.page.click("#send");
  const row = bob.page.locator("#messages li", { hasText: "Hello" });
  await row.waitFor({ timeout: 2000 });
  const text = await row.textContent();
  check(text.includes("Hello Bob & 1 < 2"), `the message reads as text: ${text}`);
  check((await row.locator("b").textContent()) === "Bob", "the bold the sanitiser keeps is bold");
  await inert(bob.page, "#messages");
  await inert(ada.page, "#messages");
  await shot(ada.page, "chat");

  // Bob leaves: Ada's presence list follows.
  await bob.page.close();
  await until(async () => (await texts(ada.page, "#people li")).join() === "Ada", "Ada is alone again");
  await ada.page.locator("#messages .notice", { hasText: "Bob left" }).waitFor({ timeout: 2000 });
  return ada.errors.concat(bob.errors);
}

/** Two pages type into the demo document at once: both end with the same text, the server's,
 * holding every keystroke; each shows the other's cursor. */
async function editor(context) {
  const [a, b] = [await open(context, "editor", "editor a"), await open(context, "editor", "editor b")];
  for (const p of [a, b]) await p.page.locator("#text:not([disabled])").waitFor({ timeout: 5000 });
  await Promise.all([
    a.page.locator("#text").pressSequentially("alpha one ", { delay: 15 }),
    b.page.locator("#text").pressSequentially("beta two ", { delay: 15 }),
  ]);
  const value = (p) => p.page.inputValue("#text");
  await until(async () => (await value(a)) === (await value(b)) && (await value(a)).length === 19, "the pages converge");
  const text = await value(a);
  const sorted = (t) => [...t].sort().join("");
  check(sorted(text) === sorted("alpha one beta two "), `every keystroke is kept: ${JSON.stringify(text)}`);
  const server = await (await fetch(`${base}/api/documents/demo`, { headers: { authorization: `Bearer ${adminToken}` } })).json();
  check(server.content === text, `the server has the same text: ${JSON.stringify(server.content)}`);
  for (const p of [a, b]) {
    await p.page.locator("#text").click();
    await p.page.keyboard.press("End");
  }
  for (const p of [a, b]) await p.page.locator("#mirror .cursor").first().waitFor({ timeout: 2000 });
  check((await a.page.locator("#people li").count()) === 2, "both editors listed");
  await shot(a.page, "editor");
  await a.page.close();
  await b.page.close();
  return a.errors.concat(b.errors);
}

/** The Yjs editor: two pages on yjs + y-websocket type at once and converge; each shows the
 * other's awareness (name and cursor). */
async function yjsEditor(context) {
  const pages = [];
  for (const name of ["yjs a", "yjs b"]) {
    const page = await context.newPage();
    const errors = watchErrors(page, name);
    await page.goto(`${base}/examples/yjs`);
    await page.locator("#text:not([disabled])").waitFor({ timeout: 5000 });
    pages.push({ page, errors });
  }
  const [a, b] = pages;
  await Promise.all([
    a.page.locator("#text").pressSequentially("yjs one ", { delay: 15 }),
    b.page.locator("#text").pressSequentially("yjs two ", { delay: 15 }),
  ]);
  const value = (p) => p.page.inputValue("#text");
  await until(async () => (await value(a)) === (await value(b)) && (await value(a)).length === 16, "the Yjs pages converge");
  const sorted = (t) => [...t].sort().join("");
  check(sorted(await value(a)) === sorted("yjs one yjs two "), `every keystroke is kept: ${await value(a)}`);
  for (const p of [a, b]) await p.page.locator("#mirror .cursor").first().waitFor({ timeout: 2000 });
  await until(async () => (await a.page.locator("#people li").count()) === 2, "both Yjs editors listed");
  await shot(a.page, "yjs");
  await a.page.close();
  await b.page.close();
  return a.errors.concat(b.errors);
}

async function stocks(page) {
  await until(async () => (await page.locator(".stock").count()) === 5, "five symbols");
  const before = await texts(page, ".stock .price");
  await until(async () => (await texts(page, ".stock .price")).join() !== before.join(), "a price moves", 5000);
  check((await texts(page, ".stock .price")).every((p) => /^\$\d+\.\d\d$/.test(p)), "prices are shown as $n.nn");
  await shot(page, "stocks");
}

/** `before`: the headlines shown when the page opened (the snapshot), seconds earlier. */
async function news(page, before) {
  check(before >= 1, "the snapshot held the feeder's first headline");
  await post("/api/streams/news", { headline: `${MARKUP}Local <i>markup</i> news`, category: "local" });
  await page.locator("#news li", { hasText: "Local <i>markup</i> news" }).waitFor({ timeout: 2000 });
  await inert(page, "#news");
  // The feeder's headlines (every 5 s) arrived live too.
  await until(async () => (await page.locator("#news li").count()) >= before + 2, "the feeder's next headline", 7000);
  await shot(page, "news");
}

async function stats(page) {
  await until(async () => (await page.locator("#cpuChart polyline").getAttribute("points"))?.split(" ").length >= 3, "three points charted");
  const live = await (await fetch(`${base}/api/dashboard/live-data`, { headers: { authorization: `Bearer ${adminToken}` } })).json();
  const shownMb = parseFloat(await page.textContent('[data-metric="memory"] .value'));
  const rssMb = live.memoryUsage.rss / 1048576;
  check(shownMb > 1 && Math.abs(shownMb - rssMb) < rssMb / 2, `memory is the process's: ${shownMb} MB vs ${rssMb} MB`);
  const connections = parseInt(await page.textContent('[data-metric="connections"] .value'), 10);
  check(connections >= 1 && connections <= live.totalConnections + 5, `connections are the server's: ${connections}`);
  check((await page.locator("#memoryChart polyline").getAttribute("points")).length > 0, "memory charted");
  await shot(page, "stats");
}

async function notifications(page) {
  await post("/api/dashboard/notify", { message: `${MARKUP}<b>Deploy</b> finished`, type: "success" });
  await page.locator("#notifications li.success", { hasText: "<b>Deploy</b> finished" }).waitFor({ timeout: 2000 });
  await post("/api/realtime/publish", { type: "notification", data: { message: "Disk 80% full", type: "warning" } });
  await page.locator("#notifications li.warning", { hasText: "Disk 80% full" }).waitFor({ timeout: 2000 });
  await inert(page, "#notifications");
  await shot(page, "notifications");
}

async function activity(page) {
  await post("/api/realtime/publish", { type: "activity", data: { user: "Grace", action: `created a post ${MARKUP}` } });
  const item = page.locator("#feed li", { hasText: "Grace" });
  await item.waitFor({ timeout: 2000 });
  check((await item.textContent()).includes(`created a post ${MARKUP}`), "the action is shown as text");
  // The page was open during the chat: it saw the messages (not their text).
  await page.locator("#feed li", { hasText: "Ada sent a message in demo" }).first().waitFor({ timeout: 2000 });
  // An anonymous page sees public rooms' events only: `shop` is private, `demo` public.
  await post("/api/realtime/publish", { type: "orders.created", roomId: "shop", data: { order: 6 } });
  await post("/api/realtime/publish", { type: "orders.created", roomId: "demo", data: { order: 7 } });
  await page.locator("#feed li", { hasText: "published orders.created in demo" }).waitFor({ timeout: 2000 });
  check((await page.locator("#feed li", { hasText: "in shop" }).count()) === 0, "a private room's event stays out");
  await inert(page, "#feed");
  await shot(page, "activity");
}

run(async () => {
  const browser = await launch(artifacts);
  try {
    const context = await browser.newContext({ viewport: { width: 1100, height: 800 } });
    await index(context);
    // The stream pages open first, so their data accumulates while the chat runs.
    const pages = {};
    for (const name of ["stocks", "news", "stats", "notifications", "activity"]) {
      pages[name] = await open(context, name, name);
    }
    const headlines = await until(() => pages.news.page.locator("#news li").count(), "the news snapshot");
    let started = Date.now();
    const step = async (name, f) => {
      await f();
      process.stderr.write(`examples: ${name} ${Date.now() - started} ms\n`);
      started = Date.now();
    };
    let errors = [];
    await step("chat", async () => (errors = await chat(context)));
    await step("stocks", () => stocks(pages.stocks.page));
    await step("news", () => news(pages.news.page, headlines));
    await step("stats", () => stats(pages.stats.page));
    await step("notifications", () => notifications(pages.notifications.page));
    await step("activity", () => activity(pages.activity.page));
    // Last: every keystroke is an event the activity feed would show.
    await step("editor", async () => errors.push(...(await editor(context))));
    await step("yjs", async () => errors.push(...(await yjsEditor(context))));
    for (const p of Object.values(pages)) errors.push(...p.errors);
    check(errors.length === 0, `no page errors: ${errors}`);
  } finally {
    await browser.close();
  }
});
