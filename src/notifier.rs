//! The notifier hook: told of every terminal task and workflow state, after it is committed.
//!
//! Today's notifier only logs. Webhook delivery plugs in here: it will add an outbox row to the
//! same store write as the terminal state change (so a crash between "done" and "sent" cannot
//! lose an event) and deliver it from its own tokio tasks, never in the workers' path.

use crate::model::{Task, Workflow};

pub trait Notifier: Send + Sync {
    /// Called once per terminal transition (completed, failed for good, cancelled), after the
    /// transition is durable. Must not block: hand slow work to another task.
    fn task_finished(&self, task: &Task);

    /// Called once when a workflow completes, fails or is cancelled, after that is durable.
    fn workflow_finished(&self, workflow: &Workflow);
}

/// Logs terminal transitions at debug level.
#[derive(Debug, Default)]
pub struct LogNotifier;

impl Notifier for LogNotifier {
    fn task_finished(&self, task: &Task) {
        tracing::debug!(task_id = %task.id, status = task.status.as_str(), "task finished");
    }

    fn workflow_finished(&self, workflow: &Workflow) {
        tracing::info!(workflow_id = %workflow.id, status = workflow.status.as_str(), "workflow finished");
    }
}
