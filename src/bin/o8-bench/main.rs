//! o8-bench: measures the real release binary over stdio with a minimal JSON-RPC client (so
//! client overhead does not hide server cost), with reference points from the same run.
//!
//!   cargo run --release --bin o8-bench            (--help for the knobs)
//!
//! Prints a table and one JSON line.

mod client;
mod cluster;
mod dashboard;
mod isolation;
mod reference;
mod stored;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::{json, Map, Value};
use tokio::process::Command;

use client::{structured, Client};

#[derive(Parser, Debug)]
#[command(
    about = "Benchmarks orchestr8-async-server against its speed and memory targets, with reference points measured in the same run"
)]
struct Args {
    /// Sequential task_async calls for the round-trip latency.
    #[arg(long, default_value_t = 2000)]
    calls: usize,
    /// Trivial tasks for the end-to-end throughput.
    #[arg(long, default_value_t = 10_000)]
    tasks: usize,
    /// Workers of the server under test.
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Tasks measured one at a time for the dispatch latency.
    #[arg(long, default_value_t = 300)]
    dispatches: usize,
    /// Rounds of every dashboard read, with the stored tasks.
    #[arg(long, default_value_t = 30)]
    dashboard_rounds: usize,
    /// Finished tasks stored for the status/list/start-up figures.
    #[arg(long, default_value_t = 1_000_000)]
    stored: usize,
    /// Keep the stored tasks' database in this folder and reuse it in later runs with the same
    /// --stored (filling 10,000,000 takes minutes); by default it is filled in a temporary folder.
    #[arg(long)]
    stored_dir: Option<PathBuf>,
    /// Pending tasks for the memory figure.
    #[arg(long, default_value_t = 100_000)]
    pending: usize,
    /// Editing tasks run one at a time, in the checkout and in a worktree, for the isolation cost.
    #[arg(long, default_value_t = 100)]
    isolated: usize,
    /// Skip the MCP Python SDK reference (it needs PyPI the first time).
    #[arg(long)]
    no_python: bool,
    /// A PostgreSQL database for the cluster figures (1, 2 and 3 engines on it); without one
    /// they are skipped. Its tables go into the schema `orchestr8`.
    #[arg(long, env = "O8_BENCH_DATABASE_URL")]
    database_url: Option<String>,
    /// Trivial tasks for each cluster throughput round (and the single engine's, alike).
    #[arg(long, default_value_t = 2000)]
    cluster_tasks: usize,
    /// Workers of each cluster node (and of the single engine compared with them).
    #[arg(long, default_value_t = 4)]
    cluster_workers: usize,
    /// The nodes' lease, in seconds, for the death-to-rerun figure.
    #[arg(long, default_value_t = 15)]
    lease_seconds: u64,
    /// Nodes killed with -9 for the death-to-rerun figure.
    #[arg(long, default_value_t = 3)]
    rescues: usize,
}

/// Median and 99th percentile of a sample, in ms.
#[derive(Clone, Copy)]
pub(crate) struct Stat {
    pub(crate) p50: f64,
    pub(crate) p99: f64,
}

impl Stat {
    pub(crate) fn of(mut v: Vec<f64>) -> Stat {
        v.sort_by(f64::total_cmp);
        let at = |p: f64| {
            if v.is_empty() {
                f64::NAN
            } else {
                v[((v.len() as f64 - 1.0) * p).round() as usize]
            }
        };
        Stat {
            p50: at(0.5),
            p99: at(0.99),
        }
    }
}

