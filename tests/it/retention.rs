//! Retention: finished work older than a period is removed — by the `prune` command at once, or
//! in the background with `ORCHESTR8_RETENTION` — and nothing else is.

use std::time::Duration;

use serde_json::json;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread")]
async fn prune_removes_old_finished_work_whole_and_keeps_everything_else() {
    let mut env = Env::new();
    // Background pruning would race the command: a long period keeps it out of the way.
    env.set("ORCHESTR8_RETENTION", "30d");
    env.shell_agent("ok", "echo line one >&2; echo line two >&2; echo done", "");
    let s = env.start().await;
    // Old work: three tasks (one with an idempotency key), and a workflow of one task.
    let mut old = Vec::new();
    for i in 0..3 {
        let extra = if i == 0 {
            json!({"idempotency_key": "nightly-1"})
        } else {
            json!({})
        };
        old.push(s.submit(&format!("old-{i}"), "ok", "x", extra).await);
    }
    s.wait_all(&old, 30).await;
    let w = s.call("workflow_create", json!({"name": "old-flow"})).await["workflow_id"]
        .as_str()
        .unwrap()
        .to_string();
    s.call(
        "workflow_add_phase",
        json!({"workflow_id": w, "phase_id": "only", "name": "only"}),
    )
    .await;
    let wt = s
        .call(
            "workflow_add_task",
            json!({"workflow_id": w, "phase_id": "only", "name": "wf-task",
                   "agent_name": "ok", "agent_instructions": "x"}),
        )
        .await["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    s.call("workflow_start", json!({"workflow_id": w})).await;
    s.wait_one(&wt, 30).await;
    tokio::time::sleep(Duration::from_millis(3500)).await;

    // Newer work, and a task still waiting (for its time) on an old one.
    let fresh = s.submit("fresh", "ok", "x", json!({})).await;
    s.wait_one(&fresh, 30).await;
    let run_at = (chrono::Utc::now() + chrono::Duration::seconds(8)).to_rfc3339();
    let waiting = s
        .submit(
            "waiting",
            "ok",
            "x",
            json!({"dependencies": [old[1]], "run_at": run_at}),
        )
        .await;

    let r = env.cli_json(&["prune", "--older-than", "3s"]).await;
    assert_eq!(r["tasks"], 4, "{r}");
    assert_eq!(r["workflows"], 1, "{r}");
    assert_eq!(r["older_than_seconds"], 3, "{r}");
    assert!(r["log_lines"].as_u64().unwrap() >= 8, "{r}");
    assert_eq!(r["webhook_deliveries"], 0, "{r}");
    // Nothing is left to remove.
    let again = env.cli_json(&["prune", "--older-than", "3s"]).await;
    assert_eq!(again["tasks"], 0, "{again}");

    for id in old.iter().chain([&wt]) {
        let e = s.call_err("task_status", json!({"task_id": id})).await;
        assert!(e.contains("no such task"), "{e}");
    }
    let e = s
        .call_err("workflow_status", json!({"workflow_id": w}))
        .await;
    assert!(e.contains(&w), "{e}");
    assert_eq!(s.status(&fresh).await["status"], "completed");
    let listed = s.call("list_tasks", json!({})).await;
    let names: Vec<&str> = listed["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(
        names.contains(&"fresh") && names.contains(&"waiting"),
        "{names:?}"
    );
    // The key of a removed task may be used again: it makes a new task.
    let reused = s
        .call(
            "task_async",
            json!({"name": "again", "agent_name": "ok", "agent_instructions": "x",
                   "idempotency_key": "nightly-1"}),
        )
        .await;
    assert_ne!(reused["task_id"], old[0].as_str(), "{reused}");

    // The waiting task's dependency is gone but had completed: after a crash and a restart
    // it still runs.
    s.stop().await;
    env.kill9_engines().await;
    let s = env.start().await;
    let done = s.wait_one(&waiting, 60).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(s.status(&fresh).await["status"], "completed");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn prune_says_what_is_wrong_with_its_period() {
    let env = Env::new();
    let s = env.start().await;
    let (code, _, err) = env.cli(&["prune"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("no retention period is set"), "{err}");
    let (code, _, err) = env.cli(&["prune", "--older-than", "3 days"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("90s, 12h, 30d, 2w"), "{err}");
    let (code, _, err) = env.cli(&["--retention", "soon", "prune"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("\"soon\" is not a period"), "{err}");
    s.stop().await;
}

/// With a retention period, finished work goes by itself while new work keeps coming: the
/// stored tasks stay around what the period holds.
#[tokio::test(flavor = "multi_thread")]
async fn the_retention_period_prunes_in_the_background_under_load() {
    let mut env = Env::new();
    env.set("ORCHESTR8_RETENTION", "2s");
    env.shell_agent("ok", "echo working >&2; echo done", "");
    let s = env.start().await;
    let mut first = Vec::new();
    let mut stored: Vec<u64> = Vec::new();
    for round in 0..8 {
        let mut ids = Vec::new();
        for i in 0..20 {
            ids.push(
                s.submit(&format!("r{round}-{i}"), "ok", "x", json!({}))
                    .await,
            );
        }
        s.wait_all(&ids, 60).await;
        if round == 0 {
            first = ids;
        }
        let o = env.cli_json(&["status"]).await;
        let total: u64 = o["counts"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        stored.push(total);
        tokio::time::sleep(Duration::from_millis(800)).await;
    }
    // 160 tasks ran; the first ones are gone, and never more than a few rounds' worth stayed.
    let e = s
        .call_err("task_status", json!({"task_id": first[0]}))
        .await;
    assert!(e.contains("no such task"), "{e}");
    assert!(
        stored.iter().skip(4).all(|n| *n <= 100),
        "stored tasks per round: {stored:?}"
    );
    let log = env.engine_log();
    assert!(log.contains("pruned finished work"), "{log}");
    s.stop().await;
}
