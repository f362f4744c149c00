//! `rack-reconciler`: command line → commands. Everything else lives in the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use tokio::sync::{mpsc, watch};
use tracing::{error, info};

use rack_reconciler::config::{Backend, Config, LeaseSetting, LogFormat};
use rack_reconciler::exec::check;
use rack_reconciler::exec::discover::Discovery;
use rack_reconciler::exec::source::ExecSource;
use rack_reconciler::exec::watch::ExecWatch;
use rack_reconciler::lease::dynamodb::DynamoLeaseStore;
use rack_reconciler::lease::{default_holder, standby_message, Lease, Timing};
use rack_reconciler::metrics::Metrics;
use rack_reconciler::model::{ObservedRack, RackVersion};
use rack_reconciler::params;
use rack_reconciler::plan::{Action, Decision, Gate, Phase};
use rack_reconciler::progress::Mode;
use rack_reconciler::rack::aws::{sdk_config, AwsRack};
use rack_reconciler::rack::aws_exec::AwsExec;
use rack_reconciler::rack::fenced::FencedRack;
use rack_reconciler::rack::query::QueryClient;
use rack_reconciler::rack::sim::SimRack;
use rack_reconciler::rack::Rack;
use rack_reconciler::reconcile::{Reconciler, Settings, Trigger};
use rack_reconciler::spec::Declarations;
use rack_reconciler::status::{Status, StatusHandle};
use rack_reconciler::store::{Fetch, Location, Store, StoreError};

/// Exit codes, documented in the README.
mod exit {
    pub const CONVERGED: u8 = 0;
    pub const ERROR: u8 = 1;
    pub const CHANGES: u8 = 2;
    pub const FAILED: u8 = 3;
    pub const BLOCKED: u8 = 4;
    pub const INVALID_PARAMS: u8 = 5;
    pub const UNKNOWN: u8 = 6;
}

#[derive(Parser)]
#[command(
    name = "rack-reconciler",
    version,
    about = "Keeps a Convox rack's parameters where its operators want them"
)]
struct Cli {
    /// The controller's config file.
    #[arg(
        long,
        short,
        env = "RACK_RECONCILER_CONFIG",
        default_value = "config/rack-reconciler.yaml",
        global = true
    )]
    config: PathBuf,
    /// The whole config as YAML text, instead of a file (a container's environment).
    #[arg(
        long,
        env = "RACK_RECONCILER_CONFIG_YAML",
        global = true,
        hide_env_values = true
    )]
    config_yaml: Option<String>,
    /// Log format; overrides `log_format` in the config.
    #[arg(long, env = "RACK_RECONCILER_LOG_FORMAT", global = true)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller until SIGTERM or SIGINT.
    Run,
    /// Reconcile until converged, blocked or failed; the exit code says which. Errors worth
    /// retrying (throttling, server errors, timeouts) are retried with backoff.
    Apply {
        /// Give up after this many consecutive failures to observe the rack.
        #[arg(long, default_value_t = 5)]
        max_errors: u32,
        /// Give up (exit 1) when not done after this long, e.g. `45m`.
        #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// Print progress as plain lines even on a terminal.
        #[arg(long)]
        no_progress: bool,
    },
    /// Print what `apply` would do; change nothing.
    Plan {
        /// Exit 2 when there are changes to make, 0 when there are none.
        #[arg(long)]
        detailed_exitcode: bool,
    },
    /// Print the status of the running controller, or else of the rack. With
    /// `--controller-only`, exit 1 also when the controller has not observed the rack for
    /// longer than `timeouts.observation_stale` (a health check for a stuck loop).
    Status {
        /// Print the JSON document served at /status.
        #[arg(long)]
        json: bool,
        /// The running controller's address (default: `listen` from the config).
        #[arg(long)]
        url: Option<String>,
        /// Fail (exit 1) when no controller answers instead of reading the rack.
        #[arg(long)]
        controller_only: bool,
        /// Follow the running controller's progress until every parameter is converged,
        /// failed or blocked (exit 0, 3 or 4), as `apply` shows it.
        #[arg(long, conflicts_with = "json")]
        watch: bool,
        /// With `--watch`: plain lines even on a terminal.
        #[arg(long, requires = "watch")]
        no_progress: bool,
    },
    /// Would `convox exec` use ECS Exec for each app task, and if not, why and what fixes it;
    /// also whether session-manager-plugin is on PATH here. Exit 0 when every task would use
    /// ECS Exec, 4 otherwise.
    ExecCheck {
        /// Only this app.
        #[arg(long)]
        app: Option<String>,
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Check whether the rack may change to VERSION now (the downgrade gate); exit 0 when
    /// allowed, 4 when refused, with the reason.
    CheckDowngrade {
        /// The target rack version, e.g. 20240205000000.
        #[arg(long)]
        to: String,
    },
    /// Check a params file: against a template file with `--template`, else against the
    /// rack's running template (the simulated rack's with `backend: sim`).
    Validate {
        /// The params file, a path or `s3://bucket/key` (default: `params_file` from the
        /// config).
        file: Option<String>,
        /// A rack template (JSON or YAML) to check against, offline.
        #[arg(long)]
        template: Option<PathBuf>,
    },
    /// Set parameters in the params file (`KEY=VALUE ...`), as `convox rack params set` does:
    /// checked against the rack's template first, comments and order kept.
    Set {
        #[arg(required = true, value_name = "KEY=VALUE")]
        assignments: Vec<String>,
        /// A rack template to check against instead of the rack's.
        #[arg(long)]
        template: Option<PathBuf>,
    },
    /// Show each managed parameter: desired, the stack's value, and its phase.
    Get {
        /// Only this parameter.
        key: Option<String>,
    },
    /// Print a shell completion script, e.g. `rack-reconciler completions bash >
    /// /etc/bash_completion.d/rack-reconciler`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `rack-reconciler man | man -l -`.
    Man,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::ERROR);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::from(exit::ERROR)
        }
    }
}

