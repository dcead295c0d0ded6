//! What an ended attempt changes, in one transaction: the task's new state (fenced to the node
//! that owns the attempt), its dependents released or cancelled, the webhook events owed for
//! every task that ended, and the log lines that say so. A cancel by request goes the same way.
//!
//! Dependents are released in a later statement than the one that records the outcome. A
//! dependent inserted at the same moment counts its open dependencies under a share lock
//! (`claim.rs`), which the outcome's row lock waits for: once the outcome is written, the next
//! statement's snapshot sees that dependent and its edge, or the dependent saw the dependency
//! completed. Never neither, so no task waits for ever.

use serde_json::Value;
use uuid::Uuid;

use super::logs::{append_in, LogEntry};
use super::rows::{id_and_status, task_from_row, task_state_json, TASK_COLUMNS};
use super::Postgres;
use crate::model::{Task, TaskStatus};
use crate::store::StoreError;

/// Why a change by request was refused (the message says what to do instead).
#[derive(Debug, Clone)]
pub struct Refused(pub String);

/// An attempt's end as its node decided it.
#[derive(Debug, Clone)]
pub struct Ended {
    /// The task's next state.
    pub next: Task,
    /// The attempt that ended (a stop by shutdown gives it back, so `next.attempt` may be one
    /// less).
    pub attempt: u32,
    /// Why, for the task's log.
    pub logs: Vec<(&'static str, String)>,
}

/// Whether an outcome was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    Done,
    /// The task is no longer this node's attempt (rescued, or changed): nothing was written.
    Fenced,
}

/// What a cancel by request found.
#[derive(Debug, Clone)]
pub enum Cancel {
    /// It was pending: it is cancelled now (and so are the tasks waiting on it).
    Cancelled(Task),
    /// It is running on `node`: asked to stop. Its node stops its process group and records
    /// the end.
    Asked { node: Option<String> },
    /// It had ended already.
    Ended(Task),
}

/// Outcomes fenced to the node and attempt that own them (`$2`: the node, `$3`/`$4`: each task's
/// ended attempt). A cancel asked for while the attempt was ending wins over a retry or a
/// give-back: the task does not run again. An end is timed by the database's clock, like the start: a task's times
/// compare across nodes whatever their clocks say, and a dependent never seems to start before
/// its dependency ended.
const FINISH_SQL: &str = "UPDATE tasks t SET
        status = CASE WHEN t.cancel_requested AND o.status = 'pending' THEN 'cancelled'
                      ELSE o.status END,
        attempt = o.attempt, scheduled_at = o.scheduled_at, started_at = o.started_at,
        completed_at = CASE WHEN o.completed_at IS NOT NULL
                              OR (t.cancel_requested AND o.status = 'pending')
                            THEN statement_timestamp() END,
        retry_floor = o.retry_floor, metadata = o.metadata, result = o.result,
        error = CASE WHEN t.cancel_requested AND o.status = 'pending'
                     THEN 'cancelled by request; its attempt had ended (' || coalesce(o.error, 'stopped') || ')'
                     ELSE o.error END,
        input_tokens = o.input_tokens, output_tokens = o.output_tokens, cost_usd = o.cost_usd,
        workspace = o.workspace, pid = NULL, pid_start = NULL, cancel_requested = false,
        step_owed = t.workflow_id IS NOT NULL
            AND (o.status IN ('completed', 'failed', 'cancelled')
                 OR (t.cancel_requested AND o.status = 'pending')),
        updated_at = clock_timestamp()
    FROM jsonb_populate_recordset(NULL::tasks, $1) AS o
    JOIN unnest($3::uuid[], $4::int[]) AS e(task_id, attempt) ON e.task_id = o.task_id
    WHERE t.task_id = o.task_id AND t.status = 'running' AND t.attempt = e.attempt
      AND t.node_id = $2
    RETURNING t.task_id, t.status, t.webhook_url IS NOT NULL";

