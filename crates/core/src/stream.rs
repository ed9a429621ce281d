//! Streams: named routes (seed 002's `registerStreamRoute`) whose messages are arbitrary JSON
//! values, kept in a bounded in-memory history that every new subscriber receives first (seed
//! 001's `DataStreamer`). Stream messages are not events: they skip the log and the store, so
//! they are volatile by design. A stream may throttle (the latest value per interval) or batch
//! (one JSON array per interval) what it delivers.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::connection::{Connection, Transport};
use crate::outbox::{OutboxLimits, Outgoing};
use crate::wire::CloseReason;

pub const DEFAULT_HISTORY: usize = 100;
/// A snapshot is queued on the subscriber's bounded outbox in one go, so it must stay well
/// below the outbox bounds.
pub const MAX_HISTORY: usize = 10_000;
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);
const MAX_NAME: usize = 64;
const MAX_PATH: usize = 256;
/// A batch is delivered early when it grows past these bounds, so one interval of a fast
/// publisher can neither exhaust memory nor overflow every subscriber's outbox at once.
const MAX_BATCH_MESSAGES: usize = 1000;
const MAX_BATCH_BYTES: usize = 1 << 20;

/// How a deleted stream ends the SSE streams that were reading it.
pub const DELETED: CloseReason = CloseReason {
    code: 1000,
    reason: "stream deleted",
};

#[derive(Debug, Clone, PartialEq)]
pub struct StreamSpec {
    /// 1..=64 characters of `A-Z a-z 0-9 . _ -`.
    pub name: String,
    /// The route the stream is served at, e.g. `/stock-prices`.
    pub path: String,
    /// How many of the latest messages are retained for new subscribers.
    pub history: usize,
    pub throttle: Option<Duration>,
    pub batch: Option<Duration>,
}

impl StreamSpec {
    /// A spec as users write one (configuration, API): the path defaults to `/{name}`, the
    /// history to `DEFAULT_HISTORY`, and an interval of 0 ms means none.
    pub fn new(
        name: impl Into<String>,
        path: Option<String>,
        history: Option<usize>,
        throttle_ms: u64,
        batch_ms: u64,
    ) -> Self {
        let name = name.into();
        let interval = |ms| (ms > 0).then(|| Duration::from_millis(ms));
        Self {
            path: path.unwrap_or_else(|| format!("/{name}")),
            name,
            history: history.unwrap_or(DEFAULT_HISTORY),
            throttle: interval(throttle_ms),
            batch: interval(batch_ms),
        }
    }

    fn validate(&self, is_reserved: fn(&str) -> bool) -> Result<(), StreamError> {
        let name_ok = (1..=MAX_NAME).contains(&self.name.len())
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !name_ok {
            return Err(StreamError::InvalidName(self.name.clone()));
        }
        if !valid_path(&self.path) {
            return Err(StreamError::InvalidPath(self.path.clone()));
        }
        if is_reserved(&self.path) {
            return Err(StreamError::ReservedPath(self.path.clone()));
        }
        if self.history > MAX_HISTORY {
            return Err(StreamError::History);
        }
        match (self.throttle, self.batch) {
            (Some(_), Some(_)) => Err(StreamError::ThrottleAndBatch),
            (Some(i), None) | (None, Some(i)) if i > MAX_INTERVAL => Err(StreamError::Interval),
            _ => Ok(()),
        }
    }

    fn interval(&self) -> Option<(Duration, Pacing)> {
        match (self.throttle, self.batch) {
            (Some(t), _) => Some((t, Pacing::Throttle)),
            (None, Some(b)) => Some((b, Pacing::Batch)),
            (None, None) => None,
        }
    }
}

