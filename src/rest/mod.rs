//! The HTTP frontend: the same [`Service`] as the MCP tools, over axum, with
//! bearer-token auth, Prometheus metrics, an OpenAPI document, CORS on request, a body limit, a
//! request time-out and graceful shutdown.

mod error;
mod mcp_http;
pub(crate) mod middleware;
mod openapi;
mod routes;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::service::Service;
pub(crate) use error::ApiError;

/// Largest request body (instructions may be 1 MiB; JSON escaping can double that).
pub(crate) const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Longest a request may take before it is answered 408.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// HTTP settings from the configuration.
#[derive(Clone)]
pub struct RestSettings {
    pub host: String,
    pub port: u16,
    pub token: Option<String>,
    pub cors_origins: Vec<String>,
}

impl std::fmt::Debug for RestSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .field("cors_origins", &self.cors_origins)
            .finish()
    }
}

#[derive(Clone)]
pub struct AppState {
    service: Service,
    /// SHA-256 of the bearer token: comparing digests takes the same time whatever the lengths.
    token_digest: Option<Arc<[u8; 32]>>,
    /// Listening on loopback only: `/metrics` is open.
    loopback: bool,
    /// Origins a browser may call from (`ORCHESTR8_CORS_ORIGINS`).
    origins: Arc<[String]>,
    started: Instant,
}

/// Whether `host` names only this machine.
pub fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Checks the address and binds it, before anything else starts (a taken port or a
/// non-loopback address without a token stops the server at once).
pub async fn bind(settings: &RestSettings) -> anyhow::Result<tokio::net::TcpListener> {
    check(settings)?;
    tokio::net::TcpListener::bind((settings.host.as_str(), settings.port))
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "could not listen on {}:{} ({e}); set ORCHESTR8_PORT to a free port",
                settings.host,
                settings.port
            )
        })
}

/// Refuses settings that must never be served: a non-loopback address without a token, a bad
/// CORS list.
pub fn check(settings: &RestSettings) -> anyhow::Result<()> {
    if !is_loopback(&settings.host) && settings.token.is_none() {
        anyhow::bail!(
            "refusing to listen on {} without ORCHESTR8_API_TOKEN: anyone who can reach it could run agents on this machine. Set ORCHESTR8_API_TOKEN (e.g. `export ORCHESTR8_API_TOKEN=$(openssl rand -hex 32)`) or listen on 127.0.0.1",
            settings.host
        );
    }
    // Fail on a bad CORS list now too.
    cors(&settings.cors_origins)?;
    Ok(())
}

/// Serves until `shutdown` fires, then lets in-flight requests finish.
pub fn serve(
    listener: tokio::net::TcpListener,
    service: Service,
    settings: &RestSettings,
    dashboard: Router,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mcp = mcp_http::service(service.clone(), shutdown.clone(), MAX_BODY_BYTES);
    let state = AppState {
        service,
        token_digest: settings
            .token
            .as_deref()
            .map(|t| Arc::new(middleware::digest(t))),
        loopback: is_loopback(&settings.host),
        origins: settings.cors_origins.clone().into(),
        started: Instant::now(),
    };
    let mut app = router(state, Some(mcp));
    if let Some(c) = cors(&settings.cors_origins)? {
        app = app.layer(c);
    }
    // The dashboard has its own guard (a cookie, the CSRF header) and no CORS: only its own
    // pages use it.
    let app = dashboard.merge(app);
    let addr: SocketAddr = listener.local_addr()?;
    tracing::info!("REST API listening on http://{addr}, MCP on http://{addr}/mcp, dashboard on http://{addr}/dashboard/");
    Ok(spawn_server(listener, app, shutdown, "HTTP server"))
}

/// Serves the REST routes, and `extra` (the engine's internal routes), on the engine's Unix
/// socket: loopback by nature and guarded by the socket file's mode, so without a token.
pub fn serve_local<L>(
    listener: L,
    service: Service,
    extra: Router,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let state = AppState {
        service,
        token_digest: None,
        loopback: true,
        origins: Vec::new().into(),
        started: Instant::now(),
    };
    spawn_server(
        listener,
        router(state, None).merge(extra),
        shutdown,
        "local API",
    )
}

/// Serves `app` on `listener` on its own task until `shutdown`, letting requests in flight
/// finish.
fn spawn_server<L>(
    listener: L,
    app: Router,
    shutdown: CancellationToken,
    what: &'static str,
) -> tokio::task::JoinHandle<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!("{what} stopped: {e}");
        }
    })
}

