//! The command line: the settings ([`Config`]) plus the subcommands. Without a subcommand the
//! binary serves (a stdio session, or an engine in `api` mode; see [`crate::app`]); `engine`
//! runs an engine in the foreground. The other subcommands are for people: they talk to the
//! running engine over its socket, starting one like a session does when none runs
//! ([`conn::Conn`]), and never open the database themselves. Every command speaks through the
//! MCP tools' own dispatch, so it accepts and refuses exactly what an agent's call would.
//! Tables by default, `--json` for scripts.
//!
//! Exit status: 0 done (for `wait`, `submit --wait`, `logs --follow`: every task completed;
//! `wait --any`: one did); 1 an error (refusals included), or a task failed or was cancelled;
//! 2 a command line clap cannot parse; 124 `--timeout` passed; 130 Ctrl-C.

/// `println!` without the panic: when the reader goes away (`orchestr8-async-server tasks | head`)
/// the output just ends, and the command still closes what it opened.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod conn;
mod render;

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};

use crate::config::Config;
use conn::Conn;
use render::{age, s, short, table};

/// Exit status when `--timeout` passes first (as `timeout(1)`).
const TIMED_OUT: i32 = 124;

#[derive(Debug, Clone, Args)]
pub struct Output {
    /// Print JSON (the tools' answers) instead of tables
    #[arg(long)]
    pub json: bool,
}

