//! Where the dashboard is served, and its first URL.
//!
//! With HTTP on (`api`/`both` mode) the dashboard is part of the HTTP server. Otherwise (the
//! default stdio setup) nothing listens on a port until somebody asks for the dashboard: then a
//! loopback listener on a free port is opened once and serves until the engine stops.

use std::sync::{Arc, OnceLock};

use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{guard::Keys, router, Viewers, PREFIX};
use crate::service::Service;

/// Where the dashboard is served (`http://host:port`) and the keys of that server.
type Served = (String, Arc<Keys>);

#[derive(Clone)]
pub struct Door {
    service: Service,
    api_token: Option<Arc<str>>,
    viewers: Viewers,
    stop: CancellationToken,
    /// Once served: the base URL and the keys of that server (set once).
    served: Arc<Mutex<Option<Served>>>,
    /// The same keys, readable without waiting (for the engine's needs).
    keys: Arc<OnceLock<Arc<Keys>>>,
    /// The loopback server, when the dashboard has its own (joined at shutdown).
    server: Arc<std::sync::Mutex<Option<JoinHandle<()>>>>,
}

impl Door {
    pub fn new(service: Service, api_token: Option<&str>, stop: CancellationToken) -> Door {
        Door {
            service,
            api_token: api_token.map(Into::into),
            viewers: Viewers::default(),
            stop,
            served: Arc::new(Mutex::new(None)),
            keys: Arc::new(OnceLock::new()),
            server: Arc::default(),
        }
    }

    /// Pages open, plus first URLs handed out and not yet opened (the engine waits for them).
    pub fn needed(&self) -> usize {
        let pending = self
            .keys
            .get()
            .map_or(0, |k| k.pending(std::time::Instant::now()));
        self.viewers.count() + pending
    }

    /// The dashboard's routes for the HTTP server, which listens on `host:port`. Called once,
    /// before anybody can ask for a URL.
    pub async fn routes_for(&self, host: &str, port: u16) -> axum::Router {
        let mut served = self.served.lock().await;
        let (app, keys) = self.routes(host, port);
        *served = Some((base_url(host, port), keys));
        app
    }

    fn routes(&self, host: &str, port: u16) -> (axum::Router, Arc<Keys>) {
        // Only the first server's keys count: `served` is set once, under its lock.
        let keys = self
            .keys
            .get_or_init(|| Arc::new(Keys::new(self.api_token.as_deref(), port, host)))
            .clone();
        let app = router(
            self.service.clone(),
            keys.clone(),
            self.viewers.clone(),
            self.stop.clone(),
        );
        (app, keys)
    }

    /// A first URL (with a new one-time code), opening a loopback listener if nothing serves
    /// the dashboard yet. Refused once the engine is stopping (the address would be dead).
    pub async fn url(&self) -> anyhow::Result<String> {
        let mut served = self.served.lock().await;
        if self.stop.is_cancelled() {
            anyhow::bail!("the engine is stopping");
        }
        if served.is_none() {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
                .await
                .map_err(|e| anyhow::anyhow!("could not listen on a loopback port: {e}"))?;
            let port = listener.local_addr()?.port();
            let (app, keys) = self.routes("127.0.0.1", port);
            let stop = self.stop.clone();
            let handle = tokio::spawn(async move {
                let served = axum::serve(listener, app)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await;
                if let Err(e) = served {
                    tracing::error!("dashboard server stopped: {e}");
                }
            });
            *self.server.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
            tracing::info!("dashboard listening on http://127.0.0.1:{port}{PREFIX}/");
            *served = Some((base_url("127.0.0.1", port), keys));
        }
        let Some((base, keys)) = served.as_ref() else {
            anyhow::bail!("the dashboard is not served");
        };
        let code = keys.mint(std::time::Instant::now());
        Ok(format!("{base}{PREFIX}/?token={code}"))
    }

    /// The loopback server's task, for the engine's shutdown to wait for.
    pub fn take_server(&self) -> Option<JoinHandle<()>> {
        self.server.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// How a browser on this machine reaches `host:port`: an address that means "every
/// interface" is reached on loopback.
fn base_url(host: &str, port: u16) -> String {
    let host = host.trim_matches(['[', ']']);
    let host = match host {
        "0.0.0.0" | "" => "127.0.0.1",
        "::" => "[::1]",
        h if h.contains(':') => return format!("http://[{h}]:{port}"),
        h => h,
    };
    format!("http://{host}:{port}")
}

#[cfg(test)]
mod tests {
    use super::base_url;

    #[test]
    fn urls_a_browser_here_can_open() {
        assert_eq!(base_url("127.0.0.1", 3000), "http://127.0.0.1:3000");
        assert_eq!(base_url("0.0.0.0", 3000), "http://127.0.0.1:3000");
        assert_eq!(base_url("::", 3000), "http://[::1]:3000");
        assert_eq!(base_url("[::1]", 80), "http://[::1]:80");
        assert_eq!(base_url("localhost", 1), "http://localhost:1");
    }
}
