//! `status`: the running controller's status, or what a fresh look at the rack finds;
//! `--watch` follows it.

use super::*;

/// The running controller's `/status` address and a client for it.
pub(crate) fn status_endpoint(
    cfg: &Config,
    url: Option<String>,
) -> Result<(String, reqwest::Client)> {
    let base = url.unwrap_or_else(|| format!("http://{}", cfg.listen));
    let url = format!("{}/status", base.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .context("cannot build an HTTP client")?;
    Ok((url, client))
}

pub(crate) async fn get_status(client: &reqwest::Client, url: &str) -> Result<Status> {
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
pub(crate) async fn watch_status(cfg: Config, url: Option<String>, mode: Mode) -> Result<u8> {
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

pub(crate) async fn status(
    cfg: Config,
    json: bool,
    url: Option<String>,
    controller_only: bool,
) -> Result<u8> {
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

pub(crate) fn print_status(s: &Status) {
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
