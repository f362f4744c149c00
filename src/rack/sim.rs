//! An embedded simulated Convox rack.
//!
//! Modelled on the public rack template (`sim_rack.json`, beside this file): a stack with
//! the template's parameters, the rack API task definitions with their `rack.*` labels and
//! every other field a real one has, and the two API services with their deployment settings.
//! `UpdateService` starts a rolling deployment that replaces tasks over (tokio) time while
//! respecting minimum healthy and maximum percent. As on a real rack, the API services have
//! no deployment circuit breaker: a deployment whose tasks fail to start stays `IN_PROGRESS`
//! while ECS keeps launching and stopping tasks (each with a `stoppedReason`), and with
//! minimum healthy 0 (a rack without high availability) the API is down meanwhile. A circuit
//! breaker that rolls such deployments back is an explicit option. The web service sits
//! behind the rack's load balancer, the task definitions carry roles under `/convox/`, the
//! monitor's plaintext `PASSWORD` and secret-bearing labels. Faults can be injected for tests
//! and demos.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::{
    ApiErrorKind, Rack, RackError, Relabelled, ResourceChange, StackUpdateOutcome,
    StackUpdateRequest, TemplateSummary,
};
use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::model::{
    Deployment, DeploymentStatus, FailureWalk, RolloutState, ServiceSnapshot, ServiceTasks,
    StackEvent, StackParameter, StackSnapshot, StoppedTask, TaskDefinitionInfo, TaskRead,
    TaskSnapshot, UpdateEvents,
};
use crate::spec::{Declarations, ParamDecl};
use crate::templates::{declared_parameters, TemplateLocation, TemplateRef};

mod api;
mod apps;
mod ecs;
mod fixture;
mod stack;

pub use crate::settings::{SimNetwork, SimSettings, SIM_ECSEXEC_VERSION};
pub use api::sim_password;
use api::*;
use fixture::templates;
pub use fixture::{
    fixture, Fixture, FixtureLoadBalancer, FixtureParameter, FixtureService, FixtureTaskDefinition,
    FixtureTemplate,
};

const FIXTURE: &str = include_str!("sim_rack.json");
const ACCOUNT: &str = "123456789012";
/// The AWS operations the simulated rack answers, by name.
pub const OPERATIONS: &[&str] = &[
    "DescribeStacks",
    "ListStackResources",
    "DescribeStackResource",
    "DescribeStackEvents",
    "GetTemplate",
    "GetTemplateSummary",
    "UpdateStack",
    "CancelUpdateStack",
    "CreateChangeSet",
    "DescribeChangeSet",
    "DeleteChangeSet",
    "DescribeServices",
    "ListTasks",
    "DescribeTasks",
    "DescribeTaskDefinition",
    "ListTaskDefinitions",
    "RegisterTaskDefinition",
    "UpdateService",
    "DescribeContainerInstances",
    "SimulatePrincipalPolicy",
    "DescribeRouteTables",
    "DescribeVpcEndpoints",
];

/// Calls by operation.
pub type Calls = BTreeMap<&'static str, u64>;

/// The operation named `name`, if the simulated rack answers it.
pub fn operation(name: &str) -> Option<&'static str> {
    OPERATIONS.iter().copied().find(|op| *op == name)
}

/// The capability an update of the rack template must acknowledge (it creates IAM roles).
const RACK_CAPABILITY: &str = "CAPABILITY_IAM";
const CIRCUIT_BREAKER_REASON: &str = "ECS deployment circuit breaker: tasks failed to start.";

/// How the next deployments' tasks behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutFault {
    /// Tasks fail to start and are stopped with a reason; ECS keeps launching new ones (a
    /// circuit breaker, when configured, fails the deployment and rolls back).
    FailToStart,
    /// Tasks never become healthy and nothing fails: the rollout never finishes.
    NeverHealthy,
}

/// The simulated rack. Cheap to share behind an `Arc`; two controllers may use one.
pub struct SimRack {
    state: Mutex<State>,
    clock: Clock,
    metrics: Mutex<Option<Metrics>>,
}

