//! Log files wsgimux writes itself (the access log, apps' output under `log_dir`): opened for
//! appending, shared by path, and reopened together on SIGUSR1 so that newsyslog/logrotate can
//! move them away and have new ones created. And the queues in front of every stream a
//! request writes to (stderr, stdout, the access-log file).
//!
//! A front thread never waits for a log's reader: what it writes goes to a bounded in-memory
//! queue (`tracing-appender`'s non-blocking writer) that its own thread writes out, in batches
//! (one `write` per batch: one per request cost the front more than anything else it did,
//! BENCHMARKS.md). A reader that does not keep up (a pipe nobody reads, journald under
//! pressure, a full disk) costs lines, not requests: a full queue drops them, counts them
//! (`wsgimux_log_lines_dropped_total`) and says so in one warning a minute. Apps' output under
//! `log_dir` is written line by line by the tasks that copy it (never a front thread).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, NonBlockingBuilder, WorkerGuard};

/// Whether wsgimux's own log is JSON lines (`log_format: json`): set once, by `main` as it sets
/// up logging, before anything is written; read by whatever writes a line of its own (the
/// start-up lines on stdout, the copy of the apps' output).
static JSON_LOG: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn set_json_log(on: bool) {
    JSON_LOG.store(on, std::sync::atomic::Ordering::Relaxed);
}

pub fn json_log() -> bool {
    JSON_LOG.load(std::sync::atomic::Ordering::Relaxed)
}

/// One record shaped as the JSON log's (tracing's): `timestamp`, `level`, `fields` (the
/// `message` and `fields`' own keys), `target` — for a line wsgimux prints itself.
pub fn json_record(level: &str, message: &str, fields: serde_json::Value) -> String {
    let mut all = serde_json::json!({ "message": message });
    if let (Some(all), serde_json::Value::Object(more)) = (all.as_object_mut(), fields) {
        all.extend(more);
    }
    serde_json::json!({
        "timestamp": crate::dates::iso_time(std::time::SystemTime::now()),
        "level": level,
        "fields": all,
        "target": "wsgimux",
    })
    .to_string()
}

/// Every open log file, by path, so SIGUSR1 reaches each one once.
static OPEN: Mutex<Vec<(PathBuf, Weak<LogFile>)>> = Mutex::new(Vec::new());

/// Lines a queue holds for its writer thread; past this, new lines are dropped.
const QUEUED_LINES: usize = 16 * 1024;
/// A writer thread writes what gathered in one `write` of up to this much.
const BATCH: usize = 64 * 1024;
/// How often dropped lines are looked for, and how often at most they are warned of.
const DROP_CHECK: Duration = Duration::from_secs(1);
const DROP_WARNING_EVERY: Duration = Duration::from_secs(60);

/// Every queue's writer: kept for the process's life (dropping one waits for its thread),
/// given up at shutdown (`flush_all`), which writes what they hold.
static GUARDS: Mutex<Vec<WorkerGuard>> = Mutex::new(Vec::new());
/// Every queue's count of dropped lines.
static DROPPED: Mutex<Vec<ErrorCounter>> = Mutex::new(Vec::new());

/// A queue in front of `writer`, written by its own thread named `name`.
fn queue(writer: impl Write + Send + 'static, name: &str) -> NonBlocking {
    let (queue, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name(name)
        .finish(writer);
    GUARDS.lock().unwrap_or_else(|e| e.into_inner()).push(guard);
    DROPPED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(queue.error_counter());
    watch_drops();
    queue
}

/// wsgimux's stderr behind its queue: its own log and access lines sent there.
pub fn stderr() -> NonBlocking {
    static STDERR: OnceLock<NonBlocking> = OnceLock::new();
    stream_queue(&STDERR, std::io::stderr, "wsgimux-stderr")
}

/// stdout behind its queue (`access_log: stdout`).
pub fn stdout() -> NonBlocking {
    static STDOUT: OnceLock<NonBlocking> = OnceLock::new();
    stream_queue(&STDOUT, std::io::stdout, "wsgimux-stdout")
}

/// The one queue of a process-wide stream, made the first time it is asked for.
fn stream_queue<W: Write + Send + 'static>(
    cell: &'static OnceLock<NonBlocking>,
    stream: fn() -> W,
    name: &str,
) -> NonBlocking {
    cell.get_or_init(|| queue(std::io::BufWriter::with_capacity(BATCH, stream()), name))
        .clone()
}

/// Lines dropped so far because a queue was full.
pub fn dropped_lines() -> u64 {
    let counters = DROPPED.lock().unwrap_or_else(|e| e.into_inner());
    counters.iter().map(|c| c.dropped_lines() as u64).sum()
}

