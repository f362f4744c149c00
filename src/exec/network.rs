//! Whether a task reaches SSM, from what the VPC says. Pure: the reads are
//! [`super::source::ExecSource`]'s.
//!
//! The SSM agent in a task talks to two services, `ssm` and `ssmmessages`. For each, where the
//! task's VPC has a usable interface endpoint (available, private DNS), every request goes to
//! it, so its security groups must admit the task on TCP 443; otherwise the request goes out by
//! the subnet's default route: a NAT gateway (or instance), or an internet gateway when the task
//! has a public IP. A default route anywhere else (transit gateway, peering, virtual private
//! gateway) cannot be followed from the VPC's description: not known.
//!
//! The rack-wide judgement made before `ECSExec` is turned on ([`route`]) is coarser: the
//! rack's private route tables (from its outputs) and the VPC's endpoints.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::Fact;

/// The services the SSM agent needs, as interface endpoint names end.
pub const SSM_SERVICES: [&str; 2] = ["ssm", "ssmmessages"];

/// The service name of an interface endpoint (`cn.com.amazonaws.` in the China regions).
pub fn endpoint_service(region: &str, service: &str) -> String {
    let prefix = if region.starts_with("cn-") {
        "cn.com.amazonaws"
    } else {
        "com.amazonaws"
    };
    format!("{prefix}.{region}.{service}")
}

/// Where a task sits in its VPC: its host's (EC2, bridge or host networking) or its own
/// network interface's (awsvpc).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskNetwork {
    pub vpc: String,
    pub subnet: String,
    pub private_ip: Option<Ipv4Addr>,
    pub public_ip: bool,
    pub groups: Vec<String>,
}

/// Where a route table's default route (`0.0.0.0/0`, not a blackhole) goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    InternetGateway(String),
    /// A NAT gateway or a NAT instance.
    Nat(String),
    /// Anything else (transit gateway, peering, virtual private gateway, network interface).
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteTable {
    pub id: String,
    pub vpc: String,
    /// The VPC's main table: it serves every subnet no other table is associated with.
    pub main: bool,
    pub subnets: Vec<String>,
    pub default_route: Option<Target>,
}

/// An interface endpoint of a VPC.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Endpoint {
    pub id: String,
    pub vpc: String,
    /// `com.amazonaws.REGION.ssm`...
    pub service: String,
    /// An interface endpoint that is available, with private DNS (requests for the service
    /// go to it), or an available gateway endpoint.
    pub usable: bool,
    /// A gateway endpoint (S3, DynamoDB): it serves the subnets of its route tables.
    pub gateway: bool,
    pub route_tables: Vec<String>,
    pub groups: Vec<String>,
}

/// A security group's inbound rules.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SecurityGroup {
    pub id: String,
    pub ingress: Vec<Ingress>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ingress {
    /// `tcp`, `-1` (all traffic)...
    pub protocol: String,
    pub from_port: Option<i32>,
    pub to_port: Option<i32>,
    pub cidrs: Vec<String>,
    /// Source security groups.
    pub groups: Vec<String>,
}

/// What was read of the tasks' VPCs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Vpcs {
    pub tables: Vec<RouteTable>,
    pub endpoints: Vec<Endpoint>,
    pub groups: BTreeMap<String, SecurityGroup>,
}

/// A task's route to SSM, when it could be told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "state", content = "detail")]
pub enum Reach {
    Reachable(String),
    Unreachable(String),
}

/// How the task reaches each of `services` ([`SSM_SERVICES`], and `kms`, `logs`, `s3` when
/// the cluster's exec configuration uses them).
pub fn task_route(net: &TaskNetwork, vpcs: &Vpcs, region: &str, services: &[&str]) -> Fact<Reach> {
    let mut via = Vec::new();
    let mut blocked = Vec::new();
    let mut unknown = Vec::new();
    for &service in services {
        match service_route(net, vpcs, region, service) {
            Fact::Known(Ok(v)) => via.push(format!("{service} via {v}")),
            Fact::Known(Err(why)) => blocked.push(format!("{service}: {why}")),
            Fact::Unknown(why) => unknown.push(format!("{service}: {why}")),
        }
    }
    if !blocked.is_empty() {
        Fact::Known(Reach::Unreachable(blocked.join("; ")))
    } else if !unknown.is_empty() {
        Fact::Unknown(unknown.join("; "))
    } else {
        Fact::Known(Reach::Reachable(via.join(", ")))
    }
}

