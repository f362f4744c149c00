//! A Convox rack in moto, shaped like a real one (the public rack template): rich API task
//! definitions registered through ECS (moto's CloudFormation drops task-level fields) with the
//! `ApiRole` under the path `/convox/`, the monitor's plaintext `PASSWORD` and the web
//! task's secret-bearing TLS labels; then the rack stack created with `create_stack` from a
//! template larger than CloudFormation's 51,200-byte body limit (so, as for a real rack, by
//! `TemplateURL` from S3), every parameter given explicitly; the web service behind a load
//! balancer's target group, neither service with a deployment circuit breaker.

use aws_sdk_cloudformation::types::Parameter;
use aws_sdk_cloudformation::Client as CfnClient;
use aws_sdk_ecs::types::{
    Compatibility, ContainerDefinition, CpuArchitecture, EphemeralStorage, HealthCheck,
    HostVolumeProperties, IpcMode, KernelCapabilities, KeyValuePair, LinuxParameters,
    LogConfiguration, LogDriver, MountPoint, NetworkMode, OsFamily, PidMode, PortMapping,
    ProxyConfiguration, ProxyConfigurationType, RuntimePlatform, Secret, Tag,
    TaskDefinitionPlacementConstraint, TaskDefinitionPlacementConstraintType, TransportProtocol,
    Ulimit, UlimitName, Volume,
};
use aws_sdk_ecs::Client as EcsClient;
use rack_reconciler::templates::TEMPLATE_BODY_LIMIT;
use serde_json::json;

use super::moto::Moto;

/// The rack API password: the monitor task's plaintext `PASSWORD` environment value, which
/// must never show up in logs, status or errors.
pub const SECRET: &str = "sk-live-7f9aQ3c1ZZ-do-not-log";
/// The value of the web task's secret-bearing labels (`rack.DockerTlsKey`,
/// `rack.DockerTlsCAKey`), which must never show up either.
pub const TLS_KEY: &str =
    "-----BEGIN RSA PRIVATE KEY----- MIIEfixtureTlsKey0do0not0log -----END RSA PRIVATE KEY-----";
/// Every secret of the fixture.
pub const SECRETS: [&str; 2] = [SECRET, TLS_KEY];
/// The rack API role, under the path every rack role has.
pub const API_ROLE: &str = "arn:aws:iam::123456789012:role/convox/convox-ApiRole-1XYZ2ABC3DEF";
/// The bucket the fixture's templates are uploaded to (CloudFormation reads large templates
/// from S3).
pub const TEMPLATE_BUCKET: &str = "convox-fixture-templates";
/// The size of the real rack template, release 20260418101514.
pub const REAL_TEMPLATE_BYTES: usize = 222_538;
pub const STACK: &str = "convox";
pub const CLUSTER: &str = "convox-Cluster-1P2Q3R4S5T6U";
pub const WEB: &str = "convox-ServiceWebApi-1A2B3C4D";
pub const MONITOR: &str = "convox-ServiceMonitorApi-5E6F7G8H";

pub struct Rack {
    pub web_task_definition: String,
    pub monitor_task_definition: String,
}

/// The `rack.*` labels of a task definition of the template, with the secret-bearing ones
/// holding [`TLS_KEY`].
fn labels(task_definition: &str) -> std::collections::HashMap<String, String> {
    let fx = rack_reconciler::rack::sim::fixture();
    fx.task_definitions[task_definition]
        .docker_labels
        .clone()
        .into_iter()
        .map(|(k, v)| match k.as_str() {
            "rack.DockerTlsKey" | "rack.DockerTlsCAKey" => (k, TLS_KEY.to_string()),
            _ => (k, v),
        })
        .collect()
}

/// The API container's environment as the template sets it: the monitor's adds `PASSWORD`.
fn environment(name: &str) -> Vec<KeyValuePair> {
    let mut env = vec![
        ("AWS_REGION", "us-east-1"),
        ("CLIENT_ID", "dev@convox.com"),
        ("NO_PROXY", "169.254.169.254,169.254.170.2"),
        ("HTTP_PROXY", ""),
        ("HTTPS_PROXY", ""),
        ("PROVIDER", "aws"),
        ("RACK", "convox"),
        (
            "STACK_ID",
            "arn:aws:cloudformation:us-east-1:123456789012:stack/convox/4f1c2a30-0000-11f0-0000-0a1b2c3d4e5f",
        ),
    ];
    if name == "monitor" {
        env.push(("PASSWORD", SECRET));
    }
    env.into_iter()
        .map(|(k, v)| KeyValuePair::builder().name(k).value(v).build())
        .collect()
}

