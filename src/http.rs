//! HTTP endpoints: `/metrics` (Prometheus text), `/status` (JSON), `/healthz`, `/readyz`.

use std::future::Future;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::status::StatusHandle;

#[derive(Clone)]
struct AppState {
    status: StatusHandle,
    metrics: Metrics,
}

pub fn router(status: StatusHandle, metrics: Metrics) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/status", get(status_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_handler))
        .with_state(AppState { status, metrics })
}

/// Serves until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    status: StatusHandle,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(status, metrics))
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
    Json(s.status.get()).into_response()
}

async fn ready_handler(State(s): State<AppState>) -> Response {
    let st = s.status.get();
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
