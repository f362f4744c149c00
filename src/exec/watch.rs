//! Exec readiness in the running controller: every `intervals.exec_check` (with jitter) it
//! looks at every app of the rack, then publishes the verdicts as `rack_reconciler_exec_tasks`
//! and as the status's `exec` section with the `ExecReady` condition on `ECSExec`. It only
//! reads, so a standby controller looks too. A failed look is logged and shown in the status;
//! the last verdicts stay on show, and `ExecReady` is `Unknown` until a look succeeds.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use super::discover::{Discovery, Readiness};
use super::source::ExecSource;
use super::{counts, ExecPath, ExecStatus};
use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::rack::RackError;
use crate::status::StatusHandle;

/// The fraction of the interval added or removed at random.
const JITTER: f64 = 0.1;

pub struct ExecWatch {
    src: Arc<dyn ExecSource>,
    rack: String,
    interval: Duration,
    /// A look that takes longer is abandoned.
    timeout: Duration,
    metrics: Metrics,
    status: StatusHandle,
    discovery: Discovery,
    clock: Clock,
}

impl ExecWatch {
    pub fn new(
        src: Arc<dyn ExecSource>,
        rack: &str,
        interval: Duration,
        timeout: Duration,
        metrics: Metrics,
        status: StatusHandle,
    ) -> Self {
        ExecWatch {
            src,
            rack: rack.to_string(),
            interval,
            timeout,
            metrics,
            status,
            discovery: Discovery::default(),
            clock: Clock::new(),
        }
    }

    /// One look at every app, published.
    pub async fn look(&mut self) -> Result<Readiness, RackError> {
        let now = self.clock.now();
        let run = self.discovery.run(self.src.as_ref(), &self.rack, None, now);
        let result =
            tokio::time::timeout(self.timeout, run)
                .await
                .unwrap_or(Err(RackError::Deadline {
                    after: self.timeout,
                }));
        match &result {
            Ok(r) => {
                self.metrics.set_exec_tasks(&counts(&r.verdicts), now);
                let exec = ExecStatus::from_readiness(r);
                info!(
                    tasks = exec.tasks,
                    ecs_exec = exec.count(ExecPath::EcsExec),
                    docker = exec.count(ExecPath::Docker),
                    fails = exec.count(ExecPath::Fails),
                    unknown = exec.count(ExecPath::Unknown),
                    "exec readiness checked"
                );
                self.status.update(|s| s.set_exec(exec, now));
            }
            Err(e) => {
                warn!(error = %e, "exec readiness: looking at the apps failed; retrying at the next look");
                let error = e.to_string();
                self.status.update(|s| {
                    let mut exec = s.exec.clone().unwrap_or_default();
                    exec.error = Some(error);
                    s.set_exec(exec, now);
                });
            }
        }
        result
    }

    /// Looks now and then every interval until `shutdown`; also as soon as the controller
    /// has converged `ECSExec` to a value other than the one the last look saw.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut statuses = self.status.subscribe();
        loop {
            if *shutdown.borrow() {
                return;
            }
            let seen = self.look().await.ok().map(|r| r.rack.ecs_exec);
            let wait = self
                .interval
                .mul_f64(1.0 + JITTER * (2.0 * fastrand::f64() - 1.0));
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                tokio::select! {
                    changed = shutdown.changed() => if changed.is_err() { return; } else { break; },
                    _ = tokio::time::sleep_until(deadline) => break,
                    changed = statuses.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        let now = converged_ecs_exec(&statuses.borrow_and_update());
                        if seen.is_some() && now.is_some() && now != seen {
                            break;
                        }
                    }
                }
            }
        }
    }
}

/// `ECSExec` as the controller last converged it (`Some(true)` for `Yes`).
fn converged_ecs_exec(s: &crate::status::Status) -> Option<bool> {
    let p = s.parameter(crate::model::ECS_EXEC.name)?;
    (p.phase == crate::plan::Phase::Converged).then(|| p.observed.as_deref() == Some("Yes"))
}
