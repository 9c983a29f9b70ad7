//! Log files wsgimux writes itself (the access log, apps' output under `log_dir`): opened for
//! appending, shared by path, and reopened together on SIGUSR1 so that newsyslog/logrotate can
//! move them away and have new ones created.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

/// Every open log file, by path, so SIGUSR1 reaches each one once.
static OPEN: Mutex<Vec<(PathBuf, Weak<LogFile>)>> = Mutex::new(Vec::new());

#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    file: Mutex<File>,
}

impl LogFile {
    /// The open file for `path` (opened now, folders created, if nothing has it open yet).
    pub fn open(path: &Path) -> std::io::Result<Arc<LogFile>> {
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
            file: Mutex::new(open_append(path)?),
        });
        open.push((path.to_path_buf(), Arc::downgrade(&file)));
        Ok(file)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `line` and a newline in one write (lines from several threads never mix).
    pub fn write_line(&self, line: &str) {
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        // A full disk must not stop serving; the failure is reported once per reopen at most.
        let _ = f.write_all(&buf);
    }

    fn reopen(&self) -> std::io::Result<()> {
        let fresh = open_append(&self.path)?;
        *self.file.lock().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
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
