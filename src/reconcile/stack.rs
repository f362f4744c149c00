//! The loop's stack writes: the parameters that change through CloudFormation and the rack
//! version share one `UpdateStack` per run (or one `CancelUpdateStack` when the controller's
//! own update is failing), made only when no other write was made this run.

use std::collections::BTreeMap;
use std::time::SystemTime;

use tracing::{info, warn};

use super::{mem_of, round, write_failed, Reconciler};
use crate::model::{ObservedRack, RackVersion, StackState, VERSION_PARAM};
use crate::plan::stack::update_parameters;
use crate::plan::{
    self, Action, Decision, EcsExecState, Phase, StackContext, StackPlan, StackUpdate,
};
use crate::rack::{RackError, ResourceChange, StackUpdateOutcome, StackUpdateRequest};
use crate::templates::TemplateRef;

/// Capabilities every update of a rack stack acknowledges: the rack template creates IAM
/// roles (a summary may leave them out; acknowledging one a template does not need is
/// harmless).
const RACK_CAPABILITIES: [&str; 2] = ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"];

impl Reconciler {
    /// The stack parameters' decisions, no write; reads the stack events once after an update
    /// of ours rolled back.
    pub(super) async fn plan_stack_params(
        &mut self,
        desired: &BTreeMap<String, String>,
        observed: &ObservedRack,
        now: SystemTime,
    ) -> StackPlan {
        let rolled_back = !self.stack.attempted.is_empty()
            && observed.stack.state() == StackState::Stable
            && observed.stack.status.contains("ROLLBACK");
        if rolled_back && self.stack.memory.failure_reason.is_none() {
            match self.rack.stack_failure_reason().await {
                Ok(reason) => self.stack.memory.failure_reason = reason,
                Err(e) => {
                    warn!(error = %e, "cannot read the stack events to say why the update failed")
                }
            }
        }
        let ctx = StackContext {
            now,
            attempted: self.stack.attempted.clone(),
            retry_not_before: self.stack.memory.retry_not_before,
            failure_reason: self.stack.memory.failure_reason.clone(),
            rollouts: self.context(crate::model::ECS_EXEC.name, now),
        };
        let plan = plan::plan_stack(desired, observed, &ctx);
        self.settle_stack_attempt(&plan, observed, now);
        plan
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
        let plan = self.plan_stack_params(&stack_desired, observed, now).await;
        if plan.changes.is_empty() {
            return None;
        }
        let request = StackUpdateRequest {
            template: None,
            parameters: update_parameters(observed, &plan.changes),
            capabilities: RACK_CAPABILITIES.iter().map(|c| c.to_string()).collect(),
            token: format!("rack-reconciler-plan-{:016x}", fastrand::u64(..)),
            role_arn: self.settings.stack_role.clone(),
        };
        Some(self.rack.preview_stack_update(&request).await)
    }

    /// Once the stack has settled, the attempt is over: applied (forget it), or rolled back
    /// (count the failure, back off, and forget it so the retry is a new attempt).
    fn settle_stack_attempt(&mut self, plan: &StackPlan, observed: &ObservedRack, now: SystemTime) {
        // Over only once the stack has moved past the update (its LastUpdatedTime changed)
        // and settled.
        let moved = observed.stack.last_updated != self.stack.before;
        if self.stack.attempted.is_empty() || observed.stack.state() != StackState::Stable || !moved
        {
            return;
        }
        if let Some(d) = plan
            .decisions
            .iter()
            .find(|d| d.reason == "StackUpdateRolledBack")
        {
            let builder = self.backoff();
            let delay = self
                .stack
                .memory
                .back_off(builder, self.settings.backoff_max, now);
            self.stack.memory.last_failure = Some(d.message.clone());
            warn!(parameter = %d.param, retry_in = %humantime::format_duration(round(delay)), "{}", d.message);
        } else {
            self.stack.memory.reset_backoff();
        }
        self.stack.attempted.clear();
        self.stack.cancelled = false;
        self.stack.memory.failure_reason = None;
    }

    /// The version decision and its target template, no write; with the version's memory
    /// brought up to date.
    pub(super) async fn plan_version_change(
        &mut self,
        version: RackVersion,
        observed: &ObservedRack,
        ecs: &EcsExecState,
        now: SystemTime,
    ) -> (Decision, Option<TemplateRef>) {
        let (d, template) = self.version_decision(version, observed, ecs, now).await;
        self.account_failure(&d, now);
        let mem = mem_of(&mut self.memory, VERSION_PARAM);
        match d.phase {
            Phase::Converged => {
                mem.reset_backoff();
                mem.attempted = None;
                mem.failure_reason = None;
            }
            // Counted once; the retry after the backoff is a new attempt.
            Phase::Failed if d.reason == "StackUpdateRolledBack" => mem.attempted = None,
            _ => {}
        }
        (d, template)
    }

    /// The run's one stack write, if no other write was made: cancel the controller's
    /// failing update, or one `UpdateStack` carrying the version change (with the parameter
    /// changes its template declares) or the parameter changes alone.
    pub(super) async fn write_stack(
        &mut self,
        stack: &mut StackPlan,
        version: Option<&mut (Decision, Option<TemplateRef>)>,
        observed: &ObservedRack,
        now: SystemTime,
        acted: &mut bool,
    ) {
        if *acted {
            return;
        }
        if stack.cancel.is_some() {
            if self.stack.cancelled {
                return;
            }
            *acted = true;
            return self.cancel(stack).await;
        }
        if let Some((d, Some(template))) = version {
            if let Some(Action::UpdateStack(update)) = d.action.clone() {
                *acted = true;
                let before = observed.stack.last_updated.clone();
                return self
                    .update_version(d, update, template.clone(), stack, now, before)
                    .await;
            }
        }
        if stack.changes.is_empty() {
            return;
        }
        *acted = true;
        let update = StackUpdate {
            from: observed.stack.parameters.get(VERSION_PARAM).cloned(),
            to: observed
                .stack
                .parameters
                .get(VERSION_PARAM)
                .cloned()
                .unwrap_or_default(),
            downgrade: false,
            reuse_template: true,
            parameters: update_parameters(observed, &stack.changes),
        };
        let result = self.send(None, &update, Vec::new()).await;
        let before = observed.stack.last_updated.clone();
        self.after_parameter_update(stack, &update, result, now, before);
    }

