// herald.js — Herald's browser client (an ES module, served by Herald at /herald.js; types at
// /herald.d.ts).
//
//   import { Herald } from "/herald.js";
//   const herald = new Herald({ token });
//   herald.subscribe(["chat.*"], { roomId: "lobby" }, (event) => console.log(event));
//   herald.on("state", ({ state }) => console.log(state));
//
// WebSocket (Herald's dialect, /ws) with a Server-Sent Events fallback; reconnects with
// exponential backoff and jitter; queues outgoing messages while disconnected; resumes every
// subscription from the last seq it received, so nothing is missed or repeated across
// reconnects (docs/protocol.md#resume).

const BASE_DELAY_MS = 1000;
const MAX_DELAY_MS = 30000;
// A WebSocket that fails this many times in a row, on a client whose WebSocket never opened
// (a proxy that drops upgrades, say), makes the client use Server-Sent Events instead. Once a
// WebSocket has worked, failures mean the server is away, and the client keeps to WebSocket.
const WS_FAILURES_BEFORE_SSE = 2;

/** Whether `type` matches a pattern: exact, `prefix.*` (any depth) or `*`. */
export function matchesPattern(pattern, type) {
  if (pattern === "*") return true;
  if (pattern.endsWith(".*")) return type.startsWith(pattern.slice(0, -1));
  return pattern === type;
}

function sameJson(a, b) {
  if (a === b) return true;
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  const ka = Object.keys(a);
  return ka.length === Object.keys(b).length && ka.every((k) => sameJson(a[k], b[k]));
}

/** Whether an event matches a subscription (the server's rule, see docs/protocol.md). */
export function matchesSubscription(sub, event) {
  const f = sub.filters || {};
  if (f.userId !== undefined && event.userId !== f.userId) return false;
  if (f.roomId !== undefined && event.roomId !== f.roomId) return false;
  for (const [k, v] of Object.entries(f.custom || {})) {
    if (!event.data || !sameJson(event.data[k], v)) return false;
  }
  return sub.eventTypes.some((p) => matchesPattern(p, event.type));
}

/** The reconnect delay before attempt `attempt` (1-based): exponential, capped, jittered. */
export function backoffDelay(attempt, base = BASE_DELAY_MS, cap = MAX_DELAY_MS) {
  const ceiling = Math.min(cap, base * 2 ** (attempt - 1));
  // "Equal jitter": at least half the step, so a herd of clients spreads out without any
  // of them retrying at once.
  return ceiling / 2 + Math.random() * (ceiling / 2);
}

// ---- collaborative documents ------------------------------------------------------------------

/**
 * Change `x` rewritten to apply after `y`, both made on the same text: the server's
 * transformation (`herald_core::document::transform`), positions in UTF-16 code units.
 * `xFirst`: `x` comes first in the document's order.
 */
export function transformChange(x, y, xFirst) {
  const [xp, xe, yp, ye] = [x.position, x.position + x.length, y.position, y.position + y.length];
  const yLen = y.text.length;
  const shift = (p) => p - y.length + yLen;
  if (xp < yp && ye < xe) return { position: xp, length: x.length - y.length + yLen, text: x.text };
  if (yp < xp && xe < ye) return { position: yp, length: 0, text: "" };
  const xTextFirst = xp !== yp ? xp < yp : x.length !== y.length ? x.length < y.length : xFirst;
  const start = xp < yp ? xp : xp > ye ? shift(xp) : xTextFirst ? yp : yp + yLen;
  const end = xe < yp ? xe : xe > ye ? shift(xe) : xp < yp ? yp : start;
  return { position: start, length: end - start, text: x.text };
}

/** `text` with `change` applied. */
export function applyChange(text, change) {
  return text.slice(0, change.position) + change.text + text.slice(change.position + change.length);
}

