//! The AWS adapter: the rack boundary implemented with the AWS SDK for Rust.
//!
//! Region, credentials and endpoint come from the standard AWS environment (`AWS_REGION`,
//! the credentials chain, `AWS_ENDPOINT_URL`), as in every AWS SDK. Throttling and server
//! errors are retried by the SDK's standard retry first, then by the reconcile backoff.
//!
//! Task definitions carry environment values and secrets. This module copies them between
//! AWS calls but never formats them: no `Debug` of an SDK task definition type reaches a log,
//! an error or the status.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_sdk_cloudformation::types::{Capability, Parameter};
use aws_sdk_cloudformation::Client as CfnClient;
use aws_sdk_ecs::config::http::HttpResponse;
use aws_sdk_ecs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ecs::types::{
    ContainerDefinition, DesiredStatus, SortOrder, Tag, TaskDefinition, TaskDefinitionField,
    TaskDefinitionStatus,
};
use aws_sdk_ecs::Client as EcsClient;
use backon::{ExponentialBuilder, Retryable};

pub(crate) use super::sdk::map_error;

mod events;
mod revisions;
mod services;

use super::{
    ApiErrorKind, Rack, RackError, Relabelled, ResourceChange, StackUpdateOutcome,
    StackUpdateRequest, TemplateSummary,
};
use crate::metrics::Metrics;
use crate::model::{
    Deployment, DeploymentStatus, FailureWalk, RolloutState, ServiceSnapshot, ServiceTasks,
    StackEvent, StackParameter, StackSnapshot, StoppedTask, TaskDefinitionInfo, TaskRead,
    TaskSnapshot, UpdateEvents,
};
use crate::settings::Timeouts;
use crate::spec::Declarations;
use crate::templates::{TemplateLocation, TemplateRef};
use events::*;
use revisions::*;
use services::*;

/// The SDK behavior version, pinned so an SDK upgrade cannot change defaults (retries,
/// timeouts) silently.
pub fn behavior_version() -> aws_config::BehaviorVersion {
    aws_config::BehaviorVersion::v2026_01_12()
}

/// How far back (in pages of 100 events) the cause of a failed stack update is looked for.
const MAX_EVENT_PAGES: usize = 20;

/// How many of a family's most recent revisions are checked for one to reuse.
const REUSE_CANDIDATES: usize = 10;

/// How many full task definitions the adapter keeps: the revisions the rack API runs and
/// the ones it registers, so a relabel reads none of them again.
const KEPT_REVISIONS: usize = 16;

pub struct AwsRack {
    stack: String,
    cfn: CfnClient,
    ecs: EcsClient,
    metrics: Metrics,
    /// Full task definitions (with their tags) by ARN, most recently used last. Revisions
    /// are immutable; their tags are not, but a relabel copies the tags as first read (a tag
    /// changed on the running revision since is not copied while it is kept). They hold
    /// environment values: kept in memory only, never formatted.
    revisions: Mutex<VecDeque<(String, Revision)>>,
}

/// A task definition as `DescribeTaskDefinition` (with tags) returns it.
type Revision = (TaskDefinition, Vec<Tag>);

/// The standard AWS environment, with `region` overriding it when given, and a timeout on
/// connecting, on each attempt and on each call: the configuration of every client.
pub async fn sdk_config(region: Option<String>, timeouts: &Timeouts) -> aws_config::SdkConfig {
    let timeout_config = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(timeouts.aws_connect)
        .operation_attempt_timeout(timeouts.aws_attempt)
        .operation_timeout(timeouts.aws_call)
        .build();
    let mut loader = aws_config::defaults(behavior_version()).timeout_config(timeout_config);
    if let Some(region) = region {
        loader = loader.region(aws_config::Region::new(region));
    }
    loader.load().await
}

impl AwsRack {
    /// Clients from the standard AWS environment, with `region` overriding it when given,
    /// and a timeout on connecting, on each attempt and on each call.
    pub async fn from_env(
        stack: &str,
        region: Option<String>,
        timeouts: &Timeouts,
        metrics: Metrics,
    ) -> AwsRack {
        let config = sdk_config(region, timeouts).await;
        AwsRack::new(
            stack,
            CfnClient::new(&config),
            EcsClient::new(&config),
            metrics,
        )
    }