/// The whole command line.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "orchestr8-async-server",
    version,
    about = "Durable background agents for Claude Code and any MCP client"
)]
pub struct Cli {
    #[command(flatten)]
    pub cfg: Config,
    /// Without a command: serve (a stdio MCP session, or HTTP in api mode).
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Run the engine in the foreground (for systemd, launchd, a container): it opens the
    /// database, runs the tasks and serves sessions until SIGTERM or `stop`; HTTP too with
    /// `--mode api engine` or `--mode both engine` (settings come before the command)
    Engine {
        /// Started by a session: log to <db>.log, exit once idle
        #[arg(long, hide = true)]
        detached: bool,
    },
    /// Started by an engine of a cluster: stops the engine's agent processes once the engine
    /// is gone, however it went
    #[command(hide = true)]
    Warden {
        /// The node whose processes to stop
        node: String,
        /// Stop them too when no renewal has come for this long
        #[arg(long)]
        stale_after_ms: u64,
    },
    /// Ask the running engine to stop: running tasks get the grace period, then go back to
    /// pending (without using an attempt) for the next engine
    Stop {
        /// Instead: stop once no task is pending or running and no webhook is owed
        #[arg(long)]
        when_idle: bool,
        #[command(flatten)]
        out: Output,
    },
    /// Counts by status, running tasks with agent and age, workers busy, owed webhooks
    Status(Output),
    /// List tasks, newest first
    Tasks {
        /// pending, running, completed, failed or cancelled
        #[arg(long)]
        status: Option<String>,
        /// Only this agent's tasks
        #[arg(long)]
        agent: Option<String>,
        /// Only this workflow's tasks
        #[arg(long)]
        workflow: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[arg(long, default_value_t = 0)]
        offset: i64,
        #[command(flatten)]
        out: Output,
    },
    /// One task: its fields, result or error, and last log lines
    Show {
        task_id: String,
        #[command(flatten)]
        out: Output,
    },
    /// A task's log lines; with --follow, new lines as they come until the task ends
    Logs {
        task_id: String,
        #[arg(long, short)]
        follow: bool,
        #[command(flatten)]
        out: Output,
    },
    /// Hand a task to an agent ("-" as instructions reads them from stdin); prints its id
    Submit {
        agent: String,
        instructions: String,
        /// Task name (default: the first line of the instructions)
        #[arg(long)]
        name: Option<String>,
        /// low, normal, high or critical
        #[arg(long)]
        priority: Option<String>,
        /// Makes repeating this command safe: the same key gives the same task
        #[arg(long)]
        idempotency_key: Option<String>,
        /// "worktree": run in a git worktree on a branch of its own; "none": in this directory
        #[arg(long)]
        isolation: Option<String>,
        /// With --isolation worktree: the commit, branch or tag to start from (default HEAD)
        #[arg(long)]
        base_ref: Option<String>,
        /// Wait until the task has finished and print its result
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this many seconds
        #[arg(long, default_value_t = 86_400)]
        timeout: u64,
        #[command(flatten)]
        out: Output,
    },
    /// The change an isolated task made: its diff against the commit it started from
    Diff {
        task_id: String,
        /// Only these files or folders (relative to the repository's top directory)
        paths: Vec<String>,
        /// Cut the diff after this many bytes
        #[arg(long, default_value_t = 4_194_304)]
        max_bytes: i64,
        #[command(flatten)]
        out: Output,
    },
    /// Cancel a pending or running task (and the tasks that depend on it)
    Cancel {
        task_id: String,
        #[command(flatten)]
        out: Output,
    },
    /// Wait until tasks have finished
    Wait {
        #[arg(required = true)]
        task_ids: Vec<String>,
        /// Return when any one has finished (default: all)
        #[arg(long)]
        any: bool,
        /// Give up after this many seconds
        #[arg(long, default_value_t = 86_400)]
        timeout: u64,
        #[command(flatten)]
        out: Output,
    },
    /// List workflows, newest first
    Workflows {
        /// draft, running, completed, failed or cancelled
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[command(flatten)]
        out: Output,
    },
    /// The agents tasks can be handed to
    Agents(Output),
    /// The dashboard's address in the browser (with the secret that signs the browser in);
    /// on a desktop it is opened too. The engine stays up while a page of it is open
    Dashboard {
        /// Only print the address
        #[arg(long)]
        no_open: bool,
        #[command(flatten)]
        out: Output,
    },
    /// Remove finished tasks (with their log lines and webhook deliveries) and ended workflows
    /// that ended longer ago than the retention period, now, and say what went; the engine also
    /// does this by itself when ORCHESTR8_RETENTION is set
    Prune {
        /// Instead of the retention period: remove what ended longer ago than this (90s, 12h,
        /// 30d, 2w)
        #[arg(long)]
        older_than: Option<String>,
        #[command(flatten)]
        out: Output,
    },
    /// Copy this engine's database (its DuckDB file, which no engine may be using) into an
    /// empty PostgreSQL database, to carry on as a cluster of engines pointed at it
    CopyToPostgres {
        /// postgres://user:password@host:5432/database (default: ORCHESTR8_DATABASE_URL, which
        /// keeps the password off the command line)
        url: Option<String>,
        #[command(flatten)]
        out: Output,
    },
    /// The background tasks submitted from a project that ended since it was last told (each
    /// is told once); the Claude Code plugin's hooks run it at the start of a session and at
    /// each prompt
    Ended {
        /// The project directory (default: $CLAUDE_PROJECT_DIR, else the current directory);
        /// tasks submitted from folders inside it count too
        #[arg(long)]
        project: Option<std::path::PathBuf>,
        /// As a hook: print nothing when nothing ended, and exit 0 even on errors (a hook
        /// must never get in the way of a prompt)
        #[arg(long)]
        hook: bool,
        #[command(flatten)]
        out: Output,
    },
}

/// Runs a command for people and returns the exit status.
pub async fn run(cfg: Config, cmd: Command) -> i32 {
    if let Command::Stop { when_idle, out } = &cmd {
        return match conn::stop(&cfg, !*when_idle, out.json).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                1
            }
        };
    }
    if let Command::CopyToPostgres { url, out } = &cmd {
        return match copy_to_postgres(&cfg, url.as_deref(), out.json).await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("error: {e:#}");
                1
            }
        };
    }
    // A hook's failure is said on stderr, which Claude Code shows the user, never as an exit
    // status that could block their prompt.
    let as_hook = matches!(cmd, Command::Ended { hook: true, .. });
    let failed = if as_hook { 0 } else { 1 };
    let mut conn = match Conn::open(&cfg).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return failed;
        }
    };
    let result = tokio::select! {
        r = execute(&cfg, cmd, &mut conn) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            Progress::clear();
            eprintln!("error: {e:#}");
            if as_hook {
                0
            } else if e.to_string() == "interrupted" {
                130
            } else {
                1
            }
        }
    };
    conn.close().await;
    code
}

