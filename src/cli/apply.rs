//! `apply`: reconcile until every managed parameter is converged, blocked or failed.

use super::*;

/// Live progress on a terminal that can redraw lines (not `TERM=dumb`), plain lines
/// elsewhere or when asked.
pub(crate) fn progress_mode(no_progress: bool) -> Mode {
    if !no_progress && !indicatif::ProgressDrawTarget::stdout().is_hidden() {
        Mode::Live
    } else {
        Mode::Plain
    }
}

/// Info log lines are held back while live progress shows what they would say on the same
/// terminal; logged to a file, they all go there.
pub(crate) fn quiet_logs(mode: Mode) -> bool {
    use std::io::IsTerminal;
    mode == Mode::Live && std::io::stderr().is_terminal()
}

pub(crate) async fn apply(
    cfg: Config,
    max_errors: u32,
    timeout: Duration,
    mode: Mode,
) -> Result<u8> {
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
