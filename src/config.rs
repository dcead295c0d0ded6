//! Configuration: every setting, as an environment variable and as a flag of
//! the same meaning (flags win, which is clap's order of precedence).

use std::path::PathBuf;

use clap::ValueEnum;

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

/// The settings. Parsed as part of the command line (see `cli::Cli`), which adds the
/// subcommands; the settings themselves know nothing of commands.
#[derive(Debug, Clone, clap::Args)]
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

    /// When the engine is asked to stop (SIGTERM, the stop command, the idle exit): how long
    /// running tasks may finish before they are stopped
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

    /// A detached engine (the one a session or CLI command starts) stays up while sessions are
    /// attached, tasks are pending or running, or webhooks are owed, then exits once idle this long
    #[arg(long, env = "ORCHESTR8_IDLE_EXIT_SECONDS", default_value_t = 30)]
    pub idle_exit_seconds: u64,

    /// A session tells its MCP client when a task or workflow it handed off ends, as a Claude
    /// Code channel event (`notifications/claude/channel`); `false` turns that off
    #[arg(long, env = "ORCHESTR8_CHANNEL", default_value_t = true, action = clap::ArgAction::Set)]
    pub channel: bool,

    /// Keep finished tasks (with their log lines and webhook deliveries) and ended workflows this
    /// long after they end, then remove them in the background: a whole number and a unit —
    /// 90s, 12h, 30d, 2w. Default: forever (nothing is ever removed)
    #[arg(long, env = "ORCHESTR8_RETENTION", default_value = "forever",
          value_parser = crate::engine::pruner::parse_period)]
    pub retention: crate::engine::pruner::Retention,

    /// The write journal's bound in bytes (`<db>.journal`): past it, new writes wait until the
    /// database has taken in what the journal holds; also the most a restart after a crash
    /// replays
    #[arg(long, env = "ORCHESTR8_JOURNAL_MAX_BYTES", default_value_t = crate::store::DEFAULT_JOURNAL_MAX_BYTES,
          value_parser = clap::value_parser!(u64).range(65_536..))]
    pub journal_max_bytes: u64,

    /// Memory the database may use for its cache and its queries, in MiB; past it the least
    /// used part of the cache is let go and a large query spills to `<db>.tmp`
    #[arg(long, env = "ORCHESTR8_DB_MEMORY_MIB", default_value_t = crate::store::DEFAULT_MEMORY_MIB,
          value_parser = clap::value_parser!(u32).range(32..))]
    pub db_memory_mib: u32,

    /// A PostgreSQL database to share with other engines, as one cluster
    /// (`postgres://user:password@host:5432/database`); unset: the DuckDB file of this machine
    #[arg(long, env = "ORCHESTR8_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// The queues this engine takes tasks from, comma-separated (with a database URL)
    #[arg(long, env = "ORCHESTR8_QUEUES")]
    pub queues: Option<String>,

    /// Seconds a cluster node stays alive to the others without renewing its lease; a node
    /// silent for longer is given up and its running tasks run again elsewhere
    #[arg(long, env = "ORCHESTR8_NODE_LEASE_SECONDS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub node_lease_seconds: u64,

    /// How often a cluster node with free workers looks for tasks submitted on other nodes,
    /// in milliseconds
    #[arg(long, env = "ORCHESTR8_CLAIM_POLL_MS", default_value_t = 250,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub claim_poll_ms: u64,

    /// tracing filter; logs go to stderr only (stdout belongs to MCP). Default: info for the
    /// server, warn for CLI commands
    #[arg(long, env = "ORCHESTR8_LOG", global = true)]
    pub log: Option<String>,
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

    /// These settings as command-line flags (secrets excluded: see [`Self::secret_env`]), so
    /// that the engine a session starts runs with exactly the session's settings, whether they
    /// came from flags or the environment. The database path is made absolute.
    pub fn to_args(&self) -> Vec<String> {
        let mode = match self.mode {
            Mode::Mcp => "mcp",
            Mode::Api => "api",
            Mode::Both => "both",
        };
        let mut a: Vec<String> = Vec::new();
        let mut push = |k: &str, v: String| {
            a.push(format!("--{k}"));
            a.push(v);
        };
        push("mode", mode.into());
        push("db-path", self.db_path().display().to_string());
        push("workers", self.workers.to_string());
        push("host", self.host.clone());
        push("port", self.port.to_string());
        push("agents-dir", self.agents_dir.clone());
        push("default-runner", self.default_runner.clone());
        push("claude-bin", self.claude_bin.clone());
        if let Some(m) = &self.claude_permission_mode {
            push("claude-permission-mode", m.clone());
        }
        push("anthropic-base-url", self.anthropic_base_url.clone());
        push("anthropic-model", self.anthropic_model.clone());
        push("openai-base-url", self.openai_base_url.clone());
        if let Some(m) = &self.openai_model {
            push("openai-model", m.clone());
        }
        if let Some(c) = &self.cors_origins {
            push("cors-origins", c.clone());
        }
        push(
            "retry-backoff-base-ms",
            self.retry_backoff_base_ms.to_string(),
        );
        push(
            "shutdown-grace-seconds",
            self.shutdown_grace_seconds.to_string(),
        );
        push(
            "webhook-max-attempts",
            self.webhook_max_attempts.to_string(),
        );
        push(
            "webhook-backoff-base-ms",
            self.webhook_backoff_base_ms.to_string(),
        );
        push(
            "webhook-backoff-max-ms",
            self.webhook_backoff_max_ms.to_string(),
        );
        push("webhook-timeout-ms", self.webhook_timeout_ms.to_string());
        push("idle-exit-seconds", self.idle_exit_seconds.to_string());
        push("retention", self.retention.to_string());
        push("journal-max-bytes", self.journal_max_bytes.to_string());
        push("db-memory-mib", self.db_memory_mib.to_string());
        if let Some(q) = &self.queues {
            push("queues", q.clone());
        }
        push("node-lease-seconds", self.node_lease_seconds.to_string());
        push("claim-poll-ms", self.claim_poll_ms.to_string());
        if let Some(l) = &self.log {
            push("log", l.clone());
        }
        a
    }

    /// The secret settings as environment variables for a process this one starts (never as
    /// flags: a command line is visible to every user in `ps`). Unset ones are removed.
    pub fn secret_env(&self) -> [(&'static str, Option<String>); 3] {
        [
            ("ORCHESTR8_API_TOKEN", self.api_token.clone()),
            ("ORCHESTR8_WEBHOOK_SECRET", self.webhook_secret.clone()),
            // A URL may carry a password.
            ("ORCHESTR8_DATABASE_URL", self.database_url.clone()),
        ]
    }

    /// The DuckDB file to open, with `~` expanded, made absolute (the engine a session starts
    /// runs elsewhere, and every process must name the file, and its socket, alike).
    pub fn db_path(&self) -> PathBuf {
        let p = match &self.db_path {
            Some(p) => expand_tilde(&p.to_string_lossy()),
            None => home_dir().join(".claude/plugins/orchestr8/orchestr8-async.duckdb"),
        };
        std::path::absolute(&p).unwrap_or(p)
    }

    /// The settings that shape an engine (rather than one session), each as a short digest of
    /// its value: a session compares its own with the running engine's, to say plainly which
    /// ones the engine does not share. Secrets are only ever compared as digests.
    pub fn engine_fingerprint(&self) -> std::collections::BTreeMap<String, String> {
        use sha2::Digest;
        let digest = |v: &str| {
            let h = sha2::Sha256::digest(v.as_bytes());
            h.iter()
                .take(6)
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        let env = |k: &str| std::env::var(k).unwrap_or_default();
        let http = matches!(self.mode, Mode::Api | Mode::Both);
        let values: [(&str, String); 27] = [
            ("ORCHESTR8_WORKERS", self.workers.to_string()),
            (
                "ORCHESTR8_WEBHOOK_SECRET",
                self.webhook_secret.clone().unwrap_or_default(),
            ),
            (
                "ORCHESTR8_API_TOKEN",
                self.api_token.clone().unwrap_or_default(),
            ),
            ("ORCHESTR8_DEFAULT_RUNNER", self.default_runner.clone()),
            ("ORCHESTR8_CLAUDE_BIN", self.claude_bin.clone()),
            (
                "ORCHESTR8_CLAUDE_PERMISSION_MODE",
                self.claude_permission_mode.clone().unwrap_or_default(),
            ),
            ("ORCHESTR8_ANTHROPIC_MODEL", self.anthropic_model.clone()),
            (
                "ORCHESTR8_OPENAI_MODEL",
                self.openai_model.clone().unwrap_or_default(),
            ),
            (
                "ORCHESTR8_CORS_ORIGINS",
                self.cors_origins.clone().unwrap_or_default(),
            ),
            (
                "ORCHESTR8_WEBHOOK_BACKOFF_BASE_MS",
                self.webhook_backoff_base_ms.to_string(),
            ),
            (
                "ORCHESTR8_WEBHOOK_BACKOFF_MAX_MS",
                self.webhook_backoff_max_ms.to_string(),
            ),
            (
                "ORCHESTR8_RETRY_BACKOFF_BASE_MS",
                self.retry_backoff_base_ms.to_string(),
            ),
            (
                "ORCHESTR8_SHUTDOWN_GRACE_SECONDS",
                self.shutdown_grace_seconds.to_string(),
            ),
            (
                "ORCHESTR8_WEBHOOK_MAX_ATTEMPTS",
                self.webhook_max_attempts.to_string(),
            ),
            (
                "ORCHESTR8_WEBHOOK_TIMEOUT_MS",
                self.webhook_timeout_ms.to_string(),
            ),
            ("ORCHESTR8_RETENTION", self.retention.to_string()),
            (
                "ORCHESTR8_JOURNAL_MAX_BYTES",
                self.journal_max_bytes.to_string(),
            ),
            ("ORCHESTR8_DB_MEMORY_MIB", self.db_memory_mib.to_string()),
            (
                "ORCHESTR8_DATABASE_URL",
                self.database_url.clone().unwrap_or_default(),
            ),
            ("ORCHESTR8_QUEUES", self.queues.clone().unwrap_or_default()),
            ("ANTHROPIC_API_KEY", env("ANTHROPIC_API_KEY")),
            ("ANTHROPIC_BASE_URL", self.anthropic_base_url.clone()),
            ("OPENAI_API_KEY", env("OPENAI_API_KEY")),
            ("OPENAI_BASE_URL", self.openai_base_url.clone()),
            // HTTP is served by the engine: a `both` session attached to an engine started
            // without HTTP gets none.
            ("HTTP (ORCHESTR8_MODE both/api)", http.to_string()),
            (
                "ORCHESTR8_HOST",
                if http {
                    self.host.clone()
                } else {
                    String::new()
                },
            ),
            (
                "ORCHESTR8_PORT",
                if http {
                    self.port.to_string()
                } else {
                    String::new()
                },
            ),
        ];
        values
            .into_iter()
            .map(|(k, v)| (k.to_string(), digest(&v)))
            .collect()
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
    use clap::Parser;

    #[derive(Parser)]
    struct Only {
        #[command(flatten)]
        cfg: Config,
    }

    #[test]
    fn flags_parse_and_search_path_splits() {
        let c = Only::try_parse_from([
            "x",
            "--workers",
            "8",
            "--agents-dir",
            "/a::~/b",
            "--db-path",
            "/tmp/x.duckdb",
        ])
        .unwrap()
        .cfg;
        assert_eq!(c.workers, 8);
        assert_eq!(
            c.agent_dirs(),
            vec![PathBuf::from("/a"), home_dir().join("b")]
        );
        assert_eq!(c.db_path(), PathBuf::from("/tmp/x.duckdb"));
    }

    /// Every setting survives the trip through [`Config::to_args`] (and the secrets through
    /// [`Config::secret_env`]): the engine a session starts has the session's settings.
    #[test]
    fn settings_survive_the_trip_to_an_engine() {
        let c = Only::try_parse_from([
            "x",
            "--mode=both",
            "--db-path=/tmp/o8/x.duckdb",
            "--workers=7",
            "--host=::1",
            "--port=4000",
            "--agents-dir=./a:/b",
            "--default-runner=command",
            "--claude-bin=/opt/claude",
            "--claude-permission-mode=plan",
            "--anthropic-base-url=http://a.example",
            "--anthropic-model=m1",
            "--openai-base-url=http://o.example/v1",
            "--openai-model=m2",
            "--api-token=tok",
            "--cors-origins=http://x.example",
            "--webhook-secret=whsec_AAAA",
            "--retry-backoff-base-ms=11",
            "--shutdown-grace-seconds=12",
            "--webhook-max-attempts=13",
            "--webhook-backoff-base-ms=14",
            "--webhook-backoff-max-ms=15",
            "--webhook-timeout-ms=16",
            "--idle-exit-seconds=17",
            "--database-url=postgres://u:pw@db.example/o8",
            "--queues=gpu,default",
            "--node-lease-seconds=7",
            "--claim-poll-ms=33",
            "--log=debug",
        ])
        .unwrap()
        .cfg;
        let mut args = vec!["x".to_string()];
        args.extend(c.to_args());
        // A command line is visible to every user: secrets never travel on it.
        assert!(!args
            .iter()
            .any(|a| a.contains("tok") || a.contains("whsec") || a.contains("pw@")));
        for (k, v) in c.secret_env() {
            let flag = k
                .trim_start_matches("ORCHESTR8_")
                .to_lowercase()
                .replace('_', "-");
            args.push(format!("--{flag}={}", v.unwrap()));
        }
        let back = Only::try_parse_from(args).unwrap().cfg;
        assert_eq!(format!("{back:?}"), format!("{c:?}"));
    }

    #[test]
    fn zero_workers_is_refused() {
        assert!(Only::try_parse_from(["x", "--workers", "0"]).is_err());
    }
}
