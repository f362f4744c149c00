//! The decision: given the desired state and what was observed of the rack, what is the next
//! step?
//!
//! Pure: no I/O, no clock (the caller passes `now`), no AWS types. Every input that matters
//! is in a context struct or the [`ObservedRack`](crate::model::ObservedRack), so a decision
//! can be replayed in a table test. One module per way of changing a parameter:
//! [`relabel`] (a label on the rack API's task definitions, rolled service by service),
//! [`version`] (the rack version, a stack update to another template), and [`gate`] (the
//! downgrade gate both consult).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::{ObservedRack, StackParameter};

pub mod gate;
pub mod hold;
pub mod owner;
pub mod reads;
pub mod relabel;
pub mod requirements;
pub mod stack;
pub mod version;

pub use gate::{downgrade_gate, EcsExecState, Gate};
pub(crate) use hold::stack_hold;
pub use owner::{ownership, Ownership};
pub use relabel::{observed_value, plan, OwnRollout, PlanContext, Roll, RollPurpose, RollTo};
pub use stack::{plan_stack, StackContext, StackPlan};
pub use version::{plan_version, version_template_unavailable, VersionContext};

/// Where a managed parameter stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub enum Phase {
    /// Every target service runs the desired value, rollouts completed, nothing draining.
    Converged,
    /// A rollout towards the desired value is under way (or about to start).
    Progressing,
    /// Something else owns the rack for now (a stack update, a deployment not ours).
    Waiting,
    /// The controller will not act until a person changes something.
    Blocked,
    /// A rollout failed, timed out, or an action errored; retried with backoff.
    Failed,
    /// Not observed yet, or the rack could not be observed.
    Unknown,
}

impl Phase {
    pub const ALL: [Phase; 6] = [
        Phase::Converged,
        Phase::Progressing,
        Phase::Waiting,
        Phase::Blocked,
        Phase::Failed,
        Phase::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Converged => "Converged",
            Phase::Progressing => "Progressing",
            Phase::Waiting => "Waiting",
            Phase::Blocked => "Blocked",
            Phase::Failed => "Failed",
            Phase::Unknown => "Unknown",
        }
    }

    /// Phases after which `apply` stops waiting.
    pub fn is_final(self) -> bool {
        matches!(self, Phase::Converged | Phase::Blocked | Phase::Failed)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The write a decision asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Action {
    /// Point a service at a relabelled revision (registered or reused), or at an existing one.
    Roll(Roll),
    /// Update the rack stack: parameters, or another version's template (with parameters).
    UpdateStack(StackUpdate),
    /// Cancel the controller's own stack update, which CloudFormation then rolls back.
    CancelStackUpdate,
}

/// An `UpdateStack` to another rack version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StackUpdate {
    pub from: Option<String>,
    pub to: String,
    pub downgrade: bool,
    /// The stack keeps its template (`UsePreviousTemplate`): only parameters change.
    pub reuse_template: bool,
    /// Every parameter the target template declares that can be given: changed ones with a
    /// value, the rest `UsePreviousValue`. Parameters the target does not declare are left out.
    pub parameters: Vec<StackParameter>,
}

/// A service the parameter still has to be rolled to, for `plan`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingChange {
    pub service: String,
    pub from_task_definition: String,
    pub from_value: Option<String>,
    pub to_value: String,
}

/// Per-service progress, for status and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceProgress {
    pub service: String,
    pub state: ServiceState,
    /// The value in the primary deployment's revision.
    pub value: Option<String>,
    pub task_definition: Option<String>,
    pub running: u32,
    pub desired: u32,
    /// Tasks still running from the deployments being replaced.
    #[serde(default)]
    pub draining: u32,
    /// When the primary deployment started (RFC 3339).
    #[serde(default)]
    pub since: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceState {
    Converged,
    RollingOut,
    /// Pointed back at its previous revision after a failed rollout, and rolling there.
    RollingBack,
    Pending,
    Busy,
    Failed,
    /// The ECS service is `DRAINING` or `INACTIVE`.
    Inactive,
    Unknown,
}

impl ServiceState {
    /// A deployment of the service is running (for the rollouts-in-progress metric).
    pub fn rolling(self) -> bool {
        matches!(self, ServiceState::RollingOut | ServiceState::RollingBack)
    }
}

