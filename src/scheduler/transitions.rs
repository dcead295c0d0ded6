//! How a state change becomes durable and then visible: dependency checks, activation of
//! accepted tasks, the commit of transitions (with their log lines and webhook outbox rows) and
//! applying them to memory afterwards, cascading to dependents and workflows.

use std::collections::HashSet;
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use tokio::sync::broadcast;
use uuid::Uuid;

use super::state::{State, Wait};
use super::{dispatch, Inner, SchedError, Transition};
use crate::model::{now_us, NewLogLine, Task, TaskStatus};
use crate::store::{StoreError, WriteOp};

impl Inner {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug; keep serving rather than cascade.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn hot_task(&self, id: Uuid) -> Option<Task> {
        let st = self.lock();
        st.hot
            .get(&id)
            .filter(|h| !matches!(h.wait, Wait::Reserved))
            .map(|h| h.task.clone())
    }

    /// Refuses dependencies that do not exist or have already failed or been cancelled.
    pub(super) async fn check_dependencies(&self, task: &Task) -> Result<(), SchedError> {
        let cold: Vec<Uuid> = {
            let st = self.lock();
            task.dependencies
                .iter()
                .filter(|d| !st.hot.contains_key(d))
                .copied()
                .collect()
        };
        if cold.is_empty() {
            return Ok(());
        }
        let found = self.store.tasks(cold.clone()).await?;
        super::check_dependencies(&cold, &found)
    }

    /// Makes a reserved (just committed) task schedulable: registers it with the dependencies
    /// still hot, and settles those that are not by their stored (final) status.
    pub(super) async fn activate(self: &Arc<Self>, id: Uuid) {
        let cold = {
            let mut st = self.lock();
            let Some(h) = st.hot.get(&id) else { return };
            let deps = h.task.dependencies.clone();
            let mut waiting = HashSet::new();
            let mut cold = Vec::new();
            for dep in deps {
                if st.hot.contains_key(&dep) {
                    waiting.insert(dep);
                    st.dependents.entry(dep).or_default().push(id);
                } else {
                    cold.push(dep);
                }
            }
            if waiting.is_empty() && cold.is_empty() {
                st.enqueue(id, now_us());
            } else {
                // Cold deps join the wait set too, until their stored status settles them.
                for dep in &cold {
                    waiting.insert(*dep);
                    st.dependents.entry(*dep).or_default().push(id);
                }
                if let Some(h) = st.hot.get_mut(&id) {
                    h.wait = Wait::Deps(waiting);
                }
            }
            cold
        };
        if !cold.is_empty() {
            self.settle_cold_dependencies(cold).await;
        }
        self.wake.notify_one();
    }

    /// Applies the stored status of dependencies that are no longer hot (so finished).
    pub(super) async fn settle_cold_dependencies(self: &Arc<Self>, deps: Vec<Uuid>) {
        let found = match self.store.tasks(deps.clone()).await {
            Ok(f) => f,
            Err(e) => {
                tracing::error!("could not read dependencies: {e}");
                return;
            }
        };
        let mut cascade = Vec::new();
        {
            let mut st = self.lock();
            for dep in deps {
                let status = found
                    .iter()
                    .find(|t| t.id == dep)
                    .map(|t| (t.status, t.name.clone()));
                // A dependency that is hot again (retried meanwhile) settles when it finishes.
                if st.hot.contains_key(&dep) {
                    continue;
                }
                // A dependency that is gone was pruned (only finished work is), and it had
                // completed: had it failed, this task would have been cancelled then (and a
                // retry of a task whose dependency is gone is refused).
                let (status, name) = status.unwrap_or((TaskStatus::Completed, "(pruned)".into()));
                cascade.extend(self.settle_dependents(&mut st, dep, &name, status));
            }
        }
        self.commit(cascade).await;
    }

    /// A dependency reached a terminal `status`: frees or cancels the tasks waiting on it.
    /// Returns the cancellations to commit.
    pub(super) fn settle_dependents(
        &self,
        st: &mut State,
        dep: Uuid,
        dep_name: &str,
        status: TaskStatus,
    ) -> Vec<Transition> {
        let mut out = Vec::new();
        let now = now_us();
        for d in st.dependents.remove(&dep).unwrap_or_default() {
            let Some(h) = st.hot.get_mut(&d) else {
                continue;
            };
            let Wait::Deps(waiting) = &mut h.wait else {
                continue;
            };
            if !waiting.remove(&dep) {
                continue;
            }
            if status == TaskStatus::Completed {
                if waiting.is_empty() {
                    st.enqueue(d, now);
                }
            } else {
                h.wait = Wait::Finishing;
                let mut t = h.task.clone();
                t.status = TaskStatus::Cancelled;
                t.completed_us = Some(now);
                let why = format!(
                    "cancelled because its dependency {dep} ({dep_name}) {}",
                    status.as_str()
                );
                t.error = Some(why.clone());
                out.push(Transition {
                    task: t,
                    logs: vec![("warn", why)],
                });
            }
        }
        out
    }

