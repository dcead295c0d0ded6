//! Retention's step in the scheduler: one batch of finished work that ended before a cutoff is
//! removed, never anything the scheduler holds in memory.

use std::time::Duration;

use crate::store::prune::Pruned;
use crate::store::WriteOp;

use super::{SchedError, Scheduler};

/// Most tasks (and most workflows) removed by one write: each batch is one short fold, so the
/// folder — and the writes waiting on it — is never held up for long.
pub const PRUNE_BATCH: u32 = 500;

/// The pause between batches, which leaves the folder to everyone else.
const BETWEEN_BATCHES: Duration = Duration::from_millis(50);

impl Scheduler {
    /// Removes, batch by batch, all finished work that ended before `cutoff_us`.
    pub async fn prune_before(&self, cutoff_us: i64) -> Result<Pruned, SchedError> {
        let mut total = Pruned::default();
        loop {
            let batch = self.prune_batch(cutoff_us, PRUNE_BATCH).await?;
            total.add(batch);
            if batch.tasks == 0 && batch.workflows == 0 {
                return Ok(total);
            }
            if self.inner.stopping.is_cancelled() {
                return Ok(total);
            }
            tokio::time::sleep(BETWEEN_BATCHES).await;
        }
    }

    /// How long finished work is kept (`None`: for ever).
    pub fn retention(&self) -> Option<Duration> {
        self.inner.cfg.retention
    }

    /// Removes up to `limit` finished tasks outside workflows and `limit` ended workflows (whole)
    /// that ended before `cutoff_us`, and says what went. It returns once the rows are gone from
    /// the tables, so a later read by id cannot find one. A `task_retry` waits for it (and a
    /// prune for a retry), so a task brought back is never removed under it.
    pub async fn prune_batch(&self, cutoff_us: i64, limit: u32) -> Result<Pruned, SchedError> {
        let inner = &self.inner;
        let _no_retry_meanwhile = inner.prune_lock.lock().await;
        let (prune, report) = inner.store.prunable(cutoff_us, limit).await?;
        {
            // Finished work is not in memory, so this never holds; it is the guard that makes
            // "never remove what runs" not depend on the store's statuses alone. The whole batch
            // waits, so a workflow never loses part of itself.
            let st = inner.lock();
            let in_memory = prune.tasks.iter().any(|id| st.hot.contains_key(id))
                || prune.workflows.iter().any(|w| st.workflows.contains_key(w));
            if in_memory {
                tracing::warn!("a prune batch named work still in the scheduler's memory; skipped");
                return Ok(Pruned::default());
            }
        }
        if prune.tasks.is_empty() && prune.workflows.is_empty() {
            return Ok(Pruned::default());
        }
        inner
            .store
            .write(vec![WriteOp::Prune(Box::new(prune))])
            .await?;
        inner.store.settled().await?;
        Ok(report)
    }
}
