//! The relabel method: a parameter carried by a Docker label on the rack API's task
//! definitions (`rack.ECSExec`) is changed by registering a copy of the running revision with
//! only the label changed and rolling the services to it, one at a time, web first; failing
//! rollouts of the controller's own are undone.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::{
    round_secs, stack_hold, Decision, PendingChange, Phase, ServiceProgress, ServiceState,
};
use crate::model::{
    Deployment, DeploymentStatus, ManagedParam, ObservedRack, ObservedService, RolloutState,
};

/// What the controller remembers between reconciles, and its settings. Losing the remembered
/// parts (a restart) is safe: at worst one more attempt, or one more correction, is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanContext {
    pub now: SystemTime,
    /// A rollout running longer than this is `Failed`.
    pub rollout_timeout: Duration,
    /// New tasks of a rollout that may fail (stop, or fail to start) before the rollout is
    /// judged failed: the API services have no deployment circuit breaker to do it.
    pub failed_tasks_threshold: u32,
    /// The value this parameter last converged to: a roll needed for that same value is a
    /// correction of an out-of-band revert.
    pub last_converged: Option<String>,
    /// Corrections made in the last hour.
    pub corrections_last_hour: u32,
    pub max_corrections_per_hour: u32,
    /// After a failure, writes wait until then (exponential backoff).
    pub retry_not_before: Option<SystemTime>,
    /// Per logical service id: no new rollout before then (`intervals.min_write`).
    pub writes_not_before: BTreeMap<String, SystemTime>,
    /// Why the last attempt failed, for the message while backing off.
    pub last_failure: Option<String>,
    /// Services this controller rolled for the current desired value that have not been
    /// seen converged since, with the revision they were rolled to. A service found back on
    /// another revision was rolled back (or replaced) even if ECS no longer shows a failure.
    pub rolled_to: BTreeMap<String, String>,
    /// Rollouts this controller started (whatever the desired value was then), by logical
    /// service id, until the service settles.
    pub own_rollouts: BTreeMap<String, OwnRollout>,
}

/// A rollout the controller started: from which revision to which, and whether it has
/// pointed the service back since.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnRollout {
    pub from: String,
    pub to: String,
    /// The rollout failed and the service was pointed back at `from`.
    pub undone: bool,
}

/// Where a roll points the service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum RollTo {
    /// A copy of the running revision with only the label changed (registered, or an
    /// identical one reused).
    Relabelled,
    /// A revision that already exists and holds what is wanted.
    Revision(String),
}

/// Why a roll is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum RollPurpose {
    /// Towards a new desired value.
    Change,
    /// Undoes an out-of-band revert of a converged value.
    Correction,
    /// Points a service whose rollout failed back at the revision it ran before.
    Undo,
}

/// The one write the controller should make now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Roll {
    /// Logical id of the service, e.g. `ServiceWebApi`.
    pub service: String,
    /// The ECS service name.
    pub service_name: String,
    pub cluster: String,
    /// The revision the roll starts from: the base of a relabelled copy.
    pub from_task_definition: String,
    pub to: RollTo,
    pub label: String,
    pub value: String,
    pub purpose: RollPurpose,
}