/// One level of the cascade: pending tasks waiting on any of `$1` are cancelled, naming the
/// dependency that ended them.
const CASCADE_SQL: &str = "UPDATE tasks t SET status = 'cancelled', completed_at = now(),
        error = 'cancelled because its dependency ' || d.depends_on || ' (' || u.name || ') '
                || u.status,
        step_owed = t.workflow_id IS NOT NULL, updated_at = clock_timestamp()
    FROM (SELECT DISTINCT ON (td.task_id) td.task_id, td.depends_on
          FROM task_dependencies td WHERE td.depends_on = ANY($1)
          ORDER BY td.task_id, td.depends_on) d
    JOIN tasks u ON u.task_id = d.depends_on
    WHERE t.task_id = d.task_id AND t.status = 'pending'
    RETURNING t.task_id, t.error, t.webhook_url IS NOT NULL";

/// Completed tasks release their dependents: one open dependency fewer each.
const RELEASE_SQL: &str = "UPDATE tasks t SET deps_open = greatest(t.deps_open - d.n, 0),
        updated_at = clock_timestamp()
    FROM (SELECT task_id, count(*)::int AS n FROM task_dependencies
          WHERE depends_on = ANY($1) GROUP BY task_id) d
    WHERE t.task_id = d.task_id AND t.status = 'pending'";

/// Locks the tasks waiting on any of `$1`, in id order: two transactions settling dependents
/// they share take their locks in the same order, so they wait for each other, never deadlock.
const LOCK_DEPENDENTS_SQL: &str = "SELECT t.task_id FROM tasks t
    WHERE t.task_id IN (SELECT td.task_id FROM task_dependencies td WHERE td.depends_on = ANY($1))
    ORDER BY t.task_id
    FOR UPDATE OF t";

/// A task whose state a settle has just written.
#[derive(Debug, Clone, Copy)]
pub(super) struct Settled {
    pub id: Uuid,
    pub status: TaskStatus,
    /// Whether it has a webhook (an event is owed if the state is terminal).
    pub webhook: bool,
}

impl Settled {
    pub fn of(t: &Task) -> Settled {
        Settled {
            id: t.id,
            status: t.status,
            webhook: t.webhook_url.is_some(),
        }
    }

    /// From a row's `(task_id, status, has a webhook)`.
    pub fn from_row(r: &tokio_postgres::Row) -> Result<Settled, StoreError> {
        let (id, status) = id_and_status(r)?;
        Ok(Settled {
            id,
            status,
            webhook: r.try_get(2)?,
        })
    }
}

/// What tasks that have just ended set off (see the module's doc): the tasks waiting on them
/// released or cancelled, and the webhook events owed for them and for every task the cascade
/// cancelled. Returns the log lines of the cancellations.
pub(super) async fn settle_ended(
    tx: &deadpool_postgres::Transaction<'_>,
    ended: &[Settled],
) -> Result<Vec<LogEntry>, StoreError> {
    let of = |pick: fn(TaskStatus) -> bool| -> Vec<Uuid> {
        ended
            .iter()
            .filter(|s| pick(s.status))
            .map(|s| s.id)
            .collect()
    };
    let completed = of(|st| st == TaskStatus::Completed);
    let mut owed: Vec<Uuid> = ended
        .iter()
        .filter(|s| s.webhook && s.status.is_terminal())
        .map(|s| s.id)
        .collect();
    let lock = tx.prepare_cached(LOCK_DEPENDENTS_SQL).await?;
    if !completed.is_empty() {
        tx.query(&lock, &[&completed]).await?;
        let release = tx.prepare_cached(RELEASE_SQL).await?;
        tx.execute(&release, &[&completed]).await?;
    }
    let mut doomed = of(|st| matches!(st, TaskStatus::Failed | TaskStatus::Cancelled));
    let mut lines = Vec::new();
    let cascade = tx.prepare_cached(CASCADE_SQL).await?;
    while !doomed.is_empty() {
        tx.query(&lock, &[&doomed]).await?;
        let rows = tx.query(&cascade, &[&doomed]).await?;
        doomed = Vec::with_capacity(rows.len());
        for r in &rows {
            let id: Uuid = r.try_get(0)?;
            let why: Option<String> = r.try_get(1)?;
            if r.try_get(2)? {
                owed.push(id);
            }
            lines.push(LogEntry {
                task_id: id,
                level: "warn",
                message: why.unwrap_or_default(),
            });
            doomed.push(id);
        }
    }
    super::webhooks::owe_in(tx, &owed).await?;
    Ok(lines)
}

