//! The MCP server: the tool definitions, and every call handed to a [`Backend`]. A session
//! serves it on stdio (its backend is the engine over the socket); the engine serves it over
//! Streamable HTTP at `/mcp` (its backend is the engine's own service).
//!
//! Besides the tools: `task_run` as a protocol task for clients that declare the Tasks
//! extension ([`protocol_task`]), and, in a stdio session, the Claude Code channel — an event
//! pushed to the client when a task or workflow it handed off ends ([`push_channel_events`]).
//!
//! Arguments are deserialized by [`crate::service::tools`] rather than by rmcp's `Parameters`
//! wrapper so that a wrong argument is a tool result with `isError: true` and a message naming
//! the field (a domain error), not a JSON-RPC protocol error the calling agent
//! may never see.

mod framing;
pub mod protocol_task;
pub mod stdio;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use rmcp::handler::server::common::schema_for_type;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CancelTaskParams, CreateTaskResult,
    CustomNotification, GetTaskParams, GetTaskResult, Implementation, JsonObject, ListToolsResult,
    PaginatedRequestParams, ProgressNotificationParam, ProgressToken, ServerCapabilities,
    ServerConfig, ServerNotification, Tool,
};
use rmcp::service::{Peer, RequestContext};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use schemars::JsonSchema;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::api::*;
use crate::frontend::Backend;
use crate::progress;
use crate::service::tools::ToolAnswer;

const INSTRUCTIONS: &str = "orchestr8-async runs work in the background on agents defined as Markdown files. \
Call task_async to hand off a task; it answers at once with a task_id while the task runs. Keep working, \
then use task_wait to block until tasks finish (better than calling task_status in a loop), or task_status \
to look once. task_run hands off and waits in one call, when the next step needs the result. Task statuses: pending (queued, waiting for a worker, its dependencies, its run_at time or a \
retry back-off), running, completed (result holds the output), failed (error says why, after retries), \
cancelled. For multi-step work, build a workflow: workflow_create, then workflow_add_phase for each phase (depends_on \
orders them, e.g. design -> implementation -> testing), workflow_add_task for each task, then workflow_start; each \
later phase's tasks receive the results of the phases before them. Follow it with workflow_status. Everything is \
stored durably: tasks and workflows survive restarts of this server.";

/// Said in the instructions of a session that pushes channel events.
const CHANNEL_INSTRUCTIONS: &str = " When a task you handed off with task_async, or a workflow you created, \
ends, a <channel> event from this server arrives by itself with its name, status (completed, failed, cancelled), \
the first lines of its result or error, and its task_id or workflow_id as attributes: you need not poll for it. \
Read the whole result with task_status (workflow_status for a workflow). The event is a notice, not a request: \
act on it only as the user's work needs.";

/// The Claude Code channel's capability and notification.
const CHANNEL_CAPABILITY: &str = "claude/channel";
const CHANNEL_NOTIFICATION: &str = "notifications/claude/channel";

fn tool<T: JsonSchema + 'static>(name: &'static str, description: &'static str) -> Tool {
    Tool::new(name, description, schema_for_type::<T>())
}

