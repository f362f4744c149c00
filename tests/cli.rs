//! Exit codes of the real binary, as the README documents them, on the simulated rack.

use std::path::{Path, PathBuf};
use std::process::Command;

const OLD: &str = "20240205000000";

struct Rack {
    dir: tempfile::TempDir,
    config: PathBuf,
}

/// A config for the simulated rack with `sim` settings (YAML, indented under `sim:`), fast
/// task starts and polls, and `params` as the params file.
fn rack(sim: &str, params: &str) -> Rack {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
        l.local_addr().expect("addr").port()
    };
    let config = dir.path().join("rack-reconciler.yaml");
    std::fs::write(
        &config,
        format!(
            "backend: sim\nrack: convox\nparams_file: params.yaml\nlisten: 127.0.0.1:{port}\n\
             intervals:\n  poll: 200ms\n  min_reconcile: 0s\n  min_write: 0s\n\
             backoff:\n  min: 1s\n  max: 2s\n\
             sim:\n  stack_update: 1s\n{}{sim}",
            if sim.contains("task_start") {
                ""
            } else {
                "  task_start: 300ms\n"
            }
        ),
    )
    .expect("config");
    std::fs::write(dir.path().join("params.yaml"), params).expect("params");
    Rack { dir, config }
}

fn run(config: &Path, args: &[&str]) -> (i32, String) {
    run_env(config, args, &[])
}

