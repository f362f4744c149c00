//! Stack first: on a rack whose template declares `ECSExec`, parameters change through
//! CloudFormation, batched into one `UpdateStack`, and are followed to the end. On tokio's
//! paused clock.

use crate::common;

use common::{drive, ecs_exec, Harness};
use rack_reconciler::plan::Phase;
use rack_reconciler::rack::sim::{RolloutFault, SimSettings};

fn converged(r: &rack_reconciler::reconcile::Report) -> bool {
    !r.phases.is_empty() && r.phases.values().all(|p| *p == Phase::Converged)
}

#[tokio::test(start_paused = true)]
async fn ecs_exec_goes_through_one_stack_update_and_the_labels_follow() {
    let h = Harness::stack_first("ECSExec: \"Yes\"\n", SimSettings::default());
    let mut rec = h.reconciler();
    let reports = drive(&mut rec, 300, converged).await;
    assert!(
        converged(reports.last().expect("report")),
        "{:?}",
        common::param(&rec, "ECSExec")
    );

    let updates = h.sim.stack_updates();
    assert_eq!(updates.len(), 1, "one UpdateStack");
    let given: Vec<_> = updates[0]
        .parameters
        .iter()
        .filter(|(_, v)| v.is_some())
        .collect();
    assert_eq!(
        given,
        vec![
            &(
                "AvailabilityZones".to_string(),
                Some("us-east-1a,us-east-1b".to_string())
            ),
            &("ECSExec".to_string(), Some("Yes".to_string()))
        ],
        "only ECSExec changed; AvailabilityZones sent as convox sends it"
    );
    assert!(
        updates[0]
            .parameters
            .iter()
            .any(|(k, v)| k == "Password" && v.is_none()),
        "the secret kept with UsePreviousValue"
    );
    assert_eq!(
        h.sim.calls("RegisterTaskDefinition"),
        0,
        "no relabel by the controller"
    );
    assert_eq!(
        h.sim.calls("UpdateService"),
        0,
        "CloudFormation rolled the services"
    );
    // The stack parameter and the labels agree.
    assert_eq!(
        h.sim.stack_parameters().get("ECSExec").map(String::as_str),
        Some("Yes")
    );
    for service in ["ServiceWebApi", "ServiceMonitorApi"] {
        let s = h.sim.service_snapshot(service).expect("service");
        let td = &s.primary().expect("primary").task_definition;
        let body = h.sim.task_definition_body(td).expect("body");
        assert_eq!(
            body["containerDefinitions"][0]["dockerLabels"]["rack.ECSExec"], "Yes",
            "{service}"
        );
    }
    let p = common::param(&rec, "ECSExec");
    assert_eq!(
        (p.phase, p.observed.as_deref()),
        (Phase::Converged, Some("Yes"))
    );

    // Converged: nothing more is written.
    let writes = h.sim.writes();
    common::run_for(&mut rec, std::time::Duration::from_secs(3600)).await;
    assert_eq!(h.sim.writes(), writes);
}

#[tokio::test(start_paused = true)]
async fn parameters_edited_together_go_in_exactly_one_update() {
    let h = Harness::stack_first(
        "ECSExec: \"Yes\"\nApiCount: \"3\"\nTenancy: \"default\"\n",
        SimSettings::default(),
    );
    let mut rec = h.reconciler();
    let reports = drive(&mut rec, 300, converged).await;
    assert!(converged(reports.last().expect("report")));
    let updates = h.sim.stack_updates();
    assert_eq!(updates.len(), 1, "{updates:?}");
    let given: Vec<(String, String)> = updates[0]
        .parameters
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.clone()?)))
        .collect();
    assert_eq!(
        given,
        vec![
            ("ApiCount".to_string(), "3".to_string()),
            (
                "AvailabilityZones".to_string(),
                "us-east-1a,us-east-1b".to_string()
            ),
            ("ECSExec".to_string(), "Yes".to_string())
        ],
        "Tenancy already holds its value: not sent (AvailabilityZones as convox sends it)"
    );
    assert_eq!(
        h.sim.stack_parameters().get("ApiCount").map(String::as_str),
        Some("3")
    );
}

