//! When an engine stops: the decision as a pure function ([`decide`]) and the watch that
//! applies it ([`watch`]). A detached engine — the one a session or CLI command started —
//! stays up while it is needed (sessions attached, tasks pending or running, webhooks owed,
//! dashboard pages open)
//! and exits once it has been idle for a while; an engine someone runs in the foreground
//! (`engine`, `api` mode) stays up until it is told to stop. Every engine stops at once on
//! SIGTERM/SIGINT or the stop command, and retires (stops once no work remains, whoever is
//! attached) when a session of another version asks it to.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Engine;

/// What keeps an engine needed at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    pub sessions: usize,
    /// Dashboard pages open (following the live feed), and its addresses handed out but not
    /// opened yet.
    pub viewers: usize,
    /// A task is pending or running.
    pub tasks: bool,
    /// A webhook event is owed.
    pub webhooks: bool,
}

impl Needs {
    /// Why the engine is needed, in words, or `None`. `retiring`: sessions no longer count.
    pub fn reason(&self, retiring: bool) -> Option<String> {
        let mut why = Vec::new();
        if self.sessions > 0 && !retiring {
            why.push(format!("{} session(s) attached", self.sessions));
        }
        if self.viewers > 0 && !retiring {
            why.push(format!(
                "{} dashboard page(s) open or about to be",
                self.viewers
            ));
        }
        if self.tasks {
            why.push("tasks pending or running".to_string());
        }
        if self.webhooks {
            why.push("webhooks owed".to_string());
        }
        (!why.is_empty()).then(|| why.join(", "))
    }
}

/// How an engine was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Started by a session or a CLI command: exits after being idle this long.
    Detached { idle: Duration },
    /// Run by a person or a service manager: stays up until told to stop.
    Foreground,
}

/// However short the idle period, a detached engine waits this long after its start before it
/// may exit: the session that started it attaches a moment after the engine is ready.
pub const STARTUP_GRACE: Duration = Duration::from_secs(3);

/// How long a stopping engine, its doors closed, waits for calls already under way before it
/// looks at its needs a last time.
const CLOSING_LOOK: Duration = Duration::from_millis(100);

/// What to do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Needed, for this reason.
    Stay(String),
    /// Not needed since `since`; not long enough to go.
    Idle { since: Instant },
    /// Stop (with the grace period).
    Stop(String),
}

/// The pure rule. `idle_since`: when the engine was last seen not needed (if it still is);
/// `started`: when the engine became ready.
pub fn decide(
    policy: Policy,
    needs: Needs,
    retiring: bool,
    idle_since: Option<Instant>,
    started: Instant,
    now: Instant,
) -> Decision {
    if let Some(why) = needs.reason(retiring) {
        return Decision::Stay(why);
    }
    if retiring {
        return Decision::Stop("retired: nothing left to do".into());
    }
    match policy {
        Policy::Foreground => Decision::Idle {
            since: idle_since.unwrap_or(now),
        },
        Policy::Detached { idle } => {
            let since = idle_since.unwrap_or(now);
            if now.duration_since(since) >= idle && now.duration_since(started) >= STARTUP_GRACE {
                Decision::Stop(format!("idle for {idle:?}"))
            } else {
                Decision::Idle { since }
            }
        }
    }
}

