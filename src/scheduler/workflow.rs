//! Workflows in the scheduler: building a draft, starting it, and moving it along as its tasks
//! finish, by the phase rules of `phases.rs`.
//!
//! A draft's tasks are stored rows only; at `workflow_start` they become hot tasks held at the
//! gate of their phase ([`Wait::Gated`]). Whenever a task of a running workflow reaches a
//! terminal state, [`Inner::advance_workflow`] re-derives the workflow from its tasks' statuses:
//! phases open and complete, or, once any task has failed for good, the workflow fails and every
//! unfinished task is cancelled. Deriving rather than reacting makes the step idempotent, so
//! crash recovery simply runs it again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use super::phases;
use super::state::{Hot, RunHandle, State, Wait, WfHot, STOP_WORKFLOW};
use super::{detached, Inner, SchedError, Scheduler, Transition};
use crate::limits;
use crate::model::{
    now_us, Phase, PhaseStatus, Task, TaskStatus, WebhookEvent, Workflow, WorkflowStatus,
};
use crate::store::WriteOp;

/// Upstream results appended to one task's instructions share this budget...
const UPSTREAM_TOTAL_BYTES: usize = 512 * 1024;
/// ...and each is cut to at most this much (and to no less than [`UPSTREAM_MIN_BYTES`]).
const UPSTREAM_MAX_BYTES: usize = 64 * 1024;
const UPSTREAM_MIN_BYTES: usize = 4 * 1024;

/// What one evaluation of a workflow decided, to be committed and carried out.
#[derive(Debug, Default)]
pub(super) struct WfStep {
    workflow: Option<Workflow>,
    phases: Vec<Phase>,
    release: Vec<Uuid>,
    cancel: Vec<Transition>,
    stop: Vec<RunHandle>,
    finished: bool,
}

impl Scheduler {
    pub async fn create_workflow(&self, wf: Workflow) -> Result<Workflow, SchedError> {
        if self.inner.stopping.is_cancelled() {
            return Err(SchedError::ShuttingDown);
        }
        self.inner
            .store
            .write(vec![WriteOp::InsertWorkflow(Box::new(wf.clone()))])
            .await?;
        Ok(wf)
    }

    /// Adds a phase to a draft. `depends_on` may only name phases added before, which keeps
    /// the graph acyclic by construction.
    pub async fn add_phase(
        &self,
        workflow_id: Uuid,
        phase_id: String,
        name: String,
        depends_on: Vec<String>,
    ) -> Result<Phase, SchedError> {
        let _shape = self.inner.wf_lock.lock().await;
        self.draft(workflow_id).await?;
        let phases = self.inner.store.phases(workflow_id).await?;
        let phase = new_phase(workflow_id, &phases, phase_id, name, depends_on)?;
        self.inner
            .store
            .write(vec![WriteOp::UpsertPhase(Box::new(phase.clone()))])
            .await?;
        Ok(phase)
    }

    /// Adds a task to a draft's phase. Its `dependencies` must be tasks of the same workflow, in
    /// its own phase or one that runs before it (anything else could never start).
    pub async fn add_workflow_task(
        &self,
        task: Task,
        instructions: String,
    ) -> Result<Task, SchedError> {
        let Some(workflow_id) = task.workflow_id else {
            return Err(SchedError::Invalid(
                "a workflow task needs workflow_id and phase_id".into(),
            ));
        };
        let _shape = self.inner.wf_lock.lock().await;
        self.draft(workflow_id).await?;
        let phases = self.inner.store.phases(workflow_id).await?;
        let rows = if task.dependencies.is_empty() {
            Vec::new()
        } else {
            self.inner.store.workflow_task_rows(workflow_id).await?
        };
        check_workflow_task(&task, &phases, &rows)?;
        self.inner
            .store
            .write(vec![WriteOp::InsertTask {
                task: Box::new(task.clone()),
                instructions,
            }])
            .await?;
        crate::metrics::task_submitted(&task.agent_name);
        Ok(task)
    }

