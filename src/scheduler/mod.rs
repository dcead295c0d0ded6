//! The scheduler: owns every state change of a task after it is accepted.
//!
//! Hot tasks (pending, running) live in memory ([`state::State`]); the store is the durable
//! record. The invariant that keeps them consistent: **memory changes only after the store has
//! committed**. A task becomes visible, runnable, running or finished in memory only once that
//! state is durable, so nothing a client has seen can be lost by a kill -9, and a read of the
//! store is never behind what memory has told anyone.
//!
//! Submodules: `dispatch` starts ready tasks and runs attempts; `recovery` rebuilds the state
//! at start (crash recovery); `wait` implements `task_wait`.

mod dispatch;
mod phases;
mod recovery;
pub mod state;
mod wait;
mod workflow;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{broadcast, Notify};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::agents::AgentRegistry;
use crate::model::{now_us, NewLogLine, Task, TaskStatus};
use crate::notifier::Notifier;
use crate::runner::Runners;
use crate::store::{OpOutcome, Store, StoreError, WriteOp};
use state::{Hot, State, Wait, STOP_CANCEL, STOP_SHUTDOWN};

#[derive(Debug, thiserror::Error)]
pub enum SchedError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the server is shutting down and accepts no new work; start it again and resubmit")]
    ShuttingDown,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

/// Runs a state change to its end even if the caller stops waiting (a client that disconnects,
/// a request time-out, an MCP cancellation): the in-memory follow-up of a commit — activating a
/// new task, releasing a withdrawn one — must never be skipped, or an accepted task would sit
/// unscheduled until the next restart.
pub(crate) async fn detached<T, F>(fut: F) -> Result<T, SchedError>
where
    F: std::future::Future<Output = Result<T, SchedError>> + Send + 'static,
    T: Send + 'static,
{
    tokio::spawn(fut)
        .await
        .map_err(|e| SchedError::Internal(format!("a scheduler task failed: {e}")))?
}

#[derive(Debug, Clone)]
pub struct SchedConfig {
    pub workers: usize,
    pub retry_backoff_base_ms: u64,
    /// Names this database to the processes it starts (`ORCHESTR8_TASK_DB`), so that crash
    /// recovery only ever stops processes of its own tasks, not those of a copy of the file.
    pub instance: String,
}

/// A state change on its way to the store, with the log lines that explain it.
#[derive(Debug)]
pub(crate) struct Transition {
    pub task: Task,
    pub logs: Vec<(&'static str, String)>,
}

pub(crate) struct Inner {
    cfg: SchedConfig,
    store: Arc<Store>,
    agents: AgentRegistry,
    runners: Runners,
    notifier: Arc<dyn Notifier>,
    state: Mutex<State>,
    /// Wakes the dispatcher: a task became ready or a worker became free.
    wake: Notify,
    /// Every terminal transition, after commit (for `task_wait`).
    terminal: broadcast::Sender<Uuid>,
    /// Fired at shutdown: no new attempts start, no new tasks are accepted.
    stopping: CancellationToken,
    /// Serializes changes to a workflow's shape and its start and cancel, so that a task added
    /// concurrently with a start is either in the started workflow or refused.
    wf_lock: tokio::sync::Mutex<()>,
}

/// Cheap to clone; all clones drive the same scheduler.
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

/// What `submit` did.
#[derive(Debug)]
pub enum Submitted {
    Created(Task),
    /// The idempotency key was already used by this task.
    Existing(Task),
}

impl Scheduler {
    /// Recovers the state a previous server left (section 9) and starts dispatching.
    pub async fn start(
        cfg: SchedConfig,
        store: Arc<Store>,
        agents: AgentRegistry,
        runners: Runners,
        notifier: Arc<dyn Notifier>,
    ) -> Result<Scheduler, SchedError> {
        let (terminal, _) = broadcast::channel(4096);
        let inner = Arc::new(Inner {
            cfg,
            store,
            agents,
            runners,
            notifier,
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            terminal,
            stopping: CancellationToken::new(),
            wf_lock: tokio::sync::Mutex::new(()),
        });
        recovery::recover(&inner).await?;
        tokio::spawn(dispatch::dispatcher(inner.clone()));
        Ok(Scheduler { inner })
    }

