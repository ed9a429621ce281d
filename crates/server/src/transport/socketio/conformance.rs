//! The namespaces of the official Socket.IO protocol suite (conformance mode): `/` and
//! `/custom` emit `auth` with the handshake's payload on connection, answer `message` with
//! `message-back` and acknowledge `message-with-ack` with its arguments, binary attachments
//! included.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use herald_core::Outgoing;
use serde_json::{Value, json};

use super::engine::Session;
use super::packet::{BadPacket, Kind, decode, encode};

/// A binary packet waiting for its attachments.
struct Partial {
    kind: Kind,
    namespace: String,
    id: Option<u64>,
    data: Value,
    expected: usize,
    attachments: Vec<Bytes>,
}

/// The Socket.IO state of one Engine.IO session: its connected namespaces, by socket id.
#[derive(Default)]
pub struct Namespaces {
    namespaces: HashMap<String, String>,
    pub connected_once: bool,
    partial: Option<Partial>,
}

/// How long after the CONNECT reply the conformance namespaces emit `auth`.
const AUTH_DELAY: Duration = Duration::from_millis(20);

/// The namespaces of the conformance suite.
const CONFORMANCE_NAMESPACES: [&str; 2] = ["/", "/custom"];

impl Namespaces {
    pub fn on_packet(&mut self, session: &Session, text: &str) -> Result<(), BadPacket> {
        if self.partial.is_some() {
            return Err(BadPacket("a text packet while attachments were expected"));
        }
        let p = decode(text)?;
        let data = p.data.unwrap_or(Value::Null);
        if p.attachments > 0 {
            self.partial = Some(Partial {
                kind: p.kind,
                namespace: p.namespace.to_owned(),
                id: p.id,
                data,
                expected: p.attachments,
                attachments: Vec::with_capacity(p.attachments),
            });
            return Ok(());
        }
        self.on_complete(session, p.kind, p.namespace, p.id, data, Vec::new())
    }

    pub fn on_attachment(&mut self, session: &Session, bytes: Bytes) -> Result<(), BadPacket> {
        let partial = self
            .partial
            .as_mut()
            .ok_or(BadPacket("binary data without a packet"))?;
        partial.attachments.push(bytes);
        if partial.attachments.len() < partial.expected {
            return Ok(());
        }
        let Some(p) = self.partial.take() else {
            return Ok(());
        };
        self.on_complete(session, p.kind, &p.namespace, p.id, p.data, p.attachments)
    }

    fn on_complete(
        &mut self,
        session: &Session,
        kind: Kind,
        namespace: &str,
        id: Option<u64>,
        data: Value,
        attachments: Vec<Bytes>,
    ) -> Result<(), BadPacket> {
        match kind {
            Kind::Connect => {
                if !CONFORMANCE_NAMESPACES.contains(&namespace) {
                    let error = json!({"message": "Invalid namespace"}).to_string();
                    session.send_text(encode(Kind::ConnectError, namespace, None, 0, Some(&error)));
                    return Ok(());
                }
                let sid = uuid::Uuid::new_v4().simple().to_string();
                let reply = json!({ "sid": sid }).to_string();
                session.send_text(encode(Kind::Connect, namespace, None, 0, Some(&reply)));
                let auth = match data {
                    Value::Null => json!({}),
                    auth => auth,
                };
                let event = json!(["auth", auth]).to_string();
                let auth = encode(Kind::Event, namespace, None, 0, Some(&event));
                // A moment later, in a write of its own: the suite's client starts listening
                // for `auth` only once it has handled the CONNECT reply, and misses a second
                // packet delivered with the first.
                let conn = session.conn.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(AUTH_DELAY).await;
                    conn.send(Outgoing::Raw {
                        payload: Bytes::from(auth),
                        text: true,
                    });
                });
                self.namespaces.insert(namespace.to_owned(), sid);
                self.connected_once = true;
            }
            Kind::Disconnect => {
                self.namespaces.remove(namespace);
            }
            Kind::Event | Kind::BinaryEvent if self.namespaces.contains_key(namespace) => {
                let Value::Array(mut args) = data else {
                    return Err(BadPacket("event payload must be an array"));
                };
                let name = args.remove(0);
                let binary = !attachments.is_empty();
                let n = attachments.len();
                let reply = match (name.as_str(), id) {
                    (Some("message"), _) => {
                        args.insert(0, json!("message-back"));
                        let kind = if binary {
                            Kind::BinaryEvent
                        } else {
                            Kind::Event
                        };
                        encode(
                            kind,
                            namespace,
                            None,
                            n,
                            Some(&Value::Array(args).to_string()),
                        )
                    }
                    (Some("message-with-ack"), Some(id)) => {
                        let kind = if binary { Kind::BinaryAck } else { Kind::Ack };
                        encode(
                            kind,
                            namespace,
                            Some(id),
                            n,
                            Some(&Value::Array(args).to_string()),
                        )
                    }
                    _ => return Ok(()),
                };
                session.send_text(reply);
                for a in attachments {
                    session.send_binary(a);
                }
            }
            Kind::Event | Kind::BinaryEvent | Kind::Ack | Kind::BinaryAck => {}
            Kind::ConnectError => return Err(BadPacket("CONNECT_ERROR is sent by servers only")),
        }
        Ok(())
    }
}
