//! The engine at a glance, for the CLI's `status`.

use super::{Core, Result, Service, ServiceError};
use crate::api::{EngineOverview, ListTasksArgs};
use crate::model::TaskStatus;

impl Service {
    pub async fn overview(&self) -> Result<EngineOverview> {
        let mut counts: std::collections::BTreeMap<String, u64> = [
            TaskStatus::Pending,
            TaskStatus::Running,
            TaskStatus::Completed,
            TaskStatus::Failed,
            TaskStatus::Cancelled,
        ]
        .iter()
        .map(|s| (s.as_str().to_string(), 0))
        .collect();
        // A cluster node shows the cluster's tasks and its own workers.
        let (found, instance, workers, webhooks_owed) = match &self.core {
            Core::Local(s) => (
                s.store().count_by_status().await?,
                s.instance().to_string(),
                s.workers(),
                s.store().webhooks_owed().await?,
            ),
            Core::Cluster(c) => (
                c.count_by_status().await?,
                c.instance().to_string(),
                c.workers(),
                c.webhooks_owed().await?,
            ),
        };
        counts.extend(found);
        let mut running = self
            .list_tasks(ListTasksArgs {
                status: Some("running".into()),
                agent_name: None,
                workflow_id: None,
                limit: Some(1000),
                offset: None,
            })
            .await?
            .tasks;
        running.sort_by(|a, b| a.started_at.cmp(&b.started_at));
        let (_, busy) = self.hot_counts();
        Ok(EngineOverview {
            pid: std::process::id(),
            db_path: instance,
            dispatching: true,
            counts,
            workers,
            workers_busy: busy,
            webhooks_owed,
            running,
            version: crate::link::version().to_string(),
            sessions: 0,
            settings_differ: Vec::new(),
            retiring: false,
        })
    }
}

impl Service {
    /// Removes the finished work that ended more than `older_than` ago (a period such as `30d`;
    /// default: the retention setting) now, and says what went.
    pub async fn prune(&self, older_than: Option<&str>) -> Result<crate::api::PruneReport> {
        let period = match older_than {
            Some(text) => crate::engine::pruner::parse_period(text)
                .map_err(ServiceError::Invalid)?
                .period()
                .ok_or_else(|| {
                    ServiceError::Invalid(
                        "--older-than forever removes nothing; give a period such as 30d".into(),
                    )
                })?,
            None => {
                let kept = match &self.core {
                    Core::Local(s) => s.retention(),
                    Core::Cluster(c) => c.retention(),
                };
                kept.ok_or_else(|| {
                    ServiceError::Invalid(
                        "no retention period is set (ORCHESTR8_RETENTION), so nothing is old \
                         enough to remove; give one: prune --older-than 30d"
                            .into(),
                    )
                })?
            }
        };
        let (p, cutoff) = match &self.core {
            Core::Local(s) => {
                let cutoff = crate::model::now_us() - period.as_micros() as i64;
                (s.prune_before(cutoff).await?, cutoff)
            }
            Core::Cluster(c) => c.prune_older_than(period).await?,
        };
        Ok(crate::api::PruneReport {
            ended_before: crate::model::rfc3339(cutoff),
            older_than_seconds: period.as_secs(),
            tasks: p.tasks,
            workflows: p.workflows,
            log_lines: p.log_lines,
            webhook_deliveries: p.webhook_deliveries,
        })
    }
}
