//! Exec readiness on the facts moto does not model, from canned answers: ECS tasks with and
//! without `enableExecuteCommand`, the `ExecuteCommandAgent` `RUNNING` / `STOPPED`, Fargate
//! platform versions and EC2 agent versions (canned SDK responses), and
//! `iam:SimulatePrincipalPolicy` (moto does not implement it: a canned IAM answer from a
//! local server on loopback).

use crate::common;

use std::collections::BTreeMap;
use std::time::SystemTime;

use aws_sdk_cloudformation::operation::describe_stacks::DescribeStacksOutput;
use aws_sdk_cloudformation::types::{Output, Parameter, Stack, StackStatus, Tag};
use aws_sdk_ecs::operation::describe_container_instances::DescribeContainerInstancesOutput;
use aws_sdk_ecs::operation::describe_services::DescribeServicesOutput;
use aws_sdk_ecs::operation::describe_task_definition::DescribeTaskDefinitionOutput;
use aws_sdk_ecs::operation::describe_tasks::DescribeTasksOutput;
use aws_sdk_ecs::operation::list_tasks::ListTasksOutput;
use aws_sdk_ecs::types::{
    Container, ContainerDefinition, ContainerInstance, LaunchType, ManagedAgent, ManagedAgentName,
    Service, Task, TaskDefinition, VersionInfo,
};
use aws_smithy_mocks::{mock, mock_client, RuleMode};
use rack_reconciler::config::Timeouts;
use rack_reconciler::exec::discover::Discovery;
use rack_reconciler::metrics::Metrics;
use rack_reconciler::rack::aws_exec::AwsExec;
use rack_reconciler::rack::query::QueryClient;

const CLUSTER: &str = "arn:aws:ecs:us-east-1:123456789012:cluster/convox-Cluster-1ABC";
const SERVICE: &str =
    "arn:aws:ecs:us-east-1:123456789012:service/convox-Cluster-1ABC/convox-shop-ServiceWeb-1XYZ";
const GOOD_ROLE: &str = "arn:aws:iam::123456789012:role/convox/convox-shop-ServiceRole-1";
const BARE_ROLE: &str = "arn:aws:iam::123456789012:role/convox/convox-shop-WorkerRole-2";

/// One canned task: id, launch (platform for Fargate, else container instance), exec
/// enabled, agent status and reason, task definition, last status.
struct T {
    id: &'static str,
    platform: Option<&'static str>,
    instance: Option<&'static str>,
    exec: bool,
    agent: Option<(&'static str, Option<&'static str>)>,
    td: &'static str,
    status: &'static str,
}

const TASKS: &[T] = &[
    T {
        id: "ready",
        platform: Some("1.4.0"),
        instance: None,
        exec: true,
        agent: Some(("RUNNING", None)),
        td: "web:1",
        status: "RUNNING",
    },
    T {
        id: "before",
        platform: Some("1.4.0"),
        instance: None,
        exec: false,
        agent: None,
        td: "web:1",
        status: "RUNNING",
    },
    T {
        id: "stopped-agent",
        platform: Some("1.4.0"),
        instance: None,
        exec: true,
        agent: Some(("STOPPED", Some("InternalError: TLS handshake timeout"))),
        td: "web:1",
        status: "RUNNING",
    },
    T {
        id: "old-platform",
        platform: Some("1.3.0"),
        instance: None,
        exec: true,
        agent: None,
        td: "web:1",
        status: "RUNNING",
    },
    T {
        id: "old-agent",
        platform: None,
        instance: Some("ci-old"),
        exec: true,
        agent: Some(("RUNNING", None)),
        td: "web:1",
        status: "RUNNING",
    },
    T {
        id: "bare-role",
        platform: None,
        instance: Some("ci-new"),
        exec: true,
        agent: Some(("RUNNING", None)),
        td: "web:2",
        status: "RUNNING",
    },
    T {
        id: "starting",
        platform: Some("1.4.0"),
        instance: None,
        exec: true,
        agent: Some(("PENDING", None)),
        td: "web:1",
        status: "PENDING",
    },
];

