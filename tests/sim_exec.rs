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
use rack_reconciler::exec::ExecPath;
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

/// (path, reason) of each task, by (app, service), in task order.
type Paths = BTreeMap<(String, String), Vec<(ExecPath, String)>>;

fn paths(r: &Readiness) -> Paths {
    let mut out = Paths::new();
    for v in &r.verdicts {
        out.entry((v.app.clone(), v.service.clone()))
            .or_default()
            .push((v.path, v.reason.clone()));
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
    use ExecPath::{Docker, EcsExec, Fails, Unknown};
    type Want<'a> = (&'a str, &'a str, &'a [(ExecPath, &'a str)]);
    let want: &[Want] = &[
        ("audit", "web", &[(Fails, "boundary_blocks_ssmmessages")]),
        (
            "billing",
            "api",
            &[
                (EcsExec, "none"),
                (Fails, "agent_not_running"),
                (Fails, "platform_too_old"),
                (Fails, "started_before_enable"),
            ],
        ),
        (
            "legacy",
            "convox-legacy-ServiceWeb-0000-Service-1",
            &[(Docker, "gen1"), (Docker, "gen1")],
        ),
        ("metrics", "web", &[(Unknown, "unknown_role_permissions")]),
        ("reports", "web", &[(Fails, "task_role_lacks_ssmmessages")]),
        ("shop", "cron", &[(Docker, "service_without_exec")]),
        ("shop", "run", &[(EcsExec, "none")]),
        (
            "shop",
            "web",
            &[
                (Docker, "started_before_enable"),
                (Docker, "started_before_enable"),
                (EcsExec, "none"),
            ],
        ),
        (
            "shop",
            "worker",
            &[(Fails, "agent_too_old"), (Unknown, "unknown_agent_version")],
        ),
        ("uploads", "sync", &[(Fails, "credentials_in_environment")]),
        ("uploads", "web", &[(Fails, "readonly_root_filesystem")]),
    ];
    let want: Paths = want
        .iter()
        .map(|(a, s, v)| {
            let v = v.iter().map(|(p, r)| (*p, r.to_string())).collect();
            ((a.to_string(), s.to_string()), v)
        })
        .collect();
    assert_eq!(paths(&r), want);
    assert_eq!(r.apps["legacy"].generation, 1);
    assert_eq!(r.apps["shop"].generation, 2);
    let by_reason = |reason: &str| {
        r.verdicts
            .iter()
            .find(|v| v.reason == reason)
            .unwrap_or_else(|| panic!("{reason}"))
    };
    assert!(by_reason("agent_not_running").detail.contains("STOPPED"));
    let restart = r
        .verdicts
        .iter()
        .find(|v| v.app == "shop" && v.reason == "started_before_enable")
        .expect("shop task started before enable");
    assert!(
        restart.advice.contains("convox restart -a shop"),
        "{}",
        restart.advice
    );
    assert!(restart.detail.contains("predates"), "{}", restart.detail);
    let deploy = by_reason("service_without_exec");
    assert!(
        deploy.advice.contains("convox deploy -a shop"),
        "{}",
        deploy.advice
    );
    assert!(
        deploy.advice.contains("convox releases promote"),
        "{}",
        deploy.advice
    );
    let fargate = r
        .verdicts
        .iter()
        .find(|v| v.app == "billing" && v.reason == "started_before_enable")
        .expect("fargate task started before enable");
    assert!(
        fargate.detail.contains("no Docker daemon"),
        "{}",
        fargate.detail
    );
    let creds = by_reason("credentials_in_environment");
    assert_eq!(creds.detail, "container(s) sync");
    let ready = by_reason("none");
    assert!(
        ready.detail.contains("ssm via internet gateway"),
        "{}",
        ready.detail
    );
    assert!(by_reason("unknown_role_permissions")
        .detail
        .contains("AccessDenied"));

    // One app only.
    let shop = look(&rack, Some("shop")).await;
    assert!(shop.verdicts.iter().all(|v| v.app == "shop"));
    assert_eq!(shop.verdicts.len(), 7);
}

#[tokio::test(start_paused = true)]
async fn a_rack_with_ecs_exec_no_reads_no_more_than_it_needs() {
    let rack = sim(SimSettings::default());
    let r = look(&rack, None).await;
    assert_eq!(r.verdicts.len(), 18);
    assert!(r.verdicts.iter().all(|v| v.reason == "rack_ecs_exec_no"));
    // Fargate tasks have no Docker daemon to fall back to.
    let fails = r
        .verdicts
        .iter()
        .filter(|v| v.path == ExecPath::Fails)
        .count();
    assert_eq!(fails, 9);
    for op in [
        "DescribeServices",
        "DescribeClusters",
        "DescribeTaskDefinition",
        "SimulatePrincipalPolicy",
        "DescribeContainerInstances",
        "DescribeInstances",
        "DescribeRouteTables",
    ] {
        assert_eq!(rack.calls(op), 0, "{op}: not needed while ECSExec is No");
    }
}

/// A private rack: the route is read per task, and both endpoints are needed.
#[tokio::test(start_paused = true)]
async fn the_route_is_read_for_each_task() {
    let cases = [
        (
            SimNetwork {
                nat: true,
                endpoints: vec![],
            },
            "reachable",
        ),
        (
            SimNetwork {
                nat: false,
                endpoints: vec![],
            },
            "no_route_to_ssm",
        ),
        (
            SimNetwork {
                nat: false,
                endpoints: vec!["ssmmessages".into()],
            },
            "no_route_to_ssm",
        ),
        (
            SimNetwork {
                nat: false,
                endpoints: vec!["ssm".into(), "ssmmessages".into()],
            },
            "reachable",
        ),
    ];
    for (network, want) in cases {
        let rack = sim(SimSettings {
            initial_ecs_exec: Some("Yes".into()),
            apps: 1,
            ..private(network.clone())
        });
        let r = look(&rack, None).await;
        let got: Vec<&str> = r.verdicts.iter().map(|v| v.reason.as_str()).collect();
        let want_reason = if want == "reachable" { "none" } else { want };
        assert!(
            got.iter().all(|g| *g == want_reason),
            "{network:?}: {got:?}"
        );
        if want != "reachable" {
            assert!(
                r.verdicts[0].detail.contains(
                    "ssm: route table rtb-0a1b2c3d of subnet subnet-0a1b2c3d has no default route"
                ),
                "{}",
                r.verdicts[0].detail
            );
        }
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
        r#"rack_reconciler_exec_tasks{app="reports",path="fails",reason="task_role_lacks_ssmmessages"} 1"#,
        r#"rack_reconciler_exec_tasks{app="billing",path="fails",reason="platform_too_old"} 1"#,
        r#"rack_reconciler_exec_tasks{app="metrics",path="unknown",reason="unknown_role_permissions"} 1"#,
    ] {
        assert!(text.contains(line), "{line} missing in:\n{text}");
    }
    let status = rec.status().get();
    let exec = status.exec.as_ref().expect("exec section");
    let count = |p| exec.count(p);
    assert_eq!(exec.tasks, 18);
    assert_eq!(
        [
            ExecPath::EcsExec,
            ExecPath::Docker,
            ExecPath::Fails,
            ExecPath::Unknown
        ]
        .map(count),
        [3, 5, 8, 2]
    );
    assert_eq!(exec.not_ecs_exec.len(), 15);
    let shop = exec.apps.iter().find(|a| a.app == "shop").expect("shop");
    assert_eq!(shop.reasons.get("started_before_enable"), Some(&2));
    let cond = param(&rec, "ECSExec")
        .conditions
        .into_iter()
        .find(|c| c.kind == "ExecReady")
        .expect("ExecReady");
    assert_eq!(
        (cond.status.as_str(), cond.reason.as_str()),
        ("False", "TasksDoNotUseEcsExec")
    );
    assert!(
        cond.message
            .contains("3 started_before_enable (billing, shop)"),
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
    assert_eq!(exec.count(ExecPath::EcsExec), 9);
    assert_eq!(exec.tasks, 9);
    assert_eq!(exec.condition().0, "True");
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
    // 801 stacks (each service a nested stack): 9 pages; 1800 tasks: 18 pages and 18
    // describes; no task without ECS Exec, so no service to describe; the cluster's exec
    // configuration; one instance (agent, then its network); 600 task definitions; 200 roles;
    // the VPC's route tables, whether its NAT gateways are public, and its endpoints (none,
    // so no security group).
    let first = BTreeMap::from([
        ("DescribeStacks", 9),
        ("DescribeServices", 0),
        ("ListTasks", 18),
        ("DescribeTasks", 18),
        ("DescribeContainerInstances", 1),
        ("DescribeClusters", 1),
        ("DescribeTaskDefinition", 600),
        ("SimulatePrincipalPolicy", 200),
        ("ListStackResources", 0),
        ("DescribeInstances", 1),
        ("DescribeNetworkInterfaces", 0),
        ("DescribeRouteTables", 1),
        ("DescribeNatGateways", 1),
        ("DescribeVpcEndpoints", 1),
        ("DescribeSecurityGroups", 0),
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
    assert_eq!(
        second.values().sum::<u64>(),
        9 + 18 + 18 + 1 + 1 + 200 + 1 + 1 + 1 + 1
    );
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
/// today), the API predates ECS Exec: whatever the label says, exec goes through Docker.
#[tokio::test(start_paused = true)]
async fn a_rack_whose_version_predates_ecs_exec_says_so() {
    let h = Harness::new("ECSExec: \"Yes\"\n");
    let mut rec = h.reconciler();
    let reports = drive(&mut rec, 200, |r| ecs_exec(r) == Some(Phase::Converged)).await;
    assert_eq!(
        ecs_exec(reports.last().expect("report")),
        Some(Phase::Converged)
    );
    let r = look(&h.sim, None).await;
    assert!(!r.rack.declares_ecs_exec);
    assert!(r
        .verdicts
        .iter()
        .all(|v| v.reason == "rack_version_lacks_ecs_exec" && v.path != ExecPath::EcsExec));
    let v = &r.verdicts[0];
    assert!(v.advice.contains("Version"), "{}", v.advice);
    let status = rack_reconciler::exec::ExecStatus::from_readiness(&r);
    assert_eq!(status.condition().1, "RackVersionLacksEcsExec");
}
