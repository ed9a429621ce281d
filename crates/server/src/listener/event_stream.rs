//! Event streams (SSE) answered on the socket itself instead of by hyper.
//!
//! hyper keeps an 8 KiB read buffer and an 8 KiB header buffer for the whole life of an HTTP/1
//! connection, which made an idle SSE stream cost ~21 KB of RSS (measured with `herald bench
//! --scenario idle --transport sse`, docs/performance.md). A stream needs neither once its
//! request is read. So a `GET` for an event stream is peeked at before hyper sees it, parsed
//! with httparse, routed through the same axum router as every other request, and its
//! response written straight to the socket: chunked, and the connection closes when the stream
//! ends. Anything else — and any request this path does not take in one piece — is left unread
//! for hyper.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Version, header, response::Parts};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

use super::TimedStream;

/// The largest request head this path reads; a bigger one is hyper's to answer (431).
const MAX_HEAD: usize = 8 * 1024;
const MAX_HEADERS: usize = 64;
/// How long a new connection may take to send its request before it is handed to hyper as is.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Error bodies (401, 429, ...) are small; a larger one is cut off here.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// The paths whose `GET` is always an event stream (as routed in `crate::api::router`); other
/// streams (stream routes) are recognised by the client's `Accept: text/event-stream`, which
/// `EventSource` always sends. A stream missing here still works, through hyper.
const STREAM_PATHS: [&str; 2] = ["/api/realtime/stream", "/events"];
const STREAM_PREFIXES: [&str; 1] = ["/events/user/"];

/// A request this path serves, and how many bytes its head takes on the socket.
pub struct Peeked {
    head_len: usize,
    request: Request<Body>,
}

/// Looks at the connection's first bytes without consuming them: a complete `GET` for an event
/// stream, without a body or an upgrade, is this path's; `None` leaves everything to hyper.
pub async fn peek_request(io: &TimedStream) -> Option<Box<Peeked>> {
    let mut buf = vec![0; MAX_HEAD];
    let n = tokio::time::timeout(HEAD_TIMEOUT, io.tcp().peek(&mut buf))
        .await
        .ok()?
        .ok()?;
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(head_len) = head.parse(&buf[..n]).ok()? else {
        return None;
    };
    if head.method != Some("GET") || !is_event_stream(&head) {
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
    let request = request.body(Body::empty()).ok()?;
    Some(Box::new(Peeked { head_len, request }))
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

/// Consumes the request head, routes the request, and writes the response: an event stream
/// chunk by chunk for as long as it lasts, anything else (an error) whole.
pub async fn serve(mut io: TimedStream, peer: SocketAddr, peeked: Box<Peeked>, router: Router) {
    // Routing runs boxed: a task keeps room for its largest state for as long as it lives, and
    // routing needs far more than the streaming loop (measured: 352 bytes for the loop, 656 for
    // this whole future; 2 464 when peeking and routing shared the task).
    match Box::pin(route(&mut io, peer, peeked, router)).await {
        Some(Answer::Stream {
            head,
            body,
            chunked,
        }) => write_stream(&mut io, head, body, chunked).await,
        Some(Answer::Whole(response)) => drop(io.write_all(&response).await),
        None => {}
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

async fn route(
    io: &mut TimedStream,
    peer: SocketAddr,
    peeked: Box<Peeked>,
    router: Router,
) -> Option<Answer> {
    let Peeked {
        head_len,
        mut request,
    } = *peeked;
    // The head is already in the socket's receive queue (it was peeked): this does not wait.
    let mut head = vec![0; head_len];
    io.read_exact(&mut head).await.ok()?;
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
        return Some(Answer::Stream {
            head,
            body,
            chunked,
        });
    }
    let body = axum::body::to_bytes(body, MAX_ERROR_BODY)
        .await
        .unwrap_or_default();
    let length = format!("content-length: {}\r\n", body.len());
    let mut response = response_head(&parts, http10, &length);
    response.put_slice(&body);
    Some(Answer::Whole(response))
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
