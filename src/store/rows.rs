//! The SQL of the store: statements and the mapping between rows and [`Task`].
//!
//! Ids are bound as strings and read back with `::VARCHAR`; timestamps are bound as microsecond
//! TIMESTAMP values and read back with `epoch_us`, so the program only ever handles `i64` times.

use duckdb::types::{TimeUnit, Value};
use duckdb::{params, Connection, Row};
use uuid::Uuid;

use super::StoreError;
use crate::model::{LogLine, NewLogLine, Priority, Task, TaskStatus, Usage};

pub const TASK_COLUMNS: &str = "task_id::VARCHAR, name, agent_name, status, priority, \
    epoch_us(created_at), epoch_us(scheduled_at), epoch_us(started_at), epoch_us(completed_at), \
    attempt, max_retries, retry_floor, timeout_seconds, dependencies, workflow_id::VARCHAR, \
    phase_id, working_dir, metadata, webhook_url, idempotency_key, result, error, \
    input_tokens, output_tokens, cost_usd, pid, pid_start";

fn ts(us: i64) -> Value {
    Value::Timestamp(TimeUnit::Microsecond, us)
}

fn opt_ts(us: Option<i64>) -> Value {
    us.map(ts).unwrap_or(Value::Null)
}

fn parse_uuid(s: &str) -> duckdb::Result<Uuid> {
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
    })
}

fn deps_json(t: &Task) -> String {
    serde_json::to_string(&t.dependencies).unwrap_or_else(|_| "[]".into())
}

fn metadata_json(t: &Task) -> Option<String> {
    t.metadata.as_ref().map(|m| m.to_string())
}

/// Inserts a task; with an idempotency key already taken, inserts nothing and returns the owner.
pub fn insert_task(
    conn: &Connection,
    t: &Task,
    instructions: &str,
    now_us: i64,
) -> Result<Option<Uuid>, StoreError> {
    if let Some(key) = &t.idempotency_key {
        let mut st =
            conn.prepare_cached("SELECT task_id::VARCHAR FROM idempotency_keys WHERE key = ?")?;
        let mut rows = st.query([key])?;
        if let Some(row) = rows.next()? {
            let id: String = row.get(0)?;
            return Ok(Some(parse_uuid(&id)?));
        }
        conn.prepare_cached("INSERT INTO idempotency_keys VALUES (?, ?)")?
            .execute(params![key, t.id.to_string()])?;
    }
    conn.prepare_cached(
        "INSERT INTO tasks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )?
    .execute(params![
        t.id.to_string(),
        t.name,
        t.agent_name,
        instructions,
        t.status.as_str(),
        t.priority.rank(),
        ts(t.created_us),
        ts(t.scheduled_us),
        opt_ts(t.started_us),
        opt_ts(t.completed_us),
        t.attempt,
        t.max_retries,
        t.retry_floor,
        t.timeout_seconds,
        deps_json(t),
        t.workflow_id.map(|w| w.to_string()),
        t.phase_id,
        t.working_dir,
        metadata_json(t),
        t.webhook_url,
        t.idempotency_key,
        t.result,
        t.error,
        t.usage.input_tokens,
        t.usage.output_tokens,
        t.usage.cost_usd,
        t.pid,
        t.pid_start,
        ts(now_us),
    ])?;
    Ok(None)
}

/// Writes every mutable column of a task. Immutable ones (name, agent, instructions, ...) are
/// fixed at insert.
pub fn update_task(conn: &Connection, t: &Task, now_us: i64) -> Result<(), StoreError> {
    let n = conn
        .prepare_cached(
            "UPDATE tasks SET status = ?, scheduled_at = ?, started_at = ?, completed_at = ?, \
             attempt = ?, retry_floor = ?, result = ?, error = ?, input_tokens = ?, \
             output_tokens = ?, cost_usd = ?, metadata = ?, pid = ?, pid_start = ?, updated_at = ? \
             WHERE task_id = ?",
        )?
        .execute(params![
            t.status.as_str(),
            ts(t.scheduled_us),
            opt_ts(t.started_us),
            opt_ts(t.completed_us),
            t.attempt,
            t.retry_floor,
            t.result,
            t.error,
            t.usage.input_tokens,
            t.usage.output_tokens,
            t.usage.cost_usd,
            metadata_json(t),
            t.pid,
            t.pid_start,
            ts(now_us),
            t.id.to_string(),
        ])?;
    if n == 1 {
        Ok(())
    } else {
        Err(StoreError::Conflict(format!(
            "task {} does not exist",
            t.id
        )))
    }
}

pub fn append_logs(conn: &Connection, lines: &[NewLogLine]) -> Result<(), StoreError> {
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
