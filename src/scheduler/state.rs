//! The scheduler's in-memory state: every pending and running ("hot") task, the ready queue,
//! timers and dependency edges. Pure data with no I/O, guarded by one mutex in the scheduler.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::model::{Phase, Priority, Task, TaskStatus, Workflow};

/// Why a running attempt was asked to stop. The first reason set wins.
pub const STOP_NONE: u8 = 0;
pub const STOP_CANCEL: u8 = 1;
pub const STOP_TIMEOUT: u8 = 2;
pub const STOP_SHUTDOWN: u8 = 3;
/// Its workflow failed or was cancelled.
pub const STOP_WORKFLOW: u8 = 4;

#[derive(Debug, Clone, Default)]
pub struct RunHandle {
    pub cancel: CancellationToken,
    reason: Arc<AtomicU8>,
}

impl RunHandle {
    /// Records `reason` (unless another came first) and fires the token.
    pub fn stop(&self, reason: u8) {
        let _ = self
            .reason
            .compare_exchange(STOP_NONE, reason, Ordering::SeqCst, Ordering::SeqCst);
        self.cancel.cancel();
    }

    pub fn reason(&self) -> u8 {
        self.reason.load(Ordering::SeqCst)
    }
}

/// Where a hot task is in its life.
#[derive(Debug)]
pub enum Wait {
    /// Being inserted: not yet durable, invisible, never started.
    Reserved,
    /// A workflow task whose phase has not opened yet.
    Gated,
    /// Waiting for these tasks to complete.
    Deps(HashSet<Uuid>),
    /// Waiting for `scheduled_us` (run_at or retry back-off); has an entry in `timers`.
    Delayed,
    /// In the ready queue.
    Ready,
    /// An attempt is under way.
    Running(RunHandle),
    /// A terminal change is being committed; nothing may start it.
    Finishing,
}

#[derive(Debug)]
pub struct Hot {
    pub task: Task,
    pub wait: Wait,
    pub next_seq: i64,
    pub max_concurrency: Option<u32>,
    /// Small instructions are kept to spare a store read when the attempt starts.
    pub instructions: Option<Arc<str>>,
}

/// Instructions up to this size stay in memory while their task is hot.
pub const CACHED_INSTRUCTIONS_BYTES: usize = 16 * 1024;

/// Ready-queue order: highest priority first, then oldest, then id (UUIDv7: creation order).
pub type ReadyKey = (Reverse<Priority>, i64, Uuid);

pub fn ready_key(t: &Task) -> ReadyKey {
    (Reverse(t.priority), t.created_us, t.id)
}

/// A running workflow. Its phase statuses here may be a step ahead of the store (they are
/// decided under the lock, then committed); clients read workflows from the store only, and
/// crash recovery recomputes phases from task statuses, so nobody sees the difference.
#[derive(Debug)]
pub struct WfHot {
    pub workflow: Workflow,
    /// In position (topological) order.
    pub phases: Vec<Phase>,
    /// Every task of the workflow: its phase index and last committed status.
    pub tasks: HashMap<Uuid, (usize, TaskStatus)>,
    pub running: u32,
    /// Failures for good whose commit is under way; while any is, no task of the workflow starts.
    pub failing: u32,
    /// The first task that failed for good: its phase index and what to report.
    pub failure: Option<(usize, String)>,
}

#[derive(Debug, Default)]
pub struct State {
    /// Running workflows (draft and finished ones live in the store only).
    pub workflows: HashMap<Uuid, WfHot>,
    /// Boxed: the map's table then holds pointers, so its growth (doubling, both tables alive
    /// while rehashing) copies and over-allocates pointers rather than whole tasks.
    pub hot: HashMap<Uuid, Box<Hot>>,
    pub ready: BTreeSet<ReadyKey>,
    pub timers: BinaryHeap<Reverse<(i64, Uuid)>>,
    /// dependency -> tasks waiting on it
    pub dependents: HashMap<Uuid, Vec<Uuid>>,
    pub running: usize,
    /// Attempts whose process has ended (their worker slot is free again) but whose outcome is
    /// still being committed; shutdown waits for these too.
    pub finishing: usize,
    pub running_per_agent: HashMap<String, u32>,
}

impl State {
    /// Puts a hot task whose dependencies are met into the ready queue, or on a timer if its
    /// time has not come.
    pub fn enqueue(&mut self, id: Uuid, now_us: i64) {
        let Some(h) = self.hot.get_mut(&id) else {
            return;
        };
        if h.task.scheduled_us > now_us {
            h.wait = Wait::Delayed;
            self.timers.push(Reverse((h.task.scheduled_us, id)));
        } else {
            h.wait = Wait::Ready;
            self.ready.insert(ready_key(&h.task));
        }
    }

