//! Write [ferry](https://example.invalid/ferry) event handlers in Rust.
//!
//! A plugin is a WebAssembly component that exports the `ferry:plugin` handler interface.
//! This crate hides the generated bindings behind one trait, [`Handler`], and one macro,
//! [`plugin!`]. The host owns retries, backoff, dead-lettering and deduplication; a handler
//! only says what happened: `Ok(())`, [`Error::retry`] or [`Error::reject`].
//!
//! ```no_run
//! use ferry_plugin_sdk::{Event, Handler, Result, Subscription, log};
//!
//! #[derive(serde::Deserialize)]
//! struct OrderCreated { order_id: String, quantity: u32 }
//!
//! struct Inventory;
//!
//! impl Handler for Inventory {
//!     fn subscriptions() -> Vec<Subscription> {
//!         vec![Subscription::to("OrderCreated")]
//!     }
//!
//!     fn handle(event: Event) -> Result {
//!         // Malformed JSON becomes a rejection: the event is dead-lettered at once.
//!         let order: OrderCreated = event.json()?;
//!         log::info(&format!("reserving {} for {}", order.quantity, order.order_id));
//!         Ok(())
//!     }
//! }
//!
//! ferry_plugin_sdk::plugin!(Inventory);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (a `[lib]` with
//! `crate-type = ["cdylib"]`) and drop the `.wasm` into the host's plugin directory.
//!
//! Beyond logging, config and follow-ups, a handler may keep [`state`] (committed with the
//! event's acknowledgement: exactly once per event) and call HTTP APIs with [`http`] (at least
//! once: the host adds an `Idempotency-Key` the receiver can dedupe on). Both need the
//! operator's grant. The crate binds `ferry:plugin@0.2.0`; hosts load plugins of 0.1.0 and
//! 0.2.0 side by side.
//!
//! Test it with `cargo test --target x86_64-unknown-linux-gnu` (your machine's target): build
//! events with [`Event::builder`], call your handler (through [`testing::handle`] to drop a
//! failed call's writes as the host does), and check what it published, logged, wrote to
//! state and sent over HTTP with [`testing`]; no host and no Redis are needed. Then run the
//! built component once with `ferry plugins invoke FILE --event E.json --state S.json
//! --http-allow URL`.
#![deny(missing_docs)]

use std::fmt;
use std::time::Duration;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "subscriber",
        path: "wit-0.2.0",
        pub_export_macro: true,
        export_macro_name: "__export_subscriber",
        default_bindings_module: "ferry_plugin_sdk::bindings",
    });
}

use bindings::ferry::plugin::types as wit;

/// What a handler returns: `Ok(())` acknowledges the event.
pub type Result<T = (), E = Error> = std::result::Result<T, E>;

/// An event handler. Implement it on a unit struct and pass the type to [`plugin!`].
pub trait Handler {
    /// The events this plugin wants; read once when the host loads the plugin.
    fn subscriptions() -> Vec<Subscription>;
    /// Handle one event. Must be idempotent: delivery is at least once.
    fn handle(event: Event) -> Result;
}

/// One subscription: an event type, optionally restricted to schema versions or a stream.
#[derive(Debug, Clone)]
pub struct Subscription {
    event_type: String,
    versions: Vec<u32>,
    stream: Option<String>,
}

impl Subscription {
    /// Subscribe to `event_type` (`Order*` matches every type starting with `Order`, `*` all).
    pub fn to(event_type: impl Into<String>) -> Self {
        Self { event_type: event_type.into(), versions: Vec::new(), stream: None }
    }

    /// Accept only these schema versions (default: every version).
    pub fn versions(mut self, versions: impl IntoIterator<Item = u32>) -> Self {
        self.versions = versions.into_iter().collect();
        self
    }

    /// Read from `stream` instead of the host's default stream.
    pub fn on_stream(mut self, stream: impl Into<String>) -> Self {
        self.stream = Some(stream.into());
        self
    }
}

