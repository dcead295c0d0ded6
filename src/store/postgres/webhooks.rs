//! The cluster's webhook outbox: events owed in the transaction of the terminal state they
//! report, then claimed by one node at a time for one attempt each.
//!
//! Every node delivers. A node takes due events with a claim that lasts a while
//! (`claimed_until`, by the database's clock) and records each attempt only while the claim is
//! still its own. A node that dies holding claims is simply outlived by them: once they run out,
//! any node takes the events again. Delivery is at least once (a node may die after the receiver
//! answered and before it recorded that), and one event is never sent by two nodes at once as
//! long as each starts a send only well inside its claim (see the deliverer).

use std::time::Duration;

use uuid::Uuid;

use super::rows::{task_from_row, time, us, TASK_COLUMNS};
use super::Postgres;
use crate::model::{DeliveryStatus, WebhookAttempt, WebhookEvent};
use crate::store::StoreError;

const EVENT_COLUMNS: &str = "e.event_id, e.event_type, e.task_id, e.workflow_id, e.url, \
    e.payload, e.status, e.attempts, e.next_attempt_at, e.last_error, e.created_at";

fn event_from_row(r: &tokio_postgres::Row) -> Result<WebhookEvent, StoreError> {
    let status: String = r.try_get(6)?;
    Ok(WebhookEvent {
        id: r.try_get(0)?,
        event_type: r.try_get(1)?,
        task_id: r.try_get(2)?,
        workflow_id: r.try_get(3)?,
        url: r.try_get(4)?,
        payload: r.try_get(5)?,
        status: DeliveryStatus::parse(&status),
        attempts: r.try_get::<_, i32>(7)?.max(0) as u32,
        next_attempt_us: us(r.try_get(8)?),
        last_error: r.try_get(9)?,
        created_us: us(r.try_get(10)?),
    })
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Writes, inside `tx`, the events owed for those of `ids` that have a webhook and have just
/// reached a terminal state. Their payloads are built from the rows as this transaction leaves
/// them, stamped with the database's time.
pub(super) async fn owe_in(
    tx: &deadpool_postgres::Transaction<'_>,
    ids: &[Uuid],
) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    let read = format!(
        "SELECT {TASK_COLUMNS}, now() FROM tasks t
         WHERE t.task_id = ANY($1) AND t.webhook_url IS NOT NULL
           AND t.status IN ('completed', 'failed', 'cancelled')"
    );
    let mut events = Vec::new();
    for r in tx.query(&read, &[&ids]).await? {
        let task = task_from_row(&r)?;
        let now = us(r.try_get(30)?);
        events.extend(WebhookEvent::for_task(&task, now));
    }
    insert_in(tx, &events).await
}

/// Writes events inside `tx`, each as it stands (a new one: owed, no attempt yet).
pub(super) async fn insert_in<C: deadpool_postgres::GenericClient>(
    tx: &C,
    events: &[WebhookEvent],
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let col = |f: fn(&WebhookEvent) -> String| events.iter().map(f).collect::<Vec<String>>();
    let task_ids: Vec<Option<Uuid>> = events.iter().map(|e| e.task_id).collect();
    let workflow_ids: Vec<Option<Uuid>> = events.iter().map(|e| e.workflow_id).collect();
    let attempts: Vec<i32> = events.iter().map(|e| e.attempts as i32).collect();
    let next: Vec<_> = events.iter().map(|e| time(e.next_attempt_us)).collect();
    let errors: Vec<Option<&str>> = events.iter().map(|e| e.last_error.as_deref()).collect();
    let created: Vec<_> = events.iter().map(|e| time(e.created_us)).collect();
    let insert = tx
        .prepare_cached(
            "INSERT INTO webhook_events (event_id, event_type, task_id, workflow_id, url,
                 payload, status, attempts, next_attempt_at, last_error, created_at, updated_at,
                 host)
             SELECT e.id, e.kind, e.task_id, e.workflow_id, e.url, e.payload, e.status,
                    e.attempts, e.next, e.error, e.created, now(), e.host
             FROM unnest($1::text[], $2::text[], $3::uuid[], $4::uuid[], $5::text[], $6::text[],
                         $7::text[], $8::int[], $9::timestamptz[], $10::text[],
                         $11::timestamptz[], $12::text[])
                  AS e(id, kind, task_id, workflow_id, url, payload, status, attempts, next,
                       error, created, host)",
        )
        .await?;
    tx.execute(
        &insert,
        &[
            &col(|e| e.id.clone()),
            &col(|e| e.event_type.clone()),
            &task_ids,
            &workflow_ids,
            &col(|e| e.url.clone()),
            &col(|e| e.payload.clone()),
            &col(|e| e.status.as_str().to_string()),
            &attempts,
            &next,
            &errors,
            &created,
            &col(|e| e.host()),
        ],
    )
    .await?;
    Ok(())
}

