//! The facts past the task itself, read only for the tasks that would try ECS Exec (no
//! fallback case applies): the cluster's exec configuration, agent versions, task
//! definitions, the task roles' answers to what the configuration needs, and each task's
//! route to SSM. A read that fails makes the facts it would have given unknown, naming the
//! call and the error; it never fails the look, and never counts as a pass.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::network::{task_route, TaskNetwork, Vpcs};
use super::permissions::{needs, services, Access, ExecConfig, Grant, Need};
use super::source::{ExecSource, InstanceFacts, TaskDefinitionFacts};
use super::{Definition, Fact, Launch, RackFacts, TaskFacts};
use crate::rack::RackError;

/// `DescribeContainerInstances`, `DescribeInstances` and `DescribeNetworkInterfaces` take
/// (at most) 100 ids at a time here.
pub const IDS_PER_CALL: usize = 100;

/// Where a task runs and what it runs, as `DescribeTasks` said: what is read past the task
/// starts from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSite {
    /// The ECS service that started it (empty for a one-off task).
    pub ecs_service: String,
    pub task_definition: String,
    pub container_instance: Option<String>,
    /// The task's own network interface (`awsvpc`).
    pub network_interface: Option<String>,
    /// The task role the task was started with in place of its task definition's.
    pub role_override: Option<String>,
}

/// One task to enrich: its facts and where it runs.
pub struct Candidate<'a> {
    pub facts: &'a mut TaskFacts,
    pub info: &'a TaskSite,
}

/// What a failed read makes unknown.
fn unknown<T>(call: &str, e: &RackError) -> Fact<T> {
    Fact::Unknown(format!("{call} failed: {e}"))
}

