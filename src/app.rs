//! The server's life: check the settings, become the engine or a frontend ([`crate::roles`]),
//! serve the stdio MCP session (or HTTP only in `api` mode), and stop in order. An engine
//! whose own client has gone stays up while it is still needed ([`linger`]).

use std::time::Duration;

use anyhow::Context;
use rmcp::ServiceExt;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Mode};
use crate::engine::{check_config, Checked, Engine, EngineOptions, OpenError};
use crate::mcp::McpServer;
use crate::rest::{self, RestSettings};
use crate::roles::{EngineRecipe, Roles};

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    crate::metrics::install();
    // One listener for the whole life, so that no signal falls between two waits.
    let signal = CancellationToken::new();
    let fire = signal.clone();
    tokio::spawn(async move {
        terminate_signal().await;
        fire.cancel();
    });
    let checked = check_config(&cfg)?;
    let http = match cfg.mode {
        Mode::Mcp => None,
        Mode::Api | Mode::Both => {
            let s = rest_settings(&cfg);
            rest::check(&s)?;
            Some(s)
        }
    };
    if cfg.mode == Mode::Api {
        return serve_api(&cfg, checked, http, &signal).await;
    }
    let established = Roles::establish(
        EngineRecipe {
            cfg: cfg.clone(),
            checked,
            http,
        },
        &signal,
    )
    .await;
    let mut roles = match established {
        Ok(r) => r,
        // SIGTERM while waiting for the file or its engine: nothing was started, nothing to say.
        Err(_) if signal.is_cancelled() => {
            tracing::info!("signal received while looking for the engine; exiting");
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let server = McpServer::new(roles.backend())
        .serve(rmcp::transport::stdio())
        .await
        .context("starting the MCP session on stdio")?;
    let cancel = server.cancellation_token();
    let signalled = tokio::select! {
        r = server.waiting() => {
            tracing::info!("MCP client disconnected ({:?})", r.ok());
            false
        }
        _ = signal.cancelled() => {
            tracing::info!("signal received; shutting down");
            cancel.cancel();
            true
        }
    };
    roles.settle().await;
    let Some(engine) = roles.take_engine().await else {
        tracing::info!("frontend stopped");
        return Ok(());
    };
    if !signalled {
        linger(&engine, Duration::from_secs(cfg.idle_exit_seconds), &signal).await;
    }
    engine.shutdown().await;
    Ok(())
}

/// `api` mode: this process must be the engine.
async fn serve_api(
    cfg: &Config,
    checked: Checked,
    http: Option<RestSettings>,
    signal: &CancellationToken,
) -> anyhow::Result<()> {
    let opts = EngineOptions {
        checked,
        active: true,
        http,
        http_required: true,
    };
    let mut engine = match Engine::open(cfg, opts).await {
        Ok(e) => e,
        Err(OpenError::Locked(m)) => anyhow::bail!(
            "api mode needs the database to itself, but another orchestr8-async process has it open ({m}). \
             Stop that process, or start the first one with --mode both so that it serves HTTP"
        ),
        Err(OpenError::Failed(e)) => return Err(e),
    };
    tokio::select! {
        _ = signal.cancelled() => tracing::info!("signal received; shutting down"),
        _ = engine.http_stopped() => tracing::error!("the HTTP server stopped; shutting down"),
    }
    engine.shutdown().await;
    Ok(())
}

/// After its own client has gone, an engine keeps serving while frontends are attached, tasks
/// are in flight or webhooks are owed, and stops once it has been idle for `idle` (or on a
/// signal). Closing one Claude Code window thus never stops another window's work.
async fn linger(engine: &Engine, idle: Duration, signal: &CancellationToken) {
    let mut idle_since: Option<tokio::time::Instant> = None;
    let mut last_reason = String::new();
    loop {
        match engine.busy().await {
            Some(reason) => {
                if reason != last_reason {
                    tracing::info!("client gone; staying up: {reason}");
                    last_reason = reason;
                }
                idle_since = None;
            }
            None => {
                let since = *idle_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= idle {
                    tracing::info!("idle for {idle:?}; shutting down");
                    return;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = signal.cancelled() => {
                tracing::info!("signal received; shutting down");
                return;
            }
        }
    }
}

fn rest_settings(cfg: &Config) -> RestSettings {
    RestSettings {
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
    }
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
