//! Every tool's happy path.

use serde_json::json;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_task_runs_and_every_tool_answers() {
    let env = Env::new();
    env.shell_agent(
        "echo",
        "echo \"stderr line for $ORCHESTR8_TASK_NAME attempt $ORCHESTR8_ATTEMPT\" >&2; printf 'got: '; cat; printf ' | prompt: '; cat \"$ORCHESTR8_AGENT_PROMPT_FILE\"; printf ' | agent=%s id=%s' \"$ORCHESTR8_AGENT_NAME\" \"$ORCHESTR8_TASK_ID\"",
        "max_retries: 1",
    );
    let s = env.start().await;

    let tools = s.raw("list_agents", json!({})).await;
    assert_ne!(tools.is_error, Some(true));
    let agents = s.call("list_agents", json!({})).await;
    assert_eq!(agents["agents"][0]["name"], "echo");
    assert_eq!(agents["agents"][0]["runner"], "command");
    assert!(agents["agents"][0]["path"]
        .as_str()
        .unwrap()
        .ends_with("agents/echo.md"));

    let accepted = s
        .call(
            "task_async",
            json!({"name": "greet", "agent_name": "echo", "agent_instructions": "hello world",
                   "priority": "high", "metadata": {"ticket": "ENG-1"}, "timeout_seconds": 30}),
        )
        .await;
    assert_eq!(accepted["status"], "pending");
    assert!(accepted["created_at"].as_str().unwrap().ends_with('Z'));
    let id = accepted["task_id"].as_str().unwrap().to_string();
    assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 7);

    let t = &s.wait_one(&id, 30).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(
        t["result"],
        format!("got: hello world | prompt: You are echo.\n | agent=echo id={id}")
    );
    assert_eq!(t["attempt"], 1);
    assert_eq!(t["max_retries"], 1);
    assert_eq!(t["timeout_seconds"], 30);
    assert_eq!(t["priority"], "high");
    assert_eq!(t["metadata"]["ticket"], "ENG-1");
    assert!(t["error"].is_null());
    assert!(time(t, "completed_at") >= time(t, "started_at"));
    assert!(time(t, "started_at") >= time(t, "created_at"));

    let st = s.status(&id).await;
    assert_eq!(st["task_id"], id);
    assert_eq!(st["status"], "completed");
    let logs = st["logs"].as_array().unwrap();
    let messages: Vec<&str> = logs
        .iter()
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    assert!(
        messages.contains(&"stderr line for greet attempt 1"),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m.contains("attempt 1 completed")),
        "{messages:?}"
    );

    let all = s.call("task_logs", json!({"task_id": id})).await;
    let lines = all["logs"].as_array().unwrap();
    let seqs: Vec<i64> = lines.iter().map(|l| l["seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "seqs {seqs:?}");
    let after = s
        .call(
            "task_logs",
            json!({"task_id": id, "after_seq": seqs[1], "limit": 1}),
        )
        .await;
    assert_eq!(after["logs"].as_array().unwrap().len(), 1);
    assert_eq!(after["logs"][0]["seq"], seqs[2]);

    let listed = s
        .call(
            "list_tasks",
            json!({"status": "completed", "agent_name": "echo"}),
        )
        .await;
    assert_eq!(listed["total"], 1);
    assert_eq!(listed["tasks"][0]["task_id"], id);
    assert!(listed["tasks"][0].get("result").is_none());
    let none = s.call("list_tasks", json!({"status": "failed"})).await;
    assert_eq!(none["total"], 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn list_tasks_pages_newest_first() {
    let env = Env::new();
    env.shell_agent("ok", "true", "");
    let s = env.start().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(s.submit(&format!("t{i}"), "ok", "x", json!({})).await);
    }
    s.wait_all(&ids, 30).await;
    let page = s.call("list_tasks", json!({"limit": 2, "offset": 1})).await;
    assert_eq!(page["total"], 5);
    let got: Vec<&str> = page["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["task_id"].as_str().unwrap())
        .collect();
    assert_eq!(got, vec![ids[3].as_str(), ids[2].as_str()]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn idempotency_key_returns_the_first_task() {
    // One worker: a repeated key, refused while the worker is free, must give back the slot it
    // claimed to start at once, or the next task would never run.
    let mut env = Env::new();
    env.set("ORCHESTR8_WORKERS", "1");
    env.shell_agent("ok", "echo done", "");
    let s = env.start().await;
    let args = json!({"name": "once", "agent_name": "ok", "agent_instructions": "x", "idempotency_key": "deploy-42"});
    let first = s.call("task_async", args.clone()).await;
    let second = s.call("task_async", args.clone()).await;
    assert_eq!(first["task_id"], second["task_id"]);
    assert_eq!(first["existing"], false);
    assert_eq!(second["existing"], true);
    let first_id = first["task_id"].as_str().unwrap().to_string();
    s.wait_all(std::slice::from_ref(&first_id), 30).await;
    let again = s.call("task_async", args.clone()).await;
    assert_eq!(
        (&again["task_id"], &again["existing"]),
        (&first["task_id"], &json!(true))
    );
    let next = s.submit("next", "ok", "x", json!({})).await;
    assert_eq!(s.wait_one(&next, 30).await["status"], "completed");
    let listed = s
        .call(
            "list_tasks",
            json!({"status": "completed", "agent_name": "ok"}),
        )
        .await;
    assert_eq!(
        listed["total"], 2,
        "the refused start left no task: {listed}"
    );
    s.stop().await;
    env.stop_engines().await;
    // Still the same task after a restart.
    let s = env.start().await;
    let third = s.call("task_async", args).await;
    assert_eq!(third["task_id"], first["task_id"]);
    assert_eq!(third["status"], "completed");
    let listed = s.call("list_tasks", json!({})).await;
    assert_eq!(listed["total"], 2);
    s.stop().await;
}

/// Parsed agent files are reused while the file is unchanged (only once it has been still for a
/// while): an edit of a settled file, even one of the same length, still takes effect, and so
/// does a new body in `ORCHESTR8_AGENT_PROMPT_FILE`.
#[tokio::test(flavor = "multi_thread")]
async fn an_edit_of_a_settled_agent_file_takes_effect() {
    let env = Env::new();
    let write = |word: &str| {
        env.agent(
            "settled",
            "runner: command\ncommand: [\"sh\", \"-c\", \"cat \\\"$ORCHESTR8_AGENT_PROMPT_FILE\\\"\"]",
            word,
        );
        // An hour old: settled, so the server keeps what it parsed.
        let f = std::fs::File::options()
            .write(true)
            .open(env.path("agents/settled.md"))
            .unwrap();
        f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(3600))
            .unwrap();
    };
    write("first");
    let s = env.start().await;
    for _ in 0..2 {
        let id = s.submit("read", "settled", "x", json!({})).await;
        assert_eq!(s.wait_all(&[id], 30).await[0]["result"], "first");
    }
    write("again");
    let id = s.submit("read", "settled", "x", json!({})).await;
    assert_eq!(s.wait_all(&[id], 30).await[0]["result"], "again");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_edited_agent_takes_effect_without_restart() {
    let env = Env::new();
    env.shell_agent("edit-me", "echo old", "");
    let s = env.start().await;
    let run_at = (chrono::Utc::now() + chrono::Duration::milliseconds(1500)).to_rfc3339();
    let id = s
        .submit("later", "edit-me", "x", json!({"run_at": run_at}))
        .await;
    env.shell_agent("edit-me", "echo new", "");
    let t = &s.wait_all(&[id], 30).await[0];
    assert_eq!(t["result"], "new\n");
    assert!(time(t, "started_at") >= time(t, "scheduled_at"));
    s.stop().await;
}
