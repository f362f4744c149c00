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

/// A version's template and the parameters it declares (`None`: the stack runs it already),
/// or why it could not be read.
type Target = Result<(Option<TemplateRef>, BTreeSet<String>), String>;
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
use journal::{Journal, JournalHandle};
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
    /// The history next to the status document, if kept.
    pub history_file: Option<Location>,
    /// How much history is kept.
    pub history: crate::history::Retention,
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

mod desired;
pub mod document;
mod events;
pub mod journal;
mod observe;
mod persist;
mod rollout;
mod schedule;
mod stack;
mod steps;
mod undecided;
mod version;

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
    /// The rack's history, kept next to the status document.
    journal: JournalHandle,
    /// This controller's name in its events (its name in the lease, when there is one).
    holder: String,
    /// The lease fence this controller holds, while it holds it.
    fence: Option<u64>,
    /// The other holder of the lease last seen, while this controller stood by.
    other_holder: Option<String>,
    /// The events of this run, recorded at its end.
    events: Vec<crate::history::Event>,
    /// The events of this run's write, placed after what the decisions found.
    written: Vec<crate::history::Event>,
    /// The fence the controller's documents were last written under.
    held: Option<crate::lease::Fence>,
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
            journal: Journal::new(None, Store::local(), Default::default()).handle(),
            holder: crate::lease::default_holder(),
            fence: None,
            other_holder: None,
            events: Vec::new(),
            written: Vec::new(),
            held: None,
        };
        rec.journal = Journal::new(
            rec.settings.history_file.clone(),
            Store::local(),
            rec.settings.history,
        )
        .handle();
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
        self.journal = Journal::new(
            self.settings.history_file.clone(),
            store.clone(),
            self.settings.history,
        )
        .handle();
        self.store = store;
        if let Some(Location::S3 { .. }) = &self.settings.status_file {
            self.restore_from_store(None).await;
        }
        self
    }

    /// Makes this controller write only while it holds `lease`; its writes must go through
    /// a [`crate::rack::fenced::FencedRack`] on the same lease.
    pub fn with_lease(mut self, lease: Lease) -> Self {
        self.holder = lease.me().to_string();
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
    fn hold_unmet(
        &self,
        desired: &DesiredParams,
        observed: &ObservedRack,
        checks: &BTreeMap<String, requirements::Check>,
    ) -> (DesiredParams, Vec<Decision>) {
        let mut kept = desired.clone();
        let mut held = Vec::new();
        for (key, value) in &desired.values {
            let Some(check) = checks.get(key) else {
                continue;
            };
            if let Some(d) = requirements::hold(key, value, check, observed) {
                kept.values.remove(key);
                held.push(d);
            }
        }
        (kept, held)
    }

    /// The requirements of the desired values that would change, checked (each a read).
    async fn check_requirements(
        &self,
        desired: &DesiredParams,
        observed: &ObservedRack,
    ) -> BTreeMap<String, requirements::Check> {
        let mut out = BTreeMap::new();
        for (key, value) in &desired.values {
            if let Some(req) = requirements::needed(key, value, observed) {
                out.insert(key.clone(), self.check(req, observed).await);
            }
        }
        out
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
        self.lease_events(&view);
        if view.leader && !self.leading {
            self.restore_from_store(Some(view.fence)).await;
            // The history goes on from what the previous holder wrote.
            self.journal.lock().await.reload();
            // Claim the document under this controller's fence before anything else is
            // written: a former holder's late write of it is then refused by its condition.
            self.last_written = None;
            self.leading = true;
            self.write_status_file().await;
        }
        self.leading = view.leader;
        (!view.leader).then(|| standby_message(&view))
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

    /// Observes everything the planner needs (see [`Observer`]), told what the params file
    /// asks of the managed labels.
    pub async fn observe(&mut self, light: bool) -> Result<ObservedRack, RackError> {
        let wanted = self
            .candidate
            .as_ref()
            .or(self.desired.as_ref())
            .and_then(|d| d.get(&ECS_EXEC).map(|v| (&ECS_EXEC, v.to_string())));
        self.observer.want(wanted);
        let file = self.candidate.as_ref().or(self.desired.as_ref());
        let unknown = |k: &String| crate::model::managed_param(k).is_none();
        self.observer
            .need_template(file.is_none_or(|d| d.values.keys().any(unknown)));
        // A params file that says something new is held against the template as the stack
        // is now: no light look then.
        let light = light && self.candidate.is_some() && self.candidate == self.desired;
        self.observer.observe(self.clock.now(), light).await
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
            let target = self.version_target(version, &observed).await;
            let (d, _) = self.version_decision(version, target, &observed, &ecs, update, now);
            decisions.push(d);
        }
        Ok((observed, decisions))
    }

    /// The managed parameters' decisions (not the version's), without acting.
    async fn preview_params(&mut self) -> Result<(ObservedRack, Vec<Decision>), RackError> {
        self.reload_params().await;
        let observed = self.observe(false).await?;
        self.accept(&observed.declared);
        let now = self.clock.now();
        let Some(desired) = self.desired.clone() else {
            return Ok((observed, Vec::new()));
        };
        let checks = self.check_requirements(&desired, &observed).await;
        let (desired, held) = self.hold_unmet(&desired, &observed, &checks);
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

    fn context(&self, param: &'static str, now: SystemTime) -> PlanContext {
        let empty = Memory::default();
        let mem = self.memory.get(param).unwrap_or(&empty);
        let recent = mem
            .corrections
            .iter()
            .filter(|t| now.duration_since(**t).unwrap_or_default() < HOUR)
            .count();
        PlanContext {
            now,
            rollout_timeout: self.settings.rollout_timeout,
            last_converged: mem.last_converged.clone(),
            corrections_last_hour: recent as u32,
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
        // Only a look on a timer may be light: a trigger (a params change, the lease) always
        // reads the stack.
        let light = trigger == Trigger::Timer;
        let run = tokio::time::timeout(deadline, self.reconcile_inner(light).instrument(span));
        let run = run.await;
        let report = match run {
            Ok(report) => report,
            Err(_) => self.deadline_exceeded(deadline).await,
        };
        self.commit_events().await;
        self.metrics.reconciled(report.result, started);
        report
    }

    async fn reconcile_inner(&mut self, light: bool) -> Report {
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
        let observed = match self.observe(light).await {
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

        let (observed, decisions) = match self
            .decide_on_whole(&desired, observed, now, &mut report)
            .await
        {
            Ok(done) => done,
            Err(e) => {
                let shown = self.shown_while_unobservable();
                return self.unobservable(e, &shown, now, report).await;
            }
        };
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
                &p.recorded,
            )
        })
        .collect();
    format!(
        "{:?}|{:?}|{:?}|{}|{:?}",
        s.params_file, params, s.rack_error, s.ready, s.controller
    )
}
