//! Running a scenario: open the connections, warm up, measure a window, stop, report.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::args::{BenchArgs, Protocol, PublishVia, Scenario, Transport};
use crate::clients::{self, Ctx, Feed, Release, Window};
use crate::net::{self, Net};
use crate::procstat::{self, ProcSample};
use crate::report::{BenchCost, Connections, Report, ServerCost};
use crate::stats::{self, ErrorCounts, LatencySummary};

/// Sockets the bench keeps for itself (stdio, epoll, the runtime) below the open-file limit.
const FD_RESERVE: u64 = 64;

pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let report = execute(&args).await?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.summary());
    }
    Ok(())
}

/// Runs the scenario the flags describe and returns its report.
pub async fn execute(args: &BenchArgs) -> anyhow::Result<Report> {
    validate(args)?;
    let nofile = procstat::raise_nofile_limit();
    payload_epoch();
    let planned = planned_connections(args);
    if nofile > 0 && planned as u64 + FD_RESERVE > nofile {
        bail!(
            "{planned} connections need more open files than this process may have ({nofile}); \
             lower the counts or raise the hard limit (ulimit -Hn)"
        );
    }
    let net = Net::new(&args.target, args.source_addrs, planned).await?;
    match args.scenario {
        Scenario::Idle => run_idle(args, net).await,
        _ => {
            let publish_net = match publish_target(args) {
                Some(t) => Some(Net::new(t, args.source_addrs, planned_publishers(args)).await?),
                None => None,
            };
            run_pubsub(args, net, publish_net).await
        }
    }
}

fn payload_epoch() {
    let _ = crate::payload::now_us();
}

/// `--publish-target` when it names another server than `--target`.
fn publish_target(a: &BenchArgs) -> Option<&str> {
    a.publish_target.as_deref().filter(|t| *t != a.target)
}

fn validate(a: &BenchArgs) -> anyhow::Result<()> {
    if a.scenario == Scenario::Idle && publish_target(a).is_some() {
        bail!("--publish-target needs publishers; --scenario idle has none");
    }
    if a.protocol != Protocol::Herald {
        let name = a.protocol.name();
        if a.scenario == Scenario::Ingest {
            bail!(
                "--scenario ingest measures Herald's durable publishes; it needs --protocol herald"
            );
        }
        if a.transport == Transport::Sse {
            bail!("--transport sse is Herald's; --protocol {name} is WebSocket only");
        }
        if a.publish == Some(PublishVia::Http) {
            bail!("--publish http is Herald's; --protocol {name} publishes over its WebSocket");
        }
    }
    if a.protocol == Protocol::SocketioChat && a.token.is_none() {
        bail!("--protocol socketio-chat connects to /chat with a token: --token (or HERALD_TOKEN)");
    }
    if a.protocol == Protocol::Herald && a.scenario != Scenario::Idle && a.token.is_none() {
        bail!(
            "publishing to Herald needs --token (or HERALD_TOKEN): herald token --user bench --role admin"
        );
    }
    if a.batch > 1 && (a.scenario != Scenario::Ingest || a.publish == Some(PublishVia::Ws)) {
        bail!("--batch is for --scenario ingest over HTTP (POST /api/realtime/publish/batch)");
    }
    if a.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        bail!("--rate must be a positive number of messages per second");
    }
    if a.in_flight == Some(0) || a.concurrency == 0 || a.connect_concurrency == 0 {
        bail!("--in-flight, --concurrency and --connect-concurrency must be at least 1");
    }
    if a.publishers == Some(0) {
        bail!("--publishers must be at least 1");
    }
    if !(a.duration > 0.0 && a.warmup >= 0.0) {
        bail!("--duration must be positive and --warmup not negative");
    }
    let rooms_needed =
        matches!(a.scenario, Scenario::Rooms) || (a.scenario == Scenario::Idle && a.idle_subscribe);
    if rooms_needed && a.rooms == 0 {
        bail!("--rooms must be at least 1");
    }
    Ok(())
}

