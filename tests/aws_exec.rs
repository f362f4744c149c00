//! Exec readiness against moto over HTTP: a rack stack, app stacks of both generations (and of
//! another rack), their ECS services and tasks (service tasks, a `convox run` task, a build),
//! a private VPC with and without a NAT route and the `ssmmessages` endpoint, and task roles
//! with and without the `ssmmessages` actions (inline and attached). The controller signs as
//! an IAM user that may not call `iam:SimulatePrincipalPolicy` (moto checks signatures and
//! policies once its first three calls are made), so the roles' own policies are read.
//!
//! moto leaves out what ECS Exec adds to tasks (`enableExecuteCommand`, managed agents), so
//! every Generation 2 task here is `started_before_enable` unless an earlier reason applies;
//! the later reasons are covered with canned SDK answers (`tests/aws_exec_canned.rs`) and on
//! the simulated rack.

use crate::common;

use std::time::SystemTime;

use aws_sdk_cloudformation::types::Tag;
use common::moto::Moto;
use rack_reconciler::config::Timeouts;
use rack_reconciler::exec::discover::{rack_route, Discovery};
use rack_reconciler::exec::source::ExecSource;
use rack_reconciler::exec::watch::ExecWatch;
use std::collections::BTreeMap;

use rack_reconciler::exec::network::{Endpoint, RouteTable, SecurityGroup, TaskNetwork};
use rack_reconciler::exec::permissions::{Access, ExecConfig, Grant, SSMMESSAGES_ACTIONS};
use rack_reconciler::exec::source::{
    InstanceFacts, ServiceFacts, StackPage, TaskDefinitionFacts, TaskInfo,
};
use rack_reconciler::exec::{ExecPath, Fact, Route};
use rack_reconciler::metrics::Metrics;
use rack_reconciler::rack::aws_exec::AwsExec;
use rack_reconciler::rack::aws_exec::POLICIES_READ;
use rack_reconciler::rack::query::{QueryClient, EC2, IAM};
use rack_reconciler::rack::RackError;
use rack_reconciler::status::{Status, StatusHandle};

const CLUSTER: &str = "convox-Cluster-1ABCDEF";

async fn call(
    q: &QueryClient,
    api: &rack_reconciler::rack::query::Api,
    action: &'static str,
    params: &[(&str, &str)],
) -> String {
    let params: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    q.call(api, action, "test set-up", &params)
        .await
        .unwrap_or_else(|e| panic!("{action}: {e}"))
}

fn first(xml: &str, tag: &str) -> String {
    let doc = roxmltree::Document::parse(xml).expect("xml");
    doc.descendants()
        .find(|n| n.has_tag_name(tag))
        .and_then(|n| n.text())
        .unwrap_or_else(|| panic!("no {tag} in {xml}"))
        .to_string()
}

const TRUST: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ecs-tasks.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;

async fn role(q: &QueryClient, name: &str) -> String {
    let xml = call(
        q,
        &IAM,
        "CreateRole",
        &[
            ("RoleName", name),
            ("Path", "/convox/"),
            ("AssumeRolePolicyDocument", TRUST),
        ],
    )
    .await;
    first(&xml, "Arn")
}

fn policy(actions: &str) -> String {
    format!(
        r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Action":{actions},"Resource":"*"}}]}}"#
    )
}

/// The controller's identity: everything but `iam:SimulatePrincipalPolicy`. These are the
/// three calls moto makes without checking.
async fn controller_identity(moto: &Moto) -> aws_config::SdkConfig {
    let root = QueryClient::new(
        &moto.sdk_config(&moto.endpoint).await,
        &Timeouts::default(),
        Metrics::new(),
    )
    .expect("client");
    call(
        &root,
        &IAM,
        "CreateUser",
        &[("UserName", "rack-reconciler")],
    )
    .await;
    let doc = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"},{"Effect":"Deny","Action":"iam:SimulatePrincipalPolicy","Resource":"*"}]}"#;
    call(
        &root,
        &IAM,
        "PutUserPolicy",
        &[
            ("UserName", "rack-reconciler"),
            ("PolicyName", "no-simulate"),
            ("PolicyDocument", doc),
        ],
    )
    .await;
    let key = call(
        &root,
        &IAM,
        "CreateAccessKey",
        &[("UserName", "rack-reconciler")],
    )
    .await;
    moto.sdk_config_as(
        &moto.endpoint,
        &first(&key, "AccessKeyId"),
        &first(&key, "SecretAccessKey"),
    )
    .await
}

struct Vpc {
    id: String,
    subnet: String,
    nat: String,
    tables: [String; 2],
}