/// A completion script for `shell`, or (`None`) the manual page, generated from the same
/// definitions as the command line itself.
fn shell_aid(shell: Option<clap_complete::Shell>) -> Result<u8> {
    use clap::CommandFactory;
    use std::io::Write;
    let mut cmd = Cli::command();
    // Into memory first: the generators panic on a failed write (a closed pipe).
    let mut text = Vec::new();
    match shell {
        Some(shell) => clap_complete::generate(shell, &mut cmd, "rack-reconciler", &mut text),
        None => clap_mangen::Man::new(cmd)
            .render(&mut text)
            .context("cannot render the manual page")?,
    }
    std::io::stdout()
        .write_all(&text)
        .context("cannot write to stdout")?;
    Ok(exit::CONVERGED)
}

async fn dispatch(cli: Cli) -> Result<u8> {
    // No config needed.
    match &cli.command {
        Command::Completions { shell } => return shell_aid(Some(*shell)),
        Command::Man => return shell_aid(None),
        _ => {}
    }
    if let Command::Validate {
        file: Some(file),
        template: Some(template),
    } = &cli.command
    {
        // Offline: no config needed (an S3 file needs the standard AWS environment).
        init_logging(cli.log_format.unwrap_or_default());
        let declared = template_declarations(template)?;
        let at = Location::parse(file, Path::new("")).map_err(anyhow::Error::msg)?;
        let store = store_for(&at, None, &Default::default(), &Metrics::new()).await;
        return Ok(validate(&store, &at, Some(&declared)).await);
    }
    let cfg = match &cli.config_yaml {
        Some(text) => Config::parse(text, "RACK_RECONCILER_CONFIG_YAML", Path::new("."))?,
        None => Config::load(&cli.config)?,
    };
    let format = cli.log_format.unwrap_or(cfg.log_format);
    match &cli.command {
        // Live progress says what the info lines would; they would only break it up.
        Command::Apply { no_progress, .. } if quiet_logs(progress_mode(*no_progress)) => {
            rack_reconciler::logging::init_at(format, "warn")
        }
        _ => init_logging(format),
    }
    match cli.command {
        Command::Run => run(cfg).await,
        Command::Apply {
            max_errors,
            timeout,
            no_progress,
        } => apply(cfg, max_errors, timeout, progress_mode(no_progress)).await,
        Command::Plan { detailed_exitcode } => plan(cfg, detailed_exitcode).await,
        Command::Status {
            url,
            watch: true,
            no_progress,
            ..
        } => watch_status(cfg, url, progress_mode(no_progress)).await,
        Command::Status {
            json,
            url,
            controller_only,
            ..
        } => status(cfg, json, url, controller_only).await,
        Command::Validate { file, template } => {
            let at = match file {
                Some(f) => Location::parse(&f, Path::new("")).map_err(anyhow::Error::msg)?,
                None => cfg.params_file.clone(),
            };
            let store = store_for(&at, cfg.region.clone(), &cfg.timeouts, &Metrics::new()).await;
            let declared = declarations(&cfg, template.as_deref()).await;
            if let Err(e) = &declared {
                eprintln!("warning: {e:#}; checking the syntax only");
            }
            Ok(validate(&store, &at, declared.ok().as_ref()).await)
        }
        Command::Set {
            assignments,
            template,
        } => set(cfg, &assignments, template.as_deref()).await,
        Command::Get { key } => get(cfg, key.as_deref()).await,
        Command::CheckDowngrade { to } => check_downgrade(cfg, &to).await,
        Command::ExecCheck { app, json } => exec_check(cfg, app.as_deref(), json).await,
        Command::Completions { shell } => shell_aid(Some(shell)),
        Command::Man => shell_aid(None),
    }
}