/// How one service stands with respect to the desired value.
enum Eval {
    Converged,
    Rolling(String),
    Failed(&'static str, String),
    /// A rollout of ours is failing: point the service back at `to`.
    Undo {
        reason: &'static str,
        message: String,
        to: String,
    },
    /// Our undo is rolling the service back.
    RollingBack(String),
    /// Our undo's tasks keep failing too: nothing more is written until it heals.
    RollbackFailing(String),
    Busy(String),
    /// Someone else's rollout has run past the timeout.
    Stuck(String),
    NeedsRoll {
        from: String,
        to: RollTo,
    },
    Inactive(String),
    Unknown(String),
}

/// The value of `param` every target service's primary revision agrees on, if they agree.
pub fn observed_value(param: &ManagedParam, rack: &ObservedRack) -> Option<String> {
    let values: Vec<Option<&str>> = rack
        .services
        .iter()
        .map(|s| primary_value(s, param))
        .collect();
    match values.first() {
        Some(Some(first)) if values.iter().all(|v| v == &Some(*first)) => Some(first.to_string()),
        _ => None,
    }
}

/// The services whose primary revision does not hold `desired`, for `plan`.
fn pending_changes(param: &ManagedParam, desired: &str, rack: &ObservedRack) -> Vec<PendingChange> {
    rack.services
        .iter()
        .filter_map(|s| {
            let primary = s.service.primary()?;
            let value = s.value_in(&primary.task_definition, param);
            (value != Some(desired)).then(|| PendingChange {
                service: s.target.service.clone(),
                from_task_definition: primary.task_definition.clone(),
                from_value: value.map(str::to_string),
                to_value: desired.to_string(),
            })
        })
        .collect()
}

/// Decides the next step for one parameter.
pub fn plan(
    param: &ManagedParam,
    desired: &str,
    rack: &ObservedRack,
    ctx: &PlanContext,
) -> Decision {
    let mut services = Vec::with_capacity(rack.services.len());
    let mut first_open: Option<(usize, Eval)> = None;
    for (i, s) in rack.services.iter().enumerate() {
        let eval = evaluate(s, param, desired, ctx);
        services.push(progress(s, param, &eval));
        if first_open.is_none() && !matches!(eval, Eval::Converged) {
            first_open = Some((i, eval));
        }
    }
    let d = Decision {
        param: param.name.to_string(),
        desired: desired.to_string(),
        observed: observed_value(param, rack),
        phase: Phase::Converged,
        reason: "Converged",
        message: String::new(),
        drift: rack
            .services
            .iter()
            .any(|s| primary_value(s, param) != Some(desired)),
        action: None,
        pending: pending_changes(param, desired, rack),
        services,
    };
    if let Some((phase, reason, message)) = stack_hold(rack, ctx.failed_tasks_threshold) {
        return d.with(phase, reason, message);
    }
    match first_open {
        None => converged(d, param, rack),
        Some((index, eval)) => decide(d, param, &rack.services[index], rack, eval, ctx),
    }
}

/// The decision for the first service that is not converged.
fn decide(
    d: Decision,
    param: &ManagedParam,
    s: &ObservedService,
    rack: &ObservedRack,
    eval: Eval,
    ctx: &PlanContext,
) -> Decision {
    let desired = d.desired.clone();
    let roll = |to: RollTo, from: String, purpose: RollPurpose| Roll {
        service: s.target.service.clone(),
        service_name: s.service.name.clone(),
        cluster: rack.cluster.clone(),
        from_task_definition: from,
        to,
        label: param.label.to_string(),
        value: desired.clone(),
        purpose,
    };
    match eval {
        Eval::Converged => converged(d, param, rack),
        Eval::Rolling(msg) => d.with(Phase::Progressing, "RollingOut", msg),
        Eval::Failed(reason, msg) => d.with(Phase::Failed, reason, msg),
        Eval::Undo {
            reason,
            message,
            to,
        } => {
            let from = primary_td(s);
            let action = roll(RollTo::Revision(to), from, RollPurpose::Undo);
            d.act(action).with(Phase::Failed, reason, message)
        }
        Eval::RollingBack(msg) => d.with(Phase::Failed, "RollingBack", msg),
        Eval::RollbackFailing(msg) => {
            let msg = format!("{msg}; {}", super::hold::api_tasks(rack));
            d.with(Phase::Failed, super::hold::ROLLBACK_FAILING, msg)
        }
        Eval::Busy(msg) => d.with(Phase::Waiting, "ServiceBusy", msg),
        Eval::Stuck(msg) => d.with(Phase::Failed, "ServiceStuck", msg),
        Eval::Inactive(msg) => d.with(Phase::Blocked, "ServiceInactive", msg),
        Eval::Unknown(msg) => d.with(Phase::Unknown, "NoPrimaryDeployment", msg),
        Eval::NeedsRoll { from, to } => {
            let correction = ctx.last_converged.as_deref() == Some(d.desired.as_str());
            if let Some(held) = hold_roll(param, s, &d.desired, correction, ctx) {
                return d.with(held.0, held.1, held.2);
            }
            let (purpose, verb) = if correction {
                (
                    RollPurpose::Correction,
                    "correcting an out-of-band revert: rolling",
                )
            } else {
                (RollPurpose::Change, "rolling")
            };
            let msg = format!(
                "{verb} {} to a revision with {}={}",
                s.target.service, param.label, d.desired
            );
            d.act(roll(to, from, purpose))
                .with(Phase::Progressing, "RollingOut", msg)
        }
    }
}

/// Why a roll that is needed must not be made now: the correction cap, or the backoff.
fn hold_roll(
    param: &ManagedParam,
    s: &ObservedService,
    desired: &str,
    correction: bool,
    ctx: &PlanContext,
) -> Option<(Phase, &'static str, String)> {
    let name = &s.target.service;
    if correction && ctx.corrections_last_hour >= ctx.max_corrections_per_hour {
        return Some((
            Phase::Blocked,
            "CorrectionsCapped",
            format!(
                "{} on {name} was reverted out of band again after {} corrections in the last hour (cap {}): \
                 something (a CloudFormation stack update?) keeps resetting it; set the rack parameter {} \
                 to {desired} in the stack, or raise corrections.max_per_hour",
                param.label, ctx.corrections_last_hour, ctx.max_corrections_per_hour, param.name
            ),
        ));
    }
    if let Some(at) = ctx.writes_not_before.get(name).filter(|at| **at > ctx.now) {
        let wait = at.duration_since(ctx.now).unwrap_or_default();
        return Some((
            Phase::Progressing,
            "Settling",
            format!(
                "{name} was written to moments ago; the next write waits {} (intervals.min_write)",
                humantime::format_duration(round_secs(wait))
            ),
        ));
    }
    let at = ctx.retry_not_before.filter(|at| *at > ctx.now)?;
    let wait = at.duration_since(ctx.now).unwrap_or_default();
    let why = ctx
        .last_failure
        .as_deref()
        .map(|f| format!(" ({f})"))
        .unwrap_or_default();
    Some((
        Phase::Failed,
        "BackingOff",
        format!(
            "the last attempt to roll {name} failed{why}; next attempt in {}",
            humantime::format_duration(round_secs(wait))
        ),
    ))
}

fn converged(d: Decision, param: &ManagedParam, rack: &ObservedRack) -> Decision {
    let names: Vec<&str> = rack
        .services
        .iter()
        .map(|s| s.target.service.as_str())
        .collect();
    let message = format!(
        "{}={} on {}: rollouts complete, every task runs it",
        param.label,
        d.desired,
        names.join(", ")
    );
    d.with(Phase::Converged, "Converged", message)
}

fn primary_value<'a>(s: &'a ObservedService, param: &ManagedParam) -> Option<&'a str> {
    s.service
        .primary()
        .and_then(|p| s.value_in(&p.task_definition, param))
}

fn primary_td(s: &ObservedService) -> String {
    s.service
        .primary()
        .map(|p| p.task_definition.clone())
        .unwrap_or_default()
}

fn evaluate(s: &ObservedService, param: &ManagedParam, desired: &str, ctx: &PlanContext) -> Eval {
    let name = &s.target.service;
    if matches!(s.service.status.as_str(), "DRAINING" | "INACTIVE") {
        return Eval::Inactive(format!(
            "service {name} ({}) is {}: ECS is deleting it or has deleted it; check the rack stack",
            s.service.name, s.service.status
        ));
    }
    let Some(primary) = s.service.primary() else {
        return Eval::Unknown(format!("service {name} has no PRIMARY deployment"));
    };
    if s.value_in(&primary.task_definition, param) == Some(desired) {
        evaluate_holding(s, primary, ctx)
    } else {
        evaluate_lacking(s, primary, param, desired, ctx)
    }
}

