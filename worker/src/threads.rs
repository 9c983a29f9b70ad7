//! The Python side: `threads` dedicated OS threads, each attached to the interpreter once for
//! its whole life (so `threading.local` lasts and no thread state is created per request),
//! detached only while waiting for the next request or for the client. Each runs the app for
//! one request at a time and hands the response back through [`Reply`].
//!
//! Owns error handling for the app: an exception before the head → 500, after it → the
//! response is aborted; a panic is logged and handled the same way; a thread that dies anyway
//! makes the whole worker exit (the supervisor restarts it) rather than serve with fewer threads.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use hyper::body::Incoming;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::environ::{self, EnvironCache};
use crate::input::Input;
use crate::response::{body_bytes, type_name, InvalidResponse, Reply, SendError, StartResponse};

/// One request, as the hyper task hands it over.
pub struct Job {
    pub parts: Parts,
    pub body: Incoming,
    pub reply: oneshot::Sender<Reply>,
}

/// What every app thread shares.
pub struct Shared {
    pub app: Py<PyAny>,
    pub app_name: String,
    pub handle: Handle,
    pub multithread: bool,
    pub multiprocess: bool,
    pub read_timeout: Duration,
    /// Set when an app thread died: the worker stops.
    pub thread_died: AtomicBool,
    /// App threads still running.
    pub alive: AtomicUsize,
}

pub fn spawn(
    shared: &Arc<Shared>,
    jobs: &crossbeam_channel::Receiver<Job>,
    count: usize,
) -> std::io::Result<()> {
    for i in 0..count {
        let (s, j) = (shared.clone(), jobs.clone());
        shared.alive.fetch_add(1, Ordering::SeqCst);
        let spawned = std::thread::Builder::new()
            .name(format!("wsgimux-app-{i}"))
            .spawn(move || thread_main(&s, &j));
        if let Err(e) = spawned {
            shared.alive.fetch_sub(1, Ordering::SeqCst);
            return Err(e);
        }
    }
    Ok(())
}

fn thread_main(shared: &Shared, jobs: &crossbeam_channel::Receiver<Job>) {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        Python::attach(|py| {
            let served = serve_jobs(py, shared, jobs);
            if let Err(e) = &served {
                eprintln!("{}: an app thread failed to start", shared.app_name);
                e.display(py);
            }
            served.is_ok()
        })
    }));
    let clean = match outcome {
        Ok(clean) => clean,
        Err(panic) => {
            eprintln!(
                "{}: an app thread panicked: {}",
                shared.app_name,
                panic_message(&*panic)
            );
            false
        }
    };
    if !clean {
        shared.thread_died.store(true, Ordering::SeqCst);
    }
    shared.alive.fetch_sub(1, Ordering::SeqCst);
}

fn serve_jobs(
    py: Python<'_>,
    shared: &Shared,
    jobs: &crossbeam_channel::Receiver<Job>,
) -> PyResult<()> {
    let mut cache = EnvironCache::new(py, shared.multithread, shared.multiprocess)?;
    let app = shared.app.bind(py);
    // Detached only while waiting: the thread state (and threading.local) lives on. A job
    // already queued is taken without giving the GIL up and taking it back.
    loop {
        let job = match jobs.try_recv() {
            Ok(job) => job,
            Err(crossbeam_channel::TryRecvError::Disconnected) => break,
            Err(crossbeam_channel::TryRecvError::Empty) => match py.detach(|| jobs.recv()) {
                Ok(job) => job,
                Err(_) => break,
            },
        };
        run(py, shared, &mut cache, app, job);
    }
    Ok(())
}

enum Failure {
    /// The client went away: nothing to send, nothing to report.
    Gone,
    App(PyErr),
    Panic(String),
}

impl From<SendError> for Failure {
    fn from(e: SendError) -> Self {
        match e {
            SendError::Gone => Failure::Gone,
            SendError::App(e) => Failure::App(e),
        }
    }
}

impl From<PyErr> for Failure {
    fn from(e: PyErr) -> Self {
        Failure::App(e)
    }
}

fn run<'py>(
    py: Python<'py>,
    shared: &Shared,
    cache: &mut EnvironCache<'py>,
    app: &Bound<'py, PyAny>,
    job: Job,
) {
    let Job { parts, body, reply } = job;
    let input = Input::new(body, shared.handle.clone(), shared.read_timeout);
    let objects =
        Bound::new(py, input).and_then(|i| Ok((i, Bound::new(py, StartResponse::new(reply))?)));
    let (input, start_response) = match objects {
        Ok(o) => o,
        Err(e) => {
            // The reply sender went with the failed object: the hyper task answers 500.
            eprintln!("{}: cannot set up a request", shared.app_name);
            e.display(py);
            return;
        }
    };
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        call_app(py, shared, cache, app, &parts, &input, &start_response)
    }))
    .unwrap_or_else(|panic| Err(Failure::Panic(panic_message(&*panic))));
    let request = || {
        format!(
            "{} {}",
            parts.method,
            parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("")
        )
    };
    match outcome {
        Ok(()) | Err(Failure::Gone) => {}
        Err(Failure::App(e)) => {
            report_app_error(py, &shared.app_name, &request(), &e, start_response.get());
            start_response.get().fail(py);
        }
        Err(Failure::Panic(message)) => {
            eprintln!(
                "{}: internal error (panic) in {}: {message}",
                shared.app_name,
                request()
            );
            start_response.get().fail(py);
        }
    }
    if let Ok(mut input) = input.try_borrow_mut() {
        input.drain_rest();
    }
}

