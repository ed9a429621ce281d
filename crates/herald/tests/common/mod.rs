//! Test harness: runs the real `herald` binary on a free port with its own SQLite file, and
//! talks to it with real WebSocket, SSE and HTTP clients.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub(crate) const SECRET: &str = "integration-test-secret-of-32-bytes-or-more";
pub(crate) const API_KEY: &str = "test-api-key";
pub(crate) const WAIT: Duration = Duration::from_secs(5);

pub(crate) struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    extra: Vec<String>,
    /// Extra environment variables, kept for `restart()`.
    extra_env: Vec<(String, String)>,
    /// Its stderr, when captured.
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Server {
    pub(crate) fn start() -> Self {
        Self::start_with(&[])
    }

    /// A server where every room is public (`--public-room '*'`), so anonymous clients
    /// receive room events: for suites about delivery rather than access (tests/access.rs).
    pub(crate) fn start_open() -> Self {
        Self::start_with(&["--public-room", "*"])
    }

    pub(crate) fn start_with(args: &[&str]) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let mut s = Self::spawn(&dir, args);
        s._tmp = Some(tmp);
        s
    }

    /// Starts on an existing data directory (for restarts).
    pub(crate) fn spawn(dir: &Path, args: &[&str]) -> Self {
        Self::spawn_env(dir, args, &[])
    }

    /// Like `start_with`, with extra environment variables (e.g. `HERALD_*` keys that have no
    /// flag); they are applied after the harness defaults, so they may override them.
    pub(crate) fn start_env(args: &[&str], envs: &[(&str, &str)]) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let mut s = Self::spawn_env(&dir, args, envs);
        s._tmp = Some(tmp);
        s
    }

    /// Like `spawn`, with extra environment variables.
    pub(crate) fn spawn_env(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Self {
        Self::launch(dir, args, envs, false).unwrap_or_else(|e| panic!("herald did not start: {e}"))
    }

    /// Like `start_with`, for a start that may be refused: then its stderr.
    pub(crate) fn try_start_with(args: &[&str]) -> Result<Self, String> {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = Self::try_spawn(tmp.path(), args)?;
        s._tmp = Some(tmp);
        Ok(s)
    }

    /// Like `spawn`, for a start that may be refused: then its stderr.
    pub(crate) fn try_spawn(dir: &Path, args: &[&str]) -> Result<Self, String> {
        Self::launch(dir, args, &[], true)
    }

    /// Starts `herald serve`; with `capture`, its stderr is returned when it exits before
    /// listening (and copied to the test's stderr otherwise).
    fn launch(
        dir: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
        capture: bool,
    ) -> Result<Self, String> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .arg("serve")
            // A test that restarts the server and needs the same address passes its own port.
            .args(["--port", "0"].iter().filter(|_| !args.contains(&"--port")))
            .args(["--host", "127.0.0.1"])
            .arg("--database")
            .arg(dir.join("herald.db"))
            .args(args)
            .env("JWT_SECRET", SECRET)
            .env("HERALD_API_KEYS", format!("[\"{API_KEY}\"]"))
            .env("HERALD_LOG", "warn")
            .envs(envs.iter().copied())
            .current_dir(dir)
            .stdout(Stdio::piped())
            .stderr(if capture {
                Stdio::piped()
            } else {
                Stdio::inherit()
            })
            .spawn()
            .expect("herald binary runs");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let Some(Ok(first)) = lines.next() else {
            let out = child.wait_with_output().unwrap();
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        };
        let captured = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        if let Some(stderr) = child.stderr.take() {
            let captured = captured.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    eprintln!("{line}");
                    captured.lock().unwrap().push_str(&(line + "\n"));
                }
            });
        }
        let addr = first
            .strip_prefix("Herald listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line: {first}"))
            .parse()
            .unwrap();
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(Self {
            child: Some(child),
            addr,
            dir: dir.to_owned(),
            _tmp: None,
            extra: args.iter().map(|s| s.to_string()).collect(),
            extra_env: envs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            stderr: captured,
        })
    }

    /// What the server wrote to stderr so far (started with `try_spawn`/`try_start_with`).
    pub(crate) fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits (at most `within`) for the server to exit by itself.
    pub(crate) fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let c = self.child.as_mut().unwrap();
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "herald did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub(crate) fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    pub(crate) fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// `kill -9`: no chance to flush anything.
    pub(crate) fn kill9(&mut self) {
        let mut c = self.child.take().unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
    }

    /// SIGTERM, then waits (at most `within`) for the exit status.
    pub(crate) fn terminate(&mut self, within: Duration) -> ExitStatus {
        let mut c = self.child.take().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status;
            }
            if std::time::Instant::now() > deadline {
                c.kill().unwrap();
                panic!("herald did not exit within {within:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts a new server process on the same database (the old one must be stopped).
    pub(crate) fn restart(&mut self) -> Self {
        assert!(self.child.is_none(), "stop the server first");
        let args: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let envs: Vec<(&str, &str)> = self
            .extra_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        Self::spawn_env(&self.dir, &args, &envs)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rooms: Option<&'a [&'a str]>,
}

pub(crate) fn token_with(user: &str, role: Option<&str>, ttl_secs: i64, secret: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + ttl_secs;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &Claims {
            sub: user,
            exp,
            role,
            rooms: None,
        },
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A user token whose `rooms` claim limits the rooms it may join.
pub(crate) fn token_for_rooms(user: &str, rooms: &[&str]) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &Claims {
            sub: user,
            exp: 4_000_000_000,
            role: None,
            rooms: Some(rooms),
        },
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

pub(crate) fn token(user: &str) -> String {
    token_with(user, None, 3600, SECRET)
}

pub(crate) fn admin_token() -> String {
    token_with("admin", Some("admin"), 3600, SECRET)
}

/// `n` nodes sharing a fresh PostgreSQL schema and a fresh Redis prefix on `redis`, each
/// started with `args` too.
pub(crate) async fn cluster_with(n: usize, redis: &str, args: &[&str]) -> Vec<Server> {
    let postgres = herald_store::testing::scratch_postgres().await;
    let prefix = herald_redis::testing::scratch_prefix();
    let mut all = vec![
        "--postgres",
        &postgres,
        "--redis",
        redis,
        "--redis-prefix",
        &prefix,
    ];
    all.extend_from_slice(args);
    (0..n).map(|_| Server::start_with(&all)).collect()
}

/// `n` nodes where every room is public (see `Server::start_open`).
pub(crate) async fn cluster(n: usize, redis: &str) -> Vec<Server> {
    cluster_with(n, redis, &["--public-room", "*"]).await
}

/// A port that was free a moment ago, for a server that must come back on the same address
/// after a restart (`Server::start_with(&["--port", &port])`).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// POSTs JSON with a bearer token; returns status and JSON body.
pub(crate) async fn post(
    server: &Server,
    path: &str,
    bearer: Option<&str>,
    body: &Value,
) -> (u16, Value) {
    let mut req = http().post(server.url(path)).json(body);
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// Runs `node <script> <args>` in `tests/seed-clients/` (its packages installed by
/// `npm ci --prefix tests/seed-clients`, as `./scripts/test.sh` does); its stdout, after
/// asserting it exited 0.
pub(crate) async fn seed_client_script(script: &str, args: Vec<String>) -> String {
    let dir = seed_clients_with("ws");
    let script = script.to_owned();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .args(args)
            .current_dir(dir)
            .output()
            .expect("node runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

pub(crate) async fn get(server: &Server, path: &str, bearer: Option<&str>) -> (u16, Value) {
    let mut req = http().get(server.url(path));
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// Publishes over HTTP and asserts the 201; returns the acknowledged `event` object.
pub(crate) async fn publish(server: &Server, bearer: &str, body: Value) -> Value {
    let (status, res) = post(server, "/api/realtime/publish", Some(bearer), &body).await;
    assert_eq!(status, 201, "publish failed: {res}");
    res["event"].clone()
}

pub(crate) struct Ws {
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub connection_id: String,
}

impl Ws {
    /// Opens a WebSocket on `path` and returns it with its first message (the greeting).
    async fn open(server: &Server, path: &str) -> (Ws, Value) {
        let (stream, _) = tokio_tungstenite::connect_async(server.ws_url(path))
            .await
            .unwrap();
        let mut ws = Ws {
            stream,
            connection_id: String::new(),
        };
        let hello = ws.recv().await;
        (ws, hello)
    }

    /// Connects to `path` (`/ws` or `/`) and reads `connection.established`.
    pub(crate) async fn connect(server: &Server, path: &str) -> Ws {
        let (mut ws, hello) = Ws::open(server, path).await;
        assert_eq!(hello["type"], "connection.established", "{hello}");
        ws.connection_id = hello["data"]["connectionId"].as_str().unwrap().to_owned();
        ws
    }

    /// Connects to a room dialect's path (`/ws/chat` greets with `welcome`, `/ws/rooms` with
    /// `connected`), authenticated as `user` when given.
    pub(crate) async fn dialect(server: &Server, path: &str, user: Option<&str>) -> Ws {
        let (mut ws, hello) = Ws::open(server, path).await;
        assert!(
            hello["type"] == "welcome" || hello["type"] == "connected",
            "{hello}"
        );
        ws.connection_id = hello["clientId"].as_str().unwrap().to_owned();
        if let Some(user) = user {
            ws.send(json!({"type": "authenticate", "token": token(user)}))
                .await;
            assert_eq!(ws.recv().await["type"], "authenticated");
        }
        ws
    }

    /// Connects and authenticates as `user`.
    pub(crate) async fn user(server: &Server, user: &str) -> Ws {
        let mut ws = Ws::connect(server, "/ws").await;
        ws.send(json!({"type": "authenticate", "data": {"token": token(user)}}))
            .await;
        let r = ws.recv().await;
        assert_eq!(r["type"], "authenticated", "{r}");
        ws
    }

    pub(crate) async fn send(&mut self, v: Value) {
        self.stream
            .send(Message::text(v.to_string()))
            .await
            .unwrap();
    }

    pub(crate) async fn send_raw(&mut self, m: Message) {
        self.stream.send(m).await.unwrap();
    }

    /// The next JSON text message (pings are skipped); panics after `WAIT`.
    pub(crate) async fn recv(&mut self) -> Value {
        self.recv_within(WAIT).await
    }

    /// The next JSON text message (pings are skipped); panics after `wait`.
    pub(crate) async fn recv_within(&mut self, wait: Duration) -> Value {
        loop {
            let m = tokio::time::timeout(wait, self.stream.next())
                .await
                .expect("timed out waiting for a message")
                .expect("stream ended")
                .expect("websocket error");
            match m {
                Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text message, got {other:?}"),
            }
        }
    }

    /// Skips messages until one of `kind` arrives.
    pub(crate) async fn recv_type(&mut self, kind: &str) -> Value {
        loop {
            let v = self.recv().await;
            if v["type"] == kind {
                return v;
            }
        }
    }

    /// Sends a subscribe command and returns the subscription id.
    pub(crate) async fn subscribe(&mut self, types: &[&str], filters: Value) -> String {
        self.send(json!({"type": "subscribe", "data": {"eventTypes": types, "filters": filters}}))
            .await;
        let r = self.recv_type("subscription.created").await;
        r["data"]["subscriptionId"].as_str().unwrap().to_owned()
    }

    /// Asserts nothing but pings arrives for `wait`.
    pub(crate) async fn expect_silence(&mut self, wait: Duration) {
        loop {
            match tokio::time::timeout(wait, self.stream.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(other) => panic!("expected silence, got {other:?}"),
            }
        }
    }

    /// Reads until the server closes; returns the close frame (None if the TCP stream ended).
    pub(crate) async fn closed(&mut self) -> Option<CloseFrame> {
        loop {
            match tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("timed out waiting for close")
            {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }
}

/// A minimal Server-Sent Events reader over a streaming HTTP response.
pub(crate) struct Sse {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

impl SseEvent {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap()
    }
}

impl Sse {
    pub(crate) async fn open(server: &Server, path_and_query: &str, bearer: Option<&str>) -> Sse {
        let mut req = reqwest::Client::new()
            .get(server.url(path_and_query))
            .header("accept", "text/event-stream");
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        Sse::from_response(req.send().await.unwrap())
    }

    /// Wraps a response already requested (for custom headers, `?token=`, ...).
    pub(crate) fn from_response(res: reqwest::Response) -> Sse {
        Sse {
            status: res.status().as_u16(),
            headers: res.headers().clone(),
            body: Box::pin(res.bytes_stream()),
            buf: String::new(),
        }
    }

    /// The next event (comments skipped); None when the stream ends.
    pub(crate) async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let record: String = self.buf.drain(..end + 2).collect();
                let mut ev = SseEvent {
                    event: "message".into(),
                    ..Default::default()
                };
                let mut data = Vec::new();
                for line in record.lines() {
                    if line.starts_with(':') {
                        continue;
                    }
                    let (field, value) = line.split_once(": ").unwrap_or((line, ""));
                    match field {
                        "id" => ev.id = Some(value.to_owned()),
                        "event" => ev.event = value.to_owned(),
                        "data" => data.push(value.to_owned()),
                        _ => {}
                    }
                }
                if data.is_empty() && ev.id.is_none() {
                    continue;
                }
                ev.data = data.join("\n");
                return Some(ev);
            }
            let chunk = tokio::time::timeout(WAIT, self.body.next())
                .await
                .expect("timed out waiting for SSE data")?;
            self.buf
                .push_str(std::str::from_utf8(&chunk.ok()?).unwrap());
        }
    }

    pub(crate) async fn next_event(&mut self, name: &str) -> SseEvent {
        loop {
            let e = self
                .next()
                .await
                .unwrap_or_else(|| panic!("stream ended before a {name} event"));
            if e.event == name {
                return e;
            }
        }
    }
}

/// The value of the series `series` (name and labels, e.g. `x_total{result="ok"}`) in
/// `/metrics`; None until it is first recorded.
pub(crate) async fn metric(server: &Server, series: &str) -> Option<f64> {
    let text = http()
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prefix = format!("{series} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().parse().unwrap())
}

/// Every stored event (up to 1 000), oldest first, as an operator reads history.
pub(crate) async fn stored_events(server: &Server) -> Vec<Value> {
    let (status, body) = get(
        server,
        "/api/realtime/events?limit=1000",
        Some(&admin_token()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let mut events = body["events"].as_array().expect("events array").clone();
    events.reverse();
    events
}

/// Polls `GET path` (as admin) every 20 ms until `pred` holds; returns that answer, or panics
/// with the last one after `WAIT`.
pub(crate) async fn get_until(server: &Server, path: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (status, body) = get(server, path, Some(&admin_token())).await;
        assert_eq!(status, 200, "{path}: {body}");
        if pred(&body) {
            return body;
        }
        if std::time::Instant::now() > deadline {
            panic!("{path} never reached the expected state: {body}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) async fn stats_until(server: &Server, pred: impl Fn(&Value) -> bool) -> Value {
    get_until(server, "/api/realtime/stats", pred).await
}

/// Publishes `count` `load.test` events padded with `pad` bytes, from 16 concurrent requests;
/// returns their seqs, sorted.
pub(crate) async fn flood(server: &Server, count: usize, pad: usize) -> Vec<u64> {
    use futures_util::StreamExt as _;
    let client = reqwest::Client::new();
    let url = server.url("/api/realtime/publish");
    let pad = "p".repeat(pad);
    let mut seqs: Vec<u64> = futures_util::stream::iter(0..count)
        .map(|i| {
            let req = client
                .post(&url)
                .bearer_auth(API_KEY)
                .json(&json!({"type": "load.test", "data": {"i": i, "pad": pad}}));
            async move {
                let res = req.send().await.unwrap();
                assert_eq!(res.status().as_u16(), 201);
                let body: Value = res.json().await.unwrap();
                body["event"]["seq"].as_u64().unwrap()
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    seqs.sort_unstable();
    seqs
}

/// `tests/seed-clients`, whose packages (`package` among them) `npm ci` has installed.
pub(crate) fn seed_clients_with(package: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/seed-clients");
    assert!(
        dir.join("node_modules").join(package).exists(),
        "run `npm ci --prefix tests/seed-clients` (./scripts/test.sh does)"
    );
    dir
}
