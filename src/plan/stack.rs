//! The stack method: a parameter the running template declares is changed through
//! CloudFormation, every pending change in one `UpdateStack` that keeps the template
//! (`UsePreviousTemplate`) and every other parameter (`UsePreviousValue`), then followed to
//! the end: the stack `*_COMPLETE` with the value, and for a parameter that feeds the rack
//! API's labels (`ECSExec`), every API service converged on it. An update of the
//! controller's (its token, see [`super::owner`]) whose new API tasks keep failing (no
//! circuit breaker) is cancelled, once, instead of letting CloudFormation wait for hours;
//! someone else's update is waited for, never cancelled.

use std::collections::BTreeMap;
use std::time::SystemTime;

use super::hold::ROLLBACK_FAILING;
use super::owner::Ownership;
use super::relabel::{self, rollout_failure, PlanContext};
use super::{rollback_cause, round_secs, stack_hold, Decision, Phase};
use crate::model::{ObservedRack, RolloutState, StackParameter, StackState, ECS_EXEC};

/// What the stack planner remembers and its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackContext {
    pub now: SystemTime,
    /// The values the controller's stack update in flight (or last made) asked for, until the
    /// stack is seen with them or the update failed.
    pub attempted: BTreeMap<String, String>,
    /// Whose the stack's latest update is.
    pub ownership: Ownership,
    /// The controller's update was cancelled already: not again.
    pub cancelled: bool,
    /// After a failed update, the next waits until then.
    pub retry_not_before: Option<SystemTime>,
    /// Why the last update failed, for the message while backing off.
    pub last_failure: Option<String>,
    /// Why the controller's last update rolled back, once read from the stack events.
    pub failure_reason: Option<String>,
    /// For parameters that feed the rack API's labels: how their rollouts are judged.
    pub rollouts: PlanContext,
}

/// The stack planner's answer for every stack parameter.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StackPlan {
    pub decisions: Vec<Decision>,
    /// Changes to make in one `UpdateStack`: key → value.
    pub changes: BTreeMap<String, String>,
    /// The controller's update in progress is failing (why), cancelled or not.
    pub failing: Option<String>,
    /// The controller's update in progress is failing (why) and not cancelled yet: cancel it.
    pub cancel: Option<String>,
}

/// Decides every stack parameter: nothing, wait, follow, or change (batched).
pub fn plan_stack(
    desired: &BTreeMap<String, String>,
    rack: &ObservedRack,
    ctx: &StackContext,
) -> StackPlan {
    let failing = failing_update(rack, ctx);
    let mut plan = StackPlan {
        cancel: failing.clone().filter(|_| !ctx.cancelled),
        failing,
        ..StackPlan::default()
    };
    for (key, value) in desired {
        let mut d = decide(key, value, rack, ctx, plan.failing.as_deref());
        if key == ECS_EXEC.name && d.services.is_empty() {
            // The API services' progress: the rollouts the stack update started.
            d.services = relabel::plan(&ECS_EXEC, value, rack, &ctx.rollouts).services;
        }
        if d.reason == "UpdatingStack" && rack.stack.state() == StackState::Stable {
            plan.changes.insert(key.clone(), value.clone());
        }
        plan.decisions.push(d);
    }
    plan
}

/// The `UpdateStack` parameters for `changes`: every parameter the stack has, the changed
/// ones with their value, the computed ones as convox sends them
/// ([`ObservedRack::computed_values`]), the rest (secrets included) `UsePreviousValue`.
pub fn update_parameters(
    rack: &ObservedRack,
    changes: &BTreeMap<String, String>,
) -> Vec<StackParameter> {
    let computed = rack.computed_values();
    rack.stack
        .parameters
        .keys()
        .map(|key| StackParameter {
            key: key.clone(),
            value: changes.get(key).or_else(|| computed.get(key)).cloned(),
        })
        .collect()
}