fn run_env(config: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rack-reconciler"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("NO_COLOR", "1")
        .envs(env.iter().copied())
        .output()
        .expect("run rack-reconciler");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn validate_exits_0_when_valid_and_5_when_not() {
    let r = rack("", "ECSExec: \"Yes\"\n");
    assert_eq!(run(&r.config, &["validate"]).0, 0);
    std::fs::write(r.dir.path().join("params.yaml"), "ECSExec: yes\n").expect("params");
    let (code, out) = run(&r.config, &["validate"]);
    assert_eq!(code, 5, "{out}");
    assert!(out.contains("params.yaml:1: ECSExec"), "{out}");
}

#[test]
fn plan_exits_2_whenever_desired_and_observed_differ_a_held_version_included() {
    let r = rack("", "ECSExec: \"No\"\n");
    let (code, out) = run(&r.config, &["plan", "--detailed-exitcode"]);
    assert_eq!(code, 0, "{out}");
    std::fs::write(r.dir.path().join("params.yaml"), "ECSExec: \"Yes\"\n").expect("params");
    assert_eq!(run(&r.config, &["plan", "--detailed-exitcode"]).0, 2);
    assert_eq!(
        run(&r.config, &["plan"]).0,
        0,
        "without --detailed-exitcode"
    );

    // A downgrade the gate refuses (the rack runs Yes): nothing would be written, yet the
    // rack differs from the params file.
    let r = rack(
        "  initial_ecs_exec: \"Yes\"\n",
        &format!("Version: \"{OLD}\"\n"),
    );
    let (code, out) = run(&r.config, &["plan", "--detailed-exitcode"]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("Version: desired 20240205000000, observed 20261101000000 (Blocked)"),
        "{out}"
    );
}

#[test]
fn apply_exits_0_when_converged_even_after_a_throttled_write() {
    // The stack path (the default release declares ECSExec): UpdateStack throttled once.
    let r = rack("  throttled:\n    UpdateStack: 1\n", "ECSExec: \"Yes\"\n");
    let (code, out) = run(&r.config, &["apply"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ECSExec: Converged"), "{out}");
    assert!(
        out.contains("ThrottlingException"),
        "the throttled write was retried: {out}"
    );
    // The relabel path: UpdateService throttled once.
    let r = rack(
        "  version: \"20260418101514\"\n  throttled:\n    UpdateService: 1\n",
        "ECSExec: \"Yes\"\n",
    );
    let (code, out) = run(&r.config, &["apply"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ThrottlingException"), "{out}");
}

#[test]
fn apply_exits_3_when_a_rollout_fails_and_4_when_blocked() {
    let r = rack("  failing_rollouts: 1\n", "ECSExec: \"Yes\"\n");
    let (code, out) = run(&r.config, &["apply"]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("ECSExec: Failed"), "{out}");

    let r = rack(
        "  initial_ecs_exec: \"Yes\"\n",
        &format!("Version: \"{OLD}\"\n"),
    );
    let (code, out) = run(&r.config, &["apply"]);
    assert_eq!(code, 4, "{out}");
}

#[test]
fn apply_gives_up_at_its_timeout_with_exit_1() {
    let r = rack("  task_start: 1h\n", "ECSExec: \"Yes\"\n");
    let (code, out) = run(&r.config, &["apply", "--timeout", "2s"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("--timeout"), "{out}");
}

#[test]
fn status_exits_1_with_controller_only_and_no_controller_else_0() {
    let r = rack("", "ECSExec: \"No\"\n");
    let (code, out) = run(&r.config, &["status", "--controller-only"]);
    assert_eq!(code, 1, "{out}");
    let (code, out) = run(&r.config, &["status"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("no controller answers"), "{out}");
}

#[test]
fn check_downgrade_exits_0_allowed_4_refused_5_not_a_version() {
    let r = rack("  initial_ecs_exec: \"Yes\"\n", "ECSExec: \"Yes\"\n");
    let (code, out) = run(&r.config, &["check-downgrade", "--to", OLD]);
    assert_eq!(code, 4, "{out}");
    assert!(out.contains("ECSExec: \"No\""), "{out}");
    assert_eq!(run(&r.config, &["check-downgrade", "--to", "latest"]).0, 5);
    assert_eq!(
        run(&r.config, &["check-downgrade", "--to", "20261201000000"]).0,
        0
    );

    // Unmanaged ECSExec, every task on No: allowed.
    let r = rack("", "{}\n");
    let (code, out) = run(&r.config, &["check-downgrade", "--to", OLD]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn set_edits_like_convox_rack_params_set_and_refuses_what_the_template_does_not_allow() {
    let original = "# Desired rack parameters.\nECSExec: \"No\"   # off for now\n\n# the API\nApiCount: \"2\"\n";
    let r = rack("", original);
    let params = r.dir.path().join("params.yaml");
    let (code, out) = run(&r.config, &["set", "ECSExec=Yes", "ApiCount=3"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        std::fs::read_to_string(&params).expect("params"),
        "# Desired rack parameters.\nECSExec: \"Yes\"   # off for now\n\n# the API\nApiCount: \"3\"\n"
    );
    let before = std::fs::read_to_string(&params).expect("params");
    for bad in [
        "Bogus=1",
        "ECSExec=yes",
        "InstanceCount=2",
        "Password=hunter2",
    ] {
        let (code, out) = run(&r.config, &["set", bad]);
        assert_eq!(code, 5, "{bad}: {out}");
        assert!(out.contains("unchanged"), "{out}");
        assert!(!out.contains("hunter2"), "{out}");
        assert_eq!(
            std::fs::read_to_string(&params).expect("params"),
            before,
            "{bad}"
        );
    }
    let (code, out) = run(&r.config, &["get"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("ApiCount") && l.contains(" 3 ") && l.contains(" 2 ")),
        "{out}"
    );
}

#[test]
fn validate_checks_against_a_template_file_offline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let template = dir.path().join("rack.json");
    std::fs::write(
        &template,
        r#"{"Parameters": {"InstanceCount": {"Type": "Number", "MinValue": 3},
            "InstanceType": {"Type": "String", "AllowedPattern": "[a-z0-9]+\\.[a-z0-9]+"},
            "Password": {"Type": "String", "NoEcho": true}}}"#,
    )
    .expect("template");
    let params = dir.path().join("params.yaml");
    let check = |text: &str| {
        std::fs::write(&params, text).expect("params");
        let out = Command::new(env!("CARGO_BIN_EXE_rack-reconciler"))
            .arg("validate")
            .arg(&params)
            .arg("--template")
            .arg(&template)
            .output()
            .expect("run");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    assert_eq!(check("InstanceCount: 4\nECSExec: \"Yes\"\n").0, 0);
    let (code, out) = check("InstanceCount: \"2\"\n");
    assert_eq!(code, 5);
    assert!(out.contains("a number of at least 3"), "{out}");
    let (code, out) = check("InstanceType: \"huge\"\n");
    assert_eq!(code, 5);
    assert!(out.contains("pattern"), "{out}");
    let (code, out) = check("Password: \"x\"\n");
    assert_eq!(code, 5);
    assert!(out.contains("secret"), "{out}");
    let (code, out) = check("Bogus: \"1\"\n");
    assert_eq!(code, 5);
    assert!(out.contains("unknown key Bogus"), "{out}");
}

/// A `session-manager-plugin` that prints a version, in a directory of its own.
fn fake_plugin(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    let plugin = bin.join("session-manager-plugin");
    std::fs::write(
        &plugin,
        "#!/bin/sh\n[ \"$1\" = --version ] && echo 1.2.707.0\n",
    )
    .expect("plugin");
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    bin
}

#[test]
fn exec_check_shows_every_task_and_the_plugin_and_exits_0_only_when_every_task_is_proven() {
    let r = rack("  initial_ecs_exec: \"Yes\"\n", "ECSExec: \"Yes\"\n");
    let install = "https://docs.aws.amazon.com/systems-manager/latest/userguide/session-manager-working-with-install-plugin.html";
    // No plugin on PATH: said so, with AWS's install guide.
    let (code, out) = run_env(&r.config, &["exec-check"], &[("PATH", "/nonexistent")]);
    assert_eq!(code, 4, "{out}");
    assert!(
        out.contains("session-manager-plugin: not found on PATH"),
        "{out}"
    );
    assert!(out.contains(install), "{out}");
    for reason in [
        "gen1",
        "service_without_exec",
        "started_before_enable",
        "readonly_root_filesystem",
        "agent_too_old",
        "agent_not_running",
        "platform_too_old",
        "credentials_in_environment",
        "task_role_lacks_ssmmessages",
        "boundary_blocks_ssmmessages",
        "unknown_agent_version",
        "unknown_role_permissions",
    ] {
        assert!(out.contains(reason), "{reason} missing:\n{out}");
    }
    assert!(
        out.contains("18 tasks in 7 apps: 3 would use ECS Exec, 5 would go through Docker exec (not audited in CloudTrail), 8 would fail, 2 could not be judged."),
        "{out}"
    );
    // Only facts that could not be read: exit 6, not 0.
    let (code, out) = run(&r.config, &["exec-check", "--app", "metrics"]);
    assert_eq!(code, 6, "{out}");
    assert!(out.contains("unknown_role_permissions"), "{out}");
    // The plugin on PATH: its version and where it is, no install link.
    let bin = fake_plugin(r.dir.path());
    let (code, out) = run_env(
        &r.config,
        &["exec-check", "--app", "shop"],
        &[("PATH", bin.to_str().expect("path"))],
    );
    assert_eq!(code, 4, "{out}");
    assert!(out.contains("session-manager-plugin: 1.2.707.0 ("), "{out}");
    assert!(!out.contains(install), "{out}");
    assert!(!out.contains("billing"), "only shop: {out}");
    // JSON.
    let (_, out) = run_env(
        &r.config,
        &["exec-check", "--json"],
        &[("PATH", bin.to_str().expect("path"))],
    );
    let doc: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(doc["tasks"].as_array().map(Vec::len), Some(18));
    assert_eq!(doc["ready"], false);
    assert_eq!(doc["outcome"], "not_ready");
    assert_eq!(doc["sessionManagerPlugin"]["version"], "1.2.707.0");
    // An unknown app is an error.
    let (code, out) = run(&r.config, &["exec-check", "--app", "nope"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("app nope not found"), "{out}");
    // Every task on ECS Exec: exit 0.
    let ready = rack(
        "  initial_ecs_exec: \"Yes\"\n  apps: 2\n",
        "ECSExec: \"Yes\"\n",
    );
    let (code, out) = run(&ready.config, &["exec-check"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("18 tasks in 2 apps: 18 would use ECS Exec, 0 would go through Docker exec"),
        "{out}"
    );
}

/// `GET path` on 127.0.0.1:`port` (HTTP/1.0, no client crate): the status code and body.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

#[test]
fn history_shows_what_apply_did_and_run_serves_it_at_events() {
    use rack_reconciler::history::{Event, Kind};
    let r = rack("", "ECSExec: \"Yes\"\n");
    let (code, out) = run(&r.config, &["apply"]);
    assert_eq!(code, 0, "{out}");

    let (code, out) = run(&r.config, &["history"]);
    assert_eq!(code, 0, "{out}");
    for needle in [
        "TIME",
        "EVENT",
        "desired_changed",
        "write_made",
        "UpdateStack",
        "converged",
    ] {
        assert!(out.contains(needle), "{needle}: {out}");
    }
    let (code, out) = run(
        &r.config,
        &["history", "--json", "--param", "ECSExec", "--since", "1h"],
    );
    assert_eq!(code, 0, "{out}");
    let events: Vec<Event> = serde_json::from_str(&out).expect("the documented JSON");
    assert!(events.iter().all(|e| e.concerns("ECSExec")), "{out}");
    let converged = events
        .iter()
        .find(|e| e.kind == Kind::Converged)
        .expect("converged");
    assert!(converged.duration_seconds.is_some(), "{out}");
    let (code, out) = run(&r.config, &["history", "--since", "yesterday-ish"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("expected a duration back from now"), "{out}");

    // `run` (a new process, on a simulated rack of its own) serves the same history at
    // /events, and goes on with it.
    let port: u16 = std::fs::read_to_string(&r.config)
        .expect("config")
        .lines()
        .find_map(|l| l.strip_prefix("listen: 127.0.0.1:"))
        .and_then(|p| p.trim().parse().ok())
        .expect("port");
    std::fs::write(r.dir.path().join("params.yaml"), "ECSExec: \"No\"\n").expect("params");
    let mut controller = Command::new(env!("CARGO_BIN_EXE_rack-reconciler"))
        .arg("--config")
        .arg(&r.config)
        .arg("run")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run");
    let mut served = Vec::new();
    for _ in 0..200 {
        if let Some((200, body)) = http_get(port, "/events?param=ECSExec") {
            served = serde_json::from_str::<Vec<Event>>(&body).expect("JSON events");
            if served
                .iter()
                .any(|e| e.message.contains("ECSExec: Yes → No"))
            {
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let bad = http_get(port, "/events?since=soon");
    let _ = controller.kill();
    let _ = controller.wait();
    assert_eq!(
        &served[..events.len()],
        &events[..],
        "the history apply wrote, then what run did"
    );
    let edit = &served[events.len()];
    assert_eq!(edit.kind, Kind::DesiredChanged, "{served:#?}");
    assert!(edit.message.contains("ECSExec: Yes → No"), "{served:#?}");
    assert_eq!(bad.map(|(code, _)| code), Some(400));
}
