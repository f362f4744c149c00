//! The VPC reads of exec readiness against EC2's Query API: where tasks sit (instances,
//! network interfaces), the route tables, endpoints and security groups of their VPCs.

use std::collections::BTreeMap;

use roxmltree::Node;

use super::AwsExec;
use crate::exec::network::{Endpoint, Ingress, RouteTable, SecurityGroup, Target, TaskNetwork};
use crate::rack::query::{child_text, parse, EC2};
use crate::rack::RackError;

impl AwsExec {
    /// Every page of an EC2 describe call, each `item` under `set` handed to `each`.
    async fn ec2_items(
        &self,
        action: &'static str,
        resource: &str,
        params: Vec<(String, String)>,
        set: &str,
        mut each: impl FnMut(Node),
    ) -> Result<(), RackError> {
        let mut next: Option<String> = None;
        loop {
            let mut p = params.clone();
            if let Some(t) = &next {
                p.push(("NextToken".into(), t.clone()));
            }
            let xml = self.query.call(&EC2, action, resource, &p).await?;
            let doc = parse(&xml, "ec2", action)?;
            let root = doc.root_element();
            if let Some(s) = root.children().find(|n| n.has_tag_name(set)) {
                items(s).for_each(&mut each);
            }
            next = child_text(root, "nextToken").filter(|t| !t.is_empty());
            if next.is_none() {
                return Ok(());
            }
        }
    }

    pub(super) async fn instance_networks(
        &self,
        ids: &[String],
    ) -> Result<BTreeMap<String, TaskNetwork>, RackError> {
        let mut out = BTreeMap::new();
        // A filter, not `InstanceId.N`: an instance gone since the task was read is left
        // out instead of failing the whole call.
        let params = filters(&[("instance-id", ids)]);
        self.ec2_items(
            "DescribeInstances",
            "instances",
            params,
            "reservationSet",
            |r| {
                for i in child(r, "instancesSet").into_iter().flat_map(items) {
                    if let Some(id) = child_text(i, "instanceId") {
                        let public = child_text(i, "ipAddress").is_some();
                        out.insert(id, network(i, public));
                    }
                }
            },
        )
        .await?;
        Ok(out)
    }

    pub(super) async fn interface_networks(
        &self,
        ids: &[String],
    ) -> Result<BTreeMap<String, TaskNetwork>, RackError> {
        let mut out = BTreeMap::new();
        let params = filters(&[("network-interface-id", ids)]);
        self.ec2_items(
            "DescribeNetworkInterfaces",
            "network interfaces",
            params,
            "networkInterfaceSet",
            |n| {
                if let Some(id) = child_text(n, "networkInterfaceId") {
                    let public = child(n, "association")
                        .and_then(|a| child_text(a, "publicIp"))
                        .is_some();
                    out.insert(id, network(n, public));
                }
            },
        )
        .await?;
        Ok(out)
    }

    /// The route tables of the VPCs; a default route to a NAT gateway counts as one only when
    /// the gateway is public and available (a private NAT gateway does not reach the
    /// internet), which `DescribeNatGateways` tells.
    pub(super) async fn route_tables(&self, vpcs: &[String]) -> Result<Vec<RouteTable>, RackError> {
        let mut tables = self.raw_route_tables(vpcs).await?;
        let nats: Vec<String> = tables
            .iter()
            .filter_map(|t| match &t.default_route {
                Some(Target::Nat(id)) => Some(id.clone()),
                _ => None,
            })
            .collect();
        if nats.is_empty() {
            return Ok(tables);
        }
        let public = self.public_nat_gateways(&nats).await?;
        for t in &mut tables {
            if let Some(Target::Nat(id)) = &t.default_route {
                if !public.contains(id) {
                    t.default_route = Some(Target::Other(format!(
                        "NAT gateway {id}, which is private or not available"
                    )));
                }
            }
        }
        Ok(tables)
    }

    /// Of the NAT gateways `ids`, those that are public and available.
    async fn public_nat_gateways(&self, ids: &[String]) -> Result<Vec<String>, RackError> {
        let mut out = Vec::new();
        let params = filters(&[("nat-gateway-id", ids)]);
        self.ec2_items(
            "DescribeNatGateways",
            &ids.join(","),
            params,
            "natGatewaySet",
            |g| {
                let public = child_text(g, "connectivityType").is_none_or(|c| c == "public");
                let available = child_text(g, "state").as_deref() == Some("available");
                if let (true, true, Some(id)) = (public, available, child_text(g, "natGatewayId")) {
                    out.push(id);
                }
            },
        )
        .await?;
        Ok(out)
    }

    async fn raw_route_tables(&self, vpcs: &[String]) -> Result<Vec<RouteTable>, RackError> {
        let mut out = Vec::new();
        let params = filters(&[("vpc-id", vpcs)]);
        self.ec2_items(
            "DescribeRouteTables",
            &vpcs.join(","),
            params,
            "routeTableSet",
            |t| {
                let associations: Vec<Node> = child(t, "associationSet")
                    .into_iter()
                    .flat_map(items)
                    .collect();
                out.push(RouteTable {
                    id: child_text(t, "routeTableId").unwrap_or_default(),
                    vpc: child_text(t, "vpcId").unwrap_or_default(),
                    main: associations
                        .iter()
                        .any(|a| child_text(*a, "main").as_deref() == Some("true")),
                    subnets: associations
                        .iter()
                        .filter_map(|a| child_text(*a, "subnetId"))
                        .collect(),
                    default_route: child(t, "routeSet")
                        .into_iter()
                        .flat_map(items)
                        .find(|r| {
                            child_text(*r, "destinationCidrBlock").as_deref() == Some("0.0.0.0/0")
                                && child_text(*r, "state").as_deref() != Some("blackhole")
                        })
                        .map(target),
                });
            },
        )
        .await?;
        Ok(out)
    }

