//! The `webhook_history` tool.

use uuid::Uuid;

use super::{parse_task_id, Core, Result, Service, ServiceError};
use crate::api::*;
use crate::model::rfc3339;
use crate::scheduler::not_found;

impl Service {
    /// The history of a task or a workflow, whichever `id` names (REST
    /// `GET /api/webhooks/{id}/history`).
    pub async fn webhook_history_of(&self, id: &str) -> Result<WebhookHistory> {
        let uuid = parse_task_id("id", id)?;
        if self.core.task(uuid).await?.is_some() {
            return self.history_rows(Some(uuid), None).await;
        }
        if self.workflow_or_not_found(uuid).await.is_ok() {
            return self.history_rows(None, Some(uuid)).await;
        }
        Err(ServiceError::NotFound(format!(
            "unknown id {uuid}: no task or workflow has it (list_tasks and list_workflows show the ids there are)"
        )))
    }

    pub async fn webhook_history(&self, a: WebhookHistoryArgs) -> Result<WebhookHistory> {
        let (task_id, workflow_id) = match (a.task_id.as_deref(), a.workflow_id.as_deref()) {
            (Some(t), None) => (Some(parse_task_id("task_id", t)?), None),
            (None, Some(w)) => (None, Some(super::workflows::parse_workflow_id(w)?)),
            _ => {
                return Err(ServiceError::Invalid(
                    "give exactly one of task_id or workflow_id".into(),
                ))
            }
        };
        if let Some(t) = task_id {
            if self.core.task(t).await?.is_none() {
                return Err(ServiceError::NotFound(not_found(t)));
            }
        }
        if let Some(w) = workflow_id {
            self.workflow_or_not_found(w).await?;
        }
        self.history_rows(task_id, workflow_id).await
    }

    /// The delivery log of a task or workflow known to exist.
    pub(super) async fn history_rows(
        &self,
        task_id: Option<Uuid>,
        workflow_id: Option<Uuid>,
    ) -> Result<WebhookHistory> {
        let attempts = match &self.core {
            Core::Local(s) => s.store().webhook_history(task_id, workflow_id).await?,
            Core::Cluster(c) => c.webhook_history(task_id, workflow_id).await?,
        };
        Ok(WebhookHistory {
            deliveries: attempts
                .into_iter()
                .map(|a| DeliveryView {
                    event_id: a.event_id,
                    event_type: a.event_type,
                    attempt: a.attempt,
                    status_code: a.status_code,
                    error: a.error,
                    duration_ms: a.duration_ms,
                    delivered_at: rfc3339(a.at_us),
                    url: a.url,
                })
                .collect(),
        })
    }
}
