//! The `publish` capability: follow-up events, written atomically with the acknowledgement of
//! the handled event (so a retried event never leaves duplicates behind).
//!
//! Grant: `publish_streams = [...]` in `[subscribers.NAME]` (or the plugin's `NAME.toml`),
//! none by default. Publishing to a stream not granted is refused, and the event is retried
//! whatever the handler made of the refusal: the operator's to fix (see
//! `seam::Capability::denied`). Limits: `publish_count` follow-ups per event, `publish_bytes`
//! of data each; every attribute is capped by the rule the consumer side applies to entries it reads
//! (`event::MAX_ATTRIBUTE_BYTES`, `event::MAX_ENTRY_BYTES`), and a chain of follow-ups shares
//! its root's causation budget (`event::CAUSATION_BUDGET`).
//!
//! The follow-ups are handed to the settle as [`Effects::follow_ups`]; on a Redis Cluster the
//! settle writes one whose stream is in another hash slot to the stream's forward key, and
//! the forwarder (`consume::forward`) adds it to its target with its id.

use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};

use super::seam::{Capability, Current, Services};
use crate::config::Effective;
use crate::event::{self, Event};
use crate::handler::{Effects, FollowUp};
use crate::plugin::bindings::types::OutgoingEvent;
use crate::plugin::bindings::{v0_1, v0_2};
use crate::plugin::contract::Contract;
use crate::redact::escape;

/// The `publish` capability.
pub struct Publish;

/// What a subscriber may publish.
#[derive(Debug, Clone)]
pub struct PublishGrant {
    /// The subscriber: the `source` of its follow-ups.
    pub subscriber: Arc<str>,
    /// Streams it may publish to.
    pub streams: Vec<String>,
    /// Follow-ups per handled event.
    pub count: usize,
    /// Bytes of one follow-up's data.
    pub bytes: usize,
    /// The host's schema registry: a follow-up must satisfy its type's contract, like an
    /// event a producer publishes (`contract::Registry::prepare`).
    pub contracts: Option<Arc<crate::contract::Registry>>,
}

/// A store's publishing: its grant, the event being handled and what it queued.
pub struct PublishCtx {
    /// The grant.
    pub grant: Arc<PublishGrant>,
    /// The event being handled.
    pub current: Arc<Current>,
    /// Queued follow-ups, in order.
    pub follow_ups: Vec<FollowUp>,
    /// A stream the event published to without a grant, with the refusal.
    pub denied: Option<String>,
}

impl Capability for Publish {
    type Grant = PublishGrant;
    type Ctx = PublishCtx;

    const IMPORTS: &'static [(&'static str, &'static str)] = &[(
        "publish",
        "needs `publish_streams = [...]` (the streams it may publish to) in `[subscribers.NAME]` or NAME.toml",
    )];

    fn grant(subscriber: &Arc<str>, settings: &Effective, services: &Services) -> PublishGrant {
        PublishGrant {
            subscriber: subscriber.clone(),
            streams: settings.publish_streams.clone(),
            count: settings.limits.publish_count,
            bytes: settings.limits.publish_bytes,
            contracts: services.contracts.clone(),
        }
    }

    fn ctx(grant: &Arc<PublishGrant>) -> PublishCtx {
        PublishCtx { grant: grant.clone(), current: Arc::default(), follow_ups: Vec::new(), denied: None }
    }

    fn link<T: Send + 'static>(
        linker: &mut Linker<T>,
        contract: Contract,
        get: fn(&mut T) -> &mut PublishCtx,
    ) -> wasmtime::Result<()> {
        match contract {
            Contract::V0_1 => v0_1::ferry::plugin::publish::add_to_linker::<T, HasSelf<PublishCtx>>(linker, get),
            Contract::V0_2 => v0_2::ferry::plugin::publish::add_to_linker::<T, HasSelf<PublishCtx>>(linker, get),
        }
    }

    fn begin(ctx: &mut PublishCtx, current: &Arc<Current>) {
        ctx.current = current.clone();
        ctx.follow_ups.clear();
        ctx.denied = None;
    }

    fn denied(ctx: &mut PublishCtx) -> Option<String> {
        ctx.denied.take()
    }

    /// Split what is left of the budget among the follow-ups (`send` kept their number
    /// within it), so the whole tree stays within the root's budget.
    fn finish(ctx: &mut PublishCtx, effects: &mut Effects) {
        let mut follow_ups = std::mem::take(&mut ctx.follow_ups);
        let n = u32::try_from(follow_ups.len()).unwrap_or(u32::MAX);
        if let Some(share) = ctx.current.budget.saturating_sub(n).checked_div(n) {
            for f in &mut follow_ups {
                f.event.causationbudget = Some(share);
            }
        }
        effects.follow_ups = follow_ups;
    }
}

