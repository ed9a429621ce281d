//! The clients: subscribers (Herald WebSocket or SSE, or room members), publishers (Herald
//! WebSocket or HTTP, or the room protocol's WebSocket, or Socket.IO) and idle connections.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Request, StatusCode};
use memchr::memmem;
use serde_json::json;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::args::{Protocol, PublishVia, Transport};
use crate::net::{Http, Net, Ws, with_retries};
use crate::payload::{self, now_us};
use crate::sio::{self, Engine};
use crate::stats::{self, DONE, ERRORS, inc, measuring, phase};

/// Messages a publisher writes before one flush.
const MAX_BATCH: usize = 256;
/// A closed-loop window without progress for this long is refilled (messages presumed lost).
const WINDOW_STALL: Duration = Duration::from_secs(2);

/// What releases a closed-loop window slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Release {
    /// A designated subscriber of the message's room received it.
    Delivery,
    /// The server acknowledged the publish (Herald: HTTP 201 or `event.published`).
    Ack,
}

/// A publisher's closed-loop window: K permits, one taken per message sent.
pub(crate) struct Window {
    sem: Semaphore,
    size: usize,
}

impl Window {
    pub(crate) fn new(size: usize) -> Arc<Self> {
        Arc::new(Self {
            sem: Semaphore::new(size),
            size,
        })
    }

    fn release(&self) {
        if self.sem.available_permits() < self.size {
            self.sem.add_permits(1);
        }
    }

    fn refill(&self) {
        let available = self.sem.available_permits();
        if available < self.size {
            self.sem.add_permits(self.size - available);
        }
    }
}

/// Everything the clients share.
pub(crate) struct Ctx {
    pub net: Net,
    /// Where publishers connect (`--publish-target`); `None`: the same server as `net`.
    pub publish_net: Option<Net>,
    pub protocol: Protocol,
    pub ws_path: String,
    pub transport: Transport,
    pub token: Option<String>,
    pub event_type: String,
    pub rooms: Vec<String>,
    /// The room names as JSON strings (quoted, escaped), ready to splice into frames.
    pub rooms_json: Vec<String>,
    pub event_type_json: String,
    pub payload_bytes: usize,
    /// Events per HTTP publish request (above 1: `/api/realtime/publish/batch`).
    pub http_batch: usize,
    /// Read buffer of every WebSocket (tungstenite allocates it up front and zero-fills the
    /// free part before each read, so bigger is not cheaper).
    pub ws_read_buffer: usize,
    /// One per publisher (closed loop); empty in open loop.
    pub windows: Vec<Arc<Window>>,
    pub release: Release,
}

impl Ctx {
    /// The server publishers connect to.
    pub(crate) fn pub_net(&self) -> &Net {
        self.publish_net.as_ref().unwrap_or(&self.net)
    }

    /// The Socket.IO namespace of the protocol.
    fn sio_nsp(&self) -> &'static str {
        match self.protocol {
            Protocol::SocketioChat => "/chat",
            _ => "/",
        }
    }
}

fn is_error(frame: &[u8]) -> bool {
    frame.starts_with(b"{\"type\":\"error\"")
}

/// Reads frames until one contains `want` (any text frame when `want` is empty).
async fn wait_for(ws: &mut Ws, want: &[u8]) -> anyhow::Result<()> {
    let finder = memmem::Finder::new(want);
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                let f = t.as_bytes();
                if finder.find(f).is_some() {
                    return Ok(());
                }
                if is_error(f) {
                    bail!("server answered {}", t.as_str());
                }
            }
            Some(Ok(Message::Close(c))) => bail!("server closed the connection: {c:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("server closed the connection"),
        }
    }
}

/// A message of ours arrived: record its latency, and release its publisher's window if this
/// subscriber is the designated one of its room.
fn on_frame(ctx: &Ctx, frame: &[u8], designated: bool) {
    if let Some(ts) = payload::decode_ts(frame) {
        if measuring() {
            stats::record_delivery(now_us().saturating_sub(ts));
        }
        if designated
            && ctx.release == Release::Delivery
            && let Some(w) = payload::decode_publisher(frame).and_then(|p| ctx.windows.get(p))
        {
            w.release();
        }
    } else if is_error(frame) {
        inc(&ERRORS.server);
    }
}

