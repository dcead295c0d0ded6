//! Test harness: starts the real `orchestr8-async-server` binary on a DuckDB file in a temp dir,
//! with agents the test writes, and talks to it with rmcp's MCP client over stdio.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use std::sync::{Arc, Mutex};

use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, CustomNotification,
    ProgressNotificationParam,
};
use rmcp::service::{NotificationContext, RunningService};
use rmcp::transport::TokioChildProcess;
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{json, Value};
use tempfile::TempDir;

pub const BIN: &str = env!("CARGO_BIN_EXE_orchestr8-async-server");

/// A temp dir with an agents folder and a DB path; survives server restarts. Dropping it
/// kills whatever engine is still running on its database, so no test leaves one behind
/// (tests that care stop it themselves and check).
pub struct Env {
    pub dir: TempDir,
    pub env: Vec<(String, String)>,
}

impl Drop for Env {
    fn drop(&mut self) {
        for pid in self.engine_pids() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::Builder::new()
            .prefix("o8-it-")
            .tempdir()
            .expect("tempdir");
        std::fs::create_dir_all(dir.path().join("agents")).unwrap();
        std::fs::create_dir_all(dir.path().join("work")).unwrap();
        Env {
            dir,
            env: vec![("ORCHESTR8_RETRY_BACKOFF_BASE_MS".into(), "100".into())],
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The database file every process of this environment uses.
    pub fn db(&self) -> PathBuf {
        self.path("db/o8.duckdb")
    }

    /// The log of the detached engines of this environment.
    pub fn engine_log(&self) -> String {
        std::fs::read_to_string(self.path("db/o8.duckdb.log")).unwrap_or_default()
    }

    /// The engine processes running on this environment's database.
    pub fn engine_pids(&self) -> Vec<u32> {
        let db = self.db().display().to_string();
        processes_with(&db)
            .into_iter()
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| {
                        let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
                        args.contains(&&b"engine"[..])
                    })
                    .unwrap_or(false)
            })
            .collect()
    }

    /// The one engine running on this environment's database (waiting a little for it).
    pub async fn engine_pid(&self) -> u32 {
        for _ in 0..400 {
            let pids = self.engine_pids();
            if pids.len() == 1 {
                return pids[0];
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "expected one engine, found {:?}\n{}",
            self.engine_pids(),
            self.engine_log()
        );
    }

    /// kill -9 of every engine on this environment's database, waiting until they are gone.
    pub async fn kill9_engines(&self) {
        for pid in self.engine_pids() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            wait_gone(pid).await;
        }
    }

    /// Stops the engine with the CLI's `stop` and checks that no engine is left.
    pub async fn stop_engines(&self) {
        let (code, out, err) = self.cli(&["stop"]).await;
        assert_eq!(code, 0, "stop failed: {out}{err}");
        for pid in self.engine_pids() {
            wait_gone(pid).await;
        }
        assert!(self.engine_pids().is_empty(), "an engine is left");
    }

    /// Waits until no engine runs on the database (a detached engine exits once idle).
    pub async fn wait_engines_gone(&self) {
        for _ in 0..800 {
            if self.engine_pids().is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "the engine did not exit: {:?}\n{}",
            self.engine_pids(),
            self.engine_log()
        );
    }

    pub fn set(&mut self, k: &str, v: &str) -> &mut Self {
        self.env.retain(|(key, _)| key != k);
        self.env.push((k.into(), v.into()));
        self
    }

    /// Writes `agents/<name>.md` with the given extra frontmatter lines and a `sh -c` command.
    pub fn shell_agent(&self, name: &str, script: &str, extra: &str) {
        let text = format!(
            "---\nname: {name}\ndescription: test agent {name}\nrunner: command\ncommand: [\"sh\", \"-c\", {}]\n{extra}\n---\nYou are {name}.\n",
            serde_json::to_string(script).unwrap()
        );
        std::fs::write(self.path(&format!("agents/{name}.md")), text).unwrap();
    }

    /// Writes `agents/<name>.md` with the given frontmatter lines (after `name:`) and body.
    pub fn agent(&self, name: &str, frontmatter: &str, body: &str) {
        let text = format!(
            "---\nname: {name}\ndescription: test agent {name}\n{frontmatter}\n---\n{body}"
        );
        std::fs::write(self.path(&format!("agents/{name}.md")), text).unwrap();
    }

    /// Writes an executable `sh` script at `rel` and returns its path.
    pub fn script(&self, rel: &str, text: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    /// Starts a session; its stderr goes to `server-<n>.log` in the temp dir.
    pub async fn start(&self) -> Server {
        self.start_with(self.command()).await
    }

    /// Starts a session whose working directory is `dir` (a window opened in that project).
    pub async fn start_in(&self, dir: &Path) -> Server {
        let mut cmd = self.command();
        cmd.current_dir(dir);
        self.start_with(cmd).await
    }

    /// Starts a session whose client declares the MCP Tasks extension.
    pub async fn start_declaring_tasks(&self) -> Server {
        let listener = Listener {
            tasks: true,
            ..Listener::default()
        };
        self.start_as(self.command(), listener).await
    }

    async fn start_with(&self, cmd: tokio::process::Command) -> Server {
        self.start_as(cmd, Listener::default()).await
    }

    async fn start_as(&self, mut cmd: tokio::process::Command, listener: Listener) -> Server {
        let n = std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .map(|e| e.file_name().to_string_lossy().starts_with("server-"))
                    .unwrap_or(false)
            })
            .count();
        let log_path = self.path(&format!("server-{n}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        cmd.env("ORCHESTR8_LOG", "info,orchestr8_async=debug");
        let (transport, _) = TokioChildProcess::builder(cmd)
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn server");
        let pid = transport.id().expect("pid");
        let client = listener.clone().serve(transport).await.unwrap_or_else(|e| {
            panic!(
                "MCP initialize failed: {e}; server log:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            )
        });
        Server {
            client: Some(client),
            listener,
            pid,
            log_path,
            engine_log: self.path("db/o8.duckdb.log"),
        }
    }
}

/// The test client's handler: keeps the notifications the server sends.
#[derive(Clone, Default)]
pub struct Listener {
    progress: Arc<Mutex<Vec<ProgressNotificationParam>>>,
    /// `notifications/claude/channel` params.
    channel: Arc<Mutex<Vec<Value>>>,
    /// Declares the Tasks extension.
    tasks: bool,
}

impl ClientHandler for Listener {
    fn get_info(&self) -> ClientConfig {
        let mut c = ClientConfig::default();
        if self.tasks {
            c.capabilities = ClientCapabilities::builder().enable_tasks().build();
        }
        c
    }

    async fn on_custom_notification(
        &self,
        n: CustomNotification,
        _context: NotificationContext<RoleClient>,
    ) {
        if n.method == "notifications/claude/channel" {
            self.channel
                .lock()
                .unwrap()
                .push(n.params.unwrap_or(Value::Null));
        }
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.progress.lock().unwrap().push(params);
    }
}

pub struct Server {
    client: Option<RunningService<RoleClient, Listener>>,
    listener: Listener,
    pub pid: u32,
    pub log_path: PathBuf,
    engine_log: PathBuf,
}

impl Server {
    /// Calls a tool and returns, with its answer, the progress notifications that arrived
    /// meanwhile. (rmcp's client puts a progress token of its own on every request, as a
    /// client that shows progress does.)
    pub async fn call_with_progress(
        &self,
        tool: &str,
        args: Value,
    ) -> (CallToolResult, Vec<ProgressNotificationParam>) {
        let before = self.listener.progress.lock().unwrap().len();
        let r = self.raw(tool, args).await;
        let notes = self.listener.progress.lock().unwrap()[before..].to_vec();
        (r, notes)
    }

    /// The channel events received so far.
    pub fn channel_events(&self) -> Vec<Value> {
        self.listener.channel.lock().unwrap().clone()
    }

    /// The rmcp client, for requests the helpers do not cover.
    pub fn client(&self) -> &RunningService<RoleClient, Listener> {
        self.client.as_ref().expect("client")
    }

    /// The log of the engine this session uses.
    pub fn engine_log_path(&self) -> &Path {
        &self.engine_log
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub async fn raw(&self, tool: &str, args: Value) -> CallToolResult {
        let mut p = CallToolRequestParams::new(tool.to_string());
        p.arguments = args.as_object().cloned();
        self.client
            .as_ref()
            .expect("client")
            .call_tool(p)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{tool} call failed at the protocol level: {e}\n{}",
                    self.log()
                )
            })
    }

    /// Calls a tool; `None` when the call fails at the protocol level (the server died) or
    /// takes longer than `limit`.
    pub async fn try_call(
        &self,
        tool: &str,
        args: Value,
        limit: Duration,
    ) -> Option<CallToolResult> {
        let mut p = CallToolRequestParams::new(tool.to_string());
        p.arguments = args.as_object().cloned();
        let client = self.client.as_ref()?;
        match tokio::time::timeout(limit, client.call_tool(p)).await {
            Ok(Ok(r)) => Some(r),
            _ => None,
        }
    }

    pub async fn tools(&self) -> Vec<rmcp::model::Tool> {
        self.client
            .as_ref()
            .expect("client")
            .list_all_tools()
            .await
            .expect("tools/list")
    }

    /// Calls a tool that must succeed; returns its structured content, checking that the text
    /// block carries the same JSON.
    pub async fn call(&self, tool: &str, args: Value) -> Value {
        let r = self.raw(tool, args.clone()).await;
        let structured = r.structured_content.clone().unwrap_or(Value::Null);
        assert_ne!(
            r.is_error,
            Some(true),
            "{tool}({args}) failed: {structured}\nserver log:\n{}",
            self.log()
        );
        let text = r
            .content
            .first()
            .and_then(|c| c.as_text())
            .expect("text block");
        let from_text: Value = serde_json::from_str(&text.text).expect("text is JSON");
        assert_eq!(from_text, structured, "text and structured content differ");
        structured
    }

    /// Calls a tool that must be refused; returns the error message.
    pub async fn call_err(&self, tool: &str, args: Value) -> String {
        let r = self.raw(tool, args.clone()).await;
        assert_eq!(
            r.is_error,
            Some(true),
            "{tool}({args}) should have been refused but returned {:?}",
            r.structured_content
        );
        let v = r.structured_content.expect("structured error");
        v["error"].as_str().expect("error message").to_string()
    }

    pub async fn submit(
        &self,
        name: &str,
        agent: &str,
        instructions: &str,
        extra: Value,
    ) -> String {
        let mut args =
            json!({"name": name, "agent_name": agent, "agent_instructions": instructions});
        if let Value::Object(m) = extra {
            args.as_object_mut().unwrap().extend(m);
        }
        let r = self.call("task_async", args).await;
        assert_eq!(r["status"], "pending");
        r["task_id"].as_str().unwrap().to_string()
    }

    pub async fn wait_all(&self, ids: &[String], timeout_s: u64) -> Vec<Value> {
        let r = self
            .call(
                "task_wait",
                json!({"task_ids": ids, "timeout_seconds": timeout_s}),
            )
            .await;
        assert_eq!(
            r["timed_out"],
            false,
            "task_wait timed out: {r}\n{}",
            self.log()
        );
        r["tasks"].as_array().unwrap().clone()
    }

    /// Waits for one task to reach a terminal status and returns it.
    pub async fn wait_one(&self, id: &str, timeout_s: u64) -> Value {
        self.wait_all(&[id.to_string()], timeout_s).await.remove(0)
    }

    /// The task's log messages, oldest first.
    pub async fn log_messages(&self, id: &str) -> Vec<String> {
        let r = self
            .call("task_logs", json!({"task_id": id, "limit": 1000}))
            .await;
        r["logs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["message"].as_str().unwrap().to_string())
            .collect()
    }

    pub async fn status(&self, id: &str) -> Value {
        self.call("task_status", json!({"task_id": id})).await
    }

    /// Waits until `pred` holds for the task's status object, polling.
    pub async fn until(&self, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..400 {
            let s = self.status(id).await;
            if pred(&s) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("task {id} never became {what}: {}", self.status(id).await);
    }

    /// Ends the session (closes its stdin) and waits for its process to exit; the engine
    /// behind it runs on until idle.
    pub async fn stop(mut self) {
        if let Some(c) = self.client.take() {
            let _ = c.cancel().await;
        }
        wait_gone(self.pid).await;
    }

    /// kill -9 of the session only (a window killed); its engine runs on.
    pub async fn kill9_session_only(mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        wait_gone(self.pid).await;
        if let Some(c) = self.client.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), c.cancel()).await;
        }
    }

    /// kill -9 of the session and of the engine behind it, no warning: the machine crashed.
    pub async fn kill9(mut self, env: &Env) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        env.kill9_engines().await;
        wait_gone(self.pid).await;
        if let Some(c) = self.client.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), c.cancel()).await;
        }
    }
}

