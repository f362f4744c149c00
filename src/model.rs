//! Domain types: what the controller can observe of a rack.
//!
//! These types are shaped after the CloudFormation and ECS APIs (`DescribeStacks`,
//! `DescribeStackResources`, `DescribeServices`, `DescribeTaskDefinition`, `DescribeTasks`)
//! but carry no AWS SDK types, so the planner and its tests stay plain Rust. They carry no
//! environment values, secrets or unrelated labels either: only what decisions need.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::Serialize;

/// A rack parameter that the controller manages through a Docker label on the rack API's
/// task definitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ManagedParam {
    /// The rack parameter name, as in the params file and the CloudFormation stack.
    pub name: &'static str,
    /// The Docker label on the first container of the rack API task definitions.
    pub label: &'static str,
    /// The exact spellings the rack accepts.
    pub allowed: &'static [&'static str],
    /// The value the rack API assumes when the label is absent.
    pub default: &'static str,
    /// What a value needs of the rack before the controller sets it.
    pub requires: &'static [(&'static str, Requirement)],
}

/// A fact about the rack that must hold before a value is set; checked only for a change
/// (a rack already at the value is left alone), and failing closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// Tasks in the rack's subnets reach SSM (public subnets, a NAT route, or the `ssm` and
    /// `ssmmessages` interface endpoints): ECS Exec cannot work without it.
    RouteToSsm,
}

/// `ECSExec`: route `convox exec` through ECS Exec instead of the Docker daemon.
pub const ECS_EXEC: ManagedParam = ManagedParam {
    name: "ECSExec",
    label: "rack.ECSExec",
    allowed: &["Yes", "No"],
    default: "No",
    requires: &[("Yes", Requirement::RouteToSsm)],
};

/// Every parameter the controller manages, in the order they are reconciled.
pub const MANAGED_PARAMS: &[ManagedParam] = &[ECS_EXEC];

/// Looks up a managed parameter by its rack name.
pub fn managed_param(name: &str) -> Option<&'static ManagedParam> {
    MANAGED_PARAMS.iter().find(|p| p.name == name)
}

/// The stack parameter that holds the rack version.
pub const VERSION_PARAM: &str = "Version";

/// A stack parameter that `convox rack params set` and `convox rack update` compute instead
/// of keeping: every update sends it explicitly, with the value of a label on the rack API's
/// web task definition (where the template writes the value it resolved). Sent the same way
/// by the controller, unless the params file sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ComputedParam {
    pub name: &'static str,
    pub label: &'static str,
}

/// `AvailabilityZones`: a blank value makes CloudFormation evaluate `Fn::GetAZs` again, so
/// convox sends the zones the rack runs in (`rack.AvailabilityZones` on `ApiWebTasks`).
pub const COMPUTED_PARAMS: &[ComputedParam] = &[ComputedParam {
    name: "AvailabilityZones",
    label: "rack.AvailabilityZones",
}];

/// The labels read from the rack API's revisions: the managed parameters' and the computed
/// ones'.
pub fn read_labels() -> impl Iterator<Item = &'static str> {
    MANAGED_PARAMS
        .iter()
        .map(|p| p.label)
        .chain(COMPUTED_PARAMS.iter().map(|p| p.label))
}

/// A Convox rack version: a 14-digit timestamp such as `20260418101514`, ordered numerically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RackVersion(u64);

impl RackVersion {
    /// Parses exactly 14 ASCII digits.
    pub fn parse(s: &str) -> Option<RackVersion> {
        (s.len() == 14 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok().map(RackVersion))
            .flatten()
    }
}

impl std::fmt::Display for RackVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:014}", self.0)
    }
}

/// The rack's CloudFormation stack as `DescribeStacks` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StackSnapshot {
    pub name: String,
    /// E.g. `UPDATE_COMPLETE`, `UPDATE_IN_PROGRESS`.
    pub status: String,
    /// `StackStatusReason`, when CloudFormation gives one.
    pub status_reason: Option<String>,
    /// Parameter values as the stack holds them (`NoEcho` ones are masked by AWS).
    pub parameters: BTreeMap<String, String>,
    /// Output key → value (`Cluster`, `Private`, `Vpc`, `RouteTablesPrivate`...).
    pub outputs: BTreeMap<String, String>,
    /// `LastUpdatedTime` (or the creation time): changes with every stack update, so what was
    /// read of the stack's template and resources can be kept until it does.
    pub last_updated: Option<String>,
}

