//! Domain types shared by every layer: statuses, priorities, the task record and its public view.
//!
//! Times are kept as microseconds since the Unix epoch (`i64`) inside the program, because that is
//! what DuckDB's TIMESTAMP stores and what the scheduler compares; they become RFC 3339 strings
//! only at the edge, in [`TaskView`].

mod webhook;
mod workflow;
mod workspace;

pub use webhook::{DeliveryStatus, WebhookAttempt, WebhookEvent};
pub use workflow::{Phase, PhaseStatus, Workflow, WorkflowStatus, WorkflowTaskRow};
pub use workspace::{Isolation, Workspace, WorkspaceView};

use chrono::{DateTime, SecondsFormat, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use std::sync::Arc;

/// Serde for `Option<Arc<str>>` (as an optional string), without serde's `rc` feature.
mod shared_str {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Arc<str>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(x) => s.serialize_some(&**x),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Arc<str>>, D::Error> {
        Ok(Option::<String>::deserialize(d)?.map(Arc::from))
    }
}

/// Microseconds since the Unix epoch, now.
pub fn now_us() -> i64 {
    Utc::now().timestamp_micros()
}

/// RFC 3339 UTC with millisecond precision, the one timestamp format of the public interface.
pub fn rfc3339(us: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(us)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    Pending,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 5] = [
        TaskStatus::Pending,
        TaskStatus::Running,
        TaskStatus::Completed,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Running => "running",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<TaskStatus> {
        TaskStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled
        )
    }
}

/// Ordered so that `Critical > High > Normal > Low`; the scheduler relies on this order.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    JsonSchema,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Low,
    Normal,
    High,
    Critical,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Critical => "critical",
        }
    }

    /// Accepts the four priority words plus `medium` as an alias of `normal`.
    pub fn parse(s: &str) -> Option<Priority> {
        match s {
            "low" => Some(Priority::Low),
            "normal" | "medium" => Some(Priority::Normal),
            "high" => Some(Priority::High),
            "critical" => Some(Priority::Critical),
            _ => None,
        }
    }

    pub fn rank(self) -> i16 {
        self as i16
    }

    pub fn from_rank(rank: i16) -> Priority {
        match rank {
            i16::MIN..=0 => Priority::Low,
            1 => Priority::Normal,
            2 => Priority::High,
            _ => Priority::Critical,
        }
    }
}

/// Token and cost figures a runner may report.
#[derive(
    Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
pub struct Usage {
    pub input_tokens: Option<i64>,
    pub output_tokens: Option<i64>,
    pub cost_usd: Option<f64>,
}

impl Usage {
    pub fn is_empty(&self) -> bool {
        self.input_tokens.is_none() && self.output_tokens.is_none() && self.cost_usd.is_none()
    }
}

/// The full task record, minus its instructions (which can be large and are only needed when an
/// attempt starts, so they stay in the store instead of in the scheduler's memory). Serde is for
/// the store's journal only; clients see [`TaskView`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: Uuid,
    pub name: String,
    pub agent_name: String,
    pub status: TaskStatus,
    pub priority: Priority,
    pub created_us: i64,
    /// Earliest time the task may start: its `run_at`, or the end of its retry back-off.
    pub scheduled_us: i64,
    pub started_us: Option<i64>,
    pub completed_us: Option<i64>,
    /// How many times the task has been started.
    pub attempt: u32,
    pub max_retries: u32,
    /// `attempt` at the last manual `task_retry`; automatic retries are counted from here, so a
    /// manual retry grants a fresh retry budget.
    pub retry_floor: u32,
    pub timeout_seconds: u32,
    pub dependencies: Vec<Uuid>,
    pub workflow_id: Option<Uuid>,
    pub phase_id: Option<String>,
    /// Where the task runs when it names a directory of its own (absolute).
    pub working_dir: Option<String>,
    /// The directory of the session that submitted it: the task runs there unless it names a
    /// `working_dir`. Shared, because every task of a session carries the same one.
    #[serde(default, with = "shared_str")]
    pub project: Option<Arc<str>>,
    /// The agent search path of the session that submitted it (colon-separated, absolute), so
    /// that its agent is found again at start exactly as at submit. `None`: the engine's own.
    #[serde(default, with = "shared_str")]
    pub agents_dir: Option<Arc<str>>,
    pub metadata: Option<serde_json::Value>,
    pub webhook_url: Option<String>,
    pub idempotency_key: Option<String>,
    pub result: Option<String>,
    pub error: Option<String>,
    pub usage: Usage,
    /// Process group of the running attempt, with the leader's start time from `/proc`, so that
    /// crash recovery can stop an orphan without hitting a recycled pid.
    pub pid: Option<i64>,
    pub pid_start: Option<i64>,
    /// Set for a task isolated in a git worktree (`isolation: worktree`).
    #[serde(default)]
    pub workspace: Option<Workspace>,
}

impl Task {
    /// Whether a failure now may be retried automatically.
    pub fn has_retries_left(&self) -> bool {
        self.attempt.saturating_sub(self.retry_floor) <= self.max_retries
    }

