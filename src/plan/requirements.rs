//! Requirements of a value (see [`Requirement`]): a change to a value whose requirement does
//! not hold is held back, `Blocked` with what is missing, or `Waiting` while it cannot be
//! told. The rest of the parameters go on.

use std::collections::BTreeSet;

use super::{Decision, Phase};
use crate::exec::Route;
use crate::model::{managed_param, ObservedRack, Requirement};

/// Whether a requirement holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    Met,
    Unmet(String),
    Unknown(String),
}

impl From<&Route> for Check {
    fn from(r: &Route) -> Check {
        match r {
            Route::Reachable { .. } => Check::Met,
            Route::None { missing } => Check::Unmet(format!(
                "tasks in the rack's private subnets cannot reach SSM: no NAT route in every private route table, and the VPC lacks the interface endpoint(s) {} with private DNS",
                missing.join(", ")
            )),
            Route::Unknown { why } => Check::Unknown(why.clone()),
        }
    }
}

/// Every value of `key` the rack shows: the stack's parameter and, for a label-managed
/// parameter, the label on each service's revisions.
pub fn on_rack(key: &str, rack: &ObservedRack) -> BTreeSet<String> {
    let mut values: BTreeSet<String> = rack
        .stack
        .parameters
        .get(key)
        .cloned()
        .into_iter()
        .collect();
    if let Some(p) = managed_param(key) {
        for s in &rack.services {
            for arn in s.service.task_definitions() {
                values.extend(s.value_in(arn, p).map(str::to_string));
            }
        }
    }
    values
}

/// The requirement to check before `key` is changed to `value`, if any: only before the
/// change starts. Once the rack shows the value anywhere (the stack's parameter, a revision's
/// label), the change is under way and is followed to its end, not held halfway.
pub fn needed(key: &str, value: &str, rack: &ObservedRack) -> Option<Requirement> {
    let p = managed_param(key)?;
    let (_, req) = p.requires.iter().find(|(v, _)| *v == value)?;
    (!on_rack(key, rack).contains(value)).then_some(*req)
}

/// The decision for a change held back by `check`, or `None` when it may go on.
pub fn hold(key: &str, value: &str, check: &Check, rack: &ObservedRack) -> Option<Decision> {
    let there = on_rack(key, rack);
    let observed = (there.len() == 1)
        .then(|| there.iter().next().cloned())
        .flatten();
    let (phase, reason, message) = match check {
        Check::Met => return None,
        Check::Unmet(why) => (
            Phase::Blocked,
            "RequirementUnmet",
            format!("not setting {key}={value}: {why}; it is set once the rack provides it (checked at every resync)"),
        ),
        Check::Unknown(why) => (
            Phase::Waiting,
            "RequirementUnknown",
            format!("not setting {key}={value} until the controller can tell whether the rack supports it: {why}"),
        ),
    };
    Some(Decision {
        param: key.to_string(),
        desired: value.to_string(),
        observed,
        phase,
        reason,
        message,
        drift: true,
        action: None,
        pending: Vec::new(),
        services: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::StackSnapshot;

    fn rack_with(value: &str) -> ObservedRack {
        ObservedRack {
            declared: Default::default(),
            stack: StackSnapshot {
                name: "convox".into(),
                status: "UPDATE_COMPLETE".into(),
                status_reason: None,
                parameters: [("ECSExec".to_string(), value.to_string())].into(),
                outputs: Default::default(),
                last_updated: None,
            },
            cluster: "c".into(),
            light: false,
            services: Vec::new(),
            update_token: Default::default(),
            rollback_since: None,
        }
    }

    #[test]
    fn a_change_is_held_by_its_requirement() {
        let rack = rack_with("No");
        assert_eq!(
            needed("ECSExec", "Yes", &rack),
            Some(Requirement::RouteToSsm)
        );
        assert_eq!(needed("ECSExec", "No", &rack), None, "No needs nothing");
        let none = Route::None {
            missing: vec!["com.amazonaws.us-east-1.ssmmessages".into()],
        };
        let d = hold("ECSExec", "Yes", &Check::from(&none), &rack).expect("held");
        assert_eq!((d.phase, d.reason), (Phase::Blocked, "RequirementUnmet"));
        assert!(
            d.message.contains("com.amazonaws.us-east-1.ssmmessages"),
            "{}",
            d.message
        );
        assert_eq!(d.observed.as_deref(), Some("No"));
        let unknown = Route::Unknown {
            why: "ec2 denied".into(),
        };
        let d = hold("ECSExec", "Yes", &Check::from(&unknown), &rack).expect("held");
        assert_eq!(d.phase, Phase::Waiting);
        let reachable = Route::Reachable {
            via: "NAT gateway".into(),
        };
        assert_eq!(
            hold("ECSExec", "Yes", &Check::from(&reachable), &rack),
            None
        );
    }

    #[test]
    fn a_rack_already_there_is_not_checked() {
        assert_eq!(needed("ECSExec", "Yes", &rack_with("Yes")), None);
        let mut both = rack_with("Yes");
        both.stack.parameters.remove("ECSExec");
        assert_eq!(
            needed("ECSExec", "Yes", &both),
            Some(Requirement::RouteToSsm),
            "nothing seen"
        );
    }
}
