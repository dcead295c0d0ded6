//! The notifier: told of every terminal task and workflow state after it is committed, and what
//! it sets going — webhook delivery, and the channel events of the sessions that handed the work
//! off ([`channel`]).
//!
//! The outbox row of a webhook event is written by the scheduler in the same transaction as the
//! terminal state ([`events`]), so a crash between "done" and "sent" cannot lose it. The hook
//! below only wakes the [`delivery::Deliverer`], which sends owed events from its own tasks.

pub mod channel;
pub mod delivery;
pub mod events;
pub mod outbox;
pub mod signature;

use crate::model::{Task, Workflow};
use channel::{Channels, Handoff};
use delivery::Deliverer;

pub trait Notifier: Send + Sync {
    /// Called once per terminal transition (completed, failed for good, cancelled), after the
    /// transition is durable. Must not block: hand slow work to another task.
    fn task_finished(&self, task: &Task);

    /// Called once when a workflow completes, fails or is cancelled, after that is durable.
    fn workflow_finished(&self, workflow: &Workflow);

    /// The ends somebody here waits to be told of (what this machine's sessions handed off):
    /// a cluster node looks for those that other nodes recorded.
    fn awaited(&self) -> Vec<Handoff> {
        Vec::new()
    }

    /// `task`, awaited here, ended on another node of the cluster: whoever here waits for it
    /// is told (that node did the rest).
    fn task_ended_elsewhere(&self, _task: &Task) {}

    /// `workflow`, awaited here, ended on another node of the cluster.
    fn workflow_ended_elsewhere(&self, _workflow: &Workflow) {}
}

/// Logs terminal states, wakes webhook delivery when one has a webhook, and tells the session
/// that handed the work off.
pub struct EngineNotifier {
    /// None in an engine that does not deliver (a CLI command's): events stay owed.
    deliverer: Option<Deliverer>,
    channels: Channels,
}

impl EngineNotifier {
    pub fn new(deliverer: Option<Deliverer>, channels: Channels) -> Self {
        EngineNotifier {
            deliverer,
            channels,
        }
    }
}

impl Notifier for EngineNotifier {
    fn task_finished(&self, task: &Task) {
        tracing::debug!(task_id = %task.id, status = task.status.as_str(), "task finished");
        if let (Some(d), Some(_)) = (&self.deliverer, &task.webhook_url) {
            d.wake();
        }
        self.channels
            .ended(Handoff::Task(task.id), || channel::task_event(task));
    }

    fn workflow_finished(&self, workflow: &Workflow) {
        tracing::info!(workflow_id = %workflow.id, status = workflow.status.as_str(), "workflow finished");
        if let (Some(d), Some(_)) = (&self.deliverer, &workflow.webhook_url) {
            d.wake();
        }
        self.channels.ended(Handoff::Workflow(workflow.id), || {
            channel::workflow_event(workflow)
        });
    }

    fn awaited(&self) -> Vec<Handoff> {
        self.channels.awaited()
    }

    fn task_ended_elsewhere(&self, task: &Task) {
        self.channels
            .ended_if_claimed(Handoff::Task(task.id), || channel::task_event(task));
    }

    fn workflow_ended_elsewhere(&self, workflow: &Workflow) {
        self.channels
            .ended_if_claimed(Handoff::Workflow(workflow.id), || {
                channel::workflow_event(workflow)
            });
    }
}
