//! Where the params file and the status document live: a local file, or an object in S3
//! (the rack's `Settings` bucket, encrypted with the rack's KMS key; S3 encrypts and decrypts
//! with the bucket's default key, so the controller only needs the key's permissions).
//!
//! An S3 params object is polled with conditional requests: an unchanged object costs one
//! `GetObject` answered `304 Not Modified`. The loop reads the latest copy the poller holds.

use std::path::Path;
use std::time::Duration;

use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client as S3Client;
use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::model::Trigger;
use crate::rack::sdk::map_error;
use crate::rack::RackError;
pub use crate::settings::Location;

/// A failed read or write of a document.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("{location}: {reason}")]
    Io { location: String, reason: String },
    #[error(transparent)]
    Aws(#[from] RackError),
    #[error("{location}: an S3 location needs the AWS SDK; this command has none configured")]
    NoS3 { location: String },
    #[error("{source}; S3 also answers AccessDenied for an object that does not exist when the role may not list the bucket: create {location} (`rack-reconciler set KEY=VALUE`) or grant s3:GetObject on it")]
    Denied { location: String, source: RackError },
    #[error(
        "{location} changed while it was being edited (or this write was retried after it had landed): check it with `rack-reconciler get`, then run the command again"
    )]
    Conflict { location: String },
}

/// What a read found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetch {
    /// The same version as the ETag given.
    Unchanged,
    Missing,
    Text {
        text: String,
        etag: Option<String>,
    },
}

/// Reads and writes documents: local files always, S3 objects with a client.
#[derive(Clone, Default)]
pub struct Store {
    s3: Option<S3Client>,
    metrics: Metrics,
}

impl Store {
    pub fn local() -> Store {
        Store::default()
    }

    /// Writes made under a fence are checked against it right before each attempt.
    pub fn with_s3(client: S3Client, metrics: Metrics) -> Store {
        let fence = crate::lease::fence::FenceInterceptor;
        let client = S3Client::from_conf(client.config().to_builder().interceptor(fence).build());
        Store {
            s3: Some(client),
            metrics,
        }
    }

