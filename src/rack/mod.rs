//! The boundary: what the controller can observe of a rack and do to it.
//!
//! Each method maps onto the CloudFormation or ECS calls a real rack needs; the `aws` adapter
//! makes those calls, the `sim` adapter answers from an embedded simulated rack.

use async_trait::async_trait;
use thiserror::Error;

use std::collections::BTreeSet;

use crate::model::{
    ServiceSnapshot, ServiceTasks, StackParameter, StackSnapshot, TaskDefinitionInfo, TaskRead,
    UpdateEvents,
};
use crate::spec::Declarations;
use crate::templates::TemplateRef;

pub mod aws;
pub mod aws_exec;
pub mod fenced;
pub mod query;
pub mod sdk;
pub mod sim;

/// The operations a rack offers the controller.
#[async_trait]
pub trait Rack: Send + Sync {
    /// The stack's status, parameters, outputs and last update (`DescribeStacks`).
    async fn describe_stack(&self) -> Result<StackSnapshot, RackError>;

    /// The physical id of the stack's resource `logical` (`DescribeStackResource`);
    /// [`RackError::MissingResource`] when the stack has none. Physical ids change only with
    /// the stack, so callers keep them until `last_updated` or the stack's state does.
    async fn stack_resource(&self, logical: &str) -> Result<String, RackError>;

    /// The named services of the cluster with their deployments (`DescribeServices`, 10 per
    /// call). Their tasks are left empty: see [`Rack::service_tasks`].
    async fn describe_services(
        &self,
        cluster: &str,
        services: &[String],
    ) -> Result<Vec<ServiceSnapshot>, RackError>;

    /// The tasks of each named service: those ECS wants running and, where asked, those
    /// stopped recently (`ListTasks` per service and status, then `DescribeTasks` 100 at a
    /// time). In the order asked.
    async fn service_tasks(
        &self,
        cluster: &str,
        reads: &[TaskRead],
    ) -> Result<Vec<ServiceTasks>, RackError>;

    /// A revision's identity and managed labels (`DescribeTaskDefinition`).
    async fn describe_task_definition(&self, arn: &str) -> Result<TaskDefinitionInfo, RackError>;

    /// A revision identical to `base` except that `label` holds `value`: an existing one of
    /// the family (left behind by an earlier run that stopped between registering and
    /// updating the service) when there is one, else a newly registered copy
    /// (`RegisterTaskDefinition`).
    async fn relabel(&self, base: &str, label: &str, value: &str) -> Result<Relabelled, RackError>;

    /// Points the service at `task_definition`, starting a rolling deployment (`UpdateService`).
    async fn update_service(
        &self,
        cluster: &str,
        service: &str,
        task_definition: &str,
    ) -> Result<(), RackError>;

    /// What the stack's running template declares about its parameters (`GetTemplate`, read
    /// from the template body: `GetTemplateSummary` leaves out patterns and bounds).
    async fn stack_declarations(&self) -> Result<Declarations, RackError>;

    /// The parameters a rack template declares and the capabilities it needs
    /// (`GetTemplateSummary`).
    async fn template_summary(&self, template: &TemplateRef) -> Result<TemplateSummary, RackError>;

    /// Updates the rack stack (`UpdateStack`, with the request's idempotency token). An
    /// update with nothing to change, and an update already under way with this token (a
    /// retry after a lost response), are successes.
    async fn update_stack(
        &self,
        request: &StackUpdateRequest,
    ) -> Result<StackUpdateOutcome, RackError>;

    /// What CloudFormation would change for `request`, without changing anything: a change
    /// set created, described and deleted (`CreateChangeSet`, `DescribeChangeSet`,
    /// `DeleteChangeSet`).
    async fn preview_stack_update(
        &self,
        request: &StackUpdateRequest,
    ) -> Result<Vec<ResourceChange>, RackError>;

    /// Cancels the stack update in progress; CloudFormation rolls it back
    /// (`CancelUpdateStack`).
    async fn cancel_update_stack(&self) -> Result<(), RackError>;

    /// Why the stack's latest update failed: the first resource that failed, with the reason
    /// CloudFormation gave (`DescribeStackEvents`, page by page back to the update's start).
    async fn stack_failure_reason(&self) -> Result<Option<String>, RackError>;

    /// The `ClientRequestToken` the stack's latest update was started with: the token of the
    /// stack's own `UPDATE_IN_PROGRESS` event (`DescribeStackEvents`, page by page back to
    /// it), and when the stack began rolling it back. [`crate::model::UpdateToken::Unknown`] when the start
    /// is not among the pages read.
    async fn latest_update(&self) -> Result<UpdateEvents, RackError>;
}

/// What `GetTemplateSummary` says of a template.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TemplateSummary {
    /// Declared parameter names.
    pub parameters: BTreeSet<String>,
    /// Capabilities an update to it must acknowledge (`CAPABILITY_IAM`, ...).
    pub capabilities: Vec<String>,
}

/// A resource a stack update would change, as a change set lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceChange {
    /// `Add`, `Modify`, `Remove`...
    pub action: String,
    pub logical_id: String,
    pub resource_type: String,
    /// `True`, `False` or `Conditional` for a modification.
    pub replacement: Option<String>,
}

