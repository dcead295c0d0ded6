//! The REST routes (tasks, workflows, webhook history). Each handler only adapts HTTP to a [`Service`] call: path
//! and body in, status code and JSON out.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

use super::error::{ApiError, ErrorBody, IdPath, JsonBody};
use super::AppState;
use crate::api::*;
use crate::model::TaskView;

type Answer<T> = Result<(StatusCode, Json<T>), ApiError>;

fn ok<T>(v: T) -> Answer<T> {
    Ok((StatusCode::OK, Json(v)))
}

fn created<T>(v: T) -> Answer<T> {
    Ok((StatusCode::CREATED, Json(v)))
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(v)| v)
        .map_err(|e| ApiError::bad_request(format!("invalid query string: {}", e.body_text())))
}

/// Query of `GET /api/tasks/{id}/logs`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    /// Only lines with seq greater than this (default 0).
    #[param(minimum = 0)]
    #[serde(default, deserialize_with = "crate::api::whole::option_or_text")]
    pub after_seq: Option<i64>,
    /// Most lines to return (1..1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    #[serde(default, deserialize_with = "crate::api::whole::option_or_text")]
    pub limit: Option<i64>,
}

/// What `GET /api/tasks/{id}/diff` shows.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DiffQuery {
    /// Only these paths, comma-separated (relative to the repository's top directory; at most
    /// 100, each at most 4096 bytes).
    #[param(pattern = "^[^\\u0000]*$")]
    pub paths: Option<String>,
    /// Most bytes of diff (1..4194304, default 100000); a longer diff is cut with a marker.
    #[param(minimum = 1, maximum = 4194304)]
    #[serde(default, deserialize_with = "crate::api::whole::option_or_text")]
    pub max_bytes: Option<i64>,
}

/// Paging of `GET /api/workflows/{id}/tasks`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// Most tasks to return (1..1000, default 50).
    #[param(minimum = 1, maximum = 1000)]
    #[serde(default, deserialize_with = "crate::api::whole::option_or_text")]
    pub limit: Option<i64>,
    /// Tasks to skip (default 0).
    #[param(minimum = 0, maximum = 1_000_000_000)]
    #[serde(default, deserialize_with = "crate::api::whole::option_or_text")]
    pub offset: Option<i64>,
}

/// Body of `POST /api/workflows/{id}/phases`: workflow_add_phase without the id in the path.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PhaseBody {
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,63}$")]
    pub phase_id: String,
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "[^\\s\\u001c-\\u001f\\u0085\\ufeff]"
    )]
    pub name: String,
    /// Phase ids added before this one (each of the same form as phase_id).
    pub depends_on: Option<Vec<String>>,
}

/// Body of `POST /api/workflows/{id}/tasks`: workflow_add_task without the id in the path.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowTaskBody {
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,63}$")]
    pub phase_id: String,
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "[^\\s\\u001c-\\u001f\\u0085\\ufeff]"
    )]
    pub name: String,
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,63}$")]
    pub agent_name: String,
    #[schema(
        min_length = 1,
        max_length = 1048576,
        pattern = "[^\\s\\u001c-\\u001f\\u0085\\ufeff]"
    )]
    pub agent_instructions: String,
    #[schema(value_type = Option<Vec<uuid::Uuid>>, max_items = 1000)]
    pub dependencies: Option<Vec<String>>,
    #[schema(value_type = Option<PriorityName>)]
    pub priority: Option<String>,
    #[schema(minimum = 1, maximum = 86400)]
    #[serde(default, deserialize_with = "crate::api::whole::option")]
    pub timeout_seconds: Option<i64>,
    #[schema(minimum = 0, maximum = 10)]
    #[serde(default, deserialize_with = "crate::api::whole::option")]
    pub max_retries: Option<i64>,
    pub working_dir: Option<String>,
    /// "worktree" (a git worktree on a branch of its own) or "none".
    #[schema(value_type = Option<IsolationName>)]
    pub isolation: Option<String>,
    /// The commit an isolated task starts from (default: HEAD when added).
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f-][^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    pub base_ref: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
}

#[utoipa::path(post, path = "/api/tasks", tag = "tasks", request_body = TaskAsyncArgs,
    responses((status = 201, description = "Accepted (durable)", body = CreatedTask),
              (status = 200, description = "An earlier task with the same idempotency_key", body = CreatedTask),
              (status = 400, body = ErrorBody),
              (status = 404, description = "An agent, a dependency, a working_dir or a base_ref that is not there", body = ErrorBody),
              (status = 409, description = "A dependency that already failed or was cancelled; base_ref without worktree isolation; worktree isolation outside a git repository; an agent file or runner that cannot run it", body = ErrorBody),
              (status = 415, description = "Not sent as application/json", body = ErrorBody)))]