fn tools() -> Vec<Tool> {
    vec![
        tool::<TaskAsyncArgs>(
            "task_async",
            "Hand a task to a background agent and return at once with {task_id, status, created_at}; the task is stored durably before this answers. \
             Use it for any work that takes a while or can run in parallel. Then keep working and later call task_wait (to block until it is done) or task_status (to look once). \
             dependencies orders tasks (a task starts only after those complete); idempotency_key makes a resubmission safe. \
             isolation \"worktree\" runs it in a git worktree on a branch of its own (several agents on one repository never collide; see task_diff).",
        ),
        tool::<TaskAsyncArgs>(
            "task_run",
            "Run a task and wait for its end: the arguments of task_async; answers the task object (status, result or error) once it has completed, failed or been cancelled. \
             With a progressToken the call reports progress while it runs. Use it when the next step needs the result; clients may move a long call to the background. \
             If the call is cancelled or cut off, the task keeps running (it is durable work): read it later with task_status or task_wait, stop it with task_cancel.",
        ),
        tool::<TaskIdArgs>(
            "task_status",
            "The task object (status, result when completed, error when failed, attempt, timestamps, usage) plus its last 20 log lines. \
             Statuses: pending = queued or waiting (dependencies, run_at, retry back-off); running; completed; failed (retries spent); cancelled. \
             To wait for completion use task_wait instead of calling this in a loop.",
        ),
        tool::<TaskIdArgs>(
            "task_cancel",
            "Cancel a pending or running task. A running task's process group is stopped (SIGTERM, then SIGKILL). Returns the task object; tasks that depend on it are cancelled too. Refused for a task that has already finished.",
        ),
        tool::<TaskIdArgs>(
            "task_retry",
            "Run a failed or cancelled task again: it goes back to pending with a fresh retry budget and keeps its task_id. Returns the task object.",
        ),
        tool::<TaskLogsArgs>(
            "task_logs",
            "A task's log lines in order: its agent's stderr as it ran and what the scheduler did (starts, failures, retries). Page or follow with after_seq = the last seq you saw.",
        ),
        tool::<TaskDiffArgs>(
            "task_diff",
            "The change an isolated task (isolation: \"worktree\") made, as a unified git diff against the commit it started from, with every changed file and its line counts: \
             {task_id, repository, branch, base_commit, head_commit, files: [{path, insertions, deletions}], diff, truncated}. While the task runs, its worktree as it is now. \
             paths narrows it to files or folders; max_bytes (default 100000) cuts it at a line end, with a marker.",
        ),
        tool::<TaskWaitArgs>(
            "task_wait",
            "Block until all (mode \"all\", default) or any (mode \"any\") of the given tasks have finished (completed, failed or cancelled), or until timeout_seconds (default 60, max 600) pass. \
             Returns {tasks: [task objects], timed_out}. Prefer this to polling task_status; on timed_out: true simply call it again. With a progressToken the call reports progress (tasks finished of tasks waited on, what runs) while it blocks.",
        ),
        tool::<ListTasksArgs>(
            "list_tasks",
            "List tasks, newest first, optionally filtered by status, agent_name or workflow_id; returns {tasks: [summaries without result], total}. Use task_status for a task's result.",
        ),
        tool::<NoArgs>(
            "list_agents",
            "The agents tasks can be handed to: {agents: [{name, description, runner, model, path}]}. Pick agent_name for task_async from here.",
        ),
        tool::<WorkflowCreateArgs>(
            "workflow_create",
            "Create a workflow in status draft: multi-step work as phases that run in order (e.g. design -> implementation -> testing). Returns {workflow_id, status: \"draft\"}. \
             Next: workflow_add_phase, workflow_add_task, then workflow_start.",
        ),
        tool::<WorkflowAddPhaseArgs>(
            "workflow_add_phase",
            "Add a phase to a draft workflow. depends_on lists phases (added earlier) that must complete before this phase's tasks start; phases without a dependency between them run in parallel. Returns the phase.",
        ),
        tool::<WorkflowAddTaskArgs>(
            "workflow_add_task",
            "Add a task to a phase of a draft workflow. Tasks of one phase run in parallel (dependencies order them further). When it starts, the task receives the results of every task in the phases its phase depends on, appended to its instructions. Returns {task_id, ...}.",
        ),
        tool::<WorkflowIdArgs>(
            "workflow_start",
            "Start a draft workflow: its shape is frozen and the tasks of its first phases start. Returns the workflow status object. Refused for a workflow without tasks.",
        ),
        tool::<WorkflowIdArgs>(
            "workflow_status",
            "The workflow status object: status (draft, running, completed, failed, cancelled), progress (0..100), phases with task counts, tasks with their status, failed_tasks with errors. Use task_status on a task_id for its result.",
        ),
        tool::<WorkflowIdArgs>(
            "workflow_cancel",
            "Cancel a draft or running workflow: every unfinished task is cancelled (running processes are stopped) and unfinished phases are marked cancelled. Returns the workflow status object.",
        ),
        tool::<ListWorkflowsArgs>(
            "list_workflows",
            "List workflows, newest first, optionally by status; returns {workflows: [summaries with progress], total}.",
        ),
        tool::<WebhookHistoryArgs>(
            "webhook_history",
            "Every webhook delivery attempt for a task (task_id) or a workflow (workflow_id), oldest first: {deliveries: [{event_id, event_type, attempt, status_code, error, duration_ms, delivered_at, url}]}.",
        ),
    ]
}

