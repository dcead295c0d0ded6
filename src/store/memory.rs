//! DuckDB's memory limit, and what happens when it proves too small.
//!
//! The limit bounds DuckDB's cache, which gives back its least used blocks, and the queries,
//! which spill to `<db>.tmp`. What it cannot bound is the index of a primary key: once read, it
//! stays in memory whole (the idempotency keys and the webhook events keep theirs). Should those
//! outgrow the limit, DuckDB would refuse every fold and read from then on; instead the limit is
//! doubled, said in the log, and the work tried again.

use std::sync::atomic::{AtomicU32, Ordering};

use duckdb::Connection;

use super::StoreError;

/// The most the limit is raised to, in MiB (DuckDB's own default is 80 % of the machine).
const CEILING_MIB: u32 = 1 << 20;

/// The database's current limit, shared by every thread that can meet it.
#[derive(Debug)]
pub struct Budget {
    mib: AtomicU32,
}

impl Budget {
    /// Applies `mib` to the database `conn` belongs to (the setting is the database's, shared by
    /// its connections).
    pub fn apply(conn: &Connection, mib: u32) -> Result<Budget, StoreError> {
        set(conn, mib)?;
        Ok(Budget {
            mib: AtomicU32::new(mib),
        })
    }

    pub fn mib(&self) -> u32 {
        self.mib.load(Ordering::Relaxed)
    }

    /// After `err`: if it was DuckDB running out of its memory, raises the limit and says true
    /// (try again); otherwise false. Two threads meeting it at once raise it once.
    pub fn relieve(&self, conn: &Connection, err: &str) -> bool {
        if !is_out_of_memory(err) {
            return false;
        }
        let was = self.mib();
        let Some(to) = raised(was) else {
            return false;
        };
        if self
            .mib
            .compare_exchange(was, to, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // Another thread raised it meanwhile: try again with that.
            return true;
        }
        match set(conn, to) {
            Ok(()) => {
                tracing::warn!(
                    "the database needed more than its memory limit of {was} MiB (what fills it \
                     cannot be let go: the indexes of idempotency keys and webhook events); \
                     raised to {to} MiB. Set ORCHESTR8_DB_MEMORY_MIB to at least that"
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

fn set(conn: &Connection, mib: u32) -> Result<(), StoreError> {
    conn.execute_batch(&format!("SET memory_limit = '{mib}MiB'"))?;
    Ok(())
}

/// Whether an error is DuckDB refusing work for want of memory within its limit.
pub fn is_out_of_memory(err: &str) -> bool {
    err.contains("Out of Memory Error")
}

/// The next limit after `mib` proved too small: twice as much, up to the ceiling.
pub fn raised(mib: u32) -> Option<u32> {
    let to = mib.saturating_mul(2).min(CEILING_MIB);
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
        assert!(!is_out_of_memory(
            "database error: IO Error: No space left on device"
        ));
    }

    #[test]
    fn the_limit_doubles_up_to_the_ceiling() {
        assert_eq!(raised(128), Some(256));
        assert_eq!(raised(CEILING_MIB / 2 + 1), Some(CEILING_MIB));
        assert_eq!(raised(CEILING_MIB), None);
    }

    #[test]
    fn a_database_out_of_memory_gets_a_higher_limit() {
        let conn = Connection::open_in_memory().unwrap();
        let budget = Budget::apply(&conn, 32).unwrap();
        assert!(!budget.relieve(&conn, "some other error"));
        assert_eq!(budget.mib(), 32);
        assert!(budget.relieve(&conn, "Out of Memory Error: failed to pin block"));
        assert_eq!(budget.mib(), 64);
        let limit: String = conn
            .query_row("SELECT current_setting('memory_limit')", [], |r| r.get(0))
            .unwrap();
        assert!(limit.starts_with("64"), "{limit}");
    }
}
