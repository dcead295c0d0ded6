//! The store: the only module that talks to DuckDB.
//!
//! Writes are journaled, then folded. Callers send [`WriteOp`] batches over a channel; the
//! journal thread (`writer.rs`) drains whatever has queued up, appends one record per batch to
//! `<db>.journal` (`journal.rs`) and waits for a single `fdatasync`, then answers: a batch is
//! durable and atomic once answered. The folder thread (`fold.rs`) applies journaled batches to
//! DuckDB in bulk a few milliseconds later, in one transaction that also records how far it got;
//! opening the store replays whatever the journal holds beyond that (after a crash).
//!
//! Reads go through a small pool of cloned connections on the blocking thread pool, never behind
//! a commit; DuckDB's MVCC gives each a consistent snapshot. Reads by task id consult what is not
//! folded yet, other reads first wait for the folder to catch up (`unfolded.rs`), so every read
//! sees every answered write.

mod counts;
pub mod export;
pub mod feed;
mod fold;
mod handoff;
mod journal;
mod memory;
pub mod postgres;
pub mod prune;
mod reads;
mod rows;
mod schema;
pub mod stats;
pub mod synthetic;
mod unfolded;
mod webhooks;
mod workflows;
mod writer;

pub use workflows::WorkflowSummary;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use duckdb::Connection;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::model::{NewLogLine, Phase, Task, TaskStatus, WebhookAttempt, WebhookEvent, Workflow};
pub use schema::SCHEMA_VERSION;
use unfolded::Unfolded;

/// What can go wrong in storage, named for what it means to the caller rather than for the
/// database underneath (each driver maps its own errors onto these).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the database (a DuckDB file has one owner at a time).
    #[error("{0}")]
    Locked(String),
    /// The database cannot do this now — a full disk, memory, a lost connection, writes held
    /// back while a fold fails. Nothing was changed; the same call may succeed later.
    #[error("{0}")]
    Unavailable(String),
    /// The change collides with another one: a key already taken, or a row that changed
    /// meanwhile (an attempt that no longer owns its task).
    #[error("{0}")]
    Conflict(String),
    /// What is stored cannot be read as this build expects.
    #[error("{0}")]
    Corrupt(String),
    /// Written by another version of orchestr8-async (a newer schema, journal records this build
    /// cannot read): refused rather than misread.
    #[error("{0}")]
    Incompatible(String),
    /// The database refused the operation for a reason none of the above names (a bug, or a
    /// database in a state this build does not expect): not worth trying again as it is.
    #[error("{0}")]
    Unexpected(String),
    #[error("the store has shut down")]
    Closed,
}

/// DuckDB's errors, sorted by what they mean. Its messages are kept whole: the store's memory
/// relief recognises an out-of-memory error by its text.
impl From<duckdb::Error> for StoreError {
    fn from(e: duckdb::Error) -> StoreError {
        use duckdb::Error as E;
        let text = e.to_string();
        match e {
            E::FromSqlConversionFailure(..)
            | E::IntegralValueOutOfRange(..)
            | E::InvalidColumnType(..)
            | E::Utf8Error(..) => {
                StoreError::Corrupt(format!("a stored value cannot be read: {text}"))
            }
            _ if text.contains("Could not set lock on file") => StoreError::Locked(text),
            _ if text.contains("Constraint Error") || text.contains("Duplicate key") => {
                StoreError::Conflict(format!("database error: {text}"))
            }
            _ if text.to_ascii_lowercase().contains("corrupt") => {
                StoreError::Corrupt(format!("database error: {text}"))
            }
            _ if text.contains("IO Error")
                || text.contains("Out of Memory")
                || text.contains("No space left") =>
            {
                StoreError::Unavailable(format!("database error: {text}"))
            }
            _ => StoreError::Unexpected(format!("database error: {text}")),
        }
    }
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> StoreError {
        StoreError::Unavailable(format!("database I/O error: {e}"))
    }
}

/// A durable change. Ops of one [`Store::write`] call commit together or not at all. Serde is
/// the journal's record format.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
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
    /// Removes finished work (retention), applied before the rest of its fold.
    Prune(Box<prune::Prune>),
}

/// What an op did, in the order of the ops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpOutcome {
    Done,
    /// An insert whose idempotency key already belonged to this task; nothing was written. A
    /// change to the refused task in the same write is dropped with it, with the same outcome.
    Existing(Uuid),
}

