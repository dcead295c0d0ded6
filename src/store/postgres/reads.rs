//! What the service reads from the cluster's database: tasks by id, pages of tasks, log lines.
//! Every node reads the same rows, so a task is seen alike from wherever it is asked about.

use uuid::Uuid;

use super::rows::{task_from_row, us, TASK_COLUMNS};
use super::Postgres;
use crate::model::{rfc3339, LogLine, Task};
use crate::store::{StoreError, TaskFilter};

fn log_from_row(r: &tokio_postgres::Row) -> Result<LogLine, StoreError> {
    Ok(LogLine {
        seq: r.try_get(0)?,
        ts: rfc3339(us(r.try_get(1)?)),
        level: r.try_get(2)?,
        message: r.try_get(3)?,
    })
}

impl Postgres {
    /// Tasks of a project (its directory or one inside it) that ended after `after_us`, newest
    /// end first, up to `limit`; and how many there are in all.
    pub async fn ended_in_project(
        &self,
        project: &str,
        after_us: i64,
        limit: u32,
    ) -> Result<(Vec<Task>, u64), StoreError> {
        let inside = format!("{}/", project.trim_end_matches('/'));
        let filter = "(t.project = $1 OR starts_with(t.project, $2))
             AND t.status IN ('completed', 'failed', 'cancelled') AND t.completed_at > $3";
        let after = super::rows::time(after_us);
        let client = self.client().await?;
        let total: i64 = client
            .query_one(
                &format!("SELECT count(*) FROM tasks t WHERE {filter}"),
                &[&project, &inside, &after],
            )
            .await?
            .try_get(0)?;
        let rows = client
            .query(
                &format!(
                    "SELECT {TASK_COLUMNS} FROM tasks t WHERE {filter}
                     ORDER BY t.completed_at DESC, t.task_id DESC LIMIT $4"
                ),
                &[&project, &inside, &after, &i64::from(limit)],
            )
            .await?;
        let tasks = rows.iter().map(task_from_row).collect::<Result<_, _>>()?;
        Ok((tasks, total.max(0) as u64))
    }

    /// A task with its instructions.
    pub async fn task_and_instructions(
        &self,
        id: Uuid,
    ) -> Result<Option<(Task, String)>, StoreError> {
        let client = self.client().await?;
        let read = client
            .prepare_cached(&format!(
                "SELECT {TASK_COLUMNS}, t.instructions FROM tasks t WHERE t.task_id = $1"
            ))
            .await?;
        let Some(r) = client.query_opt(&read, &[&id]).await? else {
            return Ok(None);
        };
        Ok(Some((task_from_row(&r)?, r.try_get(30)?)))
    }

    /// The host a task is bound to (`None`: any, or no such task).
    pub async fn task_host(&self, id: Uuid) -> Result<Option<String>, StoreError> {
        let client = self.client().await?;
        let read = client
            .prepare_cached("SELECT host FROM tasks WHERE task_id = $1")
            .await?;
        Ok(client
            .query_opt(&read, &[&id])
            .await?
            .map(|r| r.try_get(0))
            .transpose()?
            .flatten())
    }

    /// The tasks of `ids` that have ended, in no particular order.
    pub async fn ended_tasks(&self, ids: &[Uuid]) -> Result<Vec<Task>, StoreError> {
        self.tasks_where(ids, "AND t.status IN ('completed', 'failed', 'cancelled')")
            .await
    }

    /// The tasks of `ids` that exist, in no particular order.
    pub async fn tasks(&self, ids: &[Uuid]) -> Result<Vec<Task>, StoreError> {
        self.tasks_where(ids, "").await
    }

