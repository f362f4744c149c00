//! What the controller tells people: per-parameter phase, message and Kubernetes-style
//! conditions, served at `GET /status`, printed by `rack-reconciler status`, and written next
//! to the params file.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use crate::clock::rfc3339;
use crate::memory::Persisted;
use crate::plan::{Decision, PendingChange, Phase, ServiceProgress};
pub use crate::settings::status_file_for;

/// A Kubernetes-style condition: one per aspect, `True`, `False` or `Unknown`, with a reason
/// and a message only where it applies (when not `False`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The generation of the params file this condition was computed for.
    #[serde(default)]
    pub observed_generation: u64,
    /// RFC 3339; changes only when `status` changes (kept across restarts).
    pub last_transition_time: String,
}

/// The condition types, and the phase that makes each `True`.
pub const CONDITIONS: [(&str, Phase); 5] = [
    ("Ready", Phase::Converged),
    ("Progressing", Phase::Progressing),
    ("Degraded", Phase::Failed),
    ("Blocked", Phase::Blocked),
    ("Waiting", Phase::Waiting),
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParameterStatus {
    pub name: String,
    pub desired: Option<String>,
    pub observed: Option<String>,
    pub phase: Phase,
    pub reason: String,
    pub message: String,
    pub drift: bool,
    pub drift_since: Option<String>,
    #[serde(default)]
    pub services: Vec<ServiceProgress>,
    #[serde(default)]
    pub pending: Vec<PendingChange>,
    pub conditions: Vec<Condition>,
    pub last_reconcile: Option<String>,
    /// What the history last recorded of the parameter, with the change under way (from a
    /// new desired value, or a drift) and since when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recorded: Option<crate::history::Seen>,
    /// When the parameter last converged to a new desired value (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_change: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ParamsFileStatus {
    pub path: String,
    pub valid: bool,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub rack: String,
    pub backend: String,
    pub stack_status: Option<String>,
    pub params_file: ParamsFileStatus,
    pub parameters: Vec<ParameterStatus>,
    /// The last error observing the rack, if the last attempt failed.
    pub rack_error: Option<String>,
    /// Params loaded and the rack reachable at the last reconcile.
    pub ready: bool,
    pub last_reconcile: Option<String>,
    /// When the rack was last observed completely (RFC 3339).
    #[serde(default)]
    pub last_observation: Option<String>,
    /// The last complete observation is older than `timeouts.observation_stale` (the loop is
    /// stuck, or AWS has not answered for that long). Computed when the status is served.
    #[serde(default)]
    pub observation_stale: bool,
    #[serde(skip)]
    pub last_observed_at: Option<SystemTime>,
    /// What the controller writes down to survive a restart.
    #[serde(default)]
    pub controller: Persisted,
    /// A write failed with an error worth retrying and the controller retries it: a
    /// `Failed` parameter is not the end yet.
    #[serde(default)]
    pub retrying: bool,
    /// The lease, when the controller uses one: who writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseStatus>,
    /// Exec readiness: would `convox exec` use ECS Exec for each app task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<crate::exec::ExecStatus>,
}

/// The condition on `ECSExec` that exec readiness sets (besides the phase conditions).
pub const EXEC_READY: &str = "ExecReady";

/// The lease as this controller sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct LeaseStatus {
    /// This controller holds the lease and writes; `false`: a standby that only observes.
    pub leader: bool,
    pub holder: Option<String>,
    /// The fencing counter of the holder's lease.
    pub fence: u64,
    /// When the holder's lease runs out unless renewed (RFC 3339, the holder's clock).
    pub expires_at: Option<String>,
    pub error: Option<String>,
}

impl From<&crate::lease::LeaseView> for LeaseStatus {
    fn from(v: &crate::lease::LeaseView) -> Self {
        LeaseStatus {
            leader: v.leader,
            holder: v.holder.clone(),
            fence: v.fence,
            expires_at: v.expires_at.map(rfc3339),
            error: v.error.clone(),
        }
    }
}

impl Status {
    /// The rack was observed completely at `now`.
    pub fn observed(&mut self, now: SystemTime) {
        self.last_observed_at = Some(now);
        self.last_observation = Some(rfc3339(now));
    }

    /// Whether the last complete observation is older than `max_age` at `now` (or there never
    /// was one although the controller has run for longer than that).
    pub fn stale(&self, now: SystemTime, started: SystemTime, max_age: Duration) -> bool {
        let since = self.last_observed_at.unwrap_or(started);
        now.duration_since(since).unwrap_or_default() > max_age
    }

