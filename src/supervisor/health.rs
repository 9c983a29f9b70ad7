//! An `upstream:` app's one slot: nothing to start; the server is checked every
//! [`HEALTH_INTERVAL`] (for `https://`, the TLS handshake too) and routed to while it accepts
//! connections. One that accepts but whose certificate does not verify stays routed, so its
//! requests get 502 — the log says why, once — rather than a 503 that hides the reason; there
//! is never a fallback to an unverified connection.

use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::Address;
use crate::upstream::{Endpoint, Health};

use super::generation::ProcessState;
use super::outlet::Outlet;
use super::start::READY_POLL;
use super::{secs, stopped};

/// How often an `upstream:` server is checked, and how long a check may take.
const HEALTH_INTERVAL: Duration = Duration::from_secs(2);
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// Failed checks in a row before an upstream is taken out of the routes.
const HEALTH_FAILURES: u32 = 2;

/// An `upstream:` app: nothing to start; checked every [`HEALTH_INTERVAL`], routed to while it
/// accepts connections, until `stop`. Not answering within startup_timeout counts as a failed
/// start (a reload keeps the old config), but checking goes on.
pub(super) async fn watch_upstream(
    out: &mut Outlet,
    address: Address,
    stop: &mut watch::Receiver<bool>,
) {
    let name = out.plan.name.clone();
    let deadline = Instant::now() + out.plan.startup_timeout;
    let mut up = false;
    let mut failures = 0u32;
    let mut reported = false;
    let mut untrusted: Option<String> = None;
    loop {
        let health = address.health(HEALTH_TIMEOUT).await;
        match &health {
            Health::Untrusted(why) if untrusted.as_ref() != Some(why) => {
                tracing::error!(
                    "[{name}] TLS with upstream {address} fails: {why}; its requests get 502"
                );
                untrusted = Some(why.clone());
            }
            Health::Up if untrusted.take().is_some() => {
                tracing::info!("[{name}] TLS with upstream {address} works again");
            }
            _ => {}
        }
        if let Health::Down(why) = &health {
            tracing::debug!("[{name}] upstream {address}: {why}");
        }
        if !matches!(health, Health::Down(_)) {
            failures = 0;
            if !up {
                up = true;
                if reported {
                    tracing::info!("[{name}] upstream {address} answers again");
                }
                let endpoint = Endpoint::keeping_idle(
                    address.clone(),
                    0,
                    crate::upstream::SERVER_IDLE_TIMEOUT,
                );
                out.publish(Some(endpoint.clone()), 0);
                out.view(|v| {
                    v.state = ProcessState::Ready;
                    v.started = Some(SystemTime::now());
                    v.endpoint = Some(endpoint);
                });
            }
        } else {
            failures += 1;
            if up && failures >= HEALTH_FAILURES {
                up = false;
                reported = true;
                tracing::warn!(
                    "[{name}] upstream {address} does not accept connections; not routing to it"
                );
                out.publish(None, 0);
                out.view(|v| {
                    v.state = ProcessState::Down;
                    v.endpoint = None;
                });
            }
            if !up && !reported && Instant::now() >= deadline {
                reported = true;
                let reason = format!(
                    "upstream {address} did not accept a connection within startup_timeout {}",
                    secs(out.plan.startup_timeout)
                );
                out.start_failed(reason, Vec::new(), Vec::new());
            }
        }
        let pause = if up { HEALTH_INTERVAL } else { READY_POLL * 10 };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stopped(stop) => {
                out.publish(None, 0);
                return;
            }
        }
    }
}
