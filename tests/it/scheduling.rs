//! Scheduling: priorities, dependencies, retries, timeouts, cancellation, concurrency limits,
//! task_wait.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread")]
async fn one_worker_takes_the_highest_priority_oldest_first() {
    let mut env = Env::new();
    env.set("ORCHESTR8_WORKERS", "1");
    let order = env.path("order.txt");
    env.shell_agent("blocker", "sleep 1", "");
    env.shell_agent(
        "rec",
        &format!("echo \"$ORCHESTR8_TASK_NAME\" >> {}", order.display()),
        "",
    );
    let s = env.start().await;
    let blocker = s.submit("blocker", "blocker", "x", json!({})).await;
    s.until(&blocker, "running", |t| t["status"] == "running")
        .await;
    let mut ids = Vec::new();
    for (name, p) in [
        ("low", "low"),
        ("normal-1", "normal"),
        ("high", "high"),
        ("normal-2", "medium"),
        ("critical", "critical"),
    ] {
        ids.push(s.submit(name, "rec", "x", json!({"priority": p})).await);
    }
    ids.push(blocker);
    s.wait_all(&ids, 30).await;
    assert_eq!(
        read_lines(&order),
        vec!["critical", "high", "normal-1", "normal-2", "low"]
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dependencies_order_tasks_and_failures_cancel_dependents() {
    let env = Env::new();
    env.shell_agent("slow", "sleep 0.5; echo first", "");
    env.shell_agent("ok", "echo second", "");
    // The pause lets the test submit the dependents below before `f` fails (a dependency that
    // has already failed is refused at submit, which is checked last).
    env.shell_agent("bad", "sleep 0.3; echo broken >&2; exit 3", "");
    let s = env.start().await;

    let a = s.submit("a", "slow", "x", json!({})).await;
    let b = s.submit("b", "ok", "x", json!({"dependencies": [a]})).await;
    let done = s.wait_all(&[a.clone(), b.clone()], 30).await;
    assert_eq!(done[1]["status"], "completed");
    assert!(
        time(&done[1], "started_at") >= time(&done[0], "completed_at"),
        "b started before a completed"
    );
    assert_eq!(done[1]["dependencies"], json!([a]));
    // Depending on an already completed task is fine.
    let c = s.submit("c", "ok", "x", json!({"dependencies": [a]})).await;
    assert_eq!(s.wait_all(&[c], 30).await[0]["status"], "completed");

    let f = s.submit("f", "bad", "x", json!({"max_retries": 0})).await;
    let d1 = s
        .submit("d1", "ok", "x", json!({"dependencies": [f]}))
        .await;
    let d2 = s
        .submit("d2", "ok", "x", json!({"dependencies": [d1]}))
        .await;
    let done = s.wait_all(&[f.clone(), d1.clone(), d2.clone()], 30).await;
    assert_eq!(done[0]["status"], "failed");
    assert!(
        done[0]["error"].as_str().unwrap().contains("exit status 3"),
        "{}",
        done[0]
    );
    assert!(
        done[0]["error"].as_str().unwrap().contains("broken"),
        "{}",
        done[0]
    );
    assert_eq!(done[1]["status"], "cancelled");
    assert!(
        done[1]["error"].as_str().unwrap().contains(&f),
        "{}",
        done[1]
    );
    assert_eq!(done[2]["status"], "cancelled", "cancellation cascades");
    assert!(done[2]["started_at"].is_null());
    // A dependency that has already failed is refused at submit.
    let msg = s.call_err("task_async", json!({"name": "g", "agent_name": "ok", "agent_instructions": "x", "dependencies": [f]})).await;
    assert!(msg.contains("is failed"), "{msg}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_retry_with_backoff_then_fail_for_good() {
    let mut env = Env::new();
    env.set("ORCHESTR8_RETRY_BACKOFF_BASE_MS", "300");
    let starts = env.path("starts.txt");
    env.shell_agent(
        "flaky",
        &format!(
            "date +%s.%N >> {}; echo \"attempt $ORCHESTR8_ATTEMPT failing\" >&2; exit 1",
            starts.display()
        ),
        "",
    );
    env.shell_agent(
        "second-time",
        "[ \"$ORCHESTR8_ATTEMPT\" -ge 2 ] && echo fine || exit 1",
        "max_retries: 1",
    );
    let s = env.start().await;
    let id = s
        .submit("flaky", "flaky", "x", json!({"max_retries": 2}))
        .await;
    let ok = s.submit("eventually", "second-time", "x", json!({})).await;
    let done = s.wait_all(&[id.clone(), ok.clone()], 60).await;
    let t = &done[0];
    assert_eq!(t["status"], "failed");
    assert_eq!(t["attempt"], 3, "one run plus two retries");
    assert!(
        t["error"].as_str().unwrap().contains("attempt 3 failing"),
        "{t}"
    );
    let times: Vec<f64> = read_lines(&starts)
        .iter()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(times.len(), 3);
    // Equal jitter: each delay is at least half the nominal one (300 ms, then 600 ms).
    assert!(
        times[1] - times[0] >= 0.15,
        "first back-off too short: {times:?}"
    );
    assert!(
        times[2] - times[1] >= 0.30,
        "second back-off too short: {times:?}"
    );
    let logs = s.call("task_logs", json!({"task_id": id})).await;
    let text: Vec<String> = logs["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["message"].as_str().unwrap().to_string())
        .collect();
    assert!(text.iter().any(|m| m.contains("retry 1 of 2")), "{text:?}");
    assert!(text.iter().any(|m| m.contains("retry 2 of 2")), "{text:?}");
    assert!(
        text.iter().any(|m| m.contains("no retries left")),
        "{text:?}"
    );

    assert_eq!(done[1]["status"], "completed");
    assert_eq!(done[1]["attempt"], 2, "failed once, succeeded on its retry");
    assert_eq!(done[1]["result"], "fine\n");

    // A manual retry gives a fresh budget and keeps counting attempts.
    let again = s.call("task_retry", json!({"task_id": id})).await;
    assert_eq!(again["status"], "pending");
    let t = &s.wait_all(&[id], 60).await[0];
    assert_eq!(t["status"], "failed");
    assert_eq!(t["attempt"], 6);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_that_runs_too_long_is_stopped() {
    let env = Env::new();
    env.shell_agent("sleeper", "sleep 977", "");
    let s = env.start().await;
    let began = Instant::now();
    let id = s
        .submit("slow", "sleeper", "x", json!({"timeout_seconds": 1}))
        .await;
    let t = &s.wait_all(&[id], 30).await[0];
    assert_eq!(t["status"], "failed");
    assert!(
        t["error"].as_str().unwrap().contains("timed out after 1s"),
        "{t}"
    );
    assert!(began.elapsed() < Duration::from_secs(8));
    assert!(
        processes_with("sleep 977").is_empty(),
        "the agent's process is still there"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_pending_and_running_tasks() {
    let env = Env::new();
    env.shell_agent("sleeper", "sh -c 'sleep 988'; echo never", "");
    env.shell_agent("ok", "echo ok", "");
    let s = env.start().await;

    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let pending = s.submit("later", "ok", "x", json!({"run_at": later})).await;
    let c = s.call("task_cancel", json!({"task_id": pending})).await;
    assert_eq!(c["status"], "cancelled");
    assert!(c["started_at"].is_null());

    let running = s.submit("sleeping", "sleeper", "x", json!({})).await;
    let dependent = s
        .submit("after", "ok", "x", json!({"dependencies": [running]}))
        .await;
    s.until(&running, "running", |t| t["status"] == "running")
        .await;
    for _ in 0..100 {
        if !processes_with("sleep 988").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !processes_with("sleep 988").is_empty(),
        "agent never started"
    );
    let c = s.call("task_cancel", json!({"task_id": running})).await;
    assert_eq!(c["status"], "cancelled", "{c}");
    assert!(
        processes_with("sleep 988").is_empty(),
        "cancel left the agent's child running"
    );
    let d = &s.wait_all(&[dependent], 10).await[0];
    assert_eq!(d["status"], "cancelled");

    // A cancelled task can be retried.
    let r = s.call("task_retry", json!({"task_id": pending})).await;
    assert_eq!(r["status"], "pending");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn max_concurrency_limits_one_agent_not_others() {
    let mut env = Env::new();
    env.set("ORCHESTR8_WORKERS", "4");
    let spans = env.path("spans.txt");
    env.shell_agent(
        "single",
        &format!(
            "echo \"start $(date +%s.%N)\" >> {0}; sleep 0.3; echo \"end $(date +%s.%N)\" >> {0}",
            spans.display()
        ),
        "max_concurrency: 1",
    );
    env.shell_agent("free", "sleep 0.3", "");
    let s = env.start().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(s.submit(&format!("s{i}"), "single", "x", json!({})).await);
    }
    let others: Vec<String> = futures_join(&s, 3).await;
    let done = s.wait_all(&ids, 30).await;
    assert!(done.iter().all(|t| t["status"] == "completed"));
    let lines = read_lines(&spans);
    // Strictly alternating start/end: never two at once.
    for (i, l) in lines.iter().enumerate() {
        assert!(
            l.starts_with(if i % 2 == 0 { "start" } else { "end" }),
            "{lines:?}"
        );
    }
    s.wait_all(&others, 30).await;
    s.stop().await;
}

async fn futures_join(s: &Server, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(s.submit(&format!("f{i}"), "free", "x", json!({})).await);
    }
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn task_wait_any_all_and_time_out() {
    let env = Env::new();
    env.shell_agent("fast", "echo fast", "");
    env.shell_agent("slow", "sleep 3; echo slow", "");
    let s = env.start().await;
    let fast = s.submit("fast", "fast", "x", json!({})).await;
    let slow = s.submit("slow", "slow", "x", json!({})).await;

    let began = Instant::now();
    let any = s
        .call(
            "task_wait",
            json!({"task_ids": [slow, fast], "mode": "any", "timeout_seconds": 20}),
        )
        .await;
    assert_eq!(any["timed_out"], false);
    assert!(
        began.elapsed() < Duration::from_millis(2500),
        "any waited for the slow task"
    );
    assert_eq!(
        any["tasks"][0]["task_id"], slow,
        "tasks come back in the order asked"
    );
    assert_eq!(any["tasks"][1]["status"], "completed");

    let began = Instant::now();
    let timed = s
        .call(
            "task_wait",
            json!({"task_ids": [fast, slow], "timeout_seconds": 1}),
        )
        .await;
    assert_eq!(timed["timed_out"], true);
    assert!(began.elapsed() >= Duration::from_millis(900));
    assert_eq!(timed["tasks"][1]["status"], "running");

    let all = s.wait_all(&[fast, slow], 20).await;
    assert!(all.iter().all(|t| t["status"] == "completed"));
    s.stop().await;
}