/// CORS is off unless origins are listed.
fn cors(origins: &[String]) -> anyhow::Result<Option<CorsLayer>> {
    if origins.is_empty() {
        return Ok(None);
    }
    let list = origins
        .iter()
        .map(|o| {
            check_origin(o)?;
            HeaderValue::from_str(o)
                .map_err(|_| anyhow::anyhow!("ORCHESTR8_CORS_ORIGINS: {o:?} is not a valid origin"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(list))
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            // The MCP endpoint's own headers, for a page that speaks MCP to `/mcp`.
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::HeaderName::from_static("mcp-session-id"),
                header::HeaderName::from_static("mcp-protocol-version"),
                header::HeaderName::from_static("last-event-id"),
            ])
            .expose_headers([header::HeaderName::from_static("mcp-session-id")]),
    ))
}

/// An origin is `scheme://host[:port]`, exactly as a browser sends it; `*` is refused (with
/// the API able to start agents, every allowed site must be named).
fn check_origin(o: &str) -> anyhow::Result<()> {
    let hint = "list origins as scheme://host[:port], e.g. http://localhost:5173";
    if o == "*" {
        anyhow::bail!("ORCHESTR8_CORS_ORIGINS: \"*\" is not allowed: any web page could then start agents; {hint}");
    }
    let url = url::Url::parse(o).map_err(|e| {
        anyhow::anyhow!("ORCHESTR8_CORS_ORIGINS: {o:?} is not an origin ({e}); {hint}")
    })?;
    let origin = url.origin().ascii_serialization();
    if !matches!(url.scheme(), "http" | "https") || origin != o {
        anyhow::bail!(
            "ORCHESTR8_CORS_ORIGINS: {o:?} is not an origin (no path, no trailing slash); {hint}"
        );
    }
    Ok(())
}

/// The routes; `mcp` is the MCP endpoint, served on HTTP (sessions on the socket have their own
/// way in).
fn router(state: AppState, mcp: Option<mcp_http::McpHttp>) -> Router {
    let mut api = Router::new()
        .route(
            "/api/tasks",
            post(routes::create_task).get(routes::list_tasks),
        )
        .route(
            "/api/tasks/{id}",
            get(routes::get_task).delete(routes::cancel_task),
        )
        .route("/api/tasks/{id}/retry", post(routes::retry_task))
        .route("/api/tasks/{id}/logs", get(routes::task_logs))
        .route("/api/tasks/{id}/diff", get(routes::task_diff))
        .route("/api/agents", get(routes::list_agents))
        .route(
            "/api/workflows",
            post(routes::create_workflow).get(routes::list_workflows),
        )
        .route("/api/workflows/{id}", get(routes::get_workflow))
        .route("/api/workflows/{id}/status", get(routes::workflow_status))
        .route("/api/workflows/{id}/start", post(routes::start_workflow))
        .route("/api/workflows/{id}/phases", post(routes::add_phase))
        .route(
            "/api/workflows/{id}/tasks",
            post(routes::add_workflow_task).get(routes::workflow_tasks),
        )
        .route("/api/workflows/{id}/cancel", post(routes::cancel_workflow))
        .route("/api/webhooks/{id}/history", get(routes::webhook_history))
        .route("/api/openapi.json", get(openapi_json))
        .route("/metrics", get(metrics));
    if let Some(m) = mcp {
        api = api.route_service("/mcp", m);
    }
    let api = api.route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        middleware::guard,
    ));
    api.route("/health", get(health))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(middleware::record))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{} is not allowed on {}; see /api/openapi.json for the methods of each route",
            req.method(),
            req.uri().path()
        ),
    )
}

async fn not_found(req: Request) -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        format!(
            "no route {} {}; see /api/openapi.json for the routes",
            req.method(),
            req.uri().path()
        ),
    )
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Health {
    status: &'static str,
    version: &'static str,
    uptime_seconds: u64,
    db: String,
}

#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, body = Health), (status = 503, description = "The database does not answer", body = Health)))]
async fn health(State(s): State<AppState>) -> (StatusCode, Json<Health>) {
    let db = s.service.db_health().await;
    let (code, status, db) = match db {
        Ok(()) => (StatusCode::OK, "ok", "ok".to_string()),
        Err(e) => {
            tracing::error!("health check: the database does not answer: {e}");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "degraded",
                "error".to_string(),
            )
        }
    };
    (
        code,
        Json(Health {
            status,
            version: env!("CARGO_PKG_VERSION"),
            uptime_seconds: s.started.elapsed().as_secs(),
            db,
        }),
    )
}

#[utoipa::path(get, path = "/metrics", tag = "operations",
    description = "Open when the server listens on loopback; needs the token elsewhere.",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
async fn metrics(State(s): State<AppState>) -> Response {
    let (pending, running) = s.service.hot_counts();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(pending, running),
    )
        .into_response()
}

#[utoipa::path(get, path = "/api/openapi.json", tag = "operations",
    responses((status = 200, description = "This document")))]
async fn openapi_json(State(s): State<AppState>) -> Response {
    let token = s.token_digest.is_some();
    Json(openapi::document(openapi::Access {
        token,
        metrics_open: !token || s.loopback,
    }))
    .into_response()
}
