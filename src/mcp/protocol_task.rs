//! `task_run` under the MCP Tasks extension (`io.modelcontextprotocol/tasks`): when the
//! client's request declares it, `task_run` answers at once with a protocol task whose
//! `taskId` is the task_id, and `tasks/get` / `tasks/cancel` act on that task. This module is
//! the pure mapping from a task object (as `task_status` answers it) to the protocol's task.
//!
//! The protocol's statuses describe the *request*: a task that ran and failed is still a
//! request that completed, and its result is the task object with `status: "failed"` —
//! exactly what `task_run` answers without the extension. Only a cancelled task is a
//! cancelled request.

use rmcp::model::{CallToolResult, DetailedTask, Task, TaskPayload, TaskStatus};
use serde_json::Value;

/// How often a client should look again (milliseconds).
pub const POLL_INTERVAL_MS: u64 = 2000;

fn text<'a>(task: &'a Value, field: &str) -> Option<&'a str> {
    task.get(field).and_then(Value::as_str)
}

/// The protocol task's base fields: never discarded (`ttlMs: null`), since the task is
/// durable work kept in the database.
pub fn base(task: &Value) -> Result<Task, String> {
    let id = text(task, "task_id").ok_or_else(|| format!("not a task object: {task}"))?;
    let created = text(task, "created_at").unwrap_or_default();
    let updated = text(task, "completed_at")
        .or_else(|| text(task, "started_at"))
        .unwrap_or(created);
    Ok(
        Task::new(id, TaskStatus::Working, created, updated)
            .with_poll_interval_ms(POLL_INTERVAL_MS),
    )
}

/// The task object as the protocol's detailed task: working while pending or running, then
/// completed with the same result `task_run` gives, or cancelled.
pub fn detailed(task: &Value) -> Result<DetailedTask, String> {
    let base = base(task)?;
    let status = text(task, "status").unwrap_or_default();
    let attempt = task.get("attempt").and_then(Value::as_u64).unwrap_or(0);
    let (payload, message) = match status {
        "pending" => (
            TaskPayload::Working,
            "pending: waiting for a worker, its dependencies, its run_at time or a retry back-off"
                .to_string(),
        ),
        "running" => (
            TaskPayload::Working,
            format!(
                "running (attempt {attempt}) since {}",
                text(task, "started_at").unwrap_or("now")
            ),
        ),
        "completed" | "failed" => {
            // The task object as `task_run` answers it: without `task_status`'s log lines.
            let mut object = task.clone();
            if let Some(o) = object.as_object_mut() {
                o.remove("logs");
            }
            let result = CallToolResult::structured(object);
            let Value::Object(result) = serde_json::to_value(&result).map_err(|e| e.to_string())?
            else {
                return Err("a tool result is not an object".into());
            };
            let message = match status {
                "completed" => "completed".to_string(),
                _ => format!(
                    "the task failed: {}",
                    text(task, "error").unwrap_or("no error recorded")
                ),
            };
            (TaskPayload::Completed { result }, message)
        }
        "cancelled" => (
            TaskPayload::Cancelled,
            format!(
                "the task was cancelled: {}",
                text(task, "error").unwrap_or("task_cancel")
            ),
        ),
        other => {
            return Err(format!(
                "task {} has an unknown status {other:?}",
                base.task_id
            ))
        }
    };
    Ok(DetailedTask::new(
        base.with_status_message(message),
        payload,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn task(status: &str) -> Value {
        json!({
            "task_id": "0190f0f0-0000-7000-8000-000000000001",
            "name": "t", "status": status, "attempt": 1,
            "created_at": "2026-12-02T10:00:00.000Z",
            "started_at": "2026-12-02T10:00:01.000Z",
            "completed_at": if status == "running" { Value::Null } else { json!("2026-12-02T10:00:05.000Z") },
            "result": "done", "error": if status == "failed" { json!("exit 3") } else { Value::Null },
            "logs": [],
        })
    }

    #[test]
    fn pending_and_running_are_working() {
        let d = detailed(&task("running")).unwrap();
        assert_eq!(d.status(), TaskStatus::Working);
        assert_eq!(d.task.task_id, "0190f0f0-0000-7000-8000-000000000001");
        assert_eq!(d.task.last_updated_at, "2026-12-02T10:00:01.000Z");
        assert_eq!(d.task.ttl_ms, None);
        assert!(d
            .task
            .status_message
            .unwrap()
            .starts_with("running (attempt 1)"));
    }

    #[test]
    fn a_failed_task_is_a_completed_request_with_the_task_object() {
        let d = detailed(&task("failed")).unwrap();
        assert_eq!(d.status(), TaskStatus::Completed);
        let TaskPayload::Completed { result } = &d.payload else {
            panic!("{d:?}")
        };
        assert_eq!(result["structuredContent"]["status"], "failed");
        assert_ne!(result.get("isError"), Some(&json!(true)));
        assert!(result["structuredContent"].get("logs").is_none());
        assert_eq!(d.task.last_updated_at, "2026-12-02T10:00:05.000Z");
    }

    #[test]
    fn a_cancelled_task_is_a_cancelled_request() {
        assert_eq!(
            detailed(&task("cancelled")).unwrap().status(),
            TaskStatus::Cancelled
        );
        assert!(detailed(&json!({"status": "running"})).is_err());
    }
}
