//! Faults on the simulated rack: failed and stuck rollouts, stack updates, API errors and
//! out-of-band reverts. All on tokio's paused clock.

mod common;

use std::time::Duration;

use common::{drive, ecs_exec, run_for, Harness};
use rack_reconciler::plan::Phase;
use rack_reconciler::rack::sim::{RolloutFault, SimSettings};

#[tokio::test(start_paused = true)]
async fn a_failed_rollout_is_failed_with_the_reason_and_retried_with_backoff() {
    let h = Harness::new("ECSExec: \"Yes\"\n");
    h.sim.inject_rollout_fault(RolloutFault::FailToStart);
    let mut rec = h.reconciler();
    let reports = drive(&mut rec, 100, |r| ecs_exec(r) == Some(Phase::Failed)).await;
    assert_eq!(
        ecs_exec(reports.last().expect("report")),
        Some(Phase::Failed)
    );
    let p = common::param(&rec, "ECSExec");
    assert_eq!(p.reason, "RolloutFailed");
    assert!(p.message.contains("circuit breaker"), "{}", p.message);
    let failed = p
        .conditions
        .iter()
        .find(|c| c.kind == "Failed")
        .expect("condition");
    assert_eq!(failed.status, "True");
    assert_eq!(h.sim.calls("UpdateService"), 1);

    // The next attempt waits for the backoff (at least 30s less jitter), then succeeds.
    let attempt_at = tokio::time::Instant::now();
    let reports = drive(&mut rec, 200, |r| ecs_exec(r) == Some(Phase::Converged)).await;
    assert_eq!(
        ecs_exec(reports.last().expect("report")),
        Some(Phase::Converged)
    );
    let retry = h.sim.updates()[1].clone();
    assert_eq!(retry.service, "ServiceWebApi");
    assert!(
        retry.at - attempt_at >= Duration::from_secs(15),
        "retried after {:?}",
        retry.at - attempt_at
    );
    assert!(
        reports.iter().any(|r| ecs_exec(r) == Some(Phase::Failed)),
        "backoff was not reported"
    );
    // The failed attempt's revision was reused for the retry.
    assert_eq!(h.sim.revisions("ServiceWebApi"), 2);
}

#[tokio::test(start_paused = true)]
async fn rollouts_that_always_fail_never_loop_tightly() {
    let settings = SimSettings {
        failing_rollouts: 10_000,
        ..SimSettings::default()
    };
    let h = Harness::with_sim("ECSExec: \"Yes\"\n", settings);
    let mut rec = h.reconciler();
    let reports = run_for(&mut rec, Duration::from_secs(24 * 3600)).await;
    let attempts = h.sim.calls("UpdateService");
    // Backoff from 30s doubling to 15 minutes: about 100 attempts a day at most, where
    // retrying after every failed rollout (about a minute each) would be over a thousand.
    assert!(
        (5..=110).contains(&attempts),
        "{attempts} attempts in a day"
    );
    let gaps: Vec<Duration> = h
        .sim
        .updates()
        .windows(2)
        .map(|w| w[1].at - w[0].at)
        .collect();
    assert!(
        gaps.iter()
            .skip(6)
            .all(|g| *g >= Duration::from_secs(7 * 60)),
        "gaps {gaps:?}"
    );
    assert_eq!(
        h.sim.revisions("ServiceWebApi"),
        2,
        "a revision per attempt"
    );
    assert!(reports
        .iter()
        .all(|r| ecs_exec(r) != Some(Phase::Converged)));
    let text = rec.metrics().render();
    assert!(text.contains("rack_reconciler_rollout_failures_total{service=\"ServiceWebApi\"}"));
}

#[tokio::test(start_paused = true)]
async fn a_stuck_rollout_fails_at_its_timeout() {
    let h = Harness::new("ECSExec: \"Yes\"\n");
    h.sim.inject_rollout_fault(RolloutFault::NeverHealthy);
    let mut rec = h.reconciler();
    let reports = drive(&mut rec, 1000, |r| ecs_exec(r) == Some(Phase::Failed)).await;
    assert_eq!(
        ecs_exec(reports.last().expect("report")),
        Some(Phase::Failed)
    );
    let p = common::param(&rec, "ECSExec");
    assert_eq!(p.reason, "RolloutTimedOut");
    assert!(p.message.contains("30m"), "{}", p.message);
    // It stays failed and nothing more is written while the rollout hangs.
    let writes = h.sim.writes();
    run_for(&mut rec, Duration::from_secs(3 * 3600)).await;
    assert_eq!(h.sim.writes(), writes);
}

#[tokio::test(start_paused = true)]
async fn a_stack_update_in_progress_means_waiting_without_writes() {
    let h = Harness::new("ECSExec: \"Yes\"\n");
    h.sim
        .set_stack_status("UPDATE_IN_PROGRESS", Some(Duration::from_secs(600)));
    let mut rec = h.reconciler();
    let reports = run_for(&mut rec, Duration::from_secs(590)).await;
    assert!(reports.iter().all(|r| ecs_exec(r) == Some(Phase::Waiting)));
    assert_eq!(h.sim.writes(), 0);
    let p = common::param(&rec, "ECSExec");
    assert!(p.message.contains("UPDATE_IN_PROGRESS"), "{}", p.message);
    // Once the stack settles, the controller resumes by itself.
    let reports = drive(&mut rec, 200, |r| ecs_exec(r) == Some(Phase::Converged)).await;
    assert_eq!(
        ecs_exec(reports.last().expect("report")),
        Some(Phase::Converged)
    );
    assert!(h
        .sim
        .updates()
        .iter()
        .all(|u| u.at >= tokio::time::Instant::now() - Duration::from_secs(600)));
}

