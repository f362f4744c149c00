//! The simulated rack's apps, for exec readiness: app stacks tagged as Convox tags them, their
//! ECS services and running tasks (service tasks and a one-off `convox run` task), container
//! instances with their agent versions, task definitions, task roles, and the rack's VPC.
//!
//! The demo set shows every path: a Generation 1 app; Generation 2 tasks started before and
//! after ECS Exec was enabled for their service, and a service without it; instances with an
//! old agent and with none reported; Fargate tasks on an old platform, with a stopped
//! `ExecuteCommandAgent` and started before enable (no Docker to fall back to); task roles
//! without the `ssmmessages` actions, held back by a permissions boundary, and one whose
//! policies cannot be read; a read-only root filesystem; AWS keys in a container's
//! environment. `apps: N` in the sim settings generates N uniform apps instead (3 services
//! of 3 tasks each), for benchmarks.
//!
//! The rack's VPC: a public subnet routed to an internet gateway (a public rack's tasks have
//! public IPs there), two private subnets routed to NAT gateways or not as `network` says, and
//! the interface endpoints `network` lists, whose security group admits the VPC on 443.

use std::collections::BTreeMap;

use async_trait::async_trait;

use super::{SimRack, ACCOUNT};
use crate::exec::network::{
    endpoint_service, Endpoint, Ingress, RouteTable, SecurityGroup, Target, TaskNetwork,
};
use crate::exec::permissions::{Access, ExecConfig, Grant};
use crate::exec::source::{
    ExecSource, InstanceFacts, ServiceFacts, StackFacts, StackPage, TaskDefinitionFacts, TaskInfo,
};
use crate::exec::Fact;
use crate::rack::{ApiErrorKind, RackError};

/// Stacks per `DescribeStacks` page and tasks per `ListTasks` page, as AWS pages them.
const STACKS_PER_PAGE: usize = 100;
const TASKS_PER_PAGE: usize = 100;

/// The rack's VPC, its public subnet and its private subnets (as the rack's outputs name them).
pub(super) const VPC: &str = "vpc-0123456789abcdef0";
const PUBLIC_SUBNET: &str = "subnet-public";
const PRIVATE_SUBNETS: [&str; 2] = ["subnet-0a1b2c3d", "subnet-1a2b3c4d"];

/// A task role: what its policies and boundary allow, or that they cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SimRole {
    Allows,
    Lacks,
    BoundaryBlocks,
    Unreadable,
}

/// What the apps are made of.
#[derive(Default)]
pub(super) struct SimApps {
    /// The app stacks and their services' nested stacks, in the order `DescribeStacks` lists
    /// them.
    stacks: Vec<SimStack>,
    /// The tags of each app, which its nested stacks carry too.
    tag_sets: Vec<BTreeMap<String, String>>,
    /// Services of stacks without service outputs (Generation 1), by stack.
    resources: BTreeMap<String, Vec<String>>,
    services: BTreeMap<String, ServiceFacts>,
    /// The running tasks, kept small (a benchmark's rack has thousands): what
    /// `DescribeTasks` shows of one is made when it is asked for ([`SimApps::info`]).
    tasks: Vec<SimTask>,
    /// Task definition ARNs and service names the tasks refer to by index.
    definitions: Vec<String>,
    service_names: Vec<String>,
    app_names: Vec<String>,
    region: String,
    cluster: String,
    task_definitions: BTreeMap<String, TaskDefinitionFacts>,
    roles: BTreeMap<String, SimRole>,
    /// Container instance ARN → agent version (none: not reported), EC2 instance id.
    instances: BTreeMap<String, (Option<String>, String)>,
}

/// An app stack, or a service's nested stack (named, with the tags of `tag_sets[tags]`).
enum SimStack {
    App(StackFacts),
    Nested { name: String, tags: usize },
}

impl SimApps {
    /// What `DescribeStacks` shows of `s`.
    fn stack(&self, s: &SimStack) -> StackFacts {
        match s {
            SimStack::App(facts) => facts.clone(),
            SimStack::Nested { name, tags } => StackFacts {
                name: name.clone(),
                nested: true,
                tags: self.tag_sets[*tags].clone(),
                ..StackFacts::default()
            },
        }
    }
}

