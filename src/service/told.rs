//! What each project has been told: the memory behind the Claude Code hook that tells a new
//! session, once, which background tasks submitted from its project ended since it was last
//! told — so a user who closed the window yesterday hears about it on their first prompt today.
//!
//! Per project, a cursor: the latest end time told, plus the tasks told that ended within
//! [`MARGIN_US`] of it. Ends are committed in roughly, not exactly, the order of their
//! timestamps (workers commit concurrently), so each look reaches back by the margin and skips
//! what it already told; a task that ends again after a retry is told again. The cursors live
//! in `<db>.told.json` next to the database, replaced atomically on each change; looks are
//! serialized, so two hooks at once cannot both tell the same task.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Core, Result, Service, ServiceError};
use crate::api::{EndedReport, EndedTask};
use crate::model::{rfc3339, Task, TaskStatus};

/// How far a look reaches back behind the cursor.
pub const MARGIN_US: i64 = 10_000_000;
/// Most ended tasks read in one look: the newest; older ones in the same look are only
/// counted (a project that comes back after a thousand ends hears of the last ones and a count).
const BATCH: u32 = 500;

/// One project's cursor.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    /// The latest end time told (µs since the epoch).
    pub since_us: i64,
    /// Tasks told that ended within the margin of `since_us`: (task, its end time).
    pub told: Vec<(Uuid, i64)>,
}

impl Cursor {
    /// Where the next look starts (exclusive).
    pub fn look_after(&self) -> i64 {
        if self.since_us == 0 {
            0
        } else {
            self.since_us - MARGIN_US
        }
    }

    /// Of `ended` (found after [`Cursor::look_after`]), the ones not told yet, and the cursor
    /// that counts them as told.
    pub fn tell<'a>(&self, ended: &'a [Task]) -> (Vec<&'a Task>, Cursor) {
        let told: HashSet<(Uuid, i64)> = self.told.iter().copied().collect();
        let fresh: Vec<&Task> = ended
            .iter()
            .filter(|t| !told.contains(&(t.id, t.completed_us.unwrap_or(0))))
            .collect();
        let since_us = fresh
            .iter()
            .filter_map(|t| t.completed_us)
            .chain([self.since_us])
            .max()
            .unwrap_or(0);
        let keep_from = since_us - MARGIN_US;
        let told = self
            .told
            .iter()
            .copied()
            .chain(fresh.iter().map(|t| (t.id, t.completed_us.unwrap_or(0))))
            .filter(|(_, at)| *at > keep_from)
            .collect();
        (fresh, Cursor { since_us, told })
    }
}

/// The cursors of every project, in `<db>.told.json`.
pub struct ToldBook {
    path: PathBuf,
    /// One look at a time, so that a task is told once.
    turn: tokio::sync::Mutex<()>,
}

impl ToldBook {
    pub fn new(db: &str) -> Arc<ToldBook> {
        Arc::new(ToldBook {
            path: PathBuf::from(format!("{db}.told.json")),
            turn: tokio::sync::Mutex::new(()),
        })
    }

    fn load(&self) -> BTreeMap<String, Cursor> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(
                    "{} is unreadable ({e}); starting it again",
                    self.path.display()
                );
                BTreeMap::new()
            }),
            Err(_) => BTreeMap::new(),
        }
    }

    fn save(&self, book: &BTreeMap<String, Cursor>) -> std::io::Result<()> {
        let dir = self.path.parent().unwrap_or(std::path::Path::new("."));
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        serde_json::to_writer(&mut tmp, book)?;
        tmp.as_file().sync_data()?;
        tmp.persist(&self.path).map_err(|e| e.error)?;
        // The rename itself is durable once the folder is synced.
        std::fs::File::open(dir)?.sync_all()
    }
}

impl Service {
    /// The tasks of `project` that ended since it was last told, now counted as told.
    pub async fn tell_ended(&self, project: &str) -> Result<EndedReport> {
        let trimmed = project.trim_end_matches('/');
        let project = if trimmed.is_empty() { project } else { trimmed };
        if !project.starts_with('/') {
            return Err(ServiceError::Invalid(format!(
                "project must be an absolute directory (got {project:?})"
            )));
        }
        let book = self.told.clone();
        let _turn = book.turn.lock().await;
        let mut cursors = {
            let book = book.clone();
            tokio::task::spawn_blocking(move || book.load())
                .await
                .map_err(|e| ServiceError::Internal(e.to_string()))?
        };
        let cursor = cursors.get(project).cloned().unwrap_or_default();
        let (ended, total) = match &self.core {
            Core::Local(s) => {
                s.store()
                    .ended_in_project(project.to_string(), cursor.look_after(), BATCH)
                    .await?
            }
            Core::Cluster(c) => {
                c.ended_in_project(project, cursor.look_after(), BATCH)
                    .await?
            }
        };
        let (mut fresh, next) = cursor.tell(&ended);
        fresh.sort_by_key(|t| (t.completed_us, t.id));
        let unread = total.saturating_sub(ended.len() as u64);
        let report = report(project, &fresh, unread);
        if next != cursor {
            cursors.insert(project.to_string(), next);
            // Saved before answering: a task is told at most once, even across a crash.
            let saving = book.clone();
            tokio::task::spawn_blocking(move || saving.save(&cursors))
                .await
                .map_err(|e| ServiceError::Internal(e.to_string()))?
                .map_err(|e| {
                    ServiceError::Internal(format!("saving {}: {e}", book.path.display()))
                })?;
        }
        Ok(report)
    }
}