/// How the controller may treat the stack, derived from its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StackState {
    /// A settled, healthy state: the controller may act.
    Stable,
    /// `*_IN_PROGRESS`: CloudFormation owns the rack until it settles.
    InProgress,
    /// A state that needs a person (`*_FAILED`, `ROLLBACK_COMPLETE`, `DELETE_*`).
    Unusable,
}

impl StackSnapshot {
    pub fn state(&self) -> StackState {
        stack_state(&self.status)
    }

    /// The version the stack runs, from its `Version` parameter.
    pub fn version(&self) -> Option<RackVersion> {
        self.parameters
            .get(VERSION_PARAM)
            .and_then(|v| RackVersion::parse(v))
    }
}

/// Classifies a CloudFormation stack status.
pub fn stack_state(status: &str) -> StackState {
    match status {
        _ if status.ends_with("_IN_PROGRESS") => StackState::InProgress,
        "CREATE_COMPLETE"
        | "UPDATE_COMPLETE"
        | "UPDATE_ROLLBACK_COMPLETE"
        | "IMPORT_COMPLETE"
        | "IMPORT_ROLLBACK_COMPLETE" => StackState::Stable,
        _ => StackState::Unusable,
    }
}

/// `Deployment.status` in ECS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeploymentStatus {
    Primary,
    Active,
    Inactive,
}

/// `Deployment.rolloutState` in ECS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RolloutState {
    InProgress,
    Completed,
    Failed,
}

/// One deployment of an ECS service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Deployment {
    pub id: String,
    pub status: DeploymentStatus,
    pub task_definition: String,
    pub desired_count: u32,
    pub running_count: u32,
    pub pending_count: u32,
    pub failed_tasks: u32,
    pub rollout_state: Option<RolloutState>,
    pub rollout_state_reason: Option<String>,
    #[serde(with = "humantime_serde")]
    pub created_at: SystemTime,
}

impl Deployment {
    /// Whether it is rolling out: its rollout state says so or, where ECS gives none, it
    /// runs fewer tasks than it wants.
    pub fn rolling(&self) -> bool {
        match self.rollout_state {
            Some(state) => state == RolloutState::InProgress,
            None => self.running_count < self.desired_count,
        }
    }
}

/// Which tasks of a service one look reads ([`crate::rack::Rack::service_tasks`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRead {
    /// The service name (physical id).
    pub service: String,
    /// The tasks ECS wants running.
    pub running: bool,
    /// The tasks stopped recently.
    pub stopped: bool,
}

/// The tasks of one service, as [`TaskRead`] asked for them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceTasks {
    pub running: Vec<TaskSnapshot>,
    pub stopped: Vec<StoppedTask>,
}

/// A task of a service that ECS wants running (`ListTasks` with `desiredStatus=RUNNING`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskSnapshot {
    pub task_definition: String,
    /// `lastStatus`: `PROVISIONING`, `PENDING`, `RUNNING`, ...
    pub last_status: String,
}

/// A task of a service that has stopped (`ListTasks` with `desiredStatus=STOPPED`, kept by ECS
/// for about an hour). Read only while a deployment of the service is in progress: without a
/// deployment circuit breaker, the tasks a rollout keeps stopping are how it fails.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoppedTask {
    pub task_definition: String,
    /// `startedBy`: the id of the deployment that launched it (`ecs-svc/...`).
    pub started_by: Option<String>,
    /// ECS's `stoppedReason`, e.g. `Essential container in task exited`.
    pub stopped_reason: Option<String>,
    /// ECS's `stopCode`, e.g. `EssentialContainerExited`, `SpotInterruption`.
    pub stop_code: Option<String>,
    #[serde(with = "humantime_serde")]
    pub created_at: SystemTime,
}

