//! Herald's server: configuration, authentication, the WebSocket and SSE transports, the HTTP
//! API, and the process lifecycle (start-up, background jobs, graceful shutdown). Layered, each
//! layer importing only those below it (docs/architecture.md, "Server";
//! `scripts/check-layers.sh`): routes (`api`) → connections (`transport`; `listener`,
//! `channels` and `demo` beside it) → state and operations (`app`) → the request vocabulary
//! (`http`) → `auth`, `config`.

pub mod api;
pub mod app;
pub mod auth;
pub mod channels;
pub mod config;
pub mod demo;
pub mod http;
pub mod listener;
pub mod transport;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures_util::future::BoxFuture;
use herald_core::{CloseReason, EventStore};
use herald_redis::RedisConfig;
use herald_redis::identity::RedisClusterIds;
use herald_store::{Claim, PgStore, SqliteStore};

pub use app::App;
pub use auth::Auth;
pub use config::Config;

/// How long graceful shutdown waits for clients to take their close frames.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// What `serve` tells its caller once it is listening.
pub struct Started {
    pub addr: SocketAddr,
    pub admin_token: String,
    pub generated_secret: bool,
}

/// Runs Herald until `shutdown` resolves, then closes clients (WebSocket 1001, SSE streams
/// ended), commits every accepted publish and closes the store.
pub async fn serve(
    mut config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_started: impl FnOnce(&Started),
) -> anyhow::Result<()> {
    api::system::install_metrics();
    let (secret, generated_secret) = match &config.jwt_secret {
        Some(s) if !s.is_empty() => {
            auth::check_secret(s).map_err(anyhow::Error::msg)?;
            (s.clone(), false)
        }
        _ => (random_secret(), true),
    };
    demo::open_room(&mut config);
    if config.redis.is_some() && config.postgres.is_none() {
        anyhow::bail!("redis needs postgres: the nodes sharing a log must share one event store");
    }
    let (store, lost) = open_store(&config).await?;
    let listener = listener::bind(SocketAddr::new(config.host, config.port))?;
    let url = config
        .advertise_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", listener.local_addr().expect("bound")));
    let app = App::new(config, &secret, store.clone(), url)
        .await
        .map_err(|e| anyhow::anyhow!(e.message))?;
    let bridge = channels::Bridge::start(&app).await?;
    let background = spawn_background_jobs(app.clone());
    let demo = app
        .config
        .demo
        .then(|| tokio::spawn(demo::run(app.clone())));

    on_started(&Started {
        addr: listener.local_addr()?,
        admin_token: app.auth.mint("admin", Some("admin"), None, 30 * 24 * 3600),
        generated_secret,
    });

    let hub = app.hub.clone();
    let stopping = app.stopping.clone();
    let lost_store = Arc::new(parking_lot::Mutex::new(None));
    let losing = lost_store.clone();
    let router = api::router(app.clone());
    let listener = listener::Listener::new(listener, router, &app.config);
    listener
        .serve(async move {
            tokio::select! {
                _ = shutdown => {}
                reason = lost => {
                    tracing::error!(%reason, "this node lost its event store: stopping");
                    *losing.lock() = Some(reason);
                }
            }
            tracing::info!("shutting down: closing connections");
            stopping.send_replace(true);
            hub.close_all(CloseReason::SHUTDOWN);
        })
        .await;

    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    while app.hub.connection_count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    background.abort();
    if let Some(demo) = demo {
        demo.abort();
    }
    if let Some(bridge) = bridge {
        bridge.shutdown().await;
    }
    if let Some(cluster) = &app.cluster {
        cluster.shutdown().await;
    }
    app.streams.shutdown();
    app.shutdown_log().await;
    store.close().await?;
    if let Some(reason) = lost_store.lock().take() {
        anyhow::bail!(
            "stopped: {reason}. It stopped rather than acknowledge events it could not keep: \
             find out which node runs on the database before starting this one again."
        );
    }
    tracing::info!("stopped");
    Ok(())
}

/// Opens the event store and claims it for this node: refused, with a message that names the
/// owner and what to change, when another node or cluster owns it (`herald_store::ownership`).
/// The future resolves, with the reason, if the node loses the store while it runs.
async fn open_store(
    config: &Config,
) -> anyhow::Result<(Arc<dyn EventStore>, BoxFuture<'static, String>)> {
    let Some(url) = &config.postgres else {
        let store = SqliteStore::open(&config.database)?;
        return Ok((Arc::new(store), Box::pin(std::future::pending())));
    };
    let claim = match &config.redis {
        Some(redis) => {
            let redis = RedisConfig {
                url: redis.clone(),
                prefix: config.redis_prefix.clone(),
            };
            Claim::Cluster {
                prefix: redis.prefix.clone(),
                ids: Arc::new(RedisClusterIds::connect(&redis).await?),
            }
        }
        None => Claim::Standalone,
    };
    let store = PgStore::open(url, claim).await?;
    let lost = Box::pin(store.lost());
    Ok((Arc::new(store), lost))
}

/// How the start-up banner names a PostgreSQL store: its URL without the password.
pub fn store_description(postgres_url: &str) -> String {
    herald_store::postgres::display_url(postgres_url)
}

/// `herald release-store`: removes the ownership record of the PostgreSQL database at `url`, so
/// that another cluster or a stand-alone node may claim it; refused while any node runs on it.
/// Says what it released.
pub async fn release_store(url: &str) -> anyhow::Result<String> {
    let db = store_description(url);
    Ok(match herald_store::postgres::release(url).await? {
        Some(owner) => format!("released {db}: it belonged to {owner}"),
        None => format!("{db} had no owner to release"),
    })
}

fn random_secret() -> String {
    // Two v4 UUIDs: 244 random bits from the OS generator.
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Retention, heartbeats, idle-connection sweeping and rate-limiter housekeeping.
fn spawn_background_jobs(app: Arc<App>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let retention = Duration::from_secs(app.config.retention_interval_secs.max(1));
        let sweep = Duration::from_secs(app.config.ping_interval_secs.clamp(1, 30));
        let mut retention_tick = tokio::time::interval(retention);
        let mut sweep_tick = tokio::time::interval(sweep);
        let ping = Duration::from_secs(app.config.ping_interval_secs.max(1));
        let mut ping_tick = tokio::time::interval_at(tokio::time::Instant::now() + ping, ping);
        loop {
            tokio::select! {
                _ = ping_tick.tick() => {
                    app.hub.heartbeat();
                }
                _ = retention_tick.tick() => {
                    let cutoff = Utc::now() - chrono::Duration::hours(app.config.retention_hours as i64);
                    match app.store.delete_before(cutoff).await {
                        Ok(n) if n > 0 => tracing::info!(deleted = n, %cutoff, "retention: deleted old events"),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "retention job failed"),
                    }
                }
                _ = sweep_tick.tick() => {
                    let idle_ms = (app.config.idle_timeout_secs * 1000) as i64;
                    let closed = app.hub.close_idle(idle_ms);
                    if closed > 0 {
                        tracing::info!(closed, "closed idle connections");
                    }
                    let expired = app.hub.close_expired(Utc::now().timestamp());
                    if expired > 0 {
                        tracing::info!(expired, "closed connections whose token expired");
                    }
                    app.forget_idle_limits();
                    let forgotten = app.mailboxes.forget_idle(Duration::from_secs(app.config.idle_timeout_secs));
                    if forgotten > 0 {
                        tracing::debug!(forgotten, "forgot idle polling mailboxes");
                    }
                }
            }
        }
    })
}
