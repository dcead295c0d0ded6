//! Bad input gets a clear `isError` result, and the server stays up.

use serde_json::{json, Value};

use crate::harness::*;

fn task(extra: Value) -> Value {
    let mut args = json!({"name": "t", "agent_name": "ok", "agent_instructions": "x"});
    args.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    args
}

#[tokio::test(flavor = "multi_thread")]
async fn every_bad_argument_is_refused_with_a_reason() {
    let env = Env::new();
    env.shell_agent("ok", "echo ok", "");
    std::fs::write(
        env.path("agents/broken.md"),
        "---\nname: broken\nrunner: command\n---\n",
    )
    .unwrap();
    std::fs::write(
        env.path("agents/remote.md"),
        "---\nname: remote\nrunner: anthropic\n---\nbody\n",
    )
    .unwrap();
    let s = env.start().await;

    let cases: Vec<(Value, &str)> = vec![
        (
            task(json!({"agent_name": "nobody"})),
            "unknown agent \"nobody\"",
        ),
        (task(json!({"agent_name": "../x"})), "invalid agent_name"),
        (
            task(json!({"agent_name": "/etc/passwd"})),
            "invalid agent_name",
        ),
        (task(json!({"agent_name": "Upper"})), "invalid agent_name"),
        (task(json!({"agent_name": ""})), "invalid agent_name"),
        (task(json!({"agent_name": "broken"})), "no `command:` list"),
        (
            task(json!({"agent_name": "remote"})),
            "ANTHROPIC_API_KEY is not set",
        ),
        (task(json!({"name": " "})), "name must be"),
        (
            task(json!({"agent_instructions": ""})),
            "agent_instructions is empty",
        ),
        (
            task(json!({"agent_instructions": "x".repeat(1024 * 1024 + 1)})),
            "limit is 1048576",
        ),
        (task(json!({"priority": "urgent"})), "priority \"urgent\""),
        (
            task(json!({"timeout_seconds": 0})),
            "timeout_seconds must be between 1 and 86400",
        ),
        (
            task(json!({"timeout_seconds": 86401})),
            "timeout_seconds must be between 1 and 86400",
        ),
        (
            task(json!({"timeout_seconds": "ten"})),
            "timeout_seconds: invalid type",
        ),
        (
            task(json!({"max_retries": 11})),
            "max_retries must be between 0 and 10",
        ),
        (
            task(json!({"max_retries": -1})),
            "max_retries must be between 0 and 10",
        ),
        (
            task(json!({"webhook_url": "ftp://example.com/x"})),
            "http or https",
        ),
        (task(json!({"webhook_url": "not a url"})), "not a valid URL"),
        (task(json!({"dependencies": ["nope"]})), "is not a task id"),
        (
            task(json!({"dependencies": ["0190f5c2-7b1e-7cc3-8a5e-3f1d2c4b5a69"]})),
            "does not exist",
        ),
        (
            task(json!({"metadata": [1, 2]})),
            "metadata must be a JSON object",
        ),
        (
            task(json!({"run_at": "tomorrow"})),
            "run_at \"tomorrow\" is not an RFC 3339 time",
        ),
        (
            task(json!({"working_dir": "/definitely/not/here"})),
            "not an existing directory",
        ),
        (
            task(json!({"idempotency_key": ""})),
            "idempotency_key must be",
        ),
        (task(json!({"colour": "red"})), "unknown field `colour`"),
        (
            json!({"name": "t", "agent_name": "ok"}),
            "missing field `agent_instructions`",
        ),
    ];
    for (args, expect) in cases {
        let msg = s.call_err("task_async", args.clone()).await;
        assert!(
            msg.contains(expect),
            "for {args}: expected {expect:?} in {msg:?}"
        );
    }

    let bad_id = s.call_err("task_status", json!({"task_id": "123"})).await;
    assert!(bad_id.contains("is not a task id"), "{bad_id}");
    let unknown = s
        .call_err(
            "task_status",
            json!({"task_id": "0190f5c2-7b1e-7cc3-8a5e-3f1d2c4b5a69"}),
        )
        .await;
    assert!(unknown.contains("unknown task_id"), "{unknown}");
    assert!(s
        .call_err(
            "task_logs",
            json!({"task_id": "0190f5c2-7b1e-7cc3-8a5e-3f1d2c4b5a69"})
        )
        .await
        .contains("unknown task_id"));
    assert!(s
        .call_err(
            "task_logs",
            json!({"task_id": "0190f5c2-7b1e-7cc3-8a5e-3f1d2c4b5a69", "limit": 0})
        )
        .await
        .contains("limit must be between 1 and 1000"));
    assert!(s
        .call_err("task_wait", json!({"task_ids": []}))
        .await
        .contains("task_ids must list 1 to 10000"));
    assert!(s
        .call_err(
            "task_wait",
            json!({"task_ids": ["0190f5c2-7b1e-7cc3-8a5e-3f1d2c4b5a69"]})
        )
        .await
        .contains("unknown task_ids"));
    let id = s.submit("t", "ok", "x", json!({})).await;
    assert!(s
        .call_err("task_wait", json!({"task_ids": [id], "mode": "some"}))
        .await
        .contains("mode \"some\""));
    assert!(s
        .call_err(
            "task_wait",
            json!({"task_ids": [id], "timeout_seconds": 601})
        )
        .await
        .contains("between 1 and 600"));
    assert!(s
        .call_err("list_tasks", json!({"status": "done"}))
        .await
        .contains("status \"done\""));
    assert!(s
        .call_err("list_tasks", json!({"limit": 1001}))
        .await
        .contains("limit must be between 1 and 1000"));
    assert!(s
        .call_err("no_such_tool", json!({}))
        .await
        .contains("unknown tool"));

    // State changes that are not allowed.
    s.wait_one(&id, 30).await;
    let msg = s.call_err("task_cancel", json!({"task_id": id})).await;
    assert!(msg.contains("already completed"), "{msg}");
    let msg = s.call_err("task_retry", json!({"task_id": id})).await;
    assert!(
        msg.contains("only failed or cancelled tasks can be retried"),
        "{msg}"
    );

    // Still serving.
    let agents = s.call("list_agents", json!({})).await;
    let names: Vec<&str> = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        vec!["ok", "remote"],
        "the broken agent file is skipped in the listing"
    );
    s.stop().await;
}