/** A random prefix for a document's change ids (`crypto.getRandomValues` works on plain http too). */
function randomPrefix() {
  const bytes = new Uint8Array(8);
  if (globalThis.crypto?.getRandomValues) globalThis.crypto.getRandomValues(bytes);
  else for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * A collaborative document joined through `herald.document(id)`. Local edits apply at once and
 * are sent one at a time, each with a `changeId` of its own; remote changes are transformed
 * against the local ones not yet acknowledged, so every participant ends with the server's
 * text.
 *
 * Across a reconnect the local edits are kept: the document rejoins with the version it last
 * had confirmed and catches up on the changes it missed. A caught-up change whose `changeId` is
 * the one in flight is that change's acknowledgement (it was committed, the acknowledgement was
 * lost with the connection): it is not applied again. The others are transformed against the
 * local edits like any remote change; then the change in flight, if it was not committed, is
 * sent again (the server applies a change id once, so a resend racing a late commit is
 * harmless). When the server no longer keeps the changes since that version it sends a
 * snapshot: the document takes it, drops the local edits not yet acknowledged and emits
 * `resync` ({documentId, version, dropped}).
 *
 * Events (`on`): `change` ({text, change, remote}), `participants` (list), `cursor`
 * ({user, cursor}), `resync`, `error`.
 */
export class HeraldDocument {
  constructor(herald, id) {
    this.herald = herald;
    this.id = id;
    this.text = "";
    /** The last version confirmed by the server: `text` is it plus `sent` and `waiting`. */
    this.version = 0;
    /** Whether changes may be sent (joined, and caught up after a rejoin). */
    this.joined = false;
    /** Whether a snapshot or catch-up has been received: a rejoin then catches up by version. */
    this.synced = false;
    /** The next rejoin asks for a snapshot (the local edits cannot be rebased). */
    this.wantSnapshot = false;
    /** While catching up: the version the server had when it answered the rejoin. */
    this.catchUpTo = null;
    this.participants = [];
    /** Remote cursors by user. */
    this.cursors = new Map();
    /** The change in flight ({position, length, text, changeId}), and its command's id. */
    this.sent = null;
    this.sentId = null;
    this.waiting = [];
    this.changePrefix = randomPrefix();
    this.changeCount = 0;
    this.handlers = new Map();
    this.ready = new Promise((resolve) => (this.resolveReady = resolve));
  }

  on(type, fn) {
    if (!this.handlers.has(type)) this.handlers.set(type, new Set());
    this.handlers.get(type).add(fn);
    return () => this.handlers.get(type)?.delete(fn);
  }

  emit(type, value) {
    this.handlers.get(type)?.forEach((fn) => fn(value));
  }

  /**
   * (Re)joins: the first time for a snapshot, then from the last confirmed version, keeping
   * the local edits not yet acknowledged (see the class comment).
   */
  join() {
    this.joined = false;
    this.catchUpTo = null;
    const data = { documentId: this.id };
    if (this.synced && !this.wantSnapshot) data.version = this.version;
    this.herald.send({ type: "document.join", data });
  }

  /** The connection closed: nothing is sent until the rejoin has caught up. */
  disconnected() {
    this.joined = false;
    this.catchUpTo = null;
  }

  /** A local edit: delete `length` code units at `position`, insert `text`. */
  edit(position, length, text = "") {
    const change = { position, length, text, changeId: `${this.changePrefix}-${++this.changeCount}` };
    this.text = applyChange(this.text, change);
    this.waiting.push(change);
    this.sendNext();
    this.emit("change", { text: this.text, change: { position, length, text }, remote: false });
  }

  /** Shows this participant's cursor (any small JSON, e.g. {position, selectionEnd}) to the others. */
  moveCursor(cursor) {
    if (this.joined) this.herald.send({ type: "cursor_move", data: { documentId: this.id, cursor } });
  }

  leave() {
    this.herald.documents.delete(this.id);
    this.herald.send({ type: "document.leave", data: { documentId: this.id } });
  }

  sendNext() {
    if (this.sent || !this.joined || this.waiting.length === 0) return;
    this.sent = this.waiting.shift();
    this.sendSent();
  }

