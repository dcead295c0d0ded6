//! The scheduler of a cluster node: what the service asks of it (submit, read, cancel, wait)
//! and the duties it starts (the lease, the leader's rescue, claiming and running tasks).
//!
//! Unlike the single engine's scheduler, it keeps no hot tasks in memory: every node reads and
//! changes the same rows, so a task submitted on one node is waited for on another and runs on
//! a third. What it keeps is what only this node knows: the attempts it runs now.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::attempts::{self, LogSink};
use super::changes::ChangePoller;
use super::handoffs::HandoffWatch;
use super::{rescuer, Lifeline};
use crate::agents::AgentRegistry;
use crate::model::Task;
use crate::notifier::Notifier;
use crate::runner::Runners;
use crate::scheduler::state::{RunHandle, STOP_CANCEL};
use crate::scheduler::{
    cancel_ended, cancel_in_workflow, not_found, unknown_ids, SchedError, Submitted,
};
use crate::store::feed::{Change, Feed, Following};
use crate::store::postgres::{Cancel, NewClusterTask, NodeInfo, Postgres, Refused};
use crate::store::stats::{AgentRecord, Stats, StatsSince, TaskQuery};
use crate::store::{OpOutcome, StoreError, TaskFilter};
use crate::workspace::Workspaces;

/// How a node runs.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub workers: usize,
    pub retry_backoff_base_ms: u64,
    /// How long the node stays alive to the others without a heartbeat.
    pub lease: Duration,
    /// How often a node with free workers looks for ready tasks when nothing woke it sooner.
    pub poll: Duration,
    /// Names the cluster to the processes it starts (`ORCHESTR8_TASK_DB`).
    pub instance: String,
    /// How long finished work is kept (`None`: for ever).
    pub retention: Option<Duration>,
}

pub(super) struct Inner {
    pub db: Postgres,
    pub me: NodeInfo,
    pub cfg: ClusterConfig,
    pub agents: AgentRegistry,
    pub runners: Runners,
    /// The worktrees of the isolated attempts this node runs.
    pub workspaces: Arc<Workspaces>,
    /// The attempts this node runs now, by task.
    pub running: Mutex<HashMap<Uuid, RunHandle>>,
    /// Wakes the claim loop: a task was submitted here or made ready on another node (their
    /// notifications), or a worker became free.
    pub wake: Arc<Notify>,
    /// Fired at shutdown: nothing new is claimed or accepted.
    pub stopping: CancellationToken,
    /// Fired when the cluster has given this node up: its attempts stop, unrecorded.
    pub given_up: CancellationToken,
    pub logs: LogSink,
    /// Told of every task this node saw end (its attempts, its cancels, its rescues).
    pub notifier: Arc<dyn Notifier>,
    /// What changed in the cluster, for the dashboard's live pages (fed by the
    /// [`ChangePoller`] while watched).
    pub feed: Feed,
}

