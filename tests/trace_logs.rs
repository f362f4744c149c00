//! The real binary at `RUST_LOG=trace` against moto with a rack shaped like a real one: the
//! monitor's plaintext `PASSWORD` and the web task's TLS key labels travel through
//! `DescribeTaskDefinition` and `RegisterTaskDefinition`, and appear in none of the logs, the
//! status file or `/status`.

mod common;

use std::time::Duration;

use common::moto::Moto;
use common::rack_fixture::{self, SECRETS, STACK};
use tokio::io::AsyncReadExt;

#[tokio::test]
async fn no_secret_of_the_rack_reaches_trace_logs_status_or_the_status_file() {
    let moto = Moto::start().await;
    let rack = rack_fixture::create(&moto).await;
    let (_, ecs) = moto.clients().await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("params.yaml"), "ECSExec: \"Yes\"\n").expect("params");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
        l.local_addr().expect("addr").port()
    };
    let config = dir.path().join("rack-reconciler.yaml");
    // The monitor first, so the revision registered is the one carrying PASSWORD.
    std::fs::write(
        &config,
        format!(
            "backend: aws\nrack: {STACK}\nparams_file: params.yaml\nlisten: 127.0.0.1:{port}\n\
             services:\n  - service: ServiceMonitorApi\n    task_definition: ApiMonitorTasks\n\
             \x20 - service: ServiceWebApi\n    task_definition: ApiWebTasks\n\
             intervals:\n  poll: 1s\n"
        ),
    )
    .expect("config");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_rack-reconciler"))
        .args(["--config", &config.display().to_string(), "run"])
        .env("RUST_LOG", "trace")
        .env("AWS_ENDPOINT_URL", &moto.endpoint)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run rack-reconciler");
    let mut stderr = child.stderr.take().expect("stderr");
    let logs = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });

    // Wait until the monitor service points at the relabelled revision.
    let mut moved = false;
    for _ in 0..300 {
        let now = rack_fixture::service_task_definition(&ecs, rack_fixture::MONITOR).await;
        if now != rack.monitor_task_definition {
            moved = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(moved, "the monitor service was never rolled");
    let status = reqwest::get(format!("http://127.0.0.1:{port}/status"))
        .await
        .expect("GET /status")
        .text()
        .await
        .expect("body");
    let pid = child.id().expect("pid");
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("stops on SIGTERM")
        .expect("wait");
    let logs = logs.await.expect("logs");
    let status_file =
        std::fs::read_to_string(dir.path().join("params.status.json")).expect("status file");

    assert!(
        logs.contains("registered relabelled revision"),
        "the run did relabel"
    );
    assert!(
        logs.contains("DEBUG") || logs.contains("TRACE"),
        "verbose logging was on"
    );
    assert!(status.contains("ECSExec") && status_file.contains("ECSExec"));
    for secret in SECRETS {
        assert!(!logs.contains(secret), "a log line carries a secret");
        assert!(!status.contains(secret), "/status carries a secret");
        assert!(
            !status_file.contains(secret),
            "the status file carries a secret"
        );
    }
}
