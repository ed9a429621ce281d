//! The cluster's id kept in Redis, under `{prefix}:cluster`: the PostgreSQL database a cluster
//! owns records it too (`herald_store::ownership`), so that nodes pointing at one database but
//! at different Redis servers under the same prefix are told apart, and a prefix used by a
//! running cluster is not taken by one with another database.

use async_trait::async_trait;
use herald_core::log::PublishError;
use herald_store::ClusterIds;
use redis::aio::ConnectionManager;
use redis::{AsyncTypedCommands, Script};

use crate::{RedisConfig, connect};

/// Sets the key unless it exists; answers its value.
const SET_IF_ABSENT: &str = r"
local current = redis.call('GET', KEYS[1])
if current then
  return current
end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
";

/// `herald_store::ClusterIds` in Redis.
pub struct RedisClusterIds {
    commands: ConnectionManager,
    /// The server, without its password, for messages.
    server: String,
    key: String,
    nodes: String,
    node_prefix: String,
}

impl RedisClusterIds {
    /// Connects to the Redis the cluster's log uses.
    pub async fn connect(config: &RedisConfig) -> Result<Self, PublishError> {
        let (_, commands) = connect(config).await?;
        let p = &config.prefix;
        Ok(Self {
            commands,
            server: display_url(&config.url),
            key: format!("{p}:cluster"),
            nodes: format!("{p}:nodes"),
            node_prefix: format!("{p}:node:"),
        })
    }
}

/// `url` without the password it may hold (`redis://:secret@host` → `redis://host`).
pub fn display_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
            format!("{scheme}://{rest}")
        }
        None => url.to_owned(),
    }
}

#[async_trait]
impl ClusterIds for RedisClusterIds {
    fn describe(&self) -> String {
        format!("the Redis at {}", self.server)
    }

    async fn get(&self) -> Result<Option<String>, String> {
        self.commands
            .clone()
            .get(&self.key)
            .await
            .map_err(|e| e.to_string())
    }

    async fn set(&self, id: &str) -> Result<(), String> {
        self.commands
            .clone()
            .set(&self.key, id)
            .await
            .map_err(|e| e.to_string())
    }

    async fn set_if_absent(&self, id: &str) -> Result<String, String> {
        Script::new(SET_IF_ABSENT)
            .key(&self.key)
            .arg(id)
            .invoke_async(&mut self.commands.clone())
            .await
            .map_err(|e| e.to_string())
    }

    async fn live_nodes(&self) -> Result<usize, String> {
        let mut conn = self.commands.clone();
        let ids = conn
            .smembers(&self.nodes)
            .await
            .map_err(|e| e.to_string())?;
        if ids.is_empty() {
            return Ok(0);
        }
        let keys: Vec<String> = ids
            .iter()
            .map(|id| format!("{}{id}", self.node_prefix))
            .collect();
        let found: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        Ok(found.iter().flatten().count())
    }
}