/// The event being handled, with its delivery metadata.
#[derive(Debug)]
pub struct Event {
    inner: wit::Event,
    delivery: wit::Delivery,
}

/// Builds an [`Event`] outside the host, for a handler's own tests (`cargo test` on the
/// machine's target; see [`testing`]): `Event::builder("OrderCreated").json(&order).build()`.
#[derive(Debug)]
pub struct EventBuilder(Event);

impl EventBuilder {
    /// The payload, as bytes.
    pub fn data(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.0.inner.data = data.into();
        self
    }
    /// The payload, serialized as JSON.
    pub fn json<T: serde::Serialize>(self, data: &T) -> Self {
        let bytes = serde_json::to_vec(data).unwrap_or_default();
        self.data(bytes)
    }
    /// The event id (default `test-event`).
    pub fn id(mut self, id: &str) -> Self {
        self.0.inner.id = id.to_string();
        self
    }
    /// The emitting module (default `tests`).
    pub fn source(mut self, source: &str) -> Self {
        self.0.inner.source = source.to_string();
        self
    }
    /// The media type of the payload (default `application/json`).
    pub fn content_type(mut self, content_type: &str) -> Self {
        self.0.inner.datacontenttype = content_type.to_string();
        self
    }
    /// The payload's schema version (default 1).
    pub fn schema_version(mut self, version: u32) -> Self {
        self.0.inner.schemaversion = version;
        self
    }
    /// The partition key.
    pub fn partition_key(mut self, key: &str) -> Self {
        self.0.inner.partitionkey = Some(key.to_string());
        self
    }
    /// The correlation id.
    pub fn correlation_id(mut self, id: &str) -> Self {
        self.0.inner.correlationid = Some(id.to_string());
        self
    }
    /// The subject.
    pub fn subject(mut self, subject: &str) -> Self {
        self.0.inner.subject = Some(subject.to_string());
        self
    }
    /// The attempt it is delivered with (default 1).
    pub fn attempt(mut self, attempt: u32) -> Self {
        self.0.delivery.attempt = attempt;
        self
    }
    /// The stream it was read from (default `events`).
    pub fn stream(mut self, stream: &str) -> Self {
        self.0.delivery.stream = stream.to_string();
        self
    }
    /// The event.
    pub fn build(self) -> Event {
        self.0
    }
}

impl Event {
    /// An event of `event_type` to hand to a handler in a test (see [`EventBuilder`]).
    pub fn builder(event_type: &str) -> EventBuilder {
        EventBuilder(Event {
            inner: wit::Event {
                id: "test-event".into(),
                source: "tests".into(),
                event_type: event_type.into(),
                time: "2026-01-01T00:00:00Z".into(),
                datacontenttype: "application/json".into(),
                schemaversion: 1,
                subject: None,
                dataschema: None,
                correlationid: None,
                causationid: None,
                partitionkey: None,
                specversion: "1.0".into(),
                traceparent: None,
                data: b"{}".to_vec(),
            },
            delivery: wit::Delivery {
                stream: "events".into(),
                entry_id: "0-1".into(),
                attempt: 1,
                subscriber: "test".into(),
            },
        })
    }

