//! History: what the rack went through, when, why, who did it and how long it took.
//!
//! Pure: the events a reconcile's decisions mean, derived from what was recorded of each
//! parameter before ([`Seen`]) and the new decision; and the log they are kept in ([`Log`]),
//! bounded by age and size, read and written as JSON Lines. No I/O, no clock (the caller
//! passes `now`).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::plan::{Decision, Phase, ServiceProgress, ServiceState};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The params file's desired value of a parameter changed (or it was first read).
    DesiredChanged,
    /// The params file was refused; the last valid desired state is kept.
    DesiredInvalid,
    /// The controller made a write: `UpdateStack`, `RegisterTaskDefinition`, `UpdateService`.
    WriteMade,
    /// A write the controller tried failed.
    WriteFailed,
    /// A service started rolling to a new revision.
    RolloutStarted,
    /// The tasks of a rollout changed (new running of desired, old draining).
    RolloutProgress,
    /// A service's rollout completed.
    RolloutCompleted,
    /// A rollout failed (its new tasks keep failing, it timed out, the stack update fails).
    RolloutFailed,
    /// A failed change is being undone (a service pointed back, the stack rolling back).
    RollbackStarted,
    /// A failed change was undone: the rack is back where it was.
    RolledBack,
    /// The controller cancelled its own failing stack update.
    RolloutCancelled,
    /// Undoing a failed change fails too.
    RollbackFailing,
    /// A parameter reached its desired value on the rack.
    Converged,
    /// The rack stopped holding a converged desired value: changed outside the controller.
    DriftDetected,
    /// A drifted parameter holds its desired value again.
    DriftCorrected,
    /// Someone else's stack update is under way.
    StackChangedOutside,
    /// The downgrade gate refused a version change.
    DowngradeRefused,
    /// Any other change of a parameter's phase (blocked, waiting, unknown, failed).
    PhaseChanged,
    /// This controller acquired the lease with no live holder.
    LeaseAcquired,
    /// This controller lost the lease.
    LeaseLost,
    /// This controller took the lease over from a holder whose lease lapsed.
    LeaseTakenOver,
    /// Tasks moved between exec paths.
    ExecReadinessChanged,
}

impl Kind {
    pub const ALL: [Kind; 22] = [
        Kind::DesiredChanged,
        Kind::DesiredInvalid,
        Kind::WriteMade,
        Kind::WriteFailed,
        Kind::RolloutStarted,
        Kind::RolloutProgress,
        Kind::RolloutCompleted,
        Kind::RolloutFailed,
        Kind::RollbackStarted,
        Kind::RolledBack,
        Kind::RolloutCancelled,
        Kind::RollbackFailing,
        Kind::Converged,
        Kind::DriftDetected,
        Kind::DriftCorrected,
        Kind::StackChangedOutside,
        Kind::DowngradeRefused,
        Kind::PhaseChanged,
        Kind::LeaseAcquired,
        Kind::LeaseLost,
        Kind::LeaseTakenOver,
        Kind::ExecReadinessChanged,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::DesiredChanged => "desired_changed",
            Kind::DesiredInvalid => "desired_invalid",
            Kind::WriteMade => "write_made",
            Kind::WriteFailed => "write_failed",
            Kind::RolloutStarted => "rollout_started",
            Kind::RolloutProgress => "rollout_progress",
            Kind::RolloutCompleted => "rollout_completed",
            Kind::RolloutFailed => "rollout_failed",
            Kind::RollbackStarted => "rollback_started",
            Kind::RolledBack => "rolled_back",
            Kind::RolloutCancelled => "rollout_cancelled",
            Kind::RollbackFailing => "rollback_failing",
            Kind::Converged => "converged",
            Kind::DriftDetected => "drift_detected",
            Kind::DriftCorrected => "drift_corrected",
            Kind::StackChangedOutside => "stack_changed_outside",
            Kind::DowngradeRefused => "downgrade_refused",
            Kind::PhaseChanged => "phase_changed",
            Kind::LeaseAcquired => "lease_acquired",
            Kind::LeaseLost => "lease_lost",
            Kind::LeaseTakenOver => "lease_taken_over",
            Kind::ExecReadinessChanged => "exec_readiness_changed",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who made it happen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Actor {
    /// A controller: its holder id, and its lease fence when there is a lease.
    Controller {
        holder: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fence: Option<u64>,
    },
    /// Not the controller: a stack update without its token, a label changed out of band.
    Outside,
    /// Not known: a stack update whose owner could not be read.
    Unknown,
}

impl Actor {
    pub fn fence(&self) -> Option<u64> {
        match self {
            Actor::Controller { fence, .. } => *fence,
            Actor::Outside | Actor::Unknown => None,
        }
    }
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Actor::Controller {
                holder,
                fence: Some(n),
            } => write!(f, "{holder} (fence {n})"),
            Actor::Controller {
                holder,
                fence: None,
            } => f.write_str(holder),
            Actor::Outside => f.write_str("outside the controller"),
            Actor::Unknown => f.write_str("not known"),
        }
    }
}

