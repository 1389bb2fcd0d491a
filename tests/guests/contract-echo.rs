// The echo handler, one source for every contract version (the generated module paths are the
// same in each): it logs a line, reads config `echo_to` and publishes `Echoed` there with the
// event's data and attempt; `{"act":"reject"}` is rejected, `{"act":"retry"}` retried.

use exports::ferry::plugin::handler::{Delivery, Event, Guest, HandlerError, Subscription};
use ferry::plugin::types::{OutgoingEvent, RetryRequest};
use ferry::plugin::{config, log, publish};

struct Echo;

impl Guest for Echo {
    fn subscriptions() -> Vec<Subscription> {
        vec![Subscription { event_type: "*".into(), versions: Vec::new(), stream: None }]
    }

    fn handle(event: Event, delivery: Delivery) -> Result<(), HandlerError> {
        log::write(log::Level::Info, &format!("echo {} attempt {}", event.id, delivery.attempt));
        let data = String::from_utf8_lossy(&event.data).into_owned();
        if data.contains(r#""act":"reject""#) {
            return Err(HandlerError::Reject("rejected on purpose".into()));
        }
        if data.contains(r#""act":"retry""#) {
            return Err(HandlerError::Retry(RetryRequest { reason: "asked to retry".into(), delay_ms: Some(5) }));
        }
        let Some(stream) = config::get("echo_to") else { return Ok(()) };
        let body = format!(r#"{{"of":"{}","attempt":{},"data":{data}}}"#, event.id, delivery.attempt);
        let out = OutgoingEvent {
            event_type: "Echoed".into(),
            stream: Some(stream),
            data: body.into_bytes(),
            datacontenttype: None,
            schemaversion: None,
            subject: event.subject,
            partitionkey: event.partitionkey,
        };
        publish::send(&out).map_err(|e| HandlerError::Retry(RetryRequest { reason: e, delay_ms: None }))?;
        Ok(())
    }
}

export!(Echo);
