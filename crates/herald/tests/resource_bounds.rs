//! Anonymous and authenticated clients doing the costliest thing each bound allows, against the
//! real binary over real sockets: held long-polls, mailbox polls without an id, HTTP publish
//! floods. Each test measures what the attack costs the server (RSS from /proc, CPU ticks,
//! a bystander's publish rate) and asserts it stays within the limits the configuration
//! documents (README, docs/protocol.md), printing the figures (`--nocapture`). The tests run
//! one at a time (`SERIAL`): they measure throughput.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The process's resident memory, in KiB (`VmRSS`).
fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// CPU time the process has used (user + system), in clock ticks (1/100 s).
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// A client whose connections come from `127.0.0.{last}`: on Linux all of 127/8 is loopback,
/// so one test can be many client addresses.
fn client_from(last: u8) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(90))
        .build()
        .unwrap()
}

/// Publishes `bystander.tick` events over HTTP with an API key from 4 concurrent requests for
/// `window`; returns publishes per second and CPU milliseconds of the server per publish.
async fn bystander_rate(server: &Server, window: Duration) -> (f64, f64) {
    let client = client_from(1);
    let url = server.url("/api/realtime/publish");
    let ticks = cpu_ticks(server.pid());
    let started = Instant::now();
    let deadline = started + window;
    let workers = (0..4).map(|_| {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                let res = client
                    .post(&url)
                    .bearer_auth(API_KEY)
                    .json(&json!({"type": "bystander.tick", "data": {"n": n}}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status().as_u16(), 201);
                n += 1;
            }
            n
        })
    });
    let mut total = 0;
    for w in workers.collect::<Vec<_>>() {
        total += w.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu_ms = (cpu_ticks(server.pid()) - ticks) as f64 * 10.0;
    (total as f64 / secs, cpu_ms / total.max(1) as f64)
}

/// The value of a series in `/metrics`, 0 when not recorded yet.
async fn metric_or_zero(server: &Server, series: &str) -> f64 {
    metric(server, series).await.unwrap_or(0.0)
}

// ---------------------------------------------------------------------------------------------
// Long-polls

const POLL_IPS: u8 = 20;
/// `max_long_polls_per_ip`'s default.
const POLLS_PER_IP: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_held_long_polls_leave_a_bystander_publishing() {
    let _serial = SERIAL.lock().await;
    let server = Server::start();
    let pid = server.pid();
    // Warm up (first connections, the store's first pages), then the rate without polls.
    bystander_rate(&server, Duration::from_millis(500)).await;
    let (alone, alone_cpu) = bystander_rate(&server, Duration::from_secs(2)).await;
    let rss_before = rss_kib(pid);

    // 1 000 anonymous long-polls from 20 addresses, 50 each, held (nothing matches yet).
    let mut polls = Vec::new();
    for ip in 0..POLL_IPS {
        let client = client_from(10 + ip);
        for _ in 0..POLLS_PER_IP {
            let req = client
                .get(server.url("/api/realtime/poll?types=alert.*&timeout=60"))
                .send();
            polls.push(tokio::spawn(async move {
                let res = req.await.unwrap();
                let status = res.status().as_u16();
                let body: Value = res.json().await.unwrap();
                (status, body, Instant::now())
            }));
        }
    }
    let total = POLL_IPS as usize * POLLS_PER_IP;
    let deadline = Instant::now() + Duration::from_secs(15);
    let gauge = r#"herald_connections{transport="longpoll"}"#;
    while metric_or_zero(&server, gauge).await < total as f64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let held = metric_or_zero(&server, gauge).await;
    let rss_held = rss_kib(pid);
    let reads_before = metric_or_zero(&server, "herald_long_poll_store_reads_total").await;
    let (with_polls, with_polls_cpu) = bystander_rate(&server, Duration::from_secs(2)).await;
    let reads = metric_or_zero(&server, "herald_long_poll_store_reads_total").await - reads_before;

    // One more from an address that has its 50: refused, with the documented code.
    let over = client_from(10)
        .get(server.url("/api/realtime/poll?types=alert.*&timeout=1"))
        .send()
        .await
        .unwrap();
    let over_status = over.status().as_u16();
    let over_body: Value = over.json().await.unwrap_or(Value::Null);

    // A matching commit answers every held poll at once.
    let published = Instant::now();
    let alert = publish(&server, API_KEY, json!({"type": "alert.fire", "data": {}})).await;
    let mut latencies = Vec::new();
    for p in polls {
        let (status, body, answered) = p.await.unwrap();
        assert_eq!(status, 200, "{body}");
        let events = body["events"].as_array().unwrap();
        assert_eq!(events.len(), 1, "{body}");
        assert_eq!(events[0]["seq"], alert["seq"]);
        assert_eq!(body["cursor"], alert["seq"]);
        latencies.push(answered.saturating_duration_since(published));
    }
    latencies.sort();

    eprintln!(
        "long-polls: {held} held; bystander {alone:.0}/s ({alone_cpu:.2} ms CPU each) alone, \
         {with_polls:.0}/s ({with_polls_cpu:.2} ms CPU each) beside them ({:.0} %); \
         store reads by polls meanwhile {reads}; RSS {rss_before} KiB -> {rss_held} KiB \
         (+{:.1} KiB per poll); beyond the per-IP limit: {over_status} {over_body}; \
         a matching commit answered them in {:?} (first) .. {:?} (last)",
        100.0 * with_polls / alone,
        (rss_held.saturating_sub(rss_before)) as f64 / total as f64,
        latencies[0],
        latencies[latencies.len() - 1],
    );
    assert_eq!(held, total as f64, "every poll is counted as a connection");
    assert!(
        with_polls >= 0.5 * alone,
        "the bystander kept {with_polls:.0}/s of {alone:.0}/s"
    );
    assert_eq!(
        reads, 0.0,
        "held polls read the store only when a commit matches"
    );
    assert_eq!(
        (over_status, over_body["code"].as_str()),
        (429, Some("RATE_LIMITED")),
        "{over_body}"
    );
    assert!(
        metric_or_zero(
            &server,
            r#"herald_refused_total{resource="longpoll",limit="per_ip"}"#
        )
        .await
            >= 1.0
    );
    assert!(
        latencies[0] < Duration::from_millis(500),
        "woken at once: {latencies:?}"
    );
    assert!(
        rss_held.saturating_sub(rss_before) < 40 * 1024,
        "1 000 held polls cost {} KiB",
        rss_held - rss_before
    );
}