/// The primary revision holds the desired value: converged, rolling, or failing.
fn evaluate_holding(s: &ObservedService, primary: &Deployment, ctx: &PlanContext) -> Eval {
    let name = &s.target.service;
    if primary.rollout_state == Some(RolloutState::Failed) {
        return Eval::Failed(
            "RolloutFailed",
            format!(
                "rollout of {name} to {} failed: {}; fix the cause (see the service events), the service keeps its deployment",
                primary.task_definition,
                reason_or_default(primary.rollout_state_reason.as_deref())
            ),
        );
    }
    let rolling = primary.rolling();
    let others = s.service.others().count();
    let stale_tasks = s
        .service
        .tasks
        .iter()
        .filter(|t| t.task_definition != primary.task_definition)
        .count();
    if !rolling && others == 0 && stale_tasks == 0 {
        return Eval::Converged;
    }
    if rolling {
        if let Some((reason, message)) = rollout_failure(s, primary, ctx) {
            return undo_or_fail(s, primary, ctx, reason, message);
        }
    }
    // Tasks are read only once the deployments say the rollout is done: stale ones show then.
    let stale = match stale_tasks {
        0 => String::new(),
        n => format!(", {n} task(s) on older revisions"),
    };
    Eval::Rolling(format!(
        "{name}: rollout of {} in progress ({}/{} new tasks running, {others} older deployment(s) draining{stale})",
        primary.task_definition, primary.running_count, primary.desired_count,
    ))
}

/// Whether a rollout in progress has failed: too many of its new tasks stopped or failed to
/// start (the API services have no circuit breaker to say so), or it ran past the timeout.
pub(super) fn rollout_failure(
    s: &ObservedService,
    primary: &Deployment,
    ctx: &PlanContext,
) -> Option<(&'static str, String)> {
    let name = &s.target.service;
    let (failures, why) = s.failed_launches(primary);
    if failures >= ctx.failed_tasks_threshold.max(1) {
        return Some((
            "RolloutFailed",
            format!(
                "rollout of {name} to {} is failing: {failures} new task(s) stopped or failed to start \
                 (threshold {}); last stopped reason: {why}",
                primary.task_definition, ctx.failed_tasks_threshold
            ),
        ));
    }
    let age = ctx
        .now
        .duration_since(primary.created_at)
        .unwrap_or_default();
    (age > ctx.rollout_timeout).then(|| {
        (
            "RolloutTimedOut",
            format!(
                "rollout of {name} to {} has run for {}, longer than the {} rollout timeout ({} of {} tasks running)",
                primary.task_definition,
                humantime::format_duration(Duration::from_secs(age.as_secs())),
                humantime::format_duration(ctx.rollout_timeout),
                primary.running_count,
                primary.desired_count
            ),
        )
    })
}

/// A failing rollout of ours is undone (the service pointed back at where it came from);
/// someone else's is reported and left alone.
fn undo_or_fail(
    s: &ObservedService,
    primary: &Deployment,
    ctx: &PlanContext,
    reason: &'static str,
    message: String,
) -> Eval {
    let name = &s.target.service;
    match ctx
        .own_rollouts
        .get(name)
        .filter(|r| r.to == primary.task_definition && !r.undone)
    {
        Some(own) => Eval::Undo {
            reason,
            message: format!("{message}; pointing {name} back at {}", own.from),
            to: own.from.clone(),
        },
        None => Eval::Failed(
            reason,
            format!("{message}; the controller did not start this rollout, so it leaves it to whoever did"),
        ),
    }
}

/// The primary revision does not hold the desired value: roll, wait, or report.
fn evaluate_lacking(
    s: &ObservedService,
    primary: &Deployment,
    param: &ManagedParam,
    desired: &str,
    ctx: &PlanContext,
) -> Eval {
    let name = &s.target.service;
    if let Some(failed) = s.service.deployments.iter().find(|d| {
        d.rollout_state == Some(RolloutState::Failed)
            && s.value_in(&d.task_definition, param) == Some(desired)
    }) {
        return Eval::Failed(
            "RolloutFailed",
            format!(
                "rollout of {name} to {} failed and was rolled back: {}",
                failed.task_definition,
                reason_or_default(failed.rollout_state_reason.as_deref())
            ),
        );
    }
    let busy =
        primary.rollout_state == Some(RolloutState::InProgress) || s.service.others().count() > 0;
    if let Some(eval) = own_rollout(s, primary, param, desired, busy, ctx) {
        return eval;
    }
    if busy {
        return foreign_rollout(s, primary, param, desired, ctx);
    }
    if let Some(rolled) = ctx.rolled_to.get(name) {
        return Eval::Failed(
            "RolloutReverted",
            format!(
                "the rollout of {name} to {rolled} did not stick: {name} runs {} again (rolled back, or \
                 replaced by someone else); see the service events",
                primary.task_definition
            ),
        );
    }
    if s.value_in(&primary.task_definition, param).is_none() {
        return Eval::Unknown(format!(
            "the labels of {} (primary of {name}) were not observed",
            primary.task_definition
        ));
    }
    Eval::NeedsRoll {
        from: primary.task_definition.clone(),
        to: RollTo::Relabelled,
    }
}

