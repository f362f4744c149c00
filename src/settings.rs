//! Settings as values: what the config file holds for each part, taken by the adapters and
//! the loop as plain values. Below every adapter and the config alike, so the config knows
//! no adapter and no adapter knows the config.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// A rollout running longer than this is `Failed` (and undone, when it is the
    /// controller's own).
    #[serde(with = "humantime_serde")]
    pub rollout: Duration,
    /// One reconcile run; a longer one is abandoned and retried with backoff.
    #[serde(with = "humantime_serde")]
    pub reconcile: Duration,
    /// Connecting to an AWS endpoint.
    #[serde(with = "humantime_serde")]
    pub aws_connect: Duration,
    /// One attempt of an AWS call (the SDK retries throttling and server errors).
    #[serde(with = "humantime_serde")]
    pub aws_attempt: Duration,
    /// An AWS call with all its retries.
    #[serde(with = "humantime_serde")]
    pub aws_call: Duration,
    /// `/readyz` and `status --controller-only` fail once the last complete observation of
    /// the rack is older than this.
    #[serde(with = "humantime_serde")]
    pub observation_stale: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            rollout: Duration::from_secs(30 * 60),
            reconcile: Duration::from_secs(120),
            aws_connect: Duration::from_secs(3),
            aws_attempt: Duration::from_secs(10),
            aws_call: Duration::from_secs(30),
            observation_stale: Duration::from_secs(10 * 60),
        }
    }
}

/// How a parameter is changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Through the stack when the running template declares it, else (`ECSExec`) by
    /// relabelling the rack API's task definitions.
    #[default]
    Auto,
    /// Always through the stack (`UpdateStack`).
    Stack,
    /// Always by relabelling (`ECSExec` only).
    Relabel,
}

/// A document's location: `s3://bucket/key`, or a local path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    File(PathBuf),
    S3 { bucket: String, key: String },
}

impl Location {
    /// `s3://bucket/key` or a path; a relative path is taken relative to `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Location, String> {
        if let Some(rest) = text.strip_prefix("s3://") {
            return match rest.split_once('/') {
                Some((bucket, key)) if !bucket.is_empty() && !key.is_empty() => Ok(Location::S3 {
                    bucket: bucket.into(),
                    key: key.into(),
                }),
                _ => Err(format!("{text}: expected s3://BUCKET/KEY")),
            };
        }
        let path = PathBuf::from(text);
        Ok(Location::File(if path.is_relative() {
            base.join(path)
        } else {
            path
        }))
    }

    /// The status document next to a params document: `params.yaml` → `params.status.json`.
    pub fn status(&self) -> Location {
        self.sibling(status_file_for)
    }

    /// The history next to a params document: `params.yaml` → `params.history.jsonl`.
    pub fn history(&self) -> Location {
        self.sibling(history_file_for)
    }

    fn sibling(&self, name: fn(&Path) -> PathBuf) -> Location {
        match self {
            Location::File(p) => Location::File(name(p)),
            Location::S3 { bucket, key } => Location::S3 {
                bucket: bucket.clone(),
                key: name(Path::new(key)).to_string_lossy().into_owned(),
            },
        }
    }

    pub fn as_file(&self) -> Option<&Path> {
        match self {
            Location::File(p) => Some(p),
            Location::S3 { .. } => None,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::File(p) => write!(f, "{}", p.display()),
            Location::S3 { bucket, key } => write!(f, "s3://{bucket}/{key}"),
        }
    }
}

/// Where the status file of a params file goes: `params.yaml` → `params.status.json`.
pub fn status_file_for(params: &Path) -> PathBuf {
    next_to(params, "status.json")
}

/// Where the history of a params file goes: `params.yaml` → `params.history.jsonl`.
pub fn history_file_for(params: &Path) -> PathBuf {
    next_to(params, "history.jsonl")
}

fn next_to(params: &Path, suffix: &str) -> PathBuf {
    let stem = params
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "params".into());
    params.with_file_name(format!("{stem}.{suffix}"))
}

/// A synthetic release, newer than the fixture's, whose template declares `ECSExec`: the
/// first rack version that knows the parameter.
pub const SIM_ECSEXEC_VERSION: &str = "20261101000000";

/// How the simulated rack behaves.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimSettings {
    /// The stack (rack) name: the config's `rack`.
    #[serde(skip)]
    pub rack: String,
    /// The config's `region`.
    #[serde(skip)]
    pub region: String,
    /// The rack version the stack runs.
    pub version: String,
    /// Initial `rack.ECSExec` label on the API task definitions; absent when `None`, as on
    /// racks whose template predates the parameter.
    pub initial_ecs_exec: Option<String>,
    /// How long a new task takes to become healthy.
    #[serde(with = "humantime_serde")]
    pub task_start: Duration,
    /// Give the API services a deployment circuit breaker (a real rack has none).
    pub circuit_breaker: bool,
    /// Failed task launches after which the circuit breaker (if any) rolls a deployment back.
    pub circuit_breaker_threshold: u32,
    /// Rollouts whose tasks fail to start, counted from the first `UpdateService`.
    pub failing_rollouts: u32,
    /// Rack releases whose API tasks fail to start (a broken release): a stack update to one
    /// of them rolls the API services to tasks that keep stopping.
    pub failing_versions: Vec<String>,
    /// The rack parameter `HighAvailability`: the web service runs `ApiCount` tasks with
    /// minimum healthy 50%; without it, one task with minimum healthy 0%.
    pub high_availability: bool,
    /// The first N calls of an operation (by its AWS name) are throttled.
    pub throttled: BTreeMap<String, u32>,
    /// How long CloudFormation takes to update the stack (before the service rollouts it
    /// starts have to finish).
    #[serde(with = "humantime_serde")]
    pub stack_update: Duration,
    /// Apps: 0 for the demo set (every exec readiness path), N for N uniform apps of 3
    /// services with 3 tasks each.
    pub apps: usize,
    /// The rack parameter `Private`: tasks run in private subnets, which reach SSM only as
    /// `network` says.
    pub private: bool,
    pub network: SimNetwork,
}

impl Default for SimSettings {
    fn default() -> Self {
        SimSettings {
            rack: "convox".into(),
            region: "us-east-1".into(),
            // A release whose template declares ECSExec, as every rack that supports it.
            version: SIM_ECSEXEC_VERSION.into(),
            initial_ecs_exec: None,
            task_start: Duration::from_secs(20),
            circuit_breaker: false,
            circuit_breaker_threshold: 3,
            failing_rollouts: 0,
            failing_versions: Vec::new(),
            high_availability: true,
            throttled: BTreeMap::new(),
            stack_update: Duration::from_secs(60),
            apps: 0,
            private: false,
            network: SimNetwork::default(),
        }
    }
}

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