fn decide(
    key: &str,
    value: &str,
    rack: &ObservedRack,
    ctx: &StackContext,
    cancel: Option<&str>,
) -> Decision {
    let stack = &rack.stack;
    let observed = stack.parameters.get(key).cloned();
    let d = Decision {
        param: key.to_string(),
        desired: value.to_string(),
        observed: observed.clone(),
        phase: Phase::Unknown,
        reason: "NotObserved",
        message: String::new(),
        drift: observed.as_deref() != Some(value),
        action: None,
        pending: Vec::new(),
        services: Vec::new(),
    };
    if !rack.declared.declares(key) {
        let message = format!(
            "the stack's template does not declare {key}, so it cannot be set through the stack (parameters.{key}.method is stack)"
        );
        return d.with(Phase::Blocked, "NotDeclared", message);
    }
    let ours = ctx.ownership.is_ours() && ctx.attempted.get(key).is_some_and(|v| v == value);
    let what = format!("setting {key}={value}");
    let update = InFlight {
        ownership: &ctx.ownership,
        cancelled: ctx.cancelled,
        failing: cancel,
        threshold: ctx.rollouts.failed_tasks_threshold,
    };
    if let Some((phase, reason, message)) = in_progress(rack, &what, ours, &update) {
        return d.with(phase, reason, message);
    }
    let (name, status) = (&stack.name, &stack.status);
    if observed.as_deref() == Some(value) {
        return holding(d, key, value, rack, ctx);
    }
    if ours && status.contains("ROLLBACK") {
        let reason = rollback_cause(ctx.failure_reason.as_ref(), rack);
        let message = format!(
            "the update of stack {name} setting {key}={value} was rolled back ({status}): {reason}"
        );
        return d.with(Phase::Failed, "StackUpdateRolledBack", message);
    }
    if let Some(at) = ctx.retry_not_before.filter(|at| *at > ctx.now) {
        let wait = at.duration_since(ctx.now).unwrap_or_default();
        let message = format!(
            "the last update of stack {name} setting {key}={value} failed{}; next attempt in {}",
            super::why(ctx.last_failure.as_deref()),
            humantime::format_duration(round_secs(wait))
        );
        return d.with(Phase::Failed, "BackingOff", message);
    }
    let from = observed.unwrap_or_else(|| "(not set)".into());
    let message = format!("updating stack {name}: {key} {from} → {value} (UpdateStack, the template and every other parameter kept)");
    d.with(Phase::Progressing, "UpdatingStack", message)
}

/// What the planners know of the stack update under way.
pub(super) struct InFlight<'a> {
    pub ownership: &'a Ownership,
    /// The controller cancelled its update already.
    pub cancelled: bool,
    /// The controller's update is failing (why).
    pub failing: Option<&'a str>,
    /// Failed task launches that make a rollout (or a rollback) failing.
    pub threshold: u32,
}

/// The phase while the stack is not stable: the controller's own update (`what` it does, and
/// `ours`: this decision's change is in it) followed, failing (cancelled once) or rolling
/// back; anyone else's waited for, never cancelled; a rollback that fails too; a stack that
/// needs repair.
pub(super) fn in_progress(
    rack: &ObservedRack,
    what: &str,
    ours: bool,
    ctx: &InFlight<'_>,
) -> Option<(Phase, &'static str, String)> {
    let (name, status) = (&rack.stack.name, &rack.stack.status);
    let hold = stack_hold(rack, ctx.threshold);
    match rack.stack.state() {
        StackState::Stable if status.contains("ROLLBACK") => match ctx.ownership {
            Ownership::Unknown(why) => Some((
                Phase::Unknown,
                "StackUpdateOwnerUnknown",
                format!(
                    "stack {name} is {status}, and whether the update it rolled back was the \
                     controller's cannot be told ({why}): nothing is changed until it can \
                     (check cloudformation:DescribeStackEvents in the controller's role)"
                ),
            )),
            _ => None,
        },
        StackState::Stable => None,
        StackState::Unusable => hold,
        _ if hold.as_ref().is_some_and(|h| h.1 == ROLLBACK_FAILING) => hold,
        StackState::InProgress if ours => Some(match ctx.failing {
            Some(why) => {
                let done = if ctx.cancelled {
                    "cancelled; CloudFormation rolls it back"
                } else {
                    "cancelling it, CloudFormation rolls it back"
                };
                let message =
                    format!("the update of stack {name} {what} is failing ({why}): {done}");
                (Phase::Failed, "StackUpdateFailing", message)
            }
            None if status.contains("ROLLBACK") => {
                let message = format!(
                    "the update of stack {name} {what} is being rolled back ({status}){}",
                    if ctx.cancelled {
                        ": the controller cancelled it"
                    } else {
                        ""
                    }
                );
                (Phase::Failed, "StackRollingBack", message)
            }
            None => {
                let message = format!("stack {name} is {status}: {what}");
                (Phase::Progressing, "UpdatingStack", message)
            }
        }),
        StackState::InProgress if ctx.ownership.is_ours() => {
            let message = format!(
                "stack {name} is {status}: the controller's own update, which does not carry this \
                 change, is under way; {what} waits for it to settle"
            );
            Some((Phase::Waiting, "StackUpdating", message))
        }
        StackState::InProgress => {
            let message = format!(
                "stack {name} is {status}: {}; the controller waits for it to settle and never cancels \
                 an update it has not proven its own",
                ctx.ownership.describe()
            );
            Some((Phase::Waiting, "StackUpdating", message))
        }
    }
}

