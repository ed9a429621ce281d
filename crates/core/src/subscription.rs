//! Subscriptions (type patterns plus filters) and the index that finds, for a published event,
//! only the subscriptions that can match it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::connection::Connection;
use crate::event::Event;
use crate::pattern::{TypePattern, prefixes_of};

/// Filters narrowing a subscription, as sent by clients (`filters` in `subscribe`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Filters {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_id: Option<String>,
    /// Equality on top-level fields of the event's `data`.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub custom: Map<String, Value>,
}

impl Filters {
    pub fn matches(&self, event: &Event) -> bool {
        equal(&self.room_id, &event.room_id)
            && equal(&self.user_id, &event.user_id)
            && self.matches_data(event)
    }

    /// The `custom` filters alone: the one part of a match that depends on more than the
    /// event's type, room and user.
    pub fn matches_data(&self, event: &Event) -> bool {
        self.custom
            .iter()
            .all(|(k, v)| event.data.get(k) == Some(v))
    }
}

/// A filter that is absent, or asks for what the event has.
fn equal(want: &Option<String>, got: &Option<String>) -> bool {
    want.is_none() || want == got
}

/// What a client asks for: at least one type pattern, plus filters.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionSpec {
    pub patterns: Vec<TypePattern>,
    pub filters: Filters,
}

pub const MAX_PATTERNS: usize = 32;
/// Keys of `custom` filters per subscription.
pub const MAX_CUSTOM_FILTERS: usize = 16;
/// The `custom` filters' size as JSON, per subscription.
pub const MAX_CUSTOM_BYTES: usize = 1024;

impl SubscriptionSpec {
    pub fn parse(event_types: &[String], filters: Filters) -> Result<Self, String> {
        if event_types.is_empty() {
            return Err("eventTypes must list at least one event type or pattern".into());
        }
        if event_types.len() > MAX_PATTERNS {
            return Err(format!(
                "eventTypes may list at most {MAX_PATTERNS} patterns"
            ));
        }
        if filters.custom.len() > MAX_CUSTOM_FILTERS {
            return Err(format!(
                "filters.custom may hold at most {MAX_CUSTOM_FILTERS} fields"
            ));
        }
        if Value::Object(filters.custom.clone()).to_string().len() > MAX_CUSTOM_BYTES {
            return Err(format!(
                "filters.custom may take at most {MAX_CUSTOM_BYTES} bytes as JSON"
            ));
        }
        let mut patterns = Vec::with_capacity(event_types.len());
        for t in event_types {
            let p = TypePattern::parse(t)?;
            if !patterns.contains(&p) {
                patterns.push(p);
            }
        }
        Ok(Self { patterns, filters })
    }

    /// Whether an event matches one of the patterns and every filter.
    pub fn matches(&self, event: &Event) -> bool {
        self.patterns.iter().any(|p| p.matches(&event.kind)) && self.filters.matches(event)
    }

    /// About what the subscription costs to keep, in bytes: what the connection's
    /// subscription budget counts. Each pattern is an entry in the index's buckets besides its
    /// text: ~400 bytes a pattern were measured for the largest subscriptions
    /// (tests/hostile_clients.rs), 256 of them overhead.
    pub fn weight(&self) -> usize {
        let patterns: usize = self
            .patterns
            .iter()
            .map(|p| p.to_string().len() + 256)
            .sum();
        let ids = [&self.filters.user_id, &self.filters.room_id]
            .iter()
            .map(|f| f.as_ref().map_or(0, String::len))
            .sum::<usize>();
        let custom: usize = self
            .filters
            .custom
            .iter()
            .map(|(k, v)| k.len() + v.to_string().len())
            .sum();
        256 + patterns + ids + custom
    }

    pub fn event_types(&self) -> Vec<String> {
        self.patterns.iter().map(|p| p.to_string()).collect()
    }
}

/// One live subscription, owned by one connection.
#[derive(Debug)]
pub struct Subscription {
    pub id: Uuid,
    pub spec: SubscriptionSpec,
    pub connection: Arc<Connection>,
    /// Every matching event with a greater `seq` has been (or will be) queued on the
    /// connection for this subscription: the fan-out head when it was made, or where its
    /// resume started.
    pub from_seq: AtomicU64,
    /// `spec.weight()`, counted against its connection's subscription budget.
    pub weight: usize,
}

/// Subscriptions grouped by the room they filter on, so an event in room R visits only the
/// subscriptions for R and those without a room filter.
#[derive(Debug, Default)]
struct Bucket {
    any_room: HashMap<Uuid, Arc<Subscription>>,
    by_room: HashMap<String, HashMap<Uuid, Arc<Subscription>>>,
}

