//! The relabel path's write: rolling a service to a relabelled revision (or back), and what
//! the controller remembers of the rollouts it started.

use super::*;

impl Reconciler {
    /// A service with one deployment, completed, is no longer in a rollout of ours.
    pub(super) fn forget_settled_rollouts(&mut self, observed: &ObservedRack) {
        for s in &observed.services {
            let settled = s.service.deployments.len() == 1 && !s.service.rolling();
            if settled {
                self.own_rollouts.remove(&s.target.service);
            }
        }
    }

    /// On entering `Failed` because a rollout failed, count it and push the next attempt back.
    pub(super) fn account_failure(&mut self, d: &Decision, now: SystemTime) {
        let fresh = matches!(
            d.reason,
            "RolloutFailed" | "RolloutTimedOut" | "RolloutReverted" | "TemplateUnavailable"
        );
        let backoff = self.backoff();
        let mem = mem_of(&mut self.memory, &d.param);
        if d.phase != Phase::Failed || !fresh || mem.last_phase == Some(Phase::Failed) {
            return;
        }
        for s in d
            .services
            .iter()
            .filter(|s| s.state == ServiceState::Failed)
        {
            self.metrics.rollout_failure(&s.service);
            mem.failed_services.insert(s.service.clone());
            // Counted once: the retry after the backoff is a new attempt.
            mem.rolled_to.remove(&s.service);
        }
        let delay = mem.back_off(backoff, self.settings.backoff_max, now);
        mem.last_failure = Some(d.message.clone());
        mem.retrying = false;
        warn!(parameter = d.param, reason = d.reason, retry_in = %humantime::format_duration(round(delay)), "{}", d.message);
    }

    /// Makes the one write of a decision: point the service at an existing revision, or at a
    /// relabelled copy of the running one (reused or registered). The rollout is written down
    /// as the controller's before `UpdateService` is called, so neither a crash nor an
    /// abandoned run can leave a rollout of its own that it would not undo.
    pub(super) async fn act(&mut self, roll: &Roll, d: &mut Decision, now: SystemTime) {
        let arn = match self.target_revision(roll).await {
            Ok(arn) => arn,
            Err(e) => return self.roll_failed(roll, &e, d, now),
        };
        let before = self.own_rollouts.get(&roll.service).cloned();
        self.note_rollout(roll, &arn);
        self.write_status_file().await;
        match self
            .rack
            .update_service(&roll.cluster, &roll.service_name, &arn)
            .await
        {
            Ok(()) => {
                let what = match roll.purpose {
                    RollPurpose::Undo => "back to its previous revision",
                    RollPurpose::Change => "to the desired value",
                    RollPurpose::Correction => "to correct a drift",
                };
                let message = format!("UpdateService {} → {arn} ({what})", roll.service_name);
                self.note_write("UpdateService", &[d.param.as_str()], message)
                    .detail
                    .extend([
                        ("service".to_string(), roll.service.clone()),
                        ("taskDefinition".to_string(), arn.clone()),
                    ]);
                self.observer.rolling();
                self.rolled(roll, &arn, d, now);
            }
            Err(e) => {
                match before {
                    Some(own) => self.own_rollouts.insert(roll.service.clone(), own),
                    None => self.own_rollouts.remove(&roll.service),
                };
                self.roll_failed(roll, &e, d, now);
            }
        }
    }

    /// Records a rollout as the controller's: a new one from where the service is, or the
    /// undo of one.
    pub(super) fn note_rollout(&mut self, roll: &Roll, arn: &str) {
        match roll.purpose {
            RollPurpose::Undo => {
                if let Some(own) = self.own_rollouts.get_mut(&roll.service) {
                    own.undone = true;
                }
            }
            RollPurpose::Change | RollPurpose::Correction => {
                let own = OwnRollout {
                    from: roll.from_task_definition.clone(),
                    to: arn.to_string(),
                    undone: false,
                };
                self.own_rollouts.insert(roll.service.clone(), own);
            }
        }
    }

    pub(super) fn rolled(&mut self, roll: &Roll, arn: &str, d: &mut Decision, now: SystemTime) {
        self.metrics.rollout_started(&roll.service);
        self.last_write.insert(roll.service.clone(), now);
        let mem = mem_of(&mut self.memory, &d.param);
        let state = match roll.purpose {
            RollPurpose::Undo => ServiceState::RollingBack,
            RollPurpose::Change | RollPurpose::Correction => {
                mem.failed_services.remove(&roll.service);
                mem.rolled_to.insert(roll.service.clone(), arn.to_string());
                ServiceState::RollingOut
            }
        };
        if roll.purpose == RollPurpose::Correction {
            mem.corrections.push_back(now);
            mem.last_converged = None;
            self.metrics.correction(&d.param);
        }
        d.message = format!("{}; {} now deploys {}", d.message, roll.service, arn);
        if let Some(s) = d.services.iter_mut().find(|s| s.service == roll.service) {
            s.state = state;
        }
    }

    pub(super) fn roll_failed(
        &mut self,
        roll: &Roll,
        e: &RackError,
        d: &mut Decision,
        now: SystemTime,
    ) {
        let backoff = self.backoff();
        let mem = mem_of(&mut self.memory, &d.param);
        if let RackError::RevisionMismatch { .. } = e {
            // Registering again would only add another wrong revision.
            let message = format!(
                "{e}; nothing more is registered or rolled for {}={} until the params file changes or the controller restarts",
                roll.label, roll.value
            );
            mem.blocked = Some(message.clone());
            *d = d.clone().blocked("RevisionMismatch", message.clone());
            self.note_write_failed(
                "RegisterTaskDefinition",
                &[roll.label.trim_start_matches("rack.")],
                "RevisionMismatch",
                &message,
            );
            return;
        }
        let what = format!("rolling {} to {}={}", roll.service, roll.label, roll.value);
        write_failed(mem, (backoff, self.settings.backoff_max, now), e, d, &what);
        let (reason, message) = (d.reason, d.message.clone());
        self.note_write_failed("UpdateService", &[d.param.as_str()], reason, &message);
    }

    /// The revision a roll points the service at: an existing one, or a relabelled copy of
    /// the running one, reused or registered.
    pub(super) async fn target_revision(&mut self, roll: &Roll) -> Result<String, RackError> {
        if let RollTo::Revision(arn) = &roll.to {
            return Ok(arn.clone());
        }
        let Relabelled { arn, reused, info } = self
            .rack
            .relabel(&roll.from_task_definition, &roll.label, &roll.value)
            .await?;
        self.observer.learn(info);
        if reused {
            info!(service = %roll.service, task_definition = %arn, "reusing a revision registered earlier");
        } else {
            let message = format!(
                "RegisterTaskDefinition {arn}: {} with {}={}, the rest as it was",
                roll.from_task_definition, roll.label, roll.value
            );
            let param = roll.label.trim_start_matches("rack.").to_string();
            self.note_write("RegisterTaskDefinition", &[param.as_str()], message)
                .detail
                .extend([
                    ("service".to_string(), roll.service.clone()),
                    ("taskDefinition".to_string(), arn.clone()),
                ]);
        }
        Ok(arn)
    }
}