/// The copy of the DuckDB file into PostgreSQL; it needs no engine (and no engine may run).
async fn copy_to_postgres(cfg: &Config, url: Option<&str>, json: bool) -> anyhow::Result<()> {
    let url = url
        .or(cfg.database_url.as_deref())
        .filter(|u| !u.trim().is_empty())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "say where to copy to: copy-to-postgres postgres://user:password@host:5432/database, \
                 or set ORCHESTR8_DATABASE_URL"
            )
        })?;
    let copied = crate::copy::to_postgres(cfg, url).await?;
    if json {
        print_json(&serde_json::to_value(&copied)?);
    } else {
        outln!(
            "copied {} tasks ({} log lines), {} workflows and {} webhook events ({} deliveries) \
             from {}; point the engines at the database with ORCHESTR8_DATABASE_URL",
            copied.tasks,
            copied.log_lines,
            copied.workflows,
            copied.webhook_events,
            copied.webhook_deliveries,
            cfg.db_path().display()
        );
    }
    Ok(())
}

fn print_json(v: &Value) {
    outln!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

async fn execute(cfg: &Config, cmd: Command, conn: &mut Conn) -> anyhow::Result<i32> {
    let now = chrono::Utc::now();
    match cmd {
        // Run before a connection is opened (`main`, `run`).
        Command::Engine { .. }
        | Command::Stop { .. }
        | Command::Warden { .. }
        | Command::CopyToPostgres { .. } => {
            anyhow::bail!("this command does not talk to an engine")
        }
        Command::Status(out) => {
            let o = conn.overview().await?;
            if out.json {
                let mut v = serde_json::to_value(&o)?;
                v["engine_running"] = json!(true);
                v["engine_started"] = json!(conn.started_engine());
                print_json(&v);
                return Ok(0);
            }
            let started = if conn.started_engine() {
                " (started now: none was running)"
            } else {
                ""
            };
            outln!(
                "engine    pid {} on {}, version {}{started}",
                o.pid,
                o.db_path,
                o.version
            );
            outln!("sessions  {} attached", o.sessions);
            if !o.settings_differ.is_empty() {
                outln!(
                    "settings  sessions were started with other values of: {} (the engine keeps its own; `stop` it to restart with new ones)",
                    o.settings_differ.join(", ")
                );
            }
            if o.retiring {
                outln!("retiring  stops once no task is pending or running (a newer version takes over)");
            }
            let counts: Vec<String> = ["pending", "running", "completed", "failed", "cancelled"]
                .iter()
                .map(|k| format!("{k} {}", o.counts.get(*k).copied().unwrap_or(0)))
                .collect();
            outln!("tasks     {}", counts.join(" · "));
            outln!("workers   {} of {} busy", o.workers_busy, o.workers);
            outln!("webhooks  {} owed", o.webhooks_owed);
            if !o.running.is_empty() {
                let rows: Vec<Vec<String>> = o
                    .running
                    .iter()
                    .map(|t| {
                        let v = serde_json::to_value(t).unwrap_or_default();
                        vec![
                            s(&v, "task_id"),
                            s(&v, "agent_name"),
                            age(&v, "started_at", now),
                            s(&v, "name"),
                        ]
                    })
                    .collect();
                outln!("\n{}", table(&["RUNNING", "AGENT", "AGE", "NAME"], &rows));
            }
            Ok(0)
        }
        Command::Tasks {
            status,
            agent,
            workflow,
            limit,
            offset,
            out,
        } => {
            let v = conn
                .tool(
                    cfg,
                    "list_tasks",
                    json!({"status": status, "agent_name": agent,
                    "workflow_id": workflow, "limit": limit, "offset": offset}),
                )
                .await?;
            if out.json {
                print_json(&v);
                return Ok(0);
            }
            let tasks = v["tasks"].as_array().cloned().unwrap_or_default();
            let rows: Vec<Vec<String>> = tasks
                .iter()
                .map(|t| {
                    vec![
                        s(t, "task_id"),
                        s(t, "status"),
                        s(t, "agent_name"),
                        age(t, "created_at", now),
                        s(t, "name"),
                    ]
                })
                .collect();
            outln!(
                "{}",
                table(&["TASK_ID", "STATUS", "AGENT", "AGE", "NAME"], &rows)
            );
            outln!("({} of {} tasks)", tasks.len(), v["total"]);
            Ok(0)
        }
        Command::Prune { older_than, out } => {
            let r = conn.prune(older_than.as_deref()).await?;
            if out.json {
                print_json(&serde_json::to_value(&r)?);
            } else {
                outln!(
                    "removed {} tasks ({} workflows), {} log lines and {} webhook deliveries that ended before {}",
                    r.tasks,
                    r.workflows,
                    r.log_lines,
                    r.webhook_deliveries,
                    r.ended_before
                );
            }
            Ok(0)
        }
        Command::Dashboard { no_open, out } => {
            let url = conn.dashboard_url().await?;
            let opened = !no_open && open_in_browser(&url);
            if out.json {
                print_json(&json!({ "url": url, "opened": opened }));
            } else {
                outln!("{url}");
                if !opened {
                    use std::io::Write as _;
                    let _ = writeln!(
                        std::io::stderr(),
                        "open this address in a browser on this machine: it signs the browser in (the engine makes a new one each time it starts)"
                    );
                }
            }
            Ok(0)
        }
        Command::Show { task_id, out } => {
            let v = conn
                .tool(cfg, "task_status", json!({ "task_id": task_id }))
                .await?;
            if out.json {
                print_json(&v);
                return Ok(0);
            }
            print_task(&v);
            if let Some(logs) = v["logs"].as_array().filter(|l| !l.is_empty()) {
                outln!("\nlast log lines:");
                for l in logs {
                    print_log(l);
                }
            }
            Ok(0)
        }
        Command::Logs {
            task_id,
            follow,
            out,
        } => logs(cfg, conn, &task_id, follow, out.json).await,
        Command::Submit {
            agent,
            instructions,
            name,
            priority,
            idempotency_key,
            isolation,
            base_ref,
            wait,
            timeout,
            out,
        } => {
            let instructions = if instructions == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                instructions
            };
            let name = name.unwrap_or_else(|| short(instructions.trim(), 60));
            let v = conn
                .tool(
                    cfg,
                    "task_async",
                    json!({"name": name, "agent_name": agent,
                    "agent_instructions": instructions, "priority": priority,
                    "idempotency_key": idempotency_key, "isolation": isolation,
                    "base_ref": base_ref}),
                )
                .await?;
            let id = s(&v, "task_id");
            if !wait {
                if out.json {
                    print_json(&v);
                } else {
                    outln!("{id}");
                }
                return Ok(0);
            }
            eprintln!("submitted {id}");
            wait_cmd(cfg, conn, vec![id], false, timeout, out.json, true).await
        }
        Command::Diff {
            task_id,
            paths,
            max_bytes,
            out,
        } => {
            let v = conn
                .tool(
                    cfg,
                    "task_diff",
                    json!({"task_id": task_id, "paths": paths, "max_bytes": max_bytes}),
                )
                .await?;
            if out.json {
                print_json(&v);
            } else {
                use std::io::Write as _;
                let _ = write!(std::io::stdout(), "{}", s(&v, "diff"));
            }
            Ok(0)
        }
        Command::Cancel { task_id, out } => {
            let v = conn
                .tool(cfg, "task_cancel", json!({ "task_id": task_id }))
                .await?;
            if out.json {
                print_json(&v);
            } else {
                outln!("{} {}", s(&v, "status"), s(&v, "task_id"));
            }
            Ok(0)
        }
        Command::Wait {
            task_ids,
            any,
            timeout,
            out,
        } => wait_cmd(cfg, conn, task_ids, any, timeout, out.json, false).await,
        Command::Workflows { status, limit, out } => {
            let v = conn
                .tool(
                    cfg,
                    "list_workflows",
                    json!({"status": status, "limit": limit}),
                )
                .await?;
            if out.json {
                print_json(&v);
                return Ok(0);
            }
            let wfs = v["workflows"].as_array().cloned().unwrap_or_default();
            let rows: Vec<Vec<String>> = wfs
                .iter()
                .map(|w| {
                    vec![
                        s(w, "workflow_id"),
                        s(w, "status"),
                        format!("{}%", w["progress"]),
                        format!("{}/{}", w["tasks_completed"], w["tasks_total"]),
                        age(w, "created_at", now),
                        s(w, "name"),
                    ]
                })
                .collect();
            outln!(
                "{}",
                table(
                    &["WORKFLOW_ID", "STATUS", "PROGRESS", "TASKS", "AGE", "NAME"],
                    &rows
                )
            );
            outln!("({} of {} workflows)", wfs.len(), v["total"]);
            Ok(0)
        }
        Command::Ended { project, hook, out } => {
            let dir = project
                .or_else(|| std::env::var_os("CLAUDE_PROJECT_DIR").map(Into::into))
                .map_or_else(std::env::current_dir, Ok)?;
            // Sessions record their directory as the system reports it, symlinks resolved.
            let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
            let report = conn.ended(&dir.display().to_string()).await?;
            if out.json {
                print_json(&serde_json::to_value(&report)?);
            } else if !report.tasks.is_empty() {
                outln!("{}", render::ended(&report));
            } else if !hook {
                outln!(
                    "no task submitted from {} has ended since it was last told",
                    report.project
                );
            }
            Ok(0)
        }
        Command::Agents(out) => {
            let v = conn.tool(cfg, "list_agents", json!({})).await?;
            if out.json {
                print_json(&v);
                return Ok(0);
            }
            let rows: Vec<Vec<String>> = v["agents"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|a| {
                    vec![
                        s(a, "name"),
                        s(a, "runner"),
                        s(a, "model"),
                        short(&s(a, "description"), 80),
                    ]
                })
                .collect();
            outln!(
                "{}",
                table(&["NAME", "RUNNER", "MODEL", "DESCRIPTION"], &rows)
            );
            Ok(0)
        }
    }
}