/// `Ok(via)` or `Err(why not)` for one service.
fn service_route(
    net: &TaskNetwork,
    vpcs: &Vpcs,
    region: &str,
    service: &str,
) -> Fact<Result<String, String>> {
    let table = subnet_table(net, vpcs);
    let mine = |e: &&Endpoint| e.usable && e.vpc == net.vpc && serves(&e.service, region, service);
    let gateway = vpcs
        .endpoints
        .iter()
        .filter(mine)
        .find(|e| e.gateway && table.is_some_and(|t| e.route_tables.contains(&t.id)));
    if let Some(g) = gateway {
        return Fact::Known(Ok(format!("gateway endpoint {}", g.id)));
    }
    let endpoints: Vec<&Endpoint> = vpcs
        .endpoints
        .iter()
        .filter(mine)
        .filter(|e| !e.gateway)
        .collect();
    if endpoints.is_empty() {
        return match internet(net, vpcs) {
            Fact::Known(Err(why)) => Fact::Known(Err(format!(
                "{why}, and the VPC has no {} interface endpoint with private DNS",
                endpoint_service(region, service)
            ))),
            other => other,
        };
    }
    let mut unknown = None;
    for e in &endpoints {
        match admits(e, net, vpcs) {
            Fact::Known(true) => return Fact::Known(Ok(format!("endpoint {}", e.id))),
            Fact::Known(false) => {}
            Fact::Unknown(why) => unknown = Some(why),
        }
    }
    match unknown {
        Some(why) => Fact::Unknown(why),
        None => {
            let ids: Vec<&str> = endpoints.iter().map(|e| e.id.as_str()).collect();
            Fact::Known(Err(format!(
                "the security groups of endpoint {} do not admit the task ({}) on TCP 443",
                ids.join(", "),
                net.private_ip
                    .map(|ip| ip.to_string())
                    .unwrap_or_else(|| net.groups.join(", "))
            )))
        }
    }
}

/// Out through the subnet's default route.
fn internet(net: &TaskNetwork, vpcs: &Vpcs) -> Fact<Result<String, String>> {
    let Some(table) = subnet_table(net, vpcs) else {
        return Fact::Unknown(format!(
            "no route table of subnet {} was found in {}",
            net.subnet, net.vpc
        ));
    };
    match &table.default_route {
        Some(Target::Nat(id)) => Fact::Known(Ok(format!("NAT {id}"))),
        Some(Target::InternetGateway(id)) if net.public_ip => {
            Fact::Known(Ok(format!("internet gateway {id}")))
        }
        Some(Target::InternetGateway(id)) => Fact::Known(Err(format!(
            "subnet {} routes to internet gateway {id} but the task has no public IP",
            net.subnet
        ))),
        Some(Target::Other(id)) => Fact::Unknown(format!(
            "the default route of {} goes to {id}: whether that reaches SSM cannot be read from the VPC",
            table.id
        )),
        None => Fact::Known(Err(format!(
            "route table {} of subnet {} has no default route",
            table.id, net.subnet
        ))),
    }
}

/// The subnet's route table: the one associated with it, else its VPC's main table.
fn subnet_table<'a>(net: &TaskNetwork, vpcs: &'a Vpcs) -> Option<&'a RouteTable> {
    vpcs.tables
        .iter()
        .find(|t| t.subnets.contains(&net.subnet))
        .or_else(|| vpcs.tables.iter().find(|t| t.main && t.vpc == net.vpc))
}

