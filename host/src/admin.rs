//! The admin HTTP endpoint: metrics, health, the host's plugins as JSON, the status page.
//!
//! Bound to 127.0.0.1 by default; `admin.listen = ""` turns it off.

use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse};
use axum::routing::get;

use crate::host::Host;

/// Start the endpoint if configured; returns its task.
pub async fn spawn(host: Arc<Host>) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let listen = host.config().admin.listen.clone();
    if listen.is_empty() {
        return Ok(None);
    }
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("binding the admin endpoint to {listen}"))?;
    let addr = listener.local_addr()?;
    tracing::info!("admin endpoint on http://{addr} (/metrics, /healthz, /readyz, /api/plugins, /)");
    let app = router(host);
    Ok(Some(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("admin endpoint failed: {e}");
        }
    })))
}

/// The admin routes.
pub fn router(host: Arc<Host>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/plugins", get(plugins))
        .route("/", get(|| async { Html(include_str!("status.html")) }))
        .with_state(host)
}

async fn metrics(State(host): State<Arc<Host>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        host.context().metrics.render(),
    )
}

async fn readyz(State(host): State<Arc<Host>>) -> impl IntoResponse {
    // Probe Redis now rather than trusting the last operation's result.
    let mut conn = host.context().shared.clone();
    let redis_ok =
        tokio::time::timeout(std::time::Duration::from_secs(1), redis::cmd("PING").query_async::<String>(&mut conn))
            .await
            .is_ok_and(|r| r.is_ok());
    let plugins_ok = host.ready_plugins().await;
    if redis_ok && plugins_ok {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        let why = match (redis_ok, plugins_ok) {
            (false, false) => "redis unreachable; no plugin loaded",
            (false, true) => "redis unreachable",
            _ => "no plugin loaded",
        };
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n"))
    }
}

async fn plugins(State(host): State<Arc<Host>>) -> impl IntoResponse {
    axum::Json(host.plugins().await)
}
