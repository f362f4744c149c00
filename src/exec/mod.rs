//! Exec readiness: for every app task of the rack, would `convox exec` go through ECS Exec
//! (SSM, recorded in CloudTrail) or fall back to the Docker daemon, and if so why and what
//! fixes it. Pure: facts in, verdicts out, no AWS types.
//!
//! The reasons are a fixed, documented set (they are metric labels); the first that applies
//! wins, in the order of [`REASONS`]: a reason earlier in the list makes the later ones moot
//! (a Gen1 app never uses ECS Exec, whatever its task's agent says).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub mod check;
pub mod discover;
pub mod policy;
pub mod source;
pub mod watch;

/// How `convox exec` would reach a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecPath {
    EcsExec,
    Docker,
}

impl ExecPath {
    pub fn as_str(self) -> &'static str {
        match self {
            ExecPath::EcsExec => "ecs_exec",
            ExecPath::Docker => "docker",
        }
    }
}

/// Why a task would not use ECS Exec (`none` when it would), in the order they are checked.
pub const REASONS: [(&str, &str); 10] = [
    ("none", "ECS Exec is used"),
    ("rack_ecs_exec_no", "the rack's ECSExec is No: `rack-reconciler set ECSExec=Yes`"),
    ("gen1", "a Generation 1 app: convox exec always goes through Docker; migrate the app to Generation 2"),
    ("readonly_root_filesystem", "the container's root filesystem is read-only, where the SSM agent cannot run: EnableContainerReadonlyRootFilesystem=No on the rack, or a writable root for this container"),
    ("started_before_enable", "the task started before ECS Exec was enabled for its service: redeploy (`convox deploy -a APP`, or `convox restart -a APP`)"),
    ("platform_too_old", "Fargate platform version older than 1.4.0: redeploy on platform LATEST"),
    ("agent_too_old", "ECS container agent older than 1.50.2: update the instance's agent (a rack update with a current AMI)"),
    ("agent_not_running", "the ExecuteCommandAgent is not running in the task: restart the task; see its reason"),
    ("task_role_lacks_ssmmessages", "the task role lacks ssmmessages:CreateControlChannel, CreateDataChannel, OpenControlChannel, OpenDataChannel"),
    ("no_route_to_ssm", "the task's private subnets reach neither a NAT gateway nor an ssmmessages interface endpoint (with private DNS): add one of them"),
];

/// The four actions the SSM agent in a task needs from its task role.
pub const SSMMESSAGES_ACTIONS: [&str; 4] = [
    "ssmmessages:CreateControlChannel",
    "ssmmessages:CreateDataChannel",
    "ssmmessages:OpenControlChannel",
    "ssmmessages:OpenDataChannel",
];

/// The oldest ECS agent and Fargate platform that support ECS Exec.
pub const MIN_AGENT: &str = "1.50.2";
pub const MIN_PLATFORM: &str = "1.4.0";

/// Whether the rack's private subnets can reach SSM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum Route {
    /// Not known (not looked at yet, or the calls failed).
    Unknown { why: String },
    /// Public subnets, a NAT gateway route, or the `ssmmessages` endpoint.
    Reachable { via: String },
    /// Neither: the endpoints that would fix it.
    None { missing: Vec<String> },
}

/// The network facts, as read from the rack's outputs and the VPC.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Network {
    /// The rack is `Private=Yes`: tasks run in the private subnets.
    pub private: bool,
    /// Private route tables with a default route to a NAT gateway (or instance).
    pub nat_routes: usize,
    /// Private route tables in all.
    pub route_tables: usize,
    /// Interface endpoint service names in the VPC (`com.amazonaws.REGION.ssmmessages`...).
    pub endpoints: Vec<String>,
    pub region: String,
}

/// The service name of an interface endpoint (`cn.com.amazonaws.` in the China regions).
pub fn endpoint_service(region: &str, service: &str) -> String {
    let prefix = if region.starts_with("cn-") {
        "cn.com.amazonaws"
    } else {
        "com.amazonaws"
    };
    format!("{prefix}.{region}.{service}")
}

