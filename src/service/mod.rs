//! The service core: the one place every frontend (MCP, REST, CLI) calls.
//!
//! It validates arguments into domain values (every refusal says what to change), then asks the
//! scheduler to act and shapes the answer. It writes no SQL and holds no state of its own,
//! but for the projects' cursors of the Claude Code hook ([`told`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use crate::agents::{validate_name, AgentDef, AgentError, AgentRegistry};
use crate::api::*;
use crate::cluster::Cluster;
use crate::limits;
use crate::link::SessionContext;
use crate::model::{now_us, Isolation, Priority, Task, TaskStatus, TaskView, Usage, Workspace};
use crate::scheduler::{not_found, SchedError, Scheduler, Submitted};
use crate::store::TaskFilter;
use crate::workspace::WorkspaceError;

mod dashboard;
mod overview;
mod progress;
mod told;
pub mod tools;
mod webhooks;
mod workflows;

/// Default per-attempt timeout when neither the task nor its agent sets one.
pub const DEFAULT_TIMEOUT_SECONDS: u32 = 3600;
/// Most dependencies one task may list.
pub const MAX_DEPENDENCIES: usize = 1000;

/// `task_diff`'s size cap: by default about what an agent can read in one go; at most 4 MiB.
pub const DEFAULT_DIFF_BYTES: usize = 100_000;
pub const MAX_DIFF_BYTES: usize = 4 * 1024 * 1024;
/// Most ids one task_wait may list.
pub const MAX_WAIT_IDS: usize = 10_000;

/// Largest `offset` of the list calls (the store cannot page further; nobody has that many).
pub(crate) const MAX_OFFSET: i64 = 1_000_000_000;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A value is wrong (HTTP 400).
    #[error("{0}")]
    Invalid(String),
    /// An id names nothing (HTTP 404).
    #[error("{0}")]
    NotFound(String),
    /// The change is not allowed in the current state (HTTP 409).
    #[error("{0}")]
    Conflict(String),
    /// Something broke on our side (HTTP 500/503).
    #[error("{0}")]
    Internal(String),
}

/// A store's failure, as the scheduler's own is answered: the caller can change nothing.
impl From<crate::store::StoreError> for ServiceError {
    fn from(e: crate::store::StoreError) -> Self {
        ServiceError::from(SchedError::Store(e))
    }
}

impl From<SchedError> for ServiceError {
    fn from(e: SchedError) -> Self {
        match e {
            SchedError::NotFound(m) => ServiceError::NotFound(m),
            SchedError::Conflict(m) => ServiceError::Conflict(m),
            SchedError::Invalid(m) => ServiceError::Invalid(m),
            SchedError::ShuttingDown => ServiceError::Internal(e.to_string()),
            SchedError::Store(e) => ServiceError::Internal(e.to_string()),
            SchedError::Internal(m) => ServiceError::Internal(m),
        }
    }
}

impl From<AgentError> for ServiceError {
    fn from(e: AgentError) -> Self {
        match e {
            AgentError::NotFound(m) => ServiceError::NotFound(m),
            AgentError::InvalidName(m) => ServiceError::Invalid(m),
            // A well-formed request naming an agent whose file is broken: the file is at fault.
            e @ AgentError::Invalid { .. } => ServiceError::Conflict(e.to_string()),
        }
    }
}

type Result<T> = std::result::Result<T, ServiceError>;

/// The queue of a new task: the argument, else its agent's `queue`, else the default queue.
fn queue_of(asked: Option<&str>, agent: &AgentDef) -> Result<String> {
    use crate::cluster::{valid_queue, DEFAULT_QUEUE};
    if let Some(q) = asked {
        if !valid_queue(q) {
            return invalid(format!(
                "queue {q:?} is not a queue name: use 1 to 64 letters, digits, '-', '_' or '.'"
            ));
        }
        return Ok(q.to_string());
    }
    match agent.extra.get("queue") {
        None => Ok(DEFAULT_QUEUE.to_string()),
        Some(serde_json::Value::String(q)) if valid_queue(q) => Ok(q.clone()),
        Some(other) => Err(ServiceError::Conflict(format!(
            "agent file {}: queue {other} is not a queue name: use 1 to 64 letters, digits, '-', \
             '_' or '.'",
            agent.path.display()
        ))),
    }
}

