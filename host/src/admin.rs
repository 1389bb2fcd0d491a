//! The admin HTTP endpoint: metrics, health, the host's plugins as JSON, the status page.
//!
//! Bound to 127.0.0.1 by default; `admin.listen = ""` turns it off. There is no
//! authentication yet, so every request's `Host` header must name an IP address, `localhost`
//! or one of `admin.hosts`: a page on another site that rebinds its DNS name to this address
//! (DNS rebinding) sends its own name and is refused.

use std::collections::HashSet;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse};
use axum::routing::get;

use crate::host::Host;
use crate::metrics::{self, StreamLabels};

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
    tracing::info!("admin endpoint on http://{addr} (/metrics, /healthz, /readyz, /api/plugins, /api/status, /)");
    let app = router(host.clone());
    Ok(Some(tokio::spawn(async move {
        let poller = tokio::spawn(poll_gauges(host));
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("admin endpoint failed: {e}");
        }
        poller.abort();
    })))
}

/// The admin routes.
pub fn router(host: Arc<Host>) -> Router {
    let allowed = Arc::new(host.config().admin.hosts.clone());
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/plugins", get(plugins))
        .route("/api/status", get(status))
        .route("/api/asyncapi.json", get(asyncapi))
        .route("/api/schemas/{event_type}/{version}", get(schema))
        .route("/api/catalog/{event_type}", get(catalog))
        .route("/", get(|| async { Html(include_str!("status.html")) }))
        .layer(axum::middleware::from_fn_with_state(allowed, check_host))
        .with_state(host)
}

/// Longest a request may take to answer once its headers are read.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Refuse a request whose `Host` names something other than an IP address, `localhost` or
/// one of `admin.hosts` (see the module docs).
async fn check_host(
    State(allowed): State<Arc<Vec<String>>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let host = request.headers().get(header::HOST).map(|h| h.to_str().unwrap_or("\u{fffd}"));
    if host.is_none_or(|h| admits(&allowed, h)) {
        // A handler waiting on a stalled Redis must not hold the connection forever.
        match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
            Ok(response) => response,
            Err(_) => (StatusCode::GATEWAY_TIMEOUT, "timed out\n").into_response(),
        }
    } else {
        (StatusCode::MISDIRECTED_REQUEST, "this endpoint does not answer to that host name (admin.hosts)\n")
            .into_response()
    }
}

/// Whether a `Host` header value (`name[:port]`, `[v6]:port`) may address the endpoint.
fn admits(allowed: &[String], host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name.parse::<std::net::IpAddr>().is_ok()
        || name == "localhost"
        || allowed.iter().any(|a| a.eq_ignore_ascii_case(&name))
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
    let missing = host.context().replicas.missing();
    if redis_ok && plugins_ok && missing.is_empty() {
        (StatusCode::OK, "ready\n".to_string())
    } else if redis_ok && plugins_ok {
        // Reachable and loaded, but writes of some stream keys have no replica to confirm them
        // (durability = "replicated"): degraded, said per key with its node and reason.
        let policy = host.context().replicas.policy.as_str();
        let mut out = String::from("degraded: no replica confirms writes\n");
        for m in missing {
            let node = m.node.as_deref().unwrap_or("its primary");
            out.push_str(&format!(
                "{} on {node}: {} for {}s; {} writes waiting (durability_on_missing_replica = {policy}); add a replica\n",
                m.stream,
                m.reason,
                m.for_ms / 1000,
                m.waiting
            ));
        }
        (StatusCode::SERVICE_UNAVAILABLE, out)
    } else {
        let why = match (redis_ok, plugins_ok) {
            (false, false) => "redis unreachable; no plugin loaded",
            (false, true) => "redis unreachable",
            _ => "no plugin loaded",
        };
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n"))
    }
}

