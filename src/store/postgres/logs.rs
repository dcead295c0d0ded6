//! Task log lines in the cluster's database.

use uuid::Uuid;

use super::Postgres;
use crate::store::StoreError;

/// One line to append to a task's log.
#[derive(Debug, Clone)]
pub struct LogEntry {
    pub task_id: Uuid,
    pub level: &'static str,
    pub message: String,
}

/// Appends lines inside `tx`, each task's after its last. Writers of one task take turns (a
/// transaction-scoped advisory lock per task, taken in id order so two writers never deadlock),
/// and number their lines in a later statement, whose snapshot sees the lines of the writer
/// before.
pub(super) async fn append_in(
    tx: &deadpool_postgres::Transaction<'_>,
    lines: &[LogEntry],
) -> Result<(), StoreError> {
    if lines.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = lines.iter().map(|l| l.task_id).collect();
    let levels: Vec<&str> = lines.iter().map(|l| l.level).collect();
    let messages: Vec<&str> = lines.iter().map(|l| l.message.as_str()).collect();
    let lock = tx
        .prepare_cached(
            "SELECT pg_advisory_xact_lock(hashtextextended(id::text, 7)) \
             FROM (SELECT DISTINCT id FROM unnest($1::uuid[]) AS id ORDER BY id) AS ids",
        )
        .await?;
    tx.execute(&lock, &[&ids]).await?;
    let insert = tx
        .prepare_cached(
            "INSERT INTO task_logs (task_id, seq, ts, level, message)
         SELECT l.task_id,
                coalesce((SELECT max(x.seq) FROM task_logs x WHERE x.task_id = l.task_id), 0)
                  + row_number() OVER (PARTITION BY l.task_id ORDER BY l.ord),
                clock_timestamp(), l.level, l.message
         FROM unnest($1::uuid[], $2::text[], $3::text[])
              WITH ORDINALITY AS l(task_id, level, message, ord)",
        )
        .await?;
    tx.execute(&insert, &[&ids, &levels, &messages]).await?;
    Ok(())
}

impl Postgres {
    /// Appends lines in one transaction, each task's after its last: `seq` continues across
    /// attempts and nodes, and lines keep their order. Times are the database's.
    pub async fn append_logs(&self, lines: &[LogEntry]) -> Result<(), StoreError> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        append_in(&tx, lines).await?;
        tx.commit().await?;
        Ok(())
    }
}
