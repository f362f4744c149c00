//! `run`: the controller, until SIGTERM or SIGINT.

use super::*;

pub(crate) async fn run(cfg: Config) -> Result<u8> {
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
    let served = rack_reconciler::http::Served {
        status: rec.status(),
        metrics: rec.metrics(),
        journal: rec.journal(),
        stale_after: cfg.timeouts.observation_stale,
    };
    let server = tokio::spawn(rack_reconciler::http::serve(listener, served, async move {
        let _ = http_shutdown.wait_for(|stop| *stop).await;
    }));
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
