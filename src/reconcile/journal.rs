//! The rack's history as the loop keeps it: the events a reconcile records, each an INFO log
//! line, kept in memory within the retention and written next to the status document
//! (`<params>.history.jsonl`, JSON Lines, oldest first) by the lease holder only, under its
//! fence and, in S3, over the version it last read or wrote. A controller that finds it
//! written by another since appends its events to theirs, unless theirs carry a newer fence
//! (another controller is the writer now: nothing is written).

use std::sync::Arc;
use std::time::SystemTime;

use tracing::{info, warn};

use super::document::StatusDocument;
use crate::history::{self, Event, Log, Retention};
use crate::lease::Fence;
use crate::metrics::Metrics;
use crate::store::{Location, Store, StoreError};

/// Events recorded but never written are kept at most this many (a store that keeps refusing).
const MAX_UNSAVED: usize = 10_000;

/// The history, shared by the loop (which records and writes it) and `GET /events`.
pub type JournalHandle = Arc<tokio::sync::Mutex<Journal>>;

pub struct Journal {
    /// What is stored, as last read or written, and the events recorded since.
    log: Log,
    /// Events recorded since the last write.
    unsaved: Vec<Event>,
    /// The stored history was read since this controller started or took the lease over.
    loaded: bool,
    /// Where it is kept (none: in memory only, with the status file turned off).
    doc: Option<StatusDocument>,
    /// What it is read and written through.
    store: Store,
    /// The newest fence any stored event was written under, as last read or written: a
    /// newer one than this controller's means another controller is the writer now.
    stored_fence: Option<u64>,
    retention: Retention,
    /// Writes made.
    writes: u64,
}

impl Journal {
    pub fn new(at: Option<Location>, store: Store, retention: Retention) -> Self {
        Journal {
            log: Log::default(),
            unsaved: Vec::new(),
            loaded: at.is_none(),
            doc: at.map(|at| StatusDocument::named("history", at, store.clone())),
            store,
            stored_fence: None,
            retention,
            writes: 0,
        }
    }

    /// A journal on the same stored history with nothing of this one's: to read it without
    /// holding this one.
    pub fn reader(&self) -> Journal {
        Journal::new(self.location().cloned(), self.store.clone(), self.retention)
    }

    /// Forgets the events recorded and not written: this controller is no longer the
    /// writer (they were logged).
    pub fn discard_unsaved(&mut self) {
        self.unsaved.clear();
    }

    pub fn handle(self) -> JournalHandle {
        Arc::new(tokio::sync::Mutex::new(self))
    }

    pub fn location(&self) -> Option<&Location> {
        self.doc.as_ref().map(StatusDocument::location)
    }

    /// Keeps an event (written by the next [`Self::flush`]).
    pub fn keep(&mut self, e: Event, now: SystemTime) {
        if self.unsaved.len() >= MAX_UNSAVED {
            self.unsaved.remove(0);
        }
        self.unsaved.push(e.clone());
        self.log.push(e);
        self.log.prune(self.retention, now);
    }

    /// The stored history is read again before the next write or query (after a takeover:
    /// the previous holder's).
    pub fn reload(&mut self) {
        self.loaded = self.doc.is_none();
    }

    /// Reads the stored history; the events recorded since the last write stay on top.
    pub async fn load(&mut self, now: SystemTime) -> Result<(), String> {
        let Some(doc) = self.doc.as_mut() else {
            return Ok(());
        };
        let text = doc.read().await.map_err(|e| failed(doc.location(), e))?;
        let (mut log, skipped) = Log::parse(text.as_deref().unwrap_or_default());
        if skipped > 0 {
            warn!(history = %doc.location(), lines = skipped, "skipped lines of the history that are not events (written by another version?); they are dropped at the next write");
        }
        self.stored_fence = log.newest_fence();
        append_new(&mut log, &self.unsaved);
        log.prune(self.retention, now);
        self.log = log;
        self.loaded = true;
        Ok(())
    }

