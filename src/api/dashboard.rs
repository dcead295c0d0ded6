//! What the dashboard's pages read: shapes for people rather than for agents (aggregates,
//! a task with everything about it at once). Only the dashboard serves them; they are not part
//! of the REST API.

use serde::{Deserialize, Serialize};

use super::{AgentInfo, DeliveryView, TaskSummary};
use crate::model::{LogLine, TaskView};

/// Filters and position of one page of the task list.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskPageArgs {
    pub status: Option<String>,
    pub agent_name: Option<String>,
    pub project: Option<String>,
    pub workflow_id: Option<String>,
    /// Part of the task name, any case.
    pub q: Option<String>,
    /// The `next` of the previous page.
    pub after: Option<String>,
    /// Page size (1..200, default 50).
    pub limit: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskPage {
    pub tasks: Vec<TaskSummary>,
    /// How many tasks match the filters in all.
    pub total: u64,
    /// Give this as `after` for the next page; absent on the last page.
    pub next: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskFacets {
    pub agents: Vec<String>,
    pub projects: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EndedInterval {
    pub start: String,
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DurationBucket {
    /// What the bucket holds, for people ("1–10 s").
    pub label: String,
    pub tasks: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CostOfDay {
    /// The UTC day, `YYYY-MM-DD`.
    pub day: String,
    pub cost_usd: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CostOfAgent {
    pub agent_name: String,
    pub cost_usd: f64,
    pub tasks: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunningTask {
    pub task_id: String,
    pub name: String,
    pub agent_name: String,
    pub started_at: Option<String>,
    pub attempt: u32,
}

/// The overview page.
#[derive(Debug, Clone, Serialize)]
pub struct DashOverview {
    /// Tasks of each status (every status, zero included).
    pub counts: Vec<(String, u64)>,
    pub running: Vec<RunningTask>,
    pub running_total: u64,
    /// Ends per hour over the last 24 hours, oldest first, every hour present.
    pub ended: Vec<EndedInterval>,
    /// Durations of the tasks completed in the last 7 days.
    pub durations: Vec<DurationBucket>,
    /// Cost per UTC day over the last 14 days, every day present.
    pub cost_by_day: Vec<CostOfDay>,
    /// Cost per agent over the last 14 days, highest first.
    pub cost_by_agent: Vec<CostOfAgent>,
    /// When this was read.
    pub at: String,
}

/// One task with everything about it.
#[derive(Debug, Clone, Serialize)]
pub struct DashTask {
    #[serde(flatten)]
    pub task: TaskView,
    pub instructions: String,
    /// The last lines of its log, oldest first (the live stream goes on from there).
    pub logs: Vec<LogLine>,
    /// Whether older lines exist than those in `logs`.
    pub logs_cut: bool,
    pub deliveries: Vec<DeliveryView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AgentRow {
    #[serde(flatten)]
    pub agent: AgentInfo,
    /// Tasks of the last 7 days that ended, completed, failed; cost over them.
    pub ended: u64,
    pub completed: u64,
    pub failed: u64,
    /// completed / ended, when anything ended.
    pub success_rate: Option<f64>,
    pub cost_usd: f64,
    pub last_task_at: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AgentTable {
    pub agents: Vec<AgentRow>,
    /// Agents that had tasks in the last 7 days but whose file is not found (renamed, removed,
    /// another project's).
    pub unlisted: Vec<AgentRow>,
}