impl PublishCtx {
    /// `publish.send`: check `out` against the grant and the limits, build its event, queue it.
    fn send_event(&mut self, out: OutgoingEvent) -> Result<String, String> {
        check_sizes(&out, self.grant.bytes)?;
        let stream = out.stream.clone().unwrap_or_else(|| self.current.stream.clone());
        if !self.grant.streams.contains(&stream) {
            let message = format!(
                "publishing to stream `{stream}` is not allowed for this plugin: grant it with `publish_streams = [\"{stream}\"]` in its `[subscribers.{name}]` (or its NAME.toml)",
                stream = escape(&stream),
                name = escape(&self.grant.subscriber),
            );
            self.denied = Some(message.clone());
            return Err(message);
        }
        crate::keys::check_name("stream", &stream)?;
        let queued = self.follow_ups.len();
        if queued as u64 >= u64::from(self.current.budget) {
            return Err(format!(
                "causation budget exhausted: this event may have {} more follow-ups in its chain (all descendants of a producer's event share {})",
                self.current.budget,
                event::CAUSATION_BUDGET
            ));
        }
        if queued >= self.grant.count {
            return Err(format!("at most {} follow-up events per handled event", self.grant.count));
        }
        let mut event = self.follow_up(out)?;
        // Its contract, checked where it is made: the handler hears why (with the JSON path)
        // and may fix it or fail, instead of a consumer dead-lettering it later.
        if let Some(contracts) = &self.grant.contracts {
            contracts.prepare(&mut event).map_err(|e| e.to_string())?;
        }
        let id = event.id.clone();
        self.follow_ups.push(FollowUp { stream, event });
        Ok(id)
    }

    /// The event `out` describes, as a follow-up of the current event.
    fn follow_up(&self, out: OutgoingEvent) -> Result<Event, String> {
        if out.event_type.trim().is_empty() {
            return Err("event type is empty".into());
        }
        let datacontenttype = out.datacontenttype.unwrap_or_else(|| event::JSON.to_string());
        if event::is_json(&datacontenttype) {
            serde_json::from_slice::<serde::de::IgnoredAny>(&out.data)
                .map_err(|e| format!("data is not valid JSON: {e}"))?;
        }
        let current = &self.current;
        let mut event = Event::new(out.event_type, self.grant.subscriber.to_string(), out.data);
        event.datacontenttype = datacontenttype;
        event.schemaversion = out.schemaversion.unwrap_or(1);
        event.subject = out.subject;
        event.partitionkey = out.partitionkey;
        event.correlationid = Some(current.correlationid.clone().unwrap_or_else(|| current.event_id.clone()));
        event.causationid = Some(current.event_id.clone());
        event.causationdepth = Some(current.depth.saturating_add(1));
        // The rule the consumer side applies to every entry it reads: a follow-up it would
        // refuse is refused here, before it is held.
        let bytes = event.entry_bytes();
        if bytes > event::MAX_ENTRY_BYTES {
            return Err(format!(
                "the event would be an entry of {bytes} bytes; at most {} are accepted",
                event::MAX_ENTRY_BYTES
            ));
        }
        Ok(event)
    }
}

/// Every field is bounded before anything is copied or echoed in an error.
fn check_sizes(out: &OutgoingEvent, data_bytes: usize) -> Result<(), String> {
    let attributes = [
        ("event type", Some(&out.event_type)),
        ("stream", out.stream.as_ref()),
        ("content type", out.datacontenttype.as_ref()),
        ("subject", out.subject.as_ref()),
        ("partition key", out.partitionkey.as_ref()),
    ];
    for (what, value) in attributes {
        if let Some(value) = value
            && value.len() > event::MAX_ATTRIBUTE_BYTES
        {
            return Err(format!(
                "{what} of {} bytes exceeds the limit of {} bytes",
                value.len(),
                event::MAX_ATTRIBUTE_BYTES
            ));
        }
    }
    if out.data.len() > data_bytes {
        return Err(format!("event data of {} bytes exceeds the limit of {data_bytes} bytes", out.data.len()));
    }
    Ok(())
}

impl v0_1::ferry::plugin::publish::Host for PublishCtx {
    fn send(&mut self, out: OutgoingEvent) -> Result<String, String> {
        self.send_event(out)
    }
}

