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

impl Lifeline {
    /// Joins the cluster as `node` with a lease of `lease`, and keeps renewing it.
    pub async fn start(
        db: Postgres,
        node: NodeInfo,
        lease: Duration,
    ) -> Result<Lifeline, StoreError> {
        db.join(&node, lease).await?;
        let given_up = CancellationToken::new();
        let stop = CancellationToken::new();
        let task = tokio::spawn(renew(
            db,
            node.node_id,
            lease,
            given_up.clone(),
            stop.clone(),
        ));
        Ok(Lifeline {
            given_up,
            stop,
            task,
        })
    }

    /// Fired once the cluster has given this node up (its lease expired before a renewal, or
    /// the database could not be reached for a whole lease): its attempts must stop, as their
    /// tasks may already run elsewhere.
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

async fn renew(
    db: Postgres,
    node_id: String,
    lease: Duration,
    given_up: CancellationToken,
    stop: CancellationToken,
) {
    let every = lease / RENEWALS_PER_LEASE;
    // When the last renewal was asked for: the lease it got runs from no earlier than that, so
    // past `lease` since then the node is surely expired, by any clock.
    let mut renewed_at = Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
        let asked = Instant::now();
        match db.heartbeat(&node_id, lease).await {
            Ok(Lease::Held(_)) => renewed_at = asked,
            Ok(Lease::Lost) => {
                tracing::error!(
                    node = %node_id,
                    "the cluster gave this node up (its lease expired before it was renewed); \
                     its attempts stop"
                );
                given_up.cancel();
                return;
            }
            Err(e) => {
                tracing::warn!(node = %node_id, "could not renew the node's lease: {e}");
                if renewed_at.elapsed() >= lease {
                    tracing::error!(
                        node = %node_id,
                        "no renewal of the node's lease for {lease:?}: the cluster has given it \
                         up; its attempts stop"
                    );
                    given_up.cancel();
                    return;
                }
            }
        }
    }
    if let Err(e) = db.leave(&node_id).await {
        tracing::warn!(node = %node_id, "could not leave the cluster ({e}); its lease will expire");
    }
}
