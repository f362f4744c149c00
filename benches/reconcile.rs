//! Benchmarks: speed, AWS API calls and memory of the reconcile loop on the simulated rack.
//!
//! `cargo bench --bench reconcile`. Prints one table; asserts nothing about time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rack_reconciler::exec::discover::Discovery;
use rack_reconciler::metrics::Metrics;
use rack_reconciler::model::{ServiceTarget, ECS_EXEC};
use rack_reconciler::plan::{self, PlanContext};
use rack_reconciler::rack::sim::{SimRack, SimSettings};
use rack_reconciler::reconcile::{Reconciler, Settings, Trigger};
use rack_reconciler::status::StatusHandle;
use rack_reconciler::templates::TemplateSource;

const OPERATIONS: &[&str] = &[
    "DescribeStacks",
    "ListStackResources",
    "DescribeServices",
    "ListTasks",
    "DescribeTasks",
    "DescribeTaskDefinition",
    "ListTaskDefinitions",
    "RegisterTaskDefinition",
    "UpdateService",
];

fn settings(params: &std::path::Path) -> Settings {
    Settings {
        targets: ServiceTarget::rack_api(),
        cluster_resource: "Cluster".into(),
        params_file: rack_reconciler::store::Location::File(params.to_path_buf()),
        status_file: None,
        resync: Duration::from_secs(60),
        poll: Duration::from_secs(5),
        jitter: 0.1,
        rollout_timeout: Duration::from_secs(1800),
        min_reconcile: Duration::from_secs(1),
        min_write: Duration::from_secs(10),
        failed_tasks_threshold: 3,
        reconcile_timeout: Duration::from_secs(120),
        backoff_min: Duration::from_secs(30),
        backoff_max: Duration::from_secs(900),
        max_corrections_per_hour: 3,
        templates: TemplateSource::default(),
        methods: Default::default(),
        stack_role: None,
    }
}

fn setup(dir: &std::path::Path, desired: &str) -> (Arc<SimRack>, Reconciler) {
    let params = dir.join("params.yaml");
    std::fs::write(&params, format!("ECSExec: \"{desired}\"\n")).expect("params");
    let sim = Arc::new(SimRack::new(SimSettings {
        // The relabel path: the release whose template predates ECSExec.
        version: "20260418101514".into(),
        rack: "convox".into(),
        region: "us-east-1".into(),
        ..SimSettings::default()
    }));
    let metrics = Metrics::new();
    sim.set_metrics(metrics.clone());
    let rec = Reconciler::new(
        sim.clone(),
        settings(&params),
        metrics,
        StatusHandle::default(),
    );
    (sim, rec)
}