struct State {
    settings: SimSettings,
    /// Turns the simulation's instants into the wall-clock times events carry.
    clock: Clock,
    cluster: String,
    stack_status: String,
    stack_status_reason: Option<String>,
    /// When set, the stack settles to this status at that time.
    stack_settles: Option<(Instant, String)>,
    /// An `UpdateStack` under way.
    stack_update: Option<PendingStackUpdate>,
    /// Failures to inject into the next stack updates: (logical resource, reason).
    stack_update_faults: VecDeque<(String, String)>,
    /// The stack's events, oldest first.
    stack_events: Vec<StackEvent>,
    /// The `ClientRequestToken` of the latest stack update.
    stack_token: Option<String>,
    /// Parameters each known template declares, by version, with defaults.
    templates: BTreeMap<String, Declarations>,
    parameters: BTreeMap<String, String>,
    /// Logical id → physical id, as CloudFormation last set them.
    stack_resources: BTreeMap<String, String>,
    task_definitions: BTreeMap<String, Value>,
    latest_revision: BTreeMap<String, u32>,
    /// Revisions described or registered through the adapter's calls: what the AWS adapter
    /// keeps, and compares without describing them again (it keeps the latest 16; the rack
    /// API's few revisions stay well within that).
    kept: BTreeSet<String>,
    services: Vec<SimService>,
    rollout_faults: VecDeque<RolloutFault>,
    launches_fail: bool,
    api_faults: BTreeMap<&'static str, u32>,
    calls: BTreeMap<&'static str, u64>,
    updates: Vec<UpdateRecord>,
    stack_updates: Vec<StackUpdateRecord>,
    next_id: u64,
    apps: apps::SimApps,
}

struct PendingStackUpdate {
    /// When CloudFormation reaches the services (or fails).
    at: Instant,
    version: String,
    parameters: BTreeMap<String, String>,
    declared: BTreeMap<String, Option<String>>,
    fault: Option<(String, String)>,
    /// Resources updated; waiting for the service rollouts to finish.
    applied: bool,
    /// What a rollback restores: the parameters and each service's revision before.
    previous: (BTreeMap<String, String>, Vec<String>),
    /// Rolling back (cancelled, or the services did not stabilise).
    rolling_back: bool,
}

/// How long CloudFormation waits for an ECS service to stabilise before it fails the update.
const STABILIZE_TIMEOUT: Duration = Duration::from_secs(3 * 3600);

/// One `UpdateStack` the sim accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackUpdateRecord {
    pub version: String,
    pub at: Instant,
    /// Whether every service had a single, completed deployment at that moment.
    pub services_settled: bool,
    /// (key, value) with `None` for `UsePreviousValue`.
    pub parameters: Vec<(String, Option<String>)>,
}

/// One `UpdateService` the sim accepted, for tests that check ordering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateRecord {
    /// Logical id of the service.
    pub service: String,
    pub task_definition: String,
    pub at: Instant,
    /// Whether every other service had a single, completed deployment at that moment.
    pub others_settled: bool,
}

struct SimService {
    logical: String,
    task_logical: String,
    name: String,
    arn: String,
    desired: u32,
    min_percent: u32,
    max_percent: u32,
    deployments: Vec<SimDeployment>,
    /// Target groups of the load balancer in front of the service.
    target_groups: Vec<String>,
    /// Tasks that stopped, newest last (ECS shows them for about an hour).
    stopped: VecDeque<SimStopped>,
    /// Revisions that have had a task running.
    ran: BTreeSet<String>,
}

struct SimStopped {
    task_definition: String,
    deployment: String,
    code: &'static str,
    reason: String,
    created: Instant,
    stopped: Instant,
}

/// How ECS schedules a service's tasks in the sim.
#[derive(Debug, Clone, Copy)]
struct Scheduling {
    task_start: Duration,
    circuit_breaker: Option<u32>,
    /// Every launch fails, whatever the revision (the cluster cannot start tasks).
    launches_fail: bool,
}