impl Inner {
    pub fn running(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, RunHandle>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Cheap to clone; every clone drives the same node.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
    duties: Arc<Mutex<Option<Duties>>>,
}

struct Duties {
    lifeline: Lifeline,
    listener: JoinHandle<()>,
    warden: super::warden::Warden,
    claims: JoinHandle<()>,
    rescuer: JoinHandle<()>,
    rescuer_stop: CancellationToken,
    changes: ChangePoller,
    handoffs: HandoffWatch,
}

fn store(e: StoreError) -> SchedError {
    SchedError::Store(e)
}

impl Cluster {
    /// Joins the cluster as `me` and starts claiming and running tasks.
    pub async fn start(
        db: Postgres,
        me: NodeInfo,
        cfg: ClusterConfig,
        agents: AgentRegistry,
        runners: Runners,
        workspaces: Arc<Workspaces>,
        notifier: Arc<dyn Notifier>,
    ) -> Result<Cluster, StoreError> {
        // Worktrees an earlier engine on this path left go before any attempt starts here
        // (what they hold is kept as `refs/orchestr8/leftovers/…`); a worktree another node's
        // attempt already took over is gone by then.
        for line in workspaces.sweep().await {
            tracing::warn!("{line}");
        }
        // Before anything can run: without its warden a node killed with -9 would leave its
        // attempts running beside their next ones.
        let warden =
            super::warden::Warden::start(&me.node_id, super::lifeline::own_deadline(cfg.lease))
                .map_err(|e| {
                    StoreError::Unavailable(format!("cannot start the node's warden process: {e}"))
                })?;
        let lifeline =
            Lifeline::start_telling(db.clone(), me.clone(), cfg.lease, Box::new(warden.beats()))
                .await?;
        let inner = Arc::new(Inner {
            logs: LogSink::start(db.clone()),
            db: db.clone(),
            me: me.clone(),
            cfg: cfg.clone(),
            agents,
            runners,
            workspaces,
            running: Mutex::new(HashMap::new()),
            wake: Arc::new(Notify::new()),
            stopping: CancellationToken::new(),
            given_up: lifeline.given_up(),
            notifier: notifier.clone(),
            feed: Feed::default(),
        });
        let rescuer_stop = CancellationToken::new();
        let rescuer = tokio::spawn(rescuer::run(
            db,
            me.node_id.clone(),
            cfg.lease,
            notifier,
            rescuer_stop.clone(),
        ));
        let claims = tokio::spawn(attempts::claim_loop(inner.clone()));
        let changes = ChangePoller::start(inner.db.clone(), inner.feed.clone());
        let handoffs = HandoffWatch::start(inner.db.clone(), inner.notifier.clone());
        let listener = {
            let (db, wake, stop) = (inner.db.clone(), inner.wake.clone(), inner.stopping.clone());
            tokio::spawn(async move { db.wake_on_ready(wake, stop).await })
        };
        tracing::info!(node = %me.node_id, queues = %me.queues.join(","), "joined the cluster");
        Ok(Cluster {
            inner,
            duties: Arc::new(Mutex::new(Some(Duties {
                lifeline,
                listener,
                warden,
                claims,
                rescuer,
                rescuer_stop,
                changes,
                handoffs,
            }))),
        })
    }

    pub fn agents(&self) -> &AgentRegistry {
        &self.inner.agents
    }

    pub(super) fn db(&self) -> &Postgres {
        &self.inner.db
    }

    pub(super) fn notifier(&self) -> &dyn crate::notifier::Notifier {
        &*self.inner.notifier
    }

    /// Has the claim loop look now (tasks may be ready, or cancels asked).
    pub(super) fn wake_claims(&self) {
        self.inner.wake.notify_one();
    }

    pub(super) fn refuse_when_stopping(&self) -> Result<(), SchedError> {
        if self.inner.stopping.is_cancelled() {
            return Err(SchedError::ShuttingDown);
        }
        Ok(())
    }

    pub fn runners(&self) -> &Runners {
        &self.inner.runners
    }

    pub fn node(&self) -> &NodeInfo {
        &self.inner.me
    }

    pub fn instance(&self) -> &str {
        &self.inner.cfg.instance
    }

    pub fn workers(&self) -> usize {
        self.inner.cfg.workers
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.inner.db.ping().await
    }

    /// Fired once the cluster has given this node up.
    pub fn given_up(&self) -> CancellationToken {
        self.inner.given_up.clone()
    }

    /// Attempts running on this node.
    pub fn running_here(&self) -> usize {
        self.inner.running().len()
    }

    /// Accepts a new task: durable before this returns. Another task holding its idempotency
    /// key is answered instead.
    pub async fn submit(&self, new: NewClusterTask) -> Result<Submitted, SchedError> {
        if self.inner.stopping.is_cancelled() {
            return Err(SchedError::ShuttingDown);
        }
        self.check_dependencies(&new.task).await?;
        let outcome = self
            .inner
            .db
            .insert_tasks(std::slice::from_ref(&new))
            .await
            .map_err(|e| match e {
                // A dependency that failed between the check and the insert.
                StoreError::Conflict(m) => SchedError::Conflict(m),
                e => store(e),
            })?;
        let submitted = match outcome.first() {
            Some(OpOutcome::Existing(holder)) => {
                Submitted::Existing(self.task_or_not_found(*holder).await?)
            }
            _ => {
                crate::metrics::task_submitted(&new.task.agent_name);
                Submitted::Created(new.task)
            }
        };
        self.inner.wake.notify_one();
        Ok(submitted)
    }

