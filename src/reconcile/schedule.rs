//! Running the loop: on triggers and timers until shutdown (`run`), or until everything
//! settles (`apply`), and when to look again.

use super::*;

impl Reconciler {
    /// Counts one more failed run and returns how long to wait before the next.
    pub(super) fn error_delay(&mut self) -> Duration {
        self.consecutive_errors += 1;
        let fresh = self.backoff();
        self.error_backoff
            .get_or_insert_with(|| fresh.build())
            .next()
            .unwrap_or(self.settings.backoff_max)
    }

    /// When to look again: a second after a write; while a change (or its undoing) is under
    /// way, paced by its rollouts ([`reads::poll_delay`]), at the poll interval while none
    /// rolls (CloudFormation updating the stack's other resources) or while waiting on
    /// someone else's change; at the resync interval when settled; and no later than the
    /// next backoff or write cooldown ends.
    pub(super) fn next_run(
        &self,
        report: &Report,
        observed: &ObservedRack,
        rolling: bool,
        settling: bool,
        now: SystemTime,
    ) -> Duration {
        let poll = self.settings.poll;
        let phase = |p: Phase| report.phases.values().any(|x| *x == p);
        let mut next = if report.acted {
            reads::FAST
        } else if rolling || phase(Phase::Progressing) {
            self.observer
                .poll_delay(observed, now, poll)
                .unwrap_or(poll)
        } else if phase(Phase::Waiting) {
            poll
        } else {
            report.next
        };
        let cooldowns = self
            .last_write
            .values()
            .filter(|_| settling)
            .map(|t| *t + self.settings.min_write);
        let waits = self
            .memory
            .values()
            .chain([&self.stack.memory])
            .filter_map(|m| m.retry_not_before)
            .chain(cooldowns);
        if let Some(wait) = waits.filter_map(|t| t.duration_since(now).ok()).min() {
            next = next.min(wait.max(Duration::from_millis(100)));
        }
        next
    }

    pub(super) fn jittered(&self, d: Duration) -> Duration {
        let j = self.settings.jitter;
        d.mul_f64(1.0 + j * (2.0 * fastrand::f64() - 1.0))
    }

    /// Runs until `shutdown` turns true (or its sender is dropped), reconciling on startup,
    /// on every trigger, and whenever the last run asked to look again. Nothing new starts
    /// after shutdown; a run in progress gets [`SHUTDOWN_GRACE`] to finish.
    pub async fn run(
        mut self,
        triggers: mpsc::Receiver<Trigger>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut triggers = Some(triggers);
        let mut trigger = Trigger::Startup;
        // The start of the last run for a trigger (a params change, the lease taken).
        let mut last_triggered: Option<tokio::time::Instant> = None;
        loop {
            let started = tokio::time::Instant::now();
            if matches!(trigger, Trigger::ParamsChanged | Trigger::LeaseAcquired) {
                last_triggered = Some(started);
            }
            let Some(report) = self.reconcile_unless_stopped(trigger, &mut shutdown).await else {
                break;
            };
            let deadline = started + report.next.max(self.settings.min_reconcile);
            loop {
                tokio::select! {
                    _ = stopped(&mut shutdown) => {
                        info!("shutting down");
                        return;
                    }
                    t = recv(&mut triggers) => {
                        match t {
                            Some(t) => { trigger = t; break; }
                            None => { triggers = None; }
                        }
                    }
                    _ = tokio::time::sleep_until(deadline) => { trigger = Trigger::Timer; break; }
                }
            }
            // However often the params file changes, runs for it start min_reconcile apart
            // (timer runs already are); the changes in between are coalesced into the next
            // run (it reads the file anew). A change after a poll goes ahead at once.
            if let Some(earliest) = last_triggered.map(|t| t + self.settings.min_reconcile) {
                tokio::select! {
                    _ = stopped(&mut shutdown) => break,
                    _ = tokio::time::sleep_until(earliest) => {}
                }
            }
            while let Some(rx) = triggers.as_mut() {
                match rx.try_recv() {
                    Ok(_) => trigger = Trigger::ParamsChanged,
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => triggers = None,
                }
            }
        }
        info!("shutting down");
    }

    /// One run, unless shutdown comes first; a run that shutdown interrupts gets
    /// [`SHUTDOWN_GRACE`] to finish and is then abandoned (every run starts from what it
    /// observes, so an abandoned one is picked up by the next start).
    pub(super) async fn reconcile_unless_stopped(
        &mut self,
        trigger: Trigger,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<Report> {
        if *shutdown.borrow() {
            return None;
        }
        let run = self.reconcile(trigger);
        tokio::pin!(run);
        tokio::select! {
            report = &mut run => Some(report),
            _ = stopped(shutdown) => {
                info!(grace = %humantime::format_duration(SHUTDOWN_GRACE), "shutting down; letting the reconcile in progress finish");
                if tokio::time::timeout(SHUTDOWN_GRACE, &mut run).await.is_err() {
                    warn!("the reconcile in progress did not finish within the grace period; abandoned");
                }
                None
            }
        }
    }

    /// Reconciles until every managed parameter is converged, blocked or failed, the params
    /// file is invalid with nothing valid to fall back on, the rack stays unreachable for
    /// `max_errors` runs, or `shutdown` fires.
    pub async fn apply(&mut self, mut shutdown: watch::Receiver<bool>, max_errors: u32) -> Report {
        let mut trigger = Trigger::Startup;
        let mut last = None;
        loop {
            let Some(report) = self.reconcile_unless_stopped(trigger, &mut shutdown).await else {
                return last.unwrap_or_else(|| self.interrupted());
            };
            // Lost the lease: another controller writes now; nothing more to do here.
            let lost = self.lease.as_ref().is_some_and(|l| !l.is_leader());
            let give_up = lost || !report.has_desired || self.consecutive_errors >= max_errors;
            if (report.is_final() && !report.retrying)
                || give_up
                || (report.phases.is_empty() && report.rack_error.is_none())
            {
                return report;
            }
            let next = report.next;
            last = Some(report);
            tokio::select! {
                _ = stopped(&mut shutdown) => return last.unwrap_or_else(|| self.interrupted()),
                _ = tokio::time::sleep(next) => trigger = Trigger::Timer,
            }
        }
    }

    /// The report of a run cut short by shutdown before anything was known.
    pub(super) fn interrupted(&self) -> Report {
        Report {
            result: "error",
            phases: BTreeMap::new(),
            next: Duration::ZERO,
            params_error: self.params_error.clone(),
            rack_error: None,
            has_desired: self.desired.is_some(),
            acted: false,
            retrying: false,
        }
    }
}
