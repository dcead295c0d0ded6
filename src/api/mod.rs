//! Request and response shapes of the public interface, shared by every frontend (MCP today,
//! REST next). The doc comments become the JSON-schema descriptions agents read, so they are
//! written for the agent calling the tool.

pub mod dashboard;
pub mod whole;
mod workflows;

pub use workflows::*;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::{LogLine, Priority, TaskStatus, TaskView};

#[derive(Debug, Clone, Default, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskAsyncArgs {
    /// Short human-readable name of the task, e.g. "review auth.rs".
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "[^\\s\\u001c-\\u001f\\u0085\\ufeff]"
    )]
    pub name: String,
    /// Name of the agent that does the work (see list_agents).
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,63}$")]
    pub agent_name: String,
    /// What the agent should do. Sent to the agent as its input (stdin); at most 1 MiB.
    #[schema(
        min_length = 1,
        max_length = 1048576,
        pattern = "[^\\s\\u001c-\\u001f\\u0085\\ufeff]"
    )]
    pub agent_instructions: String,
    /// low, normal (default), high or critical ("medium" means normal). Higher priorities start first.
    #[schema(value_type = Option<PriorityName>)]
    pub priority: Option<String>,
    /// http(s) URL to POST to when the task finishes.
    #[schema(
        max_length = 2048,
        pattern = "^[Hh][Tt][Tt][Pp][Ss]?://([A-Za-z0-9._~!$&'()*+,;=-]+(:[A-Za-z0-9._~!$&'()*+,;=-]*)?@)?(([A-Za-z0-9_-]+\\.)*[A-Za-z_][A-Za-z0-9_-]*\\.?|(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(\\.(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3})(:([0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?([/?#][!-~]*)?$"
    )]
    pub webhook_url: Option<String>,
    /// Seconds one attempt may run before it is stopped (1..86400). Default: the agent's, else 3600.
    #[schema(minimum = 1, maximum = 86400)]
    #[serde(default, deserialize_with = "crate::api::whole::option")]
    pub timeout_seconds: Option<i64>,
    /// Automatic retries after a failure (0..10), with exponential back-off. Default: the agent's, else 0.
    #[schema(minimum = 0, maximum = 10)]
    #[serde(default, deserialize_with = "crate::api::whole::option")]
    pub max_retries: Option<i64>,
    /// task_ids that must complete before this task starts. If one fails or is cancelled, this task is cancelled.
    #[schema(value_type = Option<Vec<uuid::Uuid>>, max_items = 1000)]
    pub dependencies: Option<Vec<String>>,
    /// Submitting again with the same key returns the first task instead of creating another.
    #[schema(min_length = 1, max_length = 200)]
    pub idempotency_key: Option<String>,
    /// Directory the agent runs in (must exist; relative paths are taken from the calling session's directory). Default: the calling session's working directory (its project).
    pub working_dir: Option<String>,
    /// "worktree": run in a git worktree of its own, on a new branch, so parallel agents never edit the same checkout (needs working_dir, or the session's directory, inside a git repository); "none": run in working_dir as it is. Default: the agent's `isolation`, else none.
    #[schema(value_type = Option<IsolationName>)]
    pub isolation: Option<String>,
    /// With isolation "worktree": the commit, branch or tag the worktree starts from. Default: the repository's HEAD when the task is submitted.
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f-][^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    pub base_ref: Option<String>,
    /// Free-form JSON object stored with the task and returned with it.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    /// Do not start before this time (RFC 3339, e.g. "2026-01-01T09:00:00Z").
    #[schema(format = DateTime)]
    pub run_at: Option<String>,
    /// The queue the task waits in (default: the agent's `queue`, else "default"). Engines of a
    /// cluster take tasks only from the queues they serve (ORCHESTR8_QUEUES); a single engine
    /// serves every queue.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub queue: Option<String>,
}

/// A task priority as the API accepts it ("medium" means normal). Documentation only: the
/// argument is a string, refused with a message when it is none of these.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum PriorityName {
    Low,
    Normal,
    Medium,
    High,
    Critical,
}

/// Where a task runs: a git worktree of its own, or its working directory as it is.
/// Documentation only, like [`PriorityName`].
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum IsolationName {
    Worktree,
    None,
}

#[derive(Debug, Clone, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskIdArgs {
    /// The task_id returned by task_async.
    pub task_id: String,
}

#[derive(Debug, Clone, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskDiffArgs {
    /// The task_id of a task that ran (or runs) isolated in a git worktree.
    pub task_id: String,
    /// Only these paths (files or folders, relative to the repository's top directory; git pathspecs).
    pub paths: Option<Vec<String>>,
    /// Most bytes of diff to return (1..4194304, default 100000); a longer diff is cut at a line end, with a marker.
    #[serde(default, deserialize_with = "crate::api::whole::option")]
    pub max_bytes: Option<i64>,
}

