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
use crate::cluster::{Cluster, ClusterConfig};
use crate::config::Config;
use crate::dashboard::Door;
use crate::link::rpc::{Frontends, StopRequests};
use crate::link::server::LocalSocket;
use crate::notifier::delivery::{Deliverer, WebhookSettings};
use crate::notifier::outbox::Outbox;
use crate::notifier::signature::WebhookSecret;
use crate::notifier::EngineNotifier;
use crate::rest::{self, RestSettings};
use crate::runner::Runners;
use crate::scheduler::{SchedConfig, Scheduler};
use crate::service::{Core, Service};
use crate::store::postgres::{NodeInfo, PgOptions, Postgres};
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

/// What the engine runs tasks with.
enum Running {
    /// The single engine: its DuckDB file, scheduler and webhook deliverer.
    Local {
        store: Arc<Store>,
        sched: Scheduler,
        deliverer: Deliverer,
        /// Removes finished work past the retention period (none without one).
        pruner: Option<pruner::Pruner>,
    },
    /// A node of a cluster on PostgreSQL, with its share of the cluster's webhook delivery;
    /// the lock file keeps one engine per path here.
    Cluster {
        cluster: Cluster,
        deliverer: Deliverer,
        /// Removes the cluster's finished work past the retention period, with the other nodes.
        pruner: Option<pruner::Pruner>,
        _lock: nix::fcntl::Flock<std::fs::File>,
    },
}

impl Running {
    /// Stops what runs, in order (see [`Engine::shutdown`]).
    async fn stop(self, grace: Duration) {
        match self {
            Running::Local {
                store,
                sched,
                deliverer,
                pruner,
            } => {
                if let Some(p) = pruner {
                    p.stop().await;
                }
                sched.shutdown(grace).await;
                // Webhooks of tasks that ended during the grace period may be in flight;
                // whatever is still owed after this stays in the store and goes out at the
                // next start.
                deliverer.shutdown(Duration::from_secs(2)).await;
                store.close();
            }
            Running::Cluster {
                cluster,
                deliverer,
                pruner,
                _lock,
            } => {
                if let Some(p) = pruner {
                    p.stop().await;
                }
                let leaving = cluster.wind_down(grace).await;
                // Sends in flight finish under the node's claims, before it leaves and lets
                // go of the claims it did not attempt.
                deliverer.shutdown(Duration::from_secs(2)).await;
                if let Some(l) = leaving {
                    l.leave().await;
                }
            }
        }
    }
}

/// The database, held and not yet used: the point where this process has become the engine.
enum Held {
    Local(Arc<Store>),
    Cluster(Postgres, nix::fcntl::Flock<std::fs::File>),
}

impl Held {
    /// Lets go, so that another process can be the engine.
    fn release(self) {
        if let Held::Local(store) = self {
            store.close();
        }
    }
}

