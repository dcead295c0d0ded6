//! The folder: applies journaled writes to DuckDB in bulk, off every caller's path.
//!
//! DuckDB charges per statement and per transaction far more than per row (a one-row insert
//! commits in ~3 ms, 500 staged updates in ~8 ms), so the folder waits a little
//! ([`FOLD_DELAY`]) to gather many journal records, merges them — a task inserted and updated
//! within one fold is inserted once in its final state — and writes them with a fixed number of
//! statements: one appender for new tasks, one staged `UPDATE ... FROM` for changed ones, one
//! appender for log lines. `journal_state.folded_seq` moves in the same transaction.
//!
//! Records reach it through a [`Handoff`](super::handoff::Handoff) that wakes it only when a
//! fold is due; a reader that needs the tables current asks for one at once (`urge`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use duckdb::Connection;
use uuid::Uuid;

use super::handoff::Taken;
use super::journal::Journal;
use super::unfolded::Unfolded;
use super::writer::Records;
use super::{prune, rows, webhooks, workflows, StoreError, WriteOp};
use crate::model::{now_us, NewLogLine, Task};

/// How long journaled writes may wait to be folded when nobody reads.
pub const FOLD_DELAY: Duration = Duration::from_millis(100);

/// Fold at once when this many records are waiting.
pub const FOLD_RECORDS: usize = 4096;

