//! The downgrade gate: a rack may only move to a version whose template does not declare
//! `ECSExec` once `ECSExec=No` has fully converged.

use std::collections::BTreeSet;

use super::relabel::observed_value;
use super::{Decision, Phase};
use crate::model::{ObservedRack, RackVersion, ECS_EXEC};

/// What the downgrade gate needs to know about `ECSExec`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EcsExecState {
    /// The desired value, when the params file manages it.
    pub desired: Option<String>,
    /// The value every service's primary revision agrees on (`None` while they differ).
    pub observed: Option<String>,
    /// The phase of the `ECSExec` decision this run, when managed.
    pub phase: Option<Phase>,
}

impl EcsExecState {
    /// From this run's `ECSExec` decision when the parameter is managed, else from what the
    /// rack runs.
    pub fn of(decisions: &[Decision], rack: &ObservedRack) -> EcsExecState {
        decisions
            .iter()
            .find(|d| d.param == ECS_EXEC.name)
            .map(EcsExecState::from_decision)
            .unwrap_or_else(|| EcsExecState {
                observed: observed_value(&ECS_EXEC, rack),
                ..EcsExecState::default()
            })
    }

    pub fn from_decision(d: &Decision) -> EcsExecState {
        EcsExecState {
            desired: Some(d.desired.clone()),
            observed: d.observed.clone(),
            phase: Some(d.phase),
        }
    }
}

/// The downgrade gate's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Not a downgrade to a version that predates `ECSExec`: no gate.
    NotNeeded,
    /// A gated downgrade whose conditions hold.
    Allowed,
    /// Refused: `ECSExec` is (or is wanted) `Yes`.
    Refused(String),
    /// Holding: `ECSExec=No` has not converged yet.
    Holding(String),
}

/// PRODUCT §5: a downgrade to a version whose template does not declare `ECSExec` is only
/// allowed once `ECSExec=No` has fully converged.
pub fn downgrade_gate(
    to: RackVersion,
    current: Option<RackVersion>,
    target: &BTreeSet<String>,
    ecs: &EcsExecState,
) -> Gate {
    let downgrade = current.is_some_and(|c| to < c);
    if !downgrade || target.contains(ECS_EXEC.name) {
        return Gate::NotNeeded;
    }
    let from = current.map(|c| c.to_string()).unwrap_or_default();
    let wanted = ecs.desired.as_deref().or(ecs.observed.as_deref());
    if wanted == Some("Yes") {
        return Gate::Refused(format!(
            "version {to} predates ECSExec and the rack {} ECSExec=Yes: downgrading from {from} now would strand \
             it; set ECSExec: \"No\" in the params file first, the downgrade then waits for it to converge",
            if ecs.desired.is_some() { "wants" } else { "runs" }
        ));
    }
    match (&ecs.desired, ecs.phase) {
        (Some(_), Some(Phase::Converged)) => Gate::Allowed,
        (Some(_), phase) => Gate::Holding(format!(
            "holding the downgrade to {to} until ECSExec=No has converged (ECSExec is {})",
            phase.map(|p| p.as_str()).unwrap_or("not observed yet")
        )),
        (None, _) if ecs.observed.as_deref() == Some("No") => Gate::Allowed,
        (None, _) => Gate::Holding(format!(
            "holding the downgrade to {to} until every rack API service runs ECSExec=No (the services disagree)"
        )),
    }
}