/// A rollout the controller started and that no longer leads to the desired value: being
/// undone after a failure, or made for a value the params file no longer wants.
fn own_rollout(
    s: &ObservedService,
    primary: &Deployment,
    param: &ManagedParam,
    desired: &str,
    busy: bool,
    ctx: &PlanContext,
) -> Option<Eval> {
    let name = &s.target.service;
    let own = ctx.own_rollouts.get(name)?;
    if own.undone && busy && primary.task_definition == own.from {
        let why = ctx.last_failure.as_deref().unwrap_or("the rollout failed");
        let (failures, stopped) = s.failed_launches(primary);
        if failures >= ctx.failed_tasks_threshold.max(1) {
            return Some(Eval::RollbackFailing(format!(
                "{why}; pointing {name} back at {} is failing too: {failures} of its task(s) stopped or \
                 failed to start (last stopped reason: {stopped}). No write until it heals (ECS starts the \
                 tasks) or a person acts",
                own.from
            )));
        }
        let age = ctx
            .now
            .duration_since(primary.created_at)
            .unwrap_or_default();
        if age > ctx.rollout_timeout {
            return Some(Eval::Failed(
                "RollbackStuck",
                format!(
                    "{why}; pointing {name} back at {} has not completed in {} either ({}/{} tasks running): \
                     see the service events",
                    own.from,
                    humantime::format_duration(Duration::from_secs(age.as_secs())),
                    primary.running_count,
                    primary.desired_count
                ),
            ));
        }
        return Some(Eval::RollingBack(format!(
            "{why}; {name} is rolling back to {} ({}/{} tasks running)",
            own.from, primary.running_count, primary.desired_count
        )));
    }
    if own.undone || own.to != primary.task_definition {
        return None;
    }
    // The params file changed while our rollout ran: head for the desired value from where
    // the service came from, without waiting for a rollout nobody wants any more.
    let to = if s.value_in(&own.from, param) == Some(desired) {
        RollTo::Revision(own.from.clone())
    } else {
        RollTo::Relabelled
    };
    Some(Eval::NeedsRoll {
        from: own.from.clone(),
        to,
    })
}

/// Someone else is rolling the service: wait, but not for ever.
fn foreign_rollout(
    s: &ObservedService,
    primary: &Deployment,
    param: &ManagedParam,
    desired: &str,
    ctx: &PlanContext,
) -> Eval {
    let name = &s.target.service;
    let age = ctx
        .now
        .duration_since(primary.created_at)
        .unwrap_or_default();
    if age > ctx.rollout_timeout {
        return Eval::Stuck(format!(
            "{name} has been rolling out {} (not this change) for {}, longer than the {} rollout timeout; \
             {}={desired} waits until that rollout ends: see the service events",
            primary.task_definition,
            humantime::format_duration(Duration::from_secs(age.as_secs())),
            humantime::format_duration(ctx.rollout_timeout),
            param.label
        ));
    }
    Eval::Busy(format!(
        "{name} is rolling out {} (not this change); waiting for it to finish before rolling {}={desired}",
        primary.task_definition, param.label
    ))
}

fn reason_or_default(reason: Option<&str>) -> &str {
    match reason {
        Some(r) if !r.is_empty() => r,
        _ => "ECS gave no reason",
    }
}

fn progress(s: &ObservedService, param: &ManagedParam, eval: &Eval) -> ServiceProgress {
    let primary = s.service.primary();
    ServiceProgress {
        service: s.target.service.clone(),
        state: match eval {
            Eval::Converged => ServiceState::Converged,
            Eval::Rolling(_) => ServiceState::RollingOut,
            Eval::RollingBack(_) => ServiceState::RollingBack,
            Eval::Failed(..) | Eval::Undo { .. } | Eval::Stuck(_) | Eval::RollbackFailing(_) => {
                ServiceState::Failed
            }
            Eval::Busy(_) => ServiceState::Busy,
            Eval::NeedsRoll { .. } => ServiceState::Pending,
            Eval::Inactive(_) => ServiceState::Inactive,
            Eval::Unknown(_) => ServiceState::Unknown,
        },
        value: primary_value(s, param).map(str::to_string),
        task_definition: primary.map(|p| p.task_definition.clone()),
        running: primary.map(|p| p.running_count).unwrap_or(0),
        desired: s.service.desired_count,
        draining: s
            .service
            .deployments
            .iter()
            .filter(|d| d.status != DeploymentStatus::Primary)
            .map(|d| d.running_count)
            .sum(),
        since: primary.map(|p| crate::clock::rfc3339(p.created_at)),
    }
}

#[cfg(test)]
mod tests {
    use super::super::Action;
    use super::*;
    use crate::model::{
        Deployment, DeploymentStatus, ServiceSnapshot, ServiceTarget, StackSnapshot, StoppedTask,
        TaskSnapshot, ECS_EXEC,
    };
    use std::collections::BTreeMap;

