//! The session's collaborative-document commands: join (snapshot or catch-up), leave, text
//! changes (published as `document.change` events; every node applies them in the log's
//! order, see `app::documents`), cursor moves (volatile).

use herald_core::Outgoing;
use herald_core::document::Change;
use herald_core::protocol::{PublishArgs, ServerMessage};
use serde_json::{Value, json};

use super::Session;
use crate::app::Publisher;
use crate::app::documents::{self, room_of};
use crate::http::error::AppError;

impl Session {
    pub(super) fn document_join(&mut self, id: String, version: Option<u64>, reply: Option<Value>) {
        let allowed = room_of(&id).and_then(|room| {
            self.app
                .check_room_access(self.conn.identity().as_ref(), &room)
        });
        if let Err(e) = allowed {
            return self.fail(&e, reply);
        }
        if !self.documents.contains(&id) {
            if self.documents.len() >= self.app.config.max_documents_per_connection {
                return self.fail(
                    &AppError::rate_limited(format!(
                        "a connection may join {} documents at once; leave one first",
                        self.app.config.max_documents_per_connection
                    )),
                    reply,
                );
            }
            self.documents.push(id.clone());
        }
        let user = self
            .conn
            .user_id()
            .unwrap_or_else(|| format!("anonymous:{}", self.conn.id));
        let (app, conn) = (self.app.clone(), self.conn.clone());
        tokio::spawn(async move {
            let joined = app
                .documents
                .join(&*app.store, &conn, user, &id, version, reply.clone())
                .await;
            if let Err(e) = joined {
                conn.send(Outgoing::Message(e.to_ws(reply)));
            }
        });
    }

    pub(super) fn document_leave(&mut self, id: String, reply: Option<Value>) {
        self.documents.retain(|d| *d != id);
        if self.app.documents.leave(self.conn.id, &id) {
            self.reply(ServerMessage::reply(
                "document.left",
                Some(json!({"documentId": id})),
                reply,
            ));
        } else {
            self.fail(
                &AppError::not_found(format!("not a participant of document {id}")),
                reply,
            );
        }
    }

    /// Leaves every document joined, and the Yjs document (the connection closed).
    pub fn leave_documents(&mut self) {
        for id in self.documents.drain(..) {
            self.app.documents.leave(self.conn.id, &id);
        }
        if let Some(name) = self.yjs.take() {
            self.app.yjs.leave(self.conn.id, &name);
        }
    }

    /// Publishes the change as a `document.change` event (with the client's `changeId`, if
    /// any); the author hears back through the fold, as `text_change_applied` echoing its
    /// `id`, or as an error.
    pub(super) fn document_change(
        &self,
        id: String,
        base: u64,
        change: Change,
        change_id: Option<String>,
        reply: Option<Value>,
    ) {
        let max = self.app.documents.bounds().max_len;
        if change.text_len() > max {
            return self.fail(
                &AppError::bad_request(format!(
                    "the text is {} UTF-16 code units; a document holds at most {max}",
                    change.text_len()
                )),
                reply,
            );
        }
        let room = match room_of(&id).and_then(|room| {
            self.app
                .documents
                .check_change(self.conn.id, &id, base)
                .map(|()| room)
        }) {
            Ok(r) => r,
            Err(e) => return self.fail(&e, reply),
        };
        let data = documents::change_data(base, &change, change_id, self.conn.id, reply.clone());
        self.publish_document(documents::CHANGE, room, data, move |e| {
            Outgoing::Message(e.to_ws(reply))
        });
    }

    /// Publishes a document's event (`document.*`, `yjs.*`) as this connection, through the
    /// document commands' door (`Publisher::document`); a refusal is answered with
    /// `refused(error)`.
    pub(super) fn publish_document(
        &self,
        kind: &str,
        room: String,
        data: Value,
        refused: impl FnOnce(&AppError) -> Outgoing + Send + 'static,
    ) {
        let args = PublishArgs {
            kind: kind.into(),
            data,
            room_id: Some(room),
            user_id: None,
            metadata: None,
        };
        let (app, conn) = (self.app.clone(), self.conn.clone());
        tokio::spawn(async move {
            let identity = conn.identity();
            let from = Publisher {
                identity: identity.as_ref(),
                profile: None,
                skip: None,
                document: true,
            };
            if let Err(e) = app.publish_as(from, args).await {
                conn.send(refused(&e));
            }
        });
    }

    pub(super) fn document_cursor(&mut self, id: String, cursor: Value, reply: Option<Value>) {
        if self.limits().cursor.check().is_err() {
            return self.fail(
                &AppError::rate_limited("cursor moves are limited; slow down"),
                reply,
            );
        }
        if cursor.to_string().len() > MAX_CURSOR_BYTES {
            return self.fail(
                &AppError::bad_request(format!(
                    "a cursor is at most {MAX_CURSOR_BYTES} bytes of JSON"
                )),
                reply,
            );
        }
        if let Err(e) = self.app.documents.move_cursor(self.conn.id, &id, cursor) {
            self.fail(&e, reply);
        }
    }
}

/// A cursor is a position and a selection, not a payload.
const MAX_CURSOR_BYTES: usize = 256;
