//! When a certificate is renewed and how long a failed name waits: pure decisions, tested
//! with paused time.

use std::time::{Duration, SystemTime};

/// The first wait after a failure; each further one doubles, up to [`MOST_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_secs(60);
pub const MOST_BACKOFF: Duration = Duration::from_secs(6 * 3600);
/// A CA that says "rate limited" is not asked again sooner than this (instant-acme does not
/// hand us its Retry-After header; Let's Encrypt's limits reset hourly at the shortest).
pub const RATE_LIMITED_WAIT: Duration = Duration::from_secs(3600);
/// A valid certificate is looked at again at least this often, so one renewed by another
/// host sharing the storage is picked up, and a clock jump is noticed.
pub const RECHECK: Duration = Duration::from_secs(3600);

/// When to renew a certificate valid from `not_before` to `not_after`: `renew_before` its end
/// (default: a third of its lifetime before it; at most half of it), or earlier if the CA's
/// renewal window (ARI) says so.
pub fn renew_at(
    not_before: SystemTime,
    not_after: SystemTime,
    renew_before: Option<Duration>,
    window: Option<(SystemTime, SystemTime)>,
    jitter: f64,
) -> SystemTime {
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    // At most half the lifetime: a `renew_before` longer than a short-lived certificate's
    // life would otherwise order again the moment each order ends.
    let before = renew_before.unwrap_or(lifetime / 3).min(lifetime / 2);
    let by_rule = not_after.checked_sub(before).unwrap_or(not_before);
    match window {
        // A point in the CA's window, as RFC 9773 asks (spread over hosts by the jitter).
        Some((start, end)) if end > start => {
            let span = end.duration_since(start).unwrap_or_default();
            let in_window = start + span.mul_f64(jitter.clamp(0.0, 1.0));
            in_window.min(by_rule)
        }
        _ => by_rule,
    }
}

/// How long to wait after the `failures`-th failure in a row: doubling from
/// [`FIRST_BACKOFF`], up to [`MOST_BACKOFF`], stretched by `jitter` (0..1: up to a fifth
/// more) so hosts and names do not retry in step.
pub fn backoff(failures: u32, rate_limited: bool, jitter: f64) -> Duration {
    let doubling = FIRST_BACKOFF.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let base = doubling.min(MOST_BACKOFF);
    let base = if rate_limited {
        base.max(RATE_LIMITED_WAIT)
    } else {
        base
    };
    base + base.mul_f64(jitter.clamp(0.0, 1.0) / 5.0)
}

/// A number in 0..1 that differs between calls (names, hosts and restarts).
pub fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    (h.finish() % 1_000_000) as f64 / 1_000_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn renewal_is_a_third_of_the_lifetime_before_the_end_unless_told() {
        let start = SystemTime::UNIX_EPOCH + 1000 * DAY;
        let end = start + 90 * DAY;
        assert_eq!(renew_at(start, end, None, None, 0.5), start + 60 * DAY);
        assert_eq!(
            renew_at(start, end, Some(30 * DAY), None, 0.5),
            start + 60 * DAY
        );
        assert_eq!(
            renew_at(start, end, Some(10 * DAY), None, 0.5),
            start + 80 * DAY
        );
        // Longer than half the lifetime: half way, never at once again and again.
        assert_eq!(
            renew_at(start, end, Some(100 * DAY), None, 0.5),
            start + 45 * DAY
        );
    }

    #[test]
    fn the_cas_window_is_followed_when_it_comes_first() {
        let start = SystemTime::UNIX_EPOCH + 1000 * DAY;
        let end = start + 90 * DAY;
        let window = Some((start + 10 * DAY, start + 12 * DAY));
        assert_eq!(renew_at(start, end, None, window, 0.0), start + 10 * DAY);
        assert_eq!(renew_at(start, end, None, window, 1.0), start + 12 * DAY);
        // A window after the configured point does not delay renewal.
        let late = Some((start + 85 * DAY, start + 86 * DAY));
        assert_eq!(
            renew_at(start, end, Some(30 * DAY), late, 0.5),
            start + 60 * DAY
        );
    }

    #[test]
    fn failures_back_off_doubling_with_a_cap_and_rate_limits_wait_an_hour() {
        assert_eq!(backoff(1, false, 0.0), FIRST_BACKOFF);
        assert_eq!(backoff(2, false, 0.0), 2 * FIRST_BACKOFF);
        assert_eq!(backoff(4, false, 0.0), 8 * FIRST_BACKOFF);
        assert_eq!(backoff(40, false, 0.0), MOST_BACKOFF);
        assert_eq!(backoff(1, true, 0.0), RATE_LIMITED_WAIT);
        let stretched = backoff(1, false, 1.0);
        assert!(stretched > FIRST_BACKOFF && stretched <= FIRST_BACKOFF.mul_f64(1.2));
    }
}