/// A running task: its number (its id and ARN), its task definition, the service that
/// started it (else the app whose `convox run` did), and how it runs.
struct SimTask {
    number: u64,
    definition: usize,
    service: Option<usize>,
    run_of: Option<usize>,
    how: Task<'static>,
}

/// A task's id from its number.
fn task_id(number: u64) -> String {
    format!("{:032x}", 0xa11_0000_u64 + number)
}

impl SimApps {
    /// The ARN of the cluster's `kind` (`task`, `service`, `container-instance`) `name`.
    fn in_cluster(&self, kind: &str, name: &str) -> String {
        let (region, cluster) = (&self.region, &self.cluster);
        format!("arn:aws:ecs:{region}:{ACCOUNT}:{kind}/{cluster}/{name}")
    }

    fn task_arn(&self, number: u64) -> String {
        self.in_cluster("task", &task_id(number))
    }

    /// The task `arn` names, if it is one of the cluster's.
    fn task(&self, arn: &str) -> Option<&SimTask> {
        let id = arn.rsplit('/').next()?;
        let number = u64::from_str_radix(id, 16).ok()?.checked_sub(0xa11_0000)?;
        let t = self
            .tasks
            .get(usize::try_from(number).ok()?.checked_sub(1)?)?;
        (self.task_arn(t.number) == arn).then_some(t)
    }

    /// What `DescribeTasks` shows of `t`.
    fn info(&self, t: &SimTask) -> TaskInfo {
        let how = t.how;
        let id = task_id(t.number);
        let instance =
            (how.platform.is_none()).then(|| self.in_cluster("container-instance", how.instance));
        let started_by = match t.run_of {
            Some(app) => format!("convox.{}", self.app_names[app]),
            None => "ecs-svc/1234567890".into(),
        };
        TaskInfo {
            arn: self.task_arn(t.number),
            started_by: Some(started_by),
            group: t
                .service
                .map(|s| format!("service:{}", self.service_names[s])),
            task_definition: self.definitions[t.definition].clone(),
            last_status: "RUNNING".into(),
            exec_enabled: how.exec,
            launch_type: if how.platform.is_some() {
                "FARGATE"
            } else {
                "EC2"
            }
            .into(),
            platform_version: how.platform.map(str::to_string),
            network_interface: how.platform.map(|_| format!("eni-{id}")),
            container_instance: instance,
            exec_agent: how
                .agent
                .map(|(s, r)| (s.to_string(), r.map(str::to_string))),
            override_credentials: Vec::new(),
            role_override: None,
        }
    }
}

/// One service of a demo app: name, service has enableExecuteCommand, its tasks, and its
/// task definition: a read-only root, AWS keys in the environment.
struct Svc<'a> {
    name: &'a str,
    exec: bool,
    tasks: Vec<Task<'a>>,
    readonly: bool,
    credentials: bool,
}

fn svc<'a>(name: &'a str, exec: bool, tasks: Vec<Task<'a>>) -> Svc<'a> {
    Svc {
        name,
        exec,
        tasks,
        readonly: false,
        credentials: false,
    }
}

/// One task: exec enabled, launch (`None`: EC2 on the instance, else a Fargate platform),
/// container instance, managed agent status and reason.
#[derive(Clone, Copy)]
struct Task<'a> {
    exec: bool,
    platform: Option<&'a str>,
    instance: &'a str,
    agent: Option<(&'a str, Option<&'a str>)>,
}

const RUNNING: Option<(&str, Option<&str>)> = Some(("RUNNING", None));

fn ec2(exec: bool, instance: &str) -> Task<'_> {
    Task {
        exec,
        platform: None,
        instance,
        agent: if exec { RUNNING } else { None },
    }
}

fn fargate<'a>(platform: &'a str, agent: Option<(&'a str, Option<&'a str>)>) -> Task<'a> {
    Task {
        exec: true,
        platform: Some(platform),
        instance: "",
        agent,
    }
}