type Reply = oneshot::Sender<Result<Vec<OpOutcome>, StoreError>>;

struct WriteRequest {
    ops: Vec<WriteOp>,
    reply: Option<Reply>,
}

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
    /// Write requests, to the journal thread.
    requests: Arc<handoff::Handoff<WriteRequest>>,
    /// The journal thread, then the folder: joined in that order.
    threads: Mutex<Vec<JoinHandle<()>>>,
    readers: Arc<Mutex<Vec<Connection>>>,
    base: Mutex<Connection>,
    unfolded: Arc<Unfolded>,
    feed: feed::Feed,
    budget: Arc<memory::Budget>,
}

/// How a store is opened.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The journal's size past which new writes wait for the folder (and the most a replay after
    /// a crash reads).
    pub journal_max_bytes: u64,
    /// DuckDB's memory limit in MiB: its cache of the file and what queries hold. Past it, the
    /// cache gives back what is least used, and a large query spills to `<db>.tmp`.
    pub memory_mib: u32,
}

/// The journal's bound unless set otherwise.
pub const DEFAULT_JOURNAL_MAX_BYTES: u64 = 16 << 20;

/// DuckDB's memory limit unless set otherwise. Its own default is 80% of the machine's memory,
/// which it keeps once read: an engine that has read ten million tasks would hold a gigabyte for
/// as long as it lives.
pub const DEFAULT_MEMORY_MIB: u32 = 128;

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            journal_max_bytes: DEFAULT_JOURNAL_MAX_BYTES,
            memory_mib: DEFAULT_MEMORY_MIB,
        }
    }
}

