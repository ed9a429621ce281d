//! Event-type patterns: `chat.message` (exact), `user.*` (every type under `user.`), `*` (all).

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TypePattern {
    All,
    Exact(String),
    /// Holds the prefix including its trailing dot: `user.*` is stored as `user.`.
    Prefix(String),
}

pub const MAX_TYPE_LEN: usize = 128;

impl TypePattern {
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw == "*" {
            return Ok(Self::All);
        }
        if raw.is_empty() || raw.len() > MAX_TYPE_LEN {
            return Err(format!(
                "event type pattern must be 1..={MAX_TYPE_LEN} characters"
            ));
        }
        if let Some(prefix) = raw.strip_suffix(".*") {
            validate_type(prefix)?;
            return Ok(Self::Prefix(format!("{prefix}.")));
        }
        validate_type(raw)?;
        Ok(Self::Exact(raw.to_owned()))
    }

    pub fn matches(&self, kind: &str) -> bool {
        match self {
            Self::All => true,
            Self::Exact(t) => t == kind,
            Self::Prefix(p) => kind.starts_with(p.as_str()),
        }
    }
}

impl fmt::Display for TypePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("*"),
            Self::Exact(t) => f.write_str(t),
            Self::Prefix(p) => write!(f, "{p}*"),
        }
    }
}

/// An event type is dot-separated segments of letters, digits, `_`, `-` and `:`.
pub fn validate_type(kind: &str) -> Result<(), String> {
    let ok = !kind.is_empty()
        && kind.len() <= MAX_TYPE_LEN
        && kind.split('.').all(|seg| {
            !seg.is_empty()
                && seg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':'))
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid event type {kind:?}: use dot-separated segments of letters, digits, '_', '-', ':' (at most {MAX_TYPE_LEN} characters)"
        ))
    }
}

/// The prefixes of a type under which `Prefix` patterns are indexed: `a.b.c` → `a.`, `a.b.`.
pub fn prefixes_of(kind: &str) -> impl Iterator<Item = &str> {
    kind.match_indices('.').map(move |(i, _)| &kind[..=i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_matches() {
        assert_eq!(TypePattern::parse("*").unwrap(), TypePattern::All);
        let p = TypePattern::parse("user.*").unwrap();
        assert!(p.matches("user.notification"));
        assert!(p.matches("user.a.b"));
        assert!(!p.matches("user"));
        assert!(!p.matches("users.x"));
        let e = TypePattern::parse("chat.message").unwrap();
        assert!(e.matches("chat.message"));
        assert!(!e.matches("chat.messages"));
        assert_eq!(p.to_string(), "user.*");
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            ".",
            "a..b",
            "a.",
            "has space",
            "*.x",
            "a.*.b",
            &"x".repeat(200),
        ] {
            assert!(TypePattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn prefixes() {
        assert_eq!(prefixes_of("a.b.c").collect::<Vec<_>>(), vec!["a.", "a.b."]);
        assert_eq!(prefixes_of("plain").count(), 0);
    }
}