pub async fn create_task(
    State(s): State<AppState>,
    JsonBody(a): JsonBody<TaskAsyncArgs>,
) -> Answer<CreatedTask> {
    let answer = s.service.create_task(a).await?;
    if answer.existing {
        ok(answer)
    } else {
        created(answer)
    }
}

#[utoipa::path(get, path = "/api/tasks", tag = "tasks", params(ListTasksArgs),
    responses((status = 200, body = TaskList), (status = 400, body = ErrorBody)))]
pub async fn list_tasks(
    State(s): State<AppState>,
    q: Result<Query<ListTasksArgs>, QueryRejection>,
) -> Answer<TaskList> {
    ok(s.service.list_tasks(query(q)?).await?)
}

#[utoipa::path(get, path = "/api/tasks/{id}", tag = "tasks", params(("id" = uuid::Uuid, Path, description = "The id the resource was created with")),
    responses((status = 200, body = TaskWithLogs), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_task(State(s): State<AppState>, IdPath(id): IdPath) -> Answer<TaskWithLogs> {
    ok(s.service.task_status(TaskIdArgs { task_id: id }).await?)
}

#[utoipa::path(delete, path = "/api/tasks/{id}", tag = "tasks", params(("id" = uuid::Uuid, Path, description = "The id the resource was created with")),
    responses((status = 400, description = "A malformed id or parameter", body = ErrorBody), (status = 200, description = "Cancelled", body = TaskView), (status = 404, body = ErrorBody),
              (status = 409, description = "Already finished", body = ErrorBody)))]
pub async fn cancel_task(State(s): State<AppState>, IdPath(id): IdPath) -> Answer<TaskView> {
    ok(s.service.task_cancel(TaskIdArgs { task_id: id }).await?)
}

#[utoipa::path(post, path = "/api/tasks/{id}/retry", tag = "tasks", params(("id" = uuid::Uuid, Path, description = "The id the resource was created with")),
    responses((status = 400, description = "A malformed id or parameter", body = ErrorBody), (status = 200, body = TaskView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn retry_task(State(s): State<AppState>, IdPath(id): IdPath) -> Answer<TaskView> {
    ok(s.service.task_retry(TaskIdArgs { task_id: id }).await?)
}

#[utoipa::path(get, path = "/api/tasks/{id}/logs", tag = "tasks", params(("id" = uuid::Uuid, Path, description = "The task_id"), LogsQuery),
    responses((status = 200, body = TaskLogs), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn task_logs(
    State(s): State<AppState>,
    IdPath(id): IdPath,
    q: Result<Query<LogsQuery>, QueryRejection>,
) -> Answer<TaskLogs> {
    let q = query(q)?;
    ok(s.service
        .task_logs(TaskLogsArgs {
            task_id: id,
            after_seq: q.after_seq,
            limit: q.limit,
        })
        .await?)
}

#[utoipa::path(get, path = "/api/tasks/{id}/diff", tag = "tasks", params(("id" = uuid::Uuid, Path, description = "The task_id"), DiffQuery),
    responses((status = 200, body = TaskDiff), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, description = "The task did not run in a worktree, or has not started yet", body = ErrorBody)))]
pub async fn task_diff(
    State(s): State<AppState>,
    IdPath(id): IdPath,
    q: Result<Query<DiffQuery>, QueryRejection>,
) -> Answer<TaskDiff> {
    let q = query(q)?;
    ok(s.service
        .task_diff(TaskDiffArgs {
            task_id: id,
            paths: q.paths.map(|p| {
                p.split(',')
                    .filter(|p| !p.is_empty())
                    .map(str::to_string)
                    .collect()
            }),
            max_bytes: q.max_bytes,
        })
        .await?)
}

#[utoipa::path(get, path = "/api/agents", tag = "agents",
    responses((status = 200, body = AgentList)))]
pub async fn list_agents(State(s): State<AppState>) -> Answer<AgentList> {
    ok(s.service.list_agents().await?)
}

#[utoipa::path(post, path = "/api/workflows", tag = "workflows", request_body = WorkflowCreateArgs,
    responses((status = 201, body = WorkflowCreated), (status = 400, body = ErrorBody)))]
pub async fn create_workflow(
    State(s): State<AppState>,
    JsonBody(a): JsonBody<WorkflowCreateArgs>,
) -> Answer<WorkflowCreated> {
    created(s.service.workflow_create(a).await?)
}

#[utoipa::path(get, path = "/api/workflows", tag = "workflows", params(ListWorkflowsArgs),
    responses((status = 200, body = WorkflowList), (status = 400, body = ErrorBody)))]
pub async fn list_workflows(
    State(s): State<AppState>,
    q: Result<Query<ListWorkflowsArgs>, QueryRejection>,
) -> Answer<WorkflowList> {
    ok(s.service.list_workflows(query(q)?).await?)
}