  /** Sends the change in flight on the current version (again, after a rejoin). */
  sendSent() {
    this.sentId = this.herald.nextId++;
    const { position, length, text, changeId } = this.sent;
    this.herald.send({
      type: "document.change",
      id: this.sentId,
      data: { documentId: this.id, baseVersion: this.version, position, length, text, changeId },
    });
  }

  /** Caught up after a rejoin: the change in flight (not acknowledged) goes again, then the rest. */
  caughtUp() {
    this.catchUpTo = null;
    this.joined = true;
    if (this.sent) this.sendSent();
    else this.sendNext();
  }

  /** Transforms a remote change against the local edits not yet acknowledged and applies it. */
  applyRemote(d) {
    let remote = d.change;
    const mine = this.sent ? [this.sent, ...this.waiting] : this.waiting;
    const rebased = mine.map((m) => {
      const r = { ...transformChange(m, remote, false), changeId: m.changeId };
      remote = transformChange(remote, m, true);
      return r;
    });
    if (this.sent) [this.sent, ...this.waiting] = rebased;
    else this.waiting = rebased;
    this.text = applyChange(this.text, remote);
    this.emit("change", { text: this.text, change: remote, remote: true, author: d.author });
  }

  receive(msg) {
    const d = msg.data;
    switch (msg.type) {
      case "document.joined":
        this.participants = d.participants;
        this.emit("participants", this.participants);
        if (d.caughtUp) {
          // The missed changes follow, up to `d.version`; on a rejoin over the same connection
          // some may have arrived live already.
          this.catchUpTo = d.version;
          if (this.version >= this.catchUpTo) this.caughtUp();
          break;
        }
        if (this.synced && (this.sent || this.waiting.length)) {
          // Too far behind to rebase: the unacknowledged edits give way to the snapshot.
          const dropped = (this.sent ? [this.sent, ...this.waiting] : this.waiting).map(
            ({ position, length, text }) => ({ position, length, text }),
          );
          this.emit("resync", { documentId: this.id, version: d.version, dropped });
        }
        this.text = d.content;
        this.version = d.version;
        this.sent = null;
        this.waiting = [];
        this.synced = true;
        this.wantSnapshot = false;
        this.joined = true;
        this.emit("change", { text: this.text, remote: true });
        this.resolveReady(this);
        break;
      case "text_change_applied":
        if (d.version <= this.version) break; // caught up on a change that came live already
        const mine = this.sent && (msg.id === this.sentId || (d.changeId !== undefined && d.changeId === this.sent.changeId));
        if (mine) {
          // The change in flight, committed: live, or in a catch-up after its acknowledgement
          // was lost with the connection.
          this.version = d.version;
          this.sent = null;
          this.sendNext();
        } else if (d.version !== this.version + 1) {
          // A change missed: catch up from the last one had.
          return this.join();
        } else {
          this.version = d.version;
          this.applyRemote(d);
        }
        if (this.catchUpTo !== null && this.version >= this.catchUpTo) this.caughtUp();
        break;
      case "cursor_move":
        this.cursors.set(d.user, d.cursor);
        this.emit("cursor", { user: d.user, cursor: d.cursor });
        break;
      case "participant_joined":
      case "participant_left":
        if (msg.type === "participant_left") this.cursors.delete(d.user);
        this.participants = d.participants;
        this.emit("participants", this.participants);
        break;
      case "error":
        this.emit("error", d);
        if (msg.id !== this.sentId || !this.sent) break;
        if (d.code === "CONFLICT") {
          // Its baseVersion is too old (or ahead of the server's): a refused change is not
          // applied, and `sent` has been transformed against every change received since, so
          // it is still valid on the current version. Rejoining by version keeps every edit
          // and sends it again once caught up; if the server no longer keeps that version it
          // answers with a snapshot and `resync`.
          this.join();
        } else {
          // Refused for what it is (beyond the text, too long…): the edits made after it build
          // on it and cannot be rebased without it, so they go with a fresh snapshot.
          this.wantSnapshot = true;
          this.join();
        }
        break;
    }
  }
}

