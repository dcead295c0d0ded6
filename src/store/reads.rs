//! Reads of tasks and their logs. Each runs on a pooled reader connection (see
//! `Store::read`), never behind a commit.

use std::collections::HashMap;

use duckdb::Connection;
use uuid::Uuid;

use super::unfolded::Overlaid;
use super::{counts, rows, Store, StoreError, TaskFilter};
use crate::model::{LogLine, Task};

impl Store {
    pub async fn task(&self, id: Uuid) -> Result<Option<Task>, StoreError> {
        match self.unfolded.lookup(id) {
            Overlaid::Task(t) => return Ok(Some(*t)),
            Overlaid::Pruned => return Ok(None),
            Overlaid::Folded => {}
        }
        self.read_folded(move |c| {
            let sql = format!(
                "SELECT {} FROM tasks WHERE task_id = ?::VARCHAR::UUID",
                rows::TASK_COLUMNS
            );
            let mut st = c.prepare_cached(&sql)?;
            let mut r = st.query([id.to_string()])?;
            Ok(match r.next()? {
                Some(row) => Some(rows::task_from_row(row)?),
                None => None,
            })
        })
        .await
    }

    /// Tasks by id, in no particular order; unknown ids are simply absent.
    pub async fn tasks(&self, ids: Vec<Uuid>) -> Result<Vec<Task>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        let mut ids = ids;
        ids.retain(|id| match self.unfolded.lookup(*id) {
            Overlaid::Task(t) => {
                out.push(*t);
                false
            }
            Overlaid::Pruned => false,
            Overlaid::Folded => true,
        });
        if ids.is_empty() {
            return Ok(out);
        }
        self.read_folded(move |c| {
            for chunk in ids.chunks(500) {
                out.extend(newest_first(c, chunk)?);
            }
            Ok(out)
        })
        .await
    }

    /// Every pending or running task: the scheduler's state at start.
    pub async fn active_tasks(&self) -> Result<Vec<Task>, StoreError> {
        self.read(|c| {
            let sql = format!(
                "SELECT {} FROM tasks WHERE status IN ('pending', 'running') ORDER BY created_at",
                rows::TASK_COLUMNS
            );
            let mut st = c.prepare(&sql)?;
            let mut r = st.query([])?;
            let mut out = Vec::new();
            while let Some(row) = r.next()? {
                out.push(rows::task_from_row(row)?);
            }
            Ok(out)
        })
        .await
    }

    /// A task's instructions; an error (never a stale `None`) while the tables cannot be
    /// written, since a task answered just before may not be in them yet.
    pub async fn instructions(&self, id: Uuid) -> Result<Option<String>, StoreError> {
        self.read_exact(move |c| {
            let mut st = c.prepare_cached(
                "SELECT instructions FROM tasks WHERE task_id = ?::VARCHAR::UUID",
            )?;
            let mut r = st.query([id.to_string()])?;
            Ok(match r.next()? {
                Some(row) => Some(row.get(0)?),
                None => None,
            })
        })
        .await
    }

    pub async fn list_tasks(&self, f: TaskFilter) -> Result<(Vec<Task>, u64), StoreError> {
        self.read(move |c| {
            let mut clauses = Vec::new();
            let mut args: Vec<String> = Vec::new();
            if let Some(s) = f.status {
                clauses.push("status = ?");
                args.push(s.as_str().to_string());
            }
            if let Some(a) = &f.agent_name {
                clauses.push("agent_name = ?");
                args.push(a.clone());
            }
            if let Some(w) = f.workflow_id {
                clauses.push("workflow_id = ?::VARCHAR::UUID");
                args.push(w.to_string());
            }
            let filter = rows::where_all(&clauses);
            let total = match f.workflow_id {
                None => counts::total(c, f.status.map(|s| s.as_str()), f.agent_name.as_deref())?,
                Some(_) => {
                    let n: i64 = c
                        .prepare_cached(&format!("SELECT count(*) FROM tasks {filter}"))?
                        .query_row(duckdb::params_from_iter(args.iter()), |r| r.get(0))?;
                    n.max(0) as u64
                }
            };
            let sql = format!(
                "SELECT task_id::VARCHAR FROM tasks {filter} \
                 ORDER BY created_at DESC, task_id DESC LIMIT {} OFFSET {}",
                f.limit, f.offset
            );
            let ids = ids_of(c, &sql, duckdb::params_from_iter(args.iter()))?;
            Ok((newest_first(c, &ids)?, total))
        })
        .await
    }

    /// Tasks submitted from `project` (or a folder inside it) that ended after `after_us`:
    /// the `limit` that ended last (newest first), and how many there are in all.
    pub async fn ended_in_project(
        &self,
        project: String,
        after_us: i64,
        limit: u32,
    ) -> Result<(Vec<Task>, u64), StoreError> {
        self.read(move |c| {
            let filter = "WHERE (project = ? OR starts_with(project, ?)) \
                 AND status IN ('completed', 'failed', 'cancelled') AND epoch_us(completed_at) > ?";
            let inside = format!("{}/", project.trim_end_matches('/'));
            let total: i64 = c
                .prepare_cached(&format!("SELECT count(*) FROM tasks {filter}"))?
                .query_row(duckdb::params![project, inside, after_us], |r| r.get(0))?;
            let sql = format!(
                "SELECT {} FROM tasks {filter} ORDER BY completed_at DESC, task_id DESC LIMIT ?",
                rows::TASK_COLUMNS
            );
            let mut st = c.prepare_cached(&sql)?;
            let mut r = st.query(duckdb::params![project, inside, after_us, limit])?;
            let mut out = Vec::new();
            while let Some(row) = r.next()? {
                out.push(rows::task_from_row(row)?);
            }
            Ok((out, total.max(0) as u64))
        })
        .await
    }

    /// How many tasks there are of each status (statuses without tasks are absent).
    pub async fn count_by_status(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.read(counts::by_status).await
    }

    /// Log lines with `seq > after_seq`, oldest first.
    pub async fn logs(
        &self,
        id: Uuid,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<LogLine>, StoreError> {
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT seq, epoch_us(ts), level, message FROM task_logs \
                 WHERE task_id = ?::VARCHAR::UUID AND seq > ? ORDER BY seq LIMIT ?",
            )?;
            let rows = st.query_map(
                duckdb::params![id.to_string(), after_seq, limit],
                rows::log_from_row,
            )?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// The last `n` log lines, oldest first.
    ///
    /// DuckDB would read a few lines of the newest first in two passes ("late materialization":
    /// the order key first, then the other columns of the rows it kept), which costs a second
    /// scan of the task's block — about 1.5 ms of `task_status` at 20,000,000 lines. One pass is
    /// cheaper here, so the setting is off for this statement only (the connection is this
    /// read's alone until it returns).
    pub async fn last_logs(&self, id: Uuid, n: u32) -> Result<Vec<LogLine>, StoreError> {
        self.read(move |c| {
            c.execute_batch("SET late_materialization_max_rows = 0")?;
            let lines = (|| {
                let mut st = c.prepare_cached(
                    "SELECT seq, epoch_us(ts), level, message FROM task_logs \
                     WHERE task_id = ?::VARCHAR::UUID ORDER BY seq DESC LIMIT ?",
                )?;
                let rows = st.query_map(
                    duckdb::params![id.to_string(), i64::from(n)],
                    rows::log_from_row,
                )?;
                rows.collect::<Result<Vec<_>, _>>()
            })();
            c.execute_batch("RESET late_materialization_max_rows")?;
            let mut lines = lines?;
            lines.reverse();
            Ok(lines)
        })
        .await
    }

    /// The highest log `seq` of each task (absent: no lines yet).
    pub async fn max_log_seqs(&self, ids: Vec<Uuid>) -> Result<HashMap<Uuid, i64>, StoreError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        self.read(move |c| {
            let mut out = HashMap::new();
            for chunk in ids.chunks(500) {
                let sql = format!(
                    "SELECT task_id::VARCHAR, max(seq) FROM task_logs WHERE task_id IN ({}) GROUP BY 1",
                    id_list(chunk)
                );
                let mut st = c.prepare(&sql)?;
                let mut r = st.query([])?;
                while let Some(row) = r.next()? {
                    let id: String = row.get(0)?;
                    if let Ok(id) = Uuid::parse_str(&id) {
                        out.insert(id, row.get(1)?);
                    }
                }
            }
            Ok(out)
        })
        .await
    }
}

