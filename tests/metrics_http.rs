//! A running controller on the simulated rack, scraped over HTTP: every documented metric is
//! present with its type, and carries the right values after a converge, a drift and a
//! failure. Runs on the real clock with a fast simulated rack; it waits on status changes,
//! never sleeps.

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::Harness;
use rack_reconciler::metrics::{Metrics, METRICS};
use rack_reconciler::plan::Phase;
use rack_reconciler::rack::sim::{RolloutFault, SimSettings};
use rack_reconciler::reconcile::{Reconciler, Trigger};
use rack_reconciler::status::{Status, StatusHandle};
use tokio::sync::{mpsc, watch};

struct Running {
    base: String,
    status: StatusHandle,
    triggers: mpsc::Sender<Trigger>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

async fn start(h: &Harness) -> Running {
    let mut settings = h.settings();
    settings.poll = Duration::from_millis(20);
    settings.resync = Duration::from_millis(200);
    settings.backoff_min = Duration::from_millis(50);
    settings.backoff_max = Duration::from_millis(200);
    settings.max_corrections_per_hour = 1;
    let metrics = Metrics::new();
    h.sim.set_metrics(metrics.clone());
    let status = StatusHandle::new(Status {
        rack: "convox".into(),
        backend: "sim".into(),
        ..Status::default()
    });
    let rec = Reconciler::new(h.sim.clone(), settings, metrics.clone(), status.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = watch::channel(false);
    let (triggers, rx) = mpsc::channel(1);
    let mut http_stop = stopped.clone();
    let served = rack_reconciler::http::Served {
        status: status.clone(),
        metrics,
        journal: rec.journal(),
        stale_after: Duration::from_secs(600),
    };
    let server = tokio::spawn(async move {
        let shutdown = async move {
            let _ = http_stop.wait_for(|s| *s).await;
        };
        rack_reconciler::http::serve(listener, served, shutdown)
            .await
            .expect("serve");
    });
    let exec = rack_reconciler::exec::watch::ExecWatch::new(
        h.sim.clone(),
        "convox",
        Duration::from_secs(300),
        Duration::from_secs(60),
        rec.metrics(),
        status.clone(),
    );
    let exec = tokio::spawn(exec.run(stopped.clone()));
    let controller = tokio::spawn(rec.run(rx, stopped));
    Running {
        base,
        status,
        triggers,
        stop,
        tasks: vec![server, controller, exec],
    }
}

impl Running {
    async fn wait_for(&self, what: &str, pred: impl Fn(&Status) -> bool) {
        let mut rx = self.status.subscribe();
        let r = tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|s| pred(s))).await;
        assert!(
            r.is_ok(),
            "timed out waiting for {what}: {:?}",
            self.status.get()
        );
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let resp = reqwest::get(format!("{}{path}", self.base))
            .await
            .expect("GET");
        let code = resp.status().as_u16();
        (code, resp.text().await.expect("body"))
    }

    /// Metric samples by `name{labels}` as the exposition writes them.
    async fn scrape(&self) -> (BTreeMap<String, String>, BTreeMap<String, f64>) {
        let (code, text) = self.get("/metrics").await;
        assert_eq!(code, 200);
        let mut types = BTreeMap::new();
        let mut samples = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("type line");
                types.insert(name.to_string(), kind.to_string());
            } else if !line.starts_with('#') && !line.is_empty() {
                let (series, value) = line.rsplit_once(' ').expect("sample");
                samples.insert(series.to_string(), value.parse().expect("value"));
            }
        }
        (types, samples)
    }

    async fn stop(self) {
        self.stop.send(true).expect("stop");
        for t in self.tasks {
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .expect("stops")
                .expect("no panic");
        }
    }
}

fn phase(s: &Status) -> Option<Phase> {
    s.parameter("ECSExec").map(|p| p.phase)
}

