//! The OpenAPI document, generated from the route annotations and the request/response types,
//! then completed with what holds for every operation of this server as it is configured: the
//! security it really asks for (a bearer token only when one is set) and the error answers any
//! operation can give (a refused browser request, a body too large or not JSON, a time-out, a
//! store that does not answer). So a client generated from it, or a fuzzer checking the server
//! against it, sees exactly what the server does.

use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response, ResponseBuilder};
use utoipa::OpenApi;

use super::routes;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "orchestr8-async",
        description = "Durable background agents: tasks, workflows and webhooks over HTTP. The same operations as the MCP tools. When the server has a token (ORCHESTR8_API_TOKEN), /api/* needs `Authorization: Bearer <token>`, and this document says so."
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
    )
)]
struct ApiDoc;

/// The access rules the document describes.
#[derive(Debug, Clone, Copy)]
pub struct Access {
    /// A bearer token is required (`ORCHESTR8_API_TOKEN` is set).
    pub token: bool,
    /// `/metrics` is open without the token (the server listens on loopback).
    pub metrics_open: bool,
}

fn error(description: &str) -> RefOr<Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build(),
    )
}

/// Adds `code` unless the operation documents it already.
fn answers(op: &mut Operation, code: u16, description: &str) {
    op.responses
        .responses
        .entry(code.to_string())
        .or_insert_with(|| error(description));
}

/// What every operation of `path` can answer besides its own results, and who may call it.
fn complete(path: &str, op: &mut Operation, access: Access) {
    let open = path == "/health" || (path == "/metrics" && access.metrics_open);
    if access.token && !open {
        op.security = Some(vec![SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
        answers(op, 401, "Missing or wrong bearer token");
    } else {
        op.security = Some(vec![SecurityRequirement::default()]);
    }
    // Every route but /health passes the browser checks, /metrics included.
    if path != "/health" {
        answers(
            op,
            403,
            "Refused: a web page of an origin not allowed by ORCHESTR8_CORS_ORIGINS, or, without a token, a Host header that does not name this machine",
        );
    }
    if op.request_body.is_some() {
        answers(
            op,
            400,
            "Invalid input: the message says which field and why",
        );
        answers(op, 413, "The body is over 4 MiB");
        answers(op, 415, "The body was not sent as application/json");
    }
    if op.parameters.as_ref().is_some_and(|p| !p.is_empty()) {
        answers(
            op,
            400,
            "Invalid input: the message says which parameter and why",
        );
    }
    if path.starts_with("/api/") {
        answers(
            op,
            408,
            "The request took longer than 60 s (it may still take effect: check before repeating it)",
        );
        answers(
            op,
            503,
            "The database does not answer, or the server is stopping",
        );
    }
}

/// The document for a server with these access rules, as JSON.
pub fn document(access: Access) -> serde_json::Value {
    let mut doc = serde_json::to_value(typed_document(access)).unwrap_or_default();
    // What the annotations cannot say: the form of each phase id in `depends_on`.
    if let Some(items) =
        doc.pointer_mut("/components/schemas/PhaseBody/properties/depends_on/items")
    {
        items["pattern"] = serde_json::json!(PHASE_ID_PATTERN);
    }
    doc
}

/// The form of a phase id (and an agent name), as the service checks it.
const PHASE_ID_PATTERN: &str = "^[a-z0-9][a-z0-9._-]{0,63}$";

fn typed_document(access: Access) -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    if access.token {
        if let Some(c) = doc.components.as_mut() {
            c.add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
    for (path, item) in doc.paths.paths.iter_mut() {
        let ops = [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
            &mut item.head,
            &mut item.options,
            &mut item.trace,
        ];
        for op in ops.into_iter().flatten() {
            complete(path, op, access);
        }
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn operation<'a>(
        doc: &'a serde_json::Value,
        path: &str,
        method: &str,
    ) -> &'a serde_json::Value {
        &doc["paths"][path][method]
    }

    #[test]
    fn security_is_declared_only_when_a_token_is_set() {
        let open = document(Access {
            token: false,
            metrics_open: true,
        });
        assert!(open["components"]["securitySchemes"].is_null());
        let get = operation(&open, "/api/tasks", "get");
        assert_eq!(get["security"], serde_json::json!([{}]));
        assert!(get["responses"]["401"].is_null());

        let guarded = document(Access {
            token: true,
            metrics_open: false,
        });
        assert_eq!(
            guarded["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        let get = operation(&guarded, "/api/tasks", "get");
        assert_eq!(get["security"], serde_json::json!([{"bearer": []}]));
        assert!(get["responses"]["401"].is_object());
        let metrics = operation(&guarded, "/metrics", "get");
        assert_eq!(metrics["security"], serde_json::json!([{"bearer": []}]));
        let health = operation(&guarded, "/health", "get");
        assert_eq!(health["security"], serde_json::json!([{}]));
        assert!(health["responses"]["401"].is_null());
    }

    #[test]
    fn ids_in_paths_are_uuids_and_bodies_can_be_refused() {
        let doc = document(Access {
            token: false,
            metrics_open: true,
        });
        let get = operation(&doc, "/api/tasks/{id}", "get");
        assert_eq!(get["parameters"][0]["schema"]["format"], "uuid");
        let post = operation(&doc, "/api/tasks", "post");
        for code in ["400", "403", "408", "413", "415", "503"] {
            assert!(post["responses"][code].is_object(), "{code}");
        }
        let depends_on = &doc["components"]["schemas"]["PhaseBody"]["properties"]["depends_on"];
        assert_eq!(depends_on["items"]["pattern"], PHASE_ID_PATTERN);
    }

    #[test]
    fn the_documented_patterns_are_those_the_service_checks() {
        let doc = document(Access {
            token: false,
            metrics_open: true,
        });
        let schemas = &doc["components"]["schemas"];
        for (schema, field) in [
            ("TaskAsyncArgs", "webhook_url"),
            ("WorkflowCreateArgs", "webhook_url"),
        ] {
            assert_eq!(
                schemas[schema]["properties"][field]["pattern"],
                crate::service::WEBHOOK_URL_PATTERN,
                "{schema}.{field}"
            );
        }
        assert_eq!(
            schemas["TaskAsyncArgs"]["properties"]["agent_name"]["pattern"],
            PHASE_ID_PATTERN
        );
    }
}
