//! What each kind of process does.
//!
//! - A **session** (`mcp` and `both` modes, the process an MCP client starts) is a frontend: it
//!   attaches to the engine of its database file, starting one if none runs, and serves stdio
//!   MCP by forwarding every call ([`crate::frontend`]). It holds no state; a signal or stdin EOF
//!   ends it at once, and the engine runs on.
//! - An **engine** ([`run_engine`]: the `engine` subcommand, `api` mode) opens the file and does
//!   the work. A detached one (started by a session) exits once idle; one run in the foreground
//!   stays up until told to stop ([`crate::engine::lifetime`]).

use std::time::Duration;

use anyhow::Context;
use rmcp::ServiceExt;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Mode};
use crate::engine::launch::{EXIT_FILE_HELD, HELD_MARK};
use crate::engine::lifetime::{self, Policy};
use crate::engine::{check_config, Engine, EngineOptions, OpenError};
use crate::frontend::Frontend;
use crate::mcp::McpServer;
use crate::rest::{self, RestSettings};

/// Runs a session (`mcp`/`both`) or, in `api` mode, an engine in the foreground.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    if cfg.mode == Mode::Api {
        return run_engine(cfg, false).await.map(|_| ());
    }
    let signal = signal_token();
    // Refuse bad settings here, where the client sees the error, not only in the engine's log.
    check_config(&cfg)?;
    if cfg.mode == Mode::Both {
        rest::check(&rest_settings(&cfg))?;
    }
    let mut frontend = match Frontend::start(&cfg, &signal).await {
        Ok(f) => f,
        // A signal while waiting for the engine: nothing was started here, nothing to say.
        Err(_) if signal.is_cancelled() => {
            tracing::info!("signal received while looking for the engine; exiting");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    let events = frontend.take_events();
    let mut mcp = McpServer::new(frontend.backend());
    if events.is_some() {
        mcp = mcp.with_channel();
    }
    let server = mcp
        .serve(crate::mcp::stdio::stdio())
        .await
        .context("starting the MCP session on stdio")?;
    if let Some(events) = events {
        tokio::spawn(crate::mcp::push_channel_events(
            server.peer().clone(),
            events,
        ));
    }
    let cancel = server.cancellation_token();
    tokio::select! {
        r = server.waiting() => tracing::info!("MCP client disconnected ({:?})", r.ok()),
        _ = signal.cancelled() => {
            tracing::info!("signal received; the session ends (its engine runs on)");
            cancel.cancel();
        }
    }
    frontend.close().await;
    Ok(())
}

/// How an engine process ended, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineEnd {
    /// It ran and stopped.
    Stopped,
    /// A detached engine found the database held by another process (the engine that won a
    /// start race, one still stopping, or something else entirely) and did not start.
    FileHeld,
}

impl EngineEnd {
    pub fn exit_code(self) -> i32 {
        match self {
            EngineEnd::Stopped => 0,
            EngineEnd::FileHeld => EXIT_FILE_HELD,
        }
    }
}

/// Runs an engine until it should stop, then stops it in order. `detached`: started by a
/// session or CLI command (exits once idle; a file already held by another process is not an
/// error: that is most often the engine that serves).
pub async fn run_engine(cfg: Config, detached: bool) -> anyhow::Result<EngineEnd> {
    crate::metrics::install();
    let signal = signal_token();
    let checked = check_config(&cfg)?;
    let http = match cfg.mode {
        Mode::Mcp => None,
        Mode::Api | Mode::Both => {
            let s = rest_settings(&cfg);
            rest::check(&s)?;
            Some(s)
        }
    };
    let opts = EngineOptions {
        checked,
        http,
        http_required: !detached,
    };
    let mut engine = match Engine::open(&cfg, opts).await {
        Ok(e) => e,
        Err(OpenError::Locked(m)) if detached => {
            // Most often the engine that serves; this one exits (and the message is quoted
            // from this line should nothing answer).
            tracing::info!("{HELD_MARK}: {m}");
            return Ok(EngineEnd::FileHeld);
        }
        Err(OpenError::Locked(m)) => anyhow::bail!(
            "another orchestr8-async engine has the database open ({m}). Stop it (`orchestr8-async-server stop`) \
             or point ORCHESTR8_DB_PATH at another file"
        ),
        Err(OpenError::Failed(e)) => return Err(e),
    };
    let policy = if detached {
        Policy::Detached {
            idle: Duration::from_secs(cfg.idle_exit_seconds),
        }
    } else {
        Policy::Foreground
    };
    let why = lifetime::watch(&mut engine, policy, &signal).await;
    tracing::info!("stopping: {why}");
    engine.shutdown().await;
    Ok(EngineEnd::Stopped)
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

/// Fired by the first SIGTERM or SIGINT. One listener for the whole life, so that no signal
/// falls between two waits.
fn signal_token() -> CancellationToken {
    let signal = CancellationToken::new();
    let fire = signal.clone();
    tokio::spawn(async move {
        terminate_signal().await;
        fire.cancel();
    });
    signal
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
