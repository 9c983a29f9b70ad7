//! Starting one process of a slot and waiting until it answers, publishing it (through the
//! slot's `Outlet`), taking it out again and stopping it, and reporting a failed start: the
//! `Starter`, which the slot's loop (`slot`) drives.

use std::collections::VecDeque;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::process::Child;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::{Address, PORT_PLACEHOLDER};
use crate::leftover::ChildRecord;
use crate::runtime_dir::socket_path;
use crate::upstream::Endpoint;

use super::child::{
    describe, free_port, last_line, random_below, remove_socket, spawn_child, stop_child,
    tail_lines, HeldOutput,
};
use super::generation::ProcessState;
use super::outlet::Outlet;
use super::plan::Launch;
use super::policy;
use super::secs;
use super::stopped;

/// How often a starting process's socket is tried.
pub(super) const READY_POLL: Duration = Duration::from_millis(20);

/// How a start that did not answer ended.
enum Startup {
    Ready,
    Exited(ExitStatus),
    TimedOut,
    Stopping,
}

/// How a served process ended.
pub(super) enum Ended {
    /// The slot must stop (the generation is stopped or retired).
    Stop,
    /// The process exited by itself or failed to start: start again after a backoff.
    Crashed,
    /// Stopped for `idle_timeout`: start again with the next request.
    Idle,
}

/// A process that answers on its socket.
pub(super) struct Running {
    pub(super) child: Child,
    pub(super) pid: u32,
    pub(super) address: Address,
    pub(super) endpoint: Arc<Endpoint>,
    /// Recycle after this many requests (max_requests + this process's jitter).
    pub(super) recycle_at: Option<u64>,
    /// Its record in the runtime dir, removed when this is dropped (the child reaped).
    pub(super) _record: ChildRecord,
}

/// Starts and stops a slot's processes, and shows them through its outlet.
pub(super) struct Starter {
    pub(super) outlet: Outlet,
    /// The tasks copying its children's output to the log.
    pub(super) output: JoinSet<()>,
}

impl Starter {
    /// Starts one process and waits until it answers; publishes it. Err: why there is none.
    /// `replacing`: another process of the slot serves meanwhile (recycling), so the view
    /// keeps showing that one.
    pub(super) async fn start_process(
        &mut self,
        attempt: &mut u64,
        stop: &mut watch::Receiver<bool>,
        replacing: bool,
    ) -> Result<Running, Ended> {
        *attempt += 1;
        let address = self.listen_address(*attempt);
        let plan = self.outlet.plan.clone();
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let held = HeldOutput::holding();
        while self.output.try_join_next().is_some() {}
        let spawned = spawn_child(&plan, &address, &tail, &held, &mut self.output).await;
        let (mut child, record) = match spawned {
            Ok(c) => c,
            Err(e) => {
                let reason = format!("cannot start {}: {e}", plan.launch.program());
                self.failed(reason, &tail, &held);
                return Err(Ended::Crashed);
            }
        };
        let pid = child.id().unwrap_or(0);
        if !replacing {
            self.outlet.view(|v| {
                v.state = ProcessState::Starting;
                v.pid = Some(pid);
                v.started = Some(SystemTime::now());
            });
        }
        let startup = self.wait_ready(&mut child, &address, stop).await;
        self.settle_start(startup, &mut child, &address, &tail, &held)
            .await?;
        self.started_after_failures(&held);
        // A server wsgimux did not write may time idle connections out soon.
        let idle = match plan.launch {
            super::plan::Launch::Worker { .. } => crate::upstream::WORKER_IDLE_TIMEOUT,
            _ => crate::upstream::SERVER_IDLE_TIMEOUT,
        };
        let endpoint = Endpoint::keeping_idle(address.clone(), pid, idle);
        tracing::debug!(
            "[{}] generation {} process {} ready (pid {pid})",
            plan.name,
            plan.generation,
            self.outlet.slot
        );
        self.outlet.publish(Some(endpoint.clone()), 0);
        self.outlet.view(|v| {
            v.state = ProcessState::Ready;
            v.pid = Some(pid);
            v.started = Some(SystemTime::now());
            v.endpoint = Some(endpoint.clone());
        });
        let recycle_at = policy::recycle_at(
            plan.policy.max_requests,
            plan.policy.max_requests_jitter,
            random_below,
        );
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
                self.outlet.view(|v| v.last_exit = Some(describe(status)));
                self.failed(reason, tail, held);
                remove_socket(address);
                Err(Ended::Crashed)
            }
            Startup::TimedOut => {
                // Reported before the stop, which may take STOP_GRACE: a reload waits for it.
                let reason = format!(
                    "did not answer on {address} within startup_timeout {}{}",
                    secs(self.outlet.plan.startup_timeout),
                    last_line(tail)
                );
                self.failed(reason, tail, held);
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
            match &self.outlet.plan.log {
                Some(f) => f.write_line(&format!(
                    "{} {line}",
                    crate::dates::iso_time(SystemTime::now())
                )),
                None => tracing::info!(target: "wsgimux::app", "{line}"),
            }
        }
        self.outlet.recovered();
    }

    /// A failed start, reported with the child's last stderr lines and what it printed.
    fn failed(&mut self, reason: String, tail: &Mutex<VecDeque<String>>, held: &Mutex<HeldOutput>) {
        let output = HeldOutput::take(held);
        self.outlet.start_failed(reason, tail_lines(tail), output);
    }

    /// Unpublishes a running process and stops it (TERM, grace, KILL).
    pub(super) async fn stop_process(&self, r: &mut Running) {
        self.outlet.view(|v| v.state = ProcessState::Stopping);
        self.unpublish(r);
        stop_child(&mut r.child, r.pid).await;
    }

    /// Takes a process out of the ready list and closes its pooled connections.
    pub(super) fn unpublish(&self, r: &Running) {
        self.outlet.publish(None, r.pid);
        r.endpoint.close_idle();
        self.outlet.view(|v| {
            if v.pid == Some(r.pid) {
                v.endpoint = None;
            }
        });
        remove_socket(&r.address);
    }

    /// Where this start of the slot's process is to listen: a fresh socket path per attempt, or
    /// a free loopback port for a `command:` that asks for `{port}`.
    fn listen_address(&self, attempt: u64) -> Address {
        let plan = &self.outlet.plan;
        if let Launch::Command { argv } = &plan.launch {
            if argv.iter().any(|a| a.contains(PORT_PLACEHOLDER)) {
                return Address::Tcp {
                    host: "127.0.0.1".into(),
                    port: free_port().unwrap_or(0),
                };
            }
        }
        Address::Unix(socket_path(
            &plan.socket_dir,
            plan.generation,
            self.outlet.slot,
            attempt,
        ))
    }

    async fn wait_ready(
        &mut self,
        child: &mut Child,
        address: &Address,
        stop: &mut watch::Receiver<bool>,
    ) -> Startup {
        let deadline = tokio::time::Instant::now() + self.outlet.plan.startup_timeout;
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
                _ = stopped(stop) => return Startup::Stopping,
                _ = tokio::time::sleep_until(deadline) => return Startup::TimedOut,
                _ = tokio::time::sleep(READY_POLL) => {}
            }
        }
    }
}
