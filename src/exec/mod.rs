//! Exec readiness: for every app task of the rack, what `convox exec` will really do. Pure:
//! facts in, verdicts out, no AWS types.
//!
//! Four paths. `docker`: Convox falls back to Docker exec, in exactly its fallback cases (a
//! rack that cannot use ECS Exec, a Generation 1 app, a task started without
//! `enableExecuteCommand`); on Fargate those cases fail instead, there is no daemon to reach.
//! `fails`: ECS Exec is tried and a fact that was read shows it cannot work. `unknown`: no
//! fact read shows a failure, but one the decision needs could not be read. `ecs_exec`: every
//! fact was read and every check passed. Never `ecs_exec` without proof.
//!
//! The reasons are a fixed, documented set (they are metric labels, see [`REASONS`]); a
//! fallback case decides first, then the first failing check, then the first unknown one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub mod check;
pub mod discover;
pub mod enrich;
pub mod network;
pub mod permissions;
pub mod policy;
pub mod source;
pub mod status;
pub mod watch;

pub use network::{Reach, Route};
pub use permissions::{Grant, Need, SSMMESSAGES_ACTIONS};
pub use status::ExecStatus;

/// How `convox exec` would reach a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecPath {
    EcsExec,
    Docker,
    Fails,
    Unknown,
}

impl ExecPath {
    pub const ALL: [ExecPath; 4] = [
        ExecPath::EcsExec,
        ExecPath::Docker,
        ExecPath::Fails,
        ExecPath::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ExecPath::EcsExec => "ecs_exec",
            ExecPath::Docker => "docker",
            ExecPath::Fails => "fails",
            ExecPath::Unknown => "unknown",
        }
    }
}

/// A fact the decision needs: read, or not, and then why (the call or permission that failed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fact<T> {
    Known(T),
    Unknown(String),
}

/// What a reason says about the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ready,
    /// Convox falls back to Docker exec (fails on Fargate).
    Fallback,
    Fails,
    Unknown,
}

/// A reason: its label, what it says, the fix in a few words (the metric's help) and the
/// advice (`APP` is replaced by the app).
pub struct Reason {
    pub name: &'static str,
    pub kind: Kind,
    pub fix: &'static str,
    pub advice: &'static str,
}

const fn reason(name: &'static str, kind: Kind, fix: &'static str, advice: &'static str) -> Reason {
    Reason {
        name,
        kind,
        fix,
        advice,
    }
}

