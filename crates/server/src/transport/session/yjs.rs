//! The y-websocket protocol on a connection opened at `/yjs/{name}`: sync step 1 is answered
//! with step 2; updates (step 2 or update) are published as `yjs.update` events, applied and
//! relayed by every node as they are committed (`app::yjs`); awareness (bounded, at most
//! `CURSOR_RATE` a second) is relayed to the document's other clients on every node.

use herald_core::{Identity, Outgoing, StoreError};
use yrs::encoding::read::{Cursor, Read};
use yrs::sync::protocol::MSG_AWARENESS;
use yrs::sync::{Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;

use super::{Flow, Session};
use crate::app::yjs::{self, MAX_AWARENESS_STATES, ROOM_PREFIX, is_update, update_data};
use crate::http::error::AppError;

impl Session {
    /// Opens Yjs document `name` as `identity`: queues the server's sync step 1 and the other
    /// clients' awareness.
    pub async fn yjs_open(
        &mut self,
        name: String,
        identity: Option<Identity>,
    ) -> Result<(), StoreError> {
        if let Some(identity) = identity {
            // Its token was verified; the hub only refuses a second authentication.
            let _ = self.app.hub.authenticate(&self.conn, identity);
        }
        self.app
            .yjs
            .join(&*self.app.store, &self.conn, &name)
            .await?;
        self.yjs = Some(name);
        Ok(())
    }

    /// One binary y-websocket frame.
    pub fn handle_yjs(&mut self, frame: &[u8]) -> Flow {
        let Some(name) = self.yjs.clone() else {
            return Flow::Continue;
        };
        if let Some(claimed) = claimed_awareness_states(frame) {
            // Checked before decoding: the decoder reserves room for as many as are claimed.
            let allowed = self.limits().cursor.check().is_ok();
            if let Err(flow) = self.yjs_allowed(allowed, "awareness") {
                return flow;
            }
            if claimed > MAX_AWARENESS_STATES {
                self.yjs_refuse(format!(
                    "an awareness update holds at most {MAX_AWARENESS_STATES} states"
                ));
                return Flow::Continue;
            }
        }
        let message = match Message::decode_v1(frame) {
            Ok(m) => m,
            Err(e) => {
                self.yjs_refuse(format!("not a y-websocket message: {e}"));
                return Flow::Continue;
            }
        };
        match message {
            Message::Sync(SyncMessage::SyncStep1(sv)) => {
                if let Some(step2) = self.app.yjs.sync_step_2(&name, &sv) {
                    self.conn.send(step2);
                }
            }
            Message::Sync(SyncMessage::SyncStep2(update) | SyncMessage::Update(update)) => {
                match is_update(&update) {
                    Ok(false) => {}
                    Ok(true) => {
                        let allowed = self.limits().publish.check().is_ok();
                        if let Err(flow) = self.yjs_allowed(allowed, "update") {
                            return flow;
                        }
                        self.yjs_publish(&name, &update);
                    }
                    Err(e) => self.yjs_refuse(e),
                }
            }
            Message::Awareness(update) => {
                if let Err(e) = self.app.yjs.awareness(self.conn.id, &name, update) {
                    self.yjs_refuse(e);
                }
            }
            Message::AwarenessQuery => {
                if let Some(states) = self.app.yjs.awareness_of_others(self.conn.id, &name) {
                    self.conn.send(states);
                }
            }
            Message::Auth(_) | Message::Custom(..) => {}
        }
        Flow::Continue
    }

    /// Publishes a client's update; it reaches the others once committed.
    fn yjs_publish(&self, name: &str, update: &[u8]) {
        let room = format!("{ROOM_PREFIX}{name}");
        self.publish_document(yjs::UPDATE, room, update_data(update, self.conn.id), denial);
    }

    fn yjs_refuse(&self, reason: String) {
        self.conn.send(denial(&AppError::bad_request(reason)));
    }

    /// A rate-limited step (`allowed` by its limiter): refused with y-websocket's denial, and
    /// counted towards the flood limit.
    fn yjs_allowed(&mut self, allowed: bool, what: &str) -> Result<(), Flow> {
        self.count_refusal(allowed).inspect_err(|_| {
            self.yjs_refuse(format!("{what} rate limit exceeded; slow down"));
        })
    }
}

/// How many states an awareness message claims to hold (none: another message).
fn claimed_awareness_states(frame: &[u8]) -> Option<usize> {
    let mut cursor = Cursor::new(frame);
    if cursor.read_var::<u8>().ok()? != MSG_AWARENESS {
        return None;
    }
    let update = cursor.read_buf().ok()?;
    Cursor::new(update).read_var().ok()
}

/// y-websocket's permission-denied message, with the reason.
fn denial(e: &AppError) -> Outgoing {
    Outgoing::Raw {
        payload: Message::Auth(Some(e.message.clone())).encode_v1().into(),
        text: false,
    }
}
