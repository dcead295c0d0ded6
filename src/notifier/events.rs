//! Webhook events as outbox rows: the payload `{"type", "timestamp", "data"}` is built once, when
//! the terminal state is committed, and never changes.

use serde_json::json;
use uuid::Uuid;

use crate::api::WorkflowStatusView;
use crate::model::{rfc3339, DeliveryStatus, Task, TaskStatus, WebhookEvent, Workflow};

fn event(
    kind: String,
    url: &str,
    task_id: Option<Uuid>,
    workflow_id: Option<Uuid>,
    data: serde_json::Value,
    now_us: i64,
) -> WebhookEvent {
    WebhookEvent {
        id: format!("msg_{}", Uuid::now_v7().simple()),
        payload: json!({"type": kind, "timestamp": rfc3339(now_us), "data": data}).to_string(),
        event_type: kind,
        task_id,
        workflow_id,
        url: url.to_string(),
        status: DeliveryStatus::Pending,
        attempts: 0,
        next_attempt_us: now_us,
        last_error: None,
        created_us: now_us,
    }
}

/// The event owed for a task that has just reached a terminal state, if it has a webhook.
pub fn task_event(t: &Task, now_us: i64) -> Option<WebhookEvent> {
    let url = t.webhook_url.as_deref()?;
    let kind = match t.status {
        TaskStatus::Completed => "task.completed",
        TaskStatus::Failed => "task.failed",
        TaskStatus::Cancelled => "task.cancelled",
        TaskStatus::Pending | TaskStatus::Running => return None,
    };
    let data = serde_json::to_value(t.view()).unwrap_or_default();
    Some(event(kind.into(), url, Some(t.id), None, data, now_us))
}

/// The event owed for a workflow that has just ended, if it has a webhook.
pub fn workflow_event(
    wf: &Workflow,
    view: &WorkflowStatusView,
    now_us: i64,
) -> Option<WebhookEvent> {
    let url = wf.webhook_url.as_deref()?;
    if !wf.status.is_terminal() {
        return None;
    }
    let data = serde_json::to_value(view).unwrap_or_default();
    Some(event(
        format!("workflow.{}", wf.status.as_str()),
        url,
        None,
        Some(wf.id),
        data,
        now_us,
    ))
}
