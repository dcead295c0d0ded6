//! The steps of a workflow on a cluster, as pure functions of its rows: what starting it,
//! cancelling it, or looking at it after one of its tasks ended changes.
//!
//! Like the single engine, a step is derived from the tasks' statuses rather than from the end
//! that prompted it: phases open and complete by the phase rules (`scheduler/phases.rs`), and
//! once any task has failed or been cancelled the workflow fails and every unfinished task is
//! cancelled. The store takes each step under the workflow's row lock, so a step that has been
//! taken already derives to nothing: however many nodes look after the same end, it happens once.

use crate::api::status_view;
use crate::model::{Phase, WebhookEvent};
use crate::model::{PhaseStatus, Task, TaskStatus, Workflow, WorkflowStatus};
use crate::scheduler::phases;
use crate::scheduler::workflow::{failure_text, phase_index};
use crate::scheduler::SchedError;
use crate::store::postgres::{task_row, WorkflowStep};

/// Starting a draft: it runs from `now`, and its first phases open in the same step.
pub fn start(
    wf: &Workflow,
    phases: &[Phase],
    tasks: &[Task],
    now: i64,
) -> Result<WorkflowStep, SchedError> {
    crate::scheduler::workflow::still_a_draft(wf)?;
    if tasks.is_empty() {
        return Err(SchedError::Conflict(format!(
            "workflow {} has no tasks; add at least one with workflow_add_task before starting it",
            wf.id
        )));
    }
    let mut running = wf.clone();
    running.status = WorkflowStatus::Running;
    running.started_us = Some(now);
    let mut step = advance(&running, phases, tasks, now);
    step.workflow.get_or_insert(running);
    Ok(step)
}

/// A cancel by request: a draft or running workflow ends `cancelled` with every unfinished
/// task; an ended one is refused.
pub fn cancel(
    wf: &Workflow,
    phases: &[Phase],
    tasks: &[Task],
    now: i64,
) -> Result<WorkflowStep, SchedError> {
    let (error, why) = match wf.status {
        WorkflowStatus::Draft => (
            "cancelled by request before it started",
            "cancelled with its workflow before the workflow started",
        ),
        WorkflowStatus::Running => (
            "cancelled by request",
            "cancelled with its workflow (workflow_cancel)",
        ),
        s => {
            return Err(SchedError::Conflict(format!(
                "workflow {} is already {}; only a draft or running workflow can be cancelled",
                wf.id,
                s.as_str()
            )))
        }
    };
    Ok(stop(
        wf,
        phases,
        tasks,
        now,
        None,
        WorkflowStatus::Cancelled,
        error.to_string(),
        why.to_string(),
    ))
}

/// The step a running workflow owes now: nothing, phases opened or completed (and the workflow
/// with them), or — once a task failed or was cancelled — the workflow failed by the first
/// task that failed (else the first cancelled).
pub fn advance(wf: &Workflow, phases: &[Phase], tasks: &[Task], now: i64) -> WorkflowStep {
    if wf.status.is_terminal() {
        // A task of an ended workflow that is still unfinished (its attempt was given back as
        // the workflow ended) never runs: it goes the way of the workflow.
        let leftover = tasks.iter().any(|t| !t.status.is_terminal());
        return WorkflowStep {
            cancel_unfinished: leftover.then(|| {
                format!(
                    "cancelled because its workflow had ended ({})",
                    wf.status.as_str()
                )
            }),
            ..WorkflowStep::default()
        };
    }
    if wf.status != WorkflowStatus::Running {
        return WorkflowStep::default();
    }
    let culprit = tasks
        .iter()
        .filter(|t| matches!(t.status, TaskStatus::Failed | TaskStatus::Cancelled))
        // A failure explains more than the cancels it set off in the same moment.
        .min_by_key(|t| {
            (
                t.status != TaskStatus::Failed,
                t.completed_us.unwrap_or(i64::MAX),
                t.id,
            )
        });
    if let Some(t) = culprit {
        let e = failure_text(t);
        return stop(
            wf,
            phases,
            tasks,
            now,
            Some(phase_index(phases, t)),
            WorkflowStatus::Failed,
            e.clone(),
            format!("cancelled because its workflow failed: {e}"),
        );
    }
    let counts = phases::count(
        phases.len(),
        tasks.iter().map(|t| (phase_index(phases, t), t.status)),
    );
    let (changes, opened) = phases::advance(phases, &counts);
    let mut after = phases.to_vec();
    let mut step = WorkflowStep {
        open: opened.iter().map(|i| phases[*i].phase_id.clone()).collect(),
        phases: phases::apply(&mut after, changes, now),
        ..WorkflowStep::default()
    };
    if after.iter().all(|p| p.status == PhaseStatus::Completed) {
        let mut done = wf.clone();
        done.status = WorkflowStatus::Completed;
        done.completed_us = Some(now);
        step.event = event(&done, &after, tasks, now);
        step.workflow = Some(done);
    }
    step
}