    /// Starts a draft: its shape is frozen and the tasks of its first phases become ready.
    pub async fn start_workflow(&self, id: Uuid) -> Result<(), SchedError> {
        let this = self.clone();
        detached(async move { this.start_workflow_now(id).await }).await
    }

    /// The body of [`Self::start_workflow`], run to its end on its own task.
    async fn start_workflow_now(&self, id: Uuid) -> Result<(), SchedError> {
        let inner = &self.inner;
        if inner.stopping.is_cancelled() {
            return Err(SchedError::ShuttingDown);
        }
        let _shape = inner.wf_lock.lock().await;
        let mut wf = self.draft(id).await?;
        let tasks = inner.store.workflow_tasks(id).await?;
        if tasks.is_empty() {
            return Err(SchedError::Conflict(format!(
                "workflow {id} has no tasks; add at least one with workflow_add_task before starting it"
            )));
        }
        let phases = inner.store.phases(id).await?;
        wf.status = WorkflowStatus::Running;
        wf.started_us = Some(now_us());
        inner
            .store
            .write(vec![WriteOp::UpdateWorkflow(Box::new(wf.clone()))])
            .await?;
        // Durable: the workflow runs even if we crash now (recovery picks it up).
        let mut concurrency = HashMap::new();
        {
            let mut st = inner.lock();
            let mut hot = WfHot {
                workflow: wf,
                phases,
                tasks: HashMap::new(),
                running: 0,
                failing: 0,
                failure: None,
            };
            for t in tasks {
                let idx = phase_index(&hot.phases, &t);
                hot.tasks.insert(t.id, (idx, t.status));
                let limit = *concurrency.entry(t.agent_name.clone()).or_insert_with(|| {
                    inner
                        .agents_for(&t)
                        .load(&t.agent_name)
                        .ok()
                        .and_then(|a| a.max_concurrency)
                });
                st.hot.insert(
                    t.id,
                    Box::new(Hot {
                        task: t,
                        wait: Wait::Gated,
                        next_seq: 0,
                        max_concurrency: limit,
                        instructions: None,
                    }),
                );
            }
            st.workflows.insert(id, hot);
        }
        let cancel = inner.advance_workflow(id, false).await;
        inner.commit(cancel).await;
        Ok(())
    }

    /// Cancels a draft or running workflow: every unfinished task is cancelled (running ones
    /// are stopped, and this waits for them, bounded).
    pub async fn cancel_workflow(&self, id: Uuid) -> Result<(), SchedError> {
        let this = self.clone();
        detached(async move { this.cancel_workflow_now(id).await }).await
    }

    /// The body of [`Self::cancel_workflow`], run to its end on its own task.
    async fn cancel_workflow_now(&self, id: Uuid) -> Result<(), SchedError> {
        let inner = &self.inner;
        let _shape = inner.wf_lock.lock().await;
        let wf = self.workflow_or_not_found(id).await?;
        match wf.status {
            WorkflowStatus::Draft => self.cancel_draft(wf).await,
            WorkflowStatus::Running => {
                let mut events = inner.terminal.subscribe();
                let running: Vec<Uuid> = {
                    let st = inner.lock();
                    st.workflows
                        .get(&id)
                        .map(|w| w.tasks.keys().copied().collect())
                        .unwrap_or_default()
                };
                let cancel = inner.advance_workflow(id, true).await;
                inner.commit(cancel).await;
                for t in running {
                    inner
                        .await_terminal(t, &mut events, Duration::from_secs(30))
                        .await;
                }
                Ok(())
            }
            s => Err(SchedError::Conflict(format!(
                "workflow {id} is already {}; only a draft or running workflow can be cancelled",
                s.as_str()
            ))),
        }
    }

