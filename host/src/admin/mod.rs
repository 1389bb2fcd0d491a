//! The admin HTTP endpoint: metrics, health, the host's plugins as JSON, the status page,
//! and the console's API (overview, dead letters and their jobs, find, the audit trail).
//!
//! Bound to 127.0.0.1 by default; `admin.listen = ""` turns it off. Who may use it is
//! [`auth`]'s business: every request's `Host` header must name an IP address, `localhost` or
//! one of `admin.hosts` (a page on another site that rebinds its DNS name to this address
//! sends its own name and is refused), and with tokens configured every route but the
//! scraped ones needs one. Off loopback the endpoint refuses to start without tokens.
//!
//! # The console API
//!
//! What the console page is built on; shapes may grow but not change (docs/operations.md,
//! "Console API", says the same with more words). Every `POST` needs the operator role.
//!
//! - `GET /api/whoami` → `{"name": "alice", "role": "operator"}`.
//! - `GET /api/overview` ([`overview`]) → `{"subscribers": [{"subscriber": "billing",
//!   "stream": "orders", "lag": 0, "pending": 1, "retries_waiting": 2, "dead_letters": 14,
//!   "held_keys": 0, "consumers": 1, "consumer_list": [...]}], "history": [{"t": 1796610480,
//!   "handled": 1520, "failed": 3, "dead_lettered": 1, "p50_ms": 1.9, "p99_ms": 41.0}]}`.
//! - `GET /api/dlq/{subscriber}/letters/{entry_id}` ([`crate::dlq::detail`]) →
//!   `{"entry_id": "1796610484059-0", "subscriber": "billing", "stream": "orders", "event":
//!   {"id": "...", "type": "OrderPlaced", ...}, "payload": {"kind": "json", "text": "{\n
//!   \"sku\": \"bad\"\n}", "bytes": 13, "truncated": false}, "meta": {"attempts": 3,
//!   "first_failure_ms": ..., "last_failure_ms": ..., "reason": "sku bad unknown", "kind":
//!   "handler-reject", "host": null, "plugin_version": "9d50cc88df80", "origin": "..."},
//!   "edits": [{"by": "alice", "at_ms": ..., "fields": ["data"]}]}`.
//! - `POST /api/dlq/{subscriber}/letters/{entry_id}/edit` with `{"data": "{\"sku\":
//!   \"A-1\"}", "attributes": {"subject": "order-1"}}` ([`crate::dlq::edit`]) →
//!   `{"replayed": 1, "fields": ["subject", "data"]}`: the same event id, audited.
//! - `POST /api/dlq/{subscriber}/replay|purge` of more than [`jobs::JOB_ABOVE`] dead letters,
//!   or with `"job": true` → `202 {"job": "8c2e41f09a7b3d55"}` ([`jobs`]); `GET /api/jobs` →
//!   `[job]`, `GET /api/jobs/{id}` → `{"id": "8c2e41f09a7b3d55", "action": "replay",
//!   "subscriber": "billing", "selection": {"group": "5f1c0e9a2b7d"}, "total": 1000, "done":
//!   400, "count": 400, "state": "running", "error": null, "started_ms": ..., "finished_ms":
//!   null, "updated_ms": ..., "by": "alice"}`.
//! - `GET /api/find?id=...` or `?correlation=...` ([`crate::find`]) → `{"events":
//!   [{"event_id": "...", "type": "OrderPlaced", "stream": "orders", "entry_id": "...",
//!   "correlation": "c-77", "causation": null, "where": [{"subscriber": "billing", "status":
//!   "handled", "detail": "..."}], "children": [...]}], "scanned": 5210, "truncated": false}`.
//! - `GET /api/plugins` → per plugin `{"name", "version", "state": "running" | "throttled" |
//!   "refused", "reason", "subscriptions", "grants": {"publish_streams", "read_streams",
//!   "config" (keys), "http", "state"}, "limits": {"memory", "deadline", "fuel", ...,
//!   "concurrency", "ordered", "retry", "throttle": {"limit", "max", "penalized"}}, "error",
//!   "loaded_at", "last_reload_ms"}`.

use std::collections::HashSet;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse};
use axum::routing::{get, post};

pub mod auth;
mod console;
mod dlq;
pub mod jobs;
pub mod overview;

use crate::host::Host;
use crate::metrics::{self, StreamLabels};

/// Start the endpoint if configured; returns its task. Refuses a non-loopback address when
/// no token is configured.
pub async fn spawn(host: Arc<Host>) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let admin = host.config().admin.clone();
    let listen = admin.listen.clone();
    if listen.is_empty() {
        return Ok(None);
    }
    let env = std::env::var("FERRY_ADMIN_TOKENS").ok();
    let tokens = auth::load_tokens(&admin, &host.config().plugins, env.as_deref())?;
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("binding the admin endpoint to {listen}"))?;
    let addr = listener.local_addr()?;
    if tokens.is_empty() && !addr.ip().is_loopback() {
        anyhow::bail!(
            "the admin endpoint would listen on {addr}, which is not a loopback address, without \
             authentication: configure tokens (admin.tokens_file or FERRY_ADMIN_TOKENS), or listen on \
             127.0.0.1, or turn it off with admin.listen = \"\""
        );
    }
    let auth = Arc::new(auth::Auth::new(tokens, admin.open_metrics));
    if auth.is_open() {
        tracing::info!("admin endpoint on http://{addr}, open (loopback, no tokens configured)");
    } else {
        tracing::info!("admin endpoint on http://{addr}, tokens required");
    }
    let history = Arc::new(overview::History::default());
    let app = router(host.clone(), auth, history.clone());
    Ok(Some(tokio::spawn(async move {
        let sampler = tokio::spawn(overview::sample(host.clone(), history));
        let poller = tokio::spawn(poll_gauges(host));
        // The client address keys the limit on failed logins.
        let service = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
        if let Err(e) = axum::serve(listener, service).await {
            tracing::error!("admin endpoint failed: {e}");
        }
        poller.abort();
        sampler.abort();
    })))
}