fn init_logging(format: LogFormat) {
    rack_reconciler::logging::init(format);
}

/// The rack the controller reconciles, and what exec readiness reads (the same simulated
/// rack, or the AWS clients of one configuration).
struct Adapters {
    rack: Arc<dyn Rack>,
    exec: Arc<dyn ExecSource>,
}

async fn build_backend(cfg: &Config, metrics: &Metrics) -> Result<Adapters> {
    match cfg.backend {
        Backend::Sim => {
            let sim = Arc::new(SimRack::new(cfg.sim.clone()));
            sim.set_metrics(metrics.clone());
            Ok(Adapters {
                rack: sim.clone(),
                exec: sim,
            })
        }
        Backend::Aws => {
            let sdk = sdk_config(cfg.region.clone(), &cfg.timeouts).await;
            let cfn = aws_sdk_cloudformation::Client::new(&sdk);
            let ecs = aws_sdk_ecs::Client::new(&sdk);
            let query = QueryClient::new(&sdk, &cfg.timeouts, metrics.clone())
                .map_err(anyhow::Error::msg)
                .context("cannot set up the EC2 and IAM client")?;
            Ok(Adapters {
                rack: Arc::new(AwsRack::new(
                    &cfg.rack,
                    cfn.clone(),
                    ecs.clone(),
                    metrics.clone(),
                )),
                exec: Arc::new(AwsExec::new(cfn, ecs, query, metrics.clone())),
            })
        }
    }
}

/// What a command shares between the loop and the tasks around it.
struct Wiring {
    metrics: Metrics,
    /// Reads the params file and writes the status document (S3 when they are there).
    store: Store,
    /// The lease, for the commands that write.
    lease: Option<Lease>,
}

impl Wiring {
    /// `with_lease`: the command writes, so it takes part in the lease when one is configured.
    async fn new(cfg: &Config, with_lease: bool) -> Wiring {
        let metrics = Metrics::new();
        let store = store_for(
            &cfg.params_file,
            cfg.region.clone(),
            &cfg.timeouts,
            &metrics,
        )
        .await;
        let lease = match (&cfg.lease, with_lease) {
            (Some(LeaseSetting::Table(t)), true) => {
                let sdk = sdk_config(cfg.region.clone(), &cfg.timeouts).await;
                let table = DynamoLeaseStore::new(
                    aws_sdk_dynamodb::Client::new(&sdk),
                    &t.table,
                    t.name.as_deref().unwrap_or(&cfg.rack),
                    metrics.clone(),
                );
                let holder = t.holder.clone().unwrap_or_else(default_holder);
                metrics.set_leader(false);
                Some(Lease::new(
                    Arc::new(table),
                    holder,
                    Timing::for_duration(t.duration),
                ))
            }
            _ => None,
        };
        Wiring {
            metrics,
            store,
            lease,
        }
    }
}

/// A store that reaches S3 when `at` is there.
async fn store_for(
    at: &Location,
    region: Option<String>,
    timeouts: &rack_reconciler::config::Timeouts,
    metrics: &Metrics,
) -> Store {
    if at.as_file().is_some() {
        return Store::local();
    }
    let sdk = sdk_config(region, timeouts).await;
    // A custom endpoint (an S3-compatible server) is addressed by path, not by host name.
    let path_style = sdk.endpoint_url().is_some();
    let s3 = aws_sdk_s3::config::Builder::from(&sdk)
        .force_path_style(path_style)
        .build();
    Store::with_s3(aws_sdk_s3::Client::from_conf(s3), metrics.clone())
}

async fn reconciler(cfg: &Config, wiring: &Wiring) -> Result<Reconciler> {
    let backend = build_backend(cfg, &wiring.metrics).await?;
    let mut rack = backend.rack;
    if let Some(lease) = &wiring.lease {
        // Every write re-checks the lease right before it is made.
        rack = Arc::new(FencedRack::new(rack, lease.clone(), wiring.metrics.clone()));
    }
    let status = StatusHandle::new(Status {
        rack: cfg.rack.clone(),
        backend: cfg.backend.as_str().to_string(),
        ..Status::default()
    });
    let rec = Reconciler::new(rack, Settings::from(cfg), wiring.metrics.clone(), status)
        .with_exec(backend.exec)
        .with_store(wiring.store.clone())
        .await;
    Ok(match &wiring.lease {
        Some(lease) => rec.with_lease(lease.clone()),
        None => rec,
    })
}

