//! Rollout states through the real AWS adapter, fed canned SDK responses (aws-smithy-mocks):
//! what moto cannot show because it never runs service tasks. The responses are shaped like a
//! real rack's: no deployment circuit breaker on the API services, the web service behind the
//! load balancer's target group, roles under `/convox/`, stopped tasks with their reasons.

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_sdk_cloudformation::operation::describe_stack_resource::DescribeStackResourceOutput;
use aws_sdk_cloudformation::operation::describe_stacks::DescribeStacksOutput;
use aws_sdk_cloudformation::types::{Stack, StackResourceDetail, StackStatus};
use aws_sdk_ecs::operation::describe_services::DescribeServicesOutput;
use aws_sdk_ecs::operation::describe_task_definition::DescribeTaskDefinitionOutput;
use aws_sdk_ecs::operation::describe_tasks::DescribeTasksOutput;
use aws_sdk_ecs::operation::list_tasks::ListTasksOutput;
use aws_sdk_ecs::primitives::DateTime;
use aws_sdk_ecs::types::{
    ContainerDefinition, Deployment, DeploymentConfiguration, DeploymentRolloutState, Service,
    Task, TaskDefinition,
};
use aws_smithy_mocks::{mock, mock_client, Rule, RuleMode};
use rack_reconciler::metrics::Metrics;
use rack_reconciler::model::{RolloutState, ServiceTarget, TaskRead};
use rack_reconciler::plan::Phase;
use rack_reconciler::rack::aws::AwsRack;
use rack_reconciler::rack::Rack;
use rack_reconciler::reconcile::{Reconciler, Trigger};
use rack_reconciler::status::{Status, StatusHandle};

const CLUSTER: &str = "convox-Cluster-1";
const WEB_ARN: &str = "arn:aws:ecs:us-east-1:123456789012:service/convox-Cluster-1/convox-web";
const MON_ARN: &str = "arn:aws:ecs:us-east-1:123456789012:service/convox-Cluster-1/convox-monitor";

/// A deployment's id, one per revision in these scenarios (a rollback to an earlier revision
/// is a deployment of its own, as in ECS): what its tasks' `startedBy` carries.
fn deployment_id(td: &str) -> String {
    format!("ecs-svc/{}", td.rsplit(':').next().unwrap_or("0"))
}

fn td(family: &str, rev: u32) -> String {
    format!("arn:aws:ecs:us-east-1:123456789012:task-definition/convox-{family}:{rev}")
}

#[derive(Clone)]
struct Dep {
    primary: bool,
    td: String,
    state: DeploymentRolloutState,
    reason: &'static str,
    running: i32,
    age: Duration,
}

/// What DescribeServices and the task listing return for each service.
#[derive(Clone)]
struct Scenario {
    web: Vec<Dep>,
    monitor: Vec<Dep>,
    web_tasks: Vec<String>,
    monitor_tasks: Vec<String>,
    /// Stopped tasks of the web service's primary deployment: (revision, stopped reason).
    web_stopped: Vec<(String, String)>,
}

/// Faults of the task definition calls, for the write-safety tests.
#[derive(Clone, Default)]
struct Faults {
    /// ECS stores revision 2 with another image than the one registered.
    mismatch: bool,
    /// `RegisterTaskDefinition` is throttled this many times first.
    throttle_register: usize,
    /// `DescribeTaskDefinition` of revision 2 does not find it this many times first.
    unseen_describes: usize,
}

const TARGET_GROUP: &str =
    "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/convox-ApiBala-1ABC/0123456789abcdef";
const API_ROLE: &str = "arn:aws:iam::123456789012:role/convox/convox-ApiRole-1XYZ";

fn done(td: String) -> Dep {
    Dep {
        primary: true,
        td,
        state: DeploymentRolloutState::Completed,
        reason: "ECS deployment completed.",
        running: 2,
        age: Duration::from_secs(3600),
    }
}

