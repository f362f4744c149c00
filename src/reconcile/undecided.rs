//! Runs that decide nothing: the rack could not be observed (its last known state is kept,
//! `Unknown` only after repeated failures), the run ran out of time, or there is no valid
//! desired state.

use super::*;

impl Reconciler {
    /// A run that did not finish in time was abandoned where it stood (an AWS call that
    /// hangs, most likely). Like an unobservable rack: report it and retry with backoff.
    pub(super) async fn deadline_exceeded(&mut self, deadline: Duration) -> Report {
        let error = RackError::Deadline { after: deadline };
        let delay = self.error_delay();
        warn!(error = %error, attempt = self.consecutive_errors, retry_in = %humantime::format_duration(round(delay)),
            "reconcile abandoned");
        let message = error.to_string();
        self.status.update(|s| {
            s.ready = false;
            s.rack_error = Some(message);
        });
        self.write_status_file().await;
        Report {
            result: "error",
            phases: BTreeMap::new(),
            next: delay,
            params_error: self.params_error.clone(),
            rack_error: Some(error),
            has_desired: self.desired.is_some(),
            acted: false,
            retrying: false,
        }
    }

    /// What the status may show of the desired state before the rack's template has checked
    /// it: the last accepted state, else only what parsing already checked in full (`ECSExec`,
    /// `Version`); an unchecked value may be a secret.
    pub(super) fn shown_while_unobservable(&self) -> DesiredParams {
        if let Some(d) = &self.desired {
            return d.clone();
        }
        let mut shown = self.candidate.clone().unwrap_or_default();
        shown
            .values
            .retain(|k, _| crate::model::managed_param(k).is_some());
        shown
    }

    /// The rack was observed: ready, and what it showed.
    pub(super) fn observed_ok(&mut self, observed: &ObservedRack, now: SystemTime) {
        self.consecutive_errors = 0;
        self.error_backoff = None;
        self.forget_settled_rollouts(observed);
        self.metrics.observed(now);
        self.status.update(|s| {
            s.ready = true;
            s.rack_error = None;
            s.stack_status = Some(observed.stack.status.clone());
            s.last_reconcile = Some(crate::clock::rfc3339(now));
            s.observed(now);
        });
    }

    /// No valid params file (yet): nothing is changed, and the status says why.
    pub(super) async fn no_desired_state(&mut self, now: SystemTime, report: Report) -> Report {
        let message = match &self.params_error {
            Some(e) => format!("no valid params file yet, nothing is changed: {e}"),
            None => "no valid params file yet, nothing is changed".to_string(),
        };
        self.status.update(|s| {
            s.ready = false;
            for p in MANAGED_PARAMS {
                s.record_phase(
                    p.name,
                    None,
                    Phase::Unknown,
                    "NoDesiredState",
                    &message,
                    now,
                );
            }
        });
        self.write_status_file().await;
        report
    }

    /// The rack could not be observed: say so, keep every parameter's last known drift and
    /// its start (an outage does not reset the drift alert's window), and turn the phases
    /// `Unknown` only after [`UNKNOWN_AFTER`] failures in a row (one transient error does not
    /// flap them). The report says `Unknown` at once: nothing was decided.
    pub(super) async fn unobservable(
        &mut self,
        e: RackError,
        desired: &DesiredParams,
        now: SystemTime,
        mut report: Report,
    ) -> Report {
        let delay = self.error_delay();
        warn!(error = %e, attempt = self.consecutive_errors, retry_in = %humantime::format_duration(round(delay)),
            "observing the rack failed");
        let message = format!(
            "observing the rack failed ({} time(s) in a row), retrying in {}: {e}",
            self.consecutive_errors,
            humantime::format_duration(round(delay))
        );
        let wanted = intents(desired);
        let unknown = self.consecutive_errors >= UNKNOWN_AFTER;
        self.status.update(|s| {
            s.ready = false;
            s.rack_error = Some(e.to_string());
            for (name, value) in &wanted {
                if unknown || s.parameter(name).is_none() {
                    let reason = "RackUnreachable";
                    s.record_phase(name, Some(value), Phase::Unknown, reason, &message, now);
                }
            }
        });
        for (name, _) in &wanted {
            report.phases.insert(name.clone(), Phase::Unknown);
            if unknown {
                self.metrics.set_phase(name, Phase::Unknown);
            }
        }
        self.write_status_file().await;
        report.result = "error";
        report.rack_error = Some(e);
        report.next = delay;
        report
    }
}
