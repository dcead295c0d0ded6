//! What is journaled but not yet folded into DuckDB, and the barrier that lets reads see it.
//!
//! A write is answered once it is in the journal; the folder applies it to the tables a little
//! later. Reads stay exact in two ways:
//! - a read by task id looks here first (the task's latest journaled state), and a task found
//!   nowhere here has every change folded, so DuckDB alone answers it;
//! - every other read first waits until the folder has caught up with everything answered so far
//!   (`wait_folded`), asking it to fold at once rather than at its next tick.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use uuid::Uuid;

use crate::model::Task;

/// See [`Unfolded::lookup`].
pub enum Overlaid {
    Task(Box<Task>),
    Pruned,
    Folded,
}

#[derive(Default)]
struct Overlay {
    /// Latest journaled state of each task with unfolded changes, and the seq of that change.
    tasks: HashMap<Uuid, (Task, u64)>,
    /// Idempotency keys of unfolded inserts.
    keys: HashMap<String, (Uuid, u64)>,
    /// Tasks removed by an unfolded prune: gone for every read, and their keys free.
    pruned: HashMap<Uuid, u64>,
}

pub struct Unfolded {
    /// Highest sequence number answered to a writer.
    journaled: AtomicU64,
    /// Highest sequence number folded (`u64::MAX` once the folder has gone, so no reader waits
    /// forever).
    folded: Mutex<u64>,
    folded_cv: Condvar,
    overlay: Mutex<Overlay>,
    /// The folder's records, to ask it for a fold at once.
    records: Arc<super::writer::Records>,
    /// Why the last fold failed, until one succeeds.
    failing: Mutex<Option<String>>,
    gone: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking holder cannot leave these maps half-updated in a way later readers would
    // misread (each update is one insert or remove), so poisoning is ignored.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Unfolded {
    pub fn new(folded: u64, records: Arc<super::writer::Records>) -> Unfolded {
        Unfolded {
            journaled: AtomicU64::new(folded),
            folded: Mutex::new(folded),
            folded_cv: Condvar::new(),
            overlay: Mutex::new(Overlay::default()),
            records,
            failing: Mutex::new(None),
            gone: AtomicBool::new(false),
        }
    }

    /// Records a journaled task state (before its writer is answered).
    pub fn put_task(&self, task: &Task, seq: u64) {
        lock(&self.overlay)
            .tasks
            .insert(task.id, (task.clone(), seq));
    }

    pub fn put_key(&self, key: &str, id: Uuid, seq: u64) {
        lock(&self.overlay).keys.insert(key.to_string(), (id, seq));
    }

    pub fn key_owner(&self, key: &str) -> Option<Uuid> {
        lock(&self.overlay).keys.get(key).map(|(id, _)| *id)
    }

    /// What the overlay knows of a task, in one look: its latest unfolded state, that an
    /// unfolded prune removed it, or nothing (the tables answer).
    pub fn lookup(&self, id: Uuid) -> Overlaid {
        let o = lock(&self.overlay);
        match o.tasks.get(&id) {
            Some((t, _)) => Overlaid::Task(Box::new(t.clone())),
            None if o.pruned.contains_key(&id) => Overlaid::Pruned,
            None => Overlaid::Folded,
        }
    }

    /// Records the tasks a journaled prune removes (before its writer is answered).
    pub fn put_pruned(&self, ids: &[Uuid], seq: u64) {
        let mut o = lock(&self.overlay);
        for id in ids {
            o.tasks.remove(id);
            o.pruned.insert(*id, seq);
        }
    }

    /// Whether a task was removed by a prune not yet folded (its row is still in the tables).
    pub fn is_pruned(&self, id: Uuid) -> bool {
        lock(&self.overlay).pruned.contains_key(&id)
    }

    /// Marks everything up to `seq` as answered to writers.
    pub fn journaled(&self, seq: u64) {
        self.journaled.store(seq, Ordering::Release);
    }

    /// Called by the folder after a commit that folded everything up to `seq`.
    pub fn folded(&self, seq: u64) {
        {
            let mut o = lock(&self.overlay);
            o.tasks.retain(|_, (_, s)| *s > seq);
            o.keys.retain(|_, (_, s)| *s > seq);
            o.pruned.retain(|_, s| *s > seq);
        }
        lock(&self.failing).take();
        *lock(&self.folded) = seq;
        self.folded_cv.notify_all();
    }

    /// Called by the folder when a fold failed (it will try again): readers get `why` instead of
    /// waiting.
    pub fn failing(&self, why: String) {
        *lock(&self.failing) = Some(why);
        let _guard = lock(&self.folded);
        self.folded_cv.notify_all();
    }

    /// Whether writes can still be accepted: the folder runs (a write it would never fold could
    /// not be read back).
    pub fn accepting(&self) -> Result<(), String> {
        if self.gone.load(Ordering::Acquire) {
            return Err(
                "the store is closing or its folder has stopped; restart the server".into(),
            );
        }
        // Nor while the tables cannot be written: what is accepted could not be read back.
        if let Some(why) = lock(&self.failing).clone() {
            return Err(why);
        }
        Ok(())
    }

    /// The folder has stopped: release every waiter.
    pub fn folder_gone(&self) {
        self.gone.store(true, Ordering::Release);
        *lock(&self.folded) = u64::MAX;
        self.folded_cv.notify_all();
    }

    /// Blocks until every write answered before this call is folded, or says why it cannot be.
    pub fn wait_folded(&self) -> Result<(), String> {
        let target = self.journaled.load(Ordering::Acquire);
        let mut folded = lock(&self.folded);
        if *folded >= target {
            return Ok(());
        }
        self.records.urge();
        while *folded < target {
            if let Some(why) = lock(&self.failing).clone() {
                return Err(why);
            }
            folded = self
                .folded_cv
                .wait(folded)
                .unwrap_or_else(|p| p.into_inner());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_journaled_prune_hides_its_tasks_until_it_is_folded() {
        let records = Arc::new(super::super::handoff::Handoff::new(
            std::time::Duration::from_millis(100),
            10,
        ));
        let u = Unfolded::new(0, records);
        let t = Task::sample_for_tests();
        u.put_task(&t, 1);
        u.put_pruned(&[t.id], 2);
        assert!(
            matches!(u.lookup(t.id), Overlaid::Pruned),
            "a pruned task is not served from the overlay"
        );
        assert!(u.is_pruned(t.id));
        u.folded(1);
        assert!(
            u.is_pruned(t.id),
            "still pruned until the prune itself is folded"
        );
        u.folded(2);
        assert!(!u.is_pruned(t.id), "folded: the tables no longer have it");
    }
}
