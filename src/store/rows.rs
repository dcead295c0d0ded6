//! The SQL of the store: statements and the mapping between rows and [`Task`].
//!
//! Ids are bound as strings and read back with `::VARCHAR`; timestamps are bound as microsecond
//! TIMESTAMP values and read back with `epoch_us`, so the program only ever handles `i64` times.

use duckdb::types::{TimeUnit, Value};
use duckdb::{params, Connection, Row};
use uuid::Uuid;

use super::{counts, StoreError};
use crate::model::{LogLine, NewLogLine, Priority, Task, TaskStatus, Usage};

/// Ids are bound as text and cast in the SQL (`?::VARCHAR::UUID`). A parameter compared with a
/// UUID column is otherwise typed UUID, and a prepared statement whose parameter is bound with
/// another type is planned again at every execution (about half a millisecond for a read of a
/// whole task).
pub const TASK_COLUMNS: &str = "task_id::VARCHAR, name, agent_name, status, priority, \
    epoch_us(created_at), epoch_us(scheduled_at), epoch_us(started_at), epoch_us(completed_at), \
    attempt, max_retries, retry_floor, timeout_seconds, dependencies, workflow_id::VARCHAR, \
    phase_id, working_dir, metadata, webhook_url, idempotency_key, result, error, \
    input_tokens, output_tokens, cost_usd, pid, pid_start, project, agents_dir, workspace";

/// A `WHERE` clause requiring every condition (empty without any).
pub(super) fn where_all(conditions: &[&str]) -> String {
    if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    }
}

pub(super) fn ts(us: i64) -> Value {
    Value::Timestamp(TimeUnit::Microsecond, us)
}

pub(super) fn opt_ts(us: Option<i64>) -> Value {
    us.map(ts).unwrap_or(Value::Null)
}

pub(super) fn parse_uuid(s: &str) -> duckdb::Result<Uuid> {
    Uuid::parse_str(s).map_err(|e| {
        duckdb::Error::FromSqlConversionFailure(0, duckdb::types::Type::Text, Box::new(e))
    })
}

pub fn task_from_row(r: &Row<'_>) -> duckdb::Result<Task> {
    let id: String = r.get(0)?;
    let status: String = r.get(3)?;
    let deps: String = r.get(13)?;
    let workflow: Option<String> = r.get(14)?;
    let metadata: Option<String> = r.get(17)?;
    Ok(Task {
        id: parse_uuid(&id)?,
        name: r.get(1)?,
        agent_name: r.get(2)?,
        status: TaskStatus::parse(&status).unwrap_or(TaskStatus::Failed),
        priority: Priority::from_rank(r.get(4)?),
        created_us: r.get(5)?,
        scheduled_us: r.get(6)?,
        started_us: r.get(7)?,
        completed_us: r.get(8)?,
        attempt: r.get(9)?,
        max_retries: r.get(10)?,
        retry_floor: r.get(11)?,
        timeout_seconds: r.get(12)?,
        dependencies: serde_json::from_str(&deps).unwrap_or_default(),
        workflow_id: workflow.as_deref().map(parse_uuid).transpose()?,
        phase_id: r.get(15)?,
        working_dir: r.get(16)?,
        metadata: metadata.and_then(|m| serde_json::from_str(&m).ok()),
        webhook_url: r.get(18)?,
        idempotency_key: r.get(19)?,
        result: r.get(20)?,
        error: r.get(21)?,
        usage: Usage {
            input_tokens: r.get(22)?,
            output_tokens: r.get(23)?,
            cost_usd: r.get(24)?,
        },
        pid: r.get(25)?,
        pid_start: r.get(26)?,
        project: r.get::<_, Option<String>>(27)?.map(Into::into),
        agents_dir: r.get::<_, Option<String>>(28)?.map(Into::into),
        // A workspace that does not read back must not turn an isolated task into one that
        // runs in the user's checkout: the read fails instead.
        workspace: r
            .get::<_, Option<String>>(29)?
            .map(|w| serde_json::from_str(&w))
            .transpose()
            .map_err(|e| {
                duckdb::Error::FromSqlConversionFailure(29, duckdb::types::Type::Text, Box::new(e))
            })?,
    })
}

