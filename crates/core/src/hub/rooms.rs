//! Rooms on the hub: joining and leaving (with the notices to the room), typing, presence,
//! and cluster-wide presence.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{Connection, Hub, HubError};
use crate::outbox::Outgoing;
use crate::presence::{self, ClusterPresence};
use crate::room::{self, Joined, Left, Member, Presence, RoomDirectory};
use crate::signal::ClusterSignals;
use crate::wire::ServerMessage;

impl Hub {
    /// Puts a connection in a room. The others are told when the member arrived. With
    /// `hold_live`, the connection's live events are held (as during a resume) until
    /// `end_replay`, so the room's history can be queued first; the returned head is the
    /// last `seq` fanned out before the join — history up to it is in the store, every later
    /// event of the room is delivered live.
    pub fn join_room(
        &self,
        conn: &Arc<Connection>,
        room: &str,
        member: Member,
        hold_live: bool,
    ) -> Result<(Joined, u64), HubError> {
        let mut s = self.state.write();
        if !s.connections.contains_key(&conn.id) {
            return Err(HubError::NoConnection);
        }
        let in_room = s.rooms.contains(conn.id, room);
        if !in_room && s.rooms.rooms_of(conn.id).len() >= self.max_subscriptions {
            return Err(HubError::TooManyRooms(self.max_subscriptions));
        }
        if hold_live && conn.is_holding() {
            return Err(HubError::Replaying);
        }
        let mut joined = s.rooms.join(conn, room, member.clone());
        self.cluster_joined(&s.rooms, room, &member, &mut joined);
        if joined.arrived {
            let msg = room::notice(
                "user_joined",
                room,
                &member,
                serde_json::json!({"users": joined.users}),
            );
            to_room(&s.rooms, room, &msg, Some(conn.id));
        }
        if hold_live {
            conn.start_holding();
        }
        Ok((joined, self.head()))
    }

    /// Takes a connection out of a room, telling the others when the member departed.
    pub fn leave_room(&self, conn: Uuid, room: &str) -> Option<Left> {
        let mut s = self.state.write();
        let mut left = s.rooms.leave(conn, room)?;
        self.cluster_left(&s.rooms, &mut left);
        announce_leave(&s.rooms, &left);
        Some(left)
    }

    /// Who a connection is in a room as, if it is in it.
    pub fn member_in(&self, conn: Uuid, room: &str) -> Option<Member> {
        self.state.read().rooms.member_of(conn, room).cloned()
    }

    /// The rooms a connection is in, in the order it joined them.
    pub fn rooms_of(&self, conn: Uuid) -> Vec<String> {
        self.state.read().rooms.rooms_of(conn).to_vec()
    }

    /// Records a typing indicator and tells the room's other connections when it changed.
    /// Fails when the connection is not in the room.
    pub fn set_typing(&self, conn: Uuid, room: &str, typing: bool) -> Result<bool, HubError> {
        let mut s = self.state.write();
        let member = s
            .rooms
            .member_of(conn, room)
            .cloned()
            .ok_or(HubError::NotInRoom)?;
        if !s.rooms.set_typing(conn, room, typing) {
            return Ok(false);
        }
        to_room(
            &s.rooms,
            room,
            &typing_notice(room, &member, typing),
            Some(conn),
        );
        self.signal_typing(room, &member, typing);
        Ok(true)
    }

    /// A typing signal from another node (a member typing, or no longer, in `room`): this
    /// node's connections in the room are told. Anything else is ignored.
    pub fn remote_typing(&self, room: &str, signal: Value) {
        let Ok(TypingSignal { member, typing }) = serde_json::from_value(signal) else {
            return;
        };
        let s = self.state.read();
        to_room(&s.rooms, room, &typing_notice(room, &member, typing), None);
    }

    fn signal_typing(&self, room: &str, member: &Member, typing: bool) {
        if let Some(signals) = self.signals.get() {
            let signal = TypingSignal {
                member: member.clone(),
                typing,
            };
            signals.send(room, serde_json::to_value(signal).expect("serialises"));
        }
    }