    /// The clients' writes are checked against the fence in scope right before each attempt
    /// ([`crate::lease::fence::FenceInterceptor`]).
    pub fn new(stack: &str, cfn: CfnClient, ecs: EcsClient, metrics: Metrics) -> AwsRack {
        let fence = crate::lease::fence::FenceInterceptor;
        let cfn = CfnClient::from_conf(cfn.config().to_builder().interceptor(fence).build());
        let ecs = EcsClient::from_conf(ecs.config().to_builder().interceptor(fence).build());
        AwsRack {
            stack: stack.to_string(),
            cfn,
            ecs,
            metrics,
            revisions: Mutex::new(VecDeque::new()),
        }
    }

    /// Runs one AWS call, counting it and mapping its error.
    fn missing(&self, logical: &str) -> RackError {
        RackError::MissingResource {
            stack: self.stack.clone(),
            logical: logical.to_string(),
        }
    }

    async fn call<T, E, F>(
        &self,
        service: &'static str,
        operation: &'static str,
        resource: &str,
        fut: F,
    ) -> Result<T, RackError>
    where
        F: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        counted(&self.metrics, service, operation, resource, fut).await
    }
}

/// Retries of a throttled `RegisterTaskDefinition`.
fn write_retry() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .with_max_times(4)
}

/// Retries of a describe right after the register that created the revision.
fn read_after_write_retry() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(2))
        .with_max_times(5)
}

#[async_trait]
impl Rack for AwsRack {
    async fn describe_stack(&self) -> Result<StackSnapshot, RackError> {
        let out = self
            .call(
                "cloudformation",
                "DescribeStacks",
                &self.stack,
                self.cfn.describe_stacks().stack_name(&self.stack).send(),
            )
            .await
            .map_err(|e| match e {
                RackError::Api { ref message, .. } if message.contains("does not exist") => {
                    RackError::StackNotFound {
                        stack: self.stack.clone(),
                    }
                }
                other => other,
            })?;
        let stack = out
            .stacks
            .unwrap_or_default()
            .into_iter()
            .next()
            .ok_or_else(|| RackError::StackNotFound {
                stack: self.stack.clone(),
            })?;
        let parameters = stack
            .parameters
            .unwrap_or_default()
            .into_iter()
            .filter_map(|p| Some((p.parameter_key?, p.parameter_value.unwrap_or_default())))
            .collect();

        let outputs = stack
            .outputs
            .unwrap_or_default()
            .into_iter()
            .filter_map(|o| Some((o.output_key?, o.output_value.unwrap_or_default())))
            .collect();
        let last_updated = stack
            .last_updated_time
            .or(stack.creation_time)
            .map(|t| t.secs().to_string());
        Ok(StackSnapshot {
            last_updated,
            name: stack.stack_name.unwrap_or_else(|| self.stack.clone()),
            status_reason: stack.stack_status_reason,
            status: stack
                .stack_status
                .map(|s| s.as_str().to_string())
                .unwrap_or_else(|| "UNKNOWN".into()),
            parameters,
            outputs,
        })
    }

    async fn stack_resource(&self, logical: &str) -> Result<String, RackError> {
        let out = self
            .call(
                "cloudformation",
                "DescribeStackResource",
                &self.stack,
                self.cfn
                    .describe_stack_resource()
                    .stack_name(&self.stack)
                    .logical_resource_id(logical)
                    .send(),
            )
            .await
            .map_err(|e| match e {
                // "Resource X does not exist for stack Y" (a stack that does not exist is
                // "Stack 'Y' does not exist", left as it is).
                RackError::Api { ref message, .. }
                    if message.contains(" does not exist for stack") =>
                {
                    self.missing(logical)
                }
                e => e,
            })?;
        out.stack_resource_detail
            .and_then(|d| d.physical_resource_id)
            .filter(|id| !id.is_empty())
            .ok_or_else(|| self.missing(logical))
    }

