//! The claude, anthropic and openai runners, against a fake `claude` executable and local HTTP
//! stand-ins for the APIs.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::*;
use crate::stub_http::{Reply, Stub};

/// A fake Claude Code: records argv, stdin and cwd next to itself, then prints a stream-json
/// conversation chosen by `FAKE_CLAUDE_MODE` (set through the agent's `env`).
const FAKE_CLAUDE: &str = r#"#!/bin/sh
dir="$(dirname "$0")"
printf '%s\0' "$@" > "$dir/argv"
cat > "$dir/stdin"
pwd > "$dir/cwd"
init='{"type":"system","subtype":"init","cwd":"/repo","session_id":"sess-123","model":"claude-sonnet-4-5","tools":["Read","Grep"]}'
case "$FAKE_CLAUDE_MODE" in
ok)
  echo "$init"
  echo '{"type":"assistant","message":{"role":"assistant","content":[{"type":"text","text":"Let me read the file."},{"type":"tool_use","id":"toolu_1","name":"Read","input":{"file_path":"/repo/src/main.rs"}}]},"session_id":"sess-123"}'
  echo '{"type":"user","message":{"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","content":"fn main() {}"}]},"session_id":"sess-123"}'
  echo '{"type":"assistant","message":{"role":"assistant","content":[{"type":"text","text":"The file is fine."}]},"session_id":"sess-123"}'
  echo '{"type":"result","subtype":"success","is_error":false,"duration_ms":1234,"num_turns":2,"result":"Reviewed: no bugs found.","session_id":"sess-123","total_cost_usd":0.0421,"usage":{"input_tokens":1200,"output_tokens":340}}'
  ;;
error)
  echo "$init"
  echo '{"type":"result","subtype":"error_during_execution","is_error":true,"num_turns":1,"result":"API Error: 500 internal","session_id":"sess-123","total_cost_usd":0.001,"usage":{"input_tokens":10,"output_tokens":0}}'
  exit 1
  ;;
noresult)
  echo "$init"
  echo '{"type":"assistant","message":{"role":"assistant","content":[{"type":"text","text":"Working..."}]}}'
  echo "segfault in the fake" >&2
  exit 3
  ;;
garbage)
  echo "$init"
  echo "Error: not logged in"
  sleep 30
  ;;
esac
"#;

fn claude_env(mode: &str) -> Env {
    let mut env = Env::new();
    let bin = env.script("bin/claude", FAKE_CLAUDE);
    env.set("ORCHESTR8_CLAUDE_BIN", bin.to_str().unwrap());
    env.agent(
        "reviewer",
        &format!(
            "model: sonnet\ntools: Read, Grep\npermission_mode: acceptEdits\nmax_budget_usd: 0.5\nenv: {{FAKE_CLAUDE_MODE: {mode}}}"
        ),
        "You are a careful reviewer.\nBe brief.\n",
    );
    env
}

