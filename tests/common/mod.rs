//! Shared set-up for the integration tests: a simulated rack, a params file in a temporary
//! directory, and a reconciler wired to both.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rack_reconciler::metrics::Metrics;
use rack_reconciler::model::ServiceTarget;
use rack_reconciler::rack::sim::{SimRack, SimSettings};
use rack_reconciler::reconcile::{Reconciler, Report, Settings, Trigger};
use rack_reconciler::status::{Status, StatusHandle};
use rack_reconciler::store::Location;

/// The public release the sim knows, whose template does not declare `ECSExec`.
pub const RELABEL_RELEASE: &str = "20260418101514";

pub struct Harness {
    pub sim: Arc<SimRack>,
    pub dir: tempfile::TempDir,
    pub params: PathBuf,
}

impl Harness {
    /// A rack on the public release, whose template predates `ECSExec` (the relabel path).
    pub fn new(initial: &str) -> Harness {
        Self::with_sim(initial, SimSettings::default())
    }

    /// A rack on a release whose template declares `ECSExec` (the stack path).
    pub fn stack_first(initial: &str, settings: SimSettings) -> Harness {
        let settings = SimSettings {
            version: rack_reconciler::rack::sim::SIM_ECSEXEC_VERSION.into(),
            ..settings
        };
        Self::build(initial, settings)
    }

    /// A rack with the given settings; the public release unless they name another.
    pub fn with_sim(initial: &str, mut settings: SimSettings) -> Harness {
        if settings.version == SimSettings::default().version {
            settings.version = RELABEL_RELEASE.into();
        }
        Self::build(initial, settings)
    }

    fn build(initial: &str, mut settings: SimSettings) -> Harness {
        settings.rack = "convox".into();
        settings.region = "us-east-1".into();
        let dir = tempfile::tempdir().expect("tempdir");
        let params = dir.path().join("params.yaml");
        std::fs::write(&params, initial).expect("write params");
        Harness {
            sim: Arc::new(SimRack::new(settings)),
            dir,
            params,
        }
    }

    pub fn settings(&self) -> Settings {
        Settings {
            targets: ServiceTarget::rack_api(),
            cluster_resource: "Cluster".into(),
            params_file: Location::File(self.params.clone()),
            status_file: Some(Location::File(self.dir.path().join("params.status.json"))),
            history_file: Some(Location::File(self.dir.path().join("params.history.jsonl"))),
            history: Default::default(),
            resync: Duration::from_secs(60),
            poll: Duration::from_secs(5),
            jitter: 0.1,
            rollout_timeout: Duration::from_secs(30 * 60),
            min_reconcile: Duration::from_secs(1),
            min_write: Duration::from_secs(10),
            failed_tasks_threshold: 3,
            reconcile_timeout: Duration::from_secs(120),
            backoff_min: Duration::from_secs(30),
            backoff_max: Duration::from_secs(15 * 60),
            max_corrections_per_hour: 3,
            templates: rack_reconciler::templates::TemplateSource::default(),
            methods: Default::default(),
            stack_role: None,
        }
    }

    pub fn reconciler(&self) -> Reconciler {
        self.reconciler_with(self.settings())
    }

    pub fn reconciler_with(&self, settings: Settings) -> Reconciler {
        let metrics = Metrics::new();
        self.sim.set_metrics(metrics.clone());
        let status = StatusHandle::new(Status {
            rack: "convox".into(),
            backend: "sim".into(),
            ..Status::default()
        });
        Reconciler::new(self.sim.clone(), settings, metrics, status).with_exec(self.sim.clone())
    }

    /// A reconciler whose writes go through the lease (a fenced rack), as `run` with a lease.
    pub fn leased(&self, lease: &rack_reconciler::lease::Lease) -> Reconciler {
        self.leased_with_pause(lease).0
    }

    /// As [`Harness::leased`], with the point between a write's lease check and its send
    /// where a test can hold it.
    pub fn leased_with_pause(
        &self,
        lease: &rack_reconciler::lease::Lease,
    ) -> (Reconciler, rack_reconciler::rack::fenced::PausePoint) {
        let metrics = Metrics::new();
        let fenced = rack_reconciler::rack::fenced::FencedRack::new(
            self.sim.clone(),
            lease.clone(),
            metrics.clone(),
        );
        let pause = fenced.pause_point();
        let status = StatusHandle::new(Status::default());
        let rec = Reconciler::new(Arc::new(fenced), self.settings(), metrics, status)
            .with_lease(lease.clone());
        (rec, pause)
    }

    pub fn write_params(&self, text: &str) {
        std::fs::write(&self.params, text).expect("write params");
    }
}

/// Two controllers' leases, "a" and "b", on one table in memory, each having looked once:
/// "a" holds the lease.
pub async fn two_leases(
    timing: rack_reconciler::lease::Timing,
) -> (rack_reconciler::lease::Lease, rack_reconciler::lease::Lease) {
    let mut all = leases(timing, &["a", "b"]).await;
    let lb = all.pop().expect("b");
    let la = all.pop().expect("a");
    (la, lb)
}

