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

/// Process groups of live processes whose environment carries `ORCHESTR8_TASK_ID=<id>` for one of
/// `ids`, by task id.
///
/// Crash recovery uses this on top of the recorded process group: a server killed between
/// starting a process and recording its pid leaves an orphan only its environment identifies,
/// and a task must never run twice at the same time. Processes of other users are skipped
/// (their environment is unreadable), and so is this process's own group.
pub fn groups_by_task(ids: &HashSet<String>) -> HashMap<String, Vec<i64>> {
    let mut found: HashMap<String, Vec<i64>> = HashMap::new();
    if ids.is_empty() {
        return found;
    }
    let own_group = i64::from(nix::unistd::getpgrp().as_raw());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i64>() else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let task = environ
            .split(|b| *b == 0)
            .find_map(|kv| kv.strip_prefix(b"ORCHESTR8_TASK_ID="))
            .map(|v| String::from_utf8_lossy(v).into_owned());
        let Some(task) = task.filter(|t| ids.contains(t)) else {
            continue;
        };
        if let Some(pgid) = process_group(pid).filter(|g| *g > 1 && *g != own_group) {
            let groups = found.entry(task).or_default();
            if !groups.contains(&pgid) {
                groups.push(pgid);
            }
        }
    }
    found
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