// ---------------------------------------------------------------------------------------------
// Mailboxes

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_mailbox_polls_without_an_id_leave_no_state() {
    let _serial = SERIAL.lock().await;
    let server = Server::start();
    let pid = server.pid();
    let attacker = client_from(1);
    let get = |id: Option<String>| {
        let mut req = attacker.get(server.url("/api/messages"));
        if let Some(id) = id {
            req = req.header("x-client-id", id);
        }
        async move {
            let res = req.send().await.unwrap();
            assert_eq!(res.status().as_u16(), 200);
            res.json::<Value>().await.unwrap()
        }
    };
    // Warm up the route, then measure.
    futures_util::stream::iter(0..200)
        .map(|_| get(None))
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let rss_before = rss_kib(pid);
    let started = Instant::now();
    let ids: std::collections::HashSet<String> = futures_util::stream::iter(0..10_000)
        .map(|_| get(None))
        .buffer_unordered(16)
        .map(|body| body["clientId"].as_str().unwrap().to_owned())
        .collect()
        .await;
    let anonymous_secs = started.elapsed().as_secs_f64();
    let rss_anonymous = rss_kib(pid);
    let count_anonymous = metric_or_zero(&server, "herald_mailboxes").await;
    assert_eq!(ids.len(), 10_000, "each answer names a new mailbox");

    // The same with a new id each time: the address keeps at most its 100 mailboxes. The
    // first 1 000 also warm up what reading a mailbox uses (the store's read connections).
    let named = |ids: std::ops::Range<usize>| {
        futures_util::stream::iter(ids)
            .map(|i| get(Some(format!("attacker-{i}"))))
            .buffer_unordered(16)
            .collect::<Vec<_>>()
    };
    named(0..1_000).await;
    let rss_warm = rss_kib(pid);
    let started = Instant::now();
    named(1_000..10_000).await;
    let named_secs = started.elapsed().as_secs_f64();
    let rss_named = rss_kib(pid);
    let count_named = metric_or_zero(&server, "herald_mailboxes").await;
    let evicted =
        metric_or_zero(&server, r#"herald_mailboxes_evicted_total{limit="per_ip"}"#).await;

    // A mailbox of another address, opened before the flood, still gets its messages.
    let keeper = client_from(2);
    let poll_keeper = || async {
        let res = keeper
            .get(server.url("/api/messages"))
            .header("x-client-id", "keeper")
            .send()
            .await
            .unwrap();
        res.json::<Value>().await.unwrap()
    };
    poll_keeper().await;
    futures_util::stream::iter(10_000..11_000)
        .map(|i| get(Some(format!("attacker-{i}"))))
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let (status, _) = post(
        &server,
        "/api/messages",
        Some(&token("poster")),
        &json!({"content": "still here?"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        poll_keeper().await["messages"][0]["content"],
        "still here?",
        "another address's flood evicts only its own mailboxes"
    );

    eprintln!(
        "mailboxes: 10 000 polls without an id in {anonymous_secs:.1} s: RSS {rss_before} -> \
         {rss_anonymous} KiB, {count_anonymous} mailboxes; 10 000 with new ids: RSS \
         {rss_warm} KiB after the first 1 000, {rss_named} KiB after 9 000 more in \
         {named_secs:.1} s, {count_named} mailboxes, {evicted} evicted"
    );
    assert_eq!(count_anonymous, 0.0, "a poll without an id keeps nothing");
    assert_eq!(count_named, 100.0, "max_mailboxes_per_ip");
    assert_eq!(evicted, 9_900.0);
    assert!(
        rss_anonymous.saturating_sub(rss_before) < 2 * 1024,
        "10 000 polls without an id grew RSS by {} KiB",
        rss_anonymous - rss_before
    );
    assert!(
        rss_named.saturating_sub(rss_warm) < 4 * 1024,
        "9 000 new mailboxes grew RSS by {} KiB",
        rss_named - rss_warm
    );
}

// ---------------------------------------------------------------------------------------------
// HTTP publishes

/// Publishes from `client` as `bearer`, 4 requests at a time (as many as the bystander), for
/// `window`; returns how many were accepted and refused, and one refusal (status,
/// `Retry-After`, body).
async fn flood(
    server: &Server,
    client: &reqwest::Client,
    bearer: &str,
    window: Duration,
) -> (usize, usize, Option<(u16, Option<u64>, Value)>) {
    let url = server.url("/api/realtime/publish");
    let deadline = Instant::now() + window;
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (client, url, bearer) = (client.clone(), url.clone(), bearer.to_owned());
            tokio::spawn(async move {
                let (mut ok, mut refused, mut sample) = (0, 0, None);
                while Instant::now() < deadline {
                    let res = client
                        .post(&url)
                        .bearer_auth(&bearer)
                        .json(&json!({"type": "flood.item", "data": {}}))
                        .send()
                        .await
                        .unwrap();
                    let status = res.status().as_u16();
                    if status == 201 {
                        ok += 1;
                        continue;
                    }
                    refused += 1;
                    let retry = res
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok()?.parse().ok());
                    sample = Some((status, retry, res.json().await.unwrap_or(Value::Null)));
                }
                (ok, refused, sample)
            })
        })
        .collect();
    let (mut ok, mut refused, mut sample) = (0, 0, None);
    for w in workers {
        let (o, r, s) = w.await.unwrap();
        ok += o;
        refused += r;
        sample = sample.or(s);
    }
    (ok, refused, sample)
}

