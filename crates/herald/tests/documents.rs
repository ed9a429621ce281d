//! Collaborative documents over real WebSockets: concurrent editors converge on the server's
//! content, changes survive `kill -9`, reconnecting clients catch up, and hostile clients are
//! refused.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// A participant's copy, built only from what the server sends.
struct Replica {
    ws: Ws,
    text: Vec<u16>,
    version: u64,
}

impl Replica {
    async fn join(server: &Server, user: &str, doc: &str) -> Replica {
        let mut ws = Ws::user(server, user).await;
        ws.send(json!({"type": "document.join", "data": {"documentId": doc}}))
            .await;
        let joined = ws.recv_type("document.joined").await;
        let d = &joined["data"];
        assert_eq!(d["documentId"], doc, "{joined}");
        Replica {
            ws,
            text: d["content"].as_str().unwrap().encode_utf16().collect(),
            version: d["version"].as_u64().unwrap(),
        }
    }

    fn apply(&mut self, msg: &Value) {
        let d = &msg["data"];
        let v = d["version"].as_u64().unwrap();
        assert_eq!(
            v,
            self.version + 1,
            "changes arrive in version order: {msg}"
        );
        let c = &d["change"];
        let at = c["position"].as_u64().unwrap() as usize;
        let len = c["length"].as_u64().unwrap() as usize;
        let text: Vec<u16> = c["text"].as_str().unwrap().encode_utf16().collect();
        self.text.splice(at..at + len, text);
        self.version = v;
    }

    /// Reads until `version` is reached, applying every change; returns the other messages.
    async fn catch_up(&mut self, version: u64) -> Vec<Value> {
        let mut others = Vec::new();
        while self.version < version {
            let m = self.ws.recv().await;
            if m["type"] == "text_change_applied" {
                self.apply(&m);
            } else {
                others.push(m);
            }
        }
        others
    }

    fn content(&self) -> String {
        String::from_utf16(&self.text).unwrap()
    }

    async fn change(&mut self, doc: &str, position: usize, length: usize, text: &str, id: u64) {
        self.ws
            .send(json!({"type": "document.change", "id": id, "data": {
                "documentId": doc, "baseVersion": self.version,
                "position": position, "length": length, "text": text}}))
            .await;
    }
}