    pub fn agents(&self) -> &AgentRegistry {
        &self.inner.agents
    }

    pub fn runners(&self) -> &Runners {
        &self.inner.runners
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.inner.store
    }

    /// The task from memory if it is hot, else from the store.
    pub async fn task(&self, id: Uuid) -> Result<Option<Task>, SchedError> {
        if let Some(t) = self.inner.hot_task(id) {
            return Ok(Some(t));
        }
        Ok(self.inner.store.task(id).await?)
    }

    /// Accepts a new task: durable before this returns. `max_concurrency` is its agent's limit.
    pub async fn submit(
        &self,
        task: Task,
        instructions: String,
        max_concurrency: Option<u32>,
    ) -> Result<Submitted, SchedError> {
        let this = self.clone();
        detached(async move { this.submit_now(task, instructions, max_concurrency).await }).await
    }

    /// The body of [`Self::submit`], run to its end on its own task.
    async fn submit_now(
        &self,
        task: Task,
        instructions: String,
        max_concurrency: Option<u32>,
    ) -> Result<Submitted, SchedError> {
        let inner = &self.inner;
        if inner.stopping.is_cancelled() {
            return Err(SchedError::ShuttingDown);
        }
        inner.check_dependencies(&task).await?;
        let id = task.id;
        let cached = (instructions.len() <= state::CACHED_INSTRUCTIONS_BYTES)
            .then(|| Arc::<str>::from(instructions.as_str()));
        inner.lock().hot.insert(
            id,
            Hot {
                task: task.clone(),
                wait: Wait::Reserved,
                next_seq: 0,
                max_concurrency,
                instructions: cached,
            },
        );
        let written = inner
            .store
            .write(vec![WriteOp::InsertTask {
                task: Box::new(task.clone()),
                instructions,
            }])
            .await;
        match written {
            Ok(outcomes) => {
                if let Some(OpOutcome::Existing(existing)) = outcomes.first().copied() {
                    inner.lock().hot.remove(&id);
                    let t = self
                        .task(existing)
                        .await?
                        .ok_or_else(|| SchedError::NotFound(format!("task {existing} vanished")))?;
                    return Ok(Submitted::Existing(t));
                }
                inner.activate(id).await;
                crate::metrics::task_submitted(&task.agent_name);
                Ok(Submitted::Created(task))
            }
            Err(e) => {
                inner.lock().hot.remove(&id);
                Err(e.into())
            }
        }
    }

    /// Cancels a pending task at once, or stops a running one and waits until it has stopped.
    pub async fn cancel(&self, id: Uuid) -> Result<Task, SchedError> {
        let this = self.clone();
        detached(async move { this.cancel_now(id).await }).await
    }

    /// The body of [`Self::cancel`], run to its end on its own task.
    async fn cancel_now(&self, id: Uuid) -> Result<Task, SchedError> {
        enum Action {
            Finished,
            Stop(Option<state::RunHandle>),
            Withdrawn(Box<Task>),
        }
        let inner = &self.inner;
        if let Some(t) = self.task(id).await? {
            if let (Some(w), false) = (t.workflow_id, t.status.is_terminal()) {
                return Err(SchedError::Conflict(format!(
                    "task {id} belongs to workflow {w}, whose tasks are cancelled together: use workflow_cancel"
                )));
            }
        }
        let mut events = inner.terminal.subscribe();
        let action = {
            let mut st = inner.lock();
            let wait = st.hot.get(&id).map(|h| &h.wait);
            match wait {
                None | Some(Wait::Reserved) => Action::Finished,
                Some(Wait::Running(handle)) => Action::Stop(Some(handle.clone())),
                Some(Wait::Finishing) => Action::Stop(None),
                Some(_) => {
                    st.withdraw(id);
                    Action::Withdrawn(Box::new(st.hot[&id].task.clone()))
                }
            }
        };
        match action {
            Action::Withdrawn(t) => {
                let mut t = *t;
                t.status = TaskStatus::Cancelled;
                t.completed_us = Some(now_us());
                t.error = Some("cancelled by request before it started".into());
                inner
                    .commit(vec![Transition {
                        task: t,
                        logs: vec![("info", "cancelled by request".into())],
                    }])
                    .await;
                self.task_or_not_found(id).await
            }
            Action::Stop(handle) => {
                if let Some(h) = handle {
                    h.stop(STOP_CANCEL);
                }
                inner
                    .await_terminal(id, &mut events, Duration::from_secs(30))
                    .await;
                self.task_or_not_found(id).await
            }
            Action::Finished => {
                let t = self.task_or_not_found(id).await?;
                Err(SchedError::Conflict(format!(
                    "task {id} is already {}; only pending or running tasks can be cancelled",
                    t.status.as_str()
                )))
            }
        }
    }

