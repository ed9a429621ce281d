//! The `herald` command: `serve` runs the server; `token` mints a development JWT; `publish`
//! and `subscribe` are clients of a running server; `bench` generates load.

mod cli;

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use herald_server::{Auth, Config};
use serde::Serialize;

#[derive(Parser)]
#[command(
    name = "herald",
    version,
    about = "Herald: a real-time event server (WebSocket, SSE, pub/sub, rooms, durable history)"
)]
struct Cli {
    /// Configuration file (default: ./herald.toml when present).
    #[arg(long, global = true, env = "HERALD_CONFIG")]
    config: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long, global = true, env = "HERALD_LOG_FORMAT", default_value = "text")]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeFlags),
    /// Mint a JWT for a user (needs JWT_SECRET or jwt_secret in the configuration).
    #[command(
        after_help = "The token is valid on servers sharing that secret. Use it as \
`Authorization: Bearer <token>`, `herald publish --token`, `herald subscribe --token`, HERALD_TOKEN, \
or `?token=` on SSE and long-poll URLs."
    )]
    Token {
        /// The user id (`sub` claim).
        #[arg(long)]
        user: String,
        /// `admin` for an operator token.
        #[arg(long)]
        role: Option<String>,
        /// Limit the rooms the user may join (names or `prefix*` patterns; repeat or comma-separate).
        #[arg(long, value_delimiter = ',')]
        rooms: Option<Vec<String>>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: i64,
    },
    /// Release a PostgreSQL event store that a cluster owns, so that another cluster or a
    /// stand-alone node may use it (refused while any node runs on it).
    #[command(
        after_help = "The database records its owner: the cluster (redis_prefix) or the stand-alone \
node that uses it, and refuses any other. Release it only when that owner is gone for good: a \
cluster whose Redis still holds events not yet committed would lose them."
    )]
    ReleaseStore {
        /// The database (postgres://user:password@host:port/database); default: the
        /// configuration's `postgres`.
        #[arg(long)]
        postgres: Option<String>,
    },
    /// Publish an event to a running server and print its acknowledgement as JSON.
    Publish(cli::PublishArgs),
    /// Print a running server's matching events as JSON lines as they are published;
    /// reconnects and resumes by itself.
    Subscribe(cli::SubscribeArgs),
    /// Generate load against Herald (or a seed-004 room server) and measure it.
    Bench(herald_bench::BenchArgs),
}