/// `/a/b-c.d`: no empty, `.` or `..` segment, no trailing slash, characters a browser sends
/// unescaped, so the route compares equal to the request path byte for byte.
fn valid_path(path: &str) -> bool {
    path.len() <= MAX_PATH
        && path.strip_prefix('/').is_some_and(|rest| {
            rest.split('/').all(|seg| {
                !seg.is_empty()
                    && seg != "."
                    && seg != ".."
                    && seg.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'~')
                    })
            })
        })
}

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum StreamError {
    #[error("invalid stream name {0:?}: use 1..=64 characters of A-Z a-z 0-9 . _ -")]
    InvalidName(String),
    #[error(
        "invalid stream path {0:?}: it must start with / and have non-empty segments of A-Z a-z 0-9 . _ - ~ (no . or .., no trailing /, at most 256 characters)"
    )]
    InvalidPath(String),
    #[error("stream path {0:?} collides with a built-in route")]
    ReservedPath(String),
    #[error("history must be at most {MAX_HISTORY} messages")]
    History,
    #[error("throttle and batch intervals must be at most one hour")]
    Interval,
    #[error("a stream may throttle or batch, not both")]
    ThrottleAndBatch,
    #[error("stream {0:?} already exists")]
    NameTaken(String),
    #[error("path {0:?} is already served by stream {1:?}")]
    PathTaken(String, String),
    #[error("this connection is already subscribed to stream {0:?}")]
    AlreadySubscribed(String),
}

impl StreamError {
    /// A conflict with the current state (HTTP 409), rather than an invalid request.
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            Self::NameTaken(_) | Self::PathTaken(..) | Self::AlreadySubscribed(_)
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Pacing {
    Throttle,
    Batch,
}

/// One message (or one delivered batch) with its wire encodings, each built at most once and
/// shared by every subscriber.
#[derive(Debug)]
struct Message {
    /// Stream-local, from 1; a batch carries its last message's id.
    id: u64,
    json: Bytes,
    sse: OnceLock<Bytes>,
    ws: OnceLock<Bytes>,
}

impl Message {
    fn new(id: u64, json: Bytes) -> Arc<Self> {
        Arc::new(Self {
            id,
            json,
            sse: OnceLock::new(),
            ws: OnceLock::new(),
        })
    }

    /// The messages as one JSON array, spliced from their encodings rather than re-serialised.
    fn batch(messages: &[Arc<Message>]) -> Option<Arc<Self>> {
        let last = messages.last()?;
        let len = messages.iter().map(|m| m.json.len() + 1).sum::<usize>() + 1;
        let mut out = Vec::with_capacity(len);
        out.push(b'[');
        for (i, m) in messages.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&m.json);
        }
        out.push(b']');
        Some(Self::new(last.id, Bytes::from(out)))
    }
}

/// What `Stream::publish` did with a message.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
// Named apart from the event publish acknowledgement (`Published` in the server's session).
#[cfg_attr(feature = "openapi", schema(as = StreamPublished))]
#[serde(rename_all = "camelCase")]
pub struct Published {
    /// The message's id (the SSE `id:` line; `Last-Event-ID` resumes after it).
    pub id: String,
    /// Subscribers at the time of the publish.
    pub subscribers: usize,
    /// How many subscribers it was queued for; `None` when a throttled or batched stream will
    /// deliver it (or, throttled, a later value) at the end of its interval.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered: Option<usize>,
}

/// A stream's description and counters, as `GET /api/streams` lists them.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct StreamInfo {
    pub name: String,
    pub path: String,
    /// Retained-history bound.
    pub history: usize,
    /// Messages retained now.
    pub retained: usize,
    pub subscribers: usize,
    /// Messages published since the stream was created.
    pub published: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throttle_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_ms: Option<u64>,
}

#[derive(Debug)]
struct Subscriber {
    conn: Arc<Connection>,
    /// The last message id this subscriber has been sent, so a throttled or batched delivery
    /// never repeats what its snapshot already held.
    after: u64,
}

#[derive(Debug)]
struct State {
    retained: VecDeque<Arc<Message>>,
    /// The retained messages' JSON bytes.
    retained_bytes: usize,
    last_id: u64,
    subscribers: HashMap<Uuid, Subscriber>,
    /// Messages waiting for the timer: the latest one (throttle) or all of them (batch).
    pending: Vec<Arc<Message>>,
    pending_bytes: usize,
    /// The timer task is waiting for a wake-up (nothing pending when it last looked).
    timer_idle: bool,
}

#[derive(Debug)]
pub struct Stream {
    spec: StreamSpec,
    /// What a snapshot may hold: half of what a subscriber's outbox accepts, so a new
    /// subscriber never overflows on its snapshot alone (the oldest messages go first).
    snapshot_limit: OutboxLimits,
    /// Creation time in ms: it prefixes message ids, so an id from an earlier incarnation of
    /// the stream (before a restart or a re-creation) is never mistaken for a current one.
    epoch: i64,
    /// `{"type":"stream.message","stream":"<name>","messageId":"<epoch>-`
    ws_prefix: String,
    state: Mutex<State>,
    wake: Arc<Notify>,
    timer: Option<JoinHandle<()>>,
}

