//! The journal thread: the one place writes are accepted.
//!
//! It drains whatever requests have queued up (group commit), decides what only it can decide
//! (whether an idempotency key is taken), appends one journal record per request, waits for one
//! `fdatasync` for the whole group, publishes the new states to [`Unfolded`], hands the records
//! to the folder, and only then answers. So an answer means durable, and visible to every read.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use duckdb::Connection;
use uuid::Uuid;

use super::handoff::{Handoff, Taken};
use super::journal::{self, Journal};
use super::unfolded::Unfolded;
use super::{rows, OpOutcome, StoreError, WriteOp, WriteRequest};

/// Most requests journaled in one group.
pub const MAX_GROUP: usize = 1024;

/// How long a deferred write (log lines, which nobody waits for) may wait for an answered one
/// to travel with: it costs no wake-up of its own then, and no record write of its own.
pub const DEFERRED_DELAY: Duration = Duration::from_millis(20);

/// Journaled records on their way to the folder, in journal order.
pub type Records = Handoff<(u64, Vec<WriteOp>)>;

pub struct JournalThread {
    /// Past this size the journal thread waits for the folder to catch up, which lets it empty
    /// the file; bounds both the file and the replay after a crash.
    pub max_bytes: u64,
    /// A reader connection, for idempotency keys already folded.
    pub conn: Connection,
    pub requests: Arc<Handoff<WriteRequest>>,
    pub journal: Arc<Mutex<Journal>>,
    pub unfolded: Arc<Unfolded>,
    pub records: Arc<Records>,
    pub next_seq: u64,
    pub feed: super::feed::Feed,
    pub budget: Arc<super::memory::Budget>,
}

/// Answers a whole group with an error; nothing of it is written.
fn refuse(replies: impl IntoIterator<Item = super::Reply>, why: &str) {
    tracing::error!("write refused: {why}");
    for reply in replies {
        let _ = reply.send(Err(StoreError::Unavailable(format!(
            "nothing was written: {why}"
        ))));
    }
}

/// Closes the requests and drops what is left of them: their writers are answered `Closed`.
struct RefuseRest(Arc<Handoff<WriteRequest>>);

impl Drop for RefuseRest {
    fn drop(&mut self) {
        self.0.close();
        drop(self.0.take(usize::MAX, None));
    }
}

struct StopFolder(Arc<Records>);

impl Drop for StopFolder {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// One request's record, once its outcomes are decided.
struct Decided {
    seq: Option<u64>,
    ops: Vec<WriteOp>,
    /// An error means nothing of the request is written.
    outcomes: Result<Vec<OpOutcome>, String>,
}

impl JournalThread {
    pub fn run(mut self) {
        // However this thread ends (a panic included), the folder is told to finish, and no
        // writer waits for an answer that will not come.
        let _stop = StopFolder(self.records.clone());
        let _refuse = RefuseRest(self.requests.clone());
        let mut buf = Vec::new();
        loop {
            let Taken {
                items: group,
                closed,
            } = self.requests.take(MAX_GROUP, None);
            if !group.is_empty() {
                self.accept(group, &mut buf);
            }
            if closed {
                break;
            }
        }
        tracing::debug!("store journal stopped");
    }

    /// Journals one group, unless the journal is full and cannot be emptied, or the tables
    /// cannot be written.
    fn accept(&mut self, group: Vec<WriteRequest>, buf: &mut Vec<u8>) {
        let bytes = self.lock_journal().bytes();
        let accepting = self.unfolded.accepting().and_then(|()| {
            if bytes > self.max_bytes {
                tracing::debug!(
                    bytes,
                    bound = self.max_bytes,
                    "the journal reached its bound; writes wait for the fold"
                );
                self.unfolded.wait_folded()
            } else {
                Ok(())
            }
        });
        match accepting {
            Ok(()) => self.journal_group(group, buf),
            Err(why) => refuse(group.into_iter().filter_map(|r| r.reply), &why),
        }
    }

