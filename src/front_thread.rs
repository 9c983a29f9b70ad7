//! Which of the front's threads the caller is on, and how many there are: the front runs
//! [`count`] single-threaded runtimes (`server`), and what is kept per thread (`upstream`'s
//! idle connections) is indexed by this. Owns no thread and knows nothing of HTTP.

use std::cell::Cell;
use std::sync::OnceLock;

/// Most front threads, whatever the machine says (each holds a runtime and its own pools).
const MAX_THREADS: usize = 64;

thread_local! {
    static INDEX: Cell<Option<usize>> = const { Cell::new(None) };
}

/// How many front threads this process runs, fixed at the first call: `WSGIMUX_FRONT_THREADS`,
/// or one per two cores it may use (the CPU affinity and, on Linux, the cgroup quota count),
/// rounded up. Not one per core as nginx's `auto`: the apps' Python processes need the cores
/// more, and a front thread serves tens of thousands of requests a second. Measured on 2
/// cores, one thread against two: front CPU per request 26 vs 32 µs, a Django view with 2
/// processes 939 vs 895 req/s (BENCHMARKS.md).
pub fn count() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| {
        if let Some(n) = std::env::var("WSGIMUX_FRONT_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            return usize::clamp(n, 1, MAX_THREADS);
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        cores.div_ceil(2).clamp(1, MAX_THREADS)
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