    pub fn view(&self) -> TaskView {
        TaskView {
            task_id: self.id.to_string(),
            name: self.name.clone(),
            agent_name: self.agent_name.clone(),
            status: self.status,
            priority: self.priority,
            created_at: rfc3339(self.created_us),
            scheduled_at: rfc3339(self.scheduled_us),
            started_at: self.started_us.map(rfc3339),
            completed_at: self.completed_us.map(rfc3339),
            attempt: self.attempt,
            max_retries: self.max_retries,
            timeout_seconds: self.timeout_seconds,
            dependencies: self.dependencies.iter().map(Uuid::to_string).collect(),
            workflow_id: self.workflow_id.map(|w| w.to_string()),
            phase_id: self.phase_id.clone(),
            project: self.project.as_deref().map(String::from),
            result: self.result.clone(),
            error: self.error.clone(),
            usage: (!self.usage.is_empty()).then(|| self.usage.clone()),
            webhook_url: self.webhook_url.clone(),
            metadata: self.metadata.clone(),
            workspace: self.workspace.as_ref().map(Workspace::view),
        }
    }
}

/// The task object every tool and route answers with.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct TaskView {
    pub task_id: String,
    pub name: String,
    pub agent_name: String,
    pub status: TaskStatus,
    pub priority: Priority,
    pub created_at: String,
    pub scheduled_at: String,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    pub attempt: u32,
    pub max_retries: u32,
    pub timeout_seconds: u32,
    pub dependencies: Vec<String>,
    pub workflow_id: Option<String>,
    pub phase_id: Option<String>,
    /// The directory of the session that submitted the task (its project); absent for tasks
    /// submitted over HTTP or before projects were recorded.
    pub project: Option<String>,
    pub result: Option<String>,
    pub error: Option<String>,
    pub usage: Option<Usage>,
    pub webhook_url: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    /// Present when the task runs isolated in a git worktree: its repository, branch, base and
    /// head commits and the size of its change (see `task_diff`); null otherwise.
    #[serde(default)]
    pub workspace: Option<WorkspaceView>,
}

/// One line of a task's log. `seq` grows by one per line over the task's whole life (all
/// attempts), so `after_seq` paging never skips or repeats a line.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct LogLine {
    pub seq: i64,
    pub ts: String,
    pub level: String,
    pub message: String,
}

/// A log line on its way to the store.
#[derive(Debug, Clone, Serialize)]
pub struct NewLogLine {
    pub task_id: Uuid,
    pub seq: i64,
    pub ts_us: i64,
    pub level: &'static str,
    pub message: String,
}

/// A log level read back, as the constant this build writes (an unknown one, which this build
/// never writes, reads as `info`): log lines in memory hold static strings.
pub fn log_level(read: &str) -> &'static str {
    ["error", "warn", "info", "debug", "trace"]
        .into_iter()
        .find(|known| *known == read)
        .unwrap_or("info")
}

/// [`NewLogLine`] as the store's journal reads it back (its level through [`log_level`]).
#[derive(Deserialize)]
struct StoredLogLine {
    task_id: Uuid,
    seq: i64,
    ts_us: i64,
    level: String,
    message: String,
}

impl<'de> Deserialize<'de> for NewLogLine {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<NewLogLine, D::Error> {
        let l = StoredLogLine::deserialize(d)?;
        Ok(NewLogLine {
            task_id: l.task_id,
            seq: l.seq,
            ts_us: l.ts_us,
            level: log_level(&l.level),
            message: l.message,
        })
    }
}

/// A plain pending task, for unit tests to adjust.
#[cfg(test)]
impl Task {
    pub fn sample_for_tests() -> Task {
        Task {
            id: Uuid::now_v7(),
            name: "t".into(),
            agent_name: "a".into(),
            status: TaskStatus::Pending,
            priority: Priority::Normal,
            created_us: 0,
            scheduled_us: 0,
            started_us: None,
            completed_us: None,
            attempt: 0,
            max_retries: 0,
            retry_floor: 0,
            timeout_seconds: 60,
            dependencies: vec![],
            workflow_id: None,
            phase_id: None,
            working_dir: None,
            project: None,
            agents_dir: None,
            metadata: None,
            webhook_url: None,
            idempotency_key: None,
            result: None,
            error: None,
            usage: Usage::default(),
            pid: None,
            pid_start: None,
            workspace: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_order_and_alias() {
        assert!(Priority::Critical > Priority::High);
        assert!(Priority::High > Priority::Normal);
        assert!(Priority::Normal > Priority::Low);
        assert_eq!(Priority::parse("medium"), Some(Priority::Normal));
        assert_eq!(Priority::parse("urgent"), None);
        for p in [
            Priority::Low,
            Priority::Normal,
            Priority::High,
            Priority::Critical,
        ] {
            assert_eq!(Priority::from_rank(p.rank()), p);
        }
    }

    #[test]
    fn rfc3339_is_utc_with_z() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
    }
}