impl Stream {
    /// Needs a Tokio runtime when the stream throttles or batches (its timer is a task).
    fn start(spec: StreamSpec, outbox: OutboxLimits) -> Arc<Self> {
        let epoch = chrono::Utc::now().timestamp_millis();
        let wake = Arc::new(Notify::new());
        Arc::new_cyclic(|weak: &Weak<Stream>| {
            let timer = spec.interval().map(|(every, pacing)| {
                tokio::spawn(run_timer(weak.clone(), wake.clone(), every, pacing))
            });
            Self {
                ws_prefix: format!(
                    r#"{{"type":"stream.message","stream":"{}","messageId":"{epoch}-"#,
                    spec.name
                ),
                spec,
                snapshot_limit: OutboxLimits {
                    max_messages: (outbox.max_messages / 2).max(1),
                    max_bytes: outbox.max_bytes / 2,
                },
                epoch,
                state: Mutex::new(State {
                    retained: VecDeque::new(),
                    retained_bytes: 0,
                    last_id: 0,
                    subscribers: HashMap::new(),
                    pending: Vec::new(),
                    pending_bytes: 0,
                    timer_idle: true,
                }),
                wake,
                timer,
            }
        })
    }

    pub fn spec(&self) -> &StreamSpec {
        &self.spec
    }

    pub fn info(&self) -> StreamInfo {
        let s = self.state.lock();
        let ms = |d: Option<Duration>| d.map(|d| d.as_millis() as u64);
        StreamInfo {
            name: self.spec.name.clone(),
            path: self.spec.path.clone(),
            history: self.spec.history,
            retained: s.retained.len(),
            subscribers: s.subscribers.len(),
            published: s.last_id,
            throttle_ms: ms(self.spec.throttle),
            batch_ms: ms(self.spec.batch),
        }
    }

    /// Retains `value` and sends it to every subscriber, now or (throttled, batched) at the end
    /// of the current interval.
    pub fn publish(&self, value: &Value) -> Published {
        let json = Bytes::from(serde_json::to_vec(value).expect("JSON values serialise"));
        let mut s = self.state.lock();
        s.last_id += 1;
        let msg = Message::new(s.last_id, json);
        if self.spec.history > 0 {
            s.retained_bytes += msg.json.len();
            s.retained.push_back(msg.clone());
            let keep = self.spec.history.min(self.snapshot_limit.max_messages);
            while s.retained.len() > keep || s.retained_bytes > self.snapshot_limit.max_bytes {
                let Some(oldest) = s.retained.pop_front() else {
                    break;
                };
                s.retained_bytes -= oldest.json.len();
            }
        }
        let subscribers = s.subscribers.len();
        let delivered = match self.spec.interval() {
            None => Some(self.deliver(&mut s, &msg)),
            Some((_, pacing)) => {
                if pacing == Pacing::Throttle {
                    s.pending.clear();
                    s.pending_bytes = 0;
                }
                s.pending_bytes += msg.json.len();
                s.pending.push(msg.clone());
                if pacing == Pacing::Batch
                    && (s.pending.len() >= MAX_BATCH_MESSAGES || s.pending_bytes >= MAX_BATCH_BYTES)
                {
                    self.deliver_pending(&mut s);
                } else if s.timer_idle {
                    s.timer_idle = false;
                    self.wake.notify_one();
                }
                None
            }
        };
        Published {
            id: self.message_id(msg.id),
            subscribers,
            delivered,
        }
    }

