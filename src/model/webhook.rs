//! Webhook outbox events and delivery attempts: one event per terminal state owed to a URL, one
//! attempt record per POST.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

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