impl StoppedTask {
    /// Whether the task stopped because it failed: it did not start, its essential container
    /// exited, or the scheduler stopped it for failing health checks. Tasks stopped by a
    /// person, a spot interruption, instance draining or scaling are not failures. An absent
    /// stop code counts as a failure.
    pub fn failed(&self) -> bool {
        match self.stop_code.as_deref() {
            None | Some("TaskFailedToStart") | Some("EssentialContainerExited") => true,
            Some("ServiceSchedulerInitiated") => self
                .stopped_reason
                .as_deref()
                .is_some_and(|r| r.to_ascii_lowercase().contains("health check")),
            Some(_) => false,
        }
    }

    /// Whether the task was launched by `deployment`.
    pub fn launched_by(&self, deployment: &Deployment) -> bool {
        match &self.started_by {
            Some(id) if id.starts_with("ecs-svc/") => *id == deployment.id,
            _ => {
                self.task_definition == deployment.task_definition
                    && self.created_at >= deployment.created_at
            }
        }
    }
}

/// An ECS service as `DescribeServices` shows it, with the tasks the observer read or proved
/// (see [`crate::plan::reads`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceSnapshot {
    /// The service name (physical id of the stack resource).
    pub name: String,
    pub arn: String,
    /// `ACTIVE`, `DRAINING`, `INACTIVE`.
    pub status: String,
    pub desired_count: u32,
    pub running_count: u32,
    pub minimum_healthy_percent: u32,
    pub maximum_percent: u32,
    pub deployments: Vec<Deployment>,
    /// The tasks ECS wants running: read once the deployments say the service is done,
    /// empty while it rolls (the deployments already say it has not converged).
    pub tasks: Vec<TaskSnapshot>,
    /// Tasks stopped recently, read only while a rollout shows failures or runs long.
    pub stopped: Vec<StoppedTask>,
    /// Target groups the service registers its tasks with (the web service sits behind the
    /// rack's load balancer).
    pub target_groups: Vec<String>,
}

impl ServiceSnapshot {
    /// The PRIMARY deployment: the one ECS is rolling towards.
    pub fn primary(&self) -> Option<&Deployment> {
        self.deployments
            .iter()
            .find(|d| d.status == DeploymentStatus::Primary)
    }

    /// Deployments other than the primary that ECS still lists (draining or rolled back).
    pub fn others(&self) -> impl Iterator<Item = &Deployment> {
        self.deployments
            .iter()
            .filter(|d| d.status == DeploymentStatus::Active)
    }

    /// Whether any deployment is still rolling out.
    pub fn rolling(&self) -> bool {
        self.deployments
            .iter()
            .any(|d| d.rollout_state == Some(RolloutState::InProgress))
    }

    /// Every task definition ARN the service references right now.
    pub fn task_definitions(&self) -> impl Iterator<Item = &str> {
        self.deployments
            .iter()
            .map(|d| d.task_definition.as_str())
            .chain(self.tasks.iter().map(|t| t.task_definition.as_str()))
    }
}

/// A task definition revision, reduced to what decisions need: its identity and the managed
/// labels of its first container. Revisions are immutable, so this can be cached by ARN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskDefinitionInfo {
    pub arn: String,
    pub family: String,
    pub revision: u32,
    /// The labels of [`read_labels`] present on the first container.
    pub labels: BTreeMap<String, String>,
}

/// One parameter of an `UpdateStack` request: a value, or `UsePreviousValue` when `None`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StackParameter {
    pub key: String,
    pub value: Option<String>,
}

/// A target service: the stack's logical ids for the service and its task definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ServiceTarget {
    /// Logical id of the `AWS::ECS::Service`, e.g. `ServiceWebApi`.
    pub service: String,
    /// Logical id of the `AWS::ECS::TaskDefinition`, e.g. `ApiWebTasks`.
    pub task_definition: String,
}

impl ServiceTarget {
    pub fn new(service: &str, task_definition: &str) -> Self {
        ServiceTarget {
            service: service.to_string(),
            task_definition: task_definition.to_string(),
        }
    }

