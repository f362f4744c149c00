//! The AWS adapter against moto over HTTP: discovery of a rack created with CloudFormation,
//! relabelling a rich task definition with nothing else changed, idempotency, a faulty
//! network, and no environment value in any log line, status or error.
//!
//! moto 5.2.5 keeps a service's PRIMARY deployment frozen after `UpdateService` (it updates
//! the service's task definition only), so a rollout never completes there: rollout states
//! are tested with canned SDK responses in `aws_rollouts.rs`. Here the monitor service is
//! rolled by a second reconciler that targets it alone.

use crate::common;

use std::sync::{Arc, Mutex};

use aws_sdk_ecs::types::TaskDefinitionField;
use common::moto::Moto;
use common::proxy::{Fault, FaultProxy};
use common::rack_fixture::{self, CLUSTER, MONITOR, SECRETS, STACK, WEB};
use rack_reconciler::metrics::Metrics;
use rack_reconciler::model::ServiceTarget;
use rack_reconciler::rack::aws::AwsRack;
use rack_reconciler::rack::{Rack, RackError};
use rack_reconciler::reconcile::{Reconciler, Trigger};
use rack_reconciler::status::{Status, StatusHandle};

fn reconciler(
    aws: AwsRack,
    metrics: Metrics,
    dir: &std::path::Path,
    targets: Vec<ServiceTarget>,
) -> Reconciler {
    let status = StatusHandle::new(Status {
        rack: STACK.into(),
        backend: "aws".into(),
        ..Status::default()
    });
    Reconciler::new(
        Arc::new(aws),
        common::aws_settings(dir, targets),
        metrics,
        status,
    )
}

fn web_only() -> Vec<ServiceTarget> {
    vec![ServiceTarget::new("ServiceWebApi", "ApiWebTasks")]
}

fn monitor_only() -> Vec<ServiceTarget> {
    vec![ServiceTarget::new("ServiceMonitorApi", "ApiMonitorTasks")]
}

/// Asserts that `new` is `old` with only the first container's `rack.ECSExec` label set.
async fn assert_only_label_changed(ecs: &aws_sdk_ecs::Client, old: &str, new: &str, value: &str) {
    let describe = |arn: String| {
        let ecs = ecs.clone();
        async move {
            let out = ecs
                .describe_task_definition()
                .task_definition(arn)
                .include(TaskDefinitionField::Tags)
                .send()
                .await
                .expect("describe");
            (
                out.task_definition.expect("task definition"),
                out.tags.unwrap_or_default(),
            )
        }
    };
    let (mut a, a_tags) = describe(old.to_string()).await;
    let (mut b, b_tags) = describe(new.to_string()).await;
    assert_ne!(a.revision, b.revision);
    assert_eq!(a_tags, b_tags, "tags");
    assert_eq!(
        b.container_definitions
            .as_ref()
            .and_then(|c| c[0].docker_labels.as_ref())
            .and_then(|l| l.get("rack.ECSExec")),
        Some(&value.to_string())
    );
    assert_eq!(
        b.container_definitions
            .as_ref()
            .and_then(|c| c[1].docker_labels.as_ref())
            .and_then(|l| l.get("rack.ECSExec")),
        Some(&"untouched".to_string()),
        "only the first container is relabelled"
    );
    for td in [&mut a, &mut b] {
        td.task_definition_arn = None;
        td.revision = 0;
        td.registered_at = None;
        td.registered_by = None;
        if let Some(c) = td.container_definitions.as_mut() {
            if let Some(l) = c[0].docker_labels.as_mut() {
                l.remove("rack.ECSExec");
            }
        }
    }
    // Field by field first, for a readable failure (names only, no values).
    assert_eq!(a.cpu, b.cpu);
    assert_eq!(a.memory, b.memory);
    assert_eq!(a.runtime_platform, b.runtime_platform);
    assert_eq!(a.ephemeral_storage, b.ephemeral_storage);
    assert_eq!(a.pid_mode, b.pid_mode);
    assert_eq!(a.ipc_mode, b.ipc_mode);
    assert_eq!(a.proxy_configuration, b.proxy_configuration);
    assert_eq!(a.placement_constraints, b.placement_constraints);
    assert_eq!(a.volumes, b.volumes);
    assert!(
        a.container_definitions == b.container_definitions,
        "container definitions differ"
    );
    assert!(a == b, "task definitions differ beyond the label");
    // The rich fields really were there to be kept.
    assert!(
        a.proxy_configuration.is_some()
            && a.runtime_platform.is_some()
            && a.ephemeral_storage.is_some()
    );
    let first = &a.container_definitions.as_ref().expect("containers")[0];
    assert!(
        first.health_check.is_some() && first.ulimits.is_some() && first.linux_parameters.is_some()
    );
    // The secrets were there to be kept: the monitor's PASSWORD, the web's TLS key labels.
    let env = first.environment.as_deref().unwrap_or_default();
    let labels = first.docker_labels.clone().unwrap_or_default();
    assert!(
        env.iter()
            .any(|kv| kv.value.as_deref() == Some(rack_fixture::SECRET))
            || labels.values().any(|v| v == rack_fixture::TLS_KEY)
    );
    let role = a.task_role_arn.as_deref().unwrap_or_default();
    assert!(role.contains(":role/convox/"), "{role}");
}

