// Shared by the scenarios: talking to the Rust test that runs them (one line per step on
// stdout, commands on stdin), waiting for conditions, and launching Chromium.
import { createInterface } from "node:readline";
import { mkdirSync } from "node:fs";

export const WAIT_MS = 5000;

const stdin = createInterface({ input: process.stdin });
const lines = [];
let waiter = null;
stdin.on("line", (line) => {
  lines.push(line);
  waiter?.();
});

/** Tells the Rust side where the scenario is (it may act on it, e.g. stop the server). */
export function say(line) {
  process.stdout.write(`${line}\n`);
}

/** Waits for the Rust side to send `line`. */
export async function hear(line, ms = 20000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const i = lines.indexOf(line);
    if (i >= 0) {
      lines.splice(i, 1);
      return;
    }
    if (Date.now() > deadline) throw new Error(`never heard "${line}"`);
    await new Promise((r) => {
      waiter = r;
      setTimeout(r, 100);
    });
  }
}

/** Polls `cond` (sync or async) every 20 ms until it is truthy; throws `what` after `ms`. */
export async function until(cond, what, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out: ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** POSTs JSON with a bearer token; checks the status (`status`, or any 2xx) and returns the
 * parsed body. */
export async function postJson(base, token, path, body, status) {
  const res = await fetch(`${base}${path}`, {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  check(status ? res.status === status : res.ok, `${path} answered ${res.status}`);
  return res.json();
}

export function check(cond, what) {
  if (!cond) throw new Error(what);
}

/** Runs a scenario: prints "ok" and exits 0, or prints the failure and exits 1. */
export function run(scenario) {
  scenario().then(
    () => {
      say("ok");
      process.exit(0);
    },
    (e) => {
      say(`failed: ${String(e.stack || e).replaceAll("\n", " | ")}`);
      process.exit(1);
    },
  );
}

/** Headless Debian Chromium through playwright-core; screenshots go to `artifacts`. */
export async function launch(artifacts) {
  const { chromium } = await import("playwright-core");
  mkdirSync(artifacts, { recursive: true });
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-dev-shm-usage"],
  });
}

/** Collects every error a page logs or throws, for the scenario to check. */
export function watchErrors(page, name) {
  const errors = [];
  page.on("pageerror", (e) => errors.push(`${name}: ${e.message}`));
  page.on("console", (m) => {
    // Pages that are not Herald's (JSON routes, the seed's page) have no favicon: not a fault.
    if (m.type() === "error" && !m.location().url.endsWith("/favicon.ico")) {
      errors.push(`${name}: ${m.text()}`);
    }
  });
  return errors;
}
