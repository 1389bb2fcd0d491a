//! The `http` capability (issue 25): outbound HTTP through the standard
//! `wasi:http/outgoing-handler` (wasmtime-wasi-http, the same wasmtime), whichever
//! `ferry:plugin` version a plugin targets and whichever client library it was built with.
//!
//! Grant: `[subscribers.NAME.http] allow = ["https://api.example.com", ...]` with its bounds
//! (`config::HttpConfig`), in the operator's config or, with `plugin_files.grants`, the
//! plugin's `NAME.toml`. Deny by default: a plugin whose component imports `wasi:http` without
//! the table is refused at load ([`check`], naming the grant); with it, every request goes
//! through [`send::OutboundHttp`] (the grant on the URL, then on every resolved address, the
//! counts, the sizes, the timeouts clamped to the event's deadline, `Idempotency-Key` and
//! `traceparent`). An empty `allow` loads and refuses every request with `HttpRequestDenied`.
//!
//! `wasi:http` is not an interface of `ferry:plugin`: it shares WASI's resource table (its
//! bodies are `wasi:io` streams), so it is linked once into the engine's linker beside WASI
//! ([`link_wasi`]) rather than through [`Capability::link`], and the store's
//! `WasiHttpView` (`sandbox`) lends this capability's context with that table. Nothing a
//! refused plugin imports is ever instantiated, so the gate at load is what "linked only for
//! a subscriber with a grant" means with one linker per engine.
//!
//! Files: [`allow`] (the grant's grammar and matching), [`send`] (the hook and the sender).

pub mod allow;
pub mod send;

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::{Component, Linker};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpView};

use self::allow::AllowList;
use self::send::{HttpLimits, OutboundHttp, Pool, Recorder, RefusalLog, Tls};
use super::seam::{Capability, Current, Services};
use crate::config::Effective;
use crate::metrics::HttpMetrics;
use crate::plugin::contract::Contract;
use crate::plugin::error::PluginError;

/// The package prefix of the interfaces this capability answers for.
const WASI_HTTP: &str = "wasi:http/";

/// The `http` capability.
pub struct Http;

/// What a subscriber was granted, shared by its instances.
pub struct HttpGrant {
    subscriber: Arc<str>,
    /// Its allow list (empty: not granted, or granted nothing).
    allow: Arc<AllowList>,
    limits: HttpLimits,
    idempotency_key: bool,
    /// The event's deadline, from which each call's own is taken.
    deadline: Duration,
    /// Requests in flight across the subscriber's instances.
    permits: Arc<tokio::sync::Semaphore>,
    /// Its refusal lines, one per window across its instances.
    refusals: Arc<RefusalLog>,
    /// Its idle connections (keep-alive), shared by its instances.
    pool: Arc<Pool>,
    /// Its TLS client (the system's roots or its `ca_file`), shared by its instances.
    tls: Arc<Tls>,
    metrics: Option<HttpMetrics>,
    /// Where calls are recorded for `ferry plugins invoke`.
    watch: Option<super::seam::Watch>,
}

impl std::fmt::Debug for HttpGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpGrant")
            .field("allow", &self.allow)
            .field("limits", &self.limits)
            .field("idempotency_key", &self.idempotency_key)
            .finish()
    }
}

/// A store's HTTP context: the hooks of the current call and wasmtime-wasi-http's own.
pub struct HttpCtx {
    grant: Arc<HttpGrant>,
    /// What `wasi:http/outgoing-handler.handle` calls for each request.
    pub hooks: OutboundHttp,
    /// wasmtime-wasi-http's context.
    pub ctx: WasiHttpCtx,
}

impl Capability for Http {
    type Grant = HttpGrant;
    type Ctx = HttpCtx;

    // `wasi:http` is checked by [`check`], by its own package name: this list is of
    // `ferry:plugin`'s interfaces.
    const IMPORTS: &'static [(&'static str, &'static str)] = &[];

    fn grant(subscriber: &Arc<str>, settings: &Effective, services: &Services) -> HttpGrant {
        let http = settings.http.clone().unwrap_or_default();
        // A bad entry was refused by `check` before the grant is made; here it grants nothing.
        let allow = AllowList::parse(&http.allow).unwrap_or_default();
        HttpGrant {
            subscriber: subscriber.clone(),
            allow: Arc::new(allow),
            limits: HttpLimits::from(&http),
            idempotency_key: http.idempotency_key,
            deadline: settings.limits.deadline,
            // tokio panics past MAX_PERMITS; the operator's number is otherwise taken as is.
            permits: Arc::new(tokio::sync::Semaphore::new(
                http.concurrent_requests.clamp(1, tokio::sync::Semaphore::MAX_PERMITS),
            )),
            refusals: Arc::default(),
            pool: Arc::default(),
            tls: Arc::new(Tls::new(http.ca_file.clone())),
            metrics: services.http_metrics.clone(),
            watch: services.watch.clone(),
        }
    }