    async fn cancel(&mut self, stack: &mut StackPlan) {
        match self.rack.cancel_update_stack().await {
            Ok(()) => {
                self.stack.cancelled = true;
                info!(reason = ?stack.cancel, "cancelled the controller's failing stack update");
            }
            Err(e) => {
                warn!(error = %e, "cancelling the stack update failed");
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
    async fn update_version(
        &mut self,
        d: &mut Decision,
        mut update: StackUpdate,
        template: TemplateRef,
        stack: &mut StackPlan,
        now: SystemTime,
        before: Option<String>,
    ) {
        for p in &mut update.parameters {
            if let Some(v) = stack.changes.get(&p.key) {
                p.value = Some(v.clone());
            }
        }
        // A change the target template does not declare cannot go with the version change:
        // the parameter goes away with it.
        for d in stack.decisions.iter_mut() {
            let carried = update.parameters.iter().any(|p| p.key == d.param);
            if stack.changes.contains_key(&d.param) && !carried {
                let message = format!(
                    "version {} does not declare {}: the parameter goes away with the version change; \
                     remove it from the params file",
                    update.to, d.param
                );
                *d = d.clone().blocked("NotInTargetTemplate", message);
            }
        }
        let version = RackVersion::parse(&update.to);
        let capabilities = version
            .and_then(|v| self.templates.get(&v))
            .map(|(_, summary)| summary.capabilities.clone())
            .unwrap_or_default();
        match self.send(Some(template), &update, capabilities).await {
            Ok(outcome) => {
                let mem = mem_of(&mut self.memory, VERSION_PARAM);
                mem.attempted = version;
                mem.failure_reason = None;
                if outcome == StackUpdateOutcome::Started {
                    self.metrics.stack_update_started();
                }
                self.note_parameter_changes(stack, &update, "with the version change", before);
                info!(from = ?update.from, to = %update.to, downgrade = update.downgrade,
                    parameters = update.parameters.len(), ?outcome, "stack update started");
            }
            Err(e) => self.update_failed(d, &e, now),
        }
    }

    fn after_parameter_update(
        &mut self,
        stack: &mut StackPlan,
        update: &StackUpdate,
        result: Result<StackUpdateOutcome, RackError>,
        now: SystemTime,
        before: Option<String>,
    ) {
        let (reason, message, retrying) = match result {
            Ok(StackUpdateOutcome::Started) => {
                self.metrics.stack_update_started();
                let changed: Vec<&String> = stack.changes.keys().collect();
                info!(parameters = ?changed, "stack update started");
                return self.note_parameter_changes(stack, update, "", before);
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
            Err(e) => (
                "ActionFailed",
                format!("updating the stack failed: {e}"),
                e.is_transient(),
            ),
        };
        let builder = self.backoff();
        let delay = self
            .stack
            .memory
            .back_off(builder, self.settings.backoff_max, now);
        self.stack.memory.retrying = retrying;
        self.stack.memory.last_failure = Some(message.clone());
        for d in stack
            .decisions
            .iter_mut()
            .filter(|d| stack.changes.contains_key(&d.param))
        {
            d.phase = Phase::Failed;
            d.reason = reason;
            d.message = format!(
                "{message}; next attempt in {}",
                humantime::format_duration(round(delay))
            );
        }
    }

    /// The parameter changes an update carries are the controller's attempt.
    fn note_parameter_changes(
        &mut self,
        stack: &mut StackPlan,
        update: &StackUpdate,
        how: &str,
        before: Option<String>,
    ) {
        self.stack.before = before;
        self.stack.cancelled = false;
        for p in &update.parameters {
            if let (Some(v), true) = (&p.value, stack.changes.contains_key(&p.key)) {
                self.stack.attempted.insert(p.key.clone(), v.clone());
            }
        }
        for d in stack
            .decisions
            .iter_mut()
            .filter(|d| stack.changes.contains_key(&d.param))
        {
            if !how.is_empty() {
                d.message = format!("{} ({how})", d.message);
            }
        }
    }

    fn update_failed(&mut self, d: &mut Decision, e: &RackError, now: SystemTime) {
        let builder = self.backoff();
        let mem = mem_of(&mut self.memory, VERSION_PARAM);
        let what = format!("updating the stack to version {}", d.desired);
        write_failed(mem, (builder, self.settings.backoff_max, now), e, d, &what);
    }

    /// One `UpdateStack`, with a fresh idempotency token (the SDK's own retries of this one
    /// call reuse it); `template` absent keeps the stack's template.
    async fn send(
        &self,
        template: Option<TemplateRef>,
        update: &StackUpdate,
        mut capabilities: Vec<String>,
    ) -> Result<StackUpdateOutcome, RackError> {
        for c in RACK_CAPABILITIES {
            if !capabilities.iter().any(|have| have == c) {
                capabilities.push(c.to_string());
            }
        }
        let request = StackUpdateRequest {
            template,
            parameters: update.parameters.clone(),
            capabilities,
            token: format!("rack-reconciler-{}-{:016x}", update.to, fastrand::u64(..)),
            role_arn: self.settings.stack_role.clone(),
        };
        self.rack.update_stack(&request).await
    }
}
