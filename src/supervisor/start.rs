//! Starting one process of a slot and waiting until it answers, publishing it in (and taking
//! it out of) the generation's endpoint list, stopping it, and reporting a failed start.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::process::Child;

use crate::config::{Address, PORT_PLACEHOLDER};
use crate::runtime_dir::socket_path;
use crate::upstream::Endpoint;

use super::child::{
    describe, free_port, last_line, random_below, remove_socket, spawn_child, stop_child,
    tail_lines, HeldOutput,
};
use super::generation::{ProcessState, StartFailure};
use super::plan::Launch;
use super::secs;
use super::slot::{Ended, Running, Slot, Startup};
use super::stopped;

/// Failed starts in a row after which a slot is `failing`.
pub(super) const FAILING_AFTER: u32 = 3;

/// How often a starting process's socket is tried.
pub(super) const READY_POLL: Duration = Duration::from_millis(20);

impl Slot {
    /// Starts one process and waits until it answers; publishes it. Err: why there is none.
    pub(super) async fn start_process(&mut self, attempt: &mut u64) -> Result<Running, Ended> {
        *attempt += 1;
        let address = self.listen_address(*attempt);
        let plan = self.plan.clone();
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let held = HeldOutput::holding();
        while self.output.try_join_next().is_some() {}
        let spawned = spawn_child(&plan, &address, &tail, &held, &mut self.output);
        let (mut child, record) = match spawned {
            Ok(c) => c,
            Err(e) => {
                let reason = format!("cannot start {}: {e}", plan.launch.program());
                self.start_failed(reason, tail_lines(&tail), &held);
                return Err(Ended::Crashed);
            }
        };
        let pid = child.id().unwrap_or(0);
        if !self.recycling {
            self.view(|v| {
                v.state = ProcessState::Starting;
                v.pid = Some(pid);
                v.started = Some(SystemTime::now());
            });
        }
        let startup = self.wait_ready(&mut child, &address).await;
        self.settle_start(startup, &mut child, &address, &tail, &held)
            .await?;
        self.started_after_failures(&held);
        let endpoint = Endpoint::new(address.clone(), pid);
        tracing::debug!(
            "[{}] generation {} process {} ready (pid {pid})",
            plan.name,
            plan.generation,
            self.slot
        );
        self.publish(Some(endpoint.clone()), 0);
        self.view(|v| {
            v.state = ProcessState::Ready;
            v.pid = Some(pid);
            v.started = Some(SystemTime::now());
            v.endpoint = Some(endpoint.clone());
        });
        let recycle_at = plan.policy.max_requests.map(|n| {
            let jitter = plan.policy.max_requests_jitter;
            n + if jitter > 0 {
                random_below(jitter + 1)
            } else {
                0
            }
        });
        Ok(Running {
            child,
            pid,
            address,
            endpoint,
            recycle_at,
            _record: record,
        })
    }

