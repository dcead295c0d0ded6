//! The engine's end of the link: the REST API on a Unix domain socket next to the database
//! file (`<db>.sock`, mode 0600), in every mode. It is the door every session and CLI command
//! comes through; the file's permissions are its authentication, so no token is asked for
//! (not even with `ORCHESTR8_API_TOKEN` set). Besides the REST routes it serves the internal
//! [`super::rpc`] routes of sessions.

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

use crate::service::Service;

/// Longest socket path the kernel accepts (`sun_path` is 108 bytes with its terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The bound socket; its file is removed when this is dropped (a clean stop, or a start that
/// fails after binding), unless another socket has replaced it meanwhile.
pub struct LocalSocket {
    listener: Option<UnixListener>,
    path: PathBuf,
    inode: u64,
}

impl Drop for LocalSocket {
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        let ours = std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.inode);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds the socket, replacing a stale one a dead engine left behind. Call only while holding
/// the database (the DuckDB file lock), so that no live engine can own the path.
///
/// The socket is created 0600 in a private folder and renamed into place, so nobody can
/// connect in a window before its permissions are set. Refused: a folder others may write to
/// (someone could put their own socket there), a path that is not a socket, or a socket that
/// answers.
pub fn bind(path: &Path) -> anyhow::Result<LocalSocket> {
    use std::os::unix::fs::MetadataExt;
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        anyhow::bail!(
            "socket path {} is longer than {MAX_SOCKET_PATH} bytes; use a shorter ORCHESTR8_DB_PATH",
            path.display()
        );
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir_mode = std::fs::metadata(dir)?.permissions().mode();
    if dir_mode & 0o022 != 0 {
        anyhow::bail!(
            "{} is writable by other users; keep the database in a private folder",
            dir.display()
        );
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => {
            anyhow::bail!("{} exists and is not a socket; remove it", path.display())
        }
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => anyhow::bail!(
                "{} is served by another process; stop it or use another ORCHESTR8_DB_PATH",
                path.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                tracing::info!("replacing stale socket {}", path.display());
            }
            Err(e) => anyhow::bail!("cannot tell whether {} is in use: {e}", path.display()),
        },
        Err(_) => {}
    }
    let staging = dir.join(format!(".o8-sock-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::DirBuilder::new().mode(0o700).create(&staging)?;
    let staged = staging.join("s");
    let bound = (|| -> std::io::Result<UnixListener> {
        let listener = UnixListener::bind(&staged)?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&staged, path)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&staging);
    let listener = bound?;
    let inode = std::fs::symlink_metadata(path)?.ino();
    Ok(LocalSocket {
        listener: Some(listener),
        path: path.to_path_buf(),
        inode,
    })
}

/// Serves the API on the socket until `shutdown`. The socket file stays until `socket` is
/// dropped.
pub fn serve(
    socket: &mut LocalSocket,
    service: Service,
    rpc: axum::Router,
    shutdown: CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    let listener = SameUser {
        listener: socket.listener.take()?,
        uid: nix::unistd::geteuid().as_raw(),
    };
    tracing::info!("local API on unix socket {}", socket.path.display());
    Some(crate::rest::serve_local(listener, service, rpc, shutdown))
}

/// The socket's listener, admitting only processes of the engine's own user. The file's mode
/// already keeps others out; the peer's credentials (`SO_PEERCRED`, taken by the kernel at
/// connect) are checked as well, so that a socket reachable by mistake — a folder whose
/// permissions were loosened, or root, whom modes do not stop — still opens no door into
/// another user's engine.
pub struct SameUser {
    listener: UnixListener,
    uid: u32,
}

impl axum::serve::Listener for SameUser {
    type Io = tokio::net::UnixStream;
    type Addr = tokio::net::unix::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, addr) = axum::serve::Listener::accept(&mut self.listener).await;
            match stream.peer_cred() {
                Ok(peer) if peer.uid() == self.uid => return (stream, addr),
                Ok(peer) => tracing::warn!(
                    "refused a connection on the socket from uid {} (pid {:?}): only uid {}, \
                     the engine's own user, may use it",
                    peer.uid(),
                    peer.pid(),
                    self.uid
                ),
                Err(e) => tracing::warn!(
                    "refused a connection on the socket whose user could not be read: {e}"
                ),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}