/// Every reason, in the order they are decided within their kind.
pub const REASONS: &[Reason] = &[
    reason("none", Kind::Ready, "", ""),
    reason("rack_version_lacks_ecs_exec", Kind::Fallback, "update the rack",
        "the rack's version predates ECS Exec (its template does not declare ECSExec), so its API execs through Docker whatever the label says: move the rack to a version that declares it (`Version` in the params file), then ECSExec=Yes"),
    reason("rack_ecs_exec_no", Kind::Fallback, "set ECSExec=Yes",
        "the rack's ECSExec is No: `rack-reconciler set ECSExec=Yes`"),
    reason("gen1", Kind::Fallback, "migrate to Generation 2",
        "a Generation 1 app: convox exec always goes through Docker; migrate the app to Generation 2"),
    reason("service_without_exec", Kind::Fallback, "deploy or promote",
        "the task's service does not start tasks with enableExecuteCommand yet, so a restart would not help: `convox deploy -a APP`, or `convox releases promote RELEASE -a APP`"),
    reason("started_before_enable", Kind::Fallback, "restart",
        "the task started before its service had enableExecuteCommand: `convox restart -a APP` (a one-off task: start it again)"),
    reason("readonly_root_filesystem", Kind::Fails, "writable root filesystem",
        "the container's root filesystem is read-only, where the SSM agent cannot run: EnableContainerReadonlyRootFilesystem=No on the rack, or a writable root for this container, then `convox deploy -a APP`"),
    reason("platform_too_old", Kind::Fails, "redeploy on platform LATEST",
        "Fargate platform version older than 1.4.0: redeploy on platform LATEST (`convox deploy -a APP`)"),
    reason("agent_too_old", Kind::Fails, "update the ECS agent",
        "ECS container agent older than 1.50.2: update the instances' agent (a rack update with a current AMI)"),
    reason("agent_not_running", Kind::Fails, "restart",
        "the task's ExecuteCommandAgent is not running: `convox restart -a APP`; if it stops again, see its reason"),
    reason("credentials_in_environment", Kind::Fails, "remove the AWS keys from the environment",
        "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in the container's environment override the task role the SSM agent uses: remove them (`convox env unset -a APP`), grant the app's needs to its role, and deploy"),
    reason("task_role_lacks_ssmmessages", Kind::Fails, "grant ssmmessages to the task role",
        "the task role does not allow ssmmessages:CreateControlChannel, CreateDataChannel, OpenControlChannel, OpenDataChannel (or the task has no role): grant them"),
    reason("boundary_blocks_ssmmessages", Kind::Fails, "allow ssmmessages in the permissions boundary",
        "the task role's permissions boundary does not allow the ssmmessages actions its policies grant: add them to the boundary policy"),
    reason("task_role_lacks_kms_decrypt", Kind::Fails, "grant kms:Decrypt on the exec key",
        "the cluster encrypts exec sessions with a KMS key and the task role may not use it: grant kms:Decrypt on the key"),
    reason("task_role_lacks_exec_logging", Kind::Fails, "grant the exec log writes",
        "the cluster logs exec sessions and the task role may not write them: grant logs:DescribeLogGroups, CreateLogStream, DescribeLogStreams, PutLogEvents on the log group, s3:PutObject (and s3:GetEncryptionConfiguration when encrypted) on the bucket"),
    reason("no_route_to_ssm", Kind::Fails, "NAT route or ssm + ssmmessages endpoints",
        "the task cannot reach SSM: a default route to a NAT gateway (or an internet gateway with a public IP), or interface endpoints for ssm and ssmmessages with private DNS whose security groups admit the tasks on TCP 443"),
    reason("unknown_task_definition", Kind::Unknown, "allow ecs:DescribeTaskDefinition",
        "the task definition could not be read (root filesystem, environment): allow ecs:DescribeTaskDefinition to the controller; see the detail"),
    reason("unknown_platform_version", Kind::Unknown, "see the detail",
        "the task reports no Fargate platform version: look at the task (`aws ecs describe-tasks`)"),
    reason("unknown_agent_version", Kind::Unknown, "allow ecs:DescribeContainerInstances",
        "the ECS agent version of the task's instance could not be read: allow ecs:DescribeContainerInstances to the controller; see the detail"),
    reason("unknown_exec_configuration", Kind::Unknown, "allow ecs:DescribeClusters",
        "the cluster's exec configuration (KMS key, logging) could not be read: allow ecs:DescribeClusters to the controller; see the detail"),
    reason("unknown_role_permissions", Kind::Unknown, "allow iam:SimulatePrincipalPolicy",
        "the task role's permissions could not be decided: allow iam:SimulatePrincipalPolicy (or the IAM policy reads) to the controller; see the detail"),
    reason("unknown_route", Kind::Unknown, "allow the ec2:Describe* reads",
        "the task's route to SSM could not be read: allow ec2:DescribeInstances, DescribeNetworkInterfaces, DescribeRouteTables, DescribeVpcEndpoints, DescribeSecurityGroups to the controller; see the detail"),
];

/// The reason named `name`.
pub fn reason_info(name: &str) -> Option<&'static Reason> {
    REASONS.iter().find(|r| r.name == name)
}

/// The oldest ECS agent and Fargate platform that support ECS Exec.
pub const MIN_AGENT: &str = "1.50.2";
pub const MIN_PLATFORM: &str = "1.4.0";

/// How a task runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launch {
    Fargate { platform_version: Option<String> },
    Ec2 { agent_version: Fact<String> },
}

/// Whether the task's service starts tasks with `enableExecuteCommand`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceExec {
    Yes,
    No,
    /// A one-off task: no service.
    OneOff,
    Unknown(String),
}

