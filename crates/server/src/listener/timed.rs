//! The write timeout on every accepted socket.
//!
//! The write timeout is what frees a client that stopped reading. hyper stops polling a
//! response body once the socket's send buffer and its own write buffer are full, so an SSE
//! stream (or any response) to such a client never learns that its connection is useless, and
//! the connection — with its hub registration — would live until the client read again. A
//! write that makes no progress for `write_timeout` fails instead; hyper then drops the
//! connection, and with it the response body and its `Registration`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::sockets::Slot;

/// A TCP stream whose writes fail with `TimedOut` after the write timeout without progress:
/// the timer runs from the first write the socket could not take until one succeeds. It also
/// holds the socket's `Slot` in the listener's counts, given back when it is dropped; the write
/// timeout is the one all sockets share (`Sockets`), and the one log line asks the socket for
/// the peer's address (a copy would cost 32 bytes per open connection).
pub struct TimedStream {
    tcp: TcpStream,
    slot: Slot,
    /// Created at the first stall and reused, so a busy but healthy connection that often
    /// fills its send buffer does not allocate a timer each time.
    stall: Option<Pin<Box<Sleep>>>,
    /// Whether `stall` is running (a write is waiting for room in the socket).
    stalled: bool,
}

impl TimedStream {
    pub fn new(tcp: TcpStream, slot: Slot) -> Self {
        Self {
            tcp,
            slot,
            stall: None,
            stalled: false,
        }
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Passes on a write's outcome; while it is pending, arms the stall timer or fails the
    /// write once the timer has run out.
    fn check<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.stalled = false;
            return polled;
        }
        let timeout = self.slot.write_timeout();
        let deadline = Instant::now() + timeout;
        let timer = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.stalled {
            timer.as_mut().reset(deadline);
            self.stalled = true;
        }
        ready!(timer.as_mut().poll(cx));
        self.stalled = false;
        tracing::info!(peer = ?self.tcp.peer_addr().ok(), ?timeout, "closing a connection whose client stopped reading");
        metrics::counter!("herald_slow_consumers_total").increment(1);
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "write timed out: the client stopped reading",
        )))
    }
}

impl AsyncRead for TimedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for TimedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.tcp).poll_write(cx, buf);
        self.check(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs);
        self.check(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    /// A no-op for TCP: it says nothing about progress, so it leaves the stall timer alone.
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listener::sockets::Sockets;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpSocket};

    /// Socket buffers for the test's connections, set explicitly: with the kernel's autotuning
    /// (receive buffers up to 32 MB on some hosts) a slow reader may not open its window again
    /// for longer than any timeout worth testing, and the stalls would measure the host.
    const BUFFER: u32 = 64 * 1024;

    async fn listen() -> TcpListener {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_send_buffer_size(BUFFER).unwrap(); // inherited by accepted sockets
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        socket.listen(16).unwrap()
    }

    async fn connect(listener: &TcpListener) -> TcpStream {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(BUFFER).unwrap();
        socket
            .connect(listener.local_addr().unwrap())
            .await
            .unwrap()
    }

    async fn accept(listener: &TcpListener, timeout: Duration) -> TimedStream {
        let (tcp, peer) = listener.accept().await.unwrap();
        let slot = Sockets::new(16, 0, timeout).admit(peer.ip()).unwrap();
        TimedStream::new(tcp, slot)
    }

    #[tokio::test]
    async fn a_write_the_peer_never_reads_times_out_and_a_reading_peer_is_unaffected() {
        let listener = listen().await;
        let timeout = Duration::from_millis(500);

        // A peer that never reads: the writes fill both socket buffers, then stall.
        let _silent = connect(&listener).await;
        let mut io = accept(&listener, timeout).await;
        let chunk = vec![0u8; 16 * 1024];
        let failed = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Err(e) = io.write_all(&chunk).await {
                    return e;
                }
            }
        })
        .await
        .expect("the stalled write failed");
        assert_eq!(failed.kind(), io::ErrorKind::TimedOut);

        // A peer that reads slowly — a pause after each read, the pauses adding up to several
        // times the timeout — gets everything: only a write that makes no progress fails.
        let mut reader = connect(&listener).await;
        let mut io = accept(&listener, timeout).await;
        let total = 4 << 20;
        let writing = tokio::spawn(async move {
            for _ in 0..total / chunk.len() {
                io.write_all(&chunk).await?;
            }
            io::Result::Ok(())
        });
        let mut got = 0;
        let mut buf = vec![0u8; 16 * 1024];
        while got < total {
            let read = reader.read(&mut buf).await.unwrap();
            if read == 0 {
                break; // the writer gave up: its error says why
            }
            got += read;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        writing
            .await
            .unwrap()
            .expect("a slow but reading peer's writes succeed");
        assert_eq!(got, total);
    }
}