/// Applies `records` (in journal order) in one transaction, with `folded_seq` set to the last.
pub fn commit(conn: &Connection, records: &[(u64, Vec<WriteOp>)]) -> Result<(), StoreError> {
    let Some(upto) = records.last().map(|r| r.0) else {
        return Ok(());
    };
    conn.execute_batch("BEGIN TRANSACTION")?;
    let res = (|| {
        // Records the tables already hold are skipped: `tasks` has no key that would refuse a
        // task inserted twice, so a record is applied once whoever hands it over again.
        let folded: i64 = conn
            .prepare_cached("SELECT max(folded_seq) FROM journal_state")?
            .query_row([], |r| r.get(0))?;
        let fresh = records
            .iter()
            .position(|r| r.0 as i64 > folded)
            .unwrap_or(records.len());
        if fresh > 0 {
            tracing::warn!("{fresh} journal records were folded already (up to {folded}); skipped");
        }
        let records = &records[fresh..];
        if records.is_empty() {
            return Ok(());
        }
        let now = now_us();
        let mut inserts: Vec<(&Task, &str)> = Vec::new();
        let mut inserted: HashMap<Uuid, usize> = HashMap::new();
        let mut updates: Vec<&Task> = Vec::new();
        let mut updated: HashMap<Uuid, usize> = HashMap::new();
        let mut logs: Vec<&NewLogLine> = Vec::new();
        // Removals first: a prune frees idempotency keys that a later insert of this same fold
        // may take again (the key is free for writers once the prune is journaled). Only
        // finished work is pruned, so nothing else in the fold depends on its rows.
        for op in records.iter().flat_map(|r| r.1.iter()) {
            if let WriteOp::Prune(p) = op {
                prune::apply(conn, p)?;
            }
        }
        for op in records.iter().flat_map(|r| r.1.iter()) {
            match op {
                WriteOp::InsertTask { task, instructions } => {
                    inserted.insert(task.id, inserts.len());
                    inserts.push((task, instructions));
                }
                // An update carries the task's whole mutable state, so the last one wins, and a
                // task inserted in this fold is inserted as it is now.
                WriteOp::UpdateTask(task) => match inserted.get(&task.id) {
                    Some(&i) => inserts[i].0 = task,
                    None => match updated.get(&task.id) {
                        Some(&i) => updates[i] = task,
                        None => {
                            updated.insert(task.id, updates.len());
                            updates.push(task);
                        }
                    },
                },
                WriteOp::AppendLogs(lines) => logs.extend(lines.iter()),
                // Workflow and webhook rows are few and written one statement each, in order.
                WriteOp::InsertWorkflow(w) => workflows::insert_workflow(conn, w, now)?,
                WriteOp::UpdateWorkflow(w) => workflows::update_workflow(conn, w, now)?,
                WriteOp::UpsertPhase(p) => workflows::upsert_phase(conn, p)?,
                WriteOp::InsertWebhookEvent(e) => webhooks::insert_event(conn, e, now)?,
                WriteOp::RecordWebhookAttempt(r) => {
                    webhooks::record_attempt(conn, &r.0, &r.1, now)?
                }
                WriteOp::Prune(_) => {}
            }
        }
        let t0 = Instant::now();
        if !inserts.is_empty() {
            rows::insert_tasks(conn, &inserts, now)?;
        }
        let t1 = Instant::now();
        if !updates.is_empty() {
            // The writer was answered long ago; a change to a task with no row (none is known
            // to happen) must not hold back every later write, so it is reported, not failed.
            let missing = rows::update_tasks(conn, &updates, now)?;
            if missing > 0 {
                tracing::warn!("{missing} journaled task updates had no task row; ignored");
            }
        }
        let t2 = Instant::now();
        if !logs.is_empty() {
            rows::append_logs(conn, &logs)?;
        }
        conn.prepare_cached("UPDATE journal_state SET folded_seq = ?")?
            .execute([upto as i64])?;
        tracing::trace!(
            records = records.len(),
            inserts = inserts.len(),
            insert_us = (t1 - t0).as_micros() as u64,
            updates = updates.len(),
            update_us = (t2 - t1).as_micros() as u64,
            logs = logs.len(),
            "fold parts"
        );
        Ok(())
    })();
    match res {
        Ok(()) => conn.execute_batch("COMMIT").map_err(|e| {
            // A commit that failed leaves nothing half done; make sure no transaction is left
            // open for the next try (an error here only says there is none).
            let _ = conn.execute_batch("ROLLBACK");
            StoreError::from(e)
        }),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// The folder thread's loop: gather, fold, empty the journal whenever everything appended is
/// folded, publish.
///
/// A fold that fails is never skipped: its writes were answered. Everything stays in the journal
/// and in memory, new writes are refused with the reason (so the tables fall no further behind),
/// reads go on from the tables as they are, and the fold is tried again with a growing pause;
/// once it succeeds, all is as if nothing happened. The causes are outside (disk full,
/// permissions); a replay at the next start would meet them too.
pub fn folder_loop(
    conn: Connection,
    records: Arc<Records>,
    unfolded: Arc<Unfolded>,
    journal: Arc<Mutex<Journal>>,
    budget: Arc<super::memory::Budget>,
) {
    // However this thread ends (a panic included), nobody waits for it forever.
    struct Gone(Arc<Unfolded>);
    impl Drop for Gone {
        fn drop(&mut self) {
            self.0.folder_gone();
        }
    }
    let _gone = Gone(unfolded.clone());
    let mut pending: Vec<(u64, Vec<WriteOp>)> = Vec::new();
    let mut retry: Option<(Instant, Duration)> = None;
    let mut room_checked = Instant::now();
    loop {
        // Due: FOLD_DELAY after the oldest record, at once when a reader asks or FOLD_RECORDS
        // have gathered; after a failure, at the retry's time whatever happens.
        let Taken { items, closed } = records.take(usize::MAX, retry.map(|(at, _)| at));
        let stop = closed;
        pending.extend(items);
        if !pending.is_empty() {
            let started = Instant::now();
            match budget.retrying(&conn, || commit(&conn, &pending)) {
                Ok(()) => {
                    tracing::trace!(
                        records = pending.len(),
                        took_us = started.elapsed().as_micros() as u64,
                        "fold"
                    );
                    if retry.take().is_some() {
                        tracing::info!("the database accepts writes again; journal folded");
                    }
                    let upto = pending.last().map_or(0, |r| r.0);
                    pending.clear();
                    // Emptied before anyone is released, so that a writer waiting for the fold
                    // (the journal was too long) finds it empty.
                    {
                        let mut j = journal.lock().unwrap_or_else(|p| p.into_inner());
                        if j.last_seq <= upto {
                            if let Err(e) = j.truncate() {
                                tracing::error!("cannot empty the journal: {e}");
                            }
                        }
                    }
                    unfolded.folded(upto);
                    if room_checked.elapsed() >= Duration::from_secs(1) {
                        room_checked = Instant::now();
                        budget.keep_room(&conn);
                    }
                }
                Err(e) if stop => {
                    // Closing: the journal keeps the writes; the next start replays them.
                    tracing::error!(
                        "cannot apply {} journal records to the database ({e}); they stay in the journal for the next start",
                        pending.len()
                    );
                    break;
                }
                Err(e) => {
                    let pause = retry.map_or(Duration::from_millis(250), |(_, p)| {
                        (p * 2).min(Duration::from_secs(5))
                    });
                    tracing::error!(
                        "cannot apply {} journal records to the database ({e}); they are kept in the journal, retrying in {pause:?}",
                        pending.len()
                    );
                    unfolded.failing(format!(
                        "the database cannot be written ({e}); nothing new is accepted until it can be (free some space if its disk is full); every write answered before is kept in the journal and applied then"
                    ));
                    retry = Some((Instant::now() + pause, pause));
                }
            }
        }
        if stop {
            break;
        }
    }
    tracing::debug!("store folder stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Task;

    fn insert(t: &Task) -> Vec<WriteOp> {
        vec![WriteOp::InsertTask {
            task: Box::new(t.clone()),
            instructions: "x".into(),
        }]
    }

    #[test]
    fn records_already_folded_are_not_applied_twice() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("o8.duckdb")).unwrap();
        super::super::schema::apply(&conn).unwrap();
        let (a, b) = (Task::sample_for_tests(), Task::sample_for_tests());
        commit(&conn, &[(1, insert(&a))]).unwrap();
        // Handed over again together with a new one: only the new one is applied.
        commit(&conn, &[(1, insert(&a)), (2, insert(&b))]).unwrap();
        commit(&conn, &[(2, insert(&b))]).unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM tasks", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2);
        let folded: i64 = conn
            .query_row("SELECT max(folded_seq) FROM journal_state", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(folded, 2);
    }
}
