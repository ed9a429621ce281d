//! The WebSocket itself: the opening handshake, and a server socket driven from its
//! connection's task.
//!
//! tungstenite's protocol state machine does the reading — frame parsing, unmasking, UTF-8 and
//! size checks, control frames, the closing handshake — over an adapter that turns the
//! socket's `Pending` into `WouldBlock` for the one task that drives it. Data frames are
//! framed here from Herald's shared payloads, one buffer per batch, freed once written.
//! tokio-tungstenite's stream (as axum wraps it) kept two waker `Arc`s and a write buffer the
//! size of the largest batch for as long as a connection was open: this costs an idle
//! connection ~170 bytes less (2.32 → 2.15 KB, `herald bench --scenario idle`), a busy one up
//! to the 16 KiB write buffer less, and frames are no longer checked for UTF-8 once per
//! recipient (docs/performance.md).

use std::future::{Future, poll_fn};
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use herald_core::protocol::code;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
pub(crate) use tungstenite::{Error, Message};

use crate::http::error::AppError;

/// A validated opening handshake (RFC 6455 §4.2.1), ready to be answered with 101.
pub struct Handshake {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
}

impl<S: Send + Sync> FromRequestParts<S> for Handshake {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, AppError> {
        let bad = |what: &str| AppError::bad_request(format!("not a WebSocket handshake: {what}"));
        if !has_token(&parts.headers, header::CONNECTION, "upgrade") {
            return Err(bad("the Connection header must include \"upgrade\""));
        }
        if !has_token(&parts.headers, header::UPGRADE, "websocket") {
            return Err(bad("the Upgrade header must be \"websocket\""));
        }
        if parts
            .headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_none_or(|v| v.as_bytes() != b"13")
        {
            return Err(bad("Sec-WebSocket-Version must be 13"));
        }
        let key = parts
            .headers
            .get(header::SEC_WEBSOCKET_KEY)
            .ok_or_else(|| bad("Sec-WebSocket-Key is missing"))?
            .clone();
        let on_upgrade = parts.extensions.remove::<OnUpgrade>().ok_or_else(|| {
            AppError::new(
                StatusCode::UPGRADE_REQUIRED,
                code::VALIDATION_ERROR,
                "this connection cannot be upgraded to a WebSocket",
            )
        })?;
        Ok(Self { key, on_upgrade })
    }
}

/// True when the comma-separated header has this token (case-insensitive).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

impl Handshake {
    /// Answers 101 and runs `serve` with the socket, in a task of its own, once the client has
    /// the answer. A failed upgrade drops `serve` unrun.
    pub fn accept<F, Fut>(self, config: WebSocketConfig, serve: F) -> Response
    where
        F: FnOnce(Box<Socket>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let accept = tungstenite::handshake::derive_accept_key(self.key.as_bytes());
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            match on_upgrade.await {
                // Its own task: this one keeps room for the upgrade's state beside `serve`.
                Ok(upgraded) => drop(tokio::spawn(serve(Socket::new(upgraded, config)))),
                Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
            }
        });
        let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
        let h = response.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(accept) = HeaderValue::from_str(&accept) {
            h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        response
    }
}

/// An open server WebSocket. Driven by one task: reading and writing take turns.
pub struct Socket {
    io: TokioIo<Upgraded>,
    protocol: WebSocketContext,
}

/// Data frame opcodes (RFC 6455 §5.2).
pub(crate) const TEXT: u8 = 0x1;
pub(crate) const BINARY: u8 = 0x2;
pub(super) const PING: u8 = 0x9;

impl Socket {
    fn new(upgraded: Upgraded, config: WebSocketConfig) -> Box<Self> {
        Box::new(Self {
            io: TokioIo::new(upgraded),
            protocol: WebSocketContext::new(Role::Server, Some(config)),
        })
    }

