//! The `claude` runner (the default): Claude Code in print mode, its stream-json events read as
//! they arrive. The instructions go on stdin, never on the command line: they can be long and
//! must not show in `ps`.

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{ChildStdout, Command};

use super::claude_stream::{self, ClaudeResult};
use super::process::{self, signal_group};
use super::{BoxFuture, LogFn, RunContext, RunJob, RunOutcome, Runner};
use crate::agents::AgentDef;
use crate::limits;
use crate::model::Usage;

#[derive(Debug, Clone)]
pub struct ClaudeSettings {
    /// `ORCHESTR8_CLAUDE_BIN`: a name looked up on PATH, or a path.
    pub bin: String,
    /// `ORCHESTR8_CLAUDE_PERMISSION_MODE`, used when the agent sets none.
    pub permission_mode: Option<String>,
}

impl Default for ClaudeSettings {
    fn default() -> Self {
        ClaudeSettings {
            bin: "claude".into(),
            permission_mode: None,
        }
    }
}

#[derive(Debug)]
pub struct ClaudeRunner {
    settings: ClaudeSettings,
}

impl ClaudeRunner {
    pub fn new(settings: ClaudeSettings) -> Self {
        ClaudeRunner { settings }
    }

    /// The command-line arguments for `agent` (print mode,
    /// stream-json, the body as an appended system prompt, then the optional settings).
    pub fn args(&self, agent: &AgentDef) -> Result<Vec<String>, String> {
        let mut args: Vec<String> = [
            "-p",
            "--output-format",
            "stream-json",
            "--verbose",
            "--append-system-prompt",
        ]
        .map(String::from)
        .into();
        args.push(agent.body.clone());
        if let Some(model) = &agent.model {
            args.extend(["--model".into(), model.clone()]);
        }
        if let Some(tools) = agent.tools.as_ref().filter(|t| !t.is_empty()) {
            args.extend(["--allowedTools".into(), tools.join(",")]);
        }
        if let Some(mode) = permission_mode(agent)?.or(self.settings.permission_mode.clone()) {
            args.extend(["--permission-mode".into(), mode]);
        }
        if let Some(budget) = max_budget_usd(agent)? {
            args.extend(["--max-budget-usd".into(), budget.to_string()]);
        }
        Ok(args)
    }

    fn not_installed(&self, agent: &AgentDef, why: &str) -> String {
        format!(
            "agent {:?} uses the claude runner, but the Claude Code executable {:?} (ORCHESTR8_CLAUDE_BIN) {why}. Install Claude Code (`npm install -g @anthropic-ai/claude-code`, then run `claude` once to log in), point ORCHESTR8_CLAUDE_BIN at it, or set `runner: anthropic`, `openai` or `command` in {}",
            agent.name,
            self.settings.bin,
            agent.path.display()
        )
    }
}

/// `permission_mode` (or Claude Code's own spelling `permissionMode`) from the frontmatter.
fn permission_mode(agent: &AgentDef) -> Result<Option<String>, String> {
    match agent
        .extra
        .get("permission_mode")
        .or_else(|| agent.extra.get("permissionMode"))
    {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.trim().to_string())),
        Some(_) => Err(format!(
            "agent {:?}: `permission_mode` must be a Claude Code permission mode such as \"acceptEdits\", \"bypassPermissions\", \"plan\" or \"default\" (in {})",
            agent.name,
            agent.path.display()
        )),
    }
}

fn max_budget_usd(agent: &AgentDef) -> Result<Option<f64>, String> {
    match agent.extra.get("max_budget_usd") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_f64() {
            Some(n) if n > 0.0 && n.is_finite() => Ok(Some(n)),
            _ => Err(format!(
                "agent {:?}: `max_budget_usd` must be a positive number of US dollars, for example 2.5 (in {})",
                agent.name,
                agent.path.display()
            )),
        },
    }
}

impl Runner for ClaudeRunner {
    fn check(&self, agent: &AgentDef) -> Result<(), String> {
        self.args(agent)?;
        match which::which(&self.settings.bin) {
            Ok(_) => Ok(()),
            Err(_) => Err(self.not_installed(agent, "was not found on PATH or is not executable")),
        }
    }

    fn run(&self, job: RunJob, ctx: RunContext) -> BoxFuture<'_, RunOutcome> {
        Box::pin(self.run_attempt(job, ctx))
    }
}

