//! Prometheus metrics: one registry per controller, names prefixed `rack_reconciler_`.
//!
//! Labels only ever take values from small fixed sets (parameter names, phases, the target
//! services' logical ids, result and outcome words, AWS operation names): never error text or
//! ARNs. [`METRICS`] documents every metric; a test keeps it, the registry and the README's
//! table in step.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::plan::Phase;

/// A documented metric: name, type and meaning.
pub struct MetricDoc {
    pub name: &'static str,
    pub kind: &'static str,
    pub labels: &'static str,
    pub help: &'static str,
}

macro_rules! docs {
    ($( $name:literal, $kind:literal, $labels:literal, $help:literal; )*) => {
        /// Every metric the controller exports.
        pub const METRICS: &[MetricDoc] = &[
            $( MetricDoc { name: $name, kind: $kind, labels: $labels, help: $help }, )*
        ];
    };
}

docs! {
    "rack_reconciler_build_info", "gauge", "version", "Always 1; the version label says which build runs.";
    "rack_reconciler_parameter_drift", "gauge", "parameter", "1 while the value observed on the rack differs from the desired value.";
    "rack_reconciler_parameter_drift_start_timestamp_seconds", "gauge", "parameter", "Unix time the current drift was first seen; 0 when there is none.";
    "rack_reconciler_parameter_converged", "gauge", "parameter", "1 when the parameter has fully converged (every service, rollout complete, all tasks).";
    "rack_reconciler_parameter_phase", "gauge", "parameter, phase", "1 for the parameter's current phase, 0 for the others.";
    "rack_reconciler_rollouts_in_progress", "gauge", "service", "1 while a rollout of the service is running.";
    "rack_reconciler_rollout_failed", "gauge", "service", "1 while the service's latest rollout has failed or timed out.";
    "rack_reconciler_rollouts_started_total", "counter", "service", "Rollouts started by the controller (UpdateService calls that succeeded).";
    "rack_reconciler_rollout_failures_total", "counter", "service", "Rollouts seen to fail (new tasks stopping past the threshold, a timeout, or a circuit-breaker rollback).";
    "rack_reconciler_corrections_total", "counter", "parameter", "Out-of-band reverts of a converged parameter that the controller corrected.";
    "rack_reconciler_corrections_capped", "gauge", "parameter", "1 while corrections are stopped because the hourly cap was reached.";
    "rack_reconciler_rollback_failing", "gauge", "parameter", "1 while undoing a failed change fails too (the stack's rollback, or the service pointed back at its previous revision, keeps losing its tasks; or the stack is UPDATE_ROLLBACK_FAILED): the rack API may be down, and nothing is written until it heals or a person acts.";
    "rack_reconciler_downgrade_blocked", "gauge", "", "1 while a downgrade to a version that predates ECSExec is refused or held by the gate.";
    "rack_reconciler_stack_updates_started_total", "counter", "", "Stack updates (version changes) started by the controller.";
    "rack_reconciler_reconcile_total", "counter", "result", "Reconcile runs by result (converged, progressing, waiting, blocked, failed, unknown, error, no_params).";
    "rack_reconciler_reconcile_duration_seconds", "histogram", "result", "Time a reconcile run took, by result.";
    "rack_reconciler_last_reconcile_timestamp_seconds", "gauge", "", "Unix time the last reconcile run finished.";
    "rack_reconciler_last_successful_observation_timestamp_seconds", "gauge", "", "Unix time the rack was last observed completely (stack and services); stale while AWS hangs or fails.";
    "rack_reconciler_params_file_valid", "gauge", "", "1 when the params file was valid at the last read.";
    "rack_reconciler_params_file_errors_total", "counter", "kind", "Params file reads rejected, by kind (missing, empty, syntax, not_mapping, duplicate_key, unknown_key, invalid_value, secret, unreadable).";
    "rack_reconciler_aws_api_calls_total", "counter", "service, operation, outcome", "Calls to AWS (or the simulated rack) by service, operation and outcome (success, transient_error, access_denied, not_found, error, condition_failed, not_modified): the controller's cost.";
    "rack_reconciler_exec_tasks", "gauge", "app, path, reason", "Running app tasks by what `convox exec` would do (path: ecs_exec; docker, Convox's fallback, not audited in CloudTrail; fails, ECS Exec tried and failing; unknown, a fact it needs could not be read) and why, with the fix (reason: none; rack_version_lacks_ecs_exec, update the rack; rack_ecs_exec_no, set ECSExec=Yes; gen1, migrate to Generation 2; service_without_exec, deploy or promote; started_before_enable, restart; readonly_root_filesystem, writable root filesystem; platform_too_old, redeploy on platform LATEST; agent_too_old, update the ECS agent; agent_not_running, restart; credentials_in_environment, remove the AWS keys from the environment; task_role_lacks_ssmmessages, grant ssmmessages to the task role; boundary_blocks_ssmmessages, allow ssmmessages in the permissions boundary; task_role_lacks_kms_decrypt, grant kms:Decrypt on the exec key; task_role_lacks_exec_logging, grant the exec log writes; no_route_to_ssm, NAT route or ssm + ssmmessages endpoints; unknown_task_definition, allow ecs:DescribeTaskDefinition; unknown_platform_version, see the detail; unknown_agent_version, allow ecs:DescribeContainerInstances; unknown_exec_configuration, allow ecs:DescribeClusters; unknown_role_permissions, allow iam:SimulatePrincipalPolicy; unknown_route, allow the ec2:Describe* reads).";
    "rack_reconciler_exec_check_timestamp_seconds", "gauge", "", "Unix time exec readiness last looked at every app of the rack successfully.";
    "rack_reconciler_leader", "gauge", "", "1 while this controller holds the lease and may write; 0 on a standby (always 1 with `lease: none`).";
    "rack_reconciler_events_total", "counter", "kind", "Events of the rack's history recorded, by kind (desired_changed, desired_invalid, write_made, write_failed, rollout_started, rollout_progress, rollout_completed, rollout_failed, rollback_started, rolled_back, rollout_cancelled, rollback_failing, converged, drift_detected, drift_corrected, stack_changed_outside, downgrade_refused, phase_changed, lease_acquired, lease_lost, lease_taken_over, exec_readiness_changed); the events themselves are at GET /events.";
    "rack_reconciler_convergence_seconds", "histogram", "parameter, method", "Time from a change of the desired value to the rack holding it, converged, by parameter and method (stack, relabel).";
    "rack_reconciler_parameter_last_change_timestamp_seconds", "gauge", "parameter", "Unix time the parameter last converged to a new desired value (absent until one has, as the status document recorded it).";
    "rack_reconciler_writes_refused_total", "counter", "operation", "Write attempts not sent because the lease they were to be made under had run out by the moment of the attempt (a paused process, a call slower than the lease): each is a write a standby may have superseded.";
}

