// The Socket.IO chat demo (/examples/socketio-chat, socket.io-client's browser bundle served by
// Herald) in headless Chromium: two signed-in pages in the room `demo` see each other join,
// chat (markup shown as text) and type, a message published over HTTP reaches them, and a
// forged token is refused.
// Usage: node socketio.mjs http://host:port <token of ada> <token of bob> <admin token>
// Screenshots: $ARTIFACTS/socketio-*.png
import { check, launch, postJson, run, until, watchErrors } from "./lib.mjs";

const [base, adaToken, bobToken, adminToken] = process.argv.slice(2);
const artifacts = process.env.ARTIFACTS || "../../test-artifacts/browser";
const MARKUP = '<img src=x onerror="window.pwned=1">';

const texts = (page, selector) => page.locator(selector).allTextContents();

async function join(context, token, name) {
  const page = await context.newPage();
  const errors = watchErrors(page, `socketio ${name}`);
  await page.goto(`${base}/examples/socketio-chat?token=${encodeURIComponent(token)}`);
  await page.fill("#name", name);
  await page.click("#join");
  await page.locator("#status.open").waitFor({ timeout: 5000 });
  await page.locator("#chat").waitFor();
  return { page, errors };
}

run(async () => {
  const browser = await launch(artifacts);
  try {
    const context = await browser.newContext({ viewport: { width: 1100, height: 800 } });
    const ada = await join(context, adaToken, "Ada");
    const bob = await join(context, bobToken, "Bob");
    await ada.page.locator("#messages .notice", { hasText: "Bob joined" }).waitFor({ timeout: 5000 });

    await ada.page.fill("#text", `hello ${MARKUP}`);
    await ada.page.click("#send");
    const heard = async (page) => (await texts(page, "#messages li")).some((t) => t.includes("Ada") && t.includes("hello"));
    await until(() => heard(bob.page), "Bob hears Ada");
    await until(() => heard(ada.page), "Ada hears herself");
    check((await bob.page.locator("#messages img").count()) === 0, "no <img> rendered");
    check((await bob.page.evaluate(() => window.pwned)) === undefined, "no script ran");

    await bob.page.type("#text", "typing");
    await until(async () => (await ada.page.textContent("#typing")).includes("Bob"), "Ada sees Bob typing");

    // A message published over HTTP to the room reaches both pages.
    await postJson(base, adminToken, "/api/realtime/publish", {
      type: "chat.message", roomId: "demo", data: { text: "from the API" },
    });
    await until(async () => (await texts(bob.page, "#messages li")).some((t) => t.includes("from the API")), "the API's message");

    // A bad token is refused with the seed's message.
    const bad = await context.newPage();
    await bad.goto(`${base}/examples/socketio-chat?token=forged`);
    await bad.click("#join");
    await until(async () => (await bad.textContent("#error")) === "Authentication failed", "Authentication failed");

    await ada.page.screenshot({ path: `${artifacts}/socketio-chat.png`, fullPage: true, animations: "disabled" });
    const errors = [...ada.errors, ...bob.errors];
    check(errors.length === 0, `no page errors: ${errors}`);
  } finally {
    await browser.close();
  }
});
