//! The engine's internal routes, served on its socket only: sessions in other processes
//! forward their MCP tool calls here with their context (`POST /rpc/tools/{name}`), and hold
//! `GET /rpc/attach` open for as long as they live. The attach stream is how an engine counts
//! its sessions (it stays up while any is attached) and how a session learns within a second
//! that its engine is gone (the stream ends, or the connection breaks when the engine dies).
//! `POST /rpc/stop` and `POST /rpc/retire` are the stop command's doors; `POST /rpc/progress`
//! serves a blocking call's progress notes, `POST /rpc/ended` the `ended` command and
//! `POST /rpc/claim` a cancelled `task_run` that still wants to be told. A
//! session that gives its id on the attach is told on that stream when the tasks and workflows
//! it handed off end ([`crate::notifier::channel`]).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::{ToolCall, DIFFERS_HEADER, HEARTBEAT, SESSION_HEADER, SETTINGS_HEADER, VERSION_HEADER};
use crate::notifier::channel::{Channels, Handoff};
use crate::rest::MAX_BODY_BYTES;
use crate::service::tools::safe_to_repeat;
use crate::service::Service;

/// The sessions attached right now, and what the engine was told about them. Cheap to clone.
#[derive(Clone, Default)]
pub struct Frontends {
    count: Arc<AtomicUsize>,
    /// What each session handed off, and the attach streams that tell them when it ends.
    channels: Channels,
    /// Settings (by name) in which a session that attached differs from the engine, with how
    /// many sessions did; kept for `status` for the engine's life.
    differ: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl Frontends {
    pub fn channels(&self) -> &Channels {
        &self.channels
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Settings some session was started with but this engine was not.
    pub fn settings_differ(&self) -> Vec<String> {
        let d = self.differ.lock().unwrap_or_else(|p| p.into_inner());
        d.keys().cloned().collect()
    }
}

/// What the stop routes do: set by the engine's owner, which watches the tokens.
#[derive(Clone, Default)]
pub struct StopRequests {
    /// Stop now, with the grace period.
    pub now: CancellationToken,
    /// Stop once no task is pending or running and no webhook is owed.
    pub retire: CancellationToken,
    /// Set while the engine makes sure, before an idle exit, that nothing arrived meanwhile:
    /// attaches and calls are then answered 503 (not sent: the caller goes to the next engine).
    pub closing: Arc<std::sync::atomic::AtomicBool>,
}

impl StopRequests {
    fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }
}

/// Counts one attached session while it lives (it lives inside the attach stream, which the
/// server drops when the connection ends).
struct Attachment(Frontends);

impl Drop for Attachment {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::SeqCst);
        tracing::debug!(frontends = self.0.count(), "a session detached");
    }
}

/// Services in the context of the sessions seen lately, so that a session's calls share one
/// context (its tasks then share one copy of their directory and search path in memory).
#[derive(Clone, Default)]
struct SessionServices(Arc<Mutex<std::collections::HashMap<super::SessionContext, Service>>>);

/// More distinct sessions than this and the cache starts again.
const MAX_CACHED_SESSIONS: usize = 256;

impl SessionServices {
    fn get(&self, base: &Service, ctx: &super::SessionContext) -> Service {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = m.get(ctx) {
            return s.clone();
        }
        if m.len() >= MAX_CACHED_SESSIONS {
            m.clear();
        }
        let s = base.for_session(ctx);
        m.insert(ctx.clone(), s.clone());
        s
    }
}

#[derive(Clone)]
struct RpcState {
    service: Service,
    sessions: SessionServices,
    frontends: Frontends,
    /// This engine's fingerprint, to compare a session's with.
    fingerprint: Arc<BTreeMap<String, String>>,
    requests: StopRequests,
    stop: CancellationToken,
    dashboard: crate::dashboard::Door,
}

/// The internal routes; `stop` ends every attach stream (the engine is shutting down).
pub fn router(
    service: Service,
    frontends: Frontends,
    fingerprint: BTreeMap<String, String>,
    requests: StopRequests,
    stop: CancellationToken,
    dashboard: crate::dashboard::Door,
) -> Router {
    Router::new()
        .route("/rpc/tools/{name}", post(call_tool))
        .route("/rpc/progress", post(progress))
        .route("/rpc/ended", post(ended))
        .route("/rpc/claim", post(claim))
        .route("/rpc/attach", get(attach))
        .route("/rpc/overview", get(overview))
        .route("/rpc/stop", post(stop_now))
        .route("/rpc/retire", post(retire))
        .route("/rpc/dashboard", post(dashboard_url))
        .route("/rpc/prune", post(prune))
        // A forwarded call is the client's message (at most `MAX_BODY_BYTES`, as on HTTP and
        // stdio) plus the session's context.
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES + 1024 * 1024))
        .with_state(RpcState {
            service,
            frontends,
            sessions: SessionServices::default(),
            fingerprint: Arc::new(fingerprint),
            requests,
            stop,
            dashboard,
        })
}