/// A VPC with two private route tables; the first has a default route to a NAT gateway.
async fn vpc(q: &QueryClient) -> Vpc {
    let id = first(
        &call(q, &EC2, "CreateVpc", &[("CidrBlock", "10.0.0.0/16")]).await,
        "vpcId",
    );
    let subnet = first(
        &call(
            q,
            &EC2,
            "CreateSubnet",
            &[("VpcId", &id), ("CidrBlock", "10.0.1.0/24")],
        )
        .await,
        "subnetId",
    );
    let eip = first(
        &call(q, &EC2, "AllocateAddress", &[("Domain", "vpc")]).await,
        "allocationId",
    );
    let nat = first(
        &call(
            q,
            &EC2,
            "CreateNatGateway",
            &[("SubnetId", &subnet), ("AllocationId", &eip)],
        )
        .await,
        "natGatewayId",
    );
    let a = first(
        &call(q, &EC2, "CreateRouteTable", &[("VpcId", &id)]).await,
        "routeTableId",
    );
    let b = first(
        &call(q, &EC2, "CreateRouteTable", &[("VpcId", &id)]).await,
        "routeTableId",
    );
    call(
        q,
        &EC2,
        "CreateRoute",
        &[
            ("RouteTableId", &a),
            ("DestinationCidrBlock", "0.0.0.0/0"),
            ("NatGatewayId", &nat),
        ],
    )
    .await;
    Vpc {
        id,
        subnet,
        nat,
        tables: [a, b],
    }
}

/// An interface endpoint for `service` with private DNS in the VPC's subnet, in `group`.
async fn endpoint(q: &QueryClient, net: &Vpc, service: &str, group: Option<&str>) {
    let name = format!("com.amazonaws.us-east-1.{service}");
    let mut params = vec![
        ("VpcId", net.id.as_str()),
        ("ServiceName", name.as_str()),
        ("VpcEndpointType", "Interface"),
        ("SubnetId.1", net.subnet.as_str()),
        ("PrivateDnsEnabled", "true"),
    ];
    params.extend(group.map(|g| ("SecurityGroupId.1", g)));
    call(q, &EC2, "CreateVpcEndpoint", &params).await;
}

fn tags(pairs: &[(&str, &str)]) -> Vec<Tag> {
    pairs
        .iter()
        .map(|(k, v)| Tag::builder().key(*k).value(*v).build())
        .collect()
}

/// A stack with these outputs (and parameters), holding one placeholder resource.
fn template(params: &[(&str, &str)], outputs: &[(&str, &str)]) -> String {
    let p: serde_json::Map<String, serde_json::Value> = params
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                serde_json::json!({"Type": "String", "Default": v}),
            )
        })
        .collect();
    let o: serde_json::Map<String, serde_json::Value> = outputs
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::json!({"Value": v})))
        .collect();
    serde_json::json!({
        "Parameters": p,
        "Resources": {"Placeholder": {"Type": "AWS::CloudFormation::WaitConditionHandle"}},
        "Outputs": o,
    })
    .to_string()
}

async fn stack(cfn: &aws_sdk_cloudformation::Client, name: &str, body: String, t: &[(&str, &str)]) {
    cfn.create_stack()
        .stack_name(name)
        .template_body(body)
        .set_tags(Some(tags(t)))
        .send()
        .await
        .unwrap_or_else(|e| panic!("create stack {name}: {e:?}"));
}

async fn task_definition(
    ecs: &aws_sdk_ecs::Client,
    family: &str,
    role: Option<&str>,
    readonly: bool,
) -> String {
    let c = aws_sdk_ecs::types::ContainerDefinition::builder()
        .name("main")
        .image("busybox")
        .memory(128)
        .readonly_root_filesystem(readonly)
        .build();
    let out = ecs
        .register_task_definition()
        .family(family)
        .set_task_role_arn(role.map(str::to_string))
        .container_definitions(c)
        .send()
        .await
        .expect("register");
    out.task_definition()
        .and_then(|t| t.task_definition_arn())
        .expect("arn")
        .to_string()
}

async fn service(ecs: &aws_sdk_ecs::Client, name: &str, td: &str) -> String {
    let out = ecs
        .create_service()
        .cluster(CLUSTER)
        .service_name(name)
        .task_definition(td)
        .desired_count(1)
        .send()
        .await
        .expect("service");
    out.service()
        .and_then(|s| s.service_arn())
        .expect("arn")
        .to_string()
}

