//! Logs and traces: where the host's `tracing` output goes.
//!
//! Logs go to stderr, human-readable by default or one JSON object per line
//! (`--log-format json`), filtered by `FERRY_LOG` (an `EnvFilter`). With the cargo feature
//! `otel`, spans are also exported over OTLP (HTTP/protobuf) when an OTLP endpoint is
//! configured through the standard `OTEL_EXPORTER_OTLP_*` variables; the default build carries
//! no OpenTelemetry code at all.
//!
//! # Trace continuation
//!
//! Each handled event runs in a span named `event` (opened in `plugin::invoke`) whose
//! `traceparent` field is the envelope's W3C `traceparent`. Under `otel`, a layer wrapped
//! around the OpenTelemetry layer makes that remote span the parent of the `event` span, so
//! the handler's span joins the producer's trace. What is not done (and why) is written in
//! docs/operations.md.

use tracing_subscriber::layer::{Layer, SubscriberExt as _};
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Registry};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The environment variable holding the log filter (`EnvFilter` syntax).
pub const LOG_ENV: &str = "FERRY_LOG";

/// The environment variable holding the filter of exported spans (`otel` feature only).
pub const OTEL_FILTER_ENV: &str = "FERRY_OTEL_FILTER";

/// What must outlive the program's work: the span exporter, flushed on [`Telemetry::shutdown`]
/// (or on drop).
#[must_use = "dropping it stops exporting spans"]
pub struct Telemetry {
    #[cfg(feature = "otel")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported (the `otel` feature is built in and an endpoint is set).
    pub fn exporting(&self) -> bool {
        #[cfg(feature = "otel")]
        return self.provider.is_some();
        #[cfg(not(feature = "otel"))]
        false
    }

    /// Flush spans not yet exported and stop the exporter. Call it outside any async
    /// runtime: the exporter's HTTP client blocks.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        #[cfg(feature = "otel")]
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("warning: flushing OpenTelemetry spans failed: {e}");
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Install the global `tracing` subscriber: logs in `format` on stderr, filtered by
/// `FERRY_LOG` (or `default_filter` when unset), plus the OTLP exporter when built with
/// `otel` and configured. Call once, before starting the async runtime.
pub fn init(format: LogFormat, default_filter: &str) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_env(LOG_ENV).unwrap_or_else(|_| EnvFilter::new(default_filter));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    // Each layer has its own filter, so `FERRY_LOG=warn` quietens the logs without cutting
    // the spans an OTLP collector receives.
    let logs: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Json => fmt.json().with_filter(filter).boxed(),
        LogFormat::Text => fmt.with_ansi(ansi).with_filter(filter).boxed(),
    };
    #[cfg(feature = "otel")]
    let (spans, provider) = match otel::provider()? {
        Some(provider) => {
            let filter = EnvFilter::try_from_env(OTEL_FILTER_ENV).unwrap_or_else(|_| EnvFilter::new("info"));
            (Some(otel::layer(&provider).with_filter(filter).boxed()), Some(provider))
        }
        None => (None, None),
    };
    #[cfg(not(feature = "otel"))]
    let spans: Option<Box<dyn Layer<Registry> + Send + Sync>> = None;
    let layers: Vec<_> = [Some(logs), spans].into_iter().flatten().collect();
    tracing_subscriber::registry().with(layers).try_init()?;
    let telemetry = Telemetry {
        #[cfg(feature = "otel")]
        provider,
    };
    if telemetry.exporting() {
        tracing::info!("exporting spans over OTLP");
    }
    Ok(telemetry)
}

/// OpenTelemetry export and the `traceparent` parent layer.
#[cfg(feature = "otel")]
pub mod otel {
    use std::any::TypeId;
    use std::collections::HashMap;

    use opentelemetry::propagation::TextMapPropagator as _;
    use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing::span;
    use tracing::subscriber::Interest;
    use tracing::{Event, Metadata, Subscriber};
    use tracing_subscriber::layer::{Context, Layer};
    use tracing_subscriber::registry::LookupSpan;

    /// The span field holding the producer's W3C trace context.
    pub const TRACEPARENT_FIELD: &str = "traceparent";

