//! The loop: read the desired state, observe the rack, ask the planner, make at most one
//! write, record status and metrics, and decide when to look again.
//!
//! Level-triggered: a run is not told what changed, it looks. What must survive a restart
//! (the rollouts and stack update it started, its backoffs) is written down on purpose in the
//! status file ([`crate::memory`]); the rest (recent corrections, a task definition cache) can
//! be lost without harm.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::clock::Clock;
use crate::exec::discover::rack_route;
use crate::exec::source::ExecSource;
use crate::lease::{standby_message, Lease};
use crate::memory::Memory;
use crate::metrics::Metrics;
pub use crate::model::Trigger;
use crate::model::{
    ObservedRack, RackVersion, Requirement, ServiceTarget, StackState, ECS_EXEC, MANAGED_PARAMS,
    VERSION_PARAM,
};
use crate::params::{self, DesiredParams, ParamsError};
use crate::plan::{
    self, Decision, EcsExecState, OwnRollout, Phase, PlanContext, Roll, RollPurpose, RollTo,
    ServiceState, VersionContext,
};
use crate::plan::{reads, requirements};
use crate::rack::{Rack, RackError, Relabelled, TemplateSummary};
use crate::settings::Method;
use crate::spec::Declarations;
use crate::status::{LeaseStatus, ParamsFileStatus, Status, StatusHandle};
use crate::store::{Fetch, Location, Store};
use crate::templates::{TemplateRef, TemplateSource};
use document::StatusDocument;
use stack::StackMemory;

const HOUR: Duration = Duration::from_secs(3600);

/// Failures to observe the rack in a row after which the parameters' phases turn `Unknown`.
const UNKNOWN_AFTER: u32 = 3;

/// How long a reconcile in progress may go on after shutdown was asked for.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The loop's settings, taken from the config.
#[derive(Debug, Clone)]
pub struct Settings {
    pub targets: Vec<ServiceTarget>,
    pub cluster_resource: String,
    /// The params file: a local file or an S3 object.
    pub params_file: Location,
    /// The status document next to it, if enabled.
    pub status_file: Option<Location>,
    pub resync: Duration,
    pub poll: Duration,
    pub jitter: f64,
    pub rollout_timeout: Duration,
    /// Reconciles start at least this far apart, however often the params file changes.
    pub min_reconcile: Duration,
    /// A service is written to (`UpdateService`) at most once per this interval, except to
    /// undo a failed rollout.
    pub min_write: Duration,
    /// New tasks of a rollout that may stop or fail to start before it is judged failed.
    pub failed_tasks_threshold: u32,
    /// A reconcile run that takes longer is abandoned (and reported as an error).
    pub reconcile_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub max_corrections_per_hour: u32,
    pub templates: TemplateSource,
    /// Per parameter, how it is changed (absent: `auto`).
    pub methods: BTreeMap<String, Method>,
    /// A CloudFormation service role stack updates run with.
    pub stack_role: Option<String>,
}

/// What one reconcile run found and did.
#[derive(Debug, Clone)]
pub struct Report {
    /// `converged`, `progressing`, `waiting`, `blocked`, `failed`, `unknown`, `error`,
    /// `no_params`.
    pub result: &'static str,
    pub phases: BTreeMap<String, Phase>,
    /// When to look again.
    pub next: Duration,
    /// The params file's error at this run, if it was invalid.
    pub params_error: Option<ParamsError>,
    /// The rack could not be observed.
    pub rack_error: Option<RackError>,
    /// Whether a valid desired state was (ever) loaded.
    pub has_desired: bool,
    /// Whether the run made a write.
    pub acted: bool,
    /// A write failed with an error worth retrying (throttling, a server error, a timeout):
    /// `apply` keeps going.
    pub retrying: bool,
}

impl Report {
    /// Every managed parameter is in a final phase (converged, blocked or failed).
    pub fn is_final(&self) -> bool {
        !self.phases.is_empty() && self.phases.values().all(|p| p.is_final())
    }

    /// The worst phase (failed over blocked over converged), for `apply`'s exit code.
    pub fn worst(&self) -> Option<Phase> {
        let rank = |p: &Phase| match p {
            Phase::Failed => 5,
            Phase::Blocked => 4,
            Phase::Unknown => 3,
            Phase::Waiting => 2,
            Phase::Progressing => 1,
            Phase::Converged => 0,
        };
        self.phases.values().copied().max_by_key(rank)
    }
}

/// The answer of `check-downgrade`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionCheck {
    pub current: Option<RackVersion>,
    pub gate: plan::Gate,
    /// The target template, when it had to be read.
    pub template: Option<String>,
}

pub mod document;
mod observe;
mod stack;
mod steps;

pub use observe::Observer;

pub struct Reconciler {
    rack: Arc<dyn Rack>,
    settings: Settings,
    metrics: Metrics,
    status: StatusHandle,
    clock: Clock,
    observer: Observer,
    /// Target templates and what they declare, by version (releases are immutable).
    templates: BTreeMap<RackVersion, (TemplateRef, TemplateSummary)>,
    desired: Option<DesiredParams>,
    params_error: Option<ParamsError>,
    memory: BTreeMap<String, Memory>,
    error_backoff: Option<ExponentialBackoff>,
    consecutive_errors: u32,
    last_written: Option<String>,
    /// Rollouts this controller started, by logical service id, until the service settles;
    /// kept across changes of the desired value, so a stuck rollout can be walked back.
    own_rollouts: BTreeMap<String, OwnRollout>,
    /// When each service was last written to (`UpdateService`), for `intervals.min_write`.
    last_write: BTreeMap<String, SystemTime>,
    /// What the params file holds, parsed but not yet held against the running template.
    candidate: Option<DesiredParams>,
    /// The controller's latest stack update (its token, what it asked for), and the stack
    /// parameters' backoff.
    stack: StackMemory,
    /// The lease that makes this controller the rack's one writer (`None`: `lease: none`).
    lease: Option<Lease>,
    /// Reads the params file.
    store: Store,
    /// Where the status and what must survive a restart are written down.
    document: Option<StatusDocument>,
    /// This controller held the lease at its last look.
    leading: bool,
    /// The ETag of the params object read last: an unchanged object is not read again.
    params_etag: Option<String>,
    /// What requirements of values are checked against (the rack's VPC).
    exec: Option<Arc<dyn ExecSource>>,
}