/// Warns (at most once a minute) when lines were dropped, from a thread of its own.
fn watch_drops() {
    static WATCH: std::sync::Once = std::sync::Once::new();
    WATCH.call_once(|| {
        let _ = std::thread::Builder::new()
            .name("wsgimux-log-drops".into())
            .spawn(|| {
                let (mut warned, mut last): (Option<Instant>, u64) = (None, 0);
                loop {
                    std::thread::sleep(DROP_CHECK);
                    let now = dropped_lines();
                    let quiet = warned.is_none_or(|at| at.elapsed() >= DROP_WARNING_EVERY);
                    if now > last && quiet {
                        tracing::warn!("{} log line(s) dropped: a log's reader (stderr, stdout or the access log file) does not keep up; requests are served all the same", now - last);
                        (warned, last) = (Some(Instant::now()), now);
                    }
                }
            });
    });
}

/// A log file: written line by line, or (the access log) through its queue.
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    file: Arc<Mutex<Output>>,
    queue: Option<NonBlocking>,
}

#[derive(Debug)]
struct Output {
    file: File,
    pending: Vec<u8>,
}

impl Output {
    fn flush(&mut self) {
        if !self.pending.is_empty() {
            // A full disk must not stop serving: what cannot be written is dropped.
            let _ = self.file.write_all(&self.pending);
            self.pending.clear();
        }
    }
}

/// The queue's end of a log file: lines gather and are written when the queue is empty
/// (its thread flushes after each batch) or `BATCH` has gathered.
struct QueuedFile(Arc<Mutex<Output>>);

impl Write for QueuedFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut out = self.0.lock().unwrap_or_else(|e| e.into_inner());
        out.pending.extend_from_slice(buf);
        if out.pending.len() >= BATCH {
            out.flush();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).flush();
        Ok(())
    }
}

impl LogFile {
    /// The open file for `path` (opened now, folders created, if nothing has it open yet),
    /// written line by line.
    pub fn open(path: &Path) -> std::io::Result<Arc<LogFile>> {
        Self::open_with(path, false)
    }

    /// The same, written through a queue by a thread of its own (the access log); see the
    /// module docs.
    pub fn open_queued(path: &Path) -> std::io::Result<Arc<LogFile>> {
        Self::open_with(path, true)
    }

    fn open_with(path: &Path, queued: bool) -> std::io::Result<Arc<LogFile>> {
        let mut open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
        open.retain(|(_, w)| w.strong_count() > 0);
        if let Some(f) = open
            .iter()
            .find(|(p, _)| p == path)
            .and_then(|(_, w)| w.upgrade())
        {
            return Ok(f);
        }
        let output = Arc::new(Mutex::new(Output {
            file: open_append(path)?,
            pending: Vec::new(),
        }));
        let queue = queued.then(|| queue(QueuedFile(output.clone()), "wsgimux-access-log"));
        let file = Arc::new(LogFile {
            path: path.to_path_buf(),
            file: output,
            queue,
        });
        open.push((path.to_path_buf(), Arc::downgrade(&file)));
        Ok(file)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `line` and a newline in one write (lines from several threads never mix); a
    /// queued file only hands the line to its queue.
    pub fn write_line(&self, line: &str) {
        let _ = self.write_terminated(format!("{line}\n").as_bytes());
    }

    /// Appends `line`, which ends with its newline, in one write.
    pub fn write_terminated(&self, line: &[u8]) -> std::io::Result<()> {
        match &self.queue {
            // Never blocks: a full queue drops the line and counts it.
            Some(queue) => queue.clone().write_all(line),
            None => {
                let mut out = self.file.lock().unwrap_or_else(|e| e.into_inner());
                out.pending.extend_from_slice(line);
                out.flush();
                Ok(())
            }
        }
    }

    /// Writes what is buffered.
    pub fn flush(&self) {
        self.file.lock().unwrap_or_else(|e| e.into_inner()).flush();
    }

    /// What was buffered goes to the file being moved away; the next lines to a new one.
    fn reopen(&self) -> std::io::Result<()> {
        let mut out = self.file.lock().unwrap_or_else(|e| e.into_inner());
        out.flush();
        out.file = open_append(&self.path)?;
        Ok(())
    }
}

/// At shutdown: every queue's lines written (each writer thread finishes), then every open
/// file's.
pub fn flush_all() {
    let guards = std::mem::take(&mut *GUARDS.lock().unwrap_or_else(|e| e.into_inner()));
    drop(guards);
    let files: Vec<Arc<LogFile>> = {
        let open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
        open.iter().filter_map(|(_, w)| w.upgrade()).collect()
    };
    for f in files {
        f.flush();
    }
}

impl Drop for LogFile {
    fn drop(&mut self) {
        // A queued file's last lines may still be in its queue: its thread writes them.
        self.file.lock().unwrap_or_else(|e| e.into_inner()).flush();
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new().create(true).append(true).open(path)
}

/// Reopens every open log file (SIGUSR1); returns how many, with the ones that failed.
pub fn reopen_all() -> (usize, Vec<String>) {
    let files: Vec<Arc<LogFile>> = {
        let open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
        open.iter().filter_map(|(_, w)| w.upgrade()).collect()
    };
    // `open` keeps one live entry per path, so each file is reopened once.
    let failed = files
        .iter()
        .filter_map(|f| {
            f.reopen()
                .err()
                .map(|e| format!("{}: {e}", f.path.display()))
        })
        .collect();
    (files.len(), failed)
}
