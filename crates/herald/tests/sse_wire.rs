//! Event streams are answered on the socket itself, not by hyper (crates/server/src/listener):
//! the HTTP they put on the wire, read byte by byte from a raw TCP client, and the cases that
//! must still reach hyper untouched.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A raw HTTP client: sends `request` as is and collects what comes back.
struct Raw {
    tcp: TcpStream,
    got: Vec<u8>,
}

impl Raw {
    async fn send(server: &Server, request: &str) -> Raw {
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        tcp.write_all(request.as_bytes()).await.unwrap();
        Raw {
            tcp,
            got: Vec::new(),
        }
    }

    /// Reads until `needle` has arrived; returns everything received so far as text.
    async fn until(&mut self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let text = String::from_utf8_lossy(&self.got).into_owned();
            if text.contains(needle) {
                return text;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, self.tcp.read(&mut chunk))
                .await
                .unwrap_or_else(|_| panic!("no {needle:?} in {text:?}"))
                .unwrap();
            assert!(n > 0, "connection closed before {needle:?}: {text:?}");
            self.got.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads until the server closes the connection; returns everything as text.
    async fn read_to_close(&mut self) -> String {
        let read =
            tokio::time::timeout(Duration::from_secs(10), self.tcp.read_to_end(&mut self.got));
        read.await
            .expect("the server closed the connection")
            .unwrap();
        String::from_utf8_lossy(&self.got).into_owned()
    }
}

fn get(path: &str, headers: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: herald\r\n{headers}\r\n")
}

/// The body of a chunked response: the chunks' data joined, checking each size line.
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size, 16).unwrap_or_else(|_| panic!("size {size:?}"));
        if size == 0 {
            break;
        }
        out.push_str(&after[..size]);
        assert_eq!(&after[size..size + 2], "\r\n", "chunk end");
        rest = &after[size + 2..];
    }
    out
}

#[tokio::test]
async fn an_event_stream_is_chunked_http_with_its_headers_and_ends_with_the_server() {
    let mut server = Server::start();
    let request = get(
        "/api/realtime/stream?types=wire.*",
        "Accept: text/event-stream\r\n",
    );
    let mut raw = Raw::send(&server, &request).await;
    let text = raw.until("event: connection").await;
    let (head, _) = text.split_once("\r\n\r\n").unwrap();
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    for line in [
        "content-type: text/event-stream",
        "cache-control: no-cache",
        "x-accel-buffering: no",
        "transfer-encoding: chunked",
        "connection: close",
        "date: ",
    ] {
        assert!(head.contains(line), "{line} missing in {head}");
    }

    let published = publish(
        &server,
        API_KEY,
        json!({"type": "wire.test", "data": {"n": 1}}),
    )
    .await;
    let text = raw.until("\"wire.test\"").await;
    let body = dechunk(text.split_once("\r\n\r\n").unwrap().1);
    assert!(
        body.contains(&format!("id: {}\nevent: event\n", published["seq"])),
        "{body}"
    );

    // A graceful stop ends the stream with its `close` record and the last chunk.
    server.terminate(Duration::from_secs(10));
    let text = raw.read_to_close().await;
    let body = text.split_once("\r\n\r\n").unwrap().1;
    assert!(dechunk(body).contains("event: close"), "{body}");
    assert!(body.ends_with("0\r\n\r\n"), "{body:?}");
}

#[tokio::test]
async fn an_http10_stream_is_not_chunked_and_a_client_that_leaves_is_unregistered() {
    let server = Server::start();
    let request = "GET /events HTTP/1.0\r\n\r\n";
    let mut raw = Raw::send(&server, request).await;
    let text = raw.until("event: connect").await;
    assert!(text.starts_with("HTTP/1.0 200 OK\r\n"), "{text}");
    let body = text.split_once("\r\n\r\n").unwrap().1;
    assert!(body.starts_with("event: connect\n"), "{body:?}");
    stats_until(&server, |s| s["connections"]["byType"]["sse"] == 1).await;
    drop(raw);
    stats_until(&server, |s| s["connections"]["total"] == 0).await;
}

#[tokio::test]
async fn a_refused_stream_gets_a_whole_error_response() {
    let server = Server::start();
    let request = get(
        "/api/realtime/stream?types=x&token=not-a-token",
        "Accept: text/event-stream\r\n",
    );
    let text = Raw::send(&server, &request).await.read_to_close().await;
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{head}");
    let length = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_owned)
        })
        .expect("a content-length");
    assert_eq!(length.parse::<usize>().unwrap(), body.len(), "{text}");
    let error: serde_json::Value = serde_json::from_str(body).unwrap();
    assert!(
        error["error"].is_string() || error["message"].is_string(),
        "{error}"
    );
    stats_until(&server, |s| s["connections"]["total"] == 0).await;
}

#[tokio::test]
async fn other_requests_reach_hyper_untouched() {
    let server = Server::start();

    // Two requests on one keep-alive connection: the first was read before hyper took over.
    let mut raw = Raw::send(&server, &get("/health", "")).await;
    raw.until("\r\n\r\n").await;
    raw.tcp
        .write_all(get("/health", "Connection: close\r\n").as_bytes())
        .await
        .unwrap();
    let text = raw.read_to_close().await;
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");

    // A stream request whose head arrives in two pieces is served all the same.
    let request = get(
        "/api/realtime/stream?types=x",
        "Accept: text/event-stream\r\n",
    );
    let (first, second) = request.split_at(20);
    let mut raw = Raw::send(&server, first).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    raw.tcp.write_all(second.as_bytes()).await.unwrap();
    let text = raw.until("event: connection").await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");

    // A GET with a body, and a malformed head, are hyper's to answer.
    let text = Raw::send(
        &server,
        "GET /events HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
    )
    .await
    .until("event: connect")
    .await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    let text = Raw::send(&server, "GET /events HTTP/1.1\r\nBad Header\r\n\r\n")
        .await
        .read_to_close()
        .await;
    assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
}
