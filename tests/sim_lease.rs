//! Two controllers on one simulated rack with one lease, on tokio's paused clock: the standby
//! decides as the holder would and writes nothing; when the holder stops renewing, the standby
//! takes over (picking up the holder's stack update from the status file) and finishes the
//! change; the old holder, waking up, is refused by the fence.

use crate::common;

use std::time::Duration;

use common::{drive, param, Harness};
use rack_reconciler::lease::Timing;
use rack_reconciler::plan::Phase;
use rack_reconciler::rack::sim::SimSettings;
use rack_reconciler::reconcile::Trigger;

#[tokio::test(start_paused = true)]
async fn the_standby_writes_nothing_then_takes_over_and_the_old_holder_is_fenced() {
    let h = Harness::stack_first("ECSExec: \"No\"\n", SimSettings::default());
    let timing = Timing::for_duration(Duration::from_secs(30));
    let (la, lb) = common::two_leases(timing).await;
    let (mut a, mut b) = (h.leased(&la), h.leased(&lb));

    h.write_params("ECSExec: \"Yes\"\n");
    b.reconcile(Trigger::ParamsChanged).await;
    let standing_by = param(&b, "ECSExec");
    assert_eq!(
        (standing_by.phase, standing_by.reason.as_str()),
        (Phase::Waiting, "Standby")
    );
    assert!(
        standing_by.message.contains("a (fence 1)"),
        "{standing_by:?}"
    );
    assert_eq!(h.sim.writes(), 0, "the standby wrote");
    assert_eq!(b.status().get().lease.map(|l| l.leader), Some(false));

    a.reconcile(Trigger::ParamsChanged).await;
    assert_eq!(h.sim.writes(), 1, "the holder makes the one stack update");

    // a stops renewing (a paused process); b looks every `retry` and takes over within the
    // lease duration and one look of a's last renewal (on tokio's paused clock).
    la.tick().await.expect("a renews");
    let last_renewal = tokio::time::Instant::now();
    while !lb.is_leader() {
        tokio::time::sleep(timing.retry).await;
        lb.tick().await.expect("b");
    }
    let took = tokio::time::Instant::now() - last_renewal;
    assert!(
        took >= timing.duration && took <= timing.duration + 2 * timing.retry,
        "took over after {took:?}"
    );
    let reports = drive(&mut b, 300, |r| {
        r.phases.get("ECSExec") == Some(&Phase::Converged)
    })
    .await;
    assert_eq!(
        reports.last().and_then(|r| r.phases.get("ECSExec")),
        Some(&Phase::Converged),
        "{:?}",
        param(&b, "ECSExec")
    );
    assert_eq!(
        h.sim.stack_updates().len(),
        1,
        "b followed a's update, no second one"
    );

    // a wakes with a change to make: it finds its lease lapsed, looks again, writes nothing.
    h.write_params("ECSExec: \"No\"\n");
    let writes = h.sim.writes();
    a.reconcile(Trigger::ParamsChanged).await;
    assert_eq!(h.sim.writes(), writes, "the old holder wrote");
    let fenced = param(&a, "ECSExec");
    assert_eq!(fenced.reason, "Standby", "{fenced:?}");
    assert!(fenced.message.contains("b (fence 2)"), "{fenced:?}");
}