fn print_task(v: &Value) {
    for f in [
        "task_id",
        "name",
        "agent_name",
        "status",
        "priority",
        "attempt",
        "created_at",
        "started_at",
        "completed_at",
        "workflow_id",
        "phase_id",
    ] {
        if !v[f].is_null() {
            outln!("{f:<13} {}", s(v, f));
        }
    }
    if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
        outln!("{:<13} {u}", "usage");
    }
    if let Some(w) = v.get("workspace").filter(|w| !w.is_null()) {
        let branch = w["branch"].as_str().unwrap_or("(none: no changes)");
        outln!(
            "{:<13} {branch} in {} ({} file(s), +{} -{})",
            "branch",
            s(w, "repository"),
            w["files_changed"],
            w["insertions"],
            w["deletions"]
        );
    }
    if !v["error"].is_null() {
        outln!("{:<13} {}", "error", s(v, "error"));
    }
    if !v["result"].is_null() {
        outln!("\n{}", s(v, "result").trim_end());
    }
}

fn print_log(l: &Value) {
    outln!(
        "{:>5} {} {:<5} {}",
        l["seq"],
        s(l, "ts"),
        s(l, "level"),
        s(l, "message")
    );
}

/// Whether every task in a task_wait answer completed.
fn all_completed(tasks: &[Value]) -> bool {
    tasks.iter().all(|t| t["status"] == "completed")
}

