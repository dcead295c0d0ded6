//! Workflows on a cluster: their rows, changes to a draft's shape, and each step of a running
//! workflow — all made under the workflow's row lock, so that whichever nodes see its tasks
//! end, each step is taken exactly once.
//!
//! A step is decided by a pure rule the caller passes in (the cluster's), from the workflow,
//! its phases and its tasks as the database has them once the lock is held; this module only
//! reads and writes. The transaction that ends a workflow's task marks it `step_owed`, and the
//! step that sees it ended clears the mark, so a step nobody took (its node died in between) is
//! found exactly by [`Postgres::stale_workflows`].

use uuid::Uuid;

use super::claim::{insert_in, NewClusterTask};
use super::logs::{append_in, LogEntry};
use super::rows::{task_from_row, time, us, TASK_COLUMNS};
use super::settle::{settle_ended, Settled};
use super::Postgres;
use crate::model::{
    Phase, PhaseStatus, Task, WebhookEvent, Workflow, WorkflowStatus, WorkflowTaskRow,
};
use crate::store::{OpOutcome, StoreError};

const WORKFLOW_COLUMNS: &str = "w.workflow_id, w.name, w.description, w.webhook_url, w.status, \
    w.max_parallel, w.error, w.created_at, w.started_at, w.completed_at";

const PHASE_COLUMNS: &str = "p.workflow_id, p.phase_id, p.name, p.depends_on, p.position, \
    p.status, p.started_at, p.completed_at";

/// What one step of a workflow changes (decided by the caller's rule).
#[derive(Debug, Clone, Default)]
pub struct WorkflowStep {
    /// The workflow's new row, when it changes (started, or ended).
    pub workflow: Option<Workflow>,
    /// Phase rows that change.
    pub phases: Vec<Phase>,
    /// Phases whose tasks are let through their gate.
    pub open: Vec<String>,
    /// Cancel every unfinished task of the workflow, for this reason: pending ones now, running
    /// ones through their node (a cancel request).
    pub cancel_unfinished: Option<String>,
    /// The webhook event the workflow's end owes.
    pub event: Option<WebhookEvent>,
}

/// A change to a draft's shape.
#[derive(Debug, Clone)]
pub enum DraftChange {
    Phase(Phase),
    Task(Box<NewClusterTask>),
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("a stored workflow's {what} cannot be read: {e}"))
}

fn workflow_from_row(r: &tokio_postgres::Row) -> Result<Workflow, StoreError> {
    let status: String = r.try_get(4)?;
    Ok(Workflow {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        description: r.try_get(2)?,
        webhook_url: r.try_get(3)?,
        status: WorkflowStatus::parse(&status).ok_or_else(|| corrupt("status", &status))?,
        max_parallel: r.try_get::<_, Option<i32>>(5)?.map(|n| n.max(0) as u32),
        error: r.try_get(6)?,
        created_us: us(r.try_get(7)?),
        started_us: r.try_get::<_, Option<_>>(8)?.map(us),
        completed_us: r.try_get::<_, Option<_>>(9)?.map(us),
    })
}

fn phase_from_row(r: &tokio_postgres::Row) -> Result<Phase, StoreError> {
    let status: String = r.try_get(5)?;
    let deps: serde_json::Value = r.try_get(3)?;
    Ok(Phase {
        workflow_id: r.try_get(0)?,
        phase_id: r.try_get(1)?,
        name: r.try_get(2)?,
        depends_on: serde_json::from_value(deps).map_err(|e| corrupt("depends_on", e))?,
        position: r.try_get(4)?,
        status: PhaseStatus::parse(&status).ok_or_else(|| corrupt("phase status", &status))?,
        started_us: r.try_get::<_, Option<_>>(6)?.map(us),
        completed_us: r.try_get::<_, Option<_>>(7)?.map(us),
    })
}

/// A task as the workflow's status lists it.
pub fn task_row(t: &Task) -> WorkflowTaskRow {
    WorkflowTaskRow {
        id: t.id,
        phase_id: t.phase_id.clone(),
        name: t.name.clone(),
        status: t.status,
        error: t.error.clone(),
        branch: t.workspace.as_ref().and_then(|w| w.view().branch),
    }
}

async fn phases_in<C: deadpool_postgres::GenericClient>(
    c: &C,
    id: Uuid,
) -> Result<Vec<Phase>, StoreError> {
    let sql = format!(
        "SELECT {PHASE_COLUMNS} FROM workflow_phases p WHERE p.workflow_id = $1 ORDER BY p.position"
    );
    c.query(&sql, &[&id])
        .await?
        .iter()
        .map(phase_from_row)
        .collect()
}