fn task_arn(id: &str) -> String {
    format!("arn:aws:ecs:us-east-1:123456789012:task/convox-Cluster-1ABC/{id}")
}

fn canned_task(t: &T) -> Task {
    let mut container = Container::builder().name("web");
    if let Some((status, reason)) = t.agent {
        container = container.managed_agents(
            ManagedAgent::builder()
                .name(ManagedAgentName::ExecuteCommandAgent)
                .last_status(status)
                .set_reason(reason.map(str::to_string))
                .build(),
        );
    }
    Task::builder()
        .task_arn(task_arn(t.id))
        .group("service:convox-shop-ServiceWeb-1XYZ")
        .started_by("ecs-svc/123")
        .task_definition_arn(format!(
            "arn:aws:ecs:us-east-1:123456789012:task-definition/convox-shop-{}",
            t.td
        ))
        .last_status(t.status)
        .enable_execute_command(t.exec)
        .launch_type(if t.platform.is_some() {
            LaunchType::Fargate
        } else {
            LaunchType::Ec2
        })
        .set_platform_version(t.platform.map(str::to_string))
        .set_container_instance_arn(t.instance.map(|i| {
            format!("arn:aws:ecs:us-east-1:123456789012:container-instance/convox-Cluster-1ABC/{i}")
        }))
        .containers(container.build())
        .build()
}

fn stacks() -> DescribeStacksOutput {
    let tag = |k: &str, v: &str| Tag::builder().key(k).value(v).build();
    let param = |k: &str, v: &str| {
        Parameter::builder()
            .parameter_key(k)
            .parameter_value(v)
            .build()
    };
    let output = |k: &str, v: &str| Output::builder().output_key(k).output_value(v).build();
    DescribeStacksOutput::builder()
        .stacks(
            Stack::builder()
                .stack_name("convox")
                .stack_status(StackStatus::UpdateComplete)
                .parameters(param("ECSExec", "Yes"))
                .outputs(output("Cluster", CLUSTER))
                .outputs(output("Private", "No"))
                .build(),
        )
        .stacks(
            Stack::builder()
                .stack_name("convox-shop")
                .stack_status(StackStatus::UpdateComplete)
                .tags(tag("System", "convox"))
                .tags(tag("Rack", "convox"))
                .tags(tag("Type", "app"))
                .tags(tag("Generation", "2"))
                .tags(tag("Name", "shop"))
                .outputs(output("ServiceWebService", SERVICE))
                .build(),
        )
        .build()
}

/// A stand-in for IAM on loopback: `SimulatePrincipalPolicy` allows the four actions to the
/// good role and denies `OpenDataChannel` to the other.
async fn iam() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let app = axum::Router::new().route(
        "/",
        axum::routing::post(|body: String| async move {
            assert!(body.contains("Action=SimulatePrincipalPolicy"), "{body}");
            let good = body.contains("convox-shop-ServiceRole-1");
            let results: String = rack_reconciler::exec::SSMMESSAGES_ACTIONS
                .iter()
                .map(|a| {
                    let d = if good || !a.ends_with("OpenDataChannel") { "allowed" } else { "implicitDeny" };
                    format!("<member><EvalActionName>{a}</EvalActionName><EvalResourceName>*</EvalResourceName><EvalDecision>{d}</EvalDecision></member>")
                })
                .collect();
            format!("<SimulatePrincipalPolicyResponse xmlns=\"https://iam.amazonaws.com/doc/2010-05-08/\"><SimulatePrincipalPolicyResult><IsTruncated>false</IsTruncated><EvaluationResults>{results}</EvaluationResults></SimulatePrincipalPolicyResult><ResponseMetadata><RequestId>1</RequestId></ResponseMetadata></SimulatePrincipalPolicyResponse>")
        }),
    );
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.expect("serve");
    });
    (url, server)
}