    /// The rack's API services, web first: the order they are rolled in.
    pub fn rack_api() -> Vec<ServiceTarget> {
        vec![
            ServiceTarget::new("ServiceWebApi", "ApiWebTasks"),
            ServiceTarget::new("ServiceMonitorApi", "ApiMonitorTasks"),
        ]
    }
}

/// One target service as observed, with the managed labels of every revision it references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedService {
    pub target: ServiceTarget,
    pub service: ServiceSnapshot,
    /// Task definition ARN → its managed labels.
    pub labels: BTreeMap<String, BTreeMap<String, String>>,
}

impl ObservedService {
    /// The effective value of `param` in the given revision: its label, or the rack's default
    /// when the label is absent (the rack API falls back to the parameter default).
    pub fn value_in(&self, task_definition: &str, param: &ManagedParam) -> Option<&str> {
        self.labels.get(task_definition).map(|labels| {
            labels
                .get(param.label)
                .map(String::as_str)
                .unwrap_or(param.default)
        })
    }

    /// How many of a deployment's new tasks stopped or failed to start (ECS's count, or the
    /// stopped tasks read, whichever is more), and the last stopped reason.
    pub fn failed_launches(&self, deployment: &Deployment) -> (u32, &str) {
        let mut stopped: Vec<&StoppedTask> = self
            .service
            .stopped
            .iter()
            .filter(|t| t.launched_by(deployment) && t.failed())
            .collect();
        stopped.sort_by_key(|t| t.created_at);
        let why = stopped
            .iter()
            .rev()
            .find_map(|t| t.stopped_reason.as_deref())
            .unwrap_or("ECS gave no stopped reason");
        (deployment.failed_tasks.max(stopped.len() as u32), why)
    }
}

impl ObservedRack {
    /// The values of the computed parameters ([`COMPUTED_PARAMS`]) the stack has, as convox
    /// sends them: the label on a rack API service's running revision. A parameter whose
    /// label was not read is left out (its stack value is kept, never sent blank).
    pub fn computed_values(&self) -> BTreeMap<String, String> {
        COMPUTED_PARAMS
            .iter()
            .filter(|p| self.stack.parameters.contains_key(p.name))
            .filter_map(|p| {
                let value = self.services.iter().find_map(|s| {
                    let primary = s.service.primary()?;
                    s.labels.get(&primary.task_definition)?.get(p.label)
                })?;
                Some((p.name.to_string(), value.clone()))
            })
            .collect()
    }
}

/// Everything one reconcile observed of the rack.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservedRack {
    pub stack: StackSnapshot,
    /// What the stack's running template declares about its parameters.
    pub declared: crate::spec::Declarations,
    pub cluster: String,
    /// A light look, between the looks of a rollout: only the services were read, and the
    /// stack, its template and its events are as the last look read them. Its decisions may
    /// report progress; anything else (a write, a claim that a change converged or failed)
    /// waits for the stack read again ([`crate::plan::reads::light_look_stands`]).
    pub light: bool,
    /// In target order (web first).
    pub services: Vec<ObservedService>,
    /// Who started the stack's latest update, when it is under way, rolled back or broken.
    pub update_token: UpdateToken,
    /// When the stack began rolling its latest update back (from its events), if it did and
    /// it was read: only deployments made since are the rollback's.
    pub rollback_since: Option<SystemTime>,
}

/// What the stack's events tell of its latest update.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpdateEvents {
    pub token: UpdateToken,
    /// When the stack began rolling it back, if it did.
    pub rollback_since: Option<SystemTime>,
}

/// The `ClientRequestToken` the stack's latest update was started with, read from its events
/// (every event of a stack operation carries the token of the call that started it).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum UpdateToken {
    /// Not read: the stack is settled after an update that did not roll back, so whose it
    /// was decides nothing.
    #[default]
    NotRead,
    /// The update's start event carries this token; `None`: it was started without one (the
    /// convox CLI sends none).
    Read(Option<String>),
    /// The events could not be read, or the update's start was not among them.
    Unknown(String),
}

