//! A client of an engine's socket: HTTP/1.1 over the Unix domain socket. Connections are kept
//! open and reused (a call costs one write and one read, not a connect and a handshake), and a
//! request that a kept connection could not send is known not to have been sent, so the
//! caller may safely send it again elsewhere.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::UnixStream;

use super::{
    SessionContext, ToolCall, DIFFERS_HEADER, SESSION_HEADER, SETTINGS_HEADER, SILENCE,
    VERSION_HEADER,
};
use crate::api::{ChannelEvent, WaitProgress};
use crate::service::tools::ToolAnswer;

/// Most calls one client has in flight at once, and so most connections it opens (calls that
/// block, `task_wait`, are not counted). A session that fires a thousand calls at once queues
/// them here instead of opening a thousand connections, whose buffers would stay in the
/// engine's memory; the engine still commits those in flight together.
const MAX_IN_FLIGHT: usize = 64;
/// Most idle connections kept per client.
const MAX_IDLE: usize = 16;

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Nothing reached an engine (no socket, nobody listening, a kept connection found
    /// closed before the request went out): safe to send again.
    #[error("no engine answers on {0}")]
    NotSent(String),
    /// The request was sent but the answer never came (the engine died or stopped meanwhile):
    /// it may or may not have taken effect.
    #[error("the engine stopped before answering: {0}")]
    Lost(String),
}

type Sender = SendRequest<Full<Bytes>>;

#[derive(Clone)]
pub struct EngineClient {
    path: PathBuf,
    idle: Arc<Mutex<Vec<Sender>>>,
    in_flight: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for EngineClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineClient")
            .field("path", &self.path)
            .finish()
    }
}

/// An open attach stream: resolves [`Attached::gone`] when the engine stops or dies, and
/// meanwhile hands on the events the engine tells this session.
pub struct Attached {
    body: Incoming,
    /// A line being received (events may arrive in several frames).
    partial: Vec<u8>,
    /// The engine's version.
    pub version: String,
    /// Settings of this session the engine does not share (names only).
    pub differs: Vec<String>,
}

impl Attached {
    /// Waits until the engine is gone: the stream ended, the connection broke, or the
    /// heartbeats stopped for [`SILENCE`]. Events that arrive meanwhile go to `events`.
    pub async fn gone(
        &mut self,
        events: Option<&tokio::sync::mpsc::UnboundedSender<ChannelEvent>>,
    ) {
        loop {
            match tokio::time::timeout(SILENCE, self.body.frame()).await {
                Ok(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        for event in self.take_events(data) {
                            if let Some(tx) = events {
                                let _ = tx.send(event);
                            }
                        }
                    }
                }
                Ok(Some(Err(e))) => {
                    tracing::debug!("the attach stream broke: {e}");
                    return;
                }
                Ok(None) => return,
                Err(_) => {
                    tracing::warn!(
                        "the engine sent no heartbeat for {}s; treating it as gone",
                        SILENCE.as_secs()
                    );
                    return;
                }
            }
        }
    }

    /// The events among the complete lines received so far (empty lines are heartbeats).
    fn take_events(&mut self, data: &[u8]) -> Vec<ChannelEvent> {
        self.partial.extend_from_slice(data);
        let mut out = Vec::new();
        while let Some(end) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            let line = &line[..end];
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            #[derive(serde::Deserialize)]
            struct Line {
                channel: ChannelEvent,
            }
            match serde_json::from_slice::<Line>(line) {
                Ok(l) => out.push(l.channel),
                Err(e) => tracing::warn!("an attach-stream line was not understood: {e}"),
            }
        }
        out
    }
}

