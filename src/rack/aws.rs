//! The AWS adapter: the rack boundary implemented with the AWS SDK for Rust.
//!
//! Region, credentials and endpoint come from the standard AWS environment (`AWS_REGION`,
//! the credentials chain, `AWS_ENDPOINT_URL`), as in every AWS SDK. Throttling and server
//! errors are retried by the SDK's standard retry first, then by the reconcile backoff.
//!
//! Task definitions carry environment values and secrets. This module copies them between
//! AWS calls but never formats them: no `Debug` of an SDK task definition type reaches a log,
//! an error or the status.

use std::collections::{BTreeMap, HashSet, VecDeque};
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

    /// Whether `arn` is kept, without touching the order.
    fn keeps(&self, arn: &str) -> bool {
        let kept = self.revisions.lock().unwrap_or_else(|e| e.into_inner());
        kept.iter().any(|(a, _)| a == arn)
    }

    fn kept(&self, arn: &str) -> Option<Revision> {
        let mut kept = self.revisions.lock().unwrap_or_else(|e| e.into_inner());
        let i = kept.iter().position(|(a, _)| a == arn)?;
        let entry = kept.remove(i)?;
        let revision = entry.1.clone();
        kept.push_back(entry);
        Some(revision)
    }

    fn keep(&self, arn: &str, revision: Revision) {
        let mut kept = self.revisions.lock().unwrap_or_else(|e| e.into_inner());
        kept.retain(|(a, _)| a != arn);
        kept.push_back((arn.to_string(), revision));
        while kept.len() > KEPT_REVISIONS {
            kept.pop_front();
        }
    }

    /// Runs one AWS call, counting it and mapping its error.
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

    /// A revision, read once (`DescribeTaskDefinition` with its tags) and kept.
    async fn describe_full(&self, arn: &str) -> Result<Revision, RackError> {
        if let Some(kept) = self.kept(arn) {
            return Ok(kept);
        }
        let out = self
            .call(
                "ecs",
                "DescribeTaskDefinition",
                arn,
                self.ecs
                    .describe_task_definition()
                    .task_definition(arn)
                    .include(TaskDefinitionField::Tags)
                    .send(),
            )
            .await?;
        let tags = out.tags.clone().unwrap_or_default();
        let td = out.task_definition.ok_or_else(|| RackError::Api {
            service: "ecs",
            operation: "DescribeTaskDefinition",
            resource: arn.to_string(),
            kind: ApiErrorKind::NotFound,
            message: "the response carried no task definition".into(),
        })?;
        self.keep(arn, (td.clone(), tags.clone()));
        Ok((td, tags))
    }

    /// Among the family's latest revisions, one equal to `want` (with `tags`); the revisions
    /// the adapter keeps (those the rack API ran or it registered) are compared without a
    /// call, the others described.
    async fn find_revision(
        &self,
        base: &str,
        want: &TaskDefinition,
        tags: &[Tag],
    ) -> Result<Option<String>, RackError> {
        let family = want.family.clone().unwrap_or_default();
        for arn in self.latest_revisions(&family, base).await? {
            let (td, tags_of_candidate) = self.describe_full(&arn).await?;
            if difference(want, tags, &td, &tags_of_candidate).is_none() {
                return Ok(Some(arn));
            }
        }
        Ok(None)
    }

    /// The ARNs of up to [`REUSE_CANDIDATES`] latest ACTIVE revisions of `family` that can
    /// be a copy of `base`, newest first, page by page. ARNs rule out the others without a
    /// describe: other families (a family prefix also matches `convox-webhooks`), and
    /// revisions older than `base` that the adapter does not keep. A copy left by a run that
    /// stopped before `UpdateService` is newer than `base`; an older copy that the rack API
    /// ran (a label the stack put back) is kept. One missed costs a duplicate revision, not
    /// a wrong one.
    async fn latest_revisions(&self, family: &str, base: &str) -> Result<Vec<String>, RackError> {
        let mut found = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .call(
                    "ecs",
                    "ListTaskDefinitions",
                    family,
                    self.ecs
                        .list_task_definitions()
                        .family_prefix(family)
                        .status(TaskDefinitionStatus::Active)
                        .sort(SortOrder::Desc)
                        .max_results(REUSE_CANDIDATES as i32 + 1)
                        .set_next_token(token.take())
                        .send(),
                )
                .await?;
            let arns = page.task_definition_arns.unwrap_or_default();
            let (candidates, reached) = reuse_candidates(arns, family, base, |a| self.keeps(a));
            found.extend(candidates);
            token = page.next_token;
            if reached || found.len() >= REUSE_CANDIDATES || token.is_none() {
                found.truncate(REUSE_CANDIDATES);
                return Ok(found);
            }
        }
    }

    /// The resource changes of a change set, once CloudFormation has computed them (polled
    /// for up to 30 seconds). A change set without changes is an empty list.
    async fn change_set_changes(&self, id: &str) -> Result<Vec<ResourceChange>, RackError> {
        for _ in 0..30 {
            let out = self
                .call(
                    "cloudformation",
                    "DescribeChangeSet",
                    id,
                    self.cfn
                        .describe_change_set()
                        .change_set_name(id)
                        .stack_name(&self.stack)
                        .send(),
                )
                .await?;
            let status = out
                .status
                .as_ref()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default();
            if status.ends_with("_PENDING") || status.ends_with("_IN_PROGRESS") {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            let reason = out.status_reason.clone().unwrap_or_default();
            if status == "FAILED" && !reason.contains("didn't contain changes") {
                return Err(RackError::Api {
                    service: "cloudformation",
                    operation: "DescribeChangeSet",
                    resource: id.to_string(),
                    kind: ApiErrorKind::Rejected,
                    message: format!("the change set failed: {reason}"),
                });
            }
            return Ok(out
                .changes
                .unwrap_or_default()
                .into_iter()
                .filter_map(|c| c.resource_change)
                .map(|r| ResourceChange {
                    action: r.action.map(|a| a.as_str().to_string()).unwrap_or_default(),
                    logical_id: r.logical_resource_id.unwrap_or_default(),
                    resource_type: r.resource_type.unwrap_or_default(),
                    replacement: r.replacement.map(|x| x.as_str().to_string()),
                })
                .collect());
        }
        Err(RackError::Api {
            service: "cloudformation",
            operation: "DescribeChangeSet",
            resource: id.to_string(),
            kind: ApiErrorKind::Transient,
            message: "the change set was not ready after 30 seconds".into(),
        })
    }

    /// One page of the stack's events, newest first, and the token of the next (older) page.
    async fn stack_events(
        &self,
        token: Option<String>,
    ) -> Result<(Vec<StackEvent>, Option<String>), RackError> {
        let out = self
            .call(
                "cloudformation",
                "DescribeStackEvents",
                &self.stack,
                self.cfn
                    .describe_stack_events()
                    .stack_name(&self.stack)
                    .set_next_token(token)
                    .send(),
            )
            .await?;
        let events = out
            .stack_events
            .unwrap_or_default()
            .into_iter()
            .map(|e| StackEvent {
                logical_id: e.logical_resource_id.unwrap_or_default(),
                status: e
                    .resource_status
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default(),
                reason: e.resource_status_reason,
                token: e.client_request_token,
                at: e.timestamp.and_then(|t| SystemTime::try_from(t).ok()),
            })
            .collect();
        Ok((events, out.next_token))
    }

    /// The stack's events, page by page, newest first, back to the latest update's start (at
    /// most [`MAX_EVENT_PAGES`]).
    async fn walk_events(&self) -> Result<FailureWalk, RackError> {
        let mut walk = FailureWalk::default();
        let mut token: Option<String> = None;
        for _ in 0..MAX_EVENT_PAGES {
            let (events, next) = self.stack_events(token.take()).await?;
            walk.feed(&self.stack, &events);
            token = next;
            if walk.done || token.is_none() {
                break;
            }
        }
        Ok(walk)
    }

    /// An `UpdateStack` error that may still mean success: nothing to update, or the update
    /// this token started already under way (the SDK retried after a lost response).
    async fn update_stack_refused(
        &self,
        e: RackError,
        token: &str,
    ) -> Result<StackUpdateOutcome, RackError> {
        let RackError::Api { message, .. } = &e else {
            return Err(e);
        };
        if message.contains("No updates are to be performed") {
            return Ok(StackUpdateOutcome::NoChange);
        }
        // The update may have started although no answer came back (a timeout, a dropped
        // connection), or the SDK's retry of it found it under way.
        let transient = matches!(
            e,
            RackError::Api {
                kind: ApiErrorKind::Transient,
                ..
            }
        );
        let ours_maybe = transient
            || message.contains("TokenAlreadyExists")
            || message.contains("_IN_PROGRESS state and can not be updated");
        if ours_maybe {
            match self.stack_events(None).await {
                Ok((events, _)) if events.iter().any(|ev| ev.token.as_deref() == Some(token)) => {
                    return Ok(StackUpdateOutcome::Started)
                }
                Ok(_) => {}
                // Whether the update started is not known: the token stays written down
                // (a transient answer) until the stack's events tell.
                Err(read) => {
                    return Err(RackError::Api {
                        service: "cloudformation",
                        operation: "UpdateStack",
                        resource: self.stack.clone(),
                        kind: ApiErrorKind::Transient,
                        message: format!(
                            "{message}; whether the update started could not be read: {read}"
                        ),
                    })
                }
            }
        }
        Err(e)
    }

    /// Up to 10 services in one `DescribeServices`, in the order asked for.
    async fn describe_service_batch(
        &self,
        cluster: &str,
        chunk: &[String],
    ) -> Result<Vec<ServiceSnapshot>, RackError> {
        let out = self
            .call(
                "ecs",
                "DescribeServices",
                cluster,
                self.ecs
                    .describe_services()
                    .cluster(cluster)
                    .set_services(Some(chunk.to_vec()))
                    .send(),
            )
            .await?;
        if let Some(f) = out.failures.unwrap_or_default().into_iter().next() {
            return Err(RackError::ServiceNotFound {
                cluster: cluster.to_string(),
                service: f.arn.unwrap_or_default(),
            });
        }
        let found = out.services.unwrap_or_default();
        chunk
            .iter()
            .map(|wanted| {
                found
                    .iter()
                    .find(|s| {
                        s.service_arn.as_deref() == Some(wanted.as_str())
                            || s.service_name.as_deref() == Some(wanted.as_str())
                    })
                    .map(service_snapshot)
                    .ok_or_else(|| RackError::ServiceNotFound {
                        cluster: cluster.to_string(),
                        service: wanted.clone(),
                    })
            })
            .collect()
    }

    /// Every task ARN of a service with the given desired status, page by page.
    async fn list_tasks(
        &self,
        cluster: &str,
        service: &str,
        status: DesiredStatus,
    ) -> Result<Vec<String>, RackError> {
        let mut arns = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .call(
                    "ecs",
                    "ListTasks",
                    service,
                    self.ecs
                        .list_tasks()
                        .cluster(cluster)
                        .service_name(service)
                        .desired_status(status.clone())
                        .set_next_token(token.clone())
                        .send(),
                )
                .await?;
            arns.extend(page.task_arns.unwrap_or_default());
            token = page.next_token;
            if token.is_none() {
                return Ok(arns);
            }
        }
    }

    /// Up to 100 tasks in one `DescribeTasks`, each with the index of its service.
    async fn describe_task_batch(
        &self,
        cluster: &str,
        chunk: &[(usize, String)],
    ) -> Result<Vec<(usize, Observed)>, RackError> {
        let arns: Vec<String> = chunk.iter().map(|(_, a)| a.clone()).collect();
        let out = self
            .call(
                "ecs",
                "DescribeTasks",
                cluster,
                self.ecs
                    .describe_tasks()
                    .cluster(cluster)
                    .set_tasks(Some(arns))
                    .send(),
            )
            .await?;
        Ok(out
            .tasks
            .unwrap_or_default()
            .into_iter()
            .filter_map(|task| {
                let owner = chunk
                    .iter()
                    .find(|(_, a)| task.task_arn.as_deref() == Some(a.as_str()))?
                    .0;
                Some((owner, observed_task(task)?))
            })
            .collect())
    }

    /// Registers `want` with `tags`, then proves ECS stored exactly that.
    async fn register(
        &self,
        base: &str,
        want: &TaskDefinition,
        tags: &[Tag],
    ) -> Result<String, RackError> {
        // Not idempotent: only a throttled call (refused before it was processed) is sent
        // again. After any other failure the next reconcile finds and reuses the revision
        // if ECS did register it.
        let (new, stored, stored_tags) = (|| self.register_once(want, tags))
            .retry(write_retry())
            .sleep(tokio::time::sleep)
            .when(RackError::throttled)
            .await?;
        // Prove that what ECS stored is the running revision with only the label changed:
        // the response carries the stored revision and its tags. A response without tags
        // (some emulators leave them out) is checked against a describe instead. Describing a
        // revision just registered may not find it yet (eventual consistency).
        let (stored, stored_tags) = match stored_tags {
            Some(stored_tags) => {
                self.keep(&new, (stored.clone(), stored_tags.clone()));
                (stored, stored_tags)
            }
            None => {
                (|| self.describe_full(&new))
                    .retry(read_after_write_retry())
                    .sleep(tokio::time::sleep)
                    .when(|e| {
                        matches!(
                            e,
                            RackError::Api {
                                kind: ApiErrorKind::NotFound,
                                ..
                            }
                        )
                    })
                    .await?
            }
        };
        if let Some(field) = difference(want, tags, &stored, &stored_tags) {
            return Err(RackError::RevisionMismatch {
                base: base.to_string(),
                new,
                field,
            });
        }
        Ok(new)
    }

    /// One `RegisterTaskDefinition`, without the SDK's retries: the new revision's ARN, the
    /// revision as stored, and its tags when the response carries them.
    async fn register_once(
        &self,
        want: &TaskDefinition,
        tags: &[Tag],
    ) -> Result<(String, TaskDefinition, Option<Vec<Tag>>), RackError> {
        let family = want.family.clone().unwrap_or_default();
        let out = self
            .call(
                "ecs",
                "RegisterTaskDefinition",
                &family,
                self.ecs
                    .register_task_definition()
                    .family(&family)
                    .set_task_role_arn(want.task_role_arn.clone())
                    .set_execution_role_arn(want.execution_role_arn.clone())
                    .set_network_mode(want.network_mode.clone())
                    .set_container_definitions(want.container_definitions.clone())
                    .set_volumes(want.volumes.clone())
                    .set_placement_constraints(want.placement_constraints.clone())
                    .set_requires_compatibilities(want.requires_compatibilities.clone())
                    .set_cpu(want.cpu.clone())
                    .set_memory(want.memory.clone())
                    .set_tags((!tags.is_empty()).then(|| tags.to_vec()))
                    .set_pid_mode(want.pid_mode.clone())
                    .set_ipc_mode(want.ipc_mode.clone())
                    .set_proxy_configuration(want.proxy_configuration.clone())
                    .set_ephemeral_storage(want.ephemeral_storage.clone())
                    .set_runtime_platform(want.runtime_platform.clone())
                    .set_enable_fault_injection(want.enable_fault_injection)
                    // A retry after a lost response would register a duplicate.
                    .customize()
                    .config_override(
                        aws_sdk_ecs::config::Config::builder()
                            .retry_config(aws_sdk_ecs::config::retry::RetryConfig::disabled()),
                    )
                    .send(),
            )
            .await?;
        let td = out
            .task_definition
            .filter(|t| t.task_definition_arn.is_some())
            .ok_or_else(|| RackError::Api {
                service: "ecs",
                operation: "RegisterTaskDefinition",
                resource: family,
                kind: ApiErrorKind::Rejected,
                message: "the response carried no task definition ARN".into(),
            })?;
        let arn = td.task_definition_arn.clone().unwrap_or_default();
        Ok((arn, td, out.tags))
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

/// Of one page of a family's revisions (newest first), those that can be a copy of `base`:
/// of the family (a prefix also matches `convox-webhooks`), and newer than `base` or `kept`;
/// and whether the page reached `base`'s revision (older pages hold nothing newer).
fn reuse_candidates(
    arns: Vec<String>,
    family: &str,
    base: &str,
    kept: impl Fn(&str) -> bool,
) -> (Vec<String>, bool) {
    let base_revision = arn_revision(base);
    let ours = |a: &String| arn_family(a) == Some(family) && a != base;
    let reached = arns
        .iter()
        .any(|a| arn_family(a) == Some(family) && arn_revision(a) <= base_revision);
    let candidates = arns
        .into_iter()
        .filter(|a| ours(a) && (arn_revision(a) > base_revision || kept(a)))
        .collect();
    (candidates, reached)
}

/// The revision number in a task definition ARN; 0 when it has none.
fn arn_revision(arn: &str) -> u32 {
    arn.rsplit_once(':')
        .and_then(|(_, r)| r.parse().ok())
        .unwrap_or(0)
}

/// The family in a task definition ARN (`...:task-definition/<family>:<revision>`).
fn arn_family(arn: &str) -> Option<&str> {
    arn.rsplit_once("task-definition/")?
        .1
        .rsplit_once(':')
        .map(|(f, _)| f)
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

    async fn stack_resources(&self) -> Result<BTreeMap<String, String>, RackError> {
        // ListStackResources pages through every resource; DescribeStackResources stops at
        // 100.
        let mut resources = BTreeMap::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .call(
                    "cloudformation",
                    "ListStackResources",
                    &self.stack,
                    self.cfn
                        .list_stack_resources()
                        .stack_name(&self.stack)
                        .set_next_token(token.clone())
                        .send(),
                )
                .await?;
            for r in page.stack_resource_summaries.unwrap_or_default() {
                if let (Some(logical), Some(physical)) =
                    (r.logical_resource_id, r.physical_resource_id)
                {
                    resources.insert(logical, physical);
                }
            }
            token = page.next_token;
            if token.is_none() {
                return Ok(resources);
            }
        }
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

fn service_snapshot(s: &aws_sdk_ecs::types::Service) -> ServiceSnapshot {
    let dc = s.deployment_configuration.as_ref();
    ServiceSnapshot {
        name: s.service_name.clone().unwrap_or_default(),
        arn: s.service_arn.clone().unwrap_or_default(),
        status: s.status.clone().unwrap_or_default(),
        desired_count: count(s.desired_count),
        running_count: count(s.running_count),
        minimum_healthy_percent: dc
            .and_then(|d| d.minimum_healthy_percent)
            .map(count)
            .unwrap_or(100),
        maximum_percent: dc.and_then(|d| d.maximum_percent).map(count).unwrap_or(200),
        deployments: s
            .deployments
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|d| Deployment {
                id: d.id.clone().unwrap_or_default(),
                status: match d.status.as_deref() {
                    Some("PRIMARY") => DeploymentStatus::Primary,
                    Some("ACTIVE") => DeploymentStatus::Active,
                    _ => DeploymentStatus::Inactive,
                },
                task_definition: d.task_definition.clone().unwrap_or_default(),
                desired_count: count(d.desired_count),
                running_count: count(d.running_count),
                pending_count: count(d.pending_count),
                failed_tasks: count(d.failed_tasks),
                rollout_state: d.rollout_state.as_ref().and_then(|r| match r.as_str() {
                    "IN_PROGRESS" => Some(RolloutState::InProgress),
                    "COMPLETED" => Some(RolloutState::Completed),
                    "FAILED" => Some(RolloutState::Failed),
                    _ => None,
                }),
                rollout_state_reason: d.rollout_state_reason.clone(),
                created_at: d
                    .created_at
                    .map(system_time)
                    .unwrap_or(SystemTime::UNIX_EPOCH),
            })
            .collect(),
        tasks: Vec::new(),
        stopped: Vec::new(),
        target_groups: s
            .load_balancers
            .as_deref()
            .unwrap_or_default()
            .iter()
            .filter_map(|lb| lb.target_group_arn.clone())
            .collect(),
    }
}

/// A described task: one ECS wants running, or one that has stopped.
enum Observed {
    Wanted(TaskSnapshot),
    Stopped(StoppedTask),
}

fn observed_task(task: aws_sdk_ecs::types::Task) -> Option<Observed> {
    let task_definition = task.task_definition_arn?;
    if task.desired_status.as_deref() == Some("STOPPED") {
        return Some(Observed::Stopped(StoppedTask {
            task_definition,
            started_by: task.started_by,
            stopped_reason: task.stopped_reason,
            stop_code: task.stop_code.map(|c| c.as_str().to_string()),
            created_at: task
                .created_at
                .map(system_time)
                .unwrap_or(SystemTime::UNIX_EPOCH),
        }));
    }
    Some(Observed::Wanted(TaskSnapshot {
        task_definition,
        last_status: task.last_status.unwrap_or_default(),
    }))
}

/// `UpdateStack`/`CreateChangeSet` parameters: a value, or `UsePreviousValue`.
fn cfn_parameters(parameters: &[StackParameter]) -> Vec<Parameter> {
    parameters
        .iter()
        .map(|p| {
            Parameter::builder()
                .parameter_key(&p.key)
                .set_parameter_value(p.value.clone())
                .set_use_previous_value(p.value.is_none().then_some(true))
                .build()
        })
        .collect()
}

fn count(n: i32) -> u32 {
    u32::try_from(n).unwrap_or(0)
}

fn system_time(t: aws_sdk_ecs::primitives::DateTime) -> SystemTime {
    let secs = u64::try_from(t.secs()).unwrap_or(0);
    SystemTime::UNIX_EPOCH + Duration::new(secs, t.subsec_nanos())
}

fn info(arn: &str, td: &TaskDefinition) -> TaskDefinitionInfo {
    let labels = td
        .container_definitions
        .as_deref()
        .and_then(|c| c.first())
        .and_then(|c| c.docker_labels.as_ref());
    TaskDefinitionInfo {
        arn: arn.to_string(),
        family: td.family.clone().unwrap_or_default(),
        revision: count(td.revision),
        labels: crate::model::read_labels()
            .filter_map(|label| Some((label.to_string(), labels?.get(label)?.clone())))
            .collect(),
    }
}

/// The revision to register: `base` with `label` set on its first container, and without the
/// fields ECS assigns at registration.
fn relabelled(
    base: &TaskDefinition,
    label: &str,
    value: &str,
) -> Result<TaskDefinition, RackError> {
    let mut td = registered_fields(base);
    let first = td
        .container_definitions
        .as_mut()
        .and_then(|c| c.first_mut())
        .ok_or_else(|| RackError::RevisionMismatch {
            base: base.task_definition_arn.clone().unwrap_or_default(),
            new: String::new(),
            field: "containerDefinitions (the revision has no container)".into(),
        })?;
    first
        .docker_labels
        .get_or_insert_with(Default::default)
        .insert(label.to_string(), value.to_string());
    Ok(td)
}

/// A task definition without the fields ECS sets at registration.
fn registered_fields(td: &TaskDefinition) -> TaskDefinition {
    let mut t = td.clone();
    t.task_definition_arn = None;
    t.revision = 0;
    t.status = None;
    t.requires_attributes = None;
    t.compatibilities = None;
    t.registered_at = None;
    t.deregistered_at = None;
    t.delete_requested_at = None;
    t.registered_by = None;
    t
}

macro_rules! first_difference {
    ($a:expr, $b:expr, $prefix:expr; $($field:ident => $name:literal),* $(,)?) => {{
        let (a, b) = ($a, $b);
        None$(.or_else(|| (a.$field != b.$field).then(|| format!("{}{}", $prefix, $name))))*
    }};
}

/// The first field (by its ECS name) in which `stored` differs from `want`, if any. Values
/// are never included: they may be secrets.
fn difference(
    want: &TaskDefinition,
    want_tags: &[Tag],
    stored: &TaskDefinition,
    stored_tags: &[Tag],
) -> Option<String> {
    let stored = registered_fields(stored);
    let task = first_difference!(want, &stored, "";
        family => "family",
        task_role_arn => "taskRoleArn",
        execution_role_arn => "executionRoleArn",
        network_mode => "networkMode",
        volumes => "volumes",
        placement_constraints => "placementConstraints",
        requires_compatibilities => "requiresCompatibilities",
        runtime_platform => "runtimePlatform",
        cpu => "cpu",
        memory => "memory",
        pid_mode => "pidMode",
        ipc_mode => "ipcMode",
        proxy_configuration => "proxyConfiguration",
        ephemeral_storage => "ephemeralStorage",
        enable_fault_injection => "enableFaultInjection",
    );
    if task.is_some() {
        return task;
    }
    let (a, b) = (
        want.container_definitions.as_deref().unwrap_or_default(),
        stored.container_definitions.as_deref().unwrap_or_default(),
    );
    if a.len() != b.len() {
        return Some("containerDefinitions (number of containers)".into());
    }
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        if let Some(field) = container_difference(i, x, y) {
            return Some(field);
        }
    }
    let tags = |t: &[Tag]| -> HashSet<(Option<String>, Option<String>)> {
        t.iter().map(|t| (t.key.clone(), t.value.clone())).collect()
    };
    if tags(want_tags) != tags(stored_tags) {
        return Some("tags".into());
    }
    (want != &stored).then(|| "a field of the task definition".into())
}