    /// Queues the retained snapshot on `conn` (the messages after `last_id` when it names one
    /// of this stream's messages, e.g. an `EventSource` reconnecting with `Last-Event-ID`),
    /// then registers it for live messages. Both happen under the stream's lock, so nothing
    /// published meanwhile is lost or sent twice. Returns how many messages the snapshot held.
    ///
    /// Frames are `Outgoing::Raw` text: on SSE an unnamed record `id: <id>` / `data: <json>`;
    /// on WebSocket `{"type":"stream.message","stream":<name>,"messageId":<id>,"data":<json>}`.
    /// A batching stream sends its snapshot as one array, like its live deliveries.
    pub fn subscribe(
        &self,
        conn: &Arc<Connection>,
        last_id: Option<&str>,
    ) -> Result<usize, StreamError> {
        let resume_after = last_id.and_then(|id| self.parse_id(id));
        let mut s = self.state.lock();
        if s.subscribers.contains_key(&conn.id) {
            return Err(StreamError::AlreadySubscribed(self.spec.name.clone()));
        }
        // An id this stream has not issued yet (it cannot have been seen) gets everything.
        let after = resume_after.filter(|&a| a <= s.last_id).unwrap_or(0);
        let start = s.retained.partition_point(|m| m.id <= after);
        let snapshot: Vec<Arc<Message>> = s.retained.range(start..).cloned().collect();
        if self.spec.batch.is_some() {
            if let Some(batch) = Message::batch(&snapshot) {
                self.send(conn, &batch);
            }
        } else if conn.transport == Transport::Sse {
            // One outbox item, so a long history costs one queue slot.
            let mut out = Vec::new();
            for m in &snapshot {
                out.extend_from_slice(self.sse_frame(m));
            }
            if !out.is_empty() {
                conn.send(raw(Bytes::from(out)));
            }
        } else {
            for m in &snapshot {
                self.send(conn, m);
            }
        }
        let last = s.last_id;
        s.subscribers.insert(
            conn.id,
            Subscriber {
                conn: conn.clone(),
                after: last,
            },
        );
        Ok(snapshot.len())
    }

    /// Stops sending to a connection; false when it was not subscribed.
    pub fn unsubscribe(&self, conn_id: Uuid) -> bool {
        self.state.lock().subscribers.remove(&conn_id).is_some()
    }

    pub fn subscriber_count(&self) -> usize {
        self.state.lock().subscribers.len()
    }

    /// `<epoch>-<n>`.
    fn message_id(&self, n: u64) -> String {
        format!("{}-{n}", self.epoch)
    }

    fn parse_id(&self, id: &str) -> Option<u64> {
        let (epoch, n) = id.trim().split_once('-')?;
        (epoch.parse::<i64>().ok()? == self.epoch)
            .then(|| n.parse().ok())
            .flatten()
    }

    fn sse_frame<'m>(&self, m: &'m Message) -> &'m Bytes {
        m.sse.get_or_init(|| {
            let id = self.message_id(m.id);
            let mut out = Vec::with_capacity(m.json.len() + id.len() + 16);
            out.extend_from_slice(b"id: ");
            out.extend_from_slice(id.as_bytes());
            out.extend_from_slice(b"\ndata: ");
            out.extend_from_slice(&m.json);
            out.extend_from_slice(b"\n\n");
            Bytes::from(out)
        })
    }

    fn ws_frame<'m>(&self, m: &'m Message) -> &'m Bytes {
        m.ws.get_or_init(|| {
            let n = m.id.to_string();
            let mut out = Vec::with_capacity(self.ws_prefix.len() + n.len() + m.json.len() + 12);
            out.extend_from_slice(self.ws_prefix.as_bytes());
            out.extend_from_slice(n.as_bytes());
            out.extend_from_slice(br#"","data":"#);
            out.extend_from_slice(&m.json);
            out.push(b'}');
            Bytes::from(out)
        })
    }

    fn send(&self, conn: &Connection, m: &Message) -> bool {
        let frame = match conn.transport {
            // A Socket.IO session has no stream command: it never subscribes.
            Transport::Sse | Transport::LongPoll | Transport::SocketIo => self.sse_frame(m),
            Transport::WebSocket => self.ws_frame(m),
        };
        conn.send(raw(frame.clone()))
    }

    /// Sends to every subscriber that has not seen `m`; drops the ones whose connection is
    /// closed (or just overflowed). Returns how many it was queued for.
    fn deliver(&self, s: &mut State, m: &Message) -> usize {
        let mut delivered = 0;
        s.subscribers.retain(|_, sub| {
            if sub.after >= m.id {
                return true;
            }
            sub.after = m.id;
            let sent = self.send(&sub.conn, m);
            delivered += usize::from(sent);
            sent
        });
        delivered
    }

    /// Delivers what the timer was waiting for; false (and marks the timer idle) when nothing
    /// was pending.
    fn flush(&self) -> bool {
        let mut s = self.state.lock();
        if s.pending.is_empty() {
            s.timer_idle = true;
            return false;
        }
        self.deliver_pending(&mut s);
        true
    }

    fn deliver_pending(&self, s: &mut State) {
        let pending = std::mem::take(&mut s.pending);
        s.pending_bytes = 0;
        if self.spec.throttle.is_some() {
            if let Some(latest) = pending.last() {
                self.deliver(s, latest);
            }
            return;
        }
        let Some(whole) = Message::batch(&pending) else {
            return;
        };
        s.subscribers.retain(|_, sub| {
            // A subscriber that joined during the interval got part of the batch in its
            // snapshot; it gets only the rest (rare, so built per subscriber).
            let start = pending.partition_point(|m| m.id <= sub.after);
            let sent = match start {
                0 => self.send(&sub.conn, &whole),
                n if n == pending.len() => true,
                n => Message::batch(&pending[n..]).is_some_and(|b| self.send(&sub.conn, &b)),
            };
            sub.after = whole.id;
            sent
        });
    }

    /// Ends the stream for its subscribers: SSE streams (which read nothing else) are closed,
    /// WebSocket connections get `{"type":"stream.deleted","stream":<name>}` and stay open.
    fn close(&self) {
        self.stop();
        let subscribers = std::mem::take(&mut self.state.lock().subscribers);
        let notice = Bytes::from(format!(
            r#"{{"type":"stream.deleted","stream":"{}"}}"#,
            self.spec.name
        ));
        for sub in subscribers.into_values() {
            match sub.conn.transport {
                Transport::Sse | Transport::LongPoll | Transport::SocketIo => {
                    sub.conn.outbox.close(DELETED)
                }
                Transport::WebSocket => {
                    sub.conn.send(raw(notice.clone()));
                }
            }
        }
    }

    fn stop(&self) {
        if let Some(timer) = &self.timer {
            timer.abort();
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop();
    }
}