    fn lock_journal(&self) -> std::sync::MutexGuard<'_, Journal> {
        self.journal.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn journal_group(&mut self, group: Vec<WriteRequest>, buf: &mut Vec<u8>) {
        buf.clear();
        let first_seq = self.next_seq;
        let mut keys: HashMap<String, Uuid> = HashMap::new();
        // Tasks pruned earlier in this group: their keys are free for later requests.
        let mut freed: HashSet<Uuid> = HashSet::new();
        let mut decided = Vec::with_capacity(group.len());
        let mut replies = Vec::with_capacity(group.len());
        for req in group {
            replies.push(req.reply);
            let d = self.decide(req.ops, &mut keys, &mut freed, buf);
            decided.push(d);
        }
        let Some(last) = decided.iter().rev().find_map(|d| d.seq) else {
            // Nothing to write (every insert was an existing key, or encoding failed).
            return answer(replies, decided);
        };
        // A group of deferred writes only (log lines, which nobody waits for) is not synced on
        // its own: the next answered write's sync covers it, as the old group commit did.
        let sync = replies.iter().any(Option::is_some);
        let written = {
            let mut journal = self.lock_journal();
            journal
                .append(buf, last, sync)
                .map_err(|e| journal.describe(&e))
        };
        if let Err(why) = written {
            self.next_seq = first_seq;
            return refuse(replies.into_iter().flatten(), &why);
        }
        let watched = self.feed.watched();
        let mut published = Vec::new();
        let mut records = Vec::with_capacity(decided.len());
        for d in &mut decided {
            let Some(seq) = d.seq else { continue };
            for op in &d.ops {
                match op {
                    WriteOp::InsertTask { task, .. } => {
                        if let Some(k) = &task.idempotency_key {
                            self.unfolded.put_key(k, task.id, seq);
                        }
                        self.unfolded.put_task(task, seq);
                    }
                    WriteOp::UpdateTask(task) => self.unfolded.put_task(task, seq),
                    WriteOp::Prune(p) => self.unfolded.put_pruned(&p.tasks, seq),
                    _ => {}
                }
            }
            if watched {
                published.extend(d.ops.iter().flat_map(|op| self.feed.changes_of(op)));
            }
            records.push((seq, std::mem::take(&mut d.ops)));
        }
        // Nobody waits for the fold: reads by id find these states in `unfolded`, and any
        // other read asks the folder to hurry.
        self.records.push(records, false);
        self.unfolded.journaled(last);
        answer(replies, decided);
        // After the answers: whoever reads on an event sees the change.
        self.feed.publish(published);
    }

    /// Decides each op's outcome, drops inserts whose key is taken, and encodes the rest.
    fn decide(
        &mut self,
        ops: Vec<WriteOp>,
        keys: &mut HashMap<String, Uuid>,
        freed: &mut HashSet<Uuid>,
        buf: &mut Vec<u8>,
    ) -> Decided {
        let mut kept = Vec::with_capacity(ops.len());
        let mut outcomes = Vec::with_capacity(ops.len());
        let mut new_keys = Vec::new();
        // Inserts refused for their key in this write, with the tasks that own those keys.
        let mut refused: Vec<(Uuid, Uuid)> = Vec::new();
        for op in ops {
            let owner = match &op {
                WriteOp::UpdateTask(task) => refused
                    .iter()
                    .find(|(id, _)| *id == task.id)
                    .map(|(_, owner)| *owner),
                WriteOp::InsertTask { task, .. } => match task.idempotency_key.as_deref() {
                    Some(key) => match self.key_owner(key, keys, &new_keys, freed) {
                        Ok(owner) => {
                            if owner.is_none() {
                                new_keys.push((key.to_string(), task.id));
                            }
                            owner
                        }
                        Err(e) => return failed(e),
                    },
                    None => None,
                },
                _ => None,
            };
            match owner {
                Some(existing) => {
                    if let WriteOp::InsertTask { task, .. } = &op {
                        refused.push((task.id, existing));
                    }
                    outcomes.push(OpOutcome::Existing(existing))
                }
                None => {
                    outcomes.push(OpOutcome::Done);
                    kept.push(op);
                }
            }
        }
        if kept.is_empty() {
            return Decided {
                seq: None,
                ops: kept,
                outcomes: Ok(outcomes),
            };
        }
        let seq = self.next_seq;
        if let Err(e) = journal::encode(seq, &kept, buf) {
            return failed(StoreError::Corrupt(format!("cannot encode: {e}")));
        }
        self.next_seq += 1;
        keys.extend(new_keys);
        for op in &kept {
            if let WriteOp::Prune(p) = op {
                freed.extend(p.tasks.iter().copied());
            }
        }
        Decided {
            seq: Some(seq),
            ops: kept,
            outcomes: Ok(outcomes),
        }
    }