async fn document(server: &Server, doc: &str) -> Value {
    let (status, body) = get(
        server,
        &format!("/api/documents/{doc}"),
        Some(&token("reader")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Editors (the `i`th on `nodes[i % n]`) send changes in rounds, all at once, each on the
/// version it has seen; returns them with the version reached.
async fn edit_concurrently(nodes: &[Server], doc: &str, rounds: usize) -> (Vec<Replica>, u64) {
    let mut editors = Vec::new();
    for (i, user) in ["ann", "bob", "cid"].into_iter().enumerate() {
        editors.push(Replica::join(&nodes[i % nodes.len()], user, doc).await);
    }
    for round in 0..rounds {
        // Every editor sends before reading anything: the changes are concurrent.
        for (i, e) in editors.iter_mut().enumerate() {
            // Positions and lengths in code units, on character boundaries.
            let chars: Vec<char> = e.content().chars().collect();
            let units = |n: usize| chars[..n].iter().map(|c| c.len_utf16()).sum::<usize>();
            let at = (round * 7 + i * 3) % (chars.len() + 1);
            let (del, text) = match (round + i) % 3 {
                0 => (0, format!("{i}é😀")),
                1 => ((chars.len() - at).min(2), String::new()),
                _ => ((chars.len() - at).min(1), format!("[{round}]")),
            };
            let length = units(at + del) - units(at);
            e.change(doc, units(at), length, &text, round as u64).await;
        }
        let target = ((round + 1) * editors.len()) as u64;
        for e in editors.iter_mut() {
            let others = e.catch_up(target).await;
            assert!(
                others.iter().all(|m| m["type"] == "participant_joined"),
                "{others:?}"
            );
        }
    }
    let version = (rounds * editors.len()) as u64;
    (editors, version)
}

/// Three editors send changes at once, each on the version it has seen; every one of them
/// ends with the server's content, and a late joiner gets it as a snapshot.
#[tokio::test]
async fn concurrent_editors_converge_on_the_servers_content() {
    let nodes = [Server::start()];
    let (editors, version) = edit_concurrently(&nodes, "notes", 15).await;
    let server = &nodes[0];
    let state = document(server, "notes").await;
    assert_eq!(state["version"], version, "{state}");
    for e in &editors {
        assert_eq!(e.version, version);
        assert_eq!(e.content(), state["content"], "an editor diverged");
    }
    assert!(!state["content"].as_str().unwrap().is_empty());
    let late = Replica::join(server, "dee", "notes").await;
    assert_eq!((late.content(), late.version), (e_content(&state), version));
    let (status, changes) = get(
        server,
        "/api/documents/notes/changes?limit=1000",
        Some(&token("reader")),
    )
    .await;
    assert_eq!(status, 200, "{changes}");
    assert_eq!(changes["changes"].as_array().unwrap().len() as u64, version);
}

/// Three nodes through Redis, one editor on each: the changes are transformed in the log's
/// single order, and every node computes the same content and version.
#[tokio::test]
async fn editors_on_several_nodes_converge() {
    let nodes = cluster_with(3, &herald_redis::testing::redis_url(), &[]).await;
    let (editors, version) = edit_concurrently(&nodes, "shared", 10).await;
    for node in &nodes {
        let state = document(node, "shared").await;
        assert_eq!(state["version"], version, "{state}");
        for e in &editors {
            assert_eq!(
                e.content(),
                state["content"],
                "a node or an editor diverged"
            );
        }
    }
    // A late joiner on any node gets the same snapshot.
    let late = Replica::join(&nodes[1], "dee", "shared").await;
    assert_eq!(
        (late.content(), late.version),
        (editors[0].content(), version)
    );
}

/// Participants and cursors are cluster-wide: editors on different nodes see each other join,
/// move and leave, a late joiner's snapshot and `GET /api/documents/{id}` list everyone, and the
/// participants of a node killed with `kill -9` leave once the cluster notices.
#[tokio::test]
async fn participants_and_cursors_cross_nodes() {
    let mut nodes = cluster_with(3, &herald_redis::testing::redis_url(), &[]).await;
    let mut ann = Replica::join(&nodes[0], "ann", "crossed").await;
    let mut bob = Replica::join(&nodes[1], "bob", "crossed").await;
    let joined = ann.ws.recv_type("participant_joined").await;
    assert_eq!(joined["data"]["user"], "bob", "{joined}");
    assert_eq!(users(&joined["data"]["participants"]), ["ann", "bob"]);

    bob.ws
        .send(json!({"type": "cursor_move", "data": {"documentId": "crossed", "cursor": {"position": 2}}}))
        .await;
    let cursor = ann.ws.recv_type("cursor_move").await;
    assert_eq!(
        (&cursor["data"]["user"], &cursor["data"]["cursor"]),
        (&json!("bob"), &json!({"position": 2}))
    );
    ann.ws
        .send(json!({"type": "cursor_move", "data": {"documentId": "crossed", "cursor": {"position": 1}}}))
        .await;
    assert_eq!(bob.ws.recv_type("cursor_move").await["data"]["user"], "ann");

    // A third node, where nobody has the document open, lists both with their cursors; so
    // does a late joiner's snapshot there.
    let listed = get_until(&nodes[2], "/api/documents/crossed", |d| {
        d["participants"].as_array().is_some_and(|p| p.len() == 2)
    })
    .await;
    assert_eq!(users(&listed["participants"]), ["ann", "bob"]);
    let mut cid = Ws::user(&nodes[2], "cid").await;
    cid.send(json!({"type": "document.join", "data": {"documentId": "crossed"}}))
        .await;
    let snapshot = cid.recv_type("document.joined").await;
    assert_eq!(
        users(&snapshot["data"]["participants"]),
        ["ann", "bob", "cid"]
    );
    drop(cid);
    for e in [&mut ann, &mut bob] {
        let left = e.ws.recv_type("participant_left").await;
        assert_eq!(left["data"]["user"], "cid", "{left}");
    }

    // Bob's node dies: ann sees him leave.
    nodes[1].kill9();
    let left = loop {
        let m = ann.ws.recv_within(Duration::from_secs(15)).await;
        if m["type"] == "participant_left" {
            break m;
        }
    };
    assert_eq!(left["data"]["user"], "bob", "{left}");
    assert_eq!(users(&left["data"]["participants"]), ["ann"]);
}

/// The users of a participants list, sorted.
fn users(participants: &Value) -> Vec<String> {
    let mut users: Vec<String> = participants
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["user"].as_str().unwrap().to_owned())
        .collect();
    users.sort();
    users
}

fn e_content(state: &Value) -> String {
    state["content"].as_str().unwrap().to_owned()
}

/// The author's acknowledgement echoes its command's `id` and carries the version; the other
/// participants see the change, cursors and who joins and leaves.
#[tokio::test]
async fn acknowledgements_cursors_and_participants() {
    let server = Server::start();
    let mut ann = Replica::join(&server, "ann", "d").await;
    let mut bob = Replica::join(&server, "bob", "d").await;
    let joined = ann.ws.recv_type("participant_joined").await;
    assert_eq!(joined["data"]["user"], "bob");
    assert_eq!(joined["data"]["participants"].as_array().unwrap().len(), 2);

    ann.change("d", 0, 0, "hello", 41).await;
    let ack = ann.ws.recv_type("text_change_applied").await;
    assert_eq!(ack["id"], 41, "{ack}");
    assert_eq!(ack["data"]["version"], 1);
    assert_eq!(ack["data"]["author"], "ann");
    let seen = bob.ws.recv_type("text_change_applied").await;
    assert_eq!(seen["id"], Value::Null, "only the author's copy is its ack");
    assert_eq!(
        seen["data"]["change"],
        json!({"position": 0, "length": 0, "text": "hello"})
    );

    bob.ws
        .send(
            json!({"type": "cursor_move", "data": {"documentId": "d", "cursor": {"position": 3}}}),
        )
        .await;
    let cursor = ann.ws.recv_type("cursor_move").await;
    assert_eq!(cursor["data"]["user"], "bob");
    assert_eq!(cursor["data"]["cursor"], json!({"position": 3}));

    drop(bob);
    let left = ann.ws.recv_type("participant_left").await;
    assert_eq!(left["data"]["user"], "bob");
    assert_eq!(left["data"]["participants"].as_array().unwrap().len(), 1);
}

/// Every acknowledged change survives `kill -9`; a client that reconnects with its version gets
/// the changes it missed, one that is too far behind a snapshot. Snapshots are written, and a
/// restart reads them back.
#[tokio::test]
async fn documents_survive_kill_9_and_clients_catch_up() {
    let mut server = Server::start_env(&[], &[("HERALD_DOCUMENT_SNAPSHOT_EVERY", "4")]);
    let mut ann = Replica::join(&server, "ann", "story").await;
    for i in 0..10u64 {
        let at = ann.text.len();
        ann.change("story", at, 0, &format!("{i},"), i).await;
        ann.catch_up(i + 1).await;
    }
    // Snapshots are written after the change that makes them due, without holding it up.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let stored = stored_events(&server).await;
        let mut versions: Vec<u64> = stored
            .iter()
            .filter(|e| e["type"] == "document.snapshot")
            .map(|e| e["data"]["version"].as_u64().unwrap())
            .collect();
        versions.sort();
        if versions.len() == 2 || std::time::Instant::now() > deadline {
            assert_eq!(versions, [4, 8], "a snapshot at versions 4 and 8");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill9();
    let server = server.restart();
    let state = document(&server, "story").await;
    assert_eq!(state["version"], 10);
    assert_eq!(state["content"], "0,1,2,3,4,5,6,7,8,9,");

    // Reconnecting from version 7: the three changes after it, in order.
    let mut ws = Ws::user(&server, "ann").await;
    ws.send(json!({"type": "document.join", "data": {"documentId": "story", "version": 7}}))
        .await;
    let joined = ws.recv_type("document.joined").await;
    assert_eq!(joined["data"]["caughtUp"], true, "{joined}");
    for v in 8..=10 {
        let m = ws.recv().await;
        assert_eq!(m["type"], "text_change_applied", "{m}");
        assert_eq!(m["data"]["version"], v);
        assert_eq!(m["data"]["change"]["text"], format!("{},", v - 1));
    }
    // Editing goes on from the restored version.
    let mut r = Replica::join(&server, "bob", "story").await;
    r.change("story", 0, 2, "", 1).await;
    r.catch_up(11).await;
    assert_eq!(
        document(&server, "story").await["content"],
        "1,2,3,4,5,6,7,8,9,"
    );
}

/// A document nobody edits outlives retention: the changes its saved snapshot covers are
/// deleted, the ones after it are kept until a snapshot covers them, and a restart reads both
/// back.
#[tokio::test]
async fn documents_outlive_retention() {
    let mut server = Server::start_env(
        &["--retention-hours", "0"],
        &[
            ("HERALD_RETENTION_INTERVAL_SECS", "1"),
            ("HERALD_DOCUMENT_SNAPSHOT_EVERY", "4"),
        ],
    );
    let mut ann = Replica::join(&server, "ann", "story").await;
    for i in 0..10u64 {
        let at = ann.text.len();
        ann.change("story", at, 0, &format!("{i},"), i).await;
        ann.catch_up(i + 1).await;
    }
    drop(ann);
    // The snapshot at version 8 covers the first eight changes; the last two stay.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stored = stored_events(&server).await;
        let kept: Vec<&Value> = stored
            .iter()
            .filter(|e| e["type"] == "document.change")
            .map(|e| &e["data"]["text"])
            .collect();
        let others = stored.len() - kept.len();
        if kept == [&json!("8,"), &json!("9,")] && others == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "retention deletes what the snapshot covers and nothing else: {stored:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.kill9();
    let server = server.restart();
    // Retention runs again after the restart; the content stays whole.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let state = document(&server, "story").await;
    assert_eq!(state["version"], 10, "{state}");
    assert_eq!(state["content"], "0,1,2,3,4,5,6,7,8,9,");
    let mut bob = Replica::join(&server, "bob", "story").await;
    assert_eq!(bob.content(), "0,1,2,3,4,5,6,7,8,9,");
    bob.change("story", 0, 2, "", 1).await;
    bob.catch_up(11).await;
    assert_eq!(
        document(&server, "story").await["content"],
        "1,2,3,4,5,6,7,8,9,"
    );
}

/// Hostile clients: no access, not a participant, raw publishes of document events, bogus
/// versions, oversized text, cursor floods.
#[tokio::test]
async fn hostile_editors_are_refused() {
    let server = Server::start_env(&[], &[("HERALD_DOCUMENT_MAX_LENGTH", "100")]);
    // A token limited to team-* rooms: document:secret is not one of them.
    let mut outsider = Ws::connect(&server, "/ws").await;
    outsider
        .send(
            json!({"type": "authenticate", "data": {"token": token_for_rooms("eve", &["team-*"])}}),
        )
        .await;
    outsider.recv_type("authenticated").await;
    outsider
        .send(json!({"type": "document.join", "id": 1, "data": {"documentId": "secret"}}))
        .await;
    let e = outsider.recv_type("error").await;
    assert_eq!(e["data"]["code"], "ACCESS_DENIED", "{e}");
    let (status, _) = get(
        &server,
        "/api/documents/secret",
        Some(&token_for_rooms("eve", &["team-*"])),
    )
    .await;
    assert_eq!(status, 403);
    // Anonymous clients may not join a private document.
    let mut anon = Ws::connect(&server, "/ws").await;
    anon.send(json!({"type": "document.join", "data": {"documentId": "secret"}}))
        .await;
    assert_eq!(
        anon.recv_type("error").await["data"]["code"],
        "ACCESS_DENIED"
    );

    // A change without joining.
    let mut mallory = Ws::user(&server, "mallory").await;
    mallory
        .send(json!({"type": "document.change", "id": 2, "data": {
            "documentId": "secret", "baseVersion": 0, "position": 0, "text": "x"}}))
        .await;
    assert_eq!(
        mallory.recv_type("error").await["data"]["code"],
        "NOT_IN_ROOM"
    );
    // A raw publish of a document event, bypassing the transformation.
    mallory
        .send(json!({"type": "publish", "id": 3, "data": {"type": "document.change",
            "roomId": "document:secret", "data": {"baseVersion": 0, "position": 0, "length": 0, "text": "x"}}}))
        .await;
    let e = mallory.recv_type("error").await;
    assert_eq!(e["data"]["code"], "ACCESS_DENIED", "{e}");

    let mut ann = Replica::join(&server, "ann", "secret").await;
    let mut watcher = Replica::join(&server, "bob", "secret").await;
    // A version the document has not reached.
    ann.ws
        .send(json!({"type": "document.change", "id": 4, "data": {
            "documentId": "secret", "baseVersion": 99, "position": 0, "text": "x"}}))
        .await;
    let e = ann.ws.recv_type("error").await;
    assert_eq!(
        (e["id"].clone(), e["data"]["code"].clone()),
        (json!(4), json!("CONFLICT")),
        "{e}"
    );
    // Beyond the end.
    ann.change("secret", 5, 1, "x", 5).await;
    let e = ann.ws.recv_type("error").await;
    assert_eq!(e["data"]["code"], "VALIDATION_ERROR", "{e}");
    assert!(
        e["data"]["error"].as_str().unwrap().contains("beyond"),
        "{e}"
    );
    // Longer than the document may be, at once and little by little.
    ann.change("secret", 0, 0, &"x".repeat(101), 6).await;
    let e = ann.ws.recv_type("error").await;
    assert!(
        e["data"]["error"].as_str().unwrap().contains("at most 100"),
        "{e}"
    );
    ann.change("secret", 0, 0, &"x".repeat(60), 7).await;
    ann.catch_up(1).await;
    ann.change("secret", 0, 0, &"y".repeat(60), 8).await;
    let e = ann.ws.recv_type("error").await;
    assert!(
        e["data"]["error"]
            .as_str()
            .unwrap()
            .contains("limit is 100"),
        "{e}"
    );
    // A cursor flood: refused beyond the rate, the others see only what was let through.
    for i in 0..60 {
        ann.ws
            .send(json!({"type": "cursor_move", "data": {"documentId": "secret", "cursor": i}}))
            .await;
    }
    let mut limited = 0;
    ann.ws.send(json!({"type": "ping", "id": "end"})).await;
    loop {
        let m = ann.ws.recv().await;
        if m["type"] == "pong" {
            break;
        }
        if m["data"]["code"] == "RATE_LIMITED" {
            limited += 1;
        }
    }
    assert!(limited >= 30, "cursor moves are rate-limited: {limited}");
    let mut seen = 0;
    watcher.catch_up(1).await;
    while tokio::time::timeout(
        Duration::from_millis(300),
        watcher.ws.recv_type("cursor_move"),
    )
    .await
    .is_ok()
    {
        seen += 1;
    }
    assert_eq!(seen, 60 - limited, "only admitted moves reach the others");
    assert_eq!(document(&server, "secret").await["content"], "x".repeat(60));
    for query in ["limit=0", "limit=1001", "after=-1", "after=x"] {
        let (status, body) = get(
            &server,
            &format!("/api/documents/secret/changes?{query}"),
            Some(&token("ann")),
        )
        .await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["code"], "VALIDATION_ERROR", "{query}: {body}");
    }
}

/// Anonymous clients edit public documents only (as they chat in public rooms only).
#[tokio::test]
async fn anonymous_clients_edit_public_documents_only() {
    let server = Server::start_with(&["--public-room", "document:open"]);
    let mut anon = Ws::connect(&server, "/ws").await;
    anon.send(json!({"type": "document.join", "data": {"documentId": "open"}}))
        .await;
    anon.recv_type("document.joined").await;
    anon.send(json!({"type": "document.change", "id": 1, "data": {
        "documentId": "open", "baseVersion": 0, "position": 0, "text": "hi"}}))
        .await;
    let ack = anon.recv_type("text_change_applied").await;
    assert_eq!(
        (ack["id"].clone(), ack["data"]["version"].clone()),
        (json!(1), json!(1))
    );
    assert!(
        ack["data"]["author"].is_null(),
        "an anonymous author is no user: {ack}"
    );
    // Another anonymous editor sees every change id; sending the next one first (hoping to
    // have the victim's change dropped as a resend) suppresses nothing: anonymous changes are
    // never matched as resends.
    let mut other = Ws::connect(&server, "/ws").await;
    other
        .send(json!({"type": "document.join", "data": {"documentId": "open"}}))
        .await;
    other.recv_type("document.joined").await;
    for (ws, text, id) in [(&mut other, "!", 7), (&mut anon, "?", 8)] {
        ws.send(json!({"type": "document.change", "id": id, "data": {
            "documentId": "open", "baseVersion": 1, "position": 0, "text": text,
            "changeId": "guessed-2"}}))
            .await;
        // Its acknowledgement (the other's change may come first).
        loop {
            let m = ws.recv().await;
            assert_ne!(m["type"], "error", "{m}");
            if m["type"] == "text_change_applied" && m["id"] == id {
                break;
            }
        }
    }
    assert_eq!(document(&server, "open").await["version"], 3);
    // A raw publish of a document event stays refused, public room or not.
    anon.send(json!({"type": "publish", "id": 2, "data": {"type": "document.change",
        "roomId": "document:open", "data": {"baseVersion": 1, "position": 0, "length": 0, "text": "x"}}}))
        .await;
    let e = anon.recv_type("error").await;
    assert_eq!(e["id"], 2, "{e}");
    assert_eq!(document(&server, "open").await["content"], "!?hi");
}

/// A change's `changeId` comes back in the author's acknowledgement and the others' copies,
/// and in the catch-up of a client that rejoins from an older version — after a restart from a
/// snapshot too; the same author's change sent again with the same id (a resend after a lost
/// acknowledgement) is applied once; an oversized id is refused.
#[tokio::test]
async fn change_ids_are_echoed_caught_up_and_applied_once() {
    let mut server = Server::start_env(&[], &[("HERALD_DOCUMENT_SNAPSHOT_EVERY", "2")]);
    let mut ann = Replica::join(&server, "ann", "ids").await;
    let mut bob = Replica::join(&server, "bob", "ids").await;
    let send = |position: u64, text: &str, base: u64, change_id: &str, id: u64| {
        json!({"type": "document.change", "id": id, "data": {
            "documentId": "ids", "baseVersion": base, "position": position, "text": text,
            "changeId": change_id}})
    };
    ann.ws.send(send(0, "ab", 0, "k7-1", 1)).await;
    let ack = ann.ws.recv_type("text_change_applied").await;
    assert_eq!(
        (ack["id"].clone(), ack["data"]["changeId"].clone()),
        (json!(1), json!("k7-1")),
        "{ack}"
    );
    let seen = bob.ws.recv_type("text_change_applied").await;
    assert_eq!(seen["data"]["changeId"], "k7-1", "{seen}");
    bob.apply(&seen);

    // The same change again, on a new connection (the first one's acknowledgement was lost):
    // refused silently, the document is unchanged.
    let mut again = Ws::user(&server, "ann").await;
    again
        .send(json!({"type": "document.join", "data": {"documentId": "ids", "version": 0}}))
        .await;
    let joined = again.recv_type("document.joined").await;
    assert_eq!(joined["data"]["caughtUp"], true, "{joined}");
    let caught = again.recv_type("text_change_applied").await;
    assert_eq!(
        (
            caught["data"]["version"].clone(),
            caught["data"]["changeId"].clone()
        ),
        (json!(1), json!("k7-1")),
        "{caught}"
    );
    again.send(send(0, "ab", 0, "k7-1", 2)).await;
    // Another author may use the same id: it is their own change.
    bob.ws.send(send(2, "c", 1, "k7-1", 3)).await;
    bob.catch_up(2).await;
    let state = document(&server, "ids").await;
    assert_eq!(
        (state["content"].clone(), state["version"].clone()),
        (json!("abc"), json!(2))
    );

    // An oversized id: refused before anything is published.
    let long = "x".repeat(65);
    ann.ws.send(send(0, "z", 1, &long, 4)).await;
    let e = ann.ws.recv_type("error").await;
    assert_eq!(
        (e["id"].clone(), e["data"]["code"].clone()),
        (json!(4), json!("VALIDATION_ERROR")),
        "{e}"
    );
    assert!(
        e["data"]["error"]
            .as_str()
            .unwrap()
            .contains("changeId is 65 bytes"),
        "{e}"
    );
    assert_eq!(document(&server, "ids").await["version"], 2);

    // After a restart the ids come from the snapshot (version 2) and still refuse a resend.
    drop((ann, bob, again));
    let deadline = std::time::Instant::now() + WAIT;
    while !stored_events(&server)
        .await
        .iter()
        .any(|e| e["type"] == "document.snapshot" && e["data"]["version"] == 2)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "a snapshot at version 2"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill9();
    let server = server.restart();
    let mut ws = Ws::user(&server, "carl").await;
    ws.send(json!({"type": "document.join", "data": {"documentId": "ids", "version": 0}}))
        .await;
    ws.recv_type("document.joined").await;
    for (v, id) in [(1, "k7-1"), (2, "k7-1")] {
        let m = ws.recv_type("text_change_applied").await;
        assert_eq!(
            (m["data"]["version"].clone(), m["data"]["changeId"].clone()),
            (json!(v), json!(id)),
            "{m}"
        );
    }
    let mut ann = Replica::join(&server, "ann", "ids").await;
    ann.ws.send(send(0, "ab", 0, "k7-1", 5)).await;
    ann.change("ids", 3, 0, "d", 6).await;
    ann.catch_up(3).await;
    assert_eq!(ann.content(), "abcd");
    assert_eq!(document(&server, "ids").await["content"], "abcd");
}

/// herald.js itself (under Node, `tests/seed-clients/herald-document.js`) across real
/// connection losses: edits made offline, and a change committed whose acknowledgement was
/// lost, end up in the document exactly once, with everyone on the server's text; away for
/// longer than the window, the client takes a snapshot and says so (`resync`).
#[tokio::test]
async fn herald_js_keeps_its_edits_across_reconnects() {
    let server = Server::start_env(&[], &[("HERALD_DOCUMENT_WINDOW", "10")]);
    let args = vec![
        server.url(""),
        "away".into(),
        token("ann"),
        token("bob"),
        "10".into(),
    ];
    let stdout = seed_client_script("herald-document.js", args).await;
    let out: Value = serde_json::from_str(stdout.trim()).unwrap();
    let state = document(&server, "away").await;
    assert_eq!(state["content"], out["resync"], "{out}");
    let offline = out["offline"].as_str().unwrap();
    assert!(
        offline.contains(" [a1]") && offline.contains("<b1>"),
        "{out}"
    );
    let ack_lost = out["ackLost"].as_str().unwrap();
    assert_eq!(ack_lost.matches("{inflight}").count(), 1, "{out}");
    let (status, log) = get(
        &server,
        "/api/documents/away/changes?limit=1000",
        Some(&token("ann")),
    )
    .await;
    assert_eq!(status, 200, "{log}");
    let inflight = log["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["data"]["changeId"] == out["inflight"])
        .count();
    assert_eq!(
        inflight, 1,
        "the change in flight was not sent again: {log}"
    );
}
