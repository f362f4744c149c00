//! The version method: the rack version changes with a stack update to the target version's
//! template, behind the downgrade gate.

use std::collections::BTreeSet;
use std::time::SystemTime;

use super::gate::{downgrade_gate, EcsExecState, Gate};
use super::{round_secs, Action, Decision, Phase, StackUpdate};
use crate::model::{
    ObservedRack, RackVersion, StackParameter, StackState, ECS_EXEC, VERSION_PARAM,
};

/// The version planner's memory and settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionContext {
    pub now: SystemTime,
    /// The version this controller last asked CloudFormation for, until seen applied or failed.
    pub attempted: Option<RackVersion>,
    pub retry_not_before: Option<SystemTime>,
    /// Why the stack's last update failed, looked up after one of ours rolled back.
    pub failure_reason: Option<String>,
}

/// A `Version` decision with what the stack shows filled in, to be completed with a phase.
fn version_decision(desired: RackVersion, rack: &ObservedRack) -> Decision {
    Decision {
        param: VERSION_PARAM,
        desired: desired.to_string(),
        observed: rack.stack.parameters.get(VERSION_PARAM).cloned(),
        phase: Phase::Unknown,
        reason: "NotObserved",
        message: String::new(),
        drift: rack.stack.version() != Some(desired),
        action: None,
        pending: Vec::new(),
        services: Vec::new(),
    }
}

/// The `Version` decision when the target template cannot be read: nothing can be decided,
/// so nothing is changed.
pub fn version_template_unavailable(
    desired: RackVersion,
    rack: &ObservedRack,
    error: &str,
) -> Decision {
    let message =
        format!("cannot read the template of version {desired}, so nothing is changed: {error}");
    version_decision(desired, rack).with(Phase::Failed, "TemplateUnavailable", message)
}