/// Whether tasks in the rack's subnets reach SSM. ECS Exec's agent talks to Session Manager's
/// `ssmmessages` only (AWS's ECS Exec guide and its amazon-ecs-exec-checker ask for that one
/// endpoint); `ssm` is not needed.
pub fn route(n: &Network) -> Route {
    if !n.private {
        return Route::Reachable {
            via: "public subnets".into(),
        };
    }
    if n.route_tables > 0 && n.nat_routes == n.route_tables {
        return Route::Reachable {
            via: "NAT gateway".into(),
        };
    }
    let missing: Vec<String> = ["ssmmessages"]
        .iter()
        .map(|s| endpoint_service(&n.region, s))
        .filter(|name| !n.endpoints.contains(name))
        .collect();
    if missing.is_empty() {
        Route::Reachable {
            via: "VPC endpoints".into(),
        }
    } else {
        Route::None { missing }
    }
}

/// How a task runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launch {
    Fargate { platform_version: Option<String> },
    Ec2 { agent_version: Option<String> },
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
    pub launch: Launch,
    /// The `ExecuteCommandAgent` managed agent's status and reason, if the task reports one.
    pub exec_agent: Option<(String, Option<String>)>,
    /// Some container's root filesystem is read-only.
    pub readonly_root: bool,
    /// The task role allows the four `ssmmessages` actions (`None`: not known).
    pub role_allows_ssmmessages: Option<bool>,
}

/// The rack-wide facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RackFacts {
    /// The rack's `ECSExec` is `Yes` (converged).
    pub ecs_exec: bool,
    /// The rack's `EnableContainerReadonlyRootFilesystem` is `Yes` (apps take it at their next
    /// release: the task definition says what a task has; this only explains it).
    pub readonly_root: bool,
    pub route: Route,
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
    /// What else is known (an agent's reason, a version, the missing endpoints).
    pub detail: String,
    pub advice: String,
}

