//! Rooms and presence: which connections are in which room, and who is present — each user
//! counted once however many connections they have in the room. Joining and leaving report
//! whether the member's first connection arrived or its last one went, which is when the
//! others are told (`user_joined` / `user_left`). Who may join is `access`'s to decide.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::connection::Connection;
use crate::identity::is_unsafe_in_name;
use crate::wire::ServerMessage;

pub const MAX_ROOM_LEN: usize = 256;

pub fn validate_room(room: &str) -> Result<(), String> {
    if room.is_empty() || room.len() > MAX_ROOM_LEN || room.chars().any(is_unsafe_in_name) {
        return Err(format!(
            "room must be 1..={MAX_ROOM_LEN} characters without control or bidirectional-control characters"
        ));
    }
    Ok(())
}

/// Who a connection is in a room: its user, or for anonymous connections the connection itself
/// under the profile it gave. Serialisable: cluster presence sends it to the other nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The user id (authenticated), or `anonymous:{connection id}`.
    pub key: String,
    pub user_id: Option<String>,
    /// What presence lists sort and show: the profile's name, or the user id.
    pub name: String,
    /// What others see as `user` in notices and chat (seed 001 passes a name or an object such
    /// as `{id, name, avatar}`): for authenticated users their id, or their object with `id`
    /// set to it; for anonymous clients what they gave (unverified, without its `id`), or
    /// `"anonymous"`.
    pub profile: Value,
}

impl Member {
    /// An authenticated user without a profile: known by its id.
    pub fn user(id: &str) -> Self {
        Self {
            key: id.into(),
            user_id: Some(id.into()),
            name: id.into(),
            profile: id.into(),
        }
    }

    /// `given` must already be validated (a string, or an object with a string `name`).
    pub fn of(conn: &Connection, given: Option<Value>) -> Self {
        let user_id = conn.user_id();
        let profile = match (&user_id, given) {
            (Some(u), Some(Value::Object(mut m))) => {
                m.insert("id".into(), u.clone().into());
                Value::Object(m)
            }
            (Some(u), _) => return Self::user(u),
            // Nothing verifies an anonymous client's `id`: it never shows as a user id.
            (None, Some(Value::Object(mut m))) => {
                m.remove("id");
                Value::Object(m)
            }
            (None, Some(given)) => given,
            (None, None) => "anonymous".into(),
        };
        let key = user_id
            .clone()
            .unwrap_or_else(|| format!("anonymous:{}", conn.id));
        let name = match &profile {
            Value::String(s) => s.clone(),
            other => other
                .get("name")
                .and_then(Value::as_str)
                .map_or_else(|| key.clone(), str::to_owned),
        };
        Self {
            key,
            user_id,
            name,
            profile,
        }
    }
}

/// A flat room notice about a member, e.g. `{"type":"user_joined","room","user","userId",..}`
/// with `extra` fields (`users`, `isTyping`) added.
pub fn notice(kind: &'static str, room: &str, member: &Member, extra: Value) -> Arc<ServerMessage> {
    let mut fields = match extra {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    fields.insert("room".into(), room.into());
    fields.insert("user".into(), member.profile.clone());
    if let Some(u) = &member.user_id {
        fields.insert("userId".into(), u.clone().into());
    }
    ServerMessage::flat(kind, Value::Object(fields), None)
}

/// One present member: how it appears in presence lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Presence {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    pub name: String,
    pub connections: usize,
}

#[derive(Debug)]
struct Seat {
    conn: Arc<Connection>,
    member: String,
    typing: bool,
}

#[derive(Debug, Default)]
struct Room {
    /// The fan-out list: one seat per connection in the room.
    seats: Vec<Seat>,
    /// Member key → (member, how many of its connections are in the room).
    members: HashMap<String, (Member, usize)>,
}

impl Room {
    /// Everyone present as others see them (profiles), sorted by name.
    fn users(&self) -> Vec<Value> {
        let mut members: Vec<&Member> = self.members.values().map(|(m, _)| m).collect();
        members.sort_by(|a, b| a.name.cmp(&b.name));
        members.into_iter().map(|m| m.profile.clone()).collect()
    }
}

/// What a join changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// False when the connection was already in the room (nothing changed).
    pub new_seat: bool,
    /// The member's first connection in the room: the others are told.
    pub arrived: bool,
    /// The member's connections in the room now.
    pub connections: usize,
    /// Everyone present, the joiner included, sorted by name.
    pub users: Vec<Value>,
}

/// What a leave changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Left {
    pub room: String,
    pub member: Member,
    /// The member's last connection left the room: the others are told.
    pub departed: bool,
    /// The member's connections still in the room.
    pub connections: usize,
    /// The connection was typing: the others are told it stopped.
    pub was_typing: bool,
    /// Everyone still present, sorted by name.
    pub users: Vec<Value>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct RoomStats {
    pub rooms: usize,
    /// Present members summed over rooms (a user in two rooms counts twice).
    pub members: usize,
    /// Connections summed over rooms.
    pub seats: usize,
}

/// Every room with at least one connection in it. Empty rooms are forgotten.
#[derive(Debug, Default)]
pub struct RoomDirectory {
    rooms: HashMap<String, Room>,
    /// Connection → the rooms it is in, for leaving them all on disconnect.
    by_conn: HashMap<Uuid, Vec<String>>,
}

impl RoomDirectory {
    pub fn rooms_of(&self, conn: Uuid) -> &[String] {
        self.by_conn.get(&conn).map_or(&[], Vec::as_slice)
    }

