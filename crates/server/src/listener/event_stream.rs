//! Event streams (SSE) answered on the socket itself instead of by hyper.
//!
//! hyper keeps an 8 KiB read buffer and an 8 KiB header buffer for the whole life of an HTTP/1
//! connection, which made an idle SSE stream cost ~21 KB of RSS (measured with `herald bench
//! --scenario idle --transport sse`, docs/performance.md). A stream needs neither once its
//! request is read. So a new connection's first request head is read here (`read_head`), within
//! the header-read timeout, and parsed with httparse; a `GET` for an event stream is routed
//! through the same axum router as every other request, and its response written straight to
//! the socket: chunked, and the connection closes when the stream ends. Anything else — and
//! any request this path does not take in one piece — goes to hyper with the bytes read.

use std::fmt::Write as _;
use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Version, header, response::Parts};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tower::ServiceExt;

use super::TimedStream;

/// The largest request head this path reads; a bigger one is hyper's to answer (431).
const MAX_HEAD: usize = 8 * 1024;
const MAX_HEADERS: usize = 64;
/// Error bodies (401, 429, ...) are small; a larger one is cut off here.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// The paths whose `GET` is always an event stream (as routed in `crate::api::router`); other
/// streams (stream routes) are recognised by the client's `Accept: text/event-stream`, which
/// `EventSource` always sends. A stream missing here still works, through hyper.
const STREAM_PATHS: [&str; 2] = ["/api/realtime/stream", "/events"];
const STREAM_PREFIXES: [&str; 1] = ["/events/user/"];

/// What a new connection's first bytes are.
pub(super) enum Head {
    /// A request for an event stream, served here.
    Stream(Box<Request<Body>>),
    /// Anything else, hyper's to serve: the bytes read so far, a whole request head unless
    /// it is too large or malformed (hyper answers those).
    Hyper(Vec<u8>),
    /// The client closed the connection, or had not sent a whole request head by `deadline`.
    Close,
}

/// Reads the connection's first request head, which must come whole by `deadline`: a complete
/// `GET` for an event stream, without a body or an upgrade, is this path's.
pub(super) async fn read_head(io: &mut TimedStream, deadline: Instant) -> Head {
    // Nothing is allocated for a client that has not sent anything yet.
    match tokio::time::timeout_at(deadline, io.tcp().readable()).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return Head::Close,
        Err(_) => return timed_out(),
    }
    let mut buf = Vec::with_capacity(MAX_HEAD);
    loop {
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
            Ok(Ok(1..)) => {}
            Ok(Ok(0) | Err(_)) => return Head::Close,
            Err(_) => return timed_out(),
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut head = httparse::Request::new(&mut headers);
        match head.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                return match stream_request(&head) {
                    Some(request) => Head::Stream(Box::new(request)),
                    None => Head::Hyper(buf),
                };
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) | Err(_) => return Head::Hyper(buf),
        }
    }
}

fn timed_out() -> Head {
    metrics::counter!("herald_http_timeouts_total", "timeout" => "header_read").increment(1);
    Head::Close
}

/// The request, if it is a `GET` for an event stream.
fn stream_request(head: &httparse::Request) -> Option<Request<Body>> {
    if head.method != Some("GET") || !is_event_stream(head) {
        return None;
    }
    let mut request = Request::builder().method("GET").uri(head.path?);
    if head.version == Some(0) {
        request = request.version(Version::HTTP_10);
    }
    for h in head.headers.iter() {
        request = request.header(h.name, h.value);
    }
    // Anything the builder rejects (a malformed header value) is hyper's to answer.
    request.body(Body::empty()).ok()
}