/// Runs until the engine should stop; returns why. `signal` is SIGTERM/SIGINT.
pub async fn watch(engine: &mut Engine, policy: Policy, signal: &CancellationToken) -> String {
    let requests = engine.stop_requests().clone();
    let given_up = engine.given_up();
    let started = Instant::now();
    let mut idle_since: Option<Instant> = None;
    let mut last = String::new();
    loop {
        let needs = engine.needs().await;
        match decide(
            policy,
            needs,
            requests.retire.is_cancelled(),
            idle_since,
            started,
            Instant::now(),
        ) {
            Decision::Stay(why) => {
                if why != last {
                    tracing::info!("staying up: {why}");
                    last = why;
                }
                idle_since = None;
            }
            Decision::Idle { since } => {
                if idle_since.is_none() {
                    tracing::info!("idle");
                    last.clear();
                }
                idle_since = Some(since);
            }
            Decision::Stop(why) => {
                // Close the doors, then look once more: a session or a call that came in
                // while the decision was taken keeps the engine up after all.
                requests.closing.store(true, Ordering::SeqCst);
                tokio::time::sleep(CLOSING_LOOK).await;
                let again = engine.needs().await;
                if again.reason(requests.retire.is_cancelled()).is_none() {
                    return why;
                }
                requests.closing.store(false, Ordering::SeqCst);
                idle_since = None;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = signal.cancelled() => return "signal received".into(),
            _ = requests.now.cancelled() => return "asked to stop".into(),
            _ = engine.http_stopped() => return "the HTTP server stopped".into(),
            _ = given_up.cancelled() => {
                return "the cluster gave this node up (it could not renew its lease in time); \
                        its tasks run elsewhere, and a new engine joins as a new node"
                    .into()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(30);

    fn needs(sessions: usize, tasks: bool, webhooks: bool) -> Needs {
        Needs {
            sessions,
            viewers: 0,
            tasks,
            webhooks,
        }
    }

    #[test]
    fn an_open_dashboard_keeps_it_up_unless_retiring() {
        let t0 = Instant::now();
        let n = Needs {
            viewers: 1,
            ..Needs::default()
        };
        let later = t0 + Duration::from_secs(3600);
        assert!(matches!(
            decide(
                Policy::Detached { idle: IDLE },
                n,
                false,
                Some(t0),
                t0,
                later
            ),
            Decision::Stay(_)
        ));
        assert!(matches!(
            decide(
                Policy::Detached { idle: IDLE },
                n,
                true,
                Some(t0),
                t0,
                later
            ),
            Decision::Stop(_)
        ));
    }

    #[test]
    fn any_need_keeps_it_up() {
        let now = Instant::now();
        for n in [
            needs(1, false, false),
            needs(0, true, false),
            needs(0, false, true),
        ] {
            let d = decide(
                Policy::Detached { idle: IDLE },
                n,
                false,
                Some(now),
                now,
                now + IDLE,
            );
            assert!(matches!(d, Decision::Stay(_)), "{n:?}: {d:?}");
        }
    }

    #[test]
    fn a_detached_engine_goes_after_the_idle_period_only() {
        let now = Instant::now();
        let p = Policy::Detached { idle: IDLE };
        let start = now;
        assert_eq!(
            decide(p, Needs::default(), false, None, start, now),
            Decision::Idle { since: now }
        );
        assert_eq!(
            decide(p, Needs::default(), false, Some(now), start, now + IDLE / 2),
            Decision::Idle { since: now }
        );
        assert!(matches!(
            decide(p, Needs::default(), false, Some(now), start, now + IDLE),
            Decision::Stop(_)
        ));
    }

    #[test]
    fn a_new_engine_waits_for_the_session_that_started_it() {
        let start = Instant::now();
        let p = Policy::Detached {
            idle: Duration::ZERO,
        };
        let early = start + STARTUP_GRACE / 2;
        assert!(matches!(
            decide(p, Needs::default(), false, Some(start), start, early),
            Decision::Idle { .. }
        ));
        assert!(matches!(
            decide(
                p,
                Needs::default(),
                false,
                Some(start),
                start,
                start + STARTUP_GRACE
            ),
            Decision::Stop(_)
        ));
    }

    #[test]
    fn a_foreground_engine_never_goes_by_itself() {
        let now = Instant::now();
        let d = decide(
            Policy::Foreground,
            Needs::default(),
            false,
            Some(now),
            now,
            now + Duration::from_secs(86_400),
        );
        assert!(matches!(d, Decision::Idle { .. }));
    }

    #[test]
    fn retiring_ignores_sessions_but_not_work() {
        let now = Instant::now();
        let p = Policy::Foreground;
        assert!(matches!(
            decide(p, needs(3, false, false), true, None, now, now),
            Decision::Stop(_)
        ));
        assert!(matches!(
            decide(p, needs(3, true, false), true, None, now, now),
            Decision::Stay(_)
        ));
    }
}