/// Keeps the lease while the command runs (released on `shutdown`), shows it in
/// `rack_reconciler_leader`, and wakes the loop when this controller takes the lease over.
fn keep_lease(
    lease: &Lease,
    metrics: Metrics,
    shutdown: watch::Receiver<bool>,
    wake: Option<mpsc::Sender<Trigger>>,
) {
    tokio::spawn(lease.clone().keep(shutdown));
    let mut views = lease.subscribe();
    tokio::spawn(async move {
        let mut leader = false;
        while views.changed().await.is_ok() {
            let now = views.borrow().leader;
            metrics.set_leader(now);
            if now && !leader {
                if let Some(wake) = &wake {
                    let _ = wake.try_send(Trigger::LeaseAcquired);
                }
            }
            leader = now;
        }
    });
}

/// A watch channel that turns true on SIGTERM or SIGINT.
fn shutdown_signal() -> Result<watch::Receiver<bool>> {
    let (tx, rx) = watch::channel(false);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM received; finishing the current step"),
            _ = tokio::signal::ctrl_c() => info!("SIGINT received; finishing the current step"),
        }
        let _ = tx.send(true);
    });
    Ok(rx)
}

async fn run(cfg: Config) -> Result<u8> {
    let wiring = Wiring::new(&cfg, true).await;
    let rec = reconciler(&cfg, &wiring).await?;
    let shutdown = shutdown_signal()?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {} (`listen` in the config)", cfg.listen))?;
    info!(
        rack = %cfg.rack, backend = cfg.backend.as_str(), params = %cfg.params_file,
        listen = %cfg.listen, "rack-reconciler starting"
    );
    let mut http_shutdown = shutdown.clone();
    let server = tokio::spawn(rack_reconciler::http::serve(
        listener,
        rec.status(),
        rec.metrics(),
        cfg.timeouts.observation_stale,
        async move {
            let _ = http_shutdown.wait_for(|stop| *stop).await;
        },
    ));
    let (tx, rx) = mpsc::channel(1);
    let _watcher = match &cfg.params_file {
        Location::File(path) => Some(rack_reconciler::watch::watch_params(
            path,
            cfg.intervals.debounce,
            tx.clone(),
        )?),
        at => {
            tokio::spawn(rack_reconciler::store::watch_object(
                wiring.store.clone(),
                at.clone(),
                cfg.intervals.params_poll,
                tx.clone(),
                shutdown.clone(),
            ));
            None
        }
    };
    if let Some(lease) = &wiring.lease {
        keep_lease(lease, wiring.metrics.clone(), shutdown.clone(), Some(tx));
    }
    if let Some(exec) = rec.exec_source() {
        let watch = ExecWatch::new(
            exec,
            &cfg.rack,
            cfg.intervals.exec_check,
            cfg.timeouts.reconcile,
            rec.metrics(),
            rec.status(),
        );
        tokio::spawn(watch.run(shutdown.clone()));
    }
    rec.run(rx, shutdown).await;
    if let Some(lease) = &wiring.lease {
        lease.release().await;
    }
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => error!(error = %e, "HTTP server failed"),
        Err(e) => error!(error = %e, "HTTP server task failed"),
    }
    info!("stopped");
    Ok(exit::CONVERGED)
}

/// Live progress on a terminal that can redraw lines (not `TERM=dumb`), plain lines
/// elsewhere or when asked.
fn progress_mode(no_progress: bool) -> Mode {
    if !no_progress && !indicatif::ProgressDrawTarget::stdout().is_hidden() {
        Mode::Live
    } else {
        Mode::Plain
    }
}

/// Info log lines are held back while live progress shows what they would say on the same
/// terminal; logged to a file, they all go there.
fn quiet_logs(mode: Mode) -> bool {
    use std::io::IsTerminal;
    mode == Mode::Live && std::io::stderr().is_terminal()
}