fn note_disconnect() {
    if phase() != DONE {
        inc(&ERRORS.disconnect);
    }
}

/// Percent-encodes a query parameter value.
fn query_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Subscribers

enum Sub {
    Ws(Box<Ws>),
    /// A Socket.IO connection (it answers the server's pings).
    Sio(Box<Ws>),
    Sse(Http, Incoming),
}

/// Opens a subscriber of `room` (ready: subscribed or joined) and spawns its reader.
pub(crate) async fn subscriber(
    ctx: Arc<Ctx>,
    room: usize,
    designated: bool,
) -> Option<JoinHandle<()>> {
    let sub = with_retries(|| open_subscriber(&ctx, Some(room), ctx.ws_read_buffer)).await?;
    Some(tokio::spawn(read_sub(ctx, sub, designated)))
}

/// Opens an idle connection (subscribed to `room` when given) and spawns its reader.
pub(crate) async fn idle(ctx: Arc<Ctx>, room: Option<usize>) -> Option<JoinHandle<()>> {
    let sub = with_retries(|| open_subscriber(&ctx, room, ctx.ws_read_buffer)).await?;
    Some(tokio::spawn(read_sub(ctx, sub, false)))
}

async fn open_subscriber(
    ctx: &Ctx,
    room: Option<usize>,
    read_buffer: usize,
) -> anyhow::Result<Sub> {
    match (ctx.protocol, ctx.transport) {
        (Protocol::Herald, Transport::Sse) => open_sse(ctx, room).await,
        (Protocol::Herald, Transport::Ws) => {
            let mut ws = ctx.net.ws(&ctx.ws_path, read_buffer).await?;
            // The first message confirms that the server registered the connection.
            wait_for(&mut ws, b"").await?;
            if let Some(room) = room {
                let subscribe = json!({"type": "subscribe", "data": {
                    "eventTypes": [ctx.event_type], "filters": {"roomId": ctx.rooms[room]}}});
                ws.send(Message::text(subscribe.to_string())).await?;
                wait_for(&mut ws, b"\"type\":\"subscription.created\"").await?;
            }
            Ok(Sub::Ws(Box::new(ws)))
        }
        (Protocol::Socketio | Protocol::SocketioChat, _) => {
            let mut ws = sio_open(ctx, &ctx.net, read_buffer).await?;
            if let Some(room) = room {
                sio_join(ctx, &mut ws, room).await?;
            }
            Ok(Sub::Sio(Box::new(ws)))
        }
        (Protocol::Rooms, _) => {
            let mut ws = ctx.net.ws(&ctx.ws_path, read_buffer).await?;
            wait_for(&mut ws, b"").await?; // {"type":"connected",…}
            if let Some(room) = room {
                // No reply to a join; the pong that follows it says it has been processed.
                let join = format!("{{\"type\":\"join\",\"room\":{}}}", ctx.rooms_json[room]);
                ws.feed(Message::text(join)).await?;
                ws.feed(Message::text("{\"type\":\"ping\"}")).await?;
                ws.flush().await?;
                wait_for(&mut ws, b"\"type\":\"pong\"").await?;
            }
            Ok(Sub::Ws(Box::new(ws)))
        }
    }
}

/// Opens a Socket.IO connection and CONNECTs to the protocol's namespace (with the token for
/// `/chat`); returns once the server has accepted the CONNECT.
async fn sio_open(ctx: &Ctx, net: &Net, read_buffer: usize) -> anyhow::Result<Ws> {
    let mut ws = net.ws(&ctx.ws_path, read_buffer).await?;
    let auth = match ctx.protocol {
        Protocol::SocketioChat => {
            Some(json!({"token": ctx.token.as_deref().unwrap_or_default()}).to_string())
        }
        _ => None,
    };
    let mut connect = String::new();
    sio::connect(&mut connect, ctx.sio_nsp(), auth.as_deref());
    ws.send(Message::text(connect)).await?;
    sio_wait(ctx, &mut ws, |p| p.kind == sio::CONNECT).await?;
    Ok(ws)
}

