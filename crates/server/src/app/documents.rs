//! Collaborative documents: each one a room (`document:{id}`) whose `document.change` events
//! are the edits in the log's order. Every node folds the committed changes in `seq` order into
//! its open documents (`Documents::fold`, called by the log's fan-out), transforming each
//! against the changes applied since its `baseVersion` — a function of the log's order only,
//! so every node computes the same content and version — and sends `text_change_applied` to
//! its own participants. Every `document_snapshot_every` versions the author's node saves a
//! snapshot (content, version, the recent changes) in the store's snapshots
//! (`EventStore::save_snapshot`, keyed by the room), which retention leaves alone, and
//! publishes it as a `document.snapshot` event too; opening a document reads the saved snapshot
//! and the changes after it. Retention keeps the changes no snapshot covers yet.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use herald_core::Connection;
use herald_core::document::{Change, ChangeError, Document, Origin};
use herald_core::event::EncodedEvent;
use herald_core::protocol::{MAX_CHANGE_ID_BYTES, ServerMessage, code};
use herald_core::room::validate_room;
use herald_core::store::{HistoryQuery, Order};
use herald_core::{Event, EventStore, Identity, Outgoing, StoreError};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{OnceCell, mpsc};
use uuid::Uuid;

use super::signals::Outlet;
use crate::http::error::AppError;

pub const ROOM_PREFIX: &str = "document:";
pub const CHANGE: &str = "document.change";
pub const SNAPSHOT: &str = "document.snapshot";
/// Changes read from the store per query when a document is opened.
const PAGE: usize = 500;

/// The events of `batch` of one of the `kinds` in a room `{prefix}{name}`, with that name, in
/// order: what a document kind folds in.
pub fn in_rooms<'a>(
    batch: &'a [Arc<EncodedEvent>],
    prefix: &'a str,
    kinds: &'a [&str],
) -> impl Iterator<Item = (&'a str, &'a Arc<EncodedEvent>)> {
    batch.iter().filter_map(move |encoded| {
        let event = &encoded.event;
        if !kinds.contains(&event.kind.as_str()) {
            return None;
        }
        Some((event.room_id.as_deref()?.strip_prefix(prefix)?, encoded))
    })
}

/// The room of document `id`, if `id` is a valid name.
pub fn room_of(id: &str) -> Result<String, AppError> {
    let room = format!("{ROOM_PREFIX}{id}");
    if id.is_empty() {
        return Err(AppError::bad_request("documentId must not be empty"));
    }
    validate_room(&room).map_err(|e| AppError::bad_request(format!("documentId: {e}")))?;
    Ok(room)
}

/// The bounds of every document on this node (the same on every node of a cluster: they
/// take part in deciding what a change does).
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Changes kept for transforming late `baseVersion`s and for catching up.
    pub window: usize,
    /// The longest content, in UTF-16 code units.
    pub max_len: usize,
    pub snapshot_every: u64,
}

/// A snapshot the author's node is to publish.
pub struct SnapshotDue {
    pub room: String,
    /// `None`: an anonymous participant of a public document.
    pub author: Option<Identity>,
    pub kind: &'static str,
    pub data: Value,
    /// The last change the snapshot holds.
    pub seq: u64,
}

/// The documents open on this node (those with a participant here), and the participants on
/// the other nodes of a cluster.
pub struct Documents {
    open: Mutex<HashMap<String, Arc<Entry>>>,
    bounds: Bounds,
    snapshots: mpsc::UnboundedSender<SnapshotDue>,
    /// Participants on the other nodes, by document id (open here or not), as their nodes'
    /// signals describe them.
    remote: Mutex<HashMap<String, Vec<RemoteParticipant>>>,
    /// Joins, leaves and cursors to the other nodes; unset when embedded.
    pub(super) signals: Outlet,
}

struct RemoteParticipant {
    node: String,
    conn: String,
    user: String,
    cursor: Value,
}

