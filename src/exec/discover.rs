//! Finds every app task of the rack and the facts exec readiness is judged on, with as few
//! calls as the batch limits allow: the region's stacks page by page (the rack's own among
//! them), `DescribeServices` 10 at a time, the cluster's running tasks listed page by page
//! and each page described as it arrives, 100 at a time (service tasks and `convox run` tasks
//! alike), container instances
//! 100 at a time, each task definition once ever (revisions are immutable), each task role once
//! per look. Facts that cannot change the verdict are not fetched: nothing past the stacks and
//! tasks while the rack cannot use ECS Exec, nothing past the task where a fallback case
//! applies (see [`super::enrich`] for the rest). A failure reading one app's services makes
//! that app unknown, not the look. Only
//! running tasks are judged (one still starting has no agent yet); a one-off task is one
//! started by `convox.APP` from one of the app's task definitions (`RACK-APP-*`: builds,
//! started the same way from `RACK-build`, are not the app's).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::SystemTime;

use super::enrich::{enrich, Candidate, TaskSite};
use super::network::{route, Network, Route, Target};
use super::source::{ExecSource, ServiceFacts, StackFacts, TaskDefinitionFacts, TaskInfo};
use super::{evaluate, fallback, Fact, Grants, Launch, RackFacts, ServiceExec, TaskFacts, Verdict};
use crate::model::ECS_EXEC;
use crate::rack::RackError;

/// `DescribeServices` takes at most 10 services, `DescribeTasks` at most 100.
pub const SERVICES_PER_CALL: usize = 10;
pub const TASKS_PER_CALL: usize = 100;

/// One look at the rack's apps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub checked_at: SystemTime,
    pub rack: RackFacts,
    /// Every app found (also apps with no running task).
    pub apps: BTreeMap<String, AppInfo>,
    pub verdicts: Vec<Verdict>,
    /// What the answers cannot account for.
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppInfo {
    pub generation: u8,
    /// Its services could not be read: its tasks are not judged.
    pub error: Option<String>,
}

/// An app stack of the rack.
#[derive(Debug, Clone)]
struct App {
    name: String,
    stack: String,
    generation: u8,
    /// Services: the name Convox knows them by (`web`; the ECS name for Gen1), the ECS
    /// service name (the last part of the ARN), the ARN.
    services: Vec<Service>,
    error: Option<String>,
}

#[derive(Debug, Clone)]
struct Service {
    shown: String,
    ecs_name: String,
    arn: String,
}

/// What is kept between looks.
#[derive(Default)]
pub struct Discovery {
    /// Task definitions by ARN: immutable, kept while some task uses them.
    task_definitions: HashMap<String, TaskDefinitionFacts>,
    /// Services of stacks without service outputs, by stack, with the stack's last update
    /// they were read at.
    stack_services: HashMap<String, (Option<String>, Vec<String>)>,
}

impl Discovery {
    /// Looks at the rack `rack` and every app of it (or only `only_app`).
    pub async fn run(
        &mut self,
        src: &dyn ExecSource,
        rack: &str,
        only_app: Option<&str>,
        now: SystemTime,
    ) -> Result<Readiness, RackError> {
        let stacks = rack_stacks(src, rack).await?;
        let (cluster, mut facts) = rack_facts(&stacks, rack)?;
        let apps = self.apps(src, stacks, rack, only_app).await;
        let tasks = app_tasks(src, &cluster, rack, &apps).await?;
        let (judged, notes) = self.judge(src, &cluster, &mut facts, &apps, tasks).await;
        let known: BTreeSet<&str> = apps.iter().map(|a| a.stack.as_str()).collect();
        self.stack_services
            .retain(|k, _| known.contains(k.as_str()));
        let verdicts = judged.into_iter().map(|f| evaluate(&facts, &f)).collect();
        Ok(Readiness {
            checked_at: now,
            rack: facts,
            apps: apps
                .into_iter()
                .map(|a| {
                    let info = AppInfo {
                        generation: a.generation,
                        error: a.error,
                    };
                    (a.name, info)
                })
                .collect(),
            verdicts,
            notes,
        })
    }

