//! What must survive a restart or a takeover: written down in the status document, picked
//! up again.

use super::*;

impl Reconciler {
    /// Picks up what the status document wrote down; a controller that took the lease with
    /// fence `mine` only from the previous holder's document ([`crate::memory::restorable`]).
    pub(super) async fn restore_from_store(&mut self, mine: Option<u64>) {
        let Some(doc) = self.document.as_mut() else {
            return;
        };
        let at = doc.location().clone();
        let text = match doc.read().await {
            Ok(Some(text)) => text,
            Ok(None) => return,
            Err(e) => {
                warn!(status = %at, error = %e, "cannot read the status document; going on without what it wrote down");
                return;
            }
        };
        if let Some(mine) = mine {
            if let Err(why) = crate::memory::restorable(document::fence_of(&text), mine) {
                warn!(status = %at, fence = mine, %why,
                    "not picking up the status document: starting from what is observed");
                self.forget_restored();
                return;
            }
        }
        self.restore(&text);
    }

    /// Forgets what a document picked up earlier said (rollouts, stack update, backoffs).
    pub(super) fn forget_restored(&mut self) {
        self.own_rollouts.clear();
        self.stack = StackMemory::default();
        self.memory.clear();
        self.status
            .update(|s| s.controller = crate::memory::Persisted::default());
    }

    /// Writes down what must survive a restart: the rollouts started and the backoffs
    /// running. Written to the status file with the rest of the status.
    pub(super) fn persist(&mut self) {
        let own_rollouts = self.own_rollouts.clone();
        let failures = self
            .memory
            .iter()
            .filter_map(|(name, m)| Some((name.to_string(), m.persisted()?)))
            .collect();
        let stack_update = self.stack.persisted();
        // The generation is kept where it is counted, in the status.
        self.status.update(|s| {
            s.controller.own_rollouts = own_rollouts;
            s.controller.failures = failures;
            s.controller.stack_update = stack_update;
        });
    }

    /// Picks up what a previous run wrote down in the status file: the status itself (so
    /// conditions keep their transition times), the rollouts it started and its backoffs.
    pub(super) fn restore(&mut self, text: &str) {
        let previous: Status = match serde_json::from_str(text) {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "ignoring an unreadable status file");
                return;
            }
        };
        let controller = previous.controller.clone();
        self.own_rollouts = controller.own_rollouts.clone();
        if let Some(update) = &controller.stack_update {
            self.stack = StackMemory::restored(update, self.backoff());
        }
        for (name, failure) in &controller.failures {
            self.memory
                .insert(name.clone(), Memory::restored(failure, self.backoff()));
        }
        // The desired values it had: the same file read again is not a new generation.
        for p in &previous.parameters {
            let last_change = p.last_change.as_deref();
            if let Some(at) = last_change.and_then(|t| humantime::parse_rfc3339_weak(t).ok()) {
                self.metrics.set_last_change(&p.name, at);
            }
            if let Some(desired) = &p.desired {
                let mem = mem_of(&mut self.memory, &p.name);
                mem.desired.get_or_insert_with(|| desired.clone());
            }
        }
        if !controller.own_rollouts.is_empty() || !controller.failures.is_empty() {
            info!(
                rollouts = controller.own_rollouts.len(),
                backoffs = controller.failures.len(),
                "picked up the rollouts and backoffs of the previous run"
            );
        }
        self.status.update(|s| {
            s.parameters = previous.parameters;
            s.controller = controller;
            // The params file's last error: the same refusal is not a new event.
            s.params_file.error = previous.params_file.error;
        });
    }

    /// Writes the status file when something a person would care about changed.
    pub(super) async fn write_status_file(&mut self) {
        if let Err(e) = self.write_down().await {
            warn!(error = %e, "cannot write the status file");
        }
    }

    /// Writes down the status and what must survive a restart, now; says why it could not.
    /// Without a status file there is nowhere to write (the memory lives in the process).
    pub(super) async fn write_down(&mut self) -> Result<(), String> {
        self.persist();
        let Some(at) = self.settings.status_file.clone() else {
            return Ok(());
        };
        let fence = match &self.lease {
            // The holder's status document, under its fence: a standby's (or a holder's
            // that lost the lease while paused) would overwrite what the holder wrote down.
            Some(lease) => Some(
                lease
                    .fence()
                    .await
                    .map_err(|e| format!("status document {at}: not the lease holder: {e}"))?,
            ),
            None => None,
        };
        self.held = fence;
        self.status
            .update(|s| s.controller.fence = fence.map(|f| f.fence));
        let status = self.status.get();
        let key = significant(&status);
        if self.last_written.as_ref() == Some(&key) {
            return Ok(());
        }
        let body = serde_json::to_string_pretty(&status)
            .map_err(|e| format!("status document {at}: {e}"))?;
        let metrics = self.metrics.clone();
        if let Some(doc) = self.document.as_mut() {
            doc.write(&body, fence.map(|f| (f, &metrics))).await?;
        }
        self.last_written = Some(key);
        Ok(())
    }
}