    /// Moves tasks whose time has come from the timers to the ready queue; returns the next
    /// timer's time, if any.
    pub fn promote_due(&mut self, now_us: i64) -> Option<i64> {
        while let Some(Reverse((at, id))) = self.timers.peek().copied() {
            if at > now_us {
                return Some(at);
            }
            self.timers.pop();
            // Entries are not removed on cancel or reschedule; skip the stale ones here.
            if let Some(h) = self.hot.get_mut(&id) {
                if matches!(h.wait, Wait::Delayed) && h.task.scheduled_us <= now_us {
                    h.wait = Wait::Ready;
                    self.ready.insert(ready_key(&h.task));
                }
            }
        }
        None
    }

    /// Takes the best ready task that its agent's `max_concurrency` allows, marking it running.
    pub fn take_next(&mut self) -> Option<(Task, RunHandle)> {
        let key = self.ready.iter().copied().find(|(_, _, id)| {
            self.hot.get(id).is_some_and(|h| {
                let busy = self
                    .running_per_agent
                    .get(&h.task.agent_name)
                    .copied()
                    .unwrap_or(0);
                let workflow_free = h
                    .task
                    .workflow_id
                    .and_then(|w| self.workflows.get(&w))
                    .is_none_or(|wf| {
                        wf.failing == 0 && wf.workflow.max_parallel.is_none_or(|m| wf.running < m)
                    });
                workflow_free && h.max_concurrency.is_none_or(|limit| busy < limit)
            })
        })?;
        self.ready.remove(&key);
        let h = self.hot.get_mut(&key.2)?;
        let handle = RunHandle::default();
        h.wait = Wait::Running(handle.clone());
        self.running += 1;
        *self
            .running_per_agent
            .entry(h.task.agent_name.clone())
            .or_default() += 1;
        if let Some(wf) = h.task.workflow_id.and_then(|w| self.workflows.get_mut(&w)) {
            wf.running += 1;
        }
        Some((h.task.clone(), handle))
    }

    /// Whether a task being accepted may start at once, its start written with its insert (one
    /// sync instead of two): it waits for nothing (dependencies, a time, a workflow's gate, a
    /// worktree to prepare), no task is queued ahead of it, a worker is free and its agent is
    /// under its `max_concurrency`. If so, the worker slot is taken now, so the dispatcher cannot
    /// give it away meanwhile; the caller gives it back ([`Self::release_worker`]) if the insert
    /// does not happen.
    pub fn claim_at_submit(
        &mut self,
        task: &Task,
        max_concurrency: Option<u32>,
        workers: usize,
        now_us: i64,
    ) -> bool {
        let waits_for_nothing = task.status == TaskStatus::Pending
            && task.dependencies.is_empty()
            && task.workflow_id.is_none()
            && task.workspace.is_none()
            && task.scheduled_us <= now_us;
        let busy = self
            .running_per_agent
            .get(&task.agent_name)
            .copied()
            .unwrap_or(0);
        if !waits_for_nothing
            || !self.ready.is_empty()
            || self.running >= workers
            || max_concurrency.is_some_and(|limit| busy >= limit)
        {
            return false;
        }
        self.running += 1;
        *self
            .running_per_agent
            .entry(task.agent_name.clone())
            .or_default() += 1;
        true
    }

    /// An attempt's process has ended: its worker slot is free at once, and the outcome is
    /// counted as `finishing` until committed ([`Self::outcome_committed`]). Freeing the slot
    /// before the commit lets the next task's start share a group commit with this outcome.
    ///
    /// A workflow task that failed for good holds its workflow back until its failure is
    /// committed (`WfHot::failing`): the failure cancels the rest, so nothing of it may start.
    pub fn end_attempt(&mut self, task: &Task) {
        if let Some(h) = self.hot.get_mut(&task.id) {
            h.wait = Wait::Finishing;
        }
        self.release_worker(task);
        self.finishing += 1;
        if task.status == TaskStatus::Failed {
            if let Some(wf) = task.workflow_id.and_then(|w| self.workflows.get_mut(&w)) {
                wf.failing += 1;
            }
        }
    }

    /// Attempts running or with an outcome not yet committed.
    pub fn busy(&self) -> bool {
        self.running > 0 || self.finishing > 0
    }

    /// The outcome of an attempt ended by [`Self::end_attempt`] is committed, with everything
    /// it set off.
    pub fn outcome_committed(&mut self, task: &Task) {
        self.finishing = self.finishing.saturating_sub(1);
        if task.status == TaskStatus::Failed {
            if let Some(wf) = task.workflow_id.and_then(|w| self.workflows.get_mut(&w)) {
                wf.failing = wf.failing.saturating_sub(1);
            }
        }
    }

