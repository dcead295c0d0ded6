//! The dashboard's handlers: the page (one HTML file for every address; the script draws the
//! view the path names), its assets, and the JSON it reads, each a thin adapter onto one
//! [`Service`](crate::service::Service) call.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{markdown, seen, Dash, PREFIX};
use crate::api::dashboard::TaskPageArgs;
use crate::api::{ListWorkflowsArgs, TaskDiffArgs, TaskIdArgs, TaskLogsArgs, WorkflowIdArgs};
use crate::rest::ApiError;

const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/style.css");
const ICON: &str = include_str!("assets/icon.svg");

/// What the page may do: its own script and styles, requests to its own origin, nothing else.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

type Answer<T> = Result<Json<T>, ApiError>;

pub fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(v)| v)
        .map_err(|e| ApiError::bad_request(format!("invalid query string: {}", e.body_text())))
}

pub async fn to_root() -> Redirect {
    Redirect::to(&format!("{PREFIX}/"))
}

#[derive(Deserialize)]
pub struct TokenQuery {
    token: Option<String>,
}

/// Every page address: signs the browser in when the address carries the token, and otherwise
/// serves the page to a signed-in browser only.
pub async fn page(State(d): State<Dash>, req: Request) -> Response {
    let token = Query::<TokenQuery>::try_from_uri(req.uri())
        .ok()
        .and_then(|q| q.0.token);
    let seen = seen(req.headers(), None);
    if let Some(token) = token {
        if let Err(r) = d.keys.check_host(&seen) {
            return refused_page(StatusCode::FORBIDDEN, &r.message());
        }
        // The address without the token, other parameters kept.
        let others: Vec<&str> = req
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|kv| !kv.is_empty() && !kv.starts_with("token="))
            .collect();
        let path = match others.is_empty() {
            true => req.uri().path().to_string(),
            false => format!("{}?{}", req.uri().path(), others.join("&")),
        };
        if !d.keys.opens(&token, std::time::Instant::now()) {
            // An old address opened again in a browser that is signed in: just the page.
            if d.keys.check_page(&seen).is_ok() {
                return Redirect::to(&path).into_response();
            }
            return refused_page(
                StatusCode::UNAUTHORIZED,
                "this address has been used already, or is older than five minutes, or its engine has stopped: each address signs in one browser once. Run `orchestr8-async-server dashboard` for a new one.",
            );
        }
        // The same page without the token (kept neither in the history nor in a Referer),
        // with the page key in the fragment, which never reaches a server.
        let to = format!("{path}#k={}", d.keys.key());
        let mut resp = Redirect::to(&to).into_response();
        if let Ok(v) = HeaderValue::from_str(&d.keys.set_cookie()) {
            resp.headers_mut().insert(header::SET_COOKIE, v);
        }
        return resp;
    }
    match d.keys.check_page(&seen) {
        Ok(()) => (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CONTENT_SECURITY_POLICY, CSP),
                (header::CACHE_CONTROL, "no-store"),
                (header::REFERRER_POLICY, "no-referrer"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            INDEX,
        )
            .into_response(),
        Err(r) => refused_page(
            match r {
                super::guard::Refusal::NotSignedIn => StatusCode::UNAUTHORIZED,
                _ => StatusCode::FORBIDDEN,
            },
            &r.message(),
        ),
    }
}

/// A page that says why it is not the dashboard, and what to do.
fn refused_page(code: StatusCode, why: &str) -> Response {
    let why = why
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('`', "");
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>orchestr8 dashboard</title>\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <link rel=\"stylesheet\" href=\"{PREFIX}/assets/style.css\"></head>\
         <body><main class=\"refused\"><h1>orchestr8 dashboard</h1><p id=\"refused\">{why}</p></main></body></html>"
    );
    (
        code,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
        ],
        html,
    )
        .into_response()
}

