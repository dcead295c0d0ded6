//! A client of an engine's local socket: HTTP/1.1 over the Unix domain socket, one connection
//! per request (connecting costs microseconds, and no pool means no stale connections after
//! a take-over). Frontends forward tool calls with it and the CLI reads the REST routes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::UnixStream;

use crate::service::tools::ToolAnswer;

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Nothing reached an engine (no socket, nobody listening): safe to send again.
    #[error("no engine answers on {0}")]
    NotSent(String),
    /// The request was sent but the answer never came (the engine died or stopped meanwhile):
    /// it may or may not have taken effect.
    #[error("the engine stopped before answering: {0}")]
    Lost(String),
}

#[derive(Clone, Debug)]
pub struct EngineClient {
    path: PathBuf,
}

/// An open attach stream: resolves [`Attached::gone`] when the engine stops or dies.
pub struct Attached {
    body: Incoming,
}

impl Attached {
    /// Waits until the engine is gone: the stream ended or the connection broke.
    pub async fn gone(&mut self) {
        while let Some(frame) = self.body.frame().await {
            if frame.is_err() {
                break;
            }
        }
    }
}

impl EngineClient {
    pub fn new(socket: &Path) -> Self {
        EngineClient {
            path: socket.to_path_buf(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.path
    }

    async fn send(
        &self,
        method: Method,
        uri: &str,
        body: Option<Vec<u8>>,
    ) -> Result<hyper::Response<Incoming>, CallError> {
        let not_sent = |e: &dyn std::fmt::Display| {
            CallError::NotSent(format!("{} ({e})", self.path.display()))
        };
        let stream = UnixStream::connect(&self.path)
            .await
            .map_err(|e| not_sent(&e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| not_sent(&e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(hyper::header::HOST, "localhost");
        if body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| not_sent(&e))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| CallError::Lost(e.to_string()))
    }

    /// Sends a request and reads the whole answer as JSON.
    pub async fn request(
        &self,
        method: Method,
        uri: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), CallError> {
        let body = body.map(|b| b.to_string().into_bytes());
        let resp = self.send(method, uri, body).await?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| CallError::Lost(e.to_string()))?
            .to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok((status, value))
    }

    /// Forwards one MCP tool call; the answer is exactly the engine's.
    pub async fn call_tool(&self, name: &str, args: &Value) -> Result<ToolAnswer, CallError> {
        let (status, v) = self
            .request(Method::POST, &format!("/rpc/tools/{name}"), Some(args))
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

    /// Attaches as a frontend: the engine counts this process while the stream is open.
    /// Answers within `within` or fails (an engine that is shutting down accepts connections
    /// it will never answer).
    pub async fn attach(&self, within: Duration) -> Result<Attached, CallError> {
        let resp = tokio::time::timeout(within, self.send(Method::GET, "/rpc/attach", None))
            .await
            .map_err(|_| CallError::NotSent(format!("{} (no answer)", self.path.display())))??;
        if resp.status() != StatusCode::OK {
            return Err(CallError::NotSent(format!(
                "{} answered {} to attach",
                self.path.display(),
                resp.status()
            )));
        }
        Ok(Attached {
            body: resp.into_body(),
        })
    }
}
