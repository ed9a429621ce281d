//! The cluster signal seam: what nodes tell each other that is shown live but never stored —
//! typing, a document's participants and cursors, Yjs awareness.
//!
//! These bypass the log on purpose: they are frequent (a cursor moves 20 times a second), worth
//! nothing after a restart, and need no `seq`. Each signal concerns one room; its body is
//! whatever the room's owner (the hub for typing, the documents for cursors) understands.
//! Delivery is best effort and in order from any one node; what a node says of its own state
//! (someone joined, moved, left) is restated whole whenever signals may have been lost
//! (`SignalReceiver::state`), so the others converge again. Embedded servers have no seam.
//! The Redis implementation is in `herald-redis`.

use serde_json::Value;

/// Sends this node's signals to the other nodes.
pub trait ClusterSignals: Send + Sync {
    /// Sends `body` about `room` to every other node. Never blocks: when the way out is full
    /// the signal is dropped and this node's whole state restated later.
    fn send(&self, room: &str, body: Value);
}

/// What a node does with the others' signals. Called from one task, in the order a node sent
/// them; must not block.
pub trait SignalReceiver: Send + Sync {
    /// A signal from `node` about `room`.
    fn received(&self, node: &str, room: &str, body: Value);

    /// This node's whole state, as the signals that would rebuild it on another node (sent to
    /// a node that arrives, and after signals may have been lost).
    fn state(&self) -> Vec<(String, Value)>;

    /// Everything `node` said is replaced by `signals`, its whole state (empty: it is gone).
    /// Only the differences are shown to this node's clients.
    fn restate(&self, node: &str, signals: Vec<(String, Value)>);
}
