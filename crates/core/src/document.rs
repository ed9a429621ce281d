//! Collaborative text documents: operational transformation over UTF-16 code units (the
//! positions a browser's strings count), and a `Document` that applies changes in one order —
//! the log's — transforming each against the changes applied since the version it was made on.
//!
//! A change replaces one range with a text. Two concurrent changes are merged so that both
//! sides converge (`apply(apply(s, a), transform(b, a)) == apply(apply(s, b), transform(a, b))`):
//! what either deleted is gone, both inserted texts survive in a deterministic order, except
//! that a text inserted strictly inside a range the other change deleted is deleted with it
//! (a change is one range, so it cannot delete around a text it never saw).

use std::collections::VecDeque;

/// One edit: delete `length` code units at `position`, then insert `text` there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub position: usize,
    pub length: usize,
    pub text: String,
}

impl Change {
    pub fn new(position: usize, length: usize, text: impl Into<String>) -> Self {
        Self {
            position,
            length,
            text: text.into(),
        }
    }

    /// The inserted text's length in UTF-16 code units.
    pub fn text_len(&self) -> usize {
        self.text.encode_utf16().count()
    }

    fn end(&self) -> usize {
        self.position + self.length
    }

    /// Whether it changes nothing.
    pub fn is_noop(&self) -> bool {
        self.length == 0 && self.text.is_empty()
    }
}

/// `x` rewritten to apply after `y`, where both were made on the same content. `x_first`:
/// `x` comes before `y` in the document's order, which decides whose text goes first when
/// both insert at the same place.
pub fn transform(x: &Change, y: &Change, x_first: bool) -> Change {
    let (xp, xe, yp, ye) = (x.position, x.end(), y.position, y.end());
    let y_len = y.text_len();
    let shift = |p: usize| p - y.length + y_len;
    // `y` lies strictly inside what `x` deletes: `x` deletes `y`'s text too.
    if xp < yp && ye < xe {
        return Change::new(xp, x.length - y.length + y_len, x.text.clone());
    }
    // `x` lies strictly inside what `y` deleted: nothing of it is left.
    if yp < xp && xe < ye {
        return Change::new(yp, 0, "");
    }
    // Where both texts meet, the one starting earlier goes first, then the shorter range,
    // then the one first in the document's order.
    let x_text_first = (xp, x.length, !x_first) < (yp, y.length, x_first);
    let start = if xp < yp {
        xp
    } else if xp > ye {
        shift(xp)
    } else if x_text_first {
        yp
    } else {
        yp + y_len
    };
    let end = if xe < yp {
        xe
    } else if xe > ye {
        shift(xe)
    } else if xp < yp {
        yp
    } else {
        start
    };
    Change::new(start, end - start, x.text.clone())
}

/// Why a change is not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    #[error("baseVersion {base} is ahead of the document (version {version})")]
    Ahead { base: u64, version: u64 },
    #[error(
        "baseVersion {base} is too old (changes kept from version {oldest}): rejoin the document for a fresh snapshot"
    )]
    TooOld { base: u64, oldest: u64 },
    #[error("the change ends at {end}, beyond the document's {len} code units")]
    OutOfRange { end: usize, len: usize },
    #[error("the change would split a character at code unit {0}")]
    SplitsCharacter(usize),
    #[error("the document would be {len} code units long; the limit is {max}")]
    TooLarge { len: usize, max: usize },
    /// The author's change with this id is among the recent changes: a client resending a
    /// change whose first copy was committed after all.
    #[error("change {change_id} was already applied")]
    Duplicate { change_id: String },
}

/// Who made a change: its author (a user id, empty for an anonymous one) and the id the
/// author's client gave it, if any — how a client that lost a change's acknowledgement
/// recognises the change as its own when it catches up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    pub author: String,
    pub change_id: Option<String>,
}

impl Origin {
    pub fn new(author: impl Into<String>, change_id: Option<String>) -> Self {
        Self {
            author: author.into(),
            change_id,
        }
    }
}

