//! What the loop remembers between runs, and the part of it that is written down on purpose
//! to survive a restart: the rollouts the controller started (so a failing one can still be
//! undone after a restart) and each parameter's failure backoff (so a crash loop does not
//! restart a failed rollout every time). The rest (corrections, the revision cache, log
//! de-duplication) is harmless to lose.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, SystemTime};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use serde::{Deserialize, Serialize};

use crate::plan::{OwnRollout, Phase};

/// Per-parameter memory between runs.
#[derive(Default)]
pub struct Memory {
    pub desired: Option<String>,
    pub last_converged: Option<String>,
    pub corrections: VecDeque<SystemTime>,
    pub backoff: Option<ExponentialBackoff>,
    /// Failures since the parameter last converged (how far the backoff has grown).
    pub failures: u32,
    pub retry_not_before: Option<SystemTime>,
    pub drift_since: Option<SystemTime>,
    /// Services whose latest rollout failed, until one is started again or all converge.
    pub failed_services: BTreeSet<String>,
    /// Services rolled for the current intent and not yet seen converged → revision.
    pub rolled_to: BTreeMap<String, String>,
    /// Why the controller's stack update failed, once looked up.
    pub failure_reason: Option<String>,
    /// Why the last attempt failed, for the message while backing off.
    pub last_failure: Option<String>,
    /// The last failure was an error worth retrying (throttling, a server error, a timeout).
    pub retrying: bool,
    /// A write that must not be repeated failed in a way retrying cannot fix: nothing more
    /// is written for this intent.
    pub blocked: Option<String>,
    pub last_phase: Option<Phase>,
    pub last_logged: Option<(Phase, &'static str, String)>,
}

impl Memory {
    /// Pushes the next attempt back by the next backoff delay and returns the delay.
    pub fn back_off(
        &mut self,
        builder: ExponentialBuilder,
        max: Duration,
        now: SystemTime,
    ) -> Duration {
        let delay = self
            .backoff
            .get_or_insert_with(|| builder.build())
            .next()
            .unwrap_or(max);
        self.failures += 1;
        self.retry_not_before = Some(now + delay);
        delay
    }

    /// Forgets the failures: the parameter converged.
    pub fn reset_backoff(&mut self) {
        self.backoff = None;
        self.failures = 0;
        self.retry_not_before = None;
        self.last_failure = None;
        self.retrying = false;
    }

    /// A new desired value: a new intent, except that a backoff still running carries over
    /// (an editor flipping the value must not get around it).
    pub fn new_intent(&mut self, desired: Option<String>, now: SystemTime) {
        let backing_off = self.retry_not_before.is_some_and(|t| t > now);
        let kept = Memory {
            desired,
            drift_since: self.drift_since,
            ..Memory::default()
        };
        let old = std::mem::replace(self, kept);
        if backing_off {
            self.backoff = old.backoff;
            self.failures = old.failures;
            self.retry_not_before = old.retry_not_before;
            self.last_failure = old.last_failure;
        }
    }

    /// The part of this memory worth keeping across a restart, if any.
    pub fn persisted(&self) -> Option<PersistedFailure> {
        self.backoff_record(self.desired.as_deref()?)
    }

    /// The running backoff, written down as for `desired`, if there is one.
    pub fn backoff_record(&self, desired: &str) -> Option<PersistedFailure> {
        Some(PersistedFailure {
            desired: desired.to_string(),
            retry_not_before: crate::clock::rfc3339(self.retry_not_before?),
            last_failure: self.last_failure.clone(),
            failures: self.failures,
        })
    }

    /// Memory restored from what a previous run wrote down.
    pub fn restored(p: &PersistedFailure, builder: ExponentialBuilder) -> Memory {
        let mut backoff = builder.build();
        for _ in 0..p.failures {
            backoff.next();
        }
        Memory {
            desired: Some(p.desired.clone()),
            backoff: Some(backoff),
            failures: p.failures,
            retry_not_before: humantime::parse_rfc3339(&p.retry_not_before).ok(),
            last_failure: p.last_failure.clone(),
            ..Memory::default()
        }
    }
}

/// What is written down (in the status file) to survive a restart.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Persisted {
    /// Rollouts the controller started, by logical service id, until the service settles.
    #[serde(default)]
    pub own_rollouts: BTreeMap<String, OwnRollout>,
    /// Parameters backing off after a failure.
    #[serde(default)]
    pub failures: BTreeMap<String, PersistedFailure>,
    /// Increments whenever the valid desired state changes (`observedGeneration`).
    #[serde(default)]
    pub generation: u64,
    /// The controller's latest stack update (its token, what it asked for) and the stack
    /// parameters' backoff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack_update: Option<PersistedStackUpdate>,
    /// The lease fence the document was written under (absent without a lease).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<u64>,
    /// Running tasks per exec path at the last exec readiness event (the next is a move
    /// between paths).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub exec_paths: BTreeMap<String, usize>,
}

