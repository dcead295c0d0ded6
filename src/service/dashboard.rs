//! What the dashboard reads: aggregates for the overview and the agents, a task with everything
//! about it, the task list paged by position, and the change feed its live pages follow. Its
//! actions (cancel, retry) are the tools' own calls.

use std::collections::BTreeMap;

use tokio::sync::broadcast;
use uuid::Uuid;

use super::{in_range, invalid, parse_task_id, Core, Result, Service, ServiceError};
use crate::agents::validate_name;
use crate::api::dashboard::*;
use crate::api::WebhookHistory;
use crate::model::{now_us, rfc3339, TaskStatus};
use crate::scheduler::not_found;
use crate::store::feed::{Change, Following};
use crate::store::stats::{StatsSince, TaskQuery, DURATION_BOUNDS_S};

const HOUR_US: i64 = 3_600_000_000;
const DAY_US: i64 = 24 * HOUR_US;
/// The overview's hourly ends cover this many hours, its costs this many days; the agents'
/// records this many days.
const ENDED_HOURS: i64 = 24;
const DURATION_DAYS: i64 = 7;
const COST_DAYS: i64 = 14;
const AGENT_DAYS: i64 = 7;
/// Running tasks the overview lists.
const RUNNING_LISTED: u32 = 20;
/// Log lines a task's page starts with.
const FIRST_LOG_LINES: u32 = 500;

impl Service {
    /// What the stored data changes from now on (on a cluster: whichever node changes it).
    pub fn changes(&self) -> broadcast::Receiver<Change> {
        match &self.core {
            Core::Local(s) => s.store().changes(),
            Core::Cluster(c) => c.changes(),
        }
    }

    /// The change feed carries `task`'s log lines too, while the answer lives.
    pub fn follow_lines(&self, task: Uuid) -> Following {
        match &self.core {
            Core::Local(s) => s.store().follow_lines(task),
            Core::Cluster(c) => c.follow_lines(task),
        }
    }

    pub async fn dashboard_overview(&self) -> Result<DashOverview> {
        let now = now_us();
        let this_hour = now - now.rem_euclid(HOUR_US);
        let today = now - now.rem_euclid(DAY_US);
        let ended_since = this_hour - (ENDED_HOURS - 1) * HOUR_US;
        let cost_since = today - (COST_DAYS - 1) * DAY_US;
        let since = StatsSince {
            ended: ended_since,
            durations: now - DURATION_DAYS * DAY_US,
            cost: cost_since,
        };
        let s = match &self.core {
            Core::Local(s) => s.store().stats(since, RUNNING_LISTED).await?,
            Core::Cluster(c) => c.stats(since, RUNNING_LISTED).await?,
        };
        let counts = TaskStatus::ALL
            .iter()
            .map(|st| {
                let n = s
                    .by_status
                    .iter()
                    .find(|(name, _)| name == st.as_str())
                    .map_or(0, |(_, n)| *n);
                (st.as_str().to_string(), n)
            })
            .collect();
        let ended = (0..ENDED_HOURS)
            .map(|i| {
                let start = ended_since + i * HOUR_US;
                let e = s.ended.iter().find(|e| e.start_us == start);
                EndedInterval {
                    start: rfc3339(start),
                    completed: e.map_or(0, |e| e.completed),
                    failed: e.map_or(0, |e| e.failed),
                    cancelled: e.map_or(0, |e| e.cancelled),
                }
            })
            .collect();
        let cost_by_day = (0..COST_DAYS)
            .map(|i| {
                let start = cost_since + i * DAY_US;
                CostOfDay {
                    day: rfc3339(start)[..10].to_string(),
                    cost_usd: s
                        .cost_by_day
                        .iter()
                        .find(|(d, _)| *d == start)
                        .map_or(0.0, |(_, c)| *c),
                }
            })
            .collect();
        Ok(DashOverview {
            counts,
            running: s
                .running
                .iter()
                .map(|t| RunningTask {
                    task_id: t.id.to_string(),
                    name: t.name.clone(),
                    agent_name: t.agent_name.clone(),
                    started_at: t.started_us.map(rfc3339),
                    attempt: t.attempt,
                })
                .collect(),
            running_total: s.running_total,
            ended,
            durations: duration_labels()
                .into_iter()
                .zip(s.durations)
                .map(|(label, tasks)| DurationBucket { label, tasks })
                .collect(),
            cost_by_day,
            cost_by_agent: s
                .cost_by_agent
                .into_iter()
                .map(|c| CostOfAgent {
                    agent_name: c.agent,
                    cost_usd: c.cost_usd,
                    tasks: c.tasks,
                })
                .collect(),
            at: rfc3339(now),
        })
    }

    pub async fn dashboard_tasks(&self, a: TaskPageArgs) -> Result<TaskPage> {
        let status = a
            .status
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(super::parse_status)
            .transpose()?;
        let agent = a.agent_name.filter(|s| !s.is_empty());
        if let Some(agent) = &agent {
            validate_name("agent_name", agent).map_err(ServiceError::Invalid)?;
        }
        let workflow = a
            .workflow_id
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(super::workflows::parse_workflow_id)
            .transpose()?;
        let search = a.q.filter(|s| !s.trim().is_empty());
        if search.as_ref().is_some_and(|s| s.len() > 200) {
            return invalid("q (the name search) is longer than 200 characters");
        }
        let project = a.project.filter(|s| !s.is_empty());
        let after = a
            .after
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(parse_position)
            .transpose()?;
        let limit = in_range("limit", a.limit, 1, 200, 50)? as u32;
        let q = TaskQuery {
            status,
            agent,
            project,
            workflow,
            search,
            after,
            // One more, to know whether there is a next page.
            limit: limit + 1,
        };
        let (tasks, total) = match &self.core {
            Core::Local(s) => s.store().task_page(q).await?,
            Core::Cluster(c) => c.task_page(&q).await?,
        };
        let mut tasks = tasks;
        let more = tasks.len() > limit as usize;
        tasks.truncate(limit as usize);
        let next = more
            .then(|| tasks.last().map(|t| format!("{}.{}", t.created_us, t.id)))
            .flatten();
        Ok(TaskPage {
            tasks: tasks.iter().map(|t| t.view().into()).collect(),
            total,
            next,
        })
    }

