//! Tasks in, tasks claimed, outcomes recorded: the set-based core of a cluster node.
//!
//! - **Insert many** in one statement; a task whose idempotency key another task holds is not
//!   inserted, and the holder is named. A new task counts its dependencies that have not
//!   completed, reading them under a share lock, so a dependency finishing at the same moment
//!   either sees the new dependent or is seen completed by it — never neither.
//! - **Claim up to N** ready tasks: highest priority first, oldest first, from the queues the
//!   node serves and not bound to another host — only while the node's lease holds, and for a
//!   workflow's task only while its workflow runs and none of its tasks has failed (the step
//!   that fails it may not be taken yet) —, with `FOR UPDATE SKIP LOCKED` in a CTE so
//!   claimers never wait on each other's rows. An agent's `max_concurrency` and a workflow's
//!   `max_parallel` count the tasks running on every node: claims take one advisory lock for
//!   the moment they count and claim, so two nodes never both see the last free slot.
//!
//! What an ended attempt changes is in `settle.rs`.

use std::sync::LazyLock;

use serde_json::Value;
use uuid::Uuid;

use super::rows::{id_and_status, new_task_json, task_from_row, TASK_COLUMNS};
use super::Postgres;
use crate::model::{Task, TaskStatus};
use crate::store::{OpOutcome, StoreError};

/// The advisory lock of claiming ("o8claim!" read as a number).
const CLAIM_LOCK: i64 = 0x6f38_636c_6169_6d21;

/// How long a claim waits for the claim lock, and how long a claimer may stall holding it.
const CLAIM_STALL: &str = "30s";

/// How many candidates a claim of N looks at: room to skip tasks whose agent or workflow is at
/// its limit without reading the whole queue.
const SCAN_FACTOR: i64 = 4;

/// The claim (see the module's doc); built once, prepared once per connection.
static CLAIM_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH running_agents AS (
                 SELECT agent_name, count(*) AS n FROM tasks
                 WHERE status = 'running' GROUP BY agent_name
             ),
             running_workflows AS (
                 SELECT workflow_id, count(*) AS n FROM tasks
                 WHERE status = 'running' AND workflow_id IS NOT NULL GROUP BY workflow_id
             ),
             candidates AS (
                 SELECT c.task_id, c.agent_name, c.workflow_id, c.priority, c.created_at,
                        c.max_concurrency
                 FROM tasks c
                 WHERE c.status = 'pending' AND c.deps_open = 0 AND NOT c.gated
                   AND c.scheduled_at <= now()
                   AND EXISTS (SELECT 1 FROM nodes n WHERE n.node_id = $1
                               AND n.stopped_at IS NULL AND n.expires_at > now())
                   AND c.queue = ANY($3) AND (c.host IS NULL OR c.host = $2)
                   AND (c.max_concurrency IS NULL OR c.max_concurrency >
                        coalesce((SELECT n FROM running_agents r
                                  WHERE r.agent_name = c.agent_name), 0))
                   AND (c.workflow_id IS NULL OR NOT EXISTS (
                        SELECT 1 FROM workflows w
                        WHERE w.workflow_id = c.workflow_id AND w.max_parallel IS NOT NULL
                          AND w.max_parallel <= coalesce((SELECT n FROM running_workflows rw
                                                 WHERE rw.workflow_id = c.workflow_id), 0)))
                   AND (c.workflow_id IS NULL OR (
                        EXISTS (SELECT 1 FROM workflows w WHERE w.workflow_id = c.workflow_id
                                AND w.status = 'running')
                        AND NOT EXISTS (SELECT 1 FROM tasks f
                                        WHERE f.workflow_id = c.workflow_id
                                          AND f.status IN ('failed', 'cancelled'))))
                 ORDER BY c.priority DESC, c.created_at, c.task_id
                 LIMIT $5
                 FOR UPDATE OF c SKIP LOCKED
             ),
             ranked AS (
                 SELECT c.*,
                        row_number() OVER (PARTITION BY c.agent_name
                            ORDER BY c.priority DESC, c.created_at, c.task_id) AS agent_rank,
                        row_number() OVER (PARTITION BY c.workflow_id
                            ORDER BY c.priority DESC, c.created_at, c.task_id) AS workflow_rank
                 FROM candidates c
             ),
             picked AS (
                 SELECT r.task_id FROM ranked r
                 LEFT JOIN running_agents ra ON ra.agent_name = r.agent_name
                 LEFT JOIN running_workflows rw ON rw.workflow_id = r.workflow_id
                 LEFT JOIN workflows w ON w.workflow_id = r.workflow_id
                 WHERE (r.max_concurrency IS NULL
                        OR coalesce(ra.n, 0) + r.agent_rank <= r.max_concurrency)
                   AND (w.max_parallel IS NULL
                        OR coalesce(rw.n, 0) + r.workflow_rank <= w.max_parallel)
                 ORDER BY r.priority DESC, r.created_at, r.task_id
                 LIMIT $4
             )
             UPDATE tasks t SET status = 'running', attempt = t.attempt + 1, node_id = $1,
                 started_at = statement_timestamp(), completed_at = NULL, result = NULL, error = NULL,
                 pid = NULL, pid_start = NULL, updated_at = clock_timestamp()
             FROM picked WHERE t.task_id = picked.task_id
             RETURNING {TASK_COLUMNS}, t.instructions"
    )
});