fn raw(payload: Bytes) -> Outgoing {
    Outgoing::Raw {
        payload,
        text: true,
    }
}

/// Throttle: the first message after a quiet period goes out at once, then at most one per
/// interval, always the latest, until an interval passes with nothing new (so the last value
/// is always delivered). Batch: what arrives during an interval goes out at its end.
/// The task holds the stream weakly, and never across a wait, so dropping the stream ends it.
async fn run_timer(stream: Weak<Stream>, wake: Arc<Notify>, every: Duration, pacing: Pacing) {
    let flush = || stream.upgrade().is_some_and(|s| s.flush());
    loop {
        wake.notified().await;
        if pacing == Pacing::Throttle && !flush() {
            continue;
        }
        loop {
            tokio::time::sleep(every).await;
            if !flush() {
                break;
            }
        }
    }
}

/// Every stream, by name and by path.
pub struct Streams {
    registry: RwLock<Registry>,
    /// Paths the server serves itself; a stream may not take one.
    is_reserved: fn(&str) -> bool,
    /// The subscribers' outbox bounds, which every stream's snapshot stays within.
    outbox: OutboxLimits,
}

#[derive(Default)]
struct Registry {
    by_name: HashMap<String, Arc<Stream>>,
    by_path: HashMap<String, Arc<Stream>>,
}

impl Streams {
    pub fn new(is_reserved: fn(&str) -> bool) -> Self {
        Self {
            registry: RwLock::default(),
            is_reserved,
            outbox: OutboxLimits::default(),
        }
    }

    /// Snapshots kept within half of `outbox` (the hub's per-connection bounds).
    pub fn with_outbox_limits(self, outbox: OutboxLimits) -> Self {
        Self { outbox, ..self }
    }

    /// Validates and starts a stream. Needs a Tokio runtime for throttled or batched streams.
    pub fn create(&self, spec: StreamSpec) -> Result<Arc<Stream>, StreamError> {
        spec.validate(self.is_reserved)?;
        let mut r = self.registry.write();
        if r.by_name.contains_key(&spec.name) {
            return Err(StreamError::NameTaken(spec.name));
        }
        if let Some(other) = r.by_path.get(&spec.path) {
            return Err(StreamError::PathTaken(spec.path, other.spec.name.clone()));
        }
        let stream = Stream::start(spec, self.outbox);
        r.by_name.insert(stream.spec.name.clone(), stream.clone());
        r.by_path.insert(stream.spec.path.clone(), stream.clone());
        Ok(stream)
    }

