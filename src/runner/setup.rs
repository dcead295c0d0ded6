//! An agent's `worktree_setup`: a shell command run in a new worktree before the agent starts
//! (install dependencies, generate files). It runs like an agent process — its own process
//! group, the task's environment, stopped by the task's cancellation and timeout — and its
//! output lines go to the task's log.

use tokio::process::Command;

use super::process;
use super::{RunContext, RunJob, RunOutcome};

/// Runs `script` with `sh -c` in the job's working directory. `Ok(())` when it exits 0; else
/// the outcome that fails the attempt (with the end of its output), or `Stopped`.
pub async fn run_setup(job: &RunJob, ctx: &RunContext, script: &str) -> Result<(), RunOutcome> {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(script);
    process::prepare(&mut cmd, job, None);
    let (mut child, pgid) =
        process::spawn(&mut cmd, ctx, "worktree_setup").map_err(RunOutcome::fatal)?;
    drop(child.stdin.take());
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|stream| {
        let log = ctx.log.clone();
        tokio::spawn(async move {
            process::stream_lines(stream, |line| {
                log("info", format!("worktree_setup: {line}"))
            })
            .await
        })
    })
    .collect();
    let Some(status) = process::wait_or_stop(&mut child, pgid, &ctx.cancel).await else {
        for r in readers {
            let _ = r.await;
        }
        return Err(RunOutcome::Stopped);
    };
    let mut tail = String::new();
    for r in readers {
        let part = r.await.unwrap_or_default();
        if !part.is_empty() {
            tail.push_str(&part);
            tail.push('\n');
        }
    }
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(RunOutcome::retryable(format!(
            "worktree_setup failed ({}); end of its output:\n{}",
            process::describe_exit(&s),
            crate::limits::tail_with_marker(tail.trim_end(), crate::limits::MAX_STDERR_TAIL_BYTES)
        ))),
        Err(e) => Err(RunOutcome::retryable(format!(
            "could not wait for worktree_setup: {e}"
        ))),
    }
}