static TASK_SQL: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {TASK_COLUMNS}, t.node_id FROM tasks t WHERE t.task_id = $1"));

/// A task to insert, with where it may run.
#[derive(Debug, Clone)]
pub struct NewClusterTask {
    pub task: Task,
    pub instructions: String,
    pub queue: String,
    /// Only nodes on this host may run it (`None`: any node serving its queue).
    pub host: Option<String>,
    /// Its agent's `max_concurrency`, held across the cluster.
    pub max_concurrency: Option<u32>,
}

/// What a node asks for when it has free workers.
#[derive(Debug, Clone)]
pub struct ClaimRequest<'a> {
    pub node_id: &'a str,
    pub host: &'a str,
    pub queues: &'a [String],
    pub limit: u32,
}

/// How many of `deps` are not completed, given the status of those that exist (a dependency
/// that no longer exists was removed by retention after it finished, so it counts as
/// completed).
pub fn open_dependencies(deps: &[Uuid], found: &[(Uuid, TaskStatus)]) -> i32 {
    deps.iter()
        .filter(|d| {
            found
                .iter()
                .any(|(id, st)| id == *d && *st != TaskStatus::Completed)
        })
        .count() as i32
}

impl Postgres {
    /// Inserts tasks in one transaction. Each gets `Done`, or `Existing(holder)` when its
    /// idempotency key belongs to another task or the task itself is there already (a submit
    /// repeated after a lost answer); then nothing of it is written.
    pub async fn insert_tasks(
        &self,
        tasks: &[NewClusterTask],
    ) -> Result<Vec<OpOutcome>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let outcomes = insert_in(&tx, tasks).await?;
        tx.commit().await?;
        Ok(outcomes)
    }

    /// Claims up to `req.limit` ready tasks for `req.node_id`: each is `running` with its
    /// attempt counted, owned by the node, returned with its instructions, in claim order.
    pub async fn claim(&self, req: &ClaimRequest<'_>) -> Result<Vec<(Task, String)>, StoreError> {
        if req.limit == 0 || req.queues.is_empty() {
            return Ok(Vec::new());
        }
        let limit = i64::from(req.limit);
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Its own statement, so that the claim's snapshot, taken after it, sees every claim
        // committed before this one. A claimer stalled while holding the lock loses its
        // transaction (and the lock) after a while, rather than stopping every node's claims.
        tx.batch_execute(&format!(
            "SET LOCAL idle_in_transaction_session_timeout = '{CLAIM_STALL}';
             SET LOCAL lock_timeout = '{CLAIM_STALL}';
             SELECT pg_advisory_xact_lock({CLAIM_LOCK})"
        ))
        .await?;
        let claim = tx.prepare_cached(&CLAIM_SQL).await?;
        let rows = tx
            .query(
                &claim,
                &[
                    &req.node_id,
                    &req.host,
                    &req.queues,
                    &limit,
                    &(limit * SCAN_FACTOR),
                ],
            )
            .await?;
        tx.commit().await?;
        let mut claimed = rows
            .iter()
            .map(|r| Ok((task_from_row(r)?, r.try_get::<_, String>(30)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        claimed.sort_by_key(|(t, _)| (std::cmp::Reverse(t.priority.rank()), t.created_us, t.id));
        Ok(claimed)
    }

    /// A task as stored now, with where it runs.
    pub async fn task(&self, id: Uuid) -> Result<Option<(Task, Option<String>)>, StoreError> {
        let client = self.client().await?;
        let read = client.prepare_cached(&TASK_SQL).await?;
        let row = client.query_opt(&read, &[&id]).await?;
        row.map(|r| Ok((task_from_row(&r)?, r.try_get(30)?)))
            .transpose()
    }
}

/// Inserts tasks inside `tx` (see [`Postgres::insert_tasks`]).
pub(super) async fn insert_in(
    tx: &deadpool_postgres::Transaction<'_>,
    tasks: &[NewClusterTask],
) -> Result<Vec<OpOutcome>, StoreError> {
    let all_deps: Vec<Uuid> = tasks
        .iter()
        .flat_map(|t| t.task.dependencies.iter().copied())
        .collect();
    let found: Vec<(Uuid, TaskStatus)> = if all_deps.is_empty() {
        Vec::new()
    } else {
        let lock = tx
            .prepare_cached("SELECT task_id, status FROM tasks WHERE task_id = ANY($1) FOR SHARE")
            .await?;
        tx.query(&lock, &[&all_deps])
            .await?
            .iter()
            .map(id_and_status)
            .collect::<Result<_, StoreError>>()?
    };
    // Checked under the share lock: a dependency that failed or was cancelled has already
    // cancelled its dependents, so a new one would wait for ever.
    if let Some((id, st)) = found
        .iter()
        .find(|(_, st)| matches!(st, TaskStatus::Failed | TaskStatus::Cancelled))
    {
        return Err(StoreError::Conflict(format!(
                "dependencies: task {id} is {}, so this task could never start; task_retry it first or leave it out",
                st.as_str()
            )));
    }
    // A dependency in the same batch is as new as its dependent: not completed.
    let found: Vec<(Uuid, TaskStatus)> = found
        .into_iter()
        .chain(tasks.iter().map(|n| (n.task.id, n.task.status)))
        .collect();
    let rows: Vec<Value> = tasks
        .iter()
        .map(|n| {
            new_task_json(
                &n.task,
                &n.instructions,
                &n.queue,
                n.host.as_deref(),
                n.max_concurrency,
                open_dependencies(&n.task.dependencies, &found),
            )
        })
        .collect();
    let insert = tx
        .prepare_cached(
            "INSERT INTO tasks
                 SELECT r.* FROM jsonb_array_elements($1) AS e(v),
                      LATERAL jsonb_populate_record(NULL::tasks,
                                  e.v || jsonb_build_object('updated_at', clock_timestamp())) AS r
                 ON CONFLICT DO NOTHING
                 RETURNING task_id",
        )
        .await?;
    let inserted: Vec<Uuid> = tx
        .query(&insert, &[&Value::Array(rows)])
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
    // Not inserted: its key belongs to another task, or the task itself exists already (a
    // submit repeated after an answer that was lost).
    let refused: Vec<&NewClusterTask> = tasks
        .iter()
        .filter(|n| !inserted.contains(&n.task.id))
        .collect();
    let refused_keys: Vec<&str> = refused
        .iter()
        .filter_map(|n| n.task.idempotency_key.as_deref())
        .collect();
    let refused_ids: Vec<Uuid> = refused.iter().map(|n| n.task.id).collect();
    let holders: Vec<(Option<String>, Uuid)> = if refused.is_empty() {
        Vec::new()
    } else {
        tx.query(
            "SELECT idempotency_key, task_id FROM tasks
                 WHERE idempotency_key = ANY($1) OR task_id = ANY($2)",
            &[&refused_keys, &refused_ids],
        )
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<_, StoreError>>()?
    };
    let edges: Vec<(Uuid, Uuid)> = tasks
        .iter()
        .filter(|n| inserted.contains(&n.task.id))
        .flat_map(|n| n.task.dependencies.iter().map(move |d| (n.task.id, *d)))
        .collect();
    if !edges.is_empty() {
        let (from, to): (Vec<Uuid>, Vec<Uuid>) = edges.into_iter().unzip();
        tx.execute(
            "INSERT INTO task_dependencies (task_id, depends_on)
                 SELECT * FROM unnest($1::uuid[], $2::uuid[]) ON CONFLICT DO NOTHING",
            &[&from, &to],
        )
        .await?;
    }
    if !inserted.is_empty() {
        super::notify::notify_ready(tx).await?;
    }
    tasks
        .iter()
        .map(|n| {
            if inserted.contains(&n.task.id) {
                return Ok(OpOutcome::Done);
            }
            let key = n.task.idempotency_key.as_deref();
            holders
                .iter()
                .find(|(k, _)| key.is_some() && k.as_deref() == key)
                .or_else(|| holders.iter().find(|(_, id)| *id == n.task.id))
                .map(|(_, holder)| OpOutcome::Existing(*holder))
                .ok_or_else(|| {
                    StoreError::Conflict(format!(
                        "task {} was not inserted, and neither it nor a holder of its key \
                             is there now; submit it again",
                        n.task.id
                    ))
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_existing_unfinished_dependencies_are_open() {
        let (a, b, c, gone) = (
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
        );
        let found = [
            (a, TaskStatus::Completed),
            (b, TaskStatus::Running),
            (c, TaskStatus::Pending),
        ];
        assert_eq!(open_dependencies(&[a, b, c, gone], &found), 2);
        assert_eq!(open_dependencies(&[a, gone], &found), 0);
        assert_eq!(open_dependencies(&[], &found), 0);
    }
}