pub struct Engine {
    running: Running,
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
        let held = match cfg.database_url.as_deref().filter(|u| !u.trim().is_empty()) {
            Some(url) => hold_cluster(cfg, url, &db_path).await?,
            None => hold_file(cfg, &db_path)?,
        };
        let listener = match &opts.http {
            Some(settings) => match rest::bind(settings).await {
                Ok(l) => Some((l, settings)),
                Err(e) if opts.http_required => {
                    held.release();
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
                held.release();
                return Err(OpenError::Failed(e.context("serving the engine's socket")));
            }
        };
        let agents = AgentRegistry::new(cfg.agent_dirs(), cfg.default_runner.clone());
        let frontends = Frontends::default();
        let (running, core) = match held {
            Held::Local(store) => {
                start_local(cfg, store, secret, agents, runners, &frontends, &db_path).await?
            }
            Held::Cluster(db, lock) => {
                start_cluster(cfg, db, lock, secret, agents, runners, &frontends).await?
            }
        };
        let told_at = std::fs::canonicalize(&db_path).unwrap_or_else(|_| db_path.clone());
        let service = Service::new(core, &told_at.display().to_string());
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
                let served = match listener.local_addr() {
                    Ok(addr) => {
                        let pages = dashboard.routes_for(&settings.host, addr.port()).await;
                        rest::serve(
                            listener,
                            service.clone(),
                            settings,
                            pages,
                            http_stop.clone(),
                        )
                    }
                    Err(e) => Err(e.into()),
                };
                match served {
                    Ok(h) => Some(h),
                    Err(e) => {
                        // What already runs stops first: a node already claims tasks.
                        running.stop(Duration::ZERO).await;
                        return Err(OpenError::Failed(e));
                    }
                }
            }
            None => None,
        };
        let local =
            crate::link::server::serve(&mut socket, service.clone(), rpc, http_stop.clone());
        tracing::info!(
            db = %db_path.display(),
            cluster = matches!(running, Running::Cluster { .. }),
            workers = cfg.workers,
            agents = %cfg.agents_dir,
            version = crate::link::version(),
            pid = std::process::id(),
            "orchestr8-async engine ready"
        );
        let running = match running {
            Running::Local {
                store,
                sched,
                deliverer,
                pruner: _,
            } => Running::Local {
                pruner: pruner::Pruner::start(sched.clone(), sched.retention()),
                store,
                sched,
                deliverer,
            },
            cluster => cluster,
        };
        Ok(Engine {
            running,
            service,
            frontends,
            requests,
            socket: Some(socket),
            local,
            http,
            http_stop,
            doors,
            dashboard,
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
        let (tasks, webhooks) = match &self.running {
            Running::Local {
                sched, deliverer, ..
            } => (sched.in_flight(), deliverer.owed().await),
            Running::Cluster {
                cluster, deliverer, ..
            } => (cluster.needed().await, deliverer.owed().await),
        };
        lifetime::Needs {
            sessions: self.frontends.count(),
            viewers: self.dashboard.needed(),
            tasks,
            webhooks,
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

    /// Fired once the cluster has given this node up (never for the single engine): its
    /// attempts were stopped, and it must make way for a new node.
    pub fn given_up(&self) -> CancellationToken {
        match &self.running {
            Running::Cluster { cluster, .. } => cluster.given_up(),
            Running::Local { .. } => CancellationToken::new(),
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
        self.running.stop(self.grace).await;
        tracing::info!("engine stopped");
    }
}

/// Opens the DuckDB file: this process is the engine once it holds it.
fn hold_file(cfg: &Config, db_path: &std::path::Path) -> Result<Held, OpenError> {
    let options = crate::store::StoreOptions {
        journal_max_bytes: cfg.journal_max_bytes,
        memory_mib: cfg.db_memory_mib,
    };
    match Store::open_with(db_path, &options) {
        Ok(s) => Ok(Held::Local(Arc::new(s))),
        Err(StoreError::Locked(why)) => Err(OpenError::Locked(why)),
        Err(e) => Err(OpenError::Failed(
            anyhow::Error::new(e).context(format!("opening database {}", db_path.display())),
        )),
    }
}

/// Takes this path's node lock (one engine per path serves the sessions here), then connects
/// to the cluster's database, migrating it if this is the first node of a newer release.
async fn hold_cluster(
    cfg: &Config,
    url: &str,
    db_path: &std::path::Path,
) -> Result<Held, OpenError> {
    let path = crate::link::node_lock_path(db_path);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| OpenError::Failed(anyhow::anyhow!("creating {}: {e}", dir.display())))?;
    }
    let lock = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| OpenError::Failed(anyhow::anyhow!("opening {}: {e}", path.display())))?;
    let lock = match nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            return Err(OpenError::Locked(format!(
                "another engine holds {}",
                path.display()
            )))
        }
        Err((_, e)) => {
            return Err(OpenError::Failed(anyhow::anyhow!(
                "locking {}: {e}",
                path.display()
            )))
        }
    };
    let db = Postgres::connect(&PgOptions {
        url: url.to_string(),
        pool_size: (cfg.workers as usize) + 4,
    })
    .await
    .map_err(|e| {
        OpenError::Failed(
            anyhow::Error::new(e)
                .context("connecting to the cluster's database (ORCHESTR8_DATABASE_URL)"),
        )
    })?;
    Ok(Held::Cluster(db, lock))
}

/// This engine as a node: its host, a fresh id, and the queues it serves.
fn this_node(cfg: &Config) -> Result<NodeInfo, OpenError> {
    let queues = crate::cluster::parse_queues(cfg.queues.as_deref())
        .map_err(|e| OpenError::Failed(e.into()))?;
    let host = crate::cluster::this_host();
    let pid = std::process::id();
    Ok(NodeInfo {
        node_id: crate::cluster::node_id(&host, pid, rand::random()),
        host,
        pid,
        version: crate::link::version().to_string(),
        queues,
    })
}