/// The AsyncAPI 3.0 document of the active schema set and the running subscribers (what
/// `ferry schemas docs` writes); 404 without a schema registry.
async fn asyncapi(State(host): State<Arc<Host>>) -> axum::response::Response {
    let Some(registry) = &host.context().contracts else {
        return (StatusCode::NOT_FOUND, "no schema registry: set `schemas` in the host configuration\n")
            .into_response();
    };
    let parties = host.parties().await;
    axum::Json(crate::contract::docs::asyncapi(&registry.active(), &parties, &host.config().stream)).into_response()
}

/// One schema of the active set, as its file holds it; 404 if there is none.
async fn schema(
    State(host): State<Arc<Host>>,
    axum::extract::Path((event_type, version)): axum::extract::Path<(String, String)>,
) -> axum::response::Response {
    let version = version.strip_suffix(".json").unwrap_or(&version).parse::<u32>().ok();
    let document = host
        .context()
        .contracts
        .as_ref()
        .zip(version)
        .and_then(|(registry, v)| crate::contract::docs::schema_document(&registry.active(), &event_type, v));
    match document {
        Some(document) => axum::Json(document).into_response(),
        None => (StatusCode::NOT_FOUND, "no such schema\n").into_response(),
    }
}

/// The catalog page (Markdown) of one type: versions, what changed, who produces and who
/// subscribes; 404 if the type has no schema.
async fn catalog(
    State(host): State<Arc<Host>>,
    axum::extract::Path(event_type): axum::extract::Path<String>,
) -> axum::response::Response {
    let parties = host.parties().await;
    let page = host
        .context()
        .contracts
        .as_ref()
        .and_then(|registry| crate::contract::docs::catalog(&registry.active(), &parties, &event_type));
    match page {
        Some(page) => ([(header::CONTENT_TYPE, "text/markdown; charset=utf-8")], page).into_response(),
        None => (StatusCode::NOT_FOUND, "no such type\n").into_response(),
    }
}

async fn plugins(State(host): State<Arc<Host>>) -> impl IntoResponse {
    axum::Json(host.plugins().await)
}

/// Every `POLL` the queue gauges (lag, pending, retries waiting, dead letters) are refreshed
/// from Redis for the streams the running subscribers read.
pub const POLL: std::time::Duration = std::time::Duration::from_secs(2);

