//! `--metrics`: a plain-HTTP listener with `/metrics`, `/healthz` and `/readyz` for a monitoring
//! system. An adapter only: the counters and the readiness rule are the hub's
//! (`Hub::render_metrics`, `Hub::check_ready`). Plain HTTP because scrapers rarely carry the
//! hub's CA; nothing served here is secret (counts only, no device ids, keys or names).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use iothub_hub::Hub;

/// What `/readyz` needs: the hub (its store) and whether the device and API listeners serve.
#[derive(Clone)]
pub struct Watch {
    hub: Hub,
    pub listeners_up: Arc<AtomicBool>,
}

impl Watch {
    pub fn new(hub: Hub) -> Watch {
        Watch {
            hub,
            listeners_up: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// prometheus-client writes OpenMetrics text (`_total` samples, `# EOF`): say so, so that a
/// scraper parses it as such rather than as the older Prometheus text format.
const TEXT_FORMAT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

async fn metrics(axum::extract::State(w): axum::extract::State<Watch>) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    // The CA gauge reads the store: off the async threads.
    match tokio::task::spawn_blocking(move || w.hub.render_metrics()).await {
        Ok(Ok(text)) => ([(axum::http::header::CONTENT_TYPE, TEXT_FORMAT)], text).into_response(),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

async fn readyz(axum::extract::State(w): axum::extract::State<Watch>) -> (StatusCode, String) {
    if !w.listeners_up.load(Ordering::Acquire) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the listeners are not serving\n".into(),
        );
    }
    let hub = w.hub.clone();
    match tokio::task::spawn_blocking(move || hub.check_ready()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n".into()),
        Ok(Err(reason)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")),
    }
}

/// Binds `addr` (before anything is announced, so port 0 prints the real port).
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (--metrics)"))
}

/// Serves the three routes until `stop` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    watch: Watch,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(watch);
    if let Err(e) = axum::serve(listener, router)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::error!(error = %e, "the metrics listener failed");
    }
}