    /// The rack's apps among `stacks` (or only `only_app`), with their services.
    async fn apps(
        &mut self,
        src: &dyn ExecSource,
        stacks: Vec<StackFacts>,
        rack: &str,
        only_app: Option<&str>,
    ) -> Vec<App> {
        let mut apps = Vec::new();
        for s in stacks.iter().filter(|s| is_app_of(s, rack)) {
            let name = app_name(s, rack);
            if only_app.is_none_or(|a| a == name) {
                let (services, error) = match self.services_of(src, s).await {
                    Ok(services) => (services, None),
                    Err(e) => (Vec::new(), Some(e.to_string())),
                };
                apps.push(App {
                    services,
                    error,
                    name,
                    stack: s.name.clone(),
                    generation: generation(s),
                });
            }
        }
        apps
    }

    /// Each task's facts, to judge it on: the fallback cases from the task and its
    /// service (whether it starts tasks with ECS Exec now, read only when the rack can use
    /// it); the rest read only for the tasks that would try ECS Exec.
    async fn judge(
        &mut self,
        src: &dyn ExecSource,
        cluster: &str,
        rack: &mut RackFacts,
        apps: &[App],
        mut tasks: Vec<Judged>,
    ) -> (Vec<TaskFacts>, Vec<String>) {
        if rack.declares_ecs_exec && rack.ecs_exec {
            let services = describe_services(src, cluster, apps, &tasks).await;
            for t in &mut tasks {
                t.facts.service_exec = service_exec(&t.facts, &t.site, &services);
            }
        }
        let mut candidates: Vec<Candidate<'_>> = tasks
            .iter_mut()
            .filter(|t| fallback(rack, &t.facts).is_none())
            .map(|t| Candidate {
                facts: &mut t.facts,
                info: &t.site,
            })
            .collect();
        let notes = enrich(
            src,
            cluster,
            rack,
            &mut self.task_definitions,
            &mut candidates,
        )
        .await;
        drop(candidates);
        // Task definitions are kept while some task uses them.
        let used: BTreeSet<&str> = (tasks.iter())
            .map(|t| t.site.task_definition.as_str())
            .collect();
        self.task_definitions
            .retain(|arn, _| used.contains(arn.as_str()));
        (tasks.into_iter().map(|t| t.facts).collect(), notes)
    }

    /// The services of an app stack: its `Service*Service` outputs (Generation 2), else its
    /// ECS service resources, read again only when the stack has changed.
    async fn services_of(
        &mut self,
        src: &dyn ExecSource,
        s: &StackFacts,
    ) -> Result<Vec<Service>, RackError> {
        let from_outputs: Vec<Service> = s
            .outputs
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .filter_map(|(k, v)| {
                let name = k.strip_prefix("Service")?.strip_suffix("Service")?;
                (!name.is_empty()).then(|| service(manifest_name(name), v))
            })
            .collect();
        if !from_outputs.is_empty() {
            return Ok(from_outputs);
        }
        let arns = match self.stack_services.get(&s.name) {
            Some((seen, a)) if *seen == s.updated => a.clone(),
            _ => {
                let a = src.stack_services(&s.name).await?;
                self.stack_services
                    .insert(s.name.clone(), (s.updated.clone(), a.clone()));
                a
            }
        };
        Ok(arns.iter().map(|a| service(last_part(a), a)).collect())
    }
}

