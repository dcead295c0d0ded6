//! What isolating a task in a git worktree costs: the same editing task, run one at a time in
//! the repository's checkout and in a worktree of its own, in the same run.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::client::Client;
use super::{id_of, stamp_delay_ms, Stat};

/// Files in the benchmark's repository (a worktree checks them all out).
const FILES: usize = 500;

/// A repository of [`FILES`] small files with one commit, and two agents that print the time
/// they started and change one file: `edit` (in the checkout) and `edit-iso` (in a worktree).
pub fn prepare(dir: &Path) -> Result<()> {
    let repo = dir.join("repo");
    std::fs::create_dir_all(repo.join("src"))?;
    for i in 0..FILES {
        std::fs::write(
            repo.join(format!("src/f{i}.txt")),
            format!("file {i}\n").repeat(20),
        )?;
    }
    for args in [
        &["init", "-q", "-b", "main"][..],
        &["add", "."],
        &[
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@localhost",
            "commit",
            "-q",
            "-m",
            "files",
        ],
    ] {
        let ok = std::process::Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args(args)
            .status()
            .context("git (needed for the isolation figures)")?
            .success();
        if !ok {
            bail!("git {args:?} failed");
        }
    }
    for (name, extra) in [("edit", ""), ("edit-iso", "isolation: worktree\n")] {
        std::fs::write(
            dir.join("agents").join(format!("{name}.md")),
            format!(
                "---\nname: {name}\nrunner: command\ncommand: [\"sh\", \"-c\", \"date +%s%N; echo x >> src/f0.txt\"]\n{extra}---\n"
            ),
        )?;
    }
    Ok(())
}

/// Per agent: (turnaround — submit to `task_wait` answered —, dispatch — created to process
/// started), `n` tasks one at a time.
pub async fn measure(c: &mut Client, dir: &Path, agent: &str, n: usize) -> Result<(Stat, Stat)> {
    let wd = dir.join("repo").display().to_string();
    let (mut turnaround, mut dispatch) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        let t = Instant::now();
        let task = c
            .tool(
                "task_async",
                json!({"name": format!("{agent}-{i}"), "agent_name": agent,
                       "agent_instructions": "x", "working_dir": wd}),
            )
            .await?;
        let r = c
            .tool(
                "task_wait",
                json!({"task_ids": [id_of(&task)], "timeout_seconds": 60}),
            )
            .await?;
        turnaround.push(t.elapsed().as_secs_f64() * 1000.0);
        let done = &r["tasks"][0];
        if done["status"] != "completed" {
            bail!("{agent} task did not complete: {done}");
        }
        dispatch.push(stamp_delay_ms(done)?);
    }
    Ok((Stat::of(turnaround), Stat::of(dispatch)))
}

/// The reference: git itself adding and removing a worktree of the same repository (what any
/// worktree-isolating tool pays), `n` times.
pub fn git_worktree_reference(dir: &Path, n: usize) -> Result<Stat> {
    let repo = dir.join("repo");
    let wt = dir.join("reference-worktree");
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        for args in [
            vec![
                "worktree",
                "add",
                "--quiet",
                "--detach",
                &*wt.to_string_lossy(),
                "HEAD",
            ],
            vec!["worktree", "remove", "--force", &*wt.to_string_lossy()],
        ] {
            let ok = std::process::Command::new("git")
                .arg("-C")
                .arg(&repo)
                .args(&args)
                .status()?
                .success();
            if !ok {
                bail!("git {args:?} failed");
            }
        }
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(Stat::of(lat))
}