fn container(name: &str) -> ContainerDefinition {
    let task_definition = if name == "web" {
        "ApiWebTasks"
    } else {
        "ApiMonitorTasks"
    };
    ContainerDefinition::builder()
        .name(name)
        .image("convox/rack:20260418101514")
        .cpu(128)
        .memory_reservation(256)
        .essential(true)
        .command("api")
        .set_docker_labels(Some(labels(task_definition)))
        .set_environment(Some(environment(name)))
        .secrets(
            Secret::builder()
                .name("RACK_KEY")
                .value_from("arn:aws:ssm:us-east-1:123456789012:parameter/convox/rack-key")
                .build()
                .expect("secret"),
        )
        .port_mappings(
            PortMapping::builder()
                .container_port(5443)
                .host_port(0)
                .protocol(TransportProtocol::Tcp)
                .build(),
        )
        .log_configuration(
            LogConfiguration::builder()
                .log_driver(LogDriver::Awslogs)
                .options("awslogs-group", "convox-LogGroup-ABC")
                .options("awslogs-region", "us-east-1")
                .options("awslogs-stream-prefix", "convox")
                .build()
                .expect("log configuration"),
        )
        .ulimits(
            Ulimit::builder()
                .name(UlimitName::Nofile)
                .soft_limit(65536)
                .hard_limit(65536)
                .build()
                .expect("ulimit"),
        )
        .health_check(
            HealthCheck::builder()
                .command("CMD-SHELL")
                .command("curl -fsk https://localhost:5443/check")
                .interval(10)
                .timeout(5)
                .retries(3)
                .start_period(30)
                .build()
                .expect("health check"),
        )
        .linux_parameters(
            LinuxParameters::builder()
                .init_process_enabled(true)
                .capabilities(KernelCapabilities::builder().add("SYS_PTRACE").build())
                .build(),
        )
        .mount_points(
            MountPoint::builder()
                .source_volume("docker")
                .container_path("/var/run/docker.sock")
                .build(),
        )
        .readonly_root_filesystem(false)
        .build()
}

async fn register_rich(ecs: &EcsClient, family: &str, first: &str) -> String {
    let envoy = ContainerDefinition::builder()
        .name("envoy")
        .image("public.ecr.aws/appmesh/aws-appmesh-envoy:v1.29")
        .memory(128)
        .essential(true)
        .docker_labels("rack.ECSExec", "untouched")
        .build();
    let out = ecs
        .register_task_definition()
        .family(family)
        .task_role_arn(API_ROLE)
        // The web task runs with the API role as its execution role too; the monitor has none.
        .set_execution_role_arn((first == "web").then(|| API_ROLE.to_string()))
        .network_mode(NetworkMode::Bridge)
        .container_definitions(container(first))
        .container_definitions(envoy)
        .volumes(
            Volume::builder()
                .name("docker")
                .host(
                    HostVolumeProperties::builder()
                        .source_path("/var/run/docker.sock")
                        .build(),
                )
                .build(),
        )
        .placement_constraints(
            TaskDefinitionPlacementConstraint::builder()
                .r#type(TaskDefinitionPlacementConstraintType::MemberOf)
                .expression("attribute:ecs.os-type == linux")
                .build(),
        )
        .requires_compatibilities(Compatibility::Ec2)
        .cpu("512")
        .memory("1024")
        .pid_mode(PidMode::Task)
        .ipc_mode(IpcMode::Task)
        .runtime_platform(
            RuntimePlatform::builder()
                .cpu_architecture(CpuArchitecture::X8664)
                .operating_system_family(OsFamily::Linux)
                .build(),
        )
        .ephemeral_storage(EphemeralStorage::builder().size_in_gib(30).build())
        .proxy_configuration(
            ProxyConfiguration::builder()
                .r#type(ProxyConfigurationType::Appmesh)
                .container_name("envoy")
                .properties(
                    KeyValuePair::builder()
                        .name("IgnoredUID")
                        .value("1337")
                        .build(),
                )
                .properties(
                    KeyValuePair::builder()
                        .name("ProxyIngressPort")
                        .value("15000")
                        .build(),
                )
                .build()
                .expect("proxy"),
        )
        .tags(Tag::builder().key("Rack").value("convox").build())
        .tags(Tag::builder().key("System").value("convox").build())
        .send()
        .await
        .expect("register rich task definition");
    out.task_definition
        .and_then(|t| t.task_definition_arn)
        .expect("arn")
}