/// The stack holds the value. A parameter that feeds the rack API's labels is converged only
/// when the API services run it too; when they do not (changed outside CloudFormation), the
/// relabel planner puts them back in line with the stack.
fn holding(
    d: Decision,
    key: &str,
    value: &str,
    rack: &ObservedRack,
    ctx: &StackContext,
) -> Decision {
    if key != ECS_EXEC.name {
        let message = format!(
            "stack {} holds {key}={value} ({})",
            rack.stack.name, rack.stack.status
        );
        return d.with(Phase::Converged, "Converged", message);
    }
    relabel::plan(&ECS_EXEC, value, rack, &ctx.rollouts)
}

/// Whether a rollout of the API services that the controller's own stack update started is
/// failing (its new tasks keep stopping), and why.
fn failing_update(rack: &ObservedRack, ctx: &StackContext) -> Option<String> {
    // CancelUpdateStack only works while the update itself runs (not during its rollback
    // or clean-up). Someone else's update is never cancelled.
    if !ctx.ownership.is_ours() || rack.stack.status != "UPDATE_IN_PROGRESS" {
        return None;
    }
    rack.services.iter().find_map(|s| {
        let primary = s.service.primary()?;
        if primary.rollout_state != Some(RolloutState::InProgress) {
            return None;
        }
        let ctx = PlanContext {
            // CloudFormation's own wait (hours) is not ours to judge: only failing tasks.
            rollout_timeout: std::time::Duration::MAX,
            ..ctx.rollouts.clone()
        };
        rollout_failure(s, primary, &ctx).map(|(_, why)| why)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::StackSnapshot;
    use crate::spec::{Declarations, ParamDecl};
    use std::time::Duration;

    fn rack(status: &str, params: &[(&str, &str)]) -> ObservedRack {
        let declared = Declarations {
            params: params
                .iter()
                .chain(&[("Password", "****")])
                .map(|(k, _)| {
                    (
                        k.to_string(),
                        ParamDecl {
                            name: k.to_string(),
                            no_echo: *k == "Password",
                            ..ParamDecl::default()
                        },
                    )
                })
                .collect(),
        };
        ObservedRack {
            declared,
            stack: StackSnapshot {
                outputs: BTreeMap::new(),
                name: "convox".into(),
                status: status.into(),
                status_reason: None,
                parameters: params
                    .iter()
                    .chain(&[("Password", "****")])
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                last_updated: None,
            },
            cluster: "convox-Cluster-1".into(),
            light: false,
            services: Vec::new(),
            update_token: Default::default(),
            rollback_since: None,
        }
    }

    fn ctx() -> StackContext {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        StackContext {
            now,
            attempted: BTreeMap::new(),
            ownership: Ownership::Unknown("not read".into()),
            cancelled: false,
            retry_not_before: None,
            last_failure: None,
            failure_reason: None,
            rollouts: PlanContext {
                now,
                rollout_timeout: Duration::from_secs(1800),
                failed_tasks_threshold: 3,
                last_converged: None,
                corrections_last_hour: 0,
                max_corrections_per_hour: 3,
                retry_not_before: None,
                writes_not_before: BTreeMap::new(),
                last_failure: None,
                rolled_to: BTreeMap::new(),
                own_rollouts: BTreeMap::new(),
            },
        }
    }

    fn desired(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Name, rack, context, the phase and reason wanted, the changes batched.
    type Case = (
        &'static str,
        ObservedRack,
        StackContext,
        Phase,
        &'static str,
        Vec<&'static str>,
    );

    #[test]
    fn decisions() {
        let stable = "UPDATE_COMPLETE";
        let ours = StackContext {
            attempted: desired(&[("ApiCount", "3")]),
            ownership: Ownership::Ours,
            ..ctx()
        };
        let theirs = StackContext {
            attempted: desired(&[("ApiCount", "3")]),
            ownership: Ownership::Theirs("someone else's update (no token)".into()),
            ..ctx()
        };
        let cases: Vec<Case> = vec![
            (
                "holds the value",
                rack(stable, &[("ApiCount", "3")]),
                ctx(),
                Phase::Converged,
                "Converged",
                vec![],
            ),
            (
                "differs: batched",
                rack(stable, &[("ApiCount", "2")]),
                ctx(),
                Phase::Progressing,
                "UpdatingStack",
                vec!["ApiCount"],
            ),
            (
                "our update runs",
                rack("UPDATE_IN_PROGRESS", &[("ApiCount", "2")]),
                ours.clone(),
                Phase::Progressing,
                "UpdatingStack",
                vec![],
            ),
            (
                "someone else's update",
                rack("UPDATE_IN_PROGRESS", &[("ApiCount", "2")]),
                ctx(),
                Phase::Waiting,
                "StackUpdating",
                vec![],
            ),
            (
                "the same values, someone else's token: waited for",
                rack("UPDATE_IN_PROGRESS", &[("ApiCount", "2")]),
                theirs.clone(),
                Phase::Waiting,
                "StackUpdating",
                vec![],
            ),
            (
                "ours, being rolled back",
                rack("UPDATE_ROLLBACK_IN_PROGRESS", &[("ApiCount", "2")]),
                ours.clone(),
                Phase::Failed,
                "StackRollingBack",
                vec![],
            ),
            (
                "stack broken",
                rack("DELETE_FAILED", &[("ApiCount", "2")]),
                ctx(),
                Phase::Blocked,
                "StackUnusable",
                vec![],
            ),
            (
                "rollback failed",
                rack("UPDATE_ROLLBACK_FAILED", &[("ApiCount", "2")]),
                ours.clone(),
                Phase::Failed,
                "RollbackFailing",
                vec![],
            ),
            (
                "rolled back, whose update it was not known: nothing changed",
                rack("UPDATE_ROLLBACK_COMPLETE", &[("ApiCount", "2")]),
                StackContext {
                    ownership: Ownership::Unknown("AccessDenied".into()),
                    ..ours.clone()
                },
                Phase::Unknown,
                "StackUpdateOwnerUnknown",
                vec![],
            ),
            (
                "someone else's update rolled back: not ours to report",
                rack("UPDATE_ROLLBACK_COMPLETE", &[("ApiCount", "2")]),
                theirs.clone(),
                Phase::Progressing,
                "UpdatingStack",
                vec!["ApiCount"],
            ),
            (
                "ours rolled back",
                rack("UPDATE_ROLLBACK_COMPLETE", &[("ApiCount", "2")]),
                StackContext {
                    failure_reason: Some(
                        "ServiceWebApi: not authorized to perform iam:PassRole".into(),
                    ),
                    ..ours.clone()
                },
                Phase::Failed,
                "StackUpdateRolledBack",
                vec![],
            ),
            (
                "backing off",
                rack(stable, &[("ApiCount", "2")]),
                StackContext {
                    retry_not_before: Some(ctx().now + Duration::from_secs(60)),
                    ..ctx()
                },
                Phase::Failed,
                "BackingOff",
                vec![],
            ),
        ];
        for (name, r, c, phase, reason, changes) in cases {
            let plan = plan_stack(&desired(&[("ApiCount", "3")]), &r, &c);
            let d = &plan.decisions[0];
            assert_eq!(
                (d.phase, d.reason),
                (phase, reason),
                "{name}: {}",
                d.message
            );
            let got: Vec<&str> = plan.changes.keys().map(String::as_str).collect();
            assert_eq!(got, changes, "{name}");
            assert!(plan.cancel.is_none(), "{name}");
        }
        let rolled_back = plan_stack(
            &desired(&[("ApiCount", "3")]),
            &rack("UPDATE_ROLLBACK_COMPLETE", &[("ApiCount", "2")]),
            &StackContext {
                failure_reason: Some(
                    "ServiceWebApi: not authorized to perform iam:PassRole".into(),
                ),
                ..ours
            },
        );
        assert!(
            rolled_back.decisions[0].message.contains("iam:PassRole"),
            "the permission CloudFormation named"
        );
    }

    #[test]
    fn several_changes_are_one_batch_and_secrets_stay_unsent() {
        let r = rack(
            "UPDATE_COMPLETE",
            &[("ApiCount", "2"), ("Private", "No"), ("Tenancy", "default")],
        );
        let plan = plan_stack(
            &desired(&[
                ("ApiCount", "3"),
                ("Private", "Yes"),
                ("Tenancy", "default"),
            ]),
            &r,
            &ctx(),
        );
        assert_eq!(
            plan.changes,
            desired(&[("ApiCount", "3"), ("Private", "Yes")])
        );
        let params = update_parameters(&r, &plan.changes);
        assert_eq!(params.len(), 4, "every parameter of the stack");
        let given: Vec<(&str, Option<&str>)> = params
            .iter()
            .map(|p| (p.key.as_str(), p.value.as_deref()))
            .collect();
        assert_eq!(
            given,
            vec![
                ("ApiCount", Some("3")),
                ("Password", None),
                ("Private", Some("Yes")),
                ("Tenancy", None)
            ]
        );
    }

    #[test]
    fn a_parameter_the_template_does_not_declare_is_blocked() {
        let plan = plan_stack(
            &desired(&[("ECSExec", "Yes")]),
            &rack("UPDATE_COMPLETE", &[("ApiCount", "2")]),
            &ctx(),
        );
        assert_eq!(
            (plan.decisions[0].phase, plan.decisions[0].reason),
            (Phase::Blocked, "NotDeclared")
        );
        assert!(plan.changes.is_empty());
    }
}