async fn tasks_in<C: deadpool_postgres::GenericClient>(
    c: &C,
    id: Uuid,
) -> Result<Vec<Task>, StoreError> {
    let sql = format!(
        "SELECT {TASK_COLUMNS} FROM tasks t WHERE t.workflow_id = $1 ORDER BY t.created_at, t.task_id"
    );
    c.query(&sql, &[&id])
        .await?
        .iter()
        .map(task_from_row)
        .collect()
}

/// The workflow, locked for this transaction, with the database's time.
async fn lock_in(
    tx: &deadpool_postgres::Transaction<'_>,
    id: Uuid,
) -> Result<Option<(Workflow, i64)>, StoreError> {
    let sql = format!(
        "SELECT {WORKFLOW_COLUMNS}, now() FROM workflows w WHERE w.workflow_id = $1 FOR UPDATE"
    );
    match tx.query_opt(&sql, &[&id]).await? {
        Some(r) => Ok(Some((workflow_from_row(&r)?, us(r.try_get(10)?)))),
        None => Ok(None),
    }
}

/// Writes a workflow's row, as it stands, inside `c`.
pub(super) async fn insert_workflow_in<C: deadpool_postgres::GenericClient>(
    c: &C,
    wf: &Workflow,
) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO workflows (workflow_id, name, description, webhook_url, status,
             max_parallel, error, created_at, started_at, completed_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, now())",
        &[
            &wf.id,
            &wf.name,
            &wf.description,
            &wf.webhook_url,
            &wf.status.as_str(),
            &wf.max_parallel.map(|n| n as i32),
            &wf.error,
            &time(wf.created_us),
            &wf.started_us.map(time),
            &wf.completed_us.map(time),
        ],
    )
    .await?;
    Ok(())
}

/// Writes a phase's row, as it stands, inside `c`.
pub(super) async fn insert_phase_in<C: deadpool_postgres::GenericClient>(
    c: &C,
    p: &Phase,
) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO workflow_phases (workflow_id, phase_id, name, depends_on, position,
             status, started_at, completed_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &p.workflow_id,
            &p.phase_id,
            &p.name,
            &serde_json::json!(p.depends_on),
            &p.position,
            &p.status.as_str(),
            &p.started_us.map(time),
            &p.completed_us.map(time),
        ],
    )
    .await?;
    Ok(())
}

impl Postgres {
    pub async fn insert_workflow(&self, wf: &Workflow) -> Result<(), StoreError> {
        insert_workflow_in(&self.client().await?, wf).await
    }

    pub async fn workflow(&self, id: Uuid) -> Result<Option<Workflow>, StoreError> {
        let sql = format!("SELECT {WORKFLOW_COLUMNS} FROM workflows w WHERE w.workflow_id = $1");
        match self.client().await?.query_opt(&sql, &[&id]).await? {
            Some(r) => Ok(Some(workflow_from_row(&r)?)),
            None => Ok(None),
        }
    }

