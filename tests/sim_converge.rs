//! ECSExec converges on the simulated rack: both directions, web before monitor, no writes
//! when there is nothing to do, and a restart mid-rollout registers nothing twice.

use crate::common;

use std::time::Duration;

use common::{drive, ecs_exec, Harness};
use rack_reconciler::plan::Phase;
use rack_reconciler::reconcile::Trigger;
use tokio::sync::{mpsc, watch};

fn converged(r: &rack_reconciler::reconcile::Report) -> bool {
    ecs_exec(r) == Some(Phase::Converged)
}

#[tokio::test(start_paused = true)]
async fn no_to_yes_rolls_web_then_monitor_and_converges() {
    let h = Harness::new("ECSExec: \"Yes\"\n");
    let mut rec = h.reconciler();
    let reports = drive(&mut rec, 200, converged).await;
    assert!(
        converged(reports.last().expect("report")),
        "did not converge"
    );

    let updates = h.sim.updates();
    let order: Vec<&str> = updates.iter().map(|u| u.service.as_str()).collect();
    assert_eq!(order, ["ServiceWebApi", "ServiceMonitorApi"]);
    assert!(
        updates.iter().all(|u| u.others_settled),
        "rollouts overlapped: {updates:?}"
    );
    assert_eq!(h.sim.calls("RegisterTaskDefinition"), 2);
    // Progressing was reported before converging.
    assert!(reports
        .iter()
        .any(|r| ecs_exec(r) == Some(Phase::Progressing)));

    let status = rec.status().get();
    let p = status.parameter("ECSExec").expect("status");
    assert_eq!(
        (p.desired.as_deref(), p.observed.as_deref()),
        (Some("Yes"), Some("Yes"))
    );
    assert!(!p.drift);
    let cond = p
        .conditions
        .iter()
        .find(|c| c.kind == "Ready")
        .expect("condition");
    assert_eq!(cond.status, "True");
    assert_eq!(cond.observed_generation, 1, "the first valid params file");
    // The status file next to the params file tells the same.
    let file: serde_json::Value = serde_json::from_slice(
        &std::fs::read(h.dir.path().join("params.status.json")).expect("status file"),
    )
    .expect("json");
    assert_eq!(file["parameters"][0]["phase"], "Converged");
}

#[tokio::test(start_paused = true)]
async fn yes_back_to_no_converges_too() {
    let h = Harness::new("ECSExec: \"Yes\"\n");
    let mut rec = h.reconciler();
    drive(&mut rec, 200, converged).await;
    h.write_params("ECSExec: \"No\"\n");
    let reports = drive(&mut rec, 200, converged).await;
    assert!(converged(reports.last().expect("report")));
    let order: Vec<String> = h.sim.updates().into_iter().map(|u| u.service).collect();
    assert_eq!(
        order,
        [
            "ServiceWebApi",
            "ServiceMonitorApi",
            "ServiceWebApi",
            "ServiceMonitorApi"
        ]
    );
    let p = common::param(&rec, "ECSExec");
    assert_eq!(p.observed.as_deref(), Some("No"));
}

#[tokio::test(start_paused = true)]
async fn a_converged_rack_gets_no_writes() {
    // The label is absent on the sim's initial revisions, which the rack reads as "No".
    let h = Harness::new("ECSExec: \"No\"\n");
    let mut rec = h.reconciler();
    let reports = common::run_for(&mut rec, Duration::from_secs(6 * 3600)).await;
    // Six hours at a 60s resync, ±10% jitter: between 328 and 400 runs.
    assert!(
        (328..=400).contains(&reports.len()),
        "{} runs",
        reports.len()
    );
    assert!(reports.iter().all(converged));
    assert_eq!(h.sim.writes(), 0);
    // Each revision was described once: the cache holds immutable revisions by ARN.
    assert_eq!(h.sim.calls("DescribeTaskDefinition"), 2);
}

#[tokio::test(start_paused = true)]
async fn a_restart_mid_rollout_converges_without_a_new_revision() {
    let h = Harness::new("ECSExec: \"Yes\"\n");
    let mut first = h.reconciler();
    // Start the web rollout, then drop the controller mid-rollout.
    let r = first.reconcile(Trigger::Startup).await;
    assert!(r.acted);
    drop(first);
    assert_eq!(h.sim.revisions("ServiceWebApi"), 2);
    common::let_pass(Duration::from_secs(7)).await;

    let mut second = h.reconciler();
    let reports = drive(&mut second, 200, converged).await;
    assert!(converged(reports.last().expect("report")));
    assert_eq!(
        h.sim.revisions("ServiceWebApi"),
        2,
        "web revision registered twice"
    );
    assert_eq!(h.sim.revisions("ServiceMonitorApi"), 2);
    assert_eq!(h.sim.calls("UpdateService"), 2);
}

#[tokio::test(start_paused = true)]
async fn a_crash_between_register_and_update_reuses_the_revision() {
    let h = Harness::new("ECSExec: \"Yes\"\n");
    // What an earlier run left behind: a registered revision no service uses yet.
    let base = h
        .sim
        .resources()
        .get("ApiWebTasks")
        .cloned()
        .expect("web task definition");
    let orphan = h
        .sim
        .register_relabelled(&base, "rack.ECSExec", "Yes")
        .expect("register");
    let mut rec = h.reconciler();
    drive(&mut rec, 200, converged).await;
    assert_eq!(h.sim.revisions("ServiceWebApi"), 2);
    assert_eq!(h.sim.updates()[0].task_definition, orphan);
}

#[tokio::test(start_paused = true)]
async fn the_loop_follows_edits_and_stops_cleanly_on_shutdown() {
    let h = Harness::new("ECSExec: \"No\"\n");
    let rec = h.reconciler();
    let status = rec.status();
    let (tx, rx) = mpsc::channel(1);
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(rec.run(rx, stopped));

    common::let_pass(Duration::from_secs(1)).await;
    assert_eq!(
        status.get().parameter("ECSExec").map(|p| p.phase),
        Some(Phase::Converged)
    );

    h.write_params("ECSExec: \"Yes\"\n");
    tx.send(Trigger::ParamsChanged).await.expect("trigger");
    // Polls follow the rollout; well within ten minutes both services have rolled.
    for _ in 0..120 {
        common::let_pass(Duration::from_secs(5)).await;
        let p = status.get().parameter("ECSExec").cloned().expect("status");
        if p.phase == Phase::Converged && p.desired.as_deref() == Some("Yes") {
            break;
        }
    }
    let p = status.get().parameter("ECSExec").cloned().expect("status");
    assert_eq!(
        (p.phase, p.observed.as_deref()),
        (Phase::Converged, Some("Yes"))
    );

    stop.send(true).expect("stop");
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the loop stops promptly")
        .expect("the loop does not panic");
    let writes = h.sim.writes();
    common::let_pass(Duration::from_secs(3600)).await;
    assert_eq!(h.sim.writes(), writes, "nothing runs after shutdown");
}

#[tokio::test(start_paused = true)]
async fn apply_returns_once_converged() {
    let h = Harness::new("ECSExec: \"Yes\"\n");
    let mut rec = h.reconciler();
    let (_stop, stopped) = watch::channel(false);
    let report = rec.apply(stopped, 5).await;
    assert_eq!(report.worst(), Some(Phase::Converged));
    assert_eq!(h.sim.calls("UpdateService"), 2);
}