    pub fn parameter(&self, name: &str) -> Option<&ParameterStatus> {
        self.parameters.iter().find(|p| p.name == name)
    }

    fn parameter_mut(&mut self, name: &str) -> &mut ParameterStatus {
        if let Some(i) = self.parameters.iter().position(|p| p.name == name) {
            return &mut self.parameters[i];
        }
        self.parameters.push(ParameterStatus {
            name: name.to_string(),
            desired: None,
            observed: None,
            phase: Phase::Unknown,
            reason: "NotObserved".into(),
            message: "not reconciled yet".into(),
            drift: false,
            drift_since: None,
            services: Vec::new(),
            pending: Vec::new(),
            conditions: Vec::new(),
            last_reconcile: None,
            recorded: None,
            last_change: None,
        });
        let last = self.parameters.len() - 1;
        &mut self.parameters[last]
    }

    /// What the history recorded of a parameter, and (when a change converged now) when.
    pub fn set_recorded(
        &mut self,
        name: &str,
        recorded: Option<crate::history::Seen>,
        converged_at: Option<SystemTime>,
    ) {
        let p = self.parameter_mut(name);
        p.recorded = recorded;
        if let Some(at) = converged_at {
            p.last_change = Some(rfc3339(at));
        }
    }

    /// Records a planner decision (possibly amended by what acting on it did).
    pub fn record(&mut self, d: &Decision, drift_since: Option<SystemTime>, now: SystemTime) {
        let generation = self.controller.generation;
        let p = self.parameter_mut(&d.param);
        p.desired = Some(d.desired.clone());
        p.observed = d.observed.clone();
        p.drift = d.drift;
        p.drift_since = drift_since.map(rfc3339);
        p.services = d.services.clone();
        p.pending = d.pending.clone();
        p.last_reconcile = Some(rfc3339(now));
        set_phase(p, generation, (d.phase, d.reason, &d.message), now);
    }

    /// Exec readiness's latest look, and its `ExecReady` condition on `ECSExec` when the
    /// params file manages it.
    pub fn set_exec(&mut self, exec: crate::exec::ExecStatus, now: SystemTime) {
        let (status, reason, message) = exec.condition();
        self.exec = Some(exec);
        let generation = self.controller.generation;
        let Some(p) = self
            .parameters
            .iter_mut()
            .find(|p| p.name == crate::model::ECS_EXEC.name)
        else {
            return;
        };
        let c = Condition {
            kind: EXEC_READY.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            observed_generation: generation,
            last_transition_time: rfc3339(now),
        };
        match p.conditions.iter_mut().find(|c| c.kind == EXEC_READY) {
            Some(old) => {
                let since = if old.status == c.status {
                    old.last_transition_time.clone()
                } else {
                    c.last_transition_time.clone()
                };
                *old = Condition {
                    last_transition_time: since,
                    ..c
                };
            }
            None => p.conditions.push(c),
        }
    }

    /// Records a phase without a decision (the rack could not be observed, or nothing is
    /// desired for the parameter).
    pub fn record_phase(
        &mut self,
        param: &str,
        desired: Option<&str>,
        phase: Phase,
        reason: &str,
        message: &str,
        now: SystemTime,
    ) {
        let generation = self.controller.generation;
        let p = self.parameter_mut(param);
        p.desired = desired.map(str::to_string);
        p.last_reconcile = Some(rfc3339(now));
        set_phase(p, generation, (phase, reason, message), now);
    }
}

fn set_phase(
    p: &mut ParameterStatus,
    generation: u64,
    (phase, reason, message): (Phase, &str, &str),
    now: SystemTime,
) {
    p.phase = phase;
    p.reason = reason.to_string();
    p.message = message.to_string();
    for (kind, when) in CONDITIONS {
        let status = if phase == Phase::Unknown {
            "Unknown"
        } else if phase == when {
            "True"
        } else {
            "False"
        };
        let applies = status != "False";
        let c = match p.conditions.iter().position(|c| c.kind == kind) {
            Some(i) => &mut p.conditions[i],
            None => {
                p.conditions.push(Condition {
                    kind: kind.to_string(),
                    status: String::new(),
                    reason: String::new(),
                    message: String::new(),
                    observed_generation: generation,
                    last_transition_time: rfc3339(now),
                });
                let last = p.conditions.len() - 1;
                &mut p.conditions[last]
            }
        };
        if c.status != status {
            c.last_transition_time = rfc3339(now);
        }
        c.status = status.to_string();
        c.observed_generation = generation;
        c.reason = if applies {
            reason.to_string()
        } else {
            String::new()
        };
        c.message = if applies {
            message.to_string()
        } else {
            String::new()
        };
    }
    // Conditions of earlier versions of the controller are not carried along.
    p.conditions
        .retain(|c| c.kind == EXEC_READY || CONDITIONS.iter().any(|(k, _)| *k == c.kind));
}