    /// Puts a failed or cancelled task back to pending, with a fresh retry budget.
    pub async fn retry(&self, id: Uuid) -> Result<Task, SchedError> {
        let this = self.clone();
        detached(async move { this.retry_now(id).await }).await
    }

    /// The body of [`Self::retry`], run to its end on its own task.
    async fn retry_now(&self, id: Uuid) -> Result<Task, SchedError> {
        let inner = &self.inner;
        if inner.stopping.is_cancelled() {
            return Err(SchedError::ShuttingDown);
        }
        if let Some(t) = inner.hot_task(id) {
            return Err(SchedError::Conflict(format!(
                "task {id} is {}; only failed or cancelled tasks can be retried (use task_cancel to stop it, or task_wait for it to finish)",
                t.status.as_str()
            )));
        }
        let mut t = self.task_or_not_found(id).await?;
        if let Some(w) = t.workflow_id {
            return Err(SchedError::Conflict(format!(
                "task {id} belongs to workflow {w}; a workflow's tasks are not retried one by one once it has ended — create a new workflow to run it again"
            )));
        }
        if !matches!(t.status, TaskStatus::Failed | TaskStatus::Cancelled) {
            return Err(SchedError::Conflict(format!(
                "task {id} is {}; only failed or cancelled tasks can be retried",
                t.status.as_str()
            )));
        }
        let max_concurrency = inner
            .agents
            .load(&t.agent_name)
            .ok()
            .and_then(|a| a.max_concurrency);
        let last_seq = inner
            .store
            .max_log_seqs(vec![id])
            .await?
            .get(&id)
            .copied()
            .unwrap_or(0);
        {
            let mut st = inner.lock();
            if st.hot.contains_key(&id) {
                return Err(SchedError::Conflict(format!(
                    "task {id} is already being retried"
                )));
            }
            st.hot.insert(
                id,
                Hot {
                    task: t.clone(),
                    wait: Wait::Reserved,
                    next_seq: last_seq + 1,
                    max_concurrency,
                    instructions: None,
                },
            );
        }
        let now = now_us();
        t.status = TaskStatus::Pending;
        t.scheduled_us = now;
        t.completed_us = None;
        t.result = None;
        t.error = None;
        t.retry_floor = t.attempt;
        let line = NewLogLine {
            task_id: id,
            seq: last_seq + 1,
            ts_us: now,
            level: "info",
            message: "retried by request; back to pending".into(),
        };
        let res = inner
            .store
            .write(vec![
                WriteOp::UpdateTask(Box::new(t.clone())),
                WriteOp::AppendLogs(vec![line]),
            ])
            .await;
        if let Err(e) = res {
            inner.lock().hot.remove(&id);
            return Err(e.into());
        }
        if let Some(h) = inner.lock().hot.get_mut(&id) {
            h.task = t.clone();
        }
        inner.activate(id).await;
        Ok(t)
    }

    async fn task_or_not_found(&self, id: Uuid) -> Result<Task, SchedError> {
        self.task(id)
            .await?
            .ok_or_else(|| SchedError::NotFound(not_found(id)))
    }

    /// Waits for `any` or all of `ids` to finish, up to `timeout`; returns the tasks (in the
    /// order asked, duplicates removed) and whether the time ran out.
    pub async fn wait(
        &self,
        ids: Vec<Uuid>,
        any: bool,
        timeout: Duration,
    ) -> Result<(Vec<Task>, bool), SchedError> {
        wait::wait(&self.inner, ids, any, timeout).await
    }

    /// Counts of hot tasks: (pending, running).
    pub fn hot_counts(&self) -> (usize, usize) {
        let st = self.inner.lock();
        (
            st.hot.len().saturating_sub(st.running + st.finishing),
            st.running,
        )
    }

