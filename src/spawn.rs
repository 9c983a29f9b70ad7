//! Starting a process whose executable is, for a moment, open for writing somewhere.
//!
//! `execve` fails with ETXTBSY while any process holds the file open for writing — a deploy
//! writing a venv, or, far more often, another thread's fork that has not yet reached its own
//! exec and so still holds a copy of a descriptor some thread just wrote the script through
//! (`O_CLOEXEC` closes it only at that exec). The state lasts microseconds, so the start is
//! tried again after short waits instead of reporting a broken interpreter.

use std::io;
use std::time::Duration;

/// Waits between tries: about a third of a second in all.
const WAITS_MS: [u64; 6] = [2, 8, 20, 40, 80, 160];

/// `start()`, tried again while it fails because the executable is busy.
pub async fn retry_while_busy<T>(mut start: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    for wait in WAITS_MS {
        match start() {
            Err(e) if e.kind() == io::ErrorKind::ExecutableFileBusy => {
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
            done => return done,
        }
    }
    start()
}

/// [`retry_while_busy`] for a thread of its own (the one that keeps the capabilities to start
/// processes as other accounts), which may sleep.
pub fn retry_while_busy_here<T>(mut start: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    for wait in WAITS_MS {
        match start() {
            Err(e) if e.kind() == io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(Duration::from_millis(wait));
            }
            done => return done,
        }
    }
    start()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_busy_executable_is_tried_again_and_other_errors_are_not() {
        let mut tries = 0;
        let started = retry_while_busy(|| {
            tries += 1;
            if tries < 3 {
                Err(io::Error::from(io::ErrorKind::ExecutableFileBusy))
            } else {
                Ok(tries)
            }
        })
        .await;
        assert_eq!(started.ok(), Some(3));

        let mut tries = 0;
        let missing = retry_while_busy(|| -> io::Result<()> {
            tries += 1;
            Err(io::Error::from(io::ErrorKind::NotFound))
        })
        .await;
        assert!(missing.is_err());
        assert_eq!(tries, 1);

        let mut tries = 0;
        let busy = retry_while_busy(|| -> io::Result<()> {
            tries += 1;
            Err(io::Error::from(io::ErrorKind::ExecutableFileBusy))
        })
        .await;
        assert_eq!(
            busy.map_err(|e| e.kind()),
            Err(io::ErrorKind::ExecutableFileBusy)
        );
        assert_eq!(tries, WAITS_MS.len() + 1);
    }
}