impl UpdateToken {
    /// Whether the owner of the stack's latest update is worth reading: an update under way,
    /// a rollback, or a broken stack.
    pub fn needed(stack: &StackSnapshot) -> bool {
        stack.state() != StackState::Stable || stack.status.contains("ROLLBACK")
    }
}

/// One CloudFormation stack event (`DescribeStackEvents`, newest first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackEvent {
    pub logical_id: String,
    pub status: String,
    pub reason: Option<String>,
    /// The `ClientRequestToken` of the operation that caused it.
    pub token: Option<String>,
    /// When it happened.
    pub at: Option<SystemTime>,
}

/// Walks stack events, newest first and page by page, back to the start of the stack's latest
/// update; the earliest resource failure on the way is the cause (later ones are
/// cancellations).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FailureWalk {
    pub cause: Option<String>,
    /// The update's start was reached: no older page is needed.
    pub done: bool,
    /// The `ClientRequestToken` of the update's start event, once reached.
    pub token: Option<String>,
    /// When the stack began rolling the update back, if it did.
    pub rollback_at: Option<SystemTime>,
}

impl FailureWalk {
    /// What the walk found of the latest update: the token of its start (unknown when the
    /// start was not reached) and when it began rolling back.
    pub fn update(&self, stack: &str) -> UpdateEvents {
        let token = if self.done {
            UpdateToken::Read(self.token.clone())
        } else {
            UpdateToken::Unknown(format!(
                "the start of the latest update of stack {stack} is not among the events read"
            ))
        };
        UpdateEvents {
            token,
            rollback_since: self.rollback_at,
        }
    }

    pub fn feed(&mut self, stack: &str, events: &[StackEvent]) {
        for e in events {
            if self.done {
                return;
            }
            if e.logical_id == stack && e.status == "UPDATE_ROLLBACK_IN_PROGRESS" {
                self.rollback_at = e.at;
            }
            if e.logical_id == stack && e.status == "UPDATE_IN_PROGRESS" {
                self.done = true;
                self.token = e.token.clone();
            } else if e.logical_id != stack && e.status.ends_with("_FAILED") {
                let reason = e.reason.as_deref().unwrap_or("no reason given");
                self.cause = Some(format!("{}: {reason}", e.logical_id));
            }
        }
    }
}

/// Why a reconcile runs: for logs, and only a run on a timer may look lightly (see
/// [`crate::reconcile::Observer::observe`]); otherwise a run does the same whatever the trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Startup,
    ParamsChanged,
    Timer,
    /// This controller has just taken the lease.
    LeaseAcquired,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Startup => "startup",
            Trigger::ParamsChanged => "params_changed",
            Trigger::LeaseAcquired => "lease_acquired",
            Trigger::Timer => "timer",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(logical: &str, status: &str, reason: &str) -> StackEvent {
        StackEvent {
            logical_id: logical.into(),
            status: status.into(),
            reason: (!reason.is_empty()).then(|| reason.to_string()),
            token: None,
            at: None,
        }
    }

    #[test]
    fn the_failure_walk_spans_pages_and_keeps_the_earliest_failure() {
        let newest = vec![
            ev("convox", "UPDATE_ROLLBACK_COMPLETE", ""),
            ev(
                "ServiceMonitorApi",
                "UPDATE_FAILED",
                "Resource update cancelled",
            ),
        ];
        let older = vec![
            ev(
                "ServiceWebApi",
                "UPDATE_FAILED",
                "Service did not stabilize",
            ),
            ev("ApiWebTasks", "UPDATE_COMPLETE", ""),
            ev("convox", "UPDATE_IN_PROGRESS", "User Initiated"),
            ev("Cluster", "UPDATE_FAILED", "an older update"),
        ];
        let mut walk = FailureWalk::default();
        walk.feed("convox", &newest);
        assert!(!walk.done);
        walk.feed("convox", &older);
        assert!(walk.done);
        assert_eq!(walk.token, None, "the start event carries no token here");
        assert_eq!(
            walk.cause.as_deref(),
            Some("ServiceWebApi: Service did not stabilize")
        );
    }
}
