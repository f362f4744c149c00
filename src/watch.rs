//! Watches the params file and wakes the reconcile loop when it changes.
//!
//! The directory is watched rather than the file, so editors that save by writing a new file
//! and renaming it over the old one, and deleting and re-creating the file, keep working.
//! Events settle for a debounce period; bursts coalesce into one wake-up. The loop re-reads
//! the file on every resync anyway, so a lost event only delays a change.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{EventKind, RecommendedWatcher, RecursiveMode};
use notify_debouncer_full::{new_debouncer, DebounceEventResult, Debouncer, RecommendedCache};
use thiserror::Error;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::reconcile::Trigger;

#[derive(Debug, Error)]
#[error("cannot watch {dir} for changes to the params file: {source}")]
pub struct WatchError {
    dir: String,
    source: notify::Error,
}

/// Keeps the watch alive; dropping it stops watching.
pub struct ParamsWatcher {
    _debouncer: Debouncer<RecommendedWatcher, RecommendedCache>,
}

/// Starts watching `file`; each settled change sends [`Trigger::ParamsChanged`] (dropped when
/// one is already pending).
pub fn watch_params(
    file: &Path,
    debounce: Duration,
    tx: mpsc::Sender<Trigger>,
) -> Result<ParamsWatcher, WatchError> {
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name: OsString = file.file_name().map(OsString::from).unwrap_or_default();
    let handler = move |res: DebounceEventResult| match res {
        Ok(events) => {
            // Reads (the controller's own included) are access events: only changes count.
            let changed = events.iter().any(|e| {
                !matches!(e.event.kind, EventKind::Access(_))
                    && e.event
                        .paths
                        .iter()
                        .any(|p| p.file_name() == Some(name.as_os_str()))
            });
            if changed {
                debug!("params file changed");
                // Full means a wake-up is already pending: the loop will read the latest file.
                let _ = tx.try_send(Trigger::ParamsChanged);
            }
        }
        Err(errors) => {
            for e in errors {
                warn!(error = %e, "params file watcher error; changes are still picked up at the next resync");
            }
        }
    };
    let mut debouncer = new_debouncer(debounce, None, handler).map_err(|source| WatchError {
        dir: dir.display().to_string(),
        source,
    })?;
    debouncer
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|source| WatchError {
            dir: dir.display().to_string(),
            source,
        })?;
    Ok(ParamsWatcher {
        _debouncer: debouncer,
    })
}
