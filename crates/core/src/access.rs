//! Who may read, write and join what: the one access decision. Every path asks it — live
//! delivery, replays, history, presence, every publish path — so a rule changes here or
//! nowhere.
//!
//! - **Rooms**: a personal room `user:{id}` belongs to its user; privileged identities (admin,
//!   API key) may enter any other room; a user whose token has a `rooms` claim only the rooms
//!   it lists and the public ones, a user without one any room; anonymous clients only public
//!   rooms (`public_rooms`).
//! - **Reading** an event needs the right to join its room, and for a private event (`user.*`,
//!   or in a personal room) to be its user or privileged.
//! - **Writing** an event needs the right to join its room (a direct message, `chat.private`,
//!   may go to another user's personal room); publishing as another user, and the operator
//!   types (`RESERVED_TYPES`), need a privileged identity; anonymous clients may only chat (and
//!   edit documents) in public rooms.

use crate::event::{CHAT_MESSAGE, CHAT_PRIVATE, Event, NewEvent};
use crate::identity::Identity;
use crate::store::ReadAccess;

/// Event types the seeds give an operator's meaning to (notifications to everyone, system
/// alerts, the dashboard's activity): only admins and API keys may publish them. A pattern
/// ending in `.*` reserves the whole family.
pub const RESERVED_TYPES: &[&str] = &[
    "notification",
    "update",
    "system.*",
    "dashboard.*",
    "user.login",
    "user.logout",
    "user.notification",
    "document.*",
    "yjs.*",
];

/// The families of documents' events (`document.change`, `document.snapshot`, `yjs.update`,
/// `yjs.snapshot`): reserved, so raw publishes cannot write them; the document commands and
/// the y-websocket endpoint write them with `may_write_document`.
pub const DOCUMENT_TYPES: [&str; 2] = ["document.", "yjs."];

/// Events of these types belong to their `userId`.
pub const PRIVATE_TYPES: &str = "user.";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AccessDenied(pub String);

/// Why a join is refused.
enum Refusal {
    Personal,
    NotClaimed,
    NotPublic,
}

impl Refusal {
    fn explained(self, room: &str) -> AccessDenied {
        AccessDenied(match self {
            Refusal::Personal => format!("{room} is the personal room of another user"),
            Refusal::NotClaimed => format!("your token does not grant access to room {room}"),
            Refusal::NotPublic => format!("room {room} is not public: authenticate first"),
        })
    }
}

/// A user without a `rooms` claim whose id no client can hold (ids with control characters
/// are refused): built once, since the fan-out asks about it for every run of events.
static NOBODY: std::sync::LazyLock<Identity> = std::sync::LazyLock::new(|| Identity::user("\u{0}"));

/// The access rules of one server: the rules above with its public rooms.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Room names or `prefix*` patterns anyone may join, anonymous clients included.
    public_rooms: Vec<String>,
}

/// Every authenticated user's personal room is `user:{id}`: events published to it reach all
/// of that user's connections, and nobody else may join or read it.
pub const PERSONAL_PREFIX: &str = "user:";

/// The user whose personal room `room` is, if it is one.
pub fn personal_owner(room: &str) -> Option<&str> {
    room.strip_prefix(PERSONAL_PREFIX)
}

/// A room name or a prefix pattern ending in `*` (`team-*`, `*`), as used by the `rooms`
/// token claim and the public-rooms setting.
pub fn room_matches(pattern: &str, room: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => room.starts_with(prefix),
        None => pattern == room,
    }
}

/// Whether `kind` is one of `RESERVED_TYPES`.
pub fn is_reserved(kind: &str) -> bool {
    RESERVED_TYPES.iter().any(|r| match r.strip_suffix('*') {
        Some(family) => kind.starts_with(family),
        None => *r == kind,
    })
}

impl Access {
    pub fn new(public_rooms: Vec<String>) -> Self {
        Self { public_rooms }
    }

    fn is_public(&self, room: &str) -> bool {
        self.public_rooms.iter().any(|p| room_matches(p, room))
    }

    /// Whether `who` may join `room` — and so read its events and write into it.
    pub fn may_join(&self, who: Option<&Identity>, room: &str) -> Result<(), AccessDenied> {
        self.join_refusal(who, room)
            .map_or(Ok(()), |r| Err(r.explained(room)))
    }

    /// `may_join` without its message: the fan-out asks it for every recipient, and a refusal
    /// must cost no allocation there.
    fn join_refusal(&self, who: Option<&Identity>, room: &str) -> Option<Refusal> {
        if let Some(owner) = personal_owner(room) {
            return match who {
                Some(i) if i.user_id == owner => None,
                _ => Some(Refusal::Personal),
            };
        }
        match who {
            Some(i) if i.is_privileged() => None,
            Some(i) => match &i.rooms {
                Some(claimed)
                    if !claimed.iter().any(|p| room_matches(p, room)) && !self.is_public(room) =>
                {
                    Some(Refusal::NotClaimed)
                }
                _ => None,
            },
            None if self.is_public(room) => None,
            None => Some(Refusal::NotPublic),
        }
    }

