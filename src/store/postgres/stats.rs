//! The dashboard's reads on the cluster's database: the overview's aggregates, the agents'
//! records, the task list's filters and its pages by position (keyset), so the last page of a
//! million tasks costs what the first one does.
//!
//! The answers have the embedded store's shapes (`store::stats`), so the service builds the
//! same pages from either. Times are cut into hours and days in UTC by arithmetic on the epoch,
//! whatever the session's time zone; every window is a range of an index (`tasks_ended`,
//! `tasks_newest`), and the filters' lists skip from value to value along an index instead of
//! reading every row.

use tokio_postgres::types::ToSql;

use super::rows::{task_from_row, time, TASK_COLUMNS};
use super::Postgres;
use crate::model::Task;
use crate::store::stats::{
    AgentCost, AgentRecord, Ended, Stats, StatsSince, TaskQuery, DURATION_BOUNDS_S,
};
use crate::store::StoreError;

/// Most values each of the task list's filters offers.
const FACETS: i32 = 500;

/// Microseconds since the epoch of a time column, in SQL.
fn epoch_us(col: &str) -> String {
    format!("(extract(epoch FROM {col}) * 1000000)::bigint")
}

fn count(n: i64) -> u64 {
    n.max(0) as u64
}

impl Postgres {
    /// The overview's aggregates since the given times (µs): tasks by status, the hourly ends,
    /// the durations of completed tasks, the cost charts, and the first `running` running
    /// tasks, longest running first.
    pub async fn stats(&self, since: StatsSince, running: u32) -> Result<Stats, StoreError> {
        let mut s = Stats {
            by_status: self.count_by_status().await?,
            ..Stats::default()
        };
        let client = self.client().await?;
        let hour = format!("({} / 3600000000) * 3600000000", epoch_us("completed_at"));
        let ended = client
            .query(
                &format!(
                    "SELECT {hour} AS h,
                       count(*) FILTER (WHERE status = 'completed'),
                       count(*) FILTER (WHERE status = 'failed'),
                       count(*) FILTER (WHERE status = 'cancelled')
                     FROM tasks WHERE completed_at >= $1
                       AND status IN ('completed', 'failed', 'cancelled')
                     GROUP BY h ORDER BY h"
                ),
                &[&time(since.ended)],
            )
            .await?;
        for r in &ended {
            s.ended.push(Ended {
                start_us: r.try_get(0)?,
                completed: count(r.try_get(1)?),
                failed: count(r.try_get(2)?),
                cancelled: count(r.try_get(3)?),
            });
        }
        let bounds = DURATION_BOUNDS_S
            .iter()
            .enumerate()
            .map(|(i, b)| format!("WHEN d < {} THEN {i}", b * 1_000_000))
            .collect::<Vec<_>>()
            .join(" ");
        let durations = client
            .query(
                &format!(
                    "SELECT CASE {bounds} ELSE {} END AS b, count(*) FROM (
                       SELECT {} - {} AS d FROM tasks
                       WHERE completed_at >= $1 AND status = 'completed'
                         AND started_at IS NOT NULL) x
                     GROUP BY b",
                    DURATION_BOUNDS_S.len(),
                    epoch_us("completed_at"),
                    epoch_us("started_at"),
                ),
                &[&time(since.durations)],
            )
            .await?;
        s.durations = vec![0; DURATION_BOUNDS_S.len() + 1];
        for r in &durations {
            let b: i32 = r.try_get(0)?;
            if let Some(slot) = s.durations.get_mut(b.max(0) as usize) {
                *slot = count(r.try_get(1)?);
            }
        }
        let day = format!("({} / 86400000000) * 86400000000", epoch_us("completed_at"));
        let cost = time(since.cost);
        for r in &client
            .query(
                &format!(
                    "SELECT {day} AS d, sum(cost_usd) FROM tasks
                     WHERE completed_at >= $1 AND cost_usd IS NOT NULL
                     GROUP BY d ORDER BY d"
                ),
                &[&cost],
            )
            .await?
        {
            s.cost_by_day.push((r.try_get(0)?, r.try_get(1)?));
        }
        for r in &client
            .query(
                "SELECT agent_name, sum(cost_usd) AS c, count(*) FROM tasks
                 WHERE completed_at >= $1 AND cost_usd IS NOT NULL
                 GROUP BY agent_name ORDER BY c DESC, agent_name LIMIT 20",
                &[&cost],
            )
            .await?
        {
            s.cost_by_agent.push(AgentCost {
                agent: r.try_get(0)?,
                cost_usd: r.try_get(1)?,
                tasks: count(r.try_get(2)?),
            });
        }
        s.running_total = s
            .by_status
            .iter()
            .find(|(st, _)| st == "running")
            .map_or(0, |(_, n)| *n);
        let listed = client
            .query(
                &format!(
                    "SELECT {TASK_COLUMNS} FROM tasks t WHERE t.status = 'running'
                     ORDER BY t.started_at NULLS LAST, t.task_id LIMIT $1"
                ),
                &[&i64::from(running)],
            )
            .await?;
        s.running = listed.iter().map(task_from_row).collect::<Result<_, _>>()?;
        Ok(s)
    }

    /// How each agent's tasks created since `since_us` went.
    pub async fn agent_records(&self, since_us: i64) -> Result<Vec<AgentRecord>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT agent_name,
                       count(*) FILTER (WHERE status IN ('completed', 'failed', 'cancelled')),
                       count(*) FILTER (WHERE status = 'completed'),
                       count(*) FILTER (WHERE status = 'failed'),
                       coalesce(sum(cost_usd), 0)::double precision, {}
                     FROM tasks WHERE created_at >= $1 GROUP BY agent_name",
                    epoch_us("max(created_at)")
                ),
                &[&time(since_us)],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(AgentRecord {
                    agent: r.try_get(0)?,
                    ended: count(r.try_get(1)?),
                    completed: count(r.try_get(2)?),
                    failed: count(r.try_get(3)?),
                    cost_usd: r.try_get(4)?,
                    last_us: r.try_get(5)?,
                })
            })
            .collect()
    }

    /// The agents and projects that have tasks, for the task list's filters (at most 500 each):
    /// each found by skipping along its index from one value to the next.
    pub async fn task_facets(&self) -> Result<(Vec<String>, Vec<String>), StoreError> {
        let client = self.client().await?;
        let mut lists = Vec::new();
        for col in ["agent_name", "project"] {
            let rows = client
                .query(
                    &format!(
                        "WITH RECURSIVE v(x, n) AS (
                           SELECT min({col}), 1 FROM tasks WHERE {col} IS NOT NULL
                           UNION ALL
                           SELECT (SELECT min({col}) FROM tasks WHERE {col} > v.x), v.n + 1
                           FROM v WHERE v.x IS NOT NULL AND v.n < $1)
                         SELECT x FROM v WHERE x IS NOT NULL"
                    ),
                    &[&FACETS],
                )
                .await?;
            lists.push(
                rows.iter()
                    .map(|r| r.try_get::<_, String>(0))
                    .collect::<Result<Vec<_>, _>>()?,
            );
        }
        let projects = lists.pop().unwrap_or_default();
        let agents = lists.pop().unwrap_or_default();
        Ok((agents, projects))
    }

    /// One page of tasks, newest first (at most `limit`), and how many match the filters in all.
    pub async fn task_page(&self, q: &TaskQuery) -> Result<(Vec<Task>, u64), StoreError> {
        let status = q.status.map(|s| s.as_str());
        let mut clauses: Vec<String> = Vec::new();
        let mut args: Vec<&(dyn ToSql + Sync)> = Vec::new();
        if let Some(s) = &status {
            with_arg(&mut clauses, &mut args, "t.status = ?", s);
        }
        if let Some(a) = &q.agent {
            with_arg(&mut clauses, &mut args, "t.agent_name = ?", a);
        }
        if let Some(p) = &q.project {
            with_arg(&mut clauses, &mut args, "t.project = ?", p);
        }
        if let Some(w) = &q.workflow {
            with_arg(&mut clauses, &mut args, "t.workflow_id = ?", w);
        }
        if let Some(s) = &q.search {
            with_arg(
                &mut clauses,
                &mut args,
                "strpos(lower(t.name), lower(?)) > 0",
                s,
            );
        }
        let filter = where_all(&clauses);
        let client = self.client().await?;
        let total: i64 = client
            .query_one(
                &format!("SELECT count(*) FROM tasks t {filter}"),
                args.as_slice(),
            )
            .await?
            .try_get(0)?;
        let after = q.after.map(|(us, id)| (time(us), id));
        if let Some((created, id)) = &after {
            let n = args.len();
            clauses.push(format!(
                "(t.created_at, t.task_id) < (${}, ${})",
                n + 1,
                n + 2
            ));
            args.push(created);
            args.push(id);
        }
        let filter = where_all(&clauses);
        let rows = client
            .query(
                &format!(
                    "SELECT {TASK_COLUMNS} FROM tasks t {filter}
                     ORDER BY t.created_at DESC, t.task_id DESC LIMIT {}",
                    q.limit
                ),
                args.as_slice(),
            )
            .await?;
        let tasks = rows.iter().map(task_from_row).collect::<Result<_, _>>()?;
        Ok((tasks, count(total)))
    }
}

/// Adds a clause whose one `?` is `arg`.
fn with_arg<'a>(
    clauses: &mut Vec<String>,
    args: &mut Vec<&'a (dyn ToSql + Sync)>,
    sql: &str,
    arg: &'a (dyn ToSql + Sync),
) {
    args.push(arg);
    clauses.push(sql.replace('?', &format!("${}", args.len())));
}

fn where_all(clauses: &[String]) -> String {
    if clauses.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", clauses.join(" AND "))
    }
}
