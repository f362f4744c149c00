//! The controller's configuration file (`config/rack-reconciler.yaml`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use crate::model::ServiceTarget;
use crate::settings::{Location, SimSettings};
pub use crate::settings::{Method, Timeouts};
use crate::templates::TemplateSource;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The embedded simulated rack.
    Sim,
    /// A real rack, through the AWS SDK.
    Aws,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sim => "sim",
            Backend::Aws => "aws",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub backend: Backend,
    /// The rack's CloudFormation stack name.
    pub rack: String,
    /// AWS region; when absent, the standard AWS environment decides.
    #[serde(default)]
    pub region: Option<String>,
    /// The params file: a path (relative to the config file's directory), or an S3 object
    /// `s3://bucket/key` (in a rack: its `Settings` bucket).
    #[serde(deserialize_with = "location")]
    pub params_file: Location,
    /// Address of `/metrics`, `/status`, `/healthz`, `/readyz`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    #[serde(default)]
    pub log_format: LogFormat,
    /// Write `<params>.status.json` next to the params file.
    #[serde(default = "yes")]
    pub status_file: bool,
    #[serde(default)]
    pub intervals: Intervals,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub rollouts: Rollouts,
    /// Per parameter: how it is changed.
    #[serde(default)]
    pub parameters: BTreeMap<String, ParamSettings>,
    /// A CloudFormation service role for the controller's stack updates (`RoleARN`): the
    /// update then acts with that role's permissions, not the controller's.
    #[serde(default)]
    pub stack_role_arn: Option<String>,
    #[serde(default)]
    pub backoff: Backoff,
    #[serde(default)]
    pub corrections: Corrections,
    /// The services to roll, in order.
    #[serde(default = "ServiceTarget::rack_api")]
    pub services: Vec<ServiceTarget>,
    /// Logical id of the ECS cluster in the rack stack.
    #[serde(default = "default_cluster_resource")]
    pub cluster_resource: String,
    /// Where rack templates come from, for version changes.
    #[serde(default)]
    pub templates: TemplateSource,
    /// One active writer per rack: a lease in a DynamoDB table, or `none`. Required with
    /// `backend: aws`.
    #[serde(default)]
    pub lease: Option<LeaseSetting>,
    #[serde(default)]
    pub sim: SimSettings,
    /// How much of the rack's history is kept (next to the status file).
    #[serde(default)]
    pub history: History,
}

/// `lease: none`, or the lease table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "serde_yaml::Value")]
pub enum LeaseSetting {
    /// No lease: for one-off use on a rack nothing else manages.
    None,
    Table(LeaseTable),
}

impl TryFrom<serde_yaml::Value> for LeaseSetting {
    type Error = String;

