//! Roles: who answers a stdio session's tool calls. The first process on a database file is
//! the engine and answers them itself; a later one finds the file locked and becomes a
//! frontend that forwards them over the engine's socket. A frontend watches its engine
//! (the attach stream) and, when it goes, takes over: it opens the file itself (running crash
//! recovery) or, if another frontend was quicker, attaches to that one.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::engine::client::{Attached, CallError, EngineClient};
use crate::engine::{Checked, Engine, EngineOptions, OpenError};
use crate::rest::RestSettings;
use crate::service::tools::{safe_to_repeat, ToolAnswer};
use crate::service::Service;

/// How long a call waits for an engine (while one starts or is being taken over) before it
/// is answered with an error.
const ENGINE_WAIT: Duration = Duration::from_secs(30);
/// Pause between attempts to open the file or reach its engine.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// How long an engine has to answer an attach.
const ATTACH_WITHIN: Duration = Duration::from_secs(1);

/// Where calls go right now.
#[derive(Clone)]
pub enum Target {
    Local(Service),
    Remote(EngineClient),
}

/// A session's way to its engine; `None` inside while a take-over is under way.
#[derive(Clone)]
pub struct Backend {
    rx: watch::Receiver<Option<Target>>,
}

impl Backend {
    /// Answers a tool call on whatever engine is current. If the engine dies mid-call, a call
    /// that is safe to repeat is sent again to the next engine; any other call is answered
    /// with an error that says it may or may not have taken effect.
    pub async fn call(&self, name: &str, args: Value) -> ToolAnswer {
        // Counted from the first failure: a long task_wait cut off late still gets its retry.
        let mut deadline: Option<Instant> = None;
        let mut rx = self.rx.clone();
        loop {
            let target = rx.borrow_and_update().clone();
            let failure = match target {
                Some(Target::Local(s)) => return s.call_tool(name, args).await,
                Some(Target::Remote(c)) => match c.call_tool(name, &args).await {
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
                None => "another process is taking over the database".to_string(),
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
}

/// What a process became.
enum Role {
    Engine(Engine),
    Frontend(EngineClient, Attached),
}

/// How to open the file as an engine.
#[derive(Clone)]
pub struct EngineRecipe {
    pub cfg: Config,
    pub checked: Checked,
    /// Serve HTTP too (`both` mode).
    pub http: Option<RestSettings>,
}

impl EngineRecipe {
    async fn open(&self, http_required: bool) -> Result<Engine, OpenError> {
        Engine::open(
            &self.cfg,
            EngineOptions {
                checked: self.checked.clone(),
                active: true,
                http: self.http.clone(),
                http_required,
            },
        )
        .await
    }

    /// Becomes the engine, or a frontend of the engine that has the file, retrying until
    /// `deadline` while the holder does not answer (it is starting or stopping).
    async fn establish(
        &self,
        deadline: Instant,
        first: bool,
        stop: &CancellationToken,
    ) -> anyhow::Result<Role> {
        let client = EngineClient::new(&crate::rest::socket::socket_path(&self.cfg.db_path()));
        loop {
            let locked = match self.open(first).await {
                Ok(e) => return Ok(Role::Engine(e)),
                Err(OpenError::Locked(m)) => m,
                Err(OpenError::Failed(e)) => return Err(e),
            };
            match client.attach(ATTACH_WITHIN).await {
                Ok(a) => return Ok(Role::Frontend(client, a)),
                Err(e) if Instant::now() >= deadline => anyhow::bail!(
                    "the database is held by another process ({locked}) that does not answer on its socket ({e}). \
                     If that is an orchestr8-async server, its log says why it serves no socket (e.g. a database \
                     folder others may write to: `chmod go-w` it); otherwise stop that process or use another \
                     ORCHESTR8_DB_PATH"
                ),
                Err(_) => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(RETRY_PAUSE) => {}
                _ = stop.cancelled() => anyhow::bail!("stopped while looking for the engine"),
            }
        }
    }
}

/// The session's role and the supervisor that keeps a frontend connected.
pub struct Roles {
    tx: Arc<watch::Sender<Option<Target>>>,
    engine: Arc<Mutex<Option<Engine>>>,
    stop: CancellationToken,
    supervisor: Option<JoinHandle<()>>,
}

impl Roles {
    /// Becomes the engine or a frontend (waiting up to 30 s for a starting engine to answer).
    /// `signal` ends the wait at once (and later, the supervisor's).
    pub async fn establish(
        recipe: EngineRecipe,
        signal: &CancellationToken,
    ) -> anyhow::Result<Roles> {
        let stop = signal.child_token();
        let role = recipe
            .establish(Instant::now() + ENGINE_WAIT, true, &stop)
            .await?;
        let (tx, _) = watch::channel(None);
        let tx = Arc::new(tx);
        let engine = Arc::new(Mutex::new(None));
        let supervisor = match role {
            Role::Engine(e) => {
                tx.send_replace(Some(Target::Local(e.service())));
                *engine.lock().await = Some(e);
                None
            }
            Role::Frontend(client, attached) => {
                tracing::info!(
                    socket = %client.socket().display(),
                    "the database is open in another process; serving this session through it"
                );
                tx.send_replace(Some(Target::Remote(client)));
                Some(tokio::spawn(supervise(
                    recipe,
                    attached,
                    tx.clone(),
                    engine.clone(),
                    stop.clone(),
                )))
            }
        };
        Ok(Roles {
            tx,
            engine,
            stop,
            supervisor,
        })
    }

    pub fn backend(&self) -> Backend {
        Backend {
            rx: self.tx.subscribe(),
        }
    }

    /// Stops looking after the engine; afterwards [`Self::take_engine`] says for good whether
    /// this process is the engine.
    pub async fn settle(&mut self) {
        self.stop.cancel();
        if let Some(s) = self.supervisor.take() {
            let _ = s.await;
        }
    }

    /// The engine, if this process is it (call [`Self::settle`] first).
    pub async fn take_engine(&self) -> Option<Engine> {
        self.engine.lock().await.take()
    }
}

/// A frontend's watch over its engine: when the attach stream ends, take over or re-attach.
async fn supervise(
    recipe: EngineRecipe,
    mut attached: Attached,
    tx: Arc<watch::Sender<Option<Target>>>,
    engine: Arc<Mutex<Option<Engine>>>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = attached.gone() => {}
            _ = stop.cancelled() => return,
        }
        tx.send_replace(None);
        tracing::warn!(
            "the engine has gone; taking over the database or attaching to its new engine"
        );
        loop {
            // A frontend never gives up: calls fail with a clear error meanwhile.
            let deadline = Instant::now() + ENGINE_WAIT;
            match recipe.establish(deadline, false, &stop).await {
                Ok(Role::Engine(e)) => {
                    tracing::info!("took over: this process is now the engine");
                    tx.send_replace(Some(Target::Local(e.service())));
                    *engine.lock().await = Some(e);
                    return;
                }
                Ok(Role::Frontend(client, a)) => {
                    tracing::info!("attached to the new engine");
                    tx.send_replace(Some(Target::Remote(client)));
                    attached = a;
                    break;
                }
                Err(e) => {
                    if stop.is_cancelled() {
                        return;
                    }
                    tracing::error!("no engine yet: {e:#}");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.cancelled() => return,
                    }
                }
            }
        }
    }
}
