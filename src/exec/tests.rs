use super::*;

fn ready_task() -> TaskFacts {
    TaskFacts {
        app: "web".into(),
        generation: 2,
        service: "web".into(),
        task: "abc".into(),
        exec_enabled: true,
        service_exec: ServiceExec::Yes,
        launch: Launch::Ec2 {
            agent_version: Fact::Known("1.89.1".into()),
        },
        exec_agent: Some(("RUNNING".into(), None)),
        definition: Fact::Known(Definition::default()),
        override_credentials: Vec::new(),
        grants: Grants::from_iter([(Need::Ssmmessages, Fact::Known(Grant::Allowed))]),
        route: Fact::Known(Reach::Reachable("ssm via NAT nat-1".into())),
    }
}

fn rack() -> RackFacts {
    RackFacts {
        declares_ecs_exec: true,
        ecs_exec: true,
        readonly_root: false,
        needs: Fact::Known(vec![Need::Ssmmessages]),
    }
}

fn unknown<T>() -> Fact<T> {
    Fact::Unknown("AccessDenied".into())
}

type Edit = fn(&mut RackFacts, &mut TaskFacts);

#[test]
fn each_reason_from_its_fact() {
    let cases: &[(&str, ExecPath, Edit)] = &[
        ("none", ExecPath::EcsExec, |_, _| {}),
        ("rack_version_lacks_ecs_exec", ExecPath::Docker, |r, _| {
            r.declares_ecs_exec = false
        }),
        ("rack_ecs_exec_no", ExecPath::Docker, |r, _| {
            r.ecs_exec = false
        }),
        ("gen1", ExecPath::Docker, |_, t| t.generation = 1),
        ("service_without_exec", ExecPath::Docker, |_, t| {
            t.exec_enabled = false;
            t.service_exec = ServiceExec::No;
        }),
        ("started_before_enable", ExecPath::Docker, |_, t| {
            t.exec_enabled = false
        }),
        ("started_before_enable", ExecPath::Docker, |_, t| {
            t.exec_enabled = false;
            t.service_exec = ServiceExec::Unknown("DescribeServices: throttled".into());
        }),
        ("readonly_root_filesystem", ExecPath::Fails, |_, t| {
            t.definition = Fact::Known(Definition {
                readonly_root: true,
                credentials: vec![],
            })
        }),
        ("none", ExecPath::EcsExec, |r, _| r.readonly_root = true),
        ("platform_too_old", ExecPath::Fails, |_, t| {
            t.launch = Launch::Fargate {
                platform_version: Some("1.3.0".into()),
            }
        }),
        ("agent_too_old", ExecPath::Fails, |_, t| {
            t.launch = Launch::Ec2 {
                agent_version: Fact::Known("1.50.1".into()),
            }
        }),
        ("agent_not_running", ExecPath::Fails, |_, t| {
            t.exec_agent = Some(("STOPPED".into(), Some("InternalError".into())))
        }),
        ("agent_not_running", ExecPath::Fails, |_, t| {
            t.exec_agent = None
        }),
        ("credentials_in_environment", ExecPath::Fails, |_, t| {
            t.override_credentials = vec!["main".into()]
        }),
        ("credentials_in_environment", ExecPath::Fails, |_, t| {
            t.definition = Fact::Known(Definition {
                readonly_root: false,
                credentials: vec!["web".into()],
            })
        }),
        ("task_role_lacks_ssmmessages", ExecPath::Fails, |_, t| {
            t.grants.insert(
                Need::Ssmmessages,
                Fact::Known(Grant::Denied("no role".into())),
            );
        }),
        ("boundary_blocks_ssmmessages", ExecPath::Fails, |_, t| {
            t.grants.insert(
                Need::Ssmmessages,
                Fact::Known(Grant::DeniedByBoundary("b".into())),
            );
        }),
        ("task_role_lacks_kms_decrypt", ExecPath::Fails, |r, t| {
            r.needs = Fact::Known(vec![Need::Ssmmessages, Need::KmsDecrypt]);
            t.grants
                .insert(Need::KmsDecrypt, Fact::Known(Grant::Denied(String::new())));
        }),
        ("task_role_lacks_exec_logging", ExecPath::Fails, |r, t| {
            r.needs = Fact::Known(vec![Need::Ssmmessages, Need::ExecLogging]);
            t.grants.insert(
                Need::ExecLogging,
                Fact::Known(Grant::DeniedByBoundary("b".into())),
            );
        }),
        ("no_route_to_ssm", ExecPath::Fails, |_, t| {
            t.route = Fact::Known(Reach::Unreachable("ssm: no default route".into()))
        }),
        ("unknown_task_definition", ExecPath::Unknown, |_, t| {
            t.definition = unknown()
        }),
        ("unknown_platform_version", ExecPath::Unknown, |_, t| {
            t.launch = Launch::Fargate {
                platform_version: None,
            }
        }),
        ("unknown_agent_version", ExecPath::Unknown, |_, t| {
            t.launch = Launch::Ec2 {
                agent_version: unknown(),
            }
        }),
        ("unknown_exec_configuration", ExecPath::Unknown, |r, _| {
            r.needs = unknown()
        }),
        ("unknown_role_permissions", ExecPath::Unknown, |_, t| {
            t.grants.insert(Need::Ssmmessages, unknown());
        }),
        ("unknown_role_permissions", ExecPath::Unknown, |r, _| {
            r.needs = Fact::Known(vec![Need::Ssmmessages, Need::KmsDecrypt]);
        }),
        ("unknown_route", ExecPath::Unknown, |_, t| {
            t.route = unknown()
        }),
    ];
    for (want, path, edit) in cases {
        let (mut r, mut t) = (rack(), ready_task());
        edit(&mut r, &mut t);
        let v = evaluate(&r, &t);
        assert_eq!((v.reason.as_str(), v.path), (*want, *path), "{v:?}");
        assert_eq!(v.advice.is_empty(), *want == "none", "{want}");
    }
    let named: Vec<&str> = cases.iter().map(|(r, _, _)| *r).collect();
    for r in REASONS {
        assert!(named.contains(&r.name), "{} has no case", r.name);
    }
}

