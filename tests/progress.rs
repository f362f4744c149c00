//! What people see while a change runs: `apply` on a terminal updates its lines in place (run
//! under a pseudo-terminal with util-linux `script`), prints plain lines without one, and
//! `status --watch` follows a running controller the same way; `run 2>file` leaves no escape
//! sequences in the file. On the simulated rack.

use crate::common;

use std::process::Stdio;

use common::binary::{command, free_port, Binary};

/// A controller config on the simulated rack with fast rollouts, wanting ECSExec=Yes.
fn sim(dir: &std::path::Path, port: u16) -> std::path::PathBuf {
    let config = dir.join("rack-reconciler.yaml");
    std::fs::write(
        &config,
        format!(
            "backend: sim\nrack: convox\nparams_file: params.yaml\nstatus_file: false\n\
             listen: 127.0.0.1:{port}\n\
             intervals:\n  poll: 200ms\n  min_write: 0s\n\
             sim:\n  task_start: 1s\n  stack_update: 1s\n"
        ),
    )
    .expect("config");
    std::fs::write(dir.join("params.yaml"), "ECSExec: \"Yes\"\n").expect("params");
    config
}

const ESC: char = '\u{1b}';

#[tokio::test]
async fn apply_on_a_terminal_updates_lines_in_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = sim(dir.path(), free_port());
    let line = format!(
        "{} --config {} apply",
        env!("CARGO_BIN_EXE_rack-reconciler"),
        config.display()
    );
    let out = tokio::process::Command::new("script")
        .args(["--quiet", "--return", "--command", &line, "/dev/null"])
        // A terminal that can redraw lines; plain log levels, so INFO would be seen.
        .env("TERM", "xterm")
        .env("NO_COLOR", "1")
        .output()
        .await
        .expect("util-linux `script` runs apply under a pseudo-terminal");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    // Cursor movement and line clearing: lines redrawn where they are.
    let clears = text.contains(&format!("{ESC}[2K"));
    let moves_up = text.contains(&format!("{ESC}[1A")) || text.contains(&format!("{ESC}[2A"));
    assert!(clears && moves_up, "{text}");
    assert!(text.contains("ServiceWebApi") && text.contains("RollingOut"));
    assert!(text.contains("ECSExec: Converged (desired Yes, observed Yes)"));
    // The info log lines would break the progress up: only warnings show.
    assert!(!text.contains(" INFO "), "{text}");
}

#[tokio::test]
async fn apply_without_a_terminal_prints_plain_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = sim(dir.path(), free_port());
    let out = command(&config, "http://127.0.0.1:1", &["apply"])
        .env_remove("NO_COLOR")
        .output()
        .await
        .expect("apply");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(!text.contains(ESC), "{text}");
    let rolling: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("ServiceWebApi") && l.contains("RollingOut"))
        .collect();
    assert!(!rolling.is_empty(), "{text}");
    assert!(rolling[0].contains("running,") && rolling[0].contains("draining"));
    assert!(text.contains("ECSExec: Converged (desired Yes, observed Yes)"));
}

#[tokio::test]
async fn status_watch_follows_a_running_controller_to_the_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = sim(dir.path(), port);
    let mut controller = Binary::run(&config, "http://127.0.0.1:1", &[]);
    controller.wait_for("rack-reconciler starting").await;
    let out = command(
        &config,
        "http://127.0.0.1:1",
        &[
            "status",
            "--watch",
            "--url",
            &format!("http://127.0.0.1:{port}"),
        ],
    )
    .output()
    .await
    .expect("status --watch");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("ECSExec: Converged"), "{text}");
    controller.terminate().await;
}

#[tokio::test]
async fn run_with_stderr_in_a_file_writes_no_escape_sequences() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = sim(dir.path(), free_port());
    let log = dir.path().join("run.log");
    let mut child = command(&config, "http://127.0.0.1:1", &["run"])
        .env_remove("NO_COLOR")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .kill_on_drop(true)
        .spawn()
        .expect("run");
    let mut text = String::new();
    for _ in 0..600 {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("phase=Converged") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    child.kill().await.expect("stop");
    assert!(text.contains("phase=Converged"), "{text}");
    assert!(!text.contains(ESC), "{text}");
}