impl Reconciler {
    pub fn new(
        rack: Arc<dyn Rack>,
        settings: Settings,
        metrics: Metrics,
        status: StatusHandle,
    ) -> Self {
        let services: Vec<String> = settings.targets.iter().map(|t| t.service.clone()).collect();
        metrics.init_series(&services);
        status.update(|s| {
            s.params_file.path = settings.params_file.to_string();
        });
        let observer = Observer::new(
            rack.clone(),
            settings.targets.clone(),
            settings.cluster_resource.clone(),
        );
        let mut rec = Reconciler {
            rack,
            settings,
            metrics,
            status,
            clock: Clock::new(),
            observer,
            templates: BTreeMap::new(),
            desired: None,
            params_error: None,
            memory: BTreeMap::new(),
            error_backoff: None,
            consecutive_errors: 0,
            last_written: None,
            own_rollouts: BTreeMap::new(),
            last_write: BTreeMap::new(),
            candidate: None,
            stack: StackMemory::default(),
            lease: None,
            store: Store::local(),
            document: None,
            leading: false,
            params_etag: None,
            exec: None,
        };
        rec.document = rec
            .settings
            .status_file
            .clone()
            .map(|at| StatusDocument::new(at, Store::local()));
        if let Some(Location::File(path)) = rec.settings.status_file.clone() {
            if let Ok(text) = std::fs::read_to_string(&path) {
                rec.restore(&text);
            }
        }
        rec
    }

    /// Reads and writes the params file and status document through `store` (needed for S3
    /// locations), and picks up what the status document in it wrote down.
    pub async fn with_store(mut self, store: Store) -> Self {
        self.document = self
            .settings
            .status_file
            .clone()
            .map(|at| StatusDocument::new(at, store.clone()));
        self.store = store;
        if let Some(Location::S3 { .. }) = &self.settings.status_file {
            self.restore_from_store(None).await;
        }
        self
    }

    /// Makes this controller write only while it holds `lease`; its writes must go through
    /// a [`crate::rack::fenced::FencedRack`] on the same lease.
    pub fn with_lease(mut self, lease: Lease) -> Self {
        self.lease = Some(lease);
        self
    }

    /// Checks the requirements of values (the route to SSM before `ECSExec=Yes`) with `exec`.
    /// Without it, a requirement that needs the VPC read is not known: the change waits.
    pub fn with_exec(mut self, exec: Arc<dyn ExecSource>) -> Self {
        self.exec = Some(exec);
        self
    }

    /// What exec readiness reads, when [`Reconciler::with_exec`] gave it.
    pub fn exec_source(&self) -> Option<Arc<dyn ExecSource>> {
        self.exec.clone()
    }

    /// The desired state without the changes whose requirements do not hold, and the
    /// decisions for those (`Blocked` or `Waiting`, nothing written).
    async fn hold_unmet(
        &self,
        desired: &DesiredParams,
        observed: &ObservedRack,
    ) -> (DesiredParams, Vec<Decision>) {
        let mut kept = desired.clone();
        let mut held = Vec::new();
        for (key, value) in &desired.values {
            let Some(req) = requirements::needed(key, value, observed) else {
                continue;
            };
            let check = self.check(req, observed).await;
            if let Some(d) = requirements::hold(key, value, &check, observed) {
                kept.values.remove(key);
                held.push(d);
            }
        }
        (kept, held)
    }

    async fn check(&self, req: Requirement, observed: &ObservedRack) -> requirements::Check {
        match req {
            Requirement::RouteToSsm => {
                let route = rack_route(self.exec.as_deref(), &observed.stack.outputs).await;
                requirements::Check::from(&route)
            }
        }
    }

    /// Why this controller must not write now, if it must not: another holds the lease.
    /// A controller that has just taken the lease over first picks up what the previous
    /// holder wrote down (its rollouts, stack update and backoffs), as after a restart.
    async fn standby(&mut self) -> Option<String> {
        let lease = self.lease.as_ref()?;
        lease.refresh_if_lapsed().await;
        let view = lease.view();
        self.metrics.set_leader(view.leader);
        self.status
            .update(|s| s.lease = Some(LeaseStatus::from(&view)));
        if view.leader && !self.leading {
            self.restore_from_store(Some(view.fence)).await;
            // Claim the document under this controller's fence before anything else is
            // written: a former holder's late write of it is then refused by its condition.
            self.last_written = None;
            self.leading = true;
            self.write_status_file().await;
        }
        self.leading = view.leader;
        (!view.leader).then(|| standby_message(&view))
    }

    /// Picks up what the status document wrote down; a controller that took the lease with
    /// fence `mine` only from the previous holder's document ([`crate::memory::restorable`]).
    async fn restore_from_store(&mut self, mine: Option<u64>) {
        let Some(doc) = self.document.as_mut() else {
            return;
        };
        let at = doc.location().clone();
        let text = match doc.read().await {
            Ok(Some(text)) => text,
            Ok(None) => return,
            Err(e) => {
                warn!(status = %at, error = %e, "cannot read the status document; going on without what it wrote down");
                return;
            }
        };
        if let Some(mine) = mine {
            if let Err(why) = crate::memory::restorable(document::fence_of(&text), mine) {
                warn!(status = %at, fence = mine, %why,
                    "not picking up the status document: starting from what is observed");
                self.forget_restored();
                return;
            }
        }
        self.restore(&text);
    }

    /// Forgets what a document picked up earlier said (rollouts, stack update, backoffs).
    fn forget_restored(&mut self) {
        self.own_rollouts.clear();
        self.stack = StackMemory::default();
        self.memory.clear();
        self.status
            .update(|s| s.controller = crate::memory::Persisted::default());
    }

    pub fn status(&self) -> StatusHandle {
        self.status.clone()
    }

    pub fn metrics(&self) -> Metrics {
        self.metrics.clone()
    }

