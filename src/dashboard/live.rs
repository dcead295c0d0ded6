//! The live feed of an open page: server-sent events made from the store's change feed.
//!
//! Changes are gathered and sent at most every [`TICK`], as one `changed` event naming what
//! changed (task ids with their new status, workflow ids; past [`MAX_IDS`] only `more`), so a
//! burst of a thousand ends is one reload of a page, not a thousand. A page that watches one
//! task also gets that task's log lines (`log` events). A connection holds at most what one
//! tick gathers, bounded; one that falls behind the feed gets `resync` and reloads what it
//! shows. So a page left open for a day costs the engine the same as one opened a minute ago.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use futures_util::stream::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use super::{Dash, ViewerGuard};
use crate::model::{rfc3339, LogLine, TaskStatus};
use crate::store::feed::Change;

/// How often gathered changes are sent.
const TICK: Duration = Duration::from_millis(250);
/// Most ids one `changed` event names.
const MAX_IDS: usize = 200;
/// Most log lines held between two ticks; more means `resync`.
const MAX_LINES: usize = 2000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// The task whose log lines to send.
    task: Option<String>,
    /// The page key (read by the guard).
    #[allow(dead_code)]
    k: Option<String>,
}

/// What one tick gathered: pure bookkeeping, sent as events by [`events`].
#[derive(Debug, Default)]
pub struct Gathered {
    tasks: BTreeMap<Uuid, TaskStatus>,
    workflows: BTreeSet<Uuid>,
    deliveries: BTreeSet<Uuid>,
    more: bool,
    lines: Vec<LogLine>,
    resync: bool,
}

/// The `changed` event's data.
#[derive(Debug, Serialize, PartialEq)]
pub struct Changed {
    /// Task id → its status now.
    tasks: BTreeMap<String, TaskStatus>,
    workflows: Vec<String>,
    /// Tasks or workflows whose webhook deliveries changed.
    deliveries: Vec<String>,
    /// More changed than is named.
    more: bool,
}

impl Gathered {
    /// Takes one change in; `watched`: the task whose lines the page shows.
    pub fn take(&mut self, c: Change, watched: Option<Uuid>) {
        let full = |n: usize| n >= MAX_IDS;
        match c {
            Change::Task {
                id,
                workflow,
                status,
            } => {
                if self.tasks.contains_key(&id) || !full(self.tasks.len()) {
                    self.tasks.insert(id, status);
                } else {
                    self.more = true;
                }
                if let Some(w) = workflow {
                    self.workflow(w);
                }
            }
            Change::Workflow { id } => self.workflow(id),
            Change::More => self.more = true,
            Change::Delivery { task, workflow } => {
                for id in task.into_iter().chain(workflow) {
                    if !full(self.deliveries.len()) {
                        self.deliveries.insert(id);
                    } else {
                        self.more = true;
                    }
                }
            }
            Change::Logs(lines) => {
                if watched != lines.first().map(|l| l.task_id) {
                    return;
                }
                if self.lines.len() + lines.len() > MAX_LINES {
                    self.resync = true;
                    self.lines.clear();
                    return;
                }
                self.lines.extend(lines.iter().map(|l| LogLine {
                    seq: l.seq,
                    ts: rfc3339(l.ts_us),
                    level: l.level.to_string(),
                    message: l.message.clone(),
                }));
            }
        }
    }

    fn workflow(&mut self, id: Uuid) {
        if self.workflows.contains(&id) || self.workflows.len() < MAX_IDS {
            self.workflows.insert(id);
        } else {
            self.more = true;
        }
    }

    /// The events to send now (none when nothing happened), and empties itself.
    pub fn drain(&mut self) -> Vec<(&'static str, String)> {
        let g = std::mem::take(self);
        let mut out = Vec::new();
        if g.resync {
            out.push(("resync", "{}".to_string()));
            return out;
        }
        if !g.lines.is_empty() {
            out.push((
                "log",
                serde_json::to_string(&g.lines).unwrap_or_else(|_| "[]".into()),
            ));
        }
        if !(g.tasks.is_empty() && g.workflows.is_empty() && g.deliveries.is_empty() && !g.more) {
            let c = Changed {
                tasks: g.tasks.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
                workflows: g.workflows.iter().map(Uuid::to_string).collect(),
                deliveries: g.deliveries.iter().map(Uuid::to_string).collect(),
                more: g.more,
            };
            out.push((
                "changed",
                serde_json::to_string(&c).unwrap_or_else(|_| "{}".into()),
            ));
        }
        out
    }
}