/// Whether tasks in the rack's subnets reach SSM: public subnets do; private ones need a NAT
/// route in every private route table, or both interface endpoints (`ec2` reads, only for a
/// private rack). Unknown when the VPC cannot be read, or there is no `src` to read it with.
pub async fn rack_route(src: Option<&dyn ExecSource>, outputs: &BTreeMap<String, String>) -> Route {
    let private = outputs.get("Private").is_some_and(|p| p == "Yes");
    let mut net = Network {
        private,
        ..Network::default()
    };
    if private {
        let Some(src) = src else {
            return Route::Unknown {
                why: "the rack is private and this controller has no access to its VPC configured"
                    .into(),
            };
        };
        net.region = src.region();
        let Some(vpc) = outputs.get("Vpc").filter(|v| !v.is_empty()) else {
            return Route::Unknown {
                why: "the rack stack has no Vpc output".into(),
            };
        };
        let tables: Vec<String> = outputs
            .get("RouteTablesPrivate")
            .map(|t| split_list(t))
            .unwrap_or_default();
        let read = async {
            let vpcs = [vpc.clone()];
            Ok::<_, RackError>((src.route_tables(&vpcs).await?, src.endpoints(&vpcs).await?))
        };
        match read.await {
            Ok((all, endpoints)) => {
                let found: Vec<_> = all.iter().filter(|t| tables.contains(&t.id)).collect();
                net.route_tables = tables.len();
                net.nat_routes = found
                    .iter()
                    .filter(|t| matches!(t.default_route, Some(Target::Nat(_))))
                    .count();
                net.endpoints = endpoints
                    .into_iter()
                    .filter(|e| e.usable)
                    .map(|e| e.service)
                    .collect();
            }
            Err(e) => {
                return Route::Unknown {
                    why: format!("cannot read the VPC {vpc}: {e}"),
                }
            }
        }
    }
    route(&net)
}

/// The rack's cluster and rack-wide facts, from its own stack among `stacks`. A template
/// that does not declare `ECSExec` is a version whose API knows only Docker exec.
fn rack_facts(stacks: &[StackFacts], rack: &str) -> Result<(String, RackFacts), RackError> {
    let own = stacks
        .iter()
        .find(|s| s.name == rack && !s.nested)
        .ok_or_else(|| RackError::StackNotFound {
            stack: rack.to_string(),
        })?;
    let cluster =
        own.outputs
            .get("Cluster")
            .cloned()
            .ok_or_else(|| RackError::MissingResource {
                stack: rack.to_string(),
                logical: "output Cluster".into(),
            })?;
    let facts = RackFacts {
        declares_ecs_exec: own.parameters.contains_key(ECS_EXEC.name),
        ecs_exec: param_yes(own, ECS_EXEC.name),
        readonly_root: param_yes(own, "EnableContainerReadonlyRootFilesystem"),
        needs: Fact::Unknown("not read".into()),
    };
    Ok((cluster, facts))
}

/// The rack's own stack and its app stacks, from the region's stacks page by page (the
/// others are let go as each page arrives).
async fn rack_stacks(src: &dyn ExecSource, rack: &str) -> Result<Vec<StackFacts>, RackError> {
    let mut out = Vec::new();
    let mut next = None;
    loop {
        let (page, token) = src.stacks(next).await?;
        out.extend(
            page.into_iter()
                .filter(|s| (s.name == rack && !s.nested) || is_app_of(s, rack)),
        );
        match token {
            Some(t) => next = Some(t),
            None => return Ok(out),
        }
    }
}

/// The services of Generation 2 apps that run a task without ECS Exec, described 10 at a
/// time: whether they start tasks with it now decides the advice (restart or deploy). A
/// failed call makes its services' answer unknown.
async fn describe_services(
    src: &dyn ExecSource,
    cluster: &str,
    apps: &[App],
    tasks: &[Judged],
) -> BTreeMap<String, Fact<ServiceFacts>> {
    let wanted: BTreeSet<&str> = tasks
        .iter()
        .filter(|t| !t.facts.exec_enabled && t.facts.generation >= 2)
        .map(|t| t.site.ecs_service.as_str())
        .collect();
    let services: Vec<&Service> = apps
        .iter()
        .filter(|a| a.generation >= 2)
        .flat_map(|a| a.services.iter())
        .filter(|s| wanted.contains(s.ecs_name.as_str()))
        .collect();
    let mut out = BTreeMap::new();
    for chunk in services.chunks(SERVICES_PER_CALL) {
        let arns: Vec<String> = chunk.iter().map(|s| s.arn.clone()).collect();
        match src.services(cluster, &arns).await {
            Ok(found) => out.extend(found.into_iter().map(|s| (s.name.clone(), Fact::Known(s)))),
            Err(e) => out.extend(chunk.iter().map(|s| {
                let why = Fact::Unknown(format!("ecs:DescribeServices failed: {e}"));
                (s.ecs_name.clone(), why)
            })),
        }
    }
    out
}