    async fn describe_services(
        &self,
        cluster: &str,
        services: &[String],
    ) -> Result<Vec<ServiceSnapshot>, RackError> {
        let mut snapshots = Vec::with_capacity(services.len());
        for chunk in services.chunks(10) {
            snapshots.extend(self.describe_service_batch(cluster, chunk).await?);
        }
        Ok(snapshots)
    }

    async fn service_tasks(
        &self,
        cluster: &str,
        reads: &[TaskRead],
    ) -> Result<Vec<ServiceTasks>, RackError> {
        let mut wanted: Vec<(usize, String)> = Vec::new();
        for (i, read) in reads.iter().enumerate() {
            let statuses = [
                (read.running, DesiredStatus::Running),
                (read.stopped, DesiredStatus::Stopped),
            ];
            for (_, status) in statuses.into_iter().filter(|(asked, _)| *asked) {
                let arns = self.list_tasks(cluster, &read.service, status).await?;
                // A task stopping between the two listings shows up in both.
                for a in arns {
                    if !wanted.iter().any(|(_, w)| *w == a) {
                        wanted.push((i, a));
                    }
                }
            }
        }
        let mut out = vec![ServiceTasks::default(); reads.len()];
        for chunk in wanted.chunks(100) {
            for (i, task) in self.describe_task_batch(cluster, chunk).await? {
                match task {
                    Observed::Wanted(t) => out[i].running.push(t),
                    Observed::Stopped(t) => out[i].stopped.push(t),
                }
            }
        }
        Ok(out)
    }

    async fn describe_task_definition(&self, arn: &str) -> Result<TaskDefinitionInfo, RackError> {
        let (td, _) = self.describe_full(arn).await?;
        Ok(info(arn, &td))
    }

    async fn relabel(&self, base: &str, label: &str, value: &str) -> Result<Relabelled, RackError> {
        let (base_td, tags) = self.describe_full(base).await?;
        let want = relabelled(&base_td, label, value)?;
        let (arn, reused) = match self.find_revision(base, &want, &tags).await? {
            Some(arn) => (arn, true),
            None => (self.register(base, &want, &tags).await?, false),
        };
        // Found or registered, the revision was just read or kept: no call.
        let (td, _) = self.describe_full(&arn).await?;
        Ok(Relabelled {
            info: info(&arn, &td),
            arn,
            reused,
        })
    }

    async fn stack_declarations(&self) -> Result<Declarations, RackError> {
        let out = self
            .call(
                "cloudformation",
                "GetTemplate",
                &self.stack,
                self.cfn
                    .get_template()
                    .stack_name(&self.stack)
                    .template_stage(aws_sdk_cloudformation::types::TemplateStage::Original)
                    .send(),
            )
            .await?;
        let body = out.template_body.unwrap_or_default();
        Declarations::from_template(&body).map_err(|e| RackError::Api {
            service: "cloudformation",
            operation: "GetTemplate",
            resource: self.stack.clone(),
            kind: ApiErrorKind::Rejected,
            message: format!("the stack's template cannot be read: {e}"),
        })
    }

    async fn template_summary(&self, template: &TemplateRef) -> Result<TemplateSummary, RackError> {
        let req = self.cfn.get_template_summary();
        let req = match &template.location {
            TemplateLocation::Url(url) => req.template_url(url),
            TemplateLocation::Body { body, .. } => req.template_body(body),
        };
        let out = self
            .call(
                "cloudformation",
                "GetTemplateSummary",
                &template.to_string(),
                req.send(),
            )
            .await?;
        Ok(TemplateSummary {
            parameters: out
                .parameters
                .unwrap_or_default()
                .into_iter()
                .filter_map(|p| p.parameter_key)
                .collect(),
            capabilities: out
                .capabilities
                .unwrap_or_default()
                .iter()
                .map(|c| c.as_str().to_string())
                .collect(),
        })
    }