#[tokio::test(flavor = "multi_thread")]
async fn claude_runner_streams_logs_and_records_result_cost_and_session() {
    let env = claude_env("ok");
    let s = env.start().await;
    let work = env.path("work");
    let id = s
        .submit(
            "review",
            "reviewer",
            "Review src/main.rs\nfor bugs.",
            json!({"working_dir": work}),
        )
        .await;
    let t = s.wait_one(&id, 30).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["result"], "Reviewed: no bugs found.");
    assert_eq!(t["usage"]["cost_usd"], 0.0421);
    assert_eq!(t["usage"]["input_tokens"], 1200);
    assert_eq!(t["usage"]["output_tokens"], 340);
    assert_eq!(t["metadata"]["session_id"], "sess-123");
    assert_eq!(t["metadata"]["num_turns"], 2);

    // The agent has no `runner:`, so the default (claude) ran it, with exactly these arguments.
    let argv = std::fs::read_to_string(env.path("bin/argv")).unwrap();
    let argv: Vec<&str> = argv.trim_end_matches('\0').split('\0').collect();
    assert_eq!(
        argv,
        [
            "-p",
            "--output-format",
            "stream-json",
            "--verbose",
            "--append-system-prompt",
            "You are a careful reviewer.\nBe brief.\n",
            "--model",
            "sonnet",
            "--allowedTools",
            "Read,Grep",
            "--permission-mode",
            "acceptEdits",
            "--max-budget-usd",
            "0.5",
        ]
    );
    // Instructions on stdin, never in argv.
    assert_eq!(
        std::fs::read_to_string(env.path("bin/stdin")).unwrap(),
        "Review src/main.rs\nfor bugs."
    );
    let cwd = std::fs::read_to_string(env.path("bin/cwd")).unwrap();
    assert_eq!(
        std::fs::canonicalize(cwd.trim()).unwrap(),
        std::fs::canonicalize(&work).unwrap()
    );

    let logs = s.log_messages(&id).await;
    for want in [
        "claude session sess-123 started (model claude-sonnet-4-5, cwd /repo)",
        "assistant: Let me read the file.",
        "tool call: Read(/repo/src/main.rs)",
        "tool result: fn main() {}",
        "assistant: The file is fine.",
    ] {
        assert!(
            logs.iter().any(|l| l == want),
            "missing {want:?} in {logs:#?}"
        );
    }
    assert!(
        logs.iter()
            .any(|l| l.starts_with("result: success, 2 turns")),
        "{logs:#?}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn claude_error_result_missing_result_and_garbage_fail_with_reasons() {
    let env = claude_env("error");
    env.agent(
        "crasher",
        "env: {FAKE_CLAUDE_MODE: noresult}",
        "You crash.\n",
    );
    env.agent(
        "babbler",
        "env: {FAKE_CLAUDE_MODE: garbage}",
        "You babble.\n",
    );
    let s = env.start().await;
    let err = s.submit("e", "reviewer", "go", json!({})).await;
    let nores = s.submit("n", "crasher", "go", json!({})).await;
    let started = Instant::now();
    let garbage = s.submit("g", "babbler", "go", json!({})).await;

    let t = s.wait_one(&err, 30).await;
    assert_eq!(t["status"], "failed", "{t}");
    let e = t["error"].as_str().unwrap();
    assert!(
        e.contains("error_during_execution") && e.contains("API Error: 500 internal"),
        "{e}"
    );

    let t = s.wait_one(&nores, 30).await;
    assert_eq!(t["status"], "failed", "{t}");
    let e = t["error"].as_str().unwrap();
    assert!(e.contains("without a result event"), "{e}");
    assert!(e.contains("exit status 3"), "{e}");
    assert!(e.contains("segfault in the fake"), "{e}");

    // The fake would sleep 30 s after its bad line; the runner stops it at once.
    let t = s.wait_one(&garbage, 30).await;
    assert_eq!(t["status"], "failed", "{t}");
    let e = t["error"].as_str().unwrap();
    assert!(
        e.contains("not stream-json") && e.contains("Error: not logged in"),
        "{e}"
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn claude_runner_without_claude_installed_is_refused_at_submit() {
    let mut env = claude_env("ok");
    env.set("ORCHESTR8_CLAUDE_BIN", "/nonexistent/claude");
    let s = env.start().await;
    let e = s
        .call_err(
            "task_async",
            json!({"name": "x", "agent_name": "reviewer", "agent_instructions": "go"}),
        )
        .await;
    assert!(
        e.contains("npm install -g @anthropic-ai/claude-code"),
        "{e}"
    );
    assert!(e.contains("runner: anthropic"), "{e}");
    let listed = s.call("list_tasks", json!({})).await;
    assert_eq!(listed["total"], 0);
    s.stop().await;
}

const ANTHROPIC_KEY: &str = "sk-ant-test-0123456789-secret";

fn anthropic_ok() -> Reply {
    Reply::json(
        200,
        json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test-1",
               "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "world"}],
               "stop_reason": "end_turn", "usage": {"input_tokens": 12, "output_tokens": 5}}),
    )
}