    async fn cancel_draft(&self, mut wf: Workflow) -> Result<(), SchedError> {
        let inner = &self.inner;
        let now = now_us();
        let mut ops = Vec::new();
        let mut tasks = inner.store.workflow_tasks(wf.id).await?;
        for t in &mut tasks {
            t.status = TaskStatus::Cancelled;
            t.completed_us = Some(now);
            t.error = Some("cancelled with its workflow before the workflow started".into());
            ops.push(WriteOp::UpdateTask(Box::new(t.clone())));
        }
        let mut phases = inner.store.phases(wf.id).await?;
        for p in &mut phases {
            p.status = PhaseStatus::Cancelled;
            p.completed_us = Some(now);
            ops.push(WriteOp::UpsertPhase(Box::new(p.clone())));
        }
        wf.status = WorkflowStatus::Cancelled;
        wf.completed_us = Some(now);
        wf.error = Some("cancelled by request before it started".into());
        ops.push(WriteOp::UpdateWorkflow(Box::new(wf.clone())));
        if let Some(ev) = inner.workflow_event(&wf, &phases).await {
            ops.push(WriteOp::InsertWebhookEvent(Box::new(ev)));
        }
        inner.store.write(ops).await?;
        for t in &tasks {
            crate::metrics::task_finished(t);
            inner.notifier.task_finished(t);
            let _ = inner.terminal.send(t.id);
        }
        inner.notifier.workflow_finished(&wf);
        Ok(())
    }

    async fn workflow_or_not_found(&self, id: Uuid) -> Result<Workflow, SchedError> {
        self.inner.store.workflow(id).await?.ok_or_else(|| {
            SchedError::NotFound(format!(
                "unknown workflow_id {id}: no such workflow (list_workflows shows the workflows there are)"
            ))
        })
    }

    /// The workflow, if it is still a draft.
    async fn draft(&self, id: Uuid) -> Result<Workflow, SchedError> {
        let wf = self.workflow_or_not_found(id).await?;
        still_a_draft(&wf)?;
        Ok(wf)
    }
}

/// Refuses a change to the shape of a workflow that has started.
pub(crate) fn still_a_draft(wf: &Workflow) -> Result<(), SchedError> {
    if wf.status != WorkflowStatus::Draft {
        return Err(SchedError::Conflict(format!(
            "workflow {} is {}; phases and tasks can only be added while it is a draft (its shape is fixed once started) — create a new workflow instead",
            wf.id,
            wf.status.as_str()
        )));
    }
    Ok(())
}

/// The phase a draft gets, after `phases`: its id must be new, and `depends_on` may only name
/// phases added before it, which keeps the graph acyclic by construction.
pub(crate) fn new_phase(
    workflow_id: Uuid,
    phases: &[Phase],
    phase_id: String,
    name: String,
    depends_on: Vec<String>,
) -> Result<Phase, SchedError> {
    if phases.iter().any(|p| p.phase_id == phase_id) {
        return Err(SchedError::Conflict(format!(
            "workflow {workflow_id} already has a phase {phase_id:?}; phase ids must be unique within a workflow"
        )));
    }
    let mut deps: Vec<String> = Vec::new();
    for d in depends_on {
        // The workflow's shape is what these conflict with (409): a 404 would say the
        // workflow itself is not there.
        if d == phase_id {
            return Err(SchedError::Conflict(format!(
                "depends_on: phase {phase_id:?} cannot depend on itself (that would be a cycle)"
            )));
        }
        if !phases.iter().any(|p| p.phase_id == d) {
            return Err(SchedError::Conflict(format!(
                "depends_on: {d:?} is not a phase of workflow {workflow_id} (phases so far: {}); add phases in order, each after the phases it depends on, so the graph cannot have a cycle",
                list_phases(phases)
            )));
        }
        if !deps.contains(&d) {
            deps.push(d);
        }
    }
    Ok(Phase {
        workflow_id,
        phase_id,
        name,
        depends_on: deps,
        position: phases.len() as i32,
        status: PhaseStatus::Pending,
        started_us: None,
        completed_us: None,
    })
}