async fn run_task(
    ecs: &aws_sdk_ecs::Client,
    td: &str,
    group: Option<&str>,
    started_by: Option<&str>,
    platform: &str,
    count: i32,
) {
    ecs.run_task()
        .cluster(CLUSTER)
        .task_definition(td)
        .launch_type(aws_sdk_ecs::types::LaunchType::Fargate)
        .platform_version(platform)
        .set_group(group.map(str::to_string))
        .set_started_by(started_by.map(str::to_string))
        .count(count)
        .send()
        .await
        .expect("run task");
}

fn app_tags<'a>(
    rack: &'a str,
    name: &'a str,
    generation: Option<&'a str>,
) -> Vec<(&'a str, &'a str)> {
    let mut t = vec![
        ("System", "convox"),
        ("Rack", rack),
        ("Type", "app"),
        ("Name", name),
    ];
    if let Some(g) = generation {
        t.push(("Generation", g));
    }
    t
}

/// moto checking signatures and policies once its first three calls are made, whose tasks
/// stay running (it walks a task one state further at every describe), and the controller's
/// identity.
async fn moto_with_running_tasks() -> (Moto, aws_config::SdkConfig) {
    let moto = Moto::start_with(&[("INITIAL_NO_AUTH_ACTION_COUNT", "3")]).await;
    reqwest::Client::new()
        .post(format!("{}/moto-api/state-manager/set-transition", moto.endpoint))
        .body(r#"{"model_name": "ecs::task", "transition": {"progression": "manual", "times": 1000000}}"#)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .expect("moto state manager");
    let sdk = controller_identity(&moto).await;
    (moto, sdk)
}

fn ssmmessages() -> Access {
    Access {
        actions: SSMMESSAGES_ACTIONS.iter().map(|a| a.to_string()).collect(),
        resource: "*".into(),
    }
}

#[tokio::test]
async fn apps_services_tasks_roles_and_the_route_read_from_aws() {
    let (_moto, sdk) = moto_with_running_tasks().await;
    let metrics = Metrics::new();
    let q = QueryClient::new(&sdk, &Timeouts::default(), metrics.clone()).expect("client");
    let cfn = aws_sdk_cloudformation::Client::new(&sdk);
    let ecs = aws_sdk_ecs::Client::new(&sdk);

    let net = vpc(&q).await;
    let shop_role = role(&q, "convox-shop-ServiceRole-1A").await;
    call(
        &q,
        &IAM,
        "PutRolePolicy",
        &[
            ("RoleName", "convox-shop-ServiceRole-1A"),
            ("PolicyName", "exec"),
            ("PolicyDocument", &policy(r#""ssmmessages:*""#)),
        ],
    )
    .await;
    let files_role = role(&q, "convox-files-ServiceRole-1B").await;
    let managed = call(
        &q,
        &IAM,
        "CreatePolicy",
        &[
            ("PolicyName", "convox-exec"),
            (
                "PolicyDocument",
                &policy(r#"["ssmmessages:Create*","ssmmessages:Open*"]"#),
            ),
        ],
    )
    .await;
    call(
        &q,
        &IAM,
        "AttachRolePolicy",
        &[
            ("RoleName", "convox-files-ServiceRole-1B"),
            ("PolicyArn", &first(&managed, "Arn")),
        ],
    )
    .await;
    let billing_role = role(&q, "convox-billing-ServiceRole-1C").await;
    call(
        &q,
        &IAM,
        "PutRolePolicy",
        &[
            ("RoleName", "convox-billing-ServiceRole-1C"),
            ("PolicyName", "env"),
            ("PolicyDocument", &policy(r#""s3:GetObject""#)),
        ],
    )
    .await;

    ecs.create_cluster()
        .cluster_name(CLUSTER)
        .send()
        .await
        .expect("cluster");
    let shop_td = task_definition(&ecs, "convox-shop-web", Some(&shop_role), false).await;
    let files_td = task_definition(&ecs, "convox-files-web", Some(&files_role), true).await;
    let billing_td = task_definition(&ecs, "convox-billing-api", Some(&billing_role), false).await;
    let legacy_td = task_definition(&ecs, "convox-legacy-web", None, false).await;
    let build_td = task_definition(&ecs, "convox-build", None, false).await;
    let shop = service(&ecs, "convox-shop-ServiceWeb-1AAA", &shop_td).await;
    let files = service(&ecs, "convox-files-ServiceWeb-1BBB", &files_td).await;
    let billing = service(&ecs, "convox-billing-ServiceApi-1CCC", &billing_td).await;
    // A service no app stack lists: its tasks are nobody's app.
    service(&ecs, "convox-legacy-web-1DDD", &legacy_td).await;
    let other = service(&ecs, "other-shop-ServiceWeb-1EEE", &shop_td).await;
    run_task(
        &ecs,
        &shop_td,
        Some("service:convox-shop-ServiceWeb-1AAA"),
        None,
        "1.4.0",
        2,
    )
    .await;
    run_task(&ecs, &shop_td, None, Some("convox.shop"), "1.4.0", 1).await;
    run_task(&ecs, &build_td, None, Some("convox.shop"), "1.4.0", 1).await;
    run_task(
        &ecs,
        &files_td,
        Some("service:convox-files-ServiceWeb-1BBB"),
        None,
        "1.4.0",
        1,
    )
    .await;
    run_task(
        &ecs,
        &billing_td,
        Some("service:convox-billing-ServiceApi-1CCC"),
        None,
        "1.3.0",
        1,
    )
    .await;
    run_task(
        &ecs,
        &legacy_td,
        Some("service:convox-legacy-web-1DDD"),
        None,
        "1.4.0",
        2,
    )
    .await;
    run_task(
        &ecs,
        &shop_td,
        Some("service:other-shop-ServiceWeb-1EEE"),
        None,
        "1.4.0",
        1,
    )
    .await;

    let tables = net.tables.join(",");
    stack(
        &cfn,
        "convox",
        template(
            &[
                ("ECSExec", "Yes"),
                ("EnableContainerReadonlyRootFilesystem", "No"),
            ],
            &[
                ("Cluster", CLUSTER),
                ("Private", "Yes"),
                ("Vpc", &net.id),
                ("RouteTablesPrivate", &tables),
            ],
        ),
        &[("System", "convox"), ("Type", "rack")],
    )
    .await;
    stack(
        &cfn,
        "convox-shop",
        template(&[], &[("ServiceWebService", &shop)]),
        &app_tags("convox", "shop", Some("2")),
    )
    .await;
    stack(
        &cfn,
        "convox-files",
        template(&[], &[("ServiceWebService", &files)]),
        &app_tags("convox", "files", Some("2")),
    )
    .await;
    stack(
        &cfn,
        "convox-billing",
        template(&[], &[("ServiceApiService", &billing)]),
        &app_tags("convox", "billing", Some("2")),
    )
    .await;
    // Generation 1: no Generation tag and no service outputs; its service is a resource.
    let gen1 = serde_json::json!({
        "Resources": {
            "ServiceWeb": {"Type": "AWS::ECS::Service", "Properties": {"Cluster": CLUSTER, "ServiceName": "convox-legacy-web-2DDD", "TaskDefinition": legacy_td, "DesiredCount": 0}}
        }
    });
    stack(
        &cfn,
        "convox-legacy",
        gen1.to_string(),
        &app_tags("convox", "legacy", None),
    )
    .await;
    stack(
        &cfn,
        "other-shop",
        template(&[], &[("ServiceWebService", &other)]),
        &app_tags("other", "shop", Some("2")),
    )
    .await;
    let legacy_arns = ExecSource::stack_services(
        &AwsExec::new(cfn.clone(), ecs.clone(), q.clone(), Metrics::new()),
        "convox-legacy",
    )
    .await
    .expect("resources");
    assert_eq!(legacy_arns.len(), 1, "{legacy_arns:?}");
    assert!(
        legacy_arns[0].starts_with("arn:aws:ecs:"),
        "the physical id is the ARN: {legacy_arns:?}"
    );
    // The Generation 1 app's tasks run in the service its stack declares.
    let legacy_name = legacy_arns[0].rsplit('/').next().expect("name").to_string();
    run_task(
        &ecs,
        &legacy_td,
        Some(&format!("service:{legacy_name}")),
        None,
        "1.4.0",
        2,
    )
    .await;

    let exec = AwsExec::new(cfn.clone(), ecs.clone(), q.clone(), metrics.clone());
    let r = Discovery::default()
        .run(&exec, "convox", None, SystemTime::now())
        .await
        .expect("look");
    let mut seen: Vec<(String, String, String)> = r
        .verdicts
        .iter()
        .map(|v| (v.app.clone(), v.service.clone(), v.reason.clone()))
        .collect();
    seen.dedup();
    // moto's tasks are Fargate and never started with ECS Exec (moto does not model it), so
    // each is a fallback case with no Docker daemon to fall back to.
    let want: Vec<(String, String, String)> = [
        ("billing", "api", "service_without_exec"),
        ("files", "web", "service_without_exec"),
        ("legacy", legacy_name.as_str(), "gen1"),
        ("shop", "run", "started_before_enable"),
        ("shop", "web", "service_without_exec"),
    ]
    .iter()
    .map(|(a, s, r)| (a.to_string(), s.to_string(), r.to_string()))
    .collect();
    assert_eq!(seen, want);
    assert!(r.verdicts.iter().all(|v| v.path == ExecPath::Fails));
    assert_eq!(
        r.verdicts.len(),
        7,
        "2 shop, 1 run (not the build), 1 files, 1 billing, 2 legacy"
    );
    assert_eq!(
        r.apps.len(),
        4,
        "the other rack's app is not this rack's: {:?}",
        r.apps
    );
    assert_eq!(r.apps["legacy"].generation, 1);

    // Task roles: the simulation is denied, so the roles' own policies decide.
    let ssm = ssmmessages();
    assert_eq!(
        exec.role_grant(&shop_role, &ssm).await,
        Ok(Fact::Known(Grant::Allowed))
    );
    assert_eq!(
        exec.role_grant(&files_role, &ssm).await,
        Ok(Fact::Known(Grant::Allowed))
    );
    assert!(matches!(
        exec.role_grant(&billing_role, &ssm).await,
        Ok(Fact::Known(Grant::Denied(_)))
    ));
    assert_eq!(exec.notes(), vec![POLICIES_READ.to_string()]);
    let text = metrics.render();
    assert!(
        text.contains(r#"rack_reconciler_aws_api_calls_total{operation="SimulatePrincipalPolicy",outcome="access_denied",service="iam"} 1"#),
        "simulated once, then the policies are read:\n{text}"
    );
    for op in [
        "GetRole",
        "ListRolePolicies",
        "GetRolePolicy",
        "ListAttachedRolePolicies",
        "GetPolicy",
        "GetPolicyVersion",
    ] {
        assert!(
            text.contains(&format!(
                r#"operation="{op}",outcome="success",service="iam""#
            )),
            "{op}:\n{text}"
        );
    }

    // The rack-wide route: a NAT route in every private table; else both endpoints.
    call(
        &q,
        &EC2,
        "CreateRoute",
        &[
            ("RouteTableId", &net.tables[1]),
            ("DestinationCidrBlock", "0.0.0.0/0"),
            ("NatGatewayId", &net.nat),
        ],
    )
    .await;
    let outputs = |tables: &str| {
        [
            ("Private", "Yes"),
            ("Vpc", net.id.as_str()),
            ("RouteTablesPrivate", tables),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    };
    assert_eq!(
        rack_route(Some(&exec), &outputs(&tables)).await,
        Route::Reachable {
            via: "NAT gateway".into()
        }
    );
    call(
        &q,
        &EC2,
        "DeleteRoute",
        &[
            ("RouteTableId", &net.tables[1]),
            ("DestinationCidrBlock", "0.0.0.0/0"),
        ],
    )
    .await;
    endpoint(&q, &net, "ssmmessages", None).await;
    assert_eq!(
        rack_route(Some(&exec), &outputs(&tables)).await,
        Route::None {
            missing: vec!["com.amazonaws.us-east-1.ssm".into()]
        },
        "the ssmmessages endpoint alone is not enough"
    );
    endpoint(&q, &net, "ssm", None).await;
    assert_eq!(
        rack_route(Some(&exec), &outputs(&tables)).await,
        Route::Reachable {
            via: "VPC endpoints".into()
        }
    );

    // The metric, as the running controller exports it.
    let status = StatusHandle::new(Status::default());
    let mut watch = ExecWatch::new(
        std::sync::Arc::new(exec),
        "convox",
        std::time::Duration::from_secs(300),
        std::time::Duration::from_secs(60),
        metrics.clone(),
        status.clone(),
    );
    watch.look().await.expect("look");
    let text = metrics.render();
    for line in [
        r#"rack_reconciler_exec_tasks{app="files",path="fails",reason="service_without_exec"} 1"#,
        r#"rack_reconciler_exec_tasks{app="legacy",path="fails",reason="gen1"} 2"#,
        r#"rack_reconciler_exec_tasks{app="shop",path="fails",reason="service_without_exec"} 2"#,
        r#"rack_reconciler_exec_tasks{app="shop",path="fails",reason="started_before_enable"} 1"#,
    ] {
        assert!(text.contains(line), "{line}:\n{text}");
    }
    let exec_status = status.get().exec.expect("exec");
    assert_eq!(
        (exec_status.tasks, exec_status.count(ExecPath::Fails)),
        (7, 7)
    );
}

/// moto does not model ECS Exec on tasks, and reports ECS agent 1.0.0 for every instance:
/// this source answers as AWS does for tasks started with ECS Exec (`enableExecuteCommand`, a
/// running `ExecuteCommandAgent`) on a current agent, and passes every other read, and every
/// other fact, from the AWS adapter unchanged.
struct WithEcsExec(AwsExec);

#[async_trait::async_trait]
impl ExecSource for WithEcsExec {
    async fn stacks(&self, next: Option<String>) -> Result<StackPage, RackError> {
        self.0.stacks(next).await
    }
    async fn stack_services(&self, stack: &str) -> Result<Vec<String>, RackError> {
        self.0.stack_services(stack).await
    }
    async fn services(&self, c: &str, arns: &[String]) -> Result<Vec<ServiceFacts>, RackError> {
        self.0.services(c, arns).await
    }
    async fn list_tasks(
        &self,
        c: &str,
        next: Option<String>,
    ) -> Result<(Vec<String>, Option<String>), RackError> {
        self.0.list_tasks(c, next).await
    }
    async fn tasks(&self, c: &str, arns: &[String]) -> Result<Vec<TaskInfo>, RackError> {
        let mut tasks = self.0.tasks(c, arns).await?;
        for t in &mut tasks {
            t.exec_enabled = true;
            t.exec_agent = Some(("RUNNING".into(), None));
        }
        Ok(tasks)
    }
    async fn container_instances(
        &self,
        c: &str,
        arns: &[String],
    ) -> Result<BTreeMap<String, InstanceFacts>, RackError> {
        let mut found = self.0.container_instances(c, arns).await?;
        for i in found.values_mut() {
            assert_eq!(
                i.agent_version.as_deref(),
                Some("1.0.0"),
                "moto's fixed agent"
            );
            i.agent_version = Some("1.70.0".into());
        }
        Ok(found)
    }
    async fn exec_config(&self, c: &str) -> Result<ExecConfig, RackError> {
        self.0.exec_config(c).await
    }
    async fn task_definition(&self, arn: &str) -> Result<TaskDefinitionFacts, RackError> {
        self.0.task_definition(arn).await
    }
    async fn role_grant(&self, role: &str, access: &Access) -> Result<Fact<Grant>, RackError> {
        self.0.role_grant(role, access).await
    }
    async fn instance_networks(
        &self,
        ids: &[String],
    ) -> Result<BTreeMap<String, TaskNetwork>, RackError> {
        self.0.instance_networks(ids).await
    }
    async fn interface_networks(
        &self,
        ids: &[String],
    ) -> Result<BTreeMap<String, TaskNetwork>, RackError> {
        self.0.interface_networks(ids).await
    }
    async fn route_tables(&self, vpcs: &[String]) -> Result<Vec<RouteTable>, RackError> {
        self.0.route_tables(vpcs).await
    }
    async fn endpoints(&self, vpcs: &[String]) -> Result<Vec<Endpoint>, RackError> {
        self.0.endpoints(vpcs).await
    }
    async fn security_groups(&self, ids: &[String]) -> Result<Vec<SecurityGroup>, RackError> {
        self.0.security_groups(ids).await
    }
    fn region(&self) -> String {
        self.0.region()
    }
    fn notes(&self) -> Vec<String> {
        self.0.notes()
    }
}

/// One look with a fresh discovery: the one task's path, reason and detail.
async fn verdict(src: &WithEcsExec) -> (ExecPath, String, String) {
    let r = Discovery::default()
        .run(src, "convox", None, SystemTime::now())
        .await
        .expect("look");
    assert_eq!(r.verdicts.len(), 1, "{:?}", r.verdicts);
    let v = r.verdicts[0].clone();
    (v.path, v.reason, v.detail)
}

/// A user that may do everything but the calls in `denied`.
async fn identity_without(
    moto: &Moto,
    q: &QueryClient,
    name: &str,
    denied: &str,
) -> aws_config::SdkConfig {
    call(q, &IAM, "CreateUser", &[("UserName", name)]).await;
    let doc = format!(
        r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Action":"*","Resource":"*"}},{{"Effect":"Deny","Action":{denied},"Resource":"*"}}]}}"#
    );
    call(
        q,
        &IAM,
        "PutUserPolicy",
        &[
            ("UserName", name),
            ("PolicyName", "deny"),
            ("PolicyDocument", &doc),
        ],
    )
    .await;
    let key = call(q, &IAM, "CreateAccessKey", &[("UserName", name)]).await;
    moto.sdk_config_as(
        &moto.endpoint,
        &first(&key, "AccessKeyId"),
        &first(&key, "SecretAccessKey"),
    )
    .await
}

/// An EC2 task of app `shop` on an instance in a private subnet with no default route: its
/// route read from its instance, the subnet's route table, the endpoints and their security
/// group; the cluster's exec configuration; the role's policies and boundary; and what a
/// controller denied EC2 or IAM reads makes of it.
#[tokio::test]
async fn a_task_is_judged_on_its_own_route_role_and_cluster() {
    let (moto, sdk) = moto_with_running_tasks().await;
    let q = QueryClient::new(&sdk, &Timeouts::default(), Metrics::new()).expect("client");
    let cfn = aws_sdk_cloudformation::Client::new(&sdk);
    let ecs = aws_sdk_ecs::Client::new(&sdk);
    let net = vpc(&q).await;
    // The task's subnet has its own table, without a default route.
    let bare = first(
        &call(&q, &EC2, "CreateRouteTable", &[("VpcId", &net.id)]).await,
        "routeTableId",
    );
    call(
        &q,
        &EC2,
        "AssociateRouteTable",
        &[("RouteTableId", &bare), ("SubnetId", &net.subnet)],
    )
    .await;
    let group = |name: &'static str| {
        let q = q.clone();
        let vpc = net.id.clone();
        async move {
            let xml = call(
                &q,
                &EC2,
                "CreateSecurityGroup",
                &[
                    ("GroupName", name),
                    ("GroupDescription", name),
                    ("VpcId", &vpc),
                ],
            )
            .await;
            first(&xml, "groupId")
        }
    };
    let tasks_sg = group("tasks").await;
    let endpoints_sg = group("endpoints").await;
    let role = role(&q, "convox-shop-ServiceRole-9").await;
    call(
        &q,
        &IAM,
        "PutRolePolicy",
        &[
            ("RoleName", "convox-shop-ServiceRole-9"),
            ("PolicyName", "exec"),
            ("PolicyDocument", &policy(r#""ssmmessages:*""#)),
        ],
    )
    .await;
    ecs.create_cluster()
        .cluster_name(CLUSTER)
        .send()
        .await
        .expect("cluster");
    // An instance in the private subnet, in the tasks' group, registered with the cluster.
    let instance = first(
        &call(
            &q,
            &EC2,
            "RunInstances",
            &[
                ("ImageId", "ami-12c6146b"),
                ("MinCount", "1"),
                ("MaxCount", "1"),
                ("SubnetId", &net.subnet),
                ("SecurityGroupId.1", &tasks_sg),
            ],
        )
        .await,
        "instanceId",
    );
    ecs.register_container_instance()
        .cluster(CLUSTER)
        .instance_identity_document(format!(r#"{{"instanceId": "{instance}"}}"#))
        .send()
        .await
        .expect("container instance");
    let td = task_definition(&ecs, "convox-shop-web", Some(&role), false).await;
    let shop = service(&ecs, "convox-shop-ServiceWeb-9AAA", &td).await;
    ecs.run_task()
        .cluster(CLUSTER)
        .task_definition(&td)
        .launch_type(aws_sdk_ecs::types::LaunchType::Ec2)
        .group("service:convox-shop-ServiceWeb-9AAA")
        .send()
        .await
        .expect("run task");
    stack(
        &cfn,
        "convox",
        template(
            &[("ECSExec", "Yes")],
            &[("Cluster", CLUSTER), ("Private", "Yes"), ("Vpc", &net.id)],
        ),
        &[("System", "convox"), ("Type", "rack")],
    )
    .await;
    stack(
        &cfn,
        "convox-shop",
        template(&[], &[("ServiceWebService", &shop)]),
        &app_tags("convox", "shop", Some("2")),
    )
    .await;
    let source = |sdk: &aws_config::SdkConfig| {
        let q = QueryClient::new(sdk, &Timeouts::default(), Metrics::new()).expect("client");
        WithEcsExec(AwsExec::new(
            aws_sdk_cloudformation::Client::new(sdk),
            aws_sdk_ecs::Client::new(sdk),
            q,
            Metrics::new(),
        ))
    };
    let controller = source(&sdk);

    // No default route and no endpoint.
    let (path, reason, detail) = verdict(&controller).await;
    assert_eq!(
        (path, reason.as_str()),
        (ExecPath::Fails, "no_route_to_ssm"),
        "{detail}"
    );
    assert!(
        detail.contains(&format!("route table {bare} of subnet {}", net.subnet)),
        "{detail}"
    );

    // Both endpoints, but their group admits nobody: still no route.
    endpoint(&q, &net, "ssm", Some(&endpoints_sg)).await;
    endpoint(&q, &net, "ssmmessages", Some(&endpoints_sg)).await;
    let (_, reason, detail) = verdict(&controller).await;
    assert_eq!(reason, "no_route_to_ssm", "{detail}");
    assert!(detail.contains("do not admit the task"), "{detail}");
    // The group admits the tasks' group on 443: ECS Exec, proven.
    call(
        &q,
        &EC2,
        "AuthorizeSecurityGroupIngress",
        &[
            ("GroupId", &endpoints_sg),
            ("IpPermissions.1.IpProtocol", "tcp"),
            ("IpPermissions.1.FromPort", "443"),
            ("IpPermissions.1.ToPort", "443"),
            ("IpPermissions.1.Groups.1.GroupId", &tasks_sg),
        ],
    )
    .await;
    let (path, reason, detail) = verdict(&controller).await;
    assert_eq!(
        (path, reason.as_str()),
        (ExecPath::EcsExec, "none"),
        "{detail}"
    );
    assert!(
        detail.contains("ssmmessages via endpoint vpce-"),
        "{detail}"
    );

    // The cluster encrypts sessions with a KMS key the role may not use.
    let key = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab";
    ecs.update_cluster()
        .cluster(CLUSTER)
        .configuration(
            aws_sdk_ecs::types::ClusterConfiguration::builder()
                .execute_command_configuration(
                    aws_sdk_ecs::types::ExecuteCommandConfiguration::builder()
                        .kms_key_id(key)
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .expect("update cluster");
    let (_, reason, detail) = verdict(&controller).await;
    assert_eq!(reason, "task_role_lacks_kms_decrypt", "{detail}");
    // Allowed the key: the task must reach KMS too.
    call(
        &q,
        &IAM,
        "PutRolePolicy",
        &[
            ("RoleName", "convox-shop-ServiceRole-9"),
            ("PolicyName", "kms"),
            ("PolicyDocument", &format!(r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Action":"kms:Decrypt","Resource":"{key}"}}]}}"#)),
        ],
    )
    .await;
    let (_, reason, detail) = verdict(&controller).await;
    assert_eq!(reason, "no_route_to_ssm", "{detail}");
    assert!(detail.starts_with("kms: "), "{detail}");
    endpoint(&q, &net, "kms", Some(&endpoints_sg)).await;
    let (path, _, detail) = verdict(&controller).await;
    assert_eq!(path, ExecPath::EcsExec, "{detail}");

    // A permissions boundary without ssmmessages holds the role back.
    let boundary = call(
        &q,
        &IAM,
        "CreatePolicy",
        &[
            ("PolicyName", "boundary"),
            (
                "PolicyDocument",
                &policy(r#"["kms:Decrypt","s3:GetObject"]"#),
            ),
        ],
    )
    .await;
    call(
        &q,
        &IAM,
        "PutRolePermissionsBoundary",
        &[
            ("RoleName", "convox-shop-ServiceRole-9"),
            ("PermissionsBoundary", &first(&boundary, "Arn")),
        ],
    )
    .await;
    let (path, reason, detail) = verdict(&controller).await;
    assert_eq!(
        (path, reason.as_str()),
        (ExecPath::Fails, "boundary_blocks_ssmmessages"),
        "{detail}"
    );
    call(
        &q,
        &IAM,
        "DeleteRolePermissionsBoundary",
        &[("RoleName", "convox-shop-ServiceRole-9")],
    )
    .await;

    // A controller denied the EC2 reads: the route is not known, never assumed.
    // (moto does not implement iam:SimulatePrincipalPolicy: every identity here is denied it.)
    let no_ec2 = source(
        &identity_without(
            &moto,
            &q,
            "no-ec2",
            r#"["ec2:Describe*","iam:SimulatePrincipalPolicy"]"#,
        )
        .await,
    );
    let (path, reason, detail) = verdict(&no_ec2).await;
    assert_eq!(
        (path, reason.as_str()),
        (ExecPath::Unknown, "unknown_route"),
        "{detail}"
    );
    assert!(detail.contains("ec2:DescribeInstances failed"), "{detail}");
    // One denied every IAM read: the role's permissions are not known.
    let no_iam = source(
        &identity_without(
            &moto,
            &q,
            "no-iam",
            r#"["iam:SimulatePrincipalPolicy","iam:List*","iam:Get*"]"#,
        )
        .await,
    );
    let (path, reason, detail) = verdict(&no_iam).await;
    assert_eq!(
        (path, reason.as_str()),
        (ExecPath::Unknown, "unknown_role_permissions"),
        "{detail}"
    );
    assert!(detail.contains("is denied"), "{detail}");
    assert_eq!(no_iam.notes(), vec![POLICIES_READ.to_string()]);
}