/// The shape of a publish/subscribe scenario.
struct Plan {
    rooms: Vec<String>,
    members: usize,
    publishers: usize,
    via: PublishVia,
    /// Closed-loop window per publisher (None in open loop).
    window: Option<usize>,
    http_workers: usize,
    release: Release,
}

fn plan(a: &BenchArgs) -> Plan {
    let (room_names, members, default_publishers) = match a.scenario {
        Scenario::Fanout => (vec![format!("{}-0", a.room_prefix)], a.subscribers, 1),
        Scenario::Rooms => (
            (0..a.rooms)
                .map(|i| format!("{}-{i}", a.room_prefix))
                .collect(),
            a.members,
            10,
        ),
        Scenario::Ingest | Scenario::Idle => (vec![format!("{}-ingest", a.room_prefix)], 0, 1),
    };
    let publishers = a.publishers.unwrap_or(default_publishers);
    let via = match (a.protocol, a.publish) {
        (Protocol::Rooms | Protocol::Socketio | Protocol::SocketioChat, _) => PublishVia::Ws,
        (_, Some(v)) => v,
        _ if a.scenario == Scenario::Ingest => PublishVia::Http,
        _ => PublishVia::Ws,
    };
    let ingest = a.scenario == Scenario::Ingest;
    let window = match (a.rate, ingest) {
        (Some(_), _) => None,
        (None, true) => Some(a.concurrency.div_ceil(publishers)),
        (None, false) => Some(a.in_flight.unwrap_or(64)),
    };
    let http_workers = match (via, window) {
        (PublishVia::Ws, _) => 0,
        (PublishVia::Http, Some(w)) => w,
        (PublishVia::Http, None) => a.concurrency.div_ceil(publishers),
    };
    Plan {
        rooms: room_names,
        members,
        publishers,
        via,
        window,
        http_workers,
        release: if ingest {
            Release::Ack
        } else {
            Release::Delivery
        },
    }
}

fn planned_connections(a: &BenchArgs) -> usize {
    if a.scenario == Scenario::Idle {
        return a.connections;
    }
    let p = plan(a);
    p.rooms.len() * p.members + planned_publishers(a)
}

/// The publishers' connections (each HTTP worker has its own).
fn planned_publishers(a: &BenchArgs) -> usize {
    let p = plan(a);
    p.publishers * p.http_workers.max(1)
}

fn make_ctx(
    a: &BenchArgs,
    net: Net,
    publish_net: Option<Net>,
    rooms: Vec<String>,
    windows: Vec<Arc<Window>>,
    release: Release,
) -> Ctx {
    let quote = |s: &str| serde_json::to_string(s).expect("a string serialises");
    Ctx {
        net,
        publish_net,
        protocol: a.protocol,
        ws_path: match a.protocol {
            Protocol::Socketio | Protocol::SocketioChat => {
                crate::sio::ws_path(a.ws_path.as_deref())
            }
            Protocol::Herald => a.ws_path.clone().unwrap_or_else(|| "/ws".to_owned()),
            Protocol::Rooms => a.ws_path.clone().unwrap_or_else(|| "/".to_owned()),
        },
        transport: a.transport,
        token: a.token.clone(),
        event_type: a.event_type.clone(),
        event_type_json: quote(&a.event_type),
        rooms_json: rooms.iter().map(|r| quote(r)).collect(),
        rooms,
        payload_bytes: a.payload_bytes,
        http_batch: usize::from(a.batch),
        ws_read_buffer: a
            .ws_read_buffer
            .unwrap_or(if a.scenario == Scenario::Idle {
                4096
            } else {
                16384
            })
            .max(256),
        windows,
        release,
    }
}