#[test]
fn a_fallback_case_decides_first_and_fails_on_fargate() {
    let mut t = ready_task();
    t.generation = 1;
    t.exec_enabled = false;
    t.route = unknown();
    let mut r = rack();
    r.ecs_exec = false;
    assert_eq!(evaluate(&r, &t).reason, "rack_ecs_exec_no");
    r.ecs_exec = true;
    assert_eq!(evaluate(&r, &t).reason, "gen1");
    t.generation = 2;
    let v = evaluate(&r, &t);
    assert_eq!(
        (v.path, v.reason.as_str()),
        (ExecPath::Docker, "started_before_enable")
    );
    t.launch = Launch::Fargate {
        platform_version: Some("1.4.0".into()),
    };
    let v = evaluate(&r, &t);
    assert_eq!(
        (v.path, v.reason.as_str()),
        (ExecPath::Fails, "started_before_enable")
    );
    assert!(v.detail.contains("no Docker daemon"), "{}", v.detail);
}

#[test]
fn a_proven_failure_outranks_an_unknown_fact() {
    let (r, mut t) = (rack(), ready_task());
    t.definition = unknown();
    t.route = Fact::Known(Reach::Unreachable("no route".into()));
    let v = evaluate(&r, &t);
    assert_eq!(
        (v.path, v.reason.as_str()),
        (ExecPath::Fails, "no_route_to_ssm")
    );
    t.route = unknown();
    let v = evaluate(&r, &t);
    assert_eq!(
        (v.path, v.reason.as_str()),
        (ExecPath::Unknown, "unknown_task_definition")
    );
}

/// One value of each fact: good, failing, unreadable.
struct Values {
    launches: Vec<Launch>,
    definitions: Vec<Fact<Definition>>,
    grants: Vec<Option<Fact<Grant>>>,
    routes: Vec<Fact<Reach>>,
    needs: Vec<Fact<Vec<Need>>>,
    agents: Vec<Option<(String, Option<String>)>>,
    /// Rack declares ECSExec, rack ECSExec, generation, task exec-enabled.
    racks: Vec<(bool, bool, u8, bool)>,
}

fn values() -> Values {
    let all = vec![Need::Ssmmessages, Need::KmsDecrypt, Need::ExecLogging];
    Values {
        launches: vec![
            Launch::Ec2 {
                agent_version: Fact::Known("1.89.1".into()),
            },
            Launch::Ec2 {
                agent_version: Fact::Known("1.2.0".into()),
            },
            Launch::Ec2 {
                agent_version: unknown(),
            },
            Launch::Fargate {
                platform_version: Some("1.4.0".into()),
            },
            Launch::Fargate {
                platform_version: Some("1.3.0".into()),
            },
            Launch::Fargate {
                platform_version: None,
            },
        ],
        definitions: vec![
            Fact::Known(Definition::default()),
            Fact::Known(Definition {
                readonly_root: true,
                credentials: vec![],
            }),
            Fact::Known(Definition {
                readonly_root: false,
                credentials: vec!["c".into()],
            }),
            unknown(),
        ],
        grants: vec![
            Some(Fact::Known(Grant::Allowed)),
            Some(Fact::Known(Grant::Denied(String::new()))),
            Some(Fact::Known(Grant::DeniedByBoundary(String::new()))),
            Some(unknown()),
            None,
        ],
        routes: vec![
            Fact::Known(Reach::Reachable("nat".into())),
            Fact::Known(Reach::Unreachable("none".into())),
            unknown(),
        ],
        needs: vec![
            Fact::Known(vec![Need::Ssmmessages]),
            Fact::Known(all),
            unknown(),
        ],
        agents: vec![
            Some(("RUNNING".into(), None)),
            Some(("STOPPED".into(), None)),
            None,
        ],
        racks: vec![
            (true, true, 2, true),
            (false, true, 2, true),
            (true, false, 2, true),
            (true, true, 1, true),
            (true, true, 2, false),
        ],
    }
}

