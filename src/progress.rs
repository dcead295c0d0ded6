//! Progress notifications while a call blocks (`task_wait`, `task_run`) and its request carries
//! a `progressToken`: what to say ([`message`]) and when ([`Pacer`]), both pure, and the loop
//! that asks the engine where the tasks stand and sends the notes ([`while_waiting`]).
//!
//! A client shows the message on the tool call's row, and Claude Code resets its idle watchdog
//! with each note. A note goes out at once, at each change in what has finished, and otherwise
//! every few seconds; the engine is asked once a second, so never more than one note a second.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::api::WaitProgress;
use crate::frontend::Backend;
use crate::service::tools::ToolAnswer;

/// How often the engine is asked where the tasks stand.
const POLL: Duration = Duration::from_secs(1);
/// Longest a look at where the tasks stand may take before it is skipped.
const LOOK_WITHIN: Duration = Duration::from_secs(2);
/// Longest silence between two notes while nothing finishes.
pub const HEARTBEAT: Duration = Duration::from_secs(3);
/// Longest log line quoted in a message, and longest message.
const LOG_CHARS: usize = 80;
const MESSAGE_CHARS: usize = 300;

/// One progress notification.
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    /// Tasks finished, plus a fraction that grows with each note while none finishes: the
    /// protocol asks that `progress` increase with every notification.
    pub progress: f64,
    pub total: f64,
    pub message: String,
}

/// When to send the next note.
#[derive(Debug, Default)]
pub struct Pacer {
    last_finished: Option<usize>,
    last_sent: Option<Instant>,
    /// Notes sent since the last change in what has finished.
    beats: u32,
    /// The last `progress` sent: the next is always above it, even when fewer tasks are
    /// finished than before (one was retried).
    last_progress: Option<f64>,
}

impl Pacer {
    /// The note to send now, if one is due.
    pub fn next(&mut self, p: &WaitProgress, now: Instant) -> Option<Note> {
        let computed = if self.last_finished != Some(p.finished) {
            self.beats = 0;
            p.finished as f64
        } else if self
            .last_sent
            .is_none_or(|t| now.duration_since(t) >= HEARTBEAT)
        {
            self.beats += 1;
            p.finished as f64 + 1.0 - 1.0 / f64::from(self.beats + 1)
        } else {
            return None;
        };
        let progress = match self.last_progress {
            // Halfway from the last value to the next whole number.
            Some(last) if computed <= last => last + (1.0 - last.fract()) / 2.0,
            _ => computed,
        };
        self.last_progress = Some(progress);
        self.last_finished = Some(p.finished);
        self.last_sent = Some(now);
        Some(Note {
            progress,
            total: p.total as f64,
            message: message(p),
        })
    }
}

/// One line a person can read on the tool row, e.g.
/// `1 of 3 finished (build: completed) · running: test 12s — Running 42 tests · 1 pending`.
pub fn message(p: &WaitProgress) -> String {
    let mut parts = vec![format!("{} of {} finished", p.finished, p.total)];
    if !p.ended.is_empty() {
        let mut ended: Vec<String> = p
            .ended
            .iter()
            .take(3)
            .map(|t| format!("{}: {}", t.name, t.status.as_str()))
            .collect();
        if p.finished > 3 {
            ended.push(format!("+{} more", p.finished - 3));
        }
        parts[0] = format!("{} ({})", parts[0], ended.join(", "));
    }
    let running = p.running_count;
    for t in p.running.iter().take(2) {
        let mut r = format!("running: {}", t.name);
        if let Some(s) = t.running_seconds {
            r.push_str(&format!(" {}", duration(s)));
        }
        if let Some(line) = t
            .last_log
            .as_deref()
            .map(str::trim)
            .filter(|l| !l.is_empty())
        {
            r.push_str(&format!(" — {}", clip(line, LOG_CHARS)));
        }
        parts.push(r);
    }
    if running > 2 {
        parts.push(format!("+{} more running", running - 2));
    }
    if p.pending > 0 {
        parts.push(format!("{} pending", p.pending));
    }
    clip(&parts.join(" · "), MESSAGE_CHARS)
}