#[utoipa::path(get, path = "/api/workflows/{id}", tag = "workflows", params(("id" = uuid::Uuid, Path, description = "The id the resource was created with")),
    responses((status = 400, description = "A malformed id or parameter", body = ErrorBody), (status = 200, body = WorkflowStatusView), (status = 404, body = ErrorBody)))]
pub async fn get_workflow(
    State(s): State<AppState>,
    IdPath(id): IdPath,
) -> Answer<WorkflowStatusView> {
    ok(s.service
        .workflow_status(WorkflowIdArgs { workflow_id: id })
        .await?)
}

#[utoipa::path(get, path = "/api/workflows/{id}/status", tag = "workflows", params(("id" = uuid::Uuid, Path, description = "The id the resource was created with")),
    responses((status = 400, description = "A malformed id or parameter", body = ErrorBody), (status = 200, body = WorkflowStatusView), (status = 404, body = ErrorBody)))]
pub async fn workflow_status(
    State(s): State<AppState>,
    IdPath(id): IdPath,
) -> Answer<WorkflowStatusView> {
    ok(s.service
        .workflow_status(WorkflowIdArgs { workflow_id: id })
        .await?)
}

#[utoipa::path(post, path = "/api/workflows/{id}/start", tag = "workflows", params(("id" = uuid::Uuid, Path, description = "The id the resource was created with")),
    responses((status = 200, body = WorkflowStatusView), (status = 400, description = "A malformed id", body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, description = "Not a draft, or no tasks yet", body = ErrorBody)))]
pub async fn start_workflow(
    State(s): State<AppState>,
    IdPath(id): IdPath,
) -> Answer<WorkflowStatusView> {
    ok(s.service
        .workflow_start(WorkflowIdArgs { workflow_id: id })
        .await?)
}

#[utoipa::path(post, path = "/api/workflows/{id}/phases", tag = "workflows", params(("id" = uuid::Uuid, Path, description = "The id the resource was created with")),
    request_body = PhaseBody,
    responses((status = 201, body = PhaseView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
pub async fn add_phase(
    State(s): State<AppState>,
    IdPath(id): IdPath,
    JsonBody(b): JsonBody<PhaseBody>,
) -> Answer<PhaseView> {
    created(
        s.service
            .workflow_add_phase(WorkflowAddPhaseArgs {
                workflow_id: id,
                phase_id: b.phase_id,
                name: b.name,
                depends_on: b.depends_on,
            })
            .await?,
    )
}

#[utoipa::path(post, path = "/api/workflows/{id}/tasks", tag = "workflows", params(("id" = uuid::Uuid, Path, description = "The id the resource was created with")),
    request_body = WorkflowTaskBody,
    responses((status = 201, body = WorkflowTaskAdded), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
pub async fn add_workflow_task(
    State(s): State<AppState>,
    IdPath(id): IdPath,
    JsonBody(b): JsonBody<WorkflowTaskBody>,
) -> Answer<WorkflowTaskAdded> {
    created(
        s.service
            .workflow_add_task(WorkflowAddTaskArgs {
                workflow_id: id,
                phase_id: b.phase_id,
                name: b.name,
                agent_name: b.agent_name,
                agent_instructions: b.agent_instructions,
                dependencies: b.dependencies,
                priority: b.priority,
                timeout_seconds: b.timeout_seconds,
                max_retries: b.max_retries,
                working_dir: b.working_dir,
                isolation: b.isolation,
                base_ref: b.base_ref,
                metadata: b.metadata,
            })
            .await?,
    )
}

#[utoipa::path(get, path = "/api/workflows/{id}/tasks", tag = "workflows", params(("id" = uuid::Uuid, Path, description = "The workflow_id"), PageQuery),
    responses((status = 200, body = TaskList), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn workflow_tasks(
    State(s): State<AppState>,
    IdPath(id): IdPath,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Answer<TaskList> {
    let q = query(q)?;
    ok(s.service.workflow_tasks(&id, q.limit, q.offset).await?)
}

#[utoipa::path(post, path = "/api/workflows/{id}/cancel", tag = "workflows", params(("id" = uuid::Uuid, Path, description = "The id the resource was created with")),
    responses((status = 400, description = "A malformed id or parameter", body = ErrorBody), (status = 200, body = WorkflowStatusView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn cancel_workflow(
    State(s): State<AppState>,
    IdPath(id): IdPath,
) -> Answer<WorkflowStatusView> {
    ok(s.service
        .workflow_cancel(WorkflowIdArgs { workflow_id: id })
        .await?)
}

#[utoipa::path(get, path = "/api/webhooks/{id}/history", tag = "webhooks",
    params(("id" = uuid::Uuid, Path, description = "A task_id (or a workflow_id)")),
    responses((status = 200, body = WebhookHistory), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn webhook_history(
    State(s): State<AppState>,
    IdPath(id): IdPath,
) -> Answer<WebhookHistory> {
    ok(s.service.webhook_history_of(&id).await?)
}
