//! Versioned migrations of the PostgreSQL schema, run once however many nodes start together.
//!
//! Every node runs [`migrate`] when it connects. The whole run is one transaction that first
//! takes a transaction-scoped advisory lock: the first node applies what is missing and records
//! each version; the others wait on the lock, then find everything applied and do nothing. DDL is
//! transactional in PostgreSQL, so a node that dies halfway leaves no half-migrated schema. A
//! database migrated by a newer release is refused, never written to.

use tokio_postgres::Client;

use crate::store::StoreError;

/// One step of the schema: applied once, in version order.
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "cluster",
        sql: include_str!("0001_cluster.sql"),
    },
    Migration {
        version: 2,
        name: "webhook lookups",
        sql: include_str!("0002_webhook_lookups.sql"),
    },
    Migration {
        version: 3,
        name: "exact workflow steps and webhook hosts",
        sql: include_str!("0003_exact_steps_and_hosts.sql"),
    },
    Migration {
        version: 4,
        name: "dashboard reads",
        sql: include_str!("0004_dashboard_reads.sql"),
    },
];

/// The schema version this build writes: its last migration's.
pub fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// The key of the advisory lock migrations take ("o8migrat" read as a number), so that nodes
/// wait for each other and not for anything else using advisory locks in the same database.
const MIGRATION_LOCK: i64 = 0x6f38_6d69_6772_6174;

/// What a node should do with a database at `applied` (`None`: never migrated), knowing the
/// migrations `known`: the versions to apply, in order, or why it must not touch it.
pub fn plan(applied: Option<i32>, known: &[i32]) -> Result<Vec<i32>, StoreError> {
    let newest_known = known.iter().copied().max().unwrap_or(0);
    match applied {
        Some(v) if v > newest_known => Err(StoreError::Incompatible(format!(
            "the PostgreSQL database was migrated by a newer orchestr8-async (schema version \
             {v}, this build knows {newest_known}); upgrade this node to the version the others \
             run"
        ))),
        Some(v) => Ok(known.iter().copied().filter(|k| *k > v).collect()),
        None => Ok(known.to_vec()),
    }
}

/// Brings the database's schema to [`latest`], or refuses it. The connection's search path must
/// be [`super::SCHEMA`]: it is created here first.
/// Returns the versions this call applied (empty when another node had done it).
pub async fn migrate(client: &mut Client) -> Result<Vec<i32>, StoreError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    // Created only when missing: creating needs a privilege on the database that a node of a
    // cluster someone else set up need not have.
    let has_schema = tx
        .query_opt(
            "SELECT 1 FROM pg_namespace WHERE nspname = $1",
            &[&super::SCHEMA],
        )
        .await?
        .is_some();
    if !has_schema {
        tx.batch_execute(&format!("CREATE SCHEMA {}", super::SCHEMA))
            .await?;
    }
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
             version     integer PRIMARY KEY,
             name        text NOT NULL,
             applied_at  timestamptz NOT NULL DEFAULT now()
         )",
        schema = super::SCHEMA
    ))
    .await?;
    let applied: Option<i32> = tx
        .query_one("SELECT max(version) FROM schema_migrations", &[])
        .await?
        .get(0);
    let known: Vec<i32> = MIGRATIONS.iter().map(|m| m.version).collect();
    let todo = plan(applied, &known)?;
    for version in &todo {
        let Some(m) = MIGRATIONS.iter().find(|m| m.version == *version) else {
            continue;
        };
        tx.batch_execute(m.sql).await.map_err(|e| {
            StoreError::Unavailable(format!(
                "migration {} ({}) of the PostgreSQL schema failed: {}",
                m.version,
                m.name,
                super::describe(&e)
            ))
        })?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[&m.version, &m.name],
        )
        .await?;
    }
    tx.commit().await?;
    if !todo.is_empty() {
        tracing::info!(versions = ?todo, "migrated the PostgreSQL schema");
    }
    Ok(todo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_database_gets_every_migration() {
        assert_eq!(plan(None, &[1, 2, 3]).unwrap(), vec![1, 2, 3]);
    }

    #[test]
    fn only_missing_versions_are_applied() {
        assert_eq!(plan(Some(1), &[1, 2, 3]).unwrap(), vec![2, 3]);
        assert!(plan(Some(3), &[1, 2, 3]).unwrap().is_empty());
    }

    #[test]
    fn a_newer_schema_is_refused_with_what_to_do() {
        let e = plan(Some(4), &[1, 2, 3]).unwrap_err();
        assert!(matches!(e, StoreError::Incompatible(_)));
        let text = e.to_string();
        assert!(text.contains("schema version 4"), "{text}");
        assert!(text.contains("knows 3"), "{text}");
        assert!(text.contains("upgrade"), "{text}");
    }

    #[test]
    fn versions_are_increasing_and_the_latest_is_last() {
        let versions: Vec<i32> = MIGRATIONS.iter().map(|m| m.version).collect();
        assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
        assert_eq!(latest(), *versions.last().unwrap());
    }
}
