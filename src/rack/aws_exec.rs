//! Exec readiness reads against AWS: CloudFormation and ECS through their SDK clients, EC2 and
//! IAM through the Query client. Every method is one call (one page); a role check is one
//! `SimulatePrincipalPolicy`, or, when that is denied, the reads of the role's own policies.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use aws_sdk_cloudformation::Client as CfnClient;
use aws_sdk_ecs::types::DesiredStatus;
use aws_sdk_ecs::Client as EcsClient;
use tracing::warn;

use super::aws::counted;
use super::query::{child_text, parse, texts, QueryClient, EC2, IAM};
use super::{ApiErrorKind, RackError};
use crate::exec::policy;
use crate::exec::source::{
    ExecSource, ServiceFacts, StackFacts, StackPage, TaskDefinitionFacts, TaskInfo, VpcFacts,
};
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

    /// Every page of an IAM list call: the texts of `item` elements.
    async fn iam_list(
        &self,
        action: &'static str,
        resource: &str,
        params: &[(String, String)],
        item: &str,
    ) -> Result<Vec<String>, RackError> {
        let mut out = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let mut p = params.to_vec();
            if let Some(m) = &marker {
                p.push(("Marker".into(), m.clone()));
            }
            let xml = self.query.call(&IAM, action, resource, &p).await?;
            let doc = parse(&xml, "iam", action)?;
            out.extend(texts(doc.root_element(), item));
            let truncated = texts(doc.root_element(), "IsTruncated")
                .first()
                .map(String::as_str)
                == Some("true");
            marker = texts(doc.root_element(), "Marker").into_iter().next();
            if !truncated || marker.is_none() {
                return Ok(out);
            }
        }
    }

    async fn iam_get(
        &self,
        action: &'static str,
        resource: &str,
        params: &[(&str, &str)],
        item: &str,
    ) -> Result<Option<String>, RackError> {
        let p: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let xml = self.query.call(&IAM, action, resource, &p).await?;
        let doc = parse(&xml, "iam", action)?;
        Ok(texts(doc.root_element(), item).into_iter().next())
    }

    /// `SimulatePrincipalPolicy` on the role: every action `allowed`.
    async fn simulate(&self, role: &str, actions: &[&str]) -> Result<bool, RackError> {
        let mut params = vec![("PolicySourceArn".to_string(), role.to_string())];
        for (i, a) in actions.iter().enumerate() {
            params.push((format!("ActionNames.member.{}", i + 1), a.to_string()));
        }
        let xml = self
            .query
            .call(&IAM, "SimulatePrincipalPolicy", role, &params)
            .await?;
        let doc = parse(&xml, "iam", "SimulatePrincipalPolicy")?;
        let decisions = texts(doc.root_element(), "EvalDecision");
        Ok(decisions.len() >= actions.len() && decisions.iter().all(|d| d == "allowed"))
    }

    /// The role's inline and attached (default version) policy documents.
    async fn role_policies(&self, role: &str) -> Result<Vec<serde_json::Value>, RackError> {
        let name = role.rsplit('/').next().unwrap_or(role);
        let by_role = [("RoleName".to_string(), name.to_string())];
        let mut docs = Vec::new();
        for p in self
            .iam_list("ListRolePolicies", role, &by_role, "member")
            .await?
        {
            let doc = self
                .iam_get(
                    "GetRolePolicy",
                    role,
                    &[("RoleName", name), ("PolicyName", &p)],
                    "PolicyDocument",
                )
                .await?;
            docs.extend(doc.as_deref().and_then(policy_json));
        }
        for arn in self
            .iam_list("ListAttachedRolePolicies", role, &by_role, "PolicyArn")
            .await?
        {
            let Some(version) = self
                .iam_get(
                    "GetPolicy",
                    &arn,
                    &[("PolicyArn", &arn)],
                    "DefaultVersionId",
                )
                .await?
            else {
                continue;
            };
            let doc = self
                .iam_get(
                    "GetPolicyVersion",
                    &arn,
                    &[("PolicyArn", &arn), ("VersionId", &version)],
                    "Document",
                )
                .await?;
            docs.extend(doc.as_deref().and_then(policy_json));
        }
        Ok(docs)
    }

    /// Every page of an EC2 describe call, each `item` under `set` handed to `each`.
    async fn ec2_items(
        &self,
        action: &'static str,
        resource: &str,
        params: Vec<(String, String)>,
        set: &str,
        mut each: impl FnMut(roxmltree::Node),
    ) -> Result<(), RackError> {
        let mut next: Option<String> = None;
        loop {
            let mut p = params.clone();
            if let Some(t) = &next {
                p.push(("NextToken".into(), t.clone()));
            }
            let xml = self.query.call(&EC2, action, resource, &p).await?;
            let doc = parse(&xml, "ec2", action)?;
            let root = doc.root_element();
            if let Some(s) = root.children().find(|n| n.has_tag_name(set)) {
                s.children()
                    .filter(|n| n.has_tag_name("item"))
                    .for_each(&mut each);
            }
            next = child_text(root, "nextToken").filter(|t| !t.is_empty());
            if next.is_none() {
                return Ok(());
            }
        }
    }
}

