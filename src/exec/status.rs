//! Exec readiness as the status shows it: totals per path, per app, the tasks that do not use
//! ECS Exec, and the `ExecReady` condition, which is `True` only when every task was proven
//! to use ECS Exec and `Unknown` whenever something could not be read.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::discover::Readiness;
use super::{ExecPath, Verdict};

/// Tasks not using ECS Exec listed by name in the status; the rest are counted.
pub const LISTED: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ExecStatus {
    /// When every app was last looked at (RFC 3339).
    pub checked_at: Option<String>,
    /// The rack's template declares `ECSExec`.
    #[serde(default)]
    pub rack_declares_ecs_exec: bool,
    /// The rack's `ECSExec` is `Yes`.
    pub rack_ecs_exec: bool,
    pub tasks: usize,
    /// Tasks per path (`ecs_exec`, `docker`, `fails`, `unknown`).
    #[serde(default)]
    pub paths: BTreeMap<String, usize>,
    pub apps: Vec<AppSummary>,
    /// The tasks that do not use ECS Exec, up to [`LISTED`].
    #[serde(default)]
    pub not_ecs_exec: Vec<Verdict>,
    /// Those beyond the ones listed.
    #[serde(default)]
    pub more_not_ecs_exec: usize,
    /// What the answers could not account for (service control policies...).
    #[serde(default)]
    pub notes: Vec<String>,
    /// The last look failed (the rest is from the look before, and not trusted).
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct AppSummary {
    pub app: String,
    pub generation: u8,
    /// Tasks per path.
    pub paths: BTreeMap<String, usize>,
    /// Tasks per reason, `none` included.
    pub reasons: BTreeMap<String, usize>,
    /// The app could not be read: its tasks are not judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ExecStatus {
    pub fn from_readiness(r: &Readiness) -> ExecStatus {
        let mut apps: BTreeMap<&str, AppSummary> = r
            .apps
            .iter()
            .map(|(a, app)| {
                let s = AppSummary {
                    app: a.clone(),
                    generation: app.generation,
                    error: app.error.clone(),
                    ..AppSummary::default()
                };
                (a.as_str(), s)
            })
            .collect();
        let mut paths = BTreeMap::new();
        for v in &r.verdicts {
            *paths.entry(v.path.as_str().to_string()).or_default() += 1;
            if let Some(a) = apps.get_mut(v.app.as_str()) {
                *a.paths.entry(v.path.as_str().to_string()).or_default() += 1;
                *a.reasons.entry(v.reason.clone()).or_default() += 1;
            }
        }
        let not_ecs_exec: Vec<&Verdict> = r
            .verdicts
            .iter()
            .filter(|v| v.path != ExecPath::EcsExec)
            .collect();
        ExecStatus {
            checked_at: Some(crate::clock::rfc3339(r.checked_at)),
            rack_declares_ecs_exec: r.rack.declares_ecs_exec,
            rack_ecs_exec: r.rack.ecs_exec,
            tasks: r.verdicts.len(),
            paths,
            apps: apps.into_values().collect(),
            more_not_ecs_exec: not_ecs_exec.len().saturating_sub(LISTED),
            not_ecs_exec: not_ecs_exec.into_iter().take(LISTED).cloned().collect(),
            notes: r.notes.clone(),
            error: None,
        }
    }

    /// Tasks on `path`.
    pub fn count(&self, path: ExecPath) -> usize {
        self.paths.get(path.as_str()).copied().unwrap_or(0)
    }

    /// The `ExecReady` condition: status (`True`, `False`, `Unknown`), reason, message.
    pub fn condition(&self) -> (&'static str, &'static str, String) {
        if self.checked_at.is_none() {
            let why = self.error.as_deref().unwrap_or("not looked at yet");
            return ("Unknown", "NotChecked", format!("exec readiness: {why}"));
        }
        if let Some(e) = &self.error {
            return (
                "Unknown",
                "LookFailed",
                format!(
                    "the last look at the rack's apps failed ({e}); the verdicts shown are older"
                ),
            );
        }
        if !self.rack_declares_ecs_exec {
            return (
                "False",
                "RackVersionLacksEcsExec",
                "the rack's version predates ECS Exec: convox exec goes through Docker for every task; move the rack to a version that declares ECSExec".into(),
            );
        }
        if !self.rack_ecs_exec {
            return (
                "False",
                "RackEcsExecNo",
                "the rack's ECSExec is No: convox exec goes through Docker for every task".into(),
            );
        }
        let broken: Vec<&AppSummary> = self.apps.iter().filter(|a| a.error.is_some()).collect();
        let (docker, fails, unknown) = (
            self.count(ExecPath::Docker),
            self.count(ExecPath::Fails),
            self.count(ExecPath::Unknown),
        );
        if docker + fails == 0 && unknown == 0 && broken.is_empty() {
            return (
                "True",
                "AllTasksUseEcsExec",
                format!("all {} tasks would use ECS Exec", self.tasks),
            );
        }
        let mut parts = self.by_reason();
        parts.extend(broken.iter().map(|a| {
            format!(
                "app {} not read ({})",
                a.app,
                a.error.as_deref().unwrap_or("")
            )
        }));
        let summary = format!(
            "of {} tasks, {docker} would go through Docker exec (not audited), {fails} would fail, {unknown} could not be judged: {}; see `rack-reconciler exec-check`",
            self.tasks,
            parts.join(", ")
        );
        if docker + fails == 0 {
            ("Unknown", "TasksNotJudged", summary)
        } else {
            ("False", "TasksDoNotUseEcsExec", summary)
        }
    }

    /// `N reason (apps)` for every reason but `none`.
    fn by_reason(&self) -> Vec<String> {
        let mut by_reason: BTreeMap<&str, (usize, Vec<&str>)> = BTreeMap::new();
        for a in &self.apps {
            for (reason, n) in a.reasons.iter().filter(|(r, _)| *r != "none") {
                let e = by_reason.entry(reason.as_str()).or_default();
                e.0 += n;
                e.1.push(a.app.as_str());
            }
        }
        by_reason
            .iter()
            .map(|(r, (n, apps))| format!("{n} {r} ({})", apps.join(", ")))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(paths: &[(&str, usize)], errors: bool) -> ExecStatus {
        let paths: BTreeMap<String, usize> =
            paths.iter().map(|(p, n)| (p.to_string(), *n)).collect();
        ExecStatus {
            checked_at: Some("2026-12-03T00:00:00Z".into()),
            rack_declares_ecs_exec: true,
            rack_ecs_exec: true,
            tasks: paths.values().sum(),
            apps: vec![AppSummary {
                app: "shop".into(),
                generation: 2,
                reasons: paths.keys().map(|p| (format!("r_{p}"), 1)).collect(),
                paths: paths.clone(),
                error: errors.then(|| "ListStackResources: throttled".into()),
            }],
            paths,
            ..ExecStatus::default()
        }
    }

    #[test]
    fn ready_only_when_every_task_is_proven() {
        let cases = [
            (status(&[("ecs_exec", 3)], false), "True"),
            (status(&[("ecs_exec", 2), ("unknown", 1)], false), "Unknown"),
            (status(&[("ecs_exec", 3)], true), "Unknown"),
            (
                status(&[("ecs_exec", 1), ("docker", 1), ("unknown", 1)], false),
                "False",
            ),
            (status(&[("fails", 1)], false), "False"),
        ];
        for (s, want) in cases {
            assert_eq!(s.condition().0, want, "{:?}", s.paths);
        }
        let mut failed = status(&[("ecs_exec", 3)], false);
        failed.error = Some("DescribeStacks: throttled".into());
        assert_eq!(failed.condition().0, "Unknown");
        let mut old = status(&[("ecs_exec", 3)], false);
        old.rack_declares_ecs_exec = false;
        assert_eq!(old.condition().1, "RackVersionLacksEcsExec");
    }
}
