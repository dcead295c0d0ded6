//! Applying `schema.sql` and migrating older files.

use duckdb::Connection;

use super::StoreError;

/// The version of `schema.sql` this build writes.
pub const SCHEMA_VERSION: i32 = 4;

const SCHEMA_SQL: &str = include_str!("../../schema.sql");

/// Steps from version `n - 1` to `n`, for files created by older releases (`schema.sql` has
/// already created any missing table by then, idempotently).
///
/// 2: the journal. Its table is created by `schema.sql`; the version moves so that an older
/// build, which would ignore `<db>.journal` and so miss writes, refuses the file instead.
///
/// 3: each task records the session it came from (its directory and agent search path).
///
/// 4: an isolated task records its git worktree (repository, branch, base and head commits).
const MIGRATIONS: &[(i32, &str)] = &[
    (
        2,
        "CREATE TABLE IF NOT EXISTS journal_state (folded_seq BIGINT NOT NULL)",
    ),
    (
        3,
        "ALTER TABLE tasks ADD COLUMN IF NOT EXISTS project VARCHAR; \
         ALTER TABLE tasks ADD COLUMN IF NOT EXISTS agents_dir VARCHAR;",
    ),
    (
        4,
        "ALTER TABLE tasks ADD COLUMN IF NOT EXISTS workspace VARCHAR; \
         ALTER TABLE task_updates ADD COLUMN IF NOT EXISTS workspace VARCHAR;",
    ),
];

/// Creates missing tables, runs pending migrations, and refuses a file written by a newer release
/// (rather than corrupting it).
pub fn apply(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(SCHEMA_SQL)?;
    let current: Option<i32> =
        conn.query_row("SELECT max(version) FROM schema_version", [], |r| r.get(0))?;
    match current {
        None => {
            conn.execute(
                "INSERT INTO schema_version VALUES (?, now()::TIMESTAMP)",
                [SCHEMA_VERSION],
            )?;
        }
        Some(v) if v > SCHEMA_VERSION => {
            return Err(StoreError::Schema(format!(
                "the database was written by a newer orchestr8-async (schema version {v}, this build knows {SCHEMA_VERSION}); upgrade orchestr8-async or point ORCHESTR8_DB_PATH at another file"
            )));
        }
        Some(v) => {
            for (to, sql) in MIGRATIONS.iter().filter(|(to, _)| *to > v) {
                conn.execute_batch("BEGIN")?;
                conn.execute_batch(sql)?;
                conn.execute(
                    "INSERT INTO schema_version VALUES (?, now()::TIMESTAMP)",
                    [to],
                )?;
                conn.execute_batch("COMMIT")?;
                tracing::info!("migrated database schema to version {to}");
            }
        }
    }
    Ok(())
}
