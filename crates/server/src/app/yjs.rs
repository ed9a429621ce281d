//! Yjs documents, served over the y-websocket protocol (`transport::session::yjs`): each one
//! a room (`yjs:{name}`) whose `yjs.update` events are its clients' updates. Every node folds
//! the committed updates into its in-memory `yrs::Doc` (`YDocs::fold`, called by the log's
//! fan-out) and relays them to its own clients; Yjs updates commute, so every node ends with
//! the same state. Every `document_snapshot_every` updates the author's node saves a snapshot
//! (the whole state as one update) in the store's snapshots, which retention leaves alone, and
//! publishes it as a `yjs.snapshot` event (which restarts every node's count); opening a
//! document reads the saved snapshot and the updates after it. Retention keeps the updates no
//! snapshot covers yet. Awareness (cursors, names) is volatile: relayed to the document's other
//! clients here and, as cluster signals, to the other nodes, which relay it to theirs; cleared
//! when a client leaves (or its node is gone). Each connection's awareness is bounded.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use herald_core::Connection;
use herald_core::event::EncodedEvent;
use herald_core::{Event, EventStore, Outgoing, StoreError};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{OnceCell, mpsc};
use uuid::Uuid;
use yrs::sync::awareness::AwarenessUpdateEntry;
use yrs::sync::{AwarenessUpdate, Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{ClientID, Doc, ReadTxn, StateVector, Transact, Update};

use super::documents::{SnapshotDue, in_rooms, replay};
use super::signals::Outlet;

pub const ROOM_PREFIX: &str = "yjs:";
pub const UPDATE: &str = "yjs.update";
pub const SNAPSHOT: &str = "yjs.snapshot";

/// The Yjs documents open on this node (those with a client here), and the awareness of the
/// clients on the other nodes of a cluster.
pub struct YDocs {
    open: Mutex<HashMap<String, Arc<Entry>>>,
    snapshot_every: u64,
    snapshots: mpsc::UnboundedSender<SnapshotDue>,
    /// Awareness states on the other nodes, by document name (open here or not), then by
    /// (node, connection).
    remote: Mutex<HashMap<String, RemoteClients>>,
    /// Awareness to the other nodes; unset when embedded.
    pub(super) signals: Outlet,
}

/// One connection's awareness states, by Yjs client id.
type States = HashMap<u64, AwarenessUpdateEntry>;

/// The states of a document's clients on the other nodes, by (node, connection).
type RemoteClients = HashMap<(String, String), States>;

/// Awareness states one connection may hold: a y-websocket client has one (its document's
/// client id); a few more allow an app with several documents on one socket.
pub const MAX_AWARENESS_STATES: usize = 8;
/// The largest awareness state, in bytes of JSON: a name, a colour and a selection, not a
/// payload.
pub const MAX_AWARENESS_BYTES: usize = 4096;

/// What a node tells the others about its clients' awareness (room `yjs:{name}`).
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Signal {
    /// A client's awareness update (the y-protocols encoding, base64).
    Awareness { conn: String, update: String },
    /// A client left: its states are cleared.
    Left { conn: String },
}

struct Entry {
    name: String,
    state: Mutex<Open>,
    loaded: OnceCell<()>,
}

#[derive(Default)]
struct Open {
    /// `None` until loaded; meanwhile committed updates wait in `pending`.
    doc: Option<Doc>,
    pending: Vec<Arc<EncodedEvent>>,
    last_seq: u64,
    /// Updates since the newest snapshot: the same count on every node.
    since_snapshot: u64,
    clients: Vec<Client>,
}

struct Client {
    conn: Arc<Connection>,
    ready: bool,
    /// The awareness states this connection announced, by Yjs client id: cleared for the
    /// others when it leaves.
    awareness: States,
}

/// A binary y-websocket frame.
fn frame(message: &Message) -> Outgoing {
    Outgoing::Raw {
        payload: message.encode_v1().into(),
        text: false,
    }
}

fn update_of(event: &Event) -> Option<(Vec<u8>, Option<Uuid>)> {
    let bytes = BASE64.decode(event.data.get("update")?.as_str()?).ok()?;
    let connection = event
        .data
        .get("connection")
        .and_then(Value::as_str)
        .and_then(|c| Uuid::parse_str(c).ok());
    Some((bytes, connection))
}

fn apply(doc: &Doc, update: &[u8]) {
    if let Ok(u) = Update::decode_v1(update) {
        // An update the client sent was checked before it was published.
        let _ = doc.transact_mut().apply_update(u);
    }
}

/// The data of the `yjs.update` event a client's update is published as.
pub fn update_data(update: &[u8], connection: Uuid) -> Value {
    json!({"update": BASE64.encode(update), "connection": connection.to_string()})
}

/// Whether `bytes` is a Yjs update that changes something.
pub fn is_update(bytes: &[u8]) -> Result<bool, String> {
    Update::decode_v1(bytes)
        .map(|u| !u.is_empty())
        .map_err(|e| format!("not a Yjs update: {e}"))
}

impl Open {
    fn fold(&mut self, event: &Event, snapshot_every: u64) -> Option<SnapshotDue> {
        if event.seq <= self.last_seq {
            return None;
        }
        self.last_seq = event.seq;
        let doc = self.doc.as_ref()?;
        if event.kind == SNAPSHOT {
            self.since_snapshot = 0;
            return None;
        }
        let (update, author) = update_of(event)?;
        apply(doc, &update);
        self.since_snapshot += 1;
        let relayed = frame(&Message::Sync(SyncMessage::Update(update)));
        for c in self
            .clients
            .iter()
            .filter(|c| c.ready && Some(c.conn.id) != author)
        {
            c.conn.send(relayed.clone());
        }
        if self.since_snapshot < snapshot_every.max(1) {
            return None;
        }
        // The author's node writes it: one snapshot per due update in the cluster.
        let writer = self.clients.iter().find(|c| Some(c.conn.id) == author)?;
        let state = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        Some(SnapshotDue {
            room: event.room_id.clone().unwrap_or_default(),
            author: writer.conn.identity(),
            data: json!({"update": BASE64.encode(state), "throughSeq": event.seq}),
            kind: SNAPSHOT,
            seq: event.seq,
        })
    }

    /// The awareness states of every client here but `except`, and of `remote` (the clients
    /// on the other nodes).
    fn awareness<'a>(
        &'a self,
        except: Uuid,
        remote: impl Iterator<Item = &'a States>,
    ) -> AwarenessUpdate {
        let clients = self
            .clients
            .iter()
            .filter(|c| c.conn.id != except)
            .map(|c| &c.awareness)
            .chain(remote)
            .flatten()
            .map(|(id, e)| (ClientID::new(*id), e.clone()))
            .collect();
        AwarenessUpdate { clients }
    }

    /// Sends an awareness update to every ready client here but `except`.
    fn relay(&self, except: Option<Uuid>, update: AwarenessUpdate) {
        let relayed = frame(&Message::Awareness(update));
        for c in self
            .clients
            .iter()
            .filter(|c| c.ready && Some(c.conn.id) != except)
        {
            c.conn.send(relayed.clone());
        }
    }
}

