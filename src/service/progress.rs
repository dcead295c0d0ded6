//! Where a set of awaited tasks stands, for the progress notifications a session sends while
//! one of its calls blocks (`task_wait`, `task_run`). Hot tasks come from memory and finished
//! ones from one store read, so asking once a second costs next to nothing.

use uuid::Uuid;

use super::{parse_waited_ids, Core, Result, Service};
use crate::api::{ProgressTask, WaitProgress};
use crate::model::{now_us, Task, TaskStatus};

/// Running tasks whose latest log line is looked up (one small store read each).
const WITH_LOG: usize = 3;

impl Service {
    pub async fn task_progress(&self, task_ids: &[String]) -> Result<WaitProgress> {
        let ids = parse_waited_ids(task_ids)?;
        let tasks = match &self.core {
            Core::Local(s) => s.tasks(&ids).await?,
            Core::Cluster(c) => c.tasks(&ids).await?,
        };
        let mut p = summarize(ids.len(), &tasks, now_us());
        for r in p.running.iter_mut().take(WITH_LOG) {
            let Ok(id) = Uuid::parse_str(&r.task_id) else {
                continue;
            };
            let last = match &self.core {
                Core::Local(s) => s.store().last_logs(id, 1).await?,
                Core::Cluster(c) => c.last_logs(id, 1).await?,
            };
            r.last_log = last.into_iter().next().map(|l| l.message);
        }
        Ok(p)
    }
}

/// The counts and lists of a [`WaitProgress`] from the tasks found (`total` counts the ids
/// asked, found or not).
fn summarize(total: usize, tasks: &[Task], now_us: i64) -> WaitProgress {
    let mut p = WaitProgress {
        total,
        ..WaitProgress::default()
    };
    let item = |t: &Task, running_seconds| ProgressTask {
        task_id: t.id.to_string(),
        name: t.name.clone(),
        status: t.status,
        running_seconds,
        last_log: None,
    };
    for t in tasks {
        if t.status.is_terminal() {
            p.finished += 1;
            if p.ended.len() < WaitProgress::LISTED {
                p.ended.push(item(t, None));
            }
        } else if t.status == TaskStatus::Running {
            p.running_count += 1;
            if p.running.len() < WaitProgress::LISTED {
                let secs = t
                    .started_us
                    .map(|s| (now_us.saturating_sub(s) / 1_000_000).max(0) as u64);
                p.running.push(item(t, secs));
            }
        } else {
            p.pending += 1;
        }
    }
    p
}
