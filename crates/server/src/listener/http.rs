//! HTTP connections, served by hyper's HTTP/1 with two timeouts between requests.
//!
//! A kept-alive connection waiting for its next request is idle until the request's first
//! byte comes, and is closed after `http_idle_timeout_secs` of that; from the first byte on,
//! the request head has `header_read_timeout_secs` to come whole (a client sending it byte by
//! byte is not kept alive by the trickle). hyper has one timer for both, its header-read
//! timeout, which runs from when it starts waiting for a head; `HeadTimer` is that timer,
//! told of the first byte by the connection's socket (`HttpIo`). hyper's HTTP/1 server uses
//! its timer for nothing else.
//!
//! A connection's first request head is read before hyper sees it (`event_stream::read_head`,
//! with its own header-read deadline): it comes to hyper already read, replayed by `HttpIo`.
//! A request in flight (a long poll, a streamed response) is not waiting for a head, and a
//! WebSocket leaves hyper at its upgrade: neither is timed here. (A pipelined request whose
//! first bytes came with the previous one is timed as idle until more of it comes.)

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use bytes::{Buf, Bytes};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::Instant;
use tower::ServiceExt;

use super::TimedStream;

/// What every HTTP connection shares.
pub(super) struct Http {
    /// The routes, as the event streams answered by the listener have them too.
    pub router: Router,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    /// `true` once the server is shutting down. Each connection holds a receiver, which is
    /// also how the server waits for them all to finish.
    stop: watch::Sender<bool>,
}

impl Http {
    pub(super) fn new(
        router: Router,
        header_read_timeout: Duration,
        idle_timeout: Duration,
    ) -> Self {
        LazyLock::force(&EPOCH);
        Self {
            router,
            header_read_timeout,
            idle_timeout,
            stop: watch::Sender::new(false),
        }
    }

    pub(super) fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Asks every connection to finish its request in flight and close; resolves once they
    /// all have.
    pub(super) async fn shut_down(&self) {
        self.stop.send_replace(true);
        self.stop.closed().await;
    }
}

/// Serves an HTTP connection whose first bytes, `read`, were already read from `io`.
pub(super) async fn serve(io: TimedStream, read: Vec<u8>, peer: SocketAddr, http: Arc<Http>) {
    let first_byte = Arc::new(AtomicU64::new(NONE));
    let io = HttpIo {
        io,
        replay: (!read.is_empty()).then(|| Box::new(Bytes::from(read))),
        first_byte: first_byte.clone(),
    };
    let router = http.router.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        router.clone().oneshot(request)
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(HeadTimer {
            first_byte,
            idle: http.idle_timeout,
            header: http.header_read_timeout,
        })
        // The timer only runs with a timeout set; `HeadTimer` decides the deadlines itself.
        .header_read_timeout(http.header_read_timeout);
    let mut conn = pin!(
        builder
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades()
    );
    let mut stop = http.stop.subscribe();
    drop(http);
    tokio::select! {
        served = conn.as_mut() => return log(served),
        _ = stop.wait_for(|stop| *stop) => conn.as_mut().graceful_shutdown(),
    }
    log(conn.await);
}

fn log(served: hyper::Result<()>) {
    if let Err(e) = served {
        tracing::trace!(error = %e, "HTTP connection ended");
    }
}

/// No byte read since the timer was armed.
const NONE: u64 = 0;

/// The instant `first_byte`s count from.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn since_epoch(at: Instant) -> u64 {
    (at.saturating_duration_since(*EPOCH).as_nanos() as u64).max(1)
}

/// The connection's socket, as hyper sees it: replays the bytes read before hyper took over,
/// and notes when the first byte comes after `HeadTimer` was armed.
struct HttpIo {
    io: TimedStream,
    /// Boxed: a WebSocket keeps its `HttpIo` for its whole life, long after the replay.
    replay: Option<Box<Bytes>>,
    first_byte: Arc<AtomicU64>,
}

impl HttpIo {
    fn note_read(&self) {
        if self.first_byte.load(Ordering::Relaxed) == NONE {
            self.first_byte
                .store(since_epoch(Instant::now()), Ordering::Relaxed);
        }
    }
}

impl AsyncRead for HttpIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(replay) = &mut self.replay {
            let n = replay.len().min(buf.remaining());
            buf.put_slice(&replay[..n]);
            replay.advance(n);
            if replay.is_empty() {
                self.replay = None;
            }
            self.note_read();
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.io).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            self.note_read();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for HttpIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// hyper's timer for one connection. hyper arms it (`sleep_until`) each time it starts
/// waiting for a request head; the deadline is `idle` from then while no byte has come, and
/// `header` from the first byte once one has.
struct HeadTimer {
    first_byte: Arc<AtomicU64>,
    idle: Duration,
    header: Duration,
}

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        TokioTimer::new().sleep(duration)
    }

    fn sleep_until(&self, _deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.first_byte.store(NONE, Ordering::Relaxed);
        Box::pin(HeadDeadline {
            sleep: tokio::time::sleep(self.idle),
            first_byte: self.first_byte.clone(),
            header: self.header,
            reading: false,
        })
    }
}

pin_project_lite::pin_project! {
    /// The deadline of one request head: idle until its first byte, then reading it.
    struct HeadDeadline {
        #[pin]
        sleep: tokio::time::Sleep,
        first_byte: Arc<AtomicU64>,
        header: Duration,
        reading: bool,
    }
}

impl Future for HeadDeadline {
    type Output = ();

    /// hyper polls it whenever the head it waits for is still incomplete, so after every read:
    /// the first byte moves the deadline as soon as it comes.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        if !*this.reading {
            let at = this.first_byte.load(Ordering::Relaxed);
            if at != NONE {
                *this.reading = true;
                let deadline = *EPOCH + Duration::from_nanos(at) + *this.header;
                this.sleep.as_mut().reset(deadline);
            }
        }
        ready!(this.sleep.poll(cx));
        let timeout = if *this.reading { "header_read" } else { "idle" };
        metrics::counter!("herald_http_timeouts_total", "timeout" => timeout).increment(1);
        Poll::Ready(())
    }
}

impl hyper::rt::Sleep for HeadDeadline {}
