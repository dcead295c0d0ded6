//! The stdio transport of a session: one JSON-RPC message per line each way.
//!
//! rmcp's own stdio transport drops a line that is too long or is not JSON without a word, so
//! a client that sent one waits forever for its answer. This one answers every such line with
//! a JSON-RPC error — for the request's id when it can be found — and carries on: a line past
//! [`MAX_LINE_BYTES`] gets an error naming the limit, a line that is not JSON a parse error
//! (without an id, as MCP asks of an error it cannot tie to a request), a JSON line that is not
//! a valid message an invalid-request error for its id. Notifications are never answered, as
//! JSON-RPC requires.

use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Arc;

use futures_util::StreamExt;
use rmcp::model::{ErrorData, RequestId};
use rmcp::service::{RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use rmcp::RoleServer;
use serde_json::Value;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Mutex;
use tokio_util::codec::FramedRead;

use super::framing::{request_id, Frame, Lines};

/// The largest message a session reads: what the HTTP API accepts in a body.
pub const MAX_LINE_BYTES: usize = crate::rest::MAX_BODY_BYTES;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Reads messages from `R`, writes them to `W`.
pub struct LineTransport<R, W> {
    read: FramedRead<R, Lines>,
    write: Arc<Mutex<Option<W>>>,
}

type Reader = Box<dyn tokio::io::AsyncRead + Send + Unpin>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// The session's transport on the process's stdin and stdout.
///
/// An MCP client connects them to pipes (or, from Node.js, to a socket pair each). Those are read
/// and written through the runtime's reactor, like any socket: tokio's own stdin and stdout hand
/// every read and write to a thread of its blocking pool and back, two thread switches per
/// message. Anything else (a terminal, a file) keeps tokio's, so a terminal shared with a
/// shell is never made non-blocking; so does a descriptor whose file another of the three
/// shares (`2>&1`, one socket for all), since the others are written with blocking writes.
pub fn stdio() -> LineTransport<Reader, Writer> {
    use std::os::fd::AsFd;
    let ids = [
        file_id(std::io::stdin().as_fd()),
        file_id(std::io::stdout().as_fd()),
        file_id(std::io::stderr().as_fd()),
    ];
    let alone = |i: usize| ids[i].is_some() && (0..3).all(|j| j == i || ids[j] != ids[i]);
    let read = alone(0)
        .then(|| reactor_stdin(std::io::stdin().as_fd()))
        .flatten()
        .unwrap_or_else(|| Box::new(tokio::io::stdin()));
    let write = alone(1)
        .then(|| reactor_stdout(std::io::stdout().as_fd()))
        .flatten()
        .unwrap_or_else(|| Box::new(tokio::io::stdout()));
    LineTransport::new(read, write)
}

/// Which file a descriptor is open on.
fn file_id(fd: std::os::fd::BorrowedFd<'_>) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::File::from(fd.try_clone_to_owned().ok()?)
        .metadata()
        .ok()?;
    Some((m.dev(), m.ino()))
}

/// What an inherited descriptor is connected to, when the reactor can drive it.
enum Channel {
    Pipe(OwnedFd),
    Socket(std::os::unix::net::UnixStream),
}

/// A duplicate of `fd` (stdin or stdout), if it is a pipe or a socket. The duplicate shares the
/// open file with the original, so making it non-blocking makes that file non-blocking: fine
/// for a pipe end or a socket only this descriptor uses, never done to a terminal.
fn channel(fd: BorrowedFd<'_>) -> Option<Channel> {
    use std::os::unix::fs::FileTypeExt;
    let owned = fd.try_clone_to_owned().ok()?;
    let kind = std::fs::File::from(owned.try_clone().ok()?)
        .metadata()
        .ok()?
        .file_type();
    if kind.is_fifo() {
        Some(Channel::Pipe(owned))
    } else if kind.is_socket() {
        Some(Channel::Socket(std::os::unix::net::UnixStream::from(owned)))
    } else {
        None
    }
}

/// `fd` on the reactor through `make`; if that fails, the file is made blocking again for
/// tokio's own stdin or stdout, which the caller falls back to.
fn on_reactor<T>(
    fd: BorrowedFd<'_>,
    make: impl FnOnce(Channel) -> std::io::Result<T>,
) -> Option<T> {
    let made = make(channel(fd)?);
    if made.is_err() {
        // The flag belongs to the open file, so any descriptor of it clears it (FIONBIO works
        // on pipes as on sockets).
        if let Ok(dup) = fd.try_clone_to_owned() {
            let _ = std::os::unix::net::UnixStream::from(dup).set_nonblocking(false);
        }
    }
    made.ok()
}

/// A socket on the reactor (tokio's pipe types make a pipe non-blocking themselves).
fn reactor_socket(s: std::os::unix::net::UnixStream) -> std::io::Result<tokio::net::UnixStream> {
    s.set_nonblocking(true)?;
    tokio::net::UnixStream::from_std(s)
}

fn reactor_stdin(fd: BorrowedFd<'_>) -> Option<Reader> {
    on_reactor(fd, |c| -> std::io::Result<Reader> {
        Ok(match c {
            Channel::Pipe(fd) => Box::new(tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?),
            Channel::Socket(s) => Box::new(reactor_socket(s)?),
        })
    })
}

fn reactor_stdout(fd: BorrowedFd<'_>) -> Option<Writer> {
    on_reactor(fd, |c| -> std::io::Result<Writer> {
        Ok(match c {
            Channel::Pipe(fd) => Box::new(tokio::net::unix::pipe::Sender::from_owned_fd(fd)?),
            Channel::Socket(s) => Box::new(reactor_socket(s)?),
        })
    })
}

impl<R, W> LineTransport<R, W>
where
    R: tokio::io::AsyncRead + Send + Unpin,
    W: AsyncWrite + Send + Unpin + 'static,
{
    pub fn new(read: R, write: W) -> Self {
        LineTransport {
            read: FramedRead::new(read, Lines::new(MAX_LINE_BYTES)),
            write: Arc::new(Mutex::new(Some(write))),
        }
    }

    /// Answers a line that could not be taken, on its own task: `receive` must not wait on
    /// stdout (it is polled in a `select!` and may be dropped mid-way).
    fn answer(&self, error: ErrorData, id: Option<RequestId>) {
        tracing::warn!(?id, "answering an unreadable request: {}", error.message);
        let send = write_message(
            self.write.clone(),
            TxJsonRpcMessage::<RoleServer>::error(error, id),
        );
        tokio::spawn(async move {
            if let Err(e) = send.await {
                tracing::debug!("could not answer an unreadable request: {e}");
            }
        });
    }

    /// What to do with one whole line: a message for rmcp, or an answer here.
    fn take(&self, line: &[u8]) -> Option<RxJsonRpcMessage<RoleServer>> {
        let line = line.strip_prefix(BOM).unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        let e = match serde_json::from_slice::<RxJsonRpcMessage<RoleServer>>(line) {
            Ok(message) => return Some(message),
            Err(e) => e,
        };
        let Ok(value) = serde_json::from_slice::<Value>(line) else {
            self.answer(
                ErrorData::parse_error(
                    format!(
                        "a line on stdin is not JSON ({e}); send one JSON-RPC message per line"
                    ),
                    None,
                ),
                None,
            );
            return None;
        };
        if !value.is_object() {
            self.answer(
                ErrorData::invalid_request(
                    "a message must be one JSON object (batches are not supported)",
                    None,
                ),
                None,
            );
            return None;
        }
        match value
            .get("id")
            .and_then(|id| serde_json::from_value::<RequestId>(id.clone()).ok())
        {
            Some(id) if value.get("method").is_some() => self.answer(
                ErrorData::invalid_request(format!("not a valid MCP request: {e}"), None),
                Some(id),
            ),
            // A notification, or a response of the client's, that rmcp cannot read: nobody
            // waits for an answer (and clients send notifications servers do not know).
            _ => tracing::debug!("ignored an unreadable message without a request id: {e}"),
        }
        None
    }

    fn oversized(&self, head: &[u8], tail: &[u8], len: usize) {
        let id = request_id(head.strip_prefix(BOM).unwrap_or(head), tail);
        // Only a request is answered: not a notification, nor a response of the client's (no
        // method), which nobody waits on.
        let has = |s: &[u8], what: &[u8]| s.windows(what.len()).any(|w| w == what);
        let method = has(head, b"\"method\"") || has(tail, b"\"method\"");
        let notification = has(head, b"\"notifications/") || has(tail, b"\"notifications/");
        if !method || (notification && id.is_none()) {
            tracing::warn!("dropped a message of {len} bytes, over the limit, that is no request");
            return;
        }
        self.answer(
            ErrorData::invalid_request(
                format!(
                    "request too large: {len} bytes, over the limit of {MAX_LINE_BYTES} bytes \
                     ({} MiB) per message; send less (large instructions can name a file the \
                     agent reads instead)",
                    MAX_LINE_BYTES / (1024 * 1024)
                ),
                Some(serde_json::json!({ "limit_bytes": MAX_LINE_BYTES, "size_bytes": len })),
            ),
            id,
        );
    }
}

/// Writes one message and its newline, and flushes.
async fn write_message<W>(
    write: Arc<Mutex<Option<W>>>,
    message: TxJsonRpcMessage<RoleServer>,
) -> std::io::Result<()>
where
    W: AsyncWrite + Send + Unpin + 'static,
{
    let mut line = serde_json::to_vec(&message).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let mut guard = write.lock().await;
    let w = guard
        .as_mut()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotConnected, "stdout is closed"))?;
    w.write_all(&line).await?;
    w.flush().await
}

impl<R, W> Transport<RoleServer> for LineTransport<R, W>
where
    R: tokio::io::AsyncRead + Send + Unpin,
    W: AsyncWrite + Send + Unpin + 'static,
{
    type Error = std::io::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleServer>,
    ) -> impl std::future::Future<Output = Result<(), Self::Error>> + Send + 'static {
        write_message(self.write.clone(), item)
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleServer>> {
        loop {
            match self.read.next().await? {
                Ok(Frame::Line(line)) => {
                    if let Some(message) = self.take(&line) {
                        return Some(message);
                    }
                }
                Ok(Frame::Oversized { head, tail, len }) => self.oversized(&head, &tail, len),
                Err(e) => {
                    tracing::error!("reading stdin: {e}");
                    return None;
                }
            }
        }
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.write.lock().await.take();
        Ok(())
    }
}