    /// Consecutive runs that could not observe the rack.
    pub fn consecutive_errors(&self) -> u32 {
        self.consecutive_errors
    }

    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.settings.backoff_min)
            .with_max_delay(self.settings.backoff_max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
    }

    /// Observes everything the planner needs (see [`Observer`]).
    pub async fn observe(&mut self) -> Result<ObservedRack, RackError> {
        self.observer.observe(self.clock.now()).await
    }

    /// Reads the params file. A file that parses is held against the running template once
    /// the rack is observed ([`Self::accept`]); one that does not is rejected at once.
    async fn reload_params(&mut self) {
        let at = &self.settings.params_file;
        let fetched = self.store.read(at, self.params_etag.as_deref()).await;
        let loaded = match fetched {
            Ok(Fetch::Unchanged) => return,
            Ok(Fetch::Text { text, etag }) => {
                self.params_etag = etag;
                params::parse(&at.to_string(), &text)
            }
            Ok(Fetch::Missing) => Err(ParamsError::Missing {
                path: at.to_string(),
            }),
            Err(e) => Err(ParamsError::Unreadable {
                path: at.to_string(),
                reason: e.to_string(),
            }),
        };
        if loaded.is_err() {
            self.params_etag = None;
        }
        match loaded {
            Ok(d) => {
                if self.candidate.as_ref() != Some(&d) {
                    // Keys only: a value may be a secret until the template says otherwise.
                    let keys: Vec<&String> = d.values.keys().collect();
                    info!(file = %self.settings.params_file, parameters = ?keys, version = ?d.version,
                        "params file read");
                }
                self.candidate = Some(d);
            }
            Err(e) => {
                self.candidate = None;
                self.reject(e);
            }
        }
    }

    /// Holds what the params file holds against what the running template declares: it
    /// becomes the desired state, or is rejected and the last valid desired state is kept.
    fn accept(&mut self, declared: &Declarations) {
        let Some(candidate) = self.candidate.clone() else {
            return;
        };
        match candidate.check(declared) {
            Ok(()) => {
                if self.params_error.is_some() || self.desired.as_ref() != Some(&candidate) {
                    info!(file = %self.settings.params_file, "params file accepted");
                }
                self.desired = Some(candidate);
                self.params_error = None;
                self.metrics.params_valid(true);
                self.show_params_file();
            }
            Err(e) => self.reject(e),
        }
    }

    fn reject(&mut self, e: ParamsError) {
        if self.params_error.as_ref() != Some(&e) {
            self.metrics.params_error(e.kind());
            if self.desired.is_some() {
                warn!(error = %e, "params file rejected; keeping the last valid desired state");
            } else {
                warn!(error = %e, "params file rejected; no valid desired state yet, nothing will be changed");
            }
        }
        self.params_error = Some(e);
        self.metrics.params_valid(false);
        self.show_params_file();
    }

    fn show_params_file(&mut self) {
        let file = ParamsFileStatus {
            path: self.settings.params_file.to_string(),
            valid: self.params_error.is_none(),
            error: self.params_error.as_ref().map(ToString::to_string),
        };
        self.status.update(|s| s.params_file = file);
    }

    /// The desired state and the planner's decisions, without acting (for `plan`).
    pub async fn preview(&mut self) -> Result<(ObservedRack, Vec<Decision>), RackError> {
        let (observed, mut decisions) = self.preview_params().await?;
        let now = self.clock.now();
        if let Some(version) = self.desired.as_ref().and_then(|d| d.version) {
            let ecs = self.ecs_exec_state(&observed);
            let owner = self.ownership(&observed);
            let failing = self
                .plan_stack_params(&BTreeMap::new(), &observed, &owner, now)
                .failing;
            let update = (&owner, failing);
            let (d, _) = self
                .version_decision(version, &observed, &ecs, update, now)
                .await;
            decisions.push(d);
        }
        Ok((observed, decisions))
    }

    /// The managed parameters' decisions (not the version's), without acting.
    async fn preview_params(&mut self) -> Result<(ObservedRack, Vec<Decision>), RackError> {
        self.reload_params().await;
        let observed = self.observe().await?;
        self.accept(&observed.declared);
        let now = self.clock.now();
        let Some(desired) = self.desired.clone() else {
            return Ok((observed, Vec::new()));
        };
        let (desired, held) = self.hold_unmet(&desired, &observed).await;
        let (relabel, stack_desired) = self.split_by_method(&desired, &observed);
        let mut decisions: Vec<Decision> = relabel
            .map(|value| {
                let ctx = self.context(ECS_EXEC.name, now);
                plan::plan(&ECS_EXEC, &value, &observed, &ctx)
            })
            .into_iter()
            .collect();
        let owner = self.ownership(&observed);
        decisions.extend(
            self.plan_stack_params(&stack_desired, &observed, &owner, now)
                .decisions,
        );
        decisions.extend(held);
        Ok((observed, decisions))
    }

    /// The downgrade gate for a version change to `to`, from what the rack runs now and the
    /// params file (for `check-downgrade`). Writes nothing, and reads no template but the
    /// target's.
    pub async fn check_version(&mut self, to: RackVersion) -> Result<VersionCheck, String> {
        let (observed, _) = self.preview_params().await.map_err(|e| e.to_string())?;
        let ecs = self.ecs_exec_state(&observed);
        let current = observed.stack.version();
        if current.is_some_and(|c| to >= c) {
            // Not a downgrade: no template needed to answer.
            return Ok(VersionCheck {
                current,
                gate: plan::Gate::NotNeeded,
                template: None,
            });
        }
        let (template, declared) = self.target(to).await?;
        Ok(VersionCheck {
            current,
            gate: plan::downgrade_gate(
                to,
                observed
                    .stack
                    .parameters
                    .get(VERSION_PARAM)
                    .map(String::as_str),
                &declared,
                &ecs,
            ),
            template: Some(template.to_string()),
        })
    }

    /// What the downgrade gate sees of `ECSExec`: the desired value, if managed, and every
    /// revision the rack API runs.
    fn ecs_exec_state(&self, observed: &ObservedRack) -> EcsExecState {
        let desired = self.desired.as_ref().and_then(|d| d.get(&ECS_EXEC));
        EcsExecState::observe(desired, observed)
    }

    /// The last params file error, if the last read was rejected.
    pub fn params_error(&self) -> Option<&ParamsError> {
        self.params_error.as_ref()
    }

    fn context(&mut self, param: &'static str, now: SystemTime) -> PlanContext {
        let mem = mem_of(&mut self.memory, param);
        while mem
            .corrections
            .front()
            .is_some_and(|t| now.duration_since(*t).unwrap_or_default() >= HOUR)
        {
            mem.corrections.pop_front();
        }
        PlanContext {
            now,
            rollout_timeout: self.settings.rollout_timeout,
            last_converged: mem.last_converged.clone(),
            corrections_last_hour: mem.corrections.len() as u32,
            max_corrections_per_hour: self.settings.max_corrections_per_hour,
            retry_not_before: mem.retry_not_before,
            writes_not_before: self
                .last_write
                .iter()
                .map(|(s, t)| (s.clone(), *t + self.settings.min_write))
                .collect(),
            rolled_to: mem.rolled_to.clone(),
            failed_tasks_threshold: self.settings.failed_tasks_threshold,
            last_failure: mem.last_failure.clone(),
            own_rollouts: self.own_rollouts.clone(),
        }
    }

    /// One level-triggered run.
    pub async fn reconcile(&mut self, trigger: Trigger) -> Report {
        let span = info_span!("reconcile", trigger = trigger.as_str());
        let started = std::time::Instant::now();
        let deadline = self.settings.reconcile_timeout;
        let run = tokio::time::timeout(deadline, self.reconcile_inner().instrument(span)).await;
        let report = match run {
            Ok(report) => report,
            Err(_) => self.deadline_exceeded(deadline).await,
        };
        self.metrics.reconciled(report.result, started);
        report
    }

    /// A run that did not finish in time was abandoned where it stood (an AWS call that
    /// hangs, most likely). Like an unobservable rack: report it and retry with backoff.
    async fn deadline_exceeded(&mut self, deadline: Duration) -> Report {
        let error = RackError::Deadline { after: deadline };
        let delay = self.error_delay();
        warn!(error = %error, attempt = self.consecutive_errors, retry_in = %humantime::format_duration(round(delay)),
            "reconcile abandoned");
        let message = error.to_string();
        self.status.update(|s| {
            s.ready = false;
            s.rack_error = Some(message);
        });
        self.write_status_file().await;
        Report {
            result: "error",
            phases: BTreeMap::new(),
            next: delay,
            params_error: self.params_error.clone(),
            rack_error: Some(error),
            has_desired: self.desired.is_some(),
            acted: false,
            retrying: false,
        }
    }

    /// Counts one more failed run and returns how long to wait before the next.
    fn error_delay(&mut self) -> Duration {
        self.consecutive_errors += 1;
        let fresh = self.backoff();
        self.error_backoff
            .get_or_insert_with(|| fresh.build())
            .next()
            .unwrap_or(self.settings.backoff_max)
    }

    async fn reconcile_inner(&mut self) -> Report {
        self.reload_params().await;
        let now = self.clock.now();
        let mut report = Report {
            result: "no_params",
            phases: BTreeMap::new(),
            next: self.jittered(self.settings.resync),
            params_error: self.params_error.clone(),
            rack_error: None,
            has_desired: self.desired.is_some() || self.candidate.is_some(),
            acted: false,
            retrying: false,
        };
        if self.desired.is_none() && self.candidate.is_none() {
            return self.no_desired_state(now, report).await;
        }
        let observed = match self.observe().await {
            Ok(o) => o,
            Err(e) => {
                let shown = self.shown_while_unobservable();
                return self.unobservable(e, &shown, now, report).await;
            }
        };
        self.accept(&observed.declared);
        report.params_error = self.params_error.clone();
        let Some(desired) = self.desired.clone() else {
            report.has_desired = false;
            return self.no_desired_state(now, report).await;
        };
        self.forget_changed_intents(&desired, now);
        self.forget_unmanaged(&desired);
        self.observed_ok(&observed, now);

        let decisions = self
            .decide_act_record(&desired, &observed, now, &mut report)
            .await;
        report.result = report.worst().map(phase_result).unwrap_or("converged");
        report.retrying = self
            .memory
            .values()
            .chain([&self.stack.memory])
            .any(|m| m.retrying && m.retry_not_before.is_some());
        let rolling = decisions
            .iter()
            .any(|d| d.services.iter().any(|s| s.state.rolling()));
        let settling = decisions.iter().any(|d| d.reason == "Settling");
        let retrying = report.retrying;
        self.status.update(|s| s.retrying = retrying);
        report.next = self.next_run(&report, &observed, rolling, settling, now);
        self.write_status_file().await;
        report
    }

    /// What the status may show of the desired state before the rack's template has checked
    /// it: the last accepted state, else only what parsing already checked in full (`ECSExec`,
    /// `Version`); an unchecked value may be a secret.
    fn shown_while_unobservable(&self) -> DesiredParams {
        if let Some(d) = &self.desired {
            return d.clone();
        }
        let mut shown = self.candidate.clone().unwrap_or_default();
        shown
            .values
            .retain(|k, _| crate::model::managed_param(k).is_some());
        shown
    }

    /// The rack was observed: ready, and what it showed.
    fn observed_ok(&mut self, observed: &ObservedRack, now: SystemTime) {
        self.consecutive_errors = 0;
        self.error_backoff = None;
        self.forget_settled_rollouts(observed);
        self.metrics.observed(now);
        self.status.update(|s| {
            s.ready = true;
            s.rack_error = None;
            s.stack_status = Some(observed.stack.status.clone());
            s.last_reconcile = Some(crate::clock::rfc3339(now));
            s.observed(now);
        });
    }

    /// No valid params file (yet): nothing is changed, and the status says why.
    async fn no_desired_state(&mut self, now: SystemTime, report: Report) -> Report {
        let message = match &self.params_error {
            Some(e) => format!("no valid params file yet, nothing is changed: {e}"),
            None => "no valid params file yet, nothing is changed".to_string(),
        };
        self.status.update(|s| {
            s.ready = false;
            for p in MANAGED_PARAMS {
                s.record_phase(
                    p.name,
                    None,
                    Phase::Unknown,
                    "NoDesiredState",
                    &message,
                    now,
                );
            }
        });
        self.write_status_file().await;
        report
    }

    /// `ECSExec` by relabelling (when the running template does not declare it, or the config
    /// says so), every other parameter through the stack.
    fn split_by_method(
        &self,
        desired: &DesiredParams,
        observed: &ObservedRack,
    ) -> (Option<String>, BTreeMap<String, String>) {
        let mut relabel = None;
        let mut stack = BTreeMap::new();
        for (key, value) in &desired.values {
            let method = self.settings.methods.get(key).copied().unwrap_or_default();
            let by_label = key == ECS_EXEC.name
                && match method {
                    Method::Relabel => true,
                    Method::Stack => false,
                    Method::Auto => !observed.declared.declares(key),
                };
            if by_label {
                relabel = Some(value.clone());
            } else {
                stack.insert(key.clone(), value.clone());
            }
        }
        (relabel, stack)
    }

    /// When to look again: a second after a write; while a change (or its undoing) is under
    /// way, paced by its rollouts ([`reads::poll_delay`]), at the poll interval while none
    /// rolls (CloudFormation updating the stack's other resources) or while waiting on
    /// someone else's change; at the resync interval when settled; and no later than the
    /// next backoff or write cooldown ends.
    fn next_run(
        &self,
        report: &Report,
        observed: &ObservedRack,
        rolling: bool,
        settling: bool,
        now: SystemTime,
    ) -> Duration {
        let poll = self.settings.poll;
        let phase = |p: Phase| report.phases.values().any(|x| *x == p);
        let mut next = if report.acted {
            reads::FAST
        } else if rolling || phase(Phase::Progressing) {
            self.observer
                .poll_delay(observed, now, poll)
                .unwrap_or(poll)
        } else if phase(Phase::Waiting) {
            poll
        } else {
            report.next
        };
        let cooldowns = self
            .last_write
            .values()
            .filter(|_| settling)
            .map(|t| *t + self.settings.min_write);
        let waits = self
            .memory
            .values()
            .chain([&self.stack.memory])
            .filter_map(|m| m.retry_not_before)
            .chain(cooldowns);
        if let Some(wait) = waits.filter_map(|t| t.duration_since(now).ok()).min() {
            next = next.min(wait.max(Duration::from_millis(100)));
        }
        next
    }

    /// The rack could not be observed: say so, keep every parameter's last known drift and
    /// its start (an outage does not reset the drift alert's window), and turn the phases
    /// `Unknown` only after [`UNKNOWN_AFTER`] failures in a row (one transient error does not
    /// flap them). The report says `Unknown` at once: nothing was decided.
    async fn unobservable(
        &mut self,
        e: RackError,
        desired: &DesiredParams,
        now: SystemTime,
        mut report: Report,
    ) -> Report {
        let delay = self.error_delay();
        warn!(error = %e, attempt = self.consecutive_errors, retry_in = %humantime::format_duration(round(delay)),
            "observing the rack failed");
        let message = format!(
            "observing the rack failed ({} time(s) in a row), retrying in {}: {e}",
            self.consecutive_errors,
            humantime::format_duration(round(delay))
        );
        let wanted = intents(desired);
        let unknown = self.consecutive_errors >= UNKNOWN_AFTER;
        self.status.update(|s| {
            s.ready = false;
            s.rack_error = Some(e.to_string());
            for (name, value) in &wanted {
                if unknown || s.parameter(name).is_none() {
                    let reason = "RackUnreachable";
                    s.record_phase(name, Some(value), Phase::Unknown, reason, &message, now);
                }
            }
        });
        for (name, _) in &wanted {
            report.phases.insert(name.clone(), Phase::Unknown);
            if unknown {
                self.metrics.set_phase(name, Phase::Unknown);
            }
        }
        self.write_status_file().await;
        report.result = "error";
        report.rack_error = Some(e);
        report.next = delay;
        report
    }

    /// Parameters no longer in the params file are no longer managed: they leave the status,
    /// the metrics (no alert fires for ever on a parameter nobody manages) and the memory.
    fn forget_unmanaged(&mut self, desired: &DesiredParams) {
        let managed: BTreeSet<String> = intents(desired).into_iter().map(|(k, _)| k).collect();
        let known: BTreeSet<String> = self
            .status
            .get()
            .parameters
            .iter()
            .map(|p| p.name.clone())
            .chain(self.memory.keys().cloned())
            .collect();
        for name in known.difference(&managed) {
            let was_shown = self.status.update(|s| {
                let before = s.parameters.len();
                s.parameters.retain(|p| p.name != *name);
                before != s.parameters.len()
            });
            if was_shown {
                info!(parameter = %name, "no longer in the params file: not managed any more");
            }
            self.memory.remove(name);
            self.metrics.remove_parameter(name);
            if name == VERSION_PARAM {
                self.metrics.set_downgrade_blocked(false);
            }
        }
    }

    /// A service with one deployment, completed, is no longer in a rollout of ours.
    fn forget_settled_rollouts(&mut self, observed: &ObservedRack) {
        for s in &observed.services {
            let settled = s.service.deployments.len() == 1 && !s.service.rolling();
            if settled {
                self.own_rollouts.remove(&s.target.service);
            }
        }
    }

    /// The target template of `version` and the parameters it declares, cached.
    async fn target(
        &mut self,
        version: RackVersion,
    ) -> Result<(TemplateRef, BTreeSet<String>), String> {
        if let Some((t, summary)) = self.templates.get(&version) {
            return Ok((t.clone(), summary.parameters.clone()));
        }
        let template = self
            .settings
            .templates
            .locate(version)
            .map_err(|e| e.to_string())?;
        let summary = self
            .rack
            .template_summary(&template)
            .await
            .map_err(|e| e.to_string())?;
        let declared = summary.parameters.clone();
        self.templates.insert(version, (template.clone(), summary));
        Ok((template, declared))
    }

    /// The version planner's decision (and the target template), reading the template and,
    /// after a failed update of ours, the stack events. Writes nothing.
    async fn version_decision(
        &mut self,
        version: RackVersion,
        observed: &ObservedRack,
        ecs: &EcsExecState,
        (owner, failing): (&plan::Ownership, Option<String>),
        now: SystemTime,
    ) -> (Decision, Option<TemplateRef>) {
        let stack = &observed.stack;
        let settled = stack.version() == Some(version) && stack.state() == StackState::Stable;
        let target = if settled {
            Ok((None, BTreeSet::new()))
        } else {
            self.target(version)
                .await
                .map(|(t, declared)| (Some(t), declared))
        };
        let (template, declared) = match target {
            Ok(t) => t,
            Err(e) => {
                let d = plan::version_template_unavailable(version, observed, &e);
                return (d, None);
            }
        };
        let mem = mem_of(&mut self.memory, VERSION_PARAM);
        let ctx = VersionContext {
            now,
            attempted: self.stack.version,
            ownership: owner.clone(),
            cancelled: self.stack.cancelled,
            failing,
            failed_tasks_threshold: self.settings.failed_tasks_threshold,
            retry_not_before: mem.retry_not_before,
            last_failure: mem.last_failure.clone(),
            failure_reason: self.stack.memory.failure_reason.clone(),
        };
        (
            plan::plan_version(version, observed, &declared, ecs, &ctx),
            template,
        )
    }

    /// A new desired value is a new intent: forget the backoff and convergence of the old.
    fn forget_changed_intents(&mut self, desired: &DesiredParams, now: SystemTime) {
        let mut changed = false;
        for (name, value) in intents(desired) {
            let mem = mem_of(&mut self.memory, &name);
            if mem.desired.as_deref() != Some(value.as_str()) {
                if mem.desired.is_some() {
                    info!(parameter = %name, from = ?mem.desired, to = %value, "desired value changed");
                }
                mem.new_intent(Some(value), now);
                changed = true;
            }
        }
        if changed {
            self.status.update(|s| s.controller.generation += 1);
        }
    }

    /// Writes down what must survive a restart: the rollouts started and the backoffs
    /// running. Written to the status file with the rest of the status.
    fn persist(&mut self) {
        let own_rollouts = self.own_rollouts.clone();
        let failures = self
            .memory
            .iter()
            .filter_map(|(name, m)| Some((name.to_string(), m.persisted()?)))
            .collect();
        let stack_update = self.stack.persisted();
        // The generation is kept where it is counted, in the status.
        self.status.update(|s| {
            s.controller.own_rollouts = own_rollouts;
            s.controller.failures = failures;
            s.controller.stack_update = stack_update;
        });
    }

    /// Picks up what a previous run wrote down in the status file: the status itself (so
    /// conditions keep their transition times), the rollouts it started and its backoffs.
    fn restore(&mut self, text: &str) {
        let previous: Status = match serde_json::from_str(text) {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "ignoring an unreadable status file");
                return;
            }
        };
        let controller = previous.controller.clone();
        self.own_rollouts = controller.own_rollouts.clone();
        if let Some(update) = &controller.stack_update {
            self.stack = StackMemory::restored(update, self.backoff());
        }
        for (name, failure) in &controller.failures {
            self.memory
                .insert(name.clone(), Memory::restored(failure, self.backoff()));
        }
        // The desired values it had: the same file read again is not a new generation.
        for p in &previous.parameters {
            if let Some(desired) = &p.desired {
                let mem = mem_of(&mut self.memory, &p.name);
                mem.desired.get_or_insert_with(|| desired.clone());
            }
        }
        if !controller.own_rollouts.is_empty() || !controller.failures.is_empty() {
            info!(
                rollouts = controller.own_rollouts.len(),
                backoffs = controller.failures.len(),
                "picked up the rollouts and backoffs of the previous run"
            );
        }
        self.status.update(|s| {
            s.parameters = previous.parameters;
            s.controller = controller;
        });
    }

    /// On entering `Failed` because a rollout failed, count it and push the next attempt back.
    fn account_failure(&mut self, d: &Decision, now: SystemTime) {
        let fresh = matches!(
            d.reason,
            "RolloutFailed" | "RolloutTimedOut" | "RolloutReverted" | "TemplateUnavailable"
        );
        let backoff = self.backoff();
        let mem = mem_of(&mut self.memory, &d.param);
        if d.phase != Phase::Failed || !fresh || mem.last_phase == Some(Phase::Failed) {
            return;
        }
        for s in d
            .services
            .iter()
            .filter(|s| s.state == ServiceState::Failed)
        {
            self.metrics.rollout_failure(&s.service);
            mem.failed_services.insert(s.service.clone());
            // Counted once: the retry after the backoff is a new attempt.
            mem.rolled_to.remove(&s.service);
        }
        let delay = mem.back_off(backoff, self.settings.backoff_max, now);
        mem.last_failure = Some(d.message.clone());
        mem.retrying = false;
        warn!(parameter = d.param, reason = d.reason, retry_in = %humantime::format_duration(round(delay)), "{}", d.message);
    }

    /// Makes the one write of a decision: point the service at an existing revision, or at a
    /// relabelled copy of the running one (reused or registered). The rollout is written down
    /// as the controller's before `UpdateService` is called, so neither a crash nor an
    /// abandoned run can leave a rollout of its own that it would not undo.
    async fn act(&mut self, roll: &Roll, d: &mut Decision, now: SystemTime) {
        let arn = match self.target_revision(roll).await {
            Ok(arn) => arn,
            Err(e) => return self.roll_failed(roll, &e, d, now),
        };
        let before = self.own_rollouts.get(&roll.service).cloned();
        self.note_rollout(roll, &arn);
        self.write_status_file().await;
        match self
            .rack
            .update_service(&roll.cluster, &roll.service_name, &arn)
            .await
        {
            Ok(()) => {
                info!(service = %roll.service, task_definition = %arn, purpose = ?roll.purpose, "rolling service");
                self.rolled(roll, &arn, d, now);
            }
            Err(e) => {
                match before {
                    Some(own) => self.own_rollouts.insert(roll.service.clone(), own),
                    None => self.own_rollouts.remove(&roll.service),
                };
                self.roll_failed(roll, &e, d, now);
            }
        }
    }

    /// Records a rollout as the controller's: a new one from where the service is, or the
    /// undo of one.
    fn note_rollout(&mut self, roll: &Roll, arn: &str) {
        match roll.purpose {
            RollPurpose::Undo => {
                if let Some(own) = self.own_rollouts.get_mut(&roll.service) {
                    own.undone = true;
                }
            }
            RollPurpose::Change | RollPurpose::Correction => {
                let own = OwnRollout {
                    from: roll.from_task_definition.clone(),
                    to: arn.to_string(),
                    undone: false,
                };
                self.own_rollouts.insert(roll.service.clone(), own);
            }
        }
    }

    fn rolled(&mut self, roll: &Roll, arn: &str, d: &mut Decision, now: SystemTime) {
        self.metrics.rollout_started(&roll.service);
        self.last_write.insert(roll.service.clone(), now);
        let mem = mem_of(&mut self.memory, &d.param);
        let state = match roll.purpose {
            RollPurpose::Undo => ServiceState::RollingBack,
            RollPurpose::Change | RollPurpose::Correction => {
                mem.failed_services.remove(&roll.service);
                mem.rolled_to.insert(roll.service.clone(), arn.to_string());
                ServiceState::RollingOut
            }
        };
        if roll.purpose == RollPurpose::Correction {
            mem.corrections.push_back(now);
            mem.last_converged = None;
            self.metrics.correction(&d.param);
        }
        d.message = format!("{}; {} now deploys {}", d.message, roll.service, arn);
        if let Some(s) = d.services.iter_mut().find(|s| s.service == roll.service) {
            s.state = state;
        }
    }

    fn roll_failed(&mut self, roll: &Roll, e: &RackError, d: &mut Decision, now: SystemTime) {
        let backoff = self.backoff();
        let mem = mem_of(&mut self.memory, &d.param);
        if let RackError::RevisionMismatch { .. } = e {
            // Registering again would only add another wrong revision.
            let message = format!(
                "{e}; nothing more is registered or rolled for {}={} until the params file changes or the controller restarts",
                roll.label, roll.value
            );
            mem.blocked = Some(message.clone());
            *d = d.clone().blocked("RevisionMismatch", message);
            return;
        }
        let what = format!("rolling {} to {}={}", roll.service, roll.label, roll.value);
        write_failed(mem, (backoff, self.settings.backoff_max, now), e, d, &what);
    }

    /// The revision a roll points the service at: an existing one, or a relabelled copy of
    /// the running one, reused or registered.
    async fn target_revision(&mut self, roll: &Roll) -> Result<String, RackError> {
        if let RollTo::Revision(arn) = &roll.to {
            return Ok(arn.clone());
        }
        let Relabelled { arn, reused, info } = self
            .rack
            .relabel(&roll.from_task_definition, &roll.label, &roll.value)
            .await?;
        self.observer.learn(info);
        if reused {
            info!(service = %roll.service, task_definition = %arn, "reusing a revision registered earlier");
        } else {
            info!(service = %roll.service, from = %roll.from_task_definition, task_definition = %arn,
                label = %roll.label, value = %roll.value, "registered relabelled revision");
        }
        Ok(arn)
    }

    /// Records a decision in status, metrics and (when it changed) the log.
    fn publish(&mut self, d: &Decision, now: SystemTime) {
        let mem = mem_of(&mut self.memory, &d.param);
        let drift_since = if d.drift {
            Some(*mem.drift_since.get_or_insert(now))
        } else {
            None
        };
        mem.drift_since = drift_since;
        mem.last_phase = Some(d.phase);
        let line = (d.phase, d.reason, d.message.clone());
        if mem.last_logged.as_ref() != Some(&line) {
            info!(parameter = d.param, desired = %d.desired, observed = d.observed.as_deref().unwrap_or("mixed"),
                phase = %d.phase, reason = d.reason, "{}", d.message);
            mem.last_logged = Some(line);
        } else {
            debug!(parameter = d.param, phase = %d.phase, reason = d.reason, "{}", d.message);
        }
        self.metrics
            .set_parameter(&d.param, d.phase, d.drift, drift_since);
        self.metrics
            .set_corrections_capped(&d.param, d.reason == "CorrectionsCapped");
        self.metrics
            .set_rollback_failing(&d.param, d.reason == plan::hold::ROLLBACK_FAILING);
        if d.param == VERSION_PARAM {
            self.metrics
                .set_downgrade_blocked(matches!(d.reason, "DowngradeBlocked" | "DowngradeWaiting"));
        }
        for s in &d.services {
            self.metrics.set_service(
                &s.service,
                s.state.rolling(),
                s.state == ServiceState::Failed || mem.failed_services.contains(&s.service),
            );
        }
        self.status.update(|s| s.record(d, drift_since, now));
    }

    /// Writes the status file when something a person would care about changed.
    async fn write_status_file(&mut self) {
        if let Err(e) = self.write_down().await {
            warn!(error = %e, "cannot write the status file");
        }
    }

    /// Writes down the status and what must survive a restart, now; says why it could not.
    /// Without a status file there is nowhere to write (the memory lives in the process).
    async fn write_down(&mut self) -> Result<(), String> {
        self.persist();
        let Some(at) = self.settings.status_file.clone() else {
            return Ok(());
        };
        let fence = match &self.lease {
            // The holder's status document, under its fence: a standby's (or a holder's
            // that lost the lease while paused) would overwrite what the holder wrote down.
            Some(lease) => Some(
                lease
                    .fence()
                    .await
                    .map_err(|e| format!("status document {at}: not the lease holder: {e}"))?,
            ),
            None => None,
        };
        self.status
            .update(|s| s.controller.fence = fence.map(|f| f.fence));
        let status = self.status.get();
        let key = significant(&status);
        if self.last_written.as_ref() == Some(&key) {
            return Ok(());
        }
        let body = serde_json::to_string_pretty(&status)
            .map_err(|e| format!("status document {at}: {e}"))?;
        let metrics = self.metrics.clone();
        if let Some(doc) = self.document.as_mut() {
            doc.write(&body, fence.map(|f| (f, &metrics))).await?;
        }
        self.last_written = Some(key);
        Ok(())
    }

    fn jittered(&self, d: Duration) -> Duration {
        let j = self.settings.jitter;
        d.mul_f64(1.0 + j * (2.0 * fastrand::f64() - 1.0))
    }

    /// Runs until `shutdown` turns true (or its sender is dropped), reconciling on startup,
    /// on every trigger, and whenever the last run asked to look again. Nothing new starts
    /// after shutdown; a run in progress gets [`SHUTDOWN_GRACE`] to finish.
    pub async fn run(
        mut self,
        triggers: mpsc::Receiver<Trigger>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut triggers = Some(triggers);
        let mut trigger = Trigger::Startup;
        // The start of the last run for a trigger (a params change, the lease taken).
        let mut last_triggered: Option<tokio::time::Instant> = None;
        loop {
            let started = tokio::time::Instant::now();
            if matches!(trigger, Trigger::ParamsChanged | Trigger::LeaseAcquired) {
                last_triggered = Some(started);
            }
            let Some(report) = self.reconcile_unless_stopped(trigger, &mut shutdown).await else {
                break;
            };
            let deadline = started + report.next.max(self.settings.min_reconcile);
            loop {
                tokio::select! {
                    _ = stopped(&mut shutdown) => {
                        info!("shutting down");
                        return;
                    }
                    t = recv(&mut triggers) => {
                        match t {
                            Some(t) => { trigger = t; break; }
                            None => { triggers = None; }
                        }
                    }
                    _ = tokio::time::sleep_until(deadline) => { trigger = Trigger::Timer; break; }
                }
            }
            // However often the params file changes, runs for it start min_reconcile apart
            // (timer runs already are); the changes in between are coalesced into the next
            // run (it reads the file anew). A change after a poll goes ahead at once.
            if let Some(earliest) = last_triggered.map(|t| t + self.settings.min_reconcile) {
                tokio::select! {
                    _ = stopped(&mut shutdown) => break,
                    _ = tokio::time::sleep_until(earliest) => {}
                }
            }
            while let Some(rx) = triggers.as_mut() {
                match rx.try_recv() {
                    Ok(_) => trigger = Trigger::ParamsChanged,
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => triggers = None,
                }
            }
        }
        info!("shutting down");
    }

    /// One run, unless shutdown comes first; a run that shutdown interrupts gets
    /// [`SHUTDOWN_GRACE`] to finish and is then abandoned (every run starts from what it
    /// observes, so an abandoned one is picked up by the next start).
    async fn reconcile_unless_stopped(
        &mut self,
        trigger: Trigger,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<Report> {
        if *shutdown.borrow() {
            return None;
        }
        let run = self.reconcile(trigger);
        tokio::pin!(run);
        tokio::select! {
            report = &mut run => Some(report),
            _ = stopped(shutdown) => {
                info!(grace = %humantime::format_duration(SHUTDOWN_GRACE), "shutting down; letting the reconcile in progress finish");
                if tokio::time::timeout(SHUTDOWN_GRACE, &mut run).await.is_err() {
                    warn!("the reconcile in progress did not finish within the grace period; abandoned");
                }
                None
            }
        }
    }

    /// Reconciles until every managed parameter is converged, blocked or failed, the params
    /// file is invalid with nothing valid to fall back on, the rack stays unreachable for
    /// `max_errors` runs, or `shutdown` fires.
    pub async fn apply(&mut self, mut shutdown: watch::Receiver<bool>, max_errors: u32) -> Report {
        let mut trigger = Trigger::Startup;
        let mut last = None;
        loop {
            let Some(report) = self.reconcile_unless_stopped(trigger, &mut shutdown).await else {
                return last.unwrap_or_else(|| self.interrupted());
            };
            // Lost the lease: another controller writes now; nothing more to do here.
            let lost = self.lease.as_ref().is_some_and(|l| !l.is_leader());
            let give_up = lost || !report.has_desired || self.consecutive_errors >= max_errors;
            if (report.is_final() && !report.retrying)
                || give_up
                || (report.phases.is_empty() && report.rack_error.is_none())
            {
                return report;
            }
            let next = report.next;
            last = Some(report);
            tokio::select! {
                _ = stopped(&mut shutdown) => return last.unwrap_or_else(|| self.interrupted()),
                _ = tokio::time::sleep(next) => trigger = Trigger::Timer,
            }
        }
    }

    /// The report of a run cut short by shutdown before anything was known.
    fn interrupted(&self) -> Report {
        Report {
            result: "error",
            phases: BTreeMap::new(),
            next: Duration::ZERO,
            params_error: self.params_error.clone(),
            rack_error: None,
            has_desired: self.desired.is_some(),
            acted: false,
            retrying: false,
        }
    }
}

