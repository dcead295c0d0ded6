//! What changed in the cluster's database lately, for the live feed of an open dashboard page
//! on any node.
//!
//! Every write to a task or a workflow sets its `updated_at` (the database's clock as it writes,
//! `clock_timestamp()`, so after any lock it waited for), and every delivery attempt its
//! `delivered_at`, so the rows changed since a moment are a range of an index. A transaction
//! commits a little after it wrote, so the feed looks back over a window of a few seconds and
//! tells each change once (`cluster::changes`).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::rows::{time, us};
use super::Postgres;
use crate::model::{log_level, NewLogLine, TaskStatus};
use crate::store::StoreError;

/// A task as it is now, with when it last changed.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskChange {
    pub id: Uuid,
    pub workflow: Option<Uuid>,
    pub status: TaskStatus,
    pub at_us: i64,
}

/// A webhook delivery attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryChange {
    pub event_id: String,
    pub attempt: u32,
    pub task: Option<Uuid>,
    pub workflow: Option<Uuid>,
    pub at_us: i64,
}

/// The rows changed after a moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    /// The database's clock when they were read.
    pub now_us: i64,
    pub tasks: Vec<TaskChange>,
    /// Workflows, with when each last changed.
    pub workflows: Vec<(Uuid, i64)>,
    pub deliveries: Vec<DeliveryChange>,
    /// More rows changed than were read (the latest ones were).
    pub cut: bool,
}

impl Postgres {
    /// The tasks, workflows and delivery attempts changed after `since_us` (`None`: after
    /// `look_back_us` before now), at most `limit` of each, the latest.
    pub async fn changes_since(
        &self,
        since_us: Option<i64>,
        look_back_us: i64,
        limit: u32,
    ) -> Result<Changes, StoreError> {
        let client = self.client().await?;
        let now: DateTime<Utc> = client.query_one("SELECT now()", &[]).await?.try_get(0)?;
        let since = time(since_us.unwrap_or(us(now) - look_back_us));
        let limit = i64::from(limit);
        let mut c = Changes {
            now_us: us(now),
            ..Changes::default()
        };
        let read = client
            .prepare_cached(
                "SELECT task_id, workflow_id, status, updated_at FROM tasks
                 WHERE updated_at > $1 ORDER BY updated_at DESC LIMIT $2",
            )
            .await?;
        for r in client.query(&read, &[&since, &limit]).await? {
            let st: String = r.try_get(2)?;
            let status = TaskStatus::parse(&st).ok_or_else(|| {
                StoreError::Corrupt(format!("a stored task's status {st:?} cannot be read"))
            })?;
            c.tasks.push(TaskChange {
                id: r.try_get(0)?,
                workflow: r.try_get(1)?,
                status,
                at_us: us(r.try_get(3)?),
            });
        }
        let read = client
            .prepare_cached(
                "SELECT workflow_id, updated_at FROM workflows
                 WHERE updated_at > $1 ORDER BY updated_at DESC LIMIT $2",
            )
            .await?;
        for r in client.query(&read, &[&since, &limit]).await? {
            c.workflows.push((r.try_get(0)?, us(r.try_get(1)?)));
        }
        let read = client
            .prepare_cached(
                "SELECT event_id, attempt, task_id, workflow_id, delivered_at
                 FROM webhook_deliveries
                 WHERE delivered_at > $1 ORDER BY delivered_at DESC LIMIT $2",
            )
            .await?;
        for r in client.query(&read, &[&since, &limit]).await? {
            c.deliveries.push(DeliveryChange {
                event_id: r.try_get(0)?,
                attempt: r.try_get::<_, i32>(1)?.max(0) as u32,
                task: r.try_get(2)?,
                workflow: r.try_get(3)?,
                at_us: us(r.try_get(4)?),
            });
        }
        let limit = limit as usize;
        c.cut = c.tasks.len() >= limit || c.workflows.len() >= limit || c.deliveries.len() >= limit;
        Ok(c)
    }

    /// The last line number of a task written more than `ago_us` before now (0: none): where a
    /// new follower of its lines starts, so that the lines of the last moments reach it even
    /// if its page read the log a moment before.
    pub async fn log_seq_before(&self, task: Uuid, ago_us: i64) -> Result<i64, StoreError> {
        let client = self.client().await?;
        let read = client
            .prepare_cached(
                "SELECT coalesce(max(seq), 0) FROM task_logs
                 WHERE task_id = $1 AND ts < now() - make_interval(secs => $2)",
            )
            .await?;
        let secs = ago_us as f64 / 1e6;
        Ok(client.query_one(&read, &[&task, &secs]).await?.try_get(0)?)
    }

    /// Up to `limit` log lines of a task after `after_seq`, oldest first, as the feed carries
    /// them.
    pub async fn log_lines_after(
        &self,
        task: Uuid,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<NewLogLine>, StoreError> {
        self.log_rows_after(task, after_seq, limit)
            .await?
            .iter()
            .map(|r| {
                let level: String = r.try_get(2)?;
                Ok(NewLogLine {
                    task_id: task,
                    seq: r.try_get(0)?,
                    ts_us: us(r.try_get(1)?),
                    level: log_level(&level),
                    message: r.try_get(3)?,
                })
            })
            .collect()
    }
}