    /// The next message from the client; `None` once the connection has ended (including after
    /// a completed closing handshake). Pings are answered by the protocol itself.
    pub fn recv(&mut self) -> impl Future<Output = Option<Result<Message, Error>>> + '_ {
        poll_fn(|cx| {
            self.poll_protocol(cx, |p, io| p.read(io))
                .map(|read| match read {
                    Ok(message) => Some(Ok(message)),
                    Err(Error::ConnectionClosed | Error::AlreadyClosed) => None,
                    Err(e) => Some(Err(e)),
                })
        })
    }

    /// Writes frames built with `frame`, after anything the protocol queued (a pong, a close
    /// reply) so that frames never interleave, and flushes. `written` counts the bytes of
    /// `frames` already sent, so that a send given up half-way (the caller's timeout or
    /// select) can be finished before anything else is written: a frame cut short would
    /// corrupt the stream.
    pub async fn send(&mut self, frames: &[u8], written: &mut usize) -> Result<(), Error> {
        self.flush().await?;
        while *written < frames.len() {
            match self.io.write(&frames[*written..]).await? {
                0 => return Err(Error::Io(io::ErrorKind::WriteZero.into())),
                n => *written += n,
            }
        }
        self.io.flush().await?;
        Ok(())
    }

    /// Sends what the protocol has queued (the reply to a client's close, a pong).
    pub async fn flush(&mut self) -> Result<(), Error> {
        poll_fn(|cx| self.poll_protocol(cx, |p, io| p.flush(io))).await
    }

    /// Starts the closing handshake with this code and reason.
    pub async fn close(&mut self, code: u16, reason: &'static str) -> Result<(), Error> {
        let mut frame = Some(CloseFrame {
            code: code.into(),
            reason: reason.into(),
        });
        poll_fn(|cx| {
            self.poll_protocol(cx, |p, io| match frame.take() {
                // Queued even when the write would block; then flushed on the next poll.
                Some(frame) => p.close(io, Some(frame)),
                None => p.flush(io),
            })
        })
        .await
    }

    fn poll_protocol<T>(
        &mut self,
        cx: &mut Context<'_>,
        op: impl FnOnce(&mut WebSocketContext, &mut WouldBlock<'_, '_>) -> Result<T, Error>,
    ) -> Poll<Result<T, Error>> {
        let mut io = WouldBlock {
            io: &mut self.io,
            cx,
        };
        match op(&mut self.protocol, &mut io) {
            Err(Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
            done => Poll::Ready(done),
        }
    }
}

/// Appends one unfragmented, unmasked frame (a server's frames are never masked).
pub(crate) fn frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        out.push(126);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
}

/// The async socket as the blocking-style `Read + Write` tungstenite drives, for one poll:
/// `Pending` becomes `WouldBlock`, and the task's waker is registered for whichever side
/// blocked.
struct WouldBlock<'a, 'b> {
    io: &'a mut TokioIo<Upgraded>,
    cx: &'a mut Context<'b>,
}

fn would_block<T>(polled: Poll<io::Result<T>>) -> io::Result<T> {
    match polled {
        Poll::Ready(result) => result,
        Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
    }
}

impl Read for WouldBlock<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut buf = ReadBuf::new(buf);
        would_block(Pin::new(&mut *self.io).poll_read(self.cx, &mut buf))?;
        Ok(buf.filled().len())
    }
}

impl Write for WouldBlock<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        would_block(Pin::new(&mut *self.io).poll_write(self.cx, buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        would_block(Pin::new(&mut *self.io).poll_flush(self.cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_the_length_in_the_smallest_form() {
        for (len, header) in [
            (0, vec![0x81, 0]),
            (125, vec![0x81, 125]),
            (126, vec![0x81, 126, 0, 126]),
            (65_535, vec![0x81, 126, 0xff, 0xff]),
            (65_536, vec![0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
        ] {
            let mut out = Vec::new();
            frame(&mut out, TEXT, &vec![b'x'; len]);
            assert_eq!(out[..header.len()], header[..], "length {len}");
            assert_eq!(out.len(), header.len() + len);
        }
    }
}
