//! Nodes, their leases, and the cluster's leader.
//!
//! A node is alive while its lease has not expired by the database's clock. It renews the lease
//! with each heartbeat; a heartbeat that finds it expired tells the node it has been given up
//! (its tasks may already be running elsewhere), and the node must stop its attempts — their
//! outcomes would be refused anyway (fencing, `claim.rs`). The leader is a lease too, on one row:
//! its holder renews it, anyone may take it once it has expired, and each new holder gets a
//! higher term.

use std::time::Duration;

use super::rows::{task_from_row, TASK_COLUMNS};
use super::Postgres;
use crate::model::Task;
use crate::store::StoreError;

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
    /// Renewed: the node is alive to the others for this long from now.
    Held(Duration),
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
            Lease::Held(lease)
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

    /// Gives `rescuer` the running tasks of nodes whose lease has expired (at most `limit`),
    /// and returns them, still `running`, each with the node it was taken from: the rescuer then
    /// records their outcome as crash recovery decides (pending again with the attempt counted,
    /// or failed). From here on the dead node can record nothing for them, should it come back.
    pub async fn take_over_orphans(
        &self,
        rescuer: &str,
        limit: i64,
    ) -> Result<Vec<(Task, Option<String>)>, StoreError> {
        let sql = format!(
            "WITH orphans AS (
                 SELECT o.task_id, o.node_id AS was_on FROM tasks o
                 WHERE o.status = 'running'
                   AND NOT EXISTS (SELECT 1 FROM nodes n
                                   WHERE n.node_id = o.node_id AND n.expires_at > now())
                 ORDER BY o.started_at
                 LIMIT $2
                 FOR UPDATE OF o SKIP LOCKED
             )
             UPDATE tasks t SET node_id = $1, pid = NULL, pid_start = NULL, updated_at = now()
             FROM orphans WHERE t.task_id = orphans.task_id
             RETURNING {TASK_COLUMNS}, orphans.was_on"
        );
        let rows = self
            .client()
            .await?
            .query(&sql, &[&rescuer, &limit])
            .await?;
        rows.iter()
            .map(|r| Ok((task_from_row(r)?, r.try_get(30)?)))
            .collect()
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
