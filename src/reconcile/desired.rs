//! The desired state: the params file read (only when it changed), checked against the
//! running template, and what is forgotten when it changes.

use super::*;

impl Reconciler {
    /// Reads the params file. A file that parses is held against the running template once
    /// the rack is observed ([`Self::accept`]); one that does not is rejected at once.
    pub(super) async fn reload_params(&mut self) {
        let at = &self.settings.params_file;
        let fetched = self.store.read(at, self.params_etag.as_deref()).await;
        let loaded = match fetched {
            Ok(Fetch::Unchanged) => return,
            Ok(Fetch::Text { text, etag }) => {
                self.params_etag = etag;
                params::parse(&at.to_string(), &text)
            }
            Ok(Fetch::Missing) => Err(ParamsError::Missing {
                path: at.to_string(),
            }),
            Err(e) => Err(ParamsError::Unreadable {
                path: at.to_string(),
                reason: e.to_string(),
            }),
        };
        if loaded.is_err() {
            self.params_etag = None;
        }
        match loaded {
            Ok(d) => {
                if self.candidate.as_ref() != Some(&d) {
                    // Keys only: a value may be a secret until the template says otherwise.
                    let keys: Vec<&String> = d.values.keys().collect();
                    info!(file = %self.settings.params_file, parameters = ?keys, version = ?d.version,
                        "params file read");
                }
                self.candidate = Some(d);
            }
            Err(e) => {
                self.candidate = None;
                self.reject(e);
            }
        }
    }

    /// Holds what the params file holds against what the running template declares: it
    /// becomes the desired state, or is rejected and the last valid desired state is kept.
    pub(super) fn accept(&mut self, declared: &Declarations) {
        let Some(candidate) = self.candidate.clone() else {
            return;
        };
        match candidate.check(declared) {
            Ok(()) => {
                if self.params_error.is_some() || self.desired.as_ref() != Some(&candidate) {
                    info!(file = %self.settings.params_file, "params file accepted");
                }
                self.desired = Some(candidate);
                self.params_error = None;
                self.metrics.params_valid(true);
                self.show_params_file();
            }
            Err(e) => self.reject(e),
        }
    }

    pub(super) fn reject(&mut self, e: ParamsError) {
        if self.params_error.as_ref() != Some(&e) {
            self.note_desired_invalid(&e);
            self.metrics.params_error(e.kind());
            if self.desired.is_some() {
                warn!(error = %e, "params file rejected; keeping the last valid desired state");
            } else {
                warn!(error = %e, "params file rejected; no valid desired state yet, nothing will be changed");
            }
        }
        self.params_error = Some(e);
        self.metrics.params_valid(false);
        self.show_params_file();
    }

    pub(super) fn show_params_file(&mut self) {
        let file = ParamsFileStatus {
            path: self.settings.params_file.to_string(),
            valid: self.params_error.is_none(),
            error: self.params_error.as_ref().map(ToString::to_string),
        };
        self.status.update(|s| s.params_file = file);
    }

    /// Parameters no longer in the params file are no longer managed: they leave the status,
    /// the metrics (no alert fires for ever on a parameter nobody manages) and the memory.
    pub(super) fn forget_unmanaged(&mut self, desired: &DesiredParams) {
        let managed: BTreeSet<String> = intents(desired).into_iter().map(|(k, _)| k).collect();
        let known: BTreeSet<String> = self
            .status
            .get()
            .parameters
            .iter()
            .map(|p| p.name.clone())
            .chain(self.memory.keys().cloned())
            .collect();
        for name in known.difference(&managed) {
            let was_shown = self.status.update(|s| {
                let before = s.parameters.len();
                s.parameters.retain(|p| p.name != *name);
                before != s.parameters.len()
            });
            if was_shown {
                self.note_unmanaged(name);
            }
            self.memory.remove(name);
            self.metrics.remove_parameter(name);
            if name == VERSION_PARAM {
                self.metrics.set_downgrade_blocked(false);
            }
        }
    }

    /// A new desired value is a new intent: forget the backoff and convergence of the old.
    pub(super) fn forget_changed_intents(&mut self, desired: &DesiredParams, now: SystemTime) {
        let mut changes = Vec::new();
        for (name, value) in intents(desired) {
            let mem = mem_of(&mut self.memory, &name);
            if mem.desired.as_deref() != Some(value.as_str()) {
                let from = mem.desired.clone();
                mem.new_intent(Some(value.clone()), now);
                changes.push((name, from, value));
            }
        }
        if !changes.is_empty() {
            let generation = self.status.update(|s| {
                s.controller.generation += 1;
                s.controller.generation
            });
            self.note_desired_changed(&changes, generation);
        }
    }
}
