//! Crash recovery (tasks a dead engine left running go back to pending, attempt counted), run once at start before anything is dispatched.
//!
//! A task a dead server left `running` goes back to `pending` with its attempt counted, or to
//! `failed` when no retries are left; either way a log line says what happened. The orphaned
//! process group of that attempt, if still alive, is killed first, so a task never runs twice at
//! the same time.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use super::interrupted;
use super::state::{Hot, Wait, WfHot};
use super::workflow::phase_index;
use super::{Inner, SchedError, Transition};
use crate::model::{now_us, PhaseStatus, Task, TaskStatus, WorkflowStatus};
use crate::runner::orphans;

/// Where a recovered pending task goes.
enum Gate {
    /// Not in a workflow, or its phase is open: schedule it.
    Open,
    /// Its phase has not opened yet.
    Closed,
    /// Its workflow has ended (a crash interrupted the workflow's cancellations): cancel it.
    Ended,
}

/// Rebuilds every running workflow in memory from its stored phases and task statuses.
async fn load_workflows(inner: &Arc<Inner>) -> Result<Vec<Uuid>, SchedError> {
    let mut ids = Vec::new();
    for wf in inner.store.workflows_in(WorkflowStatus::Running).await? {
        let phases = inner.store.phases(wf.id).await?;
        let tasks = inner.store.workflow_tasks(wf.id).await?;
        let mut hot = WfHot {
            workflow: wf,
            phases,
            tasks: HashMap::new(),
            running: 0,
            failing: 0,
            failure: None,
        };
        let mut st = inner.lock();
        for t in &tasks {
            hot.tasks
                .insert(t.id, (phase_index(&hot.phases, t), TaskStatus::Pending));
        }
        ids.push(hot.workflow.id);
        st.workflows.insert(hot.workflow.id, hot);
        for t in tasks.iter().filter(|t| t.status.is_terminal()) {
            Inner::note_workflow_task(&mut st, t);
        }
    }
    Ok(ids)
}

/// How long a task whose old processes survived SIGKILL waits before it may run again.
const HOLD_SURVIVORS_US: i64 = 60_000_000;

/// Stops everything the tasks a dead server left `running` may still have running: the
/// recorded process group (pid and start time), then whatever carries their attempt in its
/// environment (see `runner::orphans`), waiting until it is all gone. Returns a log line per
/// group killed, by task, and the tasks some of whose processes are still alive.
async fn stop_orphans(
    inner: &Arc<Inner>,
    active: &[Task],
) -> (HashMap<Uuid, Vec<String>>, HashSet<Uuid>) {
    let running: Vec<&Task> = active
        .iter()
        .filter(|t| t.status == TaskStatus::Running)
        .collect();
    let mut logs: HashMap<Uuid, Vec<String>> = HashMap::new();
    let mut recorded = Vec::new();
    for t in &running {
        if let Some(pid) = t.pid.filter(|pid| orphans::kill_orphan(*pid, t.pid_start)) {
            recorded.push(pid);
            logs.entry(t.id).or_default().push(format!(
                "killed process group {pid} left running by the previous server"
            ));
        }
    }
    let attempts: HashSet<orphans::Attempt> = running
        .iter()
        .map(|t| (t.id.to_string(), t.attempt))
        .collect();
    let (found, alive) = orphans::stop_attempts(
        &attempts,
        &inner.cfg.instance,
        &recorded,
        Duration::from_secs(10),
    )
    .await;
    for (task, groups) in found {
        let Ok(id) = Uuid::parse_str(&task) else {
            continue;
        };
        for pgid in groups.into_iter().filter(|g| !recorded.contains(g)) {
            logs.entry(id).or_default().push(format!(
                "killed process group {pgid} of this task left running by the previous server"
            ));
        }
    }
    let alive = alive
        .iter()
        .filter_map(|t| Uuid::parse_str(t).ok())
        .collect();
    (logs, alive)
}

