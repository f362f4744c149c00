//! The facts of the public rack template the simulated rack is built from (`sim_rack.json`):
//! its releases' parameters, the API task definitions and services.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::*;

/// The template facts the sim is built from.
#[derive(Debug, Deserialize)]
pub struct Fixture {
    pub templates: BTreeMap<String, FixtureTemplate>,
    pub task_definitions: BTreeMap<String, FixtureTaskDefinition>,
    pub services: BTreeMap<String, FixtureService>,
}

#[derive(Debug, Deserialize)]
pub struct FixtureTemplate {
    pub parameters: BTreeMap<String, FixtureParameter>,
}

#[derive(Debug, Deserialize)]
pub struct FixtureParameter {
    pub default: Option<String>,
    #[serde(default)]
    pub allowed: Vec<String>,
    #[serde(default)]
    pub no_echo: bool,
    /// `String` when absent.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub min_value: Option<String>,
    #[serde(default)]
    pub max_value: Option<String>,
    #[serde(default)]
    pub min_length: Option<String>,
    #[serde(default)]
    pub max_length: Option<String>,
}

impl FixtureParameter {
    /// The declaration as the template writes it.
    pub fn declaration(&self, name: &str) -> ParamDecl {
        ParamDecl {
            name: name.to_string(),
            kind: self.kind.clone().unwrap_or_else(|| "String".into()),
            default: self.default.clone(),
            allowed_values: self.allowed.clone(),
            min_value: self.min_value.as_deref().and_then(|v| v.parse().ok()),
            max_value: self.max_value.as_deref().and_then(|v| v.parse().ok()),
            min_length: self.min_length.as_deref().and_then(|v| v.parse().ok()),
            max_length: self.max_length.as_deref().and_then(|v| v.parse().ok()),
            no_echo: self.no_echo,
            ..ParamDecl::default()
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct FixtureTaskDefinition {
    pub family_suffix: String,
    pub container: String,
    pub docker_labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
pub struct FixtureService {
    pub task_definition: String,
    pub desired_count: u32,
    pub minimum_healthy_percent: u32,
    pub maximum_percent: u32,
    /// The public template gives the API services no `DeploymentCircuitBreaker`.
    pub deployment_circuit_breaker: bool,
    #[serde(default)]
    pub load_balancer: Option<FixtureLoadBalancer>,
}

#[derive(Debug, Deserialize)]
pub struct FixtureLoadBalancer {
    /// Logical id of the target group.
    pub target_group: String,
    pub container: String,
    pub container_port: u16,
}

/// The facts of the public rack template the sim is modelled on.
pub fn fixture() -> Fixture {
    // The fixture is compiled in and covered by tests; failing to parse it is a build defect.
    serde_json::from_str(FIXTURE).expect("embedded sim_rack.json is valid")
}

/// Parameters (with defaults) each template the sim knows declares, by version.
/// What each template the sim knows declares, by version: the fixture's releases, and the
/// synthetic release that adds `ECSExec` (`Yes`/`No`, default `No`) to the latest.
pub(super) fn templates(fx: &Fixture) -> BTreeMap<String, Declarations> {
    let mut out: BTreeMap<String, Declarations> = fx
        .templates
        .iter()
        .map(|(v, t)| {
            let params = t
                .parameters
                .iter()
                .map(|(k, p)| (k.clone(), p.declaration(k)))
                .collect();
            (v.clone(), Declarations { params })
        })
        .collect();
    if let Some(latest) = out.values().next_back().cloned() {
        let mut with = latest;
        with.params.insert(
            "ECSExec".into(),
            ParamDecl {
                name: "ECSExec".into(),
                kind: "String".into(),
                default: Some("No".into()),
                allowed_values: vec!["Yes".into(), "No".into()],
                ..ParamDecl::default()
            },
        );
        out.insert(SIM_ECSEXEC_VERSION.into(), with);
    }
    out
}
