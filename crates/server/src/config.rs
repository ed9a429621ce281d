//! Configuration: built-in defaults, then `herald.toml`, then `HERALD_*` environment variables
//! (and `JWT_SECRET`), then command-line flags — each layer overriding the previous.
//!
//! The `config` fuzz target (fuzz/fuzz_targets/config.rs) compiles this file on its own: keep
//! its dependencies to figment, serde and herald-core (no `crate::` paths).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use herald_core::stream::StreamSpec;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub host: IpAddr,
    /// Port to listen on; 0 picks a free one.
    pub port: u16,
    /// SQLite database file (unused when `postgres` is set).
    pub database: PathBuf,
    /// PostgreSQL URL (`postgres://user:password@host:port/database`): the event store shared
    /// by several nodes, instead of the SQLite file.
    pub postgres: Option<String>,
    /// Redis URL (`redis://host:port`): the log shared by several nodes (needs `postgres`).
    pub redis: Option<String>,
    /// Prefix of Herald's Redis keys, so that several clusters can share one Redis.
    pub redis_prefix: String,
    /// The URL this node is reached at (`http://10.0.0.1:3001`), as `GET /api/cluster/nodes`
    /// shows it; unset: `http://` and the address it listens on, which is wrong when it
    /// listens on `0.0.0.0` or behind NAT.
    pub advertise_url: Option<String>,
    /// HS256 secret for JWTs. When unset a random one is generated for this run.
    pub jwt_secret: Option<String>,
    /// Server-side API keys for backends; a key may publish as any user.
    pub api_keys: Vec<String>,
    /// Origins allowed by CORS; `["*"]` allows any. Writes authenticated by the dashboard's
    /// cookie are accepted only from these origins and the server's own.
    pub cors_origins: Vec<String>,
    /// Herald is reached over HTTPS (a TLS proxy in front): the dashboard cookie is `Secure`.
    pub https: bool,
    /// Events older than this are deleted by the retention job, but the document changes no
    /// snapshot covers yet.
    pub retention_hours: u64,
    pub retention_interval_secs: u64,
    /// WebSocket pings and SSE heartbeats.
    pub ping_interval_secs: u64,
    /// Connections with no client traffic for this long are closed.
    pub idle_timeout_secs: u64,
    /// WebSocket and SSE connections at once (beyond it, 503).
    pub max_connections: usize,
    /// Sockets of every kind (plain HTTP, SSE, WebSocket) open at once, counted from accept to
    /// close; beyond it, a new socket is answered 503 and closed. Unset: `max_connections` and
    /// half again, at least 1 000 more. Never above the process's open-file limit less a
    /// reserve (the soft limit is first raised to the hard one), so that the process does not
    /// run out of file descriptors.
    pub max_sockets: Option<usize>,
    /// Sockets open at once from one client address (all kinds, as `max_sockets`); beyond it,
    /// a new one is answered 429 and closed. 0: no bound. Behind a reverse proxy every
    /// connection comes from the proxy's address.
    pub max_connections_per_ip: u32,
    /// A new connection that has not sent a whole request head this long after it opened —
    /// or, kept alive, this long after its next request's first byte — is closed.
    pub header_read_timeout_secs: u64,
    /// A kept-alive HTTP connection with no request for this long is closed. (WebSocket and
    /// SSE connections are not idle HTTP: `idle_timeout_secs` is theirs.)
    pub http_idle_timeout_secs: u64,
    /// Threads running connections and requests; unset: one fewer than the machine's cores
    /// (at least one), which leaves a core to the SQLite writer and the kernel's network work
    /// (`Config::worker_threads`).
    pub worker_threads: Option<usize>,
    /// Largest WebSocket message or HTTP body accepted.
    pub max_message_bytes: usize,
    pub max_subscriptions_per_connection: usize,
    /// Resumes replaying history at once on this node (WebSocket `since`, SSE
    /// `Last-Event-ID`); more are refused with 429 / `RATE_LIMITED` until one ends.
    pub max_concurrent_replays: usize,
    /// A collaborative document's longest content, in UTF-16 code units; a change that would
    /// make it longer is refused.
    pub document_max_length: usize,
    /// Changes each open document keeps: a change made on an older version is refused (the
    /// client rejoins for a fresh snapshot), and a client reconnecting from an older one gets
    /// a snapshot. The same on every node of a cluster.
    pub document_window: usize,
    /// A document snapshot is written every this many versions, so opening a document reads
    /// the snapshot and the changes after it.
    pub document_snapshot_every: u64,
    /// Documents one connection may have joined at once.
    pub max_documents_per_connection: usize,
    /// Bounds of each connection's outbound queue; overflowing closes it (code 4008).
    pub outbox_max_messages: usize,
    pub outbox_max_bytes: usize,
    /// A write to a client's socket that makes no progress for this long fails, and the
    /// connection is dropped (a client that stopped reading).
    pub write_timeout_secs: u64,
    /// Publishes per second per WebSocket connection (burst twice this).
    pub publish_rate_per_connection: u32,
    /// New connections per second per client IP (burst twice this).
    pub connection_rate_per_ip: u32,
    /// Long-polls held at once per client IP (an IPv6 client: per /64). Long-polls count
    /// against `max_connections` too.
    pub max_long_polls_per_ip: usize,
    /// The most bytes of events one long-poll answer carries (at least one event); its
    /// `cursor` says where to continue.
    pub long_poll_max_bytes: usize,
    /// Events per second one identity may publish over HTTP (burst twice this; a batch counts
    /// its events). Admins and API keys are not limited.
    pub publish_rate_per_identity: u32,
    /// Events per second published over HTTP from one client IP, all identities together
    /// (burst twice this).
    pub publish_rate_per_ip: u32,
    /// Request-body bytes per second one identity may publish over HTTP (burst twice this).
    pub publish_bytes_per_identity: u32,
    /// Request-body bytes per second published over HTTP from one client IP (burst twice this).
    pub publish_bytes_per_ip: u32,
    /// Seed 003's polling mailboxes kept at most; beyond, the least recently polled is
    /// forgotten.
    pub max_mailboxes: usize,
    /// Mailboxes kept per client IP; beyond, that address's least recently polled is forgotten.
    pub max_mailboxes_per_ip: usize,
    /// Rooms anonymous connections may join (names or `prefix*` patterns; `*` for all).
    pub public_rooms: Vec<String>,
    /// Serves `/echo`, a WebSocket echo on the same connection machinery, for conformance runs.
    pub ws_echo: bool,
    /// Engine.IO heartbeat: the server pings every this many milliseconds...
    pub socketio_ping_interval_ms: u64,
    /// ...and closes a session whose pong has not come this many milliseconds later.
    pub socketio_ping_timeout_ms: u64,
    /// A Socket.IO session that has connected no namespace this long after its handshake is
    /// closed.
    pub socketio_connect_timeout_ms: u64,
    /// Serves the Engine.IO echo (`/engine.io/`) and the Socket.IO conformance namespaces
    /// (`/socket.io/`) of the official protocol suites.
    pub socketio_conformance: bool,
    /// Feeds the demo apps under `/examples/` (simulated stock prices and news, this process's
    /// real stats) and makes the demo chat room public (see `demo.rs`).
    pub demo: bool,
    /// Streams served from start-up (`[[streams]]` tables); more can be created at run time.
    pub streams: Vec<StreamConfig>,
    /// Redis channels whose messages become events (`[[redis_channels]]` tables; needs
    /// `redis`).
    pub redis_channels: Vec<RedisChannelConfig>,
}