async fn wait_cmd(
    cfg: &Config,
    conn: &mut Conn,
    ids: Vec<String>,
    any: bool,
    timeout: u64,
    as_json: bool,
    with_result: bool,
) -> anyhow::Result<i32> {
    let started = Instant::now();
    let limit = Duration::from_secs(timeout);
    let mut progress = Progress::new();
    loop {
        let v = conn
            .tool(
                cfg,
                "task_wait",
                json!({"task_ids": ids,
                "mode": if any { "any" } else { "all" }, "timeout_seconds": 1}),
            )
            .await?;
        let tasks = v["tasks"].as_array().cloned().unwrap_or_default();
        let timed_out = v["timed_out"] == true;
        if !timed_out || started.elapsed() >= limit {
            Progress::clear();
            if as_json {
                print_json(&json!({ "tasks": tasks, "timed_out": timed_out }));
            } else if with_result && tasks.len() == 1 {
                print_task(&tasks[0]);
            } else {
                let rows: Vec<Vec<String>> = tasks
                    .iter()
                    .map(|t| {
                        vec![
                            s(t, "task_id"),
                            s(t, "status"),
                            short(&s(t, "error"), 60),
                            s(t, "name"),
                        ]
                    })
                    .collect();
                outln!("{}", table(&["TASK_ID", "STATUS", "ERROR", "NAME"], &rows));
            }
            let finished_ok = if any {
                tasks.iter().any(|t| t["status"] == "completed")
            } else {
                all_completed(&tasks)
            };
            return Ok(if timed_out {
                TIMED_OUT
            } else if finished_ok {
                0
            } else {
                1
            });
        }
        let count = |st: &str| tasks.iter().filter(|t| t["status"] == st).count();
        let done = tasks.len() - count("pending") - count("running");
        progress.show(&format!(
            "waiting {}: {done}/{} finished, {} running, {} pending",
            render::duration(started.elapsed().as_secs() as i64),
            tasks.len(),
            count("running"),
            count("pending")
        ));
    }
}

