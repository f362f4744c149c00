//! Restarts: what the controller writes down (the rollouts it started, its backoffs) lets a
//! new process carry on where the old one stopped. On tokio's paused clock.

use crate::common;

use std::time::Duration;

use common::{drive, ecs_exec, Harness};
use rack_reconciler::plan::Phase;
use rack_reconciler::rack::sim::{RolloutFault, SimSettings};
use rack_reconciler::reconcile::Trigger;

fn non_ha() -> SimSettings {
    SimSettings {
        high_availability: false,
        ..SimSettings::default()
    }
}

#[tokio::test(start_paused = true)]
async fn a_restart_right_after_a_failed_rollout_waits_for_the_backoff() {
    let h = Harness::with_sim("ECSExec: \"Yes\"\n", non_ha());
    h.sim.inject_rollout_fault(RolloutFault::FailToStart);
    let mut rec = h.reconciler();
    drive(&mut rec, 100, |r| ecs_exec(r) == Some(Phase::Failed)).await;
    let failed_at = tokio::time::Instant::now();
    let retry_not_before = {
        let status = rec.status().get();
        let written = status
            .controller
            .failures
            .get("ECSExec")
            .cloned()
            .expect("backoff written down");
        assert!(written
            .last_failure
            .as_deref()
            .unwrap_or("")
            .contains("ELB health checks"));
        written.retry_not_before
    };
    drop(rec);

    // A crash loop: every few seconds a new process starts from the status file.
    for _ in 0..5 {
        let mut rec = h.reconciler();
        let r = rec.reconcile(Trigger::Startup).await;
        assert_eq!(
            ecs_exec(&r),
            Some(Phase::Failed),
            "{}",
            common::param(&rec, "ECSExec").message
        );
        common::let_pass(Duration::from_secs(3)).await;
    }
    let updates = h.sim.updates();
    assert_eq!(
        updates.len(),
        2,
        "the rollout and its undo, nothing more: {updates:?}"
    );

    // The next process retries once the written-down backoff has passed, not before.
    let mut rec = h.reconciler();
    let reports = drive(&mut rec, 300, |r| ecs_exec(r) == Some(Phase::Converged)).await;
    assert_eq!(
        ecs_exec(reports.last().expect("report")),
        Some(Phase::Converged)
    );
    let retry = &h.sim.updates()[2];
    let not_before = humantime::parse_rfc3339(&retry_not_before).expect("time");
    let waited = retry.at - failed_at;
    // The first backoff is 30s plus up to 30s of jitter (written down to the second).
    assert!(
        waited >= Duration::from_secs(29) && waited <= Duration::from_secs(61),
        "retried after {waited:?}, backoff until {not_before:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_rollout_started_before_a_restart_is_still_undone_when_it_fails() {
    let h = Harness::with_sim("ECSExec: \"Yes\"\n", non_ha());
    let original = h
        .sim
        .resources()
        .get("ApiWebTasks")
        .cloned()
        .expect("revision");
    h.sim.inject_rollout_fault(RolloutFault::FailToStart);
    let mut rec = h.reconciler();
    assert!(rec.reconcile(Trigger::Startup).await.acted, "rolled");
    drop(rec);

    let mut rec = h.reconciler();
    let reports = drive(&mut rec, 100, |r| ecs_exec(r) == Some(Phase::Failed)).await;
    assert!(
        reports.last().expect("report").acted,
        "undone by the new process"
    );
    let updates = h.sim.updates();
    assert_eq!(updates.len(), 2);
    assert_eq!(updates[1].task_definition, original);
}

#[tokio::test(start_paused = true)]
async fn conditions_keep_their_transition_times_across_a_restart() {
    let h = Harness::new("ECSExec: \"Yes\"\n");
    let mut rec = h.reconciler();
    drive(&mut rec, 200, |r| ecs_exec(r) == Some(Phase::Converged)).await;
    let ready = |rec: &rack_reconciler::reconcile::Reconciler| {
        common::param(rec, "ECSExec")
            .conditions
            .into_iter()
            .find(|c| c.kind == "Ready")
            .expect("Ready")
    };
    let before = ready(&rec);
    assert_eq!(before.status, "True");
    drop(rec);

    common::let_pass(Duration::from_secs(600)).await;
    let mut rec = h.reconciler();
    let r = rec.reconcile(Trigger::Startup).await;
    assert_eq!(ecs_exec(&r), Some(Phase::Converged));
    let after = ready(&rec);
    assert_eq!(after.status, "True");
    assert_eq!(
        after.last_transition_time, before.last_transition_time,
        "no transition happened: the time is the one written before the restart"
    );
    assert_eq!(
        (before.observed_generation, after.observed_generation),
        (1, 1),
        "the same params file read again is the same generation"
    );
}
