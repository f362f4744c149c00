//! The rack's history on tokio's paused clock: a whole story (an edit, a stack update and its
//! rollout, a refused downgrade, a rack update whose API tasks fail and its rollback, a lease
//! takeover, someone else's stack update and the drift it leaves) is exactly the expected
//! events, in order; a restart goes on with the same history; and the retention bounds it.

use crate::common;

use std::time::Duration;

use common::{drive, param, run_for, Harness, RELABEL_RELEASE};
use rack_reconciler::history::{Actor, Event, Kind, Log, Retention};
use rack_reconciler::lease::Timing;
use rack_reconciler::rack::sim::SimSettings;
use rack_reconciler::reconcile::Reconciler;

/// A rack on the release that declares `ECSExec` (`No`), whose older public release's API
/// tasks never start.
fn rack() -> Harness {
    let settings = SimSettings {
        failing_versions: vec![RELABEL_RELEASE.into()],
        ..SimSettings::default()
    };
    Harness::stack_first("ECSExec: \"No\"\n", settings)
}

/// The history as written next to the status document.
fn stored(h: &Harness) -> Vec<Event> {
    let text =
        std::fs::read_to_string(h.dir.path().join("params.history.jsonl")).unwrap_or_default();
    let (log, skipped) = Log::parse(&text);
    assert_eq!(skipped, 0, "every line is an event");
    log.events().cloned().collect()
}

/// Kind and parameters of each event, for comparing a story.
fn story(events: &[Event]) -> Vec<(Kind, String)> {
    events
        .iter()
        .map(|e| (e.kind, e.params.join(",")))
        .collect()
}

fn holder(e: &Event) -> Option<(&str, Option<u64>)> {
    match &e.actor {
        Actor::Controller { holder, fence } => Some((holder.as_str(), *fence)),
        Actor::Outside | Actor::Unknown => None,
    }
}

/// Someone else's stack update (no token): `ECSExec=Yes`.
async fn operator_sets_ecs_exec(h: &Harness) {
    common::operator_update(h, None, |key| {
        Some((key == "ECSExec").then(|| "Yes".to_string()))
    })
    .await;
}

async fn until(rec: &mut Reconciler, name: &'static str, reason: &'static str) {
    let shown = common::shows_reason(rec, name, reason);
    drive(rec, 400, shown).await;
    assert_eq!(
        param(rec, name).reason,
        reason,
        "{}",
        param(rec, name).message
    );
}

#[tokio::test(start_paused = true)]
async fn a_whole_story_is_exactly_its_events_and_goes_on_after_a_restart() {
    use Kind::*;
    let h = rack();
    let timing = Timing::for_duration(Duration::from_secs(30));
    let (la, lb) = common::two_leases(timing).await;
    let mut a = h.leased(&la);
    let mut b = h.leased(&lb);

    // a holds the lease; b stands by (and keeps nothing).
    until(&mut a, "ECSExec", "Converged").await;
    drive(&mut b, 1, |_| true).await;

    // An edit: one stack update, the API rolled, converged.
    h.write_params("ECSExec: \"Yes\"\n");
    until(&mut a, "ECSExec", "Converged").await;

    // A downgrade to a release that predates ECSExec, while it is Yes: refused.
    h.write_params(&format!(
        "ECSExec: \"Yes\"\nVersion: \"{RELABEL_RELEASE}\"\n"
    ));
    until(&mut a, "Version", "DowngradeBlocked").await;

    // ECSExec back to No, then the downgrade: its API tasks fail; cancelled, rolled back.
    h.write_params(&format!(
        "ECSExec: \"No\"\nVersion: \"{RELABEL_RELEASE}\"\n"
    ));
    until(&mut a, "Version", "StackUpdateRolledBack").await;
    h.write_params("ECSExec: \"No\"\n");
    until(&mut a, "ECSExec", "Converged").await;
    drive(&mut b, 1, |_| true).await;

    // a stops (a paused process); b takes the lease over.
    while !lb.is_leader() {
        tokio::time::sleep(timing.retry).await;
        lb.tick().await.expect("b");
    }
    until(&mut b, "ECSExec", "Converged").await;

    // Someone else's stack update sets ECSExec=Yes: waited for, then corrected.
    operator_sets_ecs_exec(&h).await;
    until(&mut b, "ECSExec", "StackUpdating").await;
    until(&mut b, "ECSExec", "Converged").await;

    let events = stored(&h);
    let e = "ECSExec";
    let v = "Version";
    let started = [(RolloutStarted, e), (RolloutStarted, e)];
    let completed = [(RolloutCompleted, e), (RolloutCompleted, e)];
    let mut want: Vec<(Kind, &str)> = vec![
        // a's first look: the params file, the lease.
        (DesiredChanged, e),
        (LeaseAcquired, ""),
        // The edit: one stack update, both API services rolled, converged.
        (DesiredChanged, e),
        (WriteMade, e),
    ];
    want.extend(started);
    want.extend(completed);
    want.extend([
        (Converged, e),
        // The downgrade while ECSExec=Yes: refused.
        (DesiredChanged, v),
        (DowngradeRefused, v),
        // ECSExec=No first: the downgrade is held until it has converged.
        (DesiredChanged, e),
        (DowngradeRefused, v),
        (WriteMade, e),
        (PhaseChanged, v),
    ]);
    want.extend(started);
    want.extend(completed);
    want.extend([
        // The downgrade: its API tasks fail; cancelled; CloudFormation rolls it back.
        (WriteMade, v),
        (Converged, e),
        (PhaseChanged, e),
    ]);
    want.extend(started);
    want.extend([
        (RolloutFailed, v),
        (RolloutCancelled, v),
        (RollbackStarted, v),
    ]);
    want.extend(started);
    want.extend(completed);
    want.extend([
        (RolledBack, v),
        (DesiredChanged, v),
        // b takes over; someone else's stack update changes ECSExec; b corrects it.
        (LeaseTakenOver, ""),
        (StackChangedOutside, e),
        (DriftDetected, e),
        (WriteMade, e),
    ]);
    want.extend(started);
    want.extend(completed);
    want.push((DriftCorrected, e));
    assert_eq!(
        story(&events),
        want.iter()
            .map(|(k, p)| (*k, p.to_string()))
            .collect::<Vec<_>>()
    );

    // Who: a under fence 1 until the takeover, b under fence 2 after; the operator's update
    // and the drift it left are outside the controller.
    let takeover = events
        .iter()
        .position(|e| e.kind == LeaseTakenOver)
        .expect("takeover");
    for (i, ev) in events.iter().enumerate() {
        let outside = matches!(ev.kind, StackChangedOutside | DriftDetected);
        let want = match (outside, i < takeover) {
            (true, _) => None,
            (false, true) => Some(("a", Some(1))),
            (false, false) => Some(("b", Some(2))),
        };
        assert_eq!(holder(ev), want, "{ev:?}");
    }
    // Ends say how long they took; the rollback's cause is in its message.
    for ev in events.iter().filter(|e| {
        matches!(
            e.kind,
            Converged | DriftCorrected | RolloutCompleted | RolledBack
        )
    }) {
        assert!(ev.duration_seconds.is_some_and(|d| d > 0), "{ev:?}");
    }
    let rolled_back = events
        .iter()
        .find(|e| e.kind == RolledBack)
        .expect("rolled back");
    assert!(
        rolled_back.message.contains("health checks"),
        "{}",
        rolled_back.message
    );
    let token = events
        .iter()
        .find(|e| e.kind == WriteMade && e.concerns("Version"))
        .and_then(|e| e.detail.get("token"))
        .expect("the update's token");
    assert!(token.starts_with("rack-reconciler-"), "{token}");
    // The takeover names whom it took the lease from.
    assert!(
        events[takeover].message.contains("from a"),
        "{}",
        events[takeover].message
    );

    // A restart (a new process, b's lease) goes on with the same history: nothing is
    // repeated, and the next change is appended.
    drop(b);
    let mut c = h.leased(&lb);
    run_for(&mut c, Duration::from_secs(120)).await;
    let after: Vec<(Kind, String)> = story(&stored(&h)).into_iter().skip(events.len()).collect();
    assert_eq!(
        after,
        vec![(LeaseAcquired, String::new())],
        "only the new process's lease"
    );
    h.write_params("ECSExec: \"Yes\"\n");
    until(&mut c, "ECSExec", "Converged").await;
    let all = stored(&h);
    assert_eq!(
        &all[..events.len()],
        &events[..],
        "the history before is kept as it was"
    );
    assert_eq!(all.last().map(|e| e.kind), Some(Converged));
    assert!(all.iter().all(|e| !e
        .message
        .contains(rack_reconciler::rack::sim::sim_password("convox").as_str())));
}

