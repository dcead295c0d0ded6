//! The link between an engine and the processes that use it: a Unix domain socket next to the
//! database file (`<db>.sock`, 0600). The engine serves it ([`server`], with its internal
//! [`rpc`] routes); sessions and CLI commands reach the engine through [`client`]. Both ends
//! live here so that the wire format — paths, headers, the session context a call carries —
//! is defined in one place.

pub mod client;
pub mod rpc;
pub mod server;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Header in which both ends name their version; a session never works with an engine of
/// another version in silence.
pub const VERSION_HEADER: &str = "x-orchestr8-version";
/// Header of the attach request: the session's engine-shaping settings (JSON of
/// [`crate::config::Config::engine_fingerprint`]).
pub const SETTINGS_HEADER: &str = "x-orchestr8-settings";
/// Header of the attach request: the session's id, under which the engine tells it when what it
/// handed off has ended (absent: a CLI command, which is told nothing).
pub const SESSION_HEADER: &str = "x-orchestr8-session";
/// Header of the attach answer: the settings of the session's fingerprint the engine differs in
/// (comma-separated names; absent when none).
pub const DIFFERS_HEADER: &str = "x-orchestr8-settings-differ";

/// How often an attach stream sends a byte: a session that has gone is noticed at the next
/// write, so the engine's count of sessions is at most this much behind.
pub const HEARTBEAT: std::time::Duration = std::time::Duration::from_millis(500);
/// An attach stream silent this long means a wedged engine (stopped, or stuck): the session
/// treats it as gone and reaches for the next one, rather than waiting on it for ever. A busy
/// engine that was only slow is simply attached to again.
pub const SILENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// This build's version, as sent in [`VERSION_HEADER`].
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// `<db>.sock`, next to the database file.
pub fn socket_path(db: &Path) -> PathBuf {
    with_suffix(db, ".sock")
}

/// `<db>.log`: a detached engine's log.
pub fn log_path(db: &Path) -> PathBuf {
    with_suffix(db, ".log")
}

/// `<db>.worktrees`: the git worktrees of the engine's isolated tasks while they run.
pub fn worktrees_path(db: &Path) -> PathBuf {
    with_suffix(db, ".worktrees")
}

/// `<db>.node.lock`: held by the engine of a cluster node, which opens no DuckDB file, so that
/// one engine per path serves its sessions all the same.
pub fn node_lock_path(db: &Path) -> PathBuf {
    with_suffix(db, ".node.lock")
}

fn with_suffix(db: &Path, suffix: &str) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// What a call needs from the session it comes from: the engine is a process of its own, so
/// "here" is the session's directory, never the engine's. Sent with every forwarded call.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub struct SessionContext {
    /// The session's working directory: a task without `working_dir` runs here, a relative
    /// `working_dir` is taken from here, and the task records it as its project.
    pub cwd: String,
    /// The session's agent search path, every entry absolute (relative ones were resolved
    /// against `cwd` by the session).
    pub agents_dir: Vec<String>,
    /// The session's id (one per session process), sent also on its attach stream: the tasks
    /// and workflows it hands off are told to it when they end. Absent for CLI commands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
}

impl SessionContext {
    /// The context of this process: its directory and its configured search path (no session
    /// id: see [`SessionContext::with_session_id`]).
    pub fn of_this_process(agent_dirs: &[PathBuf]) -> SessionContext {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        SessionContext {
            agents_dir: agent_dirs
                .iter()
                .map(|d| cwd.join(d).display().to_string())
                .collect(),
            cwd: cwd.display().to_string(),
            session_id: None,
        }
    }

    pub fn with_session_id(mut self, id: String) -> SessionContext {
        self.session_id = Some(id);
        self
    }
}

/// The body of a forwarded tool call.
#[derive(Debug, Serialize, Deserialize)]
pub struct ToolCall {
    pub args: serde_json::Value,
    pub session: SessionContext,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_search_path_entries_resolve_against_the_session() {
        let here = std::env::current_dir().unwrap();
        let c =
            SessionContext::of_this_process(&[PathBuf::from("./agents"), PathBuf::from("/abs")]);
        assert_eq!(c.cwd, here.display().to_string());
        assert_eq!(c.agents_dir[0], here.join("./agents").display().to_string());
        assert_eq!(c.agents_dir[1], "/abs");
    }
}
