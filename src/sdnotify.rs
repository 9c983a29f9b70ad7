//! What wsgimux tells the service manager that started it (systemd's `Type=notify` protocol,
//! through the `sd-notify` crate): READY once it listens and every app that starts at once is
//! ready or has failed, RELOADING/READY around each reload, STOPPING at shutdown, WATCHDOG
//! pings when the unit asks for them. Without `NOTIFY_SOCKET` every call does nothing.
//!
//! Owns no state but whether READY was sent (a reload before that is not announced, so systemd
//! never sees READY before start-up is done). A failed send is logged and never fatal.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sd_notify::NotifyState;

static READY_SENT: AtomicBool = AtomicBool::new(false);

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!("cannot notify the service manager: {e}");
    }
}

/// Start-up is done; `status` says what serves and what failed.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
    READY_SENT.store(true, Ordering::Relaxed);
}

/// A reload begins (only announced after READY): RELOADING with the monotonic time systemd
/// v253+ requires beside it. Returns whether it was announced.
pub fn reloading() -> bool {
    if !READY_SENT.load(Ordering::Relaxed) {
        return false;
    }
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(e) => tracing::debug!("cannot read the monotonic clock: {e}"),
    }
    true
}

/// A reload announced by [`reloading`] is over (applied or not: wsgimux serves either way).
pub fn reloaded(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// With `WATCHDOG_USEC` set (the unit's `WatchdogSec=`), pings at half that interval for as
/// long as the returned task runs — from the runtime, so a stuck runtime stops the pings.
pub fn start_watchdog() -> Option<tokio::task::JoinHandle<()>> {
    let every = sd_notify::watchdog_enabled()? / 2;
    let every = every.max(Duration::from_millis(100));
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            send(&[NotifyState::Watchdog]);
        }
    }))
}
