//! The node's lease: joined at start, renewed in the background, given back at shutdown.

use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::store::postgres::{Lease, NodeInfo, Postgres};
use crate::store::StoreError;

/// Renews the node's lease three times per lease period, so one late or lost heartbeat does
/// not cost the node its tasks.
const RENEWALS_PER_LEASE: u32 = 3;

/// The background duty that keeps this node alive to the cluster.
pub struct Lifeline {
    given_up: CancellationToken,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// Told after each renewal, so that something outside the engine (its warden) can tell a
/// frozen engine from a live one.
pub type OnRenewed = Box<dyn Fn() + Send + Sync>;

impl Lifeline {
    /// Joins the cluster as `node` with a lease of `lease`, and keeps renewing it.
    pub async fn start(
        db: Postgres,
        node: NodeInfo,
        lease: Duration,
    ) -> Result<Lifeline, StoreError> {
        Lifeline::start_telling(db, node, lease, Box::new(|| {})).await
    }

    /// [`Self::start`], calling `on_renewed` after each renewal.
    pub async fn start_telling(
        db: Postgres,
        node: NodeInfo,
        lease: Duration,
        on_renewed: OnRenewed,
    ) -> Result<Lifeline, StoreError> {
        // The lease runs from no earlier than this: the clock the node fences itself by starts
        // before the database's does.
        let asked = Instant::now();
        db.join(&node, lease).await?;
        on_renewed();
        let given_up = CancellationToken::new();
        let stop = CancellationToken::new();
        let task = tokio::spawn(renew(
            db,
            node.node_id,
            lease,
            asked,
            given_up.clone(),
            stop.clone(),
            on_renewed,
        ));
        Ok(Lifeline {
            given_up,
            stop,
            task,
        })
    }

    /// Fired once the cluster has given this node up (its lease expired before a renewal), or
    /// is about to (no renewal succeeded, and the next would come after the lease ends): its
    /// attempts must stop, as their tasks may run elsewhere next.
    pub fn given_up(&self) -> CancellationToken {
        self.given_up.clone()
    }

    /// Stops renewing and leaves the cluster at once (the lease ends now, and so does a
    /// leadership this node held), so nobody waits for it to expire.
    pub async fn leave(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// The node gives itself up this long before its lease ends by its own clock (which started no
/// later than the database's): half a renewal period.
fn margin(lease: Duration) -> Duration {
    lease / RENEWALS_PER_LEASE / 2
}

/// How long after its last renewal a node is taken for dead by its own side (its attempts
/// stopped): when its lease is about to end.
pub fn own_deadline(lease: Duration) -> Duration {
    lease - margin(lease)
}

async fn renew(
    db: Postgres,
    node_id: String,
    lease: Duration,
    joined_at: Instant,
    given_up: CancellationToken,
    stop: CancellationToken,
    on_renewed: OnRenewed,
) {
    let every = lease / RENEWALS_PER_LEASE;
    // When the last successful renewal was asked for: the lease it got runs from no earlier than
    // that. A node that could not renew in time gives itself up before the cluster can: its
    // own deadline, a margin before the lease ends, is kept whatever the heartbeats do.
    let mut renewed_at = joined_at;
    let give_up = |why: &str| {
        tracing::error!(node = %node_id, "{why}; its attempts stop");
        given_up.cancel();
    };
    loop {
        let deadline = tokio::time::Instant::from_std(renewed_at + own_deadline(lease));
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(deadline) => {
                give_up("the node's lease could not be renewed before it ends: the cluster will give the node up");
                return;
            }
            _ = tokio::time::sleep(every) => {}
        }
        let asked = Instant::now();
        // A heartbeat that hangs (a network dropping packets) is given up after one period, or
        // at the deadline.
        let beat = tokio::select! {
            b = tokio::time::timeout(every, db.heartbeat(&node_id, lease)) => b,
            _ = tokio::time::sleep_until(deadline) => continue,
        };
        let why = match beat {
            Ok(Ok(Lease::Held)) => {
                renewed_at = asked;
                on_renewed();
                continue;
            }
            Ok(Ok(Lease::Lost)) => {
                give_up("the cluster gave this node up (its lease expired before it was renewed)");
                return;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {every:?}"),
        };
        tracing::warn!(node = %node_id, "could not renew the node's lease: {why}");
    }
    if let Err(e) = db.leave(&node_id).await {
        tracing::warn!(node = %node_id, "could not leave the cluster ({e}); its lease will expire");
    }
}
