//! API mode over HTTP with reqwest: every route, auth, errors, both mode, metrics, OpenAPI, and
//! a fuzz pass that must never produce a 5xx.

use std::time::Duration;

use rand::{Rng, SeedableRng};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::harness::*;
use crate::stub_http::{free_port, Reply, Stub};

/// The server in api mode, killed when dropped.
pub struct Api {
    child: tokio::process::Child,
    pub base: String,
    http: reqwest::Client,
    token: Option<String>,
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

impl Env {
    /// Starts the server in `mode` (api or both are HTTP) on a free loopback port.
    pub async fn start_api(&self, token: Option<&str>) -> Api {
        let port = free_port();
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.current_dir(self.dir.path())
            .env("ORCHESTR8_MODE", "api")
            .env("ORCHESTR8_PORT", port.to_string())
            .env("ORCHESTR8_DB_PATH", self.path("db/o8.duckdb"))
            .env("ORCHESTR8_AGENTS_DIR", self.path("agents"))
            .env("ORCHESTR8_SHUTDOWN_GRACE_SECONDS", "2")
            .stdin(std::process::Stdio::null())
            .stderr(std::fs::File::create(self.path("api.log")).unwrap())
            .kill_on_drop(true);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if let Some(t) = token {
            cmd.env("ORCHESTR8_API_TOKEN", t);
        }
        let api = Api {
            child: cmd.spawn().unwrap(),
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
            token: token.map(String::from),
        };
        for _ in 0..200 {
            if api
                .http
                .get(format!("{}/health", api.base))
                .send()
                .await
                .is_ok()
            {
                return api;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "api server did not come up: {}",
            std::fs::read_to_string(self.path("api.log")).unwrap_or_default()
        );
    }
}

impl Api {
    /// SIGTERM, and the exit status (failing the test if it takes longer than `within`).
    pub async fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        let pid = self.child.id().expect("the server is running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        tokio::time::timeout(within, self.child.wait())
            .await
            .expect("exits after SIGTERM")
            .unwrap()
    }