    pub fn get(&self, name: &str) -> Option<Arc<Stream>> {
        self.registry.read().by_name.get(name).cloned()
    }

    pub fn by_path(&self, path: &str) -> Option<Arc<Stream>> {
        self.registry.read().by_path.get(path).cloned()
    }

    /// Deletes a stream and ends it for its subscribers (see `Stream::close`); returns how
    /// many it had, or `None` for an unknown name.
    pub fn remove(&self, name: &str) -> Option<usize> {
        let stream = {
            let mut r = self.registry.write();
            let stream = r.by_name.remove(name)?;
            r.by_path.remove(&stream.spec.path);
            stream
        };
        let subscribers = stream.subscriber_count();
        stream.close();
        Some(subscribers)
    }

    /// Every stream, by name.
    pub fn list(&self) -> Vec<StreamInfo> {
        let mut all: Vec<StreamInfo> = self
            .registry
            .read()
            .by_name
            .values()
            .map(|s| s.info())
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Removes a connection from every stream it subscribed to; call it when the connection
    /// ends (closed connections are also dropped at their next delivery, but an idle stream
    /// would keep them counted).
    pub fn unsubscribe_connection(&self, conn_id: Uuid) {
        for stream in self.registry.read().by_name.values() {
            stream.unsubscribe(conn_id);
        }
    }

    /// Stops every throttle and batch timer (server shutdown).
    pub fn shutdown(&self) {
        for stream in self.registry.read().by_name.values() {
            stream.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Hub;
    use crate::outbox::{Drained, OutboxLimits};
    use serde_json::json;

    fn reserved(path: &str) -> bool {
        path == "/ws" || path.starts_with("/api/")
    }

    fn hub() -> Hub {
        Hub::new(100, 10, OutboxLimits::default())
    }

    /// Everything queued on `conn`, as text frames.
    async fn frames(conn: &Connection) -> Vec<String> {
        if conn.outbox.queued().0 == 0 {
            return Vec::new();
        }
        let mut batch = Vec::new();
        let drained = conn.outbox.drain(&mut batch).await;
        assert_eq!(drained, Drained::Batch);
        batch
            .into_iter()
            .map(|item| match item {
                Outgoing::Raw {
                    payload,
                    text: true,
                } => String::from_utf8(payload.to_vec()).unwrap(),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    /// The `data:` values of SSE records, in order.
    fn sse_data(frames: &[String]) -> Vec<Value> {
        frames
            .iter()
            .flat_map(|f| f.lines())
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    }

    #[test]
    fn specs_are_validated() {
        let streams = Streams::new(reserved);
        let ok = StreamSpec::new("stock-prices", None, None, 0, 0);
        assert_eq!(ok.path, "/stock-prices");
        assert_eq!(ok.history, DEFAULT_HISTORY);
        let bad = |spec: StreamSpec| streams.create(spec).unwrap_err();
        assert!(matches!(
            bad(StreamSpec::new("", None, None, 0, 0)),
            StreamError::InvalidName(_)
        ));
        assert!(matches!(
            bad(StreamSpec::new("a b", None, None, 0, 0)),
            StreamError::InvalidName(_)
        ));
        assert!(matches!(
            bad(StreamSpec::new("x".repeat(65), None, None, 0, 0)),
            StreamError::InvalidName(_)
        ));
        for path in ["x", "/", "/a/", "/a//b", "/a/../b", "/a b", "/é"] {
            assert!(
                matches!(
                    bad(StreamSpec::new("s", Some(path.into()), None, 0, 0)),
                    StreamError::InvalidPath(_)
                ),
                "{path}"
            );
        }
        assert_eq!(
            bad(StreamSpec::new("s", Some("/api/x".into()), None, 0, 0)),
            StreamError::ReservedPath("/api/x".into())
        );
        assert_eq!(
            bad(StreamSpec::new("s", None, Some(MAX_HISTORY + 1), 0, 0)),
            StreamError::History
        );
        assert_eq!(
            bad(StreamSpec::new("s", None, None, 10, 10)),
            StreamError::ThrottleAndBatch
        );
        assert_eq!(
            bad(StreamSpec::new("s", None, None, 3_600_001, 0)),
            StreamError::Interval
        );

        streams.create(ok).unwrap();
        let dup = bad(StreamSpec::new(
            "stock-prices",
            Some("/other".into()),
            None,
            0,
            0,
        ));
        assert!(dup.is_conflict(), "{dup}");
        let same_path = bad(StreamSpec::new(
            "other",
            Some("/stock-prices".into()),
            None,
            0,
            0,
        ));
        assert_eq!(
            same_path,
            StreamError::PathTaken("/stock-prices".into(), "stock-prices".into())
        );
        assert!(streams.by_path("/stock-prices").is_some());
        assert_eq!(streams.remove("stock-prices"), Some(0));
        assert!(streams.by_path("/stock-prices").is_none());
        assert_eq!(streams.remove("stock-prices"), None);
    }

    /// A snapshot never holds more than half a subscriber's outbox, in messages or bytes,
    /// whatever history the stream declares: the oldest messages go first.
    #[tokio::test]
    async fn snapshots_stay_within_half_an_outbox() {
        let outbox = OutboxLimits {
            max_messages: 8,
            max_bytes: 1000,
        };
        let hub = hub();
        let streams = Streams::new(reserved).with_outbox_limits(outbox);
        let s = streams
            .create(StreamSpec::new("s", None, Some(MAX_HISTORY), 0, 0))
            .unwrap();
        for i in 0..10 {
            s.publish(&json!({"n": i}));
        }
        assert_eq!(s.info().retained, 4, "half the outbox's messages");
        let big = "x".repeat(200);
        for _ in 0..5 {
            s.publish(&json!({ "big": big }));
        }
        let retained = s.info().retained;
        assert_eq!(retained, 2, "two 210-byte messages fit in 500 bytes");
        let conn = hub.connect(Transport::WebSocket).unwrap();
        assert_eq!(s.subscribe(&conn, None).unwrap(), retained);
        assert!(!conn.outbox.is_closed());
        s.publish(&json!({ "huge": "y".repeat(600) }));
        assert_eq!(
            s.info().retained,
            0,
            "a message over the bound is delivered, not kept"
        );
    }

    #[tokio::test]
    async fn snapshot_is_the_bounded_history_then_live_without_gap_or_repeat() {
        let hub = hub();
        let streams = Streams::new(reserved);
        let s = streams
            .create(StreamSpec::new("s", None, Some(3), 0, 0))
            .unwrap();
        for i in 1..=5 {
            s.publish(&json!({"n": i}));
        }
        let conn = hub.connect(Transport::Sse).unwrap();
        assert_eq!(s.subscribe(&conn, None).unwrap(), 3);
        assert_eq!(
            s.subscribe(&conn, None).unwrap_err(),
            StreamError::AlreadySubscribed("s".into())
        );
        let p = s.publish(&json!({"n": 6}));
        assert_eq!((p.subscribers, p.delivered), (1, Some(1)));
        let got = frames(&conn).await;
        assert_eq!(got.len(), 2, "snapshot in one item, then the live one");
        assert_eq!(
            sse_data(&got),
            [3, 4, 5, 6].map(|n| json!({"n": n})).to_vec()
        );
        assert!(
            got[1].starts_with(&format!("id: {}\ndata: ", p.id)),
            "{}",
            got[1]
        );
        let info = s.info();
        assert_eq!((info.retained, info.subscribers, info.published), (3, 1, 6));

        // Resuming after message 5 gets only 6; an id of another incarnation gets everything.
        let again = hub.connect(Transport::Sse).unwrap();
        let five = p.id.replace("-6", "-5");
        assert_eq!(s.subscribe(&again, Some(&five)).unwrap(), 1);
        let stranger = hub.connect(Transport::Sse).unwrap();
        assert_eq!(s.subscribe(&stranger, Some("1-5")).unwrap(), 3);

        streams.unsubscribe_connection(conn.id);
        assert_eq!(s.subscriber_count(), 2);
    }

    #[tokio::test]
    async fn websocket_subscribers_get_one_frame_per_message() {
        let hub = hub();
        let streams = Streams::new(reserved);
        let s = streams
            .create(StreamSpec::new("ticks", None, None, 0, 0))
            .unwrap();
        s.publish(&json!(1));
        let ws = hub.connect(Transport::WebSocket).unwrap();
        s.subscribe(&ws, None).unwrap();
        s.publish(&json!({"price": 2.5}));
        let got: Vec<Value> = frames(&ws)
            .await
            .iter()
            .map(|f| serde_json::from_str(f).unwrap())
            .collect();
        assert_eq!(got.len(), 2);
        assert_eq!(got[1]["type"], "stream.message");
        assert_eq!(got[1]["stream"], "ticks");
        assert_eq!(got[1]["data"], json!({"price": 2.5}));
        assert!(got[1]["messageId"].as_str().unwrap().ends_with("-2"));

        // Deleting the stream tells a WebSocket and ends an SSE stream.
        let sse = hub.connect(Transport::Sse).unwrap();
        s.subscribe(&sse, None).unwrap();
        frames(&sse).await;
        assert_eq!(streams.remove("ticks"), Some(2));
        let notice: Value = serde_json::from_str(&frames(&ws).await[0]).unwrap();
        assert_eq!(notice, json!({"type": "stream.deleted", "stream": "ticks"}));
        assert!(!ws.outbox.is_closed());
        assert_eq!(
            sse.outbox.drain(&mut Vec::new()).await,
            Drained::Close(DELETED)
        );
    }

    #[tokio::test]
    async fn closed_connections_are_dropped_at_delivery() {
        let hub = hub();
        let streams = Streams::new(reserved);
        let s = streams
            .create(StreamSpec::new("s", None, None, 0, 0))
            .unwrap();
        let conn = hub.connect(Transport::Sse).unwrap();
        s.subscribe(&conn, None).unwrap();
        hub.disconnect(conn.id);
        assert_eq!(s.publish(&json!(1)).delivered, Some(0));
        assert_eq!(s.subscriber_count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn throttle_sends_at_most_one_per_interval_and_always_the_last() {
        let hub = hub();
        let streams = Streams::new(reserved);
        let s = streams
            .create(StreamSpec::new("t", None, Some(0), 100, 0))
            .unwrap();
        let conn = hub.connect(Transport::Sse).unwrap();
        s.subscribe(&conn, None).unwrap();
        let mut received = Vec::new();
        for i in 0..50 {
            assert_eq!(s.publish(&json!(i)).delivered, None);
            tokio::time::sleep(Duration::from_millis(10)).await;
            received.extend(sse_data(&frames(&conn).await));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        received.extend(sse_data(&frames(&conn).await));
        assert_eq!(received.first(), Some(&json!(0)), "leading edge");
        assert_eq!(received.last(), Some(&json!(49)), "trailing edge");
        assert!(
            (5..=7).contains(&received.len()),
            "one per 100 ms over 500 ms: {received:?}"
        );
        // Quiet again: the next message goes out at once.
        s.publish(&json!("again"));
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(sse_data(&frames(&conn).await), [json!("again")]);
    }

    #[tokio::test(start_paused = true)]
    async fn batch_sends_one_array_per_interval_in_order() {
        let hub = hub();
        let streams = Streams::new(reserved);
        let s = streams
            .create(StreamSpec::new("b", None, Some(10), 0, 100))
            .unwrap();
        let early = hub.connect(Transport::Sse).unwrap();
        s.subscribe(&early, None).unwrap();
        for i in 0..3 {
            s.publish(&json!(i));
        }
        // Joins mid-interval: 0..3 arrive in its snapshot, so its batch holds only 3.
        let late = hub.connect(Transport::Sse).unwrap();
        assert_eq!(s.subscribe(&late, None).unwrap(), 3);
        s.publish(&json!(3));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            frames(&early).await.is_empty(),
            "nothing before the interval ends"
        );
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(sse_data(&frames(&early).await), [json!([0, 1, 2, 3])]);
        assert_eq!(
            sse_data(&frames(&late).await),
            [json!([0, 1, 2]), json!([3])]
        );
        s.publish(&json!(4));
        tokio::time::sleep(Duration::from_millis(110)).await;
        assert_eq!(sse_data(&frames(&early).await), [json!([4])]);
    }

    #[tokio::test]
    async fn an_oversized_batch_goes_out_early() {
        let hub = hub();
        let streams = Streams::new(reserved);
        let s = streams
            .create(StreamSpec::new("b", None, Some(0), 0, 60_000))
            .unwrap();
        let conn = hub.connect(Transport::Sse).unwrap();
        s.subscribe(&conn, None).unwrap();
        for i in 0..MAX_BATCH_MESSAGES {
            s.publish(&json!(i));
        }
        let got = sse_data(&frames(&conn).await);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].as_array().unwrap().len(), MAX_BATCH_MESSAGES);
    }
}