    const T0: u64 = 1_800_000_000;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(T0 + secs)
    }

    /// Revisions used in the tables: `web:1`/`mon:1` have no label (the default, `No`),
    /// `:2` carry `Yes`, `:3` carry `No` explicitly.
    fn labels() -> BTreeMap<String, BTreeMap<String, String>> {
        let mut m = BTreeMap::new();
        for fam in ["web", "mon"] {
            m.insert(format!("{fam}:1"), BTreeMap::new());
            m.insert(
                format!("{fam}:2"),
                BTreeMap::from([("rack.ECSExec".to_string(), "Yes".to_string())]),
            );
            m.insert(
                format!("{fam}:3"),
                BTreeMap::from([("rack.ECSExec".to_string(), "No".to_string())]),
            );
        }
        m
    }

    #[derive(Clone)]
    struct Dep {
        td: &'static str,
        primary: bool,
        state: Option<RolloutState>,
        running: u32,
        age: u64,
    }

    fn done(td: &'static str) -> Dep {
        Dep {
            td,
            primary: true,
            state: Some(RolloutState::Completed),
            running: 2,
            age: 3600,
        }
    }
    fn rolling(td: &'static str, running: u32, age: u64) -> Dep {
        Dep {
            td,
            primary: true,
            state: Some(RolloutState::InProgress),
            running,
            age,
        }
    }
    fn draining(td: &'static str) -> Dep {
        Dep {
            td,
            primary: false,
            state: Some(RolloutState::Completed),
            running: 1,
            age: 7200,
        }
    }
    fn failed(td: &'static str) -> Dep {
        Dep {
            td,
            primary: false,
            state: Some(RolloutState::Failed),
            running: 0,
            age: 600,
        }
    }

    fn svc(name: &str, deps: &[Dep], tasks: &[&str]) -> ObservedService {
        let short = if name == "ServiceWebApi" {
            "ApiWebTasks"
        } else {
            "ApiMonitorTasks"
        };
        let now = at(7200);
        ObservedService {
            target: ServiceTarget::new(name, short),
            service: ServiceSnapshot {
                name: format!("convox-{name}"),
                arn: format!("arn:aws:ecs:us-east-1:1:service/convox/{name}"),
                status: "ACTIVE".into(),
                desired_count: 2,
                running_count: deps.iter().map(|d| d.running).sum(),
                minimum_healthy_percent: 50,
                maximum_percent: 200,
                deployments: deps
                    .iter()
                    .enumerate()
                    .map(|(i, d)| Deployment {
                        id: format!("ecs-svc/{i}"),
                        status: if d.primary {
                            DeploymentStatus::Primary
                        } else {
                            DeploymentStatus::Active
                        },
                        task_definition: d.td.into(),
                        desired_count: 2,
                        running_count: d.running,
                        pending_count: 0,
                        failed_tasks: 0,
                        rollout_state: d.state,
                        rollout_state_reason: (d.state == Some(RolloutState::Failed)).then(|| {
                            "ECS deployment circuit breaker: tasks failed to start.".into()
                        }),
                        created_at: now - Duration::from_secs(d.age),
                    })
                    .collect(),
                tasks: tasks
                    .iter()
                    .map(|t| TaskSnapshot {
                        task_definition: t.to_string(),
                        last_status: "RUNNING".into(),
                    })
                    .collect(),
                stopped: Vec::new(),
                target_groups: Vec::new(),
            },
            labels: labels(),
        }
    }

    /// `n` tasks of the primary deployment stopped with `reason`.
    fn with_stopped(mut s: ObservedService, n: usize, reason: &str) -> ObservedService {
        let primary = s.service.primary().cloned().expect("primary");
        s.service.stopped = (0..n)
            .map(|i| StoppedTask {
                task_definition: primary.task_definition.clone(),
                started_by: Some(primary.id.clone()),
                stopped_reason: Some(reason.to_string()),
                stop_code: Some("EssentialContainerExited".into()),
                created_at: primary.created_at + Duration::from_secs(i as u64),
            })
            .collect();
        s
    }

    fn own(service: &str, from: &str, to: &str, undone: bool) -> BTreeMap<String, OwnRollout> {
        BTreeMap::from([(
            service.to_string(),
            OwnRollout {
                from: from.into(),
                to: to.into(),
                undone,
            },
        )])
    }

    fn rack(status: &str, web: ObservedService, mon: ObservedService) -> ObservedRack {
        ObservedRack {
            declared: Default::default(),
            stack: StackSnapshot {
                outputs: BTreeMap::new(),
                last_updated: None,
                name: "convox".into(),
                status: status.into(),
                status_reason: None,
                parameters: BTreeMap::new(),
            },
            cluster: "convox-Cluster-1".into(),
            light: false,
            services: vec![web, mon],
            update_token: Default::default(),
            rollback_since: None,
        }
    }

    fn ctx() -> PlanContext {
        PlanContext {
            now: at(7200),
            rollout_timeout: Duration::from_secs(1800),
            last_converged: None,
            corrections_last_hour: 0,
            max_corrections_per_hour: 3,
            retry_not_before: None,
            writes_not_before: BTreeMap::new(),
            rolled_to: BTreeMap::new(),
            failed_tasks_threshold: 3,
            last_failure: None,
            own_rollouts: BTreeMap::new(),
        }
    }

    fn web(deps: &[Dep], tasks: &[&str]) -> ObservedService {
        svc("ServiceWebApi", deps, tasks)
    }
    fn mon(deps: &[Dep], tasks: &[&str]) -> ObservedService {
        svc("ServiceMonitorApi", deps, tasks)
    }

    struct Case {
        name: &'static str,
        desired: &'static str,
        rack: ObservedRack,
        ctx: PlanContext,
        phase: Phase,
        reason: &'static str,
        /// (service, from, to) of the roll expected, if any; `to` empty for a relabelled copy.
        roll: Option<(&'static str, &'static str, &'static str)>,
    }

    #[test]
    fn decisions() {
        let stable = "UPDATE_COMPLETE";
        let cases = vec![
            Case {
                name: "already converged: nothing to do",
                desired: "Yes",
                rack: rack(
                    stable,
                    web(&[done("web:2")], &["web:2", "web:2"]),
                    mon(&[done("mon:2")], &["mon:2"]),
                ),
                ctx: ctx(),
                phase: Phase::Converged,
                reason: "Converged",
                roll: None,
            },
            Case {
                name: "absent label counts as the default No",
                desired: "No",
                rack: rack(
                    stable,
                    web(&[done("web:1")], &["web:1"]),
                    mon(&[done("mon:1")], &["mon:1"]),
                ),
                ctx: ctx(),
                phase: Phase::Converged,
                reason: "Converged",
                roll: None,
            },
            Case {
                name: "No to Yes starts with web",
                desired: "Yes",
                rack: rack(
                    stable,
                    web(&[done("web:1")], &["web:1"]),
                    mon(&[done("mon:1")], &["mon:1"]),
                ),
                ctx: ctx(),
                phase: Phase::Progressing,
                reason: "RollingOut",
                roll: Some(("ServiceWebApi", "web:1", "")),
            },
            Case {
                name: "monitor waits while web rolls",
                desired: "Yes",
                rack: rack(
                    stable,
                    web(
                        &[rolling("web:2", 1, 60), draining("web:1")],
                        &["web:2", "web:1"],
                    ),
                    mon(&[done("mon:1")], &["mon:1"]),
                ),
                ctx: ctx(),
                phase: Phase::Progressing,
                reason: "RollingOut",
                roll: None,
            },
            Case {
                name: "completed rollout with a task still on the old revision is not converged",
                desired: "Yes",
                rack: rack(
                    stable,
                    web(&[done("web:2")], &["web:2", "web:1"]),
                    mon(&[done("mon:2")], &["mon:2"]),
                ),
                ctx: ctx(),
                phase: Phase::Progressing,
                reason: "RollingOut",
                roll: None,
            },
            Case {
                name: "completed primary with an old deployment draining is not converged",
                desired: "Yes",
                rack: rack(
                    stable,
                    web(&[done("web:2"), draining("web:1")], &["web:2"]),
                    mon(&[done("mon:2")], &["mon:2"]),
                ),
                ctx: ctx(),
                phase: Phase::Progressing,
                reason: "RollingOut",
                roll: None,
            },
            Case {
                name: "web done, monitor next",
                desired: "Yes",
                rack: rack(
                    stable,
                    web(&[done("web:2")], &["web:2"]),
                    mon(&[done("mon:1")], &["mon:1"]),
                ),
                ctx: ctx(),
                phase: Phase::Progressing,
                reason: "RollingOut",
                roll: Some(("ServiceMonitorApi", "mon:1", "")),
            },
            Case {
                name: "Yes back to No rolls from the Yes revision",
                desired: "No",
                rack: rack(
                    stable,
                    web(&[done("web:2")], &["web:2"]),
                    mon(&[done("mon:2")], &["mon:2"]),
                ),
                ctx: ctx(),
                phase: Phase::Progressing,
                reason: "RollingOut",
                roll: Some(("ServiceWebApi", "web:2", "")),
            },
            Case {
                name: "stack update in progress: wait, no action",
                desired: "Yes",
                rack: rack(
                    "UPDATE_IN_PROGRESS",
                    web(&[done("web:1")], &["web:1"]),
                    mon(&[done("mon:1")], &["mon:1"]),
                ),
                ctx: ctx(),
                phase: Phase::Waiting,
                reason: "StackUpdating",
                roll: None,
            },
            Case {
                name: "rollback in progress on the stack: wait",
                desired: "Yes",
                rack: rack(
                    "UPDATE_ROLLBACK_IN_PROGRESS",
                    web(&[done("web:1")], &["web:1"]),
                    mon(&[done("mon:1")], &["mon:1"]),
                ),
                ctx: ctx(),
                phase: Phase::Waiting,
                reason: "StackUpdating",
                roll: None,
            },
            Case {
                name: "stack needs repair: blocked",
                desired: "Yes",
                rack: rack(
                    "DELETE_FAILED",
                    web(&[done("web:1")], &["web:1"]),
                    mon(&[done("mon:1")], &["mon:1"]),
                ),
                ctx: ctx(),
                phase: Phase::Blocked,
                reason: "StackUnusable",
                roll: None,
            },
            Case {
                name: "circuit breaker rolled back: failed with the reason, no action",
                desired: "Yes",
                rack: rack(
                    stable,
                    web(
                        &[rolling("web:1", 2, 30), failed("web:2")],
                        &["web:1", "web:1"],
                    ),
                    mon(&[done("mon:1")], &["mon:1"]),
                ),
                ctx: ctx(),
                phase: Phase::Failed,
                reason: "RolloutFailed",
                roll: None,
            },
            Case {
                name: "after a failure the next attempt waits for the backoff",
                desired: "Yes",
                rack: rack(
                    stable,
                    web(&[done("web:1")], &["web:1"]),
                    mon(&[done("mon:1")], &["mon:1"]),
                ),
                ctx: PlanContext {
                    retry_not_before: Some(at(7300)),
                    ..ctx()
                },
                phase: Phase::Failed,
                reason: "BackingOff",
                roll: None,
            },
            Case {
                name: "backoff elapsed: try again",
                desired: "Yes",
                rack: rack(
                    stable,
                    web(&[done("web:1")], &["web:1"]),
                    mon(&[done("mon:1")], &["mon:1"]),
                ),
                ctx: PlanContext {
                    retry_not_before: Some(at(7200)),
                    ..ctx()
                },
                phase: Phase::Progressing,
                reason: "RollingOut",
                roll: Some(("ServiceWebApi", "web:1", "")),
            },
            Case {
                name: "a rollout rolled back before it was seen failing is failed, not retried",
                desired: "Yes",
                rack: rack(
                    stable,
                    web(&[done("web:1")], &["web:1"]),
                    mon(&[done("mon:1")], &["mon:1"]),
                ),
                ctx: PlanContext {
                    rolled_to: BTreeMap::from([("ServiceWebApi".to_string(), "web:2".to_string())]),
                    ..ctx()
                },
                phase: Phase::Failed,
                reason: "RolloutReverted",
                roll: None,
            },
            Case {
                name: "rollout past its timeout is failed",
                desired: "Yes",
                rack: rack(
                    stable,
                    web(&[rolling("web:2", 0, 1801), draining("web:1")], &["web:1"]),
                    mon(&[done("mon:1")], &["mon:1"]),
                ),
                ctx: ctx(),
                phase: Phase::Failed,
                reason: "RolloutTimedOut",
                roll: None,
            },
            Case {
                name: "someone else's deployment running: wait for it",
                desired: "Yes",
                rack: rack(
                    stable,
                    web(
                        &[rolling("web:3", 1, 10), draining("web:1")],
                        &["web:3", "web:1"],
                    ),
                    mon(&[done("mon:1")], &["mon:1"]),
                ),
                ctx: ctx(),
                phase: Phase::Waiting,
                reason: "ServiceBusy",
                roll: None,
            },
            Case {
                name: "out-of-band revert is corrected",
                desired: "Yes",
                rack: rack(
                    stable,
                    web(&[done("web:3")], &["web:3"]),
                    mon(&[done("mon:2")], &["mon:2"]),
                ),
                ctx: PlanContext {
                    last_converged: Some("Yes".into()),
                    corrections_last_hour: 2,
                    ..ctx()
                },
                phase: Phase::Progressing,
                reason: "RollingOut",
                roll: Some(("ServiceWebApi", "web:3", "")),
            },
            Case {
                name: "corrections past the hourly cap stop and report",
                desired: "Yes",
                rack: rack(
                    stable,
                    web(&[done("web:3")], &["web:3"]),
                    mon(&[done("mon:2")], &["mon:2"]),
                ),
                ctx: PlanContext {
                    last_converged: Some("Yes".into()),
                    corrections_last_hour: 3,
                    ..ctx()
                },
                phase: Phase::Blocked,
                reason: "CorrectionsCapped",
                roll: None,
            },
            Case {
                name: "primary failed without rollback: failed, nothing to roll",
                desired: "Yes",
                rack: rack(
                    stable,
                    web(
                        &[Dep {
                            td: "web:2",
                            primary: true,
                            state: Some(RolloutState::Failed),
                            running: 0,
                            age: 60,
                        }],
                        &[],
                    ),
                    mon(&[done("mon:1")], &["mon:1"]),
                ),
                ctx: ctx(),
                phase: Phase::Failed,
                reason: "RolloutFailed",
                roll: None,
            },
            Case {
                name: "new tasks keep stopping, fewer than the threshold: still rolling",
                desired: "Yes",
                rack: rack(
                    stable,
                    with_stopped(web(&[rolling("web:2", 0, 60), draining("web:1")], &["web:1"]), 2, "Essential container in task exited"),
                    mon(&[done("mon:1")], &["mon:1"]),
                ),
                ctx: PlanContext { own_rollouts: own("ServiceWebApi", "web:1", "web:2", false), ..ctx() },
                phase: Phase::Progressing,
                reason: "RollingOut",
                roll: None,
            },
            Case {
                name: "our rollout's new tasks keep stopping (no circuit breaker): point the service back",
                desired: "Yes",
                rack: rack(
                    stable,
                    with_stopped(web(&[rolling("web:2", 0, 60), draining("web:1")], &["web:1"]), 3, "Essential container in task exited"),
                    mon(&[done("mon:1")], &["mon:1"]),
                ),
                ctx: PlanContext { own_rollouts: own("ServiceWebApi", "web:1", "web:2", false), ..ctx() },
                phase: Phase::Failed,
                reason: "RolloutFailed",
                roll: Some(("ServiceWebApi", "web:2", "web:1")),
            },
            Case {
                name: "new tasks stopped by a spot interruption are not failures",
                desired: "Yes",
                rack: rack(
                    stable,
                    {
                        let mut w = with_stopped(web(&[rolling("web:2", 0, 60), draining("web:1")], &["web:1"]), 5, "Your Spot Task was interrupted.");
                        for t in &mut w.service.stopped {
                            t.stop_code = Some("SpotInterruption".into());
                        }
                        w
                    },
                    mon(&[done("mon:1")], &["mon:1"]),
                ),
                ctx: PlanContext { own_rollouts: own("ServiceWebApi", "web:1", "web:2", false), ..ctx() },
                phase: Phase::Progressing,
                reason: "RollingOut",
                roll: None,
            },
            Case {
                name: "the rollback itself stuck past the timeout: failed, no further write",
                desired: "Yes",
                rack: rack(
                    stable,
                    web(&[rolling("web:1", 0, 1801), draining("web:2")], &["web:2"]),
                    mon(&[done("mon:1")], &["mon:1"]),
                ),
                ctx: PlanContext { own_rollouts: own("ServiceWebApi", "web:1", "web:2", true), ..ctx() },
                phase: Phase::Failed,
                reason: "RollbackStuck",
                roll: None,
            },
            Case {
                name: "someone else's failing rollout is reported, not undone",
                desired: "Yes",
                rack: rack(
                    stable,
                    with_stopped(web(&[rolling("web:2", 0, 60), draining("web:1")], &["web:1"]), 3, "Essential container in task exited"),
                    mon(&[done("mon:1")], &["mon:1"]),
                ),
                ctx: ctx(),
                phase: Phase::Failed,
                reason: "RolloutFailed",
                roll: None,
            },
            Case {
                name: "our rollout past its timeout is undone too",
                desired: "Yes",
                rack: rack(
                    stable,
                    web(&[rolling("web:2", 0, 1801), draining("web:1")], &["web:1"]),
                    mon(&[done("mon:1")], &["mon:1"]),
                ),
                ctx: PlanContext { own_rollouts: own("ServiceWebApi", "web:1", "web:2", false), ..ctx() },
                phase: Phase::Failed,
                reason: "RolloutTimedOut",
                roll: Some(("ServiceWebApi", "web:2", "web:1")),
            },
            Case {
                name: "after the undo: failed while the service rolls back, no further write",
                desired: "Yes",
                rack: rack(
                    stable,
                    web(&[rolling("web:1", 0, 5), draining("web:2")], &["web:2"]),
                    mon(&[done("mon:1")], &["mon:1"]),
                ),
                ctx: PlanContext { own_rollouts: own("ServiceWebApi", "web:1", "web:2", true), ..ctx() },
                phase: Phase::Failed,
                reason: "RollingBack",
                roll: None,
            },
            Case {
                name: "the undo's tasks keep failing too: rollback failing, no further write",
                desired: "Yes",
                rack: rack(
                    stable,
                    with_stopped(
                        web(&[rolling("web:1", 0, 60), draining("web:2")], &["web:2"]),
                        3,
                        "Essential container in task exited",
                    ),
                    mon(&[done("mon:1")], &["mon:1"]),
                ),
                ctx: PlanContext { own_rollouts: own("ServiceWebApi", "web:1", "web:2", true), ..ctx() },
                phase: Phase::Failed,
                reason: "RollbackFailing",
                roll: None,
            },
            Case {
                name: "a stack left in UPDATE_ROLLBACK_FAILED: rollback failing",
                desired: "Yes",
                rack: rack(
                    "UPDATE_ROLLBACK_FAILED",
                    web(&[done("web:1")], &["web:1"]),
                    mon(&[done("mon:1")], &["mon:1"]),
                ),
                ctx: ctx(),
                phase: Phase::Failed,
                reason: "RollbackFailing",
                roll: None,
            },
            Case {
                name: "a stack rolling back whose API tasks keep failing: rollback failing",
                desired: "Yes",
                rack: ObservedRack {
                    rollback_since: Some(at(7100)),
                    ..rack(
                        "UPDATE_ROLLBACK_IN_PROGRESS",
                        with_stopped(
                            web(&[rolling("web:1", 0, 60), draining("web:2")], &["web:2"]),
                            4,
                            "CannotPullContainerError",
                        ),
                        mon(&[done("mon:1")], &["mon:1"]),
                    )
                },
                ctx: ctx(),
                phase: Phase::Failed,
                reason: "RollbackFailing",
                roll: None,
            },
            Case {
                name: "rolling back, the failing deployment still the update's: not the rollback's",
                desired: "Yes",
                rack: ObservedRack {
                    rollback_since: Some(at(7170)),
                    ..rack(
                        "UPDATE_ROLLBACK_IN_PROGRESS",
                        with_stopped(
                            web(&[rolling("web:2", 0, 60), draining("web:1")], &["web:1"]),
                            4,
                            "CannotPullContainerError",
                        ),
                        mon(&[done("mon:1")], &["mon:1"]),
                    )
                },
                ctx: ctx(),
                phase: Phase::Waiting,
                reason: "StackUpdating",
                roll: None,
            },
            Case {
                name: "rolling back, when the rollback began not read: not claimed",
                desired: "Yes",
                rack: rack(
                    "UPDATE_ROLLBACK_IN_PROGRESS",
                    with_stopped(
                        web(&[rolling("web:1", 0, 60), draining("web:2")], &["web:2"]),
                        4,
                        "CannotPullContainerError",
                    ),
                    mon(&[done("mon:1")], &["mon:1"]),
                ),
                ctx: ctx(),
                phase: Phase::Waiting,
                reason: "StackUpdating",
                roll: None,
            },
            Case {
                name: "params set back while our rollout is stuck: roll back to where it came from",
                desired: "No",
                rack: rack(
                    stable,
                    web(&[rolling("web:2", 0, 120), draining("web:1")], &["web:1"]),
                    mon(&[done("mon:1")], &["mon:1"]),
                ),
                ctx: PlanContext { own_rollouts: own("ServiceWebApi", "web:1", "web:2", false), ..ctx() },
                phase: Phase::Progressing,
                reason: "RollingOut",
                roll: Some(("ServiceWebApi", "web:1", "web:1")),
            },
            Case {
                name: "someone else's rollout past the timeout: failed, no write",
                desired: "Yes",
                rack: rack(
                    stable,
                    web(&[rolling("web:3", 0, 1801), draining("web:1")], &["web:1"]),
                    mon(&[done("mon:1")], &["mon:1"]),
                ),
                ctx: ctx(),
                phase: Phase::Failed,
                reason: "ServiceStuck",
                roll: None,
            },
            Case {
                name: "an INACTIVE service is reported as such",
                desired: "Yes",
                rack: rack(
                    stable,
                    {
                        let mut w = web(&[done("web:1")], &["web:1"]);
                        w.service.status = "INACTIVE".into();
                        w
                    },
                    mon(&[done("mon:1")], &["mon:1"]),
                ),
                ctx: ctx(),
                phase: Phase::Blocked,
                reason: "ServiceInactive",
                roll: None,
            },
        ];

        for c in cases {
            let d = plan(&ECS_EXEC, c.desired, &c.rack, &c.ctx);
            assert_eq!(
                (d.phase, d.reason),
                (c.phase, c.reason),
                "{}: {}",
                c.name,
                d.message
            );
            let roll = d.action.as_ref().map(|a| match a {
                Action::Roll(r) => (
                    r.service.as_str(),
                    r.from_task_definition.as_str(),
                    match &r.to {
                        RollTo::Relabelled => "",
                        RollTo::Revision(arn) => arn.as_str(),
                    },
                ),
                Action::UpdateStack(_) | Action::CancelStackUpdate => {
                    panic!("{}: unexpected stack write", c.name)
                }
            });
            assert_eq!(roll, c.roll, "{}", c.name);
            if let Some(Action::Roll(r)) = &d.action {
                assert_eq!(
                    (r.label.as_str(), r.value.as_str()),
                    ("rack.ECSExec", c.desired),
                    "{}",
                    c.name
                );
                let expected = if d.phase == Phase::Failed {
                    RollPurpose::Undo
                } else if c.ctx.last_converged.as_deref() == Some(c.desired) {
                    RollPurpose::Correction
                } else {
                    RollPurpose::Change
                };
                assert_eq!(r.purpose, expected, "{}", c.name);
            }
            assert!(!d.message.is_empty(), "{}", c.name);
        }
    }

    #[test]
    fn observed_value_and_drift() {
        let mixed = rack(
            "UPDATE_COMPLETE",
            web(&[done("web:2")], &["web:2"]),
            mon(&[done("mon:1")], &["mon:1"]),
        );
        let d = plan(&ECS_EXEC, "Yes", &mixed, &ctx());
        assert_eq!(d.observed, None);
        assert!(d.drift);
        assert_eq!(d.pending.len(), 1);
        assert_eq!(d.pending[0].service, "ServiceMonitorApi");
        assert_eq!(d.pending[0].from_value.as_deref(), Some("No"));

        let same = rack(
            "UPDATE_COMPLETE",
            web(&[done("web:1")], &["web:1"]),
            mon(&[done("mon:3")], &["mon:3"]),
        );
        let d = plan(&ECS_EXEC, "No", &same, &ctx());
        assert_eq!(d.observed.as_deref(), Some("No"));
        assert!(!d.drift);
        assert!(d.pending.is_empty());
    }

    #[test]
    fn failure_messages_carry_the_ecs_reason() {
        let r = rack(
            "UPDATE_COMPLETE",
            web(&[rolling("web:1", 2, 30), failed("web:2")], &["web:1"]),
            mon(&[done("mon:1")], &["mon:1"]),
        );
        let d = plan(&ECS_EXEC, "Yes", &r, &ctx());
        assert!(
            d.message.contains("circuit breaker: tasks failed to start"),
            "{}",
            d.message
        );
    }
}
