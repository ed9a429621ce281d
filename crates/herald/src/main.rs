//! The `herald` command: `serve` runs the server; `token` mints a development JWT.

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
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_message_bytes: Option<usize>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    outbox_max_messages: Option<usize>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    outbox_max_bytes: Option<usize>,
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    match cli.command {
        Command::Serve(flags) => {
            let config =
                Config::load(cli.config.as_deref(), &flags).context("invalid configuration")?;
            let db = config.database.display().to_string();
            herald_server::serve(config, shutdown_signal(), |s| {
                let port = s.addr.port();
                let host = if s.addr.ip().is_unspecified() { "localhost".to_owned() } else { s.addr.ip().to_string() };
                println!("Herald listening on http://{}", s.addr);
                println!("  database:  {db}");
                println!("  dashboard: http://{host}:{port}/?token={}", s.admin_token);
                println!("  admin token (Authorization: Bearer ...): {}", s.admin_token);
                if s.generated_secret {
                    println!("  JWT_SECRET is not set: a random secret was generated for this run; tokens end with it.");
                }
            })
            .await
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
            println!(
                "{}",
                Auth::new(&secret, &[]).mint(&user, role.as_deref(), rooms, ttl)
            );
            Ok(())
        }
        Command::Bench(args) => herald_bench::run(args).await,
    }
}
