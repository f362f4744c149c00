//! Version changes and the downgrade gate on the simulated rack (paused clock).

use crate::common;

use std::time::Duration;

use common::{drive, run_for, Harness};
use rack_reconciler::plan::Phase;
use rack_reconciler::rack::sim::{SimSettings, SIM_ECSEXEC_VERSION};
use rack_reconciler::reconcile::Report;

const OLD: &str = "20240205000000";
const CUR: &str = "20260418101514";

fn version(r: &Report) -> Option<Phase> {
    r.phases.get("Version").copied()
}

fn ecs_exec(r: &Report) -> Option<Phase> {
    r.phases.get("ECSExec").copied()
}

fn running_yes() -> SimSettings {
    SimSettings {
        initial_ecs_exec: Some("Yes".into()),
        ..SimSettings::default()
    }
}

#[tokio::test(start_paused = true)]
async fn yes_with_an_older_version_is_blocked_without_writes() {
    let h = Harness::with_sim(
        &format!("ECSExec: \"Yes\"\nVersion: \"{OLD}\"\n"),
        running_yes(),
    );
    let mut rec = h.reconciler();
    let reports = run_for(&mut rec, Duration::from_secs(6 * 3600)).await;
    assert!(reports
        .iter()
        .all(|r| version(r) == Some(Phase::Blocked) && ecs_exec(r) == Some(Phase::Converged)));
    assert_eq!(h.sim.writes(), 0);
    let p = common::param(&rec, "Version");
    assert_eq!(p.reason, "DowngradeBlocked");
    assert!(p.message.contains("ECSExec: \"No\""), "{}", p.message);
    assert_eq!(
        (p.desired.as_deref(), p.observed.as_deref()),
        (Some(OLD), Some(CUR))
    );
    let text = rec.metrics().render();
    assert!(
        text.contains("rack_reconciler_downgrade_blocked 1"),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn switching_to_no_converges_ecs_exec_first_then_downgrades() {
    let h = Harness::with_sim(
        &format!("ECSExec: \"Yes\"\nVersion: \"{OLD}\"\n"),
        running_yes(),
    );
    let mut rec = h.reconciler();
    drive(&mut rec, 5, |_| false).await;
    h.write_params(&format!("ECSExec: \"No\"\nVersion: \"{OLD}\"\n"));
    let reports = drive(&mut rec, 1000, |r| version(r) == Some(Phase::Converged)).await;
    let last = reports.last().expect("report");
    assert_eq!(
        (version(last), ecs_exec(last)),
        (Some(Phase::Converged), Some(Phase::Converged))
    );

    // In order, never overlapping: ECSExec rolls web then monitor; only once both rollouts
    // are complete does the stack update start.
    let rollouts = h.sim.updates();
    let order: Vec<&str> = rollouts.iter().map(|u| u.service.as_str()).collect();
    assert_eq!(order, ["ServiceWebApi", "ServiceMonitorApi"]);
    let stack_updates = h.sim.stack_updates();
    assert_eq!(stack_updates.len(), 1);
    assert!(stack_updates[0].at > rollouts[1].at);
    assert!(
        stack_updates[0].services_settled,
        "the stack update overlapped a rollout"
    );
    for r in &reports {
        let both =
            ecs_exec(r) == Some(Phase::Progressing) && version(r) == Some(Phase::Progressing);
        assert!(!both, "ECSExec and Version progressed together");
    }
    let first_version_progress = reports
        .iter()
        .position(|r| version(r) == Some(Phase::Progressing))
        .expect("progress");
    assert!(reports[..first_version_progress]
        .iter()
        .any(|r| version(r) == Some(Phase::Blocked)));
    assert!(reports[first_version_progress..]
        .iter()
        .all(|r| ecs_exec(r) != Some(Phase::Progressing)));

    // The update carried Version, kept every other parameter the old template declares,
    // and dropped the ones it does not.
    let params = &stack_updates[0].parameters;
    assert!(params.contains(&("Version".to_string(), Some(OLD.to_string()))));
    // AvailabilityZones is computed, as convox sends it: the zones from the rack's label.
    assert!(params.contains(&(
        "AvailabilityZones".to_string(),
        Some("us-east-1a,us-east-1b".to_string())
    )));
    assert!(params
        .iter()
        .filter(|(k, _)| k != "Version" && k != "AvailabilityZones")
        .all(|(_, v)| v.is_none()));
    assert!(
        !params.iter().any(|(k, _)| k == "BuildMethod" || k == "NLB"),
        "newer parameters passed"
    );
    assert_eq!(
        h.sim.stack_parameters().get("Version").map(String::as_str),
        Some(OLD)
    );
    let p = common::param(&rec, "ECSExec");
    assert_eq!(p.observed.as_deref(), Some("No"));
}

#[tokio::test(start_paused = true)]
async fn a_stack_rollback_is_failed_with_the_reason_and_backed_off() {
    let h = Harness::new(&format!("ECSExec: \"No\"\nVersion: \"{OLD}\"\n"));
    h.sim.fail_next_stack_update(
        "ServiceWebApi",
        "Resource handler returned message: \"service was not stable\"",
    );
    let mut rec = h.reconciler();
    // Failed while CloudFormation rolls it back (StackRollingBack), then rolled back.
    let rolled_back = common::shows_reason(&rec, "Version", "StackUpdateRolledBack");
    let reports = drive(&mut rec, 500, rolled_back).await;
    assert_eq!(
        version(reports.last().expect("report")),
        Some(Phase::Failed)
    );
    let p = common::param(&rec, "Version");
    assert_eq!(p.reason, "StackUpdateRolledBack");
    assert!(
        p.message
            .contains("ServiceWebApi: Resource handler returned message"),
        "{}",
        p.message
    );
    let failed_at = tokio::time::Instant::now();

    let reports = drive(&mut rec, 1000, |r| version(r) == Some(Phase::Converged)).await;
    assert_eq!(
        version(reports.last().expect("report")),
        Some(Phase::Converged)
    );
    let updates = h.sim.stack_updates();
    assert_eq!(updates.len(), 2);
    // The first backoff: 30s plus up to 30s of jitter, then the next poll.
    let waited = updates[1].at - failed_at;
    assert!(
        waited >= Duration::from_secs(30) && waited <= Duration::from_secs(66),
        "retried after {waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_unavailable_template_is_a_clear_error_without_writes() {
    let h = Harness::new("ECSExec: \"No\"\nVersion: \"20230101000000\"\n");
    let mut rec = h.reconciler();
    let reports = run_for(&mut rec, Duration::from_secs(3600)).await;
    assert!(reports.iter().all(|r| version(r) == Some(Phase::Failed)));
    assert_eq!(h.sim.writes(), 0);
    let p = common::param(&rec, "Version");
    assert_eq!(p.reason, "TemplateUnavailable");
    assert!(
        p.message.contains("release/20230101000000/rack.json"),
        "{}",
        p.message
    );
}

#[tokio::test(start_paused = true)]
async fn an_upgrade_to_a_version_that_knows_ecs_exec_passes_it_and_needs_no_gate() {
    let h = Harness::new(&format!(
        "ECSExec: \"Yes\"\nVersion: \"{SIM_ECSEXEC_VERSION}\"\n"
    ));
    let mut rec = h.reconciler();
    let reports = drive(&mut rec, 1000, |r| {
        version(r) == Some(Phase::Converged) && ecs_exec(r) == Some(Phase::Converged)
    })
    .await;
    let last = reports.last().expect("report");
    assert_eq!(
        (version(last), ecs_exec(last)),
        (Some(Phase::Converged), Some(Phase::Converged))
    );
    let updates = h.sim.stack_updates();
    assert_eq!(updates.len(), 1);
    assert!(updates[0]
        .parameters
        .contains(&("ECSExec".to_string(), Some("Yes".to_string()))));
    assert!(updates[0].services_settled);
    assert_eq!(
        h.sim.stack_parameters().get("ECSExec").map(String::as_str),
        Some("Yes")
    );
    // The template now sets the label itself: nothing to correct afterwards.
    let writes = h.sim.writes();
    run_for(&mut rec, Duration::from_secs(3600)).await;
    assert_eq!(h.sim.writes(), writes);
    assert!(rec
        .metrics()
        .render()
        .contains("rack_reconciler_corrections_total{parameter=\"ECSExec\"} 0"));
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_rack_leaves_the_version_unknown() {
    let h = Harness::new(&format!("ECSExec: \"No\"\nVersion: \"{OLD}\"\n"));
    h.sim.inject_api_errors("DescribeStacks", 1);
    let mut rec = h.reconciler();
    let r = rec
        .reconcile(rack_reconciler::reconcile::Trigger::Startup)
        .await;
    assert_eq!(r.result, "error");
    assert_eq!(
        (version(&r), ecs_exec(&r)),
        (Some(Phase::Unknown), Some(Phase::Unknown))
    );
    assert_eq!(common::param(&rec, "Version").reason, "RackUnreachable");
    assert_eq!(h.sim.writes(), 0);
}

#[tokio::test(start_paused = true)]
async fn unmanaged_ecs_exec_with_a_foreign_yes_to_no_rollout_refuses_until_every_task_runs_no() {
    // The rack runs Yes; someone (not this controller) rolls the web service to No, and the
    // params file asks only for an older version.
    let h = Harness::with_sim(&format!("Version: \"{OLD}\"\n"), running_yes());
    let resources = h.sim.resources();
    let (cluster, web, monitor) = (
        resources["Cluster"].clone(),
        resources["ServiceWebApi"].clone(),
        resources["ServiceMonitorApi"].clone(),
    );
    for (service, td) in [(&web, "ApiWebTasks"), (&monitor, "ApiMonitorTasks")] {
        let base = resources[td].clone();
        let no = h
            .sim
            .register_relabelled(&base, "rack.ECSExec", "No")
            .expect("register");
        rack_reconciler::rack::Rack::update_service(h.sim.as_ref(), &cluster, service, &no)
            .await
            .expect("update");
    }
    let mut rec = h.reconciler();
    let reports = drive(&mut rec, 500, |_| !h.sim.stack_updates().is_empty()).await;
    let first_update = h.sim.stack_updates()[0].clone();
    assert!(
        first_update.services_settled,
        "the downgrade started only once every task ran No"
    );
    assert_eq!(
        version(&reports[0]),
        Some(Phase::Blocked),
        "refused while Yes tasks still ran"
    );
    assert_eq!(first_update.version, OLD);
}
