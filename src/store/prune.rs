//! Retention: finding finished work old enough to remove, and removing it in the fold.
//!
//! Only finished work is ever removed: a task that is completed, failed or cancelled and not in
//! a workflow, or a workflow that has ended, with all its tasks and phases — never a part of
//! one. With a task go its log lines, its idempotency key (the key may then be used again), its
//! webhook events and their delivery records; nothing is removed while a webhook about it is
//! still owed.

use duckdb::Connection;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::reads::{id_list, id_range};
use super::{counts, Store, StoreError};

/// What one prune removes (the journal's record of it).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Prune {
    /// Every task removed, those of the workflows included.
    pub tasks: Vec<Uuid>,
    pub workflows: Vec<Uuid>,
}

/// What a prune removed, as reported to whoever asked.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Pruned {
    pub tasks: u64,
    pub workflows: u64,
    pub log_lines: u64,
    pub webhook_deliveries: u64,
}

impl Pruned {
    pub fn add(&mut self, other: Pruned) {
        self.tasks += other.tasks;
        self.workflows += other.workflows;
        self.log_lines += other.log_lines;
        self.webhook_deliveries += other.webhook_deliveries;
    }
}

/// Ids per statement.
const CHUNK: usize = 1000;

impl Store {
    /// Finished work that ended before `cutoff_us`, oldest first: up to `limit` tasks outside
    /// workflows and up to `limit` ended workflows with every task of theirs, and how much goes
    /// with them.
    pub async fn prunable(
        &self,
        cutoff_us: i64,
        limit: u32,
    ) -> Result<(Prune, Pruned), StoreError> {
        self.read(move |c| {
            let mut prune = Prune::default();
            let mut st = c.prepare_cached(
                "SELECT task_id::VARCHAR FROM tasks t \
                 WHERE workflow_id IS NULL \
                   AND status IN ('completed', 'failed', 'cancelled') \
                   AND coalesce(completed_at, updated_at) < make_timestamp(?) \
                   AND NOT EXISTS (SELECT 1 FROM webhook_events e \
                                   WHERE e.task_id = t.task_id AND e.status = 'pending') \
                 ORDER BY coalesce(completed_at, updated_at) LIMIT ?",
            )?;
            let mut rows = st.query(duckdb::params![cutoff_us, limit])?;
            while let Some(r) = rows.next()? {
                prune.tasks.push(parse_id(r.get::<_, String>(0)?)?);
            }
            let mut st = c.prepare_cached(
                "SELECT workflow_id::VARCHAR FROM workflows w \
                 WHERE status IN ('completed', 'failed', 'cancelled') \
                   AND coalesce(completed_at, updated_at) < make_timestamp(?) \
                   AND NOT EXISTS (SELECT 1 FROM webhook_events e \
                                   WHERE e.status = 'pending' AND (e.workflow_id = w.workflow_id \
                                     OR e.task_id IN (SELECT task_id FROM tasks \
                                                      WHERE workflow_id = w.workflow_id))) \
                 ORDER BY coalesce(completed_at, updated_at) LIMIT ?",
            )?;
            let mut rows = st.query(duckdb::params![cutoff_us, limit])?;
            while let Some(r) = rows.next()? {
                prune.workflows.push(parse_id(r.get::<_, String>(0)?)?);
            }
            let mut report = Pruned {
                tasks: prune.tasks.len() as u64,
                workflows: prune.workflows.len() as u64,
                ..Pruned::default()
            };
            for chunk in prune.workflows.chunks(CHUNK) {
                let sql = format!(
                    "SELECT task_id::VARCHAR FROM tasks WHERE workflow_id IN ({})",
                    id_list(chunk)
                );
                let mut st = c.prepare(&sql)?;
                let mut rows = st.query([])?;
                while let Some(r) = rows.next()? {
                    prune.tasks.push(parse_id(r.get::<_, String>(0)?)?);
                    report.tasks += 1;
                }
            }
            for chunk in prune.tasks.chunks(CHUNK) {
                report.log_lines += count(
                    c,
                    &format!(
                        "SELECT count(*) FROM task_logs WHERE task_id IN ({}) {}",
                        id_list(chunk),
                        id_range(chunk)
                    ),
                )?;
                report.webhook_deliveries += count(
                    c,
                    &format!(
                        "SELECT count(*) FROM webhook_deliveries WHERE task_id IN ({})",
                        id_list(chunk)
                    ),
                )?;
            }
            for chunk in prune.workflows.chunks(CHUNK) {
                report.webhook_deliveries += count(
                    c,
                    &format!(
                        "SELECT count(*) FROM webhook_deliveries \
                         WHERE workflow_id IN ({}) AND task_id IS NULL",
                        id_list(chunk)
                    ),
                )?;
            }
            Ok((prune, report))
        })
        .await
    }
}