/// Creates the rack; returns the ARNs of the revisions its services run.
pub async fn create(moto: &Moto) -> Rack {
    let (cfn, ecs): (CfnClient, EcsClient) = moto.clients().await;
    let web_td = register_rich(&ecs, "convox-web", "web").await;
    let monitor_td = register_rich(&ecs, "convox-monitor", "monitor").await;

    let (template, given) = template("20260418101514", &web_td, &monitor_td);
    let body = template.to_string();
    assert!(
        body.len() > TEMPLATE_BODY_LIMIT,
        "the rack template is too large for a body"
    );
    let url = upload_template(moto, "release/20260418101514/rack.json", &body).await;
    cfn.create_stack()
        .stack_name(STACK)
        .template_url(url)
        .capabilities(aws_sdk_cloudformation::types::Capability::CapabilityIam)
        .set_parameters(Some(given))
        .send()
        .await
        .expect("create_stack");
    // moto's CloudFormation drops a service's LoadBalancers (its AWS::ECS::Service has them
    // as a TODO) and DeploymentConfiguration: set them on the web service as the template
    // does (the monitor's 100%/200% are ECS's defaults).
    let target_group = cfn
        .describe_stack_resource()
        .stack_name(STACK)
        .logical_resource_id("ApiBalancerTargetGroup")
        .send()
        .await
        .expect("target group")
        .stack_resource_detail
        .and_then(|r| r.physical_resource_id)
        .expect("target group arn");
    ecs.update_service()
        .cluster(CLUSTER)
        .service(WEB)
        .load_balancers(
            aws_sdk_ecs::types::LoadBalancer::builder()
                .target_group_arn(target_group)
                .container_name("web")
                .container_port(5443)
                .build(),
        )
        .deployment_configuration(
            aws_sdk_ecs::types::DeploymentConfiguration::builder()
                .minimum_healthy_percent(50)
                .maximum_percent(200)
                .build(),
        )
        .send()
        .await
        .expect("web service behind the target group");
    Rack {
        web_task_definition: web_td,
        monitor_task_definition: monitor_td,
    }
}

/// Puts a template into moto's S3 and returns the URL CloudFormation reads it from.
pub async fn upload_template(moto: &Moto, key: &str, body: &str) -> String {
    let http = reqwest::Client::new();
    let bucket = format!("{}/{TEMPLATE_BUCKET}", moto.endpoint);
    // Creating the bucket again is harmless in moto (us-east-1).
    http.put(&bucket).send().await.expect("create bucket");
    let put = http
        .put(format!("{bucket}/{key}"))
        .body(body.to_string())
        .send()
        .await
        .expect("put template");
    assert!(put.status().is_success(), "put template: {}", put.status());
    format!("https://{TEMPLATE_BUCKET}.s3.amazonaws.com/{key}")
}

/// The ARN of the revision a service points at (moto keeps its PRIMARY deployment frozen,
/// but updates the service's task definition).
pub async fn service_task_definition(ecs: &EcsClient, service: &str) -> String {
    let out = ecs
        .describe_services()
        .cluster(CLUSTER)
        .services(service)
        .send()
        .await
        .expect("describe_services");
    out.services
        .unwrap_or_default()
        .into_iter()
        .next()
        .and_then(|s| s.task_definition)
        .expect("service")
}