async fn anthropic_env(stub: &Stub, frontmatter: &str) -> Env {
    let mut env = Env::new();
    env.set("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
        .set("ANTHROPIC_BASE_URL", &stub.url);
    env.agent(
        "writer",
        &format!("runner: anthropic\n{frontmatter}"),
        "You write haiku.\n",
    );
    env
}

/// The key must not show anywhere a user or a log reader can see.
async fn assert_no_secret(s: &Server, id: &str, secret: &str) {
    let status = s.status(id).await.to_string();
    assert!(!status.contains(secret), "key in task_status: {status}");
    let logs = s.log_messages(id).await.join("\n");
    assert!(!logs.contains(secret), "key in task logs: {logs}");
    assert!(!s.log().contains(secret), "key in the session's log");
    let engine_log = std::fs::read_to_string(s.engine_log_path()).unwrap_or_default();
    assert!(!engine_log.contains(secret), "key in the engine's log");
}

#[tokio::test(flavor = "multi_thread")]
async fn anthropic_runner_sends_the_messages_request_and_records_usage() {
    let stub = Stub::start(vec![anthropic_ok()]).await;
    let env = anthropic_env(&stub, "model: claude-test-1\nmax_tokens: 100").await;
    let s = env.start().await;
    let id = s.submit("poem", "writer", "About rust.", json!({})).await;
    let t = s.wait_one(&id, 30).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["result"], "Hello\nworld");
    assert_eq!(t["usage"]["input_tokens"], 12);
    assert_eq!(t["usage"]["output_tokens"], 5);
    assert_eq!(t["metadata"]["stop_reason"], "end_turn");

    let reqs = stub.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.path, "/v1/messages");
    assert_eq!(r.headers["x-api-key"], ANTHROPIC_KEY);
    assert_eq!(r.headers["anthropic-version"], "2023-06-01");
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(
        r.body,
        json!({"model": "claude-test-1", "max_tokens": 100, "system": "You write haiku.\n",
               "messages": [{"role": "user", "content": "About rust."}]})
    );
    assert_no_secret(&s, &id, ANTHROPIC_KEY).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn anthropic_overloaded_is_retried_and_unauthorized_is_not() {
    let overloaded = Reply::json(
        529,
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
    )
    .header("retry-after", "1");
    let stub = Stub::start(vec![overloaded, anthropic_ok()]).await;
    let env = anthropic_env(&stub, "max_retries: 2").await;
    let s = env.start().await;
    let started = Instant::now();
    let id = s.submit("poem", "writer", "About rust.", json!({})).await;
    let t = s.wait_one(&id, 30).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["attempt"], 2);
    // retry-after: 1 wins over the 100 ms back-off of the tests.
    assert!(started.elapsed() >= Duration::from_millis(950));
    let reqs = stub.requests();
    assert_eq!(reqs.len(), 2);
    // No model in the frontmatter: ORCHESTR8_ANTHROPIC_MODEL's default, and max_tokens' default.
    assert_eq!(reqs[0].body["model"], "claude-sonnet-4-5");
    assert_eq!(reqs[0].body["max_tokens"], 8192);
    let logs = s.log_messages(&id).await.join("\n");
    assert!(
        logs.contains("529") && logs.contains("Overloaded"),
        "{logs}"
    );
    s.stop().await;

    // A 401 fails at once, whatever retries are left, with the API's message and a hint; the
    // stub echoes the key back, and it must not reach the task.
    let stub = Stub::start(vec![Reply::json(
        401,
        json!({"type": "error", "error": {"type": "authentication_error",
               "message": format!("invalid x-api-key {ANTHROPIC_KEY}")}}),
    )])
    .await;
    let env = anthropic_env(&stub, "max_retries: 3").await;
    let s = env.start().await;
    let id = s.submit("poem", "writer", "About rust.", json!({})).await;
    let t = s.wait_one(&id, 30).await;
    assert_eq!(t["status"], "failed", "{t}");
    assert_eq!(t["attempt"], 1);
    let e = t["error"].as_str().unwrap();
    assert!(
        e.contains("401") && e.contains("invalid x-api-key [redacted]"),
        "{e}"
    );
    assert!(e.contains("check ANTHROPIC_API_KEY"), "{e}");
    assert_eq!(stub.requests().len(), 1);
    assert_no_secret(&s, &id, ANTHROPIC_KEY).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_api_answer_is_dropped_at_the_task_timeout() {
    let stub = Stub::start(vec![anthropic_ok().after(Duration::from_secs(30))]).await;
    let env = anthropic_env(&stub, "").await;
    let s = env.start().await;
    let started = Instant::now();
    let id = s
        .submit("slow", "writer", "x", json!({"timeout_seconds": 1}))
        .await;
    let t = s.wait_one(&id, 30).await;
    assert_eq!(t["status"], "failed", "{t}");
    assert!(t["error"].as_str().unwrap().contains("timed out"), "{t}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn http_runners_without_key_or_model_are_refused_at_submit() {
    let mut env = Env::new();
    env.set("OPENAI_BASE_URL", "http://127.0.0.1:9/v1");
    env.agent("a", "runner: anthropic", "x");
    env.agent("o", "runner: openai\nmodel: sonnet", "x");
    env.agent("big", "runner: openai\nmodel: m\nmax_tokens: -5", "x");
    let s = env.start().await;
    let args = |agent: &str| json!({"name": "x", "agent_name": agent, "agent_instructions": "go"});
    let e = s.call_err("task_async", args("a")).await;
    assert!(e.contains("ANTHROPIC_API_KEY is not set"), "{e}");
    // A Claude Code alias is no model for an OpenAI-compatible server.
    let e = s.call_err("task_async", args("o")).await;
    assert!(
        e.contains("names no model") && e.contains("ORCHESTR8_OPENAI_MODEL"),
        "{e}"
    );
    let e = s.call_err("task_async", args("big")).await;
    assert!(e.contains("max_tokens"), "{e}");
    s.stop().await;
}

fn openai_ok() -> Reply {
    Reply::json(
        200,
        json!({"id": "chatcmpl-1", "object": "chat.completion",
               "choices": [{"index": 0, "finish_reason": "stop",
                            "message": {"role": "assistant", "content": "Four."}}],
               "usage": {"prompt_tokens": 21, "completion_tokens": 2, "total_tokens": 23}}),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn openai_runner_with_and_without_a_key() {
    const KEY: &str = "sk-openai-test-secret-42";
    let stub = Stub::start(vec![openai_ok()]).await;
    let mut env = Env::new();
    env.set("OPENAI_BASE_URL", &format!("{}/v1", stub.url))
        .set("OPENAI_API_KEY", KEY)
        .set("ORCHESTR8_OPENAI_MODEL", "qwen2.5-7b");
    env.agent(
        "calc",
        "runner: openai\nmax_tokens: 50",
        "You do arithmetic.\n",
    );
    let s = env.start().await;
    let id = s.submit("sum", "calc", "2+2?", json!({})).await;
    let t = s.wait_one(&id, 30).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["result"], "Four.");
    assert_eq!(t["usage"]["input_tokens"], 21);
    assert_eq!(t["usage"]["output_tokens"], 2);
    let r = &stub.requests()[0];
    assert_eq!(r.path, "/v1/chat/completions");
    assert_eq!(r.headers["authorization"], format!("Bearer {KEY}"));
    assert_eq!(
        r.body,
        json!({"model": "qwen2.5-7b", "max_tokens": 50, "messages": [
            {"role": "system", "content": "You do arithmetic.\n"},
            {"role": "user", "content": "2+2?"}]})
    );
    assert_no_secret(&s, &id, KEY).await;
    s.stop().await;

    // A local server: no key, so no Authorization header; a 503 is retried.
    let stub = Stub::start(vec![
        Reply::json(503, json!({"error": {"message": "model loading"}})),
        openai_ok(),
    ])
    .await;
    let mut env = Env::new();
    env.set("OPENAI_BASE_URL", &format!("{}/v1/", stub.url));
    env.agent("calc", "runner: openai\nmodel: llama3\nmax_retries: 1", "");
    let s = env.start().await;
    let id = s.submit("sum", "calc", "2+2?", json!({})).await;
    let t = s.wait_one(&id, 30).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["attempt"], 2);
    let reqs = stub.requests();
    assert_eq!(reqs.len(), 2);
    assert!(!reqs[1].headers.contains_key("authorization"));
    // An empty agent body sends no system message.
    assert_eq!(
        reqs[1].body["messages"],
        json!([{"role": "user", "content": "2+2?"}])
    );
    assert_eq!(reqs[1].path, "/v1/chat/completions");
    s.stop().await;
}