    fn ctx(grant: &Arc<HttpGrant>) -> HttpCtx {
        HttpCtx { grant: grant.clone(), hooks: hooks(grant, &Current::default()), ctx: WasiHttpCtx::new() }
    }

    fn link<T: Send + 'static>(
        _linker: &mut Linker<T>,
        _contract: Contract,
        _get: fn(&mut T) -> &mut HttpCtx,
    ) -> wasmtime::Result<()> {
        // Linked once, beside WASI, by [`link_wasi`]: see the module's comment.
        Ok(())
    }

    fn begin(ctx: &mut HttpCtx, current: &Arc<Current>) {
        ctx.hooks = hooks(&ctx.grant, current);
    }
}

/// The hooks of a call on `current`: its deadline starts now.
fn hooks(grant: &HttpGrant, current: &Current) -> OutboundHttp {
    OutboundHttp {
        allow: grant.allow.clone(),
        limits: grant.limits.clone(),
        deadline: Instant::now() + grant.deadline,
        idempotency_key: grant.idempotency_key.then(|| format!("{}:{}", grant.subscriber, current.event_id)),
        traceparent: current.traceparent.clone(),
        sent: 0,
        permits: grant.permits.clone(),
        pool: grant.pool.clone(),
        tls: grant.tls.clone(),
        recorder: Recorder {
            refusals: grant.refusals.clone(),
            subscriber: grant.subscriber.clone(),
            metrics: grant.metrics.clone(),
            calls: Default::default(),
            watch: grant.watch.clone(),
        },
    }
}

/// Link `wasi:http/outgoing-handler` and `wasi:http/types` (every 0.2.x a guest was built
/// against) into the engine's linker, after WASI p2.
pub fn link_wasi<T: WasiHttpView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)
}

/// Whether `component` imports any `wasi:http` interface.
pub fn imports_http(engine: &wasmtime::Engine, component: &Component) -> bool {
    component.component_type().imports(engine).any(|(name, _)| name.starts_with(WASI_HTTP))
}

/// Refuse a plugin that imports `wasi:http` without a `[subscribers.NAME.http]` grant, or
/// whose grant has an entry that cannot be read.
pub fn check(
    engine: &wasmtime::Engine,
    component: &Component,
    subscriber: &str,
    settings: &Effective,
) -> Result<(), PluginError> {
    let name = crate::redact::escape(subscriber);
    match &settings.http {
        None if imports_http(engine, component) => Err(PluginError::NotGranted(format!(
            "it imports wasi:http/outgoing-handler but outbound HTTP is not granted: add a [subscribers.{name}.http] table with allow = [\"https://host\", ...]"
        ))),
        None => Ok(()),
        Some(http) => {
            AllowList::parse(&http.allow)
                .map_err(|e| PluginError::NotGranted(format!("[subscribers.{name}.http]: {e}")))?;
            match &http.ca_file {
                Some(path) => crate::tls::read_ca(path)
                    .map(drop)
                    .map_err(|e| PluginError::NotGranted(format!("[subscribers.{name}.http] ca_file: {e}"))),
                None => Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HttpConfig, SubscriberConfig};

    fn ctx_for(http: Option<HttpConfig>) -> (HttpCtx, Effective) {
        let settings = SubscriberConfig { http, ..Default::default() }.fill();
        let grant = Arc::new(Http::grant(&"welcome".into(), &settings, &Services::default()));
        (Http::ctx(&grant), settings)
    }

    #[test]
    fn each_call_gets_the_events_idempotency_key_traceparent_deadline_and_a_fresh_count() {
        let granted = HttpConfig { allow: vec!["https://api.example.com".into()], ..Default::default() };
        let (mut ctx, settings) = ctx_for(Some(granted.clone()));
        ctx.hooks.sent = 5;
        let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let current =
            Current { event_id: "0190-e1".into(), traceparent: Some(traceparent.into()), ..Default::default() };
        Http::begin(&mut ctx, &Arc::new(current));
        assert_eq!(ctx.hooks.idempotency_key.as_deref(), Some("welcome:0190-e1"), "the same for every attempt");
        assert_eq!(ctx.hooks.traceparent.as_deref(), Some(traceparent));
        assert_eq!(ctx.hooks.sent, 0, "requests are counted per call");
        assert!(ctx.hooks.deadline <= Instant::now() + settings.limits.deadline);
        assert!(ctx.hooks.allow.admits(allow::Scheme::Https, "api.example.com", 443).is_some());

        let (mut off, _) = ctx_for(Some(HttpConfig { idempotency_key: false, ..granted }));
        Http::begin(&mut off, &Arc::new(Current { event_id: "e2".into(), ..Default::default() }));
        assert_eq!((off.hooks.idempotency_key, off.hooks.traceparent), (None, None));

        let (none, _) = ctx_for(None);
        assert!(none.hooks.allow.is_empty(), "not granted: every request is refused");
    }
}
