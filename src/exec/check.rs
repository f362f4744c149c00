//! `rack-reconciler exec-check`: exec readiness once, as a table a person reads (or JSON),
//! with the local side: is the Session Manager plugin that `convox exec` through ECS Exec
//! needs on this machine's `PATH`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::discover::Readiness;
use super::{ExecPath, Route, Verdict};

pub const PLUGIN: &str = "session-manager-plugin";
pub const PLUGIN_INSTALL_URL: &str = "https://docs.aws.amazon.com/systems-manager/latest/userguide/session-manager-working-with-install-plugin.html";

/// The Session Manager plugin as found on `PATH`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plugin {
    pub path: Option<PathBuf>,
    /// What `session-manager-plugin --version` printed.
    pub version: Option<String>,
}

/// Looks for the plugin on `path` (the `PATH` variable) and asks it for its version.
pub async fn find_plugin(path: Option<OsString>) -> Plugin {
    let found = path.as_ref().and_then(|p| {
        std::env::split_paths(p)
            .map(|dir| dir.join(PLUGIN))
            .find(|f| is_executable(f))
    });
    let version = match &found {
        Some(f) => version_of(f).await,
        None => None,
    };
    Plugin {
        path: found,
        version,
    }
}

fn is_executable(f: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(f).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

async fn version_of(f: &std::path::Path) -> Option<String> {
    let run = tokio::process::Command::new(f)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

/// Every task would use ECS Exec.
pub fn all_ecs_exec(r: &Readiness) -> bool {
    r.verdicts.iter().all(|v| v.path == ExecPath::EcsExec)
}

fn route_line(route: &Route) -> String {
    match route {
        Route::Reachable { via } => format!("reachable ({via})"),
        Route::None { missing } => format!("none: missing {}", missing.join(", ")),
        Route::Unknown { why } => format!("not known: {why}"),
    }
}

/// The table: a header line, one line per task, a summary.
pub fn table(rack: &str, r: &Readiness) -> String {
    let mut out = format!(
        "rack {rack}: ECSExec {}; route to SSM: {}\n\n",
        if r.rack.ecs_exec { "Yes" } else { "No" },
        route_line(&r.rack.route)
    );
    let w = |f: fn(&Verdict) -> &str, title: &str| {
        r.verdicts
            .iter()
            .map(|v| f(v).len())
            .chain([title.len()])
            .max()
            .unwrap_or(0)
    };
    let (wa, ws, wt, wr) = (
        w(|v| &v.app, "APP"),
        w(|v| &v.service, "SERVICE"),
        w(|v| &v.task, "TASK"),
        w(|v| &v.reason, "REASON"),
    );
    out.push_str(&format!(
        "{:<wa$}  {:<ws$}  {:<wt$}  {:<8}  {:<wr$}  ADVICE\n",
        "APP", "SERVICE", "TASK", "PATH", "REASON"
    ));
    for v in &r.verdicts {
        let advice = match (v.detail.is_empty(), v.advice.is_empty()) {
            (true, _) => v.advice.clone(),
            (false, true) => v.detail.clone(),
            (false, false) => format!("{} ({})", v.advice, v.detail),
        };
        out.push_str(
            format!(
                "{:<wa$}  {:<ws$}  {:<wt$}  {:<8}  {:<wr$}  {}\n",
                v.app,
                v.service,
                v.task,
                v.path.as_str(),
                v.reason,
                advice
            )
            .trim_end(),
        );
        out.push('\n');
    }
    let docker = r
        .verdicts
        .iter()
        .filter(|v| v.path == ExecPath::Docker)
        .count();
    out.push_str(&format!(
        "\n{} tasks in {} apps: {} would use ECS Exec, {} would fall back to Docker exec (not audited in CloudTrail).\n",
        r.verdicts.len(),
        r.apps.len(),
        r.verdicts.len() - docker,
        docker
    ));
    out
}

/// What the plugin check says.
pub fn plugin_lines(p: &Plugin) -> String {
    match (&p.path, &p.version) {
        (Some(path), Some(v)) => format!("{PLUGIN}: {v} ({})\n", path.display()),
        (Some(path), None) => format!(
            "{PLUGIN}: found at {} but `--version` gave no answer; reinstall it: {PLUGIN_INSTALL_URL}\n",
            path.display()
        ),
        (None, _) => format!(
            "{PLUGIN}: not found on PATH. `convox exec` through ECS Exec needs it on the machine it runs on; install it: {PLUGIN_INSTALL_URL}\n"
        ),
    }
}

/// The JSON document of `--json`.
pub fn json(rack: &str, r: &Readiness, plugin: &Plugin) -> serde_json::Value {
    serde_json::json!({
        "rack": rack,
        "ecsExec": r.rack.ecs_exec,
        "route": r.rack.route,
        "apps": r.apps,
        "tasks": r.verdicts,
        "ready": all_ecs_exec(r),
        "sessionManagerPlugin": plugin,
        "sessionManagerPluginInstall": PLUGIN_INSTALL_URL,
    })
}
