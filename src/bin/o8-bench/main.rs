//! o8-bench: measures the real release binary over stdio with a minimal JSON-RPC client (so
//! client overhead does not hide server cost).
//!
//!   cargo run --release --bin o8-bench -- [--calls 2000] [--tasks 10000] [--workers 8]
//!
//! Prints a table and one JSON line. Reference point in the same run: spawning `true` (the
//! ceiling for trivial command tasks).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{oneshot, Mutex};

struct Client {
    child: Child,
    stdin: ChildStdin,
    next_id: u64,
    pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>,
}

impl Client {
    async fn start(bin: &Path, dir: &Path, workers: u32) -> Result<Client> {
        let mut child = Command::new(bin)
            .current_dir(dir)
            .env("ORCHESTR8_DB_PATH", dir.join("bench.duckdb"))
            .env("ORCHESTR8_AGENTS_DIR", dir.join("agents"))
            .env("ORCHESTR8_WORKERS", workers.to_string())
            .env("ORCHESTR8_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin"))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>> = Arc::default();
        let p = pending.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if let Some(id) = v["id"].as_u64() {
                    if let Some(tx) = p.lock().await.remove(&id) {
                        let _ = tx.send(v);
                    }
                }
            }
        });
        let mut c = Client {
            child,
            stdin,
            next_id: 0,
            pending,
        };
        c.request(
            "initialize",
            json!({"protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "o8-bench", "version": "0"}}),
        )
        .await?
        .await?;
        c.notify("notifications/initialized").await?;
        Ok(c)
    }

    async fn notify(&mut self, method: &str) -> Result<()> {
        let line = format!("{}\n", json!({"jsonrpc": "2.0", "method": method}));
        self.stdin.write_all(line.as_bytes()).await?;
        Ok(())
    }

    /// Sends a request; the returned receiver yields its response.
    async fn request(&mut self, method: &str, params: Value) -> Result<oneshot::Receiver<Value>> {
        self.next_id += 1;
        let id = self.next_id;
        let (tx, rx) = oneshot::channel();
        self.pending.lock().await.insert(id, tx);
        let line = format!(
            "{}\n",
            json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
        );
        self.stdin.write_all(line.as_bytes()).await?;
        Ok(rx)
    }

    async fn tool(&mut self, name: &str, args: Value) -> Result<Value> {
        let rx = self
            .request("tools/call", json!({"name": name, "arguments": args}))
            .await?;
        structured(rx.await?)
    }

    async fn stop(mut self) -> Result<()> {
        drop(self.stdin);
        tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await??;
        Ok(())
    }
}

fn structured(resp: Value) -> Result<Value> {
    let r = &resp["result"];
    if r["isError"] == true || resp.get("error").is_some() {
        bail!("call failed: {resp}");
    }
    Ok(r["structuredContent"].clone())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.windows(2)
        .find(|w| w[0] == name)
        .and_then(|w| w[1].parse().ok())
        .unwrap_or(default)
}

fn server_bin() -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    let bin = me.with_file_name("orchestr8-async-server");
    if !bin.exists() {
        bail!(
            "{} not found: build it with cargo build --release",
            bin.display()
        );
    }
    Ok(bin)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let calls = arg(&args, "--calls", 2000) as usize;
    let tasks = arg(&args, "--tasks", 10_000) as usize;
    let workers = arg(&args, "--workers", 8) as u32;
    let bin = server_bin()?;
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("agents"))?;
    std::fs::write(
        dir.path().join("agents/noop.md"),
        "---\nname: noop\nrunner: command\ncommand: [\"true\"]\n---\n",
    )?;
    std::fs::write(
        dir.path().join("agents/parked.md"),
        "---\nname: parked\nrunner: command\ncommand: [\"true\"]\n---\n",
    )?;

    // 1. task_async round trip, sequential. Tasks are parked an hour in the future so that the
    // workers do not compete with the submissions being measured.
    let mut c = Client::start(&bin, dir.path(), workers).await?;
    let run_at = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let mut lat = Vec::with_capacity(calls);
    for i in 0..calls {
        let t = Instant::now();
        c.tool(
            "task_async",
            json!({"name": format!("lat-{i}"), "agent_name": "parked",
            "agent_instructions": "x", "run_at": run_at}),
        )
        .await?;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    lat.sort_by(f64::total_cmp);

    // 2. throughput: submit `tasks` trivial tasks pipelined, wait for all to complete.
    let began = Instant::now();
    let mut rxs = Vec::with_capacity(tasks);
    for i in 0..tasks {
        rxs.push(
            c.request(
                "tools/call",
                json!({"name": "task_async", "arguments": {
                "name": format!("tp-{i}"), "agent_name": "noop", "agent_instructions": "x"}}),
            )
            .await?,
        );
    }
    let mut ids = Vec::with_capacity(tasks);
    for rx in rxs {
        let v = structured(rx.await?)?;
        ids.push(v["task_id"].as_str().unwrap_or_default().to_string());
    }
    let submitted = began.elapsed().as_secs_f64();
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
    let total = began.elapsed().as_secs_f64();
    c.stop().await?;

    // Reference: spawning `true` sequentially and with `workers` at once.
    let spawn_n = 2000usize;
    let t = Instant::now();
    let mut in_flight = Vec::new();
    for _ in 0..spawn_n {
        in_flight.push(tokio::spawn(async {
            Command::new("true").status().await.map(|_| ())
        }));
        if in_flight.len() >= workers as usize {
            for h in in_flight.drain(..) {
                h.await??;
            }
        }
    }
    for h in in_flight {
        h.await??;
    }
    let spawn_rate = spawn_n as f64 / t.elapsed().as_secs_f64();

    let p50 = percentile(&lat, 0.5);
    let p99 = percentile(&lat, 0.99);
    let rate = tasks as f64 / total;
    println!("orchestr8-async benchmark ({workers} workers)");
    println!("  task_async round trip, {calls} sequential calls: p50 {p50:.3} ms, p99 {p99:.3} ms");
    println!("  {tasks} trivial tasks: submitted in {submitted:.2} s, all completed in {total:.2} s = {rate:.0} tasks/s");
    println!(
        "  reference: spawn of `true`, {workers} at a time: {spawn_rate:.0} /s (ratio {:.2})",
        rate / spawn_rate
    );
    println!(
        "{}",
        json!({"task_async_p50_ms": p50, "task_async_p99_ms": p99, "tasks": tasks,
               "workers": workers, "throughput_tasks_per_s": rate, "spawn_true_per_s": spawn_rate,
               "throughput_vs_spawn": rate / spawn_rate})
    );
    Ok(())
}