/// Writes a delivery attempt inside `tx`, made at `at` (`None`: now, by the database's clock).
pub(super) async fn insert_delivery_in<C: deadpool_postgres::GenericClient>(
    tx: &C,
    a: &WebhookAttempt,
    at: Option<i64>,
) -> Result<(), StoreError> {
    let insert = tx
        .prepare_cached(
            "INSERT INTO webhook_deliveries (event_id, event_type, task_id, workflow_id,
                 attempt, url, status_code, error, duration_ms, delivered_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, coalesce($10, now()))",
        )
        .await?;
    tx.execute(
        &insert,
        &[
            &a.event_id,
            &a.event_type,
            &a.task_id,
            &a.workflow_id,
            &(a.attempt as i32),
            &a.url,
            &a.status_code.map(i32::from),
            &a.error,
            &(a.duration_ms.min(i64::MAX as u64) as i64),
            &at.map(time),
        ],
    )
    .await?;
    Ok(())
}

impl Postgres {
    /// Claims up to `limit` due events for `node_id` for `hold`, oldest due first, skipping
    /// those another node holds, at most `per_host` per host and none for the `busy` hosts. A
    /// node the cluster has given up claims nothing.
    pub async fn claim_webhooks(
        &self,
        node_id: &str,
        limit: u32,
        hold: Duration,
        busy: &[String],
        per_host: u32,
    ) -> Result<Vec<WebhookEvent>, StoreError> {
        let client = self.client().await?;
        let claim = client
            .prepare_cached(&format!(
                "WITH due AS (
                     SELECT event_id, coalesce(host, '') AS host, next_attempt_at
                     FROM webhook_events
                     WHERE status = 'pending' AND next_attempt_at <= now()
                       AND (claimed_until IS NULL OR claimed_until <= now())
                       AND coalesce(host, '') <> ALL($4)
                       AND EXISTS (SELECT 1 FROM nodes n WHERE n.node_id = $1
                                   AND n.stopped_at IS NULL AND n.expires_at > now())
                     ORDER BY next_attempt_at
                     LIMIT $2::bigint * 4
                     FOR UPDATE SKIP LOCKED),
                 ranked AS (
                     SELECT event_id, next_attempt_at,
                            row_number() OVER (PARTITION BY host ORDER BY next_attempt_at) AS n
                     FROM due),
                 picked AS (
                     SELECT event_id FROM ranked WHERE n <= $5
                     ORDER BY next_attempt_at LIMIT $2)
                 UPDATE webhook_events e
                 SET claimed_by = $1, claimed_until = now() + make_interval(secs => $3),
                     updated_at = now()
                 FROM picked WHERE e.event_id = picked.event_id
                 RETURNING {EVENT_COLUMNS}"
            ))
            .await?;
        client
            .query(
                &claim,
                &[
                    &node_id,
                    &i64::from(limit),
                    &secs(hold),
                    &busy,
                    &i64::from(per_host),
                ],
            )
            .await?
            .iter()
            .map(event_from_row)
            .collect()
    }

    /// Records one attempt of an event `node_id` claimed, and the event's next state: its
    /// attempt count and error, delivered, given up, or owed again `retry_in` from now. The
    /// attempt happened, so it is logged whatever else; the event changes only if the claim is
    /// still this node's (`false`: another node took it meanwhile, and its attempt counts).
    pub async fn record_webhook_attempt(
        &self,
        node_id: &str,
        attempt: &WebhookAttempt,
        next: &WebhookEvent,
        retry_in: Option<Duration>,
    ) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        insert_delivery_in(&tx, attempt, None).await?;
        let update = tx
            .prepare_cached(
                "UPDATE webhook_events SET status = $3, attempts = $4, last_error = $5,
                     next_attempt_at = CASE WHEN $6::float8 IS NULL THEN next_attempt_at
                                            ELSE now() + make_interval(secs => $6) END,
                     claimed_by = NULL, claimed_until = NULL, updated_at = now()
                 WHERE event_id = $1 AND claimed_by = $2",
            )
            .await?;
        let changed = tx
            .execute(
                &update,
                &[
                    &next.id,
                    &node_id,
                    &next.status.as_str(),
                    &(next.attempts as i32),
                    &next.last_error,
                    &retry_in.map(secs),
                ],
            )
            .await?;
        tx.commit().await?;
        Ok(changed == 1)
    }

    /// Lets go of claims `node_id` holds without having attempted them: any node may take
    /// those events at once.
    pub async fn release_webhooks(&self, node_id: &str, ids: &[String]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.client()
            .await?
            .execute(
                "UPDATE webhook_events SET claimed_by = NULL, claimed_until = NULL
                 WHERE event_id = ANY($2) AND claimed_by = $1",
                &[&node_id, &ids],
            )
            .await?;
        Ok(())
    }

    /// How long until an owed event can next be claimed (its attempt falls due and no claim
    /// holds it); `None` when nothing is owed.
    pub async fn next_webhook_in(&self) -> Result<Option<Duration>, StoreError> {
        let client = self.client().await?;
        let read = client
            .prepare_cached(
                "SELECT EXTRACT(EPOCH FROM min(greatest(next_attempt_at,
                            coalesce(claimed_until, next_attempt_at))) - now())::float8
                 FROM webhook_events WHERE status = 'pending'",
            )
            .await?;
        let secs: Option<f64> = client.query_one(&read, &[]).await?.try_get(0)?;
        Ok(secs.map(|s| Duration::from_secs_f64(s.clamp(0.0, 86_400.0))))
    }

    /// How many events the cluster still owes.
    pub async fn webhooks_owed(&self) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM webhook_events WHERE status = 'pending'",
                &[],
            )
            .await?
            .try_get(0)?;
        Ok(n.max(0) as u64)
    }

    /// Every attempt for a task's or a workflow's events, oldest first.
    pub async fn webhook_history(
        &self,
        task_id: Option<Uuid>,
        workflow_id: Option<Uuid>,
    ) -> Result<Vec<WebhookAttempt>, StoreError> {
        let (col, id) = match (task_id, workflow_id) {
            (Some(t), _) => ("task_id", t),
            (None, Some(w)) => ("workflow_id", w),
            (None, None) => return Ok(Vec::new()),
        };
        let sql = format!(
            "SELECT event_id, event_type, task_id, workflow_id, attempt, url, status_code, error,
                    duration_ms, delivered_at
             FROM webhook_deliveries WHERE {col} = $1 ORDER BY delivered_at, attempt"
        );
        let client = self.client().await?;
        client
            .query(&sql, &[&id])
            .await?
            .iter()
            .map(|r| {
                Ok(WebhookAttempt {
                    event_id: r.try_get(0)?,
                    event_type: r.try_get(1)?,
                    task_id: r.try_get(2)?,
                    workflow_id: r.try_get(3)?,
                    attempt: r.try_get::<_, i32>(4)?.max(0) as u32,
                    url: r.try_get(5)?,
                    status_code: r
                        .try_get::<_, Option<i32>>(6)?
                        .and_then(|c| u16::try_from(c).ok()),
                    error: r.try_get(7)?,
                    duration_ms: r.try_get::<_, i64>(8)?.max(0) as u64,
                    at_us: us(r.try_get(9)?),
                })
            })
            .collect()
    }
}
