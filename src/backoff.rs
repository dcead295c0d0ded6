//! Retry delays: exponential back-off with jitter, capped.

use rand::Rng;

/// Cap on one task-retry delay: five minutes, whatever the attempt.
pub const TASK_RETRY_CAP_MS: u64 = 5 * 60 * 1000;

/// Delay before retry number `retry` (1 for the first retry): `base * 2^(retry-1)`, capped, with
/// "equal jitter" — a random value in `[d/2, d]` — so retries of many tasks that failed together
/// spread out, yet no retry comes sooner than half the nominal delay.
pub fn delay_ms(base_ms: u64, retry: u32, cap_ms: u64) -> u64 {
    let nominal = nominal_ms(base_ms, retry, cap_ms);
    if nominal < 2 {
        return nominal;
    }
    let half = nominal / 2;
    half + rand::rng().random_range(0..=nominal - half)
}

/// The un-jittered delay, `base * 2^(retry-1)` capped at `cap_ms`.
pub fn nominal_ms(base_ms: u64, retry: u32, cap_ms: u64) -> u64 {
    let shift = retry.saturating_sub(1).min(40);
    base_ms.saturating_mul(1u64 << shift).min(cap_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_and_caps() {
        assert_eq!(nominal_ms(1000, 1, TASK_RETRY_CAP_MS), 1000);
        assert_eq!(nominal_ms(1000, 2, TASK_RETRY_CAP_MS), 2000);
        assert_eq!(nominal_ms(1000, 4, TASK_RETRY_CAP_MS), 8000);
        assert_eq!(nominal_ms(1000, 30, TASK_RETRY_CAP_MS), TASK_RETRY_CAP_MS);
    }

    #[test]
    fn jitter_stays_within_half_and_full() {
        for _ in 0..1000 {
            let d = delay_ms(1000, 3, TASK_RETRY_CAP_MS);
            assert!((2000..=4000).contains(&d), "{d}");
        }
    }
}
