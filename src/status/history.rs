//! What each app did second by second over the last hour, for rates and charts: a ring of
//! one-second buckets per app, filled by one sampler task from the app's counters (so a
//! request costs nothing more), read by `status`. An app gets its ring with its first request:
//! dormant apps cost nothing. Each bucket is 16 bytes; a ring, 3,600 of them: 56 KiB per app
//! that has served (28 MiB for 500 busy apps, measured: `bench/history_memory.py`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::metrics::Snapshot;

/// Seconds kept per app.
pub const SECONDS: usize = 3600;

/// One second of one app.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Second {
    pub requests: u32,
    pub client_errors: u16,
    /// 5xx answers and responses that broke off.
    pub server_errors: u16,
    /// Latency quantiles of the requests that ended in it, in ms (at most 65,535).
    pub p50_ms: u16,
    pub p99_ms: u16,
    /// Requests in flight at its end.
    pub in_flight: u16,
    /// The app's processes' resident memory at its end, in MiB.
    pub resident_mib: u16,
}

/// The last hour of one app, a second per bucket.
#[derive(Debug)]
pub struct AppHistory {
    seconds: Vec<Second>,
    /// Where the next second goes.
    next: usize,
    /// Seconds recorded (up to [`SECONDS`]).
    filled: usize,
    /// The app's counters at the end of the last second.
    last: Snapshot,
}

/// Rates over the last minute (or what of it was recorded).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Recent {
    /// Seconds the figures cover.
    pub seconds: u32,
    pub requests_per_second: f64,
    pub server_errors_per_second: f64,
    /// The worst second's p99 latency in the window, in ms.
    pub p99_ms: u32,
}

fn saturate16(n: u64) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

impl AppHistory {
    fn new(start: Snapshot) -> Self {
        AppHistory {
            seconds: vec![Second::default(); SECONDS],
            next: 0,
            filled: 0,
            last: start,
        }
    }

    /// Ends a second: what the counters say now, and what is in flight and resident.
    pub fn push(&mut self, now: Snapshot, in_flight: usize, resident_bytes: u64) {
        let d = now.since(&self.last);
        let ms = |q: f64| saturate16(d.quantile(q).map_or(0, |s| (s * 1000.0).round() as u64));
        self.seconds[self.next] = Second {
            requests: u32::try_from(d.requests()).unwrap_or(u32::MAX),
            client_errors: saturate16(d.by_class[3]),
            server_errors: saturate16(d.errors()),
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
            in_flight: saturate16(in_flight as u64),
            resident_mib: saturate16(resident_bytes >> 20),
        };
        self.next = (self.next + 1) % SECONDS;
        self.filled = (self.filled + 1).min(SECONDS);
        self.last = now;
    }

    /// The last `n` seconds recorded, oldest first.
    pub fn last(&self, n: usize) -> Vec<Second> {
        let n = n.min(self.filled);
        (0..n)
            .map(|i| self.seconds[(self.next + SECONDS - n + i) % SECONDS])
            .collect()
    }

    /// Rates over the last `window` seconds.
    pub fn recent(&self, window: usize) -> Recent {
        let seconds = self.last(window);
        let n = seconds.len().max(1) as f64;
        let sum = |f: fn(&Second) -> u64| seconds.iter().map(f).sum::<u64>() as f64;
        Recent {
            seconds: seconds.len() as u32,
            requests_per_second: sum(|s| u64::from(s.requests)) / n,
            server_errors_per_second: sum(|s| u64::from(s.server_errors)) / n,
            p99_ms: seconds
                .iter()
                .map(|s| u32::from(s.p99_ms))
                .max()
                .unwrap_or(0),
        }
    }
}

/// Every app's history, by name.
#[derive(Debug, Default)]
pub struct History {
    apps: Mutex<HashMap<Arc<str>, AppHistory>>,
}

/// One app's figures at the end of a second, as the sampler reads them.
pub struct Sample {
    pub app: Arc<str>,
    pub counters: Snapshot,
    pub in_flight: usize,
    pub resident_bytes: u64,
}

