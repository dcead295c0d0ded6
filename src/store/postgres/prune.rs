//! Retention on a cluster: finished work older than a period is removed in batches, one
//! transaction each, by the same rules as the single engine — a task outside workflows that
//! completed, failed or was cancelled, or an ended workflow whole once none of its tasks is
//! still pending or running (one may still be stopping); with them go their log lines,
//! dependency edges, webhook events and delivery records; never while a webhook about them is
//! still owed.
//!
//! Rows are taken `FOR UPDATE SKIP LOCKED`, so nodes pruning at once share the work, and a
//! `task_retry` (which locks its task) and a prune never both get a task: a retried task is
//! pending again by the time a prune could look at it.

use std::time::Duration;

use uuid::Uuid;

use super::rows::us;
use super::Postgres;
use crate::store::prune::Pruned;
use crate::store::StoreError;

impl Postgres {
    /// Removes up to `limit` finished tasks outside workflows and up to `limit` ended workflows
    /// that ended more than `older_than` ago by the database's clock. Returns what went, and
    /// that cutoff.
    pub async fn prune_batch(
        &self,
        older_than: Duration,
        limit: u32,
    ) -> Result<(Pruned, i64), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let cutoff: chrono::DateTime<chrono::Utc> = tx
            .query_one(
                "SELECT now() - make_interval(secs => $1)",
                &[&older_than.as_secs_f64()],
            )
            .await?
            .try_get(0)?;
        let limit = i64::from(limit);
        let mut tasks: Vec<Uuid> = tx
            .query(
                "SELECT t.task_id FROM tasks t
                 WHERE t.workflow_id IS NULL
                   AND t.status IN ('completed', 'failed', 'cancelled')
                   AND coalesce(t.completed_at, t.updated_at) < $1
                   AND NOT EXISTS (SELECT 1 FROM webhook_events e
                                   WHERE e.task_id = t.task_id AND e.status = 'pending')
                 ORDER BY coalesce(t.completed_at, t.updated_at)
                 LIMIT $2
                 FOR UPDATE OF t SKIP LOCKED",
                &[&cutoff, &limit],
            )
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        let workflows: Vec<Uuid> = tx
            .query(
                "SELECT w.workflow_id FROM workflows w
                 WHERE w.status IN ('completed', 'failed', 'cancelled')
                   AND coalesce(w.completed_at, w.updated_at) < $1
                   AND NOT EXISTS (SELECT 1 FROM tasks u WHERE u.workflow_id = w.workflow_id
                                   AND u.status IN ('pending', 'running'))
                   AND NOT EXISTS (SELECT 1 FROM webhook_events e
                                   WHERE e.status = 'pending'
                                     AND (e.workflow_id = w.workflow_id
                                          OR e.task_id IN (SELECT task_id FROM tasks
                                                           WHERE workflow_id = w.workflow_id)))
                 ORDER BY coalesce(w.completed_at, w.updated_at)
                 LIMIT $2
                 FOR UPDATE OF w SKIP LOCKED",
                &[&cutoff, &limit],
            )
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        if !workflows.is_empty() {
            let theirs = tx
                .query(
                    "SELECT task_id FROM tasks WHERE workflow_id = ANY($1)
                     ORDER BY task_id FOR UPDATE",
                    &[&workflows],
                )
                .await?;
            for r in &theirs {
                tasks.push(r.try_get(0)?);
            }
        }
        let mut pruned = Pruned::default();
        if tasks.is_empty() && workflows.is_empty() {
            return Ok((pruned, us(cutoff)));
        }
        pruned.log_lines = tx
            .execute("DELETE FROM task_logs WHERE task_id = ANY($1)", &[&tasks])
            .await?;
        pruned.webhook_deliveries = tx
            .execute(
                "DELETE FROM webhook_deliveries WHERE task_id = ANY($1) OR workflow_id = ANY($2)",
                &[&tasks, &workflows],
            )
            .await?;
        tx.execute(
            "DELETE FROM webhook_events WHERE task_id = ANY($1) OR workflow_id = ANY($2)",
            &[&tasks, &workflows],
        )
        .await?;
        tx.execute(
            "DELETE FROM task_dependencies WHERE task_id = ANY($1) OR depends_on = ANY($1)",
            &[&tasks],
        )
        .await?;
        tx.execute(
            "DELETE FROM workflow_phases WHERE workflow_id = ANY($1)",
            &[&workflows],
        )
        .await?;
        pruned.workflows = tx
            .execute(
                "DELETE FROM workflows WHERE workflow_id = ANY($1)",
                &[&workflows],
            )
            .await?;
        pruned.tasks = tx
            .execute("DELETE FROM tasks WHERE task_id = ANY($1)", &[&tasks])
            .await?;
        tx.commit().await?;
        Ok((pruned, us(cutoff)))
    }
}
