//! Reads for the dashboard: aggregates over all stored tasks and a task list that pages by
//! position (keyset) rather than by offset, so that the last page of a million tasks costs what
//! the first one does. Every query is one scan that DuckDB's zone maps cut short where the time
//! columns allow.

use uuid::Uuid;

use super::reads::{ids_of, newest_first};
use super::{counts, rows, Store, StoreError};
use crate::model::{Task, TaskStatus};

/// Upper bounds (exclusive, in seconds) of the duration histogram's buckets; a last bucket
/// holds everything longer.
pub const DURATION_BOUNDS_S: [i64; 6] = [1, 10, 60, 300, 900, 3600];

/// Ends of tasks in one interval.
#[derive(Debug, Clone, PartialEq)]
pub struct Ended {
    /// The interval's start (µs since the epoch, UTC).
    pub start_us: i64,
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
}

/// Cost of one agent over the period asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentCost {
    pub agent: String,
    pub cost_usd: f64,
    pub tasks: u64,
}

/// Where each of the overview's charts starts (µs since the epoch).
#[derive(Debug, Clone, Copy)]
pub struct StatsSince {
    pub ended: i64,
    pub durations: i64,
    pub cost: i64,
}

/// What the overview charts show.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub by_status: Vec<(String, u64)>,
    /// Hourly, oldest first; hours without ends are absent.
    pub ended: Vec<Ended>,
    /// Completed tasks per [`DURATION_BOUNDS_S`] bucket (one more than the bounds).
    pub durations: Vec<u64>,
    /// Cost per UTC day (start of the day in µs), oldest first.
    pub cost_by_day: Vec<(i64, f64)>,
    pub cost_by_agent: Vec<AgentCost>,
    /// Running tasks, longest running first.
    pub running: Vec<Task>,
    /// How many tasks run in all (`running` is cut).
    pub running_total: u64,
}

/// How one agent's tasks went since a point in time.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentRecord {
    pub agent: String,
    pub ended: u64,
    pub completed: u64,
    pub failed: u64,
    pub cost_usd: f64,
    /// When its last task was created (µs).
    pub last_us: i64,
}

/// A page of the task list: filters, and where the previous page ended.
#[derive(Debug, Clone, Default)]
pub struct TaskQuery {
    pub status: Option<TaskStatus>,
    pub agent: Option<String>,
    pub project: Option<String>,
    pub workflow: Option<Uuid>,
    /// Part of the name, any case.
    pub search: Option<String>,
    /// Tasks created before this one (its created_at in µs and id), newest first.
    pub after: Option<(i64, Uuid)>,
    pub limit: u32,
}

impl Store {
    /// The overview's aggregates since the given times (µs): the hourly ends, the durations of
    /// completed tasks, the cost charts; `running` is how many running tasks to list.
    pub async fn stats(&self, since: StatsSince, running: u32) -> Result<Stats, StoreError> {
        let StatsSince {
            ended: ended_since_us,
            durations: durations_since_us,
            cost: cost_since_us,
        } = since;
        self.read(move |c| {
            let mut s = Stats {
                by_status: counts::by_status(c)?,
                ..Stats::default()
            };
            let mut st = c.prepare_cached(
                "SELECT epoch_us(date_trunc('hour', completed_at)) AS h, \
                   count(*) FILTER (WHERE status = 'completed'), \
                   count(*) FILTER (WHERE status = 'failed'), \
                   count(*) FILTER (WHERE status = 'cancelled') \
                 FROM tasks WHERE completed_at >= make_timestamp(?) \
                   AND status IN ('completed', 'failed', 'cancelled') \
                 GROUP BY h ORDER BY h",
            )?;
            let mut r = st.query([ended_since_us])?;
            while let Some(row) = r.next()? {
                s.ended.push(Ended {
                    start_us: row.get(0)?,
                    completed: count(row.get(1)?),
                    failed: count(row.get(2)?),
                    cancelled: count(row.get(3)?),
                });
            }
            let bounds = DURATION_BOUNDS_S
                .iter()
                .enumerate()
                .map(|(i, b)| format!("WHEN d < {} THEN {i}", b * 1_000_000))
                .collect::<Vec<_>>()
                .join(" ");
            let mut st = c.prepare_cached(&format!(
                "SELECT CASE {bounds} ELSE {} END AS b, count(*) FROM ( \
                   SELECT epoch_us(completed_at) - epoch_us(started_at) AS d FROM tasks \
                   WHERE completed_at >= make_timestamp(?) AND status = 'completed' \
                     AND started_at IS NOT NULL) \
                 GROUP BY b",
                DURATION_BOUNDS_S.len()
            ))?;
            s.durations = vec![0; DURATION_BOUNDS_S.len() + 1];
            let mut r = st.query([durations_since_us])?;
            while let Some(row) = r.next()? {
                let b: i64 = row.get(0)?;
                if let Some(slot) = s.durations.get_mut(b.max(0) as usize) {
                    *slot = count(row.get(1)?);
                }
            }
            let mut st = c.prepare_cached(
                "SELECT epoch_us(date_trunc('day', completed_at)) AS d, sum(cost_usd) \
                 FROM tasks WHERE completed_at >= make_timestamp(?) AND cost_usd IS NOT NULL \
                 GROUP BY d ORDER BY d",
            )?;
            let mut r = st.query([cost_since_us])?;
            while let Some(row) = r.next()? {
                s.cost_by_day.push((row.get(0)?, row.get(1)?));
            }
            let mut st = c.prepare_cached(
                "SELECT agent_name, sum(cost_usd) AS c, count(*) FROM tasks \
                 WHERE completed_at >= make_timestamp(?) AND cost_usd IS NOT NULL \
                 GROUP BY agent_name ORDER BY c DESC, agent_name LIMIT 20",
            )?;
            let mut r = st.query([cost_since_us])?;
            while let Some(row) = r.next()? {
                s.cost_by_agent.push(AgentCost {
                    agent: row.get(0)?,
                    cost_usd: row.get(1)?,
                    tasks: count(row.get(2)?),
                });
            }
            s.running_total = s
                .by_status
                .iter()
                .find(|(st, _)| st == "running")
                .map_or(0, |(_, n)| *n);
            let mut st = c.prepare_cached(&format!(
                "SELECT {} FROM tasks WHERE status = 'running' \
                 ORDER BY started_at NULLS LAST, task_id LIMIT ?",
                rows::TASK_COLUMNS
            ))?;
            let mut r = st.query([running])?;
            while let Some(row) = r.next()? {
                s.running.push(rows::task_from_row(row)?);
            }
            Ok(s)
        })
        .await
    }

