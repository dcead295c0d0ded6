//! The cluster's figures: end-to-end throughput and dispatch latency with 1, 2 and 3 engines on
//! one PostgreSQL next to the single DuckDB engine measured the same way in the same run, the
//! time from a node's death (kill -9) to its task running again on another node, and the
//! dashboard's reads on a node with the stored tasks copied in by `copy-to-postgres`.
//!
//! Every node is a session and its detached engine in a folder of its own, as on a machine of its
//! own; calls go through the first node's session.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::json;
use tokio::process::Command;

use crate::client::Client;
use crate::{dispatch_latency, id_of, submit_many, wait_all, write_agents, Stat};

pub struct Figures {
    /// Tasks per second: the single engine, then 1, 2 and 3 nodes.
    pub duck_rate: f64,
    pub rates: Vec<(usize, f64)>,
    pub duck_dispatch: Stat,
    pub dispatch: Vec<(usize, Stat)>,
    /// From kill -9 of a node to its task's process starting on another, in ms.
    pub rerun: Stat,
    pub lease_s: u64,
}

pub struct Settings<'a> {
    pub url: &'a str,
    pub tasks: usize,
    pub workers: usize,
    pub dispatches: usize,
    pub lease_s: u64,
    pub rescues: usize,
}

fn node_cmd(bin: &Path, dir: &Path, s: &Settings<'_>) -> Command {
    let mut cmd = crate::server_cmd(bin, dir, s.workers);
    cmd.env("ORCHESTR8_DATABASE_URL", s.url)
        .env("ORCHESTR8_NODE_LEASE_SECONDS", s.lease_s.to_string());
    cmd
}

/// A node: its folder (with the benchmark's agents) and its session.
struct Node {
    dir: tempfile::TempDir,
    client: Client,
}

async fn start_node(bin: &Path, s: &Settings<'_>, queues: Option<&str>) -> Result<Node> {
    let dir = tempfile::tempdir()?;
    write_agents(dir.path())?;
    std::fs::write(
        dir.path().join("agents/rescued.md"),
        "---\nname: rescued\nrunner: command\nmax_retries: 1\ncommand: [\"sh\", \"-c\", \
         \"date +%s%N; if [ \\\"$ORCHESTR8_ATTEMPT\\\" = 1 ]; then exec sleep 600; fi\"]\n---\n",
    )?;
    let mut cmd = node_cmd(bin, dir.path(), s);
    if let Some(q) = queues {
        cmd.env("ORCHESTR8_QUEUES", q);
    }
    let client = Client::start(cmd).await?;
    Ok(Node { dir, client })
}

async fn stop_nodes(bin: &Path, s: &Settings<'_>, nodes: Vec<Node>) -> Result<()> {
    for n in nodes {
        n.client.stop().await?;
        crate::stop_with(node_cmd(bin, n.dir.path(), s)).await?;
    }
    Ok(())
}

/// Throughput and dispatch latency through the first of `count` nodes.
async fn round(bin: &Path, s: &Settings<'_>, count: usize) -> Result<(f64, Stat)> {
    let mut nodes = Vec::new();
    for _ in 0..count {
        nodes.push(start_node(bin, s, None).await?);
    }
    // Every node has joined and listens before anything is measured.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let measured = through(&mut nodes[0].client, s).await?;
    stop_nodes(bin, s, nodes).await?;
    Ok(measured)
}

/// Dispatch latency, then throughput, through one session.
async fn through(c: &mut Client, s: &Settings<'_>) -> Result<(f64, Stat)> {
    let dispatch = dispatch_latency(c, s.dispatches).await?;
    let began = std::time::Instant::now();
    let ids = submit_many(c, s.tasks, "noop", None).await?;
    wait_all(c, &ids).await?;
    Ok((s.tasks as f64 / began.elapsed().as_secs_f64(), dispatch))
}

/// The same round on a single DuckDB engine.
async fn duck_round(bin: &Path, s: &Settings<'_>) -> Result<(f64, Stat)> {
    let dir = tempfile::tempdir()?;
    write_agents(dir.path())?;
    let mut c = Client::start(crate::server_cmd(bin, dir.path(), s.workers)).await?;
    let measured = through(&mut c, s).await?;
    crate::finish(c, bin, dir.path()).await?;
    Ok(measured)
}

/// The engine processes of a node's folder.
fn engine_pids(dir: &Path) -> Vec<i32> {
    let needle = dir.display().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
                args.contains(&&b"engine"[..])
                    && args
                        .iter()
                        .any(|a| String::from_utf8_lossy(a).contains(&needle))
            })
        })
        .collect()
}

