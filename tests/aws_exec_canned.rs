//! Exec readiness on the facts moto does not model, from canned answers: ECS tasks with and
//! without `enableExecuteCommand`, the `ExecuteCommandAgent` `RUNNING` / `STOPPED`, Fargate
//! platform versions, EC2 agent versions, a cluster whose exec sessions use a KMS key, and AWS
//! keys in a task's overrides (canned SDK responses); `iam:SimulatePrincipalPolicy` (moto does
//! not implement it) and the EC2 reads, from a stand-in for the Query APIs on loopback whose
//! answers each case sets: endpoints, routes, public IPs, denied calls, a deleted role.

use crate::common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use aws_sdk_cloudformation::operation::describe_stacks::DescribeStacksOutput;
use aws_sdk_cloudformation::types::{Output, Parameter, Stack, StackStatus, Tag};
use aws_sdk_ecs::error::ErrorMetadata;
use aws_sdk_ecs::operation::describe_clusters::{DescribeClustersError, DescribeClustersOutput};
use aws_sdk_ecs::operation::describe_container_instances::DescribeContainerInstancesOutput;
use aws_sdk_ecs::operation::describe_services::DescribeServicesOutput;
use aws_sdk_ecs::operation::describe_task_definition::DescribeTaskDefinitionOutput;
use aws_sdk_ecs::operation::describe_tasks::DescribeTasksOutput;
use aws_sdk_ecs::operation::list_tasks::ListTasksOutput;
use aws_sdk_ecs::types::{
    Attachment, Cluster, ClusterConfiguration, Container, ContainerDefinition, ContainerInstance,
    ContainerOverride, ExecuteCommandConfiguration, KeyValuePair, LaunchType, ManagedAgent,
    ManagedAgentName, Service, Task, TaskDefinition, TaskOverride, VersionInfo,
};
use aws_smithy_mocks::{mock, mock_client, RuleMode};
use rack_reconciler::config::Timeouts;
use rack_reconciler::exec::discover::{Discovery, Readiness};
use rack_reconciler::exec::ExecPath;
use rack_reconciler::metrics::Metrics;
use rack_reconciler::rack::aws_exec::AwsExec;
use rack_reconciler::rack::query::QueryClient;

const CLUSTER: &str = "arn:aws:ecs:us-east-1:123456789012:cluster/convox-Cluster-1ABC";
const SERVICE: &str =
    "arn:aws:ecs:us-east-1:123456789012:service/convox-Cluster-1ABC/convox-shop-ServiceWeb-1XYZ";
const GOOD_ROLE: &str = "arn:aws:iam::123456789012:role/convox/convox-shop-ServiceRole-1";
const BARE_ROLE: &str = "arn:aws:iam::123456789012:role/convox/convox-shop-WorkerRole-2";
const BOUNDED_ROLE: &str = "arn:aws:iam::123456789012:role/convox/convox-shop-CronRole-3";
const KEY: &str = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab";
const SECRET_VALUE: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

/// One canned task: id, launch (platform for Fargate, else container instance), exec
/// enabled, agent status and reason, task definition, last status, AWS keys in its overrides.
struct T {
    id: &'static str,
    platform: Option<&'static str>,
    instance: Option<&'static str>,
    exec: bool,
    agent: Option<(&'static str, Option<&'static str>)>,
    td: &'static str,
    status: &'static str,
    keys: bool,
    /// The task role given when the task was started.
    role: Option<&'static str>,
}

const fn fargate(
    id: &'static str,
    platform: &'static str,
    exec: bool,
    agent: Option<(&'static str, Option<&'static str>)>,
) -> T {
    T {
        id,
        platform: Some(platform),
        instance: None,
        exec,
        agent,
        td: "web:1",
        status: "RUNNING",
        keys: false,
        role: None,
    }
}

const fn ec2(id: &'static str, instance: &'static str, td: &'static str) -> T {
    T {
        id,
        platform: None,
        instance: Some(instance),
        exec: true,
        agent: RUNNING,
        td,
        status: "RUNNING",
        keys: false,
        role: None,
    }
}

const RUNNING: Option<(&str, Option<&str>)> = Some(("RUNNING", None));

