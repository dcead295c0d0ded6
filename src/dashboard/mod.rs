//! The dashboard: a web view of the engine's tasks, workflows and agents, served by the engine
//! itself under `/dashboard/` — on the HTTP port in `api`/`both` mode, and otherwise on a
//! loopback port opened when the `dashboard` command first asks for it (see [`Door`]).
//!
//! It is a frontend like the REST API: every read and every action is a [`Service`] call (the
//! actions are the tools' own `task_cancel`, `task_retry` and `workflow_cancel`, so they are
//! validated and refused alike). The page is one HTML file, one script and one style sheet,
//! compiled into the binary (`assets/`); nothing is fetched from anywhere else. Pages follow the
//! engine's change feed over server-sent events ([`live`]). Access is guarded by [`guard`].

mod door;
pub mod guard;
mod live;
mod markdown;
mod pages;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::service::Service;
pub use door::Door;
use guard::{Keys, Seen};

/// Where the dashboard lives on its server.
pub const PREFIX: &str = "/dashboard";

/// Counts the pages following the live feed: an open dashboard keeps a detached engine up, as
/// an attached session does.
#[derive(Clone, Default)]
pub struct Viewers(Arc<AtomicUsize>);

impl Viewers {
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }

    fn enter(&self) -> ViewerGuard {
        self.0.fetch_add(1, Ordering::SeqCst);
        ViewerGuard(self.0.clone())
    }
}

/// One viewer, for as long as its event stream lives.
struct ViewerGuard(Arc<AtomicUsize>);

impl Drop for ViewerGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Clone)]
struct Dash {
    service: Service,
    keys: Arc<Keys>,
    viewers: Viewers,
    /// Ends the event streams when the server stops (a graceful shutdown waits for every
    /// response, and an event stream never ends by itself).
    stop: CancellationToken,
}

/// The dashboard's routes, to be served at the root of a server (they all start with
/// [`PREFIX`]).
pub fn router(
    service: Service,
    keys: Arc<Keys>,
    viewers: Viewers,
    stop: CancellationToken,
) -> Router {
    let state = Dash {
        service,
        keys,
        viewers,
        stop,
    };
    let api = Router::new()
        .route("/dashboard/api/session", get(pages::session))
        .route("/dashboard/api/overview", get(pages::overview))
        .route("/dashboard/api/facets", get(pages::facets))
        .route("/dashboard/api/tasks", get(pages::tasks))
        .route("/dashboard/api/tasks/{id}", get(pages::task))
        .route("/dashboard/api/tasks/{id}/logs", get(pages::logs))
        .route("/dashboard/api/tasks/{id}/diff", get(pages::diff))
        .route("/dashboard/api/tasks/{id}/cancel", post(pages::cancel))
        .route("/dashboard/api/tasks/{id}/retry", post(pages::retry))
        .route("/dashboard/api/workflows", get(pages::workflows))
        .route("/dashboard/api/workflows/{id}", get(pages::workflow))
        .route(
            "/dashboard/api/workflows/{id}/cancel",
            post(pages::cancel_workflow),
        )
        .route("/dashboard/api/agents", get(pages::agents))
        .route("/dashboard/api/events", get(live::events))
        .route("/dashboard/api/{*rest}", get(pages::no_such_data))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard_api,
        ));
    Router::new()
        .route("/dashboard", get(pages::to_root))
        .route("/dashboard/", get(pages::page))
        .route("/dashboard/assets/{name}", get(pages::asset))
        .route("/dashboard/{*rest}", get(pages::page))
        .merge(api)
        .with_state(state)
}

/// What the guard looks at; `query`: the request's query string (the event stream gives the
/// page key as `k`, having no way to send a header).
fn seen<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Seen<'a> {
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let from_query = query.and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("k="))
            .filter(|k| k.bytes().all(|b| b.is_ascii_hexdigit()))
    });
    Seen {
        host: h(header::HOST.as_str()),
        cookie: h(header::COOKIE.as_str()),
        authorization: h(header::AUTHORIZATION.as_str()),
        origin: h(header::ORIGIN.as_str()),
        sec_fetch_site: h("sec-fetch-site"),
        key: h(guard::KEY_HEADER).or(from_query),
    }
}

/// Guards the data routes: signed in to read, and from the dashboard's own page to change.
async fn guard_api(State(d): State<Dash>, req: Request, next: Next) -> Response {
    let change =
        req.method() != axum::http::Method::GET && req.method() != axum::http::Method::HEAD;
    match d
        .keys
        .check(&seen(req.headers(), req.uri().query()), change)
    {
        Ok(()) => {
            let mut resp = next.run(req).await;
            resp.headers_mut().insert(
                header::CACHE_CONTROL,
                header::HeaderValue::from_static("no-store"),
            );
            resp
        }
        Err(r) => {
            let code = match r {
                guard::Refusal::NotSignedIn => StatusCode::UNAUTHORIZED,
                _ => StatusCode::FORBIDDEN,
            };
            (
                code,
                axum::Json(serde_json::json!({ "error": r.message() })),
            )
                .into_response()
        }
    }
}