/// 200 with `{"ok": answer}` or `{"error": message}`, exactly what the tool answers in an MCP
/// session; 503 when a repeatable call was cut off by the engine stopping.
/// No request time-out: `task_wait` may block for 10 minutes.
async fn call_tool(State(s): State<RpcState>, Path(name): Path<String>, body: Bytes) -> Response {
    if s.requests.is_closing() {
        return stopping();
    }
    let call: ToolCall = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return refused(format!("invalid call of {name}: {e}")),
    };
    if !call.args.is_object() {
        return refused(format!("invalid arguments for {name}: expected an object"));
    }
    let service = s.sessions.get(&s.service, &call.session);
    let session_id = call.session.session_id.clone();
    // A call that is safe to repeat (task_wait above all) does not hold up a stopping engine:
    // it is answered 503 and the session asks the next engine.
    let repeatable = safe_to_repeat(&name, &call.args);
    let answer = tokio::select! {
        a = service.call_tool(&name, call.args) => a,
        _ = s.stop.cancelled(), if repeatable => return stopping(),
    };
    if let (Ok(v), Some(session)) = (&answer, &session_id) {
        if let Some((what, ended)) = handed_off(&name, v) {
            s.frontends.channels.claim(what, session, ended);
        }
    }
    match answer {
        Ok(v) => Json(json!({ "ok": v })).into_response(),
        Err(m) => Json(json!({ "error": m })).into_response(),
    }
}

/// Where awaited tasks stand, for a session's progress notifications: `{"ok": WaitProgress}`
/// or `{"error": message}`.
async fn progress(State(s): State<RpcState>, body: Bytes) -> Response {
    #[derive(serde::Deserialize)]
    struct Asked {
        task_ids: Vec<String>,
    }
    if s.requests.is_closing() {
        return stopping();
    }
    match asked::<Asked>(&body, "progress request") {
        Ok(a) => answer(s.service.task_progress(&a.task_ids).await),
        Err(m) => refused(m),
    }
}

/// What a successful call handed off, to be told to its session when it ends: a submitted
/// task, or a created workflow (whose tasks are told as the workflow's end); and whether it
/// has ended already (an idempotent resubmission of a finished task).
fn handed_off(tool: &str, answer: &Value) -> Option<(Handoff, bool)> {
    let id = |field: &str| {
        answer
            .get(field)
            .and_then(Value::as_str)
            .and_then(|s| uuid::Uuid::parse_str(s).ok())
    };
    let ended = answer
        .get("status")
        .and_then(Value::as_str)
        .and_then(crate::model::TaskStatus::parse)
        .is_some_and(crate::model::TaskStatus::is_terminal);
    match tool {
        "task_async" => id("task_id").map(|t| (Handoff::Task(t), ended)),
        "workflow_create" => id("workflow_id").map(|w| (Handoff::Workflow(w), ended)),
        _ => None,
    }
}

/// A session asks to be told when a task ends after all (its blocking `task_run` was
/// cancelled while the task runs on): `{"task_id", "session_id"}`.
async fn claim(State(s): State<RpcState>, body: Bytes) -> Response {
    #[derive(serde::Deserialize)]
    struct Asked {
        task_id: uuid::Uuid,
        session_id: String,
    }
    let asked: Asked = match asked(&body, "claim") {
        Ok(a) => a,
        Err(m) => return refused(m),
    };
    let ended = match s.service.task_progress(&[asked.task_id.to_string()]).await {
        Ok(p) => p.finished > 0,
        Err(e) => return refused(e.to_string()),
    };
    s.frontends
        .channels
        .claim(Handoff::Task(asked.task_id), &asked.session_id, ended);
    Json(json!({ "ok": { "claimed": !ended } })).into_response()
}

/// What a project has not been told yet, now counted as told: `{"ok": EndedReport}` or
/// `{"error": message}`.
async fn ended(State(s): State<RpcState>, body: Bytes) -> Response {
    #[derive(serde::Deserialize)]
    struct Asked {
        project: String,
    }
    if s.requests.is_closing() {
        return stopping();
    }
    match asked::<Asked>(&body, "ended request") {
        Ok(a) => answer(s.service.tell_ended(&a.project).await),
        Err(m) => refused(m),
    }
}

/// Removes old finished work now: `{"ok": PruneReport}` or `{"error": message}`.
async fn prune(State(s): State<RpcState>, body: Bytes) -> Response {
    #[derive(serde::Deserialize)]
    struct Asked {
        older_than: Option<String>,
    }
    if s.requests.is_closing() {
        return stopping();
    }
    match asked::<Asked>(&body, "prune request") {
        Ok(a) => answer(s.service.prune(a.older_than.as_deref()).await),
        Err(m) => refused(m),
    }
}

/// The body of an internal request, or what was wrong with it.
fn asked<T: serde::de::DeserializeOwned>(body: &Bytes, what: &str) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("invalid {what}: {e}"))
}

/// `{"ok": value}` or `{"error": message}`.
fn answer<T: serde::Serialize>(r: Result<T, crate::service::ServiceError>) -> Response {
    match r {
        Ok(v) => Json(json!({ "ok": v })).into_response(),
        Err(e) => refused(e.to_string()),
    }
}

