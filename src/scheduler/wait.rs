//! `task_wait`: block until any or all of a set of tasks have finished, without polling.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use super::state::Wait;
use super::{Inner, SchedError};
use crate::model::Task;

pub(super) async fn wait(
    inner: &Arc<Inner>,
    ids: Vec<Uuid>,
    any: bool,
    timeout: Duration,
) -> Result<(Vec<Task>, bool), SchedError> {
    let mut seen = HashSet::new();
    let ids: Vec<Uuid> = ids.into_iter().filter(|id| seen.insert(*id)).collect();
    // Subscribe before looking, so that no finish between the look and the wait is missed.
    let mut events = inner.terminal.subscribe();
    let (mut open, cold): (HashSet<Uuid>, Vec<Uuid>) = {
        let st = inner.lock();
        let open = ids
            .iter()
            .filter(|id| {
                st.hot
                    .get(id)
                    .is_some_and(|h| !matches!(h.wait, Wait::Reserved))
            })
            .copied()
            .collect::<HashSet<_>>();
        let cold = ids
            .iter()
            .filter(|id| !open.contains(id))
            .copied()
            .collect();
        (open, cold)
    };
    if !cold.is_empty() {
        let found: HashSet<Uuid> = inner
            .store
            .tasks(cold.clone())
            .await?
            .iter()
            .map(|t| t.id)
            .collect();
        let missing: Vec<Uuid> = cold
            .iter()
            .filter(|id| !found.contains(id))
            .copied()
            .collect();
        if !missing.is_empty() {
            return Err(super::unknown_ids(&missing));
        }
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let mut timed_out = false;
    loop {
        let finished = ids.len() - open.len();
        if open.is_empty() || (any && finished > 0) {
            break;
        }
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(id)) => {
                open.remove(&id);
            }
            Ok(Err(RecvError::Lagged(_))) => {
                let st = inner.lock();
                open.retain(|id| st.hot.contains_key(id));
            }
            Ok(Err(RecvError::Closed)) => break,
            Err(_) => {
                timed_out = true;
                break;
            }
        }
    }
    // Hot tasks from memory, the rest from the store, in the order asked.
    let mut tasks: Vec<Option<Task>> = {
        let st = inner.lock();
        ids.iter()
            .map(|id| st.hot.get(id).map(|h| h.task.clone()))
            .collect()
    };
    let need: Vec<Uuid> = ids
        .iter()
        .zip(&tasks)
        .filter(|(_, t)| t.is_none())
        .map(|(id, _)| *id)
        .collect();
    if !need.is_empty() {
        let mut stored: std::collections::HashMap<Uuid, Task> = inner
            .store
            .tasks(need)
            .await?
            .into_iter()
            .map(|t| (t.id, t))
            .collect();
        for (id, slot) in ids.iter().zip(tasks.iter_mut()) {
            if slot.is_none() {
                *slot = stored.remove(id);
            }
        }
    }
    Ok((tasks.into_iter().flatten().collect(), timed_out))
}
