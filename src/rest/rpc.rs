//! The engine's internal routes, served on the local socket only: frontends in other processes
//! forward their MCP tool calls here (`POST /rpc/tools/{name}`), and hold `GET /rpc/attach`
//! open for as long as they live. The attach stream is how an engine counts its frontends (it
//! stays up while any is attached) and how a frontend learns within a second that its engine
//! is gone (the stream ends, or the connection breaks when the engine dies).

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::MAX_BODY_BYTES;
use crate::service::tools::safe_to_repeat;
use crate::service::Service;

/// How often an attach stream sends a byte: a frontend that has gone is noticed at the next
/// write, so the engine's count of frontends is at most this much behind.
const HEARTBEAT: Duration = Duration::from_millis(500);

/// The number of frontends attached right now. Cheap to clone.
#[derive(Clone, Default)]
pub struct Frontends(Arc<AtomicUsize>);

impl Frontends {
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// Counts one attached frontend while it lives (it lives inside the attach stream, which the
/// server drops when the connection ends).
struct Attachment(Frontends);

impl Drop for Attachment {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::SeqCst);
        tracing::debug!(frontends = self.0.count(), "a frontend detached");
    }
}

#[derive(Clone)]
struct RpcState {
    service: Service,
    frontends: Frontends,
    /// False in a CLI command that opened the file only to read or store: it runs no tasks
    /// and is gone in a moment, so sessions wait for the file instead of attaching.
    takes_frontends: bool,
    stop: CancellationToken,
}

/// The internal routes; `stop` ends every attach stream (the engine is shutting down).
pub fn router(
    service: Service,
    frontends: Frontends,
    takes_frontends: bool,
    stop: CancellationToken,
) -> Router {
    Router::new()
        .route("/rpc/tools/{name}", post(call_tool))
        .route("/rpc/attach", get(attach))
        .route("/rpc/overview", get(overview))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(RpcState {
            service,
            frontends,
            takes_frontends,
            stop,
        })
}

/// 200 with `{"ok": answer}` or `{"error": message}`, exactly what the tool answers in the
/// engine's own MCP session; 503 when a repeatable call was cut off by the engine stopping.
/// No request time-out: `task_wait` may block for 10 minutes.
async fn call_tool(State(s): State<RpcState>, Path(name): Path<String>, body: Bytes) -> Response {
    let args: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return refused(format!("invalid arguments for {name}: expected an object")),
        Err(e) => return refused(format!("invalid arguments for {name}: {e}")),
    };
    // A call that is safe to repeat (task_wait above all) does not hold up a stopping engine:
    // it is answered 503 and the frontend asks the next engine.
    let repeatable = safe_to_repeat(&name, &args);
    let answer = tokio::select! {
        a = s.service.call_tool(&name, args) => a,
        _ = s.stop.cancelled(), if repeatable => return stopping(),
    };
    match answer {
        Ok(v) => Json(json!({ "ok": v })).into_response(),
        Err(m) => Json(json!({ "error": m })).into_response(),
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
        Ok(o) => Json(json!({ "ok": o })),
        Err(e) => Json(json!({ "error": e.to_string() })),
    }
}

async fn attach(State(s): State<RpcState>) -> Response {
    if !s.takes_frontends || s.stop.is_cancelled() {
        return stopping();
    }
    s.frontends.0.fetch_add(1, Ordering::SeqCst);
    tracing::debug!(frontends = s.frontends.count(), "a frontend attached");
    let held = Attachment(s.frontends.clone());
    let stop = s.stop.clone();
    let beats = futures_util::stream::unfold((held, stop), |(held, stop)| async move {
        tokio::select! {
            _ = stop.cancelled() => None,
            _ = tokio::time::sleep(HEARTBEAT) => {
                Some((Ok::<_, Infallible>(Bytes::from_static(b"\n")), (held, stop)))
            }
        }
    });
    Body::from_stream(beats).into_response()
}