/// Whether a controller that took the lease with fence `mine` may pick up a status document
/// written under `written`. Fences grow by one at each handover, so the previous holder's
/// is `mine - 1`: a document written under an older fence may be a stale copy a controller
/// paused past its lease wrote after its successor's (or the previous holder never wrote one);
/// one written under a newer fence means this controller is behind. Either way it is not
/// picked up: the controller starts from what it observes. A document without a fence was
/// written without a lease.
pub fn restorable(written: Option<u64>, mine: u64) -> Result<(), String> {
    match written {
        None => Ok(()),
        Some(f) if f > mine => Err(format!(
            "it was written under fence {f}, newer than this controller's {mine}: another controller holds the lease now"
        )),
        Some(f) if f + 1 < mine => Err(format!(
            "it was written under fence {f}, but the lease was last held under fence {}: it may be a stale copy written by a controller paused past its lease (or the last holder wrote none)",
            mine - 1
        )),
        Some(_) => Ok(()),
    }
}

/// The controller's stack update, as written down before `UpdateStack` is sent: the token
/// proves the update is the controller's (its events carry it) after a restart or takeover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PersistedStackUpdate {
    /// The update's `ClientRequestToken`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Key → value the update in flight (or last made) asked for.
    #[serde(default)]
    pub attempted: BTreeMap<String, String>,
    /// The version it asked for, when it changed the version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The stack's `LastUpdatedTime` before it, so the update is seen to have happened.
    #[serde(default)]
    pub before: Option<String>,
    /// Cancelled already: not again.
    #[serde(default)]
    pub cancelled: bool,
    /// Its backoff, after a failure.
    #[serde(default)]
    pub failure: Option<PersistedFailure>,
}

/// A parameter's failure backoff, as written down.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PersistedFailure {
    /// The desired value the failure was for.
    pub desired: String,
    /// RFC 3339: no new attempt before then.
    pub retry_not_before: String,
    pub last_failure: Option<String>,
    /// Failures so far (how far the backoff has grown).
    pub failures: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_previous_holders_document_is_picked_up() {
        for (written, mine, ok) in [
            (None, 5, true),
            (Some(4), 5, true),
            (Some(5), 5, true),
            (Some(3), 5, false),
            (Some(1), 5, false),
            (Some(6), 5, false),
        ] {
            assert_eq!(
                restorable(written, mine).is_ok(),
                ok,
                "{written:?} at {mine}"
            );
        }
        let why = restorable(Some(2), 4).expect_err("stale");
        assert!(why.contains("fence 2") && why.contains("fence 3"), "{why}");
    }

    fn builder() -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_secs(30))
            .with_max_delay(Duration::from_secs(900))
            .with_factor(2.0)
            .without_max_times()
    }

    #[test]
    fn a_backoff_survives_a_restart_and_keeps_growing() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut m = Memory {
            desired: Some("Yes".into()),
            ..Memory::default()
        };
        assert_eq!(
            m.back_off(builder(), Duration::from_secs(900), t0),
            Duration::from_secs(30)
        );
        assert_eq!(
            m.back_off(builder(), Duration::from_secs(900), t0),
            Duration::from_secs(60)
        );
        m.last_failure = Some("tasks failed".into());
        let written = m.persisted().expect("backing off");
        assert_eq!(written.failures, 2);
        let mut back = Memory::restored(&written, builder());
        assert_eq!(back.retry_not_before, Some(t0 + Duration::from_secs(60)));
        assert_eq!(back.last_failure.as_deref(), Some("tasks failed"));
        assert_eq!(
            back.back_off(builder(), Duration::from_secs(900), t0),
            Duration::from_secs(120),
            "the next delay follows on"
        );
    }

    #[test]
    fn a_new_intent_keeps_a_running_backoff_only() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut m = Memory {
            desired: Some("Yes".into()),
            last_converged: Some("No".into()),
            ..Memory::default()
        };
        m.back_off(builder(), Duration::from_secs(900), t0);
        m.new_intent(Some("No".into()), t0 + Duration::from_secs(10));
        assert_eq!(m.desired.as_deref(), Some("No"));
        assert_eq!(m.retry_not_before, Some(t0 + Duration::from_secs(30)));
        assert_eq!(m.last_converged, None);
        m.new_intent(Some("Yes".into()), t0 + Duration::from_secs(31));
        assert_eq!(
            (m.retry_not_before, m.failures),
            (None, 0),
            "expired: forgotten"
        );
    }
}