impl History {
    /// Ends a second for each app sampled; an app without any request yet gets no ring.
    pub fn record(&self, samples: Vec<Sample>) {
        let Ok(mut apps) = self.apps.lock() else {
            return;
        };
        for s in samples {
            match apps.get_mut(&s.app) {
                Some(h) => h.push(s.counters, s.in_flight, s.resident_bytes),
                None if s.counters.requests() > 0 => {
                    // From zero: its first requests are in its first second.
                    let mut h = AppHistory::new(Snapshot::default());
                    h.push(s.counters, s.in_flight, s.resident_bytes);
                    apps.insert(s.app, h);
                }
                None => {}
            }
        }
    }

    /// `app`'s last `n` seconds, oldest first (none before its first request).
    pub fn last(&self, app: &str, n: usize) -> Vec<Second> {
        let apps = self.apps.lock();
        apps.ok()
            .and_then(|a| a.get(app).map(|h| h.last(n)))
            .unwrap_or_default()
    }

    /// `app`'s rates over the last minute; None before its first request.
    pub fn recent(&self, app: &str) -> Option<Recent> {
        self.apps.lock().ok()?.get(app).map(|h| h.recent(60))
    }
}

/// The server's history (its one writer: [`sample_every_second`]).
pub fn global() -> &'static History {
    static HISTORY: OnceLock<History> = OnceLock::new();
    HISTORY.get_or_init(History::default)
}

/// Records a second of every app of the published overview, each second, for the server's
/// life.
pub async fn sample_every_second(overview: tokio::sync::watch::Receiver<Arc<super::Overview>>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let snapshot = overview.borrow().clone();
        let samples = snapshot
            .apps
            .iter()
            // An app that never served has no ring and gets none: no snapshot, no views copy.
            .filter(|a| a.stats.total.requests() > 0)
            .map(|a| {
                let views = a.generation.views();
                Sample {
                    app: a.app.spec.name.as_str().into(),
                    counters: a.stats.total.snapshot(),
                    in_flight: views
                        .iter()
                        .filter_map(|v| v.endpoint.as_ref())
                        .map(|e| e.in_flight())
                        .sum(),
                    resident_bytes: views.iter().filter_map(|v| v.resident_bytes).sum(),
                }
            })
            .collect();
        global().record(samples);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Counters;

    #[test]
    fn seconds_are_the_counters_differences_and_the_ring_keeps_the_last_hour() {
        let counters = Counters::default();
        let history = History::default();
        let sample = |c: &Counters| Sample {
            app: "a".into(),
            counters: c.snapshot(),
            in_flight: 2,
            resident_bytes: 30 << 20,
        };
        history.record(vec![sample(&counters)]);
        assert_eq!(history.recent("a"), None, "no ring before a request");
        for _ in 0..10 {
            counters.record(200, true, Duration::from_millis(20));
        }
        counters.record(502, true, Duration::from_millis(900));
        history.record(vec![sample(&counters)]);
        history.record(vec![sample(&counters)]);
        let apps = history.apps.lock().unwrap();
        let seconds = apps["a"].last(5);
        assert_eq!(seconds.len(), 2);
        assert_eq!((seconds[0].requests, seconds[0].server_errors), (11, 1));
        assert!(seconds[0].p99_ms >= 500, "{:?}", seconds[0]);
        assert!((10..=50).contains(&seconds[0].p50_ms), "{:?}", seconds[0]);
        assert_eq!((seconds[0].in_flight, seconds[0].resident_mib), (2, 30));
        assert_eq!(seconds[1].requests, 0, "nothing in the second second");
        let recent = apps["a"].recent(60);
        assert_eq!(recent.seconds, 2);
        assert!(
            (recent.requests_per_second - 5.5).abs() < 1e-9,
            "{recent:?}"
        );
        drop(apps);
        // A ring holds an hour: after more, the oldest seconds are gone.
        for _ in 0..SECONDS {
            history.record(vec![sample(&counters)]);
        }
        let apps = history.apps.lock().unwrap();
        assert_eq!(apps["a"].last(SECONDS + 10).len(), SECONDS);
        assert!(apps["a"].last(SECONDS).iter().all(|s| s.requests == 0));
        assert_eq!(std::mem::size_of::<Second>(), 16);
    }
}