pub async fn wait_gone(pid: u32) {
    for _ in 0..400 {
        if !alive(pid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("server {pid} did not exit");
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    orchestr8_async::runner::process::alive(pid)
}

/// Processes whose command line contains `needle` (excluding zombies).
pub fn processes_with(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) && alive(pid) {
                out.push(pid);
            }
        }
    }
    out
}

pub fn read_lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Parses an RFC 3339 time from a task object field.
pub fn time(v: &Value, field: &str) -> chrono::DateTime<chrono::Utc> {
    let s = v[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} missing in {v}"));
    chrono::DateTime::parse_from_rfc3339(s).unwrap().to_utc()
}

/// A server driven by hand over its stdio (initialize, then tool calls as JSON lines), so a
/// test can close its stdin and nothing else — unlike rmcp's client, whose close also sends
/// SIGTERM after 3 s.
pub struct RawServer {
    pub child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    stdout: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    next_id: u64,
    pub log_path: PathBuf,
}

impl Env {
    /// The command that runs the binary in this environment (server or CLI). It sees only
    /// what the test sets, not the developer's own keys or settings.
    pub fn command(&self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(BIN);
        for (k, _) in std::env::vars() {
            if ["ORCHESTR8_", "ANTHROPIC_", "OPENAI_"]
                .iter()
                .any(|p| k.starts_with(p))
            {
                cmd.env_remove(k);
            }
        }
        cmd.current_dir(self.dir.path())
            .env("ORCHESTR8_DB_PATH", self.db())
            .env("ORCHESTR8_AGENTS_DIR", self.path("agents"))
            .env("ORCHESTR8_SHUTDOWN_GRACE_SECONDS", "2")
            .env("ORCHESTR8_IDLE_EXIT_SECONDS", "0");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    pub async fn start_raw(&self, log_name: &str) -> RawServer {
        self.start_raw_with(log_name, self.command()).await
    }

    /// A raw session that leads a process group of its own (as a terminal's shell does), so
    /// that the whole group can be killed.
    pub async fn start_raw_in_own_group(&self, log_name: &str) -> RawServer {
        let mut cmd = self.command();
        cmd.process_group(0);
        self.start_raw_with(log_name, cmd).await
    }

    async fn start_raw_with(&self, log_name: &str, mut cmd: tokio::process::Command) -> RawServer {
        use tokio::io::AsyncBufReadExt;
        let log_path = self.path(log_name);
        let mut child = cmd
            .env("ORCHESTR8_LOG", "info,orchestr8_async=debug")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn server");
        let stdin = child.stdin.take();
        let stdout = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut s = RawServer {
            child,
            stdin,
            stdout,
            next_id: 1,
            log_path,
        };
        s.request(
            "initialize",
            json!({"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "raw", "version": "0"}}),
        )
        .await;
        s.send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await;
        s
    }

    /// Runs a CLI command to its end: (exit status, stdout, stderr).
    pub async fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = tokio::time::timeout(
            Duration::from_secs(60),
            self.command()
                .args(args)
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .unwrap_or_else(|_| panic!("cli {args:?} did not finish"))
        .expect("run cli");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// A CLI command that must succeed; its stdout as JSON (`--json` is added).
    pub async fn cli_json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let (code, out, err) = self.cli(&all).await;
        assert_eq!(code, 0, "cli {all:?} failed: {err}\n{out}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("cli {all:?}: {e}: {out}"))
    }
}

impl RawServer {
    pub async fn send(&mut self, msg: Value) {
        use tokio::io::AsyncWriteExt;
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin
            .write_all(format!("{msg}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
    }

    /// Writes `line` and a newline as they are, whatever they hold.
    pub async fn send_line(&mut self, line: &[u8]) {
        use tokio::io::AsyncWriteExt;
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(line).await.unwrap();
        stdin.write_all(b"\n").await.unwrap();
        stdin.flush().await.unwrap();
    }

    /// The next message the server sends with this `id`, skipping others; `null` stands for
    /// an error without an id (one the server could not tie to a request).
    pub async fn message_with_id(&mut self, id: &Value) -> Value {
        loop {
            let line = tokio::time::timeout(Duration::from_secs(30), self.stdout.next_line())
                .await
                .unwrap_or_else(|_| panic!("no message with id {id} in time"))
                .unwrap()
                .expect("stdout open");
            let v: Value = serde_json::from_str(&line).unwrap();
            let matches = match v.get("id") {
                Some(got) => got == id,
                None => id.is_null() && v.get("error").is_some(),
            };
            if matches {
                return v;
            }
        }
    }

    async fn request(&mut self, method: &str, params: Value) -> Value {
        self.request_seeing(method, params).await.0
    }

    /// Sends a request; its result, and every other message the server sent before it.
    pub async fn request_seeing(&mut self, method: &str, params: Value) -> (Value, Vec<Value>) {
        let id = self.next_id;
        self.next_id += 1;
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await;
        let mut others = Vec::new();
        loop {
            let line = tokio::time::timeout(Duration::from_secs(30), self.stdout.next_line())
                .await
                .expect("answer in time")
                .unwrap()
                .expect("stdout open");
            let v: Value = serde_json::from_str(&line).unwrap();
            if v["id"] == id {
                return (v["result"].clone(), others);
            }
            others.push(v);
        }
    }

    /// A tool call that must succeed: its structured answer.
    pub async fn call(&mut self, tool: &str, args: Value) -> Value {
        let r = self
            .request("tools/call", json!({"name": tool, "arguments": args}))
            .await;
        assert_ne!(r["isError"], true, "{tool} failed: {r}");
        r["structuredContent"].clone()
    }

    /// Submits a task of `agent` named after it; returns its id.
    pub async fn submit(&mut self, agent: &str, extra: Value) -> String {
        let mut args = json!({"name": agent, "agent_name": agent, "agent_instructions": "x"});
        if let Value::Object(m) = extra {
            args.as_object_mut().unwrap().extend(m);
        }
        self.call("task_async", args).await["task_id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Closes stdin only (the client has gone).
    pub fn close_stdin(&mut self) {
        self.stdin.take();
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

/// An npm package's executable, installed (once) into `~/.cache/orchestr8-async/<cache>` —
/// where `.ci/run` installs it ahead of the tests.
pub fn npm_tool(cache: &str, package: &str, bin: &str) -> PathBuf {
    let home = std::env::var("HOME").expect("HOME is set");
    let dir = PathBuf::from(home)
        .join(".cache/orchestr8-async")
        .join(cache);
    let exe = dir.join("node_modules/.bin").join(bin);
    if !exe.exists() {
        std::fs::create_dir_all(&dir).unwrap();
        let out = std::process::Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", package])
            .current_dir(&dir)
            .output()
            .unwrap_or_else(|e| {
                panic!("npm is needed to install {package} ({e}); install Node.js and npm, or run .ci/run")
            });
        assert!(
            out.status.success(),
            "npm install of {package} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    exe
}

/// A Python package's executable, installed (once) into a virtual environment at
/// `~/.cache/orchestr8-async/<venv>` — where `.ci/run` installs it ahead of the tests.
pub fn pip_tool(venv: &str, requirement: &str, bin: &str) -> PathBuf {
    // Tests run in parallel: one installs, the others wait for it.
    static INSTALLING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = INSTALLING.lock().unwrap_or_else(|p| p.into_inner());
    let home = std::env::var("HOME").expect("HOME is set");
    let dir = PathBuf::from(home)
        .join(".cache/orchestr8-async")
        .join(venv);
    let exe = dir.join("bin").join(bin);
    if !exe.exists() {
        let made = std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&dir)
            .output()
            .unwrap_or_else(|e| {
                panic!("python3 is needed to install {requirement} ({e}); run .ci/run")
            });
        assert!(
            made.status.success(),
            "python3 -m venv failed: {}",
            String::from_utf8_lossy(&made.stderr)
        );
        let out = std::process::Command::new(dir.join("bin/pip"))
            .args(["install", "--quiet", requirement])
            .output()
            .expect("run pip");
        assert!(
            out.status.success(),
            "pip install of {requirement} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    exe
}