#[tokio::test]
async fn every_documented_metric_is_served_with_the_right_values() {
    let settings = SimSettings {
        task_start: Duration::from_millis(30),
        ..SimSettings::default()
    };
    let h = Harness::with_sim("ECSExec: \"Yes\"\n", settings);
    let c = start(&h).await;

    // Converge.
    c.wait_for("converged", |s| phase(s) == Some(Phase::Converged))
        .await;
    let (types, m) = c.scrape().await;
    for d in METRICS {
        assert_eq!(
            types.get(d.name).map(String::as_str),
            Some(d.kind),
            "{} type",
            d.name
        );
    }
    let p = "{parameter=\"ECSExec\"}";
    assert_eq!(m[&format!("rack_reconciler_parameter_converged{p}")], 1.0);
    assert_eq!(m[&format!("rack_reconciler_parameter_drift{p}")], 0.0);
    assert_eq!(
        m[&format!("rack_reconciler_parameter_drift_start_timestamp_seconds{p}")],
        0.0
    );
    assert_eq!(
        m["rack_reconciler_parameter_phase{parameter=\"ECSExec\",phase=\"Converged\"}"],
        1.0
    );
    assert_eq!(
        m["rack_reconciler_parameter_phase{parameter=\"ECSExec\",phase=\"Progressing\"}"],
        0.0
    );
    assert_eq!(
        m["rack_reconciler_rollouts_started_total{service=\"ServiceWebApi\"}"],
        1.0
    );
    assert_eq!(
        m["rack_reconciler_rollouts_started_total{service=\"ServiceMonitorApi\"}"],
        1.0
    );
    assert_eq!(
        m["rack_reconciler_rollouts_in_progress{service=\"ServiceWebApi\"}"],
        0.0
    );
    assert_eq!(
        m["rack_reconciler_rollout_failed{service=\"ServiceWebApi\"}"],
        0.0
    );
    assert_eq!(m["rack_reconciler_params_file_valid"], 1.0);
    assert!(m["rack_reconciler_reconcile_total{result=\"converged\"}"] >= 1.0);
    assert!(m["rack_reconciler_reconcile_total{result=\"progressing\"}"] >= 1.0);
    assert!(m["rack_reconciler_reconcile_duration_seconds_count{result=\"converged\"}"] >= 1.0);
    assert!(m["rack_reconciler_last_reconcile_timestamp_seconds"] > 1.0e9);
    assert_eq!(
        m["rack_reconciler_aws_api_calls_total{operation=\"UpdateService\",outcome=\"success\",service=\"ecs\"}"],
        2.0
    );
    assert!(m
        .keys()
        .any(|k| k.starts_with("rack_reconciler_build_info{version=")));
    assert_eq!(c.get("/healthz").await.0, 200);
    assert_eq!(c.get("/readyz").await.0, 200);
    let (code, body) = c.get("/status").await;
    assert_eq!(code, 200);
    let status: Status = serde_json::from_str(&body).expect("status JSON");
    assert_eq!(
        status.parameter("ECSExec").map(|p| p.phase),
        Some(Phase::Converged)
    );

    // Drift: one revert is corrected; the second, past the cap of one an hour, stays.
    h.sim
        .revert_label_out_of_band("ServiceWebApi", "rack.ECSExec", None);
    c.wait_for("the correction", |s| {
        phase(s) == Some(Phase::Converged) && s.parameter("ECSExec").is_some_and(|p| !p.drift)
    })
    .await;
    let (_, m) = c.scrape().await;
    if m[&format!("rack_reconciler_corrections_total{p}")] == 0.0 {
        // The revert had not been seen yet when the status was last converged.
        c.wait_for("the correction", |s| {
            s.parameter("ECSExec")
                .is_some_and(|p| p.reason == "RollingOut")
        })
        .await;
        c.wait_for("converged again", |s| phase(s) == Some(Phase::Converged))
            .await;
    }
    h.sim
        .revert_label_out_of_band("ServiceWebApi", "rack.ECSExec", None);
    c.wait_for("corrections capped", |s| phase(s) == Some(Phase::Blocked))
        .await;
    let (_, m) = c.scrape().await;
    assert_eq!(m[&format!("rack_reconciler_corrections_total{p}")], 1.0);
    assert_eq!(m[&format!("rack_reconciler_corrections_capped{p}")], 1.0);
    assert_eq!(m[&format!("rack_reconciler_parameter_drift{p}")], 1.0);
    assert!(m[&format!("rack_reconciler_parameter_drift_start_timestamp_seconds{p}")] > 1.0e9);
    assert_eq!(m[&format!("rack_reconciler_parameter_converged{p}")], 0.0);
    assert_eq!(
        m["rack_reconciler_parameter_phase{parameter=\"ECSExec\",phase=\"Blocked\"}"],
        1.0
    );

    // Failure: rollouts that the circuit breaker rolls back, and an invalid params file. The
    // web service already runs the reverted revision (no label, which is "No"), so the
    // monitor is the one rolled, and failing.
    for _ in 0..1000 {
        h.sim.inject_rollout_fault(RolloutFault::FailToStart);
    }
    h.write_params("ECSExec: \"No\"\n");
    c.triggers
        .send(Trigger::ParamsChanged)
        .await
        .expect("trigger");
    c.wait_for("the failed rollout", |s| phase(s) == Some(Phase::Failed))
        .await;
    let (_, m) = c.scrape().await;
    assert_eq!(
        m["rack_reconciler_rollout_failed{service=\"ServiceMonitorApi\"}"],
        1.0
    );
    assert_eq!(
        m["rack_reconciler_rollout_failed{service=\"ServiceWebApi\"}"],
        0.0
    );
    assert!(m["rack_reconciler_rollout_failures_total{service=\"ServiceMonitorApi\"}"] >= 1.0);
    assert_eq!(
        m["rack_reconciler_parameter_phase{parameter=\"ECSExec\",phase=\"Failed\"}"],
        1.0
    );
    assert_eq!(m[&format!("rack_reconciler_corrections_capped{p}")], 0.0);

    h.write_params("ECSExec: yes\n");
    c.triggers
        .send(Trigger::ParamsChanged)
        .await
        .expect("trigger");
    c.wait_for("the params error", |s| !s.params_file.valid)
        .await;
    let (_, m) = c.scrape().await;
    assert_eq!(m["rack_reconciler_params_file_valid"], 0.0);
    assert_eq!(
        m["rack_reconciler_params_file_errors_total{kind=\"invalid_value\"}"],
        1.0
    );
    assert_eq!(
        m["rack_reconciler_params_file_errors_total{kind=\"syntax\"}"],
        0.0
    );
    // Labels come from small fixed sets: no error text, no ARNs.
    let (_, text) = c.get("/metrics").await;
    assert!(!text.contains("arn:aws") && !text.contains("invalid value"));
    c.stop().await;
}
