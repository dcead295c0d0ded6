//! The phase graph of a workflow: which phases open, complete, fail or are skipped. Pure
//! functions over the phases (in position order) and their task counts.
//!
//! `depends_on` may only name phases added earlier, so position order is a topological order
//! and one pass in that order settles chains (an empty phase completes the moment it opens,
//! and may open the next in the same pass).

use crate::model::{Phase, PhaseStatus, TaskStatus};

/// Tasks of one phase by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub total: u32,
    pub completed: u32,
}

/// Phase status changes, `(index, new status)`, in position order.
pub type Changes = Vec<(usize, PhaseStatus)>;

fn index_of(phases: &[Phase], id: &str) -> Option<usize> {
    phases.iter().position(|p| p.phase_id == id)
}

/// Opens every pending phase whose upstream phases have all completed, and completes every open
/// phase whose tasks have all completed. Returns the changes and the phases that opened.
pub fn advance(phases: &[Phase], counts: &[Counts]) -> (Changes, Vec<usize>) {
    let mut status: Vec<PhaseStatus> = phases.iter().map(|p| p.status).collect();
    let mut changes = Vec::new();
    let mut opened = Vec::new();
    for (i, p) in phases.iter().enumerate() {
        if status[i] == PhaseStatus::Pending {
            let ready = p
                .depends_on
                .iter()
                .all(|d| index_of(phases, d).is_some_and(|j| status[j] == PhaseStatus::Completed));
            if ready {
                status[i] = PhaseStatus::Running;
                opened.push(i);
            }
        }
        if status[i] == PhaseStatus::Running {
            let c = counts.get(i).copied().unwrap_or_default();
            if c.completed >= c.total {
                status[i] = PhaseStatus::Completed;
            }
        }
        if status[i] != p.status {
            changes.push((i, status[i]));
        }
    }
    (changes, opened)
}

/// The workflow failed in phase `culprit`: that phase fails, every other unfinished phase is
/// skipped (`cancelled`). With no culprit (a cancel), every unfinished phase is skipped.
pub fn stop_all(phases: &[Phase], culprit: Option<usize>) -> Changes {
    phases
        .iter()
        .enumerate()
        .filter(|(_, p)| !p.status.is_terminal())
        .map(|(i, _)| {
            if Some(i) == culprit {
                (i, PhaseStatus::Failed)
            } else {
                (i, PhaseStatus::Cancelled)
            }
        })
        .collect()
}

/// The counts of `n` phases from each task's phase index and status.
pub fn count(n: usize, tasks: impl IntoIterator<Item = (usize, TaskStatus)>) -> Vec<Counts> {
    let mut counts = vec![Counts::default(); n];
    for (p, s) in tasks {
        if let Some(c) = counts.get_mut(p) {
            c.total += 1;
            if s == TaskStatus::Completed {
                c.completed += 1;
            }
        }
    }
    counts
}

/// Applies `changes` to `phases` at `now` and returns the changed rows: a phase is started when
/// it opens (or completes without having opened, being empty) and ended when it reaches a
/// terminal status.
pub fn apply(phases: &mut [Phase], changes: Changes, now: i64) -> Vec<Phase> {
    let mut changed = Vec::with_capacity(changes.len());
    for (i, s) in changes {
        let p = &mut phases[i];
        if s == PhaseStatus::Running || (s == PhaseStatus::Completed && p.started_us.is_none()) {
            p.started_us = Some(now);
        }
        if s.is_terminal() {
            p.completed_us = Some(now);
        }
        p.status = s;
        changed.push(p.clone());
    }
    changed
}

