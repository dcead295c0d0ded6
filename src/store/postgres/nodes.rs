//! Nodes, their leases, and the cluster's leader.
//!
//! A node is alive while its lease has not expired by the database's clock. It renews the lease
//! with each heartbeat; a heartbeat that finds it expired (or its node given up) tells the node
//! its tasks may already be running elsewhere, and it must stop its attempts — once its tasks
//! are rescued, their outcomes are refused (fencing, `claim.rs`). The leader is a lease too, on one row:
//! its holder renews it, anyone may take it once it has expired, and each new holder gets a
//! higher term.

use std::time::Duration;

use super::logs::{append_in, LogEntry};
use super::rows::{task_from_row, task_state_json, us, TASK_COLUMNS};
use super::settle::{settle_ended, Settled};
use super::Postgres;
use crate::model::{Task, TaskStatus};
use crate::store::StoreError;

/// Writes outcomes (`$1`: their rows as JSON) where the task is still `running` the attempt
/// that ended; callers add what else fences it.
const RECORD_OUTCOMES: &str = "UPDATE tasks t SET status = o.status,
        scheduled_at = o.scheduled_at, started_at = o.started_at, completed_at = o.completed_at,
        retry_floor = o.retry_floor, metadata = o.metadata, result = o.result, error = o.error,
        input_tokens = o.input_tokens, output_tokens = o.output_tokens, cost_usd = o.cost_usd,
        workspace = o.workspace, pid = NULL, pid_start = NULL, cancel_requested = false,
        step_owed = t.workflow_id IS NOT NULL
            AND o.status IN ('completed', 'failed', 'cancelled'),
        updated_at = clock_timestamp()
    FROM jsonb_populate_recordset(NULL::tasks, $1) AS o
    WHERE t.task_id = o.task_id AND t.status = 'running' AND t.attempt = o.attempt";

/// What a node tells the others about itself.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// Unique to this engine process; a restarted engine is a new node.
    pub node_id: String,
    /// The machine it runs on: tasks bound to a host (their files are there) run only on its
    /// nodes.
    pub host: String,
    pub pid: u32,
    pub version: String,
    /// The queues it takes tasks from.
    pub queues: Vec<String>,
}

/// What a heartbeat found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// Renewed: the node is alive to the others for the lease asked for, from now.
    Held,
    /// Expired before it was renewed (or the node left): the cluster has given the node up.
    Lost,
}

/// The one row of the leadership table (several roles could be elected the same way).
const LEADER: &str = "leader";

