//! One active writer per rack: a lease in a table (DynamoDB in a rack), taken, renewed and
//! checked again right before every write.
//!
//! The record holds the holder's name, a fencing counter that grows by one each time the
//! lease changes hands, and a renewal counter. Every write to it is a compare-and-swap on the
//! record last seen, so two controllers can never both believe a write succeeded.
//!
//! Expiry is judged on each controller's own clocks, as Kubernetes leader election does, so
//! clock skew between machines does not matter: the holder counts its lease valid for
//! `duration` minus a margin from the moment it *sent* its last successful write (on its
//! monotonic clock, and on its wall clock so that time suspended counts too, see [`fence`]); a
//! standby takes over only once it has seen the same record, unchanged, for a full `duration`
//! *as the record states it*: the holder's, whatever the standby is configured with. The
//! wall-clock expiry in the record is for people ("held by X until T").
//!
//! [`Elector`] is the pure decision; [`Lease`] drives it against a [`LeaseStore`].

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use thiserror::Error;
use tokio::sync::{watch, Mutex};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::clock::Clock;

pub mod dynamodb;
pub mod fence;

pub use fence::{Deadline, Fence};

/// The lease as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    /// Who holds it; empty once released.
    pub holder: String,
    /// The fencing counter: one more each time the lease changes hands.
    pub fence: u64,
    /// One more on every renewal: a record that stops changing has a dead holder.
    pub renewals: u64,
    /// When it runs out by the holder's clock (for people, and for the table's TTL).
    pub expires_at: SystemTime,
    /// The holder's lease duration: how long a standby waits on an unchanged record before it
    /// takes over (zero in a record written before durations were stored: the standby's own).
    pub duration: Duration,
}

impl LeaseRecord {
    fn is_free(&self) -> bool {
        self.holder.is_empty()
    }
}

/// What to do about the lease now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Store `new` if the stored record is still `expected` (`None`: no record at all).
    Write {
        expected: Option<LeaseRecord>,
        new: LeaseRecord,
    },
    /// Someone else holds a live lease.
    Wait { holder: LeaseRecord },
}

/// The pure lease logic of one controller.
#[derive(Debug, Clone)]
pub struct Elector {
    me: String,
    duration: Duration,
    /// The record this controller holds and when the write that stored it was sent, on the
    /// monotonic and the wall clock.
    held: Option<(LeaseRecord, Instant, SystemTime)>,
    /// Another holder's record and when it was first seen as it is.
    seen: Option<(LeaseRecord, Instant)>,
}

