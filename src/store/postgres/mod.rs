//! The PostgreSQL driver: the storage of a cluster of engines sharing one database.
//!
//! Unlike the embedded store, where one engine owns the file and keeps its hot tasks in memory,
//! here the database is the only record every node trusts: tasks are claimed from it
//! (`claim.rs`), outcomes are recorded only by the node that owns the attempt (fencing), and the
//! nodes' liveness and the cluster's one leader are leases kept in it by the database's clock
//! (`nodes.rs`). Operations are set-based — insert many, claim up to N, finish many, take over
//! the running tasks of dead nodes — so a node's round trips do not grow with its load.
//!
//! Every table lives in the PostgreSQL schema `orchestr8` (set as each connection's search
//! path), created by the first migration (`migrate.rs`), so the database can be shared with
//! other applications.

mod changes;
mod claim;
mod import;
mod logs;
pub mod migrate;
mod nodes;
mod notify;
mod prune;
mod reads;
mod rows;
mod settle;
mod stats;
pub mod tls;
mod webhooks;
mod workflows;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

use super::StoreError;

pub use changes::{Changes, DeliveryChange, TaskChange};
pub use claim::{ClaimRequest, NewClusterTask};
pub use logs::LogEntry;
pub use nodes::{Lease, NodeInfo};
pub use settle::{Cancel, Ended, Recorded, Refused};
pub use workflows::{task_row, DraftChange, WorkflowStep};

/// The PostgreSQL schema holding every table.
pub const SCHEMA: &str = "orchestr8";

/// A pool of connections to the cluster's database. Cheap to clone.
#[derive(Clone)]
pub struct Postgres {
    pool: Pool,
    /// How to open a connection of its own (the listener's).
    config: std::sync::Arc<tokio_postgres::Config>,
    /// TLS to the database, when its URL asks for it.
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
}

/// How to reach the database.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// `postgres://user:password@host:port/database?…`, as libpq reads it.
    pub url: String,
    /// The most connections this node opens.
    pub pool_size: usize,
}

impl Postgres {
    /// Connects, and migrates the schema if this node is the first of a newer version (see
    /// `migrate.rs`). Fails when the database cannot be reached or was migrated by a newer
    /// release.
    pub async fn connect(options: &PgOptions) -> Result<Postgres, StoreError> {
        let (url, tls) = tls::split_url(&options.url)
            .map_err(|e| StoreError::Unavailable(format!("the database URL: {e}")))?;
        let tls = tls::connector(&tls)?;
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
            StoreError::Unavailable(format!(
                "the database URL is not a PostgreSQL connection string ({e}); write it as \
                 postgres://user:password@host:5432/database"
            ))
        })?;
        let search_path = format!("-c search_path={SCHEMA}");
        let opts = match config.get_options() {
            Some(o) if !o.is_empty() => format!("{o} {search_path}"),
            _ => search_path,
        };
        config.options(&opts);
        if config.get_application_name().is_none() {
            config.application_name("orchestr8-async");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        // A connection whose other end vanished (a host gone, a network cut) fails within
        // seconds instead of hanging the node's duties for hours.
        config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3);
        let recycling = || ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &tls {
            Some(t) => Manager::from_config(config.clone(), t.clone(), recycling()),
            None => Manager::from_config(config.clone(), NoTls, recycling()),
        };
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(2))
            .wait_timeout(Some(Duration::from_secs(30)))
            .create_timeout(Some(Duration::from_secs(15)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Unavailable(format!("cannot make a connection pool: {e}")))?;
        let store = Postgres {
            pool,
            config: std::sync::Arc::new(config),
            tls,
        };
        let mut client = store.client().await?;
        migrate::migrate(&mut client).await?;
        Ok(store)
    }

    /// A pooled connection.
    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => StoreError::from(e),
            other => StoreError::Unavailable(format!("cannot reach PostgreSQL: {other}")),
        })
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.client().await?.simple_query("SELECT 1").await?;
        Ok(())
    }

    /// The database's clock, in microseconds since the epoch: what every lease and due time is
    /// compared with.
    pub async fn now_us(&self) -> Result<i64, StoreError> {
        let row = self.client().await?.query_one("SELECT now()", &[]).await?;
        Ok(rows::us(row.get(0)))
    }
}

/// PostgreSQL's own message of an error (with its detail), without the driver's prefix.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{} ({detail})", db.message()),
            None => db.message().to_string(),
        },
        None => {
            // The driver's own text hides the cause (a refused certificate, a reset
            // connection): its sources follow.
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                let more = s.to_string();
                if !text.contains(&more) {
                    text.push_str(": ");
                    text.push_str(&more);
                }
                source = s.source();
            }
            text
        }
    }
}

/// PostgreSQL's errors, sorted by what they mean (SQLSTATE classes).
impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> StoreError {
        let text = describe(&e);
        let Some(code) = e.code() else {
            // No SQLSTATE: the connection failed, or a value did not decode.
            let io = e.is_closed()
                || std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
            return if io {
                StoreError::Unavailable(format!("PostgreSQL cannot be reached: {text}"))
            } else {
                StoreError::Unexpected(format!("PostgreSQL: {text}"))
            };
        };
        let class = &code.code()[..2];
        if *code == SqlState::UNIQUE_VIOLATION || *code == SqlState::FOREIGN_KEY_VIOLATION {
            StoreError::Conflict(format!("PostgreSQL: {text}"))
        } else if *code == SqlState::LOCK_NOT_AVAILABLE {
            StoreError::Locked(format!("PostgreSQL: {text}"))
        } else if *code == SqlState::DATA_CORRUPTED || *code == SqlState::INDEX_CORRUPTED {
            StoreError::Corrupt(format!("PostgreSQL: {text}"))
        } else if *code == SqlState::T_R_SERIALIZATION_FAILURE
            || *code == SqlState::T_R_DEADLOCK_DETECTED
            || *code == SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT
            || ["08", "53", "57", "58"].contains(&class)
        {
            StoreError::Unavailable(format!("PostgreSQL is unavailable: {text}"))
        } else {
            StoreError::Unexpected(format!("PostgreSQL: {text}"))
        }
    }
}
