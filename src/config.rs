//! Configuration: every setting of contract section 2, as an environment variable and as a flag of
//! the same meaning (flags win, which is clap's order of precedence).

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

use crate::runner::anthropic::AnthropicSettings;
use crate::runner::claude::ClaudeSettings;
use crate::runner::openai::OpenAiSettings;
use crate::runner::RunnerSettings;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// stdio MCP server
    Mcp,
    /// HTTP REST API only
    Api,
    /// stdio MCP plus HTTP in one process
    Both,
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "orchestr8-async-server",
    version,
    about = "Durable background agents for Claude Code and any MCP client"
)]
pub struct Config {
    /// mcp (stdio MCP), api (HTTP only), both (stdio MCP plus HTTP)
    #[arg(long, env = "ORCHESTR8_MODE", value_enum, default_value = "mcp")]
    pub mode: Mode,

    /// The DuckDB file; parent folders are created. Default:
    /// ~/.claude/plugins/orchestr8/orchestr8-async.duckdb
    #[arg(long, env = "ORCHESTR8_DB_PATH", global = true)]
    pub db_path: Option<PathBuf>,

    /// Tasks that may run at the same time
    #[arg(long, env = "ORCHESTR8_WORKERS", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: u32,

    /// HTTP listen host (api and both modes)
    #[arg(long, env = "ORCHESTR8_HOST", default_value = "127.0.0.1")]
    pub host: String,

    /// HTTP listen port (api and both modes)
    #[arg(long, env = "ORCHESTR8_PORT", default_value_t = 3000)]
    pub port: u16,

    /// Colon-separated search path for agent files, first match wins
    #[arg(
        long,
        env = "ORCHESTR8_AGENTS_DIR",
        default_value = "./agents:./.claude/agents:~/.claude/agents"
    )]
    pub agents_dir: String,

    /// Runner for agents whose frontmatter names none: claude, command, anthropic, openai
    #[arg(long, env = "ORCHESTR8_DEFAULT_RUNNER", default_value = "claude")]
    pub default_runner: String,

    /// The Claude Code executable the claude runner starts
    #[arg(long, env = "ORCHESTR8_CLAUDE_BIN", default_value = "claude")]
    pub claude_bin: String,

    /// Claude Code permission mode for claude-runner agents that set none (acceptEdits,
    /// bypassPermissions, plan, default)
    #[arg(long, env = "ORCHESTR8_CLAUDE_PERMISSION_MODE")]
    pub claude_permission_mode: Option<String>,

    /// Anthropic API base URL; the anthropic runner posts to <base>/v1/messages
    #[arg(
        long,
        env = "ANTHROPIC_BASE_URL",
        default_value = "https://api.anthropic.com"
    )]
    pub anthropic_base_url: String,

    /// Model for anthropic-runner agents that name none (or `inherit`)
    #[arg(
        long,
        env = "ORCHESTR8_ANTHROPIC_MODEL",
        default_value = "claude-sonnet-4-5"
    )]
    pub anthropic_model: String,

    /// OpenAI-compatible base URL including /v1; the openai runner posts to <base>/chat/completions
    #[arg(
        long,
        env = "OPENAI_BASE_URL",
        default_value = "https://api.openai.com/v1"
    )]
    pub openai_base_url: String,

    /// Model for openai-runner agents that name none
    #[arg(long, env = "ORCHESTR8_OPENAI_MODEL")]
    pub openai_model: Option<String>,

    /// Bearer token required on /api/*
    #[arg(long, env = "ORCHESTR8_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,

    /// Comma-separated origins allowed to call the REST API from a browser (CORS); off when unset
    #[arg(long, env = "ORCHESTR8_CORS_ORIGINS")]
    pub cors_origins: Option<String>,

    /// whsec_<base64> secret; when set, every webhook is signed
    #[arg(long, env = "ORCHESTR8_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,

    /// First task-retry delay; doubles per attempt, with jitter, capped at 5 minutes
    #[arg(long, env = "ORCHESTR8_RETRY_BACKOFF_BASE_MS", default_value_t = 1000)]
    pub retry_backoff_base_ms: u64,

    /// On stdin EOF or SIGTERM: how long running tasks may finish before they are stopped
    #[arg(long, env = "ORCHESTR8_SHUTDOWN_GRACE_SECONDS", default_value_t = 10)]
    pub shutdown_grace_seconds: u64,

    /// Delivery attempts per webhook event
    #[arg(long, env = "ORCHESTR8_WEBHOOK_MAX_ATTEMPTS", default_value_t = 8)]
    pub webhook_max_attempts: u32,

    /// First webhook retry delay; doubles per attempt, with jitter
    #[arg(
        long,
        env = "ORCHESTR8_WEBHOOK_BACKOFF_BASE_MS",
        default_value_t = 1000
    )]
    pub webhook_backoff_base_ms: u64,

    /// Cap on one webhook retry delay
    #[arg(
        long,
        env = "ORCHESTR8_WEBHOOK_BACKOFF_MAX_MS",
        default_value_t = 3_600_000
    )]
    pub webhook_backoff_max_ms: u64,

    /// Per-attempt webhook HTTP timeout
    #[arg(long, env = "ORCHESTR8_WEBHOOK_TIMEOUT_MS", default_value_t = 10_000)]
    pub webhook_timeout_ms: u64,

    /// After its own MCP client has gone (stdin EOF), an engine stays up while other sessions
    /// are attached, tasks are in flight or webhooks are owed, then exits once idle this long
    #[arg(long, env = "ORCHESTR8_IDLE_EXIT_SECONDS", default_value_t = 5)]
    pub idle_exit_seconds: u64,

    /// tracing filter; logs go to stderr only (stdout belongs to MCP). Default: info for the
    /// server, warn for CLI commands
    #[arg(long, env = "ORCHESTR8_LOG", global = true)]
    pub log: Option<String>,

    /// Without a command: serve (stdio MCP, or HTTP in api mode). With one: a CLI command
    /// against the engine that has the database open, or the file itself when none runs.
    #[command(subcommand)]
    pub command: Option<crate::cli::Command>,
}

