//! Finding and stopping the processes a dead server left behind (crash recovery), so that a
//! task never runs twice at the same time.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use nix::sys::signal::Signal;

use super::process::{signal_group, start_time};

/// Kills the process group a dead server left running, if its leader is still the same process.
/// Returns whether something was killed.
pub fn kill_orphan(pgid: i64, expected_start: Option<i64>) -> bool {
    match (start_time(pgid), expected_start) {
        (Some(now), Some(then)) if now == then => {
            signal_group(pgid, Signal::SIGKILL);
            true
        }
        _ => false,
    }
}

/// An interrupted attempt: task id and attempt number, as the agent's environment carries them.
pub type Attempt = (String, u32);

/// Process groups holding a live process of one of `attempts` of database `db`, by task id:
/// processes whose environment carries that `ORCHESTR8_TASK_ID`, `ORCHESTR8_ATTEMPT` and
/// `ORCHESTR8_TASK_DB`.
///
/// Crash recovery uses this on top of the recorded process group: a process younger than the
/// pid record, or started just before the server died, is known only by its environment. The
/// attempt and the database must match too, so helpers left by earlier attempts and processes
/// of a copy of the database file are never touched. Processes of other users are skipped
/// (their environment is unreadable), and so is this process's own group.
pub fn groups_by_task(attempts: &HashSet<Attempt>, db: &str) -> HashMap<String, Vec<i64>> {
    let mut found: HashMap<String, Vec<i64>> = HashMap::new();
    if attempts.is_empty() {
        return found;
    }
    let own_group = i64::from(nix::unistd::getpgrp().as_raw());
    for (pid, environ) in environments() {
        let var = |name: &[u8]| {
            environ
                .split(|b| *b == 0)
                .find_map(|kv| kv.strip_prefix(name))
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        let (Some(task), Some(attempt), Some(task_db)) = (
            var(b"ORCHESTR8_TASK_ID="),
            var(b"ORCHESTR8_ATTEMPT=").and_then(|a| a.parse::<u32>().ok()),
            var(b"ORCHESTR8_TASK_DB="),
        ) else {
            continue;
        };
        if task_db != db || !attempts.contains(&(task.clone(), attempt)) {
            continue;
        }
        match process_group(pid) {
            Some(pgid) if pgid > 1 && pgid != own_group => {
                let groups = found.entry(task).or_default();
                if !groups.contains(&pgid) {
                    groups.push(pgid);
                }
            }
            Some(_) => tracing::warn!(
                "process {pid} of task {task} shares this server's process group; not killing it"
            ),
            None => {}
        }
    }
    found
}

/// Kills every process group of `attempts` found by environment, waits for them to be gone,
/// and scans again (a process may have left its group meanwhile), until a scan finds nothing
/// or `limit` has passed. Returns the groups killed and the task ids of which processes are
/// still alive (their tasks must not run again yet).
pub async fn stop_attempts(
    attempts: &HashSet<Attempt>,
    db: &str,
    also_killed: &[i64],
    limit: Duration,
) -> (HashMap<String, Vec<i64>>, HashSet<String>) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut killed: HashMap<String, Vec<i64>> = HashMap::new();
    let mut all: Vec<i64> = also_killed.to_vec();
    loop {
        let found = groups_by_task(attempts, db);
        if found.is_empty() && !any_alive_in(&all) {
            return (killed, HashSet::new());
        }
        for (task, groups) in &found {
            for pgid in groups {
                signal_group(*pgid, Signal::SIGKILL);
                if !all.contains(pgid) {
                    all.push(*pgid);
                }
                let k = killed.entry(task.clone()).or_default();
                if !k.contains(pgid) {
                    k.push(*pgid);
                }
            }
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return (killed, found.into_keys().collect());
        }
        // SIGKILL is delivered asynchronously: wait for the groups before looking again.
        wait_groups_gone(&all, (deadline - now).min(Duration::from_secs(1))).await;
    }
}

/// Process groups holding a live process whose environment has `name=value` (other users'
/// processes and this process's own group are skipped). A cluster node's warden finds the
/// node's agents by their `ORCHESTR8_NODE_ID`.
pub fn groups_with_env(name: &str, value: &str) -> Vec<i64> {
    let own_group = i64::from(nix::unistd::getpgrp().as_raw());
    let wanted = format!("{name}={value}");
    let mut found = Vec::new();
    for (pid, environ) in environments() {
        if !environ.split(|b| *b == 0).any(|kv| kv == wanted.as_bytes()) {
            continue;
        }
        if let Some(pgid) = process_group(pid).filter(|g| *g > 1 && *g != own_group) {
            if !found.contains(&pgid) {
                found.push(pgid);
            }
        }
    }
    found
}

/// Every process whose environment this process may read (its user's), with that
/// environment as `/proc/<pid>/environ` has it: `NAME=value` entries separated by NULs.
fn environments() -> impl Iterator<Item = (i64, Vec<u8>)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_string_lossy().parse::<i64>().ok()?;
            let environ = std::fs::read(entry.path().join("environ")).ok()?;
            Some((pid, environ))
        })
}

/// Process group of a process (field 5 of `/proc/<pid>/stat`).
fn process_group(pid: i64) -> Option<i64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(2)?.parse().ok()
}

/// Waits until no live (non-zombie) process is left in any of `groups`; false if some still are
/// after `limit`.
pub async fn wait_groups_gone(groups: &[i64], limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if !any_alive_in(groups) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn any_alive_in(groups: &[i64]) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|entry| {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            return false;
        };
        let Some(after_comm) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            return false;
        };
        let mut fields = after_comm.split_whitespace();
        let state = fields.next().unwrap_or("Z");
        let pgid = fields.nth(1).and_then(|g| g.parse::<i64>().ok());
        state != "Z" && state != "X" && pgid.is_some_and(|g| groups.contains(&g))
    })
}
