//! The store: the only module that talks to DuckDB.
//!
//! One writer thread owns the write connection. Callers send [`WriteOp`] batches over a channel;
//! the writer drains whatever has queued up and commits it all in **one transaction** (group
//! commit), then answers each caller. A batch sent together always lands in one transaction, so a
//! state change and what must accompany it (its log lines, later its webhook outbox row) are
//! atomic. If a group fails, its batches are retried one by one so that one bad batch cannot fail
//! its neighbours.
//!
//! Reads go through a small pool of cloned connections on the blocking thread pool, so they never
//! wait behind a commit. DuckDB's MVCC gives each read a consistent snapshot.

mod reads;
mod rows;
mod schema;
pub mod synthetic;
mod webhooks;
mod workflows;

pub use workflows::WorkflowSummary;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use duckdb::Connection;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::model::{
    now_us, NewLogLine, Phase, Task, TaskStatus, WebhookAttempt, WebhookEvent, Workflow,
};
pub use schema::SCHEMA_VERSION;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] duckdb::Error),
    #[error("{0}")]
    Schema(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the store has shut down")]
    Closed,
    #[error("database I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl StoreError {
    /// Another process holds the file (DuckDB allows one writer process per file).
    pub fn is_locked(&self) -> bool {
        matches!(self, StoreError::Db(e) if e.to_string().contains("Could not set lock on file"))
    }
}

/// A durable change. Ops of one [`Store::write`] call commit together or not at all.
#[derive(Debug, Clone)]
pub enum WriteOp {
    InsertTask {
        task: Box<Task>,
        instructions: String,
    },
    UpdateTask(Box<Task>),
    AppendLogs(Vec<NewLogLine>),
    InsertWorkflow(Box<Workflow>),
    /// Writes the workflow's status, error and times (the rest is fixed at creation).
    UpdateWorkflow(Box<Workflow>),
    /// Inserts a phase, or writes the status and times of an existing one.
    UpsertPhase(Box<Phase>),
    /// An owed webhook event (the outbox), written with the state change that causes it.
    InsertWebhookEvent(Box<WebhookEvent>),
    /// A delivery attempt, and the event's state after it.
    RecordWebhookAttempt(Box<(WebhookAttempt, WebhookEvent)>),
}

/// What an op did, in the order of the ops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpOutcome {
    Done,
    /// An insert whose idempotency key already belonged to this task; nothing was written.
    Existing(Uuid),
}

type Reply = oneshot::Sender<Result<Vec<OpOutcome>, StoreError>>;

struct WriteRequest {
    ops: Vec<WriteOp>,
    reply: Option<Reply>,
}

/// Most requests committed in one transaction; bounds the latency a group adds to its first
/// member.
const MAX_GROUP: usize = 1024;

/// Filters of `list_tasks`.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub status: Option<TaskStatus>,
    pub agent_name: Option<String>,
    pub workflow_id: Option<Uuid>,
    pub limit: u32,
    pub offset: u64,
}

pub struct Store {
    tx: Mutex<Option<mpsc::UnboundedSender<WriteRequest>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    readers: Arc<Mutex<Vec<Connection>>>,
    base: Mutex<Connection>,
}

impl Store {
    /// Opens (creating parent folders and the file as needed) and migrates the database, and
    /// starts the writer thread.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            // Private folders: the engine's socket is only served from a folder others cannot
            // write to.
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)?;
        }
        let conn = Connection::open(path)?;
        schema::apply(&conn)?;
        let writer_conn = conn.try_clone()?;
        writer_conn.set_prepared_statement_cache_capacity(64);
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = std::thread::Builder::new()
            .name("o8-store-writer".into())
            .spawn(move || writer_loop(writer_conn, rx))?;
        Ok(Store {
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            readers: Arc::new(Mutex::new(Vec::new())),
            base: Mutex::new(conn),
        })
    }

    /// Commits `ops` (together with whatever else is queued) and returns once they are durable.
    pub async fn write(&self, ops: Vec<WriteOp>) -> Result<Vec<OpOutcome>, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(WriteRequest {
            ops,
            reply: Some(reply),
        })?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Queues `ops` for the next group commit without waiting (log lines). Order with later
    /// writes is kept: anything written after this call commits in the same or a later group.
    pub fn write_later(&self, ops: Vec<WriteOp>) {
        if self.send(WriteRequest { ops, reply: None }).is_err() {
            tracing::warn!("store closed; dropping a deferred write");
        }
    }

    fn send(&self, req: WriteRequest) -> Result<(), StoreError> {
        let guard = self.tx.lock().map_err(|_| StoreError::Closed)?;
        guard
            .as_ref()
            .ok_or(StoreError::Closed)?
            .send(req)
            .map_err(|_| StoreError::Closed)
    }

    /// Stops the writer after it has committed everything queued so far.
    pub fn close(&self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        let handle = self.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
    }

    /// Runs a read on a pooled connection off the async threads.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = {
            let pooled = self.readers.lock().ok().and_then(|mut p| p.pop());
            match pooled {
                Some(c) => c,
                None => {
                    let base = self.base.lock().map_err(|_| StoreError::Closed)?;
                    let c = base.try_clone()?;
                    c.set_prepared_statement_cache_capacity(32);
                    c
                }
            }
        };
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let out = f(&conn);
            if let Ok(mut p) = readers.lock() {
                if p.len() < 8 {
                    p.push(conn);
                }
            }
            out
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }

    /// A trivial read, for health checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.read(|c| {
            c.query_row("SELECT 1", [], |r| r.get::<_, i32>(0))?;
            Ok(())
        })
        .await
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