async fn apply(cfg: Config, max_errors: u32, timeout: Duration, mode: Mode) -> Result<u8> {
    let wiring = Wiring::new(&cfg, true).await;
    if let Some(lease) = &wiring.lease {
        // Fail closed: a lease that cannot be read or is held elsewhere means no writes.
        lease
            .tick()
            .await
            .context("cannot take the lease, so nothing is written")?;
        if !lease.is_leader() {
            println!("not applying: {}", standby_message(&lease.view()));
            return Ok(exit::BLOCKED);
        }
    }
    let mut rec = reconciler(&cfg, &wiring).await?;
    let shutdown = shutdown_signal()?;
    let (stop_lease, lease_stopped) = watch::channel(false);
    if let Some(lease) = &wiring.lease {
        keep_lease(lease, wiring.metrics.clone(), lease_stopped, None);
    }
    let (stop_progress, progress_stopped) = watch::channel(false);
    let progress = tokio::spawn(rack_reconciler::progress::follow(
        rec.status().subscribe(),
        mode,
        progress_stopped,
    ));
    let run = tokio::time::timeout(timeout, rec.apply(shutdown, max_errors.max(1))).await;
    let _ = stop_progress.send(true);
    let _ = progress.await;
    let _ = stop_lease.send(true);
    if let Some(lease) = &wiring.lease {
        let lost = !lease.is_leader();
        lease.release().await;
        if lost {
            print_status(&rec.status().get());
            println!("stopped: {}", standby_message(&lease.view()));
            return Ok(exit::BLOCKED);
        }
    }
    let status = rec.status().get();
    let Ok(report) = run else {
        print_status(&status);
        bail!(
            "not done after {} (--timeout): the rack is still converging; `rack-reconciler status` follows it",
            humantime::format_duration(timeout)
        );
    };
    print_status(&status);
    if !report.has_desired {
        return Ok(exit::INVALID_PARAMS);
    }
    if let Some(e) = &report.rack_error {
        bail!("the rack could not be observed: {e}");
    }
    if report.params_error.is_some() {
        eprintln!("warning: the params file is invalid; applied the last valid desired state");
    }
    Ok(match report.worst() {
        None | Some(Phase::Converged) => exit::CONVERGED,
        Some(Phase::Failed) => exit::FAILED,
        Some(Phase::Blocked) => exit::BLOCKED,
        Some(p) => {
            eprintln!("interrupted while {p}");
            exit::ERROR
        }
    })
}

/// What the rack is and what the controller would decide, without acting; `Err` with the exit
/// code when the params file is invalid.
async fn preview(cfg: &Config) -> Result<std::result::Result<(ObservedRack, Vec<Decision>), u8>> {
    let mut rec = reconciler(cfg, &Wiring::new(cfg, false).await).await?;
    let previewed = rec.preview().await?;
    if let Some(e) = rec.params_error() {
        println!("{e}");
        return Ok(Err(exit::INVALID_PARAMS));
    }
    Ok(Ok(previewed))
}

async fn plan(cfg: Config, detailed: bool) -> Result<u8> {
    let mut rec = reconciler(&cfg, &Wiring::new(&cfg, false).await).await?;
    let (observed, decisions) = rec.preview().await?;
    if let Some(e) = rec.params_error() {
        println!("{e}");
        return Ok(exit::INVALID_PARAMS);
    }
    println!(
        "rack {} (stack {}), params {}",
        cfg.rack, observed.stack.status, cfg.params_file
    );
    let mut changes = 0;
    for d in &decisions {
        // Anything that differs counts, a change held or blocked included.
        changes += print_plan(d, method(d, &observed)).max(usize::from(d.drift));
    }
    if decisions.is_empty() {
        println!("the params file manages no parameter: nothing to do");
    }
    match rec.preview_stack_update(&observed).await {
        None => {}
        Some(Ok(resources)) => {
            println!(
                "\nCloudFormation change set: {} resource change(s)",
                resources.len()
            );
            for r in &resources {
                println!(
                    "  {} {} ({}{})",
                    r.action,
                    r.logical_id,
                    r.resource_type,
                    r.replacement
                        .as_deref()
                        .map(|x| format!(", replacement {x}"))
                        .unwrap_or_default()
                );
            }
        }
        Some(Err(e)) => println!("\nno change set preview: {e}"),
    }
    println!(
        "\nPlan: {changes} change(s). {}",
        if changes == 0 {
            "The rack matches the params file."
        } else {
            "Run `rack-reconciler apply` to make them."
        }
    );
    Ok(if detailed && changes > 0 {
        exit::CHANGES
    } else {
        exit::CONVERGED
    })
}

/// How a parameter changes, for `plan`.
fn method(d: &Decision, observed: &ObservedRack) -> &'static str {
    if d.param == "Version" {
        "version: UpdateStack to the target template"
    } else if !d.pending.is_empty() || !observed.declared.declares(&d.param) {
        "relabel: RegisterTaskDefinition + UpdateService, service by service"
    } else {
        "stack: UpdateStack, template and other parameters kept"
    }
}

fn print_plan(d: &Decision, method: &str) -> usize {
    let observed = d.observed.as_deref().unwrap_or("mixed");
    println!(
        "\n{}: desired {}, observed {} ({}) [{method}]",
        d.param, d.desired, observed, d.phase
    );
    if !matches!(d.phase, Phase::Converged | Phase::Progressing) || d.pending.is_empty() {
        println!("  {}", d.message);
    }
    for (i, c) in d.pending.iter().enumerate() {
        println!(
            "  {}. {}: {} → {}: register a copy of {} with only {}={} changed (or reuse an identical one), \
             UpdateService, follow the rollout",
            i + 1,
            c.service,
            c.from_value.as_deref().unwrap_or("?"),
            c.to_value,
            short_arn(&c.from_task_definition),
            param_label(&d.param),
            c.to_value
        );
    }
    if let Some(Action::UpdateStack(u)) = &d.action {
        let given: Vec<String> = u
            .parameters
            .iter()
            .filter_map(|p| p.value.as_ref().map(|v| format!("{}={v}", p.key)))
            .collect();
        let kept = u.parameters.iter().filter(|p| p.value.is_none()).count();
        println!(
            "  1. UpdateStack {} → {} ({}): {}; {kept} parameter(s) UsePreviousValue; then follow the stack to UPDATE_COMPLETE",
            u.from.as_deref().unwrap_or("?"),
            u.to,
            if u.downgrade { "downgrade" } else { "upgrade" },
            given.join(", ")
        );
        return 1;
    }
    d.pending.len()
}

