//! Test fixture: a counter built against `ferry:plugin@0.2.0` that keeps its count in the
//! host's state (issue 25). Every event increments `count` (and, with a partition key, the
//! counter kept under that key: the key the host reads ahead) and publishes `Counted` with
//! the new value to config `record_to`, so a test can compare the state with what the
//! handler saw. Acts in the payload: `{"act":"fail"}` increments, then
//! asks for a retry (its write must not survive), `{"act":"trap"}` increments, then traps,
//! `{"act":"reject"}` increments, then rejects, `{"act":"read"}` reads without writing,
//! `{"act":"big"}` writes a value of 100 KB (over the default value bound), `{"act":"slow"}`
//! increments, then spins until its deadline stops it on its first attempt.
//!
//! For `ferry bench`, config `bench` replaces all of that: `"state"` does one `get` and one
//! `set` of the event's partition key (its id without one) per event, `"plain"` the same work
//! without the state calls, so the two differ by the state alone.
wit_bindgen::generate!({ world: "subscriber", path: "../../../plugin-sdk/wit-0.2.0" });

use exports::ferry::plugin::handler::{Delivery, Event, Guest, HandlerError, Subscription};
use ferry::plugin::types::{OutgoingEvent, RetryRequest};
use ferry::plugin::{config, state};

struct Counter;

fn retry(reason: String) -> HandlerError {
    HandlerError::Retry(RetryRequest { reason, delay_ms: Some(5) })
}

impl Guest for Counter {
    fn subscriptions() -> Vec<Subscription> {
        vec![Subscription { event_type: "*".into(), versions: Vec::new(), stream: None }]
    }

    fn handle(event: Event, delivery: Delivery) -> Result<(), HandlerError> {
        if let Some(mode) = config::get("bench") {
            return bench(&event, &mode);
        }
        let data = String::from_utf8_lossy(&event.data).into_owned();
        let act = |a: &str| data.contains(&format!(r#""act":"{a}""#));
        if act("read") {
            let n = state::get("count").map_err(retry)?;
            let n = n.map(|v| String::from_utf8_lossy(&v).into_owned()).unwrap_or_else(|| "none".into());
            return publish(&event, &format!(r#"{{"of":"{}","read":"{n}"}}"#, event.id));
        }
        if act("big") {
            return state::set("big", &vec![b'x'; 100_000]).map_err(|e| HandlerError::Reject(e));
        }
        let count = state::increment("count", 1).map_err(retry)?;
        if let Some(key) = &event.partitionkey {
            state::increment(key, 1).map_err(retry)?;
        }
        // Its own write is visible to it before the commit.
        let seen = state::get("count").map_err(retry)?.unwrap_or_default();
        if seen != count.to_string().into_bytes() {
            return Err(HandlerError::Reject(format!("own write not visible: {seen:?} after {count}")));
        }
        if act("fail") && delivery.attempt < 2 {
            return Err(retry(format!("failing attempt {} after writing", delivery.attempt)));
        }
        if act("trap") && delivery.attempt < 2 {
            panic!("trapping after writing");
        }
        if act("slow") && delivery.attempt < 2 {
            // Only the deadline (an epoch interrupt) ends this.
            let mut spins = 0u64;
            loop {
                spins = std::hint::black_box(spins.wrapping_add(1));
            }
        }
        if act("reject") {
            return Err(HandlerError::Reject("rejected after writing".into()));
        }
        publish(&event, &format!(r#"{{"of":"{}","count":{count},"attempt":{}}}"#, event.id, delivery.attempt))
    }
}

/// One benchmark event: the key's value read and replaced (`"state"`), or the same bytes
/// built without touching state (`"plain"`).
fn bench(event: &Event, mode: &str) -> Result<(), HandlerError> {
    let key = event.partitionkey.as_deref().unwrap_or(&event.id);
    let value = format!("{}:{}", key, event.data.len()).into_bytes();
    if mode == "state" {
        let old = state::get(key).map_err(retry)?;
        std::hint::black_box(old);
        state::set(key, &value).map_err(retry)?;
    } else {
        std::hint::black_box(value);
    }
    Ok(())
}

fn publish(event: &Event, body: &str) -> Result<(), HandlerError> {
    let Some(stream) = config::get("record_to") else { return Ok(()) };
    let out = OutgoingEvent {
        event_type: "Counted".into(),
        stream: Some(stream),
        data: body.as_bytes().to_vec(),
        datacontenttype: None,
        schemaversion: None,
        subject: None,
        partitionkey: event.partitionkey.clone(),
    };
    ferry::plugin::publish::send(&out).map_err(retry)?;
    Ok(())
}

export!(Counter);