    /// The document at `at`; with `etag`, an unchanged document is `Unchanged` (S3: one
    /// conditional request answered 304).
    pub async fn read(&self, at: &Location, etag: Option<&str>) -> Result<Fetch, StoreError> {
        match at {
            Location::File(path) => match std::fs::read_to_string(path) {
                Ok(text) => Ok(Fetch::Text { text, etag: None }),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Fetch::Missing),
                Err(e) => Err(StoreError::Io {
                    location: at.to_string(),
                    reason: e.to_string(),
                }),
            },
            Location::S3 { bucket, key } => self.get_object(at, bucket, key, etag).await,
        }
    }

    /// Replaces the document at `at` whole (a file: a temporary file renamed over it); the
    /// new version's ETag (S3).
    pub async fn write(&self, at: &Location, text: &str) -> Result<Option<String>, StoreError> {
        self.put(at, text, None).await
    }

    /// Replaces the document at `at` only if it is still the version read (`read`: its ETag,
    /// or `None` when there was none); S3 refuses the write otherwise (`Conflict`). Local
    /// files are replaced as [`Store::write`] does. The new version's ETag (S3).
    pub async fn write_if_unchanged(
        &self,
        at: &Location,
        text: &str,
        read: Option<&str>,
    ) -> Result<Option<String>, StoreError> {
        self.put(at, text, Some(read)).await
    }

    async fn put(
        &self,
        at: &Location,
        text: &str,
        unless_changed: Option<Option<&str>>,
    ) -> Result<Option<String>, StoreError> {
        match at {
            Location::File(path) => {
                write_file(path, text)
                    .map(|()| None)
                    .map_err(|e| StoreError::Io {
                        location: at.to_string(),
                        reason: e.to_string(),
                    })
            }
            Location::S3 { bucket, key } => {
                self.put_object(at, bucket, key, text, unless_changed).await
            }
        }
    }

    fn s3(&self, at: &Location) -> Result<&S3Client, StoreError> {
        self.s3.as_ref().ok_or_else(|| StoreError::NoS3 {
            location: at.to_string(),
        })
    }

    async fn get_object(
        &self,
        at: &Location,
        bucket: &str,
        key: &str,
        etag: Option<&str>,
    ) -> Result<Fetch, StoreError> {
        let sent = self
            .s3(at)?
            .get_object()
            .bucket(bucket)
            .key(key)
            .set_if_none_match(etag.map(String::from))
            .send()
            .await;
        let out = match sent {
            Ok(out) => out,
            Err(SdkError::ServiceError(se)) if se.raw().status().as_u16() == 304 => {
                self.metrics.api_call("s3", "GetObject", "not_modified");
                return Ok(Fetch::Unchanged);
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
                self.metrics.api_call("s3", "GetObject", "not_found");
                return Ok(Fetch::Missing);
            }
            Err(e) => {
                let err = map_error("s3", "GetObject", &at.to_string(), &e);
                self.metrics.api_call("s3", "GetObject", err.outcome());
                if err.outcome() == "access_denied" {
                    return Err(StoreError::Denied {
                        location: at.to_string(),
                        source: err,
                    });
                }
                return Err(err.into());
            }
        };
        self.metrics.api_call("s3", "GetObject", "success");
        let etag = out.e_tag.clone();
        let bytes = out.body.collect().await.map_err(|e| StoreError::Io {
            location: at.to_string(),
            reason: format!("reading the object failed: {e}"),
        })?;
        let text = String::from_utf8(bytes.to_vec()).map_err(|_| StoreError::Io {
            location: at.to_string(),
            reason: "not UTF-8 text".into(),
        })?;
        Ok(Fetch::Text { text, etag })
    }

    async fn put_object(
        &self,
        at: &Location,
        bucket: &str,
        key: &str,
        text: &str,
        unless_changed: Option<Option<&str>>,
    ) -> Result<Option<String>, StoreError> {
        let (if_match, if_none_match) = match unless_changed {
            None => (None, None),
            Some(Some(etag)) => (Some(etag.to_string()), None),
            Some(None) => (None, Some("*".to_string())),
        };
        let content_type = if key.ends_with(".json") {
            "application/json"
        } else {
            "application/yaml"
        };
        let sent = self
            .s3(at)?
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_type(content_type)
            .set_if_match(if_match)
            .set_if_none_match(if_none_match)
            .body(ByteStream::from(text.as_bytes().to_vec()))
            .send()
            .await;
        match sent {
            Ok(out) => {
                self.metrics.api_call("s3", "PutObject", "success");
                Ok(out.e_tag)
            }
            // 412: the object changed; 409: a concurrent conditional write won the race.
            Err(SdkError::ServiceError(se)) if matches!(se.raw().status().as_u16(), 409 | 412) => {
                self.metrics.api_call("s3", "PutObject", "condition_failed");
                Err(StoreError::Conflict {
                    location: at.to_string(),
                })
            }
            Err(e) => {
                let err = map_error("s3", "PutObject", &at.to_string(), &e);
                self.metrics.api_call("s3", "PutObject", err.outcome());
                Err(err.into())
            }
        }
    }
}

/// Writes a file atomically: a temporary file in the same directory, then a rename, so
/// readers never see half a file.
pub fn write_file(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// Polls the object at `at` every `every` with a conditional request (one `GetObject`,
/// answered 304 while it is unchanged) until `shutdown`, and wakes the loop through `wake`
/// when a new version appears (the loop then reads it). A failed poll is retried at the next.
pub async fn watch_object(
    store: Store,
    at: Location,
    every: Duration,
    wake: mpsc::Sender<Trigger>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut etag = None;
    let mut first = true;
    let mut failing = false;
    loop {
        let polled = store.read(&at, etag.as_deref()).await;
        if polled.is_ok() {
            failing = false;
        }
        match polled {
            Ok(Fetch::Unchanged) => debug!(params = %at, "params unchanged"),
            Ok(fetched) => {
                let new = match fetched {
                    Fetch::Text { etag, .. } => etag,
                    _ => None,
                };
                if !first && new != etag {
                    info!(params = %at, "params changed");
                    // Full means a wake-up is already pending: the loop reads the latest.
                    let _ = wake.try_send(Trigger::ParamsChanged);
                }
                etag = new;
            }
            // Once per run of failures: the loop's own read reports it in the status.
            Err(e) if !failing => {
                failing = true;
                warn!(params = %at, error = %e, "polling the params failed; retrying at every poll");
            }
            Err(e) => debug!(params = %at, error = %e, "polling the params failed again"),
        }
        first = false;
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}
