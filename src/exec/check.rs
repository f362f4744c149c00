//! `rack-reconciler exec-check`: exec readiness once, as a table a person reads (or JSON),
//! with the local side: is the Session Manager plugin that `convox exec` through ECS Exec
//! needs on this machine's `PATH`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use std::collections::BTreeMap;

use super::discover::Readiness;
use super::{ExecPath, Verdict};

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

/// What `exec-check` concludes (its exit code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every task was proven to use ECS Exec (and every app was read).
    Ready,
    /// Some task goes through Docker exec or would fail.
    NotReady,
    /// No task is known not to, but something could not be read.
    Unknown,
}

pub fn outcome(r: &Readiness) -> Outcome {
    let any = |p: ExecPath| r.verdicts.iter().any(|v| v.path == p);
    let usable = r.rack.declares_ecs_exec && r.rack.ecs_exec;
    if !usable || any(ExecPath::Docker) || any(ExecPath::Fails) {
        Outcome::NotReady
    } else if any(ExecPath::Unknown) || r.apps.values().any(|a| a.error.is_some()) {
        Outcome::Unknown
    } else {
        Outcome::Ready
    }
}

/// The table: a header line, one line per task, a summary, the notes.
pub fn table(rack: &str, r: &Readiness) -> String {
    let mut out = format!("rack {rack}: {}\n\n", rack_line(r));
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
    for (app, info) in &r.apps {
        if let Some(e) = &info.error {
            out.push_str(&format!(
                "app {app}: not read, its tasks are not judged: {e}\n"
            ));
        }
    }
    let count = |p: ExecPath| r.verdicts.iter().filter(|v| v.path == p).count();
    out.push_str(&format!(
        "\n{} tasks in {} apps: {} would use ECS Exec, {} would go through Docker exec (not audited in CloudTrail), {} would fail, {} could not be judged.\n",
        r.verdicts.len(),
        r.apps.len(),
        count(ExecPath::EcsExec),
        count(ExecPath::Docker),
        count(ExecPath::Fails),
        count(ExecPath::Unknown),
    ));
    for n in &r.notes {
        out.push_str(&format!("note: {n}\n"));
    }
    out
}

fn rack_line(r: &Readiness) -> String {
    match (r.rack.declares_ecs_exec, r.rack.ecs_exec) {
        (false, _) => {
            "its version predates ECS Exec (the template does not declare ECSExec)".into()
        }
        (true, true) => "ECSExec Yes".into(),
        (true, false) => "ECSExec No".into(),
    }
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
    let apps: BTreeMap<&String, serde_json::Value> = r
        .apps
        .iter()
        .map(|(a, i)| {
            (
                a,
                serde_json::json!({"generation": i.generation, "error": i.error}),
            )
        })
        .collect();
    serde_json::json!({
        "rack": rack,
        "declaresEcsExec": r.rack.declares_ecs_exec,
        "ecsExec": r.rack.ecs_exec,
        "apps": apps,
        "tasks": r.verdicts,
        "outcome": match outcome(r) {
            Outcome::Ready => "ready",
            Outcome::NotReady => "not_ready",
            Outcome::Unknown => "unknown",
        },
        "ready": outcome(r) == Outcome::Ready,
        "notes": r.notes,
        "sessionManagerPlugin": plugin,
        "sessionManagerPluginInstall": PLUGIN_INSTALL_URL,
    })
}
