//! A minimal JSON-RPC client over a child's stdio: newline-delimited messages, responses
//! matched to requests by id. Deliberately thin, so that what is measured is the server.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{oneshot, Mutex};

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

pub struct Client {
    child: Child,
    stdin: ChildStdin,
    next_id: u64,
    pending: Pending,
}

impl Client {
    /// Starts `cmd` and completes the MCP handshake.
    pub async fn start(mut cmd: Command) -> Result<Client> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {cmd:?}"))?;
        let stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin"))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let pending: Pending = Arc::default();
        let p = pending.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if let Some(id) = v["id"].as_u64() {
                    if let Some(tx) = p.lock().await.remove(&id) {
                        let _ = tx.send(v);
                    }
                }
            }
        });
        let mut c = Client {
            child,
            stdin,
            next_id: 0,
            pending,
        };
        let init = c
            .request(
                "initialize",
                json!({"protocolVersion": "2025-06-18", "capabilities": {},
                "clientInfo": {"name": "o8-bench", "version": "0"}}),
            )
            .await?;
        tokio::time::timeout(Duration::from_secs(120), init)
            .await
            .context("no answer to initialize within 120 s")??;
        c.notify("notifications/initialized").await?;
        Ok(c)
    }

    async fn notify(&mut self, method: &str) -> Result<()> {
        let line = format!("{}\n", json!({"jsonrpc": "2.0", "method": method}));
        self.stdin.write_all(line.as_bytes()).await?;
        Ok(())
    }

    /// Sends a request; the returned receiver yields its response.
    pub async fn request(
        &mut self,
        method: &str,
        params: Value,
    ) -> Result<oneshot::Receiver<Value>> {
        self.next_id += 1;
        let id = self.next_id;
        let (tx, rx) = oneshot::channel();
        self.pending.lock().await.insert(id, tx);
        let line = format!(
            "{}\n",
            json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
        );
        self.stdin.write_all(line.as_bytes()).await?;
        Ok(rx)
    }

    /// Sends a `tools/call` without waiting for it.
    pub async fn send_tool(&mut self, name: &str, args: Value) -> Result<oneshot::Receiver<Value>> {
        self.request("tools/call", json!({"name": name, "arguments": args}))
            .await
    }

    /// Calls a tool and returns its structured content (an error if the call failed).
    pub async fn tool(&mut self, name: &str, args: Value) -> Result<Value> {
        let rx = self.send_tool(name, args).await?;
        structured(rx.await?)
    }

    /// Closes stdin (the end of an MCP session) and waits for the process to exit.
    pub async fn stop(mut self) -> Result<()> {
        drop(self.stdin);
        tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await??;
        Ok(())
    }
}

/// The structured content of a `tools/call` response; an error for a JSON-RPC error or
/// `isError: true`.
pub fn structured(resp: Value) -> Result<Value> {
    let r = &resp["result"];
    if r["isError"] == true || resp.get("error").is_some() {
        bail!("call failed: {resp}");
    }
    Ok(r["structuredContent"].clone())
}
