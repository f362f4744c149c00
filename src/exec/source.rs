//! What exec readiness reads of a rack, one AWS call per method: the `aws` adapter makes the
//! call, the `sim` adapter answers from the simulated rack's apps. Batching, pagination of the
//! listing and caching are [`super::discover`]'s, the same for both.

use std::collections::BTreeMap;

use async_trait::async_trait;

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
    "DescribeTaskDefinition",
    "SimulatePrincipalPolicy",
    "DescribeRouteTables",
    "DescribeVpcEndpoints",
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
}

/// What a task definition says that matters to ECS Exec.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskDefinitionFacts {
    /// Some container has `readonlyRootFilesystem`.
    pub readonly_root: bool,
    pub task_role: Option<String>,
}

/// The VPC as `DescribeRouteTables` and `DescribeVpcEndpoints` show it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VpcFacts {
    /// Route tables found among those asked for.
    pub route_tables: usize,
    /// Of those, tables whose default route (`0.0.0.0/0`) goes to a NAT gateway or instance.
    pub nat_routes: usize,
    /// Service names of the VPC's available interface endpoints with private DNS.
    pub endpoints: Vec<String>,
}

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

    /// The ECS agent version of at most 100 container instances (`DescribeContainerInstances`).
    async fn agent_versions(
        &self,
        cluster: &str,
        arns: &[String],
    ) -> Result<BTreeMap<String, String>, RackError>;

    /// `DescribeTaskDefinition`.
    async fn task_definition(&self, arn: &str) -> Result<TaskDefinitionFacts, RackError>;

    /// Whether the role allows every one of `actions` on any resource (`None`: it cannot be
    /// told). `iam:SimulatePrincipalPolicy`, else the role's own policies, evaluated.
    async fn role_allows(
        &self,
        role_arn: &str,
        actions: &[&str],
    ) -> Result<Option<bool>, RackError>;

    /// The route tables (by id) and the interface endpoints of the VPC.
    async fn vpc(&self, vpc: &str, route_tables: &[String]) -> Result<VpcFacts, RackError>;

    /// The region, for the endpoint service names.
    fn region(&self) -> String;
}