/// The status shared between the reconcile loop, the HTTP server and anyone waiting for a
/// change (`subscribe`).
#[derive(Clone)]
pub struct StatusHandle(Arc<watch::Sender<Status>>);

impl Default for StatusHandle {
    fn default() -> Self {
        Self::new(Status::default())
    }
}

impl StatusHandle {
    pub fn new(status: Status) -> Self {
        StatusHandle(Arc::new(watch::Sender::new(status)))
    }

    pub fn get(&self) -> Status {
        self.0.borrow().clone()
    }

    /// Reads part of the status without copying it all.
    pub fn read<T>(&self, f: impl FnOnce(&Status) -> T) -> T {
        f(&self.0.borrow())
    }

    pub fn update<T>(&self, f: impl FnOnce(&mut Status) -> T) -> T {
        let mut out = None;
        self.0.send_modify(|s| out = Some(f(s)));
        match out {
            Some(v) => v,
            None => unreachable!("send_modify always runs the closure"),
        }
    }

    /// A receiver that sees every update.
    pub fn subscribe(&self) -> watch::Receiver<Status> {
        self.0.subscribe()
    }
}

/// Writes the status atomically: a temporary file in the same directory, then a rename, so
/// readers never see half a file.
pub fn write_status_file(path: &Path, status: &Status) -> std::io::Result<()> {
    let body = serde_json::to_string_pretty(status).map_err(std::io::Error::other)?;
    crate::store::write_file(path, &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn conditions_change_transition_time_only_when_status_flips() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let t1 = t0 + Duration::from_secs(60);
        let t2 = t1 + Duration::from_secs(60);
        let mut s = Status::default();
        s.record_phase(
            "ECSExec",
            Some("Yes"),
            Phase::Progressing,
            "RollingOut",
            "rolling web",
            t0,
        );
        s.record_phase(
            "ECSExec",
            Some("Yes"),
            Phase::Progressing,
            "RollingOut",
            "rolling monitor",
            t1,
        );
        let p = s.parameter("ECSExec").expect("param");
        let progressing = p
            .conditions
            .iter()
            .find(|c| c.kind == "Progressing")
            .expect("cond");
        assert_eq!(
            (
                progressing.status.as_str(),
                progressing.last_transition_time.clone()
            ),
            ("True", rfc3339(t0))
        );
        assert_eq!(progressing.message, "rolling monitor");

        s.record_phase(
            "ECSExec",
            Some("Yes"),
            Phase::Converged,
            "Converged",
            "done",
            t2,
        );
        let p = s.parameter("ECSExec").expect("param");
        assert_eq!(p.conditions.len(), 5);
        for c in &p.conditions {
            let want = if c.kind == "Ready" { "True" } else { "False" };
            assert_eq!(c.status, want, "{}", c.kind);
            // A reason and a message only where the condition applies.
            assert_eq!(c.reason.is_empty(), c.kind != "Ready", "{}", c.kind);
        }
        let conv = p
            .conditions
            .iter()
            .find(|c| c.kind == "Ready")
            .expect("cond");
        assert_eq!(conv.last_transition_time, rfc3339(t2));
        let blocked = p
            .conditions
            .iter()
            .find(|c| c.kind == "Blocked")
            .expect("cond");
        assert_eq!(blocked.last_transition_time, rfc3339(t0));
    }

    #[test]
    fn status_file_sits_next_to_the_params_file_and_is_replaced_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let params = dir.path().join("params.yaml");
        let path = status_file_for(&params);
        assert_eq!(path, dir.path().join("params.status.json"));
        let mut s = Status {
            rack: "convox".into(),
            ..Status::default()
        };
        write_status_file(&path, &s).expect("write");
        s.ready = true;
        write_status_file(&path, &s).expect("write");
        let back: Status =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        assert_eq!(back, s);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").collect();
        assert_eq!(leftovers.len(), 1);
    }
}