/// The workflow ends `status` (failed in phase `culprit`, or cancelled): unfinished phases are
/// skipped, unfinished tasks cancelled for `why`.
#[allow(clippy::too_many_arguments)]
fn stop(
    wf: &Workflow,
    phases: &[Phase],
    tasks: &[Task],
    now: i64,
    culprit: Option<usize>,
    status: WorkflowStatus,
    error: String,
    why: String,
) -> WorkflowStep {
    let mut after = phases.to_vec();
    let mut step = WorkflowStep {
        phases: phases::apply(&mut after, phases::stop_all(phases, culprit), now),
        ..WorkflowStep::default()
    };
    let mut ended = wf.clone();
    ended.status = status;
    ended.error = Some(error);
    ended.completed_us = Some(now);
    // The event shows the tasks as the step leaves them: the unfinished ones cancelled.
    let shown: Vec<Task> = tasks
        .iter()
        .map(|t| {
            let mut t = t.clone();
            if !t.status.is_terminal() {
                t.status = TaskStatus::Cancelled;
            }
            t
        })
        .collect();
    step.event = event(&ended, &after, &shown, now);
    step.workflow = Some(ended);
    step.cancel_unfinished = Some(why);
    step
}

fn event(wf: &Workflow, phases: &[Phase], tasks: &[Task], now: i64) -> Option<WebhookEvent> {
    wf.webhook_url.as_ref()?;
    let view = status_view(wf, phases, tasks.iter().map(task_row).collect());
    crate::notifier::events::workflow_event(wf, &view, now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn wf(status: WorkflowStatus) -> Workflow {
        Workflow {
            id: Uuid::nil(),
            name: "w".into(),
            description: None,
            webhook_url: Some("http://127.0.0.1:9/h".into()),
            status,
            max_parallel: None,
            error: None,
            created_us: 1,
            started_us: None,
            completed_us: None,
        }
    }

    fn phase(id: &str, deps: &[&str], position: i32) -> Phase {
        Phase {
            workflow_id: Uuid::nil(),
            phase_id: id.into(),
            name: id.into(),
            depends_on: deps.iter().map(|s| s.to_string()).collect(),
            position,
            status: PhaseStatus::Pending,
            started_us: None,
            completed_us: None,
        }
    }

    fn task(phase: &str, status: TaskStatus, completed: Option<i64>) -> Task {
        Task {
            phase_id: Some(phase.into()),
            workflow_id: Some(Uuid::nil()),
            status,
            completed_us: completed,
            ..Task::sample_for_tests()
        }
    }

    fn chain() -> Vec<Phase> {
        vec![phase("design", &[], 0), phase("build", &["design"], 1)]
    }

    #[test]
    fn a_start_opens_the_first_phase_and_refuses_an_empty_or_started_workflow() {
        let ps = chain();
        let tasks = [
            task("design", TaskStatus::Pending, None),
            task("build", TaskStatus::Pending, None),
        ];
        let step = start(&wf(WorkflowStatus::Draft), &ps, &tasks, 5).unwrap();
        assert_eq!(step.open, ["design"]);
        let w = step.workflow.unwrap();
        assert_eq!((w.status, w.started_us), (WorkflowStatus::Running, Some(5)));
        assert_eq!(step.phases[0].status, PhaseStatus::Running);
        assert!(step.event.is_none() && step.cancel_unfinished.is_none());
        let empty = start(&wf(WorkflowStatus::Draft), &ps, &[], 5).unwrap_err();
        assert!(empty.to_string().contains("has no tasks"), "{empty}");
        let again = start(&wf(WorkflowStatus::Running), &ps, &tasks, 5).unwrap_err();
        assert!(again.to_string().contains("while it is a draft"), "{again}");
    }

    #[test]
    fn a_step_already_taken_derives_to_nothing_and_the_last_completes_the_workflow() {
        let mut ps = chain();
        ps[0].status = PhaseStatus::Running;
        let running = wf(WorkflowStatus::Running);
        let tasks = [
            task("design", TaskStatus::Completed, Some(7)),
            task("build", TaskStatus::Pending, None),
        ];
        let step = advance(&running, &ps, &tasks, 8);
        assert_eq!(step.open, ["build"]);
        assert_eq!(
            step.phases.iter().map(|p| p.status).collect::<Vec<_>>(),
            [PhaseStatus::Completed, PhaseStatus::Running]
        );
        assert!(step.workflow.is_none());
        // The same look again, once the step is written: nothing more.
        ps[0].status = PhaseStatus::Completed;
        ps[1].status = PhaseStatus::Running;
        let again = advance(&running, &ps, &tasks, 9);
        assert!(again.open.is_empty() && again.phases.is_empty() && again.workflow.is_none());
        let done = [
            task("design", TaskStatus::Completed, Some(7)),
            task("build", TaskStatus::Completed, Some(9)),
        ];
        let last = advance(&running, &ps, &done, 10);
        let w = last.workflow.unwrap();
        assert_eq!(
            (w.status, w.completed_us),
            (WorkflowStatus::Completed, Some(10))
        );
        let ev = last.event.unwrap();
        assert_eq!(ev.event_type, "workflow.completed");
        // An ended workflow takes no step, but a task of it left unfinished is cancelled.
        let quiet = advance(&w, &ps, &done, 11);
        assert!(quiet.workflow.is_none() && quiet.cancel_unfinished.is_none());
        let left = [task("build", TaskStatus::Pending, None)];
        let swept = advance(&w, &ps, &left, 11);
        assert!(swept.workflow.is_none() && swept.event.is_none());
        assert!(swept
            .cancel_unfinished
            .unwrap()
            .contains("had ended (completed)"));
    }

    #[test]
    fn the_first_failure_fails_the_workflow_and_cancels_the_rest() {
        let mut ps = chain();
        ps[0].status = PhaseStatus::Running;
        let mut first = task("design", TaskStatus::Failed, Some(3));
        first.error = Some("exit 2".into());
        let later = task("design", TaskStatus::Cancelled, Some(4));
        let tasks = [
            later,
            first.clone(),
            task("build", TaskStatus::Pending, None),
        ];
        let step = advance(&wf(WorkflowStatus::Running), &ps, &tasks, 5);
        let w = step.workflow.unwrap();
        assert_eq!(w.status, WorkflowStatus::Failed);
        assert!(w.error.as_deref().unwrap().contains("exit 2"), "{w:?}");
        assert!(step
            .cancel_unfinished
            .unwrap()
            .starts_with("cancelled because its workflow failed"));
        assert_eq!(
            step.phases.iter().map(|p| p.status).collect::<Vec<_>>(),
            [PhaseStatus::Failed, PhaseStatus::Cancelled]
        );
        let ev = step.event.unwrap();
        assert_eq!(ev.event_type, "workflow.failed");
        let payload: serde_json::Value = serde_json::from_str(&ev.payload).unwrap();
        assert_eq!(payload["data"]["status"], "failed");
    }

    #[test]
    fn a_cancel_ends_a_draft_or_a_running_workflow_and_refuses_an_ended_one() {
        let ps = chain();
        let tasks = [task("design", TaskStatus::Pending, None)];
        let draft = cancel(&wf(WorkflowStatus::Draft), &ps, &tasks, 5).unwrap();
        let w = draft.workflow.unwrap();
        assert_eq!(w.status, WorkflowStatus::Cancelled);
        assert_eq!(
            w.error.as_deref(),
            Some("cancelled by request before it started")
        );
        assert!(draft.cancel_unfinished.is_some());
        let running = cancel(&wf(WorkflowStatus::Running), &ps, &tasks, 5).unwrap();
        assert_eq!(
            running.cancel_unfinished.as_deref(),
            Some("cancelled with its workflow (workflow_cancel)")
        );
        let ended = cancel(&wf(WorkflowStatus::Completed), &ps, &tasks, 5).unwrap_err();
        assert!(ended.to_string().contains("already completed"), "{ended}");
    }
}