    /// Refuses dependencies that do not exist or have already failed or been cancelled.
    async fn check_dependencies(&self, task: &Task) -> Result<(), SchedError> {
        if task.dependencies.is_empty() {
            return Ok(());
        }
        let found = self
            .inner
            .db
            .tasks(&task.dependencies)
            .await
            .map_err(store)?;
        crate::scheduler::check_dependencies(&task.dependencies, &found)
    }

    pub async fn task(&self, id: Uuid) -> Result<Option<Task>, SchedError> {
        Ok(self.inner.db.task(id).await.map_err(store)?.map(|(t, _)| t))
    }

    async fn task_or_not_found(&self, id: Uuid) -> Result<Task, SchedError> {
        self.task(id)
            .await?
            .ok_or_else(|| SchedError::NotFound(not_found(id)))
    }

    /// The host a task is bound to (`None`: any).
    pub async fn task_host(&self, id: Uuid) -> Result<Option<String>, SchedError> {
        self.inner.db.task_host(id).await.map_err(store)
    }

    /// The worktrees of this node's isolated attempts (and the way to any worktree of a task
    /// on this machine, for its diff).
    pub fn workspaces(&self) -> &Arc<Workspaces> {
        &self.inner.workspaces
    }

    pub async fn tasks(&self, ids: &[Uuid]) -> Result<Vec<Task>, SchedError> {
        self.inner.db.tasks(ids).await.map_err(store)
    }

    pub async fn list_tasks(&self, f: &TaskFilter) -> Result<(Vec<Task>, u64), SchedError> {
        self.inner.db.list_tasks(f).await.map_err(store)
    }

    /// Every delivery attempt for a task's or a workflow's webhook events, by any node.
    pub async fn webhook_history(
        &self,
        task_id: Option<Uuid>,
        workflow_id: Option<Uuid>,
    ) -> Result<Vec<crate::model::WebhookAttempt>, SchedError> {
        self.inner
            .db
            .webhook_history(task_id, workflow_id)
            .await
            .map_err(store)
    }

    /// Tasks of a project that ended after `after_us` (see `Postgres::ended_in_project`).
    pub async fn ended_in_project(
        &self,
        project: &str,
        after_us: i64,
        limit: u32,
    ) -> Result<(Vec<Task>, u64), SchedError> {
        self.inner
            .db
            .ended_in_project(project, after_us, limit)
            .await
            .map_err(store)
    }