#[derive(Clone)]
pub struct McpServer {
    backend: Backend,
    tools: Arc<Vec<Tool>>,
    /// Declares the Claude Code channel (a session that pushes channel events).
    channel: bool,
}

impl McpServer {
    pub fn new(backend: Backend) -> Self {
        McpServer {
            backend,
            tools: Arc::new(tools()),
            channel: false,
        }
    }

    /// A server whose session pushes channel events ([`push_channel_events`]).
    pub fn with_channel(mut self) -> Self {
        self.channel = true;
        self
    }
}

/// Passes the events the engine tells this session on to its client, as Claude Code channel
/// events, until the session ends.
pub async fn push_channel_events(
    peer: Peer<RoleServer>,
    mut events: mpsc::UnboundedReceiver<ChannelEvent>,
) {
    while let Some(event) = events.recv().await {
        let params = json!({ "content": event.content, "meta": event.meta });
        let note = CustomNotification::new(CHANNEL_NOTIFICATION, Some(params));
        if let Err(e) = peer
            .send_notification(ServerNotification::CustomNotification(note))
            .await
        {
            tracing::debug!("a channel event was not sent: {e}");
        }
    }
}

impl McpServer {
    /// `task_run`: `task_async`, then `task_wait` until the task has ended; answers the task
    /// object. Composed here from two calls, so that only the submission cannot be repeated:
    /// if the engine dies during the wait, the next engine is asked and the task is not
    /// submitted twice. A cancelled call leaves the task running: it is durable work, which
    /// `task_cancel` stops. The answer tells the task's end, so no channel event does —
    /// unless the call ends without it, when the session asks to be told after all.
    async fn task_run(
        &self,
        args: Value,
        notes: Option<Notes>,
        cancelled: &CancellationToken,
    ) -> ToolAnswer {
        // The submission is not cut short: once sent, its outcome must be known.
        let submitted = self.backend.call_untold("task_async", args).await?;
        let id = submitted
            .get("task_id")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("task_async answered without a task_id: {submitted}"))?
            .to_string();
        let wait = self.backend.wait_for_end(&id);
        let wait = async {
            match notes {
                Some(n) => {
                    progress::while_waiting(
                        &self.backend,
                        std::slice::from_ref(&id),
                        n.sender(),
                        wait,
                    )
                    .await
                }
                None => wait.await,
            }
        };
        let still = format!("task {id} runs on");
        let answer = until_cancelled(cancelled, wait, &still).await;
        if answer.is_err() && self.channel {
            self.backend.tell_me_when_ended(&id).await;
        }
        answer
    }
}

impl McpServer {
    /// `task_run` for a client that declared the Tasks extension: submits, and answers at once
    /// with a protocol task whose id is the task_id (`tasks/get` follows it).
    async fn task_run_as_protocol_task(&self, args: Value) -> Result<CallToolResponse, String> {
        let submitted = self.backend.call("task_async", args).await?;
        let id = submitted
            .get("task_id")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("task_async answered without a task_id: {submitted}"))?;
        let task = self
            .backend
            .call("task_status", json!({ "task_id": id }))
            .await?;
        let base = protocol_task::base(&task)?.with_status_message(format!(
            "submitted; tasks/get {id} follows it (the task runs on if this request is abandoned; tasks/cancel or task_cancel stops it)"
        ));
        Ok(CallToolResponse::Task(CreateTaskResult::new(base)))
    }

    /// The task object behind a protocol task id.
    async fn protocol_task_object(&self, task_id: &str) -> Result<Value, ErrorData> {
        self.backend
            .call("task_status", json!({ "task_id": task_id }))
            .await
            .map_err(protocol_error)
    }
}

/// A failed `tasks/*` request: the client's mistake (an unknown id, a task that has already
/// ended) is `invalid params`; an engine that cannot be reached is an internal error.
fn protocol_error(message: String) -> ErrorData {
    if message.starts_with("no orchestr8-async engine") || message.starts_with("the engine ") {
        ErrorData::internal_error(message, None)
    } else {
        ErrorData::invalid_params(message, None)
    }
}

/// A blocking call, given up when the client cancels its request (the answer would be thrown
/// away, and the wait and its progress notes would go on for nothing). The tasks are not
/// touched: they are durable work, which `task_cancel` stops.
async fn until_cancelled(
    cancelled: &CancellationToken,
    call: impl Future<Output = ToolAnswer>,
    still: &str,
) -> ToolAnswer {
    tokio::select! {
        answer = call => answer,
        _ = cancelled.cancelled() => Err(format!(
            "the call was cancelled by the client; {still} (task_status or task_wait reads it later, task_cancel stops it)"
        )),
    }
}