fn parse_id(s: String) -> Result<Uuid, StoreError> {
    Uuid::parse_str(&s)
        .map_err(|e| StoreError::Corrupt(format!("a stored id {s:?} is not a UUID: {e}")))
}

fn count(c: &Connection, sql: &str) -> Result<u64, StoreError> {
    let n: i64 = c.query_row(sql, [], |r| r.get(0))?;
    Ok(n.max(0) as u64)
}

/// Removes what `prune` names, in the fold's transaction.
pub(super) fn apply(conn: &Connection, prune: &Prune) -> Result<(), StoreError> {
    for chunk in prune.tasks.chunks(CHUNK) {
        let ids = id_list(chunk);
        let range = id_range(chunk);
        counts::remove_where(conn, &format!("task_id IN ({ids}) {range}"))?;
        conn.execute_batch(&format!(
            "DELETE FROM task_logs WHERE task_id IN ({ids}) {range};
             DELETE FROM idempotency_keys WHERE task_id IN ({ids});
             DELETE FROM webhook_deliveries WHERE task_id IN ({ids});
             DELETE FROM webhook_events WHERE task_id IN ({ids});
             DELETE FROM tasks WHERE task_id IN ({ids}) {range};"
        ))?;
    }
    for chunk in prune.workflows.chunks(CHUNK) {
        let ids = id_list(chunk);
        conn.execute_batch(&format!(
            "DELETE FROM webhook_deliveries WHERE workflow_id IN ({ids});
             DELETE FROM webhook_events WHERE workflow_id IN ({ids});
             DELETE FROM workflow_phases WHERE workflow_id IN ({ids});
             DELETE FROM workflows WHERE workflow_id IN ({ids});"
        ))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Task, TaskStatus};
    use crate::store::{OpOutcome, WriteOp};

    fn keyed(key: &str) -> Task {
        let mut t = Task::sample_for_tests();
        t.idempotency_key = Some(key.into());
        t
    }

    /// A prune and an insert taking the key it frees, folded together: the fold removes first,
    /// so the key's row is free for the insert (and a replay does the same).
    #[tokio::test(flavor = "multi_thread")]
    async fn a_key_freed_by_a_prune_can_be_taken_in_the_same_fold() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o8.duckdb");
        let store = Store::open(&path).unwrap();
        let mut old = keyed("nightly");
        old.status = TaskStatus::Completed;
        old.completed_us = Some(1);
        store
            .write(vec![WriteOp::InsertTask {
                task: Box::new(old.clone()),
                instructions: "x".into(),
            }])
            .await
            .unwrap();
        store.settled().await.unwrap();
        let new = keyed("nightly");
        let prune = store.write(vec![WriteOp::Prune(Box::new(Prune {
            tasks: vec![old.id],
            workflows: vec![],
        }))]);
        let insert = store.write(vec![WriteOp::InsertTask {
            task: Box::new(new.clone()),
            instructions: "y".into(),
        }]);
        let (pruned, inserted) = tokio::join!(prune, insert);
        pruned.unwrap();
        assert_eq!(inserted.unwrap(), vec![OpOutcome::Done]);
        store.settled().await.unwrap();
        assert!(store.task(old.id).await.unwrap().is_none());
        assert!(store.task(new.id).await.unwrap().is_some());
        store.close();
        // Reopened (the journal was emptied by the fold): the key belongs to the new task.
        let store = Store::open(&path).unwrap();
        let again = keyed("nightly");
        let outcome = store
            .write(vec![WriteOp::InsertTask {
                task: Box::new(again),
                instructions: "z".into(),
            }])
            .await
            .unwrap();
        assert_eq!(outcome, vec![OpOutcome::Existing(new.id)]);
        store.close();
    }
}