fn refused(message: String) -> Response {
    Json(json!({ "error": message })).into_response()
}

fn stopping() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "retry": "the engine is stopping; ask the next one" })),
    )
        .into_response()
}

async fn overview(State(s): State<RpcState>) -> Json<Value> {
    match s.service.overview().await {
        Ok(mut o) => {
            o.sessions = s.frontends.count();
            o.settings_differ = s.frontends.settings_differ();
            o.retiring = s.requests.retire.is_cancelled();
            Json(json!({ "ok": o }))
        }
        Err(e) => Json(json!({ "error": e.to_string() })),
    }
}

/// The dashboard's first URL (with its token), serving it on a loopback port if HTTP is off.
async fn dashboard_url(State(s): State<RpcState>) -> Response {
    // A stopping engine's address would be dead by the time it is opened: the next engine's.
    if s.requests.is_closing() {
        return stopping();
    }
    match s.dashboard.url().await {
        Ok(url) => Json(json!({ "ok": { "url": url } })).into_response(),
        Err(_) if s.stop.is_cancelled() => stopping(),
        Err(e) => Json(json!({ "error": format!("{e:#}") })).into_response(),
    }
}

async fn stop_now(State(s): State<RpcState>) -> Json<Value> {
    tracing::info!("asked to stop");
    s.requests.now.cancel();
    Json(json!({ "ok": { "pid": std::process::id(), "stopping": true } }))
}

async fn retire(State(s): State<RpcState>) -> Json<Value> {
    if !s.requests.retire.is_cancelled() {
        tracing::info!(
            "asked to retire: stopping once no task is pending or running and no webhook is owed"
        );
    }
    s.requests.retire.cancel();
    Json(json!({ "ok": { "pid": std::process::id(), "retiring": true } }))
}

/// The settings (by name) in which a session's fingerprint differs from the engine's.
pub fn differing(
    engine: &BTreeMap<String, String>,
    session: &BTreeMap<String, String>,
) -> Vec<String> {
    session
        .iter()
        .filter(|(k, v)| engine.get(*k).is_some_and(|mine| mine != *v))
        .map(|(k, _)| k.clone())
        .collect()
}

async fn attach(State(s): State<RpcState>, headers: HeaderMap) -> Response {
    if s.stop.is_cancelled() || s.requests.is_closing() {
        return stopping();
    }
    let theirs: BTreeMap<String, String> = headers
        .get(SETTINGS_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| serde_json::from_str(v).ok())
        .unwrap_or_default();
    let differ = differing(&s.fingerprint, &theirs);
    if !differ.is_empty() {
        tracing::warn!(
            "a session was started with other engine settings than this engine ({}); the engine keeps its own: stop it (`orchestr8-async-server stop`) to start one with the session's",
            differ.join(", ")
        );
        let mut d = s.frontends.differ.lock().unwrap_or_else(|p| p.into_inner());
        for k in &differ {
            *d.entry(k.clone()).or_default() += 1;
        }
    }
    let theirs_version = headers
        .get(VERSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("unknown");
    if theirs_version != super::version() {
        tracing::warn!(
            "a session of version {theirs_version} attached to this engine of version {}",
            super::version()
        );
    }
    s.frontends.count.fetch_add(1, Ordering::SeqCst);
    tracing::debug!(frontends = s.frontends.count(), "a session attached");
    let held = Attachment(s.frontends.clone());
    // A session that gives its id is told on this stream when what it handed off ends.
    let events = headers
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(|id| s.frontends.channels.subscribe(id));
    let stop = s.stop.clone();
    let stream = futures_util::stream::unfold(
        (held, events, stop),
        |(held, mut events, stop)| async move {
            let next_event = async {
                match events.as_mut() {
                    Some(e) => e.recv().await,
                    None => std::future::pending().await,
                }
            };
            let line = tokio::select! {
                _ = stop.cancelled() => return None,
                Some(event) = next_event => attach_line(&event),
                _ = tokio::time::sleep(HEARTBEAT) => Bytes::from_static(b"\n"),
            };
            Some((Ok::<_, Infallible>(line), (held, events, stop)))
        },
    );
    let mut resp = Body::from_stream(stream).into_response();
    let h = resp.headers_mut();
    h.insert(VERSION_HEADER, HeaderValue::from_static(super::version()));
    if let Ok(v) = HeaderValue::from_str(&differ.join(",")) {
        if !differ.is_empty() {
            h.insert(DIFFERS_HEADER, v);
        }
    }
    resp
}

/// One line of an attach stream: an empty line is a heartbeat, any other is JSON
/// (`{"channel": event}`).
fn attach_line(event: &crate::api::ChannelEvent) -> Bytes {
    let mut line = json!({ "channel": event }).to_string();
    line.push('\n');
    Bytes::from(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_settings_both_sides_know_and_that_differ_are_named() {
        let m = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        let engine = m(&[("A", "1"), ("B", "2")]);
        let session = m(&[("A", "1"), ("B", "3"), ("C", "9")]);
        assert_eq!(differing(&engine, &session), vec!["B".to_string()]);
        assert!(differing(&engine, &engine).is_empty());
    }
}