/// What the processes of a cluster's tasks are told their database is: the database URL
/// without its password and parameters.
fn cluster_instance(cfg: &Config) -> String {
    let url = cfg.database_url.clone().unwrap_or_default();
    match url::Url::parse(&url) {
        Ok(mut u) => {
            // Neither the password nor the connection's parameters (a password may be one).
            let _ = u.set_password(None);
            u.set_query(None);
            u.to_string()
        }
        Err(_) => "postgres".to_string(),
    }
}

fn webhook_settings(cfg: &Config, secret: Option<WebhookSecret>) -> WebhookSettings {
    WebhookSettings {
        max_attempts: cfg.webhook_max_attempts,
        backoff_base_ms: cfg.webhook_backoff_base_ms,
        backoff_max_ms: cfg.webhook_backoff_max_ms,
        timeout_ms: cfg.webhook_timeout_ms,
        secret,
    }
}

/// Joins the cluster as a new node: its share of webhook delivery, then its scheduler (the
/// lease, the leader's rescue, claiming).
async fn start_cluster(
    cfg: &Config,
    db: Postgres,
    lock: nix::fcntl::Flock<std::fs::File>,
    secret: Option<WebhookSecret>,
    agents: AgentRegistry,
    runners: Runners,
    frontends: &Frontends,
) -> Result<(Running, Core), OpenError> {
    let node = this_node(cfg)?;
    let outbox = Outbox::Cluster {
        db: db.clone(),
        node_id: node.node_id.clone(),
    };
    let deliverer = Deliverer::start(outbox, webhook_settings(cfg, secret))
        .map_err(|e| OpenError::Failed(anyhow::anyhow!(e)))?;
    let notifier = Arc::new(EngineNotifier::new(
        Some(deliverer.clone()),
        frontends.channels().clone(),
    ));
    let started = Cluster::start(
        db,
        node,
        ClusterConfig {
            workers: cfg.workers as usize,
            retry_backoff_base_ms: cfg.retry_backoff_base_ms,
            lease: Duration::from_secs(cfg.node_lease_seconds),
            poll: Duration::from_millis(cfg.claim_poll_ms),
            instance: cluster_instance(cfg),
            retention: cfg.retention.period(),
        },
        agents,
        runners,
        // Beside the node's lock, like a single engine's: one node per path, so nothing else
        // uses this folder.
        crate::workspace::Workspaces::new(crate::link::worktrees_path(&cfg.db_path())),
        notifier,
    )
    .await;
    match started {
        Ok(cluster) => Ok((
            Running::Cluster {
                pruner: pruner::Pruner::start(cluster.clone(), cfg.retention.period()),
                cluster: cluster.clone(),
                deliverer,
                _lock: lock,
            },
            Core::Cluster(cluster),
        )),
        Err(e) => {
            deliverer.shutdown(Duration::ZERO).await;
            Err(OpenError::Failed(
                anyhow::Error::new(e).context("joining the cluster"),
            ))
        }
    }
}

/// Starts the single engine on its file: webhook delivery, then the scheduler with crash
/// recovery.
async fn start_local(
    cfg: &Config,
    store: Arc<Store>,
    secret: Option<WebhookSecret>,
    agents: AgentRegistry,
    runners: Runners,
    frontends: &Frontends,
    db_path: &std::path::Path,
) -> Result<(Running, Core), OpenError> {
    let deliverer = Deliverer::start(Outbox::Local(store.clone()), webhook_settings(cfg, secret))
        .map_err(|e| OpenError::Failed(anyhow::anyhow!(e)))?;
    let sched = Scheduler::start(
        SchedConfig {
            workers: cfg.workers as usize,
            retry_backoff_base_ms: cfg.retry_backoff_base_ms,
            instance: std::fs::canonicalize(db_path)
                .unwrap_or_else(|_| db_path.to_path_buf())
                .display()
                .to_string(),
            retention: cfg.retention.period(),
        },
        store.clone(),
        agents,
        runners,
        crate::workspace::Workspaces::new(crate::link::worktrees_path(db_path)),
        Arc::new(EngineNotifier::new(
            Some(deliverer.clone()),
            frontends.channels().clone(),
        )),
    )
    .await;
    match sched {
        Ok(sched) => Ok((
            Running::Local {
                store,
                sched: sched.clone(),
                deliverer,
                pruner: None,
            },
            Core::Local(sched),
        )),
        Err(e) => {
            // Let go of the file, so that another process can be the engine.
            deliverer.shutdown(Duration::ZERO).await;
            store.close();
            Err(OpenError::Failed(
                anyhow::Error::new(e).context("starting the scheduler"),
            ))
        }
    }
}
