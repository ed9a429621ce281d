//! `herald subscribe`: matching events as JSON lines, over the WebSocket protocol. When the
//! connection drops it reconnects and resumes after the last `seq` it printed (`since`), so
//! nothing is missed or repeated.

use std::future::Future;
use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::{ServerArgs, answer};

/// The first pause before reconnecting; it doubles up to `MAX_BACKOFF` while attempts fail.
const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long a reply to `authenticate` or `subscribe` may take.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Args)]
#[command(
    after_help = "Example:\n  herald subscribe --types 'chat.*' --room lobby --since 120\n\n\
Prints each event on its own line: {\"id\":…,\"seq\":…,\"type\":…,\"data\":…,\"userId\":…,\"roomId\":…,\"timestamp\":…}.\n\
Connection notices go to stderr. Ctrl-C ends it."
)]
pub(crate) struct SubscribeArgs {
    /// Event types to receive: comma-separated patterns (`chat.message`, `chat.*`, `*`).
    #[arg(long, value_delimiter = ',', default_value = "*")]
    types: Vec<String>,
    /// Only events in this room (`roomId`).
    #[arg(long)]
    room: Option<String>,
    /// Only events of this user (`userId`).
    #[arg(long)]
    user: Option<String>,
    /// Start after this seq, replaying the matching events stored since (default: only events
    /// published from now on).
    #[arg(long)]
    since: Option<u64>,
    #[command(flatten)]
    server: ServerArgs,
}

/// How a connection ended, when not with a fatal error.
enum Ended {
    /// Stdout was closed: nobody reads the events any more.
    OutputClosed,
    /// The connection failed or dropped; `subscribed` tells whether it got as far as its
    /// subscription (then the next attempt starts with the shortest pause).
    Dropped { why: String, subscribed: bool },
}

/// Runs until `stop` resolves (Ctrl-C, SIGTERM) or stdout is closed.
pub(crate) async fn subscribe(
    args: SubscribeArgs,
    stop: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let mut since = match args.since {
        Some(seq) => seq,
        // From now on: after the newest committed event, so nothing published once this
        // returns is missed, even before the subscription is in place.
        None => {
            let url = args.server.http("/health")?;
            let health = answer(&url, reqwest::get(url.clone()).await).await?;
            health["events"]["lastSeq"].as_u64().unwrap_or(0)
        }
    };
    let mut stop = std::pin::pin!(stop);
    let mut backoff = MIN_BACKOFF;
    loop {
        // Stopping drops the connection: closing its socket tells the server at once.
        let ended = tokio::select! {
            ended = connection(&args, &mut since) => ended?,
            () = &mut stop => return Ok(()),
        };
        let (why, subscribed) = match ended {
            Ended::OutputClosed => return Ok(()),
            Ended::Dropped { why, subscribed } => (why, subscribed),
        };
        if subscribed {
            backoff = MIN_BACKOFF;
        }
        eprintln!("herald subscribe: {why}; reconnecting in {backoff:?}");
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = &mut stop => return Ok(()),
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection: authenticate, subscribe resuming after `since`, then print events (moving
/// `since` along) until it drops. Refused credentials or subscription are fatal errors.
async fn connection(args: &SubscribeArgs, since: &mut u64) -> anyhow::Result<Ended> {
    let url = args.server.ws("/ws")?;
    let dropped = |why: String, subscribed| Ok(Ended::Dropped { why, subscribed });
    let mut ws = match tokio_tungstenite::connect_async(url.as_str()).await {
        Ok((ws, _)) => ws,
        Err(e) => return dropped(format!("cannot connect to {url}: {e}"), false),
    };
    if let Some(token) = args.server.credential() {
        let sent = json!({"type": "authenticate", "data": {"token": token}});
        match request(&mut ws, sent, "authenticated").await {
            Reply::Ok(_) => {}
            Reply::Refused(e) => bail!("authentication refused: {e}"),
            Reply::Lost(why) => return dropped(why, false),
        }
    }
    let mut filters = serde_json::Map::new();
    if let Some(room) = &args.room {
        filters.insert("roomId".into(), room.as_str().into());
    }
    if let Some(user) = &args.user {
        filters.insert("userId".into(), user.as_str().into());
    }
    let sent = json!({"type": "subscribe", "data": {
        "eventTypes": args.types, "filters": filters, "since": *since}});
    let created = match request(&mut ws, sent, "subscription.created").await {
        Reply::Ok(created) => created,
        Reply::Refused(e) => bail!("subscription refused: {e}"),
        Reply::Lost(why) => return dropped(why, false),
    };
    if created["recovered"] == false {
        eprintln!(
            "herald subscribe: events after seq {since} up to {} are no longer stored (retention); continuing from there",
            created["oldestSeq"]
        );
    }
    eprintln!(
        "herald subscribe: subscribed to {} after seq {since}",
        args.types.join(",")
    );

    loop {
        let text = match ws.next().await {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => {
                let why = frame.map_or("no reason".to_owned(), |f| {
                    format!("{} {}", f.code, f.reason)
                });
                return dropped(format!("the server closed the connection ({why})"), true);
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return dropped(format!("connection lost: {e}"), true),
            None => return dropped("connection lost".into(), true),
        };
        let message: Value =
            serde_json::from_str(text.as_str()).context("the server sent invalid JSON")?;
        match message["type"].as_str() {
            Some("event") => {
                let event = &message["data"];
                if writeln!(std::io::stdout(), "{event}").is_err() {
                    // Whoever read the output is gone (e.g. `| head -1`).
                    return Ok(Ended::OutputClosed);
                }
                *since = event["seq"].as_u64().context("an event without a seq")?;
            }
            Some("error") => eprintln!("herald subscribe: server error: {}", message["data"]),
            _ => {}
        }
    }
}

enum Reply {
    /// The expected reply's `data`.
    Ok(Value),
    /// An `error` reply: its text and code.
    Refused(String),
    /// The connection ended (or the reply never came).
    Lost(String),
}

/// Sends a command and waits for its reply (`expected`, or an `error`), skipping anything else.
async fn request<S>(ws: &mut S, command: Value, expected: &str) -> Reply
where
    S: futures_util::Sink<Message>
        + futures_util::Stream<Item = tokio_tungstenite::tungstenite::Result<Message>>
        + Unpin,
{
    if ws.send(Message::text(command.to_string())).await.is_err() {
        return Reply::Lost("connection lost".into());
    }
    let reply = tokio::time::timeout(REPLY_TIMEOUT, async {
        while let Some(Ok(frame)) = ws.next().await {
            let Message::Text(text) = frame else { continue };
            let Ok(message) = serde_json::from_str::<Value>(text.as_str()) else {
                continue;
            };
            if message["type"] == expected {
                return Reply::Ok(message["data"].clone());
            }
            if message["type"] == "error" {
                let data = &message["data"];
                return Reply::Refused(format!(
                    "{} ({})",
                    data["error"].as_str().unwrap_or("?"),
                    data["code"].as_str().unwrap_or("?")
                ));
            }
        }
        Reply::Lost("connection lost".into())
    });
    reply
        .await
        .unwrap_or_else(|_| Reply::Lost(format!("no {expected} reply within {REPLY_TIMEOUT:?}")))
}
