//! The cluster presence seam: who is in a room on the *other* nodes of a cluster.
//!
//! Each node's `RoomDirectory` stays the source for its own fan-out; the hub consults a
//! `ClusterPresence` (set once at start-up; embedded servers have none) so that
//! `room_joined.users`, presence lists and `user_joined`/`user_left` are cluster-wide: a member
//! arrives when its first connection anywhere enters the room, and departs when its last one
//! anywhere leaves. The Redis implementation is in `herald-redis`.

use std::collections::HashMap;

use serde_json::Value;

use crate::room::{Member, Presence};

pub trait ClusterPresence: Send + Sync {
    /// Members present in `room` on other nodes, each once, with its connections there.
    fn remote(&self, room: &str) -> Vec<(Member, usize)>;

    /// This node now has `connections` connections of `member` in `room` (0: none left).
    /// Called under the hub's write lock, so it must not block.
    fn local_changed(&self, room: &str, member: &Member, connections: usize);
}

/// Local and remote members merged: each member once (by key) with its connections summed,
/// sorted by name.
pub fn union<'a>(
    local: impl Iterator<Item = (&'a Member, usize)>,
    remote: Vec<(Member, usize)>,
) -> Vec<(Member, usize)> {
    let mut merged: HashMap<String, (Member, usize)> = remote
        .into_iter()
        .map(|(m, n)| (m.key.clone(), (m, n)))
        .collect();
    for (member, n) in local {
        merged
            .entry(member.key.clone())
            .or_insert_with(|| (member.clone(), 0))
            .1 += n;
    }
    let mut list: Vec<(Member, usize)> = merged.into_values().collect();
    list.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    list
}

/// Everyone present as others see them (profiles).
pub fn users(members: &[(Member, usize)]) -> Vec<Value> {
    members.iter().map(|(m, _)| m.profile.clone()).collect()
}

/// Presence entries, as `GET /api/rooms/{room}/presence` lists them.
pub fn presence(members: Vec<(Member, usize)>) -> Vec<Presence> {
    members
        .into_iter()
        .map(|(m, connections)| Presence {
            user_id: m.user_id,
            name: m.name,
            connections,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_on_several_nodes_is_listed_once_with_its_connections_summed() {
        let (alice, bob) = (Member::user("alice"), Member::user("bob"));
        let merged = union(
            [(&bob, 1), (&alice, 2)].into_iter(),
            vec![(Member::user("carol"), 1), (Member::user("alice"), 3)],
        );
        assert_eq!(users(&merged), ["alice", "bob", "carol"]);
        let counts: Vec<usize> = presence(merged).iter().map(|p| p.connections).collect();
        assert_eq!(counts, [5, 1, 1]);
    }
}
