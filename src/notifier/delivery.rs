//! Webhook delivery: sends owed outbox events from its own tokio tasks, never in a worker's path.
//!
//! One loop takes due events from the [`Outbox`] and starts one attempt per event (an in-flight
//! set keeps an event from being sent twice at once here). Attempts to one host share a small
//! semaphore, so a dead or slow receiver holds up only its own deliveries. Each attempt's outcome
//! and the event's next state are committed together; the outbox is the only queue, so owed
//! events are resumed after any restart.
//!
//! On a cluster every node runs this loop, and an event is taken with a claim of
//! `2 × timeout + 5 s`, at most [`PER_HOST`] per host per pass and none for a host this node
//! is already sending all it may to (so a slow receiver holds up only its own events). A send starts only if it can end (the request's timeout) a second
//! before the claim does; otherwise the claim is let go unattempted. So two nodes never send
//! one event at once, unless a node is frozen in the middle of a send for longer than its claim.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rand::Rng;
use reqwest::header::{CONTENT_TYPE, USER_AGENT};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use super::outbox::{Outbox, Taken};
use super::signature::WebhookSecret;
use crate::model::{now_us, DeliveryStatus, WebhookAttempt, WebhookEvent};
use crate::runner::http::{error_chain, retry_after};

/// Attempts in flight to one host (`host:port`) at a time.
pub const PER_HOST: usize = 4;
/// Owed events read per pass of the loop.
const BATCH: u32 = 256;
/// The most events a cluster node holds claims on at once: no more than it can send inside
/// their claims, so other nodes take the rest.
const CLAIMS_HELD: usize = 32;
/// A send must be able to end this long before its claim does.
const CLAIM_MARGIN: Duration = Duration::from_secs(1);

/// Delivery settings (the `ORCHESTR8_WEBHOOK_*` variables).
#[derive(Clone)]
pub struct WebhookSettings {
    pub max_attempts: u32,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    pub timeout_ms: u64,
    pub secret: Option<WebhookSecret>,
}

struct Inner {
    outbox: Outbox,
    client: reqwest::Client,
    settings: WebhookSettings,
    wake: Notify,
    in_flight: Mutex<HashSet<String>>,
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Ends the loop: no new attempts start.
    draining: CancellationToken,
    /// Abandons attempts still in flight.
    stop: CancellationToken,
}

/// Cheap to clone; all clones drive the same delivery loop.
#[derive(Clone)]
pub struct Deliverer {
    inner: Arc<Inner>,
}

/// How one attempt ended.
enum Verdict {
    Delivered,
    Retry(Option<Duration>),
    GiveUp,
}

