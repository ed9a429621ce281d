//! The running server's shared state and the operations every transport and route uses;
//! with what it owns: chat's sanitising (`chat`), the publish budgets (`limits`), the polling
//! mailboxes (`mailboxes`), collaborative documents (`documents`) and this node's status
//! (`node`).

pub mod chat;
pub mod documents;
pub mod limits;
pub mod mailboxes;
pub mod node;
mod signals;
pub mod yjs;

use std::future::Future;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use herald_core::access::AccessDenied;
use herald_core::event::EncodedEvent;
use herald_core::outbox::WokenTotals;
use herald_core::pattern::validate_type;
use herald_core::protocol::PublishArgs;
use herald_core::room::validate_room;
use herald_core::stream::Streams;
use herald_core::{
    Access, EventStore, Fanout, Hub, Identity, LocalLog, Log, NewEvent, OutboxLimits,
};
use herald_redis::cluster::Cluster;
use herald_redis::{RedisConfig, RedisLog};
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::watch;
use uuid::Uuid;

use self::documents::Documents;
use self::limits::{PerAddress, PublishBudgets, client_key};
use self::mailboxes::Mailboxes;
use self::node::ThisNode;
use self::yjs::YDocs;
use crate::auth::Auth;
use crate::config::Config;
use crate::http::check_id;
use crate::http::error::AppError;
use crate::http::identity::Credentials;

pub struct App {
    pub config: Config,
    pub hub: Arc<Hub>,
    /// Embedded (`LocalLog`), or shared with other nodes through Redis (`RedisLog`). Private:
    /// everything reaches it through `publish_as` / `publish_all`.
    log: Box<dyn Log>,
    /// With Redis: this node's membership of the cluster (heartbeat, cluster-wide presence).
    pub cluster: Option<Cluster>,
    pub store: Arc<dyn EventStore>,
    pub auth: Auth,
    pub started: Instant,
    connect_limiter: DefaultKeyedRateLimiter<IpAddr>,
    /// HTTP publishes' budgets (events and bytes per identity and per client address).
    publish_budgets: PublishBudgets,
    /// Long-polls held per client address (`max_long_polls_per_ip`).
    pub long_polls: Arc<PerAddress>,
    /// Shared with `node`, which samples it on every cluster heartbeat.
    pub process: Arc<Mutex<ProcessMonitor>>,
    /// This node as `GET /api/cluster/nodes` shows it.
    pub node: Arc<ThisNode>,
    /// The highest committed and fanned-out `seq`: long-polls wait on it.
    pub head: Arc<watch::Sender<u64>>,
    /// Set when the server starts shutting down, so held long-polls answer at once.
    pub stopping: watch::Sender<bool>,
    /// Seed 003's polling mailboxes (cursors into the log).
    pub mailboxes: Mailboxes,
    /// Streams (seed 002's stream routes): in memory, declared in the configuration or created
    /// through the API.
    pub streams: Streams,
    /// The collaborative documents open on this node.
    pub documents: Arc<Documents>,
    /// The Yjs documents open on this node (the y-websocket endpoint).
    pub yjs: Arc<YDocs>,
}

/// The log's fan-out: the hub's, counted in the metrics, with the committed head published
/// for long-polls and the documents' changes folded in.
struct Committed {
    hub: Arc<Hub>,
    head: Arc<watch::Sender<u64>>,
    documents: Arc<Documents>,
    yjs: Arc<YDocs>,
}

impl Fanout for Committed {
    fn deliver(&self, batch: &[Arc<EncodedEvent>]) -> usize {
        let delivered = self.hub.deliver(batch);
        self.documents.fold(batch);
        self.yjs.fold(batch);
        metrics::counter!("herald_events_published_total").increment(batch.len() as u64);
        metrics::counter!("herald_events_delivered_total").increment(delivered as u64);
        if let Some(last) = batch.last() {
            self.head.send_replace(last.event.seq);
        }
        delivered
    }

    fn woken(&self) -> WokenTotals {
        Fanout::woken(&*self.hub)
    }

    fn settle(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Fanout::settle(&*self.hub)
    }
}