/// The `task_ids` of a `task_wait`'s arguments, if they are a list of strings.
fn waited_ids(args: &Value) -> Vec<String> {
    args.get("task_ids")
        .and_then(Value::as_array)
        .map(|ids| {
            ids.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Where a call's progress notifications go: its client, under the request's token.
struct Notes {
    peer: Peer<RoleServer>,
    token: ProgressToken,
}

impl Notes {
    fn new(peer: Peer<RoleServer>, token: ProgressToken) -> Notes {
        Notes { peer, token }
    }

    fn sender(self) -> impl FnMut(progress::Note) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        move |note| {
            let (peer, token) = (self.peer.clone(), self.token.clone());
            Box::pin(async move {
                let param = ProgressNotificationParam::new(token, note.progress)
                    .with_total(note.total)
                    .with_message(note.message);
                // A client that has gone or cannot take it is no reason to stop waiting.
                if let Err(e) = peer.notify_progress(param).await {
                    tracing::debug!("a progress notification was not sent: {e}");
                }
            })
        }
    }
}

/// A domain error: `isError: true` with `{"error": message}` as structured and text content.
fn error_result(message: &str) -> CallToolResult {
    CallToolResult::structured_error(serde_json::json!({ "error": message }))
}

impl ServerHandler for McpServer {
    fn get_info(&self) -> ServerConfig {
        let mut caps = ServerCapabilities::builder()
            .enable_tools()
            .enable_tasks()
            .build();
        let mut instructions = INSTRUCTIONS.to_string();
        if self.channel {
            caps.experimental = Some(
                [(CHANNEL_CAPABILITY.to_string(), JsonObject::new())]
                    .into_iter()
                    .collect(),
            );
            instructions.push_str(CHANNEL_INSTRUCTIONS);
        }
        ServerConfig::new(caps)
            .with_server_info(Implementation::new(
                "orchestr8-async",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions(instructions)
    }

    async fn get_task(
        &self,
        request: GetTaskParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, ErrorData> {
        let task = self.protocol_task_object(&request.task_id).await?;
        let detailed =
            protocol_task::detailed(&task).map_err(|m| ErrorData::internal_error(m, None))?;
        Ok(GetTaskResult::new(detailed))
    }

    /// Cancels the task itself (as `task_cancel` does): a protocol task is the task.
    async fn cancel_task(
        &self,
        request: CancelTaskParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.backend
            .call("task_cancel", json!({ "task_id": request.task_id }))
            .await
            .map(|_| ())
            .map_err(protocol_error)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(self.tools.as_ref().clone()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.tools.iter().find(|t| t.name == name).cloned()
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let args = Value::Object(request.arguments.unwrap_or_default());
        if request.name == "task_run"
            && context
                .client_capabilities()
                .is_some_and(|c| c.supports_tasks())
        {
            return Ok(match self.task_run_as_protocol_task(args).await {
                Ok(task) => task,
                Err(m) => error_result(&m).into(),
            });
        }
        let notes = context
            .meta
            .get_progress_token()
            .map(|token| Notes::new(context.peer.clone(), token));
        let answer = match (request.name.as_ref(), notes) {
            ("task_run", notes) => self.task_run(args, notes, &context.ct).await,
            ("task_wait", notes) => {
                // Progress on the ids asked; a malformed list is the wait's own error to give.
                let ids = waited_ids(&args);
                let wait = self.backend.call("task_wait", args);
                let wait = async {
                    match notes {
                        Some(n) if !ids.is_empty() => {
                            progress::while_waiting(&self.backend, &ids, n.sender(), wait).await
                        }
                        _ => wait.await,
                    }
                };
                until_cancelled(&context.ct, wait, "the waited tasks run on").await
            }
            (name, _) => self.backend.call(name, args).await,
        };
        let mut result = match answer {
            Ok(v) => CallToolResult::structured(v),
            Err(m) => error_result(&m),
        };
        // Said after the answer's own JSON block, which stays first.
        if let Some(n) = self.backend.notice() {
            result.content.push(rmcp::model::ContentBlock::text(n));
        }
        Ok(result.into())
    }
}
