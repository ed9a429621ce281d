//! Chat text and names as they enter Herald: sanitised, sized and validated before they are
//! stored and shown to other users.

use std::collections::HashSet;
use std::sync::LazyLock;

use herald_core::NewEvent;
use herald_core::access::personal_owner;
use herald_core::event::{CHAT_MESSAGE, CHAT_PRIVATE};
use herald_core::identity::is_unsafe_in_name;
use serde_json::{Value, json};

use crate::http::error::AppError;

/// The tags chat text may keep (seed 001's allow-list); every attribute is dropped.
const ALLOWED_TAGS: [&str; 4] = ["b", "i", "em", "strong"];

/// Longest display name a client may give.
pub const MAX_NAME_LEN: usize = 64;
/// Largest profile object a client may give.
pub const MAX_PROFILE_BYTES: usize = 512;

static SANITIZER: LazyLock<ammonia::Builder<'static>> = LazyLock::new(|| {
    let mut b = ammonia::Builder::empty();
    b.tags(HashSet::from(ALLOWED_TAGS))
        .clean_content_tags(HashSet::from(["script", "style"]))
        .link_rel(None);
    b
});

/// Chat text with every tag but `b`, `i`, `em`, `strong` removed (with the content of
/// `script` and `style`), and the rest HTML-escaped as ammonia serialises it. Text without
/// `<`, `>` or `&` (most chat) comes out of ammonia unchanged, so it skips the HTML parse.
pub fn sanitize(text: &str) -> Result<String, AppError> {
    let clean = if text.contains(['<', '>', '&', '\u{a0}']) {
        SANITIZER.clean(text).to_string()
    } else {
        text.to_owned()
    };
    if clean.trim().is_empty() {
        return Err(AppError::bad_request("text must not be empty"));
    }
    Ok(clean)
}

/// Makes a chat event what chat is, whichever path it came by (the `chat` command, WebSocket
/// `publish`, HTTP): a `chat.message`'s `text` is sanitised and its `user` is the author the
/// server knows, never one the client claims; a `chat.private` is `{text, user, to}`, sent by
/// its user to the owner of the personal room it is published in. A `chat.message` with
/// neither `text` nor `user` is no message a chat client shows, and is left as it is.
pub fn sign(event: &mut NewEvent, author: Value) -> Result<(), AppError> {
    let private = match event.kind.as_str() {
        CHAT_MESSAGE => false,
        CHAT_PRIVATE => true,
        _ => return Ok(()),
    };
    let shown = event
        .data
        .as_object()
        .is_some_and(|d| d.contains_key("text") || d.contains_key("user"));
    if !private && !shown {
        return Ok(());
    }
    let text = event
        .data
        .get("text")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            AppError::bad_request(format!("{}: data.text must be a string", event.kind))
        })?;
    let text = sanitize(text)?;
    if private {
        let to = event
            .room_id
            .as_deref()
            .and_then(personal_owner)
            .ok_or_else(|| {
                AppError::bad_request("chat.private goes to a personal room: roomId user:{id}")
            })?;
        event.data = json!({"text": text, "user": event.user_id, "to": to});
    } else if let Some(data) = event.data.as_object_mut() {
        data.insert("text".into(), text.into());
        data.insert("user".into(), author);
    }
    Ok(())
}

/// The profile a client shows in a room (seed 001's `user`): a plain-text name of at most
/// `MAX_NAME_LEN` characters, or a small object whose `name` is one (`{id, name, avatar}`).
pub fn profile(given: Option<Value>) -> Result<Option<Value>, AppError> {
    let invalid = || {
        AppError::bad_request(format!(
            "user must be a name (1..={MAX_NAME_LEN} characters of plain text) or an object \
             with such a name, at most {MAX_PROFILE_BYTES} bytes"
        ))
    };
    let name_ok = |name: &str| {
        let name = name.trim();
        !name.is_empty()
            && name.chars().count() <= MAX_NAME_LEN
            && !name
                .chars()
                .any(|c| is_unsafe_in_name(c) || matches!(c, '<' | '>' | '&'))
    };
    match given {
        None => Ok(None),
        Some(Value::String(s)) if name_ok(&s) => Ok(Some(Value::String(s.trim().to_owned()))),
        Some(Value::Object(m))
            if m.get("name").and_then(Value::as_str).is_some_and(name_ok)
                && Value::Object(m.clone()).to_string().len() <= MAX_PROFILE_BYTES =>
        {
            Ok(Some(Value::Object(m)))
        }
        Some(_) => Err(invalid()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_allowed_tags() {
        assert_eq!(
            sanitize(r#"<b>bold</b> <a href="x" onclick="y">link</a><script>alert(1)</script>"#)
                .unwrap(),
            "<b>bold</b> link"
        );
        assert_eq!(
            sanitize(r#"<em class="c">e</em><img src=x onerror=alert(1)>"#).unwrap(),
            "<em>e</em>"
        );
        assert_eq!(sanitize("1 < 2 & 3").unwrap(), "1 &lt; 2 &amp; 3");
        assert!(sanitize("<script>x</script>").is_err());
        assert!(sanitize("  ").is_err());
    }

    #[test]
    fn plain_text_skips_the_parse_with_the_same_result() {
        for text in [
            "hello",
            "quotes \" and ' stay",
            "ünïcödé 🎉",
            "a\nb\tc",
            "x = y / 2",
        ] {
            assert_eq!(sanitize(text).unwrap(), SANITIZER.clean(text).to_string());
        }
    }

    #[test]
    fn profiles_are_plain_and_small() {
        use serde_json::json;
        assert_eq!(profile(Some(json!(" Ann "))).unwrap(), Some(json!("Ann")));
        assert_eq!(profile(None).unwrap(), None);
        let john = json!({"id": "u1", "name": "John Doe", "avatar": "https://a/j.png"});
        assert_eq!(profile(Some(john.clone())).unwrap(), Some(john));
        for bad in [
            json!("<b>x</b>"),
            json!("n".repeat(65)),
            json!(""),
            json!(5),
            json!({"id": "x"}),
            json!({"name": "x", "bio": "b".repeat(600)}),
        ] {
            assert!(profile(Some(bad.clone())).is_err(), "{bad}");
        }
    }
}
