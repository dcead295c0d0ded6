//! Tasks to and from PostgreSQL rows.
//!
//! A row is read by position from [`TASK_COLUMNS`]. Many tasks are written with one statement:
//! their rows travel as one JSON array, expanded by `jsonb_populate_recordset(NULL::tasks, $1)`
//! (keys are column names, times are RFC 3339), so a batch costs one round trip whatever its
//! size.

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{json, Value};
use tokio_postgres::Row;

use crate::model::{Priority, Task, TaskStatus, Usage};
use crate::store::StoreError;

/// The columns [`task_from_row`] reads, in its order (prefix `t.` where a join needs it).
pub const TASK_COLUMNS: &str = "t.task_id, t.name, t.agent_name, t.status, t.priority, \
    t.created_at, t.scheduled_at, t.started_at, t.completed_at, t.attempt, t.max_retries, \
    t.retry_floor, t.timeout_seconds, t.dependencies, t.workflow_id, t.phase_id, t.working_dir, \
    t.metadata, t.webhook_url, t.idempotency_key, t.result, t.error, t.input_tokens, \
    t.output_tokens, t.cost_usd, t.pid, t.pid_start, t.project, t.agents_dir, t.workspace";

/// Microseconds since the epoch of a database time.
pub fn us(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// A time in microseconds as the database's (out of its range: the epoch, never reached).
pub fn time(us: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(us).single().unwrap_or_default()
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("a stored task's {what} cannot be read: {e}"))
}

/// A row's `(task_id, status)` from its first two columns.
pub fn id_and_status(r: &Row) -> Result<(uuid::Uuid, TaskStatus), StoreError> {
    let st: String = r.try_get(1)?;
    let status = TaskStatus::parse(&st).ok_or_else(|| corrupt("status", &st))?;
    Ok((r.try_get(0)?, status))
}

pub fn task_from_row(r: &Row) -> Result<Task, StoreError> {
    let status: String = r.try_get(3)?;
    let dependencies: Value = r.try_get(13)?;
    let workspace: Option<Value> = r.try_get(29)?;
    Ok(Task {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        agent_name: r.try_get(2)?,
        status: TaskStatus::parse(&status).ok_or_else(|| corrupt("status", &status))?,
        priority: Priority::from_rank(r.try_get(4)?),
        created_us: us(r.try_get(5)?),
        scheduled_us: us(r.try_get(6)?),
        started_us: r.try_get::<_, Option<DateTime<Utc>>>(7)?.map(us),
        completed_us: r.try_get::<_, Option<DateTime<Utc>>>(8)?.map(us),
        attempt: r.try_get::<_, i32>(9)?.max(0) as u32,
        max_retries: r.try_get::<_, i32>(10)?.max(0) as u32,
        retry_floor: r.try_get::<_, i32>(11)?.max(0) as u32,
        timeout_seconds: r.try_get::<_, i32>(12)?.max(0) as u32,
        dependencies: serde_json::from_value(dependencies)
            .map_err(|e| corrupt("dependencies", e))?,
        workflow_id: r.try_get(14)?,
        phase_id: r.try_get(15)?,
        working_dir: r.try_get(16)?,
        metadata: r.try_get(17)?,
        webhook_url: r.try_get(18)?,
        idempotency_key: r.try_get(19)?,
        result: r.try_get(20)?,
        error: r.try_get(21)?,
        usage: Usage {
            input_tokens: r.try_get(22)?,
            output_tokens: r.try_get(23)?,
            cost_usd: r.try_get(24)?,
        },
        pid: r.try_get(25)?,
        pid_start: r.try_get(26)?,
        project: r.try_get::<_, Option<String>>(27)?.map(Into::into),
        agents_dir: r.try_get::<_, Option<String>>(28)?.map(Into::into),
        // A workspace that does not read back must not turn an isolated task into one that runs
        // in the user's checkout: the read fails instead.
        workspace: workspace
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| corrupt("workspace", e))?,
    })
}

fn rfc3339(us: i64) -> String {
    time(us).to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// The columns of a task that change over its life, as JSON keyed by column name (for
/// `jsonb_populate_recordset`): what an outcome writes.
pub fn task_state_json(t: &Task) -> Value {
    json!({
        "task_id": t.id,
        "status": t.status.as_str(),
        "scheduled_at": rfc3339(t.scheduled_us),
        "started_at": t.started_us.map(rfc3339),
        "completed_at": t.completed_us.map(rfc3339),
        "attempt": t.attempt,
        "retry_floor": t.retry_floor,
        "metadata": t.metadata,
        "result": t.result,
        "error": t.error,
        "input_tokens": t.usage.input_tokens,
        "output_tokens": t.usage.output_tokens,
        "cost_usd": t.usage.cost_usd,
        "workspace": t.workspace,
        "pid": t.pid,
        "pid_start": t.pid_start,
    })
}

/// Every column of a new task's row, as JSON keyed by column name.
pub fn new_task_json(
    t: &Task,
    instructions: &str,
    queue: &str,
    host: Option<&str>,
    max_concurrency: Option<u32>,
    deps_open: i32,
) -> Value {
    let mut row = task_state_json(t);
    let fixed = json!({
        "name": t.name,
        "agent_name": t.agent_name,
        "instructions": instructions,
        "priority": t.priority.rank(),
        "queue": queue,
        "host": host,
        "max_concurrency": max_concurrency,
        "created_at": rfc3339(t.created_us),
        "max_retries": t.max_retries,
        "timeout_seconds": t.timeout_seconds,
        "dependencies": t.dependencies,
        "deps_open": deps_open,
        "gated": t.workflow_id.is_some(),
        "workflow_id": t.workflow_id,
        "phase_id": t.phase_id,
        "working_dir": t.working_dir,
        "project": t.project.as_deref(),
        "agents_dir": t.agents_dir.as_deref(),
        "webhook_url": t.webhook_url,
        "idempotency_key": t.idempotency_key,
        "cancel_requested": false,
    });
    if let (Some(row), Value::Object(fixed)) = (row.as_object_mut(), fixed) {
        row.extend(fixed);
    }
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_keep_their_microseconds() {
        let t = 1_767_225_600_123_456;
        assert_eq!(us(time(t)), t);
        assert_eq!(rfc3339(t), "2026-01-01T00:00:00.123456Z");
    }

    #[test]
    fn a_new_row_names_every_column_it_must_fill() {
        let task = Task {
            workflow_id: Some(uuid::Uuid::nil()),
            ..Task::sample_for_tests()
        };
        let row = new_task_json(&task, "do it", "gpu", Some("h1"), Some(2), 1);
        for column in [
            "task_id",
            "name",
            "agent_name",
            "instructions",
            "status",
            "priority",
            "queue",
            "host",
            "max_concurrency",
            "created_at",
            "scheduled_at",
            "attempt",
            "max_retries",
            "retry_floor",
            "timeout_seconds",
            "dependencies",
            "deps_open",
            "gated",
            "cancel_requested",
        ] {
            assert!(row.get(column).is_some(), "missing {column}");
        }
        assert_eq!(row["gated"], true);
        assert_eq!(row["queue"], "gpu");
        assert_eq!(row["deps_open"], 1);
    }
}
