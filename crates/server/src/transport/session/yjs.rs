//! The y-websocket protocol on a connection opened at `/yjs/{name}`: sync step 1 is answered
//! with step 2; updates (step 2 or update) are published as `yjs.update` events, applied and
//! relayed by every node as they are committed (`app::yjs`); awareness is relayed to the
//! document's other clients on this node.

use herald_core::{Identity, Outgoing, StoreError};
use yrs::sync::{Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;

use super::{Flow, Session};
use crate::app::yjs::{self, ROOM_PREFIX, is_update, update_data};
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
                        if self.over_publish_rate(&None).is_some() {
                            return Flow::Continue;
                        }
                        self.yjs_publish(&name, &update);
                    }
                    Err(e) => self.yjs_refuse(e),
                }
            }
            Message::Awareness(update) => self.app.yjs.awareness(self.conn.id, &name, update),
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
}

/// y-websocket's permission-denied message, with the reason.
fn denial(e: &AppError) -> Outgoing {
    Outgoing::Raw {
        payload: Message::Auth(Some(e.message.clone())).encode_v1().into(),
        text: false,
    }
}