    /// Removes, batch by batch, the cluster's finished work that ended more than `period` ago
    /// by the database's clock; says what went and that cutoff.
    pub async fn prune_older_than(
        &self,
        period: Duration,
    ) -> Result<(crate::store::prune::Pruned, i64), SchedError> {
        let mut total = crate::store::prune::Pruned::default();
        loop {
            let (batch, cutoff) = self
                .inner
                .db
                .prune_batch(period, crate::scheduler::PRUNE_BATCH)
                .await
                .map_err(store)?;
            total.add(batch);
            if (batch.tasks == 0 && batch.workflows == 0) || self.inner.stopping.is_cancelled() {
                return Ok((total, cutoff));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// How long finished work is kept (`None`: for ever).
    pub fn retention(&self) -> Option<Duration> {
        self.inner.cfg.retention
    }

    /// Webhook events the cluster still owes.
    pub async fn webhooks_owed(&self) -> Result<u64, SchedError> {
        self.inner.db.webhooks_owed().await.map_err(store)
    }

    /// What changes in the cluster from now on, whichever node changes it (read from the
    /// database every second while anybody watches).
    pub fn changes(&self) -> tokio::sync::broadcast::Receiver<Change> {
        self.inner.feed.subscribe()
    }

    /// The change feed carries `task`'s log lines too, while the answer lives.
    pub fn follow_lines(&self, task: Uuid) -> Following {
        self.inner.feed.follow_lines(task)
    }

    /// A task with its instructions.
    pub async fn task_with_instructions(
        &self,
        id: Uuid,
    ) -> Result<Option<(Task, String)>, SchedError> {
        self.inner.db.task_and_instructions(id).await.map_err(store)
    }

    /// The dashboard overview's aggregates (see `Postgres::stats`).
    pub async fn stats(&self, since: StatsSince, running: u32) -> Result<Stats, SchedError> {
        self.inner.db.stats(since, running).await.map_err(store)
    }

    pub async fn agent_records(&self, since_us: i64) -> Result<Vec<AgentRecord>, SchedError> {
        self.inner.db.agent_records(since_us).await.map_err(store)
    }

    /// The agents and projects that have tasks.
    pub async fn task_facets(&self) -> Result<(Vec<String>, Vec<String>), SchedError> {
        self.inner.db.task_facets().await.map_err(store)
    }

    /// A page of the task list by position (see `Postgres::task_page`).
    pub async fn task_page(&self, q: &TaskQuery) -> Result<(Vec<Task>, u64), SchedError> {
        self.inner.db.task_page(q).await.map_err(store)
    }

    pub async fn count_by_status(&self) -> Result<Vec<(String, u64)>, SchedError> {
        self.inner.db.count_by_status().await.map_err(store)
    }

    pub async fn logs(
        &self,
        id: Uuid,
        after: i64,
        limit: u32,
    ) -> Result<Vec<crate::model::LogLine>, SchedError> {
        self.inner.db.logs(id, after, limit).await.map_err(store)
    }

    pub async fn last_logs(
        &self,
        id: Uuid,
        n: u32,
    ) -> Result<Vec<crate::model::LogLine>, SchedError> {
        self.inner.db.last_logs(id, n).await.map_err(store)
    }

    /// Cancels a pending task at once, or has the node running it stop it, and waits (a
    /// while) until it has stopped.
    pub async fn cancel(&self, id: Uuid) -> Result<Task, SchedError> {
        let inner = &self.inner;
        if let Some(t) = self.task(id).await? {
            if let (Some(w), false) = (t.workflow_id, t.status.is_terminal()) {
                return Err(cancel_in_workflow(id, w));
            }
        }
        let mut tries = 0;
        let found = loop {
            match inner.db.cancel(id).await {
                Err(StoreError::Unavailable(why)) if tries < 3 => {
                    tries += 1;
                    tracing::debug!(task_id = %id, "cancel tried again: {why}");
                    tokio::time::sleep(Duration::from_millis(50 * tries)).await;
                }
                other => break other.map_err(store)?,
            }
        };
        match found {
            None => Err(SchedError::NotFound(not_found(id))),
            Some(Cancel::Cancelled(t)) => {
                crate::metrics::task_finished(&t);
                inner.notifier.task_finished(&t);
                Ok(t)
            }
            Some(Cancel::Ended(t)) => Err(cancel_ended(&t)),
            Some(Cancel::Asked { node }) => {
                // Running here: stopped at once. Elsewhere: its node sees the request at its
                // next look (within its poll period).
                if node.as_deref() == Some(inner.me.node_id.as_str()) {
                    if let Some(h) = inner.running().get(&id) {
                        h.stop(STOP_CANCEL);
                    }
                }
                let (tasks, _) = self.wait(vec![id], true, Duration::from_secs(30)).await?;
                tasks
                    .into_iter()
                    .next()
                    .ok_or_else(|| SchedError::NotFound(not_found(id)))
            }
        }
    }

    /// Puts a failed or cancelled task back to pending, with a fresh retry budget.
    pub async fn retry(&self, id: Uuid) -> Result<Task, SchedError> {
        if self.inner.stopping.is_cancelled() {
            return Err(SchedError::ShuttingDown);
        }
        match self.inner.db.retry(id).await.map_err(store)? {
            None => Err(SchedError::NotFound(not_found(id))),
            Some(Err(Refused(why))) => Err(SchedError::Conflict(why)),
            Some(Ok(t)) => {
                self.inner.wake.notify_one();
                Ok(t)
            }
        }
    }

    /// Waits for `any` or all of `ids` to finish, up to `timeout`, by looking at the database
    /// (every node's outcomes land there); returns the tasks in the order asked, duplicates
    /// removed, and whether the time ran out.
    pub async fn wait(
        &self,
        ids: Vec<Uuid>,
        any: bool,
        timeout: Duration,
    ) -> Result<(Vec<Task>, bool), SchedError> {
        let mut seen = std::collections::HashSet::new();
        let ids: Vec<Uuid> = ids.into_iter().filter(|id| seen.insert(*id)).collect();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pause = Duration::from_millis(20);
        loop {
            let found = self.tasks(&ids).await?;
            let missing: Vec<Uuid> = ids
                .iter()
                .filter(|id| !found.iter().any(|t| t.id == **id))
                .copied()
                .collect();
            if !missing.is_empty() {
                return Err(unknown_ids(&missing));
            }
            let ended = found.iter().filter(|t| t.status.is_terminal()).count();
            let done = ended == ids.len() || (any && ended > 0);
            let now = tokio::time::Instant::now();
            if done || now >= deadline {
                let mut by_id: HashMap<Uuid, Task> = found.into_iter().map(|t| (t.id, t)).collect();
                let tasks = ids.iter().filter_map(|id| by_id.remove(id)).collect();
                return Ok((tasks, !done));
            }
            // Quick at first (a short task is answered promptly), then easy on the database.
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }

    /// Whether this node is needed for the tasks: it runs attempts, or a pending task waits
    /// that it could run (perhaps only it: a task bound to this host). A database that does not
    /// answer counts as yes: better an engine up for nothing than a task nobody runs.
    pub async fn needed(&self) -> bool {
        if self.running_here() > 0 {
            return true;
        }
        let me = &self.inner.me;
        self.inner
            .db
            .work_waits_for(&me.host, &me.queues)
            .await
            .unwrap_or(true)
    }

    /// Whether this node has attempts under way.
    pub fn in_flight(&self) -> bool {
        self.running_here() > 0
    }

    /// Graceful shutdown, first step: nothing new is claimed; running attempts get `grace` to
    /// end, then are stopped and put back to pending without using up an attempt (any node
    /// may take them). The node is still a member until [`Leaving::leave`]: what it still has
    /// to finish under its lease (webhook sends) goes in between.
    pub async fn wind_down(&self, grace: Duration) -> Option<Leaving> {
        let inner = &self.inner;
        inner.stopping.cancel();
        inner.wake.notify_one();
        let duties = self.duties.lock().unwrap_or_else(|e| e.into_inner()).take();
        let d = duties?;
        // The claim loop first: a claim in flight brings its attempts in before they are
        // counted. A duty stuck on an unanswering database is not waited for long.
        finish_duty("the claim loop", d.claims).await;
        d.rescuer_stop.cancel();
        finish_duty("the rescuer", d.rescuer).await;
        finish_duty("the listener", d.listener).await;
        let _ = tokio::time::timeout(DUTY_STOP, d.changes.stop()).await;
        let _ = tokio::time::timeout(DUTY_STOP, d.handoffs.stop()).await;
        crate::scheduler::stop_after_grace(
            grace,
            || self.in_flight(),
            || inner.running().values().cloned().collect(),
            "another node (or the next start) runs them again",
        )
        .await;
        let _ = tokio::time::timeout(DUTY_STOP, inner.logs.flush()).await;
        Some(Leaving {
            node_id: inner.me.node_id.clone(),
            warden: d.warden,
            lifeline: d.lifeline,
        })
    }
}

/// A node that has wound down and has yet to leave the cluster.
pub struct Leaving {
    node_id: String,
    warden: super::warden::Warden,
    lifeline: Lifeline,
}

impl Leaving {
    /// Graceful shutdown, last step: the node's warden lets go and the node leaves the cluster
    /// (its lease ends now, its leadership and unattempted webhook claims are let go).
    pub async fn leave(self) {
        self.warden.release().await;
        if tokio::time::timeout(DUTY_STOP, self.lifeline.leave())
            .await
            .is_err()
        {
            tracing::warn!("could not leave the cluster in time; the node's lease will expire");
        }
        tracing::info!(node = %self.node_id, "left the cluster");
    }
}

/// How long a stopping node waits for each of its background duties.
const DUTY_STOP: Duration = Duration::from_secs(5);

/// Waits a while for a duty that was told to stop, then drops it.
async fn finish_duty(what: &str, mut duty: JoinHandle<()>) {
    if tokio::time::timeout(DUTY_STOP, &mut duty).await.is_err() {
        tracing::warn!("{what} did not stop within {DUTY_STOP:?}; dropping it");
        duty.abort();
    }
}