/// The writes made under a lease's fence: the `operation` values of
/// `rack_reconciler_writes_refused_total`, created at zero.
pub const FENCED_OPERATIONS: &[&str] = &[
    "RegisterTaskDefinition",
    "UpdateService",
    "UpdateStack",
    "CancelUpdateStack",
    "PutObject",
];

#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    drift: IntGaugeVec,
    drift_start: GaugeVec,
    converged: IntGaugeVec,
    phase: IntGaugeVec,
    rollouts_in_progress: IntGaugeVec,
    rollout_failed: IntGaugeVec,
    rollouts_started: IntCounterVec,
    rollout_failures: IntCounterVec,
    corrections: IntCounterVec,
    corrections_capped: IntGaugeVec,
    rollback_failing: IntGaugeVec,
    reconciles: IntCounterVec,
    reconcile_duration: HistogramVec,
    last_reconcile: Gauge,
    last_observation: prometheus::Gauge,
    params_valid: IntGauge,
    params_errors: IntCounterVec,
    downgrade_blocked: IntGauge,
    stack_updates: prometheus::IntCounter,
    api_calls: IntCounterVec,
    leader: IntGauge,
    writes_refused: IntCounterVec,
    exec_tasks: IntGaugeVec,
    exec_checked: prometheus::Gauge,
    events: IntCounterVec,
    convergence: HistogramVec,
    last_change: GaugeVec,
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn doc(name: &str) -> &'static MetricDoc {
    METRICS
        .iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("metric {name} is not documented in METRICS"))
}

fn opts(name: &str) -> Opts {
    Opts::new(name, doc(name).help)
}

fn labels(name: &str) -> Vec<&'static str> {
    doc(name)
        .labels
        .split(',')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect()
}

/// A documented metric without labels, registered.
fn single<M>(r: &Registry, name: &str, make: fn(Opts) -> prometheus::Result<M>) -> M
where
    M: prometheus::core::Collector + Clone + 'static,
{
    let m = make(opts(name)).expect(name);
    r.register(Box::new(m.clone())).expect(name);
    m
}