/// What a task definition says that matters to ECS Exec.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Definition {
    /// Some container has `readonlyRootFilesystem`.
    pub readonly_root: bool,
    /// Containers whose environment (or secrets) set AWS access keys: names only.
    pub credentials: Vec<String>,
}

/// A task role's answer to each need, held in place (one per [`Need`]): thousands of tasks
/// are judged at a look, and a map would allocate for each.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Grants([Option<Fact<Grant>>; 3]);

impl Grants {
    fn slot(need: Need) -> usize {
        match need {
            Need::Ssmmessages => 0,
            Need::KmsDecrypt => 1,
            Need::ExecLogging => 2,
        }
    }

    pub fn insert(&mut self, need: Need, answer: Fact<Grant>) {
        self.0[Self::slot(need)] = Some(answer);
    }

    pub fn get(&self, need: &Need) -> Option<&Fact<Grant>> {
        self.0[Self::slot(*need)].as_ref()
    }

    pub fn contains_key(&self, need: &Need) -> bool {
        self.get(need).is_some()
    }

    /// The answers given, in the order of [`Need`].
    pub fn values(&self) -> impl Iterator<Item = &Fact<Grant>> {
        self.0.iter().flatten()
    }
}

impl FromIterator<(Need, Fact<Grant>)> for Grants {
    fn from_iter<I: IntoIterator<Item = (Need, Fact<Grant>)>>(answers: I) -> Self {
        let mut grants = Grants::default();
        for (need, answer) in answers {
            grants.insert(need, answer);
        }
        grants
    }
}

/// What is known of one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskFacts {
    pub app: String,
    /// 1 or 2 (a missing `Generation` tag is 1).
    pub generation: u8,
    /// The service's name, or `run` for a one-off task.
    pub service: String,
    /// The task's id (the last part of its ARN).
    pub task: String,
    /// The task was started with `enableExecuteCommand`.
    pub exec_enabled: bool,
    pub service_exec: ServiceExec,
    pub launch: Launch,
    /// The `ExecuteCommandAgent` managed agent's status and reason, if the task reports one.
    pub exec_agent: Option<(String, Option<String>)>,
    pub definition: Fact<Definition>,
    /// Containers whose overrides (a `convox run`) set AWS access keys.
    pub override_credentials: Vec<String>,
    /// The task role's answer to each need of the cluster.
    pub grants: Grants,
    pub route: Fact<Reach>,
}

/// The rack-wide facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RackFacts {
    /// The rack's template declares `ECSExec` (its version knows ECS Exec).
    pub declares_ecs_exec: bool,
    /// The rack's `ECSExec` is `Yes`.
    pub ecs_exec: bool,
    /// The rack's `EnableContainerReadonlyRootFilesystem` is `Yes` (apps take it at their next
    /// release: the task definition says what a task has; this only explains it).
    pub readonly_root: bool,
    /// The needs of the cluster's exec configuration.
    pub needs: Fact<Vec<Need>>,
}

/// The outcome for one task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Verdict {
    pub app: String,
    pub service: String,
    pub task: String,
    pub path: ExecPath,
    pub reason: String,
    /// What else is known (an agent's reason, a version, the route, the call that failed).
    pub detail: String,
    pub advice: String,
}

/// The advice for a reason, with the app filled in.
pub fn advice(reason: &str, app: &str) -> String {
    reason_info(reason)
        .map(|r| r.advice.replace("APP", app))
        .unwrap_or_default()
}

/// Whether dotted version `v` is at least `min` (missing parts count as 0).
pub fn at_least(v: &str, min: &str) -> bool {
    let parts = |s: &str| -> Vec<u64> {
        s.trim_start_matches('v')
            .split('.')
            .map(|p| {
                p.chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
                    .parse()
                    .unwrap_or(0)
            })
            .collect()
    };
    let (a, b) = (parts(v), parts(min));
    let n = a.len().max(b.len());
    let get = |x: &Vec<u64>, i: usize| x.get(i).copied().unwrap_or(0);
    (0..n)
        .map(|i| get(&a, i).cmp(&get(&b, i)))
        .find(|o| o.is_ne())
        .is_none_or(|o| o.is_gt())
}