impl Config {
    /// What the runners need. API keys come from the environment only (ANTHROPIC_API_KEY,
    /// OPENAI_API_KEY), never from flags, so they cannot show in `ps`.
    pub fn runner_settings(&self) -> Result<RunnerSettings, String> {
        for (name, base) in [
            ("ANTHROPIC_BASE_URL", &self.anthropic_base_url),
            ("OPENAI_BASE_URL", &self.openai_base_url),
        ] {
            match url::Url::parse(base) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                _ => {
                    return Err(format!(
                        "{name}={base:?} is not an http(s) URL; for example https://api.example.com"
                    ))
                }
            }
        }
        let key = |name: &str| std::env::var(name).ok().filter(|k| !k.trim().is_empty());
        Ok(RunnerSettings {
            claude: ClaudeSettings {
                bin: self.claude_bin.clone(),
                permission_mode: self.claude_permission_mode.clone(),
            },
            anthropic: AnthropicSettings {
                base_url: self.anthropic_base_url.clone(),
                api_key: key("ANTHROPIC_API_KEY"),
                model: self.anthropic_model.clone(),
            },
            openai: OpenAiSettings {
                base_url: self.openai_base_url.clone(),
                api_key: key("OPENAI_API_KEY"),
                model: self.openai_model.clone(),
            },
        })
    }

    /// The DuckDB file to open, with `~` expanded.
    pub fn db_path(&self) -> PathBuf {
        match &self.db_path {
            Some(p) => expand_tilde(&p.to_string_lossy()),
            None => home_dir().join(".claude/plugins/orchestr8/orchestr8-async.duckdb"),
        }
    }

    /// The agent search path, in order, with `~` expanded and empty entries dropped.
    pub fn agent_dirs(&self) -> Vec<PathBuf> {
        self.agents_dir
            .split(':')
            .filter(|s| !s.trim().is_empty())
            .map(|s| expand_tilde(s.trim()))
            .collect()
    }
}

fn home_dir() -> PathBuf {
    dirs::home_dir().unwrap_or_else(|| PathBuf::from("."))
}

/// Expands a leading `~` or `~/` to the home directory.
pub fn expand_tilde(p: &str) -> PathBuf {
    if p == "~" {
        home_dir()
    } else if let Some(rest) = p.strip_prefix("~/") {
        home_dir().join(rest)
    } else {
        PathBuf::from(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_and_search_path_splits() {
        let c = Config::try_parse_from([
            "x",
            "--workers",
            "8",
            "--agents-dir",
            "/a::~/b",
            "--db-path",
            "/tmp/x.duckdb",
        ])
        .unwrap();
        assert_eq!(c.workers, 8);
        assert_eq!(
            c.agent_dirs(),
            vec![PathBuf::from("/a"), home_dir().join("b")]
        );
        assert_eq!(c.db_path(), PathBuf::from("/tmp/x.duckdb"));
    }

    #[test]
    fn zero_workers_is_refused() {
        assert!(Config::try_parse_from(["x", "--workers", "0"]).is_err());
    }
}