    /// Writes the events recorded since the last write, appended to what is stored (read
    /// first when it was not yet), within the retention; `under` the lease holder's fence.
    /// Nothing to write, nothing written.
    pub async fn flush(
        &mut self,
        under: Option<(Fence, &Metrics)>,
        now: SystemTime,
    ) -> Result<(), String> {
        if self.unsaved.is_empty() {
            return Ok(());
        }
        if self.doc.is_none() {
            self.unsaved.clear();
            return Ok(());
        }
        if !self.loaded {
            self.load(now).await?;
        }
        let mine = under.map(|(f, _)| f.fence);
        if let (Some(mine), Some(stored)) = (mine, self.stored_fence) {
            if stored > mine {
                self.unsaved.clear();
                self.loaded = false;
                return Err(format!(
                    "history: events were written under fence {stored}, newer than this controller's {mine}: another controller is the writer now; not writing (the events were logged)"
                ));
            }
        }
        self.log.prune(self.retention, now);
        let body = self.log.to_text();
        let (unsaved, retention) = (&self.unsaved, self.retention);
        let mut rebased = None;
        let mut superseded = false;
        let rebase = |theirs: Option<&str>, mine: u64| {
            let (mut log, _) = Log::parse(theirs.unwrap_or_default());
            if let Some(newer) = log.newest_fence().filter(|f| *f > mine) {
                superseded = true;
                return Err(format!(
                    "history: events were written under fence {newer}, newer than this controller's {mine}: another controller is the writer now; not writing"
                ));
            }
            append_new(&mut log, unsaved);
            log.prune(retention, now);
            let text = log.to_text();
            rebased = Some(log);
            Ok(text)
        };
        let Some(doc) = self.doc.as_mut() else {
            return Ok(());
        };
        match doc.write_over(&body, under, rebase).await {
            Ok(()) => {
                if let Some(log) = rebased {
                    self.log = log;
                }
                self.unsaved.clear();
                self.writes += 1;
                self.stored_fence = self.stored_fence.max(mine);
                Ok(())
            }
            Err(e) => {
                // Not known what is stored now: read it again before the next write.
                self.loaded = false;
                if superseded {
                    // Another controller writes the history now: these events are its
                    // to record (they were logged here).
                    self.unsaved.clear();
                }
                Err(e)
            }
        }
    }

    /// The events kept that match: since a time, about a parameter (oldest first).
    pub fn select(&self, since: Option<SystemTime>, param: Option<&str>) -> Vec<Event> {
        history::select(self.log.events(), since, param)
    }

    /// Events recorded and not yet written.
    pub fn has_unsaved(&self) -> bool {
        !self.unsaved.is_empty()
    }

    /// Whether the stored history was read (or there is none to read).
    pub fn loaded(&self) -> bool {
        self.loaded
    }

    pub fn len(&self) -> usize {
        self.log.len()
    }

    /// The writes of the history made so far.
    pub fn writes(&self) -> u64 {
        self.writes
    }

    /// The size of the history kept (JSON Lines, bytes).
    pub fn bytes(&self) -> usize {
        self.log.bytes()
    }

    pub fn is_empty(&self) -> bool {
        self.log.is_empty()
    }
}

/// Appends the events not already among the log's newest (written by a write whose answer
/// was lost, and read back).
fn append_new(log: &mut Log, events: &[Event]) {
    let within = events.len() + 8;
    for e in events {
        if !log.has_recent(e, within) {
            log.push(e.clone());
        }
    }
}

/// Logs an event as the INFO line every event is.
pub fn log_event(e: &Event) {
    let params = e.params.join(",");
    match e.duration_seconds {
        Some(took) => info!(event = %e.kind, parameters = %params, reason = %e.reason,
            actor = %e.actor, duration_seconds = took, "{}", e.message),
        None => info!(event = %e.kind, parameters = %params, reason = %e.reason,
            actor = %e.actor, "{}", e.message),
    }
}

fn failed(at: &Location, e: StoreError) -> String {
    format!("history {at}: {e}")
}
