//! The real binary at `RUST_LOG=trace` against moto with a rack shaped like a real one: the
//! monitor's plaintext `PASSWORD` and the web task's TLS key labels travel through
//! `DescribeTaskDefinition` and `RegisterTaskDefinition`, and appear in none of the logs, the
//! status file or `/status`.

use crate::common;

use common::binary::{free_port, Binary};
use common::moto::Moto;
use common::rack_fixture::{self, SECRETS, STACK};

#[tokio::test]
async fn no_secret_of_the_rack_reaches_trace_logs_status_or_the_status_file() {
    let moto = Moto::start().await;
    let rack = rack_fixture::create(&moto).await;
    let (_, ecs) = moto.clients().await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("params.yaml"), "ECSExec: \"Yes\"\n").expect("params");
    let port = free_port();
    let config = dir.path().join("rack-reconciler.yaml");
    // The monitor first, so the revision registered is the one carrying PASSWORD.
    std::fs::write(
        &config,
        format!(
            "backend: aws\nrack: {STACK}\nparams_file: params.yaml\nlease: none\nlisten: 127.0.0.1:{port}\n\
             services:\n  - service: ServiceMonitorApi\n    task_definition: ApiMonitorTasks\n\
             \x20 - service: ServiceWebApi\n    task_definition: ApiWebTasks\n\
             intervals:\n  poll: 1s\n"
        ),
    )
    .expect("config");
    let mut controller = Binary::run(&config, &moto.endpoint, &[("RUST_LOG", "trace")]);

    // Wait until the controller says the monitor service rolls to the relabelled revision.
    controller.wait_for("reason=UpdateService").await;
    let now = rack_fixture::service_task_definition(&ecs, rack_fixture::MONITOR).await;
    assert_ne!(
        now, rack.monitor_task_definition,
        "the monitor service was never rolled"
    );
    let status = reqwest::get(format!("http://127.0.0.1:{port}/status"))
        .await
        .expect("GET /status")
        .text()
        .await
        .expect("body");
    let (_, logs) = controller.terminate().await;
    let status_file =
        std::fs::read_to_string(dir.path().join("params.status.json")).expect("status file");

    assert!(logs.contains("the rest as it was"), "the run did relabel");
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
