//! A session's way to its engine. The process an MCP client starts holds no state: it attaches
//! to the engine of its database file (starting one if none runs, see
//! [`crate::engine::launch`]) and forwards every tool call over the engine's socket with the
//! session's context (its directory and agent search path). It watches the engine through the
//! attach stream; when the engine dies, the next one is started (recovery runs first) and calls
//! that are safe to repeat are sent again. Killing this process at any moment loses nothing.
//!
//! The engine's own MCP endpoint over HTTP uses the same [`Backend`], answered in-process.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::api::{ChannelEvent, WaitProgress};
use crate::config::Config;
use crate::engine::launch::{LaunchError, Launcher};
use crate::link::client::{Attached, CallError, EngineClient};
use crate::link::SessionContext;
use crate::service::tools::{safe_to_repeat, ToolAnswer};
use crate::service::Service;

/// How long a call waits for an engine (while one starts or replaces a dead one) before it is
/// answered with an error.
const ENGINE_WAIT: Duration = Duration::from_secs(30);

/// How this session's version compares with its engine's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionVerdict {
    Same,
    /// The engine is older: it is asked to retire once idle, and the next engine is ours.
    EngineOlder,
    /// The engine is newer: this session should be restarted with the newer binary.
    EngineNewer,
}

/// Compares dotted version numbers (a missing or unreadable part counts as 0).
pub fn compare_versions(mine: &str, engine: &str) -> VersionVerdict {
    let parts = |v: &str| -> Vec<u64> {
        v.split(['.', '-', '+'])
            .take(3)
            .map(|p| p.parse().unwrap_or(0))
            .collect()
    };
    if mine == engine {
        return VersionVerdict::Same;
    }
    match parts(engine).cmp(&parts(mine)) {
        std::cmp::Ordering::Less => VersionVerdict::EngineOlder,
        std::cmp::Ordering::Greater => VersionVerdict::EngineNewer,
        // Same numbers written otherwise: nothing to replace.
        std::cmp::Ordering::Equal => VersionVerdict::Same,
    }
}

/// Where calls go.
#[derive(Clone)]
pub struct Backend {
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    /// A session of its own process: the engine over the socket.
    Remote {
        rx: watch::Receiver<Option<EngineClient>>,
        session: Arc<SessionContext>,
        /// The same context without the session's id: what it submits so is not claimed for
        /// a channel event.
        untold: Arc<SessionContext>,
        notice: Arc<Mutex<Option<String>>>,
    },
    /// Inside the engine (MCP over HTTP): the service itself, in the engine's own context.
    Local(Service),
}

impl Backend {
    /// Calls answered by the engine's own service, for clients served by the engine itself.
    pub fn local(service: Service) -> Backend {
        Backend {
            kind: Kind::Local(service),
        }
    }

    /// Something the session should be told with every answer (an engine of another version).
    pub fn notice(&self) -> Option<String> {
        match &self.kind {
            Kind::Remote { notice, .. } => notice.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            Kind::Local(_) => None,
        }
    }

    /// Answers a tool call. If the engine dies mid-call, a call that is safe to repeat is sent
    /// again to the next engine; any other call is answered with an error that says it may
    /// or may not have taken effect.
    pub async fn call(&self, name: &str, args: Value) -> ToolAnswer {
        self.call_in(name, args, true).await
    }

    /// A call whose task this session is not told of by a channel event (a blocking
    /// `task_run` tells the end in its answer).
    pub async fn call_untold(&self, name: &str, args: Value) -> ToolAnswer {
        self.call_in(name, args, false).await
    }

    /// Asks to be told by a channel event when the task ends after all (a `task_run` cut
    /// short while its task runs on). Best effort.
    pub async fn tell_me_when_ended(&self, task_id: &str) {
        if let Kind::Remote { rx, session, .. } = &self.kind {
            let client = rx.borrow().clone();
            if let (Some(c), Some(id)) = (client, &session.session_id) {
                c.claim(task_id, id).await;
            }
        }
    }