    async fn update_stack(
        &self,
        request: &StackUpdateRequest,
    ) -> Result<StackUpdateOutcome, RackError> {
        let req = self
            .cfn
            .update_stack()
            .stack_name(&self.stack)
            .client_request_token(&request.token)
            .set_capabilities(Some(
                request
                    .capabilities
                    .iter()
                    .map(|c| Capability::from(c.as_str()))
                    .collect(),
            ))
            .set_parameters(Some(cfn_parameters(&request.parameters)));
        let req = match request.template.as_ref().map(|t| &t.location) {
            None => req.use_previous_template(true),
            Some(TemplateLocation::Url(url)) => req.template_url(url),
            Some(TemplateLocation::Body { body, .. }) => req.template_body(body),
        };
        let req = req.set_role_arn(request.role_arn.clone());
        match self
            .call("cloudformation", "UpdateStack", &self.stack, req.send())
            .await
        {
            Ok(_) => Ok(StackUpdateOutcome::Started),
            Err(e) => self.update_stack_refused(e, &request.token).await,
        }
    }

    async fn preview_stack_update(
        &self,
        request: &StackUpdateRequest,
    ) -> Result<Vec<ResourceChange>, RackError> {
        let name = format!("rack-reconciler-plan-{:016x}", fastrand::u64(..));
        let req = self
            .cfn
            .create_change_set()
            .stack_name(&self.stack)
            .change_set_name(&name)
            .change_set_type(aws_sdk_cloudformation::types::ChangeSetType::Update)
            .set_capabilities(Some(
                request
                    .capabilities
                    .iter()
                    .map(|c| Capability::from(c.as_str()))
                    .collect(),
            ))
            .set_parameters(Some(cfn_parameters(&request.parameters)))
            .set_role_arn(request.role_arn.clone());
        let req = match request.template.as_ref().map(|t| &t.location) {
            None => req.use_previous_template(true),
            Some(TemplateLocation::Url(url)) => req.template_url(url),
            Some(TemplateLocation::Body { body, .. }) => req.template_body(body),
        };
        let created = self
            .call("cloudformation", "CreateChangeSet", &self.stack, req.send())
            .await?;
        let id = created.id.unwrap_or(name);
        let changes = self.change_set_changes(&id).await;
        // Never leave a change set behind; a failure to describe it says more than one to
        // delete it.
        let deleted = self
            .call(
                "cloudformation",
                "DeleteChangeSet",
                &id,
                self.cfn
                    .delete_change_set()
                    .change_set_name(&id)
                    .stack_name(&self.stack)
                    .send(),
            )
            .await;
        let changes = changes?;
        deleted?;
        Ok(changes)
    }

    async fn cancel_update_stack(&self) -> Result<(), RackError> {
        self.call(
            "cloudformation",
            "CancelUpdateStack",
            &self.stack,
            self.cfn
                .cancel_update_stack()
                .stack_name(&self.stack)
                .send(),
        )
        .await?;
        Ok(())
    }

    async fn stack_failure_reason(&self) -> Result<Option<String>, RackError> {
        Ok(self.walk_events().await?.cause)
    }

    async fn latest_update(&self) -> Result<UpdateEvents, RackError> {
        Ok(self.walk_events().await?.update(&self.stack))
    }

    async fn update_service(
        &self,
        cluster: &str,
        service: &str,
        task_definition: &str,
    ) -> Result<(), RackError> {
        self.call(
            "ecs",
            "UpdateService",
            service,
            self.ecs
                .update_service()
                .cluster(cluster)
                .service(service)
                .task_definition(task_definition)
                .send(),
        )
        .await?;
        Ok(())
    }
}

/// A described task: one ECS wants running, or one that has stopped.
enum Observed {
    Wanted(TaskSnapshot),
    Stopped(StoppedTask),
}

