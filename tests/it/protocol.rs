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

/// A request over the size limit, a line that is not JSON and a message that is not valid MCP
/// are each answered with a JSON-RPC error — for the request's id when there is one — and the
/// session carries on. The 20 MiB requests are written as the TypeScript SDK (Claude Code) writes
/// them, id last, and as rmcp does, id first.
#[tokio::test(flavor = "multi_thread")]
async fn oversized_and_unreadable_lines_are_answered_and_the_session_goes_on() {
    let env = Env::new();
    env.shell_agent("ok", "echo ok", "");
    let mut s = env.start_raw("session.log").await;
    let big = "x".repeat(20 << 20);
    let args = format!(r#"{{"name":"big","agent_name":"ok","agent_instructions":"{big}"}}"#);
    let id_last = format!(
        r#"{{"jsonrpc":"2.0","method":"tools/call","params":{{"name":"task_async","arguments":{args}}},"id":901}}"#
    );
    let id_first = format!(
        r#"{{"jsonrpc":"2.0","id":"big-2","method":"tools/call","params":{{"name":"task_async","arguments":{args}}}}}"#
    );
    for (line, id) in [(id_last, json!(901)), (id_first, json!("big-2"))] {
        s.send_line(line.as_bytes()).await;
        let answer = s.message_with_id(&id).await;
        assert_eq!(answer["error"]["code"], -32600, "{answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("over the limit of 4194304 bytes (4 MiB)")
                && message.contains(&format!("{} bytes", line.len())),
            "{message}"
        );
        assert_eq!(answer["error"]["data"]["limit_bytes"], 4194304, "{answer}");
    }

    s.send_line(b"this is not json").await;
    let answer = s.message_with_id(&Value::Null).await;
    assert_eq!(answer["error"]["code"], -32700, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("is not JSON"),
        "{answer}"
    );
    s.send_line(br#"{"jsonrpc":"2.0","id":77,"method":"tools/call","params":5}"#)
        .await;
    let answer = s.message_with_id(&json!(77)).await;
    assert!(answer["error"]["message"].is_string(), "{answer}");
    // A notification nobody knows is not answered; the next request is.
    s.send_line(br#"{"jsonrpc":"2.0","method":"notifications/unknown","params":{}}"#)
        .await;

    let id = s.submit("ok", json!({})).await;
    let done = s
        .call(
            "task_wait",
            json!({"task_ids": [id], "timeout_seconds": 60}),
        )
        .await;
    assert_eq!(done["tasks"][0]["status"], "completed", "{done}");
    // The refused requests submitted nothing.
    let listed = s.call("list_tasks", json!({})).await;
    assert_eq!(listed["tasks"].as_array().unwrap().len(), 1, "{listed}");
    s.close_stdin();
    let status = tokio::time::timeout(Duration::from_secs(20), s.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "session exited with {status}");
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

/// Node.js (Claude Code) connects a server's stdin and stdout to socket pairs, not to pipes. Calls are served over it — an answer larger than the socket's buffer included —
/// and the end of its input ends the session.
#[tokio::test(flavor = "multi_thread")]
async fn a_session_on_a_socket_pair_serves_calls_and_ends_at_eof() {
    use std::os::fd::OwnedFd;
    let env = Env::new();
    // 600 KB of output: the answer carrying it does not fit in a socket buffer at once.
    env.shell_agent("big", "head -c 600000 /dev/zero | tr '\\0' x", "");
    // A pair each for stdin and stdout, as libuv makes them.
    let (our_in, their_in) = std::os::unix::net::UnixStream::pair().unwrap();
    let (our_out, their_out) = std::os::unix::net::UnixStream::pair().unwrap();
    let child_in = OwnedFd::from(their_in);
    let child_out = OwnedFd::from(their_out);
    let mut child = tokio::process::Command::new(BIN)
        .current_dir(env.dir.path())
        .env("ORCHESTR8_DB_PATH", env.path("db/o8.duckdb"))
        .env("ORCHESTR8_AGENTS_DIR", env.path("agents"))
        .stdin(Stdio::from(child_in))
        .stdout(Stdio::from(child_out))
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    our_in.set_nonblocking(true).unwrap();
    our_out.set_nonblocking(true).unwrap();
    let mut write = tokio::net::UnixStream::from_std(our_in).unwrap();
    let read = tokio::net::UnixStream::from_std(our_out).unwrap();
    let mut out = BufReader::new(read).lines();
    for m in [
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "socketpair", "version": "0"}}}),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "task_run",
            "arguments": {"name": "big", "agent_name": "big", "agent_instructions": "go",
                          "timeout_seconds": 60}}}),
    ] {
        write.write_all(format!("{m}\n").as_bytes()).await.unwrap();
    }
    let mut result = None;
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(Duration::from_secs(60), out.next_line()).await
    {
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {}", &line[..200]));
        if v["id"] == 2 {
            result = Some(v);
            break;
        }
    }
    let v = result.expect("no answer to task_run over the socket");
    let task = &v["result"]["structuredContent"];
    assert_eq!(task["status"], "completed", "{}", &v.to_string()[..300]);
    assert_eq!(task["result"].as_str().map(str::len), Some(600_000));
    // The end of input, as when the client closes its side: the session exits on its own.
    write.shutdown().await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("the session did not exit at the end of its input")
        .unwrap();
    assert!(status.success(), "session exited with {status}");
}