const TASKS: &[T] = &[
    fargate("ready", "1.4.0", true, RUNNING),
    fargate("before", "1.4.0", false, None),
    fargate(
        "stopped-agent",
        "1.4.0",
        true,
        Some(("STOPPED", Some("InternalError: TLS handshake timeout"))),
    ),
    fargate("old-platform", "1.3.0", true, None),
    ec2("old-agent", "ci-old", "web:1"),
    ec2("on-ec2", "ci-new", "web:1"),
    ec2("bare-role", "ci-new", "web:2"),
    ec2("bounded-role", "ci-new", "web:3"),
    ec2("lost-instance", "ci-gone", "web:1"),
    T {
        keys: true,
        ..fargate("keys", "1.4.0", true, RUNNING)
    },
    T {
        role: Some(BARE_ROLE),
        ..fargate("overridden", "1.4.0", true, RUNNING)
    },
    T {
        status: "PENDING",
        ..fargate("starting", "1.4.0", true, Some(("PENDING", None)))
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
    let mut task = Task::builder()
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
        .containers(container.build());
    if t.platform.is_some() {
        let detail = |k: &str, v: &str| KeyValuePair::builder().name(k).value(v).build();
        task = task.attachments(
            Attachment::builder()
                .r#type("ElasticNetworkInterface")
                .details(detail("subnetId", "subnet-a"))
                .details(detail("networkInterfaceId", &format!("eni-{}", t.id)))
                .build(),
        );
    }
    if t.keys {
        task = task.overrides(
            TaskOverride::builder()
                .container_overrides(
                    ContainerOverride::builder()
                        .name("web")
                        .environment(
                            KeyValuePair::builder()
                                .name("AWS_SECRET_ACCESS_KEY")
                                .value(SECRET_VALUE)
                                .build(),
                        )
                        .build(),
                )
                .build(),
        );
    }
    if let Some(role) = t.role {
        task = task.overrides(TaskOverride::builder().task_role_arn(role).build());
    }
    task.build()
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
                .outputs(output("Private", "Yes"))
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

/// What the Query stand-in answers.
#[derive(Clone)]
struct Answers {
    /// Interface endpoints (service suffixes) with private DNS, behind a group admitting the VPC.
    endpoints: Vec<&'static str>,
    /// The subnet's default route (`igw-…`, `nat-…`), if any.
    default_route: Option<&'static str>,
    public_ips: bool,
    ec2_denied: bool,
    iam_denied: bool,
    role_deleted: bool,
    /// The good role may use the KMS key.
    kms_allowed: bool,
    /// The NAT gateway of the default route is private.
    nat_private: bool,
    /// The simulation of the good role lacks a condition's context value.
    missing_context: bool,
}

impl Default for Answers {
    fn default() -> Self {
        Answers {
            endpoints: vec!["ssm", "ssmmessages", "kms"],
            default_route: None,
            public_ips: false,
            ec2_denied: false,
            iam_denied: false,
            role_deleted: false,
            kms_allowed: true,
            nat_private: false,
            missing_context: false,
        }
    }
}

fn error(code: &str, status: u16) -> axum::response::Response {
    let body = format!("<ErrorResponse><Error><Code>{code}</Code><Message>{code} (canned)</Message></Error><RequestId>1</RequestId></ErrorResponse>");
    axum::response::Response::builder()
        .status(status)
        .body(body.into())
        .expect("response")
}

fn ok(body: String) -> axum::response::Response {
    axum::response::Response::new(body.into())
}

fn simulate(body: &str, a: &Answers) -> axum::response::Response {
    if a.iam_denied {
        return error("AccessDenied", 403);
    }
    if a.role_deleted {
        return error("NoSuchEntity", 404);
    }
    let role = |r: &str| body.contains(&r.replace(':', "%3A").replace('/', "%2F"));
    let kms = body.contains("kms%3ADecrypt");
    let actions: Vec<String> = body
        .split('&')
        .filter(|p| p.starts_with("ActionNames.member."))
        .filter_map(|p| p.split_once('=').map(|(_, v)| v.replace("%3A", ":")))
        .collect();
    let results: String = actions
        .iter()
        .map(|action| {
            let (decision, boundary) = if role(GOOD_ROLE) {
                (if kms && !a.kms_allowed { "implicitDeny" } else { "allowed" }, "true")
            } else if role(BOUNDED_ROLE) {
                ("implicitDeny", "false")
            } else if action.ends_with("OpenDataChannel") {
                ("implicitDeny", "true")
            } else {
                ("allowed", "true")
            };
            let context = if a.missing_context && role(GOOD_ROLE) {
                "<MissingContextValues><member>aws:SourceVpc</member></MissingContextValues>"
            } else {
                "<MissingContextValues/>"
            };
            format!("<member><EvalActionName>{action}</EvalActionName><EvalResourceName>*</EvalResourceName><EvalDecision>{decision}</EvalDecision><MatchedStatements/>{context}<PermissionsBoundaryDecisionDetail><AllowedByPermissionsBoundary>{boundary}</AllowedByPermissionsBoundary></PermissionsBoundaryDecisionDetail></member>")
        })
        .collect();
    ok(format!("<SimulatePrincipalPolicyResponse xmlns=\"https://iam.amazonaws.com/doc/2010-05-08/\"><SimulatePrincipalPolicyResult><IsTruncated>false</IsTruncated><EvaluationResults>{results}</EvaluationResults></SimulatePrincipalPolicyResult><ResponseMetadata><RequestId>1</RequestId></ResponseMetadata></SimulatePrincipalPolicyResponse>"))
}

fn place(id: &str, public: bool, groups: &str) -> String {
    let ip = if public {
        "<ipAddress>54.1.2.3</ipAddress><association><publicIp>54.1.2.3</publicIp></association>"
    } else {
        ""
    };
    format!("<subnetId>subnet-a</subnetId><vpcId>vpc-1</vpcId><privateIpAddress>10.0.1.{}</privateIpAddress>{ip}<groupSet><item><groupId>{groups}</groupId></item></groupSet>", id.len())
}

fn ec2_answer(action: &str, a: &Answers) -> axum::response::Response {
    if a.ec2_denied {
        return error("UnauthorizedOperation", 403);
    }
    let xml = match action {
        "DescribeInstances" => format!(
            "<reservationSet><item><instancesSet><item><instanceId>i-new</instanceId>{}</item></instancesSet></item></reservationSet>",
            place("i-new", a.public_ips, "sg-instances")
        ),
        "DescribeNetworkInterfaces" => {
            let items: String = TASKS
                .iter()
                .filter(|t| t.platform.is_some())
                .map(|t| format!("<item><networkInterfaceId>eni-{}</networkInterfaceId>{}</item>", t.id, place(t.id, a.public_ips, "sg-tasks")))
                .collect();
            format!("<networkInterfaceSet>{items}</networkInterfaceSet>")
        }
        "DescribeRouteTables" => {
            let route = match a.default_route {
                Some(t) if t.starts_with("nat-") => format!("<item><destinationCidrBlock>0.0.0.0/0</destinationCidrBlock><natGatewayId>{t}</natGatewayId><state>active</state></item>"),
                Some(t) => format!("<item><destinationCidrBlock>0.0.0.0/0</destinationCidrBlock><gatewayId>{t}</gatewayId><state>active</state></item>"),
                None => String::new(),
            };
            format!("<routeTableSet><item><routeTableId>rtb-1</routeTableId><vpcId>vpc-1</vpcId><routeSet><item><destinationCidrBlock>10.0.0.0/16</destinationCidrBlock><gatewayId>local</gatewayId><state>active</state></item>{route}</routeSet><associationSet><item><main>true</main></item></associationSet></item></routeTableSet>")
        }
        "DescribeVpcEndpoints" => {
            let items: String = a
                .endpoints
                .iter()
                .map(|e| format!("<item><vpcEndpointId>vpce-{e}</vpcEndpointId><vpcId>vpc-1</vpcId><serviceName>com.amazonaws.us-east-1.{e}</serviceName><vpcEndpointType>Interface</vpcEndpointType><state>available</state><privateDnsEnabled>true</privateDnsEnabled><groupSet><item><groupId>sg-endpoints</groupId></item></groupSet></item>"))
                .collect();
            format!("<vpcEndpointSet>{items}</vpcEndpointSet>")
        }
        "DescribeNatGateways" => {
            let kind = if a.nat_private { "private" } else { "public" };
            format!("<natGatewaySet><item><natGatewayId>nat-1</natGatewayId><connectivityType>{kind}</connectivityType><state>available</state></item></natGatewaySet>")
        }
        "DescribeSecurityGroups" => "<securityGroupInfo><item><groupId>sg-endpoints</groupId><ipPermissions><item><ipProtocol>tcp</ipProtocol><fromPort>443</fromPort><toPort>443</toPort><ipRanges><item><cidrIp>10.0.0.0/16</cidrIp></item></ipRanges><groups/></item></ipPermissions></item></securityGroupInfo>".to_string(),
        other => panic!("unexpected EC2 call {other}"),
    };
    ok(format!("<{action}Response xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>1</requestId>{xml}</{action}Response>"))
}

/// The stand-in for IAM and EC2 on loopback.
async fn query_apis(answers: Arc<Mutex<Answers>>) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let app = axum::Router::new().route(
        "/",
        axum::routing::post(move |body: String| {
            let a = answers.lock().expect("answers").clone();
            async move {
                let action = body
                    .split('&')
                    .find_map(|p| p.strip_prefix("Action="))
                    .unwrap_or_default()
                    .to_string();
                match action.as_str() {
                    "SimulatePrincipalPolicy" => simulate(&body, &a),
                    "ListRolePolicies" | "GetRole" | "ListAttachedRolePolicies" => {
                        error("AccessDenied", 403)
                    }
                    other => ec2_answer(other, &a),
                }
            }
        }),
    );
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.expect("serve");
    });
    (url, server)
}

