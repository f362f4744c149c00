//! One reconcile after the rack was observed: **gather** the reads a decision needs beyond the
//! look (the requirements of changes, a target version's template, why the controller's last
//! update failed), **decide** (every decision with the write it would make; reads and writes
//! nothing, changes nothing), **remember** what the decisions say (backoffs, settled
//! rollouts and updates), **choose** the one write of the run ([`choose_write`], pure; none on a standby,
//! which decides as the holder would), **act** (that write, through the rack, under the fence
//! when there is a lease), **record** (publish every decision: status, metrics, and the
//! events it means for the rack's history).

use std::collections::BTreeMap;
use std::time::SystemTime;

use tracing::{info_span, Instrument};

use super::{hold_for_rollback, mem_of, standing_by, Reconciler, Report};
use crate::model::{ManagedParam, ObservedRack, RackVersion, ECS_EXEC};
use crate::params::DesiredParams;
use crate::plan::{self, requirements, Action, Decision, Phase, Roll, ServiceState, StackPlan};
use crate::rack::RackError;
use crate::templates::TemplateRef;

/// What one reconcile decided: the relabelled parameter's decision, the stack's plan (its
/// parameters, and a cancel), the version's decision with the template it would update to,
/// and the changes held back by an unmet requirement.
pub(super) struct Decided {
    /// The stack is updating under the controller's token.
    pub own_update: bool,
    pub relabel: Option<Decision>,
    pub stack: StackPlan,
    pub version: Option<(Decision, Option<TemplateRef>)>,
    pub held: Vec<Decision>,
}

/// What a decision needs read beyond the look.
pub(super) struct Gathered {
    /// The requirement of each desired value that would change, checked.
    pub checks: BTreeMap<String, requirements::Check>,
    /// The target version and its template.
    pub target: Option<(RackVersion, super::Target)>,
}

/// The one write a reconcile makes.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Write {
    /// Roll a service of the relabelled parameter (or undo its rollout).
    Roll(Roll),
    /// Cancel the controller's own failing stack update.
    CancelStack,
    /// Update the stack to another version (with its parameters).
    Version,
    /// Update the stack's parameters (batched).
    StackParameters,
}

/// The write of this run, in this order: the relabelled parameter's rollout, cancelling the
/// controller's own failing stack update, a version update, the stack parameters' update.
pub(super) fn choose_write(d: &Decided) -> Option<Write> {
    if let Some(Action::Roll(roll)) = d.relabel.as_ref().and_then(|d| d.action.clone()) {
        return Some(Write::Roll(roll));
    }
    if d.stack.cancel.is_some() {
        return Some(Write::CancelStack);
    }
    if let Some((v, Some(_))) = &d.version {
        if matches!(v.action, Some(Action::UpdateStack(_))) {
            return Some(Write::Version);
        }
    }
    (!d.stack.changes.is_empty()).then_some(Write::StackParameters)
}

impl Reconciler {
    /// [`Self::decide_act_record`] on `observed`, or, when it is a light look whose
    /// decisions do not stand, on the look made whole (the stack read).
    pub(super) async fn decide_on_whole(
        &mut self,
        desired: &DesiredParams,
        observed: ObservedRack,
        now: SystemTime,
        report: &mut Report,
    ) -> Result<(ObservedRack, Vec<Decision>), RackError> {
        // Boxed: a reconcile's future is large, and it holds this one twice.
        let decided = Box::pin(self.decide_act_record(desired, &observed, now, report)).await;
        if let Some(decisions) = decided {
            return Ok((observed, decisions));
        }
        let observed = self.observer.complete(observed, now).await?;
        self.observed_ok(&observed, now);
        let decided = Box::pin(self.decide_act_record(desired, &observed, now, report)).await;
        Ok((observed, decided.unwrap_or_default()))
    }

    /// Decides, makes the one write (not on a standby), and records every decision; `None`
    /// (nothing kept, written or recorded) when `observed` is a light look whose decisions
    /// do not stand ([`plan::light_look_stands`]).
    async fn decide_act_record(
        &mut self,
        desired: &DesiredParams,
        observed: &ObservedRack,
        now: SystemTime,
        report: &mut Report,
    ) -> Option<Vec<Decision>> {
        let gathered = self.gather(desired, observed).await;
        let mut decided = self.decide(desired, observed, gathered, now);
        if observed.light && !self.stands(&decided) {
            return None;
        }
        self.remember(&decided, observed, now);
        let standby = self.standby().await;
        let write = choose_write(&decided).filter(|_| standby.is_none());
        report.acted = write.is_some();
        if let Some(w) = write {
            self.act_on(w, &mut decided, observed, now).await;
        }
        Some(self.record(decided, standby.as_deref(), now, report))
    }

    /// Whether decisions of a light look stand: no write, each a change in progress as the
    /// last look recorded it.
    fn stands(&self, decided: &Decided) -> bool {
        let before = |param: &str| {
            self.status.read(|s| {
                let seen = s.parameter(param)?.recorded.as_ref()?;
                Some((seen.phase, seen.reason.clone(), seen.desired.clone()?))
            })
        };
        let decisions = (decided.relabel.iter())
            .chain(&decided.stack.decisions)
            .chain(decided.version.as_ref().map(|(d, _)| d))
            .chain(&decided.held);
        plan::light_look_stands(decisions, choose_write(decided).is_some(), before)
    }

