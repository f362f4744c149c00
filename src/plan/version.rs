//! The version method: the rack version changes with a stack update to the target version's
//! template, behind the downgrade gate.

use std::collections::BTreeSet;
use std::time::SystemTime;

use super::gate::{downgrade_gate, EcsExecState, Gate};
use super::owner::Ownership;
use super::stack::{in_progress, InFlight};
use super::{rollback_cause, round_secs, Action, Decision, Phase, StackUpdate};
use crate::model::{ObservedRack, RackVersion, StackParameter, ECS_EXEC, VERSION_PARAM};

/// The version planner's memory and settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionContext {
    pub now: SystemTime,
    /// The version this controller last asked CloudFormation for (written down with the
    /// update's token before it was sent), until seen applied or failed.
    pub attempted: Option<RackVersion>,
    /// Whose the stack's latest update is.
    pub ownership: Ownership,
    /// The controller cancelled its update already.
    pub cancelled: bool,
    /// The controller's update is failing: its new API tasks keep stopping (why).
    pub failing: Option<String>,
    /// Failed task launches that make a rollout (or a rollback) failing.
    pub failed_tasks_threshold: u32,
    pub retry_not_before: Option<SystemTime>,
    /// Why the last update failed, for the message while backing off.
    pub last_failure: Option<String>,
    /// Why the stack's last update failed, looked up after one of ours rolled back.
    pub failure_reason: Option<String>,
}

/// A `Version` decision with what the stack shows filled in, to be completed with a phase.
fn version_decision(desired: RackVersion, rack: &ObservedRack) -> Decision {
    Decision {
        param: VERSION_PARAM.to_string(),
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
    if let Some((phase, reason, message)) = stack_phase(desired, rack, ctx) {
        return d.with(phase, reason, message);
    }
    let gate = downgrade_gate(
        desired,
        stack.parameters.get(VERSION_PARAM).map(String::as_str),
        target,
        ecs,
    );
    match &gate {
        Gate::Refused(msg) => return d.with(Phase::Blocked, "DowngradeBlocked", msg.clone()),
        Gate::Holding(msg) => return d.with(Phase::Blocked, "DowngradeWaiting", msg.clone()),
        Gate::Allowed | Gate::NotNeeded => {}
    }
    if !ecs.in_flight.is_empty() {
        // Whatever any phase says (a rollout Failed at its timeout may still be rolling).
        let message = format!(
            "waiting for the deployments of {} to complete before updating the stack to version {desired}",
            ecs.in_flight.join(", ")
        );
        return d.with(Phase::Waiting, "ServicesRolling", message);
    }
    if let Some(at) = ctx.retry_not_before.filter(|at| *at > ctx.now) {
        let wait = at.duration_since(ctx.now).unwrap_or_default();
        let message = format!(
            "the last update to version {desired} failed{}; next attempt in {}",
            super::why(ctx.last_failure.as_deref()),
            humantime::format_duration(round_secs(wait))
        );
        return d.with(Phase::Failed, "BackingOff", message);
    }
    let parameters = update_parameters(desired, rack, target, ecs);
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
        reuse_template: false,
        parameters,
    }));
    d.with(Phase::Progressing, "UpdatingStack", message)
}

/// What the stack's own state decides: an update under way (ours or not), a stack that needs
/// repair, the version reached, or our update rolled back.
fn stack_phase(
    desired: RackVersion,
    rack: &ObservedRack,
    ctx: &VersionContext,
) -> Option<(Phase, &'static str, String)> {
    let stack = &rack.stack;
    let ours = ctx.ownership.is_ours() && ctx.attempted == Some(desired);
    let (name, status) = (&stack.name, &stack.status);
    let update = InFlight {
        ownership: &ctx.ownership,
        cancelled: ctx.cancelled,
        failing: ctx.failing.as_deref(),
        threshold: ctx.failed_tasks_threshold,
    };
    let what = format!("to version {desired}");
    if let Some(held) = in_progress(rack, &what, ours, &update) {
        return Some(held);
    }
    if stack.version() == Some(desired) {
        let message = format!("stack {name} runs version {desired} ({status})");
        return Some((Phase::Converged, "Converged", message));
    }
    if ours && status.contains("ROLLBACK") {
        let reason = rollback_cause(ctx.failure_reason.as_ref(), rack);
        let message = format!(
            "the update of stack {name} to version {desired} was rolled back ({status}): {reason}"
        );
        return Some((Phase::Failed, "StackUpdateRolledBack", message));
    }
    None
}

