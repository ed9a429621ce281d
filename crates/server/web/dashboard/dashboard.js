// Herald's dashboard (seed 000's page, for real). Its requests carry the admin token in the
// cookie that `GET /?token=…` set (see api/web.rs), so the token never sits in a URL the page
// requests. Everything shown is built with textContent: no server or user text is parsed as
// HTML.
import { LineChart } from "./chart.js";

const POLL_MS = 1000;
const SLOW_POLL_MS = 10000;
const RENDER_MS = 250;
const CHART_SAMPLES = 300; // five minutes at one sample a second
const LOG_ROWS = 200; // rows in the DOM: enough to read, few enough to render at any rate
const LOG_KEPT = 2000; // events kept for re-filtering
const WATCHED_ROOMS = 12;
const TYPE = /^[A-Za-z0-9_:-]+(\.[A-Za-z0-9_:-]+)*$/;

const $ = (id) => document.getElementById(id);

function h(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

const time = (t) => new Date(t).toLocaleTimeString();

function mb(bytes) {
  return `${(bytes / 1048576).toFixed(1)} MB`;
}

function duration(secs) {
  const s = Math.floor(secs);
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.floor(s / 60)} min`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

export function toast(message, kind = "info", title = undefined) {
  const node = h("div", `toast ${kind}`);
  if (title) node.append(h("strong", "", title), document.createElement("br"));
  node.append(document.createTextNode(String(message)));
  $("toasts").append(node);
  setTimeout(() => node.remove(), 5000);
}

/** GET/POST a JSON route; a 401 shows the sign-in box. Resolves with {ok, status, body}. */
async function api(path, options = {}) {
  const res = await fetch(path, { credentials: "same-origin", ...options });
  const body = await res.json().catch(() => null);
  if (res.status === 401) $("signIn").hidden = false;
  return { ok: res.ok, status: res.status, body };
}

function setText(id, value) {
  $(id).textContent = value;
}

function markUpdated() {
  setText("lastUpdate", `Last update: ${new Date().toLocaleTimeString()}`);
}

// ---- metrics and charts ------------------------------------------------------------------

class Metrics {
  constructor() {
    this.eventsChart = new LineChart($("eventsChart"), CHART_SAMPLES, (v) => v.toFixed(v < 10 ? 1 : 0));
    this.connectionsChart = new LineChart($("connectionsChart"), CHART_SAMPLES, (v) => v.toFixed(0));
    this.previous = null;
  }

  async poll() {
    const [live, stats] = await Promise.all([api("/api/dashboard/live-data"), api("/api/realtime/stats")]);
    if (!live.ok || !stats.ok) return;
    const d = live.body;
    setText("activeConnections", d.totalConnections);
    setText("wsConnections", d.connectionsByType.websocket);
    setText("sseConnections", d.connectionsByType.sse);
    setText("socketioConnections", d.connectionsByType.socketio);
    setText("uniqueUsers", d.activeUsers);
    setText("subscriptions", stats.body.connections.subscriptions);
    setText("eventsToday", d.eventsToday);
    setText("memoryUsage", mb(d.memoryUsage.rss));
    setText("cpuUsage", `${d.systemLoad.cpuPercent.toFixed(1)} % of ${d.systemLoad.cores} cores`);
    setText("uptime", duration(d.uptime));
    // Events per second from the log's head: exact whatever the log shows or filters.
    const now = performance.now();
    const head = stats.body.events.lastSeq ?? 0;
    if (this.previous) {
      const rate = ((head - this.previous.head) * 1000) / (now - this.previous.at);
      setText("eventsPerSecond", rate.toFixed(1));
      this.eventsChart.push(Math.max(0, rate));
    }
    this.previous = { head, at: now };
    this.connectionsChart.push(d.totalConnections);
    markUpdated();
  }
}

// ---- live event log ----------------------------------------------------------------------

function matchesType(pattern, type) {
  if (!pattern || pattern === "*") return true;
  if (pattern.endsWith(".*")) return type.startsWith(pattern.slice(0, -1));
  return type === pattern;
}

class EventLog {
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.events = []; // newest first
    this.incoming = [];
    this.paused = false;
    this.unseen = 0;
    this.filter = { type: "", room: "", text: "" };
    for (const [id, key] of [["filterType", "type"], ["filterRoom", "room"], ["filterText", "text"]]) {
      $(id).addEventListener("input", (e) => {
        this.filter[key] = e.target.value.trim();
        this.renderAll();
      });
    }
    $("pauseButton").addEventListener("click", () => this.togglePause());
    $("clearButton").addEventListener("click", () => {
      this.events = [];
      this.renderAll();
    });
    setInterval(() => this.flush(), RENDER_MS);
  }

  /** Events arrive at any rate; they are rendered in batches, every RENDER_MS. */
  add(event) {
    this.incoming.push(event);
    this.onEvent(event);
  }

  togglePause() {
    this.paused = !this.paused;
    $("pauseButton").textContent = this.paused ? "Resume" : "Pause";
    if (!this.paused) this.flush();
    this.count();
  }

  matches(e) {
    const f = this.filter;
    if (!matchesType(f.type, e.type)) return false;
    if (f.room && e.roomId !== f.room) return false;
    if (f.text && !JSON.stringify(e).toLowerCase().includes(f.text.toLowerCase())) return false;
    return true;
  }

  row(e) {
    const node = h("div", "event");
    node.dataset.seq = e.seq;
    node.append(
      h("span", "event-time", time(e.timestamp)),
      h("span", "seq", `#${e.seq}`),
      h("span", "type", e.type + (e.roomId ? ` @${e.roomId}` : "")),
      h("span", "data", JSON.stringify(e.data)),
    );
    node.title = e.userId ? `from ${e.userId}` : "";
    return node;
  }

  flush() {
    if (this.paused) {
      this.unseen = this.incoming.length;
      this.count();
      return;
    }
    if (!this.incoming.length) return;
    const batch = this.incoming.reverse();
    this.incoming = [];
    this.unseen = 0;
    this.events = batch.concat(this.events).slice(0, LOG_KEPT);
    const fragment = document.createDocumentFragment();
    for (const e of batch.filter((e) => this.matches(e)).slice(0, LOG_ROWS)) fragment.append(this.row(e));
    const log = $("eventLog");
    log.prepend(fragment);
    while (log.childElementCount > LOG_ROWS) log.lastElementChild.remove();
    this.count();
  }

  renderAll() {
    const rows = this.events.filter((e) => this.matches(e)).slice(0, LOG_ROWS);
    $("eventLog").replaceChildren(...rows.map((e) => this.row(e)));
    this.count();
  }

  count() {
    const paused = this.paused ? ` · paused, ${this.unseen} waiting` : "";
    setText("logCount", `${this.events.length} received${paused}`);
  }
}