fn calls(sim: &SimRack) -> Vec<(&'static str, u64)> {
    OPERATIONS
        .iter()
        .map(|op| (*op, sim.calls(op)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

fn main() {
    // `cargo bench` passes --bench; test runners that list or run every target (`cargo test
    // --all-targets`, nextest's `--list`) do not, and get nothing to run.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");

    // 1. A full No → Yes rollout, on a paused clock: calls, writes and simulated time.
    let paused = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    paused.block_on(async {
        let (sim, mut rec) = setup(dir.path(), "Yes");
        let start = tokio::time::Instant::now();
        let mut runs = 0;
        loop {
            let r = rec.reconcile(Trigger::Timer).await;
            runs += 1;
            if r.is_final() || runs > 1000 {
                break;
            }
            tokio::time::sleep(r.next).await;
        }
        println!("converge No→Yes (simulated rack, 2 services):");
        println!("  reconciles             {runs}");
        println!(
            "  simulated time         {:?}",
            tokio::time::Instant::now() - start
        );
        println!("  writes                 {}", sim.writes());
        for (op, n) in calls(&sim) {
            println!("  calls {op:<22} {n}");
        }
    });

    // 2. Steady state: a converged rack, reconciled back to back on the real clock.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (sim, mut rec) = setup(dir.path(), "No");
        rec.reconcile(Trigger::Startup).await;
        let before = calls(&sim);
        let n = 5_000;
        let t = Instant::now();
        for _ in 0..n {
            rec.reconcile(Trigger::Timer).await;
        }
        let per = t.elapsed() / n;
        let after = calls(&sim);
        println!("steady state (converged, {n} reconciles):");
        println!("  time per reconcile     {per:?}");
        for ((op, a), (_, b)) in after.iter().zip(before.iter()) {
            println!(
                "  calls {op:<22} {:.2} per reconcile",
                (a - b) as f64 / f64::from(n)
            );
        }

        // 3. Memory: RSS growth over many reconciles (a leak shows here).
        let rss0 = rss_kib();
        for _ in 0..20_000 {
            rec.reconcile(Trigger::Timer).await;
        }
        let rss1 = rss_kib();
        println!("memory:");
        println!("  RSS after warm-up      {rss0} KiB");
        println!(
            "  RSS after 20k more     {rss1} KiB ({:+} KiB)",
            rss1 as i64 - rss0 as i64
        );

        // 4. The pure planner alone.
        let observed = rec.observe().await.expect("observe");
        let ctx = PlanContext {
            now: std::time::SystemTime::now(),
            rollout_timeout: Duration::from_secs(1800),
            last_converged: None,
            corrections_last_hour: 0,
            max_corrections_per_hour: 3,
            retry_not_before: None,
            writes_not_before: Default::default(),
            rolled_to: Default::default(),
            failed_tasks_threshold: 3,
            last_failure: None,
            own_rollouts: Default::default(),
        };
        let n = 200_000u32;
        let t = Instant::now();
        let mut converged = 0;
        for _ in 0..n {
            let d = plan::plan(&ECS_EXEC, std::hint::black_box("No"), &observed, &ctx);
            converged += usize::from(d.phase == plan::Phase::Converged);
        }
        println!("planner:");
        println!(
            "  time per decision      {:?} ({converged} converged)",
            t.elapsed() / n
        );
    });

    // 5. Exec readiness of a rack with 200 apps of 3 services with 3 tasks each.
    rt.block_on(exec_readiness(200));
}

/// Calls per look against the batching minimum, and the time a look takes.
async fn exec_readiness(apps: usize) {
    let sim = SimRack::new(SimSettings {
        rack: "convox".into(),
        region: "us-east-1".into(),
        apps,
        initial_ecs_exec: Some("Yes".into()),
        ..SimSettings::default()
    });
    let total = |sim: &SimRack| -> u64 {
        rack_reconciler::exec::source::OPERATIONS
            .iter()
            .map(|op| sim.calls(op))
            .sum()
    };
    let mut discovery = Discovery::default();
    let t = Instant::now();
    let r = discovery
        .run(&sim, "convox", None, std::time::SystemTime::now())
        .await
        .expect("look");
    let first_time = t.elapsed();
    let first = total(&sim);
    let (services, tasks) = (apps * 3, r.verdicts.len());
    // One listing page per 100 stacks (the rack's own and each service's nested stack among
    // them), DescribeServices per 10,
    // ListTasks and DescribeTasks per 100, one DescribeContainerInstances per 100 instances
    // (the generated rack has one), one role check per app role; the first look also reads
    // each task definition once.
    let steady_min =
        (apps + 1).div_ceil(100) + services.div_ceil(10) + 2 * tasks.div_ceil(100) + 1 + apps;
    let first_min = steady_min + services;
    let n = 20u32;
    let t = Instant::now();
    for _ in 0..n {
        discovery
            .run(&sim, "convox", None, std::time::SystemTime::now())
            .await
            .expect("look");
    }
    let per = t.elapsed() / n;
    let steady = (total(&sim) - first) / u64::from(n);
    let pct = |calls: u64, min: usize| 100.0 * (calls as f64 - min as f64) / min as f64;
    println!("exec readiness ({apps} apps x 3 services x 3 tasks = {tasks} tasks):");
    println!(
        "  first look             {first} calls (batching minimum {first_min}, {:+.1}%), {first_time:?}",
        pct(first, first_min)
    );
    println!(
        "  each later look        {steady} calls (batching minimum {steady_min}, {:+.1}%), {per:?}",
        pct(steady, steady_min)
    );
}