    /// How each agent's tasks created since `since_us` went.
    pub async fn agent_records(&self, since_us: i64) -> Result<Vec<AgentRecord>, StoreError> {
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT agent_name, \
                   count(*) FILTER (WHERE status IN ('completed', 'failed', 'cancelled')), \
                   count(*) FILTER (WHERE status = 'completed'), \
                   count(*) FILTER (WHERE status = 'failed'), \
                   coalesce(sum(cost_usd), 0), epoch_us(max(created_at)) \
                 FROM tasks WHERE created_at >= make_timestamp(?) GROUP BY agent_name",
            )?;
            let mut r = st.query([since_us])?;
            let mut out = Vec::new();
            while let Some(row) = r.next()? {
                out.push(AgentRecord {
                    agent: row.get(0)?,
                    ended: count(row.get(1)?),
                    completed: count(row.get(2)?),
                    failed: count(row.get(3)?),
                    cost_usd: row.get(4)?,
                    last_us: row.get(5)?,
                });
            }
            Ok(out)
        })
        .await
    }

    /// The agents and projects that have tasks, for the task list's filters (at most 500 each).
    pub async fn task_facets(&self) -> Result<(Vec<String>, Vec<String>), StoreError> {
        self.read(|c| {
            let mut lists = Vec::new();
            for sql in [
                "SELECT DISTINCT agent_name FROM tasks ORDER BY 1 LIMIT 500",
                "SELECT DISTINCT project FROM tasks WHERE project IS NOT NULL ORDER BY 1 LIMIT 500",
            ] {
                let mut st = c.prepare_cached(sql)?;
                let r = st.query_map([], |r| r.get::<_, String>(0))?;
                lists.push(r.collect::<Result<Vec<_>, _>>()?);
            }
            let projects = lists.pop().unwrap_or_default();
            let agents = lists.pop().unwrap_or_default();
            Ok((agents, projects))
        })
        .await
    }

    /// One page of tasks, newest first (at most `limit`), and how many match the filters in all.
    pub async fn task_page(&self, q: TaskQuery) -> Result<(Vec<Task>, u64), StoreError> {
        self.read(move |c| {
            // Status and agent alone are counted already; other filters count rows.
            let kept = (q.project.is_none() && q.workflow.is_none() && q.search.is_none())
                .then(|| (q.status.map(|s| s.as_str()), q.agent.clone()));
            let mut clauses: Vec<&str> = Vec::new();
            let mut args: Vec<duckdb::types::Value> = Vec::new();
            if let Some(s) = q.status {
                clauses.push("status = ?");
                args.push(s.as_str().to_string().into());
            }
            if let Some(a) = q.agent {
                clauses.push("agent_name = ?");
                args.push(a.into());
            }
            if let Some(p) = q.project {
                clauses.push("project = ?");
                args.push(p.into());
            }
            if let Some(w) = q.workflow {
                clauses.push("workflow_id = ?::VARCHAR::UUID");
                args.push(w.to_string().into());
            }
            if let Some(s) = q.search {
                clauses.push("contains(lower(name), lower(?))");
                args.push(s.into());
            }
            let filter = rows::where_all(&clauses);
            let total = match &kept {
                Some((status, agent)) => counts::total(c, *status, agent.as_deref())?,
                None => {
                    let n: i64 = c
                        .prepare_cached(&format!("SELECT count(*) FROM tasks {filter}"))?
                        .query_row(duckdb::params_from_iter(args.iter()), |r| r.get(0))?;
                    n.max(0) as u64
                }
            };
            if let Some((created_us, id)) = q.after {
                clauses.push(
                    "(created_at < make_timestamp(?) OR \
                      (created_at = make_timestamp(?) AND task_id < ?::VARCHAR::UUID))",
                );
                args.push(created_us.into());
                args.push(created_us.into());
                args.push(id.to_string().into());
            }
            let filter = rows::where_all(&clauses);
            let sql = format!(
                "SELECT task_id::VARCHAR FROM tasks {filter} \
                 ORDER BY created_at DESC, task_id DESC LIMIT {}",
                q.limit
            );
            let ids = ids_of(c, &sql, duckdb::params_from_iter(args.iter()))?;
            let out = newest_first(c, &ids)?;
            Ok((out, total))
        })
        .await
    }
}

fn count(n: i64) -> u64 {
    n.max(0) as u64
}