pub(super) async fn recover(inner: &Arc<Inner>) -> Result<(), SchedError> {
    let workflows = load_workflows(inner).await?;
    let active = inner.store.active_tasks().await?;
    // Workflows of active tasks that are not running: drafts (their tasks wait for the start)
    // or ended ones.
    let mut other: HashMap<Uuid, Option<WorkflowStatus>> = HashMap::new();
    for w in active.iter().filter_map(|t| t.workflow_id) {
        if !workflows.contains(&w) && !other.contains_key(&w) {
            other.insert(w, inner.store.workflow(w).await?.map(|wf| wf.status));
        }
    }
    let mut active: Vec<_> = active
        .into_iter()
        .filter(|t| {
            t.workflow_id
                .is_none_or(|w| other.get(&w) != Some(&Some(WorkflowStatus::Draft)))
        })
        .collect();
    if active.is_empty() && workflows.is_empty() {
        return Ok(());
    }
    let seqs = inner
        .store
        .max_log_seqs(active.iter().map(|t| t.id).collect())
        .await?;
    let (mut kill_logs, survivors) = stop_orphans(inner, &active).await;
    // The worktree of an interrupted attempt is closed like any other: what the agent left is
    // committed on its branch (a retry starts afresh from the base), and the worktree goes.
    for t in active
        .iter_mut()
        .filter(|t| t.status == TaskStatus::Running)
    {
        let Some(mut ws) = t.workspace.take() else {
            continue;
        };
        let line = match inner
            .workspaces
            .close(t.id, &t.name, t.attempt, &mut ws)
            .await
        {
            Ok(note) => format!("worktree of the interrupted attempt: {note}"),
            Err(e) => format!(
                "could not close the worktree of the interrupted attempt ({e}); it is removed now"
            ),
        };
        kill_logs.entry(t.id).or_default().push(line);
        t.workspace = Some(ws);
    }
    let now = now_us();
    let mut transitions = Vec::new();
    let mut pending = Vec::new();
    {
        let mut st = inner.lock();
        for mut t in active {
            let max_concurrency = inner
                .agents_for(&t)
                .load(&t.agent_name)
                .ok()
                .and_then(|a| a.max_concurrency);
            let id = t.id;
            let was_running = t.status == TaskStatus::Running;
            let gate = match t.workflow_id {
                None => Gate::Open,
                Some(w) => match st.workflows.get(&w) {
                    Some(wf) => {
                        let open = wf.phases.get(phase_index(&wf.phases, &t)).map(|p| p.status);
                        if open == Some(PhaseStatus::Running) {
                            Gate::Open
                        } else {
                            Gate::Closed
                        }
                    }
                    None => Gate::Ended,
                },
            };
            let mut logs = Vec::new();
            if was_running {
                for line in kill_logs.remove(&id).unwrap_or_default() {
                    logs.push(("warn", line));
                }
                if matches!(gate, Gate::Ended) {
                    // Handled below with the pending ones.
                    t.pid = None;
                    t.pid_start = None;
                } else {
                    let hold = survivors.contains(&id).then_some(now + HOLD_SURVIVORS_US);
                    let (settled, why) =
                        interrupted::settle(&t, interrupted::Cause::ServerStopped, now, hold);
                    t = settled;
                    logs.extend(why);
                }
            }
            let ended = matches!(gate, Gate::Ended);
            if ended {
                t.status = TaskStatus::Cancelled;
                t.completed_us = Some(now);
                let msg = "cancelled: its workflow had already ended when the server restarted";
                t.error = Some(msg.into());
                logs.push(("warn", msg.to_string()));
            }
            st.hot.insert(
                id,
                Box::new(Hot {
                    task: t.clone(),
                    wait: Wait::Finishing,
                    next_seq: seqs.get(&id).copied().unwrap_or(0),
                    max_concurrency,
                    instructions: None,
                }),
            );
            if t.status == TaskStatus::Pending {
                pending.push((id, matches!(gate, Gate::Open)));
            }
            if was_running || ended {
                transitions.push(Transition { task: t, logs });
            }
        }
    }
    let recovered = transitions.len();
    // The running -> pending/failed changes are durable before anything else happens.
    let ops = Inner::ops_for(&mut inner.lock(), &transitions);
    inner.store.write(ops).await?;
    let mut cascade = Vec::new();
    {
        let mut st = inner.lock();
        for tr in transitions {
            if tr.task.status.is_terminal() {
                cascade.extend(inner.apply_committed(&mut st, tr));
            } else if let Some(h) = st.hot.get_mut(&tr.task.id) {
                h.task = tr.task;
            }
        }
        for (id, open) in &pending {
            if let Some(h) = st.hot.get_mut(id) {
                h.wait = if *open { Wait::Reserved } else { Wait::Gated };
            }
        }
    }
    inner.commit(cascade).await;
    for (id, open) in pending {
        if open {
            inner.activate(id).await;
        }
    }
    // Phases and workflows whose change a crash interrupted move on now.
    for w in &workflows {
        let cancel = inner.advance_workflow(*w, false).await;
        inner.commit(cancel).await;
    }
    let (hot, _) = {
        let st = inner.lock();
        (st.hot.len(), st.running)
    };
    tracing::info!(
        "recovered {hot} pending task(s) and {} running workflow(s); {recovered} task(s) had been running when the previous server stopped",
        workflows.len()
    );
    Ok(())
}
