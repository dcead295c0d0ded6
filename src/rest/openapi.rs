//! The OpenAPI document, generated from the route annotations and the request/response types.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::routes;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "orchestr8-async",
        description = "Durable background agents: tasks, workflows and webhooks over HTTP. The same operations as the MCP tools. /api/* needs `Authorization: Bearer <ORCHESTR8_API_TOKEN>` when a token is set."
    ),
    paths(
        routes::create_task,
        routes::list_tasks,
        routes::get_task,
        routes::cancel_task,
        routes::retry_task,
        routes::task_logs,
        routes::task_diff,
        routes::list_agents,
        routes::create_workflow,
        routes::list_workflows,
        routes::get_workflow,
        routes::workflow_status,
        routes::start_workflow,
        routes::add_phase,
        routes::add_workflow_task,
        routes::workflow_tasks,
        routes::cancel_workflow,
        routes::webhook_history,
        super::health,
        super::metrics,
        super::openapi_json,
    ),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        if let Some(c) = doc.components.as_mut() {
            c.add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc
}