/// The ids a query selects (its only column, `task_id::VARCHAR`).
pub(super) fn ids_of(
    c: &Connection,
    sql: &str,
    params: impl duckdb::Params,
) -> Result<Vec<Uuid>, StoreError> {
    let mut st = c.prepare_cached(sql)?;
    let ids = st
        .query_map(params, |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ids.iter().filter_map(|i| Uuid::parse_str(i).ok()).collect())
}

/// The tasks of `ids` (a page), newest first; unknown ids are absent. A page is read in two
/// steps: a sorted query of ids alone, then the rows by id. Sorting whole rows would carry every
/// candidate's result (up to 1 MiB each) through the sort, and with tasks stored oldest first,
/// nearly every row is a candidate of a newest-first page.
///
/// The ids are parameters of a statement prepared once per number of ids (pages are mostly of
/// one size), which spares parsing it each time (its 50 ids written in cost about 2 ms more at
/// 10,000,000 tasks). They are bound as text, so DuckDB plans it again at each execution: cast
/// in SQL to keep one plan, the list was slower still, as was padding it to fewer sizes. The
/// range lets DuckDB skip every block outside it (see [`id_range`]).
pub(super) fn newest_first(c: &Connection, ids: &[Uuid]) -> Result<Vec<Task>, StoreError> {
    let (Some(lo), Some(hi)) = (ids.iter().min(), ids.iter().max()) else {
        return Ok(Vec::new());
    };
    let mut st = c.prepare_cached(&format!(
        "SELECT {} FROM tasks WHERE task_id IN ({}) AND task_id BETWEEN ? AND ?",
        rows::TASK_COLUMNS,
        vec!["?"; ids.len()].join(",")
    ))?;
    let args: Vec<String> = ids.iter().chain([lo, hi]).map(Uuid::to_string).collect();
    let mut r = st.query(duckdb::params_from_iter(args))?;
    let mut out = Vec::with_capacity(ids.len());
    while let Some(row) = r.next()? {
        out.push(rows::task_from_row(row)?);
    }
    out.sort_by_key(|t| std::cmp::Reverse((t.created_us, t.id)));
    Ok(out)
}

/// A range around the ids, to go with their `IN` list: task ids are time-ordered and so are the
/// rows of `tasks` and `task_logs`, so the range lets DuckDB skip every block outside it (an `IN`
/// list alone is checked row by row).
pub(super) fn id_range(ids: &[Uuid]) -> String {
    match (ids.iter().min(), ids.iter().max()) {
        (Some(lo), Some(hi)) => format!("AND task_id BETWEEN '{lo}' AND '{hi}'"),
        _ => String::new(),
    }
}

/// `'id','id',...` for an `IN (...)` list. Ids are parsed Uuids (hex and dashes only), so
/// formatting them into SQL cannot inject anything.
pub(super) fn id_list(ids: &[Uuid]) -> String {
    ids.iter()
        .map(|id| format!("'{id}'"))
        .collect::<Vec<_>>()
        .join(",")
}