async fn logs(
    cfg: &Config,
    conn: &mut Conn,
    id: &str,
    follow: bool,
    as_json: bool,
) -> anyhow::Result<i32> {
    let mut after = 0i64;
    let started = Instant::now();
    let mut progress = Progress::new();
    loop {
        // Read the status before the lines, so that lines written before the end are printed.
        let status = if follow {
            let t = conn
                .tool(cfg, "task_status", json!({ "task_id": id }))
                .await?;
            Some(s(&t, "status"))
        } else {
            None
        };
        loop {
            let v = conn
                .tool(
                    cfg,
                    "task_logs",
                    json!({"task_id": id, "after_seq": after, "limit": 1000}),
                )
                .await?;
            let lines = v["logs"].as_array().cloned().unwrap_or_default();
            if lines.is_empty() {
                break;
            }
            Progress::clear();
            for l in &lines {
                after = after.max(l["seq"].as_i64().unwrap_or(after));
                if as_json {
                    outln!("{l}");
                } else {
                    print_log(l);
                }
            }
        }
        let Some(status) = status else {
            return Ok(0);
        };
        if matches!(status.as_str(), "completed" | "failed" | "cancelled") {
            Progress::clear();
            eprintln!("task {status}");
            return Ok(if status == "completed" { 0 } else { 1 });
        }
        progress.show(&format!(
            "following {id}: {status}, {}",
            render::duration(started.elapsed().as_secs() as i64)
        ));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A progress line on stderr: redrawn in place on a terminal, a line every 10 s otherwise.
struct Progress {
    last: Option<Instant>,
}

impl Progress {
    fn new() -> Self {
        Progress { last: None }
    }

    fn show(&mut self, msg: &str) {
        if std::io::stderr().is_terminal() {
            eprint!("\r\x1b[2K{msg}");
        } else if self
            .last
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
        {
            eprintln!("{msg}");
            self.last = Some(Instant::now());
        }
    }

    fn clear() {
        if std::io::stderr().is_terminal() {
            eprint!("\r\x1b[2K");
        }
    }
}

/// Opens `url` in the desktop's browser when there is a desktop; whether it was handed to one.
fn open_in_browser(url: &str) -> bool {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else if std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some()
    {
        "xdg-open"
    } else {
        return false;
    };
    std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .is_ok()
}
