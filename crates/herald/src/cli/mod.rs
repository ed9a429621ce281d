//! The client commands, `herald publish` and `herald subscribe`: they talk to a running server
//! over its HTTP API and its WebSocket, as any application would.

mod publish;
mod subscribe;

pub(crate) use publish::{PublishArgs, publish};
pub(crate) use subscribe::{SubscribeArgs, subscribe};

use anyhow::{Context, bail};
use clap::Args;
use reqwest::Url;
use serde_json::Value;

/// Where the server is and who is calling; shared by the client commands.
#[derive(Args)]
pub(crate) struct ServerArgs {
    /// The server's base URL (plain http; a ws:// URL is derived from it).
    #[arg(long, env = "HERALD_URL", default_value = "http://localhost:3000")]
    url: Url,
    /// A JWT to act as its user (e.g. from `herald token --user alice`).
    #[arg(long, env = "HERALD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A server API key (`api_keys` in the server's configuration); used instead of the token.
    #[arg(long, env = "HERALD_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

impl ServerArgs {
    /// The server accepts JWTs and API keys alike, as `Bearer` credentials and in the
    /// WebSocket `authenticate` message.
    fn credential(&self) -> Option<&str> {
        self.api_key.as_deref().or(self.token.as_deref())
    }

    fn http(&self, path: &str) -> anyhow::Result<Url> {
        if self.url.scheme() != "http" {
            bail!("--url must be an http:// URL, not {}", self.url);
        }
        self.url
            .join(path)
            .with_context(|| format!("bad --url {}", self.url))
    }

    fn ws(&self, path: &str) -> anyhow::Result<Url> {
        let mut url = self.http(path)?;
        url.set_scheme("ws")
            .expect("http and ws URLs have the same shape");
        Ok(url)
    }
}

/// A response's JSON body, or the server's `{error, code}` as an error.
async fn answer(url: &Url, res: reqwest::Result<reqwest::Response>) -> anyhow::Result<Value> {
    let res = res.with_context(|| format!("cannot reach Herald at {url}"))?;
    let status = res.status();
    let body: Value = res
        .json()
        .await
        .with_context(|| format!("{url} answered {status} without JSON: is it Herald?"))?;
    if !status.is_success() {
        bail!(
            "{url} refused: {} ({}, HTTP {})",
            body["error"].as_str().unwrap_or("no reason given"),
            body["code"].as_str().unwrap_or("no code"),
            status.as_u16()
        );
    }
    Ok(body)
}
