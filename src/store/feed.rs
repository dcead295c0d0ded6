//! The change feed: what every answered write changed, for whoever watches (the dashboard's
//! live pages).
//!
//! The journal thread publishes after a group is durable, so a watcher that reads the store on
//! an event sees the change (the scheduler's memory follows a moment later). The feed is a bounded broadcast: a watcher that falls behind is told it
//! lagged (and reloads what it shows) instead of holding the engine's memory, and with nobody
//! watching nothing is built at all. Log lines are published only for the tasks somebody
//! follows ([`Feed::follow_lines`]): the feed then carries a state change per task, not every
//! line of every agent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;
use uuid::Uuid;

use super::WriteOp;
use crate::model::{NewLogLine, TaskStatus};

/// Events a watcher may be behind before it is told it lagged.
const CAPACITY: usize = 1024;

/// One change, as small as a watcher needs to decide whether to look again.
#[derive(Debug, Clone)]
pub enum Change {
    /// A task was created or changed state.
    Task {
        id: Uuid,
        workflow: Option<Uuid>,
        status: TaskStatus,
    },
    /// A workflow, or one of its phases, changed.
    Workflow { id: Uuid },
    /// Log lines of one task, in order.
    Logs(Arc<Vec<NewLogLine>>),
    /// A webhook delivery attempt was recorded.
    Delivery {
        task: Option<Uuid>,
        workflow: Option<Uuid>,
    },
    /// More changed than the feed names (a burst on a cluster): whoever watches looks again at
    /// everything it shows.
    More,
}

#[derive(Clone)]
pub struct Feed {
    tx: broadcast::Sender<Change>,
    /// Tasks whose lines somebody follows, with how many followers.
    lines_of: Arc<Mutex<HashMap<Uuid, usize>>>,
}

impl Default for Feed {
    fn default() -> Self {
        Feed {
            tx: broadcast::channel(CAPACITY).0,
            lines_of: Arc::default(),
        }
    }
}

/// Following one task's log lines, for as long as it lives.
pub struct Following {
    feed: Feed,
    task: Uuid,
}

impl Drop for Following {
    fn drop(&mut self) {
        let mut m = self.feed.lines();
        if let Some(n) = m.get_mut(&self.task) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.task);
            }
        }
    }
}

impl Feed {
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.tx.subscribe()
    }

    fn lines(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, usize>> {
        self.lines_of.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes `task`'s log lines too, until the answer is dropped.
    pub fn follow_lines(&self, task: Uuid) -> Following {
        *self.lines().entry(task).or_default() += 1;
        Following {
            feed: self.clone(),
            task,
        }
    }

    /// The tasks whose lines somebody follows now.
    pub fn followed(&self) -> Vec<Uuid> {
        self.lines().keys().copied().collect()
    }

    /// Whether anybody watches (the journal thread builds nothing otherwise).
    pub fn watched(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    /// What `op` changed, as watchers are told.
    pub fn changes_of(&self, op: &WriteOp) -> Vec<Change> {
        if matches!(op, WriteOp::AppendLogs(_)) {
            let followed = self.lines();
            if followed.is_empty() {
                return Vec::new();
            }
            return changes_of(op, |t| followed.contains_key(&t));
        }
        changes_of(op, |_| false)
    }

    /// Publishes changes, in order.
    pub fn publish(&self, changes: Vec<Change>) {
        for c in changes {
            // Nobody may be left: that is fine.
            let _ = self.tx.send(c);
        }
    }
}

/// What one op changed; log lines only of the tasks `followed` names, grouped by task, in order.
fn changes_of(op: &WriteOp, followed: impl Fn(Uuid) -> bool) -> Vec<Change> {
    match op {
        WriteOp::InsertTask { task, .. } | WriteOp::UpdateTask(task) => vec![Change::Task {
            id: task.id,
            workflow: task.workflow_id,
            status: task.status,
        }],
        WriteOp::AppendLogs(lines) => {
            let mut out: Vec<Vec<NewLogLine>> = Vec::new();
            for l in lines.iter().filter(|l| followed(l.task_id)) {
                match out.last_mut() {
                    Some(run) if run[0].task_id == l.task_id => run.push(l.clone()),
                    _ => out.push(vec![l.clone()]),
                }
            }
            out.into_iter()
                .map(|run| Change::Logs(Arc::new(run)))
                .collect()
        }
        WriteOp::InsertWorkflow(w) | WriteOp::UpdateWorkflow(w) => {
            vec![Change::Workflow { id: w.id }]
        }
        WriteOp::UpsertPhase(p) => vec![Change::Workflow { id: p.workflow_id }],
        WriteOp::InsertWebhookEvent(_) | WriteOp::Prune(_) => Vec::new(),
        WriteOp::RecordWebhookAttempt(b) => vec![Change::Delivery {
            task: b.1.task_id,
            workflow: b.1.workflow_id,
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(task: Uuid, seq: i64) -> NewLogLine {
        NewLogLine {
            task_id: task,
            seq,
            ts_us: 0,
            level: "info",
            message: format!("line {seq}"),
        }
    }

    #[test]
    fn log_lines_are_grouped_by_task_in_order() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let op = WriteOp::AppendLogs(vec![line(a, 1), line(a, 2), line(b, 1), line(a, 3)]);
        let runs: Vec<Vec<(Uuid, i64)>> = changes_of(&op, |_| true)
            .into_iter()
            .map(|c| match c {
                Change::Logs(l) => l.iter().map(|l| (l.task_id, l.seq)).collect(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(runs, vec![vec![(a, 1), (a, 2)], vec![(b, 1)], vec![(a, 3)]]);
    }

    #[test]
    fn only_followed_tasks_lines_are_published() {
        let feed = Feed::default();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let op = WriteOp::AppendLogs(vec![line(a, 1), line(b, 1)]);
        assert!(feed.changes_of(&op).is_empty());
        let f1 = feed.follow_lines(a);
        let f2 = feed.follow_lines(a);
        assert_eq!(feed.changes_of(&op).len(), 1);
        drop(f1);
        assert_eq!(feed.changes_of(&op).len(), 1, "still followed once");
        drop(f2);
        assert!(feed.changes_of(&op).is_empty());
    }

    #[tokio::test]
    async fn a_watcher_that_falls_behind_is_told_it_lagged() {
        let feed = Feed::default();
        assert!(!feed.watched());
        let mut rx = feed.subscribe();
        assert!(feed.watched());
        let t = Uuid::now_v7();
        let _following = feed.follow_lines(t);
        let changes = (0..CAPACITY as i64 + 10)
            .flat_map(|i| feed.changes_of(&WriteOp::AppendLogs(vec![line(t, i)])))
            .collect();
        feed.publish(changes);
        assert!(matches!(
            rx.recv().await,
            Err(broadcast::error::RecvError::Lagged(10))
        ));
    }
}