    fn try_from(v: serde_yaml::Value) -> Result<Self, String> {
        match v {
            serde_yaml::Value::String(s) if s == "none" => Ok(LeaseSetting::None),
            v @ serde_yaml::Value::Mapping(_) => serde_yaml::from_value(v)
                .map(LeaseSetting::Table)
                .map_err(|e| format!("lease: {e}")),
            other => Err(format!(
                "lease: expected `none` or a table such as `{{table: convox-rack-reconciler-lease, duration: 30s}}`, found {other:?}"
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseTable {
    /// The DynamoDB table (string hash key `name`), created by deploy/controller.yaml.
    pub table: String,
    /// The lease's item in the table; default: the rack's name.
    #[serde(default)]
    pub name: Option<String>,
    /// A holder that stops renewing loses the lease after this long; it renews every third.
    #[serde(default = "default_lease_duration", with = "humantime_serde")]
    pub duration: Duration,
    /// This controller's name in the lease; default `user@host:pid`.
    #[serde(default)]
    pub holder: Option<String>,
}

fn default_lease_duration() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Intervals {
    /// Full re-read of params and rack when nothing is happening.
    #[serde(with = "humantime_serde")]
    pub resync: Duration,
    /// The longest pause between looks while a rollout or stack update runs (they are paced
    /// by the rollout, 1-2 s near its end) or while waiting on someone else's change.
    #[serde(with = "humantime_serde")]
    pub poll: Duration,
    /// Fraction of the resync interval added or removed at random.
    pub jitter: f64,
    /// How often an S3 params object is polled (a conditional request: 304 when unchanged).
    #[serde(with = "humantime_serde")]
    pub params_poll: Duration,
    /// Quiet time after the last file event before the params file is re-read.
    #[serde(with = "humantime_serde")]
    pub debounce: Duration,
    /// Reconciles start at least this far apart, however often the params file changes.
    #[serde(with = "humantime_serde")]
    pub min_reconcile: Duration,
    /// A service is written to at most once per this interval (undoing a failed rollout
    /// excepted): a flapping params file cannot roll the rack API back and forth.
    #[serde(with = "humantime_serde")]
    pub min_write: Duration,
    /// How often exec readiness looks at every app of the rack (with the jitter).
    #[serde(with = "humantime_serde")]
    pub exec_check: Duration,
}

impl Default for Intervals {
    fn default() -> Self {
        Intervals {
            resync: Duration::from_secs(300),
            poll: Duration::from_secs(5),
            jitter: 0.1,
            params_poll: Duration::from_secs(10),
            debounce: Duration::from_millis(50),
            min_reconcile: Duration::from_secs(1),
            min_write: Duration::from_secs(10),
            exec_check: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ParamSettings {
    pub method: Method,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rollouts {
    /// New tasks of a rollout that may stop or fail to start before the rollout is judged
    /// failed (and, when it is the controller's own, undone). The rack API services have no
    /// deployment circuit breaker, so nothing else would ever fail them.
    pub failed_tasks_threshold: u32,
}

impl Default for Rollouts {
    fn default() -> Self {
        Rollouts {
            failed_tasks_threshold: 3,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Backoff {
    /// First delay after a failure; doubles on each further failure.
    #[serde(with = "humantime_serde")]
    pub min: Duration,
    #[serde(with = "humantime_serde")]
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            min: Duration::from_secs(30),
            max: Duration::from_secs(15 * 60),
        }
    }
}

/// The history's retention: events older than `max_age` are dropped, then the oldest while
/// the history is larger than `max_bytes`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct History {
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    pub max_bytes: usize,
}

impl Default for History {
    fn default() -> Self {
        let r = crate::history::Retention::default();
        History {
            max_age: r.max_age,
            max_bytes: r.max_bytes,
        }
    }
}

impl History {
    fn check(&self) -> Result<(), String> {
        if self.max_age.is_zero() || self.max_bytes < 4096 {
            return Err(
                "history: max_age must be greater than zero and max_bytes at least 4096".into(),
            );
        }
        Ok(())
    }

    pub fn retention(&self) -> crate::history::Retention {
        crate::history::Retention {
            max_age: self.max_age,
            max_bytes: self.max_bytes,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Corrections {
    /// Out-of-band reverts corrected per hour before the controller stops and reports.
    pub max_per_hour: u32,
}

impl Default for Corrections {
    fn default() -> Self {
        Corrections { max_per_hour: 3 }
    }
}

fn location<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Location, D::Error> {
    let text = String::deserialize(d)?;
    Location::parse(&text, Path::new("")).map_err(serde::de::Error::custom)
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9464))
}

fn default_cluster_resource() -> String {
    "Cluster".into()
}

fn yes() -> bool {
    true
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is invalid: {detail}")]
    Invalid { path: String, detail: String },
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        Config::parse(&text, &shown, path.parent().unwrap_or(Path::new(".")))
    }

    /// Reads and validates a config given as text (`shown` names it in errors); relative
    /// paths in it are relative to `base`.
    pub fn parse(text: &str, shown: &str, base: &Path) -> Result<Config, ConfigError> {
        let shown = shown.to_string();
        let mut cfg: Config = serde_yaml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: shown.clone(),
            detail: e.to_string(),
        })?;
        if let Location::File(p) = &cfg.params_file {
            cfg.params_file = Location::File(base.join(p));
        }
        if let Some(dir) = cfg.templates.dir.as_mut().filter(|d| d.is_relative()) {
            *dir = base.join(&*dir);
        }
        cfg.validate().map_err(|detail| ConfigError::Invalid {
            path: shown,
            detail,
        })?;
        cfg.sim.rack = cfg.rack.clone();
        if let Some(r) = &cfg.region {
            cfg.sim.region = r.clone();
        }
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), String> {
        if self.rack.trim().is_empty() {
            return Err("rack: the rack's stack name is required".into());
        }
        self.history.check()?;
        if self.services.is_empty() {
            return Err("services: at least one target service is required".into());
        }
        if [
            self.intervals.poll,
            self.intervals.resync,
            self.intervals.params_poll,
            self.intervals.exec_check,
        ]
        .iter()
        .any(Duration::is_zero)
        {
            return Err(
                "intervals: poll, resync, params_poll and exec_check must be greater than zero"
                    .into(),
            );
        }
        if !(0.0..1.0).contains(&self.intervals.jitter) {
            return Err("intervals.jitter: must be at least 0 and below 1".into());
        }
        if let Some(op) = self
            .sim
            .throttled
            .keys()
            .find(|op| crate::rack::sim::operation(op).is_none())
        {
            return Err(format!(
                "sim.throttled: unknown operation {op}: one of {}",
                crate::rack::sim::OPERATIONS.join(", ")
            ));
        }
        if let Some((name, _)) = self
            .parameters
            .iter()
            .find(|(k, p)| p.method == Method::Relabel && k.as_str() != crate::model::ECS_EXEC.name)
        {
            return Err(format!(
                "parameters.{name}.method: relabel works for ECSExec only (the one parameter carried by a label)"
            ));
        }
        let t = &self.timeouts;
        if [
            t.reconcile,
            t.aws_connect,
            t.aws_attempt,
            t.aws_call,
            t.observation_stale,
        ]
        .iter()
        .any(Duration::is_zero)
        {
            return Err("timeouts: every timeout must be greater than zero".into());
        }
        if t.aws_attempt > t.aws_call || t.aws_call > t.reconcile {
            return Err(
                "timeouts: aws_attempt must be at most aws_call, and aws_call at most reconcile"
                    .into(),
            );
        }
        match &self.lease {
            None if self.backend == Backend::Aws => {
                return Err("lease: required with backend aws: `lease: {table: TABLE}` (the DynamoDB table of deploy/controller.yaml) so that two controllers never write at once, or `lease: none` for a rack nothing else manages".into());
            }
            Some(LeaseSetting::Table(t)) if t.table.trim().is_empty() => {
                return Err("lease.table: the DynamoDB table name is required".into());
            }
            Some(LeaseSetting::Table(t)) if t.duration < Duration::from_secs(3) => {
                return Err("lease.duration: at least 3s".into());
            }
            _ => {}
        }
        if self.backoff.min.is_zero() || self.backoff.max < self.backoff.min {
            return Err("backoff: min must be greater than zero and at most max".into());
        }
        Ok(())
    }

    /// Where the status file goes, if enabled.
    pub fn status_path(&self) -> Option<Location> {
        self.status_file.then(|| self.params_file.status())
    }

    /// Where the history goes: next to the status file, when that is enabled.
    pub fn history_path(&self) -> Option<Location> {
        self.status_file.then(|| self.params_file.history())
    }
}

impl From<&Config> for crate::reconcile::Settings {
    fn from(c: &Config) -> Self {
        crate::reconcile::Settings {
            targets: c.services.clone(),
            cluster_resource: c.cluster_resource.clone(),
            params_file: c.params_file.clone(),
            status_file: c.status_path(),
            history_file: c.history_path(),
            history: c.history.retention(),
            resync: c.intervals.resync,
            poll: c.intervals.poll,
            jitter: c.intervals.jitter,
            rollout_timeout: c.timeouts.rollout,
            min_reconcile: c.intervals.min_reconcile,
            min_write: c.intervals.min_write,
            failed_tasks_threshold: c.rollouts.failed_tasks_threshold,
            reconcile_timeout: c.timeouts.reconcile,
            backoff_min: c.backoff.min,
            backoff_max: c.backoff.max,
            max_corrections_per_hour: c.corrections.max_per_hour,
            templates: c.templates.clone(),
            stack_role: c.stack_role_arn.clone(),
            methods: c
                .parameters
                .iter()
                .map(|(k, p)| (k.clone(), p.method))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_loads_and_runs_the_sim() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/rack-reconciler.yaml");
        let cfg = Config::load(&path).expect("shipped config is valid");
        assert_eq!(cfg.backend, Backend::Sim);
        assert!(matches!(&cfg.params_file, Location::File(p) if p.ends_with("config/params.yaml")));
        assert!(cfg.listen.ip().is_loopback());
        assert_eq!(cfg.services, ServiceTarget::rack_api());
    }

    #[test]
    fn deploy_config_loads_with_the_aws_backend() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/rack-reconciler.yaml");
        let cfg = Config::load(&path).expect("deploy config is valid");
        assert_eq!(cfg.backend, Backend::Aws);
        assert_eq!(
            cfg.params_file.to_string(),
            "s3://SETTINGS_BUCKET/rack-reconciler/params.yaml"
        );
    }

    #[test]
    fn rejects_unknown_keys_and_bad_values() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.yaml");
        for (text, needle) in [
            (
                "backend: sim\nrack: r\nparams_file: p.yaml\nbogus: 1\n",
                "bogus",
            ),
            ("backend: gcp\nrack: r\nparams_file: p.yaml\n", "gcp"),
            ("backend: aws\nrack: r\nparams_file: p.yaml\n", "lease"),
            (
                "backend: aws\nrack: r\nparams_file: p.yaml\nlease: nobody\n",
                "expected `none`",
            ),
            (
                "backend: aws\nrack: r\nparams_file: p.yaml\nlease: {table: t, duration: 1s}\n",
                "lease.duration",
            ),
            ("backend: sim\nrack: \"\"\nparams_file: p.yaml\n", "rack"),
            (
                "backend: sim\nrack: r\nparams_file: s3://b\n",
                "s3://BUCKET/KEY",
            ),
            (
                "backend: sim\nrack: r\nparams_file: p.yaml\nintervals: {poll: 0s}\n",
                "poll",
            ),
        ] {
            std::fs::write(&path, text).expect("write");
            let e = Config::load(&path).expect_err(text).to_string();
            assert!(e.contains(needle) && e.contains("c.yaml"), "{e}");
        }
    }
}
