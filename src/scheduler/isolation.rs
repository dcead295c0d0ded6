//! The scheduler's side of isolated tasks: opening a worktree before an attempt (from the work
//! of the workflow phases before the task's), running the agent's `worktree_setup` in it, and
//! closing it afterwards, however the attempt ended. The steps are shared with a cluster node's
//! attempts (`open_attempt`, `close_attempt`), which find the earlier phases' work and record
//! the workspace in their own database.

use std::path::PathBuf;

use super::Inner;
use crate::model::{Task, TaskStatus, Workspace};
use crate::runner::{setup::run_setup, RunContext, RunJob, RunOutcome};
use crate::store::WriteOp;
use crate::workspace::{plan, Upstream, WorkspaceError, Workspaces};

impl Inner {
    /// Prepares an isolated attempt of `t` (see [`open_attempt`]), from the work of the
    /// earlier phases held in memory, recording the workspace in the store.
    pub(super) async fn open_workspace(
        &self,
        t: &Task,
        ws: Workspace,
        setup: Option<&str>,
        job: &RunJob,
        ctx: &RunContext,
    ) -> (Workspace, Result<PathBuf, RunOutcome>) {
        let upstream = self
            .upstream_tasks(t)
            .await
            .map(|(_, tasks)| tasks)
            .unwrap_or_default();
        let record = |ws: Workspace| async move { self.record_workspace(t, &ws).await };
        open_attempt(&self.workspaces, t, ws, upstream, record, setup, job, ctx).await
    }

    /// Ends an attempt's worktree (see [`close_attempt`]).
    pub(super) async fn close_workspace(&self, t: &Task, ws: Workspace) -> Workspace {
        close_attempt(&self.workspaces, t, ws, |level, m| self.log(t.id, level, m)).await
    }

    /// Records the attempt's workspace (its branch and base) before the worktree is made, so
    /// that recovery after a crash closes it against the right base; memory follows the store.
    async fn record_workspace(&self, t: &Task, ws: &Workspace) -> Result<(), String> {
        let Some(mut task) = self.hot_task(t.id) else {
            return Ok(());
        };
        task.workspace = Some(ws.clone());
        self.store
            .write(vec![WriteOp::UpdateTask(Box::new(task))])
            .await
            .map_err(|e| format!("could not record the worktree: {e}"))?;
        if let Some(h) = self.lock().hot.get_mut(&t.id) {
            h.task.workspace = Some(ws.clone());
        }
        Ok(())
    }
}

/// Prepares an isolated attempt of `t` in its workspace `ws`, for the single engine and a
/// cluster node alike: its base moved onto the work of `upstream` (the completed tasks of the
/// earlier phases of its workflow, in phase order), the workspace recorded by `record` before
/// the worktree is made, the worktree opened, the agent's `worktree_setup` run in it. Returns
/// the workspace as opened — to be closed after the attempt, whatever happens — and the
/// directory the agent runs in, or the outcome that ends the attempt before the agent starts (a
/// merge conflict, a failed `worktree_setup`).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn open_attempt<R, F>(
    workspaces: &Workspaces,
    t: &Task,
    mut ws: Workspace,
    upstream: Vec<Task>,
    record: R,
    setup: Option<&str>,
    job: &RunJob,
    ctx: &RunContext,
) -> (Workspace, Result<PathBuf, RunOutcome>)
where
    R: FnOnce(Workspace) -> F,
    F: std::future::Future<Output = Result<(), String>>,
{
    ws.head_commit = None;
    ws.branch_kept = false;
    (ws.files_changed, ws.insertions, ws.deletions) = (0, 0, 0);
    // From here on the workspace is closed after the attempt whatever happens, so that a
    // failure or a stop part-way never leaves a worktree or a branch behind unaccounted.
    match upstream_base(workspaces, t, &ws, upstream).await {
        Ok(Some(base)) => {
            if base != ws.base_commit {
                (ctx.log)(
                    "info",
                    format!(
                        "starts from the work of the earlier phases ({})",
                        plan::short(&base)
                    ),
                );
            }
            ws.base_commit = base;
        }
        Ok(None) => {}
        Err(e) => return (ws, Err(workspace_failure(e))),
    }
    if let Err(e) = record(ws.clone()).await {
        return (ws, Err(RunOutcome::retryable(e)));
    }
    // Git may wait on a lock or a credential helper: the attempt's cancellation and timeout
    // stop it (each git command is killed with its process group when given up on; a
    // worktree cut short is never marked ready, so closing it keeps nothing of it).
    let opened = tokio::select! {
        r = workspaces.open(t.id, &t.name, t.attempt, &ws) => r,
        _ = ctx.cancel.cancelled() => return (ws, Err(RunOutcome::Stopped)),
    };
    let cwd = match opened {
        Ok((cwd, notes)) => {
            for note in notes {
                (ctx.log)("info", note);
            }
            cwd
        }
        Err(e) => return (ws, Err(workspace_failure(e))),
    };
    if let Some(script) = setup {
        let mut in_root = job.clone();
        in_root.working_dir = Some(workspaces.path_of(t.id));
        (ctx.log)("info", "running worktree_setup".to_string());
        if let Err(outcome) = run_setup(&in_root, ctx, script).await {
            return (ws, Err(outcome));
        }
    }
    (ws, Ok(cwd))
}