    /// The workflows of `ids` that have ended.
    pub async fn ended_workflows(&self, ids: &[Uuid]) -> Result<Vec<Workflow>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT {WORKFLOW_COLUMNS} FROM workflows w
             WHERE w.workflow_id = ANY($1) AND w.status IN ('completed', 'failed', 'cancelled')"
        );
        let client = self.client().await?;
        let read = client.prepare_cached(&sql).await?;
        client
            .query(&read, &[&ids])
            .await?
            .iter()
            .map(workflow_from_row)
            .collect()
    }

    /// A workflow's phases, in the order they were added.
    pub async fn phases(&self, id: Uuid) -> Result<Vec<Phase>, StoreError> {
        phases_in(&self.client().await?, id).await
    }

    /// A workflow's tasks, oldest first.
    pub async fn workflow_tasks(&self, id: Uuid) -> Result<Vec<Task>, StoreError> {
        tasks_in(&self.client().await?, id).await
    }

    /// Workflows by status (all when `None`), newest first, each with its tasks and how many
    /// completed; and how many there are in all.
    pub async fn list_workflows(
        &self,
        status: Option<WorkflowStatus>,
        limit: u32,
        offset: u64,
    ) -> Result<(Vec<(Workflow, u64, u64)>, u64), StoreError> {
        let client = self.client().await?;
        let status = status.map(WorkflowStatus::as_str);
        let total: i64 = client
            .query_one(
                "SELECT count(*) FROM workflows WHERE $1::text IS NULL OR status = $1",
                &[&status],
            )
            .await?
            .try_get(0)?;
        let sql = format!(
            "SELECT {WORKFLOW_COLUMNS},
                    (SELECT count(*) FROM tasks t WHERE t.workflow_id = w.workflow_id),
                    (SELECT count(*) FROM tasks t WHERE t.workflow_id = w.workflow_id
                       AND t.status = 'completed')
             FROM workflows w WHERE $1::text IS NULL OR w.status = $1
             ORDER BY w.created_at DESC, w.workflow_id DESC LIMIT $2 OFFSET $3"
        );
        let rows = client
            .query(
                &sql,
                &[
                    &status,
                    &i64::from(limit),
                    &(offset.min(i64::MAX as u64) as i64),
                ],
            )
            .await?;
        let listed = rows
            .iter()
            .map(|r| {
                let n: i64 = r.try_get(10)?;
                let done: i64 = r.try_get(11)?;
                Ok((workflow_from_row(r)?, n.max(0) as u64, done.max(0) as u64))
            })
            .collect::<Result<_, StoreError>>()?;
        Ok((listed, total.max(0) as u64))
    }

    /// The completed tasks of the given phases of a workflow, in the order of those phases,
    /// oldest first within each (what a later phase's task is told of).
    pub async fn completed_in_phases(
        &self,
        workflow_id: Uuid,
        phase_ids: &[String],
    ) -> Result<Vec<Task>, StoreError> {
        let sql = format!(
            "SELECT {TASK_COLUMNS} FROM tasks t
             JOIN workflow_phases p ON p.workflow_id = t.workflow_id AND p.phase_id = t.phase_id
             WHERE t.workflow_id = $1 AND t.phase_id = ANY($2) AND t.status = 'completed'
             ORDER BY p.position, t.created_at, t.task_id"
        );
        self.client()
            .await?
            .query(&sql, &[&workflow_id, &phase_ids])
            .await?
            .iter()
            .map(task_from_row)
            .collect()
    }

    /// Changes a draft's shape under its lock: `change` sees the workflow, its phases and its
    /// tasks as they are and says what to add, or why not. `None`: no such workflow.
    pub async fn change_draft<E, F>(
        &self,
        id: Uuid,
        change: F,
    ) -> Result<Option<Result<DraftChange, E>>, StoreError>
    where
        F: FnOnce(&Workflow, &[Phase], &[WorkflowTaskRow]) -> Result<DraftChange, E>,
    {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let Some((wf, _)) = lock_in(&tx, id).await? else {
            return Ok(None);
        };
        let phases = phases_in(&tx, id).await?;
        let rows: Vec<WorkflowTaskRow> = tasks_in(&tx, id).await?.iter().map(task_row).collect();
        let decided = match change(&wf, &phases, &rows) {
            Ok(c) => c,
            Err(e) => return Ok(Some(Err(e))),
        };
        match &decided {
            DraftChange::Phase(p) => {
                insert_phase_in(&tx, p).await?;
                // The workflow changed shape: its open pages look again.
                let touch = tx
                    .prepare_cached(
                        "UPDATE workflows SET updated_at = clock_timestamp() WHERE workflow_id = $1",
                    )
                    .await?;
                tx.execute(&touch, &[&id]).await?;
            }
            DraftChange::Task(t) => {
                if let Some(OpOutcome::Existing(holder)) =
                    insert_in(&tx, std::slice::from_ref(t)).await?.first()
                {
                    return Err(StoreError::Conflict(format!(
                        "task {} is there already (as {holder})",
                        t.task.id
                    )));
                }
            }
        }
        tx.commit().await?;
        Ok(Some(Ok(decided)))
    }

    /// Takes one step of a workflow under its lock: `decide` sees the workflow, its phases and
    /// its tasks as they are now, with the database's time, and says what changes (or why
    /// not); the change is written in the same transaction. `None`: no such workflow.
    pub async fn step_workflow<E, F>(
        &self,
        id: Uuid,
        decide: F,
    ) -> Result<Option<Result<WorkflowStep, E>>, StoreError>
    where
        F: FnOnce(&Workflow, &[Phase], &[Task], i64) -> Result<WorkflowStep, E>,
    {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let Some((wf, now)) = lock_in(&tx, id).await? else {
            return Ok(None);
        };
        // Its unfinished tasks are locked in id order, as finishes lock tasks they share: the
        // two wait for each other rather than deadlock in most cases (PostgreSQL breaks the
        // rest, and both are tried again).
        tx.execute(
            "SELECT 1 FROM tasks WHERE workflow_id = $1 AND status IN ('pending', 'running')
             ORDER BY task_id FOR UPDATE",
            &[&id],
        )
        .await?;
        let phases = phases_in(&tx, id).await?;
        let tasks = tasks_in(&tx, id).await?;
        let step = match decide(&wf, &phases, &tasks, now) {
            Ok(s) => s,
            Err(e) => return Ok(Some(Err(e))),
        };
        // The ends this step has seen are accounted for; one committed after the read above
        // stays owed, and the node that recorded it (or the leader) takes the next step.
        let seen: Vec<Uuid> = tasks
            .iter()
            .filter(|t| t.status.is_terminal())
            .map(|t| t.id)
            .collect();
        if !seen.is_empty() {
            tx.execute(
                "UPDATE tasks SET step_owed = false WHERE task_id = ANY($1) AND step_owed",
                &[&seen],
            )
            .await?;
        }
        for p in &step.phases {
            tx.execute(
                "UPDATE workflow_phases SET status = $3, started_at = $4, completed_at = $5
                 WHERE workflow_id = $1 AND phase_id = $2",
                &[
                    &p.workflow_id,
                    &p.phase_id,
                    &p.status.as_str(),
                    &p.started_us.map(time),
                    &p.completed_us.map(time),
                ],
            )
            .await?;
        }
        let next = step.workflow.as_ref().unwrap_or(&wf);
        tx.execute(
            "UPDATE workflows SET status = $2, error = $3, started_at = $4, completed_at = $5,
                 updated_at = clock_timestamp()
             WHERE workflow_id = $1",
            &[
                &id,
                &next.status.as_str(),
                &next.error,
                &next.started_us.map(time),
                &next.completed_us.map(time),
            ],
        )
        .await?;
        let mut ready = false;
        if !step.open.is_empty() {
            ready = tx
                .execute(
                    "UPDATE tasks SET gated = false, updated_at = clock_timestamp()
                     WHERE workflow_id = $1 AND phase_id = ANY($2) AND status = 'pending'
                       AND gated",
                    &[&id, &step.open],
                )
                .await?
                > 0;
        }
        if let Some(why) = &step.cancel_unfinished {
            // One statement for pending and running tasks: a task whose attempt ends at this
            // moment is judged by its newest row, so a give-back to pending is cancelled too
            // instead of slipping between two statements.
            let mut cancelled: Vec<Settled> = tx
                .query(
                    "UPDATE tasks SET
                         status = CASE WHEN status = 'pending' THEN 'cancelled' ELSE status END,
                         completed_at = CASE WHEN status = 'pending' THEN now()
                                             ELSE completed_at END,
                         error = CASE WHEN status = 'pending' THEN $2 ELSE error END,
                         cancel_requested = (status = 'running'), updated_at = clock_timestamp()
                     WHERE workflow_id = $1 AND status IN ('pending', 'running')
                     RETURNING task_id, status, webhook_url IS NOT NULL",
                    &[&id, why],
                )
                .await?
                .iter()
                .map(Settled::from_row)
                .collect::<Result<_, StoreError>>()?;
            // Running ones are only asked to stop: their nodes record their ends.
            cancelled.retain(|s| s.status == crate::model::TaskStatus::Cancelled);
            let mut lines: Vec<LogEntry> = cancelled
                .iter()
                .map(|s| LogEntry {
                    task_id: s.id,
                    level: "warn",
                    message: why.clone(),
                })
                .collect();
            lines.extend(settle_ended(&tx, &cancelled).await?);
            append_in(&tx, &lines).await?;
        }
        if let Some(ev) = &step.event {
            super::webhooks::insert_in(&tx, std::slice::from_ref(ev)).await?;
        }
        if ready {
            super::notify::notify_ready(&tx).await?;
        }
        tx.commit().await?;
        Ok(Some(Ok(step)))
    }

    /// Workflows owed a step: one of their tasks ended and no step has seen it yet (the node
    /// that recorded the end stopped, or failed, before taking it), or an ended workflow still
    /// has a pending task. Up to `limit`.
    pub async fn stale_workflows(&self, limit: i64) -> Result<Vec<Uuid>, StoreError> {
        self.client()
            .await?
            .query(
                "SELECT w.workflow_id FROM workflows w
                 WHERE w.workflow_id IN (SELECT t.workflow_id FROM tasks t WHERE t.step_owed)
                    OR (w.status IN ('completed', 'failed', 'cancelled') AND EXISTS (
                        SELECT 1 FROM tasks t WHERE t.workflow_id = w.workflow_id
                          AND t.status = 'pending'))
                 ORDER BY w.updated_at LIMIT $1",
                &[&limit],
            )
            .await?
            .iter()
            .map(|r| r.try_get(0).map_err(StoreError::from))
            .collect()
    }

    /// Whether any task of the workflow is still running (on any node).
    pub async fn workflow_running(&self, id: Uuid) -> Result<bool, StoreError> {
        Ok(self
            .client()
            .await?
            .query_opt(
                "SELECT 1 FROM tasks WHERE workflow_id = $1 AND status = 'running' LIMIT 1",
                &[&id],
            )
            .await?
            .is_some())
    }
}