/// `GET /dashboard/api/events[?task=<id>]`.
pub async fn events(
    State(d): State<Dash>,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> axum::response::Response {
    let task = match super::pages::query(q) {
        Ok(q) => q.task,
        Err(e) => return e.into_response(),
    };
    let watched = match task.map(|t| Uuid::parse_str(&t).map_err(|_| t)).transpose() {
        Ok(w) => w,
        Err(t) => {
            return crate::rest::ApiError::bad_request(format!("task {t:?} is not a task id"))
                .into_response()
        }
    };
    let viewer = d.viewers.enter();
    let stream = feed(d, watched, viewer);
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

struct Follow {
    d: Dash,
    rx: tokio::sync::broadcast::Receiver<Change>,
    watched: Option<Uuid>,
    gathered: Gathered,
    ready: std::collections::VecDeque<(&'static str, String)>,
    tick: tokio::time::Interval,
    _viewer: ViewerGuard,
    _lines: Option<crate::store::feed::Following>,
}

fn feed(
    d: Dash,
    watched: Option<Uuid>,
    viewer: ViewerGuard,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let follow = Follow {
        rx: d.service.changes(),
        _lines: watched.map(|t| d.service.follow_lines(t)),
        d,
        watched,
        gathered: Gathered::default(),
        // The page loads its data after it sees this, so nothing falls between the two.
        ready: [("ready", "{}".to_string())].into(),
        tick,
        _viewer: viewer,
    };
    futures_util::stream::unfold(follow, |mut f| async move {
        loop {
            if let Some((name, data)) = f.ready.pop_front() {
                return Some((Ok(Event::default().event(name).data(data)), f));
            }
            tokio::select! {
                _ = f.d.stop.cancelled() => return None,
                r = f.rx.recv() => match r {
                    Ok(c) => f.gathered.take(c, f.watched),
                    Err(RecvError::Lagged(_)) => f.gathered.resync = true,
                    Err(RecvError::Closed) => return None,
                },
                _ = f.tick.tick() => f.ready.extend(f.gathered.drain()),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::model::NewLogLine;

    fn task(id: Uuid, status: TaskStatus) -> Change {
        Change::Task {
            id,
            workflow: None,
            status,
        }
    }

    fn lines(task: Uuid, seqs: std::ops::Range<i64>) -> Change {
        Change::Logs(Arc::new(
            seqs.map(|seq| NewLogLine {
                task_id: task,
                seq,
                ts_us: 0,
                level: "info",
                message: format!("l{seq}"),
            })
            .collect(),
        ))
    }

    #[test]
    fn a_burst_is_one_event_with_the_latest_status() {
        let mut g = Gathered::default();
        let id = Uuid::now_v7();
        g.take(task(id, TaskStatus::Pending), None);
        g.take(task(id, TaskStatus::Running), None);
        g.take(task(id, TaskStatus::Completed), None);
        let ev = g.drain();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].0, "changed");
        assert!(
            ev[0].1.contains(&format!("\"{id}\":\"completed\"")),
            "{}",
            ev[0].1
        );
        assert!(g.drain().is_empty(), "drained");
    }

    #[test]
    fn too_many_ids_become_more() {
        let mut g = Gathered::default();
        for _ in 0..MAX_IDS + 5 {
            g.take(task(Uuid::now_v7(), TaskStatus::Completed), None);
        }
        assert_eq!(g.tasks.len(), MAX_IDS);
        assert!(g.more);
    }

    #[test]
    fn only_the_watched_tasks_lines_and_too_many_is_resync() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let mut g = Gathered::default();
        g.take(lines(b, 1..5), Some(a));
        assert!(g.drain().is_empty());
        g.take(lines(a, 1..3), Some(a));
        let ev = g.drain();
        assert_eq!(ev[0].0, "log");
        assert!(ev[0].1.contains("l2"));
        g.take(lines(a, 0..MAX_LINES as i64 + 1), Some(a));
        assert_eq!(g.drain(), vec![("resync", "{}".to_string())]);
    }
}
