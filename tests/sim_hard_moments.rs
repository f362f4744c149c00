//! The rare, high-stakes moments, on tokio's paused clock and a simulated rack without a
//! circuit breaker on the API services (as a real rack): a rack update whose new API tasks
//! keep failing is the controller's to cancel (its token proves it, across a restart and a
//! lease takeover), once; someone else's update is never cancelled; and undoing a change
//! that fails too is named, counted and alerted on, and heals by itself.

use crate::common;

use std::time::Duration;

use common::{drive, param, run_for, Harness, RELABEL_RELEASE};
use rack_reconciler::lease::Timing;
use rack_reconciler::model::RackVersion;
use rack_reconciler::plan::Phase;
use rack_reconciler::rack::sim::{SimSettings, SIM_ECSEXEC_VERSION};
use rack_reconciler::reconcile::{Reconciler, Report, Trigger};
use rack_reconciler::templates::TemplateSource;

/// A rack on the release that declares `ECSExec` (`No`), asked to move to the public release
/// (which predates it: the gate allows it once `ECSExec=No` has converged), a release whose
/// API tasks never start.
fn broken_release_rack() -> Harness {
    let settings = SimSettings {
        failing_versions: vec![RELABEL_RELEASE.into()],
        high_availability: false,
        ..SimSettings::default()
    };
    Harness::stack_first("ECSExec: \"No\"\n", settings)
}

/// Once `ECSExec=No` has converged, the params file asks for the broken release.
async fn converged_then_to_broken_release(h: &Harness, rec: &mut Reconciler) {
    drive(rec, 50, |r| common::ecs_exec(r) == Some(Phase::Converged)).await;
    h.write_params(&format!(
        "ECSExec: \"No\"\nVersion: \"{RELABEL_RELEASE}\"\n"
    ));
}

fn stack_version(h: &Harness) -> String {
    h.sim
        .stack_parameters()
        .get("Version")
        .cloned()
        .unwrap_or_default()
}

fn acted(r: &Report) -> bool {
    r.acted
}

/// The `Version` parameter's status, once its update was rolled back.
async fn until_rolled_back(rec: &mut Reconciler) {
    let rolled_back = common::shows_reason(rec, "Version", "StackUpdateRolledBack");
    drive(rec, 600, rolled_back).await;
    let p = param(rec, "Version");
    assert_eq!(
        (p.phase, p.reason.as_str()),
        (Phase::Failed, "StackUpdateRolledBack"),
        "{}",
        p.message
    );
    assert!(
        p.message.contains("new task(s) stopped or failed to start")
            && p.message.contains("health checks"),
        "the real cause, not only 'cancelled': {}",
        p.message
    );
}

#[tokio::test(start_paused = true)]
async fn a_version_update_whose_api_tasks_fail_is_cancelled_once_and_the_gate_still_holds() {
    let h = broken_release_rack();
    let mut rec = h.reconciler();
    converged_then_to_broken_release(&h, &mut rec).await;
    let started = tokio::time::Instant::now();
    let failing = common::shows_reason(&rec, "Version", "StackUpdateFailing");
    drive(&mut rec, 300, failing).await;
    assert!(
        started.elapsed() < Duration::from_secs(600),
        "found failing in {:?}, not after CloudFormation's hours",
        started.elapsed()
    );
    until_rolled_back(&mut rec).await;
    assert_eq!(h.sim.calls("CancelUpdateStack"), 1, "cancelled once");
    assert_eq!(h.sim.stack_updates().len(), 1);
    assert_eq!(
        stack_version(&h),
        SIM_ECSEXEC_VERSION,
        "back on its version"
    );

    // Backed off like any other failure: no new update for a while.
    run_for(&mut rec, Duration::from_secs(20)).await;
    assert_eq!(
        h.sim.stack_updates().len(),
        1,
        "no retry before the backoff"
    );
    let p = param(&rec, "Version");
    assert_eq!((p.phase, p.reason.as_str()), (Phase::Failed, "BackingOff"));
    assert!(
        p.message.contains("health checks"),
        "the cause stays: {}",
        p.message
    );

    // The gate judges from the version the rack is back on: ECSExec=Yes refuses the
    // downgrade to a release that predates it, as before.
    h.write_params(&format!(
        "ECSExec: \"Yes\"\nVersion: \"{RELABEL_RELEASE}\"\n"
    ));
    let blocked = common::shows_reason(&rec, "Version", "DowngradeBlocked");
    drive(&mut rec, 20, blocked).await;
    assert_eq!(param(&rec, "Version").phase, Phase::Blocked);
    let to = RackVersion::parse(RELABEL_RELEASE).expect("version");
    let check = rec.check_version(to).await.expect("check");
    assert!(
        matches!(check.gate, rack_reconciler::plan::Gate::Refused(_)),
        "{:?}",
        check.gate
    );
    assert_eq!(h.sim.calls("CancelUpdateStack"), 1);
}