    /// The event's unique id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }
    /// The module that emitted it.
    pub fn source(&self) -> &str {
        &self.inner.source
    }
    /// The event type, e.g. `OrderCreated`.
    pub fn event_type(&self) -> &str {
        &self.inner.event_type
    }
    /// When the fact occurred (RFC 3339, UTC).
    pub fn time(&self) -> &str {
        &self.inner.time
    }
    /// The payload's schema version.
    pub fn schema_version(&self) -> u32 {
        self.inner.schemaversion
    }
    /// Media type of [`Event::data`].
    pub fn content_type(&self) -> &str {
        &self.inner.datacontenttype
    }
    /// CloudEvents `subject`.
    pub fn subject(&self) -> Option<&str> {
        self.inner.subject.as_deref()
    }
    /// CloudEvents `dataschema`.
    pub fn data_schema(&self) -> Option<&str> {
        self.inner.dataschema.as_deref()
    }
    /// The id shared by every event of one business flow.
    pub fn correlation_id(&self) -> Option<&str> {
        self.inner.correlationid.as_deref()
    }
    /// The id of the event that caused this one.
    pub fn causation_id(&self) -> Option<&str> {
        self.inner.causationid.as_deref()
    }
    /// The partition key, if the producer set one.
    pub fn partition_key(&self) -> Option<&str> {
        self.inner.partitionkey.as_deref()
    }
    /// The raw payload.
    pub fn data(&self) -> &[u8] {
        &self.inner.data
    }
    /// The payload deserialized from JSON; a malformed payload is a [rejection](Error::reject).
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.inner.data)
            .map_err(|e| Error::reject(format!("payload is not the expected JSON: {e}")))
    }
    /// The stream the event was read from.
    pub fn stream(&self) -> &str {
        &self.delivery.stream
    }
    /// The stream entry id.
    pub fn entry_id(&self) -> &str {
        &self.delivery.entry_id
    }
    /// 1 on the first attempt, 2 on the first retry, ...
    pub fn attempt(&self) -> u32 {
        self.delivery.attempt
    }
    /// The subscriber (plugin name) handling the event.
    pub fn subscriber(&self) -> &str {
        &self.delivery.subscriber
    }
}

/// Why a handler did not succeed.
#[derive(Debug)]
pub struct Error(wit::HandlerError);

impl Error {
    /// Whether the host would retry the event (a test's check).
    pub fn is_retry(&self) -> bool {
        matches!(self.0, wit::HandlerError::Retry(_))
    }
    /// Whether the host would dead-letter the event at once (a test's check).
    pub fn is_reject(&self) -> bool {
        matches!(self.0, wit::HandlerError::Reject(_))
    }

    /// A transient failure: the host retries later with backoff.
    pub fn retry(reason: impl fmt::Display) -> Self {
        Self(wit::HandlerError::Retry(wit::RetryRequest { reason: reason.to_string(), delay_ms: None }))
    }
    /// A transient failure with a delay hint, kept within the subscriber's retry policy.
    pub fn retry_after(reason: impl fmt::Display, delay: Duration) -> Self {
        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        Self(wit::HandlerError::Retry(wit::RetryRequest { reason: reason.to_string(), delay_ms: Some(delay_ms) }))
    }
    /// A permanent failure: the event goes to the dead-letter stream without retry.
    pub fn reject(reason: impl fmt::Display) -> Self {
        Self(wit::HandlerError::Reject(reason.to_string()))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            wit::HandlerError::Retry(r) => write!(f, "retry: {}", r.reason),
            wit::HandlerError::Reject(r) => write!(f, "reject: {r}"),
        }
    }
}

/// Log lines go into the host's tracing, tagged with the plugin name and the event id.
pub mod log {
    use crate::bindings::ferry::plugin::log::Level;

    fn write(level: Level, message: &str) {
        #[cfg(target_arch = "wasm32")]
        crate::bindings::ferry::plugin::log::write(level, message);
        #[cfg(not(target_arch = "wasm32"))]
        crate::testing::log(level, message);
    }
    /// Log at trace level (the most verbose; hosts usually filter it out).
    pub fn trace(message: &str) {
        write(Level::Trace, message)
    }
    /// Log at debug level.
    pub fn debug(message: &str) {
        write(Level::Debug, message)
    }
    /// Log at info level.
    pub fn info(message: &str) {
        write(Level::Info, message)
    }
    /// Log at warn level.
    pub fn warn(message: &str) {
        write(Level::Warn, message)
    }
    /// Log at error level.
    pub fn error(message: &str) {
        write(Level::Error, message)
    }
}

/// Values the operator granted to this plugin in the host config (none by default).
pub mod config {
    /// The value of `key`, or `None` when it was not granted.
    pub fn get(key: &str) -> Option<String> {
        #[cfg(target_arch = "wasm32")]
        return crate::bindings::ferry::plugin::config::get(key);
        #[cfg(not(target_arch = "wasm32"))]
        return crate::testing::config(key);
    }
}