/// Joins `room` and waits until the server has processed the join: `/chat` answers
/// `join_room` with `room_history`; the Socket.IO peer does not answer `join`, so a `ping`
/// follows it and its `pong` says the join is done.
async fn sio_join(ctx: &Ctx, ws: &mut Ws, room: usize) -> anyhow::Result<()> {
    let nsp = ctx.sio_nsp();
    let room = ctx.rooms_json[room].as_str();
    let mut join = String::new();
    match ctx.protocol {
        Protocol::SocketioChat => {
            sio::event(&mut join, nsp, None, "\"join_room\"", &[room]);
            ws.send(Message::text(join)).await?;
            sio_wait(ctx, ws, |p| p.event_name() == Some(b"room_history")).await
        }
        _ => {
            sio::event(&mut join, nsp, None, "\"join\"", &[room]);
            let mut ping = String::new();
            sio::event(&mut ping, nsp, None, "\"ping\"", &[]);
            ws.feed(Message::text(join)).await?;
            ws.feed(Message::text(ping)).await?;
            ws.flush().await?;
            sio_wait(ctx, ws, |p| p.event_name() == Some(b"pong")).await
        }
    }
}

/// Reads Socket.IO packets of the protocol's namespace until `done` accepts one, answering
/// the server's pings; a CONNECT_ERROR, a DISCONNECT, an `error` event or a close fails.
async fn sio_wait(
    ctx: &Ctx,
    ws: &mut Ws,
    done: impl Fn(&sio::Packet<'_>) -> bool,
) -> anyhow::Result<()> {
    let nsp = ctx.sio_nsp().as_bytes();
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => match sio::engine(t.as_bytes()) {
                Engine::Ping(probe) => {
                    let pong = format!("{}{}", sio::PONG, String::from_utf8_lossy(probe));
                    ws.send(Message::text(pong)).await?;
                }
                Engine::Close => bail!("server closed the Engine.IO session"),
                Engine::Message(m) => {
                    let Some(p) = sio::packet(m) else { continue };
                    if p.nsp != nsp {
                        continue;
                    }
                    if done(&p) {
                        return Ok(());
                    }
                    if sio_failed(&p) {
                        bail!("server answered {}", t.as_str());
                    }
                }
                _ => {}
            },
            Some(Ok(Message::Close(c))) => bail!("server closed the connection: {c:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("server closed the connection"),
        }
    }
}

/// A CONNECT_ERROR, a DISCONNECT from the server, or an `error` event.
fn sio_failed(p: &sio::Packet<'_>) -> bool {
    p.kind == sio::CONNECT_ERROR || p.kind == sio::DISCONNECT || p.event_name() == Some(b"error")
}

/// A Socket.IO packet a subscriber received: a `message` event is handled like a room
/// protocol frame (its payload is in the content). Returns false when the server ended the
/// session.
fn on_sio_packet(ctx: &Ctx, msg: &[u8], nsp: &[u8], designated: bool) -> bool {
    let Some(p) = sio::packet(msg) else {
        return true;
    };
    if p.nsp != nsp {
        return true;
    }
    match p.event() {
        Some((b"message", rest)) => on_frame(ctx, rest, designated),
        _ if sio_failed(&p) => {
            inc(&ERRORS.server);
            return p.kind != sio::DISCONNECT;
        }
        _ => {}
    }
    true
}