export class Herald {
  /**
   * @param {object} [options]
   * @param {string} [options.url] the server's base URL (default: the page's origin)
   * @param {string|(() => string|Promise<string>)} [options.token] JWT or API key
   * @param {"auto"|"websocket"|"sse"} [options.transport]
   * @param {number} [options.since] resume every subscription from this seq
   * @param {typeof WebSocket} [options.WebSocket] e.g. the `ws` package under Node
   * @param {typeof EventSource} [options.EventSource]
   * @param {boolean} [options.autoConnect] connect at once (default true)
   */
  constructor(options = {}) {
    const origin = globalThis.location ? globalThis.location.origin : undefined;
    this.url = (options.url || origin || "").replace(/\/$/, "");
    if (!this.url) throw new Error("Herald: options.url is required outside a browser");
    this.token = options.token;
    this.transport = options.transport || "auto";
    this.WebSocket = options.WebSocket || globalThis.WebSocket;
    this.EventSource = options.EventSource || globalThis.EventSource;
    this.baseDelay = options.baseDelayMs || BASE_DELAY_MS;
    this.maxDelay = options.maxDelayMs || MAX_DELAY_MS;
    /** The highest seq received: where a new subscription starts. */
    this.seq = options.since ?? null;
    this.state = "idle";
    this.connectionId = null;
    this.userId = null;
    this.handlers = new Map();
    this.subscriptions = new Map();
    this.rooms = new Map();
    this.streams = new Map();
    /** Collaborative documents joined, by id. */
    this.documents = new Map();
    this.queue = [];
    this.pending = new Map();
    this.nextId = 1;
    this.attempt = 0;
    this.wsFailures = 0;
    this.wsWorked = false;
    this.socket = null;
    this.source = null;
    this.timer = null;
    // After the constructor returns, so handlers attached right after `new` see "connecting".
    if (options.autoConnect !== false) queueMicrotask(() => this.connect());
  }

  // ---- events ------------------------------------------------------------------------------

  /**
   * Calls `fn(message)` for each server message of `type` (`*`: every message). Connection
   * state changes arrive as `state` ({state, previous, attempt?, delay?}), failures of
   * queued commands as `error`. Returns a function that removes the handler.
   */
  on(type, fn) {
    if (!this.handlers.has(type)) this.handlers.set(type, new Set());
    this.handlers.get(type).add(fn);
    return () => this.handlers.get(type)?.delete(fn);
  }

  emit(type, message, wildcard = true) {
    const call = (fn) => {
      try {
        fn(message);
      } catch (e) {
        console.error("herald.js handler failed", e);
      }
    };
    this.handlers.get(type)?.forEach(call);
    if (wildcard) this.handlers.get("*")?.forEach(call);
  }

  setState(state, extra = {}) {
    const previous = this.state;
    if (previous === state) return;
    this.state = state;
    this.emit("state", { state, previous, ...extra }, false);
  }

  // ---- connection --------------------------------------------------------------------------

  /** Opens the connection (called by the constructor unless `autoConnect: false`). */
  connect() {
    if (this.state !== "idle" && this.state !== "closed") return;
    this.closing = false;
    this.open();
  }

  /** Closes for good: no reconnect until `connect()` is called again. */
  close() {
    this.closing = true;
    clearTimeout(this.timer);
    this.teardown();
    this.setState("closed");
  }

  useSse() {
    if (this.transport === "sse") return true;
    if (this.transport === "websocket") return false;
    return !this.WebSocket || this.wsFailures >= WS_FAILURES_BEFORE_SSE;
  }

  open() {
    this.setState(this.attempt === 0 ? "connecting" : "reconnecting", { attempt: this.attempt });
    if (this.useSse()) this.openSse();
    else this.openWebSocket();
  }

