//! The loop's stack writes: the parameters that change through CloudFormation and the rack
//! version share one `UpdateStack` per run (or one `CancelUpdateStack` when the controller's
//! own update is failing), made only when no other write was made this run. The update's
//! token is written down before it is sent: the stack's events carrying it are what make an
//! update the controller's ([`crate::plan::owner`]).

use std::collections::BTreeMap;
use std::time::SystemTime;

use backon::ExponentialBuilder;
use tracing::{info, warn};

use super::{mem_of, round, write_failed, Reconciler};
use crate::memory::{Memory, PersistedStackUpdate};
use crate::model::{ObservedRack, RackVersion, StackState, VERSION_PARAM};
use crate::plan::owner::TOKEN_PREFIX;
use crate::plan::stack::update_parameters;
use crate::plan::{
    self, Decision, EcsExecState, Ownership, Phase, StackContext, StackPlan, StackUpdate,
};
use crate::rack::{RackError, ResourceChange, StackUpdateOutcome, StackUpdateRequest};
use crate::templates::TemplateRef;

/// Capabilities every update of a rack stack acknowledges: the rack template creates IAM
/// roles (a summary may leave them out; acknowledging one a template does not need is
/// harmless).
const RACK_CAPABILITIES: [&str; 2] = ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"];

/// What the stack update's backoff is written down as.
const STACK_BACKOFF: &str = "stack parameters";

/// The controller's latest stack update, written down (in the status document) before
/// `UpdateStack` is sent, and the stack parameters' backoff.
#[derive(Default)]
pub(super) struct StackMemory {
    /// The update's `ClientRequestToken`: the stack's events carrying it make it ours.
    pub token: Option<String>,
    /// Key → value of the parameter changes it carries.
    pub attempted: BTreeMap<String, String>,
    /// The version it asks for, when it changes the version.
    pub version: Option<RackVersion>,
    /// The stack's `LastUpdatedTime` when it was sent: it has happened once that moves.
    pub before: Option<String>,
    /// The update was cancelled (once is enough).
    pub cancelled: bool,
    pub memory: Memory,
}

impl StackMemory {
    pub fn persisted(&self) -> Option<PersistedStackUpdate> {
        let failure = self.memory.backoff_record(STACK_BACKOFF);
        (self.token.is_some() || failure.is_some()).then(|| PersistedStackUpdate {
            token: self.token.clone(),
            attempted: self.attempted.clone(),
            version: self.version.map(|v| v.to_string()),
            before: self.before.clone(),
            cancelled: self.cancelled,
            failure,
        })
    }

    pub fn restored(p: &PersistedStackUpdate, builder: ExponentialBuilder) -> Self {
        StackMemory {
            token: p.token.clone(),
            attempted: p.attempted.clone(),
            version: p.version.as_deref().and_then(RackVersion::parse),
            before: p.before.clone(),
            cancelled: p.cancelled,
            memory: p
                .failure
                .as_ref()
                .map(|f| Memory::restored(f, builder))
                .unwrap_or_default(),
        }
    }

    /// The update is over (applied or rolled back): nothing of it is ours to follow any more.
    fn forget_update(&mut self) {
        self.token = None;
        self.attempted.clear();
        self.version = None;
        self.cancelled = false;
        self.memory.failure_reason = None;
    }
}

impl Reconciler {
    /// Whose the stack's latest update is: the token its events carry, against the one this
    /// controller wrote down.
    pub(super) fn ownership(&self, observed: &ObservedRack) -> Ownership {
        plan::ownership(&observed.update_token, self.stack.token.as_deref())
    }

    /// After an update of ours rolled back: why, read once from the stack events.
    pub(super) async fn read_failure_reason(&mut self, observed: &ObservedRack, owner: &Ownership) {
        let rolled_back = owner.is_ours()
            && observed.stack.state() == StackState::Stable
            && observed.stack.status.contains("ROLLBACK");
        if !rolled_back || self.stack.memory.failure_reason.is_some() {
            return;
        }
        match self.rack.stack_failure_reason().await {
            Ok(reason) => self.stack.memory.failure_reason = reason,
            Err(e) => {
                warn!(error = %e, "cannot read the stack events to say why the update failed")
            }
        }
    }

    /// The stack parameters' decisions, no write.
    pub(super) fn plan_stack_params(
        &self,
        desired: &BTreeMap<String, String>,
        observed: &ObservedRack,
        owner: &Ownership,
        now: SystemTime,
    ) -> StackPlan {
        let ctx = StackContext {
            now,
            attempted: self.stack.attempted.clone(),
            ownership: owner.clone(),
            cancelled: self.stack.cancelled,
            retry_not_before: self.stack.memory.retry_not_before,
            last_failure: self.stack.memory.last_failure.clone(),
            failure_reason: self.stack.memory.failure_reason.clone(),
            rollouts: self.context(crate::model::ECS_EXEC.name, now),
        };
        plan::plan_stack(desired, observed, &ctx)
    }