struct SimDeployment {
    id: String,
    primary: bool,
    task_definition: String,
    rollout: RolloutState,
    reason: Option<String>,
    created: Instant,
    running: u32,
    /// Launches in flight and when each resolves.
    starting: Vec<Instant>,
    failed_tasks: u32,
    fault: Option<RolloutFault>,
}

impl SimRack {
    /// A rack as the fixture describes it, converged on its initial state.
    pub fn new(settings: SimSettings) -> Self {
        let clock = Clock::new();
        let fx = fixture();
        let known = templates(&fx);
        let declared = known
            .get(&settings.version)
            .or_else(|| known.values().next_back())
            .cloned()
            .unwrap_or_default();
        let (parameters, stack_ecs_exec) = initial_parameters(&declared, &settings);
        let mut state = State::new(&settings, clock, parameters, known);
        let label = stack_ecs_exec.or(settings.initial_ecs_exec.clone());
        for (logical, svc) in &fx.services {
            if let Some(td) = fx.task_definitions.get(&svc.task_definition) {
                state.add_api_service(logical, svc, td, label.as_deref(), clock.instant());
            }
        }
        if !settings.high_availability {
            state.without_high_availability();
        }
        // Web first, as the rack lists them.
        state.services.sort_by_key(|s| s.logical != "ServiceWebApi");
        SimRack {
            state: Mutex::new(state),
            clock,
            metrics: Mutex::new(None),
        }
    }

    /// Counts this rack's calls in `metrics` as well as in its own counters.
    pub fn set_metrics(&self, metrics: Metrics) {
        *self.metrics.lock().unwrap_or_else(|e| e.into_inner()) = Some(metrics);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.advance(self.clock.instant());
        s
    }

