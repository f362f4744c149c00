//! HTTP endpoints: `/metrics` (Prometheus text), `/status` (JSON), `/healthz`, `/readyz`.

use std::future::Future;
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;

use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::status::{Status, StatusHandle};

#[derive(Clone)]
struct AppState {
    status: StatusHandle,
    metrics: Metrics,
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

pub fn router(status: StatusHandle, metrics: Metrics, stale_after: Duration) -> Router {
    let clock = Clock::new();
    let state = AppState {
        status,
        metrics,
        clock,
        started: clock.now(),
        stale_after,
    };
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/status", get(status_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_handler))
        .with_state(state)
}

/// Serves until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    status: StatusHandle,
    metrics: Metrics,
    stale_after: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(status, metrics, stale_after))
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
