//! Workflow and phase records: their statuses and the shapes the workflow tools answer with.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::TaskStatus;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum WorkflowStatus {
    Draft,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl WorkflowStatus {
    pub const ALL: [WorkflowStatus; 5] = [
        WorkflowStatus::Draft,
        WorkflowStatus::Running,
        WorkflowStatus::Completed,
        WorkflowStatus::Failed,
        WorkflowStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WorkflowStatus::Draft => "draft",
            WorkflowStatus::Running => "running",
            WorkflowStatus::Completed => "completed",
            WorkflowStatus::Failed => "failed",
            WorkflowStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<WorkflowStatus> {
        WorkflowStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            WorkflowStatus::Completed | WorkflowStatus::Failed | WorkflowStatus::Cancelled
        )
    }
}

/// `cancelled` means skipped: an upstream phase failed or the workflow was cancelled.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum PhaseStatus {
    Pending,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl PhaseStatus {
    pub const ALL: [PhaseStatus; 5] = [
        PhaseStatus::Pending,
        PhaseStatus::Running,
        PhaseStatus::Completed,
        PhaseStatus::Failed,
        PhaseStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PhaseStatus::Pending => "pending",
            PhaseStatus::Running => "running",
            PhaseStatus::Completed => "completed",
            PhaseStatus::Failed => "failed",
            PhaseStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<PhaseStatus> {
        PhaseStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            PhaseStatus::Completed | PhaseStatus::Failed | PhaseStatus::Cancelled
        )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workflow {
    pub id: Uuid,
    pub name: String,
    pub description: Option<String>,
    pub webhook_url: Option<String>,
    pub status: WorkflowStatus,
    /// At most this many of its tasks run at once (on top of the global worker limit).
    pub max_parallel: Option<u32>,
    /// Why it failed or was cancelled.
    pub error: Option<String>,
    pub created_us: i64,
    pub started_us: Option<i64>,
    pub completed_us: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    pub workflow_id: Uuid,
    pub phase_id: String,
    pub name: String,
    /// Phase ids of the same workflow, all added before this one.
    pub depends_on: Vec<String>,
    /// Order of addition, which is also a topological order of the phase graph.
    pub position: i32,
    pub status: PhaseStatus,
    pub started_us: Option<i64>,
    pub completed_us: Option<i64>,
}

/// A workflow's task as `workflow_status` lists it (no instructions, no result).
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowTaskRow {
    pub id: Uuid,
    pub phase_id: Option<String>,
    pub name: String,
    pub status: TaskStatus,
    pub error: Option<String>,
    /// The git branch holding its work, for a task isolated in a worktree.
    pub branch: Option<String>,
}
