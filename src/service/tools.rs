//! Tool calls by name: the MCP tools' dispatch onto [`Service`], shared by the stdio MCP
//! frontend of an engine and by the engine's local socket, through which frontends in other
//! processes forward their calls. One dispatch means both roles answer alike, errors included.

use std::future::Future;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::{Service, ServiceError};
use crate::api::NoArgs;

/// The answer of one tool call: its JSON, or the message of a domain error.
pub type ToolAnswer = Result<Value, String>;

/// Every tool the engine answers by name, in the order the tools are listed. (`task_run` is
/// not one: the MCP server composes it from `task_async` and `task_wait`.)
pub const TOOL_NAMES: [&str; 17] = [
    "task_async",
    "task_status",
    "task_cancel",
    "task_retry",
    "task_logs",
    "task_diff",
    "task_wait",
    "list_tasks",
    "list_agents",
    "workflow_create",
    "workflow_add_phase",
    "workflow_add_task",
    "workflow_start",
    "workflow_status",
    "workflow_cancel",
    "list_workflows",
    "webhook_history",
];

/// Whether calling `name` again with the same arguments is harmless: it reads only, or it is a
/// `task_async` with an `idempotency_key`. A frontend retries these on the next engine when
/// the engine dies mid-call.
pub fn safe_to_repeat(name: &str, args: &Value) -> bool {
    match name {
        "task_status" | "task_logs" | "task_diff" | "task_wait" | "list_tasks" | "list_agents"
        | "workflow_status" | "list_workflows" | "webhook_history" => true,
        "task_async" => args
            .get("idempotency_key")
            .and_then(Value::as_str)
            .is_some_and(|k| !k.is_empty()),
        _ => false,
    }
}

impl Service {
    /// Runs tool `name` with its JSON arguments. Arguments are deserialized here (not by the
    /// MCP library) so that a wrong one is a domain error naming the field.
    pub async fn call_tool(&self, name: &str, args: Value) -> ToolAnswer {
        let started = std::time::Instant::now();
        let answer = self.dispatch(name, args).await;
        if TOOL_NAMES.contains(&name) {
            let outcome = if answer.is_ok() { "ok" } else { "error" };
            crate::metrics::request("mcp", name.to_string(), outcome, started.elapsed());
        }
        answer
    }

    async fn dispatch(&self, name: &str, args: Value) -> ToolAnswer {
        let s = self.clone();
        match name {
            "task_async" => run(name, args, |a| async move { s.task_async(a).await }).await,
            "task_status" => run(name, args, |a| async move { s.task_status(a).await }).await,
            "task_cancel" => run(name, args, |a| async move { s.task_cancel(a).await }).await,
            "task_retry" => run(name, args, |a| async move { s.task_retry(a).await }).await,
            "task_logs" => run(name, args, |a| async move { s.task_logs(a).await }).await,
            "task_diff" => run(name, args, |a| async move { s.task_diff(a).await }).await,
            "task_wait" => run(name, args, |a| async move { s.task_wait(a).await }).await,
            "list_tasks" => run(name, args, |a| async move { s.list_tasks(a).await }).await,
            "list_agents" => {
                run(name, args, |_: NoArgs| async move { s.list_agents().await }).await
            }
            "workflow_create" => {
                run(name, args, |a| async move { s.workflow_create(a).await }).await
            }
            "workflow_add_phase" => {
                run(name, args, |a| async move { s.workflow_add_phase(a).await }).await
            }
            "workflow_add_task" => {
                run(name, args, |a| async move { s.workflow_add_task(a).await }).await
            }
            "workflow_start" => run(name, args, |a| async move { s.workflow_start(a).await }).await,
            "workflow_status" => {
                run(name, args, |a| async move { s.workflow_status(a).await }).await
            }
            "workflow_cancel" => {
                run(name, args, |a| async move { s.workflow_cancel(a).await }).await
            }
            "list_workflows" => run(name, args, |a| async move { s.list_workflows(a).await }).await,
            "webhook_history" => {
                run(name, args, |a| async move { s.webhook_history(a).await }).await
            }
            other => Err(format!(
                "unknown tool {other:?}; the tools are: {}",
                TOOL_NAMES.join(", ")
            )),
        }
    }
}

async fn run<A, R, F, Fut>(tool: &str, args: Value, f: F) -> ToolAnswer
where
    A: DeserializeOwned,
    R: Serialize,
    F: FnOnce(A) -> Fut,
    Fut: Future<Output = Result<R, ServiceError>>,
{
    let parsed: A = serde_path_to_error::deserialize(args).map_err(|e| argument_error(tool, &e))?;
    let answer = f(parsed).await.map_err(|e| e.to_string())?;
    serde_json::to_value(&answer).map_err(|e| format!("could not encode the answer: {e}"))
}

fn argument_error(tool: &str, e: &serde_path_to_error::Error<serde_json::Error>) -> String {
    let path = e.path().to_string();
    let inner = e.inner().to_string();
    if path == "." || path.is_empty() {
        format!("invalid arguments for {tool}: {inner}")
    } else {
        format!("invalid arguments for {tool}: {path}: {inner}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_reads_and_keyed_submits_are_repeated() {
        assert!(safe_to_repeat("task_wait", &json!({})));
        assert!(safe_to_repeat(
            "task_async",
            &json!({"idempotency_key": "k"})
        ));
        assert!(!safe_to_repeat("task_async", &json!({})));
        assert!(!safe_to_repeat("task_cancel", &json!({})));
        assert!(!safe_to_repeat("workflow_create", &json!({})));
    }
}