    /// Counts a call and applies an injected API fault, if any.
    fn call(
        &self,
        s: &mut State,
        service: &'static str,
        op: &'static str,
        resource: &str,
    ) -> Result<(), RackError> {
        *s.calls.entry(op).or_default() += 1;
        let fault = match s.api_faults.get_mut(op) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        };
        let outcome = if fault { "transient_error" } else { "success" };
        if let Some(m) = self
            .metrics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            m.api_call(service, op, outcome);
        }
        if fault {
            return Err(RackError::Api {
                service,
                operation: op,
                resource: resource.to_string(),
                kind: ApiErrorKind::Transient,
                message: "ThrottlingException: Rate exceeded".into(),
            });
        }
        Ok(())
    }

    /// `DescribeStackEvents`, 100 a page, newest first, back to the latest update's start.
    fn walk_events(&self) -> Result<FailureWalk, RackError> {
        let mut s = self.lock();
        let name = s.settings.rack.clone();
        let newest_first: Vec<StackEvent> = s.stack_events.iter().rev().cloned().collect();
        let mut walk = FailureWalk::default();
        for page in newest_first.chunks(100) {
            self.call(&mut s, "cloudformation", "DescribeStackEvents", &name)?;
            walk.feed(&name, page);
            if walk.done {
                break;
            }
        }
        Ok(walk)
    }

    // ---- fault injection and inspection (tests, demos) ----

    /// The next `UpdateService` deployments behave as `fault` says, in order.
    pub fn inject_rollout_fault(&self, fault: RolloutFault) {
        self.lock().rollout_faults.push_back(fault);
    }

    /// While `failing`, every task launch fails, whatever the revision (the cluster cannot
    /// start tasks: an image registry or the instances are gone); deployments go on once it
    /// is cleared.
    pub fn fail_every_launch(&self, failing: bool) {
        self.lock().launches_fail = failing;
    }

    /// The next `count` calls of `operation` fail with a throttling error.
    pub fn inject_api_errors(&self, operation: &'static str, count: u32) {
        *self.lock().api_faults.entry(operation).or_default() += count;
    }

    /// Calls of `operation` succeed again.
    pub fn clear_api_errors(&self, operation: &'static str) {
        self.lock().api_faults.remove(operation);
    }

    /// Sets the stack status; with `settle_after`, it becomes `UPDATE_COMPLETE` then.
    pub fn set_stack_status(&self, status: &str, settle_after: Option<Duration>) {
        let now = self.clock.instant();
        let mut s = self.lock();
        s.stack_status = status.to_string();
        s.stack_settles = settle_after.map(|d| (now + d, "UPDATE_COMPLETE".to_string()));
    }

    /// What a CloudFormation stack update does to the label: registers a revision of the
    /// service's task definition with `label` set to `value` (removed when `None`) and rolls
    /// the service to it, outside the controller.
    pub fn revert_label_out_of_band(
        &self,
        service_logical: &str,
        label: &str,
        value: Option<&str>,
    ) {
        let now = self.clock.instant();
        let mut s = self.lock();
        if let Some(idx) = s.services.iter().position(|x| x.logical == service_logical) {
            s.stack_roll(idx, now, |body| set_label(body, label, value));
        }
    }

    /// The next stack update fails on `resource` with `reason` and rolls back.
    pub fn fail_next_stack_update(&self, resource: &str, reason: &str) {
        self.lock()
            .stack_update_faults
            .push_back((resource.to_string(), reason.to_string()));
    }

    /// Every `UpdateStack` accepted so far, in order.
    pub fn stack_updates(&self) -> Vec<StackUpdateRecord> {
        self.lock().stack_updates.clone()
    }

    /// The stack's parameters as CloudFormation holds them.
    pub fn stack_parameters(&self) -> BTreeMap<String, String> {
        self.lock().parameters.clone()
    }

    /// A registered revision of `base`'s family equal to `base` with `label` set to `value`
    /// (`ListTaskDefinitions`).
    pub fn find_relabelled(
        &self,
        base: &str,
        label: &str,
        value: &str,
    ) -> Result<Option<String>, RackError> {
        self.find_in(&mut self.lock(), base, label, value)
    }

    /// Registers `base` with `label` set to `value`, whether or not such a revision exists:
    /// what an earlier run that stopped before `UpdateService` leaves behind
    /// (`RegisterTaskDefinition`).
    pub fn register_relabelled(
        &self,
        base: &str,
        label: &str,
        value: &str,
    ) -> Result<String, RackError> {
        self.register_in(&mut self.lock(), base, label, value)
    }

    fn find_in(
        &self,
        s: &mut State,
        base: &str,
        label: &str,
        value: &str,
    ) -> Result<Option<String>, RackError> {
        self.call(s, "ecs", "ListTaskDefinitions", base)?;
        let body = s
            .task_definitions
            .get(base)
            .ok_or_else(|| not_found("DescribeTaskDefinition", base))?;
        let mut want = body.clone();
        set_label(&mut want, label, Some(value));
        let want = comparable(&want);
        let family = body["family"].clone();
        // As the AWS adapter: the family's 10 latest revisions that can be a copy of `base`
        // (newer than it, or kept), newest first, each described unless kept, until one
        // matches.
        let mut candidates: Vec<(u32, String)> = s
            .task_definitions
            .iter()
            .filter(|(a, b)| {
                b["family"] == family
                    && a.as_str() != base
                    && (revision_of(a) > revision_of(base) || s.kept.contains(a.as_str()))
            })
            .map(|(a, _)| (revision_of(a), a.clone()))
            .collect();
        candidates.sort_by_key(|(revision, _)| std::cmp::Reverse(*revision));
        for (_, arn) in candidates.into_iter().take(10) {
            if s.kept.insert(arn.clone()) {
                self.call(s, "ecs", "DescribeTaskDefinition", &arn)?;
            }
            if s.task_definitions.get(&arn).map(comparable) == Some(want.clone()) {
                return Ok(Some(arn));
            }
        }
        Ok(None)
    }

    fn register_in(
        &self,
        s: &mut State,
        base: &str,
        label: &str,
        value: &str,
    ) -> Result<String, RackError> {
        self.call(s, "ecs", "RegisterTaskDefinition", base)?;
        let mut body = s
            .task_definitions
            .get(base)
            .cloned()
            .ok_or_else(|| not_found("RegisterTaskDefinition", base))?;
        set_label(&mut body, label, Some(value));
        let family = body["family"].as_str().unwrap_or_default().to_string();
        Ok(s.register(&family, body))
    }

    /// Calls made so far, by operation.
    pub fn calls(&self, operation: &str) -> u64 {
        self.lock().calls.get(operation).copied().unwrap_or(0)
    }

    /// Calls made so far of every operation (see [`OPERATIONS`]), by operation.
    pub fn call_counts(&self) -> Calls {
        let s = self.lock();
        OPERATIONS
            .iter()
            .map(|op| (*op, s.calls.get(op).copied().unwrap_or(0)))
            .collect()
    }

    /// The calls made since `before` (from [`SimRack::call_counts`]), operations not called
    /// left out.
    pub fn calls_since(&self, before: &Calls) -> Calls {
        self.call_counts()
            .into_iter()
            .map(|(op, n)| (op, n - before.get(op).copied().unwrap_or(0)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// Every `UpdateService` accepted so far, in order.
    pub fn updates(&self) -> Vec<UpdateRecord> {
        self.lock().updates.clone()
    }

    /// `RegisterTaskDefinition`, `UpdateService` and `UpdateStack` calls made so far.
    pub fn writes(&self) -> u64 {
        self.calls("RegisterTaskDefinition")
            + self.calls("UpdateService")
            + self.calls("UpdateStack")
    }

    /// Revisions registered in the family of the given service's task definition.
    pub fn revisions(&self, service_logical: &str) -> u32 {
        let s = self.lock();
        s.services
            .iter()
            .find(|x| x.logical == service_logical)
            .and_then(|x| x.primary())
            .and_then(|d| s.task_definitions.get(&d.task_definition))
            .and_then(|b| b["family"].as_str())
            .and_then(|f| s.latest_revision.get(f).copied())
            .unwrap_or(0)
    }

    /// The full registered task definition (as `DescribeTaskDefinition` returns it).
    pub fn task_definition_body(&self, arn: &str) -> Option<Value> {
        self.lock().task_definitions.get(arn).cloned()
    }

    /// A service as ECS would describe it now, without counting a call.
    pub fn service_snapshot(&self, service_logical: &str) -> Option<ServiceSnapshot> {
        let s = self.lock();
        s.services
            .iter()
            .find(|x| x.logical == service_logical)
            .map(|x| x.snapshot(&self.clock))
    }

    /// The stack's resources, logical id → physical id (no call counted).
    pub fn resources(&self) -> BTreeMap<String, String> {
        self.lock().resources()
    }
}

/// The stack's parameters at creation: every declared one at its default (`****` for a
/// `NoEcho` one), the version, `Private`, and `ECSExec` where the template declares it (the
/// value the labels then carry).
fn initial_parameters(
    declared: &Declarations,
    settings: &SimSettings,
) -> (BTreeMap<String, String>, Option<String>) {
    let mut parameters: BTreeMap<String, String> = declared
        .params
        .values()
        .map(|p| {
            let v = if p.no_echo {
                "****".to_string()
            } else {
                p.default.clone().unwrap_or_default()
            };
            (p.name.clone(), v)
        })
        .collect();
    parameters.insert("Version".into(), settings.version.clone());
    if settings.private {
        parameters.insert("Private".into(), "Yes".into());
    }
    let stack_ecs_exec = declared.declares("ECSExec").then(|| {
        let v = settings
            .initial_ecs_exec
            .clone()
            .unwrap_or_else(|| "No".into());
        parameters.insert("ECSExec".into(), v.clone());
        v
    });
    (parameters, stack_ecs_exec)
}

impl State {
    fn new(
        settings: &SimSettings,
        clock: Clock,
        parameters: BTreeMap<String, String>,
        templates: BTreeMap<String, Declarations>,
    ) -> State {
        let rack = &settings.rack;
        let cluster = format!("{rack}-Cluster-1P2Q3R4S5T6U");
        State {
            cluster: cluster.clone(),
            stack_status: "UPDATE_COMPLETE".into(),
            stack_status_reason: None,
            clock,
            stack_settles: None,
            parameters,
            stack_resources: BTreeMap::from([("Cluster".to_string(), cluster.clone())]),
            task_definitions: BTreeMap::new(),
            kept: BTreeSet::new(),
            latest_revision: BTreeMap::new(),
            services: Vec::new(),
            rollout_faults: std::iter::repeat_n(
                RolloutFault::FailToStart,
                settings.failing_rollouts as usize,
            )
            .collect(),
            launches_fail: false,
            api_faults: settings
                .throttled
                .iter()
                .filter_map(|(op, n)| Some((operation(op)?, *n)))
                .collect(),
            calls: BTreeMap::new(),
            updates: Vec::new(),
            stack_updates: Vec::new(),
            stack_update: None,
            stack_update_faults: VecDeque::new(),
            stack_events: Vec::new(),
            stack_token: None,
            templates,
            next_id: 1,
            apps: apps::SimApps::new(rack, &settings.region, &cluster, settings.apps),
            settings: settings.clone(),
        }
    }

    /// One rack API service as the template creates it: its task definition registered (with
    /// `rack.ECSExec` when `label` says), a completed deployment running it.
    fn add_api_service(
        &mut self,
        logical: &str,
        svc: &FixtureService,
        td: &FixtureTaskDefinition,
        label: Option<&str>,
        now: Instant,
    ) {
        let (rack, region) = (self.settings.rack.clone(), self.settings.region.clone());
        let family = format!("{rack}{}", td.family_suffix);
        let mut labels = td.docker_labels.clone();
        if let Some(v) = label {
            labels.insert("rack.ECSExec".into(), v.to_string());
        }
        let body = initial_task_definition(&rack, &self.settings, &family, &td.container, &labels);
        let arn = self.register(&family, body);
        self.stack_resources
            .insert(svc.task_definition.clone(), arn.clone());
        let name = format!("{rack}-{logical}-{}", short_id(logical));
        let mut deployment = SimDeployment::new(self.next_deployment_id(), arn.clone(), now, None);
        deployment.rollout = RolloutState::Completed;
        deployment.running = svc.desired_count;
        let cluster = &self.cluster;
        let service_arn = format!("arn:aws:ecs:{region}:{ACCOUNT}:service/{cluster}/{name}");
        self.stack_resources
            .insert(logical.to_string(), service_arn.clone());
        let target_groups = svc
            .load_balancer
            .iter()
            .map(|lb| {
                format!(
                    "arn:aws:elasticloadbalancing:{region}:{ACCOUNT}:targetgroup/{rack}-{}/{}",
                    lb.target_group,
                    short_id(&lb.target_group).to_lowercase()
                )
            })
            .collect();
        self.services.push(SimService {
            logical: logical.to_string(),
            task_logical: svc.task_definition.clone(),
            arn: service_arn,
            name,
            desired: svc.desired_count,
            min_percent: svc.minimum_healthy_percent,
            max_percent: svc.maximum_percent,
            deployments: vec![deployment],
            target_groups,
            stopped: VecDeque::new(),
            ran: BTreeSet::from([arn]),
        });
    }

    /// `HighAvailability=No`: the web service runs one task, with minimum healthy 0%.
    fn without_high_availability(&mut self) {
        if let Some(web) = self
            .services
            .iter_mut()
            .find(|x| x.logical == "ServiceWebApi")
        {
            web.desired = 1;
            web.min_percent = 0;
            if let Some(d) = web.deployments.first_mut() {
                d.running = 1;
            }
        }
    }
}

impl State {
    fn next_deployment_id(&mut self) -> String {
        self.next_id += 1;
        format!(
            "ecs-svc/{:019}",
            4_000_000_000_000_000_000u64 + self.next_id
        )
    }

    fn register(&mut self, family: &str, mut body: Value) -> String {
        let rev = self.latest_revision.entry(family.to_string()).or_insert(0);
        *rev += 1;
        let arn = format!(
            "arn:aws:ecs:{}:{ACCOUNT}:task-definition/{family}:{rev}",
            self.settings.region
        );
        body["revision"] = json!(*rev);
        body["taskDefinitionArn"] = json!(arn);
        body["status"] = json!("ACTIVE");
        self.task_definitions.insert(arn.clone(), body);
        arn
    }

    fn resources(&self) -> BTreeMap<String, String> {
        self.stack_resources.clone()
    }

    /// The rack stack's outputs that exec readiness reads.
    /// The rack parameter `Private` is `Yes`.
    fn private(&self) -> bool {
        self.parameters.get("Private").is_some_and(|p| p == "Yes")
    }

    fn outputs(&self) -> BTreeMap<String, String> {
        let private = self.private();
        let list = |prefix: &str| {
            if private {
                format!("{prefix}-0a1b2c3d,{prefix}-1a2b3c4d")
            } else {
                String::new()
            }
        };
        BTreeMap::from([
            ("Cluster".to_string(), self.cluster.clone()),
            (
                "Private".to_string(),
                if private { "Yes" } else { "No" }.to_string(),
            ),
            ("Vpc".to_string(), apps::VPC.to_string()),
            ("RouteTablesPrivate".to_string(), list("rtb")),
            ("SubnetsPrivate".to_string(), list("subnet")),
            ("NatGateways".to_string(), list("nat")),
        ])
    }

    /// What a CloudFormation update does to one API service: registers its primary revision
    /// as `edit` changes it, makes that the stack's task definition, and rolls the service.
    fn stack_roll(&mut self, idx: usize, now: Instant, edit: impl FnOnce(&mut Value)) {
        let Some(base) = self.services[idx]
            .primary()
            .map(|d| d.task_definition.clone())
        else {
            return;
        };
        let Some(mut body) = self.task_definitions.get(&base).cloned() else {
            return;
        };
        edit(&mut body);
        let family = body["family"].as_str().unwrap_or_default().to_string();
        let arn = self.register(&family, body);
        let task_logical = self.services[idx].task_logical.clone();
        self.stack_resources.insert(task_logical, arn.clone());
        self.deploy(idx, arn, now);
    }

    fn deploy(&mut self, idx: usize, task_definition: String, now: Instant) {
        // A revision that has run before runs again: faults hit new revisions only. A
        // failing release's revisions never run.
        let ran_before = self.services[idx].ran.contains(&task_definition);
        let image = self.task_definitions.get(&task_definition).and_then(|b| {
            b["containerDefinitions"][0]["image"]
                .as_str()
                .map(str::to_string)
        });
        let broken_release = self
            .settings
            .failing_versions
            .iter()
            .any(|v| image.as_deref() == Some(format!("convox/rack:{v}").as_str()));
        let fault = if broken_release {
            Some(RolloutFault::FailToStart)
        } else if ran_before {
            None
        } else {
            self.rollout_faults.pop_front()
        };
        let id = self.next_deployment_id();
        let svc = &mut self.services[idx];
        for d in &mut svc.deployments {
            // Its pending launches are dropped by the step below.
            d.primary = false;
        }
        svc.deployments
            .insert(0, SimDeployment::new(id, task_definition, now, fault));
        let scheduling = self.scheduling();
        self.services[idx].step(now, scheduling, &mut self.next_id);
    }

    fn scheduling(&self) -> Scheduling {
        Scheduling {
            task_start: self.settings.task_start,
            circuit_breaker: self
                .settings
                .circuit_breaker
                .then_some(self.settings.circuit_breaker_threshold),
            launches_fail: self.launches_fail,
        }
    }

    /// Runs the simulation up to `now`.
    fn advance(&mut self, now: Instant) {
        if let Some((at, status)) = self.stack_settles.clone() {
            if at <= now {
                self.stack_status = status;
                self.stack_settles = None;
            }
        }
        self.advance_stack_update(now);
        let scheduling = self.scheduling();
        for svc in &mut self.services {
            while let Some(t) = svc.next_event().filter(|t| *t <= now) {
                svc.step(t, scheduling, &mut self.next_id);
            }
            svc.forget_stopped(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_models_the_rack_api() {
        let fx = fixture();
        assert!(fx.templates.contains_key("20260418101514"));
        assert!(fx.templates.contains_key("20240205000000"));
        let web = &fx.task_definitions["ApiWebTasks"];
        assert!(web.docker_labels.len() >= 40);
        assert!(web.docker_labels.contains_key("rack.Cluster"));
        assert!(!web.docker_labels.contains_key("rack.ECSExec"));
        assert_eq!(fx.services["ServiceWebApi"].task_definition, "ApiWebTasks");
    }

    #[tokio::test(start_paused = true)]
    async fn a_rollout_replaces_tasks_over_time_and_completes() {
        let sim = SimRack::new(SimSettings::default());
        let resources = sim.resources();
        let cluster = resources["Cluster"].clone();
        let web = resources["ServiceWebApi"].clone();
        let base = resources["ApiWebTasks"].clone();
        let new = sim
            .register_relabelled(&base, "rack.ECSExec", "Yes")
            .expect("register");
        assert_eq!(
            sim.find_relabelled(&base, "rack.ECSExec", "Yes")
                .expect("find"),
            Some(new.clone())
        );
        sim.update_service(&cluster, &web, &new)
            .await
            .expect("update");

        let s = &sim
            .describe_services(&cluster, std::slice::from_ref(&web))
            .await
            .expect("describe")[0];
        assert_eq!(s.deployments.len(), 2);
        assert_eq!(
            s.primary().map(|d| d.rollout_state),
            Some(Some(RolloutState::InProgress))
        );

        tokio::time::advance(Duration::from_secs(21)).await;
        let s = &sim
            .describe_services(&cluster, std::slice::from_ref(&web))
            .await
            .expect("describe")[0];
        assert_eq!(s.deployments.len(), 1);
        let p = s.primary().expect("primary");
        assert_eq!(
            (p.rollout_state, p.task_definition.as_str()),
            (Some(RolloutState::Completed), new.as_str())
        );
        let read = TaskRead {
            service: web.clone(),
            running: true,
            stopped: true,
        };
        let tasks = sim
            .service_tasks(&cluster, &[read])
            .await
            .expect("tasks")
            .remove(0);
        assert_eq!(tasks.running.len(), 2);
        assert!(tasks.running.iter().all(|t| t.task_definition == new));
        assert!(tasks.stopped.is_empty());

        // Nothing but the label differs.
        let mut a = sim.task_definition_body(&base).expect("base");
        let b = sim.task_definition_body(&new).expect("new");
        set_label(&mut a, "rack.ECSExec", Some("Yes"));
        assert_eq!(comparable(&a), comparable(&b));
    }

    #[tokio::test(start_paused = true)]
    async fn circuit_breaker_fails_and_rolls_back() {
        let sim = SimRack::new(SimSettings {
            circuit_breaker: true,
            ..SimSettings::default()
        });
        sim.inject_rollout_fault(RolloutFault::FailToStart);
        let resources = sim.resources();
        let (cluster, web, base) = (
            resources["Cluster"].clone(),
            resources["ServiceWebApi"].clone(),
            resources["ApiWebTasks"].clone(),
        );
        let new = sim
            .register_relabelled(&base, "rack.ECSExec", "Yes")
            .expect("register");
        sim.update_service(&cluster, &web, &new)
            .await
            .expect("update");
        let mut saw_failed = false;
        for _ in 0..20 {
            tokio::time::advance(Duration::from_secs(10)).await;
            let s = &sim
                .describe_services(&cluster, std::slice::from_ref(&web))
                .await
                .expect("describe")[0];
            saw_failed |= s.deployments.iter().any(|d| {
                d.rollout_state == Some(RolloutState::Failed)
                    && d.rollout_state_reason.as_deref() == Some(CIRCUIT_BREAKER_REASON)
            });
        }
        assert!(saw_failed);
        let s = &sim
            .describe_services(&cluster, &[web])
            .await
            .expect("describe")[0];
        let p = s.primary().expect("primary");
        assert_eq!(
            (p.task_definition.as_str(), p.rollout_state),
            (base.as_str(), Some(RolloutState::Completed))
        );
        assert_eq!(s.running_count, 2);
    }
}
