//! Faults on the simulated rack: failed and stuck rollouts, stack updates, API errors and
//! out-of-band reverts. All on tokio's paused clock.

use crate::common;

use std::time::Duration;

use common::{drive, ecs_exec, run_for, Harness};
use rack_reconciler::plan::Phase;
use rack_reconciler::rack::sim::{RolloutFault, SimSettings};
use rack_reconciler::rack::Rack;
use rack_reconciler::reconcile::Trigger;

/// A rack without high availability: one web task, minimum healthy 0%, so a failing
/// rollout takes the rack API down until it is undone.
fn non_ha(failing_rollouts: u32) -> SimSettings {
    SimSettings {
        high_availability: false,
        failing_rollouts,
        ..SimSettings::default()
    }
}

/// The web service's primary revision, whether its rollout is done, and its running tasks.
fn web(h: &Harness) -> (String, bool, u32) {
    let s = h.sim.service_snapshot("ServiceWebApi").expect("web");
    let p = s.primary().expect("primary").clone();
    let settled = s.deployments.len() == 1 && !s.rolling();
    (p.task_definition, settled, s.running_count)
}

#[tokio::test(start_paused = true)]
async fn a_failing_rollout_without_a_circuit_breaker_is_detected_undone_and_retried_after_backoff()
{
    let h = Harness::with_sim("ECSExec: \"Yes\"\n", non_ha(1));
    let (original, _, _) = web(&h);
    let mut rec = h.reconciler();
    let reports = drive(&mut rec, 100, |r| ecs_exec(r) == Some(Phase::Failed)).await;
    let failed_at = tokio::time::Instant::now();
    let rolled_at = h.sim.updates()[0].at;
    // Found at the first poll after the third failed launch (one task at a time, 20s each),
    // not at the 30-minute rollout timeout.
    let third_failure = Duration::from_secs(3 * 20);
    let detected = failed_at - rolled_at;
    assert!(
        detected >= third_failure && detected <= third_failure + Duration::from_secs(5),
        "{detected:?}"
    );
    assert_eq!(
        reports.len(),
        32,
        "startup, the look a second after the write, a poll every 2 s while tasks fail (a \
         first rollout: no task start time learned yet), the poll at 61 s that undoes"
    );
    let p = common::param(&rec, "ECSExec");
    assert_eq!(p.reason, "RolloutFailed");
    assert!(
        p.message.contains("Task failed ELB health checks"),
        "{}",
        p.message
    );
    // Undone in the same run: the service points at the revision it ran before.
    let updates = h.sim.updates();
    assert_eq!(updates.len(), 2);
    assert_eq!(updates[1].task_definition, original);

    // The rack API comes back on the old revision with every task running, reported as a
    // rollback in progress, then as backing off.
    let reports = drive(&mut rec, 100, |_| web(&h).1).await;
    assert!(reports.iter().all(|r| ecs_exec(r) == Some(Phase::Failed)));
    assert_eq!(web(&h), (original.clone(), true, 1));
    let r = rec
        .reconcile(rack_reconciler::reconcile::Trigger::Timer)
        .await;
    assert_eq!(ecs_exec(&r), Some(Phase::Failed));
    let p = common::param(&rec, "ECSExec");
    assert_eq!(p.reason, "BackingOff");
    assert!(
        p.message.contains("Task failed ELB health checks"),
        "{}",
        p.message
    );

    // The next attempt waits for the backoff, reuses the revision, and converges.
    let reports = drive(&mut rec, 200, |r| ecs_exec(r) == Some(Phase::Converged)).await;
    assert_eq!(
        ecs_exec(reports.last().expect("report")),
        Some(Phase::Converged)
    );
    let retry = h.sim.updates()[2].clone();
    // The first backoff: 30s plus up to 30s of jitter.
    let waited = retry.at - failed_at;
    assert!(
        waited >= Duration::from_secs(30) && waited <= Duration::from_secs(61),
        "retried after {waited:?}"
    );
    assert_eq!(retry.task_definition, updates[0].task_definition);
    assert_eq!(h.sim.revisions("ServiceWebApi"), 2);
    let text = rec.metrics().render();
    assert!(
        text.contains("rack_reconciler_rollout_failures_total{service=\"ServiceWebApi\"} 1"),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn rollouts_that_always_fail_are_undone_every_time_and_bounded_over_a_day() {
    let h = Harness::with_sim("ECSExec: \"Yes\"\n", non_ha(10_000));
    let (original, _, _) = web(&h);
    let mut rec = h.reconciler();
    let reports = run_for(&mut rec, Duration::from_secs(24 * 3600)).await;
    let updates = h.sim.updates();
    let (attempts, undos): (Vec<_>, Vec<_>) =
        updates.iter().partition(|u| u.task_definition != original);
    // Backoff from 30s doubling to 15 minutes: at most 30+60+...+480 then 900s apart, so no
    // more than 102 attempts in a day; each one undone (the last perhaps not yet).
    // It keeps trying, too: each cycle is at most a jittered 15 minutes (under 30) plus about
    // 80 seconds of failing and rolling back.
    assert!(
        (51..=94).contains(&attempts.len()),
        "{} attempts",
        attempts.len()
    );
    assert!(undos.len() == attempts.len() || undos.len() + 1 == attempts.len());
    assert!(
        updates.iter().all(|u| u.service == "ServiceWebApi"),
        "monitor never rolled"
    );
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert!(
        gaps.iter()
            .skip(6)
            .all(|g| *g >= Duration::from_secs(15 * 60)),
        "gaps {gaps:?}"
    );
    // One relabelled revision, registered once and reused by every attempt.
    assert_eq!(h.sim.revisions("ServiceWebApi"), 2);
    assert_eq!(h.sim.calls("RegisterTaskDefinition"), 1);
    assert!(reports
        .iter()
        .all(|r| ecs_exec(r) != Some(Phase::Converged)));
    // Between attempts the rack API is back on the old revision, its task running.
    let reports = drive(&mut rec, 100, |_| web(&h).1).await;
    assert!(!reports.is_empty());
    assert_eq!(web(&h), (original, true, 1));
}

#[tokio::test(start_paused = true)]
async fn params_set_back_while_our_rollout_is_stuck_converge_on_the_old_value() {
    let h = Harness::with_sim("ECSExec: \"Yes\"\n", non_ha(0));
    h.sim.inject_rollout_fault(RolloutFault::NeverHealthy);
    let (original, _, _) = web(&h);
    let mut rec = h.reconciler();
    run_for(&mut rec, Duration::from_secs(120)).await;
    assert_eq!(
        ecs_exec(
            &rec.reconcile(rack_reconciler::reconcile::Trigger::Timer)
                .await
        ),
        Some(Phase::Progressing)
    );
    assert_eq!(
        web(&h).2,
        0,
        "minimum healthy 0: the API is down while the new task hangs"
    );

    h.write_params("ECSExec: \"No\"\n");
    let reports = drive(&mut rec, 100, |r| ecs_exec(r) == Some(Phase::Converged)).await;
    assert_eq!(
        ecs_exec(reports.last().expect("report")),
        Some(Phase::Converged)
    );
    assert_eq!(web(&h), (original.clone(), true, 1));
    let updates = h.sim.updates();
    assert_eq!(updates.len(), 2, "rolled, then pointed straight back");
    assert_eq!(updates[1].task_definition, original);
    assert_eq!(
        h.sim.calls("RegisterTaskDefinition"),
        1,
        "nothing registered for No"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stuck_rollout_of_ours_is_undone_at_its_timeout() {
    let h = Harness::new("ECSExec: \"Yes\"\n");
    h.sim.inject_rollout_fault(RolloutFault::NeverHealthy);
    let (original, _, _) = web(&h);
    let mut rec = h.reconciler();
    let reports = drive(&mut rec, 1000, |r| ecs_exec(r) == Some(Phase::Failed)).await;
    assert_eq!(
        ecs_exec(reports.last().expect("report")),
        Some(Phase::Failed)
    );
    let p = common::param(&rec, "ECSExec");
    assert_eq!(p.reason, "RolloutTimedOut");
    assert!(p.message.contains("30m"), "{}", p.message);
    assert_eq!(h.sim.updates()[1].task_definition, original, "undone");
    // The retry after the backoff (the fault was for one rollout) converges.
    let reports = drive(&mut rec, 300, |r| ecs_exec(r) == Some(Phase::Converged)).await;
    assert_eq!(
        ecs_exec(reports.last().expect("report")),
        Some(Phase::Converged)
    );
    assert_eq!(h.sim.updates().len(), 4);
}

#[tokio::test(start_paused = true)]
async fn someone_elses_stuck_rollout_times_out_without_writes_or_fast_polling() {
    let h = Harness::new("ECSExec: \"Yes\"\n");
    let resources = h.sim.resources();
    let (cluster, service, base) = (
        resources["Cluster"].clone(),
        resources["ServiceWebApi"].clone(),
        resources["ApiWebTasks"].clone(),
    );
    // Someone rolls the web service to a revision that never becomes healthy.
    let theirs = h
        .sim
        .register_relabelled(&base, "rack.Version", "20260418101515")
        .expect("register");
    h.sim.inject_rollout_fault(RolloutFault::NeverHealthy);
    h.sim
        .update_service(&cluster, &service, &theirs)
        .await
        .expect("update");
    let writes = h.sim.writes();
    let mut rec = h.reconciler();
    let reports = drive(&mut rec, 1000, |r| ecs_exec(r) == Some(Phase::Failed)).await;
    assert!(reports[..reports.len() - 1]
        .iter()
        .all(|r| ecs_exec(r) == Some(Phase::Waiting)));
    let p = common::param(&rec, "ECSExec");
    assert_eq!(p.reason, "ServiceStuck", "{}", p.message);
    let last = reports.last().expect("report");
    assert!(
        last.next >= Duration::from_secs(54),
        "polls slow down: {:?}",
        last.next
    );
    run_for(&mut rec, Duration::from_secs(3600)).await;
    assert_eq!(
        h.sim.writes(),
        writes,
        "not ours: never undone or overridden"
    );
}

#[tokio::test(start_paused = true)]
async fn with_a_circuit_breaker_a_failed_rollout_is_reported_and_retried() {
    let settings = SimSettings {
        circuit_breaker: true,
        ..SimSettings::default()
    };
    let h = Harness::with_sim("ECSExec: \"Yes\"\n", settings);
    h.sim.inject_rollout_fault(RolloutFault::FailToStart);
    let mut rec = h.reconciler();
    drive(&mut rec, 100, |r| ecs_exec(r) == Some(Phase::Failed)).await;
    let p = common::param(&rec, "ECSExec");
    assert_eq!(p.reason, "RolloutFailed");
    assert!(p.message.contains("circuit breaker"), "{}", p.message);
    // ECS rolled it back itself: nothing to undo.
    assert_eq!(h.sim.calls("UpdateService"), 1);
    let reports = drive(&mut rec, 200, |r| ecs_exec(r) == Some(Phase::Converged)).await;
    assert_eq!(
        ecs_exec(reports.last().expect("report")),
        Some(Phase::Converged)
    );
    assert_eq!(h.sim.revisions("ServiceWebApi"), 2);
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
    assert!(
        first.next >= Duration::from_secs(30) && first.next < Duration::from_secs(60),
        "{:?}",
        first.next
    );
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
    assert_eq!(
        h.sim.writes(),
        writes + 1,
        "one UpdateService back to the revision it had (reused, not registered again)"
    );
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
async fn a_circuit_breaker_rollback_finished_before_the_next_poll_still_counts_as_a_failure() {
    let settings = SimSettings {
        circuit_breaker: true,
        failing_rollouts: 10_000,
        ..SimSettings::default()
    };
    let h = Harness::with_sim("ECSExec: \"Yes\"\n", settings);
    let mut rec = h.reconciler();
    assert!(rec.reconcile(Trigger::Startup).await.acted);
    // The controller looks again only ten minutes later (it was restarted, say): ECS has
    // failed the rollout and rolled back long before.
    tokio::time::sleep(Duration::from_secs(600)).await;
    let r = rec.reconcile(Trigger::Timer).await;
    assert_eq!(ecs_exec(&r), Some(Phase::Failed));
    let p = common::param(&rec, "ECSExec");
    assert_eq!(p.reason, "RolloutReverted", "{}", p.message);
    run_for(&mut rec, Duration::from_secs(6 * 3600)).await;
    let attempts = h.sim.calls("UpdateService");
    // Each cycle is the rollout ECS fails (about 40 s) plus the backoff (30 s doubling to
    // 15 m, its jitter adding up to as much again): 14 to 26 attempts in six hours, where
    // retrying at every poll would be hundreds.
    assert!(
        (14..=26).contains(&attempts),
        "{attempts} attempts in six hours"
    );
}
