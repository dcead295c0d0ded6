//! Prometheus metrics through the `metrics` facade. Recording is a no-op until [`install`] has
//! set the recorder, so library code records unconditionally and tests need no setup.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::model::Task;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Duration buckets in seconds: from a fast command (10 ms) to a long agent run (2 h).
const TASK_BUCKETS: [f64; 12] = [
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 7200.0,
];
const REQUEST_BUCKETS: [f64; 10] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.0,
];

/// Installs the process-wide recorder (once; later calls are no-ops).
pub fn install() {
    if HANDLE.get().is_some() {
        return;
    }
    let built = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("orchestr8_task_duration_seconds".into()),
            &TASK_BUCKETS,
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full("orchestr8_request_duration_seconds".into()),
                &REQUEST_BUCKETS,
            )
        })
        .and_then(|b| b.install_recorder());
    match built {
        Ok(h) => {
            let _ = HANDLE.set(h);
        }
        Err(e) => tracing::warn!("metrics disabled: {e}"),
    }
}

/// The Prometheus text exposition, with the queue gauges set to `(pending, running)`.
pub fn render(pending: usize, running: usize) -> String {
    gauge!("orchestr8_tasks_pending").set(pending as f64);
    gauge!("orchestr8_tasks_running").set(running as f64);
    HANDLE.get().map(|h| h.render()).unwrap_or_default()
}

pub fn task_submitted(agent: &str) {
    counter!("orchestr8_tasks_submitted_total", "agent" => agent.to_string()).increment(1);
}

/// A task reached a terminal state.
pub fn task_finished(t: &Task) {
    let agent = t.agent_name.clone();
    let status = t.status.as_str();
    counter!("orchestr8_tasks_finished_total", "agent" => agent.clone(), "status" => status)
        .increment(1);
    if let (Some(start), Some(end)) = (t.started_us, t.completed_us) {
        histogram!("orchestr8_task_duration_seconds", "agent" => agent, "status" => status)
            .record((end - start).max(0) as f64 / 1e6);
    }
}

/// One webhook delivery attempt: `delivered`, `retry` or `failed`.
pub fn webhook_attempt(outcome: &'static str) {
    counter!("orchestr8_webhook_attempts_total", "outcome" => outcome).increment(1);
}

/// One MCP tool call (`outcome` ok or error) or REST request (`outcome` the status class).
pub fn request(frontend: &'static str, name: String, outcome: &'static str, took: Duration) {
    counter!("orchestr8_requests_total", "frontend" => frontend, "name" => name.clone(), "outcome" => outcome)
        .increment(1);
    histogram!("orchestr8_request_duration_seconds", "frontend" => frontend, "name" => name)
        .record(took.as_secs_f64());
}
