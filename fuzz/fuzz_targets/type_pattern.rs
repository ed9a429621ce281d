//! Event types and type patterns: `TypePattern::parse`, `validate_type`, `prefixes_of` and
//! `TypePattern::matches`. The input is a pattern, optionally followed by a newline and an
//! event type to match. Besides not panicking:
//! - a valid type is at most `MAX_TYPE_LEN` bytes of dot-separated, non-empty segments of
//!   `A-Z a-z 0-9 _ - :`, and parses as the exact pattern of itself, which matches it;
//! - a parsed pattern prints back as the text it was parsed from, and that parses to it again;
//!   an exact pattern holds a valid type, a prefix pattern a valid type and its dot;
//! - a prefix pattern matches a type exactly when the subscription index would find it under
//!   one of the type's `prefixes_of` (the index and `SubscriptionSpec::matches` agree), and
//!   never the bare prefix without its dot;
//! - `*` matches everything.
#![no_main]

use herald_core::TypePattern;
use herald_core::pattern::{MAX_TYPE_LEN, prefixes_of, validate_type};
use libfuzzer_sys::fuzz_target;

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':')
}

fn check_type(kind: &str) {
    let valid = validate_type(kind).is_ok();
    let by_rule = !kind.is_empty()
        && kind.len() <= MAX_TYPE_LEN
        && kind
            .split('.')
            .all(|s| !s.is_empty() && s.chars().all(allowed));
    assert_eq!(valid, by_rule, "validate_type({kind:?})");
    if valid {
        let p = TypePattern::parse(kind).expect("a valid type is a pattern");
        assert_eq!(p, TypePattern::Exact(kind.to_owned()));
        assert!(p.matches(kind));
    }
    let prefixes: Vec<&str> = prefixes_of(kind).collect();
    assert_eq!(prefixes.len(), kind.matches('.').count());
    for w in prefixes.windows(2) {
        assert!(w[0].len() < w[1].len());
    }
    for p in &prefixes {
        assert!(p.ends_with('.') && kind.starts_with(p), "{p:?} of {kind:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (raw, kind) = text.split_once('\n').unwrap_or((text, ""));
    check_type(raw);
    check_type(kind);

    let Ok(pattern) = TypePattern::parse(raw) else {
        return;
    };
    assert_eq!(pattern.to_string(), raw, "prints back");
    assert_eq!(
        TypePattern::parse(&pattern.to_string()).as_ref(),
        Ok(&pattern)
    );
    assert!(raw.len() <= MAX_TYPE_LEN);
    match &pattern {
        TypePattern::All => {
            assert_eq!(raw, "*");
            assert!(pattern.matches(kind));
        }
        TypePattern::Exact(t) => {
            assert!(validate_type(t).is_ok());
            assert_eq!(pattern.matches(kind), t == kind);
        }
        TypePattern::Prefix(p) => {
            let bare = p.strip_suffix('.').expect("a prefix keeps its dot");
            assert!(validate_type(bare).is_ok(), "prefix {p:?}");
            assert!(!pattern.matches(bare));
            assert!(pattern.matches(&format!("{p}x")));
            let indexed = prefixes_of(kind).any(|q| q == p);
            assert_eq!(pattern.matches(kind), indexed, "{p:?} and {kind:?}");
        }
    }
});