    async fn call_in(&self, name: &str, args: Value, told: bool) -> ToolAnswer {
        let (rx, session) = match &self.kind {
            Kind::Remote {
                rx,
                session,
                untold,
                ..
            } => (rx, if told { session } else { untold }),
            Kind::Local(service) => return service.call_tool(name, args).await,
        };
        // Counted from the first failure: a long task_wait cut off late still gets its retry.
        let mut deadline: Option<Instant> = None;
        let mut rx = rx.clone();
        loop {
            let target = rx.borrow_and_update().clone();
            let failure = match target {
                Some(c) => match c.call_tool(name, &args, session).await {
                    Ok(answer) => return answer,
                    Err(CallError::Lost(m)) if !safe_to_repeat(name, &args) => {
                        return Err(format!(
                            "the engine (the orchestr8-async process that holds the database) stopped while handling {name} ({m}); \
                             it may or may not have taken effect. Check (task_status, list_tasks, workflow_status) before repeating it; \
                             a task_async with an idempotency_key is safe to repeat"
                        ));
                    }
                    Err(e) => e.to_string(),
                },
                None => "the engine is being started".to_string(),
            };
            if Instant::now() >= *deadline.get_or_insert_with(|| Instant::now() + ENGINE_WAIT) {
                return Err(format!(
                    "no orchestr8-async engine answered within {}s ({failure}); try again",
                    ENGINE_WAIT.as_secs()
                ));
            }
            // Wait for the supervisor to name the next engine, but look again soon anyway.
            let _ = tokio::time::timeout(Duration::from_millis(250), rx.changed()).await;
        }
    }

    /// Where the given tasks stand (for progress notifications), or `None` if the engine
    /// cannot say right now.
    pub async fn progress(&self, task_ids: &[String]) -> Option<WaitProgress> {
        match &self.kind {
            Kind::Local(service) => service.task_progress(task_ids).await.ok(),
            Kind::Remote { rx, .. } => {
                let client = rx.borrow().clone()?;
                client.progress(task_ids).await
            }
        }
    }

    /// Waits until the task has ended (in turns of the longest `task_wait`); its task object.
    pub async fn wait_for_end(&self, task_id: &str) -> ToolAnswer {
        loop {
            let waited = self
                .call(
                    "task_wait",
                    serde_json::json!({"task_ids": [task_id], "timeout_seconds": 600}),
                )
                .await?;
            if waited.get("timed_out") == Some(&Value::Bool(false)) {
                return waited
                    .get("tasks")
                    .and_then(|t| t.get(0))
                    .cloned()
                    .ok_or_else(|| format!("task_wait answered without the task: {waited}"));
            }
        }
    }
}

/// A session attached to its engine, and the supervisor that keeps it attached.
pub struct Frontend {
    backend: Backend,
    stop: CancellationToken,
    supervisor: JoinHandle<()>,
    /// What the engine tells this session of the work it handed off (none when the channel is
    /// switched off).
    events: Option<mpsc::UnboundedReceiver<ChannelEvent>>,
}

