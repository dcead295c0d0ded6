//! The change feed of a cluster node: what the dashboard's live pages follow, whichever node
//! made the change.
//!
//! The single engine publishes each write as it makes it; a node sees only its own writes, so
//! while somebody watches (an open page's event stream) the [`ChangePoller`] reads what changed
//! in the database every [`POLL`] and publishes it on the node's [`Feed`] — the same feed, with
//! the same events, as the single engine's. Nobody watching, it reads nothing.
//!
//! A row's `updated_at` is when its transaction wrote it, and that commits a moment later, so
//! each look reaches [`LOOK_BACK`] before the previous one; [`Told`] (pure) remembers what it told over
//! that window, so each change is told once. A change whose transaction took longer than the
//! window to commit after writing it is not told (the page shows it at its next reload); a
//! burst beyond what one look reads is told as `More` (the page looks again at everything).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::model::TaskStatus;
use crate::store::feed::{Change, Feed};
use crate::store::postgres::{Changes, Postgres};

/// How often a watched node reads what changed.
pub const POLL: Duration = Duration::from_secs(1);
/// How far before the previous look each look reaches.
pub const LOOK_BACK: Duration = Duration::from_secs(3);
/// Most rows of each kind one look reads.
const ROWS: u32 = 2000;
/// Most log lines of a followed task one look reads.
const LINES: u32 = 1000;

/// What the feed has told, over the window it looks back on.
#[derive(Debug, Default)]
pub struct Told {
    tasks: HashMap<Uuid, (TaskStatus, i64)>,
    workflows: HashMap<Uuid, i64>,
    deliveries: HashMap<(String, u32), i64>,
}

impl Told {
    /// The changes among `c` not told yet, to publish; forgets what changed at or before
    /// `horizon_us` (the next look does not reach it).
    pub fn fresh(&mut self, c: &Changes, horizon_us: i64) -> Vec<Change> {
        let mut out = Vec::new();
        if c.cut {
            out.push(Change::More);
        }
        for t in &c.tasks {
            if self.tasks.get(&t.id) != Some(&(t.status, t.at_us)) {
                self.tasks.insert(t.id, (t.status, t.at_us));
                out.push(Change::Task {
                    id: t.id,
                    workflow: t.workflow,
                    status: t.status,
                });
            }
        }
        for (id, at) in &c.workflows {
            if self.workflows.insert(*id, *at) != Some(*at) {
                out.push(Change::Workflow { id: *id });
            }
        }
        for d in &c.deliveries {
            if self
                .deliveries
                .insert((d.event_id.clone(), d.attempt), d.at_us)
                .is_none()
            {
                out.push(Change::Delivery {
                    task: d.task,
                    workflow: d.workflow,
                });
            }
        }
        self.tasks.retain(|_, (_, at)| *at > horizon_us);
        self.workflows.retain(|_, at| *at > horizon_us);
        self.deliveries.retain(|_, at| *at > horizon_us);
        out
    }

    fn clear(&mut self) {
        *self = Told::default();
    }
}

/// The background duty that feeds a node's change feed from the database while it is watched.
pub struct ChangePoller {
    handle: JoinHandle<()>,
    stop: CancellationToken,
}

impl ChangePoller {
    pub fn start(db: Postgres, feed: Feed) -> ChangePoller {
        let stop = CancellationToken::new();
        let handle = tokio::spawn(run(db, feed, stop.clone()));
        ChangePoller { handle, stop }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.handle.await;
    }
}

async fn run(db: Postgres, feed: Feed, stop: CancellationToken) {
    let look_back = LOOK_BACK.as_micros() as i64;
    let mut told = Told::default();
    // The previous look's clock, while watched without a break.
    let mut last: Option<i64> = None;
    // Where each followed task's lines were told up to.
    let mut lines: HashMap<Uuid, i64> = HashMap::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(POLL) => {}
        }
        if !feed.watched() {
            (last, told) = (None, Told::default());
            lines.clear();
            continue;
        }
        let since = last.map(|l| l - look_back);
        match db.changes_since(since, look_back, ROWS).await {
            Ok(c) => {
                feed.publish(told.fresh(&c, c.now_us - look_back));
                last = Some(c.now_us);
            }
            Err(e) => {
                // The page learns nothing meanwhile; tell it to look again once the database
                // answers, for what it missed.
                tracing::debug!("reading the cluster's changes for the dashboard failed: {e}");
                if last.take().is_some() {
                    told.clear();
                    feed.publish(vec![Change::More]);
                }
                continue;
            }
        }
        follow_lines(&db, &feed, &mut lines, look_back).await;
    }
}