  teardown() {
    const ws = this.socket;
    this.socket = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try {
        ws.close(1000);
      } catch {
        // already closed
      }
    }
    this.source?.close();
    this.source = null;
    this.connectionId = null;
    for (const doc of this.documents.values()) doc.disconnected();
    // A request that went out may or may not have been carried out: its caller decides
    // whether to retry. Requests still queued wait for the next connection.
    for (const [id, p] of this.pending) {
      if (p.sent) {
        this.pending.delete(id);
        p.reject(new Error("connection lost before the reply"));
      }
    }
  }

  scheduleReconnect(reason) {
    this.teardown();
    if (this.closing) return;
    this.attempt += 1;
    const delay = backoffDelay(this.attempt, this.baseDelay, this.maxDelay);
    this.setState("reconnecting", { attempt: this.attempt, delay, reason });
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.open(), delay);
  }

  async credentials() {
    return typeof this.token === "function" ? await this.token() : this.token;
  }

  async startFrom() {
    // A client that has seen nothing yet starts its subscriptions at the server's current
    // head, so its first reconnect already knows where to resume from.
    if (this.seq !== null) return;
    try {
      const health = await (await fetch(`${this.url}/health`)).json();
      if (this.seq === null) this.seq = health.events?.lastSeq ?? 0;
    } catch {
      // Unreachable: the connection attempt itself will fail and retry.
    }
  }

  openWebSocket() {
    const ws = new this.WebSocket(`${this.url.replace(/^http/, "ws")}/ws`);
    this.socket = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      this.wsWorked = true;
    };
    ws.onmessage = (m) => {
      let msg;
      try {
        msg = JSON.parse(typeof m.data === "string" ? m.data : m.data.toString());
      } catch {
        return;
      }
      this.receive(msg);
    };
    ws.onclose = (e) => {
      if (!opened && !this.wsWorked) this.wsFailures += 1;
      this.scheduleReconnect({ code: e.code, reason: e.reason });
    };
    ws.onerror = () => {
      // onclose follows and reconnects.
    };
  }

  /** Sends a message now (when connected) or queues it for the next connection. */
  send(message) {
    if (this.state === "open" && this.socket) {
      this.socket.send(JSON.stringify(message));
      const pending = this.pending.get(message.id);
      if (pending) pending.sent = true;
    } else if (this.state === "open" && this.source && message.type === "publish") {
      this.publishHttp(message);
    } else {
      this.queue.push(message);
    }
  }

  /** Sends with an `id` and resolves with the reply that echoes it (rejects on `error`). */
  request(message) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, sent: false });
      this.send({ ...message, id });
    });
  }

  async afterOpen(greeting) {
    this.connectionId = greeting.data?.connectionId ?? null;
    const socket = this.socket;
    const token = await this.credentials();
    if (token && socket === this.socket) {
      this.socket.send(JSON.stringify({ type: "authenticate", data: { token } }));
    }
    await this.startFrom();
    if (socket !== this.socket) return;
    this.attempt = 0;
    this.setState("open", { transport: "websocket", connectionId: this.connectionId });
    for (const sub of this.subscriptions.values()) this.sendSubscribe(sub);
    for (const [room, user] of this.rooms) this.socket.send(JSON.stringify({ type: "join", room, user }));
    for (const doc of this.documents.values()) doc.join();
    for (const [stream, s] of this.streams) {
      this.socket.send(JSON.stringify({ type: "stream.subscribe", stream, lastId: s.lastId }));
    }
    this.flushQueue();
  }

  flushQueue() {
    const queued = this.queue;
    this.queue = [];
    for (const m of queued) this.send(m);
  }

  receive(msg) {
    if (msg.type === "connection.established") {
      this.afterOpen(msg);
      return;
    }
    if (msg.type === "authenticated") this.userId = msg.data?.userId ?? null;
    if (msg.type === "event") {
      this.dispatchEvent(msg.data);
    } else if (msg.type === "stream.message") {
      const s = this.streams.get(msg.stream);
      if (s) {
        s.lastId = msg.messageId;
        s.handler?.(msg.data, msg);
      }
    } else if (msg.type === "subscription.created" && msg.id !== undefined) {
      const sub = [...this.subscriptions.values()].find((s) => s.requestId === msg.id);
      if (sub) sub.serverId = msg.data.subscriptionId;
    }
    const doc = msg.data?.documentId !== undefined ? this.documents.get(msg.data.documentId) : undefined;
    if (doc) doc.receive(msg);
    else if (msg.type === "error" && msg.id !== undefined) {
      for (const d of this.documents.values()) if (d.sentId === msg.id) d.receive(msg);
    }
    if (msg.id !== undefined && this.pending.has(msg.id)) {
      const { resolve, reject } = this.pending.get(msg.id);
      this.pending.delete(msg.id);
      if (msg.type === "error") reject(Object.assign(new Error(msg.data?.error), msg.data));
      else resolve(msg);
    }
    this.emit(msg.type, msg);
  }

  dispatchEvent(event) {
    if (typeof event.seq === "number" && (this.seq === null || event.seq > this.seq)) {
      this.seq = event.seq;
    }
    for (const sub of this.subscriptions.values()) {
      // Each subscription keeps its own position: on a reconnect, resumed subscriptions
      // replay side by side and their events may interleave out of global order.
      if (event.seq > sub.seq && matchesSubscription(sub, event)) {
        sub.seq = event.seq;
        sub.handler?.(event);
      }
    }
  }

  // ---- Server-Sent Events fallback -----------------------------------------------------------

  async openSse() {
    const subs = [...this.subscriptions.values()];
    const params = new URLSearchParams();
    // One stream carries the union of the patterns; each subscription's own filters are
    // applied here, and it resumes from the oldest position among them (events it already
    // has are dropped by their seq).
    const types = [...new Set(subs.flatMap((s) => s.eventTypes))];
    if (types.length) params.set("types", types.join(","));
    const token = await this.credentials();
    if (token) params.set("token", token);
    await this.startFrom();
    const from = subs.length ? Math.min(...subs.map((s) => s.seq)) : this.seq;
    if (from !== null) params.set("lastEventId", String(from));
    if (this.closing) return;
    const source = new this.EventSource(`${this.url}/api/realtime/stream?${params}`);
    this.source = source;
    source.addEventListener("connection", (e) => {
      this.connectionId = JSON.parse(e.data).connectionId;
      this.attempt = 0;
      this.setState("open", { transport: "sse", connectionId: this.connectionId });
      this.flushQueue();
    });
    source.addEventListener("event", (e) => {
      const event = JSON.parse(e.data);
      this.dispatchEvent(event);
      this.emit("event", { type: "event", data: event });
    });
    for (const name of ["notification", "recovery", "heartbeat"]) {
      source.addEventListener(name, (e) => this.emit(name, { type: name, data: JSON.parse(e.data) }));
    }
    source.addEventListener("close", () => this.scheduleReconnect({ reason: "server closed the stream" }));
    // EventSource retries by itself, without backoff or our resume position: take over.
    source.onerror = () => this.scheduleReconnect({ reason: "stream failed" });
  }

  async publishHttp(message) {
    const { id, data } = message;
    const token = await this.credentials();
    const headers = { "content-type": "application/json" };
    if (token) headers.authorization = `Bearer ${token}`;
    const pending = this.pending.get(id);
    try {
      const res = await fetch(`${this.url}/api/realtime/publish`, {
        method: "POST",
        headers,
        body: JSON.stringify(data),
      });
      const body = await res.json();
      this.pending.delete(id);
      if (res.ok) pending?.resolve({ type: "event.published", data: body.event, id });
      else pending?.reject(Object.assign(new Error(body.error), body));
    } catch (e) {
      this.pending.delete(id);
      pending?.reject(e);
    }
  }

  // ---- commands ------------------------------------------------------------------------------

  /** Authenticates (again) with a new token; resolves with the user id. */
  async authenticate(token) {
    this.token = token;
    const reply = await this.request({ type: "authenticate", data: { token } });
    return reply.data.userId;
  }

  /**
   * Subscribes to event types (`chat.message`, `user.*`, `*`) with optional filters
   * ({userId, roomId, custom}); `handler(event)` gets each matching event once, in seq order,
   * across reconnects. Returns {unsubscribe()}.
   */
  subscribe(eventTypes, filters = {}, handler = undefined) {
    if (typeof filters === "function") [handler, filters] = [filters, {}];
    const types = Array.isArray(eventTypes) ? eventTypes : [eventTypes];
    const key = this.nextId++;
    const sub = { key, eventTypes: types, filters, handler, seq: this.seq, serverId: null };
    this.subscriptions.set(key, sub);
    if (this.state === "open" && this.socket) this.sendSubscribe(sub);
    else if (this.state === "open" && this.source) this.reopenSse();
    return {
      unsubscribe: () => {
        this.subscriptions.delete(key);
        if (sub.serverId && this.socket && this.state === "open") {
          this.send({ type: "unsubscribe", data: { subscriptionId: sub.serverId } });
        } else if (this.source) {
          this.reopenSse();
        }
      },
    };
  }

  sendSubscribe(sub) {
    // A subscription made before the first connection knew no position: it starts where
    // the client is now.
    if (sub.seq === null) sub.seq = this.seq;
    sub.requestId = this.nextId++;
    const data = { eventTypes: sub.eventTypes, filters: sub.filters };
    if (sub.seq !== null) data.since = sub.seq;
    this.socket.send(JSON.stringify({ type: "subscribe", data, id: sub.requestId }));
  }

  reopenSse() {
    this.teardown();
    this.openSse();
  }

  /** Publishes an event; resolves with `{id, seq, type, timestamp}` once it is durable. */
  async publish(type, data = {}, options = {}) {
    const reply = await this.request({ type: "publish", data: { type, data, ...options } });
    return reply.data;
  }

  /** Joins a room (rejoined after each reconnect); `user` is a profile for anonymous use. */
  join(room, user = undefined) {
    this.rooms.set(room, user);
    return this.request({ type: "join", room, user });
  }

  leave(room) {
    this.rooms.delete(room);
    return this.request({ type: "leave", room });
  }

  /** Sends a chat message to a room; resolves with its `{id, seq}` once it is durable. */
  async chat(room, text) {
    const reply = await this.request({ type: "chat", room, text });
    return reply.data;
  }

  typing(room, isTyping = true) {
    this.send({ type: "typing", room, isTyping });
  }

  /** A private message to every connection of user `target` (authenticated senders only). */
  async privateMessage(target, text) {
    const reply = await this.request({ type: "private_message", target, text });
    return reply.data;
  }

  /** Who is in a room now: `{room, count, users: [{userId?, name, connections}]}`. */
  async presence(room) {
    const token = await this.credentials();
    const res = await fetch(`${this.url}/api/rooms/${encodeURIComponent(room)}/presence`, {
      headers: token ? { authorization: `Bearer ${token}` } : {},
    });
    const body = await res.json();
    if (!res.ok) throw Object.assign(new Error(body.error), body);
    return body;
  }

  /**
   * Joins collaborative document `id` (rejoined after each reconnect); `await doc.ready` for
   * its first snapshot. WebSocket only.
   */
  document(id) {
    let doc = this.documents.get(id);
    if (!doc) {
      doc = new HeraldDocument(this, id);
      this.documents.set(id, doc);
      if (this.state === "open" && this.socket) doc.join();
    }
    return doc;
  }

  /**
   * Subscribes to a stream (seed 002's stream routes): `handler(data, message)` gets the
   * retained snapshot, then each message; after a reconnect only the messages missed.
   */
  streamSubscribe(stream, handler) {
    this.streams.set(stream, { handler, lastId: undefined });
    if (this.state === "open" && this.socket) {
      this.socket.send(JSON.stringify({ type: "stream.subscribe", stream }));
    }
    return {
      unsubscribe: () => {
        this.streams.delete(stream);
        if (this.state === "open" && this.socket) this.send({ type: "stream.unsubscribe", stream });
      },
    };
  }
}