/// `states` cleared: each one's `null` state, one clock later (as y-websocket's server clears a
/// client that left).
fn cleared(states: States) -> AwarenessUpdate {
    let clients = states
        .into_iter()
        .map(|(id, e)| {
            let entry = AwarenessUpdateEntry {
                clock: e.clock + 1,
                json: "null".into(),
            };
            (ClientID::new(id), entry)
        })
        .collect();
    AwarenessUpdate { clients }
}

/// Applies `update` to one connection's `states` (a `null` state removes one).
fn record(states: &mut States, update: &AwarenessUpdate) {
    for (id, e) in &update.clients {
        if &*e.json == "null" {
            states.remove(&id.get());
        } else {
            states.insert(id.get(), e.clone());
        }
    }
}

impl YDocs {
    pub fn new(snapshot_every: u64, snapshots: mpsc::UnboundedSender<SnapshotDue>) -> Self {
        Self {
            open: Mutex::default(),
            snapshot_every,
            snapshots,
            remote: Mutex::default(),
            signals: Outlet::default(),
        }
    }

    fn signal(&self, name: &str, signal: Signal) {
        self.signals.send(&format!("{ROOM_PREFIX}{name}"), signal);
    }

    /// Sends an awareness update from elsewhere to this node's clients of document `name`.
    fn relay_here(&self, name: &str, update: AwarenessUpdate) {
        if update.clients.is_empty() {
            return;
        }
        if let Some(entry) = self.open.lock().get(name).cloned() {
            entry.state.lock().relay(None, update);
        }
    }

    /// A signal from `node` about its clients of document `name`.
    pub fn received(&self, node: &str, name: &str, body: Value) {
        let Ok(signal) = serde_json::from_value::<Signal>(body) else {
            return;
        };
        match signal {
            Signal::Awareness { conn, update } => {
                let Some(update) = BASE64
                    .decode(update)
                    .ok()
                    .and_then(|b| AwarenessUpdate::decode_v1(&b).ok())
                else {
                    return;
                };
                {
                    let mut remote = self.remote.lock();
                    let doc = remote.entry(name.to_owned()).or_default();
                    let states = doc.entry((node.to_owned(), conn)).or_default();
                    record(states, &update);
                    doc.retain(|_, states| !states.is_empty());
                    if doc.is_empty() {
                        remote.remove(name);
                    }
                }
                self.relay_here(name, update);
            }
            Signal::Left { conn } => self.remote_left(name, |n, c| n == node && c == conn),
        }
    }

