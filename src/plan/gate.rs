//! The downgrade gate: a rack may only move to a version whose template does not declare
//! `ECSExec` once `ECSExec=No` has fully converged. It fails closed: it decides from what it
//! observes on every deployment and every task of the rack API services (and the stack's own
//! `ECSExec` parameter), whether or not the params file manages `ECSExec`, and anything it
//! does not know (the current version, a revision's labels, a deployment still in flight)
//! means "not now".

use std::collections::BTreeSet;

use crate::model::{ObservedRack, RackVersion, RolloutState, ECS_EXEC};

/// What the gate knows about `ECSExec` on the rack.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EcsExecState {
    /// The desired value, when the params file manages it.
    pub desired: Option<String>,
    /// Every value of `rack.ECSExec` on any deployment's or running task's revision (the
    /// default, `No`, where the label is absent).
    pub running: BTreeSet<String>,
    /// Revisions whose labels were not observed.
    pub unknown: Vec<String>,
    /// Services with a deployment still rolling, or more than one deployment.
    pub in_flight: Vec<String>,
    /// The stack's `ECSExec` parameter, when the running template declares it.
    pub stack: Option<String>,
}

impl EcsExecState {
    /// Everything the rack shows of `ECSExec`, with the desired value when managed.
    pub fn observe(desired: Option<&str>, rack: &ObservedRack) -> EcsExecState {
        let mut state = EcsExecState {
            desired: desired.map(str::to_string),
            stack: rack.stack.parameters.get(ECS_EXEC.name).cloned(),
            ..EcsExecState::default()
        };
        for s in &rack.services {
            for arn in s.service.task_definitions() {
                match s.value_in(arn, &ECS_EXEC) {
                    Some(v) => {
                        state.running.insert(v.to_string());
                    }
                    None => state.unknown.push(arn.to_string()),
                }
            }
            let rolling = s
                .service
                .deployments
                .iter()
                .any(|d| d.rollout_state != Some(RolloutState::Completed));
            if rolling || s.service.deployments.len() != 1 {
                state.in_flight.push(s.target.service.clone());
            }
        }
        state.unknown.sort();
        state.unknown.dedup();
        state
    }

    /// The value a stack update should keep for `ECSExec`: the desired one, else the stack's,
    /// else the one every revision agrees on.
    pub fn value_to_keep(&self) -> Option<String> {
        self.desired
            .clone()
            .or_else(|| self.stack.clone())
            .or_else(|| {
                (self.running.len() == 1)
                    .then(|| self.running.iter().next().cloned())
                    .flatten()
            })
    }

    fn yes_anywhere(&self) -> bool {
        self.running.contains("Yes") || self.stack.as_deref() == Some("Yes")
    }
}

/// The downgrade gate's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Not a downgrade to a version that predates `ECSExec`: no gate.
    NotNeeded,
    /// A gated downgrade whose conditions hold.
    Allowed,
    /// Refused: `ECSExec` is (or is wanted) `Yes`, or the current version is unknown.
    Refused(String),
    /// Holding: `ECSExec=No` has not converged on every task yet, or something is unknown.
    Holding(String),
}

/// PRODUCT §5: a downgrade to a version whose template does not declare `ECSExec` is only
/// allowed once `ECSExec=No` has fully converged. `current` is the stack's `Version`
/// parameter as it reads (absent or malformed means unknown).
pub fn downgrade_gate(
    to: RackVersion,
    current: Option<&str>,
    target: &BTreeSet<String>,
    ecs: &EcsExecState,
) -> Gate {
    if target.contains(ECS_EXEC.name) {
        return Gate::NotNeeded;
    }
    let Some(from) = current.and_then(RackVersion::parse) else {
        return Gate::Refused(format!(
            "the rack's current version is unknown (its Version stack parameter is {}), so whether {to} is a \
             downgrade past ECSExec cannot be told; refusing: check the stack's Version parameter",
            current.map(|c| format!("{c:?}")).unwrap_or_else(|| "missing".into())
        ));
    };
    if to >= from {
        return Gate::NotNeeded;
    }
    let strand =
        format!("version {to} predates ECSExec: downgrading from {from} now would strand it");
    match ecs.desired.as_deref() {
        Some("Yes") => {
            return Gate::Refused(format!(
                "{strand}; the params file wants ECSExec=Yes: set ECSExec: \"No\" first, the downgrade then waits for it \
                 to converge"
            ))
        }
        None if ecs.yes_anywhere() => {
            return Gate::Refused(format!(
                "{strand}; the rack runs ECSExec=Yes ({}): set ECSExec: \"No\" in the params file first, the downgrade \
                 then waits for it to converge",
                where_yes(ecs)
            ))
        }
        _ => {}
    }
    if ecs.yes_anywhere() {
        return Gate::Holding(format!(
            "holding the downgrade to {to} until ECSExec=No has converged: {} still run Yes",
            where_yes(ecs)
        ));
    }
    if !ecs.unknown.is_empty() {
        return Gate::Holding(format!(
            "holding the downgrade to {to}: the labels of {} were not observed",
            ecs.unknown.join(", ")
        ));
    }
    if !ecs.in_flight.is_empty() {
        return Gate::Holding(format!(
            "holding the downgrade to {to} until the deployments of {} have completed",
            ecs.in_flight.join(", ")
        ));
    }
    if ecs.running.is_empty() {
        return Gate::Holding(format!(
            "holding the downgrade to {to}: no revision of the rack API was observed"
        ));
    }
    Gate::Allowed
}

fn where_yes(ecs: &EcsExecState) -> String {
    let mut places = Vec::new();
    if ecs.stack.as_deref() == Some("Yes") {
        places.push("the stack parameter");
    }
    if ecs.running.contains("Yes") {
        places.push("revisions of the rack API's deployments or tasks");
    }
    places.join(" and ")
}
