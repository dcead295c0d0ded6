//! DuckDB's memory limit, and keeping it large enough.
//!
//! The limit bounds DuckDB's cache, which gives back its least used blocks, and the queries,
//! which spill to `<db>.tmp`. What it cannot bound is the index of a primary key: once read, it
//! stays in memory whole (the idempotency keys and the webhook events keep theirs). Should those
//! fill the limit, DuckDB would refuse folds and reads — and an appender refused halfway can
//! leave its index inconsistent. So the limit is kept at least twice what the indexes hold
//! (estimated at open, measured after folds), doubled when needed and said in the log; work
//! DuckDB refuses for memory all the same is tried again after a raise.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use duckdb::Connection;

use super::StoreError;

/// What one key of an indexed table is taken to cost in memory, for the estimate at open.
const INDEX_BYTES_PER_KEY: u64 = 128;

/// A raise this recent is taken to be the answer to an error met meanwhile: whoever met it
/// tries again with that, rather than doubling again.
const SETTLING: Duration = Duration::from_secs(1);

/// The database's current limit, shared by every thread that can meet it.
#[derive(Debug)]
pub struct Budget {
    mib: AtomicU32,
    /// The most it is raised to: DuckDB's own default, 80 % of the machine's memory.
    ceiling: u32,
    /// When it was last raised; held while raising, so two raises never cross.
    raised_at: Mutex<Option<Instant>>,
}

impl Budget {
    /// Applies `mib` to the database `conn` belongs to (the setting is the database's, shared by
    /// its connections).
    pub fn apply(conn: &Connection, mib: u32) -> Result<Budget, StoreError> {
        set(conn, mib)?;
        Ok(Budget {
            mib: AtomicU32::new(mib),
            ceiling: ceiling_mib().max(mib),
            raised_at: Mutex::new(None),
        })
    }

    pub fn mib(&self) -> u32 {
        self.mib.load(Ordering::Relaxed)
    }

    /// After `err`: if it was DuckDB running out of its memory, raises the limit (unless another
    /// thread just did) and says true (try again); otherwise, or at the ceiling, false.
    pub fn relieve(&self, conn: &Connection, err: &str) -> bool {
        if !is_out_of_memory(err) {
            return false;
        }
        let mut raised_at = self.raised_at.lock().unwrap_or_else(|p| p.into_inner());
        if raised_at.is_some_and(|at| at.elapsed() < SETTLING) {
            drop(raised_at);
            // A caller that tries again at once would spin until the next raise is allowed.
            std::thread::sleep(SETTLING / 20);
            return true;
        }
        let was = self.mib();
        let Some(to) = raised(was, self.ceiling) else {
            tracing::error!(
                "the database needs more memory than {was} MiB, the most it is given (80 % of \
                 this machine's); work that needs more is refused"
            );
            return false;
        };
        self.raise(
            conn,
            &mut raised_at,
            to,
            &format!(
                "the database needed more than its memory limit of {was} MiB (what fills it \
                 cannot be let go: the indexes of idempotency keys and webhook events)"
            ),
        )
    }

    /// Runs `op`, and again after each raise its out-of-memory error earns.
    pub fn retrying<T>(
        &self,
        conn: &Connection,
        mut op: impl FnMut() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        loop {
            match op() {
                Err(e) if self.relieve(conn, &e.to_string()) => continue,
                done => return done,
            }
        }
    }

    /// At open: room for the indexes the file's keyed tables will bring into memory, before
    /// anything reads them (an estimate of 128 bytes a key, generous for DuckDB's index).
    pub fn fit_indexes(&self, conn: &Connection) -> Result<(), StoreError> {
        let keys: i64 = conn.query_row(
            "SELECT (SELECT count(*) FROM idempotency_keys) + (SELECT count(*) FROM webhook_events)",
            [],
            |r| r.get(0),
        )?;
        self.make_room(conn, keys.max(0) as u64 * INDEX_BYTES_PER_KEY, "will hold");
        Ok(())
    }

    /// Raises the limit ahead of need: while the indexes held in memory take more than half of
    /// it. Meeting the limit mid-fold is to be avoided, not only survived: an appender that runs
    /// out of memory halfway can leave DuckDB's index holding keys its rolled-back transaction
    /// never kept, and every later fold then fails on them. Called after folds, at most once a
    /// second.
    pub fn keep_room(&self, conn: &Connection) {
        let held: Result<i64, _> = conn.query_row(
            "SELECT coalesce(sum(memory_usage_bytes), 0)::BIGINT FROM duckdb_memory() \
             WHERE tag = 'ART_INDEX'",
            [],
            |r| r.get(0),
        );
        if let Ok(held) = held {
            self.make_room(conn, held.max(0) as u64, "holds");
        }
    }

    fn make_room(&self, conn: &Connection, held: u64, verb: &str) {
        let mut raised_at = self.raised_at.lock().unwrap_or_else(|p| p.into_inner());
        let was = self.mib();
        let Some(to) = room_for(was, held, self.ceiling) else {
            return;
        };
        self.raise(
            conn,
            &mut raised_at,
            to,
            &format!(
                "the database {verb} about {} MiB of indexes in memory (idempotency keys, \
                 webhook events), more than half of its limit of {was} MiB",
                held >> 20
            ),
        );
    }