    /// What CloudFormation would change for the pending stack parameter changes (for `plan`):
    /// a change set, created and deleted, nothing executed. `None` when no parameter is to
    /// change through the stack.
    pub async fn preview_stack_update(
        &mut self,
        observed: &ObservedRack,
    ) -> Option<Result<Vec<ResourceChange>, RackError>> {
        let desired = self.desired.clone()?;
        let (_, stack_desired) = self.split_by_method(&desired, observed);
        let now = self.clock.now();
        let owner = self.ownership(observed);
        let plan = self.plan_stack_params(&stack_desired, observed, &owner, now);
        if plan.changes.is_empty() {
            return None;
        }
        let request = StackUpdateRequest {
            template: None,
            parameters: update_parameters(observed, &plan.changes),
            capabilities: RACK_CAPABILITIES.iter().map(|c| c.to_string()).collect(),
            token: format!("{TOKEN_PREFIX}plan-{:016x}", fastrand::u64(..)),
            role_arn: self.settings.stack_role.clone(),
        };
        Some(self.rack.preview_stack_update(&request).await)
    }

    /// Once the stack has settled after the controller's update (its `LastUpdatedTime`
    /// moved), the update is over: applied (the parameters' backoff forgotten), or rolled
    /// back (the parameters and the version it carried back off; the retry is a new update).
    pub(super) fn settle_stack_attempt(
        &mut self,
        plan: &StackPlan,
        version: Option<&Decision>,
        (observed, owner): (&ObservedRack, &Ownership),
        now: SystemTime,
    ) {
        let moved = observed.stack.last_updated != self.stack.before;
        if self.stack.token.is_none() || observed.stack.state() != StackState::Stable || !moved {
            return;
        }
        if observed.stack.status.contains("ROLLBACK") && matches!(owner, Ownership::Unknown(_)) {
            // Whether our update was the one rolled back is not known: keep it written down.
            return;
        }
        let rolled_back = |d: &&Decision| d.reason == "StackUpdateRolledBack";
        let max = self.settings.backoff_max;
        if let Some(d) = plan.decisions.iter().find(rolled_back) {
            let delay = self.stack.memory.back_off(self.backoff(), max, now);
            self.stack.memory.last_failure = Some(d.message.clone());
            warn!(parameter = %d.param, retry_in = %humantime::format_duration(round(delay)), "{}", d.message);
        } else if !self.stack.attempted.is_empty() {
            self.stack.memory.reset_backoff();
        }
        if let Some(d) = version.filter(rolled_back) {
            let builder = self.backoff();
            let mem = mem_of(&mut self.memory, VERSION_PARAM);
            let delay = mem.back_off(builder, max, now);
            mem.last_failure = Some(d.message.clone());
            mem.retrying = false;
            warn!(parameter = %d.param, retry_in = %humantime::format_duration(round(delay)), "{}", d.message);
        }
        self.stack.forget_update();
    }

    /// The version decision and its target template, no write; with the version's backoff
    /// forgotten once it converged.
    pub(super) fn plan_version_change(
        &self,
        (version, target): (RackVersion, super::Target),
        observed: &ObservedRack,
        ecs: &EcsExecState,
        update: (&Ownership, Option<String>),
        now: SystemTime,
    ) -> (Decision, Option<TemplateRef>) {
        self.version_decision(version, target, observed, ecs, update, now)
    }

    /// What the version decision says to keep: a failure counted, the backoff forgotten
    /// once it converged.
    pub(super) fn remember_version(&mut self, d: &Decision, now: SystemTime) {
        self.account_failure(d, now);
        if d.phase == Phase::Converged {
            mem_of(&mut self.memory, VERSION_PARAM).reset_backoff();
        }
    }

    /// The stack parameters' update: one `UpdateStack` batching every change, on the
    /// running template.
    pub(super) async fn update_stack_parameters(
        &mut self,
        stack: &mut StackPlan,
        observed: &ObservedRack,
        now: SystemTime,
    ) {
        let current = observed.stack.parameters.get(VERSION_PARAM).cloned();
        let update = StackUpdate {
            from: current.clone(),
            to: current.unwrap_or_default(),
            downgrade: false,
            reuse_template: true,
            parameters: update_parameters(observed, &stack.changes),
        };
        let carried = stack.changes.clone();
        let result = self
            .send(None, &update, Vec::new(), (observed, carried, None))
            .await;
        self.after_parameter_update(stack, result, now);
    }

