//! Two controllers on one simulated rack with one lease, on tokio's paused clock: the standby
//! decides as the holder would and writes nothing; when the holder stops renewing, the standby
//! takes over (picking up the holder's stack update from the status file) and finishes the
//! change; the old holder, waking up, is refused by the fence.

use crate::common;

use std::time::Duration;

use common::{drive, param, Harness};
use rack_reconciler::lease::Timing;
use rack_reconciler::plan::Phase;
use rack_reconciler::rack::sim::SimSettings;
use rack_reconciler::reconcile::Trigger;

#[tokio::test(start_paused = true)]
async fn the_standby_writes_nothing_then_takes_over_and_the_old_holder_is_fenced() {
    let h = Harness::stack_first("ECSExec: \"No\"\n", SimSettings::default());
    let timing = Timing::for_duration(Duration::from_secs(30));
    let (la, lb) = common::two_leases(timing).await;
    let (mut a, mut b) = (h.leased(&la), h.leased(&lb));

    h.write_params("ECSExec: \"Yes\"\n");
    b.reconcile(Trigger::ParamsChanged).await;
    let standing_by = param(&b, "ECSExec");
    assert_eq!(
        (standing_by.phase, standing_by.reason.as_str()),
        (Phase::Waiting, "Standby")
    );
    assert!(
        standing_by.message.contains("a (fence 1)"),
        "{standing_by:?}"
    );
    assert_eq!(h.sim.writes(), 0, "the standby wrote");
    assert_eq!(b.status().get().lease.map(|l| l.leader), Some(false));

    a.reconcile(Trigger::ParamsChanged).await;
    assert_eq!(h.sim.writes(), 1, "the holder makes the one stack update");

    // a stops renewing (a paused process); b looks every `retry` and takes over within the
    // lease duration and one look of a's last renewal (on tokio's paused clock).
    la.tick().await.expect("a renews");
    let last_renewal = tokio::time::Instant::now();
    while !lb.is_leader() {
        tokio::time::sleep(timing.retry).await;
        lb.tick().await.expect("b");
    }
    let took = tokio::time::Instant::now() - last_renewal;
    assert!(
        took >= timing.duration && took <= timing.duration + 2 * timing.retry,
        "took over after {took:?}"
    );
    let reports = drive(&mut b, 300, |r| {
        r.phases.get("ECSExec") == Some(&Phase::Converged)
    })
    .await;
    assert_eq!(
        reports.last().and_then(|r| r.phases.get("ECSExec")),
        Some(&Phase::Converged),
        "{:?}",
        param(&b, "ECSExec")
    );
    assert_eq!(
        h.sim.stack_updates().len(),
        1,
        "b followed a's update, no second one"
    );

    // a wakes with a change to make: it finds its lease lapsed, looks again, writes nothing.
    h.write_params("ECSExec: \"No\"\n");
    let writes = h.sim.writes();
    a.reconcile(Trigger::ParamsChanged).await;
    assert_eq!(h.sim.writes(), writes, "the old holder wrote");
    let fenced = param(&a, "ECSExec");
    assert_eq!(fenced.reason, "Standby", "{fenced:?}");
    assert!(fenced.message.contains("b (fence 2)"), "{fenced:?}");
}

