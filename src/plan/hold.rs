//! When the controller holds back because of the stack: CloudFormation updating it (whoever
//! started the update), a stack that needs repair, and a rollback that fails too, which is
//! its own state: the rack API may be down, and no write is made until it heals or a person
//! acts.

use super::Phase;
use crate::model::{ObservedRack, RolloutState, StackState, UpdateToken};

/// Why a rollback is failing: the reason every planner reports it with.
pub const ROLLBACK_FAILING: &str = "RollbackFailing";

/// While the stack is updating or broken, the services are not the controller's to touch.
/// A rollback whose API tasks keep failing (`threshold` failed launches), and a stack left
/// in `UPDATE_ROLLBACK_FAILED`, are `RollbackFailing`.
pub(crate) fn stack_hold(
    rack: &ObservedRack,
    threshold: u32,
) -> Option<(Phase, &'static str, String)> {
    let (name, status) = (&rack.stack.name, &rack.stack.status);
    match rack.stack.state() {
        StackState::InProgress => {
            if let Some(why) = rollback_failing(rack, threshold) {
                return Some((Phase::Failed, ROLLBACK_FAILING, why));
            }
            Some((
                Phase::Waiting,
                "StackUpdating",
                format!(
                    "stack {name} is {status} ({}): CloudFormation owns the rack until it settles; no changes until then",
                    started_by(&rack.update_token)
                ),
            ))
        }
        StackState::Unusable if status == "UPDATE_ROLLBACK_FAILED" => Some((
            Phase::Failed,
            ROLLBACK_FAILING,
            format!(
                "stack {name} is {status}: CloudFormation could not roll the update back; {}. \
                 Nothing is written until a person repairs the stack (fix the cause in its events, then \
                 `aws cloudformation continue-update-rollback --stack-name {name}`)",
                api_tasks(rack)
            ),
        )),
        StackState::Unusable => Some((
            Phase::Blocked,
            "StackUnusable",
            format!("stack {name} is {status}: repair the stack (see its CloudFormation events) before the controller can act"),
        )),
        StackState::Stable => None,
    }
}

/// A stack rolling back whose API services' rollback deployments keep failing: CloudFormation
/// would wait for hours before giving up (`UPDATE_ROLLBACK_FAILED`). Only a deployment made
/// since the rollback began is the rollback's (until CloudFormation points a service back,
/// its primary is still the failing deployment of the update); when the rollback's start was
/// not read, none is claimed.
fn rollback_failing(rack: &ObservedRack, threshold: u32) -> Option<String> {
    if !rack.stack.status.contains("ROLLBACK") {
        return None;
    }
    let since = rack.rollback_since?;
    let (service, failures, why) = rack.services.iter().find_map(|s| {
        let primary = s.service.primary()?;
        let rolling = primary.rollout_state == Some(RolloutState::InProgress) || primary.rolling();
        if !rolling || primary.created_at < since {
            return None;
        }
        let (failures, why) = s.failed_launches(primary);
        (failures >= threshold.max(1)).then_some((&s.target.service, failures, why))
    })?;
    Some(format!(
        "stack {} is {}, and its rollback is failing too: {failures} task(s) of {service} stopped \
         or failed to start (last stopped reason: {why}); {}. No write until it heals (ECS starts \
         the tasks) or a person acts",
        rack.stack.name,
        rack.stack.status,
        api_tasks(rack)
    ))
}

/// How many rack API tasks run of how many are wanted, and that the API is down when its
/// first service (the web API) runs none.
pub fn api_tasks(rack: &ObservedRack) -> String {
    let counts: Vec<String> = rack
        .services
        .iter()
        .map(|s| {
            format!(
                "{} runs {} of {} task(s)",
                s.target.service, s.service.running_count, s.service.desired_count
            )
        })
        .collect();
    let down = rack
        .services
        .first()
        .is_some_and(|s| s.service.running_count == 0 && s.service.desired_count > 0);
    let mut text = if counts.is_empty() {
        "the rack API's tasks were not observed".to_string()
    } else {
        counts.join(", ")
    };
    if down {
        text.push_str(": the rack API is down");
    }
    text
}

/// Who started the update under way, as far as its events tell.
fn started_by(token: &UpdateToken) -> String {
    match token {
        UpdateToken::Read(Some(t)) => format!("an update started with token {t}"),
        UpdateToken::Read(None) => "an update started without a ClientRequestToken".to_string(),
        UpdateToken::Unknown(why) => format!("whose update is not known: {why}"),
        UpdateToken::NotRead => "an update".to_string(),
    }
}
