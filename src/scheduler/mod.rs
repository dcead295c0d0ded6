//! The scheduler: owns every state change of a task after it is accepted.
//!
//! Hot tasks (pending, running) live in memory ([`state::State`]); the store is the durable
//! record. The invariant that keeps them consistent: **memory changes only after the store has
//! committed**. A task becomes visible, runnable, running or finished in memory only once that
//! state is durable, so nothing a client has seen can be lost by a kill -9, and a read of the
//! store is never behind what memory has told anyone.
//!
//! Submodules: `transitions` commits state changes and applies them to memory; `dispatch`
//! starts ready tasks and runs attempts; `recovery` rebuilds the state at start (crash
//! recovery); `wait` implements `task_wait`; `workflow` and `phases` drive workflows.

mod dispatch;
pub mod interrupted;
pub(crate) mod isolation;
pub mod outcome;
pub mod phases;
mod prune;
mod recovery;
pub mod state;
mod transitions;
mod wait;
pub(crate) mod workflow;

pub use prune::PRUNE_BATCH;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, Notify};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::agents::{AgentDef, AgentRegistry};
use crate::model::{now_us, NewLogLine, Task, TaskStatus};
use crate::notifier::Notifier;
use crate::runner::Runners;
use crate::store::{OpOutcome, Store, StoreError, WriteOp};
use crate::workspace::Workspaces;
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
    /// How long finished work is kept before the pruner removes it (`None`: for ever).
    pub retention: Option<std::time::Duration>,
}

/// A state change on its way to the store, with the log lines that explain it.
#[derive(Debug)]
pub struct Transition {
    pub task: Task,
    pub logs: Vec<(&'static str, String)>,
}

pub(crate) struct Inner {
    cfg: SchedConfig,
    store: Arc<Store>,
    agents: AgentRegistry,
    runners: Runners,
    /// The git worktrees of isolated tasks.
    workspaces: Arc<Workspaces>,
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
    /// Held by a prune from its choice to its removal being folded, and by `task_retry`, so a
    /// task being brought back is never removed under it.
    prune_lock: tokio::sync::Mutex<()>,
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
    /// Recovers the state a previous engine left and starts dispatching.
    pub async fn start(
        cfg: SchedConfig,
        store: Arc<Store>,
        agents: AgentRegistry,
        runners: Runners,
        workspaces: Arc<Workspaces>,
        notifier: Arc<dyn Notifier>,
    ) -> Result<Scheduler, SchedError> {
        let (terminal, _) = broadcast::channel(4096);
        let inner = Arc::new(Inner {
            cfg,
            store,
            agents,
            runners,
            workspaces,
            notifier,
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            terminal,
            stopping: CancellationToken::new(),
            wf_lock: tokio::sync::Mutex::new(()),
            prune_lock: tokio::sync::Mutex::new(()),
        });
        recovery::recover(&inner).await?;
        // Interrupted attempts' worktrees were closed by recovery; whatever else a dead engine
        // left (a worktree half made) goes before any task starts.
        for line in inner.workspaces.sweep().await {
            tracing::warn!("{line}");
        }
        tokio::spawn(dispatch::dispatcher(inner.clone()));
        Ok(Scheduler { inner })
    }

    pub fn agents(&self) -> &AgentRegistry {
        &self.inner.agents
    }

    pub fn runners(&self) -> &Runners {
        &self.inner.runners
    }

