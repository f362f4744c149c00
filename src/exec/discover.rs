//! Finds every app task of the rack and the facts exec readiness is judged on, with as few
//! calls as the batch limits allow: the region's stacks page by page (the rack's own among
//! them), `DescribeServices` 10 at a time, the cluster's running tasks listed once and
//! described 100 at a time (service tasks and `convox run` tasks alike), container instances
//! 100 at a time, each task definition once ever (revisions are immutable), each task role once
//! per look. Facts that cannot change the verdict are not fetched: nothing past the stacks and
//! tasks while the rack's `ECSExec` is `No`, nothing past the task for a Gen1 app. Only
//! running tasks are judged (one still starting has no agent yet); a one-off task is one
//! started by `convox.APP` from one of the app's task definitions (`RACK-APP-*`: builds,
//! started the same way from `RACK-build`, are not the app's).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use super::source::{ExecSource, ServiceFacts, StackFacts, TaskDefinitionFacts, TaskInfo};
use super::{
    evaluate, route, Launch, Network, RackFacts, Route, TaskFacts, Verdict, SSMMESSAGES_ACTIONS,
};
use crate::model::{ServiceTarget, TaskRead, ECS_EXEC};
use crate::rack::{Rack, RackError};

/// `DescribeServices` takes at most 10 services, `DescribeTasks` and
/// `DescribeContainerInstances` at most 100.
pub const SERVICES_PER_CALL: usize = 10;
pub const TASKS_PER_CALL: usize = 100;

/// One look at the rack's apps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub checked_at: SystemTime,
    pub rack: RackFacts,
    /// Every app found, with its generation (also apps with no running task).
    pub apps: BTreeMap<String, u8>,
    pub verdicts: Vec<Verdict>,
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
}

#[derive(Debug, Clone)]
struct Service {
    shown: String,
    ecs_name: String,
    arn: String,
}

/// The rack API, read where the rack's template does not declare `ECSExec`: then the
/// `rack.ECSExec` label of its revisions is the rack's value (set by relabelling).
pub struct RackApi {
    pub rack: Arc<dyn Rack>,
    pub targets: Vec<ServiceTarget>,
}

/// What is kept between looks.
#[derive(Default)]
pub struct Discovery {
    api: Option<RackApi>,
    /// Task definitions by ARN: immutable, kept while some task uses them.
    task_definitions: HashMap<String, TaskDefinitionFacts>,
    /// Services of stacks without service outputs, by stack, with the stack's last update
    /// they were read at.
    stack_services: HashMap<String, (Option<String>, Vec<String>)>,
}

impl Discovery {
    /// Reads the rack API's labels where the template does not declare `ECSExec`; without it
    /// such a rack counts as `ECSExec=No`.
    pub fn with_api(mut self, rack: Arc<dyn Rack>, targets: Vec<ServiceTarget>) -> Self {
        self.api = Some(RackApi { rack, targets });
        self
    }

    /// Looks at the rack `rack` and every app of it (or only `only_app`).
    pub async fn run(
        &mut self,
        src: &dyn ExecSource,
        rack: &str,
        only_app: Option<&str>,
        now: SystemTime,
    ) -> Result<Readiness, RackError> {
        let stacks = all_stacks(src).await?;
        let (cluster, facts) = rack_facts(src, self.api.as_ref(), &stacks, rack).await?;
        let mut apps = Vec::new();
        for s in stacks.iter().filter(|s| is_app_of(s, rack)) {
            let name = app_name(s, rack);
            if only_app.is_none_or(|a| a == name) {
                apps.push(App {
                    services: self.services_of(src, s).await?,
                    name,
                    stack: s.name.clone(),
                    generation: generation(s),
                });
            }
        }
        let tasks = app_tasks(src, &cluster, rack, &apps).await?;
        let verdicts = self.judge(src, &cluster, &facts, &apps, &tasks).await?;
        self.forget_unused(&apps, &tasks);
        Ok(Readiness {
            checked_at: now,
            rack: facts,
            apps: apps
                .iter()
                .map(|a| (a.name.clone(), a.generation))
                .collect(),
            verdicts,
        })
    }

