//! Torture: kill -9 the server at random moments while tasks are submitted and running, restart
//! it, and check that nothing accepted was lost, every completed task really ran, no task ran
//! twice at the same time, and every owed webhook arrived.
//!
//! CI runs one iteration (a few hundred tasks, four kills). For a long run:
//! `O8_TORTURE_ITERATIONS=20 cargo test --release -- torture --nocapture`; `O8_TORTURE_SEED`
//! repeats a run's choices (kill moments, task lengths; the timing of the machine varies).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::harness::*;
use crate::stub_http::{Reply, Stub};

const KILLS: usize = 4;
const TASKS_PER_ROUND: usize = 80;

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_at_random_moments_loses_nothing_and_never_runs_a_task_twice_at_once() {
    let iterations: u64 = std::env::var("O8_TORTURE_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let first_seed: u64 = std::env::var("O8_TORTURE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    for i in 0..iterations {
        let seed = first_seed.wrapping_add(i);
        eprintln!("torture iteration {i}: O8_TORTURE_SEED={seed}");
        one_run(seed).await;
    }
}

/// One line of the agent's run record.
struct Run {
    attempt: u32,
    start_ns: u128,
    end_ns: Option<u128>,
}

async fn one_run(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let hooks = Stub::start(vec![Reply::json(204, json!(null))]).await;
    let hook_url = format!("{}/hook", hooks.url);
    let mut env = Env::new();
    env.set("ORCHESTR8_WORKERS", "4")
        .set("ORCHESTR8_WEBHOOK_BACKOFF_BASE_MS", "50")
        .set("ORCHESTR8_WEBHOOK_BACKOFF_MAX_MS", "500");
    let runs = env.path("runs.txt");
    let locks = env.path("locks");
    std::fs::create_dir_all(&locks).unwrap();
    // The agent holds an exclusive lock on its task's file while it runs (the kernel drops it
    // when the process dies, even by SIGKILL): finding it taken means another run of the same
    // task is still alive.
    env.shell_agent(
        "rec",
        &format!(
            r#"exec 9>"{locks}/$ORCHESTR8_TASK_ID"
if ! flock -n 9; then echo "overlap $ORCHESTR8_TASK_ID $ORCHESTR8_ATTEMPT" >> "{runs}"; flock 9; fi
echo "start $ORCHESTR8_TASK_ID $ORCHESTR8_ATTEMPT $(date +%s%N)" >> "{runs}"
read pause
sleep "$pause"
echo "end $ORCHESTR8_TASK_ID $ORCHESTR8_ATTEMPT $(date +%s%N)" >> "{runs}"
echo "ran $ORCHESTR8_TASK_ID $ORCHESTR8_ATTEMPT""#,
            locks = locks.display(),
            runs = runs.display()
        ),
        "",
    );

    let mut accepted: Vec<String> = Vec::new();
    // One long task per round, running when the kill comes: its process outlives the server,
    // so every restart must find and stop an orphan before running the task again.
    let mut long: Vec<String> = Vec::new();
    for round in 0..KILLS {
        let s = env.start().await;
        let pid = s.pid;
        let engine = env.engine_pid().await;
        let id = s
            .submit(
                &format!("long-{round}"),
                "rec",
                "6\n",
                json!({"max_retries": 10, "priority": "critical", "webhook_url": hook_url}),
            )
            .await;
        s.until(&id, "running", |t| t["status"] == "running").await;
        long.push(id.clone());
        accepted.push(id);
        let kill_after = Duration::from_millis(rng.random_range(30..1200));
        let pauses: Vec<u32> = (0..TASKS_PER_ROUND)
            .map(|_| rng.random_range(0..250))
            .collect();
        let submit = async {
            let mut ok = Vec::new();
            for (i, pause) in pauses.iter().enumerate() {
                let args = json!({
                    "name": format!("r{round}-{i}"),
                    "agent_name": "rec",
                    "agent_instructions": format!("{}.{:03}\n", pause / 1000, pause % 1000),
                    "max_retries": 10,
                    "webhook_url": hook_url,
                });
                match s
                    .try_call("task_async", args, Duration::from_secs(10))
                    .await
                {
                    Some(r) if r.is_error != Some(true) => {
                        let v = r.structured_content.expect("structured content");
                        ok.push(v["task_id"].as_str().unwrap().to_string());
                    }
                    Some(r) => panic!("task_async refused: {:?}", r.structured_content),
                    None => break, // the server is gone
                }
            }
            ok
        };
        let kill = async {
            tokio::time::sleep(kill_after).await;
            // The machine crashes: the session first (so that no call of it is answered after
            // the engine is gone), then the engine.
            for p in [pid, engine] {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        };
        let (ok, ()) = tokio::join!(submit, kill);
        eprintln!(
            "round {round}: {} task(s) accepted, killed after {kill_after:?}",
            ok.len()
        );
        accepted.extend(ok);
        s.kill9(&env).await;
    }

    let s = env.start().await;
    let done = s.wait_all(&accepted, 300).await;
    let record = parse_runs(&read_lines(&runs));
    let overlaps: Vec<_> = read_lines(&runs)
        .into_iter()
        .filter(|l| l.starts_with("overlap"))
        .collect();
    assert!(
        overlaps.is_empty(),
        "a task ran twice at the same time (seed {seed}): {overlaps:?}"
    );
    for id in &long {
        let logs = s.log_messages(id).await;
        assert!(
            logs.iter().any(|l| l.contains("killed process group")),
            "the orphan of long task {id} was not stopped by recovery (seed {seed}): {logs:?}"
        );
    }
    for (id, runs) in &record {
        let mut attempts: Vec<u32> = runs.iter().map(|r| r.attempt).collect();
        attempts.sort_unstable();
        attempts.dedup();
        assert_eq!(
            attempts.len(),
            runs.len(),
            "an attempt of {id} started twice (seed {seed})"
        );
    }
    for t in &done {
        let id = t["task_id"].as_str().unwrap();
        assert_eq!(
            t["status"], "completed",
            "accepted task lost (seed {seed}): {t}"
        );
        let attempt = t["attempt"].as_u64().unwrap() as u32;
        assert_eq!(t["result"], format!("ran {id} {attempt}\n"), "{t}");
        let task_runs = record.get(id).map(Vec::as_slice).unwrap_or_default();
        assert!(
            task_runs
                .iter()
                .any(|r| r.attempt == attempt && r.end_ns.is_some()),
            "completed task {id} has no finished run of attempt {attempt} (seed {seed})"
        );
        // Runs that finished never overlap; the lock covers the ones that were killed.
        let mut finished: Vec<_> = task_runs.iter().filter(|r| r.end_ns.is_some()).collect();
        finished.sort_by_key(|r| r.start_ns);
        for pair in finished.windows(2) {
            assert!(
                pair[1].start_ns >= pair[0].end_ns.unwrap(),
                "runs of {id} overlap (seed {seed}): attempts {} and {}",
                pair[0].attempt,
                pair[1].attempt
            );
        }
    }

    // Owed webhooks arrive, also those whose delivery a kill interrupted.
    let want: HashSet<&str> = done
        .iter()
        .map(|t| t["task_id"].as_str().unwrap())
        .collect();
    let mut missing = want.len();
    for _ in 0..600 {
        let got: HashSet<String> = hooks
            .requests()
            .iter()
            .filter(|r| r.body["type"] == "task.completed")
            .filter_map(|r| r.body["data"]["task_id"].as_str().map(str::to_string))
            .collect();
        missing = want.iter().filter(|id| !got.contains(**id)).count();
        if missing == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        missing, 0,
        "{missing} completed task(s) never got their webhook (seed {seed})"
    );
    eprintln!(
        "seed {seed}: {} tasks completed, {} runs recorded, {} webhook requests",
        done.len(),
        record.values().map(Vec::len).sum::<usize>(),
        hooks.requests().len()
    );
    s.stop().await;
}

fn parse_runs(lines: &[String]) -> HashMap<String, Vec<Run>> {
    let mut by_task: HashMap<String, Vec<Run>> = HashMap::new();
    for line in lines {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["start", id, attempt, ns] => by_task.entry(id.to_string()).or_default().push(Run {
                attempt: attempt.parse().unwrap(),
                start_ns: ns.parse().unwrap(),
                end_ns: None,
            }),
            ["end", id, attempt, ns] => {
                let attempt: u32 = attempt.parse().unwrap();
                let run = by_task
                    .get_mut(*id)
                    .and_then(|runs| {
                        runs.iter_mut()
                            .rev()
                            .find(|r| r.attempt == attempt && r.end_ns.is_none())
                    })
                    .unwrap_or_else(|| panic!("end without start: {line}"));
                run.end_ns = Some(ns.parse().unwrap());
            }
            _ => {}
        }
    }
    by_task
}
