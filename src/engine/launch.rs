//! Finding the engine of a database file, or starting one. Every session and CLI command
//! comes through here: it attaches to the engine that answers on the file's socket, or starts
//! `orchestr8-async-server engine --detached` as a process of its own — its own session and
//! process group (setsid), no terminal, stdin and stdout closed, its log in `<db>.log` — and
//! waits for it to answer. The database file's lock makes starting race-free: when two
//! sessions start an engine at the same instant, one of the two opens the file, the other
//! finds it locked and exits with [`EXIT_FILE_HELD`], and both sessions attach to the winner.
//! When the file stays held and nothing answers on the socket (an engine still stopping, or a
//! process that is no engine at all, such as the `duckdb` shell), engines are started ever
//! less often, and the error at the end names the file and what holds it.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::link::client::{Attached, EngineClient};

/// How long an engine has to answer an attach.
const ATTACH_WITHIN: Duration = Duration::from_secs(1);
/// Pause between looks while an engine starts.
const POLL: Duration = Duration::from_millis(25);
/// An engine started this recently that has not answered yet may still be opening the file.
const FRESH: Duration = Duration::from_secs(1);

/// How a detached engine that found its database held by another process exits (EX_TEMPFAIL:
/// most often the other process is the engine that serves, or one that is stopping).
pub const EXIT_FILE_HELD: i32 = 75;
/// What such an engine writes in its log, to be quoted from there.
pub const HELD_MARK: &str = "the database is held by another process";

/// Time before starting another engine when the last `held` ones each found the file held:
/// 300 ms, doubling, at most 3 s. An engine stopping with tasks to finish holds the file for
/// its whole grace period; something else may hold it for good.
pub fn restart_pause(held: u32) -> Duration {
    let base = Duration::from_millis(300);
    base.saturating_mul(1 << held.saturating_sub(1).min(4))
        .min(Duration::from_secs(3))
}

/// Why no engine could be reached.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// A signal ended the wait.
    #[error("stopped while looking for the engine")]
    Stopped,
    /// The engine this process started failed (its log says why).
    #[error("the engine could not start: {0}")]
    Failed(String),
    /// The file stayed held by a process that does not answer as its engine.
    #[error(
        "the database {db} is held by another process that does not answer as an orchestr8-async engine ({detail}). \
         If an engine is stopping, try again in a moment; otherwise end the process that holds the file \
         or set ORCHESTR8_DB_PATH to another file"
    )]
    Held { db: String, detail: String },
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
    /// Engines started in a row that found the file held (see [`restart_pause`]).
    held: Arc<AtomicU32>,
    /// The session's id, given on every attach (none for a CLI command).
    session_id: Option<String>,
}

impl Launcher {
    pub fn new(cfg: &Config) -> Launcher {
        let db = cfg.db_path();
        Launcher {
            client: EngineClient::new(&crate::link::socket_path(&db)),
            fingerprint: serde_json::to_string(&cfg.engine_fingerprint()).unwrap_or_default(),
            db,
            cfg: cfg.clone(),
            held: Arc::new(AtomicU32::new(0)),
            session_id: None,
        }
    }

    /// Attaches as the session `id`, which the engine tells when what it handed off ends.
    pub fn for_session(mut self, id: &str) -> Launcher {
        self.session_id = Some(id.to_string());
        self
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
        // Carried over from the last look (a supervisor looks again and again while the file
        // stays held), so that the pause keeps growing.
        let mut held = self.held.load(Ordering::Relaxed);
        loop {
            let last = match self
                .client
                .attach(ATTACH_WITHIN, &self.fingerprint, self.session_id.as_deref())
                .await
            {
                Ok(a) => {
                    reap(child);
                    self.held.store(0, Ordering::Relaxed);
                    return Ok(a);
                }
                Err(e) => e.to_string(),
            };
            // Nobody answers. An engine we started that is still alive is still opening the
            // file; one that found the file held by another process (which may be the winner
            // of a race, or stopping) is followed by another, ever later. One that failed has
            // said why in its log.
            let exited = child.as_mut().map(|c| c.try_wait());
            let ours_alive = match exited {
                Some(Ok(None)) => true,
                Some(Ok(Some(status))) if status.code() == Some(EXIT_FILE_HELD) => {
                    held = held.saturating_add(1);
                    self.held.store(held, Ordering::Relaxed);
                    child = None;
                    false
                }
                Some(Ok(Some(status))) if !status.success() => {
                    return Err(LaunchError::Failed(format!(
                        "{status}; {}",
                        log_tail(&crate::link::log_path(&self.db))
                    )));
                }
                _ => false,
            };
            if !ours_alive && started_at.is_none_or(|t| t.elapsed() >= restart_pause(held)) {
                child = Some(self.spawn().map_err(|e| {
                    LaunchError::Failed(format!("cannot start the engine process: {e}"))
                })?);
                started_at = Some(Instant::now());
            }
            if Instant::now() >= deadline {
                // Held only if no engine of ours is past its first second: one that is has the
                // file, and is slow to answer.
                let fresh = child.is_none() || started_at.is_some_and(|t| t.elapsed() < FRESH);
                reap(child);
                if held > 0 && fresh {
                    return Err(LaunchError::Held {
                        db: self.db.display().to_string(),
                        detail: held_detail(&crate::link::log_path(&self.db)),
                    });
                }
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
        // A session inside an agent's task carries that task's marks; the engine it starts is
        // not part of the task, and its cluster node's warden must not take it for one.
        for k in [
            crate::cluster::warden::NODE_ENV,
            "ORCHESTR8_TASK_ID",
            "ORCHESTR8_ATTEMPT",
            "ORCHESTR8_TASK_DB",
        ] {
            cmd.env_remove(k);
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

/// What the last engine that found the file held quoted from DuckDB (which names the process
/// holding the lock), from the log.
fn held_detail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    match text.lines().rev().find(|l| l.contains(HELD_MARK)) {
        Some(line) => line
            .split_once(HELD_MARK)
            .map_or(line, |(_, rest)| rest)
            .trim_start_matches(':')
            .trim()
            .to_string(),
        None => format!("see {}", path.display()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engines_are_started_ever_less_often_while_the_file_stays_held() {
        let ms = |n| restart_pause(n).as_millis();
        assert_eq!(ms(0), 300);
        assert_eq!(ms(1), 300);
        assert_eq!(ms(2), 600);
        assert_eq!(ms(3), 1200);
        assert_eq!(ms(4), 2400);
        assert_eq!(ms(5), 3000);
        assert_eq!(ms(u32::MAX), 3000);
    }
}