/// A policy document as IAM returns it: URL-encoded JSON.
fn policy_json(encoded: &str) -> Option<serde_json::Value> {
    let decoded = percent_encoding::percent_decode_str(encoded)
        .decode_utf8()
        .ok()?;
    serde_json::from_str(&decoded).ok()
}

fn filters(filters: &[(&str, &[String])]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (i, (name, values)) in filters.iter().enumerate() {
        out.push((format!("Filter.{}.Name", i + 1), name.to_string()));
        for (j, v) in values.iter().enumerate() {
            out.push((format!("Filter.{}.Value.{}", i + 1, j + 1), v.clone()));
        }
    }
    out
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

    async fn agent_versions(
        &self,
        cluster: &str,
        arns: &[String],
    ) -> Result<BTreeMap<String, String>, RackError> {
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
                Some((
                    ci.container_instance_arn()?.to_string(),
                    ci.version_info()?.agent_version()?.to_string(),
                ))
            })
            .collect())
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
        })
    }

    async fn role_allows(
        &self,
        role_arn: &str,
        actions: &[&str],
    ) -> Result<Option<bool>, RackError> {
        if !self.no_simulate.load(Ordering::Relaxed) {
            match self.simulate(role_arn, actions).await {
                Ok(v) => return Ok(Some(v)),
                Err(RackError::Api {
                    kind: ApiErrorKind::AccessDenied,
                    ..
                }) => {
                    warn!(role = role_arn, "iam:SimulatePrincipalPolicy is denied; reading the task roles' policies instead");
                    self.no_simulate.store(true, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
        match self.role_policies(role_arn).await {
            Ok(docs) => Ok(policy::allows(&docs, actions)),
            Err(RackError::Api {
                kind: ApiErrorKind::AccessDenied,
                message,
                ..
            }) => {
                warn!(role = role_arn, error = %message, "cannot read the task role's policies; its ssmmessages permissions are not known");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    async fn vpc(&self, vpc: &str, route_tables: &[String]) -> Result<VpcFacts, RackError> {
        let mut facts = VpcFacts::default();
        if !route_tables.is_empty() {
            self.ec2_items(
                "DescribeRouteTables",
                vpc,
                filters(&[("route-table-id", route_tables)]),
                "routeTableSet",
                |table| {
                    facts.route_tables += 1;
                    let nat = table
                        .descendants()
                        .filter(|n| n.has_tag_name("item"))
                        .any(|r| {
                            child_text(r, "destinationCidrBlock").as_deref() == Some("0.0.0.0/0")
                                && child_text(r, "state").as_deref() != Some("blackhole")
                                && ["natGatewayId", "instanceId", "transitGatewayId"]
                                    .iter()
                                    .any(|k| child_text(r, k).is_some())
                        });
                    facts.nat_routes += usize::from(nat);
                },
            )
            .await?;
        }
        self.ec2_items(
            "DescribeVpcEndpoints",
            vpc,
            filters(&[
                ("vpc-id", &[vpc.to_string()]),
                ("vpc-endpoint-type", &["Interface".to_string()]),
            ]),
            "vpcEndpointSet",
            |e| {
                let available =
                    child_text(e, "state").is_some_and(|s| s.eq_ignore_ascii_case("available"));
                let dns = child_text(e, "privateDnsEnabled").as_deref() == Some("true");
                if let (true, true, Some(name)) = (available, dns, child_text(e, "serviceName")) {
                    facts.endpoints.push(name);
                }
            },
        )
        .await?;
        Ok(facts)
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_documents_are_url_decoded() {
        let doc = "%7B%22Version%22%3A%222012-10-17%22%2C%22Statement%22%3A%5B%7B%22Effect%22%3A%22Allow%22%2C%22Action%22%3A%22ssmmessages%3A%2A%22%2C%22Resource%22%3A%22%2A%22%7D%5D%7D";
        let v = policy_json(doc).expect("decoded");
        assert_eq!(v["Statement"][0]["Action"], "ssmmessages:*");
        let plain = r#"{"Statement": []}"#;
        assert!(policy_json(plain).is_some());
    }
}