    /// Commits transitions (and the cancellations they cascade into), updating memory after
    /// each commit.
    ///
    /// Boxed because it recurses: advancing a workflow can activate tasks, which can commit.
    pub(super) fn commit(self: &Arc<Self>, mut batch: Vec<Transition>) -> dispatch::BoxedUnit<'_> {
        Box::pin(async move {
            while !batch.is_empty() {
                let ops = Self::ops_for(&mut self.lock(), &batch);
                self.write_with_retries(ops).await;
                let mut next = Vec::new();
                let mut workflows = Vec::new();
                {
                    let mut st = self.lock();
                    for tr in batch {
                        if let Some(w) =
                            tr.task.workflow_id.filter(|_| tr.task.status.is_terminal())
                        {
                            if !workflows.contains(&w) {
                                workflows.push(w);
                            }
                        }
                        next.extend(self.apply_committed(&mut st, tr));
                    }
                }
                for w in workflows {
                    next.extend(self.advance_workflow(w, false).await);
                }
                self.wake.notify_one();
                batch = next;
            }
        })
    }

    /// The store writes of `batch`: each task's new state and its log lines.
    pub(super) fn ops_for(st: &mut State, batch: &[Transition]) -> Vec<WriteOp> {
        let now = now_us();
        let mut ops = Vec::with_capacity(batch.len() + 1);
        let mut lines = Vec::new();
        for tr in batch {
            for (level, message) in &tr.logs {
                if let Some(seq) = st.next_seq(tr.task.id) {
                    lines.push(NewLogLine {
                        task_id: tr.task.id,
                        seq,
                        ts_us: now,
                        level,
                        message: message.clone(),
                    });
                }
            }
            ops.push(WriteOp::UpdateTask(Box::new(tr.task.clone())));
            // The webhook outbox row commits with the terminal state it reports.
            if let Some(ev) = crate::model::WebhookEvent::for_task(&tr.task, now) {
                ops.push(WriteOp::InsertWebhookEvent(Box::new(ev)));
            }
        }
        ops.push(WriteOp::AppendLogs(lines));
        ops
    }

    /// Writes `ops`, retrying a failing disk for a while: memory must not run ahead of the
    /// store. If the store stays broken (or has closed at shutdown) the change is applied to
    /// memory anyway and crash recovery reconciles at the next start.
    pub(super) async fn write_with_retries(&self, ops: Vec<WriteOp>) -> bool {
        let mut delay = Duration::from_millis(50);
        let mut tries_while_stopping = 0;
        loop {
            match self.store.write(ops.clone()).await {
                Ok(_) => return true,
                Err(StoreError::Closed) => return false,
                Err(e) => {
                    // An outcome is kept until the store takes it (a full disk may take a while
                    // to be freed); only a stopping engine gives up, and the next one's
                    // recovery runs the task again.
                    if self.stopping.is_cancelled() {
                        tries_while_stopping += 1;
                        if tries_while_stopping > 4 {
                            tracing::error!("could not commit task state before stopping ({e})");
                            return false;
                        }
                        delay = delay.min(Duration::from_millis(200));
                    }
                    tracing::error!("could not commit task state ({e}); retrying in {delay:?}");
                    // A stop cuts the wait short: the engine has little time left, and the
                    // outcome is better tried now than lost in a pause.
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.stopping.cancelled(), if tries_while_stopping == 0 => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Memory catches up with a committed transition. Returns cascaded cancellations.
    pub(super) fn apply_committed(&self, st: &mut State, tr: Transition) -> Vec<Transition> {
        let id = tr.task.id;
        let status = tr.task.status;
        if status.is_terminal() {
            st.hot.remove(&id);
            Self::note_workflow_task(st, &tr.task);
            crate::metrics::task_finished(&tr.task);
            self.notifier.task_finished(&tr.task);
            let _ = self.terminal.send(id);
            return self.settle_dependents(st, id, &tr.task.name, status);
        }
        let workflow_ended = tr
            .task
            .workflow_id
            .is_some_and(|w| !st.workflows.contains_key(&w));
        if status == TaskStatus::Pending && workflow_ended {
            // A retry decided while its workflow failed or was cancelled: it must not run.
            let msg = "cancelled: its workflow ended while this attempt was finishing";
            let mut t = tr.task;
            t.status = TaskStatus::Cancelled;
            t.completed_us = Some(now_us());
            t.error = Some(msg.into());
            return vec![Transition {
                task: t,
                logs: vec![("warn", msg.into())],
            }];
        }
        if let Some(h) = st.hot.get_mut(&id) {
            h.task = tr.task;
            if status == TaskStatus::Pending {
                st.enqueue(id, now_us());
            }
        }
        Vec::new()
    }

    /// Waits (bounded) until `id` has had a terminal transition.
    pub(super) async fn await_terminal(
        &self,
        id: Uuid,
        events: &mut broadcast::Receiver<Uuid>,
        max: Duration,
    ) {
        let deadline = tokio::time::Instant::now() + max;
        loop {
            if self.hot_task(id).is_none() {
                return;
            }
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Ok(ev)) if ev == id => return,
                Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
                Ok(Err(broadcast::error::RecvError::Closed)) | Err(_) => return,
            }
        }
    }
}