/// One `UpdateStack`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackUpdateRequest {
    /// The template to update to; `None` keeps the stack's (`UsePreviousTemplate`).
    pub template: Option<TemplateRef>,
    pub parameters: Vec<StackParameter>,
    pub capabilities: Vec<String>,
    /// `ClientRequestToken`: the same for every retry of this one update.
    pub token: String,
    /// A CloudFormation service role the update runs with (`RoleARN`), if configured.
    pub role_arn: Option<String>,
}

/// How an `UpdateStack` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StackUpdateOutcome {
    /// CloudFormation is updating the stack.
    Started,
    /// "No updates are to be performed": the stack already is what was asked.
    NoChange,
}

/// The revision [`Rack::relabel`] found or registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relabelled {
    pub arn: String,
    /// The revision's identity and labels, so it need not be described again.
    pub info: TaskDefinitionInfo,
    /// Found among the family's revisions rather than registered.
    pub reused: bool,
}

/// What kind of failure an AWS (or simulated) call had; decides retry and the operator hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiErrorKind {
    /// Throttling or a server-side error: retried with backoff.
    Transient,
    /// The credentials lack a permission.
    AccessDenied,
    /// The resource does not exist.
    NotFound,
    /// The request was rejected; retrying as is will not help.
    Rejected,
}

/// AWS error codes that mean "slow down": the request was not processed.
pub const THROTTLING_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "RequestThrottled",
];

/// An error talking to the rack. Every variant says what failed, on which resource, and what
/// to do about it.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum RackError {
    #[error("stack {stack} not found: check `rack` in the config and the AWS region and account")]
    StackNotFound { stack: String },

    #[error("stack {stack} has no resource {logical}: is it a Convox rack? check `services` in the config")]
    MissingResource { stack: String, logical: String },

    #[error("service {service} not found in cluster {cluster}: the stack lists it, so check the cluster and region")]
    ServiceNotFound { cluster: String, service: String },

    #[error("{service} {operation} on {resource} failed: {message}{}", hint(*kind))]
    Api {
        service: &'static str,
        operation: &'static str,
        resource: String,
        kind: ApiErrorKind,
        message: String,
    },

    #[error("the reconcile did not finish within {} (timeouts.reconcile): an AWS call hangs or the rack answers too slowly; abandoned and retried with backoff", humantime::format_duration(*after))]
    Deadline { after: std::time::Duration },

    #[error("not written: {message}")]
    NotLeader { message: String },

    #[error("{resource} changed since this reconcile observed it ({what}): not written; the next reconcile starts from what it sees")]
    ChangedSinceObserved { resource: String, what: String },

    #[error("the stack update was not sent: its token could not be written down first ({reason}), and without it the controller could not tell the update is its own after a restart; check that the status document can be written")]
    TokenNotRecorded { reason: String },

    #[error("new revision {new} of {base} differs from it in {field}, not only in the label: not rolling it out; report this as a bug")]
    RevisionMismatch {
        base: String,
        new: String,
        field: String,
    },
}

fn hint(kind: ApiErrorKind) -> &'static str {
    match kind {
        ApiErrorKind::Transient => " (transient; retrying with backoff)",
        ApiErrorKind::AccessDenied => {
            " (grant the permission to the controller's role: see deploy/iam-policy.json)"
        }
        ApiErrorKind::NotFound => " (the resource is gone: check the rack and the config)",
        ApiErrorKind::Rejected => " (the request was rejected; fix the cause before it is retried)",
    }
}

impl RackError {
    /// Worth trying again as is: throttling, a server error, a timeout.
    pub fn is_transient(&self) -> bool {
        self.outcome() == "transient_error"
    }

    /// A throttling answer: the request was refused before it was processed, so even a
    /// write that is not idempotent can be sent again.
    pub fn throttled(&self) -> bool {
        match self {
            RackError::Api {
                kind: ApiErrorKind::Transient,
                message,
                ..
            } => THROTTLING_CODES
                .iter()
                .any(|c| message.split(':').next() == Some(*c)),
            _ => false,
        }
    }

    /// A short, fixed identifier of the outcome (used as a metric label).
    pub fn outcome(&self) -> &'static str {
        match self {
            RackError::Api {
                kind: ApiErrorKind::Transient,
                ..
            }
            | RackError::Deadline { .. } => "transient_error",
            RackError::Api {
                kind: ApiErrorKind::AccessDenied,
                ..
            } => "access_denied",
            RackError::StackNotFound { .. }
            | RackError::MissingResource { .. }
            | RackError::ServiceNotFound { .. }
            | RackError::Api {
                kind: ApiErrorKind::NotFound,
                ..
            } => "not_found",
            RackError::Api {
                kind: ApiErrorKind::Rejected,
                ..
            }
            | RackError::RevisionMismatch { .. }
            | RackError::TokenNotRecorded { .. }
            | RackError::NotLeader { .. }
            | RackError::ChangedSinceObserved { .. } => "error",
        }
    }
}