/// The advice for a reason, with the app filled in.
pub fn advice(reason: &str, app: &str) -> String {
    REASONS
        .iter()
        .find(|(r, _)| *r == reason)
        .map(|(_, a)| a.replace("APP", app))
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

/// The first reason that applies, with its detail.
fn reason(rack: &RackFacts, t: &TaskFacts) -> Option<(&'static str, String)> {
    if !rack.ecs_exec {
        return Some(("rack_ecs_exec_no", String::new()));
    }
    if t.generation < 2 {
        return Some(("gen1", String::new()));
    }
    if t.readonly_root {
        let detail = if rack.readonly_root {
            "readonlyRootFilesystem in the task definition; the rack sets EnableContainerReadonlyRootFilesystem=Yes"
        } else {
            "readonlyRootFilesystem in the task definition"
        };
        return Some(("readonly_root_filesystem", detail.into()));
    }
    if !t.exec_enabled {
        return Some(("started_before_enable", String::new()));
    }
    match &t.launch {
        Launch::Fargate {
            platform_version: Some(v),
        } if !at_least(v, MIN_PLATFORM) => {
            return Some(("platform_too_old", format!("platform {v}")));
        }
        Launch::Ec2 {
            agent_version: Some(v),
        } if !at_least(v, MIN_AGENT) => {
            return Some(("agent_too_old", format!("agent {v}")));
        }
        _ => {}
    }
    match &t.exec_agent {
        Some((status, why)) if status != "RUNNING" => {
            let detail = match why {
                Some(w) => format!("{status}: {w}"),
                None => status.clone(),
            };
            return Some(("agent_not_running", detail));
        }
        None => {
            return Some((
                "agent_not_running",
                "no ExecuteCommandAgent reported".into(),
            ))
        }
        _ => {}
    }
    if t.role_allows_ssmmessages == Some(false) {
        return Some(("task_role_lacks_ssmmessages", String::new()));
    }
    if let Route::None { missing } = &rack.route {
        return Some(("no_route_to_ssm", format!("missing {}", missing.join(", "))));
    }
    None
}

/// Would `convox exec` into this task use ECS Exec, and if not, why and what fixes it.
pub fn evaluate(rack: &RackFacts, t: &TaskFacts) -> Verdict {
    let (path, reason, detail) = match reason(rack, t) {
        Some((r, d)) => (ExecPath::Docker, r, d),
        None => (ExecPath::EcsExec, "none", String::new()),
    };
    Verdict {
        app: t.app.clone(),
        service: t.service.clone(),
        task: t.task.clone(),
        path,
        reason: reason.to_string(),
        detail,
        advice: if path == ExecPath::Docker {
            advice(reason, &t.app)
        } else {
            String::new()
        },
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

/// Tasks falling back to Docker listed by name in the status; the rest are counted.
pub const LISTED_FALLBACKS: usize = 100;

/// Exec readiness as the status shows it: totals, per app, and the tasks that fall back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ExecStatus {
    /// When every app was last looked at (RFC 3339).
    pub checked_at: Option<String>,
    /// The rack's `ECSExec` is `Yes`.
    pub rack_ecs_exec: bool,
    pub route: Option<Route>,
    pub tasks: usize,
    pub ecs_exec: usize,
    pub docker: usize,
    pub apps: Vec<AppSummary>,
    /// The tasks that would fall back to Docker exec, up to [`LISTED_FALLBACKS`].
    pub fallbacks: Vec<Verdict>,
    /// Fallbacks beyond those listed.
    #[serde(default)]
    pub more_fallbacks: usize,
    /// The last look failed (the rest is from the look before).
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct AppSummary {
    pub app: String,
    pub generation: u8,
    pub ecs_exec: usize,
    pub docker: usize,
    /// Tasks per reason, `none` included.
    pub reasons: BTreeMap<String, usize>,
}

impl ExecStatus {
    pub fn from_readiness(r: &discover::Readiness) -> ExecStatus {
        let mut apps: BTreeMap<&str, AppSummary> = r
            .apps
            .iter()
            .map(|(a, g)| {
                let s = AppSummary {
                    app: a.clone(),
                    generation: *g,
                    ..AppSummary::default()
                };
                (a.as_str(), s)
            })
            .collect();
        for v in &r.verdicts {
            if let Some(a) = apps.get_mut(v.app.as_str()) {
                match v.path {
                    ExecPath::EcsExec => a.ecs_exec += 1,
                    ExecPath::Docker => a.docker += 1,
                }
                *a.reasons.entry(v.reason.clone()).or_default() += 1;
            }
        }
        let fallbacks: Vec<&Verdict> = r
            .verdicts
            .iter()
            .filter(|v| v.path == ExecPath::Docker)
            .collect();
        ExecStatus {
            checked_at: Some(crate::status::rfc3339(r.checked_at)),
            rack_ecs_exec: r.rack.ecs_exec,
            route: Some(r.rack.route.clone()),
            tasks: r.verdicts.len(),
            ecs_exec: r.verdicts.len() - fallbacks.len(),
            docker: fallbacks.len(),
            apps: apps.into_values().collect(),
            more_fallbacks: fallbacks.len().saturating_sub(LISTED_FALLBACKS),
            fallbacks: fallbacks
                .into_iter()
                .take(LISTED_FALLBACKS)
                .cloned()
                .collect(),
            error: None,
        }
    }

    /// The `ExecReady` condition: status (`True`, `False`, `Unknown`), reason, message.
    pub fn condition(&self) -> (&'static str, &'static str, String) {
        if self.checked_at.is_none() {
            let why = self.error.as_deref().unwrap_or("not looked at yet");
            return ("Unknown", "NotChecked", format!("exec readiness: {why}"));
        }
        if !self.rack_ecs_exec {
            return (
                "False",
                "RackEcsExecNo",
                "the rack's ECSExec is No: convox exec goes through Docker for every task".into(),
            );
        }
        if self.docker == 0 {
            return (
                "True",
                "AllTasksUseEcsExec",
                format!("all {} tasks would use ECS Exec", self.tasks),
            );
        }
        let mut by_reason: BTreeMap<&str, (usize, Vec<&str>)> = BTreeMap::new();
        for a in &self.apps {
            for (reason, n) in a.reasons.iter().filter(|(r, _)| *r != "none") {
                let e = by_reason.entry(reason.as_str()).or_default();
                e.0 += n;
                e.1.push(a.app.as_str());
            }
        }
        let parts: Vec<String> = by_reason
            .iter()
            .map(|(r, (n, apps))| format!("{n} {r} ({})", apps.join(", ")))
            .collect();
        (
            "False",
            "TasksFallBackToDocker",
            format!(
                "{} of {} tasks would fall back to Docker exec (not audited): {}; see `rack-reconciler exec-check`",
                self.docker,
                self.tasks,
                parts.join(", ")
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready_task() -> TaskFacts {
        TaskFacts {
            app: "web".into(),
            generation: 2,
            service: "web".into(),
            task: "abc".into(),
            exec_enabled: true,
            launch: Launch::Ec2 {
                agent_version: Some("1.89.1".into()),
            },
            exec_agent: Some(("RUNNING".into(), None)),
            readonly_root: false,
            role_allows_ssmmessages: Some(true),
        }
    }

    fn rack() -> RackFacts {
        RackFacts {
            ecs_exec: true,
            readonly_root: false,
            route: Route::Reachable {
                via: "NAT gateway".into(),
            },
        }
    }

    #[test]
    fn each_reason_from_its_fact() {
        type Edit = fn(&mut RackFacts, &mut TaskFacts);
        let cases: [(&str, Edit); 11] = [
            ("none", |_, _| {}),
            ("gen1", |_, t| t.generation = 1),
            ("rack_ecs_exec_no", |r, _| r.ecs_exec = false),
            ("readonly_root_filesystem", |_, t| t.readonly_root = true),
            ("none", |r, _| r.readonly_root = true),
            ("started_before_enable", |_, t| t.exec_enabled = false),
            ("platform_too_old", |_, t| {
                t.launch = Launch::Fargate {
                    platform_version: Some("1.3.0".into()),
                }
            }),
            ("agent_too_old", |_, t| {
                t.launch = Launch::Ec2 {
                    agent_version: Some("1.50.1".into()),
                }
            }),
            ("agent_not_running", |_, t| {
                t.exec_agent = Some(("STOPPED".into(), Some("InternalError".into())))
            }),
            ("task_role_lacks_ssmmessages", |_, t| {
                t.role_allows_ssmmessages = Some(false)
            }),
            ("no_route_to_ssm", |r, _| {
                r.route = Route::None {
                    missing: vec!["com.amazonaws.us-east-1.ssmmessages".into()],
                }
            }),
        ];
        for (want, edit) in cases {
            let (mut r, mut t) = (rack(), ready_task());
            edit(&mut r, &mut t);
            let v = evaluate(&r, &t);
            assert_eq!(v.reason, want);
            assert_eq!(v.path == ExecPath::EcsExec, want == "none", "{want}");
            assert_eq!(v.advice.is_empty(), want == "none", "{want}");
        }
    }

    #[test]
    fn an_earlier_reason_wins() {
        let mut t = ready_task();
        t.generation = 1;
        t.exec_enabled = false;
        let mut r = rack();
        r.ecs_exec = false;
        assert_eq!(evaluate(&r, &t).reason, "rack_ecs_exec_no");
        r.ecs_exec = true;
        assert_eq!(evaluate(&r, &t).reason, "gen1");
        t.generation = 2;
        assert_eq!(evaluate(&r, &t).reason, "started_before_enable");
    }

    #[test]
    fn versions_compare_by_number() {
        for (v, min, ok) in [
            ("1.50.2", "1.50.2", true),
            ("1.50.10", "1.50.2", true),
            ("1.9.0", "1.50.2", false),
            ("1.4", "1.4.0", true),
            ("1.3.0", "1.4.0", false),
            ("2.0.0", "1.50.2", true),
            ("LATEST", "1.4.0", false),
        ] {
            assert_eq!(at_least(v, min), ok, "{v} >= {min}");
        }
    }

    #[test]
    fn the_route_to_ssm() {
        let private = |nat, tables, endpoints: &[&str]| Network {
            private: true,
            nat_routes: nat,
            route_tables: tables,
            endpoints: endpoints.iter().map(|s| s.to_string()).collect(),
            region: "us-east-1".into(),
        };
        assert!(matches!(
            route(&Network::default()),
            Route::Reachable { .. }
        ));
        assert!(matches!(
            route(&private(3, 3, &[])),
            Route::Reachable { .. }
        ));
        assert_eq!(
            route(&private(2, 3, &["com.amazonaws.us-east-1.ssm"])),
            Route::None {
                missing: vec!["com.amazonaws.us-east-1.ssmmessages".into()]
            }
        );
        assert!(matches!(
            route(&private(0, 3, &["com.amazonaws.us-east-1.ssmmessages"])),
            Route::Reachable { .. }
        ));
        let mut china = private(0, 2, &[]);
        china.region = "cn-north-1".into();
        assert_eq!(
            route(&china),
            Route::None {
                missing: vec!["cn.com.amazonaws.cn-north-1.ssmmessages".into()]
            }
        );
    }

    #[test]
    fn counts_per_app_path_and_reason() {
        let r = rack();
        let mut old = ready_task();
        old.exec_enabled = false;
        let vs = vec![
            evaluate(&r, &ready_task()),
            evaluate(&r, &old),
            evaluate(&r, &old),
        ];
        let c = counts(&vs);
        assert_eq!(c[&("web".into(), ExecPath::EcsExec, "none".into())], 1);
        assert_eq!(
            c[&(
                "web".into(),
                ExecPath::Docker,
                "started_before_enable".into()
            )],
            2
        );
    }
}