    /// A tracer provider exporting over OTLP/HTTP, or `None` when no endpoint is configured
    /// (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`): building with
    /// the feature does not by itself send anything anywhere.
    pub fn provider() -> anyhow::Result<Option<SdkTracerProvider>> {
        let configured = ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
            .iter()
            .any(|v| std::env::var(v).is_ok_and(|s| !s.is_empty()));
        if !configured {
            return Ok(None);
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .map_err(|e| anyhow::anyhow!("building the OTLP span exporter: {e}"))?;
        // `Resource::builder` reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; name the
        // service only when the operator has not.
        let mut resource = opentelemetry_sdk::Resource::builder();
        if std::env::var("OTEL_SERVICE_NAME").is_err() {
            resource = resource.with_service_name("ferry");
        }
        Ok(Some(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource.build()).build()))
    }

    /// The OpenTelemetry layer for `provider`, with `traceparent` fields turned into parents.
    pub fn layer<S>(provider: &SdkTracerProvider) -> impl Layer<S> + Send + Sync + use<S>
    where
        S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    {
        TraceparentParent::new(tracing_opentelemetry::layer().with_tracer(provider.tracer("ferry")))
    }

    /// Wraps the OpenTelemetry layer: when a new span carries a valid `traceparent` field, that
    /// remote context is made current while the inner layer creates the span, so the inner
    /// layer (which, with context activation on, takes a contextual span's parent from the
    /// current OpenTelemetry context) builds it as a child of the producer's span. A missing,
    /// empty or malformed `traceparent` leaves the parent as it was.
    pub struct TraceparentParent<L> {
        inner: L,
        propagator: TraceContextPropagator,
    }

    impl<L> TraceparentParent<L> {
        /// Wrap `inner`.
        pub fn new(inner: L) -> Self {
            Self { inner, propagator: TraceContextPropagator::new() }
        }

        fn remote_parent(&self, attrs: &span::Attributes<'_>) -> Option<opentelemetry::Context> {
            // Cheap test first: only spans declaring the field pay for the visit.
            attrs.metadata().fields().field(TRACEPARENT_FIELD)?;
            let mut visitor = Find(None);
            attrs.record(&mut visitor);
            let value = visitor.0.filter(|v| !v.is_empty())?;
            let carrier = HashMap::from([(TRACEPARENT_FIELD.to_string(), value)]);
            let cx = self.propagator.extract(&carrier);
            cx.span().span_context().is_valid().then_some(cx)
        }
    }

    struct Find(Option<String>);