impl Store {
    /// [`Store::open_with`] the default options.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Store::open_with(path, &StoreOptions::default())
    }

    /// Opens (creating parent folders and the file as needed) and migrates the database, replays
    /// the journal, and starts the journal and folder threads.
    pub fn open_with(path: &Path, options: &StoreOptions) -> Result<Store, StoreError> {
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
        // Set before anything is read: the limit is the database's, shared by every connection.
        let budget = Arc::new(memory::Budget::apply(&conn, options.memory_mib)?);
        schema::apply(&conn)?;
        budget.fit_indexes(&conn)?;
        let folded: i64 = conn.query_row("SELECT max(folded_seq) FROM journal_state", [], |r| {
            r.get(0)
        })?;
        let folded = folded.max(0) as u64;
        let journal_path = journal::path_for(path);
        let replay = journal::read(&journal_path, folded)?;
        let folder_conn = conn.try_clone()?;
        folder_conn.set_prepared_statement_cache_capacity(64);
        if let Some(why) = &replay.unreadable {
            return Err(StoreError::Incompatible(format!(
                "the journal {} holds writes this build cannot read ({why}); start the \
                 orchestr8-async that wrote them, or move the journal aside to give them up",
                journal_path.display()
            )));
        }
        if replay.torn_bytes > 0 {
            tracing::warn!(
                "the journal ended in {} bytes of a write that never completed; ignored",
                replay.torn_bytes
            );
        }
        if !replay.records.is_empty() {
            tracing::info!(records = replay.records.len(), "replaying the journal");
            budget
                .retrying(&folder_conn, || fold::commit(&folder_conn, &replay.records))
                .map_err(|e| {
                    StoreError::Unavailable(format!(
                    "cannot apply the journal {} to the database: {e}. Its writes are kept; fix \
                     the cause (disk space, permissions) and start again",
                    journal_path.display()
                ))
                })?;
        }
        let last = replay.last_seq.max(folded);
        let journal = Arc::new(Mutex::new(journal::Journal::open_empty(
            &journal_path,
            last,
        )?));
        let records = Arc::new(handoff::Handoff::new(fold::FOLD_DELAY, fold::FOLD_RECORDS));
        let unfolded = Arc::new(Unfolded::new(last, records.clone()));
        let requests = Arc::new(handoff::Handoff::new(
            writer::DEFERRED_DELAY,
            writer::MAX_GROUP,
        ));
        let feed = feed::Feed::default();
        let journal_thread = writer::JournalThread {
            max_bytes: options.journal_max_bytes,
            conn: conn.try_clone()?,
            requests: requests.clone(),
            journal: journal.clone(),
            unfolded: unfolded.clone(),
            records: records.clone(),
            next_seq: last + 1,
            feed: feed.clone(),
            budget: budget.clone(),
        };
        let folder = {
            let unfolded = unfolded.clone();
            let budget = budget.clone();
            std::thread::Builder::new()
                .name("o8-store-fold".into())
                .spawn(move || fold::folder_loop(folder_conn, records, unfolded, journal, budget))?
        };
        let writer = std::thread::Builder::new()
            .name("o8-store-journal".into())
            .spawn(move || journal_thread.run())?;
        Ok(Store {
            requests,
            threads: Mutex::new(vec![writer, folder]),
            readers: Arc::new(Mutex::new(Vec::new())),
            base: Mutex::new(conn),
            unfolded,
            feed,
            budget,
        })
    }

    /// Journals `ops` (together with whatever else is queued) and returns once they are durable
    /// and visible to reads.
    pub async fn write(&self, ops: Vec<WriteOp>) -> Result<Vec<OpOutcome>, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(WriteRequest {
            ops,
            reply: Some(reply),
        })?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// What answered writes change from now on (see [`feed`]).
    pub fn changes(&self) -> tokio::sync::broadcast::Receiver<feed::Change> {
        self.feed.subscribe()
    }

    /// Publishes `task`'s log lines on the change feed too, while the answer lives.
    pub fn follow_lines(&self, task: Uuid) -> feed::Following {
        self.feed.follow_lines(task)
    }

    /// Queues `ops` for the next group without waiting (log lines). Order with later writes is
    /// kept: anything written after this call is journaled in the same or a later group.
    pub fn write_later(&self, ops: Vec<WriteOp>) {
        if self.send(WriteRequest { ops, reply: None }).is_err() {
            tracing::warn!("store closed; dropping a deferred write");
        }
    }

    fn send(&self, req: WriteRequest) -> Result<(), StoreError> {
        // Someone waits for an answered write: the journal thread takes it at once. A deferred
        // one waits for the next answered write, or a few milliseconds.
        let urgent = req.reply.is_some();
        if self.requests.push([req], urgent) {
            Ok(())
        } else {
            Err(StoreError::Closed)
        }
    }

    /// Stops the threads after everything queued so far is journaled and folded (the journal is
    /// then empty).
    pub fn close(&self) {
        self.requests.close();
        let handles = self
            .threads
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        for h in handles {
            let _ = h.join();
        }
    }

    /// Runs a read that sees every answered write: it waits for the folder first.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let unfolded = self.unfolded.clone();
        self.read_folded(move |c| {
            // While the tables cannot be written (a full disk), reads go on from what they
            // hold: new writes are refused meanwhile, so only those answered just before the
            // failure can be missing (task states by id are not: they come from the overlay).
            if let Err(why) = unfolded.wait_folded() {
                tracing::debug!("reading while the database cannot be written: {why}");
            }
            f(c)
        })
        .await
    }

    /// A read that must see every answered write or fail: while the tables cannot be written,
    /// it answers with the reason instead of what they hold.
    async fn read_exact<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let unfolded = self.unfolded.clone();
        self.read_folded(move |c| {
            unfolded.wait_folded().map_err(StoreError::Unavailable)?;
            f(c)
        })
        .await
    }

    /// Runs a read on a pooled connection off the async threads, without waiting for the folder:
    /// only for rows that [`Unfolded`] has been consulted about.
    async fn read_folded<T, F>(&self, f: F) -> Result<T, StoreError>
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
                    c.set_prepared_statement_cache_capacity(64);
                    c
                }
            }
        };
        let readers = self.readers.clone();
        let budget = self.budget.clone();
        tokio::task::spawn_blocking(move || {
            let out = match f(&conn) {
                // This read cannot be run twice; the next one has the room.
                Err(e) if budget.relieve(&conn, &e.to_string()) => {
                    Err(StoreError::Unavailable(format!(
                        "the database needed more memory than its limit; the limit is now {} \
                         MiB (ORCHESTR8_DB_MEMORY_MIB): try again",
                        budget.mib()
                    )))
                }
                out => out,
            };
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

    /// Returns once every write answered so far is in the tables (a prune's rows are gone).
    pub async fn settled(&self) -> Result<(), StoreError> {
        let unfolded = self.unfolded.clone();
        tokio::task::spawn_blocking(move || unfolded.wait_folded().map_err(StoreError::Unavailable))
            .await
            .map_err(|_| StoreError::Closed)?
    }

    /// A trivial read, for health checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.read_folded(|c| {
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