/// Decides the next step for the rack `Version`: nothing, wait, refuse or hold a downgrade,
/// or update the stack to the target template.
pub fn plan_version(
    desired: RackVersion,
    rack: &ObservedRack,
    target: &BTreeSet<String>,
    ecs: &EcsExecState,
    ctx: &VersionContext,
) -> Decision {
    let stack = &rack.stack;
    let current = stack.version();
    let d = version_decision(desired, rack);
    let ours = ctx.attempted == Some(desired);
    match stack.state() {
        StackState::InProgress if ours => {
            let message = format!(
                "stack {} is {}: updating it to version {desired}",
                stack.name, stack.status
            );
            return d.with(Phase::Progressing, "UpdatingStack", message);
        }
        StackState::InProgress => {
            let message = format!(
                "stack {} is {}: CloudFormation owns the rack until it settles; no changes until then",
                stack.name, stack.status
            );
            return d.with(Phase::Waiting, "StackUpdating", message);
        }
        StackState::Unusable => {
            let message = format!(
                "stack {} is {}: repair the stack (see its CloudFormation events) before the controller can act",
                stack.name, stack.status
            );
            return d.with(Phase::Blocked, "StackUnusable", message);
        }
        StackState::Stable => {}
    }
    if current == Some(desired) {
        let message = format!(
            "stack {} runs version {desired} ({})",
            stack.name, stack.status
        );
        return d.with(Phase::Converged, "Converged", message);
    }
    if ours && stack.status.contains("ROLLBACK") {
        let reason = ctx
            .failure_reason
            .clone()
            .or_else(|| stack.status_reason.clone())
            .unwrap_or_else(|| "CloudFormation gave no reason".into());
        let message = format!(
            "the update of stack {} to version {desired} was rolled back ({}): {reason}",
            stack.name, stack.status
        );
        return d.with(Phase::Failed, "StackUpdateRolledBack", message);
    }
    let gate = downgrade_gate(desired, current, target, ecs);
    match &gate {
        Gate::Refused(msg) => return d.with(Phase::Blocked, "DowngradeBlocked", msg.clone()),
        Gate::Holding(msg) => return d.with(Phase::Blocked, "DowngradeWaiting", msg.clone()),
        Gate::Allowed | Gate::NotNeeded => {}
    }
    if matches!(ecs.phase, Some(Phase::Progressing | Phase::Waiting)) {
        let message =
            format!("waiting for the ECSExec rollout to finish before updating the stack to version {desired}");
        return d.with(Phase::Waiting, "EcsExecRollingOut", message);
    }
    if let Some(at) = ctx.retry_not_before.filter(|at| *at > ctx.now) {
        let wait = at.duration_since(ctx.now).unwrap_or_default();
        let message = format!(
            "the last update to version {desired} failed; next attempt in {}",
            humantime::format_duration(round_secs(wait))
        );
        return d.with(Phase::Failed, "BackingOff", message);
    }
    let parameters: Vec<StackParameter> = target
        .iter()
        .filter_map(|key| {
            let value = if key == VERSION_PARAM {
                Some(desired.to_string())
            } else if key == ECS_EXEC.name {
                // Keep the rack as the controller has it: the desired value, or what runs.
                ecs.desired.clone().or_else(|| ecs.observed.clone())
            } else {
                None
            };
            match value {
                Some(v) => Some(StackParameter {
                    key: key.clone(),
                    value: Some(v),
                }),
                None if stack.parameters.contains_key(key) => Some(StackParameter {
                    key: key.clone(),
                    value: None,
                }),
                // Declared by the target only: its default applies.
                None => None,
            }
        })
        .collect();
    let downgrade = current.is_some_and(|c| desired < c);
    let given = parameters.iter().filter(|p| p.value.is_some()).count();
    let message = format!(
        "updating stack {} from {} to {desired} ({}{}): {} parameters, {given} given, the rest kept",
        stack.name,
        current.map(|c| c.to_string()).unwrap_or_else(|| "an unknown version".into()),
        if downgrade { "downgrade" } else { "upgrade" },
        if gate == Gate::Allowed { ", ECSExec=No has converged" } else { "" },
        parameters.len(),
    );
    let mut d = d;
    d.action = Some(Action::UpdateStack(StackUpdate {
        from: current.map(|c| c.to_string()),
        to: desired.to_string(),
        downgrade,
        parameters,
    }));
    d.with(Phase::Progressing, "UpdatingStack", message)
}

#[cfg(test)]
mod version_tests {
    use super::*;
    use crate::model::{StackSnapshot, ECS_EXEC};
    use std::collections::BTreeMap;
    use std::time::Duration;

    fn v(s: &str) -> RackVersion {
        RackVersion::parse(s).expect("version")
    }

    fn rack(status: &str, version: &str) -> ObservedRack {
        ObservedRack {
            stack: StackSnapshot {
                name: "convox".into(),
                status: status.into(),
                status_reason: Some(
                    "The following resource(s) failed to update: [ServiceWebApi].".into(),
                ),
                parameters: BTreeMap::from([
                    ("Version".to_string(), version.to_string()),
                    ("Password".to_string(), "****".to_string()),
                    ("NLB".to_string(), "No".to_string()),
                ]),
                resources: BTreeMap::new(),
            },
            cluster: "c".into(),
            services: Vec::new(),
        }
    }