impl Elector {
    pub fn new(me: impl Into<String>, duration: Duration) -> Self {
        Elector {
            me: me.into(),
            duration,
            held: None,
            seen: None,
        }
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    /// Whether this controller may write now: it holds the lease and, by its own clock, the
    /// lease has not run out (with a tenth of the duration to spare).
    pub fn holds(&self, now: Instant) -> bool {
        self.valid_until().is_some_and(|t| now < t)
    }

    /// Until when the lease held is good by this controller's monotonic clock.
    pub fn valid_until(&self) -> Option<Instant> {
        self.deadline().map(|d| d.mono)
    }

    /// Until when the lease held is good for writes, on both clocks.
    pub fn deadline(&self) -> Option<Deadline> {
        self.held.as_ref().map(|(_, sent, wall)| {
            Deadline::after(*sent, *wall, self.duration - self.duration / 10)
        })
    }

    /// The record held, if any.
    pub fn held(&self) -> Option<&LeaseRecord> {
        self.held.as_ref().map(|(r, _, _)| r)
    }

    /// The next step given the stored record (`current`): renew, take a free or abandoned
    /// lease, or wait.
    pub fn next(&mut self, current: Option<&LeaseRecord>, now: Instant, wall: SystemTime) -> Step {
        let expires_at = wall + self.duration;
        let Some(current) = current else {
            self.held = None;
            return Step::Write {
                expected: None,
                new: self.record(1, 0, expires_at),
            };
        };
        if self.held.as_ref().is_some_and(|(r, _, _)| r == current) {
            let mut new = current.clone();
            new.renewals += 1;
            new.expires_at = expires_at;
            new.duration = self.duration;
            return self.write(current, new);
        }
        // Not (or no longer) ours.
        self.held = None;
        if current.is_free() {
            return self.write(current, self.record(current.fence + 1, 0, expires_at));
        }
        // The holder's duration, as its record states it: a standby configured shorter
        // must not take over from a holder that renews as its own, longer, duration says.
        let holders = if current.duration.is_zero() {
            self.duration
        } else {
            current.duration
        };
        match &self.seen {
            Some((seen, since)) if seen == current => {
                if now.duration_since(*since) >= holders {
                    warn!(holder = %current.holder, fence = current.fence, duration = ?holders,
                        "the lease has not been renewed for the holder's full lease duration; taking over");
                    return self.write(current, self.record(current.fence + 1, 0, expires_at));
                }
            }
            _ => self.seen = Some((current.clone(), now)),
        }
        Step::Wait {
            holder: current.clone(),
        }
    }

    /// A write this controller sent at `sent` (monotonic) and `sent_wall` stored `new`.
    pub fn stored(&mut self, new: LeaseRecord, sent: Instant, sent_wall: SystemTime) {
        self.seen = None;
        self.held = Some((new, sent, sent_wall));
    }

    /// A write failed its condition: someone else changed the record first.
    pub fn lost(&mut self) {
        self.held = None;
    }

    /// The record that gives the lease up (free, same fence), when this controller holds it.
    pub fn release(&self) -> Option<Step> {
        let (held, _, _) = self.held.as_ref()?;
        let mut new = held.clone();
        new.holder.clear();
        new.renewals += 1;
        Some(Step::Write {
            expected: Some(held.clone()),
            new,
        })
    }

    fn record(&self, fence: u64, renewals: u64, expires_at: SystemTime) -> LeaseRecord {
        LeaseRecord {
            holder: self.me.clone(),
            fence,
            renewals,
            expires_at,
            duration: self.duration,
        }
    }

    fn write(&self, current: &LeaseRecord, new: LeaseRecord) -> Step {
        Step::Write {
            expected: Some(current.clone()),
            new,
        }
    }
}

/// An error reaching the lease table.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("lease table {table}: {operation} failed: {message} (check `lease.table` in the config and the controller's dynamodb permissions: see deploy/iam-policy.json)")]
pub struct LeaseError {
    pub table: String,
    pub operation: &'static str,
    pub message: String,
}

/// Where the lease is stored.
#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// The stored record (a strongly consistent read).
    async fn read(&self) -> Result<Option<LeaseRecord>, LeaseError>;
    /// Stores `new` if the stored record is `expected`; `false` when it is not.
    async fn swap(
        &self,
        expected: Option<&LeaseRecord>,
        new: &LeaseRecord,
    ) -> Result<bool, LeaseError>;
}

/// A lease store in memory: for tests, and to show the lease's behaviour on the sim.
#[derive(Debug, Default)]
pub struct MemoryLeaseStore {
    record: std::sync::Mutex<Option<LeaseRecord>>,
}

#[async_trait]
impl LeaseStore for MemoryLeaseStore {
    async fn read(&self) -> Result<Option<LeaseRecord>, LeaseError> {
        Ok(self.record.lock().map(|r| r.clone()).unwrap_or_default())
    }

    async fn swap(
        &self,
        expected: Option<&LeaseRecord>,
        new: &LeaseRecord,
    ) -> Result<bool, LeaseError> {
        let mut stored = self.record.lock().map_err(|_| LeaseError {
            table: "memory".into(),
            operation: "swap",
            message: "poisoned".into(),
        })?;
        if stored.as_ref() != expected {
            return Ok(false);
        }
        *stored = Some(new.clone());
        Ok(true)
    }
}