impl Postgres {
    /// Records the workspace of attempt `attempt` of a task `node_id` runs, before its worktree
    /// is made, so that whoever closes it later (this attempt, or the next after a rescue)
    /// knows its branch and base. `false`: the attempt is no longer this node's.
    pub async fn record_workspace(
        &self,
        node_id: &str,
        id: Uuid,
        attempt: u32,
        workspace: &Value,
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let write = client
            .prepare_cached(
                "UPDATE tasks SET workspace = $4, updated_at = clock_timestamp()
                 WHERE task_id = $1 AND status = 'running' AND attempt = $2 AND node_id = $3",
            )
            .await?;
        let n = client
            .execute(&write, &[&id, &(attempt as i32), &node_id, workspace])
            .await?;
        Ok(n == 1)
    }

    /// Records the ends of attempts `node_id` owns, with what they set off, in one transaction.
    /// An end for a task that is no longer that attempt of this node's (the cluster gave the
    /// node up and rescued it) is not written: `Fenced`, and neither are its log lines.
    pub async fn finish(&self, node_id: &str, ends: &[Ended]) -> Result<Vec<Recorded>, StoreError> {
        if ends.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<Value> = ends.iter().map(|e| task_state_json(&e.next)).collect();
        let ids: Vec<Uuid> = ends.iter().map(|e| e.next.id).collect();
        let attempts: Vec<i32> = ends.iter().map(|e| e.attempt as i32).collect();
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let finish = tx.prepare_cached(FINISH_SQL).await?;
        let written: Vec<Settled> = tx
            .query(&finish, &[&Value::Array(rows), &node_id, &ids, &attempts])
            .await?
            .iter()
            .map(Settled::from_row)
            .collect::<Result<_, StoreError>>()?;
        let stored = |id: Uuid| written.iter().find(|w| w.id == id).map(|w| w.status);
        let mut lines = Vec::new();
        for e in ends {
            let Some(status) = stored(e.next.id) else {
                continue;
            };
            if status == e.next.status {
                lines.extend(e.logs.iter().map(|(level, message)| LogEntry {
                    task_id: e.next.id,
                    level,
                    message: message.clone(),
                }));
            } else {
                lines.push(LogEntry {
                    task_id: e.next.id,
                    level: "info",
                    message: format!(
                        "attempt {} ended as its cancel was asked for; cancelled by request",
                        e.attempt
                    ),
                });
            }
        }
        lines.extend(settle_ended(&tx, &written).await?);
        append_in(&tx, &lines).await?;
        // Dependents released, or a task given back at shutdown: other nodes may take them now.
        if written
            .iter()
            .any(|w| matches!(w.status, TaskStatus::Completed | TaskStatus::Pending))
        {
            super::notify::notify_ready(&tx).await?;
        }
        tx.commit().await?;
        Ok(ends
            .iter()
            .map(|e| {
                if stored(e.next.id).is_some() {
                    Recorded::Done
                } else {
                    Recorded::Fenced
                }
            })
            .collect())
    }

