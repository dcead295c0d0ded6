//! The engine: the one process that has the database file open. It owns the store, the
//! scheduler, the workers and the webhook deliverer, and serves the local socket (and HTTP in
//! `api`/`both` mode). Sessions and CLI commands are other processes that reach it through
//! [`crate::link`]; [`launch`] finds the engine of a file or starts one, detached, and
//! [`lifetime`] decides when a detached engine is no longer needed. DuckDB lets one process
//! open a file for writing, so "the engine" is simply whoever opened it: [`Engine::open`] says
//! [`OpenError::Locked`] to everybody else.

pub mod launch;
pub mod lifetime;
pub mod logfile;
pub mod pruner;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::agents::AgentRegistry;
use crate::config::Config;
use crate::dashboard::Door;
use crate::link::rpc::{Frontends, StopRequests};
use crate::link::server::LocalSocket;
use crate::notifier::delivery::{Deliverer, WebhookSettings};
use crate::notifier::signature::WebhookSecret;
use crate::notifier::EngineNotifier;
use crate::rest::{self, RestSettings};
use crate::runner::Runners;
use crate::scheduler::{SchedConfig, Scheduler};
use crate::service::Service;
use crate::store::{Store, StoreError};

/// Why this process did not become the engine.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Another process has the file: be its frontend.
    #[error("{0}")]
    Locked(String),
    #[error("{0:#}")]
    Failed(anyhow::Error),
}

/// Settings already checked by [`check_config`], so that a process checks (and builds the
/// runners' HTTP client) once, however often it opens the file.
#[derive(Clone)]
pub struct Checked {
    secret: Option<WebhookSecret>,
    runners: Runners,
}

/// What kind of engine to be.
pub struct EngineOptions {
    pub checked: Checked,
    /// Serve the REST API too.
    pub http: Option<RestSettings>,
    /// A failure to listen on HTTP stops the start (`api` mode); otherwise (an engine a `both`
    /// session started, whose port may still be held by a stopping engine) it is only logged.
    pub http_required: bool,
}

pub struct Engine {
    store: Arc<Store>,
    sched: Scheduler,
    deliverer: Deliverer,
    service: Service,
    frontends: Frontends,
    requests: StopRequests,
    socket: Option<LocalSocket>,
    local: Option<JoinHandle<()>>,
    http: Option<JoinHandle<()>>,
    http_stop: CancellationToken,
    /// Ends the sessions' attach streams (before the servers stop: see `shutdown`).
    doors: CancellationToken,
    dashboard: Door,
    /// Removes finished work past the retention period (none without one).
    pruner: Option<pruner::Pruner>,
    grace: Duration,
    db_path: PathBuf,
}

/// How long a stopping engine answers calls 503 ("not run, go to the next engine") after its
/// sessions were told it is going, before it closes its connections.
const DOORS_CLOSING: Duration = Duration::from_millis(100);

/// Checks the settings every role needs before anything starts, so that a frontend refuses a
/// bad configuration at once rather than when it takes over.
pub fn check_config(cfg: &Config) -> anyhow::Result<Checked> {
    // A bad secret is a configuration error: refuse to start rather than send unsigned hooks.
    let secret = cfg
        .webhook_secret
        .as_deref()
        .filter(|s| !s.trim().is_empty())
        .map(WebhookSecret::parse)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    if cfg.webhook_max_attempts == 0 || cfg.webhook_timeout_ms == 0 {
        anyhow::bail!(
            "ORCHESTR8_WEBHOOK_MAX_ATTEMPTS and ORCHESTR8_WEBHOOK_TIMEOUT_MS must be at least 1"
        );
    }
    let runners = Runners::new(cfg.runner_settings().map_err(anyhow::Error::msg)?)
        .map_err(anyhow::Error::msg)?;
    Ok(Checked { secret, runners })
}