    /// Each task's verdict. The facts past the task itself are read only where they can
    /// change it: while the rack's `ECSExec` is `Yes`, for Generation 2 apps.
    async fn judge(
        &mut self,
        src: &dyn ExecSource,
        cluster: &str,
        facts: &RackFacts,
        apps: &[App],
        tasks: &[AppTask<'_>],
    ) -> Result<Vec<Verdict>, RackError> {
        let enrich = facts.ecs_exec;
        let (services, agents) = if enrich {
            (
                describe_services(src, cluster, apps).await?,
                self.agents(src, cluster, tasks).await?,
            )
        } else {
            Default::default()
        };
        let mut roles = HashMap::new();
        let mut verdicts = Vec::with_capacity(tasks.len());
        for at in tasks {
            let mut t = task_facts(at, &agents);
            if enrich && at.app.generation >= 2 {
                let td = self.task_definition(src, &at.task.task_definition).await?;
                t.readonly_root = td.readonly_root;
                t.role_allows_ssmmessages = role_allows(src, &mut roles, &td).await?;
            }
            let mut v = evaluate(facts, &t);
            if v.reason == "started_before_enable" {
                v.detail = exec_detail(&services, at);
            }
            verdicts.push(v);
        }
        Ok(verdicts)
    }

    /// Keeps only what the tasks and apps still use.
    fn forget_unused(&mut self, apps: &[App], tasks: &[AppTask<'_>]) {
        let used: BTreeSet<&str> = tasks
            .iter()
            .map(|t| t.task.task_definition.as_str())
            .collect();
        self.task_definitions
            .retain(|arn, _| used.contains(arn.as_str()));
        let known: BTreeSet<&str> = apps.iter().map(|a| a.stack.as_str()).collect();
        self.stack_services
            .retain(|k, _| known.contains(k.as_str()));
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

    async fn agents(
        &self,
        src: &dyn ExecSource,
        cluster: &str,
        tasks: &[AppTask<'_>],
    ) -> Result<BTreeMap<String, String>, RackError> {
        let instances: BTreeSet<String> = tasks
            .iter()
            .filter(|t| t.app.generation >= 2)
            .filter_map(|t| t.task.container_instance.clone())
            .collect();
        let instances: Vec<String> = instances.into_iter().collect();
        let mut out = BTreeMap::new();
        for chunk in instances.chunks(TASKS_PER_CALL) {
            out.extend(src.agent_versions(cluster, chunk).await?);
        }
        Ok(out)
    }

    async fn task_definition(
        &mut self,
        src: &dyn ExecSource,
        arn: &str,
    ) -> Result<TaskDefinitionFacts, RackError> {
        if let Some(td) = self.task_definitions.get(arn) {
            return Ok(td.clone());
        }
        let td = src.task_definition(arn).await?;
        self.task_definitions.insert(arn.to_string(), td.clone());
        Ok(td)
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
        match src.vpc(vpc, &tables).await {
            Ok(v) => {
                net.route_tables = tables.len();
                net.nat_routes = v.nat_routes.min(v.route_tables);
                net.endpoints = v.endpoints;
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

/// The rack's cluster and rack-wide facts, from its own stack among `stacks`.
async fn rack_facts(
    src: &dyn ExecSource,
    api: Option<&RackApi>,
    stacks: &[StackFacts],
    rack: &str,
) -> Result<(String, RackFacts), RackError> {
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
    let ecs_exec = match (own.parameters.get(ECS_EXEC.name), api) {
        (Some(v), _) => v == "Yes",
        (None, Some(api)) => api_ecs_exec(api, rack, &cluster).await?,
        (None, None) => false,
    };
    let route = if ecs_exec {
        rack_route(Some(src), &own.outputs).await
    } else {
        Route::Unknown {
            why: "not looked at while the rack's ECSExec is No".into(),
        }
    };
    let facts = RackFacts {
        ecs_exec,
        readonly_root: param_yes(own, "EnableContainerReadonlyRootFilesystem"),
        route,
    };
    Ok((cluster, facts))
}

/// `ECSExec` on a rack API whose template does not declare it: `Yes` when every revision its
/// services run (deployments and tasks) has the label `rack.ECSExec=Yes`.
async fn api_ecs_exec(api: &RackApi, rack: &str, cluster: &str) -> Result<bool, RackError> {
    let resources = api.rack.stack_resources().await?;
    let reads = api
        .targets
        .iter()
        .map(|t| {
            resources
                .get(&t.service)
                .map(|name| TaskRead {
                    service: name.clone(),
                    running: true,
                    stopped: false,
                })
                .ok_or_else(|| RackError::MissingResource {
                    stack: rack.to_string(),
                    logical: t.service.clone(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let names: Vec<String> = reads.iter().map(|r| r.service.clone()).collect();
    let mut revisions = BTreeSet::new();
    for s in api.rack.describe_services(cluster, &names).await? {
        revisions.extend(s.task_definitions().map(str::to_string));
    }
    for tasks in api.rack.service_tasks(cluster, &reads).await? {
        revisions.extend(tasks.running.into_iter().map(|t| t.task_definition));
    }
    for arn in &revisions {
        let info = api.rack.describe_task_definition(arn).await?;
        let value = info.labels.get(ECS_EXEC.label).map(String::as_str);
        if value.unwrap_or(ECS_EXEC.default) != "Yes" {
            return Ok(false);
        }
    }
    Ok(!revisions.is_empty())
}

async fn all_stacks(src: &dyn ExecSource) -> Result<Vec<StackFacts>, RackError> {
    let mut out = Vec::new();
    let mut next = None;
    loop {
        let (page, token) = src.stacks(next).await?;
        out.extend(page);
        match token {
            Some(t) => next = Some(t),
            None => return Ok(out),
        }
    }
}

/// The services of Generation 2 apps, described 10 at a time (whether they start tasks with
/// ECS Exec: the detail of `started_before_enable`).
async fn describe_services(
    src: &dyn ExecSource,
    cluster: &str,
    apps: &[App],
) -> Result<BTreeMap<String, ServiceFacts>, RackError> {
    let arns: Vec<String> = apps
        .iter()
        .filter(|a| a.generation >= 2)
        .flat_map(|a| a.services.iter().map(|s| s.arn.clone()))
        .collect();
    let mut out = BTreeMap::new();
    for chunk in arns.chunks(SERVICES_PER_CALL) {
        for s in src.services(cluster, chunk).await? {
            out.insert(s.name.clone(), s);
        }
    }
    Ok(out)
}

/// A running task of an app: the service as Convox names it (`run` for a one-off task) and
/// as ECS does.
struct AppTask<'a> {
    app: &'a App,
    service: String,
    ecs_name: String,
    task: TaskInfo,
}

/// The cluster's running tasks that belong to an app: a task of one of its services, or a
/// one-off task (`startedBy` `convox.APP`, shown as service `run`).
async fn app_tasks<'a>(
    src: &dyn ExecSource,
    cluster: &str,
    rack: &str,
    apps: &'a [App],
) -> Result<Vec<AppTask<'a>>, RackError> {
    let mut by_service = HashMap::new();
    let mut by_app = HashMap::new();
    for a in apps {
        by_app.insert(format!("convox.{}", a.name), a);
        for s in &a.services {
            by_service.insert(format!("service:{}", s.ecs_name), (a, s));
        }
    }
    let mut arns = Vec::new();
    let mut next = None;
    loop {
        let (page, token) = src.list_tasks(cluster, next).await?;
        arns.extend(page);
        match token {
            Some(t) => next = Some(t),
            None => break,
        }
    }
    let mut out = Vec::new();
    for chunk in arns.chunks(TASKS_PER_CALL) {
        for t in src.tasks(cluster, chunk).await? {
            let owner = match (&t.group, &t.started_by) {
                (Some(g), _) if by_service.contains_key(g) => by_service
                    .get(g)
                    .map(|(a, s)| (*a, s.shown.clone(), s.ecs_name.clone())),
                (_, Some(s)) => by_app
                    .get(s)
                    .filter(|a| {
                        family(&t.task_definition).starts_with(&format!("{rack}-{}-", a.name))
                    })
                    .map(|a| (*a, "run".to_string(), String::new())),
                _ => None,
            };
            if t.last_status != "RUNNING" {
                continue;
            }
            if let Some((app, shown, ecs_name)) = owner {
                out.push(AppTask {
                    app,
                    service: shown,
                    ecs_name,
                    task: t,
                });
            }
        }
    }
    out.sort_by(|a, b| {
        (&a.app.name, &a.service, &a.task.arn).cmp(&(&b.app.name, &b.service, &b.task.arn))
    });
    Ok(out)
}

/// The task role's verdict, asked once per role and look; a task without a role cannot reach
/// SSM (`Some(false)`).
async fn role_allows(
    src: &dyn ExecSource,
    roles: &mut HashMap<String, Option<bool>>,
    td: &TaskDefinitionFacts,
) -> Result<Option<bool>, RackError> {
    let Some(role) = &td.task_role else {
        return Ok(Some(false));
    };
    if let Some(v) = roles.get(role) {
        return Ok(*v);
    }
    let v = match src.role_allows(role, &SSMMESSAGES_ACTIONS).await {
        Ok(v) => v,
        // A role deleted or replaced while old tasks still run: not known, not fatal.
        Err(e) if !e.is_transient() => {
            tracing::warn!(role = %role, error = %e, "cannot check the task role; its ssmmessages permissions are not known");
            None
        }
        Err(e) => return Err(e),
    };
    roles.insert(role.clone(), v);
    Ok(v)
}

fn task_facts(at: &AppTask<'_>, agents: &BTreeMap<String, String>) -> TaskFacts {
    let t = &at.task;
    let launch = if t.launch_type == "FARGATE" {
        Launch::Fargate {
            platform_version: t.platform_version.clone(),
        }
    } else {
        Launch::Ec2 {
            agent_version: t
                .container_instance
                .as_ref()
                .and_then(|i| agents.get(i).cloned()),
        }
    };
    TaskFacts {
        app: at.app.name.clone(),
        generation: at.app.generation,
        service: at.service.clone(),
        task: last_part(&t.arn),
        exec_enabled: t.exec_enabled,
        launch,
        exec_agent: t.exec_agent.clone(),
        readonly_root: false,
        role_allows_ssmmessages: None,
    }
}

fn exec_detail(services: &BTreeMap<String, ServiceFacts>, at: &AppTask<'_>) -> String {
    match services.get(&at.ecs_name) {
        Some(s) if s.exec_enabled => {
            "the service has enableExecuteCommand; this task predates it".into()
        }
        Some(_) => "the service does not have enableExecuteCommand yet".into(),
        None if at.service == "run" => "a one-off task started without enableExecuteCommand".into(),
        None => String::new(),
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