/// ARNs of a family's revisions, oldest first.
pub async fn revisions(ecs: &EcsClient, family: &str) -> Vec<String> {
    let out = ecs
        .list_task_definitions()
        .family_prefix(family)
        .send()
        .await
        .expect("list_task_definitions");
    out.task_definition_arns
        .unwrap_or_default()
        .into_iter()
        .filter(|a| {
            a.rsplit('/')
                .next()
                .and_then(|r| r.rsplit_once(':'))
                .map(|(f, _)| f)
                == Some(family)
        })
        .collect()
}

/// The rack template of a fixture release (parameters as that release declares them) around
/// the given revisions, and a value for every parameter.
pub fn template(
    release: &str,
    web_td: &str,
    monitor_td: &str,
) -> (serde_json::Value, Vec<Parameter>) {
    let fx = rack_reconciler::rack::sim::fixture();
    let declared = &fx.templates[release].parameters;
    let mut parameters = serde_json::Map::new();
    let mut given = Vec::new();
    for (name, p) in declared {
        let mut decl = json!({"Type": "String"});
        if let Some(d) = &p.default {
            decl["Default"] = json!(d);
        }
        if !p.allowed.is_empty() {
            decl["AllowedValues"] = json!(p.allowed);
        }
        if p.no_echo {
            decl["NoEcho"] = json!(true);
        }
        parameters.insert(name.clone(), decl);
        let value = match name.as_str() {
            "Version" => "20260418101514".to_string(),
            "Password" => "rack-password-not-a-secret-here".to_string(),
            _ => p.default.clone().unwrap_or_default(),
        };
        given.push(
            Parameter::builder()
                .parameter_key(name)
                .parameter_value(value)
                .build(),
        );
    }
    let cfn_container = json!([{
        "Name": "web",
        "Image": {"Fn::Sub": "convox/rack:${Version}"},
        "Memory": 256,
        "DockerLabels": {"rack.Version": {"Ref": "Version"}, "rack.Cluster": {"Ref": "Cluster"}}
    }]);
    let template = json!({
        "AWSTemplateFormatVersion": "2010-09-09",
        "Parameters": parameters,
        // The real template's size comes from its 148 resources; moto need not create them.
        "Metadata": {"Padding": padding(REAL_TEMPLATE_BYTES)},
        "Resources": {
            "Vpc": {"Type": "AWS::EC2::VPC", "Properties": {"CidrBlock": "10.0.0.0/16"}},
            "ApiBalancerTargetGroup": {"Type": "AWS::ElasticLoadBalancingV2::TargetGroup", "Properties": {
                "Port": 4000, "Protocol": "HTTPS", "VpcId": {"Ref": "Vpc"},
                "HealthCheckPath": "/check", "TargetType": "instance"}},
            "Cluster": {"Type": "AWS::ECS::Cluster", "Properties": {"ClusterName": CLUSTER}},
            "ApiWebTasks": {"Type": "AWS::ECS::TaskDefinition",
                "Properties": {"Family": "convox-web", "ContainerDefinitions": cfn_container}},
            "ApiMonitorTasks": {"Type": "AWS::ECS::TaskDefinition",
                "Properties": {"Family": "convox-monitor", "ContainerDefinitions": cfn_container}},
            "ServiceWebApi": {"Type": "AWS::ECS::Service", "Properties": {
                "ServiceName": WEB, "Cluster": {"Ref": "Cluster"}, "TaskDefinition": web_td,
                "DesiredCount": 0,
                "LoadBalancers": [{"ContainerName": "web", "ContainerPort": 5443,
                    "TargetGroupArn": {"Ref": "ApiBalancerTargetGroup"}}],
                "DeploymentConfiguration": {"MinimumHealthyPercent": 50, "MaximumPercent": 200}}},
            "ServiceMonitorApi": {"Type": "AWS::ECS::Service", "Properties": {
                "ServiceName": MONITOR, "Cluster": {"Ref": "Cluster"}, "TaskDefinition": monitor_td,
                "DesiredCount": 0,
                "DeploymentConfiguration": {"MinimumHealthyPercent": 100, "MaximumPercent": 200}}}
        }
    });
    (template, given)
}

/// Filler that makes a template about `bytes` long, as the real one is.
fn padding(bytes: usize) -> Vec<String> {
    let line = "Stands in for the rack template's other resources (instances, autoscaling, load balancers, buckets, lambdas, roles).";
    vec![line.to_string(); bytes / (line.len() + 3)]
}