/// The agents the benchmark submits to.
fn write_agents(dir: &Path) -> Result<()> {
    let agents = dir.join("agents");
    std::fs::create_dir_all(&agents)?;
    for (name, cmd) in [
        ("noop", r#"["true"]"#),
        ("parked", r#"["true"]"#),
        ("stamp", r#"["date", "+%s%N"]"#),
    ] {
        std::fs::write(
            agents.join(format!("{name}.md")),
            format!("---\nname: {name}\nrunner: command\ncommand: {cmd}\n---\n"),
        )?;
    }
    Ok(())
}

fn server_cmd(bin: &Path, dir: &Path, workers: usize) -> Command {
    let mut cmd = Command::new(bin);
    cmd.current_dir(dir)
        .env("ORCHESTR8_DB_PATH", dir.join("bench.duckdb"))
        .env("ORCHESTR8_AGENTS_DIR", dir.join("agents"))
        .env("ORCHESTR8_WORKERS", workers.to_string())
        // Each run stops its engine with the `stop` command; nothing to linger for.
        .env("ORCHESTR8_IDLE_EXIT_SECONDS", "0")
        .env(
            "ORCHESTR8_LOG",
            std::env::var("ORCHESTR8_LOG").unwrap_or_else(|_| "warn".into()),
        );
    cmd
}

/// Every call is measured through a session (the process an MCP client starts), which forwards
/// it to the detached engine: the pid that holds the tasks is the engine's, read from `status`.
async fn engine_pid(bin: &Path, dir: &Path) -> Result<u32> {
    let out = server_cmd(bin, dir, 1)
        .args(["status", "--json"])
        .stdin(std::process::Stdio::null())
        .output()
        .await?;
    let v: Value = serde_json::from_slice(&out.stdout).context("status --json")?;
    v["pid"]
        .as_u64()
        .map(|p| p as u32)
        .context("no engine pid in status")
}

/// Stops the engine of `dir` and waits until it is gone (so the next start measures a cold
/// engine).
async fn stop_engine(bin: &Path, dir: &Path) -> Result<()> {
    stop_with(server_cmd(bin, dir, 1)).await
}

/// The `stop` command with the settings of `cmd` (an engine is reached with its own).
async fn stop_with(mut cmd: Command) -> Result<()> {
    let status = cmd
        .arg("stop")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status()
        .await?;
    if !status.success() {
        bail!("stop failed: {status}");
    }
    Ok(())
}

/// Ends a measured session and its engine.
async fn finish(c: Client, bin: &Path, dir: &Path) -> Result<()> {
    c.stop().await?;
    stop_engine(bin, dir).await
}

fn server_bin() -> Result<PathBuf> {
    let bin = std::env::current_exe()?.with_file_name("orchestr8-async-server");
    if !bin.exists() {
        bail!(
            "{} not found: build it with cargo build --release",
            bin.display()
        );
    }
    Ok(bin)
}

/// Resident set size and its peak, in MiB, from /proc.
fn rss_mib(pid: Option<u32>) -> (f64, f64) {
    let status = pid
        .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn parked_at() -> String {
    (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339()
}

/// Sends `n` task_async calls with at most 1,000 unanswered at a time; returns the ids.
async fn submit_many(
    c: &mut Client,
    n: usize,
    agent: &str,
    run_at: Option<&str>,
) -> Result<Vec<String>> {
    let mut ids = Vec::with_capacity(n);
    let mut window = std::collections::VecDeque::new();
    for i in 0..n {
        let mut args = json!({"name": format!("{agent}-{i}"), "agent_name": agent,
                              "agent_instructions": "x"});
        if let Some(at) = run_at {
            args["run_at"] = json!(at);
        }
        window.push_back(c.send_tool("task_async", args).await?);
        if window.len() >= 1000 {
            if let Some(rx) = window.pop_front() {
                ids.push(id_of(&structured(rx.await?)?));
            }
        }
    }
    for rx in window {
        ids.push(id_of(&structured(rx.await?)?));
    }
    Ok(ids)
}

pub(crate) fn id_of(v: &Value) -> String {
    v["task_id"].as_str().unwrap_or_default().to_string()
}

async fn wait_all(c: &mut Client, ids: &[String]) -> Result<()> {
    for chunk in ids.chunks(10_000) {
        loop {
            let r = c
                .tool(
                    "task_wait",
                    json!({"task_ids": chunk, "timeout_seconds": 600}),
                )
                .await?;
            if r["timed_out"] == false {
                break;
            }
        }
    }
    Ok(())
}

/// Times `n` sequential calls of one tool.
async fn time_calls(
    c: &mut Client,
    n: usize,
    mut args: impl FnMut(usize) -> (String, Value),
) -> Result<Stat> {
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let (tool, a) = args(i);
        let t = Instant::now();
        c.tool(&tool, a).await?;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(Stat::of(lat))
}

/// Dispatch latency: a `date +%s%N` task submitted while every worker is free; the time it
/// prints minus the task's `created_at`.
async fn dispatch_latency(c: &mut Client, n: usize) -> Result<Stat> {
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let t = c
            .tool(
                "task_async",
                json!({"name": format!("d-{i}"), "agent_name": "stamp",
                                       "agent_instructions": "x"}),
            )
            .await?;
        let r = c
            .tool(
                "task_wait",
                json!({"task_ids": [id_of(&t)], "timeout_seconds": 60}),
            )
            .await?;
        lat.push(stamp_delay_ms(&r["tasks"][0])?);
    }
    Ok(Stat::of(lat))
}

/// For a task whose agent printed `date +%s%N` first: ms from its creation to its process
/// starting.
pub(crate) fn stamp_delay_ms(task: &Value) -> Result<f64> {
    let created = chrono::DateTime::parse_from_rfc3339(task["created_at"].as_str().unwrap_or(""))
        .context("created_at")?;
    let started: i128 = task["result"]
        .as_str()
        .unwrap_or("")
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .parse()
        .context("stamp result")?;
    let created_ns = i128::from(created.timestamp_nanos_opt().unwrap_or(0));
    Ok((started - created_ns) as f64 / 1e6)
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = Args::parse();
    let bin = server_bin()?;
    let mut out = Map::new();
    let mut rows: Vec<(String, String, String)> = Vec::new();

    // --- An empty database: latency, dispatch, throughput, idle memory. ---
    let dir = tempfile::tempdir()?;
    write_agents(dir.path())?;
    let mut c = Client::start(server_cmd(&bin, dir.path(), a.workers)).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (idle_rss, _) = rss_mib(Some(engine_pid(&bin, dir.path()).await?));

    let run_at = parked_at();
    let lat = time_calls(&mut c, a.calls, |i| {
        (
            "task_async".into(),
            json!({"name": format!("lat-{i}"), "agent_name": "parked",
                                     "agent_instructions": "x", "run_at": run_at}),
        )
    })
    .await?;
    let dispatch = dispatch_latency(&mut c, a.dispatches).await?;

    let began = Instant::now();
    let ids = submit_many(&mut c, a.tasks, "noop", None).await?;
    let submitted = began.elapsed().as_secs_f64();
    wait_all(&mut c, &ids).await?;
    let rate = a.tasks as f64 / began.elapsed().as_secs_f64();

    isolation::prepare(dir.path())?;
    let (plain_turn, plain_dispatch) =
        isolation::measure(&mut c, dir.path(), "edit", a.isolated).await?;
    let (iso_turn, iso_dispatch) =
        isolation::measure(&mut c, dir.path(), "edit-iso", a.isolated).await?;
    let git_wt = isolation::git_worktree_reference(dir.path(), a.isolated.clamp(1, 50))?;
    finish(c, &bin, dir.path()).await?;

    // --- Memory with many pending tasks, on a fresh database. ---
    let dir_p = tempfile::tempdir()?;
    write_agents(dir_p.path())?;
    let mut c = Client::start(server_cmd(&bin, dir_p.path(), a.workers)).await?;
    submit_many(&mut c, a.pending, "parked", Some(&parked_at())).await?;
    let (pending_rss, pending_peak) = rss_mib(Some(engine_pid(&bin, dir_p.path()).await?));
    finish(c, &bin, dir_p.path()).await?;

    // --- Many stored tasks: start-up, task_status, list_tasks. ---
    let (dir_s, sample, fill_s) = stored::prepare(a.stored, a.stored_dir.as_deref())?;
    write_agents(dir_s.path())?;
    let mut startups = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let c = Client::start(server_cmd(&bin, dir_s.path(), a.workers)).await?;
        startups.push(t.elapsed().as_secs_f64() * 1000.0);
        finish(c, &bin, dir_s.path()).await?;
    }
    let startup = Stat::of(startups);
    let mut c = Client::start(server_cmd(&bin, dir_s.path(), a.workers)).await?;
    let status = time_calls(&mut c, 1000, |i| {
        (
            "task_status".into(),
            json!({"task_id": sample[(i * 7919) % sample.len()].to_string()}),
        )
    })
    .await?;
    let list = time_calls(&mut c, 300, |i| {
        (
            "list_tasks".into(),
            json!({"status": "completed", "agent_name": format!("agent-{}", i % 10),
                                     "limit": 50, "offset": (i % 5) * 50}),
        )
    })
    .await?;
    let dash = dashboard::measure(&bin, dir_s.path(), &[], &sample, a.dashboard_rounds).await?;
    let (stored_rss, _) = rss_mib(Some(engine_pid(&bin, dir_s.path()).await?));
    finish(c, &bin, dir_s.path()).await?;

    // --- The same stored tasks copied into PostgreSQL, read through a cluster node. ---
    let cluster_dash = match a.database_url.as_deref() {
        Some(url) => {
            Some(cluster::dashboard(&bin, url, dir_s.path(), &sample, a.dashboard_rounds).await?)
        }
        None => None,
    };

    // --- A cluster on PostgreSQL, next to the single engine measured alike. ---
    let clustered = match a.database_url.as_deref() {
        Some(url) => Some(
            cluster::measure(
                &bin,
                &cluster::Settings {
                    url,
                    tasks: a.cluster_tasks,
                    workers: a.cluster_workers,
                    dispatches: a.dispatches.min(100),
                    lease_s: a.lease_seconds,
                    rescues: a.rescues,
                },
            )
            .await?,
        ),
        None => {
            eprintln!("o8-bench: cluster figures skipped: pass --database-url postgres://…");
            None
        }
    };

    // --- Reference points. ---
    let spawn_rate = reference::spawn_rate(2000, a.workers).await?;
    let spawn_lat = Stat::of(reference::spawn_latencies(a.dispatches).await?);
    let python = if a.no_python {
        None
    } else {
        match python_reference(a.calls).await {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("o8-bench: MCP Python SDK reference unavailable: {e:#}");
                None
            }
        }
    };

    let ms = |v: f64| format!("{v:.3} ms");
    rows.push((
        format!("task_async round trip ({} sequential)", a.calls),
        format!("p50 {} p99 {}", ms(lat.p50), ms(lat.p99)),
        match python {
            Some(p) => format!(
                "Python SDK no-op tool p50 {} p99 {} (ratio {:.2})",
                ms(p.p50),
                ms(p.p99),
                lat.p50 / p.p50
            ),
            None => "Python SDK reference skipped".into(),
        },
    ));
    rows.push((
        format!(
            "throughput, {} trivial tasks, {} workers",
            a.tasks, a.workers
        ),
        format!("{rate:.0} tasks/s (submitted in {submitted:.2} s)"),
        format!(
            "spawn `true` {spawn_rate:.0}/s (ratio {:.2})",
            rate / spawn_rate
        ),
    ));
    rows.push((
        "dispatch, created -> process started".into(),
        format!("p50 {} p99 {}", ms(dispatch.p50), ms(dispatch.p99)),
        format!(
            "spawn `date` p50 {} p99 {}",
            ms(spawn_lat.p50),
            ms(spawn_lat.p99)
        ),
    ));
    rows.push((
        format!("isolated editing task, {} one at a time", a.isolated),
        format!(
            "turnaround p50 {} (dispatch p50 {})",
            ms(iso_turn.p50),
            ms(iso_dispatch.p50)
        ),
        format!(
            "in the checkout: turnaround p50 {} (dispatch p50 {}); git worktree add+remove alone p50 {} (ratio {:.2})",
            ms(plain_turn.p50),
            ms(plain_dispatch.p50),
            ms(git_wt.p50),
            (iso_turn.p50 - plain_turn.p50) / git_wt.p50
        ),
    ));
    rows.push((
        format!("task_status, {} stored", a.stored),
        format!("p50 {} p99 {}", ms(status.p50), ms(status.p99)),
        String::new(),
    ));
    rows.push((
        format!("list_tasks status+agent, {} stored", a.stored),
        format!("p50 {} p99 {}", ms(list.p50), ms(list.p99)),
        String::new(),
    ));
    for (name, st) in &dash.reads {
        rows.push((
            format!("dashboard: {name}, {} stored", a.stored),
            format!("p50 {} p99 {}", ms(st.p50), ms(st.p99)),
            format!(
                "static asset p50 {} (ratio {:.1})",
                ms(dash.asset.p50),
                st.p50 / dash.asset.p50
            ),
        ));
    }
    rows.push((
        format!("start-up, {} stored (median of 3)", a.stored),
        ms(startup.p50),
        match fill_s {
            Some(s) => format!("filled in {s:.1} s"),
            None => "filled in an earlier run".into(),
        },
    ));
    rows.push((
        "memory".into(),
        format!("idle {idle_rss:.1} MiB; {} pending {pending_rss:.1} MiB (peak {pending_peak:.1}); {} stored idle {stored_rss:.1} MiB", a.pending, a.stored),
        String::new(),
    ));

    if let Some((copy_s, d)) = &cluster_dash {
        for ((name, st), (_, duck)) in d.reads.iter().zip(&dash.reads) {
            rows.push((
                format!("cluster dashboard: {name}, {} stored", a.stored),
                format!("p50 {} p99 {}", ms(st.p50), ms(st.p99)),
                format!(
                    "one DuckDB engine p50 {} (ratio {:.1})",
                    ms(duck.p50),
                    st.p50 / duck.p50
                ),
            ));
        }
        rows.push((
            format!("copy-to-postgres, {} stored", a.stored),
            format!("{copy_s:.1} s"),
            format!("{:.0} tasks/s", a.stored as f64 / copy_s),
        ));
    }
    if let Some(f) = &clustered {
        let per = |v: &[(usize, f64)]| {
            v.iter()
                .map(|(n, r)| format!("{n} node{} {r:.0}/s", if *n == 1 { "" } else { "s" }))
                .collect::<Vec<_>>()
                .join(", ")
        };
        rows.push((
            format!(
                "cluster throughput, {} trivial tasks, {} workers/node",
                a.cluster_tasks, a.cluster_workers
            ),
            per(&f.rates),
            format!(
                "one DuckDB engine {:.0}/s (ratios {})",
                f.duck_rate,
                f.rates
                    .iter()
                    .map(|(_, r)| format!("{:.2}", r / f.duck_rate))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
        rows.push((
            "cluster dispatch, created -> process started".into(),
            f.dispatch
                .iter()
                .map(|(n, d)| format!("{n}: p50 {}", ms(d.p50)))
                .collect::<Vec<_>>()
                .join("; "),
            format!(
                "one DuckDB engine p50 {} p99 {}",
                ms(f.duck_dispatch.p50),
                ms(f.duck_dispatch.p99)
            ),
        ));
        rows.push((
            format!(
                "node kill -9 -> its task running elsewhere ({} runs)",
                a.rescues
            ),
            format!("p50 {} max {}", ms(f.rerun.p50), ms(f.rerun.p99)),
            format!("lease {} s", f.lease_s),
        ));
        out.insert("cluster_duckdb_tasks_per_s".into(), json!(f.duck_rate));
        out.insert(
            "cluster_tasks_per_s".into(),
            json!(f.rates.iter().map(|(_, r)| *r).collect::<Vec<_>>()),
        );
        out.insert(
            "cluster_dispatch_p50_ms".into(),
            json!(f.dispatch.iter().map(|(_, d)| d.p50).collect::<Vec<_>>()),
        );
        out.insert(
            "cluster_duckdb_dispatch_p50_ms".into(),
            json!(f.duck_dispatch.p50),
        );
        out.insert("cluster_rerun_p50_ms".into(), json!(f.rerun.p50));
        out.insert("cluster_lease_s".into(), json!(f.lease_s));
    }

    println!("orchestr8-async benchmark ({} workers)", a.workers);
    for (what, value, reference) in &rows {
        println!("  {what:<48} {value:<40} {reference}");
    }
    for (k, v) in [
        ("task_async_p50_ms", lat.p50),
        ("task_async_p99_ms", lat.p99),
        ("python_noop_p50_ms", python.map_or(f64::NAN, |p| p.p50)),
        ("python_noop_p99_ms", python.map_or(f64::NAN, |p| p.p99)),
        ("throughput_tasks_per_s", rate),
        ("spawn_true_per_s", spawn_rate),
        ("dispatch_p50_ms", dispatch.p50),
        ("dispatch_p99_ms", dispatch.p99),
        ("spawn_latency_p50_ms", spawn_lat.p50),
        ("isolated_turnaround_p50_ms", iso_turn.p50),
        ("isolated_dispatch_p50_ms", iso_dispatch.p50),
        ("checkout_turnaround_p50_ms", plain_turn.p50),
        ("checkout_dispatch_p50_ms", plain_dispatch.p50),
        ("git_worktree_add_remove_p50_ms", git_wt.p50),
        ("task_status_p50_ms", status.p50),
        ("task_status_p99_ms", status.p99),
        ("list_tasks_p50_ms", list.p50),
        ("list_tasks_p99_ms", list.p99),
        ("startup_ms", startup.p50),
        ("idle_rss_mib", idle_rss),
        ("pending_rss_mib", pending_rss),
        ("pending_peak_rss_mib", pending_peak),
        ("stored_idle_rss_mib", stored_rss),
    ] {
        out.insert(k.into(), if v.is_finite() { json!(v) } else { Value::Null });
    }
    out.insert(
        "dashboard_p50_ms".into(),
        Value::Object(
            dash.reads
                .iter()
                .map(|(name, st)| (name.clone(), json!(st.p50)))
                .collect(),
        ),
    );
    out.insert("dashboard_asset_p50_ms".into(), json!(dash.asset.p50));
    if let Some((copy_s, d)) = &cluster_dash {
        out.insert(
            "cluster_dashboard_p50_ms".into(),
            Value::Object(
                d.reads
                    .iter()
                    .map(|(name, st)| (name.clone(), json!(st.p50)))
                    .collect(),
            ),
        );
        out.insert("copy_to_postgres_s".into(), json!(copy_s));
    }
    out.insert("workers".into(), json!(a.workers));
    out.insert("tasks".into(), json!(a.tasks));
    out.insert("stored".into(), json!(a.stored));
    out.insert("pending".into(), json!(a.pending));
    println!("{}", Value::Object(out));
    Ok(())
}

/// The official Python SDK's no-op tool, driven by the same client the same way.
async fn python_reference(calls: usize) -> Result<Stat> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .context("no HOME for the SDK's cache")?
        .join("orchestr8-async");
    let cmd = reference::python_noop_server(&cache).await?;
    let mut c = Client::start(cmd).await?;
    let stat = time_calls(&mut c, calls, |_| ("noop".into(), json!({}))).await?;
    c.stop().await?;
    Ok(stat)
}
