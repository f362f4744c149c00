//! What the commands share: the rack and exec readiness backends, the params and status
//! store, the lease, the reconciler wired to them, and the shutdown signal.

use super::*;

pub(crate) fn init_logging(format: LogFormat) {
    rack_reconciler::logging::init(format);
}

/// The rack the controller reconciles, and what exec readiness reads (the same simulated
/// rack, or the AWS clients of one configuration).
pub(crate) struct Adapters {
    pub(crate) rack: Arc<dyn Rack>,
    pub(crate) exec: Arc<dyn ExecSource>,
}

pub(crate) async fn build_backend(cfg: &Config, metrics: &Metrics) -> Result<Adapters> {
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
pub(crate) struct Wiring {
    pub(crate) metrics: Metrics,
    /// Reads the params file and writes the status document (S3 when they are there).
    pub(crate) store: Store,
    /// The lease, for the commands that write.
    pub(crate) lease: Option<Lease>,
}

impl Wiring {
    /// `with_lease`: the command writes, so it takes part in the lease when one is configured.
    pub(crate) async fn new(cfg: &Config, with_lease: bool) -> Wiring {
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
pub(crate) async fn store_for(
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

pub(crate) async fn reconciler(cfg: &Config, wiring: &Wiring) -> Result<Reconciler> {
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
pub(crate) fn keep_lease(
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
pub(crate) fn shutdown_signal() -> Result<watch::Receiver<bool>> {
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
