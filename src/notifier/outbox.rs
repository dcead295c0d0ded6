//! Where the deliverer finds owed webhook events and records its attempts: the single engine's
//! store, where this engine is the only deliverer, or a cluster's database, where every node
//! delivers and an event is attempted only under the claim of the node attempting it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::delivery::PER_HOST;
use crate::model::{now_us, DeliveryStatus, WebhookAttempt, WebhookEvent};
use crate::store::postgres::Postgres;
use crate::store::{Store, StoreError, WriteOp};

/// How often a cluster node looks for events without being woken: events another node owes
/// (its task ended there, or it died holding them) reach this node only by looking.
const CLUSTER_LOOK: Duration = Duration::from_secs(1);

pub enum Outbox {
    /// The single engine's store.
    Local(Arc<Store>),
    /// A node of a cluster on PostgreSQL.
    Cluster { db: Postgres, node_id: String },
}

/// An owed event handed to one attempt.
pub struct Taken {
    pub event: WebhookEvent,
    /// When this node's claim on it ends at the earliest, by this host's monotonic clock (the
    /// claim was timed from the database's `now()`, which is later than the moment it was
    /// asked for). `None`: no claim is needed, nobody else delivers.
    pub claim_ends: Option<Instant>,
}

impl Outbox {
    /// Owed events due at `now` (this host's clock; a cluster goes by the database's), up to
    /// `limit`; on a cluster, each claimed for `hold`, a few per host and none for the `busy`
    /// hosts.
    pub async fn due(
        &self,
        now: i64,
        limit: u32,
        hold: Duration,
        busy: &[String],
    ) -> Result<Vec<Taken>, StoreError> {
        match self {
            Outbox::Local(store) => Ok(store
                .due_webhook_events(now, limit)
                .await?
                .into_iter()
                .map(|event| Taken {
                    event,
                    claim_ends: None,
                })
                .collect()),
            Outbox::Cluster { db, node_id } => {
                let asked = Instant::now();
                Ok(db
                    .claim_webhooks(node_id, limit, hold, busy, PER_HOST as u32)
                    .await?
                    .into_iter()
                    .map(|event| Taken {
                        event,
                        claim_ends: Some(asked + hold),
                    })
                    .collect())
            }
        }
    }

    /// The event as it stands now, if it is still due. A read of the single engine's store may
    /// predate the commit of the event's previous attempt, so it is read again; a claim is
    /// already current (it was taken in one statement).
    pub async fn current(&self, ev: WebhookEvent) -> Result<Option<WebhookEvent>, StoreError> {
        match self {
            Outbox::Local(store) => Ok(store
                .webhook_event(ev.id)
                .await?
                .filter(|e| e.status == DeliveryStatus::Pending && e.next_attempt_us <= now_us())),
            Outbox::Cluster { .. } => Ok(Some(ev)),
        }
    }

    /// Records an attempt and the event's next state (owed again `retry_in` from now, if
    /// pending). On a cluster the event changes only while the claim is still this node's.
    pub async fn record(
        &self,
        log: WebhookAttempt,
        mut next: WebhookEvent,
        retry_in: Option<Duration>,
    ) -> Result<(), StoreError> {
        match self {
            Outbox::Local(store) => {
                if let Some(d) = retry_in {
                    next.next_attempt_us = log.at_us + d.as_micros() as i64;
                }
                store
                    .write(vec![WriteOp::RecordWebhookAttempt(Box::new((log, next)))])
                    .await
                    .map(drop)
            }
            Outbox::Cluster { db, node_id } => {
                if !db
                    .record_webhook_attempt(node_id, &log, &next, retry_in)
                    .await?
                {
                    tracing::warn!(
                        event = %next.id,
                        "this node's claim on webhook event {} ran out during its attempt; \
                         the node that holds it now decides what happens next",
                        next.id
                    );
                }
                Ok(())
            }
        }
    }

    /// Lets go of claimed events that were not attempted, so any node may take them at once.
    pub async fn release(&self, ids: &[String]) {
        if let Outbox::Cluster { db, node_id } = self {
            if let Err(e) = db.release_webhooks(node_id, ids).await {
                tracing::debug!("could not let go of webhook claims ({e}); they run out anyway");
            }
        }
    }

    /// How long the delivery loop may sleep when nothing wakes it, after taking what was due
    /// at `now`: until the first event that was not due then (an event falling due between the
    /// two reads must not be missed, so both go by the same `now`).
    pub async fn next_look(&self, now: i64) -> Result<Option<Duration>, StoreError> {
        match self {
            Outbox::Local(store) => Ok(store
                .next_webhook_due(now)
                .await?
                .map(|at| Duration::from_micros((at - now_us()).max(0) as u64))),
            Outbox::Cluster { db, .. } => Ok(Some(
                db.next_webhook_in()
                    .await?
                    .map_or(CLUSTER_LOOK, |d| d.min(CLUSTER_LOOK)),
            )),
        }
    }

    /// How many events are owed (on a cluster, by any node).
    pub async fn owed(&self) -> Result<u64, StoreError> {
        match self {
            Outbox::Local(store) => store.webhooks_owed().await,
            Outbox::Cluster { db, .. } => db.webhooks_owed().await,
        }
    }

    /// Whether events are claimed (and must be attempted inside the claim).
    pub fn claims(&self) -> bool {
        matches!(self, Outbox::Cluster { .. })
    }
}