/// One file of a task's change.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct DiffFile {
    pub path: String,
    /// Lines added; null for a binary file.
    pub insertions: Option<u32>,
    /// Lines removed; null for a binary file.
    pub deletions: Option<u32>,
}

/// A task's change against the commit it started from.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct TaskDiff {
    pub task_id: String,
    pub repository: String,
    /// The branch holding the change (null when the task changed nothing).
    pub branch: Option<String>,
    pub base_commit: String,
    /// The commit compared with the base; null while the task runs (its worktree is compared, uncommitted tracked changes included).
    pub head_commit: Option<String>,
    /// Every changed file (within `paths`), whatever the size cap.
    pub files: Vec<DiffFile>,
    /// The unified diff (git diff), cut at max_bytes.
    pub diff: String,
    /// Whether `diff` was cut.
    pub truncated: bool,
}

#[derive(Debug, Clone, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskLogsArgs {
    /// The task_id returned by task_async.
    pub task_id: String,
    /// Only lines with seq greater than this (default 0: from the start). Pass the last seq you saw to follow a log.
    #[serde(default, deserialize_with = "crate::api::whole::option")]
    pub after_seq: Option<i64>,
    /// Most lines to return (1..1000, default 100).
    #[serde(default, deserialize_with = "crate::api::whole::option")]
    pub limit: Option<i64>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskWaitArgs {
    /// The task_ids to wait for (1..10000).
    pub task_ids: Vec<String>,
    /// "all" (default): return when every task has finished; "any": when at least one has.
    pub mode: Option<String>,
    /// Most seconds to wait (1..600, default 60). On time-out the current states are returned with timed_out: true.
    #[serde(default, deserialize_with = "crate::api::whole::option")]
    pub timeout_seconds: Option<i64>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema, utoipa::ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListTasksArgs {
    /// Only tasks with this status: pending, running, completed, failed or cancelled.
    #[param(value_type = Option<TaskStatus>)]
    pub status: Option<String>,
    /// Only tasks of this agent.
    #[param(pattern = "^[a-z0-9][a-z0-9._-]{0,63}$")]
    pub agent_name: Option<String>,
    /// Only tasks of this workflow.
    #[param(value_type = Option<uuid::Uuid>)]
    pub workflow_id: Option<String>,
    /// Page size (1..1000, default 50).
    #[param(minimum = 1, maximum = 1000)]
    #[serde(default, deserialize_with = "crate::api::whole::option_or_text")]
    pub limit: Option<i64>,
    /// Tasks to skip (default 0).
    #[param(minimum = 0, maximum = 1_000_000_000)]
    #[serde(default, deserialize_with = "crate::api::whole::option_or_text")]
    pub offset: Option<i64>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NoArgs {}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct TaskAccepted {
    pub task_id: String,
    pub status: TaskStatus,
    pub created_at: String,
    /// True when an earlier task with the same idempotency_key was returned instead of a new one.
    pub existing: bool,
}

/// The answer to `POST /api/tasks`: the task object plus `existing`, a superset of the
/// `task_async` answer.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct CreatedTask {
    #[serde(flatten)]
    pub task: TaskView,
    /// True when an earlier task with the same idempotency_key was returned instead of a new one.
    pub existing: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct TaskWithLogs {
    #[serde(flatten)]
    pub task: TaskView,
    /// The last 20 log lines, oldest first.
    pub logs: Vec<LogLine>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct TaskLogs {
    pub task_id: String,
    pub logs: Vec<LogLine>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct TaskWaitResult {
    pub tasks: Vec<TaskView>,
    pub timed_out: bool,
}

/// A task in a listing: the task object without its (possibly large) result.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct TaskSummary {
    pub task_id: String,
    pub name: String,
    pub agent_name: String,
    pub status: TaskStatus,
    pub priority: Priority,
    pub created_at: String,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    pub attempt: u32,
    pub workflow_id: Option<String>,
    pub phase_id: Option<String>,
    /// The directory of the session that submitted it.
    pub project: Option<String>,
    pub error: Option<String>,
}

impl From<TaskView> for TaskSummary {
    fn from(v: TaskView) -> Self {
        TaskSummary {
            task_id: v.task_id,
            name: v.name,
            agent_name: v.agent_name,
            status: v.status,
            priority: v.priority,
            created_at: v.created_at,
            started_at: v.started_at,
            completed_at: v.completed_at,
            attempt: v.attempt,
            workflow_id: v.workflow_id,
            phase_id: v.phase_id,
            project: v.project,
            error: v.error,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct TaskList {
    pub tasks: Vec<TaskSummary>,
    pub total: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct AgentInfo {
    pub name: String,
    pub description: String,
    pub runner: String,
    pub model: Option<String>,
    pub path: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct AgentList {
    pub agents: Vec<AgentInfo>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookHistoryArgs {
    /// The task whose webhook deliveries to list (give this or workflow_id).
    pub task_id: Option<String>,
    /// The workflow whose webhook deliveries to list (give this or task_id).
    pub workflow_id: Option<String>,
}

/// One delivery attempt.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct DeliveryView {
    /// The webhook-id header: the same on every attempt of one event.
    pub event_id: String,
    pub event_type: String,
    /// 1 for the first attempt of the event.
    pub attempt: u32,
    /// The receiver's HTTP status, absent when no answer came (network error, time-out).
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: u64,
    pub delivered_at: String,
    pub url: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct WebhookHistory {
    /// One entry per attempt, oldest first.
    pub deliveries: Vec<DeliveryView>,
}

/// Where a set of awaited tasks stands: what a session says in the progress notifications of
/// a blocking call (socket route `POST /rpc/progress`, not an MCP tool).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WaitProgress {
    /// Distinct tasks waited on.
    pub total: usize,
    /// Of those, finished (completed, failed or cancelled).
    pub finished: usize,
    /// Finished tasks, in the order asked (at most [`WaitProgress::LISTED`]).
    pub ended: Vec<ProgressTask>,
    /// Running tasks, in the order asked (at most [`WaitProgress::LISTED`]).
    pub running: Vec<ProgressTask>,
    /// How many are running.
    pub running_count: usize,
    /// Tasks not started yet.
    pub pending: usize,
}

impl WaitProgress {
    /// Most tasks listed in `ended` and in `running`.
    pub const LISTED: usize = 20;
}

/// One task in a [`WaitProgress`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgressTask {
    pub task_id: String,
    pub name: String,
    pub status: TaskStatus,
    /// Seconds since it started (running tasks).
    pub running_seconds: Option<u64>,
    /// Its latest log line (the first few running tasks).
    pub last_log: Option<String>,
}

/// What the `prune` command removed (socket route `POST /rpc/prune`, not an MCP tool).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PruneReport {
    /// Work that ended before this time was removed.
    pub ended_before: String,
    /// The period kept: the command's `--older-than`, else the retention setting.
    pub older_than_seconds: u64,
    /// Tasks removed, those of the workflows included.
    pub tasks: u64,
    pub workflows: u64,
    pub log_lines: u64,
    pub webhook_deliveries: u64,
}

/// What the CLI's `status` shows: the engine and the queue at a glance (socket route
/// `GET /rpc/overview`, not an MCP tool).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EngineOverview {
    /// The process that has the database open.
    pub pid: u32,
    pub db_path: String,
    /// Whether that process runs tasks: always, since only an engine answers (kept for the
    /// scripts that read it).
    pub dispatching: bool,
    /// Tasks per status, every status listed.
    pub counts: std::collections::BTreeMap<String, u64>,
    pub workers: usize,
    pub workers_busy: usize,
    pub webhooks_owed: u64,
    /// The running tasks, oldest start first (at most 1000).
    pub running: Vec<TaskSummary>,
    /// The engine's version.
    #[serde(default)]
    pub version: String,
    /// Sessions attached now.
    #[serde(default)]
    pub sessions: usize,
    /// Settings some attached session was started with that this engine does not share (its
    /// own apply: they come from the process that started it).
    #[serde(default)]
    pub settings_differ: Vec<String>,
    /// Asked to stop once idle (an older version, replaced by the next session's).
    #[serde(default)]
    pub retiring: bool,
}

/// A task or workflow that a session handed off has ended: what the session is told, as a
/// JSON line on its attach stream, and what it passes on to its MCP client as a
/// `notifications/claude/channel` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelEvent {
    /// A short summary a person or a model can read: name, status, the first lines of the
    /// result or the error, and how to read all of it.
    pub content: String,
    /// String attributes: `task_id` or `workflow_id`, `status`, `name`, and `agent` for a task.
    pub meta: std::collections::BTreeMap<String, String>,
}

/// What a project has not been told yet: the tasks submitted from it that ended since it was
/// last told (socket route `POST /rpc/ended`, the `ended` command behind the Claude Code hook).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EndedReport {
    pub project: String,
    /// The tasks told now, in the order they ended (at most [`EndedReport::LISTED`]).
    pub tasks: Vec<EndedTask>,
    /// More tasks that ended and are now counted as told, but not listed.
    pub more: u64,
}

impl EndedReport {
    pub const LISTED: usize = 10;
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndedTask {
    pub task_id: String,
    pub name: String,
    pub agent_name: String,
    pub status: TaskStatus,
    pub completed_at: Option<String>,
    /// The first line of the result (completed) or of the error.
    pub line: Option<String>,
    /// The git branch holding its changes, for an isolated task that made some.
    #[serde(default)]
    pub branch: Option<String>,
}
