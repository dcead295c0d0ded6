//! Webhooks against a real receiver on 127.0.0.1: payload, headers, signatures, retries and
//! their spacing, give-ups, the delivery log, workflow events, and an owed event after kill -9.

use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{json, Value};

use crate::harness::*;
use crate::stub_http::{free_port, Recorded, Reply, Stub};

/// 32 random-looking bytes, base64.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwdGVzdHNlY3JldA==";

fn ok() -> Reply {
    Reply::json(200, json!({"ok": true}))
}

/// Verifies a request with the `standardwebhooks` crate (an implementation independent of the
/// server's) and returns the payload.
fn verify(r: &Recorded) -> Value {
    let mut h = HeaderMap::new();
    for (k, v) in &r.headers {
        h.insert(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    standardwebhooks::Webhook::new(SECRET)
        .unwrap()
        .verify(&r.raw, &h)
        .unwrap_or_else(|e| panic!("signature does not verify: {e:?}; {r:?}"));
    serde_json::from_slice(&r.raw).unwrap()
}

async fn wait_requests(stub: &Stub, n: usize, within: Duration) -> Vec<Recorded> {
    let deadline = Instant::now() + within;
    loop {
        let r = stub.requests();
        if r.len() >= n || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn history(s: &Server, key: &str, id: &str) -> Vec<Value> {
    s.call("webhook_history", json!({ key: id })).await["deliveries"]
        .as_array()
        .unwrap()
        .clone()
}

async fn history_len(s: &Server, key: &str, id: &str, n: usize) -> Vec<Value> {
    for _ in 0..400 {
        let h = history(s, key, id).await;
        if h.len() >= n {
            return h;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "webhook history of {id} never reached {n} entries: {:?}",
        history(s, key, id).await
    );
}

fn env_with(extra: &[(&str, &str)]) -> Env {
    let mut env = Env::new();
    env.set("ORCHESTR8_WEBHOOK_SECRET", SECRET)
        .set("ORCHESTR8_WEBHOOK_BACKOFF_BASE_MS", "200")
        .set("ORCHESTR8_WEBHOOK_BACKOFF_MAX_MS", "2000");
    for (k, v) in extra {
        env.set(k, v);
    }
    env.shell_agent("echo", "cat", "");
    env.shell_agent("fail", "echo nope >&2; exit 1", "");
    env.shell_agent("long", "sleep 955", "");
    env
}

#[tokio::test(flavor = "multi_thread")]
async fn terminal_tasks_post_signed_events_with_the_task() {
    let stub = Stub::start(vec![ok()]).await;
    let env = env_with(&[]);
    let s = env.start().await;
    let url = format!("{}/hooks", stub.url);
    let done = s
        .submit("hello", "echo", "hi", json!({"webhook_url": url}))
        .await;
    let failed = s
        .submit(
            "bad",
            "fail",
            "x",
            json!({"webhook_url": url, "max_retries": 1}),
        )
        .await;
    let cancelled = s
        .submit("long", "long", "x", json!({"webhook_url": url}))
        .await;
    s.until(&cancelled, "running", |t| t["status"] == "running")
        .await;
    s.call("task_cancel", json!({"task_id": cancelled})).await;
    let reqs = wait_requests(&stub, 3, Duration::from_secs(15)).await;
    assert_eq!(reqs.len(), 3, "{reqs:?}");

    let mut by_task = std::collections::HashMap::new();
    for r in &reqs {
        assert_eq!(r.path, "/hooks");
        assert_eq!(r.headers["content-type"], "application/json");
        assert!(r.headers["user-agent"].starts_with("orchestr8-async/"));
        assert!(r.headers["webhook-id"].starts_with("msg_"));
        let ts: i64 = r.headers["webhook-timestamp"].parse().unwrap();
        assert!((chrono::Utc::now().timestamp() - ts).abs() < 60);
        let p = verify(r);
        chrono::DateTime::parse_from_rfc3339(p["timestamp"].as_str().unwrap()).unwrap();
        by_task.insert(p["data"]["task_id"].as_str().unwrap().to_string(), p);
    }
    let p = &by_task[&done];
    assert_eq!(p["type"], "task.completed");
    assert_eq!(p["data"]["status"], "completed");
    assert_eq!(p["data"]["result"], "hi");
    assert_eq!(p["data"]["name"], "hello");
    let p = &by_task[&failed];
    assert_eq!(p["type"], "task.failed", "only once, after retries: {p}");
    assert_eq!(p["data"]["attempt"], 2);
    assert_eq!(by_task[&cancelled]["type"], "task.cancelled");

    let h = history_len(&s, "task_id", &done, 1).await;
    assert_eq!(h.len(), 1);
    assert_eq!(h[0]["attempt"], 1);
    assert_eq!(h[0]["status_code"], 200);
    assert_eq!(h[0]["event_type"], "task.completed");
    assert_eq!(h[0]["url"], url.as_str());
    assert!(h[0]["error"].is_null());
    assert!(h[0]["duration_ms"].is_u64());
    assert!(h[0]["delivered_at"].is_string());
    let e = s
        .call_err(
            "webhook_history",
            json!({"task_id": done, "workflow_id": done}),
        )
        .await;
    assert!(e.contains("exactly one"), "{e}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_are_retried_with_backoff_under_one_webhook_id() {
    let stub = Stub::start(vec![
        Reply::json(503, json!({})),
        Reply::json(500, json!({})),
        Reply::json(429, json!({})).header("retry-after", "1"),
        ok(),
    ])
    .await;
    let env = env_with(&[]);
    let s = env.start().await;
    let id = s
        .submit("t", "echo", "x", json!({"webhook_url": stub.url}))
        .await;
    let reqs = wait_requests(&stub, 4, Duration::from_secs(20)).await;
    assert_eq!(reqs.len(), 4);
    let ids: Vec<_> = reqs
        .iter()
        .map(|r| r.headers["webhook-id"].clone())
        .collect();
    assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
    let bodies: Vec<_> = reqs.iter().map(|r| r.raw.clone()).collect();
    assert!(
        bodies.iter().all(|b| *b == bodies[0]),
        "same payload on every retry"
    );
    for r in &reqs {
        verify(r);
    }
    // Full jitter under base 200 ms: at most 200 ms, then 400 ms (plus scheduling slack);
    // retry-after: 1 is honoured.
    let gap = |i: usize| reqs[i].at - reqs[i - 1].at;
    assert!(gap(1) < Duration::from_millis(200 + 400), "{:?}", gap(1));
    assert!(gap(2) < Duration::from_millis(400 + 400), "{:?}", gap(2));
    assert!(gap(3) >= Duration::from_millis(950), "{:?}", gap(3));
    let h = history_len(&s, "task_id", &id, 4).await;
    let codes: Vec<_> = h.iter().map(|d| d["status_code"].clone()).collect();
    assert_eq!(codes, vec![json!(503), json!(500), json!(429), json!(200)]);
    let attempts: Vec<_> = h.iter().map(|d| d["attempt"].as_u64().unwrap()).collect();
    assert_eq!(attempts, vec![1, 2, 3, 4]);
    assert_eq!(h[0]["error"], "HTTP 503 Service Unavailable");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_4xx_stops_and_attempts_are_capped() {
    let gone = Stub::start(vec![Reply::json(410, json!({}))]).await;
    let broken = Stub::start(vec![Reply::json(500, json!({}))]).await;
    let env = env_with(&[
        ("ORCHESTR8_WEBHOOK_MAX_ATTEMPTS", "3"),
        ("ORCHESTR8_WEBHOOK_BACKOFF_BASE_MS", "50"),
    ]);
    let s = env.start().await;
    let a = s
        .submit("a", "echo", "x", json!({"webhook_url": gone.url}))
        .await;
    let b = s
        .submit("b", "echo", "x", json!({"webhook_url": broken.url}))
        .await;
    let h = history_len(&s, "task_id", &b, 3).await;
    assert_eq!(h.len(), 3);
    let h = history_len(&s, "task_id", &a, 1).await;
    assert_eq!(h[0]["status_code"], 410);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(gone.requests().len(), 1, "no retry after a 410");
    assert_eq!(
        broken.requests().len(),
        3,
        "at most ORCHESTR8_WEBHOOK_MAX_ATTEMPTS"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_receiver_times_out_and_never_slows_tasks() {
    let hang = Stub::start(vec![ok().after(Duration::from_secs(10))]).await;
    let env = env_with(&[
        ("ORCHESTR8_WEBHOOK_TIMEOUT_MS", "300"),
        ("ORCHESTR8_WEBHOOK_MAX_ATTEMPTS", "2"),
        ("ORCHESTR8_WEBHOOK_BACKOFF_BASE_MS", "50"),
    ]);
    let s = env.start().await;
    let started = Instant::now();
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(
            s.submit(
                &format!("t{i}"),
                "echo",
                "x",
                json!({"webhook_url": hang.url}),
            )
            .await,
        );
    }
    s.wait_all(&ids, 30).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "tasks waited for webhooks: {:?}",
        started.elapsed()
    );
    let h = history_len(&s, "task_id", &ids[0], 2).await;
    assert!(h[0]["status_code"].is_null());
    assert!(
        h[0]["error"].as_str().unwrap().contains("timed out"),
        "{h:?}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_owed_event_is_delivered_after_kill_9_and_restart() {
    let port = free_port();
    let env = env_with(&[("ORCHESTR8_WEBHOOK_BACKOFF_BASE_MS", "300")]);
    let s = env.start().await;
    let url = format!("http://127.0.0.1:{port}/late");
    let id = s
        .submit("t", "echo", "x", json!({"webhook_url": url}))
        .await;
    let h = history_len(&s, "task_id", &id, 1).await;
    assert!(h[0]["status_code"].is_null(), "receiver is down: {h:?}");
    let first_id = h[0]["event_id"].clone();
    s.kill9(&env).await;

    let stub = Stub::start_on(port, vec![ok()]).await;
    let s = env.start().await;
    let reqs = wait_requests(&stub, 1, Duration::from_secs(15)).await;
    assert_eq!(reqs.len(), 1, "owed event not delivered after restart");
    assert_eq!(reqs[0].headers["webhook-id"], first_id.as_str().unwrap());
    assert_eq!(verify(&reqs[0])["data"]["task_id"], id.as_str());
    // The attempt is recorded once its answer has been read: a moment after the stub saw it.
    let mut h = history(&s, "task_id", &id).await;
    for _ in 0..200 {
        if h.last().unwrap()["status_code"] == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        h = history(&s, "task_id", &id).await;
    }
    assert_eq!(h.last().unwrap()["status_code"], 200, "{h:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn workflows_post_their_end() {
    let stub = Stub::start(vec![ok()]).await;
    let env = env_with(&[]);
    let s = env.start().await;
    let mk = |name: &str| json!({"name": name, "webhook_url": stub.url});
    let mut ids = Vec::new();
    for (name, agent) in [("good", "echo"), ("bad", "fail"), ("stopped", "long")] {
        let w = s.call("workflow_create", mk(name)).await["workflow_id"]
            .as_str()
            .unwrap()
            .to_string();
        s.call(
            "workflow_add_phase",
            json!({"workflow_id": w, "phase_id": "only", "name": "Only"}),
        )
        .await;
        s.call(
            "workflow_add_task",
            json!({"workflow_id": w, "phase_id": "only", "name": "t", "agent_name": agent,
                   "agent_instructions": "x"}),
        )
        .await;
        s.call("workflow_start", json!({"workflow_id": w})).await;
        ids.push(w);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.call("workflow_cancel", json!({"workflow_id": ids[2]}))
        .await;
    let reqs = wait_requests(&stub, 3, Duration::from_secs(15)).await;
    assert_eq!(reqs.len(), 3, "{reqs:?}");
    let mut types = std::collections::HashMap::new();
    for r in &reqs {
        let p = verify(r);
        types.insert(
            p["data"]["workflow_id"].as_str().unwrap().to_string(),
            (p["type"].clone(), p["data"].clone()),
        );
    }
    assert_eq!(types[&ids[0]].0, "workflow.completed");
    assert_eq!(types[&ids[0]].1["progress"], 100);
    assert_eq!(types[&ids[1]].0, "workflow.failed");
    assert_eq!(
        types[&ids[1]].1["failed_tasks"].as_array().unwrap().len(),
        1
    );
    assert_eq!(types[&ids[2]].0, "workflow.cancelled");
    assert_eq!(types[&ids[2]].1["tasks"][0]["status"], "cancelled");
    let h = history_len(&s, "workflow_id", &ids[0], 1).await;
    assert_eq!(h[0]["event_type"], "workflow.completed");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_secret_stops_the_server_at_start() {
    let env = Env::new();
    let out = tokio::process::Command::new(BIN)
        .env("ORCHESTR8_DB_PATH", env.path("db/x.duckdb"))
        .env("ORCHESTR8_WEBHOOK_SECRET", "not-a-secret")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ORCHESTR8_WEBHOOK_SECRET must start with \"whsec_\""),
        "{err}"
    );
    assert!(
        !err.contains("not-a-secret"),
        "the secret must not be echoed: {err}"
    );
}