#[tokio::test]
async fn discovers_a_rack_created_with_cloudformation() {
    let moto = Moto::start().await;
    let (cfn, ecs) = moto.clients().await;
    let rack = rack_fixture::create(&moto).await;
    let aws = AwsRack::new(STACK, cfn, ecs, Metrics::new());

    let stack = aws.describe_stack().await.expect("describe stack");
    assert_eq!(stack.name, STACK);
    assert_eq!(stack.status, "CREATE_COMPLETE");
    assert_eq!(
        stack.parameters.get("Version").map(String::as_str),
        Some("20260418101514")
    );
    assert!(
        stack.parameters.len()
            == rack_reconciler::rack::sim::fixture().templates["20260418101514"]
                .parameters
                .len(),
        "{} parameters",
        stack.parameters.len()
    );
    let found = |logical: &'static str| aws.stack_resource(logical);
    assert_eq!(found("Cluster").await.as_deref(), Ok(CLUSTER));
    let web = found("ServiceWebApi").await.expect("web service");
    let monitor = found("ServiceMonitorApi").await.expect("monitor service");
    assert!(web.ends_with(WEB) && monitor.ends_with(MONITOR));
    assert!(
        matches!(
            found("ServiceNoSuch").await,
            Err(RackError::MissingResource { ref logical, .. }) if logical == "ServiceNoSuch"
        ),
        "a resource the stack lacks is named as missing: {:?}",
        found("ServiceNoSuch").await
    );

    let services = aws
        .describe_services(CLUSTER, &[web, monitor])
        .await
        .expect("describe services");
    assert_eq!(services.len(), 2);
    assert_eq!(services[0].name, WEB);
    assert_eq!(
        services[0].primary().map(|d| d.task_definition.as_str()),
        Some(rack.web_task_definition.as_str())
    );
    assert_eq!(
        (
            services[1].minimum_healthy_percent,
            services[1].maximum_percent
        ),
        (100, 200)
    );
    // As on a real rack: the web service sits behind the load balancer's target group.
    assert_eq!(
        services[0].target_groups.len(),
        1,
        "{:?}",
        services[0].target_groups
    );
    assert!(services[0].target_groups[0].contains(":targetgroup/"));
    assert!(services[1].target_groups.is_empty());
    assert_eq!(services[0].minimum_healthy_percent, 50);

    let info = aws
        .describe_task_definition(&rack.web_task_definition)
        .await
        .expect("describe td");
    assert_eq!((info.family.as_str(), info.revision), ("convox-web", 1));
    assert!(
        !info.labels.contains_key("rack.ECSExec"),
        "the rack's revisions carry no rack.ECSExec yet"
    );
    assert_eq!(
        info.labels
            .get("rack.AvailabilityZones")
            .map(String::as_str),
        Some("us-east-1a,us-east-1b"),
        "the zones convox sends with every update"
    );

    let missing = AwsRack::new(
        "no-such-rack",
        moto.clients().await.0,
        moto.clients().await.1,
        Metrics::new(),
    );
    let err = missing.describe_stack().await.expect_err("missing stack");
    assert!(err.to_string().contains("no-such-rack"), "{err}");
}