impl Deliverer {
    /// Starts the delivery loop; owed events left by a previous run go out at once.
    pub fn start(outbox: Outbox, settings: WebhookSettings) -> Result<Deliverer, String> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_millis(settings.timeout_ms))
            .build()
            .map_err(|e| format!("could not set up the webhook HTTP client: {e}"))?;
        let d = Deliverer {
            inner: Arc::new(Inner {
                outbox,
                client,
                settings,
                wake: Notify::new(),
                in_flight: Mutex::new(HashSet::new()),
                hosts: Mutex::new(HashMap::new()),
                draining: CancellationToken::new(),
                stop: CancellationToken::new(),
            }),
        };
        tokio::spawn(run(d.inner.clone()));
        Ok(d)
    }

    /// Something new may be owed (a terminal state with a webhook was just committed).
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// Whether an event is being sent or still owed (an engine stays up for these). A store
    /// that cannot tell counts as owing.
    pub async fn owed(&self) -> bool {
        !lock(&self.inner.in_flight).is_empty()
            || self.inner.outbox.owed().await.map_or(true, |n| n > 0)
    }

    /// Stops starting attempts, lets those in flight finish for up to `grace`, then abandons
    /// the rest. Events not yet delivered stay owed in the store for the next start.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.draining.cancel();
        let deadline = Instant::now() + grace;
        while !lock(&self.inner.in_flight).is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        self.inner.stop.cancel();
        // The abandoned attempts let go of their claims (or record what they got) first: a
        // node leaving after this clears whatever claims are left.
        let settled = Instant::now() + Duration::from_secs(1);
        while !lock(&self.inner.in_flight).is_empty() && Instant::now() < settled {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Inner {
    /// How long a cluster node's claim on an event lasts: room for a wait on the host's
    /// semaphore, then one send of at most the timeout.
    fn hold(&self) -> Duration {
        2 * Duration::from_millis(self.settings.timeout_ms) + Duration::from_secs(5)
    }

    /// The hosts this engine is already sending all it may to.
    fn busy_hosts(&self) -> Vec<String> {
        lock(&self.hosts)
            .iter()
            .filter(|(_, sem)| sem.available_permits() == 0)
            .map(|(host, _)| host.clone())
            .collect()
    }
}

async fn run(inner: Arc<Inner>) {
    loop {
        let room = if inner.outbox.claims() {
            CLAIMS_HELD.saturating_sub(lock(&inner.in_flight).len()) as u32
        } else {
            BATCH
        };
        let mut took_any = false;
        let now = now_us();
        let taken = match room {
            0 => Ok(Vec::new()),
            n => {
                let busy = inner.busy_hosts();
                inner.outbox.due(now, n, inner.hold(), &busy).await
            }
        };
        match taken {
            Ok(events) => {
                for taken in events {
                    took_any = true;
                    if lock(&inner.in_flight).insert(taken.event.id.clone()) {
                        tokio::spawn(attempt(inner.clone(), taken));
                    }
                }
            }
            Err(e) => {
                tracing::error!("could not read owed webhooks: {e}");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = inner.draining.cancelled() => break,
                }
            }
        }
        let next = match inner.outbox.next_look(now).await {
            // Events due now that this pass did not take (no room, or another node holds
            // them): an attempt's end wakes the loop, or it looks again shortly.
            Ok(Some(d)) if d.is_zero() && !took_any && inner.outbox.claims() => {
                Some(Duration::from_millis(100))
            }
            Ok(next) => next,
            Err(_) => Some(Duration::from_secs(1)),
        };
        let sleep = async {
            match next {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = inner.wake.notified() => {}
            _ = sleep => {}
            _ = inner.draining.cancelled() => break,
        }
    }
    tracing::debug!("webhook delivery stopped");
}

async fn attempt(inner: Arc<Inner>, taken: Taken) {
    let id = taken.event.id.clone();
    match inner.outbox.current(taken.event).await {
        Ok(Some(ev)) => deliver(&inner, ev, taken.claim_ends).await,
        Ok(None) => {}
        Err(e) => {
            tracing::error!("could not read webhook event {id}: {e}");
            inner.outbox.release(std::slice::from_ref(&id)).await;
        }
    }
    lock(&inner.in_flight).remove(&id);
    inner.wake.notify_one();
}

async fn deliver(inner: &Arc<Inner>, mut ev: WebhookEvent, claim_ends: Option<Instant>) {
    let sem = lock(&inner.hosts)
        .entry(ev.host())
        .or_insert_with(|| Arc::new(Semaphore::new(PER_HOST)))
        .clone();
    let timeout = Duration::from_millis(inner.settings.timeout_ms);
    let sent = async {
        let _permit = sem.acquire_owned().await;
        // A send that could outlast the claim might overlap another node's: let it go instead.
        if claim_ends.is_some_and(|end| Instant::now() + timeout + CLAIM_MARGIN > end) {
            return None;
        }
        Some(send(inner, &ev).await)
    };
    let outcome = tokio::select! {
        o = sent => o,
        _ = inner.stop.cancelled() => None,
    };
    let Some((code, error, verdict, took)) = outcome else {
        inner.outbox.release(std::slice::from_ref(&ev.id)).await;
        return;
    };
    let n = ev.attempts + 1;
    ev.attempts = n;
    ev.last_error = error.clone();
    let mut retry_in = None;
    match verdict {
        Verdict::Delivered => ev.status = DeliveryStatus::Delivered,
        Verdict::Retry(after) if n < inner.settings.max_attempts => {
            retry_in = Some(Duration::from_millis(backoff_ms(&inner.settings, n, after)));
        }
        Verdict::Retry(_) | Verdict::GiveUp => ev.status = DeliveryStatus::Failed,
    }
    let log = WebhookAttempt {
        event_id: ev.id.clone(),
        event_type: ev.event_type.clone(),
        task_id: ev.task_id,
        workflow_id: ev.workflow_id,
        attempt: n,
        url: ev.url.clone(),
        status_code: code,
        error,
        duration_ms: took.as_millis() as u64,
        at_us: now_us(),
    };
    crate::metrics::webhook_attempt(match ev.status {
        DeliveryStatus::Delivered => "delivered",
        DeliveryStatus::Pending => "retry",
        DeliveryStatus::Failed => "failed",
    });
    match ev.status {
        DeliveryStatus::Delivered => {
            tracing::debug!(event = %ev.id, url = %ev.url, attempt = n, "webhook delivered")
        }
        DeliveryStatus::Failed => tracing::warn!(
            event = %ev.id, url = %ev.url, attempt = n,
            "webhook {} not delivered, giving up: {}", ev.event_type,
            ev.last_error.as_deref().unwrap_or("")
        ),
        DeliveryStatus::Pending => {}
    }
    if let Err(e) = inner.outbox.record(log, ev, retry_in).await {
        // The event stays owed as it was; it is sent again (at-least-once delivery).
        tracing::error!("could not record a webhook attempt: {e}");
    }
}

/// One POST: `(status code, error text, verdict, duration)`.
async fn send(
    inner: &Inner,
    ev: &WebhookEvent,
) -> (Option<u16>, Option<String>, Verdict, Duration) {
    let timestamp = chrono::Utc::now().timestamp();
    let mut req = inner
        .client
        .post(&ev.url)
        .timeout(Duration::from_millis(inner.settings.timeout_ms))
        .header(CONTENT_TYPE, "application/json")
        .header(
            USER_AGENT,
            concat!("orchestr8-async/", env!("CARGO_PKG_VERSION")),
        )
        .header("webhook-id", &ev.id)
        .header("webhook-timestamp", timestamp.to_string())
        .body(ev.payload.clone());
    if let Some(secret) = &inner.settings.secret {
        req = req.header(
            "webhook-signature",
            secret.sign(&ev.id, timestamp, &ev.payload),
        );
    }
    let started = Instant::now();
    let res = req.send().await;
    let took = started.elapsed();
    match res {
        Ok(resp) => {
            let status = resp.status();
            let code = Some(status.as_u16());
            if status.is_success() {
                return (code, None, Verdict::Delivered, took);
            }
            let error = Some(format!("HTTP {status}"));
            let verdict = match status.as_u16() {
                408 | 429 => Verdict::Retry(retry_after(resp.headers())),
                s if s >= 500 => Verdict::Retry(retry_after(resp.headers())),
                _ => Verdict::GiveUp,
            };
            (code, error, verdict, took)
        }
        Err(e) => {
            let error = if e.is_timeout() {
                format!(
                    "timed out after {} ms (ORCHESTR8_WEBHOOK_TIMEOUT_MS)",
                    inner.settings.timeout_ms
                )
            } else {
                error_chain(&e)
            };
            (None, Some(error), Verdict::Retry(None), took)
        }
    }
}

/// Full jitter: a random delay in `[0, min(max, base × 2^(n-1))]` after attempt `n`, or the
/// receiver's `retry-after` if that is longer (still within the cap).
fn backoff_ms(s: &WebhookSettings, n: u32, retry_after: Option<Duration>) -> u64 {
    let ceiling = crate::backoff::nominal_ms(s.backoff_base_ms, n, s.backoff_max_ms);
    let jittered = rand::rng().random_range(0..=ceiling);
    let asked = retry_after.map_or(0, |d| d.as_millis() as u64);
    jittered.max(asked).min(s.backoff_max_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn settings() -> WebhookSettings {
        WebhookSettings {
            max_attempts: 8,
            backoff_base_ms: 100,
            backoff_max_ms: 1000,
            timeout_ms: 1000,
            secret: None,
        }
    }

    #[test]
    fn full_jitter_stays_under_the_doubling_ceiling_and_the_cap() {
        let s = settings();
        for _ in 0..500 {
            assert!(backoff_ms(&s, 1, None) <= 100);
            assert!(backoff_ms(&s, 3, None) <= 400);
            assert!(backoff_ms(&s, 20, None) <= 1000);
        }
        assert_eq!(backoff_ms(&s, 1, Some(Duration::from_millis(700))), 700);
        assert_eq!(backoff_ms(&s, 1, Some(Duration::from_secs(60))), 1000);
    }

    #[test]
    fn hosts_include_the_port() {
        let host =
            |url: &str| WebhookEvent::new("t".into(), url, None, None, Value::Null, 0).host();
        assert_eq!(host("http://127.0.0.1:9000/x"), "127.0.0.1:9000");
        assert_eq!(host("https://example.com/x"), "example.com:443");
    }
}
