//! The TCP listener Herald serves on. Every accepted socket gets TCP_NODELAY and a write
//! timeout (`timed`); a request for an event stream is then answered on the socket itself
//! (`event_stream`), and every other connection goes to hyper through `axum::serve`.

mod event_stream;
mod timed;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::serve::{ListenerExt, TapIo};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::mpsc;

pub use timed::TimedStream;

/// Connections the kernel completes and holds for `accept` (capped by `net.core.somaxconn`).
/// Clients reconnect in storms (every client of a restarted node at once); with the 128 that
/// `TcpListener::bind` asks for, the SYNs beyond it were dropped and those clients waited a
/// second or more for their retransmission.
const BACKLOG: u32 = 4096;

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
    write_timeout: Duration,
    /// Serves the event streams answered here, exactly as hyper's connections are served.
    router: Router,
    to_hyper: mpsc::UnboundedSender<(TimedStream, SocketAddr)>,
    for_hyper: mpsc::UnboundedReceiver<(TimedStream, SocketAddr)>,
}

impl Listener {
    /// The listener comes wrapped in a no-op `TapIo`: axum provides `ConnectInfo<SocketAddr>`
    /// only for its own `TcpListener` and for tapped listeners.
    pub fn new(
        tcp: TcpListener,
        write_timeout: Duration,
        router: Router,
    ) -> TapIo<Self, fn(&mut TimedStream)> {
        let (to_hyper, for_hyper) = mpsc::unbounded_channel();
        let listener = Self {
            tcp,
            write_timeout,
            router,
            to_hyper,
            for_hyper,
        };
        listener.tap_io(|_| {})
    }
}

impl axum::serve::Listener for Listener {
    type Io = TimedStream;
    type Addr = SocketAddr;

    /// Accepts connections and looks at each one's first request in a task of its own (a
    /// client that is slow to send it holds up nobody); returns the next one that is for hyper.
    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                (tcp, peer) = axum::serve::Listener::accept(&mut self.tcp) => {
                    // Small frames must leave at once: without TCP_NODELAY, Nagle's algorithm
                    // holds a write back until the previous one is acknowledged.
                    if let Err(e) = tcp.set_nodelay(true) {
                        tracing::debug!(error = %e, "could not set TCP_NODELAY");
                    }
                    let io = TimedStream::new(tcp, self.write_timeout);
                    tokio::spawn(triage(io, peer, self.router.clone(), self.to_hyper.clone()));
                }
                Some(for_hyper) = self.for_hyper.recv() => return for_hyper,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

async fn triage(
    io: TimedStream,
    peer: SocketAddr,
    router: Router,
    to_hyper: mpsc::UnboundedSender<(TimedStream, SocketAddr)>,
) {
    match event_stream::peek_request(&io).await {
        // A task of its own, sized for serving alone: a task keeps room for its largest state
        // for as long as it lives, and triage's is several times a stream's.
        Some(request) => drop(tokio::spawn(event_stream::serve(io, peer, request, router))),
        // The server is shutting down when hyper's side is gone: the connection just closes.
        None => drop(to_hyper.send((io, peer))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::net::TcpStream;

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
