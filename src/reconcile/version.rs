//! Version changes: the target template a version change would update to (read once per
//! version: releases are immutable), the version planner's decision, and the one-shot
//! downgrade gate of `check-downgrade`.

use super::*;

impl Reconciler {
    /// The downgrade gate for a version change to `to`, from what the rack runs now and the
    /// params file (for `check-downgrade`). Writes nothing, and reads no template but the
    /// target's.
    pub async fn check_version(&mut self, to: RackVersion) -> Result<VersionCheck, String> {
        let (observed, _) = self.preview_params().await.map_err(|e| e.to_string())?;
        let ecs = self.ecs_exec_state(&observed);
        let current = observed.stack.version();
        if current.is_some_and(|c| to >= c) {
            // Not a downgrade: no template needed to answer.
            return Ok(VersionCheck {
                current,
                gate: plan::Gate::NotNeeded,
                template: None,
            });
        }
        let (template, declared) = self.target(to).await?;
        Ok(VersionCheck {
            current,
            gate: plan::downgrade_gate(
                to,
                observed
                    .stack
                    .parameters
                    .get(VERSION_PARAM)
                    .map(String::as_str),
                &declared,
                &ecs,
            ),
            template: Some(template.to_string()),
        })
    }

    /// The target template of `version` and the parameters it declares, cached.
    pub(super) async fn target(
        &mut self,
        version: RackVersion,
    ) -> Result<(TemplateRef, BTreeSet<String>), String> {
        if let Some((t, summary)) = self.templates.get(&version) {
            return Ok((t.clone(), summary.parameters.clone()));
        }
        let template = self
            .settings
            .templates
            .locate(version)
            .map_err(|e| e.to_string())?;
        let summary = self
            .rack
            .template_summary(&template)
            .await
            .map_err(|e| e.to_string())?;
        let declared = summary.parameters.clone();
        self.templates.insert(version, (template.clone(), summary));
        Ok((template, declared))
    }

    /// The template a version change would update to, and the parameters it declares (a
    /// read, once per version); nothing when the stack runs the version already.
    pub(super) async fn version_target(
        &mut self,
        version: RackVersion,
        observed: &ObservedRack,
    ) -> Target {
        let stack = &observed.stack;
        if stack.version() == Some(version) && stack.state() == StackState::Stable {
            return Ok((None, BTreeSet::new()));
        }
        self.target(version)
            .await
            .map(|(t, declared)| (Some(t), declared))
    }

    /// The version planner's decision (and the target template). Reads and writes nothing.
    pub(super) fn version_decision(
        &self,
        version: RackVersion,
        target: Target,
        observed: &ObservedRack,
        ecs: &EcsExecState,
        (owner, failing): (&plan::Ownership, Option<String>),
        now: SystemTime,
    ) -> (Decision, Option<TemplateRef>) {
        let (template, declared) = match target {
            Ok(t) => t,
            Err(e) => {
                let d = plan::version_template_unavailable(version, observed, &e);
                return (d, None);
            }
        };
        let empty = Memory::default();
        let mem = self.memory.get(VERSION_PARAM).unwrap_or(&empty);
        let ctx = VersionContext {
            now,
            attempted: self.stack.version,
            ownership: owner.clone(),
            cancelled: self.stack.cancelled,
            failing,
            failed_tasks_threshold: self.settings.failed_tasks_threshold,
            retry_not_before: mem.retry_not_before,
            last_failure: mem.last_failure.clone(),
            failure_reason: self.stack.memory.failure_reason.clone(),
        };
        (
            plan::plan_version(version, observed, &declared, ecs, &ctx),
            template,
        )
    }
}