    pub fn join(&mut self, conn: &Arc<Connection>, room: &str, member: Member) -> Joined {
        let entry = self.rooms.entry(room.to_owned()).or_default();
        if let Some(seat) = entry.seats.iter().find(|s| s.conn.id == conn.id) {
            return Joined {
                new_seat: false,
                arrived: false,
                connections: entry.members.get(&seat.member).map_or(0, |(_, n)| *n),
                users: entry.users(),
            };
        }
        entry.seats.push(Seat {
            conn: conn.clone(),
            member: member.key.clone(),
            typing: false,
        });
        let count = &mut entry
            .members
            .entry(member.key.clone())
            .or_insert((member, 0))
            .1;
        *count += 1;
        let (arrived, connections) = (*count == 1, *count);
        self.by_conn
            .entry(conn.id)
            .or_default()
            .push(room.to_owned());
        Joined {
            new_seat: true,
            arrived,
            connections,
            users: entry.users(),
        }
    }

    pub fn leave(&mut self, conn: Uuid, room: &str) -> Option<Left> {
        let entry = self.rooms.get_mut(room)?;
        let pos = entry.seats.iter().position(|s| s.conn.id == conn)?;
        let seat = entry.seats.swap_remove(pos);
        let (member, connections) = match entry.members.get_mut(&seat.member) {
            Some((m, n)) if *n > 1 => {
                *n -= 1;
                (m.clone(), *n)
            }
            _ => {
                let (m, _) = entry
                    .members
                    .remove(&seat.member)
                    .expect("every seat has its member");
                (m, 0)
            }
        };
        let users = entry.users();
        if entry.seats.is_empty() {
            self.rooms.remove(room);
        }
        if let Some(list) = self.by_conn.get_mut(&conn) {
            list.retain(|r| r != room);
            if list.is_empty() {
                self.by_conn.remove(&conn);
            }
        }
        Some(Left {
            room: room.to_owned(),
            member,
            departed: connections == 0,
            connections,
            was_typing: seat.typing,
            users,
        })
    }

    pub fn leave_all(&mut self, conn: Uuid) -> Vec<Left> {
        let rooms = self.by_conn.get(&conn).cloned().unwrap_or_default();
        rooms
            .iter()
            .filter_map(|room| self.leave(conn, room))
            .collect()
    }

    /// The member a connection is in a room as.
    pub fn member_of(&self, conn: Uuid, room: &str) -> Option<&Member> {
        let r = self.rooms.get(room)?;
        let seat = r.seats.iter().find(|s| s.conn.id == conn)?;
        r.members.get(&seat.member).map(|(m, _)| m)
    }

    /// Records a connection's typing state; true when it changed.
    pub fn set_typing(&mut self, conn: Uuid, room: &str, typing: bool) -> bool {
        let Some(seat) = self
            .rooms
            .get_mut(room)
            .and_then(|r| r.seats.iter_mut().find(|s| s.conn.id == conn))
        else {
            return false;
        };
        std::mem::replace(&mut seat.typing, typing) != typing
    }

    /// The connections in a room (the fan-out list).
    pub fn connections<'a>(&'a self, room: &str) -> impl Iterator<Item = &'a Arc<Connection>> {
        self.rooms
            .get(room)
            .into_iter()
            .flat_map(|r| r.seats.iter().map(|s| &s.conn))
    }

    pub fn contains(&self, conn: Uuid, room: &str) -> bool {
        self.rooms_of(conn).iter().any(|r| r == room)
    }

    /// Who is present, with each member's connections in the room, in no particular order.
    pub fn members<'a>(&'a self, room: &str) -> impl Iterator<Item = (&'a Member, usize)> {
        self.rooms
            .get(room)
            .into_iter()
            .flat_map(|r| r.members.values().map(|(m, n)| (m, *n)))
    }

    pub fn stats(&self) -> RoomStats {
        self.rooms.values().fold(RoomStats::default(), |mut s, r| {
            s.rooms += 1;
            s.members += r.members.len();
            s.seats += r.seats.len();
            s
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Hub;
    use crate::{OutboxLimits, Transport};

    #[test]
    fn a_user_is_present_once_however_many_connections() {
        let hub = Hub::new(10, 10, OutboxLimits::default());
        let (a1, a2, b) = (
            hub.connect(Transport::WebSocket).unwrap(),
            hub.connect(Transport::WebSocket).unwrap(),
            hub.connect(Transport::WebSocket).unwrap(),
        );
        let mut d = RoomDirectory::default();
        assert!(d.join(&a1, "r", Member::user("alice")).arrived);
        let second = d.join(&a2, "r", Member::user("alice"));
        assert!(second.new_seat && !second.arrived);
        assert!(!d.join(&a2, "r", Member::user("alice")).new_seat);
        assert_eq!(d.join(&b, "r", Member::user("bob")).users, ["alice", "bob"]);
        assert_eq!(d.members("r").find(|(m, _)| m.key == "alice").unwrap().1, 2);
        assert_eq!(
            d.stats(),
            RoomStats {
                rooms: 1,
                members: 2,
                seats: 3
            }
        );

        assert!(!d.leave(a1.id, "r").unwrap().departed);
        assert!(d.set_typing(a2.id, "r", true));
        assert!(!d.set_typing(a2.id, "r", true));
        let left = d.leave_all(a2.id);
        assert_eq!(left.len(), 1);
        assert!(left[0].departed && left[0].was_typing);
        assert_eq!(left[0].users, ["bob"]);
        assert!(d.leave(a2.id, "r").is_none());
        d.leave(b.id, "r").unwrap();
        assert_eq!(d.stats(), RoomStats::default());
        assert!(d.by_conn.is_empty());
    }
}
