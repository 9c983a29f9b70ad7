//! An app's `restart_file`: touching it (a new modification time, or the file appearing)
//! restarts the app without downtime — Passenger's `tmp/restart.txt`, mod_wsgi's touched
//! script. Polled once a second, as Passenger does: one `stat` a second works on every file
//! system (network mounts, containers) where change events may not.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::trigger::Trigger;

const POLL: Duration = Duration::from_secs(1);

/// Watches one app's restart file; dropping it stops the watch.
pub struct RestartFileWatcher {
    pub file: PathBuf,
    task: JoinHandle<()>,
}

impl Drop for RestartFileWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn modified(file: &Path) -> Option<SystemTime> {
    file.metadata().and_then(|m| m.modified()).ok()
}

impl RestartFileWatcher {
    /// Starts watching `file` for `app`: its state now is the baseline.
    pub fn start(app: &str, file: PathBuf, triggers: mpsc::Sender<Trigger>) -> Self {
        let (app, watched) = (app.to_string(), file.clone());
        let task = tokio::spawn(async move {
            let mut last = modified(&watched);
            loop {
                tokio::time::sleep(POLL).await;
                let now = modified(&watched);
                if now.is_some() && now != last {
                    tracing::info!("[{app}] {} was touched: restarting", watched.display());
                    let t = Trigger::Code {
                        app: app.clone(),
                        file: watched.clone(),
                    };
                    if triggers.send(t).await.is_err() {
                        return;
                    }
                }
                last = now;
            }
        });
        RestartFileWatcher { file, task }
    }
}
