//! Runners: how one attempt of a task is carried out (a process or an HTTP call).
//!
//! The scheduler knows nothing about processes or APIs: it hands a [`RunJob`] and a
//! [`RunContext`] to the [`Runner`] the agent names and gets a [`RunOutcome`] back. Timeouts,
//! cancellation and shutdown all arrive the same way, as the context's cancellation token; the
//! scheduler knows why it cancelled, the runner only has to stop promptly and say so.

pub mod anthropic;
pub mod claude;
pub mod claude_stream;
pub mod command;
pub mod http;
pub mod openai;
pub mod orphans;
pub mod process;
mod prompt_files;
pub mod setup;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::agents::AgentDef;
use crate::model::Usage;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Everything a runner needs to carry out one attempt.
#[derive(Debug, Clone)]
pub struct RunJob {
    pub task_id: Uuid,
    pub task_name: String,
    pub agent: AgentDef,
    pub instructions: String,
    pub attempt: u32,
    pub workflow_id: Option<Uuid>,
    pub phase_id: Option<String>,
    pub working_dir: Option<PathBuf>,
    /// The database this task lives in (see `SchedConfig::instance`).
    pub instance: Arc<str>,
}

/// Sink for task log lines: `(level, message)`.
pub type LogFn = Arc<dyn Fn(&'static str, String) + Send + Sync>;
/// Told the process group id once a process is running, for crash recovery.
pub type SpawnFn = Arc<dyn Fn(i64) + Send + Sync>;

#[derive(Clone)]
pub struct RunContext {
    pub cancel: CancellationToken,
    pub log: LogFn,
    pub on_spawn: SpawnFn,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RunOutcome {
    Completed {
        result: String,
        usage: Usage,
        /// Extra fields merged into the task's metadata (e.g. a Claude `session_id`).
        metadata: Option<serde_json::Map<String, serde_json::Value>>,
    },
    Failed {
        error: String,
        /// Whether another attempt could succeed (a crash, a 5xx); `false` for a request the
        /// other side refused as invalid.
        retryable: bool,
        /// The earliest the other side wants to be asked again (an HTTP `retry-after`).
        retry_after: Option<std::time::Duration>,
    },
    /// The cancellation token fired and the work was stopped.
    Stopped,
}

impl RunOutcome {
    /// A failure another attempt may get past (a crash, a time-out, a 5xx).
    pub fn retryable(error: impl Into<String>) -> Self {
        RunOutcome::Failed {
            error: error.into(),
            retryable: true,
            retry_after: None,
        }
    }

    /// A failure no retry will fix (a missing executable, a 401, an invalid request).
    pub fn fatal(error: impl Into<String>) -> Self {
        RunOutcome::Failed {
            error: error.into(),
            retryable: false,
            retry_after: None,
        }
    }
}

pub trait Runner: Send + Sync {
    /// Whether this runner can run `agent` at all (binary installed, key set, ...). Called at
    /// submit so that a task that can never run is refused at once.
    fn check(&self, agent: &AgentDef) -> Result<(), String>;

    fn run(&self, job: RunJob, ctx: RunContext) -> BoxFuture<'_, RunOutcome>;
}

/// What the runners need from the configuration and environment.
#[derive(Clone, Default)]
pub struct RunnerSettings {
    pub claude: claude::ClaudeSettings,
    pub anthropic: anthropic::AnthropicSettings,
    pub openai: openai::OpenAiSettings,
}

/// The runners this build provides, by the name agents use in `runner:`.
#[derive(Clone, Default)]
pub struct Runners {
    by_name: HashMap<&'static str, Arc<dyn Runner>>,
}

impl Runners {
    /// Every runner (claude, command, anthropic, openai). Fails only if no HTTP client can be built (TLS setup).
    pub fn new(settings: RunnerSettings) -> Result<Self, String> {
        let client = http::client()?;
        let mut r = Runners::default();
        r.insert("command", Arc::new(command::CommandRunner::default()));
        r.insert(
            "claude",
            Arc::new(claude::ClaudeRunner::new(settings.claude)),
        );
        r.insert(
            "anthropic",
            Arc::new(anthropic::AnthropicRunner::new(
                settings.anthropic,
                client.clone(),
            )),
        );
        r.insert(
            "openai",
            Arc::new(openai::OpenAiRunner::new(settings.openai, client)),
        );
        Ok(r)
    }

    pub fn insert(&mut self, name: &'static str, runner: Arc<dyn Runner>) {
        self.by_name.insert(name, runner);
    }

    /// The runner for `agent`, checked to be able to run it.
    pub fn for_agent(&self, agent: &AgentDef) -> Result<Arc<dyn Runner>, String> {
        let runner = self.by_name.get(agent.runner.as_str()).ok_or_else(|| {
            format!(
                "agent {:?} uses runner {:?}, which this build does not provide (available: {}); set `runner:` to one of those in {}, or change ORCHESTR8_DEFAULT_RUNNER",
                agent.name,
                agent.runner,
                self.names().join(", "),
                agent.path.display()
            )
        })?;
        runner.check(agent)?;
        Ok(runner.clone())
    }

    pub fn names(&self) -> Vec<&'static str> {
        let mut n: Vec<_> = self.by_name.keys().copied().collect();
        n.sort();
        n
    }
}
