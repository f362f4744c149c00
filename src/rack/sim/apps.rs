//! The simulated rack's apps, for exec readiness: app stacks tagged as Convox tags them, their
//! ECS services and running tasks (service tasks and a one-off `convox run` task), container
//! instances with their agent versions, task definitions, task roles, and the rack's VPC.
//!
//! The demo set shows every path: a Generation 1 app, Generation 2 tasks started before and
//! after ECS Exec was enabled for their service, an instance with an old agent, Fargate tasks
//! on an old platform and with a stopped `ExecuteCommandAgent`, a task role without the
//! `ssmmessages` actions. `apps: N` in the sim settings generates N uniform apps instead
//! (3 services of 3 tasks each), for benchmarks.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::Deserialize;

use super::{SimRack, ACCOUNT};
use crate::exec::source::{
    ExecSource, ServiceFacts, StackFacts, StackPage, TaskDefinitionFacts, TaskInfo, VpcFacts,
};
use crate::rack::RackError;

/// Stacks per `DescribeStacks` page and tasks per `ListTasks` page, as AWS pages them.
const STACKS_PER_PAGE: usize = 100;
const TASKS_PER_PAGE: usize = 100;

/// The rack's VPC as the sim shows it to a private rack (`Private=Yes`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimNetwork {
    /// The private route tables have a default route to a NAT gateway.
    pub nat: bool,
    /// Interface endpoint services of the VPC (`ssm`, `ssmmessages`: the region is added).
    pub endpoints: Vec<String>,
}

impl Default for SimNetwork {
    fn default() -> Self {
        SimNetwork {
            nat: true,
            endpoints: Vec::new(),
        }
    }
}

/// What the apps are made of.
#[derive(Default)]
pub(super) struct SimApps {
    stacks: Vec<StackFacts>,
    /// Services of stacks without service outputs (Generation 1), by stack.
    resources: BTreeMap<String, Vec<String>>,
    services: BTreeMap<String, ServiceFacts>,
    tasks: Vec<TaskInfo>,
    task_definitions: BTreeMap<String, TaskDefinitionFacts>,
    /// Role ARN → it allows the `ssmmessages` actions.
    roles: BTreeMap<String, bool>,
    agents: BTreeMap<String, String>,
}

/// One service of a demo app: name, service has enableExecuteCommand, its tasks.
struct Svc<'a> {
    name: &'a str,
    exec: bool,
    tasks: Vec<Task<'a>>,
}

/// One task: exec enabled, launch (`None`: EC2 on the instance, else a Fargate platform),
/// container instance, managed agent status and reason.
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
        let mut apps = SimApps::default();
        let mut b = Builder {
            rack,
            region,
            cluster,
            apps: &mut apps,
            next: 0,
        };
        if generated > 0 {
            b.instances(&[("i-0", "1.89.1")]);
            for i in 0..generated {
                let svc = |n| Svc {
                    name: n,
                    exec: true,
                    tasks: (0..3).map(|_| ec2(true, "i-0")).collect(),
                };
                let name = format!("app{i:03}");
                b.app(
                    &name,
                    2,
                    true,
                    vec![svc("web"), svc("worker"), svc("cron")],
                    &[],
                );
            }
            return apps;
        }
        b.instances(&[("i-new", "1.89.1"), ("i-old", "1.48.0")]);
        b.app(
            "legacy",
            1,
            true,
            vec![Svc {
                name: "web",
                exec: false,
                tasks: vec![ec2(false, "i-new"), ec2(false, "i-new")],
            }],
            &[],
        );
        b.app(
            "shop",
            2,
            true,
            vec![
                Svc {
                    name: "web",
                    exec: true,
                    tasks: vec![ec2(false, "i-new"), ec2(false, "i-new"), ec2(true, "i-new")],
                },
                Svc {
                    name: "worker",
                    exec: true,
                    tasks: vec![ec2(true, "i-old")],
                },
            ],
            &[ec2(true, "i-new")],
        );
        b.app(
            "billing",
            2,
            true,
            vec![Svc {
                name: "api",
                exec: true,
                tasks: vec![
                    fargate("1.4.0", RUNNING),
                    fargate(
                        "1.4.0",
                        Some(("STOPPED", Some("the agent could not start: InternalError"))),
                    ),
                    fargate("1.3.0", None),
                ],
            }],
            &[],
        );
        b.app(
            "reports",
            2,
            false,
            vec![Svc {
                name: "web",
                exec: true,
                tasks: vec![fargate("1.4.0", RUNNING)],
            }],
            &[],
        );
        apps
    }
}

struct Builder<'a> {
    rack: &'a str,
    region: &'a str,
    cluster: &'a str,
    apps: &'a mut SimApps,
    next: u64,
}