/// A check's answer: passes, or a reason with its detail.
type Hit = Option<(&'static str, String)>;
type Check = fn(&RackFacts, &TaskFacts) -> Hit;

/// Convox's fallback cases, in order.
const FALLBACKS: &[Check] = &[
    |r, _| (!r.declares_ecs_exec).then(|| ("rack_version_lacks_ecs_exec", String::new())),
    |r, _| (!r.ecs_exec).then(|| ("rack_ecs_exec_no", String::new())),
    |_, t| (t.generation < 2).then(|| ("gen1", String::new())),
    not_enabled,
];

/// What ECS Exec needs, in order; each hit is a failing or an unknown reason.
const CHECKS: &[Check] = &[
    readonly_root,
    version,
    agent_running,
    credentials,
    |r, t| grant(r, t, Need::Ssmmessages),
    |r, t| grant(r, t, Need::KmsDecrypt),
    |r, t| grant(r, t, Need::ExecLogging),
    route,
];

fn not_enabled(_: &RackFacts, t: &TaskFacts) -> Hit {
    if t.exec_enabled {
        return None;
    }
    Some(match &t.service_exec {
        ServiceExec::No => ("service_without_exec", String::new()),
        ServiceExec::Yes => (
            "started_before_enable",
            "the service has enableExecuteCommand; this task predates it".into(),
        ),
        ServiceExec::OneOff => (
            "started_before_enable",
            "a one-off task started without enableExecuteCommand".into(),
        ),
        ServiceExec::Unknown(why) => (
            "started_before_enable",
            format!("whether the service has enableExecuteCommand could not be read ({why}): if a restart does not help, deploy"),
        ),
    })
}

fn readonly_root(r: &RackFacts, t: &TaskFacts) -> Hit {
    match &t.definition {
        Fact::Unknown(why) => Some(("unknown_task_definition", why.clone())),
        Fact::Known(d) if d.readonly_root => Some((
            "readonly_root_filesystem",
            if r.readonly_root {
                "readonlyRootFilesystem in the task definition; the rack sets EnableContainerReadonlyRootFilesystem=Yes"
            } else {
                "readonlyRootFilesystem in the task definition"
            }
            .into(),
        )),
        Fact::Known(_) => None,
    }
}

fn version(_: &RackFacts, t: &TaskFacts) -> Hit {
    match &t.launch {
        Launch::Fargate {
            platform_version: None,
        } => Some((
            "unknown_platform_version",
            "DescribeTasks gave no platformVersion".into(),
        )),
        Launch::Fargate {
            platform_version: Some(v),
        } if !v.starts_with(|c: char| c.is_ascii_digit()) => Some((
            "unknown_platform_version",
            format!("DescribeTasks gave platform {v}, not a version number"),
        )),
        Launch::Fargate {
            platform_version: Some(v),
        } => (!at_least(v, MIN_PLATFORM)).then(|| ("platform_too_old", format!("platform {v}"))),
        Launch::Ec2 {
            agent_version: Fact::Unknown(why),
        } => Some(("unknown_agent_version", why.clone())),
        Launch::Ec2 {
            agent_version: Fact::Known(v),
        } => (!at_least(v, MIN_AGENT)).then(|| ("agent_too_old", format!("agent {v}"))),
    }
}

fn agent_running(_: &RackFacts, t: &TaskFacts) -> Hit {
    match &t.exec_agent {
        Some((status, _)) if status == "RUNNING" => None,
        Some((status, Some(why))) => Some(("agent_not_running", format!("{status}: {why}"))),
        Some((status, None)) => Some(("agent_not_running", status.clone())),
        None => Some((
            "agent_not_running",
            "no ExecuteCommandAgent reported".into(),
        )),
    }
}

fn credentials(_: &RackFacts, t: &TaskFacts) -> Hit {
    let mut containers: Vec<&str> = t.override_credentials.iter().map(String::as_str).collect();
    if let Fact::Known(d) = &t.definition {
        containers.extend(d.credentials.iter().map(String::as_str));
    }
    containers.sort_unstable();
    containers.dedup();
    (!containers.is_empty()).then(|| {
        (
            "credentials_in_environment",
            format!("container(s) {}", containers.join(", ")),
        )
    })
}

fn grant(r: &RackFacts, t: &TaskFacts, need: Need) -> Hit {
    let needed = match &r.needs {
        Fact::Known(needs) => needs.contains(&need),
        Fact::Unknown(why) if need != Need::Ssmmessages => {
            return Some(("unknown_exec_configuration", why.clone()))
        }
        Fact::Unknown(_) => true,
    };
    if !needed {
        return None;
    }
    let (lacks, boundary) = match need {
        Need::Ssmmessages => ("task_role_lacks_ssmmessages", "boundary_blocks_ssmmessages"),
        Need::KmsDecrypt => ("task_role_lacks_kms_decrypt", "task_role_lacks_kms_decrypt"),
        Need::ExecLogging => (
            "task_role_lacks_exec_logging",
            "task_role_lacks_exec_logging",
        ),
    };
    match t.grants.get(&need) {
        Some(Fact::Known(Grant::Allowed)) => None,
        Some(Fact::Known(Grant::Denied(why))) => Some((lacks, why.clone())),
        Some(Fact::Known(Grant::DeniedByBoundary(b))) => {
            Some((boundary, format!("permissions boundary {b}")))
        }
        Some(Fact::Unknown(why)) => Some(("unknown_role_permissions", why.clone())),
        None => Some(("unknown_role_permissions", "not checked".into())),
    }
}

fn route(_: &RackFacts, t: &TaskFacts) -> Hit {
    match &t.route {
        Fact::Known(Reach::Reachable(_)) => None,
        Fact::Known(Reach::Unreachable(why)) => Some(("no_route_to_ssm", why.clone())),
        Fact::Unknown(why) => Some(("unknown_route", why.clone())),
    }
}

/// The fallback case that applies to a task, if any: then nothing past it is needed.
pub fn fallback(rack: &RackFacts, t: &TaskFacts) -> Hit {
    FALLBACKS.iter().find_map(|c| c(rack, t))
}

/// What `convox exec` into this task would do, why, and what fixes it.
pub fn evaluate(rack: &RackFacts, t: &TaskFacts) -> Verdict {
    let fargate = matches!(t.launch, Launch::Fargate { .. });
    let (path, reason, detail) = match fallback(rack, t) {
        Some((r, d)) if fargate => (
            ExecPath::Fails,
            r,
            with(d, "on Fargate there is no Docker daemon to fall back to"),
        ),
        Some((r, d)) => (ExecPath::Docker, r, d),
        None => {
            let hits: Vec<(&'static str, String)> =
                CHECKS.iter().filter_map(|c| c(rack, t)).collect();
            let kind = |name| reason_info(name).map(|r| r.kind);
            let fails = hits.iter().find(|(r, _)| kind(r) == Some(Kind::Fails));
            match fails.or(hits.first()) {
                Some((r, d)) if kind(r) == Some(Kind::Fails) => (ExecPath::Fails, *r, d.clone()),
                Some((r, d)) => (ExecPath::Unknown, *r, d.clone()),
                None => (ExecPath::EcsExec, "none", ready_detail(t)),
            }
        }
    };
    Verdict {
        app: t.app.clone(),
        service: t.service.clone(),
        task: t.task.clone(),
        path,
        reason: reason.to_string(),
        detail,
        advice: advice(reason, &t.app),
    }
}

fn with(detail: String, more: &str) -> String {
    if detail.is_empty() {
        more.to_string()
    } else {
        format!("{detail}; {more}")
    }
}

fn ready_detail(t: &TaskFacts) -> String {
    match &t.route {
        Fact::Known(Reach::Reachable(via)) => via.clone(),
        _ => String::new(),
    }
}

/// Tasks per (app, path, reason): the metric's values.
pub fn counts(verdicts: &[Verdict]) -> BTreeMap<(String, ExecPath, String), u64> {
    let mut out = BTreeMap::new();
    for v in verdicts {
        *out.entry((v.app.clone(), v.path, v.reason.clone()))
            .or_insert(0) += 1;
    }
    out
}

#[cfg(test)]
mod tests;
