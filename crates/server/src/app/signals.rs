//! The other nodes' signals (`herald_core::signal`), each to the part of this node it concerns:
//! a document's participants and cursors (rooms `document:{id}`), a Yjs document's awareness
//! (`yjs:{name}`), typing in any other room (the hub).

use std::sync::{Arc, OnceLock};

use herald_core::Hub;
use herald_core::signal::{ClusterSignals, SignalReceiver};
use serde::Serialize;
use serde_json::Value;

use super::documents::{self, Documents};
use super::yjs::{self, YDocs};

pub(super) struct Signalled {
    pub(super) hub: Arc<Hub>,
    pub(super) documents: Arc<Documents>,
    pub(super) yjs: Arc<YDocs>,
}

impl SignalReceiver for Signalled {
    fn received(&self, node: &str, room: &str, body: Value) {
        if let Some(id) = room.strip_prefix(documents::ROOM_PREFIX) {
            self.documents.received(node, id, body);
        } else if let Some(name) = room.strip_prefix(yjs::ROOM_PREFIX) {
            self.yjs.received(node, name, body);
        } else {
            self.hub.remote_typing(room, body);
        }
    }

    fn state(&self) -> Vec<(String, Value)> {
        let mut state = self.documents.state();
        state.extend(self.yjs.state());
        state
    }

    fn restate(&self, node: &str, signals: Vec<(String, Value)>) {
        let (mut documents, mut yjs) = (Vec::new(), Vec::new());
        for (room, body) in signals {
            if let Some(id) = room.strip_prefix(documents::ROOM_PREFIX) {
                documents.push((id.to_owned(), body));
            } else if let Some(name) = room.strip_prefix(yjs::ROOM_PREFIX) {
                yjs.push((name.to_owned(), body));
            }
        }
        self.documents.restate(node, documents);
        self.yjs.restate(node, yjs);
    }
}

/// Where a part of this node sends its signals; unset when embedded (then nothing is sent).
#[derive(Default)]
pub(super) struct Outlet(OnceLock<Arc<dyn ClusterSignals>>);

impl Outlet {
    /// Connects the outlet (once, at start-up).
    pub(super) fn connect(&self, signals: Arc<dyn ClusterSignals>) {
        if self.0.set(signals).is_err() {
            panic!("cluster signals are set once");
        }
    }

    pub(super) fn send(&self, room: &str, signal: impl Serialize) {
        if let Some(signals) = self.0.get() {
            signals.send(room, serde_json::to_value(signal).expect("serialises"));
        }
    }
}