    /// The reads a decision needs beyond the look; why the controller's last update failed
    /// goes into its memory (read once per failure).
    async fn gather(&mut self, desired: &DesiredParams, observed: &ObservedRack) -> Gathered {
        let checks = self.check_requirements(desired, observed).await;
        let owner = self.ownership(observed);
        self.read_failure_reason(observed, &owner).await;
        let target = match desired.version {
            Some(v) => Some((v, self.version_target(v, observed).await)),
            None => None,
        };
        Gathered { checks, target }
    }

    /// Every decision of this run, from what was observed and gathered; reads and writes
    /// nothing: requirements held back, the relabelled parameter, the stack's parameters (and
    /// whether to cancel its update), the version.
    fn decide(
        &self,
        desired: &DesiredParams,
        observed: &ObservedRack,
        gathered: Gathered,
        now: SystemTime,
    ) -> Decided {
        let (desired, held) = self.hold_unmet(desired, observed, &gathered.checks);
        let (relabel, stack_desired) = self.split_by_method(&desired, observed);
        let relabel = relabel.map(|value| self.plan_param(&ECS_EXEC, &value, observed, now));
        let owner = self.ownership(observed);
        let mut stack = self.plan_stack_params(&stack_desired, observed, &owner, now);
        let ecs = self.ecs_exec_state(observed);
        let update = (&owner, stack.failing.clone());
        let mut version = gathered
            .target
            .filter(|_| desired.version.is_some())
            .map(|target| self.plan_version_change(target, observed, &ecs, update, now));
        let version_decision = version.as_ref().map(|(d, _)| d);
        // Undoing a change fails too, wherever it shows: nothing more is written until it
        // heals.
        let rollback_failing = relabel
            .iter()
            .chain(&stack.decisions)
            .chain(version_decision)
            .any(|d| d.reason == plan::hold::ROLLBACK_FAILING);
        if rollback_failing {
            hold_for_rollback(&mut stack, version.as_mut().map(|(d, _)| d));
        }
        Decided {
            own_update: owner.is_ours()
                && observed.stack.state() == crate::model::StackState::InProgress,
            relabel,
            stack,
            version,
            held,
        }
    }

    /// Plans one relabelled parameter.
    fn plan_param(
        &self,
        param: &'static ManagedParam,
        value: &str,
        observed: &ObservedRack,
        now: SystemTime,
    ) -> Decision {
        let ctx = self.context(param.name, now);
        let d = plan::plan(param, value, observed, &ctx);
        let blocked = self.memory.get(param.name).and_then(|m| m.blocked.clone());
        match blocked.filter(|_| d.phase != Phase::Converged) {
            Some(message) => d.blocked("RevisionMismatch", message),
            None => d,
        }
    }

    /// Keeps what the decisions say, before anything is written: rollouts settled, failures
    /// counted, values converged, the stack's last update settled, old corrections forgotten.
    fn remember(&mut self, decided: &Decided, observed: &ObservedRack, now: SystemTime) {
        if let Some(d) = &decided.relabel {
            self.remember_param(d, now);
        }
        if let Some((d, _)) = &decided.version {
            self.remember_version(d, now);
        }
        let owner = self.ownership(observed);
        let version = decided.version.as_ref().map(|(d, _)| d);
        self.settle_stack_attempt(&decided.stack, version, (observed, &owner), now);
        for mem in self.memory.values_mut() {
            mem.corrections
                .retain(|t| now.duration_since(*t).unwrap_or_default() < super::HOUR);
        }
    }

    /// What a relabelled parameter's decision says to keep.
    fn remember_param(&mut self, d: &Decision, now: SystemTime) {
        let mem = mem_of(&mut self.memory, &d.param);
        for s in d
            .services
            .iter()
            .filter(|s| s.state == ServiceState::Converged)
        {
            mem.rolled_to.remove(&s.service);
        }
        self.account_failure(d, now);
        if d.phase == Phase::Converged {
            let mem = mem_of(&mut self.memory, &d.param);
            mem.last_converged = Some(d.desired.clone());
            mem.reset_backoff();
            mem.failed_services.clear();
        }
    }

    /// Makes the write; its outcome goes into the decisions it belongs to.
    async fn act_on(
        &mut self,
        write: Write,
        decided: &mut Decided,
        observed: &ObservedRack,
        now: SystemTime,
    ) {
        match write {
            Write::Roll(roll) => {
                if let Some(d) = decided.relabel.as_mut() {
                    let span = info_span!("parameter", parameter = %d.param, desired = %d.desired);
                    self.act(&roll, d, now).instrument(span).await;
                }
            }
            Write::CancelStack => self.cancel(&mut decided.stack).await,
            Write::Version => {
                if let Some((d, Some(template))) = decided.version.as_mut() {
                    if let Some(Action::UpdateStack(update)) = d.action.clone() {
                        let template = template.clone();
                        self.update_version(d, update, template, &mut decided.stack, observed, now)
                            .await;
                    }
                }
            }
            Write::StackParameters => {
                self.update_stack_parameters(&mut decided.stack, observed, now)
                    .await
            }
        }
    }

