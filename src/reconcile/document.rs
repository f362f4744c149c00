//! The status document: the controller's status and what must survive a restart or a
//! takeover (its rollouts, stack update, backoffs). With a lease it carries the fence it was
//! written under, is written only under that fence (every attempt checked against the lease's
//! deadline), and, in S3, only over the version this controller last read or wrote
//! (`If-Match`, or `If-None-Match` when there was none): a controller paused past its lease
//! cannot overwrite what its successor wrote down.

use tracing::warn;

use crate::lease::{fence, Fence};
use crate::metrics::Metrics;
use crate::status::Status;
use crate::store::{Fetch, Location, Store, StoreError};

pub struct StatusDocument {
    /// What the document is, for errors: `status document`, `history`.
    what: &'static str,
    at: Location,
    store: Store,
    /// The version last read or written (an S3 ETag): `None` not read yet, `Some(None)`
    /// there was none.
    version: Option<Option<String>>,
}

/// The fence a document was written under, if it says.
pub fn fence_of(text: &str) -> Option<u64> {
    serde_json::from_str::<Status>(text)
        .ok()
        .and_then(|s| s.controller.fence)
}

impl StatusDocument {
    pub fn new(at: Location, store: Store) -> Self {
        Self::named("status document", at, store)
    }

    /// A document other than the status, `what` naming it in errors.
    pub fn named(what: &'static str, at: Location, store: Store) -> Self {
        StatusDocument {
            what,
            at,
            store,
            version: None,
        }
    }

    pub fn location(&self) -> &Location {
        &self.at
    }

    /// The document's text, if there is one; its version is remembered for the next write.
    pub async fn read(&mut self) -> Result<Option<String>, StoreError> {
        match self.store.read(&self.at, None).await? {
            Fetch::Text { text, etag } => {
                self.version = Some(etag);
                Ok(Some(text))
            }
            Fetch::Missing => {
                self.version = Some(None);
                Ok(None)
            }
            Fetch::Unchanged => Ok(None),
        }
    }

    /// Writes `body`: without a lease, as it is; with one, under `fence`, over the version
    /// last seen. A document someone else wrote since is overwritten only when it was written
    /// under an older fence than this controller's (a paused former holder's); one written
    /// under a newer fence means this controller is no longer the writer, and nothing is
    /// written.
    pub async fn write(
        &mut self,
        body: &str,
        under: Option<(Fence, &Metrics)>,
    ) -> Result<(), String> {
        let at = self.at.clone();
        self.write_over(body, under, |theirs, mine| {
            let written = theirs.and_then(fence_of);
            if written.is_some_and(|w| w > mine) {
                return Err(format!(
                    "status document {at}: written under fence {}, newer than this controller's {mine}: another controller is the writer now; not overwriting it",
                    written.unwrap_or_default()
                ));
            }
            warn!(status = %at, written = ?written, fence = mine,
                "the status document was changed by another writer (under an older fence, or none): overwriting it");
            Ok(body.to_string())
        })
        .await
    }

    /// Writes `body` as [`Self::write`] does; when someone else wrote the document since it
    /// was last seen, `rebase` is given what they wrote (and this controller's fence) and
    /// returns what to write over it instead, or why nothing may be written.
    pub async fn write_over(
        &mut self,
        body: &str,
        under: Option<(Fence, &Metrics)>,
        rebase: impl FnOnce(Option<&str>, u64) -> Result<String, String>,
    ) -> Result<(), String> {
        let Some((f, metrics)) = under else {
            let version = self.store.write(&self.at, body).await;
            return self.remember(version);
        };
        if self.at.as_file().is_some() {
            // A local file has one writer, on this machine: the fence check is the guard.
            let version = fence::scoped(f, metrics.clone(), self.store.write(&self.at, body)).await;
            return self.remember(version);
        }
        fence::scoped(
            f,
            metrics.clone(),
            self.write_over_seen(body, f.fence, rebase),
        )
        .await
    }

    async fn write_over_seen(
        &mut self,
        body: &str,
        mine: u64,
        rebase: impl FnOnce(Option<&str>, u64) -> Result<String, String>,
    ) -> Result<(), String> {
        if self.version.is_none() {
            self.read().await.map_err(|e| self.failed(e))?;
        }
        let seen = self.version.clone().flatten();
        match self
            .store
            .write_if_unchanged(&self.at, body, seen.as_deref())
            .await
        {
            Err(StoreError::Conflict { .. }) => {}
            other => return self.remember(other),
        }
        // Written by someone else since: what is there now?
        let theirs = self.read().await.map_err(|e| self.failed(e))?;
        let body = rebase(theirs.as_deref(), mine)?;
        let seen = self.version.clone().flatten();
        let version = self
            .store
            .write_if_unchanged(&self.at, &body, seen.as_deref())
            .await;
        self.remember(version)
    }

    fn remember(&mut self, written: Result<Option<String>, StoreError>) -> Result<(), String> {
        match written {
            Ok(version) => {
                self.version = Some(version);
                Ok(())
            }
            Err(e) => {
                // What is stored now is not known: read it again before the next write.
                self.version = None;
                Err(self.failed(e))
            }
        }
    }

    fn failed(&self, e: StoreError) -> String {
        format!("{} {}: {e}", self.what, self.at)
    }
}