/// A document's content and version, with the recent changes that late changes are
/// transformed against and reconnecting clients catch up from.
#[derive(Debug, Clone)]
pub struct Document {
    content: Vec<u16>,
    version: u64,
    /// The changes that made versions `version - recent.len() + 1 ..= version`, as applied,
    /// with their origins.
    recent: VecDeque<(Change, Origin)>,
    window: usize,
    max_len: usize,
}

impl Document {
    /// An empty document at version 0.
    pub fn new(window: usize, max_len: usize) -> Self {
        Self::restore("", 0, Vec::new(), window, max_len)
    }

    /// A document as a snapshot left it, with the recent changes it kept (oldest first), so
    /// that changes made on older versions transform as they did before the snapshot.
    pub fn restore(
        content: &str,
        version: u64,
        recent: Vec<(Change, Origin)>,
        window: usize,
        max_len: usize,
    ) -> Self {
        let window = window.max(1);
        let mut recent = VecDeque::from(recent);
        while recent.len() > window || recent.len() as u64 > version {
            recent.pop_front();
        }
        Self {
            content: content.encode_utf16().collect(),
            version,
            recent,
            window,
            max_len,
        }
    }

    /// The recent changes with their origins, oldest first (what a snapshot keeps).
    pub fn recent(&self) -> impl Iterator<Item = &(Change, Origin)> {
        self.recent.iter()
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// The content (a code unit sequence of whole characters: changes never split one).
    pub fn content(&self) -> String {
        String::from_utf16_lossy(&self.content)
    }

    /// The length in UTF-16 code units.
    pub fn len(&self) -> usize {
        self.content.len()
    }

    pub fn is_empty(&self) -> bool {
        self.content.is_empty()
    }

    /// The oldest version a change may be based on, or a client catch up from.
    pub fn oldest_base(&self) -> u64 {
        self.version - self.recent.len() as u64
    }

    /// The changes applied after `version`, in order, with their origins, or `None` when they
    /// are no longer kept.
    pub fn changes_since(&self, version: u64) -> Option<impl Iterator<Item = &(Change, Origin)>> {
        if version > self.version || version < self.oldest_base() {
            return None;
        }
        let skip = (version - self.oldest_base()) as usize;
        Some(self.recent.iter().skip(skip))
    }

    /// Whether a change made on `base` can still be transformed.
    pub fn check_base(&self, base: u64) -> Result<(), ChangeError> {
        if base > self.version {
            return Err(ChangeError::Ahead {
                base,
                version: self.version,
            });
        }
        if base < self.oldest_base() {
            return Err(ChangeError::TooOld {
                base,
                oldest: self.oldest_base(),
            });
        }
        Ok(())
    }

    /// Transforms `change` (made on version `base`) against every change applied since,
    /// applies it as `author`'s (without a change id), and returns it as applied.
    pub fn apply(
        &mut self,
        change: &Change,
        base: u64,
        author: &str,
    ) -> Result<Change, ChangeError> {
        self.apply_from(change, base, Origin::new(author, None))
    }

    /// Transforms `change` (made on version `base`) against every change applied since,
    /// applies it as `origin`'s, and returns it as applied; the version is then `version()`.
    /// A change whose id the same author's recent changes already hold is a duplicate (a
    /// resend) and is refused, so a change is applied once however often it is sent while
    /// its first copy is within the window. Nothing changes when it is refused.
    pub fn apply_from(
        &mut self,
        change: &Change,
        base: u64,
        origin: Origin,
    ) -> Result<Change, ChangeError> {
        // Anonymous authors are all "": matching them would let one anonymous editor, who sees
        // every change id, have another's next change dropped by sending its id first.
        if let Some(id) = &origin.change_id
            && !origin.author.is_empty()
            && self
                .recent
                .iter()
                .any(|(_, o)| o.author == origin.author && o.change_id.as_ref() == Some(id))
        {
            return Err(ChangeError::Duplicate {
                change_id: id.clone(),
            });
        }
        self.check_base(base)?;
        let mut change = change.clone();
        for (applied, _) in self.changes_since(base).into_iter().flatten() {
            change = transform(&change, applied, false);
        }
        let end = change.end();
        if end > self.content.len() {
            return Err(ChangeError::OutOfRange {
                end,
                len: self.content.len(),
            });
        }
        for at in [change.position, end] {
            if splits(&self.content, at) {
                return Err(ChangeError::SplitsCharacter(at));
            }
        }
        let len = self.content.len() - change.length + change.text_len();
        if len > self.max_len {
            return Err(ChangeError::TooLarge {
                len,
                max: self.max_len,
            });
        }
        self.content
            .splice(change.position..end, change.text.encode_utf16());
        self.version += 1;
        self.recent.push_back((change.clone(), origin));
        if self.recent.len() > self.window {
            self.recent.pop_front();
        }
        Ok(change)
    }
}

/// Whether `at` falls between the two halves of a surrogate pair.
fn splits(content: &[u16], at: usize) -> bool {
    at > 0
        && at < content.len()
        && (0xD800..0xDC00).contains(&content[at - 1])
        && (0xDC00..0xE000).contains(&content[at])
}

/// Applies `change` to `text` without transforming it (what a participant does with a change
/// the server broadcast). `None` when it does not fit.
pub fn apply_to(text: &str, change: &Change) -> Option<String> {
    let mut units: Vec<u16> = text.encode_utf16().collect();
    let end = change.end();
    if end > units.len() {
        return None;
    }
    units.splice(change.position..end, change.text.encode_utf16());
    String::from_utf16(&units).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn doc() -> Document {
        Document::new(100, 1 << 20)
    }

    #[test]
    fn concurrent_inserts_at_one_place_keep_the_log_order() {
        let mut d = doc();
        d.apply(&Change::new(0, 0, "abc"), 0, "u").unwrap();
        d.apply(&Change::new(1, 0, "X"), 1, "u").unwrap();
        let applied = d.apply(&Change::new(1, 0, "Y"), 1, "u").unwrap();
        assert_eq!(applied, Change::new(2, 0, "Y"));
        assert_eq!(d.content(), "aXYbc");
        assert_eq!(d.version(), 3);
    }

    #[test]
    fn a_delete_overlapping_an_applied_delete_removes_only_the_rest() {
        let mut d = doc();
        d.apply(&Change::new(0, 0, "0123456789"), 0, "u").unwrap();
        d.apply(&Change::new(2, 4, ""), 1, "u").unwrap();
        d.apply(&Change::new(4, 4, ""), 1, "u").unwrap();
        assert_eq!(d.content(), "0189");
    }

    #[test]
    fn an_insert_inside_a_concurrently_deleted_range_goes_with_it() {
        let mut d = doc();
        d.apply(&Change::new(0, 0, "hello world"), 0, "u").unwrap();
        d.apply(&Change::new(2, 6, ""), 1, "u").unwrap();
        let applied = d.apply(&Change::new(4, 0, "ZZ"), 1, "u").unwrap();
        assert!(applied.is_noop());
        assert_eq!(d.content(), "herld");
    }

    #[test]
    fn positions_count_utf16_code_units() {
        let mut d = doc();
        d.apply(&Change::new(0, 0, "a😀b"), 0, "u").unwrap();
        assert_eq!(d.len(), 4);
        assert_eq!(
            d.apply(&Change::new(2, 0, "x"), 1, "u"),
            Err(ChangeError::SplitsCharacter(2))
        );
        d.apply(&Change::new(1, 2, "é"), 1, "u").unwrap();
        assert_eq!(d.content(), "aéb");
    }

    #[test]
    fn refusals_leave_the_document_alone() {
        let mut d = Document::new(2, 8);
        for i in 0..4 {
            d.apply(&Change::new(0, 0, "a"), i, "u").unwrap();
        }
        assert_eq!(
            d.apply(&Change::new(0, 0, "b"), 1, "u"),
            Err(ChangeError::TooOld { base: 1, oldest: 2 })
        );
        assert_eq!(
            d.apply(&Change::new(0, 0, "b"), 9, "u"),
            Err(ChangeError::Ahead {
                base: 9,
                version: 4
            })
        );
        assert_eq!(
            d.apply(&Change::new(3, 2, ""), 4, "u"),
            Err(ChangeError::OutOfRange { end: 5, len: 4 })
        );
        assert_eq!(
            d.apply(&Change::new(0, 0, "bbbbb"), 4, "u"),
            Err(ChangeError::TooLarge { len: 9, max: 8 })
        );
        assert_eq!((d.content().as_str(), d.version()), ("aaaa", 4));
        assert_eq!(d.changes_since(3).unwrap().count(), 1);
        assert!(d.changes_since(1).is_none());
    }

    #[test]
    fn a_change_id_is_kept_and_a_resend_is_refused() {
        let mut d = doc();
        let by = |author: &str, id: &str| Origin::new(author, Some(id.to_owned()));
        d.apply_from(&Change::new(0, 0, "ab"), 0, by("u", "c-1"))
            .unwrap();
        assert_eq!(
            d.apply_from(&Change::new(0, 0, "ab"), 0, by("u", "c-1")),
            Err(ChangeError::Duplicate {
                change_id: "c-1".into()
            })
        );
        // Another author's id is another change.
        d.apply_from(&Change::new(0, 0, "x"), 1, by("v", "c-1"))
            .unwrap();
        assert_eq!((d.content().as_str(), d.version()), ("xab", 2));
        let origins: Vec<_> = d
            .changes_since(0)
            .unwrap()
            .map(|(_, o)| o.clone())
            .collect();
        assert_eq!(origins, vec![by("u", "c-1"), by("v", "c-1")]);
    }

    #[test]
    fn a_restored_document_transforms_late_changes_as_the_live_one() {
        let mut live = doc();
        live.apply(&Change::new(0, 0, "abcdef"), 0, "u").unwrap();
        live.apply(&Change::new(1, 2, "XY"), 1, "u").unwrap();
        let recent: Vec<_> = live.recent().cloned().collect();
        let mut restored = Document::restore(&live.content(), live.version(), recent, 100, 1 << 20);
        let late = Change::new(2, 1, "Z");
        assert_eq!(live.apply(&late, 1, "v"), restored.apply(&late, 1, "v"));
        assert_eq!(live.content(), restored.content());
    }

    /// An edit a client makes on the text it sees: position and deleted length as fractions
    /// of its length, so they always fit.
    #[derive(Debug, Clone)]
    struct Edit {
        client: usize,
        at: f64,
        span: f64,
        text: String,
    }

    fn edit(clients: usize) -> impl Strategy<Value = Edit> {
        (
            0..clients,
            0.0..=1.0f64,
            prop_oneof![Just(0.0), 0.0..0.5f64],
            prop_oneof![Just(String::new()), "[a-c😀]{1,3}"],
        )
            .prop_map(|(client, at, span, text)| Edit {
                client,
                at,
                span,
                text,
            })
    }

    fn on(text: &str, e: &Edit) -> Change {
        let chars: Vec<char> = text.chars().collect();
        let at = (e.at * chars.len() as f64) as usize;
        let end = (at + (e.span * chars.len() as f64) as usize).min(chars.len());
        let units = |n: usize| chars[..n].iter().map(|c| c.len_utf16()).sum::<usize>();
        Change::new(units(at), units(end) - units(at), e.text.clone())
    }

    /// A participant as an editor runs one: local edits apply at once; one change at a time
    /// is sent (with the version it is based on), the rest wait; each change the server
    /// broadcasts is transformed against the ones not yet acknowledged, which are transformed
    /// against it.
    #[derive(Default)]
    struct Client {
        text: String,
        version: u64,
        sent: Option<Change>,
        waiting: VecDeque<Change>,
        inbox: VecDeque<(u64, Change, usize)>,
    }

    impl Client {
        fn edit(&mut self, change: Change) -> Option<(Change, u64)> {
            self.text = apply_to(&self.text, &change).expect("a local edit fits");
            if self.sent.is_some() {
                self.waiting.push_back(change);
                return None;
            }
            self.sent = Some(change.clone());
            Some((change, self.version))
        }

        /// Takes the next broadcast change; returns the next change to send after an ack.
        fn receive(&mut self, me: usize) -> Option<(Change, u64)> {
            let (version, change, author) = self.inbox.pop_front()?;
            self.version = version;
            if author == me {
                self.sent = self.waiting.pop_front();
                return self.sent.clone().map(|c| (c, self.version));
            }
            let mut remote = change;
            for mine in self.sent.iter_mut().chain(self.waiting.iter_mut()) {
                let rebased = transform(mine, &remote, false);
                remote = transform(&remote, mine, true);
                *mine = rebased;
            }
            self.text = apply_to(&self.text, &remote).expect("a remote change fits");
            None
        }
    }

    /// Steps: a client edits, the server takes the next change in flight, or a client reads
    /// the next broadcast change.
    #[derive(Debug, Clone)]
    enum Step {
        Edit(Edit),
        Serve(usize),
        Deliver(usize),
    }

    fn step(clients: usize) -> impl Strategy<Value = Step> {
        prop_oneof![
            2 => edit(clients).prop_map(Step::Edit),
            2 => (0..clients).prop_map(Step::Serve),
            3 => (0..clients).prop_map(Step::Deliver),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Two changes made on the same content converge whichever is applied first.
        #[test]
        fn transformed_pairs_converge(
            base in "[a-c😀]{0,8}",
            a in edit(1),
            b in edit(1),
            a_first: bool,
        ) {
            let (a, b) = (on(&base, &a), on(&base, &b));
            let left = apply_to(&apply_to(&base, &a).unwrap(), &transform(&b, &a, !a_first));
            let right = apply_to(&apply_to(&base, &b).unwrap(), &transform(&a, &b, a_first));
            prop_assert!(left.is_some());
            prop_assert_eq!(left, right);
        }

        /// Several editors, random interleavings of edits, sends and deliveries: once everything
        /// is delivered every editor's text is the server's.
        #[test]
        fn editors_converge_on_the_server_content(
            clients in 2..5usize,
            steps in proptest::collection::vec(step(4), 1..80),
        ) {
            let mut server = doc();
            let mut editors: Vec<Client> = (0..clients).map(|_| Client::default()).collect();
            let mut in_flight: Vec<VecDeque<(Change, u64)>> = vec![VecDeque::new(); clients];
            let serve = |server: &mut Document, editors: &mut Vec<Client>, from: usize, (change, base): (Change, u64)| {
                let applied = server.apply(&change, base, "u").expect("an editor's change applies");
                for e in editors.iter_mut() {
                    e.inbox.push_back((server.version(), applied.clone(), from));
                }
            };
            for s in steps {
                match s {
                    Step::Edit(e) if e.client < clients => {
                        let c = &mut editors[e.client];
                        let change = on(&c.text, &e);
                        if let Some(sent) = c.edit(change) {
                            in_flight[e.client].push_back(sent);
                        }
                    }
                    Step::Serve(i) if i < clients => {
                        if let Some(sent) = in_flight[i].pop_front() {
                            serve(&mut server, &mut editors, i, sent);
                        }
                    }
                    Step::Deliver(i) if i < clients => {
                        if let Some(next) = editors[i].receive(i) {
                            in_flight[i].push_back(next);
                        }
                    }
                    _ => {}
                }
            }
            // Drain: serve and deliver everything left.
            loop {
                let mut moved = false;
                for i in 0..clients {
                    while let Some(sent) = in_flight[i].pop_front() {
                        serve(&mut server, &mut editors, i, sent);
                        moved = true;
                    }
                    while !editors[i].inbox.is_empty() {
                        if let Some(next) = editors[i].receive(i) {
                            in_flight[i].push_back(next);
                        }
                        moved = true;
                    }
                }
                if !moved {
                    break;
                }
            }
            for e in &editors {
                prop_assert_eq!(&e.text, &server.content());
                prop_assert_eq!(e.version, server.version());
            }
        }
    }
}
