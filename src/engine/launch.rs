//! Finding the engine of a database file, or starting one. Every session and CLI command
//! comes through here: it attaches to the engine that answers on the file's socket, or starts
//! `orchestr8-async-server engine --detached` as a process of its own — its own session and
//! process group (setsid), no terminal, stdin and stdout closed, its log in `<db>.log` — and
//! waits for it to answer. The database file's lock makes starting race-free: when two
//! sessions start an engine at the same instant, one of the two opens the file, the other
//! finds it locked and exits quietly, and both sessions attach to the winner.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::link::client::{Attached, EngineClient};

/// How long an engine has to answer an attach.
const ATTACH_WITHIN: Duration = Duration::from_secs(1);
/// Pause between looks while an engine starts.
const POLL: Duration = Duration::from_millis(25);
/// Shortest time between two engines started by one process (while an old engine still holds
/// the file, each new one exits at once).
const RESTART_PAUSE: Duration = Duration::from_millis(300);

/// Why no engine could be reached.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// A signal ended the wait.
    #[error("stopped while looking for the engine")]
    Stopped,
    /// The engine this process started failed (its log says why).
    #[error("the engine could not start: {0}")]
    Failed(String),
    /// Nothing answered in time.
    #[error("no engine answered on {socket} within {secs}s ({last}); the engine's log is {log}")]
    Timeout {
        socket: String,
        secs: u64,
        last: String,
        log: String,
    },
}

/// How to reach (or start) the engine of one database file.
#[derive(Clone)]
pub struct Launcher {
    cfg: Config,
    db: PathBuf,
    client: EngineClient,
    fingerprint: String,
}

impl Launcher {
    pub fn new(cfg: &Config) -> Launcher {
        let db = cfg.db_path();
        Launcher {
            client: EngineClient::new(&crate::link::socket_path(&db)),
            fingerprint: serde_json::to_string(&cfg.engine_fingerprint()).unwrap_or_default(),
            db,
            cfg: cfg.clone(),
        }
    }

    pub fn client(&self) -> &EngineClient {
        &self.client
    }

    /// Attaches to the engine, starting one if none answers, within `within`.
    pub async fn attach(
        &self,
        within: Duration,
        stop: &CancellationToken,
    ) -> Result<Attached, LaunchError> {
        let deadline = Instant::now() + within;
        let mut child: Option<tokio::process::Child> = None;
        let mut started_at: Option<Instant> = None;
        loop {
            let last = match self.client.attach(ATTACH_WITHIN, &self.fingerprint).await {
                Ok(a) => {
                    reap(child);
                    return Ok(a);
                }
                Err(e) => e.to_string(),
            };
            // Nobody answers. An engine we started that is still alive is still opening the
            // file; one that exited 0 found the file held by another (which may be stopping):
            // start another a little later. One that failed has said why in its log.
            let ours_alive = match child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(None)) => true,
                Some(Ok(Some(status))) if !status.success() => {
                    return Err(LaunchError::Failed(format!(
                        "{status}; {}",
                        log_tail(&crate::link::log_path(&self.db))
                    )));
                }
                _ => false,
            };
            if !ours_alive && started_at.is_none_or(|t| t.elapsed() >= RESTART_PAUSE) {
                child = Some(self.spawn().map_err(|e| {
                    LaunchError::Failed(format!("cannot start the engine process: {e}"))
                })?);
                started_at = Some(Instant::now());
            }
            if Instant::now() >= deadline {
                reap(child);
                return Err(LaunchError::Timeout {
                    socket: self.client.socket().display().to_string(),
                    secs: within.as_secs(),
                    last,
                    log: crate::link::log_path(&self.db).display().to_string(),
                });
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = stop.cancelled() => {
                    reap(child);
                    return Err(LaunchError::Stopped);
                }
            }
        }
    }

    /// Starts a detached engine on the file with this process's settings.
    fn spawn(&self) -> std::io::Result<tokio::process::Child> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let exe = std::env::current_exe()?;
        if let Some(dir) = self.db.parent() {
            // Private, as the engine's socket requires.
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        // Until its own log is set up, whatever the engine says on stderr goes to its log too.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(crate::link::log_path(&self.db))?;
        let mut cmd = tokio::process::Command::new(exe);
        cmd.args(self.cfg.to_args())
            .arg("engine")
            .arg("--detached")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        for (k, v) in self.cfg.secret_env() {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        tracing::info!(pid = child.id(), db = %self.db.display(), "started an engine");
        Ok(child)
    }
}

/// Waits for an engine process this process started, in the background, so that it leaves no
/// zombie while this process lives (once this process is gone, init adopts it).
fn reap(child: Option<tokio::process::Child>) {
    if let Some(mut c) = child {
        tokio::spawn(async move {
            let _ = c.wait().await;
        });
    }
}

/// The last lines of an engine's log, for an error message.
fn log_tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    if lines.is_empty() {
        return format!("see {}", path.display());
    }
    let tail: Vec<&str> = lines.into_iter().rev().collect();
    format!("its log ({}) ends: {}", path.display(), tail.join(" | "))
}