/// A running task of an app: what it says of itself (its facts, to be judged on), and where
/// it runs (what is read past it starts from there).
struct Judged {
    facts: TaskFacts,
    site: TaskSite,
}

/// Who a task belongs to: the app service whose group it carries, or the app whose
/// `convox run` started it from one of the app's task definitions.
struct Owners<'r, 'a> {
    rack: &'r str,
    by_service: HashMap<String, (&'a App, &'a Service)>,
    by_app: HashMap<String, &'a App>,
}

impl<'r, 'a> Owners<'r, 'a> {
    fn of(rack: &'r str, apps: &'a [App]) -> Self {
        let mut owners = Owners {
            rack,
            by_service: HashMap::new(),
            by_app: HashMap::new(),
        };
        for a in apps {
            owners.by_app.insert(format!("convox.{}", a.name), a);
            for s in &a.services {
                owners
                    .by_service
                    .insert(format!("service:{}", s.ecs_name), (a, s));
            }
        }
        owners
    }

    /// The task as an app's, when it runs and an app owns it.
    fn of_task(&self, t: TaskInfo) -> Option<Judged> {
        let (app, service, ecs_service) = match (&t.group, &t.started_by) {
            (Some(g), _) if self.by_service.contains_key(g) => self
                .by_service
                .get(g)
                .map(|(a, s)| (*a, s.shown.clone(), s.ecs_name.clone()))?,
            (_, Some(s)) => self
                .by_app
                .get(s)
                .filter(|a| {
                    let prefix = format!("{}-{}-", self.rack, a.name);
                    family(&t.task_definition).starts_with(&prefix)
                })
                .map(|a| (*a, "run".to_string(), String::new()))?,
            _ => return None,
        };
        (t.last_status == "RUNNING").then(|| judged(t, app, service, ecs_service))
    }
}

/// The cluster's running tasks that belong to an app: a task of one of its services, or a
/// one-off task (`startedBy` `convox.APP`, shown as service `run`).
async fn app_tasks(
    src: &dyn ExecSource,
    cluster: &str,
    rack: &str,
    apps: &[App],
) -> Result<Vec<Judged>, RackError> {
    let owner = Owners::of(rack, apps);
    // Each page of the listing (100 tasks, as many as one `DescribeTasks` takes) is described
    // as it arrives: only one page of ARNs is held at a time.
    let mut out = Vec::new();
    let mut next = None;
    loop {
        let (page, token) = src.list_tasks(cluster, next).await?;
        for chunk in page.chunks(TASKS_PER_CALL) {
            for t in src.tasks(cluster, chunk).await? {
                if let Some(owned) = owner.of_task(t) {
                    out.push(owned);
                }
            }
        }
        match token {
            Some(t) => next = Some(t),
            None => break,
        }
    }
    // Task ids are unique in the cluster: an unstable sort (in place) gives the one order.
    out.sort_unstable_by(|a, b| {
        let (a, b) = (&a.facts, &b.facts);
        (&a.app, &a.service, &a.task).cmp(&(&b.app, &b.service, &b.task))
    });
    Ok(out)
}