/// One line for a response that breaks HTTP's rules (what was wrong is all there is to say);
/// for an exception, what it was and when — after the head went out the client sees a cut
/// connection, not a 500 — then its traceback. SystemExit and KeyboardInterrupt are the app's
/// exceptions like any other: the worker keeps serving.
fn report_app_error(
    py: Python<'_>,
    app: &str,
    request: &str,
    e: &PyErr,
    start_response: &StartResponse,
) {
    let what = || {
        let value = e.value(py);
        format!("{}: {}", type_name(value), value)
    };
    if e.is_instance_of::<InvalidResponse>(py) {
        eprintln!("{app}: invalid response to {request}: {}", e.value(py));
        return;
    }
    if start_response.head_sent() {
        eprintln!(
            "{app}: app raised after the response started ({request}): {}",
            what()
        );
    } else {
        eprintln!("{app}: error in {request}: {}", what());
    }
    print_from_the_app(py, e);
}

/// The launcher, whose request watchdog wraps the app (its frames are not the app's).
const LAUNCHER_FILE: &str = "wsgimux_worker.py";

/// Prints `e` as Python does, from the app's first frame: the launcher's wrapper that called
/// it is none of the app author's business (the portable worker trims the same frames).
fn print_from_the_app(py: Python<'_>, e: &PyErr) {
    let trimmed = || -> PyResult<()> {
        let mut tb = e.traceback(py).map(|t| t.into_any());
        while let Some(t) = &tb {
            let file: String = t
                .getattr("tb_frame")?
                .getattr("f_code")?
                .getattr("co_filename")?
                .extract()?;
            if !file.ends_with(LAUNCHER_FILE) {
                break;
            }
            let next = t.getattr("tb_next")?;
            tb = (!next.is_none()).then_some(next);
        }
        py.import("traceback")?
            .call_method1("print_exception", (e.get_type(py), e.value(py), tb))?;
        Ok(())
    };
    if trimmed().is_err() {
        e.display(py);
    }
}

fn call_app<'py>(
    py: Python<'py>,
    shared: &Shared,
    cache: &mut EnvironCache<'py>,
    app: &Bound<'py, PyAny>,
    parts: &Parts,
    input: &Bound<'py, Input>,
    start_response: &Bound<'py, StartResponse>,
) -> Result<(), Failure> {
    let environ = environ::build(py, cache, parts, input.clone().into_any())?;
    let result = app.call1((environ, start_response))?;
    let sent = send_result(py, shared, &result, start_response.get());
    // PEP 3333: close() is called whatever happened while iterating.
    let closed = match result.hasattr(pyo3::intern!(py, "close")) {
        Ok(true) => result.call_method0(pyo3::intern!(py, "close")).map(drop),
        Ok(false) => Ok(()),
        Err(e) => Err(e),
    };
    sent?;
    if let Err(e) = closed {
        // The response is complete: report, but do not fail it.
        eprintln!("{}: error in close()", shared.app_name);
        print_from_the_app(py, &e);
    }
    Ok(())
}

fn chunk<'a, 'py>(item: &'a Bound<'py, PyAny>) -> Result<&'a Bound<'py, PyBytes>, Failure> {
    item.cast::<PyBytes>().map_err(|_| {
        Failure::App(PyTypeError::new_err(format!(
            "response body chunks must be bytes, not {}",
            type_name(item)
        )))
    })
}

fn send_result(
    py: Python<'_>,
    shared: &Shared,
    result: &Bound<'_, PyAny>,
    start_response: &StartResponse,
) -> Result<(), Failure> {
    let name = shared.app_name.as_str();
    // A list or tuple (the common case) goes out in one piece, with its length.
    let items = result
        .cast::<PyList>()
        .ok()
        .map(|l| l.iter().collect::<Vec<_>>())
        .or_else(|| {
            result
                .cast::<PyTuple>()
                .ok()
                .map(|t| t.iter().collect::<Vec<_>>())
        });
    if let Some(items) = items {
        if !start_response.head_sent() {
            // One item (the common case) is sent from the app's own bytes; several are joined
            // in one copy.
            let body = match items.as_slice() {
                [one] => body_bytes(chunk(one)?),
                _ => {
                    let mut joined = Vec::new();
                    for item in &items {
                        joined.extend_from_slice(chunk(item)?.as_bytes());
                    }
                    Bytes::from(joined)
                }
            };
            start_response.send_whole(py, body, name)?;
            return Ok(());
        }
    }
    // PEP 3333: an iterable whose len() is 1 may get its Content-Length from its one item.
    // (len() of a generator raises TypeError: not an error of the app's.)
    let single = !start_response.head_sent() && result.len().map(|n| n == 1).unwrap_or(false);
    let mut iter = result.try_iter()?;
    if single {
        if let Some(first) = iter.next() {
            let first = first?;
            let first = chunk(&first)?;
            match iter.next() {
                None => {
                    start_response.send_whole(py, body_bytes(first), name)?;
                    return Ok(());
                }
                Some(second) => {
                    start_response.send_chunk(py, body_bytes(first), name)?;
                    let second = second?;
                    start_response.send_chunk(py, body_bytes(chunk(&second)?), name)?;
                }
            }
        }
    }
    for item in iter {
        let item = item?;
        start_response.send_chunk(py, body_bytes(chunk(&item)?), name)?;
    }
    start_response.finish(py, name)?;
    Ok(())
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}
