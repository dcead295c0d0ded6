//! Workflows on a cluster node: what the workflow tools ask of it, and the step owed after a
//! workflow's task ends — taken under the workflow's row lock by whichever node recorded the
//! end (the rules are `workflow_steps.rs`). Should that node die before taking it, the leader
//! finds the workflow stale and takes it (`rescuer.rs`).

use std::time::Duration;

use uuid::Uuid;

use super::scheduler::Inner;
use super::workflow_steps;
use super::Cluster;
use crate::model::{Phase, Task, Workflow, WorkflowStatus, WorkflowTaskRow};
use crate::notifier::Notifier;
use crate::scheduler::phases;
use crate::scheduler::workflow::{check_workflow_task, new_phase, phase_index, still_a_draft};
use crate::scheduler::SchedError;
use crate::store::postgres::{DraftChange, NewClusterTask, Postgres, WorkflowStep};
use crate::store::{StoreError, WorkflowSummary};

fn store(e: StoreError) -> SchedError {
    SchedError::Store(e)
}

fn unknown(id: Uuid) -> SchedError {
    SchedError::NotFound(format!(
        "unknown workflow_id {id}: no such workflow (list_workflows shows the workflows there are)"
    ))
}

impl Cluster {
    pub async fn create_workflow(&self, wf: Workflow) -> Result<Workflow, SchedError> {
        self.refuse_when_stopping()?;
        self.db().insert_workflow(&wf).await.map_err(store)?;
        Ok(wf)
    }

    pub async fn workflow(&self, id: Uuid) -> Result<Option<Workflow>, SchedError> {
        self.db().workflow(id).await.map_err(store)
    }

    pub async fn phases(&self, id: Uuid) -> Result<Vec<Phase>, SchedError> {
        self.db().phases(id).await.map_err(store)
    }

    pub async fn workflow_task_rows(&self, id: Uuid) -> Result<Vec<WorkflowTaskRow>, SchedError> {
        Ok(self
            .db()
            .workflow_tasks(id)
            .await
            .map_err(store)?
            .iter()
            .map(crate::store::postgres::task_row)
            .collect())
    }

    pub async fn list_workflows(
        &self,
        status: Option<WorkflowStatus>,
        limit: u32,
        offset: u64,
    ) -> Result<(Vec<WorkflowSummary>, u64), SchedError> {
        let (rows, total) = self
            .db()
            .list_workflows(status, limit, offset)
            .await
            .map_err(store)?;
        let rows = rows
            .into_iter()
            .map(|(workflow, tasks_total, tasks_completed)| WorkflowSummary {
                workflow,
                tasks_total,
                tasks_completed,
            })
            .collect();
        Ok((rows, total))
    }

    /// Adds a phase to a draft (the same checks as the single engine, under the row lock).
    pub async fn add_phase(
        &self,
        workflow_id: Uuid,
        phase_id: String,
        name: String,
        depends_on: Vec<String>,
    ) -> Result<Phase, SchedError> {
        let changed = self
            .db()
            .change_draft(workflow_id, |wf, phases, _| {
                still_a_draft(wf)?;
                new_phase(workflow_id, phases, phase_id, name, depends_on).map(DraftChange::Phase)
            })
            .await
            .map_err(store)?;
        match changed.ok_or_else(|| unknown(workflow_id))?? {
            DraftChange::Phase(p) => Ok(p),
            DraftChange::Task(_) => Err(SchedError::Internal("a phase was asked for".into())),
        }
    }

    /// Adds a task to a draft's phase; it waits at its phase's gate until the phase opens.
    pub async fn add_workflow_task(&self, new: NewClusterTask) -> Result<Task, SchedError> {
        self.refuse_when_stopping()?;
        let Some(workflow_id) = new.task.workflow_id else {
            return Err(SchedError::Invalid(
                "a workflow task needs workflow_id and phase_id".into(),
            ));
        };
        let changed = self
            .db()
            .change_draft(workflow_id, |wf, phases, rows| {
                still_a_draft(wf)?;
                check_workflow_task(&new.task, phases, rows)?;
                Ok::<_, SchedError>(DraftChange::Task(Box::new(new)))
            })
            .await
            .map_err(store)?;
        match changed.ok_or_else(|| unknown(workflow_id))?? {
            DraftChange::Task(t) => {
                crate::metrics::task_submitted(&t.task.agent_name);
                Ok(t.task)
            }
            DraftChange::Phase(_) => Err(SchedError::Internal("a task was asked for".into())),
        }
    }