    /// Sets the limit to `to` (under the raise lock, whose time it updates) and says why.
    fn raise(
        &self,
        conn: &Connection,
        raised_at: &mut Option<Instant>,
        to: u32,
        why: &str,
    ) -> bool {
        match set(conn, to) {
            Ok(()) => {
                self.mib.store(to, Ordering::Relaxed);
                *raised_at = Some(Instant::now());
                tracing::warn!(
                    "{why}; raised to {to} MiB. Set ORCHESTR8_DB_MEMORY_MIB to at least that"
                );
                true
            }
            Err(e) => {
                tracing::error!("cannot raise the database's memory limit to {to} MiB: {e}");
                false
            }
        }
    }
}

/// The limit that leaves `held` bytes of indexes at most half of it: `mib` doubled as often as
/// needed, up to `ceiling`; `None` when `mib` already does (or cannot grow).
pub fn room_for(mib: u32, held: u64, ceiling: u32) -> Option<u32> {
    let mut to = mib;
    while held > (u64::from(to) << 20) / 2 {
        match raised(to, ceiling) {
            Some(next) => to = next,
            None => break,
        }
    }
    (to > mib).then_some(to)
}

/// 80 % of this machine's memory in MiB (DuckDB's own default limit), or 64 GiB when it cannot
/// be read.
fn ceiling_mib() -> u32 {
    let total_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    });
    match total_kib {
        Some(kib) => u32::try_from(kib / 1024 * 8 / 10).unwrap_or(u32::MAX),
        None => 64 << 10,
    }
}

fn set(conn: &Connection, mib: u32) -> Result<(), StoreError> {
    conn.execute_batch(&format!("SET memory_limit = '{mib}MiB'"))?;
    Ok(())
}

/// Whether an error is DuckDB refusing work for want of memory within its limit: an "Out of
/// Memory Error", or another error that ends with the limit's use in brackets (an appender's
/// "could not allocate block of size 1.9 KiB (128.0 MiB/128.0 MiB used)", a commit's "failed to
/// pin block of size 256.0 KiB (127.8 MiB/128.0 MiB used)").
pub fn is_out_of_memory(err: &str) -> bool {
    err.contains("Out of Memory Error") || (err.contains("iB/") && err.contains("iB used)"))
}

/// The next limit after `mib` proved too small: twice as much, up to `ceiling`.
pub fn raised(mib: u32, ceiling: u32) -> Option<u32> {
    let to = mib.saturating_mul(2).min(ceiling);
    (to > mib).then_some(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_duckdbs_memory_error_counts() {
        assert!(is_out_of_memory(
            "database error: Out of Memory Error: failed to pin block of size 256.0 KiB \
             (121.9 MiB/122.0 MiB used)"
        ));
        assert!(is_out_of_memory(
            "database error: Failed to append: could not allocate block of size 1.9 KiB \
             (128.0 MiB/128.0 MiB used)"
        ));
        assert!(is_out_of_memory(
            "TransactionContext Error: Failed to commit: failed to pin block of size 256.0 KiB \
             (127.8 MiB/128.0 MiB used)"
        ));
        assert!(!is_out_of_memory(
            "database error: IO Error: No space left on device"
        ));
    }

    #[test]
    fn the_limit_doubles_up_to_the_ceiling() {
        assert_eq!(raised(128, 1000), Some(256));
        assert_eq!(raised(600, 1000), Some(1000));
        assert_eq!(raised(1000, 1000), None);
        assert!(ceiling_mib() >= 32);
    }

    #[test]
    fn indexes_keep_to_half_the_limit() {
        assert_eq!(room_for(128, 10 << 20, 1 << 20), None);
        assert_eq!(room_for(128, 64 << 20, 1 << 20), None);
        assert_eq!(room_for(128, (64 << 20) + 1, 1 << 20), Some(256));
        assert_eq!(room_for(32, 300 << 20, 1 << 20), Some(1024));
        assert_eq!(room_for(32, 300 << 20, 100), Some(100));
    }

    #[test]
    fn a_database_out_of_memory_gets_a_higher_limit() {
        let conn = Connection::open_in_memory().unwrap();
        let budget = Budget::apply(&conn, 32).unwrap();
        assert!(!budget.relieve(&conn, "some other error"));
        assert_eq!(budget.mib(), 32);
        assert!(budget.relieve(&conn, "Out of Memory Error: failed to pin block"));
        assert_eq!(budget.mib(), 64);
        // Met again at once (by another thread, say): try again with the new limit.
        assert!(budget.relieve(&conn, "Out of Memory Error: failed to pin block"));
        assert_eq!(budget.mib(), 64);
        budget.keep_room(&conn);
        assert_eq!(budget.mib(), 64, "an empty database holds no index");
        let limit: String = conn
            .query_row("SELECT current_setting('memory_limit')", [], |r| r.get(0))
            .unwrap();
        assert!(limit.starts_with("64"), "{limit}");
    }
}
