//! What the route table leads to: one app's [`AppRoute`] — its mount, limits, counters and
//! its ready processes (the endpoint list `supervisor` publishes) — and the choice of a
//! process for a request. Reads endpoint lists; never writes them, never starts a process
//! (an on-demand app is woken through its `Demand`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::header::{HeaderMap, HeaderValue};
use percent_encoding::{percent_decode, utf8_percent_encode, AsciiSet, CONTROLS};
use tokio::sync::watch;

use crate::accesslog::{AccessSink, Served};
use crate::config::{AppSpec, Entry, RequestBuffering, StaticAlias};
use crate::metrics::AppCounters;
use crate::upstream::{Demand, Endpoint, Endpoints};

use super::headers::MOUNT;

/// Characters of a mount escaped in the mount header (it must stay visible ASCII).
const MOUNT_ESCAPES: &AsciiSet = &CONTROLS.add(b' ').add(b'%').add(b'"').add(b'\\');

/// What the route table leads to: an app, its mount, its limits and its ready processes.
#[derive(Debug)]
pub struct AppRoute {
    pub name: Arc<str>,
    /// The generation of the app's processes this route leads to.
    pub generation: u64,
    pub(super) mount: String,
    mount_header: Option<HeaderValue>,
    endpoints: watch::Receiver<Endpoints>,
    next: AtomicUsize,
    pub(super) max_body_size: Option<u64>,
    pub(super) request_timeout: Duration,
    pub(super) request_buffering: RequestBuffering,
    /// A `command:` or `upstream:` app: its server may take an `Upgrade` (WebSockets).
    pub(super) upgrades: bool,
    /// Longest silence within the response body; None: none.
    pub(super) response_idle_timeout: Option<Duration>,
    /// Requests in flight at which new ones get 503 ([`AppSpec::admission_cap`]).
    pub(super) max_in_flight: usize,
    /// How long a request beyond `max_in_flight` waits for a place before 503.
    overflow_wait: Duration,
    /// The app's counters (kept across its generations).
    pub(super) stats: Arc<AppCounters>,
    /// The app's `static:` folders, prefixes including the mount; longest first.
    pub(super) statics: Vec<StaticAlias>,
    /// Wakes the processes of an app that starts on demand (or stopped when idle).
    demand: Option<Demand>,
    startup_timeout: Duration,
    /// The app's own pages for the errors the front answers for it, by status.
    error_pages: Arc<BTreeMap<u16, PathBuf>>,
    /// The app's own access log (`access_log`), opened by whoever builds the route table.
    pub access: Option<Arc<AccessSink>>,
}

impl AppRoute {
    pub fn new(
        spec: &AppSpec,
        generation: u64,
        endpoints: watch::Receiver<Endpoints>,
        stats: Arc<AppCounters>,
        demand: Option<Demand>,
    ) -> Self {
        let mount = &spec.route.mount;
        let mount_header = (!mount.is_root()).then(|| encode_mount(mount.as_str()));
        AppRoute {
            name: spec.name.as_str().into(),
            generation,
            mount: if mount.is_root() {
                String::new()
            } else {
                mount.as_str().to_string()
            },
            mount_header,
            endpoints,
            next: AtomicUsize::new(0),
            max_body_size: spec.route.max_body_size,
            request_timeout: spec.route.request_timeout,
            request_buffering: spec.route.request_buffering,
            upgrades: matches!(
                spec.process.entry,
                Entry::Command { .. } | Entry::Upstream { .. }
            ),
            response_idle_timeout: spec.route.response_idle_timeout,
            max_in_flight: spec.admission_cap(),
            overflow_wait: spec.route.overflow_wait,
            stats,
            statics: spec
                .route
                .statics
                .iter()
                .map(|a| StaticAlias {
                    prefix: if mount.is_root() {
                        a.prefix.clone()
                    } else {
                        format!("{}{}", mount.as_str(), a.prefix)
                    },
                    ..a.clone()
                })
                .collect(),
            demand,
            startup_timeout: spec.lifecycle.startup_timeout,
            error_pages: Arc::new(spec.route.error_pages.clone()),
            access: None,
        }
    }

    /// What the access log and the counters learn of the app that served a request.
    pub(super) fn served(&self) -> Served {
        Served {
            app: self.name.clone(),
            stats: self.stats.clone(),
            process: None,
            error_pages: self.error_pages.clone(),
            access: self.access.clone(),
        }
    }