    /// A cancel by request: a pending task is cancelled now (with the tasks waiting on it); a
    /// running one is marked, and its node stops it. `None`: no such task.
    pub async fn cancel(&self, id: Uuid) -> Result<Option<Cancel>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let read = format!(
            "SELECT {TASK_COLUMNS}, t.node_id FROM tasks t WHERE t.task_id = $1 FOR UPDATE"
        );
        let Some(row) = tx.query_opt(&read, &[&id]).await? else {
            return Ok(None);
        };
        let mut task = task_from_row(&row)?;
        let node: Option<String> = row.try_get(30)?;
        let answer = match task.status {
            TaskStatus::Pending => {
                tx.execute(
                    "UPDATE tasks SET status = 'cancelled', completed_at = now(),
                         error = 'cancelled by request before it started', updated_at = clock_timestamp()
                     WHERE task_id = $1",
                    &[&id],
                )
                .await?;
                let mut lines = vec![LogEntry {
                    task_id: id,
                    level: "info",
                    message: "cancelled by request".into(),
                }];
                task.status = TaskStatus::Cancelled;
                lines.extend(settle_ended(&tx, &[Settled::of(&task)]).await?);
                append_in(&tx, &lines).await?;
                let now: chrono::DateTime<chrono::Utc> =
                    tx.query_one("SELECT now()", &[]).await?.try_get(0)?;
                task.completed_us = Some(super::rows::us(now));
                task.error = Some("cancelled by request before it started".into());
                Cancel::Cancelled(task)
            }
            TaskStatus::Running => {
                tx.execute(
                    "UPDATE tasks SET cancel_requested = true, updated_at = clock_timestamp()
                     WHERE task_id = $1",
                    &[&id],
                )
                .await?;
                Cancel::Asked { node }
            }
            _ => Cancel::Ended(task),
        };
        tx.commit().await?;
        Ok(Some(answer))
    }

    /// A retry by request: a failed or cancelled task (outside workflows) is pending again with
    /// a fresh retry budget, waiting for its dependencies that have not completed. `None`: no
    /// such task; `Err(Refused)`: why it cannot be retried.
    pub async fn retry(&self, id: Uuid) -> Result<Option<Result<Task, Refused>>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let read = format!("SELECT {TASK_COLUMNS} FROM tasks t WHERE t.task_id = $1 FOR UPDATE");
        let Some(row) = tx.query_opt(&read, &[&id]).await? else {
            return Ok(None);
        };
        let task = task_from_row(&row)?;
        if let Some(w) = task.workflow_id {
            return Ok(Some(Err(Refused(format!(
                "task {id} belongs to workflow {w}; a workflow's tasks are not retried one by one once it has ended — create a new workflow to run it again"
            )))));
        }
        if !matches!(task.status, TaskStatus::Failed | TaskStatus::Cancelled) {
            return Ok(Some(Err(Refused(format!(
                "task {id} is {}; only failed or cancelled tasks can be retried",
                task.status.as_str()
            )))));
        }
        let deps: Vec<(Uuid, TaskStatus)> = if task.dependencies.is_empty() {
            Vec::new()
        } else {
            tx.query(
                "SELECT task_id, status FROM tasks WHERE task_id = ANY($1) FOR SHARE",
                &[&task.dependencies],
            )
            .await?
            .iter()
            .map(id_and_status)
            .collect::<Result<_, _>>()?
        };
        for dep in &task.dependencies {
            match deps.iter().find(|(d, _)| d == dep) {
                None => {
                    return Ok(Some(Err(Refused(format!(
                        "task {id} depends on task {dep}, which has been removed; submit the work again as a new task without that dependency"
                    )))))
                }
                Some((_, st @ (TaskStatus::Failed | TaskStatus::Cancelled))) => {
                    return Ok(Some(Err(Refused(format!(
                        "task {id} depends on task {dep}, which is {}, so it could never start; task_retry that one first",
                        st.as_str()
                    )))))
                }
                Some(_) => {}
            }
        }
        let open = super::claim::open_dependencies(&task.dependencies, &deps);
        let retried = tx
            .query_one(
                &format!(
                    "UPDATE tasks t SET status = 'pending', scheduled_at = now(), started_at = NULL,
                         completed_at = NULL, result = NULL, error = NULL,
                         retry_floor = t.attempt, deps_open = $2, cancel_requested = false,
                         pid = NULL, pid_start = NULL, updated_at = clock_timestamp()
                     WHERE t.task_id = $1
                     RETURNING {TASK_COLUMNS}"
                ),
                &[&id, &open],
            )
            .await?;
        let task = task_from_row(&retried)?;
        append_in(
            &tx,
            &[LogEntry {
                task_id: id,
                level: "info",
                message: "retried by request; back to pending".into(),
            }],
        )
        .await?;
        super::notify::notify_ready(&tx).await?;
        tx.commit().await?;
        Ok(Some(Ok(task)))
    }

    /// The tasks `node_id` runs that somebody asked to cancel.
    pub async fn cancels_for(&self, node_id: &str) -> Result<Vec<Uuid>, StoreError> {
        let client = self.client().await?;
        let read = client
            .prepare_cached(
                "SELECT task_id FROM tasks
                 WHERE node_id = $1 AND status = 'running' AND cancel_requested",
            )
            .await?;
        client
            .query(&read, &[&node_id])
            .await?
            .iter()
            .map(|r| r.try_get(0).map_err(StoreError::from))
            .collect()
    }
}
