//! The front's threads: single-threaded tokio runtimes ([`crate::front_thread::count`] of
//! them), each accepting and serving its own connections (nginx's worker model). A connection
//! stays on the thread that accepted it, and so do the connections to the apps its requests
//! take (`upstream` pools them per thread), so a request and its response cross no thread; on
//! one multi-thread runtime they could cross two (client connection task → app connection task
//! → back). Measured: 6–20 % less front CPU per request, with the other changes of that pass
//! (BENCHMARKS.md, "Second pass").

use std::thread::JoinHandle;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// How long a front thread's leftover tasks (idle app connections) get once it is told to stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(1);

pub(super) struct FrontThreads {
    handles: Vec<Handle>,
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
}

impl FrontThreads {
    /// One thread per [`crate::front_thread::count`]; where a thread cannot be started, the
    /// connections it would have served go to the others (or, with none, to the caller's
    /// runtime).
    pub(super) fn start() -> Self {
        let mut front = FrontThreads {
            handles: Vec::new(),
            stops: Vec::new(),
            threads: Vec::new(),
        };
        for i in 0..crate::front_thread::count() {
            if let Err(e) = front.start_one(i) {
                tracing::warn!("cannot start front thread {i}: {e}; serving with fewer");
                break;
            }
        }
        if front.handles.is_empty() {
            front.handles.push(Handle::current());
        }
        front
    }

    fn start_one(&mut self, i: usize) -> std::io::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("front-{i}"))
            .spawn(move || {
                crate::front_thread::enter(i);
                runtime.block_on(async {
                    let _ = stopped.await;
                });
                runtime.shutdown_timeout(STOP_TIMEOUT);
            })?;
        self.handles.push(handle);
        self.stops.push(stop);
        self.threads.push(thread);
        Ok(())
    }

    /// The runtimes connections are served on.
    pub(super) fn handles(&self) -> &[Handle] {
        &self.handles
    }

    /// Stops every thread (their connections have drained or run out of time) and waits for
    /// them to end.
    pub(super) async fn stop(mut self) {
        self.stops.clear();
        let threads = std::mem::take(&mut self.threads);
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

impl Drop for FrontThreads {
    /// Dropping the senders stops the threads; they are not waited for.
    fn drop(&mut self) {
        self.stops.clear();
    }
}