fn ecs(cluster_denied: bool) -> aws_sdk_ecs::Client {
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
    let clusters = if cluster_denied {
        mock!(aws_sdk_ecs::Client::describe_clusters).then_error(|| {
            DescribeClustersError::generic(
                ErrorMetadata::builder()
                    .code("AccessDeniedException")
                    .message("not authorized to perform ecs:DescribeClusters")
                    .build(),
            )
        })
    } else {
        mock!(aws_sdk_ecs::Client::describe_clusters)
            .match_requests(|r| r.include().iter().any(|i| i.as_str() == "CONFIGURATIONS"))
            .then_output(|| {
                let exec = ExecuteCommandConfiguration::builder()
                    .kms_key_id(KEY)
                    .build();
                DescribeClustersOutput::builder()
                    .clusters(
                        Cluster::builder()
                            .cluster_arn(CLUSTER)
                            .configuration(
                                ClusterConfiguration::builder()
                                    .execute_command_configuration(exec)
                                    .build(),
                            )
                            .build(),
                    )
                    .build()
            })
    };
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
                        .filter(|arn| !arn.ends_with("ci-gone"))
                        .map(|arn| {
                            ContainerInstance::builder()
                                .container_instance_arn(arn)
                                .ec2_instance_id("i-new")
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
            let td = req.task_definition().unwrap_or_default();
            let role = if td.ends_with("web:2") {
                BARE_ROLE
            } else if td.ends_with("web:3") {
                BOUNDED_ROLE
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
    mock_client!(
        aws_sdk_ecs,
        RuleMode::MatchAny,
        &[
            &services,
            &list,
            &describe,
            &clusters,
            &instances,
            &definitions
        ]
    )
}

async fn look(url: &str, metrics: &Metrics, cluster_denied: bool) -> Readiness {
    let cfn_stacks = mock!(aws_sdk_cloudformation::Client::describe_stacks).then_output(stacks);
    let cfn = mock_client!(aws_sdk_cloudformation, RuleMode::MatchAny, &[&cfn_stacks]);
    let sdk = common::moto::sdk_config_for(url, "testing", "testing").await;
    let query = QueryClient::new(&sdk, &Timeouts::default(), metrics.clone()).expect("client");
    let exec = AwsExec::new(cfn, ecs(cluster_denied), query, metrics.clone());
    Discovery::default()
        .run(&exec, "convox", None, SystemTime::now())
        .await
        .expect("look")
}

/// Task id → (path, reason, detail).
fn verdicts(r: &Readiness) -> BTreeMap<String, (ExecPath, String, String)> {
    r.verdicts
        .iter()
        .map(|v| (v.task.clone(), (v.path, v.reason.clone(), v.detail.clone())))
        .collect()
}

#[tokio::test]
async fn every_check_from_canned_answers() {
    let answers = Arc::new(Mutex::new(Answers::default()));
    let (url, server) = query_apis(answers.clone()).await;
    let metrics = Metrics::new();
    let r = look(&url, &metrics, false).await;
    let got = verdicts(&r);
    use ExecPath::{EcsExec, Fails, Unknown};
    let want: &[(&str, ExecPath, &str)] = &[
        ("ready", EcsExec, "none"),
        ("on-ec2", EcsExec, "none"),
        ("before", Fails, "started_before_enable"),
        ("stopped-agent", Fails, "agent_not_running"),
        ("old-platform", Fails, "platform_too_old"),
        ("old-agent", Fails, "agent_too_old"),
        ("bare-role", Fails, "task_role_lacks_ssmmessages"),
        ("bounded-role", Fails, "boundary_blocks_ssmmessages"),
        ("lost-instance", Unknown, "unknown_agent_version"),
        ("keys", Fails, "credentials_in_environment"),
        ("overridden", Fails, "task_role_lacks_ssmmessages"),
    ];
    for (task, path, reason) in want {
        let (p, r, d) = &got[*task];
        assert_eq!((p, r.as_str()), (path, *reason), "{task}: {d}");
    }
    assert_eq!(got.len(), want.len(), "a task still starting is not judged");
    assert!(got["stopped-agent"]
        .2
        .contains("STOPPED: InternalError: TLS handshake timeout"));
    assert!(got["old-agent"].2.contains("1.49.0"));
    assert!(
        got["before"].2.contains("no Docker daemon"),
        "{:?}",
        got["before"]
    );
    assert_eq!(got["keys"].2, "container(s) web");
    assert!(
        got["ready"].2.contains("ssm via endpoint vpce-ssm"),
        "{:?}",
        got["ready"]
    );
    assert!(
        got["ready"].2.contains("kms via endpoint vpce-kms"),
        "{:?}",
        got["ready"]
    );
    let shown = format!("{:?}", r.verdicts);
    assert!(!shown.contains(SECRET_VALUE), "a key's value is never kept");
    // Each role once per need: ssmmessages for 3 roles, kms:Decrypt for the 2 allowed them.
    assert!(metrics.render().contains(r#"rack_reconciler_aws_api_calls_total{operation="SimulatePrincipalPolicy",outcome="success",service="iam"} 6"#), "{}", metrics.render());

    // Without the ssm endpoint and no default route: no route, naming ssm.
    answers.lock().expect("answers").endpoints = vec!["ssmmessages", "kms"];
    let got = verdicts(&look(&url, &Metrics::new(), false).await);
    assert_eq!(got["ready"].1, "no_route_to_ssm");
    assert!(got["ready"].2.starts_with("ssm: route table rtb-1 of subnet subnet-a has no default route, and the VPC has no com.amazonaws.us-east-1.ssm interface endpoint"), "{}", got["ready"].2);

    // A public rack is read as well: an internet gateway needs a public IP.
    *answers.lock().expect("answers") = Answers {
        endpoints: vec![],
        default_route: Some("igw-1"),
        ..Answers::default()
    };
    let got = verdicts(&look(&url, &Metrics::new(), false).await);
    assert_eq!(got["ready"].1, "no_route_to_ssm");
    assert!(
        got["ready"].2.contains("no public IP"),
        "{}",
        got["ready"].2
    );
    answers.lock().expect("answers").public_ips = true;
    let got = verdicts(&look(&url, &Metrics::new(), false).await);
    assert_eq!(got["ready"].1, "none", "{:?}", got["ready"]);
    assert_eq!(got["on-ec2"].1, "none", "{:?}", got["on-ec2"]);

    // A NAT gateway: public, then private (which does not reach the internet).
    *answers.lock().expect("answers") = Answers {
        endpoints: vec![],
        default_route: Some("nat-1"),
        ..Answers::default()
    };
    let got = verdicts(&look(&url, &Metrics::new(), false).await);
    assert_eq!(got["ready"].1, "none", "{:?}", got["ready"]);
    answers.lock().expect("answers").nat_private = true;
    let got = verdicts(&look(&url, &Metrics::new(), false).await);
    assert_eq!(
        (got["ready"].0, got["ready"].1.as_str()),
        (ExecPath::Unknown, "unknown_route")
    );
    assert!(
        got["ready"].2.contains("private or not available"),
        "{}",
        got["ready"].2
    );

    // A simulation that lacks a condition's context decides nothing.
    *answers.lock().expect("answers") = Answers {
        missing_context: true,
        ..Answers::default()
    };
    let got = verdicts(&look(&url, &Metrics::new(), false).await);
    assert_eq!(got["ready"].1, "unknown_role_permissions");
    assert!(
        got["ready"].2.contains("aws:SourceVpc"),
        "{}",
        got["ready"].2
    );

    // The key not allowed to the role.
    *answers.lock().expect("answers") = Answers {
        endpoints: vec![],
        default_route: Some("igw-1"),
        public_ips: true,
        ..Answers::default()
    };
    answers.lock().expect("answers").kms_allowed = false;
    let got = verdicts(&look(&url, &Metrics::new(), false).await);
    assert_eq!(got["ready"].1, "task_role_lacks_kms_decrypt");
    server.abort();
}

#[tokio::test]
async fn what_cannot_be_read_is_unknown_and_the_rest_is_still_judged() {
    let answers = Arc::new(Mutex::new(Answers {
        ec2_denied: true,
        ..Answers::default()
    }));
    let (url, server) = query_apis(answers.clone()).await;
    let got = verdicts(&look(&url, &Metrics::new(), false).await);
    assert_eq!(
        (got["ready"].0, got["ready"].1.as_str()),
        (ExecPath::Unknown, "unknown_route")
    );
    assert!(
        got["ready"]
            .2
            .contains("ec2:DescribeNetworkInterfaces failed"),
        "{}",
        got["ready"].2
    );
    assert!(
        got["ready"].2.contains("UnauthorizedOperation"),
        "{}",
        got["ready"].2
    );
    assert_eq!(got["on-ec2"].1, "unknown_route");
    assert!(
        got["on-ec2"].2.contains("ec2:DescribeInstances failed"),
        "{}",
        got["on-ec2"].2
    );
    // A proven failure is still reported as one.
    assert_eq!(got["old-agent"].1, "agent_too_old");

    // IAM denied: the simulation and the policy reads.
    *answers.lock().expect("answers") = Answers {
        iam_denied: true,
        ..Answers::default()
    };
    let metrics = Metrics::new();
    let got = verdicts(&look(&url, &metrics, false).await);
    assert_eq!(
        (got["ready"].0, got["ready"].1.as_str()),
        (ExecPath::Unknown, "unknown_role_permissions")
    );
    assert!(got["ready"].2.contains("iam:"), "{}", got["ready"].2);
    assert!(got["ready"].2.contains("is denied"), "{}", got["ready"].2);

    // A role deleted while its tasks run.
    *answers.lock().expect("answers") = Answers {
        role_deleted: true,
        ..Answers::default()
    };
    let got = verdicts(&look(&url, &Metrics::new(), false).await);
    assert_eq!(got["ready"].1, "task_role_lacks_ssmmessages");
    assert!(
        got["ready"].2.contains("no longer exists"),
        "{}",
        got["ready"].2
    );

    // The cluster's exec configuration cannot be read.
    *answers.lock().expect("answers") = Answers::default();
    let got = verdicts(&look(&url, &Metrics::new(), true).await);
    assert_eq!(
        (got["ready"].0, got["ready"].1.as_str()),
        (ExecPath::Unknown, "unknown_exec_configuration")
    );
    assert!(
        got["ready"].2.contains("ecs:DescribeClusters failed"),
        "{}",
        got["ready"].2
    );
    server.abort();
}