async fn publish_from(
    client: &reqwest::Client,
    server: &Server,
    path: &str,
    bearer: &str,
    body: Value,
) -> (u16, Value) {
    let res = client
        .post(server.url(path))
        .bearer_auth(bearer)
        .json(&body)
        .send()
        .await
        .unwrap();
    (
        res.status().as_u16(),
        res.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_publish_flood_is_refused_per_identity_and_per_address() {
    let _serial = SERIAL.lock().await;
    let server = Server::start_env(
        &[],
        &[
            ("HERALD_PUBLISH_RATE_PER_IDENTITY", "20"),
            ("HERALD_PUBLISH_RATE_PER_IP", "100"),
            ("HERALD_PUBLISH_BYTES_PER_IDENTITY", "65536"),
        ],
    );
    bystander_rate(&server, Duration::from_millis(500)).await;
    let (alone, _) = bystander_rate(&server, Duration::from_secs(2)).await;

    // One identity floods from one address while the bystander publishes.
    let alice = token("alice");
    let attacker = client_from(2);
    let window = Duration::from_secs(2);
    let (flooded, bystanding) = tokio::join!(
        flood(&server, &attacker, &alice, window),
        bystander_rate(&server, window)
    );
    let (accepted, refused, sample) = flooded;
    let (with_flood, _) = bystanding;
    eprintln!(
        "publish flood: bystander {alone:.0}/s alone, {with_flood:.0}/s beside one identity's \
         flood ({:.0} %); the flood had {accepted} accepted, {refused} refused: {sample:?}",
        100.0 * with_flood / alone
    );
    // 20/s with a burst of 40: over ~2 s at most 40 + 2 × 20, and one more.
    assert!(accepted <= 40 + 20 * 3 + 1, "{accepted} accepted");
    assert!(refused > 0);
    let (status, retry_after, body) = sample.unwrap();
    assert_eq!(
        (status, body["code"].as_str()),
        (429, Some("RATE_LIMITED")),
        "{body}"
    );
    assert!(
        retry_after.is_some_and(|s| s >= 1),
        "Retry-After: {retry_after:?}"
    );
    assert!(
        metric_or_zero(
            &server,
            r#"herald_refused_total{resource="publish",limit="identity_rate"}"#
        )
        .await
            >= refused as f64
    );
    // The flood's requests still take their share of the server (the budget bounds what is
    // stored and fanned out, not how fast a client can be told no; measured: ~40 %, the same
    // as beside an unlimited flood): the bystander is slowed, not starved.
    assert!(
        with_flood >= 0.2 * alone,
        "the bystander kept {with_flood:.0}/s of {alone:.0}/s"
    );

    // Another identity from the same address is not affected.
    let (status, body) = publish_from(
        &attacker,
        &server,
        "/api/realtime/publish",
        &token("bob"),
        json!({"type": "flood.item"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");

    // A batch counts its events: it may overdraw the budget once, then the identity waits.
    let carol = token("carol");
    let events: Vec<Value> = (0..100).map(|_| json!({"type": "flood.batch"})).collect();
    let batch = json!({ "events": events });
    let (status, body) = publish_from(
        &attacker,
        &server,
        "/api/realtime/publish/batch",
        &carol,
        batch.clone(),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = publish_from(
        &attacker,
        &server,
        "/api/realtime/publish",
        &carol,
        json!({"type": "flood.item"}),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (429, Some("RATE_LIMITED")),
        "{body}"
    );

    // Bytes: 60 KiB events against 64 KiB/s (burst 128 KiB): the third overdraws, the fourth
    // waits.
    let dave = token("dave");
    let big = json!({"type": "flood.big", "data": {"pad": "x".repeat(60 * 1024)}});
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let path = "/api/realtime/publish";
        statuses.push(
            publish_from(&attacker, &server, path, &dave, big.clone())
                .await
                .0,
        );
    }
    assert_eq!(statuses, [201, 201, 201, 429]);
    assert!(
        metric_or_zero(
            &server,
            r#"herald_refused_total{resource="publish",limit="identity_bytes"}"#
        )
        .await
            >= 1.0
    );

    // Many identities from one address: the address's budget (100/s, burst 200) holds them,
    // while another address is not affected.
    let crowd = client_from(3);
    let tokens: Vec<String> = (0..400).map(|i| token(&format!("crowd-{i}"))).collect();
    let started = Instant::now();
    let statuses: Vec<u16> = futures_util::stream::iter(&tokens)
        .map(|t| {
            publish_from(
                &crowd,
                &server,
                "/api/realtime/publish",
                t,
                json!({"type": "flood.crowd"}),
            )
        })
        .buffer_unordered(16)
        .map(|(status, _)| status)
        .collect()
        .await;
    let secs = started.elapsed().as_secs_f64();
    let accepted = statuses.iter().filter(|s| **s == 201).count();
    eprintln!("publish crowd: 400 identities from one address in {secs:.1} s: {accepted} accepted");
    assert!(statuses.iter().all(|s| *s == 201 || *s == 429));
    assert!(
        accepted as f64 <= 200.0 + 100.0 * secs + 1.0,
        "{accepted} accepted"
    );
    assert!(accepted < 400);
    let (status, body) = publish_from(
        &client_from(4),
        &server,
        "/api/realtime/publish",
        &token("elsewhere"),
        json!({"type": "flood.item"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert!(
        metric_or_zero(
            &server,
            r#"herald_refused_total{resource="publish",limit="ip_rate"}"#
        )
        .await
            >= 1.0
    );
}
