//! Telling this machine's sessions of the ends of what they handed off, whichever node of the
//! cluster recorded them.
//!
//! A session claims what it hands off with its own engine (`notifier::channel`), and the node
//! that records an end tells only its own sessions. So while anything handed off here is
//! awaited, the [`HandoffWatch`] looks every [`POLL`] for those of the awaited tasks and
//! workflows that have ended, and tells them; an end this node recorded itself was told at once
//! and is no longer awaited. Like the channel events themselves, a courtesy: the durable
//! record is the task, which `task_wait`, `task_status` and the `ended` command read from any
//! node.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::notifier::channel::Handoff;
use crate::notifier::Notifier;
use crate::store::postgres::Postgres;

/// How often the awaited ends are looked for.
pub const POLL: Duration = Duration::from_secs(1);

/// The awaited handoffs, sorted into tasks and workflows.
pub fn split(awaited: &[Handoff]) -> (Vec<Uuid>, Vec<Uuid>) {
    let mut tasks = Vec::new();
    let mut workflows = Vec::new();
    for h in awaited {
        match h {
            Handoff::Task(id) => tasks.push(*id),
            Handoff::Workflow(id) => workflows.push(*id),
        }
    }
    (tasks, workflows)
}

/// The background duty that tells this machine's sessions of ends recorded elsewhere.
pub struct HandoffWatch {
    handle: JoinHandle<()>,
    stop: CancellationToken,
}

impl HandoffWatch {
    pub fn start(db: Postgres, notifier: Arc<dyn Notifier>) -> HandoffWatch {
        let stop = CancellationToken::new();
        let handle = tokio::spawn(run(db, notifier, stop.clone()));
        HandoffWatch { handle, stop }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.handle.await;
    }
}

async fn run(db: Postgres, notifier: Arc<dyn Notifier>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(POLL) => {}
        }
        let (tasks, workflows) = split(&notifier.awaited());
        match db.ended_tasks(&tasks).await {
            Ok(ended) => ended.iter().for_each(|t| notifier.task_ended_elsewhere(t)),
            Err(e) => tracing::debug!("looking for the ends of handed-off tasks failed: {e}"),
        }
        match db.ended_workflows(&workflows).await {
            Ok(ended) => ended
                .iter()
                .for_each(|w| notifier.workflow_ended_elsewhere(w)),
            Err(e) => {
                tracing::debug!("looking for the ends of handed-off workflows failed: {e}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handoffs_are_sorted_into_tasks_and_workflows() {
        let (t, w) = (Uuid::now_v7(), Uuid::now_v7());
        assert_eq!(
            split(&[Handoff::Task(t), Handoff::Workflow(w)]),
            (vec![t], vec![w])
        );
        assert_eq!(split(&[]), (vec![], vec![]));
    }
}
