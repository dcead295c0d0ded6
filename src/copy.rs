//! Moving up: copies a single engine's DuckDB file into an empty PostgreSQL database, so that
//! the engines of a cluster pointed at it carry on with everything the file held.
//!
//! The file must not be in use (an engine holds it while it runs), nor the database (no node
//! may be running on it): the copy opens the file as the engine would, journal replayed, reads
//! it whole in batches and writes it in one transaction. Finished work comes over as it was;
//! unfinished tasks stay bound to this machine, where their working directories are, with their
//! agents' limits (an isolated one's worktree is made there from the same repository); owed
//! webhook events are delivered by the cluster. A file with a task still marked running (its
//! engine did not stop cleanly) is refused, saying what to do first. The file itself is left as it was: point the engines at the
//! database from now on, or its work would be done twice.

use anyhow::{bail, Context};
use serde::Serialize;

use crate::agents::AgentRegistry;
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
    let copied = copy(cfg, &store, url).await;
    store.close();
    copied
}

async fn copy(cfg: &Config, store: &Store, url: &str) -> anyhow::Result<Copied> {
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
    let nodes = db.live_nodes().await?;
    if let Some(n) = nodes.first() {
        bail!(
            "{} engine(s) of a cluster run on this database (node {} on {}, among others); stop \
             them before copying into it",
            nodes.len(),
            n.node_id,
            n.host
        );
    }
    store.settled().await?;
    check_quiet(store).await?;
    let agents = AgentRegistry::new(cfg.agent_dirs(), cfg.default_runner.clone());
    let host = crate::cluster::this_host();
    let mut copied = Copied::default();
    let import = db.begin_import().await?;
    // Workflows first: their tasks' gates are worked out from their phases at the end.
    let mut all = Vec::new();
    for status in WorkflowStatus::ALL {
        all.extend(store.workflows_in(status).await?);
    }
    let mut phases = Vec::new();
    for wf in &all {
        phases.extend(store.phases(wf.id).await?);
    }
    import.workflows(&all, &phases).await?;
    copied.workflows = all.len() as u64;
    let mut after = None;
    loop {
        let batch = store.export_tasks(after, BATCH).await?;
        let Some((last, _)) = batch.last() else { break };
        after = Some(last.id);
        let ids: Vec<_> = batch.iter().map(|(t, _)| t.id).collect();
        let lines = store.export_logs(ids).await?;
        // An agent's limit holds on a cluster as recorded with each task, as at a submit.
        let limits: Vec<Option<u32>> = batch
            .iter()
            .map(|(t, _)| {
                if t.status.is_terminal() {
                    return None;
                }
                agents
                    .with_search_path(t.agents_dir.as_deref())
                    .load(&t.agent_name)
                    .ok()
                    .and_then(|a| a.max_concurrency)
            })
            .collect();
        import.tasks(&batch, &limits, &lines, &host).await?;
        copied.tasks += batch.len() as u64;
        copied.log_lines += lines.len() as u64;
    }
    let (events, attempts) = store.export_webhooks().await?;
    import.webhooks(&events, &attempts).await?;
    copied.webhook_events = events.len() as u64;
    copied.webhook_deliveries = attempts.len() as u64;
    import.settle().await?;
    import.commit().await?;
    Ok(copied)
}

/// Refuses a file with work a cluster could not carry on as the engine would have: a task left
/// running by an engine that did not stop cleanly (its engine's next start recovers it, and
/// stops what it left behind).
async fn check_quiet(store: &Store) -> anyhow::Result<()> {
    let counts = store.count_by_status().await?;
    if let Some((_, n)) = counts.iter().find(|(s, n)| s == "running" && *n > 0) {
        bail!(
            "{n} task(s) were running when the engine last stopped; start it once (any command \
             does, e.g. orchestr8-async-server status) and stop it, so that it recovers them, \
             then copy"
        );
    }
    Ok(())
}