/// What the controller knows of the lease, for status and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaseView {
    /// This controller holds the lease.
    pub leader: bool,
    /// The holder last seen (this controller when `leader`).
    pub holder: Option<String>,
    pub fence: u64,
    /// When the holder's lease runs out, by the holder's clock.
    pub expires_at: Option<SystemTime>,
    /// The last error reaching the table, if the last attempt failed.
    pub error: Option<String>,
    /// While `leader`: until when, by this controller's clock, its lease is good.
    pub valid_until: Option<Instant>,
}

/// Why a write was refused: this controller does not hold the lease.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("{}", standby_message(.0))]
pub struct NotLeader(pub LeaseView);

/// "held by X until T", or why the lease is not known.
pub fn standby_message(v: &LeaseView) -> String {
    match (&v.holder, v.expires_at, &v.error) {
        (Some(h), Some(until), _) if !h.is_empty() => format!(
            "another controller holds the lease: {h} (fence {}) until {}; it makes the changes",
            v.fence,
            humantime::format_rfc3339_seconds(until)
        ),
        (_, _, Some(e)) => format!("the lease cannot be checked, so nothing is written: {e}"),
        _ => "this controller does not hold the lease yet, so nothing is written".into(),
    }
}

/// How often the lease is renewed and retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub duration: Duration,
    /// The holder renews this often.
    pub renew: Duration,
    /// A standby looks this often.
    pub retry: Duration,
}

impl Timing {
    pub fn for_duration(duration: Duration) -> Self {
        Timing {
            duration,
            renew: duration / 3,
            retry: duration / 6,
        }
    }
}

struct Inner {
    elector: Elector,
    store: Arc<dyn LeaseStore>,
    view: watch::Sender<LeaseView>,
    clock: Clock,
}

/// A controller's handle on the lease; clones share it.
#[derive(Clone)]
pub struct Lease {
    /// This controller's name in the lease.
    me: Arc<str>,
    inner: Arc<Mutex<Inner>>,
    view: watch::Receiver<LeaseView>,
    timing: Timing,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("view", &*self.view.borrow())
            .finish()
    }
}

impl Lease {
    pub fn new(store: Arc<dyn LeaseStore>, me: impl Into<String>, timing: Timing) -> Self {
        let (tx, rx) = watch::channel(LeaseView::default());
        let me: String = me.into();
        Lease {
            me: me.as_str().into(),
            inner: Arc::new(Mutex::new(Inner {
                elector: Elector::new(me, timing.duration),
                store,
                view: tx,
                clock: Clock::new(),
            })),
            view: rx,
            timing,
        }
    }

    /// This controller's name in the lease.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// Every change of what this controller knows of the lease.
    pub fn subscribe(&self) -> watch::Receiver<LeaseView> {
        self.view.clone()
    }

    /// Whether this controller holds the lease: by the last step taken, and not run out
    /// since (a process paused past its lease knows at once when it wakes).
    pub fn is_leader(&self) -> bool {
        let v = self.view.borrow();
        v.leader && v.valid_until.is_some_and(|t| Instant::now() < t)
    }

    /// A lease this controller held ran out without being renewed (the process was paused,
    /// or the table unreachable): looks at it anew, so it knows who holds it now.
    pub async fn refresh_if_lapsed(&self) {
        let lapsed = self.view.borrow().leader && !self.is_leader();
        if lapsed {
            if let Err(e) = self.tick().await {
                warn!(error = %e, "cannot check the lease; writing nothing");
            }
        }
    }

    /// What this controller knows of the lease now (`leader` as [`Lease::is_leader`]).
    pub fn view(&self) -> LeaseView {
        let mut v = self.view.borrow().clone();
        v.leader = self.is_leader();
        v
    }

