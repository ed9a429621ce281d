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
use tokio::net::TcpListener;
use tokio::sync::mpsc;

pub use timed::TimedStream;

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