#[tokio::test(start_paused = true)]
async fn api_errors_are_retried_with_backoff_and_reported() {
    let h = Harness::new("ECSExec: \"Yes\"\n");
    h.sim.inject_api_errors("DescribeServices", 3);
    h.sim.inject_api_errors("UpdateService", 1);
    let mut rec = h.reconciler();
    let first = rec
        .reconcile(rack_reconciler::reconcile::Trigger::Startup)
        .await;
    assert_eq!(first.result, "error");
    assert_eq!(ecs_exec(&first), Some(Phase::Unknown));
    assert!(first.next >= Duration::from_secs(15));
    let status = rec.status().get();
    assert!(!status.ready);
    assert!(status
        .rack_error
        .as_deref()
        .unwrap_or("")
        .contains("DescribeServices"));

    let reports = drive(&mut rec, 300, |r| ecs_exec(r) == Some(Phase::Converged)).await;
    assert_eq!(
        ecs_exec(reports.last().expect("report")),
        Some(Phase::Converged)
    );
    assert!(
        reports.iter().any(|r| r.result == "failed"),
        "the failed UpdateService was not reported"
    );
    assert_eq!(h.sim.revisions("ServiceWebApi"), 2);
    let text = rec.metrics().render();
    assert!(
        text.contains("operation=\"UpdateService\",outcome=\"transient_error\",service=\"ecs\"} 1"),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_out_of_band_revert_is_seen_at_resync_corrected_and_counted() {
    let h = Harness::new("ECSExec: \"Yes\"\n");
    let mut rec = h.reconciler();
    drive(&mut rec, 200, |r| ecs_exec(r) == Some(Phase::Converged)).await;
    let writes = h.sim.writes();

    // A CloudFormation stack update puts the template's revision (no label) back.
    h.sim
        .revert_label_out_of_band("ServiceWebApi", "rack.ECSExec", None);
    let reports = drive(&mut rec, 200, |r| r.acted).await;
    let p = common::param(&rec, "ECSExec");
    assert!(reports.last().expect("report").acted);
    assert!(
        p.message.contains("correcting an out-of-band revert"),
        "{}",
        p.message
    );
    let reports = drive(&mut rec, 200, |r| ecs_exec(r) == Some(Phase::Converged)).await;
    assert_eq!(
        ecs_exec(reports.last().expect("report")),
        Some(Phase::Converged)
    );
    assert!(h.sim.writes() > writes);
    let text = rec.metrics().render();
    assert!(
        text.contains("rack_reconciler_corrections_total{parameter=\"ECSExec\"} 1"),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn corrections_past_the_hourly_cap_stop_and_report() {
    let h = Harness::new("ECSExec: \"Yes\"\n");
    let mut rec = h.reconciler();
    drive(&mut rec, 200, |r| ecs_exec(r) == Some(Phase::Converged)).await;

    for round in 1..=3 {
        h.sim
            .revert_label_out_of_band("ServiceWebApi", "rack.ECSExec", None);
        let reports = drive(&mut rec, 200, |r| ecs_exec(r) == Some(Phase::Converged)).await;
        assert_eq!(
            ecs_exec(reports.last().expect("report")),
            Some(Phase::Converged),
            "round {round}"
        );
    }
    let writes = h.sim.writes();
    h.sim
        .revert_label_out_of_band("ServiceWebApi", "rack.ECSExec", None);
    let reports = drive(&mut rec, 50, |r| ecs_exec(r) == Some(Phase::Blocked)).await;
    assert_eq!(
        ecs_exec(reports.last().expect("report")),
        Some(Phase::Blocked)
    );
    let p = common::param(&rec, "ECSExec");
    assert_eq!(p.reason, "CorrectionsCapped");
    assert!(p.drift);
    assert_eq!(
        h.sim.writes(),
        writes,
        "no ping-pong with CloudFormation past the cap"
    );
    let text = rec.metrics().render();
    assert!(
        text.contains("rack_reconciler_corrections_capped{parameter=\"ECSExec\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("rack_reconciler_parameter_drift{parameter=\"ECSExec\"} 1"),
        "{text}"
    );

    // An hour after the first correction the window has room again.
    let reports = drive(&mut rec, 500, |r| ecs_exec(r) == Some(Phase::Converged)).await;
    assert_eq!(
        ecs_exec(reports.last().expect("report")),
        Some(Phase::Converged)
    );
}

#[tokio::test(start_paused = true)]
async fn a_rollback_finished_before_the_next_poll_still_counts_as_a_failure() {
    let settings = SimSettings {
        failing_rollouts: 10_000,
        ..SimSettings::default()
    };
    let h = Harness::with_sim("ECSExec: \"Yes\"\n", settings);
    // Polls far apart: ECS has failed and rolled back long before the controller looks again.
    let mut loop_settings = h.settings();
    loop_settings.poll = Duration::from_secs(600);
    let mut rec = h.reconciler_with(loop_settings);
    let reports = drive(&mut rec, 3, |r| ecs_exec(r) == Some(Phase::Failed)).await;
    assert_eq!(
        ecs_exec(reports.last().expect("report")),
        Some(Phase::Failed)
    );
    let p = common::param(&rec, "ECSExec");
    assert_eq!(p.reason, "RolloutReverted", "{}", p.message);
    run_for(&mut rec, Duration::from_secs(6 * 3600)).await;
    let attempts = h.sim.calls("UpdateService");
    assert!(attempts <= 30, "{attempts} attempts in six hours");
}