/// Ends an attempt's worktree (commit, measure, remove); returns the workspace to record.
/// `log` takes the lines for the task's log.
pub(crate) async fn close_attempt(
    workspaces: &Workspaces,
    t: &Task,
    mut ws: Workspace,
    log: impl Fn(&'static str, String),
) -> Workspace {
    match workspaces.close(t.id, &t.name, t.attempt, &mut ws).await {
        Ok(note) => log("info", note),
        Err(e) => log(
            "error",
            format!(
                "could not close the worktree {} ({e}); it stays, with its changes, until the task's next attempt or the engine's next start closes it",
                workspaces.path_of(t.id).display()
            ),
        ),
    }
    ws
}

/// The note a completed isolated task's result ends with: where its work is.
pub(crate) fn note_workspace(task: &mut Task) {
    if let (TaskStatus::Completed, Some(ws), Some(result)) =
        (task.status, task.workspace.as_ref(), task.result.as_mut())
    {
        let note = plan::result_note(ws);
        result.push_str(if result.trim().is_empty() {
            note.trim_start()
        } else {
            &note
        });
    }
}

/// The work of the upstream phases a workflow task starts from (`None`: its own base).
async fn upstream_base(
    workspaces: &Workspaces,
    t: &Task,
    ws: &Workspace,
    tasks: Vec<Task>,
) -> Result<Option<String>, WorkspaceError> {
    let (Some(workflow), Some(phase)) = (t.workflow_id, t.phase_id.as_deref()) else {
        return Ok(None);
    };
    if tasks.is_empty() {
        return Ok(None);
    }
    let upstream: Vec<Upstream> = tasks
        .into_iter()
        .filter_map(|u| {
            // Only tasks with commits of their own: one that changed nothing has no work to
            // pass on (its base is someone else's, or none).
            let w = u.workspace.filter(|w| w.branch_kept)?;
            let head = w.head_commit?;
            (w.common_dir == ws.common_dir).then_some(Upstream {
                name: u.name,
                head,
                branch: w.branch,
            })
        })
        .collect();
    workspaces
        .combine(
            ws,
            upstream,
            phase,
            &plan::phase_branch_name(workflow, phase),
        )
        .await
}

/// How a workspace failure ends an attempt: a conflict or a missing repository will not go
/// away by trying again; anything else (a lock git found taken, a full disk) may.
fn workspace_failure(e: WorkspaceError) -> RunOutcome {
    match e {
        WorkspaceError::Conflict(m)
        | WorkspaceError::NotARepository(m)
        | WorkspaceError::Gone(m)
        | WorkspaceError::Refused(m)
        | WorkspaceError::UnknownRef(m) => RunOutcome::fatal(m),
        other => RunOutcome::retryable(format!("could not prepare the worktree: {other}")),
    }
}
