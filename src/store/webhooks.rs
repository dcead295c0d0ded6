//! The webhook outbox and delivery log: writes (inside a group commit) and reads.

use duckdb::{params, Connection, Row};
use uuid::Uuid;

use super::rows::{parse_uuid, ts};
use super::{Store, StoreError};
use crate::model::{DeliveryStatus, WebhookAttempt, WebhookEvent};

pub(super) const EVENT_COLUMNS: &str =
    "event_id, event_type, task_id::VARCHAR, workflow_id::VARCHAR, url, \
    payload, status, attempts, epoch_us(next_attempt_at), last_error, epoch_us(created_at)";

pub(super) fn opt_uuid(s: Option<String>) -> duckdb::Result<Option<Uuid>> {
    s.as_deref().map(parse_uuid).transpose()
}

pub(super) fn event_from_row(r: &Row<'_>) -> duckdb::Result<WebhookEvent> {
    let status: String = r.get(6)?;
    Ok(WebhookEvent {
        id: r.get(0)?,
        event_type: r.get(1)?,
        task_id: opt_uuid(r.get(2)?)?,
        workflow_id: opt_uuid(r.get(3)?)?,
        url: r.get(4)?,
        payload: r.get(5)?,
        status: DeliveryStatus::parse(&status),
        attempts: r.get(7)?,
        next_attempt_us: r.get(8)?,
        last_error: r.get(9)?,
        created_us: r.get(10)?,
    })
}

pub(super) const ATTEMPT_COLUMNS: &str = "event_id, event_type, task_id::VARCHAR, \
    workflow_id::VARCHAR, attempt, url, status_code, error, duration_ms, epoch_us(delivered_at)";

pub(super) fn attempt_from_row(row: &Row<'_>) -> duckdb::Result<WebhookAttempt> {
    let code: Option<i32> = row.get(6)?;
    let ms: i64 = row.get(8)?;
    Ok(WebhookAttempt {
        event_id: row.get(0)?,
        event_type: row.get(1)?,
        task_id: opt_uuid(row.get(2)?)?,
        workflow_id: opt_uuid(row.get(3)?)?,
        attempt: row.get(4)?,
        url: row.get(5)?,
        status_code: code.and_then(|c| u16::try_from(c).ok()),
        error: row.get(7)?,
        duration_ms: ms.max(0) as u64,
        at_us: row.get(9)?,
    })
}

pub(super) fn insert_event(
    conn: &Connection,
    e: &WebhookEvent,
    now_us: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached("INSERT INTO webhook_events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")?
        .execute(params![
            e.id,
            e.event_type,
            e.task_id.map(|u| u.to_string()),
            e.workflow_id.map(|u| u.to_string()),
            e.url,
            e.payload,
            e.status.as_str(),
            e.attempts,
            ts(e.next_attempt_us),
            e.last_error,
            ts(e.created_us),
            ts(now_us),
        ])?;
    Ok(())
}

/// Logs an attempt and writes the event's new delivery state.
pub(super) fn record_attempt(
    conn: &Connection,
    a: &WebhookAttempt,
    e: &WebhookEvent,
    now_us: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached("INSERT INTO webhook_deliveries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")?
        .execute(params![
            a.event_id,
            a.event_type,
            a.task_id.map(|u| u.to_string()),
            a.workflow_id.map(|u| u.to_string()),
            a.attempt,
            a.url,
            a.status_code,
            a.error,
            a.duration_ms as i64,
            ts(a.at_us),
        ])?;
    conn.prepare_cached(
        "UPDATE webhook_events SET status = ?, attempts = ?, next_attempt_at = ?, last_error = ?, \
         updated_at = ? WHERE event_id = ?",
    )?
    .execute(params![
        e.status.as_str(),
        e.attempts,
        ts(e.next_attempt_us),
        e.last_error,
        ts(now_us),
        e.id,
    ])?;
    Ok(())
}

impl Store {
    pub async fn webhook_event(&self, id: String) -> Result<Option<WebhookEvent>, StoreError> {
        self.read(move |c| {
            let sql = format!("SELECT {EVENT_COLUMNS} FROM webhook_events WHERE event_id = ?");
            let mut st = c.prepare_cached(&sql)?;
            let mut r = st.query([id])?;
            Ok(match r.next()? {
                Some(row) => Some(event_from_row(row)?),
                None => None,
            })
        })
        .await
    }

    /// Owed events whose next attempt is due, oldest first.
    pub async fn due_webhook_events(
        &self,
        now_us: i64,
        limit: u32,
    ) -> Result<Vec<WebhookEvent>, StoreError> {
        self.read(move |c| {
            let sql = format!(
                "SELECT {EVENT_COLUMNS} FROM webhook_events WHERE status = 'pending' \
                 AND next_attempt_at <= make_timestamp(?) ORDER BY next_attempt_at LIMIT {limit}"
            );
            let mut st = c.prepare_cached(&sql)?;
            let mut r = st.query([now_us])?;
            let mut out = Vec::new();
            while let Some(row) = r.next()? {
                out.push(event_from_row(row)?);
            }
            Ok(out)
        })
        .await
    }

    /// When the next owed event after `now_us` falls due, if any.
    pub async fn next_webhook_due(&self, now_us: i64) -> Result<Option<i64>, StoreError> {
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT epoch_us(min(next_attempt_at)) FROM webhook_events \
                 WHERE status = 'pending' AND next_attempt_at > make_timestamp(?)",
            )?;
            Ok(st.query_row([now_us], |r| r.get(0))?)
        })
        .await
    }

    /// How many events are still owed (not yet delivered, attempts left).
    pub async fn webhooks_owed(&self) -> Result<u64, StoreError> {
        self.read(|c| {
            let mut st =
                c.prepare_cached("SELECT count(*) FROM webhook_events WHERE status = 'pending'")?;
            let n: i64 = st.query_row([], |r| r.get(0))?;
            Ok(n.max(0) as u64)
        })
        .await
    }

    /// Every attempt for a task's or a workflow's events, oldest first.
    pub async fn webhook_history(
        &self,
        task_id: Option<Uuid>,
        workflow_id: Option<Uuid>,
    ) -> Result<Vec<WebhookAttempt>, StoreError> {
        self.read(move |c| {
            let (col, id) = match (task_id, workflow_id) {
                (Some(t), _) => ("task_id", t),
                (None, Some(w)) => ("workflow_id", w),
                (None, None) => return Ok(Vec::new()),
            };
            let sql = format!(
                "SELECT {ATTEMPT_COLUMNS} FROM webhook_deliveries \
                 WHERE {col} = ? ORDER BY delivered_at, attempt"
            );
            let mut st = c.prepare_cached(&sql)?;
            let mut r = st.query([id.to_string()])?;
            let mut out = Vec::new();
            while let Some(row) = r.next()? {
                out.push(attempt_from_row(row)?);
            }
            Ok(out)
        })
        .await
    }
}