fn deps_json(t: &Task) -> String {
    serde_json::to_string(&t.dependencies).unwrap_or_else(|_| "[]".into())
}

fn metadata_json(t: &Task) -> Option<String> {
    t.metadata.as_ref().map(|m| m.to_string())
}

fn workspace_json(t: &Task) -> Option<String> {
    t.workspace
        .as_ref()
        .and_then(|w| serde_json::to_string(w).ok())
}

/// The task's columns in table order, for the appender.
fn task_values(t: &Task, instructions: &str, now_us: i64) -> [Value; 32] {
    fn text(s: &Option<String>) -> Value {
        s.clone().map(Value::Text).unwrap_or(Value::Null)
    }
    fn int(v: Option<i64>) -> Value {
        v.map(Value::BigInt).unwrap_or(Value::Null)
    }
    [
        Value::Text(t.id.to_string()),
        Value::Text(t.name.clone()),
        Value::Text(t.agent_name.clone()),
        Value::Text(instructions.to_string()),
        Value::Text(t.status.as_str().into()),
        Value::SmallInt(t.priority.rank()),
        ts(t.created_us),
        ts(t.scheduled_us),
        opt_ts(t.started_us),
        opt_ts(t.completed_us),
        Value::Int(t.attempt as i32),
        Value::Int(t.max_retries as i32),
        Value::Int(t.retry_floor as i32),
        Value::Int(t.timeout_seconds as i32),
        Value::Text(deps_json(t)),
        t.workflow_id
            .map(|w| Value::Text(w.to_string()))
            .unwrap_or(Value::Null),
        text(&t.phase_id),
        text(&t.working_dir),
        text(&metadata_json(t)),
        text(&t.webhook_url),
        text(&t.idempotency_key),
        text(&t.result),
        text(&t.error),
        int(t.usage.input_tokens),
        int(t.usage.output_tokens),
        t.usage.cost_usd.map(Value::Double).unwrap_or(Value::Null),
        int(t.pid),
        int(t.pid_start),
        ts(now_us),
        text(&t.project.as_deref().map(String::from)),
        text(&t.agents_dir.as_deref().map(String::from)),
        text(&workspace_json(t)),
    ]
}

/// The task that already owns `key`, if any.
pub fn idempotency_owner(conn: &Connection, key: &str) -> Result<Option<Uuid>, StoreError> {
    let mut st =
        conn.prepare_cached("SELECT task_id::VARCHAR FROM idempotency_keys WHERE key = ?")?;
    let mut rows = st.query([key])?;
    match rows.next()? {
        Some(row) => {
            let id: String = row.get(0)?;
            Ok(Some(parse_uuid(&id)?))
        }
        None => Ok(None),
    }
}

/// Inserts tasks with one appender flush (DuckDB's bulk path). Idempotency keys must have been
/// checked by the caller, in the same transaction.
pub fn insert_tasks(
    conn: &Connection,
    tasks: &[(&Task, &str)],
    now_us: i64,
) -> Result<(), StoreError> {
    let mut app = conn.appender("tasks")?;
    for (t, instructions) in tasks {
        app.append_row(duckdb::appender_params_from_iter(task_values(
            t,
            instructions,
            now_us,
        )))?;
    }
    app.flush()?;
    drop(app);
    counts::add_inserted(conn, tasks.iter().map(|(t, _)| *t))?;
    let keyed: Vec<_> = tasks
        .iter()
        .filter_map(|(t, _)| t.idempotency_key.as_ref().map(|k| (k, t.id)))
        .collect();
    if !keyed.is_empty() {
        let mut app = conn.appender("idempotency_keys")?;
        for (key, id) in keyed {
            app.append_row(params![key, id.to_string()])?;
        }
        app.flush()?;
    }
    Ok(())
}