fn duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// At most `max` characters, with `…` where it was cut.
fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Runs `call` (a wait on `task_ids`) and, until it answers, sends notes through `send`.
/// Progress is best effort: if the engine cannot say where the tasks stand, no note goes out
/// and the call carries on.
pub async fn while_waiting<F, S, SF>(
    backend: &Backend,
    task_ids: &[String],
    mut send: S,
    call: F,
) -> ToolAnswer
where
    F: Future<Output = ToolAnswer>,
    S: FnMut(Note) -> SF,
    SF: Future<Output = ()>,
{
    tokio::pin!(call);
    let mut pacer = Pacer::default();
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            answer = &mut call => return answer,
            _ = tick.tick() => {
                // Bounded, so that an engine that does not answer cannot hold up the answer.
                let looked = tokio::time::timeout(LOOK_WITHIN, backend.progress(task_ids)).await;
                if let Ok(Some(p)) = looked {
                    if let Some(note) = pacer.next(&p, Instant::now()) {
                        send(note).await;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ProgressTask;
    use crate::model::TaskStatus;

    fn task(name: &str, status: TaskStatus) -> ProgressTask {
        ProgressTask {
            task_id: format!("id-{name}"),
            name: name.into(),
            status,
            running_seconds: None,
            last_log: None,
        }
    }

    fn three() -> WaitProgress {
        let mut test = task("test", TaskStatus::Running);
        test.running_seconds = Some(12);
        test.last_log = Some("  Running 42 tests\n".into());
        WaitProgress {
            total: 3,
            finished: 1,
            ended: vec![task("build", TaskStatus::Completed)],
            running: vec![test],
            running_count: 1,
            pending: 1,
        }
    }

    #[test]
    fn the_message_says_what_finished_what_runs_and_what_waits() {
        assert_eq!(
            message(&three()),
            "1 of 3 finished (build: completed) · running: test 12s — Running 42 tests · 1 pending"
        );
        let none = WaitProgress {
            total: 1,
            pending: 1,
            ..WaitProgress::default()
        };
        assert_eq!(message(&none), "0 of 1 finished · 1 pending");
    }

    #[test]
    fn long_runs_and_long_lines_stay_short() {
        let mut p = three();
        p.running[0].running_seconds = Some(3723);
        p.running[0].last_log = Some("x".repeat(500));
        let m = message(&p);
        assert!(m.contains("running: test 1h02m — "), "{m}");
        assert!(m.chars().count() <= MESSAGE_CHARS);
        assert!(m.ends_with("x… · 1 pending"), "{m}");
        assert_eq!(duration(75), "1m15s");
        let many = WaitProgress {
            total: 10,
            finished: 5,
            ended: (0..5)
                .map(|i| task(&format!("t{i}"), TaskStatus::Failed))
                .collect(),
            running: (0..4)
                .map(|i| task(&format!("r{i}"), TaskStatus::Running))
                .collect(),
            running_count: 4,
            pending: 1,
        };
        let m = message(&many);
        assert!(
            m.starts_with("5 of 10 finished (t0: failed, t1: failed, t2: failed, +2 more)"),
            "{m}"
        );
        assert!(
            m.contains("running: r1 · +2 more running · 1 pending"),
            "{m}"
        );
    }

    #[test]
    fn notes_go_out_at_once_at_each_end_and_every_few_seconds_always_increasing() {
        let t0 = Instant::now();
        let mut pacer = Pacer::default();
        let mut p = three();
        let first = pacer.next(&p, t0).expect("at once");
        assert_eq!((first.progress, first.total), (1.0, 3.0));
        // Nothing changed: quiet until the heartbeat.
        assert!(pacer.next(&p, t0 + Duration::from_secs(1)).is_none());
        let beat = pacer.next(&p, t0 + HEARTBEAT).expect("heartbeat");
        assert!(beat.progress > 1.0 && beat.progress < 2.0);
        let beat2 = pacer.next(&p, t0 + HEARTBEAT * 2).expect("heartbeat");
        assert!(beat2.progress > beat.progress && beat2.progress < 2.0);
        // A task ends: a note at once, even right after the last one.
        p.finished = 2;
        let end = pacer
            .next(&p, t0 + HEARTBEAT * 2 + Duration::from_millis(1))
            .unwrap();
        assert_eq!(end.progress, 2.0);
        assert!(end.progress > beat2.progress);
        p.finished = 3;
        let all = pacer
            .next(&p, t0 + HEARTBEAT * 2 + Duration::from_secs(1))
            .unwrap();
        assert_eq!(all.progress, all.total);
    }

    #[test]
    fn progress_never_goes_back_when_a_finished_task_is_retried() {
        let t0 = Instant::now();
        let mut pacer = Pacer::default();
        let mut p = three();
        p.finished = 2;
        let a = pacer.next(&p, t0).unwrap();
        assert_eq!(a.progress, 2.0);
        p.finished = 1;
        let b = pacer.next(&p, t0 + Duration::from_secs(1)).unwrap();
        assert!(b.progress > a.progress && b.progress < 3.0, "{b:?}");
        p.finished = 2;
        let c = pacer.next(&p, t0 + Duration::from_secs(2)).unwrap();
        assert!(c.progress > b.progress && c.progress < 3.0, "{c:?}");
        p.finished = 3;
        let d = pacer.next(&p, t0 + Duration::from_secs(3)).unwrap();
        assert_eq!(d.progress, 3.0);
    }
}