/// How the stdout stream ended.
struct StreamEnd {
    result: Option<ClaudeResult>,
    /// The first line that was not stream-json, with the parser's reason.
    bad_line: Option<(String, String)>,
}

async fn read_stream(stdout: Option<ChildStdout>, log: LogFn) -> StreamEnd {
    let mut end = StreamEnd {
        result: None,
        bad_line: None,
    };
    let Some(stdout) = stdout else { return end };
    let mut reader = BufReader::new(stdout);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return end,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&buf);
        match claude_stream::parse_line(&line) {
            Ok(parsed) => {
                for (level, message) in parsed.logs {
                    log(level, message);
                }
                if parsed.result.is_some() {
                    end.result = parsed.result;
                }
            }
            Err(reason) => {
                end.bad_line = Some((limits::truncate_with_marker(line.trim(), 300), reason));
                return end;
            }
        }
    }
}

impl ClaudeRunner {
    async fn run_attempt(&self, job: RunJob, ctx: RunContext) -> RunOutcome {
        let args = match self.args(&job.agent) {
            Ok(a) => a,
            Err(e) => return RunOutcome::fatal(e),
        };
        let mut cmd = Command::new(&self.settings.bin);
        cmd.args(&args);
        process::prepare(&mut cmd, &job, None);
        let (mut child, pgid) = match process::spawn(&mut cmd, &ctx, &self.settings.bin) {
            Ok(c) => c,
            Err(e) => return RunOutcome::fatal(self.not_installed(&job.agent, &e)),
        };
        let writer = process::feed_stdin(&mut child, job.instructions);
        let stderr = child.stderr.take();
        let log = ctx.log.clone();
        let err_reader = tokio::spawn(async move {
            match stderr {
                Some(s) => {
                    process::stream_lines(s, |line| log("warn", format!("stderr: {line}"))).await
                }
                None => String::new(),
            }
        });

        let read = read_stream(child.stdout.take(), ctx.log.clone());
        let end = tokio::select! {
            end = read => end,
            _ = ctx.cancel.cancelled() => {
                process::terminate_group(&mut child, pgid).await;
                writer.abort();
                return RunOutcome::Stopped;
            }
        };
        if end.bad_line.is_some() {
            process::terminate_group(&mut child, pgid).await;
        }
        let status = tokio::select! {
            s = child.wait() => s,
            _ = ctx.cancel.cancelled() => {
                process::terminate_group(&mut child, pgid).await;
                writer.abort();
                return RunOutcome::Stopped;
            }
        };
        signal_group(pgid, nix::sys::signal::Signal::SIGKILL);
        writer.abort();
        let stderr_tail = err_reader.await.unwrap_or_default();
        let how = match &status {
            Ok(s) => process::describe_exit(s),
            Err(e) => format!("could not be waited for ({e})"),
        };
        let exited_ok = status.as_ref().is_ok_and(|s| s.success());
        let with_stderr = |msg: String| {
            if stderr_tail.is_empty() {
                msg
            } else {
                format!("{msg}; end of stderr:\n{stderr_tail}")
            }
        };
        if let Some((line, reason)) = end.bad_line {
            return RunOutcome::retryable(with_stderr(format!(
                "claude printed a line that is not stream-json ({reason}): {line}"
            )));
        }
        match end.result {
            None => RunOutcome::retryable(with_stderr(format!(
                "claude's output ended without a result event ({how})"
            ))),
            Some(r) if r.is_error => {
                // Hitting a turn or budget cap again will not go differently.
                let error = format!("claude reported an error ({}): {}", r.subtype, r.text);
                if r.subtype.starts_with("error_max") {
                    RunOutcome::fatal(error)
                } else {
                    RunOutcome::retryable(error)
                }
            }
            Some(_) if !exited_ok => RunOutcome::retryable(with_stderr(format!(
                "claude exited with {how} after its result event"
            ))),
            Some(r) => completed(r),
        }
    }
}

fn completed(r: ClaudeResult) -> RunOutcome {
    let mut metadata = serde_json::Map::new();
    if let Some(s) = &r.session_id {
        metadata.insert("session_id".into(), json!(s));
    }
    if let Some(n) = r.num_turns {
        metadata.insert("num_turns".into(), json!(n));
    }
    RunOutcome::Completed {
        result: r.text,
        usage: Usage {
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            cost_usd: r.cost_usd,
        },
        metadata: (!metadata.is_empty()).then_some(metadata),
    }
}
