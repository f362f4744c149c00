//! What observing and changing the rack costs in AWS calls, on the simulated rack (tokio's
//! paused clock), whose counts are the calls the AWS adapter makes for the same work, at the
//! shipped default intervals.

use crate::common;

use std::time::Duration;

use common::{ecs_exec, let_pass, run_for, Harness};
use rack_reconciler::config::Intervals;
use rack_reconciler::plan::Phase;
use rack_reconciler::rack::sim::{Calls, SimRack, SimSettings};
use rack_reconciler::reconcile::{Reconciler, Report, Settings, Trigger};

fn calls(pairs: &[(&'static str, u64)]) -> Calls {
    pairs.iter().copied().collect()
}

/// The harness's settings with the shipped default intervals.
fn defaults(h: &Harness) -> Settings {
    let i = Intervals::default();
    Settings {
        resync: i.resync,
        poll: i.poll,
        jitter: i.jitter,
        min_reconcile: i.min_reconcile,
        min_write: i.min_write,
        ..h.settings()
    }
}

/// A controller that has looked once at a rack converged on `ECSExec=No`.
async fn warmed(h: &Harness) -> Reconciler {
    let mut rec = h.reconciler_with(defaults(h));
    let r = rec.reconcile(Trigger::Startup).await;
    assert_eq!(ecs_exec(&r), Some(Phase::Converged));
    rec
}

/// One change followed to its end, look by look: the calls of each look, and when each look
/// ran (paused-clock seconds since the change).
struct Change {
    looks: Vec<(Duration, Calls, Report)>,
}

impl Change {
    fn total(&self) -> Calls {
        let mut total = Calls::new();
        for (_, c, _) in &self.looks {
            for (op, n) in c {
                *total.entry(op).or_default() += n;
            }
        }
        total
    }

    /// Everything but the reads of the looks (the services at every one, the stack at all
    /// but the light ones).
    fn beyond_looks(&self) -> Calls {
        let mut total = self.total();
        let looks = self.looks.len() as u64;
        assert_eq!(total.remove("DescribeServices"), Some(looks));
        assert!(total.remove("DescribeStacks").is_some_and(|n| n <= looks));
        total
    }
}

/// Edits the params file and looks, as the loop paces it, until `ECSExec` converges.
async fn change_to(h: &Harness, rec: &mut Reconciler, value: &str) -> Change {
    h.write_params(&format!("ECSExec: \"{value}\"\n"));
    let start = tokio::time::Instant::now();
    let mut looks = Vec::new();
    let mut trigger = Trigger::ParamsChanged;
    for _ in 0..500 {
        let before = h.sim.call_counts();
        let r = rec.reconcile(trigger).await;
        trigger = Trigger::Timer;
        let (next, done) = (r.next, ecs_exec(&r) == Some(Phase::Converged));
        looks.push((start.elapsed(), h.sim.calls_since(&before), r));
        if done {
            return Change { looks };
        }
        let_pass(next).await;
    }
    panic!("ECSExec did not converge");
}

#[tokio::test(start_paused = true)]
async fn a_converged_rack_costs_two_calls_a_resync_and_under_30_an_hour() {
    let h = Harness::new("ECSExec: \"No\"\n");
    let mut rec = warmed(&h).await;
    let before = h.sim.call_counts();
    let reports = run_for(&mut rec, Duration::from_secs(3600)).await;
    let runs = reports.len() as u64;
    assert!(reports.iter().all(|r| r.next >= Duration::from_secs(270)));
    assert_eq!(
        h.sim.calls_since(&before),
        calls(&[("DescribeStacks", runs), ("DescribeServices", runs)]),
        "nothing but the stack and the services"
    );
    assert!(2 * runs <= 30, "{} calls in an hour", 2 * runs);

    // Drift is still seen at the next resync: the stack puts another label on the web
    // service, and the first look after it acts.
    h.sim
        .revert_label_out_of_band("ServiceWebApi", "rack.ECSExec", Some("Yes"));
    let changed = tokio::time::Instant::now();
    let mut reports = Vec::new();
    while reports.is_empty() || !reports.iter().any(|r: &Report| r.acted) {
        let r = rec.reconcile(Trigger::Timer).await;
        let next = r.next;
        reports.push(r);
        let_pass(next).await;
    }
    assert!(
        changed.elapsed() <= Duration::from_secs(330 + 60),
        "drift seen within one resync: {:?}",
        changed.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_relabel_costs_five_calls_per_service_beyond_its_looks() {
    let h = Harness::new("ECSExec: \"No\"\n");
    let mut rec = warmed(&h).await;
    let change = change_to(&h, &mut rec, "Yes").await;
    // Per service: the family's revisions listed (a copy of the running revision is reused,
    // not registered twice), the copy registered (the response proves it; nothing described),
    // the service pointed at it, and its tasks read once at the end.
    assert_eq!(
        change.beyond_looks(),
        calls(&[
            ("ListTaskDefinitions", 2),
            ("RegisterTaskDefinition", 2),
            ("UpdateService", 2),
            ("ListTasks", 2),
            ("DescribeTasks", 2),
        ])
    );
    // Every look that wrote nothing, before the last, is a light poll: the services alone
    // (the rollouts are the controller's, on a settled stack). The looks that write, and the
    // last, which says the change converged, read the stack first; the tasks are listed in
    // the looks that see a rollout end (which roll the monitor next, or end the change).
    let (last, before_last) = change.looks.split_last().expect("looks");
    let polls: Vec<_> = before_last.iter().filter(|(_, _, r)| !r.acted).collect();
    for (at, c, _) in &polls {
        assert_eq!(*c, calls(&[("DescribeServices", 1)]), "look at {at:?}");
    }
    assert!(polls.len() >= 5, "{} polls", polls.len());
    for (at, c, r) in change.looks.iter().filter(|(_, _, r)| r.acted) {
        assert_eq!(
            c.get("DescribeStacks"),
            Some(&1),
            "the write at {at:?} read the stack: {r:?}"
        );
    }
    assert!(
        last.1.contains_key("ListTasks") && last.1.contains_key("DescribeStacks"),
        "the end is proven by a listing and the stack read again: {:?}",
        last.1
    );
}

/// A controller whose change of `ECSExec` to `Yes` rolls the web service, after its first
/// light poll (the services alone): that poll's report.
async fn polling_lightly(h: &Harness) -> (Reconciler, Report) {
    let mut rec = warmed(h).await;
    h.write_params("ECSExec: \"Yes\"\n");
    let r = rec.reconcile(Trigger::ParamsChanged).await;
    assert!(r.acted, "the web service rolled");
    let_pass(r.next).await;
    let before = h.sim.call_counts();
    let r = rec.reconcile(Trigger::Timer).await;
    assert_eq!(
        h.sim.calls_since(&before),
        calls(&[("DescribeServices", 1)])
    );
    (rec, r)
}

#[tokio::test(start_paused = true)]
async fn a_light_poll_claims_and_writes_nothing_the_stack_has_not_confirmed() {
    let h = Harness::new("ECSExec: \"No\"\n");
    let (mut rec, r) = polling_lightly(&h).await;
    // Someone starts a stack update while the web service rolls; the light polls do not
    // see it, but the look that sees the rollout end reads the stack before it rolls the
    // monitor or says anything new.
    h.sim
        .set_stack_status("UPDATE_IN_PROGRESS", Some(Duration::from_secs(120)));
    let updating = tokio::time::Instant::now();
    let mut next = r.next;
    let mut ended = None;
    while updating.elapsed() + next < Duration::from_secs(110) {
        let_pass(next).await;
        let before = h.sim.call_counts();
        let r = rec.reconcile(Trigger::Timer).await;
        let c = h.sim.calls_since(&before);
        assert!(
            !r.acted,
            "nothing written while someone updates the stack: {c:?}"
        );
        assert_ne!(ecs_exec(&r), Some(Phase::Converged));
        if c.contains_key("ListTasks") && ended.is_none() {
            assert!(
                c.contains_key("DescribeStacks"),
                "the end seen with the stack read: {c:?}"
            );
            ended = Some(ecs_exec(&r));
        }
        next = r.next;
    }
    assert_eq!(
        ended,
        Some(Some(Phase::Waiting)),
        "waits for the stack update"
    );
    assert_eq!(h.sim.updates().len(), 1, "the monitor waits");
}

#[tokio::test(start_paused = true)]
async fn a_params_file_that_says_something_new_is_never_looked_at_lightly() {
    let h = Harness::new("ECSExec: \"No\"\n");
    let (mut rec, r) = polling_lightly(&h).await;
    // The file changes and the next run on a timer reads it (as a poll of an S3 object
    // does): it is held against the stack as it is now, read in the same look.
    h.write_params("ECSExec: \"No\"\n");
    let_pass(r.next).await;
    let before = h.sim.call_counts();
    rec.reconcile(Trigger::Timer).await;
    let c = h.sim.calls_since(&before);
    assert_eq!(c.get("DescribeStacks"), Some(&1), "{c:?}");
}

#[tokio::test(start_paused = true)]
async fn a_stack_update_costs_at_most_five_calls_per_service_beyond_its_looks() {
    let h = Harness::stack_first("ECSExec: \"No\"\n", SimSettings::default());
    let mut rec = warmed(&h).await;
    let change = change_to(&h, &mut rec, "Yes").await;
    // One UpdateStack for both services; where the services are (`DescribeStackResource`
    // for each) read again once it has settled (not its template: a params file of
    // ECSExec alone needs only the stack's parameter names); the revisions
    // CloudFormation registered described once each; each service's tasks listed once at the
    // end (both end together: one DescribeTasks); whose the update is read once from the
    // stack's events while it runs. 5 a service.
    assert_eq!(
        change.beyond_looks(),
        calls(&[
            ("UpdateStack", 1),
            ("DescribeStackEvents", 1),
            ("DescribeStackResource", 2),
            ("DescribeTaskDefinition", 2),
            ("ListTasks", 2),
            ("DescribeTasks", 1),
        ])
    );
    // While CloudFormation updates the stack, every look reads it.
    let stack_reads = change.total().get("DescribeStacks").copied();
    assert_eq!(stack_reads, Some(change.looks.len() as u64));
}

#[tokio::test(start_paused = true)]
async fn polls_follow_the_rollout_and_see_its_end_within_two_seconds() {
    let h = Harness::new("ECSExec: \"No\"\n");
    let mut rec = warmed(&h).await;
    h.write_params("ECSExec: \"Yes\"\n");
    let settled = |sim: &SimRack| {
        sim.updates().len() == 2
            && ["ServiceWebApi", "ServiceMonitorApi"].iter().all(|s| {
                sim.service_snapshot(s)
                    .is_some_and(|x| x.deployments.len() == 1 && !x.rolling())
            })
    };
    let mut trigger = Trigger::ParamsChanged;
    let mut settled_at = None;
    let mut gaps = Vec::new();
    loop {
        let r = rec.reconcile(trigger).await;
        trigger = Trigger::Timer;
        if ecs_exec(&r) == Some(Phase::Converged) {
            let since_end = settled_at.map(|t: tokio::time::Instant| t.elapsed());
            assert!(
                since_end.is_some_and(|d| d <= Duration::from_secs(2)),
                "the end seen {since_end:?} after it"
            );
            break;
        }
        gaps.push(r.next);
        // Step through the pause in tenths of a second to see when the rollouts end.
        let wake = tokio::time::Instant::now() + r.next;
        while tokio::time::Instant::now() < wake {
            let_pass(Duration::from_millis(100)).await;
            if settled_at.is_none() && settled(&h.sim) {
                settled_at = Some(tokio::time::Instant::now());
            }
        }
    }
    assert!(
        gaps.iter().all(|g| *g >= Duration::from_secs(1)),
        "never more than one poll a second: {gaps:?}"
    );
    // The second rollout is paced by what the first showed: no poll before its first task
    // can be running.
    assert!(gaps.iter().any(|g| *g > Duration::from_secs(2)), "{gaps:?}");
}

/// A cold `apply` of `ECSExec=Yes` (a new process: nothing cached, nothing written down) on
/// a rack whose API services are `targets`: every call to the end, and the looks it made
/// (each reads the services once).
async fn cold_apply(h: &Harness, web_only: bool) -> (Calls, u64) {
    let mut s = defaults(h);
    if web_only {
        s.targets.truncate(1);
    }
    let mut rec = h.reconciler_with(s);
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let before = h.sim.call_counts();
    let report = rec.apply(stopped, 5).await;
    assert_eq!(ecs_exec(&report), Some(Phase::Converged));
    let mut all = h.sim.calls_since(&before);
    all.retain(|_, n| *n > 0);
    let looks = all.get("DescribeServices").copied().unwrap_or(0);
    (all, looks)
}

/// Everything but the services read at every look.
fn beyond(mut all: Calls) -> Calls {
    all.remove("DescribeServices");
    all
}

#[tokio::test(start_paused = true)]
async fn a_cold_apply_reads_only_what_its_decision_needs() {
    // The relabel path, the web service alone, its new tasks starting at once: the stack,
    // where the web service is (the cluster is the stack's `Cluster` output), the service
    // and its running revision; the family's revisions listed (a copy is reused, not
    // registered twice), the copy registered, the service pointed at it. A second later the
    // rollout has ended: the services, the tasks listed to prove every task runs the copy,
    // and the stack read again before saying so. Not read: the tasks before the roll (the
    // service is to change whatever they run), the template (the stack's parameter names
    // say it does not declare ECSExec). 11 calls.
    let at_once = SimSettings {
        task_start: Duration::ZERO,
        ..SimSettings::default()
    };
    let h = Harness::with_sim("ECSExec: \"Yes\"\n", at_once);
    let (all, looks) = cold_apply(&h, true).await;
    let first = [
        ("DescribeStacks", 1),
        ("DescribeStackResource", 1),
        ("DescribeServices", 1),
        ("DescribeTaskDefinition", 1),
        ("ListTaskDefinitions", 1),
        ("RegisterTaskDefinition", 1),
        ("UpdateService", 1),
    ];
    let last = [
        ("DescribeServices", 1),
        ("ListTasks", 1),
        ("DescribeTasks", 1),
        ("DescribeStacks", 1),
    ];
    let mut want = calls(&first);
    for (op, n) in last {
        *want.entry(op).or_default() += n;
    }
    assert_eq!(all, want);
    assert_eq!((looks, all.values().sum::<u64>()), (2, 11));

    // Tasks that start in 20 s: the same, and in between 10 light polls (the services
    // alone) that see the end within 2 s; the stack is read by the first look and the last.
    let h = Harness::new("ECSExec: \"Yes\"\n");
    let (all, looks) = cold_apply(&h, true).await;
    assert_eq!(
        beyond(all),
        calls(&[
            ("DescribeStacks", 2),
            ("DescribeStackResource", 1),
            ("DescribeTaskDefinition", 1),
            ("ListTaskDefinitions", 1),
            ("RegisterTaskDefinition", 1),
            ("UpdateService", 1),
            ("ListTasks", 1),
            ("DescribeTasks", 1),
        ])
    );
    assert_eq!(looks, 12);

    // Both services, one after the other: the same per service; the stack read again
    // before the monitor is rolled.
    let h = Harness::new("ECSExec: \"Yes\"\n");
    let (all, looks) = cold_apply(&h, false).await;
    assert_eq!(
        beyond(all),
        calls(&[
            ("DescribeStacks", 3),
            ("DescribeStackResource", 2),
            ("DescribeTaskDefinition", 2),
            ("ListTaskDefinitions", 2),
            ("RegisterTaskDefinition", 2),
            ("UpdateService", 2),
            ("ListTasks", 2),
            ("DescribeTasks", 2),
        ])
    );
    assert_eq!(looks, 18);

    // The stack path: one UpdateStack; whose the update is, read once from its events; the
    // services located again and the revisions CloudFormation registered once it has
    // settled; the tasks of both services listed once at the end (one DescribeTasks for
    // both). Every look reads the stack, which CloudFormation is updating.
    let h = Harness::stack_first("ECSExec: \"Yes\"\n", SimSettings::default());
    let (all, looks) = cold_apply(&h, false).await;
    assert_eq!(
        beyond(all),
        calls(&[
            ("DescribeStacks", 25),
            ("DescribeStackResource", 4),
            ("DescribeTaskDefinition", 4),
            ("UpdateStack", 1),
            ("DescribeStackEvents", 1),
            ("ListTasks", 2),
            ("DescribeTasks", 1),
        ])
    );
    assert_eq!(looks, 25);
}
