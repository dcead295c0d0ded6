//! What becomes of an attempt that nobody saw end: its engine died (crash recovery at the next
//! start), or, in a cluster, its node stopped renewing its lease and was given up. The same rule
//! either way — pending again with the attempt counted while retries are left, failed otherwise
//! — so a task is never charged differently for where it ran.

use crate::model::{Task, TaskStatus};

/// Why the attempt's end was not seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause<'a> {
    /// The engine that ran it stopped unexpectedly.
    ServerStopped,
    /// The cluster gave up the node that ran it (its lease expired).
    NodeLost(&'a str),
}

impl Cause<'_> {
    fn during(&self, attempt: u32) -> String {
        match self {
            Cause::ServerStopped => {
                format!("the server stopped unexpectedly during attempt {attempt}")
            }
            Cause::NodeLost(node) => {
                format!("node {node} stopped answering during attempt {attempt}")
            }
        }
    }
}

/// The task's next state after its `running` attempt was interrupted at `now_us`, with the log
/// lines that explain it. `hold_until` delays the next start (old processes that survived
/// SIGKILL: never two runs at once).
pub fn settle(
    task: &Task,
    cause: Cause<'_>,
    now_us: i64,
    hold_until: Option<i64>,
) -> (Task, Vec<(&'static str, String)>) {
    let mut t = task.clone();
    t.pid = None;
    t.pid_start = None;
    let during = cause.during(t.attempt);
    let mut logs = Vec::new();
    if t.has_retries_left() {
        t.status = TaskStatus::Pending;
        t.scheduled_us = hold_until.unwrap_or(now_us).max(now_us);
        if let Some(until) = hold_until {
            logs.push((
                "error",
                format!(
                    "processes of attempt {} survived SIGKILL; the task waits {} s before it runs again",
                    t.attempt,
                    (until - now_us).max(0) / 1_000_000
                ),
            ));
        }
        logs.push(("warn", format!("{during}; requeued (the attempt counts)")));
    } else {
        t.status = TaskStatus::Failed;
        t.completed_us = Some(now_us);
        let msg = format!("{during} and no retries are left");
        t.error = Some(msg.clone());
        logs.push(("error", msg));
    }
    (t, logs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(attempt: u32, max_retries: u32) -> Task {
        Task {
            status: TaskStatus::Running,
            attempt,
            max_retries,
            pid: Some(42),
            pid_start: Some(7),
            ..Task::sample_for_tests()
        }
    }

    #[test]
    fn with_retries_left_it_is_pending_again_and_the_attempt_counts() {
        let (t, logs) = settle(&running(1, 1), Cause::ServerStopped, 5_000, None);
        assert_eq!(t.status, TaskStatus::Pending);
        assert_eq!(t.attempt, 1, "counted: the next start is attempt 2");
        assert_eq!(t.scheduled_us, 5_000);
        assert_eq!((t.pid, t.pid_start), (None, None));
        assert_eq!(
            logs,
            [(
                "warn",
                "the server stopped unexpectedly during attempt 1; requeued (the attempt counts)"
                    .to_string()
            )]
        );
    }

    #[test]
    fn without_retries_it_fails_and_says_why() {
        let (t, logs) = settle(&running(1, 0), Cause::NodeLost("n2"), 5_000, None);
        assert_eq!(t.status, TaskStatus::Failed);
        assert_eq!(t.completed_us, Some(5_000));
        let why = "node n2 stopped answering during attempt 1 and no retries are left";
        assert_eq!(t.error.as_deref(), Some(why));
        assert_eq!(logs, [("error", why.to_string())]);
    }

    #[test]
    fn survivors_hold_the_next_start() {
        let (t, logs) = settle(
            &running(2, 5),
            Cause::ServerStopped,
            1_000_000,
            Some(61_000_000),
        );
        assert_eq!(t.status, TaskStatus::Pending);
        assert_eq!(t.scheduled_us, 61_000_000);
        assert!(logs[0].1.contains("waits 60 s"), "{logs:?}");
    }

    #[test]
    fn a_manual_retry_grants_a_fresh_budget() {
        let mut t = running(4, 1);
        t.retry_floor = 3;
        assert_eq!(
            settle(&t, Cause::ServerStopped, 0, None).0.status,
            TaskStatus::Pending
        );
        t.attempt = 5;
        assert_eq!(
            settle(&t, Cause::ServerStopped, 0, None).0.status,
            TaskStatus::Failed
        );
    }
}