/// The page's script, style sheet and icon (not secret: they hold no data).
pub async fn asset(Path(name): Path<String>) -> Response {
    let (body, kind) = match name.as_str() {
        "app.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "style.css" => (STYLE, "text/css; charset=utf-8"),
        "icon.svg" => (ICON, "image/svg+xml"),
        _ => return (StatusCode::NOT_FOUND, "no such asset").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            // Assets change with the binary: revalidated, not cached for long.
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

pub async fn no_such_data(req: Request) -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        format!("no dashboard data at {}", req.uri().path()),
    )
}

#[derive(Serialize)]
pub struct Session {
    version: &'static str,
}

/// Whether the page is signed in (it asks first), and the engine's version.
pub async fn session() -> Json<Session> {
    Json(Session {
        version: env!("CARGO_PKG_VERSION"),
    })
}

pub async fn overview(State(d): State<Dash>) -> Answer<crate::api::dashboard::DashOverview> {
    Ok(Json(d.service.dashboard_overview().await?))
}

pub async fn facets(State(d): State<Dash>) -> Answer<crate::api::dashboard::TaskFacets> {
    Ok(Json(d.service.dashboard_facets().await?))
}

pub async fn tasks(
    State(d): State<Dash>,
    q: Result<Query<TaskPageArgs>, QueryRejection>,
) -> Answer<crate::api::dashboard::TaskPage> {
    Ok(Json(d.service.dashboard_tasks(query(q)?).await?))
}

/// A task, with its result also as HTML.
#[derive(Serialize)]
pub struct TaskWithHtml {
    #[serde(flatten)]
    task: crate::api::dashboard::DashTask,
    result_html: Option<String>,
}

pub async fn task(State(d): State<Dash>, Path(id): Path<String>) -> Answer<TaskWithHtml> {
    let task = d.service.dashboard_task(&id).await?;
    let result_html = task.task.result.as_deref().map(markdown::to_html);
    Ok(Json(TaskWithHtml { task, result_html }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    after_seq: Option<i64>,
    limit: Option<i64>,
}

pub async fn logs(
    State(d): State<Dash>,
    Path(id): Path<String>,
    q: Result<Query<LogsQuery>, QueryRejection>,
) -> Answer<crate::api::TaskLogs> {
    let q = query(q)?;
    Ok(Json(
        d.service
            .task_logs(TaskLogsArgs {
                task_id: id,
                after_seq: q.after_seq,
                limit: q.limit,
            })
            .await?,
    ))
}

pub async fn diff(State(d): State<Dash>, Path(id): Path<String>) -> Answer<crate::api::TaskDiff> {
    Ok(Json(
        d.service
            .task_diff(TaskDiffArgs {
                task_id: id,
                paths: None,
                max_bytes: None,
            })
            .await?,
    ))
}

pub async fn cancel(
    State(d): State<Dash>,
    Path(id): Path<String>,
) -> Answer<crate::model::TaskView> {
    Ok(Json(
        d.service.task_cancel(TaskIdArgs { task_id: id }).await?,
    ))
}

pub async fn retry(
    State(d): State<Dash>,
    Path(id): Path<String>,
) -> Answer<crate::model::TaskView> {
    Ok(Json(
        d.service.task_retry(TaskIdArgs { task_id: id }).await?,
    ))
}

pub async fn workflows(
    State(d): State<Dash>,
    q: Result<Query<ListWorkflowsArgs>, QueryRejection>,
) -> Answer<crate::api::WorkflowList> {
    Ok(Json(d.service.list_workflows(query(q)?).await?))
}

pub async fn workflow(
    State(d): State<Dash>,
    Path(id): Path<String>,
) -> Answer<crate::api::WorkflowStatusView> {
    Ok(Json(
        d.service
            .workflow_status(WorkflowIdArgs { workflow_id: id })
            .await?,
    ))
}

pub async fn cancel_workflow(
    State(d): State<Dash>,
    Path(id): Path<String>,
) -> Answer<crate::api::WorkflowStatusView> {
    Ok(Json(
        d.service
            .workflow_cancel(WorkflowIdArgs { workflow_id: id })
            .await?,
    ))
}

pub async fn agents(State(d): State<Dash>) -> Answer<crate::api::dashboard::AgentTable> {
    Ok(Json(d.service.dashboard_agents().await?))
}