impl Builder<'_> {
    fn arn(&self, kind: &str, rest: &str) -> String {
        format!("arn:aws:ecs:{}:{ACCOUNT}:{kind}/{rest}", self.region)
    }

    fn instances(&mut self, agents: &[(&str, &str)]) {
        for (id, version) in agents {
            let arn = self.arn("container-instance", &format!("{}/{id}", self.cluster));
            self.apps.agents.insert(arn, version.to_string());
        }
    }

    /// An app stack with its services, their task definitions and tasks, and one-off tasks.
    fn app(
        &mut self,
        name: &str,
        generation: u8,
        role_ok: bool,
        services: Vec<Svc>,
        runs: &[Task],
    ) {
        let stack = format!("{}-{name}", self.rack);
        let role = format!("arn:aws:iam::{ACCOUNT}:role/convox/{stack}-ServiceRole");
        self.apps.roles.insert(role.clone(), role_ok);
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
        for svc in &services {
            let nested = format!("{stack}-Service{}-{:04}", capitalized(svc.name), self.next);
            let service_name = format!("{nested}-Service-1");
            let arn = self.arn("service", &format!("{}/{service_name}", self.cluster));
            if generation >= 2 {
                let key = format!("Service{}Service", capitalized(svc.name));
                facts.outputs.insert(key, arn.clone());
                // Each service is a nested stack, with the app's tags.
                self.apps.stacks.push(StackFacts {
                    name: nested,
                    nested: true,
                    tags: facts.tags.clone(),
                    ..StackFacts::default()
                });
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
            let td = self.task_definition(&format!("{stack}-{}", svc.name), &role);
            for t in &svc.tasks {
                self.task(t, &td, Some(format!("service:{service_name}")), None);
            }
        }
        let td = self.task_definition(&format!("{stack}-console"), &role);
        for t in runs {
            self.task(t, &td, None, Some(format!("convox.{name}")));
        }
        self.apps.stacks.push(facts);
    }

    fn task_definition(&mut self, family: &str, role: &str) -> String {
        let arn = format!(
            "arn:aws:ecs:{}:{ACCOUNT}:task-definition/{family}:1",
            self.region
        );
        self.apps.task_definitions.insert(
            arn.clone(),
            TaskDefinitionFacts {
                readonly_root: false,
                task_role: Some(role.to_string()),
            },
        );
        arn
    }

    fn task(&mut self, t: &Task, td: &str, group: Option<String>, started_by: Option<String>) {
        self.next += 1;
        let id = format!("{:032x}", 0xa11_0000_u64 + self.next);
        let instance = (t.platform.is_none()).then(|| {
            self.arn(
                "container-instance",
                &format!("{}/{}", self.cluster, t.instance),
            )
        });
        let info = TaskInfo {
            arn: self.arn("task", &format!("{}/{id}", self.cluster)),
            started_by: started_by.or(Some("ecs-svc/1234567890".into())),
            group,
            task_definition: td.to_string(),
            last_status: "RUNNING".into(),
            exec_enabled: t.exec,
            launch_type: if t.platform.is_some() {
                "FARGATE"
            } else {
                "EC2"
            }
            .into(),
            platform_version: t.platform.map(str::to_string),
            container_instance: instance,
            exec_agent: t.agent.map(|(s, r)| (s.to_string(), r.map(str::to_string))),
        };
        self.apps.tasks.push(info);
    }
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

fn page<T: Clone>(items: &[T], next: Option<String>, size: usize) -> (Vec<T>, Option<String>) {
    let start: usize = next.and_then(|n| n.parse().ok()).unwrap_or(0);
    let end = (start + size).min(items.len());
    let rest = (end < items.len()).then(|| end.to_string());
    (items.get(start..end).unwrap_or_default().to_vec(), rest)
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
        let all: Vec<StackFacts> = std::iter::once(rack)
            .chain(s.apps.stacks.iter().cloned())
            .collect();
        Ok(page(&all, next, STACKS_PER_PAGE))
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
        let arns: Vec<String> = s.apps.tasks.iter().map(|t| t.arn.clone()).collect();
        Ok(page(&arns, next, TASKS_PER_PAGE))
    }

    async fn tasks(&self, cluster: &str, arns: &[String]) -> Result<Vec<TaskInfo>, RackError> {
        let mut s = self.lock();
        self.call(&mut s, "ecs", "DescribeTasks", cluster)?;
        Ok(s.apps
            .tasks
            .iter()
            .filter(|t| arns.contains(&t.arn))
            .cloned()
            .collect())
    }

    async fn agent_versions(
        &self,
        cluster: &str,
        arns: &[String],
    ) -> Result<BTreeMap<String, String>, RackError> {
        let mut s = self.lock();
        self.call(&mut s, "ecs", "DescribeContainerInstances", cluster)?;
        Ok(arns
            .iter()
            .filter_map(|a| Some((a.clone(), s.apps.agents.get(a)?.clone())))
            .collect())
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

    async fn role_allows(
        &self,
        role_arn: &str,
        _actions: &[&str],
    ) -> Result<Option<bool>, RackError> {
        let mut s = self.lock();
        self.call(&mut s, "iam", "SimulatePrincipalPolicy", role_arn)?;
        Ok(s.apps.roles.get(role_arn).copied())
    }

    async fn vpc(&self, vpc: &str, route_tables: &[String]) -> Result<VpcFacts, RackError> {
        let mut s = self.lock();
        if !route_tables.is_empty() {
            self.call(&mut s, "ec2", "DescribeRouteTables", vpc)?;
        }
        self.call(&mut s, "ec2", "DescribeVpcEndpoints", vpc)?;
        let net = s.settings.network.clone();
        let region = s.settings.region.clone();
        Ok(VpcFacts {
            route_tables: route_tables.len(),
            nat_routes: if net.nat { route_tables.len() } else { 0 },
            endpoints: net
                .endpoints
                .iter()
                .map(|e| format!("com.amazonaws.{region}.{e}"))
                .collect(),
        })
    }

    fn region(&self) -> String {
        self.lock().settings.region.clone()
    }
}