/// Whether a text is empty or only blanks. Blank is Unicode white space plus what one regex
/// engine or another also counts as white space — the information separators U+001C..U+001F
/// (Python's) and U+FEFF (ECMAScript's) —, so a text is refused exactly when the API
/// document's pattern `[^\s\u001c-\u001f\u0085\ufeff]` (one character that is not blank)
/// says it is invalid, whichever engine a validator uses.
pub(crate) fn is_blank(s: &str) -> bool {
    s.chars()
        .all(|c| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c) || c == '\u{feff}')
}

fn invalid<T>(msg: impl Into<String>) -> Result<T> {
    Err(ServiceError::Invalid(msg.into()))
}

/// The `task_ids` of a wait: 1 to [`MAX_WAIT_IDS`] valid ids, in order, duplicates removed.
fn parse_waited_ids(task_ids: &[String]) -> Result<Vec<Uuid>> {
    if task_ids.is_empty() || task_ids.len() > MAX_WAIT_IDS {
        return invalid(format!(
            "task_ids must list 1 to {MAX_WAIT_IDS} task ids (got {})",
            task_ids.len()
        ));
    }
    let mut seen = std::collections::HashSet::new();
    let mut ids = Vec::with_capacity(task_ids.len());
    for s in task_ids {
        let id = parse_task_id("task_ids", s)?;
        if seen.insert(id) {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// A UUID in its usual hyphenated form (the API documents `format: uuid`), surrounding blanks
/// allowed.
pub(crate) fn parse_uuid(s: &str) -> Option<Uuid> {
    let s = s.trim();
    (s.len() == 36).then(|| Uuid::try_parse(s).ok()).flatten()
}

pub fn parse_task_id(field: &str, s: &str) -> Result<Uuid> {
    parse_uuid(s).ok_or_else(|| {
        ServiceError::Invalid(format!(
            "{field}: {s:?} is not a task id; task ids are UUIDs such as \"0190f5c2-7b1e-7cc3-8a5e-3f1d2c4b5a69\", as returned by task_async"
        ))
    })
}

/// A task status filter, or a refusal that lists the statuses there are.
fn parse_status(s: &str) -> Result<TaskStatus> {
    TaskStatus::parse(s).ok_or_else(|| {
        ServiceError::Invalid(format!(
            "status {s:?} is not one of pending, running, completed, failed, cancelled"
        ))
    })
}

fn in_range(field: &str, v: Option<i64>, lo: i64, hi: i64, default: i64) -> Result<i64> {
    match v {
        None => Ok(default),
        Some(x) if (lo..=hi).contains(&x) => Ok(x),
        Some(x) => invalid(format!("{field} must be between {lo} and {hi} (got {x})")),
    }
}

/// What a webhook URL must look like, as the API document says: http or https, optional user
/// information, a host name (underscores allowed, its last label starting with a letter or an
/// underscore, a trailing dot allowed) or an IPv4 address (not IPv6), an optional port, then
/// printable ASCII. Everything it admits is a URL the HTTP client
/// can call.
pub const WEBHOOK_URL_PATTERN: &str = r"^[Hh][Tt][Tt][Pp][Ss]?://([A-Za-z0-9._~!$&'()*+,;=-]+(:[A-Za-z0-9._~!$&'()*+,;=-]*)?@)?(([A-Za-z0-9_-]+\.)*[A-Za-z_][A-Za-z0-9_-]*\.?|(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3})(:([0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?([/?#][!-~]*)?$";

fn webhook_url_shape() -> &'static regex::Regex {
    static SHAPE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    SHAPE.get_or_init(|| regex::Regex::new(WEBHOOK_URL_PATTERN).expect("a valid pattern"))
}

pub fn validate_webhook_url(url: &str) -> Result<String> {
    if url.chars().count() > 2048 {
        return invalid("webhook_url is longer than 2048 characters");
    }
    let parsed = url::Url::parse(url).map_err(|e| {
        ServiceError::Invalid(format!(
            "webhook_url {url:?} is not a valid URL ({e}); use for example \"https://example.com/hooks/orchestr8\""
        ))
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return invalid(format!(
            "webhook_url must use http or https (got {:?})",
            parsed.scheme()
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return invalid("webhook_url has no host");
    }
    // Last, the form the API document gives (no IPv6 literal, printable ASCII only), so that
    // the document and the server agree on every URL.
    if !webhook_url_shape().is_match(url) {
        return invalid(format!(
            "webhook_url {url:?} is not of the accepted form: http or https, a host name or an IPv4 address, an optional port, then printable ASCII; use for example \"https://example.com/hooks/orchestr8\""
        ));
    }
    Ok(url.to_string())
}

/// The session a call comes from, as the service needs it: where "here" is and which agents
/// it can use.
struct Session {
    cwd: Arc<str>,
    /// The session's search path, colon-separated (what its tasks record).
    agents_dir: Arc<str>,
    agents: AgentRegistry,
}

/// The service for one caller. Built on the engine's defaults (REST: the
/// engine's own directory and search path); [`Service::for_session`] gives the same service
/// in a session's context.
#[derive(Clone)]
pub struct Service {
    core: Core,
    session: Option<Arc<Session>>,
    /// What each project has been told of its ended tasks.
    told: Arc<told::ToldBook>,
}

/// What runs the tasks the service accepts: this engine's own scheduler on its DuckDB file, or
/// a node of a cluster of engines sharing one PostgreSQL database.
#[derive(Clone)]
pub enum Core {
    Local(Scheduler),
    Cluster(Cluster),
}

impl Core {
    fn agents(&self) -> &AgentRegistry {
        match self {
            Core::Local(s) => s.agents(),
            Core::Cluster(c) => c.agents(),
        }
    }

    fn runners(&self) -> &crate::runner::Runners {
        match self {
            Core::Local(s) => s.runners(),
            Core::Cluster(c) => c.runners(),
        }
    }

    async fn task(&self, id: Uuid) -> Result<Option<Task>> {
        Ok(match self {
            Core::Local(s) => s.task(id).await?,
            Core::Cluster(c) => c.task(id).await?,
        })
    }
}

/// A task for a cluster: its queue (asked, or its agent's), and the host it is bound to.
fn cluster_task(
    c: &Cluster,
    task: Task,
    instructions: String,
    asked_queue: Option<String>,
    agent: &AgentDef,
) -> Result<crate::store::postgres::NewClusterTask> {
    let queue = queue_of(asked_queue.as_deref(), agent)?;
    let runs_a_process = matches!(agent.runner.as_str(), "claude" | "command");
    let isolated = task.workspace.is_some();
    let host = crate::cluster::host_binding(&queue, runs_a_process, isolated, &c.node().host);
    Ok(crate::store::postgres::NewClusterTask {
        task,
        instructions,
        queue,
        host,
        max_concurrency: agent.max_concurrency,
    })
}

impl Service {
    /// The service on `core`; what each project has been told of its ended tasks is kept
    /// next to `db_path` (on a cluster too: telling is per machine).
    pub fn new(core: Core, db_path: &str) -> Self {
        Service {
            told: told::ToldBook::new(db_path),
            core,
            session: None,
        }
    }

    /// This service in the context of a session of another process: relative paths and the
    /// default working directory are the session's, and so are the agents it sees.
    pub fn for_session(&self, ctx: &SessionContext) -> Service {
        let agents_dir = ctx.agents_dir.join(":");
        Service {
            core: self.core.clone(),
            told: self.told.clone(),
            session: Some(Arc::new(Session {
                cwd: Arc::from(ctx.cwd.as_str()),
                agents: self
                    .core
                    .agents()
                    .with_search_path(Some(agents_dir.as_str())),
                agents_dir: Arc::from(agents_dir),
            })),
        }
    }

    /// The agents this caller can use.
    fn agents(&self) -> AgentRegistry {
        match &self.session {
            Some(s) => s.agents.clone(),
            None => self.core.agents().clone(),
        }
    }

    /// Whether the database answers (for health checks); the error says why not.
    pub async fn db_health(&self) -> std::result::Result<(), String> {
        match &self.core {
            Core::Local(s) => s.store().ping().await.map_err(|e| e.to_string()),
            Core::Cluster(c) => c.ping().await.map_err(|e| e.to_string()),
        }
    }

    /// Tasks pending and running right now (for the metrics gauges). A cluster node counts
    /// the attempts it runs itself; the cluster's queue is in the database.
    pub fn hot_counts(&self) -> (usize, usize) {
        match &self.core {
            Core::Local(s) => s.hot_counts(),
            Core::Cluster(c) => (0, c.running_here()),
        }
    }

    /// The task object and `existing` (the REST answer to `POST /api/tasks`).
    pub async fn create_task(&self, a: TaskAsyncArgs) -> Result<CreatedTask> {
        let (task, existing) = self.submit_task(a).await?;
        Ok(CreatedTask { task, existing })
    }

    pub async fn task_async(&self, a: TaskAsyncArgs) -> Result<TaskAccepted> {
        let (view, existing) = self.submit_task(a).await?;
        Ok(TaskAccepted {
            task_id: view.task_id,
            status: view.status,
            created_at: view.created_at,
            existing,
        })
    }

    /// Accepts a task; returns it and whether an earlier task with the same idempotency key
    /// was returned instead of a new one.
    async fn submit_task(&self, a: TaskAsyncArgs) -> Result<(TaskView, bool)> {
        let asked_queue = a.queue.clone();
        let (task, instructions, agent) = self.build_task(a).await?;
        let submitted = match &self.core {
            Core::Local(s) => {
                // One engine serves every queue; a queue argument is still checked.
                if asked_queue.is_some() {
                    queue_of(asked_queue.as_deref(), &agent)?;
                }
                s.submit(task, instructions, agent).await?
            }
            Core::Cluster(c) => {
                c.submit(cluster_task(c, task, instructions, asked_queue, &agent)?)
                    .await?
            }
        };
        Ok(match submitted {
            Submitted::Created(t) => (t.view(), false),
            Submitted::Existing(t) => (t.view(), true),
        })
    }

    /// Validates task arguments into a new pending task, its instructions and its agent. The
    /// agent must exist and its runner be able to run it now.
    async fn build_task(&self, a: TaskAsyncArgs) -> Result<(Task, String, AgentDef)> {
        let name = workflows::display_name("name", &a.name)?;
        validate_name("agent_name", &a.agent_name).map_err(ServiceError::Invalid)?;
        if is_blank(&a.agent_instructions) {
            return invalid("agent_instructions is empty; say what the agent should do");
        }
        if a.agent_instructions.len() > limits::MAX_INSTRUCTIONS_BYTES {
            return invalid(format!(
                "agent_instructions is {} bytes; the limit is {} (1 MiB): put large inputs in a file under working_dir and refer to it",
                a.agent_instructions.len(),
                limits::MAX_INSTRUCTIONS_BYTES
            ));
        }
        let priority = match a.priority.as_deref() {
            None => Priority::Normal,
            Some(p) => Priority::parse(p).ok_or_else(|| {
                ServiceError::Invalid(format!(
                    "priority {p:?} is not one of low, normal, high, critical (medium means normal)"
                ))
            })?,
        };
        let webhook_url = a
            .webhook_url
            .as_deref()
            .map(validate_webhook_url)
            .transpose()?;
        let asked = a.dependencies.unwrap_or_default();
        if asked.len() > MAX_DEPENDENCIES {
            return invalid(format!(
                "dependencies lists more than {MAX_DEPENDENCIES} tasks"
            ));
        }
        let mut dependencies = Vec::new();
        for d in asked {
            let id = parse_task_id("dependencies", &d)?;
            if !dependencies.contains(&id) {
                dependencies.push(id);
            }
        }
        let idempotency_key = match a.idempotency_key {
            Some(k) if k.is_empty() || k.chars().count() > 200 => {
                return invalid("idempotency_key must be 1-200 characters")
            }
            k => k,
        };
        let session = self.session.as_deref();
        let working_dir = match a.working_dir {
            Some(d) => {
                // Relative to the session's directory (the engine's own for callers without one).
                let path = match session {
                    Some(s) => Path::new(&*s.cwd).join(&d),
                    None => std::path::absolute(&d).unwrap_or_else(|_| PathBuf::from(&d)),
                };
                // A directory that is not there is a missing resource (404), like an agent.
                if !path.is_dir() {
                    return Err(ServiceError::NotFound(format!(
                        "working_dir {d:?} is not an existing directory ({} here; relative paths are taken from {})",
                        path.display(),
                        session.map_or("the engine's working directory", |_| "the session's working directory")
                    )));
                }
                Some(path.display().to_string())
            }
            None => None,
        };
        let metadata = match a.metadata {
            None | Some(serde_json::Value::Null) => None,
            Some(m @ serde_json::Value::Object(_)) => {
                if m.to_string().len() > limits::MAX_METADATA_BYTES {
                    return invalid("metadata is larger than 64 KiB");
                }
                Some(m)
            }
            Some(_) => {
                return invalid("metadata must be a JSON object, e.g. {\"ticket\": \"ENG-42\"}")
            }
        };
        let now = now_us();
        let scheduled_us = match a.run_at.as_deref() {
            None => now,
            Some(s) => chrono::DateTime::parse_from_rfc3339(s)
                .map_err(|e| {
                    ServiceError::Invalid(format!(
                        "run_at {s:?} is not an RFC 3339 time ({e}); use e.g. \"2026-01-01T09:00:00Z\""
                    ))
                })?
                .timestamp_micros()
                .max(now),
        };

        // The agent must exist and be runnable now, not only when a worker picks the task up.
        let agents = self.agents();
        let agent = match agents.load_parsed(&a.agent_name) {
            Some(agent) => agent,
            None => {
                let agent_name = a.agent_name.clone();
                tokio::task::spawn_blocking(move || agents.load(&agent_name))
                    .await
                    .map_err(|e| ServiceError::Internal(e.to_string()))??
            }
        };
        self.core
            .runners()
            .for_agent(&agent)
            .map_err(ServiceError::Conflict)?;
        let id = Uuid::now_v7();
        let workspace = self
            .workspace_for(
                a.isolation.as_deref(),
                a.base_ref.as_deref(),
                agent.isolation,
                working_dir.as_deref(),
                &name,
                id,
            )
            .await?;
        let timeout_seconds = in_range(
            "timeout_seconds",
            a.timeout_seconds,
            1,
            86_400,
            i64::from(agent.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT_SECONDS)),
        )? as u32;
        let max_retries = in_range(
            "max_retries",
            a.max_retries,
            0,
            10,
            i64::from(agent.max_retries.unwrap_or(0)),
        )? as u32;

        let task = Task {
            id,
            name,
            agent_name: agent.name.clone(),
            status: TaskStatus::Pending,
            priority,
            created_us: now,
            scheduled_us,
            started_us: None,
            completed_us: None,
            attempt: 0,
            max_retries,
            retry_floor: 0,
            timeout_seconds,
            dependencies,
            workflow_id: None,
            phase_id: None,
            working_dir,
            project: session.map(|s| s.cwd.clone()),
            agents_dir: session.map(|s| s.agents_dir.clone()),
            metadata,
            webhook_url,
            idempotency_key,
            result: None,
            error: None,
            usage: Usage::default(),
            pid: None,
            pid_start: None,
            workspace,
        };
        Ok((task, a.agent_instructions, agent))
    }

    /// The workspace of a new task: `None` unless it is isolated (`isolation` argument, else the
    /// agent's), in which case its directory must be inside a git repository with a commit, and
    /// `base_ref` (only allowed then) must name a commit of it.
    async fn workspace_for(
        &self,
        isolation: Option<&str>,
        base_ref: Option<&str>,
        agent_isolation: Option<Isolation>,
        working_dir: Option<&str>,
        name: &str,
        id: Uuid,
    ) -> Result<Option<Workspace>> {
        let asked = isolation
            .map(|i| {
                Isolation::parse(i).ok_or_else(|| {
                    ServiceError::Invalid(format!(
                        "isolation {i:?} is not one of \"worktree\" (a git worktree of its own) or \"none\""
                    ))
                })
            })
            .transpose()?;
        let isolation = asked.or(agent_isolation).unwrap_or(Isolation::None);
        if let Some(r) = base_ref {
            if r.is_empty()
                || r.chars().count() > 256
                || r.starts_with('-')
                || r.chars().any(char::is_control)
            {
                return invalid(format!(
                    "base_ref {r:?} is not a git revision; use a branch, tag or commit id such as \"main\""
                ));
            }
            if isolation != Isolation::Worktree {
                return Err(ServiceError::Conflict(
                    "base_ref applies only to a task isolated in a worktree: add isolation: \"worktree\" (or leave base_ref out)".into(),
                ));
            }
        }
        if isolation == Isolation::None {
            return Ok(None);
        }
        let dir = match (working_dir, self.session.as_deref()) {
            (Some(d), _) => PathBuf::from(d),
            (None, Some(s)) => PathBuf::from(&*s.cwd),
            (None, None) => std::env::current_dir()
                .map_err(|e| ServiceError::Internal(format!("no working directory: {e}")))?,
        };
        crate::workspace::Workspaces::resolve(&dir, base_ref, name, id)
            .await
            .map(Some)
            .map_err(|e| match e {
                // Well-formed arguments the repository cannot honour: a directory outside git
                // conflicts with isolation, a revision it lacks is not found.
                WorkspaceError::NotARepository(m) => ServiceError::Conflict(m),
                WorkspaceError::UnknownRef(m) => ServiceError::NotFound(m),
                other => ServiceError::Internal(other.to_string()),
            })
    }

    pub async fn task_diff(&self, a: TaskDiffArgs) -> Result<TaskDiff> {
        let id = parse_task_id("task_id", &a.task_id)?;
        let max = in_range(
            "max_bytes",
            a.max_bytes,
            1,
            MAX_DIFF_BYTES as i64,
            DEFAULT_DIFF_BYTES as i64,
        )? as usize;
        let paths = a.paths.unwrap_or_default();
        if paths.len() > 100 {
            return invalid("paths lists more than 100 paths; name folders instead of files");
        }
        if let Some(p) = paths
            .iter()
            .find(|p| p.is_empty() || p.len() > 4096 || p.contains('\0'))
        {
            return invalid(format!(
                "paths entry {p:?} is not a path; use paths relative to the repository's top directory, e.g. \"src/main.rs\""
            ));
        }
        let task = self
            .core
            .task(id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(not_found(id)))?;
        let Some(ws) = task.workspace.as_ref() else {
            return Err(ServiceError::Conflict(format!(
                "task {id} did not run in a worktree (isolation \"none\"), so it has no branch or diff of its own; its changes are in its working directory. Submit with isolation: \"worktree\" to get one"
            )));
        };
        let workspaces = match &self.core {
            Core::Local(s) => s.workspaces(),
            Core::Cluster(c) => {
                // The repository (and, while it runs, the worktree) is on the task's host.
                let host = c.task_host(id).await?;
                if let Some(h) = host.filter(|h| *h != c.node().host) {
                    return Err(ServiceError::Conflict(format!(
                        "task {id} works in the repository {} on host {h}, and this node runs on {}: ask a node on {h} for its diff (or look at its branch {} there)",
                        ws.repository,
                        c.node().host,
                        ws.branch
                    )));
                }
                c.workspaces()
            }
        };
        let running = task.status == TaskStatus::Running;
        let diff = workspaces
            .diff(id, ws, running, &paths, max)
            .await
            .map_err(|e| match e {
                WorkspaceError::Refused(m) => ServiceError::Conflict(m),
                WorkspaceError::Gone(m) => ServiceError::Conflict(m),
                other => ServiceError::Internal(other.to_string()),
            })?;
        let view = ws.view();
        Ok(TaskDiff {
            task_id: id.to_string(),
            repository: view.repository,
            branch: view.branch,
            base_commit: view.base_commit,
            head_commit: diff.head,
            files: diff
                .files
                .into_iter()
                .map(|(path, insertions, deletions)| DiffFile {
                    path,
                    insertions,
                    deletions,
                })
                .collect(),
            diff: diff.diff,
            truncated: diff.truncated,
        })
    }

    pub async fn task_status(&self, a: TaskIdArgs) -> Result<TaskWithLogs> {
        let id = parse_task_id("task_id", &a.task_id)?;
        let (task, logs) = match &self.core {
            Core::Local(s) => {
                let task = s.task(id).await?;
                let task = task.ok_or_else(|| ServiceError::NotFound(not_found(id)))?;
                let logs = s.store().last_logs(id, 20).await?;
                (task, logs)
            }
            Core::Cluster(c) => {
                let task = c.task(id).await?;
                let task = task.ok_or_else(|| ServiceError::NotFound(not_found(id)))?;
                (task, c.last_logs(id, 20).await?)
            }
        };
        Ok(TaskWithLogs {
            task: task.view(),
            logs,
        })
    }

    pub async fn task_cancel(&self, a: TaskIdArgs) -> Result<crate::model::TaskView> {
        let id = parse_task_id("task_id", &a.task_id)?;
        Ok(match &self.core {
            Core::Local(s) => s.cancel(id).await?,
            Core::Cluster(c) => c.cancel(id).await?,
        }
        .view())
    }

    pub async fn task_retry(&self, a: TaskIdArgs) -> Result<crate::model::TaskView> {
        let id = parse_task_id("task_id", &a.task_id)?;
        Ok(match &self.core {
            Core::Local(s) => s.retry(id).await?,
            Core::Cluster(c) => c.retry(id).await?,
        }
        .view())
    }

    pub async fn task_logs(&self, a: TaskLogsArgs) -> Result<TaskLogs> {
        let id = parse_task_id("task_id", &a.task_id)?;
        let after = in_range("after_seq", a.after_seq, 0, i64::MAX, 0)?;
        let limit = in_range("limit", a.limit, 1, 1000, 100)? as u32;
        let logs = match &self.core {
            Core::Local(s) => {
                if s.task(id).await?.is_none() {
                    return Err(ServiceError::NotFound(not_found(id)));
                }
                s.store().logs(id, after, limit).await?
            }
            Core::Cluster(c) => {
                if c.task(id).await?.is_none() {
                    return Err(ServiceError::NotFound(not_found(id)));
                }
                c.logs(id, after, limit).await?
            }
        };
        Ok(TaskLogs {
            task_id: id.to_string(),
            logs,
        })
    }

    pub async fn task_wait(&self, a: TaskWaitArgs) -> Result<TaskWaitResult> {
        let ids = parse_waited_ids(&a.task_ids)?;
        let any = match a.mode.as_deref() {
            None | Some("all") => false,
            Some("any") => true,
            Some(m) => return invalid(format!("mode {m:?} must be \"any\" or \"all\"")),
        };
        let timeout = in_range("timeout_seconds", a.timeout_seconds, 1, 600, 60)? as u64;
        let timeout = Duration::from_secs(timeout);
        let (tasks, timed_out) = match &self.core {
            Core::Local(s) => s.wait(ids, any, timeout).await?,
            Core::Cluster(c) => c.wait(ids, any, timeout).await?,
        };
        Ok(TaskWaitResult {
            tasks: tasks.iter().map(Task::view).collect(),
            timed_out,
        })
    }

    pub async fn list_tasks(&self, a: ListTasksArgs) -> Result<TaskList> {
        let status = a.status.as_deref().map(parse_status).transpose()?;
        if let Some(agent) = &a.agent_name {
            validate_name("agent_name", agent).map_err(ServiceError::Invalid)?;
        }
        let workflow_id = a
            .workflow_id
            .as_deref()
            .map(|w| {
                parse_uuid(w).ok_or_else(|| {
                    ServiceError::Invalid(format!("workflow_id {w:?} is not a UUID"))
                })
            })
            .transpose()?;
        let limit = in_range("limit", a.limit, 1, 1000, 50)? as u32;
        let offset = in_range("offset", a.offset, 0, MAX_OFFSET, 0)? as u64;
        let filter = TaskFilter {
            status,
            agent_name: a.agent_name,
            workflow_id,
            limit,
            offset,
        };
        let (tasks, total) = match &self.core {
            Core::Local(s) => s.store().list_tasks(filter).await?,
            Core::Cluster(c) => c.list_tasks(&filter).await?,
        };
        Ok(TaskList {
            tasks: tasks.iter().map(|t| t.view().into()).collect(),
            total,
        })
    }

    pub async fn list_agents(&self) -> Result<AgentList> {
        let agents = self.agents();
        let list = tokio::task::spawn_blocking(move || agents.list())
            .await
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        Ok(AgentList {
            agents: list
                .into_iter()
                .map(|a| AgentInfo {
                    name: a.name,
                    description: a.description,
                    runner: a.runner,
                    model: a.model,
                    path: a.path.display().to_string(),
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls_of_the_documented_form_are_taken_and_others_refused() {
        for ok in [
            "https://example.com/hooks/x?a=1#f",
            "http://127.0.0.1:8080/hook",
            "HTTP://A",
            "http://user:pw@host.local:65535/",
            "https://hooks.slack.com/services/T0/B0/X",
            "http://hook_rx:3000/",
            "http://example.com./x",
        ] {
            assert!(validate_webhook_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ftp://example.com/x",
            "http://[::1]/",
            "http://1.2.3.999/",
            "http://host:65536/",
            "http:///x",
            "http://a b/",
            "http://example.com/é",
        ] {
            assert!(validate_webhook_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn blank_is_what_json_schema_validators_call_white_space() {
        assert!(is_blank(""));
        assert!(is_blank(" \t\n\u{a0}\u{3000}"));
        assert!(is_blank("\u{1c}\u{1f}"));
        assert!(!is_blank(" x "));
        assert!(is_blank("\u{feff}\u{85}"));
    }
}