fn is_event_stream(head: &httparse::Request) -> bool {
    let header = |name: &str| {
        head.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    let has_body = header("transfer-encoding").is_some()
        || header("content-length").is_some_and(|v| v != b"0");
    if has_body || header("upgrade").is_some() {
        return false;
    }
    let path = head.path.unwrap_or("");
    let path = path.split('?').next().unwrap_or(path);
    STREAM_PATHS.contains(&path)
        || STREAM_PREFIXES.iter().any(|p| path.starts_with(p))
        || header("accept").is_some_and(|v| {
            v.windows(17)
                .any(|w| w.eq_ignore_ascii_case(b"text/event-stream"))
        })
}

/// Routes the request, and writes the response: an event stream chunk by chunk for as long as
/// it lasts, anything else (an error) whole.
pub(super) async fn serve(
    mut io: TimedStream,
    peer: SocketAddr,
    request: Box<Request<Body>>,
    router: Router,
) {
    // Routing runs boxed: a task keeps room for its largest state for as long as it lives, and
    // routing needs far more than the streaming loop (measured: 352 bytes for the loop, 656 for
    // this whole future; 2 464 when peeking and routing shared the task).
    match Box::pin(route(peer, request, router)).await {
        Answer::Stream {
            head,
            body,
            chunked,
        } => write_stream(&mut io, head, body, chunked).await,
        Answer::Whole(response) => drop(io.write_all(&response).await),
    }
    let _ = io.shutdown().await;
}

enum Answer {
    /// An event stream: its response head, then its body's chunks as they come.
    Stream {
        head: BytesMut,
        body: Body,
        chunked: bool,
    },
    /// Any other response (an error), whole.
    Whole(BytesMut),
}

async fn route(peer: SocketAddr, request: Box<Request<Body>>, router: Router) -> Answer {
    let mut request = *request;
    let http10 = request.version() == Version::HTTP_10;
    request.extensions_mut().insert(ConnectInfo(peer));
    let Ok(response) = router.oneshot(request).await;
    let (parts, body) = response.into_parts();
    let streaming = parts
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if streaming {
        let chunked = !http10;
        let encoding = if chunked {
            "transfer-encoding: chunked\r\n"
        } else {
            ""
        };
        let head = response_head(&parts, http10, encoding);
        return Answer::Stream {
            head,
            body,
            chunked,
        };
    }
    let body = axum::body::to_bytes(body, MAX_ERROR_BODY)
        .await
        .unwrap_or_default();
    let length = format!("content-length: {}\r\n", body.len());
    let mut response = response_head(&parts, http10, &length);
    response.put_slice(&body);
    Answer::Whole(response)
}

/// Writes the stream's chunks as they come, until it ends or the client goes away (a read
/// that returns end-of-file; anything the client sends meanwhile is ignored).
async fn write_stream(io: &mut TimedStream, head: BytesMut, body: Body, chunked: bool) {
    if io.write_all(&head).await.is_err() {
        return;
    }
    drop(head);
    let mut chunks = body.into_data_stream();
    // Small: it is part of every open stream's task, and clients have nothing to send.
    let mut ignored = [0u8; 8];
    loop {
        tokio::select! {
            chunk = chunks.next() => {
                let Some(Ok(chunk)) = chunk else { break };
                if chunk.is_empty() {
                    continue;
                }
                if io.write_all(&frame(chunk, chunked)).await.is_err() {
                    return;
                }
            }
            read = io.read(&mut ignored) => {
                if matches!(read, Ok(0) | Err(_)) {
                    return;
                }
            }
        }
    }
    if chunked {
        let _ = io.write_all(b"0\r\n\r\n").await;
    }
}

/// One chunk of a chunked body (`<size in hex>\r\n<data>\r\n`), or the data as is.
fn frame(chunk: Bytes, chunked: bool) -> Bytes {
    if !chunked {
        return chunk;
    }
    let mut out = BytesMut::with_capacity(chunk.len() + 12);
    let _ = write!(out, "{:x}\r\n", chunk.len());
    out.put_slice(&chunk);
    out.put_slice(b"\r\n");
    out.freeze()
}

/// The status line and headers, with `extra` header lines, `Date` and `Connection: close`.
/// The status line answers in the request's version, as hyper does.
fn response_head(parts: &Parts, http10: bool, extra: &str) -> BytesMut {
    let mut out = BytesMut::with_capacity(256);
    let status = parts.status;
    out.put_slice(
        format!(
            "HTTP/1.{} {} {}\r\n",
            if http10 { 0 } else { 1 },
            status.as_str(),
            status.canonical_reason().unwrap_or("")
        )
        .as_bytes(),
    );
    for (name, value) in &parts.headers {
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    let date = chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S GMT");
    out.put_slice(format!("date: {date}\r\nconnection: close\r\n{extra}\r\n").as_bytes());
    out
}