    pub(super) async fn endpoints(&self, vpcs: &[String]) -> Result<Vec<Endpoint>, RackError> {
        let mut out = Vec::new();
        let params = filters(&[("vpc-id", vpcs)]);
        self.ec2_items(
            "DescribeVpcEndpoints",
            &vpcs.join(","),
            params,
            "vpcEndpointSet",
            |e| {
                let kind = child_text(e, "vpcEndpointType").unwrap_or_default();
                let gateway = kind.eq_ignore_ascii_case("gateway");
                let available =
                    child_text(e, "state").is_some_and(|s| s.eq_ignore_ascii_case("available"));
                let dns = child_text(e, "privateDnsEnabled").as_deref() == Some("true");
                out.push(Endpoint {
                    id: child_text(e, "vpcEndpointId").unwrap_or_default(),
                    vpc: child_text(e, "vpcId").unwrap_or_default(),
                    service: child_text(e, "serviceName").unwrap_or_default(),
                    usable: available && (gateway || dns),
                    gateway,
                    route_tables: list(e, "routeTableIdSet"),
                    groups: group_ids(e),
                });
            },
        )
        .await?;
        Ok(out)
    }

    pub(super) async fn security_groups(
        &self,
        ids: &[String],
    ) -> Result<Vec<SecurityGroup>, RackError> {
        let mut out = Vec::new();
        let params = filters(&[("group-id", ids)]);
        self.ec2_items(
            "DescribeSecurityGroups",
            &ids.join(","),
            params,
            "securityGroupInfo",
            |g| {
                let ingress = child(g, "ipPermissions")
                    .into_iter()
                    .flat_map(items)
                    .map(|p| Ingress {
                        protocol: child_text(p, "ipProtocol").unwrap_or_default(),
                        from_port: child_text(p, "fromPort").and_then(|v| v.parse().ok()),
                        to_port: child_text(p, "toPort").and_then(|v| v.parse().ok()),
                        cidrs: child(p, "ipRanges")
                            .into_iter()
                            .flat_map(items)
                            .filter_map(|r| child_text(r, "cidrIp"))
                            .collect(),
                        groups: child(p, "groups")
                            .into_iter()
                            .flat_map(items)
                            .filter_map(|r| child_text(r, "groupId"))
                            .collect(),
                    })
                    .collect();
                out.push(SecurityGroup {
                    id: child_text(g, "groupId").unwrap_or_default(),
                    ingress,
                });
            },
        )
        .await?;
        Ok(out)
    }
}

fn child<'a, 'i>(n: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    n.children().find(|c| c.has_tag_name(name))
}

fn items<'a, 'i>(n: Node<'a, 'i>) -> impl Iterator<Item = Node<'a, 'i>> {
    n.children().filter(|c| c.has_tag_name("item"))
}

/// The texts of the `item`s of `set` (`<routeTableIdSet><item>rtb-1</item>`).
fn list(n: Node, set: &str) -> Vec<String> {
    child(n, set)
        .into_iter()
        .flat_map(items)
        .filter_map(|i| i.text().map(|t| t.trim().to_string()))
        .collect()
}

fn group_ids(n: Node) -> Vec<String> {
    child(n, "groupSet")
        .into_iter()
        .flat_map(items)
        .filter_map(|g| child_text(g, "groupId"))
        .collect()
}

/// An instance's or interface's place in its VPC.
fn network(n: Node, public_ip: bool) -> TaskNetwork {
    TaskNetwork {
        vpc: child_text(n, "vpcId").unwrap_or_default(),
        subnet: child_text(n, "subnetId").unwrap_or_default(),
        private_ip: child_text(n, "privateIpAddress").and_then(|ip| ip.parse().ok()),
        public_ip,
        groups: group_ids(n),
    }
}

/// Where a default route goes.
fn target(r: Node) -> Target {
    let id = |k: &str| child_text(r, k).filter(|v| !v.is_empty());
    if let Some(nat) = id("natGatewayId") {
        return Target::Nat(nat);
    }
    if let Some(instance) = id("instanceId") {
        // A NAT instance, or a firewall or proxy: where it sends traffic is not in the VPC's
        // description.
        return Target::Other(format!("instance {instance}"));
    }
    match id("gatewayId") {
        Some(g) if g.starts_with("igw-") => Target::InternetGateway(g),
        Some(g) => Target::Other(g),
        None => Target::Other(
            [
                "transitGatewayId",
                "vpcPeeringConnectionId",
                "networkInterfaceId",
            ]
            .iter()
            .find_map(|k| id(k))
            .unwrap_or_else(|| "an unnamed target".into()),
        ),
    }
}

pub(super) fn filters(filters: &[(&str, &[String])]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (i, (name, values)) in filters.iter().enumerate() {
        out.push((format!("Filter.{}.Name", i + 1), name.to_string()));
        for (j, v) in values.iter().enumerate() {
            out.push((format!("Filter.{}.Value.{}", i + 1, j + 1), v.clone()));
        }
    }
    out
}