    /// One step: renew the lease held, or look at it and take it when it is free or abandoned.
    pub async fn tick(&self) -> Result<(), LeaseError> {
        let mut inner = self.inner.lock().await;
        let result = inner.tick().await;
        inner.publish(result.as_ref().err());
        result
    }

    /// Right before a write: renews the lease held (one conditional write), so a controller
    /// that lost it, or was paused past its expiry, finds out and writes nothing.
    /// Returns the fence and when, by this controller's clocks, the lease renewed now runs
    /// out: every attempt of the write is checked against it ([`fence::scoped`]).
    pub async fn fence(&self) -> Result<Fence, NotLeader> {
        let mut inner = self.inner.lock().await;
        let now = Instant::now();
        if inner.elector.held().is_some() && !inner.elector.holds(now) {
            // Past its own expiry: a standby may already have taken over; the renewal says.
            warn!("the lease ran out before it was renewed; checking it anew");
        }
        let renewed = inner.renew().await;
        inner.publish(renewed.as_ref().err());
        match (renewed, inner.elector.held(), inner.elector.deadline()) {
            (Ok(()), Some(r), Some(deadline)) if !deadline.passed() => Ok(Fence {
                fence: r.fence,
                deadline,
            }),
            _ => Err(NotLeader(inner.view.borrow().clone())),
        }
    }

    /// Gives the lease up, so a standby takes over at once.
    pub async fn release(&self) {
        let mut inner = self.inner.lock().await;
        if let Some(Step::Write { expected, new }) = inner.elector.release() {
            match inner.store.swap(expected.as_ref(), &new).await {
                Ok(true) => info!("lease released"),
                Ok(false) => {}
                Err(e) => {
                    warn!(error = %e, "cannot release the lease; a standby takes over once it runs out")
                }
            }
            inner.elector.lost();
            inner.publish(None);
        }
    }

    /// Keeps the lease until `shutdown` turns true: renews every `renew` while held, looks
    /// every `retry` otherwise. It does not release the lease: a write in progress may still
    /// finish under it; the command releases it once its loop has stopped.
    pub async fn keep(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            if let Err(e) = self.tick().await {
                warn!(error = %e, "lease step failed; retrying");
            }
            let wait = if self.is_leader() {
                self.timing.renew
            } else {
                self.timing.retry
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
        }
    }
}

impl Inner {
    async fn tick(&mut self) -> Result<(), LeaseError> {
        if self.elector.held().is_some() {
            return self.renew().await;
        }
        let current = self.store.read().await?;
        self.step(current.as_ref()).await
    }

    /// Renews the held lease with one conditional write; on a lost race, reads who has it.
    async fn renew(&mut self) -> Result<(), LeaseError> {
        let Some(held) = self.elector.held().cloned() else {
            return Ok(());
        };
        self.step(Some(&held)).await?;
        if self.elector.held().is_none() {
            let current = self.store.read().await?;
            self.step(current.as_ref()).await?;
        }
        Ok(())
    }

    async fn step(&mut self, current: Option<&LeaseRecord>) -> Result<(), LeaseError> {
        let was_leader = self.elector.held().is_some();
        let (sent, sent_wall) = (Instant::now(), SystemTime::now());
        match self.elector.next(current, sent, self.clock.now()) {
            Step::Wait { holder } => {
                let known = self.view.borrow().holder.clone();
                if was_leader {
                    warn!(holder = %holder.holder, fence = holder.fence, "lease lost; standing by");
                } else if known.as_deref() != Some(holder.holder.as_str()) {
                    info!(holder = %holder.holder, fence = holder.fence, "another controller holds the lease; standing by");
                }
                self.view.send_modify(|v| {
                    v.holder = Some(holder.holder.clone());
                    v.fence = holder.fence;
                    v.expires_at = Some(holder.expires_at);
                });
            }
            Step::Write { expected, new } => match self.store.swap(expected.as_ref(), &new).await {
                Ok(true) => {
                    if !was_leader {
                        info!(holder = %new.holder, fence = new.fence, "lease acquired; this controller writes");
                    }
                    self.elector.stored(new, sent, sent_wall);
                }
                Ok(false) => {
                    if was_leader {
                        warn!("lease lost to another controller; standing by");
                    }
                    self.elector.lost();
                }
                Err(e) => return Err(e),
            },
        }
        Ok(())
    }

