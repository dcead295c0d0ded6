//! Webhook outbox events and delivery attempts: one event per terminal state owed to a URL, one
//! attempt record per POST.

use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use super::{rfc3339, Task, TaskStatus};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeliveryStatus {
    /// Owed: an attempt is due at `next_attempt_us`.
    Pending,
    Delivered,
    /// Given up: a non-retryable answer, or attempts spent.
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> DeliveryStatus {
        match s {
            "pending" => DeliveryStatus::Pending,
            "delivered" => DeliveryStatus::Delivered,
            _ => DeliveryStatus::Failed,
        }
    }
}

/// One event owed to one URL. The payload is fixed when the event is created, so every retry
/// sends the same bytes under the same `webhook-id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookEvent {
    /// The `webhook-id` header: `msg_` and a UUIDv7.
    pub id: String,
    /// `task.completed`, `workflow.failed`, ...
    pub event_type: String,
    pub task_id: Option<Uuid>,
    pub workflow_id: Option<Uuid>,
    pub url: String,
    /// The JSON body: `{"type", "timestamp", "data"}`.
    pub payload: String,
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub next_attempt_us: i64,
    pub last_error: Option<String>,
    pub created_us: i64,
}

impl WebhookEvent {
    /// A new owed event: the payload `{"type", "timestamp", "data"}` is built here, once, and
    /// never changes.
    pub fn new(
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

    /// `host:port` of its URL: deliveries to one receiver are limited together.
    pub fn host(&self) -> String {
        url::Url::parse(&self.url)
            .ok()
            .and_then(|u| Some(format!("{}:{}", u.host_str()?, u.port_or_known_default()?)))
            .unwrap_or_default()
    }

    /// The event owed for a task that has just reached a terminal state, if it has a webhook.
    /// Both storage drivers write it in the transaction of that state.
    pub fn for_task(t: &Task, now_us: i64) -> Option<WebhookEvent> {
        let url = t.webhook_url.as_deref()?;
        let kind = match t.status {
            TaskStatus::Completed => "task.completed",
            TaskStatus::Failed => "task.failed",
            TaskStatus::Cancelled => "task.cancelled",
            TaskStatus::Pending | TaskStatus::Running => return None,
        };
        let data = serde_json::to_value(t.view()).unwrap_or_default();
        Some(WebhookEvent::new(
            kind.into(),
            url,
            Some(t.id),
            None,
            data,
            now_us,
        ))
    }
}

/// One delivery attempt, as `webhook_history` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookAttempt {
    pub event_id: String,
    pub event_type: String,
    pub task_id: Option<Uuid>,
    pub workflow_id: Option<Uuid>,
    pub attempt: u32,
    pub url: String,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: u64,
    pub at_us: i64,
}