/// The planner's answer for one parameter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub param: String,
    pub desired: String,
    /// The value every service's primary revision agrees on; `None` while they differ.
    pub observed: Option<String>,
    pub phase: Phase,
    /// A CamelCase reason, as in Kubernetes conditions.
    pub reason: &'static str,
    pub message: String,
    /// Some service's primary revision does not hold the desired value.
    pub drift: bool,
    pub action: Option<Action>,
    pub pending: Vec<PendingChange>,
    pub services: Vec<ServiceProgress>,
}

impl Decision {
    pub(crate) fn with(mut self, phase: Phase, reason: &'static str, message: String) -> Decision {
        self.phase = phase;
        self.reason = reason;
        self.message = message;
        self
    }

    /// The decision turned into `Blocked`, with no write.
    pub fn blocked(mut self, reason: &'static str, message: String) -> Decision {
        self.action = None;
        self.with(Phase::Blocked, reason, message)
    }

    pub(crate) fn act(mut self, roll: Roll) -> Decision {
        self.action = Some(Action::Roll(roll));
        self
    }
}

/// Why an update of the controller's rolled back: the first failed resource from the stack
/// events, else the stack's own status reason.
pub(crate) fn rollback_cause(failure_reason: Option<&String>, rack: &ObservedRack) -> String {
    failure_reason
        .cloned()
        .or_else(|| rack.stack.status_reason.clone())
        .unwrap_or_else(|| "CloudFormation gave no reason".into())
}

/// " (why)" for a message, when there is a why.
pub(crate) fn why(failure: Option<&str>) -> String {
    failure.map(|f| format!(" ({f})")).unwrap_or_default()
}

pub(crate) fn round_secs(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs() + u64::from(d.subsec_nanos() > 0))
}

/// What the last look said of a parameter: its phase, reason and desired value.
pub type Said = (Phase, String, String);

/// Whether the decisions of a light look (the services read, the stack as an earlier look
/// read it) stand: none writes, each is a change in progress, and each says of its
/// parameter what the last look said (`before`: phase, reason and desired value). Anything
/// else (a write, a change converged, failed or waiting, a claim that rests on the stack
/// such as another parameter's convergence) is decided again once the stack has been read.
pub fn light_look_stands<'a>(
    decisions: impl IntoIterator<Item = &'a Decision>,
    writes: bool,
    before: impl Fn(&str) -> Option<Said>,
) -> bool {
    !writes
        && decisions.into_iter().all(|d| {
            d.action.is_none()
                && d.phase == Phase::Progressing
                && before(&d.param).is_some_and(|(phase, reason, desired)| {
                    phase == d.phase && reason == d.reason && desired == d.desired
                })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(param: &str, phase: Phase, reason: &'static str) -> Decision {
        Decision {
            param: param.into(),
            desired: "Yes".into(),
            observed: None,
            phase,
            reason,
            message: String::new(),
            drift: false,
            action: None,
            pending: Vec::new(),
            services: Vec::new(),
        }
    }

    #[test]
    #[rustfmt::skip]
    fn a_light_look_stands_only_when_it_writes_nothing_and_says_nothing_new() {
        let rolling = || decision("ECSExec", Phase::Progressing, "RollingOut");
        let said = |phase, reason: &str| Some((phase, reason.to_string(), "Yes".to_string()));
        let before = |p: &str| match p {
            "ECSExec" => said(Phase::Progressing, "RollingOut"),
            "ApiCount" => said(Phase::Converged, "Converged"),
            _ => None,
        };
        let mut other_value = rolling();
        other_value.desired = "No".into();
        let cases: Vec<(&str, Decision, bool, bool)> = vec![
            ("the same progress", rolling(), false, true),
            ("a write chosen", rolling(), true, false),
            ("converged now", decision("ECSExec", Phase::Converged, "Converged"), false, false),
            ("failed now", decision("ECSExec", Phase::Failed, "RolloutFailed"), false, false),
            ("another reason", decision("ECSExec", Phase::Progressing, "Settling"), false, false),
            ("another desired value", other_value, false, false),
            ("a parameter not decided before", decision("Version", Phase::Progressing, "RollingOut"), false, false),
            ("a convergence that rests on the stack", decision("ApiCount", Phase::Converged, "Converged"), false, false),
        ];
        for (name, d, writes, stands) in cases {
            assert_eq!(light_look_stands([&d], writes, before), stands, "{name}");
        }
        let mut acting = rolling();
        acting.action = Some(Action::CancelStackUpdate);
        assert!(!light_look_stands([&acting], false, before), "a decision with an action");
    }
}
