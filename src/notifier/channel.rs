//! Telling a session that what it handed off has ended, without being asked.
//!
//! A session (the process an MCP client started) that submits a task (`task_async`) or creates
//! a workflow *claims* it here under its session id. When the task or workflow ends, the event
//! goes to that session's attach stream, and the session passes it on to its client as a
//! `notifications/claude/channel` event. Only the session that handed the work off is told;
//! tasks added to a workflow are told as the workflow's end. A blocking `task_run` does not
//! claim its task — its answer tells the end — unless the call is cancelled while the task
//! runs on.
//!
//! This is a courtesy, not a record: claims live in the engine's memory. If the session has
//! gone, or the engine restarted in between, nothing is sent — the durable record is the task
//! itself, which `task_status`, `task_wait` and the `ended` command (the Claude Code hook) read.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use uuid::Uuid;

use crate::api::ChannelEvent;
use crate::model::{Task, TaskStatus, Workflow};

/// What a session handed off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Handoff {
    Task(Uuid),
    Workflow(Uuid),
}

/// Events queued for one attached session before the oldest are dropped (a session reads its
/// stream continuously; this only bounds a stuck one).
const QUEUE: usize = 1024;
/// Ends kept for a claim that may still come: a fast task can end before the `task_async`
/// that submitted it has been answered and claimed.
const UNCLAIMED_KEPT: usize = 256;
const UNCLAIMED_FOR: Duration = Duration::from_secs(30);
/// Lines of a result or an error quoted in an event, and most bytes.
const QUOTED_LINES: usize = 6;
const QUOTED_BYTES: usize = 600;

/// The claims and the attached sessions. Cheap to clone.
#[derive(Clone, Default)]
pub struct Channels {
    hub: Arc<Mutex<Hub>>,
}

#[derive(Default)]
struct Hub {
    owners: HashMap<Handoff, Arc<str>>,
    sessions: HashMap<Arc<str>, (u64, mpsc::Sender<ChannelEvent>)>,
    unclaimed: VecDeque<(Handoff, ChannelEvent, Instant)>,
    next_subscription: u64,
}

impl Hub {
    fn send(&mut self, session: &str, event: ChannelEvent) {
        match self.sessions.get(session) {
            Some((_, tx)) => {
                if tx.try_send(event).is_err() {
                    tracing::warn!(
                        session,
                        "a session's channel queue is full; an event was dropped"
                    );
                }
            }
            None => tracing::debug!(
                session,
                "the session that handed off work has gone; its event is not sent"
            ),
        }
    }
}

impl Channels {
    fn hub(&self) -> std::sync::MutexGuard<'_, Hub> {
        self.hub.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `what` ended elsewhere (another node of a cluster recorded it): its claimer here, if it
    /// still has one, is told. Nothing is kept for a later claim: that end is told where it
    /// was recorded.
    pub fn ended_if_claimed(&self, what: Handoff, event: impl FnOnce() -> ChannelEvent) {
        let mut hub = self.hub();
        if let Some(session) = hub.owners.remove(&what) {
            hub.send(&session, event());
        }
    }

    /// `session` handed off `what`: tell it when `what` ends — at once if it ended a moment
    /// ago. `ended`: it is known to have ended already, so only a recent end is told. A claim
    /// never takes `what` from a session that claimed it first.
    pub fn claim(&self, what: Handoff, session: &str, ended: bool) {
        let mut hub = self.hub();
        if let Some(i) = hub.unclaimed.iter().position(|(w, _, _)| *w == what) {
            if let Some((_, event, _)) = hub.unclaimed.remove(i) {
                hub.send(session, event);
            }
            return;
        }
        if !ended {
            hub.owners.entry(what).or_insert_with(|| session.into());
        }
    }

    /// `what` has ended: its claimer, if any, is told. The event is only made when some
    /// session could be told.
    pub fn ended(&self, what: Handoff, event: impl FnOnce() -> ChannelEvent) {
        let mut hub = self.hub();
        if hub.sessions.is_empty() && hub.owners.is_empty() {
            return;
        }
        match hub.owners.remove(&what) {
            Some(session) => hub.send(&session, event()),
            None => {
                let event = event();
                let now = Instant::now();
                while hub.unclaimed.len() >= UNCLAIMED_KEPT
                    || hub
                        .unclaimed
                        .front()
                        .is_some_and(|(_, _, at)| now.duration_since(*at) > UNCLAIMED_FOR)
                {
                    hub.unclaimed.pop_front();
                }
                hub.unclaimed.push_back((what, event, now));
            }
        }
    }

    /// The events for `session` while the returned subscription lives (a newer subscription
    /// of the same session replaces it).
    pub fn subscribe(&self, session: &str) -> Subscription {
        let (tx, rx) = mpsc::channel(QUEUE);
        let mut hub = self.hub();
        hub.next_subscription += 1;
        let id = hub.next_subscription;
        hub.sessions.insert(session.into(), (id, tx));
        Subscription {
            rx,
            channels: self.clone(),
            session: session.into(),
            id,
        }
    }