/// What a node tells the others about its participants of a document (room `document:{id}`).
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Signal {
    /// A participant joined (or, in a restatement, is there) with its cursor.
    Joined {
        conn: String,
        user: String,
        cursor: Value,
    },
    Cursor {
        conn: String,
        cursor: Value,
    },
    Left {
        conn: String,
    },
}

struct Entry {
    id: String,
    state: Mutex<Open>,
    loaded: OnceCell<()>,
}

struct Open {
    /// `None` until loaded; meanwhile committed changes wait in `pending`.
    doc: Option<Document>,
    pending: Vec<Arc<EncodedEvent>>,
    /// The last change folded in.
    last_seq: u64,
    participants: Vec<Participant>,
}

struct Participant {
    conn: Arc<Connection>,
    user: String,
    cursor: Value,
    /// Has its snapshot: changes folded before that are in it, not sent.
    ready: bool,
}

/// What a `document.change` event carries.
struct Edit {
    change: Change,
    base: u64,
    /// The id the author's client gave the change.
    change_id: Option<String>,
    connection: Option<Uuid>,
    reference: Option<Value>,
}

impl Edit {
    fn of(event: &Event) -> Option<Self> {
        let d = &event.data;
        let n = |k: &str| d.get(k).and_then(Value::as_u64);
        Some(Self {
            change: Change::new(
                usize::try_from(n("position")?).ok()?,
                usize::try_from(n("length")?).ok()?,
                d.get("text")?.as_str()?,
            ),
            base: n("baseVersion")?,
            change_id: change_id(d),
            connection: d
                .get("connection")
                .and_then(Value::as_str)
                .and_then(|c| Uuid::parse_str(c).ok()),
            reference: d.get("ref").cloned(),
        })
    }
}

/// A `changeId` as `document.change` takes it (a string of 1 to `MAX_CHANGE_ID_BYTES` bytes),
/// from an event's or a snapshot's data.
fn change_id(d: &Value) -> Option<String> {
    d.get("changeId")
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty() && c.len() <= MAX_CHANGE_ID_BYTES)
        .map(str::to_owned)
}

/// The data of the `document.change` event a participant's change is published as.
pub fn change_data(
    base: u64,
    change: &Change,
    change_id: Option<String>,
    connection: Uuid,
    reference: Option<Value>,
) -> Value {
    let mut data = json!({
        "baseVersion": base,
        "position": change.position,
        "length": change.length,
        "text": change.text,
        "connection": connection.to_string(),
        "ref": reference,
    });
    if let Some(c) = change_id {
        data["changeId"] = c.into();
    }
    data
}

fn change_json(c: &Change) -> Value {
    json!({"position": c.position, "length": c.length, "text": c.text})
}

/// A `text_change_applied`'s data: `change` as applied, making `version`, by `origin` (its
/// `changeId` echoed when it has one).
fn applied_json(id: &str, change: &Change, version: u64, origin: &Origin) -> Value {
    let author = &origin.author;
    let mut data = json!({
        "documentId": id,
        "change": change_json(change),
        "version": version,
        "author": (!author.is_empty()).then_some(author),
    });
    if let Some(c) = &origin.change_id {
        data["changeId"] = c.clone().into();
    }
    data
}

/// A document as `GET /api/documents/{id}` and a joining participant see it.
pub struct View {
    pub content: String,
    pub version: u64,
    pub participants: Vec<Value>,
}

impl Open {
    fn send_others(&self, except: Uuid, msg: &Arc<ServerMessage>) {
        for p in self
            .participants
            .iter()
            .filter(|p| p.ready && p.conn.id != except)
        {
            p.conn.send(Outgoing::Message(msg.clone()));
        }
    }