#[tokio::test]
async fn agents_platforms_exec_flags_and_the_simulated_role_decide_each_task() {
    let (url, server) = iam().await;
    let cfn_stacks = mock!(aws_sdk_cloudformation::Client::describe_stacks).then_output(stacks);
    let cfn = mock_client!(aws_sdk_cloudformation, [&cfn_stacks]);
    let services = mock!(aws_sdk_ecs::Client::describe_services).then_output(|| {
        DescribeServicesOutput::builder()
            .services(
                Service::builder()
                    .service_arn(SERVICE)
                    .service_name("convox-shop-ServiceWeb-1XYZ")
                    .enable_execute_command(true)
                    .build(),
            )
            .build()
    });
    let list = mock!(aws_sdk_ecs::Client::list_tasks).then_output(|| {
        ListTasksOutput::builder()
            .set_task_arns(Some(TASKS.iter().map(|t| task_arn(t.id)).collect()))
            .build()
    });
    let describe = mock!(aws_sdk_ecs::Client::describe_tasks).then_output(|| {
        DescribeTasksOutput::builder()
            .set_tasks(Some(TASKS.iter().map(canned_task).collect()))
            .build()
    });
    let instances =
        mock!(aws_sdk_ecs::Client::describe_container_instances).then_compute_output(|req| {
            let version = |arn: &str| {
                if arn.ends_with("ci-old") {
                    "1.49.0"
                } else {
                    "1.70.0"
                }
            };
            DescribeContainerInstancesOutput::builder()
                .set_container_instances(Some(
                    req.container_instances()
                        .iter()
                        .map(|arn| {
                            ContainerInstance::builder()
                                .container_instance_arn(arn)
                                .version_info(
                                    VersionInfo::builder().agent_version(version(arn)).build(),
                                )
                                .build()
                        })
                        .collect(),
                ))
                .build()
        });
    let definitions =
        mock!(aws_sdk_ecs::Client::describe_task_definition).then_compute_output(|req| {
            let role = if req.task_definition().is_some_and(|t| t.ends_with("web:2")) {
                BARE_ROLE
            } else {
                GOOD_ROLE
            };
            DescribeTaskDefinitionOutput::builder()
                .task_definition(
                    TaskDefinition::builder()
                        .task_role_arn(role)
                        .container_definitions(ContainerDefinition::builder().name("web").build())
                        .build(),
                )
                .build()
        });
    let ecs = mock_client!(
        aws_sdk_ecs,
        RuleMode::MatchAny,
        &[&services, &list, &describe, &instances, &definitions]
    );
    let sdk = common::moto::sdk_config_for(&url, "testing", "testing").await;
    let metrics = Metrics::new();
    let query = QueryClient::new(&sdk, &Timeouts::default(), metrics.clone()).expect("client");
    let exec = AwsExec::new(cfn, ecs, query, metrics.clone());

    let r = Discovery::default()
        .run(&exec, "convox", None, SystemTime::now())
        .await
        .expect("look");
    let got: BTreeMap<String, (String, String)> = r
        .verdicts
        .iter()
        .map(|v| (v.task.clone(), (v.reason.clone(), v.detail.clone())))
        .collect();
    let reason = |id: &str| got.get(id).map(|(r, _)| r.as_str());
    assert_eq!(reason("ready"), Some("none"));
    assert_eq!(reason("before"), Some("started_before_enable"));
    assert_eq!(reason("stopped-agent"), Some("agent_not_running"));
    assert!(
        got["stopped-agent"]
            .1
            .contains("STOPPED: InternalError: TLS handshake timeout"),
        "{:?}",
        got["stopped-agent"]
    );
    assert_eq!(reason("old-platform"), Some("platform_too_old"));
    assert_eq!(reason("old-agent"), Some("agent_too_old"));
    assert!(got["old-agent"].1.contains("1.49.0"));
    assert_eq!(reason("bare-role"), Some("task_role_lacks_ssmmessages"));
    assert_eq!(
        reason("starting"),
        None,
        "a task still starting is not judged"
    );
    assert_eq!(got.len(), 6);
    assert!(got["before"].1.contains("predates"), "{:?}", got["before"]);
    // Each role is simulated once for the look.
    assert!(metrics.render().contains(r#"rack_reconciler_aws_api_calls_total{operation="SimulatePrincipalPolicy",outcome="success",service="iam"} 2"#), "{}", metrics.render());
    server.abort();
}