    fn publish(&mut self, error: Option<&LeaseError>) {
        let now = Instant::now();
        let leader = self.elector.holds(now);
        let valid_until = self.elector.valid_until();
        let held = self.elector.held().cloned();
        self.view.send_modify(|v| {
            v.leader = leader;
            v.valid_until = valid_until;
            if let Some(r) = held {
                v.holder = Some(r.holder);
                v.fence = r.fence;
                v.expires_at = Some(r.expires_at);
            }
            v.error = error.map(ToString::to_string);
        });
    }
}

/// This controller's name in the lease: `user@host:pid`.
pub fn default_holder() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| "unknown-host".into());
    let user = std::env::var("USER").unwrap_or_default();
    let pid = std::process::id();
    if user.is_empty() {
        format!("{host}:{pid}")
    } else {
        format!("{user}@{host}:{pid}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_secs(30);

    fn rec(holder: &str, fence: u64, renewals: u64) -> LeaseRecord {
        LeaseRecord {
            holder: holder.into(),
            fence,
            renewals,
            expires_at: SystemTime::UNIX_EPOCH,
            duration: D,
        }
    }

    fn written(step: Step) -> (Option<LeaseRecord>, LeaseRecord) {
        match step {
            Step::Write { expected, new } => (expected, new),
            Step::Wait { holder } => panic!("waits for {holder:?}"),
        }
    }

    #[test]
    fn decisions() {
        let t0 = Instant::now();
        let wall = SystemTime::UNIX_EPOCH;
        // (stored, already seen since, now, expected holder and fence of the write or None to wait)
        type Case = (
            &'static str,
            Option<LeaseRecord>,
            Option<LeaseRecord>,
            Duration,
            Option<(&'static str, u64)>,
        );
        let cases: Vec<Case> = vec![
            (
                "no record: take it with fence 1",
                None,
                None,
                Duration::ZERO,
                Some(("a", 1)),
            ),
            (
                "released: take it with the next fence",
                Some(rec("", 4, 9)),
                None,
                Duration::ZERO,
                Some(("a", 5)),
            ),
            (
                "live holder: wait",
                Some(rec("b", 2, 7)),
                None,
                Duration::ZERO,
                None,
            ),
            (
                "unchanged for less than the duration: wait",
                Some(rec("b", 2, 7)),
                Some(rec("b", 2, 7)),
                D - Duration::from_secs(1),
                None,
            ),
            (
                "unchanged for the duration: take over, next fence",
                Some(rec("b", 2, 7)),
                Some(rec("b", 2, 7)),
                D,
                Some(("a", 3)),
            ),
            (
                "renewed since it was seen: wait again",
                Some(rec("b", 2, 8)),
                Some(rec("b", 2, 7)),
                D * 2,
                None,
            ),
        ];
        for (name, stored, seen, after, want) in cases {
            let mut e = Elector::new("a", D);
            e.seen = seen.map(|s| (s, t0));
            let step = e.next(stored.as_ref(), t0 + after, wall);
            match want {
                None => assert!(matches!(step, Step::Wait { .. }), "{name}: {step:?}"),
                Some((holder, fence)) => {
                    let (expected, new) = written(step);
                    assert_eq!(expected, stored, "{name}: swaps on what it saw");
                    assert_eq!((new.holder.as_str(), new.fence), (holder, fence), "{name}");
                    assert_eq!(new.expires_at, wall + D, "{name}");
                }
            }
        }
    }

    #[test]
    fn the_holder_renews_on_its_own_record_and_loses_it_to_a_change() {
        let t0 = Instant::now();
        let mut e = Elector::new("a", D);
        let (_, first) = written(e.next(None, t0, SystemTime::UNIX_EPOCH));
        e.stored(first.clone(), t0, SystemTime::now());
        assert!(e.holds(t0));
        let (expected, renewed) = written(e.next(Some(&first), t0, SystemTime::UNIX_EPOCH));
        assert_eq!(expected.as_ref(), Some(&first));
        assert_eq!((renewed.fence, renewed.renewals), (1, 1));
        // Someone took it over meanwhile: the holder stops holding and waits.
        let taken = rec("b", 2, 0);
        assert!(matches!(
            e.next(Some(&taken), t0, SystemTime::UNIX_EPOCH),
            Step::Wait { .. }
        ));
        assert!(!e.holds(t0));
    }

    #[test]
    fn a_holder_stops_holding_before_a_standby_may_take_over() {
        let t0 = Instant::now();
        let mut e = Elector::new("a", D);
        e.stored(rec("a", 1, 0), t0, SystemTime::now());
        assert!(e.holds(t0 + D * 8 / 10));
        assert!(!e.holds(t0 + D * 9 / 10));
        assert!(!e.holds(t0 + D));
        assert!(e.release().is_some());
        e.lost();
        assert!(e.release().is_none());
    }

    #[test]
    fn a_standby_waits_out_the_holders_duration_not_its_own() {
        let t0 = Instant::now();
        let long = LeaseRecord {
            duration: Duration::from_secs(120),
            ..rec("b", 2, 7)
        };
        let mut standby = Elector::new("a", D);
        standby.seen = Some((long.clone(), t0));
        for (after, takes) in [
            (D, false),
            (Duration::from_secs(119), false),
            (Duration::from_secs(120), true),
        ] {
            let step = standby.next(Some(&long), t0 + after, SystemTime::UNIX_EPOCH);
            assert_eq!(matches!(step, Step::Write { .. }), takes, "after {after:?}");
        }
        // A record without a duration (written before it was stored): the standby's own.
        let old = LeaseRecord {
            duration: Duration::ZERO,
            ..rec("b", 2, 7)
        };
        standby.seen = Some((old.clone(), t0));
        assert!(matches!(
            standby.next(Some(&old), t0 + D, SystemTime::UNIX_EPOCH),
            Step::Write { .. }
        ));
        // The record written states the writer's duration.
        let (_, new) = written(standby.next(None, t0, SystemTime::UNIX_EPOCH));
        assert_eq!(new.duration, D);
    }

    #[tokio::test(start_paused = true)]
    async fn two_controllers_one_writer_and_fencing_after_a_pause() {
        let store: Arc<dyn LeaseStore> = Arc::new(MemoryLeaseStore::default());
        let timing = Timing::for_duration(D);
        let a = Lease::new(store.clone(), "a", timing);
        let b = Lease::new(store.clone(), "b", timing);
        a.tick().await.expect("a");
        b.tick().await.expect("b");
        assert!(a.is_leader() && !b.is_leader());
        assert!(a.fence().await.is_ok());
        let refused = b.fence().await.expect_err("b does not hold it");
        assert!(refused.to_string().contains("a (fence 1)"), "{refused}");

        // a is paused: b sees the record unchanged for a full duration and takes over.
        for _ in 0..7 {
            tokio::time::advance(timing.retry).await;
            b.tick().await.expect("b");
        }
        assert!(b.is_leader());
        assert_eq!(b.view().fence, 2);
        // a wakes: its next write is refused, and it knows who holds the lease now.
        let refused = a.fence().await.expect_err("a was paused past its lease");
        assert_eq!(refused.0.holder.as_deref(), Some("b"));
        assert!(!a.is_leader());

        // b stops and releases: a takes it at its next look, with the next fence.
        b.release().await;
        a.tick().await.expect("a");
        assert!(a.is_leader());
        assert_eq!(a.view().fence, 3);
    }
}