async fn open_sse(ctx: &Ctx, room: Option<usize>) -> anyhow::Result<Sub> {
    let mut http = ctx.net.http().await?;
    let mut path = "/api/realtime/stream".to_owned();
    if let Some(room) = room {
        path += &format!(
            "?types={}&roomId={}",
            query_value(&ctx.event_type),
            query_value(&ctx.rooms[room])
        );
    }
    http.ready().await?;
    let req = Request::get(path)
        .header(HOST, &ctx.net.authority)
        .header("accept", "text/event-stream")
        .body(Full::new(Bytes::new()))?;
    let resp = http.send_request(req).await?;
    if resp.status() != StatusCode::OK {
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        bail!(
            "SSE stream answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let mut body = resp.into_body();
    // The `connection` record comes once the stream is registered (and subscribed).
    loop {
        match body.frame().await {
            Some(Ok(f)) if f.data_ref().is_some_and(|d| !d.is_empty()) => break,
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("SSE stream ended before its first record"),
        }
    }
    Ok(Sub::Sse(http, body))
}

async fn read_sub(ctx: Arc<Ctx>, sub: Sub, designated: bool) {
    match sub {
        Sub::Ws(mut ws) => {
            while let Some(m) = ws.next().await {
                match m {
                    Ok(Message::Text(t)) => on_frame(&ctx, t.as_bytes(), designated),
                    Ok(Message::Close(_)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
        Sub::Sio(mut ws) => {
            let nsp = ctx.sio_nsp().as_bytes();
            while let Some(m) = ws.next().await {
                match m {
                    Ok(Message::Text(t)) => {
                        let open = match sio::engine(t.as_bytes()) {
                            Engine::Message(m) => on_sio_packet(&ctx, m, nsp, designated),
                            Engine::Ping(_) => ws.send(Message::text(sio::PONG)).await.is_ok(),
                            Engine::Close => false,
                            _ => true,
                        };
                        if !open {
                            break;
                        }
                    }
                    Ok(Message::Close(_)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
        Sub::Sse(http, mut body) => {
            let _keep = http;
            let separator = memmem::Finder::new(b"\n\n");
            let mut buf: Vec<u8> = Vec::new();
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { break };
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                buf.extend_from_slice(&data);
                let mut start = 0;
                while let Some(i) = separator.find(&buf[start..]) {
                    on_frame(&ctx, &buf[start..start + i], designated);
                    start += i + 2;
                }
                buf.drain(..start);
            }
        }
    }
    note_disconnect();
}

// ---------------------------------------------------------------------------------------------
// Publishers

/// One HTTP publish waiting for a worker.
pub(crate) struct Job {
    ts: u64,
    /// Events in `body`.
    events: usize,
    body: Bytes,
}

pub(crate) enum PubConn {
    /// A WebSocket; for Socket.IO, with the flag its reader raises when the server has pinged
    /// (the publisher writes the pong before its next batch).
    Ws(SplitSink<Ws, Message>, Option<Arc<AtomicBool>>),
    Http(mpsc::Sender<Job>),
}

/// Opens publisher `id`: a WebSocket (authenticated for Herald) with a reader that counts acks,
/// or `http_workers` HTTP connections fed from one queue. `rooms` are the rooms it publishes
/// to; a `/chat` publisher joins them (as a chat client does before it sends).
pub(crate) async fn publisher(
    ctx: &Arc<Ctx>,
    id: usize,
    rooms: &[usize],
    via: PublishVia,
    http_workers: usize,
) -> anyhow::Result<PubConn> {
    match (ctx.protocol, via) {
        (Protocol::Herald, PublishVia::Http) => {
            let token = ctx
                .token
                .as_deref()
                .context("publishing to Herald needs --token")?;
            let auth = HeaderValue::from_str(&format!("Bearer {token}"))?;
            let (tx, rx) = mpsc::channel::<Job>(http_workers.max(1) * 2);
            let rx = Arc::new(tokio::sync::Mutex::new(rx));
            for _ in 0..http_workers.max(1) {
                let http = with_retries(|| ctx.pub_net().http())
                    .await
                    .context("cannot open the publishers' HTTP connections")?;
                tokio::spawn(http_worker(ctx.clone(), id, http, rx.clone(), auth.clone()));
            }
            Ok(PubConn::Http(tx))
        }
        (Protocol::Herald, PublishVia::Ws) => {
            let token = ctx
                .token
                .as_deref()
                .context("publishing to Herald needs --token")?;
            let ws = with_retries(|| async {
                let mut ws = ctx.pub_net().ws(&ctx.ws_path, ctx.ws_read_buffer).await?;
                let auth = json!({"type": "authenticate", "data": {"token": token}});
                ws.send(Message::text(auth.to_string())).await?;
                wait_for(&mut ws, b"\"type\":\"authenticated\"").await?;
                Ok(ws)
            })
            .await
            .with_context(|| publisher_failed(id))?;
            let (sink, stream) = ws.split();
            tokio::spawn(herald_ack_reader(ctx.clone(), id, stream));
            Ok(PubConn::Ws(sink, None))
        }
        (Protocol::Socketio | Protocol::SocketioChat, _) => {
            let ws = with_retries(|| async {
                let mut ws = sio_open(ctx, ctx.pub_net(), ctx.ws_read_buffer).await?;
                if ctx.protocol == Protocol::SocketioChat {
                    for &room in rooms {
                        sio_join(ctx, &mut ws, room).await?;
                    }
                }
                Ok(ws)
            })
            .await
            .with_context(|| publisher_failed(id))?;
            let (sink, stream) = ws.split();
            let pinged = Arc::new(AtomicBool::new(false));
            tokio::spawn(sio_publisher_reader(ctx.sio_nsp(), stream, pinged.clone()));
            Ok(PubConn::Ws(sink, Some(pinged)))
        }
        (Protocol::Rooms, _) => {
            let ws = with_retries(|| ctx.pub_net().ws(&ctx.ws_path, ctx.ws_read_buffer))
                .await
                .with_context(|| publisher_failed(id))?;
            let (sink, mut stream) = ws.split();
            tokio::spawn(async move {
                while let Some(m) = stream.next().await {
                    if matches!(m, Ok(Message::Close(_)) | Err(_)) {
                        break;
                    }
                }
                note_disconnect();
            });
            Ok(PubConn::Ws(sink, None))
        }
    }
}

/// What a Socket.IO publisher reads: pings (raising `pinged`), errors (counted), and, on
/// `/chat`, its own copies of its messages (ignored: only subscribers' deliveries count).
async fn sio_publisher_reader(
    nsp: &'static str,
    mut stream: SplitStream<Ws>,
    pinged: Arc<AtomicBool>,
) {
    while let Some(m) = stream.next().await {
        match m {
            Ok(Message::Text(t)) => match sio::engine(t.as_bytes()) {
                Engine::Ping(_) => pinged.store(true, Ordering::Relaxed),
                Engine::Close => break,
                Engine::Message(m) => {
                    if let Some(p) = sio::packet(m)
                        && p.nsp == nsp.as_bytes()
                        && sio_failed(&p)
                    {
                        note_error(format!("server answered {}", t.as_str()));
                        inc(&ERRORS.server);
                    }
                }
                _ => {}
            },
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => {}
        }
    }
    note_disconnect();
}

async fn herald_ack_reader(ctx: Arc<Ctx>, id: usize, mut stream: SplitStream<Ws>) {
    while let Some(m) = stream.next().await {
        match m {
            Ok(Message::Text(t)) => {
                let f = t.as_bytes();
                let acked = f.starts_with(b"{\"type\":\"event.published\"");
                if acked && measuring() {
                    let now = now_us();
                    stats::record_ack(payload::decode_reply_id(f).map(|ts| now.saturating_sub(ts)));
                }
                if !acked && is_error(f) {
                    inc(&ERRORS.server);
                }
                if (acked || is_error(f))
                    && ctx.release == Release::Ack
                    && let Some(w) = ctx.windows.get(id)
                {
                    w.release();
                }
            }
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => {}
        }
    }
    note_disconnect();
}

async fn http_worker(
    ctx: Arc<Ctx>,
    id: usize,
    mut http: Http,
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Job>>>,
    auth: HeaderValue,
) {
    loop {
        let job = { rx.lock().await.recv().await };
        let Some(job) = job else { break };
        match post(&ctx, &mut http, &auth, job.body).await {
            Ok(true) => {
                if measuring() {
                    let latency = now_us().saturating_sub(job.ts);
                    for _ in 0..job.events {
                        stats::record_ack(Some(latency));
                    }
                }
            }
            Ok(false) => inc(&ERRORS.http),
            Err(_) => {
                inc(&ERRORS.http);
                if phase() == DONE {
                    break;
                }
                match with_retries(|| ctx.pub_net().http()).await {
                    Some(h) => http = h,
                    None => break,
                }
            }
        }
        if ctx.release == Release::Ack
            && let Some(w) = ctx.windows.get(id)
        {
            w.release();
        }
    }
}

/// One `POST /api/realtime/publish` (or `/publish/batch`); `Ok(true)` for 201.
async fn post(ctx: &Ctx, http: &mut Http, auth: &HeaderValue, body: Bytes) -> anyhow::Result<bool> {
    http.ready().await?;
    let path = if ctx.http_batch > 1 {
        "/api/realtime/publish/batch"
    } else {
        "/api/realtime/publish"
    };
    let req = Request::post(path)
        .header(HOST, &ctx.pub_net().authority)
        .header(CONTENT_TYPE, "application/json")
        .header(AUTHORIZATION, auth.clone())
        .body(Full::new(body))?;
    let resp = http.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    if status != StatusCode::CREATED {
        note_error(format!(
            "publish answered {status}: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    Ok(status == StatusCode::CREATED)
}

static LAST_ERROR: parking_lot::Mutex<Option<String>> = parking_lot::Mutex::new(None);

/// Why publisher `id` could not be opened, with the last connection error seen.
fn publisher_failed(id: usize) -> String {
    format!(
        "cannot open publisher {id}: {}",
        crate::net::last_connect_error().unwrap_or_default()
    )
}

fn note_error(e: String) {
    *LAST_ERROR.lock() = Some(e);
}

/// The last error a publisher saw, for the report.
pub(crate) fn last_publish_error() -> Option<String> {
    LAST_ERROR.lock().clone()
}

/// Where a publisher's send times come from.
pub(crate) enum Feed {
    /// Closed loop: send whenever the window has room; the send time is the actual one.
    Closed(Arc<Window>),
    /// Open loop: scheduled send times from the ticker.
    Open(mpsc::UnboundedReceiver<u64>),
}

/// Publishes until `stop`, round-robin over `rooms`.
pub(crate) async fn run_publisher(
    ctx: Arc<Ctx>,
    id: usize,
    rooms: Vec<usize>,
    mut conn: PubConn,
    mut feed: Feed,
    mut stop: watch::Receiver<bool>,
) {
    let mut batch: Vec<u64> = Vec::with_capacity(MAX_BATCH);
    let mut next = 0usize;
    let frame_capacity = ctx.payload_bytes + 160;
    loop {
        batch.clear();
        match &mut feed {
            Feed::Closed(w) => {
                let got = tokio::select! {
                    biased;
                    _ = stop.changed() => break,
                    r = tokio::time::timeout(WINDOW_STALL, w.sem.acquire()) => r,
                };
                match got {
                    Ok(Ok(p)) => p.forget(),
                    Ok(Err(_)) => break,
                    Err(_) => {
                        if phase() == DONE {
                            break;
                        }
                        inc(&ERRORS.window_reset);
                        w.refill();
                        continue;
                    }
                }
                let now = now_us();
                batch.push(now);
                while batch.len() < MAX_BATCH {
                    match w.sem.try_acquire() {
                        Ok(p) => {
                            p.forget();
                            batch.push(now);
                        }
                        Err(_) => break,
                    }
                }
            }
            Feed::Open(rx) => {
                let first = tokio::select! {
                    biased;
                    _ = stop.changed() => break,
                    t = rx.recv() => t,
                };
                let Some(t) = first else { break };
                batch.push(t);
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(t) => batch.push(t),
                        Err(_) => break,
                    }
                }
            }
        }
        let counted = measuring();
        let mut sent = 0u64;
        match &mut conn {
            PubConn::Ws(sink, pinged) => {
                // A pong owed to the server (Socket.IO) goes out first.
                let mut failed = pinged
                    .as_ref()
                    .is_some_and(|p| p.swap(false, Ordering::Relaxed))
                    && sink.feed(Message::text(sio::PONG)).await.is_err();
                for &ts in &batch {
                    if failed {
                        break;
                    }
                    let room = rooms[next % rooms.len()];
                    next += 1;
                    let mut frame = String::with_capacity(frame_capacity);
                    encode(&ctx, &mut frame, false, room, ts, id);
                    if sink.feed(Message::text(frame)).await.is_err() {
                        failed = true;
                        break;
                    }
                    sent += 1;
                }
                if failed || sink.flush().await.is_err() {
                    if phase() != DONE {
                        inc(&ERRORS.send);
                    }
                    break;
                }
            }
            PubConn::Http(tx) => {
                let events = ctx.http_batch;
                for &ts in &batch {
                    let mut body = String::with_capacity(frame_capacity * events + 16);
                    if events > 1 {
                        body.push_str("{\"events\":[");
                    }
                    for i in 0..events {
                        if i > 0 {
                            body.push(',');
                        }
                        let room = rooms[next % rooms.len()];
                        next += 1;
                        encode(&ctx, &mut body, true, room, ts, id);
                    }
                    if events > 1 {
                        body.push_str("]}");
                    }
                    let job = Job {
                        ts,
                        events,
                        body: Bytes::from(body),
                    };
                    let sent_ok = tokio::select! {
                        biased;
                        _ = stop.changed() => false,
                        r = tx.send(job) => r.is_ok(),
                    };
                    if !sent_ok {
                        break;
                    }
                    sent += events as u64;
                }
            }
        }
        if counted {
            stats::count_published(sent);
        }
        if *stop.borrow() {
            break;
        }
    }
}

fn encode(ctx: &Ctx, out: &mut String, http: bool, room: usize, ts: u64, id: usize) {
    let room = &ctx.rooms_json[room];
    match ctx.protocol {
        Protocol::Herald if http => {
            payload::herald_http_publish(out, &ctx.event_type_json, room, ts, id, ctx.payload_bytes)
        }
        Protocol::Herald => {
            payload::herald_ws_publish(out, &ctx.event_type_json, room, ts, id, ctx.payload_bytes)
        }
        Protocol::Rooms => payload::rooms_message(out, room, ts, id, ctx.payload_bytes),
        Protocol::Socketio => sio::message(out, "/", "room", room, ts, id, ctx.payload_bytes),
        Protocol::SocketioChat => {
            sio::message(out, "/chat", "roomId", room, ts, id, ctx.payload_bytes)
        }
    }
}

/// Open loop: a thread that hands scheduled send times to the publishers, message `k` at
/// `start + k / rate` to publisher `k mod P`. An OS thread sleeps with microsecond precision
/// (the async timer's resolution is a millisecond); when it wakes late, it hands out every
/// message that is due, each stamped with its scheduled time.
pub(crate) fn spawn_ticker(
    rate: f64,
    senders: Vec<mpsc::UnboundedSender<u64>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("bench-ticker".into())
        .spawn(move || {
            // Sleep to the microsecond: the default 50 µs timer slack would delay every tick.
            // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this thread's timer slack.
            unsafe {
                libc::prctl(libc::PR_SET_TIMERSLACK, 1_000 as libc::c_ulong);
            }
            let start = now_us();
            let interval = 1e6 / rate;
            let due = |k: u64| start + (k as f64 * interval) as u64;
            let mut k: u64 = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let now = now_us();
                while due(k) <= now {
                    let _ = senders[(k % senders.len() as u64) as usize].send(due(k));
                    k += 1;
                }
                let wait = due(k).saturating_sub(now_us());
                std::thread::sleep(Duration::from_micros(wait.min(100_000)));
            }
        })
        .expect("spawn the ticker thread")
}