/// The `--server-pid` processes, added up (`None` without the flag).
fn sample_server(pids: &[u32]) -> anyhow::Result<Option<ProcSample>> {
    let samples = pids
        .iter()
        .map(|&p| {
            procstat::sample(Some(p))
                .with_context(|| format!("cannot read /proc/{p} (--server-pid)"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(ProcSample::sum(&samples))
}

/// What was sampled around the measuring window.
struct Sampled {
    secs: f64,
    server_before: Option<ProcSample>,
    server_start: Option<ProcSample>,
    server_end: Option<ProcSample>,
    bench_start: ProcSample,
    bench_end: ProcSample,
}

async fn measure(a: &BenchArgs, server_before: Option<ProcSample>) -> anyhow::Result<Sampled> {
    tokio::time::sleep(Duration::from_secs_f64(a.warmup)).await;
    stats::reset();
    let server_start = sample_server(&a.server_pid)?;
    let bench_start = procstat::sample(None)?;
    let t0 = Instant::now();
    stats::set_phase(stats::MEASURE);
    tokio::time::sleep(Duration::from_secs_f64(a.duration)).await;
    stats::set_phase(stats::DONE);
    let secs = t0.elapsed().as_secs_f64();
    let server_end = sample_server(&a.server_pid)?;
    let bench_end = procstat::sample(None)?;
    Ok(Sampled {
        secs,
        server_before,
        server_start,
        server_end,
        bench_start,
        bench_end,
    })
}

/// Opens `n` connections with at most `concurrency` handshakes at once.
async fn open_all<F, Fut>(n: usize, concurrency: usize, open: F) -> Vec<JoinHandle<()>>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Option<JoinHandle<()>>>,
{
    futures_util::stream::iter(0..n)
        .map(open)
        .buffer_unordered(concurrency)
        .filter_map(|h| async move { h })
        .collect()
        .await
}

async fn run_pubsub(a: &BenchArgs, net: Net, publish_net: Option<Net>) -> anyhow::Result<Report> {
    let p = plan(a);
    let windows: Vec<Arc<Window>> = match p.window {
        Some(k) => (0..p.publishers).map(|_| Window::new(k)).collect(),
        None => Vec::new(),
    };
    let source_addrs = net.source_count();
    let ctx = Arc::new(make_ctx(
        a,
        net,
        publish_net,
        p.rooms.clone(),
        windows.clone(),
        p.release,
    ));
    let server_before = sample_server(&a.server_pid)?;

    let opening = Instant::now();
    let subscriber_count = p.rooms.len() * p.members;
    let members = p.members.max(1);
    let subs = open_all(subscriber_count, a.connect_concurrency, |i| {
        clients::subscriber(ctx.clone(), i / members, i % members == 0)
    })
    .await;
    if subs.is_empty() && subscriber_count > 0 {
        bail!(
            "no subscriber could connect to {}: {}",
            a.target,
            net::last_connect_error().unwrap_or_default()
        );
    }
    let publisher_rooms: Vec<Vec<usize>> = (0..p.publishers)
        .map(|id| {
            let mut mine: Vec<usize> = (id..p.rooms.len()).step_by(p.publishers).collect();
            if mine.is_empty() {
                mine.push(id % p.rooms.len());
            }
            mine
        })
        .collect();
    let mut conns = Vec::new();
    for (id, mine) in publisher_rooms.iter().enumerate() {
        conns.push(clients::publisher(&ctx, id, mine, p.via, p.http_workers).await?);
    }
    let open_secs = opening.elapsed().as_secs_f64();

    let (stop_tx, stop_rx) = watch::channel(false);
    let ticker_stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    let mut publishers = Vec::new();
    for ((id, conn), my_rooms) in conns.into_iter().enumerate().zip(publisher_rooms) {
        let feed = match windows.get(id) {
            Some(w) => Feed::Closed(w.clone()),
            None => {
                let (tx, rx) = mpsc::unbounded_channel();
                senders.push(tx);
                Feed::Open(rx)
            }
        };
        publishers.push(tokio::spawn(clients::run_publisher(
            ctx.clone(),
            id,
            my_rooms,
            conn,
            feed,
            stop_rx.clone(),
        )));
    }
    let ticker = a
        .rate
        .map(|rate| clients::spawn_ticker(rate, senders, ticker_stop.clone()));

    let w = measure(a, server_before).await;
    let counts = stats::collect();
    let errors = ErrorCounts::snapshot();

    ticker_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = stop_tx.send(true);
    for h in &subs {
        h.abort();
    }
    for h in publishers {
        let _ = tokio::time::timeout(Duration::from_secs(2), h).await;
    }
    if let Some(t) = ticker {
        let _ = t.join();
    }
    let w = w?;

    let delivered_rate = counts.delivered as f64 / w.secs;
    let acked_rate = counts.acked as f64 / w.secs;
    let connections = Connections {
        planned: subscriber_count + p.publishers * p.http_workers.max(1),
        opened: subs.len() + p.publishers * p.http_workers.max(1),
        failed: errors.connect,
        open_secs,
        source_addrs,
    };
    let server = server_cost(a, &w, &connections, counts.delivered, counts.acked);
    Ok(Report {
        scenario: a.scenario.name(),
        protocol: a.protocol.name(),
        target: a.target.clone(),
        publish_target: publish_target(a).map(str::to_owned),
        publish: Some(p.via.name()),
        transport: a.transport.name(),
        rooms: p.rooms.len(),
        members_per_room: p.members,
        subscribers: subscriber_count,
        publishers: p.publishers,
        mode: if a.rate.is_some() { "open" } else { "closed" },
        rate: a.rate,
        in_flight: p.window,
        payload_bytes: a.payload_bytes,
        events_per_request: usize::from(a.batch),
        warmup_secs: a.warmup,
        window_secs: w.secs,
        connections,
        published: counts.published,
        published_per_sec: counts.published as f64 / w.secs,
        acked: counts.acked,
        acked_per_sec: acked_rate,
        delivered: counts.delivered,
        delivered_per_sec: delivered_rate,
        latency_us: LatencySummary::of(&counts.delivery),
        ack_latency_us: LatencySummary::of(&counts.ack),
        errors,
        last_error: clients::last_publish_error().or_else(net::last_connect_error),
        server,
        bench: bench_cost(&w),
    })
}

async fn run_idle(a: &BenchArgs, net: Net) -> anyhow::Result<Report> {
    let rooms: Vec<String> = (0..a.rooms.max(1))
        .map(|i| format!("{}-{i}", a.room_prefix))
        .collect();
    let room_count = rooms.len();
    let source_addrs = net.source_count();
    let ctx = Arc::new(make_ctx(a, net, None, rooms, Vec::new(), Release::Delivery));
    let server_before = sample_server(&a.server_pid)?;
    let opening = Instant::now();
    let subscribe = a.idle_subscribe;
    let held = open_all(a.connections, a.connect_concurrency, |i| {
        clients::idle(ctx.clone(), subscribe.then_some(i % room_count))
    })
    .await;
    let open_secs = opening.elapsed().as_secs_f64();
    if held.is_empty() {
        bail!(
            "no connection could be opened to {}: {}",
            a.target,
            net::last_connect_error().unwrap_or_default()
        );
    }
    let w = measure(a, server_before).await;
    let errors = ErrorCounts::snapshot();
    for h in &held {
        h.abort();
    }
    let w = w?;
    let connections = Connections {
        planned: a.connections,
        opened: held.len(),
        failed: errors.connect,
        open_secs,
        source_addrs,
    };
    let server = server_cost(a, &w, &connections, 0, 0);
    Ok(Report {
        scenario: a.scenario.name(),
        protocol: a.protocol.name(),
        target: a.target.clone(),
        publish_target: None,
        publish: None,
        transport: a.transport.name(),
        rooms: if subscribe { room_count } else { 0 },
        members_per_room: 0,
        subscribers: if subscribe { held.len() } else { 0 },
        publishers: 0,
        mode: "idle",
        rate: None,
        in_flight: None,
        payload_bytes: 0,
        events_per_request: 0,
        warmup_secs: a.warmup,
        window_secs: w.secs,
        connections,
        published: 0,
        published_per_sec: 0.0,
        acked: 0,
        acked_per_sec: 0.0,
        delivered: 0,
        delivered_per_sec: 0.0,
        latency_us: None,
        ack_latency_us: None,
        errors,
        last_error: net::last_connect_error(),
        server,
        bench: bench_cost(&w),
    })
}

fn server_cost(
    a: &BenchArgs,
    w: &Sampled,
    connections: &Connections,
    delivered: u64,
    acked: u64,
) -> Option<ServerCost> {
    let (before, start, end) = (w.server_before?, w.server_start?, w.server_end?);
    let cpu = procstat::cpu_secs(&start, &end);
    let per = |n: u64| (n > 0).then(|| (cpu * 1e6 / n as f64 * 100.0).round() / 100.0);
    let grown_kb = end.rss_kb.saturating_sub(before.rss_kb);
    Some(ServerCost {
        pid: *a.server_pid.first()?,
        pids: a.server_pid.clone(),
        cpu_percent: (cpu / w.secs * 1000.0).round() / 10.0,
        cpu_us_per_delivered: per(delivered),
        cpu_us_per_acked: per(acked),
        rss_before_kb: before.rss_kb,
        rss_start_kb: start.rss_kb,
        rss_end_kb: end.rss_kb,
        hwm_kb: end.hwm_kb,
        rss_per_connection_bytes: (connections.opened > 0)
            .then(|| (grown_kb as f64 * 1024.0 / connections.opened as f64).round()),
    })
}

fn bench_cost(w: &Sampled) -> BenchCost {
    let cpu = procstat::cpu_secs(&w.bench_start, &w.bench_end);
    BenchCost {
        cpu_percent: (cpu / w.secs * 1000.0).round() / 10.0,
        rss_kb: w.bench_end.rss_kb,
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn args(flags: &[&str]) -> BenchArgs {
        Cli::try_parse_from(std::iter::once("bench").chain(flags.iter().copied()))
            .unwrap()
            .bench
    }

    #[test]
    fn publishers_go_to_the_publish_target() {
        let a = args(&["--target", "127.0.0.1:3002"]);
        assert_eq!(publish_target(&a), None);
        assert!(a.server_pid.is_empty());

        let a = args(&[
            "--target",
            "127.0.0.1:3002",
            "--publish-target",
            "127.0.0.1:3002",
        ]);
        assert_eq!(
            publish_target(&a),
            None,
            "the same server is no other target"
        );

        let a = args(&[
            "--target",
            "127.0.0.1:3002",
            "--publish-target",
            "127.0.0.1:3001",
            "--server-pid",
            "10",
            "--server-pid",
            "11",
        ]);
        assert_eq!(publish_target(&a), Some("127.0.0.1:3001"));
        assert_eq!(a.server_pid, [10, 11]);
        assert_eq!(planned_publishers(&a), 1);
        assert_eq!(planned_connections(&a), 1001);

        let idle = args(&["--scenario", "idle", "--publish-target", "127.0.0.1:3001"]);
        assert!(validate(&idle).is_err());
    }

    #[tokio::test]
    async fn publishers_and_subscribers_open_their_own_servers() {
        let sub = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let publ = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (s, p) = (sub.local_addr().unwrap(), publ.local_addr().unwrap());
        let a = args(&[
            "--target",
            &s.to_string(),
            "--publish-target",
            &p.to_string(),
            "--token",
            "t",
        ]);
        let net = Net::new(&a.target, None, 1).await.unwrap();
        let publish_net = Net::new(publish_target(&a).unwrap(), None, 1)
            .await
            .unwrap();
        let ctx = make_ctx(
            &a,
            net,
            Some(publish_net),
            vec![],
            vec![],
            Release::Delivery,
        );
        assert_eq!(ctx.net.target, s);
        assert_eq!(ctx.pub_net().target, p);
        assert_eq!(ctx.pub_net().authority, p.to_string());
        // Publishers' connections reach the publish target.
        let _c = ctx.pub_net().tcp().await.unwrap();
        let (_, from) = publ.accept().await.unwrap();
        assert!(from.ip().is_loopback());
    }
}