    /// A ready process; for an app whose processes are not running (on demand, or stopped
    /// when idle), wakes them, and for one whose first start is under way, waits — either
    /// up to its startup_timeout. An app that has failed or crashed gets no wait (503 now).
    pub(super) async fn ready_process(&self, avoid: Option<u32>) -> Option<Arc<Endpoint>> {
        if let Some(e) = self.pick(avoid) {
            return Some(e);
        }
        match &self.demand {
            Some(demand) => demand.wake(),
            // Not dormant: worth waiting for only while its first start is under way (right
            // after wsgimux started, e.g. a request that woke a socket-activated service).
            None if self.endpoints.borrow().starting => {}
            None => return None,
        }
        let mut endpoints = self.endpoints.clone();
        let wait = async {
            loop {
                if let Some(e) = self.pick(avoid) {
                    return Some(e);
                }
                if self.demand.is_none() && !endpoints.borrow_and_update().starting {
                    return None;
                }
                if endpoints.changed().await.is_err() {
                    return None;
                }
            }
        };
        tokio::time::timeout(self.startup_timeout, wait)
            .await
            .ok()
            .flatten()
    }

    /// No process answers and the last start failed.
    pub(super) fn failing(&self) -> bool {
        self.endpoints.borrow().failing
    }

    /// Requests in flight over all the app's ready processes.
    pub(super) fn in_flight(&self) -> usize {
        self.endpoints
            .borrow()
            .ready
            .iter()
            .map(|e| e.in_flight())
            .sum()
    }

    /// Whether the app has a place for one more request, waiting up to its `overflow_wait`
    /// for a request to end when it is full. The wait, not an instant 503, is what keeps a
    /// client that retries at once from turning an app's overflow into a flood of 503s that
    /// takes the front's CPU from the other apps (HAProxy's `timeout queue` likewise).
    pub(super) async fn has_place(&self) -> bool {
        if self.in_flight() < self.max_in_flight {
            return true;
        }
        if self.overflow_wait.is_zero() {
            return false;
        }
        let until = tokio::time::Instant::now() + self.overflow_wait;
        let mut endpoints = self.endpoints.clone();
        loop {
            let ready = endpoints.borrow_and_update().ready.clone();
            let mut freed: Vec<_> = ready.iter().map(|e| Box::pin(e.freed())).collect();
            // Registered before the count is read: a request ending in between still wakes.
            for f in &mut freed {
                f.as_mut().enable();
            }
            if self.in_flight() < self.max_in_flight {
                return true;
            }
            let any_freed = async {
                if freed.is_empty() {
                    std::future::pending::<()>().await;
                } else {
                    futures_util::future::select_all(freed).await;
                }
            };
            tokio::select! {
                _ = any_freed => {}
                changed = endpoints.changed() => {
                    if changed.is_err() {
                        return false;
                    }
                }
                _ = tokio::time::sleep_until(until) => return false,
            }
        }
    }

    /// The ready process with the fewest requests in flight, starting the scan at a rotating
    /// position so equal loads spread out; `avoid` (a process that just failed) only when it is
    /// the only one.
    fn pick(&self, avoid: Option<u32>) -> Option<Arc<Endpoint>> {
        let eps = self.endpoints.borrow().ready.clone();
        if eps.is_empty() {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..eps.len())
            .map(|i| &eps[(start + i) % eps.len()])
            .min_by_key(|e| (Some(e.pid()) == avoid, e.in_flight()))
            .cloned()
    }
}

fn encode_mount(mount: &str) -> HeaderValue {
    let encoded = utf8_percent_encode(mount, MOUNT_ESCAPES).to_string();
    HeaderValue::from_str(&encoded).expect("percent-encoded mount is a valid header")
}

/// The mount header: the app's mount, after the prefix a trusted proxy in front already
/// mounted wsgimux under.
pub(super) fn set_mount(headers: &mut HeaderMap, route: &AppRoute, outer: Option<&str>) {
    match outer {
        Some(outer) => {
            let outer = percent_decode(outer.as_bytes()).decode_utf8_lossy();
            let full = format!("{}{}", outer.trim_end_matches('/'), route.mount);
            if !full.is_empty() {
                headers.insert(MOUNT, encode_mount(&full));
            }
        }
        None => {
            if let Some(m) = &route.mount_header {
                headers.insert(MOUNT, m.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(mount: &str) -> AppSpec {
        let yaml =
            format!("apps:\n  a:\n    python: python3\n    script: a.py\n    mount: {mount}\n");
        let config = crate::config::from_yaml(&yaml, std::path::Path::new("/x/w.yaml")).unwrap();
        config.apps[0].clone()
    }

    #[test]
    fn mount_header_is_percent_encoded_and_follows_a_trusted_prefix() {
        let (_tx, rx) = watch::channel(Endpoints::default());
        let r = AppRoute::new(&spec("/café"), 1, rx.clone(), Default::default(), None);
        assert_eq!(r.mount_header.clone().unwrap(), "/caf%C3%A9");
        let mut h = HeaderMap::new();
        set_mount(&mut h, &r, Some("/outer/"));
        assert_eq!(h[&MOUNT], "/outer/caf%C3%A9");
        let root = AppRoute::new(&spec("/"), 1, rx, Default::default(), None);
        assert!(root.mount_header.is_none());
        let mut h = HeaderMap::new();
        set_mount(&mut h, &root, Some("/outer"));
        assert_eq!(h[&MOUNT], "/outer");
    }
}