/// Checks a task for a draft's phase: the phase must exist, and its `dependencies` must be tasks
/// of the same workflow (`rows`), in its own phase or one that runs before it (anything else
/// could never start).
pub(crate) fn check_workflow_task(
    task: &Task,
    phases: &[Phase],
    rows: &[crate::model::WorkflowTaskRow],
) -> Result<(), SchedError> {
    let (Some(workflow_id), Some(phase_id)) = (task.workflow_id, task.phase_id.as_deref()) else {
        return Err(SchedError::Invalid(
            "a workflow task needs workflow_id and phase_id".into(),
        ));
    };
    let Some(own) = phases.iter().position(|p| p.phase_id == phase_id) else {
        return Err(SchedError::Conflict(format!(
            "phase_id {phase_id:?} is not a phase of workflow {workflow_id} (phases: {}); add it with workflow_add_phase first",
            list_phases(phases)
        )));
    };
    for dep in &task.dependencies {
        let Some(row) = rows.iter().find(|r| r.id == *dep) else {
            return Err(SchedError::Conflict(format!(
                "dependencies: {dep} is not a task of workflow {workflow_id}; a workflow task may only depend on tasks added to the same workflow"
            )));
        };
        let theirs = phases
            .iter()
            .position(|p| Some(&p.phase_id) == row.phase_id.as_ref())
            .unwrap_or(own);
        if phases::upstream(phases, theirs).contains(&own) {
            return Err(SchedError::Conflict(format!(
                "dependencies: task {dep} is in phase {:?}, which runs after phase {phase_id:?}; a task may only depend on tasks of its own phase or of phases before it",
                phases[theirs].phase_id
            )));
        }
    }
    Ok(())
}