/// A service as `DescribeServices` shows it. Its deployments count no failed tasks: without a
/// circuit breaker ECS need not count them (and resets the count once a task ran), so the
/// stopped tasks are what shows a rollout failing.
fn service(name: &str, arn: &str, deps: &[Dep]) -> Service {
    let lb = (name == "convox-web").then(|| {
        aws_sdk_ecs::types::LoadBalancer::builder()
            .target_group_arn(TARGET_GROUP)
            .container_name("web")
            .container_port(5443)
            .build()
    });
    Service::builder()
        .service_name(name)
        .service_arn(arn)
        .set_load_balancers(lb.map(|l| vec![l]))
        .status("ACTIVE")
        .desired_count(2)
        .running_count(deps.iter().map(|d| d.running).sum())
        .deployment_configuration(
            DeploymentConfiguration::builder()
                .minimum_healthy_percent(50)
                .maximum_percent(200)
                // The rack template sets no deployment circuit breaker; only a deployment
                // that a breaker failed implies one (the explicit variant).
                .set_deployment_circuit_breaker(
                    deps.iter()
                        .any(|d| d.state == DeploymentRolloutState::Failed)
                        .then(|| {
                            aws_sdk_ecs::types::DeploymentCircuitBreaker::builder()
                                .enable(true)
                                .rollback(true)
                                .build()
                        }),
                )
                .build(),
        )
        .set_deployments(Some(
            deps.iter()
                .map(|d| {
                    let created = SystemTime::now() - d.age;
                    Deployment::builder()
                        .id(deployment_id(&d.td))
                        .status(if d.primary { "PRIMARY" } else { "ACTIVE" })
                        .task_definition(d.td.clone())
                        .desired_count(2)
                        .running_count(d.running)
                        .pending_count(0)
                        .failed_tasks(0)
                        .rollout_state(d.state.clone())
                        .rollout_state_reason(d.reason)
                        .created_at(DateTime::from(created))
                        .build()
                })
                .collect(),
        ))
        .build()
}

struct Mocked {
    scenario: Arc<Mutex<Scenario>>,
    updates: Rule,
    registers: Rule,
    /// The revision of every `UpdateService`, in order.
    rolled: Arc<Mutex<Vec<String>>>,
    /// `RegisterTaskDefinition` calls answered with throttling.
    throttled: Rule,
    /// `DescribeTaskDefinition` calls that did not find the revision yet.
    unseen: Rule,
    rack: AwsRack,
}

fn mocked(initial: Scenario) -> Mocked {
    mocked_with(initial, Faults::default())
}