    /// Starts a draft: its first phases open in the same transaction.
    pub async fn start_workflow(&self, id: Uuid) -> Result<(), SchedError> {
        self.refuse_when_stopping()?;
        let taken = step(self.db(), id, workflow_steps::start)
            .await
            .map_err(store)?
            .ok_or_else(|| unknown(id))??;
        self.wake_claims();
        told(self.notifier(), &taken);
        Ok(())
    }

    /// Cancels a draft or running workflow: pending tasks at once, running ones through their
    /// nodes; waits (a while) until none of its tasks runs any more.
    pub async fn cancel_workflow(&self, id: Uuid) -> Result<(), SchedError> {
        let taken = step(self.db(), id, workflow_steps::cancel)
            .await
            .map_err(store)?
            .ok_or_else(|| unknown(id))??;
        // Its running tasks here stop at the claim loop's next look, which this brings forward.
        self.wake_claims();
        told(self.notifier(), &taken);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while self.db().workflow_running(id).await.map_err(store)?
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }
}

/// Tells the notifier of a workflow the step ended.
fn told(notifier: &dyn Notifier, step: &WorkflowStep) {
    if let Some(wf) = step.workflow.as_ref().filter(|w| w.status.is_terminal()) {
        notifier.workflow_finished(wf);
    }
}

/// What a step set going that the claim loop should look at: tasks let through their gates,
/// or tasks asked to stop.
#[derive(Default)]
pub(super) struct Stepped {
    pub opened: bool,
    pub stopping: bool,
}

/// Takes a step of a workflow (see `Postgres::step_workflow`); one that loses a deadlock or
/// finds the database away is tried again a few times.
async fn step<F>(
    db: &Postgres,
    id: Uuid,
    decide: F,
) -> Result<Option<Result<WorkflowStep, SchedError>>, StoreError>
where
    F: Fn(&Workflow, &[Phase], &[Task], i64) -> Result<WorkflowStep, SchedError> + Copy,
{
    let mut tries = 0;
    loop {
        match db.step_workflow(id, decide).await {
            Err(StoreError::Unavailable(why)) if tries < 3 => {
                tries += 1;
                tracing::debug!(workflow_id = %id, "the workflow's step is tried again: {why}");
                tokio::time::sleep(Duration::from_millis(50 * tries)).await;
            }
            other => return other,
        }
    }
}

/// Takes the step a workflow owes now (none, if another node took it). If it cannot, the
/// leader takes it: the ends it would have seen stay marked as owed.
pub(super) async fn advance(db: &Postgres, notifier: &dyn Notifier, id: Uuid) -> Stepped {
    let decide = |wf: &Workflow, phases: &[Phase], tasks: &[Task], now: i64| {
        Ok(workflow_steps::advance(wf, phases, tasks, now))
    };
    match step(db, id, decide).await {
        Ok(Some(Ok(step))) => {
            told(notifier, &step);
            Stepped {
                opened: !step.open.is_empty(),
                stopping: step.cancel_unfinished.is_some(),
            }
        }
        Ok(_) => Stepped::default(),
        Err(e) => {
            tracing::warn!(workflow_id = %id, "could not move the workflow along ({e}); the leader will");
            Stepped::default()
        }
    }
}

/// The phases of a workflow task's workflow and the completed tasks of the phases before its
/// own, in phase order: what it is told of (their results, appended to its instructions) and,
/// isolated, the work it starts from. Empty for a task of no workflow or of a first phase.
pub(super) async fn upstream_tasks(
    inner: &Inner,
    t: &Task,
) -> Result<(Vec<Phase>, Vec<Task>), StoreError> {
    let Some(w) = t.workflow_id else {
        return Ok((Vec::new(), Vec::new()));
    };
    let phases = inner.db.phases(w).await?;
    let up: Vec<String> = phases::upstream(&phases, phase_index(&phases, t))
        .into_iter()
        .map(|i| phases[i].phase_id.clone())
        .collect();
    if up.is_empty() {
        return Ok((phases, Vec::new()));
    }
    let tasks = inner.db.completed_in_phases(w, &up).await?;
    Ok((phases, tasks))
}