fn list_phases(phases: &[Phase]) -> String {
    if phases.is_empty() {
        "none yet".into()
    } else {
        phases
            .iter()
            .map(|p| p.phase_id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

pub(crate) fn phase_index(phases: &[Phase], t: &Task) -> usize {
    phases
        .iter()
        .position(|p| Some(&p.phase_id) == t.phase_id.as_ref())
        .unwrap_or(0)
}

impl Inner {
    /// Records a committed terminal state of a workflow task (called by `apply_committed`).
    pub(super) fn note_workflow_task(st: &mut State, t: &Task) {
        let Some(wf) = t.workflow_id.and_then(|w| st.workflows.get_mut(&w)) else {
            return;
        };
        let Some(entry) = wf.tasks.get_mut(&t.id) else {
            return;
        };
        entry.1 = t.status;
        if t.status != TaskStatus::Completed && wf.failure.is_none() {
            wf.failure = Some((entry.0, failure_text(t)));
        }
    }

    /// Moves a running workflow along from its tasks' statuses (or cancels it), commits the
    /// phase and workflow rows, opens gates, stops tasks. Returns task cancellations to commit.
    pub(super) async fn advance_workflow(
        self: &Arc<Self>,
        id: Uuid,
        cancel: bool,
    ) -> Vec<Transition> {
        let step = {
            let mut st = self.lock();
            decide(&mut st, id, cancel)
        };
        let Some(step) = step else {
            return Vec::new();
        };
        let mut ops: Vec<WriteOp> = step
            .phases
            .iter()
            .map(|p| WriteOp::UpsertPhase(Box::new(p.clone())))
            .collect();
        if let Some(wf) = &step.workflow {
            ops.push(WriteOp::UpdateWorkflow(Box::new(wf.clone())));
            if step.finished {
                if let Some(ev) = self.workflow_event(wf, &step.phases).await {
                    ops.push(WriteOp::InsertWebhookEvent(Box::new(ev)));
                }
            }
        }
        if !ops.is_empty() {
            self.write_with_retries(ops).await;
        }
        for h in &step.stop {
            h.stop(STOP_WORKFLOW);
        }
        if step.finished {
            if let Some(wf) = &step.workflow {
                self.notifier.workflow_finished(wf);
            }
        }
        for t in step.release {
            self.activate(t).await;
        }
        step.cancel
    }

    /// The outbox event of a workflow that has just ended, if it has a webhook. Its `data` is
    /// the workflow status object as it ends: `changed` are the phase rows being committed with
    /// the end, and a failed or cancelled workflow's unfinished tasks show as `cancelled`, which
    /// they are about to be.
    async fn workflow_event(&self, wf: &Workflow, changed: &[Phase]) -> Option<WebhookEvent> {
        wf.webhook_url.as_ref()?;
        let (mut phases, mut tasks) = match (
            self.store.phases(wf.id).await,
            self.store.workflow_task_rows(wf.id).await,
        ) {
            (Ok(p), Ok(t)) => (p, t),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!("could not read workflow {} for its webhook: {e}", wf.id);
                (Vec::new(), Vec::new())
            }
        };
        for p in &mut phases {
            if let Some(c) = changed.iter().find(|c| c.phase_id == p.phase_id) {
                *p = c.clone();
            }
        }
        if wf.status != WorkflowStatus::Completed {
            for t in tasks.iter_mut().filter(|t| !t.status.is_terminal()) {
                t.status = TaskStatus::Cancelled;
            }
        }
        let view = crate::api::status_view(wf, &phases, tasks);
        crate::notifier::events::workflow_event(wf, &view, now_us())
    }

    /// The results of every completed task in the phases upstream of `t`'s (transitively),
    /// formatted to follow its instructions; empty for a first-phase task.
    pub(super) async fn upstream_results(&self, t: &Task) -> String {
        match self.upstream_tasks(t).await {
            Some((phases, tasks)) => format_upstream(&phases, &tasks),
            None => String::new(),
        }
    }

    /// The completed tasks of every phase upstream of `t`'s (transitively), in phase order, with
    /// the workflow's phases; `None` when there are none (or they could not be read).
    pub(super) async fn upstream_tasks(&self, t: &Task) -> Option<(Vec<Phase>, Vec<Task>)> {
        let w = t.workflow_id?;
        let (phases, ids) = {
            let st = self.lock();
            let wf = st.workflows.get(&w)?;
            let own = phase_index(&wf.phases, t);
            let up = phases::upstream(&wf.phases, own);
            let mut ids: Vec<(usize, Uuid)> = wf
                .tasks
                .iter()
                .filter(|(_, (p, s))| up.contains(p) && *s == TaskStatus::Completed)
                .map(|(id, (p, _))| (*p, *id))
                .collect();
            ids.sort();
            (wf.phases.clone(), ids)
        };
        if ids.is_empty() {
            return None;
        }
        let mut found = match self
            .store
            .tasks(ids.iter().map(|(_, id)| *id).collect())
            .await
        {
            Ok(f) => f,
            Err(e) => {
                tracing::error!("could not read the upstream tasks: {e}");
                return None;
            }
        };
        let order: HashMap<Uuid, usize> = ids
            .iter()
            .enumerate()
            .map(|(i, (_, id))| (*id, i))
            .collect();
        found.sort_by_key(|t| order.get(&t.id).copied().unwrap_or(usize::MAX));
        Some((phases, found))
    }
}

/// Evaluates workflow `id` under the lock and applies the outcome to memory at once, so that a
/// concurrent evaluation never decides the same step twice.
fn decide(st: &mut State, id: Uuid, cancel: bool) -> Option<WfStep> {
    let now = now_us();
    let wf = st.workflows.get_mut(&id)?;
    let mut step = WfStep::default();
    if cancel || wf.failure.is_some() {
        let culprit = if cancel {
            None
        } else {
            wf.failure.as_ref().map(|f| f.0)
        };
        let changes = phases::stop_all(&wf.phases, culprit);
        step.phases = phases::apply(&mut wf.phases, changes, now);
        let (status, error, why) = if cancel {
            (
                WorkflowStatus::Cancelled,
                "cancelled by request".to_string(),
                "cancelled with its workflow (workflow_cancel)".to_string(),
            )
        } else {
            let e = wf.failure.as_ref().map(|f| f.1.clone()).unwrap_or_default();
            (
                WorkflowStatus::Failed,
                e.clone(),
                format!("cancelled because its workflow failed: {e}"),
            )
        };
        wf.workflow.status = status;
        wf.workflow.error = Some(error);
        wf.workflow.completed_us = Some(now);
        step.workflow = Some(wf.workflow.clone());
        step.finished = true;
        let unfinished: Vec<Uuid> = wf
            .tasks
            .iter()
            .filter(|(_, (_, s))| !s.is_terminal())
            .map(|(id, _)| *id)
            .collect();
        st.workflows.remove(&id);
        for t in unfinished {
            let Some(h) = st.hot.get(&t) else { continue };
            match &h.wait {
                Wait::Running(handle) => step.stop.push(handle.clone()),
                Wait::Finishing | Wait::Reserved => {}
                _ => {
                    st.withdraw(t);
                    let mut task = st.hot[&t].task.clone();
                    task.status = TaskStatus::Cancelled;
                    task.completed_us = Some(now);
                    task.error = Some(why.clone());
                    step.cancel.push(Transition {
                        task,
                        logs: vec![("warn", why.clone())],
                    });
                }
            }
        }
        return Some(step);
    }
    let counts = phases::count(wf.phases.len(), wf.tasks.values().copied());
    let (changes, opened) = phases::advance(&wf.phases, &counts);
    step.phases = phases::apply(&mut wf.phases, changes, now);
    step.release = wf
        .tasks
        .iter()
        .filter(|(_, (p, _))| opened.contains(p))
        .map(|(id, _)| *id)
        .collect();
    step.release.sort();
    if wf.phases.iter().all(|p| p.status == PhaseStatus::Completed) {
        wf.workflow.status = WorkflowStatus::Completed;
        wf.workflow.completed_us = Some(now);
        step.workflow = Some(wf.workflow.clone());
        step.finished = true;
        st.workflows.remove(&id);
    }
    // Only tasks still held at their gate are released.
    step.release
        .retain(|t| st.hot.get(t).is_some_and(|h| matches!(h.wait, Wait::Gated)));
    Some(step)
}

pub(crate) fn failure_text(t: &Task) -> String {
    let phase = t.phase_id.as_deref().unwrap_or("?");
    format!(
        "task {} ({}) in phase {phase:?} {}: {}",
        t.id,
        t.name,
        t.status.as_str(),
        t.error.as_deref().unwrap_or("no error recorded")
    )
}

/// A task's instructions followed by the results of earlier phases (`upstream`), and the log
/// line that says so; as they were when there are none.
pub(crate) fn with_upstream(instructions: String, upstream: &str) -> (String, Option<String>) {
    if upstream.is_empty() {
        return (instructions, None);
    }
    let note = format!(
        "instructions extended with the results of earlier phases ({} bytes)",
        upstream.len()
    );
    (instructions + upstream, Some(note))
}

/// The section appended to a downstream task's instructions: one heading per upstream task
/// naming its phase and task, each result cut to a share of the budget with a marker.
pub(crate) fn format_upstream(phases: &[Phase], tasks: &[Task]) -> String {
    if tasks.is_empty() {
        return String::new();
    }
    let each = (UPSTREAM_TOTAL_BYTES / tasks.len()).clamp(UPSTREAM_MIN_BYTES, UPSTREAM_MAX_BYTES);
    let mut out = String::from(
        "\n\n---\n\n# Results from earlier phases\n\nThe tasks of the phases this one depends on have completed. Their results follow.\n",
    );
    for t in tasks {
        let phase_id = t.phase_id.as_deref().unwrap_or("?");
        let phase_name = phases
            .iter()
            .find(|p| p.phase_id == phase_id)
            .map(|p| p.name.as_str())
            .unwrap_or(phase_id);
        let result = t.result.as_deref().unwrap_or("");
        out.push_str(&format!(
            "\n## Phase \"{phase_name}\" ({phase_id}), task \"{}\" ({})\n\n{}\n",
            t.name,
            t.id,
            limits::truncate_with_marker(result.trim_end(), each)
        ));
    }
    out
}