// ---- rooms, activity, alerts -------------------------------------------------------------

class Rooms {
  constructor() {
    this.watched = new Set();
    $("roomForm").addEventListener("submit", (e) => {
      e.preventDefault();
      const name = $("roomName").value.trim();
      if (name) this.watch(name);
      $("roomName").value = "";
      this.poll();
    });
  }

  watch(room) {
    if (this.watched.has(room)) return;
    this.watched.add(room);
    // The oldest room stops being watched: the panel shows the most recently active ones.
    if (this.watched.size > WATCHED_ROOMS) this.watched.delete(this.watched.values().next().value);
  }

  async poll() {
    if (!this.watched.size) return;
    const answers = await Promise.all(
      [...this.watched].map((room) => api(`/api/rooms/${encodeURIComponent(room)}/presence`)),
    );
    const list = answers.filter((a) => a.ok).map((a) => a.body);
    $("rooms").replaceChildren(
      ...list.map((p) => {
        const node = h("div", "room");
        node.append(h("strong", "", p.room), h("span", "muted", ` · ${p.count} present`));
        const names = p.users.map((u) => u.name + (u.connections > 1 ? ` (${u.connections})` : ""));
        node.append(h("div", "members", names.join(", ") || "nobody"));
        return node;
      }),
    );
  }
}

async function loadActivity() {
  const { ok, body } = await api("/api/dashboard/activity?limit=8");
  if (!ok) return;
  const rows = body.activities.map((a) => {
    const row = h("div", "metric");
    row.append(h("span", "", a.userId ? `${a.userId}: ${a.message}` : a.message), h("span", "event-time", time(a.timestamp)));
    return row;
  });
  $("userActivity").replaceChildren(...(rows.length ? rows : [h("p", "muted", "No recent activity")]));
}

async function loadAlerts() {
  const { ok, body } = await api("/api/dashboard/alerts");
  if (!ok) return;
  const rows = Object.entries(body.alerts).map(([type, list]) => {
    const row = h("div", "metric");
    const latest = list[0]?.data?.message;
    row.append(
      h("span", "", `${type.replace("system.", "")}${latest ? `: ${latest}` : ""}`),
      h("span", "value", String(list.length)),
    );
    return row;
  });
  $("systemAlerts").replaceChildren(...(rows.length ? rows : [h("p", "muted", "No alerts in the last 24 h")]));
}