    /// Graceful shutdown: stop starting attempts, let running ones finish for `grace`, then stop
    /// them and put them back to pending without using up an attempt. The caller closes the
    /// store afterwards (other components may still write).
    pub async fn shutdown(&self, grace: Duration) {
        let inner = &self.inner;
        inner.stopping.cancel();
        let deadline = tokio::time::Instant::now() + grace;
        while inner.lock().busy() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let handles: Vec<_> = inner
            .lock()
            .hot
            .values()
            .filter_map(|h| match &h.wait {
                Wait::Running(handle) => Some(handle.clone()),
                _ => None,
            })
            .collect();
        if !handles.is_empty() {
            tracing::info!(
                "shutdown grace over; stopping {} running task(s), they will run again at next start",
                handles.len()
            );
        }
        for h in &handles {
            h.stop(STOP_SHUTDOWN);
        }
        let hard = tokio::time::Instant::now()
            + crate::runner::process::KILL_GRACE
            + Duration::from_secs(5);
        while inner.lock().busy() && tokio::time::Instant::now() < hard {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

pub(crate) fn not_found(id: Uuid) -> String {
    format!("unknown task_id {id}: no such task (list_tasks shows the tasks there are)")
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug; keep serving rather than cascade.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn hot_task(&self, id: Uuid) -> Option<Task> {
        let st = self.lock();
        st.hot
            .get(&id)
            .filter(|h| !matches!(h.wait, Wait::Reserved))
            .map(|h| h.task.clone())
    }

    /// Refuses dependencies that do not exist or have already failed or been cancelled.
    async fn check_dependencies(&self, task: &Task) -> Result<(), SchedError> {
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
        for dep in &cold {
            match found.iter().find(|t| t.id == *dep) {
                None => {
                    return Err(SchedError::Invalid(format!(
                        "dependencies: task {dep} does not exist; list only task ids returned by task_async"
                    )))
                }
                Some(t) if matches!(t.status, TaskStatus::Failed | TaskStatus::Cancelled) => {
                    return Err(SchedError::Invalid(format!(
                        "dependencies: task {dep} ({}) is {}, so this task could never start; task_retry it first or leave it out",
                        t.name,
                        t.status.as_str()
                    )))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Makes a reserved (just committed) task schedulable: registers it with the dependencies
    /// still hot, and settles those that are not by their stored (final) status.
    async fn activate(self: &Arc<Self>, id: Uuid) {
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
    async fn settle_cold_dependencies(self: &Arc<Self>, deps: Vec<Uuid>) {
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
                let (status, name) = status.unwrap_or((TaskStatus::Cancelled, "?".into()));
                cascade.extend(self.settle_dependents(&mut st, dep, &name, status));
            }
        }
        self.commit(cascade).await;
    }

    /// A dependency reached a terminal `status`: frees or cancels the tasks waiting on it.
    /// Returns the cancellations to commit.
    fn settle_dependents(
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
    fn commit(self: &Arc<Self>, mut batch: Vec<Transition>) -> dispatch::BoxedUnit<'_> {
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
    fn ops_for(st: &mut State, batch: &[Transition]) -> Vec<WriteOp> {
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
            if let Some(ev) = crate::notifier::events::task_event(&tr.task, now) {
                ops.push(WriteOp::InsertWebhookEvent(Box::new(ev)));
            }
        }
        ops.push(WriteOp::AppendLogs(lines));
        ops
    }

    /// Writes `ops`, retrying a failing disk for a while: memory must not run ahead of the
    /// store. If the store stays broken (or has closed at shutdown) the change is applied to
    /// memory anyway and crash recovery reconciles at the next start.
    async fn write_with_retries(&self, ops: Vec<WriteOp>) -> bool {
        let mut delay = Duration::from_millis(50);
        for _ in 0..8 {
            match self.store.write(ops.clone()).await {
                Ok(_) => return true,
                Err(StoreError::Closed) => return false,
                Err(e) => {
                    tracing::error!("could not commit task state ({e}); retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
        false
    }

    /// Memory catches up with a committed transition. Returns cascaded cancellations.
    fn apply_committed(&self, st: &mut State, tr: Transition) -> Vec<Transition> {
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
    async fn await_terminal(
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
