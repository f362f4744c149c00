//! The loop's events ([`crate::history`]): what each step notes as it goes, what the
//! decisions mean against what was recorded of each parameter before, and, at the end of
//! the run, every event logged at INFO and kept (by the lease holder, or with no lease) in
//! the history next to the status document.

use super::*;
use crate::history::{self, Actor, Cause, Event, Kind};
use crate::lease::{Fence, LeaseView};

impl Reconciler {
    /// This controller, as the actor of its events.
    pub(super) fn me(&self) -> Actor {
        Actor::Controller {
            holder: self.holder.clone(),
            fence: self.fence,
        }
    }

    /// Notes an event of this run; it is recorded at the run's end.
    pub(super) fn note(&mut self, e: Event) {
        self.events.push(e);
    }

    /// An event of this controller's, now.
    pub(super) fn event(&self, kind: Kind, reason: &str, message: String) -> Event {
        Event::new(self.clock.now(), kind, reason, message, self.me())
    }

    /// The history the loop keeps (for `GET /events`).
    pub fn journal(&self) -> journal::JournalHandle {
        self.journal.clone()
    }

    /// What `d` means for the history against what was recorded of the parameter before
    /// (its events, what to record now, a change converged); a change of the desired value
    /// that converged is measured, on the lease holder.
    pub(super) fn derive_events(
        &mut self,
        d: &Decision,
        (method, own_update, standby): (&str, bool, bool),
        now: SystemTime,
    ) -> history::Derived {
        let prev = self
            .status
            .read(|s| s.parameter(&d.param).and_then(|p| p.recorded.clone()));
        let ctx = history::Context {
            now,
            me: self.me(),
            own_update,
        };
        let mut derived = history::derive(prev.as_ref(), d, &ctx);
        // A write of this run for the parameter: the change is the controller's doing.
        let wrote = self
            .written
            .iter()
            .any(|e| e.kind == Kind::WriteMade && e.concerns(&d.param));
        if let Some(change) = derived.seen.as_mut().and_then(|s| s.change.as_mut()) {
            change.by_controller |= wrote;
        }
        if let Some((change, took)) = &derived.converged {
            if change.cause == Cause::Desired && !standby {
                self.metrics.converged_after(&d.param, method, *took, now);
            }
        }
        derived
    }

    /// The run's events in the order they happened: what the decisions found, then the
    /// write that answered them, then what followed.
    pub(super) fn note_run(&mut self, found: Vec<Event>, later: Vec<Event>) {
        let written = std::mem::take(&mut self.written);
        self.events.extend(found);
        self.events.extend(written);
        self.events.extend(later);
    }

    /// The desired values that changed (`from` absent: newly managed), as one event.
    pub(super) fn note_desired_changed(
        &mut self,
        changes: &[(String, Option<String>, String)],
        generation: u64,
    ) {
        let message = changes
            .iter()
            .map(|(k, from, to)| match from {
                Some(from) => format!("{k}: {from} → {to}"),
                None => format!("{k}: {to} (newly managed)"),
            })
            .collect::<Vec<_>>()
            .join(", ");
        let mut e = self
            .event(
                Kind::DesiredChanged,
                "DesiredChanged",
                format!("params file {}: {message}", self.settings.params_file),
            )
            .params(changes.iter().map(|(k, _, _)| k.clone()))
            .detail("generation", generation);
        if let Some(etag) = &self.params_etag {
            e = e.detail("etag", etag);
        }
        self.note(e);
    }

    /// A parameter left the params file: no longer managed.
    pub(super) fn note_unmanaged(&mut self, name: &str) {
        let e = self
            .event(
                Kind::DesiredChanged,
                "NotManaged",
                format!(
                    "params file {}: {name} removed: not managed any more",
                    self.settings.params_file
                ),
            )
            .param(name);
        self.note(e);
    }

    /// The params file was refused (once per distinct error; not again after a restart that
    /// finds the same error the status document recorded).
    pub(super) fn note_desired_invalid(&mut self, e: &ParamsError) {
        let recorded = self.status.read(|s| s.params_file.error.clone());
        if recorded.as_deref() == Some(e.to_string().as_str()) {
            return;
        }
        let kept = if self.desired.is_some() {
            "the last valid desired state is kept"
        } else {
            "there is no valid desired state yet: nothing is changed"
        };
        let event = self
            .event(
                Kind::DesiredInvalid,
                "ParamsInvalid",
                format!("{e}; {kept}"),
            )
            .detail("error", e.kind());
        self.note(event);
    }

    /// A write was made.
    pub(super) fn note_write(
        &mut self,
        operation: &str,
        params: &[&str],
        message: String,
    ) -> &mut Event {
        let e = self
            .event(Kind::WriteMade, operation, message)
            .params(params.iter().copied());
        self.written.push(e);
        let last = self.written.len() - 1;
        &mut self.written[last]
    }

    /// A write failed (a write the lease or a condition refused is no failure: nothing).
    pub(super) fn note_write_failed(
        &mut self,
        operation: &str,
        params: &[&str],
        d_reason: &str,
        message: &str,
    ) {
        if history::NOT_WRITTEN.contains(&d_reason) {
            return;
        }
        let e = self
            .event(Kind::WriteFailed, operation, message.to_string())
            .params(params.iter().copied());
        self.written.push(e);
    }