    /// Folds one committed change in; tells its author (if a participant here) what became of
    /// it, and the others what was applied.
    fn fold(&mut self, id: &str, event: &Event, bounds: Bounds) -> Option<SnapshotDue> {
        if event.seq <= self.last_seq {
            return None;
        }
        self.last_seq = event.seq;
        let doc = self.doc.as_mut()?;
        let edit = Edit::of(event)?;
        let origin = Origin::new(
            event.user_id.clone().unwrap_or_default(),
            edit.change_id.clone(),
        );
        let result = doc.apply_from(&edit.change, edit.base, origin.clone());
        let by = |p: &Participant| Some(p.conn.id) == edit.connection;
        match result {
            Ok(applied) => {
                let mut data = applied_json(id, &applied, doc.version(), &origin);
                data["seq"] = event.seq.into();
                let shared = ServerMessage::new("text_change_applied", Some(data.clone()));
                for p in self.participants.iter().filter(|p| p.ready) {
                    let msg = if by(p) {
                        ServerMessage::reply(
                            "text_change_applied",
                            Some(data.clone()),
                            edit.reference.clone(),
                        )
                    } else {
                        shared.clone()
                    };
                    p.conn.send(Outgoing::Message(msg));
                }
                if doc.version() % bounds.snapshot_every.max(1) != 0 {
                    return None;
                }
                // The author's node writes it: one snapshot per due version in the cluster.
                let writer = self.participants.iter().find(|p| by(p))?;
                Some(SnapshotDue {
                    room: event.room_id.clone().unwrap_or_default(),
                    author: writer.conn.identity(),
                    kind: SNAPSHOT,
                    data: snapshot_data(doc, event.seq),
                    seq: event.seq,
                })
            }
            // A resend of a change committed after all (its first copy reached the log before
            // the connection that sent it closed): its author heard of the first copy, as its
            // own change (`changeId`), when it caught up or live.
            Err(ChangeError::Duplicate { .. }) => None,
            Err(e) => {
                if let Some(p) = self.participants.iter().find(|p| by(p)) {
                    p.conn
                        .send(Outgoing::Message(refusal(&e).to_ws(edit.reference)));
                }
                None
            }
        }
    }
}

fn snapshot_data(doc: &Document, through_seq: u64) -> Value {
    let recent: Vec<Value> = doc
        .recent()
        .map(|(c, origin)| {
            let mut r = json!({"change": change_json(c), "author": origin.author});
            if let Some(id) = &origin.change_id {
                r["changeId"] = id.clone().into();
            }
            r
        })
        .collect();
    json!({
        "content": doc.content(),
        "version": doc.version(),
        "throughSeq": through_seq,
        "recent": recent,
    })
}

/// A document as a snapshot (`snapshot_data`) left it (a recent change without `changeId`,
/// as snapshots taken before change ids have them, has none).
fn restore(d: &Value, bounds: Bounds) -> Option<Document> {
    let recent = d
        .get("recent")?
        .as_array()?
        .iter()
        .map(|r| {
            let c = r.get("change")?;
            let n = |k: &str| c.get(k).and_then(Value::as_u64).map(|v| v as usize);
            Some((
                Change::new(n("position")?, n("length")?, c.get("text")?.as_str()?),
                Origin::new(r.get("author")?.as_str()?, change_id(r)),
            ))
        })
        .collect::<Option<Vec<_>>>()?;
    let doc = Document::restore(
        d.get("content")?.as_str()?,
        d.get("version")?.as_u64()?,
        recent,
        bounds.window,
        bounds.max_len,
    );
    Some(doc)
}

/// Why a change was refused, as a client reads it.
pub fn refusal(e: &ChangeError) -> AppError {
    let code = match e {
        ChangeError::TooOld { .. } | ChangeError::Ahead { .. } => code::CONFLICT,
        _ => code::VALIDATION_ERROR,
    };
    let status = match e {
        ChangeError::TooOld { .. } | ChangeError::Ahead { .. } => axum::http::StatusCode::CONFLICT,
        _ => axum::http::StatusCode::BAD_REQUEST,
    };
    AppError::new(status, code, e.to_string())
}