/// Reads what the candidates' verdicts need and fills it in; returns notes on what the
/// answers cannot account for.
pub async fn enrich(
    src: &dyn ExecSource,
    cluster: &str,
    rack: &mut RackFacts,
    definitions: &mut HashMap<String, TaskDefinitionFacts>,
    tasks: &mut [Candidate<'_>],
) -> Vec<String> {
    if tasks.is_empty() {
        return Vec::new();
    }
    let (accesses, services) = exec_needs(src, cluster, rack).await;
    let instances = instances(src, cluster, tasks).await;
    for t in tasks.iter_mut() {
        if let Launch::Ec2 { agent_version } = &mut t.facts.launch {
            *agent_version = match t.info.container_instance.as_ref().map(|i| instances.get(i)) {
                Some(Some(Fact::Known(i))) => match &i.agent_version {
                    Some(v) => Fact::Known(v.clone()),
                    None => {
                        Fact::Unknown("DescribeContainerInstances gave no agent version".into())
                    }
                },
                Some(Some(Fact::Unknown(why))) => Fact::Unknown(why.clone()),
                _ => Fact::Unknown("the task names no container instance that was found".into()),
            };
        }
    }
    let roles = task_definitions(src, definitions, tasks).await;
    grants(src, &roles, &accesses, tasks).await;
    routes(src, &instances, &services, tasks).await;
    src.notes()
}

type Accesses = Vec<(Need, Result<Vec<Access>, String>)>;

/// The cluster's needs with their accesses, and the services tasks must reach; `rack.needs`
/// says whether the configuration could be read.
async fn exec_needs(
    src: &dyn ExecSource,
    cluster: &str,
    rack: &mut RackFacts,
) -> (Accesses, Vec<&'static str>) {
    match src.exec_config(cluster).await {
        Ok(config) => {
            let out = needs(&config);
            rack.needs = Fact::Known(out.iter().map(|(n, _)| *n).collect());
            (out, services(&config))
        }
        Err(e) => {
            rack.needs = unknown("ecs:DescribeClusters", &e);
            let config = ExecConfig::default();
            (needs(&config), services(&config))
        }
    }
}

/// The container instances of the EC2 tasks, 100 at a time.
async fn instances(
    src: &dyn ExecSource,
    cluster: &str,
    tasks: &[Candidate<'_>],
) -> BTreeMap<String, Fact<InstanceFacts>> {
    let arns: BTreeSet<String> = tasks
        .iter()
        .filter_map(|t| t.info.container_instance.clone())
        .collect();
    let arns: Vec<String> = arns.into_iter().collect();
    let mut out = BTreeMap::new();
    for chunk in arns.chunks(IDS_PER_CALL) {
        match src.container_instances(cluster, chunk).await {
            Ok(found) => out.extend(found.into_iter().map(|(k, v)| (k, Fact::Known(v)))),
            Err(e) => out.extend(
                chunk
                    .iter()
                    .map(|a| (a.clone(), unknown("ecs:DescribeContainerInstances", &e))),
            ),
        }
    }
    out
}

/// Each candidate's task definition (read once ever: revisions are immutable); the roles.
async fn task_definitions(
    src: &dyn ExecSource,
    cache: &mut HashMap<String, TaskDefinitionFacts>,
    tasks: &mut [Candidate<'_>],
) -> Vec<Option<String>> {
    let mut roles = Vec::with_capacity(tasks.len());
    let mut failed: HashMap<String, Fact<Definition>> = HashMap::new();
    for t in tasks.iter_mut() {
        let arn = &t.info.task_definition;
        if !cache.contains_key(arn) && !failed.contains_key(arn) {
            match src.task_definition(arn).await {
                Ok(td) => {
                    cache.insert(arn.clone(), td);
                }
                Err(e) => {
                    failed.insert(arn.clone(), unknown("ecs:DescribeTaskDefinition", &e));
                }
            }
        }
        match cache.get(arn) {
            Some(td) => {
                t.facts.definition = Fact::Known(Definition {
                    readonly_root: td.readonly_root,
                    credentials: td.credentials.clone(),
                });
                // A role given when the task was started takes the definition's place.
                roles.push(
                    t.info
                        .role_override
                        .clone()
                        .or_else(|| td.task_role.clone()),
                );
            }
            None => {
                t.facts.definition = failed
                    .get(arn)
                    .cloned()
                    .unwrap_or_else(|| Fact::Unknown("not read".into()));
                roles.push(None);
            }
        }
    }
    roles
}

/// Each role's answer to each need, asked once per role, need and look.
async fn grants(
    src: &dyn ExecSource,
    roles: &[Option<String>],
    accesses: &[(Need, Result<Vec<Access>, String>)],
    tasks: &mut [Candidate<'_>],
) {
    let mut answers: HashMap<(String, Need), Fact<Grant>> = HashMap::new();
    for (t, role) in tasks.iter_mut().zip(roles) {
        if matches!(t.facts.definition, Fact::Unknown(_)) {
            let why = "the task definition, which names the role, could not be read";
            for (need, _) in accesses {
                t.facts.grants.insert(*need, Fact::Unknown(why.into()));
            }
            continue;
        }
        for (need, access) in accesses {
            let answer = match (role, access) {
                (None, _) => Fact::Known(Grant::Denied("the task has no role".into())),
                (Some(_), Err(why)) => Fact::Unknown(why.clone()),
                (Some(role), Ok(access)) => {
                    let key = (role.clone(), *need);
                    if !answers.contains_key(&key) {
                        let a = grant(src, role, access).await;
                        answers.insert(key.clone(), a);
                    }
                    answers[&key].clone()
                }
            };
            t.facts.grants.insert(*need, answer);
        }
    }
}

/// One role's answer to every access of a need: the stronger refusal, else unknown, else
/// allowed.
async fn grant(src: &dyn ExecSource, role: &str, accesses: &[Access]) -> Fact<Grant> {
    let mut out = Grant::Allowed;
    let mut unknown_why = None;
    for a in accesses {
        match src.role_grant(role, a).await {
            Ok(Fact::Known(g)) => out = out.and(g),
            Ok(Fact::Unknown(why)) => unknown_why = Some(why),
            Err(e) => unknown_why = Some(format!("checking {role} failed: {e}")),
        }
    }
    match (out, unknown_why) {
        (Grant::Allowed, Some(why)) => Fact::Unknown(why),
        (g, _) => Fact::Known(g),
    }
}

/// Each candidate's route to SSM: where it sits (its interface, else its instance), then the
/// route tables, endpoints and endpoint security groups of those VPCs.
async fn routes(
    src: &dyn ExecSource,
    instances: &BTreeMap<String, Fact<InstanceFacts>>,
    services: &[&str],
    tasks: &mut [Candidate<'_>],
) {
    let mut by_interface = BTreeSet::new();
    let mut by_instance = BTreeSet::new();
    for t in tasks.iter() {
        match (&t.info.network_interface, host(instances, t.info)) {
            (Some(eni), _) => {
                by_interface.insert(eni.clone());
            }
            (None, Some(Fact::Known(id))) => {
                by_instance.insert(id);
            }
            _ => {}
        }
    }
    let interfaces = networks(src, &by_interface, Placement::Interface).await;
    let hosts = networks(src, &by_instance, Placement::Instance).await;
    let placed: Vec<Fact<TaskNetwork>> = tasks
        .iter()
        .map(
            |t| match (&t.info.network_interface, host(instances, t.info)) {
                (Some(eni), _) => found(&interfaces, eni),
                (None, Some(Fact::Known(id))) => found(&hosts, &id),
                (None, Some(Fact::Unknown(why))) => Fact::Unknown(why),
                (None, None) => Fact::Unknown(
                    "the task reports neither a network interface nor a container instance".into(),
                ),
            },
        )
        .collect();
    let vpcs: Vec<String> = placed
        .iter()
        .filter_map(|n| match n {
            Fact::Known(n) => Some(n.vpc.clone()),
            Fact::Unknown(_) => None,
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let view = read_vpcs(src, &vpcs).await;
    let region = src.region();
    for (t, net) in tasks.iter_mut().zip(placed) {
        t.facts.route = match (net, &view) {
            (Fact::Known(net), Ok(view)) => task_route(&net, view, &region, services),
            (Fact::Unknown(why), _) => Fact::Unknown(why),
            (_, Err(why)) => Fact::Unknown(why.clone()),
        };
    }
}

/// The EC2 instance of an EC2 task, from its container instance.
fn host(instances: &BTreeMap<String, Fact<InstanceFacts>>, t: &TaskSite) -> Option<Fact<String>> {
    let arn = t.container_instance.as_ref()?;
    Some(match instances.get(arn) {
        Some(Fact::Known(i)) => match &i.ec2_instance {
            Some(id) => Fact::Known(id.clone()),
            None => Fact::Unknown(format!("container instance {arn} names no EC2 instance")),
        },
        Some(Fact::Unknown(why)) => Fact::Unknown(why.clone()),
        None => Fact::Unknown(format!("container instance {arn} was not found")),
    })
}

fn found(read: &BTreeMap<String, Fact<TaskNetwork>>, id: &str) -> Fact<TaskNetwork> {
    read.get(id)
        .cloned()
        .unwrap_or_else(|| Fact::Unknown(format!("{id} was not found")))
}

/// What a task's place in its VPC is read from.
#[derive(Clone, Copy)]
enum Placement {
    /// Its own network interface (`awsvpc`).
    Interface,
    /// Its container instance's EC2 instance.
    Instance,
}

/// Networks by id, 100 ids a call; a failed call makes its ids unknown.
async fn networks(
    src: &dyn ExecSource,
    ids: &BTreeSet<String>,
    by: Placement,
) -> BTreeMap<String, Fact<TaskNetwork>> {
    let ids: Vec<String> = ids.iter().cloned().collect();
    let mut out = BTreeMap::new();
    for chunk in ids.chunks(IDS_PER_CALL) {
        let (call, read) = match by {
            Placement::Interface => (
                "ec2:DescribeNetworkInterfaces",
                src.interface_networks(chunk).await,
            ),
            Placement::Instance => ("ec2:DescribeInstances", src.instance_networks(chunk).await),
        };
        match read {
            Ok(found) => out.extend(found.into_iter().map(|(k, v)| (k, Fact::Known(v)))),
            Err(e) => out.extend(chunk.iter().map(|id| (id.clone(), unknown(call, &e)))),
        }
    }
    out
}

/// The route tables, endpoints and the security groups of the usable SSM endpoints.
async fn read_vpcs(src: &dyn ExecSource, vpcs: &[String]) -> Result<Vpcs, String> {
    if vpcs.is_empty() {
        return Ok(Vpcs::default());
    }
    let fail = |call: &str, e: RackError| format!("{call} failed: {e}");
    let tables = src
        .route_tables(vpcs)
        .await
        .map_err(|e| fail("ec2:DescribeRouteTables", e))?;
    let endpoints = src
        .endpoints(vpcs)
        .await
        .map_err(|e| fail("ec2:DescribeVpcEndpoints", e))?;
    let group_ids: BTreeSet<String> = endpoints
        .iter()
        .filter(|e| e.usable && !e.gateway)
        .flat_map(|e| e.groups.iter().cloned())
        .collect();
    let groups = if group_ids.is_empty() {
        Vec::new()
    } else {
        let ids: Vec<String> = group_ids.into_iter().collect();
        src.security_groups(&ids)
            .await
            .map_err(|e| fail("ec2:DescribeSecurityGroups", e))?
    };
    Ok(Vpcs {
        tables,
        endpoints,
        groups: groups.into_iter().map(|g| (g.id.clone(), g)).collect(),
    })
}