    pub fn workspaces(&self) -> &Arc<Workspaces> {
        &self.inner.workspaces
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

    /// Several tasks, in the order asked (unknown ids left out): hot ones from memory, the
    /// others in one store read.
    pub async fn tasks(&self, ids: &[Uuid]) -> Result<Vec<Task>, SchedError> {
        let mut found: std::collections::HashMap<Uuid, Task> = std::collections::HashMap::new();
        let mut cold = Vec::new();
        for id in ids {
            match self.inner.hot_task(*id) {
                Some(t) => {
                    found.insert(*id, t);
                }
                None => cold.push(*id),
            }
        }
        if !cold.is_empty() {
            for t in self.inner.store.tasks(cold).await? {
                found.insert(t.id, t);
            }
        }
        Ok(ids.iter().filter_map(|id| found.remove(id)).collect())
    }

    /// Accepts a new task: durable before this returns.
    ///
    /// `agent` is the task's agent as the caller just loaded and checked it. A task that can start
    /// at once (nothing queued ahead of it, a worker free) starts with it: its start is written
    /// in the same record as its insert, so it costs one sync rather than two, and it skips the
    /// dispatcher. It is still answered as accepted (`pending`): the process starts as the
    /// answer goes out.
    pub async fn submit(
        &self,
        task: Task,
        instructions: String,
        agent: AgentDef,
    ) -> Result<Submitted, SchedError> {
        let this = self.clone();
        detached(async move { this.submit_now(task, instructions, agent).await }).await
    }

    /// The body of [`Self::submit`], run to its end on its own task.
    async fn submit_now(
        &self,
        task: Task,
        instructions: String,
        agent: AgentDef,
    ) -> Result<Submitted, SchedError> {
        let inner = &self.inner;
        if inner.stopping.is_cancelled() {
            return Err(SchedError::ShuttingDown);
        }
        inner.check_dependencies(&task).await?;
        let id = task.id;
        let max_concurrency = agent.max_concurrency;
        // The runner is known to take this agent (the caller checked); should that have
        // changed, the task takes the usual path, where the attempt says why it cannot start.
        let runner = inner.runners.for_agent(&agent).ok();
        let cached = (instructions.len() <= state::CACHED_INSTRUCTIONS_BYTES)
            .then(|| Arc::<str>::from(instructions.as_str()));
        let at_once = {
            let mut st = inner.lock();
            // Tasks whose time has come are queued first, so a new task never overtakes them.
            let now = now_us();
            st.promote_due(now);
            let at_once = runner.is_some()
                && st.claim_at_submit(&task, max_concurrency, inner.cfg.workers, now);
            st.hot.insert(
                id,
                Box::new(Hot {
                    task: task.clone(),
                    wait: Wait::Reserved,
                    next_seq: 0,
                    max_concurrency,
                    instructions: cached,
                }),
            );
            at_once.then(|| dispatch::started(&task))
        };
        // One record: an insert refused for its idempotency key takes the start with it.
        let kept = at_once.as_ref().map(|_| instructions.clone());
        let mut ops = vec![WriteOp::InsertTask {
            task: Box::new(task.clone()),
            instructions,
        }];
        if let Some(running) = &at_once {
            ops.push(WriteOp::UpdateTask(Box::new(running.clone())));
        }
        let written = inner.store.write(ops).await;
        let existing = match &written {
            Ok(outcomes) => match outcomes.first().copied() {
                Some(OpOutcome::Existing(existing)) => Some(existing),
                _ => None,
            },
            Err(_) => None,
        };
        if written.is_err() || existing.is_some() {
            // Nothing was inserted: the reservation and the worker slot go back.
            {
                let mut st = inner.lock();
                st.hot.remove(&id);
                if at_once.is_some() {
                    st.release_worker(&task);
                }
            }
            if at_once.is_some() {
                inner.wake.notify_one();
            }
            written?;
        }
        if let Some(existing) = existing {
            let t = self
                .task(existing)
                .await?
                .ok_or_else(|| SchedError::NotFound(format!("task {existing} vanished")))?;
            return Ok(Submitted::Existing(t));
        }
        crate::metrics::task_submitted(&task.agent_name);
        match (at_once, runner, kept) {
            (Some(running), Some(runner), Some(instructions)) => {
                let handle = state::RunHandle::default();
                {
                    let mut st = inner.lock();
                    if let Some(h) = st.hot.get_mut(&id) {
                        h.task = running.clone();
                        h.wait = Wait::Running(handle.clone());
                    }
                    // Shutdown stops the attempts it finds running; one marked running after
                    // it looked stops here, before anything runs (and is not counted).
                    if inner.stopping.is_cancelled() {
                        handle.stop(STOP_SHUTDOWN);
                    }
                }
                let started = dispatch::Started {
                    task: running,
                    handle,
                    agent,
                    runner,
                    instructions,
                };
                tokio::spawn(dispatch::run_started(inner.clone(), started));
            }
            _ => inner.activate(id).await,
        }
        Ok(Submitted::Created(task))
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
                return Err(cancel_in_workflow(id, w));
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
                Err(cancel_ended(&t))
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
        let _not_pruned_meanwhile = inner.prune_lock.lock().await;
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
        // A dependency removed by retention cannot say how it ended: had it failed, this task
        // would run although it should not, so the retry is refused.
        if !t.dependencies.is_empty() {
            let found = inner.store.tasks(t.dependencies.clone()).await?;
            if let Some(gone) = t
                .dependencies
                .iter()
                .find(|d| !found.iter().any(|f| f.id == **d))
            {
                return Err(SchedError::Conflict(format!(
                    "task {id} depends on task {gone}, which has been removed (retention, ORCHESTR8_RETENTION); submit the work again as a new task without that dependency"
                )));
            }
        }
        let max_concurrency = inner
            .agents_for(&t)
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
                Box::new(Hot {
                    task: t.clone(),
                    wait: Wait::Reserved,
                    next_seq: last_seq + 1,
                    max_concurrency,
                    instructions: None,
                }),
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

    /// The database this scheduler runs (its canonical path).
    pub fn instance(&self) -> &str {
        &self.inner.cfg.instance
    }

    /// The configured number of workers.
    pub fn workers(&self) -> usize {
        self.inner.cfg.workers
    }

    /// Counts of hot tasks: (pending, running).
    pub fn hot_counts(&self) -> (usize, usize) {
        let st = self.inner.lock();
        (
            st.hot.len().saturating_sub(st.running + st.finishing),
            st.running,
        )
    }

    /// Whether an engine should stay up for the tasks: any task is pending (ready, waiting
    /// for its dependencies, its `run_at` or a retry back-off, or held at its workflow phase's
    /// gate) or running. A task due in an hour thus runs in an hour with no session open.
    pub fn in_flight(&self) -> bool {
        !self.inner.lock().hot.is_empty()
    }

    /// Graceful shutdown: stop starting attempts, let running ones finish for `grace`, then stop
    /// them and put them back to pending without using up an attempt. The caller closes the
    /// store afterwards (other components may still write).
    pub async fn shutdown(&self, grace: Duration) {
        let inner = &self.inner;
        inner.stopping.cancel();
        stop_after_grace(
            grace,
            || inner.lock().busy(),
            || {
                inner
                    .lock()
                    .hot
                    .values()
                    .filter_map(|h| match &h.wait {
                        Wait::Running(handle) => Some(handle.clone()),
                        _ => None,
                    })
                    .collect()
            },
            "they will run again at next start",
        )
        .await;
    }
}

/// The end of a graceful shutdown, alike for the single engine and a cluster node: attempts
/// get `grace` to end by themselves, then are stopped (their tasks go back to pending without
/// using up an attempt: `then` says who runs them), and are waited for a while longer.
pub(crate) async fn stop_after_grace(
    grace: Duration,
    busy: impl Fn() -> bool,
    running: impl Fn() -> Vec<state::RunHandle>,
    then: &str,
) {
    let deadline = tokio::time::Instant::now() + grace;
    while busy() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let handles = running();
    if !handles.is_empty() {
        tracing::info!(
            "shutdown grace over; stopping {} running task(s), {then}",
            handles.len()
        );
    }
    for h in &handles {
        h.stop(STOP_SHUTDOWN);
    }
    let hard =
        tokio::time::Instant::now() + crate::runner::process::KILL_GRACE + Duration::from_secs(5);
    while busy() && tokio::time::Instant::now() < hard {
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub(crate) fn not_found(id: Uuid) -> String {
    format!("unknown task_id {id}: no such task (list_tasks shows the tasks there are)")
}

/// The refusal of a wait for ids that name no task.
pub(crate) fn unknown_ids(missing: &[Uuid]) -> SchedError {
    let listed: Vec<String> = missing.iter().take(5).map(Uuid::to_string).collect();
    SchedError::NotFound(format!(
        "unknown task_ids: {}{}; pass ids returned by task_async",
        listed.join(", "),
        if missing.len() > 5 {
            format!(" and {} more", missing.len() - 5)
        } else {
            String::new()
        }
    ))
}

/// The refusal of a cancel of one task of a running workflow.
pub(crate) fn cancel_in_workflow(id: Uuid, workflow: Uuid) -> SchedError {
    SchedError::Conflict(format!(
        "task {id} belongs to workflow {workflow}, whose tasks are cancelled together: use workflow_cancel"
    ))
}

/// The refusal of a cancel of a task that has ended.
pub(crate) fn cancel_ended(t: &Task) -> SchedError {
    SchedError::Conflict(format!(
        "task {} is already {}; only pending or running tasks can be cancelled",
        t.id,
        t.status.as_str()
    ))
}

/// Refuses dependencies that are not among `found` (the tasks that exist of them) or have
/// already failed or been cancelled: such a task could never start.
pub(crate) fn check_dependencies(deps: &[Uuid], found: &[Task]) -> Result<(), SchedError> {
    for dep in deps {
        match found.iter().find(|t| t.id == *dep) {
            None => {
                return Err(SchedError::NotFound(format!(
                    "dependencies: task {dep} does not exist; list only task ids returned by task_async"
                )))
            }
            Some(t) if matches!(t.status, TaskStatus::Failed | TaskStatus::Cancelled) => {
                return Err(SchedError::Conflict(format!(
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