impl Entry {
    fn new(id: &str) -> Arc<Self> {
        Arc::new(Self {
            id: id.to_owned(),
            state: Mutex::new(Open {
                doc: None,
                pending: Vec::new(),
                last_seq: 0,
                participants: Vec::new(),
            }),
            loaded: OnceCell::new(),
        })
    }

    /// Reads the newest snapshot and the changes after it, then folds in what was committed
    /// meanwhile.
    async fn load(&self, store: &dyn EventStore, bounds: Bounds) -> Result<(), StoreError> {
        self.loaded
            .get_or_try_init(|| async {
                let (doc, after) = read(store, &self.id, bounds).await?;
                let mut open = self.state.lock();
                open.doc = Some(doc);
                open.last_seq = after;
                for event in std::mem::take(&mut open.pending) {
                    // Nobody is ready yet: nothing is sent, no snapshot is due.
                    open.fold(&self.id, &event.event, bounds);
                }
                Ok::<(), StoreError>(())
            })
            .await
            .map(|_| ())
    }
}

/// A document from the store: the newest snapshot and the changes after it, and the `seq` of
/// the last change read.
async fn read(
    store: &dyn EventStore,
    id: &str,
    bounds: Bounds,
) -> Result<(Document, u64), StoreError> {
    replay(
        store,
        &format!("{ROOM_PREFIX}{id}"),
        CHANGE,
        |snapshot| {
            snapshot
                .and_then(|(seq, s)| Some((restore(&s, bounds)?, seq)))
                .unwrap_or_else(|| (Document::new(bounds.window, bounds.max_len), 0))
        },
        |doc, event| {
            if let Some(edit) = Edit::of(event) {
                let author = event.user_id.clone().unwrap_or_default();
                // A refused change was refused live too: it changes nothing.
                let _ =
                    doc.apply_from(&edit.change, edit.base, Origin::new(author, edit.change_id));
            }
        },
    )
    .await
}

/// Reads a room's saved snapshot (its `seq` and body) and builds a state from it with `start`
/// (which also returns the `seq` the state holds everything up to), then folds every event of
/// type `kind` after that into it with `each`, oldest first, in pages; returns the state and
/// the `seq` of the last event read.
pub async fn replay<T>(
    store: &dyn EventStore,
    room: &str,
    kind: &str,
    start: impl FnOnce(Option<(u64, Value)>) -> (T, u64),
    mut each: impl FnMut(&mut T, &Event),
) -> Result<(T, u64), StoreError> {
    let (mut state, mut after) = start(store.load_snapshot(room).await?);
    loop {
        let page = store
            .query(HistoryQuery {
                types: vec![kind.to_owned()],
                room_id: Some(room.to_owned()),
                after_seq: Some(after),
                order: Order::OldestFirst,
                limit: PAGE,
                ..Default::default()
            })
            .await?;
        for event in &page {
            each(&mut state, event);
            after = event.seq;
        }
        if page.len() < PAGE {
            return Ok((state, after));
        }
    }
}

impl Documents {
    pub fn new(bounds: Bounds, snapshots: mpsc::UnboundedSender<SnapshotDue>) -> Self {
        Self {
            open: Mutex::default(),
            bounds,
            snapshots,
            remote: Mutex::default(),
            signals: Outlet::default(),
        }
    }

    fn signal(&self, id: &str, signal: Signal) {
        self.signals.send(&format!("{ROOM_PREFIX}{id}"), signal);
    }

    /// Everyone editing document `id`: `local` (this node's participants) and those on the
    /// other nodes.
    fn participants(&self, id: &str, local: &[Participant]) -> Vec<Value> {
        let remote = self.remote.lock();
        let there = remote.get(id).into_iter().flatten();
        local
            .iter()
            .map(|p| json!({"user": p.user, "cursor": p.cursor}))
            .chain(there.map(|p| json!({"user": p.user, "cursor": p.cursor})))
            .collect()
    }

