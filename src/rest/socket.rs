//! The engine's local endpoint: the same REST API on a Unix domain socket next to the database
//! file (`<db>.sock`, mode 0600), in every mode. It is the door later processes on the same
//! file (a second Claude Code window, the CLI) will come through; the file's permissions are
//! its authentication, so no token is asked for.

use std::path::{Path, PathBuf};
use std::time::Instant;

use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

use super::{router, AppState};
use crate::service::Service;

/// Longest socket path the kernel accepts (`sun_path` is 108 bytes with its terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// `<db>.sock`, next to the database file.
pub fn socket_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(".sock");
    PathBuf::from(p)
}

/// Binds the socket, replacing a stale one a dead engine left behind. Call only while holding
/// the database (the DuckDB file lock), so that no live engine can own the path.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        anyhow::bail!(
            "socket path {} is longer than {MAX_SOCKET_PATH} bytes; use a shorter ORCHESTR8_DB_PATH",
            path.display()
        );
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "{} is served by another process; stop it or use another ORCHESTR8_DB_PATH",
                path.display()
            );
        }
        tracing::info!("removing stale socket {}", path.display());
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves the API on `listener` until `shutdown`, then removes the socket file.
pub fn serve(
    listener: UnixListener,
    path: PathBuf,
    service: Service,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let state = AppState {
        service,
        token_digest: None,
        loopback: true,
        origins: Vec::new().into(),
        started: Instant::now(),
    };
    let app = router(state);
    tracing::info!("local API on unix socket {}", path.display());
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!("local API stopped: {e}");
        }
        let _ = std::fs::remove_file(&path);
    })
}