#[tokio::test(start_paused = true)]
async fn the_token_written_down_proves_the_update_ours_after_a_restart() {
    let h = broken_release_rack();
    let mut rec = h.reconciler();
    converged_then_to_broken_release(&h, &mut rec).await;
    drive(&mut rec, 20, acted).await;
    assert_eq!(h.sim.stack_updates().len(), 1, "the update was sent");
    drop(rec);

    let mut rec = h.reconciler();
    until_rolled_back(&mut rec).await;
    assert_eq!(
        h.sim.calls("CancelUpdateStack"),
        1,
        "the new process cancelled it, once"
    );
    assert_eq!(stack_version(&h), SIM_ECSEXEC_VERSION);
}

#[tokio::test(start_paused = true)]
async fn the_token_proves_the_update_ours_after_a_lease_takeover() {
    let h = broken_release_rack();
    let timing = Timing::for_duration(Duration::from_secs(30));
    let (la, lb) = common::two_leases(timing).await;
    let mut a = h.leased(&la);
    converged_then_to_broken_release(&h, &mut a).await;
    drive(&mut a, 20, acted).await;
    assert_eq!(h.sim.stack_updates().len(), 1, "the holder sent the update");

    // a stops (a paused process); b takes the lease over and finds the update its own.
    while !lb.is_leader() {
        tokio::time::sleep(timing.retry).await;
        lb.tick().await.expect("b");
    }
    let mut b = h.leased(&lb);
    until_rolled_back(&mut b).await;
    assert_eq!(h.sim.calls("CancelUpdateStack"), 1, "b cancelled it, once");
    assert_eq!(
        h.sim.stack_updates().len(),
        1,
        "and sent no update of its own"
    );
}

#[tokio::test(start_paused = true)]
async fn someone_elses_failing_update_is_waited_for_and_never_cancelled() {
    let h = broken_release_rack();
    let mut rec = h.reconciler();
    drive(&mut rec, 50, |r| {
        common::ecs_exec(r) == Some(Phase::Converged)
    })
    .await;

    // An operator's `convox rack update`: no ClientRequestToken.
    let version = RackVersion::parse(RELABEL_RELEASE).expect("version");
    let template = TemplateSource::default().locate(version).expect("template");
    // The target release does not declare ECSExec.
    common::operator_update(&h, Some(template), |key| match key {
        "ECSExec" => None,
        "Version" => Some(Some(RELABEL_RELEASE.to_string())),
        _ => Some(None),
    })
    .await;

    run_for(&mut rec, Duration::from_secs(20 * 60)).await;
    assert_eq!(h.sim.calls("CancelUpdateStack"), 0, "never cancelled");
    let p = param(&rec, "ECSExec");
    assert_eq!(
        (p.phase, p.reason.as_str()),
        (Phase::Waiting, "StackUpdating"),
        "{}",
        p.message
    );
    assert!(
        p.message.contains("without a ClientRequestToken") && p.message.contains("never cancels"),
        "{}",
        p.message
    );
    assert_eq!(
        h.sim.stack_updates().len(),
        1,
        "and nothing written meanwhile"
    );
}

fn rollback_failing_metric(rec: &Reconciler) -> Option<String> {
    rec.metrics()
        .render()
        .lines()
        .find(|l| l.starts_with("rack_reconciler_rollback_failing{parameter=\"ECSExec\"}"))
        .map(|l| l.rsplit(' ').next().unwrap_or_default().to_string())
}