/// Every parameter the target template declares that can be given: `Version`, `ECSExec`
/// (kept as the controller has it) and the computed ones (as convox sends them) with
/// values, the rest `UsePreviousValue`. Parameters the
/// target does not declare are left out; those only the target declares get its default.
fn update_parameters(
    desired: RackVersion,
    rack: &ObservedRack,
    target: &BTreeSet<String>,
    ecs: &EcsExecState,
) -> Vec<StackParameter> {
    let computed = rack.computed_values();
    target
        .iter()
        .filter_map(|key| {
            let value = if key == VERSION_PARAM {
                Some(desired.to_string())
            } else if key == ECS_EXEC.name {
                ecs.value_to_keep()
            } else {
                computed.get(key).cloned()
            };
            match value {
                Some(v) => Some(StackParameter {
                    key: key.clone(),
                    value: Some(v),
                }),
                None if rack.stack.parameters.contains_key(key) => Some(StackParameter {
                    key: key.clone(),
                    value: None,
                }),
                None => None,
            }
        })
        .collect()
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
            declared: Default::default(),
            stack: StackSnapshot {
                outputs: BTreeMap::new(),
                last_updated: None,
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
            },
            cluster: "c".into(),
            light: false,
            services: Vec::new(),
            update_token: Default::default(),
            rollback_since: None,
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

    /// What the gate sees: the desired value, the values on every revision, whether a
    /// deployment is in flight.
    fn ecs(desired: Option<&str>, running: &[&str], in_flight: bool) -> EcsExecState {
        EcsExecState {
            desired: desired.map(str::to_string),
            running: running.iter().map(|s| s.to_string()).collect(),
            in_flight: if in_flight {
                vec!["ServiceWebApi".into()]
            } else {
                Vec::new()
            },
            ..EcsExecState::default()
        }
    }

    fn ctx() -> VersionContext {
        VersionContext {
            now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            attempted: None,
            ownership: Ownership::Theirs("nothing written down".into()),
            cancelled: false,
            failing: None,
            failed_tasks_threshold: 3,
            retry_not_before: None,
            last_failure: None,
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
                ecs(Some("Yes"), &["Yes"], false),
                "NotNeeded",
            ),
            (
                "same version: no gate",
                CUR,
                old_template(),
                ecs(Some("Yes"), &["Yes"], false),
                "NotNeeded",
            ),
            (
                "target knows ECSExec: no gate",
                OLD,
                new_template(),
                ecs(Some("Yes"), &["Yes"], false),
                "NotNeeded",
            ),
            (
                "desired Yes: refused",
                OLD,
                old_template(),
                ecs(Some("Yes"), &["Yes"], false),
                "Refused",
            ),
            (
                "unmanaged but running Yes: refused",
                OLD,
                old_template(),
                ecs(None, &["Yes"], false),
                "Refused",
            ),
            (
                "desired No, still rolling: holding",
                OLD,
                old_template(),
                ecs(Some("No"), &["Yes", "No"], true),
                "Holding",
            ),
            (
                "desired No, failed: holding",
                OLD,
                old_template(),
                ecs(Some("No"), &["Yes"], false),
                "Holding",
            ),
            (
                "desired No, converged: allowed",
                OLD,
                old_template(),
                ecs(Some("No"), &["No"], false),
                "Allowed",
            ),
            (
                "unmanaged, running No: allowed",
                OLD,
                old_template(),
                ecs(None, &["No"], false),
                "Allowed",
            ),
            (
                "unmanaged, all No, but a deployment still in flight: holding",
                OLD,
                old_template(),
                ecs(None, &["No"], true),
                "Holding",
            ),
            (
                "unmanaged, a foreign Yes to No rollout in flight: refused while Yes runs",
                OLD,
                old_template(),
                ecs(None, &["Yes", "No"], true),
                "Refused",
            ),
            (
                "desired No, primaries No, a Yes task still draining: holding",
                OLD,
                old_template(),
                ecs(Some("No"), &["No", "Yes"], true),
                "Holding",
            ),
            (
                "desired No, a revision's labels not observed: holding",
                OLD,
                old_template(),
                EcsExecState {
                    unknown: vec!["web:7".into()],
                    ..ecs(Some("No"), &["No"], false)
                },
                "Holding",
            ),
            (
                "unmanaged, the stack parameter says Yes: refused",
                OLD,
                old_template(),
                EcsExecState {
                    stack: Some("Yes".into()),
                    ..ecs(None, &["No"], false)
                },
                "Refused",
            ),
            (
                "nothing observed at all: holding",
                OLD,
                old_template(),
                ecs(Some("No"), &[], false),
                "Holding",
            ),
        ];
        for (name, to, target, e, want) in cases {
            let got = match downgrade_gate(v(to), Some(CUR), &target, &e) {
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
    fn an_unknown_current_version_refuses_a_gated_target_only() {
        let no = ecs(Some("No"), &["No"], false);
        for current in [None, Some("latest"), Some("2026")] {
            let gate = downgrade_gate(v(OLD), current, &old_template(), &no);
            let Gate::Refused(m) = gate else {
                panic!("{current:?}: {gate:?}");
            };
            assert!(m.contains("current version is unknown"), "{m}");
            assert_eq!(
                downgrade_gate(v(OLD), current, &new_template(), &no),
                Gate::NotNeeded
            );
        }
    }

    #[test]
    fn decisions() {
        let converged_no = ecs(Some("No"), &["No"], false);
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
                ecs(Some("Yes"), &["Yes"], false),
                ctx(),
                Phase::Blocked,
                "DowngradeBlocked",
            ),
            (
                "no not converged holds it",
                rack("UPDATE_COMPLETE", CUR),
                ecs(Some("No"), &["Yes", "No"], true),
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
                    ownership: Ownership::Ours,
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
                    ownership: Ownership::Ours,
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
                "our update failing: cancelled, rolling back",
                rack("UPDATE_IN_PROGRESS", OLD),
                converged_no.clone(),
                VersionContext {
                    attempted: Some(v(OLD)),
                    ownership: Ownership::Ours,
                    failing: Some("ServiceWebApi: 3 new task(s) stopped".into()),
                    ..ctx()
                },
                Phase::Failed,
                "StackUpdateFailing",
            ),
            (
                "someone else's update to the same version: waited for, never cancelled",
                rack("UPDATE_IN_PROGRESS", OLD),
                converged_no.clone(),
                VersionContext {
                    attempted: Some(v(OLD)),
                    ownership: Ownership::Theirs("someone else's update".into()),
                    ..ctx()
                },
                Phase::Waiting,
                "StackUpdating",
            ),
            (
                "stack needs repair",
                rack("DELETE_FAILED", CUR),
                converged_no.clone(),
                ctx(),
                Phase::Blocked,
                "StackUnusable",
            ),
            (
                "the rollback failed too",
                rack("UPDATE_ROLLBACK_FAILED", CUR),
                converged_no.clone(),
                ctx(),
                Phase::Failed,
                "RollbackFailing",
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
            ownership: Ownership::Ours,
            failure_reason: Some("ServiceWebApi: tasks failed".into()),
            ..ctx()
        };
        let d = plan_version(
            v(OLD),
            &rack("UPDATE_ROLLBACK_COMPLETE", CUR),
            &old_template(),
            &ecs(Some("No"), &["No"], false),
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
            &ecs(Some("No"), &["No"], false),
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
            &ecs(None, &["Yes"], false),
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
    fn no_version_change_while_any_deployment_is_in_flight() {
        // Whatever the ECSExec phase says: here desired and running agree on Yes.
        let d = plan_version(
            v(NEW),
            &rack("UPDATE_COMPLETE", CUR),
            &new_template(),
            &ecs(Some("Yes"), &["Yes"], true),
            &ctx(),
        );
        assert_eq!((d.phase, d.reason), (Phase::Waiting, "ServicesRolling"));
        assert!(d.action.is_none());
    }
}