impl Engine {
    /// Opens the database and starts everything that runs on it: crash recovery, the
    /// dispatcher, webhook delivery, the local socket and, when given, HTTP.
    pub async fn open(cfg: &Config, opts: EngineOptions) -> Result<Engine, OpenError> {
        let Checked { secret, runners } = opts.checked;
        let db_path = cfg.db_path();
        let options = crate::store::StoreOptions {
            journal_max_bytes: cfg.journal_max_bytes,
            memory_mib: cfg.db_memory_mib,
        };
        let store = match Store::open_with(&db_path, &options) {
            Ok(s) => Arc::new(s),
            Err(StoreError::Locked(why)) => return Err(OpenError::Locked(why)),
            Err(e) => {
                return Err(OpenError::Failed(
                    anyhow::Error::new(e)
                        .context(format!("opening database {}", db_path.display())),
                ))
            }
        };
        let listener = match &opts.http {
            Some(settings) => match rest::bind(settings).await {
                Ok(l) => Some((l, settings)),
                Err(e) if opts.http_required => {
                    store.close();
                    return Err(OpenError::Failed(e));
                }
                Err(e) => {
                    tracing::warn!("serving no HTTP: {e:#}");
                    None
                }
            },
            None => None,
        };
        // We hold the database: any socket left next to it is a dead engine's. Without its
        // socket no session could reach the engine, so a failure to bind stops the start.
        let mut socket = match crate::link::server::bind(&crate::link::socket_path(&db_path)) {
            Ok(s) => s,
            Err(e) => {
                store.close();
                return Err(OpenError::Failed(e.context("serving the engine's socket")));
            }
        };
        let deliverer = Deliverer::start(
            store.clone(),
            WebhookSettings {
                max_attempts: cfg.webhook_max_attempts,
                backoff_base_ms: cfg.webhook_backoff_base_ms,
                backoff_max_ms: cfg.webhook_backoff_max_ms,
                timeout_ms: cfg.webhook_timeout_ms,
                secret,
            },
        )
        .map_err(|e| OpenError::Failed(anyhow::anyhow!(e)))?;
        let agents = AgentRegistry::new(cfg.agent_dirs(), cfg.default_runner.clone());
        let frontends = Frontends::default();
        let sched = Scheduler::start(
            SchedConfig {
                workers: cfg.workers as usize,
                retry_backoff_base_ms: cfg.retry_backoff_base_ms,
                instance: std::fs::canonicalize(&db_path)
                    .unwrap_or_else(|_| db_path.clone())
                    .display()
                    .to_string(),
                retention: cfg.retention.period(),
            },
            store.clone(),
            agents,
            runners,
            crate::workspace::Workspaces::new(crate::link::worktrees_path(&db_path)),
            Arc::new(EngineNotifier::new(
                Some(deliverer.clone()),
                frontends.channels().clone(),
            )),
        )
        .await;
        let sched = match sched {
            Ok(s) => s,
            Err(e) => {
                // Let go of the file, so that another process can be the engine.
                deliverer.shutdown(Duration::ZERO).await;
                store.close();
                return Err(OpenError::Failed(
                    anyhow::Error::new(e).context("starting the scheduler"),
                ));
            }
        };
        let service = Service::new(sched.clone());
        let http_stop = CancellationToken::new();
        let doors = CancellationToken::new();
        let requests = StopRequests::default();
        let dashboard = Door::new(
            service.clone(),
            cfg.api_token.as_deref().filter(|t| !t.is_empty()),
            http_stop.clone(),
        );
        let rpc = crate::link::rpc::router(
            service.clone(),
            frontends.clone(),
            cfg.engine_fingerprint(),
            requests.clone(),
            doors.clone(),
            dashboard.clone(),
        );
        // HTTP (and the dashboard's routes on it) before the socket, so that no session can ask
        // for the dashboard before it knows where it is served.
        let http = match listener {
            Some((listener, settings)) => {
                let port = listener
                    .local_addr()
                    .map_err(|e| OpenError::Failed(e.into()))?
                    .port();
                let pages = dashboard.routes_for(&settings.host, port).await;
                Some(
                    rest::serve(
                        listener,
                        service.clone(),
                        settings,
                        pages,
                        http_stop.clone(),
                    )
                    .map_err(OpenError::Failed)?,
                )
            }
            None => None,
        };
        let local =
            crate::link::server::serve(&mut socket, service.clone(), rpc, http_stop.clone());
        tracing::info!(
            db = %db_path.display(),
            workers = cfg.workers,
            agents = %sched.agents().search_path(),
            version = crate::link::version(),
            pid = std::process::id(),
            "orchestr8-async engine ready"
        );
        let pruner = pruner::Pruner::start(sched.clone());
        Ok(Engine {
            store,
            sched,
            deliverer,
            service,
            frontends,
            requests,
            socket: Some(socket),
            local,
            http,
            http_stop,
            doors,
            dashboard,
            pruner,
            grace: Duration::from_secs(cfg.shutdown_grace_seconds),
            db_path,
        })
    }

    pub fn service(&self) -> Service {
        self.service.clone()
    }

    pub fn db_path(&self) -> &std::path::Path {
        &self.db_path
    }

    /// What keeps this engine needed right now.
    pub async fn needs(&self) -> lifetime::Needs {
        lifetime::Needs {
            sessions: self.frontends.count(),
            viewers: self.dashboard.needed(),
            tasks: self.sched.in_flight(),
            webhooks: self.deliverer.owed().await,
        }
    }

    /// What the stop command asked for.
    pub fn stop_requests(&self) -> &StopRequests {
        &self.requests
    }

    /// Resolves if the HTTP server stops by itself (`api` mode treats that as fatal).
    pub async fn http_stopped(&mut self) {
        match self.http.as_mut() {
            Some(h) => {
                let _ = h.await;
                self.http = None;
            }
            None => std::future::pending().await,
        }
    }

    /// Stops in order: requests in flight finish (bounded), running tasks get the grace
    /// period and are then stopped and requeued, webhooks in flight finish, the store is
    /// flushed and closed (which lets a frontend take over).
    pub async fn shutdown(mut self) {
        // Doors first. New calls and attaches are answered 503 (known not run: the session
        // sends them to the next engine) and the attach streams end, so sessions stop sending
        // here. A call already written onto a kept connection is read and answered meanwhile,
        // instead of being cut off with its connection, which would leave its session unsure
        // whether it ran.
        self.requests
            .closing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.doors.cancel();
        tokio::time::sleep(DOORS_CLOSING).await;
        self.http_stop.cancel();
        let bound = self.grace.max(Duration::from_secs(1));
        let deadline = tokio::time::Instant::now() + bound;
        let servers = self.http.take().into_iter().chain(self.local.take());
        for mut h in servers.chain(self.dashboard.take_server()) {
            if tokio::time::timeout_at(deadline, &mut h).await.is_err() {
                tracing::warn!("requests still in flight after {bound:?}; dropping them");
                h.abort();
            }
        }
        drop(self.socket.take());
        if let Some(p) = self.pruner.take() {
            p.stop().await;
        }
        self.sched.shutdown(self.grace).await;
        // Webhooks of tasks that ended during the grace period may be in flight; whatever is
        // still owed after this stays in the store and goes out at the next start.
        self.deliverer.shutdown(Duration::from_secs(2)).await;
        self.store.close();
        tracing::info!("engine stopped");
    }
}
