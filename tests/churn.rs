//! Bounded work under churn: an editor rewriting the params file every 100 ms with
//! alternating values for a minute. On tokio's paused clock, through the loop's own `run`.

use crate::common;

use std::time::Duration;

use common::Harness;
use rack_reconciler::reconcile::Trigger;
use tokio::sync::{mpsc, watch};

/// Reconciles start at least `intervals.min_reconcile` (1s) apart: at most 61 in a minute.
const MAX_RECONCILES: f64 = 61.0;
/// A service is written to at most once per `intervals.min_write` (10s): 7 `UpdateService`
/// in a minute, plus the two relabelled revisions (Yes, and an explicit No), registered once.
const MAX_WRITES: u64 = 9;

#[tokio::test(start_paused = true)]
async fn six_hundred_flapping_edits_in_a_minute_cause_bounded_reconciles_and_writes() {
    let h = Harness::new("ECSExec: \"No\"\n");
    let rec = h.reconciler();
    let metrics = rec.metrics();
    let (tx, rx) = mpsc::channel(1);
    let (stop, shutdown) = watch::channel(false);
    let loop_task = tokio::spawn(rec.run(rx, shutdown));

    for i in 0..600 {
        let value = if i % 2 == 0 { "Yes" } else { "No" };
        h.write_params(&format!("ECSExec: \"{value}\"\n"));
        // The watcher's trigger; a full channel means one is already pending.
        let _ = tx.try_send(Trigger::ParamsChanged);
        common::let_pass(Duration::from_millis(100)).await;
    }
    stop.send(true).expect("stop");
    loop_task.await.expect("loop");

    let text = metrics.render();
    let reconciles: f64 = text
        .lines()
        .filter(|l| l.starts_with("rack_reconciler_reconcile_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        reconciles >= 60.0,
        "the loop kept up: {reconciles} reconciles"
    );
    assert!(
        reconciles <= MAX_RECONCILES,
        "{reconciles} reconciles in a minute"
    );
    let writes = h.sim.writes();
    assert!(writes >= 2, "it did act: {writes} writes");
    assert!(
        writes <= MAX_WRITES,
        "{writes} writes in a minute: {:?}",
        h.sim.updates()
    );
    let updates = h.sim.updates();
    assert!(updates.len() >= 2, "{updates:?}");
    for pair in updates.windows(2) {
        assert!(
            pair[1].at - pair[0].at >= Duration::from_secs(10),
            "{updates:?}"
        );
    }
}