/// Publishes the new lines of every followed task; forgets the tasks nobody follows any more.
async fn follow_lines(db: &Postgres, feed: &Feed, told: &mut HashMap<Uuid, i64>, look_back: i64) {
    let followed = feed.followed();
    told.retain(|t, _| followed.contains(t));
    for task in followed {
        let after = match told.get(&task) {
            Some(seq) => *seq,
            None => match db.log_seq_before(task, look_back).await {
                Ok(seq) => seq,
                Err(_) => continue,
            },
        };
        match db.log_lines_after(task, after, LINES).await {
            Ok(new) => {
                let seq = new.last().map_or(after, |l| l.seq);
                told.insert(task, seq);
                if !new.is_empty() {
                    feed.publish(vec![Change::Logs(Arc::new(new))]);
                }
            }
            Err(e) => tracing::debug!("reading task {task}'s new log lines failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::postgres::{DeliveryChange, TaskChange};

    fn task(id: Uuid, status: TaskStatus, at_us: i64) -> TaskChange {
        TaskChange {
            id,
            workflow: None,
            status,
            at_us,
        }
    }

    fn tasks_of(out: &[Change]) -> Vec<(Uuid, TaskStatus)> {
        out.iter()
            .filter_map(|c| match c {
                Change::Task { id, status, .. } => Some((*id, *status)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_change_seen_again_in_the_window_is_told_once() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let mut told = Told::default();
        let first = Changes {
            now_us: 10,
            tasks: vec![task(a, TaskStatus::Running, 5)],
            ..Changes::default()
        };
        assert_eq!(
            tasks_of(&told.fresh(&first, 0)),
            vec![(a, TaskStatus::Running)]
        );
        // The next look reaches back over the same row, and finds another.
        let second = Changes {
            now_us: 20,
            tasks: vec![
                task(a, TaskStatus::Running, 5),
                task(b, TaskStatus::Pending, 12),
            ],
            ..Changes::default()
        };
        assert_eq!(
            tasks_of(&told.fresh(&second, 4)),
            vec![(b, TaskStatus::Pending)]
        );
        // The task changed again: told again.
        let third = Changes {
            now_us: 30,
            tasks: vec![task(a, TaskStatus::Completed, 25)],
            ..Changes::default()
        };
        assert_eq!(
            tasks_of(&told.fresh(&third, 10)),
            vec![(a, TaskStatus::Completed)]
        );
    }

    #[test]
    fn a_task_back_to_a_status_it_had_is_told_by_its_new_time() {
        let a = Uuid::now_v7();
        let mut told = Told::default();
        let pending = |at| Changes {
            tasks: vec![task(a, TaskStatus::Pending, at)],
            ..Changes::default()
        };
        assert_eq!(told.fresh(&pending(1), 0).len(), 1);
        // Running then rescued, both between two looks: pending again, at a later time.
        assert_eq!(
            tasks_of(&told.fresh(&pending(9), 0)),
            vec![(a, TaskStatus::Pending)]
        );
    }

    #[test]
    fn what_falls_behind_the_horizon_is_forgotten() {
        let a = Uuid::now_v7();
        let mut told = Told::default();
        let c = Changes {
            tasks: vec![task(a, TaskStatus::Running, 5)],
            workflows: vec![(a, 5)],
            deliveries: vec![DeliveryChange {
                event_id: "e".into(),
                attempt: 1,
                task: Some(a),
                workflow: None,
                at_us: 5,
            }],
            ..Changes::default()
        };
        assert_eq!(told.fresh(&c, 0).len(), 3);
        assert!(told.fresh(&c, 0).is_empty(), "told once");
        assert!(told.fresh(&Changes::default(), 5).is_empty());
        assert!(told.tasks.is_empty() && told.workflows.is_empty() && told.deliveries.is_empty());
    }

    #[test]
    fn a_cut_look_says_more_changed() {
        let mut told = Told::default();
        let c = Changes {
            cut: true,
            ..Changes::default()
        };
        assert!(matches!(told.fresh(&c, 0).as_slice(), [Change::More]));
    }

    #[test]
    fn a_second_attempt_of_one_delivery_is_told() {
        let mut told = Told::default();
        let d = |attempt| DeliveryChange {
            event_id: "e".into(),
            attempt,
            task: None,
            workflow: Some(Uuid::nil()),
            at_us: 3,
        };
        let c = Changes {
            deliveries: vec![d(1), d(2)],
            ..Changes::default()
        };
        assert_eq!(told.fresh(&c, 0).len(), 2);
    }
}