/// A write failed: back off (`retrying` when the error is worth it) and say so in the decision.
fn write_failed(
    mem: &mut Memory,
    (builder, max, now): (ExponentialBuilder, Duration, SystemTime),
    e: &RackError,
    d: &mut Decision,
    what: &str,
) {
    if let Some((reason, message)) = not_a_failure(e) {
        d.phase = Phase::Waiting;
        d.reason = reason;
        d.message = format!("{}; not written here: {message}", d.message);
        return;
    }
    let delay = mem.back_off(builder, max, now);
    mem.retrying = e.is_transient();
    d.phase = Phase::Failed;
    d.reason = "ActionFailed";
    d.message = format!(
        "{what} failed, next attempt in {}: {e}",
        humantime::format_duration(round(delay))
    );
}

/// A rollback is failing: the stack writes this run would have made wait until it heals.
fn hold_for_rollback(stack: &mut plan::StackPlan, version: Option<&mut Decision>) {
    let message = "undoing a failed change of the rack API fails too (see RollbackFailing): \
                   nothing is written until it heals or a person acts";
    for d in stack
        .decisions
        .iter_mut()
        .filter(|d| stack.changes.contains_key(&d.param))
        .chain(version.filter(|d| d.action.is_some()))
    {
        d.action = None;
        d.phase = Phase::Waiting;
        d.reason = "WaitingForRollback";
        d.message = format!("{}; {message}", d.message);
    }
    stack.changes.clear();
    stack.cancel = None;
}

