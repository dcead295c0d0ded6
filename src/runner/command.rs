//! The `command` runner (contract section 6): any program, instructions on stdin, stdout as the
//! result, stderr lines as log lines while they arrive.

use std::io::Write;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::process::{self, signal_group};
use super::{BoxFuture, RunContext, RunJob, RunOutcome, Runner};
use crate::agents::AgentDef;
use crate::limits;
use crate::model::Usage;

#[derive(Debug, Default)]
pub struct CommandRunner;

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
        Box::pin(run(job, ctx))
    }
}

fn failed(error: String, retryable: bool) -> RunOutcome {
    RunOutcome::Failed { error, retryable }
}

async fn run(job: RunJob, ctx: RunContext) -> RunOutcome {
    let Some(argv) = job.agent.command.clone().filter(|a| !a.is_empty()) else {
        return failed("agent has no `command:`".into(), false);
    };
    // The agent body goes to a file rather than an argument: it can be long, and it should not
    // show in `ps`. The file lives as long as this attempt.
    let prompt_file = match write_prompt_file(&job.agent.body) {
        Ok(f) => f,
        Err(e) => return failed(format!("could not write the agent prompt file: {e}"), true),
    };

    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .envs(&job.agent.env)
        .env("ORCHESTR8_TASK_ID", job.task_id.to_string())
        .env("ORCHESTR8_TASK_NAME", &job.task_name)
        .env("ORCHESTR8_AGENT_NAME", &job.agent.name)
        .env("ORCHESTR8_ATTEMPT", job.attempt.to_string())
        .env(
            "ORCHESTR8_WORKFLOW_ID",
            job.workflow_id.map(|w| w.to_string()).unwrap_or_default(),
        )
        .env(
            "ORCHESTR8_PHASE_ID",
            job.phase_id.clone().unwrap_or_default(),
        )
        .env("ORCHESTR8_AGENT_PROMPT_FILE", prompt_file.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(dir) = &job.working_dir {
        cmd.current_dir(dir);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let hint = if e.kind() == std::io::ErrorKind::NotFound {
                " (not found: check the agent's `command:` and PATH, and that working_dir exists)"
            } else {
                ""
            };
            return failed(format!("could not start {:?}: {e}{hint}", argv[0]), false);
        }
    };
    let pgid = child.id().map(i64::from).unwrap_or(0);
    (ctx.on_spawn)(pgid, process::start_time(pgid));
    (ctx.log)("info", format!("started {:?} (pid {pgid})", argv[0]));

    let stdin = child.stdin.take();
    let instructions = job.instructions;
    let writer = tokio::spawn(async move {
        if let Some(mut stdin) = stdin {
            // An agent that does not read its stdin is fine: ignore a broken pipe.
            let _ = stdin.write_all(instructions.as_bytes()).await;
            let _ = stdin.shutdown().await;
        }
    });
    let stdout = child.stdout.take();
    let out_reader = tokio::spawn(async move {
        match stdout {
            Some(s) => process::read_capped(s, limits::MAX_RESULT_BYTES).await,
            None => String::new(),
        }
    });
    let stderr = child.stderr.take();
    let log = ctx.log.clone();
    let err_reader = tokio::spawn(async move {
        match stderr {
            Some(s) => process::stream_lines(s, |line| log("info", line)).await,
            None => String::new(),
        }
    });

    let status = tokio::select! {
        status = child.wait() => {
            // The leader is done; whatever it left running in its group would hold the pipes
            // open and outlive the task.
            signal_group(pgid, nix::sys::signal::Signal::SIGKILL);
            status
        }
        _ = ctx.cancel.cancelled() => {
            process::terminate_group(&mut child, pgid).await;
            writer.abort();
            let _ = out_reader.await;
            let _ = err_reader.await;
            return RunOutcome::Stopped;
        }
    };
    let _ = writer.await;
    let stdout = out_reader.await.unwrap_or_default();
    let stderr_tail = err_reader.await.unwrap_or_default();
    match status {
        Ok(s) if s.success() => RunOutcome::Completed {
            result: stdout,
            usage: Usage::default(),
            metadata: None,
        },
        Ok(s) => {
            use std::os::unix::process::ExitStatusExt;
            let how = match (s.code(), s.signal()) {
                (Some(code), _) => format!("exit status {code}"),
                (None, Some(sig)) => format!("killed by signal {sig}"),
                _ => "exited abnormally".to_string(),
            };
            let error = if stderr_tail.is_empty() {
                format!("{how} (stderr was empty)")
            } else {
                format!("{how}; end of stderr:\n{stderr_tail}")
            };
            failed(error, true)
        }
        Err(e) => failed(format!("could not wait for the process: {e}"), true),
    }
}

fn write_prompt_file(body: &str) -> std::io::Result<tempfile::NamedTempFile> {
    let mut f = tempfile::Builder::new()
        .prefix("orchestr8-agent-")
        .suffix(".md")
        .tempfile()?;
    f.write_all(body.as_bytes())?;
    f.flush()?;
    Ok(f)
}