    /// The 2024 template: no ECSExec, no NLB, but InternalSuffix (absent from the stack).
    fn old_template() -> BTreeSet<String> {
        ["Version", "Password", "InternalSuffix"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    fn new_template() -> BTreeSet<String> {
        ["Version", "Password", "NLB", "ECSExec"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    fn ecs(desired: Option<&str>, observed: Option<&str>, phase: Option<Phase>) -> EcsExecState {
        EcsExecState {
            desired: desired.map(str::to_string),
            observed: observed.map(str::to_string),
            phase,
        }
    }

    fn ctx() -> VersionContext {
        VersionContext {
            now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            attempted: None,
            retry_not_before: None,
            failure_reason: None,
        }
    }

    const OLD: &str = "20240205000000";
    const CUR: &str = "20260418101514";
    const NEW: &str = "20261101000000";

    #[test]
    fn gate_table() {
        let cases: Vec<(&str, &str, BTreeSet<String>, EcsExecState, &str)> = vec![
            (
                "upgrade: no gate",
                NEW,
                old_template(),
                ecs(Some("Yes"), Some("Yes"), Some(Phase::Converged)),
                "NotNeeded",
            ),
            (
                "same version: no gate",
                CUR,
                old_template(),
                ecs(Some("Yes"), Some("Yes"), None),
                "NotNeeded",
            ),
            (
                "target knows ECSExec: no gate",
                OLD,
                new_template(),
                ecs(Some("Yes"), Some("Yes"), None),
                "NotNeeded",
            ),
            (
                "desired Yes: refused",
                OLD,
                old_template(),
                ecs(Some("Yes"), Some("Yes"), Some(Phase::Converged)),
                "Refused",
            ),
            (
                "unmanaged but running Yes: refused",
                OLD,
                old_template(),
                ecs(None, Some("Yes"), None),
                "Refused",
            ),
            (
                "desired No, still rolling: holding",
                OLD,
                old_template(),
                ecs(Some("No"), None, Some(Phase::Progressing)),
                "Holding",
            ),
            (
                "desired No, failed: holding",
                OLD,
                old_template(),
                ecs(Some("No"), Some("Yes"), Some(Phase::Failed)),
                "Holding",
            ),
            (
                "desired No, converged: allowed",
                OLD,
                old_template(),
                ecs(Some("No"), Some("No"), Some(Phase::Converged)),
                "Allowed",
            ),
            (
                "unmanaged, running No: allowed",
                OLD,
                old_template(),
                ecs(None, Some("No"), None),
                "Allowed",
            ),
            (
                "unmanaged, services disagree: holding",
                OLD,
                old_template(),
                ecs(None, None, None),
                "Holding",
            ),
        ];
        for (name, to, target, e, want) in cases {
            let got = match downgrade_gate(v(to), Some(v(CUR)), &target, &e) {
                Gate::NotNeeded => "NotNeeded",
                Gate::Allowed => "Allowed",
                Gate::Refused(m) => {
                    assert!(m.contains("ECSExec: \"No\""), "{name}: {m}");
                    "Refused"
                }
                Gate::Holding(_) => "Holding",
            };
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn decisions() {
        let converged_no = ecs(Some("No"), Some("No"), Some(Phase::Converged));
        let cases: Vec<(
            &str,
            ObservedRack,
            EcsExecState,
            VersionContext,
            Phase,
            &str,
        )> = vec![
            (
                "runs the desired version",
                rack("UPDATE_COMPLETE", OLD),
                converged_no.clone(),
                ctx(),
                Phase::Converged,
                "Converged",
            ),
            (
                "yes blocks the downgrade",
                rack("UPDATE_COMPLETE", CUR),
                ecs(Some("Yes"), Some("Yes"), Some(Phase::Converged)),
                ctx(),
                Phase::Blocked,
                "DowngradeBlocked",
            ),
            (
                "no not converged holds it",
                rack("UPDATE_COMPLETE", CUR),
                ecs(Some("No"), None, Some(Phase::Progressing)),
                ctx(),
                Phase::Blocked,
                "DowngradeWaiting",
            ),
            (
                "no converged: update the stack",
                rack("UPDATE_COMPLETE", CUR),
                converged_no.clone(),
                ctx(),
                Phase::Progressing,
                "UpdatingStack",
            ),
            (
                "someone else's stack update: wait",
                rack("UPDATE_IN_PROGRESS", CUR),
                converged_no.clone(),
                ctx(),
                Phase::Waiting,
                "StackUpdating",
            ),
            (
                "our stack update: progressing",
                rack("UPDATE_IN_PROGRESS", OLD),
                converged_no.clone(),
                VersionContext {
                    attempted: Some(v(OLD)),
                    ..ctx()
                },
                Phase::Progressing,
                "UpdatingStack",
            ),
            (
                "our update rolled back: failed",
                rack("UPDATE_ROLLBACK_COMPLETE", CUR),
                converged_no.clone(),
                VersionContext {
                    attempted: Some(v(OLD)),
                    failure_reason: Some("ServiceWebApi: boom".into()),
                    ..ctx()
                },
                Phase::Failed,
                "StackUpdateRolledBack",
            ),
            (
                "after a failure: back off",
                rack("UPDATE_ROLLBACK_COMPLETE", CUR),
                converged_no.clone(),
                VersionContext {
                    retry_not_before: Some(ctx().now + Duration::from_secs(60)),
                    ..ctx()
                },
                Phase::Failed,
                "BackingOff",
            ),
            (
                "stack needs repair",
                rack("UPDATE_ROLLBACK_FAILED", CUR),
                converged_no.clone(),
                ctx(),
                Phase::Blocked,
                "StackUnusable",
            ),
        ];
        for (name, r, e, c, phase, reason) in cases {
            let d = plan_version(v(OLD), &r, &old_template(), &e, &c);
            assert_eq!(
                (d.phase, d.reason),
                (phase, reason),
                "{name}: {}",
                d.message
            );
            assert_eq!(
                d.action.is_some(),
                reason == "UpdatingStack" && c.attempted.is_none(),
                "{name}"
            );
        }
    }

    #[test]
    fn a_rolled_back_update_names_the_failing_resource() {
        let c = VersionContext {
            attempted: Some(v(OLD)),
            failure_reason: Some("ServiceWebApi: tasks failed".into()),
            ..ctx()
        };
        let d = plan_version(
            v(OLD),
            &rack("UPDATE_ROLLBACK_COMPLETE", CUR),
            &old_template(),
            &ecs(Some("No"), Some("No"), Some(Phase::Converged)),
            &c,
        );
        assert!(
            d.message.contains("ServiceWebApi: tasks failed"),
            "{}",
            d.message
        );
    }

    #[test]
    fn update_parameters_are_exactly_what_the_target_declares() {
        let d = plan_version(
            v(OLD),
            &rack("UPDATE_COMPLETE", CUR),
            &old_template(),
            &ecs(Some("No"), Some("No"), Some(Phase::Converged)),
            &ctx(),
        );
        let Some(Action::UpdateStack(u)) = d.action else {
            panic!("no stack update: {}", d.message);
        };
        assert!(u.downgrade);
        assert_eq!(
            u.parameters,
            vec![
                // InternalSuffix: declared by the target only, so its default applies.
                StackParameter {
                    key: "Password".into(),
                    value: None
                },
                StackParameter {
                    key: "Version".into(),
                    value: Some(OLD.into())
                },
            ]
        );
        // An upgrade to a template that declares ECSExec passes the value the rack should keep.
        let d = plan_version(
            v(NEW),
            &rack("UPDATE_COMPLETE", CUR),
            &new_template(),
            &ecs(None, Some("Yes"), None),
            &ctx(),
        );
        let Some(Action::UpdateStack(u)) = d.action else {
            panic!("no stack update: {}", d.message);
        };
        assert!(!u.downgrade);
        assert_eq!(
            u.parameters,
            vec![
                StackParameter {
                    key: ECS_EXEC.name.into(),
                    value: Some("Yes".into())
                },
                StackParameter {
                    key: "NLB".into(),
                    value: None
                },
                StackParameter {
                    key: "Password".into(),
                    value: None
                },
                StackParameter {
                    key: "Version".into(),
                    value: Some(NEW.into())
                },
            ]
        );
    }

    #[test]
    fn no_version_change_while_ecs_exec_rolls() {
        let d = plan_version(
            v(NEW),
            &rack("UPDATE_COMPLETE", CUR),
            &new_template(),
            &ecs(Some("Yes"), None, Some(Phase::Progressing)),
            &ctx(),
        );
        assert_eq!((d.phase, d.reason), (Phase::Waiting, "EcsExecRollingOut"));
        assert!(d.action.is_none());
    }
}