/// Every phase `idx` depends on, directly or through others, in position order.
pub fn upstream(phases: &[Phase], idx: usize) -> Vec<usize> {
    let mut marked = vec![false; phases.len()];
    let mut stack = vec![idx];
    while let Some(i) = stack.pop() {
        for d in &phases[i].depends_on {
            if let Some(j) = index_of(phases, d) {
                if !marked[j] {
                    marked[j] = true;
                    stack.push(j);
                }
            }
        }
    }
    (0..phases.len()).filter(|&i| marked[i]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

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

    fn apply(phases: &mut [Phase], changes: &Changes) {
        for (i, s) in changes {
            phases[*i].status = *s;
        }
    }

    fn c(total: u32, completed: u32) -> Counts {
        Counts { total, completed }
    }

    #[test]
    fn a_chain_opens_one_phase_at_a_time() {
        let mut ps = vec![
            phase("design", &[], 0),
            phase("build", &["design"], 1),
            phase("test", &["build"], 2),
        ];
        let (ch, opened) = advance(&ps, &[c(1, 0), c(2, 0), c(1, 0)]);
        assert_eq!(opened, vec![0]);
        apply(&mut ps, &ch);
        let (ch, opened) = advance(&ps, &[c(1, 1), c(2, 0), c(1, 0)]);
        assert_eq!(
            ch,
            vec![(0, PhaseStatus::Completed), (1, PhaseStatus::Running)]
        );
        assert_eq!(opened, vec![1]);
        apply(&mut ps, &ch);
        let (ch, opened) = advance(&ps, &[c(1, 1), c(2, 1), c(1, 0)]);
        assert!(ch.is_empty() && opened.is_empty());
    }

    #[test]
    fn a_diamond_waits_for_both_branches_and_empty_phases_pass_through() {
        let mut ps = vec![
            phase("a", &[], 0),
            phase("b", &["a"], 1),
            phase("empty", &["a"], 2),
            phase("d", &["b", "empty"], 3),
        ];
        let (ch, _) = advance(&ps, &[c(1, 1), c(1, 0), c(0, 0), c(1, 0)]);
        apply(&mut ps, &ch);
        assert_eq!(ps[2].status, PhaseStatus::Completed);
        assert_eq!(ps[1].status, PhaseStatus::Running);
        assert_eq!(ps[3].status, PhaseStatus::Pending);
        let (ch, opened) = advance(&ps, &[c(1, 1), c(1, 1), c(0, 0), c(1, 0)]);
        apply(&mut ps, &ch);
        assert_eq!(opened, vec![3]);
        assert_eq!(upstream(&ps, 3), vec![0, 1, 2]);
        assert_eq!(upstream(&ps, 1), vec![0]);
        assert!(upstream(&ps, 0).is_empty());
    }

    #[test]
    fn failure_fails_one_phase_and_skips_the_unfinished() {
        let mut ps = vec![
            phase("a", &[], 0),
            phase("b", &[], 1),
            phase("c", &["a"], 2),
        ];
        ps[0].status = PhaseStatus::Completed;
        ps[1].status = PhaseStatus::Running;
        assert_eq!(
            stop_all(&ps, Some(1)),
            vec![(1, PhaseStatus::Failed), (2, PhaseStatus::Cancelled)]
        );
        assert_eq!(
            stop_all(&ps, None),
            vec![(1, PhaseStatus::Cancelled), (2, PhaseStatus::Cancelled)]
        );
    }

    #[test]
    fn applied_changes_are_timed_opened_or_ended() {
        let mut ps = vec![
            phase("a", &[], 0),
            phase("empty", &["a"], 1),
            phase("c", &["a"], 2),
        ];
        ps[0].status = PhaseStatus::Running;
        ps[0].started_us = Some(1);
        let counts = count(3, [(0, TaskStatus::Completed), (2, TaskStatus::Pending)]);
        assert_eq!(counts, vec![c(1, 1), c(0, 0), c(1, 0)]);
        let (ch, _) = advance(&ps, &counts);
        let changed = super::apply(&mut ps, ch, 9);
        assert_eq!(changed.len(), 3);
        assert_eq!((ps[0].started_us, ps[0].completed_us), (Some(1), Some(9)));
        assert_eq!((ps[1].started_us, ps[1].completed_us), (Some(9), Some(9)));
        assert_eq!((ps[2].started_us, ps[2].completed_us), (Some(9), None));
        let stop = stop_all(&ps, Some(2));
        let stopped = super::apply(&mut ps, stop, 12);
        assert_eq!(stopped.len(), 1);
        assert_eq!(ps[2].status, PhaseStatus::Failed);
        assert_eq!((ps[2].started_us, ps[2].completed_us), (Some(9), Some(12)));
    }
}