fn mocked_with(initial: Scenario, faults: Faults) -> Mocked {
    let scenario = Arc::new(Mutex::new(initial));
    let faults = Arc::new(Mutex::new(faults));
    let stacks = mock!(aws_sdk_cloudformation::Client::describe_stacks).then_compute_output(|_| {
        DescribeStacksOutput::builder()
            .stacks(
                Stack::builder()
                    .stack_name("convox")
                    .stack_status(StackStatus::UpdateComplete)
                    .creation_time(DateTime::from_secs(0))
                    .build(),
            )
            .build()
    });
    let resources = mock!(aws_sdk_cloudformation::Client::describe_stack_resource)
        .then_compute_output(|input| {
            let logical = input.logical_resource_id().unwrap_or_default();
            let physical = match logical {
                "Cluster" => CLUSTER,
                "ServiceWebApi" => WEB_ARN,
                _ => MON_ARN,
            };
            DescribeStackResourceOutput::builder()
                .stack_resource_detail(
                    StackResourceDetail::builder()
                        .logical_resource_id(logical)
                        .physical_resource_id(physical)
                        .resource_type("AWS::ECS::Service")
                        .last_updated_timestamp(DateTime::from_secs(0))
                        .resource_status(
                            aws_sdk_cloudformation::types::ResourceStatus::CreateComplete,
                        )
                        .build(),
                )
                .build()
        });
    // The running template: the 2026 release, which does not declare ECSExec (relabel path).
    let template = mock!(aws_sdk_cloudformation::Client::get_template).then_compute_output(|_| {
        aws_sdk_cloudformation::operation::get_template::GetTemplateOutput::builder()
            .template_body(r#"{"Parameters": {"Version": {"Type": "String"}, "Password": {"Type": "String", "NoEcho": true}}}"#)
            .build()
    });
    let cfn = mock_client!(
        aws_sdk_cloudformation,
        RuleMode::MatchAny,
        &[&stacks, &resources, &template]
    );

    let s = scenario.clone();
    let services = mock!(aws_sdk_ecs::Client::describe_services).then_compute_output(move |_| {
        let sc = s.lock().expect("scenario").clone();
        DescribeServicesOutput::builder()
            .services(service("convox-web", WEB_ARN, &sc.web))
            .services(service("convox-monitor", MON_ARN, &sc.monitor))
            .build()
    });
    let s = scenario.clone();
    let list = mock!(aws_sdk_ecs::Client::list_tasks).then_compute_output(move |req| {
        let sc = s.lock().expect("scenario").clone();
        let stopped = req.desired_status() == Some(&aws_sdk_ecs::types::DesiredStatus::Stopped);
        let web = req.service_name() == Some("convox-web");
        let (prefix, tasks) = match (web, stopped) {
            (true, false) => ("web", sc.web_tasks),
            (false, false) => ("mon", sc.monitor_tasks),
            (true, true) => (
                "web-stopped",
                sc.web_stopped.iter().map(|t| t.0.clone()).collect(),
            ),
            (false, true) => ("mon-stopped", Vec::new()),
        };
        ListTasksOutput::builder()
            .set_task_arns(Some(
                (0..tasks.len())
                    .map(|i| format!("arn:task/{prefix}/{i}"))
                    .collect(),
            ))
            .build()
    });
    let s = scenario.clone();
    let describe_tasks =
        mock!(aws_sdk_ecs::Client::describe_tasks).then_compute_output(move |req| {
            let sc = s.lock().expect("scenario").clone();
            let tasks = req
                .tasks()
                .iter()
                .filter_map(|arn| {
                    let mut parts = arn.rsplit('/');
                    let i: usize = parts.next()?.parse().ok()?;
                    let task = match parts.next()? {
                        "web-stopped" => {
                            let (td, reason) = sc.web_stopped.get(i)?;
                            return Some(
                                Task::builder()
                                    .task_arn(arn)
                                    .task_definition_arn(td)
                                    .started_by(deployment_id(td))
                                    .desired_status("STOPPED")
                                    .last_status("STOPPED")
                                    .stopped_reason(reason)
                                    .stop_code(
                                        aws_sdk_ecs::types::TaskStopCode::ServiceSchedulerInitiated,
                                    )
                                    .created_at(DateTime::from(SystemTime::now()))
                                    .build(),
                            );
                        }
                        "web" => sc.web_tasks.get(i)?,
                        _ => sc.monitor_tasks.get(i)?,
                    };
                    Some(
                        Task::builder()
                            .task_arn(arn)
                            .task_definition_arn(task)
                            .desired_status("RUNNING")
                            .last_status("RUNNING")
                            .build(),
                    )
                })
                .collect();
            DescribeTasksOutput::builder()
                .set_tasks(Some(tasks))
                .build()
        });
    let mismatch = faults.lock().expect("faults").mismatch;
    let f = faults.clone();
    let unseen = mock!(aws_sdk_ecs::Client::describe_task_definition)
        .match_requests(move |req| {
            let mut f = f.lock().expect("faults");
            let unseen = req.task_definition() == Some(td("web", 2).as_str())
                && f.unseen_describes > 0;
            f.unseen_describes -= usize::from(unseen);
            unseen
        })
        .then_error(|| {
            aws_sdk_ecs::operation::describe_task_definition::DescribeTaskDefinitionError::ClientException(
                aws_sdk_ecs::types::error::ClientException::builder()
                    .message("Unable to describe task definition.")
                    .meta(
                        aws_sdk_ecs::error::ErrorMetadata::builder()
                            .code("ClientException")
                            .message("Unable to describe task definition.")
                            .build(),
                    )
                    .build(),
            )
        });
    let describe_td =
        mock!(aws_sdk_ecs::Client::describe_task_definition).then_compute_output(move |req| {
            let arn = req.task_definition().unwrap_or_default().to_string();
            let rev: i32 = arn
                .rsplit(':')
                .next()
                .and_then(|r| r.parse().ok())
                .unwrap_or(0);
            let mut c = ContainerDefinition::builder()
                .name("web")
                .image("convox/rack:20260418101514")
                .docker_labels("rack.Version", "20260418101514");
            if rev == 2 {
                c = c.docker_labels("rack.ECSExec", "Yes");
            }
            if rev == 2 && mismatch {
                c = c.image("convox/rack:tampered");
            }
            DescribeTaskDefinitionOutput::builder()
                .task_definition(
                    TaskDefinition::builder()
                        .task_definition_arn(&arn)
                        .task_role_arn(API_ROLE)
                        .family(if arn.contains("web") {
                            "convox-web"
                        } else {
                            "convox-monitor"
                        })
                        .revision(rev)
                        .container_definitions(c.build())
                        .build(),
                )
                .build()
        });
    let rolled = Arc::new(Mutex::new(Vec::new()));
    let r = rolled.clone();
    let updates = mock!(aws_sdk_ecs::Client::update_service).then_compute_output(move |req| {
        r.lock()
            .expect("rolled")
            .push(req.task_definition().unwrap_or_default().to_string());
        aws_sdk_ecs::operation::update_service::UpdateServiceOutput::builder().build()
    });
    let f = faults.clone();
    let throttled = mock!(aws_sdk_ecs::Client::register_task_definition)
        .match_requests(move |_| {
            let mut f = f.lock().expect("faults");
            let throttle = f.throttle_register > 0;
            f.throttle_register -= usize::from(throttle);
            throttle
        })
        .then_error(|| {
            aws_sdk_ecs::operation::register_task_definition::RegisterTaskDefinitionError::generic(
                aws_sdk_ecs::error::ErrorMetadata::builder()
                    .code("ThrottlingException")
                    .message("Rate exceeded")
                    .build(),
            )
        });
    // The copy of revision 1 with the label set is registered as revision 2.
    let registers =
        mock!(aws_sdk_ecs::Client::register_task_definition).then_compute_output(|req| {
            let family = req.family().unwrap_or_default().to_string();
            let short = family.trim_start_matches("convox-").to_string();
            aws_sdk_ecs::operation::register_task_definition::RegisterTaskDefinitionOutput::builder(
            )
            .task_definition(
                TaskDefinition::builder()
                    .task_definition_arn(td(&short, 2))
                    .family(family)
                    .revision(2)
                    .build(),
            )
            .build()
        });
    let list_revisions =
        mock!(aws_sdk_ecs::Client::list_task_definitions).then_compute_output(|_| {
            aws_sdk_ecs::operation::list_task_definitions::ListTaskDefinitionsOutput::builder()
                .build()
        });
    let ecs = mock_client!(
        aws_sdk_ecs,
        RuleMode::MatchAny,
        &[
            &services,
            &list,
            &describe_tasks,
            &unseen,
            &describe_td,
            &throttled,
            &updates,
            &registers,
            &list_revisions
        ]
    );
    Mocked {
        scenario,
        updates,
        registers,
        rolled,
        throttled,
        unseen,
        rack: AwsRack::new("convox", cfn, ecs, Metrics::new()),
    }
}

fn reconciler(rack: AwsRack) -> (Reconciler, tempfile::TempDir) {
    reconciler_backing_off(rack, Duration::from_millis(1))
}

/// A reconciler whose retries after a failure wait at least `backoff`.
fn reconciler_backing_off(rack: AwsRack, backoff: Duration) -> (Reconciler, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("params.yaml"), "ECSExec: \"Yes\"\n").expect("params");
    let status = StatusHandle::new(Status::default());
    let mut settings = common::aws_settings(dir.path(), ServiceTarget::rack_api());
    settings.backoff_min = backoff;
    settings.backoff_max = backoff * 2;
    let rec = Reconciler::new(Arc::new(rack), settings, Metrics::new(), status);
    (rec, dir)
}