#[tokio::test]
async fn relabels_a_rich_task_definition_changing_nothing_else() {
    let moto = Moto::start().await;
    let (cfn, ecs) = moto.clients().await;
    let rack = rack_fixture::create(&moto).await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("params.yaml"), "ECSExec: \"Yes\"\n").expect("params");

    let metrics = Metrics::new();
    let aws = AwsRack::new(STACK, cfn.clone(), ecs.clone(), metrics.clone());
    let mut rec = reconciler(aws, metrics.clone(), dir.path(), ServiceTarget::rack_api());
    let r = rec.reconcile(Trigger::Startup).await;
    assert!(r.acted, "{:?}", rec.status().get());
    let web_now = rack_fixture::service_task_definition(&ecs, WEB).await;
    assert_ne!(web_now, rack.web_task_definition);
    assert!(web_now.contains("task-definition/convox-web:"), "{web_now}");
    assert_only_label_changed(&ecs, &rack.web_task_definition, &web_now, "Yes").await;
    // Web first: the monitor is untouched while web has not converged.
    assert_eq!(
        rack_fixture::service_task_definition(&ecs, MONITOR).await,
        rack.monitor_task_definition
    );

    // A second run registers nothing new (it finds the revision it registered).
    let before = rack_fixture::revisions(&ecs, "convox-web").await;
    rec.reconcile(Trigger::Timer).await;
    assert_eq!(rack_fixture::revisions(&ecs, "convox-web").await, before);
    assert_eq!(metrics.api_calls("RegisterTaskDefinition"), 1);

    let mut monitor = reconciler(
        AwsRack::new(STACK, cfn.clone(), ecs.clone(), metrics.clone()),
        metrics.clone(),
        dir.path(),
        monitor_only(),
    );
    monitor.reconcile(Trigger::Startup).await;
    let monitor_now = rack_fixture::service_task_definition(&ecs, MONITOR).await;
    assert_only_label_changed(&ecs, &rack.monitor_task_definition, &monitor_now, "Yes").await;
    let before = rack_fixture::revisions(&ecs, "convox-monitor").await;
    monitor.reconcile(Trigger::Timer).await;
    assert_eq!(
        rack_fixture::revisions(&ecs, "convox-monitor").await,
        before
    );
    assert_eq!(metrics.api_calls("RegisterTaskDefinition"), 2);
    assert_eq!(
        rack_fixture::service_task_definition(&ecs, WEB).await,
        web_now
    );
}

/// Runs reconciles until `service` points at a revision other than `from`.
async fn reconcile_until_moved(
    rec: &mut Reconciler,
    ecs: &aws_sdk_ecs::Client,
    service: &str,
    from: &str,
) -> String {
    for _ in 0..60 {
        rec.reconcile(Trigger::Timer).await;
        let now = rack_fixture::service_task_definition(ecs, service).await;
        if now != from {
            // One more run settles a lost UpdateService response and the like.
            rec.reconcile(Trigger::Timer).await;
            return rack_fixture::service_task_definition(ecs, service).await;
        }
    }
    panic!(
        "{service} never moved off {from}: {:?}",
        rec.status().get().parameters
    );
}

#[tokio::test]
async fn converges_through_throttling_errors_dropped_connections_and_slow_responses() {
    let moto = Moto::start().await;
    let (_, ecs) = moto.clients().await;
    let rack = rack_fixture::create(&moto).await;
    let proxy = FaultProxy::start(
        &moto.endpoint,
        3,
        vec![
            Fault::Throttle,
            Fault::DropAfterForward,
            Fault::ServerError,
            Fault::DropBeforeForward,
            Fault::Slow(std::time::Duration::from_millis(300)),
        ],
    )
    .await;
    let faulty = moto.sdk_config(&proxy.endpoint).await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("params.yaml"), "ECSExec: \"Yes\"\n").expect("params");

    let capture = Capture::default();
    let _log = capture.install();
    let metrics = Metrics::new();
    let aws = |m: &Metrics| {
        AwsRack::new(
            STACK,
            aws_sdk_cloudformation::Client::new(&faulty),
            aws_sdk_ecs::Client::new(&faulty),
            m.clone(),
        )
    };
    let mut web = reconciler(aws(&metrics), metrics.clone(), dir.path(), web_only());
    let web_now = reconcile_until_moved(&mut web, &ecs, WEB, &rack.web_task_definition).await;
    let mut monitor = reconciler(aws(&metrics), metrics.clone(), dir.path(), monitor_only());
    let monitor_now =
        reconcile_until_moved(&mut monitor, &ecs, MONITOR, &rack.monitor_task_definition).await;

    assert!(
        proxy.faults_injected() >= 5,
        "only {} faults in {} requests",
        proxy.faults_injected(),
        proxy.requests()
    );
    assert_only_label_changed(&ecs, &rack.web_task_definition, &web_now, "Yes").await;
    assert_only_label_changed(&ecs, &rack.monitor_task_definition, &monitor_now, "Yes").await;
    // The rack's two revisions per family (rich and CloudFormation's) plus exactly one more.
    assert_eq!(
        rack_fixture::revisions(&ecs, "convox-web").await.len(),
        3,
        "web revision duplicated"
    );
    assert_eq!(
        rack_fixture::revisions(&ecs, "convox-monitor").await.len(),
        3,
        "monitor revision duplicated"
    );

    capture.assert_clean(
        &[&web.status().get(), &monitor.status().get()],
        &metrics.render(),
    );
}