    /// Who is present in a room (on every node of a cluster), sorted by name.
    pub fn presence(&self, room: &str) -> Vec<Presence> {
        let s = self.state.read();
        let remote = self.cluster.get().map(|c| c.remote(room));
        presence::presence(presence::union(
            s.rooms.members(room),
            remote.unwrap_or_default(),
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Cluster presence (issue 7): with a `ClusterPresence` set, joins and leaves are reported to it,
// and arrivals, departures and user lists count the members on the other nodes too.

impl Hub {
    /// Makes presence cluster-wide (once, at start-up, before connections arrive).
    pub fn set_cluster_presence(&self, cluster: Arc<dyn ClusterPresence>) {
        if self.cluster.set(cluster).is_err() {
            panic!("cluster presence is set once");
        }
    }

    /// Sends typing notices to the other nodes and hears theirs (once, at start-up).
    pub fn set_cluster_signals(&self, signals: Arc<dyn ClusterSignals>) {
        if self.signals.set(signals).is_err() {
            panic!("cluster signals are set once");
        }
    }

    /// A member's presence in `room` on the other nodes began (`present`) or ended: this
    /// node's connections in the room are told, unless the member is here too (then, for
    /// them, nothing changed).
    pub fn remote_presence_changed(&self, room: &str, member: &Member, present: bool) {
        let Some(cluster) = self.cluster.get() else {
            return;
        };
        let s = self.state.read();
        if s.rooms.connections(room).next().is_none()
            || s.rooms.members(room).any(|(m, _)| m.key == member.key)
        {
            return;
        }
        let (_, users) = cluster_view(cluster.as_ref(), &s.rooms, room, &member.key);
        let kind = if present { "user_joined" } else { "user_left" };
        let msg = room::notice(kind, room, member, serde_json::json!({ "users": users }));
        to_room(&s.rooms, room, &msg, None);
    }

    fn cluster_joined(&self, rooms: &RoomDirectory, room: &str, member: &Member, j: &mut Joined) {
        let Some(cluster) = self.cluster.get() else {
            return;
        };
        if j.new_seat {
            cluster.local_changed(room, member, j.connections);
        }
        let (elsewhere, users) = cluster_view(cluster.as_ref(), rooms, room, &member.key);
        j.arrived &= !elsewhere;
        j.users = users;
    }

    pub(super) fn cluster_left(&self, rooms: &RoomDirectory, left: &mut Left) {
        if left.was_typing {
            self.signal_typing(&left.room, &left.member, false);
        }
        let Some(cluster) = self.cluster.get() else {
            return;
        };
        cluster.local_changed(&left.room, &left.member, left.connections);
        let (elsewhere, users) =
            cluster_view(cluster.as_ref(), rooms, &left.room, &left.member.key);
        left.departed &= !elsewhere;
        left.users = users;
    }
}

/// Whether the member `key` is present in `room` on another node, and everyone present in the
/// room across the cluster (profiles, sorted by name).
fn cluster_view(
    cluster: &dyn ClusterPresence,
    rooms: &RoomDirectory,
    room: &str,
    key: &str,
) -> (bool, Vec<serde_json::Value>) {
    let remote = cluster.remote(room);
    let elsewhere = remote.iter().any(|(m, _)| m.key == key);
    let all = presence::union(rooms.members(room), remote);
    (elsewhere, presence::users(&all))
}

/// What a node tells the others when one of its members starts or stops typing.
#[derive(Serialize, Deserialize)]
struct TypingSignal {
    member: Member,
    #[serde(rename = "isTyping")]
    typing: bool,
}

/// A typing notice, as the room's connections receive it.
fn typing_notice(room: &str, member: &Member, typing: bool) -> Arc<ServerMessage> {
    room::notice("typing", room, member, json!({ "isTyping": typing }))
}

/// Sends a room notice to every connection in the room but `except`.
fn to_room(rooms: &RoomDirectory, room: &str, msg: &Arc<ServerMessage>, except: Option<Uuid>) {
    for conn in rooms.connections(room) {
        if Some(conn.id) != except {
            conn.send(Outgoing::Message(msg.clone()));
        }
    }
}

/// Tells a room that a connection stopped typing (if it was) and that its member left (if
/// that was its last connection there).
pub(super) fn announce_leave(rooms: &RoomDirectory, left: &Left) {
    if left.was_typing {
        let msg = typing_notice(&left.room, &left.member, false);
        to_room(rooms, &left.room, &msg, None);
    }
    if left.departed {
        let msg = room::notice(
            "user_left",
            &left.room,
            &left.member,
            serde_json::json!({"users": left.users}),
        );
        to_room(rooms, &left.room, &msg, None);
    }
}