    /// What a start that did not end ready means: the child is stopped (if it runs), its socket
    /// removed, a failure reported with the child's last stderr lines.
    async fn settle_start(
        &mut self,
        startup: Startup,
        child: &mut Child,
        address: &Address,
        tail: &Mutex<VecDeque<String>>,
        held: &Mutex<HeldOutput>,
    ) -> Result<(), Ended> {
        let pid = child.id().unwrap_or(0);
        match startup {
            Startup::Ready => Ok(()),
            Startup::Stopping => {
                stop_child(child, pid).await;
                remove_socket(address);
                Err(Ended::Stop)
            }
            Startup::Exited(status) => {
                // Let the log pumps deliver the last lines before they are quoted.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let reason = format!(
                    "exited during start-up ({}){}",
                    describe(status),
                    last_line(tail)
                );
                self.view(|v| v.last_exit = Some(describe(status)));
                self.start_failed(reason, tail_lines(tail), held);
                remove_socket(address);
                Err(Ended::Crashed)
            }
            Startup::TimedOut => {
                // Reported before the stop, which may take STOP_GRACE: a reload waits for it.
                let reason = format!(
                    "did not answer on {address} within startup_timeout {}{}",
                    secs(self.plan.startup_timeout),
                    last_line(tail)
                );
                self.start_failed(reason, tail_lines(tail), held);
                stop_child(child, pid).await;
                remove_socket(address);
                Err(Ended::Crashed)
            }
        }
    }

    /// A start that answered: the held output goes to the log as it would have; a slot that
    /// was failing says it recovered.
    fn started_after_failures(&mut self, held: &Mutex<HeldOutput>) {
        for line in HeldOutput::take(held) {
            match &self.plan.log {
                Some(f) => f.write_line(&format!(
                    "{} {line}",
                    crate::dates::iso_time(SystemTime::now())
                )),
                None => tracing::info!(target: "wsgimux::app", "{line}"),
            }
        }
        if self.failures >= FAILING_AFTER {
            tracing::info!(
                "[{}] process {} started, after {} failed starts",
                self.plan.name,
                self.slot,
                self.failures
            );
        }
        self.failures = 0;
        self.last_failure = None;
        self.view(|v| {
            v.failing_since = None;
            v.last_error = None;
        });
    }

    /// Unpublishes a running process and stops it (TERM, grace, KILL).
    pub(super) async fn stop_process(&self, r: &mut Running) {
        self.view(|v| v.state = ProcessState::Stopping);
        self.unpublish(r);
        stop_child(&mut r.child, r.pid).await;
    }

    /// Takes a process out of the ready list and closes its pooled connections.
    pub(super) fn unpublish(&self, r: &Running) {
        self.publish(None, r.pid);
        r.endpoint.close_idle();
        self.view(|v| {
            if v.pid == Some(r.pid) {
                v.endpoint = None;
            }
        });
        remove_socket(&r.address);
    }

    /// Where this start of the slot's process is to listen: a fresh socket path per attempt, or
    /// a free loopback port for a `command:` that asks for `{port}`.
    pub(super) fn listen_address(&self, attempt: u64) -> Address {
        if let Launch::Command { argv } = &self.plan.launch {
            if argv.iter().any(|a| a.contains(PORT_PLACEHOLDER)) {
                return Address::Tcp {
                    host: "127.0.0.1".into(),
                    port: free_port().unwrap_or(0),
                };
            }
        }
        Address::Unix(socket_path(
            &self.plan.socket_dir,
            self.plan.generation,
            self.slot,
            attempt,
        ))
    }

    pub(super) async fn wait_ready(&mut self, child: &mut Child, address: &Address) -> Startup {
        let deadline = tokio::time::Instant::now() + self.plan.startup_timeout;
        loop {
            // wsgimux's workers rename their socket into place once they listen: a connect
            // that succeeds means the app is imported and requests will be served. (A command's
            // server may still be loading the app; it queues what arrives meanwhile.)
            if address.answers(READY_POLL * 10).await {
                return Startup::Ready;
            }
            tokio::select! {
                status = child.wait() => {
                    return match status {
                        Ok(s) => Startup::Exited(s),
                        Err(_) => Startup::TimedOut,
                    };
                }
                _ = stopped(&mut self.stop) => return Startup::Stopping,
                _ = tokio::time::sleep_until(deadline) => return Startup::TimedOut,
                _ = tokio::time::sleep(READY_POLL) => {}
            }
        }
    }

    /// Adds (Some) or removes (None) this slot's endpoint in the app's ready list.
    pub(super) fn publish(&self, endpoint: Option<Arc<Endpoint>>, pid: u32) {
        self.endpoints.send_modify(|eps| {
            let mut list: Vec<Arc<Endpoint>> = eps
                .ready
                .iter()
                .filter(|e| e.pid() != pid)
                .cloned()
                .collect();
            if endpoint.is_some() {
                eps.starting = false;
                eps.failing = false;
            }
            list.extend(endpoint);
            eps.ready = list.into();
        });
    }

    /// Reports the slot's failed start; `stderr`: the child's last lines, if it ran; `held`:
    /// its output, logged with the failure at ERROR when it differs from the last failure's
    /// (the same traceback on every retry is logged once). After [`FAILING_AFTER`] failures
    /// in a row the slot is `failing`.
    pub(super) fn start_failed(
        &mut self,
        reason: String,
        stderr: Vec<String>,
        held: &Mutex<HeldOutput>,
    ) {
        let slot = self.slot;
        // Requests waiting for the first start get their 503 now, saying it failed.
        self.endpoints.send_if_modified(|eps| {
            let failing = eps.ready.is_empty();
            let changed = eps.starting || eps.failing != failing;
            eps.starting = false;
            eps.failing = failing;
            changed
        });
        let output = HeldOutput::take(held);
        // Compared without the `[app:pid]` prefixes: every retry has a new pid.
        let unprefixed: Vec<&str> = output
            .iter()
            .map(|l| l.split_once("] ").map_or(l.as_str(), |(_, rest)| rest))
            .collect();
        let said = format!("{reason}\n{}", unprefixed.join("\n"));
        let name = &self.plan.name;
        if self.last_failure.as_deref() != Some(said.as_str()) {
            if output.is_empty() {
                tracing::error!("[{name}] process {slot} failed to start: {reason}");
            } else if crate::logfile::json_log() {
                // One record; the output (a traceback, mostly) as its `exception`.
                let app = &**name;
                tracing::error!(
                    app,
                    exception = unprefixed.join("\n"),
                    "[{name}] process {slot} failed to start: {reason}"
                );
            } else {
                tracing::error!(
                    "[{name}] process {slot} failed to start: {reason}\n{}",
                    output.join("\n")
                );
            }
            self.last_failure = Some(said);
        } else {
            tracing::debug!("[{name}] process {slot} failed to start again, the same way");
        }
        self.failures += 1;
        if self.failures >= FAILING_AFTER {
            let last_error = reason.rsplit(": ").next().map(str::to_string);
            self.view(|v| {
                v.state = ProcessState::Failing;
                v.failing_since.get_or_insert_with(SystemTime::now);
                v.last_error = last_error.or(Some(reason.clone()));
            });
        }
        self.failure.send_if_modified(|f| {
            let first = f.is_none();
            if first {
                *f = Some(StartFailure {
                    slot,
                    reason,
                    stderr,
                });
            }
            first
        });
    }
}