    /// Bookkeeping for an attempt of `task` that has ended (whatever its outcome).
    pub fn release_worker(&mut self, task: &Task) {
        self.running = self.running.saturating_sub(1);
        if let Some(n) = self.running_per_agent.get_mut(&task.agent_name) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.running_per_agent.remove(&task.agent_name);
            }
        }
        if let Some(wf) = task.workflow_id.and_then(|w| self.workflows.get_mut(&w)) {
            wf.running = wf.running.saturating_sub(1);
        }
    }

    /// Takes a task out of whichever queue holds it so nothing can start it.
    pub fn withdraw(&mut self, id: Uuid) {
        if let Some(h) = self.hot.get_mut(&id) {
            if matches!(h.wait, Wait::Ready) {
                self.ready.remove(&ready_key(&h.task));
            }
            h.wait = Wait::Finishing;
        }
    }

    pub fn next_seq(&mut self, id: Uuid) -> Option<i64> {
        let h = self.hot.get_mut(&id)?;
        h.next_seq += 1;
        Some(h.next_seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(priority: Priority, created_us: i64, agent: &str) -> Task {
        Task {
            priority,
            created_us,
            scheduled_us: created_us,
            agent_name: agent.into(),
            ..Task::sample_for_tests()
        }
    }

    fn add(st: &mut State, t: Task, limit: Option<u32>) -> Uuid {
        let id = t.id;
        st.hot.insert(
            id,
            Box::new(Hot {
                task: t,
                wait: Wait::Reserved,
                next_seq: 0,
                max_concurrency: limit,
                instructions: None,
            }),
        );
        st.enqueue(id, 1_000);
        id
    }

    #[test]
    fn highest_priority_then_oldest() {
        let mut st = State::default();
        let low = add(&mut st, task(Priority::Low, 1, "a"), None);
        let n2 = add(&mut st, task(Priority::Normal, 2, "a"), None);
        let n1 = add(&mut st, task(Priority::Normal, 1, "a"), None);
        let crit = add(&mut st, task(Priority::Critical, 5, "a"), None);
        let order: Vec<Uuid> = std::iter::from_fn(|| st.take_next().map(|(t, _)| t.id)).collect();
        assert_eq!(order, vec![crit, n1, n2, low]);
        assert_eq!(st.running, 4);
    }

    #[test]
    fn agent_limit_skips_to_other_agents() {
        let mut st = State::default();
        let a1 = add(&mut st, task(Priority::High, 1, "a"), Some(1));
        let _a2 = add(&mut st, task(Priority::High, 2, "a"), Some(1));
        let b = add(&mut st, task(Priority::Low, 3, "b"), None);
        let (first, _) = st.take_next().unwrap();
        assert_eq!(first.id, a1);
        assert_eq!(st.take_next().unwrap().0.id, b);
        assert!(st.take_next().is_none());
        st.release_worker(&first);
        assert!(st.take_next().is_some());
    }

    #[test]
    fn timers_promote_when_due() {
        let mut st = State::default();
        let mut t = task(Priority::Normal, 1, "a");
        t.scheduled_us = 5_000;
        let id = add(&mut st, t, None);
        assert!(st.take_next().is_none());
        assert_eq!(st.promote_due(4_999), Some(5_000));
        assert_eq!(st.promote_due(5_000), None);
        assert_eq!(st.take_next().unwrap().0.id, id);
    }

    #[test]
    fn a_task_starts_at_submit_only_when_nothing_is_ahead_of_it() {
        let mut st = State::default();
        let t = task(Priority::Normal, 1, "a");
        assert!(st.claim_at_submit(&t, Some(2), 2, 1_000));
        assert_eq!((st.running, st.running_per_agent["a"]), (1, 1));
        // Its agent's limit, then the workers, are full.
        assert!(!st.claim_at_submit(&task(Priority::Normal, 2, "a"), Some(1), 8, 1_000));
        assert!(st.claim_at_submit(&task(Priority::Normal, 2, "b"), None, 2, 1_000));
        assert!(!st.claim_at_submit(&task(Priority::Normal, 3, "c"), None, 2, 1_000));
        st.release_worker(&t);
        assert_eq!(st.running, 1);
        assert!(!st.running_per_agent.contains_key("a"));
        // Something waits for a time, another task, a workflow or a worktree.
        let mut later = task(Priority::Normal, 4, "c");
        later.scheduled_us = 2_000;
        assert!(!st.claim_at_submit(&later, None, 8, 1_000));
        let mut dependent = task(Priority::Normal, 4, "c");
        dependent.dependencies = vec![Uuid::now_v7()];
        assert!(!st.claim_at_submit(&dependent, None, 8, 1_000));
        let mut phase = task(Priority::Normal, 4, "c");
        phase.workflow_id = Some(Uuid::now_v7());
        assert!(!st.claim_at_submit(&phase, None, 8, 1_000));
        // A task already in the ready queue goes first.
        add(&mut st, task(Priority::Low, 5, "d"), None);
        assert!(!st.claim_at_submit(&task(Priority::Critical, 6, "c"), None, 8, 1_000));
        assert_eq!(st.running, 1);
    }

    #[test]
    fn withdrawn_tasks_never_start() {
        let mut st = State::default();
        let id = add(&mut st, task(Priority::Normal, 1, "a"), None);
        st.withdraw(id);
        assert!(st.take_next().is_none());
    }

    #[test]
    fn stop_reason_first_wins() {
        let h = RunHandle::default();
        h.stop(STOP_TIMEOUT);
        h.stop(STOP_CANCEL);
        assert_eq!(h.reason(), STOP_TIMEOUT);
        assert!(h.cancel.is_cancelled());
    }
}