/// Flags override `herald.toml` and `HERALD_*` variables; unset flags leave them alone.
#[derive(Args, Serialize, Default)]
struct ServeFlags {
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<IpAddr>,
    #[arg(long, short)]
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    /// SQLite database file.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    database: Option<PathBuf>,
    /// Keep events in PostgreSQL (postgres://user:password@host:port/database) instead of SQLite.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    postgres: Option<String>,
    /// Share the event log with other nodes through Redis (redis://host:port); needs --postgres.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    redis: Option<String>,
    /// Prefix of Herald's Redis keys (default `herald`).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    redis_prefix: Option<String>,
    /// The URL this node is reached at, as the cluster view shows it (default: http:// and
    /// the listen address).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    advertise_url: Option<String>,
    /// Allowed CORS origin (repeatable; `*` for any).
    #[arg(long = "cors-origin")]
    #[serde(skip_serializing_if = "Option::is_none", rename = "cors_origins")]
    cors_origin: Option<Vec<String>>,
    /// A room anonymous connections may join (repeatable or comma-separated; `prefix*` patterns).
    #[arg(long = "public-room", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none", rename = "public_rooms")]
    public_room: Option<Vec<String>>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    retention_hours: Option<u64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    ping_interval_secs: Option<u64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    idle_timeout_secs: Option<u64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_connections: Option<usize>,
    /// Sockets of every kind open at once (default: max_connections and half again, at least
    /// 1 000 more, within the open-file limit).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_sockets: Option<usize>,
    /// Sockets open at once from one client address (0: no bound).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_connections_per_ip: Option<u32>,
    /// Close a connection that has not sent a whole request head within this many seconds.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    header_read_timeout_secs: Option<u64>,
    /// Close a kept-alive HTTP connection with no request for this many seconds.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    http_idle_timeout_secs: Option<u64>,
    /// Threads running connections and requests (default: the cores less one, at least one).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    worker_threads: Option<usize>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_message_bytes: Option<usize>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    outbox_max_messages: Option<usize>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    outbox_max_bytes: Option<usize>,
    /// Drop a connection whose socket accepts no data for this many seconds.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    write_timeout_secs: Option<u64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    publish_rate_per_connection: Option<u32>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    connection_rate_per_ip: Option<u32>,
    /// Serve `/echo`, a WebSocket echo endpoint for conformance testing.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    ws_echo: bool,
    /// Engine.IO ping interval in milliseconds (Socket.IO clients).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    socketio_ping_interval_ms: Option<u64>,
    /// Engine.IO ping timeout in milliseconds.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    socketio_ping_timeout_ms: Option<u64>,
    /// Close a Socket.IO session that connects no namespace within this many milliseconds.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    socketio_connect_timeout_ms: Option<u64>,
    /// Serve `/engine.io/` (echo) and `/socket.io/` as the official Engine.IO and Socket.IO
    /// protocol suites expect, for conformance runs.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    socketio_conformance: bool,
    /// Feed the demo apps under /examples/: simulated stock prices and news, the process's real stats.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    demo: bool,
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HERALD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// jemalloc instead of the system allocator: its size classes carry no per-chunk header and
/// keep long-lived connection state apart from freed set-up buffers, so an idle connection
/// costs less (WebSocket 1.99 → 1.63 KB of RSS, SSE 1.86 → 1.62 at 10 000), and allocation is
/// cheaper on the publish path (HTTP ingest ~8 % less CPU per publish); the base is ~3 MB
/// larger (docs/performance.md). mimalloc, tried earlier, cost 4.5 KB per connection.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    let runtime = || tokio::runtime::Runtime::new();
    match cli.command {
        Command::Serve(flags) => {
            let config =
                Config::load(cli.config.as_deref(), &flags).context("invalid configuration")?;
            let workers = config
                .worker_threads()
                .map_err(anyhow::Error::msg)
                .context("invalid configuration")?;
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .enable_all()
                .build()?
                .block_on(serve(config))
        }
        Command::Token {
            user,
            role,
            rooms,
            ttl,
        } => {
            let config = Config::load(cli.config.as_deref(), ServeFlags::default())?;
            let secret = config.jwt_secret.filter(|s| !s.is_empty()).context(
                "set JWT_SECRET (or jwt_secret in herald.toml) to mint tokens the server accepts",
            )?;
            herald_server::auth::check_secret(&secret).map_err(anyhow::Error::msg)?;
            println!(
                "{}",
                Auth::new(&secret, &[]).mint(&user, role.as_deref(), rooms, ttl)
            );
            Ok(())
        }
        Command::ReleaseStore { postgres } => {
            let flags = ServeFlags {
                postgres,
                ..Default::default()
            };
            let config = Config::load(cli.config.as_deref(), flags)?;
            let url = config
                .postgres
                .context("give the database with --postgres URL (or postgres in herald.toml)")?;
            println!(
                "{}",
                runtime()?.block_on(herald_server::release_store(&url))?
            );
            Ok(())
        }
        Command::Publish(args) => runtime()?.block_on(cli::publish(args)),
        Command::Subscribe(args) => runtime()?.block_on(cli::subscribe(args, shutdown_signal())),
        Command::Bench(args) => runtime()?.block_on(herald_bench::run(args)),
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let db = match &config.postgres {
        Some(url) => herald_server::store_description(url),
        None => config.database.display().to_string(),
    };
    let demo = config.demo;
    herald_server::serve(config, shutdown_signal(), |s| {
        let port = s.addr.port();
        let host = if s.addr.ip().is_unspecified() { "localhost".to_owned() } else { s.addr.ip().to_string() };
        println!("Herald listening on http://{}", s.addr);
        println!("  database:  {db}");
        println!("  dashboard: http://{host}:{port}/?token={}", s.admin_token);
        println!("  admin token (Authorization: Bearer ...): {}", s.admin_token);
        if demo {
            println!("  demo apps: http://{host}:{port}/examples/");
        }
        if s.generated_secret {
            println!("  JWT_SECRET is not set: a random secret was generated for this run; tokens end with it.");
        }
    })
    .await
}