    /// Whether every authenticated user without a `rooms` claim may read `event` (the fan-out
    /// skips those recipients' own check when so): asked for a user nobody can be, since ids
    /// with control characters are refused.
    pub fn open_to_users(&self, event: &Event) -> bool {
        self.may_read(Some(&NOBODY), event)
    }

    /// Whether `who` may receive `event`, live, replayed or from history. `read_scope` says the
    /// same to the store, as conditions of its query. What an anonymous client may read, every
    /// identity may: the fan-out checks a run of events once for `None` and skips the
    /// per-recipient check when it passes.
    pub fn may_read(&self, who: Option<&Identity>, event: &Event) -> bool {
        let owns = |owner: Option<&str>| who.is_some_and(|i| i.may_read_private_of(owner));
        if event.kind.starts_with(PRIVATE_TYPES) && !owns(event.user_id.as_deref()) {
            return false;
        }
        event
            .room_id
            .as_deref()
            .is_none_or(|room| self.read_refusal(who, room).is_none())
    }

    /// Whether `who` may read the events of `room` (its history, its presence): whoever may
    /// join it, and for a personal room its user and privileged identities, who read every
    /// user's private events without sitting in their rooms.
    pub fn may_read_room(&self, who: Option<&Identity>, room: &str) -> Result<(), AccessDenied> {
        self.read_refusal(who, room)
            .map_or(Ok(()), |r| Err(r.explained(room)))
    }

    fn read_refusal(&self, who: Option<&Identity>, room: &str) -> Option<Refusal> {
        match (personal_owner(room), who) {
            (Some(_), Some(i)) if i.is_privileged() => None,
            _ => self.join_refusal(who, room),
        }
    }

    /// `may_read` for the store: which private events and which rooms' events `who` may read.
    pub fn read_scope(&self, who: Option<&Identity>) -> ReadAccess {
        match who {
            Some(i) if i.is_privileged() => ReadAccess::All,
            Some(i) => ReadAccess::Limited {
                user: Some(i.user_id.clone()),
                rooms: i
                    .rooms
                    .as_ref()
                    .map(|claimed| claimed.iter().chain(&self.public_rooms).cloned().collect()),
            },
            None => ReadAccess::Limited {
                user: None,
                rooms: Some(self.public_rooms.clone()),
            },
        }
    }

    /// Whether `who` (`None`: an anonymous client) may publish `event` as it stands, its
    /// `userId` already set.
    pub fn may_write(&self, who: Option<&Identity>, event: &NewEvent) -> Result<(), AccessDenied> {
        self.write_refusal(who, event, false)
    }

    /// `may_write` for a document's event written by the document commands on behalf of a
    /// participant: the same rules, except that its reserved type is allowed.
    pub fn may_write_document(
        &self,
        who: Option<&Identity>,
        event: &NewEvent,
    ) -> Result<(), AccessDenied> {
        let document = DOCUMENT_TYPES.iter().any(|t| event.kind.starts_with(t));
        self.write_refusal(who, event, document)
    }

