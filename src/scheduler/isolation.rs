//! The scheduler's side of isolated tasks: opening a worktree before an attempt (from the work
//! of the workflow phases before the task's), running the agent's `worktree_setup` in it, and
//! closing it afterwards, however the attempt ended.

use std::path::PathBuf;

use super::Inner;
use crate::model::{Task, Workspace};
use crate::runner::{setup::run_setup, RunContext, RunJob, RunOutcome};
use crate::store::WriteOp;
use crate::workspace::{plan, Upstream, WorkspaceError};

impl Inner {
    /// Prepares an isolated attempt of `t` in its workspace `ws`. Returns the workspace as
    /// opened — to be closed after the attempt, whatever happens — and the directory the agent
    /// runs in, or the outcome that ends the attempt before the agent starts (a merge conflict,
    /// a failed `worktree_setup`).
    pub(super) async fn open_workspace(
        &self,
        t: &Task,
        mut ws: Workspace,
        setup: Option<&str>,
        job: &RunJob,
        ctx: &RunContext,
    ) -> (Workspace, Result<PathBuf, RunOutcome>) {
        ws.head_commit = None;
        ws.branch_kept = false;
        (ws.files_changed, ws.insertions, ws.deletions) = (0, 0, 0);
        // From here on the workspace is closed after the attempt whatever happens, so that a
        // failure or a stop part-way never leaves a worktree or a branch behind unaccounted.
        match self.upstream_base(t, &ws).await {
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
        if let Err(e) = self.record_workspace(t, &ws).await {
            return (ws, Err(RunOutcome::retryable(e)));
        }
        // Git may wait on a lock or a credential helper: the attempt's cancellation and timeout
        // stop it (each git command is killed with its process group when given up on; a
        // worktree cut short is never marked ready, so closing it keeps nothing of it).
        let opened = tokio::select! {
            r = self.workspaces.open(t.id, &t.name, t.attempt, &ws) => r,
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
            in_root.working_dir = Some(self.workspaces.path_of(t.id));
            (ctx.log)("info", "running worktree_setup".to_string());
            if let Err(outcome) = run_setup(&in_root, ctx, script).await {
                return (ws, Err(outcome));
            }
        }
        (ws, Ok(cwd))
    }

    /// Ends an attempt's worktree (commit, measure, remove); returns the workspace to record.
    pub(super) async fn close_workspace(&self, t: &Task, mut ws: Workspace) -> Workspace {
        match self
            .workspaces
            .close(t.id, &t.name, t.attempt, &mut ws)
            .await
        {
            Ok(note) => self.log(t.id, "info", note),
            Err(e) => self.log(
                t.id,
                "error",
                format!(
                    "could not close the worktree {} ({e}); it stays, with its changes, until the task's next attempt or the engine's next start closes it",
                    self.workspaces.path_of(t.id).display()
                ),
            ),
        }
        ws
    }

    /// The work of the upstream phases a workflow task starts from (`None`: its own base).
    async fn upstream_base(
        &self,
        t: &Task,
        ws: &Workspace,
    ) -> Result<Option<String>, WorkspaceError> {
        let (Some(workflow), Some(phase)) = (t.workflow_id, t.phase_id.as_deref()) else {
            return Ok(None);
        };
        let Some((_, tasks)) = self.upstream_tasks(t).await else {
            return Ok(None);
        };
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
        self.workspaces
            .combine(
                ws,
                upstream,
                phase,
                &plan::phase_branch_name(workflow, phase),
            )
            .await
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