/// Whether one of the endpoint's security groups admits the task on TCP 443.
fn admits(e: &Endpoint, net: &TaskNetwork, vpcs: &Vpcs) -> Fact<bool> {
    let mut unknown = None;
    for id in &e.groups {
        let Some(g) = vpcs.groups.get(id) else {
            unknown = Some(format!(
                "security group {id} of endpoint {} was not read",
                e.id
            ));
            continue;
        };
        for rule in g.ingress.iter().filter(|r| r.covers_443()) {
            if rule.groups.iter().any(|s| net.groups.contains(s)) {
                return Fact::Known(true);
            }
            for cidr in &rule.cidrs {
                match (net.private_ip, cidr.as_str()) {
                    (_, "0.0.0.0/0") => return Fact::Known(true),
                    (Some(ip), c) if contains(c, ip) => return Fact::Known(true),
                    (None, _) => {
                        unknown = Some(format!(
                            "{id} admits {cidr} on 443 and the task's private IP is not known"
                        ))
                    }
                    _ => {}
                }
            }
        }
    }
    match unknown {
        Some(why) => Fact::Unknown(why),
        None => Fact::Known(false),
    }
}

impl Ingress {
    fn covers_443(&self) -> bool {
        match self.protocol.as_str() {
            "-1" | "all" => true,
            "tcp" | "6" => {
                let (from, to) = (self.from_port.unwrap_or(0), self.to_port.unwrap_or(65535));
                from <= 443 && 443 <= to
            }
            _ => false,
        }
    }
}

/// Whether endpoint service `name` is `service` of `region` (`com.amazonaws.REGION.ssm`,
/// `cn.com.amazonaws.REGION.ssm`: the China regions use both prefixes).
pub fn serves(name: &str, region: &str, service: &str) -> bool {
    name.ends_with(&format!(".{region}.{service}"))
}

/// Whether IPv4 `cidr` (`10.0.0.0/16`) holds `ip`; a malformed CIDR holds nothing.
pub fn contains(cidr: &str, ip: Ipv4Addr) -> bool {
    let Some((net, bits)) = cidr.split_once('/') else {
        return false;
    };
    let (Ok(net), Ok(bits)) = (net.parse::<Ipv4Addr>(), bits.parse::<u32>()) else {
        return false;
    };
    if bits > 32 {
        return false;
    }
    let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
    u32::from(net) & mask == u32::from(ip) & mask
}

/// Whether the rack's private subnets can reach SSM (the requirement checked before `ECSExec`
/// is turned on).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum Route {
    /// Not known (not looked at yet, or the calls failed).
    Unknown { why: String },
    /// Public subnets, a NAT gateway route, or both interface endpoints.
    Reachable { via: String },
    /// Neither: the endpoints that would fix it.
    None { missing: Vec<String> },
}

/// The rack-wide network facts: its outputs and its VPC.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Network {
    /// The rack is `Private=Yes`: tasks run in the private subnets.
    pub private: bool,
    /// Private route tables with a default route to a NAT gateway (or instance).
    pub nat_routes: usize,
    /// Private route tables in all.
    pub route_tables: usize,
    /// Usable interface endpoint service names in the VPC.
    pub endpoints: Vec<String>,
    pub region: String,
}