fn converged_monitor() -> (Vec<Dep>, Vec<String>) {
    (vec![done(td("monitor", 2))], vec![td("monitor", 2)])
}

#[tokio::test]
async fn in_progress_with_two_deployments_then_completed() {
    let (monitor, monitor_tasks) = converged_monitor();
    let rolling = Scenario {
        web: vec![
            Dep {
                primary: true,
                td: td("web", 2),
                state: DeploymentRolloutState::InProgress,
                reason: "ECS deployment ecs-svc/0 in progress.",
                running: 1,
                age: Duration::from_secs(60),
            },
            Dep {
                primary: false,
                ..done(td("web", 1))
            },
        ],
        monitor,
        web_tasks: vec![td("web", 2), td("web", 1)],
        monitor_tasks,
        web_stopped: Vec::new(),
    };
    let m = mocked(rolling);
    // The adapter maps the deployments as ECS reports them.
    let services = m
        .rack
        .describe_services(CLUSTER, &[WEB_ARN.into(), MON_ARN.into()])
        .await
        .expect("describe");
    assert_eq!(services[0].deployments.len(), 2);
    assert_eq!(
        services[0].primary().and_then(|d| d.rollout_state),
        Some(RolloutState::InProgress)
    );
    // ... and the tasks, running and stopped, as ListTasks and DescribeTasks report them.
    let read = |service: &str| TaskRead {
        service: service.into(),
        running: true,
        stopped: true,
    };
    let tasks = m
        .rack
        .service_tasks(CLUSTER, &[read("convox-web"), read("convox-monitor")])
        .await
        .expect("tasks");
    assert_eq!(tasks[0].running.len(), 2);
    assert_eq!(tasks[1].running[0].task_definition, td("monitor", 2));
    assert!(tasks[0].stopped.is_empty());

    let scenario = m.scenario.clone();
    let (updates, registers) = (m.updates.clone(), m.registers.clone());
    let (mut rec, _dir) = reconciler(m.rack);
    let r = rec.reconcile(Trigger::Startup).await;
    assert_eq!(r.phases.get("ECSExec"), Some(&Phase::Progressing));
    assert!(!r.acted);

    // The old deployment drained but a task still runs the old revision: not yet.
    scenario.lock().expect("scenario").web = vec![done(td("web", 2))];
    let r = rec.reconcile(Trigger::Timer).await;
    assert_eq!(r.phases.get("ECSExec"), Some(&Phase::Progressing));

    scenario.lock().expect("scenario").web_tasks = vec![td("web", 2), td("web", 2)];
    let r = rec.reconcile(Trigger::Timer).await;
    assert_eq!(r.phases.get("ECSExec"), Some(&Phase::Converged));
    assert_eq!((updates.num_calls(), registers.num_calls()), (0, 0));
}

