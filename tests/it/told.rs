//! Being told without asking: `task_run` as a protocol task under the MCP Tasks extension,
//! Claude Code channel events to the session that handed work off, and the `ended` command
//! behind the plugin's hooks — all through the real binary and rmcp's client.

use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CancelTaskParams, GetTaskParams, TaskPayload,
    TaskStatus,
};
use serde_json::{json, Value};

use crate::harness::*;

fn params(tool: &str, args: Value) -> CallToolRequestParams {
    let mut p = CallToolRequestParams::new(tool.to_string());
    p.arguments = args.as_object().cloned();
    p
}

/// Calls `task_run` of `agent` as a protocol task; the task's id.
async fn run_as_protocol_task(s: &Server, name: &str, agent: &str) -> String {
    let answer = s
        .client()
        .call_tool_once(params(
            "task_run",
            json!({"name": name, "agent_name": agent, "agent_instructions": "x"}),
        ))
        .await
        .expect("tools/call");
    let CallToolResponse::Task(created) = answer else {
        panic!("expected a protocol task, got {answer:?}")
    };
    assert_eq!(created.task.status, TaskStatus::Working);
    created.task.task_id
}

/// Asks `tasks/get` until the protocol task leaves `working`.
async fn until_settled(s: &Server, id: &str) -> rmcp::model::DetailedTask {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got = s
            .client()
            .get_task(GetTaskParams::new(id))
            .await
            .expect("tasks/get")
            .task;
        if got.status() != TaskStatus::Working {
            return got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still working: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn task_run_answers_a_protocol_task_when_the_client_declares_the_extension() {
    let env = Env::new();
    env.shell_agent("slow", "sleep 2; echo ran: $(cat)", "");
    env.shell_agent("forever", "sleep 600", "");
    let s = env.start_declaring_tasks().await;

    let id = run_as_protocol_task(&s, "r", "slow").await;
    // The protocol task is the task: its id is a task_id.
    let t = s.status(&id).await;
    assert_eq!(t["name"], "r");

    let done = until_settled(&s, &id).await;
    assert_eq!(done.status(), TaskStatus::Completed);
    let TaskPayload::Completed { result } = &done.payload else {
        panic!("{done:?}")
    };
    assert_eq!(result["structuredContent"]["status"], "completed");
    assert_eq!(result["structuredContent"]["result"], "ran: x\n");

    // tasks/cancel stops the task itself.
    let long = run_as_protocol_task(&s, "long", "forever").await;
    s.until(&long, "running", |t| t["status"] == "running")
        .await;
    s.client()
        .cancel_task(CancelTaskParams::new(long.clone()))
        .await
        .expect("tasks/cancel");
    assert_eq!(
        until_settled(&s, &long).await.status(),
        TaskStatus::Cancelled
    );
    assert_eq!(s.status(&long).await["status"], "cancelled");
    // A task that has ended cannot be cancelled again: the client is told why.
    let err = s
        .client()
        .cancel_task(CancelTaskParams::new(long.clone()))
        .await
        .expect_err("already ended");
    assert!(err.to_string().contains("already cancelled"), "{err}");

    // An unknown id is the client's error, said as such.
    let err = s
        .client()
        .get_task(GetTaskParams::new("not-a-task"))
        .await
        .expect_err("unknown id");
    assert!(err.to_string().contains("not a task id"), "{err}");
    s.stop().await;
    env.stop_engines().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_extension_task_run_blocks_answers_the_task_object_and_is_not_told_again() {
    let env = Env::new();
    env.shell_agent("echo", "cat", "");
    let s = env.start().await;
    let t = s
        .call(
            "task_run",
            json!({"name": "r", "agent_name": "echo", "agent_instructions": "plain"}),
        )
        .await;
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["result"], "plain");
    // The answer told the end: no channel event says it again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(s.channel_events().is_empty(), "{:?}", s.channel_events());
    s.stop().await;
    env.stop_engines().await;
}

/// Waits until `s` has received `n` channel events.
async fn channel_events(s: &Server, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let got = s.channel_events();
        if got.len() >= n {
            return got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {n} channel events: {got:?}\n{}",
            got.len(),
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_session_that_handed_work_off_is_told_when_it_ends_and_no_other() {
    let env = Env::new();
    env.shell_agent("echo", "cat", "");
    env.shell_agent("fails", "echo 'disk on fire' >&2; exit 3", "");
    let a = env.start().await;
    let b = env.start().await;
    let caps = a
        .client()
        .peer_info()
        .expect("server info")
        .capabilities
        .clone();
    assert!(
        caps.experimental
            .as_ref()
            .is_some_and(|e| e.contains_key("claude/channel")),
        "{caps:?}"
    );

    let ok = a
        .submit("build", "echo", "line one\nline two", json!({}))
        .await;
    let bad = a.submit("deploy", "fails", "x", json!({})).await;
    let events = channel_events(&a, 2).await;
    let of = |id: &str| {
        events
            .iter()
            .find(|e| e["meta"]["task_id"] == id)
            .unwrap_or_else(|| panic!("no event for {id}: {events:?}"))
            .clone()
    };
    let e = of(&ok);
    assert_eq!(e["meta"]["status"], "completed");
    assert_eq!(e["meta"]["agent"], "echo");
    let content = e["content"].as_str().unwrap();
    assert!(
        content.contains("\"build\"") && content.contains("line one"),
        "{content}"
    );
    assert!(content.contains("task_status"), "{content}");
    let e = of(&bad);
    assert_eq!(e["meta"]["status"], "failed");
    assert!(
        e["content"].as_str().unwrap().contains("disk on fire"),
        "{e}"
    );
    // Every meta value is a string.
    assert!(events.iter().all(|e| e["meta"]
        .as_object()
        .unwrap()
        .values()
        .all(Value::is_string)));

    // A workflow is told as a whole, to the session that created it.
    let wf = b.call("workflow_create", json!({"name": "release"})).await["workflow_id"]
        .as_str()
        .unwrap()
        .to_string();
    b.call(
        "workflow_add_phase",
        json!({"workflow_id": wf, "phase_id": "p", "name": "P"}),
    )
    .await;
    b.call(
        "workflow_add_task",
        json!({"workflow_id": wf, "phase_id": "p", "name": "t", "agent_name": "echo", "agent_instructions": "w"}),
    )
    .await;
    b.call("workflow_start", json!({"workflow_id": wf})).await;
    let events_b = channel_events(&b, 1).await;
    assert_eq!(events_b[0]["meta"]["workflow_id"], wf.as_str());
    assert_eq!(events_b[0]["meta"]["status"], "completed");
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Each was told only to its own session, once.
    assert_eq!(a.channel_events().len(), 2, "{:?}", a.channel_events());
    assert_eq!(b.channel_events().len(), 1, "{:?}", b.channel_events());
    a.stop().await;
    b.stop().await;
    env.stop_engines().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_channel_can_be_switched_off() {
    let mut env = Env::new();
    env.set("ORCHESTR8_CHANNEL", "false");
    env.shell_agent("echo", "cat", "");
    let s = env.start().await;
    let caps = s
        .client()
        .peer_info()
        .expect("server info")
        .capabilities
        .clone();
    assert!(caps.experimental.is_none(), "{caps:?}");
    let id = s.submit("quiet", "echo", "x", json!({})).await;
    s.wait_one(&id, 20).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(s.channel_events().is_empty());
    s.stop().await;
    env.stop_engines().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ended_hook_tells_each_ended_task_of_its_project_once() {
    let env = Env::new();
    env.shell_agent("echo", "cat", "");
    env.shell_agent("fails", "echo 'no space left' >&2; exit 1", "");
    let proj_a = env.path("proj-a");
    let proj_b = env.path("proj-b");
    std::fs::create_dir_all(proj_a.join("sub")).unwrap();
    std::fs::create_dir_all(&proj_b).unwrap();

    let a = env.start_in(&proj_a).await;
    let sub = env.start_in(&proj_a.join("sub")).await;
    let b = env.start_in(&proj_b).await;
    let a1 = a
        .submit("alpha", "echo", "alpha result\nmore", json!({}))
        .await;
    let a2 = sub.submit("beta", "fails", "x", json!({})).await;
    let b1 = b.submit("gamma", "echo", "gamma result", json!({})).await;
    a.wait_all(&[a1.clone(), a2.clone()], 20).await;
    b.wait_one(&b1, 20).await;

    let hook = |dir: &std::path::Path| {
        let mut cmd = env.command();
        cmd.args(["ended", "--hook"])
            .env("CLAUDE_PROJECT_DIR", dir)
            .current_dir(env.path("work"))
            .stdin(std::process::Stdio::null());
        cmd
    };
    let run = |mut cmd: tokio::process::Command| async move {
        let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
            .await
            .expect("in time")
            .expect("runs");
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    let told = run(hook(&proj_a)).await;
    assert!(told.contains("2 background tasks"), "{told}");
    assert!(
        told.contains(&a1) && told.contains("alpha result"),
        "{told}"
    );
    assert!(
        told.contains(&a2) && told.contains("failed: exit status 1; end of stderr: no space left"),
        "{told}"
    );
    assert!(!told.contains(&b1) && !told.contains("gamma"), "{told}");
    assert!(
        !told.contains("more"),
        "one line of the result only: {told}"
    );
    // Told once: the next prompt hears nothing.
    assert_eq!(run(hook(&proj_a)).await, "");

    // A task that ends later is told at the next look, alone.
    let a3 = a.submit("delta", "echo", "delta result", json!({})).await;
    a.wait_one(&a3, 20).await;
    let told = run(hook(&proj_a)).await;
    assert!(
        told.contains("1 background task ") && told.contains(&a3),
        "{told}"
    );
    assert!(!told.contains(&a1), "{told}");

    // The other project hears of its own task only.
    let told = run(hook(&proj_b)).await;
    assert!(told.contains(&b1) && !told.contains(&a1), "{told}");
    assert_eq!(run(hook(&proj_b)).await, "");

    // Outside a hook the command says when there is nothing.
    let (code, out, _) = env
        .cli(&["ended", "--project", proj_a.to_str().unwrap()])
        .await;
    assert_eq!(code, 0);
    assert!(out.contains("no task submitted from"), "{out}");
    a.stop().await;
    sub.stop().await;
    b.stop().await;
    env.stop_engines().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ended_hook_never_fails_a_prompt() {
    let env = Env::new();
    // A project that is not a directory is an error, said on stderr; the status stays 0.
    let (code, out, err) = env
        .cli(&["ended", "--hook", "--project", "relative/nowhere"])
        .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "");
    assert!(err.contains("absolute"), "{err}");
    env.stop_engines().await;
}