impl v0_2::ferry::plugin::publish::Host for PublishCtx {
    fn send(&mut self, out: OutgoingEvent) -> Result<String, String> {
        self.send_event(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LimitsConfig, SubscriberConfig};

    fn publisher() -> PublishCtx {
        let settings = SubscriberConfig { publish_streams: Some(vec!["events".into()]), ..Default::default() }.fill();
        let mut ctx = Publish::ctx(&Arc::new(Publish::grant(&"amp".into(), &settings, &Services::default())));
        let current = Current {
            event_id: "e1".into(),
            correlationid: None,
            stream: "events".into(),
            depth: 0,
            budget: 10,
            ..Current::default()
        };
        Publish::begin(&mut ctx, &Arc::new(current));
        ctx
    }

    fn outgoing() -> OutgoingEvent {
        OutgoingEvent {
            event_type: "T".into(),
            stream: None,
            data: b"{}".to_vec(),
            datacontenttype: None,
            schemaversion: None,
            subject: None,
            partitionkey: None,
        }
    }

    /// Issue 23, item 3: only `data` was capped, so 100 follow-ups with a 60 MiB type each
    /// made the host hold gigabytes. Every field is capped by the rule the consumer side
    /// applies to entries it reads.
    #[test]
    fn every_field_of_a_follow_up_is_capped() {
        let huge = "t".repeat(event::MAX_ATTRIBUTE_BYTES + 1);
        type Set<'a> = Box<dyn Fn(&mut OutgoingEvent) + 'a>;
        let cases: [(&str, Set<'_>); 5] = [
            ("type", Box::new(|o| o.event_type = huge.clone())),
            ("subject", Box::new(|o| o.subject = Some(huge.clone()))),
            ("partition key", Box::new(|o| o.partitionkey = Some(huge.clone()))),
            ("content type", Box::new(|o| o.datacontenttype = Some(format!("text/{huge}")))),
            ("stream", Box::new(|o| o.stream = Some(huge.clone()))),
        ];
        for (what, set) in cases {
            let mut state = publisher();
            let mut out = outgoing();
            set(&mut out);
            let err = state.send_event(out).expect_err(what);
            assert!(err.len() < 300, "{what}: the error does not echo the value: {} bytes", err.len());
            assert!(state.follow_ups.is_empty(), "{what}: nothing held");
        }
        let mut state = publisher();
        let mut out = outgoing();
        out.data = vec![b' '; LimitsConfig::default().publish_bytes + 1];
        assert!(state.send_event(out).is_err(), "data");
        // At the limits, every field together still makes an entry the consumer side accepts.
        let mut state = publisher();
        let at = "t".repeat(event::MAX_ATTRIBUTE_BYTES);
        let mut out = outgoing();
        out.event_type = at.clone();
        out.subject = Some(at.clone());
        out.partitionkey = Some(at);
        state.send_event(out).expect("at the limits");
        let entry = &state.follow_ups[0].event;
        assert!(entry.entry_bytes() <= event::MAX_ENTRY_BYTES);
    }

    /// Issue 26: a follow-up is checked against its type's contract in `publish.send`, so the
    /// handler hears the error with its JSON path (and `dataschema` is filled as at publish).
    #[test]
    fn a_follow_up_that_breaks_its_contract_is_refused_with_its_path() {
        use crate::contract::{Registry, set::Contract, set::Set};
        let schema = serde_json::json!({
            "type": "object",
            "properties": {"n": {"type": "integer", "minimum": 0}},
            "required": ["n"]
        });
        let set = Set::build([("T".to_string(), (Contract::default(), [(1, schema)].into()))].into()).expect("set");
        let registry = Arc::new(Registry::with(None, Default::default(), set));
        let settings = SubscriberConfig { publish_streams: Some(vec!["events".into()]), ..Default::default() }.fill();
        let services = Services { contracts: Some(registry), ..Services::default() };
        let mut state = Publish::ctx(&Arc::new(Publish::grant(&"amp".into(), &settings, &services)));
        let current = Current {
            event_id: "e1".into(),
            correlationid: None,
            stream: "events".into(),
            depth: 0,
            budget: 10,
            ..Current::default()
        };
        Publish::begin(&mut state, &Arc::new(current));
        let mut out = outgoing();
        out.data = br#"{"n": -1}"#.to_vec();
        let err = state.send_event(out).expect_err("refused");
        assert!(err.contains("/n") && err.contains("T@1"), "path and schema: {err}");
        assert!(state.follow_ups.is_empty());
        let mut out = outgoing();
        out.data = br#"{"n": 1}"#.to_vec();
        state.send_event(out).expect("valid");
        let dataschema = state.follow_ups[0].event.dataschema.clone().unwrap_or_default();
        assert!(!dataschema.is_empty(), "dataschema filled");
        let mut out = outgoing();
        out.event_type = "Unknown".into();
        state.send_event(out).expect("a type without a schema passes by default");
    }
}
