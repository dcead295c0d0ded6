//! Crash recovery (contract section 9), run once at start before anything is dispatched.
//!
//! A task a dead server left `running` goes back to `pending` with its attempt counted, or to
//! `failed` when no retries are left; either way a log line says what happened. The orphaned
//! process group of that attempt, if still alive, is killed first, so a task never runs twice at
//! the same time.

use std::sync::Arc;

use super::state::{Hot, Wait};
use super::{Inner, SchedError, Transition};
use crate::model::{now_us, TaskStatus};
use crate::runner::process;

pub(super) async fn recover(inner: &Arc<Inner>) -> Result<(), SchedError> {
    let active = inner.store.active_tasks().await?;
    if active.is_empty() {
        return Ok(());
    }
    let seqs = inner
        .store
        .max_log_seqs(active.iter().map(|t| t.id).collect())
        .await?;
    let now = now_us();
    let mut transitions = Vec::new();
    let mut pending = Vec::new();
    {
        let mut st = inner.lock();
        for mut t in active {
            let max_concurrency = inner
                .agents
                .load(&t.agent_name)
                .ok()
                .and_then(|a| a.max_concurrency);
            let id = t.id;
            let was_running = t.status == TaskStatus::Running;
            let mut logs = Vec::new();
            if was_running {
                if let Some(pid) = t.pid {
                    if process::kill_orphan(pid, t.pid_start) {
                        logs.push((
                            "warn",
                            format!(
                                "killed process group {pid} left running by the previous server"
                            ),
                        ));
                    }
                }
                t.pid = None;
                t.pid_start = None;
                if t.has_retries_left() {
                    t.status = TaskStatus::Pending;
                    t.scheduled_us = now;
                    logs.push((
                        "warn",
                        format!("the server stopped unexpectedly during attempt {}; requeued (the attempt counts)", t.attempt),
                    ));
                } else {
                    t.status = TaskStatus::Failed;
                    t.completed_us = Some(now);
                    let msg = format!(
                        "the server stopped unexpectedly during attempt {} and no retries are left",
                        t.attempt
                    );
                    t.error = Some(msg.clone());
                    logs.push(("error", msg));
                }
            }
            st.hot.insert(
                id,
                Hot {
                    task: t.clone(),
                    wait: Wait::Finishing,
                    next_seq: seqs.get(&id).copied().unwrap_or(0),
                    max_concurrency,
                    instructions: None,
                },
            );
            if t.status == TaskStatus::Pending {
                pending.push(id);
            }
            if was_running {
                transitions.push(Transition {
                    task: t,
                    logs,
                    ends_attempt: false,
                });
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
        for id in &pending {
            if let Some(h) = st.hot.get_mut(id) {
                h.wait = Wait::Reserved;
            }
        }
    }
    inner.commit(cascade).await;
    for id in pending {
        inner.activate(id).await;
    }
    let (hot, _) = {
        let st = inner.lock();
        (st.hot.len(), st.running)
    };
    tracing::info!("recovered {hot} pending task(s); {recovered} had been running when the previous server stopped");
    Ok(())
}
