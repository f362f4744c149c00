//! `rack-reconciler`: command line → commands. Everything else lives in the library.

mod cli;

use cli::*;

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
    /// What the rack went through: every change, write, rollout, failure, rollback, drift,
    /// refused downgrade and lease handover, with when, who and how long; read from where the
    /// controller keeps it (next to the status file).
    History {
        /// Only events since then: a duration back from now (`24h`, `90m`) or a time
        /// (`2026-12-03T15:00:00Z`).
        #[arg(long)]
        since: Option<String>,
        /// Only events about this parameter.
        #[arg(long)]
        param: Option<String>,
        /// Print JSON (an array of the events) instead of the table.
        #[arg(long)]
        json: bool,
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
    // One thread: the controller waits on AWS, not on the CPU, and every thread more costs
    // its stack and its own malloc arena (a few MiB of the peak RSS).
    let runtime = match tokio::runtime::Builder::new_current_thread()
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
        Command::History { since, param, json } => {
            show_history(cfg, since.as_deref(), param.as_deref(), json).await
        }
        Command::CheckDowngrade { to } => check_downgrade(cfg, &to).await,
        Command::ExecCheck { app, json } => exec_check(cfg, app.as_deref(), json).await,
        Command::Completions { shell } => shell_aid(Some(shell)),
        Command::Man => shell_aid(None),
    }
}
