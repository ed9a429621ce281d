//! `herald publish`: one event through `POST /api/realtime/publish`.

use anyhow::Context;
use clap::Args;
use serde_json::{Value, json};

use super::{ServerArgs, answer};

#[derive(Args)]
#[command(
    after_help = "Example:\n  herald publish chat.message '{\"text\":\"hello\"}' --room lobby --token \"$(herald token --user alice)\"\n\n\
Prints the acknowledgement once the event is durable: {\"success\":true,\"id\":…,\"seq\":…,\"type\":…,\"timestamp\":…}"
)]
pub struct PublishArgs {
    /// The event type, e.g. `chat.message`.
    #[arg(value_name = "TYPE")]
    kind: String,
    /// The event's data, as JSON.
    #[arg(value_name = "DATA", default_value = "{}", value_parser = parse_json)]
    data: Value,
    /// The room the event belongs to (`roomId`).
    #[arg(long)]
    room: Option<String>,
    /// Publish on behalf of this user (`userId`; admin tokens and API keys only).
    #[arg(long)]
    user: Option<String>,
    #[command(flatten)]
    server: ServerArgs,
}

fn parse_json(s: &str) -> Result<Value, String> {
    serde_json::from_str(s).map_err(|e| format!("not JSON: {e}"))
}

pub async fn publish(args: PublishArgs) -> anyhow::Result<()> {
    let credential = args
        .server
        .credential()
        .context("publishing needs credentials: --token, --api-key or HERALD_TOKEN")?;
    let url = args.server.http("/api/realtime/publish")?;
    let body =
        json!({"type": args.kind, "data": args.data, "roomId": args.room, "userId": args.user});
    let res = reqwest::Client::new()
        .post(url.clone())
        .bearer_auth(credential)
        .json(&body)
        .send()
        .await;
    let ack = answer(&url, res).await?;
    println!("{}", ack["event"]);
    Ok(())
}
