//! Exec readiness reads against AWS: CloudFormation and ECS through their SDK clients here,
//! IAM ([`iam`]) and EC2 ([`ec2`]) through the Query client. Every method is one call (one
//! page); a role check is one `SimulatePrincipalPolicy`, or, when that is denied, the reads of
//! the role's own policies and permissions boundary.

mod ec2;
mod iam;

pub use iam::POLICIES_READ;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use aws_sdk_cloudformation::Client as CfnClient;
use aws_sdk_ecs::types::{ClusterField, DesiredStatus, KeyValuePair};
use aws_sdk_ecs::Client as EcsClient;

use super::aws::counted;
use super::query::QueryClient;
use super::RackError;
use crate::exec::network::{Endpoint, RouteTable, SecurityGroup, TaskNetwork};
use crate::exec::permissions::{Access, ExecConfig, Grant};
use crate::exec::source::{
    ExecSource, InstanceFacts, ServiceFacts, StackFacts, StackPage, TaskDefinitionFacts, TaskInfo,
    CREDENTIAL_VARIABLES,
};
use crate::exec::Fact;
use crate::metrics::Metrics;

pub struct AwsExec {
    cfn: CfnClient,
    ecs: EcsClient,
    query: QueryClient,
    metrics: Metrics,
    /// `SimulatePrincipalPolicy` was denied once: the role's policies are read instead.
    no_simulate: AtomicBool,
}

impl AwsExec {
    pub fn new(cfn: CfnClient, ecs: EcsClient, query: QueryClient, metrics: Metrics) -> Self {
        AwsExec {
            cfn,
            ecs,
            query,
            metrics,
            no_simulate: AtomicBool::new(false),
        }
    }
}

fn time_string(t: Option<&aws_sdk_cloudformation::primitives::DateTime>) -> Option<String> {
    t.map(|t| t.to_string())
}

#[async_trait]
impl ExecSource for AwsExec {
    async fn stacks(&self, next: Option<String>) -> Result<StackPage, RackError> {
        let out = counted(
            &self.metrics,
            "cloudformation",
            "DescribeStacks",
            "stacks of the region",
            self.cfn.describe_stacks().set_next_token(next).send(),
        )
        .await?;
        let stacks = out
            .stacks()
            .iter()
            .map(|s| StackFacts {
                name: s.stack_name().unwrap_or_default().to_string(),
                updated: time_string(s.last_updated_time().or(s.creation_time())),
                nested: s.parent_id().is_some(),
                tags: s
                    .tags()
                    .iter()
                    .map(|t| {
                        (
                            t.key().unwrap_or_default().into(),
                            t.value().unwrap_or_default().into(),
                        )
                    })
                    .collect(),
                outputs: s
                    .outputs()
                    .iter()
                    .filter_map(|o| {
                        Some((
                            o.output_key()?.to_string(),
                            o.output_value().unwrap_or_default().to_string(),
                        ))
                    })
                    .collect(),
                parameters: s
                    .parameters()
                    .iter()
                    .filter_map(|p| {
                        Some((
                            p.parameter_key()?.to_string(),
                            p.parameter_value().unwrap_or_default().to_string(),
                        ))
                    })
                    .collect(),
            })
            .collect();
        Ok((stacks, out.next_token().map(str::to_string)))
    }

    async fn stack_services(&self, stack: &str) -> Result<Vec<String>, RackError> {
        let mut out = Vec::new();
        let mut next = None;
        loop {
            let page = counted(
                &self.metrics,
                "cloudformation",
                "ListStackResources",
                stack,
                self.cfn
                    .list_stack_resources()
                    .stack_name(stack)
                    .set_next_token(next)
                    .send(),
            )
            .await?;
            out.extend(
                page.stack_resource_summaries()
                    .iter()
                    .filter(|r| {
                        matches!(
                            r.resource_type(),
                            Some("AWS::ECS::Service" | "Custom::ECSService")
                        )
                    })
                    .filter_map(|r| r.physical_resource_id().map(str::to_string)),
            );
            next = page.next_token().map(str::to_string);
            if next.is_none() {
                return Ok(out);
            }
        }
    }

