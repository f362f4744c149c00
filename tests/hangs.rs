//! Nothing hangs: a reconcile whose AWS call never returns ends at its deadline (on tokio's
//! paused clock), and the real binary, pointed at a server that accepts connections and never
//! answers, turns `/readyz` to 503 once its last observation is too old and still exits
//! promptly on SIGTERM.

use crate::common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::binary::{free_port, Binary};
use common::Harness;
use rack_reconciler::model::{
    ServiceSnapshot, ServiceTasks, StackSnapshot, TaskDefinitionInfo, TaskRead,
};
use rack_reconciler::plan::Phase;
use rack_reconciler::rack::sim::SimRack;
use rack_reconciler::rack::{
    Rack, RackError, Relabelled, StackUpdateOutcome, StackUpdateRequest, TemplateSummary,
};
use rack_reconciler::reconcile::{Reconciler, Trigger};
use rack_reconciler::status::{Status, StatusHandle};
use rack_reconciler::templates::TemplateRef;

/// The simulated rack, except that `DescribeServices` never answers while `hang` is set.
struct Hanging {
    sim: Arc<SimRack>,
    hang: AtomicBool,
}

#[async_trait]
impl Rack for Hanging {
    async fn describe_stack(&self) -> Result<StackSnapshot, RackError> {
        self.sim.describe_stack().await
    }
    async fn describe_services(
        &self,
        cluster: &str,
        services: &[String],
    ) -> Result<Vec<ServiceSnapshot>, RackError> {
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.sim.describe_services(cluster, services).await
    }
    async fn stack_resource(&self, logical: &str) -> Result<String, RackError> {
        self.sim.stack_resource(logical).await
    }
    async fn service_tasks(
        &self,
        cluster: &str,
        reads: &[TaskRead],
    ) -> Result<Vec<ServiceTasks>, RackError> {
        self.sim.service_tasks(cluster, reads).await
    }
    async fn describe_task_definition(&self, arn: &str) -> Result<TaskDefinitionInfo, RackError> {
        self.sim.describe_task_definition(arn).await
    }
    async fn relabel(&self, base: &str, label: &str, value: &str) -> Result<Relabelled, RackError> {
        self.sim.relabel(base, label, value).await
    }
    async fn update_service(
        &self,
        cluster: &str,
        service: &str,
        td: &str,
    ) -> Result<(), RackError> {
        self.sim.update_service(cluster, service, td).await
    }
    async fn stack_declarations(&self) -> Result<rack_reconciler::spec::Declarations, RackError> {
        self.sim.stack_declarations().await
    }
    async fn template_summary(&self, t: &TemplateRef) -> Result<TemplateSummary, RackError> {
        self.sim.template_summary(t).await
    }
    async fn update_stack(
        &self,
        request: &StackUpdateRequest,
    ) -> Result<StackUpdateOutcome, RackError> {
        self.sim.update_stack(request).await
    }
    async fn preview_stack_update(
        &self,
        request: &StackUpdateRequest,
    ) -> Result<Vec<rack_reconciler::rack::ResourceChange>, RackError> {
        self.sim.preview_stack_update(request).await
    }
    async fn cancel_update_stack(&self) -> Result<(), RackError> {
        self.sim.cancel_update_stack().await
    }
    async fn stack_failure_reason(&self) -> Result<Option<String>, RackError> {
        self.sim.stack_failure_reason().await
    }
    async fn latest_update(&self) -> Result<rack_reconciler::model::UpdateEvents, RackError> {
        self.sim.latest_update().await
    }
}

