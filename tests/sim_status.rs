//! Nothing stale: a parameter removed from the params file leaves status, status file and
//! metrics; an outage keeps the drift and when it started; one transient error does not flap
//! the phase. On tokio's paused clock.

use crate::common;

use std::time::Duration;

use common::{drive, ecs_exec, Harness};
use rack_reconciler::plan::Phase;
use rack_reconciler::rack::sim::RolloutFault;
use rack_reconciler::reconcile::Trigger;

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(start_paused = true)]
async fn a_parameter_removed_while_drifting_disappears_from_status_and_metrics() {
    let h = Harness::new("ECSExec: \"Yes\"\n");
    h.sim.inject_rollout_fault(RolloutFault::NeverHealthy);
    let mut rec = h.reconciler();
    common::run_for(&mut rec, Duration::from_secs(60)).await;
    let text = rec.metrics().render();
    assert_eq!(
        metric(
            &text,
            "rack_reconciler_parameter_drift{parameter=\"ECSExec\"}"
        ),
        Some(1.0)
    );

    h.write_params("Version: \"20260418101514\"\n");
    rec.reconcile(Trigger::ParamsChanged).await;
    let status = rec.status().get();
    assert!(
        status.parameter("ECSExec").is_none(),
        "{:?}",
        status.parameters
    );
    assert!(status.parameter("Version").is_some());
    let text = rec.metrics().render();
    assert!(!text.contains("parameter=\"ECSExec\""), "{text}");
    let file =
        std::fs::read_to_string(h.dir.path().join("params.status.json")).expect("status file");
    assert!(!file.contains("\"name\": \"ECSExec\""), "{file}");
}

#[tokio::test(start_paused = true)]
async fn an_hour_without_the_rack_keeps_the_drift_and_its_start() {
    let h = Harness::new("ECSExec: \"Yes\"\n");
    h.sim.inject_rollout_fault(RolloutFault::NeverHealthy);
    let mut rec = h.reconciler();
    common::run_for(&mut rec, Duration::from_secs(30)).await;
    let before = rec
        .status()
        .get()
        .parameter("ECSExec")
        .cloned()
        .expect("status");
    assert!(before.drift);
    let since = before.drift_since.clone().expect("drift start");
    let series = "rack_reconciler_parameter_drift_start_timestamp_seconds{parameter=\"ECSExec\"}";
    let start_metric = metric(&rec.metrics().render(), series).expect("drift start metric");
    assert!(start_metric > 0.0);

    let observed_at = metric(
        &rec.metrics().render(),
        "rack_reconciler_last_successful_observation_timestamp_seconds",
    )
    .expect("observed");

    // One transient error: nothing flaps.
    h.sim.inject_api_errors("DescribeStacks", 1);
    let r = rec.reconcile(Trigger::Timer).await;
    assert_eq!(r.result, "error");
    let p = common::param(&rec, "ECSExec");
    assert_eq!(
        p.phase, before.phase,
        "one error does not turn the phase Unknown"
    );

    // An hour of outage.
    h.sim.inject_api_errors("DescribeStacks", 100_000);
    let reports = common::run_for(&mut rec, Duration::from_secs(3600)).await;
    assert!(reports.iter().all(|r| r.result == "error"));
    let status = rec.status().get();
    let p = status.parameter("ECSExec").expect("status");
    assert_eq!(p.phase, Phase::Unknown);
    assert!(p.drift, "the last known drift is kept");
    assert_eq!(
        p.drift_since.as_deref(),
        Some(since.as_str()),
        "drift start unchanged"
    );
    assert!(!status.ready);
    let text = rec.metrics().render();
    assert_eq!(
        metric(&text, series),
        Some(start_metric),
        "drift start metric unchanged"
    );
    assert_eq!(
        metric(
            &text,
            "rack_reconciler_parameter_drift{parameter=\"ECSExec\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            "rack_reconciler_parameter_phase{parameter=\"ECSExec\",phase=\"Unknown\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            "rack_reconciler_last_successful_observation_timestamp_seconds"
        ),
        Some(observed_at),
        "no observation since the outage began"
    );

    // The rack comes back: the drift start is still the one of before the outage.
    h.sim.clear_api_errors("DescribeStacks");
    let r = drive(&mut rec, 5, |r| r.result != "error").await;
    assert_ne!(r.last().expect("report").result, "error");
    let p = common::param(&rec, "ECSExec");
    assert_eq!(p.drift_since.as_deref(), Some(since.as_str()));
    assert_ne!(ecs_exec(r.last().expect("report")), Some(Phase::Unknown));
}

#[tokio::test(start_paused = true)]
async fn a_secret_in_the_params_file_is_refused_and_never_shown() {
    let secret = "hunter2-do-not-show";
    let h = Harness::stack_first(
        &format!("ECSExec: \"Yes\"\nPassword: \"{secret}\"\n"),
        rack_reconciler::rack::sim::SimSettings::default(),
    );
    h.sim.inject_api_errors("DescribeStacks", 1);
    let mut rec = h.reconciler();
    // Unreachable first: the file is not checked yet, so nothing of it is shown.
    let r = rec.reconcile(Trigger::Startup).await;
    assert_eq!(r.result, "error");
    let r = rec.reconcile(Trigger::Timer).await;
    assert_eq!(r.result, "no_params");
    let status = rec.status().get();
    assert!(!status.params_file.valid);
    let error = status.params_file.error.clone().expect("error");
    assert!(error.contains("Password is a secret (NoEcho)"), "{error}");
    let shown = serde_json::to_string(&status).expect("json");
    let file = std::fs::read_to_string(h.dir.path().join("params.status.json")).expect("file");
    let text = rec.metrics().render();
    for place in [&shown, &file, &text] {
        assert!(!place.contains(secret), "a secret is shown");
    }
    assert!(
        text.contains("rack_reconciler_params_file_errors_total{kind=\"secret\"} 1"),
        "{text}"
    );
    assert_eq!(
        h.sim.writes(),
        0,
        "nothing acts on a file that holds a secret"
    );
}