/// One event of the rack's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// RFC 3339, to the second.
    pub time: String,
    pub kind: Kind,
    /// The parameters it concerns (none for the lease).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<String>,
    /// A CamelCase reason, as in the status.
    pub reason: String,
    pub message: String,
    /// Who made it happen; for a controller, its holder id and fence.
    pub actor: Actor,
    /// For ends (a rollout completed, a change converged, a rollback done): how long it took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<u64>,
    /// What it names: `service`, `taskDefinition`, `token`, `running`, `desired`, `etag`...
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub detail: BTreeMap<String, String>,
}

impl Event {
    pub fn new(now: SystemTime, kind: Kind, reason: &str, message: String, actor: Actor) -> Self {
        Event {
            time: crate::clock::rfc3339(now),
            kind,
            params: Vec::new(),
            reason: reason.to_string(),
            message,
            actor,
            duration_seconds: None,
            detail: BTreeMap::new(),
        }
    }

    pub fn param(mut self, name: &str) -> Self {
        self.params.push(name.to_string());
        self
    }

    pub fn params<I: IntoIterator<Item = S>, S: Into<String>>(mut self, names: I) -> Self {
        self.params.extend(names.into_iter().map(Into::into));
        self
    }

    pub fn detail(mut self, key: &str, value: impl ToString) -> Self {
        self.detail.insert(key.to_string(), value.to_string());
        self
    }

    pub fn took(mut self, d: Duration) -> Self {
        self.duration_seconds = Some(d.as_secs());
        self
    }

    /// When it happened.
    pub fn at(&self) -> Option<SystemTime> {
        humantime::parse_rfc3339_weak(&self.time).ok()
    }

    /// Concerns `param`.
    pub fn concerns(&self, param: &str) -> bool {
        self.params.iter().any(|p| p == param)
    }
}

/// Why a change of a parameter is under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Cause {
    /// The params file asks for another value.
    Desired,
    /// The rack drifted from a converged value.
    Drift,
}

/// A change of a parameter under way, from when it began until the rack holds the value
/// (kept in the status document, so a restart measures from the same start).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    /// RFC 3339.
    pub since: String,
    pub to: String,
    pub cause: Cause,
    /// The controller wrote for it (else the rack came to the value by itself or by hand).
    #[serde(default)]
    pub by_controller: bool,
}

impl Change {
    fn elapsed(&self, now: SystemTime) -> Option<Duration> {
        let since = humantime::parse_rfc3339_weak(&self.since).ok()?;
        Some(now.duration_since(since).unwrap_or_default())
    }
}

/// What the history last recorded of a parameter: the decision before this one, as its
/// events were derived (kept in the status document, so a restart goes on from it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Seen {
    pub desired: Option<String>,
    pub phase: Phase,
    pub reason: String,
    #[serde(default)]
    pub drift: bool,
    #[serde(default)]
    pub services: Vec<ServiceProgress>,
    /// A change under way (from a new desired value, or a drift) and since when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<Change>,
}

/// What a decision means for the history.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Derived {
    /// What the decision found: a failure, a rollback, a drift, a refusal, another phase.
    /// They come before the run's write, which answers them.
    pub events: Vec<Event>,
    /// What followed from it: rollouts started, progressing, completed, and the change
    /// converged. They come after the run's write, which may have started them.
    pub later: Vec<Event>,
    /// The change under way after this decision.
    pub change: Option<Change>,
    /// The change that converged with this decision, and how long it took.
    pub converged: Option<(Change, Duration)>,
    /// What to record of the parameter for the next decision.
    pub seen: Option<Seen>,
}