    pub(super) async fn cancel(&mut self, stack: &mut StackPlan) {
        // Whose the update is, read again right before: the events read when it started
        // could have lagged behind the stack (and another update may have begun since).
        let fresh = self.rack.latest_update().await.map(|u| u.token);
        let owner = match &fresh {
            Ok(token) => plan::ownership(token, self.stack.token.as_deref()),
            Err(e) => Ownership::Unknown(e.to_string()),
        };
        if !owner.is_ours() {
            warn!(owner = %owner.describe(), "not cancelling the stack update: it is not proven the controller's");
            for d in &mut stack.decisions {
                d.message = format!(
                    "{}; not cancelled: the update under way is {}",
                    d.message,
                    owner.describe()
                );
            }
            return;
        }
        match self.rack.cancel_update_stack().await {
            Ok(()) => {
                self.stack.cancelled = true;
                // The real cause: what the new tasks showed (the stack events will only say
                // the update was cancelled).
                self.stack.memory.failure_reason = stack
                    .cancel
                    .as_ref()
                    .map(|why| format!("cancelled by the controller: {why}"));
                let token = self.stack.token.clone().unwrap_or_default();
                let params = self.update_params();
                let why = stack.cancel.clone().unwrap_or_default();
                let e = self
                    .event(
                        crate::history::Kind::RolloutCancelled,
                        "CancelUpdateStack",
                        format!("cancelled the controller's failing stack update (token {token}): {why}"),
                    )
                    .params(params)
                    .detail("token", token);
                self.written.push(e);
                self.write_status_file().await;
            }
            Err(e) => {
                let params: Vec<&str> = stack.decisions.iter().map(|d| d.param.as_str()).collect();
                let message =
                    format!("cancelling the controller's failing stack update failed: {e}");
                let reason = super::not_a_failure(&e).map_or("ActionFailed", |(r, _)| r);
                self.note_write_failed("CancelUpdateStack", &params, reason, &message);
                for d in &mut stack.decisions {
                    d.message = format!(
                        "{}; cancelling it failed (retried next run): {e}",
                        d.message
                    );
                }
            }
        }
    }

    /// The version change, with the stack parameter changes its target template declares.
    pub(super) async fn update_version(
        &mut self,
        d: &mut Decision,
        mut update: StackUpdate,
        template: TemplateRef,
        stack: &mut StackPlan,
        observed: &ObservedRack,
        now: SystemTime,
    ) {
        for p in &mut update.parameters {
            if let Some(v) = stack.changes.get(&p.key) {
                p.value = Some(v.clone());
            }
        }
        // A change the target template does not declare cannot go with the version change:
        // the parameter goes away with it.
        let mut carried = BTreeMap::new();
        for d in stack.decisions.iter_mut() {
            let Some(value) = stack.changes.get(&d.param) else {
                continue;
            };
            if update.parameters.iter().any(|p| p.key == d.param) {
                carried.insert(d.param.clone(), value.clone());
                d.message = format!("{} (with the version change)", d.message);
                continue;
            }
            let message = format!(
                "version {} does not declare {}: the parameter goes away with the version change; \
                 remove it from the params file",
                update.to, d.param
            );
            *d = d.clone().blocked("NotInTargetTemplate", message);
        }
        let version = RackVersion::parse(&update.to);
        let capabilities = version
            .and_then(|v| self.templates.get(&v))
            .map(|(_, summary)| summary.capabilities.clone())
            .unwrap_or_default();
        let sent = (observed, carried, version);
        match self.send(Some(template), &update, capabilities, sent).await {
            Ok(outcome) => {
                if outcome == StackUpdateOutcome::Started {
                    self.metrics.stack_update_started();
                    let carried: BTreeMap<String, String> = stack
                        .changes
                        .iter()
                        .filter(|(k, _)| update.parameters.iter().any(|p| &p.key == *k))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    self.note_stack_update(&carried, Some(&update));
                }
                info!(from = ?update.from, to = %update.to, downgrade = update.downgrade,
                    parameters = update.parameters.len(), ?outcome, token = ?self.stack.token,
                    "stack update sent");
            }
            Err(e) => self.update_failed(d, &e, now),
        }
    }