    /// Tells this node's participants of document `id` what a participant elsewhere did:
    /// `notice(participants)` builds the message from everyone's list.
    fn tell_participants(&self, id: &str, notice: impl FnOnce(Vec<Value>) -> Arc<ServerMessage>) {
        let Some(entry) = self.open.lock().get(id).cloned() else {
            return;
        };
        let state = entry.state.lock();
        let msg = notice(self.participants(id, &state.participants));
        state.send_others(Uuid::nil(), &msg);
    }

    /// A signal from `node` about its participants of document `id`.
    pub fn received(&self, node: &str, id: &str, body: Value) {
        let Ok(signal) = serde_json::from_value::<Signal>(body) else {
            return;
        };
        let document = id.to_owned();
        match signal {
            Signal::Joined { conn, user, cursor } => {
                let mut remote = self.remote.lock();
                let list = remote.entry(document).or_default();
                match list.iter_mut().find(|p| p.node == node && p.conn == conn) {
                    Some(p) if p.cursor == cursor => {}
                    Some(p) => {
                        p.cursor = cursor.clone();
                        let user = p.user.clone();
                        drop(remote);
                        self.tell_participants(id, |_| cursor_notice(id, &user, cursor));
                    }
                    None => {
                        list.push(RemoteParticipant {
                            node: node.to_owned(),
                            conn,
                            user: user.clone(),
                            cursor,
                        });
                        drop(remote);
                        self.tell_participants(id, |all| {
                            participants_notice("participant_joined", id, &user, all)
                        });
                    }
                }
            }
            Signal::Cursor { conn, cursor } => {
                let mut remote = self.remote.lock();
                let Some(p) = remote
                    .get_mut(id)
                    .and_then(|l| l.iter_mut().find(|p| p.node == node && p.conn == conn))
                else {
                    return;
                };
                p.cursor = cursor.clone();
                let user = p.user.clone();
                drop(remote);
                self.tell_participants(id, |_| cursor_notice(id, &user, cursor));
            }
            Signal::Left { conn } => self.remote_left(id, |p| p.node == node && p.conn == conn),
        }
    }

    /// Removes the participants elsewhere of document `id` that `gone` picks; this node's
    /// participants are told.
    fn remote_left(&self, id: &str, gone: impl Fn(&RemoteParticipant) -> bool) {
        let mut remote = self.remote.lock();
        let Some(list) = remote.get_mut(id) else {
            return;
        };
        let (left, kept): (Vec<_>, Vec<_>) = std::mem::take(list).into_iter().partition(gone);
        if kept.is_empty() {
            remote.remove(id);
        } else {
            remote.insert(id.to_owned(), kept);
        }
        drop(remote);
        for p in left {
            self.tell_participants(id, |all| {
                participants_notice("participant_left", id, &p.user, all)
            });
        }
    }

    /// Replaces what `node` said of its participants by `signals` (document id, body).
    pub fn restate(&self, node: &str, signals: Vec<(String, Value)>) {
        let present: HashSet<(&str, &str)> = signals
            .iter()
            .filter_map(|(id, body)| {
                let conn = body.get("joined")?.get("conn")?.as_str()?;
                Some((id.as_str(), conn))
            })
            .collect();
        let ids: Vec<String> = self.remote.lock().keys().cloned().collect();
        for id in ids {
            self.remote_left(&id, |p| {
                p.node == node && !present.contains(&(id.as_str(), p.conn.as_str()))
            });
        }
        for (id, body) in signals {
            self.received(node, &id, body);
        }
    }

