//! The pruner: keeps a database to its retention period (`ORCHESTR8_RETENTION`) by removing
//! finished work that ended longer ago, in the background, in small batches (see
//! [`Scheduler::prune_before`], and on a cluster `Postgres::prune_batch`, which every node runs:
//! the batches skip each other's rows), so the scheduler and the writes of running work never
//! wait on it for long. Without a retention period it does not run and everything is kept.

use std::fmt;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::model::now_us;
use crate::scheduler::{SchedError, Scheduler};
use crate::store::prune::Pruned;

/// What the pruner keeps to a period: the single engine's scheduler, or a cluster node.
pub trait Prunes: Send + Sync + 'static {
    /// Removes, batch by batch, the finished work that ended more than `period` ago.
    fn prune_older_than(
        &self,
        period: Duration,
    ) -> impl std::future::Future<Output = Result<Pruned, SchedError>> + Send;
}

impl Prunes for Scheduler {
    async fn prune_older_than(&self, period: Duration) -> Result<Pruned, SchedError> {
        self.prune_before(now_us() - period.as_micros() as i64)
            .await
    }
}

impl Prunes for Cluster {
    async fn prune_older_than(&self, period: Duration) -> Result<Pruned, SchedError> {
        Ok(Cluster::prune_older_than(self, period).await?.0)
    }
}

/// How long finished work is kept; `None` is for ever (the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention(Option<Duration>);

impl Retention {
    pub fn period(&self) -> Option<Duration> {
        self.0
    }
}

/// The units a period may be written in.
const UNITS: [(&str, u64); 5] = [
    ("s", 1),
    ("m", 60),
    ("h", 3600),
    ("d", 86_400),
    ("w", 7 * 86_400),
];

/// Reads a period: a whole number and a unit (`90s`, `45m`, `12h`, `30d`, `2w`), or `forever`.
pub fn parse_period(text: &str) -> Result<Retention, String> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("forever") {
        return Ok(Retention(None));
    }
    let wrong = || {
        format!(
            "{text:?} is not a period: write a whole number and a unit — s, m, h, d or w \
             (90s, 12h, 30d, 2w) — or \"forever\" to keep everything"
        )
    };
    let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(wrong)?;
    let (number, unit) = t.split_at(split);
    let n: u64 = number.parse().map_err(|_| wrong())?;
    let (_, seconds) = UNITS
        .iter()
        .find(|(u, _)| *u == unit.trim())
        .ok_or_else(wrong)?;
    match n.checked_mul(*seconds) {
        Some(0) => Err(format!(
            "{text:?}: a retention period must be longer than zero (\"forever\" keeps everything)"
        )),
        Some(s) if s <= 100 * 365 * 86_400 => Ok(Retention(Some(Duration::from_secs(s)))),
        _ => Err(format!(
            "{text:?} is longer than a hundred years; use \"forever\""
        )),
    }
}

impl fmt::Display for Retention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("forever"),
            Some(d) => write!(f, "{}s", d.as_secs()),
        }
    }
}

/// How often the pruner looks: a quarter of the period, between one second and a minute.
pub fn interval(period: Duration) -> Duration {
    (period / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// The running pruner; [`Pruner::stop`] ends it between batches.
pub struct Pruner {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Pruner {
    /// Starts the pruner of `target` if there is a retention `period`.
    pub fn start(target: impl Prunes, period: Option<Duration>) -> Option<Pruner> {
        let period = period?;
        let stop = CancellationToken::new();
        let every = interval(period);
        tracing::info!(
            "keeping finished work for {}s, looking every {}s",
            period.as_secs(),
            every.as_secs()
        );
        let token = stop.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                tokio::select! {
                    _ = token.cancelled() => return,
                    r = target.prune_older_than(period) => match r {
                        Ok(p) if p.tasks + p.workflows > 0 => tracing::info!(
                            tasks = p.tasks,
                            workflows = p.workflows,
                            log_lines = p.log_lines,
                            webhook_deliveries = p.webhook_deliveries,
                            "pruned finished work older than the retention period"
                        ),
                        Ok(_) => {}
                        Err(e) => tracing::warn!("pruning failed (tried again later): {e}"),
                    },
                }
            }
        });
        Some(Pruner { stop, task })
    }

    /// Stops it. A batch cut short is harmless: its removal is one journaled write, made
    /// or not.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_read_with_their_units() {
        let secs = |t: &str| parse_period(t).unwrap().period().map(|d| d.as_secs());
        assert_eq!(secs("90s"), Some(90));
        assert_eq!(secs(" 12h "), Some(43_200));
        assert_eq!(secs("30d"), Some(2_592_000));
        assert_eq!(secs("2w"), Some(1_209_600));
        assert_eq!(secs("forever"), None);
        assert_eq!(secs("Forever"), None);
    }

    #[test]
    fn wrong_periods_say_how_to_write_one() {
        for bad in ["", "30", "d", "3.5d", "-1d", "30 days", "12x"] {
            let e = parse_period(bad).unwrap_err();
            assert!(e.contains("90s, 12h, 30d, 2w"), "{bad}: {e}");
        }
        assert!(parse_period("0d").unwrap_err().contains("longer than zero"));
        assert!(parse_period("99999999999w")
            .unwrap_err()
            .contains("hundred years"));
    }

    #[test]
    fn a_period_round_trips_through_its_display() {
        for t in ["90s", "30d", "forever"] {
            let r = parse_period(t).unwrap();
            assert_eq!(parse_period(&r.to_string()).unwrap(), r);
        }
    }

    #[test]
    fn the_pruner_looks_a_few_times_per_period() {
        assert_eq!(interval(Duration::from_secs(2)), Duration::from_secs(1));
        assert_eq!(interval(Duration::from_secs(120)), Duration::from_secs(30));
        assert_eq!(
            interval(Duration::from_secs(86_400)),
            Duration::from_secs(60)
        );
    }
}
