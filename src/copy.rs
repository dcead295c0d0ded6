//! Moving up: copies a single engine's DuckDB file into an empty PostgreSQL database, so that
//! the engines of a cluster pointed at it carry on with everything the file held.
//!
//! The file must not be in use (an engine holds it while it runs): the copy opens it as the
//! engine would, journal replayed, and reads it whole in batches. Finished work comes over as
//! it was; unfinished tasks stay bound to this machine, where their working directories are; a
//! task that was running when its engine last stopped is settled by the cluster's leader as
//! crash recovery would; owed webhook events are delivered by the cluster.

use anyhow::{bail, Context};
use serde::Serialize;

use crate::config::Config;
use crate::model::WorkflowStatus;
use crate::store::postgres::{PgOptions, Postgres};
use crate::store::{Store, StoreError, StoreOptions};

/// Tasks per batch (each batch with its log lines is one transaction).
const BATCH: u32 = 500;

/// What was copied.
#[derive(Debug, Default, Serialize)]
pub struct Copied {
    pub tasks: u64,
    pub log_lines: u64,
    pub workflows: u64,
    pub webhook_events: u64,
    pub webhook_deliveries: u64,
}

/// Copies `cfg`'s DuckDB file into the PostgreSQL database at `url`.
pub async fn to_postgres(cfg: &Config, url: &str) -> anyhow::Result<Copied> {
    let path = cfg.db_path();
    if !path.exists() {
        bail!("there is no database at {} to copy", path.display());
    }
    let store = match Store::open_with(
        &path,
        &StoreOptions {
            journal_max_bytes: cfg.journal_max_bytes,
            memory_mib: cfg.db_memory_mib,
        },
    ) {
        Ok(s) => s,
        Err(StoreError::Locked(_)) => bail!(
            "an engine is using {}; stop it first (orchestr8-async-server stop), then copy",
            path.display()
        ),
        Err(e) => return Err(e).context(format!("opening {}", path.display())),
    };
    let copied = copy(&store, url).await;
    store.close();
    copied
}

async fn copy(store: &Store, url: &str) -> anyhow::Result<Copied> {
    let db = Postgres::connect(&PgOptions {
        url: url.to_string(),
        pool_size: 2,
    })
    .await
    .context("connecting to PostgreSQL")?;
    let (tasks, workflows) = db.held().await?;
    if tasks + workflows > 0 {
        bail!(
            "the PostgreSQL database already holds {tasks} tasks and {workflows} workflows; \
             copy into an empty database (a new one, or drop its schema orchestr8 first)"
        );
    }
    store.settled().await?;
    let host = crate::cluster::this_host();
    let mut copied = Copied::default();
    // Workflows first: their tasks' gates are worked out from their phases at the end.
    let mut all = Vec::new();
    for status in WorkflowStatus::ALL {
        all.extend(store.workflows_in(status).await?);
    }
    let mut phases = Vec::new();
    for wf in &all {
        phases.extend(store.phases(wf.id).await?);
    }
    db.import_workflows(&all, &phases).await?;
    copied.workflows = all.len() as u64;
    let mut after = None;
    loop {
        let batch = store.export_tasks(after, BATCH).await?;
        let Some((last, _)) = batch.last() else { break };
        after = Some(last.id);
        let ids: Vec<_> = batch.iter().map(|(t, _)| t.id).collect();
        let lines = store.export_logs(ids).await?;
        db.import_tasks(&batch, &lines, &host).await?;
        copied.tasks += batch.len() as u64;
        copied.log_lines += lines.len() as u64;
    }
    let (events, attempts) = store.export_webhooks().await?;
    db.import_webhooks(&events, &attempts).await?;
    copied.webhook_events = events.len() as u64;
    copied.webhook_deliveries = attempts.len() as u64;
    db.settle_import().await?;
    Ok(copied)
}