    /// This node's participants, as the signals that show them to another node.
    pub fn state(&self) -> Vec<(String, Value)> {
        let open: Vec<Arc<Entry>> = self.open.lock().values().cloned().collect();
        let mut signals = Vec::new();
        for entry in open {
            let state = entry.state.lock();
            for p in state.participants.iter().filter(|p| p.ready) {
                let joined = Signal::Joined {
                    conn: p.conn.id.to_string(),
                    user: p.user.clone(),
                    cursor: p.cursor.clone(),
                };
                signals.push((
                    format!("{ROOM_PREFIX}{}", entry.id),
                    serde_json::to_value(joined).expect("serialises"),
                ));
            }
        }
        signals
    }

    /// Folds a committed batch's document changes into the documents open here (called by the
    /// log's fan-out, in `seq` order).
    pub fn fold(&self, batch: &[Arc<EncodedEvent>]) {
        for (id, encoded) in in_rooms(batch, ROOM_PREFIX, &[CHANGE]) {
            let event = &encoded.event;
            let Some(entry) = self.open.lock().get(id).cloned() else {
                continue;
            };
            let mut open = entry.state.lock();
            if open.doc.is_none() {
                open.pending.push(encoded.clone());
                continue;
            }
            if let Some(due) = open.fold(id, event, self.bounds) {
                let _ = self.snapshots.send(due);
            }
        }
    }

    /// Adds `conn` as a participant of document `id` (loading it if needed) and queues what it
    /// needs to start: `document.joined` with the content, or — when it gives the `version` it
    /// has and the changes since are kept — with `caughtUp` and those changes as
    /// `text_change_applied`. The others get `participant_joined`.
    pub async fn join(
        &self,
        store: &dyn EventStore,
        conn: &Arc<Connection>,
        user: String,
        id: &str,
        version: Option<u64>,
        reply_to: Option<Value>,
    ) -> Result<(), AppError> {
        let entry = {
            let mut open = self.open.lock();
            let entry = open
                .entry(id.to_owned())
                .or_insert_with(|| Entry::new(id))
                .clone();
            let mut state = entry.state.lock();
            if !state.participants.iter().any(|p| p.conn.id == conn.id) {
                state.participants.push(Participant {
                    conn: conn.clone(),
                    user: user.clone(),
                    cursor: Value::Null,
                    ready: false,
                });
            }
            drop(state);
            entry
        };
        if let Err(e) = entry.load(store, self.bounds).await {
            self.leave(conn.id, id);
            return Err(e.into());
        }
        let mut state = entry.state.lock();
        let Open {
            doc, participants, ..
        } = &mut *state;
        let doc = doc.as_ref().expect("loaded");
        let Some(me) = participants.iter_mut().find(|p| p.conn.id == conn.id) else {
            return Err(AppError::unavailable("left the document while joining"));
        };
        me.ready = true;
        let missed = version.and_then(|v| doc.changes_since(v).map(|c| (v, c)));
        let list = self.participants(id, participants);
        let mut joined = json!({
            "documentId": id,
            "version": doc.version(),
            "participants": list,
        });
        match missed {
            Some((from, changes)) => {
                joined["caughtUp"] = true.into();
                joined["from"] = from.into();
                conn.send(Outgoing::Message(ServerMessage::reply(
                    "document.joined",
                    Some(joined),
                    reply_to,
                )));
                for (n, (change, origin)) in (from + 1..).zip(changes) {
                    conn.send(Outgoing::Message(ServerMessage::new(
                        "text_change_applied",
                        Some(applied_json(id, change, n, origin)),
                    )));
                }
            }
            None => {
                joined["content"] = doc.content().into();
                conn.send(Outgoing::Message(ServerMessage::reply(
                    "document.joined",
                    Some(joined),
                    reply_to,
                )));
            }
        }
        let notice = participants_notice("participant_joined", id, &user, list);
        for p in participants.iter().filter(|p| p.conn.id != conn.id) {
            p.conn.send(Outgoing::Message(notice.clone()));
        }
        // Sent under the document's lock: it only queues.
        self.signal(
            id,
            Signal::Joined {
                conn: conn.id.to_string(),
                user,
                cursor: Value::Null,
            },
        );
        Ok(())
    }

