//! Workflow and phase rows: their writes (called inside a group commit) and reads.

use duckdb::types::Value;
use duckdb::{params, Connection, Row};
use uuid::Uuid;

use super::rows::{self, opt_ts, parse_uuid, ts};
use super::{Store, StoreError};
use crate::model::{
    Phase, PhaseStatus, Task, TaskStatus, Workflow, WorkflowStatus, WorkflowTaskRow,
};

const WORKFLOW_COLUMNS: &str = "workflow_id::VARCHAR, name, description, webhook_url, status, \
    max_parallel, error, epoch_us(created_at), epoch_us(started_at), epoch_us(completed_at)";

const PHASE_COLUMNS: &str = "workflow_id::VARCHAR, phase_id, name, depends_on, position, status, \
    epoch_us(started_at), epoch_us(completed_at)";

#[derive(Debug, Clone)]
pub struct WorkflowSummary {
    pub workflow: Workflow,
    pub tasks_total: u64,
    pub tasks_completed: u64,
}

fn workflow_from_row(r: &Row<'_>) -> duckdb::Result<Workflow> {
    let id: String = r.get(0)?;
    let status: String = r.get(4)?;
    Ok(Workflow {
        id: parse_uuid(&id)?,
        name: r.get(1)?,
        description: r.get(2)?,
        webhook_url: r.get(3)?,
        status: WorkflowStatus::parse(&status).unwrap_or(WorkflowStatus::Failed),
        max_parallel: r.get(5)?,
        error: r.get(6)?,
        created_us: r.get(7)?,
        started_us: r.get(8)?,
        completed_us: r.get(9)?,
    })
}

fn phase_from_row(r: &Row<'_>) -> duckdb::Result<Phase> {
    let id: String = r.get(0)?;
    let deps: String = r.get(3)?;
    let status: String = r.get(5)?;
    Ok(Phase {
        workflow_id: parse_uuid(&id)?,
        phase_id: r.get(1)?,
        name: r.get(2)?,
        depends_on: serde_json::from_str(&deps).unwrap_or_default(),
        position: r.get(4)?,
        status: PhaseStatus::parse(&status).unwrap_or(PhaseStatus::Failed),
        started_us: r.get(6)?,
        completed_us: r.get(7)?,
    })
}

fn text(s: &Option<String>) -> Value {
    s.clone().map(Value::Text).unwrap_or(Value::Null)
}

pub(super) fn insert_workflow(
    conn: &Connection,
    w: &Workflow,
    now_us: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached("INSERT INTO workflows VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")?
        .execute(params![
            w.id.to_string(),
            w.name,
            text(&w.description),
            text(&w.webhook_url),
            w.status.as_str(),
            w.max_parallel,
            text(&w.error),
            ts(w.created_us),
            opt_ts(w.started_us),
            opt_ts(w.completed_us),
            ts(now_us),
        ])?;
    Ok(())
}

pub(super) fn update_workflow(
    conn: &Connection,
    w: &Workflow,
    now_us: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE workflows SET status = ?, error = ?, started_at = ?, completed_at = ?, \
         updated_at = ? WHERE workflow_id = ?::VARCHAR::UUID",
    )?
    .execute(params![
        w.status.as_str(),
        text(&w.error),
        opt_ts(w.started_us),
        opt_ts(w.completed_us),
        ts(now_us),
        w.id.to_string(),
    ])?;
    Ok(())
}

pub(super) fn upsert_phase(conn: &Connection, p: &Phase) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO workflow_phases VALUES (?, ?, ?, ?, ?, ?, ?, ?) \
         ON CONFLICT (workflow_id, phase_id) DO UPDATE SET status = excluded.status, \
         started_at = excluded.started_at, completed_at = excluded.completed_at",
    )?
    .execute(params![
        p.workflow_id.to_string(),
        p.phase_id,
        p.name,
        serde_json::to_string(&p.depends_on).unwrap_or_else(|_| "[]".into()),
        p.position,
        p.status.as_str(),
        opt_ts(p.started_us),
        opt_ts(p.completed_us),
    ])?;
    Ok(())
}

impl Store {
    pub async fn workflow(&self, id: Uuid) -> Result<Option<Workflow>, StoreError> {
        self.read(move |c| {
            let sql = format!(
                "SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE workflow_id = ?::VARCHAR::UUID"
            );
            let mut st = c.prepare_cached(&sql)?;
            let mut r = st.query([id.to_string()])?;
            Ok(match r.next()? {
                Some(row) => Some(workflow_from_row(row)?),
                None => None,
            })
        })
        .await
    }