impl App {
    /// `url` is where this node is reached (`ThisNode::url`).
    pub async fn new(
        config: Config,
        secret: &str,
        store: Arc<dyn EventStore>,
        url: String,
    ) -> Result<Arc<Self>, AppError> {
        let hub = Arc::new(
            Hub::new(
                config.max_connections,
                config.max_subscriptions_per_connection,
                OutboxLimits {
                    max_messages: config.outbox_max_messages,
                    max_bytes: config.outbox_max_bytes,
                },
            )
            .with_access(Arc::new(Access::new(config.public_rooms.clone())))
            .with_replay_limit(config.max_concurrent_replays),
        );
        let last_seq = store.last_seq().await?;
        hub.advance_head(last_seq);
        let head = Arc::new(watch::Sender::new(last_seq));
        let (due, snapshots) = tokio::sync::mpsc::unbounded_channel();
        let documents = Arc::new(Documents::new(
            documents::Bounds {
                window: config.document_window,
                max_len: config.document_max_length,
                snapshot_every: config.document_snapshot_every,
            },
            due.clone(),
        ));
        let yjs = Arc::new(YDocs::new(config.document_snapshot_every, due));
        let fanout: Arc<dyn Fanout> = Arc::new(Committed {
            hub: hub.clone(),
            head: head.clone(),
            documents: documents.clone(),
            yjs: yjs.clone(),
        });
        let process = Arc::new(Mutex::new(ProcessMonitor::new()));
        let node = Arc::new(ThisNode {
            id: uuid::Uuid::new_v4().to_string(),
            url,
            hub: hub.clone(),
            process: process.clone(),
        });
        let (log, cluster): (Box<dyn Log>, _) = match &config.redis {
            Some(url) => {
                let redis = RedisConfig {
                    url: url.clone(),
                    prefix: config.redis_prefix.clone(),
                };
                let log = RedisLog::start(&redis, store.clone(), fanout, last_seq).await?;
                let reporter = node.clone();
                let info =
                    Arc::new(move || serde_json::to_value(reporter.status()).expect("serialises"));
                let receiver = Arc::new(signals::Signalled {
                    hub: hub.clone(),
                    documents: documents.clone(),
                    yjs: yjs.clone(),
                });
                let cluster =
                    Cluster::start(&redis, node.id.clone(), hub.clone(), info, receiver).await?;
                hub.set_cluster_signals(cluster.signals());
                documents.signals.connect(cluster.signals());
                yjs.signals.connect(cluster.signals());
                (Box::new(log), Some(cluster))
            }
            None => {
                let log = LocalLog::start(store.clone(), fanout).await?;
                (Box::new(log), None)
            }
        };
        let streams = Streams::new(is_reserved_path).with_outbox_limits(hub.outbox_limits());
        for declared in &config.streams {
            streams.create(declared.spec()).map_err(|e| {
                AppError::bad_request(format!("invalid [[streams]] configuration: {e}"))
            })?;
        }
        let rate = nonzero(config.connection_rate_per_ip);
        let app = Arc::new(Self {
            auth: Auth::new(secret, &config.api_keys),
            connect_limiter: RateLimiter::keyed(
                Quota::per_second(rate).allow_burst(rate.saturating_mul(nonzero(2))),
            ),
            publish_budgets: PublishBudgets::new(
                config.publish_rate_per_identity,
                config.publish_rate_per_ip,
                config.publish_bytes_per_identity,
                config.publish_bytes_per_ip,
            ),
            long_polls: Arc::default(),
            mailboxes: Mailboxes::new(config.max_mailboxes, config.max_mailboxes_per_ip),
            config,
            hub,
            log,
            cluster,
            store,
            started: Instant::now(),
            process,
            node,
            head,
            stopping: watch::Sender::new(false),
            streams,
            documents,
            yjs,
        });
        tokio::spawn(publish_snapshots(Arc::downgrade(&app), snapshots));
        Ok(app)
    }

    /// Per-IP connection-rate limit for new WebSocket and SSE connections.
    pub fn admit_connection(&self, ip: IpAddr) -> Result<(), AppError> {
        self.connect_limiter.check_key(&ip).map_err(|_| {
            AppError::rate_limited("too many new connections from this address; retry shortly")
        })
    }

    /// The budgets of an HTTP publish of `events` events in a `bytes`-byte body, by `caller`
    /// from `peer`: `publish_rate_per_identity` and `publish_rate_per_ip` (events per second),
    /// `publish_bytes_per_identity` and `publish_bytes_per_ip`, each with a burst of twice the
    /// rate; a batch is charged all its events and may overdraw a budget once. Refused with
    /// 429 `RATE_LIMITED` and `Retry-After`. Admins and API keys are not limited: they are
    /// the operator's own credentials, may publish as anyone anyway, and backends publish in
    /// bulk. WebSocket publishes have their own limit per connection (`transport::session`).
    pub fn admit_http_publish(
        &self,
        caller: &Identity,
        peer: IpAddr,
        events: usize,
        bytes: usize,
    ) -> Result<(), AppError> {
        if caller.is_privileged() {
            return Ok(());
        }
        let ip = client_key(peer);
        self.publish_budgets
            .admit(&caller.user_id, ip, events, bytes)
            .map_err(|(limit, wait)| {
                metrics::counter!("herald_refused_total", "resource" => "publish", "limit" => limit.label())
                    .increment(1);
                metrics::counter!("herald_publish_refused_total", "code" => herald_core::protocol::code::RATE_LIMITED)
                    .increment(1);
                AppError::rate_limited(format!(
                    "publishing too fast ({} exceeded); retry in {} ms",
                    limit.key(),
                    wait.as_millis().max(1)
                ))
                .retry_after(wait)
            })
    }

