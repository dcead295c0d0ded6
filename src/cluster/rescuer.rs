//! The leader's chore: the running tasks of nodes the cluster gave up go back to pending (or
//! fail), as crash recovery would have done on their own engine.
//!
//! A round records each task's new state and the log lines that explain it. What a task's end
//! sets off beyond itself — its dependents, its workflow, its webhook — comes with the cluster's
//! settle path, which is not built yet.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::scheduler::interrupted::{self, Cause};
use crate::store::postgres::Postgres;
use crate::store::StoreError;

/// Tasks taken over per statement.
const BATCH: i64 = 100;

/// How often the rescuer tries for the leadership, and how often the leader looks for orphans:
/// a dead node's tasks run again at most this long after its lease expired.
pub fn period(lease: Duration) -> Duration {
    (lease / 3).max(Duration::from_millis(200))
}

/// One round: settles every orphaned running task (see `Postgres::rescue_orphans`). Returns
/// how many. Only the leader should call it; any node could, safely: each task is settled once,
/// in the transaction that locks it.
pub async fn rescue_round(db: &Postgres) -> Result<usize, StoreError> {
    let mut settled = 0;
    loop {
        let rescued = db
            .rescue_orphans(BATCH, |task, was_on, now| {
                let cause = Cause::NodeLost(was_on.unwrap_or("unknown"));
                interrupted::settle(task, cause, now, None)
            })
            .await?;
        if rescued.is_empty() {
            return Ok(settled);
        }
        for t in &rescued {
            tracing::warn!(task_id = %t.id, status = t.status.as_str(), "rescued a task of a node the cluster gave up");
        }
        settled += rescued.len();
    }
}

/// The background duty: tries for the leadership every period and, while it holds it, runs a
/// rescue round each time. Ends when `stop` fires.
pub async fn run(db: Postgres, me: String, lease: Duration, stop: CancellationToken) {
    let every = period(lease);
    loop {
        match db.elect(&me, lease).await {
            Ok(Some(_term)) => {
                if let Err(e) = rescue_round(&db).await {
                    tracing::warn!("rescuing the tasks of dead nodes failed ({e}); trying again");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("could not take part in the leader election: {e}"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
