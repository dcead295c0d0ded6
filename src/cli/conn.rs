//! How a CLI command reaches the queue: the running engine over its socket, started first
//! (detached, like a session does) when none runs. A command never opens the database itself.

use std::time::Duration;

use anyhow::{anyhow, bail};
use hyper::Method;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::api::{EndedReport, EngineOverview, PruneReport};
use crate::config::Config;
use crate::engine::check_config;
use crate::engine::launch::Launcher;
use crate::link::client::{Attached, CallError, EngineClient};
use crate::link::SessionContext;
use crate::service::tools::safe_to_repeat;

/// How long a command keeps trying to reach an engine that is starting or being replaced.
const REACH_WITHIN: Duration = Duration::from_secs(30);

pub struct Conn {
    launcher: Launcher,
    session: SessionContext,
    /// Held while the command runs: the engine counts the command as a session.
    _attached: Attached,
    started: bool,
}

impl Conn {
    /// Attaches to the running engine, starting one if none answers.
    pub async fn open(cfg: &Config) -> anyhow::Result<Conn> {
        check_config(cfg)?;
        let launcher = Launcher::new(cfg);
        let running = launcher
            .client()
            .request(Method::GET, "/health", None)
            .await
            .is_ok();
        let attached = launcher
            .attach(REACH_WITHIN, &CancellationToken::new())
            .await?;
        Ok(Conn {
            launcher,
            session: SessionContext::of_this_process(&cfg.agent_dirs()),
            _attached: attached,
            started: !running,
        })
    }

    /// Whether no engine was running, so this command started one.
    pub fn started_engine(&self) -> bool {
        self.started
    }

    /// Calls an MCP tool; its domain error becomes this error. A read cut off by the
    /// engine's death is tried again on the next engine.
    pub async fn tool(&mut self, _cfg: &Config, name: &str, args: Value) -> anyhow::Result<Value> {
        let session = self.session.clone();
        self.reaching(|client| {
            let (args, session) = (args.clone(), session.clone());
            async move {
                match client.call_tool(name, &args, &session).await {
                    Ok(answer) => Reached::Done(answer.map_err(|m| anyhow!(m))),
                    Err(e @ CallError::Lost(_)) if !safe_to_repeat(name, &args) => {
                        Reached::Done(Err(anyhow!(
                            "{e}; it may or may not have taken effect: check before repeating"
                        )))
                    }
                    Err(e) => Reached::Again(e.to_string()),
                }
            }
        })
        .await
    }

    pub async fn overview(&self) -> anyhow::Result<EngineOverview> {
        overview(&self.launcher).await
    }

    /// The tasks of `project` that ended since it was last told, now counted as told. An
    /// engine that is stopping answers 503 before it looks: the next engine is asked.
    pub async fn ended(&mut self, project: &str) -> anyhow::Result<EndedReport> {
        self.post_rpc("/rpc/ended", json!({ "project": project }))
            .await
    }

    /// Removes finished work that ended more than `older_than` ago (default: the engine's
    /// retention period) now. Repeating it is harmless, so it goes to the next engine too.
    pub async fn prune(&mut self, older_than: Option<&str>) -> anyhow::Result<PruneReport> {
        self.post_rpc("/rpc/prune", json!({ "older_than": older_than }))
            .await
    }

    /// An internal request answered `{"ok": T}` or `{"error": message}`, tried on the next
    /// engine when this one stops.
    async fn post_rpc<T: serde::de::DeserializeOwned>(
        &mut self,
        path: &'static str,
        body: Value,
    ) -> anyhow::Result<T> {
        self.reaching(|client| {
            let body = body.clone();
            async move {
                match client.request(Method::POST, path, Some(&body)).await {
                    Ok((status, v)) => {
                        match (v.get("ok"), v.get("error").and_then(Value::as_str)) {
                            (Some(ok), _) => Reached::Done(
                                serde_json::from_value(ok.clone()).map_err(Into::into),
                            ),
                            (None, Some(m)) => Reached::Done(Err(anyhow!("{m}"))),
                            _ => Reached::Again(format!("the engine answered {status}: {v}")),
                        }
                    }
                    Err(e) => Reached::Again(e.to_string()),
                }
            }
        })
        .await
    }

