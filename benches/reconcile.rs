//! Benchmarks: AWS calls, speed and memory of the controller on the simulated rack, whose calls
//! are counted under the AWS operations they stand for (the AWS adapter makes the same).
//!
//! `cargo bench --bench reconcile`. Prints the README's table (markdown); asserts nothing
//! about time. The call counts are asserted by `tests/sim_cost.rs`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rack_reconciler::config::Intervals;
use rack_reconciler::exec::discover::Discovery;
use rack_reconciler::metrics::Metrics;
use rack_reconciler::model::{ServiceTarget, ECS_EXEC};
use rack_reconciler::plan::{self, Phase, PlanContext};
use rack_reconciler::rack::sim::{Calls, SimRack, SimSettings, SIM_ECSEXEC_VERSION};
use rack_reconciler::reconcile::{Reconciler, Settings, Trigger};
use rack_reconciler::status::StatusHandle;
use rack_reconciler::templates::TemplateSource;
use tokio::sync::{mpsc, watch};

/// The public release, whose template does not declare `ECSExec` (the relabel path).
const RELABEL_RELEASE: &str = "20260418101514";

/// The shipped default intervals (and the rest as `config/rack-reconciler.yaml` has them).
fn settings(params: &std::path::Path) -> Settings {
    let i = Intervals::default();
    Settings {
        targets: ServiceTarget::rack_api(),
        cluster_resource: "Cluster".into(),
        params_file: rack_reconciler::store::Location::File(params.to_path_buf()),
        status_file: None,
        history_file: None,
        history: Default::default(),
        resync: i.resync,
        poll: i.poll,
        jitter: i.jitter,
        rollout_timeout: Duration::from_secs(1800),
        min_reconcile: i.min_reconcile,
        min_write: i.min_write,
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

struct Setup {
    sim: Arc<SimRack>,
    rec: Reconciler,
    params: std::path::PathBuf,
}

fn setup(dir: &std::path::Path, version: &str, sim: SimSettings, tune: fn(&mut Settings)) -> Setup {
    let params = dir.join(format!("params-{}.yaml", fastrand::u64(..)));
    std::fs::write(&params, "ECSExec: \"No\"\n").expect("params");
    let sim = Arc::new(SimRack::new(SimSettings {
        version: version.into(),
        rack: "convox".into(),
        region: "us-east-1".into(),
        ..sim
    }));
    let metrics = Metrics::new();
    sim.set_metrics(metrics.clone());
    let mut s = settings(&params);
    tune(&mut s);
    let rec = Reconciler::new(sim.clone(), s, metrics, StatusHandle::default());
    Setup { sim, rec, params }
}

fn total(c: &Calls) -> u64 {
    c.values().sum()
}

fn list(c: &Calls) -> String {
    c.iter()
        .map(|(op, n)| format!("{n} `{op}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn ecs_exec(r: &rack_reconciler::reconcile::Report) -> Option<Phase> {
    r.phases.get("ECSExec").copied()
}

/// One No→Yes change on a warmed controller, on tokio's paused clock: the calls beyond the
/// two reads of every look, and the polls (looks that wrote nothing, before convergence):
/// how many, and how many of them made only the two reads.
struct ChangeCost {
    /// Every call of the change, the looks' included.
    all: Calls,
    beyond: Calls,
    looks: u64,
    polls: u64,
    /// Polls that read the services alone (light), and the services and the stack alone.
    light_polls: u64,
    bare_polls: u64,
    simulated: Duration,
    /// Events recorded, and writes of the history.
    events: usize,
    history_writes: u64,
}

async fn change_cost(version: &str, tune: fn(&mut Settings)) -> ChangeCost {
    let dir = tempfile::tempdir().expect("tempdir");
    let Setup {
        sim,
        mut rec,
        params,
    } = setup(dir.path(), version, SimSettings::default(), tune);
    rec.reconcile(Trigger::Startup).await;
    std::fs::write(&params, "ECSExec: \"Yes\"\n").expect("params");
    let start = tokio::time::Instant::now();
    let before = sim.call_counts();
    let (mut looks, mut polls, mut light_polls, mut bare_polls) = (0, 0, 0, 0);
    let mut trigger = Trigger::ParamsChanged;
    loop {
        let b = sim.call_counts();
        let r = rec.reconcile(trigger).await;
        trigger = Trigger::Timer;
        looks += 1;
        let c = sim.calls_since(&b);
        if !r.acted && ecs_exec(&r) != Some(Phase::Converged) {
            polls += 1;
            let only = |ops: &[&str]| {
                total(&c) == ops.len() as u64 && ops.iter().all(|o| c.get(o) == Some(&1))
            };
            light_polls += u64::from(only(&["DescribeServices"]));
            bare_polls += u64::from(only(&["DescribeServices", "DescribeStacks"]));
        }
        if ecs_exec(&r) == Some(Phase::Converged) || looks > 1000 {
            break;
        }
        tokio::time::sleep(r.next).await;
    }
    let mut beyond = sim.calls_since(&before);
    // Every look reads the services; all but the light ones the stack.
    beyond.remove("DescribeStacks");
    if let Some(n) = beyond.get_mut("DescribeServices") {
        *n -= looks;
    }
    beyond.retain(|_, n| *n > 0);
    let journal = rec.journal();
    let journal = journal.lock().await;
    ChangeCost {
        all: sim.calls_since(&before),
        beyond,
        looks,
        polls,
        light_polls,
        bare_polls,
        simulated: start.elapsed(),
        events: journal.len(),
        history_writes: journal.writes(),
    }
}

/// The status document and the history next to the params file (as `status_file: true`).
fn with_history(s: &mut Settings) {
    if let rack_reconciler::store::Location::File(p) = &s.params_file {
        let at = rack_reconciler::store::Location::File(p.clone());
        s.status_file = Some(at.status());
        s.history_file = Some(at.history());
    }
}

/// In a process of its own (`--history-rss N`): the loop flipping `ECSExec` whenever it has
/// converged, with the status document and the history kept, for `n` reconciles on a paused
/// clock; then the events recorded, the history's size, and the process's peak RSS.
fn history_rss(n: u64) {
    paused().block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let Setup {
            mut rec, params, ..
        } = setup(
            dir.path(),
            RELABEL_RELEASE,
            SimSettings::default(),
            with_history,
        );
        let mut value = "No";
        let mut trigger = Trigger::Startup;
        for _ in 0..n {
            let r = rec.reconcile(trigger).await;
            trigger = Trigger::Timer;
            if ecs_exec(&r) == Some(Phase::Converged) {
                value = if value == "No" { "Yes" } else { "No" };
                std::fs::write(&params, format!("ECSExec: \"{value}\"\n")).expect("params");
                trigger = Trigger::ParamsChanged;
            }
            tokio::time::sleep(r.next.min(Duration::from_secs(5))).await;
        }
        let events = rec
            .metrics()
            .render()
            .lines()
            .filter(|l| l.starts_with("rack_reconciler_events_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
        let journal = rec.journal();
        let journal = journal.lock().await;
        println!(
            "{} {} {} {}",
            events as u64,
            journal.bytes(),
            journal.writes(),
            peak_rss_kib()
        );
    });
}

fn history_rss_in_child(n: u64) -> [u64; 4] {
    let out = in_child("--history-rss", n);
    [0, 1, 2, 3].map(|i| out.get(i).copied().unwrap_or(0))
}

/// A cold `apply` of `ECSExec=Yes` on a fresh controller (nothing cached, nothing written
/// down), to the end, with new tasks that start in `task_start`: every call, and the looks
/// it made. `web_only`: the web service alone is managed (`services` in the config).
async fn cold_apply(version: &str, web_only: bool, task_start: Duration) -> (Calls, usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = SimSettings {
        task_start,
        ..SimSettings::default()
    };
    let Setup {
        sim,
        mut rec,
        params,
    } = setup(dir.path(), version, sim, |s| {
        s.status_file = None;
    });
    if web_only {
        // Rebuilt with the web service alone.
        let mut s = settings(&params);
        s.targets.truncate(1);
        let metrics = Metrics::new();
        sim.set_metrics(metrics.clone());
        rec = Reconciler::new(sim.clone(), s, metrics, StatusHandle::default());
    }
    std::fs::write(&params, "ECSExec: \"Yes\"\n").expect("params");
    let before = sim.call_counts();
    let mut looks = 0;
    let mut trigger = Trigger::Startup;
    loop {
        let r = rec.reconcile(trigger).await;
        trigger = Trigger::Timer;
        looks += 1;
        if r.is_final() || looks > 1000 {
            break;
        }
        tokio::time::sleep(r.next).await;
    }
    let mut calls = sim.calls_since(&before);
    calls.retain(|_, n| *n > 0);
    (calls, looks)
}

/// The peak RSS (KiB) of the release binary running `args` on the simulated rack with
/// `sim` settings: sampled from `/proc` until it exits, or stopped (SIGTERM) after `stop`.
fn binary_rss(args: &[&str], sim: &str, params: &str, stop: Option<Duration>) -> u64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let config = dir.path().join("rack-reconciler.yaml");
    std::fs::write(
        &config,
        format!(
            "backend: sim\nrack: convox\nparams_file: params.yaml\nlisten: 127.0.0.1:{port}\n\
             intervals:\n  exec_check: 2s\nsim:\n{sim}"
        ),
    )
    .expect("config");
    std::fs::write(dir.path().join("params.yaml"), params).expect("params");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rack-reconciler"))
        .arg("--config")
        .arg(&config)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run the binary");
    let status = format!("/proc/{}/status", child.id());
    let started = Instant::now();
    let mut peak = 0;
    loop {
        if let Ok(text) = std::fs::read_to_string(&status) {
            let hwm = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok());
            peak = peak.max(hwm.unwrap_or(0));
        }
        if matches!(child.try_wait(), Ok(Some(_))) {
            break;
        }
        if stop.is_some_and(|d| started.elapsed() >= d) {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    peak
}

/// Calls in one idle hour of a converged rack at the default intervals (paused clock).
async fn idle_hour() -> (Calls, u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let Setup { sim, mut rec, .. } =
        setup(dir.path(), RELABEL_RELEASE, SimSettings::default(), |_| {});
    rec.reconcile(Trigger::Startup).await;
    let before = sim.call_counts();
    let end = tokio::time::Instant::now() + Duration::from_secs(3600);
    let mut looks = 0;
    while tokio::time::Instant::now() < end {
        let r = rec.reconcile(Trigger::Timer).await;
        looks += 1;
        tokio::time::sleep(r.next).await;
    }
    (sim.calls_since(&before), looks)
}

fn paused() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime")
}

/// Params edit → the first `UpdateService` of the change, on the real clock: the `run` loop
/// with the file watcher (debounce at its default), `ECSExec` flipped 100 times, each edit
/// once the previous change has converged. The write cooldown (`intervals.min_write`, which
/// holds back a second write to a service on purpose) is off, tasks start in 50 ms.
fn edit_to_first_write(edits: usize) -> Vec<Duration> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let sim = SimSettings {
            task_start: Duration::from_millis(50),
            ..SimSettings::default()
        };
        let Setup { sim, rec, params } = setup(dir.path(), RELABEL_RELEASE, sim, |s| {
            s.min_write = Duration::ZERO;
        });
        let status = rec.status();
        let (tx, rx) = mpsc::channel(1);
        let _watcher =
            rack_reconciler::watch::watch_params(&params, Intervals::default().debounce, tx)
                .expect("watch");
        let (stop, stopped) = watch::channel(false);
        let run = tokio::spawn(rec.run(rx, stopped));
        let converged = |want: &str| {
            let s = status.get();
            s.parameter("ECSExec")
                .is_some_and(|p| p.phase == Phase::Converged && p.desired.as_deref() == Some(want))
        };
        while !converged("No") {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut latencies = Vec::with_capacity(edits);
        for i in 0..edits {
            let want = if i % 2 == 0 { "Yes" } else { "No" };
            let updates = sim.updates().len();
            let edited = Instant::now();
            std::fs::write(&params, format!("ECSExec: \"{want}\"\n")).expect("edit");
            let first = loop {
                if let Some(u) = sim.updates().get(updates) {
                    break u.at.into_std();
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            };
            latencies.push(first.saturating_duration_since(edited));
            while !converged(want) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let _ = stop.send(true);
        let _ = run.await;
        latencies
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Peak RSS (`VmHWM`, KiB) of this process.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

/// In a process of its own (the bench re-runs itself with `--run-rss`): the `run` loop on a
/// paused clock until it has made `n` reconciles of a converged rack at the default
/// intervals, then the process's peak RSS.
fn run_rss(n: u64) {
    paused().block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let Setup { sim, rec, .. } =
            setup(dir.path(), RELABEL_RELEASE, SimSettings::default(), |_| {});
        let (_tx, rx) = mpsc::channel(1);
        let (stop, stopped) = watch::channel(false);
        let run = tokio::spawn(rec.run(rx, stopped));
        while sim.calls("DescribeStacks") < n {
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        let _ = stop.send(true);
        let _ = run.await;
        println!("{} {}", sim.calls("DescribeStacks"), peak_rss_kib());
    });
}

fn run_rss_in_child(n: u64) -> (u64, u64) {
    let out = in_child("--run-rss", n);
    (
        out.first().copied().unwrap_or(0),
        out.get(1).copied().unwrap_or(0),
    )
}

/// This benchmark again, in a process of its own, with `flag n`: the numbers it prints.
fn in_child(flag: &str, n: u64) -> Vec<u64> {
    let exe = std::env::current_exe().expect("current exe");
    let out = std::process::Command::new(exe)
        .args(["--bench", flag, &n.to_string()])
        .output()
        .expect("run the measurement in a process of its own");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect()
}

fn main() {
    // `cargo bench` passes --bench; test runners that list or run every target (`cargo test
    // --all-targets`, nextest's `--list`) do not, and get nothing to run.
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--run-rss") {
        let n = args
            .get(i + 1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(10_000);
        return run_rss(n);
    }
    if let Some(i) = args.iter().position(|a| a == "--history-rss") {
        let n = args
            .get(i + 1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(10_000);
        return history_rss(n);
    }
    let mut rows: Vec<(String, String)> = Vec::new();

    // 1. Calls, at the default intervals, on tokio's paused clock.
    let rt = paused();
    for (path, version) in [
        ("relabel", RELABEL_RELEASE),
        ("stack update", SIM_ECSEXEC_VERSION),
    ] {
        let c = rt.block_on(change_cost(version, |_| {}));
        rows.push((
            format!("AWS calls per service change, beyond the looks ({path}, No→Yes, 2 services)"),
            format!(
                "{:.1} ({} in all: {})",
                total(&c.beyond) as f64 / 2.0,
                total(&c.beyond),
                list(&c.beyond)
            ),
        ));
        rows.push((
            format!("AWS calls per poll ({path})"),
            format!(
                "1 (`DescribeServices`) in {} of {} polls, 2 (and `DescribeStacks`) in {}; the \
                 others also made reads of the change counted above ({} looks in {:?} of \
                 rollouts, {} `DescribeStacks` in all)",
                c.light_polls,
                c.polls,
                c.bare_polls,
                c.looks,
                c.simulated,
                c.all.get("DescribeStacks").copied().unwrap_or(0)
            ),
        ));
    }
    // The history costs no AWS call: the same change with it kept makes the same calls.
    let (without, with) = (
        rt.block_on(change_cost(RELABEL_RELEASE, |_| {})),
        rt.block_on(change_cost(RELABEL_RELEASE, with_history)),
    );
    rows.push((
        "AWS calls of a change with the history kept (relabel, No→Yes)".into(),
        format!(
            "{} ({} without it: {}); {} events in {} looks, written {} times (at most once a look, only by looks that recorded one)",
            total(&with.all),
            total(&without.all),
            if with.all == without.all { "the same calls" } else { "DIFFERENT calls" },
            with.events,
            with.looks,
            with.history_writes
        ),
    ));
    let (idle, looks) = rt.block_on(idle_hour());
    rows.push((
        "AWS calls per idle hour (converged, `resync: 5m` ±10%)".into(),
        format!("{} ({looks} looks: {})", total(&idle), list(&idle)),
    ));

    // 1b. A cold `apply` (a new process: nothing cached), by path, with new tasks that start
    // at once (as moto's rollouts in the tests do) and in 20 s.
    for (name, version, web_only, goal) in [
        (
            "relabel, web service only",
            RELABEL_RELEASE,
            true,
            "; goal ≤ 12",
        ),
        (
            "relabel, both services",
            RELABEL_RELEASE,
            false,
            "; goal ≤ 20",
        ),
        (
            "stack update, both services",
            SIM_ECSEXEC_VERSION,
            false,
            "",
        ),
    ] {
        let (fast, fast_looks) = rt.block_on(cold_apply(version, web_only, Duration::ZERO));
        let (calls, looks) = rt.block_on(cold_apply(version, web_only, Duration::from_secs(20)));
        let light =
            looks.saturating_sub(calls.get("DescribeStacks").copied().unwrap_or(0) as usize);
        rows.push((
            format!("AWS calls of a cold `apply` of ECSExec=Yes ({name}{goal})"),
            format!(
                "{} with tasks that start at once ({fast_looks} looks); {} with tasks that start in 20 s ({looks} looks, {light} of them light: `DescribeServices` alone) ({})",
                total(&fast),
                total(&calls),
                list(&calls)
            ),
        ));
    }

    // 2. Edit → first write on the real clock.
    let mut lat = edit_to_first_write(100);
    lat.sort();
    rows.push((
        "params edit → first write (100 edits, real clock, `debounce: 50ms`)".into(),
        format!(
            "p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            percentile(&lat, 0.5).as_secs_f64() * 1e3,
            percentile(&lat, 0.99).as_secs_f64() * 1e3,
            percentile(&lat, 1.0).as_secs_f64() * 1e3
        ),
    ));

    // 3. Memory: the `run` loop's peak RSS after 10,000 reconciles.
    let (reconciles, peak) = run_rss_in_child(10_000);
    rows.push((
        format!("peak RSS of `run` after {reconciles} reconciles (sim, in a process of its own)"),
        format!("{:.1} MiB", peak as f64 / 1024.0),
    ));

    // 3a. Memory of the release binary, per command, on the simulated rack.
    let apply = binary_rss(
        &["apply", "--no-progress"],
        "  version: \"20260418101514\"\n  task_start: 2s\n",
        "ECSExec: \"Yes\"\n",
        None,
    );
    rows.push((
        "peak RSS of `apply` (release binary, relabel path, sim; goal ≤ 16 MiB)".into(),
        format!("{:.1} MiB", apply as f64 / 1024.0),
    ));
    let run = binary_rss(
        &["run"],
        "  apps: 200\n  task_start: 2s\n",
        "ECSExec: \"Yes\"\n",
        Some(Duration::from_secs(30)),
    );
    rows.push((
        "peak RSS of `run` with exec readiness every 2 s on a rack of 200 apps (release binary, sim, 30 s, ECSExec changed; goal ≤ 16 MiB)".into(),
        format!("{:.1} MiB", run as f64 / 1024.0),
    ));

    // 3b. Memory with the history kept: the loop changing ECSExec back and forth.
    let [e1, _, _, rss1] = history_rss_in_child(4_000);
    let [e10, bytes, writes, rss10] = history_rss_in_child(10_000);
    rows.push((
        "peak RSS with the history kept, ECSExec flipped whenever converged (sim, paused clock)".into(),
        format!(
            "{:.1} MiB after 4,000 reconciles ({e1} events), {:.1} MiB after 10,000 ({e10} events, {writes} writes; the history kept: {} KiB, bounded by `history.max_bytes`)",
            rss1 as f64 / 1024.0,
            rss10 as f64 / 1024.0,
            bytes / 1024
        ),
    ));

    // 4. Speed of a converged look and of the planner, on the real clock.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let Setup { mut rec, .. } =
            setup(dir.path(), RELABEL_RELEASE, SimSettings::default(), |_| {});
        rec.reconcile(Trigger::Startup).await;
        let n = 5_000;
        let t = Instant::now();
        for _ in 0..n {
            rec.reconcile(Trigger::Timer).await;
        }
        rows.push((
            "time per reconcile (sim, converged)".into(),
            format!("{:?}", t.elapsed() / n),
        ));
        let observed = rec.observe(false).await.expect("observe");
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
        for _ in 0..n {
            std::hint::black_box(plan::plan(
                &ECS_EXEC,
                std::hint::black_box("No"),
                &observed,
                &ctx,
            ));
        }
        rows.push((
            "time per planner decision".into(),
            format!("{:?}", t.elapsed() / n),
        ));
    });

    // 5. Exec readiness of a rack with 200 apps of 3 services with 3 tasks each.
    rows.push(rt.block_on(exec_readiness(200)));

    println!("| measure | result |");
    println!("| --- | --- |");
    for (measure, result) in rows {
        println!("| {measure} | {result} |");
    }
}

/// Calls per look against the batching minimum, and the time a look takes.
async fn exec_readiness(apps: usize) -> (String, String) {
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
    let r = discovery
        .run(&sim, "convox", None, std::time::SystemTime::now())
        .await
        .expect("look");
    let first = total(&sim);
    let (services, tasks) = (apps * 3, r.verdicts.len());
    // One listing page per 100 stacks (the rack's own, the apps' and each service's nested
    // stack), ListTasks and DescribeTasks per 100, no DescribeServices (every task runs with
    // ECS Exec), the cluster's exec configuration, one DescribeContainerInstances and one
    // DescribeInstances per 100 instances (the generated rack has one), one role check per
    // app role, the VPC's route tables, NAT gateways and endpoints; the first look also reads
    // each task definition once.
    let steady_min =
        (1 + apps + services).div_ceil(100) + 2 * tasks.div_ceil(100) + 1 + 1 + 1 + apps + 3;
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
    (
        format!("exec readiness, {apps} apps × 3 services × 3 tasks ({tasks} tasks)"),
        format!(
            "first look {first} calls (batching minimum {first_min}), each later look {steady} \
             (minimum {steady_min}), {per:?} a look"
        ),
    )
}