/// The newest [`EndedReport::LISTED`] of `fresh` (sorted in the order they ended); the rest,
/// and `unread` older ones, counted.
fn report(project: &str, fresh: &[&Task], unread: u64) -> EndedReport {
    let skip = fresh.len().saturating_sub(EndedReport::LISTED);
    EndedReport {
        project: project.to_string(),
        tasks: fresh[skip..]
            .iter()
            .map(|t| {
                let text = match t.status {
                    TaskStatus::Completed => t.result.as_deref(),
                    _ => t.error.as_deref(),
                };
                EndedTask {
                    task_id: t.id.to_string(),
                    name: t.name.clone(),
                    agent_name: t.agent_name.clone(),
                    status: t.status,
                    completed_at: t.completed_us.map(rfc3339),
                    line: text.and_then(one_line),
                    branch: t.workspace.as_ref().and_then(|w| w.view().branch),
                }
            })
            .collect(),
        more: skip as u64 + unread,
    }
}

/// One line that says what a result or an error is: its first non-empty line, joined with
/// the next when it only introduces it (ends with a colon, as "exit status 1; end of stderr:"
/// does), at most 200 bytes.
fn one_line(text: &str) -> Option<String> {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next()?;
    let line = match lines.next() {
        Some(next) if first.ends_with(':') => format!("{first} {next}"),
        _ => first.to_string(),
    };
    Some(crate::notifier::channel::first_lines(&line, 1, 200).0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(at: i64) -> Task {
        Task {
            status: TaskStatus::Completed,
            completed_us: Some(at),
            ..Task::sample_for_tests()
        }
    }

    #[test]
    fn each_end_is_told_once_even_when_committed_out_of_order() {
        let base = 1_000_000_000_000;
        let a = ended(base);
        let b = ended(base + 5_000);
        let first_look = [a.clone(), b.clone()];
        let (told, c1) = Cursor::default().tell(&first_look);
        assert_eq!(told.len(), 2);
        assert_eq!(c1.since_us, base + 5_000);
        // A late commit with an earlier end time, within the margin: told, the others not again.
        let late = ended(base + 1_000);
        assert!(late.completed_us.unwrap() > c1.look_after());
        let second_look = [a.clone(), late.clone(), b.clone()];
        let (told, c2) = c1.tell(&second_look);
        assert_eq!(told.iter().map(|t| t.id).collect::<Vec<_>>(), vec![late.id]);
        let third_look = [a, late, b];
        let (told, c3) = c2.tell(&third_look);
        assert!(told.is_empty());
        assert_eq!(c3, c2);
    }

    #[test]
    fn a_retried_task_that_ends_again_is_told_again_and_old_marks_are_dropped() {
        let base = 1_000_000_000_000;
        let first = ended(base);
        let (_, c1) = Cursor::default().tell(std::slice::from_ref(&first));
        let again = Task {
            completed_us: Some(base + 60_000_000),
            ..first.clone()
        };
        let (told, c2) = c1.tell(std::slice::from_ref(&again));
        assert_eq!(told.len(), 1);
        assert_eq!(c2.told, vec![(again.id, base + 60_000_000)]);
    }

    #[test]
    fn one_line_joins_an_introduction_with_what_it_introduces() {
        assert_eq!(
            one_line("exit status 1; end of stderr:\nno space left\nmore").as_deref(),
            Some("exit status 1; end of stderr: no space left")
        );
        assert_eq!(
            one_line("\n  214 passed\nok").as_deref(),
            Some("214 passed")
        );
        assert_eq!(one_line("  \n"), None);
    }

    #[test]
    fn a_report_lists_the_newest_and_counts_the_rest() {
        let tasks: Vec<Task> = (0..13).map(|i| ended(1_000 + i)).collect();
        let refs: Vec<&Task> = tasks.iter().collect();
        let r = report("/p", &refs, 100);
        assert_eq!(r.tasks.len(), EndedReport::LISTED);
        assert_eq!(r.more, 103);
        assert_eq!(r.tasks[0].task_id, tasks[3].id.to_string());
    }
}