fn param_label(name: &str) -> &'static str {
    rack_reconciler::model::managed_param(name)
        .map(|p| p.label)
        .unwrap_or("label")
}

fn short_arn(arn: &str) -> &str {
    arn.rsplit('/').next().unwrap_or(arn)
}

/// The running controller's `/status` address and a client for it.
fn status_endpoint(cfg: &Config, url: Option<String>) -> Result<(String, reqwest::Client)> {
    let base = url.unwrap_or_else(|| format!("http://{}", cfg.listen));
    let url = format!("{}/status", base.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .context("cannot build an HTTP client")?;
    Ok((url, client))
}

async fn get_status(client: &reqwest::Client, url: &str) -> Result<Status> {
    client
        .get(url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| {
            format!("GET {url}: is the controller running? (`listen` in the config, or --url)")
        })?
        .json::<Status>()
        .await
        .with_context(|| format!("GET {url}: not a rack-reconciler status document"))
}

/// `status --watch`: the running controller's progress, as `apply` shows it, until every
/// parameter is converged, failed or blocked.
async fn watch_status(cfg: Config, url: Option<String>, mode: Mode) -> Result<u8> {
    let (url, client) = status_endpoint(&cfg, url)?;
    let first = get_status(&client, &url).await?;
    let (tx, rx) = watch::channel(first);
    let (stop, stopped) = watch::channel(false);
    let shown = tokio::spawn(rack_reconciler::progress::follow(rx, mode, stopped));
    let mut failing = false;
    let done = loop {
        let s = tx.borrow().clone();
        let phases: Vec<Phase> = s.parameters.iter().map(|p| p.phase).collect();
        // As `apply` stops: every parameter final, and no write the controller retries.
        if !phases.is_empty()
            && !s.retrying
            && phases
                .iter()
                .all(|p| matches!(p, Phase::Converged | Phase::Failed | Phase::Blocked))
        {
            break phases;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        match get_status(&client, &url).await {
            Ok(s) => {
                failing = false;
                tx.send_replace(s);
            }
            // A controller restarting, a slow answer: say so once and keep following.
            Err(e) if !failing => {
                failing = true;
                eprintln!("{e:#}; still following");
            }
            Err(_) => {}
        }
    };
    let _ = stop.send(true);
    let _ = shown.await;
    print_status(&tx.borrow());
    Ok(if done.contains(&Phase::Failed) {
        exit::FAILED
    } else if done.contains(&Phase::Blocked) {
        exit::BLOCKED
    } else {
        exit::CONVERGED
    })
}

async fn status(cfg: Config, json: bool, url: Option<String>, controller_only: bool) -> Result<u8> {
    let (url, client) = status_endpoint(&cfg, url)?;
    let from_controller = match client.get(&url).send().await {
        Ok(resp) => Some(
            resp.error_for_status()
                .with_context(|| format!("GET {url}"))?
                .json::<Status>()
                .await
                .with_context(|| format!("GET {url}: not a rack-reconciler status document"))?,
        ),
        Err(e) if e.is_connect() && !controller_only => None,
        Err(e) => return Err(e).with_context(|| format!("GET {url}")),
    };
    let status = match from_controller {
        Some(s) => s,
        None => {
            eprintln!("no controller answers at {url}; reading the rack directly");
            let mut rec = reconciler(&cfg, &Wiring::new(&cfg, false).await).await?;
            let (observed, decisions) = rec.preview().await?;
            let handle = rec.status();
            let now = std::time::SystemTime::now();
            handle.update(|s| {
                s.stack_status = Some(observed.stack.status.clone());
                s.ready = true;
                for d in &decisions {
                    s.record(d, None, now);
                }
            });
            handle.get()
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print_status(&status);
    }
    if controller_only && status.observation_stale {
        eprintln!(
            "the controller answers but has not observed the rack completely since {} (timeouts.observation_stale)",
            status.last_observation.as_deref().unwrap_or("it started")
        );
        return Ok(exit::ERROR);
    }
    Ok(exit::CONVERGED)
}

fn print_status(s: &Status) {
    println!(
        "rack {} ({}), stack {}, params {}: {}",
        s.rack,
        s.backend,
        s.stack_status.as_deref().unwrap_or("unknown"),
        s.params_file.path,
        match &s.params_file.error {
            None => "valid".to_string(),
            Some(e) => format!("INVALID: {e}"),
        }
    );
    if let Some(e) = &s.rack_error {
        println!("rack error: {e}");
    }
    if let Some(l) = &s.lease {
        println!(
            "lease: {} (holder {}, fence {}, until {}){}",
            if l.leader { "held, writing" } else { "Standby" },
            l.holder.as_deref().unwrap_or("unknown"),
            l.fence,
            l.expires_at.as_deref().unwrap_or("-"),
            l.error
                .as_deref()
                .map(|e| format!("; {e}"))
                .unwrap_or_default()
        );
    }
    for p in &s.parameters {
        println!(
            "{}: {} (desired {}, observed {}) — {}",
            p.name,
            p.phase,
            p.desired.as_deref().unwrap_or("-"),
            p.observed.as_deref().unwrap_or("mixed"),
            p.message
        );
        for svc in &p.services {
            println!(
                "  {:<20} {:<11} value {:<4} {}/{} running  {}",
                svc.service,
                format!("{:?}", svc.state),
                svc.value.as_deref().unwrap_or("-"),
                svc.running,
                svc.desired,
                svc.task_definition.as_deref().map(short_arn).unwrap_or("-")
            );
        }
    }
    if let Some(e) = &s.exec {
        let (status, _, message) = e.condition();
        println!(
            "exec readiness ({}): ExecReady {status}: {message}",
            e.checked_at.as_deref().unwrap_or("not looked at yet")
        );
        if let Some(err) = &e.error {
            println!("  last look failed: {err}");
        }
    }
}

async fn check_downgrade(cfg: Config, to: &str) -> Result<u8> {
    let Some(version) = RackVersion::parse(to) else {
        println!("--to {to:?}: not a Convox rack version (14 digits, e.g. 20260418101514)");
        return Ok(exit::INVALID_PARAMS);
    };
    let mut rec = reconciler(&cfg, &Wiring::new(&cfg, false).await).await?;
    let check = rec
        .check_version(version)
        .await
        .map_err(anyhow::Error::msg)?;
    if let Some(e) = rec.params_error() {
        eprintln!("warning: the params file is invalid ({e}); judging from what the rack runs");
    }
    let current = check
        .current
        .map(|c| c.to_string())
        .unwrap_or_else(|| "an unknown version".into());
    let (verdict, code) = match &check.gate {
        Gate::NotNeeded if check.current.is_some_and(|c| version >= c) => (
            format!("allowed: {version} is not older than {current}"),
            exit::CONVERGED,
        ),
        Gate::NotNeeded => (
            format!(
                "allowed: {} declares ECSExec, so the downgrade from {current} needs no gate",
                check.template.as_deref().unwrap_or("the target template")
            ),
            exit::CONVERGED,
        ),
        Gate::Allowed => (
            format!("allowed: ECSExec=No has converged on every rack API service; {current} → {version} is safe"),
            exit::CONVERGED,
        ),
        Gate::Refused(why) => (format!("refused: {why}"), exit::BLOCKED),
        Gate::Holding(why) => (format!("refused for now: {why}"), exit::BLOCKED),
    };
    println!("{verdict}");
    Ok(code)
}

/// What a template file declares.
fn template_declarations(path: &Path) -> Result<Declarations> {
    let body = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the template {}", path.display()))?;
    Declarations::from_template(&body)
        .map_err(|e| anyhow::anyhow!("{} is not a rack template: {e}", path.display()))
}

/// `exec-check`: exec readiness once, and the Session Manager plugin on this machine.
async fn exec_check(cfg: Config, app: Option<&str>, json: bool) -> Result<u8> {
    let backend = build_backend(&cfg, &Metrics::new()).await?;
    let readiness = Discovery::default()
        .run(
            backend.exec.as_ref(),
            &cfg.rack,
            app,
            std::time::SystemTime::now(),
        )
        .await
        .with_context(|| format!("cannot look at the apps of rack {}", cfg.rack))?;
    if let Some(a) = app.filter(|a| !readiness.apps.contains_key(*a)) {
        bail!(
            "app {a} not found in rack {}: `convox apps` lists them",
            cfg.rack
        );
    }
    let plugin = check::find_plugin(std::env::var_os("PATH")).await;
    if json {
        let doc = check::json(&cfg.rack, &readiness, &plugin);
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{}", check::table(&cfg.rack, &readiness));
        print!("\n{}", check::plugin_lines(&plugin));
    }
    Ok(match check::outcome(&readiness) {
        check::Outcome::Ready => exit::CONVERGED,
        check::Outcome::NotReady => exit::BLOCKED,
        check::Outcome::Unknown => exit::UNKNOWN,
    })
}

/// What the parameters may be: a template file's declarations, or the running template's.
async fn declarations(cfg: &Config, template: Option<&Path>) -> Result<Declarations> {
    if let Some(t) = template {
        return template_declarations(t);
    }
    let rack = build_backend(cfg, &Metrics::new()).await?.rack;
    rack.stack_declarations()
        .await
        .with_context(|| format!("cannot read the template of stack {}", cfg.rack))
}

/// The text of the params document at `at` and its version (ETag); empty when there is none.
async fn read_params(store: &Store, at: &Location) -> Result<(String, Option<String>)> {
    match store.read(at, None).await {
        Ok(Fetch::Text { text, etag }) => Ok((text, etag)),
        Ok(Fetch::Missing | Fetch::Unchanged) => Ok((String::new(), None)),
        // S3 answers AccessDenied for a missing object to a role that may not list the
        // bucket: write it as new (`If-None-Match: *`), which fails if it does exist.
        Err(StoreError::Denied { .. }) => Ok((String::new(), None)),
        Err(e) => Err(e.into()),
    }
}

async fn validate(store: &Store, at: &Location, declared: Option<&Declarations>) -> u8 {
    let shown = at.to_string();
    let checked = match store.read(at, None).await {
        Ok(Fetch::Text { text, .. }) => params::parse(&shown, &text),
        Ok(_) => Err(params::ParamsError::Missing {
            path: shown.clone(),
        }),
        Err(e) => Err(params::ParamsError::Unreadable {
            path: shown.clone(),
            reason: e.to_string(),
        }),
    }
    .and_then(|d| match declared {
        Some(decl) => d.check(decl).map(|()| d),
        None => Ok(d),
    });
    match checked {
        Ok(d) => {
            let mut names: Vec<String> = d.values.keys().cloned().collect();
            names.extend(d.version.map(|v| format!("Version={v}")));
            println!(
                "{shown}: valid{} ({})",
                if declared.is_some() {
                    ""
                } else {
                    " YAML (not checked against a template)"
                },
                if names.is_empty() {
                    "manages nothing".into()
                } else {
                    names.join(", ")
                }
            );
            exit::CONVERGED
        }
        Err(e) => {
            println!("{e}");
            exit::INVALID_PARAMS
        }
    }
}

/// `set KEY=VALUE ...`: the params file with those values, written only if it is valid
/// against the template (a local file atomically; an S3 object only if nobody changed it
/// since it was read).
async fn set(cfg: Config, assignments: &[String], template: Option<&Path>) -> Result<u8> {
    let at = &cfg.params_file;
    let store = store_for(at, cfg.region.clone(), &cfg.timeouts, &Metrics::new()).await;
    let (mut text, etag) = read_params(&store, at)
        .await
        .with_context(|| format!("cannot read {at}"))?;
    for a in assignments {
        let Some((key, value)) = a.split_once('=') else {
            println!("{a}: expected KEY=VALUE, e.g. ECSExec=Yes");
            return Ok(exit::INVALID_PARAMS);
        };
        text = params::set_in_text(&text, key.trim(), value.trim());
    }
    let declared = declarations(&cfg, template).await?;
    let shown = at.to_string();
    if let Err(e) = params::parse(&shown, &text).and_then(|d| d.check(&declared)) {
        println!("{e}\n{shown} is unchanged");
        return Ok(exit::INVALID_PARAMS);
    }
    store
        .write_if_unchanged(at, &text, etag.as_deref())
        .await
        .with_context(|| format!("cannot write {shown}"))?;
    println!("{shown}: set {}", assignments.join(" "));
    Ok(exit::CONVERGED)
}

/// `get [KEY]`: desired, the stack's value and the phase of each managed parameter.
async fn get(cfg: Config, key: Option<&str>) -> Result<u8> {
    let (observed, decisions) = match preview(&cfg).await? {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    println!(
        "{:<28} {:<16} {:<16} PHASE",
        "PARAMETER", "DESIRED", "STACK"
    );
    for d in decisions
        .iter()
        .filter(|d| key.is_none_or(|k| k == d.param))
    {
        let stack = observed
            .stack
            .parameters
            .get(&d.param)
            .map(String::as_str)
            .unwrap_or("(not declared)");
        println!(
            "{:<28} {:<16} {:<16} {} ({})",
            d.param, d.desired, stack, d.phase, d.reason
        );
    }
    if let Some(k) = key.filter(|k| !decisions.iter().any(|d| d.param == *k)) {
        println!(
            "{k} is not in the params file: the rack's value is {}",
            observed
                .stack
                .parameters
                .get(k)
                .map(String::as_str)
                .unwrap_or("(not declared)")
        );
    }
    Ok(exit::CONVERGED)
}