#[tokio::test(start_paused = true)]
async fn a_stack_update_whose_new_api_tasks_fail_is_cancelled_and_failed_with_the_reason() {
    let h = Harness::stack_first("ECSExec: \"Yes\"\n", SimSettings::default());
    h.sim.inject_rollout_fault(RolloutFault::FailToStart);
    let mut rec = h.reconciler();
    let rolled_back = common::shows_reason(&rec, "ECSExec", "StackUpdateRolledBack");
    let reports = drive(&mut rec, 400, rolled_back).await;
    let last = reports.last().expect("report");
    let p = common::param(&rec, "ECSExec");
    assert_eq!(
        (ecs_exec(last), p.reason.as_str()),
        (Some(Phase::Failed), "StackUpdateRolledBack"),
        "{}",
        p.message
    );
    assert!(
        p.message.contains("Resource update cancelled") || p.message.contains("ServiceWebApi"),
        "{}",
        p.message
    );
    assert_eq!(
        h.sim.calls("CancelUpdateStack"),
        1,
        "cancelled, not left to CloudFormation's hours"
    );
    assert!(
        reports
            .iter()
            .any(|r| r.phases.get("ECSExec") == Some(&Phase::Failed)),
        "reported failing while cancelling"
    );
    assert_eq!(
        h.sim.stack_parameters().get("ECSExec").map(String::as_str),
        Some("No"),
        "rolled back"
    );
    // The retry waits for the backoff, then (the fault was for one rollout) converges.
    let reports = drive(&mut rec, 400, converged).await;
    assert!(converged(reports.last().expect("report")));
    assert_eq!(h.sim.stack_updates().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_stack_update_made_before_a_restart_is_still_the_controllers_to_cancel() {
    let h = Harness::stack_first("ECSExec: \"Yes\"\n", SimSettings::default());
    h.sim.inject_rollout_fault(RolloutFault::FailToStart);
    let mut rec = h.reconciler();
    assert!(
        rec.reconcile(rack_reconciler::reconcile::Trigger::Startup)
            .await
            .acted
    );
    drop(rec);

    let mut rec = h.reconciler();
    let rolled_back = common::shows_reason(&rec, "ECSExec", "StackUpdateRolledBack");
    drive(&mut rec, 400, rolled_back).await;
    assert_eq!(
        h.sim.calls("CancelUpdateStack"),
        1,
        "the new process cancelled it, once"
    );
    assert_eq!(
        h.sim.stack_updates().len(),
        1,
        "and did not retry before the backoff"
    );
}

#[tokio::test(start_paused = true)]
async fn a_parameter_the_target_version_drops_is_not_silently_lost_with_the_version_change() {
    // ECSExec goes to No with a downgrade to the 2024 template, which declares neither
    // ECSExec nor BuildMethod (added since); the BuildMethod change cannot go with it.
    let h = Harness::stack_first(
        "ECSExec: \"No\"\nBuildMethod: \"fargate\"\nVersion: \"20240205000000\"\n",
        SimSettings::default(),
    );
    let mut rec = h.reconciler();
    let said = common::shows_reason(&rec, "BuildMethod", "NotInTargetTemplate");
    drive(&mut rec, 50, said).await;
    let p = common::param(&rec, "BuildMethod");
    assert_eq!(p.phase, Phase::Blocked, "{}", p.message);
    assert!(
        p.message.contains("remove it from the params file"),
        "{}",
        p.message
    );
    let updates = h.sim.stack_updates();
    assert_eq!(updates.len(), 1);
    assert!(
        updates[0]
            .parameters
            .iter()
            .all(|(k, _)| k != "BuildMethod"),
        "{:?}",
        updates[0].parameters
    );
}