fn interval(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl Postgres {
    /// Enters the node into the cluster with a fresh lease.
    pub async fn join(&self, node: &NodeInfo, lease: Duration) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO nodes (node_id, host, pid, version, queues, expires_at)
                 VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6))
                 ON CONFLICT (node_id) DO UPDATE SET
                     host = EXCLUDED.host, pid = EXCLUDED.pid, version = EXCLUDED.version,
                     queues = EXCLUDED.queues, heartbeat_at = now(),
                     expires_at = EXCLUDED.expires_at, stopped_at = NULL",
                &[
                    &node.node_id,
                    &node.host,
                    &(node.pid as i32),
                    &node.version,
                    &node.queues,
                    &interval(lease),
                ],
            )
            .await?;
        Ok(())
    }

    /// Renews the node's lease, unless it has already expired.
    pub async fn heartbeat(&self, node_id: &str, lease: Duration) -> Result<Lease, StoreError> {
        let renewed = self
            .client()
            .await?
            .execute(
                "UPDATE nodes SET heartbeat_at = now(),
                     expires_at = now() + make_interval(secs => $2)
                 WHERE node_id = $1 AND expires_at > now() AND stopped_at IS NULL",
                &[&node_id, &interval(lease)],
            )
            .await?;
        Ok(if renewed == 1 {
            Lease::Held
        } else {
            Lease::Lost
        })
    }

    /// Leaves the cluster at once: the node's lease ends now, and so does its leadership.
    pub async fn leave(&self, node_id: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE nodes SET stopped_at = now(), expires_at = now() WHERE node_id = $1",
                &[&node_id],
            )
            .await?;
        client
            .execute(
                "UPDATE leadership SET expires_at = now() WHERE name = $1 AND node_id = $2",
                &[&LEADER, &node_id],
            )
            .await?;
        // Webhook claims it still holds were never attempted: any node may take them now.
        client
            .execute(
                "UPDATE webhook_events SET claimed_by = NULL, claimed_until = NULL
                 WHERE claimed_by = $1",
                &[&node_id],
            )
            .await?;
        Ok(())
    }

    /// Takes or renews the leadership for `lease`: the term held when this node is (still or
    /// now) the leader, `None` while another node's lease runs.
    pub async fn elect(&self, node_id: &str, lease: Duration) -> Result<Option<i64>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "INSERT INTO leadership AS l (name, node_id, term, elected_at, expires_at)
                 VALUES ($1, $2, 1, now(), now() + make_interval(secs => $3))
                 ON CONFLICT (name) DO UPDATE SET
                     node_id = EXCLUDED.node_id,
                     term = CASE WHEN l.node_id = EXCLUDED.node_id AND l.expires_at > now()
                                 THEN l.term ELSE l.term + 1 END,
                     elected_at = CASE WHEN l.node_id = EXCLUDED.node_id AND l.expires_at > now()
                                       THEN l.elected_at ELSE now() END,
                     expires_at = EXCLUDED.expires_at
                 WHERE l.node_id = EXCLUDED.node_id OR l.expires_at <= now()
                 RETURNING term",
                &[&LEADER, &node_id, &interval(lease)],
            )
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Settles up to `limit` running tasks of nodes the cluster has given up, in one
    /// transaction: `decide` turns each (with the node it ran on, whether a cancel was asked for,
    /// and the database's time) into its next state and the log lines that explain it, and both are written before the task is
    /// let go. Returns the new states. From here on the given-up node can record nothing for
    /// these tasks, should it come back: they are no longer `running` its attempt.
    ///
    /// Nodes whose lease has expired are marked given up first, in the same transaction: a
    /// heartbeat racing this either renewed the lease before (and its node keeps its tasks) or
    /// finds its node given up.
    pub async fn rescue_orphans<F>(
        &self,
        limit: i64,
        grace: Duration,
        decide: F,
    ) -> Result<Vec<Task>, StoreError>
    where
        F: Fn(&Task, Option<&str>, bool, i64) -> (Task, Vec<(&'static str, String)>),
    {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // A node whose lease ran out gives itself up a little before; the grace is on top, for
        // its processes to be gone before its tasks run elsewhere.
        tx.execute(
            "UPDATE nodes SET stopped_at = now()
             WHERE stopped_at IS NULL AND expires_at <= now() - make_interval(secs => $1)",
            &[&interval(grace)],
        )
        .await?;
        let sql = format!(
            "SELECT {TASK_COLUMNS}, t.node_id, now(), t.cancel_requested FROM tasks t
             WHERE t.status = 'running'
               AND NOT EXISTS (SELECT 1 FROM nodes n WHERE n.node_id = t.node_id
                               AND n.stopped_at IS NULL)
             ORDER BY t.started_at
             LIMIT $1
             FOR UPDATE OF t SKIP LOCKED"
        );
        let rows = tx.query(&sql, &[&limit]).await?;
        let mut outcomes = Vec::with_capacity(rows.len());
        let mut lines = Vec::new();
        for r in &rows {
            let task = task_from_row(r)?;
            let was_on: Option<String> = r.try_get(30)?;
            let now = us(r.try_get(31)?);
            let cancel: bool = r.try_get(32)?;
            let (next, why) = decide(&task, was_on.as_deref(), cancel, now);
            lines.extend(why.into_iter().map(|(level, message)| LogEntry {
                task_id: task.id,
                level,
                message,
            }));
            outcomes.push(next);
        }
        if !outcomes.is_empty() {
            let json: Vec<serde_json::Value> = outcomes.iter().map(task_state_json).collect();
            tx.execute(RECORD_OUTCOMES, &[&serde_json::Value::Array(json)])
                .await?;
            let ended: Vec<Settled> = outcomes
                .iter()
                .filter(|t| t.status.is_terminal())
                .map(Settled::of)
                .collect();
            lines.extend(settle_ended(&tx, &ended).await?);
            append_in(&tx, &lines).await?;
            if outcomes.iter().any(|t| t.status == TaskStatus::Pending) {
                super::notify::notify_ready(&tx).await?;
            }
        }
        tx.commit().await?;
        Ok(outcomes)
    }

    /// The nodes alive now (their lease unexpired), oldest first.
    pub async fn live_nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT node_id, host, pid, version, queues FROM nodes
                 WHERE expires_at > now() ORDER BY started_at, node_id",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(NodeInfo {
                    node_id: r.try_get(0)?,
                    host: r.try_get(1)?,
                    pid: r.try_get::<_, i32>(2)?.max(0) as u32,
                    version: r.try_get(3)?,
                    queues: r.try_get(4)?,
                })
            })
            .collect()
    }
}
