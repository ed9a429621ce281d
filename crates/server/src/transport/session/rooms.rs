//! The session's rooms and chat commands (seeds 001 and 004): join (with the room's recent
//! history), leave, chat messages, private messages, typing notices.

use herald_core::access::PERSONAL_PREFIX;
use herald_core::event::{CHAT_MESSAGE, CHAT_PRIVATE};
use herald_core::protocol::{JoinArgs, PublishArgs, ServerMessage, code};
use herald_core::room::{Member, validate_room};
use herald_core::wire::history_entry;
use herald_core::{HistoryQuery, Outgoing};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{Session, published};
use crate::app::{Publisher, chat};
use crate::http::check_id;
use crate::http::error::AppError;
use crate::http::replies::hub_error;

/// Messages in `room_history`, sent on join.
pub(super) const ROOM_HISTORY: usize = 50;

/// Rooms and chat (seeds 001 and 004).
impl Session {
    /// The room a command names, or seed 001's "current room": the one joined last that the
    /// connection is still in.
    fn room_or_current(&self, room: Option<String>) -> Result<String, AppError> {
        match room {
            Some(r) => {
                validate_room(&r).map_err(AppError::bad_request)?;
                Ok(r)
            }
            None => self
                .app
                .hub
                .rooms_of(self.conn.id)
                .pop()
                .ok_or_else(not_in_room),
        }
    }

    fn check_room_access(&self, room: &str) -> Result<(), AppError> {
        self.app
            .check_room_access(self.conn.identity().as_ref(), room)
    }

    /// Joins now (so the next command already sees the room), then queues `room_joined` and
    /// `room_history` before any live event of the room.
    pub(super) fn join(&mut self, args: JoinArgs, id: Option<Value>) {
        let member = validate_room(&args.room)
            .map_err(AppError::bad_request)
            .and_then(|()| self.check_room_access(&args.room))
            .and_then(|()| chat::profile(args.user))
            .map(|profile| Member::of(&self.conn, profile));
        let member = match member {
            Ok(m) => m,
            Err(e) => return self.fail(&e, id),
        };
        let (app, conn, resuming, dialect) = (
            self.app.clone(),
            self.conn.clone(),
            self.limits().resuming.clone(),
            self.dialect,
        );
        let room = args.room;
        // A resume in progress holds live events itself; wait for it before holding again.
        let joined = match resuming.clone().try_lock_owned() {
            Ok(guard) => app
                .hub
                .join_room(&conn, &room, member, true)
                .map(|j| (j, Some(guard))),
            Err(_) => app
                .hub
                .join_room(&conn, &room, member, false)
                .map(|j| (j, None)),
        };
        let ((joined, head), guard) = match joined {
            Ok(j) => j,
            Err(e) => return self.fail(&hub_error(e), id),
        };
        let holding = guard.is_some();
        tokio::spawn(async move {
            let _one_at_a_time = match guard {
                Some(g) => g,
                None => resuming.lock_owned().await,
            };
            conn.send(Outgoing::Message(ServerMessage::flat(
                "room_joined",
                json!({"room": room, "users": joined.users}),
                id,
            )));
            let history = app
                .store
                .query(HistoryQuery {
                    types: vec![CHAT_MESSAGE.to_owned()],
                    room_id: Some(room.clone()),
                    until_seq: Some(head),
                    limit: ROOM_HISTORY,
                    access: app.access().read_scope(conn.identity().as_ref()),
                    ..Default::default()
                })
                .await;
            match history {
                Ok(mut events) => {
                    events.reverse();
                    let messages: Vec<Value> = events
                        .into_iter()
                        .map(|e| history_entry(&e, dialect))
                        .collect();
                    conn.send(Outgoing::Message(ServerMessage::flat(
                        "room_history",
                        json!({"room": room, "roomId": room, "messages": messages}),
                        None,
                    )));
                }
                Err(e) => {
                    conn.send(Outgoing::Message(AppError::from(e).to_ws(None)));
                }
            }
            if holding {
                app.hub.end_replay(&conn, head);
            }
        });
    }