fn writer_loop(conn: Connection, mut rx: mpsc::UnboundedReceiver<WriteRequest>) {
    while let Some(first) = rx.blocking_recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        let committed = commit(&conn, group.iter().map(|r| r.ops.as_slice()));
        tracing::trace!(
            requests = group.len(),
            ops = group.iter().map(|r| r.ops.len()).sum::<usize>(),
            took_us = started.elapsed().as_micros() as u64,
            "group commit"
        );
        match committed {
            Ok(mut outcomes) => {
                for (req, out) in group.into_iter().zip(outcomes.drain(..)) {
                    if let Some(reply) = req.reply {
                        let _ = reply.send(Ok(out));
                    }
                }
            }
            Err(e) if group.len() == 1 => reply_err(group, e),
            Err(e) => {
                tracing::warn!(
                    "group commit of {} batches failed ({e}); retrying one by one",
                    group.len()
                );
                for req in group {
                    let res = commit(&conn, std::iter::once(req.ops.as_slice()))
                        .map(|mut o| o.pop().unwrap_or_default());
                    if let Err(e) = &res {
                        tracing::error!("write failed: {e}");
                    }
                    if let Some(reply) = req.reply {
                        let _ = reply.send(res);
                    }
                }
            }
        }
    }
    tracing::debug!("store writer stopped");
}

fn reply_err(group: Vec<WriteRequest>, e: StoreError) {
    tracing::error!("write failed: {e}");
    for req in group {
        if let Some(reply) = req.reply {
            let _ = reply.send(Err(StoreError::Conflict(e.to_string())));
        }
    }
}

/// One transaction over several batches; returns each batch's outcomes.
///
/// DuckDB's cost is per statement far more than per row, so the group is written with a fixed
/// number of statements whatever its size: all inserts through one appender, all updates
/// through one staged UPDATE, all log lines through one appender. Inserts go first, then
/// updates (an update in the group always follows its task's insert), each task's last update
/// in the group winning (an update carries the task's whole mutable state).
fn commit<'a>(
    conn: &Connection,
    batches: impl Iterator<Item = &'a [WriteOp]>,
) -> Result<Vec<Vec<OpOutcome>>, StoreError> {
    conn.execute_batch("BEGIN TRANSACTION")?;
    let res = (|| {
        let now = now_us();
        let mut all = Vec::new();
        let mut inserts: Vec<(&Task, &str)> = Vec::new();
        let mut keys_in_group: HashMap<&str, Uuid> = HashMap::new();
        let mut updates: Vec<&Task> = Vec::new();
        let mut update_index: HashMap<Uuid, usize> = HashMap::new();
        let mut logs: Vec<&NewLogLine> = Vec::new();
        for ops in batches {
            let mut outs = Vec::with_capacity(ops.len());
            for op in ops {
                outs.push(match op {
                    WriteOp::InsertTask { task, instructions } => {
                        let owner = match task.idempotency_key.as_deref() {
                            Some(key) => match keys_in_group.get(key) {
                                Some(id) => Some(*id),
                                None => rows::idempotency_owner(conn, key)?,
                            },
                            None => None,
                        };
                        match owner {
                            Some(existing) => OpOutcome::Existing(existing),
                            None => {
                                if let Some(key) = task.idempotency_key.as_deref() {
                                    keys_in_group.insert(key, task.id);
                                }
                                inserts.push((task, instructions));
                                OpOutcome::Done
                            }
                        }
                    }
                    WriteOp::UpdateTask(task) => {
                        match update_index.get(&task.id) {
                            Some(&i) => updates[i] = task,
                            None => {
                                update_index.insert(task.id, updates.len());
                                updates.push(task);
                            }
                        }
                        OpOutcome::Done
                    }
                    WriteOp::AppendLogs(lines) => {
                        logs.extend(lines.iter());
                        OpOutcome::Done
                    }
                    // Workflow rows are few and written one statement each, in order.
                    WriteOp::InsertWorkflow(w) => {
                        workflows::insert_workflow(conn, w, now)?;
                        OpOutcome::Done
                    }
                    WriteOp::UpdateWorkflow(w) => {
                        workflows::update_workflow(conn, w, now)?;
                        OpOutcome::Done
                    }
                    WriteOp::UpsertPhase(p) => {
                        workflows::upsert_phase(conn, p)?;
                        OpOutcome::Done
                    }
                    WriteOp::InsertWebhookEvent(e) => {
                        webhooks::insert_event(conn, e, now)?;
                        OpOutcome::Done
                    }
                    WriteOp::RecordWebhookAttempt(r) => {
                        webhooks::record_attempt(conn, &r.0, &r.1, now)?;
                        OpOutcome::Done
                    }
                });
            }
            all.push(outs);
        }
        let t0 = std::time::Instant::now();
        if !inserts.is_empty() {
            rows::insert_tasks(conn, &inserts, now)?;
        }
        let t1 = std::time::Instant::now();
        if !updates.is_empty() {
            rows::update_tasks(conn, &updates, now)?;
        }
        let t2 = std::time::Instant::now();
        if !logs.is_empty() {
            rows::append_logs(conn, &logs)?;
        }
        tracing::trace!(
            inserts = inserts.len(),
            insert_us = (t1 - t0).as_micros() as u64,
            updates = updates.len(),
            update_us = (t2 - t1).as_micros() as u64,
            logs = logs.len(),
            log_us = t2.elapsed().as_micros() as u64,
            "group parts"
        );
        Ok(all)
    })();
    match res {
        Ok(all) => {
            let t = std::time::Instant::now();
            conn.execute_batch("COMMIT")?;
            tracing::trace!(commit_us = t.elapsed().as_micros() as u64, "group COMMIT");
            Ok(all)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}