/// What the task itself says (moved out of it), and where it runs; the facts past it start
/// unknown ("not read") until [`enrich`] reads them, its service's among them.
fn judged(t: TaskInfo, app: &App, service: String, ecs_service: String) -> Judged {
    let launch = if t.launch_type == "FARGATE" {
        Launch::Fargate {
            platform_version: t.platform_version,
        }
    } else {
        Launch::Ec2 {
            agent_version: Fact::Unknown("not read".into()),
        }
    };
    let service_exec = match service.as_str() {
        "run" => ServiceExec::OneOff,
        _ => ServiceExec::Unknown("the service was not described".into()),
    };
    let facts = TaskFacts {
        app: app.name.clone(),
        generation: app.generation,
        service,
        task: last_part(&t.arn),
        exec_enabled: t.exec_enabled,
        service_exec,
        launch,
        exec_agent: t.exec_agent,
        definition: Fact::Unknown("not read".into()),
        override_credentials: t.override_credentials,
        grants: Grants::default(),
        route: Fact::Unknown("not read".into()),
    };
    let site = TaskSite {
        ecs_service,
        task_definition: t.task_definition,
        container_instance: t.container_instance,
        network_interface: t.network_interface,
        role_override: t.role_override,
    };
    Judged { facts, site }
}

/// Whether the task's service starts tasks with ECS Exec now, from `services` as described.
fn service_exec(
    facts: &TaskFacts,
    site: &TaskSite,
    services: &BTreeMap<String, Fact<ServiceFacts>>,
) -> ServiceExec {
    match services.get(&site.ecs_service) {
        _ if facts.service == "run" => ServiceExec::OneOff,
        Some(Fact::Known(s)) if s.exec_enabled => ServiceExec::Yes,
        Some(Fact::Known(_)) => ServiceExec::No,
        Some(Fact::Unknown(why)) => ServiceExec::Unknown(why.clone()),
        None => ServiceExec::Unknown("the service was not described".into()),
    }
}

fn param_yes(s: &StackFacts, name: &str) -> bool {
    s.parameters.get(name).is_some_and(|v| v == "Yes")
}

/// An app stack of this rack: tagged `System=convox`, `Type=app`, `Rack=<rack>`, and not
/// nested (CloudFormation gives an app's service stacks the app's tags).
fn is_app_of(s: &StackFacts, rack: &str) -> bool {
    let tag = |k: &str| s.tags.get(k).map(String::as_str);
    !s.nested
        && tag("System") == Some("convox")
        && tag("Type") == Some("app")
        && tag("Rack") == Some(rack)
}

/// The app's name: its `Name` tag, else the stack name without the `<rack>-` prefix.
fn app_name(s: &StackFacts, rack: &str) -> String {
    s.tags.get("Name").cloned().unwrap_or_else(|| {
        s.name
            .strip_prefix(&format!("{rack}-"))
            .unwrap_or(&s.name)
            .to_string()
    })
}

/// `Generation` tag `2` is Generation 2; anything else (or none) is Generation 1.
fn generation(s: &StackFacts) -> u8 {
    if s.tags.get("Generation").map(String::as_str) == Some("2") {
        2
    } else {
        1
    }
}

fn service(shown: String, arn: &str) -> Service {
    Service {
        shown,
        ecs_name: last_part(arn),
        arn: arn.to_string(),
    }
}

/// The family of a task definition ARN (`.../task-definition/FAMILY:REVISION`).
fn family(arn: &str) -> &str {
    let name = arn.rsplit('/').next().unwrap_or(arn);
    name.split(':').next().unwrap_or(name)
}

/// A service's name as the app's manifest has it, from Convox's output key (`WebApi` for
/// `web-api`).
fn manifest_name(key: &str) -> String {
    let mut out = String::new();
    for (i, c) in key.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('-');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

fn last_part(arn: &str) -> String {
    arn.rsplit('/').next().unwrap_or(arn).to_string()
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_arns_and_outputs() {
        assert_eq!(
            family("arn:aws:ecs:us-east-1:1:task-definition/convox-shop-web:12"),
            "convox-shop-web"
        );
        assert_eq!(manifest_name("WebApi"), "web-api");
        assert_eq!(manifest_name("Web"), "web");
        assert_eq!(
            last_part("arn:aws:ecs:us-east-1:1:service/c/convox-shop-ServiceWeb-1"),
            "convox-shop-ServiceWeb-1"
        );
    }
}