    /// Leaves one room, or every room when none is named (seed 001's `leave`).
    pub(super) fn leave(&self, room: Option<String>, id: Option<Value>) {
        let rooms = match room {
            Some(r) => vec![r],
            None => self.app.hub.rooms_of(self.conn.id),
        };
        let left: Vec<String> = rooms
            .into_iter()
            .filter_map(|r| self.app.hub.leave_room(self.conn.id, &r).map(|l| l.room))
            .collect();
        if left.is_empty() {
            return self.fail(&not_in_room(), id);
        }
        for room in left {
            self.reply(ServerMessage::flat(
                "room_left",
                json!({"room": room}),
                id.clone(),
            ));
        }
    }

    /// A chat message, stored as a `chat.message` event of the room. Members get it; so does
    /// the sender, except for seed 004's `message` (`to_others`). Sending needs access to the
    /// room, not membership (seed 004's publishers need not join); a member is shown with the
    /// profile it joined with.
    pub(super) fn chat(
        &self,
        room: Option<String>,
        text: &str,
        to_others: bool,
        id: Option<Value>,
    ) {
        let room = match self.room_or_current(room) {
            Ok(r) => r,
            Err(e) => return self.fail(&e, id),
        };
        let profile = self
            .app
            .hub
            .member_in(self.conn.id, &room)
            .map(|m| m.profile);
        let message = chat_args(CHAT_MESSAGE, text, room);
        self.commit(message, profile, to_others.then_some(self.conn.id), id);
    }

    /// A direct message to every connection of `target`, through its personal room.
    pub(super) fn private_message(&self, target: String, text: &str, id: Option<Value>) {
        if self.conn.identity().is_none() {
            return self.fail(
                &AppError::unauthorized("authenticate to send private messages"),
                id,
            );
        }
        if let Err(e) = check_id("target", Some(&target)) {
            return self.fail(&e, id);
        }
        let room = format!("{PERSONAL_PREFIX}{target}");
        self.commit(chat_args(CHAT_PRIVATE, text, room), None, None, id);
    }

    /// Publishes a chat event as this connection; the sender hears back only about failures,
    /// or with `event.published` when its command carried an `id`.
    fn commit(
        &self,
        args: PublishArgs,
        profile: Option<Value>,
        skip: Option<Uuid>,
        id: Option<Value>,
    ) {
        let (app, conn) = (self.app.clone(), self.conn.clone());
        tokio::spawn(async move {
            let identity = conn.identity();
            let from = Publisher {
                identity: identity.as_ref(),
                profile: profile.as_ref(),
                skip,
                document: false,
            };
            let reply = match app.publish_as(from, args).await {
                Ok(e) => id.is_some().then(|| published(&e.event, id)),
                Err(e) => Some(e.to_ws(id)),
            };
            if let Some(reply) = reply {
                conn.send(Outgoing::Message(reply));
            }
        });
    }

    /// Typing indicators are volatile: relayed to the room's other connections, never stored.
    pub(super) fn typing(&mut self, room: Option<String>, typing: bool, id: Option<Value>) {
        let result = self.room_or_current(room).and_then(|room| {
            if self.limits().typing.check().is_err() {
                return Err(AppError::rate_limited(
                    "typing notices are limited; slow down",
                ));
            }
            self.app
                .hub
                .set_typing(self.conn.id, &room, typing)
                .map_err(hub_error)
        });
        if let Err(e) = result {
            self.fail(&e, id);
        }
    }
}

/// A chat command as the event it publishes (`App::publish_as` sanitises and signs it).
fn chat_args(kind: &str, text: &str, room: String) -> PublishArgs {
    PublishArgs {
        kind: kind.into(),
        data: json!({ "text": text }),
        room_id: Some(room),
        user_id: None,
        metadata: None,
    }
}

fn not_in_room() -> AppError {
    AppError::new(
        axum::http::StatusCode::BAD_REQUEST,
        code::NOT_IN_ROOM,
        "not in a room; join one first",
    )
}