/// What a decision is judged in besides what was recorded before it.
#[derive(Debug, Clone)]
pub struct Context {
    pub now: SystemTime,
    /// This controller.
    pub me: Actor,
    /// The stack is updating under this controller's token (its update, or the rollback of
    /// it): what moves on the rack meanwhile is the controller's doing, not a drift.
    pub own_update: bool,
}

/// Reasons of someone else's change of the rack (unless the stack update is the
/// controller's own).
const OUTSIDE: [&str; 2] = ["StackUpdating", "ServiceBusy"];

/// Reasons that say the controller did not write now (a standby, a condition: see
/// `reconcile::not_a_failure`), not a new state of the rack: the recorded reason stays, so
/// what it was is not reported again once they pass; nor is the write a failure.
pub const NOT_WRITTEN: [&str; 2] = ["Standby", "ChangedSinceObserved"];

/// The event a new reason of a decision is, if it is one of its own.
fn kind_of_reason(reason: &str, own_update: bool) -> Option<Kind> {
    Some(match reason {
        "RolloutFailed" | "RolloutTimedOut" | "StackUpdateFailing" | "ServiceStuck" => {
            Kind::RolloutFailed
        }
        "RollingBack" | "StackRollingBack" => Kind::RollbackStarted,
        "RolloutReverted" | "StackUpdateRolledBack" => Kind::RolledBack,
        crate::plan::hold::ROLLBACK_FAILING | "RollbackStuck" => Kind::RollbackFailing,
        "DowngradeBlocked" | "DowngradeWaiting" => Kind::DowngradeRefused,
        "StackUpdating" if !own_update => Kind::StackChangedOutside,
        _ => return None,
    })
}

/// Reasons whose events come from elsewhere (the write's own event) or that say nothing new.
const QUIET: [&str; 5] = [
    "ActionFailed",
    "Standby",
    "ChangedSinceObserved",
    "Settling",
    "BackingOff",
];

/// The events `d` means after `prev` (what was recorded of the parameter before; `None`: not
/// managed before), with the change it leaves under way.
pub fn derive(prev: Option<&Seen>, d: &Decision, ctx: &Context) -> Derived {
    let now = ctx.now;
    let mut out = Derived {
        change: prev.and_then(|p| p.change.clone()),
        ..Derived::default()
    };
    let desired_changed = prev.is_none_or(|p| p.desired.as_deref() != Some(d.desired.as_str()));
    if desired_changed {
        out.change = (d.phase != Phase::Converged).then(|| Change {
            since: crate::clock::rfc3339(now),
            to: d.desired.clone(),
            cause: Cause::Desired,
            by_controller: false,
        });
    } else if !ctx.own_update {
        drift(d, now, &mut out);
    }
    let actor = if d.reason == "StackUpdateOwnerUnknown" {
        Actor::Unknown
    } else if OUTSIDE.contains(&d.reason) && !ctx.own_update {
        Actor::Outside
    } else {
        ctx.me.clone()
    };
    let new_reason = prev.is_none_or(|p| p.reason != d.reason);
    let new_phase = prev.is_none_or(|p| p.phase != d.phase);
    if let Some(kind) = kind_of_reason(d.reason, ctx.own_update).filter(|_| new_reason) {
        let mut e = Event::new(now, kind, d.reason, d.message.clone(), actor.clone());
        if kind == Kind::RolledBack {
            if let Some(took) = out.change.as_ref().and_then(|c| c.elapsed(now)) {
                e = e.took(took);
            }
        }
        out.events.push(e.param(&d.param));
    } else if (new_phase || new_reason)
        && !matches!(d.phase, Phase::Converged | Phase::Progressing)
        && !QUIET.contains(&d.reason)
    {
        let message = format!("{}: {}", d.phase, d.message);
        out.events.push(
            Event::new(now, Kind::PhaseChanged, d.reason, message, actor.clone()).param(&d.param),
        );
    }
    let seen_services = prev.map(|p| p.services.as_slice()).unwrap_or_default();
    for s in &d.services {
        let before = seen_services.iter().find(|p| p.service == s.service);
        if let Some(e) = service_event(before, s, now, &actor) {
            out.later.push(e.param(&d.param));
        }
    }
    if d.phase == Phase::Converged {
        converged(d, now, &ctx.me, &mut out);
    }
    out.seen = Some(record(prev, d, out.change.clone()));
    out
}

