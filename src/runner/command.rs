//! The `command` runner: any program, instructions on stdin, stdout as the
//! result, stderr lines as log lines while they arrive.

use tokio::process::Command;

use super::process;
use super::prompt_files::PromptFiles;
use super::{BoxFuture, RunContext, RunJob, RunOutcome, Runner};
use crate::agents::AgentDef;
use crate::limits;
use crate::model::Usage;

#[derive(Default)]
pub struct CommandRunner {
    prompts: PromptFiles,
}

impl Runner for CommandRunner {
    fn check(&self, agent: &AgentDef) -> Result<(), String> {
        match &agent.command {
            Some(argv) if !argv.is_empty() => Ok(()),
            _ => Err(format!(
                "agent {:?} has runner `command` but no `command:` list in {}",
                agent.name,
                agent.path.display()
            )),
        }
    }

    fn run(&self, job: RunJob, ctx: RunContext) -> BoxFuture<'_, RunOutcome> {
        Box::pin(run(job, ctx, &self.prompts))
    }
}

async fn run(job: RunJob, ctx: RunContext, prompts: &PromptFiles) -> RunOutcome {
    let Some(argv) = job.agent.command.clone().filter(|a| !a.is_empty()) else {
        return RunOutcome::fatal("agent has no `command:`");
    };
    // The agent body goes to a file rather than an argument: it can be long, and it should not
    // show in `ps`.
    let prompt_file = match prompts.path_for(&job.agent.body) {
        Ok(f) => f,
        Err(e) => {
            return RunOutcome::retryable(format!("could not write the agent prompt file: {e}"))
        }
    };

    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    process::prepare(&mut cmd, &job, Some(&prompt_file));
    let (mut child, pgid) = match process::spawn(&mut cmd, &ctx, &argv[0]) {
        Ok(c) => c,
        Err(e) => return RunOutcome::fatal(e),
    };
    // Feeding stdin, reading stdout and stderr and waiting for the exit go on together in this
    // one task: a task of their own each would cost three more hand-offs between threads for
    // every attempt, which is most of what a short one costs.
    let stdin = child.stdin.take();
    let reaped = tokio_util::sync::CancellationToken::new();
    let reaped_write = reaped.clone();
    let write = async move {
        tokio::select! {
            () = process::write_stdin(stdin, job.instructions) => {}
            // Its reader has gone (and a process that escaped its group may never read it).
            () = reaped_write.cancelled() => {}
        }
    };
    let stdout = child.stdout.take();
    let read_out = async move {
        match stdout {
            Some(s) => process::read_capped(s, limits::MAX_RESULT_BYTES).await,
            None => String::new(),
        }
    };
    let stderr = child.stderr.take();
    let log = ctx.log.clone();
    let read_err = async move {
        match stderr {
            Some(s) => process::stream_lines(s, |line| log("info", line)).await,
            None => String::new(),
        }
    };
    let wait = async {
        let status = process::wait_or_stop(&mut child, pgid, &ctx.cancel).await;
        reaped.cancel();
        status
    };
    let (status, (), stdout, stderr_tail) = tokio::join!(wait, write, read_out, read_err);
    let Some(status) = status else {
        return RunOutcome::Stopped;
    };
    match status {
        Ok(s) if s.success() => RunOutcome::Completed {
            result: stdout,
            usage: Usage::default(),
            metadata: None,
        },
        Ok(s) => {
            let how = process::describe_exit(&s);
            RunOutcome::retryable(if stderr_tail.is_empty() {
                format!("{how} (stderr was empty)")
            } else {
                format!("{how}; end of stderr:\n{stderr_tail}")
            })
        }
        Err(e) => RunOutcome::retryable(format!("could not wait for the process: {e}")),
    }
}
