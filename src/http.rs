//! HTTP endpoints: `/metrics` (Prometheus text), `/status` (JSON), `/events` (the rack's
//! history, JSON), `/healthz`, `/readyz`.

use std::future::Future;
use std::time::{Duration, SystemTime};

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;

use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::reconcile::journal::JournalHandle;
use crate::status::{Status, StatusHandle};

#[derive(Clone)]
struct AppState {
    status: StatusHandle,
    metrics: Metrics,
    journal: JournalHandle,
    clock: Clock,
    started: SystemTime,
    /// Older observations make `/readyz` fail and `/status` say `observationStale`.
    stale_after: Duration,
}

impl AppState {
    /// The status as served: with the staleness of the last observation judged now, since a
    /// stuck loop cannot say so itself.
    fn status(&self) -> Status {
        let mut st = self.status.get();
        st.observation_stale = st.stale(self.clock.now(), self.started, self.stale_after);
        st
    }
}

/// What the endpoints serve.
#[derive(Clone)]
pub struct Served {
    pub status: StatusHandle,
    pub metrics: Metrics,
    /// The rack's history, for `/events`.
    pub journal: JournalHandle,
    /// Older observations make `/readyz` fail and `/status` say `observationStale`.
    pub stale_after: Duration,
}

pub fn router(served: Served) -> Router {
    let Served {
        status,
        metrics,
        journal,
        stale_after,
    } = served;
    let clock = Clock::new();
    let state = AppState {
        status,
        metrics,
        journal,
        clock,
        started: clock.now(),
        stale_after,
    };
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/status", get(status_handler))
        .route("/events", get(events_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_handler))
        .with_state(state)
}

/// Serves until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    served: Served,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(served))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics_handler(State(s): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

async fn status_handler(State(s): State<AppState>) -> Response {
    Json(s.status()).into_response()
}

/// `/events?since=24h&param=ECSExec`.
#[derive(serde::Deserialize)]
struct EventsQuery {
    since: Option<String>,
    param: Option<String>,
}

/// The rack's history, oldest first: the lease holder's as it keeps it; a standby's as the
/// holder last wrote it (read again at each request).
async fn events_handler(State(s): State<AppState>, Query(q): Query<EventsQuery>) -> Response {
    let now = s.clock.now();
    let since = match q.since.as_deref().map(|t| crate::history::since(t, now)) {
        Some(Err(e)) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
        Some(Ok(t)) => Some(t),
        None => None,
    };
    let standby = s
        .status
        .read(|st| st.lease.as_ref().is_some_and(|l| !l.leader));
    let unavailable = |e: String| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot read the history: {e}\n"),
        )
            .into_response()
    };
    if standby {
        // Read as the holder wrote it, without holding up this controller's loop.
        let mut reader = s.journal.lock().await.reader();
        if let Err(e) = reader.load(now).await {
            return unavailable(e);
        }
        return Json(reader.select(since, q.param.as_deref())).into_response();
    }
    let mut journal = s.journal.lock().await;
    if !journal.loaded() {
        if let Err(e) = journal.load(now).await {
            return unavailable(e);
        }
    }
    Json(journal.select(since, q.param.as_deref())).into_response()
}

async fn ready_handler(State(s): State<AppState>) -> Response {
    let st = s.status();
    if st.observation_stale {
        let since = st.last_observation.as_deref().unwrap_or("never");
        let why = format!(
            "the rack was last observed completely at {since}, more than {} ago (timeouts.observation_stale): \
             the reconcile loop is stuck or AWS does not answer",
            humantime::format_duration(s.stale_after)
        );
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response();
    }
    if st.ready {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let why = st
            .rack_error
            .or(st.params_file.error)
            .unwrap_or_else(|| "not reconciled yet".to_string());
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response()
    }
}
