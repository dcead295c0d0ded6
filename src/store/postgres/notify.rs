//! LISTEN/NOTIFY as a wake-up hint between nodes: a transaction that makes tasks ready (an
//! insert, a dependency's end) notifies the channel when it commits, and every node listening
//! looks for work at once instead of at its next poll.
//!
//! Only ever a hint. A notification can be missed (a listener reconnecting, a node starting) and
//! the claim loop's polling finds the task anyway; PostgreSQL folds the notifications of one
//! transaction into one, and a node folds those it has not acted on yet into one wake-up.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

use super::Postgres;
use crate::store::StoreError;

/// The channel: "tasks may be ready".
pub(super) const READY_CHANNEL: &str = "orchestr8_ready";

/// Notifies the channel; sent when the transaction commits (never if it rolls back).
pub(super) async fn notify_ready<C: deadpool_postgres::GenericClient>(
    tx: &C,
) -> Result<(), StoreError> {
    let notify = tx.prepare_cached("SELECT pg_notify($1, '')").await?;
    tx.execute(&notify, &[&READY_CHANNEL]).await?;
    Ok(())
}

impl Postgres {
    /// Wakes `wake` whenever a node says tasks may be ready, until `stop` fires. Runs on a
    /// connection of its own (a listening connection cannot go back to the pool), reconnecting
    /// after a pause when it is lost.
    pub async fn wake_on_ready(&self, wake: Arc<Notify>, stop: CancellationToken) {
        let mut pause = Duration::from_millis(250);
        loop {
            let began = std::time::Instant::now();
            match self.listen_once(&wake, &stop).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::debug!("listening for ready tasks stopped ({e}); polling meanwhile")
                }
            }
            // A connection that served a while starts the back-off afresh.
            if began.elapsed() > Duration::from_secs(60) {
                pause = Duration::from_millis(250);
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(Duration::from_secs(10));
        }
    }

    /// One listening connection's life: `Ok` when stopped, `Err` when the connection failed.
    async fn listen_once(&self, wake: &Notify, stop: &CancellationToken) -> Result<(), StoreError> {
        match &self.tls {
            Some(tls) => {
                let (client, connection) = self.config.connect(tls.clone()).await?;
                listen_on(client, connection, wake, stop).await
            }
            None => {
                let (client, connection) = self.config.connect(tokio_postgres::NoTls).await?;
                listen_on(client, connection, wake, stop).await
            }
        }
    }
}

/// Listens on a connection of its own (with or without TLS) until stopped or lost.
async fn listen_on<S, T>(
    client: tokio_postgres::Client,
    mut connection: tokio_postgres::Connection<S, T>,
    wake: &Notify,
    stop: &CancellationToken,
) -> Result<(), StoreError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    // The connection is driven below while LISTEN is sent.
    let sql = format!("LISTEN {READY_CHANNEL}");
    let listen = client.batch_execute(&sql);
    tokio::pin!(listen);
    let mut listening = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            r = &mut listen, if !listening => {
                r?;
                listening = true;
                // Whatever became ready while nobody listened.
                wake.notify_one();
            }
            m = messages.next() => match m {
                Some(Ok(AsyncMessage::Notification(_))) => wake.notify_one(),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => {
                    return Err(StoreError::Unavailable(
                        "the listening connection closed".into(),
                    ))
                }
            },
        }
    }
}
