//! `herald publish`: one event through `POST /api/realtime/publish`, or a file of events
//! through `POST /api/realtime/publish/batch`.

use std::io::Read;

use anyhow::{Context, bail};
use clap::Args;
use reqwest::Url;
use serde_json::{Value, json};

use super::{ServerArgs, answer};

/// Events per batch request: the server's limit.
const BATCH_EVENTS: usize = 1000;
/// Bytes of events per batch request, below the server's 1 MiB body limit.
const BATCH_BYTES: usize = 1000 * 1000;

#[derive(Args)]
#[command(
    after_help = "Examples:\n  herald publish chat.message '{\"text\":\"hello\"}' --room lobby --token \"$(herald token --user alice)\"\n  \
herald publish --from events.jsonl --api-key \"$KEY\"\n\n\
Prints the acknowledgement once the event is durable: {\"success\":true,\"id\":…,\"seq\":…,\"type\":…,\"timestamp\":…};\n\
with --from, one line per event, in the file's order."
)]
pub(crate) struct PublishArgs {
    /// The event type, e.g. `chat.message`.
    #[arg(value_name = "TYPE", required_unless_present = "from")]
    kind: Option<String>,
    /// The event's data, as JSON.
    #[arg(value_name = "DATA", default_value = "{}", value_parser = parse_json)]
    data: Value,
    /// The room the event belongs to (`roomId`).
    #[arg(long, conflicts_with = "from")]
    room: Option<String>,
    /// Publish on behalf of this user (`userId`; admin tokens and API keys only).
    #[arg(long, conflicts_with = "from")]
    user: Option<String>,
    /// Publish every event of FILE (`-`: standard input), one JSON object per line as
    /// `POST /api/realtime/publish` takes it (`{"type":…,"data":…,"roomId":…}`), in order, up
    /// to 1 000 per request. The whole file is checked first; each request is committed
    /// whole or not at all, and the command stops at the first refused one.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["kind", "data"])]
    from: Option<String>,
    #[command(flatten)]
    server: ServerArgs,
}

fn parse_json(s: &str) -> Result<Value, String> {
    serde_json::from_str(s).map_err(|e| format!("not JSON: {e}"))
}

pub(crate) async fn publish(args: PublishArgs) -> anyhow::Result<()> {
    let credential = args
        .server
        .credential()
        .context("publishing needs credentials: --token, --api-key or HERALD_TOKEN")?
        .to_owned();
    let Some(from) = &args.from else {
        let url = args.server.http("/api/realtime/publish")?;
        let body =
            json!({"type": args.kind, "data": args.data, "roomId": args.room, "userId": args.user});
        let ack = post(&url, &credential, &body).await?;
        println!("{}", ack["event"]);
        return Ok(());
    };
    let lines = events_of(from)?;
    let url = args.server.http("/api/realtime/publish/batch")?;
    for batch in batches(&lines) {
        let events: Vec<&Value> = batch.iter().map(|(_, event, _)| event).collect();
        let first = batch[0].0;
        let acks = post(&url, &credential, &json!({ "events": events }))
            .await
            .with_context(|| {
                format!("the events from line {first} on were not published (those before were)")
            })?;
        for ack in acks["events"].as_array().into_iter().flatten() {
            println!("{ack}");
        }
    }
    Ok(())
}

async fn post(url: &Url, credential: &str, body: &Value) -> anyhow::Result<Value> {
    let res = reqwest::Client::new()
        .post(url.clone())
        .bearer_auth(credential)
        .json(body)
        .send()
        .await;
    answer(url, res).await
}

/// The events of `from` (a path, or `-` for standard input): each non-blank line a JSON
/// object, with its line number and length.
fn events_of(from: &str) -> anyhow::Result<Vec<(usize, Value, usize)>> {
    let mut text = String::new();
    if from == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read standard input")?;
    } else {
        text = std::fs::read_to_string(from).with_context(|| format!("cannot read {from}"))?;
    }
    let mut events = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let event: Value = serde_json::from_str(line)
            .with_context(|| format!("{from}:{}: not JSON; nothing was published", i + 1))?;
        if !event.is_object() {
            bail!("{from}:{}: not a JSON object; nothing was published", i + 1);
        }
        events.push((i + 1, event, line.len()));
    }
    if events.is_empty() {
        bail!("{from} holds no events");
    }
    Ok(events)
}

/// Consecutive runs of events that fit one batch request.
fn batches(events: &[(usize, Value, usize)]) -> Vec<&[(usize, Value, usize)]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, (_, _, len)) in events.iter().enumerate() {
        if i > start && (i - start == BATCH_EVENTS || bytes + len > BATCH_BYTES) {
            out.push(&events[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += len + 1;
    }
    out.push(&events[start..]);
    out
}
