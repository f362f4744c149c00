//! The Grafana dashboard (`deploy/grafana/rack-reconciler.json`) against a real Prometheus:
//! Prometheus scrapes the controller running on the simulated rack on loopback, the
//! controller converges a change, and every panel's query then parses and returns data.

use crate::common;

use std::time::Duration;

use common::binary::{free_port, Binary};
use serde_json::Value;

/// The Prometheus server (Debian's `prometheus` package; `scripts/test` extracts it).
fn prometheus() -> String {
    let bin = std::env::var("PROMETHEUS")
        .unwrap_or_else(|_| format!("{}/.tools/usr/bin/prometheus", env!("CARGO_MANIFEST_DIR")));
    assert!(
        std::path::Path::new(&bin).exists(),
        "prometheus is not installed at {bin}: run scripts/test (it extracts Debian's prometheus \
         package into .tools) or set PROMETHEUS"
    );
    bin
}

fn dashboard() -> Value {
    serde_json::from_str(include_str!("../deploy/grafana/rack-reconciler.json"))
        .expect("the dashboard is JSON")
}

/// Every panel's queries, with Grafana's `$__rate_interval` as Grafana would fill it in.
fn queries(d: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().expect("targets") {
            let expr = t["expr"].as_str().expect("expr");
            out.push((
                p["title"].as_str().expect("title").to_string(),
                expr.replace("$__rate_interval", "1m"),
            ));
        }
    }
    out
}

#[test]
fn the_dashboard_asks_for_its_data_source_and_covers_what_is_exported() {
    let d = dashboard();
    let vars = d["templating"]["list"].as_array().expect("variables");
    assert!(vars
        .iter()
        .any(|v| v["name"] == "datasource" && v["type"] == "datasource"));
    for p in d["panels"].as_array().expect("panels") {
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
    }
    let all: String = queries(&d).into_iter().map(|(_, q)| q).collect();
    for metric in [
        "rack_reconciler_parameter_drift",
        "rack_reconciler_parameter_phase",
        "rack_reconciler_rollouts_started_total",
        "rack_reconciler_rollout_failures_total",
        "rack_reconciler_reconcile_total",
        "rack_reconciler_reconcile_duration_seconds",
        "rack_reconciler_aws_api_calls_total",
        "rack_reconciler_params_file_valid",
        "rack_reconciler_rollback_failing",
        "rack_reconciler_events_total",
        "rack_reconciler_convergence_seconds",
        "rack_reconciler_parameter_last_change_timestamp_seconds",
    ] {
        assert!(all.contains(metric), "no panel shows {metric}");
    }
}

#[tokio::test]
async fn every_panel_query_returns_data_from_a_real_prometheus() {
    let prometheus = prometheus();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = dir.path().join("rack-reconciler.yaml");
    // The release without ECSExec in its template: the change rolls the services itself, so
    // the rollout panels have something to show.
    std::fs::write(
        &config,
        format!(
            "backend: sim\nrack: convox\nparams_file: params.yaml\nlisten: 127.0.0.1:{port}\n\
             intervals:\n  resync: 1s\n  poll: 200ms\n  min_reconcile: 100ms\n  min_write: 0s\n\
             sim:\n  version: \"20260418101514\"\n  task_start: 300ms\n"
        ),
    )
    .expect("config");
    std::fs::write(dir.path().join("params.yaml"), "ECSExec: \"No\"\n").expect("params");
    let mut controller = Binary::run(&config, "http://127.0.0.1:1", &[]);
    controller.wait_for("phase=Converged").await;

    let prom_port = free_port();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: rack-reconciler\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
        ),
    )
    .expect("prometheus config");
    let _server = tokio::process::Command::new(&prometheus)
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start prometheus");
    let prom = Prom {
        http: reqwest::Client::new(),
        port: prom_port,
    };

    // Prometheus sees the rack before the change, during it and after it.
    prom.wait_for_samples(3).await;
    std::fs::write(dir.path().join("params.yaml"), "ECSExec: \"Yes\"\n").expect("edit");
    controller.wait_for("rollouts complete").await;
    prom.wait_for_samples(8).await;

    for (panel, q) in queries(&dashboard()) {
        let answer = prom.query(&q).await.expect("prometheus answers");
        assert_eq!(answer["status"], "success", "{panel}: {q}: {answer}");
        let result = answer["data"]["result"].as_array().expect("result");
        assert!(!result.is_empty(), "{panel}: {q} returned no data");
        // Quantiles of nothing are NaN: every value is a number.
        for r in result {
            let v = r["value"][1].as_str().unwrap_or("NaN");
            assert!(
                v.parse::<f64>().is_ok_and(f64::is_finite),
                "{panel}: {q}: {r}"
            );
        }
    }
    // The change itself shows: a rollout started, reconciles ran, AWS calls were made.
    for q in [
        "sum(increase(rack_reconciler_rollouts_started_total[1m]))",
        "sum(rate(rack_reconciler_reconcile_total[1m]))",
        "sum(rate(rack_reconciler_aws_api_calls_total[1m]))",
    ] {
        let answer = prom.query(q).await.expect("prometheus answers");
        let v: f64 = answer["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        assert!(v > 0.0, "{q}: {answer}");
    }
    controller.terminate().await;
}

struct Prom {
    http: reqwest::Client,
    port: u16,
}

impl Prom {
    async fn query(&self, q: &str) -> Option<Value> {
        let resp = self
            .http
            .get(format!("http://127.0.0.1:{}/api/v1/query", self.port))
            .query(&[("query", q)])
            .send()
            .await
            .ok()?;
        resp.json::<Value>().await.ok()
    }

    /// Waits until Prometheus holds at least `n` scrapes of the controller in the last minute.
    async fn wait_for_samples(&self, n: u32) {
        for _ in 0..600 {
            let samples = self
                .query("count_over_time(up{job=\"rack-reconciler\"}[1m])")
                .await
                .and_then(|a| {
                    a["data"]["result"][0]["value"][1]
                        .as_str()
                        .map(String::from)
                })
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0);
            if samples >= f64::from(n) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("prometheus never scraped the controller {n} times");
    }
}