    async fn services(
        &self,
        cluster: &str,
        arns: &[String],
    ) -> Result<Vec<ServiceFacts>, RackError> {
        let out = counted(
            &self.metrics,
            "ecs",
            "DescribeServices",
            cluster,
            self.ecs
                .describe_services()
                .cluster(cluster)
                .set_services(Some(arns.to_vec()))
                .send(),
        )
        .await?;
        Ok(out
            .services()
            .iter()
            .map(|s| ServiceFacts {
                arn: s.service_arn().unwrap_or_default().to_string(),
                name: s.service_name().unwrap_or_default().to_string(),
                exec_enabled: s.enable_execute_command(),
            })
            .collect())
    }

    async fn list_tasks(
        &self,
        cluster: &str,
        next: Option<String>,
    ) -> Result<(Vec<String>, Option<String>), RackError> {
        let out = counted(
            &self.metrics,
            "ecs",
            "ListTasks",
            cluster,
            self.ecs
                .list_tasks()
                .cluster(cluster)
                .desired_status(DesiredStatus::Running)
                .max_results(100)
                .set_next_token(next)
                .send(),
        )
        .await?;
        Ok((
            out.task_arns().to_vec(),
            out.next_token().map(str::to_string),
        ))
    }

    async fn tasks(&self, cluster: &str, arns: &[String]) -> Result<Vec<TaskInfo>, RackError> {
        let out = counted(
            &self.metrics,
            "ecs",
            "DescribeTasks",
            cluster,
            self.ecs
                .describe_tasks()
                .cluster(cluster)
                .set_tasks(Some(arns.to_vec()))
                .send(),
        )
        .await?;
        Ok(out.tasks().iter().map(task_info).collect())
    }

    async fn container_instances(
        &self,
        cluster: &str,
        arns: &[String],
    ) -> Result<BTreeMap<String, InstanceFacts>, RackError> {
        let out = counted(
            &self.metrics,
            "ecs",
            "DescribeContainerInstances",
            cluster,
            self.ecs
                .describe_container_instances()
                .cluster(cluster)
                .set_container_instances(Some(arns.to_vec()))
                .send(),
        )
        .await?;
        Ok(out
            .container_instances()
            .iter()
            .filter_map(|ci| {
                let facts = InstanceFacts {
                    agent_version: ci
                        .version_info()
                        .and_then(|v| v.agent_version())
                        .map(str::to_string),
                    ec2_instance: ci.ec2_instance_id().map(str::to_string),
                };
                Some((ci.container_instance_arn()?.to_string(), facts))
            })
            .collect())
    }

    async fn exec_config(&self, cluster: &str) -> Result<ExecConfig, RackError> {
        let out = counted(
            &self.metrics,
            "ecs",
            "DescribeClusters",
            cluster,
            self.ecs
                .describe_clusters()
                .clusters(cluster)
                .include(ClusterField::Configurations)
                .send(),
        )
        .await?;
        let c = out
            .clusters()
            .first()
            .ok_or_else(|| RackError::MissingResource {
                stack: cluster.to_string(),
                logical: "the ECS cluster".into(),
            })?;
        let exec = c
            .configuration()
            .and_then(|c| c.execute_command_configuration());
        let log = exec.and_then(|e| e.log_configuration());
        let overridden = exec
            .and_then(|e| e.logging())
            .is_some_and(|l| l.as_str() == "OVERRIDE");
        let nonempty = |v: Option<&str>| v.filter(|v| !v.is_empty()).map(str::to_string);
        Ok(ExecConfig {
            cluster_arn: c.cluster_arn().unwrap_or_default().to_string(),
            kms_key: nonempty(exec.and_then(|e| e.kms_key_id())),
            cloudwatch_log_group: nonempty(log.and_then(|l| l.cloud_watch_log_group_name()))
                .filter(|_| overridden),
            cloudwatch_encrypted: log.is_some_and(|l| l.cloud_watch_encryption_enabled()),
            s3_bucket: nonempty(log.and_then(|l| l.s3_bucket_name())).filter(|_| overridden),
            s3_prefix: nonempty(log.and_then(|l| l.s3_key_prefix())),
            s3_encrypted: log.is_some_and(|l| l.s3_encryption_enabled()),
        })
    }