    pub async fn dashboard_facets(&self) -> Result<TaskFacets> {
        let (agents, projects) = match &self.core {
            Core::Local(s) => s.store().task_facets().await?,
            Core::Cluster(c) => c.task_facets().await?,
        };
        Ok(TaskFacets { agents, projects })
    }

    pub async fn dashboard_task(&self, id: &str) -> Result<DashTask> {
        let id = parse_task_id("task_id", id)?;
        let (task, instructions, mut logs) = match &self.core {
            Core::Local(s) => {
                let store = s.store();
                // From the store, not the scheduler's memory: the page reads on the change
                // feed's events, which are published once the store has the change (memory
                // follows a moment later).
                let task = store.task(id).await?;
                let instructions = store.instructions(id).await?;
                let logs = store.last_logs(id, FIRST_LOG_LINES + 1).await?;
                (task, instructions.unwrap_or_default(), logs)
            }
            Core::Cluster(c) => match c.task_with_instructions(id).await? {
                Some((task, instructions)) => {
                    let logs = c.last_logs(id, FIRST_LOG_LINES + 1).await?;
                    (Some(task), instructions, logs)
                }
                None => (None, String::new(), Vec::new()),
            },
        };
        let task = task.ok_or_else(|| ServiceError::NotFound(not_found(id)))?;
        let logs_cut = logs.len() > FIRST_LOG_LINES as usize;
        if logs_cut {
            logs.remove(0);
        }
        let WebhookHistory { deliveries } = self.history_rows(Some(id), None).await?;
        Ok(DashTask {
            task: task.view(),
            instructions,
            logs,
            logs_cut,
            deliveries,
        })
    }

    /// Every agent on the search path with how its tasks of the last days went, and the agents
    /// that have tasks but no file here.
    pub async fn dashboard_agents(&self) -> Result<AgentTable> {
        let listed = self.list_agents().await?.agents;
        let since = now_us() - AGENT_DAYS * DAY_US;
        let records = match &self.core {
            Core::Local(s) => s.store().agent_records(since).await?,
            Core::Cluster(c) => c.agent_records(since).await?,
        };
        let mut by_name: BTreeMap<String, _> =
            records.into_iter().map(|r| (r.agent.clone(), r)).collect();
        let row = |agent: crate::api::AgentInfo, r: Option<crate::store::stats::AgentRecord>| {
            let (ended, completed, failed, cost, last) = r.map_or((0, 0, 0, 0.0, None), |r| {
                (r.ended, r.completed, r.failed, r.cost_usd, Some(r.last_us))
            });
            AgentRow {
                agent,
                ended,
                completed,
                failed,
                success_rate: (ended > 0).then(|| completed as f64 / ended as f64),
                cost_usd: cost,
                last_task_at: last.map(rfc3339),
            }
        };
        let agents = listed
            .into_iter()
            .map(|a| {
                let r = by_name.remove(&a.name);
                row(a, r)
            })
            .collect();
        let unlisted = by_name
            .into_values()
            .map(|r| {
                row(
                    crate::api::AgentInfo {
                        name: r.agent.clone(),
                        description: String::new(),
                        runner: String::new(),
                        model: None,
                        path: String::new(),
                    },
                    Some(r),
                )
            })
            .collect();
        Ok(AgentTable { agents, unlisted })
    }
}

/// A position in the task list: `<created_at µs>.<task id>`, as `next` gave it.
fn parse_position(s: &str) -> Result<(i64, Uuid)> {
    let bad = || {
        ServiceError::Invalid(format!(
            "after {s:?} is not a position in the list: give the `next` of the previous page"
        ))
    };
    let (us, id) = s.split_once('.').ok_or_else(bad)?;
    Ok((
        us.parse().map_err(|_| bad())?,
        Uuid::parse_str(id).map_err(|_| bad())?,
    ))
}

/// The duration histogram's labels, one per bucket.
fn duration_labels() -> Vec<String> {
    let name = |s: i64| match s {
        s if s % 3600 == 0 => format!("{} h", s / 3600),
        s if s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    };
    let mut out = Vec::new();
    let mut lo = 0;
    for &hi in &DURATION_BOUNDS_S {
        out.push(if lo == 0 {
            format!("< {}", name(hi))
        } else {
            format!("{}–{}", name(lo), name(hi))
        });
        lo = hi;
    }
    out.push(format!("≥ {}", name(lo)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_and_bad_ones_say_what_to_give() {
        let id = Uuid::now_v7();
        assert_eq!(parse_position(&format!("123.{id}")).unwrap(), (123, id));
        for bad in ["", "123", "x.y", &format!("abc.{id}"), "1.not-a-uuid"] {
            let e = parse_position(bad).unwrap_err().to_string();
            assert!(e.contains("next"), "{e}");
        }
    }

    #[test]
    fn duration_labels_name_every_bucket() {
        let l = duration_labels();
        assert_eq!(l.len(), DURATION_BOUNDS_S.len() + 1);
        assert_eq!(l[0], "< 1 s");
        assert_eq!(l[1], "1 s–10 s");
        assert_eq!(l[3], "1 min–5 min");
        assert_eq!(l[6], "≥ 1 h");
    }
}