    /// The tasks of `ids` that also meet `and` (a fixed SQL condition).
    async fn tasks_where(&self, ids: &[Uuid], and: &str) -> Result<Vec<Task>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let read = client
            .prepare_cached(&format!(
                "SELECT {TASK_COLUMNS} FROM tasks t WHERE t.task_id = ANY($1) {and}"
            ))
            .await?;
        client
            .query(&read, &[&ids])
            .await?
            .iter()
            .map(task_from_row)
            .collect()
    }

    /// A page of tasks, newest first, and how many match in all.
    pub async fn list_tasks(&self, f: &TaskFilter) -> Result<(Vec<Task>, u64), StoreError> {
        let status = f.status.map(|s| s.as_str());
        let filter = "($1::text IS NULL OR t.status = $1)
                      AND ($2::text IS NULL OR t.agent_name = $2)
                      AND ($3::uuid IS NULL OR t.workflow_id = $3)";
        let client = self.client().await?;
        let page = client
            .prepare_cached(&format!(
                "SELECT {TASK_COLUMNS} FROM tasks t WHERE {filter}
                 ORDER BY t.created_at DESC, t.task_id DESC LIMIT $4 OFFSET $5"
            ))
            .await?;
        let count = client
            .prepare_cached(&format!("SELECT count(*) FROM tasks t WHERE {filter}"))
            .await?;
        let (limit, offset) = (i64::from(f.limit), f.offset as i64);
        let tasks = client
            .query(
                &page,
                &[&status, &f.agent_name, &f.workflow_id, &limit, &offset],
            )
            .await?
            .iter()
            .map(task_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let total: i64 = client
            .query_one(&count, &[&status, &f.agent_name, &f.workflow_id])
            .await?
            .try_get(0)?;
        Ok((tasks, total.max(0) as u64))
    }

    /// Up to `limit` log lines of a task after `after_seq`, oldest first.
    pub async fn logs(
        &self,
        id: Uuid,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<LogLine>, StoreError> {
        self.log_rows_after(id, after_seq, limit)
            .await?
            .iter()
            .map(log_from_row)
            .collect()
    }

    /// The rows (seq, ts, level, message) of up to `limit` log lines of a task after
    /// `after_seq`, oldest first.
    pub(super) async fn log_rows_after(
        &self,
        id: Uuid,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        let client = self.client().await?;
        let read = client
            .prepare_cached(
                "SELECT seq, ts, level, message FROM task_logs
                 WHERE task_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            )
            .await?;
        Ok(client
            .query(&read, &[&id, &after_seq, &i64::from(limit)])
            .await?)
    }

    /// The last `n` log lines of a task, oldest first.
    pub async fn last_logs(&self, id: Uuid, n: u32) -> Result<Vec<LogLine>, StoreError> {
        let client = self.client().await?;
        let read = client
            .prepare_cached(
                "SELECT * FROM (SELECT seq, ts, level, message FROM task_logs
                                WHERE task_id = $1 ORDER BY seq DESC LIMIT $2) l
                 ORDER BY seq",
            )
            .await?;
        client
            .query(&read, &[&id, &i64::from(n)])
            .await?
            .iter()
            .map(log_from_row)
            .collect()
    }

    /// Whether a task waits that a node on `host` serving `queues` could run (now or later:
    /// due at a later time, or waiting for its dependencies).
    pub async fn work_waits_for(&self, host: &str, queues: &[String]) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let read = client
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM tasks WHERE status = 'pending' AND NOT gated
                                AND queue = ANY($2) AND (host IS NULL OR host = $1))",
            )
            .await?;
        Ok(client
            .query_one(&read, &[&host, &queues])
            .await?
            .try_get(0)?)
    }

    /// How many tasks there are of each status.
    pub async fn count_by_status(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT status, count(*) FROM tasks GROUP BY status", &[])
            .await?;
        rows.iter()
            .map(|r| {
                let n: i64 = r.try_get(1)?;
                Ok((r.try_get(0)?, n.max(0) as u64))
            })
            .collect()
    }

    /// How many tasks are pending and running across the cluster.
    pub async fn hot_counts(&self) -> Result<(u64, u64), StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT count(*) FILTER (WHERE status = 'pending'),
                        count(*) FILTER (WHERE status = 'running')
                 FROM tasks WHERE status IN ('pending', 'running')",
                &[],
            )
            .await?;
        let (p, r): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
        Ok((p.max(0) as u64, r.max(0) as u64))
    }
}
