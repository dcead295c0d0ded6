//! How a CLI command reaches the queue: the running engine over its socket, or, when none
//! runs, the database file opened by the command itself for as long as it runs (running
//! tasks only if the command waits for them).

use std::time::Duration;

use anyhow::{anyhow, bail};
use hyper::Method;
use serde_json::Value;

use crate::api::EngineOverview;
use crate::config::Config;
use crate::engine::client::{CallError, EngineClient};
use crate::engine::{check_config, Engine, EngineOptions, OpenError};
use crate::service::tools::safe_to_repeat;

/// How long a command keeps trying to reach an engine that is starting or being replaced.
const REACH_WITHIN: Duration = Duration::from_secs(15);

pub enum Conn {
    Remote(EngineClient, bool),
    Local(Box<Engine>, bool),
}

impl Conn {
    /// The running engine if one answers; otherwise the file itself. `active`: run tasks and
    /// deliver webhooks while the command lasts (it waits for tasks).
    pub async fn open(cfg: &Config, active: bool) -> anyhow::Result<Conn> {
        let client = EngineClient::new(&crate::rest::socket::socket_path(&cfg.db_path()));
        let checked = check_config(cfg)?;
        let deadline = tokio::time::Instant::now() + REACH_WITHIN;
        loop {
            // No answer (none runs, or it went away mid-answer): look at the file.
            if client.request(Method::GET, "/health", None).await.is_ok() {
                return Ok(Conn::Remote(client, active));
            }
            let opts = EngineOptions {
                checked: checked.clone(),
                active,
                http: None,
                http_required: false,
            };
            match Engine::open(cfg, opts).await {
                Ok(e) => return Ok(Conn::Local(Box::new(e), active)),
                Err(OpenError::Failed(e)) => return Err(e),
                Err(OpenError::Locked(m)) if tokio::time::Instant::now() >= deadline => bail!(
                    "the database is held by a process that does not answer on {}: {m}",
                    client.socket().display()
                ),
                Err(OpenError::Locked(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Whether this command opened the file itself.
    pub fn is_local(&self) -> bool {
        matches!(self, Conn::Local(..))
    }

    /// Calls an MCP tool; its domain error becomes this error. A read cut off by the
    /// engine's death is tried again on whatever serves the file next.
    pub async fn tool(&mut self, cfg: &Config, name: &str, args: Value) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + REACH_WITHIN;
        loop {
            let failure = match self {
                Conn::Local(e, _) => {
                    return e
                        .service()
                        .call_tool(name, args)
                        .await
                        .map_err(|m| anyhow!(m))
                }
                Conn::Remote(c, _) => match c.call_tool(name, &args).await {
                    Ok(answer) => return answer.map_err(|m| anyhow!(m)),
                    Err(e @ CallError::Lost(_)) if !safe_to_repeat(name, &args) => {
                        bail!("{e}; it may or may not have taken effect: check before repeating")
                    }
                    Err(e) => e,
                },
            };
            if tokio::time::Instant::now() >= deadline {
                bail!("{failure}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            let active = matches!(self, Conn::Remote(_, true) | Conn::Local(_, true));
            *self = Conn::open(cfg, active).await?;
        }
    }

    pub async fn overview(&self) -> anyhow::Result<EngineOverview> {
        match self {
            Conn::Local(e, _) => Ok(e.service().overview().await?),
            Conn::Remote(c, _) => {
                let (_, v) = c.request(Method::GET, "/rpc/overview", None).await?;
                match (v.get("ok"), v.get("error").and_then(Value::as_str)) {
                    (Some(ok), _) => Ok(serde_json::from_value(ok.clone())?),
                    (None, Some(m)) => bail!("{m}"),
                    _ => bail!("unexpected answer from the engine: {v}"),
                }
            }
        }
    }

    /// Ends the command: a file opened here is flushed and closed (tasks still running are
    /// stopped after the grace period and run again by the next engine).
    pub async fn close(self) {
        if let Conn::Local(e, _) = self {
            e.shutdown().await;
        }
    }
}
