//! Reading a whole database out, in batches, for the copy of a single engine's file into a
//! cluster's PostgreSQL (`copy.rs` at the crate's root does the copying).

use uuid::Uuid;

use super::reads::id_list;
use super::rows::{self, parse_uuid};
use super::webhooks::{attempt_from_row, event_from_row, ATTEMPT_COLUMNS, EVENT_COLUMNS};
use super::{Store, StoreError};
use crate::model::{Task, WebhookAttempt, WebhookEvent};

/// One log line as stored: its task, sequence number, time, level and message.
#[derive(Debug, Clone)]
pub struct StoredLine {
    pub task_id: Uuid,
    pub seq: i64,
    pub ts_us: i64,
    pub level: String,
    pub message: String,
}

impl Store {
    /// Up to `limit` tasks with their instructions, in id order, after `after` (from the first
    /// when `None`).
    pub async fn export_tasks(
        &self,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<(Task, String)>, StoreError> {
        self.read_folded(move |c| {
            let after = after.unwrap_or(Uuid::nil()).to_string();
            let sql = format!(
                "SELECT {}, instructions FROM tasks WHERE task_id > ?::VARCHAR::UUID \
                 ORDER BY task_id LIMIT {limit}",
                rows::TASK_COLUMNS
            );
            let mut st = c.prepare_cached(&sql)?;
            let mut r = st.query([after])?;
            let mut out = Vec::new();
            while let Some(row) = r.next()? {
                let task = rows::task_from_row(row)?;
                out.push((task, row.get(rows::TASK_COLUMNS.split(',').count())?));
            }
            Ok(out)
        })
        .await
    }

    /// Every log line of `ids`, by task and sequence number.
    pub async fn export_logs(&self, ids: Vec<Uuid>) -> Result<Vec<StoredLine>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.read_folded(move |c| {
            let sql = format!(
                "SELECT task_id::VARCHAR, seq, epoch_us(ts), level, message FROM task_logs \
                 WHERE task_id IN ({}) ORDER BY task_id, seq",
                id_list(&ids)
            );
            let mut st = c.prepare(&sql)?;
            let mut r = st.query([])?;
            let mut out = Vec::new();
            while let Some(row) = r.next()? {
                let id: String = row.get(0)?;
                out.push(StoredLine {
                    task_id: parse_uuid(&id)?,
                    seq: row.get(1)?,
                    ts_us: row.get(2)?,
                    level: row.get(3)?,
                    message: row.get(4)?,
                });
            }
            Ok(out)
        })
        .await
    }

    /// Every webhook event, owed or not, and every delivery attempt.
    pub async fn export_webhooks(
        &self,
    ) -> Result<(Vec<WebhookEvent>, Vec<WebhookAttempt>), StoreError> {
        self.read_folded(|c| {
            let mut events = Vec::new();
            let mut st = c.prepare(&format!(
                "SELECT {EVENT_COLUMNS} FROM webhook_events ORDER BY created_at, event_id"
            ))?;
            let mut r = st.query([])?;
            while let Some(row) = r.next()? {
                events.push(event_from_row(row)?);
            }
            let mut attempts = Vec::new();
            let mut st = c.prepare(&format!(
                "SELECT {ATTEMPT_COLUMNS} FROM webhook_deliveries ORDER BY delivered_at, attempt"
            ))?;
            let mut r = st.query([])?;
            while let Some(row) = r.next()? {
                attempts.push(attempt_from_row(row)?);
            }
            Ok((events, attempts))
        })
        .await
    }
}
