//! Exec readiness on the simulated rack (tokio's paused clock): every path and reason from the
//! demo apps, the metric, the status section and `ExecReady`, the calls a look costs, and the
//! route-to-SSM requirement that holds `ECSExec=Yes` back on a private rack without one.

use crate::common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::{drive, ecs_exec, param, Harness};
use rack_reconciler::exec::discover::{Discovery, Readiness};
use rack_reconciler::exec::watch::ExecWatch;
use rack_reconciler::exec::{ExecPath, Route};
use rack_reconciler::metrics::Metrics;
use rack_reconciler::plan::Phase;
use rack_reconciler::rack::sim::{SimNetwork, SimRack, SimSettings};
use rack_reconciler::status::{Status, StatusHandle};

fn sim(settings: SimSettings) -> Arc<SimRack> {
    Arc::new(SimRack::new(SimSettings {
        rack: "convox".into(),
        region: "us-east-1".into(),
        ..settings
    }))
}

async fn look(sim: &SimRack, app: Option<&str>) -> Readiness {
    Discovery::default()
        .run(sim, "convox", app, SystemTime::now())
        .await
        .expect("look")
}

/// (app, service) → reasons of its tasks, in task order.
fn reasons(r: &Readiness) -> BTreeMap<(String, String), Vec<String>> {
    let mut out: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for v in &r.verdicts {
        out.entry((v.app.clone(), v.service.clone()))
            .or_default()
            .push(v.reason.clone());
    }
    out
}

#[tokio::test(start_paused = true)]
async fn every_path_on_the_demo_apps() {
    let rack = sim(SimSettings {
        initial_ecs_exec: Some("Yes".into()),
        ..SimSettings::default()
    });
    let r = look(&rack, None).await;
    let key = |a: &str, s: &str| (a.to_string(), s.to_string());
    let want = BTreeMap::from([
        (
            key("billing", "api"),
            vec!["none", "agent_not_running", "platform_too_old"],
        ),
        (
            key("legacy", "convox-legacy-ServiceWeb-0000-Service-1"),
            vec!["gen1", "gen1"],
        ),
        (key("reports", "web"), vec!["task_role_lacks_ssmmessages"]),
        (key("shop", "run"), vec!["none"]),
        (
            key("shop", "web"),
            vec!["started_before_enable", "started_before_enable", "none"],
        ),
        (key("shop", "worker"), vec!["agent_too_old"]),
    ]);
    let want: BTreeMap<_, Vec<String>> = want
        .into_iter()
        .map(|(k, v)| (k, v.into_iter().map(String::from).collect()))
        .collect();
    assert_eq!(reasons(&r), want);
    assert_eq!(r.apps.get("legacy"), Some(&1));
    assert_eq!(r.apps.get("shop"), Some(&2));
    for v in &r.verdicts {
        assert_eq!(v.path == ExecPath::EcsExec, v.reason == "none", "{v:?}");
    }
    let stopped = r
        .verdicts
        .iter()
        .find(|v| v.reason == "agent_not_running")
        .expect("stopped agent");
    assert!(stopped.detail.contains("STOPPED"), "{}", stopped.detail);
    let old = r
        .verdicts
        .iter()
        .find(|v| v.reason == "started_before_enable")
        .expect("old task");
    assert!(
        old.advice.contains("convox deploy -a shop"),
        "{}",
        old.advice
    );
    assert!(old.detail.contains("predates"), "{}", old.detail);
    assert!(matches!(r.rack.route, Route::Reachable { .. }));

    // One app only.
    let shop = look(&rack, Some("shop")).await;
    assert!(shop.verdicts.iter().all(|v| v.app == "shop"));
    assert_eq!(shop.verdicts.len(), 5);
}