    fn key_owner(
        &self,
        key: &str,
        group: &HashMap<String, Uuid>,
        request: &[(String, Uuid)],
        freed: &HashSet<Uuid>,
    ) -> Result<Option<Uuid>, StoreError> {
        if let Some(id) = group
            .get(key)
            .or_else(|| request.iter().find(|(k, _)| k == key).map(|(_, id)| id))
        {
            return Ok(Some(*id));
        }
        if let Some(id) = self.unfolded.key_owner(key) {
            return Ok(Some(id));
        }
        // Not journaled since the last fold, so either folded or free. The lookup comes after
        // the overlay check: a key leaves the overlay only once its fold has committed. A key
        // whose task a prune has just removed is free already.
        let owner = self
            .budget
            .retrying(&self.conn, || rows::idempotency_owner(&self.conn, key))?;
        Ok(owner.filter(|id| !self.unfolded.is_pruned(*id) && !freed.contains(id)))
    }
}

/// A request that cannot be journaled: its outcome is the error, and nothing of it is written.
fn failed(e: StoreError) -> Decided {
    Decided {
        seq: None,
        ops: Vec::new(),
        outcomes: Err(e.to_string()),
    }
}

fn answer(replies: Vec<Option<super::Reply>>, decided: Vec<Decided>) {
    for (reply, d) in replies.into_iter().zip(decided) {
        let Some(reply) = reply else { continue };
        let _ = reply.send(d.outcomes.map_err(StoreError::Unavailable));
    }
}

#[cfg(test)]
mod tests {
    use crate::model::{Task, TaskStatus};
    use crate::store::{OpOutcome, Store, WriteOp};

    /// A task inserted with its start in one write: when its key belongs to another task, the
    /// start goes with the refused insert, so no change is recorded for a task that is not there.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_start_written_with_a_refused_insert_is_dropped_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("o8.duckdb")).unwrap();
        let mut first = Task::sample_for_tests();
        first.idempotency_key = Some("deploy".into());
        let mut second = Task::sample_for_tests();
        second.idempotency_key = Some("deploy".into());
        let with_start = |t: &Task| {
            let mut running = t.clone();
            running.status = TaskStatus::Running;
            running.attempt = 1;
            vec![
                WriteOp::InsertTask {
                    task: Box::new(t.clone()),
                    instructions: "x".into(),
                },
                WriteOp::UpdateTask(Box::new(running)),
            ]
        };
        let done = store.write(with_start(&first)).await.unwrap();
        assert_eq!(done, vec![OpOutcome::Done, OpOutcome::Done]);
        let refused = store.write(with_start(&second)).await.unwrap();
        assert_eq!(
            refused,
            vec![OpOutcome::Existing(first.id), OpOutcome::Existing(first.id)]
        );
        assert!(store.task(second.id).await.unwrap().is_none());
        store.settled().await.unwrap();
        assert!(store.task(second.id).await.unwrap().is_none());
        let kept = store.task(first.id).await.unwrap().unwrap();
        assert_eq!((kept.status, kept.attempt), (TaskStatus::Running, 1));
        // Inserted and started in one fold: counted once, as running.
        assert_eq!(
            store.count_by_status().await.unwrap(),
            vec![("running".to_string(), 1)]
        );
        store.close();
    }
}
