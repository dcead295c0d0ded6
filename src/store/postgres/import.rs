//! Taking in a single engine's database, for a user who moves up to a cluster: tasks with their
//! instructions and dependency edges, log lines, workflows and phases, webhook events and their
//! delivery records; then what a cluster keeps beside them (open dependencies, gates, steps
//! owed) is worked out from what came in. All of it is one transaction ([`Import`]): no node
//! sees half a copy, and a copy that fails leaves the database as it was.
//!
//! Only into an empty database: merging two histories could give two tasks one idempotency key.

use uuid::Uuid;

use super::rows::{new_task_json, time};
use super::Postgres;
use crate::model::{Phase, Task, WebhookAttempt, WebhookEvent, Workflow};
use crate::store::export::StoredLine;
use crate::store::StoreError;

/// A copy under way: one connection in one open transaction, committed by [`Import::commit`]
/// (dropped before that, the connection goes with its transaction undone).
pub struct Import {
    client: Option<deadpool_postgres::Object>,
}

impl Postgres {
    /// Starts a copy into this database.
    pub async fn begin_import(&self) -> Result<Import, StoreError> {
        let client = self.client().await?;
        client.batch_execute("BEGIN").await?;
        Ok(Import {
            client: Some(client),
        })
    }

    /// How many tasks and workflows the database holds.
    pub async fn held(&self) -> Result<(u64, u64), StoreError> {
        let row = self
            .client()
            .await?
            .query_one(
                "SELECT (SELECT count(*) FROM tasks), (SELECT count(*) FROM workflows)",
                &[],
            )
            .await?;
        let (t, w): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
        Ok((t.max(0) as u64, w.max(0) as u64))
    }
}

impl Import {
    fn c(&self) -> Result<&deadpool_postgres::Object, StoreError> {
        self.client.as_ref().ok_or(StoreError::Closed)
    }

    /// Takes in tasks as they were (status, attempts, times, results), with their log lines
    /// and their agents' `max_concurrency` (`limits`, in the same order). Unfinished ones may
    /// run only on `host`, the machine they came from, as their working directories are there.
    pub async fn tasks(
        &self,
        tasks: &[(Task, String)],
        limits: &[Option<u32>],
        lines: &[StoredLine],
        host: &str,
    ) -> Result<(), StoreError> {
        let tx = self.c()?;
        let rows: Vec<serde_json::Value> = tasks
            .iter()
            .zip(limits.iter().chain(std::iter::repeat(&None)))
            .map(|((t, instructions), limit)| {
                let bound = (!t.status.is_terminal()).then_some(host);
                new_task_json(
                    t,
                    instructions,
                    crate::cluster::DEFAULT_QUEUE,
                    bound,
                    *limit,
                    0,
                )
            })
            .collect();
        tx.execute(
            "INSERT INTO tasks
             SELECT r.* FROM jsonb_array_elements($1) AS e(v),
                  LATERAL jsonb_populate_record(NULL::tasks,
                              e.v || jsonb_build_object('updated_at', now())) AS r",
            &[&serde_json::Value::Array(rows)],
        )
        .await?;
        let (from, to): (Vec<Uuid>, Vec<Uuid>) = tasks
            .iter()
            .flat_map(|(t, _)| t.dependencies.iter().map(move |d| (t.id, *d)))
            .unzip();
        if !from.is_empty() {
            tx.execute(
                "INSERT INTO task_dependencies (task_id, depends_on)
                 SELECT * FROM unnest($1::uuid[], $2::uuid[]) ON CONFLICT DO NOTHING",
                &[&from, &to],
            )
            .await?;
        }
        if !lines.is_empty() {
            let ids: Vec<Uuid> = lines.iter().map(|l| l.task_id).collect();
            let seqs: Vec<i64> = lines.iter().map(|l| l.seq).collect();
            let times: Vec<_> = lines.iter().map(|l| time(l.ts_us)).collect();
            let levels: Vec<&str> = lines.iter().map(|l| l.level.as_str()).collect();
            let messages: Vec<&str> = lines.iter().map(|l| l.message.as_str()).collect();
            tx.execute(
                "INSERT INTO task_logs (task_id, seq, ts, level, message)
                 SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::timestamptz[], $4::text[],
                                      $5::text[])",
                &[&ids, &seqs, &times, &levels, &messages],
            )
            .await?;
        }
        Ok(())
    }

    /// Takes in workflows and their phases as they were.
    pub async fn workflows(
        &self,
        workflows: &[Workflow],
        phases: &[Phase],
    ) -> Result<(), StoreError> {
        let tx = self.c()?;
        for wf in workflows {
            super::workflows::insert_workflow_in(tx, wf).await?;
        }
        for p in phases {
            super::workflows::insert_phase_in(tx, p).await?;
        }
        Ok(())
    }

    /// Takes in webhook events as they were (an owed one is delivered by the cluster) and
    /// their delivery records.
    pub async fn webhooks(
        &self,
        events: &[WebhookEvent],
        attempts: &[WebhookAttempt],
    ) -> Result<(), StoreError> {
        let tx = self.c()?;
        super::webhooks::insert_in(tx, events).await?;
        for a in attempts {
            super::webhooks::insert_delivery_in(tx, a, Some(a.at_us)).await?;
        }
        Ok(())
    }

    /// After everything came in: each pending task counts its dependencies not completed, a
    /// workflow's task waits at its gate only while its phase has not opened, and the ends of a
    /// running workflow's tasks are owed a step.
    pub async fn settle(&self) -> Result<(), StoreError> {
        let tx = self.c()?;
        tx.execute(
            "UPDATE tasks t SET deps_open = (
                 SELECT count(*) FROM task_dependencies d JOIN tasks u ON u.task_id = d.depends_on
                 WHERE d.task_id = t.task_id AND u.status <> 'completed')
             WHERE t.status = 'pending'",
            &[],
        )
        .await?;
        tx.execute(
            "UPDATE tasks t SET gated = NOT EXISTS (
                 SELECT 1 FROM workflow_phases p JOIN workflows w ON w.workflow_id = p.workflow_id
                 WHERE p.workflow_id = t.workflow_id AND p.phase_id = t.phase_id
                   AND p.status <> 'pending' AND w.status <> 'draft')
             WHERE t.workflow_id IS NOT NULL",
            &[],
        )
        .await?;
        // The ends of a running workflow's tasks are owed a step: the engine may have stopped
        // before taking it (steps are derived, so one already taken is taken to nothing).
        tx.execute(
            "UPDATE tasks SET step_owed = true
             WHERE status IN ('completed', 'failed', 'cancelled')
               AND workflow_id IN (SELECT workflow_id FROM workflows WHERE status = 'running')",
            &[],
        )
        .await?;
        super::notify::notify_ready(tx).await?;
        Ok(())
    }

    /// Makes the copy visible to the cluster, all at once.
    pub async fn commit(mut self) -> Result<(), StoreError> {
        if let Some(c) = self.client.take() {
            c.batch_execute("COMMIT").await?;
        }
        Ok(())
    }
}

impl Drop for Import {
    fn drop(&mut self) {
        // Not committed: the connection must not go back to the pool inside the transaction.
        if let Some(c) = self.client.take() {
            drop(deadpool_postgres::Object::take(c));
        }
    }
}