#[tokio::test(start_paused = true)]
async fn a_rack_with_ecs_exec_no_reads_no_more_than_it_needs() {
    let rack = sim(SimSettings::default());
    let r = look(&rack, None).await;
    assert_eq!(r.verdicts.len(), 11);
    assert!(r.verdicts.iter().all(|v| v.reason == "rack_ecs_exec_no"));
    for op in [
        "DescribeTaskDefinition",
        "SimulatePrincipalPolicy",
        "DescribeContainerInstances",
    ] {
        assert_eq!(rack.calls(op), 0, "{op}: not needed while ECSExec is No");
    }
}

#[tokio::test(start_paused = true)]
async fn the_watch_publishes_metric_status_and_exec_ready() {
    let h = Harness::stack_first(
        "ECSExec: \"Yes\"\n",
        SimSettings {
            initial_ecs_exec: Some("Yes".into()),
            ..SimSettings::default()
        },
    );
    let mut rec = h.reconciler();
    drive(&mut rec, 5, |r| ecs_exec(r) == Some(Phase::Converged)).await;
    let mut watch = ExecWatch::new(
        h.sim.clone(),
        "convox",
        Duration::from_secs(300),
        Duration::from_secs(120),
        rec.metrics(),
        rec.status(),
    );
    watch.look().await.expect("look");
    let text = rec.metrics().render();
    for line in [
        r#"rack_reconciler_exec_tasks{app="shop",path="docker",reason="started_before_enable"} 2"#,
        r#"rack_reconciler_exec_tasks{app="shop",path="ecs_exec",reason="none"} 2"#,
        r#"rack_reconciler_exec_tasks{app="legacy",path="docker",reason="gen1"} 2"#,
        r#"rack_reconciler_exec_tasks{app="reports",path="docker",reason="task_role_lacks_ssmmessages"} 1"#,
        r#"rack_reconciler_exec_tasks{app="billing",path="docker",reason="platform_too_old"} 1"#,
    ] {
        assert!(text.contains(line), "{line} missing in:\n{text}");
    }
    let status = rec.status().get();
    let exec = status.exec.as_ref().expect("exec section");
    assert_eq!((exec.tasks, exec.ecs_exec, exec.docker), (11, 3, 8));
    assert_eq!(exec.fallbacks.len(), 8);
    let shop = exec.apps.iter().find(|a| a.app == "shop").expect("shop");
    assert_eq!(shop.reasons.get("started_before_enable"), Some(&2));
    let cond = param(&rec, "ECSExec")
        .conditions
        .into_iter()
        .find(|c| c.kind == "ExecReady")
        .expect("ExecReady");
    assert_eq!(
        (cond.status.as_str(), cond.reason.as_str()),
        ("False", "TasksFallBackToDocker")
    );
    assert!(
        cond.message.contains("2 started_before_enable (shop)"),
        "{}",
        cond.message
    );
    // Another reconcile keeps the condition.
    rec.reconcile(rack_reconciler::reconcile::Trigger::Timer)
        .await;
    assert!(param(&rec, "ECSExec")
        .conditions
        .iter()
        .any(|c| c.kind == "ExecReady"));
}

