//! The warden: a small process each cluster node starts beside itself, which stops the node's
//! agent processes when the node can no longer vouch for them: it died without doing so (kill -9,
//! a crash, the OOM killer), or it stopped renewing its lease (frozen, stopped, starved).
//!
//! A single engine's successor kills what a dead engine left running before it starts anything
//! (crash recovery). In a cluster the next attempt may start on another machine, which cannot
//! reach this one's processes; left alone, the old attempt would run on beside the new one. So
//! the warden holds the read end of a pipe only the engine writes to: a byte after each renewal
//! of the node's lease. When the read ends (the engine is gone, however it went), or no byte has
//! come for as long as the node's own deadline (its lease is about to end: the cluster will run
//! its tasks elsewhere), the warden kills every process group whose environment carries the
//! node's `ORCHESTR8_NODE_ID`, scanning again until none is left. The cluster gives a node up
//! only some time after its lease ends, so the processes are gone by then.

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::runner::orphans::groups_with_env;
use crate::runner::process::signal_group;

/// The environment variable naming the node on each of its agent processes.
pub const NODE_ENV: &str = "ORCHESTR8_NODE_ID";

/// How long a warden keeps looking for processes to stop.
const SWEEP_LIMIT: Duration = Duration::from_secs(30);

/// The engine's side: the warden process and the pipe it watches.
pub struct Warden {
    child: Child,
    pipe: Arc<Mutex<Option<ChildStdin>>>,
}

impl Warden {
    /// Starts the warden of `node_id`: this binary's hidden `warden` command, in a process group
    /// of its own (a signal to the engine's group does not reach it). `stale_after`: how long
    /// without a renewal before it stops the node's processes.
    pub fn start(node_id: &str, stale_after: Duration) -> std::io::Result<Warden> {
        use std::os::unix::process::CommandExt;
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .arg("warden")
            .arg(node_id)
            .arg("--stale-after-ms")
            .arg(stale_after.as_millis().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()?;
        let pipe = Arc::new(Mutex::new(child.stdin.take()));
        Ok(Warden { child, pipe })
    }

    /// What tells the warden the node renewed its lease.
    pub fn beats(&self) -> impl Fn() + Send + Sync + 'static {
        let pipe = self.pipe.clone();
        move || {
            let mut pipe = pipe.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(p) = pipe.as_mut() {
                // The warden reads at once; a full pipe would mean it is gone.
                let _ = p.write_all(b".");
            }
        }
    }

    /// At a clean stop (the node's attempts have ended): the warden looks once, finds
    /// nothing, and exits.
    pub async fn release(mut self) {
        drop(self.pipe.lock().unwrap_or_else(|e| e.into_inner()).take());
        let _ = tokio::task::spawn_blocking(move || self.child.wait()).await;
    }
}

/// The warden's own life: stops the node's processes whenever the renewals stop coming, and
/// for good once the engine is gone. Returns the exit status.
pub fn run(node_id: &str, stale_after: Duration) -> i32 {
    let (tx, rx) = mpsc::channel::<()>();
    // Nothing but renewals is written: the read ends when every write end is closed, i.e. when
    // the engine has exited (or released the warden).
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        let mut stdin = std::io::stdin();
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => return,
                Ok(_) => {
                    if tx.send(()).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
        }
    });
    let mut stale = false;
    loop {
        match rx.recv_timeout(stale_after) {
            Ok(()) => stale = false,
            Err(RecvTimeoutError::Timeout) => {
                if !stale {
                    tracing::error!(node = node_id, "the node has not renewed its lease for {stale_after:?}: stopping its processes, whose tasks will run elsewhere");
                    stale = true;
                }
                sweep(node_id);
            }
            Err(RecvTimeoutError::Disconnected) => return if sweep(node_id) { 0 } else { 1 },
        }
    }
}

/// Kills the node's process groups until none is left (or a while has passed); whether none is.
pub(super) fn sweep(node_id: &str) -> bool {
    let deadline = Instant::now() + SWEEP_LIMIT;
    let mut killed = std::collections::HashSet::new();
    loop {
        let groups = groups_with_env(NODE_ENV, node_id);
        if groups.is_empty() {
            if !killed.is_empty() {
                tracing::warn!(
                    node = node_id,
                    "the node's warden stopped {} process group(s) it had left running",
                    killed.len()
                );
            }
            return true;
        }
        if Instant::now() >= deadline {
            tracing::error!(
                node = node_id,
                "processes of the node are still alive after {SWEEP_LIMIT:?}: {groups:?}"
            );
            return false;
        }
        for g in &groups {
            signal_group(*g, Signal::SIGKILL);
        }
        killed.extend(groups);
        std::thread::sleep(Duration::from_millis(20));
    }
}