    impl tracing::field::Visit for Find {
        fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
            if field.name() == TRACEPARENT_FIELD {
                self.0 = Some(value.to_string());
            }
        }

        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            if field.name() == TRACEPARENT_FIELD {
                self.0 = Some(format!("{value:?}").trim_matches('"').to_string());
            }
        }
    }

    impl<S, L> Layer<S> for TraceparentParent<L>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
        L: Layer<S>,
    {
        fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
            match self.remote_parent(attrs) {
                Some(parent) if attrs.is_contextual() => {
                    let _current = parent.attach();
                    self.inner.on_new_span(attrs, id, ctx);
                }
                _ => self.inner.on_new_span(attrs, id, ctx),
            }
        }

        // Everything else goes straight to the inner layer.
        fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
            self.inner.on_register_dispatch(subscriber);
        }
        fn on_layer(&mut self, subscriber: &mut S) {
            self.inner.on_layer(subscriber);
        }
        fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
            self.inner.register_callsite(metadata)
        }
        fn enabled(&self, metadata: &Metadata<'_>, ctx: Context<'_, S>) -> bool {
            self.inner.enabled(metadata, ctx)
        }
        fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
            self.inner.on_record(id, values, ctx);
        }
        fn on_follows_from(&self, id: &span::Id, follows: &span::Id, ctx: Context<'_, S>) {
            self.inner.on_follows_from(id, follows, ctx);
        }
        fn event_enabled(&self, event: &Event<'_>, ctx: Context<'_, S>) -> bool {
            self.inner.event_enabled(event, ctx)
        }
        fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
            self.inner.on_event(event, ctx);
        }
        fn on_enter(&self, id: &span::Id, ctx: Context<'_, S>) {
            self.inner.on_enter(id, ctx);
        }
        fn on_exit(&self, id: &span::Id, ctx: Context<'_, S>) {
            self.inner.on_exit(id, ctx);
        }
        fn on_close(&self, id: span::Id, ctx: Context<'_, S>) {
            self.inner.on_close(id, ctx);
        }
        fn on_id_change(&self, old: &span::Id, new: &span::Id, ctx: Context<'_, S>) {
            self.inner.on_id_change(old, new, ctx);
        }
        fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
            self.inner.max_level_hint()
        }

        #[expect(
            unsafe_code,
            reason = "forwarding the downcast lets `OpenTelemetrySpanExt` find the inner layer's context"
        )]
        unsafe fn downcast_raw(&self, id: TypeId) -> Option<*const ()> {
            if id == TypeId::of::<Self>() {
                return Some(self as *const Self as *const ());
            }
            // SAFETY: the inner layer upholds `downcast_raw`'s contract for its own types.
            unsafe { self.inner.downcast_raw(id) }
        }
    }

    #[cfg(test)]
    mod tests {
        use std::sync::{Arc, Mutex};

        use opentelemetry::trace::{SpanId, TraceId};
        use opentelemetry_sdk::error::OTelSdkResult;
        use opentelemetry_sdk::trace::{SpanData, SpanExporter};
        use tracing_subscriber::layer::SubscriberExt as _;

        use super::*;

        /// Keeps exported spans for the test to look at.
        #[derive(Clone, Debug, Default)]
        struct Collect(Arc<Mutex<Vec<SpanData>>>);

        impl SpanExporter for Collect {
            async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
                self.0.lock().expect("lock").extend(batch);
                Ok(())
            }
        }

        /// Run `f` under a subscriber with the traceparent layer; return the spans it exported.
        fn spans(f: impl FnOnce()) -> Vec<SpanData> {
            let collect = Collect::default();
            let provider = SdkTracerProvider::builder().with_simple_exporter(collect.clone()).build();
            let subscriber = tracing_subscriber::registry().with(layer(&provider));
            tracing::subscriber::with_default(subscriber, f);
            provider.shutdown().expect("shutdown");
            collect.0.lock().expect("lock").clone()
        }

        const PRODUCER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
        const PRODUCER_SPAN: &str = "00f067aa0ba902b7";

        #[test]
        fn an_event_span_with_a_traceparent_continues_the_producers_trace() {
            let traceparent = format!("00-{PRODUCER_TRACE}-{PRODUCER_SPAN}-01");
            let spans = spans(|| {
                let outer = tracing::info_span!("batch");
                let _outer = outer.enter();
                let span = tracing::info_span!("event", event_id = "e1", traceparent = traceparent.as_str());
                let _event = span.enter();
                tracing::info!("inside");
            });
            let event = spans.iter().find(|s| s.name == "event").expect("event span exported");
            assert_eq!(event.span_context.trace_id(), TraceId::from_hex(PRODUCER_TRACE).expect("hex"));
            assert_eq!(event.parent_span_id, SpanId::from_hex(PRODUCER_SPAN).expect("hex"));
            assert!(event.parent_span_is_remote);
            assert_eq!(event.events.len(), 1, "log lines inside are span events");
        }

        #[test]
        fn an_event_span_without_a_usable_traceparent_keeps_its_local_parent() {
            let spans = spans(|| {
                let outer = tracing::info_span!("batch");
                let _outer = outer.enter();
                for traceparent in ["", "not-a-traceparent", "00-00000000000000000000000000000000-00f067aa0ba902b7-01"]
                {
                    let _event = tracing::info_span!("event", traceparent).entered();
                }
            });
            let batch = spans.iter().find(|s| s.name == "batch").expect("batch span");
            let events: Vec<_> = spans.iter().filter(|s| s.name == "event").collect();
            assert_eq!(events.len(), 3);
            for event in events {
                assert_eq!(event.span_context.trace_id(), batch.span_context.trace_id());
                assert_eq!(event.parent_span_id, batch.span_context.span_id());
            }
        }
    }
}