/// Runs one SDK call, counting it in `metrics` and mapping its error.
pub(crate) async fn counted<T, E, F>(
    metrics: &Metrics,
    service: &'static str,
    operation: &'static str,
    resource: &str,
    fut: F,
) -> Result<T, RackError>
where
    F: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match fut.await {
        Ok(v) => {
            metrics.api_call(service, operation, "success");
            Ok(v)
        }
        Err(e) => {
            let err = map_error(service, operation, resource, &e);
            metrics.api_call(service, operation, err.outcome());
            Err(err)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuse_candidates_are_ruled_out_by_arn() {
        let arn = |f: &str, r: u32| format!("arn:aws:ecs:us-east-1:1:task-definition/{f}:{r}");
        let base = arn("convox-web", 5);
        let kept = arn("convox-web", 3);
        let cases: Vec<(&str, Vec<String>, Vec<String>, bool)> = vec![
            (
                "another family sharing the prefix neither counts nor ends the paging",
                vec![arn("convox-webhooks", 1), arn("convox-webhooks", 9)],
                vec![],
                false,
            ),
            (
                "newer revisions are candidates",
                vec![arn("convox-web", 7), arn("convox-web", 6)],
                vec![arn("convox-web", 7), arn("convox-web", 6)],
                false,
            ),
            (
                "older ones only when kept; the page reached the base",
                vec![
                    arn("convox-web", 6),
                    base.clone(),
                    arn("convox-web", 4),
                    kept.clone(),
                ],
                vec![arn("convox-web", 6), kept.clone()],
                true,
            ),
        ];
        for (name, page, want, reached) in cases {
            let got = reuse_candidates(page, "convox-web", &base, |a| a == kept);
            assert_eq!(got, (want, reached), "{name}");
        }
    }
}

#[cfg(test)]
mod policy_tests {
    use std::collections::BTreeSet;

    /// The AWS operations the controller calls, read from the sources of its adapters: the
    /// rack (CloudFormation, ECS), the params and status store (S3), the lease (DynamoDB).
    fn called_operations() -> BTreeSet<String> {
        let src = [
            include_str!("aws.rs"),
            include_str!("aws/events.rs"),
            include_str!("aws/revisions.rs"),
            include_str!("aws/services.rs"),
            include_str!("aws_exec/mod.rs"),
            include_str!("aws_exec/iam.rs"),
            include_str!("aws_exec/ec2.rs"),
            include_str!("../store.rs"),
            include_str!("../lease/dynamodb.rs"),
        ]
        .concat();
        // The SDK calls name their service; the Query client's calls go through helpers.
        let markers = [
            ("\"cloudformation\",", "cloudformation"),
            ("\"ecs\",", "ecs"),
            ("\"s3\",", "s3"),
            ("\"dynamodb\",", "dynamodb"),
            ("&IAM,", "iam"),
            ("iam_list(", "iam"),
            ("iam_get(", "iam"),
            ("ec2_items(", "ec2"),
        ];
        let mut ops = BTreeSet::new();
        for (marker, service) in markers {
            for part in src.split(marker).skip(1) {
                let op: String = part
                    .trim_start()
                    .strip_prefix('"')
                    .map(|r| {
                        r.chars()
                            .take_while(|c| c.is_ascii_alphanumeric())
                            .collect()
                    })
                    .unwrap_or_default();
                if op.chars().next().is_some_and(|c| c.is_ascii_uppercase()) {
                    ops.insert(format!("{service}:{op}"));
                }
            }
        }
        ops
    }

    /// deploy/iam-policy.json grants exactly the calls the controller makes, plus what AWS
    /// requires around them (passing the API roles, tagging on registration).
    #[test]
    fn the_shipped_policy_grants_exactly_what_the_adapter_calls() {
        let policy: serde_json::Value =
            serde_json::from_str(include_str!("../../deploy/iam-policy.json"))
                .expect("policy is JSON");
        let mut granted = BTreeSet::new();
        for st in policy["Statement"].as_array().expect("statements") {
            assert_eq!(st["Effect"], "Allow");
            match &st["Action"] {
                serde_json::Value::String(a) => {
                    granted.insert(a.clone());
                }
                serde_json::Value::Array(a) => {
                    granted.extend(a.iter().filter_map(|x| x.as_str().map(String::from)))
                }
                other => panic!("unexpected Action {other}"),
            }
        }
        let mut wanted = called_operations();
        assert_eq!(wanted.len(), 37, "{wanted:?}");
        wanted.insert("iam:PassRole".into());
        wanted.insert("ecs:TagResource".into());
        // S3 encrypts and decrypts the Settings bucket's objects with the rack's KMS key.
        wanted.insert("kms:Decrypt".into());
        wanted.insert("kms:GenerateDataKey".into());
        assert_eq!(granted, wanted);
    }
}
