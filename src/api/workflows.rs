//! Request and response shapes of the workflow tools.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::{
    rfc3339, Phase, PhaseStatus, TaskStatus, Workflow, WorkflowStatus, WorkflowTaskRow,
};

#[derive(Debug, Clone, Default, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowCreateArgs {
    /// Short human-readable name, e.g. "feature: CSV export".
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "[^\\s\\u001c-\\u001f\\u0085\\ufeff]"
    )]
    pub name: String,
    /// What the workflow is for.
    #[schema(max_length = 10000)]
    pub description: Option<String>,
    /// http(s) URL to POST to when the workflow completes, fails or is cancelled.
    #[schema(
        max_length = 2048,
        pattern = "^[Hh][Tt][Tt][Pp][Ss]?://([A-Za-z0-9._~!$&'()*+,;=-]+(:[A-Za-z0-9._~!$&'()*+,;=-]*)?@)?(([A-Za-z0-9_-]+\\.)*[A-Za-z_][A-Za-z0-9_-]*\\.?|(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(\\.(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3})(:([0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?([/?#][!-~]*)?$"
    )]
    pub webhook_url: Option<String>,
    /// At most this many of the workflow's tasks run at once (1..1024); default: only the server's worker limit applies.
    #[schema(minimum = 1, maximum = 1024)]
    #[serde(default, deserialize_with = "crate::api::whole::option")]
    pub max_parallel: Option<i64>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowAddPhaseArgs {
    /// The workflow_id returned by workflow_create (the workflow must still be a draft).
    pub workflow_id: String,
    /// Id of the phase within the workflow: 1-64 of a-z 0-9 . _ - (e.g. "design").
    pub phase_id: String,
    /// Human-readable name, e.g. "Design".
    pub name: String,
    /// phase_ids of phases added earlier that must complete before this phase starts. Omit for a first phase.
    pub depends_on: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowAddTaskArgs {
    /// The workflow_id returned by workflow_create (the workflow must still be a draft).
    pub workflow_id: String,
    /// The phase the task belongs to (added with workflow_add_phase).
    pub phase_id: String,
    /// Short human-readable name of the task, e.g. "write the spec".
    pub name: String,
    /// Name of the agent that does the work (see list_agents).
    pub agent_name: String,
    /// What the agent should do; at most 1 MiB. When the task starts, the results of the phases its phase depends on (directly or transitively) are appended under headings naming each upstream task.
    pub agent_instructions: String,
    /// task_ids of tasks of the same workflow, in this phase or an earlier one, that must complete first.
    pub dependencies: Option<Vec<String>>,
    /// low, normal (default), high or critical.
    pub priority: Option<String>,
    /// Seconds one attempt may run (1..86400). Default: the agent's, else 3600.
    #[serde(default, deserialize_with = "crate::api::whole::option")]
    pub timeout_seconds: Option<i64>,
    /// Automatic retries after a failure (0..10). Default: the agent's, else 0. The workflow fails when a task has failed for good.
    #[serde(default, deserialize_with = "crate::api::whole::option")]
    pub max_retries: Option<i64>,
    /// Directory the agent runs in (must exist; relative paths are taken from the calling session's directory). Default: the calling session's working directory (its project).
    pub working_dir: Option<String>,
    /// "worktree": run in a git worktree of its own, on a new branch, so parallel agents never edit the same checkout; a later phase's task starts from the work of the phases before it (needs working_dir, or the session's directory, inside a git repository); "none": run in working_dir as it is. Default: the agent's `isolation`, else none.
    pub isolation: Option<String>,
    /// With isolation "worktree": the commit, branch or tag the worktree starts from. Default: the repository's HEAD when the task is submitted.
    pub base_ref: Option<String>,
    /// Free-form JSON object stored with the task.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowIdArgs {
    /// The workflow_id returned by workflow_create.
    pub workflow_id: String,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema, utoipa::ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListWorkflowsArgs {
    /// Only workflows in this status: draft, running, completed, failed or cancelled.
    #[param(value_type = Option<WorkflowStatus>)]
    pub status: Option<String>,
    /// Most workflows to return (1..1000, default 50).
    #[param(minimum = 1, maximum = 1000)]
    #[serde(default, deserialize_with = "crate::api::whole::option_or_text")]
    pub limit: Option<i64>,
    /// Workflows to skip, for paging (default 0).
    #[param(minimum = 0, maximum = 1_000_000_000)]
    #[serde(default, deserialize_with = "crate::api::whole::option_or_text")]
    pub offset: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct WorkflowCreated {
    pub workflow_id: String,
    pub name: String,
    pub status: WorkflowStatus,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct PhaseView {
    pub workflow_id: String,
    pub phase_id: String,
    pub name: String,
    pub status: PhaseStatus,
    pub depends_on: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct WorkflowTaskAdded {
    pub task_id: String,
    pub workflow_id: String,
    pub phase_id: String,
    pub status: TaskStatus,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct PhaseStatusView {
    pub phase_id: String,
    pub name: String,
    pub status: PhaseStatus,
    pub depends_on: Vec<String>,
    pub tasks_total: u32,
    pub tasks_completed: u32,
    pub tasks_failed: u32,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct WorkflowTaskView {
    pub task_id: String,
    pub phase_id: Option<String>,
    pub name: String,
    pub status: TaskStatus,
    /// The git branch holding the task's work when it runs isolated in a worktree (null
    /// otherwise, and once an attempt ended without changes).
    pub branch: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct FailedTask {
    pub task_id: String,
    pub name: String,
    pub error: Option<String>,
}

/// The workflow status object.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct WorkflowStatusView {
    pub workflow_id: String,
    pub name: String,
    pub description: Option<String>,
    pub status: WorkflowStatus,
    /// Completed tasks × 100 / all tasks, rounded down.
    pub progress: u32,
    /// Why the workflow failed or was cancelled.
    pub error: Option<String>,
    pub webhook_url: Option<String>,
    pub max_parallel: Option<u32>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    pub phases: Vec<PhaseStatusView>,
    pub tasks: Vec<WorkflowTaskView>,
    pub failed_tasks: Vec<FailedTask>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct WorkflowSummaryView {
    pub workflow_id: String,
    pub name: String,
    pub status: WorkflowStatus,
    pub progress: u32,
    pub tasks_total: u64,
    pub tasks_completed: u64,
    pub created_at: String,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct WorkflowList {
    pub workflows: Vec<WorkflowSummaryView>,
    pub total: u64,
}

/// Completed tasks × 100 / all tasks, rounded down (0 for no tasks).
pub fn progress(completed: u64, total: u64) -> u32 {
    (completed * 100).checked_div(total).unwrap_or(0) as u32
}

/// The workflow status object from its stored parts (also the `data` of workflow webhooks).
pub fn status_view(
    wf: &Workflow,
    phases: &[Phase],
    tasks: Vec<WorkflowTaskRow>,
) -> WorkflowStatusView {
    let count = |phase: &str, pred: &dyn Fn(TaskStatus) -> bool| {
        tasks
            .iter()
            .filter(|t| t.phase_id.as_deref() == Some(phase) && pred(t.status))
            .count() as u32
    };
    let completed = tasks
        .iter()
        .filter(|t| t.status == TaskStatus::Completed)
        .count() as u64;
    WorkflowStatusView {
        workflow_id: wf.id.to_string(),
        name: wf.name.clone(),
        description: wf.description.clone(),
        status: wf.status,
        progress: progress(completed, tasks.len() as u64),
        error: wf.error.clone(),
        webhook_url: wf.webhook_url.clone(),
        max_parallel: wf.max_parallel,
        created_at: rfc3339(wf.created_us),
        started_at: wf.started_us.map(rfc3339),
        completed_at: wf.completed_us.map(rfc3339),
        phases: phases
            .iter()
            .map(|p| PhaseStatusView {
                phase_id: p.phase_id.clone(),
                name: p.name.clone(),
                status: p.status,
                depends_on: p.depends_on.clone(),
                tasks_total: count(&p.phase_id, &|_| true),
                tasks_completed: count(&p.phase_id, &|s| s == TaskStatus::Completed),
                tasks_failed: count(&p.phase_id, &|s| s == TaskStatus::Failed),
                started_at: p.started_us.map(rfc3339),
                completed_at: p.completed_us.map(rfc3339),
            })
            .collect(),
        failed_tasks: tasks
            .iter()
            .filter(|t| t.status == TaskStatus::Failed)
            .map(|t| FailedTask {
                task_id: t.id.to_string(),
                name: t.name.clone(),
                error: t.error.clone(),
            })
            .collect(),
        tasks: tasks
            .into_iter()
            .map(|t| WorkflowTaskView {
                task_id: t.id.to_string(),
                phase_id: t.phase_id,
                name: t.name,
                status: t.status,
                branch: t.branch,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_rounds_down() {
        assert_eq!(progress(0, 0), 0);
        assert_eq!(progress(1, 3), 33);
        assert_eq!(progress(3, 3), 100);
    }
}