/// A change this controller would make, left to the lease holder.
/// A write refused by the fence or by a condition is no failure of the change: the lease
/// holder makes it, or the next reconcile does from what it sees; no backoff.
fn not_a_failure(e: &RackError) -> Option<(&'static str, String)> {
    match e {
        RackError::NotLeader { message } => Some(("Standby", message.clone())),
        RackError::ChangedSinceObserved { .. } => Some(("ChangedSinceObserved", e.to_string())),
        _ => None,
    }
}

fn standing_by(d: &mut Decision, message: &str) {
    d.phase = Phase::Waiting;
    d.reason = "Standby";
    d.message = format!("{}; not written here: {message}", d.message);
}

/// The memory of a parameter, created empty on first use.
fn mem_of<'a>(memory: &'a mut BTreeMap<String, Memory>, name: &str) -> &'a mut Memory {
    memory.entry(name.to_string()).or_default()
}

/// Every parameter the params file manages, with its desired value (`Version` included).
fn intents(desired: &DesiredParams) -> Vec<(String, String)> {
    desired
        .values
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .chain(
            desired
                .version
                .map(|v| (VERSION_PARAM.to_string(), v.to_string())),
        )
        .collect()
}

/// Completes once shutdown is asked for (or nobody can ask any more).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

async fn recv(rx: &mut Option<mpsc::Receiver<Trigger>>) -> Option<Trigger> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn phase_result(p: Phase) -> &'static str {
    match p {
        Phase::Converged => "converged",
        Phase::Progressing => "progressing",
        Phase::Waiting => "waiting",
        Phase::Blocked => "blocked",
        Phase::Failed => "failed",
        Phase::Unknown => "unknown",
    }
}

fn round(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs().max(1))
}

/// The parts of the status whose change is worth a status file write.
fn significant(s: &Status) -> String {
    let params: Vec<_> = s
        .parameters
        .iter()
        .map(|p| {
            (
                &p.name,
                &p.desired,
                &p.observed,
                p.phase,
                &p.reason,
                &p.services,
            )
        })
        .collect();
    format!(
        "{:?}|{:?}|{:?}|{}|{:?}",
        s.params_file, params, s.rack_error, s.ready, s.controller
    )
}