#[tokio::test(start_paused = true)]
async fn a_reconcile_whose_call_never_returns_ends_at_its_deadline() {
    let h = Harness::new("ECSExec: \"Yes\"\n");
    let rack = Arc::new(Hanging {
        sim: h.sim.clone(),
        hang: AtomicBool::new(false),
    });
    let settings = h.settings();
    let deadline = settings.reconcile_timeout;
    let metrics = rack_reconciler::metrics::Metrics::new();
    let mut rec = Reconciler::new(
        rack.clone(),
        settings,
        metrics,
        StatusHandle::new(Status::default()),
    );
    let first = rec.reconcile(Trigger::Startup).await;
    assert!(first.acted);
    let observed_at = rec.status().get().last_observation.expect("observed");

    rack.hang.store(true, Ordering::SeqCst);
    let started = tokio::time::Instant::now();
    let r = rec.reconcile(Trigger::Timer).await;
    assert_eq!(
        tokio::time::Instant::now() - started,
        deadline,
        "ended exactly at the deadline"
    );
    assert_eq!(r.result, "error");
    assert!(
        matches!(r.rack_error, Some(RackError::Deadline { .. })),
        "{:?}",
        r.rack_error
    );
    assert!(
        r.next >= Duration::from_secs(30) && r.next < Duration::from_secs(60),
        "retried with backoff: {:?}",
        r.next
    );
    let status = rec.status().get();
    assert!(!status.ready);
    assert!(status
        .rack_error
        .as_deref()
        .unwrap_or("")
        .contains("timeouts.reconcile"));
    assert_eq!(
        status.last_observation.as_deref(),
        Some(observed_at.as_str()),
        "not observed since"
    );
    assert_eq!(
        common::param(&rec, "ECSExec").phase,
        Phase::Progressing,
        "an abandoned run changes no decision"
    );
    let text = rec.metrics().render();
    assert!(
        text.contains("rack_reconciler_reconcile_total{result=\"error\"} 1"),
        "{text}"
    );

    // Once AWS answers again, the loop carries on.
    rack.hang.store(false, Ordering::SeqCst);
    let reports = common::drive(&mut rec, 200, |r| {
        common::ecs_exec(r) == Some(Phase::Converged)
    })
    .await;
    assert_eq!(
        common::ecs_exec(reports.last().expect("report")),
        Some(Phase::Converged)
    );
}

/// A TCP server on loopback that accepts every connection and never answers; stops with the
/// test.
struct BlackHole {
    endpoint: String,
    task: tokio::task::JoinHandle<()>,
}

impl BlackHole {
    async fn start() -> BlackHole {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                held.push(conn);
            }
        });
        BlackHole { endpoint, task }
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn the_binary_reports_a_stuck_loop_and_still_stops_promptly() {
    let hole = BlackHole::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("params.yaml"), "ECSExec: \"Yes\"\n").expect("params");
    let port = free_port();
    let config = dir.path().join("rack-reconciler.yaml");
    // Every AWS timeout far away: the loop is stuck in its first call for the whole test.
    // The observation counts as stale at once (1ms), so nothing has to wait for it.
    std::fs::write(
        &config,
        format!(
            "backend: aws\nrack: convox\nparams_file: params.yaml\nlease: none\nlisten: 127.0.0.1:{port}\n\
             timeouts:\n  reconcile: 10m\n  aws_call: 10m\n  aws_attempt: 10m\n  aws_connect: 10m\n  observation_stale: 1ms\n"
        ),
    )
    .expect("config");
    let mut controller = Binary::run(&config, &hole.endpoint, &[]);
    controller.wait_for("rack-reconciler starting").await;

    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    // The first request may reach the server within a millisecond of its start, before the
    // observation counts as stale: ask until it does (it never becomes ready).
    let mut body = String::new();
    for _ in 0..50 {
        let resp = http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .expect("readyz");
        assert_eq!(resp.status().as_u16(), 503);
        body = resp.text().await.expect("body");
        if body.contains("timeouts.observation_stale") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        body.contains("timeouts.observation_stale") && body.contains("never"),
        "{body}"
    );
    let status: Status = http
        .get(format!("{base}/status"))
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("status json");
    assert!(status.observation_stale && status.last_observation.is_none());
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("rack_reconciler_last_successful_observation_timestamp_seconds 0"),
        "{metrics}"
    );
    // The health check of the in-rack template fails too.
    let health = tokio::process::Command::new(env!("CARGO_BIN_EXE_rack-reconciler"))
        .args([
            "--config",
            &config.display().to_string(),
            "status",
            "--controller-only",
        ])
        .output()
        .await
        .expect("status --controller-only");
    assert_eq!(health.status.code(), Some(1));

    // SIGTERM: the stuck reconcile gets its grace period, then the process exits (long before
    // the 10-minute deadline).
    let (exit, log) = controller.terminate().await;
    assert!(exit.success(), "{exit:?}\n{log}");
}
