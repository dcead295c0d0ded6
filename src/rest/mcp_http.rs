//! MCP over Streamable HTTP at `/mcp`, so that a client can connect to a running engine with
//! no process of its own (`claude mcp add --transport http`). It is mounted among the guarded
//! routes: the bearer token, the `Origin` check and (without a token) the `Host` check of
//! `/api/*` apply to it alike, which is why rmcp's own host and origin lists are left empty.
//!
//! Sessions live in memory (rmcp's local session manager): when the engine restarts, a client
//! initializes again, as the protocol has it for an unknown session id. Tasks are in the
//! database, so nothing else is lost.

use std::sync::Arc;
use std::time::Duration;

use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use crate::frontend::Backend;
use crate::mcp::McpServer;
use crate::service::Service;

pub type McpHttp = StreamableHttpService<McpServer, LocalSessionManager>;

/// A session with no message for this long is forgotten (its client went without ending it).
/// A session sees no message while a call blocks — a `task_wait` for up to 10 minutes, a
/// `task_run` without a progress token for as long as its task takes (up to a day of running,
/// after its wait in the queue) — and the default of 5 minutes would cut such a call off.
const SESSION_IDLE: Duration = Duration::from_secs(48 * 3600);

/// The `/mcp` endpoint on `service`. Cancelling `shutdown` ends every open session and
/// stream, so that a graceful stop is not held up by a client's idle event stream.
pub fn service(service: Service, shutdown: CancellationToken, max_body: usize) -> McpHttp {
    let config = StreamableHttpServerConfig::default()
        .disable_allowed_hosts()
        .disable_allowed_origins()
        .with_cancellation_token(shutdown)
        .with_max_request_body_bytes(max_body);
    let mut sessions = LocalSessionManager::default();
    sessions.session_config.keep_alive = Some(SESSION_IDLE);
    StreamableHttpService::new(
        move || Ok(McpServer::new(Backend::local(service.clone()))),
        Arc::new(sessions),
        config,
    )
}