/// One `[[streams]]` table of `herald.toml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    pub name: String,
    /// Default `/<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Messages retained for new subscribers (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<usize>,
    /// Deliver at most the latest message per this many ms (0: every message).
    #[serde(default)]
    pub throttle_ms: u64,
    /// Deliver one JSON array of the messages per this many ms (0: no batching).
    #[serde(default)]
    pub batch_ms: u64,
}

/// One `[[redis_channels]]` table: a Redis channel or pattern that backends `PUBLISH` JSON
/// messages to, and who receives the events they become (see `channels.rs`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedisChannelConfig {
    /// A channel name (`user.notifications`)…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// …or a pattern (`room:*`, Redis glob syntax); exactly one of the two.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    pub route: Route,
    /// The events' type; when unset, each message's `type`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

/// Who receives the events of a Redis channel.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Route {
    /// Every connection of the message's `userId` (its personal room `user:{id}`).
    User,
    /// The members of the message's `roomId`, or of the room the pattern's trailing `*`
    /// matched (`room:*` routes `room:lobby` to `lobby`).
    Room,
    /// Every subscriber of the event's type.
    All,
}

impl StreamConfig {
    pub fn spec(&self) -> StreamSpec {
        StreamSpec::new(
            self.name.clone(),
            self.path.clone(),
            self.history,
            self.throttle_ms,
            self.batch_ms,
        )
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            host: IpAddr::from([0, 0, 0, 0]),
            port: 3000,
            database: PathBuf::from("./herald.db"),
            postgres: None,
            redis: None,
            redis_prefix: "herald".into(),
            advertise_url: None,
            jwt_secret: None,
            api_keys: Vec::new(),
            cors_origins: vec!["http://localhost:3000".into()],
            https: false,
            retention_hours: 24,
            retention_interval_secs: 3600,
            ping_interval_secs: 30,
            idle_timeout_secs: 300,
            max_connections: 10_000,
            max_sockets: None,
            max_connections_per_ip: 1_000,
            header_read_timeout_secs: 10,
            http_idle_timeout_secs: 60,
            worker_threads: None,
            max_message_bytes: 64 * 1024,
            max_subscriptions_per_connection: 100,
            max_concurrent_replays: 64,
            document_max_length: 1 << 20,
            document_window: 200,
            document_snapshot_every: 100,
            max_documents_per_connection: 16,
            outbox_max_messages: 4096,
            outbox_max_bytes: 4 << 20,
            write_timeout_secs: 10,
            publish_rate_per_connection: 200,
            connection_rate_per_ip: 200,
            max_long_polls_per_ip: 50,
            long_poll_max_bytes: 1 << 20,
            publish_rate_per_identity: 100,
            publish_rate_per_ip: 1000,
            publish_bytes_per_identity: 1 << 20,
            publish_bytes_per_ip: 4 << 20,
            max_mailboxes: 10_000,
            max_mailboxes_per_ip: 100,
            public_rooms: Vec::new(),
            ws_echo: false,
            socketio_ping_interval_ms: 25_000,
            socketio_ping_timeout_ms: 20_000,
            socketio_connect_timeout_ms: 45_000,
            socketio_conformance: false,
            demo: false,
            streams: Vec::new(),
            redis_channels: Vec::new(),
        }
    }
}