/// The admin routes; `history` is what `/api/overview` charts ([`overview::sample`] fills it).
pub fn router(host: Arc<Host>, auth: Arc<auth::Auth>, history: Arc<overview::History>) -> Router {
    let allowed = Arc::new(host.config().admin.hosts.clone());
    let sessions = Router::new()
        .route("/api/login", post(auth::login))
        .route("/api/logout", post(auth::logout))
        .with_state(auth.clone());
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/plugins", get(plugins))
        .route("/api/status", get(status))
        .route("/api/asyncapi.json", get(asyncapi))
        .route("/api/schemas/{event_type}/{version}", get(schema))
        .route("/api/catalog/{event_type}", get(catalog))
        .route("/api/dlq/{subscriber}", get(dlq::list))
        .route("/api/dlq/{subscriber}/groups", get(dlq::groups))
        .route("/api/dlq/{subscriber}/replay", post(dlq::replay))
        .route("/api/dlq/{subscriber}/purge", post(dlq::purge))
        .route("/api/dlq/{subscriber}/letters/{entry_id}", get(dlq::letter))
        .route("/api/dlq/{subscriber}/letters/{entry_id}/edit", post(dlq::edit))
        .route("/api/jobs", get(dlq::job_list))
        .route("/api/jobs/{id}", get(dlq::job))
        .route("/api/whoami", get(whoami))
        .route("/api/find", get(find))
        .route("/api/overview", get(overview::overview))
        .route("/api/audit", get(audit))
        .route("/", get(|| async { Html(include_str!("../status.html")) }))
        .with_state(host)
        .layer(axum::Extension(history))
        .merge(sessions)
        .merge(console::routes())
        .layer(axum::middleware::from_fn_with_state(auth, auth::authorize))
        .layer(axum::middleware::from_fn_with_state(allowed, auth::check_host))
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

/// `GET /api/audit?limit=N`: the newest entries of the audit trail, newest first (what
/// `ferry audit --json` prints).
async fn audit(
    State(host): State<Arc<Host>>,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> axum::response::Response {
    let limit = query.get("limit").and_then(|l| l.parse().ok()).unwrap_or(100).min(crate::audit::MAX_ENTRIES);
    let mut conn = host.context().shared.clone();
    match crate::audit::list(&mut conn, limit).await {
        Ok(entries) => axum::Json(entries).into_response(),
        Err(e) => {
            tracing::warn!("admin endpoint: audit trail: {e}");
            (StatusCode::SERVICE_UNAVAILABLE, "redis failed; see the host's log\n").into_response()
        }
    }
}

/// The stream keys an event may be in: those with ferry groups, the running subscribers'
/// streams and those they publish to, each partition of a partitioned one.
async fn known_streams(host: &Host) -> redis::RedisResult<Vec<String>> {
    let mut named: Vec<String> = Vec::new();
    for party in host.parties().await {
        named.extend(party.receives.into_iter().map(|(stream, _, _)| stream));
        named.extend(party.sends);
    }
    named.push(host.config().stream.clone());
    let mut keys = Vec::new();
    for stream in named {
        match host.config().streams.get(&stream).map(|s| s.partitions).filter(|p| *p > 1) {
            Some(n) => keys.extend((0..n).map(|p| crate::keys::partition(&stream, p))),
            None => keys.push(stream),
        }
    }
    let mut conn = host.context().shared.clone();
    crate::status::discover(&mut conn, &keys).await
}

/// `GET /api/find?id=ID` or `?correlation=ID`: where the event(s) are and what they caused
/// (what `ferry find --json` prints).
async fn find(
    State(host): State<Arc<Host>>,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> axum::response::Response {
    let wanted = match (query.get("id").filter(|v| !v.is_empty()), query.get("correlation").filter(|v| !v.is_empty())) {
        (Some(id), None) => crate::find::Query::Id(id.clone()),
        (None, Some(c)) => crate::find::Query::Correlation(c.clone()),
        _ => return (StatusCode::BAD_REQUEST, "give one of ?id= or ?correlation=\n").into_response(),
    };
    let found = match known_streams(&host).await {
        Ok(streams) => {
            let mut conn = host.context().shared.clone();
            crate::find::find(&mut conn, &streams, &wanted).await
        }
        Err(e) => Err(e),
    };
    match found {
        Ok(found) => axum::Json(found).into_response(),
        Err(e) => {
            tracing::warn!("admin endpoint: find: {e}");
            (StatusCode::SERVICE_UNAVAILABLE, "redis failed; see the host's log\n").into_response()
        }
    }
}

/// `GET /api/whoami`: the token (or session) a request acts as, `{"name", "role"}`.
async fn whoami(axum::Extension(principal): axum::Extension<auth::Principal>) -> impl IntoResponse {
    axum::Json(serde_json::json!({ "name": principal.name, "role": principal.role }))
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