fn container_difference(
    i: usize,
    a: &ContainerDefinition,
    b: &ContainerDefinition,
) -> Option<String> {
    let prefix = format!("containerDefinitions[{i}].");
    let found: Option<String> = first_difference!(a, b, prefix;
        name => "name", image => "image", repository_credentials => "repositoryCredentials",
        cpu => "cpu", memory => "memory", memory_reservation => "memoryReservation", links => "links",
        port_mappings => "portMappings", essential => "essential", restart_policy => "restartPolicy",
        entry_point => "entryPoint", command => "command", environment => "environment",
        environment_files => "environmentFiles", mount_points => "mountPoints", volumes_from => "volumesFrom",
        linux_parameters => "linuxParameters", secrets => "secrets", depends_on => "dependsOn",
        start_timeout => "startTimeout", stop_timeout => "stopTimeout", version_consistency => "versionConsistency",
        hostname => "hostname", user => "user", working_directory => "workingDirectory",
        disable_networking => "disableNetworking", privileged => "privileged",
        readonly_root_filesystem => "readonlyRootFilesystem", dns_servers => "dnsServers",
        dns_search_domains => "dnsSearchDomains", extra_hosts => "extraHosts",
        docker_security_options => "dockerSecurityOptions", interactive => "interactive",
        pseudo_terminal => "pseudoTerminal", docker_labels => "dockerLabels", ulimits => "ulimits",
        log_configuration => "logConfiguration", health_check => "healthCheck", system_controls => "systemControls",
        resource_requirements => "resourceRequirements", firelens_configuration => "firelensConfiguration",
        credential_specs => "credentialSpecs",
    );
    found.or_else(|| (a != b).then(|| format!("containerDefinitions[{i}]")))
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
        assert_eq!(wanted.len(), 36, "{wanted:?}");
        wanted.insert("iam:PassRole".into());
        wanted.insert("ecs:TagResource".into());
        // S3 encrypts and decrypts the Settings bucket's objects with the rack's KMS key.
        wanted.insert("kms:Decrypt".into());
        wanted.insert("kms:GenerateDataKey".into());
        assert_eq!(granted, wanted);
    }
}