/// What to record of `d` for the next decision; a write not made now (a standby, a
/// condition) keeps the reason and phase recorded before.
fn record(prev: Option<&Seen>, d: &Decision, change: Option<Change>) -> Seen {
    let kept = prev.filter(|_| NOT_WRITTEN.contains(&d.reason));
    Seen {
        desired: Some(d.desired.clone()),
        phase: kept.map_or(d.phase, |p| p.phase),
        reason: kept.map_or_else(|| d.reason.to_string(), |p| p.reason.clone()),
        drift: d.drift,
        services: d.services.clone(),
        change,
    }
}

/// A value the rack held (no change of it under way) that it no longer holds.
fn drift(d: &Decision, now: SystemTime, out: &mut Derived) {
    if !d.drift || out.change.is_some() {
        return;
    }
    let observed = d.observed.as_deref().unwrap_or("mixed values");
    let message = format!(
        "{} holds {observed} on the rack, the params file {}: changed outside the controller",
        d.param, d.desired
    );
    out.events.push(
        Event::new(now, Kind::DriftDetected, d.reason, message, Actor::Outside)
            .param(&d.param)
            .detail("observed", observed),
    );
    out.change = Some(Change {
        since: crate::clock::rfc3339(now),
        to: d.desired.clone(),
        cause: Cause::Drift,
        by_controller: false,
    });
}

/// The change under way is over: the rack holds the value.
fn converged(d: &Decision, now: SystemTime, me: &Actor, out: &mut Derived) {
    let Some(change) = out.change.take() else {
        return;
    };
    let took = change.elapsed(now).unwrap_or_default();
    let (kind, what) = match change.cause {
        Cause::Desired => (Kind::Converged, "converged"),
        Cause::Drift => (Kind::DriftCorrected, "corrected"),
    };
    let message = format!(
        "{}={} {what} after {}",
        d.param,
        d.desired,
        humantime::format_duration(Duration::from_secs(took.as_secs()))
    );
    // The rack came to the value without a write of the controller's: by hand, or by itself.
    let actor = match change.by_controller {
        true => me.clone(),
        false => Actor::Outside,
    };
    out.later.push(
        Event::new(now, kind, d.reason, message, actor)
            .param(&d.param)
            .took(took),
    );
    out.converged = Some((change, took));
}

/// A service's rollout started, progressed or completed since `before`.
fn service_event(
    before: Option<&ServiceProgress>,
    s: &ServiceProgress,
    now: SystemTime,
    actor: &Actor,
) -> Option<Event> {
    let was = before.map(|b| b.state);
    let same_revision = before.is_some_and(|b| b.task_definition == s.task_definition);
    let revision = s.task_definition.as_deref().unwrap_or("unknown");
    let tasks = |verb: &str| {
        format!(
            "{}: {} of {} tasks run {revision}{verb}",
            s.service,
            s.running,
            s.desired,
            verb = if s.draining > 0 {
                format!(", {} old still draining", s.draining)
            } else {
                verb.to_string()
            }
        )
    };
    let (kind, message) = match (was, s.state) {
        (Some(ServiceState::RollingOut), ServiceState::RollingOut) if same_revision => {
            let b = before?;
            if (b.running, b.desired, b.draining) == (s.running, s.desired, s.draining) {
                return None;
            }
            (Kind::RolloutProgress, tasks(""))
        }
        (_, ServiceState::RollingOut) => (Kind::RolloutStarted, tasks("")),
        (Some(ServiceState::RollingOut), ServiceState::Converged) => {
            (Kind::RolloutCompleted, tasks(": rollout completed"))
        }
        _ => return None,
    };
    let mut e = Event::new(now, kind, state_reason(s.state), message, actor.clone())
        .detail("service", &s.service)
        .detail("taskDefinition", revision)
        .detail("running", s.running)
        .detail("desired", s.desired);
    if kind == Kind::RolloutCompleted {
        let started = s
            .since
            .as_deref()
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok());
        if let Some(started) = started {
            e = e.took(now.duration_since(started).unwrap_or_default());
        }
    }
    Some(e)
}

fn state_reason(s: ServiceState) -> &'static str {
    match s {
        ServiceState::RollingOut => "RollingOut",
        ServiceState::Converged => "Converged",
        _ => "Rolling",
    }
}