#[tokio::test(start_paused = true)]
async fn a_rollback_that_fails_too_is_named_and_heals_by_itself() {
    // Relabel path, no high availability (the web API runs one task, minimum healthy 0%):
    // the cluster cannot start any task, so the rollout fails and so does pointing the
    // service back at its previous revision.
    let settings = SimSettings {
        high_availability: false,
        ..SimSettings::default()
    };
    let h = Harness::with_sim("ECSExec: \"Yes\"\n", settings);
    h.sim.fail_every_launch(true);
    let mut rec = h.reconciler();
    let failing = common::shows_reason(&rec, "ECSExec", "RollbackFailing");
    drive(&mut rec, 400, failing).await;
    let p = param(&rec, "ECSExec");
    assert_eq!(p.phase, Phase::Failed, "{}", p.message);
    assert!(
        p.message.contains("ServiceWebApi runs 0 of 1 task(s)")
            && p.message.contains("the rack API is down"),
        "{}",
        p.message
    );
    assert_eq!(rollback_failing_metric(&rec).as_deref(), Some("1"));

    // No further write while it fails.
    let writes = h.sim.writes();
    run_for(&mut rec, Duration::from_secs(10 * 60)).await;
    assert_eq!(h.sim.writes(), writes, "wrote while the rollback failed");
    assert_eq!(param(&rec, "ECSExec").reason, "RollbackFailing");

    // ECS starts tasks again: the rollback completes, then (after the backoff) the change
    // goes through, without anyone acting.
    h.sim.fail_every_launch(false);
    let reports = drive(&mut rec, 600, |r| {
        common::ecs_exec(r) == Some(Phase::Converged)
    })
    .await;
    assert_eq!(
        reports.last().and_then(common::ecs_exec),
        Some(Phase::Converged),
        "{:?}",
        param(&rec, "ECSExec")
    );
    assert_eq!(rollback_failing_metric(&rec).as_deref(), Some("0"));
}

#[tokio::test(start_paused = true)]
async fn a_stack_rollback_whose_tasks_fail_too_is_named_then_followed_to_its_end() {
    // The stack path: the controller's update to a broken release, cancelled, and the
    // rollback's tasks cannot start either.
    let h = broken_release_rack();
    let mut rec = h.reconciler();
    converged_then_to_broken_release(&h, &mut rec).await;
    let failing = common::shows_reason(&rec, "Version", "StackUpdateFailing");
    drive(&mut rec, 300, failing).await;
    h.sim.fail_every_launch(true);
    let rollback_failing = common::shows_reason(&rec, "Version", "RollbackFailing");
    drive(&mut rec, 300, rollback_failing).await;
    let p = param(&rec, "Version");
    assert_eq!(p.phase, Phase::Failed, "{}", p.message);
    assert!(
        p.message.contains("rollback is failing too") && p.message.contains("the rack API is down"),
        "{}",
        p.message
    );
    let e = param(&rec, "ECSExec");
    assert_eq!(e.reason, "RollbackFailing", "{}", e.message);
    h.sim.fail_every_launch(false);
    until_rolled_back(&mut rec).await;
    rec.reconcile(Trigger::Timer).await;
    assert_eq!(h.sim.calls("CancelUpdateStack"), 1);
}

#[tokio::test(start_paused = true)]
async fn an_update_whose_token_cannot_be_written_down_is_not_sent() {
    let h = Harness::stack_first("ECSExec: \"Yes\"\n", SimSettings::default());
    let mut settings = h.settings();
    let nowhere = h.dir.path().join("missing").join("params.status.json");
    settings.status_file = Some(rack_reconciler::store::Location::File(nowhere));
    let mut rec = h.reconciler_with(settings);
    let failed = common::shows_reason(&rec, "ECSExec", "ActionFailed");
    drive(&mut rec, 20, failed).await;
    assert_eq!(
        h.sim.calls("UpdateStack"),
        0,
        "sent without its token written down"
    );
    let p = param(&rec, "ECSExec");
    assert_eq!(p.phase, Phase::Failed, "{}", p.message);
    assert!(
        p.message
            .contains("its token could not be written down first"),
        "{}",
        p.message
    );
}