/// Every combination of [`values`].
fn combinations() -> Vec<(RackFacts, TaskFacts)> {
    let v = values();
    let mut out = Vec::new();
    for (launch, definition, g, route, needs, agent, rack) in product(&v) {
        let (declares, on, gen, enabled) = *rack;
        let r = RackFacts {
            declares_ecs_exec: declares,
            ecs_exec: on,
            readonly_root: false,
            needs: needs.clone(),
        };
        let mut t = ready_task();
        t.generation = gen;
        t.exec_enabled = enabled;
        t.launch = launch.clone();
        t.definition = definition.clone();
        t.exec_agent = agent.clone();
        t.route = route.clone();
        t.grants = [Need::Ssmmessages, Need::KmsDecrypt, Need::ExecLogging]
            .into_iter()
            .filter_map(|n| g.clone().map(|g| (n, g)))
            .collect();
        out.push((r, t));
    }
    out
}

type Combination<'a> = (
    &'a Launch,
    &'a Fact<Definition>,
    &'a Option<Fact<Grant>>,
    &'a Fact<Reach>,
    &'a Fact<Vec<Need>>,
    &'a Option<(String, Option<String>)>,
    &'a (bool, bool, u8, bool),
);

fn product(v: &Values) -> Vec<Combination<'_>> {
    let mut out = Vec::new();
    for l in &v.launches {
        for d in &v.definitions {
            for g in &v.grants {
                for r in &v.routes {
                    for n in &v.needs {
                        for a in &v.agents {
                            out.extend(v.racks.iter().map(|k| (l, d, g, r, n, a, k)));
                        }
                    }
                }
            }
        }
    }
    out
}

/// Every fact the decision needs was read and passes (written apart from the checks).
fn proven(r: &RackFacts, t: &TaskFacts) -> bool {
    let version = match &t.launch {
        Launch::Ec2 {
            agent_version: Fact::Known(v),
        } => v == "1.89.1",
        Launch::Fargate {
            platform_version: Some(v),
        } => v == "1.4.0",
        _ => false,
    };
    r.declares_ecs_exec
        && r.ecs_exec
        && matches!(r.needs, Fact::Known(_))
        && t.generation == 2
        && t.exec_enabled
        && version
        && t.definition == Fact::Known(Definition::default())
        && t.grants.values().all(|g| *g == Fact::Known(Grant::Allowed))
        && t.grants.contains_key(&Need::Ssmmessages)
        && matches!(t.route, Fact::Known(Reach::Reachable(_)))
        && matches!(&t.exec_agent, Some((s, _)) if s == "RUNNING")
}

/// Every combination of good, failing and unreadable facts: `ecs_exec` only when every fact
/// the decision needs was read and passes; the path always matches the reason's kind.
#[test]
fn never_ecs_exec_without_every_fact() {
    let all = combinations();
    assert_eq!(all.len(), 6 * 4 * 5 * 3 * 3 * 3 * 5);
    for (r, t) in &all {
        let v = evaluate(r, t);
        assert_eq!(
            v.path == ExecPath::EcsExec,
            proven(r, t),
            "{r:?} {t:?} -> {v:?}"
        );
        let kind = reason_info(&v.reason).map(|r| r.kind);
        let want = match (v.path, kind) {
            (ExecPath::EcsExec, _) => Kind::Ready,
            (ExecPath::Docker, _) | (ExecPath::Fails, Some(Kind::Fallback)) => Kind::Fallback,
            (ExecPath::Fails, _) => Kind::Fails,
            (ExecPath::Unknown, _) => Kind::Unknown,
        };
        assert_eq!(kind, Some(want), "{v:?}");
    }
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

#[test]
fn the_metric_help_names_every_path_reason_and_fix() {
    let help = crate::metrics::METRICS
        .iter()
        .find(|m| m.name == "rack_reconciler_exec_tasks")
        .map(|m| m.help)
        .unwrap_or_default();
    for p in ExecPath::ALL {
        assert!(help.contains(p.as_str()), "{}", p.as_str());
    }
    for r in REASONS.iter().filter(|r| r.name != "none") {
        assert!(
            help.contains(&format!("{}, {}", r.name, r.fix)),
            "{}",
            r.name
        );
    }
}