    /// Publishes every decision (a standby's writes said to be the holder's) and reports
    /// each parameter's phase.
    fn record(
        &mut self,
        decided: Decided,
        standby: Option<&str>,
        now: SystemTime,
        report: &mut Report,
    ) -> Vec<Decision> {
        let Decided {
            own_update,
            relabel,
            stack,
            version,
            held,
        } = decided;
        let StackPlan {
            decisions: stack_decisions,
            changes,
            cancel,
            ..
        } = stack;
        let stack_writes = |d: &Decision| cancel.is_some() || changes.contains_key(&d.param);
        let relabelled = relabel.as_ref().map(|d| d.param.clone());
        let mut decisions = Vec::new();
        for mut d in relabel.into_iter() {
            if let Some(m) = standby.filter(|_| d.action.is_some()) {
                standing_by(&mut d, m);
            }
            decisions.push(d);
        }
        for mut d in stack_decisions {
            if let Some(m) = standby.filter(|_| stack_writes(&d)) {
                standing_by(&mut d, m);
            }
            decisions.push(d);
        }
        if let Some((mut d, _)) = version {
            if let Some(m) = standby.filter(|_| d.action.is_some()) {
                standing_by(&mut d, m);
            }
            decisions.push(d);
        }
        decisions.extend(held);
        let (mut found, mut later) = (Vec::new(), Vec::new());
        for d in &decisions {
            let method = match relabelled.as_deref() == Some(d.param.as_str()) {
                true => "relabel",
                false => "stack",
            };
            let derived = self.derive_events(d, (method, own_update, standby.is_some()), now);
            found.extend(derived.events);
            later.extend(derived.later);
            let converged_at = derived
                .converged
                .filter(|(c, _)| c.cause == crate::history::Cause::Desired)
                .map(|_| now);
            self.publish(d, now);
            self.status
                .update(|s| s.set_recorded(&d.param, derived.seen, converged_at));
            report.phases.insert(d.param.clone(), d.phase);
        }
        self.note_run(found, later);
        self.exec_events();
        decisions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{RollPurpose, RollTo, StackUpdate};

    fn decision(param: &str, action: Option<Action>) -> Decision {
        Decision {
            param: param.into(),
            desired: "Yes".into(),
            observed: None,
            phase: Phase::Progressing,
            reason: "Test",
            message: String::new(),
            drift: true,
            action,
            pending: Vec::new(),
            services: Vec::new(),
        }
    }

    fn roll() -> Roll {
        Roll {
            service: "ServiceWebApi".into(),
            service_name: "convox-web".into(),
            cluster: "convox-Cluster".into(),
            from_task_definition: "arn:td:1".into(),
            to: RollTo::Relabelled,
            label: "rack.ECSExec".into(),
            value: "Yes".into(),
            purpose: RollPurpose::Change,
        }
    }

    fn update() -> Action {
        Action::UpdateStack(StackUpdate {
            from: Some("1".into()),
            to: "2".into(),
            downgrade: false,
            reuse_template: false,
            parameters: Vec::new(),
        })
    }

    #[test]
    fn at_most_one_write_in_a_fixed_order() {
        let template = || {
            Some(TemplateRef {
                version: crate::model::RackVersion::parse("20260418101514").expect("version"),
                location: crate::templates::TemplateLocation::Url(
                    "https://example.com/rack.json".into(),
                ),
            })
        };
        let stack = |cancel: bool, changes: bool| StackPlan {
            cancel: cancel.then(|| "failing".into()),
            changes: if changes {
                [("ApiCount".to_string(), "3".to_string())].into()
            } else {
                Default::default()
            },
            ..StackPlan::default()
        };
        let cases = vec![
            ("nothing to write", None, stack(false, false), None, None),
            (
                "a relabel roll first",
                Some(decision("ECSExec", Some(Action::Roll(roll())))),
                stack(true, true),
                Some((decision("Version", Some(update())), template())),
                Some(Write::Roll(roll())),
            ),
            (
                "then a cancel",
                Some(decision("ECSExec", None)),
                stack(true, true),
                Some((decision("Version", Some(update())), template())),
                Some(Write::CancelStack),
            ),
            (
                "then the version",
                None,
                stack(false, true),
                Some((decision("Version", Some(update())), template())),
                Some(Write::Version),
            ),
            (
                "a version without its template is no write",
                None,
                stack(false, false),
                Some((decision("Version", Some(update())), None)),
                None,
            ),
            (
                "then the parameters",
                None,
                stack(false, true),
                Some((decision("Version", None), template())),
                Some(Write::StackParameters),
            ),
        ];
        for (name, relabel, stack, version, want) in cases {
            let d = Decided {
                own_update: false,
                relabel,
                stack,
                version,
                held: Vec::new(),
            };
            assert_eq!(choose_write(&d), want, "{name}");
        }
    }
}