impl Frontend {
    /// Attaches to the engine (starting one if needed; up to 30 s). `signal` ends the wait at
    /// once, and later the supervisor's.
    pub async fn start(cfg: &Config, signal: &CancellationToken) -> Result<Frontend, LaunchError> {
        let stop = signal.child_token();
        // The session's id, under which the engine tells it of the work it handed off.
        let session_id = cfg.channel.then(|| uuid::Uuid::now_v7().to_string());
        let mut launcher = Launcher::new(cfg);
        let untold = Arc::new(SessionContext::of_this_process(&cfg.agent_dirs()));
        let mut context = (*untold).clone();
        if let Some(id) = &session_id {
            launcher = launcher.for_session(id);
            context = context.with_session_id(id.clone());
        }
        let (events_tx, events) = match session_id {
            Some(_) => {
                let (tx, rx) = mpsc::unbounded_channel();
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let attached = launcher.attach(ENGINE_WAIT, &stop).await?;
        let notice = Arc::new(Mutex::new(None));
        check_engine(&launcher, &attached, &notice).await;
        let (tx, rx) = watch::channel(Some(launcher.client().clone()));
        let backend = Backend {
            kind: Kind::Remote {
                rx,
                session: Arc::new(context),
                untold,
                notice: notice.clone(),
            },
        };
        let supervisor = tokio::spawn(supervise(
            launcher,
            attached,
            tx,
            notice,
            events_tx,
            stop.clone(),
        ));
        Ok(Frontend {
            backend,
            stop,
            supervisor,
            events,
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend.clone()
    }

    /// The events the engine tells this session (tasks and workflows it handed off that have
    /// ended); `None` when the channel is switched off or they were taken already.
    pub fn take_events(&mut self) -> Option<mpsc::UnboundedReceiver<ChannelEvent>> {
        self.events.take()
    }

    /// Stops watching the engine (the engine itself runs on).
    pub async fn close(self) {
        self.stop.cancel();
        let _ = self.supervisor.await;
    }
}

/// Says what the session should know about the engine it attached to, and asks an older
/// engine to retire so that the next one is of this version.
async fn check_engine(launcher: &Launcher, attached: &Attached, notice: &Mutex<Option<String>>) {
    if !attached.differs.is_empty() {
        tracing::warn!(
            "the running engine was started with other settings than this session's ({}); the engine's apply. \
             Run `orchestr8-async-server stop` to have the next session start one with its own",
            attached.differs.join(", ")
        );
    }
    let mine = crate::link::version();
    let text = match compare_versions(mine, &attached.version) {
        VersionVerdict::Same => None,
        VersionVerdict::EngineOlder => {
            let _ = launcher.client().stop(false).await;
            Some(format!(
                "note: this session is orchestr8-async {mine}, its engine {} (older); the engine will be replaced by one of version {mine} as soon as no task is running",
                attached.version
            ))
        }
        VersionVerdict::EngineNewer => Some(format!(
            "note: this session is orchestr8-async {mine}, its engine {} (newer); restart this session with the newer binary",
            attached.version
        )),
    };
    if let Some(t) = &text {
        tracing::warn!("{t}");
    }
    *notice.lock().unwrap_or_else(|p| p.into_inner()) = text;
}

/// When the attach stream ends (the engine stopped or died), reach the next engine: start it
/// if nobody else has.
async fn supervise(
    launcher: Launcher,
    mut attached: Attached,
    tx: watch::Sender<Option<EngineClient>>,
    notice: Arc<Mutex<Option<String>>>,
    events: Option<mpsc::UnboundedSender<ChannelEvent>>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = attached.gone(events.as_ref()) => {}
            _ = stop.cancelled() => return,
        }
        tx.send_replace(None);
        tracing::warn!("the engine has gone; reaching the next one");
        loop {
            match launcher.attach(ENGINE_WAIT, &stop).await {
                Ok(a) => {
                    tracing::info!("attached to the new engine");
                    check_engine(&launcher, &a, &notice).await;
                    tx.send_replace(Some(launcher.client().clone()));
                    attached = a;
                    break;
                }
                Err(LaunchError::Stopped) => return,
                Err(e) => {
                    // A session never gives up: calls fail with a clear error meanwhile.
                    tracing::error!("no engine yet: {e}");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.cancelled() => return,
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_older_engine_is_replaced() {
        assert_eq!(compare_versions("0.2.0", "0.2.0"), VersionVerdict::Same);
        assert_eq!(
            compare_versions("0.2.0", "0.1.9"),
            VersionVerdict::EngineOlder
        );
        assert_eq!(
            compare_versions("0.10.0", "0.9.0"),
            VersionVerdict::EngineOlder
        );
        assert_eq!(
            compare_versions("0.2.0", "0.3.0"),
            VersionVerdict::EngineNewer
        );
        assert_eq!(compare_versions("1.0.0", ""), VersionVerdict::EngineOlder);
    }
}