    /// Clears the states of the clients elsewhere of document `name` that `gone` picks (by
    /// node and connection); this node's clients are told.
    fn remote_left(&self, name: &str, gone: impl Fn(&str, &str) -> bool) {
        let states = {
            let mut remote = self.remote.lock();
            let Some(doc) = remote.get_mut(name) else {
                return;
            };
            let left: Vec<(String, String)> =
                doc.keys().filter(|(n, c)| gone(n, c)).cloned().collect();
            let states: States = left
                .iter()
                .filter_map(|k| doc.remove(k))
                .flatten()
                .collect();
            if doc.is_empty() {
                remote.remove(name);
            }
            states
        };
        self.relay_here(name, cleared(states));
    }

    /// Replaces what `node` said of its clients' awareness by `signals` (document name, body).
    pub fn restate(&self, node: &str, signals: Vec<(String, Value)>) {
        let names: Vec<String> = self.remote.lock().keys().cloned().collect();
        for name in names {
            self.remote_left(&name, |n, _| n == node);
        }
        for (name, body) in signals {
            self.received(node, &name, body);
        }
    }

    /// This node's clients' awareness, as the signals that show it to another node.
    pub fn state(&self) -> Vec<(String, Value)> {
        let open: Vec<Arc<Entry>> = self.open.lock().values().cloned().collect();
        let mut signals = Vec::new();
        for entry in open {
            let state = entry.state.lock();
            for c in state.clients.iter().filter(|c| !c.awareness.is_empty()) {
                let update = AwarenessUpdate {
                    clients: c
                        .awareness
                        .iter()
                        .map(|(id, e)| (ClientID::new(*id), e.clone()))
                        .collect(),
                };
                let signal = Signal::Awareness {
                    conn: c.conn.id.to_string(),
                    update: BASE64.encode(update.encode_v1()),
                };
                signals.push((
                    format!("{ROOM_PREFIX}{}", entry.name),
                    serde_json::to_value(signal).expect("serialises"),
                ));
            }
        }
        signals
    }

    /// Folds a committed batch's Yjs updates into the documents open here.
    pub fn fold(&self, batch: &[Arc<EncodedEvent>]) {
        for (name, encoded) in in_rooms(batch, ROOM_PREFIX, &[UPDATE, SNAPSHOT]) {
            let event = &encoded.event;
            let Some(entry) = self.open.lock().get(name).cloned() else {
                continue;
            };
            let mut open = entry.state.lock();
            if open.doc.is_none() {
                open.pending.push(encoded.clone());
                continue;
            }
            if let Some(due) = open.fold(event, self.snapshot_every) {
                let _ = self.snapshots.send(due);
            }
        }
    }

    /// Opens document `name` for `conn` and queues the server's sync step 1 and the other
    /// clients' awareness states.
    pub async fn join(
        &self,
        store: &dyn EventStore,
        conn: &Arc<Connection>,
        name: &str,
    ) -> Result<(), StoreError> {
        let entry = {
            let mut open = self.open.lock();
            let entry = open
                .entry(name.to_owned())
                .or_insert_with(|| {
                    Arc::new(Entry {
                        name: name.to_owned(),
                        state: Mutex::default(),
                        loaded: OnceCell::new(),
                    })
                })
                .clone();
            entry.state.lock().clients.push(Client {
                conn: conn.clone(),
                ready: false,
                awareness: HashMap::new(),
            });
            entry
        };
        if let Err(e) = entry.load(store, self.snapshot_every).await {
            self.leave(conn.id, name);
            return Err(e);
        }
        let mut state = entry.state.lock();
        let sv = state
            .doc
            .as_ref()
            .expect("loaded")
            .transact()
            .state_vector();
        let others = {
            let remote = self.remote.lock();
            state.awareness(
                conn.id,
                remote.get(name).into_iter().flat_map(|d| d.values()),
            )
        };
        if let Some(me) = state.clients.iter_mut().find(|c| c.conn.id == conn.id) {
            me.ready = true;
            conn.send(frame(&Message::Sync(SyncMessage::SyncStep1(sv))));
            if !others.clients.is_empty() {
                conn.send(frame(&Message::Awareness(others)));
            }
        }
        Ok(())
    }

    /// Answers a client's sync step 1 with what it lacks (sync step 2).
    pub fn sync_step_2(&self, name: &str, sv: &StateVector) -> Option<Outgoing> {
        let entry = self.open.lock().get(name).cloned()?;
        let state = entry.state.lock();
        let diff = state.doc.as_ref()?.transact().encode_diff_v1(sv);
        Some(frame(&Message::Sync(SyncMessage::SyncStep2(diff))))
    }

