//! `task_counts`: how many tasks there are of each status and agent.
//!
//! A list filtered by status and agent answers with its total, and the overview with the counts
//! by status. Counting them from `tasks` scans two columns of every row (about 18 ms at
//! 10,000,000 tasks), so the counts are kept instead: every write of `tasks` — an insert, an
//! update that changes a status, a removal — adjusts them in the same transaction as the write,
//! so they are exactly as current as the rows. A filter they cannot answer (a workflow, a
//! project, a name) still counts rows.

use std::collections::HashMap;

use duckdb::types::Value;
use duckdb::Connection;

use super::StoreError;
use crate::model::Task;

/// Adds `delta` to each (status, agent) pair's count.
const UPSERT: &str =
    "ON CONFLICT (status, agent_name) DO UPDATE SET n = task_counts.n + excluded.n";

/// Counts new tasks (called with their insert).
pub(super) fn add_inserted<'a>(
    conn: &Connection,
    tasks: impl Iterator<Item = &'a Task>,
) -> Result<(), StoreError> {
    let mut delta: HashMap<(&'static str, &str), i64> = HashMap::new();
    for t in tasks {
        *delta
            .entry((t.status.as_str(), t.agent_name.as_str()))
            .or_default() += 1;
    }
    if delta.is_empty() {
        return Ok(());
    }
    let mut args: Vec<Value> = Vec::with_capacity(delta.len() * 3);
    for ((status, agent), n) in &delta {
        args.push(Value::Text((*status).into()));
        args.push(Value::Text((*agent).into()));
        args.push(Value::BigInt(*n));
    }
    let values = vec!["(?, ?, ?)"; delta.len()].join(", ");
    conn.prepare(&format!(
        "INSERT INTO task_counts (status, agent_name, n) VALUES {values} {UPSERT}"
    ))?
    .execute(duckdb::params_from_iter(args))?;
    Ok(())
}

/// Moves the tasks staged in `task_updates` from their stored status to their new one (called
/// before the staged update is applied).
pub(super) fn change_staged(conn: &Connection) -> Result<(), StoreError> {
    conn.prepare_cached(&format!(
        "INSERT INTO task_counts (status, agent_name, n) \
         SELECT status, agent_name, sum(d) FROM ( \
             SELECT unnest([t.status, u.status]) AS status, t.agent_name, unnest([-1, 1]) AS d \
             FROM tasks t JOIN task_updates u ON t.task_id = u.task_id \
             WHERE t.status <> u.status) \
         GROUP BY ALL {UPSERT}"
    ))?
    .execute([])?;
    Ok(())
}

/// Moves one task from its stored status to `t`'s (called before its update is applied).
pub(super) fn change_one(conn: &Connection, t: &Task) -> Result<(), StoreError> {
    let status = t.status.as_str();
    // Grouped like the others, so that no key comes twice in one upsert whatever the rows.
    conn.prepare_cached(&format!(
        "INSERT INTO task_counts (status, agent_name, n) \
         SELECT status, agent_name, sum(d) FROM ( \
             SELECT unnest([status, ?]) AS status, agent_name, unnest([-1, 1]) AS d \
             FROM tasks WHERE task_id = ?::VARCHAR::UUID AND status <> ?) \
         GROUP BY ALL {UPSERT}"
    ))?
    .execute(duckdb::params![status, t.id.to_string(), status])?;
    Ok(())
}

/// Uncounts the tasks a removal is about to delete; `filter` is its `WHERE` clause on `tasks`.
pub(super) fn remove_where(conn: &Connection, filter: &str) -> Result<(), StoreError> {
    conn.execute_batch(&format!(
        "INSERT INTO task_counts (status, agent_name, n) \
         SELECT status, agent_name, -count(*) FROM tasks WHERE {filter} GROUP BY ALL {UPSERT}"
    ))?;
    Ok(())
}

/// Counts every stored task afresh (a file from before the counts were kept).
pub(super) const RECOUNT: &str = "DELETE FROM task_counts; \
    INSERT INTO task_counts SELECT status, agent_name, count(*) FROM tasks GROUP BY ALL;";

/// How many tasks have `status` and `agent` (either may be absent: any).
pub(super) fn total(
    c: &Connection,
    status: Option<&str>,
    agent: Option<&str>,
) -> Result<u64, StoreError> {
    let mut st = c.prepare_cached(
        "SELECT coalesce(sum(n), 0)::BIGINT FROM task_counts \
         WHERE (? IS NULL OR status = ?) AND (? IS NULL OR agent_name = ?)",
    )?;
    let n: i64 = st.query_row(duckdb::params![status, status, agent, agent], |r| r.get(0))?;
    Ok(n.max(0) as u64)
}

/// How many tasks there are of each status (statuses without tasks are absent).
pub(super) fn by_status(c: &Connection) -> Result<Vec<(String, u64)>, StoreError> {
    let mut st = c.prepare_cached(
        "SELECT status, sum(n)::BIGINT FROM task_counts GROUP BY status HAVING sum(n) > 0",
    )?;
    let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    let mut out = Vec::new();
    for r in rows {
        let (s, n) = r?;
        out.push((s, n.max(0) as u64));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TaskStatus;
    use crate::store::{prune, rows, schema};

    fn open() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        schema::apply(&c).unwrap();
        c
    }

    /// (status, agent, count) rows.
    type Counts = Vec<(String, String, i64)>;

    /// The kept counts, next to the counts of the rows themselves.
    fn kept_and_counted(c: &Connection) -> (Counts, Counts) {
        let read = |sql: &str| {
            let mut st = c.prepare(sql).unwrap();
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .unwrap()
                .collect::<Result<Counts, _>>()
                .unwrap()
        };
        (
            read("SELECT status, agent_name, n FROM task_counts WHERE n <> 0 ORDER BY ALL"),
            read("SELECT status, agent_name, count(*) FROM tasks GROUP BY ALL ORDER BY ALL"),
        )
    }

    fn task(agent: &str, status: TaskStatus) -> Task {
        let mut t = Task::sample_for_tests();
        t.id = uuid::Uuid::now_v7();
        t.agent_name = agent.into();
        t.status = status;
        t
    }

    #[test]
    fn every_write_of_tasks_keeps_the_counts_exact() {
        let c = open();
        let mut tasks: Vec<Task> = (0..12)
            .map(|i| task(if i % 3 == 0 { "a" } else { "b" }, TaskStatus::Pending))
            .collect();
        let inserts: Vec<(&Task, &str)> = tasks.iter().map(|t| (t, "do it")).collect();
        rows::insert_tasks(&c, &inserts, 1).unwrap();
        let (kept, counted) = kept_and_counted(&c);
        assert_eq!(kept, counted);

        // Staged (many) and one by one (few), including an update that keeps its status.
        for t in tasks.iter_mut().take(8) {
            t.status = TaskStatus::Running;
        }
        let staged: Vec<&Task> = tasks.iter().take(8).collect();
        rows::update_tasks(&c, &staged, 2).unwrap();
        tasks[0].status = TaskStatus::Completed;
        tasks[1].attempt += 1;
        rows::update_tasks(&c, &[&tasks[0], &tasks[1]], 3).unwrap();
        let (kept, counted) = kept_and_counted(&c);
        assert_eq!(kept, counted);

        let gone = prune::Prune {
            tasks: vec![tasks[0].id, tasks[5].id, tasks[11].id],
            workflows: vec![],
        };
        prune::apply(&c, &gone).unwrap();
        let (kept, counted) = kept_and_counted(&c);
        assert_eq!(kept, counted);

        assert_eq!(total(&c, None, None).unwrap(), 9);
        assert_eq!(total(&c, Some("running"), None).unwrap(), 6);
        assert_eq!(total(&c, Some("running"), Some("b")).unwrap(), 4);
        assert_eq!(total(&c, None, Some("nobody")).unwrap(), 0);
        let mut statuses = by_status(&c).unwrap();
        statuses.sort();
        assert_eq!(
            statuses,
            vec![("pending".to_string(), 3), ("running".to_string(), 6)]
        );
    }

    #[test]
    fn a_recount_matches_the_rows() {
        let c = open();
        let tasks = [
            task("a", TaskStatus::Failed),
            task("b", TaskStatus::Completed),
        ];
        let inserts: Vec<(&Task, &str)> = tasks.iter().map(|t| (t, "x")).collect();
        rows::insert_tasks(&c, &inserts, 1).unwrap();
        c.execute_batch("DELETE FROM task_counts").unwrap();
        c.execute_batch(RECOUNT).unwrap();
        let (kept, counted) = kept_and_counted(&c);
        assert_eq!(kept, counted);
    }
}