/** Every node of the cluster (this one alone when embedded), marking the least loaded. */
async function loadCluster() {
  const { ok, body } = await api("/api/cluster/nodes");
  if (!ok) return;
  const least = body.leastLoaded?.id;
  const rows = body.nodes.map((n) => {
    const row = h("div", "metric node");
    row.dataset.id = n.id;
    const name = h("span", "", n.url);
    name.title = `node ${n.id}`;
    if (n.id === least) name.append(h("small", "least", "least loaded"));
    // The node's clock stamps lastSeen: shown as a time, not as an age that skew would distort.
    const figures = `${n.connections} conn · ${n.cpuPercent.toFixed(0)} % CPU · ${mb(n.rssBytes)} · seen ${time(n.lastSeen)}`;
    row.append(name, h("span", "value", figures));
    return row;
  });
  setText("clusterCount", `${rows.length} node${rows.length === 1 ? "" : "s"}`);
  $("clusterNodes").replaceChildren(...(rows.length ? rows : [h("p", "muted", "No node has reported yet")]));
}

/** Several events of a kind in a burst cause one refresh, not one each. */
function debounce(fn, ms) {
  let timer = null;
  return () => {
    clearTimeout(timer);
    timer = setTimeout(fn, ms);
  };
}

// ---- publish form ------------------------------------------------------------------------

function publishForm() {
  const type = $("eventType");
  const data = $("eventData");
  const room = $("roomId");
  const problem = () => {
    if (!TYPE.test(type.value) || type.value.length > 128) {
      return [type, "The type is dot-separated segments of letters, digits, _ - : (at most 128)."];
    }
    try {
      JSON.parse(data.value);
    } catch (e) {
      return [data, `The data is not valid JSON: ${e.message}`];
    }
    return null;
  };
  const validate = () => {
    const p = problem();
    for (const input of [type, data]) input.classList.toggle("invalid", p?.[0] === input);
    setText("publishError", p ? p[1] : "");
    $("publishButton").disabled = Boolean(p);
    return !p;
  };
  type.addEventListener("input", validate);
  data.addEventListener("input", validate);
  $("publishForm").addEventListener("submit", async (e) => {
    e.preventDefault();
    if (!validate()) return;
    const body = { type: type.value, data: JSON.parse(data.value) };
    if (room.value.trim()) body.roomId = room.value.trim();
    const res = await api("/api/realtime/publish", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    if (res.ok) toast(`${res.body.event.type} published as #${res.body.event.seq}`, "success");
    else setText("publishError", res.body?.error ?? `HTTP ${res.status}`);
  });
  validate();
}

// ---- the stream --------------------------------------------------------------------------

function setStatus(state) {
  const el = $("connectionStatus");
  el.textContent = { online: "Connected", reconnecting: "Reconnecting…", offline: "Disconnected" }[state];
  el.className = `status ${state}`;
}

/**
 * One SSE stream of every event. EventSource reconnects by itself and sends the last seq as
 * Last-Event-ID, so Herald replays what was missed: the log has no gap across reconnects.
 */
function connect(log) {
  const source = new EventSource("/api/realtime/stream?types=*");
  source.onopen = () => setStatus("online");
  source.onerror = async () => {
    if (source.readyState === EventSource.CLOSED) {
      setStatus("offline");
      // A refused stream (bad token) is not retried by EventSource; find out why.
      await api("/api/realtime/stats");
    } else {
      setStatus("reconnecting");
    }
  };
  source.addEventListener("event", (m) => log.add(JSON.parse(m.data)));
  source.addEventListener("heartbeat", markUpdated);
  source.addEventListener("notification", (m) => {
    const n = JSON.parse(m.data);
    toast(n.message, n.type, String(n.type).toUpperCase());
  });
  source.addEventListener("recovery", (m) => {
    const r = JSON.parse(m.data);
    toast(`Events before #${r.oldestSeq} are no longer stored; the log continues from there.`, "warning");
  });
}

function signIn() {
  $("signInForm").addEventListener("submit", (e) => {
    e.preventDefault();
    location.href = `/?token=${encodeURIComponent($("signInToken").value.trim())}`;
  });
  // The token is now in the cookie: keep it out of the address bar and the history.
  if (new URLSearchParams(location.search).has("token")) history.replaceState(null, "", "/");
}

function start() {
  signIn();
  publishForm();
  const metrics = new Metrics();
  const rooms = new Rooms();
  const refreshActivity = debounce(loadActivity, 300);
  const refreshAlerts = debounce(loadAlerts, 300);
  const log = new EventLog((e) => {
    if (e.roomId && !e.roomId.startsWith("user:")) rooms.watch(e.roomId);
    if (["user.login", "user.action", "system.alert"].includes(e.type)) refreshActivity();
    if (["system.error", "system.warning", "system.critical"].includes(e.type)) {
      toast(e.data?.message ?? e.type, e.type.slice("system.".length), e.type);
      refreshAlerts();
    }
  });
  connect(log);
  metrics.poll();
  loadActivity();
  loadAlerts();
  setInterval(() => metrics.poll(), POLL_MS);
  loadCluster();
  setInterval(() => rooms.poll(), 3 * POLL_MS);
  setInterval(loadCluster, 3 * POLL_MS);
  setInterval(() => {
    loadActivity();
    loadAlerts();
  }, SLOW_POLL_MS);
}

start();