    /// A workflow's phases in position (= topological) order.
    pub async fn phases(&self, id: Uuid) -> Result<Vec<Phase>, StoreError> {
        self.read(move |c| {
            let sql = format!(
                "SELECT {PHASE_COLUMNS} FROM workflow_phases WHERE workflow_id = ?::VARCHAR::UUID ORDER BY position"
            );
            let mut st = c.prepare_cached(&sql)?;
            let mut r = st.query([id.to_string()])?;
            let mut out = Vec::new();
            while let Some(row) = r.next()? {
                out.push(phase_from_row(row)?);
            }
            Ok(out)
        })
        .await
    }

    /// A workflow's tasks, oldest first, as `workflow_status` shows them.
    pub async fn workflow_task_rows(&self, id: Uuid) -> Result<Vec<WorkflowTaskRow>, StoreError> {
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT task_id::VARCHAR, phase_id, name, status, error, workspace FROM tasks \
                 WHERE workflow_id = ?::VARCHAR::UUID ORDER BY created_at, task_id",
            )?;
            let mut r = st.query([id.to_string()])?;
            let mut out = Vec::new();
            while let Some(row) = r.next()? {
                let tid: String = row.get(0)?;
                let status: String = row.get(3)?;
                out.push(WorkflowTaskRow {
                    id: parse_uuid(&tid)?,
                    phase_id: row.get(1)?,
                    name: row.get(2)?,
                    status: TaskStatus::parse(&status).unwrap_or(TaskStatus::Failed),
                    error: row.get(4)?,
                    branch: row
                        .get::<_, Option<String>>(5)?
                        .and_then(|w| serde_json::from_str::<crate::model::Workspace>(&w).ok())
                        .and_then(|w| w.view().branch),
                });
            }
            Ok(out)
        })
        .await
    }

    /// A workflow's tasks as full records (for the scheduler at start and recovery).
    pub async fn workflow_tasks(&self, id: Uuid) -> Result<Vec<Task>, StoreError> {
        self.read(move |c| {
            let sql = format!(
                "SELECT {} FROM tasks WHERE workflow_id = ?::VARCHAR::UUID ORDER BY created_at, task_id",
                rows::TASK_COLUMNS
            );
            let mut st = c.prepare_cached(&sql)?;
            let mut r = st.query([id.to_string()])?;
            let mut out = Vec::new();
            while let Some(row) = r.next()? {
                out.push(rows::task_from_row(row)?);
            }
            Ok(out)
        })
        .await
    }

    /// Workflows by status (all when `None`), newest first, with task counts; and the total.
    pub async fn list_workflows(
        &self,
        status: Option<WorkflowStatus>,
        limit: u32,
        offset: u64,
    ) -> Result<(Vec<WorkflowSummary>, u64), StoreError> {
        self.read(move |c| {
            let (filter, args): (&str, Vec<String>) = match status {
                Some(s) => ("WHERE w.status = ?", vec![s.as_str().to_string()]),
                None => ("", Vec::new()),
            };
            let total: i64 = c
                .prepare_cached(&format!("SELECT count(*) FROM workflows w {filter}"))?
                .query_row(duckdb::params_from_iter(args.iter()), |r| r.get(0))?;
            let sql = format!(
                "SELECT {WORKFLOW_COLUMNS}, coalesce(n, 0), coalesce(done, 0) FROM ( \
                   SELECT w.*, c.n, c.done FROM workflows w LEFT JOIN ( \
                     SELECT workflow_id, count(*) AS n, \
                            count(*) FILTER (WHERE status = 'completed') AS done \
                     FROM tasks WHERE workflow_id IS NOT NULL GROUP BY workflow_id \
                   ) c ON c.workflow_id = w.workflow_id {filter} \
                 ) ORDER BY created_at DESC, workflow_id DESC LIMIT {limit} OFFSET {offset}"
            );
            let mut st = c.prepare_cached(&sql)?;
            let mut r = st.query(duckdb::params_from_iter(args.iter()))?;
            let mut out = Vec::new();
            while let Some(row) = r.next()? {
                let total: i64 = row.get(10)?;
                let done: i64 = row.get(11)?;
                out.push(WorkflowSummary {
                    workflow: workflow_from_row(row)?,
                    tasks_total: total.max(0) as u64,
                    tasks_completed: done.max(0) as u64,
                });
            }
            Ok((out, total.max(0) as u64))
        })
        .await
    }

    /// Every workflow in a given status (recovery asks for `running` ones).
    pub async fn workflows_in(&self, status: WorkflowStatus) -> Result<Vec<Workflow>, StoreError> {
        self.read(move |c| {
            let sql = format!(
                "SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE status = ? ORDER BY created_at"
            );
            let mut st = c.prepare_cached(&sql)?;
            let mut r = st.query([status.as_str()])?;
            let mut out = Vec::new();
            while let Some(row) = r.next()? {
                out.push(workflow_from_row(row)?);
            }
            Ok(out)
        })
        .await
    }
}