    /// What sessions handed off here and wait to be told of.
    pub fn awaited(&self) -> Vec<Handoff> {
        self.hub().owners.keys().copied().collect()
    }

    /// Claims not yet ended (for tests and the overview).
    pub fn claims(&self) -> usize {
        self.hub().owners.len()
    }
}

/// One attached session's events; unsubscribes when dropped.
pub struct Subscription {
    rx: mpsc::Receiver<ChannelEvent>,
    channels: Channels,
    session: Arc<str>,
    id: u64,
}

impl Subscription {
    pub async fn recv(&mut self) -> Option<ChannelEvent> {
        self.rx.recv().await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut hub = self.channels.hub();
        if hub.sessions.get(&self.session).map(|(id, _)| *id) == Some(self.id) {
            hub.sessions.remove(&self.session);
        }
    }
}

/// The event for a task that has ended.
pub fn task_event(task: &Task) -> ChannelEvent {
    let id = task.id.to_string();
    let mut content = format!(
        "Background task \"{}\" (agent {}) {}",
        task.name,
        task.agent_name,
        outcome(task.status)
    );
    let body = match task.status {
        TaskStatus::Completed => task.result.as_deref(),
        _ => task.error.as_deref(),
    };
    if let Some(text) = body.map(str::trim).filter(|t| !t.is_empty()) {
        let (quoted, cut) = first_lines(text, QUOTED_LINES, QUOTED_BYTES);
        content.push_str(":\n");
        content.push_str(&quoted);
        if cut {
            content.push_str("\n…");
        }
    } else {
        content.push('.');
    }
    let branch = task.workspace.as_ref().and_then(|w| w.view().branch);
    if let Some(b) = &branch {
        content.push_str(&format!(
            "\nIts changes are on the git branch {b} (task_diff shows them)."
        ));
    }
    content.push_str(&format!(
        "\nRead it all with task_status {{\"task_id\": \"{id}\"}}."
    ));
    let mut meta = BTreeMap::new();
    meta.insert("task_id".into(), id);
    meta.insert("status".into(), task.status.as_str().into());
    meta.insert("name".into(), task.name.clone());
    meta.insert("agent".into(), task.agent_name.clone());
    if let Some(b) = branch {
        meta.insert("branch".into(), b);
    }
    ChannelEvent { content, meta }
}

/// The event for a workflow that has ended.
pub fn workflow_event(wf: &Workflow) -> ChannelEvent {
    let id = wf.id.to_string();
    let mut content = format!(
        "Workflow \"{}\" {}",
        wf.name,
        outcome_word(wf.status.as_str())
    );
    if let Some(e) = wf.error.as_deref().filter(|e| !e.trim().is_empty()) {
        let (quoted, _) = first_lines(e.trim(), QUOTED_LINES, QUOTED_BYTES);
        content.push_str(": ");
        content.push_str(&quoted);
    } else {
        content.push('.');
    }
    content.push_str(&format!(
        "\nSee its phases and tasks with workflow_status {{\"workflow_id\": \"{id}\"}}."
    ));
    let mut meta = BTreeMap::new();
    meta.insert("workflow_id".into(), id);
    meta.insert("status".into(), wf.status.as_str().into());
    meta.insert("name".into(), wf.name.clone());
    ChannelEvent { content, meta }
}

fn outcome(status: TaskStatus) -> &'static str {
    outcome_word(status.as_str())
}

fn outcome_word(status: &str) -> &'static str {
    match status {
        "completed" => "completed",
        "failed" => "failed",
        "cancelled" => "was cancelled",
        _ => "ended",
    }
}

