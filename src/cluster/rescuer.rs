//! The leader's chore: the running tasks of nodes the cluster gave up go back to pending (or
//! fail), as crash recovery would have done on their own engine.
//!
//! A round records each task's new state and the log lines that explain it, and what a task
//! that failed for good sets off among its dependents (they are cancelled). Then the leader
//! takes the steps owed by workflows whose tasks ended after their last step.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::model::{Task, TaskStatus};
use crate::notifier::Notifier;
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
/// their new states. Only the leader should call it; any node could, safely: each task is settled once,
/// in the transaction that locks it.
///
/// `grace`: how long past its lease a node is given before it is given up (its own deadline
/// comes a little before the lease ends; the grace lets its processes be gone for sure).
pub async fn rescue_round(db: &Postgres, grace: Duration) -> Result<Vec<Task>, StoreError> {
    let mut settled = Vec::new();
    loop {
        let rescued = db
            .rescue_orphans(BATCH, grace, |task, was_on, cancel, now| {
                settle_orphan(task, was_on.unwrap_or("unknown"), cancel, now)
            })
            .await?;
        if rescued.is_empty() {
            return Ok(settled);
        }
        for t in &rescued {
            tracing::warn!(task_id = %t.id, status = t.status.as_str(), "rescued a task of a node the cluster gave up");
        }
        settled.extend(rescued);
    }
}

/// The next state of a task whose node was given up while it ran: as crash recovery decides,
/// unless a cancel was asked for and the node died before it could stop the task (its warden
/// did): then it is cancelled, as asked.
pub fn settle_orphan(
    task: &Task,
    was_on: &str,
    cancel_requested: bool,
    now: i64,
) -> (Task, Vec<(&'static str, String)>) {
    if !cancel_requested {
        return interrupted::settle(task, Cause::NodeLost(was_on), now, None);
    }
    let mut t = task.clone();
    t.status = TaskStatus::Cancelled;
    t.completed_us = Some(now);
    t.pid = None;
    t.pid_start = None;
    let why = format!(
        "cancelled by request; node {was_on} stopped answering before it had stopped the task"
    );
    t.error = Some(why.clone());
    (t, vec![("info", why)])
}

/// The background duty: tries for the leadership every period and, while it holds it, runs a
/// rescue round each time; the tasks a round ended (failed for good, or cancelled as asked) are
/// told to the notifier. Ends when `stop` fires.
pub async fn run(
    db: Postgres,
    me: String,
    lease: Duration,
    notifier: Arc<dyn Notifier>,
    stop: CancellationToken,
) {
    let every = period(lease);
    loop {
        match db.elect(&me, lease).await {
            Ok(Some(_term)) => match rescue_round(&db, every).await {
                Ok(settled) => {
                    for t in settled.iter().filter(|t| t.status.is_terminal()) {
                        crate::metrics::task_finished(t);
                        notifier.task_finished(t);
                    }
                    take_owed_steps(&db, &*notifier).await;
                }
                Err(e) => {
                    tracing::warn!("rescuing the tasks of dead nodes failed ({e}); trying again")
                }
            },
            Ok(None) => {}
            Err(e) => tracing::warn!("could not take part in the leader election: {e}"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Workflows running on with a task that ended after their last step (a rescued task, or an
/// end whose node stopped before taking the step): the step is taken now.
async fn take_owed_steps(db: &Postgres, notifier: &dyn Notifier) {
    match db.stale_workflows(BATCH).await {
        Ok(ids) => {
            for id in ids {
                super::workflows::advance(db, notifier, id).await;
            }
        }
        Err(e) => tracing::warn!("could not look for workflows owed a step ({e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_orphan_is_requeued_unless_its_cancel_was_asked_for() {
        let running = Task {
            status: TaskStatus::Running,
            attempt: 1,
            max_retries: 1,
            ..Task::sample_for_tests()
        };
        let (t, _) = settle_orphan(&running, "n1", false, 9);
        assert_eq!((t.status, t.attempt), (TaskStatus::Pending, 1));
        let (t, logs) = settle_orphan(&running, "n1", true, 9);
        assert_eq!(t.status, TaskStatus::Cancelled);
        assert_eq!(t.completed_us, Some(9));
        assert!(logs[0].1.contains("node n1 stopped answering"));
    }
}
