//! Log files wsgimux writes itself (the access log, apps' output under `log_dir`): opened for
//! appending, shared by path, and reopened together on SIGUSR1 so that newsyslog/logrotate can
//! move them away and have new ones created.
//!
//! The access log is buffered, as nginx's `access_log … buffer=64k flush=1s`: lines collect in
//! memory and are written when 64 KiB have gathered, at least once a second, before a reopen
//! and at shutdown — one `write` per request cost the front more than anything else it does
//! (BENCHMARKS.md). Apps' output is written line by line (it is read as it happens).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

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

/// Buffered lines are written once this much has gathered.
const BUFFER: usize = 64 * 1024;
/// …and at least this often.
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    file: Mutex<Output>,
    buffered: bool,
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

impl LogFile {
    /// The open file for `path` (opened now, folders created, if nothing has it open yet),
    /// written line by line.
    pub fn open(path: &Path) -> std::io::Result<Arc<LogFile>> {
        Self::open_with(path, false)
    }

    /// The same, buffered (the access log); see the module docs.
    pub fn open_buffered(path: &Path) -> std::io::Result<Arc<LogFile>> {
        static FLUSHER: std::sync::Once = std::sync::Once::new();
        FLUSHER.call_once(|| {
            let _ = std::thread::Builder::new()
                .name("wsgimux-log-flush".into())
                .spawn(|| loop {
                    std::thread::sleep(FLUSH_EVERY);
                    flush_all();
                });
        });
        Self::open_with(path, true)
    }

    fn open_with(path: &Path, buffered: bool) -> std::io::Result<Arc<LogFile>> {
        let mut open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
        open.retain(|(_, w)| w.strong_count() > 0);
        if let Some(f) = open
            .iter()
            .find(|(p, _)| p == path)
            .and_then(|(_, w)| w.upgrade())
        {
            return Ok(f);
        }
        let file = Arc::new(LogFile {
            path: path.to_path_buf(),
            file: Mutex::new(Output {
                file: open_append(path)?,
                pending: Vec::new(),
            }),
            buffered,
        });
        open.push((path.to_path_buf(), Arc::downgrade(&file)));
        Ok(file)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `line` and a newline in one write (lines from several threads never mix).
    pub fn write_line(&self, line: &str) {
        let mut out = self.file.lock().unwrap_or_else(|e| e.into_inner());
        out.pending.extend_from_slice(line.as_bytes());
        out.pending.push(b'\n');
        if !self.buffered || out.pending.len() >= BUFFER {
            out.flush();
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

/// Writes every open file's buffered lines (once a second, and at shutdown).
pub fn flush_all() {
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
        self.file
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .flush();
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
