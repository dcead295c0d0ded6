//! Applying `schema.sql` and migrating older files.

use duckdb::Connection;

use super::StoreError;

/// The version of `schema.sql` this build writes.
pub const SCHEMA_VERSION: i32 = 1;

const SCHEMA_SQL: &str = include_str!("../../schema.sql");

/// Steps from version `n - 1` to `n`, for files created by older releases. Empty while the schema
/// has one version; a release that changes `schema.sql` adds `(2, "ALTER TABLE ...")` here.
const MIGRATIONS: &[(i32, &str)] = &[];

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
