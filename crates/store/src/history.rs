//! A history query as SQL, shared by the SQLite and PostgreSQL stores: both keep the same
//! columns (`seq`, `type`, `user_id`, `room_id`, `ts` in Unix milliseconds, `body`) with the
//! same byte-wise text ordering, so only the placeholder syntax differs.

use herald_core::pattern::TypePattern;
use herald_core::store::{HistoryQuery, Order, ReadAccess};

/// A bound parameter of the statement.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Arg {
    Text(String),
    Int(i64),
}

/// Builds a statement and its arguments; `placeholder(n)` spells the n-th (1-based) one.
struct Builder {
    sql: String,
    args: Vec<Arg>,
    placeholder: fn(usize) -> String,
}

impl Builder {
    /// Appends `arg` and returns its placeholder.
    fn bind(&mut self, arg: Arg) -> String {
        self.args.push(arg);
        (self.placeholder)(self.args.len())
    }

    fn and(&mut self, condition: &str) {
        self.sql.push_str(" AND ");
        self.sql.push_str(condition);
    }
}

/// `SELECT body FROM {table} WHERE … ORDER BY seq … LIMIT …` for `q`. Type patterns become
/// index range scans: `user.*` is `type >= 'user.' AND type < 'user/'`.
pub(crate) fn select_bodies(
    table: &str,
    q: &HistoryQuery,
    placeholder: fn(usize) -> String,
) -> (String, Vec<Arg>) {
    let mut b = Builder {
        sql: format!("SELECT body FROM {table} WHERE TRUE"),
        args: Vec::new(),
        placeholder,
    };
    let patterns: Vec<TypePattern> = q
        .types
        .iter()
        .filter_map(|t| TypePattern::parse(t).ok())
        .collect();
    if !patterns.is_empty() && !patterns.contains(&TypePattern::All) {
        let mut ors = Vec::new();
        for p in patterns {
            match p {
                TypePattern::Exact(t) => ors.push(format!("type = {}", b.bind(Arg::Text(t)))),
                TypePattern::Prefix(prefix) => {
                    let (low, high) = prefix_range(&prefix);
                    let low = b.bind(Arg::Text(low));
                    let high = b.bind(Arg::Text(high));
                    ors.push(format!("(type >= {low} AND type < {high})"));
                }
                TypePattern::All => unreachable!("handled above"),
            }
        }
        b.and(&format!("({})", ors.join(" OR ")));
    }
    if let Some(u) = &q.user_id {
        let p = b.bind(Arg::Text(u.clone()));
        b.and(&format!("user_id = {p}"));
    }
    if let Some(r) = &q.room_id {
        let p = b.bind(Arg::Text(r.clone()));
        b.and(&format!("room_id = {p}"));
    }
    if let Some(t) = q.since_time {
        let p = b.bind(Arg::Int(t.timestamp_millis()));
        b.and(&format!("ts > {p}"));
    }
    if let Some(s) = q.after_seq {
        let p = b.bind(Arg::Int(s.min(i64::MAX as u64) as i64));
        b.and(&format!("seq > {p}"));
    }
    if let Some(s) = q.until_seq {
        let p = b.bind(Arg::Int(s.min(i64::MAX as u64) as i64));
        b.and(&format!("seq <= {p}"));
    }
    // `Access::read_scope`, as conditions. Private events: `user.*` types belong to their
    // user_id, personal rooms `user:{id}` (`room_id >= 'user:' AND room_id < 'user;'`) to
    // their id. Other rooms: only those matching the reader's room patterns, when it has any.
    if let ReadAccess::Limited { user, rooms } = &q.access {
        let mut own_type = String::from("NOT (type >= 'user.' AND type < 'user/')");
        let mut own_room =
            String::from("room_id IS NULL OR NOT (room_id >= 'user:' AND room_id < 'user;')");
        if let Some(u) = user {
            own_type.push_str(&format!(" OR user_id = {}", b.bind(Arg::Text(u.clone()))));
            own_room.push_str(&format!(
                " OR room_id = {}",
                b.bind(Arg::Text(format!("user:{u}")))
            ));
        }
        b.and(&format!("({own_type}) AND ({own_room})"));
        if let Some(patterns) = rooms {
            rooms_condition(&mut b, patterns);
        }
    }
    let order = match q.order {
        Order::NewestFirst => "DESC",
        Order::OldestFirst => "ASC",
    };
    let limit = b.bind(Arg::Int(q.limit.min(i64::MAX as usize) as i64));
    b.sql
        .push_str(&format!(" ORDER BY seq {order} LIMIT {limit}"));
    (b.sql, b.args)
}

/// Only events outside rooms, in personal rooms (decided by the private-event condition), or
/// in a room one of `patterns` matches (`Access`'s `room_matches`: a name, or a prefix ending
/// in `*`). Prefixes compare the first characters with `substr`, which SQLite and PostgreSQL
/// both count in characters.
fn rooms_condition(b: &mut Builder, patterns: &[String]) {
    if patterns.iter().any(|p| p == "*") {
        return;
    }
    let mut ors = vec![
        "room_id IS NULL".to_owned(),
        "(room_id >= 'user:' AND room_id < 'user;')".to_owned(),
    ];
    for p in patterns {
        match p.strip_suffix('*') {
            Some(prefix) => {
                let len = prefix.chars().count();
                let prefix = b.bind(Arg::Text(prefix.to_owned()));
                ors.push(format!("substr(room_id, 1, {len}) = {prefix}"));
            }
            None => ors.push(format!("room_id = {}", b.bind(Arg::Text(p.clone())))),
        }
    }
    b.and(&format!("({})", ors.join(" OR ")));
}

/// The half-open range of strings starting with `prefix` (which ends in '.').
fn prefix_range(prefix: &str) -> (String, String) {
    let mut upper = prefix[..prefix.len() - 1].to_owned();
    upper.push('/');
    (prefix.to_owned(), upper)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_in_binding_order() {
        let q = HistoryQuery {
            types: vec!["user.*".into()],
            room_id: Some("r".into()),
            access: ReadAccess::Limited {
                user: Some("u".into()),
                rooms: None,
            },
            limit: 5,
            ..Default::default()
        };
        let (sql, args) = select_bodies("t", &q, |n| format!("${n}"));
        assert_eq!(
            sql,
            "SELECT body FROM t WHERE TRUE AND ((type >= $1 AND type < $2)) AND room_id = $3 \
             AND (NOT (type >= 'user.' AND type < 'user/') OR user_id = $4) \
             AND (room_id IS NULL OR NOT (room_id >= 'user:' AND room_id < 'user;') OR room_id = $5) \
             ORDER BY seq DESC LIMIT $6"
        );
        assert_eq!(
            args,
            vec![
                Arg::Text("user.".into()),
                Arg::Text("user/".into()),
                Arg::Text("r".into()),
                Arg::Text("u".into()),
                Arg::Text("user:u".into()),
                Arg::Int(5),
            ]
        );
    }
}