    /// The lease changed hands since the last look.
    pub(super) fn lease_events(&mut self, view: &LeaseView) {
        match (self.leading, view.leader) {
            (false, true) => {
                self.fence = Some(view.fence);
                let (kind, message) = match self.other_holder.take() {
                    Some(other) => (
                        Kind::LeaseTakenOver,
                        format!(
                            "took the lease over from {other}, whose lease lapsed (fence {})",
                            view.fence
                        ),
                    ),
                    None => (
                        Kind::LeaseAcquired,
                        format!("acquired the lease (fence {})", view.fence),
                    ),
                };
                let e = self
                    .event(kind, "LeaseHeld", message)
                    .detail("fence", view.fence);
                self.note(e);
            }
            (true, false) => {
                let e = self.event(
                    Kind::LeaseLost,
                    "LeaseLost",
                    format!("lost the lease: {}", standby_message(view)),
                );
                self.note(e);
                self.fence = None;
                self.other_holder = self.other(view);
            }
            // The holder seen last (none once it released the lease).
            (false, false) => self.other_holder = self.other(view),
            // Held on: the same fence; lost and taken again between two looks: a new one.
            (true, true) => {
                if self.fence != Some(view.fence) {
                    let message = format!("acquired the lease again (fence {})", view.fence);
                    self.fence = Some(view.fence);
                    let e = self
                        .event(Kind::LeaseAcquired, "LeaseHeld", message)
                        .detail("fence", view.fence);
                    self.note(e);
                }
            }
        }
    }

    /// The other controller that holds the lease, if one does.
    fn other(&self, view: &LeaseView) -> Option<String> {
        view.holder
            .clone()
            .filter(|h| !h.is_empty() && *h != self.holder)
    }

    /// Tasks moved between exec paths since the last exec readiness event.
    pub(super) fn exec_events(&mut self) {
        let paths = self.status.read(|s| {
            let exec = s.exec.as_ref().filter(|e| e.error.is_none())?;
            (exec.paths != s.controller.exec_paths)
                .then(|| (exec.paths.clone(), s.controller.exec_paths.clone()))
        });
        let Some((now_paths, before)) = paths else {
            return;
        };
        let moved: Vec<String> = now_paths
            .keys()
            .chain(before.keys())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter_map(|path| {
                let (a, b) = (
                    before.get(path).copied().unwrap_or(0),
                    now_paths.get(path).copied().unwrap_or(0),
                );
                (a != b).then(|| format!("{path} {a} → {b}"))
            })
            .collect();
        let mut e = self.event(
            Kind::ExecReadinessChanged,
            "ExecPathsChanged",
            format!("running tasks by exec path: {}", moved.join(", ")),
        );
        e = e.param(ECS_EXEC.name);
        for (path, n) in &now_paths {
            e = e.detail(path, n);
        }
        self.note(e);
        self.status.update(|s| s.controller.exec_paths = now_paths);
    }

    /// Records the events of this run: each an INFO log line and a count; kept in the history
    /// and written (one write at most) by the lease holder, or with no lease. A standby's are
    /// only logged: the holder keeps the rack's history.
    pub(super) async fn commit_events(&mut self) {
        let mut events = std::mem::take(&mut self.events);
        // Writes of a run that recorded nothing (it timed out, say) are not lost.
        events.append(&mut self.written);
        let events = history::coalesce(events);
        // Whether this controller holds the lease now: a run that decided nothing (the rack
        // unobservable, the params file refused) did not look at it on the way.
        let held = self
            .lease
            .as_ref()
            .map(|l| l.view())
            .map(|v| (v.leader, v.fence));
        let keep = held.is_none_or(|(leader, _)| leader);
        let holding = held.filter(|(leader, _)| *leader).map(|(_, fence)| fence);
        let now = self.clock.now();
        let journal = self.journal.clone();
        let mut journal = journal.lock().await;
        if !keep {
            // A standby sees what the holder does; the holder records it. Shown at debug only,
            // not counted, and nothing of its own is kept for a later write.
            for e in &events {
                tracing::debug!(event = %e.kind, parameters = %e.params.join(","), "{}", e.message);
            }
            journal.discard_unsaved();
            return;
        }
        for mut e in events {
            if let Actor::Controller { fence, .. } = &mut e.actor {
                *fence = holding.or(*fence);
            }
            self.metrics.event(e.kind);
            journal::log_event(&e);
            journal.keep(e, now);
        }
        if !journal.has_unsaved() {
            return;
        }
        let fence = match self.write_fence().await {
            Ok(f) => f,
            Err(e) => {
                warn!(error = %e, "not writing the history: not the lease holder");
                return;
            }
        };
        let under = fence.map(|f| (f, &self.metrics));
        if let Err(e) = journal.flush(under, now).await {
            warn!(error = %e, "cannot write the history; it is written with the next event");
        }
    }

    /// The fence a write of the controller's documents is made under: the one its last
    /// write took, while good, else the lease renewed now. None without a lease.
    pub(super) async fn write_fence(&mut self) -> Result<Option<Fence>, String> {
        let Some(lease) = &self.lease else {
            return Ok(None);
        };
        if let Some(f) = self.held.filter(|f| !f.deadline.passed()) {
            return Ok(Some(f));
        }
        let f = lease.fence().await.map_err(|e| e.to_string())?;
        self.held = Some(f);
        Ok(Some(f))
    }
}
