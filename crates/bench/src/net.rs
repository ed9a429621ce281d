//! Opening connections: TCP from a chosen loopback source address, then WebSocket or HTTP/1.1.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::stats::{ERRORS, inc};

/// Connections per source address when the count is chosen automatically: Herald's default
/// `max_connections_per_ip` (the ephemeral port range alone would allow about 28 000 per
/// address).
pub(crate) const CONNECTIONS_PER_SOURCE: usize = 1_000;

pub(crate) type Ws = WebSocketStream<TcpStream>;
pub(crate) type Http = SendRequest<Full<Bytes>>;

pub(crate) struct Net {
    pub target: SocketAddr,
    /// `host:port` as given, for URLs and the Host header.
    pub authority: String,
    sources: Vec<Ipv4Addr>,
    next: AtomicUsize,
}

impl Net {
    /// Resolves `target`; `source_addrs` is the flag (None = automatic for `planned` connections).
    pub(crate) async fn new(
        target: &str,
        source_addrs: Option<usize>,
        planned: usize,
    ) -> anyhow::Result<Self> {
        let addr = tokio::net::lookup_host(target)
            .await
            .with_context(|| format!("cannot resolve {target}"))?
            .next()
            .with_context(|| format!("{target} resolves to no address"))?;
        let loopback_v4 = matches!(addr.ip(), IpAddr::V4(ip) if ip.is_loopback());
        let n = match source_addrs {
            Some(n) => {
                if n > 0 && !loopback_v4 {
                    bail!("--source-addrs needs an IPv4 loopback target (127.x.x.x), not {addr}");
                }
                n
            }
            None if loopback_v4 && planned > CONNECTIONS_PER_SOURCE => {
                planned.div_ceil(CONNECTIONS_PER_SOURCE)
            }
            None => 0,
        };
        if n > 254 {
            bail!("--source-addrs is at most 254");
        }
        Ok(Self {
            target: addr,
            authority: target.to_owned(),
            sources: (1..=n as u8).map(|i| Ipv4Addr::new(127, 0, 0, i)).collect(),
            next: AtomicUsize::new(0),
        })
    }

    pub(crate) fn source_count(&self) -> usize {
        self.sources.len()
    }

    /// A TCP connection to the target, bound to the next source address (round-robin).
    pub(crate) async fn tcp(&self) -> std::io::Result<TcpStream> {
        let socket = if self.target.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if !self.sources.is_empty() {
            let src = self.sources[self.next.fetch_add(1, Ordering::Relaxed) % self.sources.len()];
            // Choose the port at connect() time, per destination, instead of at bind() time.
            let one: libc::c_int = 1;
            // SAFETY: a valid socket and a c_int option of the right size.
            unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
            socket.bind(SocketAddr::new(IpAddr::V4(src), 0))?;
        }
        let stream = socket.connect(self.target).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// A WebSocket client connection to `path`, with a read buffer of `read_buffer` bytes.
    pub(crate) async fn ws(&self, path: &str, read_buffer: usize) -> anyhow::Result<Ws> {
        let stream = self.tcp().await?;
        let url = format!("ws://{}{}", self.authority, path);
        // The read buffer is allocated eagerly (128 KiB by default): size it for the load. The
        // write buffer grows on demand; frames fed in a batch go out with one flush.
        let config = WebSocketConfig::default().read_buffer_size(read_buffer);
        let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
            .await
            .with_context(|| format!("WebSocket handshake with {}{}", self.authority, path))?;
        Ok(ws)
    }

    /// An HTTP/1.1 keep-alive connection; its driver runs on a task of its own.
    pub(crate) async fn http(&self) -> anyhow::Result<Http> {
        let stream = self.tcp().await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }
}

/// Runs `open` up to three times, backing off between attempts (a server may refuse a burst of
/// handshakes with 429 or 503); counts retries and final failures.
pub(crate) async fn with_retries<T, F, Fut>(mut open: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    const ATTEMPTS: u32 = 3;
    for attempt in 1..=ATTEMPTS {
        match tokio::time::timeout(Duration::from_secs(15), open()).await {
            Ok(Ok(v)) => return Some(v),
            Ok(Err(e)) if attempt == ATTEMPTS => last_error(format!("{e:#}")),
            Err(_) if attempt == ATTEMPTS => last_error("timed out after 15 s".into()),
            _ => {}
        }
        if attempt < ATTEMPTS {
            inc(&ERRORS.connect_retries);
            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
        }
    }
    inc(&ERRORS.connect);
    None
}

static LAST_ERROR: parking_lot::Mutex<Option<String>> = parking_lot::Mutex::new(None);

fn last_error(e: String) {
    *LAST_ERROR.lock() = Some(e);
}

/// The last connection error, for the report.
pub(crate) fn last_connect_error() -> Option<String> {
    LAST_ERROR.lock().clone()
}