impl Bucket {
    fn insert(&mut self, sub: &Arc<Subscription>) {
        match &sub.spec.filters.room_id {
            Some(r) => self.by_room.entry(r.clone()).or_default(),
            None => &mut self.any_room,
        }
        .insert(sub.id, sub.clone());
    }

    fn remove(&mut self, sub: &Subscription) {
        match &sub.spec.filters.room_id {
            Some(r) => {
                if let Some(m) = self.by_room.get_mut(r) {
                    m.remove(&sub.id);
                    if m.is_empty() {
                        self.by_room.remove(r);
                    }
                }
            }
            None => {
                self.any_room.remove(&sub.id);
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.any_room.is_empty() && self.by_room.is_empty()
    }

    /// The subscriptions whose room filter the event passes: those without one, and those for
    /// its room.
    fn candidates<'a>(&'a self, event: &Event) -> impl Iterator<Item = &'a Arc<Subscription>> {
        let room = event.room_id.as_ref().and_then(|r| self.by_room.get(r));
        self.any_room
            .values()
            .chain(room.into_iter().flat_map(|m| m.values()))
    }
}

/// Exact types and prefixes are hash lookups; a publish of `a.b.c` costs three lookups (`a.b.c`,
/// `a.`, `a.b.`) plus the wildcard bucket, then one filter check per candidate.
#[derive(Debug, Default)]
pub struct SubscriptionIndex {
    exact: HashMap<String, Bucket>,
    prefix: HashMap<String, Bucket>,
    all: Bucket,
    len: usize,
}

impl SubscriptionIndex {
    pub fn insert(&mut self, sub: Arc<Subscription>) {
        for p in &sub.spec.patterns {
            match p {
                TypePattern::All => self.all.insert(&sub),
                TypePattern::Exact(t) => self.exact.entry(t.clone()).or_default().insert(&sub),
                TypePattern::Prefix(t) => self.prefix.entry(t.clone()).or_default().insert(&sub),
            }
        }
        self.len += 1;
    }

    pub fn remove(&mut self, sub: &Subscription) {
        for p in &sub.spec.patterns {
            match p {
                TypePattern::All => self.all.remove(sub),
                TypePattern::Exact(t) => remove_from(&mut self.exact, t, sub),
                TypePattern::Prefix(t) => remove_from(&mut self.prefix, t, sub),
            }
        }
        self.len -= 1;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every subscription whose patterns and room and user filters match `event` (the room
    /// compared by the lookup, not per subscription: that was a measurable share of fan-out).
    /// They are the same for every event with its type, room and user, so the hub looks them
    /// up once for such a run of events and checks only the `custom` filters
    /// (`Filters::matches_data`) per event. A subscription with several matching patterns may
    /// appear more than once; the hub delivers once per connection.
    pub fn for_each_route_match<'a>(
        &'a self,
        event: &Event,
        mut f: impl FnMut(&'a Arc<Subscription>),
    ) {
        let buckets = self
            .exact
            .get(&event.kind)
            .into_iter()
            .chain(prefixes_of(&event.kind).filter_map(|p| self.prefix.get(p)))
            .chain(std::iter::once(&self.all));
        for bucket in buckets {
            for sub in bucket.candidates(event) {
                if equal(&sub.spec.filters.user_id, &event.user_id) {
                    f(sub);
                }
            }
        }
    }
}

fn remove_from(map: &mut HashMap<String, Bucket>, key: &str, sub: &Subscription) {
    if let Some(b) = map.get_mut(key) {
        b.remove(sub);
        if b.is_empty() {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn custom_filters_are_bounded_in_keys_and_bytes() {
        let types = vec!["a.b".to_owned()];
        let with = |custom: Map<String, Value>| {
            SubscriptionSpec::parse(
                &types,
                Filters {
                    custom,
                    ..Filters::default()
                },
            )
        };
        let many: Map<String, Value> = (0..=MAX_CUSTOM_FILTERS)
            .map(|i| (format!("k{i}"), json!(i)))
            .collect();
        assert!(with(many).unwrap_err().contains("at most 16 fields"));
        let mut big = Map::new();
        big.insert("k".into(), json!("v".repeat(MAX_CUSTOM_BYTES)));
        assert!(with(big).unwrap_err().contains("bytes"));
        let mut fine = Map::new();
        fine.insert("k".into(), json!("v"));
        assert!(with(fine).is_ok());
    }
}
