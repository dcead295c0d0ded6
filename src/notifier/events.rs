//! Webhook events of workflows as outbox rows (a task's is [`WebhookEvent::for_task`]): the
//! payload is built once, when the terminal state is committed, and never changes.

use crate::api::WorkflowStatusView;
use crate::model::{WebhookEvent, Workflow};

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
    Some(WebhookEvent::new(
        format!("workflow.{}", wf.status.as_str()),
        url,
        None,
        Some(wf.id),
        data,
        now_us,
    ))
}
