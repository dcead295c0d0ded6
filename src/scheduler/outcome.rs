//! What an ended attempt means for its task: the one rule for completed, retried after a
//! back-off, failed for good, cancelled, or — stopped by a shutdown — pending again without the
//! attempt counting. Pure: the single engine and a cluster node both apply it to what their
//! runner reported.

use super::state::{STOP_CANCEL, STOP_SHUTDOWN, STOP_TIMEOUT, STOP_WORKFLOW};
use super::Transition;
use crate::backoff;
use crate::model::{Task, TaskStatus};
use crate::runner::RunOutcome;

/// Turns an attempt's outcome into the task's next state, with the log lines that explain it.
/// `reason` is why the attempt was asked to stop (`STOP_NONE` if it was not); a retry is due
/// `backoff_base_ms × 2^(n-1)` (equal jitter, capped) after `now`, or later if the other side
/// asked for that.
pub fn settle(
    mut t: Task,
    outcome: RunOutcome,
    reason: u8,
    backoff_base_ms: u64,
    now: i64,
) -> Transition {
    t.pid = None;
    t.pid_start = None;
    let mut logs = Vec::new();
    let failure = match outcome {
        RunOutcome::Completed {
            result,
            usage,
            metadata,
        } => {
            t.status = TaskStatus::Completed;
            t.completed_us = Some(now);
            t.result = Some(result);
            t.error = None;
            t.usage = usage;
            if let Some(extra) = metadata {
                let mut m = match t.metadata.take() {
                    Some(serde_json::Value::Object(m)) => m,
                    _ => serde_json::Map::new(),
                };
                m.extend(extra);
                t.metadata = Some(serde_json::Value::Object(m));
            }
            logs.push(("info", format!("attempt {} completed", t.attempt)));
            None
        }
        RunOutcome::Failed {
            error,
            retryable,
            retry_after,
        } => Some((error, retryable, retry_after)),
        RunOutcome::Stopped => match reason {
            STOP_TIMEOUT => Some((
                format!("timed out after {}s (timeout_seconds)", t.timeout_seconds),
                true,
                None,
            )),
            STOP_SHUTDOWN => {
                t.status = TaskStatus::Pending;
                t.attempt = t.attempt.saturating_sub(1);
                t.scheduled_us = now;
                logs.push((
                    "warn",
                    "interrupted by server shutdown; it will run again when the server starts (this attempt does not count)".to_string(),
                ));
                None
            }
            STOP_CANCEL => {
                t.status = TaskStatus::Cancelled;
                t.completed_us = Some(now);
                t.error =
                    Some("cancelled by request while running; its process was stopped".into());
                logs.push((
                    "info",
                    "cancelled by request; process group stopped".to_string(),
                ));
                None
            }
            STOP_WORKFLOW => {
                t.status = TaskStatus::Cancelled;
                t.completed_us = Some(now);
                let why =
                    "stopped because its workflow ended (failed or cancelled; see workflow_status)";
                t.error = Some(why.into());
                logs.push(("warn", format!("{why}; process group stopped")));
                None
            }
            _ => Some((
                "the runner stopped without a result".to_string(),
                true,
                None,
            )),
        },
    };
    if let Some((error, retryable, retry_after)) = failure {
        if retryable && t.has_retries_left() {
            let retry = t.attempt.saturating_sub(t.retry_floor);
            // The back-off, or later if the other side asked for that (an HTTP retry-after),
            // within the same cap.
            let delay = backoff::delay_ms(backoff_base_ms, retry, backoff::TASK_RETRY_CAP_MS)
                .max(retry_after.map_or(0, |d| d.as_millis() as u64))
                .min(backoff::TASK_RETRY_CAP_MS);
            t.status = TaskStatus::Pending;
            t.scheduled_us = now + (delay as i64) * 1000;
            logs.push((
                "warn",
                format!(
                    "attempt {} failed: {error}; retry {retry} of {} in {:.1}s",
                    t.attempt,
                    t.max_retries,
                    delay as f64 / 1000.0
                ),
            ));
        } else {
            t.status = TaskStatus::Failed;
            t.completed_us = Some(now);
            let spent = if retryable {
                format!(" (no retries left of {})", t.max_retries)
            } else {
                String::new()
            };
            logs.push((
                "error",
                format!("attempt {} failed{spent}: {error}", t.attempt),
            ));
        }
        t.error = Some(error);
    }
    Transition { task: t, logs }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::state::STOP_NONE;

    fn running(attempt: u32, max_retries: u32) -> Task {
        Task {
            status: TaskStatus::Running,
            attempt,
            max_retries,
            pid: Some(42),
            ..Task::sample_for_tests()
        }
    }

    fn failed(retryable: bool) -> RunOutcome {
        RunOutcome::Failed {
            error: "exit 1".into(),
            retryable,
            retry_after: None,
        }
    }

    #[test]
    fn a_completed_attempt_keeps_its_result_and_merges_metadata() {
        let mut t = running(1, 0);
        t.metadata = Some(serde_json::json!({"mine": 1}));
        let mut extra = serde_json::Map::new();
        extra.insert("session_id".into(), "s".into());
        let done = RunOutcome::Completed {
            result: "ok".into(),
            usage: Default::default(),
            metadata: Some(extra),
        };
        let tr = settle(t, done, STOP_NONE, 1000, 7);
        assert_eq!(tr.task.status, TaskStatus::Completed);
        assert_eq!(tr.task.result.as_deref(), Some("ok"));
        assert_eq!(tr.task.completed_us, Some(7));
        assert_eq!(tr.task.pid, None);
        assert_eq!(
            tr.task.metadata,
            Some(serde_json::json!({"mine": 1, "session_id": "s"}))
        );
    }

    #[test]
    fn a_retryable_failure_with_retries_left_waits_a_back_off() {
        let tr = settle(running(1, 2), failed(true), STOP_NONE, 1000, 1_000_000);
        assert_eq!(tr.task.status, TaskStatus::Pending);
        // Equal jitter: between half the delay and the delay (1 s for the first retry).
        assert!((1_500_000..=2_000_000).contains(&tr.task.scheduled_us));
        assert!(tr.logs[0].1.contains("retry 1 of 2"), "{:?}", tr.logs);
    }

    #[test]
    fn a_fatal_failure_or_no_retries_left_fails_for_good() {
        let tr = settle(running(1, 5), failed(false), STOP_NONE, 1000, 9);
        assert_eq!(tr.task.status, TaskStatus::Failed);
        assert_eq!(tr.task.error.as_deref(), Some("exit 1"));
        let tr = settle(running(3, 2), failed(true), STOP_NONE, 1000, 9);
        assert_eq!(tr.task.status, TaskStatus::Failed);
        assert!(tr.logs[0].1.contains("no retries left of 2"));
    }

    #[test]
    fn stops_mean_what_asked_for_them() {
        let tr = settle(running(2, 0), RunOutcome::Stopped, STOP_SHUTDOWN, 1000, 9);
        assert_eq!((tr.task.status, tr.task.attempt), (TaskStatus::Pending, 1));
        let tr = settle(running(1, 0), RunOutcome::Stopped, STOP_CANCEL, 1000, 9);
        assert_eq!(tr.task.status, TaskStatus::Cancelled);
        let tr = settle(running(1, 0), RunOutcome::Stopped, STOP_TIMEOUT, 1000, 9);
        assert_eq!(tr.task.status, TaskStatus::Failed);
        assert!(tr.task.error.unwrap().contains("timed out"));
    }
}
