//! Command-line flags of `herald bench`.

use clap::{Args, ValueEnum};

/// What `herald bench --help` prints after the flags.
const GUIDE: &str = "\
Scenarios:
  fanout  one room, --subscribers subscribers, --publishers publishers (default 1);
  rooms   --rooms rooms of --members subscribers each, --publishers publishers (default 10)
          publishing round-robin over the rooms;
  ingest  durable publishes only (Herald), --concurrency in flight, over HTTP (or --publish ws);
          reports acknowledged events/s and acknowledgement latency;
  idle    --connections connections held open (WebSocket, or SSE with --transport sse;
          Socket.IO connections complete their CONNECT and answer the server's pings);
          reports server RSS before and after, and per connection.

Socket.IO: --protocol socketio drives the Socket.IO peer (events join / message in the main
namespace; the server leaves the sender out); --protocol socketio-chat drives Herald's /chat
namespace (CONNECT with {\"token\": --token}, join_room awaited by its room_history, message
{roomId, content}). /chat broadcasts to the whole room, the sender included: its publishers
join their rooms, and only the subscribers' deliveries are counted.

Rate: open loop with --rate (a fixed schedule; latency is measured from the scheduled send
time, so a stalled server cannot hide its queueing), or closed loop with --in-flight (each
publisher keeps K messages outstanding; a message is done when one designated subscriber of
its room has received it, or, in ingest, when it is acknowledged).

For latency at a moderate --rate, --threads 1 keeps the load generator off the server's cores
and its tail steadier. Only the --duration window after --warmup counts. With --server-pid, the server's CPU time
and RSS are read from /proc at the start and end of that window (added up when the flag is
repeated, e.g. for the nodes of a cluster). For idle, start the server
afresh: memory freed by earlier runs is reused and would hide the per-connection cost.

Cluster: --publish-target sends the publishers to another node than the subscribers'
(--target), so every delivery crosses the shared log (Redis) between the nodes.

Examples:
  herald bench --scenario fanout --subscribers 1000 --in-flight 64 --token $T --server-pid $PID
  herald bench --scenario rooms --rate 1000 --threads 1 --token $T --server-pid $PID
  herald bench --scenario ingest --concurrency 64 --token $T --json
  herald bench --scenario idle --connections 10000 --transport sse --server-pid $PID
  herald bench --protocol rooms --target 127.0.0.1:8080 --scenario fanout --server-pid $PID
  herald bench --protocol socketio --target 127.0.0.1:8090 --scenario rooms --rate 1000 --threads 1
  herald bench --protocol socketio-chat --token $T --scenario fanout --server-pid $PID
  herald bench --target B:3002 --publish-target A:3001 --token $T --server-pid $A --server-pid $B";

/// Load generator for Herald and for servers of the seed-004 room protocol.
#[derive(Args, Debug, Clone)]
#[command(after_help = GUIDE)]
pub struct BenchArgs {
    /// Server address, HOST:PORT.
    #[arg(long, env = "HERALD_BENCH_TARGET", default_value = "127.0.0.1:3000")]
    pub target: String,

    /// Server the publishers connect to, HOST:PORT [default: --target]. With a cluster, the
    /// subscribers on one node (--target) receive what is published on another: cross-node
    /// delivery.
    #[arg(long, value_name = "HOST:PORT")]
    pub publish_target: Option<String>,

    /// Wire protocol: `herald` (WebSocket /ws, SSE /api/realtime/stream, HTTP
    /// /api/realtime/publish), `rooms` (the seed-004 room protocol: join / message, as the
    /// benchmark peers speak it), `socketio` (the same operations as Socket.IO events
    /// `join` / `message` in the main namespace, as the Socket.IO peer speaks them) or
    /// `socketio-chat` (seed 004's Socket.IO namespace `/chat`, as Herald serves it: CONNECT
    /// with `{"token": --token}`, `join_room` answered by `room_history`, `message` with
    /// `roomId`). Socket.IO runs over Engine.IO v4 on a WebSocket opened directly.
    #[arg(long, value_enum, default_value_t = Protocol::Herald)]
    pub protocol: Protocol,

    /// WebSocket path [default: /ws for herald, / for rooms, /socket.io/ for Socket.IO, which
    /// gets `?EIO=4&transport=websocket` appended unless the path has a query].
    #[arg(long, value_name = "PATH")]
    pub ws_path: Option<String>,

    /// What to run.
    #[arg(long, value_enum, default_value_t = Scenario::Fanout)]
    pub scenario: Scenario,

    /// fanout: subscribers in the room.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub subscribers: usize,

    /// rooms: number of rooms.
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub rooms: usize,

    /// rooms: subscribers per room.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub members: usize,

    /// Publishing connections [default: 1 for fanout and ingest, 10 for rooms]. Publishers do
    /// not join or subscribe (but on Socket.IO `/chat`, where they join their rooms); each
    /// publishes round-robin over its share of the rooms.
    #[arg(long, value_name = "N")]
    pub publishers: Option<usize>,

    /// Open loop: messages per second in total across all publishers, on a fixed schedule.
    #[arg(long, value_name = "MSGS_PER_SEC", conflicts_with = "in_flight")]
    pub rate: Option<f64>,

    /// Closed loop: messages each publisher keeps outstanding [default: 64]. The default mode
    /// when --rate is not given (fanout and rooms; ingest uses --concurrency).
    #[arg(long, value_name = "K")]
    pub in_flight: Option<usize>,

    /// ingest: publishes in flight in total (closed loop), or HTTP connections for --rate;
    /// also the HTTP connections per publisher with `--publish http --rate` in fanout/rooms.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub concurrency: usize,

    /// How Herald publishers publish: `ws` (an authenticated WebSocket, counting
    /// `event.published` acks) or `http` (POST /api/realtime/publish) [default: http for
    /// ingest, ws otherwise]. The rooms protocol always publishes over its WebSocket.
    #[arg(long, value_enum)]
    pub publish: Option<PublishVia>,

    /// HTTP publishers: events per request. Above 1, each request is one
    /// `POST /api/realtime/publish/batch` of this many events, and --concurrency / --in-flight
    /// count requests.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub batch: u16,

    /// How Herald subscribers (and idle connections) connect: `ws` or `sse`.
    #[arg(long, value_enum, default_value_t = Transport::Ws)]
    pub transport: Transport,

    /// Herald token (JWT or API key) for publishing: `herald token --user bench --role admin`.
    /// With `--protocol socketio-chat`, every connection sends it in its CONNECT to `/chat`.
    #[arg(long, env = "HERALD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Size of each message's payload in bytes (Herald: the event's `data` object; rooms: the
    /// `content` string, Socket.IO too).
    #[arg(long, default_value_t = 100, value_name = "BYTES")]
    pub payload_bytes: usize,

    /// Seconds of load before the measuring window (not counted).
    #[arg(long, default_value_t = 2.0, value_name = "SECS")]
    pub warmup: f64,

    /// Seconds of the measuring window.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub duration: f64,

    /// idle: connections to open and hold.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub connections: usize,

    /// idle: have every connection also subscribe (Herald) or join (rooms, Socket.IO) one of
    /// --rooms rooms.
    #[arg(long)]
    pub idle_subscribe: bool,

    /// Read buffer of each client WebSocket [default: 16384, or 4096 for idle]. tungstenite
    /// allocates it per connection and zero-fills its free part before every read.
    #[arg(long, value_name = "BYTES")]
    pub ws_read_buffer: Option<usize>,

    /// Worker threads of the load generator [default: 0 = one per core]. 1 runs everything
    /// on one thread (no work stealing), which leaves the other cores to the server and gives
    /// steadier latencies at moderate rates; fan-out at saturation needs more.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub threads: usize,

    /// Connections being opened at once.
    #[arg(long, default_value_t = 200, value_name = "N")]
    pub connect_concurrency: usize,

    /// Bind client sockets to source addresses 127.0.0.1 … 127.0.0.N, round-robin, so many
    /// connections neither run out of one address's ports nor pass Herald's bound on sockets
    /// per client address [default: one per 1 000 connections (Herald's default
    /// `max_connections_per_ip`) for a loopback target; 0 = let the kernel choose].
    #[arg(long, value_name = "N")]
    pub source_addrs: Option<usize>,

    /// Server process to measure: CPU (utime+stime from /proc/PID/stat) and RSS (VmRSS, VmHWM)
    /// at the start and end of the measuring window. Repeat it to measure several processes
    /// (the nodes of a cluster, Redis, …) as one: their CPU and RSS are added up.
    #[arg(long, value_name = "PID")]
    pub server_pid: Vec<u32>,

    /// Herald event type to publish and subscribe to.
    #[arg(long, default_value = "bench.msg", value_name = "TYPE")]
    pub event_type: String,

    /// Room names are PREFIX-0, PREFIX-1, … (PREFIX-ingest for ingest).
    #[arg(long, default_value = "bench", value_name = "PREFIX")]
    pub room_prefix: String,

    /// Print one JSON object on stdout instead of the readable summary.
    #[arg(long)]
    pub json: bool,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Herald's own protocol.
    Herald,
    /// The seed-004 room protocol (the benchmark peers).
    Rooms,
    /// The room protocol as Socket.IO events in the main namespace (the Socket.IO peer).
    Socketio,
    /// Seed 004's Socket.IO namespace `/chat` (Herald's Socket.IO service).
    SocketioChat,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// One room, many subscribers.
    Fanout,
    /// Many rooms of a few members.
    Rooms,
    /// Durable publishes only (Herald).
    Ingest,
    /// Idle connections (memory).
    Idle,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishVia {
    Ws,
    Http,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Ws,
    Sse,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Herald => "herald",
            Protocol::Rooms => "rooms",
            Protocol::Socketio => "socketio",
            Protocol::SocketioChat => "socketio-chat",
        }
    }

    /// Socket.IO, in either namespace.
    pub fn is_socketio(self) -> bool {
        matches!(self, Protocol::Socketio | Protocol::SocketioChat)
    }
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Fanout => "fanout",
            Scenario::Rooms => "rooms",
            Scenario::Ingest => "ingest",
            Scenario::Idle => "idle",
        }
    }
}

impl PublishVia {
    pub fn name(self) -> &'static str {
        match self {
            PublishVia::Ws => "ws",
            PublishVia::Http => "http",
        }
    }
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::Sse => "sse",
        }
    }
}