impl EngineClient {
    pub fn new(socket: &Path) -> Self {
        EngineClient {
            path: socket.to_path_buf(),
            idle: Arc::new(Mutex::new(Vec::new())),
            in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.path
    }

    fn not_sent(&self, e: &dyn std::fmt::Display) -> CallError {
        CallError::NotSent(format!("{} ({e})", self.path.display()))
    }

    async fn connect(&self) -> Result<Sender, CallError> {
        let stream = UnixStream::connect(&self.path)
            .await
            .map_err(|e| self.not_sent(&e))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.not_sent(&e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    fn take_idle(&self) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(s) = idle.pop() {
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    fn put_idle(&self, s: Sender) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE && !s.is_closed() {
            idle.push(s);
        }
    }

    /// Sends a request on a kept connection, or a new one. Returns the answer and the
    /// connection, to be kept once the answer's body has been read.
    async fn send(
        &self,
        method: Method,
        uri: &str,
        headers: &[(&str, String)],
        body: Option<Vec<u8>>,
    ) -> Result<(hyper::Response<Incoming>, Sender), CallError> {
        let build = || {
            let mut req = Request::builder()
                .method(method.clone())
                .uri(uri)
                .header(hyper::header::HOST, "localhost")
                .header(VERSION_HEADER, super::version());
            for (k, v) in headers {
                req = req.header(*k, v.as_str());
            }
            if body.is_some() {
                req = req.header(hyper::header::CONTENT_TYPE, "application/json");
            }
            req.body(Full::new(Bytes::from(body.clone().unwrap_or_default())))
                .map_err(|e| self.not_sent(&e))
        };
        // A kept connection may have been closed by an engine that stopped since: if the
        // request did not go out on it, it goes out on a new connection.
        while let Some(mut s) = self.take_idle() {
            if s.ready().await.is_err() {
                continue;
            }
            match s.try_send_request(build()?).await {
                Ok(resp) => return Ok((resp, s)),
                Err(mut e) => {
                    if e.take_message().is_some() {
                        continue;
                    }
                    return Err(CallError::Lost(e.into_error().to_string()));
                }
            }
        }
        let mut s = self.connect().await?;
        match s.try_send_request(build()?).await {
            Ok(resp) => Ok((resp, s)),
            Err(mut e) => {
                let unsent = e.take_message().is_some();
                let err = e.into_error();
                if unsent {
                    Err(self.not_sent(&err))
                } else {
                    Err(CallError::Lost(err.to_string()))
                }
            }
        }
    }

    /// Sends a request and reads the whole answer as JSON.
    pub async fn request(
        &self,
        method: Method,
        uri: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), CallError> {
        let body = body.map(|b| b.to_string().into_bytes());
        let (resp, sender) = self.send(method, uri, &[], body).await?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| CallError::Lost(e.to_string()))?
            .to_bytes();
        self.put_idle(sender);
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok((status, value))
    }

    /// Forwards one MCP tool call with its session's context; the answer is exactly the
    /// engine's.
    pub async fn call_tool(
        &self,
        name: &str,
        args: &Value,
        session: &SessionContext,
    ) -> Result<ToolAnswer, CallError> {
        let body = serde_json::to_value(ToolCall {
            args: args.clone(),
            session: session.clone(),
        })
        .map_err(|e| self.not_sent(&e))?;
        let _permit = if name == "task_wait" {
            None
        } else {
            // Never closed, so acquiring cannot fail.
            self.in_flight.acquire().await.ok()
        };
        let (status, v) = self
            .request(Method::POST, &format!("/rpc/tools/{name}"), Some(&body))
            .await?;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // Refused before it ran (the engine is stopping): the next engine will answer.
            return Err(CallError::NotSent(format!(
                "{} is stopping",
                self.path.display()
            )));
        }
        if let Some(ok) = v.get("ok") {
            return Ok(Ok(ok.clone()));
        }
        // Any other answer is definite: the call was refused (e.g. 413 for a body over 4 MiB).
        match v.get("error").and_then(Value::as_str) {
            Some(m) => Ok(Err(m.to_string())),
            None => Ok(Err(format!("the engine refused the call ({status}): {v}"))),
        }
    }

    /// Where the given tasks stand, or `None` if the engine could not say (progress is
    /// best effort: the blocking call it accompanies carries on regardless).
    pub async fn progress(&self, task_ids: &[String]) -> Option<WaitProgress> {
        let body = serde_json::json!({ "task_ids": task_ids });
        let (_, v) = self
            .request(Method::POST, "/rpc/progress", Some(&body))
            .await
            .ok()?;
        serde_json::from_value(v.get("ok")?.clone()).ok()
    }

    /// Asks the engine to tell session `session_id` when the task ends (best effort: a
    /// courtesy that a failure only loses).
    pub async fn claim(&self, task_id: &str, session_id: &str) {
        let body = serde_json::json!({ "task_id": task_id, "session_id": session_id });
        if let Err(e) = self.request(Method::POST, "/rpc/claim", Some(&body)).await {
            tracing::debug!("the engine was not asked to tell this session of {task_id}: {e}");
        }
    }

    /// Asks the engine to stop (`now`: with the grace period, as SIGTERM does) or to retire
    /// (stop once no task is pending or running and no webhook is owed, whoever is attached).
    pub async fn stop(&self, now: bool) -> Result<Value, CallError> {
        let uri = if now { "/rpc/stop" } else { "/rpc/retire" };
        // An engine that does not answer (stopped, wedged) must not hang the command meant to
        // recover from it.
        match tokio::time::timeout(
            Duration::from_secs(5),
            self.request(Method::POST, uri, None),
        )
        .await
        {
            Ok(r) => Ok(r?.1),
            Err(_) => Err(CallError::NotSent(format!(
                "{} (no answer within 5 s)",
                self.path.display()
            ))),
        }
    }

    /// Attaches as a session: the engine counts it while the stream is open. `settings` is the
    /// session's engine fingerprint. Answers within `within` or fails (an engine that is
    /// shutting down accepts connections it will never answer).
    /// `session`: the session's id, to be told on the stream when what it handed off ends.
    pub async fn attach(
        &self,
        within: Duration,
        settings: &str,
        session: Option<&str>,
    ) -> Result<Attached, CallError> {
        let mut headers = vec![(SETTINGS_HEADER, settings.to_string())];
        if let Some(id) = session {
            headers.push((SESSION_HEADER, id.to_string()));
        }
        let (resp, _) = tokio::time::timeout(
            within,
            self.send(Method::GET, "/rpc/attach", &headers, None),
        )
        .await
        .map_err(|_| CallError::NotSent(format!("{} (no answer)", self.path.display())))??;
        if resp.status() != StatusCode::OK {
            return Err(CallError::NotSent(format!(
                "{} answered {} to attach",
                self.path.display(),
                resp.status()
            )));
        }
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        let version = header(VERSION_HEADER);
        let differs = header(DIFFERS_HEADER)
            .split(',')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        Ok(Attached {
            body: resp.into_body(),
            partial: Vec::new(),
            version,
            differs,
        })
    }
}
