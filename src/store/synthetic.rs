//! Bulk-loads finished tasks straight into a database file, for the benchmark's "1,000,000
//! stored tasks" figures (o8-bench). It writes through the same row writers as the server (the
//! appender), so the rows look like real ones: UUIDv7 ids matching their creation times, a
//! result, two log lines each. The server never calls this.

use std::path::Path;

use duckdb::Connection;
use uuid::{Timestamp, Uuid};

use super::{rows, schema, StoreError};
use crate::model::{NewLogLine, Priority, Task, TaskStatus, Usage};

/// Tasks per transaction while filling.
const CHUNK: usize = 50_000;

/// Appends `n` finished tasks (90 % completed, 7 % failed, 3 % cancelled), spread over the 30
/// days before now and over `agents` in turn, to the database at `path` (created if needed).
/// The server must not have the file open. Returns about 1,000 of the new ids, evenly spread.
pub fn fill_finished(path: &Path, n: usize, agents: &[&str]) -> Result<Vec<Uuid>, StoreError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let conn = Connection::open(path)?;
    schema::apply(&conn)?;
    let now = crate::model::now_us();
    let span_us: i64 = 30 * 24 * 3600 * 1_000_000;
    let step = (span_us / n.max(1) as i64).max(1);
    let every = (n / 1000).max(1);
    let mut sample = Vec::new();
    let mut done = 0;
    while done < n {
        let count = CHUNK.min(n - done);
        let mut tasks = Vec::with_capacity(count);
        let mut logs = Vec::with_capacity(count * 2);
        for i in done..done + count {
            let created = now - span_us + i as i64 * step;
            let t = synthetic_task(i, created, agents);
            for (seq, message) in ["attempt 1 started (runner command)", "attempt 1 ended"]
                .into_iter()
                .enumerate()
            {
                logs.push(NewLogLine {
                    task_id: t.id,
                    seq: seq as i64 + 1,
                    ts_us: created + seq as i64 * 1000,
                    level: "info",
                    message: message.to_string(),
                });
            }
            if i % every == 0 {
                sample.push(t.id);
            }
            tasks.push(t);
        }
        conn.execute_batch("BEGIN TRANSACTION")?;
        let inserts: Vec<(&Task, &str)> = tasks.iter().map(|t| (t, "synthetic task")).collect();
        rows::insert_tasks(&conn, &inserts, now)?;
        rows::append_logs(&conn, &logs.iter().collect::<Vec<_>>())?;
        conn.execute_batch("COMMIT")?;
        done += count;
    }
    conn.execute_batch("CHECKPOINT")?;
    Ok(sample)
}

fn synthetic_task(i: usize, created_us: i64, agents: &[&str]) -> Task {
    let secs = (created_us / 1_000_000) as u64;
    let nanos = ((created_us % 1_000_000) * 1000) as u32;
    let id = Uuid::new_v7(Timestamp::from_unix(uuid::NoContext, secs, nanos));
    let (status, result, error) = match i % 100 {
        0..=89 => (
            TaskStatus::Completed,
            Some(format!("result of task {i}\n")),
            None,
        ),
        90..=96 => (
            TaskStatus::Failed,
            None,
            Some("exit status 1: synthetic failure".to_string()),
        ),
        _ => (
            TaskStatus::Cancelled,
            None,
            Some("cancelled by task_cancel".to_string()),
        ),
    };
    Task {
        id,
        name: format!("synthetic-{i}"),
        agent_name: agents
            .get(i % agents.len().max(1))
            .copied()
            .unwrap_or("synthetic")
            .to_string(),
        status,
        priority: Priority::Normal,
        created_us,
        scheduled_us: created_us,
        started_us: Some(created_us + 1000),
        completed_us: Some(created_us + 2000),
        attempt: 1,
        max_retries: 0,
        retry_floor: 0,
        timeout_seconds: 3600,
        dependencies: Vec::new(),
        workflow_id: None,
        phase_id: None,
        working_dir: None,
        project: Some(format!("/home/dev/project-{}", i % 3).into()),
        agents_dir: None,
        metadata: None,
        webhook_url: None,
        idempotency_key: None,
        result,
        error,
        // As a runner that reports usage would record it (the dashboard's cost charts).
        usage: Usage {
            input_tokens: Some(1000 + (i % 500) as i64),
            output_tokens: Some(200 + (i % 50) as i64),
            cost_usd: Some(0.001 * (1 + i % 20) as f64),
        },
        pid: None,
        pid_start: None,
        workspace: None,
    }
}
