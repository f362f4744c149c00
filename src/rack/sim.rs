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
use serde::Deserialize;
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

mod apps;
pub use crate::settings::{SimNetwork, SimSettings, SIM_ECSEXEC_VERSION};

const FIXTURE: &str = include_str!("sim_rack.json");
const ACCOUNT: &str = "123456789012";
/// Resources of the public rack template (`template_resources` in the facts): the sim lists
/// only those the controller reads, but pages as the real stack does.
const TEMPLATE_RESOURCES: usize = 148;
/// The AWS operations the simulated rack answers, by name.
pub const OPERATIONS: &[&str] = &[
    "DescribeStacks",
    "ListStackResources",
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

/// The template facts the sim is built from.
#[derive(Debug, Deserialize)]
pub struct Fixture {
    pub templates: BTreeMap<String, FixtureTemplate>,
    pub task_definitions: BTreeMap<String, FixtureTaskDefinition>,
    pub services: BTreeMap<String, FixtureService>,
}

#[derive(Debug, Deserialize)]
pub struct FixtureTemplate {
    pub parameters: BTreeMap<String, FixtureParameter>,
}

#[derive(Debug, Deserialize)]
pub struct FixtureParameter {
    pub default: Option<String>,
    #[serde(default)]
    pub allowed: Vec<String>,
    #[serde(default)]
    pub no_echo: bool,
    /// `String` when absent.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub min_value: Option<String>,
    #[serde(default)]
    pub max_value: Option<String>,
    #[serde(default)]
    pub min_length: Option<String>,
    #[serde(default)]
    pub max_length: Option<String>,
}

impl FixtureParameter {
    /// The declaration as the template writes it.
    pub fn declaration(&self, name: &str) -> ParamDecl {
        ParamDecl {
            name: name.to_string(),
            kind: self.kind.clone().unwrap_or_else(|| "String".into()),
            default: self.default.clone(),
            allowed_values: self.allowed.clone(),
            min_value: self.min_value.as_deref().and_then(|v| v.parse().ok()),
            max_value: self.max_value.as_deref().and_then(|v| v.parse().ok()),
            min_length: self.min_length.as_deref().and_then(|v| v.parse().ok()),
            max_length: self.max_length.as_deref().and_then(|v| v.parse().ok()),
            no_echo: self.no_echo,
            ..ParamDecl::default()
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct FixtureTaskDefinition {
    pub family_suffix: String,
    pub container: String,
    pub docker_labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
pub struct FixtureService {
    pub task_definition: String,
    pub desired_count: u32,
    pub minimum_healthy_percent: u32,
    pub maximum_percent: u32,
    /// The public template gives the API services no `DeploymentCircuitBreaker`.
    pub deployment_circuit_breaker: bool,
    #[serde(default)]
    pub load_balancer: Option<FixtureLoadBalancer>,
}

#[derive(Debug, Deserialize)]
pub struct FixtureLoadBalancer {
    /// Logical id of the target group.
    pub target_group: String,
    pub container: String,
    pub container_port: u16,
}

/// The facts of the public rack template the sim is modelled on.
pub fn fixture() -> Fixture {
    // The fixture is compiled in and covered by tests; failing to parse it is a build defect.
    serde_json::from_str(FIXTURE).expect("embedded sim_rack.json is valid")
}

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
        let now = clock.instant();
        let fx = fixture();
        let rack = settings.rack.clone();
        let cluster = format!("{rack}-Cluster-1P2Q3R4S5T6U");
        let known = templates(&fx);
        let declared = known
            .get(&settings.version)
            .or_else(|| known.values().next_back())
            .cloned()
            .unwrap_or_default();
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
        // A template that declares ECSExec writes it into the labels, as the stack holds it.
        let stack_ecs_exec = declared.declares("ECSExec").then(|| {
            let v = settings
                .initial_ecs_exec
                .clone()
                .unwrap_or_else(|| "No".into());
            parameters.insert("ECSExec".into(), v.clone());
            v
        });

        let mut state = State {
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
            templates: known,
            next_id: 1,
            apps: apps::SimApps::new(&rack, &settings.region, &cluster, settings.apps),
            settings: settings.clone(),
        };

        for (logical, svc) in &fx.services {
            let Some(td) = fx.task_definitions.get(&svc.task_definition) else {
                continue;
            };
            let family = format!("{rack}{}", td.family_suffix);
            let mut labels = td.docker_labels.clone();
            if let Some(v) = stack_ecs_exec
                .as_ref()
                .or(settings.initial_ecs_exec.as_ref())
            {
                labels.insert("rack.ECSExec".into(), v.clone());
            }
            let body = initial_task_definition(&rack, &settings, &family, &td.container, &labels);
            let arn = state.register(&family, body);
            state
                .stack_resources
                .insert(svc.task_definition.clone(), arn.clone());
            let name = format!("{rack}-{logical}-{}", short_id(logical));
            let mut deployment =
                SimDeployment::new(state.next_deployment_id(), arn.clone(), now, None);
            deployment.rollout = RolloutState::Completed;
            deployment.running = svc.desired_count;
            let service_arn = format!(
                "arn:aws:ecs:{}:{ACCOUNT}:service/{cluster}/{name}",
                settings.region
            );
            state
                .stack_resources
                .insert(logical.clone(), service_arn.clone());
            state.services.push(SimService {
                logical: logical.clone(),
                task_logical: svc.task_definition.clone(),
                arn: service_arn,
                name,
                desired: svc.desired_count,
                min_percent: svc.minimum_healthy_percent,
                max_percent: svc.maximum_percent,
                deployments: vec![deployment],
                target_groups: svc
                    .load_balancer
                    .iter()
                    .map(|lb| {
                        format!(
                            "arn:aws:elasticloadbalancing:{}:{ACCOUNT}:targetgroup/{rack}-{}/{}",
                            settings.region,
                            lb.target_group,
                            short_id(&lb.target_group).to_lowercase()
                        )
                    })
                    .collect(),
                stopped: VecDeque::new(),
                ran: BTreeSet::from([arn.clone()]),
            });
        }
        if !settings.high_availability {
            if let Some(web) = state
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

    /// The stack's physical id of a logical resource.
    pub fn resource(&self, logical: &str) -> Option<String> {
        self.lock().resources().get(logical).cloned()
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

impl State {
    /// The parameters (with defaults) of the stack's own template.
    fn current_declared(&self) -> BTreeMap<String, Option<String>> {
        let version = self.parameters.get("Version").cloned().unwrap_or_default();
        self.templates
            .get(&version)
            .map(|d| {
                d.params
                    .values()
                    .map(|p| (p.name.clone(), p.default.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The parameters (with defaults) of the template an update names.
    fn declared(
        &self,
        template: &TemplateRef,
        name: &str,
    ) -> Result<BTreeMap<String, Option<String>>, RackError> {
        match &template.location {
            TemplateLocation::Body { body, .. } => Ok(declared_parameters(body)
                .map_err(|e| cfn_validation("UpdateStack", name, &e))?
                .into_iter()
                .map(|k| (k, None))
                .collect()),
            TemplateLocation::Url(_) => self
                .templates
                .get(&template.version.to_string())
                .map(|d| {
                    d.params
                        .values()
                        .map(|p| (p.name.clone(), p.default.clone()))
                        .collect()
                })
                .ok_or_else(|| cfn_validation("UpdateStack", name, "S3 error: Access Denied")),
        }
    }

    /// The stack's parameters after an update: given values, previous values, template
    /// defaults; CloudFormation's errors for anything else.
    fn next_parameters(
        &self,
        declared: &BTreeMap<String, Option<String>>,
        parameters: &[StackParameter],
        name: &str,
    ) -> Result<BTreeMap<String, String>, RackError> {
        let mut next = BTreeMap::new();
        for p in parameters {
            if !declared.contains_key(&p.key) {
                let message = format!("Parameters: [{}] do not exist in the template", p.key);
                return Err(cfn_validation("UpdateStack", name, &message));
            }
            let value = match &p.value {
                Some(v) => v.clone(),
                None => self.parameters.get(&p.key).cloned().ok_or_else(|| {
                    cfn_validation("UpdateStack", name, &format!("Invalid input for parameter key {}. Cannot specify usePreviousValue as true for a parameter key not in the previous template", p.key))
                })?,
            };
            next.insert(p.key.clone(), value);
        }
        for (k, default) in declared {
            if next.contains_key(k) {
                continue;
            }
            let Some(d) = default else {
                let message = format!("Parameters: [{k}] must have values");
                return Err(cfn_validation("UpdateStack", name, &message));
            };
            next.insert(k.clone(), d.clone());
        }
        Ok(next)
    }

    fn start_stack_update(
        &mut self,
        now: Instant,
        request: &StackUpdateRequest,
        next: BTreeMap<String, String>,
        declared: BTreeMap<String, Option<String>>,
    ) {
        let services_settled = self.services.iter().all(SimService::settled);
        let version = match &request.template {
            Some(t) => t.version.to_string(),
            None => self.parameters.get("Version").cloned().unwrap_or_default(),
        };
        self.stack_updates.push(StackUpdateRecord {
            version: version.clone(),
            at: now,
            services_settled,
            parameters: request
                .parameters
                .iter()
                .map(|p| (p.key.clone(), p.value.clone()))
                .collect(),
        });
        let fault = self.stack_update_faults.pop_front();
        self.stack_status = "UPDATE_IN_PROGRESS".into();
        self.stack_status_reason = Some("User Initiated".into());
        // An empty token stands for an update made without one (the convox CLI sends none).
        self.stack_token = (!request.token.is_empty()).then(|| request.token.clone());
        self.stack_event(
            now,
            &self.settings.rack.clone(),
            "UPDATE_IN_PROGRESS",
            "User Initiated",
        );
        self.stack_update = Some(PendingStackUpdate {
            at: now + self.settings.stack_update,
            version,
            parameters: next,
            declared,
            fault,
            applied: false,
            previous: (
                self.parameters.clone(),
                self.services
                    .iter()
                    .map(|s| {
                        s.primary()
                            .map(|d| d.task_definition.clone())
                            .unwrap_or_default()
                    })
                    .collect(),
            ),
            rolling_back: false,
        });
    }

    fn stack_event(&mut self, at: Instant, logical: &str, status: &str, reason: &str) {
        self.stack_events.push(StackEvent {
            logical_id: logical.to_string(),
            status: status.to_string(),
            reason: (!reason.is_empty()).then(|| reason.to_string()),
            token: self.stack_token.clone(),
            at: Some(self.clock.wall_at(at)),
        });
    }

    /// The events of an update that fails on `resource`: as on a real rack (148 resources),
    /// far more than one page of 100 between the update's start and its end, with the real
    /// cause buried under the rollback's own events.
    fn record_failed_update(&mut self, at: Instant, resource: &str, reason: &str) {
        let stack = self.settings.rack.clone();
        for i in 0..60 {
            let logical = format!("RackResource{i:03}");
            self.stack_event(at, &logical, "UPDATE_IN_PROGRESS", "");
            self.stack_event(at, &logical, "UPDATE_COMPLETE", "");
        }
        self.stack_event(at, resource, "UPDATE_FAILED", reason);
        let summary = format!("The following resource(s) failed to update: [{resource}].");
        self.stack_event(at, &stack, "UPDATE_ROLLBACK_IN_PROGRESS", &summary);
        for logical in ["ServiceMonitorApi", "ApiMonitorTasks"] {
            self.stack_event(at, logical, "UPDATE_FAILED", "Resource update cancelled");
        }
        for i in 0..55 {
            let logical = format!("RackResource{i:03}");
            self.stack_event(at, &logical, "UPDATE_IN_PROGRESS", "");
            self.stack_event(at, &logical, "UPDATE_COMPLETE", "");
        }
    }
}

impl State {
    /// CloudFormation's side of an `UpdateStack`: at `at`, either fail and roll back, or
    /// update the API task definitions (the label follows the template) and roll the
    /// services, then complete once their rollouts have.
    fn advance_stack_update(&mut self, now: Instant) {
        let Some(u) = self.stack_update.as_ref() else {
            return;
        };
        if u.at > now {
            return;
        }
        if u.rolling_back {
            return self.finish_rollback();
        }
        if let Some((resource, reason)) = u.fault.clone() {
            let at = u.at;
            self.stack_update = None;
            self.record_failed_update(at, &resource, &reason);
            self.stack_status_reason = Some(format!(
                "The following resource(s) failed to update: [{resource}]."
            ));
            self.stack_status = "UPDATE_ROLLBACK_IN_PROGRESS".into();
            self.stack_settles = Some((
                at + self.settings.stack_update,
                "UPDATE_ROLLBACK_COMPLETE".into(),
            ));
            return;
        }
        if !u.applied {
            self.apply_stack_update(now);
        }
        let settled = self.services.iter().all(SimService::settled);
        let waited_too_long = self
            .stack_update
            .as_ref()
            .is_some_and(|u| now >= u.at + STABILIZE_TIMEOUT);
        if settled {
            self.stack_update = None;
            self.stack_status = "UPDATE_COMPLETE".into();
            self.stack_status_reason = None;
        } else if waited_too_long {
            self.roll_back_stack(
                now,
                "ServiceWebApi",
                "Service did not stabilize within the time CloudFormation waits.",
            );
        }
    }

    /// CloudFormation updates the resources: the parameters, and the API task definitions
    /// (and services) when what their labels carry changes.
    fn apply_stack_update(&mut self, now: Instant) {
        let Some(u) = self.stack_update.as_mut() else {
            return;
        };
        u.applied = true;
        let (version, parameters, declared) =
            (u.version.clone(), u.parameters.clone(), u.declared.clone());
        let labels_before = (
            self.parameters.get("Version").cloned(),
            self.parameters.get("ECSExec").cloned(),
        );
        self.parameters = parameters;
        let ecs_exec = declared.contains_key("ECSExec").then(|| {
            self.parameters
                .get("ECSExec")
                .cloned()
                .unwrap_or_else(|| "No".into())
        });
        let labels_after = (Some(version.clone()), ecs_exec.clone());
        if labels_before == labels_after {
            return;
        }
        for i in 0..self.services.len() {
            self.stack_roll(i, now, |body| {
                for label in ["rack.Version", "convox.release"] {
                    set_label(body, label, Some(&version));
                }
                set_label(body, "rack.ECSExec", ecs_exec.as_deref());
                body["containerDefinitions"][0]["image"] = json!(format!("convox/rack:{version}"));
            });
        }
    }

    /// CloudFormation rolls the update back: the parameters as they were, every service back
    /// on the revision it ran before.
    fn roll_back_stack(&mut self, now: Instant, resource: &str, reason: &str) {
        let Some(u) = self.stack_update.as_mut() else {
            return;
        };
        u.rolling_back = true;
        u.at = now;
        let (parameters, revisions) = u.previous.clone();
        self.record_failed_update(now, resource, reason);
        self.stack_status = "UPDATE_ROLLBACK_IN_PROGRESS".into();
        self.stack_status_reason = Some(format!(
            "The following resource(s) failed to update: [{resource}]."
        ));
        self.parameters = parameters;
        for (i, td) in revisions.into_iter().enumerate() {
            let current = self.services[i]
                .primary()
                .map(|d| d.task_definition.clone());
            if current.as_deref() != Some(td.as_str()) && !td.is_empty() {
                self.stack_resources
                    .insert(self.services[i].task_logical.clone(), td.clone());
                self.deploy(i, td, now);
            }
        }
    }

    fn finish_rollback(&mut self) {
        if self.services.iter().all(SimService::settled) {
            self.stack_update = None;
            self.stack_status = "UPDATE_ROLLBACK_COMPLETE".into();
        }
    }
}

/// Parameters (with defaults) each template the sim knows declares, by version.
/// What each template the sim knows declares, by version: the fixture's releases, and the
/// synthetic release that adds `ECSExec` (`Yes`/`No`, default `No`) to the latest.
fn templates(fx: &Fixture) -> BTreeMap<String, Declarations> {
    let mut out: BTreeMap<String, Declarations> = fx
        .templates
        .iter()
        .map(|(v, t)| {
            let params = t
                .parameters
                .iter()
                .map(|(k, p)| (k.clone(), p.declaration(k)))
                .collect();
            (v.clone(), Declarations { params })
        })
        .collect();
    if let Some(latest) = out.values().next_back().cloned() {
        let mut with = latest;
        with.params.insert(
            "ECSExec".into(),
            ParamDecl {
                name: "ECSExec".into(),
                kind: "String".into(),
                default: Some("No".into()),
                allowed_values: vec!["Yes".into(), "No".into()],
                ..ParamDecl::default()
            },
        );
        out.insert(SIM_ECSEXEC_VERSION.into(), with);
    }
    out
}

impl SimDeployment {
    fn new(id: String, task_definition: String, now: Instant, fault: Option<RolloutFault>) -> Self {
        SimDeployment {
            id,
            primary: true,
            task_definition,
            rollout: RolloutState::InProgress,
            reason: Some("ECS deployment in progress.".into()),
            created: now,
            running: 0,
            starting: Vec::new(),
            failed_tasks: 0,
            fault,
        }
    }
}

impl SimService {
    fn primary(&self) -> Option<&SimDeployment> {
        self.deployments.iter().find(|d| d.primary)
    }

    /// Running tasks of the deployments other than the primary.
    fn old_running(&self) -> u32 {
        self.deployments
            .iter()
            .filter(|d| !d.primary)
            .map(|d| d.running)
            .sum()
    }

    /// One deployment, completed: nothing rolling.
    fn settled(&self) -> bool {
        self.deployments.len() == 1 && self.deployments[0].rollout == RolloutState::Completed
    }

    fn next_event(&self) -> Option<Instant> {
        self.deployments
            .iter()
            .flat_map(|d| d.starting.iter().copied())
            .min()
    }

    /// One scheduling step at time `t`: resolve launches due, trip the circuit breaker (if
    /// any), stop old tasks and launch new ones within the deployment configuration, complete.
    fn step(&mut self, t: Instant, sched: Scheduling, next_id: &mut u64) {
        // Launches only ever belong to the primary (ECS stops launching tasks for a deployment
        // that is no longer primary); drop any others so time always advances.
        for d in self.deployments.iter_mut().filter(|d| !d.primary) {
            d.starting.clear();
        }
        let Some(p) = self.deployments.iter().position(|d| d.primary) else {
            return;
        };
        if self.resolve_launches(p, t, sched) {
            self.roll_back(p, t, next_id);
            return self.step(t, sched, next_id);
        }
        self.replace_tasks(p, t, sched.task_start);
    }

    /// Launches of the primary due by `t` become running tasks, or fail and are stopped with
    /// a reason. Returns whether a circuit breaker trips.
    fn resolve_launches(&mut self, p: usize, t: Instant, sched: Scheduling) -> bool {
        let (code, reason) = self.stopped_reason();
        let d = &mut self.deployments[p];
        let due: Vec<Instant> = d.starting.iter().copied().filter(|s| *s <= t).collect();
        d.starting.retain(|s| *s > t);
        if d.fault != Some(RolloutFault::FailToStart) && !sched.launches_fail {
            d.running += due.len() as u32;
            if !due.is_empty() {
                self.ran.insert(d.task_definition.clone());
            }
            return false;
        }
        for ready in &due {
            self.stopped.push_back(SimStopped {
                task_definition: d.task_definition.clone(),
                deployment: d.id.clone(),
                code,
                reason: reason.clone(),
                created: *ready - sched.task_start,
                stopped: *ready,
            });
        }
        // The deployment's failed task count, as the ECS API reference describes it: failures
        // in a row, no longer counted once a task of the deployment ran. Only a circuit
        // breaker acts on it (whether ECS counts at all without one is not documented; the
        // controller does not rely on it).
        if d.running == 0 {
            d.failed_tasks += due.len() as u32;
        }
        match sched.circuit_breaker {
            Some(threshold) => d.failed_tasks >= threshold && d.rollout == RolloutState::InProgress,
            None => false,
        }
    }

    /// How ECS stops a task of this service that fails to start: its stop code and reason.
    fn stopped_reason(&self) -> (&'static str, String) {
        match self.target_groups.first() {
            Some(tg) => (
                "ServiceSchedulerInitiated",
                format!("Task failed ELB health checks in (target-group {tg})"),
            ),
            None => (
                "EssentialContainerExited",
                "Essential container in task exited".to_string(),
            ),
        }
    }

    /// Stops old tasks down to the minimum healthy, launches new ones up to the desired count
    /// within the maximum percent, and completes the rollout once only new tasks run.
    fn replace_tasks(&mut self, p: usize, t: Instant, task_start: Duration) {
        let desired = self.desired;
        let min_healthy = (desired * self.min_percent).div_ceil(100);
        let max_total = (desired * self.max_percent / 100).max(desired);
        let old_running = self.old_running();
        let new_running = self.deployments[p].running;
        let launching = self.deployments[p].starting.len() as u32;
        let healthy = new_running + old_running;

        let mut stop = old_running.min(healthy.saturating_sub(min_healthy));
        for d in self.deployments.iter_mut().filter(|d| !d.primary) {
            let n = d.running.min(stop);
            d.running -= n;
            stop -= n;
        }
        let old_running = self.old_running();

        let room = max_total.saturating_sub(new_running + old_running + launching);
        let start = desired.saturating_sub(new_running + launching).min(room);
        let ready_at = match self.deployments[p].fault {
            Some(RolloutFault::NeverHealthy) => t + Duration::from_secs(100 * 365 * 86_400),
            _ => t + task_start,
        };
        self.deployments[p]
            .starting
            .extend(std::iter::repeat_n(ready_at, start as usize));

        let d = &self.deployments[p];
        if d.rollout == RolloutState::InProgress
            && d.running >= desired
            && d.starting.is_empty()
            && old_running == 0
        {
            self.deployments[p].rollout = RolloutState::Completed;
            self.deployments[p].reason = Some("ECS deployment completed.".into());
            self.deployments.retain(|d| d.primary);
        }
    }

    /// ECS shows stopped tasks for about an hour (and `ListTasks` pages them; the sim keeps
    /// the latest 100).
    fn forget_stopped(&mut self, now: Instant) {
        const KEPT: Duration = Duration::from_secs(3600);
        while self
            .stopped
            .front()
            .is_some_and(|t| t.stopped + KEPT <= now || self.stopped.len() > 100)
        {
            self.stopped.pop_front();
        }
    }

    /// The circuit breaker: fail the primary and roll back to the last deployment that was
    /// running, adopting its tasks.
    fn roll_back(&mut self, p: usize, t: Instant, next_id: &mut u64) {
        let failed = &mut self.deployments[p];
        failed.rollout = RolloutState::Failed;
        failed.reason = Some(CIRCUIT_BREAKER_REASON.into());
        failed.primary = false;
        failed.starting.clear();
        let Some(prev) = self
            .deployments
            .iter()
            .position(|d| !d.primary && d.rollout != RolloutState::Failed)
        else {
            // Nothing to roll back to: the failed deployment stays primary, failed.
            self.deployments[p].primary = true;
            return;
        };
        *next_id += 1;
        let mut back = SimDeployment::new(
            format!("ecs-svc/{:019}", 4_000_000_000_000_000_000u64 + *next_id),
            self.deployments[prev].task_definition.clone(),
            t,
            None,
        );
        back.reason = Some(format!(
            "ECS deployment circuit breaker: rolling back to deploymentId {}.",
            self.deployments[prev].id
        ));
        // The rollback deployment takes over the tasks of the same revision.
        let adopted: u32 = self
            .deployments
            .iter()
            .filter(|d| d.task_definition == back.task_definition)
            .map(|d| d.running)
            .sum();
        back.running = adopted;
        let td = back.task_definition.clone();
        self.deployments
            .retain(|d| d.task_definition != td || d.rollout == RolloutState::Failed);
        self.deployments.insert(0, back);
    }

    fn snapshot(&self, clock: &Clock) -> ServiceSnapshot {
        let deployments = self
            .deployments
            .iter()
            .map(|d| Deployment {
                id: d.id.clone(),
                status: if d.primary {
                    DeploymentStatus::Primary
                } else {
                    DeploymentStatus::Active
                },
                task_definition: d.task_definition.clone(),
                desired_count: if d.primary { self.desired } else { d.running },
                running_count: d.running,
                pending_count: d.starting.len() as u32,
                failed_tasks: d.failed_tasks,
                rollout_state: Some(d.rollout),
                rollout_state_reason: d.reason.clone(),
                created_at: clock.wall_at(d.created),
            })
            .collect::<Vec<_>>();
        ServiceSnapshot {
            name: self.name.clone(),
            arn: self.arn.clone(),
            status: "ACTIVE".into(),
            desired_count: self.desired,
            running_count: self.deployments.iter().map(|d| d.running).sum(),
            minimum_healthy_percent: self.min_percent,
            maximum_percent: self.max_percent,
            deployments,
            tasks: Vec::new(),
            stopped: Vec::new(),
            target_groups: self.target_groups.clone(),
        }
    }

    /// The tasks `read` asks for, as `ListTasks` and `DescribeTasks` show them.
    fn tasks(&self, read: &TaskRead, clock: &Clock) -> ServiceTasks {
        let running = self
            .deployments
            .iter()
            .filter(|_| read.running)
            .flat_map(|d| {
                let running = std::iter::repeat_n("RUNNING", d.running as usize);
                let pending = std::iter::repeat_n("PENDING", d.starting.len());
                running.chain(pending).map(move |st| TaskSnapshot {
                    task_definition: d.task_definition.clone(),
                    last_status: st.to_string(),
                })
            })
            .collect();
        let stopped = self
            .stopped
            .iter()
            .filter(|_| read.stopped)
            .map(|t| StoppedTask {
                task_definition: t.task_definition.clone(),
                started_by: Some(t.deployment.clone()),
                stopped_reason: Some(t.reason.clone()),
                stop_code: Some(t.code.to_string()),
                created_at: clock.wall_at(t.created),
            })
            .collect();
        ServiceTasks { running, stopped }
    }
}

#[async_trait]
impl Rack for SimRack {
    async fn describe_stack(&self) -> Result<StackSnapshot, RackError> {
        let mut s = self.lock();
        let name = s.settings.rack.clone();
        self.call(&mut s, "cloudformation", "DescribeStacks", &name)?;
        Ok(StackSnapshot {
            name,
            status: s.stack_status.clone(),
            status_reason: s.stack_status_reason.clone(),
            parameters: s.parameters.clone(),
            outputs: s.outputs(),
            last_updated: Some(s.stack_updates.len().to_string()),
        })
    }

    async fn stack_resources(&self) -> Result<BTreeMap<String, String>, RackError> {
        let mut s = self.lock();
        let name = s.settings.rack.clone();
        // One page per 100 resources.
        for _ in 0..TEMPLATE_RESOURCES.div_ceil(100) {
            self.call(&mut s, "cloudformation", "ListStackResources", &name)?;
        }
        Ok(s.resources())
    }

    async fn describe_services(
        &self,
        cluster: &str,
        services: &[String],
    ) -> Result<Vec<ServiceSnapshot>, RackError> {
        let mut s = self.lock();
        for _ in services.chunks(10) {
            self.call(&mut s, "ecs", "DescribeServices", cluster)?;
        }
        let mut out = Vec::with_capacity(services.len());
        for wanted in services {
            let found = s
                .services
                .iter()
                .find(|x| (&x.name == wanted || &x.arn == wanted) && s.cluster == cluster);
            match found {
                Some(svc) => out.push(svc.snapshot(&self.clock)),
                None => {
                    return Err(RackError::ServiceNotFound {
                        cluster: cluster.to_string(),
                        service: wanted.clone(),
                    })
                }
            }
        }
        Ok(out)
    }

    async fn service_tasks(
        &self,
        cluster: &str,
        reads: &[TaskRead],
    ) -> Result<Vec<ServiceTasks>, RackError> {
        let mut s = self.lock();
        let mut out = Vec::with_capacity(reads.len());
        for read in reads {
            // As on AWS: one ListTasks per service and status asked for.
            for _ in [read.running, read.stopped].iter().filter(|asked| **asked) {
                self.call(&mut s, "ecs", "ListTasks", &read.service)?;
            }
            let svc = s
                .services
                .iter()
                .find(|x| (x.name == read.service || x.arn == read.service) && s.cluster == cluster)
                .ok_or_else(|| RackError::ServiceNotFound {
                    cluster: cluster.to_string(),
                    service: read.service.clone(),
                })?;
            out.push(svc.tasks(read, &self.clock));
        }
        // ... and one DescribeTasks per 100 of the tasks found.
        let found: usize = out.iter().map(|t| t.running.len() + t.stopped.len()).sum();
        for _ in 0..found.div_ceil(100) {
            self.call(&mut s, "ecs", "DescribeTasks", cluster)?;
        }
        Ok(out)
    }

    async fn describe_task_definition(&self, arn: &str) -> Result<TaskDefinitionInfo, RackError> {
        let mut s = self.lock();
        self.call(&mut s, "ecs", "DescribeTaskDefinition", arn)?;
        s.kept.insert(arn.to_string());
        let body = s
            .task_definitions
            .get(arn)
            .ok_or_else(|| not_found("DescribeTaskDefinition", arn))?;
        Ok(info(arn, body))
    }

    async fn relabel(&self, base: &str, label: &str, value: &str) -> Result<Relabelled, RackError> {
        fenced("RegisterTaskDefinition")?;
        let mut s = self.lock();
        // The AWS adapter reads the running revision in full (kept since the loop read it).
        if s.kept.insert(base.to_string()) {
            self.call(&mut s, "ecs", "DescribeTaskDefinition", base)?;
        }
        let (arn, reused) = match self.find_in(&mut s, base, label, value)? {
            Some(arn) => (arn, true),
            None => (self.register_in(&mut s, base, label, value)?, false),
        };
        // ... and keeps what it registered (the response proves it).
        s.kept.insert(arn.clone());
        let body = s
            .task_definitions
            .get(&arn)
            .ok_or_else(|| not_found("DescribeTaskDefinition", &arn))?;
        Ok(Relabelled {
            info: info(&arn, body),
            arn,
            reused,
        })
    }

    async fn update_service(
        &self,
        cluster: &str,
        service: &str,
        task_definition: &str,
    ) -> Result<(), RackError> {
        fenced("UpdateService")?;
        let now = self.clock.instant();
        let mut s = self.lock();
        self.call(&mut s, "ecs", "UpdateService", service)?;
        if !s.task_definitions.contains_key(task_definition) {
            return Err(not_found("UpdateService", task_definition));
        }
        let idx = s
            .services
            .iter()
            .position(|x| (x.name == service || x.arn == service) && s.cluster == cluster)
            .ok_or_else(|| RackError::ServiceNotFound {
                cluster: cluster.to_string(),
                service: service.to_string(),
            })?;
        let others_settled = s
            .services
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != idx)
            .all(|(_, x)| x.settled());
        let record = UpdateRecord {
            service: s.services[idx].logical.clone(),
            task_definition: task_definition.to_string(),
            at: now,
            others_settled,
        };
        s.updates.push(record);
        s.deploy(idx, task_definition.to_string(), now);
        Ok(())
    }

    async fn stack_declarations(&self) -> Result<Declarations, RackError> {
        let mut s = self.lock();
        let name = s.settings.rack.clone();
        self.call(&mut s, "cloudformation", "GetTemplate", &name)?;
        let version = s.parameters.get("Version").cloned().unwrap_or_default();
        s.templates.get(&version).cloned().ok_or_else(|| {
            cfn_validation("GetTemplate", &name, "the stack's template is not known")
        })
    }

    async fn template_summary(&self, template: &TemplateRef) -> Result<TemplateSummary, RackError> {
        let mut s = self.lock();
        let shown = template.to_string();
        self.call(&mut s, "cloudformation", "GetTemplateSummary", &shown)?;
        let parameters = match &template.location {
            TemplateLocation::Body { body, .. } => declared_parameters(body)
                .map_err(|e| cfn_validation("GetTemplateSummary", &shown, &e))?,
            TemplateLocation::Url(_) => s
                .templates
                .get(&template.version.to_string())
                .map(|t| t.params.keys().cloned().collect())
                .ok_or_else(|| RackError::Api {
                    service: "cloudformation",
                    operation: "GetTemplateSummary",
                    resource: shown,
                    kind: ApiErrorKind::Rejected,
                    message: "ValidationError: S3 error: Access Denied (no such release)".into(),
                })?,
        };
        Ok(TemplateSummary {
            parameters,
            // The rack template creates IAM roles.
            capabilities: vec![RACK_CAPABILITY.to_string()],
        })
    }

    async fn update_stack(
        &self,
        request: &StackUpdateRequest,
    ) -> Result<StackUpdateOutcome, RackError> {
        fenced("UpdateStack")?;
        let now = self.clock.instant();
        let mut s = self.lock();
        let name = s.settings.rack.clone();
        self.call(&mut s, "cloudformation", "UpdateStack", &name)?;
        if s.stack_status.ends_with("_IN_PROGRESS") {
            if s.stack_token.as_deref() == Some(request.token.as_str()) {
                // A retry of the update this token started.
                return Ok(StackUpdateOutcome::Started);
            }
            let message = format!(
                "Stack:{name} is in {} state and can not be updated.",
                s.stack_status
            );
            return Err(cfn_validation("UpdateStack", &name, &message));
        }
        if !request.capabilities.iter().any(|c| c == RACK_CAPABILITY) {
            return Err(RackError::Api {
                service: "cloudformation",
                operation: "UpdateStack",
                resource: name,
                kind: ApiErrorKind::Rejected,
                message: format!("InsufficientCapabilitiesException: Requires capabilities : [{RACK_CAPABILITY}]"),
            });
        }
        let declared = match &request.template {
            Some(t) => s.declared(t, &name)?,
            None => s.current_declared(),
        };
        let next = s.next_parameters(&declared, &request.parameters, &name)?;
        if next == s.parameters {
            return Ok(StackUpdateOutcome::NoChange);
        }
        s.start_stack_update(now, request, next, declared);
        Ok(StackUpdateOutcome::Started)
    }

    async fn preview_stack_update(
        &self,
        request: &StackUpdateRequest,
    ) -> Result<Vec<ResourceChange>, RackError> {
        let mut s = self.lock();
        let name = s.settings.rack.clone();
        for op in ["CreateChangeSet", "DescribeChangeSet", "DeleteChangeSet"] {
            self.call(&mut s, "cloudformation", op, &name)?;
        }
        // The rack template writes Version and ECSExec into the API task definitions' labels:
        // changing them replaces those and updates the services. The sim models no other
        // resource.
        let relabels = request.parameters.iter().any(|p| {
            matches!(p.key.as_str(), "Version" | "ECSExec")
                && p.value.is_some()
                && p.value.as_ref() != s.parameters.get(&p.key)
        });
        if !relabels {
            return Ok(Vec::new());
        }
        let change = |logical: &str, kind: &str, replacement: &str| ResourceChange {
            action: "Modify".into(),
            logical_id: logical.into(),
            resource_type: kind.into(),
            replacement: Some(replacement.into()),
        };
        Ok(vec![
            change("ApiWebTasks", "AWS::ECS::TaskDefinition", "True"),
            change("ApiMonitorTasks", "AWS::ECS::TaskDefinition", "True"),
            change("ServiceWebApi", "AWS::ECS::Service", "False"),
            change("ServiceMonitorApi", "AWS::ECS::Service", "False"),
        ])
    }

    async fn cancel_update_stack(&self) -> Result<(), RackError> {
        fenced("CancelUpdateStack")?;
        let now = self.clock.instant();
        let mut s = self.lock();
        let name = s.settings.rack.clone();
        self.call(&mut s, "cloudformation", "CancelUpdateStack", &name)?;
        if s.stack_status != "UPDATE_IN_PROGRESS" || s.stack_update.is_none() {
            let message = format!(
                "CancelUpdateStack cannot be called from current stack status {}",
                s.stack_status
            );
            return Err(cfn_validation("CancelUpdateStack", &name, &message));
        }
        s.roll_back_stack(now, "ServiceWebApi", "Resource update cancelled");
        Ok(())
    }

    async fn stack_failure_reason(&self) -> Result<Option<String>, RackError> {
        Ok(self.walk_events()?.cause)
    }

    async fn latest_update(&self) -> Result<UpdateEvents, RackError> {
        let name = self.lock().settings.rack.clone();
        Ok(self.walk_events()?.update(&name))
    }
}

fn cfn_validation(operation: &'static str, resource: &str, message: &str) -> RackError {
    RackError::Api {
        service: "cloudformation",
        operation,
        resource: resource.to_string(),
        kind: ApiErrorKind::Rejected,
        message: format!("ValidationError: {message}"),
    }
}

fn not_found(operation: &'static str, resource: &str) -> RackError {
    RackError::Api {
        service: "ecs",
        operation,
        resource: resource.to_string(),
        kind: ApiErrorKind::NotFound,
        message: "ClientException: Unable to describe task definition.".into(),
    }
}

fn info(arn: &str, body: &Value) -> TaskDefinitionInfo {
    let labels = &body["containerDefinitions"][0]["dockerLabels"];
    TaskDefinitionInfo {
        arn: arn.to_string(),
        family: body["family"].as_str().unwrap_or_default().to_string(),
        revision: body["revision"].as_u64().unwrap_or(0) as u32,
        labels: crate::model::read_labels()
            .filter_map(|label| {
                labels[label]
                    .as_str()
                    .map(|v| (label.to_string(), v.to_string()))
            })
            .collect(),
    }
}

fn set_label(body: &mut Value, label: &str, value: Option<&str>) {
    let labels = &mut body["containerDefinitions"][0]["dockerLabels"];
    if let Some(map) = labels.as_object_mut() {
        match value {
            Some(v) => {
                map.insert(label.to_string(), json!(v));
            }
            None => {
                map.remove(label);
            }
        }
    }
}

/// The registered body without the fields ECS assigns at registration.
fn comparable(body: &Value) -> Value {
    let mut b = body.clone();
    if let Some(o) = b.as_object_mut() {
        for k in ["revision", "taskDefinitionArn", "status", "registeredAt"] {
            o.remove(k);
        }
    }
    b
}

/// The revision number of a task definition ARN.
fn revision_of(arn: &str) -> u32 {
    arn.rsplit_once(':')
        .and_then(|(_, r)| r.parse().ok())
        .unwrap_or(0)
}

fn short_id(seed: &str) -> String {
    let h = seed.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("{h:012X}").chars().take(12).collect()
}

/// A task definition as the rack template registers it, with every kind of field a real one
/// carries: environment values (the monitor's plaintext `PASSWORD` among them), secret-bearing
/// labels, and the `ApiRole` under the path `/convox/`. None of it may ever be logged.
fn initial_task_definition(
    rack: &str,
    settings: &SimSettings,
    family: &str,
    container: &str,
    labels: &BTreeMap<String, String>,
) -> Value {
    let region = &settings.region;
    let api_role = format!(
        "arn:aws:iam::{ACCOUNT}:role/convox/{rack}-ApiRole-{}",
        short_id("ApiRole")
    );
    let mut environment = vec![
        json!({"name": "AWS_REGION", "value": region}),
        json!({"name": "CLIENT_ID", "value": "dev@convox.com"}),
        json!({"name": "NO_PROXY", "value": "169.254.169.254,169.254.170.2"}),
        json!({"name": "HTTP_PROXY", "value": ""}),
        json!({"name": "HTTPS_PROXY", "value": ""}),
        json!({"name": "PROVIDER", "value": "aws"}),
        json!({"name": "RACK", "value": rack}),
        json!({"name": "STACK_ID", "value": format!("arn:aws:cloudformation:{region}:{ACCOUNT}:stack/{rack}/{}", short_id(rack))}),
    ];
    if container == "monitor" {
        environment.push(json!({"name": "PASSWORD", "value": sim_password(rack)}));
    }
    let mut c = json!({
        "name": container,
        "image": format!("convox/rack:{}", settings.version),
        "command": ["api"],
        "cpu": 128,
        "essential": true,
        "dockerLabels": labels,
        "environment": environment,
        "linuxParameters": {"initProcessEnabled": true},
        "logConfiguration": {
            "logDriver": "awslogs",
            "options": {
                "awslogs-region": region,
                "awslogs-group": format!("{rack}-LogGroup-{}", short_id("logs")),
                "awslogs-stream-prefix": "convox",
            }
        },
        "mountPoints": [
            {"sourceVolume": "docker", "containerPath": "/var/run/docker.sock", "readOnly": false}
        ],
        "readonlyRootFilesystem": false,
    });
    if container == "web" {
        c["memoryReservation"] = json!(256);
        c["portMappings"] = json!([{"containerPort": 5443, "hostPort": 4000, "protocol": "tcp"}]);
        c["secrets"] = json!([{
            "name": "RACK_KEY",
            "valueFrom": format!("arn:aws:ssm:{region}:{ACCOUNT}:parameter/{rack}/rack-key")
        }]);
    } else {
        c["memory"] = json!(128);
    }
    let mut body = json!({
        "family": family,
        "containerDefinitions": [c],
        "taskRoleArn": api_role,
        "volumes": [{"name": "docker", "host": {"sourcePath": "/var/run/docker.sock"}}],
        "requiresCompatibilities": ["EC2"],
        "networkMode": "bridge",
        "placementConstraints": [],
        "tags": [{"key": "Rack", "value": rack}, {"key": "System", "value": "convox"}],
    });
    if container == "web" {
        body["executionRoleArn"] = json!(api_role);
    }
    body
}

/// The simulated rack API password: the monitor task's plaintext `PASSWORD`.
pub fn sim_password(rack: &str) -> String {
    format!("sim-password-{}", short_id(rack))
}

/// The simulated rack's writes are attempts too: each is checked against the fence in scope
/// as the AWS clients' interceptor checks theirs.
fn fenced(operation: &str) -> Result<(), RackError> {
    crate::lease::fence::check(operation).map_err(|r| RackError::NotLeader {
        message: r.to_string(),
    })
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
        let resources = sim.stack_resources().await.expect("resources");
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
        let resources = sim.stack_resources().await.expect("resources");
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