/// The mutable columns of a task, in `task_updates` order.
fn update_values(t: &Task, now_us: i64) -> [Value; 17] {
    fn text(s: Option<String>) -> Value {
        s.map(Value::Text).unwrap_or(Value::Null)
    }
    fn int(v: Option<i64>) -> Value {
        v.map(Value::BigInt).unwrap_or(Value::Null)
    }
    [
        Value::Text(t.id.to_string()),
        Value::Text(t.status.as_str().into()),
        ts(t.scheduled_us),
        opt_ts(t.started_us),
        opt_ts(t.completed_us),
        Value::Int(t.attempt as i32),
        Value::Int(t.retry_floor as i32),
        text(t.result.clone()),
        text(t.error.clone()),
        int(t.usage.input_tokens),
        int(t.usage.output_tokens),
        t.usage.cost_usd.map(Value::Double).unwrap_or(Value::Null),
        text(metadata_json(t)),
        int(t.pid),
        int(t.pid_start),
        ts(now_us),
        text(workspace_json(t)),
    ]
}

const UPDATE_SET: &str = "status = u.status, scheduled_at = u.scheduled_at, \
    started_at = u.started_at, completed_at = u.completed_at, attempt = u.attempt, \
    retry_floor = u.retry_floor, result = u.result, error = u.error, \
    input_tokens = u.input_tokens, output_tokens = u.output_tokens, cost_usd = u.cost_usd, \
    metadata = u.metadata, pid = u.pid, pid_start = u.pid_start, updated_at = u.updated_at, \
    workspace = u.workspace";

/// Below this many rows, one UPDATE per task is cheaper than staging (measured before the counts
/// were kept: ~0.7 ms per UPDATE statement, ~2 ms fixed for the staged path, ~0.015 ms per staged
/// row; each path now adds one statement for the counts, per task or per batch).
const STAGE_FROM: usize = 3;

/// Writes every mutable column of the given tasks (each id at most once). Immutable columns
/// (name, agent, instructions, ...) are fixed at insert. Returns how many of them have no row
/// (the caller decides whether that is an error).
pub fn update_tasks(conn: &Connection, tasks: &[&Task], now_us: i64) -> Result<usize, StoreError> {
    if tasks.len() < STAGE_FROM {
        let mut missing = 0;
        for t in tasks {
            // The id moves last, for the WHERE clause.
            let mut v = update_values(t, now_us).to_vec();
            let id = v.remove(0);
            v.push(id);
            counts::change_one(conn, t)?;
            let n = conn
                .prepare_cached(
                    "UPDATE tasks SET status = ?, scheduled_at = ?, started_at = ?, \
                     completed_at = ?, attempt = ?, retry_floor = ?, result = ?, error = ?, \
                     input_tokens = ?, output_tokens = ?, cost_usd = ?, metadata = ?, pid = ?, \
                     pid_start = ?, updated_at = ?, workspace = ? WHERE task_id = ?::VARCHAR::UUID",
                )?
                .execute(duckdb::params_from_iter(v))?;
            if n != 1 {
                missing += 1;
            }
        }
        return Ok(missing);
    }
    {
        let mut app = conn.appender("task_updates")?;
        for t in tasks {
            app.append_row(duckdb::appender_params_from_iter(update_values(t, now_us)))?;
        }
        app.flush()?;
    }
    counts::change_staged(conn)?;
    let n = conn
        .prepare_cached(&format!(
            "UPDATE tasks SET {UPDATE_SET} FROM task_updates u WHERE tasks.task_id = u.task_id"
        ))?
        .execute([])?;
    conn.prepare_cached("DELETE FROM task_updates")?
        .execute([])?;
    Ok(tasks.len().saturating_sub(n))
}

pub fn append_logs(conn: &Connection, lines: &[&NewLogLine]) -> Result<(), StoreError> {
    let mut app = conn.appender("task_logs")?;
    for l in lines {
        app.append_row(params![
            l.task_id.to_string(),
            l.seq,
            ts(l.ts_us),
            l.level,
            l.message
        ])?;
    }
    app.flush()?;
    Ok(())
}

pub fn log_from_row(r: &Row<'_>) -> duckdb::Result<LogLine> {
    Ok(LogLine {
        seq: r.get(0)?,
        ts: crate::model::rfc3339(r.get(1)?),
        level: r.get(2)?,
        message: r.get(3)?,
    })
}