    fn after_parameter_update(
        &mut self,
        stack: &mut StackPlan,
        result: Result<StackUpdateOutcome, RackError>,
        now: SystemTime,
    ) {
        let (reason, message, retrying) = match result {
            Ok(StackUpdateOutcome::Started) => {
                self.metrics.stack_update_started();
                self.note_stack_update(&stack.changes, None);
                return;
            }
            // The stack reads differently from what CloudFormation holds (a spelling it
            // normalises, say): asking again would change nothing either.
            Ok(StackUpdateOutcome::NoChange) => (
                "StackUnchanged",
                "CloudFormation reports no change to make although the stack shows another value: \
                 check the spelling of the value in the params file"
                    .to_string(),
                false,
            ),
            Err(e) => match super::not_a_failure(&e) {
                Some((reason, message)) => {
                    let write = |d: &mut Decision| {
                        d.phase = Phase::Waiting;
                        d.reason = reason;
                        d.message = format!("{}; not written here: {message}", d.message);
                    };
                    changed(stack).for_each(write);
                    return;
                }
                None => (
                    "ActionFailed",
                    format!("updating the stack failed: {e}"),
                    e.is_transient(),
                ),
            },
        };
        let builder = self.backoff();
        let delay = self
            .stack
            .memory
            .back_off(builder, self.settings.backoff_max, now);
        self.stack.memory.retrying = retrying;
        self.stack.memory.last_failure = Some(message.clone());
        for d in changed(stack) {
            d.phase = Phase::Failed;
            d.reason = reason;
            d.message = format!(
                "{message}; next attempt in {}",
                humantime::format_duration(round(delay))
            );
        }
        let params: Vec<&str> = stack.changes.keys().map(String::as_str).collect();
        self.note_write_failed("UpdateStack", &params, reason, &message);
    }

    /// The parameters the controller's stack update carries (its version first).
    fn update_params(&self) -> Vec<String> {
        let version = self.stack.version.map(|_| VERSION_PARAM.to_string());
        version
            .into_iter()
            .chain(self.stack.attempted.keys().cloned())
            .collect()
    }

    /// The event of an `UpdateStack` that started: its token, what it changes.
    fn note_stack_update(
        &mut self,
        changes: &BTreeMap<String, String>,
        version: Option<&StackUpdate>,
    ) {
        let token = self.stack.token.clone().unwrap_or_default();
        let mut params: Vec<&str> = changes.keys().map(String::as_str).collect();
        let mut what: Vec<String> = changes.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if let Some(u) = version {
            params.insert(0, VERSION_PARAM);
            what.insert(
                0,
                format!(
                    "version {} → {}",
                    u.from.as_deref().unwrap_or("unknown"),
                    u.to
                ),
            );
        }
        let message = format!("UpdateStack: {} (token {token})", what.join(", "));
        self.note_write("UpdateStack", &params, message)
            .detail
            .insert("token".into(), token);
    }

    fn update_failed(&mut self, d: &mut Decision, e: &RackError, now: SystemTime) {
        let builder = self.backoff();
        let mem = mem_of(&mut self.memory, VERSION_PARAM);
        let what = format!("updating the stack to version {}", d.desired);
        write_failed(mem, (builder, self.settings.backoff_max, now), e, d, &what);
        let (reason, message) = (d.reason, d.message.clone());
        self.note_write_failed("UpdateStack", &[VERSION_PARAM], reason, &message);
    }

    /// One `UpdateStack` (`template` absent keeps the stack's template), with a fresh token
    /// that is written down, with the changes it `carries` and the version, before the call
    /// is sent: a status document that cannot be written means no update (the controller
    /// could not prove it its own after a restart). The SDK's own retries of this one call
    /// reuse the token. An update that did not start is forgotten; one that may have (a
    /// transient error) stays written down until the stack's events tell.
    async fn send(
        &mut self,
        template: Option<TemplateRef>,
        update: &StackUpdate,
        mut capabilities: Vec<String>,
        (observed, carries, version): (
            &ObservedRack,
            BTreeMap<String, String>,
            Option<RackVersion>,
        ),
    ) -> Result<StackUpdateOutcome, RackError> {
        for c in RACK_CAPABILITIES {
            if !capabilities.iter().any(|have| have == c) {
                capabilities.push(c.to_string());
            }
        }
        let token = format!("{TOKEN_PREFIX}{}-{:016x}", update.to, fastrand::u64(..));
        self.stack = StackMemory {
            token: Some(token.clone()),
            attempted: carries,
            version,
            before: observed.stack.last_updated.clone(),
            cancelled: false,
            memory: std::mem::take(&mut self.stack.memory),
        };
        if let Err(reason) = self.write_down().await {
            self.stack.forget_update();
            return Err(RackError::TokenNotRecorded { reason });
        }
        let request = StackUpdateRequest {
            template,
            parameters: update.parameters.clone(),
            capabilities,
            token,
            role_arn: self.settings.stack_role.clone(),
        };
        let result = self.rack.update_stack(&request).await;
        let started = match &result {
            Ok(outcome) => *outcome == StackUpdateOutcome::Started,
            Err(e) => e.is_transient(),
        };
        if !started {
            self.stack.forget_update();
            self.write_status_file().await;
        }
        result
    }
}
/// The decisions of the parameters the stack update changes.
fn changed(stack: &mut StackPlan) -> impl Iterator<Item = &mut Decision> {
    let changes = &stack.changes;
    stack
        .decisions
        .iter_mut()
        .filter(move |d| changes.contains_key(&d.param))
}