#[tokio::test]
async fn a_lost_register_response_reuses_the_revision_instead_of_registering_twice() {
    let moto = Moto::start().await;
    let (_, ecs) = moto.clients().await;
    let rack = rack_fixture::create(&moto).await;
    // moto registers the revision, the response never arrives.
    let proxy = FaultProxy::start_matching(
        &moto.endpoint,
        "RegisterTaskDefinition",
        vec![Fault::DropAfterForward],
    )
    .await;
    let faulty = moto.sdk_config(&proxy.endpoint).await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("params.yaml"), "ECSExec: \"Yes\"\n").expect("params");
    let metrics = Metrics::new();
    let aws = AwsRack::new(
        STACK,
        aws_sdk_cloudformation::Client::new(&faulty),
        aws_sdk_ecs::Client::new(&faulty),
        metrics.clone(),
    );
    let mut rec = reconciler(aws, metrics.clone(), dir.path(), web_only());
    let first = rec.reconcile(Trigger::Startup).await;
    assert_eq!(
        first.phases.get("ECSExec"),
        Some(&rack_reconciler::plan::Phase::Failed)
    );
    assert_eq!(proxy.faults_injected(), 1);
    assert_eq!(
        rack_fixture::revisions(&ecs, "convox-web").await.len(),
        3,
        "moto did register it"
    );

    let web_now = reconcile_until_moved(&mut rec, &ecs, WEB, &rack.web_task_definition).await;
    assert_only_label_changed(&ecs, &rack.web_task_definition, &web_now, "Yes").await;
    assert_eq!(
        rack_fixture::revisions(&ecs, "convox-web").await.len(),
        3,
        "registered twice"
    );
    assert_eq!(
        metrics.api_calls("RegisterTaskDefinition"),
        1,
        "the SDK retried a non-idempotent call"
    );
    assert!(metrics.render().contains(
        "operation=\"RegisterTaskDefinition\",outcome=\"transient_error\",service=\"ecs\"} 1"
    ));
}

#[tokio::test]
async fn no_environment_value_reaches_logs_status_or_errors() {
    let moto = Moto::start().await;
    let (cfn, ecs) = moto.clients().await;
    rack_fixture::create(&moto).await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("params.yaml"), "ECSExec: \"Yes\"\n").expect("params");

    let capture = Capture::default();
    let _log = capture.install();
    // Every write fails: the errors travel through status and logs.
    let proxy = FaultProxy::start(&moto.endpoint, 1, vec![Fault::ServerError]).await;
    let failing = moto.sdk_config(&proxy.endpoint).await;
    let metrics = Metrics::new();
    let mixed = AwsRack::new(
        STACK,
        cfn.clone(),
        aws_sdk_ecs::Client::new(&failing),
        metrics.clone(),
    );
    let mut rec = reconciler(mixed, metrics.clone(), dir.path(), web_only());
    let r = rec.reconcile(Trigger::Startup).await;
    assert_eq!(r.result, "error", "{:?}", rec.status().get());

    // And a successful relabel, at full log verbosity.
    let ok = AwsRack::new(STACK, cfn, ecs, metrics.clone());
    let mut rec2 = reconciler(ok, metrics.clone(), dir.path(), web_only());
    assert!(rec2.reconcile(Trigger::Startup).await.acted);
    capture.assert_clean(
        &[&rec.status().get(), &rec2.status().get()],
        &metrics.render(),
    );
    assert!(
        capture.text().contains("the rest as it was"),
        "logs were not captured"
    );
}