/// The rack-wide route: public subnets, a NAT route in every private table, or interface
/// endpoints for both `ssm` and `ssmmessages`.
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
    let missing: Vec<String> = SSM_SERVICES
        .iter()
        .filter(|s| !n.endpoints.iter().any(|e| serves(e, &n.region, s)))
        .map(|s| endpoint_service(&n.region, s))
        .collect();
    if missing.is_empty() {
        Route::Reachable {
            via: "VPC endpoints".into(),
        }
    } else {
        Route::None { missing }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REGION: &str = "us-east-1";

    fn task(public_ip: bool) -> TaskNetwork {
        TaskNetwork {
            vpc: "vpc-1".into(),
            subnet: "subnet-a".into(),
            private_ip: Some(Ipv4Addr::new(10, 0, 1, 7)),
            public_ip,
            groups: vec!["sg-task".into()],
        }
    }

    fn table(subnets: &[&str], main: bool, target: Option<Target>) -> RouteTable {
        RouteTable {
            id: format!("rtb-{}", subnets.join("-")),
            vpc: "vpc-1".into(),
            main,
            subnets: subnets.iter().map(|s| s.to_string()).collect(),
            default_route: target,
        }
    }

    fn endpoint(service: &str, usable: bool) -> Endpoint {
        Endpoint {
            id: format!("vpce-{service}"),
            vpc: "vpc-1".into(),
            service: endpoint_service(REGION, service),
            usable,
            groups: vec!["sg-endpoint".into()],
            ..Endpoint::default()
        }
    }

    fn group(rule: Ingress) -> BTreeMap<String, SecurityGroup> {
        BTreeMap::from([(
            "sg-endpoint".to_string(),
            SecurityGroup {
                id: "sg-endpoint".into(),
                ingress: vec![rule],
            },
        )])
    }

    fn tcp(from: i32, to: i32, cidrs: &[&str], groups: &[&str]) -> Ingress {
        Ingress {
            protocol: "tcp".into(),
            from_port: Some(from),
            to_port: Some(to),
            cidrs: cidrs.iter().map(|s| s.to_string()).collect(),
            groups: groups.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn state(f: &Fact<Reach>) -> &'static str {
        match f {
            Fact::Known(Reach::Reachable(_)) => "reachable",
            Fact::Known(Reach::Unreachable(_)) => "unreachable",
            Fact::Unknown(_) => "unknown",
        }
    }

    #[test]
    fn each_way_out_and_each_way_it_fails() {
        let igw = || Some(Target::InternetGateway("igw-1".into()));
        let nat = || Some(Target::Nat("nat-1".into()));
        let both = || vec![endpoint("ssm", true), endpoint("ssmmessages", true)];
        let admit_vpc = group(tcp(443, 443, &["10.0.0.0/16"], &[]));
        let cases: Vec<(&str, bool, Vpcs, &str)> = vec![
            (
                "igw, public ip",
                true,
                Vpcs {
                    tables: vec![table(&["subnet-a"], false, igw())],
                    ..Vpcs::default()
                },
                "reachable",
            ),
            (
                "igw, no public ip",
                false,
                Vpcs {
                    tables: vec![table(&["subnet-a"], false, igw())],
                    ..Vpcs::default()
                },
                "unreachable",
            ),
            (
                "nat via the main table",
                false,
                Vpcs {
                    tables: vec![table(&[], true, nat()), table(&["subnet-b"], false, None)],
                    ..Vpcs::default()
                },
                "reachable",
            ),
            (
                "no default route",
                false,
                Vpcs {
                    tables: vec![table(&["subnet-a"], false, None)],
                    ..Vpcs::default()
                },
                "unreachable",
            ),
            (
                "transit gateway",
                false,
                Vpcs {
                    tables: vec![table(
                        &["subnet-a"],
                        false,
                        Some(Target::Other("tgw-1".into())),
                    )],
                    ..Vpcs::default()
                },
                "unknown",
            ),
            ("no table read", false, Vpcs::default(), "unknown"),
            (
                "both endpoints",
                false,
                Vpcs {
                    tables: vec![table(&["subnet-a"], false, None)],
                    endpoints: both(),
                    groups: admit_vpc.clone(),
                },
                "reachable",
            ),
            (
                "only ssmmessages",
                false,
                Vpcs {
                    tables: vec![table(&["subnet-a"], false, None)],
                    endpoints: vec![endpoint("ssmmessages", true)],
                    groups: admit_vpc.clone(),
                },
                "unreachable",
            ),
            (
                "endpoints without private dns",
                false,
                Vpcs {
                    tables: vec![table(&["subnet-a"], false, None)],
                    endpoints: vec![endpoint("ssm", false), endpoint("ssmmessages", false)],
                    groups: admit_vpc.clone(),
                },
                "unreachable",
            ),
            (
                "endpoint group shuts the task out, even with a NAT",
                false,
                Vpcs {
                    tables: vec![table(&["subnet-a"], false, nat())],
                    endpoints: both(),
                    groups: group(tcp(443, 443, &["10.9.0.0/16"], &[])),
                },
                "unreachable",
            ),
            (
                "endpoint group admits the task's group",
                false,
                Vpcs {
                    tables: vec![],
                    endpoints: both(),
                    groups: group(tcp(0, 65535, &[], &["sg-task"])),
                },
                "reachable",
            ),
            (
                "endpoint group on port 80 only",
                false,
                Vpcs {
                    tables: vec![],
                    endpoints: both(),
                    groups: group(tcp(80, 80, &["0.0.0.0/0"], &[])),
                },
                "unreachable",
            ),
            (
                "endpoint group not read",
                false,
                Vpcs {
                    tables: vec![],
                    endpoints: both(),
                    groups: BTreeMap::new(),
                },
                "unknown",
            ),
        ];
        for (name, public_ip, vpcs, want) in cases {
            let got = task_route(&task(public_ip), &vpcs, REGION, &SSM_SERVICES);
            assert_eq!(state(&got), want, "{name}: {got:?}");
        }
    }

    #[test]
    fn a_blocked_service_is_named_with_what_would_fix_it() {
        let vpcs = Vpcs {
            tables: vec![table(&["subnet-a"], false, None)],
            endpoints: vec![endpoint("ssmmessages", true)],
            groups: group(tcp(443, 443, &["10.0.0.0/16"], &[])),
        };
        let Fact::Known(Reach::Unreachable(why)) =
            task_route(&task(false), &vpcs, REGION, &SSM_SERVICES)
        else {
            panic!("unreachable");
        };
        assert!(why.starts_with("ssm: route table rtb-subnet-a of subnet subnet-a has no default route, and the VPC has no com.amazonaws.us-east-1.ssm interface endpoint"), "{why}");
        assert!(!why.contains("ssmmessages:"), "{why}");
    }

    #[test]
    fn an_unknown_private_ip_is_not_taken_as_admitted() {
        let mut t = task(false);
        t.private_ip = None;
        let vpcs = Vpcs {
            endpoints: vec![endpoint("ssm", true), endpoint("ssmmessages", true)],
            groups: group(tcp(443, 443, &["10.0.0.0/16"], &[])),
            ..Vpcs::default()
        };
        assert_eq!(
            state(&task_route(&t, &vpcs, REGION, &SSM_SERVICES)),
            "unknown"
        );
    }

    #[test]
    fn logging_to_s3_needs_s3_too_a_gateway_endpoint_serves_its_tables() {
        let mut vpcs = Vpcs {
            tables: vec![table(&["subnet-a"], false, None)],
            endpoints: vec![endpoint("ssm", true), endpoint("ssmmessages", true)],
            groups: group(tcp(443, 443, &["10.0.0.0/16"], &[])),
        };
        let services = ["ssm", "ssmmessages", "s3"];
        assert_eq!(
            state(&task_route(&task(false), &vpcs, REGION, &services)),
            "unreachable"
        );
        vpcs.endpoints.push(Endpoint {
            id: "vpce-s3".into(),
            vpc: "vpc-1".into(),
            service: endpoint_service(REGION, "s3"),
            usable: true,
            gateway: true,
            route_tables: vec!["rtb-subnet-a".into()],
            groups: vec![],
        });
        assert_eq!(
            state(&task_route(&task(false), &vpcs, REGION, &services)),
            "reachable"
        );
    }

    #[test]
    fn cidrs() {
        let ip = Ipv4Addr::new(10, 0, 1, 7);
        for (cidr, want) in [
            ("10.0.0.0/16", true),
            ("10.0.1.7/32", true),
            ("10.0.2.0/24", false),
            ("0.0.0.0/0", true),
            ("10.0.0.0/33", false),
            ("bad", false),
        ] {
            assert_eq!(contains(cidr, ip), want, "{cidr}");
        }
    }

    #[test]
    fn the_rack_wide_route_needs_both_endpoints() {
        let private = |nat, tables, endpoints: &[&str]| Network {
            private: true,
            nat_routes: nat,
            route_tables: tables,
            endpoints: endpoints.iter().map(|s| s.to_string()).collect(),
            region: REGION.into(),
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
            route(&private(2, 3, &["com.amazonaws.us-east-1.ssmmessages"])),
            Route::None {
                missing: vec!["com.amazonaws.us-east-1.ssm".into()]
            }
        );
        assert!(matches!(
            route(&private(
                0,
                3,
                &[
                    "com.amazonaws.us-east-1.ssm",
                    "com.amazonaws.us-east-1.ssmmessages"
                ]
            )),
            Route::Reachable { .. }
        ));
        let mut china = private(0, 2, &[]);
        china.region = "cn-north-1".into();
        assert_eq!(
            route(&china),
            Route::None {
                missing: vec![
                    "cn.com.amazonaws.cn-north-1.ssm".into(),
                    "cn.com.amazonaws.cn-north-1.ssmmessages".into()
                ]
            }
        );
    }
}
