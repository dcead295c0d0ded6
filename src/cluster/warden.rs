//! The warden: a small process each cluster node starts beside itself, which stops the node's
//! agent processes if the node dies without doing so (kill -9, a crash, the OOM killer).
//!
//! A single engine's successor kills what a dead engine left running before it starts anything
//! (crash recovery). In a cluster the next attempt may start on another machine, which cannot
//! reach this one's processes; left alone, the old attempt would run on beside the new one. So
//! the warden holds the read end of a pipe only the engine writes to: when the engine is gone,
//! however it went, the read ends, and the warden kills every process group whose environment
//! carries the node's `ORCHESTR8_NODE_ID`, scanning again until none is left. That happens within
//! milliseconds of the death, long before the node's lease runs out and its tasks are rescued.

use std::io::Read;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::runner::orphans::groups_with_env;
use crate::runner::process::signal_group;

/// The environment variable naming the node on each of its agent processes.
pub const NODE_ENV: &str = "ORCHESTR8_NODE_ID";

/// How long a warden keeps looking for processes to stop.
const SWEEP_LIMIT: Duration = Duration::from_secs(30);

/// The engine's side: the warden process and the pipe whose end tells it the engine is gone.
pub struct Warden {
    child: Child,
    pipe: Option<ChildStdin>,
}

impl Warden {
    /// Starts the warden of `node_id`: this binary's hidden `warden` command, in a process group
    /// of its own (a signal to the engine's group does not reach it).
    pub fn start(node_id: &str) -> std::io::Result<Warden> {
        use std::os::unix::process::CommandExt;
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .arg("warden")
            .arg(node_id)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()?;
        let pipe = child.stdin.take();
        Ok(Warden { child, pipe })
    }

    /// At a clean stop (the node's attempts have ended): the warden looks once, finds
    /// nothing, and exits.
    pub async fn release(mut self) {
        drop(self.pipe.take());
        let _ = tokio::task::spawn_blocking(move || self.child.wait()).await;
    }
}

/// The warden's own life: waits for the engine's end, then stops the node's processes.
/// Returns the exit status.
pub fn run(node_id: &str) -> i32 {
    // Nothing is ever written: the read ends when every write end is closed, i.e. when the
    // engine has exited (or released the warden).
    let mut sink = [0u8; 64];
    let mut stdin = std::io::stdin();
    loop {
        match stdin.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    let deadline = Instant::now() + SWEEP_LIMIT;
    let mut killed = std::collections::HashSet::new();
    loop {
        let groups = groups_with_env(NODE_ENV, node_id);
        if groups.is_empty() {
            if !killed.is_empty() {
                tracing::warn!(node = node_id, "the node's engine is gone; its warden stopped {} process group(s) it left running", killed.len());
            }
            return 0;
        }
        if Instant::now() >= deadline {
            tracing::error!(
                node = node_id,
                "processes of the node are still alive after {SWEEP_LIMIT:?}: {groups:?}"
            );
            return 1;
        }
        for g in &groups {
            signal_group(*g, Signal::SIGKILL);
        }
        killed.extend(groups);
        std::thread::sleep(Duration::from_millis(20));
    }
}