/// Captures every log line (all targets, TRACE, SDK capped) of the current thread.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("capture").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    /// Everything at TRACE, through the controller's own cap on the SDK's log targets (the
    /// SDK traces whole responses, task definitions and their labels included).
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::Layer;
        let me = self.clone();
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(move || me.clone())
            .with_filter(rack_reconciler::logging::caps());
        tracing::subscriber::set_default(tracing_subscriber::registry().with(layer))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("capture")).into_owned()
    }

    fn assert_clean(&self, statuses: &[&Status], metrics: &str) {
        let logs = self.text();
        for secret in SECRETS {
            let leaks: Vec<String> = logs
                .lines()
                .filter(|l| l.contains(secret))
                .map(|l| l.replace(secret, "<SECRET>").chars().take(300).collect())
                .collect();
            assert!(leaks.is_empty(), "log lines carry a secret: {leaks:#?}");
            for s in statuses {
                let json = serde_json::to_string(s).expect("json");
                assert!(!json.contains(secret), "the status carries a secret");
            }
            assert!(!metrics.contains(secret), "a metric carries a secret");
        }
    }
}

/// What a change costs against moto (with the rollouts it leaves out, see
/// `tests/moto/ecs_rollouts.py`), counted by the adapter's call metric: a look at a converged
/// rack is `DescribeStacks` and `DescribeServices`; a change costs at most five calls per
/// service beyond the looks that follow it (four here: the services run no tasks).
#[tokio::test]
async fn a_service_change_costs_at_most_five_calls_beyond_its_looks() {
    let moto = Moto::start_with_rollouts().await;
    let (cfn, ecs) = moto.clients().await;
    let rack = rack_fixture::create(&moto).await;
    // On a rack the services run their family's latest revision; the fixture's services run
    // a richer one registered before the stack's own, which is retired here.
    for (family, running) in [
        ("convox-web", &rack.web_task_definition),
        ("convox-monitor", &rack.monitor_task_definition),
    ] {
        for arn in rack_fixture::revisions(&ecs, family).await {
            if arn != *running {
                ecs.deregister_task_definition()
                    .task_definition(arn)
                    .send()
                    .await
                    .expect("deregister");
            }
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let params = dir.path().join("params.yaml");
    std::fs::write(&params, "ECSExec: \"No\"\n").expect("params");
    let metrics = Metrics::new();
    let aws = AwsRack::new(STACK, cfn, ecs, metrics.clone());
    let mut rec = reconciler(aws, metrics.clone(), dir.path(), ServiceTarget::rack_api());
    let counts = || -> Vec<(&str, u64)> {
        rack_reconciler::rack::sim::OPERATIONS
            .iter()
            .map(|op| (*op, metrics.api_calls(op)))
            .collect()
    };
    let since = |before: &[(&'static str, u64)]| -> Vec<(&'static str, u64)> {
        counts()
            .into_iter()
            .zip(before)
            .map(|((op, n), (_, b))| (op, n - b))
            .filter(|(_, n)| *n > 0)
            .collect()
    };
    assert!(!rec.reconcile(Trigger::Startup).await.acted);

    let before = counts();
    rec.reconcile(Trigger::Timer).await;
    assert_eq!(
        since(&before),
        vec![("DescribeStacks", 1), ("DescribeServices", 1)],
        "a look at a converged rack"
    );

    std::fs::write(&params, "ECSExec: \"Yes\"\n").expect("params");
    let before = counts();
    let mut looks = 0;
    loop {
        let r = rec.reconcile(Trigger::Timer).await;
        looks += 1;
        if r.phases.get("ECSExec") == Some(&rack_reconciler::plan::Phase::Converged) {
            break;
        }
        assert!(looks < 10, "{:?}", rec.status().get().parameters);
    }
    let beyond: Vec<(&str, u64)> = since(&before)
        .into_iter()
        .filter_map(|(op, n)| match op {
            "DescribeStacks" | "DescribeServices" => {
                assert_eq!(n, looks, "{op} once per look");
                None
            }
            _ => Some((op, n)),
        })
        .collect();
    // Per service: the family's revisions listed, the copy registered (its response proves
    // it), the service pointed at it, its tasks listed once at the end (none run here, so
    // nothing to describe).
    assert_eq!(
        beyond,
        vec![
            ("ListTasks", 2),
            ("ListTaskDefinitions", 2),
            ("RegisterTaskDefinition", 2),
            ("UpdateService", 2),
        ]
    );
}