async fn poll_gauges(host: Arc<Host>) {
    // Labels set by the previous poll: a subscriber removed since (or a stream it no longer
    // reads) loses its series instead of showing its last value for ever.
    let mut previous: HashSet<StreamLabels> = HashSet::new();
    let mut previous_state: HashSet<String> = HashSet::new();
    loop {
        if let Ok(groups) = groups(&host).await {
            let m = &host.context().metrics;
            let mut seen = HashSet::new();
            let mut state = std::collections::HashMap::<String, u64>::new();
            for g in groups {
                *state.entry(g.group.clone()).or_default() += g.state_bytes;
                let labels = StreamLabels { subscriber: g.group.clone(), stream: g.stream.clone() };
                m.lag.get_or_create(&labels).set(g.lag.map_or(-1, |l| l as i64));
                m.pending.get_or_create(&labels).set(g.pending as i64);
                m.retries_waiting.get_or_create(&labels).set((g.retries_scheduled + g.retries_pending) as i64);
                m.dead_letters.get_or_create(&labels).set(g.dead_letters as i64);
                m.unforwarded.get_or_create(&labels).set(g.unforwarded as i64);
                m.held_keys.get_or_create(&labels).set(g.held_keys as i64);
                m.parked.get_or_create(&labels).set(g.parked as i64);
                m.oldest_hold_seconds.get_or_create(&labels).set(g.oldest_hold_ms.map_or(0, |ms| (ms / 1000) as i64));
                seen.insert(labels);
            }
            for gone in previous.difference(&seen) {
                m.lag.remove(gone);
                m.pending.remove(gone);
                m.retries_waiting.remove(gone);
                m.dead_letters.remove(gone);
                m.unforwarded.remove(gone);
                m.held_keys.remove(gone);
                m.parked.remove(gone);
                m.oldest_hold_seconds.remove(gone);
            }
            previous = seen;
            for gone in previous_state.iter().filter(|s| !state.contains_key(*s)) {
                m.state_bytes.remove(&crate::metrics::Metrics::sub(gone));
            }
            for (subscriber, bytes) in &state {
                m.state_bytes.get_or_create(&crate::metrics::Metrics::sub(subscriber)).set(*bytes as i64);
            }
            previous_state = state.into_keys().collect();
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The groups of the running subscribers, straight from Redis.
async fn groups(host: &Host) -> redis::RedisResult<Vec<crate::status::GroupStatus>> {
    let plugins = host.plugins().await;
    let names: Vec<&str> = plugins.iter().map(|p| p.name.as_str()).collect();
    let mut streams: Vec<String> =
        plugins.iter().flat_map(|p| p.subscriptions.iter().map(|s| s.stream.clone())).collect();
    streams.sort();
    streams.dedup();
    let mut conn = host.context().shared.clone();
    let groups = crate::status::collect(&mut conn, &streams).await?;
    Ok(groups.into_iter().filter(|g| names.contains(&g.group.as_str())).collect())
}

/// What the status page shows: plugins, per-subscriber counters and the groups in Redis.
#[derive(serde::Serialize)]
struct StatusView {
    plugins: Vec<crate::host::PluginStatus>,
    counters: Vec<Counters>,
    groups: Vec<crate::status::GroupStatus>,
    /// Streams under retention (as `ferry status --retention --json` shows them).
    streams: Vec<crate::status::StreamRetention>,
    redis_up: bool,
    /// Stream keys whose writes this host cannot get a replica to confirm.
    missing_replicas: Vec<crate::replica::Missing>,
}

#[derive(serde::Serialize)]
struct Counters {
    subscriber: String,
    handled: u64,
    retried: u64,
    dead_lettered: u64,
    skipped: u64,
    deduplicated: u64,
}

async fn status(State(host): State<Arc<Host>>) -> impl IntoResponse {
    let plugins = host.plugins().await;
    let m = &host.context().metrics;
    let counters = plugins
        .iter()
        .map(|p| Counters {
            subscriber: p.name.clone(),
            handled: metrics::count(&m.handled, &p.name),
            retried: metrics::count(&m.retried, &p.name),
            dead_lettered: metrics::count(&m.dead_lettered, &p.name),
            skipped: metrics::count(&m.skipped, &p.name),
            deduplicated: metrics::count(&m.deduplicated, &p.name),
        })
        .collect();
    let (groups, redis_up) = match groups(&host).await {
        Ok(groups) => (groups, true),
        Err(_) => (Vec::new(), false),
    };
    let mut sources: Vec<String> = groups.iter().map(|g| g.stream.clone()).collect();
    sources.dedup();
    let targets = crate::status::retention_targets(host.config(), &sources);
    let mut conn = host.context().shared.clone();
    let streams = crate::status::retention(&mut conn, &targets).await.unwrap_or_default();
    let missing_replicas = host.context().replicas.missing();
    axum::Json(StatusView { plugins, counters, groups, streams, redis_up, missing_replicas })
}

#[cfg(test)]
mod tests {
    /// Issue 23, item 12: a DNS-rebinding page sends its own name in `Host`.
    #[test]
    fn only_ip_addresses_localhost_and_configured_names_are_admitted() {
        let allowed = vec!["ferry.internal".to_string()];
        for ok in [
            "127.0.0.1:9464",
            "127.0.0.1",
            "[::1]:9464",
            "localhost:9464",
            "LOCALHOST",
            "10.1.2.3:80",
            "ferry.internal:9464",
            "Ferry.Internal.",
        ] {
            assert!(super::admits(&allowed, ok), "{ok}");
        }
        for bad in [
            "evil.example:9464",
            "evil.example",
            "127.0.0.1.evil.example:9464",
            "localhost.evil.example",
            "",
            "\u{fffd}",
        ] {
            assert!(!super::admits(&allowed, bad), "{bad}");
        }
    }
}