    pub fn forget_idle_limits(&self) {
        self.connect_limiter.retain_recent();
        self.publish_budgets.forget_idle();
    }

    /// Commits what is queued and stops taking publishes (graceful shutdown).
    pub async fn shutdown_log(&self) {
        self.log.shutdown().await;
    }

    /// The access rules (`herald_core::access`): who may read, write and join what.
    pub fn access(&self) -> &Access {
        self.hub.access()
    }

    /// Whether `who` may join and read `room` (token `rooms` claim, public rooms, personal rooms).
    pub fn check_room_access(&self, who: Option<&Identity>, room: &str) -> Result<(), AppError> {
        self.access().may_join(who, room).map_err(denied)
    }

    /// Whether `who` may read the events and presence of `room`.
    pub fn check_room_read(&self, who: Option<&Identity>, room: &str) -> Result<(), AppError> {
        self.access().may_read_room(who, room).map_err(denied)
    }

    /// Validates and publishes on behalf of `publisher`; resolves when the event is durable.
    pub async fn publish(
        &self,
        publisher: &Identity,
        args: PublishArgs,
    ) -> Result<Arc<EncodedEvent>, AppError> {
        self.publish_as(Publisher::of(publisher), args).await
    }

    /// The publish path: every event anything appends to the log comes through here (or
    /// `publish_all`), so validation, the access decision, chat's sanitising and author, and
    /// the refusal metrics happen once. Resolves when the event is durable.
    pub async fn publish_as(
        &self,
        from: Publisher<'_>,
        args: PublishArgs,
    ) -> Result<Arc<EncodedEvent>, AppError> {
        let event = self.admit(&from, args)?;
        Ok(self.log.publish_skipping(event, from.skip).await?)
    }

