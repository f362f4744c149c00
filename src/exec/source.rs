//! What exec readiness reads of a rack, one AWS call per method: the `aws` adapter makes the
//! call, the `sim` adapter answers from the simulated rack's apps. Batching, pagination of the
//! listing and caching are [`super::discover`]'s, the same for both.

use std::collections::BTreeMap;

use async_trait::async_trait;

use super::network::{Endpoint, RouteTable, SecurityGroup, TaskNetwork};
use super::permissions::{Access, ExecConfig, Grant};
use super::Fact;
use crate::rack::RackError;

/// The AWS operations behind the methods of [`ExecSource`] (a role check is one
/// `SimulatePrincipalPolicy` where it is allowed), as the simulated rack counts them.
pub const OPERATIONS: &[&str] = &[
    "DescribeStacks",
    "ListStackResources",
    "DescribeServices",
    "ListTasks",
    "DescribeTasks",
    "DescribeContainerInstances",
    "DescribeClusters",
    "DescribeTaskDefinition",
    "SimulatePrincipalPolicy",
    "DescribeInstances",
    "DescribeNetworkInterfaces",
    "DescribeRouteTables",
    "DescribeNatGateways",
    "DescribeVpcEndpoints",
    "DescribeSecurityGroups",
];

/// A CloudFormation stack as `DescribeStacks` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StackFacts {
    pub name: String,
    /// `LastUpdatedTime` (else the creation time): what is read of the stack is kept until it
    /// moves.
    pub updated: Option<String>,
    /// A nested stack (an app's service stacks carry the app's tags too).
    pub nested: bool,
    pub tags: BTreeMap<String, String>,
    pub outputs: BTreeMap<String, String>,
    pub parameters: BTreeMap<String, String>,
}

/// One page of stacks and the token of the next.
pub type StackPage = (Vec<StackFacts>, Option<String>);

/// An ECS service as `DescribeServices` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceFacts {
    pub arn: String,
    pub name: String,
    /// The service starts new tasks with `enableExecuteCommand`.
    pub exec_enabled: bool,
}

/// A running task as `DescribeTasks` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskInfo {
    pub arn: String,
    /// `service:NAME` for a service's task.
    pub group: Option<String>,
    /// `convox.APP` for a one-off `convox run` task.
    pub started_by: Option<String>,
    pub task_definition: String,
    /// `PENDING`, `ACTIVATING`, `RUNNING`...: only a running task can be exec'd into.
    pub last_status: String,
    pub exec_enabled: bool,
    /// `FARGATE` or `EC2`.
    pub launch_type: String,
    pub platform_version: Option<String>,
    pub container_instance: Option<String>,
    /// The `ExecuteCommandAgent` managed agent of the task's containers: the first one not
    /// `RUNNING`, else a running one (status, reason).
    pub exec_agent: Option<(String, Option<String>)>,
    /// The task's own network interface (`awsvpc`), from its attachment.
    pub network_interface: Option<String>,
    /// Containers whose overrides set `AWS_ACCESS_KEY_ID` or `AWS_SECRET_ACCESS_KEY` (names
    /// only: the values are never kept).
    pub override_credentials: Vec<String>,
    /// The task role the task was started with in place of its task definition's.
    pub role_override: Option<String>,
}

/// A container instance as `DescribeContainerInstances` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InstanceFacts {
    pub agent_version: Option<String>,
    /// The EC2 instance it runs on.
    pub ec2_instance: Option<String>,
}

/// What a task definition says that matters to ECS Exec.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskDefinitionFacts {
    /// Some container has `readonlyRootFilesystem`.
    pub readonly_root: bool,
    pub task_role: Option<String>,
    /// Containers whose environment or secrets set `AWS_ACCESS_KEY_ID` or
    /// `AWS_SECRET_ACCESS_KEY` (names only).
    pub credentials: Vec<String>,
}

/// The environment variables that make the SSM agent use other credentials than the task
/// role's.
pub const CREDENTIAL_VARIABLES: [&str; 3] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_ACCESS_KEY",
];

/// The read calls exec readiness makes.
#[async_trait]
pub trait ExecSource: Send + Sync {
    /// One page of the region's stacks (`DescribeStacks`).
    async fn stacks(&self, next: Option<String>) -> Result<StackPage, RackError>;

    /// The ECS services of a stack that lists them in no output: the physical ids of its
    /// `AWS::ECS::Service` and `Custom::ECSService` resources (`ListStackResources`, every page).
    async fn stack_services(&self, stack: &str) -> Result<Vec<String>, RackError>;

    /// At most 10 services (`DescribeServices`).
    async fn services(
        &self,
        cluster: &str,
        arns: &[String],
    ) -> Result<Vec<ServiceFacts>, RackError>;

    /// One page of the cluster's running tasks (`ListTasks`, up to 100).
    async fn list_tasks(
        &self,
        cluster: &str,
        next: Option<String>,
    ) -> Result<(Vec<String>, Option<String>), RackError>;

    /// At most 100 tasks (`DescribeTasks`).
    async fn tasks(&self, cluster: &str, arns: &[String]) -> Result<Vec<TaskInfo>, RackError>;

    /// At most 100 container instances (`DescribeContainerInstances`), by ARN.
    async fn container_instances(
        &self,
        cluster: &str,
        arns: &[String],
    ) -> Result<BTreeMap<String, InstanceFacts>, RackError>;

    /// The cluster's `executeCommandConfiguration` (`DescribeClusters`).
    async fn exec_config(&self, cluster: &str) -> Result<ExecConfig, RackError>;

    /// `DescribeTaskDefinition`.
    async fn task_definition(&self, arn: &str) -> Result<TaskDefinitionFacts, RackError>;

    /// What the role's policies (and permissions boundary) say to `access`:
    /// `iam:SimulatePrincipalPolicy`, else the policies read and evaluated. `Unknown` when they
    /// cannot decide (a condition, a read denied), naming why.
    async fn role_grant(&self, role_arn: &str, access: &Access) -> Result<Fact<Grant>, RackError>;

    /// The networks of at most 100 EC2 instances (`DescribeInstances`), by instance id.
    async fn instance_networks(
        &self,
        ids: &[String],
    ) -> Result<BTreeMap<String, TaskNetwork>, RackError>;

    /// The networks of at most 100 network interfaces (`DescribeNetworkInterfaces`), by id.
    async fn interface_networks(
        &self,
        ids: &[String],
    ) -> Result<BTreeMap<String, TaskNetwork>, RackError>;

    /// The route tables of the VPCs (`DescribeRouteTables`, every page).
    async fn route_tables(&self, vpcs: &[String]) -> Result<Vec<RouteTable>, RackError>;

    /// The interface endpoints of the VPCs (`DescribeVpcEndpoints`, every page).
    async fn endpoints(&self, vpcs: &[String]) -> Result<Vec<Endpoint>, RackError>;

    /// Security groups by id (`DescribeSecurityGroups`).
    async fn security_groups(&self, ids: &[String]) -> Result<Vec<SecurityGroup>, RackError>;

    /// The region, for the endpoint service names.
    fn region(&self) -> String;

    /// What this source's answers cannot account for (shown with the verdicts).
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }
}
