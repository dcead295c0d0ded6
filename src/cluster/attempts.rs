//! A node at work: the claim loop, one attempt's life, and the log lines on their way to the
//! database.
//!
//! The loop claims up to its free workers whenever it is woken (a task submitted here, tasks
//! made ready elsewhere — the database's notification —, an attempt ended) and otherwise every
//! poll period, which is what makes it correct: a task whose notification was missed is found
//! at the next look. The same look finds the cancels requested for its attempts (from any
//! node).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::scheduler::Inner;
use crate::model::Workspace;
use crate::model::{now_us, Task, TaskStatus};
use crate::runner::{RunContext, RunJob, RunOutcome};
use crate::scheduler::isolation::{close_attempt, note_workspace, open_attempt};
use crate::scheduler::outcome;
use crate::scheduler::state::{RunHandle, STOP_CANCEL, STOP_TIMEOUT};
use crate::store::postgres::{ClaimRequest, Ended, LogEntry, Postgres, Recorded};
use crate::store::StoreError;

/// Why an attempt was stopped when the cluster gave its node up: nothing is recorded, the
/// task is the rescuer's.
const STOP_LOST: u8 = 100;

pub(super) async fn claim_loop(inner: Arc<Inner>) {
    let mut pause = inner.cfg.poll;
    loop {
        if inner.stopping.is_cancelled() || inner.given_up.is_cancelled() {
            break;
        }
        let free = inner.cfg.workers.saturating_sub(inner.running().len());
        let mut more = false;
        if free > 0 {
            let req = ClaimRequest {
                node_id: &inner.me.node_id,
                host: &inner.me.host,
                queues: &inner.me.queues,
                limit: free as u32,
            };
            match inner.db.claim(&req).await {
                Ok(claimed) if inner.given_up.is_cancelled() => {
                    // Given up while claiming: these are the rescuer's now.
                    tracing::warn!(
                        "dropped {} task(s) claimed as the cluster gave this node up",
                        claimed.len()
                    );
                }
                Ok(claimed) => {
                    more = claimed.len() == free;
                    for (task, instructions) in claimed {
                        let handle = RunHandle::default();
                        inner.running().insert(task.id, handle.clone());
                        tokio::spawn(attempt(inner.clone(), task, instructions, handle));
                    }
                    pause = inner.cfg.poll;
                }
                Err(e) => {
                    tracing::warn!("could not claim tasks ({e}); trying again in {pause:?}");
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
        if !inner.running().is_empty() {
            match inner.db.cancels_for(&inner.me.node_id).await {
                Ok(ids) => {
                    let running = inner.running();
                    for id in ids {
                        if let Some(h) = running.get(&id) {
                            h.stop(STOP_CANCEL);
                        }
                    }
                }
                Err(e) => tracing::warn!("could not look for cancel requests ({e})"),
            }
        }
        if more {
            continue;
        }
        tokio::select! {
            _ = inner.stopping.cancelled() => {}
            _ = inner.given_up.cancelled() => {}
            _ = inner.wake.notified() => {}
            _ = tokio::time::sleep(pause) => {}
        }
    }
    if inner.given_up.is_cancelled() {
        // The cluster may already be running these tasks elsewhere: stop them now.
        let handles: Vec<RunHandle> = inner.running().values().cloned().collect();
        if !handles.is_empty() {
            tracing::error!(
                "the cluster gave this node up (its lease could not be renewed in time); stopping {} attempt(s), whose tasks run elsewhere",
                handles.len()
            );
        }
        for h in handles {
            h.stop(STOP_LOST);
        }
        // At once, not after a polite SIGTERM: the cluster may start them elsewhere soon.
        let node = inner.me.node_id.clone();
        let _ = tokio::task::spawn_blocking(move || super::warden::sweep(&node)).await;
    }
    tracing::debug!("claim loop stopped");
}

/// One attempt of a claimed task: its agent loaded here, run under its timeout, its end
/// recorded (fenced) with what it sets off.
async fn attempt(inner: Arc<Inner>, task: Task, instructions: String, handle: RunHandle) {
    let id = task.id;
    let attempt_no = task.attempt;
    let prepared = {
        let (inner, task) = (inner.clone(), task.clone());
        tokio::task::spawn_blocking(move || prepare(&inner, &task))
            .await
            .unwrap_or_else(|e| Err(format!("loading the agent failed: {e}")))
    };
    let ended = match prepared {
        Err(e) => {
            // Nothing was started: the attempt is given back.
            let mut next = task.clone();
            next.status = TaskStatus::Failed;
            next.attempt = attempt_no.saturating_sub(1);
            next.completed_us = Some(now_us());
            let msg = format!("could not start: {e}");
            next.error = Some(msg.clone());
            Ended {
                next,
                attempt: attempt_no,
                logs: vec![("error", msg)],
            }
        }
        Ok((mut agent, runner)) => {
            // The node's warden finds the attempt's processes by this, should the node die.
            agent.env.insert(
                super::warden::NODE_ENV.to_string(),
                inner.me.node_id.clone(),
            );
            inner.logs.line(
                id,
                "info",
                format!(
                    "attempt {attempt_no} started on node {} (runner {}, timeout {}s)",
                    inner.me.node_id, agent.runner, task.timeout_seconds
                ),
            );
            // A workflow task sees the results of the phases before its own, and an isolated
            // one starts from their work.
            // Unread (the database did not answer), the attempt does not start without them: it
            // is tried again.
            let (phases, upstream, unread) =
                match super::workflows::upstream_tasks(&inner, &task).await {
                    Ok((phases, upstream)) => (phases, upstream, None),
                    Err(e) => (Vec::new(), Vec::new(), Some(e)),
                };
            let (instructions, note) = crate::scheduler::workflow::with_upstream(
                instructions,
                &crate::scheduler::workflow::format_upstream(&phases, &upstream),
            );
            if let Some(note) = note {
                inner.logs.line(id, "info", note);
            }
            let sink = inner.logs.clone();
            let ctx = RunContext {
                cancel: handle.cancel.clone(),
                log: Arc::new(move |level, message| sink.line(id, level, message)),
                on_spawn: Arc::new(|_pid| {}),
            };
            let setup = agent.worktree_setup.clone();
            let job = RunJob {
                task_id: id,
                task_name: task.name.clone(),
                agent,
                instructions,
                attempt: attempt_no,
                workflow_id: task.workflow_id,
                phase_id: task.phase_id.clone(),
                working_dir: task
                    .working_dir
                    .clone()
                    .map(Into::into)
                    .or_else(|| task.project.as_deref().map(Into::into)),
                instance: Arc::from(inner.cfg.instance.as_str()),
            };
            let timeout = Duration::from_secs(u64::from(task.timeout_seconds));
            // An isolated attempt's worktree is prepared within the attempt's time and
            // cancellation, like the agent itself.
            let (opened, outcome) = {
                let run = async {
                    if let Some(e) = unread {
                        return (
                            None,
                            RunOutcome::retryable(format!(
                                "could not read the results of the earlier phases: {e}"
                            )),
                        );
                    }
                    let mut job = job;
                    let Some(ws) = task.workspace.clone() else {
                        return (None, runner.run(job, ctx).await);
                    };
                    let record = |ws: Workspace| record_workspace(&inner, &task, ws);
                    let (ws, cwd) = open_attempt(
                        &inner.workspaces,
                        &task,
                        ws,
                        upstream,
                        record,
                        setup.as_deref(),
                        &job,
                        &ctx,
                    )
                    .await;
                    match cwd {
                        Ok(dir) => job.working_dir = Some(dir),
                        Err(outcome) => return (Some(ws), outcome),
                    }
                    (Some(ws), runner.run(job, ctx).await)
                };
                tokio::pin!(run);
                tokio::select! {
                    o = &mut run => o,
                    _ = tokio::time::sleep(timeout) => {
                        handle.stop(STOP_TIMEOUT);
                        run.await
                    }
                    _ = inner.given_up.cancelled() => {
                        handle.stop(STOP_LOST);
                        run.await
                    }
                }
            };
            let lost = |inner: &Inner| {
                // The task is the rescuer's: its worktree stays as it is, for its next attempt
                // (on this machine) to close, keeping what it holds — never closed here while
                // that attempt may be opening it.
                inner.running().remove(&id);
                inner.wake.notify_one();
            };
            // Given up after the agent ended: its end may still land (fenced) unless there is
            // a worktree to close, which the next attempt may be taking over already.
            if handle.reason() == STOP_LOST || (opened.is_some() && inner.given_up.is_cancelled()) {
                return lost(&inner);
            }
            // Whatever the agent left in its worktree is kept on its branch before the outcome
            // counts.
            let mut current = task;
            if let Some(ws) = opened {
                let log = |level, message| inner.logs.line(id, level, message);
                tokio::select! {
                    ws = close_attempt(&inner.workspaces, &current, ws, log) => {
                        current.workspace = Some(ws);
                    }
                    // Its git commands are stopped with it.
                    _ = inner.given_up.cancelled() => return lost(&inner),
                }
            }
            let mut tr = outcome::settle(
                current,
                outcome,
                handle.reason(),
                inner.cfg.retry_backoff_base_ms,
                now_us(),
            );
            note_workspace(&mut tr.task);
            Ended {
                next: tr.task,
                attempt: attempt_no,
                logs: tr.logs,
            }
        }
    };
    // The attempt's own lines go first, so the log reads in order.
    inner.logs.flush().await;
    match record(&inner, ended).await {
        Some((Recorded::Done, next)) => {
            tracing::debug!(task_id = %id, status = next.status.as_str(), "attempt recorded");
            tell_if_ended(&inner, next).await;
        }
        Some((Recorded::Fenced, _)) => tracing::warn!(
            task_id = %id,
            "the end of attempt {attempt_no} was not recorded: the cluster had given the task to another node"
        ),
        None => {}
    }
    inner.running().remove(&id);
    inner.wake.notify_one();
}

/// Records an attempt's workspace before its worktree is made (fenced to the attempt), so
/// that the next attempt, should this one's node die, closes it against the right base.
async fn record_workspace(inner: &Inner, task: &Task, ws: Workspace) -> Result<(), String> {
    let json =
        serde_json::to_value(&ws).map_err(|e| format!("could not record the worktree: {e}"))?;
    match inner
        .db
        .record_workspace(&inner.me.node_id, task.id, task.attempt, &json)
        .await
    {
        Ok(true) => Ok(()),
        Ok(false) => Err("the cluster gave the task to another node".to_string()),
        Err(e) => Err(format!("could not record the worktree: {e}")),
    }
}

/// Tells the notifier of a recorded end that left the task terminal. An end recorded as a
/// retry may have been turned into a cancel (one was asked for meanwhile): that one is read
/// back to tell.
async fn tell_if_ended(inner: &Inner, next: Task) {
    let task = if next.status.is_terminal() {
        Some(next)
    } else {
        match inner.db.task(next.id).await {
            Ok(found) => found.map(|(t, _)| t).filter(|t| t.status.is_terminal()),
            Err(e) => {
                tracing::debug!(task_id = %next.id, "could not read the recorded end back ({e})");
                None
            }
        }
    };
    if let Some(t) = task {
        crate::metrics::task_finished(&t);
        inner.notifier.task_finished(&t);
        // Its workflow may take a step now: here, at once, under the workflow's lock.
        if let Some(w) = t.workflow_id {
            let stepped = super::workflows::advance(&inner.db, &*inner.notifier, w).await;
            if stepped.opened || stepped.stopping {
                inner.wake.notify_one();
            }
        }
    }
}

/// The task's agent, read again here (an edited file takes effect), and its runner.
fn prepare(
    inner: &Inner,
    task: &Task,
) -> Result<(crate::agents::AgentDef, Arc<dyn crate::runner::Runner>), String> {
    let agents = inner.agents.with_search_path(task.agents_dir.as_deref());
    let agent = match agents.load_parsed(&task.agent_name) {
        Some(a) => a,
        None => agents.load(&task.agent_name).map_err(|e| e.to_string())?,
    };
    let runner = inner.runners.for_agent(&agent)?;
    runner.check(&agent)?;
    Ok((agent, runner))
}

/// PostgreSQL's text cannot hold NUL: an agent that prints one must not make its end
/// unrecordable.
fn storable(s: &mut Option<String>) {
    if let Some(v) = s.as_mut().filter(|v| v.contains('\0')) {
        *v = v.replace('\0', "\u{FFFD}");
    }
}

/// Records an end, trying again while the database is unreachable: the outcome is kept until
/// it lands, or until the node is given up (then the rescuer settles the task) or, stopping,
/// has tried a few times. An end the database refuses as it is (a value it cannot store) is
/// recorded as a failure that says so. Returns what was recorded, and the task's state as sent.
async fn record(inner: &Inner, mut ended: Ended) -> Option<(Recorded, Task)> {
    storable(&mut ended.next.result);
    storable(&mut ended.next.error);
    let mut pause = Duration::from_millis(50);
    let mut tries_while_stopping = 0;
    loop {
        match inner
            .db
            .finish(&inner.me.node_id, std::slice::from_ref(&ended))
            .await
        {
            Ok(r) => return r.first().map(|r| (*r, ended.next)),
            Err(e @ (StoreError::Unexpected(_) | StoreError::Conflict(_)))
                if ended.next.result.is_some() || ended.next.metadata.is_some() =>
            {
                tracing::error!(task_id = %ended.next.id, "the database refused the attempt's end ({e}); recording it as a failure");
                let why = format!("its outcome could not be stored: {e}");
                ended.next.status = crate::model::TaskStatus::Failed;
                ended.next.completed_us = Some(now_us());
                ended.next.result = None;
                ended.next.metadata = None;
                ended.next.error = Some(why.clone());
                ended.logs = vec![("error", why)];
            }
            Err(e) => {
                if inner.given_up.is_cancelled() {
                    tracing::error!(task_id = %ended.next.id, "could not record the attempt's end before the cluster gave this node up ({e}); it is the rescuer's now");
                    return None;
                }
                if inner.stopping.is_cancelled() {
                    tries_while_stopping += 1;
                    if tries_while_stopping > 4 {
                        tracing::error!(task_id = %ended.next.id, "could not record the attempt's end before stopping ({e}); the cluster rescues the task");
                        return None;
                    }
                }
                tracing::warn!(task_id = %ended.next.id, "could not record the attempt's end ({e}); trying again in {pause:?}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        }
    }
}

enum Sinked {
    Line(LogEntry),
    Flush(oneshot::Sender<()>),
}

/// Log lines of this node's attempts, written in batches by one background task, in the order
/// they were made.
#[derive(Clone)]
pub(super) struct LogSink {
    tx: mpsc::UnboundedSender<Sinked>,
}

/// Most lines one write carries.
const LOG_BATCH: usize = 500;

impl LogSink {
    pub fn start(db: Postgres) -> LogSink {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_logs(db, rx));
        LogSink { tx }
    }

    pub fn line(&self, task_id: Uuid, level: &'static str, mut message: String) {
        if message.contains('\0') {
            message = message.replace('\0', "\u{FFFD}");
        }
        let _ = self.tx.send(Sinked::Line(LogEntry {
            task_id,
            level,
            message,
        }));
    }

    /// Returns once every line sent before is written (or given up on).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Sinked::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

async fn write_logs(db: Postgres, mut rx: mpsc::UnboundedReceiver<Sinked>) {
    let mut lines = Vec::new();
    let mut flushes = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(item) = next.take() {
            match item {
                Sinked::Line(l) => lines.push(l),
                Sinked::Flush(f) => flushes.push(f),
            }
            if lines.len() < LOG_BATCH {
                next = rx.try_recv().ok();
            }
        }
        write_batch(&db, &lines).await;
        lines.clear();
        for f in flushes.drain(..) {
            let _ = f.send(());
        }
    }
}

/// Writes one batch, trying a few times: log lines are worth a retry, not a stalled node.
async fn write_batch(db: &Postgres, lines: &[LogEntry]) {
    let mut pause = Duration::from_millis(100);
    for tries in 1.. {
        match db.append_logs(lines).await {
            Ok(()) => return,
            Err(e @ StoreError::Unavailable(_)) if tries < 5 => {
                tracing::warn!(
                    "could not write {} log line(s) ({e}); trying again",
                    lines.len()
                );
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            Err(e) => {
                tracing::error!("dropped {} log line(s): {e}", lines.len());
                return;
            }
        }
    }
}
