//! MCP over Streamable HTTP at `/mcp` on the engine's HTTP port: the JSON-RPC exchange a
//! client such as `claude mcp add --transport http` has with it (initialize, the session id
//! header, event-stream answers), the API token's rules, a clean stop with an event stream
//! open, and the server scenarios of the MCP conformance suite.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::harness::*;

const PROTOCOL: &str = "2025-06-18";

/// A Streamable HTTP MCP client written out request by request, as the protocol has it.
pub(crate) struct McpHttp {
    url: String,
    token: Option<String>,
    session: Option<String>,
    http: reqwest::Client,
    next_id: u64,
}

impl McpHttp {
    pub(crate) fn new(base: &str, token: Option<&str>) -> McpHttp {
        McpHttp {
            url: format!("{base}/mcp"),
            token: token.map(String::from),
            session: None,
            http: reqwest::Client::new(),
            next_id: 1,
        }
    }

    fn builder(&self, method: reqwest::Method) -> reqwest::RequestBuilder {
        let mut r = self
            .http
            .request(method, &self.url)
            .header("accept", "application/json, text/event-stream");
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        if let Some(s) = &self.session {
            r = r
                .header("mcp-session-id", s)
                .header("mcp-protocol-version", PROTOCOL);
        }
        r
    }

    async fn post(&self, body: &Value) -> reqwest::Response {
        self.builder(reqwest::Method::POST)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Sends a request and reads the event stream up to the answer with its id.
    async fn request(&mut self, method: &str, params: Value) -> Value {
        self.request_seeing(method, params).await.0
    }

    /// Like `request`, also giving the messages that came on the stream before the answer.
    async fn request_seeing(&mut self, method: &str, params: Value) -> (Value, Vec<Value>) {
        let id = self.next_id;
        self.next_id += 1;
        let resp = self
            .post(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await;
        assert_eq!(resp.status(), 200, "{method}: {:?}", resp.text().await);
        if let Some(s) = resp.headers().get("mcp-session-id") {
            self.session = Some(s.to_str().unwrap().to_string());
        }
        answer_with_id(resp, id).await
    }

    async fn notify(&self, method: &str) -> StatusCode {
        self.post(&json!({"jsonrpc": "2.0", "method": method}))
            .await
            .status()
    }

    pub(crate) async fn initialize(&mut self) -> Value {
        let init = self
            .request(
                "initialize",
                json!({
                    "protocolVersion": PROTOCOL,
                    "capabilities": {},
                    "clientInfo": {"name": "it", "version": "1"}
                }),
            )
            .await;
        assert!(self.session.is_some(), "no mcp-session-id header: {init}");
        assert_eq!(self.notify("notifications/initialized").await, 202);
        init
    }

    /// `tools/call`, answering the tool's result.
    pub(crate) async fn call(&mut self, name: &str, args: Value) -> Value {
        let a = self
            .request("tools/call", json!({"name": name, "arguments": args}))
            .await;
        a["result"].clone()
    }
}

/// The JSON-RPC message with `id` from an answer, whether sent as JSON or as an event stream
/// (`data:` lines, possibly after a priming event), reading no further than it.
async fn answer_with_id(mut resp: reqwest::Response, id: u64) -> (Value, Vec<Value>) {
    let event_stream = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !event_stream {
        return (resp.json().await.unwrap(), Vec::new());
    }
    let mut buf = String::new();
    let mut others = Vec::new();
    let read = async {
        loop {
            while let Some(end) = buf.find('\n') {
                let line = buf[..end].trim_end_matches('\r').to_string();
                buf.drain(..=end);
                if let Some(data) = line.strip_prefix("data:") {
                    if let Ok(v) = serde_json::from_str::<Value>(data.trim()) {
                        if v["id"] == id {
                            return (v, others);
                        }
                        others.push(v);
                    }
                }
            }
            match resp.chunk().await.unwrap() {
                Some(c) => buf.push_str(&String::from_utf8_lossy(&c)),
                None => panic!("the event stream ended before the answer to {id}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("an answer within 30 s")
}

fn text_of(result: &Value) -> String {
    result["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn mcp_over_http_serves_the_tools_behind_the_api_token() {
    let env = Env::new();
    env.shell_agent("echo", "cat", "");
    env.shell_agent("long", "sleep 944", "");
    env.shell_agent("slow", "sleep 2; echo late", "");
    let token = "mcp-http-token";
    let api = env.start_api(Some(token)).await;

    // The API token's rules: no token, a wrong one, a web page's origin are refused.
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": {"name": "it", "version": "1"}}});
    let none = McpHttp::new(&api.base, None).post(&init).await;
    assert_eq!(none.status(), 401);
    let wrong = McpHttp::new(&api.base, Some("mcp-http-tokem"))
        .post(&init)
        .await;
    assert_eq!(wrong.status(), 401);
    let page = McpHttp::new(&api.base, Some(token))
        .builder(reqwest::Method::POST)
        .header("origin", "https://evil.example")
        .json(&init)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 403);

    let mut c = McpHttp::new(&api.base, Some(token));
    let init = c.initialize().await;
    assert_eq!(
        init["result"]["serverInfo"]["name"], "orchestr8-async",
        "{init}"
    );
    assert!(
        init["result"]["capabilities"]["tools"].is_object(),
        "{init}"
    );
    assert!(init["result"]["instructions"]
        .as_str()
        .unwrap()
        .contains("task_async"));
    assert_eq!(c.request("ping", json!({})).await["result"], json!({}));

    let list = c.request("tools/list", json!({})).await;
    let tools = list["result"]["tools"].as_array().unwrap();
    assert_eq!(tools.len(), 18, "{list}");
    let submit = tools.iter().find(|t| t["name"] == "task_async").unwrap();
    assert_eq!(submit["inputSchema"]["type"], "object");
    assert!(submit["inputSchema"]["properties"]["agent_name"].is_object());

    // A task submitted over HTTP MCP runs, is waited for there, and is the API's task too.
    let sent = c
        .call(
            "task_async",
            json!({"name": "h", "agent_name": "echo", "agent_instructions": "over http"}),
        )
        .await;
    assert_ne!(sent["isError"], true, "{sent}");
    let id = sent["structuredContent"]["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    let waited = c
        .call(
            "task_wait",
            json!({"task_ids": [id], "timeout_seconds": 20}),
        )
        .await;
    let task = &waited["structuredContent"]["tasks"][0];
    assert_eq!(task["status"], "completed", "{waited}");
    assert_eq!(task["result"], "over http");
    let (code, rest) = api.get(&format!("/api/tasks/{id}")).await;
    assert_eq!(code, 200);
    assert_eq!(rest["result"], "over http");

    // A wait that outlasts a moment is answered on its stream when its time is up.
    let long = c
        .call(
            "task_async",
            json!({"name": "l", "agent_name": "long", "agent_instructions": "x"}),
        )
        .await;
    let long_id = long["structuredContent"]["task_id"].as_str().unwrap();
    let waited = c
        .call(
            "task_wait",
            json!({"task_ids": [long_id], "timeout_seconds": 2}),
        )
        .await;
    assert_eq!(waited["structuredContent"]["timed_out"], true, "{waited}");
    c.call("task_cancel", json!({"task_id": long_id})).await;

    // A bad argument is the tool's error, naming the field, as on stdio.
    let bad = c
        .call("task_async", json!({"name": "b", "agent_name": "echo"}))
        .await;
    assert_eq!(bad["isError"], true, "{bad}");
    assert!(text_of(&bad).contains("agent_instructions"), "{bad}");
    let unknown = c.call("task_status", json!({"task_id": "nope"})).await;
    assert_eq!(unknown["isError"], true, "{unknown}");

    // An ended session is gone; an unknown one is answered 404, so the client initializes again.
    let ended = c.builder(reqwest::Method::DELETE).send().await.unwrap();
    assert!(ended.status().is_success(), "{}", ended.status());
    let after = c
        .post(&json!({"jsonrpc": "2.0", "id": 99, "method": "ping"}))
        .await;
    assert_eq!(after.status(), 404);
    let mut again = McpHttp::new(&api.base, Some(token));
    again.initialize().await;
    assert_eq!(again.request("ping", json!({})).await["result"], json!({}));

    // task_run, with progress notes on the call's own stream.
    let (ran, before) = again
        .request_seeing(
            "tools/call",
            json!({"name": "task_run", "_meta": {"progressToken": 7},
                   "arguments": {"name": "r", "agent_name": "slow", "agent_instructions": "x"}}),
        )
        .await;
    assert_eq!(
        ran["result"]["structuredContent"]["result"], "late\n",
        "{ran}"
    );
    let notes: Vec<&Value> = before
        .iter()
        .filter(|m| m["method"] == "notifications/progress")
        .collect();
    assert!(!notes.is_empty(), "{before:?}");
    assert!(notes.iter().all(|n| n["params"]["progressToken"] == 7));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_open_mcp_event_stream_does_not_hold_up_a_stop() {
    let env = Env::new();
    env.shell_agent("echo", "cat", "");
    let mut api = env.start_api(None).await;
    let mut c = McpHttp::new(&api.base, None);
    c.initialize().await;
    // The stream a client keeps open for the server's own messages.
    let stream = c
        .builder(reqwest::Method::GET)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let status = api.terminate(Duration::from_secs(15)).await;
    assert!(status.success(), "{status:?}");
    drop(stream);
}

/// Where the MCP conformance suite is: `O8_CONFORMANCE`, or installed with npm into the cache
/// (`.ci/run` installs it, and Node.js and npm when missing).
fn conformance_suite() -> PathBuf {
    if let Ok(p) = std::env::var("O8_CONFORMANCE") {
        return PathBuf::from(p);
    }
    npm_tool(
        "conformance",
        "@modelcontextprotocol/conformance@0.1.10",
        "conformance",
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_mcp_conformance_server_scenarios_pass() {
    let suite = conformance_suite();
    let env = Env::new();
    env.shell_agent("echo", "cat", "");
    let api = env.start_api(None).await;
    // The scenarios that apply to any server (the others call tools a test server defines).
    for scenario in [
        "server-initialize",
        "ping",
        "tools-list",
        "server-sse-multiple-streams",
    ] {
        let out = tokio::process::Command::new(&suite)
            .args(["server", "--url", &format!("{}/mcp", api.base)])
            .args(["--scenario", scenario])
            .current_dir(env.path(""))
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(120), out)
            .await
            .expect("the conformance scenario finishes")
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{scenario}:\n{text}");
        assert!(
            text.contains("SUCCESS") && text.contains(" 0 failed") && !text.contains("FAILURE"),
            "{scenario}:\n{text}"
        );
    }
}
