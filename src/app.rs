//! Wiring: opens the store, starts the scheduler, serves the frontends of the configured mode,
//! and shuts everything down in order (frontends, then running tasks, then the store).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use rmcp::ServiceExt;

use crate::agents::AgentRegistry;
use crate::config::{Config, Mode};
use crate::mcp::McpServer;
use crate::notifier::LogNotifier;
use crate::runner::Runners;
use crate::scheduler::{SchedConfig, Scheduler};
use crate::service::Service;
use crate::store::Store;

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    if cfg.mode != Mode::Mcp {
        bail!(
            "ORCHESTR8_MODE={:?} is not available yet: this build serves the stdio MCP mode only (ORCHESTR8_MODE=mcp); the REST API is on the roadmap",
            cfg.mode
        );
    }
    let db_path = cfg.db_path();
    let store = Arc::new(
        Store::open(&db_path).with_context(|| format!("opening database {}", db_path.display()))?,
    );
    let runners = Runners::new(cfg.runner_settings().map_err(anyhow::Error::msg)?)
        .map_err(anyhow::Error::msg)?;
    let agents = AgentRegistry::new(cfg.agent_dirs(), cfg.default_runner.clone());
    let sched = Scheduler::start(
        SchedConfig {
            workers: cfg.workers as usize,
            retry_backoff_base_ms: cfg.retry_backoff_base_ms,
        },
        store.clone(),
        agents,
        runners,
        Arc::new(LogNotifier),
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
    sched
        .shutdown(Duration::from_secs(cfg.shutdown_grace_seconds))
        .await;
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