impl SimApps {
    /// The demo apps, or `generated` uniform ones.
    pub(super) fn new(rack: &str, region: &str, cluster: &str, generated: usize) -> SimApps {
        let mut apps = SimApps {
            region: region.to_string(),
            cluster: cluster.to_string(),
            ..SimApps::default()
        };
        let mut b = Builder {
            rack,
            region,
            apps: &mut apps,
            next: 0,
        };
        if generated > 0 {
            b.uniform(generated);
        } else {
            b.demo();
        }
        apps
    }
}

struct Builder<'a> {
    rack: &'a str,
    region: &'a str,
    apps: &'a mut SimApps,
    next: u64,
}

impl Builder<'_> {
    /// The demo apps: every path and reason.
    fn demo(&mut self) {
        let b = self;
        b.instances(&[
            ("i-new", Some("1.89.1")),
            ("i-old", Some("1.48.0")),
            ("i-bare", None),
        ]);
        let legacy = svc("web", false, vec![ec2(false, "i-new"), ec2(false, "i-new")]);
        b.app("legacy", 1, SimRole::Allows, vec![legacy], &[]);
        let shop = vec![
            svc(
                "web",
                true,
                vec![ec2(false, "i-new"), ec2(false, "i-new"), ec2(true, "i-new")],
            ),
            svc(
                "worker",
                true,
                vec![ec2(true, "i-old"), ec2(true, "i-bare")],
            ),
            svc("cron", false, vec![ec2(false, "i-new")]),
        ];
        b.app("shop", 2, SimRole::Allows, shop, &[ec2(true, "i-new")]);
        let stopped = Some(("STOPPED", Some("the agent could not start: InternalError")));
        let mut before = fargate("1.4.0", None);
        before.exec = false;
        let billing = svc(
            "api",
            true,
            vec![
                fargate("1.4.0", RUNNING),
                fargate("1.4.0", stopped),
                fargate("1.3.0", None),
                before,
            ],
        );
        b.app("billing", 2, SimRole::Allows, vec![billing], &[]);
        let ready = || vec![fargate("1.4.0", RUNNING)];
        b.app(
            "reports",
            2,
            SimRole::Lacks,
            vec![svc("web", true, ready())],
            &[],
        );
        b.app(
            "audit",
            2,
            SimRole::BoundaryBlocks,
            vec![svc("web", true, ready())],
            &[],
        );
        b.app(
            "metrics",
            2,
            SimRole::Unreadable,
            vec![svc("web", true, ready())],
            &[],
        );
        let mut files = svc("web", true, ready());
        files.readonly = true;
        let mut sync = svc("sync", true, ready());
        sync.credentials = true;
        b.app("uploads", 2, SimRole::Allows, vec![files, sync], &[]);
    }

    /// `n` uniform apps of 3 services with 3 tasks each, all ready for ECS Exec.
    fn uniform(&mut self, n: usize) {
        self.instances(&[("i-0", Some("1.89.1"))]);
        for i in 0..n {
            let uniform = |n| svc(n, true, (0..3).map(|_| ec2(true, "i-0")).collect());
            let name = format!("app{i:03}");
            let services = vec![uniform("web"), uniform("worker"), uniform("cron")];
            self.app(&name, 2, SimRole::Allows, services, &[]);
        }
    }

    fn instances(&mut self, agents: &[(&str, Option<&str>)]) {
        for (id, version) in agents {
            let arn = self.apps.in_cluster("container-instance", id);
            let ec2 = format!("{id}-0123456789");
            self.apps
                .instances
                .insert(arn, (version.map(str::to_string), ec2));
        }
    }

    /// An app stack with its services, their task definitions and tasks, and one-off tasks.
    fn app(
        &mut self,
        name: &str,
        generation: u8,
        role_kind: SimRole,
        services: Vec<Svc<'static>>,
        runs: &[Task<'static>],
    ) {
        let stack = format!("{}-{name}", self.rack);
        let role = format!("arn:aws:iam::{ACCOUNT}:role/convox/{stack}-ServiceRole");
        self.apps.roles.insert(role.clone(), role_kind);
        let mut facts = StackFacts {
            name: stack.clone(),
            updated: Some("1".into()),
            tags: BTreeMap::from([
                ("System".to_string(), "convox".to_string()),
                ("Rack".to_string(), self.rack.to_string()),
                ("Type".to_string(), "app".to_string()),
                ("Name".to_string(), name.to_string()),
            ]),
            ..StackFacts::default()
        };
        if generation >= 2 {
            facts.tags.insert("Generation".into(), "2".into());
        }
        let tags = self.apps.tag_sets.len();
        self.apps.tag_sets.push(facts.tags.clone());
        for svc in &services {
            let nested = format!("{stack}-Service{}-{:04}", capitalized(svc.name), self.next);
            let service_name = format!("{nested}-Service-1");
            let arn = self.apps.in_cluster("service", &service_name);
            if generation >= 2 {
                let key = format!("Service{}Service", capitalized(svc.name));
                facts.outputs.insert(key, arn.clone());
                // Each service is a nested stack, with the app's tags.
                let nested = SimStack::Nested { name: nested, tags };
                self.apps.stacks.push(nested);
            } else {
                self.apps
                    .resources
                    .entry(stack.clone())
                    .or_default()
                    .push(arn.clone());
            }
            self.apps.services.insert(
                arn.clone(),
                ServiceFacts {
                    arn,
                    name: service_name.clone(),
                    exec_enabled: svc.exec,
                },
            );
            let td = self.task_definition(&format!("{stack}-{}", svc.name), &role, svc);
            for t in &svc.tasks {
                self.task(*t, &td, Some(&service_name), None);
            }
        }
        let td = self.task_definition(
            &format!("{stack}-console"),
            &role,
            &svc("console", true, vec![]),
        );
        for t in runs {
            self.task(*t, &td, None, Some(name));
        }
        self.apps.stacks.push(SimStack::App(facts));
    }

    fn task_definition(&mut self, family: &str, role: &str, svc: &Svc) -> String {
        let arn = format!(
            "arn:aws:ecs:{}:{ACCOUNT}:task-definition/{family}:1",
            self.region
        );
        let container = family.rsplit('-').next().unwrap_or(family).to_string();
        self.apps.task_definitions.insert(
            arn.clone(),
            TaskDefinitionFacts {
                readonly_root: svc.readonly,
                task_role: Some(role.to_string()),
                credentials: if svc.credentials {
                    vec![container]
                } else {
                    vec![]
                },
            },
        );
        arn
    }

    fn task(&mut self, how: Task<'static>, td: &str, service: Option<&str>, run_of: Option<&str>) {
        self.next += 1;
        let index =
            |names: &mut Vec<String>, name: &str| match names.iter().rposition(|n| n == name) {
                Some(i) => i,
                None => {
                    names.push(name.to_string());
                    names.len() - 1
                }
            };
        let apps = &mut *self.apps;
        let task = SimTask {
            number: self.next,
            definition: index(&mut apps.definitions, td),
            service: service.map(|s| index(&mut apps.service_names, s)),
            run_of: run_of.map(|a| index(&mut apps.app_names, a)),
            how,
        };
        apps.tasks.push(task);
    }
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

/// One page of `len` items from the token `next`: the range, and the next token.
fn page_range(
    len: usize,
    next: Option<String>,
    size: usize,
) -> (std::ops::Range<usize>, Option<String>) {
    let start: usize = next.and_then(|n| n.parse().ok()).unwrap_or(0).min(len);
    let end = (start + size).min(len);
    (start..end, (end < len).then(|| end.to_string()))
}

#[async_trait]
impl ExecSource for SimRack {
    async fn stacks(&self, next: Option<String>) -> Result<StackPage, RackError> {
        let mut s = self.lock();
        self.call(
            &mut s,
            "cloudformation",
            "DescribeStacks",
            "stacks of the region",
        )?;
        let rack = StackFacts {
            name: s.settings.rack.clone(),
            updated: Some(s.stack_updates.len().to_string()),
            parameters: s.parameters.clone(),
            outputs: s.outputs(),
            ..StackFacts::default()
        };
        // The rack's own stack first, then the apps' (only the page asked for is copied).
        let (range, rest) = page_range(s.apps.stacks.len() + 1, next, STACKS_PER_PAGE);
        let page = range
            .map(|i| match i {
                0 => rack.clone(),
                i => s.apps.stack(&s.apps.stacks[i - 1]),
            })
            .collect();
        Ok((page, rest))
    }

    async fn stack_services(&self, stack: &str) -> Result<Vec<String>, RackError> {
        let mut s = self.lock();
        self.call(&mut s, "cloudformation", "ListStackResources", stack)?;
        Ok(s.apps.resources.get(stack).cloned().unwrap_or_default())
    }

    async fn services(
        &self,
        cluster: &str,
        arns: &[String],
    ) -> Result<Vec<ServiceFacts>, RackError> {
        let mut s = self.lock();
        self.call(&mut s, "ecs", "DescribeServices", cluster)?;
        Ok(arns
            .iter()
            .filter_map(|a| s.apps.services.get(a).cloned())
            .collect())
    }

    async fn list_tasks(
        &self,
        cluster: &str,
        next: Option<String>,
    ) -> Result<(Vec<String>, Option<String>), RackError> {
        let mut s = self.lock();
        self.call(&mut s, "ecs", "ListTasks", cluster)?;
        let (range, rest) = page_range(s.apps.tasks.len(), next, TASKS_PER_PAGE);
        let arns = s.apps.tasks[range]
            .iter()
            .map(|t| s.apps.task_arn(t.number))
            .collect();
        Ok((arns, rest))
    }

    async fn tasks(&self, cluster: &str, arns: &[String]) -> Result<Vec<TaskInfo>, RackError> {
        let mut s = self.lock();
        self.call(&mut s, "ecs", "DescribeTasks", cluster)?;
        Ok(arns
            .iter()
            .filter_map(|a| s.apps.task(a))
            .map(|t| s.apps.info(t))
            .collect())
    }

    async fn container_instances(
        &self,
        cluster: &str,
        arns: &[String],
    ) -> Result<BTreeMap<String, InstanceFacts>, RackError> {
        let mut s = self.lock();
        self.call(&mut s, "ecs", "DescribeContainerInstances", cluster)?;
        Ok(arns
            .iter()
            .filter_map(|a| {
                let (agent, ec2) = s.apps.instances.get(a)?;
                let facts = InstanceFacts {
                    agent_version: agent.clone(),
                    ec2_instance: Some(ec2.clone()),
                };
                Some((a.clone(), facts))
            })
            .collect())
    }

    async fn exec_config(&self, cluster: &str) -> Result<ExecConfig, RackError> {
        let mut s = self.lock();
        self.call(&mut s, "ecs", "DescribeClusters", cluster)?;
        let region = s.settings.region.clone();
        Ok(ExecConfig {
            cluster_arn: format!("arn:aws:ecs:{region}:{ACCOUNT}:cluster/{cluster}"),
            ..ExecConfig::default()
        })
    }

    async fn task_definition(&self, arn: &str) -> Result<TaskDefinitionFacts, RackError> {
        let mut s = self.lock();
        self.call(&mut s, "ecs", "DescribeTaskDefinition", arn)?;
        Ok(s.apps
            .task_definitions
            .get(arn)
            .cloned()
            .unwrap_or_default())
    }

    async fn role_grant(&self, role_arn: &str, _access: &Access) -> Result<Fact<Grant>, RackError> {
        let mut s = self.lock();
        self.call(&mut s, "iam", "SimulatePrincipalPolicy", role_arn)?;
        Ok(match s.apps.roles.get(role_arn) {
            Some(SimRole::Allows) => Fact::Known(Grant::Allowed),
            Some(SimRole::Lacks) => {
                Fact::Known(Grant::Denied("ssmmessages:* not allowed on *".into()))
            }
            Some(SimRole::BoundaryBlocks) => {
                Fact::Known(Grant::DeniedByBoundary("attached to the role".into()))
            }
            Some(SimRole::Unreadable) => {
                return Err(RackError::Api {
                    service: "iam",
                    operation: "SimulatePrincipalPolicy",
                    resource: role_arn.to_string(),
                    kind: ApiErrorKind::AccessDenied,
                    message: "AccessDenied: not authorized on this role".into(),
                })
            }
            None => Fact::Known(Grant::Denied(format!(
                "the task role {role_arn} no longer exists"
            ))),
        })
    }

    async fn instance_networks(
        &self,
        ids: &[String],
    ) -> Result<BTreeMap<String, TaskNetwork>, RackError> {
        let mut s = self.lock();
        self.call(&mut s, "ec2", "DescribeInstances", "instances")?;
        let known: Vec<&String> = s.apps.instances.values().map(|(_, id)| id).collect();
        let private = s.private();
        Ok(ids
            .iter()
            .filter(|id| known.contains(id))
            .map(|id| (id.clone(), placed(private, "sg-instances")))
            .collect())
    }

    async fn interface_networks(
        &self,
        ids: &[String],
    ) -> Result<BTreeMap<String, TaskNetwork>, RackError> {
        let mut s = self.lock();
        self.call(
            &mut s,
            "ec2",
            "DescribeNetworkInterfaces",
            "network interfaces",
        )?;
        let private = s.private();
        Ok(ids
            .iter()
            .map(|id| (id.clone(), placed(private, "sg-tasks")))
            .collect())
    }

    async fn route_tables(&self, vpcs: &[String]) -> Result<Vec<RouteTable>, RackError> {
        let mut s = self.lock();
        self.call(&mut s, "ec2", "DescribeRouteTables", &vpcs.join(","))?;
        let nat = s.settings.network.nat;
        if nat {
            // The AWS adapter asks whether the NAT gateways are public and available.
            self.call(&mut s, "ec2", "DescribeNatGateways", "nat gateways")?;
        }
        let mut tables = vec![RouteTable {
            id: "rtb-public".into(),
            vpc: VPC.into(),
            main: true,
            subnets: vec![PUBLIC_SUBNET.into()],
            default_route: Some(Target::InternetGateway("igw-0123456789".into())),
        }];
        for subnet in PRIVATE_SUBNETS {
            let suffix = subnet.trim_start_matches("subnet-");
            tables.push(RouteTable {
                id: format!("rtb-{suffix}"),
                vpc: VPC.into(),
                main: false,
                subnets: vec![subnet.into()],
                default_route: nat.then(|| Target::Nat(format!("nat-{suffix}"))),
            });
        }
        Ok(tables)
    }

    async fn endpoints(&self, vpcs: &[String]) -> Result<Vec<Endpoint>, RackError> {
        let mut s = self.lock();
        self.call(&mut s, "ec2", "DescribeVpcEndpoints", &vpcs.join(","))?;
        let region = s.settings.region.clone();
        Ok(s.settings
            .network
            .endpoints
            .iter()
            .map(|e| Endpoint {
                id: format!("vpce-{e}"),
                vpc: VPC.into(),
                service: endpoint_service(&region, e),
                usable: true,
                gateway: false,
                route_tables: Vec::new(),
                groups: vec!["sg-endpoints".into()],
            })
            .collect())
    }

    async fn security_groups(&self, ids: &[String]) -> Result<Vec<SecurityGroup>, RackError> {
        let mut s = self.lock();
        self.call(&mut s, "ec2", "DescribeSecurityGroups", &ids.join(","))?;
        Ok(ids
            .iter()
            .filter(|id| *id == "sg-endpoints")
            .map(|id| SecurityGroup {
                id: id.clone(),
                ingress: vec![Ingress {
                    protocol: "tcp".into(),
                    from_port: Some(443),
                    to_port: Some(443),
                    cidrs: vec!["10.0.0.0/16".into()],
                    groups: Vec::new(),
                }],
            })
            .collect())
    }

    fn region(&self) -> String {
        self.lock().settings.region.clone()
    }
}

/// Where the simulated rack's tasks sit: a private subnet, or the public one with a public IP.
fn placed(private: bool, group: &str) -> TaskNetwork {
    TaskNetwork {
        vpc: VPC.into(),
        subnet: if private {
            PRIVATE_SUBNETS[0]
        } else {
            PUBLIC_SUBNET
        }
        .into(),
        private_ip: Some(std::net::Ipv4Addr::new(10, 0, 1, 10)),
        public_ip: !private,
        groups: vec![group.into()],
    }
}