#[tokio::test(start_paused = true)]
async fn apps_that_are_gone_leave_the_metric() {
    let rack = sim(SimSettings {
        initial_ecs_exec: Some("Yes".into()),
        ..SimSettings::default()
    });
    let metrics = Metrics::new();
    let status = StatusHandle::new(Status::default());
    let mut watch = ExecWatch::new(
        rack.clone(),
        "convox",
        Duration::from_secs(300),
        Duration::from_secs(120),
        metrics.clone(),
        status.clone(),
    );
    watch.look().await.expect("look");
    assert!(metrics.render().contains(r#"app="legacy""#));
    let other = sim(SimSettings {
        apps: 1,
        initial_ecs_exec: Some("Yes".into()),
        ..SimSettings::default()
    });
    let mut watch = ExecWatch::new(
        other,
        "convox",
        Duration::from_secs(300),
        Duration::from_secs(120),
        metrics.clone(),
        status.clone(),
    );
    watch.look().await.expect("look");
    let text = metrics.render();
    assert!(!text.contains(r#"app="legacy""#), "{text}");
    assert!(
        text.contains(
            r#"rack_reconciler_exec_tasks{app="app000",path="ecs_exec",reason="none"} 9"#
        ),
        "{text}"
    );
    let exec = status.get().exec.expect("exec");
    assert_eq!(exec.docker, 0);
}

/// 200 apps × 3 services × 3 tasks: a look costs the batching minimum, and the second one
/// (task definitions cached) less.
#[tokio::test(start_paused = true)]
async fn a_large_rack_is_looked_at_in_batches() {
    let rack = sim(SimSettings {
        apps: 200,
        initial_ecs_exec: Some("Yes".into()),
        ..SimSettings::default()
    });
    let ops = rack_reconciler::exec::source::OPERATIONS;
    let counts = |rack: &SimRack| -> BTreeMap<&str, u64> {
        ops.iter().map(|o| (*o, rack.calls(o))).collect()
    };
    let mut discovery = Discovery::default();
    let r = discovery
        .run(rack.as_ref(), "convox", None, SystemTime::now())
        .await
        .expect("look");
    assert_eq!(r.verdicts.len(), 1800);
    assert!(r.verdicts.iter().all(|v| v.path == ExecPath::EcsExec));
    // 801 stacks (each service a nested stack): 9 pages; 600 services: 60 calls; 1800 tasks: 18 pages and 18 describes;
    // one instance; 600 task definitions; 200 roles; a public rack reads no VPC.
    let first = BTreeMap::from([
        ("DescribeStacks", 9),
        ("DescribeServices", 60),
        ("ListTasks", 18),
        ("DescribeTasks", 18),
        ("DescribeContainerInstances", 1),
        ("DescribeTaskDefinition", 600),
        ("SimulatePrincipalPolicy", 200),
        ("ListStackResources", 0),
        ("DescribeRouteTables", 0),
        ("DescribeVpcEndpoints", 0),
    ]);
    assert_eq!(counts(&rack), first);
    discovery
        .run(rack.as_ref(), "convox", None, SystemTime::now())
        .await
        .expect("look");
    let second: BTreeMap<&str, u64> = counts(&rack)
        .into_iter()
        .map(|(op, n)| (op, n - first[op]))
        .collect();
    assert_eq!(
        second["DescribeTaskDefinition"], 0,
        "revisions are read once"
    );
    assert_eq!(second.values().sum::<u64>(), 9 + 60 + 18 + 18 + 1 + 200);
}

fn private(network: SimNetwork) -> SimSettings {
    SimSettings {
        private: true,
        network,
        ..SimSettings::default()
    }
}

#[tokio::test(start_paused = true)]
async fn ecs_exec_is_not_enabled_on_a_private_rack_without_a_route_to_ssm() {
    let h = Harness::stack_first(
        "ECSExec: \"Yes\"\n",
        private(SimNetwork {
            nat: false,
            endpoints: vec!["ssm".into()],
        }),
    );
    let mut rec = h.reconciler();
    let (_, plan) = rec.preview().await.expect("plan");
    let d = plan
        .iter()
        .find(|d| d.param == "ECSExec")
        .expect("ECSExec planned");
    assert_eq!((d.phase, d.reason), (Phase::Blocked, "RequirementUnmet"));
    assert!(
        d.message.contains("com.amazonaws.us-east-1.ssmmessages"),
        "{}",
        d.message
    );
    assert!(
        !d.message.contains("com.amazonaws.us-east-1.ssm,"),
        "{}",
        d.message
    );
    let reports = drive(&mut rec, 3, |r| r.is_final()).await;
    assert_eq!(
        ecs_exec(reports.last().expect("report")),
        Some(Phase::Blocked)
    );
    assert_eq!(h.sim.writes(), 0, "nothing written");
    assert_eq!(param(&rec, "ECSExec").reason, "RequirementUnmet");

    // A NAT route, or both endpoints, and it goes ahead.
    for network in [
        SimNetwork {
            nat: true,
            endpoints: vec![],
        },
        SimNetwork {
            nat: false,
            endpoints: vec!["ssm".into(), "ssmmessages".into()],
        },
    ] {
        let h = Harness::stack_first("ECSExec: \"Yes\"\n", private(network));
        let mut rec = h.reconciler();
        let reports = drive(&mut rec, 200, |r| ecs_exec(r) == Some(Phase::Converged)).await;
        assert_eq!(
            ecs_exec(reports.last().expect("report")),
            Some(Phase::Converged)
        );
        assert_eq!(h.sim.calls("UpdateStack"), 1);
    }
}

#[tokio::test(start_paused = true)]
async fn a_rack_already_enabled_is_not_held_and_no_is_never_held() {
    let no_route = || {
        private(SimNetwork {
            nat: false,
            endpoints: vec![],
        })
    };
    let h = Harness::stack_first(
        "ECSExec: \"Yes\"\n",
        SimSettings {
            initial_ecs_exec: Some("Yes".into()),
            ..no_route()
        },
    );
    let mut rec = h.reconciler();
    let reports = drive(&mut rec, 3, |r| r.is_final()).await;
    assert_eq!(
        ecs_exec(reports.last().expect("report")),
        Some(Phase::Converged),
        "{}",
        param(&rec, "ECSExec").message
    );
    assert_eq!(h.sim.calls("DescribeVpcEndpoints"), 0, "nothing to check");

    let h = Harness::stack_first(
        "ECSExec: \"No\"\n",
        SimSettings {
            initial_ecs_exec: Some("Yes".into()),
            ..no_route()
        },
    );
    let mut rec = h.reconciler();
    let reports = drive(&mut rec, 200, |r| ecs_exec(r) == Some(Phase::Converged)).await;
    assert_eq!(
        ecs_exec(reports.last().expect("report")),
        Some(Phase::Converged)
    );
}

#[tokio::test(start_paused = true)]
async fn without_vpc_access_a_private_rack_waits() {
    let h = Harness::stack_first("ECSExec: \"Yes\"\n", private(SimNetwork::default()));
    let settings = h.settings();
    let metrics = Metrics::new();
    let status = StatusHandle::new(Status::default());
    // No exec source: the route cannot be told.
    let mut rec =
        rack_reconciler::reconcile::Reconciler::new(h.sim.clone(), settings, metrics, status);
    let r = rec
        .reconcile(rack_reconciler::reconcile::Trigger::Startup)
        .await;
    assert_eq!(ecs_exec(&r), Some(Phase::Waiting));
    assert_eq!(param(&rec, "ECSExec").reason, "RequirementUnknown");
    assert_eq!(h.sim.writes(), 0);
}

/// On a rack whose template does not declare `ECSExec` (relabelled, as on the public template
/// today), the rack API's labels are the rack's value.
#[tokio::test(start_paused = true)]
async fn a_relabelled_rack_is_judged_by_its_api_labels() {
    let h = Harness::new("ECSExec: \"Yes\"\n");
    let mut rec = h.reconciler();
    let reports = drive(&mut rec, 200, |r| ecs_exec(r) == Some(Phase::Converged)).await;
    assert_eq!(
        ecs_exec(reports.last().expect("report")),
        Some(Phase::Converged)
    );
    let targets = rack_reconciler::model::ServiceTarget::rack_api();
    let r = Discovery::default()
        .with_api(h.sim.clone(), targets.clone())
        .run(h.sim.as_ref(), "convox", None, SystemTime::now())
        .await
        .expect("look");
    assert!(r.rack.ecs_exec);
    assert!(r.verdicts.iter().all(|v| v.reason != "rack_ecs_exec_no"));
    assert!(r.verdicts.iter().any(|v| v.reason == "none"));

    // Before the change, the labels say No.
    let h = Harness::new("ECSExec: \"No\"\n");
    let r = Discovery::default()
        .with_api(h.sim.clone(), targets)
        .run(h.sim.as_ref(), "convox", None, SystemTime::now())
        .await
        .expect("look");
    assert!(!r.rack.ecs_exec);
    assert!(r.verdicts.iter().all(|v| v.reason == "rack_ecs_exec_no"));
}