fn now_ns() -> i128 {
    i128::from(chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0))
}

/// One death: a node runs a task and is killed with -9; ms until the task's next attempt
/// started on another node, which serves the task's queue too.
async fn rerun_once(bin: &Path, s: &Settings<'_>) -> Result<f64> {
    let mut doomed = start_node(bin, s, Some("default,rescue")).await?;
    let t = doomed
        .client
        .tool(
            "task_async",
            json!({"name": "rescued", "agent_name": "rescued", "agent_instructions": "x",
                   "queue": "rescue"}),
        )
        .await?;
    let id = id_of(&t);
    for _ in 0..400 {
        let st = doomed
            .client
            .tool("task_status", json!({"task_id": id}))
            .await?;
        if st["status"] == "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // Only now: the task could not start on the survivor first.
    let mut survivor = start_node(bin, s, Some("default,rescue")).await?;
    let pids = engine_pids(doomed.dir.path());
    if pids.len() != 1 {
        bail!("expected one engine for the doomed node, found {pids:?}");
    }
    // The session first, so that it does not start another engine.
    drop(doomed.client);
    let killed = now_ns();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pids[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .context("kill -9 of the node")?;
    let r = survivor
        .client
        .tool(
            "task_wait",
            json!({"task_ids": [id], "timeout_seconds": 600}),
        )
        .await?;
    let started: i128 = r["tasks"][0]["result"]
        .as_str()
        .unwrap_or("")
        .trim()
        .parse()
        .with_context(|| format!("the rescued attempt's stamp in {r}"))?;
    stop_nodes(bin, s, vec![survivor]).await?;
    Ok((started - killed) as f64 / 1e6)
}

pub async fn measure(bin: &Path, s: &Settings<'_>) -> Result<Figures> {
    let (duck_rate, duck_dispatch) = duck_round(bin, s).await?;
    let mut rates = Vec::new();
    let mut dispatch = Vec::new();
    for count in 1..=3 {
        let (rate, d) = round(bin, s, count).await?;
        rates.push((count, rate));
        dispatch.push((count, d));
    }
    let mut reruns = Vec::new();
    for _ in 0..s.rescues {
        reruns.push(rerun_once(bin, s).await?);
    }
    Ok(Figures {
        duck_rate,
        rates,
        duck_dispatch,
        dispatch,
        rerun: Stat::of(reruns),
        lease_s: s.lease_s,
    })
}

/// The stored tasks of the single engine in `stored` copied into a database of their own beside
/// the benchmark's (`copy-to-postgres`, timed), and the dashboard's reads through a node on it.
/// The database is made for the run and dropped after it.
pub async fn dashboard(
    bin: &Path,
    url: &str,
    stored: &Path,
    sample: &[uuid::Uuid],
    rounds: usize,
) -> Result<(f64, crate::dashboard::Figures)> {
    let mut own = url::Url::parse(url).context("the database URL")?;
    let name = format!("{}_o8_dashboard", own.path().trim_start_matches('/'));
    own.set_path(&name);
    let own = own.to_string();
    let (admin, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    // One statement each: neither may run inside a transaction block.
    for sql in [
        format!("DROP DATABASE IF EXISTS \"{name}\""),
        format!("CREATE DATABASE \"{name}\""),
    ] {
        admin
            .batch_execute(&sql)
            .await
            .with_context(|| format!("making the database {name} for the copy"))?;
    }
    let t = std::time::Instant::now();
    let out = crate::server_cmd(bin, stored, 1)
        .args(["copy-to-postgres", &own])
        .stdin(std::process::Stdio::null())
        .output()
        .await?;
    if !out.status.success() {
        bail!(
            "copy-to-postgres failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let copy_s = t.elapsed().as_secs_f64();
    let dir = tempfile::tempdir()?;
    write_agents(dir.path())?;
    let settings = Settings {
        url: &own,
        tasks: 0,
        workers: 2,
        dispatches: 0,
        lease_s: 15,
        rescues: 0,
    };
    let node = Client::start(node_cmd(bin, dir.path(), &settings)).await?;
    let read = crate::dashboard::measure(
        bin,
        dir.path(),
        &[("ORCHESTR8_DATABASE_URL", own.as_str())],
        sample,
        rounds,
    )
    .await;
    node.stop().await?;
    crate::stop_with(node_cmd(bin, dir.path(), &settings)).await?;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\""))
        .await?;
    Ok((copy_s, read?))
}
