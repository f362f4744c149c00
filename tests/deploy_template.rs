//! `deploy/controller.yaml` created in moto's CloudFormation as an operator would: every
//! resource is there, the lease table has the key the controller writes, and the config the
//! task gets in its environment is a valid config that points at the stack's own table, the
//! rack's Settings bucket and the stack's CloudFormation role.

use crate::common;

use std::path::Path;

use aws_sdk_cloudformation::types::{Capability, Parameter};
use common::moto::Moto;
use rack_reconciler::config::{Config, LeaseSetting};

fn param(key: &str, value: &str) -> Parameter {
    Parameter::builder()
        .parameter_key(key)
        .parameter_value(value)
        .build()
}

#[tokio::test]
async fn the_in_rack_template_creates_every_resource_with_a_valid_config() {
    let moto = Moto::start().await;
    let sdk = moto.sdk_config(&moto.endpoint).await;
    let (cfn, ecs) = moto.clients().await;
    ecs.create_cluster()
        .cluster_name("convox-Cluster-1P2Q3R4S5T6U")
        .send()
        .await
        .expect("cluster");
    cfn.create_stack()
        .stack_name("convox-rack-reconciler")
        .template_body(include_str!("../deploy/controller.yaml"))
        .parameters(param("Rack", "convox"))
        .parameters(param("Cluster", "convox-Cluster-1P2Q3R4S5T6U"))
        .parameters(param(
            "Image",
            "123456789012.dkr.ecr.us-east-1.amazonaws.com/rack-reconciler:0.1.0",
        ))
        .parameters(param("SettingsBucket", "convox-settings-1abc"))
        .parameters(param("SettingsKey", "1234abcd-12ab-34cd-56ef-1234567890ab"))
        .capabilities(Capability::CapabilityIam)
        .send()
        .await
        .expect("create the stack");

    let resources = cfn
        .describe_stack_resources()
        .stack_name("convox-rack-reconciler")
        .send()
        .await
        .expect("resources")
        .stack_resources
        .unwrap_or_default();
    let mut found: Vec<(&str, &str)> = resources
        .iter()
        .map(|r| {
            (
                r.logical_resource_id().unwrap_or(""),
                r.resource_status().map(|s| s.as_str()).unwrap_or(""),
            )
        })
        .collect();
    found.sort();
    let logical: Vec<&str> = found.iter().map(|(l, _)| *l).collect();
    assert_eq!(
        logical,
        [
            "CloudFormationRole",
            "LeaseTable",
            "LogGroup",
            "Service",
            "TaskDefinition",
            "TaskRole"
        ]
    );
    assert!(
        found.iter().all(|(_, s)| *s == "CREATE_COMPLETE"),
        "{found:?}"
    );

    let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
    let table = dynamo
        .describe_table()
        .table_name("convox-rack-reconciler-lease")
        .send()
        .await
        .expect("the lease table")
        .table
        .expect("table");
    let key = table.key_schema();
    assert_eq!(key.len(), 1);
    assert_eq!(key[0].attribute_name(), "name");

    // The config the task gets.
    let service = ecs
        .describe_services()
        .cluster("convox-Cluster-1P2Q3R4S5T6U")
        .services("convox-rack-reconciler")
        .send()
        .await
        .expect("service")
        .services
        .unwrap_or_default();
    assert_eq!(service.len(), 1, "the service exists");
    assert_eq!(service[0].desired_count(), 2, "a holder and a standby");
    let td = ecs
        .describe_task_definition()
        .task_definition(service[0].task_definition().expect("td"))
        .send()
        .await
        .expect("task definition")
        .task_definition
        .expect("td");
    let container = &td.container_definitions()[0];
    let yaml = container
        .environment()
        .iter()
        .find(|e| e.name() == Some("RACK_RECONCILER_CONFIG_YAML"))
        .and_then(|e| e.value())
        .expect("the config is in the environment");
    let cfg = Config::parse(yaml, "RACK_RECONCILER_CONFIG_YAML", Path::new("."))
        .expect("the in-rack config is valid");
    assert_eq!(
        cfg.params_file.to_string(),
        "s3://convox-settings-1abc/rack-reconciler/params.yaml"
    );
    match &cfg.lease {
        Some(LeaseSetting::Table(t)) => assert_eq!(t.table, "convox-rack-reconciler-lease"),
        other => panic!("no lease table: {other:?}"),
    }
    let role = cfg.stack_role_arn.expect("the stack role");
    assert!(role.starts_with("arn:aws:iam::"), "{role}");
    assert!(container.readonly_root_filesystem().unwrap_or(false));
    let health = container.health_check().expect("a health check");
    assert!(health.command().join(" ").contains("--controller-only"));
}
