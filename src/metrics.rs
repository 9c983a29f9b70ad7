//! Request counters and latency histograms: one set per app (kept across reloads, so the
//! Prometheus counters only grow) and one per process. Lock-free (atomics), written when a
//! response ends, read by `status`. Does no IO.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Upper bounds of the latency buckets, in seconds: 1, 2, 3, 5 and 7.5 per decade from 100 µs
/// to 60 s, so a quantile estimated within a bucket is off by at most that step.
pub const BUCKETS: [f64; 26] = [
    0.0001, 0.0002, 0.0003, 0.0005, 0.00075, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.03,
    0.05, 0.075, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 3.0, 5.0, 10.0, 60.0,
];

/// Counts of finished requests by status class, aborted responses and a latency histogram.
#[derive(Debug, Default)]
pub struct Counters {
    /// 1xx … 5xx.
    by_class: [AtomicU64; 5],
    /// Responses whose body broke off (the app or the client went away mid-way).
    aborted: AtomicU64,
    /// One per [`BUCKETS`] entry, plus one for slower requests.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    /// Sum of latencies in microseconds.
    sum_us: AtomicU64,
}

impl Counters {
    /// Counts one finished request: its status, whether its body was relayed whole, and the
    /// time from its head arriving to its response ending.
    pub fn record(&self, status: u16, complete: bool, elapsed: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
        if !complete {
            self.aborted.fetch_add(1, Ordering::Relaxed);
        }
        let secs = elapsed.as_secs_f64();
        let i = BUCKETS.partition_point(|&b| b < secs);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Finished requests, without copying the histogram.
    pub fn requests(&self) -> u64 {
        self.by_class
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .sum()
    }

    pub fn snapshot(&self) -> Snapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Snapshot {
            by_class: self.by_class.each_ref().map(load),
            aborted: load(&self.aborted),
            buckets: self.buckets.iter().map(load).collect(),
            sum_seconds: load(&self.sum_us) as f64 / 1e6,
        }
    }
}

/// A copy of [`Counters`] at one moment; snapshots of several processes add up.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub by_class: [u64; 5],
    pub aborted: u64,
    /// Per bucket (not cumulative), the last one for requests slower than the last bound.
    pub buckets: Vec<u64>,
    pub sum_seconds: f64,
}

impl Snapshot {
    pub fn requests(&self) -> u64 {
        self.by_class.iter().sum()
    }

    /// 5xx responses and responses that broke off.
    pub fn errors(&self) -> u64 {
        self.by_class[4] + self.aborted
    }

    pub fn add(&mut self, other: &Snapshot) {
        for (a, b) in self.by_class.iter_mut().zip(other.by_class) {
            *a += b;
        }
        self.aborted += other.aborted;
        if self.buckets.len() < other.buckets.len() {
            self.buckets.resize(other.buckets.len(), 0);
        }
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        self.sum_seconds += other.sum_seconds;
    }

    /// What was counted since `earlier` (a snapshot of the same counters taken before).
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        let mut by_class = self.by_class;
        for (a, b) in by_class.iter_mut().zip(earlier.by_class) {
            *a = a.saturating_sub(b);
        }
        let buckets = (self.buckets.iter().enumerate())
            .map(|(i, &n)| n.saturating_sub(earlier.buckets.get(i).copied().unwrap_or(0)))
            .collect();
        Snapshot {
            by_class,
            aborted: self.aborted.saturating_sub(earlier.aborted),
            buckets,
            sum_seconds: (self.sum_seconds - earlier.sum_seconds).max(0.0),
        }
    }

    /// The `q` quantile (0..1) of latency in seconds, interpolated within its bucket the way
    /// Prometheus' `histogram_quantile` does; None without requests.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut seen = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            if n > 0 && (seen + n) as f64 >= rank {
                let lower = if i == 0 { 0.0 } else { BUCKETS[i - 1] };
                let Some(&upper) = BUCKETS.get(i) else {
                    // Beyond the last bound: all that is known is "slower than it".
                    return Some(lower);
                };
                let within = (rank - seen as f64) / n as f64;
                return Some(lower + (upper - lower) * within);
            }
            seen += n;
        }
        BUCKETS.last().copied()
    }
}

/// One app's counters. Every request of the app is counted in `total`, and in exactly one of
/// the process that answered it (its endpoint's counters) or `front` (answered by the front
/// without a process: the app was starting or failing, the body was too large, …).
#[derive(Debug, Default)]
pub struct AppCounters {
    pub total: Counters,
    pub front: Counters,
    /// Process exits and failed starts followed by a restart, in any generation (written by
    /// the supervisor's slots).
    pub restarts: AtomicU64,
}

/// Each app's counters by name, kept for the life of the server: a reload that restarts an
/// app keeps counting into the same ones.
#[derive(Debug, Default)]
pub struct Registry {
    apps: Mutex<HashMap<String, Arc<AppCounters>>>,
}

impl Registry {
    pub fn app(&self, name: &str) -> Arc<AppCounters> {
        let mut apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
        apps.entry(name.to_string()).or_default().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_quantiles() {
        let c = Counters::default();
        assert_eq!(c.snapshot().quantile(0.5), None);
        for _ in 0..98 {
            c.record(200, true, Duration::from_micros(1500));
        }
        c.record(503, true, Duration::from_millis(400));
        c.record(200, false, Duration::from_secs(120));
        let s = c.snapshot();
        assert_eq!(s.requests(), 100);
        assert_eq!(s.errors(), 2);
        let p50 = s.quantile(0.5).unwrap_or_default();
        assert!((0.001..=0.002).contains(&p50), "{p50}");
        let p99 = s.quantile(0.99).unwrap_or_default();
        assert!((0.3..=0.5).contains(&p99), "{p99}");
        assert_eq!(s.quantile(1.0), Some(60.0));
        let mut sum = Snapshot::default();
        sum.add(&s);
        sum.add(&s);
        assert_eq!(sum.requests(), 200);
        assert_eq!(sum.buckets.iter().sum::<u64>(), 200);
    }

    #[test]
    fn status_classes() {
        let c = Counters::default();
        for status in [101, 204, 301, 404, 500, 502, 999] {
            c.record(status, true, Duration::ZERO);
        }
        assert_eq!(c.snapshot().by_class, [1, 1, 1, 1, 3]);
    }
}