/// How much history is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Events older than this are dropped.
    pub max_age: Duration,
    /// The oldest events are dropped while the log is larger (as JSON Lines, in bytes).
    pub max_bytes: usize,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_age: Duration::from_secs(90 * 24 * 3600),
            max_bytes: 512 * 1024,
        }
    }
}

/// The events kept, oldest first, bounded by a [`Retention`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Log {
    events: VecDeque<(Event, usize)>,
    bytes: usize,
}

impl Log {
    /// The events of JSON Lines text; lines that are not an event are skipped and counted.
    pub fn parse(text: &str) -> (Log, usize) {
        let mut log = Log::default();
        let mut skipped = 0;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match serde_json::from_str::<Event>(line) {
                Ok(e) => log.push(e),
                Err(_) => skipped += 1,
            }
        }
        (log, skipped)
    }

    pub fn push(&mut self, e: Event) {
        let size = serde_json::to_string(&e).map(|s| s.len() + 1).unwrap_or(0);
        self.bytes += size;
        self.events.push_back((e, size));
    }

    /// Drops what the retention does not keep: events older than its age, then the oldest
    /// while the log is larger than its size. Returns how many were dropped.
    pub fn prune(&mut self, keep: Retention, now: SystemTime) -> usize {
        let before = self.events.len();
        let too_old = |e: &Event| {
            e.at()
                .is_some_and(|t| now.duration_since(t).unwrap_or_default() > keep.max_age)
        };
        while let Some((e, size)) = self.events.front() {
            if !too_old(e) && self.bytes <= keep.max_bytes {
                break;
            }
            self.bytes -= size;
            self.events.pop_front();
        }
        before - self.events.len()
    }

    /// The log as JSON Lines.
    pub fn to_text(&self) -> String {
        let mut out = String::with_capacity(self.bytes);
        for (e, _) in &self.events {
            if let Ok(line) = serde_json::to_string(e) {
                out.push_str(&line);
                out.push('\n');
            }
        }
        out
    }

    pub fn events(&self) -> impl DoubleEndedIterator<Item = &Event> {
        self.events.iter().map(|(e, _)| e)
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether `e` is among the log's newest events (an event written already, by a write
    /// whose answer was lost).
    pub fn has_recent(&self, e: &Event, within: usize) -> bool {
        self.events().rev().take(within).any(|x| x == e)
    }

    /// The newest fence any controller wrote an event under.
    pub fn newest_fence(&self) -> Option<u64> {
        self.events().filter_map(|e| e.actor.fence()).max()
    }
}

/// Events of one run that say the same of several parameters (a stack update someone else
/// started, seen by each) as one event naming them all.
pub fn coalesce(events: Vec<Event>) -> Vec<Event> {
    let mut out: Vec<Event> = Vec::with_capacity(events.len());
    for e in events {
        let same = out.iter_mut().find(|o| {
            (o.kind, &o.reason, &o.message, &o.actor, &o.detail)
                == (e.kind, &e.reason, &e.message, &e.actor, &e.detail)
        });
        match same {
            Some(o) => {
                for p in e.params {
                    if !o.params.contains(&p) {
                        o.params.push(p);
                    }
                }
            }
            None => out.push(e),
        }
    }
    out
}

/// The start of a query's window: a duration back from `now` (`24h`, `90m`) or an RFC 3339
/// time.
pub fn since(text: &str, now: SystemTime) -> Result<SystemTime, String> {
    if let Ok(back) = humantime::parse_duration(text) {
        return Ok(now.checked_sub(back).unwrap_or(SystemTime::UNIX_EPOCH));
    }
    humantime::parse_rfc3339_weak(text).map_err(|_| {
        format!("since {text:?}: expected a duration back from now (24h, 90m) or a time (2026-12-03T15:00:00Z)")
    })
}

/// The events that match a query: since a time, about a parameter.
pub fn select<'a>(
    events: impl Iterator<Item = &'a Event>,
    since: Option<SystemTime>,
    param: Option<&str>,
) -> Vec<Event> {
    events
        .filter(|e| since.is_none_or(|s| e.at().is_none_or(|t| t >= s)))
        .filter(|e| param.is_none_or(|p| e.concerns(p)))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests;
