//! Reference points measured in the same run, so that results read as ratios on a noisy
//! machine: process spawn (the ceiling for trivial command tasks) and a no-op tool of the
//! official MCP Python SDK (what an MCP tool call costs in the most common implementation).

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use tokio::process::Command;

/// The SDK version the reference is pinned to, so runs compare.
const MCP_SDK: &str = "mcp==2.3.0";

const NOOP_SERVER: &str = r#"from mcp.server.mcpserver import MCPServer

server = MCPServer("noop")


@server.tool()
def noop() -> str:
    """Does nothing."""
    return "ok"


if __name__ == "__main__":
    server.run()
"#;

/// Spawns `true`, `workers` at a time, `n` times; returns processes per second.
pub async fn spawn_rate(n: usize, workers: usize) -> Result<f64> {
    let t = Instant::now();
    let mut in_flight = Vec::new();
    for _ in 0..n {
        in_flight.push(tokio::spawn(async {
            Command::new("true").status().await.map(|_| ())
        }));
        if in_flight.len() >= workers {
            for h in in_flight.drain(..) {
                h.await??;
            }
        }
    }
    for h in in_flight {
        h.await??;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// Time from asking for a process to the process running, in ms, `n` times: spawns
/// `date +%s%N` and compares the time it prints with the time before the spawn.
pub async fn spawn_latencies(n: usize) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let before = now_ns();
        let o = Command::new("date").arg("+%s%N").output().await?;
        let started: u128 = String::from_utf8_lossy(&o.stdout).trim().parse()?;
        out.push(started.saturating_sub(before) as f64 / 1e6);
    }
    Ok(out)
}

pub fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// A command that starts the Python SDK's no-op server, installing the SDK into a virtualenv
/// under `cache` the first time.
pub async fn python_noop_server(cache: &Path) -> Result<Command> {
    let venv = cache.join("python-mcp-sdk");
    let python = venv.join("bin/python");
    let marker = venv.join(format!(".installed-{MCP_SDK}"));
    if !marker.exists() {
        eprintln!(
            "o8-bench: installing the MCP Python SDK ({MCP_SDK}) into {}",
            venv.display()
        );
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv)).await?;
        run(Command::new(&python).args(["-m", "pip", "install", "-q", MCP_SDK])).await?;
        std::fs::write(&marker, "")?;
    }
    let script: PathBuf = venv.join("noop_server.py");
    std::fs::write(&script, NOOP_SERVER)?;
    let mut cmd = Command::new(python);
    cmd.arg(script);
    Ok(cmd)
}

async fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .output()
        .await
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