    fn write_refusal(
        &self,
        who: Option<&Identity>,
        event: &NewEvent,
        reserved_allowed: bool,
    ) -> Result<(), AccessDenied> {
        let Some(i) = who else {
            return match event.room_id.as_deref() {
                // Chat, and a public document's edits through the document commands.
                Some(room)
                    if (event.kind == CHAT_MESSAGE || reserved_allowed)
                        && event.user_id.is_none() =>
                {
                    self.may_join(None, room)
                }
                _ => Err(AccessDenied(
                    "anonymous clients may only chat in and edit public rooms: authenticate to publish"
                        .into(),
                )),
            };
        };
        if event.user_id.as_deref().is_some_and(|u| u != i.user_id) && !i.is_privileged() {
            return Err(AccessDenied("you may only publish as yourself".into()));
        }
        if is_reserved(&event.kind) && !i.is_privileged() && !reserved_allowed {
            return Err(AccessDenied(format!(
                "{} is reserved for operators (admin token or API key)",
                event.kind
            )));
        }
        match event.room_id.as_deref() {
            None => Ok(()),
            Some(room) => match personal_owner(room) {
                // Another user's personal room takes direct messages, and operators' events.
                Some(owner) if owner != i.user_id => {
                    if event.kind == CHAT_PRIVATE || i.is_privileged() {
                        Ok(())
                    } else {
                        Err(AccessDenied(format!(
                            "{room} is the personal room of another user: send a private message"
                        )))
                    }
                }
                _ => self.may_join(who, room),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Role;
    use serde_json::json;

    fn access() -> Access {
        Access::new(vec!["lobby".to_owned(), "open-*".to_owned()])
    }

    fn limited() -> Identity {
        Identity {
            rooms: Some(vec!["team-*".into()]),
            ..Identity::user("carol")
        }
    }

    #[test]
    fn joining() {
        let a = access();
        let alice = Identity::user("alice");
        let admin = Identity::with_role("ops", Role::Admin);
        let ok = |who: Option<&Identity>, room: &str| a.may_join(who, room).is_ok();
        assert!(ok(None, "lobby") && ok(None, "open-1") && !ok(None, "secret"));
        assert!(ok(Some(&alice), "secret") && ok(Some(&alice), "user:alice"));
        assert!(!ok(Some(&alice), "user:bob") && !ok(Some(&admin), "user:bob"));
        assert!(ok(Some(&limited()), "team-a") && ok(Some(&limited()), "lobby"));
        assert!(!ok(Some(&limited()), "secret"));
        assert!(ok(Some(&admin), "secret"));
    }

    fn event(kind: &str, user: Option<&str>, room: Option<&str>) -> Event {
        NewEvent {
            kind: kind.into(),
            data: json!({}),
            user_id: user.map(str::to_owned),
            room_id: room.map(str::to_owned),
            metadata: None,
        }
        .commit(1, chrono::Utc::now())
    }

    #[test]
    fn reading_follows_joining_and_privacy() {
        let a = access();
        let alice = Identity::user("alice");
        let admin = Identity::with_role("ops", Role::Admin);
        let read = |who: Option<&Identity>, e: &Event| a.may_read(who, e);
        let secret = event("chat.message", Some("bob"), Some("secret"));
        assert!(!read(None, &secret) && !read(Some(&limited()), &secret));
        assert!(read(Some(&alice), &secret) && read(Some(&admin), &secret));
        let lobby = event("chat.message", Some("bob"), Some("lobby"));
        assert!(read(None, &lobby) && read(Some(&limited()), &lobby));
        let private = event("user.note", Some("alice"), None);
        assert!(read(Some(&alice), &private) && read(Some(&admin), &private));
        assert!(!read(None, &private) && !read(Some(&limited()), &private));
        let personal = event("chat.private", Some("bob"), Some("user:alice"));
        assert!(read(Some(&alice), &personal) && read(Some(&admin), &personal));
        assert!(!read(Some(&Identity::user("bob")), &personal));
        // Private twice over: both owners must agree.
        let foreign = event("user.note", Some("alice"), Some("user:bob"));
        assert!(!read(Some(&alice), &foreign) && read(Some(&admin), &foreign));
        // A private type in a room needs both.
        let both = event("user.note", Some("carol"), Some("secret"));
        assert!(!read(Some(&limited()), &both) && read(Some(&admin), &both));
        assert!(read(None, &event("x", None, None)));
        // Whatever anonymous clients may read, everyone may.
        let everyone = [
            alice.clone(),
            admin.clone(),
            limited(),
            Identity::user("bob"),
        ];
        for room in [
            None,
            Some("lobby"),
            Some("open-2"),
            Some("secret"),
            Some("user:bob"),
        ] {
            for kind in ["chat.message", "user.note"] {
                let e = event(kind, Some("bob"), room);
                if read(None, &e) {
                    assert!(everyone.iter().all(|i| read(Some(i), &e)), "{e:?}");
                }
            }
        }
    }

    #[test]
    fn writing() {
        let a = access();
        let alice = Identity::user("alice");
        let service = Identity::with_role("service", Role::Service);
        let new = |kind: &str, user: Option<&str>, room: Option<&str>| NewEvent {
            kind: kind.into(),
            data: json!({}),
            user_id: user.map(str::to_owned),
            room_id: room.map(str::to_owned),
            metadata: None,
        };
        let write = |who: Option<&Identity>, e: NewEvent| a.may_write(who, &e).is_ok();
        assert!(write(Some(&alice), new("x", Some("alice"), Some("secret"))));
        assert!(
            !write(Some(&alice), new("x", Some("bob"), None)),
            "as another"
        );
        assert!(write(Some(&service), new("x", Some("bob"), None)));
        assert!(!write(
            Some(&limited()),
            new("x", Some("carol"), Some("secret"))
        ));
        assert!(write(
            Some(&limited()),
            new("x", Some("carol"), Some("team-1"))
        ));
        for reserved in [
            "notification",
            "system.alert",
            "user.login",
            "dashboard.updated",
        ] {
            assert!(!write(Some(&alice), new(reserved, Some("alice"), None)));
            assert!(write(Some(&service), new(reserved, None, None)));
        }
        assert!(!write(
            Some(&alice),
            new("x", Some("alice"), Some("user:bob"))
        ));
        assert!(write(
            Some(&alice),
            new(CHAT_PRIVATE, Some("alice"), Some("user:bob"))
        ));
        assert!(write(
            Some(&alice),
            new("x", Some("alice"), Some("user:alice"))
        ));
        assert!(write(None, new(CHAT_MESSAGE, None, Some("lobby"))));
        assert!(!write(None, new(CHAT_MESSAGE, None, Some("secret"))));
        assert!(!write(None, new("x", None, Some("lobby"))));
        assert!(!write(None, new(CHAT_MESSAGE, None, None)));
    }

    #[test]
    fn reserved_types() {
        assert!(is_reserved("system.x.y") && is_reserved("notification"));
        assert!(!is_reserved("systemx") && !is_reserved("notifications"));
        assert!(!is_reserved("user.message") && !is_reserved("chat.message"));
    }
}
