//! Applying `schema.sql` and migrating older files.

use duckdb::Connection;

use super::{counts, StoreError};

/// The version of `schema.sql` this build writes.
pub const SCHEMA_VERSION: i32 = 6;

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
///
/// 5: `tasks` loses its primary key (its index stayed in memory whole; see `schema.sql`). DuckDB
/// cannot drop a constraint, so the table is made again from `schema.sql`'s statement (written
/// `{create tasks}` here) and the rows are copied in their order. That statement is always the
/// current one, so a later release must keep every column of `tasks` that version 4 had (add
/// columns, never rename or drop them), or this step would break for files of version 4 and
/// older. The copy needs free disk about the size of the table, and the file does not shrink
/// afterwards: DuckDB reuses the space it freed for later writes.
///
/// 6: `task_counts` (created by `schema.sql`) is filled from the stored tasks; every write keeps
/// it from then on, and an older build, which would not, refuses the file.
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
    (
        5,
        "ALTER TABLE tasks RENAME TO tasks_before_v5; \
         {create tasks}; \
         INSERT INTO tasks BY NAME SELECT * FROM tasks_before_v5; \
         DROP TABLE tasks_before_v5;",
    ),
    (6, counts::RECOUNT),
];

/// `sql` with `{create <table>}` replaced by that table's `CREATE TABLE` statement in
/// `schema.sql` (without its `;`), so a step that rebuilds a table never repeats its columns.
fn expand(sql: &str, schema: &str) -> Result<String, StoreError> {
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while let Some(at) = rest.find("{create ") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "{create ".len()..];
        let close = after
            .find('}')
            .ok_or_else(|| StoreError::Corrupt(format!("unclosed {{create in {sql:?}")))?;
        let table = &after[..close];
        out.push_str(create_statement(schema, table).ok_or_else(|| {
            StoreError::Corrupt(format!("schema.sql has no CREATE TABLE for {table}"))
        })?);
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The `CREATE TABLE IF NOT EXISTS <table> (...)` statement of `schema`, up to its `);`.
fn create_statement<'a>(schema: &'a str, table: &str) -> Option<&'a str> {
    let head = format!("CREATE TABLE IF NOT EXISTS {table} (");
    let start = schema.find(&head)?;
    let end = schema[start..].find("\n);")? + start + "\n)".len();
    Some(&schema[start..end])
}

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
            return Err(StoreError::Incompatible(format!(
                "the database was written by a newer orchestr8-async (schema version {v}, this build knows {SCHEMA_VERSION}); upgrade orchestr8-async or point ORCHESTR8_DB_PATH at another file"
            )));
        }
        Some(v) => {
            for (to, sql) in MIGRATIONS.iter().filter(|(to, _)| *to > v) {
                conn.execute_batch("BEGIN")?;
                conn.execute_batch(&expand(sql, SCHEMA_SQL)?)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rebuild_step_gets_the_current_statement() {
        let sql = expand("ALTER x; {create tasks}; DROP y;", SCHEMA_SQL).unwrap();
        assert!(
            sql.starts_with("ALTER x; CREATE TABLE IF NOT EXISTS tasks ("),
            "{sql}"
        );
        assert!(sql.contains("workspace        VARCHAR"), "{sql}");
        assert!(sql.ends_with("\n); DROP y;"), "{sql}");
        assert!(!sql.contains("PRIMARY KEY"), "{sql}");
    }

    #[test]
    fn an_unknown_table_is_an_error() {
        assert!(expand("{create nothing}", SCHEMA_SQL).is_err());
        assert!(expand("{create tasks", SCHEMA_SQL).is_err());
        assert_eq!(expand("no step", SCHEMA_SQL).unwrap(), "no step");
    }

    #[test]
    fn every_step_expands() {
        for (_, sql) in MIGRATIONS {
            expand(sql, SCHEMA_SQL).unwrap();
        }
    }
}