/// Leases on one table in memory, one per name, each having looked once in order (the
/// first holds it).
pub async fn leases(
    timing: rack_reconciler::lease::Timing,
    names: &[&str],
) -> Vec<rack_reconciler::lease::Lease> {
    use rack_reconciler::lease::{Lease, LeaseStore, MemoryLeaseStore};
    let store: Arc<dyn LeaseStore> = Arc::new(MemoryLeaseStore::default());
    let mut out = Vec::new();
    for name in names {
        let lease = Lease::new(store.clone(), *name, timing);
        lease.tick().await.expect("lease");
        out.push(lease);
    }
    out
}

/// The status of one parameter as the reconciler reports it.
pub fn param(rec: &Reconciler, name: &str) -> rack_reconciler::status::ParameterStatus {
    rec.status()
        .get()
        .parameter(name)
        .cloned()
        .unwrap_or_else(|| panic!("no status for {name}"))
}

/// Lets `d` pass on tokio's paused clock, which takes no real time; fails when the clock is
/// not paused, so no test can wait for real by accident.
pub async fn let_pass(d: Duration) {
    let real = std::time::Instant::now();
    tokio::time::sleep(d).await;
    assert!(
        d < Duration::from_secs(2) || real.elapsed() < d / 2,
        "tokio's clock is not paused: this would be a real wait"
    );
}

/// Reconciles, waiting between runs as the loop would (on tokio's paused clock), until
/// `done` holds or `max_runs` runs were made. Returns every report.
pub async fn drive(
    rec: &mut Reconciler,
    max_runs: usize,
    done: impl Fn(&Report) -> bool,
) -> Vec<Report> {
    let mut reports = Vec::new();
    let mut trigger = Trigger::Startup;
    for _ in 0..max_runs {
        let r = rec.reconcile(trigger).await;
        let next = r.next;
        let stop = done(&r);
        reports.push(r);
        if stop {
            break;
        }
        let_pass(next).await;
        trigger = Trigger::Timer;
    }
    reports
}

/// Runs the loop for a stretch of (paused-clock) time, whatever happens.
pub async fn run_for(rec: &mut Reconciler, span: Duration) -> Vec<Report> {
    let end = tokio::time::Instant::now() + span;
    let mut reports = Vec::new();
    while tokio::time::Instant::now() < end {
        let r = rec.reconcile(Trigger::Timer).await;
        let next = r.next;
        reports.push(r);
        let_pass(next).await;
    }
    reports
}

/// Someone else's stack update, as the convox CLI makes it (no `ClientRequestToken`), to
/// `template` (`None`: the stack's own): each stack parameter as `value` says (`None`: left
/// out; `Some(None)`: its previous value).
pub async fn operator_update(
    h: &Harness,
    template: Option<rack_reconciler::templates::TemplateRef>,
    value: impl Fn(&str) -> Option<Option<String>>,
) {
    use rack_reconciler::rack::Rack;
    let request = rack_reconciler::rack::StackUpdateRequest {
        template,
        parameters: h
            .sim
            .stack_parameters()
            .into_keys()
            .filter_map(|key| {
                value(&key).map(|value| rack_reconciler::model::StackParameter { key, value })
            })
            .collect(),
        capabilities: vec!["CAPABILITY_IAM".into()],
        token: String::new(),
        role_arn: None,
    };
    h.sim
        .update_stack(&request)
        .await
        .expect("operator's update");
}

/// A condition for [`drive`]: the status shows `reason` for `param`.
pub fn shows_reason(
    rec: &Reconciler,
    param: &'static str,
    reason: &'static str,
) -> impl Fn(&Report) -> bool {
    let status = rec.status();
    move |_| {
        status
            .get()
            .parameter(param)
            .is_some_and(|p| p.reason == reason)
    }
}

pub fn ecs_exec(r: &Report) -> Option<rack_reconciler::plan::Phase> {
    r.phases.get("ECSExec").copied()
}

pub mod binary;
pub mod moto;
pub mod proxy;
pub mod rack_fixture;

/// Loop settings for a reconciler over a params file in `dir`, with `targets`.
pub fn aws_settings(dir: &std::path::Path, targets: Vec<ServiceTarget>) -> Settings {
    Settings {
        targets,
        cluster_resource: "Cluster".into(),
        params_file: Location::File(dir.join("params.yaml")),
        status_file: Some(Location::File(dir.join("params.status.json"))),
        history_file: Some(Location::File(dir.join("params.history.jsonl"))),
        history: Default::default(),
        resync: Duration::from_secs(60),
        poll: Duration::from_secs(5),
        jitter: 0.1,
        rollout_timeout: Duration::from_secs(30 * 60),
        min_reconcile: Duration::ZERO,
        min_write: Duration::ZERO,
        failed_tasks_threshold: 3,
        reconcile_timeout: Duration::from_secs(120),
        backoff_min: Duration::from_millis(1),
        backoff_max: Duration::from_millis(10),
        max_corrections_per_hour: 3,
        templates: rack_reconciler::templates::TemplateSource::default(),
        methods: Default::default(),
        stack_role: None,
    }
}
