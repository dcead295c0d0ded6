//! Process-group plumbing shared by runners that start processes.
//!
//! Every agent process leads its own process group, so that stopping a task reaches everything
//! it started (`sh -c 'sleep 100'` leaves no `sleep` behind), and so that crash recovery can stop
//! the orphans of a dead server by group id.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use super::{RunContext, RunJob};
use crate::limits;

/// Sets `cmd` up the way every agent process runs: its own process group, the task's environment
/// (`ORCHESTR8_TASK_ID`, `ORCHESTR8_ATTEMPT`, ...) on top of the agent's `env`, piped stdio, cwd = the task's working_dir.
pub fn prepare(cmd: &mut Command, job: &RunJob, prompt_file: Option<&Path>) {
    // Inherited from an engine started inside a git hook, these would make the agent's git act
    // on that repository instead of the one it works in.
    for v in crate::workspace::git::REPOSITORY_VARIABLES {
        cmd.env_remove(v);
    }
    // The cluster's database URL may carry a password: agents are not told it.
    cmd.env_remove("ORCHESTR8_DATABASE_URL");
    cmd.envs(&job.agent.env)
        .env("ORCHESTR8_TASK_ID", job.task_id.to_string())
        .env("ORCHESTR8_TASK_NAME", &job.task_name)
        .env("ORCHESTR8_AGENT_NAME", &job.agent.name)
        .env("ORCHESTR8_ATTEMPT", job.attempt.to_string())
        .env("ORCHESTR8_TASK_DB", &*job.instance)
        .env(
            "ORCHESTR8_WORKFLOW_ID",
            job.workflow_id.map(|w| w.to_string()).unwrap_or_default(),
        )
        .env(
            "ORCHESTR8_PHASE_ID",
            job.phase_id.clone().unwrap_or_default(),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(f) = prompt_file {
        cmd.env("ORCHESTR8_AGENT_PROMPT_FILE", f);
    }
    if let Some(dir) = &job.working_dir {
        cmd.current_dir(dir);
    }
}

/// Starts a prepared command and tells the scheduler its process group (for crash recovery).
/// The error says what to check; `what` names the program for it.
pub fn spawn(cmd: &mut Command, ctx: &RunContext, what: &str) -> Result<(Child, i64), String> {
    let child = cmd.spawn().map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::NotFound {
            " (not found: check the program name and PATH, and that working_dir exists)"
        } else {
            ""
        };
        format!("could not start {what:?}: {e}{hint}")
    })?;
    let pgid = child.id().map(i64::from).unwrap_or(0);
    (ctx.on_spawn)(pgid);
    (ctx.log)("info", format!("started {what:?} (pid {pgid})"));
    Ok((child, pgid))
}

/// Writes `text` to the child's stdin and closes it, in the background (a large text must not
/// block reading the child's output). An agent that never reads its stdin is fine.
pub fn feed_stdin(child: &mut Child, text: String) -> JoinHandle<()> {
    tokio::spawn(write_stdin(child.stdin.take(), text))
}

/// Writes `text` to a child's stdin and closes it; a child that exits without reading it only
/// ends the write early.
pub async fn write_stdin(stdin: Option<tokio::process::ChildStdin>, text: String) {
    if let Some(mut stdin) = stdin {
        let _ = stdin.write_all(text.as_bytes()).await;
        let _ = stdin.shutdown().await;
    }
}

/// Describes how a process ended, for an error message.
pub fn describe_exit(status: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "exited abnormally".to_string(),
    }
}

/// Waits for the leader to exit (then kills whatever it left in its group, which would hold
/// the pipes open and outlive the task), or — `cancel` fired — stops the whole group and
/// answers `None`.
pub async fn wait_or_stop(
    child: &mut Child,
    pgid: i64,
    cancel: &tokio_util::sync::CancellationToken,
) -> Option<std::io::Result<std::process::ExitStatus>> {
    tokio::select! {
        status = child.wait() => {
            signal_group(pgid, Signal::SIGKILL);
            Some(status)
        }
        _ = cancel.cancelled() => {
            terminate_group(child, pgid).await;
            None
        }
    }
}