/// Follow-up events, written atomically with the acknowledgement of the handled event.
pub mod publish {
    use crate::bindings::ferry::plugin::types::OutgoingEvent;

    /// A follow-up event to publish; build it with [`Outgoing::json`] or [`Outgoing::bytes`].
    #[derive(Debug, Clone)]
    pub struct Outgoing(OutgoingEvent);

    impl Outgoing {
        /// An event of `event_type` whose payload is `data` serialized as JSON.
        pub fn json<T: serde::Serialize>(event_type: &str, data: &T) -> crate::Result<Self> {
            let bytes = serde_json::to_vec(data)
                .map_err(|e| crate::Error::reject(format!("cannot serialize follow-up: {e}")))?;
            Ok(Self::bytes(event_type, bytes))
        }
        /// An event of `event_type` with a raw payload (`application/json` unless changed).
        pub fn bytes(event_type: &str, data: Vec<u8>) -> Self {
            Self(OutgoingEvent {
                event_type: event_type.to_string(),
                stream: None,
                data,
                datacontenttype: None,
                schemaversion: None,
                subject: None,
                partitionkey: None,
            })
        }
        /// Add it to `stream` (must be allowed for this plugin) instead of the handled event's stream.
        pub fn to_stream(mut self, stream: &str) -> Self {
            self.0.stream = Some(stream.to_string());
            self
        }
        /// Set the partition key.
        pub fn key(mut self, key: &str) -> Self {
            self.0.partitionkey = Some(key.to_string());
            self
        }
        /// Set the media type of the payload.
        pub fn content_type(mut self, content_type: &str) -> Self {
            self.0.datacontenttype = Some(content_type.to_string());
            self
        }
        /// Set the payload's schema version.
        pub fn schema_version(mut self, version: u32) -> Self {
            self.0.schemaversion = Some(version);
            self
        }
    }

    /// Queue `event`; returns its id. Refused streams and oversized events are a rejection.
    pub fn send(event: Outgoing) -> crate::Result<String> {
        #[cfg(target_arch = "wasm32")]
        return crate::bindings::ferry::plugin::publish::send(&event.0).map_err(crate::Error::reject);
        #[cfg(not(target_arch = "wasm32"))]
        return crate::testing::publish(event.0).map_err(crate::Error::reject);
    }
}

pub mod http;
pub mod state;
pub mod testing;

#[doc(hidden)]
pub fn __subscriptions<H: Handler>() -> Vec<wit::Subscription> {
    H::subscriptions()
        .into_iter()
        .map(|s| wit::Subscription { event_type: s.event_type, versions: s.versions, stream: s.stream })
        .collect()
}

#[doc(hidden)]
pub fn __handle<H: Handler>(event: wit::Event, delivery: wit::Delivery) -> std::result::Result<(), wit::HandlerError> {
    H::handle(Event { inner: event, delivery }).map_err(|e| e.0)
}

/// Export `$handler` (a type implementing [`Handler`]) as this component's ferry handler.
#[macro_export]
macro_rules! plugin {
    ($handler:ty) => {
        #[doc(hidden)]
        pub struct __FerryPlugin;

        impl $crate::bindings::exports::ferry::plugin::handler::Guest for __FerryPlugin {
            fn subscriptions() -> ::std::vec::Vec<$crate::bindings::ferry::plugin::types::Subscription> {
                $crate::__subscriptions::<$handler>()
            }
            fn handle(
                event: $crate::bindings::ferry::plugin::types::Event,
                delivery: $crate::bindings::ferry::plugin::types::Delivery,
            ) -> ::std::result::Result<(), $crate::bindings::ferry::plugin::types::HandlerError> {
                $crate::__handle::<$handler>(event, delivery)
            }
        }

        $crate::bindings::__export_subscriber!(__FerryPlugin with_types_in $crate::bindings);
    };
}
