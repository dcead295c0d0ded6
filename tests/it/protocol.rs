//! The stdio protocol itself: malformed JSON-RPC never kills the server, and stdout carries
//! nothing but protocol messages.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::harness::*;

#[tokio::test(flavor = "multi_thread")]
async fn garbage_on_stdin_does_not_kill_the_server() {
    let env = Env::new();
    env.shell_agent("ok", "echo ok", "");
    let mut child = tokio::process::Command::new(BIN)
        .current_dir(env.dir.path())
        .env("ORCHESTR8_DB_PATH", env.path("db/o8.duckdb"))
        .env("ORCHESTR8_AGENTS_DIR", env.path("agents"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let send = |v: Value| format!("{v}\n");
    stdin
        .write_all(b"this is not json\n{\"jsonrpc\": \"2.0\", \"id\": \n")
        .await
        .unwrap();
    stdin
        .write_all(
            send(
                json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {},
                "clientInfo": {"name": "raw", "version": "0"}}}),
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    stdin
        .write_all(
            send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).as_bytes(),
        )
        .await
        .unwrap();
    stdin
        .write_all(
            b"{\"jsonrpc\": \"2.0\", \"id\": 7, \"method\": \"tools/call\", \"params\": 5}\n",
        )
        .await
        .unwrap();
    stdin
        .write_all(send(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "list_agents", "arguments": {}}})).as_bytes())
        .await
        .unwrap();
    let mut got_list = false;
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(Duration::from_secs(20), out.next_line()).await
    {
        // Every stdout line is a JSON-RPC message.
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line}"));
        assert_eq!(v["jsonrpc"], "2.0", "{v}");
        if v["id"] == 2 {
            assert_eq!(
                v["result"]["structuredContent"]["agents"][0]["name"], "ok",
                "{v}"
            );
            got_list = true;
            break;
        }
    }
    assert!(got_list, "no answer to a valid call after malformed input");
    drop(stdin);
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(
        status.success(),
        "server exited with {status} after stdin EOF"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tools_are_listed_with_schemas_and_descriptions() {
    let env = Env::new();
    let s = env.start().await;
    let tools = s.tools().await;
    let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            "list_agents",
            "list_tasks",
            "list_workflows",
            "task_async",
            "task_cancel",
            "task_diff",
            "task_logs",
            "task_retry",
            "task_run",
            "task_status",
            "task_wait",
            "webhook_history",
            "workflow_add_phase",
            "workflow_add_task",
            "workflow_cancel",
            "workflow_create",
            "workflow_start",
            "workflow_status",
        ]
    );
    let task_async = tools.iter().find(|t| t.name == "task_async").unwrap();
    let schema = serde_json::to_value(task_async.input_schema.as_ref()).unwrap();
    let required: Vec<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(required, vec!["name", "agent_name", "agent_instructions"]);
    for field in [
        "priority",
        "webhook_url",
        "timeout_seconds",
        "max_retries",
        "dependencies",
        "idempotency_key",
        "working_dir",
        "metadata",
        "run_at",
    ] {
        assert!(
            schema["properties"][field]["description"].is_string(),
            "{field} undocumented: {schema}"
        );
    }
    assert!(tools
        .iter()
        .all(|t| t.description.as_ref().is_some_and(|d| d.len() > 40)));
    let wait = tools.iter().find(|t| t.name == "task_wait").unwrap();
    assert!(wait
        .description
        .as_ref()
        .unwrap()
        .contains("Prefer this to polling"));
    let r = s.call("list_agents", json!({})).await;
    assert_eq!(r["agents"], json!([]));
    s.stop().await;
}