    async fn task_definition(&self, arn: &str) -> Result<TaskDefinitionFacts, RackError> {
        let out = counted(
            &self.metrics,
            "ecs",
            "DescribeTaskDefinition",
            arn,
            self.ecs
                .describe_task_definition()
                .task_definition(arn)
                .send(),
        )
        .await?;
        let td = out.task_definition();
        Ok(TaskDefinitionFacts {
            readonly_root: td.is_some_and(|td| {
                td.container_definitions()
                    .iter()
                    .any(|c| c.readonly_root_filesystem() == Some(true))
            }),
            task_role: td
                .and_then(|td| td.task_role_arn())
                .filter(|r| !r.is_empty())
                .map(str::to_string),
            credentials: td
                .map(|td| td.container_definitions())
                .unwrap_or_default()
                .iter()
                .filter(|c| {
                    has_credentials(c.environment())
                        || c.secrets().iter().any(|s| is_credential(Some(s.name())))
                })
                .map(|c| c.name().unwrap_or_default().to_string())
                .collect(),
        })
    }

    async fn role_grant(&self, role_arn: &str, access: &Access) -> Result<Fact<Grant>, RackError> {
        self.grant(role_arn, access).await
    }

    async fn instance_networks(
        &self,
        ids: &[String],
    ) -> Result<BTreeMap<String, TaskNetwork>, RackError> {
        AwsExec::instance_networks(self, ids).await
    }

    async fn interface_networks(
        &self,
        ids: &[String],
    ) -> Result<BTreeMap<String, TaskNetwork>, RackError> {
        AwsExec::interface_networks(self, ids).await
    }

    async fn route_tables(&self, vpcs: &[String]) -> Result<Vec<RouteTable>, RackError> {
        AwsExec::route_tables(self, vpcs).await
    }

    async fn endpoints(&self, vpcs: &[String]) -> Result<Vec<Endpoint>, RackError> {
        AwsExec::endpoints(self, vpcs).await
    }

    async fn security_groups(&self, ids: &[String]) -> Result<Vec<SecurityGroup>, RackError> {
        AwsExec::security_groups(self, ids).await
    }

    fn notes(&self) -> Vec<String> {
        if self.no_simulate.load(Ordering::Relaxed) {
            vec![iam::POLICIES_READ.to_string()]
        } else {
            Vec::new()
        }
    }

    fn region(&self) -> String {
        self.query.region().to_string()
    }
}

fn task_info(t: &aws_sdk_ecs::types::Task) -> TaskInfo {
    let agents: Vec<(String, Option<String>)> = t
        .containers()
        .iter()
        .flat_map(|c| c.managed_agents())
        .filter(|a| a.name().map(|n| n.as_str()) == Some("ExecuteCommandAgent"))
        .map(|a| {
            (
                a.last_status().unwrap_or("PENDING").to_string(),
                a.reason().map(str::to_string),
            )
        })
        .collect();
    let exec_agent = agents
        .iter()
        .find(|(s, _)| s != "RUNNING")
        .or_else(|| agents.first())
        .cloned();
    TaskInfo {
        arn: t.task_arn().unwrap_or_default().to_string(),
        group: t.group().map(str::to_string),
        started_by: t.started_by().map(str::to_string),
        task_definition: t.task_definition_arn().unwrap_or_default().to_string(),
        last_status: t.last_status().unwrap_or_default().to_string(),
        exec_enabled: t.enable_execute_command(),
        launch_type: t
            .launch_type()
            .map(|l| l.as_str().to_string())
            .unwrap_or_else(|| "EC2".into()),
        platform_version: t.platform_version().map(str::to_string),
        container_instance: t.container_instance_arn().map(str::to_string),
        exec_agent,
        network_interface: t
            .attachments()
            .iter()
            .filter(|a| a.r#type() == Some("ElasticNetworkInterface"))
            .flat_map(|a| a.details())
            .find(|d| d.name() == Some("networkInterfaceId"))
            .and_then(|d| d.value())
            .map(str::to_string),
        role_override: t
            .overrides()
            .and_then(|o| o.task_role_arn())
            .filter(|r| !r.is_empty())
            .map(str::to_string),
        override_credentials: t
            .overrides()
            .map(|o| o.container_overrides())
            .unwrap_or_default()
            .iter()
            .filter(|c| has_credentials(c.environment()))
            .map(|c| c.name().unwrap_or_default().to_string())
            .collect(),
    }
}

/// AWS access keys among environment variables (their values are not looked at).
fn has_credentials(env: &[KeyValuePair]) -> bool {
    env.iter().any(|kv| is_credential(kv.name()))
}

fn is_credential(name: Option<&str>) -> bool {
    name.is_some_and(|n| CREDENTIAL_VARIABLES.contains(&n))
}
