//! The simulated rack's stack: updates, their events, rollbacks, as CloudFormation makes
//! them.

use std::collections::BTreeMap;

use serde_json::json;
use tokio::time::Instant;

use super::*;

impl State {
    /// The parameters (with defaults) of the stack's own template.
    pub(super) fn current_declared(&self) -> BTreeMap<String, Option<String>> {
        let version = self.parameters.get("Version").cloned().unwrap_or_default();
        self.templates
            .get(&version)
            .map(|d| {
                d.params
                    .values()
                    .map(|p| (p.name.clone(), p.default.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The parameters (with defaults) of the template an update names.
    pub(super) fn declared(
        &self,
        template: &TemplateRef,
        name: &str,
    ) -> Result<BTreeMap<String, Option<String>>, RackError> {
        match &template.location {
            TemplateLocation::Body { body, .. } => Ok(declared_parameters(body)
                .map_err(|e| cfn_validation("UpdateStack", name, &e))?
                .into_iter()
                .map(|k| (k, None))
                .collect()),
            TemplateLocation::Url(_) => self
                .templates
                .get(&template.version.to_string())
                .map(|d| {
                    d.params
                        .values()
                        .map(|p| (p.name.clone(), p.default.clone()))
                        .collect()
                })
                .ok_or_else(|| cfn_validation("UpdateStack", name, "S3 error: Access Denied")),
        }
    }

    /// The stack's parameters after an update: given values, previous values, template
    /// defaults; CloudFormation's errors for anything else.
    pub(super) fn next_parameters(
        &self,
        declared: &BTreeMap<String, Option<String>>,
        parameters: &[StackParameter],
        name: &str,
    ) -> Result<BTreeMap<String, String>, RackError> {
        let mut next = BTreeMap::new();
        for p in parameters {
            if !declared.contains_key(&p.key) {
                let message = format!("Parameters: [{}] do not exist in the template", p.key);
                return Err(cfn_validation("UpdateStack", name, &message));
            }
            let value = match &p.value {
                Some(v) => v.clone(),
                None => self.parameters.get(&p.key).cloned().ok_or_else(|| {
                    cfn_validation("UpdateStack", name, &format!("Invalid input for parameter key {}. Cannot specify usePreviousValue as true for a parameter key not in the previous template", p.key))
                })?,
            };
            next.insert(p.key.clone(), value);
        }
        for (k, default) in declared {
            if next.contains_key(k) {
                continue;
            }
            let Some(d) = default else {
                let message = format!("Parameters: [{k}] must have values");
                return Err(cfn_validation("UpdateStack", name, &message));
            };
            next.insert(k.clone(), d.clone());
        }
        Ok(next)
    }

    pub(super) fn start_stack_update(
        &mut self,
        now: Instant,
        request: &StackUpdateRequest,
        next: BTreeMap<String, String>,
        declared: BTreeMap<String, Option<String>>,
    ) {
        let services_settled = self.services.iter().all(SimService::settled);
        let version = match &request.template {
            Some(t) => t.version.to_string(),
            None => self.parameters.get("Version").cloned().unwrap_or_default(),
        };
        self.stack_updates.push(StackUpdateRecord {
            version: version.clone(),
            at: now,
            services_settled,
            parameters: request
                .parameters
                .iter()
                .map(|p| (p.key.clone(), p.value.clone()))
                .collect(),
        });
        let fault = self.stack_update_faults.pop_front();
        self.stack_status = "UPDATE_IN_PROGRESS".into();
        self.stack_status_reason = Some("User Initiated".into());
        // An empty token stands for an update made without one (the convox CLI sends none).
        self.stack_token = (!request.token.is_empty()).then(|| request.token.clone());
        self.stack_event(
            now,
            &self.settings.rack.clone(),
            "UPDATE_IN_PROGRESS",
            "User Initiated",
        );
        self.stack_update = Some(PendingStackUpdate {
            at: now + self.settings.stack_update,
            version,
            parameters: next,
            declared,
            fault,
            applied: false,
            previous: (
                self.parameters.clone(),
                self.services
                    .iter()
                    .map(|s| {
                        s.primary()
                            .map(|d| d.task_definition.clone())
                            .unwrap_or_default()
                    })
                    .collect(),
            ),
            rolling_back: false,
        });
    }

    pub(super) fn stack_event(&mut self, at: Instant, logical: &str, status: &str, reason: &str) {
        self.stack_events.push(StackEvent {
            logical_id: logical.to_string(),
            status: status.to_string(),
            reason: (!reason.is_empty()).then(|| reason.to_string()),
            token: self.stack_token.clone(),
            at: Some(self.clock.wall_at(at)),
        });
    }

    /// The events of an update that fails on `resource`: as on a real rack (148 resources),
    /// far more than one page of 100 between the update's start and its end, with the real
    /// cause buried under the rollback's own events.
    pub(super) fn record_failed_update(&mut self, at: Instant, resource: &str, reason: &str) {
        let stack = self.settings.rack.clone();
        for i in 0..60 {
            let logical = format!("RackResource{i:03}");
            self.stack_event(at, &logical, "UPDATE_IN_PROGRESS", "");
            self.stack_event(at, &logical, "UPDATE_COMPLETE", "");
        }
        self.stack_event(at, resource, "UPDATE_FAILED", reason);
        let summary = format!("The following resource(s) failed to update: [{resource}].");
        self.stack_event(at, &stack, "UPDATE_ROLLBACK_IN_PROGRESS", &summary);
        for logical in ["ServiceMonitorApi", "ApiMonitorTasks"] {
            self.stack_event(at, logical, "UPDATE_FAILED", "Resource update cancelled");
        }
        for i in 0..55 {
            let logical = format!("RackResource{i:03}");
            self.stack_event(at, &logical, "UPDATE_IN_PROGRESS", "");
            self.stack_event(at, &logical, "UPDATE_COMPLETE", "");
        }
    }
}

impl State {
    /// CloudFormation's side of an `UpdateStack`: at `at`, either fail and roll back, or
    /// update the API task definitions (the label follows the template) and roll the
    /// services, then complete once their rollouts have.
    pub(super) fn advance_stack_update(&mut self, now: Instant) {
        let Some(u) = self.stack_update.as_ref() else {
            return;
        };
        if u.at > now {
            return;
        }
        if u.rolling_back {
            return self.finish_rollback();
        }
        if let Some((resource, reason)) = u.fault.clone() {
            let at = u.at;
            self.stack_update = None;
            self.record_failed_update(at, &resource, &reason);
            self.stack_status_reason = Some(format!(
                "The following resource(s) failed to update: [{resource}]."
            ));
            self.stack_status = "UPDATE_ROLLBACK_IN_PROGRESS".into();
            self.stack_settles = Some((
                at + self.settings.stack_update,
                "UPDATE_ROLLBACK_COMPLETE".into(),
            ));
            return;
        }
        if !u.applied {
            self.apply_stack_update(now);
        }
        let settled = self.services.iter().all(SimService::settled);
        let waited_too_long = self
            .stack_update
            .as_ref()
            .is_some_and(|u| now >= u.at + STABILIZE_TIMEOUT);
        if settled {
            self.stack_update = None;
            self.stack_status = "UPDATE_COMPLETE".into();
            self.stack_status_reason = None;
        } else if waited_too_long {
            self.roll_back_stack(
                now,
                "ServiceWebApi",
                "Service did not stabilize within the time CloudFormation waits.",
            );
        }
    }

    /// CloudFormation updates the resources: the parameters, and the API task definitions
    /// (and services) when what their labels carry changes.
    pub(super) fn apply_stack_update(&mut self, now: Instant) {
        let Some(u) = self.stack_update.as_mut() else {
            return;
        };
        u.applied = true;
        let (version, parameters, declared) =
            (u.version.clone(), u.parameters.clone(), u.declared.clone());
        let labels_before = (
            self.parameters.get("Version").cloned(),
            self.parameters.get("ECSExec").cloned(),
        );
        self.parameters = parameters;
        let ecs_exec = declared.contains_key("ECSExec").then(|| {
            self.parameters
                .get("ECSExec")
                .cloned()
                .unwrap_or_else(|| "No".into())
        });
        let labels_after = (Some(version.clone()), ecs_exec.clone());
        if labels_before == labels_after {
            return;
        }
        for i in 0..self.services.len() {
            self.stack_roll(i, now, |body| {
                for label in ["rack.Version", "convox.release"] {
                    set_label(body, label, Some(&version));
                }
                set_label(body, "rack.ECSExec", ecs_exec.as_deref());
                body["containerDefinitions"][0]["image"] = json!(format!("convox/rack:{version}"));
            });
        }
    }

    /// CloudFormation rolls the update back: the parameters as they were, every service back
    /// on the revision it ran before.
    pub(super) fn roll_back_stack(&mut self, now: Instant, resource: &str, reason: &str) {
        let Some(u) = self.stack_update.as_mut() else {
            return;
        };
        u.rolling_back = true;
        u.at = now;
        let (parameters, revisions) = u.previous.clone();
        self.record_failed_update(now, resource, reason);
        self.stack_status = "UPDATE_ROLLBACK_IN_PROGRESS".into();
        self.stack_status_reason = Some(format!(
            "The following resource(s) failed to update: [{resource}]."
        ));
        self.parameters = parameters;
        for (i, td) in revisions.into_iter().enumerate() {
            let current = self.services[i]
                .primary()
                .map(|d| d.task_definition.clone());
            if current.as_deref() != Some(td.as_str()) && !td.is_empty() {
                self.stack_resources
                    .insert(self.services[i].task_logical.clone(), td.clone());
                self.deploy(i, td, now);
            }
        }
    }

    pub(super) fn finish_rollback(&mut self) {
        if self.services.iter().all(SimService::settled) {
            self.stack_update = None;
            self.stack_status = "UPDATE_ROLLBACK_COMPLETE".into();
        }
    }
}