/// A holder held between its lease check and its send (a process paused there) while a
/// standby takes over: when it resumes, the attempt is checked against its lease once more
/// and not sent; the new holder makes the one stack update.
#[tokio::test(start_paused = true)]
async fn a_holder_paused_between_its_check_and_its_send_sends_nothing() {
    let h = Harness::stack_first("ECSExec: \"No\"\n", SimSettings::default());
    let timing = Timing::for_duration(Duration::from_secs(30));
    let (la, lb) = common::two_leases(timing).await;
    let (mut a, pause) = h.leased_with_pause(&la);
    let mut b = h.leased(&lb);
    h.write_params("ECSExec: \"Yes\"\n");
    pause.arm("UpdateStack");
    let held = tokio::spawn(async move {
        a.reconcile(Trigger::ParamsChanged).await;
        a
    });
    pause.reached().await;
    while !lb.is_leader() {
        tokio::time::sleep(timing.retry).await;
        lb.tick().await.expect("b");
    }
    pause.resume();
    let a = held.await.expect("a's reconcile");
    assert_eq!(
        h.sim.stack_updates().len(),
        0,
        "the paused holder's update went out"
    );
    let text = a.metrics().render();
    assert!(
        text.contains(r#"rack_reconciler_writes_refused_total{operation="UpdateStack"} 1"#),
        "{text}"
    );
    let reports = drive(&mut b, 300, |r| {
        r.phases.get("ECSExec") == Some(&Phase::Converged)
    })
    .await;
    assert_eq!(
        reports.last().and_then(|r| r.phases.get("ECSExec")),
        Some(&Phase::Converged)
    );
    assert_eq!(
        h.sim.stack_updates().len(),
        1,
        "one update, the new holder's"
    );
}

/// The status document carries the fence it was written under; a controller taking the
/// lease over picks up only its predecessor's, and claims it at once.
#[tokio::test(start_paused = true)]
async fn a_stale_status_document_is_not_picked_up_on_takeover() {
    let h = Harness::stack_first("ECSExec: \"No\"\n", SimSettings::default());
    let timing = Timing::for_duration(Duration::from_secs(30));
    let leases = common::leases(timing, &["a", "b", "c"]).await;
    let (mut a, mut b, mut c) = (
        h.leased(&leases[0]),
        h.leased(&leases[1]),
        h.leased(&leases[2]),
    );
    let doc = h.dir.path().join("params.status.json");
    let fence_of = || -> serde_json::Value {
        let text = std::fs::read_to_string(&doc).expect("status document");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        v["controller"].clone()
    };
    h.write_params("ECSExec: \"Yes\"\n");
    a.reconcile(Trigger::ParamsChanged).await;
    assert_eq!(h.sim.stack_updates().len(), 1);
    let by_a = std::fs::read_to_string(&doc).expect("a's document");
    assert_eq!(fence_of()["fence"], 1);
    assert!(
        fence_of()["stackUpdate"]["token"].is_string(),
        "{}",
        fence_of()
    );

    // a stops renewing; b takes over, picks up a's document (the previous holder's) and
    // claims it under fence 2.
    let take_over = |lease: &rack_reconciler::lease::Lease| {
        let lease = lease.clone();
        async move {
            while !lease.is_leader() {
                tokio::time::sleep(timing.retry).await;
                lease.tick().await.expect("look");
            }
        }
    };
    take_over(&leases[1]).await;
    b.reconcile(Trigger::Timer).await;
    assert_eq!(fence_of()["fence"], 2);
    assert!(
        fence_of()["stackUpdate"]["token"].is_string(),
        "b kept a's update"
    );

    // A paused a's late copy lands over b's document; then c takes over from b.
    std::fs::write(&doc, by_a).expect("a's late write");
    take_over(&leases[2]).await;
    c.reconcile(Trigger::Timer).await;
    let claimed = fence_of();
    assert_eq!(claimed["fence"], 3, "{claimed}");
    assert!(
        claimed.get("stackUpdate").is_none(),
        "the stale document's stack update was picked up: {claimed}"
    );
}

/// ECS and CloudFormation take no condition on the write: the controller reads the service
/// (or the stack) again right before, and writes nothing when it changed since the reconcile
/// observed it; the next reconcile starts from what it then sees.
#[tokio::test(start_paused = true)]
async fn a_service_or_stack_changed_since_it_was_observed_is_not_written() {
    // The relabel path: someone moves the web service between the observation and the write.
    let h = Harness::new("ECSExec: \"No\"\n");
    let timing = Timing::for_duration(Duration::from_secs(30));
    let (la, _lb) = common::two_leases(timing).await;
    let (mut a, pause) = h.leased_with_pause(&la);
    h.write_params("ECSExec: \"Yes\"\n");
    pause.arm("UpdateService");
    let held = tokio::spawn(async move {
        a.reconcile(Trigger::ParamsChanged).await;
        a
    });
    pause.reached().await;
    let cluster = h.sim.resources().get("Cluster").cloned().expect("cluster");
    let web = h.sim.service_snapshot("ServiceWebApi").expect("web");
    let monitor = h
        .sim
        .service_snapshot("ServiceMonitorApi")
        .expect("monitor");
    let elsewhere = monitor.deployments[0].task_definition.clone();
    rack_reconciler::rack::Rack::update_service(h.sim.as_ref(), &cluster, &web.name, &elsewhere)
        .await
        .expect("someone else's write");
    pause.resume();
    let a = held.await.expect("a's reconcile");
    let d = param(&a, "ECSExec");
    assert_eq!(d.reason, "ChangedSinceObserved", "{d:?}");
    assert!(d.message.contains(&elsewhere), "{d:?}");
    let now = h.sim.service_snapshot("ServiceWebApi").expect("web");
    assert_eq!(
        now.primary().map(|p| p.task_definition.clone()),
        Some(elsewhere)
    );

    // The stack path: an update of someone else's starts between observation and write.
    let h = Harness::stack_first("ECSExec: \"No\"\n", SimSettings::default());
    let (la, _lb) = common::two_leases(timing).await;
    let (mut a, pause) = h.leased_with_pause(&la);
    h.write_params("ECSExec: \"Yes\"\n");
    pause.arm("UpdateStack");
    let held = tokio::spawn(async move {
        a.reconcile(Trigger::ParamsChanged).await;
        a
    });
    pause.reached().await;
    // An operator's `convox rack params set ApiCount=3` (no token).
    let request = rack_reconciler::rack::StackUpdateRequest {
        template: None,
        parameters: h
            .sim
            .stack_parameters()
            .into_keys()
            .map(|key| rack_reconciler::model::StackParameter {
                value: (key == "ApiCount").then(|| "3".to_string()),
                key,
            })
            .collect(),
        capabilities: vec!["CAPABILITY_IAM".into()],
        token: String::new(),
        role_arn: None,
    };
    rack_reconciler::rack::Rack::update_stack(h.sim.as_ref(), &request)
        .await
        .expect("operator's update");
    pause.resume();
    let a = held.await.expect("a's reconcile");
    let d = param(&a, "ECSExec");
    assert_eq!(d.reason, "ChangedSinceObserved", "{d:?}");
    assert_eq!(h.sim.stack_updates().len(), 1, "only the operator's update");
}