/// How long a process group has between SIGTERM and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(3);

pub fn signal_group(pgid: i64, sig: Signal) {
    if pgid > 1 {
        let _ = killpg(Pid::from_raw(pgid as i32), sig);
    }
}

/// SIGTERM to the group, then SIGKILL once [`KILL_GRACE`] has passed; returns once the leader
/// has been reaped.
pub async fn terminate_group(child: &mut Child, pgid: i64) {
    signal_group(pgid, Signal::SIGTERM);
    if tokio::time::timeout(KILL_GRACE, child.wait())
        .await
        .is_err()
    {
        signal_group(pgid, Signal::SIGKILL);
        let _ = child.wait().await;
    }
    // The leader is gone; anything it left in the group goes too.
    signal_group(pgid, Signal::SIGKILL);
}

/// Start time of a process in clock ticks since boot (field 22 of `/proc/<pid>/stat`), which
/// together with the pid identifies a process even after pids wrap around.
pub fn start_time(pid: i64) -> Option<i64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// Whether a process exists and is not a zombie (state field of `/proc/<pid>/stat`): an exited
/// process nobody has reaped yet is gone for every purpose here.
pub fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    stat.rsplit(')')
        .next()
        .and_then(|rest| rest.split_whitespace().next())
        .is_some_and(|state| state != "Z" && state != "X")
}

/// Reads a stream to its end, keeping at most `cap` bytes; returns the kept text (lossy UTF-8,
/// with a marker when cut).
pub async fn read_capped(stream: impl AsyncRead + Unpin, cap: usize) -> String {
    // Read straight into what is kept, which grows with the output: most processes print
    // little, and a large zeroed buffer per attempt would cost more than their whole output.
    let mut kept = Vec::new();
    let mut reader = stream;
    let _ = (&mut reader).take(cap as u64).read_to_end(&mut kept).await;
    let mut total = kept.len();
    if total >= cap {
        // Past the cap the rest is only counted.
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    }
    let text = String::from_utf8_lossy(&kept).into_owned();
    if total > kept.len() {
        format!("{text}\n…[truncated: {} bytes omitted]", total - kept.len())
    } else {
        text
    }
}

/// Streams lines of `stream` to `on_line` as they arrive (each cut to the log-line limit) and
/// returns the last [`limits::MAX_STDERR_TAIL_BYTES`] of the whole stream.
pub async fn stream_lines(stream: impl AsyncRead + Unpin, on_line: impl Fn(String)) -> String {
    let mut reader = BufReader::new(stream);
    let mut tail = String::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end_matches(['\n', '\r']);
                tail.push_str(text);
                tail.push('\n');
                if tail.len() > 2 * limits::MAX_STDERR_TAIL_BYTES {
                    tail = limits::tail_with_marker(&tail, limits::MAX_STDERR_TAIL_BYTES);
                }
                on_line(limits::truncate_with_marker(
                    text,
                    limits::MAX_LOG_LINE_BYTES,
                ));
            }
        }
    }
    limits::tail_with_marker(tail.trim_end(), limits::MAX_STDERR_TAIL_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_of_self_is_readable() {
        let me = std::process::id() as i64;
        assert!(start_time(me).is_some());
        assert!(start_time(i32::MAX as i64).is_none());
    }

    #[tokio::test]
    async fn capped_read_marks_the_cut() {
        let data = [b'x'; 100];
        let text = read_capped(&data[..], 10).await;
        assert!(text.starts_with("xxxxxxxxxx\n…[truncated: 90 bytes omitted]"));
    }

    #[tokio::test]
    async fn lines_stream_and_tail_is_kept() {
        let seen = std::sync::Mutex::new(Vec::new());
        let tail = stream_lines(&b"a\nb\r\nc"[..], |l| seen.lock().unwrap().push(l)).await;
        assert_eq!(*seen.lock().unwrap(), vec!["a", "b", "c"]);
        assert_eq!(tail, "a\nb\nc");
    }
}
