//! Which of the front's threads the caller is on, and how many there are: the front runs one
//! single-threaded runtime per core (`server`), and what is kept per thread (`upstream`'s idle
//! connections) is indexed by this. Owns no thread and knows nothing of HTTP.

use std::cell::Cell;
use std::sync::OnceLock;

/// Most front threads, whatever the machine says (each holds a runtime and its own pools).
const MAX_THREADS: usize = 64;

thread_local! {
    static INDEX: Cell<Option<usize>> = const { Cell::new(None) };
}

/// How many front threads this process runs: one per core it may use (the CPU affinity and,
/// on Linux, the cgroup quota count), fixed at the first call.
pub fn count() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| {
        if let Some(n) = std::env::var("WSGIMUX_FRONT_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            return usize::clamp(n, 1, MAX_THREADS);
        }
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, MAX_THREADS)
    })
}

/// The front thread the caller is on; None on any other thread.
pub fn index() -> Option<usize> {
    INDEX.with(|i| i.get())
}

/// Marks the calling thread as front thread `i` (below [`count`]).
pub fn enter(i: usize) {
    INDEX.with(|c| c.set(Some(i)));
}

/// Which of `count() + 1` per-thread slots the caller uses: its front thread's, or the last
/// one for every other thread (health checks, the admin side).
pub fn slot() -> usize {
    index().map_or(count(), |i| i.min(count()))
}