    /// Records `conn`'s awareness update and relays it to the document's other clients, here
    /// and on the other nodes. Refused when it would set another connection's state, hold more
    /// than `MAX_AWARENESS_STATES` states, or one over `MAX_AWARENESS_BYTES`.
    pub fn awareness(&self, conn: Uuid, name: &str, update: AwarenessUpdate) -> Result<(), String> {
        let Some(entry) = self.open.lock().get(name).cloned() else {
            return Ok(());
        };
        let state = &mut *entry.state.lock();
        if let Some(big) = update
            .clients
            .values()
            .find(|e| e.json.len() > MAX_AWARENESS_BYTES)
        {
            return Err(format!(
                "an awareness state is {} bytes; at most {MAX_AWARENESS_BYTES}",
                big.json.len()
            ));
        }
        let owned_elsewhere = |id: u64| {
            state
                .clients
                .iter()
                .any(|c| c.conn.id != conn && c.awareness.contains_key(&id))
                || self
                    .remote
                    .lock()
                    .get(name)
                    .is_some_and(|d| d.values().any(|s| s.contains_key(&id)))
        };
        if let Some(id) = update.clients.keys().find(|id| owned_elsewhere(id.get())) {
            return Err(format!(
                "awareness client {id} belongs to another connection"
            ));
        }
        let Some(me) = state.clients.iter_mut().find(|c| c.conn.id == conn) else {
            return Ok(());
        };
        let mut after = me.awareness.clone();
        record(&mut after, &update);
        if after.len() > MAX_AWARENESS_STATES {
            return Err(format!(
                "a connection may hold at most {MAX_AWARENESS_STATES} awareness states"
            ));
        }
        me.awareness = after;
        let encoded = BASE64.encode(update.encode_v1());
        state.relay(Some(conn), update);
        // Sent under the document's lock, so the others hear this before the client's leave.
        self.signal(
            name,
            Signal::Awareness {
                conn: conn.to_string(),
                update: encoded,
            },
        );
        Ok(())
    }

    /// Every other client's awareness state (the answer to an awareness query).
    pub fn awareness_of_others(&self, conn: Uuid, name: &str) -> Option<Outgoing> {
        let entry = self.open.lock().get(name).cloned()?;
        let state = entry.state.lock();
        let remote = self.remote.lock();
        let remote = remote.get(name).into_iter().flat_map(|d| d.values());
        Some(frame(&Message::Awareness(state.awareness(conn, remote))))
    }

    /// Removes `conn`; its awareness states are cleared for the others (a `null` state, as
    /// y-websocket's server does). A document with no client left here is closed.
    pub fn leave(&self, conn: Uuid, name: &str) {
        let mut open = self.open.lock();
        let Some(entry) = open.get(name).cloned() else {
            return;
        };
        let mut state = entry.state.lock();
        let Some(i) = state.clients.iter().position(|c| c.conn.id == conn) else {
            return;
        };
        let gone = state.clients.swap_remove(i);
        if !gone.awareness.is_empty() {
            self.signal(
                name,
                Signal::Left {
                    conn: conn.to_string(),
                },
            );
            state.relay(None, cleared(gone.awareness));
        }
        if state.clients.is_empty() {
            drop(state);
            open.remove(name);
        }
    }
}

impl Entry {
    async fn load(&self, store: &dyn EventStore, snapshot_every: u64) -> Result<(), StoreError> {
        self.loaded
            .get_or_try_init(|| async {
                let ((doc, since_snapshot), after) = replay(
                    store,
                    &format!("{ROOM_PREFIX}{}", self.name),
                    UPDATE,
                    |snapshot| {
                        let doc = Doc::new();
                        let after = snapshot.and_then(|(seq, s)| {
                            let update = BASE64.decode(s.get("update")?.as_str()?).ok()?;
                            apply(&doc, &update);
                            Some(seq)
                        });
                        ((doc, 0u64), after.unwrap_or(0))
                    },
                    |(doc, n), event| {
                        if let Some((update, _)) = update_of(event) {
                            apply(doc, &update);
                            *n += 1;
                        }
                    },
                )
                .await?;
                let mut open = self.state.lock();
                open.doc = Some(doc);
                open.last_seq = after;
                open.since_snapshot = since_snapshot;
                for event in std::mem::take(&mut open.pending) {
                    // Nobody is ready yet: nothing is relayed.
                    let _ = open.fold(&event.event, snapshot_every);
                }
                Ok::<(), StoreError>(())
            })
            .await
            .map(|_| ())
    }
}