    pub async fn req(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.req(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.req(Method::POST, path, Some(body)).await
    }

    async fn until_status(&self, id: &str, want: &str) -> Value {
        for _ in 0..400 {
            let (_, t) = self.get(&format!("/api/tasks/{id}")).await;
            if t["status"] == want {
                return t;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("task {id} never became {want}");
    }
}

fn agents(env: &Env) {
    env.shell_agent("echo", "cat", "");
    env.shell_agent("long", "sleep 944", "");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_answers_over_http() {
    let env = Env::new();
    agents(&env);
    let api = env.start_api(None).await;

    let (code, h) = api.get("/health").await;
    assert_eq!(code, 200);
    assert_eq!(h["status"], "ok");
    assert_eq!(h["db"], "ok");
    assert!(h["version"].is_string() && h["uptime_seconds"].is_u64());

    // Tasks.
    let body = json!({"name": "t1", "agent_name": "echo", "agent_instructions": "hello", "idempotency_key": "k1"});
    let (code, t) = api.post("/api/tasks", body.clone()).await;
    assert_eq!(code, 201, "{t}");
    // The task object, with the task_async answer's fields among it.
    assert_eq!(t["existing"], false, "{t}");
    assert_eq!(t["status"], "pending");
    assert_eq!(t["agent_name"], "echo");
    assert_eq!(t["name"], "t1");
    assert!(t["created_at"].is_string());
    let id = t["task_id"].as_str().unwrap().to_string();
    let (code, again) = api.post("/api/tasks", body).await;
    assert_eq!(code, 200, "an idempotent replay is not a creation");
    assert_eq!(again["task_id"], id.as_str());
    assert_eq!(again["existing"], true);
    let t = api.until_status(&id, "completed").await;
    assert_eq!(t["result"], "hello");
    assert!(t["logs"].is_array());
    let (code, logs) = api
        .get(&format!("/api/tasks/{id}/logs?after_seq=0&limit=10"))
        .await;
    assert_eq!(code, 200);
    assert_eq!(logs["task_id"], id.as_str());
    let (code, list) = api
        .get("/api/tasks?status=completed&agent_name=echo&limit=5&offset=0")
        .await;
    assert_eq!(code, 200);
    assert_eq!(list["total"], 1);
    let (code, agents) = api.get("/api/agents").await;
    assert_eq!(code, 200);
    assert_eq!(agents["agents"].as_array().unwrap().len(), 2);

    // Cancel: 200 for a running task, 409 once it has finished; retry brings it back.
    let (_, long) = api
        .post(
            "/api/tasks",
            json!({"name": "l", "agent_name": "long", "agent_instructions": "x"}),
        )
        .await;
    let lid = long["task_id"].as_str().unwrap().to_string();
    api.until_status(&lid, "running").await;
    let (code, c) = api
        .req(Method::DELETE, &format!("/api/tasks/{lid}"), None)
        .await;
    assert_eq!(code, 200, "{c}");
    assert_eq!(c["status"], "cancelled");
    let (code, e) = api
        .req(Method::DELETE, &format!("/api/tasks/{lid}"), None)
        .await;
    assert_eq!(code, 409, "{e}");
    assert!(e["error"].as_str().unwrap().contains("already cancelled"));
    let (code, r) = api
        .post(&format!("/api/tasks/{lid}/retry"), json!({}))
        .await;
    assert_eq!(code, 200);
    assert_eq!(r["status"], "pending");
    api.req(Method::DELETE, &format!("/api/tasks/{lid}"), None)
        .await;
    let (code, _) = api.post(&format!("/api/tasks/{id}/retry"), json!({})).await;
    assert_eq!(code, 409, "a completed task cannot be retried");

    // Workflows.
    let (code, w) = api.post("/api/workflows", json!({"name": "wf"})).await;
    assert_eq!(code, 201);
    let wid = w["workflow_id"].as_str().unwrap().to_string();
    let (code, p) = api
        .post(
            &format!("/api/workflows/{wid}/phases"),
            json!({"phase_id": "one", "name": "One"}),
        )
        .await;
    assert_eq!(code, 201, "{p}");
    let (code, wt) = api
        .post(
            &format!("/api/workflows/{wid}/tasks"),
            json!({"phase_id": "one", "name": "wt", "agent_name": "echo", "agent_instructions": "in a workflow"}),
        )
        .await;
    assert_eq!(code, 201, "{wt}");
    let (code, st) = api
        .post(&format!("/api/workflows/{wid}/start"), json!({}))
        .await;
    assert_eq!(code, 200);
    assert_eq!(st["status"], "running");
    for _ in 0..200 {
        if api.get(&format!("/api/workflows/{wid}/status")).await.1["status"] == "completed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (code, w) = api.get(&format!("/api/workflows/{wid}")).await;
    assert_eq!(code, 200);
    assert_eq!(w["status"], "completed");
    assert_eq!(w["progress"], 100);
    let (code, tasks) = api.get(&format!("/api/workflows/{wid}/tasks")).await;
    assert_eq!(code, 200);
    assert_eq!(tasks["total"], 1);
    assert_eq!(tasks["tasks"][0]["task_id"], wt["task_id"]);
    let (code, page) = api
        .get(&format!("/api/workflows/{wid}/tasks?limit=1&offset=1"))
        .await;
    assert_eq!(code, 200);
    assert_eq!(
        (page["total"].clone(), page["tasks"].clone()),
        (json!(1), json!([]))
    );
    let (code, filtered) = api.get(&format!("/api/tasks?workflow_id={wid}")).await;
    assert_eq!(code, 200);
    assert_eq!(filtered["tasks"][0]["task_id"], wt["task_id"]);
    let (code, page) = api.get("/api/tasks?limit=1&offset=1").await;
    assert_eq!(code, 200);
    assert_eq!(page["tasks"].as_array().unwrap().len(), 1);
    assert_eq!(
        page["total"], 3,
        "t1, the cancelled one, the workflow task: {page}"
    );
    let (code, wfs) = api.get("/api/workflows?status=completed").await;
    assert_eq!(code, 200);
    assert_eq!(wfs["workflows"][0]["workflow_id"], wid.as_str());
    let (code, e) = api
        .post(&format!("/api/workflows/{wid}/cancel"), json!({}))
        .await;
    assert_eq!(code, 409, "{e}");
    let (code, hist) = api.get(&format!("/api/webhooks/{id}/history")).await;
    assert_eq!(code, 200);
    assert_eq!(hist["deliveries"], json!([]));
    let (code, hist) = api.get(&format!("/api/webhooks/{wid}/history")).await;
    assert_eq!(code, 200, "a workflow id works too: {hist}");
    assert_eq!(hist["deliveries"], json!([]));

    // Errors.
    let unknown = "0190f5c2-7b1e-7cc3-8a5e-3f1d2c4b5a69";
    for path in [
        format!("/api/tasks/{unknown}"),
        format!("/api/tasks/{unknown}/logs"),
        format!("/api/workflows/{unknown}"),
        format!("/api/workflows/{unknown}/tasks"),
        format!("/api/webhooks/{unknown}/history"),
        "/api/nothing".to_string(),
    ] {
        let (code, e) = api.get(&path).await;
        assert_eq!(code, 404, "{path}: {e}");
        assert!(e["error"].is_string(), "{path}: {e}");
    }
    for (path, body, expect) in [
        (
            "/api/tasks",
            json!({"name": "x"}),
            "missing field `agent_name`",
        ),
        (
            "/api/tasks",
            json!({"name": "x", "agent_name": "echo", "agent_instructions": "y", "priority": "urgent"}),
            "priority",
        ),
        ("/api/tasks", json!({"name": 5}), "name"),
        ("/api/tasks", json!([1, 2]), "invalid JSON body"),
        (
            "/api/workflows",
            json!({"name": "x", "colour": "red"}),
            "unknown field `colour`",
        ),
    ] {
        let (code, e) = api.post(path, body).await;
        assert_eq!(code, 400, "{path}: {e}");
        assert!(e["error"].as_str().unwrap().contains(expect), "{e}");
    }
    for (path, code) in [
        ("/api/tasks/not-a-uuid", 400),
        ("/api/tasks?limit=0", 400),
        ("/api/tasks?limit=ten", 400),
        ("/api/tasks?offset=9223372036854775807", 400),
        ("/api/workflows?offset=9223372036854775807", 400),
        ("/api/tasks/%FF", 400),
    ] {
        let (got, e) = api.get(path).await;
        assert_eq!(got, code, "{path}: {e}");
        assert!(e["error"].is_string(), "{path}: {e}");
    }
    let (code, e) = api.req(Method::PUT, "/api/tasks", None).await;
    assert_eq!(code, 405, "{e}");
    assert!(e["error"].as_str().unwrap().contains("PUT"), "{e}");
    let raw = |body: &'static str, content_type: Option<&'static str>| {
        let mut r = reqwest::Client::new()
            .post(format!("{}/api/tasks", api.base))
            .body(body);
        if let Some(ct) = content_type {
            r = r.header("content-type", ct);
        }
        r.send()
    };
    let valid = r#"{"name": "r", "agent_name": "echo", "agent_instructions": "y"}"#;
    for (body, ct, code) in [
        ("{not json", Some("application/json"), 400),
        (
            "{\"name\": \"r\", \"agent_name\": \"echo\", \"agent_instructions\": \"y\"} junk",
            Some("application/json"),
            400,
        ),
        ("", Some("application/json"), 400),
        (valid, Some("text/plain;charset=UTF-8"), 415),
        (valid, None, 415),
    ] {
        let resp = raw(body, ct).await.unwrap();
        assert_eq!(resp.status().as_u16(), code, "{body:?} as {ct:?}");
        let e: Value = resp.json().await.unwrap();
        assert!(e["error"].is_string(), "{e}");
    }
    let big = format!(
        r#"{{"name": "big", "agent_name": "echo", "agent_instructions": "{}"}}"#,
        "x".repeat(5 * 1024 * 1024)
    );
    let resp = reqwest::Client::new()
        .post(format!("{}/api/tasks", api.base))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let e: Value = resp.json().await.unwrap();
    assert!(e["error"].as_str().unwrap().contains("4 MiB"), "{e}");
    let (code, _) = api.get("/health").await;
    assert_eq!(code, 200, "the server is still up");
}

#[tokio::test(flavor = "multi_thread")]
async fn web_pages_cannot_reach_the_api_unless_allowed() {
    let mut env = Env::new();
    agents(&env);
    env.set("ORCHESTR8_CORS_ORIGINS", "http://localhost:5173");
    let api = env.start_api(None).await;
    let http = reqwest::Client::new();
    let url = format!("{}/api/tasks", api.base);
    let body = json!({"name": "x", "agent_name": "echo", "agent_instructions": "from a page"});
    // A page elsewhere (its browser adds Origin): refused before anything runs.
    let r = http
        .post(&url)
        .header("origin", "https://evil.example")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let e: Value = r.json().await.unwrap();
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("ORCHESTR8_CORS_ORIGINS"),
        "{e}"
    );
    // DNS rebinding: the page's own host name pointing at 127.0.0.1.
    let r = http
        .get(&url)
        .header("host", "evil.example:3000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // The listed origin works, with CORS headers, preflight included.
    let pre = http
        .request(Method::OPTIONS, &url)
        .header("origin", "http://localhost:5173")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert!(pre.status().is_success(), "{}", pre.status());
    assert_eq!(
        pre.headers()["access-control-allow-origin"],
        "http://localhost:5173"
    );
    let r = http
        .post(&url)
        .header("origin", "http://localhost:5173")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "http://localhost:5173"
    );
    let (_, list) = api.get("/api/tasks").await;
    assert_eq!(list["total"], 1, "only the allowed page's task exists");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_cors_origins_stop_the_server_at_start() {
    let env = Env::new();
    for origins in ["*", "http://localhost:5173/", "localhost:5173"] {
        let out = tokio::process::Command::new(BIN)
            .env("ORCHESTR8_MODE", "api")
            .env("ORCHESTR8_PORT", free_port().to_string())
            .env("ORCHESTR8_CORS_ORIGINS", origins)
            .env("ORCHESTR8_DB_PATH", env.path("db/x.duckdb"))
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .unwrap();
        assert!(!out.status.success(), "{origins}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("ORCHESTR8_CORS_ORIGINS"), "{origins}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn off_loopback_metrics_need_the_token_and_sigterm_stops_cleanly() {
    let mut env = Env::new();
    agents(&env);
    env.set("ORCHESTR8_HOST", "0.0.0.0");
    let mut api = env.start_api(Some("tok")).await;
    let http = reqwest::Client::new();
    let m = format!("{}/metrics", api.base);
    assert_eq!(http.get(&m).send().await.unwrap().status(), 401);
    assert_eq!(
        http.get(&m)
            .bearer_auth("tok")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        http.get(format!("{}/health", api.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let (code, t) = api
        .post(
            "/api/tasks",
            json!({"name": "s", "agent_name": "echo", "agent_instructions": "x"}),
        )
        .await;
    assert_eq!(code, 201);
    let status = api.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "{status:?}");
    // Nothing accepted was lost: over MCP on the same file, the task is there.
    let s = env.start().await;
    let id = t["task_id"].as_str().unwrap();
    let done = s.wait_one(id, 20).await;
    assert_eq!(done["status"], "completed");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_guards_the_api_but_not_health() {
    let env = Env::new();
    agents(&env);
    let api = env.start_api(Some("s3cret-token")).await;
    let client = reqwest::Client::new();
    let url = format!("{}/api/tasks", api.base);
    let none = client.get(&url).send().await.unwrap();
    assert_eq!(none.status(), 401);
    let body: Value = none.json().await.unwrap();
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("Authorization: Bearer"));
    let wrong = client
        .get(&url)
        .bearer_auth("s3cret-tokem")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let right = client
        .get(&url)
        .bearer_auth("s3cret-token")
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
    let health = client
        .get(format!("{}/health", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    // On loopback, /metrics is open.
    let m = client
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(m.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn it_refuses_a_public_address_without_a_token() {
    let env = Env::new();
    let out = tokio::process::Command::new(BIN)
        .env("ORCHESTR8_MODE", "api")
        .env("ORCHESTR8_HOST", "0.0.0.0")
        .env("ORCHESTR8_PORT", free_port().to_string())
        .env("ORCHESTR8_DB_PATH", env.path("db/x.duckdb"))
        .env_remove("ORCHESTR8_API_TOKEN")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("without ORCHESTR8_API_TOKEN"), "{err}");
    assert!(
        !env.path("db/x.duckdb").exists(),
        "nothing starts before the check"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn both_mode_shares_one_service_between_mcp_and_http() {
    let mut env = Env::new();
    agents(&env);
    let port = free_port();
    env.set("ORCHESTR8_MODE", "both")
        .set("ORCHESTR8_PORT", &port.to_string());
    let s = env.start().await;
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let via_http: Value = http
        .post(format!("{base}/api/tasks"))
        .json(&json!({"name": "h", "agent_name": "echo", "agent_instructions": "from http"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let hid = via_http["task_id"].as_str().unwrap();
    let t = s.wait_one(hid, 20).await;
    assert_eq!(t["result"], "from http");
    let mid = s.submit("m", "echo", "from mcp", json!({})).await;
    s.wait_one(&mid, 20).await;
    let t: Value = http
        .get(format!("{base}/api/tasks/{mid}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(t["result"], "from mcp");
    s.stop().await;
}

/// Parses Prometheus text: every sample line is `name{labels} value`.
fn samples(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (name, value) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad line {l:?}"));
            let v: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {l:?}"));
            (name.to_string(), v)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_parse_and_move_and_openapi_lists_every_route() {
    let env = Env::new();
    agents(&env);
    let api = env.start_api(None).await;
    let metric = |text: &str, name: &str| -> f64 {
        samples(text)
            .iter()
            .filter(|(n, _)| n.starts_with(name))
            .map(|(_, v)| v)
            .sum()
    };
    let before = api
        .http
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .unwrap();
    assert!(before.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let before = before.text().await.unwrap();
    let hooks = Stub::start(vec![Reply::json(204, json!(null))]).await;
    for i in 0..3 {
        let mut body = json!({"name": "m", "agent_name": "echo", "agent_instructions": "x"});
        if i == 0 {
            body["webhook_url"] = json!(format!("{}/hook", hooks.url));
        }
        let (_, t) = api.post("/api/tasks", body).await;
        api.until_status(t["task_id"].as_str().unwrap(), "completed")
            .await;
    }
    let (_, long) = api
        .post(
            "/api/tasks",
            json!({"name": "c", "agent_name": "long", "agent_instructions": "x"}),
        )
        .await;
    let lid = long["task_id"].as_str().unwrap();
    api.until_status(lid, "running").await;
    let (code, _) = api
        .req(Method::DELETE, &format!("/api/tasks/{lid}"), None)
        .await;
    assert_eq!(code, 200);
    let scrape = || async {
        api.http
            .get(format!("{}/metrics", api.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    // The webhook attempt is counted once its answer is in.
    let mut after = scrape().await;
    for _ in 0..200 {
        if metric(
            &after,
            "orchestr8_webhook_attempts_total{outcome=\"delivered\"}",
        ) >= 1.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        after = scrape().await;
    }
    assert_eq!(
        metric(
            &after,
            "orchestr8_webhook_attempts_total{outcome=\"delivered\"}"
        ),
        1.0,
        "{after}"
    );
    assert_eq!(hooks.requests().len(), 1);
    let finished = "orchestr8_tasks_finished_total{agent=\"echo\",status=\"completed\"}";
    assert_eq!(
        metric(&after, finished) - metric(&before, finished),
        3.0,
        "{after}"
    );
    assert_eq!(
        metric(
            &after,
            "orchestr8_tasks_finished_total{agent=\"long\",status=\"cancelled\"}"
        ),
        1.0,
        "{after}"
    );
    assert_eq!(metric(&after, "orchestr8_tasks_submitted_total"), 4.0);
    assert!(metric(&after, "orchestr8_task_duration_seconds_count") >= 3.0);
    assert!(metric(&after, "orchestr8_requests_total{frontend=\"rest\"") >= 3.0);
    for gauge in ["orchestr8_tasks_pending", "orchestr8_tasks_running"] {
        assert!(
            samples(&after).iter().any(|(n, _)| n == gauge),
            "{gauge} missing"
        );
    }

    let (code, doc) = api.get("/api/openapi.json").await;
    assert_eq!(code, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut paths: Vec<String> = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            paths.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    paths.sort();
    let mut want = vec![
        "POST /api/tasks",
        "GET /api/tasks",
        "GET /api/tasks/{id}",
        "DELETE /api/tasks/{id}",
        "POST /api/tasks/{id}/retry",
        "GET /api/tasks/{id}/logs",
        "GET /api/tasks/{id}/diff",
        "GET /api/agents",
        "POST /api/workflows",
        "GET /api/workflows",
        "GET /api/workflows/{id}",
        "GET /api/workflows/{id}/status",
        "POST /api/workflows/{id}/start",
        "POST /api/workflows/{id}/phases",
        "POST /api/workflows/{id}/tasks",
        "GET /api/workflows/{id}/tasks",
        "POST /api/workflows/{id}/cancel",
        "GET /api/webhooks/{id}/history",
        "GET /health",
        "GET /metrics",
        "GET /api/openapi.json",
    ];
    want.sort();
    assert_eq!(paths, want);
}

/// A random JSON value of small depth: the wrong types, sizes and shapes a client could send.
fn random_value(rng: &mut impl Rng, depth: u32) -> Value {
    match rng.random_range(0..if depth == 0 { 6 } else { 8 }) {
        0 => Value::Null,
        1 => json!(rng.random_bool(0.5)),
        2 => json!(rng.random_range(-1_000_000_000_000i64..1_000_000_000_000)),
        3 => json!(rng.random::<f64>() * 1e12),
        4 => json!(
            [
                "",
                "x",
                "0190f5c2-7b1e-7cc3-8a5e-3f1d2c4b5a69",
                "../..",
                "é\u{0}",
                "normal",
                "2026-01-01T00:00:00Z"
            ][rng.random_range(0..7)]
        ),
        5 => json!("y".repeat(rng.random_range(0..5000))),
        6 => Value::Array(
            (0..rng.random_range(0..4))
                .map(|_| random_value(rng, depth - 1))
                .collect(),
        ),
        _ => {
            let keys = [
                "name",
                "agent_name",
                "agent_instructions",
                "priority",
                "phase_id",
                "depends_on",
                "dependencies",
                "timeout_seconds",
                "max_retries",
                "metadata",
                "run_at",
                "webhook_url",
                "working_dir",
                "max_parallel",
                "idempotency_key",
                "zzz",
            ];
            let mut m = serde_json::Map::new();
            for _ in 0..rng.random_range(0..6) {
                m.insert(
                    keys[rng.random_range(0..keys.len())].into(),
                    random_value(rng, depth - 1),
                );
            }
            Value::Object(m)
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn fuzzed_requests_never_get_a_server_error() {
    let env = Env::new();
    agents(&env);
    let api = env.start_api(None).await;
    let (_, w) = api.post("/api/workflows", json!({"name": "fuzz"})).await;
    let wid = w["workflow_id"].as_str().unwrap().to_string();
    let (_, t) = api
        .post(
            "/api/tasks",
            json!({"name": "f", "agent_name": "echo", "agent_instructions": "x"}),
        )
        .await;
    let tid = t["task_id"].as_str().unwrap().to_string();
    let valid_task = json!({"name": "n", "agent_name": "echo", "agent_instructions": "i"});
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x0a8);
    let ids = [
        tid.as_str(),
        wid.as_str(),
        "nope",
        "0190f5c2-7b1e-7cc3-8a5e-3f1d2c4b5a69",
        "%20",
        "",
    ];
    for i in 0..400 {
        let id = ids[rng.random_range(0..ids.len())];
        let body = if i % 2 == 0 {
            random_value(&mut rng, 3)
        } else {
            // A valid body with one field replaced by something random.
            let mut b = valid_task.clone();
            let key = [
                "name",
                "agent_name",
                "agent_instructions",
                "priority",
                "dependencies",
                "timeout_seconds",
                "metadata",
                "run_at",
                "webhook_url",
                "working_dir",
            ][rng.random_range(0..10)];
            b[key] = random_value(&mut rng, 2);
            b
        };
        let (method, path) = [
            (Method::POST, "/api/tasks".to_string()),
            (Method::POST, "/api/workflows".to_string()),
            (Method::POST, format!("/api/workflows/{id}/phases")),
            (Method::POST, format!("/api/workflows/{id}/tasks")),
            (Method::POST, format!("/api/workflows/{id}/start")),
            (Method::POST, format!("/api/tasks/{id}/retry")),
            (Method::DELETE, format!("/api/tasks/{id}")),
            (
                Method::GET,
                format!("/api/tasks/{id}/logs?limit={}", rng.random_range(-5..2000)),
            ),
            (
                Method::GET,
                format!(
                    "/api/tasks?offset={}&status=x",
                    [-5i64, 0, 3, i64::MAX, i64::MIN][rng.random_range(0..5)]
                ),
            ),
            (
                Method::GET,
                format!(
                    "/api/workflows?offset={}&limit={}",
                    [-1i64, 0, i64::MAX][rng.random_range(0..3)],
                    rng.random_range(-2..3000)
                ),
            ),
            (Method::GET, format!("/api/webhooks/{id}/history")),
        ][rng.random_range(0..11)]
        .clone();
        let (code, answer) = api.req(method.clone(), &path, Some(body.clone())).await;
        assert!(
            !code.is_server_error(),
            "{method} {path} with {body} answered {code}: {answer}"
        );
        if !code.is_success() {
            assert!(answer["error"].is_string(), "{method} {path}: {answer}");
        }
    }
    let (code, _) = api.get("/health").await;
    assert_eq!(code, 200, "the server is still up");
}