/// The first `lines` lines of `text`, at most `max_bytes` (cut on a character boundary), and
/// whether anything was left out. Only what is kept is copied: a result of one huge line costs
/// no more than a short one.
pub fn first_lines(text: &str, lines: usize, max_bytes: usize) -> (String, bool) {
    let end = text
        .match_indices('\n')
        .nth(lines.saturating_sub(1))
        .map_or(text.len(), |(i, _)| i);
    let kept = text[..end].trim_end_matches(['\r', '\n']);
    let mut cut = !text[end..].trim_start_matches(['\r', '\n']).is_empty();
    let kept = if kept.len() > max_bytes {
        cut = true;
        &kept[..crate::limits::floor_char_boundary(kept, max_bytes)]
    } else {
        kept
    };
    (kept.to_string(), cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(text: &str) -> ChannelEvent {
        ChannelEvent {
            content: text.into(),
            meta: BTreeMap::new(),
        }
    }

    #[test]
    fn only_the_first_claiming_session_is_told() {
        let c = Channels::default();
        let mut a = c.subscribe("a");
        let mut b = c.subscribe("b");
        let t = Handoff::Task(Uuid::now_v7());
        c.claim(t, "a", false);
        c.claim(t, "b", false);
        c.ended(t, || event("done"));
        assert_eq!(a.rx.try_recv().unwrap().content, "done");
        assert!(b.rx.try_recv().is_err());
        assert_eq!(c.claims(), 0);
    }

    #[test]
    fn an_end_recorded_elsewhere_is_told_once_to_its_claimer_and_never_kept() {
        let c = Channels::default();
        let mut a = c.subscribe("a");
        let t = Handoff::Task(Uuid::now_v7());
        c.claim(t, "a", false);
        assert_eq!(c.awaited(), vec![t]);
        c.ended_if_claimed(t, || event("far"));
        // Told already: a second look, or this node's own end, finds no claim.
        c.ended_if_claimed(t, || event("again"));
        assert_eq!(a.rx.try_recv().unwrap().content, "far");
        assert!(a.rx.try_recv().is_err());
        assert!(c.awaited().is_empty());
        // Unclaimed, nothing is kept for a later claim.
        let u = Handoff::Task(Uuid::now_v7());
        c.ended_if_claimed(u, || event("nobody"));
        c.claim(u, "a", true);
        assert!(a.rx.try_recv().is_err());
    }

    #[test]
    fn an_end_before_its_claim_is_told_at_the_claim() {
        let c = Channels::default();
        let mut a = c.subscribe("a");
        let t = Handoff::Task(Uuid::now_v7());
        c.ended(t, || event("fast"));
        assert!(a.rx.try_recv().is_err());
        c.claim(t, "a", true);
        assert_eq!(a.rx.try_recv().unwrap().content, "fast");
        // An end known already and no longer kept leaves no claim behind.
        c.claim(Handoff::Task(Uuid::now_v7()), "a", true);
        assert_eq!(c.claims(), 0);
    }

    #[test]
    fn a_gone_session_is_not_told_and_a_newer_subscription_survives_the_older() {
        let c = Channels::default();
        let old = c.subscribe("a");
        let mut new = c.subscribe("a");
        drop(old);
        let t = Handoff::Workflow(Uuid::now_v7());
        c.claim(t, "a", false);
        c.ended(t, || event("wf"));
        assert_eq!(new.rx.try_recv().unwrap().content, "wf");
        drop(new);
        let t2 = Handoff::Task(Uuid::now_v7());
        c.claim(t2, "a", false);
        c.ended(t2, || event("nobody"));
        assert_eq!(c.claims(), 0);
    }

    #[test]
    fn unclaimed_ends_are_bounded() {
        let c = Channels::default();
        let _a = c.subscribe("a");
        for i in 0..(UNCLAIMED_KEPT + 10) {
            c.ended(Handoff::Task(Uuid::now_v7()), || event(&i.to_string()));
        }
        assert_eq!(c.hub().unclaimed.len(), UNCLAIMED_KEPT);
    }

    #[test]
    fn first_lines_cuts_by_lines_and_bytes() {
        assert_eq!(first_lines("a\nb", 5, 100), ("a\nb".into(), false));
        assert_eq!(first_lines("a\nb\nc", 2, 100), ("a\nb".into(), true));
        assert_eq!(first_lines("ééé", 5, 3), ("é".into(), true));
        assert_eq!(first_lines("a\nb\n", 2, 100), ("a\nb".into(), false));
        assert_eq!(first_lines("", 2, 100), ("".into(), false));
    }

    #[test]
    fn a_task_event_says_what_ended_and_how_to_read_it() {
        let mut t = crate::model::Task::sample_for_tests();
        t.name = "build".into();
        t.agent_name = "shell".into();
        t.status = TaskStatus::Failed;
        t.error = Some("exit 3\nline2".into());
        let e = task_event(&t);
        assert!(
            e.content
                .starts_with("Background task \"build\" (agent shell) failed:\nexit 3\nline2"),
            "{}",
            e.content
        );
        assert!(e
            .content
            .contains(&format!("task_status {{\"task_id\": \"{}\"}}", t.id)));
        assert_eq!(e.meta["status"], "failed");
        assert_eq!(e.meta["agent"], "shell");
        assert_eq!(e.meta["task_id"], t.id.to_string());
        assert!(!e.meta.contains_key("branch"));
    }

    #[test]
    fn an_isolated_task_event_names_its_branch() {
        let mut t = crate::model::Task::sample_for_tests();
        t.status = TaskStatus::Completed;
        t.result = Some("done".into());
        t.workspace = Some(crate::model::Workspace {
            repository: "/r".into(),
            subdir: String::new(),
            common_dir: "/r/.git".into(),
            branch: "orchestr8/t-1".into(),
            base_commit: "a".into(),
            head_commit: Some("b".into()),
            files_changed: 1,
            insertions: 1,
            deletions: 0,
            branch_kept: true,
        });
        let e = task_event(&t);
        assert_eq!(e.meta["branch"], "orchestr8/t-1");
        assert!(
            e.content.contains("git branch orchestr8/t-1"),
            "{}",
            e.content
        );
    }
}
