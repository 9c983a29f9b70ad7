//! A slot's policies as small state machines on tokio's clock, so paused-time tests reach
//! them: the backoff between starts of a process that keeps exiting, the count of failed
//! starts that makes a slot `failing`, the activity that makes a process idle
//! (`idle_timeout`), the request count that recycles it (`max_requests`), and the wait of a
//! dormant slot for a request (`start: on_demand`).

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// Up to a minute between the starts of an app that keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A child that ran this long before exiting resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(10);

/// The pause before a slot starts its process again: doubling from 100 ms up to a minute,
/// back to 100 ms after a process that ran 10 s (or went idle).
#[derive(Debug)]
pub(super) struct Backoff {
    next: Duration,
    started: Option<Instant>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: INITIAL_BACKOFF,
            started: None,
        }
    }
}

impl Backoff {
    /// A start is being tried now.
    pub(super) fn starting(&mut self) {
        self.started = Some(Instant::now());
    }

    /// The process ended (or did not start): how long to wait before the next start.
    pub(super) fn after_exit(&mut self) -> Duration {
        if self.started.is_some_and(|at| at.elapsed() >= STABLE_AFTER) {
            self.next = INITIAL_BACKOFF;
        }
        let pause = self.next;
        self.next = (self.next * 2).min(MAX_BACKOFF);
        pause
    }

    /// A process that stopped on purpose (idle) starts again without delay next time.
    pub(super) fn reset(&mut self) {
        self.next = INITIAL_BACKOFF;
    }
}

/// Failed starts in a row.
#[derive(Debug, Default)]
pub(super) struct Failures(u32);

impl Failures {
    /// Failed starts in a row after which a slot is `failing`.
    pub(super) const FAILING_AFTER: u32 = 3;

    pub(super) fn failed(&mut self) {
        self.0 += 1;
    }

    pub(super) fn reset(&mut self) {
        self.0 = 0;
    }

    pub(super) fn failing(&self) -> bool {
        self.0 >= Self::FAILING_AFTER
    }

    pub(super) fn in_a_row(&self) -> u32 {
        self.0
    }
}

/// A running process's traffic, watched for `idle_timeout`.
#[derive(Debug)]
pub(super) struct Activity {
    idle_timeout: Option<Duration>,
    last_count: u64,
    last_active: Instant,
}

impl Activity {
    pub(super) fn new(idle_timeout: Option<Duration>) -> Self {
        Activity {
            idle_timeout,
            last_count: 0,
            last_active: Instant::now(),
        }
    }

    /// Starts over with a new process (its requests count from 0).
    pub(super) fn restart(&mut self) {
        *self = Activity::new(self.idle_timeout);
    }

    /// What the process has done so far: requests served, and whether it holds any now.
    pub(super) fn observe(&mut self, served: u64, busy: bool) {
        if served != self.last_count || busy {
            self.last_count = served;
            self.last_active = Instant::now();
        }
    }

    /// True once the process has been idle for `idle_timeout`.
    pub(super) fn idle(&self) -> bool {
        self.idle_timeout
            .is_some_and(|limit| self.last_active.elapsed() >= limit)
    }
}

/// After how many requests a process is replaced: `max_requests` plus this process's share
/// of `max_requests_jitter` (`roll(n)`: a number below n), so processes started together do
/// not all recycle at once.
pub(super) fn recycle_at(max: Option<u64>, jitter: u64, roll: impl Fn(u64) -> u64) -> Option<u64> {
    max.map(|n| n + if jitter > 0 { roll(jitter + 1) } else { 0 })
}

/// Waits for a request to wake a dormant slot: true when the wake count passes `seen`, false
/// when the slot is stopped (or its demand is gone) first. No demand at all: at once.
pub(super) async fn wait_for_demand(
    demand: Option<&mut watch::Receiver<u64>>,
    seen: u64,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let Some(demand) = demand else {
        return true;
    };
    loop {
        if *demand.borrow_and_update() > seen {
            return true;
        }
        tokio::select! {
            r = demand.changed() => if r.is_err() { return false },
            _ = super::stopped(stop) => return false,
        }
    }
}

#[cfg(test)]
mod tests;
