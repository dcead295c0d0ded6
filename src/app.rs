//! Wiring: opens the store, starts the scheduler, serves the frontends of the configured mode,
//! and shuts everything down in order (frontends, then running tasks, then the store).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use rmcp::ServiceExt;
use tokio_util::sync::CancellationToken;

use crate::agents::AgentRegistry;
use crate::config::{Config, Mode};
use crate::mcp::McpServer;
use crate::notifier::delivery::{Deliverer, WebhookSettings};
use crate::notifier::signature::WebhookSecret;
use crate::notifier::WebhookNotifier;
use crate::rest::{self, RestSettings};
use crate::runner::Runners;
use crate::scheduler::{SchedConfig, Scheduler};
use crate::service::Service;
use crate::store::Store;

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    crate::metrics::install();
    // A bad secret is a configuration error: refuse to start rather than send unsigned hooks.
    let secret = cfg
        .webhook_secret
        .as_deref()
        .filter(|s| !s.trim().is_empty())
        .map(WebhookSecret::parse)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    if cfg.webhook_max_attempts == 0 || cfg.webhook_timeout_ms == 0 {
        bail!("ORCHESTR8_WEBHOOK_MAX_ATTEMPTS and ORCHESTR8_WEBHOOK_TIMEOUT_MS must be at least 1");
    }
    // The HTTP address is checked and bound before anything runs.
    let rest_settings = RestSettings {
        host: cfg.host.clone(),
        port: cfg.port,
        token: cfg.api_token.clone().filter(|t| !t.is_empty()),
        cors_origins: cfg
            .cors_origins
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .map(String::from)
            .collect(),
    };
    let listener = match cfg.mode {
        Mode::Mcp => None,
        Mode::Api | Mode::Both => Some(rest::bind(&rest_settings).await?),
    };
    let db_path = cfg.db_path();
    let store = Arc::new(
        Store::open(&db_path).with_context(|| format!("opening database {}", db_path.display()))?,
    );
    // We hold the database: any socket left next to it is a dead engine's. Without the socket
    // the server still works; only local clients of the API lose their door.
    let socket_path = rest::socket::socket_path(&db_path);
    let mut socket = rest::socket::bind(&socket_path)
        .map_err(|e| tracing::warn!("no local API socket: {e:#}"))
        .ok();
    let runners = Runners::new(cfg.runner_settings().map_err(anyhow::Error::msg)?)
        .map_err(anyhow::Error::msg)?;
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
    .map_err(anyhow::Error::msg)?;
    let agents = AgentRegistry::new(cfg.agent_dirs(), cfg.default_runner.clone());
    let sched = Scheduler::start(
        SchedConfig {
            workers: cfg.workers as usize,
            retry_backoff_base_ms: cfg.retry_backoff_base_ms,
            instance: std::fs::canonicalize(&db_path)
                .unwrap_or_else(|_| db_path.clone())
                .display()
                .to_string(),
        },
        store.clone(),
        agents,
        runners,
        Arc::new(WebhookNotifier::new(deliverer.clone())),
    )
    .await
    .context("starting the scheduler")?;
    tracing::info!(
        db = %db_path.display(),
        workers = cfg.workers,
        agents = %sched.agents().search_path(),
        "orchestr8-async ready"
    );
    let service = Service::new(sched.clone());

    let http_stop = CancellationToken::new();
    let local = socket
        .as_mut()
        .and_then(|l| rest::socket::serve(l, service.clone(), http_stop.clone()));
    let mut http = match listener {
        Some(l) => Some(rest::serve(
            l,
            service.clone(),
            &rest_settings,
            http_stop.clone(),
        )?),
        None => None,
    };
    if cfg.mode == Mode::Api {
        let served = async {
            match http.as_mut() {
                Some(h) => {
                    let _ = h.await;
                }
                None => std::future::pending().await,
            }
        };
        let stopped_by_itself = tokio::select! {
            _ = terminate_signal() => {
                tracing::info!("signal received; shutting down");
                false
            }
            _ = served => {
                tracing::error!("the HTTP server stopped; shutting down");
                true
            }
        };
        if stopped_by_itself {
            http = None;
        }
    } else {
        let server = McpServer::new(service)
            .serve(rmcp::transport::stdio())
            .await
            .context("starting the MCP session on stdio")?;
        let cancel = server.cancellation_token();
        tokio::select! {
            r = server.waiting() => {
                tracing::info!("MCP client disconnected ({:?}); shutting down", r.ok());
            }
            _ = terminate_signal() => {
                tracing::info!("signal received; shutting down");
                cancel.cancel();
            }
        }
    }
    // In-flight HTTP requests finish first (bounded), then the same task shutdown as MCP mode.
    http_stop.cancel();
    let bound = Duration::from_secs(cfg.shutdown_grace_seconds.max(1));
    let deadline = tokio::time::Instant::now() + bound;
    for mut h in http.into_iter().chain(local) {
        if tokio::time::timeout_at(deadline, &mut h).await.is_err() {
            tracing::warn!("HTTP requests still in flight after {bound:?}; dropping them");
            h.abort();
        }
    }
    drop(socket);
    sched
        .shutdown(Duration::from_secs(cfg.shutdown_grace_seconds))
        .await;
    // Webhooks of tasks that ended during the grace period may be in flight; whatever is still
    // owed after this stays in the store and goes out at the next start.
    deliverer.shutdown(Duration::from_secs(2)).await;
    store.close();
    tracing::info!("stopped");
    Ok(())
}

async fn terminate_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}
