//! The TCP listener Herald serves on. Every accepted socket takes a place in the bounds on
//! open sockets (`sockets`; beyond them it is answered 503 or 429 and closed), and gets
//! TCP_NODELAY and a write timeout (`timed`). Its first request head is then read within the
//! header-read timeout: a request for an event stream is answered on the socket itself
//! (`event_stream`), and every other connection goes to hyper (`http`), which closes it when
//! it idles between requests or sends its next head too slowly.

mod event_stream;
mod http;
mod sockets;
mod timed;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::{TcpListener, TcpSocket};
use tokio::time::Instant;

use crate::config::Config;
use event_stream::Head;
use http::Http;
use sockets::Sockets;
pub use timed::TimedStream;

/// Connections the kernel completes and holds for `accept` (capped by `net.core.somaxconn`).
/// Clients reconnect in storms (every client of a restarted node at once); with the 128 that
/// `TcpListener::bind` asks for, the SYNs beyond it were dropped and those clients waited a
/// second or more for their retransmission.
const BACKLOG: u32 = 4096;

/// File descriptors kept for everything but client sockets (the store's files, Redis and
/// PostgreSQL connections, the runtime's own, refused sockets lingering): `max_sockets` is
/// at most the open-file limit less this, so that the process never runs out.
const FD_RESERVE: usize = 256;

/// Binds the listening socket as `TcpListener::bind` does (`SO_REUSEADDR`), with `BACKLOG`.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

pub struct Listener {
    tcp: TcpListener,
    sockets: Arc<Sockets>,
    http: Arc<Http>,
}

impl Listener {
    /// `router` serves every request, hyper's and the event streams answered here alike.
    pub fn new(tcp: TcpListener, router: Router, config: &Config) -> Self {
        let secs = |s: u64| Duration::from_secs(s.max(1));
        Self {
            tcp,
            sockets: Sockets::new(
                max_sockets(config),
                config.max_connections_per_ip,
                secs(config.write_timeout_secs),
            ),
            http: Arc::new(Http::new(
                router,
                secs(config.header_read_timeout_secs),
                secs(config.http_idle_timeout_secs),
            )),
        }
    }

    /// Accepts connections until `shutdown` resolves; then stops listening, lets each HTTP
    /// connection finish the request it is serving, and returns once they have all closed.
    /// (Event streams and WebSockets are the caller's to end: `shutdown` may do it.)
    pub async fn serve(mut self, shutdown: impl Future<Output = ()>) {
        let mut shutdown = pin!(shutdown);
        loop {
            let (tcp, peer) = tokio::select! {
                // `shutdown` first, and so before the first connection: it may set up what
                // tells it to resolve (signal handlers), which must be in place by then.
                biased;
                () = &mut shutdown => break,
                accepted = axum::serve::Listener::accept(&mut self.tcp) => accepted,
            };
            let slot = match self.sockets.admit(peer.ip()) {
                Ok(slot) => slot,
                Err(refusal) => {
                    self.sockets.refuse(tcp, refusal);
                    continue;
                }
            };
            // Small frames must leave at once: without TCP_NODELAY, Nagle's algorithm holds a
            // write back until the previous one is acknowledged.
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "could not set TCP_NODELAY");
            }
            let io = TimedStream::new(tcp, slot);
            // A task of its own: a client slow to send its request holds up nobody.
            tokio::spawn(triage(io, peer, self.http.clone()));
        }
        drop(self.tcp);
        self.http.shut_down().await;
    }
}

async fn triage(mut io: TimedStream, peer: SocketAddr, http: Arc<Http>) {
    let deadline = Instant::now() + http.header_read_timeout;
    match event_stream::read_head(&mut io, deadline).await {
        // A task of its own, sized for serving alone: a task keeps room for its largest state
        // for as long as it lives, and triage's is several times a stream's.
        Head::Stream(request) => drop(tokio::spawn(event_stream::serve(
            io,
            peer,
            request,
            http.router.clone(),
        ))),
        // Once the server is shutting down, the connection just closes.
        Head::Hyper(read) if !http.stopping() => {
            drop(tokio::spawn(http::serve(io, read, peer, http)))
        }
        Head::Hyper(_) | Head::Close => {}
    }
}

/// `max_sockets`, or `max_connections` and half again (at least 1 000 more: plain HTTP requests
/// beside every WebSocket and SSE connection allowed), within the process's open-file limit
/// (first raised to its hard limit) less `FD_RESERVE`.
fn max_sockets(config: &Config) -> usize {
    let max_connections = config.max_connections;
    let wanted = config
        .max_sockets
        .unwrap_or(max_connections.saturating_add((max_connections / 2).max(1_000)))
        .max(1);
    let Some(open_files) = raise_open_file_limit() else {
        return wanted;
    };
    let room = open_files.saturating_sub(FD_RESERVE).max(1);
    if wanted > room {
        tracing::warn!(
            max_sockets = wanted,
            open_files,
            "max_sockets is above what the open-file limit allows: {room} sockets at most \
             (raise the limit: `ulimit -n`, LimitNOFILE= in systemd)"
        );
    }
    wanted.min(room)
}

/// Raises the soft limit on open files to the hard limit (as Go's runtime does: the soft
/// limit is often 1 024 for the sake of `select`, which Herald does not use); returns the soft
/// limit in force, if it can be read.
fn raise_open_file_limit() -> Option<usize> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    let soft = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    };
    Some(usize::try_from(soft).unwrap_or(usize::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::net::TcpStream;

    /// However many sockets are asked for, the open-file limit keeps room for the rest.
    #[test]
    fn max_sockets_stays_below_the_open_file_limit() {
        let config = Config {
            max_sockets: Some(usize::MAX),
            ..Config::default()
        };
        let limit = raise_open_file_limit().unwrap();
        assert_eq!(max_sockets(&config), limit - FD_RESERVE);
        let config = Config {
            max_connections: 100,
            ..Config::default()
        };
        assert_eq!(max_sockets(&config), 1_100.min(limit - FD_RESERVE));
    }

    /// Connections are completed by the kernel while nobody accepts, up to the backlog: a
    /// storm of 600 all connect (with `TcpListener::bind`'s 128, 129 did). The kernel caps
    /// the backlog at `net.core.somaxconn` (4096 since Linux 5.4), and so does the storm.
    #[tokio::test]
    async fn a_storm_of_connections_waits_in_the_backlog() {
        let somaxconn = std::fs::read_to_string("/proc/sys/net/core/somaxconn").unwrap();
        let storm = somaxconn.trim().parse::<usize>().unwrap().min(600);
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let connects: Vec<_> = (0..storm)
            .map(|_| {
                tokio::spawn(async move {
                    tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(addr)).await
                })
            })
            .collect();
        let mut connected = Vec::new();
        for c in connects {
            if let Ok(Ok(stream)) = c.await.unwrap() {
                connected.push(stream);
            }
        }
        assert_eq!(connected.len(), storm);
        drop(listener);
    }
}
