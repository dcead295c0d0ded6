//! Being kept informed while waiting: progress notifications on `task_wait` and `task_run`
//! (when the request carries a progress token), and `task_run`, which hands off and waits in
//! one call — through a session, so across the socket to the engine.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::*;

fn structured(r: &rmcp::model::CallToolResult) -> Value {
    r.structured_content.clone().unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread")]
async fn task_wait_reports_progress_while_it_blocks() {
    let env = Env::new();
    env.shell_agent("echo", "cat", "");
    env.shell_agent(
        "steps",
        "echo compiling >&2; sleep 2; echo linking >&2; sleep 3; echo built",
        "",
    );
    let s = env.start().await;
    let quick = s.submit("quick", "echo", "hi", json!({})).await;
    let slow = s.submit("slow", "steps", "x", json!({})).await;
    let (r, notes) = s
        .call_with_progress(
            "task_wait",
            json!({"task_ids": [quick, slow], "timeout_seconds": 30}),
        )
        .await;
    let v = structured(&r);
    assert_eq!(v["timed_out"], false, "{v}");
    assert_eq!(v["tasks"][1]["result"], "built\n");
    assert!(notes.len() >= 2, "{notes:?}");
    // All under the request's token.
    assert!(notes
        .iter()
        .all(|n| n.progress_token == notes[0].progress_token));
    for pair in notes.windows(2) {
        assert!(pair[1].progress > pair[0].progress, "{notes:?}");
    }
    assert!(notes.iter().all(|n| n.total == Some(2.0)), "{notes:?}");
    let messages: Vec<&str> = notes.iter().filter_map(|n| n.message.as_deref()).collect();
    assert!(
        messages.iter().any(
            |m| m.contains("1 of 2 finished (quick: completed)") && m.contains("running: slow")
        ),
        "{messages:?}"
    );
    // The latest log line of the running task is quoted.
    assert!(
        messages
            .iter()
            .any(|m| m.contains("compiling") || m.contains("linking")),
        "{messages:?}"
    );
    s.stop().await;
    env.stop_engines().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn task_run_hands_off_and_answers_the_result() {
    let env = Env::new();
    env.shell_agent("echo", "cat", "");
    env.shell_agent("slow", "echo warming up >&2; sleep 6; echo slow result", "");
    env.shell_agent("fails", "echo broken >&2; exit 3", "");
    let s = env.start().await;

    let t = s
        .call(
            "task_run",
            json!({"name": "r", "agent_name": "echo", "agent_instructions": "ran"}),
        )
        .await;
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["result"], "ran");
    assert!(t["task_id"].is_string());

    let failed = s
        .call(
            "task_run",
            json!({"name": "f", "agent_name": "fails", "agent_instructions": "x"}),
        )
        .await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(
        failed["error"].as_str().unwrap().contains("exit"),
        "{failed}"
    );

    // Refused at submission, as task_async is: nothing is created.
    let err = s
        .call_err(
            "task_run",
            json!({"name": "x", "agent_name": "ghost", "agent_instructions": "x"}),
        )
        .await;
    assert!(err.contains("unknown agent"), "{err}");

    let (r, notes) = s
        .call_with_progress(
            "task_run",
            json!({"name": "s", "agent_name": "slow", "agent_instructions": "x"}),
        )
        .await;
    assert_eq!(structured(&r)["result"], "slow result\n");
    assert!(notes.len() >= 2, "{notes:?}");
    assert!(notes.iter().all(|n| n.total == Some(1.0)));
    assert!(
        notes
            .iter()
            .filter_map(|n| n.message.as_deref())
            .any(|m| m.starts_with("0 of 1 finished · running: s")),
        "{notes:?}"
    );
    let listed = s.call("list_tasks", json!({})).await;
    assert_eq!(listed["total"], 3, "each task_run made one task: {listed}");
    s.stop().await;
    env.stop_engines().await;
}

/// The engine is killed while a `task_run` waits: the wait goes on with the next engine (the
/// task is not submitted again), and the answer is the retried attempt's result.
#[tokio::test(flavor = "multi_thread")]
async fn task_run_outlives_a_killed_engine_without_submitting_twice() {
    let env = Env::new();
    env.shell_agent(
        "retry",
        "sleep 2; echo done after $ORCHESTR8_ATTEMPT",
        "max_retries: 1\n",
    );
    let s = env.start().await;
    let run = s.try_call(
        "task_run",
        json!({"name": "k", "agent_name": "retry", "agent_instructions": "x"}),
        Duration::from_secs(60),
    );
    let kill = async {
        let id = loop {
            let l = s.call("list_tasks", json!({"status": "running"})).await;
            if let Some(id) = l["tasks"][0]["task_id"].as_str() {
                break id.to_string();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        env.kill9_engines().await;
        id
    };
    let (answer, id) = tokio::join!(run, kill);
    let answer = answer.expect("task_run answered");
    let t = structured(&answer);
    assert_ne!(answer.is_error, Some(true), "{t}");
    assert_eq!(t["task_id"], id);
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["attempt"], 2, "{t}");
    assert_eq!(t["result"], "done after 2\n");
    let listed = s.call("list_tasks", json!({})).await;
    assert_eq!(listed["total"], 1, "{listed}");
    s.stop().await;
    env.stop_engines().await;
}

/// Over plain JSON-RPC: a request without a progress token gets no notes; with one, the notes
/// carry the client's own token.
#[tokio::test(flavor = "multi_thread")]
async fn notes_follow_the_clients_token_and_only_when_asked() {
    let env = Env::new();
    env.shell_agent("slow", "sleep 4; echo ok", "");
    let mut raw = env.start_raw("raw.log").await;
    let args = json!({"name": "s", "agent_name": "slow", "agent_instructions": "x"});
    let (r, others) = raw
        .request_seeing("tools/call", json!({"name": "task_run", "arguments": args}))
        .await;
    assert_eq!(r["structuredContent"]["result"], "ok\n", "{r}");
    assert!(
        others
            .iter()
            .all(|m| m["method"] != "notifications/progress"),
        "{others:?}"
    );
    let (r, others) = raw
        .request_seeing(
            "tools/call",
            json!({"name": "task_run", "arguments": args, "_meta": {"progressToken": "mine"}}),
        )
        .await;
    assert_eq!(r["structuredContent"]["status"], "completed", "{r}");
    let notes: Vec<&Value> = others
        .iter()
        .filter(|m| m["method"] == "notifications/progress")
        .collect();
    assert!(notes.len() >= 2, "{others:?}");
    assert!(notes.iter().all(|n| n["params"]["progressToken"] == "mine"));
    raw.close_stdin();
    env.wait_engines_gone().await;
}

/// A client that cancels a blocking `task_run` (`notifications/cancelled`): the call is given
/// up — no more notes under its token — and the task runs on until `task_cancel`.
#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_task_run_stops_its_notes_leaves_the_task_running_and_is_told_its_end() {
    let env = Env::new();
    env.shell_agent("long", "sleep 60", "");
    let mut raw = env.start_raw("raw.log").await;
    raw.send(
        json!({"jsonrpc": "2.0", "id": 100, "method": "tools/call", "params": {
        "name": "task_run", "_meta": {"progressToken": "c"},
        "arguments": {"name": "l", "agent_name": "long", "agent_instructions": "x"}}}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    raw.send(
        json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
        "params": {"requestId": 100, "reason": "the user pressed Esc"}}),
    )
    .await;
    // Two heartbeats' time: a call still waiting would have sent two more notes.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let (listed, before) = raw
        .request_seeing(
            "tools/call",
            json!({"name": "list_tasks", "arguments": {"status": "running"}}),
        )
        .await;
    let notes = before
        .iter()
        .filter(|m| m["method"] == "notifications/progress" && m["params"]["progressToken"] == "c")
        .count();
    assert!(notes <= 1, "{before:?}");
    assert!(
        before.iter().all(|m| m["id"] != 100),
        "a cancelled request is not answered"
    );
    let running = &listed["structuredContent"]["tasks"];
    assert_eq!(running.as_array().unwrap().len(), 1, "{listed}");
    let id = running[0]["task_id"].as_str().unwrap().to_string();
    // Cut short, the call asked for the task's end to be told by a channel event after all.
    let (_, mut seen) = raw
        .request_seeing(
            "tools/call",
            json!({"name": "task_cancel", "arguments": {"task_id": id}}),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    seen.extend(raw.request_seeing("ping", json!({})).await.1);
    let told: Vec<&Value> = seen
        .iter()
        .filter(|m| m["method"] == "notifications/claude/channel")
        .collect();
    assert_eq!(told.len(), 1, "{seen:?}");
    assert_eq!(told[0]["params"]["meta"]["task_id"], id.as_str());
    assert_eq!(told[0]["params"]["meta"]["status"], "cancelled");
    raw.close_stdin();
    env.wait_engines_gone().await;
}