#[tokio::test]
async fn a_failing_rollout_without_a_circuit_breaker_is_undone_with_the_stopped_reason() {
    let (monitor, monitor_tasks) = converged_monitor();
    let m = mocked(Scenario {
        web: vec![done(td("web", 1))],
        monitor,
        web_tasks: vec![td("web", 1), td("web", 1)],
        monitor_tasks,
        web_stopped: Vec::new(),
    });
    let (scenario, rolled, registers) = (m.scenario.clone(), m.rolled.clone(), m.registers.clone());
    let (mut rec, _dir) = reconciler_backing_off(m.rack, Duration::from_secs(3600));
    let r = rec.reconcile(Trigger::Startup).await;
    assert!(r.acted);
    assert_eq!(*rolled.lock().expect("rolled"), vec![td("web", 2)]);

    // ECS keeps launching revision 2 and the load balancer keeps failing its health checks;
    // the deployment stays IN_PROGRESS (nothing fails it) while one old task still serves.
    let reason = format!("Task failed ELB health checks in (target-group {TARGET_GROUP})");
    {
        let mut sc = scenario.lock().expect("scenario");
        sc.web = vec![
            Dep {
                primary: true,
                td: td("web", 2),
                state: DeploymentRolloutState::InProgress,
                reason: "ECS deployment ecs-svc/0 in progress.",
                running: 0,
                age: Duration::from_secs(90),
            },
            Dep {
                primary: false,
                running: 1,
                ..done(td("web", 1))
            },
        ];
        sc.web_tasks = vec![td("web", 1)];
        sc.web_stopped = vec![(td("web", 2), reason.clone()); 2];
    }
    let r = rec.reconcile(Trigger::Timer).await;
    assert_eq!(
        r.phases.get("ECSExec"),
        Some(&Phase::Progressing),
        "2 failures: under the threshold"
    );
    scenario.lock().expect("scenario").web_stopped = vec![(td("web", 2), reason.clone()); 3];
    let r = rec.reconcile(Trigger::Timer).await;
    assert_eq!(r.phases.get("ECSExec"), Some(&Phase::Failed));
    assert!(r.acted, "the undo is a write");
    assert_eq!(
        *rolled.lock().expect("rolled"),
        vec![td("web", 2), td("web", 1)],
        "pointed back at the revision it ran before"
    );
    let p = common::param(&rec, "ECSExec");
    assert_eq!(p.reason, "RolloutFailed");
    assert!(
        p.message.contains("Task failed ELB health checks"),
        "{}",
        p.message
    );

    // Rolling back: reported, followed fast, nothing more written.
    {
        let mut sc = scenario.lock().expect("scenario");
        sc.web = vec![
            Dep {
                primary: true,
                td: td("web", 1),
                state: DeploymentRolloutState::InProgress,
                reason: "ECS deployment ecs-svc/1 in progress.",
                running: 1,
                age: Duration::from_secs(5),
            },
            Dep {
                primary: false,
                running: 0,
                state: DeploymentRolloutState::InProgress,
                ..done(td("web", 2))
            },
        ];
    }
    let r = rec.reconcile(Trigger::Timer).await;
    let p = common::param(&rec, "ECSExec");
    assert_eq!(
        (r.phases.get("ECSExec"), p.reason.as_str()),
        (Some(&Phase::Failed), "RollingBack")
    );
    assert_eq!(
        r.next,
        rack_reconciler::plan::reads::END_WITHIN,
        "a rollback is followed closely enough to see its end within 2 s"
    );
    assert!(!r.acted);

    // Back on revision 1, all tasks running: the next attempt waits for the backoff.
    {
        let mut sc = scenario.lock().expect("scenario");
        sc.web = vec![done(td("web", 1))];
        sc.web_tasks = vec![td("web", 1), td("web", 1)];
        sc.web_stopped.clear();
    }
    let r = rec.reconcile(Trigger::Timer).await;
    let p = common::param(&rec, "ECSExec");
    assert_eq!(
        (r.phases.get("ECSExec"), p.reason.as_str()),
        (Some(&Phase::Failed), "BackingOff")
    );
    assert!(
        p.message.contains("Task failed ELB health checks"),
        "{}",
        p.message
    );
    assert!(!r.acted);
    assert_eq!(
        (rolled.lock().expect("rolled").len(), registers.num_calls()),
        (2, 1)
    );
    let text = rec.metrics().render();
    assert!(
        text.contains("rack_reconciler_rollout_failures_total{service=\"ServiceWebApi\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn failed_after_a_circuit_breaker_rollback() {
    let (monitor, monitor_tasks) = converged_monitor();
    let m = mocked(Scenario {
        web: vec![
            Dep {
                primary: true,
                td: td("web", 1),
                state: DeploymentRolloutState::InProgress,
                reason: "ECS deployment circuit breaker: rolling back to deploymentId ecs-svc/9.",
                running: 2,
                age: Duration::from_secs(30),
            },
            Dep {
                primary: false,
                td: td("web", 2),
                state: DeploymentRolloutState::Failed,
                reason: "ECS deployment circuit breaker: tasks failed to start.",
                running: 0,
                age: Duration::from_secs(600),
            },
        ],
        monitor,
        web_tasks: vec![td("web", 1), td("web", 1)],
        monitor_tasks,
        web_stopped: Vec::new(),
    });
    let updates = m.updates.clone();
    let (mut rec, _dir) = reconciler(m.rack);
    let r = rec.reconcile(Trigger::Startup).await;
    assert_eq!(r.phases.get("ECSExec"), Some(&Phase::Failed));
    let p = common::param(&rec, "ECSExec");
    assert_eq!(p.reason, "RolloutFailed");
    assert!(p.message.contains("tasks failed to start"), "{}", p.message);
    assert_eq!(updates.num_calls(), 0);
    let text = rec.metrics().render();
    assert!(
        text.contains("rack_reconciler_rollout_failed{service=\"ServiceWebApi\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn a_rollout_stuck_past_its_timeout_is_failed() {
    let (monitor, monitor_tasks) = converged_monitor();
    let m = mocked(Scenario {
        web: vec![
            Dep {
                primary: true,
                td: td("web", 2),
                state: DeploymentRolloutState::InProgress,
                reason: "ECS deployment ecs-svc/0 in progress.",
                running: 0,
                age: Duration::from_secs(2 * 3600),
            },
            Dep {
                primary: false,
                ..done(td("web", 1))
            },
        ],
        monitor,
        web_tasks: vec![td("web", 1), td("web", 1)],
        monitor_tasks,
        web_stopped: Vec::new(),
    });
    let (mut rec, _dir) = reconciler(m.rack);
    let r = rec.reconcile(Trigger::Startup).await;
    assert_eq!(r.phases.get("ECSExec"), Some(&Phase::Failed));
    let p = common::param(&rec, "ECSExec");
    assert_eq!(p.reason, "RolloutTimedOut");
}

/// The web service on revision 1, converged; monitor converged on Yes.
fn web_on_revision_one() -> Scenario {
    let (monitor, monitor_tasks) = converged_monitor();
    Scenario {
        web: vec![done(td("web", 1))],
        monitor,
        web_tasks: vec![td("web", 1), td("web", 1)],
        monitor_tasks,
        web_stopped: Vec::new(),
    }
}

#[tokio::test]
async fn a_registered_copy_that_differs_is_blocked_and_never_registered_again() {
    let m = mocked_with(
        web_on_revision_one(),
        Faults {
            mismatch: true,
            ..Faults::default()
        },
    );
    let (registers, updates) = (m.registers.clone(), m.updates.clone());
    let (mut rec, _dir) = reconciler(m.rack);
    for trigger in [
        Trigger::Startup,
        Trigger::Timer,
        Trigger::Timer,
        Trigger::Timer,
    ] {
        let r = rec.reconcile(trigger).await;
        assert_eq!(r.phases.get("ECSExec"), Some(&Phase::Blocked));
    }
    let p = common::param(&rec, "ECSExec");
    assert_eq!(p.reason, "RevisionMismatch");
    assert!(
        p.message.contains("containerDefinitions[0].image"),
        "{}",
        p.message
    );
    assert!(
        !p.message.contains("tampered"),
        "values are never shown: {}",
        p.message
    );
    assert_eq!((registers.num_calls(), updates.num_calls()), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn a_throttled_register_is_sent_again_and_a_revision_not_yet_visible_is_waited_for() {
    let faults = Faults {
        throttle_register: 2,
        unseen_describes: 2,
        ..Faults::default()
    };
    let m = mocked_with(web_on_revision_one(), faults);
    let (registers, rolled) = (m.registers.clone(), m.rolled.clone());
    let (throttled, unseen) = (m.throttled.clone(), m.unseen.clone());
    let (mut rec, _dir) = reconciler(m.rack);
    let r = rec.reconcile(Trigger::Startup).await;
    assert!(r.acted);
    assert_eq!((throttled.num_calls(), unseen.num_calls()), (2, 2));
    assert_eq!(
        r.phases.get("ECSExec"),
        Some(&Phase::Progressing),
        "{:?}",
        common::param(&rec, "ECSExec").message
    );
    assert_eq!(registers.num_calls(), 1, "one revision registered");
    assert_eq!(*rolled.lock().expect("rolled"), vec![td("web", 2)]);
}