/// A documented histogram with `buckets`, registered.
fn histogram(r: &Registry, name: &str, buckets: Vec<f64>) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::from(opts(name)).buckets(buckets),
        &labels(name),
    )
    .expect("histogram");
    r.register(Box::new(h.clone())).expect("histogram");
    h
}

macro_rules! register {
    ($registry:expr, $ty:ident, $name:literal) => {{
        let m = $ty::new(opts($name), &labels($name)).expect($name);
        $registry.register(Box::new(m.clone())).expect($name);
        m
    }};
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every documented metric registered.
    pub fn new() -> Self {
        let r = Registry::new();
        let build = register!(r, IntGaugeVec, "rack_reconciler_build_info");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let inner = Inner {
            drift: register!(r, IntGaugeVec, "rack_reconciler_parameter_drift"),
            drift_start: register!(
                r,
                GaugeVec,
                "rack_reconciler_parameter_drift_start_timestamp_seconds"
            ),
            converged: register!(r, IntGaugeVec, "rack_reconciler_parameter_converged"),
            phase: register!(r, IntGaugeVec, "rack_reconciler_parameter_phase"),
            rollouts_in_progress: register!(r, IntGaugeVec, "rack_reconciler_rollouts_in_progress"),
            rollout_failed: register!(r, IntGaugeVec, "rack_reconciler_rollout_failed"),
            rollouts_started: register!(r, IntCounterVec, "rack_reconciler_rollouts_started_total"),
            rollout_failures: register!(r, IntCounterVec, "rack_reconciler_rollout_failures_total"),
            corrections: register!(r, IntCounterVec, "rack_reconciler_corrections_total"),
            corrections_capped: register!(r, IntGaugeVec, "rack_reconciler_corrections_capped"),
            rollback_failing: register!(r, IntGaugeVec, "rack_reconciler_rollback_failing"),
            reconciles: register!(r, IntCounterVec, "rack_reconciler_reconcile_total"),
            reconcile_duration: histogram(
                &r,
                "rack_reconciler_reconcile_duration_seconds",
                vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ],
            ),
            last_reconcile: single(
                &r,
                "rack_reconciler_last_reconcile_timestamp_seconds",
                Gauge::with_opts,
            ),
            last_observation: single(
                &r,
                "rack_reconciler_last_successful_observation_timestamp_seconds",
                Gauge::with_opts,
            ),
            params_valid: single(&r, "rack_reconciler_params_file_valid", IntGauge::with_opts),
            downgrade_blocked: single(&r, "rack_reconciler_downgrade_blocked", IntGauge::with_opts),
            stack_updates: single(
                &r,
                "rack_reconciler_stack_updates_started_total",
                IntCounter::with_opts,
            ),
            params_errors: register!(r, IntCounterVec, "rack_reconciler_params_file_errors_total"),
            api_calls: register!(r, IntCounterVec, "rack_reconciler_aws_api_calls_total"),
            leader: single(&r, "rack_reconciler_leader", IntGauge::with_opts),
            writes_refused: register!(r, IntCounterVec, "rack_reconciler_writes_refused_total"),
            exec_tasks: register!(r, IntGaugeVec, "rack_reconciler_exec_tasks"),
            exec_checked: single(
                &r,
                "rack_reconciler_exec_check_timestamp_seconds",
                Gauge::with_opts,
            ),
            events: register!(r, IntCounterVec, "rack_reconciler_events_total"),
            convergence: histogram(
                &r,
                "rack_reconciler_convergence_seconds",
                vec![
                    10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0,
                ],
            ),
            last_change: register!(
                r,
                GaugeVec,
                "rack_reconciler_parameter_last_change_timestamp_seconds"
            ),
            registry: r,
        };
        // Always 1 without a lease.
        inner.leader.set(1);
        Metrics {
            inner: Arc::new(inner),
        }
    }

    /// Creates the series of the target services and the params file errors at zero, so
    /// dashboards and alerts see them before the first event. A parameter's series appear
    /// with its first decision and go when it leaves the params file.
    pub fn init_series(&self, services: &[String]) {
        let m = &self.inner;
        for s in services {
            m.rollouts_in_progress.with_label_values(&[s]);
            m.rollout_failed.with_label_values(&[s]);
            m.rollouts_started.with_label_values(&[s]);
            m.rollout_failures.with_label_values(&[s]);
        }
        for kind in crate::params::ParamsError::KINDS {
            m.params_errors.with_label_values(&[*kind]);
        }
        for op in FENCED_OPERATIONS {
            m.writes_refused.with_label_values(&[*op]);
        }
        for kind in crate::history::Kind::ALL {
            m.events.with_label_values(&[kind.as_str()]);
        }
    }

    /// An event of the rack's history was recorded.
    pub fn event(&self, kind: crate::history::Kind) {
        self.inner.events.with_label_values(&[kind.as_str()]).inc();
    }

    /// `param` last converged to a new desired value at `at` (as the status document says).
    pub fn set_last_change(&self, param: &str, at: SystemTime) {
        self.inner
            .last_change
            .with_label_values(&[param])
            .set(unix_seconds(at));
    }

    /// A change of `param` converged after `took`; the rack changed at `at`.
    pub fn converged_after(
        &self,
        param: &str,
        method: &str,
        took: std::time::Duration,
        at: SystemTime,
    ) {
        self.inner
            .convergence
            .with_label_values(&[param, method])
            .observe(took.as_secs_f64());
        self.inner
            .last_change
            .with_label_values(&[param])
            .set(unix_seconds(at));
    }

    /// Records a parameter's state after a reconcile.
    pub fn set_parameter(
        &self,
        param: &str,
        phase: Phase,
        drift: bool,
        drift_since: Option<SystemTime>,
    ) {
        let m = &self.inner;
        m.drift.with_label_values(&[param]).set(i64::from(drift));
        let since = drift_since
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        m.drift_start.with_label_values(&[param]).set(since);
        m.corrections.with_label_values(&[param]);
        m.corrections_capped.with_label_values(&[param]);
        m.rollback_failing.with_label_values(&[param]);
        self.set_phase(param, phase);
    }

    /// Sets only the phase of a parameter (drift and its start stay as last known).
    pub fn set_phase(&self, param: &str, phase: Phase) {
        let m = &self.inner;
        m.converged
            .with_label_values(&[param])
            .set(i64::from(phase == Phase::Converged));
        for p in Phase::ALL {
            m.phase
                .with_label_values(&[param, p.as_str()])
                .set(i64::from(p == phase));
        }
    }

    /// Removes every series of a parameter that is no longer managed.
    pub fn remove_parameter(&self, param: &str) {
        let m = &self.inner;
        for vec in [
            &m.drift,
            &m.converged,
            &m.corrections_capped,
            &m.rollback_failing,
        ] {
            let _ = vec.remove_label_values(&[param]);
        }
        let _ = m.drift_start.remove_label_values(&[param]);
        let _ = m.last_change.remove_label_values(&[param]);
        for method in ["stack", "relabel"] {
            let _ = m.convergence.remove_label_values(&[param, method]);
        }
        let _ = m.corrections.remove_label_values(&[param]);
        for p in Phase::ALL {
            let _ = m.phase.remove_label_values(&[param, p.as_str()]);
        }
    }

    pub fn set_service(&self, service: &str, rolling: bool, failed: bool) {
        let m = &self.inner;
        m.rollouts_in_progress
            .with_label_values(&[service])
            .set(i64::from(rolling));
        m.rollout_failed
            .with_label_values(&[service])
            .set(i64::from(failed));
    }

    pub fn rollout_started(&self, service: &str) {
        self.inner
            .rollouts_started
            .with_label_values(&[service])
            .inc();
    }

    pub fn rollout_failure(&self, service: &str) {
        self.inner
            .rollout_failures
            .with_label_values(&[service])
            .inc();
    }

    pub fn correction(&self, param: &str) {
        self.inner.corrections.with_label_values(&[param]).inc();
    }

    pub fn set_corrections_capped(&self, param: &str, capped: bool) {
        self.inner
            .corrections_capped
            .with_label_values(&[param])
            .set(i64::from(capped));
    }

    pub fn set_rollback_failing(&self, param: &str, failing: bool) {
        self.inner
            .rollback_failing
            .with_label_values(&[param])
            .set(i64::from(failing));
    }

    pub fn reconciled(&self, result: &str, started: Instant) {
        let m = &self.inner;
        m.reconciles.with_label_values(&[result]).inc();
        m.reconcile_duration
            .with_label_values(&[result])
            .observe(started.elapsed().as_secs_f64());
        m.last_reconcile.set(unix_seconds(SystemTime::now()));
    }

    /// The rack was observed completely at `at`.
    pub fn observed(&self, at: SystemTime) {
        self.inner.last_observation.set(unix_seconds(at));
    }

    pub fn set_downgrade_blocked(&self, blocked: bool) {
        self.inner.downgrade_blocked.set(i64::from(blocked));
    }

    pub fn stack_update_started(&self) {
        self.inner.stack_updates.inc();
    }

    pub fn params_valid(&self, valid: bool) {
        self.inner.params_valid.set(i64::from(valid));
    }

    pub fn params_error(&self, kind: &str) {
        self.inner.params_errors.with_label_values(&[kind]).inc();
    }

    /// Whether this controller holds the lease (and so may write).
    pub fn set_leader(&self, leader: bool) {
        self.inner.leader.set(i64::from(leader));
    }

    /// Exec readiness: the tasks per (app, path, reason), replacing the previous look's
    /// (apps that are gone leave), and when it looked.
    pub fn set_exec_tasks(
        &self,
        counts: &std::collections::BTreeMap<(String, crate::exec::ExecPath, String), u64>,
        at: SystemTime,
    ) {
        let m = &self.inner;
        m.exec_tasks.reset();
        for ((app, path, reason), n) in counts {
            m.exec_tasks
                .with_label_values(&[app.as_str(), path.as_str(), reason.as_str()])
                .set(*n as i64);
        }
        m.exec_checked.set(unix_seconds(at));
    }

    /// Counts a write attempt refused because its lease had run out.
    pub fn write_refused(&self, operation: &str) {
        self.inner
            .writes_refused
            .with_label_values(&[operation])
            .inc();
    }

    /// Counts one call to AWS (or to the simulated rack, under the AWS names it models).
    pub fn api_call(&self, service: &'static str, operation: &'static str, outcome: &'static str) {
        self.inner
            .api_calls
            .with_label_values(&[service, operation, outcome])
            .inc();
    }

    /// The calls counted so far for one operation, all outcomes.
    pub fn api_calls(&self, operation: &str) -> u64 {
        self.inner
            .registry
            .gather()
            .iter()
            .filter(|f| f.name() == "rack_reconciler_aws_api_calls_total")
            .flat_map(|f| f.get_metric().iter())
            .filter(|m| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == "operation" && l.value() == operation)
            })
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.inner.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_metric_is_registered_and_named_by_convention() {
        let m = Metrics::new();
        m.init_series(&["ServiceWebApi".to_string()]);
        m.set_parameter("ECSExec", Phase::Converged, false, None);
        m.reconciled("converged", Instant::now());
        m.api_call("ecs", "DescribeServices", "success");
        let tasks = std::collections::BTreeMap::from([(
            (
                "shop".to_string(),
                crate::exec::ExecPath::Docker,
                "gen1".to_string(),
            ),
            2,
        )]);
        m.set_exec_tasks(&tasks, SystemTime::now());
        m.write_refused("UpdateService");
        m.converged_after(
            "ECSExec",
            "relabel",
            std::time::Duration::from_secs(90),
            SystemTime::now(),
        );
        let text = m.render();
        for d in METRICS {
            assert!(d.name.starts_with("rack_reconciler_"), "{}", d.name);
            assert!(
                text.contains(&format!("# TYPE {} {}", d.name, d.kind)),
                "{} ({}) missing from:\n{text}",
                d.name,
                d.kind
            );
            assert_eq!(
                d.kind == "counter",
                d.name.ends_with("_total"),
                "{}",
                d.name
            );
        }
        assert_eq!(m.api_calls("DescribeServices"), 1);
    }

    #[test]
    fn a_parameter_no_longer_managed_leaves_no_series_behind() {
        let m = Metrics::new();
        m.set_parameter("ECSExec", Phase::Failed, true, Some(SystemTime::now()));
        m.set_corrections_capped("ECSExec", true);
        assert!(m.render().contains("parameter=\"ECSExec\""));
        m.remove_parameter("ECSExec");
        assert!(
            !m.render().contains("parameter=\"ECSExec\""),
            "{}",
            m.render()
        );
    }

    /// The README's metrics table is exactly [`METRICS`], so the docs cannot drift.
    #[test]
    fn readme_table_matches_the_code() {
        let readme = include_str!("../README.md");
        let table = readme
            .split("<!-- metrics:begin -->")
            .nth(1)
            .and_then(|rest| rest.split("<!-- metrics:end -->").next())
            .expect("README has the metrics table markers");
        let rows: Vec<String> = table
            .lines()
            .filter(|l| l.starts_with("| `"))
            .map(str::to_string)
            .collect();
        let expected: Vec<String> = METRICS
            .iter()
            .map(|m| format!("| `{}` | {} | {} | {} |", m.name, m.kind, m.labels, m.help))
            .collect();
        assert_eq!(rows, expected, "regenerate the README table from METRICS");
    }
}