/// Settings whose history keeps at most `max_bytes`, and events at most `max_age` old.
fn bounded(h: &Harness, max_age: Duration, max_bytes: usize) -> Reconciler {
    let mut settings = h.settings();
    settings.history = Retention { max_age, max_bytes };
    h.reconciler_with(settings)
}

#[tokio::test(start_paused = true)]
async fn the_history_is_bounded_by_its_retention() {
    let h = Harness::stack_first("ApiCount: \"2\"\n", SimSettings::default());
    let mut rec = bounded(&h, Duration::from_secs(3600), 4096);
    for n in 2..12 {
        h.write_params(&format!("ApiCount: \"{n}\"\n"));
        until(&mut rec, "ApiCount", "Converged").await;
    }
    let path = h.dir.path().join("params.history.jsonl");
    let size = std::fs::metadata(&path).expect("history").len();
    assert!(size <= 4096, "{size} bytes");
    let events = stored(&h);
    assert_eq!(
        events.last().map(|e| e.kind),
        Some(Kind::Converged),
        "the newest are kept"
    );
    assert!(
        events.iter().all(|e| !e.message.contains("ApiCount: 2 →")),
        "the oldest are gone"
    );

    // An hour and more later, the next event leaves only itself and what came after.
    tokio::time::advance(Duration::from_secs(3700)).await;
    h.write_params("ApiCount: \"3\"\n");
    until(&mut rec, "ApiCount", "Converged").await;
    let events = stored(&h);
    let oldest = events.first().and_then(|e| e.at()).expect("events");
    let now = rack_reconciler::clock::Clock::new().now();
    assert!(now.duration_since(oldest).unwrap_or_default() <= Duration::from_secs(3600));
    assert_eq!(events.first().map(|e| e.kind), Some(Kind::DesiredChanged));
}

#[tokio::test(start_paused = true)]
async fn the_lease_holder_keeps_what_a_run_that_decided_nothing_found() {
    // A params file refused at the first look, under a lease: the holder keeps the event,
    // with its fence, though the run never got to decide.
    let h = Harness::stack_first("ECSExec: \"Maybe\"\n", SimSettings::default());
    let timing = Timing::for_duration(Duration::from_secs(30));
    let (la, _lb) = common::two_leases(timing).await;
    let mut a = h.leased(&la);
    drive(&mut a, 1, |_| true).await;
    let events = stored(&h);
    assert_eq!(story(&events), vec![(Kind::DesiredInvalid, String::new())]);
    assert_eq!(holder(&events[0]), Some(("a", Some(1))));
    assert!(
        events[0].message.contains("ECSExec"),
        "{}",
        events[0].message
    );
}