    /// The dashboard's first URL; the engine starts serving it if it did not yet.
    pub async fn dashboard_url(&mut self) -> anyhow::Result<String> {
        self.reaching(|client| async move {
            match client.request(Method::POST, "/rpc/dashboard", None).await {
                Ok((status, v)) => match (
                    v.pointer("/ok/url").and_then(Value::as_str),
                    v.get("error").and_then(Value::as_str),
                ) {
                    (Some(url), _) => Reached::Done(Ok(url.to_string())),
                    (None, Some(m)) => Reached::Done(Err(anyhow!("{m}"))),
                    _ => Reached::Again(format!("the engine answered {status}: {v}")),
                },
                Err(e) => Reached::Again(e.to_string()),
            }
        })
        .await
    }

    /// Tries `attempt` on the engine until it is done, attaching to the next engine between
    /// tries (one that stopped or died meanwhile is replaced), for up to [`REACH_WITHIN`].
    async fn reaching<T, F, Fut>(&mut self, mut attempt: F) -> anyhow::Result<T>
    where
        F: FnMut(EngineClient) -> Fut,
        Fut: std::future::Future<Output = Reached<T>>,
    {
        let deadline = tokio::time::Instant::now() + REACH_WITHIN;
        loop {
            let failure = match attempt(self.launcher.client().clone()).await {
                Reached::Done(r) => return r,
                Reached::Again(why) => why,
            };
            if tokio::time::Instant::now() >= deadline {
                bail!("{failure}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            self._attached = self
                .launcher
                .attach(REACH_WITHIN, &CancellationToken::new())
                .await?;
        }
    }

    /// Ends the command (the engine runs on).
    pub async fn close(self) {}
}

/// One try of [`Conn::reaching`].
enum Reached<T> {
    /// An answer (or a failure that trying again would not mend).
    Done(anyhow::Result<T>),
    /// No answer: try the next engine.
    Again(String),
}

async fn overview(launcher: &Launcher) -> anyhow::Result<EngineOverview> {
    let (_, v) = launcher
        .client()
        .request(Method::GET, "/rpc/overview", None)
        .await?;
    match (v.get("ok"), v.get("error").and_then(Value::as_str)) {
        (Some(ok), _) => Ok(serde_json::from_value(ok.clone())?),
        (None, Some(m)) => bail!("{m}"),
        _ => bail!("unexpected answer from the engine: {v}"),
    }
}

/// The `stop` command: asks the running engine to stop (`now`, with the grace period) or to
/// stop once idle, and for `now` waits until its process is gone. No engine running is not an
/// error.
pub async fn stop(cfg: &Config, now: bool, as_json: bool) -> anyhow::Result<i32> {
    let launcher = Launcher::new(cfg);
    let say = |v: Value, text: String| {
        if as_json {
            outln!("{v}");
        } else {
            outln!("{text}");
        }
    };
    let Ok(o) = overview(&launcher).await else {
        say(
            json!({"stopped": false, "engine_running": false}),
            format!("no engine runs on {}", cfg.db_path().display()),
        );
        return Ok(0);
    };
    launcher.client().stop(now).await?;
    if !now {
        say(
            json!({"stopped": false, "engine_running": true, "pid": o.pid, "retiring": true}),
            format!(
                "engine pid {} stops once no task is pending or running and no webhook is owed",
                o.pid
            ),
        );
        return Ok(0);
    }
    // The grace period, plus time to requeue and close the database.
    let limit = Duration::from_secs(cfg.shutdown_grace_seconds + 30);
    let started = std::time::Instant::now();
    while crate::runner::process::alive(o.pid) {
        if started.elapsed() >= limit {
            bail!("engine pid {} did not stop within {limit:?}", o.pid);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    say(
        json!({"stopped": true, "pid": o.pid}),
        format!("engine pid {} stopped", o.pid),
    );
    Ok(0)
}