impl Config {
    /// Layers defaults, the TOML file (if it exists, or fails if it was named explicitly and
    /// is missing), the environment, and `overrides` (the CLI flags that were given).
    pub fn load(
        file: Option<&Path>,
        overrides: impl Serialize,
    ) -> Result<Self, Box<figment::Error>> {
        let (path, required) = match file {
            Some(p) => (p.to_owned(), true),
            None => (PathBuf::from("herald.toml"), false),
        };
        if required && !path.exists() {
            let missing = format!("config file {} not found", path.display());
            return Err(Box::new(figment::Error::from(missing)));
        }
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if path.exists() {
            fig = fig.merge(Toml::file(&path));
        }
        // HERALD_LOG, HERALD_LOG_FORMAT and HERALD_CONFIG belong to the command line, not here.
        fig.merge(Env::prefixed("HERALD_").ignore(&["log", "log_format", "config"]))
            .merge(
                Env::raw()
                    .only(&["JWT_SECRET"])
                    .map(|_| "jwt_secret".into()),
            )
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(Box::new)
    }

    /// The runtime's worker threads: `worker_threads`, or one fewer than the cores (at least
    /// one). On two cores, one worker spent less CPU per message than two in every scenario
    /// of `herald bench` (medians 3–30 % less) at about the same rate (docs/performance.md):
    /// a second worker mostly adds wake-ups and cache traffic between the cores, while the
    /// SQLite writer and the kernel's socket work need a core too.
    pub fn worker_threads(&self) -> Result<usize, String> {
        match self.worker_threads {
            Some(0) => Err("worker_threads must be at least 1".into()),
            Some(n) => Ok(n),
            None => Ok(std::thread::available_parallelism()
                .map_or(1, |cores| cores.get().saturating_sub(1).max(1))),
        }
    }
}