    /// Removes `conn` from document `id`; the others get `participant_left`. A document with no
    /// participant left here is closed. Whether it was a participant.
    pub fn leave(&self, conn: Uuid, id: &str) -> bool {
        let mut open = self.open.lock();
        let Some(entry) = open.get(id).cloned() else {
            return false;
        };
        let mut state = entry.state.lock();
        let Some(i) = state.participants.iter().position(|p| p.conn.id == conn) else {
            return false;
        };
        let gone = state.participants.swap_remove(i);
        if state.participants.is_empty() {
            drop(state);
            open.remove(id);
        } else {
            let list = self.participants(id, &state.participants);
            state.send_others(
                conn,
                &participants_notice("participant_left", id, &gone.user, list),
            );
        }
        if gone.ready {
            self.signal(
                id,
                Signal::Left {
                    conn: conn.to_string(),
                },
            );
        }
        true
    }

    /// Records `conn`'s cursor and shows it to the other participants (`cursor_move`).
    pub fn move_cursor(&self, conn: Uuid, id: &str, cursor: Value) -> Result<(), AppError> {
        let entry = self.entry(id)?;
        let mut state = entry.state.lock();
        let me = state
            .participants
            .iter_mut()
            .find(|p| p.conn.id == conn)
            .ok_or_else(not_joined)?;
        me.cursor = cursor.clone();
        let user = me.user.clone();
        state.send_others(conn, &cursor_notice(id, &user, cursor.clone()));
        drop(state);
        self.signal(
            id,
            Signal::Cursor {
                conn: conn.to_string(),
                cursor,
            },
        );
        Ok(())
    }

    /// Whether a change by `conn` made on `base` may be published: `conn` is a participant and
    /// `base` is still within the changes kept.
    pub fn check_change(&self, conn: Uuid, id: &str, base: u64) -> Result<(), AppError> {
        let entry = self.entry(id)?;
        let state = entry.state.lock();
        if !state
            .participants
            .iter()
            .any(|p| p.conn.id == conn && p.ready)
        {
            return Err(not_joined());
        }
        let doc = state.doc.as_ref().ok_or_else(not_joined)?;
        doc.check_base(base).map_err(|e| refusal(&e))
    }

    /// The document as this node holds it, or as the store has it when nobody has it open.
    pub async fn view(&self, store: &dyn EventStore, id: &str) -> Result<View, AppError> {
        if let Ok(entry) = self.entry(id) {
            let state = entry.state.lock();
            if let Some(doc) = &state.doc {
                return Ok(View {
                    content: doc.content(),
                    version: doc.version(),
                    participants: self.participants(id, &state.participants),
                });
            }
        }
        let (doc, _) = read(store, id, self.bounds).await?;
        Ok(View {
            content: doc.content(),
            version: doc.version(),
            participants: self.participants(id, &[]),
        })
    }

    fn entry(&self, id: &str) -> Result<Arc<Entry>, AppError> {
        self.open.lock().get(id).cloned().ok_or_else(not_joined)
    }

    pub fn bounds(&self) -> Bounds {
        self.bounds
    }
}

fn participants_notice(
    kind: &'static str,
    id: &str,
    user: &str,
    participants: Vec<Value>,
) -> Arc<ServerMessage> {
    ServerMessage::new(
        kind,
        Some(json!({"documentId": id, "user": user, "participants": participants})),
    )
}

fn cursor_notice(id: &str, user: &str, cursor: Value) -> Arc<ServerMessage> {
    ServerMessage::new(
        "cursor_move",
        Some(json!({"documentId": id, "user": user, "cursor": cursor})),
    )
}

fn not_joined() -> AppError {
    AppError::new(
        axum::http::StatusCode::BAD_REQUEST,
        code::NOT_IN_ROOM,
        "not a participant of this document: send document.join first",
    )
}
