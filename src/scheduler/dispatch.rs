//! Starting tasks and running one attempt each.
//!
//! The dispatcher sleeps until it is woken (a task became ready, a worker became free) or the
//! next timer is due; there is no polling interval between a submit and a start.

use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use super::state::{RunHandle, Wait, STOP_TIMEOUT};
use super::{outcome, Inner, Transition};
use crate::agents::AgentDef;
use crate::model::{now_us, NewLogLine, Task, TaskStatus};
use crate::runner::{process, RunContext, RunJob, RunOutcome, Runner};
use crate::store::{StoreError, WriteOp};

/// How long a process runs before its process group is written to the store.
const RECORD_PID_AFTER: Duration = Duration::from_millis(200);

/// The boxed future of `Inner::commit` (it recurses through workflows).
pub(super) type BoxedUnit<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;

pub(super) async fn dispatcher(inner: Arc<Inner>) {
    loop {
        if inner.stopping.is_cancelled() {
            break;
        }
        let (to_start, next_timer) = {
            let mut st = inner.lock();
            let next = st.promote_due(now_us());
            let mut to_start = Vec::new();
            while st.running < inner.cfg.workers {
                match st.take_next() {
                    Some(job) => to_start.push(job),
                    None => break,
                }
            }
            (to_start, next)
        };
        for (task, handle) in to_start {
            tokio::spawn(run_attempt(inner.clone(), task, handle));
        }
        let sleep = async {
            match next_timer {
                Some(at) => {
                    let wait_us = (at - now_us()).max(0) as u64;
                    tokio::time::sleep(Duration::from_micros(wait_us)).await
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = inner.stopping.cancelled() => break,
            _ = inner.wake.notified() => {}
            _ = sleep => {}
        }
    }
    tracing::debug!("dispatcher stopped");
}

impl Inner {
    /// The agents a task can use: the search path it was submitted with (its session's), or
    /// the engine's own for a task that recorded none.
    pub(crate) fn agents_for(&self, t: &Task) -> crate::agents::AgentRegistry {
        self.agents.with_search_path(t.agents_dir.as_deref())
    }

    /// Queues a log line for a hot task (written with the next group commit).
    pub(super) fn log(&self, id: Uuid, level: &'static str, message: String) {
        let seq = self.lock().next_seq(id);
        if let Some(seq) = seq {
            self.store
                .write_later(vec![WriteOp::AppendLogs(vec![NewLogLine {
                    task_id: id,
                    seq,
                    ts_us: now_us(),
                    level,
                    message,
                }])]);
        }
    }
}

/// The instructions of a task whose instructions are not in memory. A store that cannot answer
/// now because its tables cannot be written (a full disk) is asked again until it can: the task
/// is not to blame. Stopped meanwhile (cancel, shutdown), the attempt goes on without them:
/// it sees the stop before anything runs and ends as stopped.
async fn stored_instructions(
    inner: &Inner,
    id: Uuid,
    stop: &tokio_util::sync::CancellationToken,
) -> Result<String, String> {
    let mut pause = Duration::from_millis(100);
    loop {
        match inner.store.instructions(id).await {
            Ok(Some(i)) => return Ok(i),
            Ok(None) => return Err(format!("task {id} has no stored instructions")),
            Err(e @ StoreError::Unavailable(_)) => {
                tracing::warn!(task_id = %id, "cannot read the task's instructions yet ({e}); trying again in {pause:?}");
                tokio::select! {
                    _ = stop.cancelled() => return Ok(String::new()),
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// One attempt: reload the agent, commit `running`, run, commit the outcome.
async fn run_attempt(inner: Arc<Inner>, task: Task, handle: RunHandle) {
    let id = task.id;
    // The agent file is read again at start, so an edited agent takes effect without a restart.
    let agents = inner.agents_for(&task);
    let loaded = match agents.load_parsed(&task.agent_name) {
        Some(agent) => Ok(agent),
        None => {
            let agent_name = task.agent_name.clone();
            tokio::task::spawn_blocking(move || agents.load(&agent_name))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()))
        }
    }
    .and_then(|agent| {
        inner
            .runners
            .for_agent(&agent)
            .map(|runner| (agent, runner))
    });
    let cached = inner
        .lock()
        .hot
        .get(&id)
        .and_then(|h| h.instructions.clone());
    let instructions = match cached {
        Some(i) => Ok(i.to_string()),
        None => stored_instructions(&inner, id, &handle.cancel).await,
    };
    let (agent, runner, instructions) = match (loaded, instructions) {
        (Ok((a, r)), Ok(i)) => (a, r, i),
        (Err(e), _) | (_, Err(e)) => {
            let mut t = task;
            t.status = TaskStatus::Failed;
            t.completed_us = Some(now_us());
            let msg = format!("could not start: {e}");
            t.error = Some(msg.clone());
            inner.lock().end_attempt(&t);
            inner
                .commit(vec![Transition {
                    task: t.clone(),
                    logs: vec![("error", msg)],
                }])
                .await;
            inner.lock().outcome_committed(&t);
            return;
        }
    };
    if let Some(h) = inner.lock().hot.get_mut(&id) {
        h.max_concurrency = agent.max_concurrency;
    }
    // A workflow task sees the results of the phases before its own.
    let upstream = inner.upstream_results(&task).await;
    let (instructions, note) = super::workflow::with_upstream(instructions, &upstream);
    if let Some(note) = note {
        inner.log(id, "info", note);
    }

    let running = started(&task);
    let started = inner
        .store
        .write(vec![WriteOp::UpdateTask(Box::new(running.clone()))])
        .await;
    if let Err(e) = started {
        // Nothing ran and nothing durable changed: back to the queue.
        tracing::error!(task_id = %id, "could not record the start ({e}); requeueing");
        let mut st = inner.lock();
        st.release_worker(&task);
        st.enqueue(id, now_us() + 1_000_000);
        return;
    }
    if let Some(h) = inner.lock().hot.get_mut(&id) {
        h.task = running.clone();
    }
    run_started(
        inner,
        Started {
            task: running,
            handle,
            agent,
            runner,
            instructions,
        },
    )
    .await;
}

/// `task` as its next attempt starts.
pub(super) fn started(task: &Task) -> Task {
    let mut running = task.clone();
    running.status = TaskStatus::Running;
    running.attempt += 1;
    running.started_us = Some(now_us());
    running.completed_us = None;
    running.result = None;
    running.error = None;
    running.pid = None;
    running.pid_start = None;
    running
}

/// An attempt whose start (`running`) is durable, with everything it runs with.
pub(super) struct Started {
    pub task: Task,
    pub handle: RunHandle,
    pub agent: AgentDef,
    pub runner: Arc<dyn Runner>,
    pub instructions: String,
}

/// The rest of an attempt once its start is durable: run it under its timeout, close its
/// worktree, commit the outcome.
pub(super) async fn run_started(inner: Arc<Inner>, s: Started) {
    let Started {
        task: running,
        handle,
        agent,
        runner,
        instructions,
    } = s;
    let id = running.id;
    // The log line is not part of the awaited commit: the process starts one appender sooner,
    // and the line joins the next group.
    inner.log(
        id,
        "info",
        format!(
            "attempt {} started (runner {}, timeout {}s)",
            running.attempt, agent.runner, running.timeout_seconds
        ),
    );

    let log_inner = inner.clone();
    let pid_inner = inner.clone();
    let ctx = RunContext {
        cancel: handle.cancel.clone(),
        log: Arc::new(move |level, message| log_inner.log(id, level, message)),
        on_spawn: Arc::new(move |pid| {
            if let Some(h) = pid_inner.lock().hot.get_mut(&id) {
                h.task.pid = Some(pid);
                // Until read for this process (an attempt's `worktree_setup` ran before it).
                h.task.pid_start = None;
            }
            // The process group is recorded only once the process has lived a while: DuckDB
            // charges about a millisecond per updated row, and most short tasks would pay it
            // for nothing. A younger orphan is found by its ORCHESTR8_TASK_ID (runner::orphans).
            let inner = pid_inner.clone();
            tokio::spawn(async move {
                tokio::time::sleep(RECORD_PID_AFTER).await;
                // The start time, which tells this process from a later one with the same pid,
                // is read only now, for the few processes that live this long. A process that
                // has gone meanwhile has none, and is not recorded; its pid cannot have been
                // given to another yet (the kernel goes through every free pid first).
                let Some(pid_start) = process::start_time(pid) else {
                    return;
                };
                // Sent under the lock: the attempt's end marks the task `Finishing` under the
                // same lock before it queues its own write, so this never lands after it.
                let mut st = inner.lock();
                let running = st
                    .hot
                    .get_mut(&id)
                    .filter(|h| matches!(h.wait, Wait::Running(_)) && h.task.pid == Some(pid));
                if let Some(h) = running {
                    h.task.pid_start = Some(pid_start);
                    inner
                        .store
                        .write_later(vec![WriteOp::UpdateTask(Box::new(h.task.clone()))]);
                }
            });
        }),
    };
    let setup = agent.worktree_setup.clone();
    let job = RunJob {
        task_id: id,
        task_name: running.name.clone(),
        agent,
        instructions,
        attempt: running.attempt,
        workflow_id: running.workflow_id,
        phase_id: running.phase_id.clone(),
        // Its own directory, else its session's; a task from neither runs in the engine's.
        working_dir: running
            .working_dir
            .clone()
            .map(Into::into)
            .or_else(|| running.project.as_deref().map(Into::into)),
        instance: Arc::from(inner.cfg.instance.as_str()),
    };
    let timeout = Duration::from_secs(u64::from(running.timeout_seconds));
    let (opened, outcome) = if handle.cancel.is_cancelled() {
        (None, RunOutcome::Stopped)
    } else {
        // An isolated attempt's worktree is prepared within the attempt's time and
        // cancellation, like the agent itself.
        let attempt = async {
            let mut job = job;
            let mut opened = None;
            if let Some(ws) = running.workspace.clone() {
                let (ws, cwd) = inner
                    .open_workspace(&running, ws, setup.as_deref(), &job, &ctx)
                    .await;
                opened = Some(ws);
                match cwd {
                    Ok(dir) => job.working_dir = Some(dir),
                    Err(outcome) => return (opened, outcome),
                }
            }
            (opened, runner.run(job, ctx).await)
        };
        tokio::pin!(attempt);
        tokio::select! {
            o = &mut attempt => o,
            _ = tokio::time::sleep(timeout) => {
                handle.stop(STOP_TIMEOUT);
                attempt.await
            }
        }
    };
    // Whatever the agent left in its worktree is kept on its branch before the outcome counts.
    let closed = match opened {
        Some(ws) => Some(inner.close_workspace(&running, ws).await),
        None => None,
    };
    let mut current = inner
        .lock()
        .hot
        .get(&id)
        .map(|h| h.task.clone())
        .unwrap_or(running);
    if let Some(ws) = closed {
        current.workspace = Some(ws);
    }
    let mut tr = outcome::settle(
        current,
        outcome,
        handle.reason(),
        inner.cfg.retry_backoff_base_ms,
        now_us(),
    );
    super::isolation::note_workspace(&mut tr.task);
    let ended = tr.task.clone();
    inner.lock().end_attempt(&ended);
    inner.wake.notify_one();
    // Outcome, dependents and workflow steps are all durable before shutdown may close the
    // store.
    inner.commit(vec![tr]).await;
    inner.lock().outcome_committed(&ended);
}