    /// Validates every event, then publishes them as one unit (consecutive `seq`s, committed
    /// together or not at all); nothing is published when any one is invalid.
    pub async fn publish_all(
        &self,
        publisher: &Identity,
        all: Vec<PublishArgs>,
    ) -> Result<Vec<Arc<EncodedEvent>>, AppError> {
        let from = Publisher::of(publisher);
        let events = all
            .into_iter()
            .enumerate()
            .map(|(i, args)| {
                self.admit(&from, args).map_err(|mut e| {
                    e.message = format!("events[{i}]: {}", e.message);
                    e
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(self.log.publish_all(events, None).await?)
    }

    /// The event `from` asks for, if its fields are valid and it may publish it; chat messages
    /// sanitised and signed by the server.
    fn admit(&self, from: &Publisher<'_>, args: PublishArgs) -> Result<NewEvent, AppError> {
        let refused = |e: AppError| {
            metrics::counter!("herald_publish_refused_total", "code" => e.code).increment(1);
            e
        };
        validate_type(&args.kind)
            .map_err(AppError::bad_request)
            .map_err(refused)?;
        check_id("userId", args.user_id.as_deref()).map_err(refused)?;
        if let Some(room) = &args.room_id {
            validate_room(room)
                .map_err(|e| AppError::bad_request(format!("roomId: {e}")))
                .map_err(refused)?;
        }
        let mut event = NewEvent {
            user_id: args
                .user_id
                .or_else(|| from.identity.map(|i| i.user_id.clone())),
            kind: args.kind,
            data: args.data,
            room_id: args.room_id,
            metadata: args.metadata.map(Value::Object),
        };
        let access = self.access();
        if from.document {
            access.may_write_document(from.identity, &event)
        } else {
            access.may_write(from.identity, &event)
        }
        .map_err(denied)
        .map_err(refused)?;
        chat::sign(&mut event, from.author()).map_err(refused)?;
        Ok(event)
    }
}

/// Who publishes: what the publish path needs to know besides the event.
#[derive(Clone, Copy)]
pub struct Publisher<'a> {
    /// `None`: an anonymous client, which may only chat in public rooms.
    pub identity: Option<&'a Identity>,
    /// A chat message's author as its room shows it (the member's profile, e.g. seed 001's
    /// `{id, name, avatar}`); by default the publisher's user id.
    pub profile: Option<&'a Value>,
    /// The connection that sent the event, when it must not get it back (seed 004's
    /// `message`).
    pub skip: Option<Uuid>,
    /// A document command: its `document.*` events are allowed (`Access::may_write_document`).
    pub document: bool,
}

impl<'a> Publisher<'a> {
    pub fn of(identity: &'a Identity) -> Self {
        Self {
            identity: Some(identity),
            profile: None,
            skip: None,
            document: false,
        }
    }

    fn author(&self) -> Value {
        match (self.profile, self.identity) {
            (Some(profile), _) => profile.clone(),
            (None, Some(i)) => i.user_id.clone().into(),
            (None, None) => "anonymous".into(),
        }
    }
}

/// Saves the documents' snapshots as they fall due, and publishes them as their authors.
async fn publish_snapshots(
    app: std::sync::Weak<App>,
    mut due: tokio::sync::mpsc::UnboundedReceiver<documents::SnapshotDue>,
) {
    while let Some(snapshot) = due.recv().await {
        let Some(app) = app.upgrade() else { return };
        // Not saved: retention keeps the changes the snapshot would have covered.
        if let Err(e) = app
            .store
            .save_snapshot(&snapshot.room, snapshot.seq, &snapshot.data)
            .await
        {
            tracing::warn!(error = %e, "document snapshot not saved");
        }
        let from = Publisher {
            identity: snapshot.author.as_ref(),
            profile: None,
            skip: None,
            document: true,
        };
        let args = PublishArgs {
            kind: snapshot.kind.into(),
            data: snapshot.data,
            room_id: Some(snapshot.room),
            user_id: None,
            metadata: None,
        };
        if let Err(e) = app.publish_as(from, args).await {
            tracing::warn!(error = %e.message, "document snapshot not written");
        }
    }
}

impl Credentials for App {
    fn auth(&self) -> &Auth {
        &self.auth
    }

    fn cors_origins(&self) -> &[String] {
        &self.config.cors_origins
    }
}

/// Whether the server serves `path` itself (keep in step with `api::router`): a stream there
/// would never be reached, since the router's own routes win over its fallback.
pub fn is_reserved_path(path: &str) -> bool {
    const EXACT: [&str; 10] = [
        "/",
        "/ws",
        "/health",
        "/metrics",
        "/openapi.json",
        "/herald.js",
        "/herald.d.ts",
        "/notifications",
        "/updates",
        "/echo",
    ];
    const TREES: [&str; 6] = [
        "/api",
        "/dashboard",
        "/events",
        "/examples",
        "/rooms",
        "/yjs",
    ];
    EXACT.contains(&path) || path.starts_with("/ws/") || TREES.iter().any(|t| path.starts_with(t))
}

/// An access decision's refusal as the API answers it.
fn denied(e: AccessDenied) -> AppError {
    AppError::new(
        axum::http::StatusCode::FORBIDDEN,
        herald_core::protocol::code::ACCESS_DENIED,
        e.to_string(),
    )
}

fn nonzero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n.max(1)).expect("at least 1")
}

/// Real memory and CPU figures of this process.
pub struct ProcessMonitor {
    system: sysinfo::System,
    pid: sysinfo::Pid,
}

#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessStats {
    pub rss_bytes: u64,
    pub virtual_bytes: u64,
    /// CPU use since the previous sample, 100 = one core.
    pub cpu_percent: f32,
    pub cpu_cores: usize,
}

impl ProcessMonitor {
    fn new() -> Self {
        let pid = sysinfo::get_current_pid().expect("own pid");
        let mut system = sysinfo::System::new().expect("process statistics are readable");
        system.refresh_cpu_list(sysinfo::CpuRefreshKind::nothing());
        let mut m = Self { system, pid };
        m.sample();
        m
    }

    pub fn sample(&mut self) -> ProcessStats {
        self.system.refresh_processes_specifics(
            sysinfo::ProcessesToUpdate::Some(&[self.pid]),
            true,
            sysinfo::ProcessRefreshKind::nothing()
                .with_memory()
                .with_cpu(),
        );
        let p = self.system.process(self.pid);
        ProcessStats {
            rss_bytes: p.map_or(0, |p| p.memory()),
            virtual_bytes: p.map_or(0, |p| p.virtual_memory()),
            cpu_percent: p.map_or(0.0, |p| p.cpu_usage()),
            cpu_cores: self.system.cpus().len(),
        }
    }
}
